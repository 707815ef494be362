//! The client's request economy against a scripted stub that records what it receives:
//! `Hg` only when the thread changes (a stop reply selects the stopped thread), one `g`
//! per stop, and what invalidates it. Counted with [`GdbClient::counters`].

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::codec::encode_packet;
use super::GdbClient;

type Log = Arc<Mutex<Vec<String>>>;

/// Acks every packet, answers the handshake, `H…`/`P…` with `OK`, `g` with RIP, and `c`
/// with a stop of thread 2.
fn recording_stub() -> (UnixStream, Log, thread::JoinHandle<()>) {
    let (a, mut b) = UnixStream::pair().unwrap();
    let log: Log = Arc::default();
    let seen = log.clone();
    let h = thread::spawn(move || {
        let mut pending = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
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
            seen.lock()
                .unwrap()
                .push(String::from_utf8_lossy(&packet).into_owned());
            let reply: &[u8] = if packet.starts_with(b"qSupported") {
                b"PacketSize=1000;qXfer:features:read+"
            } else if packet == b"?" {
                b"S05"
            } else if packet.starts_with(b"qXfer:features:read:target.xml:") {
                br#"l<target><reg name="rip" bitsize="64"/></target>"#
            } else if packet.starts_with(b"H") || packet.starts_with(b"P") {
                b"OK"
            } else if packet == b"g" {
                b"efbeadde00000000"
            } else if packet == b"c" {
                b"T05thread:02;"
            } else {
                b""
            };
            if b.write_all(b"+").is_err() || b.write_all(&encode_packet(reply)).is_err() {
                return;
            }
        }
    });
    (a, log, h)
}

#[test]
fn one_g_per_stop_and_hg_only_when_the_thread_changes() {
    let (s, log, h) = recording_stub();
    let mut c = GdbClient::new(Box::new(s), Duration::from_secs(5)).unwrap();
    let handshake = log.lock().unwrap().len() as u64;
    assert_eq!(c.counters().requests, handshake);
    let mark = || log.lock().unwrap().len();
    let since = |from: usize| log.lock().unwrap()[from..].to_vec();

    // Unknown thread: select, read; again: nothing sent.
    let m = mark();
    assert_eq!(
        c.thread_registers(1).unwrap(),
        0xdead_beef_u64.to_le_bytes()
    );
    c.thread_registers(1).unwrap();
    c.select_register_thread(1).unwrap();
    assert_eq!(since(m), ["Hg1", "g"]);

    // The target runs and stops in thread 2: the stop selected it, the old `g` is gone.
    let m = mark();
    c.resume().unwrap();
    c.wait_stop(Duration::from_secs(5)).unwrap().expect("stop");
    c.thread_registers(2).unwrap();
    c.thread_registers(2).unwrap();
    assert_eq!(since(m), ["c", "g"]);

    // Another thread needs its own selection and read; a register write forgets the read.
    let m = mark();
    c.thread_registers(1).unwrap();
    c.write_register(0, &[0; 8]).unwrap();
    c.thread_registers(1).unwrap();
    c.select_thread(1).unwrap();
    assert_eq!(since(m), ["Hg1", "g", "P0=0000000000000000", "g", "Hc1"]);

    let n = c.counters();
    assert_eq!(n.requests, mark() as u64, "every packet counted once");
    assert_eq!((n.stops, n.interrupts), (1, 0));
    drop(c);
    h.join().unwrap();
}
