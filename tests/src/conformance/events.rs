//! Events answered exactly once — dropped unanswered, or by a panicking handler — and a
//! session's teardown.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use vmi_core::event::{InterruptKind, VcpuSet};
use vmi_core::{Backend, Breakpoint, Capability, Event, Monitor, Response, VcpuId};

use super::{
    assert_no_event, breakpoints_of, events_of, next_hit, truth_bytes, vcpus_of, wait_progress,
    ConformanceTarget, Site, WAIT,
};

/// The message of the handler that panics on purpose.
const ON_PURPOSE: &str = "conformance: a handler panics on purpose";

/// Opens a session with a breakpoint at the hot site, or `None` where the backend has
/// no breakpoints (the report said so: checked by the breakpoint case).
/// Also returns the site's bytes before the breakpoint.
fn with_breakpoint<T: ConformanceTarget>(t: &T) -> Option<(T::Session, Site, Vec<u8>)> {
    let vm = t.open();
    if !vm
        .capabilities()
        .is_supported(Capability::SoftwareBreakpoints)
    {
        t.close(vm);
        return None;
    }
    let site = t.hot_site();
    let original = truth_bytes(t, site.gpa, 8);
    breakpoints_of(&vm)
        .set_breakpoint(Breakpoint::at(site.gva))
        .expect("set_breakpoint");
    Some((vm, site, original))
}

/// Checks the host's count of events and replies (where it keeps one): every event
/// delivered has exactly one reply, but for the `held` ones the caller holds unanswered.
fn assert_accounted<T: ConformanceTarget>(t: &T, held: u64, what: &str) {
    let Some(mut seen) = t.event_accounting() else {
        return;
    };
    // The last reply may still be on the wire.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while seen.0 != seen.1 + held && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
        seen = t.event_accounting().unwrap();
    }
    assert_eq!(
        seen.0,
        seen.1 + held,
        "{what}: events delivered vs replies (host's count), {held} held unanswered"
    );
}

/// Ends the breakpoint session: clears it (with a hit possibly pending) and checks the
/// site's bytes and that the guest runs on.
fn finish<T: ConformanceTarget>(t: &T, vm: T::Session, site: Site, original: &[u8]) {
    breakpoints_of(&vm)
        .clear_breakpoint(Breakpoint::at(site.gva))
        .unwrap();
    // A hit that raced the clear is answered by dropping it.
    let events = events_of(&vm);
    for _ in 0..3 {
        match events.wait_event(super::QUIET).unwrap() {
            Some(p) => drop(p),
            None => break,
        }
    }
    assert_no_event(events, "after clearing the breakpoint");
    assert_eq!(truth_bytes(t, site.gpa, original.len()), original);
    let from = t.progress();
    wait_progress(t, from, "after clearing the breakpoint");
    assert_accounted(t, 0, "the session");
    t.close(vm);
}

/// A hit dropped without an answer is answered with the default (continue): the guest
/// runs on to the next hit of the same site, and the host saw one reply per event.
pub fn dropped_event_is_answered_once<T: ConformanceTarget>(t: &T) {
    let Some((vm, site, original)) = with_breakpoint(t) else {
        return;
    };
    let events = events_of(&vm);
    for _ in 0..3 {
        let p = next_hit(events, site);
        drop(p);
    }
    // The guest ran between the hits (it is not stuck at the first).
    let p = next_hit(events, site);
    assert_accounted(t, 1, "three dropped hits, one held");
    p.reply(Response::continue_()).unwrap();
    finish(t, vm, site, &original);
}

/// A handler that panics inside `dispatch` still answers its event (while unwinding),
/// the panic reaches the caller, and the next hit arrives.
pub fn panicking_handler_answers_once<T: ConformanceTarget>(t: &T) {
    let Some((vm, site, original)) = with_breakpoint(t) else {
        return;
    };
    let events = events_of(&vm);
    let mut seen: Option<Event> = None;
    // Keep the intended panic off stderr (cases run one at a time, so the hook swap
    // hides no other test's panic); any other panic still prints.
    let hook = std::sync::Arc::new(std::panic::take_hook());
    let previous = std::sync::Arc::clone(&hook);
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        let intended = message.is_some_and(|m| m.contains(ON_PURPOSE));
        if !intended {
            previous(info);
        }
    }));
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        events.dispatch(WAIT, &mut |ev: &Event| -> Response {
            seen = Some(ev.clone());
            panic!("{}", ON_PURPOSE);
        })
    }));
    drop(std::panic::take_hook());
    if let Ok(hook) = std::sync::Arc::try_unwrap(hook) {
        std::panic::set_hook(hook);
    }
    assert!(outcome.is_err(), "the handler's panic reaches the caller");
    let ev = seen.expect("the handler ran on a hit");
    assert!(
        matches!(ev.kind, vmi_core::EventKind::Breakpoint { gla, .. } if gla == site.gva),
        "{:?}",
        ev.kind
    );
    // dispatch with a handler that answers: the guest went on to the next hit.
    let mut hits = 0;
    for _ in 0..2 {
        let handled = events
            .dispatch(WAIT, &mut |ev: &Event| {
                assert!(matches!(ev.kind, vmi_core::EventKind::Breakpoint { .. }));
                hits += 1;
                Response::continue_()
            })
            .expect("dispatch");
        assert!(handled, "a hit after the panicking handler");
    }
    assert_eq!(hits, 2);
    let p = next_hit(events, site);
    assert_accounted(t, 1, "a panicking handler, two answers, one hit held");
    p.reply(Response::continue_()).unwrap();
    finish(t, vm, site, &original);
}

/// A session dropped with a breakpoint set, single-stepping on (where supported), a
/// pause held and a hit unanswered leaves the guest running, its code bytes intact, and
/// a fresh session finds nothing installed: not paused, no breakpoints, no events.
pub fn teardown_leaves_the_guest_running_and_clean<T: ConformanceTarget>(t: &T) {
    let site = t.hot_site();
    let original = truth_bytes(t, site.gpa, 8);
    {
        let vm = t.open();
        let caps = vm.capabilities();
        let events = vm.events();
        let mut pending = None;
        if caps.is_supported(Capability::SoftwareBreakpoints) {
            let events = events.expect("events with breakpoints");
            breakpoints_of(&vm)
                .set_breakpoint(Breakpoint::at(site.gva))
                .unwrap();
            pending = Some(next_hit(events, site));
        }
        if caps.is_supported(Capability::EventSinglestep) {
            events
                .expect("events with single steps")
                .enable(&Monitor::Singlestep(VcpuSet::single(VcpuId(0))))
                .expect("enable singlestep");
        }
        // A pause whose guard is leaked: only the session's teardown can end it.
        std::mem::forget(vcpus_of(&vm).pause().expect("pause"));
        // The session goes first, the unanswered hit after it.
        t.close(vm);
        drop(pending);
    }
    // Ground truth first: the guest runs and its code is intact.
    let from = t.progress();
    wait_progress(t, from, "after the session was dropped");
    assert_eq!(
        truth_bytes(t, site.gpa, 8),
        original,
        "the site's bytes after teardown"
    );
    assert_accounted(t, 0, "after teardown");

    // A fresh session sees nothing installed.
    let vm = t.open();
    let vcpus = vcpus_of(&vm);
    assert!(!vcpus.is_paused(), "a fresh session is not paused");
    if let Some(bps) = vm.breakpoints() {
        assert!(bps.active_breakpoints().is_empty());
    }
    if let Some(events) = vm.events() {
        if vm
            .capabilities()
            .is_supported(Capability::EventInterruptInt3)
        {
            events
                .enable(&Monitor::Interrupt(InterruptKind::Int3))
                .unwrap();
        }
        assert_no_event(events, "a fresh session after teardown");
        assert_eq!(events.pending_events().unwrap(), 0);
    }
    let from = t.progress();
    wait_progress(t, from, "with a fresh session");
    t.close(vm);
    let from = t.progress();
    wait_progress(t, from, "after the fresh session");
}
