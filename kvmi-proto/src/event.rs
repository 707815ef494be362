//! Typed events (host → tool) and event replies (tool → host): [`EventInfo`] is the
//! parsed content, [`Event`] a received event that must be answered exactly once, and
//! [`Reply`] what it is answered with.

use crate::codec::{encode_into, Abi};
use crate::error::{ProtoError, Result};
use crate::router::Shared;
use kvmi_sys as sys;
use std::sync::Arc;
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

/// The content of one event as parsed from the wire: plain data, no reply obligation
/// (see [`Event`] for a received event that must be answered).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventInfo {
    /// Sequence number (echoed in the reply).
    pub seq: u32,
    /// ABI it was parsed with.
    pub abi: Abi,
    /// The common part in kvmi-v7 layout (for v6 events `arch.view` is 0).
    pub common: sys::Event,
    /// Event-specific data.
    pub kind: EventKind,
}

impl EventInfo {
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

    /// The reply an [`Event`] dropped without an answer gets: the action that lets the
    /// guest go on as if the event had not been intercepted, never `CRASH`:
    ///
    /// * CR / MSR: `CONTINUE` with the value the guest was writing (the kernel
    ///   zero-fills a missing `new_val`, and writing 0 to CR3 or an MSR would corrupt
    ///   the guest).
    /// * BREAKPOINT: `RETRY` (re-enter the guest at the same instruction). `CONTINUE`
    ///   would inject #BP into the guest, which crashes it when the INT3 was planted
    ///   by the tool; with `RETRY` the guest proceeds once the tool removed its INT3
    ///   (or disabled the interception), else the event repeats: the guest waits but
    ///   its state stays intact.
    /// * PF: `CONTINUE` with no context data and no `rep_complete`: the access is
    ///   emulated as if it had been allowed. `RETRY` would fault again at once, forever.
    /// * PAUSE_VCPU, CREATE_VCPU, XSETBV, HYPERCALL, TRAP, DESCRIPTOR, SINGLESTEP,
    ///   CPUID and unknown ids: `CONTINUE`.
    /// * UNHOOK and CMD_ERROR take no reply ([`needs_reply`](Self::needs_reply) is
    ///   false); nothing is sent for them.
    pub fn default_reply(&self) -> Reply {
        match self.kind {
            EventKind::Cr(cr) => Reply::with_new_value(Action::Continue, cr.new_value),
            EventKind::Msr(m) => Reply::with_new_value(Action::Continue, m.new_value),
            EventKind::Breakpoint(_) => Reply::breakpoint(false),
            EventKind::Pf(_) => Reply {
                action: Action::Continue,
                extra: Extra::Pf(Box::default()),
            },
            _ => Reply::new(Action::Continue),
        }
    }

    /// Appends the wire form of `reply` to this event (a `KVMI_EVENT_REPLY` message,
    /// event-specific data in this event's ABI layout) to `out`. Encoding only: a
    /// reply is sent by consuming the [`Event`].
    pub fn encode_reply(&self, reply: &Reply, out: &mut Vec<u8>) -> Result<()> {
        let vh = sys::VcpuHdr {
            vcpu: self.vcpu(),
            ..Default::default()
        };
        let er = sys::EventReply {
            action: reply.action.raw(),
            event: self.id(),
            ..Default::default()
        };
        let value;
        let pf;
        let extra: &[u8] = match &reply.extra {
            Extra::None => &[],
            Extra::NewValue(v) => {
                value = sys::EventCrReply { new_val: *v };
                value.as_bytes()
            }
            Extra::Raw(b) => b,
            Extra::Pf(p) => {
                pf = p.encode(self.abi);
                &pf
            }
        };
        encode_into(
            out,
            sys::KVMI_EVENT_REPLY,
            self.seq,
            &[vh.as_bytes(), er.as_bytes(), extra],
        )
    }
}

/// Owned PF reply data (see [`PfReply`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PfData {
    ctx_addr: u64,
    ctx_len: usize,
    ctx: [u8; sys::KVMI_CTX_DATA_SIZE],
    rep_complete: bool,
    singlestep_v6: bool,
}

impl Default for PfData {
    fn default() -> Self {
        PfData {
            ctx_addr: 0,
            ctx_len: 0,
            ctx: [0; sys::KVMI_CTX_DATA_SIZE],
            rep_complete: false,
            singlestep_v6: false,
        }
    }
}

impl PfData {
    fn encode(&self, abi: Abi) -> Vec<u8> {
        // ctx_len <= KVMI_CTX_DATA_SIZE (256): checked by Reply::pf.
        let ctx_size = self.ctx_len as u32;
        match abi {
            Abi::V6 => sys::v6::EventPfReply {
                ctx_addr: self.ctx_addr,
                ctx_size,
                singlestep: u8::from(self.singlestep_v6),
                rep_complete: u8::from(self.rep_complete),
                padding: 0,
                ctx_data: self.ctx,
            }
            .as_bytes()
            .to_vec(),
            _ => sys::EventPfReply {
                ctx_addr: self.ctx_addr,
                ctx_size,
                padding1: 0,
                rep_complete: u8::from(self.rep_complete),
                padding2: 0,
                ctx_data: self.ctx,
            }
            .as_bytes()
            .to_vec(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Extra {
    None,
    NewValue(u64),
    Pf(Box<PfData>),
    Raw(Vec<u8>),
}

/// How to answer an event: an [`Action`] and the event-specific reply data, encoded
/// in the event's ABI layout when sent. `From<Action>` gives a reply without data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    action: Action,
    extra: Extra,
}

impl From<Action> for Reply {
    fn from(action: Action) -> Reply {
        Reply::new(action)
    }
}

/// Longest event-specific reply data a message can carry (after the vCPU header and
/// the reply struct).
pub const MAX_REPLY_EXTRA: usize = crate::codec::MAX_TX_PAYLOAD - 16;

impl Reply {
    /// `action` without data (XSETBV, HYPERCALL, TRAP, DESCRIPTOR, CREATE_VCPU,
    /// PAUSE_VCPU, SINGLESTEP, CPUID, BREAKPOINT).
    pub fn new(action: Action) -> Reply {
        Reply {
            action,
            extra: Extra::None,
        }
    }

    /// CR / MSR reply: with `Continue`, `new_val` is the value actually written.
    pub fn with_new_value(action: Action, new_val: u64) -> Reply {
        Reply {
            action,
            extra: Extra::NewValue(new_val),
        }
    }

    /// Breakpoint reply: `reinject` = CONTINUE (deliver #BP to the guest), else RETRY
    /// (re-enter; the tool moved RIP or removed its INT3).
    pub fn breakpoint(reinject: bool) -> Reply {
        Reply::new(if reinject {
            Action::Continue
        } else {
            Action::Retry
        })
    }

    /// Page-fault reply with context data; fails if `ctx_data` exceeds 256 bytes.
    pub fn pf(action: Action, pf: &PfReply<'_>) -> Result<Reply> {
        if pf.ctx_data.len() > sys::KVMI_CTX_DATA_SIZE {
            return Err(ProtoError::InvalidArgument(format!(
                "PF context data of {} bytes exceeds {}",
                pf.ctx_data.len(),
                sys::KVMI_CTX_DATA_SIZE
            )));
        }
        let mut d = PfData {
            ctx_addr: pf.ctx_addr,
            ctx_len: pf.ctx_data.len(),
            rep_complete: pf.rep_complete,
            singlestep_v6: pf.singlestep_v6,
            ..PfData::default()
        };
        d.ctx[..pf.ctx_data.len()].copy_from_slice(pf.ctx_data);
        Ok(Reply {
            action,
            extra: Extra::Pf(Box::new(d)),
        })
    }

    /// `action` with event-specific data given as raw bytes, sent as is (for layouts
    /// this crate does not model; the kernel closes the connection on data longer than
    /// it expects). Fails beyond [`MAX_REPLY_EXTRA`] bytes.
    pub fn raw(action: Action, extra: &[u8]) -> Result<Reply> {
        if extra.len() > MAX_REPLY_EXTRA {
            return Err(ProtoError::InvalidArgument(format!(
                "event reply data of {} bytes exceeds {MAX_REPLY_EXTRA}",
                extra.len()
            )));
        }
        Ok(Reply {
            action,
            extra: Extra::Raw(extra.to_vec()),
        })
    }

    /// The action.
    pub fn action(&self) -> Action {
        self.action
    }
}

/// A received event that has not been answered yet: the host's vCPU waits for exactly
/// one reply, and this type makes it exactly one.
///
/// * Every reply method consumes the event, so a second reply does not compile.
/// * Dropping an unanswered event (an early return, `?`, a panicking handler)
///   answers it with [`EventInfo::default_reply`], so its vCPU never stays blocked.
/// * The event is `Send`: move it to another thread to answer later (a deferred
///   reply), or into a [`Batch`](crate::Batch) ([`Batch::reply`](crate::Batch::reply))
///   to send the reply together with commands (e.g. `SET_REGISTERS` first).
///
/// Events that take no reply (UNHOOK, CMD_ERROR) are delivered the same way; replying
/// to them, or dropping them, sends nothing.
///
/// Its content is an [`EventInfo`] (`Deref`), e.g. `ev.kind`, `ev.vcpu()`.
///
/// ```no_run
/// # fn handle(conn: &kvmi_proto::Connection) -> kvmi_proto::Result<()> {
/// use kvmi_proto::{Action, EventKind};
/// let ev = conn.next_event(std::time::Duration::from_secs(1))?;
/// match ev.kind {
///     EventKind::Cr(cr) => ev.reply_cr(Action::Continue, cr.new_value)?,
///     _ => drop(ev), // answered with its default action
/// }
/// # Ok(()) }
/// ```
///
/// Replying twice is a compile-time error:
///
/// ```compile_fail,E0382
/// # fn handle(conn: &kvmi_proto::Connection) -> kvmi_proto::Result<()> {
/// let ev = conn.next_event(std::time::Duration::from_secs(1))?;
/// ev.reply_continue()?;
/// ev.reply_continue()?; // use of moved value: `ev`
/// # Ok(()) }
/// ```
#[must_use = "an event is answered when dropped; reply explicitly to choose the action"]
pub struct Event {
    // Allocated by the connection on arrival: the event is a small handle that moves
    // cheaply through a caller's queues, tables and `reply(self)`; shared so that what
    // the host reported can outlive the reply ([`Event::shared_info`]).
    info: Arc<EventInfo>,
    /// Where to send the reply; `None` once answered, or for events without a reply.
    conn: Option<Arc<Shared>>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("info", &self.info)
            .field("answered", &self.conn.is_none())
            .finish()
    }
}

impl std::ops::Deref for Event {
    type Target = EventInfo;
    fn deref(&self) -> &EventInfo {
        &self.info
    }
}

impl Event {
    pub(crate) fn new(info: Arc<EventInfo>, conn: &Arc<Shared>) -> Event {
        let conn = info.needs_reply().then(|| Arc::clone(conn));
        Event { info, conn }
    }

    /// The event's content.
    pub fn info(&self) -> &EventInfo {
        &self.info
    }

    /// The event's content, shared: it stays readable after the event is answered
    /// (a layer above keeps the vCPU state the event carried without copying it).
    pub fn shared_info(&self) -> Arc<EventInfo> {
        Arc::clone(&self.info)
    }

    /// Answers with `reply` (an [`Action`] or a [`Reply`]).
    pub fn reply(mut self, reply: impl Into<Reply>) -> Result<()> {
        match self.conn.take() {
            Some(conn) => {
                let mut msg = Vec::with_capacity(64);
                self.info.encode_reply(&reply.into(), &mut msg)?;
                conn.write(&msg)
            }
            None => Ok(()),
        }
    }

    /// Answers with `CONTINUE` and no data.
    pub fn reply_continue(self) -> Result<()> {
        self.reply(Action::Continue)
    }

    /// Answers with [`EventInfo::default_reply`] (what dropping does, but with the
    /// write's result).
    pub fn reply_default(self) -> Result<()> {
        let r = self.info.default_reply();
        self.reply(r)
    }

    /// CR event reply: with `Continue`, `new_val` is the value actually written.
    pub fn reply_cr(self, action: Action, new_val: u64) -> Result<()> {
        self.reply(Reply::with_new_value(action, new_val))
    }

    /// MSR event reply: with `Continue`, `new_val` is the value actually written.
    pub fn reply_msr(self, action: Action, new_val: u64) -> Result<()> {
        self.reply(Reply::with_new_value(action, new_val))
    }

    /// Breakpoint reply (see [`Reply::breakpoint`]).
    pub fn reply_breakpoint(self, reinject: bool) -> Result<()> {
        self.reply(Reply::breakpoint(reinject))
    }

    /// Page-fault reply with context data (see [`PfReply`]). Context data over 256
    /// bytes fails with [`ProtoError::InvalidArgument`] and the event is then answered
    /// with its default reply; check with [`Reply::pf`] first to keep the event.
    pub fn reply_pf(self, action: Action, pf: &PfReply<'_>) -> Result<()> {
        let r = Reply::pf(action, pf)?;
        self.reply(r)
    }

    /// Gives up the reply obligation: the caller has sent (or deliberately will not
    /// send) the reply by other means. For [`Batch`](crate::Batch), which writes the
    /// encoded reply itself.
    pub(crate) fn disarm(mut self) {
        self.conn = None;
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            let mut msg = Vec::with_capacity(sys::MSG_HDR_SIZE + 16 + 272);
            if self
                .info
                .encode_reply(&self.info.default_reply(), &mut msg)
                .is_ok()
            {
                // A failed write closed the connection; nothing is waiting any more.
                let _ = conn.write(&msg);
            }
        }
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
pub fn parse_event(seq: u32, payload: &[u8], abi: Abi) -> Result<EventInfo> {
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
    Ok(EventInfo {
        seq,
        abi,
        common,
        kind,
    })
}
