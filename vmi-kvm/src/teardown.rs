//! Leaving the guest as it was found: on drop, [`crate::KvmiVm::close`], or after
//! UNHOOK. One [`Deadline`] covers the whole teardown: nothing waits for a reply
//! between the undo steps, so a stalled host costs the deadline once, not a request
//! timeout per step, and every step is on the wire before the first wait. The first
//! failure is reported.
//!
//! 1. One burst (one `write` for up to [`COMMAND_WINDOW`] commands): restore
//!    breakpoint bytes; lift page-access restrictions (`SET_PAGE_ACCESS` RWX, many
//!    entries per message); switch vCPUs back to view 0, hide views made
//!    guest-visible, disable #VE, undo gfn remaps; stop singlestep, remove CR
//!    intercepts, disable vCPU and VM events, remove MSR intercepts (in that order:
//!    the one list that can be long comes last).
//! 2. Without waiting: answer every event the tool holds or that is queued for it
//!    (its default reply) — after the burst on the wire, so the host has restored the
//!    bytes and intercepts before those vCPUs run on.
//! 3. End every pause ([`vmi_core::park::Parking::shutdown`]: queued register writes
//!    go out, held `PAUSE_VCPU` events are answered; its wait is bounded by the
//!    teardown deadline) — from now on the tool's guards are inert.
//! 4. Wait (until the deadline) for the replies of the burst; send the rest of a burst
//!    larger than one window (e.g. [`vmi_core::Monitor::AllMsrs`]' intercepts: on a host
//!    that stopped answering, these are not sent once the deadline has passed) and the
//!    destruction of views this session created (it needs every vCPU out of the view
//!    first, so it waits for step 1's replies).
//! 5. Answer any `PAUSE_VCPU` still in flight as it arrives (until the deadline).
//! 6. Close the socket.

use std::collections::BTreeMap;

use vmi_core::park::Parking;
use vmi_core::{Deadline, Result};

use crate::error::proto_at;
use crate::events::{control_singlestep, Command, COMMAND_WINDOW};
use crate::session::{Shared, PUMP_SLICE};
use kvmi_proto::{sys, Request};

fn keep_first(first: &mut Option<vmi_core::Error>, r: Result<()>) {
    if let Err(e) = r {
        first.get_or_insert(e);
    }
}

/// Every command that undoes what the session did on the host, in the order of
/// step 1, and the view destructions of step 4.
fn undo_commands(sh: &Shared, first: &mut Option<vmi_core::Error>) -> (Vec<Command>, Vec<Command>) {
    let mut cmds: Vec<Command> = Vec::new();

    // Breakpoint bytes (and the steps over them in progress, undone below).
    let (bytes, stepping) = {
        let mut b = sh.breakpoints();
        (
            std::mem::take(&mut b.bytes),
            std::mem::take(&mut b.step_over),
        )
    };
    for (gpa, (_, orig)) in bytes {
        match Request::write_physical(gpa, &[orig]) {
            Ok(r) => cmds.push(r),
            Err(e) => keep_first(
                first,
                Err(proto_at("KVMI_VM_WRITE_PHYSICAL", None, Some(gpa), e)),
            ),
        }
    }
    sh.page_cache.clear();

    let slat = std::mem::take(&mut *sh.slat());
    // Page access.
    let mut by_view: BTreeMap<u16, Vec<(u64, u8)>> = BTreeMap::new();
    for ((view, gfn), _) in slat.restricted {
        by_view
            .entry(view)
            .or_default()
            .push((gfn << 12, sys::KVMI_PAGE_ACCESS_RWX));
    }
    for (view, entries) in by_view {
        for chunk in entries.chunks(crate::slat::ENTRIES_PER_MESSAGE) {
            match Request::set_page_access(view, chunk) {
                Ok(r) => cmds.push(r),
                Err(e) => keep_first(first, Err(crate::error::proto("SET_PAGE_ACCESS", e))),
            }
        }
    }
    // Views, remaps. Views are destroyed later: vCPU commands run as vCPU jobs, VM
    // commands on the receive thread, so only waiting orders "every vCPU left the
    // view" before "destroy it".
    for v in slat.switched {
        cmds.push(Request::set_ept_view(v, 0));
    }
    for (v, view) in slat.visible {
        cmds.push(Request::control_ept_view(v, view, false));
    }
    for v in slat.ve_vcpus {
        cmds.push(Request::disable_ve(v));
    }
    for (view, gfn) in slat.remaps {
        cmds.push(Request::change_gfn(0, view, gfn, gfn));
    }
    let mut destroy = Vec::new();
    if sh.facts.command(sys::KVMI_DESTROY_EPT_VIEW) {
        destroy.extend(slat.views.into_iter().map(Request::destroy_ept_view));
    }

    // Singlestep, intercepts, events.
    let m = std::mem::take(&mut *sh.monitors());
    let mut singlestep = m.singlestep.clone();
    for (&v, s) in &stepping {
        // A step over one of our breakpoints armed singlestep and maybe enabled the
        // event on its own; the byte is restored above.
        if !s.tool_armed() {
            singlestep.insert(v);
        }
        let key = (v, sys::KVMI_EVENT_SINGLESTEP);
        if !s.tool_event() && !m.vcpu_events.contains_key(&key) {
            cmds.push(Request::control_events(
                v,
                sys::KVMI_EVENT_SINGLESTEP,
                false,
            ));
        }
    }
    for v in singlestep {
        cmds.push(control_singlestep(v, false));
    }
    for (v, cr) in m.crs {
        cmds.push(Request::control_cr(v, cr, false));
    }
    for ((v, e), _) in m.vcpu_events {
        cmds.push(Request::control_events(v, e, false));
    }
    for e in m.vm_events {
        cmds.push(Request::control_vm_events(e, false));
    }
    // Last: the one list that can be long (`Monitor::AllMsrs`: thousands per vCPU). On
    // a host that stops answering only the first window is sure to go out; with the
    // events off, an intercept left behind makes the vCPU exit but sends nothing.
    for (v, msr) in m.msrs {
        cmds.push(Request::control_msr(v, msr, false));
    }
    (cmds, destroy)
}

/// Answers (with their default replies) every event the tool holds or that waits for
/// it, and releases the pause bookkeeping; nothing waits.
fn answer_events(sh: &Shared) {
    let (queued, outstanding) = {
        let mut inbox = sh.inbox();
        (
            std::mem::take(&mut inbox.queue),
            std::mem::take(&mut inbox.outstanding),
        )
    };
    for h in sh.pauses().iter_mut() {
        h.busy = false;
    }
    // Dropping a kvmi-proto event sends its default reply.
    drop(queued);
    drop(outstanding);
}

pub(crate) fn run(sh: &Shared, parking: &Parking, deadline: Deadline) -> Result<()> {
    let mut first = None;
    sh.set_closing(deadline);
    let (mut cmds, destroy) = undo_commands(sh, &mut first);
    let connected = !sh.conn.is_closed();

    // 1. The first window of undo commands, in one write.
    let rest = cmds.split_off(cmds.len().min(COMMAND_WINDOW));
    let names: Vec<&'static str> = cmds.iter().map(Request::name).collect();
    let burst = if connected {
        match sh.conn.send_all(cmds) {
            Ok(p) => p,
            Err(e) => {
                keep_first(
                    &mut first,
                    Err(proto_at("teardown commands", None, None, e)),
                );
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };

    // 2. Events held by the tool or queued for it: answered now, behind the burst.
    answer_events(sh);

    // 3. Pauses end (their wait is bounded by the teardown deadline, see
    // `Shared::reply_timeout`).
    keep_first(&mut first, parking.shutdown());
    {
        let held: Vec<_> = {
            sh.pauses()
                .iter_mut()
                .filter_map(|h| {
                    h.pause_wanted = false;
                    h.pause_held.take()
                })
                .collect()
        };
        drop(held); // answered with CONTINUE
    }

    // 4. The burst's replies, the rest, the view destructions.
    for (name, p) in names.into_iter().zip(burst) {
        if let Err(e) = p.wait(deadline.remaining().unwrap_or(sh.reply_timeout())) {
            keep_first(&mut first, Err(proto_at(name, None, None, e)));
        }
    }
    if connected && !rest.is_empty() {
        keep_first(&mut first, sh.pipeline(rest, deadline));
    }
    if connected && !destroy.is_empty() {
        keep_first(&mut first, sh.pipeline(destroy, deadline));
    }

    // 5. Pause requests still in flight: their events are answered as they arrive.
    while !sh.conn.is_closed() && !deadline.expired() {
        let in_flight = sh.pauses().iter().any(|h| h.pause_requested > 0);
        if !in_flight {
            break;
        }
        if let Err(e) = sh.pump(deadline.remaining_capped(PUMP_SLICE)) {
            keep_first(&mut first, Err(e));
            break;
        }
        answer_events(sh);
    }
    // Events kvmi-proto received while the steps above waited for their own replies
    // (e.g. the SINGLESTEP of a step-over in progress): route them — pause events of
    // a pause no longer wanted are answered there — and answer the rest.
    while let Ok(Some(ev)) = sh.conn.try_next_event() {
        sh.file(ev);
        answer_events(sh);
    }

    // 6. Close.
    sh.conn.close();
    first.map_or(Ok(()), Err)
}
