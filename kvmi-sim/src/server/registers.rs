//! Register commands: GPRs/SREGs/MSRs, CPUID, XSAVE, XCR0, MTRR type, TSC speed.

use super::*;
use crate::rd;
use kvmi_sys as sys;

/// `KVMI_VCPU_GET_INFO`.
pub(super) fn vcpu_get_info(c: &mut Cmd<'_>) -> Out {
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    data(&sys::VcpuGetInfoReply {
        tsc_speed: vm.vcpus[vcpu].tsc_speed,
    })
}

/// `KVMI_VCPU_GET_REGISTERS`.
pub(super) fn vcpu_get_registers(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuGetRegisters = rd(p, 8);
    let n = usize::from(r.nmsrs);
    if r.padding1 != 0 || r.padding2 != 0 || p.len() < 16 + 4 * n {
        return Out::Err(sys::KVM_EINVAL);
    }
    if n > sys::KVMI_GET_REGISTERS_MAX_MSRS {
        return Out::Err(sys::KVM_ENOMEM);
    }
    let v = &vm.vcpus[vcpu];
    let mut entries = Vec::with_capacity(n);
    for i in 0..n {
        let idx: u32 = rd(p, 16 + 4 * i);
        let Some(d) = v.msrs.get(&idx) else {
            return Out::Err(sys::KVM_EINVAL);
        };
        entries.push(sys::KvmMsrEntry {
            index: idx,
            reserved: 0,
            data: *d,
        });
    }
    let head = sys::VcpuGetRegistersReply {
        mode: u32::from(v.mode()),
        padding: 0,
        regs: v.regs,
        sregs: v.sregs,
        msrs: sys::KvmMsrs {
            nmsrs: n as u32,
            pad: 0,
        },
    };
    let mut out = head.as_bytes().to_vec();
    for e in &entries {
        out.extend_from_slice(e.as_bytes());
    }
    Out::Ok(out)
}

/// `KVMI_VCPU_SET_REGISTERS`.
pub(super) fn vcpu_set_registers(c: &mut Cmd<'_>) -> Out {
    let in_event = c.st.pending[c.vcpu].is_some();
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    if !in_event {
        return Out::Err(sys::KVM_EOPNOTSUPP);
    }
    let r: sys::VcpuSetRegisters = rd(p, 8);
    vm.vcpus[vcpu].pending_regs = Some(r.regs);
    ok()
}

/// `KVMI_VCPU_GET_CPUID`.
pub(super) fn vcpu_get_cpuid(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VcpuGetCpuid = rd(p, 8);
    let idx_significant = matches!(r.function, 4 | 7 | 0xb | 0xd | 0xf | 0x10 | 0x12)
        || matches!(r.function, 0x14 | 0x17 | 0x18 | 0x1d | 0x1f | 0x8000_001d);
    let e = vm.cpuid.get(&(r.function, r.index)).or_else(|| {
        if idx_significant {
            None
        } else {
            vm.cpuid.get(&(r.function, 0))
        }
    });
    match e {
        Some(e) => data(&sys::VcpuGetCpuidReply {
            eax: e[0],
            ebx: e[1],
            ecx: e[2],
            edx: e[3],
        }),
        None => Out::Err(sys::KVM_ENOENT),
    }
}

/// `KVMI_VCPU_GET_XSAVE`.
pub(super) fn vcpu_get_xsave(c: &mut Cmd<'_>) -> Out {
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    data(&vm.vcpus[vcpu].xsave)
}

/// `KVMI_VCPU_GET_MTRR_TYPE`.
pub(super) fn vcpu_get_mtrr_type(c: &mut Cmd<'_>) -> Out {
    let vm = &mut c.st.vm;
    data(&sys::VcpuGetMtrrTypeReply {
        type_: vm.mtrr_type,
        padding: [0; 7],
    })
}

/// `KVMI_VCPU_GET_XCR`.
pub(super) fn vcpu_get_xcr(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuGetXcr = rd(p, 8);
    if r.padding != [0; 7] || r.xcr != 0 {
        return Out::Err(sys::KVM_EINVAL);
    }
    data(&sys::VcpuGetXcrReply {
        value: vm.vcpus[vcpu].xcr0,
    })
}

/// `KVMI_VCPU_SET_XSAVE`.
pub(super) fn vcpu_set_xsave(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let d = &p[8.min(p.len())..];
    if d.len() > sys::KVM_XSAVE_SIZE {
        return Out::Err(sys::KVM_EINVAL);
    }
    let v = &mut vm.vcpus[vcpu];
    v.xsave.as_mut_bytes()[..d.len()].copy_from_slice(d);
    ok()
}
