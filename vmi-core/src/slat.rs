//! Second-level address translation: per-page access restrictions, SLAT views (EPT
//! views / altp2m), views the guest may switch to itself, virtualization exceptions
//! (#VE), sub-page write protection (SPP) and allocation of new guest frames.

use std::ops::Range;

use crate::addr::{Gfn, Gpa, VcpuId, View};
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

    /// Lets the guest on `vcpu` switch to `view` itself (Intel VMFUNC 0, EPTP
    /// switching, without an exit) when `visible`, or forbids it again. The default
    /// says the backend cannot.
    fn set_view_visible(&self, vcpu: VcpuId, view: View, visible: bool) -> Result<()> {
        let _ = (vcpu, view, visible);
        Err(Error::unsupported(
            "guest-visible SLAT views",
            "this backend has no way to expose views to the guest",
        ))
    }
}

/// Virtualization exceptions (Intel #VE): EPT violations delivered to the guest as
/// vector 20 instead of exiting to the host, for pages whose "suppress #VE" bit is
/// clear (LibVMI has no equivalent; Xen's altp2m has `set_suppress_ve`).
pub trait VirtualizationExceptions {
    /// Makes `vcpu` take #VE, with its information page at `info` (guest-physical,
    /// 4 KiB-aligned). With `exit_too`, the host is also told about each one.
    fn enable_ve(&self, vcpu: VcpuId, info: Gpa, exit_too: bool) -> Result<()>;

    /// Stops #VE on `vcpu`.
    fn disable_ve(&self, vcpu: VcpuId) -> Result<()>;

    /// Sets (`suppress`) or clears the "suppress #VE" bit of `gfn` in `view`: with the
    /// bit clear, an EPT violation on that page becomes a #VE in the guest.
    fn set_suppress_ve(&self, view: View, gfn: Gfn, suppress: bool) -> Result<()>;
}

/// Sub-page write protection (Intel SPP): a write-restricted page whose 128-byte
/// sub-pages are writable per a 32-bit bitmap, so writes to the others trap alone.
pub trait SubPageProtection {
    /// Turns SPP on for the guest (hosts may not be able to turn it off again; with it
    /// on, views other than the default may be refused).
    fn enable_spp(&self) -> Result<()>;

    /// For each `(gfn, bitmap)`: bit `i` set makes bytes `128·i .. 128·(i+1)` of the
    /// page writable although the page's access forbids writes.
    fn set_write_bitmaps(&self, pages: &[(Gfn, u32)]) -> Result<()>;
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
