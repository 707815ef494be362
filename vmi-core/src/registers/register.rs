//! One register at a time: [`Register`] names it (LibVMI's `reg_t`), and
//! [`RegisterSnapshot::get`] / [`RegisterSnapshot::set`] read and write it in a snapshot.

use super::{msr, RegisterGroups, RegisterSnapshot, Segment, SegmentAttributes, Segments};

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
}
