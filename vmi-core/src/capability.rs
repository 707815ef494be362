//! The runtime capability report.
//!
//! The traits of this crate say at compile time what a backend *type* can do; the
//! [`CapabilityReport`] says at run time what the *connected* backend and host can do —
//! a KVMi host may lack singlestep (kvmi-v6) or EPT views, a QEMU may lack a shared RAM
//! backend. Every row of LibVMI's KVM-driver checklist is a [`Capability`], so a report
//! answers each row with [`Support::Supported`], [`Support::Partial`] (works, with the
//! stated limits) or [`Support::Unsupported`] and a reason.
//!
//! # One table per backend
//!
//! A backend declares its table once; monitors, responses and register writes are
//! checked against it ([`CapabilityReport::check_monitor`],
//! [`CapabilityReport::check_response`], [`CapabilityReport::check_register_write`]),
//! so what the report says and what the backend accepts cannot drift apart. A row the
//! backend did not declare reads as unsupported: the report fails closed.
//!
//! Optional parts of a backend are reached through [`Backend`]'s accessors
//! (`events()`, `breakpoints()`, …), each an `Option<&dyn Trait>`: `None` is the one way
//! a backend says "not here", at compile time for a backend type that never has the
//! part, and at run time for a host that lacks it.

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
    /// (Beyond LibVMI's checklist.)
    ResponseRetry => "response: retry the instruction",
    /// (Beyond LibVMI's checklist.)
    SoftwareBreakpoints => "software breakpoints set by the tool",
    /// (Beyond LibVMI's checklist.)
    PauseVcpu => "pause / resume one vCPU",
}

const _: () = assert!(
    Capability::ALL.len() <= 128,
    "CapabilitySet is a u128 bitset"
);

impl Capability {
    fn bit(self) -> u128 {
        // Fieldless variants are numbered in declaration order, which is `ALL`'s order.
        1u128 << (self as u32)
    }
}

/// A set of [`Capability`] rows, without allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapabilitySet(u128);

impl CapabilitySet {
    /// No row.
    pub const fn new() -> Self {
        Self(0)
    }

    /// These rows.
    pub fn of(caps: &[Capability]) -> Self {
        let mut s = Self::new();
        for c in caps {
            s.insert(*c);
        }
        s
    }

    /// Adds a row.
    pub fn insert(&mut self, cap: Capability) {
        self.0 |= cap.bit();
    }

    /// Adds every row of `other`.
    pub fn union_with(&mut self, other: CapabilitySet) {
        self.0 |= other.0;
    }

    /// Whether `cap` is in the set.
    pub fn contains(self, cap: Capability) -> bool {
        self.0 & cap.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every row of this set is in `other`.
    pub fn is_subset(self, other: CapabilitySet) -> bool {
        self.0 & !other.0 == 0
    }

    /// The rows, in checklist order.
    pub fn iter(self) -> impl Iterator<Item = Capability> {
        Capability::ALL
            .iter()
            .copied()
            .filter(move |c| self.contains(*c))
    }
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
    /// It works within the stated limits (e.g. "only EFER and the FS/GS bases"); the
    /// backend refuses what lies outside them with [`crate::Error::Unsupported`].
    Partial(Cow<'static, str>),
    /// It does not, and why (protocol limit, host setup, not built yet).
    Unsupported(Cow<'static, str>),
}

impl Support {
    /// Shorthand for [`Support::Unsupported`].
    pub fn no(reason: impl Into<Cow<'static, str>>) -> Self {
        Self::Unsupported(reason.into())
    }

    /// Shorthand for [`Support::Partial`].
    pub fn partly(limits: impl Into<Cow<'static, str>>) -> Self {
        Self::Partial(limits.into())
    }

    /// Whether it works, fully or within limits.
    pub fn is_supported(&self) -> bool {
        !matches!(self, Self::Unsupported(_))
    }
}

/// What [`CapabilityReport::get`] answers for a row the backend did not declare.
static UNDECLARED: Support = Support::Unsupported(Cow::Borrowed("not declared by the backend"));

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
        match self.rows.iter_mut().find(|(c, _)| *c == cap) {
            Some(row) => row.1 = support,
            None => self.rows.push((cap, support)),
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

    /// A report in which no row is declared: every row reads as unsupported ("not
    /// declared by the backend") until [`Self::set`] declares it.
    pub fn undeclared(backend: impl Into<Cow<'static, str>>) -> Self {
        Self {
            backend: backend.into(),
            rows: Vec::new(),
        }
    }

    /// The support of `cap`; a row the backend did not declare is unsupported.
    pub fn get(&self, cap: Capability) -> &Support {
        self.rows
            .iter()
            .find(|(c, _)| *c == cap)
            .map(|(_, s)| s)
            .unwrap_or(&UNDECLARED)
    }

    /// Fails with [`crate::Error::Unsupported`] naming the first row of `caps` that is
    /// not supported.
    pub fn require_all(&self, caps: CapabilitySet) -> crate::Result<()> {
        caps.iter().try_for_each(|c| self.require(c))
    }

    /// Whether `monitor` can be enabled.
    pub fn check_monitor(&self, monitor: &crate::Monitor) -> crate::Result<()> {
        self.require_all(monitor.required_capabilities())
    }

    /// Whether `event` can be answered with `response`.
    pub fn check_response(
        &self,
        event: &crate::Event,
        response: &crate::Response,
    ) -> crate::Result<()> {
        self.require_all(response.required_capabilities(&event.kind))
    }

    /// Whether the groups present in `regs` can be written.
    pub fn check_register_write(&self, regs: &crate::RegisterSnapshot) -> crate::Result<()> {
        self.require_all(crate::event::register_write_capabilities(regs))
    }

    /// The rows that work, fully or partly: a set to test requirements against without
    /// a table lookup per row (a backend's event path computes it once per session).
    pub fn supported_set(&self) -> CapabilitySet {
        let mut s = CapabilitySet::new();
        for (c, support) in &self.rows {
            if support.is_supported() {
                s.insert(*c);
            }
        }
        s
    }

    /// Whether `cap` is supported.
    pub fn is_supported(&self, cap: Capability) -> bool {
        self.get(cap).is_supported()
    }

    /// Fails with [`crate::Error::Unsupported`] unless `cap` is supported (fully or
    /// partly).
    pub fn require(&self, cap: Capability) -> crate::Result<()> {
        match self.get(cap) {
            Support::Supported | Support::Partial(_) => Ok(()),
            Support::Unsupported(reason) => Err(crate::Error::Unsupported {
                feature: cap.name().into(),
                reason: reason.clone(),
            }),
        }
    }

    /// Every row, in checklist order (undeclared rows as unsupported).
    pub fn rows(&self) -> impl Iterator<Item = (Capability, &Support)> {
        Capability::ALL.iter().map(|c| (*c, self.get(*c)))
    }
}

impl fmt::Display for CapabilityReport {
    /// A checklist in Markdown: `- [x] row` or `- [ ] row — reason`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "Capabilities of {}:", self.backend)?;
        for (c, s) in self.rows() {
            match s {
                Support::Supported => writeln!(f, "- [x] {c}")?,
                Support::Partial(l) => writeln!(f, "- [x] {c} — only {l}")?,
                Support::Unsupported(r) => writeln!(f, "- [ ] {c} — {r}")?,
            }
        }
        Ok(())
    }
}

/// A backend: what it is, what works, and its parts.
///
/// Memory reading is the one part every backend has. Every other part is reached
/// through an accessor that returns `None` where the backend (type or host) lacks it —
/// the gdbstub crate's `Option<…Ops>` pattern — so a tool holding a `&dyn Backend` asks
/// once and gets either the part or a clear "not here", and
/// [`Backend::capabilities`] explains the details row by row.
///
/// A `dyn Backend` reads memory and registers itself (through
/// [`Backend::physical_memory`] and [`Backend::register_reader`]), so guest virtual
/// memory is one call away through it too:
///
/// ```
/// use std::borrow::Cow;
/// use std::sync::Arc;
/// use vmi_core::prelude::*;
/// use vmi_core::{CapabilityReport, RegisterGroups, RegisterSnapshot, SparseMemory};
///
/// /// Guest RAM in a map, and a vCPU 0 in 4-level paging with CR3 = 0x1000.
/// struct InMemory(SparseMemory);
///
/// impl ReadRegisters for InMemory {
///     fn registers(&self, _: VcpuId, _: RegisterGroups, _: &[u32]) -> Result<RegisterSnapshot> {
///         let mut regs = RegisterSnapshot::default();
///         let control = regs.control.get_or_insert_with(Default::default);
///         (control.cr0, control.cr4, control.cr3) = (0x8000_0011, 0x20, 0x1000);
///         regs.msrs.insert(vmi_core::registers::msr::EFER, 0x500);
///         Ok(regs)
///     }
/// }
///
/// impl Backend for InMemory {
///     fn name(&self) -> Cow<'_, str> {
///         "in-memory".into()
///     }
///     fn capabilities(&self) -> Arc<CapabilityReport> {
///         Arc::new(CapabilityReport::undeclared("in-memory"))
///     }
///     fn physical_memory(&self) -> &dyn PhysicalMemory {
///         &self.0
///     }
///     fn register_reader(&self) -> Option<&dyn ReadRegisters> {
///         Some(self)
///     }
/// }
///
/// let mut ram = SparseMemory::new();
/// ram.write_u64(Gpa(0x1000 + 256 * 8), 0x2003); // PML4 -> PDPT
/// ram.write_u64(Gpa(0x2000), 0x3003); // PDPT -> PD
/// ram.write_u64(Gpa(0x3000), 0x20_0083); // PD -> 2 MiB page at 0x20_0000
/// ram.write(Gpa(0x20_0040), b"init\0");
///
/// let backend: &dyn Backend = &InMemory(ram);
/// let va = Gva(0xffff_8000_0000_0040);
/// assert_eq!(backend.translate_va(VcpuId(0), va)?.gpa, Gpa(0x20_0040));
/// let mut comm = [0u8; 4];
/// backend.read_va(VcpuId(0), va, &mut comm)?;
/// assert_eq!(&comm, b"init");
/// assert_eq!(backend.read_va_cstr(VcpuId(0), va, 16)?, b"init");
/// # Ok::<(), Error>(())
/// ```
pub trait Backend {
    /// A short name, e.g. "kvmi-v7" or "legacy (QMP + shared RAM)".
    fn name(&self) -> Cow<'_, str>;

    /// What works on this backend and host: the table monitors, responses and register
    /// writes are checked against.
    fn capabilities(&self) -> std::sync::Arc<CapabilityReport>;

    /// Guest physical memory.
    fn physical_memory(&self) -> &dyn crate::PhysicalMemory;

    /// Writing guest physical memory.
    fn physical_memory_writer(&self) -> Option<&dyn crate::PhysicalMemoryWrite> {
        None
    }

    /// The guest's RAM layout and size.
    fn memory_layout(&self) -> Option<&dyn crate::MemoryLayout> {
        None
    }

    /// Guest RAM mapped into this process.
    fn memory_mapping(&self) -> Option<&dyn crate::MapPhysical> {
        None
    }

    /// Reading vCPU registers.
    fn register_reader(&self) -> Option<&dyn crate::ReadRegisters> {
        None
    }

    /// Writing vCPU registers.
    fn register_writer(&self) -> Option<&dyn crate::WriteRegisters> {
        None
    }

    /// Pausing the guest and counting vCPUs.
    fn vcpu_control(&self) -> Option<&dyn crate::VcpuControl> {
        None
    }

    /// Trapping events.
    fn events(&self) -> Option<&dyn crate::EventControl> {
        None
    }

    /// Software breakpoints.
    fn breakpoints(&self) -> Option<&dyn crate::Breakpoints> {
        None
    }

    /// Page access permissions (memory events).
    fn page_access(&self) -> Option<&dyn crate::PageAccess> {
        None
    }

    /// SLAT (EPT) views.
    fn slat_views(&self) -> Option<&dyn crate::SlatViews> {
        None
    }

    /// Virtualization exceptions (#VE).
    fn virtualization_exceptions(&self) -> Option<&dyn crate::VirtualizationExceptions> {
        None
    }

    /// Sub-page write protection (SPP).
    fn sub_page_protection(&self) -> Option<&dyn crate::SubPageProtection> {
        None
    }

    /// Guest frame allocation.
    fn gfn_allocation(&self) -> Option<&dyn crate::GfnAllocation> {
        None
    }

    /// TSC information.
    fn tsc(&self) -> Option<&dyn crate::Tsc> {
        None
    }

    /// MTRR memory types.
    fn mtrr(&self) -> Option<&dyn crate::Mtrr> {
        None
    }

    /// XSAVE state and XCRs.
    fn xsave(&self) -> Option<&dyn crate::Xsave> {
        None
    }

    /// Exception and page-fault injection.
    fn fault_injection(&self) -> Option<&dyn crate::FaultInjection> {
        None
    }

    /// Host-side guest-virtual address translation.
    fn host_translation(&self) -> Option<&dyn crate::HostTranslation> {
        None
    }
}

/// A `&dyn Backend` reads memory and registers itself, so [`crate::VirtualMemory`]
/// (implemented for everything that does both) works on it in one call, like on a
/// concrete backend: `backend.read_va(VcpuId(0), gva, &mut buf)`.
///
/// Memory goes to [`Backend::physical_memory`]. Registers go to
/// [`Backend::register_reader`]; a backend without one fails register reads — and so
/// virtual accesses in a vCPU's address space — with [`crate::Error::Unsupported`],
/// while accesses in an explicit [`crate::AddressSpace`] need no registers and work.
macro_rules! backend_reads_memory_and_registers {
    ($($backend:ty),*) => {$(
        impl crate::PhysicalMemory for $backend {
            fn read_physical(&self, gpa: crate::Gpa, buf: &mut [u8]) -> crate::Result<()> {
                self.physical_memory().read_physical(gpa, buf)
            }

            fn read_physical_many(
                &self,
                requests: &mut [(crate::Gpa, &mut [u8])],
            ) -> crate::Result<()> {
                // The backend's own batching, not one request per range.
                self.physical_memory().read_physical_many(requests)
            }

            fn read_frame(
                &self,
                gfn: crate::Gfn,
                buf: &mut [u8; crate::PAGE_SIZE as usize],
            ) -> crate::Result<()> {
                self.physical_memory().read_frame(gfn, buf)
            }
        }

        impl crate::ReadRegisters for $backend {
            fn registers(
                &self,
                vcpu: crate::VcpuId,
                groups: crate::RegisterGroups,
                msrs: &[u32],
            ) -> crate::Result<crate::RegisterSnapshot> {
                self.register_reader()
                    .ok_or_else(|| no_register_reader(self.name()))?
                    .registers(vcpu, groups, msrs)
            }

            fn all_registers(
                &self,
                vcpu: crate::VcpuId,
            ) -> crate::Result<crate::RegisterSnapshot> {
                self.register_reader()
                    .ok_or_else(|| no_register_reader(self.name()))?
                    .all_registers(vcpu)
            }
        }
    )*};
}

backend_reads_memory_and_registers!(
    dyn Backend + '_,
    dyn Backend + Send + '_,
    dyn Backend + Send + Sync + '_
);

fn no_register_reader(backend: Cow<'_, str>) -> crate::Error {
    crate::Error::unsupported(
        "read registers",
        format!("the backend {backend} has no register reader"),
    )
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
        r.set(Capability::ReadMsrs, Support::partly("EFER"));
        assert!(r.is_supported(Capability::ReadMsrs));
        assert!(r.to_string().contains("- [x] read MSRs — only EFER"));
        let mut names: Vec<_> = Capability::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Capability::ALL.len(), "row names are unique");
    }
}

#[cfg(test)]
mod fail_closed {
    use super::*;
    use crate::event::{Monitor, Response};

    #[test]
    fn undeclared_rows_are_unsupported() {
        let r = CapabilityReport::undeclared("t");
        assert!(!r.is_supported(Capability::ReadPhysicalMemory));
        assert_eq!(r.rows().count(), Capability::ALL.len());
        assert!(r.rows().all(|(_, s)| !s.is_supported()));
        assert!(r.check_monitor(&Monitor::Cpuid).is_err());
    }

    #[test]
    fn checks_derive_from_the_table() {
        let mut r = CapabilityReport::undeclared("t");
        r.supported(&[Capability::EventCpuid, Capability::ResponseNone]);
        assert!(r.check_monitor(&Monitor::Cpuid).is_ok());
        assert!(r.check_monitor(&Monitor::Hypercall).is_err());
        let ev = crate::Event {
            vcpu: crate::VcpuId(0),
            view: crate::View::DEFAULT,
            registers: Default::default(),
            kind: crate::EventKind::Cpuid {
                leaf: 0,
                subleaf: 0,
                insn_length: 2,
            },
        };
        assert!(r.check_response(&ev, &Response::continue_()).is_ok());
        let e = r
            .check_response(&ev, &Response::continue_().toggle_singlestep())
            .unwrap_err();
        assert!(e.to_string().contains("SINGLESTEP"), "{e}");
        let regs = crate::RegisterSnapshot {
            gprs: Some(Default::default()),
            ..Default::default()
        };
        assert!(r.check_register_write(&regs).is_err());
        r.supported(&[Capability::WriteGprs, Capability::ResponseSetRegisters]);
        assert!(r
            .check_response(&ev, &Response::continue_().with_registers(regs))
            .is_ok());
    }

    #[test]
    fn sets_hold_every_row() {
        let all = CapabilitySet::of(Capability::ALL);
        assert_eq!(all.iter().count(), Capability::ALL.len());
        assert!(CapabilitySet::new().is_empty());
    }
}
