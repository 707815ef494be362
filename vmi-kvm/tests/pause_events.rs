//! Pause (ParkOps on PAUSE_VCPU), events and responses against kvmi-sim over a real
//! socket: what crossed the wire and what the tool saw, in kvmi-v7 and kvmi-v6.

mod common;

use common::*;
use kvmi_proto::sys;
use kvmi_sim::SimEvent;
use std::thread;
use std::time::Duration;
use vmi_core::event::{
    DescriptorTableReg, EmulReadData, RegisterAccess, RegisterFilter, RegisterId,
};
use vmi_core::{
    Action, Error, EventControl, EventKind, Monitor, ReadRegisters, RegisterGroups, Response,
    VcpuControl, VcpuId, VcpuSet, WriteRegisters,
};

const Z: Duration = Duration::ZERO;

fn cr3() -> Monitor {
    Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    }
}

fn pause_holds_vcpus_in_internal_events(abi: kvmi_sim::Abi) {
    let (vm, sim) = setup(abi, |_| {});
    let g = vm.pause().unwrap();
    assert!(vm.is_paused());
    assert_eq!(commands(&sim, sys::KVMI_VCPU_PAUSE), 2);
    let (sent, answered) = events(&sim, sys::KVMI_EVENT_PAUSE_VCPU);
    assert_eq!(
        (sent, answered),
        (2, 0),
        "both vCPUs held in their PAUSE_VCPU event"
    );
    // Nested pause: counted, nothing sent.
    let g2 = vm.pause().unwrap();
    assert_eq!(commands(&sim, sys::KVMI_VCPU_PAUSE), 2);
    // PAUSE_VCPU events are internal: the tool sees none.
    assert!(vm.wait_event(Z).unwrap().is_none());
    // Registers of parked vCPUs come from the PAUSE event: no GET_REGISTERS.
    let before = commands(&sim, sys::KVMI_VCPU_GET_REGISTERS);
    let regs = vm
        .registers(
            VcpuId(1),
            RegisterGroups::GPRS | RegisterGroups::CONTROL,
            &[],
        )
        .unwrap();
    assert_eq!(commands(&sim, sys::KVMI_VCPU_GET_REGISTERS), before);
    assert_eq!(regs.gprs.unwrap().rip, sim.vm().vcpus[1].regs.rip);
    // A write while paused is queued and goes out with the release.
    let mut w = regs.clone();
    w.control = None;
    w.gprs.as_mut().unwrap().rax = 0xfeed;
    vm.set_registers(VcpuId(1), &w).unwrap();
    assert_eq!(commands(&sim, sys::KVMI_VCPU_SET_REGISTERS), 0);
    drop(g2);
    assert_eq!(
        events(&sim, sys::KVMI_EVENT_PAUSE_VCPU).1,
        0,
        "still paused"
    );
    g.resume().unwrap();
    assert!(!vm.is_paused());
    assert!(eventually(
        || events(&sim, sys::KVMI_EVENT_PAUSE_VCPU).1 == 2
    ));
    assert_eq!(commands(&sim, sys::KVMI_VCPU_SET_REGISTERS), 1);
    assert_eq!(sim.vm().vcpus[1].regs.rax, 0xfeed);
    // On the wire, SET_REGISTERS precedes the PAUSE reply of vCPU 1.
    let t = sim.stats().transcript;
    let set = t
        .iter()
        .position(|r| !r.outgoing && r.id == sys::KVMI_VCPU_SET_REGISTERS);
    let last_reply = t
        .iter()
        .rposition(|r| !r.outgoing && r.event == Some(sys::KVMI_EVENT_PAUSE_VCPU));
    assert!(set.unwrap() < last_reply.unwrap());
}

#[test]
fn v7_pause_holds_vcpus_in_internal_events() {
    pause_holds_vcpus_in_internal_events(kvmi_sim::Abi::V7);
}

#[test]
fn v6_pause_holds_vcpus_in_internal_events() {
    pause_holds_vcpus_in_internal_events(kvmi_sim::Abi::V6);
}

#[test]
fn write_outside_events_parks_the_vcpu_for_it() {
    let (vm, sim) = v7();
    let mut r = vm.registers(VcpuId(0), RegisterGroups::GPRS, &[]).unwrap();
    r.gprs.as_mut().unwrap().rbx = 0xabcd;
    vm.set_registers(VcpuId(0), &r).unwrap();
    assert_eq!(sim.vm().vcpus[0].regs.rbx, 0xabcd);
    assert_eq!(
        commands(&sim, sys::KVMI_VCPU_PAUSE),
        1,
        "only vCPU 0 was paused"
    );
    assert!(eventually(
        || events(&sim, sys::KVMI_EVENT_PAUSE_VCPU) == (1, 1)
    ));
    // CR writes: refused before anything is sent.
    let mut c = vm
        .registers(VcpuId(0), RegisterGroups::CONTROL, &[])
        .unwrap();
    c.control.as_mut().unwrap().cr3 = 0;
    let e = vm.set_registers(VcpuId(0), &c).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_eq!(commands(&sim, sys::KVMI_VCPU_PAUSE), 1);
}

#[test]
fn per_vcpu_pause() {
    let (vm, sim) = v7();
    let g = vm.pause_vcpu(VcpuId(1)).unwrap();
    assert!(!vm.is_paused());
    assert_eq!(events(&sim, sys::KVMI_EVENT_PAUSE_VCPU), (1, 0));
    // vCPU 0 still runs and traps.
    vm.enable(&cr3()).unwrap();
    let h = thread::spawn({
        let old = sim.vm().vcpus[0].sregs.cr3;
        move || (old, ())
    });
    let (old, ()) = h.join().unwrap();
    let handle = sim
        .trigger(
            0,
            SimEvent::Cr {
                cr: 3,
                old,
                new: old + 0x1000,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(ev.vcpu, VcpuId(0));
    ev.reply(Response::continue_()).unwrap();
    handle.wait_reply(T).unwrap();
    drop(g);
    assert!(eventually(
        || events(&sim, sys::KVMI_EVENT_PAUSE_VCPU) == (1, 1)
    ));
    assert!(vm.pause_vcpu(VcpuId(7)).is_err());
}

fn cr_event_value_previous_override_deny(abi: kvmi_sim::Abi) {
    let (vm, sim) = setup(abi, |_| {});
    vm.enable(&cr3()).unwrap();
    assert!(sim.vm().vcpus.iter().all(|v| v.cr_intercepts.contains(&3)));
    let old = sim.vm().vcpus[1].sregs.cr3;
    let new = old + 0x1000;
    let h = sim.trigger(1, SimEvent::Cr { cr: 3, old, new }).unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(ev.vcpu, VcpuId(1));
    assert_eq!(
        ev.kind,
        EventKind::Register {
            register: RegisterId::Cr(3),
            access: RegisterAccess::Write,
            value: new,
            previous: Some(old)
        }
    );
    // In the event: registers from the event, no round trip.
    let before = commands(&sim, sys::KVMI_VCPU_GET_REGISTERS);
    use vmi_core::registers::msr;
    let groups = RegisterGroups::GPRS
        | RegisterGroups::CONTROL
        | RegisterGroups::SEGMENTS
        | RegisterGroups::DESCRIPTOR_TABLES
        | RegisterGroups::EFER
        | RegisterGroups::MSRS;
    let r = vm
        .registers(
            VcpuId(1),
            groups,
            &[msr::LSTAR, msr::STAR, msr::IA32_PAT, msr::KERNEL_GS_BASE],
        )
        .unwrap();
    assert_eq!(
        r.msrs.get(msr::LSTAR),
        Some(sim.vm().vcpus[1].msrs[&msr::LSTAR])
    );
    assert!(r.gprs.is_some() && r.segments.is_some());
    assert_eq!(commands(&sim, sys::KVMI_VCPU_GET_REGISTERS), before);
    ev.reply(Response::continue_().with_value(new + 0x2000))
        .unwrap();
    let rep = h.wait_reply(T).unwrap();
    assert_eq!(rep.new_val, Some(new + 0x2000));
    assert_eq!(rep.action, Some(sys::KVMI_EVENT_ACTION_CONTINUE));

    let h = sim.trigger(0, SimEvent::Cr { cr: 3, old, new }).unwrap();
    vm.wait_event(T)
        .unwrap()
        .unwrap()
        .reply(Response::deny())
        .unwrap();
    assert_eq!(
        h.wait_reply(T).unwrap().new_val,
        Some(old),
        "deny writes the old value"
    );

    // Read interception does not exist: refused before anything is sent.
    let sent = commands(&sim, sys::KVMI_VCPU_CONTROL_CR);
    let e = vm
        .enable(&Monitor::ControlRegister {
            cr: 0,
            access: RegisterAccess::Read,
            filter: RegisterFilter::default(),
        })
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_eq!(commands(&sim, sys::KVMI_VCPU_CONTROL_CR), sent);
    vm.disable(&cr3()).unwrap();
    assert!(sim.vm().vcpus.iter().all(|v| v.cr_intercepts.is_empty()));
    assert!(sim
        .vm()
        .vcpus
        .iter()
        .all(|v| !v.events.contains(&sys::KVMI_EVENT_CR)));
}

#[test]
fn v7_cr_event_value_previous_override_deny() {
    cr_event_value_previous_override_deny(kvmi_sim::Abi::V7);
}

#[test]
fn v6_cr_event_value_previous_override_deny() {
    cr_event_value_previous_override_deny(kvmi_sim::Abi::V6);
}

#[test]
fn msr_event_and_all_msrs() {
    let (vm, sim) = v7();
    let lstar = vmi_core::registers::msr::LSTAR;
    vm.enable(&Monitor::Msr {
        index: lstar,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    })
    .unwrap();
    let old = sim.vm().vcpus[0].msrs[&lstar];
    let h = sim
        .trigger(
            0,
            SimEvent::Msr {
                msr: lstar,
                old,
                new: 0x1234,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(
        ev.kind,
        EventKind::Register {
            register: RegisterId::Msr(lstar),
            access: RegisterAccess::Write,
            value: 0x1234,
            previous: Some(old)
        }
    );
    drop(ev); // dropped: answered with the default (the write goes through)
    assert_eq!(h.wait_reply(T).unwrap().new_val, Some(0x1234));

    vm.enable(&Monitor::AllMsrs {
        access: RegisterAccess::Write,
    })
    .unwrap();
    // Every MSR of KVM's bitmap ranges but the two ends the kernel refuses.
    let n = sim.vm().vcpus[1].msr_intercepts.len();
    assert_eq!(n, 2 * 0x2000 - 3);
    assert!(vmi_core::registers::msr::LIBVMI_MSR_ALL
        .iter()
        .all(|m| sim.vm().vcpus[1].msr_intercepts.contains(m)));
    let e = vm
        .enable(&Monitor::Msr {
            index: 0x4000_0000,
            access: RegisterAccess::Write,
            filter: RegisterFilter::default(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("§3"), "{e}");
}

fn breakpoint_continue_is_retry_reinject_is_continue(abi: kvmi_sim::Abi) {
    let (vm, sim) = setup(abi, |_| {});
    vm.enable(&Monitor::Interrupt(vmi_core::event::InterruptKind::Int3))
        .unwrap();
    let rip = sim.vm().vcpus[0].regs.rip;
    let h = sim
        .trigger(
            0,
            SimEvent::Breakpoint {
                gpa: 0x3456,
                insn_len: 1,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(
        ev.kind,
        EventKind::Breakpoint {
            gla: vmi_core::Gva(rip),
            gfn: vmi_core::Gfn(3),
            offset: 0x456,
            insn_length: 1
        }
    );
    ev.reply(Response::continue_()).unwrap();
    assert_eq!(
        h.wait_reply(T).unwrap().action,
        Some(sys::KVMI_EVENT_ACTION_RETRY)
    );
    let h = sim
        .trigger(
            0,
            SimEvent::Breakpoint {
                gpa: 0x3456,
                insn_len: 1,
            },
        )
        .unwrap();
    vm.wait_event(T)
        .unwrap()
        .unwrap()
        .reply(Response::reinject())
        .unwrap();
    assert_eq!(
        h.wait_reply(T).unwrap().action,
        Some(sys::KVMI_EVENT_ACTION_CONTINUE)
    );
}

#[test]
fn v7_breakpoint_continue_is_retry_reinject_is_continue() {
    breakpoint_continue_is_retry_reinject_is_continue(kvmi_sim::Abi::V7);
}

#[test]
fn v6_breakpoint_continue_is_retry_reinject_is_continue() {
    breakpoint_continue_is_retry_reinject_is_continue(kvmi_sim::Abi::V6);
}

#[test]
fn v7_singlestep_per_vcpu_and_toggle() {
    let (vm, sim) = v7();
    vm.enable(&Monitor::Singlestep(VcpuSet::single(VcpuId(1))))
        .unwrap();
    assert!(sim.vm().vcpus[1].singlestep && !sim.vm().vcpus[0].singlestep);
    let h = sim
        .trigger(1, SimEvent::Singlestep { failed: false })
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(
        matches!(ev.kind, EventKind::Singlestep { failed: false, .. }),
        "{:?}",
        ev.kind
    );
    // Toggle off with the answer: CONTROL_SINGLESTEP goes out before the reply.
    ev.reply(Response::continue_().toggle_singlestep()).unwrap();
    h.wait_reply(T).unwrap();
    assert!(!sim.vm().vcpus[1].singlestep);
    assert!(
        sim.trigger(1, SimEvent::Singlestep { failed: false })
            .is_err(),
        "disarmed"
    );
}

#[test]
fn v6_singlestep_is_refused_before_anything_is_sent() {
    let (vm, sim) = v6();
    let before = sim.stats().commands.values().sum::<u64>();
    let e = vm
        .enable(&Monitor::Singlestep(VcpuSet::single(VcpuId(0))))
        .unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(e.to_string().contains("§"), "{e}");
    assert_eq!(sim.stats().commands.values().sum::<u64>(), before);
}

#[test]
fn v7_cpuid_hypercall_descriptor_xsetbv() {
    let (vm, sim) = v7();
    for m in [
        Monitor::Cpuid,
        Monitor::Hypercall,
        Monitor::Descriptor,
        Monitor::Xsetbv,
    ] {
        vm.enable(&m).unwrap();
    }
    let h = sim
        .trigger(
            0,
            SimEvent::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 2,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(
        matches!(
            ev.kind,
            EventKind::Cpuid {
                leaf: 0x4000_0000,
                subleaf: 2,
                insn_length: 2
            }
        ),
        "{:?}",
        ev.kind
    );
    // A response the event kind cannot take is refused; the vCPU is answered anyway.
    let e = ev.reply(Response::deny()).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert_eq!(
        h.wait_reply(T).unwrap().action,
        Some(sys::KVMI_EVENT_ACTION_CONTINUE)
    );

    let h = sim.trigger(1, SimEvent::Hypercall).unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(
        matches!(ev.kind, EventKind::Hypercall { .. }),
        "{:?}",
        ev.kind
    );
    drop(ev);
    h.wait_reply(T).unwrap();

    for (code, want) in [
        (sys::KVMI_DESC_IDTR, DescriptorTableReg::Idtr),
        (sys::KVMI_DESC_GDTR, DescriptorTableReg::Gdtr),
        (sys::KVMI_DESC_LDTR, DescriptorTableReg::Ldtr),
        (sys::KVMI_DESC_TR, DescriptorTableReg::Tr),
    ] {
        let h = sim
            .trigger(
                0,
                SimEvent::Descriptor {
                    descriptor: code,
                    write: true,
                },
            )
            .unwrap();
        let ev = vm.wait_event(T).unwrap().unwrap();
        assert_eq!(
            ev.kind,
            EventKind::Descriptor {
                descriptor: want,
                is_write: true,
                exit_info: None
            },
            "LDTR and TR are not reported as IDTR"
        );
        ev.reply(Response::action(Action::Retry)).unwrap();
        assert_eq!(
            h.wait_reply(T).unwrap().action,
            Some(sys::KVMI_EVENT_ACTION_RETRY)
        );
    }

    sim.vm().vcpus[1].regs.rcx = 0;
    sim.vm().vcpus[1].regs.rax = 0x7;
    sim.vm().vcpus[1].regs.rdx = 0;
    let h = sim.trigger(1, SimEvent::Xsetbv { xcr0: 0x7 }).unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    let EventKind::Xsetbv {
        xcr: 0,
        new_value: 7,
        old_value,
    } = ev.kind
    else {
        panic!("{:?}", ev.kind)
    };
    assert_eq!(old_value, sim.vm().vcpus[1].xcr0);
    drop(ev);
    h.wait_reply(T).unwrap();
}

#[test]
fn v6_cpuid_is_refused() {
    let (vm, _sim) = v6();
    assert!(matches!(
        vm.enable(&Monitor::Cpuid),
        Err(Error::Unsupported { .. })
    ));
}

#[test]
fn memory_access_with_emulated_read_data() {
    let (vm, sim) = v7();
    vm.enable(&Monitor::MemoryAccess).unwrap();
    vmi_core::PageAccess::set_page_access(
        &vm,
        vmi_core::View::DEFAULT,
        vmi_core::Gfn(5),
        vmi_core::Access::RX,
    )
    .unwrap();
    let h = sim
        .trigger(
            0,
            SimEvent::Pf {
                gva: 0xffff_8880_0000_5010,
                gpa: 0x5010,
                access: sys::KVMI_PAGE_ACCESS_W,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(
        ev.kind,
        EventKind::MemoryAccess {
            gfn: vmi_core::Gfn(5),
            offset: 0x10,
            gla: Some(vmi_core::Gva(0xffff_8880_0000_5010)),
            access: vmi_core::Access::W,
            page_walk: false
        }
    );
    let data = EmulReadData::new(b"fool").unwrap();
    ev.reply(Response::action(Action::EmulateWithReadData(Box::new(
        data,
    ))))
    .unwrap();
    let pf = h.wait_reply(T).unwrap().pf.unwrap();
    assert_eq!(
        (pf.ctx_addr, &pf.ctx_data[..]),
        (0xffff_8880_0000_5010, &b"fool"[..])
    );
    vmi_core::PageAccess::set_page_access(
        &vm,
        vmi_core::View::DEFAULT,
        vmi_core::Gfn(5),
        vmi_core::Access::RWX,
    )
    .unwrap();
    assert!(sim.vm().page_access.is_empty());
}

#[test]
fn unhook_reaches_the_tool_and_dropping_closes() {
    let (vm, sim) = v7();
    // The session enabled UNHOOK at connect (sent, not waited for).
    assert!(eventually(|| sim
        .vm()
        .vm_events
        .contains(&sys::KVMI_EVENT_UNHOOK)));
    let t = thread::spawn(move || {
        let r = sim.unhook(T);
        (r.is_ok(), sim)
    });
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(ev.kind, EventKind::Unhook);
    assert!(vm.unhook_requested());
    assert_eq!(
        ev.registers,
        vmi_core::RegisterSnapshot::default(),
        "no vCPU state"
    );
    drop(ev);
    drop(vm);
    let (ok, sim) = t.join().unwrap();
    assert!(ok, "the simulator saw the socket close after UNHOOK");
    assert!(sim.closed().is_some());
}

#[test]
fn equal_filter_is_honoured_client_side() {
    let (vm, sim) = v7();
    let old = sim.vm().vcpus[0].sregs.cr3;
    vm.enable(&Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter {
            equal: Some(0x4000),
            ..RegisterFilter::default()
        },
    })
    .unwrap();
    // Another value: answered internally, the write goes through, the tool sees nothing.
    thread::scope(|s| {
        let t = s.spawn(|| {
            sim.trigger_and_wait(
                0,
                SimEvent::Cr {
                    cr: 3,
                    old,
                    new: 0x5000,
                },
            )
        });
        assert!(vm.wait_event(Duration::from_millis(300)).unwrap().is_none());
        assert_eq!(t.join().unwrap().unwrap().new_val, Some(0x5000));
    });
    let h = sim
        .trigger(
            0,
            SimEvent::Cr {
                cr: 3,
                old: 0x5000,
                new: 0x4000,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(matches!(ev.kind, EventKind::Register { value: 0x4000, .. }));
    ev.reply(Response::deny()).unwrap();
    assert_eq!(h.wait_reply(T).unwrap().new_val, Some(0x5000));
}

#[test]
fn zero_and_unbounded_waits() {
    let (vm, sim) = v7();
    vm.enable(&Monitor::Cpuid).unwrap();
    assert!(vm.wait_event(Z).unwrap().is_none());
    let h = sim
        .trigger(
            0,
            SimEvent::Cpuid {
                leaf: 1,
                subleaf: 0,
            },
        )
        .unwrap();
    // Duration::MAX waits without a deadline and does not overflow.
    let ev = vm.wait_event(Duration::MAX).unwrap().unwrap();
    assert!(matches!(ev.kind, EventKind::Cpuid { leaf: 1, .. }));
    drop(ev);
    h.wait_reply(T).unwrap();
    // A zero timeout still picks up an event that has arrived.
    let h = sim
        .trigger(
            1,
            SimEvent::Cpuid {
                leaf: 2,
                subleaf: 0,
            },
        )
        .unwrap();
    let got = (0..200).find_map(|_| {
        thread::sleep(Duration::from_millis(5));
        vm.wait_event(Z).unwrap()
    });
    assert!(matches!(
        got.unwrap().kind,
        EventKind::Cpuid { leaf: 2, .. }
    ));
    h.wait_reply(T).unwrap();
}

#[test]
fn v7_toggle_singlestep_on_from_another_event_delivers_the_steps() {
    let (vm, sim) = v7();
    vm.enable(&Monitor::Cpuid).unwrap();
    let h = sim
        .trigger(
            0,
            SimEvent::Cpuid {
                leaf: 0,
                subleaf: 0,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    ev.reply(Response::continue_().toggle_singlestep()).unwrap();
    h.wait_reply(T).unwrap();
    assert!(sim.vm().vcpus[0].singlestep);
    assert!(sim.vm().vcpus[0]
        .events
        .contains(&sys::KVMI_EVENT_SINGLESTEP));
    let h = sim
        .trigger(0, SimEvent::Singlestep { failed: false })
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(matches!(ev.kind, EventKind::Singlestep { .. }));
    ev.reply(Response::continue_().toggle_singlestep()).unwrap();
    h.wait_reply(T).unwrap();
    assert!(!sim.vm().vcpus[0].singlestep);
    vm.close().unwrap();
    assert!(
        sim.vm().vcpus[0].events.is_empty(),
        "teardown disabled the event too"
    );
}
