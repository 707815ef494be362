//! The client against a scripted stub on a socket pair: handshake, detach forms, waits.

use super::codec::{encode_packet, StopReason};
use super::GdbClient;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;
use vmi_core::Error;

/// A scripted gdbstub on the other end of a socket pair: acks every packet and
/// answers the handshake; `c` is acknowledged and followed, 150 ms later, by a stop.
fn stub() -> (UnixStream, thread::JoinHandle<()>) {
    stub_with(|_| None)
}

/// [`stub`], with `custom` answering first (`Some(reply)`), e.g. as QEMU after gdb
/// negotiated multiprocess mode.
fn stub_with(
    custom: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static,
) -> (UnixStream, thread::JoinHandle<()>) {
    let (a, mut b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut pending = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // One packet: `$payload#xx`.
            let packet = loop {
                if let Some(start) = pending.iter().position(|&c| c == b'$') {
                    if let Some(end) = pending[start..].iter().position(|&c| c == b'#') {
                        if pending.len() >= start + end + 3 {
                            let p = pending[start + 1..start + end].to_vec();
                            pending.drain(..start + end + 3);
                            break p;
                        }
                    }
                }
                match b.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&chunk[..n]),
                }
            };
            let reply: Option<Vec<u8>> = if let Some(r) = custom(&packet) {
                Some(r)
            } else if packet.starts_with(b"qSupported") {
                Some(b"PacketSize=1000;qXfer:features:read+".to_vec())
            } else if packet == b"?" {
                Some(b"S05".to_vec())
            } else if packet.starts_with(b"qXfer:features:read:target.xml:") {
                Some(br#"l<target><reg name="rax" bitsize="64"/></target>"#.to_vec())
            } else if packet == b"c" {
                None
            } else {
                Some(Vec::new())
            };
            if b.write_all(b"+").is_err() {
                return;
            }
            let reply = reply.unwrap_or_else(|| {
                thread::sleep(Duration::from_millis(150));
                b"T05thread:01;".to_vec()
            });
            if b.write_all(&encode_packet(&reply)).is_err() {
                return;
            }
        }
    });
    (a, h)
}

#[test]
fn detach_uses_the_form_of_a_stub_in_multiprocess_mode() {
    // QEMU after a real gdb negotiated multiprocess+: `p01.01` ids, plain D refused.
    let qemu = |p: &[u8]| match p {
        b"qfThreadInfo" => Some(b"mp01.01,p01.02".to_vec()),
        b"qsThreadInfo" => Some(b"l".to_vec()),
        b"D" => Some(b"E22".to_vec()),
        b"D;1" => Some(b"OK".to_vec()),
        _ => None,
    };
    let (s, h) = stub_with(qemu);
    let mut c = GdbClient::new(Box::new(s), Duration::from_secs(5)).unwrap();
    assert_eq!(c.threads().unwrap(), vec![1, 2]);
    assert_eq!(c.multiprocess_id(), Some(1));
    c.detach().unwrap();
    drop(c);
    h.join().unwrap();

    // A stub whose ids do not show the mode still gets the other form after E22.
    let quiet = |p: &[u8]| match p {
        b"D" => Some(b"E22".to_vec()),
        b"D;1" => Some(b"OK".to_vec()),
        _ => None,
    };
    let (s, h) = stub_with(quiet);
    let mut c = GdbClient::new(Box::new(s), Duration::from_secs(5)).unwrap();
    c.detach().unwrap();
    drop(c);
    h.join().unwrap();

    // Refused in both forms: the error is reported.
    let (s, h) = stub_with(|p| p.starts_with(b"D").then(|| b"E01".to_vec()));
    let mut c = GdbClient::new(Box::new(s), Duration::from_secs(5)).unwrap();
    assert!(matches!(c.detach(), Err(Error::Backend { .. })));
    drop(c);
    h.join().unwrap();
}

#[test]
fn duration_max_waits_without_a_deadline_instead_of_panicking() {
    // `Instant::now() + Duration::MAX` used to panic in every wait of the client.
    let (s, h) = stub();
    let mut c = GdbClient::new(Box::new(s), Duration::MAX).unwrap();
    assert_eq!(c.registers().len(), 1);
    c.resume().unwrap();
    assert!(matches!(
        c.wait_stop(Duration::MAX).unwrap(),
        Some(StopReason::Signal { signal: 5, .. })
    ));
    drop(c);
    h.join().unwrap();
}
