//! The translation cache: hits, large pages, invalidation, capacity.

use super::*;

// ---------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------

/// Compares everything but the recorded entries.
pub(super) fn same(a: &Translation, b: &Translation) -> bool {
    (
        a.gva,
        a.gpa,
        a.page_size,
        a.writable,
        a.user,
        a.executable,
        a.level,
    ) == (
        b.gva,
        b.gpa,
        b.page_size,
        b.writable,
        b.user,
        b.executable,
        b.level,
    )
}

#[test]
fn cache_hits_after_a_miss() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mem = four_k(LONG, gva, 0x9000 | P);
    let mut cache = TranslationCache::new();
    let a = cache.translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!((cache.hits(), cache.misses(), cache.len()), (0, 1, 1));
    let b = cache
        .translate(&mem, LONG, Gpa(0x1abc), Gva(gva - 0x10))
        .unwrap();
    assert_eq!((cache.hits(), cache.misses()), (1, 1));
    assert_eq!(b.gpa, Gpa(0x9aac));
    assert!(b.entries().is_empty());
    assert!(same(
        &a,
        &translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap()
    ));
    assert!(!b.writable && !b.user && b.executable);
    // Another mode (or MAXPHYADDR) is another key.
    let m46 = Translator::new(LONG).with_max_phys_bits(46);
    cache.translate(&mem, m46, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!((cache.misses(), cache.len()), (2, 2));
}

#[test]
fn cache_holds_a_large_page_once() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000],
        &[PWU],
        0x4000_0000 | PS | PWU,
    );
    let mut cache = TranslationCache::new();
    for off in [0u64, 0x1000, 0x12_3456, 0x3fff_0000] {
        let va = (gva & !0x3fff_ffff) + off;
        let t = cache.translate(&mem, LONG, Gpa(0x1000), Gva(va)).unwrap();
        assert_eq!(t.gpa, Gpa(0x4000_0000 + off));
        assert_eq!(t.page_size, PageSize::Size1G);
    }
    assert_eq!((cache.hits(), cache.misses(), cache.len()), (3, 1, 1));
}

#[test]
fn cache_invalidate_gfn_of_a_page_table() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mut mem = four_k(LONG, gva, 0x9000 | PWU);
    let mut cache = TranslationCache::new();
    assert_eq!(
        cache
            .translate(&mem, LONG, Gpa(0x1000), Gva(gva))
            .unwrap()
            .gpa,
        Gpa(0x9abc)
    );
    // The guest rewrites its PTE (page table at 0x4000).
    set(&mut mem, LONG, 1, 0x4000, gva, 0x7000 | PWU);
    // Unrelated frames do not drop the entry, so it is stale...
    cache.invalidate_gfn(Gfn(0x8));
    assert_eq!(
        cache
            .translate(&mem, LONG, Gpa(0x1000), Gva(gva))
            .unwrap()
            .gpa,
        Gpa(0x9abc)
    );
    // ...until the page-table frame is invalidated.
    cache.invalidate_gfn(Gfn(0x4));
    assert!(cache.is_empty());
    assert_eq!(
        cache
            .translate(&mem, LONG, Gpa(0x1000), Gva(gva))
            .unwrap()
            .gpa,
        Gpa(0x7abc)
    );

    // Every table frame and the data frame count.
    for gfn in [1u64, 2, 3, 4, 7] {
        cache.translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
        assert_eq!(cache.len(), 1);
        cache.invalidate_gfn(Gfn(gfn));
        assert!(cache.is_empty(), "gfn {gfn:#x}");
    }
    assert_eq!(cache.reverse_index_refs(), 0);

    // A frame inside a large data page.
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[PWU, PWU],
        0x4060_0000 | PS | PWU,
    );
    cache.translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
    cache.invalidate_gfn(Gfn(0x40800));
    assert_eq!(cache.len(), 1);
    cache.invalidate_gfn(Gfn(0x40671));
    assert!(cache.is_empty());
}

#[test]
fn cache_invalidate_root_and_all() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mut mem = four_k(LONG, gva, 0x9000 | PWU);
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x11000, 0x12000, 0x13000, 0x14000],
        &[PWU, PWU, PWU],
        0x8000 | PWU,
    );
    let mut cache = TranslationCache::new();
    cache.translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
    cache.translate(&mem, LONG, Gpa(0x11000), Gva(gva)).unwrap();
    assert_eq!(cache.len(), 2);
    // PCID bits in the CR3 value do not matter.
    cache.invalidate_root(Gpa(0x1005));
    assert_eq!(cache.len(), 1);
    assert_eq!(
        cache
            .translate(&mem, LONG, Gpa(0x11000), Gva(gva))
            .unwrap()
            .gpa,
        Gpa(0x8abc)
    );
    assert_eq!(cache.hits(), 1);
    cache.translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
    cache.invalidate_all();
    assert!(cache.is_empty());
    assert_eq!(cache.reverse_index_refs(), 0);
    assert_eq!((cache.hits(), cache.misses()), (1, 3));
}

#[test]
fn cache_capacity_is_respected() {
    // One page table mapping 512 pages.
    let base = 0x0000_0040_0000_0000u64;
    let mut mem = four_k(LONG, base, 0x10_0000 | PWU);
    for i in 0..512u64 {
        set(
            &mut mem,
            LONG,
            1,
            0x4000,
            base + i * 4096,
            (0x10_0000 + i * 4096) | PWU,
        );
    }
    let mut cache = TranslationCache::with_capacity(8);
    for i in 0..512u64 {
        let t = cache
            .translate(&mem, LONG, Gpa(0x1000), Gva(base + i * 4096 + 5))
            .unwrap();
        assert_eq!(t.gpa, Gpa(0x10_0000 + i * 4096 + 5));
        assert!(cache.len() <= 8);
        assert!(cache.reverse_index_refs() <= 6 * 8);
    }
    assert_eq!(cache.len(), 8);
    assert_eq!(cache.capacity(), 8);

    // Second chance: a recently used entry survives an eviction.
    let mut cache = TranslationCache::with_capacity(4);
    let va = |i: u64| Gva(base + i * 4096);
    for i in 0..4 {
        cache.translate(&mem, LONG, Gpa(0x1000), va(i)).unwrap();
    }
    cache.translate(&mem, LONG, Gpa(0x1000), va(0)).unwrap();
    cache.translate(&mem, LONG, Gpa(0x1000), va(4)).unwrap();
    let hits = cache.hits();
    cache.translate(&mem, LONG, Gpa(0x1000), va(0)).unwrap();
    assert_eq!(cache.hits(), hits + 1);
    assert_eq!(cache.len(), 4);

    // Capacity 0 caches nothing but still translates.
    let mut cache = TranslationCache::with_capacity(0);
    cache.translate(&mem, LONG, Gpa(0x1000), va(1)).unwrap();
    cache.translate(&mem, LONG, Gpa(0x1000), va(1)).unwrap();
    assert_eq!((cache.len(), cache.hits(), cache.misses()), (0, 0, 2));
}

#[test]
fn cache_does_not_keep_failures_or_identity() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mut mem = four_k(LONG, gva, 0x9000 | RW);
    let mut cache = TranslationCache::new();
    assert!(cache.translate(&mem, LONG, Gpa(0x1000), Gva(gva)).is_err());
    set(&mut mem, LONG, 1, 0x4000, gva, 0x9000 | P);
    assert_eq!(
        cache
            .translate(&mem, LONG, Gpa(0x1000), Gva(gva))
            .unwrap()
            .gpa,
        Gpa(0x9abc)
    );
    let t = cache
        .translate(&mem, PagingMode::Disabled, Gpa(0), Gva(0x1234))
        .unwrap();
    assert_eq!(t.gpa, Gpa(0x1234));
    assert_eq!(cache.len(), 1);
}
