//! The runtime capability report.
//!
//! The traits of this crate say at compile time what a backend *type* can do; the
//! [`CapabilityReport`] says at run time what the *connected* backend and host can do —
//! a KVMi host may lack singlestep (kvmi-v6) or EPT views, a QEMU may lack a shared RAM
//! backend. Every row of LibVMI's KVM-driver checklist is a [`Capability`], so a report
//! answers each row with [`Support::Supported`] or [`Support::Unsupported`] and a reason.

use std::borrow::Cow;
use std::fmt;

macro_rules! capabilities {
    ($( $(#[$m:meta])* $variant:ident => $text:literal ),* $(,)?) => {
        /// One feature: a row of LibVMI's KVM-driver checklist, or one of our extensions.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Capability {
            $( $(#[$m])* #[doc = $text] $variant, )*
        }

        impl Capability {
            /// Every capability, in checklist order.
            pub const ALL: &'static [Capability] = &[ $( Capability::$variant, )* ];

            /// The checklist wording.
            pub fn name(self) -> &'static str {
                match self { $( Capability::$variant => $text, )* }
            }
        }
    };
}

capabilities! {
    ReadPhysicalMemory => "read physical memory",
    WritePhysicalMemory => "write physical memory",
    ReadGprs => "read general purpose registers",
    ReadControlRegisters => "read control registers",
    ReadDebugRegisters => "read debug registers",
    ReadSegmentRegisters => "read segment registers",
    ReadMsrs => "read MSRs",
    ReadDescriptorTables => "read IDTR/GDTR",
    WriteGprs => "write general purpose registers",
    WriteControlRegisters => "write control registers",
    WriteDebugRegisters => "write debug registers",
    WriteSegmentRegisters => "write segment registers",
    WriteMsrs => "write MSRs",
    WriteDescriptorTables => "write IDTR/GDTR",
    MemorySize => "memory size",
    PauseResume => "pause / resume",
    RequestPageFault => "request page fault",
    GuestMemoryMapping => "guest memory mapping",
    TscMode => "TSC info: tsc_mode",
    TscElapsedNsec => "TSC info: elapsed_nsec",
    TscGtscKhz => "TSC info: gtsc_khz",
    TscIncarnation => "TSC info: incarnation",
    Mtrr => "MTRR",
    Xsave => "XSAVE",
    Slat => "SLAT",
    EventSinglestep => "event: singlestep",
    EventRegisterCr => "event: register access reg_event.reg CR",
    EventRegisterMsr => "event: register access reg_event.reg MSR",
    EventRegisterMsrAll => "event: register access reg_event.reg MSR_ALL",
    EventRegisterEqual => "event: register access reg_event.equal",
    EventRegisterAsync => "event: register access reg_event.async",
    EventRegisterOnchange => "event: register access reg_event.onchange",
    EventRegisterAccessN => "event: register access in_access VMI_REGACCESS_N",
    EventRegisterAccessW => "event: register access in_access VMI_REGACCESS_W",
    EventRegisterAccessR => "event: register access in_access VMI_REGACCESS_R",
    EventRegisterAccessRw => "event: register access in_access VMI_REGACCESS_RW",
    EventRegisterOutAccess => "event: register access reg_event.out_access",
    EventRegisterValue => "event: register access reg_event.value",
    EventRegisterPrevious => "event: register access reg_event.previous",
    EventRegisterMsrIndex => "event: register access reg_event.msr",
    EventInterruptInt3 => "event: interrupt intr INT3",
    EventInterruptNext => "event: interrupt intr INT_NEXT",
    EventInterruptInsnLength => "event: interrupt insn_length",
    EventInterruptReinject => "event: interrupt reinject",
    EventInterruptVector => "event: interrupt vector",
    EventInterruptType => "event: interrupt type",
    EventInterruptErrorCode => "event: interrupt error_code",
    EventInterruptCr2 => "event: interrupt cr2",
    EventInterruptGla => "event: interrupt gla",
    EventInterruptGfn => "event: interrupt gfn",
    EventInterruptOffset => "event: interrupt offset",
    EventMemGfn => "event: memory access mem_event.gfn",
    EventMemGeneric => "event: memory access mem_event.generic",
    EventMemInAccess => "event: memory access mem_event.in_access",
    EventMemOutAccess => "event: memory access mem_event.out_access",
    EventMemGptw => "event: memory access mem_event.gptw",
    EventMemGlaValid => "event: memory access mem_event.gla_valid",
    EventMemGla => "event: memory access mem_event.gla",
    EventMemOffset => "event: memory access mem_event.offset",
    EventCpuid => "event: cpuid",
    EventPrivcall => "event: privcall",
    EventDescriptorInstrInfo => "event: descriptor desc_event.instr_info",
    EventDescriptorExitQualification => "event: descriptor desc_event.exit_qualification",
    EventDescriptorExitInfo => "event: descriptor desc_event.exit_info",
    EventDescriptorDescriptor => "event: descriptor desc_event.descriptor",
    EventDescriptorIsWrite => "event: descriptor desc_event.is_write",
    ResponseNone => "response: VMI_EVENT_RESPONSE_NONE",
    ResponseEmulate => "response: VMI_EVENT_RESPONSE_EMULATE",
    ResponseEmulateNowrite => "response: VMI_EVENT_RESPONSE_EMULATE_NOWRITE",
    ResponseSetEmulReadData => "response: VMI_EVENT_RESPONSE_SET_EMUL_READ_DATA",
    ResponseDeny => "response: VMI_EVENT_RESPONSE_DENY",
    ResponseToggleSinglestep => "response: VMI_EVENT_RESPONSE_TOGGLE_SINGLESTEP",
    ResponseSlatId => "response: VMI_EVENT_RESPONSE_SLAT_ID",
    ResponseVmmPagetableId => "response: VMI_EVENT_RESPONSE_VMM_PAGETABLE_ID",
    ResponseSetRegisters => "response: VMI_EVENT_RESPONSE_SET_REGISTERS",
    ResponseSetEmulInsn => "response: VMI_EVENT_RESPONSE_SET_EMUL_INSN",
    ResponseGetNextInterrupt => "response: VMI_EVENT_RESPONSE_GET_NEXT_INTERRUPT",
    // Beyond the checklist.
    /// (Beyond LibVMI's checklist.)
    EventXsetbv => "event: XSETBV",
    /// (Beyond LibVMI's checklist.)
    EventDebugException => "event: debug exception",
    /// (Beyond LibVMI's checklist.)
    EventTrap => "event: trap (injected exception delivered)",
    /// (Beyond LibVMI's checklist.)
    EventVcpuCreate => "event: vCPU creation",
    /// (Beyond LibVMI's checklist.)
    ResponseBreakpointReinject => "response: breakpoint reinjection",
    /// (Beyond LibVMI's checklist.)
    ResponseRegisterValueOverride => "response: CR/MSR write value override",
    /// (Beyond LibVMI's checklist.)
    HostTranslateGva => "host-side GVA translation",
    /// (Beyond LibVMI's checklist.)
    GfnAllocation => "guest frame allocation",
    /// (Beyond LibVMI's checklist.)
    VcpuCount => "vCPU count",
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a capability works on the connected backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Support {
    /// It works.
    Supported,
    /// It does not, and why (protocol limit, host setup, not built yet).
    Unsupported(Cow<'static, str>),
}

impl Support {
    /// Shorthand for [`Support::Unsupported`].
    pub fn no(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Unsupported(reason.into())
    }

    /// Whether this is [`Support::Supported`].
    pub fn is_supported(&self) -> bool {
        matches!(self, Self::Supported)
    }
}

/// Every [`Capability`] with its [`Support`] for one backend instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilityReport {
    backend: Cow<'static, str>,
    rows: Vec<(Capability, Support)>,
}

impl CapabilityReport {
    /// A report in which every capability is unsupported with `default_reason`; the
    /// backend then marks what it does support with [`Self::set`].
    pub fn new(
        backend: impl Into<Cow<'static, str>>,
        default_reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        let reason: Cow<'static, str> = default_reason.into();
        Self {
            backend: backend.into(),
            rows: Capability::ALL
                .iter()
                .map(|c| (*c, Support::Unsupported(reason.clone())))
                .collect(),
        }
    }

    /// Sets the support of one capability.
    pub fn set(&mut self, cap: Capability, support: Support) -> &mut Self {
        if let Some(row) = self.rows.iter_mut().find(|(c, _)| *c == cap) {
            row.1 = support;
        }
        self
    }

    /// Marks several capabilities as supported.
    pub fn supported(&mut self, caps: &[Capability]) -> &mut Self {
        for c in caps {
            self.set(*c, Support::Supported);
        }
        self
    }

    /// Marks several capabilities as unsupported for one reason.
    pub fn unsupported(
        &mut self,
        caps: &[Capability],
        reason: impl Into<Cow<'static, str>>,
    ) -> &mut Self {
        let reason: Cow<'static, str> = reason.into();
        for c in caps {
            self.set(*c, Support::Unsupported(reason.clone()));
        }
        self
    }

    /// The backend's name.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The support of `cap`.
    pub fn get(&self, cap: Capability) -> &Support {
        self.rows
            .iter()
            .find(|(c, _)| *c == cap)
            .map(|(_, s)| s)
            .unwrap_or(&Support::Supported)
    }

    /// Whether `cap` is supported.
    pub fn is_supported(&self, cap: Capability) -> bool {
        self.get(cap).is_supported()
    }

    /// Fails with [`crate::Error::Unsupported`] unless `cap` is supported.
    pub fn require(&self, cap: Capability) -> crate::Result<()> {
        match self.get(cap) {
            Support::Supported => Ok(()),
            Support::Unsupported(reason) => Err(crate::Error::Unsupported {
                feature: cap.name().into(),
                reason: reason.clone(),
            }),
        }
    }

    /// Every row, in checklist order.
    pub fn rows(&self) -> impl Iterator<Item = (Capability, &Support)> {
        self.rows.iter().map(|(c, s)| (*c, s))
    }
}

impl fmt::Display for CapabilityReport {
    /// A checklist in Markdown: `- [x] row` or `- [ ] row — reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Capabilities of {}:", self.backend)?;
        for (c, s) in self.rows() {
            match s {
                Support::Supported => writeln!(f, "- [x] {c}")?,
                Support::Unsupported(r) => writeln!(f, "- [ ] {c} — {r}")?,
            }
        }
        Ok(())
    }
}

/// A backend that can describe itself.
pub trait Backend {
    /// A short name, e.g. "kvmi-v7" or "legacy (QMP + shared RAM)".
    fn name(&self) -> Cow<'_, str>;

    /// What works on this backend and host.
    fn capabilities(&self) -> CapabilityReport;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lists_every_row_once() {
        let mut r = CapabilityReport::new("test", "not built");
        r.supported(&[Capability::ReadPhysicalMemory, Capability::PauseResume]);
        assert_eq!(r.rows().count(), Capability::ALL.len());
        assert!(r.is_supported(Capability::PauseResume));
        assert!(matches!(
            r.require(Capability::EventCpuid),
            Err(crate::Error::Unsupported { .. })
        ));
        let text = r.to_string();
        assert!(text.contains("- [x] pause / resume"));
        assert!(text.contains("- [ ] event: cpuid — not built"));
        let mut names: Vec<_> = Capability::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Capability::ALL.len(), "row names are unique");
    }
}
