//! Fault tests over a real socket with kvmi-sim (issue 15): a host that stalls during
//! the teardown, an UNHOOK storm while a pause waits, impossible vCPU counts, a peer
//! that never finishes its setup, a refused peer uid, MSRs the host refuses.

mod common;

use std::thread;
use std::time::{Duration, Instant};

use common::*;
use kvmi_proto::sys;
use kvmi_sim::SimEvent;
use vmi_core::event::{RegisterAccess, RegisterFilter};
use vmi_core::{
    Access, Breakpoint, Breakpoints, EventControl, Gfn, Gpa, Monitor, PageAccess, VcpuControl, View,
};
use vmi_kvm::Config;

/// Dropping the session while the host's introspection thread hangs: the teardown
/// keeps its one bound (the request timeout, 1 s here) although three breakpoints,
/// restricted pages, CR3 intercepts and a held event need undoing — every undo step
/// goes out before the first wait. Once the host runs again it finds everything on
/// the wire: no byte, restriction, intercept or event left, the held event answered.
#[test]
fn teardown_keeps_its_bound_on_a_stalled_host_and_leaves_it_clean() {
    let bound = Duration::from_secs(1);
    let tool = Config {
        request_timeout: bound,
        ..config()
    };
    let (vm, sim) = setup_with(tool, kvmi_sim::Abi::V7, |c| c.vcpus = 2);
    let bps = [0x2000u64, 0x3000, 0x4000];
    for (i, &gpa) in bps.iter().enumerate() {
        sim.vm().memory.write(gpa, &[0x90 + i as u8]);
        vm.set_breakpoint(Breakpoint::physical(Gpa(gpa))).unwrap();
        assert_eq!(sim.vm().memory.read(gpa, 1).unwrap(), [0xcc]);
    }
    for gfn in 0x10..0x14 {
        vm.set_page_access(View::DEFAULT, Gfn(gfn), Access::R)
            .unwrap();
    }
    vm.enable(&Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    })
    .unwrap();
    assert!(!sim.vm().page_access.is_empty());
    assert!(sim.vm().vcpus.iter().all(|v| v.cr_intercepts.contains(&3)));

    // An event the tool holds while it drops the session.
    let cr3 = sim.vm().vcpus[1].cr(3);
    let handle = sim
        .trigger(
            1,
            SimEvent::Cr {
                cr: 3,
                old: cr3,
                new: cr3 + 0x1000,
            },
        )
        .unwrap();
    let held = vm.wait_event(T).unwrap().expect("the CR3 event");

    sim.set_stalled(true);
    let start = Instant::now();
    drop(vm);
    let took = start.elapsed();
    drop(held); // inert after the teardown: the teardown answered it
    assert!(
        took < bound + Duration::from_millis(700),
        "teardown took {took:?} with a {bound:?} bound"
    );

    sim.set_stalled(false);
    let reply = handle.wait_reply(T).expect("the held event was answered");
    assert_eq!(reply.vcpu, 1);
    sim.wait_closed(T).unwrap();
    let g = sim.vm();
    for (i, &gpa) in bps.iter().enumerate() {
        assert_eq!(
            g.memory.read(gpa, 1).unwrap(),
            [0x90 + i as u8],
            "breakpoint byte at {gpa:#x} restored"
        );
    }
    assert!(
        g.page_access.is_empty(),
        "restricted pages left: {:?}",
        g.page_access
    );
    for (i, v) in g.vcpus.iter().enumerate() {
        assert!(v.cr_intercepts.is_empty(), "vCPU {i} CR intercepts left");
        assert!(v.events.is_empty(), "vCPU {i} events left: {:?}", v.events);
    }
    assert!(g.vm_events.is_empty(), "VM events left: {:?}", g.vm_events);
}

/// A host flooding UNHOOK while a pause waits for its `PAUSE_VCPU` event (held back by
/// the simulator): the waiting pause reads and routes every event, and UNHOOK is
/// announced once — the session's queue stays bounded however many arrive (before:
/// one queued entry per UNHOOK, 100 000 after a second).
#[test]
fn unhook_storm_while_a_pause_waits_keeps_the_queue_bounded() {
    let tool = Config {
        request_timeout: Duration::from_millis(1500),
        ..config()
    };
    let (vm, sim) = setup_with(tool, kvmi_sim::Abi::V7, |c| c.vcpus = 1);
    sim.set_hold_pauses(true);
    let mut sent = 0u64;
    let mut most_queued = 0usize;
    thread::scope(|s| {
        let pause = s.spawn(|| vm.pause().map(drop));
        let end = Instant::now() + Duration::from_millis(1000);
        while Instant::now() < end {
            for _ in 0..200 {
                if sim.trigger(0, SimEvent::Unhook).is_ok() {
                    sent += 1;
                }
            }
            most_queued = most_queued.max(vm.pending_events().unwrap());
        }
        let r = pause.join().unwrap();
        assert!(r.is_err(), "no PAUSE_VCPU came: the pause times out");
    });
    most_queued = most_queued.max(vm.pending_events().unwrap());
    assert!(sent > 5_000, "only {sent} UNHOOK events sent");
    // kvmi-proto's queue (events read but not yet routed) is bounded by
    // `Config::event_queue` (a host overflowing it is disconnected); the session's own
    // queue holds UNHOOK once.
    let bound = config().event_queue + 1;
    assert!(
        most_queued <= bound,
        "{most_queued} events queued after {sent} UNHOOKs (bound {bound})"
    );
    // The tool still learns of it, once.
    let ev = vm.wait_event(T).unwrap().expect("UNHOOK");
    assert_eq!(ev.kind, vmi_core::EventKind::Unhook);
    assert!(vm.unhook_requested());
    drop(ev);
    sim.set_hold_pauses(false);
}

/// A host reporting more vCPUs than a 16-bit vCPU id addresses is refused at connect
/// with a typed error (before: 65 536 wrapped to 0 and a pause paused nothing).
#[test]
fn impossible_vcpu_counts_are_a_typed_error_at_connect() {
    for count in [65_536u32, 70_000, u32::MAX, 0] {
        let path = socket_path("vcpus");
        let listener = vmi_kvm::KvmiListener::bind(&path, config()).unwrap();
        let p = path.clone();
        let sim = thread::spawn(move || {
            let mut sc = kvmi_sim::SimConfig {
                secret: Some(SECRET.to_vec()),
                ..Default::default()
            };
            sc.faults.reported_vcpu_count = Some(count);
            kvmi_sim::Simulator::connect(&p, sc)
        });
        let err = listener
            .accept(T)
            .expect_err("an impossible count is refused");
        match &err {
            vmi_core::Error::Malformed { detail, .. } => {
                assert!(detail.contains(&count.to_string()), "{err}")
            }
            other => panic!("{count} vCPUs: {other:?}"),
        }
        drop(sim.join().unwrap());
    }
    // The largest count that fits is taken (the simulator models 2 vCPUs; nothing
    // here touches the others).
    let (vm, _sim) = setup(kvmi_sim::Abi::V7, |c| {
        c.faults.reported_vcpu_count = Some(u32::from(u16::MAX))
    });
    assert_eq!(vm.vcpu_count().unwrap(), 65_535);
}

/// `KvmiListener::accept`: a VM whose host never answers `VM_GET_INFO` (it stalls on
/// it) does not hold up the next VM — the setup runs in the listener's handshake
/// threads, and `accept` returns the second VM well before the first one's request
/// timeout (before: `accept` waited that timeout, then failed).
#[test]
fn a_vm_stuck_in_setup_delays_no_other_vm() {
    let timeout = Duration::from_secs(4);
    let tool = Config {
        request_timeout: timeout,
        ..config()
    };
    let path = socket_path("stuck");
    let listener = vmi_kvm::KvmiListener::bind(&path, tool).unwrap();
    let path = path.clone();
    let sim = move |name: &str, stall: bool| {
        let mut sc = kvmi_sim::SimConfig {
            secret: Some(SECRET.to_vec()),
            name: name.into(),
            ..Default::default()
        };
        if stall {
            sc.faults.stall_on_command = Some(sys::KVMI_VM_GET_INFO);
        }
        kvmi_sim::Simulator::connect(&path, sc).unwrap()
    };
    let start = Instant::now();
    let stuck = sim("stuck", true);
    // The stuck VM's setup is under way (GET_VERSION answered, VM_GET_INFO next) before
    // the good one connects.
    assert!(eventually(|| stuck
        .stats()
        .commands
        .contains_key(&sys::KVMI_GET_VERSION)));
    let good = thread::spawn({
        let sim = sim.clone();
        move || sim("good", false)
    });
    let vm = listener.accept(T).expect("the good VM");
    let took = start.elapsed();
    assert_eq!(vm.vm_name(), "good");
    assert!(
        took < timeout,
        "accept took {took:?}: it waited for the stuck VM"
    );
    drop(good.join().unwrap());
    drop(stuck);
}

/// A peer refused for its uid is reported as such, not as a secret mismatch.
#[test]
fn a_refused_peer_uid_is_reported_as_such() {
    let path = socket_path("uid");
    let tool = Config {
        // Not us (root or the test's uid): the simulator's connection is refused.
        allowed_peer_uids: kvmi_proto::PeerUids::Only(vec![4_000_000_000]),
        ..config()
    };
    let listener = vmi_kvm::KvmiListener::bind(&path, tool).unwrap();
    let p = path.clone();
    let sim = thread::spawn(move || {
        kvmi_sim::Simulator::connect(
            &p,
            kvmi_sim::SimConfig {
                secret: Some(SECRET.to_vec()),
                handshake_timeout: Duration::from_secs(2),
                ..Default::default()
            },
        )
    });
    let err = listener
        .accept(Duration::from_secs(2))
        .expect_err("the peer is refused");
    let msg = err.to_string();
    let uid = own_uid();
    assert!(
        msg.contains("uid") && msg.contains(&uid.to_string()),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "blames the secret: {msg}");
    let _ = sim.join().unwrap();
}

/// Our effective uid: the owner of `/proc/self`.
fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// MSRs the host refuses are remembered for the session: the first snapshot asking
/// for one costs the failed `GET_REGISTERS` plus one burst (the snapshot without MSRs
/// and each MSR alone), every later one is a single `GET_REGISTERS` (before: the
/// failing request and the burst again on every call).
#[test]
fn refused_msrs_are_asked_once_per_session() {
    use vmi_core::{ReadRegisters, RegisterGroups, VcpuId};
    let (vm, sim) = v7();
    let (pat, lstar, bogus) = (0x277u32, 0xc000_0082u32, 0x4b56_4d00u32);
    let msrs = [pat, lstar, bogus];
    let groups = RegisterGroups::GPRS | RegisterGroups::MSRS;
    let get = || commands(&sim, sys::KVMI_VCPU_GET_REGISTERS);
    let want_pat = sim.vm().vcpus[1].msrs[&pat];
    let want_lstar = sim.vm().vcpus[1].msrs[&lstar];

    let before = get();
    let r = vm.registers(VcpuId(1), groups, &msrs).unwrap();
    assert_eq!(
        get() - before,
        1 + 1 + 3,
        "first call: failure, then one burst"
    );
    assert_eq!(r.msrs.get(pat), Some(want_pat));
    assert_eq!(r.msrs.get(lstar), Some(want_lstar));
    assert_eq!(r.msrs.get(bogus), None, "refused MSR left out");

    for vcpu in [1u16, 0, 1] {
        let before = get();
        let r = vm.registers(VcpuId(vcpu), groups, &msrs).unwrap();
        assert_eq!(get() - before, 1, "one GET_REGISTERS per snapshot");
        assert_eq!(
            r.msrs.get(pat),
            Some(sim.vm().vcpus[usize::from(vcpu)].msrs[&pat])
        );
        assert_eq!(r.msrs.get(bogus), None);
        assert!(r.gprs.is_some());
    }
}
