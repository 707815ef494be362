//! Tests of the page walk, `read_virtual` and the translation cache: hand-built tables for
//! every mode here and in `faults`, the cache in `cache`, memory errors in
//! `memory_errors`, and property tests (`properties`) against a deliberately naive
//! reference walker (`reference`).

use super::*;
use crate::memory::SparseMemory;

mod cache;
mod faults;
mod memory_errors;
mod properties;
mod reference;

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
