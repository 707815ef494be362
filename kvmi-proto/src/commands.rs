//! Typed, safe methods for every kvmi-v7 command (and the v6-only ones): each is
//! [`Connection::call`] of the [`Request`] of the same name, waiting
//! [`Config::request_timeout`](crate::Config::request_timeout). To pipeline or batch
//! them, or to wait with another timeout, build the [`Request`] and send it yourself.

use crate::connection::Connection;
use crate::error::Result;
use crate::request::Request;
use kvmi_sys as sys;
use zerocopy::IntoBytes;

pub use crate::request::{page_access_payload, vcpu_payload, Registers};

impl Connection {
    /// `KVMI_GET_VERSION`: version and (v7) features. `None` features means a v6 reply.
    pub fn get_version(&self) -> Result<(u32, Option<sys::Features>)> {
        self.call(Request::get_version())
    }

    /// `KVMI_VM_CHECK_COMMAND` (uncached; `Err(Kvm)` if not allowed).
    pub fn check_command(&self, id: u16) -> Result<Vec<u8>> {
        self.call(Request::check_command(id)).map(|()| Vec::new())
    }

    /// `KVMI_VM_CHECK_EVENT` (uncached; `Err(Kvm)` if not allowed).
    pub fn check_event(&self, id: u8) -> Result<Vec<u8>> {
        self.call(Request::check_event(id)).map(|()| Vec::new())
    }

    /// `KVMI_VM_GET_INFO`: number of online vCPUs.
    pub fn get_guest_info(&self) -> Result<u32> {
        self.call(Request::get_guest_info())
    }

    /// `KVMI_VCPU_GET_INFO`: TSC frequency in Hz (0 without TSC scaling).
    pub fn get_vcpu_info(&self, vcpu: u16) -> Result<u64> {
        self.call(Request::get_vcpu_info(vcpu))
    }

    /// `KVMI_VCPU_PAUSE` (one PAUSE_VCPU event follows per success).
    pub fn pause_vcpu(&self, vcpu: u16, wait: bool) -> Result<()> {
        self.call(Request::pause_vcpu(vcpu, wait))
    }

    /// `KVMI_VCPU_CONTROL_EVENTS`: enable/disable a vCPU event.
    pub fn control_events(&self, vcpu: u16, event: u8, enable: bool) -> Result<()> {
        self.call(Request::control_events(vcpu, event, enable))
    }

    /// `KVMI_VM_CONTROL_EVENTS`: enable/disable a VM event (UNHOOK, CREATE_VCPU,
    /// CMD_ERROR).
    pub fn control_vm_events(&self, event: u8, enable: bool) -> Result<()> {
        self.call(Request::control_vm_events(event, enable))
    }

    /// `KVMI_VCPU_CONTROL_CR`: intercept writes to CR0/3/4.
    pub fn control_cr(&self, vcpu: u16, cr: u32, enable: bool) -> Result<()> {
        self.call(Request::control_cr(vcpu, cr, enable))
    }

    /// `KVMI_VCPU_CONTROL_MSR`: intercept writes to an MSR.
    pub fn control_msr(&self, vcpu: u16, msr: u32, enable: bool) -> Result<()> {
        self.call(Request::control_msr(vcpu, msr, enable))
    }

    /// `KVMI_VCPU_GET_REGISTERS` with the given MSR indices (≤ 482).
    pub fn get_registers(&self, vcpu: u16, msrs: &[u32]) -> Result<Registers> {
        self.call(Request::get_registers(vcpu, msrs)?)
    }

    /// `KVMI_VCPU_SET_REGISTERS` (only while the vCPU waits for an event reply).
    pub fn set_registers(&self, vcpu: u16, regs: &sys::KvmRegs) -> Result<()> {
        self.call(Request::set_registers(vcpu, regs))
    }

    /// `KVMI_VCPU_GET_CPUID`.
    pub fn get_cpuid(
        &self,
        vcpu: u16,
        function: u32,
        index: u32,
    ) -> Result<sys::VcpuGetCpuidReply> {
        self.call(Request::get_cpuid(vcpu, function, index))
    }

    /// `KVMI_VCPU_GET_XSAVE`: the raw XSAVE area (length as sent, ≤ 8192).
    pub fn get_xsave(&self, vcpu: u16) -> Result<Vec<u8>> {
        self.call(Request::get_xsave(vcpu))
    }

    /// `KVMI_VCPU_SET_XSAVE` (≤ 4096 bytes).
    pub fn set_xsave(&self, vcpu: u16, area: &[u8]) -> Result<()> {
        self.call(Request::set_xsave(vcpu, area)?)
    }

    /// `KVMI_VCPU_GET_XCR` (only XCR0).
    pub fn get_xcr(&self, vcpu: u16, xcr: u8) -> Result<u64> {
        self.call(Request::get_xcr(vcpu, xcr))
    }

    /// `KVMI_VCPU_GET_MTRR_TYPE`.
    pub fn get_mtrr_type(&self, vcpu: u16, gpa: u64) -> Result<u8> {
        self.call(Request::get_mtrr_type(vcpu, gpa))
    }

    /// `KVMI_VCPU_INJECT_EXCEPTION` (a TRAP event follows on v7). On v6 `has_error` is
    /// set when `error_code` is non-zero.
    pub fn inject_exception(
        &self,
        vcpu: u16,
        vector: u8,
        error_code: u32,
        address: u64,
    ) -> Result<()> {
        self.call(Request::inject_exception(
            self.abi(),
            vcpu,
            vector,
            error_code,
            address,
        ))
    }

    /// `KVMI_VM_READ_PHYSICAL`: `size` in 1..=4096, not crossing a page.
    pub fn read_physical(&self, gpa: u64, size: usize) -> Result<Vec<u8>> {
        self.call(Request::read_physical(gpa, size)?)
    }

    /// `KVMI_VM_WRITE_PHYSICAL`: 1..=4096 bytes, not crossing a page.
    pub fn write_physical(&self, gpa: u64, data: &[u8]) -> Result<()> {
        self.call(Request::write_physical(gpa, data)?)
    }

    /// `KVMI_VM_SET_PAGE_ACCESS`: `(gpa, allowed-access bits)` pairs in `view`.
    pub fn set_page_access(&self, view: u16, entries: &[(u64, u8)]) -> Result<()> {
        self.call(Request::set_page_access(view, entries)?)
    }

    /// `KVMI_GET_PAGE_ACCESS` (kvmi-v6 only): access bits of each GPA.
    pub fn get_page_access(&self, view: u16, gpas: &[u64]) -> Result<Vec<u8>> {
        self.call(Request::get_page_access(view, gpas)?)
    }

    /// `KVMI_VM_SET_PAGE_WRITE_BITMAP`: `(gpa, bitmap)` pairs (SPP).
    pub fn set_page_write_bitmap(&self, entries: &[(u64, u32)]) -> Result<()> {
        self.call(Request::set_page_write_bitmap(entries)?)
    }

    /// `KVMI_VM_GET_MAP_TOKEN`.
    pub fn get_map_token(&self) -> Result<sys::MapMemToken> {
        self.call(Request::get_map_token())
    }

    /// `KVMI_VM_GET_MAX_GFN`.
    pub fn get_max_gfn(&self) -> Result<u64> {
        self.call(Request::get_max_gfn())
    }

    /// `KVMI_VM_CONTROL_SPP` (enable only).
    pub fn control_spp(&self, enable: bool) -> Result<()> {
        self.call(Request::control_spp(enable))
    }

    /// `KVMI_VM_CONTROL_CMD_RESPONSE` sent on its own (normally used through
    /// [`Batch`](crate::Batch)). With `enable = false, now = true` no reply comes back,
    /// so this only waits when enabling.
    pub fn control_cmd_response(&self, enable: bool, now: bool, flags: u8) -> Result<()> {
        let body = sys::VmControlCmdResponse {
            enable: u8::from(enable),
            now: u8::from(now),
            flags,
            ..Default::default()
        };
        let p = self.send_request(sys::KVMI_VM_CONTROL_CMD_RESPONSE, body.as_bytes())?;
        if !enable && now {
            return Ok(());
        }
        p.wait(self.config.request_timeout).map(drop)
    }

    /// `KVMI_VCPU_SET_VE_INFO`.
    pub fn set_ve_info(&self, vcpu: u16, gpa: u64, trigger_vmexit: bool) -> Result<()> {
        self.call(Request::set_ve_info(vcpu, gpa, trigger_vmexit))
    }

    /// `KVMI_VCPU_DISABLE_VE`.
    pub fn disable_ve(&self, vcpu: u16) -> Result<()> {
        self.call(Request::disable_ve(vcpu))
    }

    /// `KVMI_VM_SET_PAGE_SVE`.
    pub fn set_page_sve(&self, view: u16, gpa: u64, suppress: bool) -> Result<()> {
        self.call(Request::set_page_sve(view, gpa, suppress))
    }

    /// `KVMI_GET_NEXT_AVAILABLE_GFN` (libkvmi 2023).
    pub fn get_next_available_gfn(&self) -> Result<u64> {
        self.call(Request::get_next_available_gfn())
    }

    /// `KVMI_VCPU_GET_EPT_VIEW`.
    pub fn get_ept_view(&self, vcpu: u16) -> Result<u16> {
        self.call(Request::get_ept_view(vcpu))
    }

    /// `KVMI_VCPU_SET_EPT_VIEW` (switch view).
    pub fn set_ept_view(&self, vcpu: u16, view: u16) -> Result<()> {
        self.call(Request::set_ept_view(vcpu, view))
    }

    /// `KVMI_VCPU_CONTROL_EPT_VIEW`.
    pub fn control_ept_view(&self, vcpu: u16, view: u16, visible: bool) -> Result<()> {
        self.call(Request::control_ept_view(vcpu, view, visible))
    }

    /// `KVMI_CREATE_EPT_VIEW` (libkvmi 2023).
    pub fn create_ept_view(&self) -> Result<u16> {
        self.call(Request::create_ept_view())
    }

    /// `KVMI_DESTROY_EPT_VIEW` (libkvmi 2023).
    pub fn destroy_ept_view(&self, view: u16) -> Result<()> {
        self.call(Request::destroy_ept_view(view))
    }

    /// `KVMI_VCPU_TRANSLATE_GVA`: `KVMI_UNMAPPED_GPA` if unmapped.
    pub fn translate_gva(&self, vcpu: u16, gva: u64) -> Result<u64> {
        self.call(Request::translate_gva(vcpu, gva))
    }

    /// `KVMI_VCPU_CHANGE_GFN`, 2023 layout (with view).
    pub fn change_gfn(&self, vcpu: u16, view: u16, old_gfn: u64, new_gfn: u64) -> Result<()> {
        self.call(Request::change_gfn(vcpu, view, old_gfn, new_gfn))
    }

    /// `KVMI_VCPU_CHANGE_GFN`, 2020 kvmi-v7 kernel layout (no view).
    pub fn change_gfn_2020(&self, vcpu: u16, old_gfn: u64, new_gfn: u64) -> Result<()> {
        self.call(Request::change_gfn_2020(vcpu, old_gfn, new_gfn))
    }

    /// `KVMI_VCPU_ALLOC_GFN` (libkvmi uses vCPU 0).
    pub fn alloc_gfn(&self, vcpu: u16, gfn: u64) -> Result<()> {
        self.call(Request::alloc_gfn(vcpu, gfn))
    }

    /// `KVMI_VCPU_FREE_GFN`.
    pub fn free_gfn(&self, vcpu: u16, gfn: u64) -> Result<()> {
        self.call(Request::free_gfn(vcpu, gfn))
    }

    /// `KVMI_QUERY_PHYSICAL` (libkvmi 2023): memory slot holding `gfn`.
    pub fn query_physical(&self, gfn: u64) -> Result<sys::QueryPhysicalReply> {
        self.call(Request::query_physical(gfn))
    }

    /// `KVMI_VCPU_CONTROL_SINGLESTEP`.
    pub fn control_singlestep(&self, vcpu: u16, enable: bool) -> Result<()> {
        self.call(Request::control_singlestep(vcpu, enable))
    }
}
