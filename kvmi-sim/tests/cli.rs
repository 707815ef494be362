//! The `kvmi-sim` binary against a minimal hand-rolled tool.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::process::Command;

fn frame(id: u16, seq: u32, p: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&(p.len() as u16).to_le_bytes());
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend_from_slice(p);
    f
}

/// Runs the binary with `args` against a hand-rolled tool that enables UNHOOK and
/// XSETBV on `vcpus` vCPUs and answers every event; returns the XSETBV events answered,
/// the exit status and stdout.
fn run_against_tool(vcpus: u16, args: &[&str]) -> (usize, std::process::ExitStatus, String) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "kvmi-sim-cli-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kvmi-sim"))
        .args(["--socket", path.to_str().unwrap()])
        .args(["--vcpus", &vcpus.to_string()])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut hello = [0u8; 96];
    s.read_exact(&mut hello).unwrap();
    let mut reply = 24u32.to_le_bytes().to_vec();
    reply.extend_from_slice(&[0; 20]);
    s.write_all(&reply).unwrap();
    // Enable UNHOOK (VM event 0) and XSETBV (3) on every vCPU.
    s.write_all(&frame(8, 1, &[0, 0, 1, 0, 0, 0, 0, 0]))
        .unwrap();
    for v in 0..vcpus {
        let mut p = vec![0u8; 8];
        p[..2].copy_from_slice(&v.to_le_bytes());
        p.extend_from_slice(&[3, 0, 1, 0, 0, 0, 0, 0]);
        s.write_all(&frame(9, 2 + u32::from(v), &p)).unwrap();
    }
    let mut xsetbv = 0;
    loop {
        let mut h = [0u8; 8];
        if s.read_exact(&mut h).is_err() {
            break;
        }
        let id = u16::from_le_bytes([h[0], h[1]]);
        let size = u16::from_le_bytes([h[2], h[3]]) as usize;
        let seq = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let mut d = vec![0u8; size];
        s.read_exact(&mut d).unwrap();
        if id == 1 {
            match d[4] {
                0 => break, // UNHOOK: close.
                ev => {
                    xsetbv += usize::from(ev == 3);
                    // Reply on the event's vCPU (kvmi_event.vcpu at offset 2).
                    let mut r = d[2..4].to_vec();
                    r.resize(8, 0);
                    r.extend_from_slice(&[0, ev, 0, 0, 0, 0, 0, 0]);
                    s.write_all(&frame(0, seq, &r)).unwrap();
                }
            }
        } else {
            assert_eq!(&d[..4], &[0; 4], "command {id} failed");
        }
    }
    drop(s);
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&path);
    (xsetbv, out.status, String::from_utf8(out.stdout).unwrap())
}

#[test]
fn binary_runs_workload_and_prints_summary() {
    let (xsetbv, status, text) = run_against_tool(1, &["--duration", "0.5"]);
    assert!(status.success());
    assert!(xsetbv > 0);
    assert!(text.contains("XSETBV"), "{text}");
    assert!(text.contains("VCPU_CONTROL_EVENTS"), "{text}");
    assert!(text.contains("events/s"), "{text}");
}

#[test]
fn rate_option_paces_or_unleashes_events() {
    // Paced: 10 events/s over 2 vCPUs for 1 s is at most 10 events (the schedule has
    // slots at 0, 0.1, ..., 0.9 s), and some get through.
    let (paced, status, text) = run_against_tool(2, &["--duration", "1", "--rate", "10"]);
    assert!(status.success(), "{text}");
    assert!(
        (1..=10).contains(&paced),
        "{paced} events at --rate 10 in 1 s\n{text}"
    );
    assert!(text.contains("rate 10/s"), "{text}");
    // Unlimited: well beyond the old cap of 20 events/s (one workload round per 100 ms,
    // i.e. at most 10 here), even on a slow machine: each event is one local round trip.
    let (fast, status, text) = run_against_tool(2, &["--duration", "0.5", "--rate", "unlimited"]);
    assert!(status.success(), "{text}");
    assert!(
        fast > 40,
        "only {fast} events in 0.5 s with --rate unlimited\n{text}"
    );
    assert!(text.contains("rate unlimited"), "{text}");
    // Bad values are usage errors.
    for bad in ["0", "-3", "fast", "NaN"] {
        let out = Command::new(env!("CARGO_BIN_EXE_kvmi-sim"))
            .args(["--socket", "/nonexistent", "--rate", bad])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--rate {bad}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--rate"));
    }
}

/// The binary's workload executes the guest kernel: a breakpoint the tool writes into
/// guest memory and the guest's own int3 both come back as BREAKPOINT events at their
/// documented addresses.
#[test]
fn binary_workload_hits_breakpoints_written_into_guest_memory() {
    use kvmi_sim::guest;
    use kvmi_sys as sys;
    use zerocopy::FromBytes;
    let path = std::env::temp_dir().join(format!("kvmi-sim-cli-bp-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_kvmi-sim"))
        .args(["--socket", path.to_str().unwrap(), "--vcpus", "1"])
        .args(["--duration", "0.5", "--rate", "unlimited"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut hello = [0u8; 96];
    s.read_exact(&mut hello).unwrap();
    let mut reply = 24u32.to_le_bytes().to_vec();
    reply.extend_from_slice(&[0; 20]);
    s.write_all(&reply).unwrap();
    // INT3 at the documented breakpoint target, then UNHOOK and BREAKPOINT on vCPU 0.
    let mut w = guest::SYM_BP_TARGET_PA.to_le_bytes().to_vec();
    w.extend_from_slice(&1u64.to_le_bytes());
    w.push(0xcc);
    s.write_all(&frame(sys::KVMI_VM_WRITE_PHYSICAL, 1, &w))
        .unwrap();
    s.write_all(&frame(8, 2, &[0, 0, 1, 0, 0, 0, 0, 0]))
        .unwrap();
    let mut p = vec![0u8; 8];
    p.extend_from_slice(&[sys::KVMI_EVENT_BREAKPOINT, 0, 1, 0, 0, 0, 0, 0]);
    s.write_all(&frame(9, 3, &p)).unwrap();
    let (mut at_target, mut at_selftest) = (0, 0);
    loop {
        let mut h = [0u8; 8];
        if s.read_exact(&mut h).is_err() {
            break;
        }
        let id = u16::from_le_bytes([h[0], h[1]]);
        let size = u16::from_le_bytes([h[2], h[3]]) as usize;
        let seq = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        let mut d = vec![0u8; size];
        s.read_exact(&mut d).unwrap();
        if id != sys::KVMI_EVENT {
            assert_eq!(&d[..4], &[0; 4], "command {id} failed");
            continue;
        }
        let ev = sys::Event::read_from_prefix(&d).unwrap().0;
        if ev.event == sys::KVMI_EVENT_UNHOOK {
            break;
        }
        assert_eq!(ev.event, sys::KVMI_EVENT_BREAKPOINT);
        let bp = sys::EventBreakpoint::read_from_prefix(&d[sys::EVENT_SIZE..])
            .unwrap()
            .0;
        match (bp.gpa, ev.arch.regs.rip) {
            (guest::SYM_BP_TARGET_PA, guest::SYM_BP_TARGET) => at_target += 1,
            (guest::SYM_INT3_SELFTEST_PA, guest::SYM_INT3_SELFTEST) => at_selftest += 1,
            other => panic!("breakpoint at {other:x?}"),
        }
        assert_eq!(bp.insn_len, 1);
        // CONTINUE: reinject #BP.
        let mut r = d[2..4].to_vec();
        r.resize(8, 0);
        r.extend_from_slice(&[0, ev.event, 0, 0, 0, 0, 0, 0]);
        s.write_all(&frame(0, seq, &r)).unwrap();
    }
    drop(s);
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success());
    assert!(
        at_target > 0 && at_selftest > 0,
        "{at_target} {at_selftest}"
    );
}
