//! The error type of OS awareness.

use std::borrow::Cow;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while understanding a Linux guest.
///
/// Everything read from the guest is untrusted: malformed tables, loops and absurd counts
/// become [`Error::Malformed`] or [`Error::Limit`], never a panic or an unbounded allocation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading guest memory or registers failed (the backend's error).
    #[error(transparent)]
    Vmi(#[from] vmi_core::Error),

    /// A kernel structure read from the guest (or from a file) is not what it should be.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// The structure (`kallsyms`, `BTF`, `task list`, …).
        what: &'static str,
        /// What is wrong with it.
        detail: Cow<'static, str>,
    },

    /// Something the bootstrap needs was not found.
    #[error("{what} not found: {detail}")]
    NotFound {
        /// What was looked for (`kernel image`, `kallsyms`, `symbol`, `type`, …).
        what: &'static str,
        /// Where it was looked for, or the name asked for.
        detail: Cow<'static, str>,
    },

    /// A walk or a count exceeded its bound (a looping list, an absurd length).
    #[error("{what} exceeds its limit of {limit}")]
    Limit {
        /// What was walked or counted.
        what: &'static str,
        /// The bound.
        limit: u64,
    },

    /// The kernel lacks what this needs (no BTF, no kallsyms) and the fallbacks say how.
    #[error("{what} is not available: {reason}")]
    Unavailable {
        /// What is missing.
        what: &'static str,
        /// Why, and which fallback to use.
        reason: Cow<'static, str>,
    },

    /// Reading a user-supplied file failed.
    #[error("{context}: {source}")]
    Io {
        /// The file and operation.
        context: Cow<'static, str>,
        /// The OS error.
        source: std::io::Error,
    },
}

impl Error {
    /// A [`Error::Malformed`].
    pub fn malformed(what: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::Malformed {
            what,
            detail: detail.into(),
        }
    }

    /// A [`Error::NotFound`].
    pub fn not_found(what: &'static str, detail: impl Into<Cow<'static, str>>) -> Self {
        Self::NotFound {
            what,
            detail: detail.into(),
        }
    }

    /// An [`Error::Io`].
    pub fn io(context: impl Into<Cow<'static, str>>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}
