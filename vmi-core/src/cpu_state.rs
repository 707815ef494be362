//! Other vCPU state: TSC, MTRR, XSAVE/XCR, exception injection and host-side
//! translation.

use crate::addr::{Gpa, Gva, VcpuId};
use crate::error::Result;

/// Time-stamp-counter information (LibVMI `vmi_get_tsc_info`). Fields a backend cannot
/// learn are `None`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TscInfo {
    /// TSC mode (Xen's notion: native, emulated, …).
    pub tsc_mode: Option<u32>,
    /// Nanoseconds elapsed since the guest started.
    pub elapsed_nsec: Option<u64>,
    /// Guest TSC frequency in kHz.
    pub gtsc_khz: Option<u32>,
    /// Number of save/restore/migration incarnations.
    pub incarnation: Option<u32>,
}

/// Reading TSC information.
pub trait Tsc {
    /// TSC information as seen from `vcpu`.
    fn tsc_info(&self, vcpu: VcpuId) -> Result<TscInfo>;
}

/// x86 memory types (MTRR/PAT encodings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemoryType {
    /// Uncacheable (0).
    Uncacheable,
    /// Write combining (1).
    WriteCombining,
    /// Write through (4).
    WriteThrough,
    /// Write protected (5).
    WriteProtected,
    /// Write back (6).
    WriteBack,
    /// Uncacheable minus (7, PAT only).
    UncacheableMinus,
    /// Any other encoding.
    Other(u8),
}

impl MemoryType {
    /// Decodes an MTRR/PAT memory-type byte.
    pub fn from_raw(v: u8) -> Self {
        match v {
            0 => Self::Uncacheable,
            1 => Self::WriteCombining,
            4 => Self::WriteThrough,
            5 => Self::WriteProtected,
            6 => Self::WriteBack,
            7 => Self::UncacheableMinus,
            other => Self::Other(other),
        }
    }
}

/// MTRR-related registers (LibVMI `mtrr_regs_t`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MtrrRegs {
    /// IA32_PAT.
    pub pat: u64,
    /// IA32_MTRRCAP.
    pub mtrr_cap: u64,
    /// IA32_MTRR_DEF_TYPE.
    pub mtrr_def_type: Option<u64>,
}

/// Reading memory types.
pub trait Mtrr {
    /// The MTRR registers of `vcpu`.
    fn mtrr_regs(&self, vcpu: VcpuId) -> Result<MtrrRegs>;

    /// The effective MTRR memory type of `gpa`.
    fn mtrr_type(&self, vcpu: VcpuId, gpa: Gpa) -> Result<MemoryType>;
}

/// An XSAVE area (LibVMI `xsave_area_t` is its first 528 bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XsaveArea {
    /// The raw area as `XSAVE` lays it out (legacy region 512 bytes, header 64 bytes,
    /// then the extended components).
    pub bytes: Vec<u8>,
}

impl XsaveArea {
    /// The legacy FPU/SSE region (512 bytes), if present.
    pub fn fpu_sse(&self) -> Option<&[u8]> {
        self.bytes.get(..512)
    }

    /// XSTATE_BV from the XSAVE header.
    pub fn xstate_bv(&self) -> Option<u64> {
        self.bytes
            .get(512..520)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }

    /// XCOMP_BV from the XSAVE header.
    pub fn xcomp_bv(&self) -> Option<u64> {
        self.bytes
            .get(520..528)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

/// XSAVE state and extended control registers.
pub trait Xsave {
    /// The XSAVE area of `vcpu`.
    fn xsave(&self, vcpu: VcpuId) -> Result<XsaveArea>;

    /// Replaces the XSAVE area of `vcpu`.
    fn set_xsave(&self, vcpu: VcpuId, area: &XsaveArea) -> Result<()>;

    /// Extended control register `index` (0 = XCR0).
    fn xcr(&self, vcpu: VcpuId, index: u32) -> Result<u64>;
}

/// Injecting exceptions into a vCPU.
pub trait FaultInjection {
    /// Injects a page fault for `gva` with `error_code` (LibVMI `vmi_request_page_fault`),
    /// typically to make the guest page in memory the tool wants to read.
    fn inject_page_fault(&self, vcpu: VcpuId, gva: Gva, error_code: u32) -> Result<()>;

    /// Injects exception `vector` with an optional error code; `address` is CR2 for page
    /// faults.
    fn inject_exception(
        &self,
        vcpu: VcpuId,
        vector: u8,
        error_code: Option<u32>,
        address: u64,
    ) -> Result<()>;
}

/// Translation done by the host for the vCPU's current context (KVMi
/// `TRANSLATE_GVA`), as opposed to [`crate::paging`]'s software walk.
pub trait HostTranslation {
    /// Translates `gva` in `vcpu`'s current address space.
    fn translate_gva(&self, vcpu: VcpuId, gva: Gva) -> Result<Gpa>;
}
