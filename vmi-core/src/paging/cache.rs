//! A bounded cache of page-granular translations.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};

use super::{read_virtual_with, PageSize, PagingEntry, PagingMode, Translation, Translator};
use crate::addr::{Gfn, Gpa, Gva};
use crate::error::Result;
use crate::memory::PhysicalMemory;

/// Most frames a cached translation depends on: five paging-structure pages and the
/// data page.
const MAX_FRAMES: usize = 6;

/// What a cached translation is looked up by.
///
/// Hashed as two words ([`Key::hash`]) with [`KeyHasher`]: the hit path of the cache is
/// one lookup, and SipHash over the derived field-by-field hash cost more than the rest
/// of the hit together (see `benches/translate.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    /// The mode and MAXPHYADDR the walk used.
    translator: Translator,
    /// The masked paging root.
    root: Gpa,
    /// The linear address of the first byte of the page.
    page: u64,
    /// The page size (a 2 MiB and a 4 KiB page may start at the same address).
    size: PageSize,
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // The page is 4 KiB aligned, so its low 12 bits carry the rest of the key: mode
        // (3 bits), its flag (1), page size (2), MAXPHYADDR (6). Equality still compares
        // every field, so this only has to spread keys, not be injective.
        let (mode, flag) = match self.translator.mode() {
            PagingMode::Disabled => (0u64, false),
            PagingMode::Legacy32 { pse } => (1, pse),
            PagingMode::Pae { nxe } => (2, nxe),
            PagingMode::Ia32e { nxe } => (3, nxe),
            PagingMode::Ia32e5 { nxe } => (4, nxe),
        };
        let size = match self.size {
            PageSize::Size4K => 0u64,
            PageSize::Size2M => 1,
            PageSize::Size4M => 2,
            PageSize::Size1G => 3,
        };
        let phys = u64::from(self.translator.max_phys_bits()) & 0x3f;
        let low = mode | u64::from(flag) << 3 | size << 4 | phys << 6;
        state.write_u64(self.page ^ low);
        state.write_u64(self.root.0);
    }
}

/// A multiply-rotate hash of whole words with a final avalanche, seeded per cache.
///
/// Keys come partly from the guest (the paging root), so the seed is random (taken from
/// the standard library's [`RandomState`]) and unknown to the guest. Even keys that all
/// collide only make a lookup probe the whole table: bounded by the capacity, never a
/// hang.
#[derive(Debug, Clone, Copy)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            if let Some(dst) = word.get_mut(..chunk.len()) {
                dst.copy_from_slice(chunk);
            }
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        // MurmurHash3's 64-bit finaliser: every input bit affects every output bit, so
        // the table's bucket (low bits) and tag (high bits) both see the page number.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// Builds [`KeyHasher`]s with one random seed.
#[derive(Debug, Clone, Copy)]
struct KeyHasherBuilder(u64);

impl KeyHasherBuilder {
    fn random() -> Self {
        Self(RandomState::new().hash_one(0x5eed_u64))
    }
}

impl BuildHasher for KeyHasherBuilder {
    type Hasher = KeyHasher;
    fn build_hasher(&self) -> KeyHasher {
        KeyHasher(self.0)
    }
}

/// A physical range a cached translation depends on: `size` bytes from frame `base`
/// (paging-structure pages are 4 KiB; the data page has the translation's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FrameTag {
    base: Gfn,
    size: PageSize,
}

impl FrameTag {
    /// The range of `size` containing `gfn`.
    const fn containing(gfn: Gfn, size: PageSize) -> Self {
        Self {
            base: Gfn(gfn.0 & !(size.frames() - 1)),
            size,
        }
    }
}

/// One cached translation: what a hit reads, kept small (40 bytes) so that the slot
/// table of a full default cache stays in the CPU's near caches. The frames it depends
/// on, needed only to fill and invalidate, are in the parallel [`Deps`] table.
#[derive(Debug, Clone, Copy)]
struct Slot {
    key: Key,
    /// Physical address of the first byte of the page.
    page_gpa: Gpa,
    writable: bool,
    user: bool,
    executable: bool,
    level: u8,
    /// Clock bit: used since the hand last passed.
    referenced: bool,
}

/// The physical ranges the translation in the slot of the same index depends on.
#[derive(Debug, Clone, Copy)]
struct Deps {
    frames: [FrameTag; MAX_FRAMES],
    count: u8,
}

impl Deps {
    const NONE: Self = Self {
        frames: [FrameTag {
            base: Gfn(0),
            size: PageSize::Size4K,
        }; MAX_FRAMES],
        count: 0,
    };

    fn frames(&self) -> &[FrameTag] {
        self.frames.get(..usize::from(self.count)).unwrap_or(&[])
    }
}

impl Slot {
    fn translation(&self, gva: Gva) -> Translation {
        Translation {
            gva,
            gpa: Gpa(self.page_gpa.0 | (gva.0 & self.key.size.offset_mask())),
            page_size: self.key.size,
            writable: self.writable,
            user: self.user,
            executable: self.executable,
            level: self.level,
            entries: [PagingEntry::default(); 5],
            entry_count: 0,
        }
    }
}

/// A bounded cache of page-granular translations, keyed by (masked paging root,
/// page-aligned linear address, mode).
///
/// A large page is one entry, whatever address inside it was translated. Lookups and
/// fills go through [`TranslationCache::translate`]; failed walks and
/// [`PagingMode::Disabled`] are never cached. Translations served from the cache have
/// empty [`Translation::entries`].
///
/// **Freshness**: the cache does not see guest writes. It is only as fresh as the last
/// invalidation — see the [module documentation](super#the-translation-cache-and-its-invalidation-contract):
/// call [`invalidate_root`](Self::invalidate_root) on CR3 writes,
/// [`invalidate_gfn`](Self::invalidate_gfn) when a page-table (or data) frame changes,
/// [`invalidate_all`](Self::invalidate_all) when in doubt.
///
/// **Bounds**: at most [`capacity`](Self::capacity) entries; when full, one entry is
/// evicted by a clock (second-chance) sweep. The reverse index from frames to entries
/// holds at most six references per entry.
///
/// **Threads**: every method takes `&mut self`; to share a cache between threads, wrap it
/// in a `Mutex`.
#[derive(Debug, Clone)]
pub struct TranslationCache {
    capacity: usize,
    slots: Vec<Option<Slot>>,
    /// Parallel to `slots`.
    deps: Vec<Deps>,
    free: Vec<usize>,
    index: HashMap<Key, usize, KeyHasherBuilder>,
    by_frame: HashMap<FrameTag, HashSet<usize>>,
    hand: usize,
    hits: u64,
    misses: u64,
}

impl Default for TranslationCache {
    fn default() -> Self {
        Self::new()
    }
}

impl TranslationCache {
    /// The capacity of [`TranslationCache::new`].
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// An empty cache holding up to [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY)
    /// translations.
    pub fn new() -> Self {
        Self::with_capacity(Self::DEFAULT_CAPACITY)
    }

    /// An empty cache holding up to `capacity` translations (0 disables caching).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            slots: Vec::new(),
            deps: Vec::new(),
            free: Vec::new(),
            index: HashMap::with_hasher(KeyHasherBuilder::random()),
            by_frame: HashMap::new(),
            hand: 0,
            hits: 0,
            misses: 0,
        }
    }

    /// Most translations held at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Translations held now.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no translation is held.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Lookups answered from the cache.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that needed a walk (failed walks included).
    pub fn misses(&self) -> u64 {
        self.misses
    }

    /// Translates `gva` like [`translate`](super::translate), answering from the cache when
    /// it can and caching successful walks.
    ///
    /// # Errors
    ///
    /// As [`translate`](super::translate). Errors are not cached.
    pub fn translate<M: PhysicalMemory + ?Sized>(
        &mut self,
        mem: &M,
        mode: impl Into<Translator>,
        root: Gpa,
        gva: Gva,
    ) -> Result<Translation> {
        let tr = mode.into();
        if tr.mode() == PagingMode::Disabled {
            return tr.translate(mem, root, gva);
        }
        let root = tr.root_base(root);
        for &size in tr.mode().page_sizes() {
            let key = Key {
                translator: tr,
                root,
                page: gva.0 & !size.offset_mask(),
                size,
            };
            if let Some(&i) = self.index.get(&key) {
                if let Some(Some(slot)) = self.slots.get_mut(i) {
                    slot.referenced = true;
                    self.hits += 1;
                    return Ok(slot.translation(gva));
                }
            }
        }
        self.misses += 1;
        let t = tr.translate(mem, root, gva)?;
        self.insert(tr, root, &t);
        Ok(t)
    }

    /// Reads guest virtual memory like [`read_virtual`](super::read_virtual), translating
    /// through the cache.
    ///
    /// # Errors
    ///
    /// As [`read_virtual`](super::read_virtual).
    pub fn read_virtual<M: PhysicalMemory + ?Sized>(
        &mut self,
        mem: &M,
        mode: impl Into<Translator>,
        root: Gpa,
        gva: Gva,
        buf: &mut [u8],
    ) -> Result<()> {
        let tr = mode.into();
        read_virtual_with(mem, gva, buf, |va| self.translate(mem, tr, root, va))
    }

    /// Drops every translation of the address space whose CR3 value is `root` (masked per
    /// cached mode, so PCID and flag bits do not matter). Costs one pass over the cache.
    pub fn invalidate_root(&mut self, root: Gpa) {
        for i in 0..self.slots.len() {
            let hit = matches!(
                self.slots.get(i),
                Some(Some(s)) if s.key.root == s.key.translator.root_base(root)
            );
            if hit {
                self.remove(i);
            }
        }
    }

    /// Drops every translation whose walk read a paging structure in frame `gfn`, or
    /// whose page (of any size) contains `gfn`.
    pub fn invalidate_gfn(&mut self, gfn: Gfn) {
        for size in [
            PageSize::Size4K,
            PageSize::Size2M,
            PageSize::Size4M,
            PageSize::Size1G,
        ] {
            if let Some(slots) = self.by_frame.remove(&FrameTag::containing(gfn, size)) {
                for i in slots {
                    self.remove(i);
                }
            }
        }
    }

    /// Drops every translation (the hit and miss counters are kept).
    pub fn invalidate_all(&mut self) {
        self.slots.clear();
        self.deps.clear();
        self.free.clear();
        self.index.clear();
        self.by_frame.clear();
        self.hand = 0;
    }

    /// Caches the successful walk `t`.
    fn insert(&mut self, tr: Translator, root: Gpa, t: &Translation) {
        let key = Key {
            translator: tr,
            root,
            page: t.virtual_page_base().0,
            size: t.page_size,
        };
        if let Some(&old) = self.index.get(&key) {
            self.remove(old);
        }
        let Some(i) = self.allocate() else {
            return;
        };
        let mut frames = [FrameTag::containing(t.gfn(), t.page_size); MAX_FRAMES];
        let mut frame_count = 1u8;
        for (dst, e) in frames.iter_mut().skip(1).zip(t.entries()) {
            *dst = FrameTag::containing(e.gpa.gfn(), PageSize::Size4K);
            frame_count += 1;
        }
        let slot = Slot {
            key,
            page_gpa: t.page_base(),
            writable: t.writable,
            user: t.user,
            executable: t.executable,
            level: t.level,
            referenced: false,
        };
        let deps = Deps {
            frames,
            count: frame_count,
        };
        for &tag in deps.frames() {
            self.by_frame.entry(tag).or_default().insert(i);
        }
        self.index.insert(key, i);
        if let (Some(s), Some(d)) = (self.slots.get_mut(i), self.deps.get_mut(i)) {
            *s = Some(slot);
            *d = deps;
        }
    }

    /// A free slot index, evicting an entry if the cache is full; `None` if the capacity
    /// is 0.
    fn allocate(&mut self) -> Option<usize> {
        if let Some(i) = self.free.pop() {
            return Some(i);
        }
        if self.slots.len() < self.capacity {
            self.slots.push(None);
            self.deps.push(Deps::NONE);
            return Some(self.slots.len() - 1);
        }
        self.evict_one();
        self.free.pop()
    }

    /// Clock sweep: clears reference bits until it finds an unreferenced entry and evicts
    /// it. One full turn clears every bit, so it stops within `len + 1` steps.
    fn evict_one(&mut self) {
        let n = self.slots.len();
        if n == 0 {
            return;
        }
        for _ in 0..=n {
            let i = self.hand % n;
            self.hand = (i + 1) % n;
            match self.slots.get_mut(i) {
                Some(Some(s)) if s.referenced => s.referenced = false,
                Some(Some(_)) => {
                    self.remove(i);
                    return;
                }
                _ => {
                    // Not reachable while the free list is empty; reuse it anyway.
                    self.free.push(i);
                    return;
                }
            }
        }
    }

    /// Removes the entry in slot `i` (if any) from the slot table and both indexes.
    fn remove(&mut self, i: usize) {
        let Some(slot) = self.slots.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.index.remove(&slot.key);
        let deps = self.deps.get(i).copied().unwrap_or(Deps::NONE);
        for tag in deps.frames() {
            if let Entry::Occupied(mut o) = self.by_frame.entry(*tag) {
                o.get_mut().remove(&i);
                if o.get().is_empty() {
                    o.remove();
                }
            }
        }
        self.free.push(i);
    }

    /// Total references held by the reverse index (for bound checks in tests).
    #[cfg(test)]
    pub(super) fn reverse_index_refs(&self) -> usize {
        self.by_frame.values().map(HashSet::len).sum()
    }
}

// The hit path's footprint (see `Slot`).
const _: () = assert!(core::mem::size_of::<Option<Slot>>() <= 40);
