//! The `vmi-legacy` examples (`vmi-legacy/examples/`), built and run as a user would run
//! them against the test guest (`xtask/guest/testguest.S`), their output checked against
//! what the guest reports and what its RAM holds.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use vmi_tests::{examples, Accel, Guest, GuestOptions};

const HIGH: u64 = 0xffff_8000_0000_0000;
/// How long one example may run (a busy TCG host).
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs vmi-legacy's example `name` with `args`, killed after [`RUN_TIMEOUT`].
fn run(name: &str, args: &[&str]) -> Output {
    examples::run_example("vmi-legacy", name, args, RUN_TIMEOUT)
}

/// Runs `name` and returns its stdout; fails the test with its output if it failed.
fn run_ok(name: &str, args: &[&str]) -> String {
    examples::run_example_ok("vmi-legacy", name, args, RUN_TIMEOUT)
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 temporary path")
}

/// `0x…` after `key` in `line`.
fn hex_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest
        .trim_start_matches("0x")
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&digits, 16).ok()
}

fn ticks(guest: &Guest) -> usize {
    guest
        .serial_lines()
        .iter()
        .filter(|l| l.contains("VMI-TEST tick"))
        .count()
}

fn assert_ticks_on(guest: &Guest, what: &str) {
    let before = ticks(guest);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks(guest) <= before {
        assert!(Instant::now() < deadline, "no tick after {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn dump_memory_writes_every_range_at_its_address() {
    let (guest, m) = Guest::boot_test_guest();
    let out = guest.dir().join("dump.bin");
    let stdout = run_ok(
        "legacy-dump-memory",
        &[path(guest.qmp_socket()), path(&out)],
    );
    // Every range it lists is in the file at its address.
    let ranges: Vec<(u64, u64)> = stdout
        .lines()
        .filter(|l| l.starts_with("  0x"))
        .map(|l| {
            let (a, b) = l.trim().split_once(' ').unwrap().0.split_once('-').unwrap();
            let p = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
            (p(a), p(b))
        })
        .collect();
    assert!(!ranges.is_empty(), "{stdout}");
    let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    assert!(total >= guest.ram_size() - (1 << 20), "{stdout}");
    assert!(stdout.contains(&format!("wrote {total} bytes")), "{stdout}");
    let dump = std::fs::read(&out).unwrap();
    assert_eq!(dump.len() as u64, ranges.last().unwrap().1);
    // Stable contents, as guest RAM holds them: the pattern page and the loop's code
    // (the rest of the code page holds the variables the loop changes).
    for (gpa, len) in [
        (m.symbol("pattern_phys"), 4096),
        (m.symbol("site_1") - HIGH, 64),
    ] {
        let mut want = vec![0u8; len];
        guest.read_ram(gpa, &mut want).unwrap();
        let got = &dump[gpa as usize..gpa as usize + len];
        assert!(got == want, "{len} bytes at {gpa:#x} differ in the dump");
    }
    assert!(dump[m.symbol("pattern_phys") as usize..].starts_with(b"VMI-TESTGUEST-PATTERN"));
    assert_ticks_on(&guest, "the dump (the guest was paused only for it)");
}

#[test]
fn map_addr_shows_the_four_level_walk() {
    let (guest, m) = Guest::boot_test_guest();
    let site_1 = m.symbol("site_1");
    let stdout = run_ok(
        "legacy-map-addr",
        &[path(guest.qmp_socket()), &format!("{site_1:#x}")],
    );
    let levels: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.ends_with('E'))
        .collect();
    assert_eq!(levels, ["PML4E", "PDPTE", "PDE", "PTE"], "{stdout}");
    // Each entry's address lies in one of the guest's page tables.
    let cr3 = stdout
        .lines()
        .find_map(|l| hex_after(l, "CR3 "))
        .expect("CR3 line");
    assert!(
        cr3 == m.symbol("pml4_a") || cr3 == m.symbol("pml4_b"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{site_1:#x} -> {:#x} (Size4K", site_1 - HIGH)),
        "{stdout}"
    );
    let mut bytes = [0u8; 16];
    guest.read_ram(site_1 - HIGH, &mut bytes).unwrap();
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert!(stdout.contains(&hex.join(" ")), "{stdout}");
}

#[test]
fn breakpoint_by_symbol_prints_each_hit_and_leaves_no_trace() {
    let (guest, m) = Guest::boot_test_guest();
    let site_1 = m.symbol("site_1");
    let kallsyms = guest.dir().join("kallsyms");
    let text: String = ["site_1", "site_2", "site_3", "watched"]
        .iter()
        .map(|n| format!("{:016x} T {n}\n", m.symbol(n)))
        .collect();
    std::fs::write(&kallsyms, text).unwrap();
    let mut code = [0u8; 8];
    guest.read_ram(site_1 - HIGH, &mut code).unwrap();
    let stdout = run_ok(
        "legacy-breakpoint",
        &[
            path(guest.qmp_socket()),
            path(guest.gdb_socket()),
            "site_1",
            "--kallsyms",
            path(&kallsyms),
            "--hits",
            "3",
        ],
    );
    let hits: Vec<&str> = stdout.lines().filter(|l| l.starts_with("hit ")).collect();
    assert_eq!(hits.len(), 3, "{stdout}");
    let mut r12 = Vec::new();
    for h in &hits {
        assert_eq!(hex_after(h, "rip "), Some(site_1), "{h}");
        assert_eq!(hex_after(h, "gfn "), Some((site_1 - HIGH) >> 12), "{h}");
        r12.push(hex_after(h, "r12 ").unwrap());
    }
    // r12 counts loop iterations: one per hit.
    assert!(r12.windows(2).all(|w| w[1] == w[0] + 1), "{stdout}");
    assert!(stdout.contains("breakpoint removed"), "{stdout}");
    let mut after = [0u8; 8];
    guest.read_ram(site_1 - HIGH, &mut after).unwrap();
    assert_eq!(after, code, "no 0xCC left in guest RAM");
    assert_ticks_on(&guest, "the breakpoint example");
}

#[test]
fn singlestep_prints_consecutive_instructions() {
    let (guest, _m) = Guest::boot_test_guest();
    let stdout = run_ok(
        "legacy-singlestep",
        &[
            path(guest.qmp_socket()),
            path(guest.gdb_socket()),
            "--steps",
            "6",
        ],
    );
    let rips: Vec<u64> = stdout
        .lines()
        .filter(|l| l.starts_with("step "))
        .map(|l| hex_after(l, "rip ").unwrap())
        .collect();
    assert_eq!(rips.len(), 6, "{stdout}");
    // The best mask the accelerator accepts: KVM has no timer mask.
    let mask = match guest.accel() {
        Accel::Kvm => "step mask 0x3",
        Accel::Tcg => "step mask 0x7",
    };
    assert!(stdout.contains(mask), "{stdout}");
    assert!(
        rips.iter().all(|r| *r >= HIGH),
        "the loop runs in the higher half: {rips:x?}"
    );
    assert!(
        rips.windows(2).all(|w| w[0] != w[1]),
        "RIP moves: {rips:x?}"
    );
    // Each step's bytes are what guest RAM holds at that RIP.
    for l in stdout.lines().filter(|l| l.starts_with("step ")) {
        let rip = hex_after(l, "rip ").unwrap();
        let mut b = [0u8; 8];
        guest.read_ram(rip - HIGH, &mut b).unwrap();
        let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
        assert!(l.ends_with(&hex.join(" ")), "{l}");
    }
    assert_ticks_on(&guest, "single-stepping");
}

#[test]
fn a_missing_part_names_the_qemu_option_to_add() {
    let (guest, m) = Guest::boot_test_guest();
    let qmp = path(guest.qmp_socket());
    let nowhere = guest.dir().join("no-such.sock");
    let site_1 = format!("{:#x}", m.symbol("site_1"));
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "legacy-breakpoint",
            vec![qmp, path(&nowhere), &site_1],
            "-gdb chardev:gdb0",
        ),
        (
            "legacy-singlestep",
            vec![qmp, path(&nowhere)],
            "-gdb chardev:gdb0",
        ),
        (
            "legacy-dump-memory",
            vec![path(&nowhere), "out"],
            "-qmp unix:",
        ),
    ];
    for (name, args, option) in cases {
        let out = run(name, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {stderr}");
        assert!(stderr.contains(option), "{name} names {option:?}: {stderr}");
    }
    let out = run("legacy-map-addr", &[]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: legacy-map-addr"));
}

/// Issue 17: `--help` (and `-h`) print the usage alone, on stdout, and exit 0 — no
/// stray empty line, no "error". Needs no guest.
#[test]
fn help_prints_the_usage_alone_and_exits_0() {
    for name in [
        "legacy-breakpoint",
        "legacy-dump-memory",
        "legacy-map-addr",
        "legacy-singlestep",
    ] {
        for flag in ["--help", "-h"] {
            let out = run(name, &[flag]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{name} {flag}: {stderr}");
            assert!(stderr.is_empty(), "{name} {flag} wrote to stderr: {stderr}");
            assert!(
                stdout.starts_with(&format!("usage: {name} ")),
                "{name} {flag}: {stdout:?}"
            );
            assert!(
                !stdout.to_lowercase().contains("error") && !stdout.contains("\n\n"),
                "{name} {flag}: {stdout:?}"
            );
        }
    }
    // Addresses are documented as hex where an address is taken.
    for name in ["legacy-breakpoint", "legacy-map-addr"] {
        let stdout = String::from_utf8_lossy(&run(name, &["--help"]).stdout).into_owned();
        assert!(stdout.contains("hex, with or without 0x"), "{stdout}");
    }
}

/// Issue 17: an address as `/proc/kallsyms` prints it (hex without `0x`) is taken as
/// hex by map-addr (the VA and `--cr3`) and breakpoint; a string that is not hex is a
/// usage error; `legacy-dump-memory --live` works as its usage says.
#[test]
fn addresses_without_0x_are_hex_and_dump_memory_live_works() {
    let (guest, m) = Guest::boot_test_guest();
    let site_1 = m.symbol("site_1");
    let qmp = path(guest.qmp_socket());
    let stdout = run_ok("legacy-map-addr", &[qmp, &format!("{site_1:x}")]);
    assert!(
        stdout.contains(&format!("{site_1:#x} -> {:#x} (Size4K", site_1 - HIGH)),
        "{stdout}"
    );
    let cr3 = stdout
        .lines()
        .find_map(|l| hex_after(l, "CR3 "))
        .expect("CR3 line");
    let stdout = run_ok(
        "legacy-map-addr",
        &[qmp, &format!("{site_1:X}"), "--cr3", &format!("{cr3:x}")],
    );
    assert!(stdout.contains(&format!("CR3 {cr3:#x}")), "{stdout}");
    assert!(
        stdout.contains(&format!("{site_1:#x} -> {:#x}", site_1 - HIGH)),
        "{stdout}"
    );
    for bad in ["site_1", "-1", "+ff", "0x", "12345678901234567"] {
        let out = run("legacy-map-addr", &[qmp, bad]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {stderr}");
        assert!(stderr.contains("not a hex address"), "{bad:?}: {stderr}");
    }
    let stdout = run_ok(
        "legacy-breakpoint",
        &[
            qmp,
            path(guest.gdb_socket()),
            &format!("{site_1:016x}"),
            "--hits",
            "1",
        ],
    );
    let hit = stdout
        .lines()
        .find(|l| l.starts_with("hit 1:"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(hex_after(hit, "rip "), Some(site_1), "{stdout}");
    let out = guest.dir().join("live.bin");
    let stdout = run_ok("legacy-dump-memory", &[qmp, path(&out), "--live"]);
    assert!(stdout.contains(", live"), "{stdout}");
    let mut want = [0u8; 64];
    guest.read_ram(m.symbol("pattern_phys"), &mut want).unwrap();
    let dump = std::fs::read(&out).unwrap();
    let at = m.symbol("pattern_phys") as usize;
    assert_eq!(
        &dump[at..at + 64],
        want,
        "the pattern page in the live dump"
    );
    std::fs::remove_file(&out).unwrap();
    assert_ticks_on(&guest, "the examples");
}

/// Issue 17: `legacy-singlestep --vcpu 5` on a 2-vCPU guest fails at once naming the
/// missing vCPU (it used to wait 10 s for steps that could not come).
#[test]
fn singlestep_on_a_vcpu_the_guest_lacks_fails_at_once() {
    let mut opts = GuestOptions::test_guest();
    opts.cpus = 2;
    let guest = Guest::launch(opts).expect("launching the test guest");
    guest.wait_ready().expect("test guest ready");
    let start = Instant::now();
    let out = run(
        "legacy-singlestep",
        &[
            path(guest.qmp_socket()),
            path(guest.gdb_socket()),
            "--vcpu",
            "5",
        ],
    );
    let took = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("vCPU 5 does not exist (the guest has 2)"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("single-stepping"),
        "refused before it started"
    );
    // The old wait was 10 s per step; connecting takes well under a second.
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_ticks_on(&guest, "the refused singlestep");
}
