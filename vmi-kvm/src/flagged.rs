//! [`Flagged`]: a mutex that publishes one bit about its value each time it is
//! released, so that a path taken once per event can skip the lock when the bit says
//! there is nothing there for it (no event queued for the tool; no register filter to
//! apply).
//!
//! The bit is written by every guard as it is dropped, whatever the holder changed, so
//! it cannot be forgotten by a new caller. It is a hint in one direction only: a
//! reader that sees it clear may miss a change made at that very moment by another
//! thread, which is the same race as taking the lock a moment earlier.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

/// A mutex over `T` plus `of(&T)`, as of the last release.
pub(crate) struct Flagged<T> {
    value: Mutex<T>,
    bit: AtomicBool,
    of: fn(&T) -> bool,
}

impl<T> Flagged<T> {
    pub(crate) fn new(value: T, of: fn(&T) -> bool) -> Self {
        Self {
            bit: AtomicBool::new(of(&value)),
            value: Mutex::new(value),
            of,
        }
    }

    /// Locks the value (a poisoned lock is taken over: the state stays consistent
    /// between statements that hold it).
    pub(crate) fn lock(&self) -> FlaggedGuard<'_, T> {
        FlaggedGuard {
            guard: self.value.lock().unwrap_or_else(|e| e.into_inner()),
            owner: self,
        }
    }

    /// `of(&value)` as the last holder left it.
    pub(crate) fn bit(&self) -> bool {
        self.bit.load(Ordering::Acquire)
    }
}

/// The lock on a [`Flagged`] value; updates the bit when dropped.
pub(crate) struct FlaggedGuard<'a, T> {
    guard: MutexGuard<'a, T>,
    owner: &'a Flagged<T>,
}

impl<T> Deref for FlaggedGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for FlaggedGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for FlaggedGuard<'_, T> {
    fn drop(&mut self) {
        // Before the mutex is released (the guard field drops after this body): the
        // next holder finds the bit matching what it locks.
        self.owner
            .bit
            .store((self.owner.of)(&self.guard), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bit_follows_every_release() {
        let f = Flagged::new(Vec::<u8>::new(), |v| !v.is_empty());
        assert!(!f.bit());
        f.lock().push(1);
        assert!(f.bit());
        {
            let mut g = f.lock();
            g.clear();
            assert!(f.bit(), "unchanged until the holder lets go");
        }
        assert!(!f.bit());
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut g = f.lock();
            g.push(2);
            panic!("poisons the mutex");
        }));
        assert!(f.bit(), "set by a holder that panicked too");
        assert_eq!(*f.lock(), [2]);
    }
}
