//! Registers, pausing and events through QEMU's GDB stub: [`GdbSession`].
//!
//! QEMU's gdbstub stops the whole VM when a client attaches and on every stop it
//! reports, and it cannot serve a packet while the VM runs (any byte received then just
//! stops the VM). A [`GdbSession`] therefore tracks whether the VM runs, stops it
//! (interrupt byte) before every command and resumes it afterwards, and owns the stops:
//!
//! * idle, the guest runs (`c` outstanding);
//! * [`EventControl::wait_event`] waits for a stop; a breakpoint, watchpoint or single
//!   step becomes a [`PendingEvent`] while the VM stays stopped (status `debug` in QMP);
//! * [`EventControl::reply`] applies the response and resumes the VM.
//!
//! While single-stepping is on for some vCPUs, only they run (one step at a time, with
//! IRQs and timers masked by `qqemu.sstep`); the other vCPUs stay stopped.
//!
//! Do not mix with QMP `stop`/`cont` while a session is attached: a QMP stop is reported
//! to the gdbstub as a stop (`T02`), and a QMP `cont` runs a VM the session believes
//! stopped. [`crate::LegacyQemu`] routes its pause/resume here when given a GDB socket.
//!
//! The code is split by concern: `stop` holds the stop state machine (resume, stop,
//! classify, step over), `events` turns stops into `vmi-core` events and implements
//! `EventControl`, `gpacket` maps the `g` packet to and from `RegisterSnapshot`,
//! `policy` says which responses and monitors the stub can honour, and `capabilities`
//! is the capability table.
//!
//! [`EventControl::wait_event`]: vmi_core::EventControl::wait_event
//! [`EventControl::reply`]: vmi_core::EventControl::reply
//! [`PendingEvent`]: vmi_core::PendingEvent

mod capabilities;
mod events;
mod gpacket;
mod policy;
mod stop;

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use vmi_core::{
    Access, Backend, CapabilityReport, Gpa, Gva, PauseCount, PhysicalMemory, PhysicalMemoryWrite,
    Result, VcpuControl, VcpuId,
};

use crate::gdb::{BreakpointKind, GdbClient};

pub(crate) use capabilities::gdb_capabilities;
use events::watch_for;
use stop::Inner;

/// QEMU single-step mask: enable, no IRQs, no timers.
const SSTEP_MASK: u64 = 0x7;

static NEXT_SESSION: AtomicU64 = AtomicU64::new(0x6764_6200_0000);

/// Selector and base registers the GDB stub has beyond [`RegisterSnapshot`]'s groups
/// (which need limits and attributes for segments; see [`crate::LegacyQemu`]).
///
/// [`RegisterSnapshot`]: vmi_core::RegisterSnapshot
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct GdbSegments {
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub fs_base: u64,
    pub gs_base: u64,
    pub k_gs_base: u64,
}

/// A session with QEMU's GDB stub: registers, pause/resume, breakpoints, watchpoints and
/// single steps, as `vmi-core` events. See the [module documentation](self).
#[derive(Debug)]
pub struct GdbSession {
    inner: Mutex<Inner>,
    session: u64,
    pause: PauseCount,
}

impl GdbSession {
    /// Connects to the gdbstub's UNIX socket (`-gdb chardev:…`), switches `m`/`M` to
    /// guest-physical addresses, and lets the guest run (the stub stopped it on attach).
    pub fn connect_unix(path: &Path, timeout: Duration) -> Result<Self> {
        let client = GdbClient::connect_unix(path, timeout)?;
        Self::new(client)
    }

    /// Wraps a connected client (the VM is stopped, as after attaching) and resumes it.
    pub fn new(mut client: GdbClient) -> Result<Self> {
        let vcpus = client.threads()?.len() as u32;
        client.set_physical_mode(true)?;
        client.set_sstep_flags(SSTEP_MASK)?;
        let regnums = client
            .registers()
            .iter()
            .map(|r| (r.name.clone(), (r.regnum, r.bitsize.div_ceil(8))))
            .collect();
        let mut inner = Inner {
            client,
            running: false,
            vcpus,
            breakpoints: BTreeSet::new(),
            watches: BTreeSet::new(),
            int3: false,
            singlestep: 0,
            queued: VecDeque::new(),
            outstanding: None,
            next_id: 1,
            next_step_vcpu: 0,
            held: false,
            regnums,
        };
        inner.resume()?;
        Ok(Self {
            inner: Mutex::new(inner),
            session: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            pause: PauseCount::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the VM stopped, restoring its run state afterwards.
    fn stopped<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        let mut g = self.lock();
        let was_running = g.running;
        g.stop()?;
        let r = f(&mut g);
        if was_running && g.outstanding.is_none() && !g.held {
            g.resume()?;
        }
        r
    }

    /// Whether the session believes the VM runs.
    pub fn is_running(&self) -> bool {
        self.lock().running
    }

    /// The number of vCPUs (gdbstub threads).
    pub fn vcpus(&self) -> u32 {
        self.lock().vcpus
    }

    /// Places a software breakpoint (`Z0`) at a guest-virtual address. Under TCG it is
    /// invisible to the guest (no `0xCC` in memory). Hits are reported as
    /// [`EventKind::Breakpoint`] once [`Monitor::Interrupt`]`(Int3)` is enabled.
    ///
    /// [`EventKind::Breakpoint`]: vmi_core::EventKind::Breakpoint
    /// [`Monitor::Interrupt`]: vmi_core::Monitor::Interrupt
    pub fn set_breakpoint(&self, gva: Gva) -> Result<()> {
        self.stopped(|g| {
            if g.breakpoints.contains(&gva.0) {
                return Ok(());
            }
            g.client
                .insert_breakpoint(BreakpointKind::Software, gva.0, 1)?;
            g.breakpoints.insert(gva.0);
            Ok(())
        })
    }

    /// Removes a breakpoint placed with [`Self::set_breakpoint`].
    pub fn clear_breakpoint(&self, gva: Gva) -> Result<()> {
        self.stopped(|g| {
            if g.breakpoints.remove(&gva.0) {
                g.client
                    .remove_breakpoint(BreakpointKind::Software, gva.0, 1)?;
            }
            Ok(())
        })
    }

    /// Watches `len` bytes at a guest-virtual address (`Z2` write, `Z3` read, `Z4`
    /// access): `access` W, R, or both. Hits are reported as [`EventKind::MemoryAccess`]
    /// (after the accessing instruction completed).
    ///
    /// [`EventKind::MemoryAccess`]: vmi_core::EventKind::MemoryAccess
    pub fn watch(&self, gva: Gva, len: u64, access: Access) -> Result<()> {
        let w = watch_for(gva, len, access)?;
        self.stopped(|g| {
            if g.watches.contains(&w) {
                return Ok(());
            }
            g.client
                .insert_breakpoint(BreakpointKind::Watch(w.kind()), w.gva, w.len)?;
            g.watches.insert(w);
            Ok(())
        })
    }

    /// Removes a watchpoint placed with [`Self::watch`] (same arguments).
    pub fn unwatch(&self, gva: Gva, len: u64, access: Access) -> Result<()> {
        let w = watch_for(gva, len, access)?;
        self.stopped(|g| {
            if g.watches.remove(&w) {
                g.client
                    .remove_breakpoint(BreakpointKind::Watch(w.kind()), w.gva, w.len)?;
            }
            Ok(())
        })
    }

    /// Selectors and segment/TLS bases as the stub reports them.
    pub fn segments(&self, vcpu: VcpuId) -> Result<GdbSegments> {
        self.stopped(|g| {
            let v = g.read_g(vcpu)?;
            let sel = |n: &str| v.get(n).map_or(0, |x| *x as u16);
            let val = |n: &str| v.get(n).copied().unwrap_or(0);
            Ok(GdbSegments {
                cs: sel("cs"),
                ss: sel("ss"),
                ds: sel("ds"),
                es: sel("es"),
                fs: sel("fs"),
                gs: sel("gs"),
                fs_base: val("fs_base"),
                gs_base: val("gs_base"),
                k_gs_base: val("k_gs_base"),
            })
        })
    }

    /// Runs a monitor (HMP) command through the stub (`qRcmd`).
    pub fn monitor(&self, cmd: &str) -> Result<String> {
        self.stopped(|g| g.client.monitor(cmd))
    }

    /// Removes every breakpoint and watchpoint, turns single-stepping off, restores
    /// virtual addressing and detaches; QEMU then resumes the guest.
    pub fn detach(&self) -> Result<()> {
        let mut g = self.lock();
        if g.running {
            g.stop()?;
        }
        let mut first_err = None;
        for bp in std::mem::take(&mut g.breakpoints) {
            if let Err(e) = g.client.remove_breakpoint(BreakpointKind::Software, bp, 1) {
                first_err.get_or_insert(e);
            }
        }
        for w in std::mem::take(&mut g.watches) {
            if let Err(e) =
                g.client
                    .remove_breakpoint(BreakpointKind::Watch(w.kind()), w.gva, w.len)
            {
                first_err.get_or_insert(e);
            }
        }
        g.singlestep = 0;
        g.int3 = false;
        g.outstanding = None;
        g.queued.clear();
        let _ = g.client.set_physical_mode(false);
        g.client.detach()?;
        g.running = true;
        first_err.map_or(Ok(()), Err)
    }
}

impl PhysicalMemory for GdbSession {
    /// Reads through the stub in physical mode (`Qqemu.PhyMemMode:1`, `m`), stopping
    /// the VM for the duration if it runs.
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.stopped(|g| g.client.read_memory(gpa.0, buf))
    }
}

impl PhysicalMemoryWrite for GdbSession {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        self.stopped(|g| g.client.write_memory(gpa.0, data))
    }
}

impl VcpuControl for GdbSession {
    fn vcpu_count(&self) -> Result<u32> {
        Ok(self.vcpus())
    }

    /// Stops the VM through the stub (interrupt byte) if it runs. A breakpoint or
    /// watchpoint hit racing with the interrupt is kept for [`EventControl::wait_event`].
    ///
    /// [`EventControl::wait_event`]: vmi_core::EventControl::wait_event
    fn pause_vcpus(&self) -> Result<()> {
        let mut g = self.lock();
        g.held = true;
        g.stop()
    }

    /// Continues (`c`) unless an event awaits its reply.
    fn resume_vcpus(&self) -> Result<()> {
        let mut g = self.lock();
        g.held = false;
        if g.outstanding.is_some() || !g.queued.is_empty() {
            return Ok(());
        }
        g.resume()
    }

    fn pause_count(&self) -> &PauseCount {
        &self.pause
    }
}

impl Drop for GdbSession {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

impl Backend for GdbSession {
    fn name(&self) -> Cow<'_, str> {
        "legacy (QEMU gdbstub)".into()
    }

    fn capabilities(&self) -> CapabilityReport {
        gdb_capabilities("legacy (QEMU gdbstub)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GdbSession>();
    }
}
