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

pub mod msr;
mod msrs;
mod register;
#[cfg(test)]
mod tests;

pub use msrs::Msrs;
pub use register::{Register, SegmentField, SegmentRegister};

/// A register snapshot of one vCPU. Every group is optional: `None` means "not fetched
/// or not available", never zero.
///
/// EFER is held once, as MSR `IA32_EFER` in [`RegisterSnapshot::msrs`]
/// ([`RegisterGroups::EFER`] asks for it; [`RegisterSnapshot::efer`] reads it).
#[derive(Debug, Default, PartialEq, Eq)]
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

impl Clone for RegisterSnapshot {
    fn clone(&self) -> Self {
        let mut s = RegisterSnapshot::default();
        s.clone_from(self);
        s
    }

    /// Field by field, the MSRs only as far as held: the parked-vCPU model clones an
    /// event's snapshot into the vCPU's cache on every event.
    fn clone_from(&mut self, source: &Self) {
        self.gprs = source.gprs;
        self.control = source.control;
        self.debug = source.debug;
        self.segments = source.segments;
        self.gdtr = source.gdtr;
        self.idtr = source.idtr;
        self.xcr0 = source.xcr0;
        self.msrs.clone_from(&source.msrs);
    }
}

impl RegisterSnapshot {
    /// An empty snapshot (what `Default` gives, usable in a `const` or `static`).
    pub const fn new() -> Self {
        Self {
            gprs: None,
            control: None,
            debug: None,
            segments: None,
            gdtr: None,
            idtr: None,
            xcr0: None,
            msrs: Msrs::new(),
        }
    }

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

    /// Copies every group present in `other` over this snapshot (MSRs are merged).
    pub fn merge(&mut self, other: &RegisterSnapshot) {
        macro_rules! take {
            ($($f:ident),*) => { $( if other.$f.is_some() { self.$f = other.$f; } )* };
        }
        take!(gprs, control, debug, segments, gdtr, idtr, xcr0);
        if self.msrs.is_empty() {
            // The common case (an event's snapshot into an empty cache): one copy.
            self.msrs.clone_from(&other.msrs);
        } else {
            self.msrs.extend(other.msrs.iter());
        }
    }

    /// The part of this snapshot that differs from `base`: each group present here
    /// and absent from `base` or unequal to it, and each MSR whose value differs. A
    /// response carrying an edited copy of an event's registers writes only this.
    pub fn changes_from(&self, base: &RegisterSnapshot) -> RegisterSnapshot {
        macro_rules! changed {
            ($($f:ident),*) => {
                RegisterSnapshot {
                    $( $f: self.$f.filter(|v| base.$f.as_ref() != Some(v)), )*
                    msrs: self
                        .msrs
                        .iter()
                        .filter(|&(i, v)| base.msrs.get(i) != Some(v))
                        .collect(),
                }
            };
        }
        changed!(gprs, control, debug, segments, gdtr, idtr, xcr0)
    }

    /// Empties the snapshot in place (what `*self = RegisterSnapshot::default()` does,
    /// without writing the whole inline MSR table).
    pub fn clear(&mut self) {
        self.gprs = None;
        self.control = None;
        self.debug = None;
        self.segments = None;
        self.gdtr = None;
        self.idtr = None;
        self.xcr0 = None;
        self.msrs.clear();
    }

    /// Whether the snapshot holds nothing.
    pub fn is_empty(&self) -> bool {
        self.groups().is_empty() && self.gdtr.is_none() && self.idtr.is_none()
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

    /// One register of `vcpu` (LibVMI's `vmi_get_vcpureg`): reads its group (for an
    /// MSR, that MSR alone) with [`Self::registers`], so a parked vCPU is served from
    /// what the backend already knows. Fails with [`crate::Error::Unsupported`] if the
    /// backend cannot read it.
    fn register(&self, vcpu: crate::VcpuId, reg: Register) -> crate::Result<u64> {
        let one;
        let msrs: &[u32] = match reg {
            Register::Msr(i) => {
                one = [i];
                &one
            }
            _ => &[],
        };
        self.registers(vcpu, reg.group(), msrs)?
            .get(reg)
            .ok_or_else(|| {
                crate::Error::unsupported(
                    format!("reading {reg:?}"),
                    "the backend did not return it (see the capability report)",
                )
            })
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

    fn register(&self, vcpu: crate::VcpuId, reg: Register) -> crate::Result<u64> {
        (**self).register(vcpu, reg)
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

    fn register(&self, vcpu: crate::VcpuId, reg: Register) -> crate::Result<u64> {
        (**self).register(vcpu, reg)
    }
}

/// Writing vCPU registers.
pub trait WriteRegisters {
    /// Writes every group present in `regs` to `vcpu`. Fails with
    /// [`crate::Error::Unsupported`] naming the first group the backend cannot write,
    /// before writing anything.
    fn set_registers(&self, vcpu: crate::VcpuId, regs: &RegisterSnapshot) -> crate::Result<()>;
}
