//! Noticing that QEMU died: [`ProcessWatch`].
//!
//! Shared guest RAM stays mapped, and readable, after QEMU exits (the mapping holds
//! its own reference to the memfd or file), so reads alone never notice: they return
//! the frozen last state of a guest that is gone. A watcher thread waits on a pidfd of
//! QEMU's process and sets a flag when the process exits; every access checks the flag
//! — one atomic load, no system call per read.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};
use rustix::process::{pidfd_open, Pid, PidfdFlags};
use vmi_core::{Error, Result};

/// A failed read or write on a socket to QEMU: [`Error::Disconnected`] when the peer is
/// gone (QEMU exited or closed the connection), else [`Error::Io`].
pub(crate) fn stream_error(
    context: impl Into<std::borrow::Cow<'static, str>>,
    e: std::io::Error,
) -> Error {
    use std::io::ErrorKind::*;
    match e.kind() {
        BrokenPipe | ConnectionReset | ConnectionAborted | NotConnected | UnexpectedEof => {
            Error::Disconnected {
                reason: format!("{}: {e}", context.into()).into(),
            }
        }
        _ => Error::io(context, e),
    }
}

/// Watches one process; [`ProcessWatch::check`] fails with [`Error::Disconnected`]
/// once it has exited. Dropping the watch stops its thread.
#[derive(Debug)]
pub struct ProcessWatch {
    pid: i32,
    exited: Arc<AtomicBool>,
    /// Written on drop to wake the watcher thread.
    wake: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl ProcessWatch {
    /// Starts watching process `pid` (in this PID namespace). Fails if the process does
    /// not exist or pidfds are unavailable (Linux before 5.3).
    pub fn new(pid: i32) -> Result<Self> {
        let os = |what: &str, e: rustix::io::Errno| {
            Error::io(format!("{what} of QEMU (pid {pid})"), e.into())
        };
        let raw = Pid::from_raw(pid).ok_or_else(|| Error::InvalidArgument {
            what: "pid",
            reason: format!("{pid} is not a process id").into(),
        })?;
        let pidfd = pidfd_open(raw, PidfdFlags::empty()).map_err(|e| os("pidfd_open", e))?;
        let wake = eventfd(0, EventfdFlags::CLOEXEC).map_err(|e| os("eventfd for the watch", e))?;
        let woken = wake
            .try_clone()
            .map_err(|e| Error::io("duplicating the watch's eventfd", e))?;
        let exited = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&exited);
        let thread = std::thread::Builder::new()
            .name(format!("vmi-watch-{pid}"))
            .spawn(move || watch(pidfd, woken, flag))
            .map_err(|e| Error::io("starting the QEMU watch thread", e))?;
        Ok(Self {
            pid,
            exited,
            wake,
            thread: Some(thread),
        })
    }

    /// Whether the process has exited.
    pub fn has_exited(&self) -> bool {
        self.exited.load(Ordering::Relaxed)
    }

    /// [`Error::Disconnected`] once the process has exited.
    pub fn check(&self) -> Result<()> {
        if self.has_exited() {
            Err(Error::Disconnected {
                reason: format!("QEMU (pid {}) has exited", self.pid).into(),
            })
        } else {
            Ok(())
        }
    }
}

/// The watcher thread: waits until the process exits (its pidfd becomes readable) or
/// the watch is dropped (the eventfd becomes readable).
fn watch(pidfd: OwnedFd, woken: OwnedFd, exited: Arc<AtomicBool>) {
    loop {
        let mut fds = [
            PollFd::new(&pidfd, PollFlags::IN),
            PollFd::new(&woken, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {
                if !fds[0].revents().is_empty() {
                    exited.store(true, Ordering::Relaxed);
                    return;
                }
                if !fds[1].revents().is_empty() {
                    return;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            // Cannot watch: leave the flag as it is (reads go on as without a watch).
            Err(_) => return,
        }
    }
}

impl Drop for ProcessWatch {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.wake, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn notices_a_child_exit_and_stops_on_drop() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let w = ProcessWatch::new(child.id() as i32).unwrap();
        assert!(w.check().is_ok());
        child.kill().unwrap();
        child.wait().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.check().is_ok() {
            assert!(Instant::now() < deadline, "exit not noticed");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(matches!(w.check(), Err(Error::Disconnected { .. })));
        // A watch of a live process ends its thread on drop (join returns).
        let me = ProcessWatch::new(std::process::id() as i32).unwrap();
        drop(me);
    }

    #[test]
    fn refuses_a_missing_process() {
        assert!(ProcessWatch::new(0).is_err());
        assert!(ProcessWatch::new(i32::MAX).is_err());
    }
}
