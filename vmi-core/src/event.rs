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
//! A trapped vCPU waits until its event is answered. [`EventControl::wait_event`]
//! hands out a [`PendingEvent`] whose [`ReplyToken`] can only be consumed once, by
//! [`EventControl::reply`]. Backends answer every event that is dropped unanswered (and
//! every event still pending when the session ends) with [`Response::default`]
//! (continue), so a guest is never left blocked.

use std::time::Duration;

use bitflags::bitflags;

use crate::addr::{Gfn, Gpa, Gva, VcpuId, View};
use crate::error::{Error, Result};
use crate::registers::RegisterSnapshot;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// Writes to every MSR LibVMI's `MSR_ALL` names
    /// ([`crate::registers::msr::LIBVMI_MSR_ALL`]).
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

/// A set of vCPUs (at most 64, more than LibVMI's 32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct VcpuSet(pub u64);

impl VcpuSet {
    /// Every vCPU below `count` (capped at 64).
    pub fn first(count: u32) -> Self {
        if count >= 64 {
            Self(u64::MAX)
        } else {
            Self((1u64 << count) - 1)
        }
    }

    /// A single vCPU (ignored when ≥ 64).
    pub fn single(vcpu: VcpuId) -> Self {
        Self(1u64.checked_shl(u32::from(vcpu.0)).unwrap_or(0))
    }

    /// Whether the set contains `vcpu`.
    pub fn contains(self, vcpu: VcpuId) -> bool {
        u32::from(vcpu.0) < 64 && self.0 & (1 << vcpu.0) != 0
    }

    /// The vCPUs in the set.
    pub fn iter(self) -> impl Iterator<Item = VcpuId> {
        (0u16..64)
            .filter(move |i| self.0 & (1 << i) != 0)
            .map(VcpuId)
    }
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
    pub registers: RegisterSnapshot,
    /// What happened.
    pub kind: EventKind,
}

/// Up to 256 bytes returned to the guest as the data of an emulated read
/// (LibVMI `emul_read_t`, `SET_EMUL_READ_DATA`).
#[derive(Clone, PartialEq, Eq)]
pub struct EmulReadData {
    len: u16,
    data: [u8; Self::MAX],
}

impl EmulReadData {
    /// Maximum length.
    pub const MAX: usize = 256;

    /// Copies `bytes`; fails if longer than [`Self::MAX`].
    pub fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > Self::MAX {
            return Err(Error::InvalidArgument {
                what: "emulated read data",
                reason: format!("{} bytes, at most {} allowed", bytes.len(), Self::MAX).into(),
            });
        }
        let mut data = [0u8; Self::MAX];
        data[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            len: bytes.len() as u16,
            data,
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for EmulReadData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmulReadData({:02x?})", self.as_bytes())
    }
}

/// Up to 16 instruction bytes to emulate instead of the ones in guest memory
/// (LibVMI `emul_insn_t`, `SET_EMUL_INSN`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct EmulInsn {
    len: u8,
    bytes: [u8; Self::MAX],
}

impl EmulInsn {
    /// Maximum length of an x86 instruction.
    pub const MAX: usize = 16;

    /// Copies `bytes`; fails if empty or longer than [`Self::MAX`].
    pub fn new(bytes: &[u8]) -> Result<Self> {
        if bytes.is_empty() || bytes.len() > Self::MAX {
            return Err(Error::InvalidArgument {
                what: "emulated instruction",
                reason: format!("{} bytes, 1 to {} allowed", bytes.len(), Self::MAX).into(),
            });
        }
        let mut b = [0u8; Self::MAX];
        b[..bytes.len()].copy_from_slice(bytes);
        Ok(Self {
            len: bytes.len() as u8,
            bytes: b,
        })
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for EmulInsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EmulInsn({:02x?})", self.as_bytes())
    }
}

/// What the vCPU does with the trapped instruction or access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Let the vCPU go on (LibVMI `RESPONSE_NONE`). For a breakpoint this means the #BP
    /// is *not* delivered to the guest (the tool handled it: KVMi `RETRY`); use
    /// [`Action::Reinject`] to pass it on. For a register write the write happens (with
    /// the value of [`Response::set_value`] if given).
    #[default]
    Continue,
    /// Deliver the trapped interrupt/exception to the guest (LibVMI
    /// `interrupt_event.reinject = 1`).
    Reinject,
    /// Emulate the instruction (LibVMI `RESPONSE_EMULATE`).
    Emulate,
    /// Emulate, discarding its memory writes (LibVMI `RESPONSE_EMULATE_NOWRITE`).
    EmulateNoWrite,
    /// Emulate, returning these bytes for the instruction's memory read (LibVMI
    /// `RESPONSE_SET_EMUL_READ_DATA`).
    EmulateWithReadData(Box<EmulReadData>),
    /// Emulate these instruction bytes instead of the ones in memory (LibVMI
    /// `RESPONSE_SET_EMUL_INSN`).
    EmulateInstruction(EmulInsn),
    /// Refuse the register write; the register keeps its old value (LibVMI
    /// `RESPONSE_DENY`).
    Deny,
    /// Re-execute the instruction without emulation (after the tool changed page access
    /// or memory).
    Retry,
}

/// The answer to an event: one [`Action`] plus optional side effects. Build it with the
/// methods, e.g. `Response::continue_().toggle_singlestep().with_view(View(1))`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Response {
    /// What happens to the trapped instruction.
    pub action: Action,
    /// Flip single-stepping on this vCPU (LibVMI `RESPONSE_TOGGLE_SINGLESTEP`).
    pub toggle_singlestep: bool,
    /// Switch the vCPU to this SLAT view (LibVMI `RESPONSE_SLAT_ID` /
    /// `RESPONSE_VMM_PAGETABLE_ID`).
    pub switch_view: Option<View>,
    /// Write these registers to the vCPU before it resumes (LibVMI
    /// `RESPONSE_SET_REGISTERS`). Only groups present are written.
    pub set_registers: Option<Box<RegisterSnapshot>>,
    /// Report the next interrupt delivered to this vCPU as an
    /// [`EventKind::NextInterrupt`] event (LibVMI `RESPONSE_GET_NEXT_INTERRUPT`).
    pub get_next_interrupt: bool,
    /// For register events: the value the register receives instead of the one the guest
    /// wrote (LibVMI writes `reg_event.value` back on KVM).
    pub set_value: Option<u64>,
}

impl Response {
    /// [`Action::Continue`] with no side effects.
    pub fn continue_() -> Self {
        Self::default()
    }

    /// A response with `action` and no side effects.
    pub fn action(action: Action) -> Self {
        Self {
            action,
            ..Self::default()
        }
    }

    /// [`Action::Reinject`].
    pub fn reinject() -> Self {
        Self::action(Action::Reinject)
    }

    /// [`Action::Deny`].
    pub fn deny() -> Self {
        Self::action(Action::Deny)
    }

    /// Also flip single-stepping on the vCPU.
    pub fn toggle_singlestep(mut self) -> Self {
        self.toggle_singlestep = !self.toggle_singlestep;
        self
    }

    /// Also switch the vCPU to `view`.
    pub fn with_view(mut self, view: View) -> Self {
        self.switch_view = Some(view);
        self
    }

    /// Also write `regs` to the vCPU.
    pub fn with_registers(mut self, regs: RegisterSnapshot) -> Self {
        self.set_registers = Some(Box::new(regs));
        self
    }

    /// Also report the next interrupt.
    pub fn with_next_interrupt(mut self) -> Self {
        self.get_next_interrupt = true;
        self
    }

    /// For register events: the register receives `value` instead.
    pub fn with_value(mut self, value: u64) -> Self {
        self.set_value = Some(value);
        self
    }

    /// The LibVMI response flags this response corresponds to (`VMI_EVENT_RESPONSE_*`
    /// bit values), for comparison with LibVMI-based tools.
    pub fn libvmi_flags(&self) -> u32 {
        let mut f = match self.action {
            Action::Continue | Action::Reinject | Action::Retry => 0,
            Action::Emulate => 1 << 1,
            Action::EmulateNoWrite => 1 << 2,
            Action::EmulateWithReadData(_) => 1 << 3,
            Action::Deny => 1 << 4,
            Action::EmulateInstruction(_) => 1 << 8,
        };
        if self.toggle_singlestep {
            f |= 1 << 5;
        }
        if self.switch_view.is_some() {
            f |= 1 << 6;
        }
        if self.set_registers.is_some() {
            f |= 1 << 7;
        }
        if self.get_next_interrupt {
            f |= 1 << 9;
        }
        f
    }
}

/// Proof that an event still awaits its reply. Not `Clone`: [`EventControl::reply`]
/// consumes it, so an event cannot be answered twice.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ReplyToken {
    session: u64,
    id: u64,
    vcpu: VcpuId,
}

impl ReplyToken {
    /// Creates a token. Backends call this; `session` identifies the backend instance
    /// (so that a token cannot be replayed on another session) and `id` the event.
    pub fn new(session: u64, id: u64, vcpu: VcpuId) -> Self {
        Self { session, id, vcpu }
    }

    /// The backend session this token belongs to.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// The event's identifier within the session (e.g. the KVMi sequence number).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The vCPU waiting for the reply.
    pub fn vcpu(&self) -> VcpuId {
        self.vcpu
    }
}

/// An event waiting for its reply.
#[derive(Debug)]
pub struct PendingEvent {
    /// The event.
    pub event: Event,
    /// The token [`EventControl::reply`] consumes.
    pub token: ReplyToken,
}

/// Trapping events and answering them.
pub trait EventControl {
    /// Starts trapping `monitor` (on every vCPU unless the monitor names a set).
    fn enable(&self, monitor: Monitor) -> Result<()>;

    /// Stops trapping `monitor`.
    fn disable(&self, monitor: Monitor) -> Result<()>;

    /// Waits up to `timeout` for the next event; `Ok(None)` on timeout. A zero timeout
    /// only returns already-queued events (LibVMI `listen(0)`).
    fn wait_event(&self, timeout: Duration) -> Result<Option<PendingEvent>>;

    /// Answers an event. Fails with [`Error::Unsupported`] if the backend cannot honour
    /// part of `response`; the event is then answered with [`Response::default`] so the
    /// vCPU does not stay blocked, and the error says what was refused.
    fn reply(&self, token: ReplyToken, response: Response) -> Result<()>;

    /// Events already received but not yet handed out by [`Self::wait_event`].
    fn pending_events(&self) -> Result<usize>;

    /// Checks, without side effects, whether `response` can be honoured for `event`.
    fn check_response(&self, event: &Event, response: &Response) -> Result<()>;

    /// Waits for one event, calls `handler`, and replies with its response — also when
    /// the handler panics (the panic is resumed after the reply). Returns whether an
    /// event was handled.
    fn dispatch<F>(&self, timeout: Duration, handler: F) -> Result<bool>
    where
        Self: Sized,
        F: FnOnce(&Event) -> Response,
    {
        let Some(PendingEvent { event, token }) = self.wait_event(timeout)? else {
            return Ok(false);
        };
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&event)));
        match outcome {
            Ok(response) => self.reply(token, response).map(|()| true),
            Err(panic) => {
                let _ = self.reply(token, Response::default());
                std::panic::resume_unwind(panic)
            }
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

    #[test]
    fn response_flags_match_libvmi() {
        let r = Response::action(Action::EmulateWithReadData(Box::new(
            EmulReadData::new(&[1, 2, 3]).unwrap(),
        )))
        .toggle_singlestep()
        .with_view(View(2))
        .with_registers(RegisterSnapshot::default())
        .with_next_interrupt();
        assert_eq!(r.libvmi_flags(), 0x8 | 0x20 | 0x40 | 0x80 | 0x200);
        assert_eq!(Response::deny().libvmi_flags(), 0x10);
        assert_eq!(Response::continue_().libvmi_flags(), 0);
        assert!(
            !Response::continue_()
                .toggle_singlestep()
                .toggle_singlestep()
                .toggle_singlestep
        );
    }

    #[test]
    fn bounded_payloads() {
        assert!(EmulReadData::new(&[0; 257]).is_err());
        assert_eq!(EmulReadData::new(&[7; 256]).unwrap().as_bytes().len(), 256);
        assert!(EmulInsn::new(&[]).is_err());
        assert!(EmulInsn::new(&[0x90; 17]).is_err());
        assert_eq!(
            EmulInsn::new(&[0x0f, 0x01, 0xd9]).unwrap().as_bytes(),
            &[0x0f, 0x01, 0xd9]
        );
    }

    #[test]
    fn vcpu_sets() {
        let s = VcpuSet::first(3);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![VcpuId(0), VcpuId(1), VcpuId(2)]
        );
        assert!(!s.contains(VcpuId(3)));
        assert_eq!(VcpuSet::first(64).0, u64::MAX);
        assert_eq!(VcpuSet::single(VcpuId(70)).0, 0);
        assert!(!VcpuSet::first(64).contains(VcpuId(64)));
    }

    struct OneEvent {
        replied: std::sync::Mutex<Vec<(u64, Response)>>,
        given: std::sync::atomic::AtomicBool,
    }

    impl EventControl for OneEvent {
        fn enable(&self, _: Monitor) -> Result<()> {
            Ok(())
        }
        fn disable(&self, _: Monitor) -> Result<()> {
            Ok(())
        }
        fn wait_event(&self, _: Duration) -> Result<Option<PendingEvent>> {
            if self.given.swap(true, std::sync::atomic::Ordering::SeqCst) {
                return Ok(None);
            }
            Ok(Some(PendingEvent {
                event: Event {
                    vcpu: VcpuId(0),
                    view: View::DEFAULT,
                    registers: RegisterSnapshot::default(),
                    kind: EventKind::Cpuid {
                        leaf: 1,
                        subleaf: 0,
                        insn_length: 2,
                    },
                },
                token: ReplyToken::new(1, 42, VcpuId(0)),
            }))
        }
        fn reply(&self, token: ReplyToken, response: Response) -> Result<()> {
            self.replied.lock().unwrap().push((token.id(), response));
            Ok(())
        }
        fn pending_events(&self) -> Result<usize> {
            Ok(0)
        }
        fn check_response(&self, _: &Event, _: &Response) -> Result<()> {
            Ok(())
        }
    }

    #[test]
    fn dispatch_replies_even_when_the_handler_panics() {
        let b = OneEvent {
            replied: Default::default(),
            given: Default::default(),
        };
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            b.dispatch(Duration::ZERO, |_| panic!("handler bug"))
        }));
        assert!(r.is_err());
        assert_eq!(b.replied.lock().unwrap().len(), 1);
        assert_eq!(b.replied.lock().unwrap()[0], (42, Response::default()));
        assert!(!b.dispatch(Duration::ZERO, |_| Response::deny()).unwrap());
    }
}
