//! vmi-core's parked-vCPU model on the legacy backend, against the purpose-built test
//! guest: events are guards (a dropped or panicking one still answers, and the guest
//! runs on), pauses from different handles of one guest are counted together, register
//! writes to a paused vCPU are queued and applied when it runs again, breakpoints
//! deliver their hits without a separate monitor and can be limited to one address
//! space, and the capability report declares every row.
//!
//! The guest's loop: `site_1` (r12 = iterations so far), `incq %r12`, store r12 into
//! `counter`, `site_2`, then CR3 toggles between `pml4_a` and `pml4_b`, `site_3`.

use std::time::{Duration, Instant};

use vmi_core::{
    Backend, Breakpoint, Breakpoints, Capability, EventControl, EventKind, Gpa, Gva, PendingEvent,
    PhysicalMemory, ReadRegisters, Register, RegisterGroups, RegisterSnapshot, Response, Support,
    VcpuControl, VcpuId, WriteRegisters,
};
use vmi_legacy::{GdbSession, LegacyConfig, LegacyQemu};
use vmi_tests::{Guest, GuestOptions, Markers};

const HIGH: u64 = 0xffff_8000_0000_0000;
const T: Duration = Duration::from_secs(10);

struct Fixture {
    _guest: Guest,
    m: Markers,
    vm: LegacyQemu,
}

impl Fixture {
    fn boot() -> Self {
        let guest = Guest::launch(GuestOptions::test_guest()).expect("launching the test guest");
        let m = guest.wait_ready().expect("test guest ready");
        let mut cfg = LegacyConfig::new(guest.qmp_socket());
        cfg.gdb_socket = Some(guest.gdb_socket().into());
        let vm = LegacyQemu::connect(cfg).expect("connect");
        let f = Self {
            _guest: guest,
            m,
            vm,
        };
        // Tests pause the guest expecting it in its loop. A test guest built before
        // r12 was zeroed ahead of `VMI-TEST ready` zeroes it after printing the marker:
        // a pause landing there (measured: RIP in `putc` or at the `xorq`) had the guest
        // itself overwrite the r12 written under the pause. `counter` moves only once
        // the loop runs.
        assert_runs(&f, "in its loop after `VMI-TEST ready`");
        f
    }

    fn gdb(&self) -> &GdbSession {
        self.vm.gdb().expect("GDB session")
    }

    fn sym(&self, name: &str) -> u64 {
        self.m
            .kallsyms(name)
            .unwrap_or_else(|| panic!("test guest did not report {name}"))
    }

    /// The guest's `counter` variable, read from guest RAM (not through the stub).
    fn counter(&self) -> u64 {
        let gpa = Gpa(self.sym("counter") - HIGH);
        self.vm.read_u64(gpa).expect("reading counter")
    }
}

fn next_event(events: &dyn EventControl, what: &str) -> PendingEvent {
    events
        .wait_event(T)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
        .unwrap_or_else(|| panic!("no {what} within {T:?}"))
}

fn r12(p: &PendingEvent) -> u64 {
    p.registers.gprs.expect("GPRs").r12
}

/// Waits until `counter` moves (the guest runs) or fails after `T`.
fn assert_runs(f: &Fixture, what: &str) {
    let before = f.counter();
    let deadline = Instant::now() + T;
    while f.counter() == before {
        assert!(Instant::now() < deadline, "guest does not run: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts `counter` stays put for 300 ms (the guest is stopped).
fn assert_stopped(f: &Fixture, what: &str) {
    let before = f.counter();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(f.counter(), before, "guest ran: {what}");
    assert!(!f.vm.status().unwrap().running, "QMP status: {what}");
}

#[test]
fn a_dropped_event_lets_the_guest_run_on_and_the_next_event_arrives() {
    let f = Fixture::boot();
    let gdb = f.gdb();
    let site_1 = f.sym("site_1");
    // No Monitor::Interrupt(Int3): setting the breakpoint is enough for its hits.
    gdb.set_breakpoint(Breakpoint::at(Gva(site_1))).unwrap();
    let first = next_event(gdb, "first hit");
    assert!(matches!(first.kind, EventKind::Breakpoint { gla, .. } if gla.0 == site_1));
    let n = r12(&first);
    drop(first);
    let second = next_event(gdb, "hit after the drop");
    assert_eq!(r12(&second), n + 1, "the guest ran one more iteration");
    drop(second);
    gdb.clear_breakpoint(Breakpoint::at(Gva(site_1))).unwrap();
    assert_runs(&f, "after dropping events and clearing the breakpoint");
}

#[test]
fn a_panicking_handler_still_answers() {
    let f = Fixture::boot();
    let events = f.vm.events().expect("events with the gdbstub");
    let bps = f.vm.breakpoints().expect("breakpoints with the gdbstub");
    let site_2 = f.sym("site_2");
    bps.set_breakpoint(Breakpoint::at(Gva(site_2))).unwrap();
    let mut seen = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        events.dispatch(T, &mut |ev| {
            seen = Some(ev.registers.gprs.unwrap().r12);
            panic!("handler bug")
        })
    }));
    assert!(r.is_err(), "the panic goes on");
    let n = seen.expect("the handler saw the event");
    let mut next = None;
    assert!(events
        .dispatch(T, &mut |ev| {
            next = Some(ev.registers.gprs.unwrap().r12);
            Response::continue_()
        })
        .unwrap());
    assert_eq!(next, Some(n + 1), "the vCPU was answered and ran on");
    bps.clear_breakpoint(Breakpoint::at(Gva(site_2))).unwrap();
    assert!(bps.active_breakpoints().is_empty());
    assert_runs(&f, "after the handlers");
}

#[test]
fn pauses_from_two_handles_hold_the_guest_until_both_end() {
    let f = Fixture::boot();
    let gdb = f.gdb();
    assert_runs(&f, "before pausing");
    // QMP-level handle first, gdbstub handle second, released in that order.
    let a = f.vm.pause().unwrap();
    let b = gdb.pause().unwrap();
    assert!(f.vm.is_paused() && gdb.is_paused());
    drop(a);
    assert_stopped(&f, "the gdbstub handle's guard is alive");
    drop(b);
    assert!(!f.vm.is_paused());
    assert_runs(&f, "after both guards dropped");
    // And the other way round, through `dyn VcpuControl`.
    let ctl_a: &dyn VcpuControl = gdb;
    let ctl_b: &dyn VcpuControl = f.vm.vcpu_control().unwrap();
    let a = ctl_a.pause().unwrap();
    let b = ctl_b.pause().unwrap();
    drop(a);
    assert_stopped(&f, "the session's guard is alive");
    b.resume().unwrap();
    assert_runs(&f, "after both guards were released");
}

#[test]
fn register_writes_to_a_paused_vcpu_are_queued_until_it_runs() {
    let f = Fixture::boot();
    let gdb = f.gdb();
    let site_1 = f.sym("site_1");
    const START: u64 = 0x5_0000;
    const UNTOUCHED: u64 = 0x1357_9bdf;
    let rip_at_pause;
    {
        let _p = f.vm.pause().unwrap();
        // Placed while paused: the first hit is in the iteration the write starts.
        gdb.set_breakpoint(Breakpoint::at(Gva(site_1))).unwrap();
        let regs =
            f.vm.registers(VcpuId(0), RegisterGroups::GPRS, &[])
                .unwrap();
        let mut gprs = regs.gprs.unwrap();
        let old = gprs.r12;
        rip_at_pause = gprs.rip;
        gprs.r12 = START;
        // The guest never touches r13: it shows the write reached the vCPU whatever the
        // guest does with r12 (which shows the guest continues from it).
        gprs.r13 = UNTOUCHED;
        let set = RegisterSnapshot {
            gprs: Some(gprs),
            ..RegisterSnapshot::default()
        };
        gdb.set_registers(VcpuId(0), &set).unwrap();
        // The session sees the queued value; the vCPU itself does not have it yet.
        let seen =
            f.vm.registers(VcpuId(0), RegisterGroups::GPRS, &[])
                .unwrap();
        assert_eq!(seen.gprs.unwrap().r12, START);
        let raw = gdb.monitor("info registers").unwrap();
        assert!(
            raw.contains(&format!("R12={old:016x}")),
            "QEMU still has r12 = {old:#x} before the pause ends: {raw}"
        );
    }
    let p = next_event(gdb, "hit after the write");
    let got = r12(&p);
    let r13 = p.registers.gprs.expect("GPRs").r13;
    assert_eq!(r13, UNTOUCHED, "the queued write reached the vCPU");
    assert!(
        (START..START + 2).contains(&got),
        "r12 {got:#x} continues from the written {START:#x} (paused at RIP {rip_at_pause:#x})"
    );
    p.reply(Response::continue_()).unwrap();
    gdb.clear_breakpoint(Breakpoint::at(Gva(site_1))).unwrap();
    let deadline = Instant::now() + T;
    while f.counter() < START {
        assert!(Instant::now() < deadline, "counter does not follow r12");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_breakpoint_in_one_address_space_reports_only_there() {
    let f = Fixture::boot();
    let gdb = f.gdb();
    let (site_1, pml4_a) = (f.sym("site_1"), f.sym("pml4_a"));
    let bp = Breakpoint::in_space(Gva(site_1), Gpa(pml4_a));
    gdb.set_breakpoint(bp).unwrap();
    assert_eq!(gdb.active_breakpoints(), vec![bp]);
    let mut hits = Vec::new();
    for _ in 0..4 {
        let p = next_event(gdb, "hit in pml4_a");
        assert_eq!(
            p.registers.control.unwrap().cr3,
            pml4_a,
            "hit in another space"
        );
        hits.push(r12(&p));
        p.reply(Response::continue_()).unwrap();
    }
    // CR3 toggles every iteration: the hits in pml4_a are every other iteration.
    assert!(
        hits.windows(2).all(|w| w[1] == w[0] + 2),
        "r12 at the hits: {hits:?}"
    );
    gdb.clear_breakpoint(bp).unwrap();
    assert!(gdb.active_breakpoints().is_empty());
}

#[test]
fn events_of_a_parked_vcpu_read_registers_without_asking_qemu_again() {
    let f = Fixture::boot();
    let gdb = f.gdb();
    let site_2 = f.sym("site_2");
    gdb.set_breakpoint(Breakpoint::at(Gva(site_2))).unwrap();
    let p = next_event(gdb, "hit");
    // A write queued during the event, read back from the parked vCPU's cache, goes out
    // with the answer: the next iteration starts from it.
    let mut gprs = p.registers.gprs.unwrap();
    gprs.r12 = 0x7000;
    gdb.set_registers(
        p.vcpu,
        &RegisterSnapshot {
            gprs: Some(gprs),
            ..RegisterSnapshot::default()
        },
    )
    .unwrap();
    let cached = gdb.registers(p.vcpu, RegisterGroups::GPRS, &[]).unwrap();
    assert_eq!(cached.gprs.unwrap().r12, 0x7000);
    // One register at a time (`vmi_get_vcpureg`), from the same cache.
    assert_eq!(gdb.register(p.vcpu, Register::R12).unwrap(), 0x7000);
    assert_eq!(gdb.register(p.vcpu, Register::Rip).unwrap(), site_2);
    p.reply(Response::continue_()).unwrap();
    let p = next_event(gdb, "next hit");
    assert_eq!(r12(&p), 0x7001);
    p.reply(Response::continue_()).unwrap();
    gdb.clear_breakpoint(Breakpoint::at(Gva(site_2))).unwrap();
}

#[test]
fn the_live_report_declares_every_row_and_refuses_before_sending() {
    let f = Fixture::boot();
    let report = f.vm.capabilities();
    for (cap, support) in report.rows() {
        if let Support::Unsupported(why) = support {
            assert_ne!(why, "not declared by the backend", "{cap} is undeclared");
        }
    }
    assert!(report.is_supported(Capability::SoftwareBreakpoints));
    // A monitor the table refuses fails before anything reaches the stub, with the
    // table's reason.
    let e = f.gdb().enable(&vmi_core::Monitor::Cpuid).unwrap_err();
    assert!(e.to_string().contains("instruction traps"), "{e}");
    // A refused response is answered with the default: the guest runs on.
    let site_3 = f.sym("site_3");
    f.gdb().set_breakpoint(Breakpoint::at(Gva(site_3))).unwrap();
    let p = next_event(f.gdb(), "hit");
    let n = r12(&p);
    assert!(p.reply(Response::deny()).is_err());
    let p = next_event(f.gdb(), "hit after the refused response");
    assert_eq!(r12(&p), n + 1);
    drop(p);
    f.gdb()
        .clear_breakpoint(Breakpoint::at(Gva(site_3)))
        .unwrap();
}
