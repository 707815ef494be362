//! The QEMU ⇄ tool handshake that precedes the kernel protocol.
//!
//! QEMU sends a size-prefixed [`QemuToIntrospector`](kvmi_sys::QemuToIntrospector);
//! the tool reads exactly `struct_size` bytes (32 ≤ `struct_size` ≤ 64 KiB), keeps the
//! first 96 and answers with the 24-byte
//! [`QemuFromIntrospector`](kvmi_sys::QemuFromIntrospector) carrying SHA-1 of the shared
//! secret.
//!
//! [`exchange`] runs the whole handshake on an accepted socket under **one deadline**
//! ([`Config::handshake_timeout`]), after checking the peer's uid
//! ([`Config::allowed_peer_uids`]): a peer that trickles its hookup struct byte by
//! byte cannot stretch it.

use crate::connection::Config;
use crate::error::{ProtoError, Result};
use crate::stream::{SocketTimeout, Stream};
use kvmi_sys as sys;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// What QEMU told about the VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookupInfo {
    /// `struct_size` as sent (96 for kvmi-v7 QEMU, 104 for kvmi-v12).
    pub struct_size: u32,
    /// VM UUID (raw bytes).
    pub uuid: [u8; 16],
    /// VM start time in seconds (0 from kvmi-v6 QEMU).
    pub start_time: i64,
    /// VM name (up to the first NUL, lossily decoded; empty from kvmi-v6 QEMU).
    pub name: String,
    /// The struct as received (zero-extended if shorter than 96 bytes).
    pub raw: sys::QemuToIntrospector,
}

impl HookupInfo {
    /// The UUID in canonical `8-4-4-4-12` hex form.
    pub fn uuid_string(&self) -> String {
        let u = &self.uuid;
        let hex = |r: core::ops::Range<usize>| -> String {
            u[r].iter().map(|b| format!("{b:02x}")).collect()
        };
        format!(
            "{}-{}-{}-{}-{}",
            hex(0..4),
            hex(4..6),
            hex(6..8),
            hex(8..10),
            hex(10..16)
        )
    }
}

/// Validates a `struct_size` value.
pub fn check_struct_size(struct_size: u32) -> Result<usize> {
    let n = struct_size as usize;
    if !(sys::QEMU_TO_INTROSPECTOR_MIN_SIZE..=sys::QEMU_TO_INTROSPECTOR_MAX_SIZE).contains(&n) {
        return Err(ProtoError::Handshake(format!(
            "struct_size {n} outside {}..={}",
            sys::QEMU_TO_INTROSPECTOR_MIN_SIZE,
            sys::QEMU_TO_INTROSPECTOR_MAX_SIZE
        )));
    }
    Ok(n)
}

fn info_from(struct_size: u32, bytes: &[u8]) -> HookupInfo {
    let mut raw = sys::QemuToIntrospector::new_zeroed();
    let n = bytes.len().min(sys::QEMU_TO_INTROSPECTOR_SIZE);
    raw.as_mut_bytes()[..n].copy_from_slice(&bytes[..n]);
    let name_len = raw
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.name.len());
    HookupInfo {
        struct_size,
        uuid: raw.uuid,
        start_time: raw.start_time,
        name: String::from_utf8_lossy(&raw.name[..name_len]).into_owned(),
        raw,
    }
}

/// Parses a hookup struct from a buffer: `Ok(Some((info, consumed)))` once
/// `struct_size` bytes are available, `Ok(None)` if more bytes are needed.
pub fn parse_hookup(buf: &[u8]) -> Result<Option<(HookupInfo, usize)>> {
    let Ok((struct_size, _)) = u32::read_from_prefix(buf) else {
        return Ok(None);
    };
    let n = check_struct_size(struct_size)?;
    match buf.get(..n) {
        Some(b) => Ok(Some((info_from(struct_size, b), n))),
        None => Ok(None),
    }
}

/// Reads a hookup struct from a stream: the 4-byte size, then exactly `struct_size`
/// bytes in total; bytes past the 96 known ones are read and discarded (at most 64 KiB).
pub fn read_hookup<R: Read>(r: &mut R) -> Result<HookupInfo> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head).map_err(map_eof)?;
    let struct_size = u32::from_ne_bytes(head);
    let n = check_struct_size(struct_size)?;
    let mut known = [0u8; sys::QEMU_TO_INTROSPECTOR_SIZE];
    known[..4].copy_from_slice(&head);
    let keep = n.min(known.len());
    r.read_exact(&mut known[4..keep]).map_err(map_eof)?;
    let mut rest = (n - keep) as u64;
    let mut sink = [0u8; 512];
    while rest > 0 {
        let chunk = rest.min(sink.len() as u64) as usize;
        r.read_exact(&mut sink[..chunk]).map_err(map_eof)?;
        rest -= chunk as u64;
    }
    Ok(info_from(struct_size, &known[..keep]))
}

fn map_eof(e: std::io::Error) -> ProtoError {
    if let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<SocketTimeout>()) {
        return ProtoError::Timeout(t.0);
    }
    match e.kind() {
        std::io::ErrorKind::UnexpectedEof => {
            ProtoError::Handshake("peer closed during the handshake".into())
        }
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ProtoError::Handshake("handshake timed out".into())
        }
        _ => ProtoError::Io(e),
    }
}

/// SHA-1 of the secret's bytes: the cookie QEMU checks when started with `key=`.
pub fn cookie_hash(secret: &[u8]) -> [u8; 20] {
    sha1_smol::Sha1::from(secret).digest().bytes()
}

/// The 24-byte reply: `struct_size = 24` and the cookie hash (zero without a secret).
pub fn reply_bytes(secret: Option<&[u8]>) -> [u8; 24] {
    let r = sys::QemuFromIntrospector {
        struct_size: 24,
        cookie_hash: secret.map(cookie_hash).unwrap_or_default(),
    };
    let mut out = [0u8; 24];
    out.copy_from_slice(r.as_bytes());
    out
}

/// Credentials of the process on the other end of a UNIX socket (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerCredentials {
    /// Process id.
    pub pid: i32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Reads `SO_PEERCRED` of a connected UNIX socket: the process that called `connect`
/// (its credentials at that time). `pid` is 0 when the peer is in a pid namespace this
/// process cannot see (QEMU on the host, the tool in a container).
pub fn peer_credentials(sock: &impl AsFd) -> Result<PeerCredentials> {
    // Not rustix's `socket_peercred`: its `UCred` holds the pid as a non-zero type,
    // and the kernel reports pid 0 across pid namespaces.
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; every bit
    // pattern is a valid `ucred`; the fd is borrowed from `sock` for the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(ProtoError::Io(std::io::Error::last_os_error()));
    }
    Ok(PeerCredentials {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Which peers may connect to a UNIX socket, by the uid `SO_PEERCRED` reports. Checked
/// before a single handshake byte is read; a refused peer is disconnected with
/// [`ProtoError::PeerRefused`]. Not applicable to vsock (no peer uid there).
///
/// The default, [`PeerUids::SameUserOrRoot`], admits exactly who the default socket mode
/// (0600, owner = us) lets connect anyway, so a socket mode widened by mistake (or a
/// socket passed to another process) does not let another user pose as QEMU. With
/// libvirt, whose QEMU runs as its own user, list that uid with [`PeerUids::Only`] (and
/// widen [`Config::socket_mode`] or the directory so it can reach the socket).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PeerUids {
    /// This process's effective uid and root (uid 0).
    #[default]
    SameUserOrRoot,
    /// Exactly these uids (root only if listed).
    Only(Vec<u32>),
    /// Anyone who can reach the socket (file mode and directories are the only barrier).
    Any,
}

impl PeerUids {
    /// Whether a peer with `uid` may connect.
    pub fn allows(&self, uid: u32) -> bool {
        match self {
            PeerUids::SameUserOrRoot => uid == 0 || uid == rustix::process::geteuid().as_raw(),
            PeerUids::Only(uids) => uids.contains(&uid),
            PeerUids::Any => true,
        }
    }
}

/// Refuses a UNIX-socket peer that `policy` does not allow (vsock peers pass: they
/// have no uid). Returns the peer's credentials when known.
pub fn check_peer(stream: &Stream, policy: &PeerUids) -> Result<Option<PeerCredentials>> {
    let Stream::Unix(s) = stream else {
        return Ok(None);
    };
    let cred = peer_credentials(s)?;
    if !policy.allows(cred.uid) {
        return Err(ProtoError::PeerRefused {
            uid: cred.uid,
            pid: cred.pid,
        });
    }
    Ok(Some(cred))
}

/// The instant `timeout` from now, or `None` ("never") if that is not representable
/// (e.g. `Duration::MAX`): deadline arithmetic must not panic.
pub(crate) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Reads from the stream with every read's socket timeout set to the time left until
/// one deadline, so the deadline holds for a whole sequence of reads (and writes).
struct DeadlineIo<'a> {
    stream: &'a mut Stream,
    deadline: Option<Instant>,
    /// The whole budget, reported in the error.
    budget: Duration,
}

impl DeadlineIo<'_> {
    /// Sets the socket timeout for the next call to the time left, or fails once the
    /// deadline has passed.
    fn arm(&mut self, write: bool) -> std::io::Result<()> {
        let left = match self.deadline {
            None => None,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        SocketTimeout(self.budget),
                    ));
                }
                Some(left)
            }
        };
        if write {
            self.stream.set_write_timeout(left)
        } else {
            self.stream.set_read_timeout(left)
        }
    }

    /// Maps a socket timeout of one call to the budget of the whole exchange.
    fn budget_error(&self, e: std::io::Error) -> std::io::Error {
        if e.get_ref().is_some_and(|i| i.is::<SocketTimeout>()) {
            std::io::Error::new(std::io::ErrorKind::TimedOut, SocketTimeout(self.budget))
        } else {
            e
        }
    }
}

impl Read for DeadlineIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm(false)?;
        self.stream.read(buf).map_err(|e| self.budget_error(e))
    }
}

impl Write for DeadlineIo<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm(true)?;
        self.stream.write(buf).map_err(|e| self.budget_error(e))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The QEMU handshake on a freshly accepted stream: checks the peer's uid
/// ([`Config::allowed_peer_uids`], UNIX sockets only), reads the hookup struct and
/// writes the cookie reply, all within one deadline of [`Config::handshake_timeout`]
/// from now (a `Duration` too large for an `Instant`, such as `Duration::MAX`, means no
/// deadline). Leaves the stream blocking, without read timeout and with
/// [`Config::write_timeout`] as write timeout.
///
/// Fails with [`ProtoError::PeerRefused`], [`ProtoError::Timeout`] (the budget
/// exceeded), [`ProtoError::Handshake`] (malformed struct, peer closed) or
/// [`ProtoError::Io`].
pub fn exchange(
    stream: &mut Stream,
    config: &Config,
) -> Result<(HookupInfo, Option<PeerCredentials>)> {
    let deadline = deadline_after(config.handshake_timeout);
    let peer = check_peer(stream, &config.allowed_peer_uids)?;
    stream.set_nonblocking(false)?;
    let mut io = DeadlineIo {
        stream,
        deadline,
        budget: config.handshake_timeout,
    };
    let hookup = read_hookup(&mut io)?;
    io.write_all(&reply_bytes(config.secret.as_deref()))
        .map_err(map_eof)?;
    stream.set_read_timeout(None)?;
    stream.set_write_timeout(Some(config.write_timeout.max(Duration::from_micros(1))))?;
    Ok((hookup, peer))
}
