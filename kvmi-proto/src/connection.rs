//! One hooked VM: handshake, version/feature detection, probing, and the request
//! plumbing on top of the receive engine in [`crate::router`] (no reader thread: the
//! waiting thread reads the socket itself).

use crate::codec::{self, Abi};
use crate::error::{ProtoError, Result};
use crate::event::Event;
use crate::handshake::{self, HookupInfo, PeerCredentials, PeerUids};
use crate::request::Request;
use crate::router::{lock, Shared};
use kvmi_sys as sys;
use std::collections::HashMap;
use std::os::unix::net::UnixStream;

use crate::stream::Stream;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connection settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Shared secret whose SHA-1 is sent to QEMU (`None`: all-zero hash).
    pub secret: Option<Vec<u8>>,
    /// Deadline of the whole QEMU handshake (hookup struct and reply), from accept.
    pub handshake_timeout: Duration,
    /// Timeout of the setup commands and of the typed command methods.
    pub request_timeout: Duration,
    /// Socket write timeout (a stalled peer cannot block a writer longer than this).
    pub write_timeout: Duration,
    /// Capacity of the bounded event queue; an overflowing host is disconnected.
    pub event_queue: usize,
    /// Probe every known command and event with `CHECK_COMMAND`/`CHECK_EVENT` at setup.
    pub probe: bool,
    /// Permission bits of the listening UNIX socket.
    pub socket_mode: u32,
    /// Peer uids allowed on UNIX sockets (default: ours and root); see [`PeerUids`].
    pub allowed_peer_uids: PeerUids,
    /// Most connections a [`Listener`](crate::Listener) holds at once between `accept`
    /// by the kernel and [`Listener::accept`](crate::Listener::accept) (handshaking or
    /// established); more are closed at once.
    pub max_pending_handshakes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            secret: None,
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(15),
            write_timeout: Duration::from_secs(15),
            event_queue: 4096,
            probe: true,
            socket_mode: 0o600,
            allowed_peer_uids: PeerUids::default(),
            max_pending_handshakes: 64,
        }
    }
}

/// A reply not yet received; see [`Connection::send_request`]. Dropping it gives up
/// the wait (a reply arriving later is counted as a stray reply).
#[derive(Debug)]
#[must_use = "a pending reply must be waited for"]
pub struct PendingReply {
    shared: Arc<Shared>,
    seq: u32,
    id: u16,
}

impl PendingReply {
    pub(crate) fn new(shared: Arc<Shared>, seq: u32, id: u16) -> Self {
        PendingReply { shared, seq, id }
    }

    /// Sequence number of the request.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Waits for the reply; returns the reply data (after the error code), or
    /// [`ProtoError::Kvm`] for a non-zero error code.
    pub fn wait(self, timeout: Duration) -> Result<Vec<u8>> {
        let mut payload = self.wait_raw(timeout)?;
        codec::reply_data(self.id, &payload)?;
        payload.drain(..sys::ERROR_CODE_SIZE);
        Ok(payload)
    }

    /// Waits for the reply and returns its whole payload (error code included). After
    /// a timeout the request stays awaited: call again to keep waiting.
    pub fn wait_raw(&self, timeout: Duration) -> Result<Vec<u8>> {
        self.shared.wait_reply(self.seq, timeout)
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.shared.unregister(self.seq);
    }
}

/// Probed availability of commands and events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    /// Command id → allowed (`CHECK_COMMAND` answered 0).
    pub commands: HashMap<u16, bool>,
    /// Event id → allowed (`CHECK_EVENT` answered 0).
    pub events: HashMap<u8, bool>,
}

/// One hooked VM. `Connection` is `Send + Sync`: share it with `Arc` and issue commands
/// from any thread, including from event handlers.
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
    pub(crate) config: Config,
    hookup: HookupInfo,
    peer: Option<PeerCredentials>,
    version: u32,
    features: Option<sys::Features>,
    probe: Mutex<Probe>,
    vcpu_count: Option<u32>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("hookup", &self.hookup)
            .field("abi", &self.abi())
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Runs the QEMU handshake on a freshly accepted stream, sets up the receive engine,
    /// sends `GET_VERSION` (detecting v6/v7 and the features) and probes commands and
    /// events if [`Config::probe`] is set.
    pub fn establish(stream: UnixStream, config: Config) -> Result<Connection> {
        Self::establish_stream(Stream::Unix(stream), config)
    }

    /// [`establish`](Self::establish) on a UNIX or vsock stream
    /// ([`VsockStream`](crate::VsockStream)). [`peer_credentials`](Self::peer_credentials)
    /// is only available on UNIX sockets.
    pub fn establish_stream(stream: impl Into<Stream>, config: Config) -> Result<Connection> {
        let mut stream = stream.into();
        let (hookup, peer) = handshake::exchange(&mut stream, &config)?;

        let reader = stream.try_clone()?;
        let control = stream.try_clone()?;
        let shared = Arc::new(Shared::new(
            stream,
            reader,
            control,
            config.event_queue,
            config.write_timeout,
        ));
        let mut conn = Connection {
            shared,
            config,
            hookup,
            peer,
            version: 0,
            features: None,
            probe: Mutex::new(Probe::default()),
            vcpu_count: None,
        };
        conn.detect_version()?;
        // Asked here, so that a listener's handshake threads (not its `accept`) wait
        // for it: a peer that never answers delays no other VM.
        let info = conn.send(Request::get_guest_info())?;
        if conn.config.probe {
            conn.probe_all()?;
        }
        conn.vcpu_count = match info.wait(conn.config.request_timeout) {
            Ok(n) => Some(n),
            Err(ProtoError::Kvm { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(conn)
    }

    fn detect_version(&mut self) -> Result<()> {
        let (version, features) = self
            .send(Request::get_version())?
            .wait(self.config.request_timeout)?;
        let abi = if features.is_some() { Abi::V7 } else { Abi::V6 };
        if version < sys::KVMI_VERSION {
            self.close();
            return Err(ProtoError::Malformed(format!(
                "unsupported KVMi version {version}"
            )));
        }
        self.shared.set_abi(abi);
        self.version = version;
        self.features = features;
        Ok(())
    }

    /// Probes every known command and event (pipelined: one round trip) and caches the
    /// results (see [`Connection::probe`]).
    pub fn probe_all(&self) -> Result<()> {
        let (cmds, evs): (Vec<u16>, Vec<u8>) = match self.abi() {
            Abi::V6 => (
                (2..=sys::v6::KVMI_GET_MAX_GFN).collect(),
                (0..sys::v6::KVMI_NUM_EVENTS as u8).collect(),
            ),
            _ => (sys::KVMI_COMMAND_IDS.to_vec(), sys::KVMI_EVENT_IDS.to_vec()),
        };
        // One write for every probe, then one wait per reply.
        let pc = self.send_all(cmds.iter().map(|&id| Request::check_command(id)))?;
        let pe = self.send_all(evs.iter().map(|&id| Request::check_event(id)))?;
        let t = self.config.request_timeout;
        let mut probe = Probe::default();
        for (id, p) in cmds.into_iter().zip(pc) {
            probe.commands.insert(id, allowed(p.wait(t))?);
        }
        for (id, p) in evs.into_iter().zip(pe) {
            probe.events.insert(id, allowed(p.wait(t))?);
        }
        if self.abi() == Abi::V6
            && !probe
                .commands
                .get(&sys::KVMI_VM_GET_MAX_GFN)
                .copied()
                .unwrap_or(false)
        {
            // A kvmi-v6 kernel refuses CHECK_COMMAND for ids at or above its command
            // count (28) although KVM-VMI's v6 serves GET_MAX_GFN (29,
            // kvmi-protocol.md §7): ask the command itself once.
            let works = allowed(self.send(Request::get_max_gfn())?.wait(t))?;
            probe.commands.insert(sys::KVMI_VM_GET_MAX_GFN, works);
        }
        *lock(&self.probe) = probe;
        Ok(())
    }

    /// The cached probe result for event `id` (no round trip).
    pub(crate) fn cached_event_allowed(&self, id: u8) -> Option<bool> {
        lock(&self.probe).events.get(&id).copied()
    }

    /// Records that event `id` turned out to be disallowed.
    pub(crate) fn note_event_disallowed(&self, id: u8) {
        lock(&self.probe).events.insert(id, false);
    }

    /// Cached probe results.
    pub fn probe(&self) -> Probe {
        lock(&self.probe).clone()
    }

    /// Whether command `id` is allowed: from the cache, else probed now and cached.
    pub fn command_allowed(&self, id: u16) -> Result<bool> {
        if let Some(v) = lock(&self.probe).commands.get(&id) {
            return Ok(*v);
        }
        let v = allowed(self.check_command(id))?;
        lock(&self.probe).commands.insert(id, v);
        Ok(v)
    }

    /// Whether event `id` is allowed: from the cache, else probed now and cached.
    pub fn event_allowed(&self, id: u8) -> Result<bool> {
        if let Some(v) = lock(&self.probe).events.get(&id) {
            return Ok(*v);
        }
        let v = allowed(self.check_event(id))?;
        lock(&self.probe).events.insert(id, v);
        Ok(v)
    }

    /// The number of online vCPUs, as `VM_GET_INFO` answered during the setup
    /// (`None` if the host refused the command).
    pub fn vcpu_count(&self) -> Option<u32> {
        self.vcpu_count
    }

    /// The VM as described by QEMU in the handshake.
    pub fn hookup(&self) -> &HookupInfo {
        &self.hookup
    }

    /// Credentials of the peer process (QEMU), if `SO_PEERCRED` worked (UNIX sockets
    /// only; always `None` on vsock).
    pub fn peer_credentials(&self) -> Option<PeerCredentials> {
        self.peer
    }

    /// Detected ABI.
    pub fn abi(&self) -> Abi {
        self.shared.abi()
    }

    /// `KVMI_VERSION` reported by the host.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Host features (kvmi-v7 only).
    pub fn features(&self) -> Option<sys::Features> {
        self.features
    }

    /// The configuration in use.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Replies whose waiter had already given up (timed out) or that matched no request.
    pub fn stray_replies(&self) -> u32 {
        self.shared.stray_replies()
    }

    /// Sends a command without waiting: payload is the whole request payload (vCPU
    /// header included for vCPU commands). Many requests may be in flight at once. The
    /// message (header and payload) goes out in one `write`.
    pub fn send_request(&self, id: u16, payload: &[u8]) -> Result<PendingReply> {
        let seq = self.shared.next_seq();
        let mut msg = Vec::with_capacity(sys::MSG_HDR_SIZE + payload.len());
        codec::encode_into(&mut msg, id, seq, &[payload])?;
        self.shared.register(seq, id)?;
        let pending = PendingReply::new(Arc::clone(&self.shared), seq, id);
        self.shared.write(&msg)?;
        Ok(pending)
    }

    /// Sends a command and waits for its reply data (after the error code).
    pub fn request(&self, id: u16, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.send_request(id, payload)?.wait(timeout)
    }

    /// Waits up to `timeout` for the next event; the caller must answer it (see
    /// [`Event`]: replying consumes it, dropping it sends its default reply). After a
    /// disconnect, events still queued are returned first, then
    /// [`ProtoError::Disconnected`].
    ///
    /// Several threads may wait at once (one per vCPU, say); each event goes to one of
    /// them. While a thread waits here it reads the socket for everybody (replies to
    /// other threads' requests included), so keep one waiting whenever events are
    /// enabled: nothing reads the socket while no thread waits.
    pub fn next_event(&self, timeout: Duration) -> Result<Event> {
        let info = self.shared.wait_event(timeout)?;
        Ok(Event::new(info, &self.shared))
    }

    /// The next event if one has arrived (one non-blocking read when nobody else is
    /// reading), without waiting.
    pub fn try_next_event(&self) -> Result<Option<Event>> {
        Ok(self
            .shared
            .try_event()?
            .map(|info| Event::new(info, &self.shared)))
    }

    /// Number of events received and not yet taken.
    pub fn pending_events(&self) -> usize {
        self.shared.queued_events()
    }

    /// Whether the connection is closed (after one non-blocking read when nobody else
    /// is reading, so a hang-up is noticed even while nobody waits).
    pub fn is_closed(&self) -> bool {
        self.shared.pump();
        self.shared.closed_reason().is_some()
    }

    /// Closes the socket (QEMU then unhooks). Waiters get [`ProtoError::Disconnected`].
    pub fn close(&self) {
        self.shared.close("closed locally".into());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

fn allowed<T>(r: Result<T>) -> Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(ProtoError::Kvm { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}
