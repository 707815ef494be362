//! Raw ABI of KVM introspection (KVMi): message ids, constants and `#[repr(C)]` wire
//! structs of the socket protocol between an introspection tool and the KVM-VMI patched
//! Linux kernel, plus the QEMU handshake that precedes it. This crate is the bottom of
//! the layering **`kvmi-sys`** (bytes) → `kvmi-proto` (socket, handshake, framing,
//! sequence numbers, reply matching, typed commands and events) → `vmi-kvm` (the
//! `vmi-core` backend). It has **no behaviour**: nothing here opens a socket, validates
//! a message or allocates; it only says what the bytes are (its only functions are
//! `const fn` lookups: ioctl-number encoding, per-event payload sizes and the C names of
//! message and event ids).
//!
//! # Which ABI
//!
//! The primary target is the **KVM-VMI `kvmi-v7` product ABI** (kernel 5.4 branch
//! `kvmi-v7`, used by libkvmi `master`, LibVMI and KVM-VMI QEMU `kvmi-v7`). It keeps the
//! old numeric message ids of the LKML RFC v6 series under new `KVMI_VM_*` /
//! `KVMI_VCPU_*` names, and adds EPT views, #VE, SPP, singlestep, the CPUID event,
//! `CHANGE_GFN` and the 2023 libkvmi additions. Everything at the crate root is this
//! ABI. Where **kvmi-v6** (LKML RFC v6, KVM-VMI branch `kvmi-v6`, libkvmi branch
//! `kvmi-v6`) differs, the v6 ids and layouts are in [`v6`]. The upstream-style
//! LKML v7+ / `kvmi-v12` numbering (even VM ids, odd vCPU ids) is *not* modelled.
//! `KVMI_VERSION` is 1 in every branch, so a client tells the ABIs apart by probing
//! (size of the `GET_VERSION` reply, `VM_CHECK_COMMAND`), not by the version number.
//!
//! # Layout of the crate
//!
//! * [`ids`]: message ids (commands, `KVMI_EVENT`, `KVMI_EVENT_REPLY`) and event ids,
//!   with their names ([`command_name`], [`event_name`]; [`v6::command_name`]).
//! * [`consts`]: version, size limits, event actions, page-access bits, descriptor ids,
//!   error codes (`KVM_E*`), hypercall numbers and other fixed values.
//! * [`hdr`]: message header, reply error code, vCPU header.
//! * [`cmd`]: every command request and reply struct.
//! * [`event`]: the common event struct with its x86 part, every event payload and
//!   every event-reply payload.
//! * [`kvm`]: byte-compatible copies of the x86 KVM structs the messages embed
//!   (`kvm_regs`, `kvm_sregs`, `kvm_segment`, `kvm_dtable`, `kvm_msr_entry`,
//!   `kvm_msrs`, `kvm_xsave`), with conversions to and from `kvm-bindings`.
//! * [`handshake`]: the QEMU ⇄ tool structs exchanged before the kernel takes over.
//! * [`ioctl`]: the `KVM_INTROSPECTION_*` ioctl numbers (kvmi-v7 and kvmi-v6) and
//!   their argument structs (issued by QEMU, listed for simulators and diagnostics).
//! * [`v6`]: kvmi-v6 ids and the layouts that differ from kvmi-v7.
//! * [`libkvmi`]: aliases for the names libkvmi `master` uses for the same ids.
//!
//! The contents of [`ids`], [`consts`], [`hdr`], [`cmd`], [`event`], [`kvm`],
//! [`handshake`] and the structs of [`ioctl`] are also re-exported at the crate root.
//!
//! # Conventions
//!
//! * Struct names are the C names in Rust case, without the `kvmi_` prefix
//!   (`struct kvmi_vcpu_control_cr` → [`VcpuControlCr`]); each struct's docs name the C
//!   struct (also searchable as a rustdoc alias). Constants keep their C names.
//! * Every struct is `#[repr(C)]`, derives zerocopy's `FromBytes`, `IntoBytes`,
//!   `Immutable` and `KnownLayout`, and spells its padding out as fields: `IntoBytes`
//!   refuses to compile a struct with implicit padding, so every byte on the wire is a
//!   named field. All padding must be sent as zero; [`Default`] is all-zero.
//! * The wire is host byte order; the only host is x86-64, so all fields are
//!   little-endian native integers. Structs have natural (host) alignment, so parse
//!   from a byte buffer with zerocopy's copying readers (`read_from_bytes`,
//!   `read_from_prefix`), which accept any alignment.
//! * vCPU-scoped commands put a [`VcpuHdr`] (8 bytes) in front of the command struct;
//!   the command structs here do **not** include it, as in the kernel headers. The
//!   compile-time offset checks state offsets the way the reference does, counted from
//!   the start of the payload (that is, including the `VcpuHdr`).
//! * Variable-length tails (`msrs_idx[]`, `entries[]`, raw data) are not part of the
//!   structs: a struct is the fixed head and the tail is a slice of the element type
//!   (e.g. [`VmSetPageAccess`] followed by `count` × [`PageAccessEntry`]).
//!
//! # Example
//!
//! ```
//! use kvmi_sys::{Event, EventCr, MsgHdr, KVMI_EVENT, KVMI_EVENT_CR};
//! use zerocopy::FromBytes;
//!
//! fn parse(frame: &[u8]) -> Option<EventCr> {
//!     let (hdr, payload) = MsgHdr::read_from_prefix(frame).ok()?;
//!     let (ev, _) = Event::read_from_prefix(payload).ok()?;
//!     if hdr.id != KVMI_EVENT || ev.event != KVMI_EVENT_CR {
//!         return None;
//!     }
//!     // Event-specific data starts at `ev.size`, not necessarily at 544.
//!     EventCr::read_from_bytes(payload.get(usize::from(ev.size)..)?).ok()
//! }
//! assert!(parse(&[0; 8]).is_none());
//! ```
//!
//! # Why own copies of the KVM structs
//!
//! `kvm-bindings` 0.10 has the canonical layouts, but its types derive zerocopy traits
//! only behind its `serde` feature and only for zerocopy **0.7**, whose traits are
//! unrelated to the 0.8 traits this workspace uses; and its `kvm_msrs` ends with a
//! bindgen incomplete-array field. A wrapper could not derive the 0.8 traits either
//! (`FromBytes`/`IntoBytes` need every field to implement them). So [`kvm`] declares
//! byte-compatible `#[repr(C)]` copies ([`KvmRegs`], [`KvmSregs`], …) with zerocopy 0.8
//! derives, lossless `From` conversions in both directions, and compile-time checks that
//! sizes and every field offset match `kvm-bindings` (on `x86_64`, where those bindings
//! are the x86 ones).
//!
//! # Sources
//!
//! Numbers come from the project reference `kvmi-protocol.md` and were checked against:
//! the KVM-VMI `kvmi-v7` kernel's `include/uapi/linux/kvmi.h`,
//! `arch/x86/include/uapi/asm/kvmi.h` (and the 2023 variant of the latter in the
//! GDATASoftwareAG/kvm fork), `virt/kvm/introspection/kvmi*.c`, its
//! `Documentation/virt/kvm/kvmi.rst`; bitdefender/libkvmi `include/linux/kvmi.h` and
//! `include/linux/x86_64/asm/kvmi.h` (master and the v6-era versions); the LKML RFC v6
//! patch series (Aug 2019) and its `Documentation/virtual/kvm/kvmi.rst`; KVM-VMI QEMU
//! `kvmi-v7` `include/sysemu/vmi-handshake.h` and `linux-headers/linux/kvm.h`. No code
//! was copied; the structs are written from the documented layouts.
//!
//! # kvmi-v6 vs kvmi-v7 at a glance
//!
//! | what | kvmi-v6 | kvmi-v7 |
//! |---|---|---|
//! | ids 2–27 | same numbers, old names (`KVMI_GET_GUEST_INFO`, `KVMI_PAUSE_VCPU`, …) | `KVMI_VM_*` / `KVMI_VCPU_*` names |
//! | v6-only ids | 12 `CONTROL_VE`, 20 `GET_PAGE_ACCESS`, 25 `GET_PAGE_WRITE_BITMAP` | answered with `-KVM_ENOSYS` |
//! | new ids | – | 28, 30–39, 41–44, 60, 63 |
//! | events | 0–11 | 0–13 (+ `CMD_ERROR` 12, `CPUID` 13) |
//! | `GET_VERSION` reply | 8 bytes | 16 bytes (+ [`Features`]) |
//! | `kvmi_event_arch` bytes 2–3 | padding | `view` |
//! | PF event bytes 18–19 | `view` | padding |
//! | PF reply byte 12 | `singlestep` | padding (must be 0) |
//! | TRAP event | 24 bytes, `vector`/`type` as u32 | 16 bytes, always sent after an injection |
//! | `INJECT_EXCEPTION` byte 9 (with vCPU header) | `has_error` | padding |
//! | `CONTROL_CMD_RESPONSE` byte 2 | padding | `flags` (bit 0: send `CMD_ERROR`) |
//! | unknown command | `-KVM_EOPNOTSUPP` | `-KVM_ENOSYS` |
//! | ioctls | no PREUNHOOK; UNHOOK is nr 0xfe; `KVM_CAP_INTROSPECTION` 999 | PREUNHOOK 0xfe, UNHOOK 0xfb; cap 180 |
//! | max payload | 4088 in the LKML RFC v6 headers (see [`v6::KVMI_MSG_SIZE_RFC_V6`]) | 8184 |
#![no_std]

/// Compile-time layout checks: total size, then `field @ offset` pairs.
///
/// `vcpu` prefixes the check with a [`VcpuHdr`]: the size is the payload size including
/// the 8-byte vCPU header, and offsets are counted from the start of the payload (as in
/// the reference tables). Nested fields (`arch.regs.rip`) are accepted.
macro_rules! layout {
    (vcpu $t:ty, $size:expr; $($($f:ident).+ @ $off:expr),* $(,)?) => {
        const _: () = {
            const VH: usize = ::core::mem::size_of::<$crate::hdr::VcpuHdr>();
            assert!(VH + ::core::mem::size_of::<$t>() == $size);
            $( assert!(VH + ::core::mem::offset_of!($t, $($f).+) == $off); )*
        };
    };
    ($t:ty, $size:expr; $($($f:ident).+ @ $off:expr),* $(,)?) => {
        const _: () = {
            assert!(::core::mem::size_of::<$t>() == $size);
            $( assert!(::core::mem::offset_of!($t, $($f).+) == $off); )*
        };
    };
}

/// `Default` as all-zero bytes, for structs whose arrays are too long for
/// `#[derive(Default)]`.
macro_rules! zeroed_default {
    ($($t:ty),* $(,)?) => {
        $(
            impl Default for $t {
                fn default() -> Self {
                    <Self as ::zerocopy::FromZeros>::new_zeroed()
                }
            }
        )*
    };
}

pub mod cmd;
pub mod consts;
pub mod event;
pub mod handshake;
pub mod hdr;
pub mod ids;
pub mod ioctl;
pub mod kvm;
pub mod libkvmi;
pub mod v6;

pub use cmd::*;
pub use consts::*;
pub use event::*;
pub use handshake::*;
pub use hdr::*;
pub use ids::*;
pub use ioctl::{KvmIntrospectionFeature, KvmIntrospectionGfn, KvmIntrospectionHook};
pub use kvm::*;

#[cfg(test)]
mod tests;
