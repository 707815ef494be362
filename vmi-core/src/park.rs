//! The parked-vCPU model: one place that knows which vCPUs are stopped, why, what is
//! known about them, and when they may run again.
//!
//! A vCPU is either **running** or **parked**. It is parked
//!
//! * by an **event**: it trapped and waits for the tool's answer ([`PendingEvent`]);
//! * by a **pause**: the tool holds a [`PauseGuard`] of the whole guest or of this vCPU;
//! * or by both at once.
//!
//! While it is parked, the backend knows its registers (an event brings a snapshot; a
//! pause may, and anything fetched is kept), so [`Parking::read_registers`] answers from
//! that cache without a round trip; register writes are queued and applied when the vCPU
//! is released — exactly KVMi's rule for `SET_REGISTERS`, and the reason a KVMi backend
//! can write registers outside events: it parks the vCPU with a pause first. The
//! response's own [`Response::set_registers`] and [`crate::WriteRegisters`] are the same
//! queue.
//!
//! A parked vCPU is released exactly once, when the last reason to park it ends: an
//! event is answered when its [`PendingEvent`] is consumed by [`PendingEvent::reply`] or
//! dropped (also while a handler panics), and a pause ends when the last guard covering
//! the vCPU is dropped. Those releases are the only calls into the backend's
//! [`ParkOps`], which users never see: tools hold guards, backends implement the
//! primitives.
//!
//! # For backend authors
//!
//! A backend creates one [`Parking`] per guest (in an [`Arc`], shared by every handle
//! and sub-session of that guest so that pauses are counted once) with its [`ParkOps`],
//! turns each trapped host event into a [`PendingEvent`] with [`Parking::event`], and
//! implements [`crate::VcpuControl`] and register access by delegating to
//! [`Parking::pause`], [`Parking::read_registers`] and [`Parking::write_registers`].
//!
//! Lock order: [`Parking`] calls [`ParkOps`] while holding its own lock (so that a count
//! and the backend call it implies are one step, and a concurrent pause and resume can
//! never leave the guest running while a guard is alive). A backend must therefore not
//! call into its [`Parking`] while holding a lock that its [`ParkOps`] methods take.
//! [`Parking::is_paused`] reads an atomic and may be called from anywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use crate::addr::VcpuId;
use crate::capability::CapabilityReport;
use crate::error::{Error, Result};
use crate::event::{Event, Response};
use crate::registers::{RegisterGroups, RegisterSnapshot};

/// What a pause covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PauseScope {
    /// Every vCPU of the guest.
    All,
    /// One vCPU.
    Vcpu(VcpuId),
}

/// The backend's identifier of one trapped host event, handed back to
/// [`ParkOps::answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventTicket {
    /// The backend's id (e.g. the KVMi sequence number).
    pub id: u64,
    /// The vCPU that trapped.
    pub vcpu: VcpuId,
}

/// What the guest looks like once an event is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AfterAnswer {
    /// The vCPU stays parked by a pause: answer the event but keep it stopped.
    pub stays_parked: bool,
    /// No vCPU of the guest stays parked for any reason: an all-stop backend (QEMU's
    /// gdbstub) resumes the guest now.
    pub guest_released: bool,
}

/// The primitives a backend implements for [`Parking`]. Only [`Parking`] calls them,
/// and only on real transitions (first pause, last release, one answer per event).
pub trait ParkOps: Send + Sync {
    /// Stops what `scope` covers, which was running (or, for [`PauseScope::All`], partly
    /// parked by events). Returns the register snapshots learnt while stopping (a KVMi
    /// `PAUSE_VCPU` event carries them), kept as the parked vCPUs' cache.
    fn stop(&self, scope: PauseScope) -> Result<Vec<(VcpuId, RegisterSnapshot)>>;

    /// Lets what `scope` covers run again, after writing the queued register changes of
    /// `writes`. For [`PauseScope::All`], the vCPUs in `still_parked` stay stopped (they
    /// are parked by an event or a pause of their own); an all-stop backend then writes
    /// but does not resume.
    fn run(
        &self,
        scope: PauseScope,
        writes: &[(VcpuId, RegisterSnapshot)],
        still_parked: &[VcpuId],
    ) -> Result<()>;

    /// Answers the event `ticket` with `response`, whose [`Response::set_registers`]
    /// already holds every write queued for the vCPU. Called exactly once per event. The
    /// response passed [`CapabilityReport::check_response`] and
    /// [`ParkOps::check_response`]; if the backend still fails to honour it, it must
    /// answer with [`Response::default`] rather than leave the vCPU blocked.
    fn answer(&self, ticket: EventTicket, response: Response, after: AfterAnswer) -> Result<()>;

    /// Backend-specific checks of a response beyond the capability table (e.g. which
    /// MSRs a register write may name). The default accepts.
    fn check_response(&self, event: &Event, response: &Response) -> Result<()> {
        let _ = (event, response);
        Ok(())
    }

    /// Backend-specific checks of a register write beyond the capability table.
    fn check_write(&self, vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
        let _ = (vcpu, regs);
        Ok(())
    }

    /// Whether [`PauseScope::Vcpu`] is possible (not on all-stop backends).
    fn can_pause_vcpu(&self) -> bool {
        false
    }
}

#[derive(Debug, Default)]
struct VcpuPark {
    /// Waiting for the answer to an event.
    in_event: bool,
    /// Pauses of this vCPU alone.
    pauses: u32,
    /// What is known of its registers while parked.
    cache: RegisterSnapshot,
    /// Register writes to apply when it is released.
    queued: Option<RegisterSnapshot>,
}

#[derive(Debug, Default)]
struct State {
    /// Pauses of the whole guest.
    all_pauses: u32,
    vcpus: BTreeMap<VcpuId, VcpuPark>,
    /// The session ended: nothing is called any more.
    closed: bool,
}

impl State {
    fn parked(&self, vcpu: VcpuId) -> bool {
        self.all_pauses > 0
            || self
                .vcpus
                .get(&vcpu)
                .is_some_and(|v| v.in_event || v.pauses > 0)
    }

    fn vcpu_held(v: &VcpuPark) -> bool {
        v.in_event || v.pauses > 0
    }

    fn nothing_parked(&self) -> bool {
        self.all_pauses == 0 && !self.vcpus.values().any(Self::vcpu_held)
    }

    /// Forgets caches and entries of vCPUs that run.
    fn prune(&mut self) {
        let all = self.all_pauses > 0;
        self.vcpus
            .retain(|_, v| all || Self::vcpu_held(v) || v.queued.is_some());
        if !all {
            for v in self.vcpus.values_mut() {
                if !Self::vcpu_held(v) {
                    v.cache = RegisterSnapshot::default();
                }
            }
        }
    }
}

/// The parked vCPUs of one guest. See the [module documentation](self).
pub struct Parking {
    ops: Arc<dyn ParkOps>,
    state: Mutex<State>,
    /// Mirror of `state.all_pauses`, readable without the lock.
    all_paused: AtomicU32,
    closed: AtomicBool,
    capabilities: RwLock<Arc<CapabilityReport>>,
}

impl fmt::Debug for Parking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parking")
            .field("all_paused", &self.all_paused.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Parking {
    /// The parking of a guest whose backend primitives are `ops` and whose capability
    /// table is `capabilities` (responses and register writes are checked against it).
    pub fn new(ops: Arc<dyn ParkOps>, capabilities: CapabilityReport) -> Arc<Self> {
        Arc::new(Self {
            ops,
            state: Mutex::new(State::default()),
            all_paused: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            capabilities: RwLock::new(Arc::new(capabilities)),
        })
    }

    /// The capability table in force.
    pub fn capabilities(&self) -> Arc<CapabilityReport> {
        Arc::clone(&self.capabilities.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replaces the capability table (a session that learns more about its host, or
    /// wraps a sub-session, declares its own).
    pub fn set_capabilities(&self, capabilities: CapabilityReport) {
        *self.capabilities.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(capabilities);
    }

    /// Whether a pause of the whole guest is held. Lock-free: backends may call it while
    /// holding their own locks.
    pub fn is_paused(&self) -> bool {
        self.all_paused.load(Ordering::SeqCst) > 0
    }

    /// Whether `vcpu` is parked (by an event or a pause).
    pub fn is_parked(&self, vcpu: VcpuId) -> bool {
        lock(&self.state).parked(vcpu)
    }

    /// Number of outstanding pauses of the whole guest.
    pub fn pause_count(&self) -> u32 {
        self.all_paused.load(Ordering::SeqCst)
    }

    fn sync_mirror(&self, st: &State) {
        self.all_paused.store(st.all_pauses, Ordering::SeqCst);
    }

    /// Pauses what `scope` covers (stopping it only if nothing parked it yet) and
    /// returns the guard that ends this pause.
    pub fn pause(&self, scope: PauseScope) -> Result<PauseGuard<'_>> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(closed_error());
        }
        match scope {
            PauseScope::All => {
                if st.all_pauses == 0 {
                    let learnt = self.ops.stop(PauseScope::All)?;
                    for (vcpu, snap) in learnt {
                        st.vcpus.entry(vcpu).or_default().cache.merge(&snap);
                    }
                }
                st.all_pauses = st.all_pauses.checked_add(1).ok_or_else(overflow)?;
                self.sync_mirror(&st);
            }
            PauseScope::Vcpu(vcpu) => {
                if !self.ops.can_pause_vcpu() {
                    return Err(Error::unsupported(
                        "per-vCPU pause",
                        "this backend stops the whole guest at once; pause every vCPU",
                    ));
                }
                if !st.parked(vcpu) {
                    let learnt = self.ops.stop(scope)?;
                    for (v, snap) in learnt {
                        st.vcpus.entry(v).or_default().cache.merge(&snap);
                    }
                }
                let v = st.vcpus.entry(vcpu).or_default();
                v.pauses = v.pauses.checked_add(1).ok_or_else(overflow)?;
            }
        }
        Ok(PauseGuard {
            parking: self,
            scope,
            released: false,
        })
    }

    fn release(&self, scope: PauseScope) -> Result<()> {
        let mut st = lock(&self.state);
        if st.closed {
            return Ok(());
        }
        match scope {
            PauseScope::All => {
                match st.all_pauses {
                    0 => return Err(not_paused()),
                    1 => {}
                    _ => {
                        st.all_pauses -= 1;
                        self.sync_mirror(&st);
                        return Ok(());
                    }
                }
                let still: Vec<VcpuId> = st
                    .vcpus
                    .iter()
                    .filter(|(_, v)| State::vcpu_held(v))
                    .map(|(id, _)| *id)
                    .collect();
                let writes: Vec<(VcpuId, RegisterSnapshot)> = st
                    .vcpus
                    .iter()
                    .filter(|(_, v)| !State::vcpu_held(v))
                    .filter_map(|(id, v)| v.queued.clone().map(|q| (*id, q)))
                    .collect();
                // A failed resume keeps the pause (and the queued writes) so that a
                // later release or the session's teardown retries it.
                self.ops.run(PauseScope::All, &writes, &still)?;
                for (id, _) in &writes {
                    if let Some(v) = st.vcpus.get_mut(id) {
                        v.queued = None;
                    }
                }
                st.all_pauses = 0;
                self.sync_mirror(&st);
                st.prune();
                Ok(())
            }
            PauseScope::Vcpu(vcpu) => {
                let all = st.all_pauses;
                let v = st.vcpus.get_mut(&vcpu).filter(|v| v.pauses > 0);
                let Some(v) = v else {
                    return Err(not_paused());
                };
                if v.pauses > 1 || v.in_event || all > 0 {
                    v.pauses -= 1;
                    return Ok(());
                }
                let writes: Vec<_> = v.queued.clone().map(|q| (vcpu, q)).into_iter().collect();
                self.ops.run(scope, &writes, &[])?;
                v.pauses = 0;
                v.queued = None;
                st.prune();
                Ok(())
            }
        }
    }

    /// Turns a trapped host event into the guard the tool answers. The vCPU is parked
    /// by it until the guard is consumed or dropped; `event.registers` becomes its
    /// register cache.
    pub fn event(self: &Arc<Self>, id: u64, event: Event) -> PendingEvent {
        let vcpu = event.vcpu;
        {
            let mut st = lock(&self.state);
            let v = st.vcpus.entry(vcpu).or_default();
            v.in_event = true;
            v.cache.merge(&event.registers);
            if let Some(q) = &v.queued {
                // Writes queued under a pause stay visible to reads.
                let q = q.clone();
                v.cache.merge(&q);
            }
        }
        PendingEvent {
            event,
            ticket: Some(EventTicket { id, vcpu }),
            parking: Arc::clone(self),
        }
    }

    fn answer(&self, ticket: EventTicket, event: &Event, response: Response) -> Result<()> {
        let mut st = lock(&self.state);
        if st.closed {
            return Ok(());
        }
        let caps = self.capabilities();
        let checked = caps
            .check_response(event, &response)
            .and_then(|()| self.ops.check_response(event, &response));
        let (mut response, refused) = match checked {
            Ok(()) => (response, None),
            Err(e) => (Response::default(), Some(e)),
        };
        let all = st.all_pauses;
        let v = st.vcpus.entry(ticket.vcpu).or_default();
        let mut writes = v.queued.take();
        if let Some(own) = response.set_registers.take() {
            writes
                .get_or_insert_with(RegisterSnapshot::default)
                .merge(&own);
        }
        response.set_registers = writes.map(Box::new);
        v.in_event = false;
        // Whatever the answer does (emulate, step, write registers) changes the vCPU.
        v.cache = RegisterSnapshot::default();
        let stays_parked = all > 0 || v.pauses > 0;
        let guest_released = st.nothing_parked();
        let answered = self.ops.answer(
            ticket,
            response,
            AfterAnswer {
                stays_parked,
                guest_released,
            },
        );
        st.prune();
        match refused {
            Some(e) => Err(e),
            None => answered,
        }
    }

    /// Registers of `vcpu`: from the cache while it is parked and the cache holds what
    /// is asked, else from `fetch` (whose result is cached while the vCPU stays parked).
    pub fn read_registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
        fetch: impl FnOnce(RegisterGroups, &[u32]) -> Result<RegisterSnapshot>,
    ) -> Result<RegisterSnapshot> {
        let mut st = lock(&self.state);
        if !st.parked(vcpu) {
            drop(st);
            return fetch(groups, msrs);
        }
        let v = st.vcpus.entry(vcpu).or_default();
        if v.cache.covers(groups, msrs) {
            return Ok(v.cache.select(groups, msrs));
        }
        let mut fresh = fetch(groups, msrs)?;
        // Queued writes win over what the (not yet written) vCPU reports.
        if let Some(q) = &v.queued {
            fresh.merge(q);
        }
        v.cache.merge(&fresh);
        Ok(v.cache.select(groups, msrs))
    }

    /// Writes registers of `vcpu`: queued while it is parked (applied when it is
    /// released, with its event's answer or at the end of the pause); otherwise the
    /// vCPU (or, on all-stop backends, the guest) is paused for the write, which is
    /// applied as that pause ends.
    pub fn write_registers(&self, vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
        self.capabilities().check_register_write(regs)?;
        self.ops.check_write(vcpu, regs)?;
        {
            let mut st = lock(&self.state);
            if st.closed {
                return Err(closed_error());
            }
            if st.parked(vcpu) {
                let v = st.vcpus.entry(vcpu).or_default();
                v.queued
                    .get_or_insert_with(RegisterSnapshot::default)
                    .merge(regs);
                v.cache.merge(regs);
                return Ok(());
            }
        }
        let scope = if self.ops.can_pause_vcpu() {
            PauseScope::Vcpu(vcpu)
        } else {
            PauseScope::All
        };
        let guard = self.pause(scope)?;
        {
            let mut st = lock(&self.state);
            let v = st.vcpus.entry(vcpu).or_default();
            v.queued
                .get_or_insert_with(RegisterSnapshot::default)
                .merge(regs);
        }
        guard.resume()
    }

    /// Ends every pause (resuming the guest) and stops calling the backend: for a
    /// session's teardown. Events still pending are the backend's to answer (it tears
    /// down its host connection); their guards become inert.
    pub fn shutdown(&self) -> Result<()> {
        let mut st = lock(&self.state);
        if st.closed {
            return Ok(());
        }
        let mut result = Ok(());
        if st.all_pauses > 0 || st.vcpus.values().any(|v| v.pauses > 0) {
            let still: Vec<VcpuId> = st
                .vcpus
                .iter()
                .filter(|(_, v)| v.in_event)
                .map(|(id, _)| *id)
                .collect();
            let writes: Vec<_> = st
                .vcpus
                .iter()
                .filter(|(_, v)| !v.in_event)
                .filter_map(|(id, v)| v.queued.clone().map(|q| (*id, q)))
                .collect();
            result = self.ops.run(PauseScope::All, &writes, &still);
        }
        st.closed = true;
        st.all_pauses = 0;
        st.vcpus.clear();
        self.sync_mirror(&st);
        self.closed.store(true, Ordering::SeqCst);
        result
    }

    /// Whether [`Self::shutdown`] ran.
    pub fn is_shut_down(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }
}

fn overflow() -> Error {
    Error::InvalidArgument {
        what: "pause",
        reason: "pause count overflow".into(),
    }
}

fn not_paused() -> Error {
    Error::InvalidArgument {
        what: "resume",
        reason: "not paused by this guard's session".into(),
    }
}

fn closed_error() -> Error {
    Error::Disconnected {
        reason: "the session was shut down".into(),
    }
}

/// Keeps the guest (or one vCPU) paused while alive. Guards nest and are counted once
/// per guest across every handle: the guest resumes when the last one goes. Dropping
/// cannot report a failed resume; call [`PauseGuard::resume`] to see it.
#[must_use = "the guest resumes as soon as the guard is dropped"]
pub struct PauseGuard<'a> {
    parking: &'a Parking,
    scope: PauseScope,
    released: bool,
}

impl PauseGuard<'_> {
    /// What this guard pauses.
    pub fn scope(&self) -> PauseScope {
        self.scope
    }

    /// Ends this pause now and reports whether resuming (if it was the last one) and
    /// writing the registers queued meanwhile worked.
    pub fn resume(mut self) -> Result<()> {
        self.released = true;
        self.parking.release(self.scope)
    }
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        if !self.released {
            // A failed resume keeps the pause counted; the session's teardown retries.
            let _ = self.parking.release(self.scope);
        }
    }
}

impl fmt::Debug for PauseGuard<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PauseGuard")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
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
    /// [`Error::Unsupported`] *before* anything is sent, and the event is answered with
    /// [`Response::default`] instead, so the vCPU runs on either way. Register writes
    /// queued for the vCPU while it was parked go with the answer.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capability::{Capability, CapabilityReport};
    use crate::event::EventKind;
    use crate::registers::{ControlRegs, Gprs};
    use crate::View;

    #[derive(Debug, Clone, PartialEq)]
    enum Call {
        Stop(PauseScope),
        Run(PauseScope, Vec<(VcpuId, RegisterSnapshot)>, Vec<VcpuId>),
        Answer(EventTicket, Response, AfterAnswer),
    }

    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<Call>>,
        fail_run: AtomicBool,
        per_vcpu: bool,
    }

    impl Recorder {
        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl ParkOps for Recorder {
        fn stop(&self, scope: PauseScope) -> Result<Vec<(VcpuId, RegisterSnapshot)>> {
            self.calls.lock().unwrap().push(Call::Stop(scope));
            Ok(Vec::new())
        }
        fn run(
            &self,
            scope: PauseScope,
            writes: &[(VcpuId, RegisterSnapshot)],
            still: &[VcpuId],
        ) -> Result<()> {
            if self.fail_run.load(Ordering::SeqCst) {
                return Err(Error::unsupported("resume", "test"));
            }
            self.calls
                .lock()
                .unwrap()
                .push(Call::Run(scope, writes.to_vec(), still.to_vec()));
            Ok(())
        }
        fn answer(&self, t: EventTicket, r: Response, a: AfterAnswer) -> Result<()> {
            self.calls.lock().unwrap().push(Call::Answer(t, r, a));
            Ok(())
        }
        fn can_pause_vcpu(&self) -> bool {
            self.per_vcpu
        }
    }

    fn caps() -> CapabilityReport {
        let mut r = CapabilityReport::undeclared("test");
        r.supported(&[
            Capability::ResponseNone,
            Capability::ResponseSetRegisters,
            Capability::WriteGprs,
            Capability::WriteControlRegisters,
        ]);
        r
    }

    fn setup(per_vcpu: bool) -> (Arc<Recorder>, Arc<Parking>) {
        let rec = Arc::new(Recorder {
            per_vcpu,
            ..Recorder::default()
        });
        let p = Parking::new(rec.clone(), caps());
        (rec, p)
    }

    fn regs(rax: u64) -> RegisterSnapshot {
        RegisterSnapshot {
            gprs: Some(Gprs {
                rax,
                ..Gprs::default()
            }),
            control: Some(ControlRegs {
                cr3: 0x1000,
                ..ControlRegs::default()
            }),
            ..RegisterSnapshot::default()
        }
    }

    fn event(vcpu: u16, rax: u64) -> Event {
        Event {
            vcpu: VcpuId(vcpu),
            view: View::DEFAULT,
            registers: regs(rax),
            kind: EventKind::Cpuid {
                leaf: 0,
                subleaf: 0,
                insn_length: 2,
            },
        }
    }

    fn no_fetch(_: RegisterGroups, _: &[u32]) -> Result<RegisterSnapshot> {
        panic!("parked vCPU must be served from the cache")
    }

    #[test]
    fn pauses_are_counted_once_across_handles() {
        let (rec, p) = setup(false);
        let other_handle = Arc::clone(&p);
        let a = p.pause(PauseScope::All).unwrap();
        let b = other_handle.pause(PauseScope::All).unwrap();
        assert!(p.is_paused());
        drop(a);
        assert!(p.is_paused(), "the second guard still holds");
        b.resume().unwrap();
        assert!(!p.is_paused());
        assert_eq!(
            rec.calls(),
            vec![
                Call::Stop(PauseScope::All),
                Call::Run(PauseScope::All, vec![], vec![])
            ]
        );
    }

    #[test]
    fn dropped_event_is_answered_once_with_the_default() {
        let (rec, p) = setup(false);
        let ev = p.event(7, event(1, 5));
        assert!(p.is_parked(VcpuId(1)));
        drop(ev);
        assert!(!p.is_parked(VcpuId(1)));
        let calls = rec.calls();
        assert_eq!(calls.len(), 1);
        let Call::Answer(t, r, after) = &calls[0] else {
            panic!("{calls:?}")
        };
        assert_eq!(t.id, 7);
        assert_eq!(*r, Response::default());
        assert!(after.guest_released && !after.stays_parked);
    }

    #[test]
    fn a_panicking_handler_still_answers() {
        let (rec, p) = setup(false);
        let ev = p.event(1, event(0, 0));
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _ev = ev;
            panic!("handler bug");
        }));
        assert!(r.is_err());
        assert!(matches!(&rec.calls()[..], [Call::Answer(_, r, _)] if *r == Response::default()));
    }

    #[test]
    fn parked_registers_come_from_the_cache_and_writes_go_with_the_answer() {
        let (rec, p) = setup(false);
        let ev = p.event(3, event(0, 0x11));
        let got = p
            .read_registers(VcpuId(0), RegisterGroups::GPRS, &[], no_fetch)
            .unwrap();
        assert_eq!(got.gprs.unwrap().rax, 0x11);
        p.write_registers(VcpuId(0), &regs(0x22)).unwrap();
        let got = p
            .read_registers(VcpuId(0), RegisterGroups::GPRS, &[], no_fetch)
            .unwrap();
        assert_eq!(got.gprs.unwrap().rax, 0x22, "queued write is visible");
        assert!(rec.calls().is_empty(), "nothing sent before the answer");
        ev.reply(Response::continue_()).unwrap();
        let calls = rec.calls();
        let [Call::Answer(_, r, _)] = &calls[..] else {
            panic!("{calls:?}")
        };
        assert_eq!(r.set_registers.as_deref(), Some(&regs(0x22)));
        // Released: reads go to the backend again.
        let fetched = p
            .read_registers(VcpuId(0), RegisterGroups::GPRS, &[], |_, _| Ok(regs(0x33)))
            .unwrap();
        assert_eq!(fetched.gprs.unwrap().rax, 0x33);
    }

    #[test]
    fn response_registers_win_over_queued_writes() {
        let (rec, p) = setup(false);
        let ev = p.event(3, event(0, 0));
        p.write_registers(VcpuId(0), &regs(1)).unwrap();
        ev.reply(Response::continue_().with_registers(RegisterSnapshot {
            gprs: Some(Gprs {
                rax: 2,
                ..Gprs::default()
            }),
            ..RegisterSnapshot::default()
        }))
        .unwrap();
        let calls = rec.calls();
        let [Call::Answer(_, r, _)] = &calls[..] else {
            panic!("{calls:?}")
        };
        let w = r.set_registers.as_deref().unwrap();
        assert_eq!(w.gprs.unwrap().rax, 2);
        assert_eq!(w.control.unwrap().cr3, 0x1000, "queued CR write kept");
    }

    #[test]
    fn writes_outside_events_park_for_the_write() {
        let (rec, p) = setup(false);
        p.write_registers(VcpuId(1), &regs(9)).unwrap();
        assert_eq!(
            rec.calls(),
            vec![
                Call::Stop(PauseScope::All),
                Call::Run(PauseScope::All, vec![(VcpuId(1), regs(9))], vec![]),
            ]
        );
        assert!(!p.is_paused());
    }

    #[test]
    fn event_under_a_pause_stays_parked_until_the_pause_ends() {
        let (rec, p) = setup(false);
        let g = p.pause(PauseScope::All).unwrap();
        let ev = p.event(5, event(0, 0));
        ev.reply(Response::continue_()).unwrap();
        assert!(p.is_parked(VcpuId(0)));
        p.write_registers(VcpuId(0), &regs(4)).unwrap();
        drop(g);
        let calls = rec.calls();
        assert!(matches!(
            &calls[1],
            Call::Answer(
                _,
                _,
                AfterAnswer {
                    stays_parked: true,
                    guest_released: false
                }
            )
        ));
        assert_eq!(
            calls[2],
            Call::Run(PauseScope::All, vec![(VcpuId(0), regs(4))], vec![])
        );
    }

    #[test]
    fn pause_ending_while_an_event_is_pending_keeps_that_vcpu() {
        let (rec, p) = setup(false);
        let ev = p.event(5, event(1, 0));
        drop(p.pause(PauseScope::All).unwrap());
        assert_eq!(
            rec.calls()[1],
            Call::Run(PauseScope::All, vec![], vec![VcpuId(1)])
        );
        assert!(p.is_parked(VcpuId(1)));
        drop(ev);
        assert!(!p.is_parked(VcpuId(1)));
    }

    #[test]
    fn refused_responses_are_answered_with_the_default() {
        let (rec, p) = setup(false);
        let ev = p.event(5, event(0, 0));
        let e = ev.reply(Response::deny()).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
        assert!(matches!(&rec.calls()[..], [Call::Answer(_, r, _)] if *r == Response::default()));
    }

    #[test]
    fn failed_resume_keeps_the_pause_for_a_retry() {
        let (rec, p) = setup(false);
        let g = p.pause(PauseScope::All).unwrap();
        rec.fail_run.store(true, Ordering::SeqCst);
        assert!(g.resume().is_err());
        assert!(p.is_paused());
        rec.fail_run.store(false, Ordering::SeqCst);
        p.shutdown().unwrap();
        assert!(!p.is_paused());
        assert!(p.is_shut_down());
        assert!(matches!(
            rec.calls().last(),
            Some(Call::Run(PauseScope::All, _, _))
        ));
        assert!(p.pause(PauseScope::All).is_err(), "no pause after shutdown");
    }

    #[test]
    fn per_vcpu_pauses() {
        let (_, p) = setup(false);
        assert!(matches!(
            p.pause(PauseScope::Vcpu(VcpuId(0))),
            Err(Error::Unsupported { .. })
        ));
        let (rec, p) = setup(true);
        let a = p.pause(PauseScope::Vcpu(VcpuId(2))).unwrap();
        let b = p.pause(PauseScope::Vcpu(VcpuId(2))).unwrap();
        assert!(p.is_parked(VcpuId(2)) && !p.is_parked(VcpuId(1)));
        drop(a);
        drop(b);
        assert_eq!(
            rec.calls(),
            vec![
                Call::Stop(PauseScope::Vcpu(VcpuId(2))),
                Call::Run(PauseScope::Vcpu(VcpuId(2)), vec![], vec![])
            ]
        );
    }

    #[test]
    fn events_can_be_answered_from_another_thread() {
        let (rec, p) = setup(false);
        let ev = p.event(9, event(3, 0));
        std::thread::spawn(move || ev.reply(Response::continue_()))
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(rec.calls().len(), 1);
    }
}
