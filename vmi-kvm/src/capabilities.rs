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

/// Declares `cap` supported when `ok`, else unsupported with `why`.
fn row(r: &mut CapabilityReport, cap: C, ok: bool, why: &'static str) {
    r.set(
        cap,
        if ok {
            Support::Supported
        } else {
            Support::no(why)
        },
    );
}

fn rows(r: &mut CapabilityReport, caps: &[C], ok: bool, why: &'static str) {
    for c in caps {
        row(r, *c, ok, why);
    }
}

const NOT_ALLOWED: &str = "the command or event is disallowed by this QEMU or unknown to the host \
                           (CHECK_COMMAND/CHECK_EVENT, kvmi-protocol.md §3)";

/// The table for a host described by `f`.
pub(crate) fn report(f: &HostFacts) -> CapabilityReport {
    let name = if f.v7() { "kvmi-v7" } else { "kvmi-v6" };
    let mut r = CapabilityReport::undeclared(name);
    let cmd = |id| f.command(id);
    let ev = |id| f.event(id);

    // Memory.
    row(
        &mut r,
        C::ReadPhysicalMemory,
        cmd(sys::KVMI_VM_READ_PHYSICAL),
        NOT_ALLOWED,
    );
    row(
        &mut r,
        C::WritePhysicalMemory,
        cmd(sys::KVMI_VM_WRITE_PHYSICAL),
        NOT_ALLOWED,
    );
    row(
        &mut r,
        C::MemorySize,
        cmd(sys::KVMI_VM_GET_MAX_GFN),
        NOT_ALLOWED,
    );
    r.set(
        C::GuestMemoryMapping,
        Support::no(
            "the KVMi socket protocol maps no guest memory: remote mapping is GET_MAP_TOKEN plus \
             ioctls on the host's /dev/kvmmem device, a host-local kernel interface outside \
             the socket (kvmi-protocol.md §3 id 22, §8.1), and QUERY_PHYSICAL's kernel side was \
             not found (§3 id 39, §10); reads go over the socket, with an opt-in page cache \
             while the guest is paused (KvmiVm::enable_page_cache)",
        ),
    );

    // Registers.
    let get_regs = cmd(sys::KVMI_VCPU_GET_REGISTERS);
    rows(
        &mut r,
        &[
            C::ReadGprs,
            C::ReadControlRegisters,
            C::ReadSegmentRegisters,
            C::ReadDescriptorTables,
        ],
        get_regs,
        NOT_ALLOWED,
    );
    if get_regs {
        r.set(
            C::ReadMsrs,
            Support::partly(
                "MSRs the host's KVM can read (up to 482 per GET_REGISTERS, kvmi-protocol.md §3 id 13)",
            ),
        );
    } else {
        r.set(C::ReadMsrs, Support::no(NOT_ALLOWED));
    }
    r.set(
        C::ReadDebugRegisters,
        Support::no("KVMi has no command that reads DR0-DR7 (kvmi-protocol.md §3)"),
    );
    row(
        &mut r,
        C::WriteGprs,
        cmd(sys::KVMI_VCPU_SET_REGISTERS),
        NOT_ALLOWED,
    );
    let no_write = "KVMi writes only kvm_regs (VCPU_SET_REGISTERS, kvmi-protocol.md §3 id 14): \
                    no command sets sregs, debug registers or MSRs";
    rows(
        &mut r,
        &[
            C::WriteControlRegisters,
            C::WriteDebugRegisters,
            C::WriteSegmentRegisters,
            C::WriteMsrs,
            C::WriteDescriptorTables,
        ],
        false,
        no_write,
    );

    // vCPU control.
    let pause = cmd(sys::KVMI_VCPU_PAUSE) && ev(sys::KVMI_EVENT_PAUSE_VCPU);
    rows(&mut r, &[C::PauseResume, C::PauseVcpu], pause, NOT_ALLOWED);
    row(
        &mut r,
        C::VcpuCount,
        cmd(sys::KVMI_VM_GET_INFO),
        NOT_ALLOWED,
    );
    let inject = cmd(sys::KVMI_VCPU_INJECT_EXCEPTION);
    row(&mut r, C::RequestPageFault, inject, NOT_ALLOWED);
    row(
        &mut r,
        C::EventTrap,
        inject && ev(sys::KVMI_EVENT_TRAP),
        NOT_ALLOWED,
    );

    // TSC, MTRR, XSAVE, translation.
    row(
        &mut r,
        C::TscGtscKhz,
        cmd(sys::KVMI_VCPU_GET_INFO),
        NOT_ALLOWED,
    );
    let no_tsc = "KVMi reports only the TSC frequency (VCPU_GET_INFO, kvmi-protocol.md §3 id 6); \
                  tsc_mode, elapsed_nsec and incarnation are Xen notions with no KVMi command";
    rows(
        &mut r,
        &[C::TscMode, C::TscElapsedNsec, C::TscIncarnation],
        false,
        no_tsc,
    );
    row(
        &mut r,
        C::Mtrr,
        cmd(sys::KVMI_VCPU_GET_MTRR_TYPE),
        NOT_ALLOWED,
    );
    if f.v7() && cmd(sys::KVMI_VCPU_GET_XSAVE) {
        r.set(
            C::Xsave,
            if cmd(sys::KVMI_VCPU_SET_XSAVE) && cmd(sys::KVMI_VCPU_GET_XCR) {
                Support::Supported
            } else {
                Support::partly("reading the XSAVE area (SET_XSAVE/GET_XCR not allowed)")
            },
        );
    } else if cmd(sys::KVMI_VCPU_GET_XSAVE) {
        r.set(
            C::Xsave,
            Support::partly(
                "reading the XSAVE area; kvmi-v6 has no SET_XSAVE or GET_XCR (kvmi-protocol.md §7)",
            ),
        );
    } else {
        r.set(C::Xsave, Support::no(NOT_ALLOWED));
    }
    row(
        &mut r,
        C::HostTranslateGva,
        f.v7() && cmd(sys::KVMI_VCPU_TRANSLATE_GVA),
        "TRANSLATE_GVA is kvmi-v7 only (kvmi-protocol.md §3 id 35, §7) or disallowed",
    );

    // SLAT.
    let views = f.ept_views();
    if views {
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
            r.set(C::Slat, Support::Supported);
        } else {
            r.set(
                C::Slat,
                Support::partly(format!("{have}; not on this host: {}", lack.join("; "))),
            );
        }
    } else if f.ve() || f.spp() {
        r.set(
            C::Slat,
            Support::partly(
                "no EPT views (kvmi-protocol.md §3 id 32: EPTP switching or SET_EPT_VIEW \
                 missing); #VE and/or SPP on the default view as the host's features say",
            ),
        );
    } else {
        r.set(
            C::Slat,
            Support::no(
                "EPT views need kvmi-v7 with EPTP switching and SET_EPT_VIEW allowed \
                 (kvmi-protocol.md §3 id 32, §7); kvmi-v6 reports no features, so #VE and \
                 SPP are not used there either (§3 id 2, §7)",
            ),
        );
    }
    row(
        &mut r,
        C::GfnAllocation,
        f.v7() && cmd(sys::KVMI_VCPU_ALLOC_GFN) && cmd(sys::KVMI_GET_NEXT_AVAILABLE_GFN),
        "ALLOC_GFN/GET_NEXT_AVAILABLE_GFN need the 2023 libkvmi host (kvmi-protocol.md §3 ids 31, 41) \
         or are disallowed",
    );

    // Events.
    let cr = ev(sys::KVMI_EVENT_CR) && cmd(sys::KVMI_VCPU_CONTROL_CR);
    rows(
        &mut r,
        &[
            C::EventRegisterCr,
            C::EventRegisterAccessW,
            C::EventRegisterValue,
            C::EventRegisterPrevious,
        ],
        cr,
        NOT_ALLOWED,
    );
    let msr = ev(sys::KVMI_EVENT_MSR) && cmd(sys::KVMI_VCPU_CONTROL_MSR);
    rows(
        &mut r,
        &[C::EventRegisterMsr, C::EventRegisterMsrIndex],
        msr,
        NOT_ALLOWED,
    );
    if msr {
        // Every MSR of KVM's bitmap ranges the host accepts (crate::events).
        r.set(C::EventRegisterMsrAll, Support::Supported);
    } else {
        r.set(C::EventRegisterMsrAll, Support::no(NOT_ALLOWED));
    }
    r.set(
        C::EventRegisterOnchange,
        if cr || msr {
            // The host sends CR/MSR events only when the value changes; unchanged
            // writes a host sends anyway are answered internally (crate::events).
            Support::Supported
        } else {
            Support::no(NOT_ALLOWED)
        },
    );
    // Honoured client-side: KVMi has no value filter; other writes are answered
    // internally (the vCPU still exits for them).
    row(&mut r, C::EventRegisterEqual, cr || msr, NOT_ALLOWED);
    r.set(
        C::EventRegisterAsync,
        if cr || msr {
            Support::partly(
                "honoured client-side (KVMi has no asynchronous events, kvmi-protocol.md §4.3): \
                 the host's event is answered with continue on arrival and the tool's reply is \
                 ignored; the vCPU still exits to the introspector for that round trip",
            )
        } else {
            Support::no(NOT_ALLOWED)
        },
    );
    let no_read =
        "KVMi intercepts CR and MSR writes only, in every version (kvmi-protocol.md §4.3, §7)";
    rows(
        &mut r,
        &[C::EventRegisterAccessR, C::EventRegisterAccessRw],
        false,
        no_read,
    );
    r.set(
        C::EventRegisterAccessN,
        Support::no(
            "a register monitor that traps nothing is not a vmi-core Monitor; disable it instead",
        ),
    );
    row(&mut r, C::EventRegisterOutAccess, cr || msr, NOT_ALLOWED);

    let bp = ev(sys::KVMI_EVENT_BREAKPOINT);
    rows(
        &mut r,
        &[
            C::EventInterruptInt3,
            C::EventInterruptInsnLength,
            C::EventInterruptGla,
            C::EventInterruptGfn,
            C::EventInterruptOffset,
            C::ResponseBreakpointReinject,
            C::EventInterruptReinject,
        ],
        bp,
        NOT_ALLOWED,
    );
    let no_next = "KVMi has no event for the next interrupt delivered (kvmi-protocol.md §4.3); \
                   only injected exceptions are reported (TRAP)";
    rows(
        &mut r,
        &[
            C::EventInterruptNext,
            C::ResponseGetNextInterrupt,
            C::EventInterruptVector,
            C::EventInterruptType,
            C::EventInterruptErrorCode,
            C::EventInterruptCr2,
        ],
        false,
        no_next,
    );
    let pf = ev(sys::KVMI_EVENT_PF) && cmd(sys::KVMI_VM_SET_PAGE_ACCESS);
    rows(
        &mut r,
        &[
            C::EventMemGfn,
            C::EventMemGeneric,
            C::EventMemInAccess,
            C::EventMemOutAccess,
            C::EventMemGlaValid,
            C::EventMemGla,
            C::EventMemOffset,
        ],
        pf,
        NOT_ALLOWED,
    );
    r.set(
        C::EventMemGptw,
        Support::no("the KVMi PF event does not say whether the fault hit a guest page-table walk (kvmi-protocol.md §4.3 id 6)"),
    );
    row(
        &mut r,
        C::EventCpuid,
        f.v7() && ev(sys::KVMI_EVENT_CPUID),
        "the CPUID event is kvmi-v7 only (kvmi-protocol.md §4.3 id 13, §7) or disallowed",
    );
    row(
        &mut r,
        C::EventPrivcall,
        ev(sys::KVMI_EVENT_HYPERCALL),
        NOT_ALLOWED,
    );
    rows(
        &mut r,
        &[C::EventDescriptorDescriptor, C::EventDescriptorIsWrite],
        ev(sys::KVMI_EVENT_DESCRIPTOR),
        NOT_ALLOWED,
    );
    let no_exit = "the KVMi descriptor event carries only the register and the direction \
                   (kvmi-protocol.md §4.3 id 8)";
    rows(
        &mut r,
        &[
            C::EventDescriptorInstrInfo,
            C::EventDescriptorExitQualification,
            C::EventDescriptorExitInfo,
        ],
        false,
        no_exit,
    );
    row(
        &mut r,
        C::EventXsetbv,
        ev(sys::KVMI_EVENT_XSETBV),
        NOT_ALLOWED,
    );
    r.set(
        C::EventDebugException,
        Support::no("KVMi has no debug-exception event (kvmi-protocol.md §4.3)"),
    );
    row(
        &mut r,
        C::EventVcpuCreate,
        ev(sys::KVMI_EVENT_CREATE_VCPU),
        NOT_ALLOWED,
    );
    row(
        &mut r,
        C::EventSinglestep,
        f.singlestep(),
        "kvmi-v6 has no singlestep command, or the host lacks MTF / disallows it \
         (kvmi-protocol.md §6, §7)",
    );

    // Responses.
    r.set(C::ResponseNone, Support::Supported);
    row(&mut r, C::ResponseRetry, true, "");
    r.set(
        C::ResponseEmulate,
        if pf {
            Support::partly(
                "memory-access events (PF CONTINUE emulates the access, kvmi-protocol.md §6)",
            )
        } else {
            Support::no(NOT_ALLOWED)
        },
    );
    r.set(
        C::ResponseSetEmulReadData,
        if pf {
            Support::partly("memory-access events, up to 256 bytes at the faulting address (kvmi-protocol.md §6)")
        } else {
            Support::no(NOT_ALLOWED)
        },
    );
    let no_emul = "the KVMi PF reply can only emulate the access as is or with supplied read data \
                   (kvmi-protocol.md §6)";
    rows(
        &mut r,
        &[C::ResponseEmulateNowrite, C::ResponseSetEmulInsn],
        false,
        no_emul,
    );
    r.set(
        C::ResponseDeny,
        if cr || msr {
            Support::partly(
                "CR and MSR writes (answered with the old value, kvmi-protocol.md §4.3)",
            )
        } else {
            Support::no(NOT_ALLOWED)
        },
    );
    r.set(
        C::ResponseRegisterValueOverride,
        if cr || msr {
            Support::partly("CR and MSR writes (the reply's new_val, kvmi-protocol.md §4.3)")
        } else {
            Support::no(NOT_ALLOWED)
        },
    );
    row(
        &mut r,
        C::ResponseToggleSinglestep,
        f.singlestep(),
        "singlestep needs kvmi-v7 with MTF (kvmi-protocol.md §6, §7)",
    );
    row(
        &mut r,
        C::ResponseSetRegisters,
        cmd(sys::KVMI_VCPU_SET_REGISTERS),
        NOT_ALLOWED,
    );
    row(
        &mut r,
        C::ResponseSlatId,
        views,
        "EPT views need kvmi-v7 with EPTP switching (kvmi-protocol.md §3 id 32)",
    );
    r.set(
        C::ResponseVmmPagetableId,
        Support::no("KVMi has no VMM page-table ids (kvmi-protocol.md §3)"),
    );
    let soft_bp = bp && cmd(sys::KVMI_VM_WRITE_PHYSICAL) && cmd(sys::KVMI_VM_READ_PHYSICAL);
    if soft_bp && !f.singlestep() {
        r.set(
            C::SoftwareBreakpoints,
            Support::partly(
                "without singlestep (kvmi-v6, kvmi-protocol.md §7) nothing steps over the INT3: \
                 a hit answered with continue re-executes it, and a breakpoint limited to one \
                 address space is reported in every space (the event's CR3 tells)",
            ),
        );
    } else {
        row(&mut r, C::SoftwareBreakpoints, soft_bp, NOT_ALLOWED);
    }
    r
}
