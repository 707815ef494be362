//! Connecting to VMs and the state one KVMi session shares between its parts.
//!
//! [`KvmiListener`] listens where QEMU connects (a UNIX socket path, as LibVMI takes
//! a KVMi socket path, or a vsock port) and turns each accepted VM into a
//! [`KvmiVm`], one session per VM. [`KvmiVm::listen`] is the one-VM shortcut.
//!
//! Errors say what went wrong in terms of the setup: a path whose directory does not
//! exist, no VM connecting before the deadline, a VM closing the connection during
//! setup (QEMU does that when it refuses the cookie, i.e. the secret differs).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kvmi_proto::{Config, Connection, Listener, ProtoError};
use vmi_core::park::Parking;
use vmi_core::{CapabilityReport, Deadline, Error, Result, VcpuId};

use crate::breakpoints::BreakpointState;
use crate::capabilities::{report, HostFacts};
use crate::error::proto;
use crate::events::Monitors;
use crate::flagged::{Flagged, FlaggedGuard};
use crate::inbox::Inbox;
use crate::park::{KvmiPark, VcpuPause};
use crate::slat::SlatState;

/// Most vCPUs a session takes: every count and index fits the 16-bit vCPU field of
/// the protocol (`vmi_core::VcpuId`), so nothing wraps.
pub const MAX_VCPUS: u32 = u16::MAX as u32;

/// How long one wait for events lasts before a waiter re-checks its own condition.
pub(crate) const PUMP_SLICE: Duration = Duration::from_millis(20);

/// What every part of one session shares: the connection, what the host is, and the
/// session's state split by concern, each part owned (defined and changed) by its
/// module behind its own lock. A lock is never held across a wait, nor while another
/// of these locks is taken.
pub(crate) struct Shared {
    pub(crate) conn: Connection,
    pub(crate) facts: HostFacts,
    pub(crate) vcpu_count: u32,
    /// Pauses per vCPU ([`crate::park`]).
    pauses: Mutex<Vec<VcpuPause>>,
    /// Events received, queued for and handed to the tool ([`crate::inbox`]); its bit:
    /// something waits for the tool's next look ([`Inbox::has_news`]).
    inbox: Flagged<Inbox>,
    /// What is enabled on the host ([`crate::events`]); its bit: routing has a filter
    /// to apply ([`Monitors::routing_filters`]).
    monitors: Flagged<Monitors>,
    /// Software breakpoints and step-overs ([`crate::breakpoints`]).
    breakpoints: Mutex<BreakpointState>,
    /// Page access, views, remaps, #VE ([`crate::slat`]).
    slat: Mutex<SlatState>,
    next_ticket: AtomicU64,
    pub(crate) page_cache: crate::page_cache::PageCache,
    /// The teardown's deadline once it started: every wait after it is bounded by it.
    closing: Mutex<Option<Deadline>>,
    /// MSRs the host refuses to read (see [`crate::registers::fetch`]).
    pub(crate) refused_msrs: crate::registers::RefusedMsrs,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Pause state per vCPU.
    pub(crate) fn pauses(&self) -> MutexGuard<'_, Vec<VcpuPause>> {
        locked(&self.pauses)
    }

    /// The event inbox.
    pub(crate) fn inbox(&self) -> FlaggedGuard<'_, Inbox> {
        self.inbox.lock()
    }

    /// Whether the inbox may hold something for the tool's next look (when not, the
    /// look needs no lock).
    pub(crate) fn inbox_has_news(&self) -> bool {
        self.inbox.bit()
    }

    /// The monitors enabled on the host.
    pub(crate) fn monitors(&self) -> FlaggedGuard<'_, Monitors> {
        self.monitors.lock()
    }

    /// Whether routing has a monitor filter to apply (when not, it needs no lock).
    pub(crate) fn routing_filters(&self) -> bool {
        self.monitors.bit()
    }

    /// Breakpoints and step-overs.
    pub(crate) fn breakpoints(&self) -> MutexGuard<'_, BreakpointState> {
        locked(&self.breakpoints)
    }

    /// SLAT state.
    pub(crate) fn slat(&self) -> MutexGuard<'_, SlatState> {
        locked(&self.slat)
    }

    /// Starts the teardown: waits from now on end at `deadline` at the latest.
    pub(crate) fn set_closing(&self, deadline: Deadline) {
        *locked(&self.closing) = Some(deadline);
    }

    /// How long to wait for a reply: the request timeout, or what is left of the
    /// teardown's deadline once it started.
    pub(crate) fn reply_timeout(&self) -> Duration {
        let t = self.conn.config().request_timeout;
        match *locked(&self.closing) {
            Some(d) => d.remaining().map_or(t, |r| r.min(t)),
            None => t,
        }
    }

    pub(crate) fn check_vcpu(&self, vcpu: VcpuId) -> Result<()> {
        if u32::from(vcpu.0) < self.vcpu_count {
            Ok(())
        } else {
            Err(Error::NoSuchVcpu {
                vcpu,
                count: self.vcpu_count,
            })
        }
    }

    /// Fails with [`Error::Disconnected`] once the host is gone (a pause counted by a
    /// guard whose resume failed would otherwise "succeed" without a host).
    pub(crate) fn check_connected(&self) -> Result<()> {
        if self.conn.is_closed() {
            return Err(Error::Disconnected {
                reason: "the KVMi connection is closed".into(),
            });
        }
        Ok(())
    }

    /// The stamps of every vCPU's `PAUSE_VCPU` hold, or `None` when some vCPU is not
    /// held by one (it runs, or waits in a tool event).
    pub(crate) fn hold_set(&self) -> Option<Vec<u64>> {
        self.pauses()
            .iter()
            .map(|h| h.pause_held.as_ref().map(|_| h.held_stamp))
            .collect()
    }

    pub(crate) fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }
}

/// Accepts VMs on a KVMi socket: one [`KvmiVm`] per VM.
pub struct KvmiListener {
    listener: Listener,
    what: String,
}

impl std::fmt::Debug for KvmiListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmiListener")
            .field("at", &self.what)
            .finish()
    }
}

impl KvmiListener {
    /// Listens on the UNIX socket `path` (QEMU's `-object introspection,chardev=…`
    /// chardev connects there). The directory must exist.
    pub fn bind(path: impl AsRef<Path>, config: Config) -> Result<Self> {
        let path = path.as_ref();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::InvalidArgument {
                    what: "KVMi socket path",
                    reason: format!(
                        "{}: directory {} does not exist",
                        path.display(),
                        dir.display()
                    )
                    .into(),
                });
            }
        }
        let listener = Listener::bind(path, config)
            .map_err(|e| proto(format!("listening on {}", path.display()), e))?;
        Ok(Self {
            listener,
            what: path.display().to_string(),
        })
    }

    /// Listens on `AF_VSOCK` port `port` (any CID).
    pub fn bind_vsock(port: u32, config: Config) -> Result<Self> {
        let listener = Listener::bind_vsock(port, config)
            .map_err(|e| proto(format!("listening on vsock port {port}"), e))?;
        Ok(Self {
            listener,
            what: format!("vsock port {port}"),
        })
    }

    /// Waits up to `timeout` for the next VM and sets up its session.
    pub fn accept(&self, timeout: Duration) -> Result<KvmiVm> {
        let conn = self.listener.accept(timeout).map_err(|e| match e {
            ProtoError::Timeout(after) => match self.listener.take_rejected().pop() {
                // A VM did connect but its setup failed: that is the news.
                Some(r) => self.setup_failed(r.error),
                None => Error::Timeout {
                    what: format!("a VM to connect to {}", self.what).into(),
                    after,
                },
            },
            other => self.setup_failed(other),
        })?;
        KvmiVm::from_connection(conn)
    }
}

impl KvmiListener {
    /// The error for a VM whose connection or setup failed with `e`, saying what the
    /// likely cause is.
    fn setup_failed(&self, e: ProtoError) -> Error {
        match e {
            ProtoError::PeerRefused { uid, pid } => Error::Unsupported {
                feature: format!("a VM connecting to {}", self.what).into(),
                reason: format!(
                    "its peer (uid {uid}, pid {pid}) is not an allowed uid \
                     (Config::allowed_peer_uids): the connection was refused before the \
                     handshake"
                )
                .into(),
            },
            // QEMU closes the socket when it refuses the cookie; what the tool then
            // sees depends on timing (a reset, a broken pipe, the end of the stream).
            other => Error::Disconnected {
                reason: format!(
                    "a VM connected to {} but setup failed ({other}); QEMU closes the \
                     connection when it refuses the cookie: check that the secret matches \
                     QEMU's",
                    self.what
                )
                .into(),
            },
        }
    }
}

/// One introspected VM over KVMi. Implements `vmi-core`'s traits; see the crate
/// documentation. Dropping it (or [`KvmiVm::close`]) tears the session down and leaves
/// the guest running as it was found.
pub struct KvmiVm {
    pub(crate) shared: Arc<Shared>,
    pub(crate) parking: Arc<Parking>,
    /// Hands out asynchronous events (see [`crate::events::Detached`]).
    pub(crate) detached: Arc<Parking>,
    closed: AtomicBool,
    /// The reply to enabling UNHOOK at setup, never waited for (kept so that it is
    /// not counted as a stray reply).
    _unhook_enabling: Option<kvmi_proto::Pending<()>>,
}

impl std::fmt::Debug for KvmiVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvmiVm")
            .field("vm", &self.shared.conn.hookup().name)
            .field("abi", &self.shared.conn.abi())
            .field("vcpus", &self.shared.vcpu_count)
            .finish_non_exhaustive()
    }
}

impl KvmiVm {
    /// Listens on `path` and waits up to `timeout` for one VM.
    pub fn listen(path: impl AsRef<Path>, config: Config, timeout: Duration) -> Result<Self> {
        KvmiListener::bind(path, config)?.accept(timeout)
    }

    /// A session on an established connection.
    pub(crate) fn from_connection(conn: Connection) -> Result<Self> {
        // Asked by kvmi-proto during the setup (no round trip here).
        let vcpu_count = conn.vcpu_count().ok_or_else(|| Error::Unsupported {
            feature: "KVMI_VM_GET_INFO".into(),
            reason: "the host refused it at setup: the vCPU count is unknown".into(),
        })?;
        if vcpu_count == 0 || vcpu_count > MAX_VCPUS {
            return Err(Error::malformed(
                "KVMi reply",
                format!(
                    "VM_GET_INFO reports {vcpu_count} vCPUs; a KVMi vCPU id is 16 bits, so a \
                     session addresses 1..={MAX_VCPUS} vCPUs (KVM itself allows at most 4096)"
                ),
            ));
        }
        let facts = HostFacts::of(&conn);
        let caps = report(&facts);
        let shared = Arc::new(Shared {
            conn,
            facts,
            vcpu_count,
            pauses: Mutex::new((0..vcpu_count).map(|_| VcpuPause::default()).collect()),
            inbox: Flagged::new(Inbox::default(), Inbox::has_news),
            monitors: Flagged::new(Monitors::default(), Monitors::routing_filters),
            breakpoints: Mutex::default(),
            slat: Mutex::default(),
            next_ticket: AtomicU64::new(1),
            page_cache: Default::default(),
            closing: Mutex::new(None),
            refused_msrs: Default::default(),
        });
        let ops = Arc::new(KvmiPark {
            shared: Arc::clone(&shared),
        });
        let unhook_enabling = crate::events::enable_unhook(&shared);
        let detached = Parking::new(Arc::new(crate::events::Detached), caps.clone());
        let parking = Parking::new(ops, caps);
        Ok(Self {
            shared,
            parking,
            detached,
            closed: AtomicBool::new(false),
            _unhook_enabling: unhook_enabling,
        })
    }

    /// The VM's name as QEMU announced it.
    pub fn vm_name(&self) -> &str {
        &self.shared.conn.hookup().name
    }

    /// The capability table in force.
    pub fn capability_report(&self) -> Arc<CapabilityReport> {
        self.parking.capabilities()
    }

    /// Whether the host announced UNHOOK. The tool sees it as
    /// [`vmi_core::EventKind::Unhook`]; once it has answered (or dropped) that event,
    /// the session tears itself down on the next wait for events, which then fails
    /// with [`Error::Disconnected`].
    pub fn unhook_requested(&self) -> bool {
        self.shared.inbox().unhooked
    }

    /// Tears the session down (see [`crate::teardown`]) and reports every step that
    /// failed; the session is unusable afterwards. Dropping does the same silently.
    pub fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        crate::teardown::run(
            &self.shared,
            &self.parking,
            Deadline::after(teardown_time(&self.shared)),
        )
    }
}

fn teardown_time(sh: &Shared) -> Duration {
    sh.conn
        .config()
        .request_timeout
        .min(Duration::from_secs(10))
}

impl Drop for KvmiVm {
    fn drop(&mut self) {
        let _ = self.close();
    }
}
