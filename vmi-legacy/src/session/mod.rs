//! A session with one unpatched QEMU: [`LegacyQemu`].

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vmi_core::deadline::Deadline;
use vmi_core::memory::{MapPhysical, MappedRegion, MemoryLayout};
use vmi_core::park::{AfterAnswer, EventTicket, ParkOps, Parking};
use vmi_core::registers::{ReadRegisters, WriteRegisters};
use vmi_core::{
    Backend, Breakpoints, CapabilityReport, Error, EventControl, Gpa, MemoryInfo, PauseGuard,
    PauseScope, PhysicalMemory, PhysicalMemoryWrite, RegisterSnapshot, Response, Result,
    VcpuControl, VcpuId,
};

use crate::attach;
use crate::capabilities::{legacy_capabilities, Parts, RamPath};
use crate::debugger::{Accelerator, GdbSession};
use crate::gdb::GdbAddress;
use crate::hmp;
use crate::layout::RamLayout;
use crate::liveness::ProcessWatch;
use crate::procfs;
use crate::qmp::{CpuInfo, QemuVersion, QmpClient, StatusInfo, DEFAULT_TIMEOUT};
use crate::ram::{ProcMem, QmpMemory, QmpReadMethod, SharedRam};

mod open_ram;
mod registers;

use open_ram::{locate_backend, open_ram};

/// How to reach guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RamSource {
    /// Try, in order: the file given here (if any), QEMU's shared RAM backend through
    /// `/proc/<pid>/fd` ([`RamSource::Memfd`]), [`RamSource::ProcMem`], then
    /// [`RamSource::Qmp`] with `pmemsave` (probed with a one-byte read), and finally
    /// with `xp`. Why each skipped path failed is kept in [`LegacyQemu::ram_fallbacks`].
    Auto {
        /// The RAM backend's `mem-path`, if known.
        file: Option<PathBuf>,
    },
    /// Map this file (`memory-backend-file,mem-path=…,share=on`).
    File(PathBuf),
    /// Map the descriptor through which QEMU maps its RAM backend, opened from
    /// `/proc/<pid>/fd`: a `memory-backend-memfd`, a deleted hugetlbfs file, or any
    /// shared file backend. Requires `share=on` (a private mapping's changes never reach
    /// the file).
    Memfd,
    /// `process_vm_readv`/`process_vm_writev` on QEMU's mapping (anonymous RAM too).
    ProcMem,
    /// QMP `pmemsave`/HMP `xp` (read-only, slow).
    Qmp(QmpReadMethod),
}

impl Default for RamSource {
    fn default() -> Self {
        RamSource::Auto { file: None }
    }
}

/// What [`LegacyQemu::connect`] needs.
#[derive(Debug, Clone)]
pub struct LegacyConfig {
    /// The QMP socket (`-qmp unix:<path>,server=on,wait=off`).
    pub qmp_socket: PathBuf,
    /// How to reach guest RAM.
    pub ram: RamSource,
    /// Whether guest memory may be written (maps the backend read-write).
    pub writable: bool,
    /// Time limit for every QMP reply and every pause/resume.
    pub timeout: Duration,
    /// The RAM backend that holds guest RAM (`pc.ram`, a memory-backend id). Default:
    /// the one mapped at guest physical address 0. Only one backend is served: with
    /// several (NUMA nodes, hot-plugged DIMMs) the others' RAM reads as unmapped.
    pub ram_backend: Option<String>,
    /// QEMU's GDB stub: a UNIX socket path (`-gdb chardev:…`), or `tcp:HOST:PORT` /
    /// `tcp::PORT` as QEMU writes it (`-s` is `-gdb tcp::1234`); see
    /// [`GdbAddress::parse`]. When given, the session attaches a [`GdbSession`]:
    /// registers are read (and written) through it, pause and resume go through it, and
    /// it provides events ([`LegacyQemu::gdb`]). A guest that was stopped when the
    /// session attached (QMP `stop`, `-S`) stays stopped: the session never resumes it.
    pub gdb_socket: Option<PathBuf>,
}

impl LegacyConfig {
    /// Defaults: automatic RAM access, writable, [`DEFAULT_TIMEOUT`].
    pub fn new(qmp_socket: impl Into<PathBuf>) -> Self {
        Self {
            qmp_socket: qmp_socket.into(),
            ram: RamSource::default(),
            writable: true,
            timeout: DEFAULT_TIMEOUT,
            ram_backend: None,
            gdb_socket: None,
        }
    }
}

/// Which RAM access path a session uses.
#[derive(Debug)]
pub enum RamAccess {
    /// The RAM backend mapped into this process.
    Shared(SharedRam),
    /// `process_vm_readv`/`process_vm_writev`.
    Proc(ProcMem),
    /// QMP.
    Qmp(QmpMemory),
}

impl RamAccess {
    /// A short name: `shared`, `procmem` or `qmp`.
    pub fn kind(&self) -> &'static str {
        match self {
            RamAccess::Shared(_) => "shared",
            RamAccess::Proc(_) => "procmem",
            RamAccess::Qmp(_) => "qmp",
        }
    }

    fn memory(&self) -> &dyn PhysicalMemory {
        match self {
            RamAccess::Shared(m) => m,
            RamAccess::Proc(m) => m,
            RamAccess::Qmp(m) => m,
        }
    }
}

impl PhysicalMemory for RamAccess {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.memory().read_physical(gpa, buf)
    }

    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> Result<()> {
        self.memory().read_physical_many(requests)
    }
}

/// Where QEMU maps the RAM backend, as found through `gpa2hva` and `/proc/<pid>/maps`.
#[derive(Debug, Clone)]
pub struct BackendMapping {
    /// Host virtual address (in QEMU) of backend offset 0.
    pub hva: u64,
    /// The mapping containing it, if `/proc/<pid>/maps` was readable.
    pub maps_entry: Option<procfs::MapsEntry>,
}

/// A session with an unpatched QEMU/KVM (or TCG) guest.
///
/// Implements [`PhysicalMemory`], [`PhysicalMemoryWrite`], [`MemoryLayout`],
/// [`MapPhysical`] (with shared RAM only), [`ReadRegisters`] and [`VcpuControl`], and,
/// with QEMU's gdbstub ([`LegacyConfig::gdb_socket`]), [`WriteRegisters`] (GPRS,
/// CONTROL, EFER and the MSRs the stub has), events and breakpoints. Those are reached
/// through [`LegacyQemu::gdb`] or [`Backend`]'s accessors (`register_writer()`,
/// `events()`, `breakpoints()`), which are `None` without the stub; the capability
/// report says what each part can do. Pauses through this session and through its
/// gdbstub session are counted together. Dropping the session releases every pause it
/// holds: the guest is never left paused by us.
///
/// When QEMU's pid is known, a watch on it makes every memory access fail with
/// [`Error::Disconnected`] once QEMU has exited (shared RAM would otherwise go on
/// returning the dead guest's last state). Regions the mapping hands out
/// ([`MapPhysical`]) cannot be checked: test [`LegacyQemu::qemu_exited`] yourself.
#[derive(Debug)]
pub struct LegacyQemu {
    qmp: Arc<Mutex<QmpClient>>,
    pid: Option<libc::pid_t>,
    version: QemuVersion,
    full_layout: RamLayout,
    layout: RamLayout,
    backend: Option<BackendMapping>,
    /// Shared with the gdbstub session for its page walks ([`GdbSession::use_memory`]).
    ram: Arc<RamAccess>,
    ram_fallbacks: Vec<(&'static str, Error)>,
    cpus: Mutex<Vec<CpuInfo>>,
    /// The parked-vCPU state of this guest, shared with the gdbstub session if any.
    parking: Arc<Parking>,
    gdb: Option<GdbSession>,
    /// Set once QEMU exited (`None`: pid unknown, or pidfds unavailable).
    watch: Option<ProcessWatch>,
    /// [`Self::connect`] found the guest in `debug` with nobody attached to the stub.
    recovered_stale_debug_stop: bool,
}

/// Pausing through QMP `stop`/`cont` (the session without a gdbstub).
#[derive(Debug)]
struct QmpPause {
    qmp: Arc<Mutex<QmpClient>>,
    /// Whether our pause stopped a running guest (and so releasing must resume it).
    resume_on_release: AtomicBool,
    timeout: Duration,
}

impl QmpPause {
    fn qmp(&self) -> MutexGuard<'_, QmpClient> {
        self.qmp.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait_running(&self, qmp: &mut QmpClient, running: bool) -> Result<()> {
        let deadline = Deadline::after(self.timeout);
        loop {
            if qmp.query_status()?.running == running {
                return Ok(());
            }
            deadline.check(if running {
                "the guest to run"
            } else {
                "the guest to stop"
            })?;
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl ParkOps for QmpPause {
    /// QMP `stop`, then waits until `query-status` reports the guest not running. A
    /// guest that is already not running (paused by someone else, or `-S` prelaunch)
    /// is left alone, and will not be resumed when the pause is released.
    fn stop(&self, _scope: PauseScope) -> Result<Vec<(VcpuId, RegisterSnapshot)>> {
        let mut qmp = self.qmp();
        if !qmp.query_status()?.running {
            self.resume_on_release.store(false, Ordering::SeqCst);
            return Ok(Vec::new());
        }
        qmp.stop()?;
        // From here on, a release must resume even if waiting fails.
        self.resume_on_release.store(true, Ordering::SeqCst);
        self.wait_running(&mut qmp, false)?;
        Ok(Vec::new())
    }

    /// QMP `cont`, then waits until the guest runs, if our pause stopped it. There are
    /// no register writes to apply: without the gdbstub the capability table refuses
    /// them.
    fn run(
        &self,
        _scope: PauseScope,
        _writes: &[(VcpuId, RegisterSnapshot)],
        _still_parked: &[VcpuId],
    ) -> Result<()> {
        if !self.resume_on_release.load(Ordering::SeqCst) {
            return Ok(());
        }
        let mut qmp = self.qmp();
        qmp.cont()?;
        self.resume_on_release.store(false, Ordering::SeqCst);
        self.wait_running(&mut qmp, true)
    }

    /// Without the gdbstub there are no events to answer.
    fn answer(&self, _ticket: EventTicket, _response: Response, _after: AfterAnswer) -> Result<()> {
        Ok(())
    }
}

impl LegacyQemu {
    /// Connects to QEMU's QMP socket, reads the memory layout (`info mtree -f`), finds
    /// QEMU's pid and opens guest RAM as `config.ram` says.
    ///
    /// A QMP socket that turns out to be QEMU's gdbstub (the two paths swapped) fails
    /// with [`Error::InvalidArgument`] naming the swap, after detaching from the stub so
    /// that the guest it stopped runs again.
    pub fn connect(config: LegacyConfig) -> Result<Self> {
        let mut qmp = crate::sockets::connect_qmp(&config)?;
        let version = qmp.query_version()?;
        let mtree = qmp.human_monitor_command("info mtree -f")?;
        let full_layout = hmp::parse_mtree_flat(&mtree)?;
        let backend_name = match &config.ram_backend {
            Some(n) => n.clone(),
            None => full_layout
                .main_backend()
                .ok_or_else(|| Error::malformed("HMP", "info mtree -f shows no guest RAM"))?
                .to_owned(),
        };
        let layout = full_layout.for_backend(&backend_name);
        if layout.is_empty() {
            return Err(Error::InvalidArgument {
                what: "RAM backend",
                reason: format!(
                    "no RAM region named {backend_name:?} in the system address space (have: {})",
                    full_layout.backend_names().join(", ")
                )
                .into(),
            });
        }
        let cpus = qmp.query_cpus_fast()?;
        let pid = find_pid(&qmp, &cpus);
        let backend = pid.and_then(|pid| locate_backend(&mut qmp, pid, &layout).ok());

        let qmp = Arc::new(Mutex::new(qmp));
        let mut fallbacks = Vec::new();
        let ram = open_ram(
            &config,
            &qmp,
            pid,
            &layout,
            &backend_name,
            backend.as_ref(),
            &mut fallbacks,
        )?;
        let mut stale_debug = false;
        let gdb = match &config.gdb_socket {
            Some(path) => {
                let addr = GdbAddress::parse(path)?;
                let mut q = qmp.lock().unwrap_or_else(|e| e.into_inner());
                // A client of the stub already: our connection would wait in QEMU's
                // queue and stop the guest when that client leaves (`crate::attach`).
                attach::refuse_if_held(&mut q, &addr)?;
                // The stub stops the guest on attach and cannot tell whether it ran:
                // ask QMP first. `debug` with nobody attached is a stop at a breakpoint
                // of a client that is gone (a killed tool): our handshake's `?` removes
                // its breakpoints, and the session lets the guest run.
                let status = q.query_status()?;
                drop(q);
                stale_debug = status.status == "debug";
                let was_running = status.running || stale_debug;
                Some(GdbSession::connect(&addr, config.timeout, was_running)?)
            }
            None => None,
        };
        let ram = Arc::new(ram);
        if let (Some(gdb), RamAccess::Shared(_) | RamAccess::Proc(_)) = (&gdb, &*ram) {
            // Faster than the stub's `m` packets (QMP is not).
            gdb.use_memory(ram.clone());
        }
        let parts = Parts {
            gdb: gdb.is_some(),
            qmp: true,
            ram: match &*ram {
                RamAccess::Shared(_) => RamPath::Shared,
                RamAccess::Proc(_) => RamPath::Proc,
                RamAccess::Qmp(_) => RamPath::Qmp,
            },
            kvm: gdb
                .as_ref()
                .is_some_and(|g| g.accelerator() == Accelerator::Kvm),
        };
        let parking = match &gdb {
            // One count for both paths: the gdbstub stops the VM for QMP's pauses too.
            Some(gdb) => {
                let p = Arc::clone(gdb.parking());
                p.set_capabilities(legacy_capabilities(parts));
                p
            }
            None => Parking::new(
                Arc::new(QmpPause {
                    qmp: Arc::clone(&qmp),
                    resume_on_release: AtomicBool::new(false),
                    timeout: config.timeout,
                }),
                legacy_capabilities(parts),
            ),
        };
        let watch = pid.and_then(|p| ProcessWatch::new(p).ok());
        Ok(Self {
            gdb,
            watch,
            parking,
            qmp,
            pid,
            version,
            full_layout,
            layout,
            backend,
            ram,
            ram_fallbacks: fallbacks,
            cpus: Mutex::new(cpus),
            recovered_stale_debug_stop: stale_debug,
        })
    }

    /// Whether [`Self::connect`] found the guest stopped in run state `debug` with no
    /// gdbstub client attached — the breakpoints of a tool that died without removing
    /// them (see [`crate::attach`]) — and recovered it: attaching removed QEMU's stale
    /// breakpoints and the session let the guest run.
    pub fn recovered_stale_debug_stop(&self) -> bool {
        self.recovered_stale_debug_stop
    }

    /// The GDB stub session, if [`LegacyConfig::gdb_socket`] was given: breakpoints,
    /// watchpoints and events.
    pub fn gdb(&self) -> Option<&GdbSession> {
        self.gdb.as_ref()
    }

    /// The QMP connection, for commands this type does not wrap. Hold the lock briefly:
    /// every operation of the session needs it.
    pub fn qmp(&self) -> MutexGuard<'_, QmpClient> {
        self.qmp.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A shared handle on the QMP connection (e.g. for a [`QmpMemory`]).
    pub fn qmp_handle(&self) -> Arc<Mutex<QmpClient>> {
        Arc::clone(&self.qmp)
    }

    /// QEMU's pid in this PID namespace, if it could be found.
    pub fn pid(&self) -> Option<libc::pid_t> {
        self.pid
    }

    /// Whether QEMU is known to have exited (its pid is watched when known).
    pub fn qemu_exited(&self) -> bool {
        self.watch.as_ref().is_some_and(ProcessWatch::has_exited)
    }

    /// [`Error::Disconnected`] once QEMU has exited.
    fn check_alive(&self) -> Result<()> {
        match &self.watch {
            Some(w) => w.check(),
            None => Ok(()),
        }
    }

    /// QEMU's version.
    pub fn version(&self) -> &QemuVersion {
        &self.version
    }

    /// The RAM of the guest's RAM backend (what [`MemoryLayout`] reports).
    pub fn layout(&self) -> &RamLayout {
        &self.layout
    }

    /// Every `ram` region of the system address space, other backends (e.g. VRAM)
    /// included.
    pub fn full_layout(&self) -> &RamLayout {
        &self.full_layout
    }

    /// Where QEMU maps the RAM backend, if it could be found.
    pub fn backend_mapping(&self) -> Option<&BackendMapping> {
        self.backend.as_ref()
    }

    /// The RAM access path in use.
    pub fn ram_access(&self) -> &RamAccess {
        &self.ram
    }

    /// With [`RamSource::Auto`]: the paths tried before the one in use, and why each
    /// failed.
    pub fn ram_fallbacks(&self) -> &[(&'static str, Error)] {
        &self.ram_fallbacks
    }

    /// `query-status`.
    pub fn status(&self) -> Result<StatusInfo> {
        self.qmp().query_status()
    }

    /// `query-cpus-fast` (also refreshes the vCPU list used by register reads).
    pub fn cpus(&self) -> Result<Vec<CpuInfo>> {
        let cpus = self.qmp().query_cpus_fast()?;
        *self.cpus.lock().unwrap_or_else(|e| e.into_inner()) = cpus.clone();
        Ok(cpus)
    }

    fn cpu_index(&self, vcpu: VcpuId) -> Result<u32> {
        let known = |cpus: &[CpuInfo]| cpus.iter().any(|c| c.cpu_index == u32::from(vcpu.raw()));
        let cached = self.cpus.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if known(&cached) {
            return Ok(u32::from(vcpu.raw()));
        }
        let fresh = self.cpus()?;
        if known(&fresh) {
            Ok(u32::from(vcpu.raw()))
        } else {
            Err(Error::NoSuchVcpu {
                vcpu,
                count: fresh.len() as u32,
            })
        }
    }
}

/// QEMU's pid: the QMP socket's peer (`SO_PEERCRED`, right across PID namespaces),
/// else the thread group of a vCPU thread.
fn find_pid(qmp: &QmpClient, cpus: &[CpuInfo]) -> Option<libc::pid_t> {
    if let Ok(pid) = qmp.peer_pid() {
        return Some(pid);
    }
    cpus.iter()
        .filter_map(|c| libc::pid_t::try_from(c.thread_id).ok())
        .find_map(|tid| procfs::tgid_of(tid).ok())
}

impl PhysicalMemory for LegacyQemu {
    /// Reads guest RAM and ROM (the firmware's shadowed BIOS and option ROMs, `rom:` in
    /// `info mtree -f`); [`Error::Disconnected`] once QEMU has exited.
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.check_alive()?;
        let r = self.ram.memory().read_physical(gpa, buf);
        // QEMU may have died during the read: do not hand out what it left behind, and
        // say so rather than how the read failed.
        self.check_alive()?;
        r
    }

    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> Result<()> {
        self.check_alive()?;
        let r = self.ram.memory().read_physical_many(requests);
        self.check_alive()?;
        r
    }
}

impl PhysicalMemoryWrite for LegacyQemu {
    /// Writes guest RAM; refuses ROM ranges (the guest cannot write them either) with
    /// [`Error::Unsupported`], before writing anything.
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        self.check_alive()?;
        self.layout.check_writable(gpa, data.len())?;
        match &*self.ram {
            RamAccess::Shared(m) => m.write_physical(gpa, data),
            RamAccess::Proc(m) => m.write_physical(gpa, data),
            RamAccess::Qmp(_) => Err(Error::unsupported(
                "guest memory write",
                "QMP has no command to write guest memory; use shared RAM or ProcMem",
            )),
        }
    }
}

impl MemoryLayout for LegacyQemu {
    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(self.layout.memory_info())
    }
}

impl MapPhysical for LegacyQemu {
    fn mapped_regions(&self) -> Result<Vec<MappedRegion<'_>>> {
        match &*self.ram {
            RamAccess::Shared(m) => m.mapped_regions(),
            other => Err(Error::unsupported(
                "guest memory mapping",
                format!(
                    "guest RAM is accessed through {}, not mapped; use a shared RAM backend",
                    other.kind()
                ),
            )),
        }
    }
}

impl VcpuControl for LegacyQemu {
    fn vcpu_count(&self) -> Result<u32> {
        Ok(self.cpus()?.len() as u32)
    }

    /// QMP `stop` (waiting until `query-status` reports the guest not running), or,
    /// with a gdbstub session, the stub's interrupt (a QMP `stop` would be reported to
    /// the stub as a stop). A guest already stopped by someone else (QMP `stop`, `-S`)
    /// is left alone and not resumed when the pause ends. Counted together with the
    /// pauses of [`LegacyQemu::gdb`].
    fn pause(&self) -> Result<PauseGuard<'_>> {
        self.parking.pause(PauseScope::All)
    }

    fn is_paused(&self) -> bool {
        self.parking.is_paused()
    }
}

impl Backend for LegacyQemu {
    fn name(&self) -> Cow<'_, str> {
        let gdb = if self.gdb.is_some() { " + gdbstub" } else { "" };
        format!("legacy (QMP + {}{gdb})", self.ram.kind()).into()
    }

    fn capabilities(&self) -> Arc<CapabilityReport> {
        self.parking.capabilities()
    }

    fn physical_memory(&self) -> &dyn PhysicalMemory {
        self
    }

    fn physical_memory_writer(&self) -> Option<&dyn PhysicalMemoryWrite> {
        match *self.ram {
            RamAccess::Shared(_) | RamAccess::Proc(_) => Some(self),
            RamAccess::Qmp(_) => None,
        }
    }

    fn memory_layout(&self) -> Option<&dyn MemoryLayout> {
        Some(self)
    }

    fn memory_mapping(&self) -> Option<&dyn MapPhysical> {
        match *self.ram {
            RamAccess::Shared(_) => Some(self),
            _ => None,
        }
    }

    fn register_reader(&self) -> Option<&dyn ReadRegisters> {
        Some(self)
    }

    fn register_writer(&self) -> Option<&dyn WriteRegisters> {
        self.gdb.as_ref().map(|g| g as &dyn WriteRegisters)
    }

    fn vcpu_control(&self) -> Option<&dyn VcpuControl> {
        Some(self)
    }

    fn events(&self) -> Option<&dyn EventControl> {
        self.gdb.as_ref().map(|g| g as &dyn EventControl)
    }

    fn breakpoints(&self) -> Option<&dyn Breakpoints> {
        self.gdb.as_ref().map(|g| g as &dyn Breakpoints)
    }
}

impl Drop for LegacyQemu {
    fn drop(&mut self) {
        // Ends every pause (resuming the guest); the gdbstub session, dropped next,
        // then removes its breakpoints and detaches.
        let _ = self.parking.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<LegacyQemu>();
        check::<RamAccess>();
    }

    #[test]
    fn config_defaults() {
        let c = LegacyConfig::new("/run/qmp.sock");
        assert_eq!(c.ram, RamSource::Auto { file: None });
        assert!(c.writable);
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
    }
}
