//! kvmi-v6: message/event ids under their v6 names, and the layouts that differ from
//! kvmi-v7.
//!
//! kvmi-v6 is the LKML RFC v6 series (Aug 2019, kernel 5.0), mirrored as KVM-VMI branch
//! `kvmi-v6` and spoken by libkvmi branch `kvmi-v6`. Framing ([`MsgHdr`](crate::MsgHdr),
//! [`ErrorCode`](crate::ErrorCode), [`VcpuHdr`](crate::VcpuHdr),
//! [`EventReply`](crate::EventReply)) and every struct not redefined here have the
//! kvmi-v7 layout
//! under the old name (e.g. `kvmi_control_cr` = [`VcpuControlCr`](crate::VcpuControlCr),
//! `kvmi_get_guest_info_reply` = [`VmGetInfoReply`](crate::VmGetInfoReply)).
//!
//! Differences covered here: the 8-byte `GET_VERSION` reply, `CONTROL_CMD_RESPONSE`
//! without `flags`, `INJECT_EXCEPTION` with `has_error`, the v6-only
//! `GET_PAGE_ACCESS` / `GET_PAGE_WRITE_BITMAP`, `kvmi_event_arch` without `view`, the PF
//! event with `view`, the PF reply with `singlestep`, and the 24-byte TRAP event. The
//! SINGLESTEP event has no payload in v6. Unknown commands get `-KVM_EOPNOTSUPP`.

use crate::kvm::{KvmRegs, KvmSregs};
use crate::EventMsrs;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// ---------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------

/// Reply to a vCPU event (same as kvmi-v7).
pub const KVMI_EVENT_REPLY: u16 = 0;
/// An event (same as kvmi-v7).
pub const KVMI_EVENT: u16 = 1;
/// = kvmi-v7 `KVMI_GET_VERSION` (reply: [`GetVersionReply`], 8 bytes).
pub const KVMI_GET_VERSION: u16 = 2;
/// = kvmi-v7 `KVMI_VM_CHECK_COMMAND`.
pub const KVMI_CHECK_COMMAND: u16 = 3;
/// = kvmi-v7 `KVMI_VM_CHECK_EVENT`.
pub const KVMI_CHECK_EVENT: u16 = 4;
/// = kvmi-v7 `KVMI_VM_GET_INFO`.
pub const KVMI_GET_GUEST_INFO: u16 = 5;
/// = kvmi-v7 `KVMI_VCPU_GET_INFO`.
pub const KVMI_GET_VCPU_INFO: u16 = 6;
/// = kvmi-v7 `KVMI_VCPU_PAUSE`.
pub const KVMI_PAUSE_VCPU: u16 = 7;
/// = kvmi-v7 `KVMI_VM_CONTROL_EVENTS`.
pub const KVMI_CONTROL_VM_EVENTS: u16 = 8;
/// = kvmi-v7 `KVMI_VCPU_CONTROL_EVENTS`.
pub const KVMI_CONTROL_EVENTS: u16 = 9;
/// = kvmi-v7 `KVMI_VCPU_CONTROL_CR`.
pub const KVMI_CONTROL_CR: u16 = 10;
/// = kvmi-v7 `KVMI_VCPU_CONTROL_MSR`.
pub const KVMI_CONTROL_MSR: u16 = 11;
/// v6 only: control the #VE bit of a list of pages. The LKML v6 documentation does not
/// describe its payload and libkvmi declares no struct for it, so no layout is given
/// here; kvmi-v7 answers `-KVM_ENOSYS`.
pub const KVMI_CONTROL_VE: u16 = 12;
/// = kvmi-v7 `KVMI_VCPU_GET_REGISTERS`.
pub const KVMI_GET_REGISTERS: u16 = 13;
/// = kvmi-v7 `KVMI_VCPU_SET_REGISTERS`.
pub const KVMI_SET_REGISTERS: u16 = 14;
/// = kvmi-v7 `KVMI_VCPU_GET_CPUID`.
pub const KVMI_GET_CPUID: u16 = 15;
/// = kvmi-v7 `KVMI_VCPU_GET_XSAVE`.
pub const KVMI_GET_XSAVE: u16 = 16;
/// = kvmi-v7 `KVMI_VM_READ_PHYSICAL`.
pub const KVMI_READ_PHYSICAL: u16 = 17;
/// = kvmi-v7 `KVMI_VM_WRITE_PHYSICAL`.
pub const KVMI_WRITE_PHYSICAL: u16 = 18;
/// = kvmi-v7 `KVMI_VCPU_INJECT_EXCEPTION` (request: [`InjectException`]).
pub const KVMI_INJECT_EXCEPTION: u16 = 19;
/// v6 only: read access bits of pages ([`GetPageAccess`]).
pub const KVMI_GET_PAGE_ACCESS: u16 = 20;
/// = kvmi-v7 `KVMI_VM_SET_PAGE_ACCESS`.
pub const KVMI_SET_PAGE_ACCESS: u16 = 21;
/// = kvmi-v7 `KVMI_VM_GET_MAP_TOKEN`.
pub const KVMI_GET_MAP_TOKEN: u16 = 22;
/// = kvmi-v7 `KVMI_VCPU_GET_MTRR_TYPE`.
pub const KVMI_GET_MTRR_TYPE: u16 = 23;
/// = kvmi-v7 `KVMI_VM_CONTROL_SPP`.
pub const KVMI_CONTROL_SPP: u16 = 24;
/// v6 only: read SPP write bitmaps of pages ([`GetPageWriteBitmap`]).
pub const KVMI_GET_PAGE_WRITE_BITMAP: u16 = 25;
/// = kvmi-v7 `KVMI_VM_SET_PAGE_WRITE_BITMAP`.
pub const KVMI_SET_PAGE_WRITE_BITMAP: u16 = 26;
/// = kvmi-v7 `KVMI_VM_CONTROL_CMD_RESPONSE` (request: [`ControlCmdResponse`]).
pub const KVMI_CONTROL_CMD_RESPONSE: u16 = 27;
/// = kvmi-v7 `KVMI_VM_GET_MAX_GFN`. The reference lists it for KVM-VMI `kvmi-v6`; the
/// LKML RFC v6 headers end their command list at 27 (`KVMI_NEXT_AVAILABLE_COMMAND` =
/// 28), so a v6 host may answer `-KVM_EOPNOTSUPP`.
pub const KVMI_GET_MAX_GFN: u16 = 29;

/// `KVMI_NUM_COMMANDS` of the LKML RFC v6 kernel (`KVMI_NEXT_AVAILABLE_COMMAND`).
pub const KVMI_NUM_COMMANDS: usize = 28;

/// Event: unhook (same id in kvmi-v7). In v6, triggered by the UNHOOK ioctl itself.
pub const KVMI_EVENT_UNHOOK: u8 = 0;
/// Event: control register write (same id in kvmi-v7).
pub const KVMI_EVENT_CR: u8 = 1;
/// Event: MSR write (same id in kvmi-v7).
pub const KVMI_EVENT_MSR: u8 = 2;
/// Event: XSETBV (same id in kvmi-v7).
pub const KVMI_EVENT_XSETBV: u8 = 3;
/// Event: breakpoint (same id in kvmi-v7).
pub const KVMI_EVENT_BREAKPOINT: u8 = 4;
/// Event: hypercall (same id in kvmi-v7).
pub const KVMI_EVENT_HYPERCALL: u8 = 5;
/// Event: page fault ([`EventPf`], reply [`EventPfReply`]).
pub const KVMI_EVENT_PF: u8 = 6;
/// Event: trap ([`EventTrap`]); v6 sends it only if enabled and only when the injection
/// was overridden.
pub const KVMI_EVENT_TRAP: u8 = 7;
/// Event: descriptor access (same id in kvmi-v7).
pub const KVMI_EVENT_DESCRIPTOR: u8 = 8;
/// Event: vCPU created (same id in kvmi-v7).
pub const KVMI_EVENT_CREATE_VCPU: u8 = 9;
/// Event: vCPU paused (same id in kvmi-v7).
pub const KVMI_EVENT_PAUSE_VCPU: u8 = 10;
/// Event: single step, **no payload** in v6; sent after a PF reply with RETRY and
/// `singlestep = 1`.
pub const KVMI_EVENT_SINGLESTEP: u8 = 11;
/// `KVMI_NUM_EVENTS` of kvmi-v6.
pub const KVMI_NUM_EVENTS: usize = 12;

/// `KVMI_MSG_SIZE` in the LKML RFC v6 patches and the first libkvmi import:
/// `4096 - sizeof(struct kvmi_msg_hdr)` = 4088. The reference states 8184 for kvmi-v6 as
/// for kvmi-v7; that value was not found in any v6-era header read. A v6 client that
/// keeps its messages within this limit is safe either way.
pub const KVMI_MSG_SIZE_RFC_V6: usize = 4096 - crate::MSG_HDR_SIZE;

/// The kvmi-v6 C name of message id `id`, e.g. `5` → `"KVMI_GET_GUEST_INFO"`; `None`
/// for an id kvmi-v6 does not define. Event names are kvmi-v7's
/// ([`event_name`](crate::event_name)), for ids below [`KVMI_NUM_EVENTS`].
pub const fn command_name(id: u16) -> Option<&'static str> {
    Some(match id {
        KVMI_EVENT_REPLY => "KVMI_EVENT_REPLY",
        KVMI_EVENT => "KVMI_EVENT",
        KVMI_GET_VERSION => "KVMI_GET_VERSION",
        KVMI_CHECK_COMMAND => "KVMI_CHECK_COMMAND",
        KVMI_CHECK_EVENT => "KVMI_CHECK_EVENT",
        KVMI_GET_GUEST_INFO => "KVMI_GET_GUEST_INFO",
        KVMI_GET_VCPU_INFO => "KVMI_GET_VCPU_INFO",
        KVMI_PAUSE_VCPU => "KVMI_PAUSE_VCPU",
        KVMI_CONTROL_VM_EVENTS => "KVMI_CONTROL_VM_EVENTS",
        KVMI_CONTROL_EVENTS => "KVMI_CONTROL_EVENTS",
        KVMI_CONTROL_CR => "KVMI_CONTROL_CR",
        KVMI_CONTROL_MSR => "KVMI_CONTROL_MSR",
        KVMI_CONTROL_VE => "KVMI_CONTROL_VE",
        KVMI_GET_REGISTERS => "KVMI_GET_REGISTERS",
        KVMI_SET_REGISTERS => "KVMI_SET_REGISTERS",
        KVMI_GET_CPUID => "KVMI_GET_CPUID",
        KVMI_GET_XSAVE => "KVMI_GET_XSAVE",
        KVMI_READ_PHYSICAL => "KVMI_READ_PHYSICAL",
        KVMI_WRITE_PHYSICAL => "KVMI_WRITE_PHYSICAL",
        KVMI_INJECT_EXCEPTION => "KVMI_INJECT_EXCEPTION",
        KVMI_GET_PAGE_ACCESS => "KVMI_GET_PAGE_ACCESS",
        KVMI_SET_PAGE_ACCESS => "KVMI_SET_PAGE_ACCESS",
        KVMI_GET_MAP_TOKEN => "KVMI_GET_MAP_TOKEN",
        KVMI_GET_MTRR_TYPE => "KVMI_GET_MTRR_TYPE",
        KVMI_CONTROL_SPP => "KVMI_CONTROL_SPP",
        KVMI_GET_PAGE_WRITE_BITMAP => "KVMI_GET_PAGE_WRITE_BITMAP",
        KVMI_SET_PAGE_WRITE_BITMAP => "KVMI_SET_PAGE_WRITE_BITMAP",
        KVMI_CONTROL_CMD_RESPONSE => "KVMI_CONTROL_CMD_RESPONSE",
        KVMI_GET_MAX_GFN => "KVMI_GET_MAX_GFN",
        _ => return None,
    })
}

const _: () = {
    use crate::ids as v7;
    assert!(KVMI_GET_VERSION == v7::KVMI_GET_VERSION);
    assert!(KVMI_CHECK_COMMAND == v7::KVMI_VM_CHECK_COMMAND);
    assert!(KVMI_CHECK_EVENT == v7::KVMI_VM_CHECK_EVENT);
    assert!(KVMI_GET_GUEST_INFO == v7::KVMI_VM_GET_INFO);
    assert!(KVMI_GET_VCPU_INFO == v7::KVMI_VCPU_GET_INFO);
    assert!(KVMI_PAUSE_VCPU == v7::KVMI_VCPU_PAUSE);
    assert!(KVMI_CONTROL_VM_EVENTS == v7::KVMI_VM_CONTROL_EVENTS);
    assert!(KVMI_CONTROL_EVENTS == v7::KVMI_VCPU_CONTROL_EVENTS);
    assert!(KVMI_CONTROL_CR == v7::KVMI_VCPU_CONTROL_CR);
    assert!(KVMI_CONTROL_MSR == v7::KVMI_VCPU_CONTROL_MSR);
    assert!(KVMI_GET_REGISTERS == v7::KVMI_VCPU_GET_REGISTERS);
    assert!(KVMI_SET_REGISTERS == v7::KVMI_VCPU_SET_REGISTERS);
    assert!(KVMI_GET_CPUID == v7::KVMI_VCPU_GET_CPUID);
    assert!(KVMI_GET_XSAVE == v7::KVMI_VCPU_GET_XSAVE);
    assert!(KVMI_READ_PHYSICAL == v7::KVMI_VM_READ_PHYSICAL);
    assert!(KVMI_WRITE_PHYSICAL == v7::KVMI_VM_WRITE_PHYSICAL);
    assert!(KVMI_INJECT_EXCEPTION == v7::KVMI_VCPU_INJECT_EXCEPTION);
    assert!(KVMI_SET_PAGE_ACCESS == v7::KVMI_VM_SET_PAGE_ACCESS);
    assert!(KVMI_GET_MAP_TOKEN == v7::KVMI_VM_GET_MAP_TOKEN);
    assert!(KVMI_GET_MTRR_TYPE == v7::KVMI_VCPU_GET_MTRR_TYPE);
    assert!(KVMI_CONTROL_SPP == v7::KVMI_VM_CONTROL_SPP);
    assert!(KVMI_SET_PAGE_WRITE_BITMAP == v7::KVMI_VM_SET_PAGE_WRITE_BITMAP);
    assert!(KVMI_CONTROL_CMD_RESPONSE == v7::KVMI_VM_CONTROL_CMD_RESPONSE);
    assert!(KVMI_GET_MAX_GFN == v7::KVMI_VM_GET_MAX_GFN);
    assert!(KVMI_EVENT_UNHOOK == v7::KVMI_EVENT_UNHOOK);
    assert!(KVMI_EVENT_CR == v7::KVMI_EVENT_CR);
    assert!(KVMI_EVENT_MSR == v7::KVMI_EVENT_MSR);
    assert!(KVMI_EVENT_XSETBV == v7::KVMI_EVENT_XSETBV);
    assert!(KVMI_EVENT_BREAKPOINT == v7::KVMI_EVENT_BREAKPOINT);
    assert!(KVMI_EVENT_HYPERCALL == v7::KVMI_EVENT_HYPERCALL);
    assert!(KVMI_EVENT_PF == v7::KVMI_EVENT_PF);
    assert!(KVMI_EVENT_TRAP == v7::KVMI_EVENT_TRAP);
    assert!(KVMI_EVENT_DESCRIPTOR == v7::KVMI_EVENT_DESCRIPTOR);
    assert!(KVMI_EVENT_CREATE_VCPU == v7::KVMI_EVENT_CREATE_VCPU);
    assert!(KVMI_EVENT_PAUSE_VCPU == v7::KVMI_EVENT_PAUSE_VCPU);
    assert!(KVMI_EVENT_SINGLESTEP == v7::KVMI_EVENT_SINGLESTEP);
    assert!(KVMI_MSG_SIZE_RFC_V6 == 4088);
};

// ---------------------------------------------------------------------------------------
// Command layouts that differ
// ---------------------------------------------------------------------------------------

/// kvmi-v6 `struct kvmi_get_version_reply`: 8 bytes, no features. A `GET_VERSION` reply
/// with `hdr.size == 16` (8 error code + 8) identifies v6; kvmi-v7 sends 24.
#[doc(alias = "kvmi_get_version_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GetVersionReply {
    /// [`KVMI_VERSION`](crate::KVMI_VERSION) (1).
    pub version: u32,
    /// Zero.
    pub padding: u32,
}
layout!(GetVersionReply, 8; version @ 0, padding @ 4);

/// kvmi-v6 `struct kvmi_control_cmd_response`: no `flags` byte (libkvmi master keeps this
/// layout and always sends 0 there).
#[doc(alias = "kvmi_control_cmd_response")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ControlCmdResponse {
    /// 1 to enable replies, 0 to disable.
    pub enable: u8,
    /// 1: applies to this command too.
    pub now: u8,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(ControlCmdResponse, 8; enable @ 0, now @ 1, padding1 @ 2, padding2 @ 4);

/// kvmi-v6 `struct kvmi_inject_exception`, after the `VcpuHdr`: byte 9 (with the header)
/// is `has_error`.
#[doc(alias = "kvmi_inject_exception")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct InjectException {
    /// Exception vector.
    pub nr: u8,
    /// 1 if `error_code` is to be pushed.
    pub has_error: u8,
    /// Zero.
    pub padding: u16,
    /// Error code.
    pub error_code: u32,
    /// For #PF: the faulting address (CR2).
    pub address: u64,
}
layout!(vcpu InjectException, 24;
    nr @ 8, has_error @ 9, padding @ 10, error_code @ 12, address @ 16);

/// kvmi-v6 `struct kvmi_get_page_access` (id 20); followed by `count` × `u64` GPAs. The
/// reply data is `count` × `u8` access values (`kvmi_get_page_access_reply.access[]`).
#[doc(alias = "kvmi_get_page_access")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GetPageAccess {
    /// EPT view (must be 0 in the v6 code).
    pub view: u16,
    /// Number of GPAs that follow.
    pub count: u16,
    /// Zero.
    pub padding: u32,
}
layout!(GetPageAccess, 8; view @ 0, count @ 2, padding @ 4);

/// kvmi-v6 `struct kvmi_get_page_write_bitmap` (id 25); followed by `count` × `u64`
/// GPAs. The reply data is `count` × `u32` bitmaps
/// (`kvmi_get_page_write_bitmap_reply.bitmap[]`).
#[doc(alias = "kvmi_get_page_write_bitmap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GetPageWriteBitmap {
    /// EPT view.
    pub view: u16,
    /// Number of GPAs that follow.
    pub count: u16,
    /// Zero.
    pub padding: u32,
}
layout!(GetPageWriteBitmap, 8; view @ 0, count @ 2, padding @ 4);

// ---------------------------------------------------------------------------------------
// Event layouts that differ
// ---------------------------------------------------------------------------------------

/// kvmi-v6 `struct kvmi_event_arch` (536 bytes): `mode` then 7 padding bytes (no `view`).
#[doc(alias = "kvmi_event_arch")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventArch {
    /// Operand size in bytes: 2, 4 or 8.
    pub mode: u8,
    /// Zero.
    pub padding: [u8; 7],
    /// General-purpose registers.
    pub regs: KvmRegs,
    /// Special registers.
    pub sregs: KvmSregs,
    /// Selected MSRs (same as kvmi-v7).
    pub msrs: EventMsrs,
}
layout!(EventArch, 536; mode @ 0, padding @ 1, regs @ 8, sregs @ 152, msrs @ 464);

/// kvmi-v6 `struct kvmi_event` (544 bytes, same offsets as kvmi-v7 apart from `view`).
#[doc(alias = "kvmi_event")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Event {
    /// Size of this common struct as sent (544).
    pub size: u16,
    /// vCPU index.
    pub vcpu: u16,
    /// Event id.
    pub event: u8,
    /// Zero.
    pub padding: [u8; 3],
    /// x86 vCPU state.
    pub arch: EventArch,
}
layout!(Event, 544;
    size @ 0, vcpu @ 2, event @ 4, padding @ 5, arch @ 8, arch.mode @ 8, arch.padding @ 9,
    arch.regs @ 16, arch.regs.rip @ 144, arch.sregs @ 160, arch.sregs.cr3 @ 400,
    arch.msrs @ 472, arch.msrs.shadow_gs @ 536);

/// kvmi-v6 `struct kvmi_event_pf` (24 bytes): the EPT view is at offset 18.
#[doc(alias = "kvmi_event_pf")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventPf {
    /// Faulting linear address.
    pub gva: u64,
    /// Faulting guest-physical address.
    pub gpa: u64,
    /// Violated access (`KVMI_PAGE_ACCESS_*`).
    pub access: u8,
    /// Zero.
    pub padding1: u8,
    /// EPT view.
    pub view: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(EventPf, 24; gva @ 0, gpa @ 8, access @ 16, padding1 @ 17, view @ 18, padding2 @ 20);

/// kvmi-v6 `struct kvmi_event_pf_reply` (272 bytes): byte 12 is `singlestep` (with
/// RETRY: step over the faulting instruction, then send `KVMI_EVENT_SINGLESTEP`).
#[doc(alias = "kvmi_event_pf_reply")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct EventPfReply {
    /// Guest linear address the custom read data starts at.
    pub ctx_addr: u64,
    /// Bytes of `ctx_data` in use (≤ 256).
    pub ctx_size: u32,
    /// 1: single-step the instruction (with RETRY).
    pub singlestep: u8,
    /// 1: complete a REP instruction without more PF events.
    pub rep_complete: u8,
    /// Zero.
    pub padding: u16,
    /// Data returned to guest reads of the context range.
    pub ctx_data: [u8; 256],
}
layout!(EventPfReply, 272;
    ctx_addr @ 0, ctx_size @ 8, singlestep @ 12, rep_complete @ 13, padding @ 14, ctx_data @ 16);

/// kvmi-v6 `struct kvmi_event_trap` (24 bytes).
#[doc(alias = "kvmi_event_trap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct EventTrap {
    /// Exception/interrupt vector.
    pub vector: u32,
    /// Exception/interrupt type (C name `type`).
    pub type_: u32,
    /// Error code.
    pub error_code: u32,
    /// Zero.
    pub padding: u32,
    /// CR2.
    pub cr2: u64,
}
layout!(EventTrap, 24; vector @ 0, type_ @ 4, error_code @ 8, padding @ 12, cr2 @ 16);

zeroed_default!(EventPfReply);
