//! Connecting to VMs and the state one KVMi session shares between its parts.
//!
//! [`KvmiListener`] listens where QEMU connects (a UNIX socket path, as LibVMI takes
//! a KVMi socket path, or a vsock port) and turns each accepted VM into a
//! [`KvmiVm`], one session per VM. [`KvmiVm::listen`] is the one-VM shortcut.
//!
//! Errors say what went wrong in terms of the setup: a path whose directory does not
//! exist, no VM connecting before the deadline, a VM closing the connection during
//! setup (QEMU does that when it refuses the cookie, i.e. the secret differs).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use kvmi_proto::{Config, Connection, Event as KEvent, EventKind as KKind, Listener, ProtoError};
use vmi_core::park::Parking;
use vmi_core::{CapabilityReport, Deadline, Error, Result, VcpuId};

use crate::capabilities::{report, HostFacts};
use crate::error::proto;
use crate::events::Monitors;
use crate::park::KvmiPark;

/// Most vCPUs a session takes: every count and index fits the 16-bit vCPU field of
/// the protocol (`vmi_core::VcpuId`), so nothing wraps.
pub const MAX_VCPUS: u32 = u16::MAX as u32;

/// How long one wait for events lasts before a waiter re-checks its own condition.
pub(crate) const PUMP_SLICE: Duration = Duration::from_millis(20);

/// Pause and event book-keeping of one vCPU.
#[derive(Default)]
pub(crate) struct VcpuHost {
    /// `VCPU_PAUSE` requests whose `PAUSE_VCPU` event has not arrived yet.
    pub(crate) pause_requested: u32,
    /// The `PAUSE_VCPU` event the vCPU is held in while paused.
    pub(crate) pause_held: Option<KEvent>,
    /// A stamp unique to the current `pause_held` hold (the page cache's proof that
    /// the vCPU has not run since).
    pub(crate) held_stamp: u64,
    /// Something (a pause) wants this vCPU stopped.
    pub(crate) pause_wanted: bool,
    /// A tool-visible event of this vCPU is queued or handed out, unanswered.
    pub(crate) busy: bool,
    /// Singlestep is armed on the host (by the tool).
    pub(crate) singlestep: bool,
    /// A step over one of our breakpoints is in progress.
    pub(crate) step_over: Option<crate::breakpoints::StepOver>,
}

/// Mutable state of a session, behind one lock (never held across a wait).
pub(crate) struct HostState {
    pub(crate) vcpus: Vec<VcpuHost>,
    /// Kvmi events handed to the tool as `PendingEvent`s, by ticket.
    pub(crate) outstanding: HashMap<u64, KEvent>,
    /// Kvmi events received and not yet handed out.
    pub(crate) queue: VecDeque<KEvent>,
    /// Asynchronous register events, answered on arrival, not yet handed out (see
    /// [`crate::events::Detached`]).
    pub(crate) detached: VecDeque<vmi_core::Event>,
    /// What is enabled on the host (undone at teardown).
    pub(crate) monitors: Monitors,
    /// Restricted page access: (view, gfn) → allowed bits.
    pub(crate) restricted: BTreeMap<(u16, u64), u8>,
    /// Software breakpoints: gpa → the tool's breakpoints there (several when
    /// addresses of different spaces share the byte) and the original byte.
    pub(crate) breakpoints: BTreeMap<u64, (Vec<vmi_core::Breakpoint>, u8)>,
    /// The host sent UNHOOK.
    pub(crate) unhooked: bool,
    /// The tool answered (or dropped) the UNHOOK event: the session tears itself
    /// down on the tool's next wait for events.
    pub(crate) unhook_answered: bool,
    /// EPT views this session created (or took from the fixed pool).
    pub(crate) views: std::collections::BTreeSet<u16>,
    /// vCPUs this session switched to another view.
    pub(crate) switched: std::collections::BTreeSet<u16>,
    /// (view, old gfn) remapped with CHANGE_GFN.
    pub(crate) remaps: std::collections::BTreeSet<(u16, u64)>,
    /// (vCPU, view) pairs made visible to the guest (`CONTROL_EPT_VIEW`).
    pub(crate) visible: std::collections::BTreeSet<(u16, u16)>,
    /// vCPUs with #VE enabled (`SET_VE_INFO`).
    pub(crate) ve_vcpus: std::collections::BTreeSet<u16>,
}

/// What every part of one session shares.
pub(crate) struct Shared {
    pub(crate) conn: Connection,
    pub(crate) facts: HostFacts,
    pub(crate) vcpu_count: u32,
    state: Mutex<HostState>,
    next_ticket: AtomicU64,
    pub(crate) page_cache: crate::page_cache::PageCache,
    /// The teardown's deadline once it started: every wait after it is bounded by it.
    closing: Mutex<Option<Deadline>>,
    /// MSRs the host refuses to read (see [`crate::registers::fetch`]).
    pub(crate) refused_msrs: crate::registers::RefusedMsrs,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, HostState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the teardown: waits from now on end at `deadline` at the latest.
    pub(crate) fn set_closing(&self, deadline: Deadline) {
        *self.closing.lock().unwrap_or_else(|e| e.into_inner()) = Some(deadline);
    }

    /// How long to wait for a reply: the request timeout, or what is left of the
    /// teardown's deadline once it started.
    pub(crate) fn reply_timeout(&self) -> Duration {
        let t = self.conn.config().request_timeout;
        match *self.closing.lock().unwrap_or_else(|e| e.into_inner()) {
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
        let st = self.lock();
        st.vcpus
            .iter()
            .map(|h| h.pause_held.as_ref().map(|_| h.held_stamp))
            .collect()
    }

    pub(crate) fn ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits up to `timeout` for one event from the host and routes it.
    pub(crate) fn pump(&self, timeout: Duration) -> Result<()> {
        match self.conn.next_event(timeout) {
            Ok(ev) => {
                self.route(ev);
                Ok(())
            }
            Err(ProtoError::Timeout(_)) => Ok(()),
            Err(e) => Err(proto("waiting for events", e)),
        }
    }

    /// Files one received event: `PAUSE_VCPU` into the pause table (or answered at
    /// once when nothing wants the vCPU stopped), no-reply and unknown events away,
    /// everything else into the queue the tool reads.
    pub(crate) fn route(&self, ev: KEvent) {
        let mut st = self.lock();
        let idx = usize::from(ev.vcpu());
        let limit = 4 * st.vcpus.len() + 16;
        match ev.kind {
            KKind::PauseVcpu => {
                let Some(h) = st.vcpus.get_mut(idx) else {
                    return; // dropped after the lock: answered with CONTINUE
                };
                h.pause_requested = h.pause_requested.saturating_sub(1);
                if h.pause_wanted && h.pause_held.is_none() {
                    h.pause_held = Some(ev);
                    h.held_stamp = self.next_ticket.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                drop(st);
                drop(ev);
            }
            KKind::CmdError(_) | KKind::Unknown(_) => {
                drop(st);
                drop(ev);
            }
            KKind::Unhook => {
                // Announced once: more UNHOOKs (they need no reply) say nothing new,
                // and a host repeating it cannot grow the queue.
                if !st.unhooked {
                    st.unhooked = true;
                    st.queue.push_back(ev);
                }
            }
            _ => {
                if idx >= st.vcpus.len() || st.queue.len() >= limit {
                    drop(st);
                    drop(ev); // a host inventing vCPUs or flooding: default reply
                    return;
                }
                if crate::breakpoints::foreign_space(self, &st, &ev) {
                    drop(st);
                    // A hit in an address space none of the breakpoints there is for:
                    // stepped over internally, never shown.
                    crate::breakpoints::step_over_foreign(self, ev);
                    return;
                }
                let ev = if matches!(ev.kind, KKind::Singlestep { .. }) {
                    match crate::breakpoints::on_singlestep(self, &mut st, ev) {
                        Some(ev) => ev,
                        None => return,
                    }
                } else if st.monitors.filtered(&ev.kind) {
                    drop(st);
                    drop(ev); // not the `equal` value, or unchanged: the write goes on
                    return;
                } else if st.monitors.asynchronous(&ev.kind) {
                    drop(st);
                    // Answered now (the default reply: the write goes on); the tool's
                    // guard is made from what the host reported, after the reply.
                    let view = crate::events::convert(self, &ev);
                    drop(ev);
                    let mut st = self.lock();
                    if st.detached.len() < crate::events::DETACHED_MAX {
                        st.detached.push_back(view);
                    }
                    return;
                } else if matches!(ev.kind, KKind::Trap(_)) && !st.monitors.trap {
                    drop(st);
                    drop(ev); // the TRAP after our own injection: CONTINUE
                    return;
                } else {
                    ev
                };
                st.vcpus[idx].busy = true;
                st.queue.push_back(ev);
            }
        }
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
            state: Mutex::new(HostState {
                vcpus: (0..vcpu_count).map(|_| VcpuHost::default()).collect(),
                outstanding: HashMap::new(),
                queue: VecDeque::new(),
                detached: VecDeque::new(),
                monitors: Monitors::default(),
                restricted: BTreeMap::new(),
                breakpoints: BTreeMap::new(),
                unhooked: false,
                unhook_answered: false,
                views: Default::default(),
                visible: Default::default(),
                ve_vcpus: Default::default(),
                switched: Default::default(),
                remaps: Default::default(),
            }),
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
        self.shared.lock().unhooked
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
