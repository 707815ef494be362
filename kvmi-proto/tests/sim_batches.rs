//! Batches and event guards between kvmi-proto and the independent KVMi host
//! simulator (`kvmi-sim`) over a real UNIX socket: which command of a batch failed
//! (v7 with and without `CMD_ERROR`, v6), dropped and panicking handlers' events
//! answered with their default reply, replies deferred to other threads.

use kvmi_proto::{Abi, Action, Batch, BatchFailure, EventKind, ProtoError};
use kvmi_sim::SimEvent;
use kvmi_sys as sys;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

mod sim;
use sim::{setup, setup_probe, T};

fn batch_failures(r: Result<(), ProtoError>) -> Vec<BatchFailure> {
    match r {
        Err(ProtoError::BatchFailed(f)) => f,
        other => panic!("expected BatchFailed, got {other:?}"),
    }
}

#[test]
fn v7_batch_reports_the_failed_command() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |_| {});
    // A clean batch succeeds (and asks for CMD_ERROR reports).
    let mut b = Batch::new(&c);
    assert!(b.reports_errors());
    b.set_page_access(0, &[(0x9000, 0)]).unwrap();
    b.set_page_access(0, &[(0xc000, sys::KVMI_PAGE_ACCESS_R)])
        .unwrap();
    b.commit(T).unwrap();
    assert!(sim
        .vm()
        .access_restricted(0, 0x9000, sys::KVMI_PAGE_ACCESS_R));
    assert!(sim
        .vm()
        .access_restricted(0, 0xc000, sys::KVMI_PAGE_ACCESS_W));

    // One command on a vCPU that does not exist, between two good ones.
    let regs = c.get_registers(0, &[]).unwrap().regs;
    let mut b = Batch::new(&c);
    b.set_page_access(0, &[(0xa000, 0)]).unwrap();
    b.set_registers(9, &regs).unwrap();
    let bad_seq = b.last_seq().unwrap();
    b.set_page_access(0, &[(0xb000, 0)]).unwrap();
    let e = b.commit(T).unwrap_err();
    assert!(e.to_string().contains("KVM_EINVAL"), "{e}");
    assert_eq!(
        batch_failures(Err(e)),
        vec![BatchFailure {
            index: Some(1),
            seq: bad_seq,
            id: sys::KVMI_VCPU_SET_REGISTERS,
            err: -sys::KVM_EINVAL,
        }]
    );
    // The rest of the batch took effect, the CMD_ERROR event did not leak to the event
    // queue, and the connection is fine.
    assert!(sim
        .vm()
        .access_restricted(0, 0xa000, sys::KVMI_PAGE_ACCESS_R));
    assert!(sim
        .vm()
        .access_restricted(0, 0xb000, sys::KVMI_PAGE_ACCESS_R));
    assert_eq!(sim.stats().events.get(&sys::KVMI_EVENT_CMD_ERROR), Some(&1));
    assert!(c.try_next_event().unwrap().is_none());
    assert_eq!(c.get_guest_info().unwrap(), 2);

    // READ_PHYSICAL of an unbacked frame (it fails, so it has no reply data): the same
    // error a direct read gets, naming that command.
    let direct = c
        .read_physical(0x4000_0000, 8)
        .unwrap_err()
        .kvm_error()
        .unwrap();
    let req = sys::VmReadPhysical {
        gpa: 0x4000_0000,
        size: 8,
    };
    let mut b = Batch::new(&c);
    b.pause_vcpu(0, true).unwrap();
    b.command(
        sys::KVMI_VM_READ_PHYSICAL,
        zerocopy::IntoBytes::as_bytes(&req),
    )
    .unwrap();
    let bad_seq = b.last_seq().unwrap();
    let f = batch_failures(b.commit(T));
    assert_eq!(
        f,
        vec![BatchFailure {
            index: Some(1),
            seq: bad_seq,
            id: sys::KVMI_VM_READ_PHYSICAL,
            err: direct,
        }]
    );
    // The pause went through: its PAUSE event is the only queued event.
    let ev = c.next_event(T).unwrap();
    assert_eq!(ev.kind, EventKind::PauseVcpu);
    ev.reply_continue().unwrap();
    assert!(c.try_next_event().unwrap().is_none());
    // Replies are back on.
    assert_eq!(c.get_guest_info().unwrap(), 2);
}

#[test]
fn v7_batch_without_cmd_error_event() {
    // QEMU disallows CMD_ERROR and the probe knows it: no flag, failures unreported.
    let (c, sim) = setup(kvmi_sim::Abi::V7, |s| {
        s.allowed_events = Some([sys::KVMI_EVENT_PAUSE_VCPU].into_iter().collect());
    });
    let regs = c.get_registers(0, &[]).unwrap().regs;
    let mut b = Batch::new(&c);
    assert!(!b.reports_errors());
    b.set_registers(9, &regs).unwrap();
    b.set_page_access(0, &[(0xa000, 0)]).unwrap();
    b.commit(T).unwrap();
    assert!(sim
        .vm()
        .access_restricted(0, 0xa000, sys::KVMI_PAGE_ACCESS_R));
    assert_eq!(sim.stats().events.get(&sys::KVMI_EVENT_CMD_ERROR), None);

    // Without a probe the flag is tried: the host refuses it (-KVM_EPERM), replies stay
    // on, and the failing command is still reported from its error reply.
    let (c, sim) = setup_probe(kvmi_sim::Abi::V7, false, |s| {
        s.allowed_events = Some([sys::KVMI_EVENT_PAUSE_VCPU].into_iter().collect());
    });
    let mut b = Batch::new(&c);
    assert!(b.reports_errors());
    b.set_page_access(0, &[(0xa000, 0)]).unwrap();
    b.set_registers(9, &regs).unwrap();
    let bad_seq = b.last_seq().unwrap();
    assert_eq!(
        batch_failures(b.commit(T)),
        vec![BatchFailure {
            index: Some(1),
            seq: bad_seq,
            id: sys::KVMI_VCPU_SET_REGISTERS,
            err: -sys::KVM_EINVAL,
        }]
    );
    assert!(sim
        .vm()
        .access_restricted(0, 0xa000, sys::KVMI_PAGE_ACCESS_R));
    assert_eq!(c.stray_replies(), 0);
    // The refusal is cached: the next batch does not ask again.
    assert_eq!(
        c.probe().events.get(&sys::KVMI_EVENT_CMD_ERROR),
        Some(&false)
    );
    let mut b = Batch::new(&c);
    assert!(!b.reports_errors());
    b.set_page_access(0, &[(0xa000, sys::KVMI_PAGE_ACCESS_RWX)])
        .unwrap();
    b.commit(T).unwrap();
    assert_eq!(c.get_guest_info().unwrap(), 2);
}

#[test]
fn v6_batch_failures_are_not_reported() {
    // kvmi-v6 has no CONTROL_CMD_RESPONSE flags and no CMD_ERROR event: a failing
    // command inside a batch is dropped silently by the host and commit succeeds.
    let (c, sim) = setup(kvmi_sim::Abi::V6, |_| {});
    assert_eq!(c.abi(), Abi::V6);
    let regs = c.get_registers(0, &[]).unwrap().regs;
    let mut b = Batch::new(&c);
    assert!(!b.reports_errors());
    let wire = b
        .set_registers(9, &regs)
        .unwrap()
        .set_page_access(0, &[(0xa000, 0)])
        .unwrap()
        .wire_bytes(100, 101)
        .unwrap();
    assert_eq!(wire[8 + 2], 0, "v6: flags byte must be 0");
    b.commit(T).unwrap();
    assert!(sim
        .vm()
        .access_restricted(0, 0xa000, sys::KVMI_PAGE_ACCESS_R));
    assert_eq!(
        sim.stats()
            .replies
            .get(&(sys::KVMI_VCPU_SET_REGISTERS, -sys::KVM_EINVAL)),
        None
    );
    assert!(c.try_next_event().unwrap().is_none());
    assert_eq!(c.get_guest_info().unwrap(), 2);
}

#[test]
fn dropped_events_get_their_default_reply() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |_| {});
    for ev in [
        sys::KVMI_EVENT_CR,
        sys::KVMI_EVENT_MSR,
        sys::KVMI_EVENT_BREAKPOINT,
        sys::KVMI_EVENT_PF,
    ] {
        c.control_events(0, ev, true).unwrap();
    }
    c.control_cr(0, 3, true).unwrap();
    c.control_msr(0, 0xc000_0082, true).unwrap();
    c.set_page_access(0, &[(0x8000, sys::KVMI_PAGE_ACCESS_R)])
        .unwrap();
    let cases = [
        // CR/MSR: CONTINUE writing the guest's own value (not 0).
        (
            SimEvent::Cr {
                cr: 3,
                old: 0x1000,
                new: 0x2000,
            },
            sys::KVMI_EVENT_ACTION_CONTINUE,
            Some(0x2000),
        ),
        (
            SimEvent::Msr {
                msr: 0xc000_0082,
                old: 1,
                new: 0x4242,
            },
            sys::KVMI_EVENT_ACTION_CONTINUE,
            Some(0x4242),
        ),
        // BREAKPOINT: RETRY (no #BP injected into the guest).
        (
            SimEvent::Breakpoint {
                gpa: 0x1000,
                insn_len: 1,
            },
            sys::KVMI_EVENT_ACTION_RETRY,
            None,
        ),
        // PF: CONTINUE (emulate), no context data.
        (
            SimEvent::Pf {
                gva: 0x10_8000,
                gpa: 0x8000,
                access: sys::KVMI_PAGE_ACCESS_W,
            },
            sys::KVMI_EVENT_ACTION_CONTINUE,
            None,
        ),
        (SimEvent::PauseVcpu, sys::KVMI_EVENT_ACTION_CONTINUE, None),
    ];
    for (ev, action, new_val) in cases {
        let h = sim.trigger(0, ev.clone()).unwrap();
        let e = c.next_event(T).unwrap();
        assert_eq!(e.id(), ev.id());
        drop(e);
        let r = h.wait_reply(T).unwrap();
        assert_eq!(r.action, Some(action), "{ev:?}");
        assert_eq!(r.new_val, new_val, "{ev:?}");
        if let Some(pf) = r.pf {
            assert_eq!((pf.ctx_data.len(), pf.rep_complete), (0, false));
        }
        assert!(r.action_supported, "{ev:?}");
    }
    // The vCPU runs on: the next event on it is delivered and the connection is fine.
    assert_eq!(c.get_guest_info().unwrap(), 2);
    assert!(!c.is_closed());
}

#[test]
fn panicking_handlers_on_4_vcpus_leave_no_vcpu_blocked() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |s| s.vcpus = 4);
    for v in 0..4 {
        c.control_events(v, sys::KVMI_EVENT_CR, true).unwrap();
        c.control_cr(v, 3, true).unwrap();
    }
    let c = Arc::new(c);
    let handlers: Vec<_> = (0..4)
        .map(|_| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                let ev = c.next_event(T).unwrap();
                let _ = c.get_vcpu_info(ev.vcpu()).unwrap();
                panic!("naive handler fails on vCPU {}", ev.vcpu());
            })
        })
        .collect();
    let pending: Vec<_> = (0..4)
        .map(|v| {
            sim.trigger(
                v,
                SimEvent::Cr {
                    cr: 3,
                    old: 0x1000,
                    new: 0x5000 + v as u64,
                },
            )
            .unwrap()
        })
        .collect();
    for h in handlers {
        assert!(h.join().is_err(), "the handler was meant to panic");
    }
    for (v, h) in pending.into_iter().enumerate() {
        let r = h.wait_reply(T).unwrap();
        assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_CONTINUE));
        assert_eq!(r.new_val, Some(0x5000 + v as u64));
    }
    // Every vCPU takes events again.
    for v in 0..4 {
        let h = sim
            .trigger(
                v,
                SimEvent::Cr {
                    cr: 3,
                    old: 0x5000,
                    new: 0x6000,
                },
            )
            .unwrap();
        c.next_event(T)
            .unwrap()
            .reply_cr(Action::Continue, 0x6000)
            .unwrap();
        assert_eq!(h.wait_reply(T).unwrap().new_val, Some(0x6000));
    }
}

#[test]
fn deferred_reply_from_another_thread_and_uncommitted_batch() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |_| {});
    c.control_events(0, sys::KVMI_EVENT_CR, true).unwrap();
    c.control_cr(0, 3, true).unwrap();
    let cr = |new| SimEvent::Cr {
        cr: 3,
        old: 0x1000,
        new,
    };
    // Deferred: the event moves to a worker that answers later.
    let h = sim.trigger(0, cr(0x2000)).unwrap();
    let ev = c.next_event(T).unwrap();
    let worker = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        ev.reply_cr(Action::Continue, 0x7000)
    });
    worker.join().unwrap().unwrap();
    assert_eq!(h.wait_reply(T).unwrap().new_val, Some(0x7000));
    // A batch holding an event reply, dropped without commit: the event still gets its
    // default reply.
    let h = sim.trigger(0, cr(0x3000)).unwrap();
    let ev = c.next_event(T).unwrap();
    let mut b = Batch::new(&c);
    b.set_page_access(0, &[(0x9000, 0)]).unwrap();
    b.reply(
        ev,
        kvmi_proto::Reply::with_new_value(Action::Continue, 0x9999),
    )
    .unwrap();
    drop(b);
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.new_val, Some(0x3000));
    assert!(!sim
        .vm()
        .access_restricted(0, 0x9000, sys::KVMI_PAGE_ACCESS_R));
    // A committed batch answers with the queued reply, once.
    let h = sim.trigger(0, cr(0x4000)).unwrap();
    let ev = c.next_event(T).unwrap();
    let mut b = Batch::new(&c);
    b.reply(
        ev,
        kvmi_proto::Reply::with_new_value(Action::Continue, 0x4444),
    )
    .unwrap();
    b.commit(T).unwrap();
    assert_eq!(h.wait_reply(T).unwrap().new_val, Some(0x4444));
    assert_eq!(sim.stats().event_replies.get(&sys::KVMI_EVENT_CR), Some(&3));
    assert!(!c.is_closed());
}
