//! The KVMi backend of `vmi-core`: introspection of KVM guests on a KVM-VMI patched
//! kernel and QEMU, over the introspection socket.
//!
//! Layering: `kvmi-sys` → `kvmi-proto` → **`vmi-kvm`** → your tool, programming against
//! the capability traits of `vmi-core`. It will map `vmi-core`'s memory, register,
//! pause, event and SLAT capabilities onto KVMi commands and events, batching round trips
//! and replying to every event exactly once on every path.
//!
//! The backend is built on top of `kvmi-proto` once that lands; until then the crate
//! exports nothing, so that no caller can depend on a stub.
