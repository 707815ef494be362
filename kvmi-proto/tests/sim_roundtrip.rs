//! Round trips between kvmi-proto and the independent KVMi host simulator (`kvmi-sim`)
//! over a real UNIX socket, in kvmi-v7 and kvmi-v6 modes.

use kvmi_proto::{Abi, Action, Batch, EventKind, PfReply, ProtoError};
use kvmi_sim::SimEvent;
use kvmi_sys as sys;
use std::sync::Arc;
use std::thread;

mod sim;
use sim::{setup, T};

#[test]
fn v7_handshake_version_probe() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |_| {});
    assert_eq!(c.abi(), Abi::V7);
    assert_eq!(c.version(), 1);
    assert_eq!(c.hookup().name, "kvmi-sim");
    assert_eq!(c.hookup().uuid, *b"kvmi-sim-uuid-01");
    assert_eq!(sim.hookup().struct_size, 24);
    let f = c.features().unwrap();
    assert_eq!((f.eptp, f.singlestep, f.spp), (1, 1, 0));
    assert!(c.command_allowed(sys::KVMI_VM_READ_PHYSICAL).unwrap());
    assert!(c.event_allowed(sys::KVMI_EVENT_PF).unwrap());
    assert_eq!(c.get_version().unwrap().0, 1);
}

#[test]
fn v7_probe_respects_allowed_lists() {
    let (c, _sim) = setup(kvmi_sim::Abi::V7, |s| {
        s.allowed_commands = Some([sys::KVMI_VM_GET_INFO].into_iter().collect());
        s.allowed_events = Some([sys::KVMI_EVENT_CR].into_iter().collect());
    });
    assert!(c.command_allowed(sys::KVMI_VM_GET_INFO).unwrap());
    assert!(!c.command_allowed(sys::KVMI_VM_READ_PHYSICAL).unwrap());
    assert!(c.event_allowed(sys::KVMI_EVENT_CR).unwrap());
    assert!(!c.event_allowed(sys::KVMI_EVENT_PF).unwrap());
}

#[test]
fn v7_vm_and_vcpu_commands() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |_| {});
    assert_eq!(c.get_guest_info().unwrap(), 2);
    let _ = c.get_vcpu_info(0).unwrap();
    // Memory.
    c.write_physical(0x1ff0, b"hello kvmi").unwrap();
    assert_eq!(c.read_physical(0x1ff0, 10).unwrap(), b"hello kvmi");
    assert_eq!(sim.vm().memory.read(0x1ff0, 10).unwrap(), b"hello kvmi");
    let e = c.read_physical(0x4000_0000, 8).unwrap_err();
    assert!(e.kvm_error().is_some(), "{e}");
    assert!(c.get_max_gfn().unwrap() > 0);
    // Registers.
    let r = c.get_registers(0, &[0xc000_0080, 0x174]).unwrap();
    assert_eq!(r.mode, 8);
    assert_eq!(r.regs.rip, sim.vm().vcpus[0].regs.rip);
    assert_eq!(r.msrs.len(), 2);
    assert_eq!(r.msrs[0].index, 0xc000_0080);
    assert_eq!(r.sregs.cr3, sim.vm().vcpus[0].sregs.cr3);
    // CPUID, XCR, XSAVE, MTRR.
    let id = c.get_cpuid(0, 0, 0).unwrap();
    assert_eq!(id.ebx, 0x756e_6547);
    assert_eq!(
        c.get_cpuid(0, 0x1234_5678, 0).unwrap_err().kvm_error(),
        Some(-sys::KVM_ENOENT)
    );
    let _ = c.get_xcr(0, 0).unwrap();
    assert!(c.get_xcr(0, 1).is_err());
    let mut xs = c.get_xsave(0).unwrap();
    assert_eq!(xs.len(), sys::KVM_XSAVE_SIZE);
    xs[0] = 0x7f;
    c.set_xsave(0, &xs).unwrap();
    assert_eq!(c.get_xsave(0).unwrap()[0], 0x7f);
    assert_eq!(c.get_mtrr_type(0, 0x1000).unwrap(), 6);
    // Translation.
    let cr3 = sim.vm().vcpus[0].sregs.cr3;
    let _ = cr3;
    let gpa = c.translate_gva(0, 0x1234).unwrap();
    let _ = gpa;
    // Bad vCPU index.
    assert_eq!(
        c.get_vcpu_info(9).unwrap_err().kvm_error(),
        Some(-sys::KVM_EINVAL)
    );
    // Interception controls.
    c.control_events(0, sys::KVMI_EVENT_CR, true).unwrap();
    c.control_cr(0, 3, true).unwrap();
    assert!(c.control_cr(0, 2, true).is_err());
    c.control_events(1, sys::KVMI_EVENT_MSR, true).unwrap();
    c.control_msr(1, 0xc000_0080, true).unwrap();
    c.control_vm_events(sys::KVMI_EVENT_UNHOOK, true).unwrap();
    {
        let vm = sim.vm();
        assert!(vm.vcpus[0].cr_intercepts.contains(&3));
        assert!(vm.vcpus[1].msr_intercepts.contains(&0xc000_0080));
        assert!(vm.vm_events.contains(&sys::KVMI_EVENT_UNHOOK));
    }
    // Page access and EPT views.
    c.set_page_access(
        0,
        &[(0x5000, sys::KVMI_PAGE_ACCESS_R | sys::KVMI_PAGE_ACCESS_X)],
    )
    .unwrap();
    assert!(sim
        .vm()
        .access_restricted(0, 0x5000, sys::KVMI_PAGE_ACCESS_W));
    c.set_ept_view(0, 1).unwrap();
    assert_eq!(c.get_ept_view(0).unwrap(), 1);
    c.control_ept_view(0, 1, true).unwrap();
    c.set_ept_view(0, 0).unwrap();
    c.set_ve_info(0, 0x6000, false).unwrap();
    c.disable_ve(0).unwrap();
    c.set_page_sve(0, 0x5000, true).unwrap();
    c.control_singlestep(0, true).unwrap();
    assert!(sim.vm().vcpus[0].singlestep);
    c.control_singlestep(0, false).unwrap();
    let _ = c.get_map_token().unwrap();
    // Commands whose kernel side is uncertain: a clean reply either way.
    for r in [
        c.control_spp(true),
        c.set_page_write_bitmap(&[(0x5000, 0xffff_0000)]),
        c.alloc_gfn(0, 0x3_0000),
        c.free_gfn(0, 0x3_0000),
        c.change_gfn(0, 0, 0x10, 0x11),
        c.destroy_ept_view(7),
    ] {
        assert!(matches!(r, Ok(()) | Err(ProtoError::Kvm { .. })), "{r:?}");
    }
    for r in [
        c.get_next_available_gfn(),
        c.query_physical(1).map(|q| q.gfn),
    ] {
        assert!(matches!(r, Ok(_) | Err(ProtoError::Kvm { .. })), "{r:?}");
    }
    assert!(!c.is_closed());
}

#[test]
fn v7_events_and_replies() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |_| {});
    let c = Arc::new(c);
    for ev in [
        sys::KVMI_EVENT_CR,
        sys::KVMI_EVENT_MSR,
        sys::KVMI_EVENT_XSETBV,
        sys::KVMI_EVENT_BREAKPOINT,
        sys::KVMI_EVENT_HYPERCALL,
        sys::KVMI_EVENT_PF,
        sys::KVMI_EVENT_DESCRIPTOR,
        sys::KVMI_EVENT_SINGLESTEP,
        sys::KVMI_EVENT_CPUID,
    ] {
        c.control_events(0, ev, true).unwrap();
    }
    c.control_cr(0, 3, true).unwrap();
    c.control_msr(0, 0xc000_0082, true).unwrap();
    c.control_singlestep(0, true).unwrap();
    c.set_page_access(0, &[(0x8000, sys::KVMI_PAGE_ACCESS_R)])
        .unwrap();

    // CR: reply with a different new value.
    let h = sim
        .trigger(
            0,
            SimEvent::Cr {
                cr: 3,
                old: 0x1000,
                new: 0x2000,
            },
        )
        .unwrap();
    let ev = c.next_event(T).unwrap();
    let EventKind::Cr(cr) = ev.kind else {
        panic!("{:?}", ev.kind)
    };
    assert_eq!((cr.cr, cr.old_value, cr.new_value), (3, 0x1000, 0x2000));
    ev.reply_cr(Action::Continue, 0x3000).unwrap();
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.new_val, Some(0x3000));

    // MSR.
    let h = sim
        .trigger(
            0,
            SimEvent::Msr {
                msr: 0xc000_0082,
                old: 1,
                new: 2,
            },
        )
        .unwrap();
    let ev = c.next_event(T).unwrap();
    assert!(matches!(ev.kind, EventKind::Msr(m) if m.msr == 0xc000_0082 && m.new_value == 2));
    ev.reply_msr(Action::Continue, 5).unwrap();
    assert_eq!(h.wait_reply(T).unwrap().new_val, Some(5));

    // PF with context data, from a handler that reads memory first.
    let h = sim
        .trigger(
            0,
            SimEvent::Pf {
                gva: 0xffff_0000_8000,
                gpa: 0x8000,
                access: sys::KVMI_PAGE_ACCESS_W,
            },
        )
        .unwrap();
    let ev = c.next_event(T).unwrap();
    let EventKind::Pf(pf) = ev.kind else {
        panic!("{:?}", ev.kind)
    };
    assert_eq!(
        (pf.gpa, pf.access, pf.view),
        (0x8000, sys::KVMI_PAGE_ACCESS_W, 0)
    );
    let c2 = Arc::clone(&c);
    let data = thread::spawn(move || c2.read_physical(0x8000, 16).unwrap())
        .join()
        .unwrap();
    assert_eq!(data.len(), 16);
    ev.reply_pf(
        Action::Continue,
        &PfReply {
            ctx_addr: pf.gva,
            ctx_data: &[0xaa; 8],
            rep_complete: true,
            singlestep_v6: false,
        },
    )
    .unwrap();
    let r = h.wait_reply(T).unwrap();
    let pr = r.pf.unwrap();
    assert_eq!(
        (pr.ctx_addr, pr.ctx_data.len(), pr.rep_complete),
        (0xffff_0000_8000, 8, true)
    );

    // Breakpoint: set registers while the event is pending, then RETRY.
    let h = sim
        .trigger(
            0,
            SimEvent::Breakpoint {
                gpa: 0x1000,
                insn_len: 1,
            },
        )
        .unwrap();
    let ev = c.next_event(T).unwrap();
    assert!(matches!(ev.kind, EventKind::Breakpoint(b) if b.gpa == 0x1000 && b.insn_len == 1));
    let mut regs = c.get_registers(0, &[]).unwrap().regs;
    regs.rip += 1;
    c.set_registers(0, &regs).unwrap();
    ev.reply_breakpoint(false).unwrap();
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_RETRY));
    assert_eq!(r.regs_applied.map(|r| r.rip), Some(regs.rip));

    // Payload-less and small events.
    for (ev, check) in [
        (SimEvent::Xsetbv { xcr0: 7 }, EventKind::Xsetbv),
        (SimEvent::Hypercall, EventKind::Hypercall),
        (
            SimEvent::Singlestep { failed: true },
            EventKind::Singlestep { failed: true },
        ),
    ] {
        let h = sim.trigger(0, ev).unwrap();
        let e = c.next_event(T).unwrap();
        assert_eq!(e.kind, check);
        e.reply_continue().unwrap();
        assert_eq!(h.wait_reply(T).unwrap().action, Some(0));
    }
    let h = sim
        .trigger(
            0,
            SimEvent::Cpuid {
                leaf: 1,
                subleaf: 0,
            },
        )
        .unwrap();
    let e = c.next_event(T).unwrap();
    assert!(matches!(e.kind, EventKind::Cpuid(x) if x.function == 1));
    e.reply_continue().unwrap();
    h.wait_reply(T).unwrap();
    let h = sim
        .trigger(
            0,
            SimEvent::Descriptor {
                descriptor: sys::KVMI_DESC_GDTR,
                write: true,
            },
        )
        .unwrap();
    let e = c.next_event(T).unwrap();
    assert!(
        matches!(e.kind, EventKind::Descriptor(d) if d.descriptor == sys::KVMI_DESC_GDTR && d.write == 1)
    );
    e.reply(Action::Retry).unwrap();
    h.wait_reply(T).unwrap();
}

#[test]
fn v7_pause_inject_trap_and_batch() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |_| {});
    // Pause both vCPUs in one batch (one round trip), then answer both PAUSE events
    // from two threads at once.
    let mut b = Batch::new(&c);
    b.pause_vcpu(0, true).unwrap().pause_vcpu(1, true).unwrap();
    b.set_page_access(0, &[(0x9000, 0), (0xa000, sys::KVMI_PAGE_ACCESS_R)])
        .unwrap();
    b.commit(T).unwrap();
    assert!(sim
        .vm()
        .access_restricted(0, 0x9000, sys::KVMI_PAGE_ACCESS_R));
    let c = Arc::new(c);
    let mut vcpus = Vec::new();
    let hs: Vec<_> = (0..2)
        .map(|_| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                let e = c.next_event(T).unwrap();
                assert_eq!(e.kind, EventKind::PauseVcpu);
                let n = c.get_guest_info().unwrap();
                assert_eq!(n, 2);
                let vcpu = e.vcpu();
                e.reply_continue().unwrap();
                vcpu
            })
        })
        .collect();
    for h in hs {
        vcpus.push(h.join().unwrap());
    }
    vcpus.sort();
    assert_eq!(vcpus, vec![0, 1]);
    // Inject #PF: a TRAP event follows (v7).
    c.inject_exception(1, 14, 2, 0xdead_0000).unwrap();
    let e = c.next_event(T).unwrap();
    let EventKind::Trap(t) = e.kind else {
        panic!("{:?}", e.kind)
    };
    assert_eq!(
        (t.vector, t.error_code, t.cr2, e.vcpu()),
        (14, 2, 0xdead_0000, 1)
    );
    e.reply_continue().unwrap();
    // A batch with an event reply and commands.
    let h = sim.trigger(0, SimEvent::PauseVcpu).unwrap();
    let e = c.next_event(T).unwrap();
    let mut b = Batch::new(&c);
    b.set_page_access(0, &[(0x9000, sys::KVMI_PAGE_ACCESS_RWX)])
        .unwrap();
    b.reply(e, Action::Continue).unwrap();
    b.commit(T).unwrap();
    h.wait_reply(T).unwrap();
    assert!(!sim
        .vm()
        .access_restricted(0, 0x9000, sys::KVMI_PAGE_ACCESS_R));
    let st = sim.stats();
    assert!(
        st.commands
            .get(&sys::KVMI_VM_CONTROL_CMD_RESPONSE)
            .copied()
            .unwrap_or(0)
            >= 4
    );
}

#[test]
fn v7_vm_events_and_unhook() {
    let (c, sim) = setup(kvmi_sim::Abi::V7, |_| {});
    c.control_vm_events(sys::KVMI_EVENT_CREATE_VCPU, true)
        .unwrap();
    c.control_vm_events(sys::KVMI_EVENT_UNHOOK, true).unwrap();
    let h = sim.trigger(1, SimEvent::CreateVcpu).unwrap();
    let e = c.next_event(T).unwrap();
    assert_eq!(e.kind, EventKind::CreateVcpu);
    e.reply_continue().unwrap();
    h.wait_reply(T).unwrap();
    let _h = sim.trigger(0, SimEvent::Unhook).unwrap();
    let e = c.next_event(T).unwrap();
    assert_eq!(e.kind, EventKind::Unhook);
    assert!(!e.needs_reply());
    c.close();
    assert!(sim.wait_closed(T).is_ok());
    assert!(matches!(
        c.get_guest_info(),
        Err(ProtoError::Disconnected(_))
    ));
}

#[test]
fn v6_mode() {
    let (c, sim) = setup(kvmi_sim::Abi::V6, |_| {});
    assert_eq!(c.abi(), Abi::V6);
    assert!(c.features().is_none());
    assert_eq!(c.hookup().name, "");
    assert_eq!(c.get_guest_info().unwrap(), 2);
    assert_eq!(c.read_physical(0x1000, 4).unwrap().len(), 4);
    assert!(!c
        .command_allowed(sys::KVMI_VCPU_CONTROL_SINGLESTEP)
        .unwrap_or(false));
    c.control_events(0, sys::KVMI_EVENT_PF, true).unwrap();
    c.set_page_access(0, &[(0x8000, sys::KVMI_PAGE_ACCESS_R)])
        .unwrap();
    let h = sim
        .trigger(
            0,
            SimEvent::Pf {
                gva: 0x10_8000,
                gpa: 0x8000,
                access: sys::KVMI_PAGE_ACCESS_W,
            },
        )
        .unwrap();
    let e = c.next_event(T).unwrap();
    let EventKind::Pf(pf) = e.kind else {
        panic!("{:?}", e.kind)
    };
    assert_eq!((pf.gpa, pf.view), (0x8000, 0));
    e.reply_pf(
        Action::Retry,
        &PfReply {
            singlestep_v6: true,
            ..Default::default()
        },
    )
    .unwrap();
    let r = h.wait_reply(T).unwrap();
    assert!(r.pf.unwrap().singlestep);
    // v6 INJECT_EXCEPTION carries has_error.
    c.inject_exception(0, 14, 2, 0x1000).unwrap();
    assert!(!c.is_closed());
    let _ = sim.vm().vcpus[0].injections.len();
}

#[test]
fn fault_drop_wakes_waiters() {
    // Setup crosses 2 * (2 + 41 + 14) frames (GET_VERSION, VM_GET_INFO, probes); the
    // host drops the connection when the next command arrives, so the waiter must be
    // woken with `Disconnected`.
    let (c, sim) = setup(kvmi_sim::Abi::V7, |s| {
        s.faults.drop_after_messages = Some(2 * (2 + 41 + 14) + 1);
    });
    let c = Arc::new(c);
    let c2 = Arc::clone(&c);
    let t = thread::spawn(move || c2.get_max_gfn());
    let r = t.join().unwrap();
    assert!(matches!(r, Err(ProtoError::Disconnected(_))), "{r:?}");
    assert!(matches!(c.next_event(T), Err(ProtoError::Disconnected(_))));
    assert!(sim.wait_closed(T).is_ok());
}

#[test]
fn fault_corrupt_frame_is_typed_error() {
    // Corrupt the size field of the first reply after the setup's GET_VERSION,
    // VM_GET_INFO and probes: an oversized header closes the connection with a protocol
    // error.
    let (c, _sim) = setup(kvmi_sim::Abi::V7, |s| {
        s.faults.corrupt_frame = Some((2 + 41 + 14, 3, 0xff));
    });
    let r = c.get_guest_info();
    assert!(r.is_err());
    assert!(matches!(c.next_event(T), Err(ProtoError::Disconnected(_))));
}

#[test]
fn fault_corrupt_size_closes_at_once() {
    // XOR 0x20 into the low byte of the size of the first reply after setup (VM_GET_INFO,
    // 8 + 16 = 24 bytes -> 56): the frame can never complete, the stream is out of sync. The
    // request fails with Disconnected (not a Timeout after its 5 s), and later requests
    // fail at once.
    let (c, _sim) = setup(kvmi_sim::Abi::V7, |s| {
        s.faults.corrupt_frame = Some((2 + 41 + 14, 2, 0x20));
    });
    match c.get_guest_info() {
        Err(ProtoError::Disconnected(r)) => assert!(r.contains("out of sync"), "{r}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(c.is_closed());
    assert!(matches!(c.get_max_gfn(), Err(ProtoError::Disconnected(_))));
    // Shrunk instead (24 -> 16): the reply is too short for VM_GET_INFO, and its last
    // 8 bytes read as a header with seq 0, never sent: closed on the spot.
    let (c, _sim) = setup(kvmi_sim::Abi::V7, |s| {
        s.faults.corrupt_frame = Some((2 + 41 + 14, 2, 0x08));
    });
    let r = c.get_guest_info();
    assert!(r.is_err(), "{r:?}");
    assert!(c.is_closed());
    assert!(matches!(c.get_max_gfn(), Err(ProtoError::Disconnected(_))));
}
