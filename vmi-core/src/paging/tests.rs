//! Tests of the page walk, `read_virtual` and the translation cache: hand-built tables for
//! every mode, and property tests against a deliberately naive reference walker.

use proptest::prelude::*;

use super::*;
use crate::memory::SparseMemory;

const P: u64 = 1;
const RW: u64 = 1 << 1;
const US: u64 = 1 << 2;
const PS: u64 = 1 << 7;
const XD: u64 = 1 << 63;
const PWU: u64 = P | RW | US;

const LEGACY: PagingMode = PagingMode::Legacy32 { pse: false };
const PSE: PagingMode = PagingMode::Legacy32 { pse: true };
const PAE: PagingMode = PagingMode::Pae { nxe: true };
const LONG: PagingMode = PagingMode::Ia32e { nxe: true };
const LA57: PagingMode = PagingMode::Ia32e5 { nxe: true };

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// Index of `gva`'s entry at `level` (computed by division, independently of the walker).
fn idx(mode: PagingMode, level: u8, gva: u64) -> u64 {
    let (per_table, span) = match mode {
        PagingMode::Legacy32 { .. } => (1024, 4096 * 1024u64.pow(u32::from(level) - 1)),
        PagingMode::Pae { .. } if level == 3 => (4, 1 << 30),
        _ => (512, 4096 * 512u64.pow(u32::from(level) - 1)),
    };
    (gva / span) % per_table
}

/// Writes the entry for `gva` at `level` into the table at `table`.
fn set(mem: &mut SparseMemory, mode: PagingMode, level: u8, table: u64, gva: u64, value: u64) {
    if matches!(mode, PagingMode::Legacy32 { .. }) {
        let v = u32::try_from(value).expect("32-bit entry");
        mem.write(Gpa(table + idx(mode, level, gva) * 4), &v.to_le_bytes());
    } else {
        mem.write_u64(Gpa(table + idx(mode, level, gva) * 8), value);
    }
}

/// Writes a chain of entries for `gva`: `tables[0]` is the top-level table; the entry in
/// `tables[k]` points to `tables[k + 1]` with `flags[k]`, and the entry in the last table
/// is `leaf`.
fn chain(
    mem: &mut SparseMemory,
    mode: PagingMode,
    gva: u64,
    tables: &[u64],
    flags: &[u64],
    leaf: u64,
) {
    assert_eq!(flags.len() + 1, tables.len());
    let top = mode.levels();
    for (k, &table) in tables.iter().enumerate() {
        let level = top - k as u8;
        let value = match tables.get(k + 1) {
            Some(next) => next | flags[k],
            None => leaf,
        };
        set(mem, mode, level, table, gva, value);
    }
}

/// The (level, reason, entry) of a page fault; panics on anything else.
fn pf<T: core::fmt::Debug>(r: Result<T>) -> (u8, PageFaultReason, u64) {
    match r {
        Err(Error::PageFault {
            level,
            reason,
            entry,
            ..
        }) => (level, reason, entry),
        other => panic!("expected a page fault, got {other:?}"),
    }
}

/// Root table addresses for a full chain in `mode` (top first).
fn tables_for(mode: PagingMode) -> Vec<u64> {
    (1..=u64::from(mode.levels())).map(|k| k * 0x1000).collect()
}

/// Memory with a full 4 KiB-page chain for `gva` in `mode` (root at 0x1000, tables at
/// 0x2000, …), every upper entry P|RW|US, leaf `leaf`.
fn four_k(mode: PagingMode, gva: u64, leaf: u64) -> SparseMemory {
    let mut mem = SparseMemory::new();
    let tables = tables_for(mode);
    let mut flags = vec![PWU; tables.len() - 1];
    if matches!(mode, PagingMode::Pae { .. }) {
        flags[0] = P; // PDPTEs have no permission bits
    }
    chain(&mut mem, mode, gva, &tables, &flags, leaf);
    mem
}

// ---------------------------------------------------------------------------------------
// Mode selection and types
// ---------------------------------------------------------------------------------------

#[test]
fn mode_from_registers() {
    const PG: u64 = 1 << 31;
    const PE: u64 = 1;
    assert_eq!(
        PagingMode::from_registers(PE, 1 << 5, 1 << 10),
        PagingMode::Disabled
    );
    assert_eq!(PagingMode::from_registers(PE | PG, 0, 1 << 11), LEGACY);
    assert_eq!(PagingMode::from_registers(PE | PG, 1 << 4, 0), PSE);
    assert_eq!(
        PagingMode::from_registers(PE | PG, 1 << 5 | 1 << 4, 0),
        PagingMode::Pae { nxe: false }
    );
    assert_eq!(PagingMode::from_registers(PE | PG, 1 << 5, 1 << 11), PAE);
    assert_eq!(
        PagingMode::from_registers(PE | PG, 1 << 5, 1 << 10 | 1 << 8),
        PagingMode::Ia32e { nxe: false }
    );
    assert_eq!(
        PagingMode::from_registers(PE | PG, 1 << 5, 1 << 10 | 1 << 11),
        LONG
    );
    assert_eq!(
        PagingMode::from_registers(PE | PG, 1 << 5 | 1 << 12, 1 << 10 | 1 << 11),
        LA57
    );
    // LMA without PG is not IA-32e mode.
    assert_eq!(
        PagingMode::from_registers(PE, 1 << 5, 1 << 10),
        PagingMode::Disabled
    );
}

#[test]
fn page_sizes_and_translator_parameters() {
    assert_eq!(PageSize::Size4K.bytes(), 4096);
    assert_eq!(PageSize::Size2M.bytes(), 2 << 20);
    assert_eq!(PageSize::Size4M.bytes(), 4 << 20);
    assert_eq!(PageSize::Size1G.bytes(), 1 << 30);
    assert_eq!(Translator::new(LONG).max_phys_bits(), 52);
    assert_eq!(
        Translator::new(LONG).with_max_phys_bits(39).max_phys_bits(),
        39
    );
    assert_eq!(
        Translator::new(LONG).with_max_phys_bits(99).max_phys_bits(),
        52
    );
    assert_eq!(
        Translator::new(LONG).with_max_phys_bits(3).max_phys_bits(),
        32
    );
    assert_eq!(Translator::from(PAE).mode(), PAE);
}

#[test]
fn disabled_is_identity() {
    let mem = SparseMemory::new();
    let t = translate(
        &mem,
        PagingMode::Disabled,
        Gpa(0xdead_b000),
        Gva(0x1234_5678),
    )
    .unwrap();
    assert_eq!(t.gpa, Gpa(0x1234_5678));
    assert_eq!(t.page_size, PageSize::Size4K);
    assert_eq!(
        (t.writable, t.user, t.executable, t.level),
        (true, true, true, 0)
    );
    assert!(t.entries().is_empty());
    assert_eq!(
        pf(translate(
            &mem,
            PagingMode::Disabled,
            Gpa(0),
            Gva(0x1_0000_0000)
        )),
        (0, PageFaultReason::NonCanonical, 0)
    );
}

// ---------------------------------------------------------------------------------------
// Each mode and page size
// ---------------------------------------------------------------------------------------

#[test]
fn legacy32_4k() {
    let gva = 0xc012_3456;
    let mem = four_k(LEGACY, gva, 0x0abc_d000 | PWU);
    let t = translate(&mem, LEGACY, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x0abc_d456));
    assert_eq!((t.page_size, t.level), (PageSize::Size4K, 1));
    assert!(t.writable && t.user && t.executable);
    let e = t.entries();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].level, 2);
    assert_eq!(e[0].gpa, Gpa(0x1000 + (gva >> 22) * 4));
    assert_eq!(e[0].value, 0x2000 | PWU);
    assert_eq!(e[1].gpa, Gpa(0x2000 + ((gva >> 12) & 0x3ff) * 4));
    assert_eq!(e[1].value, 0x0abc_d000 | PWU);
}

#[test]
fn legacy32_4m_with_pse_and_ignored_without() {
    let gva = 0xc012_3456;
    let mut mem = SparseMemory::new();
    set(&mut mem, PSE, 2, 0x1000, gva, 0x0840_0000 | PS | PWU);
    let t = translate(&mem, PSE, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x0852_3456));
    assert_eq!((t.page_size, t.level), (PageSize::Size4M, 2));
    assert_eq!(t.page_base(), Gpa(0x0840_0000));
    // Without CR4.PSE the PS bit is ignored: the PDE points to a page table at 0x0840_0000.
    assert_eq!(
        pf(translate(&mem, LEGACY, Gpa(0x1000), Gva(gva))),
        (1, PageFaultReason::UnreadableTable, 0)
    );
    set(&mut mem, LEGACY, 1, 0x0840_0000, gva, 0x7000 | P);
    let t = translate(&mem, LEGACY, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!((t.gpa, t.page_size), (Gpa(0x7456), PageSize::Size4K));
}

#[test]
fn pse36_high_physical_bits() {
    let gva = 0xc012_3456;
    let mut mem = SparseMemory::new();
    set(
        &mut mem,
        PSE,
        2,
        0x1000,
        gva,
        0x0840_0000 | (0x3 << 13) | PS | PWU,
    );
    let t = translate(&mem, PSE, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x3_0852_3456));
    let m36 = Translator::new(PSE).with_max_phys_bits(36);
    assert_eq!(
        translate(&mem, m36, Gpa(0x1000), Gva(gva)).unwrap().gpa,
        Gpa(0x3_0852_3456)
    );

    // PDE bit 20 is physical bit 39: fine with MAXPHYADDR 40 or more, reserved with 36.
    let pde = 0x0840_0000 | (0x80 << 13) | PS | PWU;
    set(&mut mem, PSE, 2, 0x1000, gva, pde);
    assert_eq!(
        translate(&mem, PSE, Gpa(0x1000), Gva(gva)).unwrap().gpa,
        Gpa(0x80_0852_3456)
    );
    let m40 = Translator::new(PSE).with_max_phys_bits(40);
    assert_eq!(
        translate(&mem, m40, Gpa(0x1000), Gva(gva)).unwrap().gpa,
        Gpa(0x80_0852_3456)
    );
    assert_eq!(
        pf(translate(&mem, m36, Gpa(0x1000), Gva(gva))),
        (2, PageFaultReason::ReservedBit, pde)
    );
    // Bit 21 is always reserved in a 4 MiB PDE.
    let pde = 0x0840_0000 | (1 << 21) | PS | PWU;
    set(&mut mem, PSE, 2, 0x1000, gva, pde);
    assert_eq!(
        pf(translate(&mem, PSE, Gpa(0x1000), Gva(gva))),
        (2, PageFaultReason::ReservedBit, pde)
    );
}

#[test]
fn pae_4k_and_2m() {
    let gva = 0xc012_3456u64;
    // The PDPT is 32-byte aligned, not page aligned.
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        PAE,
        gva,
        &[0x1020, 0x2000, 0x3000],
        &[P, PWU],
        0x1_2345_6000 | PWU | XD,
    );
    let t = translate(&mem, PAE, Gpa(0x1020), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x1_2345_6456));
    assert_eq!((t.page_size, t.level), (PageSize::Size4K, 1));
    assert!(t.writable && t.user && !t.executable);
    assert_eq!(t.entries().len(), 3);
    assert_eq!(t.entries()[0].gpa, Gpa(0x1020 + 3 * 8));
    assert_eq!(t.entries()[0].level, 3);

    let gva2 = 0x4012_3456u64;
    set(&mut mem, PAE, 3, 0x1020, gva2, 0x4000 | P);
    set(&mut mem, PAE, 2, 0x4000, gva2, 0x8_4060_0000 | PS | P);
    let t = translate(&mem, PAE, Gpa(0x1020), Gva(gva2)).unwrap();
    assert_eq!(t.gpa, Gpa(0x8_4060_0000 | (gva2 & 0x1f_ffff)));
    assert_eq!((t.page_size, t.level), (PageSize::Size2M, 2));
    assert!(!t.writable && !t.user && t.executable);
}

#[test]
fn pae_pdpte_as_tcg_sets_it_translates() {
    // A PDPTE of a 32-bit Debian 686-pae guest under QEMU TCG: present, PD at 0x13e94000,
    // and bit 5 (accessed), which TCG sets on its walks. The SDM reserves bit 5, but the
    // emulated CPU uses the entry, so the walk must too.
    let pdpte = 0x13e9_4021u64;
    let gva = 0xc100_0abcu64; // PDPTE 3, the kernel's quarter
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        PAE,
        gva,
        &[0x1020, 0x13e9_4000, 0x3000],
        &[P, PWU],
        0x0100_0000 | PWU,
    );
    set(&mut mem, PAE, 3, 0x1020, gva, pdpte);
    let t = translate(&mem, PAE, Gpa(0x1020), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x0100_0abc));
    assert_eq!(t.entries()[0].value, pdpte);
    assert!(t.writable && t.user, "a PDPTE carries no permissions");
    // The same with a 2 MiB page, and through the cache.
    set(&mut mem, PAE, 2, 0x13e9_4000, gva, 0x0120_0000 | PS | PWU);
    let mut cache = TranslationCache::new();
    for _ in 0..2 {
        let t = cache.translate(&mem, PAE, Gpa(0x1020), Gva(gva)).unwrap();
        assert_eq!((t.gpa, t.page_size), (Gpa(0x0120_0abc), PageSize::Size2M));
    }
    assert_eq!(cache.hits(), 1);
}

#[test]
fn pae_pdpte_tolerated_bits() {
    // Bits 2:1 and 8:5 (SDM-reserved, accepted by TCG) and PS are ignored, alone and
    // together; they grant no permissions and never make a large page.
    let gva = 0x8000_0000u64;
    for extra in [RW, US, 1 << 5, 1 << 6, PS, 1 << 8, RW | US | 0x1e0] {
        let mut mem = SparseMemory::new();
        chain(
            &mut mem,
            PAE,
            gva,
            &[0x1000, 0x2000, 0x3000],
            &[P | extra, P],
            0x5000 | P,
        );
        let t = translate(&mem, PAE, Gpa(0x1000), Gva(gva))
            .unwrap_or_else(|e| panic!("PDPTE bit {extra:#x}: {e}"));
        assert_eq!((t.gpa, t.level), (Gpa(0x5000), 1), "PDPTE bits {extra:#x}");
        assert!(!t.writable && !t.user, "PDPTE bits {extra:#x}");
    }
}

#[test]
fn pae_pdpte_reserved_bits() {
    let gva = 0x8000_0000u64;
    for bad in [XD, 1 << 62, 1 << 52] {
        let mut mem = SparseMemory::new();
        chain(
            &mut mem,
            PAE,
            gva,
            &[0x1000, 0x2000, 0x3000],
            &[P | bad, PWU],
            0x5000 | P,
        );
        assert_eq!(
            pf(translate(&mem, PAE, Gpa(0x1000), Gva(gva))),
            (3, PageFaultReason::ReservedBit, 0x2000 | P | bad),
            "PDPTE bit {bad:#x}"
        );
    }
    // Bits 51:MAXPHYADDR of the PD address, with MAXPHYADDR = 36.
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        PAE,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[P | 1 << 40, PWU],
        0x5000 | P,
    );
    let m36 = Translator::new(PAE).with_max_phys_bits(36);
    assert_eq!(
        pf(translate(&mem, m36, Gpa(0x1000), Gva(gva))),
        (3, PageFaultReason::ReservedBit, 0x2000 | P | 1 << 40)
    );
    // Bits 62:MAXPHYADDR are reserved in PAE PDEs and PTEs (IA-32e ignores 62:52).
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        PAE,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[P, PWU],
        0x5000 | P | 1 << 55,
    );
    assert_eq!(pf(translate(&mem, PAE, Gpa(0x1000), Gva(gva))).0, 1);
    let m36 = Translator::new(PAE).with_max_phys_bits(36);
    chain(
        &mut mem,
        PAE,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[P, PWU | 1 << 40],
        0x5000 | P,
    );
    assert_eq!(pf(translate(&mem, m36, Gpa(0x1000), Gva(gva))).0, 2);
    // 2 MiB PDE: bits 20:13 reserved.
    set(&mut mem, PAE, 2, 0x2000, gva, 0x20_0000 | PS | P | 1 << 13);
    assert_eq!(
        pf(translate(&mem, PAE, Gpa(0x1000), Gva(gva))).1,
        PageFaultReason::ReservedBit
    );
}

#[test]
fn ia32e_4k() {
    let gva = 0x0000_7f12_3456_7abc;
    let mem = four_k(LONG, gva, 0x0123_4567_8000 | PWU);
    let t = translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x0123_4567_8abc));
    assert_eq!((t.page_size, t.level), (PageSize::Size4K, 1));
    assert!(t.writable && t.user && t.executable);
    let levels: Vec<u8> = t.entries().iter().map(|e| e.level).collect();
    assert_eq!(levels, [4, 3, 2, 1]);
    let gpas: Vec<Gpa> = t.entries().iter().map(|e| e.gpa).collect();
    assert_eq!(
        gpas,
        [
            Gpa(0x1000 + ((gva >> 39) & 511) * 8),
            Gpa(0x2000 + ((gva >> 30) & 511) * 8),
            Gpa(0x3000 + ((gva >> 21) & 511) * 8),
            Gpa(0x4000 + ((gva >> 12) & 511) * 8),
        ]
    );
    // Kernel-half (sign-extended) addresses work too.
    let kva = 0xffff_8880_0010_2345u64;
    let mem = four_k(LONG, kva, 0x0010_2000 | P | RW);
    let t = translate(&mem, LONG, Gpa(0x1000), Gva(kva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x0010_2345));
    assert!(!t.user);
}

#[test]
fn ia32e_2m_and_1g() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[PWU, PWU],
        0x4060_0000 | PS | PWU,
    );
    let t = translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x4060_0000 | (gva & 0x1f_ffff)));
    assert_eq!(
        (t.page_size, t.level, t.entries().len()),
        (PageSize::Size2M, 2, 3)
    );

    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000],
        &[PWU],
        0x8_4000_0000 | PS | PWU,
    );
    let t = translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x8_4000_0000 | (gva & 0x3fff_ffff)));
    assert_eq!(
        (t.page_size, t.level, t.entries().len()),
        (PageSize::Size1G, 3, 2)
    );
}

#[test]
fn la57_4k_and_1g() {
    // Canonical with 57 bits, not with 48.
    let gva = 0x00ff_8000_1234_5678u64;
    let mem = four_k(LA57, gva, 0x0009_9000 | PWU);
    let t = translate(&mem, LA57, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x0009_9678));
    assert_eq!(
        (t.page_size, t.level, t.entries().len()),
        (PageSize::Size4K, 1, 5)
    );
    assert_eq!(t.entries()[0].gpa, Gpa(0x1000 + ((gva >> 48) & 511) * 8));
    assert_eq!(
        pf(translate(&mem, LONG, Gpa(0x1000), Gva(gva))),
        (4, PageFaultReason::NonCanonical, 0)
    );

    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LA57,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[PWU, PWU],
        0x1_c000_0000 | PS | PWU,
    );
    let t = translate(&mem, LA57, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gpa, Gpa(0x1_c000_0000 | (gva & 0x3fff_ffff)));
    assert_eq!((t.page_size, t.level), (PageSize::Size1G, 3));
}

// ---------------------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------------------

#[test]
fn permissions_are_combined_across_levels() {
    let gva = 0x0000_0040_0020_1000u64;
    let tables = [0x1000, 0x2000, 0x3000, 0x4000];
    let leaf = 0x9000 | PWU;
    let walk = |flags: [u64; 3], leaf: u64, mode: PagingMode| {
        let mut mem = SparseMemory::new();
        chain(&mut mem, mode, gva, &tables, &flags, leaf);
        translate(&mem, mode, Gpa(0x1000), Gva(gva))
    };
    let perms = |t: Translation| (t.writable, t.user, t.executable);

    assert_eq!(
        perms(walk([PWU; 3], leaf, LONG).unwrap()),
        (true, true, true)
    );
    // Read-only at the PML4 makes the page read-only.
    assert_eq!(
        perms(walk([P | US, PWU, PWU], leaf, LONG).unwrap()),
        (false, true, true)
    );
    // Read-only at the leaf only.
    assert_eq!(
        perms(walk([PWU; 3], 0x9000 | P | US, LONG).unwrap()),
        (false, true, true)
    );
    // Supervisor-only at the PD.
    assert_eq!(
        perms(walk([PWU, PWU, P | RW], leaf, LONG).unwrap()),
        (true, false, true)
    );
    // XD at the PDPT level with NXE on: not executable.
    assert_eq!(
        perms(walk([PWU, PWU | XD, PWU], leaf, LONG).unwrap()),
        (true, true, false)
    );
    assert_eq!(
        perms(walk([PWU; 3], leaf | XD, LONG).unwrap()),
        (true, true, false)
    );
    // XD with NXE off is a reserved bit, reported at its level.
    let no_nx = PagingMode::Ia32e { nxe: false };
    let r = walk([PWU, PWU | XD, PWU], leaf, no_nx);
    assert_eq!(pf(r), (3, PageFaultReason::ReservedBit, 0x3000 | PWU | XD));
    assert_eq!(pf(walk([PWU; 3], leaf | XD, no_nx)).0, 1);

    // 32-bit paging: no XD, always executable; R/W and U/S still combine.
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LEGACY,
        0x0040_0000,
        &[0x1000, 0x2000],
        &[P | US],
        0x9000 | PWU,
    );
    let t = translate(&mem, LEGACY, Gpa(0x1000), Gva(0x0040_0000)).unwrap();
    assert_eq!(perms(t), (false, true, true));
}

// ---------------------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------------------

#[test]
fn not_present_at_each_level_reports_that_level() {
    for (mode, gva) in [
        (LEGACY, 0xc012_3456u64),
        (PAE, 0xc012_3456),
        (LONG, 0x0000_7f12_3456_7abc),
        (LA57, 0x00ff_8000_1234_5678),
    ] {
        let tables = tables_for(mode);
        let top = mode.levels();
        for level in 1..=top {
            let mut mem = four_k(mode, gva, 0x9000 | PWU);
            let k = usize::from(top - level);
            let value = match tables.get(k + 1) {
                Some(next) if matches!(mode, PagingMode::Pae { .. }) && level == 3 => *next,
                Some(next) => next | RW | US,
                None => 0x9000 | RW | US,
            };
            set(&mut mem, mode, level, tables[k], gva, value);
            assert_eq!(
                pf(translate(&mem, mode, Gpa(0x1000), Gva(gva))),
                (level, PageFaultReason::NotPresent, value),
                "{mode:?} level {level}"
            );
        }
    }
}

#[test]
fn reserved_bits_ia32e() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let rsv =
        |mode: PagingMode, mem: &SparseMemory| pf(translate(mem, mode, Gpa(0x1000), Gva(gva)));
    // PS in a PML4E and in a PML5E.
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000, 0x3000, 0x4000],
        &[PWU | PS, PWU, PWU],
        0x9000 | P,
    );
    assert_eq!(
        rsv(LONG, &mem),
        (4, PageFaultReason::ReservedBit, 0x2000 | PWU | PS)
    );
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LA57,
        gva,
        &[0x1000, 0x2000, 0x3000, 0x4000, 0x5000],
        &[PWU | PS, PWU, PWU, PWU],
        0x9000 | P,
    );
    assert_eq!(rsv(LA57, &mem).0, 5);
    assert_eq!(rsv(LA57, &mem).1, PageFaultReason::ReservedBit);

    // Physical-address bits above MAXPHYADDR, in a table pointer and in a leaf.
    let mut mem = four_k(LONG, gva, 0x9000 | P | 1 << 40);
    let m36 = Translator::new(LONG).with_max_phys_bits(36);
    assert_eq!(pf(translate(&mem, m36, Gpa(0x1000), Gva(gva))).0, 1);
    assert_eq!(
        translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap().gpa,
        Gpa((1 << 40) | 0x9abc)
    );
    set(&mut mem, LONG, 2, 0x3000, gva, 0x4000 | PWU | 1 << 45);
    let m40 = Translator::new(LONG).with_max_phys_bits(40);
    assert_eq!(pf(translate(&mem, m40, Gpa(0x1000), Gva(gva))).0, 2);
    // Bits 62:52 are ignored in IA-32e entries.
    let mem = four_k(LONG, gva, 0x9000 | P | 0x7ff << 52);
    assert_eq!(
        translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap().gpa,
        Gpa(0x9abc)
    );

    // Large pages: bits 29:13 of a 1 GiB PDPTE, 20:13 of a 2 MiB PDE.
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000],
        &[PWU],
        0x4000_0000 | PS | P | 1 << 29,
    );
    assert_eq!(
        rsv(LONG, &mem),
        (
            3,
            PageFaultReason::ReservedBit,
            0x4000_0000 | PS | P | 1 << 29
        )
    );
    // Bit 12 is the PAT bit of a large page, not reserved.
    set(
        &mut mem,
        LONG,
        3,
        0x2000,
        gva,
        0x4000_0000 | PS | P | 1 << 12,
    );
    assert_eq!(
        translate(&mem, LONG, Gpa(0x1000), Gva(gva))
            .unwrap()
            .page_base(),
        Gpa(0x4000_0000)
    );
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[PWU, PWU],
        0x20_0000 | PS | P | 1 << 13,
    );
    assert_eq!(rsv(LONG, &mem).0, 2);
}

#[test]
fn non_canonical_and_out_of_range_addresses() {
    let mem = SparseMemory::new();
    for (mode, gva, level) in [
        (LONG, 0x0000_8000_0000_0000u64, 4),
        (LONG, 0xfff0_0000_0000_0000, 4),
        (LA57, 0x0100_0000_0000_0000, 5),
        (LEGACY, 0x1_0000_0000, 2),
        (PAE, 0xffff_ffff_c000_0000, 3),
    ] {
        assert_eq!(
            pf(translate(&mem, mode, Gpa(0x1000), Gva(gva))),
            (level, PageFaultReason::NonCanonical, 0),
            "{mode:?} {gva:#x}"
        );
    }
    // Canonical addresses reach the (absent) tables.
    assert_eq!(
        pf(translate(
            &mem,
            LA57,
            Gpa(0x1000),
            Gva(0xff00_0000_0000_0000)
        ))
        .1,
        PageFaultReason::UnreadableTable
    );
}

#[test]
fn cr3_flag_and_pcid_bits_are_masked() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mem = four_k(LONG, gva, 0x9000 | PWU);
    for cr3 in [0x1000, 0x1abc, 0x1018, 0x1000 | 1 << 63, 0x1fff | 1 << 62] {
        let t = translate(&mem, LONG, Gpa(cr3), Gva(gva)).unwrap();
        assert_eq!(t.gpa, Gpa(0x9abc), "cr3 {cr3:#x}");
    }
    // Bits above MAXPHYADDR are dropped too.
    let m36 = Translator::new(LONG).with_max_phys_bits(36);
    assert_eq!(m36.root_base(Gpa(0x1000 | 1 << 40)), Gpa(0x1000));
    assert_eq!(
        translate(&mem, m36, Gpa(0x1000 | 1 << 40), Gva(gva))
            .unwrap()
            .gpa,
        Gpa(0x9abc)
    );
    // The error reports the masked root.
    match translate(&SparseMemory::new(), LONG, Gpa(0x5abc), Gva(gva)) {
        Err(Error::PageFault { root, .. }) => assert_eq!(root, Gpa(0x5000)),
        other => panic!("{other:?}"),
    }

    let mem = four_k(LEGACY, 0xc012_3456, 0x9000 | PWU);
    assert_eq!(
        translate(&mem, LEGACY, Gpa(0x1018), Gva(0xc012_3456))
            .unwrap()
            .gpa,
        Gpa(0x9456)
    );
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        PAE,
        0xc012_3456,
        &[0x1020, 0x2000, 0x3000],
        &[P, PWU],
        0x9000 | PWU,
    );
    assert_eq!(
        translate(&mem, PAE, Gpa(0x1038), Gva(0xc012_3456))
            .unwrap()
            .gpa,
        Gpa(0x9456)
    );
    assert_eq!(
        Translator::new(PAE).root_base(Gpa(0x1_0000_103f)),
        Gpa(0x1020)
    );
}

#[test]
fn unreadable_tables_report_their_level() {
    let gva = 0x0000_7f12_3456_7abcu64;
    // The root itself is not in memory.
    assert_eq!(
        pf(translate(&SparseMemory::new(), LONG, Gpa(0x1000), Gva(gva))),
        (4, PageFaultReason::UnreadableTable, 0)
    );
    // A PDPTE points outside memory.
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000],
        &[PWU],
        0x7777_7000 | PWU,
    );
    assert_eq!(
        pf(translate(&mem, LONG, Gpa(0x1000), Gva(gva))),
        (2, PageFaultReason::UnreadableTable, 0)
    );
    // PAE: the PDPT is not in memory.
    assert_eq!(
        pf(translate(
            &SparseMemory::new(),
            PAE,
            Gpa(0x1020),
            Gva(0x1000)
        )),
        (3, PageFaultReason::UnreadableTable, 0)
    );
}

#[test]
fn huge_entries_do_not_overflow() {
    // Every bit set: present, reserved bits everywhere.
    let gva = 0xffff_ffff_ffff_f000u64;
    let mut mem = SparseMemory::new();
    mem.write(Gpa(0x1000), &[0xff; 4096]);
    for mode in [
        LEGACY,
        PSE,
        PAE,
        LONG,
        LA57,
        PagingMode::Ia32e { nxe: false },
    ] {
        let _ = translate(&mem, mode, Gpa(u64::MAX), Gva(gva));
        let _ = translate(&mem, mode, Gpa(0x1000), Gva(gva & 0xffff_ffff));
        let _ = translate(&mem, mode, Gpa(0x1000), Gva(gva));
    }
    // 32-bit entries of all ones: 4 MiB page at 0xffc0_0000 with PSE-36 bits.
    let t = translate(
        &mem,
        PagingMode::Legacy32 { pse: true },
        Gpa(0x1fff),
        Gva(0xffff_ffff),
    );
    assert_eq!(pf(t), (2, PageFaultReason::ReservedBit, 0xffff_ffff));
}

// ---------------------------------------------------------------------------------------
// Translation helpers and read_virtual
// ---------------------------------------------------------------------------------------

#[test]
fn translation_helpers() {
    let gva = 0x0000_7f12_3456_7abcu64;
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[PWU, PWU],
        0x4060_0000 | PS | PWU,
    );
    let t = translate(&mem, LONG, Gpa(0x1000), Gva(gva)).unwrap();
    assert_eq!(t.gfn(), t.gpa.gfn());
    assert_eq!(t.gfn(), Gfn((0x4060_0000 | (gva & 0x1f_ffff)) >> 12));
    assert_eq!(t.page_base(), Gpa(0x4060_0000));
    assert_eq!(t.virtual_page_base(), Gva(gva & !0x1f_ffff));
    assert_eq!(t.gpa_at(0), Some(Gpa(0x4060_0000)));
    assert_eq!(t.gpa_at(0x1f_ffff), Some(Gpa(0x407f_ffff)));
    assert_eq!(t.gpa_at(0x20_0000), None);
    assert_eq!(
        t.gpa_of(Gva((gva & !0x1f_ffff) + 0x10)),
        Some(Gpa(0x4060_0010))
    );
    assert_eq!(t.gpa_of(Gva((gva & !0x1f_ffff) + 0x20_0000)), None);
    assert_eq!(t.bytes_to_page_end(), 0x20_0000 - (gva & 0x1f_ffff));
}

#[test]
fn read_virtual_crosses_pages_mapped_to_unrelated_frames() {
    let gva = 0x0000_0040_0000_0ff8u64;
    let next = gva + 8;
    let mut mem = four_k(LONG, gva, 0x9000 | PWU);
    set(&mut mem, LONG, 1, 0x4000, next, 0x5000 | PWU);
    mem.write(Gpa(0x9ff8), b"abcdefgh");
    mem.write(Gpa(0x5000), b"ijklmnop");
    let mut buf = [0u8; 16];
    read_virtual(&mem, LONG, Gpa(0x1000), Gva(gva), &mut buf).unwrap();
    assert_eq!(&buf, b"abcdefghijklmnop");

    let mut cache = TranslationCache::new();
    let mut buf2 = [0u8; 16];
    cache
        .read_virtual(&mem, LONG, Gpa(0x1000), Gva(gva), &mut buf2)
        .unwrap();
    assert_eq!(buf, buf2);
    assert_eq!(cache.len(), 2);

    // Empty reads do nothing; a read running into an unmapped page faults there.
    read_virtual(&SparseMemory::new(), LONG, Gpa(0), Gva(0), &mut []).unwrap();
    let mut big = [0u8; 4096 + 16];
    let r = read_virtual(&mem, LONG, Gpa(0x1000), Gva(gva), &mut big);
    assert_eq!(pf(r), (1, PageFaultReason::NotPresent, 0));
}

#[test]
fn read_virtual_across_a_large_page_end() {
    // A 2 MiB page followed by a 4 KiB page.
    let gva = 0x0000_0040_001f_fffcu64;
    let next = gva + 4;
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        gva,
        &[0x1000, 0x2000, 0x3000],
        &[PWU, PWU],
        0x60_0000 | PS | PWU,
    );
    set(&mut mem, LONG, 2, 0x3000, next, 0x4000 | PWU);
    set(&mut mem, LONG, 1, 0x4000, next, 0xa000 | PWU);
    mem.write(Gpa(0x7f_fffc), &[1, 2, 3, 4]);
    mem.write(Gpa(0xa000), &[5, 6, 7, 8]);
    let mut buf = [0u8; 8];
    read_virtual(&mem, LONG, Gpa(0x1000), Gva(gva), &mut buf).unwrap();
    assert_eq!(buf, [1, 2, 3, 4, 5, 6, 7, 8]);
    // Wrapping past the end of the address space is refused.
    let mut mem = SparseMemory::new();
    chain(
        &mut mem,
        LONG,
        u64::MAX,
        &[0x1000, 0x2000],
        &[PWU],
        PS | PWU,
    );
    mem.write(Gpa(0x3fff_fff8), &[0; 8]);
    let mut buf = [0u8; 16];
    let r = read_virtual(&mem, LONG, Gpa(0x1000), Gva(u64::MAX - 7), &mut buf);
    assert!(matches!(r, Err(Error::InvalidArgument { .. })), "{r:?}");
}

// ---------------------------------------------------------------------------------------
// Cache
// ---------------------------------------------------------------------------------------

/// Compares everything but the recorded entries.
fn same(a: &Translation, b: &Translation) -> bool {
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

// ---------------------------------------------------------------------------------------
// Reference walker
// ---------------------------------------------------------------------------------------

/// A deliberately naive walker written straight from the SDM tables: recursive, indices
/// and fields by division, reserved bits listed bit by bit, allocation allowed.
mod reference {
    use super::{PageFaultReason, PagingMode, SparseMemory};
    use crate::addr::Gpa;
    use crate::memory::PhysicalMemory;

    /// A successful walk.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Walked {
        pub(super) gpa: u64,
        pub(super) size: u64,
        pub(super) level: u8,
        pub(super) writable: bool,
        pub(super) user: bool,
        pub(super) executable: bool,
        pub(super) entries: Vec<u64>,
    }

    /// (level, reason, entry) of a failed walk.
    pub(super) type Fault = (u8, PageFaultReason, u64);

    fn two_to(n: u32) -> u128 {
        2u128.pow(n)
    }

    /// Bit `i` of `v`.
    fn bit(v: u64, i: u32) -> bool {
        (u128::from(v) / two_to(i)) % 2 == 1
    }

    /// Whether any of bits `lo..=hi` of `v` is set.
    fn any_bit(v: u64, lo: u32, hi: u32) -> bool {
        (lo..=hi).any(|i| bit(v, i))
    }

    /// Bits `lo..=hi` of `v`, shifted down to bit 0 (0 when the range is empty).
    fn field(v: u64, lo: u32, hi: u32) -> u64 {
        if hi < lo {
            return 0;
        }
        ((u128::from(v) / two_to(lo)) % two_to(hi - lo + 1)) as u64
    }

    fn read(mem: &SparseMemory, addr: u64, bytes: usize) -> Option<u64> {
        let mut b = [0u8; 8];
        mem.read_physical(Gpa(addr), &mut b[..bytes]).ok()?;
        Some(u64::from_le_bytes(b))
    }

    struct Acc {
        writable: bool,
        user: bool,
        xd: bool,
        entries: Vec<u64>,
    }

    pub(super) fn translate(
        mem: &SparseMemory,
        mode: PagingMode,
        m: u32,
        cr3: u64,
        gva: u64,
    ) -> Result<Walked, Fault> {
        let four_gib = 4 * 1024 * 1024 * 1024u64;
        let acc = Acc {
            writable: true,
            user: true,
            xd: false,
            entries: Vec::new(),
        };
        match mode {
            PagingMode::Disabled if gva < four_gib => Ok(Walked {
                gpa: gva,
                size: 4096,
                level: 0,
                writable: true,
                user: true,
                executable: true,
                entries: Vec::new(),
            }),
            PagingMode::Disabled => Err((0, PageFaultReason::NonCanonical, 0)),
            PagingMode::Legacy32 { .. } if gva >= four_gib => {
                Err((2, PageFaultReason::NonCanonical, 0))
            }
            PagingMode::Pae { .. } if gva >= four_gib => Err((3, PageFaultReason::NonCanonical, 0)),
            PagingMode::Legacy32 { pse } => {
                walk32(mem, pse, m, 2, field(cr3, 12, 31) * 4096, gva, acc)
            }
            PagingMode::Pae { nxe } => {
                walk64(mem, true, nxe, m, 3, field(cr3, 5, 31) * 32, gva, acc)
            }
            PagingMode::Ia32e { nxe } | PagingMode::Ia32e5 { nxe } => {
                let (levels, width) = if matches!(mode, PagingMode::Ia32e { .. }) {
                    (4, 48)
                } else {
                    (5, 57)
                };
                // Canonical: bits 63..=width-1 all equal.
                let high = field(gva, width - 1, 63);
                if high != 0 && u128::from(high) != two_to(65 - width) - 1 {
                    return Err((levels, PageFaultReason::NonCanonical, 0));
                }
                walk64(
                    mem,
                    false,
                    nxe,
                    m,
                    levels,
                    field(cr3, 12, m - 1) * 4096,
                    gva,
                    acc,
                )
            }
        }
    }

    /// One level of 32-bit paging, then the next.
    fn walk32(
        mem: &SparseMemory,
        pse: bool,
        m: u32,
        level: u8,
        table: u64,
        gva: u64,
        mut acc: Acc,
    ) -> Result<Walked, Fault> {
        let span = 4096 * 1024u64.pow(u32::from(level) - 1);
        let index = (gva / span) % 1024;
        let e =
            read(mem, table + index * 4, 4).ok_or((level, PageFaultReason::UnreadableTable, 0))?;
        acc.entries.push(e);
        if !bit(e, 0) {
            return Err((level, PageFaultReason::NotPresent, e));
        }
        let large = level == 2 && pse && bit(e, 7);
        let m40 = m.min(40);
        if large && (bit(e, 21) || any_bit(e, m40 - 19, 20)) {
            return Err((level, PageFaultReason::ReservedBit, e));
        }
        acc.writable = acc.writable && bit(e, 1);
        acc.user = acc.user && bit(e, 2);
        if large {
            let gpa = field(e, 22, 31) * two_to(22) as u64
                + field(e, 13, m40 - 20) * two_to(32) as u64
                + gva % two_to(22) as u64;
            return Ok(done(acc, gpa, 4 << 20, level, true));
        }
        if level == 1 {
            return Ok(done(
                acc,
                field(e, 12, 31) * 4096 + gva % 4096,
                4096,
                1,
                true,
            ));
        }
        walk32(mem, pse, m, level - 1, field(e, 12, 31) * 4096, gva, acc)
    }

    /// One level of PAE or IA-32e paging, then the next.
    #[allow(clippy::too_many_arguments)]
    fn walk64(
        mem: &SparseMemory,
        pae: bool,
        nxe: bool,
        m: u32,
        level: u8,
        table: u64,
        gva: u64,
        mut acc: Acc,
    ) -> Result<Walked, Fault> {
        let pdpt = pae && level == 3;
        let span = 4096 * 512u64.pow(u32::from(level) - 1);
        let index = if pdpt {
            (gva / span) % 4
        } else {
            (gva / span) % 512
        };
        let e =
            read(mem, table + index * 8, 8).ok_or((level, PageFaultReason::UnreadableTable, 0))?;
        acc.entries.push(e);
        if !bit(e, 0) {
            return Err((level, PageFaultReason::NotPresent, e));
        }
        let large = bit(e, 7) && (level == 2 || (level == 3 && !pae));
        let reserved = if pdpt {
            any_bit(e, m, 63)
        } else {
            (pae && any_bit(e, m, 62))
                || (!pae && any_bit(e, m, 51))
                || (!nxe && bit(e, 63))
                || (!pae && level >= 4 && bit(e, 7))
                || (large && level == 3 && any_bit(e, 13, 29))
                || (large && level == 2 && any_bit(e, 13, 20))
        };
        if reserved {
            return Err((level, PageFaultReason::ReservedBit, e));
        }
        if !pdpt {
            acc.writable = acc.writable && bit(e, 1);
            acc.user = acc.user && bit(e, 2);
            acc.xd = acc.xd || bit(e, 63);
        }
        if level == 1 || large {
            let low_bits = match level {
                1 => 12,
                2 => 21,
                _ => 30,
            };
            let gpa = field(e, low_bits, m - 1) * span + gva % span;
            let executable = !(nxe && acc.xd);
            return Ok(done(acc, gpa, span, level, executable));
        }
        walk64(
            mem,
            pae,
            nxe,
            m,
            level - 1,
            field(e, 12, m - 1) * 4096,
            gva,
            acc,
        )
    }

    fn done(acc: Acc, gpa: u64, size: u64, level: u8, executable: bool) -> Walked {
        Walked {
            gpa,
            size,
            level,
            writable: acc.writable,
            user: acc.user,
            executable,
            entries: acc.entries,
        }
    }
}

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
                (Ok(c), Ok(g)) => prop_assert!(same(c, g), "{:?} vs {:?}", c, g),
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
