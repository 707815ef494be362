//! Typed events (host → tool) and event replies (tool → host).

use crate::codec::{encode_into, Abi};
use crate::error::{ProtoError, Result};
use kvmi_sys as sys;
use zerocopy::{FromBytes, IntoBytes};

/// Action of an event reply (`KVMI_EVENT_ACTION_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Let the guest continue (CR/MSR: write the new value; PF: emulate; breakpoint:
    /// reinject #BP).
    Continue,
    /// Re-enter the guest without finishing the trapped operation.
    Retry,
    /// Kill the guest.
    Crash,
}

impl Action {
    /// Wire value.
    pub fn raw(self) -> u8 {
        match self {
            Action::Continue => sys::KVMI_EVENT_ACTION_CONTINUE,
            Action::Retry => sys::KVMI_EVENT_ACTION_RETRY,
            Action::Crash => sys::KVMI_EVENT_ACTION_CRASH,
        }
    }
}

/// Page-fault event data, with the EPT view taken from wherever the ABI puts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PfInfo {
    /// Faulting linear address (`KVMI_UNMAPPED_GVA` if unknown).
    pub gva: u64,
    /// Faulting guest-physical address.
    pub gpa: u64,
    /// The violated access (`KVMI_PAGE_ACCESS_*` bit).
    pub access: u8,
    /// EPT view (v7: `arch.view`; v6: the PF struct's `view`).
    pub view: u16,
}

/// Trap event data, normalised over the v6 and v7 layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrapInfo {
    /// Vector.
    pub vector: u32,
    /// Interrupt type (v6 only).
    pub type_: Option<u32>,
    /// Error code.
    pub error_code: u32,
    /// CR2.
    pub cr2: u64,
}

/// Event-specific part of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EventKind {
    /// `KVMI_EVENT_UNHOOK` (no reply: clean up and close).
    Unhook,
    /// `KVMI_EVENT_CR`.
    Cr(sys::EventCr),
    /// `KVMI_EVENT_MSR`.
    Msr(sys::EventMsr),
    /// `KVMI_EVENT_XSETBV`.
    Xsetbv,
    /// `KVMI_EVENT_BREAKPOINT`.
    Breakpoint(sys::EventBreakpoint),
    /// `KVMI_EVENT_HYPERCALL`.
    Hypercall,
    /// `KVMI_EVENT_PF`.
    Pf(PfInfo),
    /// `KVMI_EVENT_TRAP`.
    Trap(TrapInfo),
    /// `KVMI_EVENT_DESCRIPTOR`.
    Descriptor(sys::EventDescriptor),
    /// `KVMI_EVENT_CREATE_VCPU`.
    CreateVcpu,
    /// `KVMI_EVENT_PAUSE_VCPU`.
    PauseVcpu,
    /// `KVMI_EVENT_SINGLESTEP` (`failed` is always false on v6, which has no payload).
    Singlestep {
        /// The step failed.
        failed: bool,
    },
    /// `KVMI_EVENT_CMD_ERROR` (no reply).
    CmdError(sys::EventCmdError),
    /// `KVMI_EVENT_CPUID`.
    Cpuid(sys::EventCpuid),
    /// An event id this crate does not know; it is answered like a payload-less event.
    Unknown(u8),
}

/// One event received from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Sequence number (echoed in the reply).
    pub seq: u32,
    /// ABI it was parsed with.
    pub abi: Abi,
    /// The common part in kvmi-v7 layout (for v6 events `arch.view` is 0).
    pub common: sys::Event,
    /// Event-specific data.
    pub kind: EventKind,
}

impl Event {
    /// vCPU index.
    pub fn vcpu(&self) -> u16 {
        self.common.vcpu
    }

    /// Raw event id.
    pub fn id(&self) -> u8 {
        self.common.event
    }

    /// Whether the host waits for a reply (all but UNHOOK and CMD_ERROR).
    pub fn needs_reply(&self) -> bool {
        !sys::KVMI_NO_REPLY_EVENT_IDS.contains(&self.common.event)
    }

    /// A reply with `action` and no extra data (XSETBV, HYPERCALL, TRAP, DESCRIPTOR,
    /// CREATE_VCPU, PAUSE_VCPU, SINGLESTEP, CPUID; CR/MSR/PF replies get zero data).
    pub fn reply(&self, action: Action) -> EventResponse {
        EventResponse {
            seq: self.seq,
            vcpu: self.vcpu(),
            event: self.id(),
            action,
            extra: Vec::new(),
        }
    }

    /// `reply(Action::Continue)`.
    pub fn reply_continue(&self) -> EventResponse {
        self.reply(Action::Continue)
    }

    /// CR event reply: with `Continue`, `new_val` is the value actually written.
    pub fn reply_cr(&self, action: Action, new_val: u64) -> EventResponse {
        let mut r = self.reply(action);
        r.extra = sys::EventCrReply { new_val }.as_bytes().to_vec();
        r
    }

    /// MSR event reply: with `Continue`, `new_val` is the value actually written.
    pub fn reply_msr(&self, action: Action, new_val: u64) -> EventResponse {
        let mut r = self.reply(action);
        r.extra = sys::EventMsrReply { new_val }.as_bytes().to_vec();
        r
    }

    /// Breakpoint reply: `reinject` = CONTINUE (deliver #BP to the guest), else RETRY
    /// (re-enter; the tool moved RIP).
    pub fn reply_breakpoint(&self, reinject: bool) -> EventResponse {
        self.reply(if reinject {
            Action::Continue
        } else {
            Action::Retry
        })
    }

    /// Page-fault reply with context data (see [`PfReply`]).
    pub fn reply_pf(&self, action: Action, pf: &PfReply<'_>) -> Result<EventResponse> {
        if pf.ctx_data.len() > sys::KVMI_CTX_DATA_SIZE {
            return Err(ProtoError::InvalidArgument(format!(
                "PF context data of {} bytes exceeds {}",
                pf.ctx_data.len(),
                sys::KVMI_CTX_DATA_SIZE
            )));
        }
        let mut r = self.reply(action);
        let mut ctx = [0u8; sys::KVMI_CTX_DATA_SIZE];
        ctx[..pf.ctx_data.len()].copy_from_slice(pf.ctx_data);
        r.extra = match self.abi {
            Abi::V6 => sys::v6::EventPfReply {
                ctx_addr: pf.ctx_addr,
                ctx_size: pf.ctx_data.len() as u32,
                singlestep: u8::from(pf.singlestep_v6),
                rep_complete: u8::from(pf.rep_complete),
                padding: 0,
                ctx_data: ctx,
            }
            .as_bytes()
            .to_vec(),
            _ => sys::EventPfReply {
                ctx_addr: pf.ctx_addr,
                ctx_size: pf.ctx_data.len() as u32,
                padding1: 0,
                rep_complete: u8::from(pf.rep_complete),
                padding2: 0,
                ctx_data: ctx,
            }
            .as_bytes()
            .to_vec(),
        };
        Ok(r)
    }
}

/// Extra data of a page-fault reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PfReply<'a> {
    /// Guest linear address the custom read data starts at.
    pub ctx_addr: u64,
    /// Data returned to guest reads of `[ctx_addr, ctx_addr + len)` (≤ 256 bytes).
    pub ctx_data: &'a [u8],
    /// Complete a REP instruction without further PF events.
    pub rep_complete: bool,
    /// kvmi-v6 only: single-step the instruction (with RETRY). Ignored on v7.
    pub singlestep_v6: bool,
}

/// A complete event reply ready to be sent (see [`crate::Connection::reply_event`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventResponse {
    /// Sequence number of the event.
    pub seq: u32,
    /// vCPU of the event.
    pub vcpu: u16,
    /// Event id (informational).
    pub event: u8,
    /// Action.
    pub action: Action,
    /// Event-specific reply data (CR/MSR: 8 bytes, PF: 272 bytes).
    pub extra: Vec<u8>,
}

impl EventResponse {
    /// Appends the wire form (`KVMI_EVENT_REPLY` message) to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Result<()> {
        let vh = sys::VcpuHdr {
            vcpu: self.vcpu,
            ..Default::default()
        };
        let er = sys::EventReply {
            action: self.action.raw(),
            event: self.event,
            ..Default::default()
        };
        encode_into(
            out,
            sys::KVMI_EVENT_REPLY,
            self.seq,
            &[vh.as_bytes(), er.as_bytes(), &self.extra],
        )
    }
}

fn need<T>(what: &'static str, data: &[u8]) -> Result<T>
where
    T: FromBytes,
{
    T::read_from_prefix(data)
        .map(|(t, _)| t)
        .map_err(|_| ProtoError::Truncated {
            what,
            need: core::mem::size_of::<T>(),
            have: data.len(),
        })
}

/// Parses the payload of a `KVMI_EVENT` message (common event + arch part + per-event
/// payload by id) in the layout of `abi`.
///
/// The event-specific data starts at the common struct's `size` field (as libkvmi
/// does); `size` must be at least 544 and within the payload.
pub fn parse_event(seq: u32, payload: &[u8], abi: Abi) -> Result<Event> {
    let common: sys::Event = need("event", payload)?;
    let size = usize::from(common.size);
    if size < sys::EVENT_SIZE {
        return Err(ProtoError::Malformed(format!(
            "event common size {size} below {}",
            sys::EVENT_SIZE
        )));
    }
    let specific = payload.get(size..).ok_or(ProtoError::Truncated {
        what: "event common part",
        need: size,
        have: payload.len(),
    })?;
    let mut common = common;
    if abi == Abi::V6 {
        // v6 has padding where v7 has the view.
        common.arch.view = 0;
    }
    let kind = match common.event {
        sys::KVMI_EVENT_UNHOOK => EventKind::Unhook,
        sys::KVMI_EVENT_CR => EventKind::Cr(need("CR event", specific)?),
        sys::KVMI_EVENT_MSR => EventKind::Msr(need("MSR event", specific)?),
        sys::KVMI_EVENT_XSETBV => EventKind::Xsetbv,
        sys::KVMI_EVENT_BREAKPOINT => EventKind::Breakpoint(need("breakpoint event", specific)?),
        sys::KVMI_EVENT_HYPERCALL => EventKind::Hypercall,
        sys::KVMI_EVENT_PF => match abi {
            Abi::V6 => {
                let pf: sys::v6::EventPf = need("PF event", specific)?;
                EventKind::Pf(PfInfo {
                    gva: pf.gva,
                    gpa: pf.gpa,
                    access: pf.access,
                    view: pf.view,
                })
            }
            _ => {
                let pf: sys::EventPf = need("PF event", specific)?;
                EventKind::Pf(PfInfo {
                    gva: pf.gva,
                    gpa: pf.gpa,
                    access: pf.access,
                    view: common.arch.view,
                })
            }
        },
        sys::KVMI_EVENT_TRAP => match abi {
            Abi::V6 => {
                let t: sys::v6::EventTrap = need("trap event", specific)?;
                EventKind::Trap(TrapInfo {
                    vector: t.vector,
                    type_: Some(t.type_),
                    error_code: t.error_code,
                    cr2: t.cr2,
                })
            }
            _ => {
                let t: sys::EventTrap = need("trap event", specific)?;
                EventKind::Trap(TrapInfo {
                    vector: t.vector.into(),
                    type_: None,
                    error_code: t.error_code,
                    cr2: t.cr2,
                })
            }
        },
        sys::KVMI_EVENT_DESCRIPTOR => EventKind::Descriptor(need("descriptor event", specific)?),
        sys::KVMI_EVENT_CREATE_VCPU => EventKind::CreateVcpu,
        sys::KVMI_EVENT_PAUSE_VCPU => EventKind::PauseVcpu,
        sys::KVMI_EVENT_SINGLESTEP => match abi {
            Abi::V6 => EventKind::Singlestep { failed: false },
            _ => {
                let s: sys::EventSingleStep = need("singlestep event", specific)?;
                EventKind::Singlestep {
                    failed: s.failed != 0,
                }
            }
        },
        sys::KVMI_EVENT_CMD_ERROR if abi != Abi::V6 => {
            EventKind::CmdError(need("cmd-error event", specific)?)
        }
        sys::KVMI_EVENT_CPUID if abi != Abi::V6 => EventKind::Cpuid(need("CPUID event", specific)?),
        other => EventKind::Unknown(other),
    };
    Ok(Event {
        seq,
        abi,
        common,
        kind,
    })
}
