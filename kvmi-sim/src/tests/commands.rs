//! Commands: memory, registers, the rest of the command table, v6 differences.

use super::*;

#[test]
fn read_write_physical_rules() {
    let mut cfg = SimConfig::default();
    cfg.memory.load(0x2000, b"initial");
    let (sim, mut t) = connect(cfg);
    let rp = |gpa, size| sys::VmReadPhysical { gpa, size };
    let (e, d) = t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x2000, 7).as_bytes());
    assert_eq!((e, d.as_slice()), (0, &b"initial"[..]));

    let mut w = sys::VmWritePhysical {
        gpa: 0x2003,
        size: 5,
    }
    .as_bytes()
    .to_vec();
    w.extend_from_slice(b"HELLO");
    assert_eq!(t.cmd(sys::KVMI_VM_WRITE_PHYSICAL, &w), (0, vec![]));
    let (e, d) = t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x2000, 8).as_bytes());
    assert_eq!((e, d.as_slice()), (0, &b"iniHELLO"[..]));
    assert_eq!(sim.vm().memory.read(0x2003, 5).unwrap(), b"HELLO");

    // Unbacked page below max_gfn: ENOENT; cross-page / zero / > 4096: EINVAL.
    let enoent = -sys::KVM_ENOENT;
    let einval = -sys::KVM_EINVAL;
    assert_eq!(
        t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x100_0000, 8).as_bytes())
            .0,
        enoent
    );
    assert_eq!(
        t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0xff8, 16).as_bytes())
            .0,
        einval
    );
    assert_eq!(
        t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x1000, 0).as_bytes())
            .0,
        einval
    );
    assert_eq!(
        t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x1000, 4097).as_bytes())
            .0,
        einval
    );
    let (e, d) = t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x1000, 4096).as_bytes());
    assert_eq!((e, d.len()), (0, 4096));
    let mut w = sys::VmWritePhysical {
        gpa: 0x100_0000,
        size: 1,
    }
    .as_bytes()
    .to_vec();
    w.push(1);
    assert_eq!(t.cmd(sys::KVMI_VM_WRITE_PHYSICAL, &w).0, enoent);

    // Max gfn and guest info.
    let (e, d) = t.cmd(sys::KVMI_VM_GET_MAX_GFN, &[]);
    assert_eq!(e, 0);
    // The real size: 2 MiB of backed frames, not a 1 GiB space of holes.
    assert_eq!(u64::read_from_bytes(&d).unwrap(), 0x200);
    assert_eq!(sim.vm().memory.gfns().count(), 0x200);
    let (e, d) = t.cmd(sys::KVMI_VM_GET_INFO, &[]);
    assert_eq!(e, 0);
    assert_eq!(
        sys::VmGetInfoReply::read_from_bytes(&d).unwrap().vcpu_count,
        2
    );

    // WRITE_PHYSICAL shorter than declared closes the socket.
    let w = sys::VmWritePhysical {
        gpa: 0x2000,
        size: 100,
    };
    t.send(sys::KVMI_VM_WRITE_PHYSICAL, w.as_bytes());
    assert!(t.try_read().is_none());
    assert!(sim.wait_closed(T).unwrap().contains("shorter"));
}

#[test]
fn get_set_registers_rules() {
    let (sim, mut t) = connect(SimConfig::default());
    let mut p = sys::VcpuHdr {
        vcpu: 1,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    p.extend_from_slice(
        sys::VcpuGetRegisters {
            nmsrs: 2,
            ..Default::default()
        }
        .as_bytes(),
    );
    p.extend_from_slice(&0xc000_0082u32.to_le_bytes());
    p.extend_from_slice(&0x174u32.to_le_bytes());
    let (e, d) = t.cmd(sys::KVMI_VCPU_GET_REGISTERS, &p);
    assert_eq!(e, 0);
    assert_eq!(d.len(), 472 + 32);
    let r = sys::VcpuGetRegistersReply::read_from_prefix(&d).unwrap().0;
    assert_eq!(r.mode, 8);
    assert_eq!(r.msrs.nmsrs, 2);
    let (vrip, lstar) = {
        let vm = sim.vm();
        (vm.vcpus[1].regs.rip, vm.vcpus[1].msrs[&0xc000_0082])
    };
    assert_eq!(r.regs.rip, vrip);
    let m0 = sys::KvmMsrEntry::read_from_bytes(&d[472..488]).unwrap();
    assert_eq!((m0.index, m0.data), (0xc000_0082, lstar));

    // Unknown MSR: EINVAL. Bad vCPU: EINVAL.
    let mut p2 = p.clone();
    p2[16..20].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    assert_eq!(t.cmd(sys::KVMI_VCPU_GET_REGISTERS, &p2).0, -sys::KVM_EINVAL);
    p2[0] = 9;
    assert_eq!(t.cmd(sys::KVMI_VCPU_GET_REGISTERS, &p2).0, -sys::KVM_EINVAL);

    // SET_REGISTERS outside an event: EOPNOTSUPP.
    let set = sys::VcpuSetRegisters {
        regs: sys::KvmRegs {
            rip: 0x1234,
            ..Default::default()
        },
    };
    let e = t.vcmd(sys::KVMI_VCPU_SET_REGISTERS, 0, &set).0;
    assert_eq!(e, -sys::KVM_EOPNOTSUPP);
    assert_ne!(sim.vm().vcpus[0].regs.rip, 0x1234);
}

#[test]
fn translate_gva_walks_four_levels() {
    let (sim, mut t) = connect(SimConfig::default());
    {
        let mut vm = sim.vm();
        let mut next = 0x20_000u64;
        let cr3 = vm.vcpus[0].sregs.cr3;
        vm.memory
            .map_4level(cr3, 0xffff_8880_0000_3000, 0x3000, &mut next);
    }
    let tr = |gva| sys::VcpuTranslateGva { gva };
    let (e, d) = t.vcmd(sys::KVMI_VCPU_TRANSLATE_GVA, 0, &tr(0xffff_8880_0000_3abc));
    assert_eq!((e, u64::read_from_bytes(&d).unwrap()), (0, 0x3abc));
    let (e, d) = t.vcmd(sys::KVMI_VCPU_TRANSLATE_GVA, 0, &tr(0x1234_5000));
    assert_eq!((e, u64::read_from_bytes(&d).unwrap()), (0, u64::MAX));
}

#[test]
fn unknown_and_disallowed_commands() {
    let cfg = SimConfig {
        allowed_commands: Some([sys::KVMI_VM_GET_INFO].into_iter().collect()),
        ..Default::default()
    };
    let (_sim, mut t) = connect(cfg);
    assert_eq!(t.cmd(50, &[]).0, -sys::KVM_ENOSYS);
    assert_eq!(t.cmd(sys::KVMI_VM_GET_MAX_GFN, &[]).0, -sys::KVM_EPERM);
    assert_eq!(t.cmd(sys::KVMI_VM_GET_INFO, &[]).0, 0);
    let cc = |id| sys::VmCheckCommand {
        id,
        ..Default::default()
    };
    let r = t.cmd(
        sys::KVMI_VM_CHECK_COMMAND,
        cc(sys::KVMI_VM_GET_MAX_GFN).as_bytes(),
    );
    assert_eq!(r.0, -sys::KVM_EPERM);
    assert_eq!(
        t.cmd(sys::KVMI_VM_CHECK_COMMAND, cc(64).as_bytes()).0,
        -sys::KVM_EINVAL
    );
    let ce = sys::VmCheckEvent {
        id: 14,
        ..Default::default()
    };
    assert_eq!(
        t.cmd(sys::KVMI_VM_CHECK_EVENT, ce.as_bytes()).0,
        -sys::KVM_EINVAL
    );
}

#[test]
fn v6_get_version_layout_and_unknown_command() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (_sim, mut t) = connect(cfg);
    let hello = sys::QemuToIntrospector::read_from_bytes(&t.hello).unwrap();
    assert_eq!((hello.start_time, hello.name[0]), (0, 0));
    let seq = t.send(sys::KVMI_GET_VERSION, &[]);
    let (h, p) = t.read();
    assert_eq!((h.id, h.seq, h.size), (2, seq, 16));
    let v = sys::v6::GetVersionReply::read_from_bytes(&p[8..]).unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(
        t.cmd(sys::KVMI_VCPU_TRANSLATE_GVA, &[0; 16]).0,
        -sys::KVM_EOPNOTSUPP
    );
    let cc = sys::VmCheckCommand {
        id: 63,
        ..Default::default()
    };
    assert_eq!(
        t.cmd(sys::KVMI_VM_CHECK_COMMAND, cc.as_bytes()).0,
        -sys::KVM_EINVAL
    );
}

#[test]
fn v6_inject_has_no_trap_and_check_event_range() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    let inj = sys::v6::InjectException {
        nr: 13,
        has_error: 1,
        error_code: 0x18,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_INJECT_EXCEPTION, 0, &inj).0, 0);
    // Next frame is the reply to this command, not a TRAP event.
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    assert_eq!(sim.vm().vcpus[0].injections[0].error_code, 0x18);
    let ce = |id| sys::VmCheckEvent {
        id,
        ..Default::default()
    };
    assert_eq!(t.cmd(sys::KVMI_VM_CHECK_EVENT, ce(11).as_bytes()).0, 0);
    let r = t.cmd(sys::KVMI_VM_CHECK_EVENT, ce(12).as_bytes()).0;
    assert_eq!(r, -sys::KVM_EINVAL);
}

#[test]
fn remaining_commands_round_trip() {
    let (sim, mut t) = connect(SimConfig::default());
    let u64_of = |d: &[u8]| u64::read_from_bytes(&d[..8]).unwrap();
    // VCPU_GET_INFO
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_INFO, 0, &());
    assert_eq!((e, u64_of(&d)), (0, 2_400_000_000));
    // GET_CPUID: leaf 0 present, 0x1234 absent.
    let c = |function| sys::VcpuGetCpuid { function, index: 0 };
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_CPUID, 0, &c(0));
    let r = sys::VcpuGetCpuidReply::read_from_bytes(&d).unwrap();
    assert_eq!((e, r.ebx), (0, 0x756e_6547));
    let e = t.vcmd(sys::KVMI_VCPU_GET_CPUID, 0, &c(0x1234)).0;
    assert_eq!(e, -sys::KVM_ENOENT);
    // SET_XSAVE then GET_XSAVE.
    let e = t.vcmd(sys::KVMI_VCPU_SET_XSAVE, 1, &[0xabu8; 64]).0;
    assert_eq!(e, 0);
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_XSAVE, 1, &());
    assert_eq!((e, d.len(), d[63], d[64]), (0, 4096, 0xab, 0));
    // GET_XCR
    let x = |xcr| sys::VcpuGetXcr {
        xcr,
        padding: [0; 7],
    };
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_XCR, 0, &x(0));
    assert_eq!((e, u64_of(&d)), (0, 7));
    assert_eq!(t.vcmd(sys::KVMI_VCPU_GET_XCR, 0, &x(1)).0, -sys::KVM_EINVAL);
    // GET_MTRR_TYPE
    let (e, d) = t.vcmd(
        sys::KVMI_VCPU_GET_MTRR_TYPE,
        0,
        &sys::VcpuGetMtrrType { gpa: 0x1000 },
    );
    assert_eq!((e, d.len(), d[0]), (0, 8, 6));
    // CONTROL_MSR range check (strict bounds).
    let m = |msr| sys::VcpuControlMsr {
        enable: 1,
        msr,
        ..Default::default()
    };
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_CONTROL_MSR, 0, &m(0x1fff)).0,
        -sys::KVM_EINVAL
    );
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_MSR, 0, &m(0x174)).0, 0);
    // EPT views.
    let (e, d) = t.cmd(sys::KVMI_CREATE_EPT_VIEW, &[]);
    assert_eq!((e, d.len(), d[0]), (0, 8, 1));
    let sv = |view| sys::VcpuSetEptView {
        view,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_SET_EPT_VIEW, 0, &sv(1)).0, 0);
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_SET_EPT_VIEW, 0, &sv(3)).0,
        -sys::KVM_EINVAL
    );
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_EPT_VIEW, 0, &());
    assert_eq!((e, d[0]), (0, 1));
    let dv = sys::DestroyEptView {
        view: 1,
        padding: [0; 3],
    };
    assert_eq!(
        t.cmd(sys::KVMI_DESTROY_EPT_VIEW, dv.as_bytes()).0,
        -sys::KVM_EBUSY
    );
    let cev = sys::VcpuControlEptView {
        view: 1,
        visible: 1,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_EPT_VIEW, 0, &cev).0, 0);
    assert!(sim.vm().vcpus[0].visible_views.contains(&1));
    // #VE
    let ve = sys::VcpuSetVeInfo {
        gpa: 0x3000,
        trigger_vmexit: 1,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_SET_VE_INFO, 0, &ve).0, 0);
    assert_eq!(sim.vm().vcpus[0].ve_info, Some((0x3000, true)));
    assert_eq!(t.vcmd(sys::KVMI_VCPU_DISABLE_VE, 0, &()).0, 0);
    let sve = sys::VmSetPageSve {
        view: 0,
        suppress: 1,
        gpa: 0x3000,
        ..Default::default()
    };
    assert_eq!(t.cmd(sys::KVMI_VM_SET_PAGE_SVE, sve.as_bytes()).0, 0);
    // SPP is not a default feature.
    let spp = sys::VmControlSpp {
        enable: 1,
        ..Default::default()
    };
    let e = t.cmd(sys::KVMI_VM_CONTROL_SPP, spp.as_bytes()).0;
    assert_eq!(e, -sys::KVM_EOPNOTSUPP);
    let e = t.cmd(sys::KVMI_VM_SET_PAGE_WRITE_BITMAP, &[0; 8]).0;
    assert_eq!(e, -sys::KVM_EOPNOTSUPP);
    // Map token, physical layout, GFN allocation.
    let (e, d) = t.cmd(sys::KVMI_VM_GET_MAP_TOKEN, &[]);
    assert_eq!((e, d.len()), (0, 32));
    let (e, d) = t.cmd(sys::KVMI_QUERY_PHYSICAL, &5u64.to_le_bytes());
    let q = sys::QueryPhysicalReply::read_from_bytes(&d).unwrap();
    assert_eq!((e, q.gfn, q.size), (0, 0, 0x200));
    let (e, d) = t.cmd(sys::KVMI_GET_NEXT_AVAILABLE_GFN, &[]);
    assert_eq!((e, u64_of(&d)), (0, 0x200));
    let g = sys::VcpuAllocGfn { gfn: 0x200 };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_ALLOC_GFN, 0, &g).0, 0);
    assert!(sim.vm().memory.is_backed(0x200));
    assert_eq!(t.vcmd(sys::KVMI_VCPU_ALLOC_GFN, 0, &g).0, -sys::KVM_EINVAL);
    assert_eq!(t.vcmd(sys::KVMI_VCPU_FREE_GFN, 0, &g).0, 0);
    let cg = |new_gfn| sys::VcpuChangeGfn {
        old_gfn: 1,
        new_gfn,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CHANGE_GFN, 0, &cg(2)).0, 0);
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_CHANGE_GFN, 0, &cg(u64::MAX)).0,
        -sys::KVM_EPERM
    );
    // Singlestep padding.
    let ss = sys::VcpuControlSingleStep {
        enable: 1,
        padding: [0, 1, 0, 0, 0, 0, 0],
    };
    let e = t.vcmd(sys::KVMI_VCPU_CONTROL_SINGLESTEP, 0, &ss).0;
    assert_eq!(e, -sys::KVM_EINVAL);
    // v6-only id on kvmi-v7: ENOSYS.
    assert_eq!(t.cmd(12, &[]).0, -sys::KVM_ENOSYS);
}
