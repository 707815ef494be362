//! The session's setup and its limits against the scripted host: the listener (stale
//! socket paths, many VMs, timeouts), handshake size tolerance, the cookie hash,
//! encoding limits, and how errors name their cause.

use super::{cfg, hookup_bytes, pair, sock_path, Host, T};
use crate::codec::{self, Abi};
use crate::event::{Action, EventKind, Reply};
use crate::{Listener, ProtoError};
use kvmi_sys as sys;
use proptest::prelude::*;
use std::io::{Read, Write};
use std::thread;
use std::time::Duration;
use zerocopy::IntoBytes;

#[test]
fn listener_mode_stale_path_and_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let path = sock_path();
    {
        let _l1 = std::os::unix::net::UnixListener::bind(&path).unwrap();
    }
    assert!(path.exists());
    let l = Listener::bind(&path, cfg(false)).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(matches!(
        l.accept(Duration::from_millis(30)),
        Err(ProtoError::Timeout(_))
    ));
    drop(l);
    assert!(!path.exists());
    std::fs::write(&path, b"x").unwrap();
    assert!(Listener::bind(&path, cfg(false)).is_err());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn listener_accepts_many_vms() {
    let path = sock_path();
    let l = Listener::bind(&path, cfg(false)).unwrap();
    let hosts: Vec<_> = (0..3)
        .map(|_| {
            let p = path.clone();
            thread::spawn(move || {
                let mut h = Host::connect(&p);
                h.serve_version(Abi::V7);
                h
            })
        })
        .collect();
    let conns: Vec<_> = (0..3).map(|_| l.accept(T).unwrap()).collect();
    assert!(conns.iter().all(|c| c.abi() == Abi::V7));
    for h in hosts {
        h.join().unwrap();
    }
}

#[test]
fn handshake_size_tolerance() {
    use crate::handshake::{parse_hookup, read_hookup};
    // kvmi-v12: 104 bytes; exactly struct_size bytes are consumed.
    let mut bytes = hookup_bytes(104, "v12");
    bytes.extend_from_slice(b"NEXT");
    let mut cur = std::io::Cursor::new(&bytes);
    let info = read_hookup(&mut cur).unwrap();
    assert_eq!(info.name, "v12");
    let mut rest = Vec::new();
    cur.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"NEXT");
    // Short (v6-like) struct: 32 bytes, no name.
    let short = hookup_bytes(96, "x")[..32].to_vec();
    let mut s = short.clone();
    s[..4].copy_from_slice(&32u32.to_ne_bytes());
    let (info, n) = parse_hookup(&s).unwrap().unwrap();
    assert_eq!((n, info.name.as_str(), info.struct_size), (32, "", 32));
    for bad in [16u32, 31, 64 * 1024 + 1, u32::MAX] {
        let b = bad.to_ne_bytes();
        assert!(matches!(parse_hookup(&b), Err(ProtoError::Handshake(_))));
        assert!(read_hookup(&mut &b[..]).is_err());
    }
    assert!(parse_hookup(&hookup_bytes(96, "a")[..50])
        .unwrap()
        .is_none());
    assert!(matches!(
        read_hookup(&mut &hookup_bytes(96, "a")[..50]),
        Err(ProtoError::Handshake(_))
    ));
}

#[test]
fn cookie_hash_is_sha1() {
    assert_eq!(
        crate::handshake::cookie_hash(b"abc"),
        [
            0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
            0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
        ]
    );
    assert_eq!(crate::handshake::reply_bytes(None)[4..], [0u8; 20]);
}

#[test]
fn encode_limits() {
    assert!(codec::encode(2, 1, &vec![0; codec::MAX_TX_PAYLOAD]).is_ok());
    assert!(matches!(
        codec::encode(2, 1, &vec![0; codec::MAX_TX_PAYLOAD + 1]),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    assert!(codec::encode_reply(2, 1, 0, &vec![0; 8192]).is_ok());
    assert!(codec::encode_reply(2, 1, 0, &vec![0; 8193]).is_err());
    assert!(matches!(
        codec::parse_reply(&[0; 7]),
        Err(ProtoError::Truncated { .. })
    ));
    assert_eq!(
        codec::parse_reply(&(-22i64).to_ne_bytes()).unwrap(),
        Err(-22)
    );
    assert_eq!(crate::error::kvm_error_name(-1000), "KVM_ENOSYS");
    assert_eq!(crate::error::kvm_error_name(i32::MIN), "unknown error");
}

proptest! {
    #[test]
    fn prop_encode_decode_round_trip(id: u16, seq: u32, payload in proptest::collection::vec(any::<u8>(), 0..=codec::MAX_TX_PAYLOAD), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut m = codec::encode(id, seq, &payload).unwrap();
        let len = m.len();
        m.extend_from_slice(&tail);
        let (f, used) = codec::decode(&m).unwrap().unwrap();
        prop_assert_eq!(used, len);
        prop_assert_eq!((f.hdr.id, f.hdr.seq, usize::from(f.hdr.size)), (id, seq, payload.len()));
        prop_assert_eq!(f.payload, &payload[..]);
        // Any strict prefix is incomplete, never an error.
        prop_assert!(codec::decode(&m[..len - 1]).unwrap().is_none());
    }

    #[test]
    fn prop_reply_round_trip(id: u16, seq: u32, err in -2000i32..2000, data in proptest::collection::vec(any::<u8>(), 0..=8192)) {
        let m = codec::encode_reply(id, seq, err, &data).unwrap();
        let (f, _) = codec::decode(&m).unwrap().unwrap();
        match codec::parse_reply(f.payload).unwrap() {
            Ok(d) => { prop_assert_eq!(err, 0); prop_assert_eq!(d, &data[..]); }
            Err(e) => prop_assert_eq!(e, err),
        }
    }

    #[test]
    fn prop_event_reply_round_trip(seq: u32, vcpu: u16, event in 0u8..14, new_val: u64) {
        let ev = crate::EventInfo {
            seq, abi: Abi::V7,
            common: sys::Event { vcpu, event, size: 544, ..Default::default() },
            kind: EventKind::Unknown(event),
        };
        let mut out = Vec::new();
        ev.encode_reply(&Reply::with_new_value(Action::Retry, new_val), &mut out).unwrap();
        let (f, _) = codec::decode(&out).unwrap().unwrap();
        prop_assert_eq!((f.hdr.id, f.hdr.seq, f.hdr.size), (sys::KVMI_EVENT_REPLY, seq, 24));
        prop_assert_eq!(u16::from_ne_bytes([f.payload[0], f.payload[1]]), vcpu);
        prop_assert_eq!(f.payload[8], sys::KVMI_EVENT_ACTION_RETRY);
        prop_assert_eq!(u64::from_ne_bytes(f.payload[16..24].try_into().unwrap()), new_val);
    }

    #[test]
    fn prop_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200), seq: u32) {
        let _ = codec::decode(&bytes);
        let _ = codec::parse_reply(&bytes);
        let _ = crate::event::parse_event(seq, &bytes, Abi::V7);
        let _ = crate::event::parse_event(seq, &bytes, Abi::V6);
        let _ = crate::handshake::parse_hookup(&bytes);
        let _ = crate::handshake::read_hookup(&mut &bytes[..]);
    }

    #[test]
    fn prop_events_parse_for_every_id(id in 0u8..=255, vcpu: u16, extra in proptest::collection::vec(any::<u8>(), 0..40)) {
        let common = sys::Event { size: 544, vcpu, event: id, ..Default::default() };
        let payload = [common.as_bytes(), &extra[..]].concat();
        for abi in [Abi::V6, Abi::V7] {
            match crate::event::parse_event(1, &payload, abi) {
                Ok(ev) => prop_assert_eq!(ev.vcpu(), vcpu),
                Err(e) => prop_assert!(matches!(e, ProtoError::Truncated { .. }), "{e}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random bytes from the host after the handshake: the reader never panics or hangs;
    /// the tool sees whole events and then a typed disconnect.
    #[test]
    fn prop_garbage_stream_yields_typed_errors(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let (c, mut h) = pair(Abi::V7);
        h.s.write_all(&bytes).unwrap();
        drop(h);
        loop {
            match c.next_event(T) {
                Ok(_) => continue,
                Err(ProtoError::Disconnected(_)) => break,
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        prop_assert!(matches!(c.get_max_gfn(), Err(ProtoError::Disconnected(_))));
    }
}

#[test]
fn vsock_error_names_the_cause() {
    let e = ProtoError::Vsock {
        op: "bind",
        port: 9,
        source: std::io::Error::from_raw_os_error(libc::ENODEV),
    };
    assert!(e.is_vsock_unavailable());
    let s = e.to_string();
    assert!(s.starts_with("vsock bind on port 9 failed: "), "{s}");
    assert!(s.contains("no vsock transport"), "{s}");
    let e = ProtoError::Vsock {
        op: "bind",
        port: 9,
        source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
    };
    assert!(!e.is_vsock_unavailable());
    assert!(!e.to_string().contains("no vsock transport"));
    assert!(!ProtoError::Timeout(T).is_vsock_unavailable());
}

#[test]
fn batch_failure_display() {
    let e = ProtoError::BatchFailed(vec![
        crate::BatchFailure {
            index: Some(2),
            seq: 7,
            id: sys::KVMI_VCPU_SET_REGISTERS,
            err: -sys::KVM_EINVAL,
        },
        crate::BatchFailure {
            index: None,
            seq: 5,
            id: sys::KVMI_VM_CONTROL_CMD_RESPONSE,
            err: -sys::KVM_EPERM,
        },
    ]);
    assert_eq!(
        e.to_string(),
        format!(
            "2 batched command(s) failed: command KVMI_VCPU_SET_REGISTERS ({}, seq 7, batch \
             index 2) failed with KVM_EINVAL (-22); command KVMI_VM_CONTROL_CMD_RESPONSE (27, \
             seq 5) failed with KVM_EPERM (-1)",
            sys::KVMI_VCPU_SET_REGISTERS
        )
    );
}
