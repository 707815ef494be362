//! Second-level address translation: per-page access restrictions, SLAT views (EPT
//! views / altp2m) and allocation of new guest frames.

use std::ops::Range;

use crate::addr::{Gfn, VcpuId, View};
use crate::error::{Error, Result};
use crate::event::Access;

/// Restricting guest access to physical pages. Restricted accesses trap as
/// [`crate::event::EventKind::MemoryAccess`] events once
/// [`crate::event::Monitor::MemoryAccess`] is enabled.
pub trait PageAccess {
    /// Allows only `access` to `gfn` in `view` ([`Access::RWX`] lifts the restriction).
    fn set_page_access(&self, view: View, gfn: Gfn, access: Access) -> Result<()>;

    /// Allows only `access` to every frame of `gfns` (end exclusive, like LibVMI's
    /// `set_mem_access_range`). Backends batch; the default calls
    /// [`Self::set_page_access`] per frame.
    fn set_page_access_range(&self, view: View, gfns: Range<Gfn>, access: Access) -> Result<()> {
        if gfns.start > gfns.end {
            return Err(Error::InvalidArgument {
                what: "gfn range",
                reason: format!("start {} is after end {}", gfns.start, gfns.end).into(),
            });
        }
        for raw in gfns.start.raw()..gfns.end.raw() {
            self.set_page_access(view, Gfn(raw), access)?;
        }
        Ok(())
    }

    /// The access currently allowed to `gfn` in `view`.
    fn page_access(&self, view: View, gfn: Gfn) -> Result<Access>;
}

/// SLAT views: alternative guest-physical → host mappings with their own page access,
/// switchable per vCPU (Intel EPTP switching; LibVMI `vmi_slat_*`).
pub trait SlatViews {
    /// Whether the host supports views at all.
    fn views_supported(&self) -> Result<bool>;

    /// Creates a view and returns its id.
    fn create_view(&self) -> Result<View>;

    /// Destroys a view (never [`View::DEFAULT`]).
    fn destroy_view(&self, view: View) -> Result<()>;

    /// Makes `vcpu` use `view`.
    fn switch_view(&self, vcpu: VcpuId, view: View) -> Result<()>;

    /// The view `vcpu` currently uses.
    fn current_view(&self, vcpu: VcpuId) -> Result<View>;

    /// In `view`, makes guest frame `old` map to the memory of `new` (LibVMI
    /// `slat_change_gfn`); `new == old` restores the identity mapping.
    fn change_gfn(&self, view: View, old: Gfn, new: Gfn) -> Result<()>;
}

/// Adding guest frames beyond the guest's RAM (LibVMI `vmi_alloc_gfn`).
pub trait GfnAllocation {
    /// The first frame above the guest's memory that can be allocated.
    fn next_available_gfn(&self) -> Result<Gfn>;

    /// Backs `gfn` with new memory.
    fn alloc_gfn(&self, gfn: Gfn) -> Result<()>;

    /// Releases a frame allocated with [`Self::alloc_gfn`].
    fn free_gfn(&self, gfn: Gfn) -> Result<()>;
}
