//! Not-present, reserved-bit, non-canonical and unreadable-table faults at every level.

use super::*;

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
