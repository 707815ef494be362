//! Page access per gfn and per range (`SET_PAGE_ACCESS`, many entries per message),
//! recorded so that [`PageAccess::page_access`] answers without a round trip (kvmi-v7
//! has no `GET_PAGE_ACCESS`) and the teardown can lift every restriction.
//!
//! EPT views ([`SlatViews`], kvmi-v7 with EPTP switching): switch and query per vCPU
//! (`SET_EPT_VIEW`/`GET_EPT_VIEW`), create/destroy with the 2023 host commands where
//! allowed, else from the kernel's fixed views 1..`KVM_MAX_EPT_VIEWS`; change gfn per
//! view (`CHANGE_GFN`). All of it is recorded and undone at teardown (vCPUs back to
//! view 0, remaps restored, created views destroyed). Guest frame allocation
//! ([`GfnAllocation`]) uses `GET_NEXT_AVAILABLE_GFN`/`ALLOC_GFN`/`FREE_GFN`; frames
//! allocated stay with the guest at teardown (it may use them by then).
//!
//! Guest-visible views (`CONTROL_EPT_VIEW`, needs VMFUNC), #VE
//! ([`VirtualizationExceptions`]: `SET_VE_INFO`, `DISABLE_VE`, `SET_PAGE_SVE`) and SPP
//! ([`SubPageProtection`]: `CONTROL_SPP`, `SET_PAGE_WRITE_BITMAP`) where the host's
//! features and allow list say so (the session's host facts); otherwise
//! their `Backend` accessors are `None` and the methods fail with the reason.
//! Visibility and #VE are undone at teardown; suppress-#VE bits are left as set
//! (without #VE enabled on any vCPU they have no effect), and SPP cannot be turned off
//! again (the host refuses `enable = 0`, kvmi-protocol.md §3 id 24) — its bitmaps
//! only matter on write-restricted pages, and the teardown lifts every restriction.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use kvmi_proto::sys;
use vmi_core::{
    Access, Error, Gfn, GfnAllocation, Gpa, PageAccess, Result, SlatViews, SubPageProtection,
    VcpuId, View, VirtualizationExceptions,
};

use crate::error::{proto, proto_at};
use crate::session::KvmiVm;

/// Entries per `SET_PAGE_ACCESS` message: 8 + 16 × 511 bytes is the most a kvmi
/// message carries (`KVMI_MSG_SIZE`, 8184 bytes of payload).
pub const ENTRIES_PER_MESSAGE: usize = (kvmi_proto::sys::KVMI_MSG_SIZE - 8) / 16;

/// What the session changed in SLAT (owned by this module), recorded so that the
/// teardown undoes it.
#[derive(Default)]
pub(crate) struct SlatState {
    /// Restricted page access: (view, gfn) → allowed bits.
    pub(crate) restricted: BTreeMap<(u16, u64), u8>,
    /// EPT views this session created (or took from the fixed pool).
    pub(crate) views: BTreeSet<u16>,
    /// vCPUs this session switched to another view.
    pub(crate) switched: BTreeSet<u16>,
    /// (view, old gfn) remapped with CHANGE_GFN.
    pub(crate) remaps: BTreeSet<(u16, u64)>,
    /// (vCPU, view) pairs made visible to the guest (`CONTROL_EPT_VIEW`).
    pub(crate) visible: BTreeSet<(u16, u16)>,
    /// vCPUs with #VE enabled (`SET_VE_INFO`).
    pub(crate) ve_vcpus: BTreeSet<u16>,
}

fn bits(a: Access) -> u8 {
    let mut b = 0;
    if a.contains(Access::R) {
        b |= sys::KVMI_PAGE_ACCESS_R;
    }
    if a.contains(Access::W) {
        b |= sys::KVMI_PAGE_ACCESS_W;
    }
    if a.contains(Access::X) {
        b |= sys::KVMI_PAGE_ACCESS_X;
    }
    b
}

impl KvmiVm {
    fn check_view(&self, view: View) -> Result<()> {
        if view == View::DEFAULT {
            return Ok(());
        }
        self.require_views()?;
        if view.0 >= sys::KVM_MAX_EPT_VIEWS {
            return Err(Error::InvalidArgument {
                what: "view",
                reason: format!("{view:?}: the host has views 0..{}", sys::KVM_MAX_EPT_VIEWS)
                    .into(),
            });
        }
        Ok(())
    }

    fn require_views(&self) -> Result<()> {
        self.parking
            .capabilities()
            .require(vmi_core::Capability::Slat)
    }

    fn restrict(&self, view: View, gfns: Range<u64>, access: Access) -> Result<()> {
        self.check_view(view)?;
        self.parking
            .capabilities()
            .require(vmi_core::Capability::EventMemGfn)?;
        let a = bits(access);
        let gpas: Vec<(u64, u8)> = gfns
            .clone()
            .map(|g| g.checked_mul(4096).map(|gpa| (gpa, a)))
            .collect::<Option<_>>()
            .ok_or(Error::InvalidArgument {
                what: "gfn range",
                reason: "beyond the physical address space".into(),
            })?;
        let cmds: Vec<_> = gpas
            .chunks(ENTRIES_PER_MESSAGE)
            .map(|c| {
                kvmi_proto::Request::set_page_access(view.0, c)
                    .map_err(|e| proto("KVMI_VM_SET_PAGE_ACCESS", e))
            })
            .collect::<Result<_>>()?;
        let sh = &self.shared;
        // Recorded first: if the host applied part of it, the teardown still lifts it.
        {
            let mut st = sh.slat();
            for g in gfns {
                if a == sys::KVMI_PAGE_ACCESS_RWX {
                    st.restricted.remove(&(view.0, g));
                } else {
                    st.restricted.insert((view.0, g), a);
                }
            }
        }
        sh.pipeline(
            cmds,
            vmi_core::Deadline::after(sh.conn.config().request_timeout),
        )
    }
}

impl PageAccess for KvmiVm {
    fn set_page_access(&self, view: View, gfn: Gfn, access: Access) -> Result<()> {
        let g = gfn.raw();
        self.restrict(view, g..g.saturating_add(1), access)
    }

    fn set_page_access_range(&self, view: View, gfns: Range<Gfn>, access: Access) -> Result<()> {
        if gfns.start > gfns.end {
            return Err(Error::InvalidArgument {
                what: "gfn range",
                reason: format!("start {} is after end {}", gfns.start, gfns.end).into(),
            });
        }
        self.restrict(view, gfns.start.raw()..gfns.end.raw(), access)
    }

    fn page_access(&self, view: View, gfn: Gfn) -> Result<Access> {
        self.check_view(view)?;
        let b = self
            .shared
            .slat()
            .restricted
            .get(&(view.0, gfn.raw()))
            .copied()
            .unwrap_or(sys::KVMI_PAGE_ACCESS_RWX);
        Ok(Access::from_bits_truncate(b))
    }
}

impl SlatViews for KvmiVm {
    fn views_supported(&self) -> Result<bool> {
        Ok(self.require_views().is_ok())
    }

    fn create_view(&self) -> Result<View> {
        self.require_views()?;
        let sh = &self.shared;
        let view = if sh.facts.command(sys::KVMI_CREATE_EPT_VIEW) {
            sh.conn
                .create_ept_view()
                .map_err(|e| proto("KVMI_CREATE_EPT_VIEW", e))?
        } else {
            // The 2020 kvmi-v7 kernel has fixed views: hand out one not in use.
            let st = sh.slat();
            (1..sys::KVM_MAX_EPT_VIEWS)
                .find(|v| !st.views.contains(v))
                .ok_or_else(|| {
                    Error::unsupported("another EPT view", "all host views are in use")
                })?
        };
        self.shared.slat().views.insert(view);
        Ok(View(view))
    }

    fn destroy_view(&self, view: View) -> Result<()> {
        self.require_views()?;
        if view == View::DEFAULT {
            return Err(Error::InvalidArgument {
                what: "view",
                reason: "the default view cannot be destroyed".into(),
            });
        }
        let sh = &self.shared;
        if sh.facts.command(sys::KVMI_DESTROY_EPT_VIEW) {
            sh.conn
                .destroy_ept_view(view.0)
                .map_err(|e| proto("KVMI_DESTROY_EPT_VIEW", e))?;
        }
        let mut st = sh.slat();
        st.views.remove(&view.0);
        st.visible.retain(|(_, v)| *v != view.0);
        st.restricted.retain(|(v, _), _| *v != view.0);
        st.remaps.retain(|(v, _)| *v != view.0);
        Ok(())
    }

    fn switch_view(&self, vcpu: VcpuId, view: View) -> Result<()> {
        self.shared.check_vcpu(vcpu)?;
        self.require_views()?;
        self.check_view(view)?;
        self.shared
            .conn
            .set_ept_view(vcpu.0, view.0)
            .map_err(|e| proto_at("KVMI_VCPU_SET_EPT_VIEW", Some(vcpu), None, e))?;
        self.shared.slat().switched.insert(vcpu.0);
        Ok(())
    }

    fn current_view(&self, vcpu: VcpuId) -> Result<View> {
        self.shared.check_vcpu(vcpu)?;
        self.require_views()?;
        self.shared
            .conn
            .get_ept_view(vcpu.0)
            .map(View)
            .map_err(|e| proto_at("KVMI_VCPU_GET_EPT_VIEW", Some(vcpu), None, e))
    }

    fn change_gfn(&self, view: View, old: Gfn, new: Gfn) -> Result<()> {
        self.require_views()?;
        self.check_view(view)?;
        if new.raw() == sys::KVMI_CHANGE_GFN_RESERVED {
            return Err(Error::InvalidArgument {
                what: "gfn",
                reason: "all-ones is reserved by CHANGE_GFN".into(),
            });
        }
        self.shared
            .conn
            .change_gfn(0, view.0, old.raw(), new.raw())
            .map_err(|e| proto_at("KVMI_VCPU_CHANGE_GFN", None, Some(old.raw()), e))?;
        let mut st = self.shared.slat();
        if old == new {
            st.remaps.remove(&(view.0, old.raw()));
        } else {
            st.remaps.insert((view.0, old.raw()));
        }
        Ok(())
    }
    fn set_view_visible(&self, vcpu: VcpuId, view: View, visible: bool) -> Result<()> {
        self.shared.check_vcpu(vcpu)?;
        self.require_views()?;
        self.check_view(view)?;
        if !self.shared.facts.view_visibility() {
            return Err(Error::unsupported(
                "guest-visible EPT views",
                "the host lacks VMFUNC or disallows CONTROL_EPT_VIEW (kvmi-protocol.md §3 id 36)",
            ));
        }
        self.shared
            .conn
            .control_ept_view(vcpu.0, view.0, visible)
            .map_err(|e| proto_at("KVMI_VCPU_CONTROL_EPT_VIEW", Some(vcpu), None, e))?;
        let mut st = self.shared.slat();
        if visible {
            st.visible.insert((vcpu.0, view.0));
        } else {
            st.visible.remove(&(vcpu.0, view.0));
        }
        Ok(())
    }
}

const NO_VE: &str = "#VE needs kvmi-v7 with features.ve and SET_VE_INFO/DISABLE_VE/SET_PAGE_SVE \
                     allowed (kvmi-protocol.md §3 ids 28, 30, 33; kvmi-v6 reports no features, §7)";
const NO_SPP: &str = "SPP needs kvmi-v7 with features.spp and CONTROL_SPP/SET_PAGE_WRITE_BITMAP \
                      allowed (kvmi-protocol.md §3 ids 24, 26; kvmi-v6 reports no features, §7)";

impl VirtualizationExceptions for KvmiVm {
    fn enable_ve(&self, vcpu: VcpuId, info: Gpa, exit_too: bool) -> Result<()> {
        self.shared.check_vcpu(vcpu)?;
        if !self.shared.facts.ve() {
            return Err(Error::unsupported("#VE", NO_VE));
        }
        if info.0 % vmi_core::PAGE_SIZE != 0 {
            return Err(Error::InvalidArgument {
                what: "#VE information page",
                reason: format!("{info} is not 4 KiB-aligned").into(),
            });
        }
        // Recorded first: if the host applied it and the reply was lost, the teardown
        // still disables it.
        self.shared.slat().ve_vcpus.insert(vcpu.0);
        self.shared
            .conn
            .set_ve_info(vcpu.0, info.0, exit_too)
            .map_err(|e| proto_at("KVMI_VCPU_SET_VE_INFO", Some(vcpu), None, e))
    }

    fn disable_ve(&self, vcpu: VcpuId) -> Result<()> {
        self.shared.check_vcpu(vcpu)?;
        if !self.shared.facts.ve() {
            return Err(Error::unsupported("#VE", NO_VE));
        }
        self.shared
            .conn
            .disable_ve(vcpu.0)
            .map_err(|e| proto_at("KVMI_VCPU_DISABLE_VE", Some(vcpu), None, e))?;
        self.shared.slat().ve_vcpus.remove(&vcpu.0);
        Ok(())
    }

    fn set_suppress_ve(&self, view: View, gfn: Gfn, suppress: bool) -> Result<()> {
        if !self.shared.facts.ve() {
            return Err(Error::unsupported("#VE", NO_VE));
        }
        self.check_view(view)?;
        let gpa = gfn
            .raw()
            .checked_mul(vmi_core::PAGE_SIZE)
            .ok_or(Error::InvalidArgument {
                what: "gfn",
                reason: "beyond the physical address space".into(),
            })?;
        self.shared
            .conn
            .set_page_sve(view.0, gpa, suppress)
            .map_err(|e| proto_at("KVMI_VM_SET_PAGE_SVE", None, Some(gfn.raw()), e))
    }
}

impl SubPageProtection for KvmiVm {
    fn enable_spp(&self) -> Result<()> {
        if !self.shared.facts.spp() {
            return Err(Error::unsupported("SPP", NO_SPP));
        }
        self.shared
            .conn
            .control_spp(true)
            .map_err(|e| proto("KVMI_VM_CONTROL_SPP", e))
    }

    fn set_write_bitmaps(&self, pages: &[(Gfn, u32)]) -> Result<()> {
        if !self.shared.facts.spp() {
            return Err(Error::unsupported("SPP", NO_SPP));
        }
        let entries: Vec<(u64, u32)> = pages
            .iter()
            .map(|&(g, b)| g.raw().checked_mul(vmi_core::PAGE_SIZE).map(|gpa| (gpa, b)))
            .collect::<Option<_>>()
            .ok_or(Error::InvalidArgument {
                what: "gfn",
                reason: "beyond the physical address space".into(),
            })?;
        // Same message bound as SET_PAGE_ACCESS: 16-byte entries after an 8-byte head.
        for chunk in entries.chunks(ENTRIES_PER_MESSAGE) {
            self.shared
                .conn
                .set_page_write_bitmap(chunk)
                .map_err(|e| proto("KVMI_VM_SET_PAGE_WRITE_BITMAP", e))?;
        }
        Ok(())
    }
}

impl GfnAllocation for KvmiVm {
    fn next_available_gfn(&self) -> Result<Gfn> {
        self.parking
            .capabilities()
            .require(vmi_core::Capability::GfnAllocation)?;
        self.shared
            .conn
            .get_next_available_gfn()
            .map(Gfn)
            .map_err(|e| proto("KVMI_GET_NEXT_AVAILABLE_GFN", e))
    }

    fn alloc_gfn(&self, gfn: Gfn) -> Result<()> {
        self.parking
            .capabilities()
            .require(vmi_core::Capability::GfnAllocation)?;
        // The frame's backing changes: nothing cached may survive it.
        self.shared.page_cache.clear();
        self.shared
            .conn
            .alloc_gfn(0, gfn.raw())
            .map_err(|e| proto_at("KVMI_VCPU_ALLOC_GFN", None, Some(gfn.raw()), e))
    }

    fn free_gfn(&self, gfn: Gfn) -> Result<()> {
        self.parking
            .capabilities()
            .require(vmi_core::Capability::GfnAllocation)?;
        // The frame's backing changes: nothing cached may survive it.
        self.shared.page_cache.clear();
        self.shared
            .conn
            .free_gfn(0, gfn.raw())
            .map_err(|e| proto_at("KVMI_VCPU_FREE_GFN", None, Some(gfn.raw()), e))
    }
}
