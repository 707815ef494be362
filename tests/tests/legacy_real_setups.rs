//! vmi-legacy on the setups a new user has (issue 11, "Found on the current main"):
//! real gdb attached to the same stub before us, a guest someone else paused, ROM the
//! firmware shadows into RAM, a QEMU that dies or freezes, a tool that is killed, the
//! gdbstub on TCP (`-s`), and a monitor another client holds; and (issue 17) the QMP
//! and gdbstub paths swapped, and monitors for a vCPU the guest lacks. Against the
//! purpose-built test guest (its loop: `site_1`, store the iteration count into
//! `counter`, `site_2`, …).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vmi_core::registers::msr;
use vmi_core::{
    Breakpoint, Breakpoints, Error, EventControl, Gpa, Gva, MemoryLayout, Monitor, PhysicalMemory,
    PhysicalMemoryWrite, ReadRegisters, VcpuControl, VcpuId, VcpuSet,
};
use vmi_legacy::{LegacyConfig, LegacyQemu, QmpClient, RamAccess};
use vmi_tests::{Guest, GuestOptions, Markers};

const HIGH: u64 = 0xffff_8000_0000_0000;
const T: Duration = Duration::from_secs(10);

fn config(guest: &Guest, gdb: bool) -> LegacyConfig {
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    if gdb {
        cfg.gdb_socket = Some(guest.gdb_socket().into());
    }
    cfg
}

/// The guest's `counter`, read from the RAM file (not through any session).
fn counter(guest: &Guest, m: &Markers) -> u64 {
    let mut b = [0u8; 8];
    guest
        .read_ram(m.symbol("counter") - HIGH, &mut b)
        .expect("reading counter from guest RAM");
    u64::from_le_bytes(b)
}

fn qmp_status(guest: &Guest) -> (bool, String) {
    let mut q = QmpClient::connect_with_timeout(guest.qmp_socket(), T).expect("QMP connect");
    let s = q.query_status().expect("query-status");
    (s.running, s.status)
}

/// The guest runs: `counter` moves (read from RAM), and QMP says `running` (asked
/// through `vm` while a session holds the monitor: QEMU serves one QMP client at a time).
fn assert_runs(guest: &Guest, m: &Markers, vm: Option<&LegacyQemu>, what: &str) {
    let status = || match vm {
        Some(vm) => {
            let s = vm.status().expect("query-status");
            (s.running, s.status)
        }
        None => qmp_status(guest),
    };
    let before = counter(guest, m);
    let deadline = Instant::now() + T;
    while counter(guest, m) == before {
        assert!(
            Instant::now() < deadline,
            "guest does not run {what} (QMP status {:?})",
            status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (running, s) = status();
    assert!(running, "QMP status {s:?} {what}");
}

/// Waits until QMP reports the guest running (a teardown finishing in the background).
fn wait_until_running(guest: &Guest, what: &str) {
    let deadline = Instant::now() + T;
    loop {
        let (running, status) = qmp_status(guest);
        if running {
            return;
        }
        assert!(Instant::now() < deadline, "status {status:?} {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest keeps running for a while (no breakpoint left behind stops it).
fn assert_keeps_running(guest: &Guest, m: &Markers, what: &str) {
    for _ in 0..3 {
        assert_runs(guest, m, None, what);
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The guest stays stopped: `counter` does not move for 300 ms and QMP says `status`.
fn assert_stopped_in(guest: &Guest, m: &Markers, status: &str, what: &str) {
    let before = counter(guest, m);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(guest, m), before, "guest ran {what}");
    let (running, s) = qmp_status(guest);
    assert!(!running && s == status, "QMP status {s:?} {what}");
}

/// Sends `sig` to the guest's QEMU.
fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) on the QEMU child the fixture owns and has not reaped (the Guest
    // is alive), so the pid names that process.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

/// Runs real gdb in batch mode against the guest's stub; returns its stdout.
fn real_gdb(guest: &Guest, commands: &[&str]) -> String {
    let mut cmd = Command::new("gdb");
    cmd.args(["-nx", "-batch", "-ex", "set pagination off"]);
    let target = format!("target remote {}", guest.gdb_socket().display());
    cmd.args(["-ex", &target]);
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let out = cmd.output().expect("running gdb (is it installed?)");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gdb failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn item1_detach_after_a_real_gdb_negotiated_multiprocess() {
    let (guest, m) = Guest::boot_test_guest();
    // gdb 13 negotiates multiprocess+; QEMU keeps that mode for every later client.
    let out = real_gdb(&guest, &["info threads", "detach"]);
    assert!(out.contains("Thread"), "gdb saw no threads:\n{out}");
    assert_runs(&guest, &m, None, "after real gdb detached");

    let vm = LegacyQemu::connect(config(&guest, true)).expect("connect after gdb");
    let gdb = vm.gdb().expect("gdb session");
    gdb.set_breakpoint(Breakpoint::at(Gva(m.symbol("site_1"))))
        .unwrap();
    let ev = gdb.wait_event(T).unwrap().expect("a hit of site_1");
    drop(ev);
    gdb.detach().expect("detach in the form the stub expects");
    assert_runs(&guest, &m, Some(&vm), "after an explicit detach");
    drop(vm);
    assert_keeps_running(&guest, &m, "after an explicit detach and drop");

    // And the implicit detach of drop.
    let vm = LegacyQemu::connect(config(&guest, true)).expect("connect again");
    vm.gdb()
        .unwrap()
        .set_breakpoint(Breakpoint::at(Gva(m.symbol("site_2"))))
        .unwrap();
    drop(vm);
    assert_keeps_running(&guest, &m, "after dropping the session");
}

#[test]
fn item2_explicit_detach_then_drop_leaves_the_guest_running() {
    let (guest, m) = Guest::boot_test_guest();
    let vm = LegacyQemu::connect(config(&guest, true)).expect("connect");
    vm.gdb().unwrap().detach().expect("detach");
    assert_runs(&guest, &m, Some(&vm), "after detach");
    drop(vm);
    assert_keeps_running(&guest, &m, "after detach and drop");
}

#[test]
fn item3_connecting_with_the_gdbstub_keeps_a_qmp_pause() {
    let (guest, m) = Guest::boot_test_guest();
    {
        let mut q = QmpClient::connect_with_timeout(guest.qmp_socket(), T).unwrap();
        q.stop().unwrap();
    }
    assert_stopped_in(&guest, &m, "paused", "after QMP stop");
    let vm = LegacyQemu::connect(config(&guest, true)).expect("connect");
    // Our own pause and its release do not resume it either.
    drop(vm.pause().expect("pause"));
    let regs = vm.registers(VcpuId(0), vmi_core::RegisterGroups::GPRS, &[]);
    assert!(regs.is_ok(), "registers of a paused guest: {regs:?}");
    let before = counter(&guest, &m);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(&guest, &m), before, "our session resumed the guest");
    drop(vm);
    assert_stopped_in(&guest, &m, "paused", "after the session ended");
    QmpClient::connect_with_timeout(guest.qmp_socket(), T)
        .unwrap()
        .cont()
        .unwrap();
    assert_keeps_running(&guest, &m, "after QMP cont");
}

#[test]
fn item3_connecting_with_the_gdbstub_keeps_a_prelaunch_guest_stopped() {
    let mut opts = GuestOptions::test_guest();
    opts.paused = true;
    let guest = Guest::launch(opts).expect("launching the test guest with -S");
    let vm = LegacyQemu::connect(config(&guest, true)).expect("connect");
    std::thread::sleep(Duration::from_millis(300));
    drop(vm);
    let (running, status) = qmp_status(&guest);
    assert!(
        !running && status == "prelaunch",
        "status {status:?} after a session on a -S guest"
    );
    assert!(
        guest.serial_lines().iter().all(|l| !l.contains("VMI-TEST")),
        "the guest booted"
    );
    QmpClient::connect_with_timeout(guest.qmp_socket(), T)
        .unwrap()
        .cont()
        .unwrap();
    let m = guest.wait_ready().expect("boots after QMP cont");
    assert_keeps_running(&guest, &m, "after QMP cont");
}

#[test]
fn item4_rom_backed_regions_are_readable_and_in_the_layout() {
    let (guest, _m) = Guest::boot_test_guest();
    let vm = LegacyQemu::connect(config(&guest, false)).expect("connect");
    assert_eq!(vm.ram_access().kind(), "shared");
    // SeaBIOS shadows itself into RAM at 0xf0000 (read-only to the guest) and option ROMs
    // at 0xc0000.. : `info mtree -f` lists them as `rom: ram0 @…`.
    let mut bios = vec![0u8; 0x10000];
    vm.read_physical(Gpa(0xf0000), &mut bios)
        .expect("reading the BIOS area");
    let mut raw = vec![0u8; 0x10000];
    guest.read_ram(0xf0000, &mut raw).unwrap();
    assert_eq!(bios, raw, "BIOS area differs from guest RAM");
    let rsdp = (0..bios.len())
        .step_by(16)
        .find(|&o| bios[o..].starts_with(b"RSD PTR "))
        .expect("the ACPI RSD PTR in the BIOS area");
    let text = vm
        .qmp()
        .human_monitor_command(&format!("xp /8bx {:#x}", 0xf0000 + rsdp))
        .unwrap();
    assert!(text.contains("0x52 0x53 0x44 0x20"), "xp says {text:?}");
    let mut c3 = [0u8; 16];
    vm.read_physical(Gpa(0xc3000), &mut c3)
        .expect("reading the option ROM area");
    let info = vm.memory_info().unwrap();
    assert!(
        info.ranges
            .iter()
            .any(|r| r.contains(Gpa(0xf0000), 0x10000)),
        "memory info lacks the BIOS area: {info:?}"
    );
    let rom: Vec<_> = vm.layout().ranges().iter().filter(|r| r.rom).collect();
    assert!(
        rom.iter()
            .any(|r| r.gpa_start.0 <= 0xf0000 && r.gpa_end() >= 0x100000),
        "layout does not mark the BIOS area as ROM: {:?}",
        vm.layout()
    );
    // The guest cannot write its ROM; neither do we.
    assert!(matches!(
        vm.write_physical(Gpa(0xf0000), &[0]),
        Err(Error::Unsupported { .. } | Error::InvalidArgument { .. })
    ));
}

#[test]
fn item5_reads_fail_with_disconnected_once_qemu_is_killed() {
    let (guest, _m) = Guest::boot_test_guest();
    let vm = LegacyQemu::connect(config(&guest, false)).expect("connect");
    assert!(matches!(vm.ram_access(), RamAccess::Shared(_)));
    let mut buf = vec![0u8; 4 << 20];
    vm.read_physical(Gpa(1 << 20), &mut buf)
        .expect("read while alive");
    signal(guest.pid() as libc::pid_t, libc::SIGKILL);
    let deadline = Instant::now() + T;
    loop {
        match vm.read_physical(Gpa(1 << 20), &mut buf) {
            Err(Error::Disconnected { .. }) => break,
            Ok(()) => assert!(
                Instant::now() < deadline,
                "reads still succeed {T:?} after QEMU was killed"
            ),
            Err(e) => panic!("expected Disconnected, got {e}"),
        }
    }
    // Every later read, of any size, says so too, and so do the other paths.
    assert!(matches!(
        vm.read_physical(Gpa(0x20_0000), &mut [0u8; 1]),
        Err(Error::Disconnected { .. })
    ));
    assert!(vm.qemu_exited());
    let regs = vm.registers(VcpuId(0), vmi_core::RegisterGroups::GPRS, &[]);
    assert!(matches!(regs, Err(Error::Disconnected { .. })), "{regs:?}");
    assert!(matches!(vm.status(), Err(Error::Disconnected { .. })));
}

#[test]
fn item5_procmem_and_the_gdbstub_report_a_dead_qemu_as_disconnected() {
    let (guest, _m) = Guest::boot_test_guest();
    let mut cfg = config(&guest, true);
    cfg.ram = vmi_legacy::RamSource::ProcMem;
    let vm = LegacyQemu::connect(cfg).expect("connect with ProcMem");
    let mut buf = [0u8; 4096];
    vm.read_physical(Gpa(1 << 20), &mut buf).unwrap();
    signal(guest.pid() as libc::pid_t, libc::SIGKILL);
    let deadline = Instant::now() + T;
    while vm.read_physical(Gpa(1 << 20), &mut buf).is_ok() {
        assert!(Instant::now() < deadline, "reads go on after QEMU died");
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = vm.read_physical(Gpa(1 << 20), &mut buf).unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
    let gdb = vm.gdb().unwrap();
    let e = gdb.read_physical(Gpa(1 << 20), &mut buf).unwrap_err();
    assert!(
        matches!(e, Error::Disconnected { .. }),
        "gdbstub read: {e:?}"
    );
    drop(vm);
}

#[test]
fn item6_teardown_of_a_frozen_qemu_leaves_the_guest_running_after_sigcont() {
    let (guest, m) = Guest::boot_test_guest();
    let mut cfg = config(&guest, true);
    cfg.timeout = Duration::from_secs(2);
    let vm = LegacyQemu::connect(cfg).expect("connect");
    let gdb = vm.gdb().unwrap();
    let site_1 = m.symbol("site_1");
    gdb.set_breakpoint(Breakpoint::at(Gva(site_1))).unwrap();
    let ev = gdb.wait_event(T).unwrap().expect("a hit of site_1");
    drop(ev);
    // The guest runs on and will hit site_1 again: freeze QEMU whatever it is doing.
    let pid = guest.pid() as libc::pid_t;
    signal(pid, libc::SIGSTOP);
    let started = Instant::now();
    let teardown = std::thread::spawn(move || drop(vm));
    teardown.join().expect("teardown panicked");
    let took = started.elapsed();
    signal(pid, libc::SIGCONT);
    eprintln!("teardown against a frozen QEMU took {took:?}");
    // One timeout, not one per step (each costs 2 s here).
    assert!(took < Duration::from_secs(6), "teardown took {took:?}");
    // QEMU finishes the teardown once it runs again.
    wait_until_running(&guest, "after SIGCONT");
    assert_keeps_running(&guest, &m, "after SIGCONT");
}

#[test]
fn item6_teardown_of_a_frozen_running_guest_leaves_no_interrupt_behind() {
    let (guest, m) = Guest::boot_test_guest();
    let mut cfg = config(&guest, true);
    cfg.timeout = Duration::from_secs(2);
    let vm = LegacyQemu::connect(cfg).expect("connect");
    // Armed but never hit: the guest runs, the session holds `c` outstanding.
    vm.gdb()
        .unwrap()
        .set_breakpoint(Breakpoint::at(Gva(m.symbol("counter"))))
        .unwrap();
    assert_runs(&guest, &m, Some(&vm), "with the session attached");
    let pid = guest.pid() as libc::pid_t;
    signal(pid, libc::SIGSTOP);
    let started = Instant::now();
    drop(vm);
    let took = started.elapsed();
    signal(pid, libc::SIGCONT);
    // One timeout (the interrupt's), not one per step (each costs 2 s here).
    assert!(took < Duration::from_secs(6), "teardown took {took:?}");
    wait_until_running(&guest, "after SIGCONT");
    assert_keeps_running(&guest, &m, "after SIGCONT");
}

/// Set by [`item7_a_killed_tool_does_not_leave_the_stub_in_physical_mode`] for the copy
/// of this test binary it runs as the tool it kills.
const CHILD_ENV: &str = "VMI_L11_PHYSMODE_CHILD";

#[test]
fn physmode_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only meaningful as the child of the test below.
    };
    let mut cfg = LegacyConfig::new(format!("{dir}/qmp.sock"));
    cfg.gdb_socket = Some(format!("{dir}/gdb.sock").into());
    let vm = LegacyQemu::connect(cfg).expect("child connect");
    let mut b = [0u8; 16];
    vm.gdb()
        .unwrap()
        .read_physical(Gpa(0x1000), &mut b)
        .expect("child physical read through the stub");
    println!("CHILD READY");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
fn item7_a_killed_tool_does_not_leave_the_stub_in_physical_mode() {
    let (guest, m) = Guest::boot_test_guest();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "physmode_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, guest.dir())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("CHILD READY"))),
        "the child tool did not get ready"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // A plain gdb afterwards reads virtual addresses as virtual addresses.
    let site_1 = m.symbol("site_1");
    let out = real_gdb(&guest, &[&format!("x/8xb {site_1:#x}"), "detach"]);
    let mut want = [0u8; 8];
    guest.read_ram(site_1 - HIGH, &mut want).unwrap();
    let line = out
        .lines()
        .find(|l| l.trim_start().starts_with("0x") && l.contains(':'))
        .unwrap_or_else(|| panic!("no memory line in gdb's output:\n{out}"));
    let got: Vec<u8> = line
        .split(':')
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).unwrap())
        .collect();
    assert_eq!(got, want, "gdb read {line:?}");
    assert_runs(&guest, &m, None, "after gdb detached");
}

#[test]
fn item7_connect_recovers_a_stub_left_in_physical_mode() {
    let (guest, m) = Guest::boot_test_guest();
    {
        // A tool that died in the middle of a physical access.
        let mut c = vmi_legacy::gdb::GdbClient::connect_unix(guest.gdb_socket(), T).unwrap();
        c.set_physical_mode(true).unwrap();
    }
    let vm = LegacyQemu::connect(config(&guest, true)).expect("connect");
    drop(vm);
    let site_1 = m.symbol("site_1");
    let out = real_gdb(&guest, &[&format!("x/1xb {site_1:#x}"), "detach"]);
    assert!(
        !out.contains("Cannot access memory"),
        "gdb reads physical addresses after our session:\n{out}"
    );
    assert_runs(&guest, &m, None, "after gdb detached");
}

#[test]
fn item8_all_registers_has_the_segment_bases_from_the_stub() {
    let (guest, _m) = Guest::boot_test_guest();
    let vm = LegacyQemu::connect(config(&guest, true)).expect("connect");
    let _pause = vm.pause().unwrap();
    let all = vm.all_registers(VcpuId(0)).unwrap();
    let seg = vm.gdb().unwrap().segments(VcpuId(0)).unwrap();
    for (index, want) in [
        (msr::FS_BASE, seg.fs_base),
        (msr::GS_BASE, seg.gs_base),
        (msr::KERNEL_GS_BASE, seg.k_gs_base),
    ] {
        assert_eq!(
            all.msrs.get(index),
            Some(want),
            "MSR {index:#x} in all_registers"
        );
    }
}

#[test]
fn item9_gdbstub_on_tcp_like_qemu_dash_s() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (guest, m) = Guest::boot_test_guest();
    // What `-s` starts (`-gdb tcp::1234`), started here through the monitor on a free
    // port: QEMU's stub moves to TCP.
    let out = QmpClient::connect_with_timeout(guest.qmp_socket(), T)
        .unwrap()
        .human_monitor_command(&format!("gdbserver tcp:127.0.0.1:{port}"))
        .unwrap();
    assert!(out.contains("Waiting for gdb"), "gdbserver said {out:?}");
    let mut cfg = config(&guest, false);
    cfg.gdb_socket = Some(format!("tcp::{port}").parse().expect("tcp::PORT"));
    let vm = LegacyQemu::connect(cfg).expect("connect over TCP");
    let gdb = vm.gdb().expect("gdb session over TCP");
    gdb.set_breakpoint(Breakpoint::at(Gva(m.symbol("site_2"))))
        .unwrap();
    let ev = gdb.wait_event(T).unwrap().expect("a hit over TCP");
    assert_eq!(ev.registers.gprs.unwrap().rip, m.symbol("site_2"));
    drop(ev);
    drop(vm);
    assert_keeps_running(&guest, &m, "after the TCP session");
}

#[test]
fn item10_a_held_monitor_is_reported_as_in_use() {
    let (guest, _m) = Guest::boot_test_guest();
    let _holder = QmpClient::connect_with_timeout(guest.qmp_socket(), T).unwrap();
    let mut cfg = config(&guest, false);
    cfg.timeout = Duration::from_secs(1);
    let err = LegacyQemu::connect(cfg).expect_err("a second QMP client");
    let msg = err.to_string();
    assert!(msg.contains("in use"), "error: {msg}");
}

/// Issue 17: the QMP and gdbstub paths swapped by mistake. The stub stops the guest
/// when a client connects and never resumes it on its own; the error names the swap,
/// and the guest runs on (checked through a correct QMP connection afterwards).
#[test]
fn swapped_qmp_and_gdbstub_paths_are_named_and_the_guest_runs_on() {
    let (guest, m) = Guest::boot_test_guest();
    let mut cfg = LegacyConfig::new(guest.gdb_socket());
    cfg.gdb_socket = Some(guest.qmp_socket().into());
    cfg.timeout = Duration::from_secs(2);
    let err = LegacyQemu::connect(cfg).expect_err("the gdbstub is no QMP monitor");
    let msg = err.to_string();
    assert!(
        msg.contains("swapped")
            && msg.contains(&guest.gdb_socket().display().to_string())
            && msg.contains(&guest.qmp_socket().display().to_string()),
        "error: {msg}"
    );
    assert!(
        !msg.contains("in use"),
        "not blamed on a busy monitor: {msg}"
    );
    assert_runs(&guest, &m, None, "after connecting with swapped paths");
    // The stub is free again: a correct session attaches and the guest stays running.
    let vm = LegacyQemu::connect(config(&guest, true)).expect("connecting the right way");
    drop(vm);
    assert_keeps_running(&guest, &m, "after the correct session");
}

/// Issue 17: single-stepping a vCPU the guest lacks is refused at `enable`, before a
/// packet reaches the stub (it used to be dropped silently, and a caller waited for
/// steps that never came).
#[test]
fn singlestep_of_a_vcpu_the_guest_lacks_is_refused_at_enable() {
    let mut opts = GuestOptions::test_guest();
    opts.cpus = 2;
    let guest = Guest::launch(opts).expect("launching the test guest");
    let m = guest.wait_ready().expect("test guest ready");
    let vm = LegacyQemu::connect(config(&guest, true)).unwrap();
    let gdb = vm.gdb().unwrap();
    assert_eq!(gdb.vcpus(), 2);
    let before = gdb.counters();
    let monitor = Monitor::Singlestep(VcpuSet::single(VcpuId(5)));
    match gdb.enable(&monitor) {
        Err(Error::NoSuchVcpu { vcpu, count }) => assert_eq!((vcpu, count), (VcpuId(5), 2)),
        other => panic!("enable for vCPU 5 of 2: {other:?}"),
    }
    let mixed: VcpuSet = [VcpuId(0), VcpuId(2)].into_iter().collect();
    assert!(
        matches!(
            gdb.enable(&Monitor::Singlestep(mixed)),
            Err(Error::NoSuchVcpu {
                vcpu: VcpuId(2),
                count: 2
            })
        ),
        "one missing vCPU refuses the whole set"
    );
    let after = gdb.counters();
    assert_eq!(
        (after.requests, after.interrupts),
        (before.requests, before.interrupts),
        "nothing was sent to the stub"
    );
    // Nothing was enabled: waiting yields no step (the guest just runs).
    assert!(gdb
        .wait_event(Duration::from_millis(300))
        .unwrap()
        .is_none());
    assert_runs(&guest, &m, Some(&vm), "after the refused enable");
    // The vCPUs the guest has still step.
    let ok = Monitor::Singlestep(VcpuSet::single(VcpuId(1)));
    gdb.enable(&ok).expect("vCPU 1 of 2");
    gdb.disable(&ok).unwrap();
    drop(vm);
    assert_keeps_running(&guest, &m, "after the session");
}
