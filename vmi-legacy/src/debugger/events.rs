//! gdbstub stops as `vmi-core` events: what a stop is ([`StopEvent`]), watchpoints
//! ([`Watch`]), the translation of a stop into an [`Event`], and [`EventControl`]
//! (enable, wait). Answers are in `park`.

use std::cell::RefCell;
use std::time::Duration;

use vmi_core::deadline::Deadline;

use vmi_core::event::InterruptKind;
use vmi_core::paging::{translate, PagingMode};
use vmi_core::registers::RegisterGroups;
use vmi_core::{
    Access, Error, Event, EventControl, EventKind, Gfn, Gpa, Gva, Monitor, PendingEvent,
    PhysicalMemory, RegisterSnapshot, Result, VcpuId, View,
};

use super::{physical, GdbSession};
use crate::gdb::codec::WatchKind;
use crate::gdb::GdbClient;

/// How long one slice of [`EventControl::wait_event`] holds the lock.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// A watchpoint placed with [`GdbSession::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct Watch {
    pub(super) gva: u64,
    pub(super) len: u64,
    pub(super) kind: u8,
}

impl Watch {
    pub(super) fn kind(self) -> WatchKind {
        match self.kind {
            2 => WatchKind::Write,
            3 => WatchKind::Read,
            _ => WatchKind::Access,
        }
    }
}

/// What a stop turned out to be.
#[derive(Debug, Clone)]
pub(super) enum StopEvent {
    Breakpoint {
        vcpu: VcpuId,
        rip: u64,
    },
    Singlestep {
        vcpu: VcpuId,
        rip: u64,
    },
    Watch {
        vcpu: VcpuId,
        kind: WatchKind,
        addr: u64,
    },
}

impl StopEvent {
    pub(super) fn vcpu(&self) -> VcpuId {
        match self {
            Self::Breakpoint { vcpu, .. }
            | Self::Singlestep { vcpu, .. }
            | Self::Watch { vcpu, .. } => *vcpu,
        }
    }
}

pub(super) fn watch_for(gva: Gva, len: u64, access: Access) -> Result<Watch> {
    if len == 0 || len > 8 {
        return Err(Error::InvalidArgument {
            what: "watchpoint length",
            reason: "must be 1 to 8 bytes".into(),
        });
    }
    let kind = if access.contains(Access::RW) {
        4
    } else if access.contains(Access::W) {
        2
    } else if access.contains(Access::R) {
        3
    } else {
        return Err(Error::InvalidArgument {
            what: "watchpoint access",
            reason: "watch reads, writes or both (execute: use a breakpoint)".into(),
        });
    };
    Ok(Watch {
        gva: gva.0,
        len,
        kind,
    })
}

/// The stub's memory reads while it is already in physical mode, for one page walk.
struct StubPhysical<'a>(RefCell<&'a mut GdbClient>);

impl PhysicalMemory for StubPhysical<'_> {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.0.borrow_mut().read_memory(gpa.0, buf)
    }
}

impl GdbSession {
    /// The walk goes through the session's fast memory if it has one (no requests),
    /// else through the stub's physical reads, with `Qqemu.PhyMemMode` switched on once
    /// for the whole walk (one `m` per level and two switches, not three requests per
    /// level).
    fn translate_gla(&self, regs: &RegisterSnapshot, gla: u64) -> Option<Gpa> {
        let (cr0, cr4, efer) = regs.paging_inputs()?;
        let cr3 = regs.control?.cr3;
        let mode = PagingMode::from_registers(cr0, cr4, efer);
        let fast = self.lock().fast_memory.clone();
        match fast {
            Some(m) => translate(&*m.0, mode, Gpa(cr3), Gva(gla)),
            None => self
                .stopped(|g| {
                    physical(&mut g.client, |c| {
                        let stub = StubPhysical(RefCell::new(c));
                        Ok(translate(&stub, mode, Gpa(cr3), Gva(gla)))
                    })
                })
                .and_then(|walk| walk),
        }
        .ok()
        .map(|t| t.gpa)
    }

    /// The `vmi-core` event of a stop, with the registers the stop left in the `g`
    /// packet (they become the parked vCPU's cache).
    fn build_event(&self, stop: &StopEvent) -> Result<Event> {
        let vcpu = stop.vcpu();
        let registers = self.fetch_registers(
            vcpu,
            RegisterGroups::GPRS | RegisterGroups::CONTROL | RegisterGroups::EFER,
            &[],
        )?;
        let kind = match *stop {
            StopEvent::Breakpoint { rip, .. } => {
                let gpa = self.translate_gla(&registers, rip).ok_or_else(|| {
                    Error::malformed("gdbstub", format!("breakpoint at unmapped {rip:#x}"))
                })?;
                EventKind::Breakpoint {
                    gla: Gva(rip),
                    gfn: gpa.gfn(),
                    offset: gpa.page_offset(),
                    insn_length: 1,
                }
            }
            StopEvent::Singlestep { rip, .. } => {
                let gpa = self.translate_gla(&registers, rip);
                EventKind::Singlestep {
                    gla: Gva(rip),
                    gfn: gpa.map(|g| g.gfn()),
                    offset: rip & 0xfff,
                    failed: false,
                }
            }
            StopEvent::Watch { kind, addr, .. } => {
                let gpa = self.translate_gla(&registers, addr);
                EventKind::MemoryAccess {
                    gfn: gpa.map_or(Gfn(0), |g| g.gfn()),
                    offset: addr & 0xfff,
                    gla: Some(Gva(addr)),
                    access: match kind {
                        WatchKind::Write => Access::W,
                        WatchKind::Read => Access::R,
                        WatchKind::Access => Access::RW,
                    },
                    page_walk: false,
                }
            }
        };
        Ok(Event {
            vcpu,
            view: View::DEFAULT,
            registers: registers.into(),
            kind,
        })
    }
}

impl EventControl for GdbSession {
    /// Supported: [`Monitor::Interrupt`]`(Int3)` (hits of the session's
    /// [`vmi_core::Breakpoints`]; setting a breakpoint enables it),
    /// [`Monitor::Singlestep`] and [`Monitor::MemoryAccess`] (hits of
    /// [`GdbSession::watch`]; always delivered). Everything else is refused by the
    /// capability table with its reason; single-stepping a vCPU the guest does not have
    /// is refused with [`Error::NoSuchVcpu`], before anything reaches the stub.
    fn enable(&self, monitor: &Monitor) -> Result<()> {
        self.parking.capabilities().check_monitor(monitor)?;
        let mut g = self.lock();
        match monitor {
            Monitor::Interrupt(InterruptKind::Int3) => g.int3 = true,
            Monitor::Singlestep(set) => {
                // Refused before anything changes: a vCPU the guest lacks would never
                // step, and a caller waiting for its steps would wait for nothing.
                if let Some(vcpu) = set.iter().find(|v| u32::from(v.raw()) >= g.vcpus) {
                    return Err(Error::NoSuchVcpu {
                        vcpu,
                        count: g.vcpus,
                    });
                }
                g.singlestep.union_with(set);
            }
            _ => {}
        }
        Ok(())
    }

    fn disable(&self, monitor: &Monitor) -> Result<()> {
        self.parking.capabilities().check_monitor(monitor)?;
        let mut g = self.lock();
        match monitor {
            Monitor::Interrupt(InterruptKind::Int3) => g.int3 = false,
            Monitor::Singlestep(set) => {
                g.singlestep.difference_with(set);
                // The VM stays stopped between steps; with none left to step, run it.
                if g.singlestep.is_empty()
                    && g.outstanding.is_none()
                    && g.queued.is_empty()
                    && !self.parking.is_paused()
                {
                    g.resume()?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the VM until a stop (or steps a single-stepping vCPU) and returns it as an
    /// event; the VM stays stopped until the event is answered. `Ok(None)` on timeout,
    /// the VM still running (or paused, if a pause is held). The lock is held in slices
    /// of 20 ms, so other calls proceed meanwhile. Fails while an earlier event of this
    /// session is still pending: the stub stops the whole VM for one event at a time.
    fn wait_event(&self, timeout: Duration) -> Result<Option<PendingEvent>> {
        let deadline = Deadline::after(timeout);
        let left = || deadline.remaining_capped(WAIT_SLICE);
        loop {
            let mut g = self.lock();
            if g.outstanding.is_some() {
                return Err(Error::InvalidArgument {
                    what: "wait_event",
                    reason: "the previous event is still pending (answer or drop it first)".into(),
                });
            }
            let paused = self.parking.is_paused();
            // Single-stepping was enabled while the VM runs: stop it to step.
            if !g.singlestep.is_empty() && g.running && !paused {
                g.stop()?;
            }
            let mut found = g.queued.pop_front();
            if found.is_none() && !g.running && !paused {
                if !g.singlestep.is_empty() {
                    found = g.step_next()?;
                } else {
                    g.resume()?;
                }
            }
            if found.is_none() && g.running {
                if let Some(stop) = g.client.wait_stop(left())? {
                    g.running = false;
                    found = g.classify(&stop, false)?;
                }
            }
            if let Some(ev) = found {
                let id = g.next_id;
                g.next_id += 1;
                g.outstanding = Some((id, ev.clone()));
                drop(g);
                return match self.build_event(&ev) {
                    Ok(event) => Ok(Some(self.parking.event(id, event))),
                    Err(e) => {
                        // Not handed out: let the VM go on as an answer would.
                        let mut g = self.lock();
                        g.outstanding = None;
                        if !self.parking.is_paused() && g.singlestep.is_empty() {
                            let _ = g.resume();
                        }
                        Err(e)
                    }
                };
            }
            let running = g.running;
            drop(g);
            if deadline.expired() {
                return Ok(None);
            }
            if !running {
                // Paused: nothing can stop; wait a slice without spinning.
                std::thread::sleep(left());
            }
        }
    }

    fn pending_events(&self) -> Result<usize> {
        Ok(self.lock().queued.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_kinds() {
        assert_eq!(
            watch_for(Gva(8), 8, Access::W).unwrap().kind(),
            WatchKind::Write
        );
        assert_eq!(
            watch_for(Gva(8), 4, Access::R).unwrap().kind(),
            WatchKind::Read
        );
        assert_eq!(
            watch_for(Gva(8), 1, Access::RW).unwrap().kind(),
            WatchKind::Access
        );
        assert!(watch_for(Gva(8), 0, Access::W).is_err());
        assert!(watch_for(Gva(8), 4, Access::X).is_err());
    }
}
