//! The connected socket a [`Connection`](crate::Connection) runs on: a UNIX stream
//! socket or an `AF_VSOCK` stream socket (QEMU `-chardev socket,type=vsock,...`).

use rustix::fs::OFlags;
use rustix::net::sockopt::{self, Timeout};
use rustix::net::{AddressFamily, SendFlags, SocketFlags, SocketType};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected stream socket of either family. Everything [`Connection`] needs
/// (read, write, timeouts, shutdown, non-blocking peeks) works the same on both.
///
/// [`Connection`]: crate::Connection
#[derive(Debug)]
pub enum Stream {
    /// A UNIX stream socket.
    Unix(UnixStream),
    /// An `AF_VSOCK` stream socket.
    Vsock(VsockStream),
}

impl From<UnixStream> for Stream {
    fn from(s: UnixStream) -> Self {
        Stream::Unix(s)
    }
}

impl From<VsockStream> for Stream {
    fn from(s: VsockStream) -> Self {
        Stream::Vsock(s)
    }
}

impl Stream {
    /// A second handle to the same socket.
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Vsock(s) => Stream::Vsock(s.try_clone()?),
        })
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.shutdown(how),
            Stream::Vsock(s) => s.shutdown(how),
        }
    }

    /// Sets the read timeout (`None`: block forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Vsock(s) => s.set_read_timeout(t),
        }
    }

    /// Sets the write timeout (`None`: block forever).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_write_timeout(t),
            Stream::Vsock(s) => s.set_write_timeout(t),
        }
    }

    /// Switches non-blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_nonblocking(on),
            Stream::Vsock(s) => s.set_nonblocking(on),
        }
    }
}

impl Stream {
    /// A blocking socket reports an expired `SO_RCVTIMEO`/`SO_SNDTIMEO` as `EAGAIN`,
    /// the same code a non-blocking socket uses for "not ready". On a blocking socket
    /// with a timeout set, `WouldBlock` becomes a `TimedOut` error carrying a
    /// [`SocketTimeout`], which converts to [`ProtoError::Timeout`](crate::ProtoError).
    /// Only the error path pays for the two extra syscalls.
    fn timeout_error(&self, e: io::Error, which: Timeout) -> io::Error {
        if e.kind() != io::ErrorKind::WouldBlock {
            return e;
        }
        let blocking = rustix::fs::fcntl_getfl(self).is_ok_and(|f| !f.contains(OFlags::NONBLOCK));
        match sockopt::socket_timeout(self, which) {
            Ok(Some(after)) if blocking => {
                io::Error::new(io::ErrorKind::TimedOut, SocketTimeout(after))
            }
            _ => e,
        }
    }
}

/// The payload of the `TimedOut` [`io::Error`] a [`Stream`] returns when a blocking
/// read or write ran into the socket's timeout: the timeout as the kernel holds it
/// (rounded up to its clock tick, e.g. 50 ms reads back as 52 ms at `HZ=250`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketTimeout(pub Duration);

impl std::fmt::Display for SocketTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "socket timed out after {:?}", self.0)
    }
}

impl std::error::Error for SocketTimeout {}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let r = match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Vsock(s) => s.read(buf),
        };
        r.map_err(|e| self.timeout_error(e, Timeout::Recv))
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Vsock(s) => s.write(buf),
        };
        r.map_err(|e| self.timeout_error(e, Timeout::Send))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Unix(s) => s.as_fd(),
            Stream::Vsock(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

/// A connected `AF_VSOCK` stream socket (std has none). Obtained from
/// [`Listener::accept`](crate::Listener::accept) internally, or with
/// [`VsockStream::connect`] (the QEMU side; for tests).
#[derive(Debug)]
pub struct VsockStream {
    fd: OwnedFd,
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// A `sockaddr_vm` for `cid:port`.
pub(crate) fn sockaddr_vm(cid: u32, port: u32) -> libc::sockaddr_vm {
    libc::sockaddr_vm {
        svm_family: libc::AF_VSOCK as libc::sa_family_t,
        svm_reserved1: 0,
        svm_port: port,
        svm_cid: cid,
        svm_zero: [0; 4],
    }
}

/// `getsockname`/`getpeername` on a vsock socket → `(cid, port)`.
pub(crate) fn vsock_name(fd: RawFd, peer: bool) -> io::Result<(u32, u32)> {
    let mut a = sockaddr_vm(0, 0);
    let mut len = core::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    let p = (&mut a as *mut libc::sockaddr_vm).cast::<libc::sockaddr>();
    // SAFETY: `a` and `len` are valid for writes of the sizes given.
    cvt(unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    })?;
    Ok((a.svm_cid, a.svm_port))
}

/// A new `AF_VSOCK` `SOCK_STREAM` socket (close-on-exec).
pub(crate) fn vsock_socket() -> io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        AddressFamily::VSOCK,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

impl VsockStream {
    /// Connects to `cid:port` (blocking; the kernel's vsock connect timeout applies,
    /// 2 s by default).
    pub fn connect(cid: u32, port: u32) -> io::Result<VsockStream> {
        let fd = vsock_socket()?;
        let a = sockaddr_vm(cid, port);
        loop {
            // SAFETY: `a` is a valid sockaddr_vm of the size given.
            let rc = unsafe {
                libc::connect(
                    fd.as_raw_fd(),
                    (&a as *const libc::sockaddr_vm).cast(),
                    core::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
                )
            };
            match cvt(rc) {
                Ok(_) => return Ok(VsockStream { fd }),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `(cid, port)` of the peer.
    pub fn peer_addr(&self) -> io::Result<(u32, u32)> {
        vsock_name(self.fd.as_raw_fd(), true)
    }

    /// `(cid, port)` of this end.
    pub fn local_addr(&self) -> io::Result<(u32, u32)> {
        vsock_name(self.fd.as_raw_fd(), false)
    }

    /// A second handle to the same socket.
    pub fn try_clone(&self) -> io::Result<VsockStream> {
        Ok(VsockStream {
            fd: self.fd.try_clone()?,
        })
    }

    /// Shuts down one or both directions.
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => rustix::net::Shutdown::Read,
            Shutdown::Write => rustix::net::Shutdown::Write,
            Shutdown::Both => rustix::net::Shutdown::Both,
        };
        Ok(rustix::net::shutdown(&self.fd, how)?)
    }

    /// Sets the read timeout (`SO_RCVTIMEO`; `None`: block forever; a zero duration is
    /// an error, a sub-microsecond one becomes 1 µs, a huge one saturates).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        Ok(sockopt::set_socket_timeout(&self.fd, Timeout::Recv, t)?)
    }

    /// Sets the write timeout (`SO_SNDTIMEO`; as [`set_read_timeout`](Self::set_read_timeout)).
    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        Ok(sockopt::set_socket_timeout(&self.fd, Timeout::Send, t)?)
    }

    /// Switches non-blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        Ok(rustix::io::ioctl_fionbio(&self.fd, on)?)
    }
}

impl Read for VsockStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(rustix::io::read(&self.fd, buf)?)
    }
}

impl Write for VsockStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // MSG_NOSIGNAL: a closed peer gives EPIPE instead of SIGPIPE.
        Ok(rustix::net::send(&self.fd, buf, SendFlags::NOSIGNAL)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for VsockStream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for VsockStream {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<VsockStream> for OwnedFd {
    fn from(s: VsockStream) -> OwnedFd {
        s.fd
    }
}

impl From<OwnedFd> for VsockStream {
    /// Wraps a connected `AF_VSOCK` stream socket (not checked).
    fn from(fd: OwnedFd) -> VsockStream {
        VsockStream { fd }
    }
}
