//! Software breakpoints as a capability of their own.
//!
//! A tool sets a breakpoint at a guest-virtual address — in every address space, or
//! only in the one a CR3 value names — or at a guest-physical address, and its hits
//! arrive as [`crate::EventKind::Breakpoint`] events. Setting one makes sure those
//! events are delivered: there is no separate monitor to remember.

use crate::addr::{Gpa, Gva};
use crate::error::Result;

/// Where a breakpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Breakpoint {
    /// At a linear address.
    Virtual {
        /// The address of the instruction's first byte.
        gva: Gva,
        /// Only hits in the address space whose CR3 is this (page-table root, without
        /// PCID bits) are reported; `None`: every address space.
        cr3: Option<Gpa>,
    },
    /// At a guest-physical address: hits through any mapping of that byte.
    Physical(Gpa),
}

impl Breakpoint {
    /// At `gva` in every address space.
    pub fn at(gva: Gva) -> Self {
        Self::Virtual { gva, cr3: None }
    }

    /// At `gva`, reported only in the address space whose CR3 is `cr3`.
    pub fn in_space(gva: Gva, cr3: Gpa) -> Self {
        Self::Virtual {
            gva,
            cr3: Some(cr3),
        }
    }

    /// At a guest-physical address.
    pub fn physical(gpa: Gpa) -> Self {
        Self::Physical(gpa)
    }
}

/// Setting and clearing software breakpoints.
pub trait Breakpoints {
    /// Sets `bp` (again: no effect) and enables delivery of its hits as
    /// [`crate::EventKind::Breakpoint`] events.
    fn set_breakpoint(&self, bp: Breakpoint) -> Result<()>;

    /// Removes `bp` (not set: no effect).
    fn clear_breakpoint(&self, bp: Breakpoint) -> Result<()>;

    /// The breakpoints set, in order.
    fn active_breakpoints(&self) -> Vec<Breakpoint>;
}
