//! Other vCPU state: TSC frequency, MTRR types, XSAVE and XCR0, host-side GVA
//! translation, and exception injection (whose `TRAP` event is answered internally
//! unless the tool monitors [`vmi_core::Monitor::Trap`]).

use kvmi_proto::sys;
use vmi_core::cpu_state::{MemoryType, MtrrRegs, TscInfo, XsaveArea};
use vmi_core::registers::msr;
use vmi_core::{
    Error, FaultInjection, Gpa, Gva, HostTranslation, Mtrr, PageFaultReason, ReadRegisters,
    RegisterGroups, Result, Tsc, VcpuId, Xsave,
};

use crate::error::proto_at;
use crate::session::KvmiVm;

impl Tsc for KvmiVm {
    /// `gtsc_khz` from `VCPU_GET_INFO` (`None` when the host has no TSC scaling and
    /// reports 0); the other fields have no KVMi source.
    fn tsc_info(&self, vcpu: VcpuId) -> Result<TscInfo> {
        self.shared.check_vcpu(vcpu)?;
        let hz = self
            .shared
            .conn
            .get_vcpu_info(vcpu.0)
            .map_err(|e| proto_at("KVMI_VCPU_GET_INFO", Some(vcpu), None, e))?;
        Ok(TscInfo {
            gtsc_khz: u32::try_from(hz / 1000).ok().filter(|k| *k != 0),
            ..TscInfo::default()
        })
    }
}

impl Mtrr for KvmiVm {
    fn mtrr_regs(&self, vcpu: VcpuId) -> Result<MtrrRegs> {
        let r = self.registers(
            vcpu,
            RegisterGroups::MSRS,
            &[msr::IA32_PAT, msr::MTRR_CAP, msr::MTRR_DEF_TYPE],
        )?;
        let pat = r.msrs.get(msr::IA32_PAT).ok_or_else(|| {
            Error::unsupported("IA32_PAT", "the host did not return it (GET_REGISTERS)")
        })?;
        let mtrr_cap = r.msrs.get(msr::MTRR_CAP).ok_or_else(|| {
            Error::unsupported("IA32_MTRRCAP", "the host did not return it (GET_REGISTERS)")
        })?;
        Ok(MtrrRegs {
            pat,
            mtrr_cap,
            mtrr_def_type: r.msrs.get(msr::MTRR_DEF_TYPE),
        })
    }

    fn mtrr_type(&self, vcpu: VcpuId, gpa: Gpa) -> Result<MemoryType> {
        self.shared.check_vcpu(vcpu)?;
        let t = self
            .shared
            .conn
            .get_mtrr_type(vcpu.0, gpa.0)
            .map_err(|e| proto_at("KVMI_VCPU_GET_MTRR_TYPE", Some(vcpu), Some(gpa.0), e))?;
        Ok(MemoryType::from_raw(t))
    }
}

impl Xsave for KvmiVm {
    fn xsave(&self, vcpu: VcpuId) -> Result<XsaveArea> {
        self.shared.check_vcpu(vcpu)?;
        let bytes = self
            .shared
            .conn
            .get_xsave(vcpu.0)
            .map_err(|e| proto_at("KVMI_VCPU_GET_XSAVE", Some(vcpu), None, e))?;
        Ok(XsaveArea { bytes })
    }

    fn set_xsave(&self, vcpu: VcpuId, area: &XsaveArea) -> Result<()> {
        self.shared.check_vcpu(vcpu)?;
        if !self.shared.facts.v7() {
            return Err(Error::unsupported(
                "SET_XSAVE",
                "kvmi-v6 has no SET_XSAVE (kvmi-protocol.md §3 id 38, §7)",
            ));
        }
        self.shared
            .conn
            .set_xsave(vcpu.0, &area.bytes)
            .map_err(|e| proto_at("KVMI_VCPU_SET_XSAVE", Some(vcpu), None, e))
    }

    fn xcr(&self, vcpu: VcpuId, index: u32) -> Result<u64> {
        self.shared.check_vcpu(vcpu)?;
        if index != 0 || !self.shared.facts.v7() {
            return Err(Error::unsupported(
                format!("XCR{index}"),
                "KVMi reads XCR0 only, and only on kvmi-v7 (GET_XCR, kvmi-protocol.md §3 id 37)",
            ));
        }
        self.shared
            .conn
            .get_xcr(vcpu.0, 0)
            .map_err(|e| proto_at("KVMI_VCPU_GET_XCR", Some(vcpu), None, e))
    }
}

impl HostTranslation for KvmiVm {
    /// `TRANSLATE_GVA` (kvmi-v7). An unmapped address is a [`Error::PageFault`] whose
    /// root, level and entry are unknown (the host does not say; they read 0).
    fn translate_gva(&self, vcpu: VcpuId, gva: Gva) -> Result<Gpa> {
        self.shared.check_vcpu(vcpu)?;
        self.parking
            .capabilities()
            .require(vmi_core::Capability::HostTranslateGva)?;
        let gpa = self
            .shared
            .conn
            .translate_gva(vcpu.0, gva.0)
            .map_err(|e| proto_at("KVMI_VCPU_TRANSLATE_GVA", Some(vcpu), Some(gva.0), e))?;
        if gpa == sys::KVMI_UNMAPPED_GPA {
            return Err(Error::PageFault {
                gva,
                root: Gpa(0),
                level: 0,
                entry: 0,
                reason: PageFaultReason::NotPresent,
            });
        }
        Ok(Gpa(gpa))
    }
}

impl FaultInjection for KvmiVm {
    fn inject_page_fault(&self, vcpu: VcpuId, gva: Gva, error_code: u32) -> Result<()> {
        self.inject_exception(vcpu, 14, Some(error_code), gva.0)
    }

    /// `INJECT_EXCEPTION`; the `TRAP` event the host sends once the exception is
    /// delivered is answered internally unless the tool monitors it.
    fn inject_exception(
        &self,
        vcpu: VcpuId,
        vector: u8,
        error_code: Option<u32>,
        address: u64,
    ) -> Result<()> {
        self.shared.check_vcpu(vcpu)?;
        if vector >= 32 {
            return Err(Error::InvalidArgument {
                what: "exception vector",
                reason: format!("{vector} is not an exception (0..32)").into(),
            });
        }
        self.shared
            .conn
            .inject_exception(vcpu.0, vector, error_code.unwrap_or(0), address)
            .map_err(|e| proto_at("KVMI_VCPU_INJECT_EXCEPTION", Some(vcpu), Some(address), e))
    }
}
