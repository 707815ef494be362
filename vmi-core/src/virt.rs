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
    /// within `max_len` bytes, or before the end of the address space (as
    /// [`read_va`](Self::read_va) does for a range that wraps past it). The buffer grows
    /// with what was read, never beyond `max_len`, so `usize::MAX` is a valid limit.
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
            let end = page[..n].iter().position(|b| *b == 0);
            let take = end.unwrap_or(n);
            // Grow by what was read, doubling for long strings, but never past the
            // caller's limit (`take <= max_len - out.len()`).
            if out.capacity() - out.len() < take {
                out.reserve_exact(out.len().max(take).min(max_len - out.len()));
            }
            out.extend_from_slice(&page[..take]);
            if end.is_some() {
                return Ok(out);
            }
            if out.len() < max_len {
                // More to read: the string must not continue at address 0.
                va = va
                    .checked_add(n as u64)
                    .ok_or_else(|| Error::InvalidArgument {
                        what: "gva",
                        reason: format!(
                            "no NUL in the C string at {gva} before the virtual range \
                             wraps past the end of the address space"
                        )
                        .into(),
                    })?;
            }
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

    impl crate::Backend for Vm {
        fn name(&self) -> std::borrow::Cow<'_, str> {
            "test vm".into()
        }
        fn capabilities(&self) -> std::sync::Arc<crate::CapabilityReport> {
            std::sync::Arc::new(crate::CapabilityReport::undeclared("test vm"))
        }
        fn physical_memory(&self) -> &dyn PhysicalMemory {
            &self.mem
        }
        fn register_reader(&self) -> Option<&dyn ReadRegisters> {
            Some(self)
        }
    }

    /// The same memory, from a backend that cannot read registers.
    struct MemoryOnly(Vm);

    impl crate::Backend for MemoryOnly {
        fn name(&self) -> std::borrow::Cow<'_, str> {
            "memory only".into()
        }
        fn capabilities(&self) -> std::sync::Arc<crate::CapabilityReport> {
            std::sync::Arc::new(crate::CapabilityReport::undeclared("memory only"))
        }
        fn physical_memory(&self) -> &dyn PhysicalMemory {
            &self.0.mem
        }
    }

    #[test]
    fn a_dyn_backend_reads_virtual_memory_like_its_concrete_type() {
        let mut vm = vm();
        vm.mem.write(Gpa(0x9ffc), b"spli");
        vm.mem.write(Gpa(0x5000), b"t\0rest");
        let direct = vm.read_va_cstr(VcpuId(0), Gva(VA + 0xffc), 64).unwrap();
        let backend: &(dyn crate::Backend + Send + Sync) = &vm;
        assert_eq!(
            backend
                .read_va_cstr(VcpuId(0), Gva(VA + 0xffc), 64)
                .unwrap(),
            direct
        );
        let t = backend.translate_va(VcpuId(0), Gva(VA + 0x1004)).unwrap();
        assert_eq!(t.gpa, Gpa(0x5004));
        let mut buf = [0u8; 8];
        backend
            .read_va(VcpuId(0), Gva(VA + 0xffc), &mut buf)
            .unwrap();
        assert_eq!(&buf, b"split\0re");
        // Unmapped stays a page fault through the trait object.
        assert!(matches!(
            backend.read_va(VcpuId(0), Gva(VA + 0x2000), &mut buf),
            Err(Error::PageFault { .. })
        ));
    }

    #[test]
    fn a_dyn_backend_without_registers_reads_explicit_address_spaces_only() {
        let mut vm = vm();
        vm.mem.write(Gpa(0x5000), b"abc\0");
        let space = vm.address_space(VcpuId(0)).unwrap();
        let only = MemoryOnly(vm);
        let backend: &dyn crate::Backend = &only;
        let e = backend.read_va_u8(VcpuId(0), Gva(VA + 0x1000)).unwrap_err();
        assert!(
            matches!(&e, Error::Unsupported { reason, .. } if reason.contains("memory only")),
            "{e}"
        );
        assert!(backend.address_space(VcpuId(0)).is_err());
        assert_eq!(
            backend.read_va_cstr(space, Gva(VA + 0x1000), 8).unwrap(),
            b"abc"
        );
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

    /// A 4-level address space with the last page of the address space
    /// (`0xffff_ffff_ffff_f000`, at GPA 0x8000) and the first (at GPA 0xd000) mapped.
    fn vm_with_both_ends() -> Vm {
        let mut mem = SparseMemory::new();
        // PML4[511] -> PDPT[511] -> PD[511] -> PT[511] -> 0x8000.
        mem.write_u64(Gpa(0x1000 + 511 * 8), 0x2003);
        mem.write_u64(Gpa(0x2000 + 511 * 8), 0x3003);
        mem.write_u64(Gpa(0x3000 + 511 * 8), 0x4003);
        mem.write_u64(Gpa(0x4000 + 511 * 8), 0x8003);
        // PML4[0] -> PDPT[0] -> PD[0] -> PT[0] -> 0xd000.
        mem.write_u64(Gpa(0x1000), 0xa003);
        mem.write_u64(Gpa(0xa000), 0xb003);
        mem.write_u64(Gpa(0xb000), 0xc003);
        mem.write_u64(Gpa(0xc000), 0xd003);
        Vm { mem, cr3: 0x1000 }
    }

    #[test]
    fn unbounded_strings_stop_at_the_end_of_the_address_space() {
        const LAST_PAGE: u64 = 0xffff_ffff_ffff_f000;
        let mut vm = vm_with_both_ends();
        vm.mem.write(Gpa(0x8000), &[b'x'; PAGE_SIZE as usize]);
        vm.mem.write(Gpa(0xd000), b"tail\0");
        // No NUL before the end: an error like read_va's for a range past the end, not
        // a string continued at address 0 (the old loop wrapped and returned
        // 4096 x "x" + "tail").
        fn wraps<T>(r: &Result<T>) -> bool {
            matches!(r, Err(Error::InvalidArgument { what: "gva", reason })
                if reason.contains("wraps past the end"))
        }
        let r = vm.read_va_cstr(VcpuId(0), Gva(LAST_PAGE), usize::MAX);
        assert!(wraps(&r), "{:?}", r.map(|s| s.len()));
        let mut buf = [0u8; 8];
        assert!(wraps(&vm.read_va(
            VcpuId(0),
            Gva(LAST_PAGE + 0xffc),
            &mut buf
        )));
        // A NUL in the very last byte ends the string in time.
        vm.mem.write(Gpa(0x8fff), b"\0");
        let s = vm
            .read_va_cstr(VcpuId(0), Gva(LAST_PAGE), usize::MAX)
            .unwrap();
        assert_eq!(s.len(), PAGE_SIZE as usize - 1);
    }

    #[test]
    fn string_buffers_grow_by_what_was_read_up_to_the_limit() {
        let mut vm = vm();
        // 4500 bytes across the two pages, then the NUL; the limit is 5000.
        vm.mem.write(Gpa(0x9000), &[b'a'; PAGE_SIZE as usize]);
        vm.mem
            .write(Gpa(0x5000), &[b'b'; 4500 - PAGE_SIZE as usize]);
        vm.mem.write(Gpa(0x5000 + 4500 - PAGE_SIZE), b"\0");
        let s = vm.read_va_cstr(VcpuId(0), Gva(VA), 5000).unwrap();
        assert_eq!(s.len(), 4500);
        // The old loop doubled to 8 KiB, past what the caller allowed.
        assert!(s.capacity() <= 5000, "capacity {}", s.capacity());
        // A limit of usize::MAX reserves nothing up front.
        let s = vm.read_va_cstr(VcpuId(0), Gva(VA), usize::MAX).unwrap();
        assert_eq!(s.len(), 4500);
        assert!(s.capacity() < 2 * 4500, "capacity {}", s.capacity());
    }
}
