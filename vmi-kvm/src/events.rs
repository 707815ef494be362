//! Monitors and events: [`Monitor`] → `CONTROL_EVENTS` / `CONTROL_CR` / `CONTROL_MSR`
//! / `CONTROL_SINGLESTEP` / `VM_CONTROL_EVENTS`, and kvmi-proto events →
//! `vmi-core` [`EventKind`]s with every field the wire carries.
//!
//! What is enabled is recorded (`Monitors`) so that the teardown can undo it.
//!
//! [`Monitor::AllMsrs`] intercepts every MSR the host accepts: `VCPU_CONTROL_MSR` is
//! tried for each MSR of the ranges KVM's MSR bitmaps cover ([`ALL_MSR_RANGES`],
//! 2 × 8192 indices; the kvmi-v7 code refuses the range ends with `EINVAL`,
//! kvmi-protocol.md §3 id 11), per vCPU, pipelined [`COMMAND_WINDOW`] requests in flight;
//! refusals are tolerated and what was accepted is recorded, so that disabling the
//! monitor and the teardown undo exactly that. The cost: 16 384 commands per vCPU
//! to enable and one per accepted MSR to disable, and afterwards every MSR write of
//! the guest exits to the introspector (most OSes write few MSRs outside context
//! switches, but those are frequent).
//! `PAUSE_VCPU` events never reach the tool (see [`crate::park`]); UNHOOK does, as
//! [`EventKind::Unhook`] (the session enables it at connect where the host allows
//! it). Once the tool has answered or dropped that event — it may still use the
//! session while it holds it, to clean up — the next [`EventControl::wait_event`]
//! (and so `dispatch` and [`crate::dispatch::dispatch_parallel`]) runs the teardown
//! and fails with [`Error::Disconnected`]: QEMU sees the socket close promptly.
//!
//! [`EventControl::wait_event`]: vmi_core::EventControl::wait_event

use std::collections::BTreeSet;
use std::time::Duration;

use kvmi_proto::sys;
use kvmi_proto::{Event as KEvent, EventKind as KKind, Flow, Request};
use vmi_core::event::{
    DescriptorTableReg, InterruptKind, InterruptionType, RegisterAccess, RegisterId,
};
use vmi_core::{
    Access, Deadline, Error, Event, EventKind, Gfn, Gva, Monitor, PendingEvent, Result, VcpuId,
    View,
};

use crate::error::proto_at;
use crate::inbox::Next;
use crate::registers::EventArchDecoder;
use crate::session::{KvmiVm, Shared, PUMP_SLICE};

/// What the session enabled on the host.
#[derive(Debug, Default, Clone)]
pub(crate) struct Monitors {
    /// (vCPU, event id) enabled with `VCPU_CONTROL_EVENTS`, with a use count.
    pub(crate) vcpu_events: std::collections::BTreeMap<(u16, u8), u32>,
    /// (vCPU, CR) intercepted.
    pub(crate) crs: BTreeSet<(u16, u32)>,
    /// (vCPU, MSR) intercepted.
    pub(crate) msrs: BTreeSet<(u16, u32)>,
    /// MSRs single-MSR monitors intercept (on every vCPU).
    pub(crate) single_msrs: BTreeSet<u32>,
    /// (vCPU, MSR) the host accepted for [`Monitor::AllMsrs`], while it is enabled.
    pub(crate) all_msrs: Option<BTreeSet<(u16, u32)>>,
    /// VM events enabled with `VM_CONTROL_EVENTS`.
    pub(crate) vm_events: BTreeSet<u8>,
    /// The tool monitors TRAP events (else they are answered internally).
    pub(crate) trap: bool,
    /// `RegisterFilter::equal` of CR monitors, honoured here (KVMi has no such
    /// filter): writes of other values are answered internally.
    pub(crate) cr_equal: std::collections::BTreeMap<u32, u64>,
    /// The same for MSR monitors.
    pub(crate) msr_equal: std::collections::BTreeMap<u32, u64>,
    /// CRs whose monitor has `RegisterFilter::on_change`: writes of the value the
    /// register holds are answered internally. The host sends none (it reports only
    /// writes that change the value, kvmi-protocol.md §4.3); this holds the contract
    /// also against a host that does.
    pub(crate) cr_on_change: BTreeSet<u32>,
    /// The same for MSR monitors.
    pub(crate) msr_on_change: BTreeSet<u32>,
    /// CRs whose monitor has `RegisterFilter::asynchronous` (see [`Detached`]).
    pub(crate) cr_async: BTreeSet<u32>,
    /// The same for MSR monitors.
    pub(crate) msr_async: BTreeSet<u32>,
    /// vCPUs on which the tool armed singlestep (`CONTROL_SINGLESTEP`).
    pub(crate) singlestep: BTreeSet<u16>,
}

impl Monitors {
    /// Whether routing has anything to look up here: a value filter, an asynchronous
    /// monitor or TRAP delivery (the monitors lock's bit).
    pub(crate) fn routing_filters(&self) -> bool {
        self.trap
            || !self.cr_equal.is_empty()
            || !self.msr_equal.is_empty()
            || !self.cr_on_change.is_empty()
            || !self.msr_on_change.is_empty()
            || !self.cr_async.is_empty()
            || !self.msr_async.is_empty()
    }

    /// Whether a CR/MSR event is filtered out by an `equal` or `on_change` filter.
    pub(crate) fn filtered(&self, kind: &KKind) -> bool {
        match kind {
            KKind::Cr(c) => {
                let cr = u32::from(c.cr);
                self.cr_equal.get(&cr).is_some_and(|v| *v != c.new_value)
                    || (self.cr_on_change.contains(&cr) && c.new_value == c.old_value)
            }
            KKind::Msr(m) => {
                self.msr_equal
                    .get(&m.msr)
                    .is_some_and(|v| *v != m.new_value)
                    || (self.msr_on_change.contains(&m.msr) && m.new_value == m.old_value)
            }
            _ => false,
        }
    }

    /// Whether a CR/MSR event is for an asynchronous monitor.
    pub(crate) fn asynchronous(&self, kind: &KKind) -> bool {
        match kind {
            KKind::Cr(c) => self.cr_async.contains(&u32::from(c.cr)),
            KKind::Msr(m) => self.msr_async.contains(&m.msr),
            _ => false,
        }
    }
}

/// One host command whose reply carries no data.
pub(crate) type Command = Request<()>;

pub(crate) fn command_events(vcpu: u16, event: u8, enable: bool) -> Command {
    Request::control_events(vcpu, event, enable)
}

pub(crate) fn control_singlestep(vcpu: u16, enable: bool) -> Command {
    Request::control_singlestep(vcpu, enable)
}

impl Shared {
    /// Sends `commands` (each its own request, so every error is seen) through
    /// kvmi-proto's pipeline, [`COMMAND_WINDOW`] in flight, under `deadline`. Returns
    /// the first error; every reply of what was sent is waited for either way.
    pub(crate) fn pipeline(&self, commands: Vec<Command>, deadline: Deadline) -> Result<()> {
        let names: Vec<&'static str> = commands.iter().map(Request::name).collect();
        let mut first = None;
        let sent = self
            .conn
            .pipeline(commands, COMMAND_WINDOW, deadline.instant(), |i, r| {
                if let Err(e) = r {
                    first.get_or_insert_with(|| proto_at(names[i], None, None, e));
                }
                Flow::Continue
            });
        match sent {
            Err(e) => {
                Err(first.unwrap_or_else(|| proto_at("replies to host commands", None, None, e)))
            }
            Ok(n) if n < names.len() => {
                Err(first.unwrap_or_else(|| deadline.timeout_error("replies to host commands")))
            }
            Ok(_) => first.map_or(Ok(()), Err),
        }
    }

    /// Sends `commands` with at most [`COMMAND_WINDOW`] in flight, each reply waited for
    /// at most the request timeout. Returns whether the host accepted each command
    /// (`false` for a `KVM_E*` refusal; `true` when the outcome is unknown) for those
    /// sent, and the first failure of another kind (a timeout, the connection gone),
    /// after which nothing more is sent.
    pub(crate) fn pipeline_each(&self, commands: Vec<Command>) -> (Vec<bool>, Option<Error>) {
        let names: Vec<&'static str> = commands.iter().map(Request::name).collect();
        let mut accepted = Vec::with_capacity(commands.len());
        let mut failed = None;
        let sent = self.conn.pipeline(commands, COMMAND_WINDOW, None, |i, r| {
            match r {
                Ok(()) => accepted.push(true),
                Err(kvmi_proto::ProtoError::Kvm { .. }) => accepted.push(false),
                Err(e) => {
                    failed.get_or_insert_with(|| proto_at(names[i], None, None, e));
                    // Unknown outcome: counted as enabled, so that it is undone.
                    accepted.push(true);
                }
            }
            Flow::Continue
        });
        if let Err(e) = sent {
            failed.get_or_insert_with(|| proto_at("host commands", None, None, e));
        }
        (accepted, failed)
    }

    fn request_deadline(&self) -> Deadline {
        Deadline::after(self.conn.config().request_timeout)
    }
}

/// The vCPU-event id and per-register commands `monitor` needs on `vcpu`.
fn plan(monitor: &Monitor) -> Result<(Option<u8>, Option<RegTarget>)> {
    Ok(match monitor {
        Monitor::ControlRegister { cr, access, .. } => {
            write_only(*access)?;
            if ![0u8, 3, 4].contains(cr) {
                return Err(Error::unsupported(
                    format!("CR{cr} events"),
                    "KVMi intercepts CR0, CR3 and CR4 only (kvmi-protocol.md §3 id 10)",
                ));
            }
            (
                Some(sys::KVMI_EVENT_CR),
                Some(RegTarget::Cr(u32::from(*cr))),
            )
        }
        Monitor::Msr { index, access, .. } => {
            write_only(*access)?;
            if !interceptable_msr(*index) {
                return Err(Error::unsupported(
                    format!("MSR {index:#x} events"),
                    "KVMi intercepts MSRs below 0x1fff and in 0xc0000001..0xc0001fff only \
                     (kvmi-protocol.md §3 id 11)",
                ));
            }
            (Some(sys::KVMI_EVENT_MSR), Some(RegTarget::Msr(*index)))
        }
        Monitor::AllMsrs { access } => {
            write_only(*access)?;
            (Some(sys::KVMI_EVENT_MSR), None)
        }
        Monitor::Xsetbv => (Some(sys::KVMI_EVENT_XSETBV), None),
        Monitor::Interrupt(InterruptKind::Int3) => (Some(sys::KVMI_EVENT_BREAKPOINT), None),
        Monitor::Singlestep(_) => (Some(sys::KVMI_EVENT_SINGLESTEP), None),
        Monitor::Cpuid => (Some(sys::KVMI_EVENT_CPUID), None),
        Monitor::Hypercall => (Some(sys::KVMI_EVENT_HYPERCALL), None),
        Monitor::Descriptor => (Some(sys::KVMI_EVENT_DESCRIPTOR), None),
        Monitor::MemoryAccess => (Some(sys::KVMI_EVENT_PF), None),
        Monitor::Trap => (Some(sys::KVMI_EVENT_TRAP), None),
        Monitor::VcpuCreate => (None, None),
        other => {
            return Err(Error::unsupported(
                format!("{other:?}"),
                "no KVMi event for it (kvmi-protocol.md §4.3)",
            ))
        }
    })
}

fn flag(set: &mut BTreeSet<u32>, key: u32, on: bool) {
    if on {
        set.insert(key);
    } else {
        set.remove(&key);
    }
}

enum RegTarget {
    Cr(u32),
    Msr(u32),
}

fn write_only(access: RegisterAccess) -> Result<()> {
    match access {
        RegisterAccess::Write => Ok(()),
        _ => Err(Error::unsupported(
            "register read events",
            "KVMi intercepts CR and MSR writes only (kvmi-protocol.md §4.3, §7)",
        )),
    }
}

/// The MSR ranges KVM's write-intercept bitmaps cover, which [`Monitor::AllMsrs`]
/// tries (the host decides which of them it accepts).
pub const ALL_MSR_RANGES: [std::ops::RangeInclusive<u32>; 2] =
    [0..=0x1fff, 0xc000_0000..=0xc000_1fff];

/// Host commands in flight at once in a pipelined burst (enabling
/// [`Monitor::AllMsrs`], the teardown), so that neither side's socket buffer fills
/// while the other waits.
pub const COMMAND_WINDOW: usize = 256;

/// The MSR ranges `VCPU_CONTROL_MSR` accepts (strict bounds, as the kvmi-v7 code).
pub(crate) fn interceptable_msr(m: u32) -> bool {
    m < 0x1fff || (m > 0xc000_0000 && m < 0xc000_1fff)
}

impl KvmiVm {
    fn set_monitor(&self, monitor: &Monitor, enable: bool) -> Result<()> {
        let sh = &self.shared;
        if enable {
            self.parking.capabilities().check_monitor(monitor)?;
        }
        if let Monitor::VcpuCreate = monitor {
            let id = sys::KVMI_EVENT_CREATE_VCPU;
            sh.pipeline(
                vec![Request::control_vm_events(id, enable)],
                sh.request_deadline(),
            )?;
            let mut st = sh.monitors();
            if enable {
                st.vm_events.insert(id);
            } else {
                st.vm_events.remove(&id);
            }
            return Ok(());
        }
        let (event, target) = plan(monitor)?;
        if let Monitor::AllMsrs { .. } = monitor {
            return self.set_all_msrs(enable);
        }
        let vcpus: Vec<u16> = match monitor {
            Monitor::Singlestep(set) => {
                let v: Vec<u16> = set.iter().map(|v| v.0).collect();
                for id in &v {
                    sh.check_vcpu(VcpuId(*id))?;
                }
                v
            }
            _ => (0..sh.vcpu_count as u16).collect(),
        };
        // kvmi-v7 always sends TRAP after an injection; only v6 needs it enabled.
        let event = event.filter(|e| !(*e == sys::KVMI_EVENT_TRAP && sh.facts.v7()));
        let mut cmds = Vec::new();
        {
            let mut st = sh.monitors();
            match monitor {
                Monitor::Trap => st.trap = enable,
                Monitor::ControlRegister { cr, filter, .. } => {
                    let cr = u32::from(*cr);
                    match (enable, filter.equal) {
                        (true, Some(v)) => st.cr_equal.insert(cr, v),
                        _ => st.cr_equal.remove(&cr),
                    };
                    let m = &mut *st;
                    flag(&mut m.cr_on_change, cr, enable && filter.on_change);
                    flag(&mut m.cr_async, cr, enable && filter.asynchronous);
                }
                Monitor::Msr { index, filter, .. } => {
                    match (enable, filter.equal) {
                        (true, Some(v)) => st.msr_equal.insert(*index, v),
                        _ => st.msr_equal.remove(index),
                    };
                    let m = &mut *st;
                    flag(&mut m.single_msrs, *index, enable);
                    flag(&mut m.msr_on_change, *index, enable && filter.on_change);
                    flag(&mut m.msr_async, *index, enable && filter.asynchronous);
                }
                _ => {}
            }
            for &v in &vcpus {
                if let Some(e) = event {
                    let n = st.vcpu_events.entry((v, e)).or_insert(0);
                    if enable {
                        if *n == 0 {
                            cmds.push(command_events(v, e, true));
                        }
                        *n += 1;
                    } else if *n > 0 {
                        *n -= 1;
                        if *n == 0 {
                            cmds.push(command_events(v, e, false));
                        }
                    }
                    if *n == 0 {
                        st.vcpu_events.remove(&(v, e));
                    }
                }
                match &target {
                    Some(RegTarget::Cr(cr)) => {
                        let had = st.crs.contains(&(v, *cr));
                        if had != enable {
                            cmds.push(Request::control_cr(v, *cr, enable));
                        }
                        if enable {
                            st.crs.insert((v, *cr));
                        } else {
                            st.crs.remove(&(v, *cr));
                        }
                    }
                    Some(RegTarget::Msr(m)) => {
                        let had = st.msrs.contains(&(v, *m));
                        // Still needed by MSR_ALL: the intercept stays.
                        let keep =
                            !enable && st.all_msrs.as_ref().is_some_and(|a| a.contains(&(v, *m)));
                        if had != enable && !keep {
                            cmds.push(Request::control_msr(v, *m, enable));
                        }
                        if enable {
                            st.msrs.insert((v, *m));
                        } else if !keep {
                            st.msrs.remove(&(v, *m));
                        }
                    }
                    None => {}
                }
                if let Monitor::Singlestep(_) = monitor {
                    let armed = st.singlestep.contains(&v);
                    if armed != enable {
                        cmds.push(control_singlestep(v, enable));
                        if enable {
                            st.singlestep.insert(v);
                        } else {
                            st.singlestep.remove(&v);
                        }
                    }
                }
            }
        }
        // Interception is enabled after the event, disabled before it.
        if enable {
            cmds.sort_by_key(|c| u16::from(c.id() != sys::KVMI_VCPU_CONTROL_EVENTS));
        } else {
            cmds.sort_by_key(|c| u16::from(c.id() == sys::KVMI_VCPU_CONTROL_EVENTS));
        }
        sh.pipeline(cmds, sh.request_deadline())
    }

    /// [`Monitor::AllMsrs`]: see the module documentation. Enabling it again, or
    /// disabling it when it is not enabled, changes nothing.
    fn set_all_msrs(&self, enable: bool) -> Result<()> {
        let sh = &self.shared;
        let vcpus: Vec<u16> = (0..sh.vcpu_count as u16).collect();
        let ev = sys::KVMI_EVENT_MSR;
        if enable {
            let mut events = Vec::new();
            let mut tries = Vec::new();
            let mut accepted = BTreeSet::new();
            {
                let mut st = sh.monitors();
                if st.all_msrs.is_some() {
                    return Ok(());
                }
                for &v in &vcpus {
                    let n = st.vcpu_events.entry((v, ev)).or_insert(0);
                    if *n == 0 {
                        events.push(command_events(v, ev, true));
                    }
                    *n += 1;
                    for m in ALL_MSR_RANGES.iter().cloned().flatten() {
                        if st.msrs.contains(&(v, m)) {
                            accepted.insert((v, m)); // intercepted already
                        } else {
                            tries.push((v, m));
                        }
                    }
                }
                // Recorded before anything is sent: a failure below leaves a state
                // that disabling (or the teardown) undoes.
                st.all_msrs = Some(accepted);
            }
            sh.pipeline(events, sh.request_deadline())?;
            let cmds: Vec<Command> = tries
                .iter()
                .map(|&(v, m)| Request::control_msr(v, m, true))
                .collect();
            let (results, failed) = sh.pipeline_each(cmds);
            let mut st = sh.monitors();
            let mut any = false;
            for (&(v, m), ok) in tries.iter().zip(results) {
                if ok {
                    st.msrs.insert((v, m));
                    if let Some(a) = st.all_msrs.as_mut() {
                        a.insert((v, m));
                    }
                }
            }
            if let Some(a) = &st.all_msrs {
                any = !a.is_empty();
            }
            drop(st);
            if let Some(e) = failed {
                return Err(e);
            }
            if !any {
                let _ = self.set_all_msrs(false);
                return Err(Error::unsupported(
                    "MSR_ALL",
                    "the host accepted VCPU_CONTROL_MSR for no MSR (kvmi-protocol.md §3 id 11)",
                ));
            }
            Ok(())
        } else {
            let (undo, events) = {
                let mut st = sh.monitors();
                let Some(all) = st.all_msrs.take() else {
                    return Ok(());
                };
                let mut undo = Vec::new();
                for (v, m) in all {
                    if !st.single_msrs.contains(&m) && st.msrs.remove(&(v, m)) {
                        undo.push(Request::control_msr(v, m, false));
                    }
                }
                let mut events = Vec::new();
                for &v in &vcpus {
                    if let Some(n) = st.vcpu_events.get_mut(&(v, ev)) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            st.vcpu_events.remove(&(v, ev));
                            events.push(command_events(v, ev, false));
                        }
                    }
                }
                (undo, events)
            };
            // Interception is removed before the event is disabled.
            let (_, failed) = sh.pipeline_each(undo);
            let disabled = sh.pipeline(events, sh.request_deadline());
            failed.map_or(disabled, Err)
        }
    }

    /// After UNHOOK was answered: tears the session down (once) and reports why
    /// there are no more events.
    fn after_unhook(&self) -> Error {
        let torn = self.close();
        Error::Disconnected {
            reason: match torn {
                Ok(()) => "the host unhooked the VM; the session was torn down".into(),
                Err(e) => format!("the host unhooked the VM; teardown: {e}").into(),
            },
        }
    }

    /// The next event for the tool, waiting up to `timeout`. One inbox lock per look
    /// ([`Inbox::take_next`]); the clock is read only when there is nothing to hand
    /// out: once to place the deadline, then once per further slice.
    ///
    /// [`Inbox::take_next`]: crate::inbox::Inbox::take_next
    fn next_pending(&self, timeout: Duration) -> Result<Option<PendingEvent>> {
        let sh = &self.shared;
        let mut deadline: Option<Deadline> = None;
        loop {
            // Bound first: a guard in the match's scrutinee would live through the arms.
            let next = if sh.inbox_has_news() {
                sh.inbox().take_next(true)
            } else {
                Next::Nothing
            };
            match next {
                Next::Unhooked => return Err(self.after_unhook()),
                Next::Detached(ev) => return Ok(Some(self.detached.event(sh.ticket(), ev))),
                Next::Queued(ev) => return Ok(Some(self.hand_out(ev))),
                Next::Nothing => {}
            }
            if timeout.is_zero() {
                // Only what has arrived: one non-blocking look at the socket.
                match sh.conn.try_next_event() {
                    Ok(Some(ev)) => sh.file(ev),
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(crate::error::proto("waiting for events", e)),
                }
                let next = sh.inbox().take_next(false);
                return Ok(match next {
                    Next::Detached(ev) => Some(self.detached.event(sh.ticket(), ev)),
                    Next::Queued(ev) => Some(self.hand_out(ev)),
                    Next::Unhooked | Next::Nothing => None,
                });
            }
            let slice = match &deadline {
                None => {
                    deadline = Some(Deadline::after(timeout));
                    timeout.min(PUMP_SLICE)
                }
                Some(d) => match d.remaining_capped(PUMP_SLICE) {
                    left if left.is_zero() => return Ok(None),
                    left => left,
                },
            };
            if let Some(ev) = sh.pump_for_tool(slice)? {
                return Ok(Some(self.hand_out(ev)));
            }
        }
    }

    /// Turns a queued kvmi event into the tool's guard; the kvmi guard is kept in the
    /// outstanding table under the ticket.
    #[inline]
    fn hand_out(&self, ev: KEvent) -> PendingEvent {
        let sh = &self.shared;
        let event = convert(sh, &ev);
        let ticket = sh.ticket();
        sh.inbox().outstanding.insert(ticket, ev);
        self.parking.event(ticket, event)
    }
}

/// Enables the UNHOOK VM event where the host allows it (recorded, so the teardown
/// disables it). Without it the tool would never learn that QEMU wants to unhook.
pub(crate) fn enable_unhook(sh: &Shared) -> Option<kvmi_proto::Pending<()>> {
    let id = sys::KVMI_EVENT_UNHOOK;
    if !sh.facts.event(id) {
        return None;
    }
    // Sent without waiting (the session's setup does no round trip, so a host that
    // never answers delays no `accept`); recorded at once, so the teardown disables it
    // (the host, which allows the event, has no reason to refuse either).
    let pending = sh.conn.send(Request::control_vm_events(id, true)).ok()?;
    sh.monitors().vm_events.insert(id);
    Some(pending)
}

/// Most asynchronous events kept for the tool; more are dropped (the host was
/// answered already, only the report is lost) so that a slow tool cannot make the
/// session grow without bound.
pub(crate) const DETACHED_MAX: usize = 1024;

/// The [`ParkOps`] behind asynchronous register events (`RegisterFilter::asynchronous`;
/// KVMi has no such mode, so it is honoured here).
///
/// The host's event is answered at once with continue (the write goes through), in
/// `route`; the `vmi-core` [`Event`] keeps what the host reported — its registers are
/// the vCPU's at the write. Only after the reply is it handed to the tool, as a
/// [`PendingEvent`] of a second, detached [`Parking`] whose answer is a no-op: the
/// guard still consumes on reply and answers on drop, as every `PendingEvent` does,
/// but nothing is sent and the response is ignored (no deny, no value override, no
/// register writes). Because the session's own `Parking` never learns of the event,
/// the vCPU is not parked while the tool holds the guard: register reads go to the
/// running vCPU and writes pause it, as outside any event.
///
/// [`ParkOps`]: vmi_core::park::ParkOps
/// [`Parking`]: vmi_core::park::Parking
pub(crate) struct Detached;

impl vmi_core::park::ParkOps for Detached {
    fn stop(
        &self,
        _scope: vmi_core::PauseScope,
    ) -> Result<Vec<(VcpuId, vmi_core::RegisterSnapshot)>> {
        Err(Error::unsupported(
            "pausing through an asynchronous event",
            "asynchronous events hold no vCPU; pause the session instead",
        ))
    }

    fn run(
        &self,
        _scope: vmi_core::PauseScope,
        _writes: &[(VcpuId, vmi_core::RegisterSnapshot)],
        _still_parked: &[VcpuId],
    ) -> Result<()> {
        Ok(())
    }

    fn answer(
        &self,
        _ticket: vmi_core::park::EventTicket,
        _response: vmi_core::Response,
        _after: vmi_core::park::AfterAnswer,
    ) -> Result<()> {
        Ok(()) // the host was answered when the event arrived
    }
}

/// The `vmi-core` view of a kvmi event.
pub(crate) fn convert(sh: &Shared, ev: &KEvent) -> Event {
    let arch = &ev.common.arch;
    let rip = arch.regs.rip;
    let vcpu = VcpuId(ev.vcpu());
    let kind = match ev.kind {
        KKind::Cr(c) => EventKind::Register {
            register: RegisterId::Cr(c.cr as u8),
            access: RegisterAccess::Write,
            value: c.new_value,
            previous: Some(c.old_value),
        },
        KKind::Msr(m) => EventKind::Register {
            register: RegisterId::Msr(m.msr),
            access: RegisterAccess::Write,
            value: m.new_value,
            previous: Some(m.old_value),
        },
        KKind::Xsetbv => {
            // XSETBV: ECX names the XCR, EDX:EAX is the value; the old one is read
            // from the host (the vCPU waits in the event, so it is still current).
            let xcr = arch.regs.rcx as u32;
            let new_value = (arch.regs.rdx << 32) | (arch.regs.rax & 0xffff_ffff);
            let old_value = if xcr == 0 && sh.facts.v7() {
                sh.conn.get_xcr(vcpu.0, 0).unwrap_or(new_value)
            } else {
                new_value
            };
            EventKind::Xsetbv {
                xcr,
                old_value,
                new_value,
            }
        }
        KKind::Breakpoint(b) => EventKind::Breakpoint {
            gla: Gva(rip),
            gfn: Gfn(b.gpa >> 12),
            offset: b.gpa & 0xfff,
            insn_length: b.insn_len,
        },
        KKind::Hypercall => EventKind::Hypercall {
            gla: Gva(rip),
            gfn: None,
            offset: rip & 0xfff,
        },
        KKind::Pf(pf) => EventKind::MemoryAccess {
            gfn: Gfn(pf.gpa >> 12),
            offset: pf.gpa & 0xfff,
            gla: (pf.gva != sys::KVMI_UNMAPPED_GVA).then_some(Gva(pf.gva)),
            access: Access::from_bits_truncate(pf.access),
            page_walk: false,
        },
        KKind::Trap(t) => {
            let vector = t.vector as u8;
            EventKind::Trap {
                vector,
                kind: match t.type_ {
                    Some(ty) => InterruptionType::from_vmx(ty as u8),
                    None if matches!(vector, 3 | 4) => InterruptionType::SoftwareException,
                    None => InterruptionType::HardwareException,
                },
                error_code: matches!(vector, 8 | 10..=14 | 17 | 21).then_some(t.error_code),
                cr2: t.cr2,
            }
        }
        KKind::Descriptor(d) => EventKind::Descriptor {
            descriptor: match d.descriptor {
                sys::KVMI_DESC_GDTR => DescriptorTableReg::Gdtr,
                sys::KVMI_DESC_LDTR => DescriptorTableReg::Ldtr,
                sys::KVMI_DESC_TR => DescriptorTableReg::Tr,
                _ => DescriptorTableReg::Idtr,
            },
            is_write: d.write != 0,
            exit_info: None,
        },
        KKind::CreateVcpu => EventKind::VcpuCreated,
        KKind::Singlestep { failed } => EventKind::Singlestep {
            gla: Gva(rip),
            gfn: None,
            offset: rip & 0xfff,
            failed,
        },
        KKind::Cpuid(c) => EventKind::Cpuid {
            leaf: c.function,
            subleaf: c.index,
            insn_length: c.insn_length,
        },
        // Only UNHOOK is left: `route` keeps PAUSE_VCPU, CMD_ERROR and unknown ids away.
        _ => EventKind::Unhook,
    };
    // UNHOOK carries no vCPU state (vCPU 0 is nominal): an empty snapshot, so reads
    // of vCPU 0 while it is pending go to the host instead of a meaningless cache.
    let registers = if matches!(kind, EventKind::Unhook) {
        vmi_core::EventRegisters::default()
    } else {
        vmi_core::EventRegisters::lazy::<EventArchDecoder>(ev.shared_info())
    };
    Event {
        vcpu,
        view: View(arch.view),
        registers,
        kind,
    }
}

impl vmi_core::EventControl for KvmiVm {
    fn enable(&self, monitor: &Monitor) -> Result<()> {
        self.set_monitor(monitor, true)
    }

    fn disable(&self, monitor: &Monitor) -> Result<()> {
        self.set_monitor(monitor, false)
    }

    fn wait_event(&self, timeout: Duration) -> Result<Option<PendingEvent>> {
        self.next_pending(timeout)
    }

    fn pending_events(&self) -> Result<usize> {
        let queued = {
            let inbox = self.shared.inbox();
            inbox.queue.len() + inbox.detached.len()
        };
        Ok(queued + self.shared.conn.pending_events())
    }
}
