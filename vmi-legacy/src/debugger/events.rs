//! gdbstub stops as `vmi-core` events: what a stop is ([`StopEvent`]), watchpoints
//! ([`Watch`]), the translation of a stop into an [`Event`], and [`EventControl`]
//! (enable, wait, reply).

use std::time::{Duration, Instant};

use vmi_core::event::InterruptKind;
use vmi_core::paging::{translate, PagingMode};
use vmi_core::registers::{ReadRegisters, RegisterGroups};
use vmi_core::{
    Access, Error, Event, EventControl, EventKind, Gfn, Gpa, Gva, Monitor, PendingEvent,
    RegisterSnapshot, ReplyToken, Response, Result, VcpuId, View,
};

use super::gpacket::write_snapshot;
use super::policy::{check, unsupported_monitor_reason};
use super::GdbSession;
use crate::gdb::codec::WatchKind;

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

impl GdbSession {
    fn translate_gla(&self, regs: &RegisterSnapshot, gla: u64) -> Option<Gpa> {
        let (cr0, cr4, efer) = regs.paging_inputs()?;
        let cr3 = regs.control?.cr3;
        translate(
            self,
            PagingMode::from_registers(cr0, cr4, efer),
            Gpa(cr3),
            Gva(gla),
        )
        .ok()
        .map(|t| t.gpa)
    }

    fn make_event(&self, id: u64, stop: &StopEvent) -> Result<PendingEvent> {
        let vcpu = stop.vcpu();
        let registers = self.registers(
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
        Ok(PendingEvent {
            event: Event {
                vcpu,
                view: View::DEFAULT,
                registers,
                kind,
            },
            token: ReplyToken::new(self.session, id, vcpu),
        })
    }
}

impl EventControl for GdbSession {
    /// Supported: [`Monitor::Interrupt`]`(Int3)` (hits of [`GdbSession::set_breakpoint`]),
    /// [`Monitor::Singlestep`] and [`Monitor::MemoryAccess`] (hits of
    /// [`GdbSession::watch`]; always delivered).
    fn enable(&self, monitor: Monitor) -> Result<()> {
        match monitor {
            Monitor::Interrupt(InterruptKind::Int3) => {
                self.lock().int3 = true;
                Ok(())
            }
            Monitor::Singlestep(set) => {
                let mut g = self.lock();
                let all = if g.vcpus >= 64 {
                    u64::MAX
                } else {
                    (1u64 << g.vcpus) - 1
                };
                g.singlestep |= set.0 & all;
                Ok(())
            }
            Monitor::MemoryAccess => Ok(()),
            other => Err(Error::unsupported(
                format!("{other:?} events"),
                unsupported_monitor_reason(&other),
            )),
        }
    }

    fn disable(&self, monitor: Monitor) -> Result<()> {
        match monitor {
            Monitor::Interrupt(InterruptKind::Int3) => {
                self.lock().int3 = false;
                Ok(())
            }
            Monitor::Singlestep(set) => {
                let mut g = self.lock();
                g.singlestep &= !set.0;
                // The VM stays stopped between steps; with none left to step, run it.
                if g.singlestep == 0 && g.outstanding.is_none() && g.queued.is_empty() && !g.held {
                    g.resume()?;
                }
                Ok(())
            }
            Monitor::MemoryAccess => Ok(()),
            other => Err(Error::unsupported(
                format!("{other:?} events"),
                unsupported_monitor_reason(&other),
            )),
        }
    }

    /// Runs the VM until a stop (or steps a single-stepping vCPU) and returns it as an
    /// event; the VM stays stopped until [`EventControl::reply`]. `Ok(None)` on timeout,
    /// the VM still running. The lock is held in slices of 20 ms, so other calls proceed
    /// meanwhile.
    fn wait_event(&self, timeout: Duration) -> Result<Option<PendingEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut g = self.lock();
            if g.outstanding.is_some() {
                return Err(Error::InvalidArgument {
                    what: "wait_event",
                    reason: "the previous event has not been replied to".into(),
                });
            }
            // Single-stepping was enabled while the VM runs: stop it to step.
            if g.singlestep != 0 && g.running && !g.held {
                g.stop()?;
            }
            let mut found = g.queued.pop_front();
            if found.is_none() && !g.running && !g.held {
                if g.singlestep != 0 {
                    found = g.step_next()?;
                } else {
                    g.resume()?;
                }
            }
            if found.is_none() && g.running {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Some(stop) = g.client.wait_stop(left.min(WAIT_SLICE))? {
                    g.running = false;
                    found = g.classify(&stop, false)?;
                }
            }
            if let Some(ev) = found {
                let id = g.next_id;
                g.next_id += 1;
                g.outstanding = Some((id, ev.clone()));
                drop(g);
                return match self.make_event(id, &ev) {
                    Ok(p) => Ok(Some(p)),
                    Err(e) => {
                        let mut g = self.lock();
                        g.outstanding = None;
                        Err(e)
                    }
                };
            }
            drop(g);
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Applies `set_registers` and `toggle_singlestep`, steps past a breakpoint, and
    /// resumes the VM. Actions other than [`Action::Continue`] are refused with
    /// [`Error::Unsupported`] — the event is still answered and the vCPU resumed.
    ///
    /// [`Action::Continue`]: vmi_core::Action::Continue
    fn reply(&self, token: ReplyToken, response: Response) -> Result<()> {
        let mut g = self.lock();
        let Some((id, ev)) = g.outstanding.clone() else {
            return Err(Error::InvalidArgument {
                what: "reply token",
                reason: "no event awaits a reply".into(),
            });
        };
        if token.session() != self.session || token.id() != id {
            return Err(Error::InvalidArgument {
                what: "reply token",
                reason: "not the token of this session's outstanding event".into(),
            });
        }
        let refused = check(&ev, &response);
        let vcpu = ev.vcpu();
        let ok = refused.is_ok();
        let mut result = refused;
        if ok {
            if let Some(regs) = &response.set_registers {
                if let Err(e) = write_snapshot(&mut g, vcpu, regs) {
                    result = Err(e);
                }
            }
            if response.toggle_singlestep {
                g.singlestep ^= 1 << vcpu.raw();
            }
        }
        g.outstanding = None;
        // Get past the breakpoint (the step may itself be the next event).
        if let StopEvent::Breakpoint { rip, .. } = ev {
            let cur = g.rip(vcpu)?;
            if cur == rip {
                if let Some(next) = g.step_over(vcpu, rip)? {
                    g.queued.push_back(next);
                }
            }
        }
        if g.singlestep == 0 && g.queued.is_empty() && !g.held {
            g.resume()?;
        }
        result
    }

    fn pending_events(&self) -> Result<usize> {
        Ok(self.lock().queued.len())
    }

    fn check_response(&self, event: &Event, response: &Response) -> Result<()> {
        let ev = match event.kind {
            EventKind::Breakpoint { gla, .. } => StopEvent::Breakpoint {
                vcpu: event.vcpu,
                rip: gla.0,
            },
            EventKind::Singlestep { gla, .. } => StopEvent::Singlestep {
                vcpu: event.vcpu,
                rip: gla.0,
            },
            _ => StopEvent::Watch {
                vcpu: event.vcpu,
                kind: WatchKind::Access,
                addr: 0,
            },
        };
        check(&ev, response)
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
