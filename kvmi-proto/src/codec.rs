//! Pure framing: message encoding, frame decoding, reply parsing.
//!
//! Nothing here does I/O, panics or allocates more than the protocol limits on any
//! input. A frame is a [`MsgHdr`] followed by `hdr.size` payload bytes. Towards the
//! kernel the payload is at most [`MAX_TX_PAYLOAD`] (8184); replies from the kernel may
//! carry up to [`MAX_RX_PAYLOAD`] (8200: the 8-byte error code plus 8192 bytes of data).
//! Event parsing lives in [`crate::event`] and is re-exported here as [`parse_event`].

use crate::error::{ProtoError, Result};
use kvmi_sys::{ErrorCode, MsgHdr, ERROR_CODE_SIZE, MSG_HDR_SIZE};
use zerocopy::{FromBytes, IntoBytes};

pub use crate::event::parse_event;

/// Largest payload the tool may send (`KVMI_MSG_SIZE`, 8184).
pub const MAX_TX_PAYLOAD: usize = kvmi_sys::KVMI_MSG_SIZE;
/// Largest payload accepted from the host (`KVMI_MAX_REPLY_PAYLOAD`, 8200).
pub const MAX_RX_PAYLOAD: usize = kvmi_sys::KVMI_MAX_REPLY_PAYLOAD;

/// Which ABI the host speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Abi {
    /// KVM-VMI `kvmi-v6` (LKML RFC v6).
    V6,
    /// KVM-VMI `kvmi-v7` (libkvmi master).
    V7,
}

/// One decoded frame borrowing its payload from the input buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The message header.
    pub hdr: MsgHdr,
    /// Exactly `hdr.size` payload bytes.
    pub payload: &'a [u8],
}

/// Appends one message (header + the concatenation of `parts`) to `out`.
///
/// Fails with [`ProtoError::FrameTooLarge`] if the payload exceeds [`MAX_TX_PAYLOAD`];
/// `out` is left unchanged then.
pub fn encode_into(out: &mut Vec<u8>, id: u16, seq: u32, parts: &[&[u8]]) -> Result<()> {
    let size: usize = parts.iter().map(|p| p.len()).fold(0, usize::saturating_add);
    if size > MAX_TX_PAYLOAD {
        return Err(ProtoError::FrameTooLarge {
            size,
            max: MAX_TX_PAYLOAD,
        });
    }
    let hdr = MsgHdr {
        id,
        // Cannot truncate: size <= 8184.
        size: size as u16,
        seq,
    };
    out.reserve(MSG_HDR_SIZE + size);
    out.extend_from_slice(hdr.as_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    Ok(())
}

/// Encodes one message (header + `payload`).
pub fn encode(id: u16, seq: u32, payload: &[u8]) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    encode_into(&mut v, id, seq, &[payload])?;
    Ok(v)
}

/// Parses and validates a message header received from the host.
pub fn decode_header(bytes: &[u8]) -> Result<MsgHdr> {
    let (hdr, _) = MsgHdr::read_from_prefix(bytes).map_err(|_| ProtoError::Truncated {
        what: "message header",
        need: MSG_HDR_SIZE,
        have: bytes.len(),
    })?;
    if usize::from(hdr.size) > MAX_RX_PAYLOAD {
        return Err(ProtoError::FrameTooLarge {
            size: hdr.size.into(),
            max: MAX_RX_PAYLOAD,
        });
    }
    Ok(hdr)
}

/// Decodes one frame from the start of `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole frame, `Ok(Some((frame,
/// consumed)))` otherwise, or an error for a header declaring more than
/// [`MAX_RX_PAYLOAD`] bytes (a stream with such a header cannot be resynchronised).
pub fn decode(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>> {
    if buf.len() < MSG_HDR_SIZE {
        return Ok(None);
    }
    let hdr = decode_header(buf)?;
    let total = MSG_HDR_SIZE + usize::from(hdr.size);
    match buf.get(MSG_HDR_SIZE..total) {
        Some(payload) => Ok(Some((Frame { hdr, payload }, total))),
        None => Ok(None),
    }
}

/// Splits a command-reply payload into its error code and data: `Ok(Ok(data))` when
/// `err == 0`, `Ok(Err(err))` otherwise.
pub fn parse_reply(payload: &[u8]) -> Result<std::result::Result<&[u8], i32>> {
    let (ec, data) = ErrorCode::read_from_prefix(payload).map_err(|_| ProtoError::Truncated {
        what: "reply error code",
        need: ERROR_CODE_SIZE,
        have: payload.len(),
    })?;
    if ec.err != 0 {
        return Ok(Err(ec.err));
    }
    Ok(Ok(data))
}

/// Like [`parse_reply`] but maps a non-zero error code to [`ProtoError::Kvm`].
pub fn reply_data(id: u16, payload: &[u8]) -> Result<&[u8]> {
    parse_reply(payload)?.map_err(|err| ProtoError::Kvm { id, err })
}

/// Reads a fixed-size reply struct from the start of `data` (longer data is accepted:
/// newer hosts may append fields).
pub fn read_reply<T: FromBytes>(what: &'static str, data: &[u8]) -> Result<T> {
    T::read_from_prefix(data)
        .map(|(t, _)| t)
        .map_err(|_| ProtoError::Truncated {
            what,
            need: core::mem::size_of::<T>(),
            have: data.len(),
        })
}

/// Encodes a command reply as the kernel sends it (for simulators and tests): the error
/// code, then `data` only when `err == 0`. Reply payloads may reach [`MAX_RX_PAYLOAD`].
pub fn encode_reply(id: u16, seq: u32, err: i32, data: &[u8]) -> Result<Vec<u8>> {
    let data = if err == 0 { data } else { &[][..] };
    let size = ERROR_CODE_SIZE.saturating_add(data.len());
    if size > MAX_RX_PAYLOAD {
        return Err(ProtoError::FrameTooLarge {
            size,
            max: MAX_RX_PAYLOAD,
        });
    }
    let hdr = MsgHdr {
        id,
        size: size as u16,
        seq,
    };
    let ec = ErrorCode { err, padding: 0 };
    let mut v = Vec::with_capacity(MSG_HDR_SIZE + size);
    v.extend_from_slice(hdr.as_bytes());
    v.extend_from_slice(ec.as_bytes());
    v.extend_from_slice(data);
    Ok(v)
}
