//! The legacy backend's GDB-stub paths against the real Linux guest: registers,
//! breakpoints, single steps, watchpoints, register writes and clean detaching.

use std::time::{Duration, Instant};

use vmi_core::event::{InterruptKind, VcpuSet};
use vmi_core::paging::{translate, PagingMode};
use vmi_core::{
    Access, Backend, Breakpoint, Breakpoints, EventControl, EventKind, Gpa, Gva, Monitor,
    ReadRegisters, RegisterGroups, Response, VcpuControl, VcpuId, WriteRegisters,
};
use vmi_legacy::gdb::GdbClient;
use vmi_legacy::{GdbSession, LegacyConfig, LegacyQemu};
use vmi_tests::Guest;

const T: Duration = Duration::from_secs(10);

fn session(guest: &Guest) -> GdbSession {
    GdbSession::connect_unix(guest.gdb_socket(), T).expect("gdbstub session")
}

/// The software translation of `gla` with `vcpu`'s paging registers.
fn soft_translate(vm: &LegacyQemu, regs: &vmi_core::RegisterSnapshot, gla: u64) -> Gpa {
    let (cr0, cr4, efer) = regs.paging_inputs().expect("paging registers");
    let cr3 = regs.control.unwrap().cr3;
    translate(
        vm,
        PagingMode::from_registers(cr0, cr4, efer),
        Gpa(cr3),
        Gva(gla),
    )
    .expect("translation")
    .gpa
}

#[test]
fn gdb_client_handshake_and_qemu_quirks() {
    let guest = Guest::boot();
    let mut gdb = GdbClient::connect_unix(guest.gdb_socket(), T).unwrap();
    // Commented-out registers in QEMU's XML must not shift the map: EFER has LMA set.
    let efer = gdb.read_register_u64("efer").unwrap();
    assert_ne!(efer & (1 << 10), 0, "EFER {efer:#x}");
    assert_eq!(gdb.read_all_registers().unwrap().len(), 608);
    assert!(gdb.monitor("info status").unwrap().contains("VM status"));
    gdb.detach().unwrap();
}

#[test]
fn registers_match_info_registers() {
    let guest = Guest::boot();
    let vm = LegacyQemu::connect(LegacyConfig::new(guest.qmp_socket())).unwrap();
    let gdb = session(&guest);
    let _p = gdb.pause().unwrap();
    for v in 0..gdb.vcpu_count().unwrap() {
        let vcpu = VcpuId(v as u16);
        let g = gdb.all_registers(vcpu).unwrap();
        let h = vm.all_registers(vcpu).unwrap();
        let (gg, hg) = (g.gprs.unwrap(), h.gprs.unwrap());
        assert_eq!(gg.rip, hg.rip, "RIP of vCPU {v}");
        assert_eq!(gg.rsp, hg.rsp, "RSP of vCPU {v}");
        assert_eq!(gg.rflags, hg.rflags, "RFLAGS of vCPU {v}");
        assert_eq!(
            g.control.unwrap().cr3,
            h.control.unwrap().cr3,
            "CR3 of vCPU {v}"
        );
        assert_eq!(g.efer(), h.efer());
        let seg = gdb.segments(vcpu).unwrap();
        assert_eq!(seg.cs, h.segments.unwrap().cs.selector);
    }
    assert!(!gdb.is_running());
}

#[test]
fn breakpoint_fires_again_and_singlestep_advances() {
    let guest = Guest::boot();
    let vm = LegacyQemu::connect(LegacyConfig::new(guest.qmp_socket())).unwrap();
    let gdb = session(&guest);
    let target = guest
        .kallsyms("do_sys_openat2")
        .expect("do_sys_openat2 in kallsyms");
    gdb.enable(&Monitor::Interrupt(InterruptKind::Int3))
        .unwrap();
    gdb.set_breakpoint(Breakpoint::at(Gva(target))).unwrap();
    for round in 0..2 {
        let p = gdb
            .wait_event(Duration::from_secs(30))
            .unwrap()
            .expect("breakpoint hit");
        let EventKind::Breakpoint {
            gla,
            gfn,
            offset,
            insn_length,
        } = p.kind
        else {
            panic!("round {round}: {:?}", p.kind)
        };
        assert_eq!(gla, Gva(target));
        assert_eq!(insn_length, 1);
        assert_eq!(p.registers.gprs.unwrap().rip, target);
        let gpa = soft_translate(&vm, &p.registers, target);
        assert_eq!((gfn, offset), (gpa.gfn(), gpa.page_offset()));
        p.reply(Response::continue_()).unwrap();
    }
    // A refused action is reported, and the vCPU still goes on: the next hit comes.
    let p = gdb
        .wait_event(Duration::from_secs(30))
        .unwrap()
        .expect("hit");
    assert!(matches!(
        gdb.capabilities()
            .check_response(p.event(), &Response::reinject()),
        Err(vmi_core::Error::Unsupported { .. })
    ));
    assert!(matches!(
        p.reply(Response::reinject()),
        Err(vmi_core::Error::Unsupported { .. })
    ));
    // Single steps from the breakpoint.
    let p = gdb
        .wait_event(Duration::from_secs(30))
        .unwrap()
        .expect("third hit");
    let vcpu = p.vcpu;
    p.reply(Response::continue_().toggle_singlestep()).unwrap();
    let mut last = target;
    for _ in 0..3 {
        let p = gdb.wait_event(T).unwrap().expect("single step");
        assert_eq!(p.vcpu, vcpu);
        let EventKind::Singlestep { gla, .. } = p.kind else {
            panic!("{:?}", p.kind)
        };
        assert_ne!(gla.0, last, "RIP advanced");
        assert_eq!(p.registers.gprs.unwrap().rip, gla.0);
        last = gla.0;
        p.reply(Response::continue_()).unwrap();
    }
    gdb.disable(&Monitor::Singlestep(VcpuSet::single(vcpu)))
        .unwrap();
    gdb.clear_breakpoint(Breakpoint::at(Gva(target))).unwrap();
    // Reinjection is refused, the capability report says why.
    let caps = vmi_core::Backend::capabilities(&gdb);
    assert!(!caps.is_supported(vmi_core::Capability::EventInterruptReinject));
}

#[test]
fn write_watchpoint_on_jiffies() {
    let guest = Guest::boot();
    // jiffies is not among the boot markers: look it up in the guest.
    let out = guest
        .run_command(
            "grep -m1 ' jiffies$' /proc/kallsyms",
            Duration::from_secs(30),
        )
        .unwrap();
    let text = format!("{out:?}");
    let addr = text
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 16)
        .and_then(|w| u64::from_str_radix(w, 16).ok())
        .unwrap_or_else(|| panic!("no jiffies address in {text}"));
    let vm = LegacyQemu::connect(LegacyConfig::new(guest.qmp_socket())).unwrap();
    let gdb = session(&guest);
    gdb.watch(Gva(addr), 8, Access::W).unwrap();
    let p = gdb
        .wait_event(Duration::from_secs(30))
        .unwrap()
        .expect("jiffies written");
    let EventKind::MemoryAccess {
        gla,
        gfn,
        offset,
        access,
        ..
    } = p.kind
    else {
        panic!("{:?}", p.kind)
    };
    assert_eq!(gla, Some(Gva(addr)));
    assert_eq!(access, Access::W);
    let gpa = soft_translate(&vm, &p.registers, addr);
    assert_eq!((gfn, offset), (gpa.gfn(), gpa.page_offset()));
    p.reply(Response::continue_()).unwrap();
    gdb.unwatch(Gva(addr), 8, Access::W).unwrap();
}

#[test]
fn register_writes_through_gdb() {
    let guest = Guest::boot();
    let gdb = session(&guest);
    let _p = gdb.pause().unwrap();
    let vcpu = VcpuId(0);
    let orig = gdb.registers(vcpu, RegisterGroups::GPRS, &[]).unwrap();
    let mut changed = orig.clone();
    changed.gprs.as_mut().unwrap().rax = 0x1234_5678_9abc_def0;
    gdb.set_registers(vcpu, &changed).unwrap();
    let back = gdb.registers(vcpu, RegisterGroups::GPRS, &[]).unwrap();
    assert_eq!(back.gprs.unwrap().rax, 0x1234_5678_9abc_def0);
    gdb.set_registers(vcpu, &orig).unwrap();
    assert_eq!(
        gdb.registers(vcpu, RegisterGroups::GPRS, &[]).unwrap(),
        orig
    );
    // Groups the stub cannot write are refused before anything is written.
    let mut bad = changed.clone();
    bad.gdtr = Some(Default::default());
    assert!(matches!(
        gdb.set_registers(vcpu, &bad),
        Err(vmi_core::Error::Unsupported { .. })
    ));
    assert_eq!(
        gdb.registers(vcpu, RegisterGroups::GPRS, &[]).unwrap(),
        orig
    );
}

#[test]
fn dropping_the_session_leaves_no_breakpoint() {
    let guest = Guest::boot();
    let target = guest.kallsyms("do_sys_openat2").unwrap();
    {
        let gdb = session(&guest);
        gdb.enable(&Monitor::Interrupt(InterruptKind::Int3))
            .unwrap();
        gdb.set_breakpoint(Breakpoint::at(Gva(target))).unwrap();
        gdb.watch(Gva(guest.kallsyms("init_task").unwrap()), 8, Access::W)
            .unwrap();
        let p = gdb
            .wait_event(Duration::from_secs(30))
            .unwrap()
            .expect("hit");
        p.reply(Response::continue_()).unwrap();
        gdb.enable(&Monitor::Singlestep(VcpuSet::first(1))).unwrap();
    }
    let vm = LegacyQemu::connect(LegacyConfig::new(guest.qmp_socket())).unwrap();
    let st = vm.status().unwrap();
    assert!(st.running, "{st:?}");
    drop(vm);
    // A new raw client: no stops without breakpoints of its own.
    let mut gdb = GdbClient::connect_unix(guest.gdb_socket(), T).unwrap();
    gdb.resume().unwrap();
    assert_eq!(gdb.wait_stop(Duration::from_secs(1)).unwrap(), None);
    gdb.interrupt().unwrap();
    gdb.detach().unwrap();
    // The guest goes on ticking.
    let before = guest
        .serial_lines()
        .iter()
        .filter(|l| l.contains("VMI-TEST tick"))
        .count();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = guest
            .serial_lines()
            .iter()
            .filter(|l| l.contains("VMI-TEST tick"))
            .count();
        if now > before {
            break;
        }
        assert!(Instant::now() < deadline, "no tick after detaching");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn legacy_qemu_with_gdb_merges_registers_and_pauses_through_the_stub() {
    let guest = Guest::boot();
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    cfg.gdb_socket = Some(guest.gdb_socket().to_path_buf());
    let vm = LegacyQemu::connect(cfg).unwrap();
    assert!(vm.status().unwrap().running, "running after attaching");
    {
        let _outer = vm.pause().unwrap();
        let _inner = vm.pause().unwrap();
        let st = vm.status().unwrap();
        assert!(!st.running, "{st:?}");
        let regs = vm.all_registers(VcpuId(0)).unwrap();
        let g = vm.gdb().unwrap().all_registers(VcpuId(0)).unwrap();
        assert_eq!(regs.gprs, g.gprs);
        assert_eq!(regs.control, g.control);
        // From info registers: segments with limits, descriptor tables, DRs.
        let seg = regs.segments.expect("segments");
        assert_eq!(
            seg.cs.selector,
            vm.gdb().unwrap().segments(VcpuId(0)).unwrap().cs
        );
        assert!(regs.gdtr.is_some() && regs.idtr.is_some() && regs.debug.is_some());
        assert!(regs.msrs.contains(vmi_core::registers::msr::KERNEL_GS_BASE));
    }
    assert!(
        vm.status().unwrap().running,
        "resumed when the last guard dropped"
    );
    let caps = vmi_core::Backend::capabilities(&vm);
    assert_eq!(caps.rows().count(), vmi_core::Capability::ALL.len());
    for c in [
        vmi_core::Capability::EventInterruptInt3,
        vmi_core::Capability::EventSinglestep,
        vmi_core::Capability::WriteGprs,
        vmi_core::Capability::ReadSegmentRegisters,
    ] {
        assert!(caps.is_supported(c), "{c}");
    }
    eprintln!("{caps}");
}
