//! The examples in `examples/` run as processes against kvmi-sim (in this process)
//! over a real UNIX socket, the way they run against a KVM-VMI host.

mod common;

use common::*;
use kvmi_sim::{SimConfig, SimEvent, Simulator};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// `target/<profile>/examples/<name>`, next to this test's `deps` directory (cargo
/// builds the examples before running integration tests).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    dir.join("examples").join(name)
}

fn start(name: &str, args: &[&str]) -> (Child, PathBuf) {
    let path = socket_path(name);
    let mut cmd = Command::new(example(name));
    cmd.arg(&path)
        .arg(std::str::from_utf8(SECRET).unwrap())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(eventually(|| path.exists()), "{name} did not listen");
    (child, path)
}

fn sim(path: &PathBuf, abi: kvmi_sim::Abi) -> Simulator {
    sim_with(path, abi, |_| {})
}

fn sim_with(path: &PathBuf, abi: kvmi_sim::Abi, tweak: impl FnOnce(&mut SimConfig)) -> Simulator {
    let mut cfg = SimConfig {
        abi,
        secret: Some(SECRET.to_vec()),
        event_timeout: T,
        ..SimConfig::default()
    };
    tweak(&mut cfg);
    Simulator::connect(path, cfg).unwrap()
}

fn finish(child: Child) -> (String, String) {
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cr3_event_example() {
    let (child, path) = start("cr3-event", &["2"]);
    let s = sim(&path, kvmi_sim::Abi::V7);
    assert!(eventually(|| s.vm().vcpus[1].cr_intercepts.contains(&3)));
    let old = s.vm().vcpus[1].sregs.cr3;
    s.trigger_and_wait(
        1,
        SimEvent::Cr {
            cr: 3,
            old,
            new: 0x7000,
        },
    )
    .unwrap();
    s.trigger_and_wait(
        0,
        SimEvent::Cr {
            cr: 3,
            old,
            new: 0x8000,
        },
    )
    .unwrap();
    let (out, _) = finish(child);
    assert!(
        out.contains(&format!("vCPU 1 CR3 {old:#x} -> 0x7000")),
        "{out}"
    );
    assert!(out.contains("2 CR3 events"), "{out}");
    assert!(s.wait_closed(T).is_ok());
    assert!(s
        .vm()
        .vcpus
        .iter()
        .all(|v| v.cr_intercepts.is_empty() && v.events.is_empty()));
}

#[test]
fn cpuid_event_example() {
    let (child, path) = start("cpuid-event", &["1"]);
    let s = sim(&path, kvmi_sim::Abi::V7);
    assert!(eventually(|| s.vm().vcpus[0]
        .events
        .contains(&kvmi_sys::KVMI_EVENT_CPUID)));
    s.trigger_and_wait(
        0,
        SimEvent::Cpuid {
            leaf: 0xd,
            subleaf: 1,
        },
    )
    .unwrap();
    let (out, _) = finish(child);
    assert!(out.contains("CPUID leaf 0xd subleaf 0x1"), "{out}");
}

#[test]
fn singlestep_example_v7_steps_and_v6_says_why_not() {
    let (child, path) = start("singlestep-event", &["1"]);
    let s = sim(&path, kvmi_sim::Abi::V7);
    assert!(eventually(|| s.vm().vcpus[0].singlestep));
    s.trigger_and_wait(0, SimEvent::Singlestep { failed: false })
        .unwrap();
    let (out, _) = finish(child);
    assert!(out.contains("1 singlestep events"), "{out}");
    assert!(s.wait_closed(T).is_ok());
    assert!(!s.vm().vcpus[0].singlestep, "teardown disarmed it");

    let (child, path) = start("singlestep-event", &["1"]);
    let _s = sim(&path, kvmi_sim::Abi::V6);
    let (out, _) = finish(child);
    assert!(
        out.contains("singlestep unavailable") && out.contains("§"),
        "{out}"
    );
}

#[test]
fn dump_memory_example() {
    let (child, path) = start("dump-memory", &["2"]);
    // 2 MiB asked, 1 MiB (256 frames) backed: the rest are holes, zero-filled.
    let _s = sim_with(&path, kvmi_sim::Abi::V7, |c| {
        c.memory = kvmi_sim::GuestMemory::new(512);
        for g in 0..256 {
            c.memory.add_frame(g);
        }
        c.memory.load(0x3000, b"guest bytes");
    });
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.stdout.len(), 2 << 20, "{err}");
    assert_eq!(&out.stdout[0x3000..0x300b], b"guest bytes");
    assert!(out.stdout[1 << 20..].iter().all(|b| *b == 0));
    assert!(err.contains("256 pages unbacked"), "{err}");
}
