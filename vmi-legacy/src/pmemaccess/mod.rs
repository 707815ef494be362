//! Client of LibVMI's "fast-memaccess" QEMU patch: guest physical memory over a UNIX
//! socket served by a **patched** QEMU.
//!
//! # The patch and its history
//!
//! LibVMI shipped patches for QEMU (`tools/qemu-kvm-patch/` in the LibVMI tree) that add
//! a file `memory-access.c` to the system emulator. The first versions (Bryan D. Payne,
//! Sandia, 2011) targeted qemu-kvm 0.14 to 1.6; Valerio Aimale rebased it in 2015 (QEMU
//! 2.4) and added the QMP command `pmemaccess` and the HMP command `pmemaccess <path>`;
//! later rebases for QEMU 2.8, 2.10, 2.12, 3.x, 4.0 and **4.1 — the last one** — added
//! `libvmi_request.h` and a poll loop. There is no patch for QEMU ≥ 4.2; LibVMI's
//! maintainers point users at KVMi (the `vmi-kvm` backend) or memflow instead. Stock
//! QEMU answers `pmemaccess` with `CommandNotFound`, which
//! [`PmemAccess::request_socket`] reports as [`Error::Unsupported`]. LibVMI's own README
//! called the patch "the fastest memory access, but buggy"; prefer
//! [`SharedRam`](crate::SharedRam) or [`ProcMem`](crate::ProcMem) where they work.
//!
//! # Session set-up
//!
//! QMP `pmemaccess {"path": "<socket path>"}` makes QEMU unlink any old file at that
//! path, bind an `AF_UNIX` stream socket there, listen (backlog 0) and start a thread
//! that **accepts exactly one connection**, serves it until a quit request or an error,
//! then closes the socket and unlinks the path. Every session therefore issues its own
//! `pmemaccess` with a fresh path ([`PmemAccess::request_socket`] does both steps).
//!
//! # Wire format
//!
//! Everything is in the **host's** byte order, without framing beyond this:
//!
//! * Request, 24 bytes: `u64 type` (0 = quit, 1 = read, 2 = write; any other value is
//!   answered with a single 0 byte), `u64 address` (guest physical), `u64 length`.
//!   (Before LibVMI PR #587, 2018, LibVMI declared `type` as a `u8`; only the three-`u64`
//!   layout is spoken here.)
//! * Read: the reply is `length` data bytes followed by one status byte, 1 = OK. On
//!   failure (the range is not RAM, or crosses a RAM region boundary, since QEMU's
//!   `cpu_physical_memory_map` came back short) QEMU sends **one byte only**, and its
//!   value is undefined (the patch sends an uninitialised buffer byte).
//! * Write: the request, then `length` data bytes; the reply is one byte, 1 = OK, 0 = fail.
//! * Quit: the request alone; no reply. Sent when a [`PmemAccess`] is dropped.
//!
//! # How this client copes with the protocol's weak spots
//!
//! * **Telling a failed read from a slow one.** A failure is a 1-byte reply, a success a
//!   `length + 1`-byte reply, and a stream socket may deliver either in pieces. The client
//!   never asks for a 0-byte read (so every success is at least 2 bytes), and reads into
//!   the whole destination at once. If the first read yields exactly one byte, it waits a
//!   further *failure grace* ([`DEFAULT_FAILURE_GRACE`],
//!   [`PmemAccess::set_failure_grace`]) for more: nothing more means failure
//!   ([`Error::UnmappedPhysical`]); more means a success arriving in pieces, which is then
//!   read to the end. The patch answers a read with a single `write()`, and on Linux a
//!   single write of `n ≥ 2` bytes to a UNIX stream socket is queued as one piece of at
//!   least two bytes, so in practice the first read already tells the two apart and the
//!   grace is only spent on failures. **Limit:** a success whose second byte arrives
//!   later than the grace is misjudged as a failure. The bytes that arrive late are then
//!   detected before the next request (the client checks that the socket holds no unread
//!   bytes before every request) and the connection is declared out of step
//!   ([`Error::Malformed`], then [`Error::Disconnected`] for every later call): it never
//!   returns wrong data.
//! * **The server's single `read()`.** The patch reads each request (and, for writes,
//!   the data) with one `read()` and ignores or fails short reads. The client sends a
//!   request together with its write data in one `send()`, and bounds writes to
//!   [`WRITE_CHUNK`] bytes, so that the whole message is queued in the socket at once.
//! * **Bounded requests.** Reads are split into requests of at most [`READ_CHUNK`]
//!   bytes (QEMU allocates `length + 1` bytes per request), writes into [`WRITE_CHUNK`].
//!   A split access is not atomic: a failure part-way leaves earlier chunks done.
//! * **Bounded waits.** Connecting, sending and every reply wait at most
//!   [`PmemAccess::timeout`]; a [`Error::Timeout`] mid-request leaves the stream out of
//!   step, so the connection refuses further use ([`Error::Disconnected`]). A new
//!   session needs a new `pmemaccess` socket.
//! * **No `SIGPIPE`**: sends use `MSG_NOSIGNAL`; a vanished QEMU yields
//!   [`Error::Disconnected`].
//!
//! # Example
//!
//! ```no_run
//! use vmi_core::{Gpa, PhysicalMemory};
//! use vmi_legacy::{qmp::QmpClient, pmemaccess::PmemAccess};
//!
//! # fn main() -> vmi_core::Result<()> {
//! let mut qmp = QmpClient::connect("/run/vm.qmp")?;
//! // Err(Error::Unsupported { .. }) on a QEMU without the patch.
//! let mem = PmemAccess::request_socket(&mut qmp, std::env::temp_dir())?;
//! let mut page = [0u8; 4096];
//! mem.read_physical(Gpa(0x1000), &mut page)?;
//! # Ok(())
//! # }
//! ```

use std::io::{self, ErrorKind, IoSliceMut, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketAddrUnix, SocketFlags, SocketType};
use serde_json::json;
use vmi_core::{Deadline, Error, Gpa, PhysicalMemory, PhysicalMemoryWrite, Result};

use crate::qmp::{qmp_error, QmpClient};

/// Default time limit for connecting and for each request's reply.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time to wait for a second reply byte before a 1-byte read reply is taken as
/// the patch's failure answer (see the [module documentation](self)).
pub const DEFAULT_FAILURE_GRACE: Duration = Duration::from_millis(50);
/// Largest read request sent to QEMU, in bytes; longer reads are split.
pub const READ_CHUNK: usize = 1 << 20;
/// Largest write request sent to QEMU, in bytes; longer writes are split. Small enough
/// that request and data are queued in the socket at once for the server's single
/// `read()`.
pub const WRITE_CHUNK: usize = 16 << 10;

/// Size of a request on the wire.
const REQUEST_LEN: usize = 24;
const TYPE_QUIT: u64 = 0;
const TYPE_READ: u64 = 1;
const TYPE_WRITE: u64 = 2;
/// The error origin for malformed replies.
const ORIGIN: &str = "pmemaccess socket";
/// The QMP command (and the feature name in [`Error::Unsupported`]).
const COMMAND: &str = "pmemaccess";
/// How long [`Drop`] may spend sending the quit request.
const QUIT_TIMEOUT: Duration = Duration::from_millis(500);

static SOCKET_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Encodes a request in host byte order.
fn encode_request(kind: u64, address: u64, length: u64) -> [u8; REQUEST_LEN] {
    let mut req = [0u8; REQUEST_LEN];
    req[..8].copy_from_slice(&kind.to_ne_bytes());
    req[8..16].copy_from_slice(&address.to_ne_bytes());
    req[16..].copy_from_slice(&length.to_ne_bytes());
    req
}

/// A connection to the memory-access socket of a QEMU with LibVMI's fast-memaccess
/// patch.
///
/// Requests are serialised through an internal [`Mutex`], so a `PmemAccess` can be
/// shared between threads; it implements [`PhysicalMemory`] and
/// [`PhysicalMemoryWrite`]. Dropping it sends the quit request (when the stream is in
/// step) and closes the socket.
#[derive(Debug)]
pub struct PmemAccess {
    conn: Mutex<Conn>,
    timeout: Duration,
    failure_grace: Duration,
    path: PathBuf,
}

/// The socket and whether it is still in step with the server.
#[derive(Debug)]
struct Conn {
    stream: UnixStream,
    /// Why the stream is out of step, once it is.
    broken: Option<String>,
}

impl PmemAccess {
    /// Connects to a memory-access socket that QEMU already listens on (after a
    /// `pmemaccess` command issued elsewhere, e.g. over HMP). `timeout` bounds the
    /// connection attempt and then every request.
    ///
    /// Errors: [`Error::InvalidArgument`] for a zero timeout or a path that does not fit
    /// a UNIX socket address, [`Error::Timeout`] if the listener's queue stays full,
    /// [`Error::Io`] if the connection is refused or the path does not exist.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self> {
        let path = path.as_ref();
        if timeout.is_zero() {
            return Err(Error::InvalidArgument {
                what: "pmemaccess timeout",
                reason: "must be greater than zero".into(),
            });
        }
        let stream = connect_unix(path, timeout)?;
        Ok(Self {
            conn: Mutex::new(Conn {
                stream,
                broken: None,
            }),
            timeout,
            failure_grace: DEFAULT_FAILURE_GRACE,
            path: path.to_owned(),
        })
    }

    /// Asks QEMU over QMP for a new memory-access socket in `dir` and connects to it,
    /// with the QMP client's time limit ([`QmpClient::timeout`]).
    ///
    /// The socket gets a fresh name (`vmi-pmem-<pid>-<n>.sock`); `dir` must be writable
    /// by QEMU and reachable by this process under the same path (same host and mount
    /// namespace). Once connected, the path is unlinked: the patch accepts one
    /// connection only, so the file has no further use.
    ///
    /// Errors: [`Error::Unsupported`] (feature `"pmemaccess"`) when QEMU lacks the patch
    /// (QMP `CommandNotFound`); other QMP errors as [`QmpClient::execute`] reports them;
    /// [`Error::InvalidArgument`] if the socket path is not UTF-8 or too long for a
    /// UNIX socket address; connection errors as for [`PmemAccess::connect`]. If the
    /// connection fails after QEMU accepted the command, QEMU's serving thread keeps
    /// waiting for a client until QEMU exits (a limit of the patch).
    pub fn request_socket(qmp: &mut QmpClient, dir: impl AsRef<Path>) -> Result<Self> {
        let path = fresh_socket_path(dir.as_ref());
        // Validate before asking QEMU, so a bad path does not leave a listener behind.
        sockaddr_for(&path)?;
        let arg = path.to_str().ok_or_else(|| Error::InvalidArgument {
            what: "pmemaccess socket path",
            reason: format!("{} is not valid UTF-8", path.display()).into(),
        })?;
        qmp.execute(COMMAND, Some(json!({ "path": arg })))
            .map_err(|e| match qmp_error(&e) {
                Some(q) if q.class == "CommandNotFound" => {
                    Error::unsupported(COMMAND, "QEMU lacks LibVMI's fast-memaccess patch")
                }
                _ => e,
            })?;
        let result = Self::connect(&path, qmp.timeout());
        // Connected or not, the path is of no further use to anybody.
        let _ = std::fs::remove_file(&path);
        result
    }

    /// The socket path this connection was made to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The time limit for connecting and for each request's reply.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// How long a 1-byte read reply may wait for more bytes before it is taken as a
    /// failure (see the [module documentation](self)).
    pub fn failure_grace(&self) -> Duration {
        self.failure_grace
    }

    /// Sets the failure grace (clamped to at least 1 ms). Longer is safer against a
    /// heavily loaded host and only slows down failed reads.
    pub fn set_failure_grace(&mut self, grace: Duration) {
        self.failure_grace = grace.max(Duration::from_millis(1));
    }

    /// Reads guest physical memory at `gpa` into `buf`, in requests of at most
    /// [`READ_CHUNK`] bytes. An empty `buf` succeeds without contacting QEMU.
    ///
    /// Errors: [`Error::UnmappedPhysical`] when QEMU reports failure (no RAM there, or
    /// the range crosses a RAM region boundary) or the range wraps around the address
    /// space; [`Error::Timeout`], [`Error::Disconnected`], [`Error::Malformed`] or
    /// [`Error::Io`] on transport trouble, after which the connection refuses further
    /// use. On error `buf`'s contents are unspecified.
    pub fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        check_range(gpa, buf.len())?;
        if buf.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock()?;
        let mut addr = gpa.0;
        for piece in buf.chunks_mut(READ_CHUNK) {
            self.read_chunk(&mut conn, addr, piece)?;
            addr += piece.len() as u64;
        }
        Ok(())
    }

    /// Writes `data` into guest physical memory at `gpa`, in requests of at most
    /// [`WRITE_CHUNK`] bytes. Empty `data` succeeds without contacting QEMU. A failure
    /// part-way leaves the earlier chunks written.
    ///
    /// Errors: as for [`PmemAccess::read`]; a reply byte other than 0 or 1 is
    /// [`Error::Malformed`].
    pub fn write(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        check_range(gpa, data.len())?;
        if data.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock()?;
        let mut addr = gpa.0;
        for piece in data.chunks(WRITE_CHUNK) {
            self.write_chunk(&mut conn, addr, piece)?;
            addr += piece.len() as u64;
        }
        Ok(())
    }

    /// Sends the quit request and closes the connection, reporting whether the request
    /// could be sent (dropping does the same silently).
    pub fn close(mut self) -> Result<()> {
        let timeout = QUIT_TIMEOUT.min(self.timeout);
        let conn = match self.conn.get_mut() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        // `quit` marks the stream closed, so the `Drop` that follows sends nothing more.
        conn.quit(timeout)
    }

    fn lock(&self) -> Result<MutexGuard<'_, Conn>> {
        self.conn.lock().map_err(|_| Error::Disconnected {
            reason: "a thread panicked while using the pmemaccess socket".into(),
        })
    }

    /// One read request of `1..=READ_CHUNK` bytes.
    fn read_chunk(&self, conn: &mut Conn, addr: u64, buf: &mut [u8]) -> Result<()> {
        conn.check_ready()?;
        let deadline = Deadline::after(self.timeout);
        let req = encode_request(TYPE_READ, addr, buf.len() as u64);
        let result = conn
            .send_all(&req, deadline)
            .and_then(|()| self.read_reply(conn, addr, buf, deadline));
        conn.poison_unless_clean(result, "a read request")
    }

    /// Receives a read reply; see the module documentation for the 1-byte rule.
    fn read_reply(
        &self,
        conn: &mut Conn,
        addr: u64,
        buf: &mut [u8],
        deadline: Deadline,
    ) -> Result<()> {
        let len = buf.len();
        let mut status = [0u8; 1];
        let mut got = conn.recv_reply(buf, &mut status, 0, deadline)?;
        if got == 1 {
            // A failure reply, or the start of a success reply delivered in pieces.
            let grace = deadline.earliest(Deadline::after(self.failure_grace));
            match conn.recv_reply(buf, &mut status, 1, grace) {
                Ok(n) => got += n,
                Err(Error::Timeout { .. }) => {
                    return Err(Error::UnmappedPhysical {
                        gpa: Gpa(addr),
                        len: len as u64,
                    })
                }
                Err(e) => return Err(e),
            }
        }
        while got < len + 1 {
            got += conn.recv_reply(buf, &mut status, got, deadline)?;
        }
        if status[0] == 1 {
            Ok(())
        } else {
            Err(Error::UnmappedPhysical {
                gpa: Gpa(addr),
                len: len as u64,
            })
        }
    }

    /// One write request of `1..=WRITE_CHUNK` bytes.
    fn write_chunk(&self, conn: &mut Conn, addr: u64, data: &[u8]) -> Result<()> {
        conn.check_ready()?;
        let deadline = Deadline::after(self.timeout);
        let mut msg = Vec::with_capacity(REQUEST_LEN + data.len());
        msg.extend_from_slice(&encode_request(TYPE_WRITE, addr, data.len() as u64));
        msg.extend_from_slice(data);
        let result = conn.send_all(&msg, deadline).and_then(|()| {
            let mut status = [0u8; 1];
            conn.recv_reply(&mut [], &mut status, 0, deadline)?;
            match status[0] {
                1 => Ok(()),
                0 => Err(Error::UnmappedPhysical {
                    gpa: Gpa(addr),
                    len: data.len() as u64,
                }),
                other => Err(Error::malformed(
                    ORIGIN,
                    format!("write reply byte {other:#04x} is neither 0 nor 1"),
                )),
            }
        });
        conn.poison_unless_clean(result, "a write request")
    }
}

impl Conn {
    /// Refuses use once out of step; checks that no unread bytes wait in the socket (a
    /// late or overlong reply) and that the server has not closed it.
    fn check_ready(&mut self) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(Error::Disconnected {
                reason: format!("pmemaccess stream out of step after an earlier error: {why}")
                    .into(),
            });
        }
        let mut byte = [0u8; 1];
        match rustix::net::recv(
            &self.stream,
            &mut byte[..],
            RecvFlags::PEEK | RecvFlags::DONTWAIT,
        )
        .map(|(n, _)| n)
        {
            Ok(0) => {
                let why = "QEMU closed the pmemaccess socket".to_owned();
                self.broken = Some(why.clone());
                Err(Error::Disconnected { reason: why.into() })
            }
            Ok(_) => {
                let why = "unexpected bytes from the server before a request (a late reply \
                           after a read judged failed, or an overlong reply)"
                    .to_owned();
                self.broken = Some(why.clone());
                Err(Error::malformed(ORIGIN, why))
            }
            Err(e) => {
                let e = io::Error::from(e);
                match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(()),
                    _ => Err(self.transport_error("checking the pmemaccess socket", e)),
                }
            }
        }
    }

    /// Marks the stream out of step after any error but a clean failure reply.
    fn poison_unless_clean(&mut self, result: Result<()>, what: &str) -> Result<()> {
        if let Err(e) = &result {
            if !matches!(e, Error::UnmappedPhysical { .. }) && self.broken.is_none() {
                self.broken = Some(format!("{what} failed: {e}"));
            }
        }
        result
    }

    /// Maps an OS error, treating a vanished peer as [`Error::Disconnected`].
    fn transport_error(&mut self, context: &str, e: io::Error) -> Error {
        match e.kind() {
            ErrorKind::BrokenPipe
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::NotConnected => {
                let why = format!("{context}: {e}");
                self.broken = Some(why.clone());
                Error::Disconnected { reason: why.into() }
            }
            _ => Error::io(context.to_owned(), e),
        }
    }

    /// Sends all of `msg` (without `SIGPIPE`) by `deadline`.
    fn send_all(&mut self, mut msg: &[u8], deadline: Deadline) -> Result<()> {
        const WHAT: &str = "the pmemaccess request to be sent";
        while !msg.is_empty() {
            let left = deadline.io_timeout(WHAT)?;
            self.stream
                .set_write_timeout(left)
                .map_err(|e| Error::io("setting the pmemaccess write timeout", e))?;
            match rustix::net::send(&self.stream, msg, SendFlags::NOSIGNAL) {
                // At most msg.len().
                Ok(n) => msg = msg.get(n..).unwrap_or_default(),
                Err(e) => {
                    let e = io::Error::from(e);
                    match e.kind() {
                        ErrorKind::Interrupted => continue,
                        ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                            return Err(deadline.timeout_error(WHAT))
                        }
                        _ => return Err(self.transport_error("sending a pmemaccess request", e)),
                    }
                }
            }
        }
        Ok(())
    }

    /// One `readv()` into the reply `buf ++ status` starting at reply offset `at`, waiting
    /// at most until `deadline`. Returns how many bytes arrived (≥ 1).
    fn recv_reply(
        &mut self,
        buf: &mut [u8],
        status: &mut [u8; 1],
        at: usize,
        deadline: Deadline,
    ) -> Result<usize> {
        loop {
            let left = deadline.io_timeout("a pmemaccess reply")?;
            self.stream
                .set_read_timeout(left)
                .map_err(|e| Error::io("setting the pmemaccess read timeout", e))?;
            let r = if at < buf.len() {
                let mut iov = [
                    IoSliceMut::new(&mut buf[at..]),
                    IoSliceMut::new(&mut status[..]),
                ];
                self.stream.read_vectored(&mut iov)
            } else if at == buf.len() {
                self.stream.read(&mut status[..])
            } else {
                return Ok(0);
            };
            match r {
                Ok(0) => {
                    let why = "QEMU closed the pmemaccess socket mid-reply".to_owned();
                    self.broken = Some(why.clone());
                    return Err(Error::Disconnected { reason: why.into() });
                }
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    deadline.check("a pmemaccess reply")?;
                }
                Err(e) => return Err(self.transport_error("receiving a pmemaccess reply", e)),
            }
        }
    }

    /// Sends the quit request if the stream is in step (otherwise the bytes could be
    /// taken as write data), then shuts the socket down.
    fn quit(&mut self, timeout: Duration) -> Result<()> {
        let result = match &self.broken {
            Some(why) => Err(Error::Disconnected {
                reason: format!("quit not sent: {why}").into(),
            }),
            None => {
                let req = encode_request(TYPE_QUIT, 0, 0);
                self.send_all(&req, Deadline::after(timeout))
            }
        };
        if self.broken.is_none() {
            self.broken = Some("the session was closed".into());
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        result
    }
}

impl Drop for PmemAccess {
    fn drop(&mut self) {
        let timeout = QUIT_TIMEOUT.min(self.timeout);
        let conn = match self.conn.get_mut() {
            Ok(c) => c,
            Err(p) => p.into_inner(),
        };
        let _ = conn.quit(timeout);
    }
}

impl PhysicalMemory for PmemAccess {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.read(gpa, buf)
    }
}

impl PhysicalMemoryWrite for PmemAccess {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        self.write(gpa, data)
    }
}

/// Rejects ranges that wrap around the 64-bit address space.
fn check_range(gpa: Gpa, len: usize) -> Result<()> {
    match gpa.0.checked_add(len as u64) {
        Some(_) => Ok(()),
        None => Err(Error::UnmappedPhysical {
            gpa,
            len: len as u64,
        }),
    }
}

/// A socket path in `dir` that no other session of this process uses.
fn fresh_socket_path(dir: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = SOCKET_COUNTER.fetch_add(1, Ordering::Relaxed);
    dir.join(format!(
        "vmi-pmem-{}-{nanos:x}-{n}.sock",
        std::process::id()
    ))
}

/// The socket address for `path`, or [`Error::InvalidArgument`] if it does not fit.
fn sockaddr_for(path: &Path) -> Result<SocketAddrUnix> {
    let bytes = path.as_os_str().as_bytes();
    // sun_path holds 108 bytes on Linux, the terminating NUL included.
    const SUN_PATH: usize = 108;
    let invalid = || Error::InvalidArgument {
        what: "pmemaccess socket path",
        reason: format!(
            "{} is empty, contains NUL or is longer than {} bytes",
            path.display(),
            SUN_PATH - 1
        )
        .into(),
    };
    if bytes.is_empty() || bytes.contains(&0) || bytes.len() >= SUN_PATH {
        return Err(invalid());
    }
    SocketAddrUnix::new(path).map_err(|_| invalid())
}

/// Connects to a UNIX stream socket without blocking past `timeout`: a non-blocking
/// `connect()` is retried while the listener's queue is full (`EAGAIN`).
fn connect_unix(path: &Path, timeout: Duration) -> Result<UnixStream> {
    let addr = sockaddr_for(path)?;
    let deadline = Deadline::after(timeout);
    let context = || format!("connecting to pmemaccess socket {}", path.display());
    loop {
        let fd = rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .map_err(|e| Error::io(context(), e.into()))?;
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => {
                let stream = UnixStream::from(fd);
                stream
                    .set_nonblocking(false)
                    .map_err(|e| Error::io(context(), e))?;
                return Ok(stream);
            }
            Err(e) => {
                let e = io::Error::from(e);
                match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::Interrupted => {
                        deadline.check(format!("{} to accept", path.display()))?;
                        std::thread::sleep(deadline.remaining_capped(Duration::from_millis(5)));
                    }
                    _ => return Err(Error::io(context(), e)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
