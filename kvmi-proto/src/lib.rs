//! KVM introspection (KVMi) protocol engine: the tool side of the socket that the
//! KVM-VMI patched kernel and QEMU connect to.
//!
//! Layering: `kvmi-sys` (raw structs) → **`kvmi-proto`** (listening socket, QEMU
//! handshake, framing, sequence numbers, reply matching with interleaved events,
//! batching, typed commands and events) → `vmi-kvm` (the `vmi-core` backend).
//!
//! The protocol engine and the KVMi host simulator used by its tests are being built by
//! the KVMi wire-protocol work; until then the crate exports nothing, so that no caller
//! can depend on a stub.
