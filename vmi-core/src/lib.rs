//! The backend-neutral virtual machine introspection API.
//!
//! `vmi-core` is what tools program against. It defines the vocabulary — typed guest
//! addresses ([`Gpa`], [`Gva`], [`Gfn`]), vCPUs and SLAT views, the x86 register model,
//! events and the responses to them, errors — and one trait per capability a backend may
//! offer (read memory, write registers, pause, trap events, …), plus a runtime
//! [`CapabilityReport`] that says, for the connected
//! backend and host, which features work and why the others do not.
//!
//! It also holds x86 address translation over any [`PhysicalMemory`], for every paging
//! mode, with a translation cache.
//!
//! Layering: `vmi-core` depends on no backend. `vmi-kvm` (KVMi socket) and `vmi-legacy`
//! (unpatched QEMU: QMP, GDB stub, shared RAM) implement its traits.
//!
//! # Parked vCPUs
//!
//! The guest-safety rules are one model, in [`park`]: a vCPU is **running** or
//! **parked** — by an event waiting for its answer, by a pause, or both. A parked vCPU's
//! registers are read from what the backend already knows (the snapshot its event
//! brought) and register writes to it are queued. It is released exactly once, when the
//! last reason ends, and nobody but its guards can release it:
//!
//! * an event is a [`PendingEvent`]: [`PendingEvent::reply`] consumes it, and dropping
//!   it (also in a panicking handler) answers with the default response;
//! * a pause is a [`PauseGuard`] from [`VcpuControl::pause`], counted once per guest
//!   across every handle; the last guard to go resumes, after writing what was queued.
//!
//! Backends implement the primitives ([`park::ParkOps`]) that only [`park::Parking`]
//! calls; tools never see them.
//!
//! # Capabilities
//!
//! Each backend declares one [`CapabilityReport`]; monitors, responses and register
//! writes are checked against it before anything reaches the guest, and undeclared rows
//! are unsupported. Optional parts are reached as `Option<&dyn …>` through [`Backend`]'s
//! accessors.

//! # Example
//!
//! Translate a kernel virtual address with a hand-built page table, the way a tool does
//! with the CR3 a backend reports (a tool with a backend calls
//! [`VirtualMemory::translate_va`] or [`VirtualMemory::read_va`] instead, which take
//! the paging mode and CR3 from a vCPU; [`prelude`] imports what a tool needs):
//!
//! ```
//! use vmi_core::{translate, Gpa, Gva, PagingMode, PhysicalMemory, SparseMemory};
//!
//! // One 4-level mapping: 0xffff_8000_0000_0000 -> 2 MiB page at 0x20_0000.
//! let mut mem = SparseMemory::new();
//! let (pml4, pdpt, pd) = (0x1000, 0x2000, 0x3000);
//! mem.write_u64(Gpa(pml4 + 256 * 8), pdpt | 0x3); // present, writable
//! mem.write_u64(Gpa(pdpt), pd | 0x3);
//! mem.write_u64(Gpa(pd), 0x20_0000 | 0x83); // present, writable, 2 MiB page
//! mem.write(Gpa(0x20_0123), b"Linux version");
//!
//! let mode = PagingMode::from_registers(0x8000_0011, 0x20, 0x500); // PG+PE, PAE, LME+LMA
//! let t = translate(&mem, mode, Gpa(pml4), Gva(0xffff_8000_0000_0123))?;
//! assert_eq!(t.gpa, Gpa(0x20_0123));
//! let mut banner = [0u8; 13];
//! mem.read_physical(t.gpa, &mut banner)?;
//! assert_eq!(&banner, b"Linux version");
//! # Ok::<(), vmi_core::Error>(())
//! ```

pub mod addr;
pub mod breakpoint;
pub mod capability;
pub mod cpu_state;
pub mod deadline;
pub mod error;
pub mod event;
pub mod memory;
pub mod paging;
pub mod park;
pub mod prelude;
pub mod registers;
pub mod slat;
pub mod vcpu;
pub mod virt;
mod volatile_copy;

pub use addr::{Gfn, Gpa, Gva, VcpuId, View, PAGE_SHIFT, PAGE_SIZE};
pub use breakpoint::{Breakpoint, Breakpoints};
pub use capability::{Backend, Capability, CapabilityReport, CapabilitySet, Support};
pub use cpu_state::{FaultInjection, HostTranslation, Mtrr, Tsc, Xsave};
pub use deadline::Deadline;
pub use error::{Error, PageFaultReason, Result};
pub use event::{
    Access, Action, Event, EventControl, EventKind, EventRegisters, Monitor, RegisterDecoder,
    Response,
};
pub use memory::{
    MapPhysical, MappedRegion, MemoryInfo, MemoryLayout, PhysicalMemory, PhysicalMemoryWrite,
    PhysicalRange, SparseMemory,
};
pub use paging::{
    read_virtual, translate, PageSize, PagingMode, Translation, TranslationCache, Translator,
};
pub use park::{PauseGuard, PauseScope, PendingEvent};
pub use registers::{
    Msrs, ReadRegisters, Register, RegisterGroups, RegisterSnapshot, WriteRegisters,
};
pub use slat::{GfnAllocation, PageAccess, SlatViews, SubPageProtection, VirtualizationExceptions};
pub use vcpu::{VcpuControl, VcpuSet};
pub use virt::{AddressSpace, Space, VirtualMemory};
