//! The book-keeping behind [`super::Parking`]'s lock: what parks each vCPU, and which
//! backend calls are in flight outside the lock.

use crate::addr::VcpuId;
use crate::event::EventRegisters;
use crate::registers::RegisterSnapshot;

/// What is known of one vCPU.
#[derive(Debug, Default)]
pub(super) struct VcpuPark {
    /// Waiting for the answer to an event.
    pub(super) in_event: bool,
    /// Pauses of this vCPU alone.
    pub(super) pauses: u32,
    /// What is known of its registers while parked (see [`VcpuPark::cache`]). Boxed:
    /// the per-event fields of the vCPUs' table then share a cache line or two.
    known: Box<RegisterSnapshot>,
    /// `known` may hold something (it was handed out since it was last emptied): an
    /// event nobody read the registers of leaves it alone, so releasing the vCPU
    /// does not write the snapshot's eight scattered `None`s again.
    known_used: bool,
    /// The registers of the event it waits in, not yet merged into `known`: shared
    /// with the tool's event and decoded only when a read or write needs them.
    event_registers: EventRegisters,
    /// Register writes to apply when it is released.
    pub(super) queued: Option<RegisterSnapshot>,
}

impl VcpuPark {
    pub(super) fn held(&self) -> bool {
        self.in_event || self.pauses > 0
    }

    /// Notes the registers of the event the vCPU now waits in. They take precedence
    /// over what was known (from a pause), and writes queued meanwhile over them.
    pub(super) fn set_event_registers(&mut self, regs: &EventRegisters) {
        if !self.event_registers.is_absent() {
            self.settle(); // one event at a time; merged in order all the same
        }
        self.event_registers = regs.clone();
    }

    /// What is known of its registers while parked: the event's registers merged
    /// under the writes queued since (decoded now, if they were not yet).
    pub(super) fn cache(&mut self) -> &mut RegisterSnapshot {
        self.settle();
        self.known_used = true;
        &mut self.known
    }

    fn settle(&mut self) {
        if self.event_registers.is_absent() {
            return;
        }
        let regs = std::mem::take(&mut self.event_registers);
        self.known_used = true;
        if self.known.is_empty() {
            self.known.as_mut().clone_from(regs.snapshot());
        } else {
            self.known.merge(&regs);
        }
        if let Some(q) = &self.queued {
            // Writes queued under a pause stay visible to reads.
            self.known.merge(q);
        }
    }

    /// Forgets its registers (it runs, or its answer changes them).
    pub(super) fn forget_registers(&mut self) {
        self.event_registers = EventRegisters::default();
        if std::mem::take(&mut self.known_used) {
            self.known.clear();
        }
    }
}

/// Everything [`super::Parking`] guards with its lock.
///
/// Backend calls happen outside the lock; what they need is taken out under it and
/// the result put back under it. Two kinds of call run outside it:
///
/// * a **transition** (`stop` or `run`, and the session's shutdown): at most one at a
///   time, and none while an answer is in flight, because it acts on what every vCPU's
///   parking says at its start; a pause or resume that finds one in flight waits for
///   its end, so counts and the backend state they imply stay one step;
/// * **answers**: any number at once (different vCPUs; a vCPU has at most one event),
///   but none starts while a transition runs or waits to run.
#[derive(Debug, Default)]
pub(super) struct State {
    /// Pauses of the whole guest.
    pub(super) all_pauses: u32,
    /// Indexed by vCPU id, grown on demand (vCPU ids are dense and bounded by the
    /// backend: a vector spares a tree node allocation per event).
    pub(super) vcpus: Vec<VcpuPark>,
    /// The session ended: nothing is called any more.
    pub(super) closed: bool,
    /// A transition is in flight outside the lock.
    pub(super) transition: bool,
    /// Transitions waiting for in-flight answers to end: no new answer starts.
    pub(super) transitions_waiting: u32,
    /// Answers in flight outside the lock.
    pub(super) answering: u32,
    /// Bumped whenever a parked vCPU is released: a register fetch that ran outside
    /// the lock caches its result only if nothing was released meanwhile.
    pub(super) generation: u64,
}

impl State {
    pub(super) fn vcpu(&self, vcpu: VcpuId) -> Option<&VcpuPark> {
        self.vcpus.get(usize::from(vcpu.0))
    }

    pub(super) fn vcpu_mut(&mut self, vcpu: VcpuId) -> &mut VcpuPark {
        let i = usize::from(vcpu.0);
        if i >= self.vcpus.len() {
            self.vcpus.resize_with(i + 1, VcpuPark::default);
        }
        &mut self.vcpus[i]
    }

    pub(super) fn parked(&self, vcpu: VcpuId) -> bool {
        self.all_pauses > 0 || self.vcpu(vcpu).is_some_and(VcpuPark::held)
    }

    pub(super) fn nothing_parked(&self) -> bool {
        self.all_pauses == 0 && !self.vcpus.iter().any(VcpuPark::held)
    }

    /// `(id, parking)` of every vCPU known.
    pub(super) fn iter(&self) -> impl Iterator<Item = (VcpuId, &VcpuPark)> {
        self.vcpus
            .iter()
            .enumerate()
            .map(|(i, v)| (VcpuId(i as u16), v))
    }

    /// vCPUs that stay stopped when a pause of the whole guest ends, and the writes
    /// queued for the others (`held` says what keeps a vCPU stopped).
    pub(super) fn release_plan(
        &self,
        held: impl Fn(&VcpuPark) -> bool,
    ) -> (Vec<VcpuId>, Vec<(VcpuId, RegisterSnapshot)>) {
        let still = self
            .iter()
            .filter(|(_, v)| held(v))
            .map(|(id, _)| id)
            .collect();
        let writes = self
            .iter()
            .filter(|(_, v)| !held(v))
            .filter_map(|(id, v)| v.queued.clone().map(|q| (id, q)))
            .collect();
        (still, writes)
    }

    /// Forgets the caches of vCPUs that run.
    pub(super) fn prune(&mut self) {
        if self.all_pauses > 0 {
            return;
        }
        for v in &mut self.vcpus {
            if !v.held() {
                v.forget_registers();
            }
        }
    }
}
