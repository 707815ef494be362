//! The listening socket QEMU connects to: a UNIX socket path or an `AF_VSOCK` port.
//!
//! **Handshakes run concurrently.** An accept thread takes every new connection off the
//! socket, checks the peer's uid ([`Config::allowed_peer_uids`]) and hands it to a
//! handshake thread of its own, which runs [`Connection::establish_stream`] (the QEMU
//! handshake under one deadline, version detection, probing). Established connections
//! queue for [`Listener::accept`]. A peer that stalls delays nobody but itself. At most
//! [`Config::max_pending_handshakes`] connections are held at once (handshaking, or
//! established and not yet accepted); further ones are closed at once, so a flood of
//! connections cannot exhaust threads or memory. Connections closed before they were
//! established are reported by [`Listener::take_rejected`].
//!
//! **The UNIX socket is never reachable with a wider mode than
//! [`Config::socket_mode`]**, not even for an instant and whatever the umask: it is
//! bound inside a fresh private (0700) directory next to the target path, given its
//! mode there, and only then renamed into place. (Changing the umask instead would
//! affect every thread of the process.)

use crate::connection::{Config, Connection};
use crate::error::{ProtoError, Result};
use crate::handshake::{self, PeerCredentials};
use crate::stream::{sockaddr_vm, vsock_name, vsock_socket, Stream, VsockStream};
use crossbeam_channel::{unbounded, Receiver, RecvTimeoutError, Sender, TryRecvError};
use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::{RenameFlags, CWD};
use rustix::io::Errno;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How many [`Rejected`] records a listener keeps (the most recent ones).
pub const REJECTED_KEPT: usize = 64;

/// A connection the listener closed before it was established.
#[derive(Debug)]
pub struct Rejected {
    /// The peer's credentials (UNIX sockets, when `SO_PEERCRED` worked).
    pub peer: Option<PeerCredentials>,
    /// Why: [`ProtoError::PeerRefused`], [`ProtoError::TooManyPending`], a handshake or
    /// setup error ([`ProtoError::Timeout`] for a peer that missed the handshake
    /// deadline), or an I/O error of `accept` itself.
    pub error: ProtoError,
}

#[derive(Debug)]
enum Socket {
    Unix {
        listener: UnixListener,
        path: PathBuf,
        /// `(dev, ino)` of the socket file, so that drop removes only our own.
        file: (u64, u64),
    },
    Vsock {
        fd: OwnedFd,
        port: u32,
    },
}

impl Socket {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Socket::Unix { listener, .. } => listener.as_fd(),
            Socket::Vsock { fd, .. } => fd.as_fd(),
        }
    }

    /// One non-blocking `accept`.
    fn try_accept(&self) -> io::Result<Stream> {
        match self {
            Socket::Unix { listener, .. } => listener.accept().map(|(s, _)| Stream::Unix(s)),
            Socket::Vsock { fd, .. } => {
                let fd = rustix::net::accept_with(fd, rustix::net::SocketFlags::CLOEXEC)?;
                Ok(Stream::Vsock(VsockStream::from(fd)))
            }
        }
    }
}

/// State shared by the listener, its accept thread and the handshake threads.
#[derive(Debug)]
struct Shared {
    config: Config,
    /// Connections held: handshaking, or established and not yet accepted.
    held: AtomicUsize,
    /// A second handle of every stream still handshaking, shut down when the listener
    /// is dropped so that its thread ends at once.
    in_progress: Mutex<HashMap<u64, Stream>>,
    next_id: AtomicU64,
    rejected: Mutex<VecDeque<Rejected>>,
    rejected_total: AtomicU64,
    /// Why the accept thread stopped, if it did on an error.
    failed: Mutex<Option<String>>,
    established: Sender<Result<Connection>>,
    /// Written once to stop the accept thread (an eventfd).
    stop: OwnedFd,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn reject(&self, peer: Option<PeerCredentials>, error: ProtoError) {
        self.rejected_total.fetch_add(1, Ordering::Relaxed);
        let mut r = lock(&self.rejected);
        if r.len() >= REJECTED_KEPT {
            r.pop_front();
        }
        r.push_back(Rejected { peer, error });
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::AcqRel);
    }

    /// Checks the peer, takes a slot and starts the handshake thread, or closes the
    /// connection (by dropping `stream`) and records why.
    fn start_handshake(self: &Arc<Self>, stream: Stream) {
        let peer = match &stream {
            Stream::Unix(s) => handshake::peer_credentials(s).ok(),
            Stream::Vsock(_) => None,
        };
        // Checked here too (not only in the handshake) so a refused peer costs no thread.
        if let Err(e) = handshake::check_peer(&stream, &self.config.allowed_peer_uids) {
            return self.reject(peer, e);
        }
        let max = self.config.max_pending_handshakes.max(1);
        if self.held.fetch_add(1, Ordering::AcqRel) >= max {
            self.release();
            return self.reject(peer, ProtoError::TooManyPending(max));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Ok(handle) = stream.try_clone() {
            lock(&self.in_progress).insert(id, handle);
        }
        let shared = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("kvmi-handshake".into())
            .spawn(move || {
                let r = Connection::establish_stream(stream, shared.config.clone());
                lock(&shared.in_progress).remove(&id);
                match r {
                    Ok(conn) => {
                        if shared.established.send(Ok(conn)).is_err() {
                            shared.release();
                        }
                    }
                    Err(e) => {
                        shared.release();
                        shared.reject(peer, e);
                    }
                }
            });
        if let Err(e) = spawned {
            lock(&self.in_progress).remove(&id);
            self.release();
            self.reject(peer, ProtoError::Io(e));
        }
    }

    /// Waits up to `timeout` for the stop signal; true if it came.
    fn stop_requested(&self, timeout: Option<Duration>) -> bool {
        let ts = timeout.map(|d| Timespec {
            tv_sec: d.as_secs().try_into().unwrap_or(i64::MAX),
            tv_nsec: d.subsec_nanos().into(),
        });
        let mut fds = [PollFd::new(&self.stop, PollFlags::IN)];
        matches!(rustix::event::poll(&mut fds, ts.as_ref()), Ok(n) if n > 0)
    }
}

/// Accept errors that concern one connection or a passing shortage, not the socket.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::ETIMEDOUT
        )
    )
}

fn accept_loop(socket: &Socket, shared: &Arc<Shared>) {
    let error = loop {
        let mut fds = [
            PollFd::from_borrowed_fd(socket.fd(), PollFlags::IN),
            PollFd::new(&shared.stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(Errno::INTR) => continue,
            Err(e) => break io::Error::from(e),
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        match socket.try_accept() {
            Ok(stream) => shared.start_handshake(stream),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) if transient(&e) => {
                shared.reject(None, ProtoError::Io(e));
                // Out of descriptors or memory: the connection stays queued and the
                // socket readable, so pause instead of spinning.
                if shared.stop_requested(Some(Duration::from_millis(50))) {
                    return;
                }
            }
            Err(e) => break e,
        }
    };
    let reason = format!("accept failed: {error}");
    *lock(&shared.failed) = Some(reason.clone());
    let _ = shared
        .established
        .send(Err(ProtoError::Disconnected(format!(
            "listener stopped: {reason}"
        ))));
}

/// A UNIX-socket or vsock listener accepting any number of VMs (one [`Connection`]
/// each), handshaking with all of them concurrently (see the [module docs](self)).
pub struct Listener {
    socket: Arc<Socket>,
    shared: Arc<Shared>,
    established: Receiver<Result<Connection>>,
    acceptor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("socket", &self.socket)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

/// A fresh directory only we can enter, removed (with the socket name in it) on drop.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(parent: &Path) -> io::Result<PrivateDir> {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut last = None;
        for _ in 0..16 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let tag = u64::from(std::process::id())
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .wrapping_add(N.fetch_add(1, Ordering::Relaxed) << 32)
                ^ u64::from(nanos);
            let dir = parent.join(format!(".kvmi-{:08x}", tag as u32));
            // The umask can only narrow 0700; the chmod makes sure we can enter it.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let d = PrivateDir(dir);
                    std::fs::set_permissions(&d.0, std::fs::Permissions::from_mode(0o700))?;
                    return Ok(d);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0.join("s"));
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Binds a UNIX socket at `path` with permission bits `mode`, never reachable with
/// other bits: bound in a private directory, chmod-ed there, renamed into place.
fn bind_private(path: &Path, mode: u32) -> Result<(UnixListener, (u64, u64))> {
    let stale = match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => true,
        Ok(_) => {
            return Err(ProtoError::InvalidArgument(format!(
                "{} exists and is not a socket",
                path.display()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e.into()),
    };
    if path.file_name().is_none() {
        return Err(ProtoError::InvalidArgument(format!(
            "{} names no file",
            path.display()
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = PrivateDir::create(parent)?;
    let tmp = dir.0.join("s");
    let listener = UnixListener::bind(&tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    if stale {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    // RENAME_NOREPLACE: never replace a file that appeared at `path` meanwhile.
    match rustix::fs::renameat_with(CWD, &tmp, CWD, path, RenameFlags::NOREPLACE) {
        Ok(()) => {}
        // A filesystem without RENAME_NOREPLACE.
        Err(Errno::INVAL) => std::fs::rename(&tmp, path)?,
        Err(Errno::EXIST) => {
            return Err(ProtoError::InvalidArgument(format!(
                "{} appeared while binding",
                path.display()
            )))
        }
        Err(e) => return Err(ProtoError::Io(e.into())),
    }
    let m = std::fs::symlink_metadata(path)?;
    Ok((listener, (m.dev(), m.ino())))
}

impl Listener {
    /// Binds `path` with mode [`Config::socket_mode`] (0600 by default), race-free (see
    /// the [module docs](self)); a stale socket at `path` is replaced, any other file is
    /// an error. The directory of `path` must be writable: a private directory
    /// `.kvmi-XXXXXXXX` is created and removed there, and the socket is first bound as
    /// `.kvmi-XXXXXXXX/s` in it, so that path (the directory's path plus 17 bytes) must
    /// fit a `sockaddr_un` (107 bytes) too. Starts accepting at once.
    pub fn bind(path: impl AsRef<Path>, config: Config) -> Result<Listener> {
        let path = path.as_ref().to_path_buf();
        let (listener, file) = bind_private(&path, config.socket_mode)?;
        listener.set_nonblocking(true)?;
        Self::start(
            Socket::Unix {
                listener,
                path,
                file,
            },
            config,
        )
    }

    /// Listens on vsock `port` for any CID (`VMADDR_CID_ANY`), as libkvmi's
    /// `kvmi_init_vsock` does; QEMU then connects with
    /// `-chardev socket,type=vsock,cid=<this host's CID>,port=<port>,reconnect=N`.
    /// `libc::VMADDR_PORT_ANY` picks a free port (see [`vsock_port`](Self::vsock_port)).
    /// [`Config::socket_mode`] and [`Config::allowed_peer_uids`] do not apply.
    ///
    /// Fails with [`ProtoError::Vsock`] naming the failed call; when the machine has no
    /// usable vsock (no `AF_VSOCK` support, no transport)
    /// [`ProtoError::is_vsock_unavailable`] is true.
    pub fn bind_vsock(port: u32, config: Config) -> Result<Listener> {
        let err = |op| move |source| ProtoError::Vsock { op, port, source };
        let fd = vsock_socket().map_err(err("socket"))?;
        let a = sockaddr_vm(libc::VMADDR_CID_ANY, port);
        // SAFETY: `a` is a valid sockaddr_vm of the size given (rustix has no vsock
        // address type).
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&a as *const libc::sockaddr_vm).cast(),
                core::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("bind")(io::Error::last_os_error()));
        }
        rustix::net::listen(&fd, 128).map_err(|e| err("listen")(e.into()))?;
        rustix::io::ioctl_fionbio(&fd, true).map_err(|e| err("ioctl(FIONBIO)")(e.into()))?;
        let (_, port) = vsock_name(fd.as_raw_fd(), false).map_err(err("getsockname"))?;
        Self::start(Socket::Vsock { fd, port }, config)
    }

    fn start(socket: Socket, config: Config) -> Result<Listener> {
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC).map_err(io::Error::from)?;
        let (tx, rx) = unbounded();
        let shared = Arc::new(Shared {
            config,
            held: AtomicUsize::new(0),
            in_progress: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            rejected: Mutex::new(VecDeque::new()),
            rejected_total: AtomicU64::new(0),
            failed: Mutex::new(None),
            established: tx,
            stop,
        });
        let socket = Arc::new(socket);
        let (s, sh) = (Arc::clone(&socket), Arc::clone(&shared));
        let acceptor = std::thread::Builder::new()
            .name("kvmi-accept".into())
            .spawn(move || accept_loop(&s, &sh))?;
        Ok(Listener {
            socket,
            shared,
            established: rx,
            acceptor: Some(acceptor),
        })
    }

    /// Socket path (`None` for a vsock listener).
    pub fn path(&self) -> Option<&Path> {
        match &*self.socket {
            Socket::Unix { path, .. } => Some(path),
            Socket::Vsock { .. } => None,
        }
    }

    /// The bound vsock port (`None` for a UNIX listener).
    pub fn vsock_port(&self) -> Option<u32> {
        match &*self.socket {
            Socket::Vsock { port, .. } => Some(*port),
            Socket::Unix { .. } => None,
        }
    }

    /// Waits up to `timeout` for the next **established** connection: QEMU connected,
    /// passed the uid check and the handshake, and the setup commands
    /// ([`Connection::establish_stream`]) succeeded. Connections that fail meanwhile do
    /// not end the wait; see [`take_rejected`](Self::take_rejected). A `timeout` too
    /// large for an `Instant` (e.g. `Duration::MAX`) waits forever.
    ///
    /// Fails with [`ProtoError::Timeout`], or [`ProtoError::Disconnected`] if the
    /// listening socket itself failed.
    pub fn accept(&self, timeout: Duration) -> Result<Connection> {
        let item = match self.established.try_recv() {
            Ok(item) => item,
            Err(TryRecvError::Empty | TryRecvError::Disconnected) => {
                if let Some(reason) = lock(&self.shared.failed).clone() {
                    return Err(ProtoError::Disconnected(format!(
                        "listener stopped: {reason}"
                    )));
                }
                let r = match handshake::deadline_after(timeout) {
                    Some(d) => self.established.recv_deadline(d),
                    None => self
                        .established
                        .recv()
                        .map_err(|_| RecvTimeoutError::Disconnected),
                };
                match r {
                    Ok(item) => item,
                    Err(RecvTimeoutError::Timeout) => return Err(ProtoError::Timeout(timeout)),
                    Err(RecvTimeoutError::Disconnected) => {
                        return Err(ProtoError::Disconnected("listener stopped".into()))
                    }
                }
            }
        };
        if item.is_ok() {
            self.shared.release();
        }
        item
    }

    /// Connections closed before they were established since the last call, oldest
    /// first (at most the last [`REJECTED_KEPT`]).
    pub fn take_rejected(&self) -> Vec<Rejected> {
        lock(&self.shared.rejected).drain(..).collect()
    }

    /// How many connections were closed before they were established since `bind`.
    pub fn rejected_count(&self) -> u64 {
        self.shared.rejected_total.load(Ordering::Relaxed)
    }

    /// Connections held right now: handshaking, or established and not yet accepted.
    pub fn pending(&self) -> usize {
        self.shared.held.load(Ordering::Acquire)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.shared.stop, &1u64.to_ne_bytes());
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
        // Handshakes still running end at once (their reads see EOF).
        for (_, s) in lock(&self.shared.in_progress).drain() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Socket::Unix { path, file, .. } = &*self.socket {
            let ours = std::fs::symlink_metadata(path).is_ok_and(|m| (m.dev(), m.ino()) == *file);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
