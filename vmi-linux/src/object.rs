//! Any kernel struct by name: a typed field reader driven by the kernel's own types
//! (drgn's idea), so tools read what this crate did not anticipate without hard-coded
//! offsets.
//!
//! ```no_run
//! # fn f<V: vmi_core::PhysicalMemory + vmi_core::ReadRegisters>(linux: &vmi_linux::Linux<V>) -> vmi_linux::Result<()> {
//! let init = linux.object("task_struct", linux.symbol("init_task")?);
//! let vruntime = init.read_uint("se.vruntime")?;
//! let comm = init.read_cstr("comm")?;
//! let mm = init.deref("active_mm", "mm_struct")?; // follows a pointer
//! println!("{comm}: vruntime {vruntime}, pgd {:#x}", mm.read_uint("pgd")?);
//! # Ok(()) }
//! ```

use vmi_core::{PhysicalMemory, ReadRegisters};

use crate::error::{Error, Result};
use crate::linux::Linux;
use crate::reader::MAX_CSTR;
use crate::types::Field;

/// A kernel object: a type name and an address.
pub struct Object<'l, V> {
    linux: &'l Linux<V>,
    ty: String,
    address: u64,
}

impl<V> std::fmt::Debug for Object<'_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "({} *){:#x}", self.ty, self.address)
    }
}

impl<V: PhysicalMemory + ReadRegisters> Linux<V> {
    /// The object of type `ty` (`task_struct`, `struct task_struct` or a typedef) at
    /// `address`.
    pub fn object(&self, ty: &str, address: u64) -> Object<'_, V> {
        Object {
            linux: self,
            ty: ty.trim_start_matches("struct ").to_owned(),
            address,
        }
    }
}

impl<'l, V: PhysicalMemory + ReadRegisters> Object<'l, V> {
    /// Its address.
    pub fn address(&self) -> u64 {
        self.address
    }

    /// Its type name.
    pub fn type_name(&self) -> &str {
        &self.ty
    }

    /// The field at `path` (`"se.vruntime"`).
    pub fn field(&self, path: &str) -> Result<Field> {
        self.linux.types().field(&self.ty, path)
    }

    /// The address of the field at `path`.
    pub fn field_address(&self, path: &str) -> Result<u64> {
        Ok(self.address.wrapping_add(self.field(path)?.offset))
    }

    /// An unsigned integer, pointer or enum field (1–8 bytes; bitfields extracted).
    pub fn read_uint(&self, path: &str) -> Result<u64> {
        let f = self.field(path)?;
        let r = self.linux.kernel_reader();
        let at = self.address.wrapping_add(f.offset);
        match f.bits {
            Some((bit, width)) => {
                let bytes = (u64::from(bit) + u64::from(width)).div_ceil(8).min(8);
                let mut b = [0u8; 8];
                r.read(at, &mut b[..bytes as usize])?;
                let v = u64::from_le_bytes(b) >> bit;
                Ok(if width >= 64 {
                    v
                } else {
                    v & ((1u64 << width) - 1)
                })
            }
            None if matches!(f.size, 1 | 2 | 4 | 8) => r.uint(at, f.size),
            None => Err(Error::malformed(
                "field read",
                format!(
                    "{}.{path} is {} bytes ({}), not an integer",
                    self.ty, f.size, f.type_name
                ),
            )),
        }
    }

    /// A signed integer field, sign-extended from its size.
    pub fn read_int(&self, path: &str) -> Result<i64> {
        let f = self.field(path)?;
        let v = self.read_uint(path)?;
        let bits = f
            .bits
            .map_or(f.size * 8, |(_, w)| u64::from(w))
            .clamp(1, 64);
        let shift = 64 - bits;
        Ok(((v << shift) as i64) >> shift)
    }

    /// A `char[N]` field as a string (up to the first NUL).
    pub fn read_cstr(&self, path: &str) -> Result<String> {
        let f = self.field(path)?;
        self.linux.kernel_reader().cstr(
            self.address.wrapping_add(f.offset),
            (f.size as usize).min(MAX_CSTR),
        )
    }

    /// The string a `char *` field points at (at most 4 KiB).
    pub fn read_string_pointer(&self, path: &str) -> Result<String> {
        let p = self.read_uint(path)?;
        self.linux.kernel_reader().cstr(p, MAX_CSTR)
    }

    /// The raw bytes of a field.
    pub fn read_bytes(&self, path: &str) -> Result<Vec<u8>> {
        let f = self.field(path)?;
        if f.size > 1 << 20 {
            return Err(Error::Limit {
                what: "field size",
                limit: 1 << 20,
            });
        }
        let mut b = vec![0u8; f.size as usize];
        self.linux
            .kernel_reader()
            .read(self.address.wrapping_add(f.offset), &mut b)?;
        Ok(b)
    }

    /// The embedded struct at `path`, as an object of type `ty`.
    pub fn member(&self, path: &str, ty: &str) -> Result<Object<'l, V>> {
        Ok(self.linux.object(ty, self.field_address(path)?))
    }

    /// Follows the pointer field at `path` to an object of type `ty`; a NULL pointer is
    /// an error naming the field.
    pub fn deref(&self, path: &str, ty: &str) -> Result<Object<'l, V>> {
        let p = self.read_uint(path)?;
        if p == 0 {
            return Err(Error::not_found(
                "object",
                format!("{}.{path} is NULL", self.ty),
            ));
        }
        Ok(self.linux.object(ty, p))
    }

    /// The object of type `ty` that contains this one as field `path` (`container_of`).
    pub fn container_of(&self, ty: &str, path: &str) -> Result<Object<'l, V>> {
        let f = self.linux.types().field(ty, path)?;
        Ok(self.linux.object(ty, self.address.wrapping_sub(f.offset)))
    }
}
