//! Memory commands: physical reads and writes, the GFN space, map tokens, GVA translation.

use super::*;
use crate::model::{Vm, PAGE_SIZE};
use crate::rd;
use kvmi_sys as sys;

/// `KVMI_VM_READ_PHYSICAL`.
pub(super) fn vm_read_physical(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VmReadPhysical = rd(p, 0);
    match phys_check(vm, r.gpa, r.size) {
        Err(e) => Out::Err(e),
        Ok(()) => match vm.memory.read(r.gpa, r.size as usize) {
            Some(d) => Out::Ok(d),
            None => Out::Err(sys::KVM_ENOENT),
        },
    }
}

/// `KVMI_VM_WRITE_PHYSICAL`.
pub(super) fn vm_write_physical(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VmWritePhysical = rd(p, 0);
    if (p.len() as u64) < 16u64.saturating_add(r.size) {
        return Out::Close("WRITE_PHYSICAL shorter than declared");
    }
    match phys_check(vm, r.gpa, r.size) {
        Err(e) => Out::Err(e),
        Ok(()) => {
            let d = &p[16..16 + r.size as usize];
            if vm.memory.write(r.gpa, d) {
                ok()
            } else {
                Out::Err(sys::KVM_ENOENT)
            }
        }
    }
}

/// `KVMI_VM_GET_MAP_TOKEN`.
pub(super) fn vm_get_map_token(c: &mut Cmd<'_>) -> Out {
    let vm = &mut c.st.vm;
    vm.map_tokens += 1;
    data(&sys::VmGetMapTokenReply {
        token: sys::MapMemToken {
            token: [0x6b76_6d69, vm.map_tokens, 0, 0],
        },
    })
}

/// `KVMI_VM_GET_MAX_GFN`.
pub(super) fn vm_get_max_gfn(c: &mut Cmd<'_>) -> Out {
    let vm = &mut c.st.vm;
    data(&sys::VmGetMaxGfnReply {
        gfn: vm.memory.max_gfn,
    })
}

/// `KVMI_GET_NEXT_AVAILABLE_GFN`.
pub(super) fn get_next_available_gfn(c: &mut Cmd<'_>) -> Out {
    let vm = &mut c.st.vm;
    let mut g = vm.memory.max_gfn;
    while vm.memory.is_backed(g) {
        g += 1;
    }
    data(&sys::GetNextAvailableGfnReply { gfn: g })
}

/// `KVMI_QUERY_PHYSICAL`.
pub(super) fn query_physical(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::QueryPhysical = rd(p, 0);
    if !vm.memory.is_backed(r.gfn) {
        return Out::Err(sys::KVM_ENOENT);
    }
    let mut start = r.gfn;
    while start > 0 && vm.memory.is_backed(start - 1) {
        start -= 1;
    }
    let mut end = r.gfn + 1;
    while vm.memory.is_backed(end) {
        end += 1;
    }
    data(&sys::QueryPhysicalReply {
        gfn: start,
        size: end - start,
    })
}

/// `KVMI_VCPU_TRANSLATE_GVA`.
pub(super) fn vcpu_translate_gva(c: &mut Cmd<'_>) -> Out {
    let p = c.p;
    let vcpu = c.vcpu;
    let vm = &mut c.st.vm;
    let r: sys::VcpuTranslateGva = rd(p, 8);
    let gpa = vm.memory.translate(&vm.vcpus[vcpu].sregs, r.gva);
    data(&sys::VcpuTranslateGvaReply { gpa })
}

/// `KVMI_VCPU_ALLOC_GFN` and `KVMI_VCPU_FREE_GFN`.
pub(super) fn vcpu_alloc_free_gfn(c: &mut Cmd<'_>) -> Out {
    let hdr = c.hdr;
    let p = c.p;
    let vm = &mut c.st.vm;
    let r: sys::VcpuAllocGfn = rd(p, 8);
    if hdr.id == sys::KVMI_VCPU_ALLOC_GFN {
        if vm.memory.is_backed(r.gfn) {
            return Out::Err(sys::KVM_EINVAL);
        }
        vm.memory.add_frame(r.gfn);
        ok()
    } else if vm.memory.remove_frame(r.gfn) {
        ok()
    } else {
        Out::Err(sys::KVM_EINVAL)
    }
}

fn phys_check(vm: &Vm, gpa: u64, size: u64) -> Result<(), i32> {
    if size == 0 || size > PAGE_SIZE as u64 || (gpa & 0xfff) + size > PAGE_SIZE as u64 {
        return Err(sys::KVM_EINVAL);
    }
    if gpa >> 12 >= vm.memory.max_gfn || !vm.memory.is_backed(gpa >> 12) {
        return Err(sys::KVM_ENOENT);
    }
    Ok(())
}
