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
//! IRQs and timers masked by `qqemu.sstep` — under KVM IRQs only); the other vCPUs stay
//! stopped.
//!
//! Under KVM ([`Accelerator::Kvm`], asked of the stub's monitor at connect) breakpoints
//! are hardware breakpoints in the 4 debug registers and registers are read with `g`,
//! which fetches the vCPU state from KVM (QEMU's `p` does not).
//!
//! What a hit costs: under TCG, QEMU drops its whole translated-code cache at every
//! breakpoint or single-step stop and at every breakpoint insert or removal, and the
//! guest then runs slowly until its code is translated again; that, not this session,
//! is most of the time between hits. Watchpoint stops do not flush it, so watching a
//! variable is the fast way to trace a TCG guest. The session keeps its own share small
//! (see [`GdbClient`] and `skip`): one `g` per stop and no thread selection when the
//! stop already selected the vCPU; page walks through [`GdbSession::use_memory`]'s
//! memory; a breakpoint on a NOP is passed by moving RIP (one stop, no re-insertion),
//! any other by remove, step, reinsert. [`GdbSession::counters`] counts the requests.
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
mod skip;
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
use crate::gdb::{BreakpointKind, GdbAddress, GdbClient, GdbCounters};

pub(crate) use gpacket::all_msrs;

use events::{watch_for, StopEvent};
use stop::{FastMemory, Inner, CR3_ROOT_MASK};

/// QEMU single-step masks, best first: enable, no IRQs, no timers (TCG); enable and no
/// IRQs (KVM with `KVM_GUESTDBG_BLOCKIRQ`; KVM has no timer mask and QEMU answers `E22`
/// to 7); enable only (older KVM).
const SSTEP_MASKS: [u64; 3] = [0x7, 0x3, 0x1];

/// The accelerator running the guest, as the gdbstub's monitor reports it (`info kvm`).
/// It decides how breakpoints are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accelerator {
    /// QEMU's binary translator: `Z0` breakpoints are kept in QEMU (no `0xCC` in guest
    /// memory), any number of them.
    Tcg,
    /// KVM: breakpoints are hardware breakpoints (`Z1`) in the vCPU's 4 debug registers,
    /// shared with watchpoints. QEMU's software breakpoints under KVM write `0xCC` into
    /// guest memory and rely on KVM intercepting `#BP`; on a nested/paravirtual KVM
    /// (measured on this project's CI machine) the `0xCC` instead ends in a KVM emulation
    /// failure that leaves the VM in `internal-error` (real gdb reports `SIGABRT`), so
    /// they are never used.
    Kvm,
}

impl Accelerator {
    /// How breakpoints are placed under this accelerator.
    pub(crate) fn breakpoint_kind(self) -> BreakpointKind {
        match self {
            Self::Tcg => BreakpointKind::Software,
            Self::Kvm => BreakpointKind::Hardware,
        }
    }
}

/// Asks the stub's monitor which accelerator runs the guest. A monitor that cannot tell
/// counts as KVM: hardware breakpoints work under both, software ones can stop a KVM
/// guest for good.
fn detect_accelerator(client: &mut GdbClient) -> Accelerator {
    match client.monitor("info kvm") {
        Ok(out) if out.contains("kvm support: disabled") || out.contains("not compiled") => {
            Accelerator::Tcg
        }
        _ => Accelerator::Kvm,
    }
}

/// Sets the best single-step mask the accelerator accepts; returns it.
fn set_best_sstep(client: &mut GdbClient) -> Result<u64> {
    let mut last = None;
    for mask in SSTEP_MASKS {
        match client.set_sstep_flags(mask) {
            Ok(()) => return Ok(mask),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("SSTEP_MASKS is not empty"))
}

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
    ///
    /// A bare session has no QMP to ask whether another client holds the stub; if one
    /// does, this connection waits in QEMU's queue until the handshake times out, and
    /// QEMU stops the guest for it when that client leaves. [`crate::LegacyQemu::connect`]
    /// checks first and refuses ([`crate::attach::StubInUse`]).
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
    /// `debug` ([`crate::LegacyQemu`] treats `debug` at connect as "was running", which
    /// recovers a guest a killed tool left there: see [`crate::attach`]).
    pub fn with_prior_state(mut client: GdbClient, guest_was_running: bool) -> Result<Self> {
        let vcpus = client.threads()?.len() as u32;
        client.set_physical_mode(false)?;
        let accelerator = detect_accelerator(&mut client);
        let sstep_mask = set_best_sstep(&mut client)?;
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
            accelerator,
            sstep_mask,
            singlestep: VcpuSet::new(),
            queued: VecDeque::new(),
            outstanding: None,
            next_id: 1,
            next_step_vcpu: 0,
            regnums,
            client_detached: false,
            keep_stopped: !guest_was_running,
            fast_memory: None,
        };
        inner.resume()?;
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
        });
        let parts = Parts {
            gdb: true,
            qmp: false,
            ram: RamPath::Gdbstub,
            kvm: accelerator == Accelerator::Kvm,
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

    /// Reads guest RAM through `memory` instead of the stub where the session reads it
    /// for itself: the page walks of events and the instruction at a breakpoint (with
    /// it, a breakpoint on a NOP is passed by moving RIP instead of a single step).
    /// `memory` must read the same guest's physical memory (e.g. its [`SharedRam`]);
    /// [`crate::LegacyQemu`] passes its own when it has shared RAM or ProcMem.
    ///
    /// [`SharedRam`]: crate::SharedRam
    pub fn use_memory(&self, memory: Arc<dyn PhysicalMemory + Send + Sync>) {
        self.lock().fast_memory = Some(FastMemory(memory));
    }

    /// What the session's client has sent to the stub so far and how long it held the
    /// VM stopped: the cost of events, for benchmarks and tests.
    pub fn counters(&self) -> GdbCounters {
        self.lock().client.counters()
    }

    /// Whether the session believes the VM runs.
    pub fn is_running(&self) -> bool {
        self.lock().running
    }

    /// The accelerator running the guest (decides the breakpoint kind).
    pub fn accelerator(&self) -> Accelerator {
        self.lock().accelerator
    }

    /// The single-step mask in use (`Qqemu.sstep`: 1 enable, 2 no IRQs, 4 no timers);
    /// under KVM timers are not masked.
    pub fn sstep_mask(&self) -> u64 {
        self.lock().sstep_mask
    }

    /// The number of vCPUs (gdbstub threads).
    pub fn vcpus(&self) -> u32 {
        self.lock().vcpus
    }

    /// Watches `len` bytes at a guest-virtual address (`Z2` write, `Z3` read, `Z4`
    /// access): `access` W, R, or both. Hits are reported as [`EventKind::MemoryAccess`]
    /// (after the accessing instruction completed). Under TCG a watchpoint stop keeps
    /// QEMU's translated code (a breakpoint stop flushes it): the fast way to trace.
    ///
    /// [`EventKind::MemoryAccess`]: vmi_core::EventKind::MemoryAccess
    pub fn watch(&self, gva: Gva, len: u64, access: Access) -> Result<()> {
        let w = watch_for(gva, len, access)?;
        self.stopped(|g| {
            if g.watches.contains(&w) {
                return Ok(());
            }
            let kind = BreakpointKind::Watch(w.kind());
            g.insert(kind, w.gva, w.len)?;
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
    /// A breakpoint at a linear address, invisible to the guest (no `0xCC` in memory):
    /// `Z0` kept by QEMU under TCG, a hardware breakpoint (`Z1`, one of 4 debug registers
    /// shared with watchpoints) under KVM ([`Accelerator`]). With an address space ([`Breakpoint::in_space`]) hits in other
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
            let kind = g.accelerator.breakpoint_kind();
            g.insert(kind, gva, 1)?;
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
                let kind = g.accelerator.breakpoint_kind();
                g.client.remove_breakpoint(kind, gva, 1)?;
                // A hit caught by the interrupt that stopped the VM for this call is
                // not reported after the clear (never handed out, so it needs no
                // reply: the vCPU runs the instruction when the VM resumes). Under KVM
                // the guest runs at full speed and such a hit is the rule, not a race.
                g.queued
                    .retain(|e| !matches!(e, StopEvent::Breakpoint { rip, .. } if *rip == gva));
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

    /// A stub over a socket pair that answers like QEMU under KVM (`kvm` true) or TCG:
    /// `info kvm` through `qRcmd`, and `Qqemu.sstep` accepting only what the
    /// accelerator supports. Returns the client end and the packets it received.
    fn accel_stub(kvm: bool) -> (GdbClient, std::thread::JoinHandle<Vec<String>>) {
        use crate::gdb::codec::{encode_packet, to_hex};
        use std::io::{Read, Write};
        let (a, mut b) = std::os::unix::net::UnixStream::pair().unwrap();
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut pending = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let packet = loop {
                    let start = pending.iter().position(|&c| c == b'$');
                    if let Some(start) = start {
                        if let Some(end) = pending[start..].iter().position(|&c| c == b'#') {
                            if pending.len() >= start + end + 3 {
                                let p = pending[start + 1..start + end].to_vec();
                                pending.drain(..start + end + 3);
                                break String::from_utf8(p).unwrap();
                            }
                        }
                    }
                    match b.read(&mut chunk) {
                        Ok(0) | Err(_) => return seen,
                        Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    }
                };
                let supported = if kvm { 3 } else { 7 };
                let replies: Vec<Vec<u8>> = match packet.as_str() {
                    p if p.starts_with("qSupported") => {
                        vec![b"PacketSize=1000;qXfer:features:read+".to_vec()]
                    }
                    p if p.starts_with("qXfer:features:read:target.xml:") => {
                        vec![br#"l<target><reg name="rip" bitsize="64"/></target>"#.to_vec()]
                    }
                    "?" => vec![b"T02thread:01;".to_vec()],
                    p if p.starts_with("qRcmd,") => {
                        let out = if kvm {
                            "kvm support: enabled\r\n"
                        } else {
                            "kvm support: disabled\r\n"
                        };
                        vec![
                            format!("O{}", to_hex(out.as_bytes())).into_bytes(),
                            b"OK".to_vec(),
                        ]
                    }
                    p if p.starts_with("Qqemu.sstep=") => {
                        let v = u64::from_str_radix(&p["Qqemu.sstep=".len()..], 16).unwrap();
                        if v & !supported == 0 {
                            vec![b"OK".to_vec()]
                        } else {
                            vec![b"E22".to_vec()]
                        }
                    }
                    _ => vec![Vec::new()],
                };
                seen.push(packet);
                let mut out = b"+".to_vec();
                for r in replies {
                    out.extend(encode_packet(&r));
                }
                if b.write_all(&out).is_err() {
                    return seen;
                }
            }
        });
        let client = GdbClient::new(Box::new(a), Duration::from_secs(5)).unwrap();
        (client, h)
    }

    #[test]
    fn the_accelerator_decides_breakpoints_and_the_step_mask() {
        for (kvm, accel, mask, kind) in [
            (true, Accelerator::Kvm, 3, BreakpointKind::Hardware),
            (false, Accelerator::Tcg, 7, BreakpointKind::Software),
        ] {
            let (mut client, h) = accel_stub(kvm);
            assert_eq!(detect_accelerator(&mut client), accel);
            assert_eq!(set_best_sstep(&mut client).unwrap(), mask);
            assert_eq!(accel.breakpoint_kind(), kind);
            drop(client);
            let seen = h.join().unwrap();
            let tried: Vec<&String> = seen
                .iter()
                .filter(|p| p.starts_with("Qqemu.sstep"))
                .collect();
            let want: &[&str] = if kvm {
                &["Qqemu.sstep=7", "Qqemu.sstep=3"]
            } else {
                &["Qqemu.sstep=7"]
            };
            assert_eq!(tried, want, "best mask first, then the next");
        }
    }

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
