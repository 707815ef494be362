//! Command requests and replies (kvmi-v7).
//!
//! A command message is `MsgHdr` + request payload; vCPU-scoped commands (`KVMI_VCPU_*`)
//! start the payload with a [`VcpuHdr`](crate::VcpuHdr), and the structs below follow
//! it. The reply is `MsgHdr` (same id and seq) + [`ErrorCode`](crate::ErrorCode) + the
//! reply struct (only if `err == 0`). Commands without a request struct send no payload
//! (VM-scoped) or only the `VcpuHdr`; commands without a reply struct answer with the
//! error code alone.
//!
//! Offsets in the layout checks are those of the reference tables: counted from the start
//! of the payload, i.e. including the 8-byte `VcpuHdr` of vCPU commands.

use crate::kvm::{KvmMsrs, KvmRegs, KvmSregs};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

// ---------------------------------------------------------------------------------------
// 2 KVMI_GET_VERSION (request: no payload)
// ---------------------------------------------------------------------------------------

/// `struct kvmi_features` (8 bytes, kvmi-v7): what the host supports, one byte per
/// feature (0 or 1). libkvmi declares `padding[4]` after `ve`, i.e. it does not name the
/// `singlestep` byte.
#[doc(alias = "kvmi_features")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Features {
    /// Sub-page write protection (SPP) available.
    pub spp: u8,
    /// VMFUNC available.
    pub vmfunc: u8,
    /// EPTP switching (EPT views) available.
    pub eptp: u8,
    /// Virtualization exceptions (#VE) available.
    pub ve: u8,
    /// MTF single-stepping available (`VCPU_CONTROL_SINGLESTEP`).
    pub singlestep: u8,
    /// Zero.
    pub padding: [u8; 3],
}
layout!(Features, 8; spp @ 0, vmfunc @ 1, eptp @ 2, ve @ 3, singlestep @ 4, padding @ 5);

/// `struct kvmi_get_version_reply` (16 bytes in kvmi-v7; kvmi-v6 sends only the first 8,
/// see [`v6::GetVersionReply`](crate::v6::GetVersionReply)).
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
    /// Host features.
    pub features: Features,
}
layout!(GetVersionReply, 16;
    version @ 0, padding @ 4, features @ 8, features.spp @ 8, features.vmfunc @ 9,
    features.eptp @ 10, features.ve @ 11, features.singlestep @ 12, features.padding @ 13);

// ---------------------------------------------------------------------------------------
// 3 KVMI_VM_CHECK_COMMAND, 4 KVMI_VM_CHECK_EVENT
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_check_command` (v6: `kvmi_check_command`): is command `id` allowed?
#[doc(alias = "kvmi_vm_check_command")]
#[doc(alias = "kvmi_check_command")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmCheckCommand {
    /// Command id.
    pub id: u16,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(VmCheckCommand, 8; id @ 0, padding1 @ 2, padding2 @ 4);

/// `struct kvmi_vm_check_event` (v6: `kvmi_check_event`): is event `id` allowed?
#[doc(alias = "kvmi_vm_check_event")]
#[doc(alias = "kvmi_check_event")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmCheckEvent {
    /// Event id (`-KVM_EINVAL` if ≥ [`KVMI_NUM_EVENTS`](crate::KVMI_NUM_EVENTS)).
    pub id: u16,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(VmCheckEvent, 8; id @ 0, padding1 @ 2, padding2 @ 4);

// ---------------------------------------------------------------------------------------
// 5 KVMI_VM_GET_INFO (request: no payload), 6 KVMI_VCPU_GET_INFO (request: VcpuHdr)
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_get_info_reply` (v6: `kvmi_get_guest_info_reply`).
#[doc(alias = "kvmi_vm_get_info_reply")]
#[doc(alias = "kvmi_get_guest_info_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmGetInfoReply {
    /// Number of online vCPUs.
    pub vcpu_count: u32,
    /// Zero.
    pub padding: [u32; 3],
}
layout!(VmGetInfoReply, 16; vcpu_count @ 0, padding @ 4);

/// `struct kvmi_vcpu_get_info_reply` (v6: `kvmi_get_vcpu_info_reply`).
#[doc(alias = "kvmi_vcpu_get_info_reply")]
#[doc(alias = "kvmi_get_vcpu_info_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetInfoReply {
    /// TSC frequency in Hz (`1000 * virtual_tsc_khz`), or 0 without TSC scaling.
    pub tsc_speed: u64,
}
layout!(VcpuGetInfoReply, 8; tsc_speed @ 0);

// ---------------------------------------------------------------------------------------
// 7 KVMI_VCPU_PAUSE
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_pause` (v6: `kvmi_pause_vcpu`), after the `VcpuHdr`.
///
/// Caveat (reference §3): the kvmi-v7 `kvmi_msg.c` handler reads this struct from the
/// address of the `VcpuHdr`, so `wait` is taken from the low byte of the vCPU index and a
/// vCPU index ≥ 256 trips its padding check. Send this documented layout anyway (libkvmi
/// does, with `wait = 1`).
#[doc(alias = "kvmi_vcpu_pause")]
#[doc(alias = "kvmi_pause_vcpu")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuPause {
    /// 1: wait for the vCPU to acknowledge the kick.
    pub wait: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u16,
    /// Zero.
    pub padding3: u32,
}
layout!(vcpu VcpuPause, 16; wait @ 8, padding1 @ 9, padding2 @ 10, padding3 @ 12);

// ---------------------------------------------------------------------------------------
// 8 KVMI_VM_CONTROL_EVENTS, 9 KVMI_VCPU_CONTROL_EVENTS
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_control_events` (v6: `kvmi_control_vm_events`): enable a VM event
/// (UNHOOK, CREATE_VCPU, CMD_ERROR).
#[doc(alias = "kvmi_vm_control_events")]
#[doc(alias = "kvmi_control_vm_events")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmControlEvents {
    /// Event id.
    pub event_id: u16,
    /// 1 to enable, 0 to disable.
    pub enable: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u32,
}
layout!(VmControlEvents, 8; event_id @ 0, enable @ 2, padding1 @ 3, padding2 @ 4);

/// `struct kvmi_vcpu_control_events` (v6: `kvmi_control_events`), after the `VcpuHdr`:
/// enable a vCPU event. PAUSE_VCPU and TRAP need no enabling.
#[doc(alias = "kvmi_vcpu_control_events")]
#[doc(alias = "kvmi_control_events")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuControlEvents {
    /// Event id.
    pub event_id: u16,
    /// 1 to enable, 0 to disable.
    pub enable: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u32,
}
layout!(vcpu VcpuControlEvents, 16; event_id @ 8, enable @ 10, padding1 @ 11, padding2 @ 12);

// ---------------------------------------------------------------------------------------
// 10 KVMI_VCPU_CONTROL_CR, 11 KVMI_VCPU_CONTROL_MSR
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_control_cr` (v6: `kvmi_control_cr`), after the `VcpuHdr`:
/// intercept writes to one control register (also needs `KVMI_EVENT_CR` enabled).
#[doc(alias = "kvmi_vcpu_control_cr")]
#[doc(alias = "kvmi_control_cr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuControlCr {
    /// 1 to enable, 0 to disable.
    pub enable: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u16,
    /// Control register number: 0, 3 or 4 (else `-KVM_EINVAL`).
    pub cr: u32,
}
layout!(vcpu VcpuControlCr, 16; enable @ 8, padding1 @ 9, padding2 @ 10, cr @ 12);

/// `struct kvmi_vcpu_control_msr` (v6: `kvmi_control_msr`), after the `VcpuHdr`:
/// intercept writes to one MSR (also needs `KVMI_EVENT_MSR` enabled).
#[doc(alias = "kvmi_vcpu_control_msr")]
#[doc(alias = "kvmi_control_msr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuControlMsr {
    /// 1 to enable, 0 to disable.
    pub enable: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u16,
    /// MSR number: the kernel accepts `msr < 0x1fff` or `0xc0000000 < msr < 0xc0001fff`
    /// (strict bounds in the code, inclusive in the docs); else `-KVM_EINVAL`.
    pub msr: u32,
}
layout!(vcpu VcpuControlMsr, 16; enable @ 8, padding1 @ 9, padding2 @ 10, msr @ 12);

// ---------------------------------------------------------------------------------------
// 13 KVMI_VCPU_GET_REGISTERS, 14 KVMI_VCPU_SET_REGISTERS
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_get_registers` (v6: `kvmi_get_registers`), after the `VcpuHdr`;
/// followed by `nmsrs` × `u32` MSR indices (`msrs_idx[]`).
#[doc(alias = "kvmi_vcpu_get_registers")]
#[doc(alias = "kvmi_get_registers")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetRegisters {
    /// Number of MSR indices that follow (at most
    /// [`KVMI_GET_REGISTERS_MAX_MSRS`](crate::KVMI_GET_REGISTERS_MAX_MSRS)).
    pub nmsrs: u16,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(vcpu VcpuGetRegisters, 16; nmsrs @ 8, padding1 @ 10, padding2 @ 12);

/// `struct kvmi_vcpu_get_registers_reply` (v6: `kvmi_get_registers_reply`), 472 bytes;
/// followed by `msrs.nmsrs` × [`KvmMsrEntry`](crate::KvmMsrEntry) (the requested MSRs, in
/// request order).
#[doc(alias = "kvmi_vcpu_get_registers_reply")]
#[doc(alias = "kvmi_get_registers_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetRegistersReply {
    /// Operand size in bytes: 2, 4 or 8 (see [`KVMI_MODE_16`](crate::KVMI_MODE_16)).
    pub mode: u32,
    /// Zero.
    pub padding: u32,
    /// General-purpose registers.
    pub regs: KvmRegs,
    /// Special registers.
    pub sregs: KvmSregs,
    /// Head of `struct kvm_msrs`; the entries follow the struct.
    pub msrs: KvmMsrs,
}
layout!(VcpuGetRegistersReply, 472;
    mode @ 0, padding @ 4, regs @ 8, sregs @ 152, msrs @ 464, msrs.nmsrs @ 464,
    msrs.pad @ 468);

/// `struct kvmi_vcpu_set_registers` payload after the `VcpuHdr` (the C protocol sends a
/// bare `struct kvm_regs`): 152 bytes with the header. Only valid while the vCPU waits
/// for an event reply; applied when the reply is processed.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuSetRegisters {
    /// New general-purpose registers.
    pub regs: KvmRegs,
}
layout!(vcpu VcpuSetRegisters, 152; regs @ 8, regs.rax @ 8, regs.rip @ 136, regs.rflags @ 144);

// ---------------------------------------------------------------------------------------
// 15 KVMI_VCPU_GET_CPUID
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_get_cpuid` (v6: `kvmi_get_cpuid`), after the `VcpuHdr`.
#[doc(alias = "kvmi_vcpu_get_cpuid")]
#[doc(alias = "kvmi_get_cpuid")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetCpuid {
    /// Leaf (EAX).
    pub function: u32,
    /// Sub-leaf (ECX).
    pub index: u32,
}
layout!(vcpu VcpuGetCpuid, 16; function @ 8, index @ 12);

/// `struct kvmi_vcpu_get_cpuid_reply` (v6: `kvmi_get_cpuid_reply`). `-KVM_ENOENT` if the
/// leaf is absent.
#[doc(alias = "kvmi_vcpu_get_cpuid_reply")]
#[doc(alias = "kvmi_get_cpuid_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetCpuidReply {
    /// EAX.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}
layout!(VcpuGetCpuidReply, 16; eax @ 0, ebx @ 4, ecx @ 8, edx @ 12);

// 16 KVMI_VCPU_GET_XSAVE: request = VcpuHdr; reply data = raw XSAVE area (`KvmXsave`,
// KVM_XSAVE_SIZE bytes; take the length from the reply's hdr.size - 8).
// 38 KVMI_VCPU_SET_XSAVE: request = VcpuHdr + raw XSAVE bytes (length hdr.size - 8, at
// most KVM_XSAVE_SIZE).

// ---------------------------------------------------------------------------------------
// 17 KVMI_VM_READ_PHYSICAL, 18 KVMI_VM_WRITE_PHYSICAL
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_read_physical` (v6: `kvmi_read_physical`). The reply data is `size`
/// bytes. `0 < size <= 4096` without crossing a page, else `-KVM_EINVAL`; `-KVM_ENOENT`
/// if no page backs `gpa`.
#[doc(alias = "kvmi_vm_read_physical")]
#[doc(alias = "kvmi_read_physical")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmReadPhysical {
    /// Guest-physical address.
    pub gpa: u64,
    /// Number of bytes (u64 in kvmi-v6/v7; u16 + padding in the LKML v8+ line).
    pub size: u64,
}
layout!(VmReadPhysical, 16; gpa @ 0, size @ 8);

/// `struct kvmi_vm_write_physical` (v6: `kvmi_write_physical`); followed by `size` data
/// bytes (`data[]` at offset 16). A message shorter than `16 + size` makes the kernel
/// close the socket.
#[doc(alias = "kvmi_vm_write_physical")]
#[doc(alias = "kvmi_write_physical")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmWritePhysical {
    /// Guest-physical address.
    pub gpa: u64,
    /// Number of data bytes that follow.
    pub size: u64,
}
layout!(VmWritePhysical, 16; gpa @ 0, size @ 8);

// ---------------------------------------------------------------------------------------
// 19 KVMI_VCPU_INJECT_EXCEPTION
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_inject_exception` (libkvmi: `kvmi_inject_exception`), after the
/// `VcpuHdr`. kvmi-v7 derives the presence of an error code from the vector; kvmi-v6 had
/// `has_error` at byte 9 (see [`v6::InjectException`](crate::v6::InjectException)). A
/// `KVMI_EVENT_TRAP` follows; `-KVM_EBUSY` while an injection is pending.
#[doc(alias = "kvmi_vcpu_inject_exception")]
#[doc(alias = "kvmi_inject_exception")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuInjectException {
    /// Exception vector.
    pub nr: u8,
    /// Zero (kvmi-v6: `has_error`).
    pub padding1: u8,
    /// Zero.
    pub padding2: u16,
    /// Error code (used only for vectors that push one).
    pub error_code: u32,
    /// For #PF (14): the faulting address, which becomes CR2.
    pub address: u64,
}
layout!(vcpu VcpuInjectException, 24;
    nr @ 8, padding1 @ 9, padding2 @ 10, error_code @ 12, address @ 16);

// ---------------------------------------------------------------------------------------
// 21 KVMI_VM_SET_PAGE_ACCESS
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_set_page_access` (v6: `kvmi_set_page_access`); followed by `count` ×
/// [`PageAccessEntry`]. All entries are processed and the first error is returned.
///
/// `view` comes first (kernel header, code and libkvmi); the kvmi-v7 `kvmi.rst` shows
/// `count` first, which is wrong.
#[doc(alias = "kvmi_vm_set_page_access")]
#[doc(alias = "kvmi_set_page_access")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmSetPageAccess {
    /// EPT view (0 = default; `-KVM_EINVAL` if ≥ `KVM_MAX_EPT_VIEWS`).
    pub view: u16,
    /// Number of entries that follow.
    pub count: u16,
    /// Zero.
    pub padding: u32,
}
layout!(VmSetPageAccess, 8; view @ 0, count @ 2, padding @ 4);

/// `struct kvmi_page_access_entry` (16 bytes), element of `VM_SET_PAGE_ACCESS`.
#[doc(alias = "kvmi_page_access_entry")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct PageAccessEntry {
    /// Guest-physical address (of the page).
    pub gpa: u64,
    /// Allowed accesses: `KVMI_PAGE_ACCESS_*` bits (RWX removes the restriction).
    pub access: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u16,
    /// Zero.
    pub padding3: u32,
}
layout!(PageAccessEntry, 16; gpa @ 0, access @ 8, padding1 @ 9, padding2 @ 10, padding3 @ 12);

// ---------------------------------------------------------------------------------------
// 22 KVMI_VM_GET_MAP_TOKEN (request: no payload)
// ---------------------------------------------------------------------------------------

/// `struct kvmi_map_mem_token` (libkvmi: `kvmi_mem_token`): a one-time token for the
/// remote-mapping device.
#[doc(alias = "kvmi_map_mem_token")]
#[doc(alias = "kvmi_mem_token")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MapMemToken {
    /// Token bytes.
    pub token: [u64; 4],
}
layout!(MapMemToken, 32; token @ 0);

/// `struct kvmi_vm_get_map_token_reply` (v6: `kvmi_get_map_token_reply`).
#[doc(alias = "kvmi_vm_get_map_token_reply")]
#[doc(alias = "kvmi_get_map_token_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmGetMapTokenReply {
    /// The token.
    pub token: MapMemToken,
}
layout!(VmGetMapTokenReply, 32; token @ 0);

// ---------------------------------------------------------------------------------------
// 23 KVMI_VCPU_GET_MTRR_TYPE
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_get_mtrr_type` (v6: `kvmi_get_mtrr_type`), after the `VcpuHdr`.
#[doc(alias = "kvmi_vcpu_get_mtrr_type")]
#[doc(alias = "kvmi_get_mtrr_type")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetMtrrType {
    /// Guest-physical address.
    pub gpa: u64,
}
layout!(vcpu VcpuGetMtrrType, 16; gpa @ 8);

/// `struct kvmi_vcpu_get_mtrr_type_reply` (v6: `kvmi_get_mtrr_type_reply`).
#[doc(alias = "kvmi_vcpu_get_mtrr_type_reply")]
#[doc(alias = "kvmi_get_mtrr_type_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetMtrrTypeReply {
    /// Memory type (C name `type`).
    pub type_: u8,
    /// Zero.
    pub padding: [u8; 7],
}
layout!(VcpuGetMtrrTypeReply, 8; type_ @ 0, padding @ 1);

// ---------------------------------------------------------------------------------------
// 24 KVMI_VM_CONTROL_SPP, 26 KVMI_VM_SET_PAGE_WRITE_BITMAP
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_control_spp` (v6: `kvmi_control_spp`): enable sub-page protection
/// (disabling is `-KVM_EOPNOTSUPP`).
#[doc(alias = "kvmi_vm_control_spp")]
#[doc(alias = "kvmi_control_spp")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmControlSpp {
    /// 1 to enable.
    pub enable: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u16,
    /// Zero.
    pub padding3: u32,
}
layout!(VmControlSpp, 8; enable @ 0, padding1 @ 1, padding2 @ 2, padding3 @ 4);

/// `struct kvmi_vm_set_page_write_bitmap` (v6/libkvmi: `kvmi_set_page_write_bitmap`);
/// followed by `count` × [`PageWriteBitmapEntry`]. `-KVM_EOPNOTSUPP` unless SPP is on.
#[doc(alias = "kvmi_vm_set_page_write_bitmap")]
#[doc(alias = "kvmi_set_page_write_bitmap")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmSetPageWriteBitmap {
    /// Zero (v6 and libkvmi call it `view`; libkvmi always sends 0).
    pub padding1: u16,
    /// Number of entries that follow.
    pub count: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(VmSetPageWriteBitmap, 8; padding1 @ 0, count @ 2, padding2 @ 4);

/// `struct kvmi_page_write_bitmap_entry` (16 bytes), element of
/// `VM_SET_PAGE_WRITE_BITMAP`.
#[doc(alias = "kvmi_page_write_bitmap_entry")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct PageWriteBitmapEntry {
    /// Guest-physical address (of the 4 KiB page).
    pub gpa: u64,
    /// Bit `i` set: 128-byte sub-page `i` (0–31) is writable.
    pub bitmap: u32,
    /// Zero.
    pub padding: u32,
}
layout!(PageWriteBitmapEntry, 16; gpa @ 0, bitmap @ 8, padding @ 12);

// ---------------------------------------------------------------------------------------
// 27 KVMI_VM_CONTROL_CMD_RESPONSE
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_control_cmd_response` (kvmi-v7; v6 and libkvmi have a `u16 padding1`
/// where kvmi-v7 has `flags` + `padding1`, see
/// [`v6::ControlCmdResponse`](crate::v6::ControlCmdResponse)).
///
/// `enable = 0` disables command replies (`now = 1`: starting with this very command;
/// `now = 0`: from the next one). While disabled, a command whose reply carries data, or
/// an unknown/disallowed command, closes the socket.
#[doc(alias = "kvmi_vm_control_cmd_response")]
#[doc(alias = "kvmi_control_cmd_response")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmControlCmdResponse {
    /// 1 to enable replies, 0 to disable.
    pub enable: u8,
    /// 1: applies to this command too.
    pub now: u8,
    /// With `enable = 0`:
    /// [`KVMI_CMD_RESPONSE_FLAG_CMD_ERROR`](crate::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR).
    pub flags: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u32,
}
layout!(VmControlCmdResponse, 8; enable @ 0, now @ 1, flags @ 2, padding1 @ 3, padding2 @ 4);

// ---------------------------------------------------------------------------------------
// 28 KVMI_VCPU_SET_VE_INFO, 33 KVMI_VCPU_DISABLE_VE (request: VcpuHdr)
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_set_ve_info` (libkvmi: `kvmi_set_ve_info_page`, with `padding[7]`),
/// after the `VcpuHdr`.
#[doc(alias = "kvmi_vcpu_set_ve_info")]
#[doc(alias = "kvmi_set_ve_info_page")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuSetVeInfo {
    /// Guest-physical address of the #VE information page.
    pub gpa: u64,
    /// 1: also cause a VM exit on #VE.
    pub trigger_vmexit: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u16,
    /// Zero.
    pub padding3: u32,
}
layout!(vcpu VcpuSetVeInfo, 24;
    gpa @ 8, trigger_vmexit @ 16, padding1 @ 17, padding2 @ 18, padding3 @ 20);

// ---------------------------------------------------------------------------------------
// 29 KVMI_VM_GET_MAX_GFN (request: no payload)
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_get_max_gfn_reply` (libkvmi: `kvmi_get_max_gfn_reply`).
#[doc(alias = "kvmi_vm_get_max_gfn_reply")]
#[doc(alias = "kvmi_get_max_gfn_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmGetMaxGfnReply {
    /// First inaccessible guest frame number.
    pub gfn: u64,
}
layout!(VmGetMaxGfnReply, 8; gfn @ 0);

// ---------------------------------------------------------------------------------------
// 30 KVMI_VM_SET_PAGE_SVE, 31 KVMI_GET_NEXT_AVAILABLE_GFN (request: no payload)
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vm_set_page_sve` (libkvmi: `kvmi_set_ept_page_conv_req`, with `sve` and
/// `padding[5]`): set or clear the EPT "suppress #VE" bit of a page.
#[doc(alias = "kvmi_vm_set_page_sve")]
#[doc(alias = "kvmi_set_ept_page_conv_req")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VmSetPageSve {
    /// EPT view.
    pub view: u16,
    /// 1 to set the suppress-#VE bit, 0 to clear it.
    pub suppress: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u32,
    /// Guest-physical address.
    pub gpa: u64,
}
layout!(VmSetPageSve, 16; view @ 0, suppress @ 2, padding1 @ 3, padding2 @ 4, gpa @ 8);

/// Reply of `KVMI_GET_NEXT_AVAILABLE_GFN` (31, libkvmi 2023; kernel side not found).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct GetNextAvailableGfnReply {
    /// Next available guest frame number.
    pub gfn: u64,
}
layout!(GetNextAvailableGfnReply, 8; gfn @ 0);

// ---------------------------------------------------------------------------------------
// 32 KVMI_VCPU_SET_EPT_VIEW, 34 KVMI_VCPU_GET_EPT_VIEW (request: VcpuHdr),
// 36 KVMI_VCPU_CONTROL_EPT_VIEW
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_set_ept_view` (libkvmi: `kvmi_switch_ept_view_req`), after the
/// `VcpuHdr`: switch the vCPU to an EPT view.
#[doc(alias = "kvmi_vcpu_set_ept_view")]
#[doc(alias = "kvmi_switch_ept_view_req")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuSetEptView {
    /// EPT view.
    pub view: u16,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(vcpu VcpuSetEptView, 16; view @ 8, padding1 @ 10, padding2 @ 12);

/// `struct kvmi_vcpu_get_ept_view_reply` (libkvmi: `kvmi_get_ept_view_reply`).
#[doc(alias = "kvmi_vcpu_get_ept_view_reply")]
#[doc(alias = "kvmi_get_ept_view_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetEptViewReply {
    /// Current EPT view of the vCPU.
    pub view: u16,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
}
layout!(VcpuGetEptViewReply, 8; view @ 0, padding1 @ 2, padding2 @ 4);

/// `struct kvmi_vcpu_control_ept_view` (libkvmi: `kvmi_control_ept_view_req`), after the
/// `VcpuHdr`: whether the guest may VMFUNC(0, `view`) without an exit.
#[doc(alias = "kvmi_vcpu_control_ept_view")]
#[doc(alias = "kvmi_control_ept_view_req")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuControlEptView {
    /// EPT view.
    pub view: u16,
    /// 1: visible to (switchable by) the guest.
    pub visible: u8,
    /// Zero.
    pub padding1: u8,
    /// Zero.
    pub padding2: u32,
}
layout!(vcpu VcpuControlEptView, 16; view @ 8, visible @ 10, padding1 @ 11, padding2 @ 12);

// ---------------------------------------------------------------------------------------
// 35 KVMI_VCPU_TRANSLATE_GVA
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_translate_gva`, after the `VcpuHdr`.
#[doc(alias = "kvmi_vcpu_translate_gva")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuTranslateGva {
    /// Guest-virtual address.
    pub gva: u64,
}
layout!(vcpu VcpuTranslateGva, 16; gva @ 8);

/// `struct kvmi_vcpu_translate_gva_reply`.
#[doc(alias = "kvmi_vcpu_translate_gva_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuTranslateGvaReply {
    /// Guest-physical address, or [`KVMI_UNMAPPED_GPA`](crate::KVMI_UNMAPPED_GPA).
    pub gpa: u64,
}
layout!(VcpuTranslateGvaReply, 8; gpa @ 0);

// ---------------------------------------------------------------------------------------
// 37 KVMI_VCPU_GET_XCR
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_get_xcr`, after the `VcpuHdr`.
#[doc(alias = "kvmi_vcpu_get_xcr")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetXcr {
    /// XCR number (only 0 is accepted).
    pub xcr: u8,
    /// Zero.
    pub padding: [u8; 7],
}
layout!(vcpu VcpuGetXcr, 16; xcr @ 8, padding @ 9);

/// `struct kvmi_vcpu_get_xcr_reply`.
#[doc(alias = "kvmi_vcpu_get_xcr_reply")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuGetXcrReply {
    /// XCR value.
    pub value: u64,
}
layout!(VcpuGetXcrReply, 8; value @ 0);

// ---------------------------------------------------------------------------------------
// 39 KVMI_QUERY_PHYSICAL (libkvmi 2023; kernel side not found)
// ---------------------------------------------------------------------------------------

/// Request of `KVMI_QUERY_PHYSICAL` (libkvmi 2023): which memory slot holds `gfn`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct QueryPhysical {
    /// Guest frame number.
    pub gfn: u64,
}
layout!(QueryPhysical, 8; gfn @ 0);

/// Reply of `KVMI_QUERY_PHYSICAL` (libkvmi 2023).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct QueryPhysicalReply {
    /// First frame of the slot.
    pub gfn: u64,
    /// Slot size in pages.
    pub size: u64,
}
layout!(QueryPhysicalReply, 16; gfn @ 0, size @ 8);

// ---------------------------------------------------------------------------------------
// 41 KVMI_VCPU_ALLOC_GFN, 42 KVMI_VCPU_FREE_GFN (libkvmi 2023; libkvmi uses vCPU 0)
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_alloc_gfn` (GDATA kvm fork header), after the `VcpuHdr`: ask QEMU to
/// add a RAM page at `gfn`.
#[doc(alias = "kvmi_vcpu_alloc_gfn")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuAllocGfn {
    /// Guest frame number.
    pub gfn: u64,
}
layout!(vcpu VcpuAllocGfn, 16; gfn @ 8);

/// `struct kvmi_vcpu_free_gfn` (GDATA kvm fork header), after the `VcpuHdr`.
#[doc(alias = "kvmi_vcpu_free_gfn")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuFreeGfn {
    /// Guest frame number.
    pub gfn: u64,
}
layout!(vcpu VcpuFreeGfn, 16; gfn @ 8);

// ---------------------------------------------------------------------------------------
// 43 KVMI_CREATE_EPT_VIEW (request: no payload), 44 KVMI_DESTROY_EPT_VIEW
// (libkvmi 2023; kernel side not found)
// ---------------------------------------------------------------------------------------

/// Reply of `KVMI_CREATE_EPT_VIEW` (libkvmi 2023).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct CreateEptViewReply {
    /// The new EPT view.
    pub view: u16,
    /// Zero.
    pub padding: [u16; 3],
}
layout!(CreateEptViewReply, 8; view @ 0, padding @ 2);

/// Request of `KVMI_DESTROY_EPT_VIEW` (libkvmi 2023).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct DestroyEptView {
    /// EPT view to destroy.
    pub view: u16,
    /// Zero.
    pub padding: [u16; 3],
}
layout!(DestroyEptView, 8; view @ 0, padding @ 2);

// ---------------------------------------------------------------------------------------
// 60 KVMI_VCPU_CHANGE_GFN
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_change_gfn`, 2023 layout (libkvmi `bc80de9`, GDATA kvm fork), after
/// the `VcpuHdr`: make `old_gfn` map `new_gfn`'s frame in `view`; `(g, g)` restores.
/// The 2020 kvmi-v7 kernel has no `view` ([`VcpuChangeGfn2020`]); which one a host
/// speaks is not discoverable from `GET_VERSION`.
#[doc(alias = "kvmi_vcpu_change_gfn")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuChangeGfn {
    /// EPT view.
    pub view: u16,
    /// Zero.
    pub padding1: u16,
    /// Zero.
    pub padding2: u32,
    /// Frame whose mapping changes.
    pub old_gfn: u64,
    /// Frame whose backing page it gets (`u64::MAX` is reserved: `-KVM_EPERM`).
    pub new_gfn: u64,
}
layout!(vcpu VcpuChangeGfn, 32;
    view @ 8, padding1 @ 10, padding2 @ 12, old_gfn @ 16, new_gfn @ 24);

/// `struct kvmi_vcpu_change_gfn` as in the 2020 kvmi-v7 kernel (no view; acts on the
/// current view), after the `VcpuHdr`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuChangeGfn2020 {
    /// Frame whose mapping changes.
    pub old_gfn: u64,
    /// Frame whose backing page it gets.
    pub new_gfn: u64,
}
layout!(vcpu VcpuChangeGfn2020, 24; old_gfn @ 8, new_gfn @ 16);

// ---------------------------------------------------------------------------------------
// 63 KVMI_VCPU_CONTROL_SINGLESTEP
// ---------------------------------------------------------------------------------------

/// `struct kvmi_vcpu_control_singlestep`, after the `VcpuHdr`: arm/disarm MTF
/// single-stepping (check [`Features::singlestep`] first; the code answers
/// `-KVM_EINVAL` when unsupported).
#[doc(alias = "kvmi_vcpu_control_singlestep")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct VcpuControlSingleStep {
    /// 1 to enable, 0 to disable.
    pub enable: u8,
    /// Zero.
    pub padding: [u8; 7],
}
layout!(vcpu VcpuControlSingleStep, 16; enable @ 8, padding @ 9);
