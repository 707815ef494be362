//! The legacy backend's capability table: one place that says, for every row of
//! LibVMI's KVM-driver checklist and our extensions, whether it works on unpatched QEMU
//! and why not. [`crate::LegacyQemu`] and [`crate::GdbSession`] build their
//! [`CapabilityReport`] from it, and `vmi-core` checks every monitor, response and
//! register write against that report before anything reaches the guest.

use vmi_core::{Capability, CapabilityReport, Support};

/// How guest RAM is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RamPath {
    /// The RAM backend mapped into this process.
    Shared,
    /// `process_vm_readv`/`writev` into QEMU.
    Proc,
    /// QMP `pmemsave`/HMP `xp` (read only).
    Qmp,
    /// The gdbstub's physical-memory mode.
    Gdbstub,
}

/// The parts a session has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    /// QEMU's gdbstub.
    pub gdb: bool,
    /// QMP (with HMP through it).
    pub qmp: bool,
    /// How guest RAM is reached.
    pub ram: RamPath,
    /// The guest runs under KVM (as the gdbstub reports it): breakpoints and watchpoints
    /// share the 4 debug registers.
    pub kvm: bool,
}

/// The MSRs QEMU's gdbstub has (read and written through `g`/`P`).
pub(crate) const GDB_MSRS: &str = "EFER, FS_BASE, GS_BASE and KERNEL_GS_BASE (QEMU's gdbstub)";
const NEEDS_GDB: &str = "needs QEMU's gdbstub (LegacyConfig::gdb_socket)";
const NEEDS_QMP: &str = "needs QMP (LegacyQemu)";
const KVMI_ONLY: &str = "KVMi only: unpatched QEMU has no such interface";
const NO_CR_TRAP: &str = "QEMU's gdbstub has no CR-write trap";
const NO_MSR_TRAP: &str = "QEMU's gdbstub has no MSR trap";
const NO_INTR: &str = "QEMU's gdbstub does not report guest interrupt delivery";
const NO_REINJECT: &str =
    "gdbstub breakpoints are not guest INT3s; QEMU's gdbstub cannot inject #BP";
const NO_INSN_TRAP: &str = "QEMU's gdbstub has no instruction traps (KVMi only)";
const NO_EMULATION: &str = "QEMU's gdbstub cannot emulate, deny or retry instructions";
const NO_SLAT: &str = "unpatched QEMU has no SLAT views";
const KVM_DEBUG_REGS: &str = "under KVM: hardware breakpoints only, at most 4 breakpoints and \
     watchpoints together (the vCPU's debug registers); QEMU's 0xCC software breakpoints are \
     not used (on nested/paravirtual KVM they end in an emulation failure)";
const KVM_WATCH: &str = "under KVM: gdbstub watchpoints in the 4 debug registers (shared with \
     breakpoints), 1, 2, 4 or 8 bytes aligned to their length, on guest-virtual ranges";
const WATCH_ONLY: &str =
    "memory events come from gdbstub watchpoints on guest-virtual ranges (≤ 8 bytes), not page permissions";

/// Whether `cap` works with `parts`, and why not.
pub fn support(cap: Capability, parts: Parts) -> Support {
    use Capability as C;
    let yes = Support::Supported;
    let no = Support::no;
    let with_gdb = |s: Support| if parts.gdb { s } else { no(NEEDS_GDB) };
    let with_qmp = |s: Support, without: &'static str| if parts.qmp { s } else { no(without) };
    match cap {
        C::ReadPhysicalMemory | C::PauseResume | C::VcpuCount => yes,
        C::WritePhysicalMemory => match parts.ram {
            RamPath::Shared | RamPath::Proc | RamPath::Gdbstub => yes,
            RamPath::Qmp => no("guest RAM reached through QMP only (no shared backend, no ptrace)"),
        },
        C::GuestMemoryMapping => match parts.ram {
            RamPath::Shared => yes,
            RamPath::Proc => no("guest RAM is not a shared backend (process_vm_readv only)"),
            RamPath::Qmp => no("guest RAM reached through QMP only (no shared backend, no ptrace)"),
            RamPath::Gdbstub => no(NEEDS_QMP),
        },
        C::MemorySize => with_qmp(yes, NEEDS_QMP),
        C::ReadGprs | C::ReadControlRegisters => yes,
        C::ReadDebugRegisters => with_qmp(
            yes,
            "QEMU's gdbstub has no debug registers (LegacyQemu reads them from info registers)",
        ),
        C::ReadSegmentRegisters | C::ReadDescriptorTables => with_qmp(
            yes,
            "the gdbstub has selectors only; LegacyQemu adds them from info registers",
        ),
        C::ReadMsrs if parts.gdb => Support::partly(GDB_MSRS),
        C::ReadMsrs => Support::partly("EFER, as info registers prints it; other MSRs need KVMi"),
        C::WriteGprs | C::WriteControlRegisters => with_gdb(yes),
        C::WriteMsrs => with_gdb(Support::partly(GDB_MSRS)),
        C::WriteDebugRegisters => no("QEMU's gdbstub has no debug registers"),
        C::WriteSegmentRegisters | C::WriteDescriptorTables => {
            no("QEMU's gdbstub cannot write segment caches or GDTR/IDTR")
        }
        C::EventMemOutAccess if parts.kvm => with_gdb(Support::partly(KVM_WATCH)),
        C::EventSinglestep
        | C::EventInterruptInt3
        | C::EventInterruptInsnLength
        | C::EventInterruptGla
        | C::EventInterruptGfn
        | C::EventInterruptOffset
        | C::EventMemGfn
        | C::EventMemOutAccess
        | C::EventMemGla
        | C::EventMemGlaValid
        | C::EventMemOffset
        | C::EventMemGptw
        | C::ResponseNone
        | C::ResponseToggleSinglestep
        | C::ResponseSetRegisters => with_gdb(yes),
        C::SoftwareBreakpoints if parts.kvm => with_gdb(Support::partly(KVM_DEBUG_REGS)),
        C::SoftwareBreakpoints => with_gdb(yes),
        C::EventRegisterCr
        | C::EventRegisterEqual
        | C::EventRegisterAsync
        | C::EventRegisterOnchange
        | C::EventRegisterAccessN
        | C::EventRegisterAccessW
        | C::EventRegisterAccessR
        | C::EventRegisterAccessRw
        | C::EventRegisterOutAccess
        | C::EventRegisterValue
        | C::EventRegisterPrevious => no(NO_CR_TRAP),
        C::EventRegisterMsr | C::EventRegisterMsrAll | C::EventRegisterMsrIndex => no(NO_MSR_TRAP),
        C::EventInterruptNext
        | C::EventInterruptVector
        | C::EventInterruptType
        | C::EventInterruptErrorCode
        | C::EventInterruptCr2
        | C::ResponseGetNextInterrupt => no(NO_INTR),
        C::EventInterruptReinject | C::ResponseBreakpointReinject => no(NO_REINJECT),
        C::EventMemGeneric | C::EventMemInAccess => no(WATCH_ONLY),
        C::EventCpuid
        | C::EventPrivcall
        | C::EventDescriptorInstrInfo
        | C::EventDescriptorExitQualification
        | C::EventDescriptorExitInfo
        | C::EventDescriptorDescriptor
        | C::EventDescriptorIsWrite
        | C::EventXsetbv => no(NO_INSN_TRAP),
        C::EventDebugException => no("guest #DB exceptions are not reported by the gdbstub"),
        C::ResponseEmulate
        | C::ResponseEmulateNowrite
        | C::ResponseSetEmulReadData
        | C::ResponseSetEmulInsn
        | C::ResponseDeny
        | C::ResponseRetry => no(NO_EMULATION),
        C::ResponseSlatId | C::ResponseVmmPagetableId | C::Slat => no(NO_SLAT),
        C::ResponseRegisterValueOverride => no("register events do not exist through the gdbstub"),
        C::PauseVcpu => no("QEMU stops every vCPU together (QMP stop, gdbstub all-stop mode)"),
        // Page-fault injection, TSC, MTRR, XSAVE, GVA translation by the host, frame
        // allocation, traps, vCPU creation — and any row added to vmi-core later.
        _ => no(KVMI_ONLY),
    }
}

/// The report of a session with `parts`, named `name`.
pub fn legacy_capabilities(parts: Parts) -> CapabilityReport {
    let name = match (parts.qmp, parts.gdb) {
        (true, true) => "legacy (QMP + gdbstub)",
        (true, false) => "legacy (QMP)",
        _ => "legacy (QEMU gdbstub)",
    };
    let mut r = CapabilityReport::undeclared(name);
    for cap in Capability::ALL {
        r.set(*cap, support(*cap, parts));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_PARTS: [Parts; 5] = [
        Parts {
            gdb: true,
            qmp: true,
            ram: RamPath::Shared,
            kvm: true,
        },
        Parts {
            gdb: true,
            qmp: true,
            ram: RamPath::Shared,
            kvm: false,
        },
        Parts {
            gdb: false,
            qmp: true,
            ram: RamPath::Proc,
            kvm: false,
        },
        Parts {
            gdb: false,
            qmp: true,
            ram: RamPath::Qmp,
            kvm: false,
        },
        Parts {
            gdb: true,
            qmp: false,
            ram: RamPath::Gdbstub,
            kvm: false,
        },
    ];

    #[test]
    fn every_row_is_answered_with_a_reason() {
        for parts in ALL_PARTS {
            let r = legacy_capabilities(parts);
            assert_eq!(r.rows().count(), Capability::ALL.len());
            for (c, s) in r.rows() {
                match s {
                    Support::Unsupported(why) | Support::Partial(why) => {
                        assert!(!why.is_empty(), "{c}");
                        assert_ne!(why, "not declared by the backend", "{c} undeclared");
                    }
                    Support::Supported => {}
                }
            }
        }
    }

    #[test]
    fn gdbstub_rows_follow_the_stub() {
        let [kvm, full, qmp_only, ..] = ALL_PARTS;
        let kvm = legacy_capabilities(kvm);
        for c in [
            Capability::SoftwareBreakpoints,
            Capability::EventMemOutAccess,
        ] {
            assert!(
                matches!(kvm.get(c), Support::Partial(why) if why.contains("4")),
                "{c} under KVM names the 4 debug registers"
            );
        }
        let full = legacy_capabilities(full);
        let qmp_only = legacy_capabilities(qmp_only);
        for c in [
            Capability::EventInterruptInt3,
            Capability::WriteGprs,
            Capability::SoftwareBreakpoints,
        ] {
            assert!(full.is_supported(c), "{c}");
            assert!(!qmp_only.is_supported(c), "{c}");
        }
        assert!(matches!(
            full.get(Capability::WriteMsrs),
            Support::Partial(_)
        ));
        assert!(!full.is_supported(Capability::ResponseBreakpointReinject));
    }
}
