//! The legacy backend of `vmi-core`: introspection of an unpatched QEMU/KVM guest.
