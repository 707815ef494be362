//! vCPU control: how many vCPUs there are, sets of them, and pausing with guards.
//!
//! Pausing is always through a guard ([`VcpuControl::pause`], [`VcpuControl::pause_vcpu`]),
//! counted once per guest across every handle of a session: the model is described in
//! [`crate::park`].

use crate::addr::VcpuId;
use crate::error::{Error, Result};
pub use crate::park::{PauseGuard, PauseScope};

/// Pausing and counting vCPUs.
pub trait VcpuControl {
    /// Number of vCPUs the guest has.
    fn vcpu_count(&self) -> Result<u32>;

    /// Pauses every vCPU (if no other guard of this guest does yet) and returns once
    /// none of them runs guest code. The guest resumes when the last guard, of any
    /// handle of this guest, is dropped.
    fn pause(&self) -> Result<PauseGuard<'_>>;

    /// Pauses one vCPU, where the backend can stop vCPUs one by one.
    fn pause_vcpu(&self, vcpu: VcpuId) -> Result<PauseGuard<'_>> {
        let _ = vcpu;
        Err(Error::unsupported(
            "per-vCPU pause",
            "this backend stops the whole guest at once",
        ))
    }

    /// Whether a pause of the whole guest is held by some guard of this guest.
    fn is_paused(&self) -> bool;
}

/// A set of vCPUs. Any [`VcpuId`] can be a member (vCPU ids are 16 bits; the set
/// grows as needed).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct VcpuSet {
    words: Vec<u64>,
}

impl VcpuSet {
    /// No vCPU.
    pub const fn new() -> Self {
        Self { words: Vec::new() }
    }

    /// Every vCPU below `count` (at most 65 536).
    pub fn first(count: u32) -> Self {
        let count = count.min(1 << 16) as usize;
        let mut words = vec![u64::MAX; count / 64];
        if count % 64 != 0 {
            words.push((1u64 << (count % 64)) - 1);
        }
        Self { words }
    }

    /// A single vCPU.
    pub fn single(vcpu: VcpuId) -> Self {
        let mut s = Self::new();
        s.insert(vcpu);
        s
    }

    fn slot(vcpu: VcpuId) -> (usize, u64) {
        let i = usize::from(vcpu.0);
        (i / 64, 1u64 << (i % 64))
    }

    /// Adds `vcpu`; returns whether it was new.
    pub fn insert(&mut self, vcpu: VcpuId) -> bool {
        let (w, bit) = Self::slot(vcpu);
        if self.words.len() <= w {
            self.words.resize(w + 1, 0);
        }
        let new = self.words[w] & bit == 0;
        self.words[w] |= bit;
        new
    }

    /// Removes `vcpu`; returns whether it was a member.
    pub fn remove(&mut self, vcpu: VcpuId) -> bool {
        let (w, bit) = Self::slot(vcpu);
        let Some(word) = self.words.get_mut(w) else {
            return false;
        };
        let had = *word & bit != 0;
        *word &= !bit;
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
        had
    }

    /// Whether the set contains `vcpu`.
    pub fn contains(&self, vcpu: VcpuId) -> bool {
        let (w, bit) = Self::slot(vcpu);
        self.words.get(w).is_some_and(|x| x & bit != 0)
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Adds every member of `other`.
    pub fn union_with(&mut self, other: &VcpuSet) {
        if self.words.len() < other.words.len() {
            self.words.resize(other.words.len(), 0);
        }
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= b;
        }
    }

    /// Removes every member of `other`.
    pub fn difference_with(&mut self, other: &VcpuSet) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a &= !b;
        }
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }

    /// Keeps only vCPUs below `count`.
    pub fn truncate(&mut self, count: u32) {
        let keep = Self::first(count);
        for (i, w) in self.words.iter_mut().enumerate() {
            *w &= keep.words.get(i).copied().unwrap_or(0);
        }
        while self.words.last() == Some(&0) {
            self.words.pop();
        }
    }

    /// The members, ascending.
    pub fn iter(&self) -> impl Iterator<Item = VcpuId> + '_ {
        self.words.iter().enumerate().flat_map(|(w, bits)| {
            (0..64u32)
                .filter(move |b| bits & (1u64 << b) != 0)
                .map(move |b| VcpuId((w * 64 + b as usize) as u16))
        })
    }
}

impl FromIterator<VcpuId> for VcpuSet {
    fn from_iter<I: IntoIterator<Item = VcpuId>>(iter: I) -> Self {
        let mut s = Self::new();
        for v in iter {
            s.insert(v);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_address_every_vcpu() {
        let s = VcpuSet::first(3);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![VcpuId(0), VcpuId(1), VcpuId(2)]
        );
        assert!(!s.contains(VcpuId(3)));
        assert_eq!(VcpuSet::first(64).len(), 64);
        assert!(!VcpuSet::first(64).contains(VcpuId(64)));
        let far = VcpuSet::single(VcpuId(u16::MAX));
        assert!(far.contains(VcpuId(u16::MAX)));
        assert_eq!(far.iter().collect::<Vec<_>>(), vec![VcpuId(u16::MAX)]);
        assert_eq!(VcpuSet::first(u32::MAX).len(), 1 << 16);
        let mut s = VcpuSet::first(130);
        assert!(s.contains(VcpuId(129)));
        s.truncate(65);
        assert_eq!(s.len(), 65);
        assert!(s.remove(VcpuId(64)));
        assert!(!s.remove(VcpuId(64)));
        s.difference_with(&VcpuSet::first(64));
        assert!(s.is_empty());
        assert_eq!(s, VcpuSet::new(), "empty sets compare equal");
    }
}
