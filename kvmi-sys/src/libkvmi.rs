//! The names libkvmi `master` (`include/linux/kvmi.h`) uses for kvmi-v7 message ids.
//!
//! libkvmi kept the kvmi-v6 style names for the kvmi-v7 ids; LibVMI's KVM driver builds
//! against them. Each constant here equals the kvmi-v7 id named in its docs. Ids whose
//! libkvmi name is the kernel name (`KVMI_GET_VERSION`, `KVMI_VCPU_TRANSLATE_GVA`,
//! `KVMI_VCPU_GET_XCR`, `KVMI_VCPU_SET_XSAVE`, `KVMI_VCPU_CONTROL_SINGLESTEP`,
//! `KVMI_VCPU_CHANGE_GFN`, the 2023 additions) are not repeated.

use crate::ids;

/// = [`KVMI_VM_CHECK_COMMAND`](crate::KVMI_VM_CHECK_COMMAND) (3).
pub const KVMI_CHECK_COMMAND: u16 = ids::KVMI_VM_CHECK_COMMAND;
/// = [`KVMI_VM_CHECK_EVENT`](crate::KVMI_VM_CHECK_EVENT) (4).
pub const KVMI_CHECK_EVENT: u16 = ids::KVMI_VM_CHECK_EVENT;
/// = [`KVMI_VM_GET_INFO`](crate::KVMI_VM_GET_INFO) (5).
pub const KVMI_GET_GUEST_INFO: u16 = ids::KVMI_VM_GET_INFO;
/// = [`KVMI_VCPU_GET_INFO`](crate::KVMI_VCPU_GET_INFO) (6).
pub const KVMI_GET_VCPU_INFO: u16 = ids::KVMI_VCPU_GET_INFO;
/// = [`KVMI_VCPU_PAUSE`](crate::KVMI_VCPU_PAUSE) (7).
pub const KVMI_PAUSE_VCPU: u16 = ids::KVMI_VCPU_PAUSE;
/// = [`KVMI_VM_CONTROL_EVENTS`](crate::KVMI_VM_CONTROL_EVENTS) (8).
pub const KVMI_CONTROL_VM_EVENTS: u16 = ids::KVMI_VM_CONTROL_EVENTS;
/// = [`KVMI_VCPU_CONTROL_EVENTS`](crate::KVMI_VCPU_CONTROL_EVENTS) (9).
pub const KVMI_CONTROL_EVENTS: u16 = ids::KVMI_VCPU_CONTROL_EVENTS;
/// = [`KVMI_VCPU_CONTROL_CR`](crate::KVMI_VCPU_CONTROL_CR) (10).
pub const KVMI_CONTROL_CR: u16 = ids::KVMI_VCPU_CONTROL_CR;
/// = [`KVMI_VCPU_CONTROL_MSR`](crate::KVMI_VCPU_CONTROL_MSR) (11).
pub const KVMI_CONTROL_MSR: u16 = ids::KVMI_VCPU_CONTROL_MSR;
/// = [`KVMI_VCPU_GET_REGISTERS`](crate::KVMI_VCPU_GET_REGISTERS) (13).
pub const KVMI_GET_REGISTERS: u16 = ids::KVMI_VCPU_GET_REGISTERS;
/// = [`KVMI_VCPU_SET_REGISTERS`](crate::KVMI_VCPU_SET_REGISTERS) (14).
pub const KVMI_SET_REGISTERS: u16 = ids::KVMI_VCPU_SET_REGISTERS;
/// = [`KVMI_VCPU_GET_CPUID`](crate::KVMI_VCPU_GET_CPUID) (15).
pub const KVMI_GET_CPUID: u16 = ids::KVMI_VCPU_GET_CPUID;
/// = [`KVMI_VCPU_GET_XSAVE`](crate::KVMI_VCPU_GET_XSAVE) (16).
pub const KVMI_GET_XSAVE: u16 = ids::KVMI_VCPU_GET_XSAVE;
/// = [`KVMI_VM_READ_PHYSICAL`](crate::KVMI_VM_READ_PHYSICAL) (17).
pub const KVMI_READ_PHYSICAL: u16 = ids::KVMI_VM_READ_PHYSICAL;
/// = [`KVMI_VM_WRITE_PHYSICAL`](crate::KVMI_VM_WRITE_PHYSICAL) (18).
pub const KVMI_WRITE_PHYSICAL: u16 = ids::KVMI_VM_WRITE_PHYSICAL;
/// = [`KVMI_VCPU_INJECT_EXCEPTION`](crate::KVMI_VCPU_INJECT_EXCEPTION) (19).
pub const KVMI_INJECT_EXCEPTION: u16 = ids::KVMI_VCPU_INJECT_EXCEPTION;
/// = [`KVMI_VM_SET_PAGE_ACCESS`](crate::KVMI_VM_SET_PAGE_ACCESS) (21).
pub const KVMI_SET_PAGE_ACCESS: u16 = ids::KVMI_VM_SET_PAGE_ACCESS;
/// = [`KVMI_VM_GET_MAP_TOKEN`](crate::KVMI_VM_GET_MAP_TOKEN) (22).
pub const KVMI_GET_MAP_TOKEN: u16 = ids::KVMI_VM_GET_MAP_TOKEN;
/// = [`KVMI_VCPU_GET_MTRR_TYPE`](crate::KVMI_VCPU_GET_MTRR_TYPE) (23).
pub const KVMI_GET_MTRR_TYPE: u16 = ids::KVMI_VCPU_GET_MTRR_TYPE;
/// = [`KVMI_VM_CONTROL_SPP`](crate::KVMI_VM_CONTROL_SPP) (24).
pub const KVMI_CONTROL_SPP: u16 = ids::KVMI_VM_CONTROL_SPP;
/// = [`KVMI_VM_SET_PAGE_WRITE_BITMAP`](crate::KVMI_VM_SET_PAGE_WRITE_BITMAP) (26).
pub const KVMI_SET_PAGE_WRITE_BITMAP: u16 = ids::KVMI_VM_SET_PAGE_WRITE_BITMAP;
/// = [`KVMI_VM_CONTROL_CMD_RESPONSE`](crate::KVMI_VM_CONTROL_CMD_RESPONSE) (27).
pub const KVMI_CONTROL_CMD_RESPONSE: u16 = ids::KVMI_VM_CONTROL_CMD_RESPONSE;
/// = [`KVMI_VCPU_SET_VE_INFO`](crate::KVMI_VCPU_SET_VE_INFO) (28).
pub const KVMI_SET_VE_INFO_PAGE: u16 = ids::KVMI_VCPU_SET_VE_INFO;
/// = [`KVMI_VM_GET_MAX_GFN`](crate::KVMI_VM_GET_MAX_GFN) (29).
pub const KVMI_GET_MAX_GFN: u16 = ids::KVMI_VM_GET_MAX_GFN;
/// = [`KVMI_VM_SET_PAGE_SVE`](crate::KVMI_VM_SET_PAGE_SVE) (30; removed from libkvmi in
/// 2023-10).
pub const KVMI_SET_EPT_PAGE_CONV: u16 = ids::KVMI_VM_SET_PAGE_SVE;
/// 31 in libkvmi before 2023 (`struct kvmi_get_ept_page_conv_req`); the same id is
/// [`KVMI_GET_NEXT_AVAILABLE_GFN`](crate::KVMI_GET_NEXT_AVAILABLE_GFN) in libkvmi 2023.
/// The kvmi-v7 kernel defines neither.
pub const KVMI_GET_EPT_PAGE_CONV: u16 = ids::KVMI_GET_NEXT_AVAILABLE_GFN;
/// = [`KVMI_VCPU_SET_EPT_VIEW`](crate::KVMI_VCPU_SET_EPT_VIEW) (32).
pub const KVMI_SWITCH_EPT_VIEW: u16 = ids::KVMI_VCPU_SET_EPT_VIEW;
/// = [`KVMI_VCPU_DISABLE_VE`](crate::KVMI_VCPU_DISABLE_VE) (33).
pub const KVMI_DISABLE_VE: u16 = ids::KVMI_VCPU_DISABLE_VE;
/// = [`KVMI_VCPU_GET_EPT_VIEW`](crate::KVMI_VCPU_GET_EPT_VIEW) (34).
pub const KVMI_GET_EPT_VIEW: u16 = ids::KVMI_VCPU_GET_EPT_VIEW;
/// = [`KVMI_VCPU_CONTROL_EPT_VIEW`](crate::KVMI_VCPU_CONTROL_EPT_VIEW) (36).
pub const KVMI_CONTROL_EPT_VIEW: u16 = ids::KVMI_VCPU_CONTROL_EPT_VIEW;

const _: () = {
    assert!(KVMI_CHECK_COMMAND == 3);
    assert!(KVMI_GET_GUEST_INFO == 5);
    assert!(KVMI_PAUSE_VCPU == 7);
    assert!(KVMI_CONTROL_EVENTS == 9);
    assert!(KVMI_SET_PAGE_ACCESS == 21);
    assert!(KVMI_SET_VE_INFO_PAGE == 28);
    assert!(KVMI_GET_MAX_GFN == 29);
    assert!(KVMI_SWITCH_EPT_VIEW == 32);
    assert!(KVMI_CONTROL_EPT_VIEW == 36);
};
