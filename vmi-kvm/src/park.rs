//! [`ParkOps`] on KVMi: how a KVMi session stops, releases and answers vCPUs.
//!
//! * **Stop** = `VCPU_PAUSE` per vCPU (pipelined, one write). Each successful pause
//!   makes the host send one `PAUSE_VCPU` event once the vCPU has left guest mode.
//!   Those events are internal: they never reach the tool. Their kvmi-proto [`Event`]
//!   guards are kept in the session's table while the pause lasts — the vCPU is held
//!   inside that event — and their arch part (regs, sregs, MSRs) is returned as the
//!   parked vCPU's register cache. A vCPU already held by a tool event (queued or
//!   handed out) gets no pause request: it is stopped already, and if a pause is still
//!   held when the tool answers it, the pause request goes out in the same write as the
//!   answer, before it.
//! * **Run** = for every vCPU held by a `PAUSE_VCPU` event: `VCPU_SET_REGISTERS` with
//!   the writes queued meanwhile (allowed exactly while the vCPU waits for an event
//!   reply), then the reply, all in one batch (one round trip).
//! * **Answer** = the tool's [`Response`] mapped to the kvmi reply for that event kind
//!   ([`crate::response`]), sent through the kvmi-proto [`Event`] guard kept for the
//!   ticket, after the commands the response implies (set registers, toggle
//!   singlestep), in one batch.
//!
//! A `PAUSE_VCPU` event that arrives when nothing wants the vCPU stopped any more (a
//! pause that ended while its request was in flight) is answered at once.
//!
//! [`Event`]: kvmi_proto::Event

use std::sync::Arc;

use kvmi_proto::{Batch, Event as KEvent};

use vmi_core::park::{AfterAnswer, EventTicket, ParkOps};
use vmi_core::{Deadline, Error, Event, PauseScope, RegisterSnapshot, Response, Result, VcpuId};

use crate::error::proto;
use crate::registers::{snapshot_from_event, writable};
use crate::response;
use crate::session::Shared;

/// Pause book-keeping of one vCPU (the session's `pauses`, owned by this module).
#[derive(Default)]
pub(crate) struct VcpuPause {
    /// `VCPU_PAUSE` requests whose `PAUSE_VCPU` event has not arrived yet.
    pub(crate) pause_requested: u32,
    /// The `PAUSE_VCPU` event the vCPU is held in while paused.
    pub(crate) pause_held: Option<KEvent>,
    /// A stamp unique to the current `pause_held` hold (the page cache's proof that
    /// the vCPU has not run since).
    pub(crate) held_stamp: u64,
    /// Something (a pause) wants this vCPU stopped.
    pub(crate) pause_wanted: bool,
    /// A tool-visible event of this vCPU is queued or handed out, unanswered.
    pub(crate) busy: bool,
}

/// A `PAUSE_VCPU` event arrived: the vCPU is held in it while a pause wants it
/// stopped, else it is answered at once (dropped: CONTINUE).
pub(crate) fn on_pause_event(sh: &Shared, ev: KEvent) {
    let mut pauses = sh.pauses();
    let Some(h) = pauses.get_mut(usize::from(ev.vcpu())) else {
        return; // dropped after the lock: answered with CONTINUE
    };
    h.pause_requested = h.pause_requested.saturating_sub(1);
    if h.pause_wanted && h.pause_held.is_none() {
        h.pause_held = Some(ev);
        h.held_stamp = sh.ticket();
    }
}

/// The session's [`ParkOps`].
pub(crate) struct KvmiPark {
    pub(crate) shared: Arc<Shared>,
}

impl KvmiPark {
    fn targets(&self, scope: PauseScope) -> Result<Vec<u16>> {
        match scope {
            PauseScope::All => Ok((0..self.shared.vcpu_count as u16).collect()),
            PauseScope::Vcpu(v) => {
                self.shared.check_vcpu(v)?;
                Ok(vec![v.0])
            }
        }
    }
}

impl ParkOps for KvmiPark {
    fn stop(&self, scope: PauseScope) -> Result<Vec<(VcpuId, RegisterSnapshot)>> {
        let sh = &self.shared;
        let targets = self.targets(scope)?;
        let mut batch = Batch::new(&sh.conn);
        {
            let mut pauses = sh.pauses();
            for &v in &targets {
                let h = &mut pauses[usize::from(v)];
                h.pause_wanted = true;
                if h.pause_held.is_none() && h.pause_requested == 0 && !h.busy {
                    h.pause_requested += 1;
                    batch
                        .pause_vcpu(v, true)
                        .map_err(|e| proto("KVMI_VCPU_PAUSE", e))?;
                }
            }
        }
        if let Err(e) = batch.commit(sh.conn.config().request_timeout) {
            self.abandon(&targets);
            return Err(proto("KVMI_VCPU_PAUSE", e));
        }
        // Wait until every target is held by its PAUSE_VCPU event or by a tool event.
        let deadline = Deadline::after(sh.conn.config().request_timeout);
        loop {
            {
                let pauses = sh.pauses();
                let done = targets.iter().all(|&v| {
                    let h = &pauses[usize::from(v)];
                    h.pause_held.is_some() || h.busy
                });
                if done {
                    let snaps = targets
                        .iter()
                        .filter_map(|&v| {
                            pauses[usize::from(v)]
                                .pause_held
                                .as_ref()
                                .map(|ev| (VcpuId(v), snapshot_from_event(&ev.common.arch)))
                        })
                        .collect();
                    return Ok(snaps);
                }
            }
            if deadline.expired() {
                self.abandon(&targets);
                return Err(deadline.timeout_error("PAUSE_VCPU events"));
            }
            if let Err(e) = sh.pump(deadline.remaining_capped(crate::session::PUMP_SLICE)) {
                self.abandon(&targets);
                return Err(e);
            }
        }
    }

    fn run(
        &self,
        scope: PauseScope,
        writes: &[(VcpuId, RegisterSnapshot)],
        still_parked: &[VcpuId],
    ) -> Result<()> {
        let sh = &self.shared;
        let targets = self.targets(scope)?;
        let mut batch = Batch::new(&sh.conn);
        let mut missing = None;
        {
            let mut pauses = sh.pauses();
            for &v in &targets {
                if still_parked.contains(&VcpuId(v)) {
                    continue;
                }
                let write = writes.iter().find(|(w, _)| w.0 == v).map(|(_, r)| r);
                let h = &mut pauses[usize::from(v)];
                let regs = match write {
                    Some(r) => writable(r)?,
                    None => None,
                };
                if let Some(regs) = &regs {
                    if h.pause_held.is_some() || h.busy {
                        // The vCPU waits for an event reply: SET_REGISTERS is allowed.
                        batch
                            .set_registers(v, regs)
                            .map_err(|e| proto("KVMI_VCPU_SET_REGISTERS", e))?;
                    } else {
                        missing = Some(VcpuId(v));
                    }
                }
                h.pause_wanted = false;
                if let Some(ev) = h.pause_held.take() {
                    batch
                        .reply(ev, kvmi_proto::Action::Continue)
                        .map_err(|e| proto("PAUSE_VCPU reply", e))?;
                }
            }
        }
        batch
            .commit(sh.reply_timeout())
            .map_err(|e| proto("resume (SET_REGISTERS + PAUSE_VCPU replies)", e))?;
        match missing {
            Some(v) => Err(Error::InvalidReply {
                reason: format!("registers queued for vCPU {v}, which is not held by an event")
                    .into(),
            }),
            None => Ok(()),
        }
    }

    fn answer(&self, ticket: EventTicket, response: Response, after: AfterAnswer) -> Result<()> {
        let sh = &self.shared;
        let ev = {
            let mut inbox = sh.inbox();
            let Some(ev) = inbox.outstanding.remove(ticket.id, ticket.vcpu.0) else {
                return Ok(()); // torn down meanwhile: the teardown answered it
            };
            ev
        };
        if !ev.needs_reply() {
            // UNHOOK: nothing is sent and no vCPU waits in it. The teardown does not
            // run here: it needs the session's `Parking` (to shut it down), which owns
            // these ops and is not reachable from them, and an answer (or a guard's
            // drop, perhaps on a handler thread while others hold events) should not
            // block for a whole teardown; the next wait for events does it. Parking
            // treated vCPU 0 as parked meanwhile; register writes queued for it cannot
            // be applied.
            sh.inbox().unhook_answered = true;
            if response.set_registers.is_some() {
                return Err(Error::InvalidReply {
                    reason: "UNHOOK holds no vCPU: register writes queued for vCPU 0 while \
                             it was pending were not applied"
                        .into(),
                });
            }
            return Ok(());
        }
        let vcpu = ev.vcpu();
        // Everything fallible that builds the answer happens before the event moves
        // into a batch; on an error the event is answered with its default reply.
        let built = response::build(sh, &ev, &response);
        let pause_again = self.finish_vcpu(vcpu, after);
        let (reply, commands) = match built {
            Ok(b) => b,
            Err(e) => {
                let default = ev.default_reply();
                let _ = self.send(ev, default, pause_again, Vec::new()); // `e` says more
                return Err(e);
            }
        };
        let r = self.send(ev, reply, pause_again, commands);
        if response.toggle_singlestep {
            response::after_commit(sh, vcpu, &response, r.is_ok());
        }
        r
    }

    fn check_response(&self, event: &Event, response: &Response) -> Result<()> {
        response::check(&self.shared, event, response)
    }

    fn check_write(&self, _vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
        writable(regs).map(drop)
    }

    fn can_pause_vcpu(&self) -> bool {
        true
    }
}

impl KvmiPark {
    /// The vCPU's event is answered: it is no longer busy, and stays paused if a pause
    /// wants it. Whether a `VCPU_PAUSE` must go with the reply (a pause wants it and
    /// none is held or on its way).
    fn finish_vcpu(&self, vcpu: u16, after: AfterAnswer) -> bool {
        let mut pauses = self.shared.pauses();
        let Some(h) = pauses.get_mut(usize::from(vcpu)) else {
            return false;
        };
        h.busy = false;
        h.pause_wanted = after.stays_parked;
        if after.stays_parked && h.pause_held.is_none() && h.pause_requested == 0 {
            h.pause_requested += 1;
            return true;
        }
        false
    }

    /// Sends an event's reply: alone, in the event's own one-message write (the common
    /// case), or in one batch after a `VCPU_PAUSE` (`pause_again`) and `commands`.
    fn send(
        &self,
        ev: KEvent,
        reply: kvmi_proto::Reply,
        pause_again: bool,
        commands: Vec<crate::events::Command>,
    ) -> Result<()> {
        let vcpu = ev.vcpu();
        if commands.is_empty() && !pause_again {
            return ev.reply(reply).map_err(|e| proto("event reply", e));
        }
        let sh = &self.shared;
        let mut batch = Batch::new(&sh.conn);
        if pause_again {
            // Before the reply: the vCPU leaves the event straight into the pause.
            batch
                .pause_vcpu(vcpu, true)
                .map_err(|e| proto("KVMI_VCPU_PAUSE", e))?;
        }
        for c in commands {
            let name = c.name();
            batch.push(c).map_err(|e| proto(name, e))?;
        }
        batch
            .reply(ev, reply)
            .map_err(|e| proto("KVMI_EVENT_REPLY", e))?;
        batch
            .commit(sh.reply_timeout())
            .map_err(|e| proto("event reply", e))
    }

    /// A stop that failed: nothing wants the targets stopped; release what is held.
    fn abandon(&self, targets: &[u16]) {
        let held: Vec<KEvent> = {
            let mut pauses = self.shared.pauses();
            targets
                .iter()
                .filter_map(|&v| {
                    let h = &mut pauses[usize::from(v)];
                    h.pause_wanted = false;
                    h.pause_held.take()
                })
                .collect()
        };
        for ev in held {
            let _ = ev.reply_continue();
        }
    }
}

impl vmi_core::VcpuControl for crate::KvmiVm {
    fn vcpu_count(&self) -> Result<u32> {
        Ok(self.shared.vcpu_count)
    }

    fn pause(&self) -> Result<vmi_core::PauseGuard<'_>> {
        self.shared.check_connected()?;
        self.parking.pause(PauseScope::All)
    }

    fn pause_vcpu(&self, vcpu: VcpuId) -> Result<vmi_core::PauseGuard<'_>> {
        self.shared.check_vcpu(vcpu)?;
        self.shared.check_connected()?;
        self.parking.pause(PauseScope::Vcpu(vcpu))
    }

    fn is_paused(&self) -> bool {
        self.parking.is_paused()
    }
}
