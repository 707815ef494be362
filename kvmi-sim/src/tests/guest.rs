//! The default guest and its execution, over a real socket: translations, the banner,
//! breakpoints written through WRITE_PHYSICAL, page-access events from the workload,
//! and the three faults the reference C client found.

use super::*;
use crate::guest::*;

fn write_phys(t: &mut Tool, gpa: u64, bytes: &[u8]) {
    let mut w = sys::VmWritePhysical {
        gpa,
        size: bytes.len() as u64,
    }
    .as_bytes()
    .to_vec();
    w.extend_from_slice(bytes);
    assert_eq!(t.cmd(sys::KVMI_VM_WRITE_PHYSICAL, &w), (0, vec![]));
}

fn read_phys(t: &mut Tool, gpa: u64, size: u64) -> Vec<u8> {
    let (e, d) = t.cmd(
        sys::KVMI_VM_READ_PHYSICAL,
        sys::VmReadPhysical { gpa, size }.as_bytes(),
    );
    assert_eq!(e, 0, "read {gpa:#x}");
    d
}

fn translate(t: &mut Tool, vcpu: u16, gva: u64) -> u64 {
    let (e, d) = t.vcmd(
        sys::KVMI_VCPU_TRANSLATE_GVA,
        vcpu,
        &sys::VcpuTranslateGva { gva },
    );
    assert_eq!(e, 0);
    u64::read_from_bytes(&d).unwrap()
}

/// A page walk done by the tool from READ_PHYSICAL bytes alone (independent of the
/// simulator's own translation): 4-level, 2 MiB and 1 GiB pages.
fn walk(t: &mut Tool, cr3: u64, gva: u64) -> Option<u64> {
    let mut table = cr3 & 0x000f_ffff_ffff_f000;
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let i = (gva >> shift) & 0x1ff;
        let e = u64::from_le_bytes(read_phys(t, table + i * 8, 8).try_into().unwrap());
        if e & 1 == 0 {
            return None;
        }
        let addr = e & 0x000f_ffff_ffff_f000;
        if level == 1 || (level <= 3 && e & 0x80 != 0) {
            let mask = (1u64 << shift) - 1;
            return Some((addr & !mask) | (gva & mask));
        }
        table = addr;
    }
    None
}

fn set_access(t: &mut Tool, gpa: u64, access: u8) {
    let mut p = sys::VmSetPageAccess {
        view: 0,
        count: 1,
        padding: 0,
    }
    .as_bytes()
    .to_vec();
    p.extend_from_slice(
        sys::PageAccessEntry {
            gpa,
            access,
            ..Default::default()
        }
        .as_bytes(),
    );
    assert_eq!(t.cmd(sys::KVMI_VM_SET_PAGE_ACCESS, &p).0, 0);
}

fn get_regs(t: &mut Tool, vcpu: u16) -> sys::VcpuGetRegistersReply {
    let (e, d) = t.vcmd(
        sys::KVMI_VCPU_GET_REGISTERS,
        vcpu,
        &sys::VcpuGetRegisters::default(),
    );
    assert_eq!(e, 0);
    sys::VcpuGetRegistersReply::read_from_prefix(&d).unwrap().0
}

#[test]
fn default_guest_is_a_real_long_mode_kernel() {
    let (_sim, mut t) = connect(SimConfig::default());
    let r = get_regs(&mut t, 1);
    let s = r.sregs;
    assert_eq!(r.mode, 8);
    assert_eq!(s.cr3, KERNEL_CR3);
    assert_eq!((s.cr0 & 0x8000_0001, s.cr4 & 0x20), (0x8000_0001, 0x20));
    assert_eq!(s.efer & 0xd00, 0xd00, "LME|LMA|NXE");
    assert_eq!((s.gdt.base, s.gdt.limit), (GDT_VA, GDT_LIMIT));
    assert_eq!((s.idt.base, s.idt.limit), (IDT_VA, IDT_LIMIT));
    assert_eq!(
        (s.cs.selector, s.cs.l, s.tr.selector),
        (KERNEL_CS, 1, TSS_SEL)
    );
    assert_eq!(r.regs.rip, SYM_IDLE);
    // RIP, the banner, the stack, GS_BASE, GDT/IDT: walked by hand and by the host.
    for (gva, pa) in [
        (r.regs.rip, TEXT_PA),
        (BANNER_VA, BANNER_PA),
        (r.regs.rsp, STACK_PA + 0x4000 - 8),
        (s.gs.base, PERCPU_PA + 0x1000),
        (GDT_VA, GDT_PA),
        (IDT_VA + 3 * 16, IDT_PA + 48),
        (0x5abc, 0x5abc),
        (dva(0x12_3456), 0x12_3456),
        (kva(0x1f_f008), 0x1f_f008),
    ] {
        assert_eq!(walk(&mut t, s.cr3, gva), Some(pa), "{gva:#x}");
        assert_eq!(translate(&mut t, 1, gva), pa, "{gva:#x}");
    }
    // The NULL page and anything past RAM in the kernel map are not mapped.
    for gva in [0x10, kva(DEFAULT_RAM_SIZE), 0x0000_7fff_0000_0000] {
        assert_eq!(walk(&mut t, s.cr3, gva), None, "{gva:#x}");
        assert_eq!(translate(&mut t, 1, gva), u64::MAX, "{gva:#x}");
    }
    // The banner, NUL-terminated.
    let b = read_phys(&mut t, BANNER_PA, BANNER.len() as u64);
    assert_eq!(b, BANNER);
    assert!(b.starts_with(b"Linux version") && b.ends_with(b"\0"));
    // IDT gate 3 points at the #BP handler, with the kernel CS; GDT[CS] is 64-bit code.
    let gate = read_phys(&mut t, IDT_PA + 3 * 16, 16);
    let lo = u64::from_le_bytes(gate[..8].try_into().unwrap());
    let hi = u64::from_le_bytes(gate[8..].try_into().unwrap());
    let target = (lo & 0xffff) | (((lo >> 48) & 0xffff) << 16) | (hi << 32);
    assert_eq!(target, SYM_EXC_INT3);
    assert_eq!((lo >> 16) & 0xffff, u64::from(KERNEL_CS));
    let cs = read_phys(&mut t, GDT_PA + u64::from(KERNEL_CS), 8);
    assert_eq!(cs[6] & 0x20, 0x20, "L bit");
    // The code the sites name is in memory: `mov cr3, rax` and the guest's own int3.
    let off = SYM_SWITCH_MM - TEXT_VA;
    assert_eq!(read_phys(&mut t, TEXT_PA + off, 3), [0x0f, 0x22, 0xd8]);
    assert_eq!(read_phys(&mut t, SYM_INT3_SELFTEST_PA, 1), [0xcc]);
    assert_eq!(read_phys(&mut t, SYM_BP_TARGET_PA, 1), [0x55]);
    // The user address space shares the kernel half and maps its text page only.
    assert_eq!(walk(&mut t, USER_CR3, USER_TEXT_VA), Some(USER_TEXT_PA));
    assert_eq!(walk(&mut t, USER_CR3, SYM_IDLE), Some(TEXT_PA));
    assert_eq!(walk(&mut t, USER_CR3, 0x5abc), None);
}

#[test]
fn max_gfn_is_the_backed_size_and_configurable() {
    let (_sim, mut t) = connect(SimConfig::with_ram(4 << 20));
    let (e, d) = t.cmd(sys::KVMI_VM_GET_MAX_GFN, &[]);
    assert_eq!((e, u64::read_from_bytes(&d).unwrap()), (0, 0x400));
    // Every frame below it is backed, the first above it is not.
    assert_eq!(read_phys(&mut t, 0x3f_f000, 8).len(), 8);
    let rp = sys::VmReadPhysical {
        gpa: 0x40_0000,
        size: 8,
    };
    let e = t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp.as_bytes()).0;
    assert_eq!(e, -sys::KVM_ENOENT);
    // Above 2 MiB the identity map uses a 2 MiB page; the kernel map covers all RAM.
    assert_eq!(walk(&mut t, KERNEL_CR3, 0x30_0abc), Some(0x30_0abc));
    assert_eq!(translate(&mut t, 0, 0x30_0abc), 0x30_0abc);
    assert_eq!(translate(&mut t, 0, kva(0x3f_fff8)), 0x3f_fff8);
    assert_eq!(translate(&mut t, 0, kva(0x40_0000)), u64::MAX);
}

#[test]
fn trigger_rechecks_the_intercept_after_waiting_for_a_busy_vcpu() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_CR);
    t.enable_event(0, sys::KVMI_EVENT_HYPERCALL);
    let ccr = |enable| sys::VcpuControlCr {
        enable,
        cr: 3,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &ccr(1)).0, 0);
    let busy = sim.trigger(0, SimEvent::Hypercall).unwrap();
    let (hd, ev, _) = t.read_event();
    std::thread::scope(|s| {
        let cr = s.spawn(|| {
            sim.trigger(
                0,
                SimEvent::Cr {
                    cr: 3,
                    old: KERNEL_CR3,
                    new: USER_CR3,
                },
            )
            .map(|h| h.seq)
        });
        // Wait until the CR write is blocked behind the pending event.
        while sim.shared.lock().busy_waiters == 0 {
            std::thread::yield_now();
        }
        // The tool (paused on the event) removes the intercept, then answers.
        assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &ccr(0)).0, 0);
        t.reply_event(hd.seq, 0, ev.event, 0, &[]);
        busy.wait_reply(T).unwrap();
        let r = cr.join().unwrap();
        assert!(
            matches!(r, Err(SimError::NotDelivered("CR not intercepted"))),
            "{r:?}"
        );
    });
    // No CR event crossed the wire: the next frame is this command's reply.
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    assert_eq!(sim.stats().events.get(&sys::KVMI_EVENT_CR), None);
}

#[test]
fn cpuid_event_carries_the_leaf_in_rax_and_completes() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(1, sys::KVMI_EVENT_CPUID);
    // Raw trigger: EAX/ECX are the leaf and subleaf, not the vCPU index.
    let h = sim
        .trigger(
            1,
            SimEvent::Cpuid {
                leaf: 7,
                subleaf: 0,
            },
        )
        .unwrap();
    let (hd, ev, _) = t.read_event();
    assert_eq!((ev.arch.regs.rax, ev.arch.regs.rcx), (7, 0));
    t.reply_event(hd.seq, 1, ev.event, 0, &[]);
    h.wait_reply(T).unwrap();
    // The guest's cpuid instruction: RIP at it, results in EAX..EDX after CONTINUE.
    std::thread::scope(|s| {
        let ex = s.spawn(|| {
            sim.execute(
                1,
                &GuestOp::Cpuid {
                    leaf: 0x4000_0000,
                    subleaf: 0,
                },
            )
        });
        let (hd, ev, spec) = t.read_event();
        let c = sys::EventCpuid::read_from_bytes(&spec).unwrap();
        assert_eq!((c.function, c.index, c.insn_length), (0x4000_0000, 0, 2));
        assert_eq!(ev.arch.regs.rax, 0x4000_0000);
        assert_eq!(ev.arch.regs.rip, SYM_CPUID);
        assert_eq!(translate(&mut t, 1, ev.arch.regs.rip), TEXT_PA + 0x1c0);
        t.reply_event(hd.seq, 1, ev.event, 0, &[]);
        let ex = ex.join().unwrap().unwrap();
        assert_eq!(ex.events.len(), 1);
        assert_eq!(ex.rip, SYM_CPUID + 2);
    });
    let r = sim.vm().vcpus[1].regs;
    assert_eq!(
        (r.rax, r.rbx, r.rcx),
        (0x4000_0001, 0x4b4d_564b, 0x564b_4d56)
    );
}

#[test]
fn breakpoint_written_through_write_physical_fires_where_the_guest_executes() {
    let (sim, mut t) = connect(SimConfig::default());
    // Not enabled and no INT3 yet: the call just executes `push rbp`.
    let ex = sim
        .execute(0, &GuestOp::Call { gva: SYM_BP_TARGET })
        .unwrap();
    assert!(ex.events.is_empty());
    assert_eq!(ex.rip, SYM_BP_TARGET + 1);
    t.enable_event(0, sys::KVMI_EVENT_BREAKPOINT);
    let gpa = translate(&mut t, 0, SYM_BP_TARGET);
    assert_eq!(gpa, SYM_BP_TARGET_PA);
    write_phys(&mut t, gpa, &[0xcc]);
    std::thread::scope(|s| {
        // 1. RETRY without restoring: the guest re-executes the INT3, a second event;
        //    then the tool restores the byte and RETRYs: `push rbp` runs, no #BP.
        let ex = s.spawn(|| sim.execute(0, &GuestOp::Call { gva: SYM_BP_TARGET }));
        for round in 0..2 {
            let (hd, ev, spec) = t.read_event();
            let b = sys::EventBreakpoint::read_from_bytes(&spec).unwrap();
            assert_eq!((b.gpa, b.insn_len), (SYM_BP_TARGET_PA, 1));
            assert_eq!(ev.arch.regs.rip, SYM_BP_TARGET);
            assert_eq!(translate(&mut t, 0, ev.arch.regs.rip), b.gpa);
            if round == 1 {
                write_phys(&mut t, gpa, &[0x55]);
            }
            t.reply_event(hd.seq, 0, ev.event, sys::KVMI_EVENT_ACTION_RETRY, &[]);
        }
        let ex = ex.join().unwrap().unwrap();
        assert_eq!(ex.events.len(), 2);
        assert!(!ex.bp_delivered);
        assert_eq!(ex.rip, SYM_BP_TARGET + 1);
    });
    assert!(sim.vm().vcpus[0].injections.is_empty());
    // 2. CONTINUE reinjects #BP: the guest's handler returns past the INT3.
    write_phys(&mut t, gpa, &[0xcc]);
    std::thread::scope(|s| {
        let ex = s.spawn(|| sim.execute(0, &GuestOp::Call { gva: SYM_BP_TARGET }));
        let (hd, ev, _) = t.read_event();
        t.reply_event(hd.seq, 0, ev.event, sys::KVMI_EVENT_ACTION_CONTINUE, &[]);
        let ex = ex.join().unwrap().unwrap();
        assert!(ex.bp_delivered);
        assert_eq!(ex.rip, SYM_BP_TARGET + 1);
    });
    let inj = sim.vm().vcpus[0].injections.clone();
    assert_eq!(inj.len(), 1);
    assert!(inj[0].vector == 3 && inj[0].reinjected_bp);
}

#[test]
fn breakpoint_recoil_steps_over_the_restored_instruction() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(1, sys::KVMI_EVENT_BREAKPOINT);
    t.enable_event(1, sys::KVMI_EVENT_SINGLESTEP);
    write_phys(&mut t, SYM_BP_TARGET_PA, &[0xcc]);
    let ss = |enable| sys::VcpuControlSingleStep {
        enable,
        ..Default::default()
    };
    std::thread::scope(|s| {
        let ex = s.spawn(|| sim.execute(1, &GuestOp::Call { gva: SYM_BP_TARGET }));
        let (hd, ev, _) = t.read_event();
        assert_eq!(ev.event, sys::KVMI_EVENT_BREAKPOINT);
        // Restore the original byte, single-step it, RETRY.
        write_phys(&mut t, SYM_BP_TARGET_PA, &[0x55]);
        assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_SINGLESTEP, 1, &ss(1)).0, 0);
        t.reply_event(hd.seq, 1, ev.event, sys::KVMI_EVENT_ACTION_RETRY, &[]);
        // SINGLESTEP after `push rbp`: RIP advanced by its length; re-arm, stop stepping.
        let (hd, ev, spec) = t.read_event();
        assert_eq!(ev.event, sys::KVMI_EVENT_SINGLESTEP);
        assert_eq!(spec, [0u8; 8]);
        assert_eq!(ev.arch.regs.rip, SYM_BP_TARGET + 1);
        write_phys(&mut t, SYM_BP_TARGET_PA, &[0xcc]);
        assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_SINGLESTEP, 1, &ss(0)).0, 0);
        t.reply_event(hd.seq, 1, ev.event, 0, &[]);
        let ex = ex.join().unwrap().unwrap();
        assert_eq!(ex.events.len(), 2);
    });
    // A plain step from the idle loop advances over `pause` (2 bytes) and the `jmp`
    // goes back.
    sim.vm().vcpus[1].regs.rip = SYM_IDLE;
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_SINGLESTEP, 1, &ss(1)).0, 0);
    std::thread::scope(|s| {
        let ex = s.spawn(|| {
            let a = sim.execute(1, &GuestOp::Step).unwrap().rip;
            let b = sim.execute(1, &GuestOp::Step).unwrap().rip;
            (a, b)
        });
        for want in [SYM_IDLE + 2, SYM_IDLE] {
            let (hd, ev, _) = t.read_event();
            assert_eq!(
                (ev.event, ev.arch.regs.rip),
                (sys::KVMI_EVENT_SINGLESTEP, want)
            );
            t.reply_event(hd.seq, 1, ev.event, 0, &[]);
        }
        assert_eq!(ex.join().unwrap(), (SYM_IDLE + 2, SYM_IDLE));
    });
}

#[test]
fn guest_int3_is_in_memory_and_reaches_its_handler_when_not_intercepted() {
    let (sim, mut t) = connect(SimConfig::default());
    let ex = sim.execute(0, &GuestOp::Int3Selftest).unwrap();
    assert!(ex.events.is_empty() && ex.bp_delivered);
    assert_eq!(ex.rip, SYM_INT3_SELFTEST + 1);
    let inj = sim.vm().vcpus[0].injections.clone();
    assert!(inj.len() == 1 && inj[0].vector == 3 && !inj[0].reinjected_bp);
    // Intercepted: the workload's breakpoint ops hit the guest's own int3 (the BP
    // target has none until a tool writes it).
    t.enable_event(0, sys::KVMI_EVENT_BREAKPOINT);
    let ops = sim.workload_ops(0);
    assert!(ops.contains(&GuestOp::Int3Selftest), "{ops:?}");
    std::thread::scope(|s| {
        let rep = s.spawn(|| sim.run_workload(Workload::EveryEnabledEvent));
        let (hd, ev, spec) = t.read_event();
        let b = sys::EventBreakpoint::read_from_bytes(&spec).unwrap();
        assert_eq!(
            (b.gpa, ev.arch.regs.rip),
            (SYM_INT3_SELFTEST_PA, SYM_INT3_SELFTEST)
        );
        t.reply_event(hd.seq, 0, ev.event, 0, &[]);
        let rep = rep.join().unwrap();
        assert!(rep.failed.is_empty(), "{:?}", rep.failed);
        assert_eq!(rep.answered[&sys::KVMI_EVENT_BREAKPOINT], 1);
    });
}

#[test]
fn restricted_pages_raise_pf_events_from_the_guest_accesses() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_PF);
    // Unrestricted: the banner read is silent and reads the banner.
    let ex = sim.execute(0, &GuestOp::Load { gva: BANNER_VA }).unwrap();
    assert!(ex.events.is_empty());
    assert_eq!(ex.read.as_deref(), Some(&BANNER[..8]));
    // No read on the banner page: PF R with gla/gpa of the tables; CONTINUE with
    // context data makes the guest read it (emul-read-data).
    set_access(
        &mut t,
        BANNER_PA,
        sys::KVMI_PAGE_ACCESS_W | sys::KVMI_PAGE_ACCESS_X,
    );
    let ops = sim.workload_ops(0);
    assert_eq!(ops, vec![GuestOp::Load { gva: BANNER_VA }]);
    std::thread::scope(|s| {
        let ex = s.spawn(|| sim.execute(0, &ops[0]));
        let (hd, ev, spec) = t.read_event();
        let pf = sys::EventPf::read_from_bytes(&spec).unwrap();
        assert_eq!((pf.gva, pf.gpa, pf.access), (BANNER_VA, BANNER_PA, 1));
        assert_eq!(ev.arch.regs.rip, SYM_LOAD);
        assert_eq!(ev.arch.regs.rdi, BANNER_VA);
        assert_eq!(translate(&mut t, 0, pf.gva), pf.gpa);
        let mut pr = sys::EventPfReply {
            ctx_addr: BANNER_VA,
            ctx_size: 8,
            ..Default::default()
        };
        pr.ctx_data[..8].copy_from_slice(b"FAKEDATA");
        t.reply_event(hd.seq, 0, ev.event, 0, pr.as_bytes());
        let ex = ex.join().unwrap().unwrap();
        assert_eq!(ex.read.as_deref(), Some(&b"FAKEDATA"[..]));
        assert_eq!(ex.rip, SYM_LOAD + 3);
    });
    assert_eq!(sim.vm().vcpus[0].regs.rax, u64::from_le_bytes(*b"FAKEDATA"));
    // RETRY re-executes: still restricted, so a second PF; then the tool lifts the
    // restriction and RETRYs, and the real bytes are read.
    std::thread::scope(|s| {
        let ex = s.spawn(|| sim.execute(0, &GuestOp::Load { gva: BANNER_VA }));
        for round in 0..2 {
            let (hd, ev, _) = t.read_event();
            assert_eq!(ev.event, sys::KVMI_EVENT_PF);
            if round == 1 {
                set_access(&mut t, BANNER_PA, sys::KVMI_PAGE_ACCESS_RWX);
            }
            t.reply_event(hd.seq, 0, ev.event, sys::KVMI_EVENT_ACTION_RETRY, &[0; 272]);
        }
        let ex = ex.join().unwrap().unwrap();
        assert_eq!(
            (ex.events.len(), ex.read.as_deref()),
            (2, Some(&BANNER[..8]))
        );
    });
    // W on jiffies: CONTINUE lets the increment happen. X on the text page: the
    // instruction fetch faults with gva = RIP, before the instruction runs.
    set_access(&mut t, JIFFIES_PA, sys::KVMI_PAGE_ACCESS_R);
    set_access(
        &mut t,
        TEXT_PA,
        sys::KVMI_PAGE_ACCESS_R | sys::KVMI_PAGE_ACCESS_W,
    );
    let j0 = sim.vm().memory.read_u64(JIFFIES_PA).unwrap();
    std::thread::scope(|s| {
        let ex = s.spawn(|| sim.execute(0, &GuestOp::Tick));
        let (hd, _, spec) = t.read_event();
        let pf = sys::EventPf::read_from_bytes(&spec).unwrap();
        assert_eq!((pf.gva, pf.gpa, pf.access), (SYM_TICK, TEXT_PA + 0x300, 4));
        t.reply_event(hd.seq, 0, sys::KVMI_EVENT_PF, 0, &[0; 272]);
        let (hd, ev, spec) = t.read_event();
        let pf = sys::EventPf::read_from_bytes(&spec).unwrap();
        assert_eq!((pf.gva, pf.gpa, pf.access), (JIFFIES_VA, JIFFIES_PA, 2));
        assert_eq!(ev.arch.regs.rip, SYM_TICK);
        t.reply_event(hd.seq, 0, ev.event, 0, &[0; 272]);
        assert_eq!(ex.join().unwrap().unwrap().events.len(), 2);
    });
    assert_eq!(sim.vm().memory.read_u64(JIFFIES_PA).unwrap(), j0 + 1);
}

#[test]
fn workload_cr3_and_msr_writes_carry_consistent_values() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_CR);
    t.enable_event(0, sys::KVMI_EVENT_MSR);
    let ccr = sys::VcpuControlCr {
        enable: 1,
        cr: 3,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &ccr).0, 0);
    let cm = sys::VcpuControlMsr {
        enable: 1,
        msr: model::msr::LSTAR,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_MSR, 0, &cm).0, 0);
    assert_eq!(
        sim.workload_ops(0),
        vec![
            GuestOp::SwitchMm { cr3: USER_CR3 },
            GuestOp::Wrmsr {
                msr: model::msr::LSTAR,
                value: SYM_ENTRY_SYSCALL ^ 0x1000
            }
        ]
    );
    std::thread::scope(|s| {
        let rep = s.spawn(|| sim.run_workload(Workload::EveryEnabledEvent));
        let (hd, ev, spec) = t.read_event();
        let cr = sys::EventCr::read_from_bytes(&spec).unwrap();
        assert_eq!(
            (cr.cr, cr.old_value, cr.new_value),
            (3, KERNEL_CR3, USER_CR3)
        );
        assert_eq!(
            (ev.arch.sregs.cr3, ev.arch.regs.rax),
            (KERNEL_CR3, USER_CR3)
        );
        assert_eq!(ev.arch.regs.rip, SYM_SWITCH_MM);
        t.reply_event(hd.seq, 0, ev.event, 0, &USER_CR3.to_le_bytes());
        let (hd, ev, spec) = t.read_event();
        let m = sys::EventMsr::read_from_bytes(&spec).unwrap();
        let r = ev.arch.regs;
        assert_eq!((m.msr, m.old_value), (model::msr::LSTAR, SYM_ENTRY_SYSCALL));
        assert_eq!((r.rcx, (r.rdx << 32) | r.rax), (0xc000_0082, m.new_value));
        assert_eq!((ev.arch.regs.rip, ev.arch.sregs.cr3), (SYM_WRMSR, USER_CR3));
        t.reply_event(hd.seq, 0, ev.event, 0, &m.old_value.to_le_bytes());
        assert!(rep.join().unwrap().failed.is_empty());
    });
    // Now in the user address space: its text translates, the identity map does not.
    assert_eq!(translate(&mut t, 0, USER_TEXT_VA), USER_TEXT_PA);
    assert_eq!(translate(&mut t, 0, 0x5000), u64::MAX);
    assert_eq!(translate(&mut t, 0, BANNER_VA), BANNER_PA);
    assert_eq!(
        sim.vm().vcpus[0].msrs[&model::msr::LSTAR],
        SYM_ENTRY_SYSCALL
    );
    // The next round switches back.
    assert_eq!(
        sim.workload_ops(0)[0],
        GuestOp::SwitchMm { cr3: KERNEL_CR3 }
    );
}

#[test]
fn descriptor_accesses_name_each_register_at_its_site() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(1, sys::KVMI_EVENT_DESCRIPTOR);
    std::thread::scope(|s| {
        let rep = s.spawn(|| sim.run_workload(Workload::EveryEnabledEvent));
        let want = [
            (sys::KVMI_DESC_IDTR, 0, SYM_SIDT),
            (sys::KVMI_DESC_GDTR, 0, SYM_SGDT),
            (sys::KVMI_DESC_LDTR, 0, SYM_SLDT),
            (sys::KVMI_DESC_TR, 0, SYM_STR),
            (sys::KVMI_DESC_GDTR, 1, SYM_LGDT),
        ];
        for (d, w, rip) in want {
            let (hd, ev, spec) = t.read_event();
            let e = sys::EventDescriptor::read_from_bytes(&spec).unwrap();
            assert_eq!((e.descriptor, e.write, ev.arch.regs.rip), (d, w, rip));
            assert_eq!(translate(&mut t, 1, rip) >> 12, TEXT_PA >> 12);
            t.reply_event(hd.seq, 1, ev.event, 0, &[]);
        }
        let rep = rep.join().unwrap();
        assert_eq!(rep.answered[&sys::KVMI_EVENT_DESCRIPTOR], 5);
    });
}

#[test]
fn v6_guest_breakpoint_and_pf_from_memory() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    t.enable_event(0, sys::KVMI_EVENT_BREAKPOINT);
    t.enable_event(0, sys::KVMI_EVENT_PF);
    write_phys(&mut t, SYM_BP_TARGET_PA, &[0xcc]);
    set_access(&mut t, BANNER_PA, 0);
    std::thread::scope(|s| {
        let ex = s.spawn(|| {
            let a = sim
                .execute(0, &GuestOp::Call { gva: SYM_BP_TARGET })
                .unwrap();
            let b = sim.execute(0, &GuestOp::Load { gva: BANNER_VA }).unwrap();
            (a, b)
        });
        let (hd, ev, spec) = t.read_event();
        let b = sys::EventBreakpoint::read_from_bytes(&spec).unwrap();
        assert_eq!((b.gpa, ev.arch.regs.rip), (SYM_BP_TARGET_PA, SYM_BP_TARGET));
        t.reply_event(hd.seq, 0, ev.event, 0, &[]);
        let (hd, ev, spec) = t.read_event();
        let pf = sys::v6::EventPf::read_from_bytes(&spec).unwrap();
        assert_eq!(
            (pf.gva, pf.gpa, pf.access, pf.view),
            (BANNER_VA, BANNER_PA, 1, 0)
        );
        t.reply_event(hd.seq, 0, ev.event, 0, &[0; 24]);
        let (a, b) = ex.join().unwrap();
        assert!(a.bp_delivered);
        assert_eq!(b.read.as_deref(), Some(&BANNER[..8]));
    });
}

#[test]
fn breakpoint_retry_after_set_registers_resumes_at_the_new_rip() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_BREAKPOINT);
    write_phys(&mut t, SYM_BP_TARGET_PA, &[0xcc]);
    std::thread::scope(|s| {
        let ex = s.spawn(|| sim.execute(0, &GuestOp::Call { gva: SYM_BP_TARGET }));
        let (hd, ev, _) = t.read_event();
        // Emulate `push rbp` by hand: skip it (RIP + 1) and RETRY, leaving the INT3.
        let set = sys::VcpuSetRegisters {
            regs: sys::KvmRegs {
                rip: ev.arch.regs.rip + 1,
                ..ev.arch.regs
            },
        };
        assert_eq!(t.vcmd(sys::KVMI_VCPU_SET_REGISTERS, 0, &set).0, 0);
        t.reply_event(hd.seq, 0, ev.event, sys::KVMI_EVENT_ACTION_RETRY, &[]);
        // The guest resumes at `mov rbp, rsp` (3 bytes): no second breakpoint.
        let ex = ex.join().unwrap().unwrap();
        assert_eq!((ex.events.len(), ex.rip), (1, SYM_BP_TARGET + 4));
        assert!(!ex.bp_delivered);
    });
    assert_eq!(read_phys(&mut t, SYM_BP_TARGET_PA, 1), [0xcc]);
}

#[test]
fn cr3_write_behind_a_pause_is_not_raised_once_the_intercept_is_gone() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(1, sys::KVMI_EVENT_CR);
    let ccr = |enable| sys::VcpuControlCr {
        enable,
        cr: 3,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 1, &ccr(1)).0, 0);
    // The tool pauses vCPU 1 (wait = low byte of the vCPU index under the v7 quirk).
    let pause = sys::VcpuPause {
        wait: 1,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_PAUSE, 1, &pause).0, 0);
    let (hd, ev, _) = t.read_event();
    assert_eq!(ev.event, sys::KVMI_EVENT_PAUSE_VCPU);
    std::thread::scope(|s| {
        // The guest's CR3 write is held behind the pause.
        let ex = s.spawn(|| sim.execute(1, &GuestOp::SwitchMm { cr3: USER_CR3 }));
        while sim.shared.lock().busy_waiters == 0 {
            std::thread::yield_now();
        }
        // Remove the intercept, resume.
        assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 1, &ccr(0)).0, 0);
        t.reply_event(hd.seq, 1, ev.event, 0, &[]);
        let ex = ex.join().unwrap().unwrap();
        // No exit: the write simply happened.
        assert!(ex.events.is_empty(), "{:?}", ex.events);
    });
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    assert_eq!(sim.vm().vcpus[1].sregs.cr3, USER_CR3);
    assert_eq!(sim.stats().events.get(&sys::KVMI_EVENT_CR), None);
}

#[test]
fn a_paused_vcpu_executes_nothing_until_resumed() {
    let (sim, mut t) = connect(SimConfig::default());
    let pause = sys::VcpuPause {
        wait: 0,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_PAUSE, 0, &pause).0, 0);
    let (hd, ev, _) = t.read_event();
    assert_eq!(ev.event, sys::KVMI_EVENT_PAUSE_VCPU);
    let j0 = sim.vm().memory.read_u64(JIFFIES_PA).unwrap();
    std::thread::scope(|s| {
        let ex = s.spawn(|| sim.execute(0, &GuestOp::Tick));
        while sim.shared.lock().busy_waiters == 0 {
            std::thread::yield_now();
        }
        // Blocked on the pause: neither RIP nor memory moved.
        let r = get_regs(&mut t, 0);
        assert_eq!(r.regs.rip, SYM_IDLE);
        assert_eq!(read_phys(&mut t, JIFFIES_PA, 8), j0.to_le_bytes());
        t.reply_event(hd.seq, 0, ev.event, 0, &[]);
        assert_eq!(ex.join().unwrap().unwrap().rip, SYM_TICK + 4);
    });
    assert_eq!(read_phys(&mut t, JIFFIES_PA, 8), (j0 + 1).to_le_bytes());
}

#[test]
fn symbol_table_is_sorted_and_every_symbol_translates_into_the_kernel_image() {
    let (_sim, mut t) = connect(SimConfig::default());
    assert!(SYMBOLS.windows(2).all(|w| w[0].1 <= w[1].1), "sorted");
    assert_eq!(symbol("linux_banner"), Some(BANNER_VA));
    assert_eq!(symbol("__x64_sys_getpid"), Some(SYM_BP_TARGET));
    assert_eq!(symbol("nope"), None);
    for (name, va) in SYMBOLS {
        let pa = walk(&mut t, KERNEL_CR3, *va);
        assert_eq!(pa, Some(va - KERNEL_MAP_VA), "{name}");
        assert!((TEXT_PA..PERCPU_PA).contains(&pa.unwrap()), "{name}");
    }
}

#[test]
fn change_gfn_hides_a_breakpoint_in_a_remapped_copy() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_BREAKPOINT);
    // A copy of the text page at a free frame, with an INT3 at the target.
    let copy = 0x8_0000;
    let text = read_phys(&mut t, TEXT_PA, 4096);
    write_phys(&mut t, copy, &text);
    write_phys(&mut t, copy + (SYM_BP_TARGET_PA & 0xfff), &[0xcc]);
    let (e, d) = t.cmd(sys::KVMI_CREATE_EPT_VIEW, &[]);
    assert_eq!(e, 0);
    let view = u16::from(d[0]);
    let cg = sys::VcpuChangeGfn {
        view,
        old_gfn: TEXT_PA >> 12,
        new_gfn: copy >> 12,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CHANGE_GFN, 0, &cg).0, 0);
    // In view 0 the original runs; READ_PHYSICAL sees no INT3 in either view.
    let call = GuestOp::Call { gva: SYM_BP_TARGET };
    assert!(sim.execute(0, &call).unwrap().events.is_empty());
    let sv = sys::VcpuSetEptView {
        view,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_SET_EPT_VIEW, 0, &sv).0, 0);
    assert_eq!(read_phys(&mut t, SYM_BP_TARGET_PA, 1), [0x55]);
    std::thread::scope(|s| {
        let ex = s.spawn(|| sim.execute(0, &call));
        let (hd, ev, spec) = t.read_event();
        let b = sys::EventBreakpoint::read_from_bytes(&spec).unwrap();
        // The event names the guest-physical address and the view.
        assert_eq!((b.gpa, ev.arch.view), (SYM_BP_TARGET_PA, view));
        t.reply_event(hd.seq, 0, ev.event, 0, &[]);
        assert!(ex.join().unwrap().unwrap().bp_delivered);
    });
}
