//! KVM ioctls that attach the introspection socket to a VM (`KVMIO` = 0xAE), and their
//! argument structs.
//!
//! QEMU, not the introspection tool, issues these on the KVM VM fd (and, for
//! `KVM_INTROSPECTION_GFN`, on a vCPU fd). They are listed for host simulators,
//! diagnostics and documentation. The kvmi-v7 numbers come from KVM-VMI QEMU `kvmi-v7`'s
//! copy of `linux/kvm.h` (the kvmi-v7 kernel's own `kvm.h` was not available); QEMU used
//! 0xc3–0xc7 briefly before returning to these for compatibility.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `KVMIO`: the ioctl type byte of KVM.
pub const KVMIO: u32 = 0xAE;

const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = 8;
const IOC_SIZESHIFT: u32 = 16;
const IOC_DIRSHIFT: u32 = 30;
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;

/// `_IO(KVMIO, nr)`: ioctl number without an argument.
pub const fn kvm_io(nr: u32) -> u32 {
    (IOC_NONE << IOC_DIRSHIFT) | (KVMIO << IOC_TYPESHIFT) | (nr << IOC_NRSHIFT)
}

/// `_IOW(KVMIO, nr, size)`: ioctl number whose argument of `size` bytes is written to
/// the kernel.
pub const fn kvm_iow(nr: u32, size: usize) -> u32 {
    (IOC_WRITE << IOC_DIRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
        | (KVMIO << IOC_TYPESHIFT)
        | (nr << IOC_NRSHIFT)
}

/// `struct kvm_introspection_hook` (kvmi-v6 name: `struct kvm_introspection`, same
/// layout), the argument of `KVM_INTROSPECTION_HOOK`.
#[doc(alias = "kvm_introspection_hook")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmIntrospectionHook {
    /// The connected socket, after the handshake.
    pub fd: i32,
    /// Must be zero (else `EINVAL`).
    pub padding: u32,
    /// VM UUID (the one sent in the handshake).
    pub uuid: [u8; 16],
}
layout!(KvmIntrospectionHook, 24; fd @ 0, padding @ 4, uuid @ 8);

/// `struct kvm_introspection_feature`, the argument of `KVM_INTROSPECTION_COMMAND` and
/// `KVM_INTROSPECTION_EVENT` (one call per allowed id).
#[doc(alias = "kvm_introspection_feature")]
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmIntrospectionFeature {
    /// Bit 0: allow (1) or disallow (0).
    pub allow: u32,
    /// Command or event id, or [`KVM_INTROSPECTION_ALL_IDS`].
    pub id: i32,
}
layout!(KvmIntrospectionFeature, 8; allow @ 0, id @ 4);

/// `KvmIntrospectionFeature::id` meaning "every command" / "every event".
pub const KVM_INTROSPECTION_ALL_IDS: i32 = -1;

/// Argument of the kvmi-v7 vCPU ioctl `KVM_INTROSPECTION_GFN` (16 bytes), through which
/// QEMU services `KVMI_VCPU_ALLOC_GFN` / `KVMI_VCPU_FREE_GFN`.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct KvmIntrospectionGfn {
    /// Filled by the kernel.
    pub ret: u64,
    /// Guest frame number to allocate or free.
    pub gfn: u64,
}
layout!(KvmIntrospectionGfn, 16; ret @ 0, gfn @ 8);

/// `KVM_INTROSPECTION_GFN` return value: nothing to do, wait again.
pub const KVM_INTROSPECTION_GFN_WAIT: i32 = 0;
/// `KVM_INTROSPECTION_GFN` return value: add a RAM page at `gfn`.
pub const KVM_INTROSPECTION_GFN_ALLOC: i32 = 1;
/// `KVM_INTROSPECTION_GFN` return value: remove the page at `gfn`.
pub const KVM_INTROSPECTION_GFN_FREE: i32 = 2;
/// `KVM_INTROSPECTION_GFN` return value: stop servicing.
pub const KVM_INTROSPECTION_GFN_ABORT: i32 = -1;

/// Ioctl numbers of KVM-VMI `kvmi-v7`.
pub mod v7 {
    use super::{
        kvm_io, kvm_iow, KvmIntrospectionFeature, KvmIntrospectionGfn, KvmIntrospectionHook,
    };
    use core::mem::size_of;

    /// `KVM_INTROSPECTION_HOOK`: hand the socket to KVM (`EEXIST` if hooked; `EPERM`
    /// without `kvm.introspection=on`).
    pub const KVM_INTROSPECTION_HOOK: u32 = kvm_iow(0xff, size_of::<KvmIntrospectionHook>());
    /// `KVM_INTROSPECTION_UNHOOK`: detach introspection.
    pub const KVM_INTROSPECTION_UNHOOK: u32 = kvm_io(0xfb);
    /// `KVM_INTROSPECTION_COMMAND`: allow/disallow a command id.
    pub const KVM_INTROSPECTION_COMMAND: u32 = kvm_iow(0xfd, size_of::<KvmIntrospectionFeature>());
    /// `KVM_INTROSPECTION_EVENT`: allow/disallow an event id.
    pub const KVM_INTROSPECTION_EVENT: u32 = kvm_iow(0xfc, size_of::<KvmIntrospectionFeature>());
    /// `KVM_INTROSPECTION_PREUNHOOK`: send `KVMI_EVENT_UNHOOK` (`ENOENT` if the tool did
    /// not enable it).
    pub const KVM_INTROSPECTION_PREUNHOOK: u32 = kvm_io(0xfe);
    /// `KVM_INTROSPECTION_MAP` (`_IOW(u64)`).
    pub const KVM_INTROSPECTION_MAP: u32 = kvm_iow(0xfa, size_of::<u64>());
    /// `KVM_INTROSPECTION_GFN` (vCPU ioctl, [`KvmIntrospectionGfn`]).
    pub const KVM_INTROSPECTION_GFN: u32 = kvm_iow(0xf9, size_of::<KvmIntrospectionGfn>());
    /// `KVM_CAP_INTROSPECTION`.
    pub const KVM_CAP_INTROSPECTION: u32 = 180;

    const _: () = {
        assert!(KVM_INTROSPECTION_HOOK == 0x4018_AEFF);
        assert!(KVM_INTROSPECTION_UNHOOK == 0xAEFB);
        assert!(KVM_INTROSPECTION_COMMAND == 0x4008_AEFD);
        assert!(KVM_INTROSPECTION_EVENT == 0x4008_AEFC);
        assert!(KVM_INTROSPECTION_PREUNHOOK == 0xAEFE);
        assert!(KVM_INTROSPECTION_MAP == 0x4008_AEFA);
        assert!(KVM_INTROSPECTION_GFN == 0x4010_AEF9);
    };
}

/// Ioctl numbers of KVM-VMI `kvmi-v6`. There is no PREUNHOOK: UNHOOK (nr 0xfe, the
/// number kvmi-v7 gives PREUNHOOK) itself emits `KVMI_EVENT_UNHOOK`.
pub mod v6 {
    use super::{kvm_io, kvm_iow, KvmIntrospectionFeature, KvmIntrospectionHook};
    use core::mem::size_of;

    /// `KVM_INTROSPECTION_HOOK` (argument `struct kvm_introspection`, same layout as
    /// [`KvmIntrospectionHook`]).
    pub const KVM_INTROSPECTION_HOOK: u32 = kvm_iow(0xff, size_of::<KvmIntrospectionHook>());
    /// `KVM_INTROSPECTION_UNHOOK`: also triggers `KVMI_EVENT_UNHOOK` in v6.
    pub const KVM_INTROSPECTION_UNHOOK: u32 = kvm_io(0xfe);
    /// `KVM_INTROSPECTION_COMMAND`.
    pub const KVM_INTROSPECTION_COMMAND: u32 = kvm_iow(0xfd, size_of::<KvmIntrospectionFeature>());
    /// `KVM_INTROSPECTION_EVENT`.
    pub const KVM_INTROSPECTION_EVENT: u32 = kvm_iow(0xfc, size_of::<KvmIntrospectionFeature>());
    /// `KVM_CAP_INTROSPECTION`.
    pub const KVM_CAP_INTROSPECTION: u32 = 999;

    const _: () = {
        assert!(KVM_INTROSPECTION_HOOK == 0x4018_AEFF);
        assert!(KVM_INTROSPECTION_UNHOOK == 0xAEFE);
        assert!(KVM_INTROSPECTION_COMMAND == 0x4008_AEFD);
        assert!(KVM_INTROSPECTION_EVENT == 0x4008_AEFC);
    };
}
