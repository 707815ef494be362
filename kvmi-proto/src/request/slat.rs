//! The typed requests of memory mapping and second-level address translation: the
//! map token, EPT views, #VE, SPP, alternate gfns and physical-slot queries.

use super::{vcpu_payload, Request};
use crate::codec::read_reply;
use crate::error::Result;
use kvmi_sys as sys;
use zerocopy::IntoBytes;

impl Request<()> {
    /// `KVMI_VM_GET_MAP_TOKEN`.
    pub fn get_map_token() -> Request<sys::MapMemToken> {
        Request {
            id: sys::KVMI_VM_GET_MAP_TOKEN,
            payload: Vec::new(),
            ctx: 0,
            decode: reply_of!("GET_MAP_TOKEN reply", sys::VmGetMapTokenReply => sys::MapMemToken, |r| r.token),
        }
    }

    /// `KVMI_VM_GET_MAX_GFN`.
    pub fn get_max_gfn() -> Request<u64> {
        Request {
            id: sys::KVMI_VM_GET_MAX_GFN,
            payload: Vec::new(),
            ctx: 0,
            decode: reply_of!("GET_MAX_GFN reply", sys::VmGetMaxGfnReply => u64, |r| r.gfn),
        }
    }

    /// `KVMI_VM_CONTROL_SPP` (enable only).
    pub fn control_spp(enable: bool) -> Request<()> {
        Request::vm(
            sys::KVMI_VM_CONTROL_SPP,
            &sys::VmControlSpp {
                enable: u8::from(enable),
                ..Default::default()
            },
        )
    }

    /// `KVMI_VCPU_SET_VE_INFO`.
    pub fn set_ve_info(vcpu: u16, gpa: u64, trigger_vmexit: bool) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_SET_VE_INFO,
            vcpu,
            &sys::VcpuSetVeInfo {
                gpa,
                trigger_vmexit: u8::from(trigger_vmexit),
                ..Default::default()
            },
        )
    }

    /// `KVMI_VCPU_DISABLE_VE`.
    pub fn disable_ve(vcpu: u16) -> Request<()> {
        Request::raw(sys::KVMI_VCPU_DISABLE_VE, vcpu_payload(vcpu, &[]))
    }

    /// `KVMI_VM_SET_PAGE_SVE`.
    pub fn set_page_sve(view: u16, gpa: u64, suppress: bool) -> Request<()> {
        Request::vm(
            sys::KVMI_VM_SET_PAGE_SVE,
            &sys::VmSetPageSve {
                view,
                suppress: u8::from(suppress),
                gpa,
                ..Default::default()
            },
        )
    }

    /// `KVMI_GET_NEXT_AVAILABLE_GFN` (libkvmi 2023).
    pub fn get_next_available_gfn() -> Request<u64> {
        Request {
            id: sys::KVMI_GET_NEXT_AVAILABLE_GFN,
            payload: Vec::new(),
            ctx: 0,
            decode: reply_of!(
                "GET_NEXT_AVAILABLE_GFN reply",
                sys::GetNextAvailableGfnReply => u64,
                |r| r.gfn
            ),
        }
    }

    /// `KVMI_VCPU_GET_EPT_VIEW`.
    pub fn get_ept_view(vcpu: u16) -> Request<u16> {
        Request {
            id: sys::KVMI_VCPU_GET_EPT_VIEW,
            payload: vcpu_payload(vcpu, &[]),
            ctx: 0,
            decode: reply_of!("GET_EPT_VIEW reply", sys::VcpuGetEptViewReply => u16, |r| r.view),
        }
    }

    /// `KVMI_VCPU_SET_EPT_VIEW` (switch view).
    pub fn set_ept_view(vcpu: u16, view: u16) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_SET_EPT_VIEW,
            vcpu,
            &sys::VcpuSetEptView {
                view,
                ..Default::default()
            },
        )
    }

    /// `KVMI_VCPU_CONTROL_EPT_VIEW`.
    pub fn control_ept_view(vcpu: u16, view: u16, visible: bool) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_CONTROL_EPT_VIEW,
            vcpu,
            &sys::VcpuControlEptView {
                view,
                visible: u8::from(visible),
                ..Default::default()
            },
        )
    }

    /// `KVMI_CREATE_EPT_VIEW` (libkvmi 2023).
    pub fn create_ept_view() -> Request<u16> {
        Request {
            id: sys::KVMI_CREATE_EPT_VIEW,
            payload: Vec::new(),
            ctx: 0,
            decode: reply_of!("CREATE_EPT_VIEW reply", sys::CreateEptViewReply => u16, |r| r.view),
        }
    }

    /// `KVMI_DESTROY_EPT_VIEW` (libkvmi 2023).
    pub fn destroy_ept_view(view: u16) -> Request<()> {
        Request::vm(
            sys::KVMI_DESTROY_EPT_VIEW,
            &sys::DestroyEptView {
                view,
                padding: [0; 3],
            },
        )
    }

    /// `KVMI_VCPU_TRANSLATE_GVA`: `KVMI_UNMAPPED_GPA` if unmapped.
    pub fn translate_gva(vcpu: u16, gva: u64) -> Request<u64> {
        Request {
            id: sys::KVMI_VCPU_TRANSLATE_GVA,
            payload: vcpu_payload(vcpu, sys::VcpuTranslateGva { gva }.as_bytes()),
            ctx: 0,
            decode: reply_of!("TRANSLATE_GVA reply", sys::VcpuTranslateGvaReply => u64, |r| r
                .gpa),
        }
    }

    /// `KVMI_VCPU_CHANGE_GFN`, 2023 layout (with view).
    pub fn change_gfn(vcpu: u16, view: u16, old_gfn: u64, new_gfn: u64) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_CHANGE_GFN,
            vcpu,
            &sys::VcpuChangeGfn {
                view,
                old_gfn,
                new_gfn,
                ..Default::default()
            },
        )
    }

    /// `KVMI_VCPU_CHANGE_GFN`, 2020 kvmi-v7 kernel layout (no view).
    pub fn change_gfn_2020(vcpu: u16, old_gfn: u64, new_gfn: u64) -> Request<()> {
        Request::vcpu(
            sys::KVMI_VCPU_CHANGE_GFN,
            vcpu,
            &sys::VcpuChangeGfn2020 { old_gfn, new_gfn },
        )
    }

    /// `KVMI_VCPU_ALLOC_GFN` (libkvmi uses vCPU 0).
    pub fn alloc_gfn(vcpu: u16, gfn: u64) -> Request<()> {
        Request::vcpu(sys::KVMI_VCPU_ALLOC_GFN, vcpu, &sys::VcpuAllocGfn { gfn })
    }

    /// `KVMI_VCPU_FREE_GFN`.
    pub fn free_gfn(vcpu: u16, gfn: u64) -> Request<()> {
        Request::vcpu(sys::KVMI_VCPU_FREE_GFN, vcpu, &sys::VcpuFreeGfn { gfn })
    }

    /// `KVMI_QUERY_PHYSICAL` (libkvmi 2023): memory slot holding `gfn`.
    pub fn query_physical(gfn: u64) -> Request<sys::QueryPhysicalReply> {
        Request {
            id: sys::KVMI_QUERY_PHYSICAL,
            payload: sys::QueryPhysical { gfn }.as_bytes().to_vec(),
            ctx: 0,
            decode: reply_of!("QUERY_PHYSICAL reply", sys::QueryPhysicalReply => sys::QueryPhysicalReply, |r| r),
        }
    }
}
