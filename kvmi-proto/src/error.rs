//! Typed errors of the protocol engine.

use std::time::Duration;

/// Everything that can go wrong while talking KVMi. Host data is untrusted: every
/// malformed frame, handshake or reply maps to one of these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// An I/O error on the socket.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A wait exceeded its timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The connection is closed (peer hung up, protocol error, or closed locally).
    #[error("connection closed: {0}")]
    Disconnected(String),
    /// Not enough bytes for a structure.
    #[error("truncated {what}: need {need} bytes, have {have}")]
    Truncated {
        /// What was being parsed.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A frame declares a payload larger than allowed.
    #[error("frame payload of {size} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Declared payload size.
        size: usize,
        /// Allowed maximum.
        max: usize,
    },
    /// The kernel answered a command with a non-zero error code.
    #[error("command {id} failed with {} ({err})", kvm_error_name(*.err))]
    Kvm {
        /// Command id.
        id: u16,
        /// The (negative) `KVM_E*` error code as sent.
        err: i32,
    },
    /// A reply or event whose shape does not match what was expected.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A reply arrived with an id that does not match the request with that seq.
    #[error("reply id {got} does not match request id {expected} (seq {seq})")]
    IdMismatch {
        /// Id of the request.
        expected: u16,
        /// Id in the reply.
        got: u16,
        /// Sequence number.
        seq: u32,
    },
    /// The QEMU handshake was malformed.
    #[error("bad handshake: {0}")]
    Handshake(String),
    /// An argument supplied by the caller is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The host sent more events than the bounded event queue holds.
    #[error("event queue full ({0} events)")]
    EventQueueFull(usize),
    /// The host reports (or was probed to) not allow this command or event.
    #[error("{0} not supported by the host")]
    Unsupported(String),
}

impl ProtoError {
    /// The (negative) `KVM_E*` code if this is a [`ProtoError::Kvm`].
    pub fn kvm_error(&self) -> Option<i32> {
        match self {
            ProtoError::Kvm { err, .. } => Some(*err),
            _ => None,
        }
    }

    /// Whether the connection is unusable after this error.
    pub fn is_fatal(&self) -> bool {
        matches!(self, ProtoError::Disconnected(_) | ProtoError::Io(_))
    }
}

/// Name of a negated `KVM_E*` code, e.g. `-22` → `"KVM_EINVAL"`.
pub fn kvm_error_name(err: i32) -> &'static str {
    let pos = err.checked_neg().unwrap_or(0);
    kvmi_sys::KVM_ERRORS
        .iter()
        .find(|(v, _)| *v == pos)
        .map_or("unknown error", |(_, n)| *n)
}

/// Result alias of this crate.
pub type Result<T, E = ProtoError> = std::result::Result<T, E>;
