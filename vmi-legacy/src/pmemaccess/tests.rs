//! The pmemaccess client against a fake patched QEMU on a UNIX socket.

use super::*;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

const MEM_SIZE: usize = 1 << 20;

/// A scratch directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "vmi-pmem-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the patch-faithful fixture saw.
#[derive(Debug, Default)]
struct ServerLog {
    requests: Vec<(u64, u64, u64)>,
    saw_quit: bool,
    short_reads: usize,
}

/// A listener in a temp dir whose one accepted connection is handed to `serve` on
/// a thread (like the patch: one connection only).
fn spawn_server<T: Send + 'static>(
    serve: impl FnOnce(UnixStream) -> T + Send + 'static,
) -> (TempDir, PathBuf, JoinHandle<T>) {
    let dir = TempDir::new();
    let path = dir.0.join("pmem.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let handle = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        drop(listener);
        serve(stream)
    });
    (dir, path, handle)
}

/// Serves the patch's protocol over `stream`, backed by `mem`: one `read()` per
/// request and per write payload, one `write()` per reply, a single (undefined, here
/// adversarially 1) byte for a failed read.
fn serve_patch(mut s: UnixStream, mem: Arc<Mutex<Vec<u8>>>) -> ServerLog {
    let mut log = ServerLog::default();
    loop {
        let mut req = [0u8; REQUEST_LEN];
        let n = match s.read(&mut req) {
            Ok(0) | Err(_) => return log, // the patch would spin; the fixture stops
            Ok(n) => n,
        };
        if n != REQUEST_LEN {
            log.short_reads += 1;
            continue;
        }
        let field = |i: usize| u64::from_ne_bytes(req[i * 8..i * 8 + 8].try_into().unwrap());
        let (kind, addr, len) = (field(0), field(1), field(2));
        log.requests.push((kind, addr, len));
        let in_range = |mem: &Vec<u8>| {
            addr.checked_add(len)
                .is_some_and(|end| end <= mem.len() as u64)
        };
        match kind {
            TYPE_QUIT => {
                log.saw_quit = true;
                return log;
            }
            TYPE_READ => {
                let mem = mem.lock().unwrap();
                if in_range(&mem) {
                    let mut reply = mem[addr as usize..(addr + len) as usize].to_vec();
                    reply.push(1);
                    s.write_all(&reply).unwrap();
                } else {
                    s.write_all(&[1]).unwrap(); // undefined value: the worst case
                }
            }
            TYPE_WRITE => {
                let mut data = vec![0u8; len as usize];
                let got = s.read(&mut data).unwrap_or(0);
                let mut mem = mem.lock().unwrap();
                if got as u64 == len && in_range(&mem) {
                    mem[addr as usize..(addr + len) as usize].copy_from_slice(&data);
                    s.write_all(&[1]).unwrap();
                } else {
                    if got as u64 != len {
                        log.short_reads += 1;
                    }
                    s.write_all(&[0]).unwrap();
                }
            }
            _ => s.write_all(&[0]).unwrap(),
        }
    }
}

fn patched_guest() -> (
    TempDir,
    PmemAccess,
    Arc<Mutex<Vec<u8>>>,
    JoinHandle<ServerLog>,
) {
    let mem: Vec<u8> = (0..MEM_SIZE).map(|i| (i * 7 + i / 4096) as u8).collect();
    let mem = Arc::new(Mutex::new(mem));
    let m = Arc::clone(&mem);
    let (dir, path, handle) = spawn_server(move |s| serve_patch(s, m));
    let client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    (dir, client, mem, handle)
}

#[test]
fn reads_guest_memory() {
    let (_dir, client, mem, _h) = patched_guest();
    let mut buf = [0u8; 100];
    client.read_physical(Gpa(0x1234), &mut buf).unwrap();
    assert_eq!(&buf[..], &mem.lock().unwrap()[0x1234..0x1234 + 100]);
    // One-byte reads are the most ambiguous case (2-byte success vs 1-byte failure).
    let mut one = [0u8; 1];
    client.read_physical(Gpa(77), &mut one).unwrap();
    assert_eq!(one[0], mem.lock().unwrap()[77]);
    assert_eq!(
        client.read_u64(Gpa(8)).unwrap(),
        u64::from_le_bytes(mem.lock().unwrap()[8..16].try_into().unwrap())
    );
    client.read_physical(Gpa(0), &mut []).unwrap();
}

#[test]
fn duration_max_waits_without_a_deadline_instead_of_panicking() {
    // `Instant::now() + Duration::MAX` panicked in every wait of this client.
    let mem: Vec<u8> = (0..MEM_SIZE).map(|i| (i * 3) as u8).collect();
    let mem = Arc::new(Mutex::new(mem));
    let m = Arc::clone(&mem);
    let (_dir, path, h) = spawn_server(move |s| serve_patch(s, m));
    let client = PmemAccess::connect(&path, Duration::MAX).unwrap();
    let mut buf = [0u8; 64];
    client.read_physical(Gpa(0x100), &mut buf).unwrap();
    assert_eq!(&buf[..], &mem.lock().unwrap()[0x100..0x140]);
    client.write_physical(Gpa(0x200), &[1, 2, 3]).unwrap();
    assert_eq!(&mem.lock().unwrap()[0x200..0x203], &[1, 2, 3]);
    client.close().unwrap();
    h.join().unwrap();
}

#[test]
fn write_then_read_back() {
    let (_dir, client, mem, h) = patched_guest();
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    client.write_physical(Gpa(0x3_0001), &data).unwrap();
    let mut back = vec![0u8; data.len()];
    client.read_physical(Gpa(0x3_0001), &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(
        &mem.lock().unwrap()[0x3_0001..0x3_0001 + data.len()],
        &data[..]
    );
    drop(client);
    let log = h.join().unwrap();
    assert_eq!(log.short_reads, 0, "the server saw split requests");
    // 40 000 bytes = 3 write chunks.
    let writes = log.requests.iter().filter(|r| r.0 == TYPE_WRITE).count();
    assert_eq!(writes, 40_000usize.div_ceil(WRITE_CHUNK));
}

#[test]
fn large_read_is_split_into_chunks() {
    let mem: Vec<u8> = (0..3 * READ_CHUNK + 100)
        .map(|i| (i ^ (i >> 12)) as u8)
        .collect();
    let mem = Arc::new(Mutex::new(mem));
    let m = Arc::clone(&mem);
    let (_dir, path, h) = spawn_server(move |s| serve_patch(s, m));
    let client = PmemAccess::connect(&path, Duration::from_secs(10)).unwrap();
    let mut buf = vec![0u8; 2 * READ_CHUNK + 4096];
    client.read_physical(Gpa(50), &mut buf).unwrap();
    assert_eq!(&buf[..], &mem.lock().unwrap()[50..50 + buf.len()]);
    drop(client);
    let log = h.join().unwrap();
    let reads: Vec<_> = log.requests.iter().filter(|r| r.0 == TYPE_READ).collect();
    assert_eq!(reads.len(), 3);
    assert!(reads.iter().all(|r| r.2 <= READ_CHUNK as u64));
    assert_eq!(reads[1].1, 50 + READ_CHUNK as u64);
}

#[test]
fn out_of_range_read_is_unmapped_and_session_survives() {
    let (_dir, client, mem, _h) = patched_guest();
    for len in [2usize, 8, 4096] {
        let mut buf = vec![0u8; len];
        let e = client
            .read_physical(Gpa(MEM_SIZE as u64 - 1), &mut buf)
            .unwrap_err();
        assert!(
            matches!(e, Error::UnmappedPhysical { gpa: Gpa(g), len: l } if g == MEM_SIZE as u64 - 1 && l == len as u64),
            "{e:?}"
        );
    }
    let mut buf = [0u8; 4];
    let e = client
        .read_physical(Gpa(MEM_SIZE as u64 + 10), &mut buf)
        .unwrap_err();
    assert!(matches!(e, Error::UnmappedPhysical { .. }), "{e:?}");
    // Still in step afterwards.
    client.read_physical(Gpa(16), &mut buf).unwrap();
    assert_eq!(&buf, &mem.lock().unwrap()[16..20]);
    // Wrapping ranges are refused locally.
    let e = client
        .read_physical(Gpa(u64::MAX - 1), &mut buf)
        .unwrap_err();
    assert!(matches!(e, Error::UnmappedPhysical { .. }), "{e:?}");
}

#[test]
fn out_of_range_write_fails() {
    let (_dir, client, mem, _h) = patched_guest();
    let e = client
        .write_physical(Gpa(MEM_SIZE as u64 - 2), &[1, 2, 3, 4])
        .unwrap_err();
    assert!(matches!(e, Error::UnmappedPhysical { .. }), "{e:?}");
    client.write_physical(Gpa(0), &[9, 9]).unwrap();
    assert_eq!(&mem.lock().unwrap()[..2], &[9, 9]);
}

#[test]
fn quit_is_sent_on_drop() {
    let (_dir, client, _mem, h) = patched_guest();
    client.read_u32(Gpa(0)).unwrap();
    drop(client);
    let log = h.join().unwrap();
    assert!(log.saw_quit);
    assert_eq!(log.requests.last(), Some(&(TYPE_QUIT, 0, 0)));
}

#[test]
fn close_reports_quit_sent() {
    let (_dir, client, _mem, h) = patched_guest();
    client.close().unwrap();
    assert!(h.join().unwrap().saw_quit);
}

#[test]
fn slow_success_reply_is_not_taken_for_failure() {
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
        s.write_all(&[0xAA]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(&[0xBB, 0xCC, 0xDD, 1]).unwrap();
        let _ = s.read(&mut req);
    });
    let mut client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    client.set_failure_grace(Duration::from_secs(2));
    let mut buf = [0u8; 4];
    client.read_physical(Gpa(0), &mut buf).unwrap();
    assert_eq!(buf, [0xAA, 0xBB, 0xCC, 0xDD]);
}

#[test]
fn late_bytes_after_judged_failure_poison_the_session() {
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
        s.write_all(&[0xAA]).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(&[0xBB, 0xCC, 0xDD, 1]).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    let mut client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    client.set_failure_grace(Duration::from_millis(20));
    let mut buf = [0u8; 4];
    let e = client.read_physical(Gpa(0), &mut buf).unwrap_err();
    assert!(matches!(e, Error::UnmappedPhysical { .. }), "{e:?}");
    std::thread::sleep(Duration::from_millis(500));
    let e = client.read_physical(Gpa(0), &mut buf).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
    let e = client.read_physical(Gpa(0), &mut buf).unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
}

#[test]
fn early_close_is_disconnected() {
    // Closes right after the request.
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
    });
    let client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    let e = client.read_physical(Gpa(0), &mut [0u8; 64]).unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
    let e = client.write_physical(Gpa(0), &[1]).unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");

    // Half a reply, then close.
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
        s.write_all(&[7u8; 32]).unwrap();
    });
    let client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    let e = client.read_physical(Gpa(0), &mut [0u8; 64]).unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");

    // One byte, then close: not a clean failure.
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
        s.write_all(&[0]).unwrap();
    });
    let client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    let e = client.read_physical(Gpa(0), &mut [0u8; 64]).unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");

    // Closed before any request: the readiness check notices.
    let (_dir, path, h) = spawn_server(drop);
    let client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    h.join().unwrap();
    let e = client.read_physical(Gpa(0), &mut [0u8; 8]).unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");
}

#[test]
fn garbage_replies_are_typed_errors() {
    // A stalled half reply times out and poisons the session.
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
        s.write_all(&[1u8; 10]).unwrap();
        std::thread::sleep(Duration::from_secs(2));
    });
    let client = PmemAccess::connect(&path, Duration::from_millis(300)).unwrap();
    let e = client.read_physical(Gpa(0), &mut [0u8; 64]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    let e = client.read_physical(Gpa(0), &mut [0u8; 64]).unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e:?}");

    // No reply at all.
    let (_dir, path, _h) = spawn_server(|s| {
        std::thread::sleep(Duration::from_secs(2));
        drop(s);
    });
    let client = PmemAccess::connect(&path, Duration::from_millis(200)).unwrap();
    let e = client.write_physical(Gpa(0), &[1, 2, 3]).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");

    // A full-length read reply with a bad status byte.
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
        s.write_all(&[5, 5, 5, 5, 0]).unwrap();
        let _ = s.read(&mut req);
    });
    let client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    let e = client.read_physical(Gpa(0), &mut [0u8; 4]).unwrap_err();
    assert!(matches!(e, Error::UnmappedPhysical { .. }), "{e:?}");

    // An overlong reply is caught before the next request.
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN];
        s.read_exact(&mut req).unwrap();
        s.write_all(&[5, 5, 5, 5, 1, 9, 9, 9]).unwrap();
        let _ = s.read(&mut req);
    });
    let client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    client.read_physical(Gpa(0), &mut [0u8; 4]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let e = client.read_physical(Gpa(0), &mut [0u8; 4]).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");

    // A write reply that is neither 0 nor 1.
    let (_dir, path, _h) = spawn_server(|mut s| {
        let mut req = [0u8; REQUEST_LEN + 3];
        let _ = s.read(&mut req);
        s.write_all(&[0x42]).unwrap();
        let _ = s.read(&mut req);
    });
    let client = PmemAccess::connect(&path, Duration::from_secs(5)).unwrap();
    let e = client.write_physical(Gpa(0), &[1, 2, 3]).unwrap_err();
    assert!(matches!(e, Error::Malformed { .. }), "{e:?}");
}

#[test]
fn connect_errors_are_typed() {
    let dir = TempDir::new();
    let e = PmemAccess::connect(dir.0.join("missing.sock"), Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    let long = dir.0.join("x".repeat(200));
    let e = PmemAccess::connect(long, Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = PmemAccess::connect(dir.0.join("a"), Duration::ZERO).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
}

/// Kills and reaps QEMU when dropped.
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn unpatched_qemu_is_unsupported() {
    let dir = TempDir::new();
    let qmp_path = dir.0.join("qmp.sock");
    let child = match Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-machine",
            "pc",
            "-m",
            "32",
            "-nodefaults",
            "-nographic",
            "-S",
            "-qmp",
        ])
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            // Under `cargo xtask test` QEMU is provisioned, so its absence fails.
            assert!(
                std::env::var("VMI_REQUIRE_QEMU").as_deref() != Ok("1"),
                "cannot start qemu-system-x86_64 ({e}) and VMI_REQUIRE_QEMU=1"
            );
            eprintln!("skipping: cannot start qemu-system-x86_64: {e}");
            return;
        }
    };
    let mut qemu = QemuGuard(child);
    let deadline = Deadline::after(Duration::from_secs(20));
    let mut qmp = loop {
        if let Ok(q) = QmpClient::connect(&qmp_path) {
            break q;
        }
        if let Ok(Some(status)) = qemu.0.try_wait() {
            panic!("QEMU exited early: {status}");
        }
        assert!(!deadline.expired(), "QMP socket never came up");
        std::thread::sleep(Duration::from_millis(50));
    };
    let e = PmemAccess::request_socket(&mut qmp, &dir.0).unwrap_err();
    match &e {
        Error::Unsupported { feature, reason } => {
            assert_eq!(feature, "pmemaccess");
            assert!(reason.contains("fast-memaccess"), "{reason}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // The QMP session is still usable and no socket file was left behind.
    qmp.query_status().unwrap();
    let leftovers = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("vmi-pmem-"))
        .count();
    assert_eq!(leftovers, 0);
}
