//! Architectural MSR indices used by the VMI crates (the ones LibVMI names).
#![allow(missing_docs)] // the names are the architectural MSR names

pub const IA32_TSC: u32 = 0x10;
pub const IA32_PLATFORM_ID: u32 = 0x17;
pub const EBL_CR_POWERON: u32 = 0x2a;
pub const EBC_FREQUENCY_ID: u32 = 0x2c;
pub const IA32_FEATURE_CONTROL: u32 = 0x3a;
pub const AMD_PATCHLEVEL: u32 = 0x8b;
pub const IA32_SYSENTER_CS: u32 = 0x174;
pub const IA32_SYSENTER_ESP: u32 = 0x175;
pub const IA32_SYSENTER_EIP: u32 = 0x176;
pub const IA32_MISC_ENABLE: u32 = 0x1a0;
pub const IA32_PAT: u32 = 0x277;
pub const MTRR_CAP: u32 = 0xfe;
pub const MTRR_DEF_TYPE: u32 = 0x2ff;
pub const MTRR_FIX64K_00000: u32 = 0x250;
pub const MTRR_FIX16K_80000: u32 = 0x258;
pub const MTRR_FIX16K_A0000: u32 = 0x259;
pub const MTRR_FIX4K_C0000: u32 = 0x268;
pub const MTRR_FIX4K_C8000: u32 = 0x269;
pub const MTRR_FIX4K_D0000: u32 = 0x26a;
pub const MTRR_FIX4K_D8000: u32 = 0x26b;
pub const MTRR_FIX4K_E0000: u32 = 0x26c;
pub const MTRR_FIX4K_E8000: u32 = 0x26d;
pub const MTRR_FIX4K_F0000: u32 = 0x26e;
pub const MTRR_FIX4K_F8000: u32 = 0x26f;
pub const MC0_CTL: u32 = 0x400;
pub const MC0_STATUS: u32 = 0x401;
pub const MC0_ADDR: u32 = 0x402;
pub const MC0_MISC: u32 = 0x403;
pub const MC1_CTL: u32 = 0x404;
pub const MC0_CTL2: u32 = 0x280;
pub const P5_MC_ADDR: u32 = 0x0;
pub const P5_MC_TYPE: u32 = 0x1;
pub const EFER: u32 = 0xc000_0080;
pub const STAR: u32 = 0xc000_0081;
pub const LSTAR: u32 = 0xc000_0082;
pub const CSTAR: u32 = 0xc000_0083;
pub const SYSCALL_MASK: u32 = 0xc000_0084;
pub const FS_BASE: u32 = 0xc000_0100;
pub const GS_BASE: u32 = 0xc000_0101;
pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const TSC_AUX: u32 = 0xc000_0103;
pub const AMD64_TSC_RATIO: u32 = 0xc000_0104;
pub const HYPERVISOR: u32 = 0x4000_0000;

/// What LibVMI's `MSR_ALL` expands to (38 MSRs; not `HYPERVISOR`).
pub const LIBVMI_MSR_ALL: [u32; 38] = [
    EFER,
    STAR,
    LSTAR,
    CSTAR,
    SYSCALL_MASK,
    KERNEL_GS_BASE,
    TSC_AUX,
    MTRR_FIX64K_00000,
    MTRR_FIX16K_80000,
    MTRR_FIX16K_A0000,
    MTRR_FIX4K_C0000,
    MTRR_FIX4K_C8000,
    MTRR_FIX4K_D0000,
    MTRR_FIX4K_D8000,
    MTRR_FIX4K_E0000,
    MTRR_FIX4K_E8000,
    MTRR_FIX4K_F0000,
    MTRR_FIX4K_F8000,
    MTRR_DEF_TYPE,
    MC0_CTL,
    MC0_STATUS,
    MC0_ADDR,
    MC0_MISC,
    MC1_CTL,
    MC0_CTL2,
    AMD_PATCHLEVEL,
    AMD64_TSC_RATIO,
    P5_MC_ADDR,
    P5_MC_TYPE,
    IA32_TSC,
    IA32_PLATFORM_ID,
    EBL_CR_POWERON,
    EBC_FREQUENCY_ID,
    IA32_FEATURE_CONTROL,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_MISC_ENABLE,
];

/// The MSRs a default register fetch asks for: what address translation, syscall
/// hooking and OS detection need.
pub const ESSENTIAL: [u32; 10] = [
    EFER,
    STAR,
    LSTAR,
    CSTAR,
    SYSCALL_MASK,
    KERNEL_GS_BASE,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP,
    IA32_PAT,
];
