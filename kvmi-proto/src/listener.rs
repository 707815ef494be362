//! The listening UNIX socket QEMU connects to.

use crate::connection::{Config, Connection};
use crate::error::{ProtoError, Result};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A UNIX-socket listener accepting any number of VMs (one [`Connection`] each).
#[derive(Debug)]
pub struct Listener {
    listener: UnixListener,
    path: PathBuf,
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
            listener,
            path,
            config,
        })
    }

    /// Socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Waits up to `timeout` for QEMU to connect, then runs the handshake and setup
    /// ([`Connection::establish`]) with this listener's configuration.
    pub fn accept(&self, timeout: Duration) -> Result<Connection> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => return Connection::establish(stream, self.config.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProtoError::Timeout(timeout));
            }
            let mut pfd = libc::pollfd {
                fd: self.listener.as_raw_fd(),
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
        let _ = std::fs::remove_file(&self.path);
    }
}
