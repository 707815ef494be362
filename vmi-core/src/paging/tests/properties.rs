//! Property tests: the walker, the naive reference walker and the cache agree on random
//! tables; nothing panics on random memory.

use proptest::prelude::*;

use super::*;

#[test]
fn reference_walker_agrees_on_hand_built_tables() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mem = four_k(LONG, gva, 0x0123_4567_8000 | PWU | XD);
    let r = reference::translate(&mem, LONG, 52, 0x1000, gva).unwrap();
    assert_eq!(r.gpa, 0x0123_4567_8abc);
    assert_eq!((r.size, r.level, r.executable), (4096, 1, false));
    let mut mem = SparseMemory::new();
    set(
        &mut mem,
        PSE,
        2,
        0x1000,
        0xc012_3456,
        0x0840_0000 | (0x3 << 13) | PS | PWU,
    );
    let r = reference::translate(&mem, PSE, 36, 0x1000, 0xc012_3456).unwrap();
    assert_eq!((r.gpa, r.size), (0x3_0852_3456, 4 << 20));
}

// ---------------------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------------------

/// splitmix64: the memory generator's randomness, seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// True with probability 1/n.
    fn one_in(&mut self, n: u64) -> bool {
        self.next() % n == 0
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[(self.next() % items.len() as u64) as usize]
    }
}

/// Where the generated paging structures live (one above 4 GiB).
const TABLES: [u64; 6] = [0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x1_0000_3000];

const MODES: [PagingMode; 8] = [
    PagingMode::Legacy32 { pse: false },
    PagingMode::Legacy32 { pse: true },
    PagingMode::Pae { nxe: false },
    PagingMode::Pae { nxe: true },
    PagingMode::Ia32e { nxe: false },
    PagingMode::Ia32e { nxe: true },
    PagingMode::Ia32e5 { nxe: false },
    PagingMode::Ia32e5 { nxe: true },
];

const PHYS_BITS: [u32; 5] = [32, 36, 39, 46, 52];

/// An entry that is usually a plausible pointer into the tables, with random flags and
/// now and then a large page, a stray high bit, XD, PSE-36 bits or complete garbage.
fn random_entry(rng: &mut Rng, wide: bool) -> u64 {
    if rng.one_in(16) {
        let v = rng.next();
        return if wide { v } else { v & 0xffff_ffff };
    }
    let target = match rng.next() % 10 {
        0..=7 => rng.pick(&TABLES),
        8 => (rng.next() % 0x10_0000) << 12,
        _ => rng.next() & 0x000f_ffff_ffff_f000,
    };
    let mut e = target | (rng.next() & 0xfff & !(P | PS));
    if !rng.one_in(12) {
        e |= P;
    }
    if rng.one_in(5) {
        e |= PS;
        if rng.one_in(2) {
            // A plausibly aligned large page.
            e &= !0x3fff_e000;
        }
    }
    if rng.one_in(8) {
        e |= (rng.next() & 0xff) << 13;
    }
    if !wide {
        return e & 0xffff_ffff;
    }
    if rng.one_in(8) {
        e |= XD;
    }
    if rng.one_in(3) {
        // Shaped like a valid PAE PDPTE: no bits 2:1, 8:5 or 63.
        e &= !(RW | US | 0x1e0 | XD);
    }
    if rng.one_in(12) {
        e |= 1 << (rng.next() % 64);
    }
    e
}

/// Fills every table with random entries for `mode`'s entry width.
fn random_tables(seed: u64, mode: PagingMode) -> SparseMemory {
    let mut rng = Rng(seed);
    let wide = !matches!(mode, PagingMode::Legacy32 { .. });
    let mut mem = SparseMemory::new();
    for &table in &TABLES {
        let mut page = [0u8; 4096];
        if wide {
            for chunk in page.chunks_exact_mut(8) {
                chunk.copy_from_slice(&random_entry(&mut rng, true).to_le_bytes());
            }
        } else {
            for chunk in page.chunks_exact_mut(4) {
                let e = random_entry(&mut rng, false) as u32;
                chunk.copy_from_slice(&e.to_le_bytes());
            }
        }
        mem.write(Gpa(table), &page);
    }
    mem
}

/// A random CR3 value, usually one of the tables plus flag/PCID bits.
fn random_cr3(rng: &mut Rng) -> u64 {
    match rng.next() % 8 {
        0 => rng.next(),
        1 => rng.pick(&TABLES) + 0x20 * (rng.next() % 128),
        _ => rng.pick(&TABLES) | (rng.next() & 0xfff),
    }
}

/// A random linear address, usually valid for `mode`.
fn random_gva(rng: &mut Rng, mode: PagingMode) -> u64 {
    let raw = rng.next();
    if rng.one_in(8) {
        return raw;
    }
    match mode {
        PagingMode::Ia32e { .. } => Gva(raw).canonical(48).0,
        PagingMode::Ia32e5 { .. } => Gva(raw).canonical(57).0,
        _ => raw & 0xffff_ffff,
    }
}

/// Outcome counts of an agreement run, to check the generator reaches every case.
#[derive(Default, Debug)]
struct Outcomes {
    ok: usize,
    ok_large: usize,
    faults: Vec<PageFaultReason>,
}

/// Checks the walker, the reference and the cache agree on `gvas` random addresses.
fn check_agreement(
    seed: u64,
    mode: PagingMode,
    m: u32,
    gvas: usize,
) -> Result<Outcomes, TestCaseError> {
    let mem = random_tables(seed, mode);
    let mut rng = Rng(seed ^ 0x5555_5555_5555_5555);
    let tr = Translator::new(mode).with_max_phys_bits(m);
    let mut cache = TranslationCache::with_capacity(16);
    let mut out = Outcomes::default();
    for _ in 0..gvas {
        let cr3 = random_cr3(&mut rng);
        let gva = random_gva(&mut rng, mode);
        let got = tr.translate(&mem, Gpa(cr3), Gva(gva));
        let want = reference::translate(&mem, mode, m, cr3, gva);
        match (&got, &want) {
            (Ok(t), Ok(w)) => {
                let entries: Vec<u64> = t.entries().iter().map(|e| e.value).collect();
                let t_view = (
                    t.gpa.0,
                    t.page_size.bytes(),
                    t.level,
                    t.writable,
                    t.user,
                    t.executable,
                );
                let w_view = (w.gpa, w.size, w.level, w.writable, w.user, w.executable);
                prop_assert_eq!(
                    t_view,
                    w_view,
                    "mode {:?} m {} cr3 {:#x} gva {:#x}",
                    mode,
                    m,
                    cr3,
                    gva
                );
                prop_assert_eq!(&entries, &w.entries);
                prop_assert_eq!(t.gva, Gva(gva));
                out.ok += 1;
                if t.level > 1 {
                    out.ok_large += 1;
                }
            }
            (
                Err(Error::PageFault {
                    level,
                    reason,
                    entry,
                    root,
                    gva: fault_gva,
                }),
                Err(w),
            ) => {
                prop_assert_eq!(
                    (*level, *reason, *entry),
                    *w,
                    "mode {:?} m {} cr3 {:#x} gva {:#x}",
                    mode,
                    m,
                    cr3,
                    gva
                );
                prop_assert_eq!(*root, tr.root_base(Gpa(cr3)));
                prop_assert_eq!(*fault_gva, Gva(gva));
                if !out.faults.contains(reason) {
                    out.faults.push(*reason);
                }
            }
            _ => prop_assert!(
                false,
                "mode {:?} m {} cr3 {:#x} gva {:#x}: {:?} vs {:?}",
                mode,
                m,
                cr3,
                gva,
                got,
                want
            ),
        }
        // The cache gives the same answer, twice.
        for _ in 0..2 {
            let cached = cache.translate(&mem, tr, Gpa(cr3), Gva(gva));
            match (&cached, &got) {
                (Ok(c), Ok(g)) => prop_assert!(cache::same(c, g), "{:?} vs {:?}", c, g),
                (
                    Err(Error::PageFault {
                        level: a,
                        reason: b,
                        ..
                    }),
                    Err(Error::PageFault {
                        level: c,
                        reason: d,
                        ..
                    }),
                ) => {
                    prop_assert_eq!((a, b), (c, d));
                }
                _ => prop_assert!(false, "cache {:?} vs walk {:?}", cached, got),
            }
        }
    }
    Ok(out)
}

#[test]
fn generator_reaches_every_outcome() {
    for mode in MODES {
        let mut total = Outcomes::default();
        for seed in 0..40u64 {
            let out = check_agreement(seed, mode, 52, 64).unwrap();
            total.ok += out.ok;
            total.ok_large += out.ok_large;
            for r in out.faults {
                if !total.faults.contains(&r) {
                    total.faults.push(r);
                }
            }
        }
        assert!(total.ok >= 50, "{mode:?}: {total:?}");
        if mode != LEGACY {
            assert!(total.ok_large >= 10, "{mode:?}: {total:?}");
        }
        for reason in [
            PageFaultReason::NotPresent,
            PageFaultReason::UnreadableTable,
            PageFaultReason::NonCanonical,
        ] {
            assert!(
                total.faults.contains(&reason),
                "{mode:?} {reason:?}: {total:?}"
            );
        }
        if mode != LEGACY {
            assert!(
                total.faults.contains(&PageFaultReason::ReservedBit),
                "{mode:?}: {total:?}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// The production walker and the reference agree exactly on random tables.
    #[test]
    fn walker_matches_reference(seed in any::<u64>(), mode in 0..MODES.len(), m in 0..PHYS_BITS.len()) {
        check_agreement(seed, MODES[mode], PHYS_BITS[m], 48)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 128,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Nothing panics on fully random memory, roots and addresses.
    #[test]
    fn walker_never_panics(
        words in prop::collection::vec(any::<u64>(), 4 * 512),
        cr3s in prop::collection::vec(any::<u64>(), 8),
        gvas in prop::collection::vec(any::<u64>(), 16),
        m in 0u32..64,
    ) {
        let mut mem = SparseMemory::new();
        for (i, w) in words.iter().enumerate() {
            mem.write_u64(Gpa(i as u64 * 8), *w);
        }
        let mut cache = TranslationCache::with_capacity(4);
        let modes = MODES.iter().copied().chain([PagingMode::Disabled]);
        for mode in modes {
            let tr = Translator::new(mode).with_max_phys_bits(m);
            for &cr3 in &cr3s {
                for &gva in &gvas {
                    for cr3 in [cr3, cr3 & 0x3fff] {
                        let _ = tr.translate(&mem, Gpa(cr3), Gva(gva));
                        let _ = cache.translate(&mem, tr, Gpa(cr3), Gva(gva));
                    }
                }
                let mut buf = [0u8; 64];
                let _ = tr.read_virtual(&mem, Gpa(cr3), Gva(gvas[0]), &mut buf);
                cache.invalidate_gfn(Gfn(cr3 >> 12));
            }
            cache.invalidate_root(Gpa(cr3s[0]));
        }
    }
}
