//! The x86-64 register model.
//!
//! A [`RegisterSnapshot`] holds register *groups*, each optional: a backend fills the
//! groups it was asked for and could read, and everything else stays `None`. An absent
//! value is never reported as zero — LibVMI's KVM driver returned 0 for DR7, PAT or the
//! shadow GS base it had not fetched, which is indistinguishable from a real 0.

use bitflags::bitflags;

/// General-purpose registers, RIP and RFLAGS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // the field names are the architectural register names
pub struct Gprs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
}

/// Control registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct ControlRegs {
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
    pub cr8: u64,
}

/// Debug registers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct DebugRegs {
    pub dr0: u64,
    pub dr1: u64,
    pub dr2: u64,
    pub dr3: u64,
    pub dr6: u64,
    pub dr7: u64,
}

/// Segment descriptor attributes, as KVM's `kvm_segment` spells them out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegmentAttributes {
    /// Segment type (4 bits).
    pub type_: u8,
    /// Descriptor type: 1 = code/data, 0 = system.
    pub s: bool,
    /// Descriptor privilege level (0–3).
    pub dpl: u8,
    /// Present.
    pub present: bool,
    /// Available for system software.
    pub avl: bool,
    /// 64-bit code segment.
    pub l: bool,
    /// Default operation size / big.
    pub db: bool,
    /// Granularity (limit in 4 KiB units).
    pub g: bool,
    /// The segment register holds no usable segment (VMX "unusable").
    pub unusable: bool,
}

impl SegmentAttributes {
    /// Packs into the VMX access-rights layout (type 3:0, S 4, DPL 6:5, P 7, AVL 12,
    /// L 13, D/B 14, G 15, unusable 16), which is also LibVMI's `*_ARBYTES`.
    pub fn to_vmx_ar(self) -> u32 {
        u32::from(self.type_ & 0xf)
            | u32::from(self.s) << 4
            | u32::from(self.dpl & 3) << 5
            | u32::from(self.present) << 7
            | u32::from(self.avl) << 12
            | u32::from(self.l) << 13
            | u32::from(self.db) << 14
            | u32::from(self.g) << 15
            | u32::from(self.unusable) << 16
    }

    /// Unpacks the VMX access-rights layout; undefined bits are ignored.
    pub fn from_vmx_ar(ar: u32) -> Self {
        Self {
            type_: (ar & 0xf) as u8,
            s: ar & (1 << 4) != 0,
            dpl: ((ar >> 5) & 3) as u8,
            present: ar & (1 << 7) != 0,
            avl: ar & (1 << 12) != 0,
            l: ar & (1 << 13) != 0,
            db: ar & (1 << 14) != 0,
            g: ar & (1 << 15) != 0,
            unusable: ar & (1 << 16) != 0,
        }
    }

    /// Unpacks the attribute bits of a descriptor as QEMU's `info registers` prints them
    /// (the descriptor's high dword: type 11:8, S 12, DPL 14:13, P 15, AVL 20, L 21,
    /// D/B 22, G 23).
    pub fn from_descriptor_flags(flags: u32) -> Self {
        Self::from_vmx_ar(flags >> 8 & 0xf0ff)
    }
}

/// A segment register (visible selector plus hidden descriptor cache).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit in bytes (already scaled by granularity).
    pub limit: u32,
    /// Attributes.
    pub attributes: SegmentAttributes,
}

/// The six segment registers plus LDTR and TR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Segments {
    pub cs: Segment,
    pub ds: Segment,
    pub es: Segment,
    pub fs: Segment,
    pub gs: Segment,
    pub ss: Segment,
    pub ldtr: Segment,
    pub tr: Segment,
}

/// GDTR or IDTR.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DescriptorTable {
    /// Linear base address.
    pub base: u64,
    /// Limit in bytes.
    pub limit: u16,
}

bitflags! {
    /// Register groups: what to fetch, and what a snapshot holds.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct RegisterGroups: u32 {
        /// [`Gprs`].
        const GPRS = 1 << 0;
        /// [`ControlRegs`].
        const CONTROL = 1 << 1;
        /// [`DebugRegs`].
        const DEBUG = 1 << 2;
        /// [`Segments`].
        const SEGMENTS = 1 << 3;
        /// GDTR and IDTR.
        const DESCRIPTOR_TABLES = 1 << 4;
        /// EFER.
        const EFER = 1 << 5;
        /// XCR0.
        const XCR0 = 1 << 6;
        /// Model-specific registers (those listed in the request).
        const MSRS = 1 << 7;
    }
}

/// Architectural MSR indices used by the VMI crates (the ones LibVMI names).
#[allow(missing_docs)]
pub mod msr {
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
}

/// MSR values by index, stored inline: a snapshot of the MSRs an event carries (KVMi
/// sends about ten) needs no heap allocation. More than [`Msrs::INLINE`] entries spill to
/// the heap. Entries are kept sorted by index, so equal sets compare equal.
#[derive(Clone)]
pub struct Msrs {
    storage: MsrStorage,
}

// The inline variant is large on purpose: it is what spares an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum MsrStorage {
    Inline {
        len: u8,
        entries: [(u32, u64); Msrs::INLINE],
    },
    Heap(Vec<(u32, u64)>),
}

impl Msrs {
    /// How many MSRs fit without allocating.
    pub const INLINE: usize = 16;

    /// No MSRs.
    pub const fn new() -> Self {
        Self {
            storage: MsrStorage::Inline {
                len: 0,
                entries: [(0, 0); Self::INLINE],
            },
        }
    }

    fn as_slice(&self) -> &[(u32, u64)] {
        match &self.storage {
            MsrStorage::Inline { len, entries } => &entries[..usize::from(*len)],
            MsrStorage::Heap(v) => v,
        }
    }

    /// The value of MSR `index`, if held.
    pub fn get(&self, index: u32) -> Option<u64> {
        let s = self.as_slice();
        s.binary_search_by_key(&index, |e| e.0).ok().map(|i| s[i].1)
    }

    /// Whether MSR `index` is held.
    pub fn contains(&self, index: u32) -> bool {
        self.get(index).is_some()
    }

    /// Sets MSR `index`, returning the previous value.
    pub fn insert(&mut self, index: u32, value: u64) -> Option<u64> {
        let pos = self.as_slice().binary_search_by_key(&index, |e| e.0);
        match (&mut self.storage, pos) {
            (MsrStorage::Inline { entries, .. }, Ok(i)) => {
                Some(std::mem::replace(&mut entries[i].1, value))
            }
            (MsrStorage::Heap(v), Ok(i)) => Some(std::mem::replace(&mut v[i].1, value)),
            (MsrStorage::Inline { len, entries }, Err(i)) => {
                let n = usize::from(*len);
                if n < Self::INLINE {
                    entries.copy_within(i..n, i + 1);
                    entries[i] = (index, value);
                    *len += 1;
                } else {
                    let mut v = Vec::with_capacity(Self::INLINE * 2);
                    v.extend_from_slice(&entries[..n]);
                    v.insert(i, (index, value));
                    self.storage = MsrStorage::Heap(v);
                }
                None
            }
            (MsrStorage::Heap(v), Err(i)) => {
                v.insert(i, (index, value));
                None
            }
        }
    }

    /// Removes MSR `index`, returning its value.
    pub fn remove(&mut self, index: u32) -> Option<u64> {
        let i = self.as_slice().binary_search_by_key(&index, |e| e.0).ok()?;
        match &mut self.storage {
            MsrStorage::Inline { len, entries } => {
                let n = usize::from(*len);
                let value = entries[i].1;
                entries.copy_within(i + 1..n, i);
                *len -= 1;
                Some(value)
            }
            MsrStorage::Heap(v) => Some(v.remove(i).1),
        }
    }

    /// Number of MSRs held.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether no MSR is held.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// `(index, value)` pairs in ascending index order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.as_slice().iter().copied()
    }

    /// The indices held, ascending.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.as_slice().iter().map(|e| e.0)
    }
}

impl Default for Msrs {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Msrs {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Msrs {}

impl std::fmt::Debug for Msrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(i, v)| (format!("{i:#x}"), format!("{v:#x}"))),
            )
            .finish()
    }
}

impl Extend<(u32, u64)> for Msrs {
    fn extend<I: IntoIterator<Item = (u32, u64)>>(&mut self, iter: I) {
        for (i, v) in iter {
            self.insert(i, v);
        }
    }
}

impl FromIterator<(u32, u64)> for Msrs {
    fn from_iter<I: IntoIterator<Item = (u32, u64)>>(iter: I) -> Self {
        let mut m = Msrs::new();
        m.extend(iter);
        m
    }
}

/// A register snapshot of one vCPU. Every group is optional: `None` means "not fetched
/// or not available", never zero.
///
/// EFER is held once, as MSR `IA32_EFER` in [`RegisterSnapshot::msrs`]
/// ([`RegisterGroups::EFER`] asks for it; [`RegisterSnapshot::efer`] reads it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterSnapshot {
    /// General-purpose registers, RIP, RFLAGS.
    pub gprs: Option<Gprs>,
    /// CR0, CR2, CR3, CR4, CR8.
    pub control: Option<ControlRegs>,
    /// DR0–DR3, DR6, DR7.
    pub debug: Option<DebugRegs>,
    /// CS, DS, ES, FS, GS, SS, LDTR, TR.
    pub segments: Option<Segments>,
    /// GDTR.
    pub gdtr: Option<DescriptorTable>,
    /// IDTR.
    pub idtr: Option<DescriptorTable>,
    /// XCR0.
    pub xcr0: Option<u64>,
    /// MSRs by index (only those read), EFER included.
    pub msrs: Msrs,
}

/// One register, for reading or writing a single value out of a snapshot (LibVMI's
/// `reg_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Register {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rbp,
    Rsp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
    Rflags,
    Cr0,
    Cr2,
    Cr3,
    Cr4,
    Cr8,
    Dr0,
    Dr1,
    Dr2,
    Dr3,
    Dr6,
    Dr7,
    Xcr0,
    Efer,
    /// Selector, base, limit or attributes of a segment register.
    Segment(SegmentRegister, SegmentField),
    GdtrBase,
    GdtrLimit,
    IdtrBase,
    IdtrLimit,
    /// A model-specific register by index.
    Msr(u32),
}

/// Which segment register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum SegmentRegister {
    Cs,
    Ds,
    Es,
    Fs,
    Gs,
    Ss,
    Ldtr,
    Tr,
}

/// Which part of a segment register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentField {
    /// The selector.
    Selector,
    /// The base.
    Base,
    /// The limit.
    Limit,
    /// The attributes in VMX access-rights layout ([`SegmentAttributes::to_vmx_ar`]).
    Attributes,
}

impl Register {
    /// The group a register belongs to.
    pub fn group(self) -> RegisterGroups {
        use Register::*;
        match self {
            Rax | Rbx | Rcx | Rdx | Rsi | Rdi | Rbp | Rsp | R8 | R9 | R10 | R11 | R12 | R13
            | R14 | R15 | Rip | Rflags => RegisterGroups::GPRS,
            Cr0 | Cr2 | Cr3 | Cr4 | Cr8 => RegisterGroups::CONTROL,
            Dr0 | Dr1 | Dr2 | Dr3 | Dr6 | Dr7 => RegisterGroups::DEBUG,
            Xcr0 => RegisterGroups::XCR0,
            Efer => RegisterGroups::EFER,
            Segment(..) => RegisterGroups::SEGMENTS,
            GdtrBase | GdtrLimit | IdtrBase | IdtrLimit => RegisterGroups::DESCRIPTOR_TABLES,
            Msr(_) => RegisterGroups::MSRS,
        }
    }
}

impl Segments {
    /// One segment register.
    pub fn get(&self, r: SegmentRegister) -> &Segment {
        match r {
            SegmentRegister::Cs => &self.cs,
            SegmentRegister::Ds => &self.ds,
            SegmentRegister::Es => &self.es,
            SegmentRegister::Fs => &self.fs,
            SegmentRegister::Gs => &self.gs,
            SegmentRegister::Ss => &self.ss,
            SegmentRegister::Ldtr => &self.ldtr,
            SegmentRegister::Tr => &self.tr,
        }
    }

    /// One segment register, mutably.
    pub fn get_mut(&mut self, r: SegmentRegister) -> &mut Segment {
        match r {
            SegmentRegister::Cs => &mut self.cs,
            SegmentRegister::Ds => &mut self.ds,
            SegmentRegister::Es => &mut self.es,
            SegmentRegister::Fs => &mut self.fs,
            SegmentRegister::Gs => &mut self.gs,
            SegmentRegister::Ss => &mut self.ss,
            SegmentRegister::Ldtr => &mut self.ldtr,
            SegmentRegister::Tr => &mut self.tr,
        }
    }
}

macro_rules! gpr_slot {
    ($g:expr, $r:expr) => {{
        use Register::*;
        match $r {
            Rax => Some(&mut $g.rax),
            Rbx => Some(&mut $g.rbx),
            Rcx => Some(&mut $g.rcx),
            Rdx => Some(&mut $g.rdx),
            Rsi => Some(&mut $g.rsi),
            Rdi => Some(&mut $g.rdi),
            Rbp => Some(&mut $g.rbp),
            Rsp => Some(&mut $g.rsp),
            R8 => Some(&mut $g.r8),
            R9 => Some(&mut $g.r9),
            R10 => Some(&mut $g.r10),
            R11 => Some(&mut $g.r11),
            R12 => Some(&mut $g.r12),
            R13 => Some(&mut $g.r13),
            R14 => Some(&mut $g.r14),
            R15 => Some(&mut $g.r15),
            Rip => Some(&mut $g.rip),
            Rflags => Some(&mut $g.rflags),
            _ => None,
        }
    }};
}

impl RegisterSnapshot {
    /// The groups this snapshot holds.
    pub fn groups(&self) -> RegisterGroups {
        let mut g = RegisterGroups::empty();
        g.set(RegisterGroups::GPRS, self.gprs.is_some());
        g.set(RegisterGroups::CONTROL, self.control.is_some());
        g.set(RegisterGroups::DEBUG, self.debug.is_some());
        g.set(RegisterGroups::SEGMENTS, self.segments.is_some());
        g.set(
            RegisterGroups::DESCRIPTOR_TABLES,
            self.gdtr.is_some() && self.idtr.is_some(),
        );
        g.set(RegisterGroups::EFER, self.msrs.contains(msr::EFER));
        g.set(RegisterGroups::XCR0, self.xcr0.is_some());
        g.set(
            RegisterGroups::MSRS,
            self.msrs.indices().any(|i| i != msr::EFER),
        );
        g
    }

    /// One register's value, or `None` if the snapshot does not hold it.
    pub fn get(&self, reg: Register) -> Option<u64> {
        use Register::*;
        match reg {
            Cr0 => self.control.map(|c| c.cr0),
            Cr2 => self.control.map(|c| c.cr2),
            Cr3 => self.control.map(|c| c.cr3),
            Cr4 => self.control.map(|c| c.cr4),
            Cr8 => self.control.map(|c| c.cr8),
            Dr0 => self.debug.map(|d| d.dr0),
            Dr1 => self.debug.map(|d| d.dr1),
            Dr2 => self.debug.map(|d| d.dr2),
            Dr3 => self.debug.map(|d| d.dr3),
            Dr6 => self.debug.map(|d| d.dr6),
            Dr7 => self.debug.map(|d| d.dr7),
            Xcr0 => self.xcr0,
            // EFER is both a group of its own and MSR 0xc0000080, held once.
            Efer => self.msrs.get(msr::EFER),
            Msr(i) => self.msrs.get(i),
            GdtrBase => self.gdtr.map(|t| t.base),
            GdtrLimit => self.gdtr.map(|t| u64::from(t.limit)),
            IdtrBase => self.idtr.map(|t| t.base),
            IdtrLimit => self.idtr.map(|t| u64::from(t.limit)),
            Segment(s, f) => self.segments.map(|segs| {
                let seg = segs.get(s);
                match f {
                    SegmentField::Selector => u64::from(seg.selector),
                    SegmentField::Base => seg.base,
                    SegmentField::Limit => u64::from(seg.limit),
                    SegmentField::Attributes => u64::from(seg.attributes.to_vmx_ar()),
                }
            }),
            gpr => {
                let mut g = self.gprs?;
                gpr_slot!(g, gpr).map(|v| *v)
            }
        }
    }

    /// Sets one register. Fails with [`crate::Error::InvalidArgument`] if the group is
    /// absent (setting RAX in a snapshot without GPRs would invent the other 17 values)
    /// or the value does not fit the register.
    pub fn set(&mut self, reg: Register, value: u64) -> crate::Result<()> {
        use Register::*;
        let absent = || crate::Error::InvalidArgument {
            what: "register",
            reason: format!("{reg:?} is not in this snapshot").into(),
        };
        let too_wide = |bits: u32| crate::Error::InvalidArgument {
            what: "register value",
            reason: format!("{value:#x} does not fit the {bits}-bit {reg:?}").into(),
        };
        match reg {
            Cr0 | Cr2 | Cr3 | Cr4 | Cr8 => {
                let c = self.control.as_mut().ok_or_else(absent)?;
                *match reg {
                    Cr0 => &mut c.cr0,
                    Cr2 => &mut c.cr2,
                    Cr3 => &mut c.cr3,
                    Cr4 => &mut c.cr4,
                    _ => &mut c.cr8,
                } = value;
            }
            Dr0 | Dr1 | Dr2 | Dr3 | Dr6 | Dr7 => {
                let d = self.debug.as_mut().ok_or_else(absent)?;
                *match reg {
                    Dr0 => &mut d.dr0,
                    Dr1 => &mut d.dr1,
                    Dr2 => &mut d.dr2,
                    Dr3 => &mut d.dr3,
                    Dr6 => &mut d.dr6,
                    _ => &mut d.dr7,
                } = value;
            }
            Xcr0 => self.xcr0 = Some(value),
            Efer => {
                self.msrs.insert(msr::EFER, value);
            }
            Msr(i) => {
                self.msrs.insert(i, value);
            }
            GdtrBase | IdtrBase => {
                let t = if reg == GdtrBase {
                    &mut self.gdtr
                } else {
                    &mut self.idtr
                };
                t.as_mut().ok_or_else(absent)?.base = value;
            }
            GdtrLimit | IdtrLimit => {
                let limit = u16::try_from(value).map_err(|_| too_wide(16))?;
                let t = if reg == GdtrLimit {
                    &mut self.gdtr
                } else {
                    &mut self.idtr
                };
                t.as_mut().ok_or_else(absent)?.limit = limit;
            }
            Segment(s, f) => {
                let seg = self.segments.as_mut().ok_or_else(absent)?.get_mut(s);
                match f {
                    SegmentField::Selector => {
                        seg.selector = u16::try_from(value).map_err(|_| too_wide(16))?;
                    }
                    SegmentField::Base => seg.base = value,
                    SegmentField::Limit => {
                        seg.limit = u32::try_from(value).map_err(|_| too_wide(32))?;
                    }
                    SegmentField::Attributes => {
                        let ar = u32::try_from(value).map_err(|_| too_wide(32))?;
                        seg.attributes = SegmentAttributes::from_vmx_ar(ar);
                    }
                }
            }
            gpr => {
                let g = self.gprs.as_mut().ok_or_else(absent)?;
                let slot = gpr_slot!(g, gpr).ok_or_else(absent)?;
                *slot = value;
            }
        }
        Ok(())
    }

    /// Copies every group present in `other` over this snapshot (MSRs are merged).
    pub fn merge(&mut self, other: &RegisterSnapshot) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(gprs, control, debug, segments, gdtr, idtr, xcr0);
        self.msrs.extend(other.msrs.iter());
    }

    /// IA32_EFER, if held.
    pub fn efer(&self) -> Option<u64> {
        self.msrs.get(msr::EFER)
    }

    /// Whether this snapshot holds everything `groups` and `msrs` ask for.
    pub fn covers(&self, groups: RegisterGroups, msrs: &[u32]) -> bool {
        let held = self.groups() | (groups & RegisterGroups::MSRS);
        held.contains(groups)
            && (!groups.contains(RegisterGroups::MSRS)
                || msrs.iter().all(|m| self.msrs.contains(*m)))
    }

    /// The part of this snapshot that `groups` (and `msrs`, with
    /// [`RegisterGroups::MSRS`]) select.
    pub fn select(&self, groups: RegisterGroups, msrs: &[u32]) -> RegisterSnapshot {
        let pick = |g: RegisterGroups| groups.contains(g);
        let mut out = RegisterSnapshot {
            gprs: self.gprs.filter(|_| pick(RegisterGroups::GPRS)),
            control: self.control.filter(|_| pick(RegisterGroups::CONTROL)),
            debug: self.debug.filter(|_| pick(RegisterGroups::DEBUG)),
            segments: self.segments.filter(|_| pick(RegisterGroups::SEGMENTS)),
            gdtr: self
                .gdtr
                .filter(|_| pick(RegisterGroups::DESCRIPTOR_TABLES)),
            idtr: self
                .idtr
                .filter(|_| pick(RegisterGroups::DESCRIPTOR_TABLES)),
            xcr0: self.xcr0.filter(|_| pick(RegisterGroups::XCR0)),
            msrs: Msrs::new(),
        };
        if pick(RegisterGroups::EFER) {
            if let Some(e) = self.efer() {
                out.msrs.insert(msr::EFER, e);
            }
        }
        if pick(RegisterGroups::MSRS) {
            for m in msrs {
                if let Some(v) = self.msrs.get(*m) {
                    out.msrs.insert(*m, v);
                }
            }
        }
        out
    }

    /// The paging mode these registers put the vCPU in, if CR0, CR4 and EFER are all
    /// present.
    pub fn paging_inputs(&self) -> Option<(u64, u64, u64)> {
        let c = self.control?;
        let efer = self.get(Register::Efer)?;
        Some((c.cr0, c.cr4, efer))
    }
}

/// Reading vCPU registers.
pub trait ReadRegisters {
    /// Reads the `groups` of `vcpu`, plus the MSRs listed in `msrs` when `groups`
    /// contains [`RegisterGroups::MSRS`]. Groups the backend cannot read are left `None`
    /// in the result rather than failing the call; use [`RegisterSnapshot::groups`] to see
    /// what was filled.
    fn registers(
        &self,
        vcpu: crate::VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> crate::Result<RegisterSnapshot>;

    /// Reads everything the backend can: all groups and [`msr::ESSENTIAL`].
    fn all_registers(&self, vcpu: crate::VcpuId) -> crate::Result<RegisterSnapshot> {
        self.registers(vcpu, RegisterGroups::all(), &msr::ESSENTIAL)
    }
}

impl<T: ReadRegisters + ?Sized> ReadRegisters for &T {
    fn registers(
        &self,
        vcpu: crate::VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> crate::Result<RegisterSnapshot> {
        (**self).registers(vcpu, groups, msrs)
    }
}

impl<T: ReadRegisters + ?Sized> ReadRegisters for std::sync::Arc<T> {
    fn registers(
        &self,
        vcpu: crate::VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> crate::Result<RegisterSnapshot> {
        (**self).registers(vcpu, groups, msrs)
    }
}

/// Writing vCPU registers.
pub trait WriteRegisters {
    /// Writes every group present in `regs` to `vcpu`. Fails with
    /// [`crate::Error::Unsupported`] naming the first group the backend cannot write,
    /// before writing anything.
    fn set_registers(&self, vcpu: crate::VcpuId, regs: &RegisterSnapshot) -> crate::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_not_zero() {
        let s = RegisterSnapshot::default();
        assert_eq!(s.get(Register::Rax), None);
        assert_eq!(s.get(Register::Dr7), None);
        assert_eq!(s.get(Register::Msr(msr::LSTAR)), None);
        assert_eq!(s.groups(), RegisterGroups::empty());
    }

    #[test]
    fn get_and_set_round_trip() {
        let mut s = RegisterSnapshot {
            gprs: Some(Gprs::default()),
            control: Some(ControlRegs::default()),
            segments: Some(Segments::default()),
            gdtr: Some(DescriptorTable::default()),
            idtr: Some(DescriptorTable::default()),
            ..Default::default()
        };
        s.set(Register::R13, 0x1313).unwrap();
        s.set(Register::Cr3, 0x1000).unwrap();
        s.set(Register::Msr(msr::LSTAR), 0xffff_ffff_8100_0000)
            .unwrap();
        s.set(Register::Efer, 0xd01).unwrap();
        s.set(
            Register::Segment(SegmentRegister::Fs, SegmentField::Base),
            0x7fff_0000,
        )
        .unwrap();
        assert_eq!(s.get(Register::R13), Some(0x1313));
        assert_eq!(s.get(Register::Cr3), Some(0x1000));
        assert_eq!(
            s.get(Register::Msr(msr::LSTAR)),
            Some(0xffff_ffff_8100_0000)
        );
        assert_eq!(s.get(Register::Msr(msr::EFER)), Some(0xd01));
        assert_eq!(
            s.get(Register::Segment(SegmentRegister::Fs, SegmentField::Base)),
            Some(0x7fff_0000)
        );
        assert!(
            s.set(Register::Dr7, 0x400).is_err(),
            "debug group is absent"
        );
        assert!(
            s.set(Register::GdtrLimit, 0x1_0000).is_err(),
            "limit is 16 bits"
        );
        assert!(s
            .groups()
            .contains(RegisterGroups::GPRS | RegisterGroups::MSRS));
    }

    #[test]
    fn msrs_stay_inline_sorted_and_spill() {
        let mut m = Msrs::new();
        for i in (0..Msrs::INLINE as u32).rev() {
            assert_eq!(m.insert(i * 3, u64::from(i)), None);
        }
        assert!(matches!(m.storage, MsrStorage::Inline { .. }));
        assert_eq!(m.insert(3, 99), Some(1));
        assert!(m
            .indices()
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0] < w[1]));
        m.insert(1000, 7);
        assert!(matches!(m.storage, MsrStorage::Heap(_)));
        assert_eq!(m.len(), Msrs::INLINE + 1);
        assert_eq!(m.get(1000), Some(7));
        assert_eq!(m.remove(3), Some(99));
        assert_eq!(m.get(3), None);
        let a: Msrs = [(1, 1), (2, 2)].into_iter().collect();
        let b: Msrs = [(2, 2), (1, 1)].into_iter().collect();
        assert_eq!(a, b);
        let mut c = Msrs::new();
        c.insert(9, 9);
        assert_eq!(c.remove(9), Some(9));
        assert!(c.is_empty());
    }

    #[test]
    fn efer_is_held_once() {
        let mut s = RegisterSnapshot::default();
        s.set(Register::Efer, 0xd01).unwrap();
        assert_eq!(s.get(Register::Msr(msr::EFER)), Some(0xd01));
        assert_eq!(s.efer(), Some(0xd01));
        assert_eq!(s.groups(), RegisterGroups::EFER);
        s.set(Register::Msr(msr::LSTAR), 1).unwrap();
        assert!(s.groups().contains(RegisterGroups::MSRS));
        let sel = s.select(RegisterGroups::EFER, &[]);
        assert_eq!(sel.msrs.len(), 1);
        assert!(s.covers(RegisterGroups::EFER | RegisterGroups::MSRS, &[msr::LSTAR]));
        assert!(!s.covers(RegisterGroups::MSRS, &[msr::STAR]));
        assert!(!s.covers(RegisterGroups::GPRS, &[]));
    }

    #[test]
    fn vmx_access_rights_round_trip() {
        // 64-bit kernel code segment: type 0xb, S, P, L, G.
        let ar = 0xa09b;
        let a = SegmentAttributes::from_vmx_ar(ar);
        assert_eq!(a.type_, 0xb);
        assert!(a.s && a.present && a.l && a.g && !a.db);
        assert_eq!(a.to_vmx_ar(), ar);
        // QEMU prints descriptor flags: 0x00af9b00 for the same segment.
        assert_eq!(
            SegmentAttributes::from_descriptor_flags(0x00af_9b00).to_vmx_ar(),
            0xa09b
        );
    }
}
