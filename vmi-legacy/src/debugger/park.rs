//! The primitives `vmi-core`'s [`Parking`](vmi_core::park::Parking) calls on a gdbstub
//! session: stop the VM, let it run (after writing queued registers), answer an event.
//!
//! QEMU's gdbstub is all-stop: the VM runs only when no vCPU is parked for any reason,
//! no stop is queued and single-stepping is off (then `wait_event` drives the steps).

use vmi_core::park::{AfterAnswer, EventTicket, ParkOps};
use vmi_core::{Event, PauseScope, RegisterSnapshot, Response, Result, VcpuId};

use super::events::StopEvent;
use super::gpacket::{check_writable, write_snapshot};
use super::stop::Inner;
use super::Shared;

impl Inner {
    /// Resumes the VM if nothing holds it stopped.
    fn resume_if_free(&mut self) -> Result<()> {
        if self.outstanding.is_none()
            && self.queued.is_empty()
            && self.singlestep.is_empty()
            && !self.client_detached
        {
            self.resume()?;
        }
        Ok(())
    }
}

impl ParkOps for Shared {
    fn stop(&self, _scope: PauseScope) -> Result<Vec<(VcpuId, RegisterSnapshot)>> {
        self.lock().stop()?;
        Ok(Vec::new())
    }

    fn run(
        &self,
        _scope: PauseScope,
        writes: &[(VcpuId, RegisterSnapshot)],
        still_parked: &[VcpuId],
    ) -> Result<()> {
        let mut g = self.lock();
        if g.client_detached {
            return Ok(());
        }
        if !writes.is_empty() {
            g.stop()?;
        }
        let mut result = Ok(());
        for (vcpu, regs) in writes {
            if let Err(e) = write_snapshot(&mut g, *vcpu, regs) {
                result = result.and(Err(e));
            }
        }
        if still_parked.is_empty() {
            g.resume_if_free()?;
        }
        result
    }

    fn answer(&self, ticket: EventTicket, response: Response, after: AfterAnswer) -> Result<()> {
        let mut g = self.lock();
        let ev = match &g.outstanding {
            Some((id, ev)) if *id == ticket.id => ev.clone(),
            // Answered by a detach meanwhile.
            _ => return Ok(()),
        };
        g.outstanding = None;
        let vcpu = ev.vcpu();
        let mut result = Ok(());
        if let Some(regs) = &response.set_registers {
            result = write_snapshot(&mut g, vcpu, regs);
        }
        if response.toggle_singlestep && !g.singlestep.remove(vcpu) {
            g.singlestep.insert(vcpu);
        }
        // Get past the breakpoint unless the tool moved RIP (the step may itself be
        // the next event). RIP comes from the `g` packet the event was built from,
        // unless the tool wrote registers.
        if let StopEvent::Breakpoint { rip, .. } = ev {
            if g.rip(vcpu)? == rip {
                if let Some(next) = g.pass_breakpoint(vcpu, rip)? {
                    g.queued.push_back(next);
                }
            }
        }
        if after.guest_released {
            g.resume_if_free()?;
        }
        result
    }

    fn check_response(&self, _event: &Event, response: &Response) -> Result<()> {
        match &response.set_registers {
            Some(regs) => check_writable(regs),
            None => Ok(()),
        }
    }

    fn check_write(&self, _vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
        check_writable(regs)
    }
}
