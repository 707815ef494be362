//! vCPU control: vCPU count, and pausing with a reference-counted guard.

use std::sync::Mutex;

use crate::error::{Error, Result};

/// Counts nested pauses so that only the first pause and the last resume reach the
/// backend. Backends embed one and return it from [`VcpuControl::pause_count`].
///
/// The count and the backend call happen under one lock, so two threads pausing and
/// resuming concurrently can never leave the guest running while a guard is alive.
#[derive(Debug, Default)]
pub struct PauseCount {
    count: Mutex<u32>,
}

impl PauseCount {
    /// A count of zero (guest not paused by us).
    pub fn new() -> Self {
        Self::default()
    }

    /// Current number of outstanding pauses.
    pub fn current(&self) -> u32 {
        *self.count.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Increments the count; calls `pause` on the 0 → 1 transition. If `pause` fails the
    /// count is unchanged.
    pub fn acquire(&self, pause: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        if *n == 0 {
            pause()?;
        }
        *n = n.checked_add(1).ok_or_else(|| Error::InvalidArgument {
            what: "pause",
            reason: "pause count overflow".into(),
        })?;
        Ok(())
    }

    /// Decrements the count; calls `resume` on the 1 → 0 transition. If `resume` fails
    /// the count stays at 1 so that a later release retries.
    pub fn release(&self, resume: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        match *n {
            0 => Err(Error::InvalidArgument {
                what: "resume",
                reason: "the guest is not paused by this session".into(),
            }),
            1 => {
                resume()?;
                *n = 0;
                Ok(())
            }
            _ => {
                *n -= 1;
                Ok(())
            }
        }
    }

    /// Forgets every outstanding pause and resumes if any was held: for session teardown.
    pub fn release_all(&self, resume: impl FnOnce() -> Result<()>) -> Result<()> {
        let mut n = self.count.lock().unwrap_or_else(|e| e.into_inner());
        if *n > 0 {
            resume()?;
            *n = 0;
        }
        Ok(())
    }
}

/// Pausing, resuming and counting vCPUs.
pub trait VcpuControl {
    /// Number of vCPUs the guest has.
    fn vcpu_count(&self) -> Result<u32>;

    /// Stops every vCPU and returns once none of them runs guest code. Backends
    /// implement this primitive; users call [`VcpuControl::pause`].
    fn pause_vcpus(&self) -> Result<()>;

    /// Lets every vCPU run again. Backends implement this primitive; users drop the
    /// [`PauseGuard`].
    fn resume_vcpus(&self) -> Result<()>;

    /// The session's pause counter.
    fn pause_count(&self) -> &PauseCount;

    /// Pauses the guest (if this is the first outstanding pause) and returns a guard that
    /// resumes it when the last guard is dropped.
    fn pause(&self) -> Result<PauseGuard<'_, Self>>
    where
        Self: Sized,
    {
        self.pause_count().acquire(|| self.pause_vcpus())?;
        Ok(PauseGuard {
            ctl: self,
            released: false,
        })
    }

    /// Whether at least one pause guard of this session is alive.
    fn is_paused(&self) -> bool {
        self.pause_count().current() > 0
    }
}

/// Keeps the guest paused while alive. Guards nest: the guest resumes when the last one
/// goes. Dropping cannot report a failed resume; call [`PauseGuard::resume`] to see it.
#[must_use = "the guest resumes as soon as the guard is dropped"]
pub struct PauseGuard<'a, C: VcpuControl> {
    ctl: &'a C,
    released: bool,
}

impl<C: VcpuControl> PauseGuard<'_, C> {
    /// Releases this pause now and reports whether resuming (if this was the last
    /// guard) worked.
    pub fn resume(mut self) -> Result<()> {
        self.released = true;
        self.ctl.pause_count().release(|| self.ctl.resume_vcpus())
    }
}

impl<C: VcpuControl> Drop for PauseGuard<'_, C> {
    fn drop(&mut self) {
        if !self.released {
            // A failed resume keeps the count at 1; the session's teardown retries it.
            let _ = self.ctl.pause_count().release(|| self.ctl.resume_vcpus());
        }
    }
}

impl<C: VcpuControl> std::fmt::Debug for PauseGuard<'_, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseGuard").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Default)]
    struct Counting {
        pauses: AtomicU32,
        resumes: AtomicU32,
        fail_resume: std::sync::atomic::AtomicBool,
        count: PauseCount,
    }

    impl VcpuControl for Counting {
        fn vcpu_count(&self) -> Result<u32> {
            Ok(1)
        }
        fn pause_vcpus(&self) -> Result<()> {
            self.pauses.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn resume_vcpus(&self) -> Result<()> {
            if self.fail_resume.load(Ordering::SeqCst) {
                return Err(Error::unsupported("resume", "test"));
            }
            self.resumes.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn pause_count(&self) -> &PauseCount {
            &self.count
        }
    }

    #[test]
    fn nested_guards_pause_and_resume_once() {
        let c = Counting::default();
        let a = c.pause().unwrap();
        let b = c.pause().unwrap();
        assert!(c.is_paused());
        drop(a);
        assert_eq!(c.resumes.load(Ordering::SeqCst), 0);
        b.resume().unwrap();
        assert_eq!(c.pauses.load(Ordering::SeqCst), 1);
        assert_eq!(c.resumes.load(Ordering::SeqCst), 1);
        assert!(!c.is_paused());
    }

    #[test]
    fn failed_resume_is_retried_by_release_all() {
        let c = Counting::default();
        let g = c.pause().unwrap();
        c.fail_resume.store(true, Ordering::SeqCst);
        assert!(g.resume().is_err());
        assert!(c.is_paused());
        c.fail_resume.store(false, Ordering::SeqCst);
        c.pause_count().release_all(|| c.resume_vcpus()).unwrap();
        assert!(!c.is_paused());
        assert_eq!(c.resumes.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn release_without_pause_is_an_error() {
        let c = PauseCount::new();
        assert!(c.release(|| Ok(())).is_err());
    }
}
