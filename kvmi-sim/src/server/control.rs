//! Introspection control: version, command/event checks, event enables, CR/MSR
//! intercepts, reply suppression.

use super::*;
use crate::rd;
use kvmi_sys as sys;

/// `KVMI_GET_VERSION`.
pub(super) fn get_version(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let v7 = c.v7();
    if v7 {
        let f = &cfg.features;
        data(&sys::GetVersionReply {
            version: sys::KVMI_VERSION,
            padding: 0,
            features: sys::Features {
                spp: f.spp.into(),
                vmfunc: f.vmfunc.into(),
                eptp: f.eptp.into(),
                ve: f.ve.into(),
                singlestep: f.singlestep.into(),
                padding: [0; 3],
            },
        })
    } else {
        data(&v6::GetVersionReply {
            version: sys::KVMI_VERSION,
            padding: 0,
        })
    }
}

/// `KVMI_VM_CHECK_COMMAND`.
pub(super) fn vm_check_command(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let v7 = c.v7();
    let p = c.p;
    let r: sys::VmCheckCommand = rd(p, 0);
    let n = if v7 {
        sys::KVMI_NUM_COMMANDS
    } else {
        v6::KVMI_NUM_COMMANDS
    };
    if r.padding1 != 0 || r.padding2 != 0 || usize::from(r.id) >= n {
        Out::Err(sys::KVM_EINVAL)
    } else if !command_allowed(cfg, r.id) {
        Out::Err(sys::KVM_EPERM)
    } else {
        ok()
    }
}

/// `KVMI_VM_CHECK_EVENT`.
pub(super) fn vm_check_event(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let r: sys::VmCheckEvent = rd(p, 0);
    if r.padding1 != 0 || r.padding2 != 0 || usize::from(r.id) >= num_events(cfg.abi) {
        Out::Err(sys::KVM_EINVAL)
    } else if !event_allowed(cfg, r.id as u8) {
        Out::Err(sys::KVM_EPERM)
    } else {
        ok()
    }
}

/// `KVMI_VM_CONTROL_EVENTS`.
pub(super) fn vm_control_events(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VmControlEvents = rd(p, 0);
    let vm_ev = [
        sys::KVMI_EVENT_UNHOOK,
        sys::KVMI_EVENT_CREATE_VCPU,
        sys::KVMI_EVENT_CMD_ERROR,
    ];
    let id = r.event_id;
    if r.padding1 != 0
        || r.padding2 != 0
        || r.enable > 1
        || id > 255
        || usize::from(id) >= num_events(cfg.abi)
        || !vm_ev.contains(&(id as u8))
    {
        Out::Err(sys::KVM_EINVAL)
    } else if !event_allowed(cfg, id as u8) {
        Out::Err(sys::KVM_EPERM)
    } else {
        if r.enable == 1 {
            vm.vm_events.insert(id as u8);
        } else {
            vm.vm_events.remove(&(id as u8));
        }
        ok()
    }
}

/// `KVMI_VCPU_CONTROL_EVENTS`.
pub(super) fn vcpu_control_events(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let nev = num_events(c.cfg.abi);
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuControlEvents = rd(p, 8);
    let id = r.event_id;
    let vm_ev = [
        sys::KVMI_EVENT_UNHOOK,
        sys::KVMI_EVENT_CREATE_VCPU,
        sys::KVMI_EVENT_CMD_ERROR,
    ];
    if r.padding1 != 0
        || r.padding2 != 0
        || r.enable > 1
        || usize::from(id) >= nev
        || vm_ev.contains(&(id as u8))
    {
        return Out::Err(sys::KVM_EINVAL);
    }
    let id = id as u8;
    if !event_allowed(cfg, id) {
        return Out::Err(sys::KVM_EPERM);
    }
    if id == sys::KVMI_EVENT_DESCRIPTOR && r.enable == 1 && !cfg.descriptor_supported {
        return Out::Err(sys::KVM_EOPNOTSUPP);
    }
    let v = &mut vm.vcpus[vcpu];
    if r.enable == 1 {
        v.events.insert(id);
    } else {
        v.events.remove(&id);
    }
    ok()
}

/// `KVMI_VCPU_CONTROL_CR`.
pub(super) fn vcpu_control_cr(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuControlCr = rd(p, 8);
    if r.padding1 != 0 || r.padding2 != 0 || r.enable > 1 || ![0, 3, 4].contains(&r.cr) {
        return Out::Err(sys::KVM_EINVAL);
    }
    if !event_allowed(cfg, sys::KVMI_EVENT_CR) {
        return Out::Err(sys::KVM_EPERM);
    }
    let v = &mut vm.vcpus[vcpu];
    if r.enable == 1 {
        v.cr_intercepts.insert(r.cr);
    } else {
        v.cr_intercepts.remove(&r.cr);
    }
    ok()
}

/// `KVMI_VCPU_CONTROL_MSR`.
pub(super) fn vcpu_control_msr(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuControlMsr = rd(p, 8);
    let m = r.msr;
    let in_range = m < 0x1fff || (m > 0xc000_0000 && m < 0xc000_1fff);
    if r.padding1 != 0 || r.padding2 != 0 || r.enable > 1 || !in_range {
        return Out::Err(sys::KVM_EINVAL);
    }
    if !event_allowed(cfg, sys::KVMI_EVENT_MSR) {
        return Out::Err(sys::KVM_EPERM);
    }
    let v = &mut vm.vcpus[vcpu];
    if r.enable == 1 {
        v.msr_intercepts.insert(m);
    } else {
        v.msr_intercepts.remove(&m);
    }
    ok()
}

pub(super) fn control_cmd_response(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, p: &[u8]) {
    let req: sys::VmControlCmdResponse = rd(p, 0);
    let v7 = sh.cfg.abi == Abi::V7;
    let bad = req.padding1 != 0
        || req.padding2 != 0
        || req.enable > 1
        || req.now > 1
        || (!v7 && req.flags != 0)
        || req.flags & !sys::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR != 0
        || (req.enable != 0 && req.flags != 0);
    if bad {
        finish(sh, st, hdr, Out::Err(sys::KVM_EINVAL));
        return;
    }
    let wants_cmd_error = req.flags & sys::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR != 0;
    if wants_cmd_error && !event_allowed(&sh.cfg, sys::KVMI_EVENT_CMD_ERROR) {
        finish(sh, st, hdr, Out::Err(sys::KVM_EPERM));
        return;
    }
    if req.now == 1 {
        st.replies_enabled = req.enable == 1;
    }
    finish(sh, st, hdr, ok());
    if req.now == 0 {
        st.replies_enabled = req.enable == 1;
    }
    st.cmd_error_flag = req.enable == 0 && wants_cmd_error;
}
