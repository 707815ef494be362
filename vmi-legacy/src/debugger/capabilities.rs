//! The capability table of the gdbstub paths: what [`GdbSession`](super::GdbSession)
//! and [`crate::LegacyQemu`] can do on unpatched QEMU, and why not what they cannot.

use vmi_core::{Capability, CapabilityReport, Support};

/// The capability report of the gdbstub paths (with the QMP/RAM paths of
/// [`crate::LegacyQemu`] for memory).
pub(crate) fn gdb_capabilities(name: &'static str) -> CapabilityReport {
    use Capability as C;
    let mut r = CapabilityReport::new(name, "KVMi only: unpatched QEMU has no such interface");
    r.supported(&[
        C::ReadPhysicalMemory,
        C::WritePhysicalMemory,
        C::ReadGprs,
        C::ReadControlRegisters,
        C::ReadMsrs,
        C::WriteGprs,
        C::WriteControlRegisters,
        C::PauseResume,
        C::EventSinglestep,
        C::EventInterruptInt3,
        C::EventInterruptInsnLength,
        C::EventInterruptGla,
        C::EventInterruptGfn,
        C::EventInterruptOffset,
        C::EventMemGfn,
        C::EventMemOutAccess,
        C::EventMemGla,
        C::EventMemGlaValid,
        C::EventMemOffset,
        C::EventMemGptw,
        C::ResponseNone,
        C::ResponseToggleSinglestep,
        C::ResponseSetRegisters,
        C::VcpuCount,
    ]);
    r.set(
        C::ReadMsrs,
        Support::Supported, // EFER, FS/GS/KERNEL_GS_BASE only
    );
    r.set(
        C::WriteMsrs,
        Support::no("only EFER, FS_BASE, GS_BASE, KERNEL_GS_BASE (through the gdbstub)"),
    );
    r.unsupported(
        &[C::ReadDebugRegisters, C::WriteDebugRegisters],
        "QEMU's gdbstub has no debug registers (LegacyQemu reads them from info registers)",
    );
    r.unsupported(
        &[C::ReadSegmentRegisters, C::ReadDescriptorTables],
        "the gdbstub has selectors only; LegacyQemu adds them from info registers",
    );
    r.unsupported(
        &[C::WriteSegmentRegisters, C::WriteDescriptorTables],
        "QEMU's gdbstub cannot write segment caches or GDTR/IDTR",
    );
    r.unsupported(
        &[C::MemorySize, C::GuestMemoryMapping],
        "needs QMP (LegacyQemu)",
    );
    r.unsupported(
        &[
            C::EventRegisterCr,
            C::EventRegisterEqual,
            C::EventRegisterAsync,
            C::EventRegisterOnchange,
            C::EventRegisterAccessN,
            C::EventRegisterAccessW,
            C::EventRegisterAccessR,
            C::EventRegisterAccessRw,
            C::EventRegisterOutAccess,
            C::EventRegisterValue,
            C::EventRegisterPrevious,
        ],
        "QEMU's gdbstub has no CR-write trap",
    );
    r.unsupported(
        &[
            C::EventRegisterMsr,
            C::EventRegisterMsrAll,
            C::EventRegisterMsrIndex,
        ],
        "QEMU's gdbstub has no MSR trap",
    );
    r.unsupported(
        &[
            C::EventInterruptNext,
            C::EventInterruptVector,
            C::EventInterruptType,
            C::EventInterruptErrorCode,
            C::EventInterruptCr2,
            C::ResponseGetNextInterrupt,
        ],
        "QEMU's gdbstub does not report guest interrupt delivery",
    );
    r.unsupported(
        &[C::EventInterruptReinject, C::ResponseBreakpointReinject],
        "gdbstub breakpoints are not guest INT3s; QEMU's gdbstub cannot inject #BP",
    );
    r.unsupported(
        &[C::EventMemGeneric, C::EventMemInAccess],
        "memory events come from gdbstub watchpoints on guest-virtual ranges (≤ 8 bytes), not page permissions",
    );
    r.unsupported(
        &[
            C::ResponseEmulate,
            C::ResponseEmulateNowrite,
            C::ResponseSetEmulReadData,
            C::ResponseSetEmulInsn,
            C::ResponseDeny,
        ],
        "QEMU's gdbstub cannot emulate or deny instructions",
    );
    r.unsupported(
        &[C::ResponseSlatId, C::ResponseVmmPagetableId, C::Slat],
        "unpatched QEMU has no SLAT views",
    );
    r.unsupported(
        &[
            C::EventCpuid,
            C::EventPrivcall,
            C::EventDescriptorInstrInfo,
            C::EventDescriptorExitQualification,
            C::EventDescriptorExitInfo,
            C::EventDescriptorDescriptor,
            C::EventDescriptorIsWrite,
            C::EventXsetbv,
        ],
        "QEMU's gdbstub has no instruction traps (KVMi only)",
    );
    r.unsupported(
        &[C::EventDebugException],
        "guest #DB exceptions are not reported by the gdbstub",
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_answered() {
        let r = gdb_capabilities("t");
        assert_eq!(r.rows().count(), Capability::ALL.len());
        for (c, s) in r.rows() {
            if let Support::Unsupported(why) = s {
                assert!(!why.is_empty(), "{c}");
            }
        }
        assert!(r.is_supported(Capability::EventInterruptInt3));
    }
}
