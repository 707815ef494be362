//! Page access, software breakpoints (with the step-over), TSC/MTRR/XSAVE/XCR0, host
//! translation, exception injection — and a teardown that leaves the simulated guest
//! clean — against kvmi-sim over a real socket.

mod common;

use common::*;
use kvmi_proto::sys;
use kvmi_sim::SimEvent;
use std::thread;
use std::time::Duration;
use vmi_core::cpu_state::{MemoryType, XsaveArea};
use vmi_core::event::{InterruptKind, RegisterAccess, RegisterFilter};
use vmi_core::{
    Access, Breakpoint, Breakpoints, Error, EventControl, EventKind, FaultInjection, Gfn, Gpa, Gva,
    HostTranslation, Monitor, Mtrr, PageAccess, Response, Tsc, VcpuControl, VcpuId, VcpuSet, View,
    Xsave,
};

#[test]
fn page_access_per_gfn_and_batched_ranges() {
    let (vm, sim) = setup(kvmi_sim::Abi::V7, |s| {
        for g in 0..3000 {
            s.memory.add_frame(g);
        }
    });
    vm.set_page_access(View::DEFAULT, Gfn(5), Access::RX)
        .unwrap();
    assert_eq!(
        sim.vm().page_access.get(&(0, 5)),
        Some(&(sys::KVMI_PAGE_ACCESS_R | sys::KVMI_PAGE_ACCESS_X))
    );
    assert_eq!(vm.page_access(View::DEFAULT, Gfn(5)).unwrap(), Access::RX);
    assert_eq!(vm.page_access(View::DEFAULT, Gfn(6)).unwrap(), Access::RWX);
    let before = commands(&sim, sys::KVMI_VM_SET_PAGE_ACCESS);
    vm.set_page_access_range(View::DEFAULT, Gfn(100)..Gfn(2600), Access::R)
        .unwrap();
    let per = vmi_kvm::slat::ENTRIES_PER_MESSAGE as u64;
    assert_eq!(
        commands(&sim, sys::KVMI_VM_SET_PAGE_ACCESS) - before,
        2500u64.div_ceil(per)
    );
    assert_eq!(sim.vm().page_access.len(), 2501);
    vm.set_page_access_range(View::DEFAULT, Gfn(100)..Gfn(2600), Access::RWX)
        .unwrap();
    assert_eq!(sim.vm().page_access.len(), 1);
    let e = vm
        .set_page_access(View(sys::KVM_MAX_EPT_VIEWS), Gfn(5), Access::R)
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e}");
}

/// Maps `gva` → `gpa` in 4-level tables at vCPU 0's CR3 inside the simulator.
fn map(sim: &kvmi_sim::Simulator, gva: u64, gpa: u64) {
    let mut vm = sim.vm();
    let cr3 = vm.vcpus[0].sregs.cr3;
    let mut next = 0x80_000u64;
    vm.memory.map_4level(cr3, gva, gpa, &mut next);
}

#[test]
fn breakpoint_at_a_virtual_address_steps_over_and_restores() {
    let (vm, sim) = v7();
    let (gva, gpa) = (0xffff_ffff_8100_0123u64, 0x7123u64);
    map(&sim, gva & !0xfff, gpa & !0xfff);
    sim.vm().memory.write(gpa, &[0x55]);
    vm.set_breakpoint(Breakpoint::at(Gva(gva))).unwrap();
    assert_eq!(sim.vm().memory.read(gpa, 1).unwrap(), [0xcc]);
    assert!(sim
        .vm()
        .vcpus
        .iter()
        .all(|v| v.events.contains(&sys::KVMI_EVENT_BREAKPOINT)));
    assert_eq!(vm.active_breakpoints(), vec![Breakpoint::at(Gva(gva))]);

    // Hit on vCPU 1, answered with "continue": RETRY, original byte back, stepping.
    let h = sim
        .trigger(1, SimEvent::Breakpoint { gpa, insn_len: 1 })
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(
        matches!(ev.kind, EventKind::Breakpoint { offset: 0x123, .. }),
        "{:?}",
        ev.kind
    );
    ev.reply(Response::continue_()).unwrap();
    assert_eq!(
        h.wait_reply(T).unwrap().action,
        Some(sys::KVMI_EVENT_ACTION_RETRY)
    );
    assert_eq!(sim.vm().memory.read(gpa, 1).unwrap(), [0x55]);
    assert!(sim.vm().vcpus[1].singlestep);
    // The step completes: internal, the tool sees nothing; 0xCC is back.
    thread::scope(|s| {
        let t = s.spawn(|| sim.trigger_and_wait(1, SimEvent::Singlestep { failed: false }));
        assert!(vm.wait_event(Duration::from_millis(300)).unwrap().is_none());
        t.join().unwrap().unwrap();
    });
    assert_eq!(sim.vm().memory.read(gpa, 1).unwrap(), [0xcc]);
    assert!(!sim.vm().vcpus[1].singlestep);
    assert!(!sim.vm().vcpus[1]
        .events
        .contains(&sys::KVMI_EVENT_SINGLESTEP));

    // Reinjection delivers #BP.
    let h = sim
        .trigger(0, SimEvent::Breakpoint { gpa, insn_len: 1 })
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

    vm.clear_breakpoint(Breakpoint::at(Gva(gva))).unwrap();
    assert_eq!(sim.vm().memory.read(gpa, 1).unwrap(), [0x55]);
    assert!(sim
        .vm()
        .vcpus
        .iter()
        .all(|v| !v.events.contains(&sys::KVMI_EVENT_BREAKPOINT)));
    // An unmapped address is a page fault, nothing written.
    let e = vm
        .set_breakpoint(Breakpoint::at(Gva(0xffff_ffff_9000_0000)))
        .unwrap_err();
    assert!(matches!(e, Error::PageFault { .. }), "{e}");
}

#[test]
fn tsc_mtrr_xsave_xcr0_translation() {
    let (vm, sim) = v7();
    let hz = sim.vm().vcpus[0].tsc_speed;
    assert_eq!(
        vm.tsc_info(VcpuId(0)).unwrap().gtsc_khz,
        Some((hz / 1000) as u32)
    );
    assert_eq!(vm.tsc_info(VcpuId(0)).unwrap().tsc_mode, None);
    assert_eq!(
        vm.mtrr_type(VcpuId(0), Gpa(0x1000)).unwrap(),
        MemoryType::WriteBack
    );
    assert_eq!(vm.xcr(VcpuId(1), 0).unwrap(), sim.vm().vcpus[1].xcr0);
    assert!(vm.xcr(VcpuId(1), 1).is_err());
    let mut area = vm.xsave(VcpuId(0)).unwrap();
    assert!(area.bytes.len() >= 576);
    area.bytes[0] = 0x7f;
    vm.set_xsave(
        VcpuId(0),
        &XsaveArea {
            bytes: area.bytes.clone(),
        },
    )
    .unwrap();
    assert_eq!(vm.xsave(VcpuId(0)).unwrap().bytes[0], 0x7f);
    map(&sim, 0xffff_8000_0000_0000, 0x9000);
    assert_eq!(
        vm.translate_gva(VcpuId(0), Gva(0xffff_8000_0000_0042))
            .unwrap(),
        Gpa(0x9042)
    );
    let e = vm.translate_gva(VcpuId(0), Gva(0x1234_5000)).unwrap_err();
    assert!(matches!(e, Error::PageFault { .. }), "{e}");
}

#[test]
fn v6_limits_of_cpu_state() {
    let (vm, _sim) = v6();
    assert!(matches!(
        vm.xcr(VcpuId(0), 0),
        Err(Error::Unsupported { .. })
    ));
    assert!(matches!(
        vm.translate_gva(VcpuId(0), Gva(0)),
        Err(Error::Unsupported { .. })
    ));
    assert!(vm.tsc_info(VcpuId(0)).unwrap().gtsc_khz.is_some());
}

#[test]
fn injected_fault_trap_is_internal_unless_monitored() {
    let (vm, sim) = v7();
    vm.inject_page_fault(VcpuId(0), Gva(0x4000), 2).unwrap();
    // The TRAP that follows is answered without reaching the tool.
    thread::scope(|s| {
        s.spawn(|| assert!(vm.wait_event(Duration::from_millis(300)).unwrap().is_none()));
    });
    assert!(eventually(|| events(&sim, sys::KVMI_EVENT_TRAP) == (1, 1)));
    vm.enable(&Monitor::Trap).unwrap();
    vm.inject_exception(VcpuId(1), 13, Some(0), 0).unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(
        matches!(
            ev.kind,
            EventKind::Trap {
                vector: 13,
                error_code: Some(0),
                ..
            }
        ),
        "{:?}",
        ev.kind
    );
    drop(ev);
    assert!(eventually(|| events(&sim, sys::KVMI_EVENT_TRAP) == (2, 2)));
    assert!(vm.inject_exception(VcpuId(0), 40, None, 0).is_err());
}

#[test]
fn teardown_leaves_no_intercept_restriction_pause_or_singlestep() {
    let (vm, sim) = v7();
    let cr3 = Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    };
    for m in [
        cr3.clone(),
        Monitor::AllMsrs {
            access: RegisterAccess::Write,
        },
        Monitor::Singlestep(VcpuSet::first(2)),
        Monitor::Cpuid,
        Monitor::Descriptor,
        Monitor::MemoryAccess,
        Monitor::VcpuCreate,
        Monitor::Interrupt(InterruptKind::Int3),
    ] {
        vm.enable(&m).unwrap();
    }
    vm.set_page_access_range(View::DEFAULT, Gfn(10)..Gfn(20), Access::R)
        .unwrap();
    sim.vm().memory.write(0x2000, &[0x90]);
    vm.set_breakpoint(Breakpoint::physical(Gpa(0x2000)))
        .unwrap();
    // A CR event the tool still holds when the session goes.
    let old = sim.vm().vcpus[1].sregs.cr3;
    let h = sim
        .trigger(
            1,
            SimEvent::Cr {
                cr: 3,
                old,
                new: old + 0x1000,
            },
        )
        .unwrap();
    let held = vm.wait_event(T).unwrap().unwrap();
    let pause = vm.pause_vcpu(VcpuId(0)).unwrap();
    std::mem::forget(pause); // even a leaked pause guard does not outlive the session
    {
        let v = &sim.vm().vcpus[0];
        assert!(!v.events.is_empty() && v.singlestep && !v.cr_intercepts.is_empty());
    }
    vm.close().unwrap();
    // The held event was answered by the teardown, with the default (write goes through).
    assert_eq!(h.wait_reply(T).unwrap().new_val, Some(old + 0x1000));
    drop(held); // inert now
    assert!(sim.wait_closed(T).is_ok());
    let g = sim.vm();
    for v in &g.vcpus {
        assert!(v.events.is_empty(), "{:?}", v.events);
        assert!(v.cr_intercepts.is_empty() && v.msr_intercepts.is_empty());
        assert!(!v.singlestep);
        assert_eq!(v.pause_requests, 0);
    }
    assert!(g.vm_events.is_empty());
    assert!(g.page_access.is_empty(), "{:?}", g.page_access);
    assert_eq!(g.memory.read(0x2000, 1).unwrap(), [0x90]);
    drop(g);
    let (sent, answered) = events(&sim, sys::KVMI_EVENT_PAUSE_VCPU);
    assert_eq!(sent, answered, "no vCPU left in a PAUSE_VCPU event");
}

#[test]
fn ept_views_switch_remap_restrict_and_teardown() {
    use vmi_core::Backend;
    let (vm, sim) = v7();
    let slat = vm.slat_views().expect("kvmi-v7 with EPTP switching");
    assert!(slat.views_supported().unwrap());
    let view = slat.create_view().unwrap();
    assert_ne!(view, View::DEFAULT);
    slat.switch_view(VcpuId(1), view).unwrap();
    assert_eq!(sim.vm().vcpus[1].view, view.0);
    assert_eq!(slat.current_view(VcpuId(1)).unwrap(), view);
    vm.set_page_access(view, Gfn(5), Access::RX).unwrap();
    assert!(sim.vm().page_access.contains_key(&(view.0, 5)));
    slat.change_gfn(view, Gfn(5), Gfn(6)).unwrap();
    assert_eq!(sim.vm().gfn_remap.get(&(view.0, 5)), Some(&6));
    // A view switch in an event's answer: SET_EPT_VIEW before the reply.
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
    vm.wait_event(T)
        .unwrap()
        .unwrap()
        .reply(Response::continue_().with_view(view))
        .unwrap();
    h.wait_reply(T).unwrap();
    assert_eq!(sim.vm().vcpus[0].view, view.0);
    assert!(slat.destroy_view(View::DEFAULT).is_err());
    vm.close().unwrap();
    let g = sim.vm();
    assert!(g.vcpus.iter().all(|v| v.view == 0));
    assert!(g.gfn_remap.is_empty() && g.page_access.is_empty());
    assert_eq!(g.views.len(), 1, "created views destroyed: {:?}", g.views);
}

#[test]
fn v6_has_no_views() {
    use vmi_core::Backend;
    let (vm, _sim) = v6();
    assert!(vm.slat_views().is_none());
    assert!(vm.set_page_access(View(1), Gfn(5), Access::R).is_err());
}

#[test]
fn teardown_during_a_step_over_disarms_singlestep() {
    let (vm, sim) = v7();
    sim.vm().memory.write(0x2100, &[0x90]);
    vm.set_breakpoint(Breakpoint::physical(Gpa(0x2100)))
        .unwrap();
    let h = sim
        .trigger(
            0,
            SimEvent::Breakpoint {
                gpa: 0x2100,
                insn_len: 1,
            },
        )
        .unwrap();
    vm.wait_event(T)
        .unwrap()
        .unwrap()
        .reply(Response::continue_())
        .unwrap();
    h.wait_reply(T).unwrap();
    assert!(sim.vm().vcpus[0].singlestep, "stepping over");
    vm.close().unwrap();
    let g = sim.vm();
    assert!(!g.vcpus[0].singlestep);
    assert!(g.vcpus[0].events.is_empty(), "{:?}", g.vcpus[0].events);
    assert_eq!(g.memory.read(0x2100, 1).unwrap(), [0x90]);
}

#[test]
fn guest_frames_are_allocated_and_freed_on_the_host() {
    use vmi_core::GfnAllocation;
    let (vm, sim) = v7();
    let next = vm.next_available_gfn().unwrap();
    assert!(!sim.vm().memory.is_backed(next.raw()), "{next} is free");
    assert!(
        next.raw() >= sim.vm().memory.max_gfn,
        "the first free frame is past the guest's RAM"
    );
    vm.alloc_gfn(next).unwrap();
    assert!(
        sim.vm().memory.is_backed(next.raw()),
        "allocated on the host"
    );
    assert_eq!(commands(&sim, sys::KVMI_VCPU_ALLOC_GFN), 1);
    // The next free frame moves past it; allocating it twice is refused by the host.
    assert!(vm.next_available_gfn().unwrap().raw() > next.raw());
    assert!(vm.alloc_gfn(next).is_err());
    vm.free_gfn(next).unwrap();
    assert!(!sim.vm().memory.is_backed(next.raw()), "freed on the host");
    assert!(vm.free_gfn(next).is_err(), "a second free is refused");
}
