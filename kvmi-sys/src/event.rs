//! Events (kernel → tool) and event replies (tool → kernel), kvmi-v7.
//!
//! An event message is `MsgHdr { id: KVMI_EVENT, size, seq }`, then [`Event`] (544
//! bytes), then the event-specific struct. The event-specific data starts at offset
//! [`Event::size`] of the payload, not necessarily at 544: read it from there (libkvmi
//! does, for forward compatibility).
//!
//! A reply is `MsgHdr { id: KVMI_EVENT_REPLY, size: 16 + extra, seq: <event seq> }`,
//! then [`VcpuHdr`](crate::VcpuHdr) (`vcpu` = the event's vCPU), then [`EventReply`],
//! then the optional event-specific reply struct. Extra data longer than the kernel
//! expects (0 bytes for most events, 8 for CR and MSR, 272 for PF), non-zero padding, a
//! wrong seq or a `size` below 16 make the kernel close the socket; shorter extra data is
//! zero-filled. `KVMI_EVENT_UNHOOK` and `KVMI_EVENT_CMD_ERROR` get no reply.

use crate::kvm::{KvmRegs, KvmSregs};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The nine MSRs sent with every event (`kvmi_event_arch.msrs`, an anonymous struct in
/// C), 72 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventMsrs {
    /// IA32_SYSENTER_CS.
    pub sysenter_cs: u64,
    /// IA32_SYSENTER_ESP.
    pub sysenter_esp: u64,
    /// IA32_SYSENTER_EIP.
    pub sysenter_eip: u64,
    /// IA32_EFER.
    pub efer: u64,
    /// IA32_STAR.
    pub star: u64,
    /// IA32_LSTAR.
    pub lstar: u64,
    /// IA32_CSTAR.
    pub cstar: u64,
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_KERNEL_GS_BASE.
    pub shadow_gs: u64,
}
layout!(EventMsrs, 72;
    sysenter_cs @ 0, sysenter_esp @ 8, sysenter_eip @ 16, efer @ 24, star @ 32,
    lstar @ 40, cstar @ 48, pat @ 56, shadow_gs @ 64);

/// `struct kvmi_event_arch` (x86, kvmi-v7), 536 bytes: the vCPU state at the time of
/// the event. kvmi-v6 has padding where kvmi-v7 has `view`
/// ([`v6::EventArch`](crate::v6::EventArch)).
#[doc(alias = "kvmi_event_arch")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventArch {
    /// Operand size in bytes: 2, 4 or 8 (see [`KVMI_MODE_16`](crate::KVMI_MODE_16)).
    pub mode: u8,
    /// Zero.
    pub padding1: u8,
    /// Current EPT view of the vCPU.
    pub view: u16,
    /// Zero (libkvmi: `u8 padding2[4]`).
    pub padding2: u32,
    /// General-purpose registers.
    pub regs: KvmRegs,
    /// Special registers.
    pub sregs: KvmSregs,
    /// Selected MSRs.
    pub msrs: EventMsrs,
}
layout!(EventArch, 536;
    mode @ 0, padding1 @ 1, view @ 2, padding2 @ 4, regs @ 8, sregs @ 152, msrs @ 464);

/// `struct kvmi_event` (kvmi-v7), 544 bytes: common head of every event.
#[doc(alias = "kvmi_event")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Event {
    /// Size of this common struct as sent (544); the event-specific data starts here.
    pub size: u16,
    /// vCPU index (0 for `KVMI_EVENT_UNHOOK`).
    pub vcpu: u16,
    /// Event id (`KVMI_EVENT_*`).
    pub event: u8,
    /// Zero.
    pub padding: [u8; 3],
    /// x86 vCPU state.
    pub arch: EventArch,
}
layout!(Event, 544;
    size @ 0, vcpu @ 2, event @ 4, padding @ 5,
    arch @ 8, arch.mode @ 8, arch.padding1 @ 9, arch.view @ 10, arch.padding2 @ 12,
    arch.regs @ 16,
    arch.regs.rax @ 16, arch.regs.rbx @ 24, arch.regs.rcx @ 32, arch.regs.rdx @ 40,
    arch.regs.rsi @ 48, arch.regs.rdi @ 56, arch.regs.rsp @ 64, arch.regs.rbp @ 72,
    arch.regs.r8 @ 80, arch.regs.r9 @ 88, arch.regs.r10 @ 96, arch.regs.r11 @ 104,
    arch.regs.r12 @ 112, arch.regs.r13 @ 120, arch.regs.r14 @ 128, arch.regs.r15 @ 136,
    arch.regs.rip @ 144, arch.regs.rflags @ 152,
    arch.sregs @ 160,
    arch.sregs.cs @ 160, arch.sregs.ds @ 184, arch.sregs.es @ 208, arch.sregs.fs @ 232,
    arch.sregs.gs @ 256, arch.sregs.ss @ 280, arch.sregs.tr @ 304, arch.sregs.ldt @ 328,
    arch.sregs.gdt @ 352, arch.sregs.idt @ 368,
    arch.sregs.cr0 @ 384, arch.sregs.cr2 @ 392, arch.sregs.cr3 @ 400, arch.sregs.cr4 @ 408,
    arch.sregs.cr8 @ 416, arch.sregs.efer @ 424, arch.sregs.apic_base @ 432,
    arch.sregs.interrupt_bitmap @ 440,
    arch.msrs @ 472,
    arch.msrs.sysenter_cs @ 472, arch.msrs.sysenter_esp @ 480, arch.msrs.sysenter_eip @ 488,
    arch.msrs.efer @ 496, arch.msrs.star @ 504, arch.msrs.lstar @ 512, arch.msrs.cstar @ 520,
    arch.msrs.pat @ 528, arch.msrs.shadow_gs @ 536,
);

/// Size of [`Event`] (544).
pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();

/// `struct kvmi_event_reply` (8 bytes), after the `VcpuHdr` of an event reply.
#[doc(alias = "kvmi_event_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventReply {
    /// `KVMI_EVENT_ACTION_*`.
    pub action: u8,
    /// The event id being answered (informational; not validated).
    pub event: u8,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(EventReply, 8; action @ 0, event @ 1, padding1 @ 2, padding2 @ 4);

/// Size of the fixed part of an event-reply payload: `VcpuHdr` + [`EventReply`] (16).
pub const EVENT_REPLY_HEAD_SIZE: usize = crate::VCPU_HDR_SIZE + core::mem::size_of::<EventReply>();

// ---------------------------------------------------------------------------------------
// 1 KVMI_EVENT_CR
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_cr` (24 bytes): a monitored control register is about to change
/// (only sent when `old_value != new_value`; writes only).
#[doc(alias = "kvmi_event_cr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventCr {
    /// Control register number (0, 3 or 4).
    pub cr: u16,
    /// Zero.
    pub padding: [u16; 3],
    /// Current value.
    pub old_value: u64,
    /// Value the guest is writing.
    pub new_value: u64,
}
layout!(EventCr, 24; cr @ 0, padding @ 2, old_value @ 8, new_value @ 16);

/// `struct kvmi_event_cr_reply` (8 bytes): with CONTINUE, the value actually written.
#[doc(alias = "kvmi_event_cr_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventCrReply {
    /// Value to write (echo `new_value` to let the write through unchanged).
    pub new_val: u64,
}
layout!(EventCrReply, 8; new_val @ 0);

// ---------------------------------------------------------------------------------------
// 2 KVMI_EVENT_MSR
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_msr` (24 bytes): a monitored MSR is about to change (writes only,
/// only if the value changes).
#[doc(alias = "kvmi_event_msr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventMsr {
    /// MSR number.
    pub msr: u32,
    /// Zero.
    pub padding: u32,
    /// Current value.
    pub old_value: u64,
    /// Value the guest is writing.
    pub new_value: u64,
}
layout!(EventMsr, 24; msr @ 0, padding @ 4, old_value @ 8, new_value @ 16);

/// `struct kvmi_event_msr_reply` (8 bytes): with CONTINUE, the value actually written.
#[doc(alias = "kvmi_event_msr_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventMsrReply {
    /// Value to write.
    pub new_val: u64,
}
layout!(EventMsrReply, 8; new_val @ 0);

// 3 KVMI_EVENT_XSETBV: no payload, no reply data.

// ---------------------------------------------------------------------------------------
// 4 KVMI_EVENT_BREAKPOINT
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_breakpoint` (16 bytes). CONTINUE reinjects #BP into the guest;
/// RETRY re-enters the guest (the tool moved RIP).
#[doc(alias = "kvmi_event_breakpoint")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventBreakpoint {
    /// Guest-physical address of the INT3.
    pub gpa: u64,
    /// Instruction length.
    pub insn_len: u8,
    /// Zero.
    pub padding: [u8; 7],
}
layout!(EventBreakpoint, 16; gpa @ 0, insn_len @ 8, padding @ 9);

// 5 KVMI_EVENT_HYPERCALL: no payload, no reply data.

// ---------------------------------------------------------------------------------------
// 6 KVMI_EVENT_PF
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_pf` (24 bytes, kvmi-v7): an access the tool forbade with
/// `VM_SET_PAGE_ACCESS`. The EPT view is in [`EventArch::view`] (kvmi-v6 had it here at
/// offset 18, [`v6::EventPf`](crate::v6::EventPf)).
#[doc(alias = "kvmi_event_pf")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventPf {
    /// Faulting linear address ([`KVMI_UNMAPPED_GVA`](crate::KVMI_UNMAPPED_GVA) if
    /// unknown; equals RIP for execute faults).
    pub gva: u64,
    /// Faulting guest-physical address.
    pub gpa: u64,
    /// The single violated right: one `KVMI_PAGE_ACCESS_*` bit.
    pub access: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero (kvmi-v6: `view`).
    pub padding2: u16,
    /// Zero.
    pub padding3: u32,
}
layout!(EventPf, 24; gva @ 0, gpa @ 8, access @ 16, padding1 @ 17, padding2 @ 18, padding3 @ 20);

/// `struct kvmi_event_pf_reply` (272 bytes, kvmi-v7).
///
/// CONTINUE emulates the access: reads from the linear range `[ctx_addr, ctx_addr +
/// ctx_size)` are served from `ctx_data` (memory hiding), and `rep_complete = 1` finishes
/// a REP-prefixed instruction without further PF events. RETRY re-enters the guest
/// without emulating.
#[doc(alias = "kvmi_event_pf_reply")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EventPfReply {
    /// Guest linear address the custom read data starts at.
    pub ctx_addr: u64,
    /// Bytes of `ctx_data` in use (≤ [`KVMI_CTX_DATA_SIZE`](crate::KVMI_CTX_DATA_SIZE);
    /// more closes the socket).
    pub ctx_size: u32,
    /// Must be zero (kvmi-v6: `singlestep`).
    pub padding1: u8,
    /// 1: complete a REP instruction without more PF events.
    pub rep_complete: u8,
    /// Zero.
    pub padding2: u16,
    /// Data returned to guest reads of the context range.
    pub ctx_data: [u8; 256],
}
layout!(EventPfReply, 272;
    ctx_addr @ 0, ctx_size @ 8, padding1 @ 12, rep_complete @ 13, padding2 @ 14, ctx_data @ 16);

// ---------------------------------------------------------------------------------------
// 7 KVMI_EVENT_TRAP
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_trap` (16 bytes, kvmi-v7): what was actually injected after
/// `VCPU_INJECT_EXCEPTION` (always sent; reply CONTINUE). The kvmi-v7 `kvmi.rst` shows
/// `vector` as `u32`, which is the same bytes on little-endian; kvmi-v6 differs
/// ([`v6::EventTrap`](crate::v6::EventTrap)).
#[doc(alias = "kvmi_event_trap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventTrap {
    /// Exception vector.
    pub vector: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u16,
    /// Error code.
    pub error_code: u32,
    /// CR2 (for #PF).
    pub cr2: u64,
}
layout!(EventTrap, 16; vector @ 0, padding1 @ 1, padding2 @ 2, error_code @ 4, cr2 @ 8);

// ---------------------------------------------------------------------------------------
// 8 KVMI_EVENT_DESCRIPTOR
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_descriptor` (8 bytes).
#[doc(alias = "kvmi_event_descriptor")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventDescriptor {
    /// `KVMI_DESC_IDTR`, `_GDTR`, `_LDTR` or `_TR`.
    pub descriptor: u8,
    /// 1 for a write (load), 0 for a read (store).
    pub write: u8,
    /// Zero.
    pub padding: [u8; 6],
}
layout!(EventDescriptor, 8; descriptor @ 0, write @ 1, padding @ 2);

// 9 KVMI_EVENT_CREATE_VCPU, 10 KVMI_EVENT_PAUSE_VCPU: no payload, no reply data.

// ---------------------------------------------------------------------------------------
// 11 KVMI_EVENT_SINGLESTEP
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_singlestep` (8 bytes, kvmi-v7; kvmi-v6 sends no payload). Sent by
/// the kernel (the kvmi-v7 `kvmi.rst` wrongly lists it under "Returns").
#[doc(alias = "kvmi_event_singlestep")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventSingleStep {
    /// 1 if the step failed.
    pub failed: u8,
    /// Zero.
    pub padding: [u8; 7],
}
layout!(EventSingleStep, 8; failed @ 0, padding @ 1);

// ---------------------------------------------------------------------------------------
// 12 KVMI_EVENT_CMD_ERROR
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_cmd_error` (16 bytes, kvmi-v7): a command failed while replies were
/// disabled with `flags` bit 0. No reply.
#[doc(alias = "kvmi_event_cmd_error")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventCmdError {
    /// The negated `KVM_E*` error.
    pub err: i32,
    /// `seq` of the failed command.
    pub msg_seq: u32,
    /// Id of the failed command.
    pub msg_id: u16,
    /// Zero.
    pub padding: [u16; 3],
}
layout!(EventCmdError, 16; err @ 0, msg_seq @ 4, msg_id @ 8, padding @ 10);

// ---------------------------------------------------------------------------------------
// 13 KVMI_EVENT_CPUID
// ---------------------------------------------------------------------------------------

/// `struct kvmi_event_cpuid` (16 bytes, kvmi-v7).
#[doc(alias = "kvmi_event_cpuid")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventCpuid {
    /// Leaf (EAX).
    pub function: u32,
    /// Sub-leaf (ECX).
    pub index: u32,
    /// Length of the CPUID instruction.
    pub insn_length: u8,
    /// Zero.
    pub padding1: [u8; 3],
    /// Zero.
    pub padding2: u32,
}
layout!(EventCpuid, 16; function @ 0, index @ 4, insn_length @ 8, padding1 @ 9, padding2 @ 12);

zeroed_default!(EventPfReply);

/// Size of the event-specific payload the kernel sends after [`Event`] for a kvmi-v7
/// event id (0 for events without one), or `None` for an unknown id.
pub const fn event_payload_size(event: u8) -> Option<usize> {
    use core::mem::size_of;
    Some(match event {
        crate::KVMI_EVENT_CR => size_of::<EventCr>(),
        crate::KVMI_EVENT_MSR => size_of::<EventMsr>(),
        crate::KVMI_EVENT_BREAKPOINT => size_of::<EventBreakpoint>(),
        crate::KVMI_EVENT_PF => size_of::<EventPf>(),
        crate::KVMI_EVENT_TRAP => size_of::<EventTrap>(),
        crate::KVMI_EVENT_DESCRIPTOR => size_of::<EventDescriptor>(),
        crate::KVMI_EVENT_SINGLESTEP => size_of::<EventSingleStep>(),
        crate::KVMI_EVENT_CMD_ERROR => size_of::<EventCmdError>(),
        crate::KVMI_EVENT_CPUID => size_of::<EventCpuid>(),
        crate::KVMI_EVENT_UNHOOK
        | crate::KVMI_EVENT_XSETBV
        | crate::KVMI_EVENT_HYPERCALL
        | crate::KVMI_EVENT_CREATE_VCPU
        | crate::KVMI_EVENT_PAUSE_VCPU => 0,
        _ => return None,
    })
}

/// Largest event-specific reply data the kvmi-v7 kernel accepts after [`EventReply`] for
/// an event id (8 for CR/MSR, 272 for PF, else 0), or `None` for an unknown id. Longer
/// data closes the socket.
pub const fn event_reply_extra_size(event: u8) -> Option<usize> {
    use core::mem::size_of;
    if event as usize >= crate::KVMI_NUM_EVENTS {
        return None;
    }
    Some(match event {
        crate::KVMI_EVENT_CR => size_of::<EventCrReply>(),
        crate::KVMI_EVENT_MSR => size_of::<EventMsrReply>(),
        crate::KVMI_EVENT_PF => size_of::<EventPfReply>(),
        _ => 0,
    })
}
