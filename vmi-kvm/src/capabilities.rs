//! The one capability table of a KVMi session: every row of the KVM-driver checklist,
//! derived from what the connected host says about itself — `GET_VERSION` (ABI and
//! kvmi-v7 features) and the `CHECK_COMMAND` / `CHECK_EVENT` probe (QEMU's allow
//! lists) — and from kvmi-v6's limits on a v6 host. Monitors, responses and register
//! writes are checked against it before anything is sent; rows this backend does not
//! implement yet say so.
//!
//! Reasons cite the protocol reference (`kvmi-protocol.md`, section numbers).

use kvmi_proto::sys;
use kvmi_proto::{Abi, Connection};
use vmi_core::{Capability as C, CapabilityReport, Support};

/// What the table is derived from, captured once at connect time.
#[derive(Debug, Clone)]
pub(crate) struct HostFacts {
    pub(crate) abi: Abi,
    pub(crate) features: Option<sys::Features>,
    pub(crate) commands: std::collections::HashMap<u16, bool>,
    pub(crate) events: std::collections::HashMap<u8, bool>,
}

impl HostFacts {
    pub(crate) fn of(conn: &Connection) -> Self {
        // kvmi-proto's probe covers kvmi-v6's GET_MAX_GFN quirk too.
        let probe = conn.probe();
        let commands = probe.commands;
        Self {
            abi: conn.abi(),
            features: conn.features(),
            commands,
            events: probe.events,
        }
    }

    pub(crate) fn command(&self, id: u16) -> bool {
        self.commands.get(&id).copied().unwrap_or(false)
    }

    pub(crate) fn event(&self, id: u8) -> bool {
        self.events.get(&id).copied().unwrap_or(false)
    }

    pub(crate) fn v7(&self) -> bool {
        self.abi == Abi::V7
    }

    pub(crate) fn ept_views(&self) -> bool {
        self.v7()
            && self.features.is_some_and(|f| f.eptp != 0)
            && self.command(sys::KVMI_VCPU_SET_EPT_VIEW)
            && self.command(sys::KVMI_VCPU_GET_EPT_VIEW)
    }

    /// Guest-visible views: EPT views plus VMFUNC and `CONTROL_EPT_VIEW` allowed.
    pub(crate) fn view_visibility(&self) -> bool {
        self.ept_views()
            && self.features.is_some_and(|f| f.vmfunc != 0)
            && self.command(sys::KVMI_VCPU_CONTROL_EPT_VIEW)
    }

    /// #VE: the feature bit and `SET_VE_INFO`/`DISABLE_VE`/`SET_PAGE_SVE` allowed.
    pub(crate) fn ve(&self) -> bool {
        self.v7()
            && self.features.is_some_and(|f| f.ve != 0)
            && self.command(sys::KVMI_VCPU_SET_VE_INFO)
            && self.command(sys::KVMI_VCPU_DISABLE_VE)
            && self.command(sys::KVMI_VM_SET_PAGE_SVE)
    }

    /// SPP: the feature bit (kvmi-v7 only reports features) and `CONTROL_SPP`/
    /// `SET_PAGE_WRITE_BITMAP` allowed.
    pub(crate) fn spp(&self) -> bool {
        self.v7()
            && self.features.is_some_and(|f| f.spp != 0)
            && self.command(sys::KVMI_VM_CONTROL_SPP)
            && self.command(sys::KVMI_VM_SET_PAGE_WRITE_BITMAP)
    }

    pub(crate) fn singlestep(&self) -> bool {
        self.v7()
            && self.features.is_some_and(|f| f.singlestep != 0)
            && self.command(sys::KVMI_VCPU_CONTROL_SINGLESTEP)
            && self.event(sys::KVMI_EVENT_SINGLESTEP)
    }
}

/// What a row of the table needs from the host.
#[derive(Clone, Copy)]
enum Need {
    /// Nothing: always there.
    Always,
    /// Command allowed (`CHECK_COMMAND`).
    Cmd(u16),
    /// Event allowed (`CHECK_EVENT`).
    Ev(u8),
    /// A derived fact about the host.
    Fact(fn(&HostFacts) -> bool),
    /// Every one of these.
    All(&'static [Need]),
    /// Any one of these.
    Any(&'static [Need]),
}

impl Need {
    fn holds(self, f: &HostFacts) -> bool {
        match self {
            Need::Always => true,
            Need::Cmd(id) => f.command(id),
            Need::Ev(id) => f.event(id),
            Need::Fact(fact) => fact(f),
            Need::All(all) => all.iter().all(|n| n.holds(f)),
            Need::Any(any) => any.iter().any(|n| n.holds(f)),
        }
    }
}

/// How far a capability goes when a case's need holds.
#[derive(Clone, Copy)]
enum Level {
    Full,
    Partly(&'static str),
    /// Worked out from the facts (a text listing what the host has).
    Computed(fn(&HostFacts) -> Support),
}

/// One row: the capabilities it decides, its cases (the first whose need holds
/// decides), and why the capabilities are missing when none does.
struct Row {
    caps: &'static [C],
    cases: &'static [(Need, Level)],
    otherwise: &'static str,
}

const NOT_ALLOWED: &str = "the command or event is disallowed by this QEMU or unknown to the host \
                           (CHECK_COMMAND/CHECK_EVENT, kvmi-protocol.md §3)";

const V7: Need = Need::Fact(HostFacts::v7);
const SINGLESTEP: Need = Need::Fact(HostFacts::singlestep);
const VIEWS: Need = Need::Fact(HostFacts::ept_views);
const CR: Need = Need::All(&[
    Need::Ev(sys::KVMI_EVENT_CR),
    Need::Cmd(sys::KVMI_VCPU_CONTROL_CR),
]);
const MSR: Need = Need::All(&[
    Need::Ev(sys::KVMI_EVENT_MSR),
    Need::Cmd(sys::KVMI_VCPU_CONTROL_MSR),
]);
const CR_OR_MSR: Need = Need::Any(&[CR, MSR]);
const PF: Need = Need::All(&[
    Need::Ev(sys::KVMI_EVENT_PF),
    Need::Cmd(sys::KVMI_VM_SET_PAGE_ACCESS),
]);
const INJECT: Need = Need::Cmd(sys::KVMI_VCPU_INJECT_EXCEPTION);
const SOFT_BP: Need = Need::All(&[
    Need::Ev(sys::KVMI_EVENT_BREAKPOINT),
    Need::Cmd(sys::KVMI_VM_WRITE_PHYSICAL),
    Need::Cmd(sys::KVMI_VM_READ_PHYSICAL),
]);

/// A row supported (fully) exactly when `need` holds.
macro_rules! row {
    ([$($cap:ident),+], $need:expr, $why:expr) => {
        Row { caps: &[$(C::$cap),+], cases: &[($need, Level::Full)], otherwise: $why }
    };
    ([$($cap:ident),+], $need:expr, partly $limits:expr, $why:expr) => {
        Row { caps: &[$(C::$cap),+], cases: &[($need, Level::Partly($limits))], otherwise: $why }
    };
    ([$($cap:ident),+], never $why:expr) => {
        Row { caps: &[$(C::$cap),+], cases: &[], otherwise: $why }
    };
}

/// The capability table: every row of the KVM-driver checklist, in its order.
const TABLE: &[Row] = &[
    // Memory.
    row!([ReadPhysicalMemory], Need::Cmd(sys::KVMI_VM_READ_PHYSICAL), NOT_ALLOWED),
    row!([WritePhysicalMemory], Need::Cmd(sys::KVMI_VM_WRITE_PHYSICAL), NOT_ALLOWED),
    row!([MemorySize], Need::Cmd(sys::KVMI_VM_GET_MAX_GFN), NOT_ALLOWED),
    row!([GuestMemoryMapping], never
        "the KVMi socket protocol maps no guest memory: remote mapping is GET_MAP_TOKEN plus \
         ioctls on the host's /dev/kvmmem device, a host-local kernel interface outside \
         the socket (kvmi-protocol.md §3 id 22, §8.1), and QUERY_PHYSICAL's kernel side was \
         not found (§3 id 39, §10); reads go over the socket, with an opt-in page cache \
         while the guest is paused (KvmiVm::enable_page_cache)"),
    // Registers.
    row!(
        [ReadGprs, ReadControlRegisters, ReadSegmentRegisters, ReadDescriptorTables],
        Need::Cmd(sys::KVMI_VCPU_GET_REGISTERS),
        NOT_ALLOWED
    ),
    row!([ReadMsrs], Need::Cmd(sys::KVMI_VCPU_GET_REGISTERS), partly
        "MSRs the host's KVM can read (up to 482 per GET_REGISTERS, kvmi-protocol.md §3 id 13)",
        NOT_ALLOWED),
    row!([ReadDebugRegisters], never
        "KVMi has no command that reads DR0-DR7 (kvmi-protocol.md §3)"),
    row!([WriteGprs], Need::Cmd(sys::KVMI_VCPU_SET_REGISTERS), NOT_ALLOWED),
    row!(
        [WriteControlRegisters, WriteDebugRegisters, WriteSegmentRegisters, WriteMsrs, WriteDescriptorTables],
        never
        "KVMi writes only kvm_regs (VCPU_SET_REGISTERS, kvmi-protocol.md §3 id 14): \
         no command sets sregs, debug registers or MSRs"
    ),
    // vCPU control.
    row!(
        [PauseResume, PauseVcpu],
        Need::All(&[Need::Cmd(sys::KVMI_VCPU_PAUSE), Need::Ev(sys::KVMI_EVENT_PAUSE_VCPU)]),
        NOT_ALLOWED
    ),
    row!([VcpuCount], Need::Cmd(sys::KVMI_VM_GET_INFO), NOT_ALLOWED),
    row!([RequestPageFault], INJECT, NOT_ALLOWED),
    row!([EventTrap], Need::All(&[INJECT, Need::Ev(sys::KVMI_EVENT_TRAP)]), NOT_ALLOWED),
    // TSC, MTRR, XSAVE, translation.
    row!([TscGtscKhz], Need::Cmd(sys::KVMI_VCPU_GET_INFO), NOT_ALLOWED),
    row!([TscMode, TscElapsedNsec, TscIncarnation], never
        "KVMi reports only the TSC frequency (VCPU_GET_INFO, kvmi-protocol.md §3 id 6); \
         tsc_mode, elapsed_nsec and incarnation are Xen notions with no KVMi command"),
    row!([Mtrr], Need::Cmd(sys::KVMI_VCPU_GET_MTRR_TYPE), NOT_ALLOWED),
    Row {
        caps: &[C::Xsave],
        cases: &[
            (
                Need::All(&[
                    V7,
                    Need::Cmd(sys::KVMI_VCPU_GET_XSAVE),
                    Need::Cmd(sys::KVMI_VCPU_SET_XSAVE),
                    Need::Cmd(sys::KVMI_VCPU_GET_XCR),
                ]),
                Level::Full,
            ),
            (
                Need::All(&[V7, Need::Cmd(sys::KVMI_VCPU_GET_XSAVE)]),
                Level::Partly("reading the XSAVE area (SET_XSAVE/GET_XCR not allowed)"),
            ),
            (
                Need::Cmd(sys::KVMI_VCPU_GET_XSAVE),
                Level::Partly(
                    "reading the XSAVE area; kvmi-v6 has no SET_XSAVE or GET_XCR (kvmi-protocol.md §7)",
                ),
            ),
        ],
        otherwise: NOT_ALLOWED,
    },
    row!([HostTranslateGva], Need::All(&[V7, Need::Cmd(sys::KVMI_VCPU_TRANSLATE_GVA)]),
        "TRANSLATE_GVA is kvmi-v7 only (kvmi-protocol.md §3 id 35, §7) or disallowed"),
    // SLAT.
    Row {
        caps: &[C::Slat],
        cases: &[(Need::Always, Level::Computed(slat))],
        otherwise: "",
    },
    row!(
        [GfnAllocation],
        Need::All(&[V7, Need::Cmd(sys::KVMI_VCPU_ALLOC_GFN), Need::Cmd(sys::KVMI_GET_NEXT_AVAILABLE_GFN)]),
        "ALLOC_GFN/GET_NEXT_AVAILABLE_GFN need the 2023 libkvmi host (kvmi-protocol.md §3 ids 31, 41) \
         or are disallowed"
    ),
    // Events.
    row!(
        [EventRegisterCr, EventRegisterAccessW, EventRegisterValue, EventRegisterPrevious],
        CR,
        NOT_ALLOWED
    ),
    row!([EventRegisterMsr, EventRegisterMsrIndex], MSR, NOT_ALLOWED),
    // Every MSR of KVM's bitmap ranges the host accepts (crate::events).
    row!([EventRegisterMsrAll], MSR, NOT_ALLOWED),
    // The host sends CR/MSR events only when the value changes; unchanged writes a
    // host sends anyway are answered internally (crate::events).
    row!([EventRegisterOnchange], CR_OR_MSR, NOT_ALLOWED),
    // Honoured client-side: KVMi has no value filter; other writes are answered
    // internally (the vCPU still exits for them).
    row!([EventRegisterEqual], CR_OR_MSR, NOT_ALLOWED),
    row!([EventRegisterAsync], CR_OR_MSR, partly
        "honoured client-side (KVMi has no asynchronous events, kvmi-protocol.md §4.3): \
         the host's event is answered with continue on arrival and the tool's reply is \
         ignored; the vCPU still exits to the introspector for that round trip",
        NOT_ALLOWED),
    row!([EventRegisterAccessR, EventRegisterAccessRw], never
        "KVMi intercepts CR and MSR writes only, in every version (kvmi-protocol.md §4.3, §7)"),
    row!([EventRegisterAccessN], never
        "a register monitor that traps nothing is not a vmi-core Monitor; disable it instead"),
    row!([EventRegisterOutAccess], CR_OR_MSR, NOT_ALLOWED),
    row!(
        [EventInterruptInt3, EventInterruptInsnLength, EventInterruptGla, EventInterruptGfn,
         EventInterruptOffset, ResponseBreakpointReinject, EventInterruptReinject],
        Need::Ev(sys::KVMI_EVENT_BREAKPOINT),
        NOT_ALLOWED
    ),
    row!(
        [EventInterruptNext, ResponseGetNextInterrupt, EventInterruptVector, EventInterruptType,
         EventInterruptErrorCode, EventInterruptCr2],
        never
        "KVMi has no event for the next interrupt delivered (kvmi-protocol.md §4.3); \
         only injected exceptions are reported (TRAP)"
    ),
    row!(
        [EventMemGfn, EventMemGeneric, EventMemInAccess, EventMemOutAccess, EventMemGlaValid,
         EventMemGla, EventMemOffset],
        PF,
        NOT_ALLOWED
    ),
    row!([EventMemGptw], never
        "the KVMi PF event does not say whether the fault hit a guest page-table walk (kvmi-protocol.md §4.3 id 6)"),
    row!([EventCpuid], Need::All(&[V7, Need::Ev(sys::KVMI_EVENT_CPUID)]),
        "the CPUID event is kvmi-v7 only (kvmi-protocol.md §4.3 id 13, §7) or disallowed"),
    row!([EventPrivcall], Need::Ev(sys::KVMI_EVENT_HYPERCALL), NOT_ALLOWED),
    row!(
        [EventDescriptorDescriptor, EventDescriptorIsWrite],
        Need::Ev(sys::KVMI_EVENT_DESCRIPTOR),
        NOT_ALLOWED
    ),
    row!(
        [EventDescriptorInstrInfo, EventDescriptorExitQualification, EventDescriptorExitInfo],
        never
        "the KVMi descriptor event carries only the register and the direction \
         (kvmi-protocol.md §4.3 id 8)"
    ),
    row!([EventXsetbv], Need::Ev(sys::KVMI_EVENT_XSETBV), NOT_ALLOWED),
    row!([EventDebugException], never
        "KVMi has no debug-exception event (kvmi-protocol.md §4.3)"),
    row!([EventVcpuCreate], Need::Ev(sys::KVMI_EVENT_CREATE_VCPU), NOT_ALLOWED),
    row!([EventSinglestep], SINGLESTEP,
        "kvmi-v6 has no singlestep command, or the host lacks MTF / disallows it \
         (kvmi-protocol.md §6, §7)"),
    // Responses.
    row!([ResponseNone, ResponseRetry], Need::Always, ""),
    row!([ResponseEmulate], PF, partly
        "memory-access events (PF CONTINUE emulates the access, kvmi-protocol.md §6)",
        NOT_ALLOWED),
    row!([ResponseSetEmulReadData], PF, partly
        "memory-access events, up to 256 bytes at the faulting address (kvmi-protocol.md §6)",
        NOT_ALLOWED),
    row!([ResponseEmulateNowrite, ResponseSetEmulInsn], never
        "the KVMi PF reply can only emulate the access as is or with supplied read data \
         (kvmi-protocol.md §6)"),
    row!([ResponseDeny], CR_OR_MSR, partly
        "CR and MSR writes (answered with the old value, kvmi-protocol.md §4.3)",
        NOT_ALLOWED),
    row!([ResponseRegisterValueOverride], CR_OR_MSR, partly
        "CR and MSR writes (the reply's new_val, kvmi-protocol.md §4.3)",
        NOT_ALLOWED),
    row!([ResponseToggleSinglestep], SINGLESTEP,
        "singlestep needs kvmi-v7 with MTF (kvmi-protocol.md §6, §7)"),
    row!([ResponseSetRegisters], Need::Cmd(sys::KVMI_VCPU_SET_REGISTERS), NOT_ALLOWED),
    row!([ResponseSlatId], VIEWS,
        "EPT views need kvmi-v7 with EPTP switching (kvmi-protocol.md §3 id 32)"),
    row!([ResponseVmmPagetableId], never
        "KVMi has no VMM page-table ids (kvmi-protocol.md §3)"),
    Row {
        caps: &[C::SoftwareBreakpoints],
        cases: &[
            (Need::All(&[SOFT_BP, SINGLESTEP]), Level::Full),
            (
                SOFT_BP,
                Level::Partly(
                    "without singlestep (kvmi-v6, kvmi-protocol.md §7) nothing steps over the INT3: \
                     a hit answered with continue re-executes it, and a breakpoint limited to one \
                     address space is reported in every space (the event's CR3 tells)",
                ),
            ),
        ],
        otherwise: NOT_ALLOWED,
    },
];

/// The SLAT row: what of EPT views, guest-visible views, #VE and SPP this host has.
fn slat(f: &HostFacts) -> Support {
    if f.ept_views() {
        let mut have = String::from(
            "EPT views: create/destroy, switch, query, change gfn, per-view page access",
        );
        let mut lack = Vec::new();
        for (ok, what, why) in [
            (
                f.view_visibility(),
                "guest-visible views",
                "guest-visible views need VMFUNC and CONTROL_EPT_VIEW (kvmi-protocol.md §3 id 36)",
            ),
            (
                f.ve(),
                "#VE",
                "#VE needs features.ve and SET_VE_INFO/DISABLE_VE/SET_PAGE_SVE (§3 ids 28, 30, 33)",
            ),
            (
                f.spp(),
                "SPP write bitmaps",
                "SPP needs features.spp and CONTROL_SPP/SET_PAGE_WRITE_BITMAP (§3 ids 24, 26)",
            ),
        ] {
            if ok {
                have.push_str(", ");
                have.push_str(what);
            } else {
                lack.push(why);
            }
        }
        if lack.is_empty() {
            Support::Supported
        } else {
            Support::partly(format!("{have}; not on this host: {}", lack.join("; ")))
        }
    } else if f.ve() || f.spp() {
        Support::partly(
            "no EPT views (kvmi-protocol.md §3 id 32: EPTP switching or SET_EPT_VIEW \
             missing); #VE and/or SPP on the default view as the host's features say",
        )
    } else {
        Support::no(
            "EPT views need kvmi-v7 with EPTP switching and SET_EPT_VIEW allowed \
             (kvmi-protocol.md §3 id 32, §7); kvmi-v6 reports no features, so #VE and \
             SPP are not used there either (§3 id 2, §7)",
        )
    }
}

/// The table for a host described by `f`.
pub(crate) fn report(f: &HostFacts) -> CapabilityReport {
    let name = if f.v7() { "kvmi-v7" } else { "kvmi-v6" };
    let mut r = CapabilityReport::undeclared(name);
    for row in TABLE {
        let support = match row.cases.iter().find(|(need, _)| need.holds(f)) {
            Some((_, Level::Full)) => Support::Supported,
            Some((_, Level::Partly(limits))) => Support::partly(*limits),
            Some((_, Level::Computed(work_out))) => work_out(f),
            None => Support::no(row.otherwise),
        };
        for &cap in row.caps {
            r.set(cap, support.clone());
        }
    }
    r
}
