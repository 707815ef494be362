//! The QEMU ⇄ introspection-tool handshake (KVM-VMI QEMU `kvmi-v7`,
//! `include/sysemu/vmi-handshake.h`), exchanged on the freshly connected socket before
//! QEMU hands it to KVM.
//!
//! The tool is the socket server. Right after connecting, QEMU sends a
//! [`QemuToIntrospector`]; the tool answers with a [`QemuFromIntrospector`]. Nothing else
//! is exchanged: the allowed commands and events are QEMU command-line properties, not
//! part of the handshake. From then on the kernel speaks on the socket.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `struct qemu_vmi_to_introspector` (libkvmi: `struct kvmi_qemu2introspector`), QEMU →
/// tool, 96 bytes in kvmi-v7.
///
/// Read it size-tolerantly: read the leading `struct_size` first, reject values below
/// [`QEMU_TO_INTROSPECTOR_MIN_SIZE`] or above [`QEMU_TO_INTROSPECTOR_MAX_SIZE`], read
/// exactly `struct_size` bytes, use the first `min(struct_size, 96)` of them (zero-extend
/// a shorter one) and ignore the rest. kvmi-v12 QEMU sends 104 bytes (it appends
/// `max_gpa: u64`); kvmi-v6 QEMU fills only `struct_size` and `uuid`.
#[doc(alias = "qemu_vmi_to_introspector")]
#[doc(alias = "kvmi_qemu2introspector")]
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct QemuToIntrospector {
    /// Size of the struct as sent by this QEMU (96 for kvmi-v7).
    pub struct_size: u32,
    /// VM UUID (QEMU `-uuid`, raw bytes), the same value QEMU gives to KVM.
    pub uuid: [u8; 16],
    /// Zero.
    pub padding: u32,
    /// VM start time in seconds (Unix time in current QEMU; reset on guest reset,
    /// preserved across migration). 0 from kvmi-v6 QEMU (field `padding2` there).
    pub start_time: i64,
    /// VM name (QEMU `-name`), NUL-terminated, at most 63 characters. Empty from
    /// kvmi-v6 QEMU.
    pub name: [u8; 64],
}
layout!(QemuToIntrospector, 96;
    struct_size @ 0, uuid @ 4, padding @ 20, start_time @ 24, name @ 32);

/// Size of [`QemuToIntrospector`] in kvmi-v7 (96).
pub const QEMU_TO_INTROSPECTOR_SIZE: usize = core::mem::size_of::<QemuToIntrospector>();
/// Size of the kvmi-v12 QEMU struct (104: kvmi-v7's plus `max_gpa: u64` at offset 96).
pub const QEMU_TO_INTROSPECTOR_SIZE_V12: usize = 104;
/// Smallest `struct_size` libkvmi accepts (32, the offset of `name`).
pub const QEMU_TO_INTROSPECTOR_MIN_SIZE: usize = 32;
/// Largest `struct_size` libkvmi accepts (64 KiB).
pub const QEMU_TO_INTROSPECTOR_MAX_SIZE: usize = 64 * 1024;

/// `struct qemu_vmi_from_introspector` (libkvmi: `struct kvmi_introspector2qemu`), tool →
/// QEMU, 24 bytes.
///
/// QEMU accepts any `struct_size` ≥ 24, reads exactly that many bytes and ignores bytes
/// past 24. `cookie_hash` is checked only when QEMU was started with `key=`; kvmi-v6
/// QEMU reads the reply but checks nothing.
#[doc(alias = "qemu_vmi_from_introspector")]
#[doc(alias = "kvmi_introspector2qemu")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct QemuFromIntrospector {
    /// Size of this struct (24).
    pub struct_size: u32,
    /// SHA-1 of the bytes of the QEMU secret object named by `key=` (zero if unused).
    pub cookie_hash: [u8; 20],
}
layout!(QemuFromIntrospector, 24; struct_size @ 0, cookie_hash @ 4);

/// Size of [`QemuFromIntrospector`] (24).
pub const QEMU_FROM_INTROSPECTOR_SIZE: usize = core::mem::size_of::<QemuFromIntrospector>();

zeroed_default!(QemuToIntrospector);

const _: () = {
    assert!(QEMU_TO_INTROSPECTOR_MIN_SIZE == core::mem::offset_of!(QemuToIntrospector, name));
};
