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
    let child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "{name}: {e} — the examples are built by a plain `cargo test -p vmi-kvm`; \
             with `--test examples` add `--examples`"
        )
    });
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

#[test]
fn msr_event_example() {
    let (child, path) = start("msr-event", &["1"]);
    let s = sim(&path, kvmi_sim::Abi::V7);
    let lstar = 0xc000_0082;
    assert!(eventually(|| s.vm().vcpus[0]
        .msr_intercepts
        .contains(&lstar)));
    let old = s.vm().vcpus[0].msrs[&lstar];
    s.trigger_and_wait(
        0,
        SimEvent::Msr {
            msr: lstar,
            old,
            new: 0x1000,
        },
    )
    .unwrap();
    let (out, _) = finish(child);
    assert!(
        out.contains(&format!("MSR 0xc0000082 {old:#x} -> 0x1000")),
        "{out}"
    );
}

#[test]
fn descriptor_event_example() {
    let (child, path) = start("descriptor-event", &["2"]);
    let s = sim(&path, kvmi_sim::Abi::V7);
    let on = |s: &Simulator| {
        s.vm().vcpus[1]
            .events
            .contains(&kvmi_sys::KVMI_EVENT_DESCRIPTOR)
    };
    assert!(eventually(|| on(&s)));
    s.trigger_and_wait(
        1,
        SimEvent::Descriptor {
            descriptor: kvmi_sys::KVMI_DESC_LDTR,
            write: true,
        },
    )
    .unwrap();
    s.trigger_and_wait(
        1,
        SimEvent::Descriptor {
            descriptor: kvmi_sys::KVMI_DESC_TR,
            write: false,
        },
    )
    .unwrap();
    let (out, _) = finish(child);
    assert!(
        out.contains("vCPU 1 Ldtr load") && out.contains("vCPU 1 Tr store"),
        "{out}"
    );
}

#[test]
fn mem_event_example() {
    let (child, path) = start("mem-event", &["1", "0x20"]);
    let s = sim(&path, kvmi_sim::Abi::V7);
    assert!(eventually(|| s.vm().page_access.contains_key(&(0, 0x20))));
    s.trigger_and_wait(
        0,
        SimEvent::Pf {
            gva: 0xffff_8880_0002_0008,
            gpa: 0x20008,
            access: kvmi_sys::KVMI_PAGE_ACCESS_W,
        },
    )
    .unwrap();
    let (out, _) = finish(child);
    assert!(
        out.contains("Access(W) at 0x20+0x8 (gla 0xffff888000020008)"),
        "{out}"
    );
    assert!(s.wait_closed(T).is_ok());
    assert!(
        s.vm().page_access.is_empty(),
        "teardown lifted the restriction"
    );
}

#[test]
fn emul_read_data_example() {
    let (child, path) = start("emul-read-data", &["1", "0x21"]);
    let s = sim(&path, kvmi_sim::Abi::V7);
    assert!(eventually(|| s.vm().page_access.contains_key(&(0, 0x21))));
    let r = s
        .trigger_and_wait(
            0,
            SimEvent::Pf {
                gva: 0xffff_8880_0002_1000,
                gpa: 0x21000,
                access: kvmi_sys::KVMI_PAGE_ACCESS_R,
            },
        )
        .unwrap();
    let pf = r.pf.unwrap();
    assert_eq!(
        (pf.ctx_addr, pf.ctx_data.len()),
        (0xffff_8880_0002_1000, 16)
    );
    assert!(pf.ctx_data.iter().all(|b| *b == 0));
    let (out, _) = finish(child);
    assert!(out.contains("1 reads answered"), "{out}");
}

#[test]
fn breakpoint_recoil_example() {
    let (child, path) = start("breakpoint-recoil", &["2", "0x4010"]);
    let s = sim_with(&path, kvmi_sim::Abi::V7, |c| c.memory.load(0x4010, &[0x55]));
    assert!(eventually(
        || s.vm().memory.read(0x4010, 1) == Some(vec![0xcc])
    ));
    for hit in 0..2 {
        let r = s
            .trigger_and_wait(
                0,
                SimEvent::Breakpoint {
                    gpa: 0x4010,
                    insn_len: 1,
                },
            )
            .unwrap();
        assert_eq!(
            r.action,
            Some(kvmi_sys::KVMI_EVENT_ACTION_RETRY),
            "not delivered to the guest"
        );
        if hit == 1 {
            break; // the example exits mid step-over: the teardown undoes it
        }
        assert_eq!(
            s.vm().memory.read(0x4010, 1),
            Some(vec![0x55]),
            "stepping over"
        );
        s.trigger_and_wait(0, SimEvent::Singlestep { failed: false })
            .unwrap();
        assert!(eventually(
            || s.vm().memory.read(0x4010, 1) == Some(vec![0xcc])
        ));
    }
    let (out, _) = finish(child);
    assert!(out.contains("2 breakpoint hits"), "{out}");
    assert!(s.wait_closed(T).is_ok());
    assert_eq!(
        s.vm().memory.read(0x4010, 1),
        Some(vec![0x55]),
        "byte restored"
    );
    assert!(!s.vm().vcpus[0].singlestep, "step over undone");
}

#[test]
fn interrupt_event_example_reinjects() {
    let (child, path) = start("interrupt-event", &["1"]);
    let s = sim(&path, kvmi_sim::Abi::V6);
    let on = |s: &Simulator| {
        s.vm().vcpus[0]
            .events
            .contains(&kvmi_sys::KVMI_EVENT_BREAKPOINT)
    };
    assert!(eventually(|| on(&s)));
    let r = s
        .trigger_and_wait(
            0,
            SimEvent::Breakpoint {
                gpa: 0x5000,
                insn_len: 1,
            },
        )
        .unwrap();
    assert_eq!(r.action, Some(kvmi_sys::KVMI_EVENT_ACTION_CONTINUE));
    let (out, _) = finish(child);
    assert!(out.contains("reinjected"), "{out}");
}

#[test]
fn map_addr_example() {
    let va = 0xffff_ffff_8120_0000u64;
    let path = socket_path("map-addr");
    let mut cmd = Command::new(example("map-addr"));
    cmd.arg(&path)
        .arg(std::str::from_utf8(SECRET).unwrap())
        .arg("8")
        .arg(format!("{va:#x}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().unwrap();
    assert!(eventually(|| path.exists()));
    let _s = sim_with(&path, kvmi_sim::Abi::V7, |c| {
        let cr3 = kvmi_sim::Vcpu::new_long_mode(0).sregs.cr3;
        let mut next = 0x80_000;
        c.memory.map_4level(cr3, va, 0x6000, &mut next);
        c.memory.load(0x6000, b"\x48\x89\xe5kvmi");
    });
    let (out, _) = finish(child);
    assert!(out.contains("-> 0x6000 (software walk"), "{out}");
    assert!(out.contains("(host)"), "{out}");
    assert!(out.contains("[48, 89, e5, 6b, 76, 6d, 69, 00]"), "{out}");
}

#[test]
fn demo_example_against_the_simulator_workload() {
    let (mut child, path) = start("demo", &["0", "0x10"]);
    let s = sim(&path, kvmi_sim::Abi::V7);
    // The simulator's built-in workload raises whatever the demo has enabled.
    let end = std::time::Instant::now() + T * 4;
    while child.try_wait().unwrap().is_none() && std::time::Instant::now() < end {
        let _ = s.run_workload(kvmi_sim::Workload::EveryEnabledEvent);
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let (out, err) = finish(child);
    for want in [
        "== VM \"kvmi-sim\" over kvmi-v7, 2 vCPUs",
        "CR3 0x",
        "INT3 at",
        "Access(W) at 0x10+",
        "== closed: intercepts",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}\n{err}");
    }
    assert!(s.vm().page_access.is_empty());
}
