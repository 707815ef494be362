//! [`Msrs`]: MSR values by index, inline up to [`Msrs::INLINE`].

/// MSR values by index, stored inline: a snapshot of the MSRs an event carries (KVMi
/// sends about ten) needs no heap allocation. More than [`Msrs::INLINE`] entries spill to
/// the heap. Entries are kept sorted by index, so equal sets compare equal.
pub struct Msrs {
    storage: MsrStorage,
}

impl Clone for Msrs {
    fn clone(&self) -> Self {
        let mut m = Msrs::new();
        m.clone_from(self);
        m
    }

    /// Copies only the entries held (a snapshot is cloned into a vCPU's register cache
    /// on every event).
    fn clone_from(&mut self, source: &Self) {
        match (&mut self.storage, &source.storage) {
            (
                MsrStorage::Inline { len, entries },
                MsrStorage::Inline {
                    len: n,
                    entries: from,
                },
            ) => {
                let n = usize::from(*n);
                entries[..n].copy_from_slice(&from[..n]);
                *len = n as u8;
            }
            (_, MsrStorage::Inline { len, entries }) => {
                *self = Msrs::from_ascending(&entries[..usize::from(*len)]);
            }
            (_, MsrStorage::Heap(v)) => self.storage = MsrStorage::Heap(v.clone()),
        }
    }
}

// The inline variant is large on purpose: it is what spares an allocation per event.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum MsrStorage {
    Inline {
        len: u8,
        entries: [(u32, u64); Msrs::INLINE],
    },
    Heap(Vec<(u32, u64)>),
}

impl Msrs {
    /// How many MSRs fit without allocating.
    pub const INLINE: usize = 16;

    /// No MSRs.
    pub const fn new() -> Self {
        Self {
            storage: MsrStorage::Inline {
                len: 0,
                entries: [(0, 0); Self::INLINE],
            },
        }
    }

    fn as_slice(&self) -> &[(u32, u64)] {
        match &self.storage {
            MsrStorage::Inline { len, entries } => &entries[..usize::from(*len)],
            MsrStorage::Heap(v) => v,
        }
    }

    /// The MSRs of `entries`, which a register dump lists in strictly ascending index
    /// order: copied in one go when they fit inline. Entries out of order or repeated
    /// are inserted one by one (sorted, the last value of an index kept).
    pub fn from_ascending(entries: &[(u32, u64)]) -> Self {
        let ascending = entries.windows(2).all(|w| w[0].0 < w[1].0);
        if ascending && entries.len() <= Self::INLINE {
            let mut inline = [(0, 0); Self::INLINE];
            inline[..entries.len()].copy_from_slice(entries);
            return Self {
                storage: MsrStorage::Inline {
                    len: entries.len() as u8,
                    entries: inline,
                },
            };
        }
        entries.iter().copied().collect()
    }

    /// Removes every MSR.
    pub fn clear(&mut self) {
        match &mut self.storage {
            MsrStorage::Inline { len, .. } => *len = 0,
            MsrStorage::Heap(_) => *self = Msrs::new(),
        }
    }

    /// The value of MSR `index`, if held.
    pub fn get(&self, index: u32) -> Option<u64> {
        let s = self.as_slice();
        s.binary_search_by_key(&index, |e| e.0).ok().map(|i| s[i].1)
    }

    /// Whether MSR `index` is held.
    pub fn contains(&self, index: u32) -> bool {
        self.get(index).is_some()
    }

    /// Sets MSR `index`, returning the previous value.
    #[inline]
    pub fn insert(&mut self, index: u32, value: u64) -> Option<u64> {
        // The per-event path: an ascending list appended to inline storage.
        if let MsrStorage::Inline { len, entries } = &mut self.storage {
            let n = usize::from(*len);
            if n < Self::INLINE && (n == 0 || entries[n - 1].0 < index) {
                entries[n] = (index, value);
                *len += 1;
                return None;
            }
        }
        self.insert_slow(index, value)
    }

    fn insert_slow(&mut self, index: u32, value: u64) -> Option<u64> {
        let s = self.as_slice();
        // Ascending input (a copy, a sorted list) appends without a search.
        let pos = if s.last().is_none_or(|e| e.0 < index) {
            Err(s.len())
        } else {
            s.binary_search_by_key(&index, |e| e.0)
        };
        match (&mut self.storage, pos) {
            (MsrStorage::Inline { entries, .. }, Ok(i)) => {
                Some(std::mem::replace(&mut entries[i].1, value))
            }
            (MsrStorage::Heap(v), Ok(i)) => Some(std::mem::replace(&mut v[i].1, value)),
            (MsrStorage::Inline { len, entries }, Err(i)) => {
                let n = usize::from(*len);
                if n < Self::INLINE {
                    entries.copy_within(i..n, i + 1);
                    entries[i] = (index, value);
                    *len += 1;
                } else {
                    let mut v = Vec::with_capacity(Self::INLINE * 2);
                    v.extend_from_slice(&entries[..n]);
                    v.insert(i, (index, value));
                    self.storage = MsrStorage::Heap(v);
                }
                None
            }
            (MsrStorage::Heap(v), Err(i)) => {
                v.insert(i, (index, value));
                None
            }
        }
    }

    /// Removes MSR `index`, returning its value.
    pub fn remove(&mut self, index: u32) -> Option<u64> {
        let i = self.as_slice().binary_search_by_key(&index, |e| e.0).ok()?;
        match &mut self.storage {
            MsrStorage::Inline { len, entries } => {
                let n = usize::from(*len);
                let value = entries[i].1;
                entries.copy_within(i + 1..n, i);
                *len -= 1;
                Some(value)
            }
            MsrStorage::Heap(v) => Some(v.remove(i).1),
        }
    }

    /// Number of MSRs held.
    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    /// Whether no MSR is held.
    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// `(index, value)` pairs in ascending index order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.as_slice().iter().copied()
    }

    /// The indices held, ascending.
    pub fn indices(&self) -> impl Iterator<Item = u32> + '_ {
        self.as_slice().iter().map(|e| e.0)
    }
}

impl Default for Msrs {
    fn default() -> Self {
        Self::new()
    }
}

impl PartialEq for Msrs {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Msrs {}

impl std::fmt::Debug for Msrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(i, v)| (format!("{i:#x}"), format!("{v:#x}"))),
            )
            .finish()
    }
}

impl Extend<(u32, u64)> for Msrs {
    fn extend<I: IntoIterator<Item = (u32, u64)>>(&mut self, iter: I) {
        for (i, v) in iter {
            self.insert(i, v);
        }
    }
}

impl FromIterator<(u32, u64)> for Msrs {
    fn from_iter<I: IntoIterator<Item = (u32, u64)>>(iter: I) -> Self {
        let mut m = Msrs::new();
        m.extend(iter);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msrs_stay_inline_sorted_and_spill() {
        let mut m = Msrs::new();
        for i in (0..Msrs::INLINE as u32).rev() {
            assert_eq!(m.insert(i * 3, u64::from(i)), None);
        }
        assert!(matches!(m.storage, MsrStorage::Inline { .. }));
        assert_eq!(m.insert(3, 99), Some(1));
        assert!(m
            .indices()
            .collect::<Vec<_>>()
            .windows(2)
            .all(|w| w[0] < w[1]));
        m.insert(1000, 7);
        assert!(matches!(m.storage, MsrStorage::Heap(_)));
        assert_eq!(m.len(), Msrs::INLINE + 1);
        assert_eq!(m.get(1000), Some(7));
        assert_eq!(m.remove(3), Some(99));
        assert_eq!(m.get(3), None);
        let a: Msrs = [(1, 1), (2, 2)].into_iter().collect();
        let b: Msrs = [(2, 2), (1, 1)].into_iter().collect();
        assert_eq!(a, b);
        let mut c = Msrs::new();
        c.insert(9, 9);
        assert_eq!(c.remove(9), Some(9));
        assert!(c.is_empty());
    }
}
