//! Hostile and slow peers over real UNIX sockets: the handshake deadline (slowloris),
//! concurrent handshakes (silent peers ahead of a real VM, the pending bound), write
//! timeouts, and command names in error messages. Other-uid peers: `other_uid.rs`.

use kvmi_proto::{Config, Connection, Listener, ProtoError, Rejected};
use kvmi_sim::{SimConfig, Simulator};
use kvmi_sys as sys;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use zerocopy::IntoBytes;

const T: Duration = Duration::from_secs(5);

fn sock_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "kvmi-proto-safety-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn cfg(handshake_timeout: Duration) -> Config {
    Config {
        secret: Some(b"s".to_vec()),
        handshake_timeout,
        request_timeout: T,
        probe: false,
        ..Config::default()
    }
}

fn sim_cfg() -> SimConfig {
    SimConfig {
        secret: Some(b"s".to_vec()),
        handshake_timeout: Duration::from_secs(3),
        ..SimConfig::default()
    }
}

/// Polls the listener's rejected list until one matches `want` (or `limit` passes).
fn wait_rejected(l: &Listener, limit: Duration, want: impl Fn(&Rejected) -> bool) -> Rejected {
    let end = Instant::now() + limit;
    let mut seen = Vec::new();
    while Instant::now() < end {
        for r in l.take_rejected() {
            if want(&r) {
                return r;
            }
            seen.push(format!("{:?}", r.error));
        }
        thread::sleep(Duration::from_millis(20));
    }
    panic!("no matching rejection within {limit:?}; saw {seen:?}");
}

/// A peer announcing a 64 KiB hookup struct and sending one byte every 500 ms is cut
/// off at the handshake deadline (2 s), not after 64 Ki × (per-read timeout).
#[test]
fn slowloris_peer_fails_within_the_handshake_deadline() {
    let budget = Duration::from_secs(2);
    let path = sock_path();
    let l = Listener::bind(&path, cfg(budget)).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    let start = Instant::now();
    s.write_all(&(64u32 * 1024).to_ne_bytes()).unwrap();
    // One byte per 500 ms until the listener hangs up; bounded at 40 bytes (20 s).
    let mut closed_after = None;
    for _ in 0..40 {
        thread::sleep(Duration::from_millis(500));
        if s.write_all(&[0xab]).is_err() {
            closed_after = Some(start.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the slow peer was never disconnected");
    // The deadline is one budget for the whole handshake: the peer kept sending well
    // within every per-read timeout, yet was closed about `budget` after connecting.
    assert!(closed_after >= budget, "closed after {closed_after:?}");
    assert!(
        closed_after < budget + Duration::from_secs(3),
        "closed after {closed_after:?}"
    );
    let r = wait_rejected(&l, T, |r| matches!(r.error, ProtoError::Timeout(_)));
    assert!(
        matches!(r.error, ProtoError::Timeout(d) if d == budget),
        "{:?}",
        r.error
    );
    assert_eq!(r.peer.unwrap().pid, std::process::id() as i32);
    assert!(matches!(
        l.accept(Duration::from_millis(10)),
        Err(ProtoError::Timeout(_))
    ));
}

/// The same on a connected stream without a listener ([`Connection::establish`]).
#[test]
fn establish_enforces_one_deadline() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let feeder = thread::spawn(move || {
        let _ = b.write_all(&(64u32 * 1024).to_ne_bytes());
        for _ in 0..40 {
            thread::sleep(Duration::from_millis(250));
            if b.write_all(&[0; 1]).is_err() {
                break;
            }
        }
    });
    let start = Instant::now();
    let e = Connection::establish(a, cfg(Duration::from_millis(1200))).unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(e, ProtoError::Timeout(d) if d == Duration::from_millis(1200)),
        "{e:?}"
    );
    assert!(took < Duration::from_secs(4), "{took:?}");
    feeder.join().unwrap();
}

/// `Duration::MAX` for the handshake deadline, the write timeout and `accept` means
/// "no deadline": nothing panics and a real VM is accepted.
#[test]
fn duration_max_means_no_deadline_without_panic() {
    let path = sock_path();
    let config = Config {
        handshake_timeout: Duration::MAX,
        write_timeout: Duration::MAX,
        ..cfg(Duration::MAX)
    };
    let l = Listener::bind(&path, config).unwrap();
    let p = path.clone();
    let sim = thread::spawn(move || Simulator::connect(&p, sim_cfg()).unwrap());
    let c = l.accept(Duration::MAX).unwrap();
    let _sim = sim.join().unwrap();
    assert_eq!(c.hookup().name, "kvmi-sim");
    assert_eq!(c.get_guest_info().unwrap(), 2);
}

/// Two connections that never send a byte, ahead of a real VM: the VM is accepted
/// while both are still pending (handshakes run concurrently), well before their
/// 10 s handshake deadline.
#[test]
fn silent_peers_do_not_delay_a_real_vm() {
    let path = sock_path();
    let l = Listener::bind(&path, cfg(Duration::from_secs(10))).unwrap();
    let silent: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    // Both reached the listener's handshake threads before the VM connects.
    let end = Instant::now() + T;
    while l.pending() < 2 {
        assert!(Instant::now() < end, "silent peers never became pending");
        thread::sleep(Duration::from_millis(5));
    }
    let p = path.clone();
    let sim = thread::spawn(move || Simulator::connect(&p, sim_cfg()));
    // kvmi-sim's own handshake timeout is 3 s: an accept that waited behind the
    // silent peers (10 s each) would make it fail.
    let c = l.accept(T).unwrap();
    let sim = sim.join().unwrap().expect("the VM's hookup failed");
    assert_eq!(c.hookup().name, "kvmi-sim");
    assert_eq!(c.get_guest_info().unwrap(), 2);
    // The silent ones are still handshaking: nothing waited for them.
    assert_eq!(l.pending(), 2);
    assert_eq!(l.rejected_count(), 0);
    drop(c);
    sim.wait_closed(T).unwrap();
    drop(silent);
    // Once they hang up, their handshakes fail and free their slots.
    wait_rejected(&l, T, |r| matches!(r.error, ProtoError::Handshake(_)));
    let end = Instant::now() + T;
    while l.pending() > 0 {
        assert!(Instant::now() < end, "slots not released");
        thread::sleep(Duration::from_millis(5));
    }
}

/// At most `max_pending_handshakes` connections are held; one more is closed at once
/// (without waiting for a slot), and the VM gets in once a slot frees.
#[test]
fn pending_handshakes_are_bounded() {
    let path = sock_path();
    let config = Config {
        max_pending_handshakes: 2,
        ..cfg(Duration::from_secs(10))
    };
    let l = Listener::bind(&path, config).unwrap();
    let silent: Vec<UnixStream> = (0..2)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let end = Instant::now() + T;
    while l.pending() < 2 {
        assert!(Instant::now() < end, "silent peers never became pending");
        thread::sleep(Duration::from_millis(5));
    }
    let mut third = UnixStream::connect(&path).unwrap();
    third.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        third.read(&mut b).unwrap(),
        0,
        "the extra peer is closed at once"
    );
    let r = wait_rejected(&l, T, |r| matches!(r.error, ProtoError::TooManyPending(2)));
    assert!(r.peer.is_some());
    drop(silent);
    let end = Instant::now() + T;
    while l.pending() > 0 {
        assert!(Instant::now() < end, "slots not released");
        thread::sleep(Duration::from_millis(5));
    }
    let p = path.clone();
    let sim = thread::spawn(move || Simulator::connect(&p, sim_cfg()).unwrap());
    let c = l.accept(T).unwrap();
    let _sim = sim.join().unwrap();
    assert_eq!(c.get_guest_info().unwrap(), 2);
    assert_eq!(l.pending(), 0, "an accepted connection releases its slot");
}

/// Dropping the listener ends handshakes in progress at once.
#[test]
fn drop_ends_pending_handshakes() {
    let path = sock_path();
    let l = Listener::bind(&path, cfg(Duration::from_secs(30))).unwrap();
    let mut s = UnixStream::connect(&path).unwrap();
    let end = Instant::now() + T;
    while l.pending() < 1 {
        assert!(Instant::now() < end);
        thread::sleep(Duration::from_millis(5));
    }
    drop(l);
    assert!(!path.exists());
    s.set_read_timeout(Some(T)).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap(), 0);
}

/// Completes QEMU's handshake and answers GET_VERSION, then never reads again.
fn stalled_host(path: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let h = sys::QemuToIntrospector {
        struct_size: 96,
        ..Default::default()
    };
    s.write_all(h.as_bytes()).unwrap();
    let mut reply = [0u8; 24];
    s.read_exact(&mut reply).unwrap();
    let mut hdr = [0u8; 8];
    s.read_exact(&mut hdr).unwrap();
    let id = u16::from_ne_bytes([hdr[0], hdr[1]]);
    let size = u16::from_ne_bytes([hdr[2], hdr[3]]);
    let seq = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    assert_eq!(id, sys::KVMI_GET_VERSION);
    let mut p = vec![0u8; size.into()];
    s.read_exact(&mut p).unwrap();
    let r = sys::GetVersionReply {
        version: 1,
        ..Default::default()
    };
    let body = [sys::ErrorCode::default().as_bytes(), r.as_bytes()].concat();
    let reply = sys::MsgHdr {
        id,
        size: body.len() as u16,
        seq,
    };
    s.write_all(&[reply.as_bytes(), &body].concat()).unwrap();
    // The setup's VM_GET_INFO.
    s.read_exact(&mut hdr).unwrap();
    let id = u16::from_ne_bytes([hdr[0], hdr[1]]);
    let seq = u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
    assert_eq!(id, sys::KVMI_VM_GET_INFO);
    let info = sys::VmGetInfoReply {
        vcpu_count: 1,
        padding: [0; 3],
    };
    let body = [sys::ErrorCode::default().as_bytes(), info.as_bytes()].concat();
    let reply = sys::MsgHdr {
        id,
        size: body.len() as u16,
        seq,
    };
    s.write_all(&[reply.as_bytes(), &body].concat()).unwrap();
    s
}

/// A write that runs into the socket's write timeout is `ProtoError::Timeout`, not
/// `Io(EAGAIN)`, and the connection is closed (the stream may hold half a message).
#[test]
fn write_timeout_is_a_timeout() {
    let path = sock_path();
    let write_timeout = Duration::from_millis(200);
    let config = Config {
        write_timeout,
        ..cfg(T)
    };
    let l = Listener::bind(&path, config).unwrap();
    let p = path.clone();
    let host = thread::spawn(move || stalled_host(&p));
    let c = l.accept(T).unwrap();
    let _host = host.join().unwrap();
    let payload = vec![0u8; 4000];
    let mut err = None;
    // The socket buffers hold a few hundred KiB: bounded at 10 000 × 4 KB.
    let mut pending = Vec::new();
    for _ in 0..10_000 {
        match c.send_request(sys::KVMI_VM_WRITE_PHYSICAL, &payload) {
            Ok(p) => pending.push(p),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let e = err.expect("the writes never blocked");
    assert!(
        matches!(e, ProtoError::Timeout(d)
            if d >= write_timeout && d <= write_timeout + Duration::from_millis(10)),
        "{e:?}"
    );
    assert!(c.is_closed());
    assert!(matches!(
        c.send_request(sys::KVMI_VM_GET_INFO, &[]),
        Err(ProtoError::Disconnected(_))
    ));
}

/// Errors of commands answered by the host name the command.
#[test]
fn error_messages_name_commands() {
    let path = sock_path();
    let l = Listener::bind(&path, cfg(T)).unwrap();
    let p = path.clone();
    let sim = thread::spawn(move || {
        let sc = SimConfig {
            allowed_commands: Some(
                [sys::KVMI_VM_GET_INFO, sys::KVMI_VM_READ_PHYSICAL]
                    .into_iter()
                    .collect(),
            ),
            ..sim_cfg()
        };
        Simulator::connect(&p, sc).unwrap()
    });
    let c = l.accept(T).unwrap();
    let _sim = sim.join().unwrap();
    // A frame that is not guest memory: the host answers KVM_ENOENT.
    let e = c.read_physical(0x20_0000, 16).unwrap_err();
    assert_eq!(e.kvm_error(), Some(-sys::KVM_ENOENT), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("command KVMI_VM_READ_PHYSICAL (17) failed with KVM_ENOENT"),
        "{msg}"
    );
    // A command QEMU does not allow: KVM_EPERM, named as well.
    let e = c.get_registers(0, &[]).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("KVMI_VCPU_GET_REGISTERS (13)") && msg.contains("KVM_EPERM"),
        "{msg}"
    );
}

/// A blocking read or write that runs into the socket timeout converts to
/// `ProtoError::Timeout`; `WouldBlock` on a non-blocking socket stays an I/O error.
#[test]
fn socket_timeouts_convert_but_nonblocking_does_not() {
    let (a, _b) = UnixStream::pair().unwrap();
    let mut s = kvmi_proto::Stream::from(a);
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut buf = [0u8; 1];
    let e = ProtoError::from(s.read(&mut buf).unwrap_err());
    // The kernel keeps socket timeouts in clock ticks (50 ms reads back as 52 ms at
    // HZ=250).
    let t = Duration::from_millis(50);
    assert!(
        matches!(e, ProtoError::Timeout(d) if d >= t && d <= t + Duration::from_millis(10)),
        "{e:?}"
    );
    s.set_nonblocking(true).unwrap();
    let e = ProtoError::from(s.read(&mut buf).unwrap_err());
    assert!(
        matches!(&e, ProtoError::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock),
        "{e:?}"
    );
}

#[test]
fn command_and_event_name_display() {
    use kvmi_proto::{CommandName, EventName};
    assert_eq!(
        CommandName(sys::KVMI_VM_READ_PHYSICAL).to_string(),
        "KVMI_VM_READ_PHYSICAL (17)"
    );
    // v6-only ids fall back to their kvmi-v6 names.
    assert_eq!(CommandName(12).to_string(), "KVMI_CONTROL_VE (12)");
    assert_eq!(CommandName(999).to_string(), "unknown (999)");
    assert_eq!(
        EventName(sys::KVMI_EVENT_PF).to_string(),
        "KVMI_EVENT_PF (6)"
    );
    assert_eq!(EventName(200).to_string(), "unknown event (200)");
    let e = ProtoError::IdMismatch {
        expected: sys::KVMI_VM_GET_INFO,
        got: sys::KVMI_GET_VERSION,
        seq: 4,
    };
    assert_eq!(
        e.to_string(),
        "reply KVMI_GET_VERSION (2) does not match request KVMI_VM_GET_INFO (5) (seq 4)"
    );
}
