//! The QEMU ⇄ tool handshake that precedes the kernel protocol.
//!
//! QEMU sends a size-prefixed [`QemuToIntrospector`](kvmi_sys::QemuToIntrospector);
//! the tool reads exactly `struct_size` bytes (32 ≤ `struct_size` ≤ 64 KiB), keeps the
//! first 96 and answers with the 24-byte
//! [`QemuFromIntrospector`](kvmi_sys::QemuFromIntrospector) carrying SHA-1 of the shared
//! secret.

use crate::error::{ProtoError, Result};
use kvmi_sys as sys;
use std::io::Read;
use std::os::fd::AsRawFd;
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

/// Reads `SO_PEERCRED` of a connected UNIX socket.
pub fn peer_credentials(sock: &impl AsRawFd) -> Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = core::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given; the fd is owned
    // by `sock` for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
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
