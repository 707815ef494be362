//! A dumped vCPU's registers as a [`RegisterSnapshot`], EFER derived.

use vmi_core::registers::{msr, ControlRegs};
use vmi_core::RegisterSnapshot;

use crate::notes::{PrStatus, QemuCpuState};

const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
/// EFER.LME.
pub const EFER_LME: u64 = 1 << 8;
/// EFER.LMA.
pub const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE.
pub const EFER_NXE: u64 = 1 << 11;
/// The EFER bits [`DumpVcpu::derived_efer`] reports (the ones paging depends on).
pub const EFER_DERIVED_BITS: u64 = EFER_LME | EFER_LMA | EFER_NXE;

/// One vCPU of an ELF dump: what its notes say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpVcpu {
    /// Its `CORE`/`NT_PRSTATUS` note, if the dump has one for it.
    pub prstatus: Option<PrStatus>,
    /// Its `QEMU` note, if the dump has one for it.
    pub qemu: Option<QemuCpuState>,
    /// Whether the dump is of a guest in long mode (ELF machine x86-64: QEMU writes
    /// it exactly when the first vCPU has EFER.LMA set).
    pub(crate) long_mode_dump: bool,
}

impl DumpVcpu {
    /// EFER as far as the dump tells it, which QEMU does not save.
    ///
    /// Derived from the paging state: with CR0.PG and CR4.PAE set, NXE is reported set
    /// (a guest running without NXE never has a present entry with bit 63 set — that
    /// would be a reserved-bit fault — so reporting it only lets a walk through entries
    /// the guest itself could not use), and LME and LMA are reported set when the
    /// dump is a long-mode one (see [`DumpVcpu::long_mode_dump`]) or this vCPU runs
    /// 64-bit code (CS.L). Every other bit (SCE, SVME, …) is reported clear. `None`
    /// without the `QEMU` note (no control registers).
    pub fn derived_efer(&self) -> Option<u64> {
        let q = self.qemu.as_ref()?;
        let (cr0, cr4) = (q.cr[0], q.cr[4]);
        if cr0 & CR0_PG == 0 || cr4 & CR4_PAE == 0 {
            return Some(0);
        }
        let long = self.long_mode_dump || q.segments.cs.attributes.l;
        Some(EFER_NXE | if long { EFER_LME | EFER_LMA } else { 0 })
    }

    /// Whether the ELF machine of the dump is x86-64 (QEMU: the first vCPU was in
    /// long mode).
    pub fn long_mode_dump(&self) -> bool {
        self.long_mode_dump
    }

    /// Every register the dump holds for this vCPU.
    ///
    /// From the `QEMU` note: GPRs, RIP, RFLAGS, the segments with their hidden parts,
    /// GDTR, IDTR, CR0, CR2, CR3, CR4; CR8 is **not** in the dump (QEMU saves no
    /// TPR) and is reported 0, whatever the guest had (a Linux 6.1 guest under TCG had
    /// CR8 = 1 on vCPU 0): do not rely on it; EFER as
    /// [`DumpVcpu::derived_efer`]; MSRs `FS_BASE` and `GS_BASE` (the segment bases)
    /// and, where QEMU saved it, `KERNEL_GS_BASE`. Without a `QEMU` note, the GPRs and
    /// FS/GS bases of `NT_PRSTATUS`. Debug registers and XCR0 are never in a dump.
    pub fn snapshot(&self) -> RegisterSnapshot {
        let mut s = RegisterSnapshot::default();
        if let Some(q) = &self.qemu {
            s.gprs = Some(q.gprs);
            s.segments = Some(q.segments);
            s.gdtr = Some(q.gdtr);
            s.idtr = Some(q.idtr);
            s.control = Some(ControlRegs {
                cr0: q.cr[0],
                cr2: q.cr[2],
                cr3: q.cr[3],
                cr4: q.cr[4],
                cr8: 0,
            });
            s.msrs.insert(msr::FS_BASE, q.segments.fs.base);
            s.msrs.insert(msr::GS_BASE, q.segments.gs.base);
            if let Some(k) = q.kernel_gs_base {
                s.msrs.insert(msr::KERNEL_GS_BASE, k);
            }
            if let Some(efer) = self.derived_efer() {
                s.msrs.insert(msr::EFER, efer);
            }
        } else if let Some(p) = &self.prstatus {
            s.gprs = Some(p.gprs);
            if let Some(b) = p.fs_base {
                s.msrs.insert(msr::FS_BASE, b);
            }
            if let Some(b) = p.gs_base {
                s.msrs.insert(msr::GS_BASE, b);
            }
        }
        s
    }
}
