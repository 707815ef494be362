//! The error type shared by every backend.

use std::borrow::Cow;
use std::time::Duration;

use crate::addr::{Gpa, Gva, VcpuId};

/// Boxed error from a layer below (a protocol engine, an OS call, a parser).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout the VMI crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while introspecting a guest.
///
/// Errors carry the context needed to act on them (vCPU, address, command) instead of
/// logging it. Backends add variants' worth of detail through [`Error::Backend`], keeping
/// the cause as its `source`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The backend, the host or the protocol version cannot do this.
    #[error("{feature} is not supported: {reason}")]
    Unsupported {
        /// What was asked for (a capability or response name).
        feature: Cow<'static, str>,
        /// Why it cannot be done (protocol limit, host configuration, …).
        reason: Cow<'static, str>,
    },

    /// An argument was out of range or inconsistent.
    #[error("invalid {what}: {reason}")]
    InvalidArgument {
        /// The argument.
        what: &'static str,
        /// What is wrong with it.
        reason: Cow<'static, str>,
    },

    /// The vCPU does not exist.
    #[error("vCPU {vcpu} does not exist (the guest has {count})")]
    NoSuchVcpu {
        /// The vCPU asked for.
        vcpu: VcpuId,
        /// How many vCPUs the guest has.
        count: u32,
    },

    /// The guest physical range is not backed by guest memory.
    #[error("guest physical range {gpa}+{len:#x} is not backed by guest memory")]
    UnmappedPhysical {
        /// Start of the access.
        gpa: Gpa,
        /// Length of the access in bytes.
        len: u64,
    },

    /// Address translation hit a non-present or reserved entry; the guest would take a
    /// page fault here.
    #[error(
        "page fault translating {gva} (root {root}, level {level}, entry {entry:#x}): {reason}"
    )]
    PageFault {
        /// The virtual address being translated.
        gva: Gva,
        /// The paging root (CR3 value masked to the table address).
        root: Gpa,
        /// Paging-structure level at which the walk stopped (1 = page table, 5 = PML5).
        level: u8,
        /// The raw entry that stopped the walk (0 when absent).
        entry: u64,
        /// Why the walk stopped.
        reason: PageFaultReason,
    },

    /// A wait ran out of time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was being waited for.
        what: Cow<'static, str>,
        /// The limit that expired.
        after: Duration,
    },

    /// Data from the guest or the host (a reply, an event, a monitor text) was malformed.
    #[error("malformed data from {origin}: {detail}")]
    Malformed {
        /// Where the data came from (e.g. "QMP", "KVMi reply", "gdbstub").
        origin: &'static str,
        /// What was wrong with it.
        detail: Cow<'static, str>,
    },

    /// The connection to the guest or its VMM is gone.
    #[error("session closed: {reason}")]
    Disconnected {
        /// Why, as far as it is known.
        reason: Cow<'static, str>,
    },

    /// An event was answered twice, or answered with a token of another session.
    #[error("event reply rejected: {reason}")]
    InvalidReply {
        /// Why the reply was rejected.
        reason: Cow<'static, str>,
    },

    /// A command failed in the backend.
    #[error("{command} failed{}{}: {source}", vcpu.map(|v| format!(" on vCPU {v}")).unwrap_or_default(), address.map(|a| format!(" at {a:#x}")).unwrap_or_default())]
    Backend {
        /// The command or operation (e.g. "KVMI_VCPU_GET_REGISTERS", "QMP stop").
        command: Cow<'static, str>,
        /// The vCPU concerned, if any.
        vcpu: Option<VcpuId>,
        /// The address concerned, if any.
        address: Option<u64>,
        /// The underlying cause.
        #[source]
        source: BoxError,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: Cow<'static, str>,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a page walk stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PageFaultReason {
    /// The entry's present bit is clear.
    NotPresent,
    /// A reserved bit is set (including a large-page bit where none is allowed).
    ReservedBit,
    /// The address is not canonical for the paging mode.
    NonCanonical,
    /// A paging-structure entry could not be read from guest memory.
    UnreadableTable,
    /// Paging is disabled or the mode is unknown.
    NoPaging,
}

impl std::fmt::Display for PageFaultReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::NotPresent => "entry not present",
            Self::ReservedBit => "reserved bit set",
            Self::NonCanonical => "non-canonical address",
            Self::UnreadableTable => "paging structure not readable",
            Self::NoPaging => "paging disabled",
        })
    }
}

impl Error {
    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(
        feature: impl Into<Cow<'static, str>>,
        reason: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self::Unsupported {
            feature: feature.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Io`].
    pub fn io(context: impl Into<Cow<'static, str>>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }

    /// Shorthand for [`Error::Malformed`].
    pub fn malformed(origin: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::Malformed {
            origin,
            detail: detail.into(),
        }
    }

    /// Shorthand for [`Error::Backend`] without vCPU or address.
    pub fn backend(command: impl Into<Cow<'static, str>>, source: impl Into<BoxError>) -> Self {
        Self::Backend {
            command: command.into(),
            vcpu: None,
            address: None,
            source: source.into(),
        }
    }

    /// Whether retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Timeout { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync + 'static>() {}

    #[test]
    fn error_is_send_sync() {
        assert_send_sync::<Error>();
    }

    #[test]
    fn backend_error_names_its_context() {
        let e = Error::Backend {
            command: "KVMI_VCPU_GET_REGISTERS".into(),
            vcpu: Some(VcpuId(3)),
            address: Some(0x1000),
            source: "EINVAL".into(),
        };
        assert_eq!(
            e.to_string(),
            "KVMI_VCPU_GET_REGISTERS failed on vCPU 3 at 0x1000: EINVAL"
        );
    }
}
