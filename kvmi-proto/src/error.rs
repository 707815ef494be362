//! Typed errors of the protocol engine.

use std::time::Duration;

/// Everything that can go wrong while talking KVMi. Host data is untrusted: every
/// malformed frame, handshake or reply maps to one of these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    /// An I/O error on the socket.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
    /// A wait exceeded its timeout (also a socket read or write that ran into the
    /// socket's timeout).
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
    #[error("command {} failed with {} ({err})", CommandName(*.id), kvm_error_name(*.err))]
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
    #[error(
        "reply {} does not match request {} (seq {seq})",
        CommandName(*.got),
        CommandName(*.expected)
    )]
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
    /// A peer on the UNIX socket whose uid [`Config::allowed_peer_uids`] does not
    /// allow; it was disconnected before the handshake.
    ///
    /// [`Config::allowed_peer_uids`]: crate::Config::allowed_peer_uids
    #[error("peer uid {uid} (pid {pid}) is not allowed to connect")]
    PeerRefused {
        /// The peer's user id (`SO_PEERCRED`).
        uid: u32,
        /// The peer's process id.
        pid: i32,
    },
    /// A [`Listener`](crate::Listener) already has
    /// [`Config::max_pending_handshakes`](crate::Config::max_pending_handshakes)
    /// connections handshaking or waiting to be accepted; the new one was closed.
    #[error("{0} connections already pending, refused another")]
    TooManyPending(usize),
    /// An argument supplied by the caller is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The host sent more events than the bounded event queue holds.
    #[error("event queue full ({0} events)")]
    EventQueueFull(usize),
    /// The host reports (or was probed to) not allow this command or event.
    #[error("{0} not supported by the host")]
    Unsupported(String),
    /// Commands of a [`Batch`](crate::Batch) failed (reported by `KVMI_EVENT_CMD_ERROR`
    /// while replies were off, or by error replies). The batch was still executed: the
    /// other commands and all event replies took effect.
    #[error("{} batched command(s) failed: {}", .0.len(), BatchFailure::list(.0))]
    BatchFailed(Vec<BatchFailure>),
    /// Setting up the vsock listener failed (see
    /// [`is_vsock_unavailable`](ProtoError::is_vsock_unavailable)).
    #[error("vsock {op} on port {port} failed: {source}{}", vsock_hint(source))]
    Vsock {
        /// The failed call (`"socket"`, `"bind"`, `"listen"`, ...).
        op: &'static str,
        /// The port asked for.
        port: u32,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Whether an OS error means "this machine has no usable vsock": no `AF_VSOCK`
/// support, or no transport for the address (no virtio-vsock device in a guest, no
/// `vhost_vsock` on a host, no `vsock_loopback` for `VMADDR_CID_LOCAL`).
fn vsock_missing(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT | libc::ENODEV | libc::EADDRNOTAVAIL | libc::ESOCKTNOSUPPORT)
    )
}

fn vsock_hint(e: &std::io::Error) -> &'static str {
    if vsock_missing(e) {
        " (no vsock transport on this machine: a host needs the vhost_vsock module, a \
         guest a virtio-vsock device)"
    } else {
        ""
    }
}

/// One failed command of a [`Batch`](crate::Batch); see [`ProtoError::BatchFailed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BatchFailure {
    /// Position of the command in the batch, counting commands and event replies in the
    /// order they were queued (`None`: the batch's leading `CONTROL_CMD_RESPONSE`).
    pub index: Option<usize>,
    /// Sequence number the command was sent with.
    pub seq: u32,
    /// Command id.
    pub id: u16,
    /// The (negative) `KVM_E*` error code as sent.
    pub err: i32,
}

impl BatchFailure {
    fn list(v: &[BatchFailure]) -> String {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl std::fmt::Display for BatchFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command {} ({}, seq {}",
            CommandName(self.id).name(),
            self.id,
            self.seq
        )?;
        if let Some(i) = self.index {
            write!(f, ", batch index {i}")?;
        }
        write!(
            f,
            ") failed with {} ({})",
            kvm_error_name(self.err),
            self.err
        )
    }
}

impl From<std::io::Error> for ProtoError {
    /// A [`SocketTimeout`](crate::stream::SocketTimeout) (a socket read or write that ran
    /// into its timeout) becomes [`ProtoError::Timeout`]; everything else
    /// [`ProtoError::Io`].
    fn from(e: std::io::Error) -> Self {
        match e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<crate::stream::SocketTimeout>())
        {
            Some(t) => ProtoError::Timeout(t.0),
            None => ProtoError::Io(e),
        }
    }
}

impl ProtoError {
    /// The (negative) `KVM_E*` code if this is a [`ProtoError::Kvm`].
    pub fn kvm_error(&self) -> Option<i32> {
        match self {
            ProtoError::Kvm { err, .. } => Some(*err),
            _ => None,
        }
    }

    /// Whether this is a [`ProtoError::Vsock`] caused by the machine having no usable
    /// vsock (no `AF_VSOCK` support or no transport), as opposed to e.g. a port in use.
    pub fn is_vsock_unavailable(&self) -> bool {
        matches!(self, ProtoError::Vsock { source, .. } if vsock_missing(source))
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

/// Displays a message id as its C name and number, e.g. `KVMI_VM_READ_PHYSICAL (17)`
/// (the kvmi-v7 name; the kvmi-v6 one for the v6-only ids; `unknown` otherwise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommandName(pub u16);

impl CommandName {
    /// The name alone.
    pub fn name(self) -> &'static str {
        kvmi_sys::command_name(self.0)
            .or(kvmi_sys::v6::command_name(self.0))
            .unwrap_or("unknown")
    }
}

impl std::fmt::Display for CommandName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Displays an event id as its C name and number, e.g. `KVMI_EVENT_PF (6)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventName(pub u8);

impl EventName {
    /// The name alone.
    pub fn name(self) -> &'static str {
        kvmi_sys::event_name(self.0).unwrap_or("unknown event")
    }
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Result alias of this crate.
pub type Result<T, E = ProtoError> = std::result::Result<T, E>;
