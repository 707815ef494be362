//! Peers of another uid (65534, "nobody"), from a forked child that drops root: the
//! listening socket is never reachable by them, even with umask 000 while the listener
//! binds over and over, and the peer-uid check refuses them when the mode lets them in.
//!
//! This file is its own test binary because it sets the process umask to 000. The
//! tests need root (to switch uid in the child); elsewhere they print why they skip.
//! The forked child (of a multi-threaded process) only makes raw system calls.

use kvmi_proto::{Config, Listener, PeerUids, ProtoError};
use kvmi_sys as sys;
use std::ffi::CString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

const NOBODY: u32 = 65534;
const T: Duration = Duration::from_secs(5);

fn can_switch_uid() -> bool {
    // SAFETY: plain syscall without arguments.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("skipped: switching to uid {NOBODY} needs root (euid is {euid})");
        return false;
    }
    true
}

/// A directory everyone may traverse (so only the socket's own mode can refuse).
fn open_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kvmi-uid-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn sockaddr(path: &Path) -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain old data; all-zero is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let c = CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let b = c.as_bytes_with_nul();
    assert!(b.len() <= a.sun_path.len());
    for (d, s) in a.sun_path.iter_mut().zip(b) {
        *d = *s as libc::c_char;
    }
    a
}

/// What the child saw: `[connected, attempts, eacces, reply_bytes]`.
type Report = [u64; 4];

/// Exit status of a child that could not switch uid.
const NO_SETUID: i32 = 3;

/// Forks a child that becomes uid/gid 65534 (no supplementary groups) and runs `body`
/// with raw system calls only; returns its report, or `None` (with the reason printed)
/// if the child could not switch uid (e.g. no `CAP_SETUID` in this container).
fn in_child_as_nobody(body: impl FnOnce() -> Report) -> Option<Report> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: the child only makes system calls (no allocation, no locks) before _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: raw syscalls affecting only this (single-threaded) child; the report
        // buffer is valid for its size.
        unsafe {
            libc::close(fds[0]);
            let ok = libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) == 0
                && libc::syscall(libc::SYS_setgid, NOBODY) == 0
                && libc::syscall(libc::SYS_setuid, NOBODY) == 0;
            if !ok {
                libc::_exit(NO_SETUID);
            }
            let r = body();
            libc::write(fds[1], r.as_ptr().cast(), core::mem::size_of::<Report>());
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let mut r: Report = [0; 4];
    // SAFETY: `r` is valid for writes of its size.
    let n = unsafe {
        libc::read(
            fds[0],
            r.as_mut_ptr().cast(),
            core::mem::size_of::<Report>(),
        )
    };
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe {
        libc::close(fds[0]);
        libc::waitpid(pid, &mut status, 0);
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == NO_SETUID {
        eprintln!("skipped: the child could not switch to uid {NOBODY}");
        return None;
    }
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed (status {status:#x})"
    );
    assert_eq!(n as usize, core::mem::size_of::<Report>());
    Some(r)
}

fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for writes.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// In the child: connects to `addr` over and over for `for_ns`.
fn connect_loop(addr: &libc::sockaddr_un, for_ns: u64) -> Report {
    let end = now_ns() + for_ns;
    let (mut connected, mut attempts, mut eacces) = (0, 0, 0);
    while now_ns() < end {
        // SAFETY: raw syscalls on a socket this loop owns; `addr` is a valid
        // sockaddr_un of the size given.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                continue;
            }
            attempts += 1;
            let rc = libc::connect(
                fd,
                (addr as *const libc::sockaddr_un).cast(),
                core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            );
            if rc == 0 {
                connected += 1;
            } else if *libc::__errno_location() == libc::EACCES {
                eacces += 1;
            }
            libc::close(fd);
        }
    }
    [connected, attempts, eacces, 0]
}

/// Binds and drops listeners at `path` for `run` while a uid-65534 child connects in a
/// loop; returns the child's report (`None`: it could not switch uid) and the number
/// of binds.
fn race(path: &Path, mode: u32, run: Duration) -> (Option<Report>, u32) {
    let addr = sockaddr(path);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (p, st) = (path.to_path_buf(), stop.clone());
    let binder = std::thread::spawn(move || {
        let mut binds = 0u32;
        while !st.load(std::sync::atomic::Ordering::Relaxed) {
            let cfg = Config {
                socket_mode: mode,
                ..Config::default()
            };
            let l = Listener::bind(&p, cfg).unwrap();
            binds += 1;
            drop(l);
        }
        binds
    });
    let report = in_child_as_nobody(|| connect_loop(&addr, run.as_nanos() as u64));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    (report, binder.join().unwrap())
}

/// With umask 000 a plain bind-then-chmod exposes the socket as 0777 for an instant;
/// binding in a private directory never does.
#[test]
fn socket_never_reachable_by_another_uid() {
    if !can_switch_uid() {
        return;
    }
    // SAFETY: plain syscall (process-wide; this binary's tests all tolerate it).
    unsafe { libc::umask(0) };
    let dir = open_dir("race");
    let path = dir.join("kvmi.sock");
    let (r, binds) = race(&path, 0o600, Duration::from_secs(3));
    let Some([connected, attempts, eacces, _]) = r else {
        return;
    };
    eprintln!("mode 0600: {binds} binds, {attempts} connects, {eacces} EACCES, {connected} ok");
    assert!(binds > 10 && attempts > 100, "the race did not run");
    // The child did reach the socket file (and was refused by its mode) many times.
    assert!(eacces > 0, "the child never found the socket");
    assert_eq!(connected, 0, "uid {NOBODY} connected {connected} times");
    // The final mode is the configured one even with umask 000.
    let l = Listener::bind(&path, Config::default()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(l);

    // Control: the same child does connect when the mode lets it (so zero above means
    // the mode held, not that the child could not connect at all).
    let (r, _) = race(&path, 0o666, Duration::from_millis(500));
    let r = r.unwrap();
    assert!(
        r[0] > 0,
        "control: uid {NOBODY} never connected to a 0666 socket: {r:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// In the child: connects once, sends a valid hookup struct and counts the reply bytes
/// it gets before EOF.
fn hookup_attempt(addr: &libc::sockaddr_un, hookup: &[u8]) -> Report {
    let mut got = 0u64;
    // SAFETY: raw syscalls on a socket owned here; the buffers are valid for the sizes
    // given.
    unsafe {
        let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        let rc = libc::connect(
            fd,
            (addr as *const libc::sockaddr_un).cast(),
            core::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        );
        if rc != 0 {
            return [0, 1, 0, 0];
        }
        let tv = libc::timeval {
            tv_sec: 5,
            tv_usec: 0,
        };
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            core::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::send(fd, hookup.as_ptr().cast(), hookup.len(), libc::MSG_NOSIGNAL);
        let mut buf = [0u8; 24];
        while (got as usize) < buf.len() {
            let n = libc::read(
                fd,
                buf[got as usize..].as_mut_ptr().cast(),
                24 - got as usize,
            );
            if n <= 0 {
                break;
            }
            got += n as u64;
        }
        libc::close(fd);
    }
    [1, 1, 0, got]
}

#[test]
fn peer_uid_check_refuses_other_uids() {
    if !can_switch_uid() {
        return;
    }
    let dir = open_dir("peer");
    let path = dir.join("kvmi.sock");
    let addr = sockaddr(&path);
    let hookup = sys::QemuToIntrospector {
        struct_size: 96,
        ..Default::default()
    };
    let hookup = hookup.as_bytes().to_vec();

    // A widened mode lets uid 65534 reach the socket; the default policy refuses it
    // before the handshake: no reply, the connection closed.
    let cfg = Config {
        socket_mode: 0o666,
        ..Config::default()
    };
    let l = Listener::bind(&path, cfg.clone()).unwrap();
    let Some(r) = in_child_as_nobody(|| hookup_attempt(&addr, &hookup)) else {
        return;
    };
    assert_eq!(r[0], 1, "the child could not connect");
    assert_eq!(r[3], 0, "a refused peer got {} reply bytes", r[3]);
    let end = Instant::now() + T;
    let rejected = loop {
        let v = l.take_rejected();
        if !v.is_empty() || Instant::now() > end {
            break v;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        matches!(rejected[..], [ref x] if matches!(x.error, ProtoError::PeerRefused { uid: NOBODY, .. })),
        "{rejected:?}"
    );
    assert!(matches!(
        l.accept(Duration::from_millis(50)),
        Err(ProtoError::Timeout(_))
    ));
    drop(l);

    // Allowed explicitly, the same peer completes the handshake (it gets the 24-byte
    // reply), so it is the uid check that refused it above.
    let l = Listener::bind(
        &path,
        Config {
            allowed_peer_uids: PeerUids::Only(vec![NOBODY]),
            ..cfg
        },
    )
    .unwrap();
    let r = in_child_as_nobody(|| hookup_attempt(&addr, &hookup)).unwrap();
    assert_eq!(r[3], 24, "an allowed peer did not get the handshake reply");
    drop(l);
    assert!(PeerUids::default().allows(0));
    // SAFETY: plain syscall.
    assert!(PeerUids::default().allows(unsafe { libc::geteuid() }));
    assert!(!PeerUids::default().allows(NOBODY));
    std::fs::remove_dir_all(&dir).unwrap();
}
