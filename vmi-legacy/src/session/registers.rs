//! Register reads of a session: HMP `info registers` (and `info lapic` for CR8),
//! merged with the gdbstub's exact registers when a stub session exists.

use vmi_core::registers::{msr, ReadRegisters, RegisterGroups};
use vmi_core::{Error, RegisterSnapshot, Result, VcpuId};

use crate::debugger::all_msrs;
use crate::hmp;

use super::LegacyQemu;

impl ReadRegisters for LegacyQemu {
    /// Reads the registers of `vcpu` from HMP `info registers` (with `cpu-index`), and,
    /// when CONTROL is asked for, CR8 from the TPR in `info lapic` (CR8 = TPR bits 7:4); if
    /// that fails the CONTROL group is left out rather than reporting CR8 = 0.
    ///
    /// `VcpuId(n)` is QEMU's `cpu-index` n (`query-cpus-fast`).
    ///
    /// Available: GPRS (not in compatibility mode), CONTROL, DEBUG, SEGMENTS,
    /// DESCRIPTOR_TABLES, EFER, and MSR `IA32_EFER` when listed. Absent: XCR0 and every
    /// other MSR (QEMU does not print them; with the gdbstub see below). The
    /// two monitor commands are not atomic: pause the guest for a consistent snapshot.
    ///
    /// With a GDB stub session, GPRS, CONTROL, EFER and the MSRs `FS_BASE`, `GS_BASE`,
    /// `KERNEL_GS_BASE` come from the stub's `g` packet instead (exact, and GPRS in every
    /// mode); segments, descriptor tables and DRs still from `info registers`.
    ///
    /// While the vCPU is parked (in an event, or paused) what is already known is
    /// served from the parked vCPU's cache without asking QEMU.
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        self.parking
            .read_registers(vcpu, groups, msrs, |groups, msrs| match &self.gdb {
                Some(gdb) => {
                    let mut snap = self.hmp_registers(vcpu, groups, msrs)?;
                    snap.merge(&gdb.fetch_registers(vcpu, groups, msrs)?);
                    Ok(snap)
                }
                None => self.hmp_registers(vcpu, groups, msrs),
            })
    }

    /// Every group, [`msr::ESSENTIAL`], and with the gdbstub `FS_BASE` and `GS_BASE`.
    fn all_registers(&self, vcpu: VcpuId) -> Result<RegisterSnapshot> {
        self.registers(vcpu, RegisterGroups::all(), &all_msrs())
    }
}

impl LegacyQemu {
    fn hmp_registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        let index = self.cpu_index(vcpu)?;
        let with_vcpu = |e: Error| match e {
            Error::Backend {
                command,
                address,
                source,
                ..
            } => Error::Backend {
                command,
                vcpu: Some(vcpu),
                address,
                source,
            },
            e => e,
        };
        let mut qmp = self.qmp();
        let text = qmp
            .human_monitor_command_on("info registers", Some(index))
            .map_err(with_vcpu)?;
        let parsed = hmp::parse_cpu_registers(&text, index)?;
        let cr8 = if groups.contains(RegisterGroups::CONTROL) {
            qmp.human_monitor_command_on("info lapic", Some(index))
                .ok()
                .and_then(|t| hmp::parse_lapic_tpr(&t).ok())
                .map(|tpr| u64::from(tpr >> 4))
        } else {
            None
        };
        drop(qmp);
        let full = parsed.to_snapshot(cr8);
        let mut snap = RegisterSnapshot::default();
        if groups.contains(RegisterGroups::GPRS) {
            snap.gprs = full.gprs;
        }
        if groups.contains(RegisterGroups::CONTROL) {
            snap.control = full.control;
        }
        if groups.contains(RegisterGroups::DEBUG) {
            snap.debug = full.debug;
        }
        if groups.contains(RegisterGroups::SEGMENTS) {
            snap.segments = full.segments;
        }
        if groups.contains(RegisterGroups::DESCRIPTOR_TABLES) {
            snap.gdtr = full.gdtr;
            snap.idtr = full.idtr;
        }
        let want_efer = groups.contains(RegisterGroups::EFER)
            || (groups.contains(RegisterGroups::MSRS) && msrs.contains(&msr::EFER));
        if let (true, Some(efer)) = (want_efer, full.efer()) {
            snap.msrs.insert(msr::EFER, efer);
        }
        Ok(snap)
    }
}
