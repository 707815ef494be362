//! Unit tests of the kallsyms decoder on synthetic tables: every table order × address
//! encoding × name-length form × alignment (× the `seqs_of_names` gap), and hostile input.

use proptest::prelude::*;

use super::synth::{self, all_layouts, build, Layout, Synthetic};
use super::*;

const COUNT: usize = 700;

fn anchors(s: &Synthetic) -> Anchors {
    Anchors {
        text: Some(s.text),
        banner: Some(s.banner),
    }
}

fn assert_same(layout: &Layout, s: &Synthetic, table: &SymbolTable, report: &KallsymsReport) {
    assert_eq!(report.order, layout.order, "{layout:?}");
    assert_eq!(report.encoding, layout.encoding, "{layout:?}");
    let form = if layout.two_byte {
        NameLengths::TwoByte
    } else {
        NameLengths::OneByte
    };
    assert_eq!(report.name_lengths, form, "{layout:?}");
    assert_eq!(report.tables, s.tables, "{layout:?}");
    assert_eq!(report.count, s.symbols.len());
    let got: Vec<(String, u64, char)> = table
        .iter()
        .map(|x| (x.name.to_owned(), x.address, x.kind))
        .collect();
    assert_eq!(got, s.symbols, "{layout:?}");
}

#[test]
fn every_layout_decodes_with_and_without_anchors() {
    for layout in all_layouts() {
        let s = build(&layout, &synth::symbols(&layout, COUNT));
        for a in [anchors(&s), Anchors::default()] {
            let (table, report) =
                decode(&s.image, a).unwrap_or_else(|e| panic!("{layout:?} {a:?}: {e}"));
            assert_same(&layout, &s, &table, &report);
            let count = format!("{} symbols", s.symbols.len());
            assert!(
                report.description.contains(&count),
                "{}",
                report.description
            );
        }
    }
}

#[test]
fn every_layout_decodes_at_known_addresses() {
    for layout in all_layouts() {
        let s = build(&layout, &synth::symbols(&layout, COUNT));
        let (table, report) = decode_at(&s.image, s.tables, anchors(&s))
            .unwrap_or_else(|e| panic!("{layout:?}: {e}"));
        assert_same(&layout, &s, &table, &report);
        // VMCOREINFO of 7.0+ has no relative_base; older ones may lack offsets: searched.
        let partial = KallsymsTables {
            offsets: None,
            relative_base: None,
            markers: None,
            ..s.tables
        };
        let (table, report) = decode_at(&s.image, partial, anchors(&s))
            .unwrap_or_else(|e| panic!("{layout:?} partial: {e}"));
        assert_same(&layout, &s, &table, &report);
    }
}

#[test]
fn symbol_at_prefers_the_function_over_its_pfx_padding() {
    let layout = all_layouts()[0];
    let s = build(&layout, &synth::symbols(&layout, COUNT));
    let (t, _) = decode(&s.image, anchors(&s)).unwrap();
    let f = t.address_of("func_7").unwrap();
    assert_eq!(t.address_of("__pfx_func_7"), Some(f - 0x10));
    let (sym, off) = t.symbol_at(f + 3).unwrap();
    assert_eq!((sym.name, off), ("func_7", 3));
    let (sym, off) = t.symbol_at(f - 0x10 + 4).unwrap();
    assert_eq!((sym.name, off), ("__pfx_func_7", 4));
    // _text and startup_64 share an address: the later one wins, as in the kernel.
    assert_eq!(t.symbol_at(s.text).unwrap().0.name, "startup_64");
}

#[test]
fn wrong_anchors_are_refused() {
    let layout = all_layouts()[5];
    let s = build(&layout, &synth::symbols(&layout, COUNT));
    let bad = Anchors {
        text: Some(s.text + 0x1000),
        banner: Some(s.banner),
    };
    assert!(matches!(decode(&s.image, bad), Err(Error::NotFound { .. })));
    let bad = Anchors {
        text: Some(s.text),
        banner: Some(s.banner + 1),
    };
    assert!(decode(&s.image, bad).is_err());
}

#[test]
fn truncated_tables_are_errors() {
    for layout in all_layouts().into_iter().step_by(3) {
        let s = build(&layout, &synth::symbols(&layout, COUNT));
        let t = s.tables;
        let base = s.image.base();
        for va in [t.names, t.markers, t.token_table, t.token_index, t.offsets]
            .into_iter()
            .flatten()
        {
            let cut = (va - base) as usize + 37;
            let img = ImageCopy::new(base, s.image.bytes()[..cut].to_vec());
            let r = decode(&img, anchors(&s));
            // Cut past every table the layout needs to decode is fine; otherwise an error.
            if let Ok((table, _)) = r {
                assert_eq!(table.len(), s.symbols.len(), "{layout:?} cut at {va:#x}");
            }
            assert!(decode_at(&img, s.tables, anchors(&s)).is_err() || cut > img.len());
        }
    }
}

#[test]
fn unmapped_page_in_the_names_is_an_error() {
    let layout = all_layouts()[0];
    let s = build(&layout, &synth::symbols(&layout, 3000));
    let names_page = ((s.tables.names.unwrap() - s.image.base()) / 4096 + 1) as usize;
    let mut present = vec![true; s.image.len().div_ceil(4096)];
    present[names_page] = false;
    let mut bytes = s.image.bytes().to_vec();
    bytes[names_page * 4096..(names_page + 1) * 4096].fill(0);
    let img = ImageCopy::with_presence(s.image.base(), bytes, present).unwrap();
    assert!(decode(&img, anchors(&s)).is_err());
    assert!(decode_at(&img, s.tables, anchors(&s)).is_err());
}

#[test]
fn absurd_counts_are_bounded() {
    let layout = all_layouts()[0];
    let s = build(&layout, &synth::symbols(&layout, COUNT));
    let at = (s.tables.num_syms.unwrap() - s.image.base()) as usize;
    for n in [u32::MAX, MAX_SYMBOLS as u32 + 1, COUNT as u32 + 1, 0] {
        let mut bytes = s.image.bytes().to_vec();
        bytes[at..at + 4].copy_from_slice(&n.to_le_bytes());
        let img = ImageCopy::new(s.image.base(), bytes);
        let r = decode_at(&img, s.tables, anchors(&s));
        if n > MAX_SYMBOLS as u32 {
            assert!(matches!(r, Err(Error::Limit { .. })), "{n}: {r:?}");
        } else {
            assert!(r.is_err(), "{n}");
        }
        assert!(decode(&img, anchors(&s)).is_err(), "{n}");
    }
}

#[test]
fn over_long_names_are_refused() {
    // Compresses to 111 token bytes (a learned token repeated) but expands past the limit.
    let layout = all_layouts()[0];
    let mut syms = synth::symbols(&layout, COUNT);
    let long = "func_".repeat(MAX_NAME_LEN / 5 + 1);
    syms.push((long, synth::BASE + 0x9000, 'd'));
    let s = build(&layout, &syms);
    let e = decode_at(&s.image, s.tables, anchors(&s)).unwrap_err();
    assert!(e.to_string().contains("name length"), "{e}");
    assert!(decode(&s.image, anchors(&s)).is_err());
}

/// xorshift64*.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[test]
fn random_bytes_are_not_kallsyms() {
    let img = ImageCopy::new(synth::BASE, noise(7, 1 << 20));
    assert!(matches!(
        decode(&img, Anchors::default()),
        Err(Error::NotFound { .. })
    ));
}

#[test]
fn a_flood_of_digit_runs_is_bounded() {
    // Thousands of fake token tables: each examined in bounded time, the count capped.
    let run = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";
    let mut bytes = Vec::new();
    while bytes.len() < 4 << 20 {
        bytes.extend_from_slice(run);
    }
    let img = ImageCopy::new(synth::BASE, bytes);
    let t0 = std::time::Instant::now();
    assert!(decode(&img, Anchors::default()).is_err());
    assert!(t0.elapsed().as_secs() < 20);
}

#[test]
fn corrupted_markers_are_not_accepted_silently() {
    let layout = all_layouts()[8];
    let s = build(&layout, &synth::symbols(&layout, COUNT));
    let at = (s.tables.markers.unwrap() - s.image.base()) as usize + 4;
    let mut bytes = s.image.bytes().to_vec();
    bytes[at] ^= 0x10;
    let img = ImageCopy::new(s.image.base(), bytes);
    assert!(decode(&img, anchors(&s)).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random bytes written anywhere in the tables: an error or a table that still agrees
    /// with the anchors, never a panic.
    #[test]
    fn corruption_never_panics(
        layout in 0usize..64,
        edits in proptest::collection::vec((0.0f64..1.0, any::<u8>()), 1..24),
    ) {
        let layout = all_layouts()[layout % all_layouts().len()];
        let s = build(&layout, &synth::symbols(&layout, COUNT));
        let start = (s.tables.num_syms.unwrap().min(s.tables.offsets.unwrap()) - s.image.base()) as usize;
        let mut bytes = s.image.bytes().to_vec();
        let span = bytes.len() - start;
        for (at, v) in edits {
            bytes[start + (at * span as f64) as usize % span] = v;
        }
        let img = ImageCopy::new(s.image.base(), bytes);
        let results = [decode(&img, anchors(&s)), decode_at(&img, s.tables, anchors(&s))];
        for (table, report) in results.into_iter().flatten() {
            prop_assert_eq!(table.address_of("_text"), Some(s.text));
            prop_assert!(report.count <= MAX_SYMBOLS);
        }
    }
}
