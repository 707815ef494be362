//! Raw ABI of KVM introspection (KVMi), the socket protocol between an introspection tool
//! and the KVM-VMI patched Linux kernel and QEMU.
//!
//! This crate is the bottom layer of the workspace: it will hold every message id,
//! constant and `#[repr(C)]` wire struct of the `kvmi-v7` ABI (the one libkvmi master,
//! LibVMI and KVM-VMI QEMU use) together with the `kvmi-v6` differences, with
//! compile-time size and offset checks. It has no behaviour: framing, handshake and the
//! request/reply/event plumbing live in `kvmi-proto`, one layer up.
//!
//! The structs are being filled in by the KVMi wire-protocol work; until then the crate
//! deliberately exports nothing rather than half-checked layouts.
#![no_std]
