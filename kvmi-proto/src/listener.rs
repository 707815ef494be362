//! The listening socket QEMU connects to: a UNIX socket path or an `AF_VSOCK` port.

use crate::connection::{Config, Connection};
use crate::error::{ProtoError, Result};
use crate::stream::{sockaddr_vm, vsock_name, vsock_socket, Stream, VsockStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug)]
enum Inner {
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
    Vsock {
        fd: OwnedFd,
        port: u32,
    },
}

/// A UNIX-socket or vsock listener accepting any number of VMs (one [`Connection`]
/// each).
#[derive(Debug)]
pub struct Listener {
    inner: Inner,
    config: Config,
}

impl Listener {
    /// Binds `path` (a stale socket at `path` is removed; any other file is an error)
    /// and sets its mode to [`Config::socket_mode`] (0600 by default).
    pub fn bind(path: impl AsRef<Path>, config: Config) -> Result<Listener> {
        let path = path.as_ref().to_path_buf();
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&path)?,
            Ok(_) => {
                return Err(ProtoError::InvalidArgument(format!(
                    "{} exists and is not a socket",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(config.socket_mode))?;
        listener.set_nonblocking(true)?;
        Ok(Listener {
            inner: Inner::Unix { listener, path },
            config,
        })
    }

    /// Listens on vsock `port` for any CID (`VMADDR_CID_ANY`), as libkvmi's
    /// `kvmi_init_vsock` does; QEMU then connects with
    /// `-chardev socket,type=vsock,cid=<this host's CID>,port=<port>,reconnect=N`.
    /// `libc::VMADDR_PORT_ANY` picks a free port (see [`vsock_port`](Self::vsock_port)).
    /// [`Config::socket_mode`] does not apply.
    ///
    /// Fails with [`ProtoError::Vsock`] naming the failed call; when the machine has no
    /// usable vsock (no `AF_VSOCK` support, no transport)
    /// [`ProtoError::is_vsock_unavailable`] is true.
    pub fn bind_vsock(port: u32, config: Config) -> Result<Listener> {
        let err = |op| move |source| ProtoError::Vsock { op, port, source };
        let fd = vsock_socket().map_err(err("socket"))?;
        let a = sockaddr_vm(libc::VMADDR_CID_ANY, port);
        // SAFETY: `a` is a valid sockaddr_vm of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&a as *const libc::sockaddr_vm).cast(),
                core::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(err("bind")(std::io::Error::last_os_error()));
        }
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
            return Err(err("listen")(std::io::Error::last_os_error()));
        }
        let mut on: libc::c_int = 1;
        // SAFETY: FIONBIO reads one c_int from the valid pointer given.
        if unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONBIO, &mut on) } != 0 {
            return Err(err("ioctl(FIONBIO)")(std::io::Error::last_os_error()));
        }
        let (_, port) = vsock_name(fd.as_raw_fd(), false).map_err(err("getsockname"))?;
        Ok(Listener {
            inner: Inner::Vsock { fd, port },
            config,
        })
    }

    /// Socket path (`None` for a vsock listener).
    pub fn path(&self) -> Option<&Path> {
        match &self.inner {
            Inner::Unix { path, .. } => Some(path),
            Inner::Vsock { .. } => None,
        }
    }

    /// The bound vsock port (`None` for a UNIX listener).
    pub fn vsock_port(&self) -> Option<u32> {
        match &self.inner {
            Inner::Vsock { port, .. } => Some(*port),
            Inner::Unix { .. } => None,
        }
    }

    fn raw_fd(&self) -> RawFd {
        match &self.inner {
            Inner::Unix { listener, .. } => listener.as_raw_fd(),
            Inner::Vsock { fd, .. } => fd.as_raw_fd(),
        }
    }

    /// One non-blocking `accept`.
    fn try_accept(&self) -> std::io::Result<Stream> {
        match &self.inner {
            Inner::Unix { listener, .. } => listener.accept().map(|(s, _)| Stream::Unix(s)),
            Inner::Vsock { fd, .. } => {
                // SAFETY: null address pointers are allowed (peer address not wanted).
                let rc = unsafe {
                    libc::accept4(
                        fd.as_raw_fd(),
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if rc < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: `rc` is a freshly accepted descriptor nobody else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(rc) };
                Ok(Stream::Vsock(VsockStream::from(fd)))
            }
        }
    }

    /// Waits up to `timeout` for QEMU to connect, then runs the handshake and setup
    /// ([`Connection::establish_stream`]) with this listener's configuration.
    pub fn accept(&self, timeout: Duration) -> Result<Connection> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.try_accept() {
                Ok(stream) => return Connection::establish_stream(stream, self.config.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProtoError::Timeout(timeout));
            }
            let mut pfd = libc::pollfd {
                fd: self.raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: `pfd` is a valid pollfd for the duration of the call, count 1.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e.into());
                }
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Inner::Unix { path, .. } = &self.inner {
            let _ = std::fs::remove_file(path);
        }
    }
}
