//! Reading guest virtual memory in one call.
//!
//! [`VirtualMemory`] is implemented for every backend that reads physical memory and
//! registers: it takes the paging mode and CR3 of a vCPU (from the parked vCPU's cache
//! when it is parked, so during an event this costs no round trip) or of an explicit
//! [`AddressSpace`], walks the guest's page tables and reads bytes, integers or C
//! strings.
//!
//! ```
//! use vmi_core::{AddressSpace, Gpa, Gva, PagingMode, SparseMemory, VirtualMemory};
//! # use vmi_core::{ReadRegisters, RegisterGroups, RegisterSnapshot, VcpuId, PhysicalMemory};
//! # struct Vm(SparseMemory);
//! # impl PhysicalMemory for Vm {
//! #     fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> vmi_core::Result<()> {
//! #         self.0.read_physical(gpa, buf)
//! #     }
//! # }
//! # impl ReadRegisters for Vm {
//! #     fn registers(&self, _: VcpuId, _: RegisterGroups, _: &[u32])
//! #         -> vmi_core::Result<RegisterSnapshot> { Ok(RegisterSnapshot::default()) }
//! # }
//! let mut mem = SparseMemory::new();
//! mem.write_u64(Gpa(0x1000 + 256 * 8), 0x2003);
//! mem.write_u64(Gpa(0x2000), 0x3003);
//! mem.write_u64(Gpa(0x3000), 0x20_0083);
//! mem.write(Gpa(0x20_0040), b"init\0");
//! mem.write_u64(Gpa(0x20_0080), 0xdead_beef);
//! let vm = Vm(mem);
//!
//! let kernel = AddressSpace::new(PagingMode::from_registers(0x8000_0011, 0x20, 0x500), Gpa(0x1000));
//! assert_eq!(vm.read_va_cstr(kernel, Gva(0xffff_8000_0000_0040), 64)?, b"init");
//! assert_eq!(vm.read_va_u64(kernel, Gva(0xffff_8000_0000_0080))?, 0xdead_beef);
//! # Ok::<(), vmi_core::Error>(())
//! ```

use crate::addr::{Gpa, Gva, VcpuId, PAGE_SIZE};
use crate::error::{Error, Result};
use crate::memory::PhysicalMemory;
use crate::paging::{read_virtual, translate, PagingMode, Translation};
use crate::registers::{ReadRegisters, RegisterGroups};

/// An address space: a paging mode and the CR3 value of its page-table root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressSpace {
    /// How the tables are walked.
    pub mode: PagingMode,
    /// The CR3 value (flag and PCID bits are masked by the walk).
    pub cr3: Gpa,
}

impl AddressSpace {
    /// An address space from its parts.
    pub fn new(mode: PagingMode, cr3: Gpa) -> Self {
        Self { mode, cr3 }
    }

    /// The same paging mode with another root: another process's address space.
    pub fn with_cr3(self, cr3: Gpa) -> Self {
        Self { cr3, ..self }
    }
}

/// Which address space a virtual access uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Space {
    /// The one the vCPU is in now (its CR0, CR4, EFER and CR3).
    Vcpu(VcpuId),
    /// This one.
    Explicit(AddressSpace),
}

impl From<VcpuId> for Space {
    fn from(v: VcpuId) -> Self {
        Self::Vcpu(v)
    }
}

impl From<AddressSpace> for Space {
    fn from(a: AddressSpace) -> Self {
        Self::Explicit(a)
    }
}

/// Guest virtual memory, for every backend with physical memory and registers.
pub trait VirtualMemory {
    /// The address space `vcpu` is in now.
    fn address_space(&self, vcpu: VcpuId) -> Result<AddressSpace>;

    /// Translates `gva` in `space`.
    fn translate_va(&self, space: impl Into<Space>, gva: Gva) -> Result<Translation>;

    /// Reads `buf.len()` bytes at `gva` in `space`, page by page.
    fn read_va(&self, space: impl Into<Space>, gva: Gva, buf: &mut [u8]) -> Result<()>;

    /// Reads a byte.
    fn read_va_u8(&self, space: impl Into<Space>, gva: Gva) -> Result<u8> {
        let mut b = [0u8; 1];
        self.read_va(space, gva, &mut b)?;
        Ok(b[0])
    }

    /// Reads a little-endian `u16`.
    fn read_va_u16(&self, space: impl Into<Space>, gva: Gva) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_va(space, gva, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    /// Reads a little-endian `u32`.
    fn read_va_u32(&self, space: impl Into<Space>, gva: Gva) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_va(space, gva, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads a little-endian `u64` (a pointer of a 64-bit guest).
    fn read_va_u64(&self, space: impl Into<Space>, gva: Gva) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_va(space, gva, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a NUL-terminated string of at most `max_len` bytes (the NUL not included
    /// in the result). Reads page by page, so a string that ends just before an
    /// unmapped page is read. Fails with [`Error::InvalidArgument`] if no NUL comes
    /// within `max_len` bytes.
    fn read_va_cstr(&self, space: impl Into<Space>, gva: Gva, max_len: usize) -> Result<Vec<u8>>;
}

impl<T: PhysicalMemory + ReadRegisters + ?Sized> VirtualMemory for T {
    fn address_space(&self, vcpu: VcpuId) -> Result<AddressSpace> {
        let regs = self.registers(vcpu, RegisterGroups::CONTROL | RegisterGroups::EFER, &[])?;
        let (cr0, cr4, efer) = regs.paging_inputs().ok_or_else(|| Error::Unsupported {
            feature: "virtual memory access".into(),
            reason: format!("the backend did not report CR0, CR4 and EFER of {vcpu}").into(),
        })?;
        let cr3 = regs.control.map_or(0, |c| c.cr3);
        Ok(AddressSpace::new(
            PagingMode::from_registers(cr0, cr4, efer),
            Gpa(cr3),
        ))
    }

    fn translate_va(&self, space: impl Into<Space>, gva: Gva) -> Result<Translation> {
        let a = resolve(self, space.into())?;
        translate(self, a.mode, a.cr3, gva)
    }

    fn read_va(&self, space: impl Into<Space>, gva: Gva, buf: &mut [u8]) -> Result<()> {
        let a = resolve(self, space.into())?;
        read_virtual(self, a.mode, a.cr3, gva, buf)
    }

    fn read_va_cstr(&self, space: impl Into<Space>, gva: Gva, max_len: usize) -> Result<Vec<u8>> {
        let a = resolve(self, space.into())?;
        let mut out = Vec::new();
        let mut va = gva.0;
        let mut page = [0u8; PAGE_SIZE as usize];
        while out.len() < max_len {
            let in_page = (PAGE_SIZE - (va & (PAGE_SIZE - 1))) as usize;
            let n = in_page.min(max_len - out.len());
            read_virtual(self, a.mode, a.cr3, Gva(va), &mut page[..n])?;
            if let Some(end) = page[..n].iter().position(|b| *b == 0) {
                out.extend_from_slice(&page[..end]);
                return Ok(out);
            }
            out.extend_from_slice(&page[..n]);
            va = va.wrapping_add(n as u64);
        }
        Err(Error::InvalidArgument {
            what: "C string",
            reason: format!("no NUL within {max_len} bytes at {gva}").into(),
        })
    }
}

fn resolve<T: PhysicalMemory + ReadRegisters + ?Sized>(
    vm: &T,
    space: Space,
) -> Result<AddressSpace> {
    match space {
        Space::Explicit(a) => Ok(a),
        Space::Vcpu(v) => vm.address_space(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registers::{msr, ControlRegs, RegisterSnapshot};
    use crate::SparseMemory;

    /// Guest memory with one 4-level mapping of two 4 KiB pages at `VA` (the page after
    /// them unmapped), and a vCPU whose registers name those tables.
    struct Vm {
        mem: SparseMemory,
        cr3: u64,
    }

    const VA: u64 = 0xffff_8000_0000_0000;

    impl PhysicalMemory for Vm {
        fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
            self.mem.read_physical(gpa, buf)
        }
    }

    impl ReadRegisters for Vm {
        fn registers(&self, _: VcpuId, _: RegisterGroups, _: &[u32]) -> Result<RegisterSnapshot> {
            let mut s = RegisterSnapshot {
                control: Some(ControlRegs {
                    cr0: 0x8000_0011,
                    cr4: 0x20,
                    cr3: self.cr3,
                    ..ControlRegs::default()
                }),
                ..RegisterSnapshot::default()
            };
            s.msrs.insert(msr::EFER, 0x500);
            Ok(s)
        }
    }

    fn vm() -> Vm {
        let mut mem = SparseMemory::new();
        mem.write_u64(Gpa(0x1000 + 256 * 8), 0x2003);
        mem.write_u64(Gpa(0x2000), 0x3003);
        mem.write_u64(Gpa(0x3000), 0x4003);
        // Two 4 KiB pages, physically apart (0x9000 then 0x5000).
        mem.write_u64(Gpa(0x4000), 0x9003);
        mem.write_u64(Gpa(0x4008), 0x5003);
        Vm { mem, cr3: 0x1000 }
    }

    #[test]
    fn strings_cross_pages_and_stop_at_the_nul() {
        let mut vm = vm();
        vm.mem.write(Gpa(0x9ffc), b"spli");
        vm.mem.write(Gpa(0x5000), b"t\0rest");
        let s = vm.read_va_cstr(VcpuId(0), Gva(VA + 0xffc), 64).unwrap();
        assert_eq!(s, b"split");
        assert_eq!(vm.read_va_u8(VcpuId(0), Gva(VA + 0x1000)).unwrap(), b't');
        let space = vm.address_space(VcpuId(0)).unwrap();
        assert_eq!(space.cr3, Gpa(0x1000));
        assert_eq!(
            vm.read_va_u32(space, Gva(VA + 0xffe)).unwrap(),
            u32::from_le_bytes(*b"lit\0")
        );
    }

    #[test]
    fn unterminated_and_unmapped_strings_fail() {
        let mut vm = vm();
        vm.mem.write(Gpa(0x5ffe), b"ab");
        // Runs into the unmapped third page before a NUL.
        assert!(matches!(
            vm.read_va_cstr(VcpuId(0), Gva(VA + 0x1ffe), 64),
            Err(Error::PageFault { .. })
        ));
        vm.mem.write(Gpa(0x9000), &[b'x'; 16]);
        assert!(matches!(
            vm.read_va_cstr(VcpuId(0), Gva(VA), 16),
            Err(Error::InvalidArgument { .. })
        ));
        assert_eq!(vm.read_va_cstr(VcpuId(0), Gva(VA), 17).unwrap().len(), 16);
    }
}
