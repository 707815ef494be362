//! Connecting to QMP when the path given may be another of QEMU's sockets.
//!
//! QEMU's gdbstub stops the guest as soon as it accepts a client, and does not resume
//! it when the client leaves. A gdbstub socket given as the QMP socket (the two paths
//! swapped) therefore used to leave the guest paused for good, behind an error that
//! blamed a busy monitor (a gdbstub is as silent as a QMP socket whose one client slot
//! is taken). When no greeting comes, [`connect_qmp`] asks the silent peer for its
//! stop reason (`?`): a gdbstub answers, a busy monitor does not. A gdbstub is then
//! detached (`D`, which lets the guest run: QEMU's answer to a detach is to continue),
//! and the error names the mix-up, the swap when the gdbstub path greets as QMP.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use vmi_core::{Deadline, Error, Result};

use crate::gdb::codec;
use crate::qmp::QmpClient;
use crate::session::LegacyConfig;

/// `?` (why did the target stop): the one packet every stub answers.
const STOP_REASON: &[u8] = b"?";
/// `D`: detach; QEMU lets the guest run when its last client detaches.
const DETACH: &[u8] = b"D";
/// `D;1`: detach from process 1, what a stub a multiprocess client used expects.
const DETACH_PID1: &[u8] = b"D;1";
/// How long a gdbstub may take to answer one packet (it answers from QEMU's main loop).
const STUB_REPLY: Duration = Duration::from_secs(2);
/// How many bytes of a reply are looked at; a stop reply and `OK` are far shorter.
const MAX_REPLY: usize = 4096;

/// Connects to `config.qmp_socket` and negotiates QMP; when the socket stays silent and
/// turns out to be a gdbstub, detaches from it (the guest runs again) and fails with
/// [`Error::InvalidArgument`] naming the swap.
pub(crate) fn connect_qmp(config: &LegacyConfig) -> Result<QmpClient> {
    let path = &config.qmp_socket;
    let stream = UnixStream::connect(path)
        .map_err(|e| Error::io(format!("connecting to QMP socket {}", path.display()), e))?;
    // A second handle on the same connection, to ask a silent peer what it is.
    let probe = stream
        .try_clone()
        .map_err(|e| Error::io("duplicating the QMP socket", e))?;
    match QmpClient::from_stream(stream, config.timeout) {
        Err(e @ Error::Timeout { .. }) => match release_if_gdbstub(probe, config.timeout) {
            Ok(true) => Err(swap_error(config)),
            // Not a stub (a busy monitor, most likely): the timeout says so.
            Ok(false) | Err(_) => Err(e),
        },
        other => other,
    }
}

/// Whether the peer on `stream` is a gdbstub; if so, detaches from it.
fn release_if_gdbstub(mut stream: UnixStream, timeout: Duration) -> Result<bool> {
    let limit = timeout.min(STUB_REPLY);
    stream
        .write_all(&codec::encode_packet(STOP_REASON))
        .map_err(|e| Error::io("asking the silent peer for its stop reason", e))?;
    if !is_packet_reply(&read_reply(&mut stream, limit)?) {
        return Ok(false);
    }
    // Acknowledge the stop reply, then detach.
    stream
        .write_all(b"+")
        .and_then(|()| stream.write_all(&codec::encode_packet(DETACH)))
        .map_err(|e| Error::io("detaching from the gdbstub", e))?;
    let reply = read_reply(&mut stream, limit)?;
    if packet_payload(&reply) == Some(b"E22".as_slice()) {
        // A multiprocess client was here before: detach from the one process.
        stream
            .write_all(b"+")
            .and_then(|()| stream.write_all(&codec::encode_packet(DETACH_PID1)))
            .map_err(|e| Error::io("detaching from the gdbstub", e))?;
        read_reply(&mut stream, limit)?;
    }
    Ok(true)
}

/// What the peer sends within `limit`, up to the end of its first packet (or
/// [`MAX_REPLY`] bytes); empty if it sends nothing.
fn read_reply(stream: &mut UnixStream, limit: Duration) -> Result<Vec<u8>> {
    let deadline = Deadline::after(limit);
    let mut reply = Vec::new();
    let mut chunk = [0u8; 256];
    while !matches!(codec::scan(&reply), codec::Scan::Complete { .. }) && reply.len() < MAX_REPLY {
        let left = deadline.remaining_capped(limit);
        if left.is_zero() {
            break;
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| Error::io("setting the probe's read timeout", e))?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the probe's reply", e)),
        }
    }
    Ok(reply)
}

/// Whether `reply` is what a gdbstub sends to a packet: an ack (`+`/`-`), then the
/// framed answer.
fn is_packet_reply(reply: &[u8]) -> bool {
    let acked = matches!(
        codec::first_token(reply),
        Some((0, codec::Token::Ack | codec::Token::Nak))
    );
    acked && matches!(codec::scan(reply), codec::Scan::Complete { .. })
}

/// The payload of the first complete packet in `bytes` whose checksum is right.
fn packet_payload(bytes: &[u8]) -> Option<&[u8]> {
    match codec::scan(bytes) {
        codec::Scan::Complete {
            frame: codec::Frame::Packet { body, .. },
            ..
        } => Some(body),
        _ => None,
    }
}

/// The error for a gdbstub found at the QMP path: the swap when the gdbstub path
/// greets as QMP, else the mistake at the QMP path alone.
fn swap_error(config: &LegacyConfig) -> Error {
    let qmp = config.qmp_socket.display();
    let released = "the stub stopped the guest when we connected; we detached, so it runs again";
    let swapped = config
        .gdb_socket
        .as_deref()
        .filter(|gdb| greets_as_qmp(gdb, config.timeout));
    let reason = match swapped {
        Some(gdb) => format!(
            "{qmp} is QEMU's gdbstub and {} is its QMP monitor: the QMP and gdbstub socket \
             paths are swapped ({released})",
            gdb.display()
        ),
        None => format!(
            "{qmp} is QEMU's gdbstub, not a QMP monitor (-qmp or -mon mode=control) \
             ({released})"
        ),
    };
    Error::InvalidArgument {
        what: "QMP socket",
        reason: reason.into(),
    }
}

/// Whether `path` is a UNIX socket that greets as a QMP monitor. Only asked once the
/// QMP path was found to be the gdbstub, so `path` is not the (single) gdbstub, and
/// connecting to it cannot stop the guest.
fn greets_as_qmp(path: &Path, timeout: Duration) -> bool {
    let path = path
        .to_str()
        .and_then(|p| p.strip_prefix("unix:"))
        .map_or(path, Path::new);
    QmpClient::connect_with_timeout(path, timeout).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_acknowledged_packet_counts_as_a_gdbstub() {
        assert!(is_packet_reply(b"+$T05thread:01;#07"));
        assert!(!is_packet_reply(b"+$T05thr"), "incomplete");
        assert!(!is_packet_reply(b""), "silence: a busy monitor");
        assert!(!is_packet_reply(b"{\"QMP\": {}}"));
        assert!(!is_packet_reply(b"$T05thread:01;#07"), "no ack");
        assert_eq!(packet_payload(b"+$E22#a9"), Some(b"E22".as_slice()));
        assert_eq!(packet_payload(b"+$E22#aa"), None, "bad checksum");
        assert_eq!(packet_payload(b"+$OK#9"), None);
    }
}
