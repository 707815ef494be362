//! Kernel types: any struct by name, from BTF (in guest memory or a file) or an ISF.
//!
//! (Being written: see the module's final docs.)

use crate::error::{Error, Result};

/// A field of a struct or union, resolved along a dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the outer type.
    pub offset: u64,
    /// For bitfields: the bit offset within the byte at `offset` and the width in bits.
    pub bits: Option<(u8, u16)>,
    /// Size of the field's type in bytes.
    pub size: u64,
    /// The field's type, as C would print it (`struct list_head`, `int`, `char [16]`, `struct mm_struct *`).
    pub type_name: String,
}

/// Kernel type information.
#[derive(Debug)]
pub struct Types {
    _private: (),
}

impl Types {
    /// Size of the struct, union, typedef or base type `name` (`task_struct` finds
    /// `struct task_struct`).
    pub fn size_of(&self, name: &str) -> Result<u64> {
        Err(Error::not_found("type", name.to_owned()))
    }

    /// The field at dotted `path` in type `ty` (`offset_of("task_struct", "se.vruntime")`).
    pub fn field(&self, ty: &str, path: &str) -> Result<Field> {
        Err(Error::not_found("field", format!("{ty}.{path}")))
    }

    /// The value of enumerator `name` (searched in every enum).
    pub fn enumerator(&self, name: &str) -> Result<i64> {
        Err(Error::not_found("enumerator", name.to_owned()))
    }
}

/// Temporary stub (replaced by the BTF carving module).
pub fn carve_btf(_image: &crate::image::ImageCopy) -> Result<(u64, Vec<u8>)> {
    Err(Error::not_found("BTF", "not written yet"))
}

impl Types {
    /// Temporary stub.
    pub fn from_btf(_bytes: Vec<u8>) -> Result<Types> {
        Err(Error::not_found("BTF", "not written yet"))
    }

    /// Temporary stub.
    pub fn from_isf(_json: &[u8]) -> Result<(Types, crate::SymbolTable, ())> {
        Err(Error::not_found("ISF", "not written yet"))
    }
}
