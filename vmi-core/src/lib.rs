//! The backend-neutral virtual machine introspection API.
//!
//! `vmi-core` is what tools program against. It defines the vocabulary — typed guest
//! addresses ([`Gpa`], [`Gva`], [`Gfn`]), vCPUs and SLAT views, the x86 register model,
//! events and the responses to them, errors — and one trait per capability a backend may
//! offer (read memory, write registers, pause, trap events, …), plus a runtime
//! [`CapabilityReport`](capability::CapabilityReport) that says, for the connected
//! backend and host, which features work and why the others do not.
//!
//! It also holds x86 address translation over any [`PhysicalMemory`], for every paging
//! mode, with a translation cache.
//!
//! Layering: `vmi-core` depends on no backend. `vmi-kvm` (KVMi socket) and `vmi-legacy`
//! (unpatched QEMU: QMP, GDB stub, shared RAM) implement its traits.

pub mod addr;
pub mod error;
pub mod memory;

pub use addr::{Gfn, Gpa, Gva, VcpuId, View, PAGE_SHIFT, PAGE_SIZE};
pub use error::{Error, PageFaultReason, Result};
pub use memory::{MemoryInfo, PhysicalMemory, PhysicalMemoryWrite, PhysicalRange, SparseMemory};
pub mod registers;
pub use registers::{Register, RegisterGroups, RegisterSnapshot};
pub mod vcpu;
pub use vcpu::{PauseCount, PauseGuard, VcpuControl};
pub use registers::{ReadRegisters, WriteRegisters};
pub mod cpu_state;
pub mod event;
pub mod slat;
pub use cpu_state::{FaultInjection, HostTranslation, Mtrr, Tsc, Xsave};
pub use event::{Access, Action, Event, EventControl, EventKind, Monitor, PendingEvent, ReplyToken, Response};
pub use slat::{GfnAllocation, PageAccess, SlatViews};
pub mod capability;
pub use capability::{Backend, Capability, CapabilityReport, Support};
