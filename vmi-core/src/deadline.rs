//! Deadlines for every wait in the workspace.
//!
//! `Instant::now() + timeout` panics when the sum does not fit an [`Instant`] — for
//! `Duration::MAX`, the natural way to say "wait as long as it takes". A [`Deadline`] is
//! built with [`Deadline::after`], which never panics: a timeout too large to be a point
//! in time means **no deadline** (wait forever), which is what such a caller asked for.
//!
//! The time left is handed to OS calls that have their own idea of "zero":
//! `set_read_timeout(Some(Duration::ZERO))` is an error and `SO_RCVTIMEO = 0` blocks
//! forever, so [`Deadline::io_timeout`] never yields a zero duration: it is
//! `Ok(None)` (block without limit), `Ok(Some(d))` with `d > 0`, or the timeout error
//! once the deadline has passed.
//!
//! ```
//! use std::time::Duration;
//! use vmi_core::Deadline;
//!
//! let forever = Deadline::after(Duration::MAX); // no panic
//! assert!(forever.is_never() && !forever.expired());
//! assert_eq!(forever.io_timeout("a reply")?, None); // set_read_timeout(None): block
//!
//! let soon = Deadline::after(Duration::from_secs(5));
//! let left = soon.io_timeout("a reply")?.expect("bounded");
//! assert!(left > Duration::ZERO && left <= Duration::from_secs(5));
//!
//! let passed = Deadline::after(Duration::ZERO);
//! assert!(passed.expired());
//! assert!(matches!(passed.io_timeout("a reply"), Err(vmi_core::Error::Timeout { .. })));
//! # Ok::<(), vmi_core::Error>(())
//! ```

use std::borrow::Cow;
use std::time::{Duration, Instant};

use crate::error::Error;

/// A point in time by which a wait must end, or none ("wait forever").
///
/// It remembers the timeout it was made from ([`Deadline::timeout`]), so the
/// [`Error::Timeout`] it produces says how long was waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Deadline {
    /// `None`: no deadline.
    at: Option<Instant>,
    /// The timeout this deadline was made from (`Duration::MAX` for [`Deadline::never`]).
    timeout: Duration,
}

impl Deadline {
    /// The deadline `timeout` from now. A timeout that does not fit an [`Instant`] (such
    /// as `Duration::MAX`) gives [`Deadline::never`]'s behaviour: no deadline.
    pub fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now().checked_add(timeout),
            timeout,
        }
    }

    /// No deadline: [`expired`](Self::expired) is always false and
    /// [`io_timeout`](Self::io_timeout) is `Ok(None)`.
    pub const fn never() -> Self {
        Self {
            at: None,
            timeout: Duration::MAX,
        }
    }

    /// The deadline at `at`; `timeout` is what the errors report as the time waited.
    pub const fn at(at: Instant, timeout: Duration) -> Self {
        Self {
            at: Some(at),
            timeout,
        }
    }

    /// The point in time, or `None` when there is no deadline.
    pub const fn instant(&self) -> Option<Instant> {
        self.at
    }

    /// The timeout this deadline was made from.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether there is no deadline.
    pub const fn is_never(&self) -> bool {
        self.at.is_none()
    }

    /// Whether the deadline has passed (never, without one).
    pub fn expired(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    /// Time left: `None` without a deadline, `Some(Duration::ZERO)` once it has passed.
    ///
    /// Do not pass the result to a socket timeout as is (zero is an error there, or
    /// "forever"); use [`io_timeout`](Self::io_timeout) for that.
    pub fn remaining(&self) -> Option<Duration> {
        self.at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Time left, but at most `slice`: for waits cut into slices (to release a lock, to
    /// poll something else). `slice` without a deadline, zero once it has passed.
    pub fn remaining_capped(&self, slice: Duration) -> Duration {
        self.remaining().map_or(slice, |left| left.min(slice))
    }

    /// The value for `set_read_timeout`/`set_write_timeout` (and any wait where zero is
    /// not "now"): `Ok(None)` to block without limit, `Ok(Some(d))` with `d > 0`.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] for `what`, with [`timeout`](Self::timeout), once the deadline
    /// has passed.
    pub fn io_timeout(
        &self,
        what: impl Into<Cow<'static, str>>,
    ) -> Result<Option<Duration>, Error> {
        match self.remaining() {
            None => Ok(None),
            Some(left) if left.is_zero() => Err(self.timeout_error(what)),
            Some(left) => Ok(Some(left)),
        }
    }

    /// Fails with [`Error::Timeout`] for `what` if the deadline has passed.
    ///
    /// # Errors
    ///
    /// As said.
    pub fn check(&self, what: impl Into<Cow<'static, str>>) -> Result<(), Error> {
        if self.expired() {
            Err(self.timeout_error(what))
        } else {
            Ok(())
        }
    }

    /// The [`Error::Timeout`] for `what`, reporting [`timeout`](Self::timeout).
    pub fn timeout_error(&self, what: impl Into<Cow<'static, str>>) -> Error {
        Error::Timeout {
            what: what.into(),
            after: self.timeout,
        }
    }

    /// The earlier of two deadlines (no deadline is later than every deadline); the
    /// result keeps the timeout of the one chosen.
    pub fn earliest(self, other: Self) -> Self {
        match (self.at, other.at) {
            (Some(a), Some(b)) if b < a => other,
            (None, Some(_)) => other,
            _ => self,
        }
    }
}

impl Default for Deadline {
    /// [`Deadline::never`].
    fn default() -> Self {
        Self::never()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_mean_no_deadline_instead_of_panicking() {
        for timeout in [
            Duration::MAX,
            Duration::from_secs(u64::MAX),
            Duration::new(u64::MAX, 999_999_999),
        ] {
            let d = Deadline::after(timeout);
            assert!(d.is_never(), "{timeout:?}");
            assert!(!d.expired());
            assert_eq!(d.remaining(), None);
            assert_eq!(d.io_timeout("x").unwrap(), None);
            assert!(d.check("x").is_ok());
            assert_eq!(d.timeout(), timeout);
        }
        assert!(Deadline::never().is_never());
        assert_eq!(Deadline::default(), Deadline::never());
    }

    #[test]
    fn large_but_representable_timeouts_are_real_deadlines() {
        // A century fits an Instant on every supported platform.
        let century = Duration::from_secs(100 * 365 * 24 * 3600);
        let d = Deadline::after(century);
        assert!(!d.is_never() && !d.expired());
        let left = d.remaining().unwrap();
        assert!(left <= century && left > century - Duration::from_secs(60));
    }

    #[test]
    fn zero_timeout_is_already_expired_and_never_yields_a_zero_io_timeout() {
        let d = Deadline::after(Duration::ZERO);
        assert!(d.expired());
        assert_eq!(d.remaining(), Some(Duration::ZERO));
        match d.io_timeout("the reply") {
            Err(Error::Timeout { what, after }) => {
                assert_eq!(what, "the reply");
                assert_eq!(after, Duration::ZERO);
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(matches!(d.check("x"), Err(Error::Timeout { .. })));
    }

    #[test]
    fn a_bounded_deadline_expires_after_its_timeout() {
        let timeout = Duration::from_millis(30);
        let d = Deadline::after(timeout);
        let left = d.io_timeout("x").unwrap().unwrap();
        assert!(left > Duration::ZERO && left <= timeout);
        std::thread::sleep(timeout + Duration::from_millis(5));
        assert!(d.expired());
        match d.io_timeout("x") {
            Err(Error::Timeout { after, .. }) => assert_eq!(after, timeout),
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn io_timeouts_are_accepted_by_a_real_socket() {
        // The point of io_timeout: whatever it returns, set_read_timeout accepts it.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        for d in [
            Deadline::never(),
            Deadline::after(Duration::MAX),
            Deadline::after(Duration::from_nanos(1) + Duration::from_secs(1)),
            Deadline::after(Duration::from_secs(3600)),
        ] {
            a.set_read_timeout(d.io_timeout("x").unwrap()).unwrap();
        }
        // Unbounded really blocks without limit: the socket reports no timeout.
        a.set_read_timeout(Deadline::never().io_timeout("x").unwrap())
            .unwrap();
        assert_eq!(a.read_timeout().unwrap(), None);
    }

    #[test]
    fn remaining_capped_slices_every_kind_of_deadline() {
        let slice = Duration::from_millis(20);
        assert_eq!(Deadline::never().remaining_capped(slice), slice);
        assert_eq!(
            Deadline::after(Duration::MAX).remaining_capped(slice),
            slice
        );
        assert_eq!(
            Deadline::after(Duration::from_secs(60)).remaining_capped(slice),
            slice
        );
        assert!(
            Deadline::after(Duration::from_millis(5)).remaining_capped(slice)
                <= Duration::from_millis(5)
        );
        assert_eq!(
            Deadline::after(Duration::ZERO).remaining_capped(slice),
            Duration::ZERO
        );
    }

    #[test]
    fn earliest_prefers_the_sooner_and_treats_never_as_latest() {
        let now = Instant::now();
        let soon = Deadline::at(now + Duration::from_secs(1), Duration::from_secs(1));
        let later = Deadline::at(now + Duration::from_secs(9), Duration::from_secs(9));
        assert_eq!(soon.earliest(later), soon);
        assert_eq!(later.earliest(soon), soon);
        assert_eq!(Deadline::never().earliest(later), later);
        assert_eq!(later.earliest(Deadline::never()), later);
        assert_eq!(
            Deadline::never().earliest(Deadline::never()),
            Deadline::never()
        );
    }
}
