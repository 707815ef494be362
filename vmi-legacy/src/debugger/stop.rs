//! The stop state machine: whether the VM runs, stopping and resuming it, classifying
//! stop replies into [`StopEvent`]s, stepping over breakpoints and single-stepping.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use vmi_core::paging::{translate, PagingMode};
use vmi_core::{Error, Gpa, Gva, PhysicalMemory, Result, VcpuId, VcpuSet};

use super::events::{StopEvent, Watch};
use super::skip::{nop_length, EFER_LMA, RFLAGS_TF};
use crate::gdb::codec::StopReason;
use crate::gdb::{BreakpointKind, GdbClient};

/// SIGTRAP: breakpoints, watchpoints and steps.
const SIGTRAP: u8 = 5;

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
    /// A faster path to guest RAM than the stub's `m` packets (shared RAM), for page
    /// walks and instruction bytes: [`super::GdbSession::use_memory`].
    pub(super) fast_memory: Option<FastMemory>,
}

/// Guest RAM read without the stub.
#[derive(Clone)]
pub(super) struct FastMemory(pub(super) Arc<dyn PhysicalMemory + Send + Sync>);

impl std::fmt::Debug for FastMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastMemory")
    }
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

    /// RIP of `vcpu`, from its `g` packet (read once per stop: see
    /// [`GdbClient::thread_registers`]).
    pub(super) fn rip(&mut self, vcpu: VcpuId) -> Result<u64> {
        self.g_value(vcpu, "rip")
    }

    /// One register of `vcpu`'s `g` packet by its target-XML name.
    pub(super) fn g_value(&mut self, vcpu: VcpuId, name: &str) -> Result<u64> {
        let t = self.thread(vcpu)?;
        let raw = self.client.thread_registers(t)?;
        let desc = self
            .client
            .register(name)
            .ok_or_else(|| Error::malformed("gdbstub", format!("no {name} in the g packet")))?;
        let n = desc.bitsize.div_ceil(8).min(8);
        let bytes = raw
            .get(desc.offset..desc.offset + n)
            .ok_or_else(|| Error::malformed("gdbstub", format!("g packet without {name}")))?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(v))
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
                // Not monitored, or another address space: get past it silently.
                if let Some(ev) = self.pass_breakpoint(vcpu, rip)? {
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

    /// Gets `vcpu` past the breakpoint at `rip`: by moving RIP past the instruction where
    /// that is all it would do (see `skip`), else by [`Self::step_over`]. Returns the
    /// event the step produced, if any.
    pub(super) fn pass_breakpoint(&mut self, vcpu: VcpuId, rip: u64) -> Result<Option<StopEvent>> {
        if let Some(len) = self.skippable(vcpu, rip)? {
            let (num, size) = *self
                .regnums
                .get("rip")
                .ok_or_else(|| Error::malformed("gdbstub", "no rip in the target XML"))?;
            let t = self.thread(vcpu)?;
            self.client.select_register_thread(t)?;
            let next = rip.wrapping_add(len).to_le_bytes();
            self.client.write_register(num, &next[..size.min(8)])?;
            return Ok(None);
        }
        self.step_over(vcpu, rip)
    }

    /// The length of the instruction at `rip` if executing it would only advance RIP
    /// and nothing asks for the step itself (see `skip` for the conditions).
    fn skippable(&mut self, vcpu: VcpuId, rip: u64) -> Result<Option<u64>> {
        let Some(FastMemory(mem)) = self.fast_memory.clone() else {
            return Ok(None);
        };
        if self.singlestep.contains(vcpu) || rip <= u64::from(u32::MAX) {
            return Ok(None);
        }
        let efer = self.g_value(vcpu, "efer")?;
        let rflags = self.g_value(vcpu, "eflags")?;
        if efer & EFER_LMA == 0 || rflags & RFLAGS_TF != 0 {
            return Ok(None);
        }
        let (cr0, cr3, cr4) = (
            self.g_value(vcpu, "cr0")?,
            self.g_value(vcpu, "cr3")?,
            self.g_value(vcpu, "cr4")?,
        );
        let mode = PagingMode::from_registers(cr0, cr4, efer);
        let Ok(t) = translate(&*mem, mode, Gpa(cr3), Gva(rip)) else {
            return Ok(None);
        };
        // Up to the longest accepted NOP, within the page (a NOP crossing into the next
        // page is stepped).
        let mut code = [0u8; 15];
        let n = code.len().min((0x1000 - (rip & 0xfff)) as usize);
        if mem.read_physical(t.gpa, &mut code[..n]).is_err() {
            return Ok(None);
        }
        Ok(nop_length(&code[..n]))
    }

    /// Removes the breakpoint at `rip`, single-steps `vcpu`, reinserts it. Returns the
    /// event the step produced, if any (a watchpoint, or a step while single-stepping is
    /// on for `vcpu`).
    pub(super) fn step_over(&mut self, vcpu: VcpuId, rip: u64) -> Result<Option<StopEvent>> {
        let t = self.thread(vcpu)?;
        let had = self.breakpoints.contains_key(&rip);
        if had {
            self.client
                .remove_breakpoint(BreakpointKind::Software, rip, 1)?;
        }
        let stop = self.client.step_thread(t);
        if had {
            self.client
                .insert_breakpoint(BreakpointKind::Software, rip, 1)?;
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
        let cr3 = self.g_value(vcpu, "cr3")? & CR3_ROOT_MASK;
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
            if let Err(e) = self
                .client
                .remove_breakpoint(BreakpointKind::Software, bp, 1)
            {
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
