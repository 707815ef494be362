//! The session's inbox: every event kvmi-proto receives is routed here — `PAUSE_VCPU`
//! to the pauses ([`crate::park`]), hits to step over and step-over singlesteps to
//! [`crate::breakpoints`], filtered and asynchronous register events answered at once
//! ([`crate::events`]), and what the tool should see into the bounded queue it reads.

use std::collections::VecDeque;
use std::time::Duration;

use kvmi_proto::{Event as KEvent, EventKind as KKind, ProtoError};
use vmi_core::Result;

use crate::error::proto;
use crate::session::Shared;

/// Events received for, and handed to, the tool.
#[derive(Default)]
pub(crate) struct Inbox {
    /// Kvmi events handed to the tool as `PendingEvent`s, by ticket.
    pub(crate) outstanding: Outstanding,
    /// Kvmi events received and not yet handed out.
    pub(crate) queue: VecDeque<KEvent>,
    /// Asynchronous register events, answered on arrival, not yet handed out (see
    /// [`crate::events::Detached`]).
    pub(crate) detached: VecDeque<vmi_core::Event>,
    /// The host sent UNHOOK (queued once, however often it is sent).
    pub(crate) unhooked: bool,
    /// The tool answered (or dropped) the UNHOOK event: the session tears itself
    /// down on the tool's next wait for events.
    pub(crate) unhook_answered: bool,
}

/// Kvmi events handed to the tool, by ticket. A vCPU waits in at most one event, so
/// each has a slot (no hashing per event); an event without a vCPU of its own (UNHOOK
/// names vCPU 0) that finds the slot taken goes to a short list beside.
#[derive(Default)]
pub(crate) struct Outstanding {
    by_vcpu: Vec<Option<(u64, KEvent)>>,
    others: Vec<(u64, KEvent)>,
}

impl Outstanding {
    pub(crate) fn insert(&mut self, ticket: u64, ev: KEvent) {
        let i = usize::from(ev.vcpu());
        if i >= self.by_vcpu.len() {
            self.by_vcpu.resize_with(i + 1, || None);
        }
        match &mut self.by_vcpu[i] {
            slot @ None => *slot = Some((ticket, ev)),
            Some(_) => self.others.push((ticket, ev)),
        }
    }

    /// The event of `ticket`, handed to the tool for `vcpu`.
    pub(crate) fn remove(&mut self, ticket: u64, vcpu: u16) -> Option<KEvent> {
        if let Some(slot) = self.by_vcpu.get_mut(usize::from(vcpu)) {
            if slot.as_ref().is_some_and(|(t, _)| *t == ticket) {
                return slot.take().map(|(_, ev)| ev);
            }
        }
        let at = self.others.iter().position(|(t, _)| *t == ticket)?;
        Some(self.others.swap_remove(at).1)
    }
}

/// What [`Inbox::take_next`] found for the tool.
pub(crate) enum Next {
    /// The tool answered UNHOOK: the session is to be torn down.
    Unhooked,
    /// An asynchronous register event (answered already).
    Detached(vmi_core::Event),
    /// A kvmi event waiting for the tool.
    Queued(KEvent),
    /// Nothing yet.
    Nothing,
}

impl Inbox {
    /// Whether [`Inbox::take_next`] may find something (the inbox lock's bit).
    pub(crate) fn has_news(&self) -> bool {
        self.unhook_answered || !self.detached.is_empty() || !self.queue.is_empty()
    }

    /// Everything the tool's wait looks at, in one lock: the UNHOOK teardown (when
    /// `check_unhook`), then asynchronous events, then the queue.
    pub(crate) fn take_next(&mut self, check_unhook: bool) -> Next {
        if check_unhook && self.unhook_answered {
            return Next::Unhooked;
        }
        if let Some(ev) = self.detached.pop_front() {
            return Next::Detached(ev);
        }
        match self.queue.pop_front() {
            Some(ev) => Next::Queued(ev),
            None => Next::Nothing,
        }
    }
}

impl Shared {
    /// Waits up to `timeout` for one event from the host and files it.
    pub(crate) fn pump(&self, timeout: Duration) -> Result<()> {
        if let Some(ev) = self.receive(timeout, Destination::Queue)? {
            self.inbox().queue.push_back(ev);
        }
        Ok(())
    }

    /// Waits up to `timeout` for one event from the host and routes it; an event the
    /// tool should see is returned instead of queued (the tool's own wait hands it out
    /// at once: no queue round trip, no second lock).
    #[inline]
    pub(crate) fn pump_for_tool(&self, timeout: Duration) -> Result<Option<KEvent>> {
        self.receive(timeout, Destination::Tool)
    }

    #[inline]
    fn receive(&self, timeout: Duration, to: Destination) -> Result<Option<KEvent>> {
        match self.conn.next_event(timeout) {
            Ok(ev) => Ok(self.route(ev, to)),
            Err(ProtoError::Timeout(_)) => Ok(None),
            Err(e) => Err(proto("waiting for events", e)),
        }
    }

    /// Routes one received event and queues what the tool should see.
    pub(crate) fn file(&self, ev: KEvent) {
        if let Some(ev) = self.route(ev, Destination::Queue) {
            self.inbox().queue.push_back(ev);
        }
    }

    /// Routes one received event: `PAUSE_VCPU` into the pause table (or answered at
    /// once when nothing wants the vCPU stopped), no-reply and unknown events away,
    /// UNHOOK into the queue (once); what the tool should see is returned, its vCPU
    /// marked busy. Dropping a kvmi-proto event answers it with its default reply.
    #[must_use = "an event for the tool is answered (continue) when dropped"]
    #[inline]
    pub(crate) fn route(&self, ev: KEvent, to: Destination) -> Option<KEvent> {
        let idx = usize::from(ev.vcpu());
        match ev.kind {
            KKind::PauseVcpu => crate::park::on_pause_event(self, ev),
            KKind::CmdError(_) | KKind::Unknown(_) => drop(ev),
            KKind::Unhook => {
                // Announced once: more UNHOOKs (they need no reply) say nothing new,
                // and a host repeating it cannot grow the queue.
                let mut inbox = self.inbox();
                if !inbox.unhooked {
                    inbox.unhooked = true;
                    inbox.queue.push_back(ev);
                }
            }
            _ => {
                // The queue is bounded (a host flooding events while nobody waits for
                // them); an event handed straight to a waiting tool needs no room.
                let limit = 4 * self.vcpu_count as usize + 16;
                let full = || self.inbox().queue.len() >= limit;
                if idx >= self.vcpu_count as usize || (to == Destination::Queue && full()) {
                    drop(ev); // a host inventing vCPUs or flooding: default reply
                    return None;
                }
                if crate::breakpoints::foreign_space(self, &ev) {
                    // A hit in an address space none of the breakpoints there is for:
                    // stepped over internally, never shown.
                    crate::breakpoints::step_over_foreign(self, ev);
                    return None;
                }
                let ev = if matches!(ev.kind, KKind::Singlestep { .. }) {
                    crate::breakpoints::on_singlestep(self, ev)?
                } else {
                    let (filtered, asynchronous, trap) = if self.routing_filters() {
                        let m = self.monitors();
                        (m.filtered(&ev.kind), m.asynchronous(&ev.kind), m.trap)
                    } else {
                        (false, false, false)
                    };
                    if filtered {
                        drop(ev); // not the `equal` value, or unchanged: the write goes on
                        return None;
                    }
                    if asynchronous {
                        // Answered now (the default reply: the write goes on); the
                        // tool's guard is made from what the host reported, after it.
                        let view = crate::events::convert(self, &ev);
                        drop(ev);
                        let mut inbox = self.inbox();
                        if inbox.detached.len() < crate::events::DETACHED_MAX {
                            inbox.detached.push_back(view);
                        }
                        return None;
                    }
                    if matches!(ev.kind, KKind::Trap(_)) && !trap {
                        drop(ev); // the TRAP after our own injection: CONTINUE
                        return None;
                    }
                    ev
                };
                // Busy first: a pause that looks now finds the vCPU stopped in it.
                if let Some(h) = self.pauses().get_mut(idx) {
                    h.busy = true;
                }
                return Some(ev);
            }
        }
        None
    }
}

/// Where [`Shared::route`]'s caller puts an event for the tool.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// Into the inbox's bounded queue.
    Queue,
    /// Straight to the tool's waiting call.
    Tool,
}
