//! Events a backend traps, what to trap ([`Monitor`]), and how to answer
//! ([`Response`]).
//!
//! The model covers every field of LibVMI's event structures (`vmi_event_t` version 9)
//! and every `VMI_EVENT_RESPONSE_*` flag, in Rust terms: one enum variant per event kind
//! with the fields that kind has, and a response made of one [`Action`] plus optional
//! side effects. The mapping is written next to each item.
//!
//! # Replying exactly once
//!
//! A trapped vCPU is parked until its event is answered (see [`crate::park`]).
//! [`EventControl::wait_event`] hands out a [`PendingEvent`], a guard:
//! [`PendingEvent::reply`] consumes it, and dropping it unanswered — also while a
//! handler panics — answers [`Response::default`] (continue). A second answer does not
//! compile, and no path leaves a vCPU blocked.
//!
//! # Capabilities
//!
//! [`Monitor::required_capabilities`] and [`Response::required_capabilities`] name the
//! rows of the [`crate::CapabilityReport`] they need; backends check monitors and
//! responses against their one table with [`crate::CapabilityReport::check_monitor`]
//! and [`crate::CapabilityReport::check_response`], before anything is sent.

use std::time::Duration;

use bitflags::bitflags;

use crate::addr::{Gfn, Gpa, Gva, VcpuId, View};
use crate::capability::{Capability, CapabilitySet};
use crate::error::{Error, Result};
pub use crate::park::PendingEvent;
pub use crate::vcpu::VcpuSet;

mod registers;
mod response;
pub use registers::{EventRegisters, RegisterDecoder};
pub use response::{register_write_capabilities, Action, EmulInsn, EmulReadData, Response};

bitflags! {
    /// Memory access permissions (read, write, execute).
    ///
    /// Where this type configures page access (see [`crate::PageAccess`]), it names the
    /// accesses the guest is **allowed**; any other access traps. LibVMI's
    /// `VMI_MEMACCESS_*` names the accesses to *trap*; [`Access::from_libvmi_trap`]
    /// converts.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Access: u8 {
        /// Read.
        const R = 1 << 0;
        /// Write.
        const W = 1 << 1;
        /// Execute.
        const X = 1 << 2;
        /// Read and write.
        const RW = Self::R.bits() | Self::W.bits();
        /// Read and execute.
        const RX = Self::R.bits() | Self::X.bits();
        /// Everything.
        const RWX = Self::R.bits() | Self::W.bits() | Self::X.bits();
    }
}

impl Access {
    /// Converts LibVMI's "accesses to trap" (`N` = none trapped, `W` = trap writes, …)
    /// into the allowed set. Trapping reads without trapping writes (LibVMI `R`, `RX`)
    /// would need a write-only EPT entry, which x86 EPT cannot express; that is refused.
    pub fn from_libvmi_trap(trap: Access) -> Result<Access> {
        if trap.contains(Access::R) && !trap.contains(Access::W) {
            return Err(Error::InvalidArgument {
                what: "memory access",
                reason: "trapping reads requires trapping writes too (EPT has no write-only pages)"
                    .into(),
            });
        }
        Ok(Access::RWX - trap)
    }
}

/// Which register a register event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RegisterId {
    /// A control register (0, 3, 4, …).
    Cr(u8),
    /// A model-specific register, by index.
    Msr(u32),
    /// An extended control register (XSETBV), by index.
    Xcr(u32),
}

/// Register access kinds (LibVMI `vmi_reg_access_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RegisterAccess {
    /// Reads.
    Read,
    /// Writes.
    Write,
    /// Reads and writes.
    ReadWrite,
}

/// When a register-write monitor reports (LibVMI `reg_event.equal`, `onchange`,
/// `async`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RegisterFilter {
    /// Only report writes of exactly this value (`equal`).
    pub equal: Option<u64>,
    /// Only report writes that change the value (`onchange`).
    pub on_change: bool,
    /// Report without stopping the vCPU; the response is ignored (`async`).
    pub asynchronous: bool,
}

/// Which interrupts an interrupt monitor reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum InterruptKind {
    /// Software breakpoints (`INT3`, #BP).
    Int3,
    /// The next interrupt or exception delivered to the vCPU (LibVMI `INT_NEXT`).
    Next,
}

/// Which descriptor-table register a descriptor event is about (LibVMI
/// `VMI_DESCRIPTOR_*`; LibVMI's KVM driver reported LDTR as IDTR — we do not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DescriptorTableReg {
    /// IDTR (LIDT/SIDT).
    Idtr,
    /// GDTR (LGDT/SGDT).
    Gdtr,
    /// LDTR (LLDT/SLDT).
    Ldtr,
    /// TR (LTR/STR).
    Tr,
}

/// Something to trap. Enabled and disabled with [`EventControl::enable`] and
/// [`EventControl::disable`]. Memory access is configured per page with
/// [`crate::PageAccess`] instead; [`Monitor::MemoryAccess`] only turns delivery on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Monitor {
    /// Control-register accesses (LibVMI `REGISTER` with CR0/CR3/CR4/…).
    ControlRegister {
        /// Which CR.
        cr: u8,
        /// Which accesses.
        access: RegisterAccess,
        /// Reporting filter.
        filter: RegisterFilter,
    },
    /// MSR accesses, one MSR (LibVMI `MSR_ANY` + `msr`).
    Msr {
        /// The MSR index.
        index: u32,
        /// Which accesses.
        access: RegisterAccess,
        /// Reporting filter.
        filter: RegisterFilter,
    },
    /// Accesses to every MSR the host can intercept (LibVMI `MSR_ALL`, whose list
    /// [`crate::registers::msr::LIBVMI_MSR_ALL`] is the least a backend covers; vmi-kvm
    /// covers every MSR of KVM's intercept-bitmap ranges the host accepts).
    AllMsrs {
        /// Which accesses.
        access: RegisterAccess,
    },
    /// XSETBV (XCR writes).
    Xsetbv,
    /// Interrupts.
    Interrupt(InterruptKind),
    /// Single-stepping on the vCPUs of the set.
    Singlestep(VcpuSet),
    /// CPUID execution.
    Cpuid,
    /// Hypercalls / privileged calls (VMCALL/VMMCALL; LibVMI `PRIVILEGED_CALL`).
    Hypercall,
    /// Descriptor-table register accesses (LGDT, SIDT, LLDT, LTR, …).
    Descriptor,
    /// Debug exceptions (#DB), e.g. hardware breakpoints.
    DebugException,
    /// Delivery of memory-access events for pages restricted with
    /// [`crate::PageAccess`].
    MemoryAccess,
    /// Injected exceptions having been delivered (KVMi `TRAP`).
    Trap,
    /// vCPU creation.
    VcpuCreate,
}

/// Hardware exit information of a descriptor access (LibVMI `desc_event` union).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DescriptorExitInfo {
    /// Intel VMX: VM-exit instruction information and exit qualification.
    Vmx {
        /// VM-exit instruction-information field.
        instr_info: u32,
        /// Exit qualification.
        exit_qualification: u64,
    },
    /// AMD SVM: EXITINFO1.
    Svm {
        /// EXITINFO1.
        exit_info: u64,
    },
}

/// Interruption type of an injected or trapped event (VMX/SVM interruption-type bits
/// 10:8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum InterruptionType {
    /// External interrupt.
    External,
    /// NMI.
    Nmi,
    /// Hardware exception.
    HardwareException,
    /// Software interrupt (INT n).
    SoftwareInterrupt,
    /// Privileged software exception (INT1).
    PrivilegedSoftwareException,
    /// Software exception (INT3, INTO).
    SoftwareException,
    /// A value not defined above.
    Other(u8),
}

impl InterruptionType {
    /// Decodes the 3-bit VMX interruption type.
    pub fn from_vmx(bits: u8) -> Self {
        match bits & 7 {
            0 => Self::External,
            2 => Self::Nmi,
            3 => Self::HardwareException,
            4 => Self::SoftwareInterrupt,
            5 => Self::PrivilegedSoftwareException,
            6 => Self::SoftwareException,
            other => Self::Other(other),
        }
    }
}

/// What happened. One variant per event kind, each with the fields LibVMI's matching
/// sub-structure has.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// A restricted page was accessed (LibVMI `mem_event`).
    MemoryAccess {
        /// The frame accessed (`gfn`).
        gfn: Gfn,
        /// Byte offset in the frame (`offset`).
        offset: u64,
        /// The linear address, when the hardware reported one (`gla`, `gla_valid`).
        gla: Option<Gva>,
        /// The access that trapped (`out_access`).
        access: Access,
        /// The fault happened while the CPU walked guest page tables (`gptw`).
        page_walk: bool,
    },
    /// A register was written (or read) (LibVMI `reg_event`).
    Register {
        /// Which register (`reg`, and `msr` for MSRs).
        register: RegisterId,
        /// The access (`out_access`).
        access: RegisterAccess,
        /// The value written (`value`). Override it with [`Response::set_value`].
        value: u64,
        /// The value before the write (`previous`), when known.
        previous: Option<u64>,
    },
    /// A software breakpoint (INT3) was hit (LibVMI `interrupt_event` with `INT3`).
    Breakpoint {
        /// Linear address of the INT3 (RIP) (`gla`).
        gla: Gva,
        /// Its frame (`gfn`).
        gfn: Gfn,
        /// Offset in the frame (`offset`).
        offset: u64,
        /// Length of the instruction (`insn_length`; 1 for `0xCC`).
        insn_length: u8,
    },
    /// An interrupt or exception is about to be delivered (LibVMI `INT_NEXT`).
    NextInterrupt {
        /// Vector.
        vector: u8,
        /// Interruption type.
        kind: InterruptionType,
        /// Error code, if the exception has one.
        error_code: Option<u32>,
        /// CR2 (page faults).
        cr2: u64,
    },
    /// A single step completed (LibVMI `ss_event`).
    Singlestep {
        /// RIP after the step (`gla`).
        gla: Gva,
        /// Its frame, when known (`gfn`).
        gfn: Option<Gfn>,
        /// Offset in the frame (`offset`).
        offset: u64,
        /// The step failed (KVMi reports failed single steps).
        failed: bool,
    },
    /// CPUID was executed (LibVMI `cpuid_event`).
    Cpuid {
        /// EAX input (`leaf`).
        leaf: u32,
        /// ECX input (`subleaf`).
        subleaf: u32,
        /// Instruction length (`insn_length`).
        insn_length: u8,
    },
    /// A hypercall / privileged call (LibVMI `privcall_event`).
    Hypercall {
        /// RIP (`gla`).
        gla: Gva,
        /// Its frame, when known (`gfn`).
        gfn: Option<Gfn>,
        /// Offset (`offset`).
        offset: u64,
    },
    /// A descriptor-table register was accessed (LibVMI `descriptor_event`).
    Descriptor {
        /// Which register (`descriptor`).
        descriptor: DescriptorTableReg,
        /// Load (LGDT, …) rather than store (`is_write`).
        is_write: bool,
        /// Hardware exit information, when the backend has it.
        exit_info: Option<DescriptorExitInfo>,
    },
    /// XSETBV was executed.
    Xsetbv {
        /// XCR index.
        xcr: u32,
        /// Previous value.
        old_value: u64,
        /// New value.
        new_value: u64,
    },
    /// A debug exception (#DB) (LibVMI `debug_event`).
    DebugException {
        /// RIP (`gla`).
        gla: Gva,
        /// Its frame, when known (`gfn`).
        gfn: Option<Gfn>,
        /// Offset (`offset`).
        offset: u64,
        /// Instruction length (`insn_length`).
        insn_length: u8,
        /// Interruption type (`type`).
        kind: InterruptionType,
        /// DR6 at the exception, when known.
        dr6: Option<u64>,
    },
    /// An exception injected with [`crate::FaultInjection`] has been delivered, or was
    /// overridden by another one (KVMi `TRAP`).
    Trap {
        /// Vector delivered.
        vector: u8,
        /// Interruption type.
        kind: InterruptionType,
        /// Error code, if any.
        error_code: Option<u32>,
        /// CR2.
        cr2: u64,
    },
    /// A vCPU was created.
    VcpuCreated,
    /// The host is about to detach introspection (QEMU pause, migration, shutdown): the
    /// tool should clean up and close the session.
    Unhook,
}

impl EventKind {
    /// The monitor that produces this kind of event (for capability checks and
    /// statistics).
    pub fn name(&self) -> &'static str {
        match self {
            Self::MemoryAccess { .. } => "memory access",
            Self::Register { .. } => "register access",
            Self::Breakpoint { .. } => "breakpoint",
            Self::NextInterrupt { .. } => "next interrupt",
            Self::Singlestep { .. } => "singlestep",
            Self::Cpuid { .. } => "cpuid",
            Self::Hypercall { .. } => "hypercall",
            Self::Descriptor { .. } => "descriptor access",
            Self::Xsetbv { .. } => "xsetbv",
            Self::DebugException { .. } => "debug exception",
            Self::Trap { .. } => "trap",
            Self::VcpuCreated => "vcpu create",
            Self::Unhook => "unhook",
        }
    }
}

/// A trapped event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The vCPU that trapped (`vcpu_id`).
    pub vcpu: VcpuId,
    /// The SLAT view active on it (`slat_id`).
    pub view: View,
    /// Registers at the time of the event, as far as the backend delivers them with the
    /// event (KVMi sends GPRs, segments, CRs and some MSRs; absent groups are `None`).
    /// A [`crate::RegisterSnapshot`] by dereference, decoded when first read (see
    /// [`EventRegisters`]).
    pub registers: EventRegisters,
    /// What happened.
    pub kind: EventKind,
}

/// Trapping events and answering them.
pub trait EventControl {
    /// Starts trapping `monitor` (on every vCPU unless the monitor names a set). Fails
    /// with [`Error::Unsupported`], before anything is sent, if a capability it needs
    /// ([`Monitor::required_capabilities`]) is not supported.
    fn enable(&self, monitor: &Monitor) -> Result<()>;

    /// Stops trapping `monitor`.
    fn disable(&self, monitor: &Monitor) -> Result<()>;

    /// Waits up to `timeout` for the next event; `Ok(None)` on timeout. A zero timeout
    /// only returns already-queued events (LibVMI `listen(0)`). `Duration::MAX` waits
    /// without a deadline.
    fn wait_event(&self, timeout: Duration) -> Result<Option<PendingEvent>>;

    /// Events already received but not yet handed out by [`Self::wait_event`].
    fn pending_events(&self) -> Result<usize>;

    /// Waits for one event, calls `handler`, and answers with its return value — also
    /// when the handler panics (the event's guard answers while unwinding, and the panic
    /// goes on). Returns whether an event was handled.
    fn dispatch(
        &self,
        timeout: Duration,
        handler: &mut dyn FnMut(&Event) -> Response,
    ) -> Result<bool> {
        let Some(pending) = self.wait_event(timeout)? else {
            return Ok(false);
        };
        let response = handler(pending.event());
        pending.reply(response).map(|()| true)
    }
}

impl Monitor {
    /// The capability rows this monitor needs.
    pub fn required_capabilities(&self) -> CapabilitySet {
        use Capability as C;
        fn register(
            base: Capability,
            access: RegisterAccess,
            filter: Option<&RegisterFilter>,
        ) -> CapabilitySet {
            let mut s = CapabilitySet::of(&[base]);
            s.insert(match access {
                RegisterAccess::Read => C::EventRegisterAccessR,
                RegisterAccess::Write => C::EventRegisterAccessW,
                RegisterAccess::ReadWrite => C::EventRegisterAccessRw,
            });
            if let Some(f) = filter {
                if f.equal.is_some() {
                    s.insert(C::EventRegisterEqual);
                }
                if f.on_change {
                    s.insert(C::EventRegisterOnchange);
                }
                if f.asynchronous {
                    s.insert(C::EventRegisterAsync);
                }
            }
            s
        }
        match self {
            Monitor::ControlRegister { access, filter, .. } => {
                register(C::EventRegisterCr, *access, Some(filter))
            }
            Monitor::Msr { access, filter, .. } => {
                let mut s = register(C::EventRegisterMsr, *access, Some(filter));
                s.insert(C::EventRegisterMsrIndex);
                s
            }
            Monitor::AllMsrs { access } => register(C::EventRegisterMsrAll, *access, None),
            Monitor::Xsetbv => CapabilitySet::of(&[C::EventXsetbv]),
            Monitor::Interrupt(InterruptKind::Int3) => CapabilitySet::of(&[C::EventInterruptInt3]),
            Monitor::Interrupt(InterruptKind::Next) => CapabilitySet::of(&[C::EventInterruptNext]),
            Monitor::Singlestep(_) => CapabilitySet::of(&[C::EventSinglestep]),
            Monitor::Cpuid => CapabilitySet::of(&[C::EventCpuid]),
            Monitor::Hypercall => CapabilitySet::of(&[C::EventPrivcall]),
            Monitor::Descriptor => CapabilitySet::of(&[C::EventDescriptorDescriptor]),
            Monitor::DebugException => CapabilitySet::of(&[C::EventDebugException]),
            Monitor::MemoryAccess => CapabilitySet::of(&[C::EventMemGfn]),
            Monitor::Trap => CapabilitySet::of(&[C::EventTrap]),
            Monitor::VcpuCreate => CapabilitySet::of(&[C::EventVcpuCreate]),
        }
    }
}

/// Derives the `gfn`/`offset` pair of LibVMI's events from a guest-physical address.
pub fn gfn_offset(gpa: Gpa) -> (Gfn, u64) {
    (gpa.gfn(), gpa.page_offset())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libvmi_trap_conversion() {
        assert_eq!(
            Access::from_libvmi_trap(Access::empty()).unwrap(),
            Access::RWX
        );
        assert_eq!(Access::from_libvmi_trap(Access::W).unwrap(), Access::RX);
        assert_eq!(Access::from_libvmi_trap(Access::X).unwrap(), Access::RW);
        assert_eq!(
            Access::from_libvmi_trap(Access::RWX).unwrap(),
            Access::empty()
        );
        assert!(Access::from_libvmi_trap(Access::R).is_err());
        assert!(Access::from_libvmi_trap(Access::RX).is_err());
    }
}
