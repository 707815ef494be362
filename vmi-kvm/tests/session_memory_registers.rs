//! Connect, capability report, memory and registers against kvmi-sim over a real
//! socket, in kvmi-v7 and kvmi-v6.

mod common;

use common::*;
use kvmi_proto::sys;
use std::time::Duration;
use vmi_core::{
    Backend, Capability, Error, Gpa, MemoryLayout, PhysicalMemory, PhysicalMemoryWrite,
    ReadRegisters, RegisterGroups, Support, VcpuControl, VcpuId,
};
use vmi_kvm::{KvmiListener, KvmiVm};

#[test]
fn v7_session_reports_every_row_from_the_host() {
    let (vm, _sim) = v7();
    assert_eq!(vm.name(), "kvmi-v7");
    assert_eq!(vm.vm_name(), "kvmi-sim");
    assert_eq!(vm.vcpu_count().unwrap(), 2);
    let caps = vm.capabilities();
    assert_eq!(caps.rows().count(), Capability::ALL.len());
    // Every row is declared by the backend, none falls back to "not declared".
    for (c, s) in caps.rows() {
        if let Support::Unsupported(r) = s {
            assert!(!r.contains("not declared"), "{c}: {r}");
        }
    }
    for c in [
        Capability::ReadPhysicalMemory,
        Capability::PauseVcpu,
        Capability::EventSinglestep,
        Capability::EventCpuid,
        Capability::ResponseToggleSinglestep,
        Capability::HostTranslateGva,
    ] {
        assert!(caps.is_supported(c), "{c}");
    }
    let Support::Unsupported(why) = caps.get(Capability::WriteControlRegisters) else {
        panic!("KVMi cannot write CRs")
    };
    assert!(why.contains("§3"), "{why}");
}

#[test]
fn v6_session_declares_v6_limits() {
    let (vm, _sim) = v6();
    assert_eq!(vm.name(), "kvmi-v6");
    let caps = vm.capabilities();
    for c in [
        Capability::EventSinglestep,
        Capability::EventCpuid,
        Capability::HostTranslateGva,
        Capability::ResponseToggleSinglestep,
    ] {
        let Support::Unsupported(why) = caps.get(c) else {
            panic!("{c} must be unsupported on v6")
        };
        assert!(why.contains("§7") || why.contains("§6"), "{c}: {why}");
    }
    assert!(caps.is_supported(Capability::ReadPhysicalMemory));
    assert!(caps.is_supported(Capability::EventRegisterCr));
    // CHECK_COMMAND cannot vouch for id 29 on v6; the command itself was asked.
    assert!(caps.is_supported(Capability::MemorySize));
}

#[test]
fn disallowed_commands_show_in_the_report() {
    let (vm, _sim) = setup(kvmi_sim::Abi::V7, |s| {
        let mut all: std::collections::BTreeSet<u16> =
            sys::KVMI_COMMAND_IDS.iter().copied().collect();
        all.remove(&sys::KVMI_VM_WRITE_PHYSICAL);
        s.allowed_commands = Some(all);
    });
    let caps = vm.capabilities();
    assert!(caps.is_supported(Capability::ReadPhysicalMemory));
    let Support::Unsupported(why) = caps.get(Capability::WritePhysicalMemory) else {
        panic!("write disallowed by QEMU")
    };
    assert!(why.contains("disallowed"), "{why}");
}

#[test]
fn wrong_path_timeout_and_refused_cookie_are_clear_errors() {
    let e = KvmiListener::bind("/nonexistent-dir-vmi-kvm/x.sock", config()).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");

    let path = socket_path("timeout");
    let l = KvmiListener::bind(&path, config()).unwrap();
    let e = l.accept(Duration::from_millis(100)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(e.to_string().contains(&path.display().to_string()), "{e}");

    // QEMU refuses a cookie made from another secret: it closes the socket.
    let p = path.clone();
    let sim = std::thread::spawn(move || {
        kvmi_sim::Simulator::connect(
            &p,
            kvmi_sim::SimConfig {
                secret: Some(b"another secret".to_vec()),
                ..kvmi_sim::SimConfig::default()
            },
        )
    });
    let e = l.accept(T).unwrap_err();
    assert!(
        matches!(e, Error::Disconnected { .. } | Error::Backend { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("secret") || e.to_string().contains("closed"),
        "{e}"
    );
    assert!(sim.join().unwrap().is_err());
    let e = KvmiVm::listen("/nonexistent-dir-vmi-kvm/y.sock", config(), T).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4096) as u8).collect()
}

fn memory_any_length_and_alignment(abi: kvmi_sim::Abi) {
    let (vm, sim) = setup(abi, |_| {});
    let data = pattern(4 * 4096);
    sim.vm().memory.load(0x5000, &data);
    let before = commands(&sim, sys::KVMI_VM_READ_PHYSICAL);
    // 0x5ff0..0x8010: 4 page pieces.
    let mut buf = vec![0u8; 0x2020];
    vm.read_physical(Gpa(0x5ff0), &mut buf).unwrap();
    assert_eq!(&buf[..], &data[0xff0..0xff0 + 0x2020]);
    assert_eq!(commands(&sim, sys::KVMI_VM_READ_PHYSICAL) - before, 4);
    let mut one = [0u8; 1];
    vm.read_physical(Gpa(0x6fff), &mut one).unwrap();
    assert_eq!(one[0], data[0x1fff]);

    // Writes across a page boundary land in the guest model.
    vm.write_physical(Gpa(0x6ffe), b"abcd").unwrap();
    assert_eq!(sim.vm().memory.read(0x6ffe, 4).unwrap(), b"abcd");

    // Holes are typed errors naming the whole request.
    let mut b = [0u8; 16];
    let e = vm.read_physical(Gpa(0x100_0000), &mut b).unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnmappedPhysical {
                gpa: Gpa(0x100_0000),
                len: 16
            }
        ),
        "{e}"
    );
    let e = vm.read_physical(Gpa(u64::MAX - 4), &mut b).unwrap_err();
    assert!(matches!(e, Error::UnmappedPhysical { .. }), "{e}");

    let max = sim.vm().memory.max_gfn;
    assert_eq!(vm.memory_info().unwrap().ram_size(), max * 4096);
}

#[test]
fn v7_memory_any_length_and_alignment() {
    memory_any_length_and_alignment(kvmi_sim::Abi::V7);
}

#[test]
fn v6_memory_any_length_and_alignment() {
    memory_any_length_and_alignment(kvmi_sim::Abi::V6);
}

fn snapshot_in_one_round_trip(abi: kvmi_sim::Abi) {
    let (vm, sim) = setup(abi, |_| {});
    sim.vm().vcpus[1].regs.rax = 0x1234_5678;
    sim.vm().vcpus[1].regs.rip = 0xffff_ffff_8100_0000;
    use vmi_core::registers::msr;
    let before = commands(&sim, sys::KVMI_VCPU_GET_REGISTERS);
    let regs = vm
        .registers(
            VcpuId(1),
            RegisterGroups::all() - RegisterGroups::XCR0,
            &[msr::LSTAR, msr::STAR, msr::IA32_PAT],
        )
        .unwrap();
    assert_eq!(commands(&sim, sys::KVMI_VCPU_GET_REGISTERS) - before, 1);
    let lstar = sim.vm().vcpus[1].msrs[&msr::LSTAR];
    assert_eq!(regs.msrs.get(msr::LSTAR), Some(lstar));
    // An MSR the host cannot read (the simulator has no SYSCALL_MASK) is left out;
    // the others are still read.
    let r = vm
        .registers(VcpuId(1), RegisterGroups::MSRS, &msr::ESSENTIAL)
        .unwrap();
    assert_eq!(r.msrs.get(msr::SYSCALL_MASK), None);
    assert_eq!(r.msrs.get(msr::LSTAR), Some(lstar));
    let g = regs.gprs.unwrap();
    assert_eq!((g.rax, g.rip), (0x1234_5678, 0xffff_ffff_8100_0000));
    let (cr3, efer, tr_sel, ldt_sel) = {
        let v = &sim.vm().vcpus[1];
        (
            v.sregs.cr3,
            v.sregs.efer,
            v.sregs.tr.selector,
            v.sregs.ldt.selector,
        )
    };
    assert_eq!(regs.control.unwrap().cr3, cr3);
    assert_eq!(regs.efer(), Some(efer));
    let s = regs.segments.unwrap();
    assert_eq!((s.tr.selector, s.ldtr.selector), (tr_sel, ldt_sel));
    assert!(
        regs.debug.is_none(),
        "KVMi cannot read debug registers: absent, not zero"
    );
    assert!(regs.gdtr.is_some() && regs.idtr.is_some());
    let e = vm
        .registers(VcpuId(9), RegisterGroups::GPRS, &[])
        .unwrap_err();
    assert!(matches!(e, Error::NoSuchVcpu { .. }), "{e}");
}

#[test]
fn v7_register_snapshot_in_one_round_trip() {
    snapshot_in_one_round_trip(kvmi_sim::Abi::V7);
}

#[test]
fn v6_register_snapshot_in_one_round_trip() {
    snapshot_in_one_round_trip(kvmi_sim::Abi::V6);
}

#[test]
fn host_dying_mid_command_is_a_typed_error_within_the_timeout() {
    let (vm, sim) = v7();
    // The host sends 4 bytes of its next reply, then dies.
    sim.arm_fault(kvmi_sim::Fault::TruncateNext { keep: 4 });
    let start = std::time::Instant::now();
    let mut b = [0u8; 8];
    let e = vm.read_physical(Gpa(0x1000), &mut b).unwrap_err();
    assert!(start.elapsed() < T + Duration::from_secs(1));
    assert!(
        matches!(e, Error::Disconnected { .. } | Error::Timeout { .. }),
        "{e}"
    );
    // Everything after is a typed error at once, and dropping the session is bounded.
    let e = vm
        .registers(VcpuId(0), RegisterGroups::GPRS, &[])
        .unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e}");
    let start = std::time::Instant::now();
    drop(vm);
    assert!(start.elapsed() < T + Duration::from_secs(1));
    drop(sim);
}

#[test]
fn peer_gone_while_waiting_and_paused() {
    use vmi_core::{EventControl, Monitor};
    let (vm, sim) = v7();
    vm.enable(&Monitor::Cpuid).unwrap();
    let g = vm.pause().unwrap();
    std::thread::scope(|s| {
        let w = s.spawn(|| vm.wait_event(Duration::MAX));
        std::thread::sleep(Duration::from_millis(50));
        sim.shutdown();
        let e = w.join().unwrap().unwrap_err();
        assert!(matches!(e, Error::Disconnected { .. }), "{e}");
    });
    // Releasing the pause and dropping the session are bounded and do not panic.
    assert!(g.resume().is_err());
    assert!(matches!(
        vm.pause(),
        Err(Error::Disconnected { .. }) | Err(Error::Backend { .. })
    ));
    let start = std::time::Instant::now();
    drop(vm);
    assert!(start.elapsed() < T);
}

#[test]
fn every_unsupported_row_cites_the_protocol_or_says_not_built() {
    for abi in [kvmi_sim::Abi::V7, kvmi_sim::Abi::V6] {
        let (vm, _sim) = setup(abi, |_| {});
        let caps = vm.capabilities();
        println!("{caps}");
        for (c, s) in caps.rows() {
            if let Support::Unsupported(r) | Support::Partial(r) = s {
                assert!(
                    r.contains('§') || r.contains("not implemented") || r.contains("vmi-core"),
                    "{abi:?} {c}: {r}"
                );
            }
        }
    }
}
