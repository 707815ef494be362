//! Framing structs shared by every message: message header, reply error code and the
//! vCPU header of vCPU-scoped messages.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct kvmi_msg_hdr`: starts every message in both directions.
///
/// A command reply repeats the command's `id` and `seq`; an event reply carries
/// `id = KVMI_EVENT_REPLY` and the event's `seq`.
#[doc(alias = "kvmi_msg_hdr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MsgHdr {
    /// Message id (`KVMI_*` command id, `KVMI_EVENT` or `KVMI_EVENT_REPLY`).
    pub id: u16,
    /// Number of payload bytes following the header (at most
    /// [`KVMI_MSG_SIZE`](crate::KVMI_MSG_SIZE) towards the kernel).
    pub size: u16,
    /// Sequence number: chosen by the tool for commands, by the kernel for events.
    pub seq: u32,
}
layout!(MsgHdr, 8; id @ 0, size @ 2, seq @ 4);

/// Size of [`MsgHdr`] (8).
pub const MSG_HDR_SIZE: usize = core::mem::size_of::<MsgHdr>();

/// `struct kvmi_error_code`: first 8 bytes of every command reply payload. The
/// command-specific reply data follows only when `err == 0` (so `hdr.size` is 8 when
/// `err != 0`).
#[doc(alias = "kvmi_error_code")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct ErrorCode {
    /// 0, or a negated `KVM_E*` value (e.g. `-KVM_EINVAL`).
    pub err: i32,
    /// Zero.
    pub padding: u32,
}
layout!(ErrorCode, 8; err @ 0, padding @ 4);

/// Size of [`ErrorCode`] (8).
pub const ERROR_CODE_SIZE: usize = core::mem::size_of::<ErrorCode>();

/// `struct kvmi_vcpu_hdr`: starts the payload of every vCPU-scoped command and of every
/// event reply. Non-zero padding makes the kernel close the socket (no reply).
#[doc(alias = "kvmi_vcpu_hdr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuHdr {
    /// vCPU index.
    pub vcpu: u16,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(VcpuHdr, 8; vcpu @ 0, padding1 @ 2, padding2 @ 4);

/// Size of [`VcpuHdr`] (8).
pub const VCPU_HDR_SIZE: usize = core::mem::size_of::<VcpuHdr>();
