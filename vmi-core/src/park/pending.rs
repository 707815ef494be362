//! Events: the guard a tool answers ([`PendingEvent`]) and how an answer reaches the
//! backend.

use std::fmt;
use std::sync::Arc;

use super::{AfterAnswer, EventTicket, Parking, Wait};
use crate::error::Result;
use crate::event::{Event, Response};
use crate::registers::RegisterSnapshot;

impl Parking {
    /// Turns a trapped host event into the guard the tool answers. The vCPU is parked
    /// by it until the guard is consumed or dropped; `event.registers` becomes its
    /// register cache (shared, not copied: decoded only if someone reads them).
    pub fn event(self: &Arc<Self>, id: u64, event: Event) -> PendingEvent {
        let vcpu = event.vcpu;
        {
            let mut st = self.lock();
            let v = st.vcpu_mut(vcpu);
            v.in_event = true;
            v.set_event_registers(&event.registers);
        }
        PendingEvent {
            event,
            ticket: Some(EventTicket { id, vcpu }),
            parking: Arc::clone(self),
        }
    }

    /// Checks `response` against the capability table and the backend; a refused one
    /// becomes [`Response::default`] and the refusal is returned beside it.
    fn checked(&self, event: &Event, response: Response) -> (Response, Option<crate::Error>) {
        if response == Response::default() {
            return (response, None);
        }
        let checked = self
            .caps()
            .require_all(response.required_capabilities(&event.kind))
            .and_then(|()| self.ops.check_response(event, &response));
        match checked {
            Ok(()) => (response, None),
            Err(e) => (Response::default(), Some(e)),
        }
    }

    fn answer(&self, ticket: EventTicket, event: &Event, mut response: Response) -> Result<()> {
        // An edited copy of the event's registers writes what was edited, nothing else.
        if let Some(regs) = response.set_registers.take() {
            let changed = regs.changes_from(&event.registers);
            if !changed.is_empty() {
                response.set_registers = Some(Box::new(changed));
            }
        }
        let (mut response, refused) = self.checked(event, response);
        let mut st = self.wait(self.lock(), Wait::Answer);
        if st.closed {
            return Ok(());
        }
        let all = st.all_pauses;
        let v = st.vcpu_mut(ticket.vcpu);
        // `take` of an empty `Option<RegisterSnapshot>` still copies all of it out.
        let mut writes = if v.queued.is_some() {
            v.queued.take()
        } else {
            None
        };
        if let Some(own) = response.set_registers.take() {
            writes
                .get_or_insert_with(RegisterSnapshot::default)
                .merge(&own);
        }
        response.set_registers = writes.map(Box::new);
        v.in_event = false;
        // Whatever the answer does (emulate, step, write registers) changes the vCPU.
        v.forget_registers();
        let stays_parked = all > 0 || v.pauses > 0;
        let guest_released = st.nothing_parked();
        st.generation += 1;
        st.answering += 1;
        drop(st);
        let answered = self.ops.answer(
            ticket,
            response,
            AfterAnswer {
                stays_parked,
                guest_released,
            },
        );
        let mut st = self.lock();
        st.answering -= 1;
        if st.answering == 0 && st.transitions_waiting > 0 {
            self.done.notify_all();
        }
        drop(st);
        match refused {
            Some(e) => Err(e),
            None => answered,
        }
    }
}

/// A trapped event whose vCPU waits for the answer. Only a backend creates one
/// ([`Parking::event`]).
///
/// [`PendingEvent::reply`] consumes it, so an event cannot be answered twice; dropping
/// it unanswered — also while a handler panics — answers [`Response::default`]
/// (continue), so a vCPU is never left blocked. It is `Send` and `'static`: hand it to a
/// worker thread and answer there.
///
/// ```compile_fail
/// # fn twice(ev: vmi_core::PendingEvent) {
/// ev.reply(vmi_core::Response::continue_()).unwrap();
/// ev.reply(vmi_core::Response::continue_()).unwrap(); // moved: does not compile
/// # }
/// ```
pub struct PendingEvent {
    // Inline: an event is small (its registers are behind a shared pointer).
    event: Event,
    ticket: Option<EventTicket>,
    parking: Arc<Parking>,
}

impl PendingEvent {
    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The backend's ticket (for logging).
    pub fn ticket(&self) -> EventTicket {
        self.ticket.unwrap_or(EventTicket {
            id: 0,
            vcpu: self.event.vcpu,
        })
    }

    /// Answers the event. A response the backend cannot honour is refused with
    /// [`crate::Error::Unsupported`] *before* anything is sent, and the event is
    /// answered with [`Response::default`] instead, so the vCPU runs on either way.
    /// Register writes queued for the vCPU while it was parked go with the answer.
    ///
    /// [`Response::set_registers`] may be an edited copy of the event's registers
    /// (LibVMI's `VMI_EVENT_RESPONSE_SET_REGISTERS` with `x86_regs` changed in place):
    /// only the groups that differ from the event's snapshot are written (MSRs one by
    /// one), so changing RAX in a copy that also holds the control registers writes the
    /// GPRs alone. A changed group the backend cannot write is refused, naming it.
    pub fn reply(mut self, response: Response) -> Result<()> {
        match self.ticket.take() {
            Some(t) => self.parking.answer(t, &self.event, response),
            None => Ok(()),
        }
    }
}

impl std::ops::Deref for PendingEvent {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.event
    }
}

impl Drop for PendingEvent {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            let _ = self.parking.answer(t, &self.event, Response::default());
        }
    }
}

impl fmt::Debug for PendingEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingEvent")
            .field("event", &self.event)
            .field("answered", &self.ticket.is_none())
            .finish()
    }
}
