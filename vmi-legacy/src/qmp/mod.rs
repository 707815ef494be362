//! A QMP (QEMU Machine Protocol) client over a UNIX socket.
//!
//! QMP is line-delimited JSON: the server greets with `{"QMP": {...}}`, the client
//! enables command mode with `qmp_capabilities`, then sends
//! `{"execute": cmd, "arguments": {...}, "id": n}` and receives `{"return": ..., "id": n}`
//! or `{"error": {"class": ..., "desc": ...}, "id": n}`. Asynchronous events
//! (`{"event": "STOP", ...}`) may arrive between replies at any time.
//!
//! This client:
//! * attaches a fresh `id` to every command and skips replies with another `id` (late
//!   replies to commands that timed out), so it never mistakes one reply for another;
//! * buffers events in a bounded queue ([`QmpClient::events`],
//!   [`QmpClient::wait_event`]); when full, the oldest event is dropped and counted;
//! * bounds every wait with a deadline ([`QmpClient::set_timeout`], default
//!   [`DEFAULT_TIMEOUT`]) and every line with a maximum length
//!   ([`QmpClient::set_max_line`], default [`DEFAULT_MAX_LINE`]), so a stuck or hostile
//!   peer can neither hang nor exhaust the caller;
//! * maps QMP error replies to [`Error::Backend`] whose source is a [`QmpError`]
//!   carrying the error class and description ([`qmp_error`] finds it again).
//!
//! After a protocol violation (a line too long, invalid JSON, a malformed reply) the
//! stream is out of step and the client refuses further use with
//! [`Error::Disconnected`].

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use vmi_core::{Deadline, Error, Result};

/// Default time limit for a command's reply or an awaited event.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default maximum length of one QMP message (line), in bytes.
pub const DEFAULT_MAX_LINE: usize = 16 << 20;
/// Default capacity of the event queue.
pub const DEFAULT_EVENT_CAPACITY: usize = 1024;

/// How many messages left over from a previous client (events, replies) a greeting may
/// follow before the connection is refused as not speaking QMP.
const MAX_STALE_BEFORE_GREETING: usize = 64;

const ORIGIN: &str = "QMP";

/// A QMP error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class}: {desc}")]
pub struct QmpError {
    /// The error class (`GenericError`, `CommandNotFound`, `DeviceNotActive`, …).
    pub class: String,
    /// The human-readable description.
    pub desc: String,
}

/// The [`QmpError`] behind an error returned by this module, if it is a QMP error reply.
pub fn qmp_error(e: &Error) -> Option<&QmpError> {
    match e {
        Error::Backend { source, .. } => source.downcast_ref::<QmpError>(),
        _ => None,
    }
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name (`STOP`, `RESUME`, `SHUTDOWN`, …).
    pub event: String,
    /// The event's `data` member (`Null` if absent).
    pub data: Value,
    /// The event's timestamp as (seconds, microseconds), if present.
    pub timestamp: Option<(i64, i64)>,
}

/// The QEMU version from the greeting or `query-version`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct QemuVersion {
    /// `qemu.major`.
    pub major: u32,
    /// `qemu.minor`.
    pub minor: u32,
    /// `qemu.micro`.
    pub micro: u32,
    /// The distribution's package string (may be empty).
    pub package: String,
}

impl QemuVersion {
    fn from_value(v: &Value) -> Result<Self> {
        #[derive(Deserialize)]
        struct Triple {
            major: u32,
            minor: u32,
            micro: u32,
        }
        #[derive(Deserialize)]
        struct Raw {
            qemu: Triple,
            #[serde(default)]
            package: String,
        }
        let raw: Raw = serde_json::from_value(v.clone())
            .map_err(|e| Error::malformed(ORIGIN, format!("version: {e}")))?;
        Ok(Self {
            major: raw.qemu.major,
            minor: raw.qemu.minor,
            micro: raw.qemu.micro,
            package: raw.package,
        })
    }
}

impl std::fmt::Display for QemuVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.micro)?;
        if !self.package.is_empty() {
            write!(f, " ({})", self.package)?;
        }
        Ok(())
    }
}

/// The server greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpGreeting {
    /// QEMU's version.
    pub version: QemuVersion,
    /// Capabilities the server offers (e.g. `oob`; none are enabled by this client).
    pub capabilities: Vec<String>,
}

/// The reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// Whether the vCPUs run.
    pub running: bool,
    /// The run state (`running`, `paused`, `prelaunch`, `shutdown`, `inmigrate`, …).
    pub status: String,
}

/// Topology properties of a vCPU (`query-cpus-fast`'s `props`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuProps {
    /// NUMA node.
    pub node_id: Option<i64>,
    /// Socket.
    pub socket_id: Option<i64>,
    /// Die.
    pub die_id: Option<i64>,
    /// Core.
    pub core_id: Option<i64>,
    /// Thread within the core.
    pub thread_id: Option<i64>,
}

/// One entry of `query-cpus-fast`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct CpuInfo {
    /// The vCPU's index (what `human-monitor-command`'s `cpu-index` takes).
    pub cpu_index: u32,
    /// The host thread id (in QEMU's PID namespace) running the vCPU.
    pub thread_id: i64,
    /// The vCPU's QOM path.
    pub qom_path: String,
    /// The target architecture (`x86_64`, …).
    #[serde(default)]
    pub target: Option<String>,
    /// Topology properties.
    #[serde(default)]
    pub props: Option<CpuProps>,
}

/// The reply of `query-memory-size-summary`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MemorySizeSummary {
    /// Boot RAM in bytes (`-m`).
    pub base_memory: u64,
    /// Hot-plugged RAM in bytes.
    #[serde(default)]
    pub plugged_memory: Option<u64>,
}

/// One entry of `query-memdev`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Memdev {
    /// The backend's id (absent for anonymous backends).
    #[serde(default)]
    pub id: Option<String>,
    /// Size in bytes.
    pub size: u64,
    /// Whether the memory is shared (`share=on`).
    #[serde(default)]
    pub share: Option<bool>,
}

/// A QMP connection in command mode.
///
/// Methods take `&mut self`; share a client between threads behind a `Mutex` (as
/// [`LegacyQemu`](crate::session::LegacyQemu) does).
#[derive(Debug)]
pub struct QmpClient {
    stream: UnixStream,
    buf: Vec<u8>,
    next_id: u64,
    events: VecDeque<QmpEvent>,
    event_capacity: usize,
    dropped_events: u64,
    timeout: Duration,
    max_line: usize,
    greeting: QmpGreeting,
    broken: Option<String>,
}

enum Message {
    Reply {
        id: Option<u64>,
        result: std::result::Result<Value, QmpError>,
    },
    Event(QmpEvent),
}

impl QmpClient {
    /// Connects to the QMP socket at `path`, reads the greeting and negotiates command
    /// mode, with [`DEFAULT_TIMEOUT`].
    pub fn connect(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// As [`QmpClient::connect`], with a time limit for every wait.
    pub fn connect_with_timeout(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connecting to QMP socket {}", path.display()), e))?;
        Self::from_stream(stream, timeout)
    }

    /// Runs the greeting and capability negotiation over an already connected stream.
    pub fn from_stream(stream: UnixStream, timeout: Duration) -> Result<Self> {
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| Error::io("setting QMP write timeout", e))?;
        let mut client = Self {
            stream,
            buf: Vec::new(),
            next_id: 1,
            events: VecDeque::new(),
            event_capacity: DEFAULT_EVENT_CAPACITY,
            dropped_events: 0,
            timeout,
            max_line: DEFAULT_MAX_LINE,
            greeting: QmpGreeting {
                version: QemuVersion {
                    major: 0,
                    minor: 0,
                    micro: 0,
                    package: String::new(),
                },
                capabilities: Vec::new(),
            },
            broken: None,
        };
        // QEMU accepts a second connection to a QMP socket into the listen queue but
        // greets it only once the client before it leaves: silence means "in use".
        // QEMU keeps a monitor's unsent output across clients: an event or reply meant
        // for the client before us (one that left while QEMU was busy or stopped) can
        // reach us ahead of our greeting. Skip such messages, a bounded number of them,
        // within the one deadline.
        let deadline = Deadline::after(timeout);
        let mut stale = 0;
        let v = loop {
            let line = client
                .read_line(deadline, "the QMP greeting")
                .map_err(|e| match e {
                    Error::Timeout { after, .. } => Error::Timeout {
                        what: "the QMP greeting; none came, so the monitor is probably in use \
                               by another client (QEMU serves one client per QMP socket at a \
                               time: close it, or give QEMU a second -qmp socket)"
                            .into(),
                        after,
                    },
                    e => e,
                })?;
            let v: Value = serde_json::from_slice(&line)
                .map_err(|e| client.poison(format!("greeting is not JSON: {e}")))?;
            let left_over = ["event", "return", "error"]
                .iter()
                .any(|k| v.get(k).is_some());
            if v.get("QMP").is_some() || !left_over || stale == MAX_STALE_BEFORE_GREETING {
                break v;
            }
            stale += 1;
        };
        let qmp = v.get("QMP").ok_or_else(|| {
            let head: String = v.to_string().chars().take(200).collect();
            client.poison(format!("first message is not a QMP greeting: {head}"))
        })?;
        let version = QemuVersion::from_value(qmp.get("version").unwrap_or(&Value::Null))?;
        let capabilities = qmp
            .get("capabilities")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        client.greeting = QmpGreeting {
            version,
            capabilities,
        };
        client.execute("qmp_capabilities", None)?;
        Ok(client)
    }

    /// The server's greeting.
    pub fn greeting(&self) -> &QmpGreeting {
        &self.greeting
    }

    /// The time limit for each reply or awaited event.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the time limit for each reply or awaited event.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| Error::io("setting QMP write timeout", e))?;
        self.timeout = timeout;
        Ok(())
    }

    /// Sets the maximum length of one message; longer ones break the connection.
    pub fn set_max_line(&mut self, max: usize) {
        self.max_line = max;
    }

    /// Sets the event queue's capacity (at least 1).
    pub fn set_event_capacity(&mut self, capacity: usize) {
        self.event_capacity = capacity.max(1);
        while self.events.len() > self.event_capacity {
            self.events.pop_front();
            self.dropped_events += 1;
        }
    }

    /// How many events were dropped because the queue was full.
    pub fn dropped_events(&self) -> u64 {
        self.dropped_events
    }

    /// The pid of the process at the other end of the socket (QEMU), from
    /// `SO_PEERCRED`, translated into this process's PID namespace by the kernel.
    pub fn peer_pid(&self) -> Result<libc::pid_t> {
        use std::os::fd::AsRawFd;
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` are valid for writes of the sizes passed, and the
        // descriptor belongs to `self.stream`, which is alive.
        let rc = unsafe {
            libc::getsockopt(
                self.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(Error::io(
                "SO_PEERCRED on the QMP socket",
                std::io::Error::last_os_error(),
            ));
        }
        if cred.pid <= 0 {
            return Err(Error::unsupported(
                "QMP peer pid",
                "the peer is outside this PID namespace",
            ));
        }
        Ok(cred.pid)
    }

    fn poison(&mut self, why: String) -> Error {
        self.broken = Some(why.clone());
        Error::malformed(ORIGIN, why)
    }

    fn check_usable(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(Error::Disconnected {
                reason: format!("QMP stream out of step after an earlier error: {why}").into(),
            }),
            None => Ok(()),
        }
    }

    /// Reads one line (without the newline), waiting at most until `deadline`.
    fn read_line(&mut self, deadline: Deadline, what: &str) -> Result<Vec<u8>> {
        self.check_usable()?;
        let mut scanned = 0;
        loop {
            if let Some(pos) = self.buf[scanned..].iter().position(|&b| b == b'\n') {
                let end = scanned + pos;
                if end > self.max_line {
                    let max = self.max_line;
                    return Err(self.poison(format!("a message exceeds {max} bytes")));
                }
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            scanned = self.buf.len();
            if self.buf.len() > self.max_line {
                let max = self.max_line;
                return Err(self.poison(format!("a message exceeds {max} bytes")));
            }
            // `None` (no deadline) blocks; never `Some(ZERO)`, which the OS rejects.
            let left = deadline.io_timeout(what.to_owned())?;
            self.stream
                .set_read_timeout(left)
                .map_err(|e| Error::io("setting QMP read timeout", e))?;
            let mut chunk = [0u8; 64 * 1024];
            let room = (self.max_line + 1)
                .saturating_sub(self.buf.len())
                .clamp(1, chunk.len());
            match self.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    self.broken = Some("connection closed".into());
                    return Err(Error::Disconnected {
                        reason: "QMP connection closed by QEMU".into(),
                    });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(deadline.timeout_error(what.to_owned()));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::liveness::stream_error("reading from QMP", e)),
            }
        }
    }

    fn parse_message(&mut self, line: &[u8]) -> Result<Option<Message>> {
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let v: Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return Err(self.poison(format!("invalid JSON: {e}"))),
        };
        let Value::Object(mut obj) = v else {
            return Err(self.poison("message is not a JSON object".into()));
        };
        if let Some(ev) = obj.get("event") {
            let event = ev
                .as_str()
                .ok_or_else(|| Error::malformed(ORIGIN, "event name is not a string"))?
                .to_owned();
            let timestamp = obj.get("timestamp").and_then(|t| {
                Some((
                    t.get("seconds")?.as_i64()?,
                    t.get("microseconds")?.as_i64()?,
                ))
            });
            let data = obj.remove("data").unwrap_or(Value::Null);
            return Ok(Some(Message::Event(QmpEvent {
                event,
                data,
                timestamp,
            })));
        }
        let id = match obj.get("id") {
            None => None,
            Some(id) => match id.as_u64() {
                Some(id) => Some(id),
                // Not one of ours (we only send integers): skip it.
                None => return Ok(None),
            },
        };
        if let Some(r) = obj.remove("return") {
            return Ok(Some(Message::Reply { id, result: Ok(r) }));
        }
        if let Some(err) = obj.get("error") {
            let field = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
            return Ok(Some(Message::Reply {
                id,
                result: Err(QmpError {
                    class: field("class"),
                    desc: field("desc"),
                }),
            }));
        }
        if obj.contains_key("QMP") {
            return Ok(None);
        }
        Err(self.poison("message is neither a reply nor an event".into()))
    }

    fn push_event(&mut self, ev: QmpEvent) {
        if self.events.len() >= self.event_capacity {
            self.events.pop_front();
            self.dropped_events += 1;
        }
        self.events.push_back(ev);
    }

    /// Runs `cmd` with `args` (a JSON object, or `None`) and returns its `return`
    /// value. Events that arrive meanwhile are queued.
    ///
    /// Errors: [`Error::Backend`] with a [`QmpError`] source for QMP error replies,
    /// [`Error::Timeout`] if no reply came in time (a late reply is skipped by a later
    /// call), [`Error::Disconnected`] if QEMU closed the socket, [`Error::Malformed`]
    /// on a protocol violation.
    pub fn execute(&mut self, cmd: &str, args: Option<Value>) -> Result<Value> {
        self.check_usable()?;
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = Map::new();
        msg.insert("execute".into(), Value::String(cmd.to_owned()));
        if let Some(args) = args {
            if !args.is_object() {
                return Err(Error::InvalidArgument {
                    what: "QMP arguments",
                    reason: "arguments must be a JSON object".into(),
                });
            }
            msg.insert("arguments".into(), args);
        }
        msg.insert("id".into(), Value::from(id));
        let mut line = serde_json::to_vec(&Value::Object(msg))
            .map_err(|e| Error::malformed(ORIGIN, format!("cannot encode command: {e}")))?;
        line.push(b'\n');
        self.stream.write_all(&line).map_err(|e| {
            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                // A partial write leaves the server mid-command.
                self.broken = Some("a command write timed out".into());
                Error::Timeout {
                    what: format!("QMP {cmd} to be sent").into(),
                    after: self.timeout,
                }
            } else {
                crate::liveness::stream_error(format!("sending QMP {cmd}"), e)
            }
        })?;
        let deadline = Deadline::after(self.timeout);
        let what = format!("the reply to QMP {cmd}");
        loop {
            let line = self.read_line(deadline, &what)?;
            match self.parse_message(&line)? {
                None => {}
                Some(Message::Event(ev)) => self.push_event(ev),
                // Replies without an id answer a request QEMU could not parse: ours.
                Some(Message::Reply { id: rid, result }) if rid.is_none() || rid == Some(id) => {
                    return result.map_err(|e| Error::Backend {
                        command: format!("QMP {cmd}").into(),
                        vcpu: None,
                        address: None,
                        source: Box::new(e),
                    });
                }
                Some(Message::Reply { .. }) => {} // stale reply to a timed-out command
            }
        }
    }

    /// Runs `cmd` and deserialises its `return` value.
    pub fn execute_as<T: DeserializeOwned>(&mut self, cmd: &str, args: Option<Value>) -> Result<T> {
        let v = self.execute(cmd, args)?;
        serde_json::from_value(v)
            .map_err(|e| Error::malformed(ORIGIN, format!("reply to {cmd}: {e}")))
    }

    /// Reads the events that have already arrived, without waiting.
    fn poll(&mut self) -> Result<()> {
        self.check_usable()?;
        self.stream
            .set_nonblocking(true)
            .map_err(|e| Error::io("polling QMP", e))?;
        let mut chunk = [0u8; 64 * 1024];
        let result = loop {
            if self.buf.len() > self.max_line {
                break Ok(());
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    self.broken = Some("connection closed".into());
                    break Err(Error::Disconnected {
                        reason: "QMP connection closed by QEMU".into(),
                    });
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => break Err(crate::liveness::stream_error("polling QMP", e)),
            }
        };
        self.stream
            .set_nonblocking(false)
            .map_err(|e| Error::io("polling QMP", e))?;
        result?;
        // Handle every complete line now in the buffer.
        while self.buf.contains(&b'\n') || self.buf.len() > self.max_line {
            let line = self.read_line(Deadline::after(Duration::ZERO), "buffered QMP messages")?;
            match self.parse_message(&line)? {
                Some(Message::Event(ev)) => self.push_event(ev),
                Some(Message::Reply { .. }) | None => {}
            }
        }
        Ok(())
    }

    /// Returns (and removes) every queued event, after reading those already waiting
    /// on the socket.
    pub fn events(&mut self) -> Result<Vec<QmpEvent>> {
        self.poll()?;
        Ok(self.events.drain(..).collect())
    }

    /// Waits for event `name` (from the queue first) and removes it from the queue.
    /// Other events stay queued.
    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Result<QmpEvent> {
        if let Some(i) = self.events.iter().position(|e| e.event == name) {
            if let Some(ev) = self.events.remove(i) {
                return Ok(ev);
            }
        }
        let deadline = Deadline::after(timeout);
        let what = format!("QMP event {name}");
        loop {
            let line = self.read_line(deadline, &what)?;
            match self.parse_message(&line)? {
                Some(Message::Event(ev)) if ev.event == name => return Ok(ev),
                Some(Message::Event(ev)) => self.push_event(ev),
                Some(Message::Reply { .. }) | None => {}
            }
        }
    }

    /// `query-status`.
    pub fn query_status(&mut self) -> Result<StatusInfo> {
        self.execute_as("query-status", None)
    }

    /// `stop`: pauses every vCPU (returns once they are paused).
    pub fn stop(&mut self) -> Result<()> {
        self.execute("stop", None).map(drop)
    }

    /// `cont`: resumes the vCPUs.
    pub fn cont(&mut self) -> Result<()> {
        self.execute("cont", None).map(drop)
    }

    /// `query-cpus-fast`, sorted by `cpu-index`.
    pub fn query_cpus_fast(&mut self) -> Result<Vec<CpuInfo>> {
        let mut cpus: Vec<CpuInfo> = self.execute_as("query-cpus-fast", None)?;
        cpus.sort_by_key(|c| c.cpu_index);
        Ok(cpus)
    }

    /// `query-memory-size-summary`.
    pub fn query_memory_size_summary(&mut self) -> Result<MemorySizeSummary> {
        self.execute_as("query-memory-size-summary", None)
    }

    /// `query-memdev`.
    pub fn query_memdev(&mut self) -> Result<Vec<Memdev>> {
        self.execute_as("query-memdev", None)
    }

    /// `query-version`.
    pub fn query_version(&mut self) -> Result<QemuVersion> {
        let v = self.execute("query-version", None)?;
        QemuVersion::from_value(&v)
    }

    /// `human-monitor-command`: runs an HMP command and returns its text output.
    pub fn human_monitor_command(&mut self, command_line: &str) -> Result<String> {
        self.human_monitor_command_on(command_line, None)
    }

    /// `human-monitor-command` with `cpu-index`: the vCPU that commands such as
    /// `info registers` or `info lapic` act on.
    pub fn human_monitor_command_on(
        &mut self,
        command_line: &str,
        cpu_index: Option<u32>,
    ) -> Result<String> {
        let mut args = json!({ "command-line": command_line });
        if let (Some(i), Some(obj)) = (cpu_index, args.as_object_mut()) {
            obj.insert("cpu-index".into(), Value::from(i));
        }
        let out = self
            .execute("human-monitor-command", Some(args))
            .map_err(|e| match e {
                // Name the HMP command, not the QMP wrapper every HMP command shares, and
                // what raises the limit: `info mtree -f` of a large guest can be slow.
                Error::Timeout { after, .. } => Error::Timeout {
                    what: format!(
                        "the reply to HMP `{command_line}` (raise the QMP timeout: \
                         LegacyConfig::timeout or QmpClient::set_timeout)"
                    )
                    .into(),
                    after,
                },
                e => e,
            })?;
        out.as_str().map(str::to_owned).ok_or_else(|| {
            Error::malformed(ORIGIN, "human-monitor-command did not return a string")
        })
    }

    /// `pmemsave`: QEMU writes `size` bytes of guest physical memory at `gpa` into
    /// `filename` (a path QEMU itself opens).
    pub fn pmemsave(&mut self, gpa: u64, size: u64, filename: &Path) -> Result<()> {
        let filename = filename.to_str().ok_or_else(|| Error::InvalidArgument {
            what: "pmemsave path",
            reason: "path is not UTF-8".into(),
        })?;
        self.execute(
            "pmemsave",
            Some(json!({ "val": gpa, "size": size, "filename": filename })),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests;
