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
//! queue. A response carrying an edited copy of the event's registers writes only the
//! groups that differ from the event's snapshot (see [`PendingEvent::reply`]).
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
//! # Concurrency
//!
//! [`Parking`] never calls its [`ParkOps`] (or a register fetch) while holding its
//! lock: it takes what the call needs out under the lock, calls, and puts the outcome
//! back. Answers to events of different vCPUs therefore run in parallel. Stopping and
//! resuming (transitions) are serialised among themselves and against answers, which
//! is what keeps a pause count and the backend state it implies one step: a pause that
//! finds a stop in flight waits for it, so no guard is handed out while the guest still
//! runs, and a transition starts only once in-flight answers are done, so an answer's
//! "stays parked" cannot go stale. These waits last as long as the backend call in
//! flight, which the backend bounds with its own deadlines. A backend may call into its
//! [`Parking`] from anywhere except from inside its own [`ParkOps`] methods.
//!
//! What an answer checks against the capability table is decided once per table: the
//! set of supported rows is kept beside it, so an event costs one bit test rather than
//! a table lookup per row.

mod pending;
mod regs;
mod state;
#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};

use crate::addr::VcpuId;
use crate::capability::{CapabilityReport, CapabilitySet};
use crate::error::{Error, Result};
use crate::event::{Event, Response};
use crate::registers::RegisterSnapshot;

pub use pending::PendingEvent;
use state::State;

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
/// and only on real transitions (first pause, last release, one answer per event),
/// never while holding its lock. [`ParkOps::answer`] may run for several vCPUs at
/// once; [`ParkOps::stop`] and [`ParkOps::run`] run one at a time and never beside an
/// answer.
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
    /// MSRs a register write may name). The default accepts. Not called for a plain
    /// [`Response::default`] (continue, no side effects), which every backend takes.
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

/// The capability table with its supported rows as a set.
struct Capabilities {
    report: Arc<CapabilityReport>,
    supported: CapabilitySet,
}

impl Capabilities {
    fn new(report: CapabilityReport) -> Self {
        Self {
            supported: report.supported_set(),
            report: Arc::new(report),
        }
    }

    /// [`CapabilityReport::require_all`] with a bit test on the common path.
    fn require_all(&self, caps: CapabilitySet) -> Result<()> {
        if caps.is_subset(self.supported) {
            return Ok(());
        }
        self.report.require_all(caps)
    }
}

/// The parked vCPUs of one guest. See the [module documentation](self).
pub struct Parking {
    ops: Arc<dyn ParkOps>,
    state: Mutex<State>,
    /// Signalled when a transition or an answer in flight ends.
    done: Condvar,
    /// Mirror of `state.all_pauses`, readable without the lock.
    all_paused: AtomicU32,
    closed: AtomicBool,
    capabilities: RwLock<Capabilities>,
}

impl fmt::Debug for Parking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Parking")
            .field("all_paused", &self.all_paused.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Why a caller waits for the backend calls in flight.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Until no transition is in flight.
    Transition,
    /// Until neither a transition nor an answer is in flight (to start a transition).
    Everything,
    /// Until no transition is in flight or waiting (to start an answer).
    Answer,
}

impl Parking {
    /// The parking of a guest whose backend primitives are `ops` and whose capability
    /// table is `capabilities` (responses and register writes are checked against it).
    pub fn new(ops: Arc<dyn ParkOps>, capabilities: CapabilityReport) -> Arc<Self> {
        Arc::new(Self {
            ops,
            state: Mutex::new(State::default()),
            done: Condvar::new(),
            all_paused: AtomicU32::new(0),
            closed: AtomicBool::new(false),
            capabilities: RwLock::new(Capabilities::new(capabilities)),
        })
    }

    /// The capability table in force.
    pub fn capabilities(&self) -> Arc<CapabilityReport> {
        Arc::clone(&self.caps().report)
    }

    fn caps(&self) -> std::sync::RwLockReadGuard<'_, Capabilities> {
        self.capabilities.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the capability table (a session that learns more about its host, or
    /// wraps a sub-session, declares its own).
    pub fn set_capabilities(&self, capabilities: CapabilityReport) {
        *self.capabilities.write().unwrap_or_else(|e| e.into_inner()) =
            Capabilities::new(capabilities);
    }

    /// Whether a pause of the whole guest is held. Lock-free: backends may call it while
    /// holding their own locks.
    pub fn is_paused(&self) -> bool {
        self.all_paused.load(Ordering::SeqCst) > 0
    }

    /// Whether `vcpu` is parked (by an event or a pause).
    pub fn is_parked(&self, vcpu: VcpuId) -> bool {
        self.lock().parked(vcpu)
    }

    /// Number of outstanding pauses of the whole guest.
    pub fn pause_count(&self) -> u32 {
        self.all_paused.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sync_mirror(&self, st: &State) {
        self.all_paused.store(st.all_pauses, Ordering::SeqCst);
    }

    /// Waits (releasing the lock) until `what` allows the caller to go on. Each wait
    /// lasts as long as a backend call in flight, which the backend bounds.
    fn wait<'a>(&'a self, mut st: MutexGuard<'a, State>, what: Wait) -> MutexGuard<'a, State> {
        let blocked = |st: &State| match what {
            Wait::Transition => st.transition,
            Wait::Everything => st.transition || st.answering > 0,
            Wait::Answer => st.transition || st.transitions_waiting > 0,
        };
        if what == Wait::Everything {
            st.transitions_waiting += 1;
        }
        while blocked(&st) {
            st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if what == Wait::Everything {
            st.transitions_waiting -= 1;
        }
        st
    }

    /// Marks the end of a transition (under the lock) and wakes the waiters.
    fn end_transition(&self, st: &mut State) {
        st.transition = false;
        self.done.notify_all();
    }

    /// Pauses what `scope` covers (stopping it only if nothing parked it yet) and
    /// returns the guard that ends this pause.
    pub fn pause(&self, scope: PauseScope) -> Result<PauseGuard<'_>> {
        if let PauseScope::Vcpu(_) = scope {
            if !self.ops.can_pause_vcpu() {
                return Err(Error::unsupported(
                    "per-vCPU pause",
                    "this backend stops the whole guest at once; pause every vCPU",
                ));
            }
        }
        let mut st = self.lock();
        loop {
            st = self.wait(st, Wait::Transition);
            if st.closed {
                return Err(closed_error());
            }
            let stopped = match scope {
                PauseScope::All => st.all_pauses > 0,
                PauseScope::Vcpu(v) => st.parked(v),
            };
            if stopped {
                self.count_pause(&mut st, scope)?;
                return Ok(self.guard(scope));
            }
            if st.answering == 0 {
                break;
            }
            st = self.wait(st, Wait::Everything);
        }
        st.transition = true;
        drop(st);
        let learnt = self.ops.stop(scope);
        let mut st = self.lock();
        self.end_transition(&mut st);
        for (vcpu, snap) in learnt? {
            st.vcpu_mut(vcpu).cache().merge(&snap);
        }
        self.count_pause(&mut st, scope)?;
        Ok(self.guard(scope))
    }

    fn count_pause(&self, st: &mut State, scope: PauseScope) -> Result<()> {
        match scope {
            PauseScope::All => {
                st.all_pauses = st.all_pauses.checked_add(1).ok_or_else(overflow)?;
                self.sync_mirror(st);
            }
            PauseScope::Vcpu(vcpu) => {
                let v = st.vcpu_mut(vcpu);
                v.pauses = v.pauses.checked_add(1).ok_or_else(overflow)?;
            }
        }
        Ok(())
    }

    fn guard(&self, scope: PauseScope) -> PauseGuard<'_> {
        PauseGuard {
            parking: self,
            scope,
            released: false,
        }
    }

    fn release(&self, scope: PauseScope) -> Result<()> {
        let mut st = self.lock();
        loop {
            st = self.wait(st, Wait::Transition);
            if st.closed {
                return Ok(());
            }
            // Whether this release ends the last reason to stop what `scope` covers.
            let last = match scope {
                PauseScope::All => match st.all_pauses {
                    0 => return Err(not_paused()),
                    1 => true,
                    _ => {
                        st.all_pauses -= 1;
                        self.sync_mirror(&st);
                        return Ok(());
                    }
                },
                PauseScope::Vcpu(vcpu) => {
                    let all = st.all_pauses;
                    let v = st
                        .vcpus
                        .get_mut(usize::from(vcpu.0))
                        .filter(|v| v.pauses > 0)
                        .ok_or_else(not_paused)?;
                    if v.pauses > 1 || v.in_event || all > 0 {
                        v.pauses -= 1;
                        return Ok(());
                    }
                    true
                }
            };
            if last && st.answering == 0 {
                break;
            }
            st = self.wait(st, Wait::Everything);
        }
        let (still, writes) = match scope {
            PauseScope::All => st.release_plan(|v| v.held()),
            PauseScope::Vcpu(vcpu) => {
                let writes = st
                    .vcpu(vcpu)
                    .and_then(|v| v.queued.clone())
                    .map(|q| (vcpu, q));
                (Vec::new(), writes.into_iter().collect())
            }
        };
        st.transition = true;
        drop(st);
        let ran = self.ops.run(scope, &writes, &still);
        let mut st = self.lock();
        self.end_transition(&mut st);
        // A failed resume keeps the pause (and the queued writes) so that a later
        // release or the session's teardown retries it.
        ran?;
        for (id, _) in &writes {
            st.vcpu_mut(*id).queued = None;
        }
        match scope {
            PauseScope::All => {
                st.all_pauses = 0;
                self.sync_mirror(&st);
            }
            PauseScope::Vcpu(vcpu) => st.vcpu_mut(vcpu).pauses = 0,
        }
        st.generation += 1;
        st.prune();
        Ok(())
    }

    /// Ends every pause (resuming the guest) and stops calling the backend: for a
    /// session's teardown. Events still pending are the backend's to answer (it tears
    /// down its host connection); their guards become inert. Waits for the backend
    /// calls in flight (each bounded by the backend) before it runs.
    pub fn shutdown(&self) -> Result<()> {
        let mut st = self.lock();
        if st.closed {
            return Ok(());
        }
        st = self.wait(st, Wait::Everything);
        if st.closed {
            return Ok(());
        }
        let mut result = Ok(());
        if st.all_pauses > 0 || st.vcpus.iter().any(|v| v.pauses > 0) {
            let (still, writes) = st.release_plan(|v| v.in_event);
            st.transition = true;
            drop(st);
            result = self.ops.run(PauseScope::All, &writes, &still);
            st = self.lock();
            self.end_transition(&mut st);
        }
        st.closed = true;
        st.all_pauses = 0;
        st.vcpus.clear();
        st.generation += 1;
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
