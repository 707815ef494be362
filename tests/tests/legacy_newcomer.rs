//! The vmi-legacy examples as a newcomer runs them (issue 17): on a guest whose RAM is
//! anonymous (no shared memory backend, QEMU's default), `legacy-map-addr` and
//! `legacy-dump-memory` read it through QEMU's process memory, checked against what the
//! gdbstub reads; and a monitor too slow for the timeout gets an error that names the
//! HMP command and the option that raises the limit (a fake monitor on a UNIX socket).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use vmi_core::{Gpa, Gva, PhysicalMemory, VcpuId, VirtualMemory};
use vmi_legacy::GdbSession;
use vmi_tests::{examples, Guest, GuestOptions};

const T: Duration = Duration::from_secs(10);

/// Runs vmi-legacy's example `name` (killed after 120 s).
fn run(name: &str, args: &[&str]) -> Output {
    examples::run_example("vmi-legacy", name, args, Duration::from_secs(120))
}

/// The number after `key` (hex with `0x`) in `line`.
fn hex_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let word = rest.split_whitespace().next()?;
    u64::from_str_radix(word.trim_start_matches("0x"), 16).ok()
}

#[test]
fn map_addr_and_dump_memory_read_anonymous_ram_through_process_memory() {
    let mut opts = GuestOptions::test_guest();
    // The harness's shared file backend stays defined but unused: guest RAM is the
    // anonymous `memory-backend-ram` (a later -machine option overrides the earlier).
    let mib = opts.memory_mib;
    opts.extra_args.extend(
        [
            "-object",
            &format!("memory-backend-ram,id=anon0,size={mib}M"),
            "-machine",
            "memory-backend=anon0",
        ]
        .map(Into::into),
    );
    let guest = Guest::launch(opts).expect("launching the test guest on anonymous RAM");
    let m = guest.wait_ready().expect("test guest ready");
    let site_1 = m.kallsyms("site_1").expect("site_1");
    let qmp = guest.qmp_socket().to_str().unwrap();

    let out = run("legacy-map-addr", &[qmp, &format!("{site_1:x}")]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "map-addr failed: {stdout}{stderr}");
    assert!(stderr.contains("guest RAM through procmem"), "{stderr}");
    let gpa = stdout
        .lines()
        .find_map(|l| hex_after(l, " -> "))
        .unwrap_or_else(|| panic!("no translation in:\n{stdout}"));
    let bytes: Vec<u8> = stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("bytes at {site_1:#x}: ")))
        .unwrap_or_else(|| panic!("no bytes in:\n{stdout}"))
        .split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();

    let dump = guest.dir().join("anon.dump");
    let out = run("legacy-dump-memory", &[qmp, dump.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "dump-memory failed: {}{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("guest RAM through procmem"), "{stderr}");
    let image = std::fs::read(&dump).unwrap();
    std::fs::remove_file(&dump).unwrap();

    // Ground truth from the gdbstub, which reads guest memory inside QEMU.
    let gdb = GdbSession::connect_unix(guest.gdb_socket(), T).expect("gdbstub session");
    let space = gdb.address_space(VcpuId(0)).unwrap();
    let t = gdb.translate_va(space, Gva(site_1)).unwrap();
    assert_eq!(t.gpa.0, gpa, "map-addr's translation");
    let mut want = [0u8; 16];
    gdb.read_physical(Gpa(gpa), &mut want).unwrap();
    assert_eq!(bytes, want, "map-addr's bytes at site_1");
    // The code around site_1 (the rest of its page holds the loop's counters, which
    // move between the dump and now).
    let mut code = [0u8; 64];
    gdb.read_physical(Gpa(gpa), &mut code).unwrap();
    let at = gpa as usize;
    assert!(
        image[at..at + 64] == code,
        "the dump's code at site_1 differs: {:02x?} != {code:02x?}",
        &image[at..at + 64]
    );
    assert!(
        image.len() as u64 >= u64::from(mib) << 20,
        "dump covers RAM"
    );
}

/// A fake QMP monitor: greets, negotiates, answers `query-version`, answers `info
/// mtree -f` (a capture of QEMU 7.2's) after `delay`, and anything else with
/// `CommandNotFound`. Serves each connection on its own thread.
fn slow_monitor(dir: &Path, delay: Duration) -> PathBuf {
    let path = dir.join("slow-qmp.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let mtree = include_str!("../../vmi-legacy/tests/data/qemu72_info_mtree_f.txt");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || serve(conn, mtree, delay));
        }
    });
    path
}

/// One connection of [`slow_monitor`].
fn serve(conn: UnixStream, mtree: &str, delay: Duration) {
    let mut w = conn.try_clone().unwrap();
    let _ = writeln!(
        w,
        r#"{{"QMP": {{"version": {{"qemu": {{"micro": 0, "minor": 2, "major": 7}}, "package": ""}}, "capabilities": []}}}}"#
    );
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { break };
        let cmd: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("fake monitor got {line:?}: {e}"));
        let id = cmd["id"].clone();
        let reply = match cmd["execute"].as_str().unwrap_or("") {
            "qmp_capabilities" => serde_json::json!({"return": {}, "id": id}),
            "query-version" => serde_json::json!({"return":
                {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "id": id}),
            "human-monitor-command" if cmd["arguments"]["command-line"] == "info mtree -f" => {
                std::thread::sleep(delay);
                serde_json::json!({"return": mtree, "id": id})
            }
            other => serde_json::json!({"error": {"class": "CommandNotFound",
                "desc": format!("The command {other} has not been found")}, "id": id}),
        };
        if writeln!(w, "{reply}").is_err() {
            break;
        }
    }
}

#[test]
fn a_slow_monitor_reply_names_the_hmp_command_and_the_option_that_raises_the_limit() {
    let dir = std::env::temp_dir().join(format!("vmi-l17-slow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sock = slow_monitor(&dir, Duration::from_millis(2500));
    let sock = sock.to_str().unwrap();

    for example in [
        vec!["legacy-map-addr", sock, "ffffffff81000000"],
        vec!["legacy-dump-memory", sock, "/dev/null"],
    ] {
        let out = run(
            example[0],
            &[&example[1..], &["--qmp-timeout", "1"]].concat(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("timed out")
                && stderr.contains("`info mtree -f`")
                && stderr.contains("--qmp-timeout SECS"),
            "{}: {stderr}",
            example[0]
        );
    }
    // Raised above the monitor's delay, the layout arrives and the session gets as far
    // as the next command (which this monitor does not know).
    let out = run(
        "legacy-map-addr",
        &[sock, "ffffffff81000000", "--qmp-timeout", "6"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        !stderr.contains("timed out") && stderr.contains("query-cpus-fast"),
        "{stderr}"
    );
    let out = run(
        "legacy-map-addr",
        &[sock, "ffffffff81000000", "--qmp-timeout", "soon"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a bad --qmp-timeout is a usage error"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
