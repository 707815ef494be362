//! The capability report against the backend: accessors, monitors and responses.

use vmi_core::event::{InterruptKind, RegisterAccess, RegisterFilter, VcpuSet};
use vmi_core::registers::msr;
use vmi_core::{
    Backend, Breakpoint, Capability as C, Error, EventKind, Monitor, Response, VcpuId, View,
};

use super::{
    assert_no_event, breakpoints_of, drain, next_event, next_hit, truth_bytes, wait_progress,
    ConformanceTarget,
};

/// Every row reads as supported or not (undeclared rows as unsupported), and each part
/// of the backend is there exactly when its rows say it works; the parts that are there
/// answer.
pub fn rows_agree_with_accessors<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    assert_eq!(caps.rows().count(), C::ALL.len(), "every row, once");
    assert!(!vm.name().is_empty());
    let text = caps.to_string();
    assert!(text.contains(C::ReadPhysicalMemory.name()), "{text}");
    let yes = |c| caps.is_supported(c);
    let parts: [(&str, bool, bool); 9] = [
        (
            "memory writer",
            vm.physical_memory_writer().is_some(),
            yes(C::WritePhysicalMemory),
        ),
        (
            "memory layout",
            vm.memory_layout().is_some(),
            yes(C::MemorySize),
        ),
        (
            "memory mapping",
            vm.memory_mapping().is_some(),
            yes(C::GuestMemoryMapping),
        ),
        (
            "register reader",
            vm.register_reader().is_some(),
            yes(C::ReadGprs),
        ),
        (
            "vCPU control",
            vm.vcpu_control().is_some(),
            yes(C::PauseResume),
        ),
        (
            "breakpoints",
            vm.breakpoints().is_some(),
            yes(C::SoftwareBreakpoints),
        ),
        ("SLAT views", vm.slat_views().is_some(), yes(C::Slat)),
        ("MTRR", vm.mtrr().is_some(), yes(C::Mtrr)),
        ("XSAVE", vm.xsave().is_some(), yes(C::Xsave)),
    ];
    for (part, present, row) in parts {
        assert_eq!(
            present, row,
            "{part}: present {present}, report says {row}\n{caps}"
        );
    }
    let any_event = C::ALL
        .iter()
        .any(|c| c.name().starts_with("event:") && caps.is_supported(*c));
    if !any_event {
        assert!(
            vm.events().is_none()
                || event_monitors()
                    .iter()
                    .all(|m| caps.check_monitor(m).is_err())
        );
    } else {
        assert!(
            vm.events().is_some(),
            "event rows supported, no event control\n{caps}"
        );
    }
    if yes(C::HostTranslateGva) {
        assert!(vm.host_translation().is_some(), "host translation\n{caps}");
    }

    // The parts that are there answer.
    if let Some(layout) = vm.memory_layout() {
        let info = layout.memory_info().expect("memory_info");
        let (gpa, want) = t.known_bytes();
        assert!(
            info.ranges
                .iter()
                .any(|r| r.contains(gpa, want.len() as u64)),
            "the known bytes at {gpa} are in the layout's RAM: {info:x?}"
        );
    }
    if let Some(map) = vm.memory_mapping() {
        let regions = map.mapped_regions().expect("mapped_regions");
        let (gpa, want) = t.known_bytes();
        let region = regions
            .iter()
            .find(|r| r.gpa().0 <= gpa.0 && gpa.0 + want.len() as u64 <= r.gpa().0 + r.len() as u64)
            .unwrap_or_else(|| panic!("no mapped region holds {gpa}"));
        let mut got = vec![0u8; want.len()];
        region
            .read(gpa, &mut got)
            .expect("reading the mapped region");
        assert_eq!(got, want, "the mapped region's bytes");
    }
    if let Some(vcpus) = vm.vcpu_control() {
        let n = vcpus.vcpu_count().expect("vcpu_count");
        assert!(n >= 1);
    }
    if let Some(x) = vm.xsave() {
        // Partial support is at least reading the area; full support reads XCR0 too.
        x.xsave(VcpuId(0)).expect("the XSAVE area");
        if *caps.get(C::Xsave) == vmi_core::Support::Supported {
            let xcr0 = x.xcr(VcpuId(0), 0).expect("XCR0");
            assert!(xcr0 & 1 == 1, "XCR0 always has x87: {xcr0:#x}");
        }
    }
    if let Some(m) = vm.mtrr() {
        m.mtrr_type(VcpuId(0), t.known_bytes().0)
            .expect("MTRR type");
    }
    t.close(vm);
}

/// One monitor of each kind (and the register filters).
fn event_monitors() -> Vec<Monitor> {
    let write = RegisterAccess::Write;
    let plain = RegisterFilter::default();
    vec![
        Monitor::ControlRegister {
            cr: 3,
            access: write,
            filter: plain,
        },
        Monitor::ControlRegister {
            cr: 0,
            access: RegisterAccess::Read,
            filter: plain,
        },
        Monitor::ControlRegister {
            cr: 4,
            access: write,
            filter: RegisterFilter {
                equal: Some(0),
                on_change: true,
                asynchronous: false,
            },
        },
        Monitor::ControlRegister {
            cr: 4,
            access: write,
            filter: RegisterFilter {
                asynchronous: true,
                ..plain
            },
        },
        Monitor::Msr {
            index: msr::LSTAR,
            access: write,
            filter: plain,
        },
        Monitor::AllMsrs { access: write },
        Monitor::Xsetbv,
        Monitor::Interrupt(InterruptKind::Int3),
        Monitor::Interrupt(InterruptKind::Next),
        Monitor::Singlestep(VcpuSet::single(VcpuId(0))),
        Monitor::Cpuid,
        Monitor::Hypercall,
        Monitor::Descriptor,
        Monitor::DebugException,
        Monitor::MemoryAccess,
        Monitor::Trap,
        Monitor::VcpuCreate,
    ]
}

/// Every monitor the report cannot honour is refused with [`Error::Unsupported`] and no
/// request reaches the guest; every one it can is enabled and disabled (single steps,
/// which stop the guest at once, have their own case).
pub fn unsupported_monitors_are_refused<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    let Some(events) = vm.events() else {
        t.close(vm);
        return;
    };
    let mut refused = 0;
    for m in event_monitors() {
        let before = t.requests(&vm);
        match caps.check_monitor(&m) {
            Err(_) => {
                match events.enable(&m) {
                    Err(Error::Unsupported { .. }) => {}
                    other => panic!("{m:?}, unsupported by the report: {other:?}"),
                }
                assert_eq!(t.requests(&vm), before, "the refused {m:?} sent requests");
                refused += 1;
            }
            Ok(()) if matches!(m, Monitor::Singlestep(_)) => {}
            Ok(()) => {
                events
                    .enable(&m)
                    .unwrap_or_else(|e| panic!("{m:?}, supported by the report: {e}"));
                events
                    .disable(&m)
                    .unwrap_or_else(|e| panic!("disabling {m:?}: {e}"));
            }
        }
    }
    eprintln!(
        "{}: {refused} monitors refused as the report says",
        vm.name()
    );
    drain(events);
    let from = t.progress();
    wait_progress(t, from, "after the monitors");
    t.close(vm);
}

/// Responses to a breakpoint hit: each one the report cannot honour is refused with
/// [`Error::Unsupported`] and the hit is answered anyway (the guest reaches the next
/// hit); the supported side effects tried here work (toggling single-stepping steps
/// exactly the hit vCPU; writing back the hit's registers keeps the guest going).
pub fn unsupported_responses_are_refused<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    if !caps.is_supported(C::SoftwareBreakpoints) {
        t.close(vm);
        return;
    }
    let site = t.hot_site();
    let original = truth_bytes(t, site.gpa, 8);
    let events = super::events_of(&vm);
    let bps = breakpoints_of(&vm);
    bps.set_breakpoint(Breakpoint::at(site.gva)).unwrap();
    let mut refused = 0;
    for response in candidate_responses() {
        let p = next_hit(events, site);
        if caps.check_response(p.event(), &response).is_ok() {
            drop(p);
            continue;
        }
        match p.reply(response.clone()) {
            Err(Error::Unsupported { .. }) => refused += 1,
            other => panic!("{response:?}, unsupported by the report: {other:?}"),
        }
    }
    eprintln!(
        "{}: {refused} responses refused as the report says",
        vm.name()
    );

    // Supported: writing back the hit's own registers.
    let p = next_hit(events, site);
    if caps.is_supported(C::ResponseSetRegisters) && caps.is_supported(C::WriteGprs) {
        let regs = vmi_core::RegisterSnapshot {
            gprs: p.registers.gprs,
            ..Default::default()
        };
        if regs.gprs.is_some() {
            p.reply(Response::continue_().with_registers(regs))
                .expect("the hit's own GPRs written back");
        }
    } else {
        drop(p);
    }

    // Supported: toggling single-stepping in the answer steps the hit vCPU.
    if caps.is_supported(C::ResponseToggleSinglestep) && caps.is_supported(C::EventSinglestep) {
        let p = next_hit(events, site);
        let vcpu = p.vcpu;
        bps.clear_breakpoint(Breakpoint::at(site.gva)).unwrap();
        p.reply(Response::continue_().toggle_singlestep()).unwrap();
        let s = next_event(events, "the step the answer asked for");
        assert!(
            matches!(s.kind, EventKind::Singlestep { .. }),
            "{:?}",
            s.kind
        );
        assert_eq!(s.vcpu, vcpu);
        s.reply(Response::continue_().toggle_singlestep()).unwrap();
    } else {
        bps.clear_breakpoint(Breakpoint::at(site.gva)).unwrap();
    }
    drain(events);
    assert_no_event(events, "after the responses");
    assert_eq!(truth_bytes(t, site.gpa, 8), original);
    let from = t.progress();
    wait_progress(t, from, "after the responses");
    t.close(vm);
}

/// Responses with one action or side effect each.
fn candidate_responses() -> Vec<Response> {
    use vmi_core::Action;
    vec![
        Response::deny(),
        Response::reinject(),
        Response::action(Action::Emulate),
        Response::action(Action::EmulateNoWrite),
        Response::action(Action::Retry),
        Response::continue_().with_view(View(1)),
        Response::continue_().with_next_interrupt(),
        Response::continue_().with_value(0),
        Response::continue_().with_registers(vmi_core::RegisterSnapshot {
            debug: Some(Default::default()),
            ..Default::default()
        }),
    ]
}
