//! One hooked VM: handshake, version/feature detection, the reader thread that routes
//! replies by sequence number and queues events, and the request/reply plumbing.

use crate::codec::{self, Abi};
use crate::error::{ProtoError, Result};
use crate::event::{parse_event, Action, Event, EventKind, EventResponse};
use crate::handshake::{self, HookupInfo, PeerCredentials, PeerUids};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use kvmi_sys as sys;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use crate::stream::Stream;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;
use zerocopy::IntoBytes;

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

type ReplyTx = Sender<Result<Vec<u8>>>;

/// A message of a batch in flight: its command id and the first failure reported for
/// it (by a `CMD_ERROR` event or an error reply), as `(id, err)`.
pub(crate) struct BatchSlot {
    id: u16,
    failure: Option<(u16, i32)>,
}

struct State {
    pending: HashMap<u32, (u16, ReplyTx)>,
    /// Seqs of the messages of batches in flight (see [`crate::Batch`]).
    batch: HashMap<u32, BatchSlot>,
    closed: Option<String>,
}

pub(crate) struct Shared {
    writer: Mutex<Stream>,
    state: Mutex<State>,
    seq: AtomicU32,
    abi: AtomicU8,
    stray_replies: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    pub(crate) fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    fn abi(&self) -> Abi {
        if self.abi.load(Ordering::Relaxed) == 6 {
            Abi::V6
        } else {
            Abi::V7
        }
    }

    /// Registers a waiter for `seq` (must happen before the request is written).
    pub(crate) fn register(&self, seq: u32, id: u16) -> Result<Receiver<Result<Vec<u8>>>> {
        let (tx, rx) = bounded(1);
        let mut st = lock(&self.state);
        if let Some(r) = &st.closed {
            return Err(ProtoError::Disconnected(r.clone()));
        }
        st.pending.insert(seq, (id, tx));
        Ok(rx)
    }

    pub(crate) fn unregister(&self, seq: u32) {
        lock(&self.state).pending.remove(&seq);
    }

    /// Starts collecting failures of the batch messages `(seq, id)`: `CMD_ERROR` events
    /// naming one of these seqs and error replies with one of them are recorded instead
    /// of being queued as events or counted as stray replies.
    pub(crate) fn register_batch(&self, msgs: &[(u32, u16)]) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(r) = &st.closed {
            return Err(ProtoError::Disconnected(r.clone()));
        }
        for &(seq, id) in msgs {
            st.batch.insert(seq, BatchSlot { id, failure: None });
        }
        Ok(())
    }

    /// Stops collecting for `seqs`; returns the failure recorded for each, in order.
    pub(crate) fn take_batch(&self, seqs: impl Iterator<Item = u32>) -> Vec<Option<(u16, i32)>> {
        let mut st = lock(&self.state);
        seqs.map(|seq| st.batch.remove(&seq).and_then(|s| s.failure))
            .collect()
    }

    /// Writes bytes as one `write` (under the writer lock). A failed write leaves the
    /// stream in an unknown state, so it closes the connection.
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<()> {
        if let Some(r) = &lock(&self.state).closed {
            return Err(ProtoError::Disconnected(r.clone()));
        }
        let mut w = lock(&self.writer);
        if let Err(e) = w.write_all(bytes) {
            let _ = w.shutdown(Shutdown::Both);
            drop(w);
            self.close(format!("write failed: {e}"));
            return Err(e.into());
        }
        Ok(())
    }

    /// Marks the connection closed and wakes every waiter with an error.
    fn close(&self, reason: String) {
        let mut st = lock(&self.state);
        if st.closed.is_none() {
            st.closed = Some(reason.clone());
        }
        let reason = st.closed.clone().unwrap_or(reason);
        for (_, (_, tx)) in st.pending.drain() {
            let _ = tx.try_send(Err(ProtoError::Disconnected(reason.clone())));
        }
    }

    fn closed_reason(&self) -> Option<String> {
        lock(&self.state).closed.clone()
    }
}

/// A reply not yet received; see [`Connection::send_request`].
#[derive(Debug)]
#[must_use = "a pending reply must be waited for"]
pub struct PendingReply {
    shared: Arc<Shared>,
    seq: u32,
    id: u16,
    rx: Receiver<Result<Vec<u8>>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl PendingReply {
    pub(crate) fn new(
        shared: Arc<Shared>,
        seq: u32,
        id: u16,
        rx: Receiver<Result<Vec<u8>>>,
    ) -> Self {
        PendingReply {
            shared,
            seq,
            id,
            rx,
        }
    }

    /// Sequence number of the request.
    pub fn seq(&self) -> u32 {
        self.seq
    }

    /// Waits for the reply; returns the reply data (after the error code), or
    /// [`ProtoError::Kvm`] for a non-zero error code.
    pub fn wait(self, timeout: Duration) -> Result<Vec<u8>> {
        let payload = self.wait_raw(timeout)?;
        let data = codec::reply_data(self.id, &payload)?;
        Ok(data.to_vec())
    }

    /// Waits for the reply and returns its whole payload (error code included).
    pub fn wait_raw(&self, timeout: Duration) -> Result<Vec<u8>> {
        match self.rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) => {
                self.shared.unregister(self.seq);
                Err(ProtoError::Timeout(timeout))
            }
            Err(RecvTimeoutError::Disconnected) => Err(ProtoError::Disconnected(
                self.shared
                    .closed_reason()
                    .unwrap_or_else(|| "reply channel dropped".into()),
            )),
        }
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
    events: Receiver<Event>,
    reader: Option<JoinHandle<()>>,
    pub(crate) config: Config,
    hookup: HookupInfo,
    peer: Option<PeerCredentials>,
    version: u32,
    features: Option<sys::Features>,
    probe: Mutex<Probe>,
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
    /// Runs the QEMU handshake on a freshly accepted stream, starts the reader thread,
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

        let reader_stream = stream.try_clone()?;
        let shared = Arc::new(Shared {
            writer: Mutex::new(stream),
            state: Mutex::new(State {
                pending: HashMap::new(),
                batch: HashMap::new(),
                closed: None,
            }),
            seq: AtomicU32::new(0),
            abi: AtomicU8::new(7),
            stray_replies: AtomicU32::new(0),
        });
        let (ev_tx, ev_rx) = bounded(config.event_queue.max(1));
        let sh = Arc::clone(&shared);
        let cap = config.event_queue.max(1);
        let reader = std::thread::Builder::new()
            .name("kvmi-reader".into())
            .spawn(move || reader_loop(reader_stream, sh, ev_tx, cap))?;
        let mut conn = Connection {
            shared,
            events: ev_rx,
            reader: Some(reader),
            config,
            hookup,
            peer,
            version: 0,
            features: None,
            probe: Mutex::new(Probe::default()),
        };
        conn.detect_version()?;
        if conn.config.probe {
            conn.probe_all()?;
        }
        Ok(conn)
    }

    fn detect_version(&mut self) -> Result<()> {
        let data = self
            .send_request(sys::KVMI_GET_VERSION, &[])?
            .wait(self.config.request_timeout)?;
        let (abi, version, features) = if data.len() >= core::mem::size_of::<sys::GetVersionReply>()
        {
            let r: sys::GetVersionReply = codec::read_reply("GET_VERSION reply", &data)?;
            (Abi::V7, r.version, Some(r.features))
        } else {
            let r: sys::v6::GetVersionReply = codec::read_reply("GET_VERSION reply", &data)?;
            (Abi::V6, r.version, None)
        };
        if version < sys::KVMI_VERSION {
            self.close();
            return Err(ProtoError::Malformed(format!(
                "unsupported KVMi version {version}"
            )));
        }
        self.shared
            .abi
            .store(if abi == Abi::V6 { 6 } else { 7 }, Ordering::Relaxed);
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
        let mut pc = Vec::with_capacity(cmds.len());
        for id in &cmds {
            let req = sys::VmCheckCommand {
                id: *id,
                ..Default::default()
            };
            pc.push((
                *id,
                self.send_request(sys::KVMI_VM_CHECK_COMMAND, req.as_bytes())?,
            ));
        }
        let mut pe = Vec::with_capacity(evs.len());
        for id in &evs {
            let req = sys::VmCheckEvent {
                id: (*id).into(),
                ..Default::default()
            };
            pe.push((
                *id,
                self.send_request(sys::KVMI_VM_CHECK_EVENT, req.as_bytes())?,
            ));
        }
        let t = self.config.request_timeout;
        let mut probe = Probe::default();
        for (id, p) in pc {
            probe.commands.insert(id, allowed(p.wait(t))?);
        }
        for (id, p) in pe {
            probe.events.insert(id, allowed(p.wait(t))?);
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
        self.shared.stray_replies.load(Ordering::Relaxed)
    }

    /// Sends a command without waiting: payload is the whole request payload (vCPU
    /// header included for vCPU commands). Many requests may be in flight at once.
    pub fn send_request(&self, id: u16, payload: &[u8]) -> Result<PendingReply> {
        let seq = self.shared.next_seq();
        let mut msg = Vec::new();
        codec::encode_into(&mut msg, id, seq, &[payload])?;
        let rx = self.shared.register(seq, id)?;
        let pending = PendingReply::new(Arc::clone(&self.shared), seq, id, rx);
        self.shared.write(&msg)?;
        Ok(pending)
    }

    /// Sends a command and waits for its reply data (after the error code).
    pub fn request(&self, id: u16, payload: &[u8], timeout: Duration) -> Result<Vec<u8>> {
        self.send_request(id, payload)?.wait(timeout)
    }

    /// Sends an event reply. Replies are single writes and never wait for each other,
    /// so replies for different vCPUs proceed independently.
    pub fn send_reply(&self, reply: &EventResponse) -> Result<()> {
        let mut msg = Vec::new();
        reply.encode_into(&mut msg)?;
        self.shared.write(&msg)
    }

    /// Sends an event reply from its parts (`extra` = event-specific reply data).
    pub fn reply_event(&self, seq: u32, vcpu: u16, action: Action, extra: &[u8]) -> Result<()> {
        self.send_reply(&EventResponse {
            seq,
            vcpu,
            event: 0,
            action,
            extra: extra.to_vec(),
        })
    }

    /// Waits up to `timeout` for the next event. After a disconnect, events still queued
    /// are returned first, then [`ProtoError::Disconnected`].
    pub fn next_event(&self, timeout: Duration) -> Result<Event> {
        match self.events.recv_timeout(timeout) {
            Ok(e) => Ok(e),
            Err(RecvTimeoutError::Timeout) => Err(ProtoError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(self.disconnected()),
        }
    }

    /// The next event if one is queued.
    pub fn try_next_event(&self) -> Result<Option<Event>> {
        match self.events.try_recv() {
            Ok(e) => Ok(Some(e)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(self.disconnected()),
        }
    }

    /// The event queue itself, e.g. for `crossbeam_channel::select!`.
    pub fn event_receiver(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Number of queued events.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    fn disconnected(&self) -> ProtoError {
        ProtoError::Disconnected(
            self.shared
                .closed_reason()
                .unwrap_or_else(|| "reader stopped".into()),
        )
    }

    /// Whether the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed_reason().is_some()
    }

    /// Closes the socket (QEMU then unhooks). Waiters get [`ProtoError::Disconnected`].
    pub fn close(&self) {
        let _ = lock(&self.shared.writer).shutdown(Shutdown::Both);
        self.shared.close("closed locally".into());
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}

fn allowed(r: Result<Vec<u8>>) -> Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(ProtoError::Kvm { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

fn read_full(s: &mut Stream, buf: &mut [u8]) -> std::io::Result<()> {
    s.read_exact(buf)
}

fn reader_loop(mut s: Stream, shared: Arc<Shared>, ev_tx: Sender<Event>, cap: usize) {
    let reason = loop {
        let mut hbuf = [0u8; sys::MSG_HDR_SIZE];
        if let Err(e) = read_full(&mut s, &mut hbuf) {
            break format!("read failed: {e}");
        }
        let hdr = match codec::decode_header(&hbuf) {
            Ok(h) => h,
            Err(e) => break format!("protocol error: {e}"),
        };
        let mut payload = vec![0u8; usize::from(hdr.size)];
        if let Err(e) = read_full(&mut s, &mut payload) {
            break format!("read failed: {e}");
        }
        if hdr.id == sys::KVMI_EVENT {
            let ev = match parse_event(hdr.seq, &payload, shared.abi()) {
                Ok(ev) => ev,
                Err(e) => break format!("protocol error: bad event: {e}"),
            };
            if let EventKind::CmdError(ce) = ev.kind {
                let mut st = lock(&shared.state);
                if let Some(slot) = st.batch.get_mut(&ce.msg_seq) {
                    slot.failure.get_or_insert((ce.msg_id, ce.err));
                    continue;
                }
            }
            if ev_tx.try_send(ev).is_err() {
                break ProtoError::EventQueueFull(cap).to_string();
            }
            continue;
        }
        let waiter = {
            let mut st = lock(&shared.state);
            let w = st.pending.remove(&hdr.seq);
            if w.is_none() {
                if let Some(slot) = st.batch.get_mut(&hdr.seq).filter(|s| s.id == hdr.id) {
                    // A batch message answered although replies should be off (the
                    // leading CONTROL_CMD_RESPONSE failed, so they stayed on).
                    if let Ok(Err(err)) = codec::parse_reply(&payload) {
                        slot.failure.get_or_insert((hdr.id, err));
                    }
                    continue;
                }
            }
            w
        };
        match waiter {
            Some((id, tx)) if id == hdr.id => {
                let _ = tx.try_send(Ok(payload));
            }
            Some((id, tx)) => {
                let _ = tx.try_send(Err(ProtoError::IdMismatch {
                    expected: id,
                    got: hdr.id,
                    seq: hdr.seq,
                }));
            }
            None => {
                shared.stray_replies.fetch_add(1, Ordering::Relaxed);
            }
        }
    };
    let _ = s.shutdown(Shutdown::Both);
    shared.close(reason);
    drop(ev_tx);
}
