//! Events and replies: CR, PF, breakpoint, pause, TRAP, VM events, the workload.

use super::*;

#[test]
fn cr_event_round_trip_applies_new_value_and_registers() {
    let (sim, mut t) = connect(SimConfig::default());
    // Not enabled yet: not delivered.
    let ev = SimEvent::Cr {
        cr: 3,
        old: 0x10_0000,
        new: 0x20_0000,
    };
    assert!(matches!(
        sim.trigger(0, ev.clone()),
        Err(SimError::NotDelivered(_))
    ));
    t.enable_event(0, sys::KVMI_EVENT_CR);
    let ccr = sys::VcpuControlCr {
        enable: 1,
        cr: 3,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &ccr).0, 0);
    let bad = sys::VcpuControlCr {
        enable: 1,
        cr: 2,
        ..Default::default()
    };
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &bad).0,
        -sys::KVM_EINVAL
    );

    let h = sim.trigger(0, ev).unwrap();
    let (hdr, e, spec) = t.read_event();
    assert_eq!(hdr.size as usize, 544 + 24);
    assert_eq!(hdr.seq, h.seq);
    assert_eq!((e.vcpu, e.event, e.arch.mode), (0, sys::KVMI_EVENT_CR, 8));
    let cr = sys::EventCr::read_from_bytes(&spec).unwrap();
    assert_eq!(
        (cr.cr, cr.old_value, cr.new_value),
        (3, 0x10_0000, 0x20_0000)
    );

    // SET_REGISTERS is accepted while the event is pending, applied at reply time.
    let set = sys::VcpuSetRegisters {
        regs: sys::KvmRegs {
            rip: 0x1234,
            ..e.arch.regs
        },
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_SET_REGISTERS, 0, &set).0, 0);
    assert_ne!(sim.vm().vcpus[0].regs.rip, 0x1234);
    t.reply_event(
        hdr.seq,
        0,
        sys::KVMI_EVENT_CR,
        sys::KVMI_EVENT_ACTION_CONTINUE,
        &0x30_0000u64.to_le_bytes(),
    );
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_CONTINUE));
    assert_eq!(r.new_val, Some(0x30_0000));
    assert_eq!(r.regs_applied.map(|r| r.rip), Some(0x1234));
    assert_eq!(sim.vm().vcpus[0].sregs.cr3, 0x30_0000);
    assert_eq!(sim.vm().vcpus[0].regs.rip, 0x1234);
    // Event over: SET_REGISTERS refused again.
    let e = t.vcmd(sys::KVMI_VCPU_SET_REGISTERS, 0, &set).0;
    assert_eq!(e, -sys::KVM_EOPNOTSUPP);
    let s = sim.stats();
    assert_eq!(s.events[&sys::KVMI_EVENT_CR], 1);
    assert_eq!(s.event_replies[&sys::KVMI_EVENT_CR], 1);
}

#[test]
fn events_on_two_vcpus_outstanding_at_once() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_HYPERCALL);
    t.enable_event(1, sys::KVMI_EVENT_XSETBV);
    let h0 = sim.trigger(0, SimEvent::Hypercall).unwrap();
    let h1 = sim.trigger(1, SimEvent::Xsetbv { xcr0: 0xe7 }).unwrap();
    let (a, ea, _) = t.read_event();
    let (b, eb, _) = t.read_event();
    assert_eq!(ea.arch.regs.rax, sys::KVM_HC_XEN_HVM_OP);
    // Answer in reverse order.
    t.reply_event(b.seq, eb.vcpu, eb.event, 0, &[]);
    t.reply_event(a.seq, ea.vcpu, ea.event, 0, &[]);
    assert_eq!(h1.wait_reply(T).unwrap().event, sys::KVMI_EVENT_XSETBV);
    assert_eq!(h0.wait_reply(T).unwrap().event, sys::KVMI_EVENT_HYPERCALL);
    assert_eq!(sim.vm().vcpus[1].xcr0, 0xe7);
}

#[test]
fn pause_vcpu_queues_pause_event() {
    let (sim, mut t) = connect(SimConfig::default());
    let (e, d) = t.vcmd(
        sys::KVMI_VCPU_PAUSE,
        1,
        &sys::VcpuPause {
            wait: 1,
            ..Default::default()
        },
    );
    assert_eq!((e, d.len()), (0, 0));
    let (h, ev, spec) = t.read_event();
    assert_eq!((ev.vcpu, ev.event), (1, sys::KVMI_EVENT_PAUSE_VCPU));
    assert!(spec.is_empty());
    t.reply_event(h.seq, 1, ev.event, sys::KVMI_EVENT_ACTION_CONTINUE, &[]);
    // The reply has no answer; a following command is answered normally.
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    assert_eq!(sim.stats().event_replies[&sys::KVMI_EVENT_PAUSE_VCPU], 1);
}

#[test]
fn inject_exception_is_followed_by_trap() {
    let (sim, mut t) = connect(SimConfig::default());
    let inj = sys::VcpuInjectException {
        nr: 14,
        error_code: 2,
        address: 0xdead_b000,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_INJECT_EXCEPTION, 0, &inj).0, 0);
    let (h, ev, spec) = t.read_event();
    assert_eq!(ev.event, sys::KVMI_EVENT_TRAP);
    let tr = sys::EventTrap::read_from_bytes(&spec).unwrap();
    assert_eq!((tr.vector, tr.error_code, tr.cr2), (14, 2, 0xdead_b000));
    // A second injection while the TRAP is pending: EBUSY.
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_INJECT_EXCEPTION, 0, &inj).0,
        -sys::KVM_EBUSY
    );
    t.reply_event(h.seq, 0, ev.event, 0, &[]);
    assert_eq!(t.vcmd(sys::KVMI_VCPU_GET_INFO, 0, &()).0, 0);
    assert_eq!(sim.vm().vcpus[0].injections.len(), 1);
}

#[test]
fn pf_event_needs_restricted_page_and_decodes_reply() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_PF);
    let pf = SimEvent::Pf {
        gva: 0x7000,
        gpa: 0x5000,
        access: sys::KVMI_PAGE_ACCESS_W,
    };
    assert!(sim.trigger(0, pf.clone()).is_err());
    let mut p = sys::VmSetPageAccess {
        view: 0,
        count: 1,
        padding: 0,
    }
    .as_bytes()
    .to_vec();
    p.extend_from_slice(
        sys::PageAccessEntry {
            gpa: 0x5000,
            access: sys::KVMI_PAGE_ACCESS_R | sys::KVMI_PAGE_ACCESS_X,
            ..Default::default()
        }
        .as_bytes(),
    );
    assert_eq!(t.cmd(sys::KVMI_VM_SET_PAGE_ACCESS, &p).0, 0);
    let h = sim.trigger(0, pf).unwrap();
    let (hd, ev, spec) = t.read_event();
    assert_eq!(hd.size as usize, 544 + 24);
    let e = sys::EventPf::read_from_bytes(&spec).unwrap();
    assert_eq!((e.gva, e.gpa, e.access), (0x7000, 0x5000, 2));
    let mut pr = sys::EventPfReply {
        ctx_addr: 0x7000,
        ctx_size: 4,
        rep_complete: 1,
        ..Default::default()
    };
    pr.ctx_data[..4].copy_from_slice(b"fake");
    t.reply_event(
        hd.seq,
        0,
        ev.event,
        sys::KVMI_EVENT_ACTION_RETRY,
        pr.as_bytes(),
    );
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_RETRY));
    let pf = r.pf.unwrap();
    assert_eq!(
        (pf.ctx_addr, pf.ctx_data.as_slice()),
        (0x7000, &b"fake"[..])
    );
    assert!(pf.rep_complete);
}

#[test]
fn breakpoint_continue_reinjects_and_retry_does_not() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(1, sys::KVMI_EVENT_BREAKPOINT);
    for action in [
        sys::KVMI_EVENT_ACTION_RETRY,
        sys::KVMI_EVENT_ACTION_CONTINUE,
    ] {
        let bp = SimEvent::Breakpoint {
            gpa: 0x1000,
            insn_len: 1,
        };
        let h = sim.trigger(1, bp).unwrap();
        let (hd, ev, spec) = t.read_event();
        let b = sys::EventBreakpoint::read_from_bytes(&spec).unwrap();
        assert_eq!((b.gpa, b.insn_len), (0x1000, 1));
        t.reply_event(hd.seq, 1, ev.event, action, &[]);
        h.wait_reply(T).unwrap();
    }
    let inj = sim.vm().vcpus[1].injections.clone();
    assert_eq!(inj.len(), 1);
    assert!(inj[0].reinjected_bp && inj[0].vector == 3);
}

#[test]
fn v6_pf_event_has_view_in_payload() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    t.enable_event(0, sys::KVMI_EVENT_PF);
    sim.vm().page_access.insert((0, 5), sys::KVMI_PAGE_ACCESS_R);
    let h = sim
        .trigger(
            0,
            SimEvent::Pf {
                gva: 1,
                gpa: 0x5000,
                access: sys::KVMI_PAGE_ACCESS_X,
            },
        )
        .unwrap();
    let (hd, ev, spec) = t.read_event();
    assert_eq!(spec.len(), 24);
    let e = sys::v6::EventPf::read_from_bytes(&spec).unwrap();
    assert_eq!((e.gpa, e.access, e.view), (0x5000, 4, 0));
    t.reply_event(hd.seq, 0, ev.event, 0, &[]);
    h.wait_reply(T).unwrap();
}

#[test]
fn crash_action_closes_connection() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_DESCRIPTOR);
    let h = sim
        .trigger(
            0,
            SimEvent::Descriptor {
                descriptor: sys::KVMI_DESC_GDTR,
                write: true,
            },
        )
        .unwrap();
    let (hd, ev, _) = t.read_event();
    t.reply_event(hd.seq, 0, ev.event, sys::KVMI_EVENT_ACTION_CRASH, &[]);
    assert_eq!(h.wait_reply(T).unwrap().action, Some(2));
    assert!(sim.wait_closed(T).unwrap().contains("CRASH"));
    assert!(sim.vm().crashed);
}

#[test]
fn workload_generates_every_enabled_event() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_CR);
    t.enable_event(0, sys::KVMI_EVENT_CPUID);
    t.enable_event(1, sys::KVMI_EVENT_MSR);
    t.enable_event(1, sys::KVMI_EVENT_SINGLESTEP);
    let ccr = sys::VcpuControlCr {
        enable: 1,
        cr: 4,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &ccr).0, 0);
    let cm = sys::VcpuControlMsr {
        enable: 1,
        msr: 0xc000_0082,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_MSR, 1, &cm).0, 0);
    let ss = sys::VcpuControlSingleStep {
        enable: 1,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_SINGLESTEP, 1, &ss).0, 0);
    let mut tool = t;
    let th = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Some((h, p)) = tool.try_read() {
            let ev = sys::Event::read_from_prefix(&p).unwrap().0;
            seen.push(ev.event);
            let extra = match ev.event {
                // Let the written value through (CR/MSR new_value at offset 16).
                1 | 2 => p[sys::EVENT_SIZE + 16..sys::EVENT_SIZE + 24].to_vec(),
                _ => vec![],
            };
            tool.reply_event(h.seq, ev.vcpu, ev.event, 0, &extra);
            if seen.len() == 5 {
                break;
            }
        }
        seen
    });
    let rep = sim.run_workload(Workload::EveryEnabledEvent);
    assert!(rep.failed.is_empty(), "{:?}", rep.failed);
    let mut seen = th.join().unwrap();
    seen.sort();
    // vCPU 1 single-steps both its WRMSR and its idle-loop step.
    assert_eq!(seen, vec![1, 2, 11, 11, 13]);
    assert_eq!(rep.answered.values().sum::<u64>(), 5);
    // CR4.PGE toggled; LSTAR written with the value the workload chose.
    assert_eq!(sim.vm().vcpus[0].sregs.cr4, 0x6a0 ^ 0x80);
    assert_eq!(
        sim.vm().vcpus[1].msrs[&0xc000_0082],
        crate::guest::SYM_ENTRY_SYSCALL ^ 0x1000
    );
    let summary = sim.stats().to_string();
    assert!(summary.contains("SINGLESTEP"), "{summary}");
}

#[test]
fn two_pauses_give_two_events_in_turn() {
    let (sim, mut t) = connect(SimConfig::default());
    let pause = sys::VcpuPause {
        wait: 1,
        ..Default::default()
    };
    // Batch of two pauses for vCPU 0 (wait = low byte of vCPU index under the quirk).
    let mut p = sys::VcpuHdr::default().as_bytes().to_vec();
    p.extend_from_slice(pause.as_bytes());
    t.send(sys::KVMI_VCPU_PAUSE, &p);
    t.send(sys::KVMI_VCPU_PAUSE, &p);
    // Two replies and one event (the second PAUSE waits for the first reply), in
    // any interleaving.
    let mut replies = 0;
    let mut events = Vec::new();
    while replies < 2 || events.is_empty() {
        let (h, p) = t.read();
        if h.id == sys::KVMI_EVENT {
            events.push((h, sys::Event::read_from_prefix(&p).unwrap().0));
        } else {
            assert_eq!((h.id, &p[..4]), (sys::KVMI_VCPU_PAUSE, &[0u8; 4][..]));
            replies += 1;
        }
    }
    assert_eq!(events.len(), 1);
    let (h1, e1) = events[0];
    assert_eq!(e1.event, sys::KVMI_EVENT_PAUSE_VCPU);
    // The second PAUSE comes only after the first is answered.
    t.reply_event(h1.seq, 0, e1.event, 0, &[]);
    let (h2, e2, _) = t.read_event();
    assert_eq!(e2.event, sys::KVMI_EVENT_PAUSE_VCPU);
    assert!(h2.seq > h1.seq);
    t.reply_event(h2.seq, 0, e2.event, 0, &[]);
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    let r = sim.recent_replies();
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|r| r.event == sys::KVMI_EVENT_PAUSE_VCPU));
}

#[test]
fn unhook_and_create_vcpu_are_vm_events() {
    let (sim, mut t) = connect(SimConfig::default());
    assert!(matches!(sim.unhook(T), Err(SimError::NotDelivered(_))));
    for ev in [sys::KVMI_EVENT_UNHOOK, sys::KVMI_EVENT_CREATE_VCPU] {
        let ce = sys::VmControlEvents {
            event_id: ev.into(),
            enable: 1,
            ..Default::default()
        };
        assert_eq!(t.cmd(sys::KVMI_VM_CONTROL_EVENTS, ce.as_bytes()).0, 0);
    }
    // A vCPU event id through VM_CONTROL_EVENTS: EINVAL.
    let ce = sys::VmControlEvents {
        event_id: sys::KVMI_EVENT_CR.into(),
        enable: 1,
        ..Default::default()
    };
    assert_eq!(
        t.cmd(sys::KVMI_VM_CONTROL_EVENTS, ce.as_bytes()).0,
        -sys::KVM_EINVAL
    );
    let h = sim.trigger(1, SimEvent::CreateVcpu).unwrap();
    let (hd, ev, _) = t.read_event();
    assert_eq!((ev.vcpu, ev.event), (1, sys::KVMI_EVENT_CREATE_VCPU));
    t.reply_event(hd.seq, 1, ev.event, 0, &[]);
    h.wait_reply(T).unwrap();
    let th = std::thread::spawn(move || {
        let (_, ev, _) = t.read_event();
        assert_eq!((ev.vcpu, ev.event), (0, sys::KVMI_EVENT_UNHOOK));
        drop(t);
    });
    sim.unhook(T).unwrap();
    th.join().unwrap();
    assert!(sim.closed().is_some());
}

#[test]
fn v6_pf_retry_with_singlestep_sends_singlestep_event() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    t.enable_event(0, sys::KVMI_EVENT_PF);
    sim.vm().page_access.insert((0, 7), 0);
    let h = sim
        .trigger(
            0,
            SimEvent::Pf {
                gva: 0x7000,
                gpa: 0x7000,
                access: sys::KVMI_PAGE_ACCESS_R,
            },
        )
        .unwrap();
    let (hd, ev, _) = t.read_event();
    let pr = sys::v6::EventPfReply {
        singlestep: 1,
        ..Default::default()
    };
    t.reply_event(
        hd.seq,
        0,
        ev.event,
        sys::KVMI_EVENT_ACTION_RETRY,
        pr.as_bytes(),
    );
    assert!(h.wait_reply(T).unwrap().pf.unwrap().singlestep);
    let (hd, ev, spec) = t.read_event();
    assert_eq!(ev.event, sys::KVMI_EVENT_SINGLESTEP);
    assert!(spec.is_empty(), "no SINGLESTEP payload in v6");
    t.reply_event(hd.seq, 0, ev.event, 0, &[]);
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
}
