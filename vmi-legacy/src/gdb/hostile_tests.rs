//! The client against hostile stubs (issue 17, "Hostile peers"): a fake stub on a UNIX
//! socket that answers the handshake like QEMU, then misbehaves on the packets under
//! test. Every call must return by its deadline, the receive buffer must stay bounded,
//! and a garbled reply must not poison the calls after it.
//!
//! Each hostile stub misbehaves for a bounded time only ([`HOSTILE_FOR`], several times
//! the client's timeout), so a client that ignores its deadline makes the test fail on
//! the elapsed time instead of hanging it.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::{Duration, Instant};

use super::codec::encode_packet;
use super::{GdbClient, MAX_BUFFERED};
use vmi_core::Error;

/// The client's timeout in these tests.
const TIMEOUT: Duration = Duration::from_secs(1);

/// How long past its timeout a call may return on a busy machine.
const SLACK: Duration = Duration::from_millis(700);

/// How long a hostile stub keeps misbehaving before it goes quiet.
const HOSTILE_FOR: Duration = Duration::from_secs(4);

/// What the fake stub received.
enum Received {
    /// A packet's payload (checksum not verified: the client's are right).
    Packet(Vec<u8>),
    /// A NAK (`-`): the client asks for a retransmission.
    Nak,
}

/// A fake gdbstub: answers `qSupported`, `?` and the target description (acking each),
/// and hands everything else to `hostile`, which writes what it likes to the socket.
/// The stub ends when the client closes the connection or `hostile` fails (a write to
/// a closed connection).
fn fake_stub(
    mut hostile: impl FnMut(Received, &mut UnixStream) -> io::Result<()> + Send + 'static,
) -> (UnixStream, thread::JoinHandle<()>) {
    let (client_end, mut s) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut pending = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let got = loop {
                // Acks from the client are noise here; a NAK or a packet is an event.
                let first = pending.iter().position(|&c| c == b'-' || c == b'$');
                match first.map(|i| (i, pending[i])) {
                    Some((i, b'-')) => {
                        pending.drain(..=i);
                        break Received::Nak;
                    }
                    Some((i, _)) => {
                        if let Some(end) = pending[i..].iter().position(|&c| c == b'#') {
                            if pending.len() >= i + end + 3 {
                                let p = pending[i + 1..i + end].to_vec();
                                pending.drain(..i + end + 3);
                                break Received::Packet(p);
                            }
                        }
                    }
                    None => pending.clear(),
                }
                match s.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&chunk[..n]),
                }
            };
            let handshake: Option<&[u8]> = match &got {
                Received::Packet(p) if p.starts_with(b"qSupported") => {
                    Some(b"PacketSize=1000;qXfer:features:read+")
                }
                Received::Packet(p) if p == b"?" => Some(b"S05"),
                Received::Packet(p) if p.starts_with(b"qXfer:features:read:target.xml:") => {
                    Some(br#"l<target><reg name="rax" bitsize="64"/></target>"#)
                }
                _ => None,
            };
            let r = match handshake {
                Some(reply) => s
                    .write_all(b"+")
                    .and_then(|()| s.write_all(&encode_packet(reply))),
                None => hostile(got, &mut s),
            };
            if r.is_err() {
                return;
            }
        }
    });
    (client_end, h)
}

/// Runs `call` on `c` and returns its result and how long it took.
fn timed<T>(c: &mut GdbClient, call: impl FnOnce(&mut GdbClient) -> T) -> (T, Duration) {
    let start = Instant::now();
    let r = call(c);
    (r, start.elapsed())
}

#[test]
fn a_stub_sending_only_noise_times_out_at_the_deadline_with_a_bounded_buffer() {
    // Instead of acking, the stub streams bytes that are neither acks nor packets,
    // 16 KiB a millisecond (the old client kept reading them into its buffer for as
    // long as they came: +16 MiB a second, never checking its deadline).
    let (s, h) = fake_stub(|_, s| {
        let noise = [b'x'; 16 * 1024];
        let start = Instant::now();
        while start.elapsed() < HOSTILE_FOR {
            s.write_all(&noise)?;
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    });
    let mut c = GdbClient::new(Box::new(s), TIMEOUT).unwrap();
    let (r, took) = timed(&mut c, |c| c.command(b"qqemu.sstep"));
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        took < TIMEOUT + SLACK,
        "returned {took:?} after the call, its timeout is {TIMEOUT:?}"
    );
    assert!(
        c.buf.capacity() <= MAX_BUFFERED,
        "receive buffer grew to {} bytes",
        c.buf.capacity()
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn a_stub_resending_a_bad_checksum_on_every_nak_times_out_at_the_deadline() {
    // Acks the command, then answers with a packet whose checksum is wrong, again on
    // every NAK: the old client NAKed and waited again, forever, as bytes kept coming.
    let mut first_nak = None;
    let (s, h) = fake_stub(move |got, s| {
        let bad = b"$OK#00";
        match got {
            Received::Packet(_) => {
                s.write_all(b"+")?;
                s.write_all(bad)
            }
            Received::Nak => {
                let since = *first_nak.get_or_insert_with(Instant::now);
                if since.elapsed() < HOSTILE_FOR {
                    s.write_all(bad)
                } else {
                    Ok(())
                }
            }
        }
    });
    let mut c = GdbClient::new(Box::new(s), TIMEOUT).unwrap();
    let (r, took) = timed(&mut c, |c| c.command(b"qqemu.sstep"));
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        took < TIMEOUT + SLACK,
        "returned {took:?} after the call, its timeout is {TIMEOUT:?}"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn the_ack_and_the_reply_share_one_deadline() {
    // Each half comes within the timeout, both together do not: the old client gave
    // the ack and the reply a deadline each and returned after 1.6 s.
    let (s, h) = fake_stub(|got, s| {
        if let Received::Packet(_) = got {
            thread::sleep(TIMEOUT * 8 / 10);
            s.write_all(b"+")?;
            thread::sleep(TIMEOUT * 8 / 10);
            s.write_all(&encode_packet(b"OK"))?;
        }
        Ok(())
    });
    let mut c = GdbClient::new(Box::new(s), TIMEOUT).unwrap();
    let (r, took) = timed(&mut c, |c| c.command(b"qqemu.sstep"));
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        took < TIMEOUT + SLACK,
        "returned {took:?} after the call, its timeout is {TIMEOUT:?}"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn an_unterminated_flood_abandons_the_connection() {
    // A packet start followed by endless bytes without `#`: the call fails once the
    // unterminated packet exceeds what any stub sends, the buffer is released, and the
    // connection is treated as broken (the old client kept the bytes and failed every
    // later call with the same "unterminated packet" error, forever).
    let (s, h) = fake_stub(|_, s| {
        s.write_all(b"+$")?;
        let noise = [b'x'; 16 * 1024];
        let start = Instant::now();
        while start.elapsed() < HOSTILE_FOR {
            s.write_all(&noise)?;
            thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    });
    let mut c = GdbClient::new(Box::new(s), TIMEOUT).unwrap();
    let (r, took) = timed(&mut c, |c| c.command(b"qqemu.sstep"));
    assert!(matches!(r, Err(Error::Malformed { .. })), "{r:?}");
    assert!(took < TIMEOUT + SLACK, "took {took:?}");
    assert_eq!(c.buf.capacity(), 0, "the flood is still buffered");
    let later = c.command(b"qqemu.sstep");
    assert!(
        matches!(later, Err(Error::Disconnected { .. })),
        "{later:?}"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn a_reply_with_a_non_hex_checksum_is_consumed_once() {
    // The first reply's checksum is not hex: a corrupted packet, NAKed like a wrong
    // checksum, and the stub's retransmission answers. The old client left the garbled
    // frame in its buffer and failed this call and every later one with "not a hex
    // digit".
    let (s, h) = fake_stub({
        let mut garbled_once = false;
        let mut last = Vec::new();
        move |got, s| match got {
            Received::Packet(p) => {
                s.write_all(b"+")?;
                last = if p == b"qqemu.sstep" {
                    b"0x7".to_vec()
                } else {
                    b"OK".to_vec()
                };
                if !garbled_once {
                    garbled_once = true;
                    let mut frame = encode_packet(&last);
                    let n = frame.len();
                    frame[n - 2..].copy_from_slice(b"zz");
                    return s.write_all(&frame);
                }
                s.write_all(&encode_packet(&last))
            }
            Received::Nak => s.write_all(&encode_packet(&last)),
        }
    });
    let mut c = GdbClient::new(Box::new(s), TIMEOUT).unwrap();
    assert_eq!(c.sstep_flags().unwrap(), 7);
    c.set_sstep_flags(7).unwrap();
    assert_eq!(c.sstep_flags().unwrap(), 7);
    assert!(c.buf.is_empty());
    drop(c);
    h.join().unwrap();
}
