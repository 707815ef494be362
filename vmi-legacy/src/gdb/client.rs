//! The client: acknowledged packets, replies matched to commands, stop replies, and
//! the bookkeeping that spares requests (thread selection, cached `g`).

use std::io;
use std::time::{Duration, Instant};

use vmi_core::{Deadline, Error, Result};

use super::codec::{self, RegDesc, StopReason, WatchKind};
use super::transport::Transport;

mod commands;

/// Breakpoint and watchpoint types (`Z0`–`Z4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakpointKind {
    /// Software breakpoint (`Z0`): under TCG invisible to the guest; under KVM QEMU writes
    /// `0xCC` into guest memory.
    Software,
    /// Hardware breakpoint (`Z1`; 4 debug registers under KVM).
    Hardware,
    /// Watchpoint.
    Watch(WatchKind),
}

impl BreakpointKind {
    pub(crate) fn z_type(self) -> u8 {
        match self {
            Self::Software => 0,
            Self::Hardware => 1,
            Self::Watch(WatchKind::Write) => 2,
            Self::Watch(WatchKind::Read) => 3,
            Self::Watch(WatchKind::Access) => 4,
        }
    }
}

/// What a client has sent and how long it held the target stopped, for benchmarks and
/// tests that bound the cost of an event (see [`GdbClient::counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GdbCounters {
    /// Packets sent (each request once; retransmissions after a `-` are not counted).
    /// The `0x03` interrupt byte is not a packet and is counted in `interrupts`.
    pub requests: u64,
    /// Interrupt bytes sent.
    pub interrupts: u64,
    /// Stop replies received.
    pub stops: u64,
    /// Time from receiving a stop reply to sending the packet that lets the whole
    /// target run again (`c`, `C`, `vCont;c`, `D`), summed: how long this client held
    /// the target stopped, including single steps it made meanwhile and whatever its
    /// user did.
    pub stopped_time: Duration,
}

/// A GDB remote-protocol client.
///
/// It remembers which thread the stub has selected for register access (`Hg`; QEMU
/// also selects the thread a stop reply names) and the last `g` packet of that thread
/// until something may change it (the target runs, a register or monitor command), so
/// repeated register reads of one stop cost one `g` and no `Hg`.
pub struct GdbClient {
    io: Box<dyn Transport>,
    /// Received bytes not yet consumed.
    pub(super) buf: Vec<u8>,
    timeout: Duration,
    packet_size: usize,
    features: Vec<String>,
    regs: Vec<RegDesc>,
    /// Stop replies and console output that arrived while waiting for something else.
    stashed_stop: Option<StopReason>,
    /// The process id in the stub's thread ids (`p01.02`) once it uses multiprocess
    /// extensions, which QEMU does for every client after one negotiated them.
    process: Option<u64>,
    /// The stub's thread for register access (`Hg`), when known.
    g_thread: Option<u64>,
    /// The stub's thread for plain `s`/`c` (`Hc`), when known.
    c_thread: Option<u64>,
    /// The `g` packet of a thread, valid while the target has not run since.
    g_cache: Option<(u64, Vec<u8>)>,
    counters: GdbCounters,
    /// When the last stop reply arrived, while the target is still stopped.
    stopped_since: Option<Instant>,
    /// Why the connection was abandoned (a stub flooding us without a packet); every
    /// later call fails with [`Error::Disconnected`].
    abandoned: Option<&'static str>,
}

impl std::fmt::Debug for GdbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GdbClient")
            .field("packet_size", &self.packet_size)
            .field("registers", &self.regs.len())
            .finish_non_exhaustive()
    }
}

const ACK_RETRIES: usize = 3;

/// The most received bytes kept while waiting for a complete packet: twice the
/// largest packet accepted (its escapes may double it) and one read. A stub that sends
/// more without completing a packet is hostile or broken and the connection is
/// abandoned.
pub(crate) const MAX_BUFFERED: usize = 2 * codec::MAX_PACKET + READ_CHUNK;

/// How much one read takes from the socket.
const READ_CHUNK: usize = 65536;

/// How long [`GdbClient::await_answer`] waits for more output once the stub started
/// answering again.
const QUIET_AFTER_WAKE: Duration = Duration::from_millis(300);

impl GdbClient {
    /// Handshakes over an established stream: `qSupported` (packet size), the target
    /// description (register map) and the initial stop status.
    pub fn new(mut io: Box<dyn Transport>, timeout: Duration) -> Result<Self> {
        io.set_timeout(Some(
            timeout
                .min(Duration::from_millis(20))
                .max(Duration::from_millis(1)),
        ))
        .map_err(|e| Error::io("setting gdbstub read timeout", e))?;
        let mut c = Self {
            io,
            buf: Vec::new(),
            timeout,
            packet_size: 4096,
            features: Vec::new(),
            regs: Vec::new(),
            stashed_stop: None,
            process: None,
            g_thread: None,
            c_thread: None,
            g_cache: None,
            counters: GdbCounters::default(),
            stopped_since: None,
            abandoned: None,
        };
        let sup = c.command(b"qSupported:multiprocess-;swbreak+;hwbreak+;xmlRegisters=i386")?;
        for f in sup.split(|&b| b == b';') {
            let f = String::from_utf8_lossy(f).into_owned();
            if let Some(size) = f.strip_prefix("PacketSize=") {
                let size = codec::parse_hex_u64(size.as_bytes())?;
                c.packet_size = usize::try_from(size)
                    .unwrap_or(codec::MAX_PACKET)
                    .clamp(256, codec::MAX_PACKET);
            }
            c.features.push(f);
        }
        // The stop status tells us the stub is in a sane state; its content is not needed.
        let _ = c.command(b"?")?;
        c.load_target_description()?;
        Ok(c)
    }

    /// The stub's `qSupported` features.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// The largest packet the stub accepts.
    pub fn packet_size(&self) -> usize {
        self.packet_size
    }

    /// Packets sent, stops received and time spent stopped so far.
    pub fn counters(&self) -> GdbCounters {
        self.counters
    }

    /// The register map from the target description.
    pub fn registers(&self) -> &[RegDesc] {
        &self.regs
    }

    /// Looks up a register by name.
    pub fn register(&self, name: &str) -> Option<&RegDesc> {
        self.regs.iter().find(|r| r.name == name)
    }

    fn load_target_description(&mut self) -> Result<()> {
        if !self.features.iter().any(|f| f == "qXfer:features:read+") {
            return Err(Error::unsupported(
                "gdbstub register map",
                "the stub does not offer qXfer:features:read",
            ));
        }
        let main = self.xfer_features("target.xml")?;
        let mut docs = vec![main.clone()];
        for inc in codec::xml_includes(&main).into_iter().take(32) {
            docs.push(self.xfer_features(&inc)?);
        }
        self.regs = codec::parse_target_regs(&docs)?;
        Ok(())
    }

    fn xfer_features(&mut self, annex: &str) -> Result<String> {
        let mut out = Vec::new();
        let chunk = self.packet_size.saturating_sub(16).max(64);
        loop {
            let cmd = format!("qXfer:features:read:{annex}:{:x},{chunk:x}", out.len());
            let reply = self.command(cmd.as_bytes())?;
            let (&kind, data) = reply
                .split_first()
                .ok_or_else(|| Error::malformed("gdbstub", "empty qXfer reply"))?;
            out.extend_from_slice(data);
            if out.len() > codec::MAX_PACKET {
                return Err(Error::malformed("gdbstub", "target description too large"));
            }
            match kind {
                b'l' => break,
                b'm' if !data.is_empty() => continue,
                _ => {
                    return Err(Error::malformed(
                        "gdbstub",
                        format!("qXfer {annex} failed: {}", String::from_utf8_lossy(&reply)),
                    ))
                }
            }
        }
        String::from_utf8(out).map_err(|_| Error::malformed("gdbstub", "target XML is not UTF-8"))
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.check_abandoned()?;
        self.io
            .write_all(bytes)
            .and_then(|()| self.io.flush())
            .map_err(|e| crate::liveness::stream_error("writing to gdbstub", e))
    }

    /// Fails with [`Error::Disconnected`] once the connection was abandoned.
    fn check_abandoned(&self) -> Result<()> {
        match self.abandoned {
            Some(why) => Err(Error::Disconnected {
                reason: format!("gdbstub connection abandoned: {why}").into(),
            }),
            None => Ok(()),
        }
    }

    /// Gives up on the connection: drops what was received (so a flood does not stay
    /// in memory) and fails every later call. Returns the error for this call.
    fn abandon(&mut self, why: &'static str) -> Error {
        self.buf = Vec::new();
        self.abandoned = Some(why);
        Error::malformed("gdbstub", format!("{why}; connection abandoned"))
    }

    /// Reads more bytes into `buf` unless `deadline` has passed: bytes that keep coming
    /// without making a packet (noise, a bad packet resent on every NAK) do not extend
    /// a wait.
    fn fill(&mut self, deadline: Deadline) -> Result<()> {
        deadline.check("gdbstub reply")?;
        self.read_more(deadline)
    }

    /// Reads more bytes into `buf`: one read, made even if `deadline` has passed (so a
    /// zero timeout polls), repeated while nothing arrives until it has.
    fn read_more(&mut self, deadline: Deadline) -> Result<()> {
        self.check_abandoned()?;
        if self.buf.len() > MAX_BUFFERED - READ_CHUNK {
            return Err(self.abandon("the stub sent too much without a complete packet"));
        }
        let mut tmp = [0u8; READ_CHUNK];
        loop {
            match self.io.read(&mut tmp) {
                Ok(0) => {
                    return Err(Error::Disconnected {
                        reason: "gdbstub closed the connection".into(),
                    })
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    deadline.check("gdbstub reply")?;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(crate::liveness::stream_error("reading from gdbstub", e)),
            }
        }
    }

    /// Sends a packet and waits until `deadline` for its acknowledgement,
    /// retransmitting on `-`.
    fn send_packet(&mut self, payload: &[u8], deadline: Deadline) -> Result<()> {
        if payload.len() + 4 > self.packet_size.max(256) * 2 {
            return Err(Error::InvalidArgument {
                what: "gdb packet",
                reason: format!("{} bytes exceed the stub's packet size", payload.len()).into(),
            });
        }
        let framed = codec::encode_packet(payload);
        self.counters.requests += 1;
        self.before_send(payload);
        for _ in 0..ACK_RETRIES {
            self.send_raw(&framed)?;
            loop {
                match codec::first_token(&self.buf) {
                    Some((pos, codec::Token::Ack)) => {
                        self.buf.drain(..=pos);
                        return Ok(());
                    }
                    Some((pos, codec::Token::Nak)) => {
                        self.buf.drain(..=pos);
                        break; // retransmit
                    }
                    // A packet (e.g. an asynchronous stop) before our ack: leave it for
                    // the reader; QEMU acks before replying, so keep waiting.
                    Some((_, codec::Token::PacketStart)) => {
                        if let Some(p) = self.try_take_packet()? {
                            self.stash_async(&p)?;
                            continue;
                        }
                    }
                    // Neither an ack nor a packet: noise, not worth keeping.
                    None => self.buf.clear(),
                }
                self.fill(deadline)?;
            }
        }
        Err(Error::malformed(
            "gdbstub",
            "packet rejected repeatedly (bad checksum?)",
        ))
    }

    /// Bookkeeping before `payload` goes out: what it may change is forgotten, and a
    /// packet that lets the target run ends the current stop.
    fn before_send(&mut self, payload: &[u8]) {
        let runs = matches!(payload.first(), Some(b'c' | b's' | b'C' | b'S' | b'D'))
            || payload.starts_with(b"vCont;");
        let releases =
            matches!(payload.first(), Some(b'c' | b'C' | b'D')) || payload.starts_with(b"vCont;c");
        if releases {
            if let Some(t) = self.stopped_since.take() {
                self.counters.stopped_time += t.elapsed();
            }
        }
        if !keeps_registers(payload) {
            self.g_cache = None;
        }
        if runs || payload.first() == Some(&b'D') {
            // The next stop reply says which thread is selected.
            self.g_thread = None;
            self.c_thread = None;
        }
    }

    /// A stop reply arrived: QEMU selects the reporting thread for `g` and `c`
    /// (`gdb_set_stop_cpu`), and registers read before the target ran are stale.
    fn note_stop(&mut self, stop: &StopReason) {
        self.counters.stops += 1;
        // A step's stop continues the stop it was made from.
        self.stopped_since.get_or_insert_with(Instant::now);
        self.g_cache = None;
        let thread = match stop {
            StopReason::Signal { thread, .. } => *thread,
            _ => None,
        };
        self.g_thread = thread;
        self.c_thread = thread;
    }

    /// Takes one complete packet out of `buf`, if there is one; acks it.
    fn try_take_packet(&mut self) -> Result<Option<Vec<u8>>> {
        let (frame, consumed) = match codec::scan(&self.buf) {
            codec::Scan::Nothing => {
                // Only stray acks or noise: keep the tail small.
                if self.buf.len() > codec::MAX_PACKET {
                    self.buf.clear();
                }
                return Ok(None);
            }
            codec::Scan::Partial { start } => {
                if self.buf.len() - start > 2 * codec::MAX_PACKET {
                    return Err(self.abandon("unterminated packet too large"));
                }
                return Ok(None);
            }
            codec::Scan::Complete { frame, consumed } => (frame, consumed),
        };
        let (packet, reply) = match frame {
            codec::Frame::Packet { body, notification } => (
                Some(codec::decode_body(body)),
                (!notification).then_some(b"+"),
            ),
            codec::Frame::Corrupt { notification } => (None, (!notification).then_some(b"-")),
        };
        self.buf.drain(..consumed);
        if let Some(reply) = reply {
            self.send_raw(reply)?;
        }
        packet.transpose()
    }

    /// Remembers stop replies and drops console output (`O` packets) that arrive while
    /// we wait for a command's reply.
    fn stash_async(&mut self, p: &[u8]) -> Result<()> {
        if matches!(p.first(), Some(b'T' | b'S' | b'W' | b'X')) {
            let stop = codec::parse_stop_reply(p)?;
            self.note_stop(&stop);
            self.stashed_stop = Some(stop);
        }
        Ok(())
    }

    fn recv_packet(&mut self, deadline: Deadline) -> Result<Vec<u8>> {
        loop {
            if let Some(p) = self.try_take_packet()? {
                return Ok(p);
            }
            self.fill(deadline)?;
        }
    }

    /// Sends a command packet and returns its reply. `E nn` replies become errors.
    pub fn command(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        // One deadline for the ack and the reply: the call returns within the timeout.
        let deadline = Deadline::after(self.timeout);
        self.send_packet(payload, deadline)?;
        let reply = loop {
            let p = self.recv_packet(deadline)?;
            // Console output may precede the reply.
            if p.first() == Some(&b'O') && p.len() > 1 && p.len() % 2 == 1 && payload != b"?" {
                continue;
            }
            break p;
        };
        if reply.len() == 3 && reply[0] == b'E' && reply[1..].iter().all(u8::is_ascii_hexdigit) {
            return Err(Error::backend(
                format!(
                    "gdbstub {}",
                    String::from_utf8_lossy(&payload[..payload.len().min(32)])
                ),
                format!("stub replied {}", String::from_utf8_lossy(&reply)),
            ));
        }
        Ok(reply)
    }

    /// Sends a command packet that answers `OK`; an empty reply is
    /// [`Error::Unsupported`], anything else [`Error::Malformed`].
    pub fn command_ok(&mut self, payload: &[u8]) -> Result<()> {
        let r = self.command(payload)?;
        if r == b"OK" {
            Ok(())
        } else if r.is_empty() {
            Err(Error::unsupported(
                format!("gdbstub {}", String::from_utf8_lossy(payload)),
                "the stub does not know this packet",
            ))
        } else {
            Err(Error::malformed(
                "gdbstub",
                format!("unexpected reply {:?}", String::from_utf8_lossy(&r)),
            ))
        }
    }

    /// A second client on the same connection (a duplicated descriptor, so the
    /// connection stays open until both are dropped), with this one's settings and an
    /// empty receive buffer; `None` if the transport cannot be duplicated.
    pub(crate) fn duplicate(&self) -> Option<GdbClient> {
        let io = self.io.try_clone_transport().ok()?;
        Some(GdbClient {
            io,
            buf: Vec::new(),
            timeout: self.timeout,
            packet_size: self.packet_size,
            features: self.features.clone(),
            regs: self.regs.clone(),
            stashed_stop: None,
            process: self.process,
            // The duplicate knows nothing of the stub's thread selection or registers.
            g_thread: None,
            c_thread: None,
            g_cache: None,
            counters: GdbCounters::default(),
            stopped_since: None,
            abandoned: self.abandoned,
        })
    }

    /// Waits up to `max` for the stub to send anything (a frozen QEMU that woke up
    /// answering what was queued for it), then takes (and acknowledges) what it sends
    /// until it has been quiet for [`QUIET_AFTER_WAKE`]. Returns whether it answered.
    pub(crate) fn await_answer(&mut self, max: Duration) -> bool {
        let deadline = Deadline::after(max);
        if self.fill(deadline).is_err() {
            return false;
        }
        loop {
            while let Ok(Some(_)) = self.try_take_packet() {}
            // A stub that never goes quiet ends the wait at `max` too.
            let quiet = Deadline::after(deadline.remaining_capped(QUIET_AFTER_WAKE));
            if deadline.expired() || self.fill(quiet).is_err() {
                return true;
            }
        }
    }
}

/// Whether a packet leaves the registers of a stopped target as they were: reads,
/// thread selection, breakpoints, memory and the stub's own settings do; running,
/// register writes, monitor commands and anything unknown may not.
fn keeps_registers(payload: &[u8]) -> bool {
    match payload.first() {
        Some(b'g' | b'p' | b'm' | b'M' | b'X' | b'H' | b'Z' | b'z' | b'T' | b'?') => true,
        Some(b'q') => !payload.starts_with(b"qRcmd"),
        Some(b'Q') => payload.starts_with(b"Qqemu."),
        _ => false,
    }
}
