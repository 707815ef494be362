//! Leaving the guest as it was found: on drop, [`crate::KvmiVm::close`], or after
//! UNHOOK. Every step is attempted whatever the earlier ones did, each under the one
//! teardown [`Deadline`], and the first failure is reported:
//!
//! 1. restore breakpoint bytes;
//! 2. lift page-access restrictions (`SET_PAGE_ACCESS` RWX, batched per view);
//! 3. switch vCPUs back to view 0, hide views made guest-visible, disable #VE,
//!    undo gfn remaps, destroy created views, stop
//!    singlestep, remove CR/MSR intercepts, disable vCPU and VM events (in that
//!    order, pipelined);
//! 4. end every pause ([`vmi_core::park::Parking::shutdown`]: queued register writes
//!    go out, held `PAUSE_VCPU` events are answered) — from now on the tool's guards
//!    are inert, so the guest paused while 1–3 ran;
//! 5. answer every event still queued or handed out (its default reply), and any
//!    `PAUSE_VCPU` still in flight as it arrives;
//! 6. close the socket.

use std::collections::BTreeMap;

use vmi_core::park::Parking;
use vmi_core::{Deadline, Result};

use crate::events::{control_singlestep, Command};
use crate::session::{Shared, PUMP_SLICE};
use kvmi_proto::{sys, Request};

fn keep_first(first: &mut Option<vmi_core::Error>, r: Result<()>) {
    if let Err(e) = r {
        first.get_or_insert(e);
    }
}

pub(crate) fn run(sh: &Shared, parking: &Parking, deadline: Deadline) -> Result<()> {
    let mut first = None;

    // 1. Breakpoint bytes.
    let bps: Vec<(u64, u8)> = {
        let mut st = sh.lock();
        std::mem::take(&mut st.breakpoints)
            .into_iter()
            .map(|(gpa, (_, orig))| (gpa, orig))
            .collect()
    };
    for (gpa, orig) in bps {
        keep_first(&mut first, sh.write_physical(gpa, &[orig]));
    }

    // 2. Page access.
    let restricted = std::mem::take(&mut sh.lock().restricted);
    let mut by_view: BTreeMap<u16, Vec<(u64, u8)>> = BTreeMap::new();
    for ((view, gfn), _) in restricted {
        by_view.entry(view).or_default().push((
            gfn << 12,
            sys::KVMI_PAGE_ACCESS_R | sys::KVMI_PAGE_ACCESS_W | sys::KVMI_PAGE_ACCESS_X,
        ));
    }
    let mut cmds: Vec<Command> = Vec::new();
    for (view, entries) in by_view {
        for chunk in entries.chunks(crate::slat::ENTRIES_PER_MESSAGE) {
            match Request::set_page_access(view, chunk) {
                Ok(r) => cmds.push(r),
                Err(e) => keep_first(&mut first, Err(crate::error::proto("SET_PAGE_ACCESS", e))),
            }
        }
    }

    // 3. Views, remaps, singlestep, intercepts, events. Views are destroyed in a
    // second burst: vCPU commands run as vCPU jobs, VM commands on the receive thread,
    // so only waiting orders "every vCPU left the view" before "destroy it".
    let mut destroy: Vec<Command> = Vec::new();
    {
        let mut st = sh.lock();
        for v in std::mem::take(&mut st.switched) {
            cmds.push(Request::set_ept_view(v, 0));
        }
        for (v, view) in std::mem::take(&mut st.visible) {
            cmds.push(Request::control_ept_view(v, view, false));
        }
        for v in std::mem::take(&mut st.ve_vcpus) {
            cmds.push(Request::disable_ve(v));
        }
        for (view, gfn) in std::mem::take(&mut st.remaps) {
            cmds.push(Request::change_gfn(0, view, gfn, gfn));
        }
        for view in std::mem::take(&mut st.views) {
            if sh.facts.command(sys::KVMI_DESTROY_EPT_VIEW) {
                destroy.push(Request::destroy_ept_view(view));
            }
        }
        let tool_events = st.monitors.vcpu_events.clone();
        for (v, h) in st.vcpus.iter_mut().enumerate() {
            let v = v as u16;
            // A step over one of our breakpoints armed singlestep and maybe enabled
            // the event on its own; the byte is restored above.
            let stepping = h.step_over.take();
            if h.singlestep || stepping.is_some_and(|s| !s.tool_armed()) {
                cmds.push(control_singlestep(v, false));
                h.singlestep = false;
            }
            let key = (v, sys::KVMI_EVENT_SINGLESTEP);
            if stepping.is_some_and(|s| !s.tool_event()) && !tool_events.contains_key(&key) {
                cmds.push(crate::events::command_events(
                    v,
                    sys::KVMI_EVENT_SINGLESTEP,
                    false,
                ));
            }
        }
        let m = std::mem::take(&mut st.monitors);
        for (v, cr) in m.crs {
            cmds.push(Request::control_cr(v, cr, false));
        }
        for (v, msr) in m.msrs {
            cmds.push(Request::control_msr(v, msr, false));
        }
        for ((v, e), _) in m.vcpu_events {
            cmds.push(crate::events::command_events(v, e, false));
        }
        for e in m.vm_events {
            cmds.push(Request::control_vm_events(e, false));
        }
    }
    if !sh.conn.is_closed() {
        keep_first(&mut first, sh.pipeline(cmds, deadline));
        keep_first(&mut first, sh.pipeline(destroy, deadline));
    }

    // 4. Pauses end only now: no vCPU ran while bytes and intercepts were restored.
    keep_first(&mut first, parking.shutdown());

    // 5. Events: dropping a kvmi-proto event sends its default reply.
    let (queued, outstanding) = {
        let mut st = sh.lock();
        for h in &mut st.vcpus {
            h.pause_wanted = false;
            h.busy = false;
        }
        let held: Vec<_> = st
            .vcpus
            .iter_mut()
            .filter_map(|h| h.pause_held.take())
            .collect();
        drop(held);
        (
            std::mem::take(&mut st.queue),
            std::mem::take(&mut st.outstanding),
        )
    };
    drop(queued);
    drop(outstanding);
    // Pause requests still in flight: their events are answered as they arrive.
    while !sh.conn.is_closed() && !deadline.expired() {
        let in_flight = sh.lock().vcpus.iter().any(|h| h.pause_requested > 0);
        if !in_flight {
            break;
        }
        if let Err(e) = sh.pump(deadline.remaining_capped(PUMP_SLICE)) {
            keep_first(&mut first, Err(e));
            break;
        }
        let late = std::mem::take(&mut sh.lock().queue);
        drop(late);
    }

    // Events kvmi-proto received while the steps above waited for their own replies
    // (e.g. the SINGLESTEP of a step-over in progress): route them — pause events
    // of a pause no longer wanted are answered there — and answer the rest with
    // their defaults (dropping a kvmi-proto event replies).
    while let Ok(Some(ev)) = sh.conn.try_next_event() {
        sh.route(ev);
        let late = std::mem::take(&mut sh.lock().queue);
        drop(late);
    }

    // 6. Close.
    sh.conn.close();
    first.map_or(Ok(()), Err)
}
