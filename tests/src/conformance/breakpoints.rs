//! Breakpoints and single steps.

use vmi_core::event::VcpuSet;
use vmi_core::{Backend, Breakpoint, Capability, Error, EventKind, Monitor, Response, VcpuId};

use super::{
    assert_no_event, breakpoints_of, events_of, next_event, next_hit, truth_bytes, wait_progress,
    ConformanceTarget,
};

/// A breakpoint at the hot site is listed, hit with exact addresses, hit again after a
/// continue, removed while its hit waits for the answer; then the guest's bytes at the
/// site are what they were, no hit follows and the guest runs on. Without the row, the
/// backend has no breakpoints to offer.
pub fn hit_and_leave_nothing_behind<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    assert_eq!(
        vm.breakpoints().is_some(),
        caps.is_supported(Capability::SoftwareBreakpoints),
        "breakpoints exactly when the report says they work: {caps}"
    );
    if vm.breakpoints().is_none() {
        t.close(vm);
        return;
    }
    let (bps, events) = (breakpoints_of(&vm), events_of(&vm));
    let site = t.hot_site();
    let original = truth_bytes(t, site.gpa, 8);
    assert_ne!(original[0], 0xcc, "the site holds code, not an INT3");
    let bp = Breakpoint::at(site.gva);
    bps.set_breakpoint(bp).expect("set_breakpoint");
    bps.set_breakpoint(bp).expect("setting it again");
    assert_eq!(bps.active_breakpoints(), vec![bp], "listed once");

    let first = next_hit(events, site);
    let vcpu = first.vcpu;
    first.reply(Response::continue_()).expect("continue");
    // Hit again: continuing did not remove it.
    let second = next_hit(events, site);
    // Removed while the hit waits for its answer.
    bps.clear_breakpoint(bp).expect("clear_breakpoint");
    bps.clear_breakpoint(bp).expect("clearing it again");
    assert!(bps.active_breakpoints().is_empty());
    second.reply(Response::continue_()).expect("continue");
    assert_eq!(truth_bytes(t, site.gpa, 8), original, "the site's bytes");
    assert_no_event(events, "no hit after the breakpoint was removed");
    let from = t.progress();
    wait_progress(t, from, "after the breakpoint was removed");
    let _ = vcpu;

    // A physical breakpoint at the same byte hits through the guest's mapping.
    let phys = Breakpoint::physical(site.gpa);
    match bps.set_breakpoint(phys) {
        Ok(()) => {
            let p = next_hit(events, site);
            bps.clear_breakpoint(phys).unwrap();
            p.reply(Response::continue_()).unwrap();
            assert_eq!(truth_bytes(t, site.gpa, 8), original);
            assert_no_event(events, "no hit after the physical breakpoint");
        }
        // A backend that only breaks on linear addresses says so with a typed error.
        Err(Error::Unsupported { .. } | Error::InvalidArgument { .. }) => {}
        Err(e) => panic!("physical breakpoint: {e}"),
    }
    t.close(vm);
}

/// Single-stepping vCPU 0: steps arrive on it with RIP advancing and equal to the
/// event's address; disabling resumes the guest. Without the row, enabling is refused
/// with [`Error::Unsupported`] before any request reaches the guest.
pub fn singlestep_steps_or_is_refused<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    let Some(events) = vm.events() else {
        assert!(!caps.is_supported(Capability::EventSinglestep), "{caps}");
        t.close(vm);
        return;
    };
    let monitor = Monitor::Singlestep(VcpuSet::single(VcpuId(0)));
    if !caps.is_supported(Capability::EventSinglestep) {
        let before = t.requests(&vm);
        match events.enable(&monitor) {
            Err(Error::Unsupported { .. }) => {}
            other => panic!("singlestep with the row unsupported: {other:?}"),
        }
        assert_eq!(t.requests(&vm), before, "the refused enable sent requests");
        assert_no_event(events, "no step after the refusal");
        t.close(vm);
        return;
    }
    events.enable(&monitor).expect("enable singlestep");
    let mut rips = Vec::new();
    for i in 0..6 {
        let p = next_event(events, "a single step");
        let EventKind::Singlestep { gla, failed, .. } = p.kind else {
            panic!("step {i}: {:?}", p.kind)
        };
        assert_eq!(p.vcpu, VcpuId(0), "steps only on the vCPU asked for");
        assert!(!failed, "step {i} failed");
        if let Some(g) = p.registers.gprs {
            assert_eq!(g.rip, gla.0, "RIP is the step's address");
        }
        rips.push(gla.0);
        p.reply(Response::continue_()).unwrap();
    }
    assert!(
        rips.windows(2).any(|w| w[0] != w[1]),
        "RIP advances over the steps: {rips:x?}"
    );
    events.disable(&monitor).expect("disable singlestep");
    // A step may have been on its way while disabling: answer it, then nothing more.
    for _ in 0..3 {
        let Some(p) = events.wait_event(super::QUIET).unwrap() else {
            break;
        };
        assert!(
            matches!(p.kind, EventKind::Singlestep { .. }),
            "{:?}",
            p.kind
        );
        drop(p);
    }
    assert_no_event(events, "no step after disabling");
    let from = t.progress();
    wait_progress(t, from, "after single-stepping");
    t.close(vm);
}
