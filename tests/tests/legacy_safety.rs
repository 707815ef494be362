//! Guest safety of vmi-legacy on real setups (issue 17), against the purpose-built test
//! guest (its loop: `site_1`, store the iteration count into `counter`, `site_2`, …):
//!
//! * a gdbstub another client holds is refused before connecting (QMP `query-chardev`),
//!   so that no connection of ours waits in QEMU's queue to stop the guest when that
//!   client leaves;
//! * a tool killed (`SIGKILL`, `process::exit`) with a breakpoint set leaves the guest in
//!   `debug`, where QMP `cont` does not help; the next attach (the library's connect,
//!   or the `legacy-recover` example) removes the stale breakpoint and lets it run, and
//!   nothing of the tool is left in guest memory.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmi_core::event::InterruptKind;
use vmi_core::{Breakpoint, Breakpoints, EventControl, Gva, Monitor};
use vmi_legacy::attach::stub_in_use;
use vmi_legacy::gdb::GdbClient;
use vmi_legacy::{LegacyConfig, LegacyQemu, QmpClient};
use vmi_tests::{examples, Guest, Markers};

const HIGH: u64 = 0xffff_8000_0000_0000;
const T: Duration = Duration::from_secs(10);

fn config(guest: &Guest) -> LegacyConfig {
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    cfg.gdb_socket = Some(guest.gdb_socket().into());
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

fn qmp(guest: &Guest) -> QmpClient {
    QmpClient::connect_with_timeout(guest.qmp_socket(), T).expect("QMP connect")
}

fn qmp_status(guest: &Guest) -> (bool, String) {
    let s = qmp(guest).query_status().expect("query-status");
    (s.running, s.status)
}

/// The guest runs for a while: `counter` moves three times over 600 ms and more, and
/// QMP says `running` each time (no breakpoint, no queued client stops it meanwhile).
fn assert_keeps_running(guest: &Guest, m: &Markers, what: &str) {
    for _ in 0..3 {
        let before = counter(guest, m);
        let deadline = Instant::now() + T;
        while counter(guest, m) == before {
            assert!(
                Instant::now() < deadline,
                "guest does not run {what} (QMP status {:?})",
                qmp_status(guest)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let (running, s) = qmp_status(guest);
        assert!(running, "QMP status {s:?} {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until QMP reports run state `status`.
fn wait_for_status(guest: &Guest, status: &str, what: &str) {
    let deadline = Instant::now() + T;
    loop {
        let (_, s) = qmp_status(guest);
        if s == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "QMP status {s:?}, not {status:?} {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The guest stays stopped in `debug`: `counter` does not move for 300 ms.
fn assert_stays_in_debug(guest: &Guest, m: &Markers, what: &str) {
    wait_for_status(guest, "debug", what);
    let before = counter(guest, m);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(counter(guest, m), before, "guest ran {what}");
    let (running, s) = qmp_status(guest);
    assert!(!running && s == "debug", "QMP status {s:?} {what}");
}

#[test]
fn a_gdbstub_held_by_another_client_is_refused_before_connecting() {
    let (guest, m) = Guest::boot_test_guest();
    // Another client: attached (the stub stopped the guest), then lets it run on, as a
    // gdb after `continue`.
    let mut holder = GdbClient::connect_unix(guest.gdb_socket(), T).expect("first client");
    holder.resume().expect("first client continues");
    assert_keeps_running(&guest, &m, "while the first client is attached");

    let err = LegacyQemu::connect(config(&guest)).expect_err("the stub is held");
    let held = stub_in_use(&err).unwrap_or_else(|| panic!("not a StubInUse error: {err}"));
    assert_eq!(held.chardev, "gdb0", "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("held by another client")
            && msg.contains(&guest.gdb_socket().display().to_string()),
        "error: {msg}"
    );
    assert_keeps_running(
        &guest,
        &m,
        "after the refusal, the first client still attached",
    );

    // The first client leaves (closing its socket without a detach, the guest running).
    // Had our connection waited in QEMU's queue, QEMU would accept it now and stop the
    // guest for nobody.
    drop(holder);
    std::thread::sleep(Duration::from_millis(300));
    assert_keeps_running(&guest, &m, "after the first client left");

    // A client that leaves right before we attach is not taken for a holder (QEMU lists
    // it until its main loop sees the close): a session attaches, and leaves the guest
    // running.
    let mut brief = GdbClient::connect_unix(guest.gdb_socket(), T).expect("brief client");
    brief.resume().expect("brief client continues");
    drop(brief);
    let vm = LegacyQemu::connect(config(&guest)).expect("connecting to the free stub");
    assert!(!vm.recovered_stale_debug_stop());
    drop(vm);
    assert_keeps_running(&guest, &m, "after our session");
}

/// Set for the copy of this test binary that plays the tool which is killed: the guest
/// directory, and how the tool ends.
const CHILD_ENV: &str = "VMI_L17_BREAKPOINT_CHILD";
const CHILD_EXIT_ENV: &str = "VMI_L17_BREAKPOINT_CHILD_EXITS";

/// The tool: connects, sets a breakpoint on `site_1` (hit by every loop iteration) and
/// either waits to be killed or calls `process::exit` at once, without removing it.
#[test]
fn breakpoint_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return; // Only meaningful as the child of the tests below.
    };
    let site_1: u64 = std::env::var("VMI_L17_SITE_1").unwrap().parse().unwrap();
    let mut cfg = LegacyConfig::new(format!("{dir}/qmp.sock"));
    cfg.gdb_socket = Some(format!("{dir}/gdb.sock").into());
    let vm = LegacyQemu::connect(cfg).expect("child connect");
    let gdb = vm.gdb().unwrap();
    gdb.enable(&Monitor::Interrupt(InterruptKind::Int3))
        .unwrap();
    gdb.set_breakpoint(Breakpoint::at(Gva(site_1))).unwrap();
    println!("CHILD READY");
    if std::env::var_os(CHILD_EXIT_ENV).is_some() {
        std::process::exit(0); // No destructor runs.
    }
    std::thread::sleep(Duration::from_secs(120));
}

/// Starts [`breakpoint_child`] against `guest` and waits until its breakpoint is set.
fn spawn_tool(guest: &Guest, site_1: u64, exits: bool) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "breakpoint_child",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, guest.dir())
    .env("VMI_L17_SITE_1", site_1.to_string())
    .stdout(Stdio::piped());
    if exits {
        cmd.env(CHILD_EXIT_ENV, "1");
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.contains("CHILD READY"))),
        "the child tool did not get ready"
    );
    child
}

/// The guest after the tool died at its breakpoint: stopped in `debug`, and QMP `cont`
/// does not make it run (the vCPU runs into the breakpoint again at once). Guest memory
/// at the breakpoint holds the code it had before the tool came: nothing of ours is
/// left in it.
fn assert_left_in_debug(guest: &Guest, m: &Markers, code_before: &[u8; 16]) {
    assert_stays_in_debug(guest, m, "after the tool died at its breakpoint");
    let mut code = [0u8; 16];
    guest
        .read_ram(m.symbol("site_1") - HIGH, &mut code)
        .unwrap();
    assert_eq!(&code, code_before, "guest memory at the breakpoint changed");
    qmp(guest).cont().expect("QMP cont");
    assert_stays_in_debug(guest, m, "after QMP cont");
}

#[test]
fn a_tool_killed_with_a_breakpoint_set_is_recovered_by_the_next_attach() {
    let (guest, m) = Guest::boot_test_guest();
    let site_1 = m.symbol("site_1");
    let mut code_before = [0u8; 16];
    guest.read_ram(site_1 - HIGH, &mut code_before).unwrap();
    let mut child = spawn_tool(&guest, site_1, false);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_left_in_debug(&guest, &m, &code_before);

    // The next attach finds `debug` with nobody attached, removes the stale breakpoint
    // and lets the guest run — and keeps running once the session is gone.
    let vm = LegacyQemu::connect(config(&guest)).expect("connect after the kill");
    assert!(vm.recovered_stale_debug_stop(), "the stale stop was seen");
    let before = counter(&guest, &m);
    let deadline = Instant::now() + T;
    while counter(&guest, &m) < before + 3 {
        assert!(
            Instant::now() < deadline,
            "guest does not run with our session: {:?}",
            vm.status()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(vm);
    assert_keeps_running(&guest, &m, "after the recovering session");
}

#[test]
fn legacy_recover_lets_the_guest_of_an_exited_tool_run() {
    let recover = |guest: &Guest| {
        let args = [guest.qmp_socket(), guest.gdb_socket()];
        examples::run_example("vmi-legacy", "legacy-recover", &args, T * 6)
    };
    let (guest, m) = Guest::boot_test_guest();
    let site_1 = m.symbol("site_1");
    let mut code_before = [0u8; 16];
    guest.read_ram(site_1 - HIGH, &mut code_before).unwrap();
    let mut child = spawn_tool(&guest, site_1, true); // process::exit
    child.wait().unwrap();
    assert_left_in_debug(&guest, &m, &code_before);

    let out = recover(&guest);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "legacy-recover failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("removed QEMU's stale breakpoints")
            && stdout.contains("run state: running"),
        "{stdout}"
    );
    assert_keeps_running(&guest, &m, "after legacy-recover");

    // Run again on a healthy guest, it changes nothing and says so.
    let out = recover(&guest);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("nothing to recover"),
        "{stdout}"
    );
    assert_keeps_running(&guest, &m, "after legacy-recover on a healthy guest");
}
