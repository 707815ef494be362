//! What a guest holds on the host besides QEMU: one of the process's guest slots, and
//! its temporary directory (RAM file, sockets) with stale ones of dead test processes
//! removed.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::{RamBackend, ENV_MAX_GUESTS, ENV_TMPDIR};

// Concurrency limit: at most VMI_MAX_GUESTS guests alive per process.

static SLOTS: (Mutex<usize>, Condvar) = (Mutex::new(0), Condvar::new());

fn max_guests() -> usize {
    match std::env::var(ENV_MAX_GUESTS) {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => panic!("{ENV_MAX_GUESTS}={v:?} is not a positive number"),
        },
        Err(_) => 2,
    }
}

#[derive(Debug)]
pub(super) struct Permit;

impl Permit {
    pub(super) fn acquire(timeout: Duration) -> io::Result<Permit> {
        let max = max_guests();
        let deadline = Instant::now() + timeout;
        let mut used = SLOTS.0.lock().unwrap_or_else(|e| e.into_inner());
        while *used >= max {
            let now = Instant::now();
            if now >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "waited {timeout:?} for one of the {max} guest slots ({ENV_MAX_GUESTS}); \
                         is a Guest leaked (e.g. kept in a static)?"
                    ),
                ));
            }
            used = SLOTS
                .1
                .wait_timeout(used, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        *used += 1;
        Ok(Permit)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut used = SLOTS.0.lock().unwrap_or_else(|e| e.into_inner());
        *used -= 1;
        SLOTS.1.notify_one();
    }
}

// ---------------------------------------------------------------------------------------
// Temporary directory.

#[derive(Debug)]
pub(super) struct TempDir(pub(super) PathBuf);

impl TempDir {
    pub(super) fn create(ram_size: u64, backend: RamBackend) -> io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let base = base_dir(ram_size, backend);
        remove_stale(&base);
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("vmi-guest-{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("creating guest directory {}: {e}", path.display()),
                    ))
                }
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes `vmi-guest-<pid>-<n>` directories of processes that no longer exist (left
/// behind when a test process was killed: QEMU dies with it, but nobody removes the RAM
/// file, which on `/dev/shm` holds memory).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("vmi-guest-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `VMI_GUEST_TMPDIR`, else `/dev/shm` when it has room for the RAM file (keeps guest RAM
/// off the disk), else the system temporary directory. UNIX socket paths must stay short,
/// which rules out `target/`.
fn base_dir(ram_size: u64, backend: RamBackend) -> PathBuf {
    if let Some(dir) = std::env::var_os(ENV_TMPDIR).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    let needed = match backend {
        RamBackend::File => ram_size.saturating_mul(2),
        RamBackend::Memfd => 1 << 20,
    };
    if free_bytes(shm).is_some_and(|free| free >= needed) {
        return shm.to_owned();
    }
    std::env::temp_dir()
}

fn free_bytes(dir: &Path) -> Option<u64> {
    let mut c = dir.as_os_str().as_bytes().to_vec();
    c.push(0);
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `c` is NUL-terminated and `st` is a valid out-pointer for one statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr().cast(), st.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it initialized `st`.
    let st = unsafe { st.assume_init() };
    // SAFETY: access(2) only reads the NUL-terminated path.
    let writable = unsafe { libc::access(c.as_ptr().cast(), libc::W_OK | libc::X_OK) } == 0;
    writable.then(|| st.f_bavail.saturating_mul(st.f_frsize))
}
