//! Page access per gfn and per range (`SET_PAGE_ACCESS`, many entries per message),
//! recorded so that [`PageAccess::page_access`] answers without a round trip (kvmi-v7
//! has no `GET_PAGE_ACCESS`) and the teardown can lift every restriction.
//!
//! EPT views, #VE and SPP are not implemented yet: the capability table says so
//! (`Slat`, `ResponseSlatId`), and [`vmi_core::Backend::slat_views`] is `None`.

use std::ops::Range;

use kvmi_sys as sys;
use vmi_core::{Access, Error, Gfn, PageAccess, Result, View};

use crate::error::proto;
use crate::session::KvmiVm;

/// Entries per `SET_PAGE_ACCESS` message: 8 + 16 × 511 bytes is the most a kvmi
/// message carries (`KVMI_MSG_SIZE`, 8184 bytes of payload).
pub const ENTRIES_PER_MESSAGE: usize = (kvmi_sys::KVMI_MSG_SIZE - 8) / 16;

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
        if view != View::DEFAULT {
            return Err(Error::unsupported(
                "page access in a non-default view",
                "EPT views are not implemented in vmi-kvm yet",
            ));
        }
        Ok(())
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
                kvmi_proto::commands::page_access_payload(view.0, c)
                    .map(|p| (sys::KVMI_VM_SET_PAGE_ACCESS, p))
                    .map_err(|e| proto("KVMI_VM_SET_PAGE_ACCESS", e))
            })
            .collect::<Result<_>>()?;
        let sh = &self.shared;
        // Recorded first: if the host applied part of it, the teardown still lifts it.
        {
            let mut st = sh.lock();
            for g in gfns {
                if a == sys::KVMI_PAGE_ACCESS_RWX {
                    st.restricted.remove(&(view.0, g));
                } else {
                    st.restricted.insert((view.0, g), a);
                }
            }
        }
        sh.pipeline(
            &cmds,
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
            .lock()
            .restricted
            .get(&(view.0, gfn.raw()))
            .copied()
            .unwrap_or(sys::KVMI_PAGE_ACCESS_RWX);
        Ok(Access::from_bits_truncate(b))
    }
}
