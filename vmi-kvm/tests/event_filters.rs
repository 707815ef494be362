//! Event filtering the host cannot do and the backend does itself — breakpoints limited
//! to one address space, MSR_ALL over every interceptable MSR, `on_change` and
//! asynchronous register events — against kvmi-sim over a real socket, its built-in
//! workload executing the guest.

mod common;

use common::*;
use kvmi_proto::sys;
use kvmi_sim::guest;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;
use vmi_core::event::RegisterAccess;
use vmi_core::{Breakpoint, Breakpoints, EventControl, EventKind, Gpa, Gva, Monitor, Response};

/// Runs the simulator's workload `rounds` times on a thread while the tool answers
/// every event with `handle`; returns once the workload is done and nothing is left.
fn drive(
    vm: &vmi_kvm::KvmiVm,
    sim: &kvmi_sim::Simulator,
    rounds: usize,
    mut handle: impl FnMut(&vmi_core::Event) -> Response,
) {
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let t = s.spawn(|| {
            for _ in 0..rounds {
                let r = sim.run_workload(kvmi_sim::Workload::EveryEnabledEvent);
                assert!(r.failed.is_empty(), "{:?}", r.failed);
            }
            done.store(true, Ordering::SeqCst);
        });
        loop {
            let finished = done.load(Ordering::SeqCst);
            match vm.wait_event(Duration::from_millis(20)).unwrap() {
                Some(ev) => {
                    let r = handle(ev.event());
                    ev.reply(r).unwrap();
                }
                None if finished => break,
                None => {}
            }
        }
        t.join().unwrap();
    });
}

#[test]
fn breakpoint_in_one_address_space_is_stepped_over_in_the_others() {
    let (vm, sim) = v7();
    let bp = Breakpoint::in_space(Gva(guest::SYM_BP_TARGET), Gpa(guest::KERNEL_CR3));
    vm.set_breakpoint(bp).unwrap();
    assert_eq!(
        sim.vm().memory.read(guest::SYM_BP_TARGET_PA, 1).unwrap(),
        [0xcc]
    );
    // CR3 writes make the workload switch every vCPU between the kernel's and the
    // user process's address space before each call of the breakpointed function.
    vm.enable(&Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: Default::default(),
    })
    .unwrap();
    let (mut ours, mut guests, mut steps_seen) = (0u64, 0u64, 0u64);
    drive(&vm, &sim, 6, |ev| match ev.kind {
        EventKind::Breakpoint { gfn, offset, .. }
            if (gfn.0 << 12) + offset == guest::SYM_BP_TARGET_PA =>
        {
            let cr3 = ev.registers.control.unwrap().cr3;
            assert_eq!(cr3 & 0x000f_ffff_ffff_f000, guest::KERNEL_CR3, "{ev:?}");
            ours += 1;
            Response::continue_()
        }
        EventKind::Breakpoint { .. } => {
            guests += 1; // the guest's own INT3 self-test: not ours, delivered
            Response::reinject()
        }
        EventKind::Singlestep { .. } => {
            steps_seen += 1;
            Response::continue_()
        }
        _ => Response::continue_(),
    });
    let (sent, replied) = events(&sim, sys::KVMI_EVENT_BREAKPOINT);
    assert_eq!(sent, replied);
    // 6 rounds × 2 vCPUs, every vCPU alternating: half the calls in each space.
    assert_eq!(ours, 6);
    assert_eq!(guests, 12);
    assert_eq!(
        sent - ours - guests,
        6,
        "hits in the user space, stepped over"
    );
    // Each hidden hit was stepped over (internal SINGLESTEP) like an answered one.
    assert_eq!(steps_seen, 0);
    let (steps, step_replies) = events(&sim, sys::KVMI_EVENT_SINGLESTEP);
    assert_eq!((steps, step_replies), (12, 12));
    assert_eq!(
        sim.vm().memory.read(guest::SYM_BP_TARGET_PA, 1).unwrap(),
        [0xcc]
    );
    assert!(sim.vm().vcpus.iter().all(|v| !v.singlestep));

    // A second breakpoint on the same byte for the other space: every hit is shown,
    // and clearing one keeps the byte for the other.
    let user = Breakpoint::in_space(Gva(guest::SYM_BP_TARGET), Gpa(guest::USER_CR3));
    vm.set_breakpoint(user).unwrap();
    assert_eq!(vm.active_breakpoints().len(), 2);
    let mut shown = 0u64;
    drive(&vm, &sim, 2, |ev| match ev.kind {
        EventKind::Breakpoint { gfn, offset, .. }
            if (gfn.0 << 12) + offset == guest::SYM_BP_TARGET_PA =>
        {
            shown += 1;
            Response::continue_()
        }
        EventKind::Breakpoint { .. } => Response::reinject(),
        _ => Response::continue_(),
    });
    assert_eq!(shown, 4);
    vm.clear_breakpoint(bp).unwrap();
    assert_eq!(vm.active_breakpoints(), vec![user]);
    assert_eq!(
        sim.vm().memory.read(guest::SYM_BP_TARGET_PA, 1).unwrap(),
        [0xcc]
    );
    vm.clear_breakpoint(user).unwrap();
    assert_eq!(
        sim.vm().memory.read(guest::SYM_BP_TARGET_PA, 1).unwrap(),
        [0x55]
    );
}

#[test]
fn v6_reports_space_limited_breakpoints_as_partial() {
    let (vm, _sim) = v6();
    let row = vm
        .capability_report()
        .get(vmi_core::Capability::SoftwareBreakpoints)
        .clone();
    assert!(matches!(row, vmi_core::Support::Partial(_)), "{row:?}");
}

fn all_msrs_cover_every_msr_the_host_accepts(abi: kvmi_sim::Abi) {
    let (vm, sim) = setup(abi, |_| {});
    let lstar = 0xc000_0082;
    vm.enable(&Monitor::Msr {
        index: lstar,
        access: RegisterAccess::Write,
        filter: Default::default(),
    })
    .unwrap();
    let vcpus = sim.vm().vcpus.len() as u64;
    let before = commands(&sim, sys::KVMI_VCPU_CONTROL_MSR);
    let started = std::time::Instant::now();
    vm.enable(&Monitor::AllMsrs {
        access: RegisterAccess::Write,
    })
    .unwrap();
    eprintln!(
        "MSR_ALL enable on {vcpus} vCPUs: {:?} (informational)",
        started.elapsed()
    );
    // Every index of both ranges tried once per vCPU (LSTAR was intercepted already).
    assert_eq!(
        commands(&sim, sys::KVMI_VCPU_CONTROL_MSR) - before,
        vcpus * (2 * 0x2000 - 1)
    );
    for v in &sim.vm().vcpus {
        // The kernel's strict bounds refuse 0x1fff, 0xc0000000 and 0xc0001fff.
        assert_eq!(v.msr_intercepts.len(), 2 * 0x2000 - 3);
        for m in [0, 0x1ffe, 0xc000_0001, 0xc000_1ffe, lstar] {
            assert!(v.msr_intercepts.contains(&m), "{m:#x}");
        }
        for m in [0x1fff, 0xc000_0000, 0xc000_1fff] {
            assert!(!v.msr_intercepts.contains(&m), "{m:#x}");
        }
    }
    // An MSR far outside LibVMI's list is reported.
    let h = sim
        .trigger(
            1,
            kvmi_sim::SimEvent::Msr {
                msr: 0x1ffe,
                old: 1,
                new: 2,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(
        ev.kind,
        EventKind::Register {
            register: vmi_core::event::RegisterId::Msr(0x1ffe),
            access: RegisterAccess::Write,
            value: 2,
            previous: Some(1),
        }
    );
    ev.reply(Response::continue_()).unwrap();
    h.wait_reply(T).unwrap();

    // Disabling undoes exactly what MSR_ALL added: LSTAR's own monitor stays.
    vm.disable(&Monitor::AllMsrs {
        access: RegisterAccess::Write,
    })
    .unwrap();
    for v in &sim.vm().vcpus {
        assert_eq!(
            v.msr_intercepts.iter().copied().collect::<Vec<_>>(),
            [lstar]
        );
        assert!(v.events.contains(&sys::KVMI_EVENT_MSR));
    }
    // And the teardown undoes all of it.
    vm.enable(&Monitor::AllMsrs {
        access: RegisterAccess::Write,
    })
    .unwrap();
    drop(vm);
    for v in &sim.vm().vcpus {
        assert!(v.msr_intercepts.is_empty());
        assert!(!v.events.contains(&sys::KVMI_EVENT_MSR));
    }
}

#[test]
fn v7_all_msrs_cover_every_msr_the_host_accepts() {
    all_msrs_cover_every_msr_the_host_accepts(kvmi_sim::Abi::V7);
}

#[test]
fn v6_all_msrs_cover_every_msr_the_host_accepts() {
    all_msrs_cover_every_msr_the_host_accepts(kvmi_sim::Abi::V6);
}

fn msr_monitor(index: u32, filter: vmi_core::event::RegisterFilter) -> Monitor {
    Monitor::Msr {
        index,
        access: RegisterAccess::Write,
        filter,
    }
}

/// Triggers an MSR write `old` → `new` on vCPU 0 whose frame reaches the tool with
/// the new value's low byte XORed with `mask` (a host reporting a different value).
fn msr_write_seen_as(
    sim: &kvmi_sim::Simulator,
    msr: u32,
    old: u64,
    new: u64,
    mask: u8,
) -> kvmi_sim::EventHandle {
    if mask != 0 {
        // The frame: header, the common event part, then the MSR part (new_value @ 16).
        let offset = sys::MSG_HDR_SIZE + std::mem::size_of::<sys::Event>() + 16;
        sim.arm_fault(kvmi_sim::Fault::CorruptNext { offset, mask });
    }
    sim.trigger(0, kvmi_sim::SimEvent::Msr { msr, old, new })
        .unwrap()
}

#[test]
fn on_change_hides_writes_that_keep_the_value() {
    let (vm, sim) = v7();
    let lstar = 0xc000_0082;
    let on_change = vmi_core::event::RegisterFilter {
        on_change: true,
        ..Default::default()
    };
    vm.enable(&msr_monitor(lstar, on_change)).unwrap();
    // A changing write is shown.
    let h = msr_write_seen_as(&sim, lstar, 0x10, 0x20, 0);
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(
        matches!(
            ev.kind,
            EventKind::Register {
                value: 0x20,
                previous: Some(0x10),
                ..
            }
        ),
        "{:?}",
        ev.kind
    );
    ev.reply(Response::continue_()).unwrap();
    assert_eq!(h.wait_reply(T).unwrap().new_val, Some(0x20));
    // The kernel (and the simulator) report only changing writes; a host reporting a
    // write of the value the MSR holds (0x30 arrives as 0x10) is answered internally.
    let h = msr_write_seen_as(&sim, lstar, 0x10, 0x30, 0x20);
    assert!(vm.wait_event(Duration::from_millis(300)).unwrap().is_none());
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_CONTINUE));
    assert_eq!(
        r.new_val,
        Some(0x10),
        "the write goes on with the reported value"
    );
    // Without on_change the same write is the tool's.
    vm.disable(&msr_monitor(lstar, on_change)).unwrap();
    vm.enable(&msr_monitor(lstar, Default::default())).unwrap();
    let h = msr_write_seen_as(&sim, lstar, 0x10, 0x30, 0x20);
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert!(
        matches!(
            ev.kind,
            EventKind::Register {
                value: 0x10,
                previous: Some(0x10),
                ..
            }
        ),
        "{:?}",
        ev.kind
    );
    drop(ev);
    h.wait_reply(T).unwrap();
    assert_eq!(events(&sim, sys::KVMI_EVENT_MSR), (3, 3));
}

#[test]
fn asynchronous_events_are_answered_before_the_tool_sees_them() {
    use vmi_core::{ReadRegisters, RegisterGroups, VcpuId, WriteRegisters};
    let (vm, sim) = v7();
    let lstar = 0xc000_0082;
    let asynchronous = vmi_core::event::RegisterFilter {
        asynchronous: true,
        ..Default::default()
    };
    vm.enable(&msr_monitor(lstar, asynchronous)).unwrap();
    let rip = sim.vm().vcpus[0].regs.rip;
    thread::scope(|s| {
        // The vCPU's write completes while the tool has not even looked.
        let t = s.spawn(|| {
            sim.trigger_and_wait(
                0,
                kvmi_sim::SimEvent::Msr {
                    msr: lstar,
                    old: 0x10,
                    new: 0x20,
                },
            )
        });
        let ev = vm.wait_event(T).unwrap().unwrap();
        let r = t.join().unwrap().unwrap();
        assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_CONTINUE));
        assert_eq!(r.new_val, Some(0x20));
        assert_eq!(events(&sim, sys::KVMI_EVENT_MSR), (1, 1));
        assert_eq!(
            ev.kind,
            EventKind::Register {
                register: vmi_core::event::RegisterId::Msr(lstar),
                access: RegisterAccess::Write,
                value: 0x20,
                previous: Some(0x10),
            }
        );
        // The registers at the write travel with the event.
        assert_eq!(ev.registers.gprs.unwrap().rip, rip);
        // The vCPU is not parked by it: reads go to the host, writes pause it.
        let before = commands(&sim, sys::KVMI_VCPU_GET_REGISTERS);
        let mut regs = vm.registers(VcpuId(0), RegisterGroups::GPRS, &[]).unwrap();
        assert_eq!(commands(&sim, sys::KVMI_VCPU_GET_REGISTERS), before + 1);
        regs.gprs.as_mut().unwrap().rbx = 0xabcd;
        vm.set_registers(VcpuId(0), &regs).unwrap();
        assert_eq!(sim.vm().vcpus[0].regs.rbx, 0xabcd);
        assert_eq!(commands(&sim, sys::KVMI_VCPU_PAUSE), 1);
        // The answer is ignored: nothing more crosses the wire.
        let sent = sim.stats().commands.values().sum::<u64>();
        ev.reply(Response::deny()).unwrap();
        assert_eq!(sim.stats().commands.values().sum::<u64>(), sent);
        assert_eq!(events(&sim, sys::KVMI_EVENT_MSR), (1, 1));
    });
    // A synchronous monitor of another MSR still holds its vCPU.
    vm.enable(&msr_monitor(0x174, Default::default())).unwrap();
    let h = sim
        .trigger(
            1,
            kvmi_sim::SimEvent::Msr {
                msr: 0x174,
                old: 1,
                new: 2,
            },
        )
        .unwrap();
    let ev = vm.wait_event(T).unwrap().unwrap();
    assert_eq!(events(&sim, sys::KVMI_EVENT_MSR), (2, 1));
    ev.reply(Response::deny()).unwrap();
    assert_eq!(h.wait_reply(T).unwrap().new_val, Some(1));
    let row = vm
        .capability_report()
        .get(vmi_core::Capability::EventRegisterAsync)
        .clone();
    assert!(matches!(row, vmi_core::Support::Partial(_)), "{row:?}");
}

fn unhook_tears_the_session_down_once_answered(abi: kvmi_sim::Abi) {
    let (vm, sim) = setup(abi, |_| {});
    // Enabled by the session itself (sent at setup, not waited for): QEMU's unhook
    // reaches the tool.
    assert!(eventually(|| sim
        .vm()
        .vm_events
        .contains(&sys::KVMI_EVENT_UNHOOK)));
    vm.enable(&Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: Default::default(),
    })
    .unwrap();
    thread::scope(|s| {
        let t = s.spawn(|| sim.unhook(T));
        let ev = vm.wait_event(T).unwrap().unwrap();
        assert_eq!(ev.kind, EventKind::Unhook);
        // The tool may still clean up while it holds the event.
        assert!(sim.closed().is_none());
        assert!(sim.vm().vcpus.iter().all(|v| v.cr_intercepts.contains(&3)));
        ev.reply(Response::continue_()).unwrap();
        // The next wait tears the session down, although the tool keeps it.
        let e = vm.wait_event(T).unwrap_err();
        assert!(matches!(e, vmi_core::Error::Disconnected { .. }), "{e}");
        assert!(e.to_string().contains("unhook"), "{e}");
        t.join().unwrap().unwrap();
    });
    assert!(sim.closed().is_some(), "the simulator saw the socket close");
    assert!(sim
        .vm()
        .vcpus
        .iter()
        .all(|v| v.cr_intercepts.is_empty() && !v.events.contains(&sys::KVMI_EVENT_CR)));
    assert!(sim.vm().vm_events.is_empty());
    // Later calls keep failing the same way; closing again is a no-op.
    assert!(vm.wait_event(Duration::ZERO).is_err());
    vm.close().unwrap();
}

#[test]
fn v7_unhook_tears_the_session_down_once_answered() {
    unhook_tears_the_session_down_once_answered(kvmi_sim::Abi::V7);
}

#[test]
fn v6_unhook_tears_the_session_down_once_answered() {
    unhook_tears_the_session_down_once_answered(kvmi_sim::Abi::V6);
}
