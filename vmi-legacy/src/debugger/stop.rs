//! The stop state machine: whether the VM runs, stopping and resuming it, classifying
//! stop replies into [`StopEvent`]s, stepping over breakpoints and single-stepping.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use vmi_core::{Error, Result, VcpuId, VcpuSet};

use super::events::{StopEvent, Watch};
use crate::gdb::codec::StopReason;
use crate::gdb::{BreakpointKind, GdbClient};

/// SIGTRAP: breakpoints, watchpoints and steps.
const SIGTRAP: u8 = 5;
/// SIGABRT: QEMU reports the run state `internal-error` (e.g. a KVM emulation failure).
const SIGABRT: u8 = 6;

/// The page-table root in CR3: without the PCID (11:0) and no-flush (63) bits.
pub(super) const CR3_ROOT_MASK: u64 = 0x000f_ffff_ffff_f000;

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) client: GdbClient,
    pub(super) running: bool,
    pub(super) vcpus: u32,
    /// Breakpoint addresses, each with the address spaces (CR3 page-table roots) its
    /// hits are reported in; `None` among them: every address space.
    pub(super) breakpoints: BTreeMap<u64, BTreeSet<Option<u64>>>,
    pub(super) watches: BTreeSet<Watch>,
    pub(super) int3: bool,
    pub(super) accelerator: super::Accelerator,
    pub(super) sstep_mask: u64,
    pub(super) singlestep: VcpuSet,
    /// Stops seen (e.g. while interrupting) and not yet handed out.
    pub(super) queued: VecDeque<StopEvent>,
    /// The event awaiting its reply: (id, event).
    pub(super) outstanding: Option<(u64, StopEvent)>,
    pub(super) next_id: u64,
    pub(super) next_step_vcpu: u32,
    pub(super) regnums: BTreeMap<String, (usize, usize)>,
    /// `D` was sent: the stub is no longer ours.
    pub(super) client_detached: bool,
}

impl Inner {
    pub(super) fn thread(&self, vcpu: VcpuId) -> Result<u64> {
        if u32::from(vcpu.raw()) >= self.vcpus {
            return Err(Error::NoSuchVcpu {
                vcpu,
                count: self.vcpus,
            });
        }
        Ok(u64::from(vcpu.raw()) + 1)
    }

    pub(super) fn resume(&mut self) -> Result<()> {
        if !self.running {
            self.client.resume()?;
            self.running = true;
        }
        Ok(())
    }

    /// Stops a running VM; a stop that is not our interrupt is queued as an event.
    pub(super) fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let stop = self.client.interrupt()?;
        self.running = false;
        if let Some(ev) = self.classify(&stop, false)? {
            self.queued.push_back(ev);
        }
        Ok(())
    }

    pub(super) fn rip(&mut self, vcpu: VcpuId) -> Result<u64> {
        self.read_reg(vcpu, "rip")
    }

    /// One register of `vcpu`. Under KVM QEMU's `p` answers from its copy of the vCPU
    /// state without fetching it from KVM (stale since the last sync: measured `rip`
    /// 0x18 at a breakpoint), while `g` synchronises it first, so KVM reads use `g`.
    pub(super) fn read_reg(&mut self, vcpu: VcpuId, name: &str) -> Result<u64> {
        if self.accelerator == super::Accelerator::Kvm {
            return self.read_g(vcpu)?.get(name).copied().ok_or_else(|| {
                Error::malformed("gdbstub g packet", format!("no register {name}"))
            });
        }
        let t = self.thread(vcpu)?;
        self.client.select_thread(t)?;
        self.client.read_register_u64(name)
    }
    /// Turns a stop reply into an event, or `None` for a stop that is not one (our own
    /// interrupt, a breakpoint hit without the INT3 monitor — stepped over here).
    pub(super) fn classify(
        &mut self,
        stop: &StopReason,
        stepping: bool,
    ) -> Result<Option<StopEvent>> {
        let StopReason::Signal {
            signal,
            thread,
            watch,
            ..
        } = stop
        else {
            return Err(Error::Disconnected {
                reason: format!("the gdbstub target ended: {stop:?}").into(),
            });
        };
        if *signal == SIGABRT {
            return Err(Error::Disconnected {
                reason: "the VM stopped in QEMU's internal-error state (SIGABRT from the \
                         gdbstub; under KVM typically an emulation failure: see QEMU's stderr)"
                    .into(),
            });
        }
        if *signal != SIGTRAP {
            return Ok(None);
        }
        let vcpu = VcpuId(thread.map_or(0, |t| t.saturating_sub(1)) as u16);
        if let Some((kind, addr)) = watch {
            return Ok(Some(StopEvent::Watch {
                vcpu,
                kind: *kind,
                addr: *addr,
            }));
        }
        let rip = self.rip(vcpu)?;
        if self.breakpoints.contains_key(&rip) {
            if self.int3 && self.in_breakpoint_space(vcpu, rip)? {
                return Ok(Some(StopEvent::Breakpoint { vcpu, rip }));
            }
            if !stepping {
                // Not monitored, or another address space: step over it silently.
                if let Some(ev) = self.step_over(vcpu, rip)? {
                    return Ok(Some(ev));
                }
                return Ok(None);
            }
        }
        if stepping {
            return Ok(Some(StopEvent::Singlestep { vcpu, rip }));
        }
        Ok(None)
    }

    /// Removes the breakpoint at `rip`, single-steps `vcpu`, reinserts it. Returns the
    /// event the step produced, if any (a watchpoint, or a step while single-stepping is
    /// on for `vcpu`).
    pub(super) fn step_over(&mut self, vcpu: VcpuId, rip: u64) -> Result<Option<StopEvent>> {
        let t = self.thread(vcpu)?;
        let had = self.breakpoints.contains_key(&rip);
        if had {
            let kind = self.accelerator.breakpoint_kind();
            self.client.remove_breakpoint(kind, rip, 1)?;
        }
        let stop = self.client.step_thread(t);
        if had {
            let kind = self.accelerator.breakpoint_kind();
            self.client.insert_breakpoint(kind, rip, 1)?;
        }
        let stop = stop?;
        let stepping = self.singlestep.contains(vcpu);
        if let StopReason::Signal {
            watch: Some((kind, addr)),
            ..
        } = stop
        {
            return Ok(Some(StopEvent::Watch { vcpu, kind, addr }));
        }
        if stepping {
            let rip = self.rip(vcpu)?;
            return Ok(Some(StopEvent::Singlestep { vcpu, rip }));
        }
        Ok(None)
    }

    /// Whether a hit of the breakpoint at `rip` on `vcpu` is in one of the address
    /// spaces it was set for.
    fn in_breakpoint_space(&mut self, vcpu: VcpuId, rip: u64) -> Result<bool> {
        let Some(spaces) = self.breakpoints.get(&rip) else {
            return Ok(false);
        };
        if spaces.contains(&None) {
            return Ok(true);
        }
        let spaces = spaces.clone();
        let cr3 = self.read_reg(vcpu, "cr3")? & CR3_ROOT_MASK;
        Ok(spaces.contains(&Some(cr3)))
    }

    /// One single step of the next vCPU that has single-stepping on.
    pub(super) fn step_next(&mut self) -> Result<Option<StopEvent>> {
        let n = self.vcpus.max(1);
        let v = (0..n)
            .map(|i| (self.next_step_vcpu + i) % n)
            .find(|v| self.singlestep.contains(VcpuId(*v as u16)))
            .unwrap_or(0);
        self.next_step_vcpu = (v + 1) % n;
        let vcpu = VcpuId(v as u16);
        let rip = self.rip(vcpu)?;
        if self.breakpoints.contains_key(&rip) {
            return self.step_over(vcpu, rip);
        }
        let stop = self.client.step_thread(u64::from(v) + 1)?;
        self.classify(&stop, true)
    }
}

impl Inner {
    /// Inserts a breakpoint or watchpoint; under KVM a refusal means the 4 debug
    /// registers are taken, said so in the error.
    pub(super) fn insert(&mut self, kind: BreakpointKind, addr: u64, len: u64) -> Result<()> {
        match self.client.insert_breakpoint(kind, addr, len) {
            Err(Error::Backend { source, .. }) if self.accelerator == super::Accelerator::Kvm => {
                Err(Error::unsupported(
                    format!("{kind:?} at {addr:#x} under KVM"),
                    format!(
                        "QEMU refused it ({source}): under KVM breakpoints and watchpoints \
                         share the vCPU's 4 debug registers ({} breakpoints and {} \
                         watchpoints are set), watchpoints must be 1, 2, 4 or 8 bytes \
                         aligned to their length, and software breakpoints are not used \
                         (see vmi_legacy::Accelerator::Kvm)",
                        self.breakpoints.len(),
                        self.watches.len()
                    ),
                ))
            }
            r => r,
        }
    }

    /// Removes every breakpoint and watchpoint, turns single-stepping off, restores
    /// virtual addressing and detaches (QEMU resumes the guest). Every step is tried;
    /// the first failure is reported.
    pub(super) fn detach(&mut self) -> Result<()> {
        let mut first_err = None;
        if self.running {
            if let Err(e) = self.stop() {
                first_err.get_or_insert(e);
            }
        }
        for bp in std::mem::take(&mut self.breakpoints).into_keys() {
            let kind = self.accelerator.breakpoint_kind();
            if let Err(e) = self.client.remove_breakpoint(kind, bp, 1) {
                first_err.get_or_insert(e);
            }
        }
        for w in std::mem::take(&mut self.watches) {
            if let Err(e) =
                self.client
                    .remove_breakpoint(BreakpointKind::Watch(w.kind()), w.gva, w.len)
            {
                first_err.get_or_insert(e);
            }
        }
        self.singlestep = VcpuSet::new();
        self.int3 = false;
        self.outstanding = None;
        self.queued.clear();
        let _ = self.client.set_physical_mode(false);
        if self.client_detached {
            return first_err.map_or(Ok(()), Err);
        }
        let detached = self.client.detach();
        self.client_detached = true;
        self.running = true;
        match (first_err, detached) {
            (Some(e), _) | (None, Err(e)) => Err(e),
            (None, Ok(())) => Ok(()),
        }
    }
}
