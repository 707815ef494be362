//! What most tools need, in one import: `use vmi_core::prelude::*;`.
//!
//! It brings the traits whose methods a tool calls on a backend — memory, registers,
//! virtual memory, pausing, events, breakpoints, and [`Backend`] with its accessors —
//! and the address newtypes, [`Error`] and [`Result`]. [`Result`] takes an optional
//! error type (`Result<T, E = Error>`), so it can stand in for the standard one.
//!
//! The rarer parts stay out and are imported by name: [`crate::PageAccess`] and
//! [`crate::Xsave`] have methods named like [`Backend`]'s accessors
//! (`page_access`, `xsave`), so importing both with one glob would make those calls
//! ambiguous on a backend that implements them; the SLAT, TSC, MTRR and fault-injection
//! traits go with them.
//!
//! ```
//! use vmi_core::prelude::*;
//!
//! /// Reads a kernel pointer in the address space vCPU 0 is in now.
//! fn kernel_pointer(vm: &dyn Backend, at: Gva) -> Result<Gva> {
//!     vm.read_va_u64(VcpuId(0), at).map(Gva)
//! }
//!
//! /// Reads a frame, on any backend type (or `dyn Backend`).
//! fn frame<M: PhysicalMemory + ?Sized>(vm: &M, gfn: Gfn) -> Result<Vec<u8>> {
//!     let mut page = vec![0u8; 4096];
//!     vm.read_physical(Gpa::try_from(gfn)?, &mut page)?;
//!     Ok(page)
//! }
//!
//! // The standard two-parameter form still works under the glob.
//! let parsed: Result<u64, std::num::ParseIntError> = "10".parse();
//! assert_eq!(parsed, Ok(10));
//!
//! let ram = vmi_core::SparseMemory::new();
//! assert!(matches!(frame(&ram, Gfn(0x10)), Err(Error::UnmappedPhysical { .. })));
//! # let _ = kernel_pointer;
//! ```

pub use crate::addr::{Gfn, Gpa, Gva, VcpuId};
pub use crate::breakpoint::Breakpoints;
pub use crate::capability::Backend;
pub use crate::cpu_state::HostTranslation;
pub use crate::error::{Error, Result};
pub use crate::event::EventControl;
pub use crate::memory::{MapPhysical, MemoryLayout, PhysicalMemory, PhysicalMemoryWrite};
pub use crate::registers::{ReadRegisters, WriteRegisters};
pub use crate::vcpu::VcpuControl;
pub use crate::virt::VirtualMemory;
