//! vCPU control: pause (PAUSE_VCPU events), exception injection (TRAP), singlestep, vCPU count.

use super::*;
use crate::model::Injection;
use crate::rd;
use kvmi_sys as sys;

/// `KVMI_VM_GET_INFO`.
pub(super) fn vm_get_info(c: &mut Cmd<'_>) -> Out {
    let vm = &mut c.st.vm;
    data(&sys::VmGetInfoReply {
        vcpu_count: c
            .cfg
            .faults
            .reported_vcpu_count
            .unwrap_or(vm.vcpus.len() as u32),
        padding: [0; 3],
    })
}

/// `KVMI_VCPU_INJECT_EXCEPTION`.
pub(super) fn vcpu_inject_exception(c: &mut Cmd<'_>) -> Out {
    let v7 = c.v7();
    let trap_in_flight = matches!(
        c.st.pending[c.vcpu],
        Some(Pending {
            event: SimEvent::Trap { .. },
            ..
        })
    );
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let (nr, bad, error_code, address, has_error) = if v7 {
        let r: sys::VcpuInjectException = rd(p, 8);
        let has = matches!(r.nr, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30);
        (
            r.nr,
            r.padding1 != 0 || r.padding2 != 0,
            r.error_code,
            r.address,
            has,
        )
    } else {
        let r: v6::InjectException = rd(p, 8);
        (
            r.nr,
            r.padding != 0 || r.has_error > 1,
            r.error_code,
            r.address,
            r.has_error == 1,
        )
    };
    if bad || nr >= 32 {
        return Out::Err(sys::KVM_EINVAL);
    }
    let v = &mut vm.vcpus[vcpu];
    if v.pending_trap.is_some() || trap_in_flight {
        return Out::Err(sys::KVM_EBUSY);
    }
    let inj = Injection {
        vector: nr,
        error_code: if has_error { error_code } else { 0 },
        cr2: if nr == 14 { address } else { 0 },
        reinjected_bp: false,
    };
    if nr == 14 {
        v.sregs.cr2 = address;
    }
    if v7 {
        v.pending_trap = Some(inj);
    } else {
        v.injections.push(inj);
    }
    ok()
}

/// `KVMI_VCPU_CONTROL_SINGLESTEP`.
pub(super) fn vcpu_control_singlestep(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuControlSingleStep = rd(p, 8);
    if r.padding != [0; 7] || r.enable > 1 || !cfg.features.singlestep {
        return Out::Err(sys::KVM_EINVAL);
    }
    vm.vcpus[vcpu].singlestep = r.enable == 1;
    ok()
}

pub(super) fn vcpu_pause(cfg: &SimConfig, st: &mut State, p: &[u8]) -> Out {
    let vh: sys::VcpuHdr = rd(p, 0);
    let req: sys::VcpuPause = if cfg.pause_quirk { rd(p, 0) } else { rd(p, 8) };
    if !cfg.pause_quirk && (vh.padding1 != 0 || vh.padding2 != 0) {
        return Out::Close("non-zero vcpu_hdr padding");
    }
    if req.padding1 != 0 || req.padding2 != 0 || req.padding3 != 0 {
        return Out::Err(sys::KVM_EINVAL);
    }
    let vcpu = usize::from(vh.vcpu);
    if vcpu >= st.vm.vcpus.len() {
        return Out::Err(sys::KVM_EINVAL);
    }
    if !event_allowed(cfg, sys::KVMI_EVENT_PAUSE_VCPU) {
        return Out::Close("VCPU_PAUSE with the PAUSE event disallowed");
    }
    let v = &mut st.vm.vcpus[vcpu];
    if v.pause_requests >= sys::KVMI_MAX_PAUSE_REQUESTS {
        return Out::Err(sys::KVM_EBUSY);
    }
    v.pause_requests += 1;
    ok()
}
