//! SLAT commands: page access per EPT view, SPP write bitmaps, EPT views, #VE, GFN remapping.

use super::*;
use crate::rd;
use kvmi_sys as sys;

/// `KVMI_VM_SET_PAGE_ACCESS`.
pub(super) fn vm_set_page_access(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let v7 = c.v7();
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VmSetPageAccess = rd(p, 0);
    if r.padding != 0 || p.len() < 8 + 16 * usize::from(r.count) {
        return Out::Err(sys::KVM_EINVAL);
    }
    if r.view >= sys::KVM_MAX_EPT_VIEWS {
        return Out::Err(sys::KVM_EINVAL);
    }
    if v7 && r.view != 0 && (!cfg.features.eptp || vm.spp_enabled) {
        return Out::Err(sys::KVM_EOPNOTSUPP);
    }
    if !v7 && r.view != 0 {
        return Out::Err(sys::KVM_EINVAL);
    }
    let mut first = 0;
    for i in 0..usize::from(r.count) {
        let e: sys::PageAccessEntry = rd(p, 8 + 16 * i);
        let invalid = e.padding1 != 0
            || e.padding2 != 0
            || e.padding3 != 0
            || e.access & !sys::KVMI_PAGE_ACCESS_RWX != 0
            || !vm.memory.is_backed(e.gpa >> 12);
        let err = if invalid {
            sys::KVM_EINVAL
        } else {
            if e.access == sys::KVMI_PAGE_ACCESS_RWX {
                vm.page_access.remove(&(r.view, e.gpa >> 12));
            } else {
                vm.page_access.insert((r.view, e.gpa >> 12), e.access);
            }
            0
        };
        if first == 0 {
            first = err;
        }
    }
    if first == 0 {
        ok()
    } else {
        Out::Err(first)
    }
}

/// `KVMI_GET_PAGE_ACCESS` and `KVMI_GET_PAGE_WRITE_BITMAP`.
pub(super) fn v6_get_page_access(c: &mut Cmd<'_>) -> Out {
    let hdr = c.hdr;
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: v6::GetPageAccess = rd(p, 0);
    if r.padding != 0 || r.view != 0 || p.len() < 8 + 8 * usize::from(r.count) {
        return Out::Err(sys::KVM_EINVAL);
    }
    let mut out = Vec::new();
    for i in 0..usize::from(r.count) {
        let gpa: u64 = rd(p, 8 + 8 * i);
        if hdr.id == v6::KVMI_GET_PAGE_ACCESS {
            out.push(
                vm.page_access
                    .get(&(0, gpa >> 12))
                    .copied()
                    .unwrap_or(sys::KVMI_PAGE_ACCESS_RWX),
            );
        } else {
            let b = vm.write_bitmaps.get(&(gpa >> 12)).copied().unwrap_or(0);
            out.extend_from_slice(&b.to_le_bytes());
        }
    }
    while out.len() % 8 != 0 {
        out.push(0);
    }
    Out::Ok(out)
}

/// `KVMI_VM_CONTROL_SPP`.
pub(super) fn vm_control_spp(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VmControlSpp = rd(p, 0);
    if r.padding1 != 0 || r.padding2 != 0 || r.padding3 != 0 {
        Out::Err(sys::KVM_EINVAL)
    } else if !cfg.features.spp || r.enable != 1 {
        Out::Err(sys::KVM_EOPNOTSUPP)
    } else {
        vm.spp_enabled = true;
        ok()
    }
}

/// `KVMI_VM_SET_PAGE_WRITE_BITMAP`.
pub(super) fn vm_set_page_write_bitmap(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VmSetPageWriteBitmap = rd(p, 0);
    if r.padding1 != 0 || r.padding2 != 0 || p.len() < 8 + 16 * usize::from(r.count) {
        return Out::Err(sys::KVM_EINVAL);
    }
    if !vm.spp_enabled {
        return Out::Err(sys::KVM_EOPNOTSUPP);
    }
    let mut first = 0;
    for i in 0..usize::from(r.count) {
        let e: sys::PageWriteBitmapEntry = rd(p, 8 + 16 * i);
        if e.padding != 0 {
            if first == 0 {
                first = sys::KVM_EINVAL;
            }
            continue;
        }
        vm.write_bitmaps.insert(e.gpa >> 12, e.bitmap);
    }
    if first == 0 {
        ok()
    } else {
        Out::Err(first)
    }
}

/// `KVMI_VM_SET_PAGE_SVE`.
pub(super) fn vm_set_page_sve(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VmSetPageSve = rd(p, 0);
    if r.padding1 != 0 || r.padding2 != 0 || r.suppress > 1 || r.view >= sys::KVM_MAX_EPT_VIEWS {
        Out::Err(sys::KVM_EINVAL)
    } else if !cfg.features.ve {
        Out::Err(sys::KVM_EOPNOTSUPP)
    } else {
        vm.sve.insert((r.view, r.gpa >> 12), r.suppress == 1);
        ok()
    }
}

/// `KVMI_CREATE_EPT_VIEW`.
pub(super) fn create_ept_view(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let vm = &mut c.st.vm;
    if !cfg.features.eptp {
        return Out::Err(sys::KVM_EOPNOTSUPP);
    }
    match (1..sys::KVM_MAX_EPT_VIEWS).find(|v| !vm.views.contains(v)) {
        Some(v) => {
            vm.views.insert(v);
            data(&sys::CreateEptViewReply {
                view: v,
                padding: [0; 3],
            })
        }
        None => Out::Err(sys::KVM_ENOMEM),
    }
}

/// `KVMI_DESTROY_EPT_VIEW`.
pub(super) fn destroy_ept_view(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let st = &mut *c.st;
    let r: sys::DestroyEptView = rd(p, 0);
    if r.padding != [0; 3] || r.view == 0 || r.view >= sys::KVM_MAX_EPT_VIEWS {
        Out::Err(sys::KVM_EINVAL)
    } else if !cfg.features.eptp {
        Out::Err(sys::KVM_EOPNOTSUPP)
    } else if st.vm.vcpus.iter().any(|c| c.view == r.view) {
        Out::Err(sys::KVM_EBUSY)
    } else {
        let vm = &mut st.vm;
        vm.views.remove(&r.view);
        vm.page_access.retain(|(v, _), _| *v != r.view);
        ok()
    }
}

/// `KVMI_VCPU_SET_VE_INFO`.
pub(super) fn vcpu_set_ve_info(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuSetVeInfo = rd(p, 8);
    if r.padding1 != 0 || r.padding2 != 0 || r.padding3 != 0 || r.trigger_vmexit > 1 {
        return Out::Err(sys::KVM_EINVAL);
    }
    if !cfg.features.ve {
        return Out::Err(sys::KVM_EINVAL);
    }
    vm.vcpus[vcpu].ve_info = Some((r.gpa, r.trigger_vmexit == 1));
    ok()
}

/// `KVMI_VCPU_DISABLE_VE`.
pub(super) fn vcpu_disable_ve(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    if !cfg.features.ve {
        return Out::Err(sys::KVM_EINVAL);
    }
    vm.vcpus[vcpu].ve_info = None;
    ok()
}

/// `KVMI_VCPU_SET_EPT_VIEW`.
pub(super) fn vcpu_set_ept_view(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuSetEptView = rd(p, 8);
    if r.padding1 != 0 || r.padding2 != 0 || r.view >= sys::KVM_MAX_EPT_VIEWS {
        return Out::Err(sys::KVM_EINVAL);
    }
    if !cfg.features.eptp || (r.view != 0 && vm.spp_enabled) {
        return Out::Err(sys::KVM_EOPNOTSUPP);
    }
    vm.vcpus[vcpu].view = r.view;
    ok()
}

/// `KVMI_VCPU_GET_EPT_VIEW`.
pub(super) fn vcpu_get_ept_view(c: &mut Cmd<'_>) -> Out {
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    data(&sys::VcpuGetEptViewReply {
        view: vm.vcpus[vcpu].view,
        padding1: 0,
        padding2: 0,
    })
}

/// `KVMI_VCPU_CONTROL_EPT_VIEW`.
pub(super) fn vcpu_control_ept_view(c: &mut Cmd<'_>) -> Out {
    let cfg = c.cfg;
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuControlEptView = rd(p, 8);
    if r.padding1 != 0 || r.padding2 != 0 || r.visible > 1 || r.view >= sys::KVM_MAX_EPT_VIEWS {
        return Out::Err(sys::KVM_EINVAL);
    }
    if !cfg.features.eptp || !cfg.features.vmfunc {
        return Out::Err(sys::KVM_EOPNOTSUPP);
    }
    let v = &mut vm.vcpus[vcpu];
    if r.visible == 1 {
        v.visible_views.insert(r.view);
    } else {
        v.visible_views.remove(&r.view);
    }
    ok()
}

/// `KVMI_VCPU_CHANGE_GFN`.
pub(super) fn vcpu_change_gfn(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VcpuChangeGfn = rd(p, 8);
    if r.padding1 != 0 || r.padding2 != 0 || r.view >= sys::KVM_MAX_EPT_VIEWS {
        return Out::Err(sys::KVM_EINVAL);
    }
    if r.new_gfn == sys::KVMI_CHANGE_GFN_RESERVED {
        return Out::Err(sys::KVM_EPERM);
    }
    if !vm.memory.is_backed(r.old_gfn) || !vm.memory.is_backed(r.new_gfn) {
        return Out::Err(sys::KVM_EINVAL);
    }
    if r.old_gfn == r.new_gfn {
        vm.gfn_remap.remove(&(r.view, r.old_gfn));
    } else {
        vm.gfn_remap.insert((r.view, r.old_gfn), r.new_gfn);
    }
    ok()
}
