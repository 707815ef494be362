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
//! * [`PendingEvent::reply`] (or dropping the event) applies the response and resumes
//!   the VM.
//!
//! While single-stepping is on for some vCPUs, only they run (one step at a time, with
//! IRQs and timers masked by `qqemu.sstep`); the other vCPUs stay stopped.
//!
//! Do not mix with QMP `stop`/`cont` while a session is attached: a QMP stop is reported
//! to the gdbstub as a stop (`T02`), and a QMP `cont` runs a VM the session believes
//! stopped. [`crate::LegacyQemu`] routes its pause/resume here when given a GDB socket.
//!
//! Pausing, events and register writes follow `vmi-core`'s parked-vCPU model
//! ([`vmi_core::park`]): the session's [`Parking`] is shared with the
//! [`crate::LegacyQemu`] that owns it, so a pause through either counts once, and the
//! stub resumes the VM only when no event, pause or queued register write holds it.
//!
//! The code is split by concern: `stop` holds the stop state machine (resume, stop,
//! classify, step over), `park` the primitives the parking calls (stop, run, answer an
//! event), `events` turns stops into `vmi-core` events and implements `EventControl`,
//! and `gpacket` maps the `g` packet to and from `RegisterSnapshot`. The capability
//! table is [`crate::capabilities`].
//!
//! [`EventControl::wait_event`]: vmi_core::EventControl::wait_event
//! [`PendingEvent::reply`]: vmi_core::PendingEvent::reply
//! [`PendingEvent`]: vmi_core::PendingEvent

mod events;
mod gpacket;
mod park;
mod stop;

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vmi_core::park::Parking;
use vmi_core::{
    Access, Backend, Breakpoint, Breakpoints, CapabilityReport, Error, EventControl, Gpa, Gva,
    PauseGuard, PauseScope, PhysicalMemory, PhysicalMemoryWrite, ReadRegisters, Result,
    VcpuControl, VcpuId, VcpuSet, WriteRegisters,
};

use crate::capabilities::{legacy_capabilities, Parts, RamPath};
use crate::gdb::{BreakpointKind, GdbAddress, GdbClient};

pub(crate) use gpacket::all_msrs;

use events::watch_for;
use stop::{Inner, CR3_ROOT_MASK};

/// QEMU single-step mask: enable, no IRQs, no timers.
const SSTEP_MASK: u64 = 0x7;

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

/// The state behind a session: the client and its stop state machine. Shared with the
/// session's [`Parking`], which calls the primitives in `park`.
#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A session with QEMU's GDB stub: registers, pause/resume, breakpoints, watchpoints and
/// single steps, as `vmi-core` events. See the [module documentation](self).
#[derive(Debug)]
pub struct GdbSession {
    shared: Arc<Shared>,
    parking: Arc<Parking>,
}

impl GdbSession {
    /// Connects to the gdbstub's UNIX socket (`-gdb chardev:…`) and lets the guest run
    /// (the stub stopped it on attach). See [`Self::new`].
    pub fn connect_unix(path: &Path, timeout: Duration) -> Result<Self> {
        let client = GdbClient::connect_unix(path, timeout)?;
        Self::new(client)
    }

    /// Connects to the gdbstub at `addr` (UNIX socket or TCP). `guest_was_running`: the
    /// run state before attaching (e.g. from QMP `query-status`); see
    /// [`Self::with_prior_state`].
    pub fn connect(addr: &GdbAddress, timeout: Duration, guest_was_running: bool) -> Result<Self> {
        let client = GdbClient::connect(addr, timeout)?;
        Self::with_prior_state(client, guest_was_running)
    }

    /// Wraps a connected client (the VM is stopped, as after attaching) and resumes it:
    /// [`Self::with_prior_state`] for a guest that was running.
    pub fn new(client: GdbClient) -> Result<Self> {
        Self::with_prior_state(client, true)
    }

    /// Wraps a connected client (the VM is stopped, as after attaching). The stub stops
    /// the guest when a client attaches and cannot tell whether it ran before: with
    /// `guest_was_running` the session lets it run; without, the guest was stopped by
    /// someone else (QMP `stop`, `-S` prelaunch) and the session keeps it so — it never
    /// resumes it, and its teardown closes without `D` (which would resume it).
    ///
    /// What QEMU keeps from an earlier client that died without detaching, and what this
    /// recovers: breakpoints and watchpoints stay armed until the next client attaches
    /// (QEMU removes them all on the `?` of our handshake); `Qqemu.PhyMemMode` stays as
    /// it was left (switched off here; the session turns it on only around its own
    /// physical accesses); the single-step mask stays (set here); the multiprocess mode a
    /// client such as gdb negotiated stays for good (detected from the thread ids, and
    /// detach uses the form it needs); a guest left stopped at a breakpoint stays in
    /// `debug` ([`crate::LegacyQemu`] treats `debug` at connect as "was running").
    pub fn with_prior_state(mut client: GdbClient, guest_was_running: bool) -> Result<Self> {
        let vcpus = client.threads()?.len() as u32;
        client.set_physical_mode(false)?;
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
            breakpoints: BTreeMap::new(),
            watches: Default::default(),
            int3: false,
            singlestep: VcpuSet::new(),
            queued: VecDeque::new(),
            outstanding: None,
            next_id: 1,
            next_step_vcpu: 0,
            regnums,
            client_detached: false,
            keep_stopped: !guest_was_running,
        };
        inner.resume()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
        });
        let parts = Parts {
            gdb: true,
            qmp: false,
            ram: RamPath::Gdbstub,
        };
        let parking = Parking::new(shared.clone(), legacy_capabilities(parts));
        Ok(Self { shared, parking })
    }

    /// The parked-vCPU state this session shares with its [`crate::LegacyQemu`].
    pub(crate) fn parking(&self) -> &Arc<Parking> {
        &self.parking
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// Runs `f` with the VM stopped, restoring its run state afterwards — unless the
    /// interrupt met a breakpoint or watchpoint hit, which keeps the VM stopped where it
    /// hit until [`EventControl::wait_event`] hands it out (as the parking does):
    /// resuming would let the vCPU run on, and the event would then report registers
    /// from elsewhere.
    fn stopped<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        let mut g = self.lock();
        let was_running = g.running;
        g.stop()?;
        let r = f(&mut g);
        if was_running
            && g.outstanding.is_none()
            && g.queued.is_empty()
            && !self.parking.is_paused()
        {
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
                // As for breakpoints: a hit that raced with this call's interrupt is
                // stale (the access has completed; nothing waits for an answer).
                let (start, end) = (w.gva, w.gva.saturating_add(w.len));
                g.queued.retain(|ev| {
                    !matches!(ev, events::StopEvent::Watch { kind, addr, .. }
                        if *kind == w.kind() && (start..end).contains(addr))
                });
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

    /// Ends every pause, removes every breakpoint and watchpoint, turns
    /// single-stepping off, leaves virtual addressing on and detaches (`D`, or `D;1` for
    /// a stub in multiprocess mode); QEMU then resumes the guest — unless someone else
    /// had stopped it before the session attached ([`Self::with_prior_state`]): then
    /// the session closes without `D` and the guest stays stopped. Events still pending
    /// are answered by the detach (their guards become inert). A second call, and the
    /// drop after an explicit call, do nothing; every later operation through the
    /// session fails with [`Error::Disconnected`] instead of stopping the guest again.
    ///
    /// If the stub refuses the detach, the guest is resumed with `c` and the error
    /// returned. Against a stub that stops answering (a frozen QEMU) this returns after
    /// one timeout and the rest of the teardown finishes in the background once QEMU
    /// answers again (see the crate README, "On real setups").
    pub fn detach(&self) -> Result<()> {
        let _ = self.parking.shutdown();
        self.shared.lock().detach()
    }
}

impl PhysicalMemory for GdbSession {
    /// Reads through the stub in physical mode (`Qqemu.PhyMemMode:1`, `m`, then
    /// `Qqemu.PhyMemMode:0`: QEMU keeps the mode after a client dies, and a later plain
    /// gdb would read virtual addresses as physical ones), stopping the VM for the
    /// duration if it runs.
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.stopped(|g| physical(&mut g.client, |c| c.read_memory(gpa.0, buf)))
    }
}

impl PhysicalMemoryWrite for GdbSession {
    /// Writes through the stub in physical mode, as [`PhysicalMemory::read_physical`].
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        self.stopped(|g| physical(&mut g.client, |c| c.write_memory(gpa.0, data)))
    }
}

/// Runs `f` with `m`/`M` in guest-physical mode, switching back to virtual addresses
/// whatever `f` returns.
fn physical<T>(client: &mut GdbClient, f: impl FnOnce(&mut GdbClient) -> Result<T>) -> Result<T> {
    client.set_physical_mode(true)?;
    let r = f(client);
    let off = client.set_physical_mode(false);
    let v = r?;
    off.map(|()| v)
}

impl VcpuControl for GdbSession {
    fn vcpu_count(&self) -> Result<u32> {
        Ok(self.vcpus())
    }

    /// Stops the VM through the stub (interrupt byte) if it runs. A breakpoint or
    /// watchpoint hit racing with the interrupt is kept for
    /// [`EventControl::wait_event`]. Counted with every pause of the
    /// [`crate::LegacyQemu`] this session belongs to.
    fn pause(&self) -> Result<PauseGuard<'_>> {
        self.parking.pause(PauseScope::All)
    }

    fn is_paused(&self) -> bool {
        self.parking.is_paused()
    }
}

impl Breakpoints for GdbSession {
    /// A `Z0` breakpoint at a linear address (under TCG invisible to the guest: no
    /// `0xCC` in memory). With an address space ([`Breakpoint::in_space`]) hits in other
    /// address spaces are stepped over silently. Physical breakpoints are refused: the
    /// stub matches breakpoints on linear addresses only.
    fn set_breakpoint(&self, bp: Breakpoint) -> Result<()> {
        let (gva, space) = gdb_breakpoint(bp)?;
        self.stopped(|g| {
            g.int3 = true;
            if let Some(spaces) = g.breakpoints.get_mut(&gva) {
                spaces.insert(space);
                return Ok(());
            }
            g.client
                .insert_breakpoint(BreakpointKind::Software, gva, 1)?;
            g.breakpoints.entry(gva).or_default().insert(space);
            Ok(())
        })
    }

    fn clear_breakpoint(&self, bp: Breakpoint) -> Result<()> {
        let (gva, space) = gdb_breakpoint(bp)?;
        self.stopped(|g| {
            let Some(spaces) = g.breakpoints.get_mut(&gva) else {
                return Ok(());
            };
            spaces.remove(&space);
            if spaces.is_empty() {
                g.breakpoints.remove(&gva);
                g.client
                    .remove_breakpoint(BreakpointKind::Software, gva, 1)?;
                // A hit that raced with this call's interrupt is stale now: the vCPU
                // just runs on from the address once the VM resumes.
                g.queued.retain(
                    |ev| !matches!(ev, events::StopEvent::Breakpoint { rip, .. } if *rip == gva),
                );
            }
            Ok(())
        })
    }

    fn active_breakpoints(&self) -> Vec<Breakpoint> {
        let g = self.lock();
        g.breakpoints
            .iter()
            .flat_map(|(gva, spaces)| {
                spaces.iter().map(move |s| Breakpoint::Virtual {
                    gva: Gva(*gva),
                    cr3: s.map(Gpa),
                })
            })
            .collect()
    }
}

/// The stub's form of a breakpoint: a linear address and an optional CR3 root.
fn gdb_breakpoint(bp: Breakpoint) -> Result<(u64, Option<u64>)> {
    match bp {
        Breakpoint::Virtual { gva, cr3 } => Ok((gva.0, cr3.map(|c| c.0 & CR3_ROOT_MASK))),
        Breakpoint::Physical(_) => Err(Error::unsupported(
            "physical breakpoints",
            "QEMU's gdbstub matches breakpoints on linear addresses only",
        )),
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

    fn capabilities(&self) -> Arc<CapabilityReport> {
        self.parking.capabilities()
    }

    fn physical_memory(&self) -> &dyn PhysicalMemory {
        self
    }

    fn physical_memory_writer(&self) -> Option<&dyn PhysicalMemoryWrite> {
        Some(self)
    }

    fn register_reader(&self) -> Option<&dyn ReadRegisters> {
        Some(self)
    }

    fn register_writer(&self) -> Option<&dyn WriteRegisters> {
        Some(self)
    }

    fn vcpu_control(&self) -> Option<&dyn VcpuControl> {
        Some(self)
    }

    fn events(&self) -> Option<&dyn EventControl> {
        Some(self)
    }

    fn breakpoints(&self) -> Option<&dyn Breakpoints> {
        Some(self)
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

    #[test]
    fn breakpoint_forms() {
        assert_eq!(
            gdb_breakpoint(Breakpoint::at(Gva(0x10))).unwrap(),
            (0x10, None)
        );
        assert_eq!(
            gdb_breakpoint(Breakpoint::in_space(Gva(0x10), Gpa(0x8000_0000_0123_4fff))).unwrap(),
            (0x10, Some(0x1234000))
        );
        assert!(matches!(
            gdb_breakpoint(Breakpoint::physical(Gpa(0x1000))),
            Err(Error::Unsupported { .. })
        ));
    }
}
