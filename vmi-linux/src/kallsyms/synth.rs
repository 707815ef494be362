//! Synthetic kallsyms tables for the unit tests: what `scripts/kallsyms` emits, for every
//! table order × address encoding × name-length form (and the 6.2–6.3 `seqs_of_names`
//! gap), laid out in an image after some "text" and a banner.

use crate::image::ImageCopy;

use super::{AddressEncoding, KallsymsTables, TableOrder};

/// Link address of `_text` in the synthetic images.
pub(super) const BASE: u64 = 0xffff_ffff_8100_0000;
/// Bytes of fake text before the banner.
const TEXT_LEN: usize = 0x8000;
pub(super) const BANNER: &[u8] = b"Linux version 9.9.9-synth (b@h) (gcc) #1 SMP\n\0";

/// One layout to emit.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) order: TableOrder,
    pub(super) encoding: AddressEncoding,
    /// 2-byte lengths for names compressing to more than 127 bytes (6.1+); the symbol list
    /// then holds such a name.
    pub(super) two_byte: bool,
    /// A `kallsyms_seqs_of_names` table between markers and token table (6.2–6.3 order).
    pub(super) seqs: bool,
    /// Alignment of each table (`ALGN`: 8 up to 6.x, 4 in 7.x).
    pub(super) align: usize,
}

/// A synthetic image and what it must decode to.
pub(super) struct Synthetic {
    pub(super) image: ImageCopy,
    pub(super) text: u64,
    pub(super) banner: u64,
    /// `(name, address, nm type)`, sorted by address as the kernel sorts them.
    pub(super) symbols: Vec<(String, u64, char)>,
    pub(super) tables: KallsymsTables,
}

/// Multi-char tokens placed in otherwise unused byte slots (the kernel learns these).
const LEARNED: &[&str] = &[
    "func_", "data_", "__pfx_", "Tfunc_", "tfunc_", "_text", "ban",
];

/// The symbols: per-CPU offsets (absolute-percpu only), `_text`, functions with `__pfx_`
/// markers, `linux_banner`, data; `count` in all, plus a long name when asked.
pub(super) fn symbols(layout: &Layout, count: usize) -> Vec<(String, u64, char)> {
    let mut v = Vec::new();
    if layout.encoding == AddressEncoding::AbsolutePercpu {
        for i in 0..5u64 {
            v.push((format!("percpu_var_{i}"), i * 0x40, 'D'));
        }
    }
    v.push(("_text".to_owned(), BASE, 'T'));
    v.push(("startup_64".to_owned(), BASE, 'T'));
    // Functions 32 bytes apart, some with the 16-byte `__pfx_` padding symbol before them
    // (6.2+ with call-depth tracking / FineIBT).
    let mut i = 0u64;
    while v.len() < count.saturating_sub(2) {
        let at = BASE + 0x20 + i * 0x20;
        if at >= BASE + TEXT_LEN as u64 - 0x20 {
            break;
        }
        if i % 7 == 0 {
            v.push((format!("__pfx_func_{i}"), at - 0x10, 't'));
        }
        let kind = if i % 3 == 0 { 't' } else { 'T' };
        v.push((format!("func_{i}"), at, kind));
        i += 1;
    }
    if layout.two_byte {
        let long: String = (0..300)
            .map(|k| char::from(b'a' + (k * 7 % 26) as u8))
            .collect();
        v.push((format!("rust_{long}"), BASE + TEXT_LEN as u64 - 8, 'T'));
    }
    v.push(("linux_banner".to_owned(), BASE + TEXT_LEN as u64, 'D'));
    v.push((
        "data_after_banner".to_owned(),
        BASE + TEXT_LEN as u64 + 0x100,
        'd',
    ));
    v
}

/// Compresses `kind` + `name` greedily with the learned tokens, else single chars.
fn compress(kind: char, name: &str, learned_slots: &[(u8, &str)]) -> Vec<u8> {
    let full = format!("{kind}{name}");
    let s = full.as_bytes();
    let mut out = Vec::new();
    let mut p = 0;
    while p < s.len() {
        let hit = learned_slots
            .iter()
            .filter(|(_, t)| s[p..].starts_with(t.as_bytes()))
            .max_by_key(|(_, t)| t.len());
        match hit {
            Some(&(slot, t)) => {
                out.push(slot);
                p += t.len();
            }
            None => {
                out.push(s[p]);
                p += 1;
            }
        }
    }
    out
}

struct Out {
    base: u64,
    bytes: Vec<u8>,
    align: usize,
}

impl Out {
    fn va(&self) -> u64 {
        self.base + self.bytes.len() as u64
    }
    fn align_to(&mut self, a: usize) {
        while self.bytes.len() % a != 0 {
            self.bytes.push(0);
        }
    }
    /// Aligns and returns the table's address.
    fn label(&mut self) -> u64 {
        self.align_to(self.align);
        self.va()
    }
}

/// Emits `symbols` (sorted by address) in `layout`.
pub(super) fn build(layout: &Layout, symbols: &[(String, u64, char)]) -> Synthetic {
    let n = symbols.len();
    // Token table: each graphic char in its own slot (digits included, as the kernel's
    // are), learned tokens in slots 0x01.., everything else empty.
    let learned_slots: Vec<(u8, &str)> = LEARNED
        .iter()
        .enumerate()
        .map(|(i, t)| (0x01 + i as u8, *t))
        .collect();
    let mut tokens: Vec<Vec<u8>> = (0..=255u8)
        .map(|c| {
            if c.is_ascii_graphic() {
                vec![c]
            } else {
                Vec::new()
            }
        })
        .collect();
    for &(slot, t) in &learned_slots {
        tokens[usize::from(slot)] = t.as_bytes().to_vec();
    }

    let mut names = Vec::new();
    let mut offsets_in_names = Vec::new();
    for (name, _, kind) in symbols {
        offsets_in_names.push(names.len() as u32);
        let c = compress(*kind, name, &learned_slots);
        if c.len() > 127 {
            assert!(layout.two_byte, "long name needs 2-byte lengths");
            names.push(0x80 | (c.len() & 0x7f) as u8);
            names.push((c.len() >> 7) as u8);
        } else {
            names.push(c.len() as u8);
        }
        names.extend_from_slice(&c);
    }

    let mut image = vec![0xccu8; TEXT_LEN];
    image.extend_from_slice(BANNER);
    image.resize(TEXT_LEN + 0x400, 0x5a);
    let mut o = Out {
        base: BASE,
        bytes: image,
        align: layout.align,
    };
    // The relative base is the lowest non-per-CPU address: _text.
    let relative_base = BASE;
    let mut tables = KallsymsTables::default();

    let emit_addresses = |o: &mut Out, tables: &mut KallsymsTables| {
        if layout.encoding == AddressEncoding::Absolute {
            o.align_to(8);
        }
        let start = o.label();
        tables.offsets = Some(start);
        for (i, (_, addr, _)) in symbols.iter().enumerate() {
            let entry_va = start + 4 * i as u64;
            let v: u32 = match layout.encoding {
                AddressEncoding::Absolute => {
                    o.bytes.extend_from_slice(&addr.to_le_bytes());
                    continue;
                }
                AddressEncoding::BaseRelative => (addr - relative_base) as u32,
                AddressEncoding::AbsolutePercpu if *addr < BASE => *addr as u32,
                AddressEncoding::AbsolutePercpu => (relative_base as i64)
                    .wrapping_sub(*addr as i64)
                    .wrapping_sub(1) as i32
                    as u32,
                AddressEncoding::PlaceRelative => addr.wrapping_sub(entry_va) as i64 as i32 as u32,
            };
            o.bytes.extend_from_slice(&v.to_le_bytes());
        }
        if matches!(
            layout.encoding,
            AddressEncoding::BaseRelative | AddressEncoding::AbsolutePercpu
        ) {
            o.align_to(8);
            tables.relative_base = Some(o.va());
            o.bytes.extend_from_slice(&relative_base.to_le_bytes());
        }
    };
    let emit_seqs = |o: &mut Out| {
        o.label();
        for i in 0..n {
            o.bytes.extend_from_slice(&(i as u32).to_be_bytes()[1..]);
        }
    };

    if layout.order == TableOrder::AddressesFirst {
        emit_addresses(&mut o, &mut tables);
    }
    tables.num_syms = Some(o.label());
    o.bytes.extend_from_slice(&(n as u32).to_le_bytes());
    tables.names = Some(o.label());
    o.bytes.extend_from_slice(&names);
    tables.markers = Some(o.label());
    for i in (0..n).step_by(256) {
        o.bytes
            .extend_from_slice(&offsets_in_names[i].to_le_bytes());
    }
    if layout.seqs && layout.order == TableOrder::AddressesFirst {
        emit_seqs(&mut o);
    }
    tables.token_table = Some(o.label());
    let mut index = Vec::new();
    let table_start = o.bytes.len();
    for t in &tokens {
        index.push((o.bytes.len() - table_start) as u16);
        o.bytes.extend_from_slice(t);
        o.bytes.push(0);
    }
    tables.token_index = Some(o.label());
    for i in index {
        o.bytes.extend_from_slice(&i.to_le_bytes());
    }
    if layout.order == TableOrder::AddressesAfterTokenIndex {
        emit_addresses(&mut o, &mut tables);
        if layout.seqs {
            emit_seqs(&mut o);
        }
    }
    o.bytes.extend_from_slice(&[0xa5; 64]);
    Synthetic {
        image: ImageCopy::new(BASE, o.bytes),
        text: BASE,
        banner: BASE + TEXT_LEN as u64,
        symbols: symbols.to_vec(),
        tables,
    }
}

/// Every layout the decoder must handle (and a few it need not see in practice).
pub(super) fn all_layouts() -> Vec<Layout> {
    let mut v = Vec::new();
    for order in [
        TableOrder::AddressesFirst,
        TableOrder::AddressesAfterTokenIndex,
    ] {
        for encoding in [
            AddressEncoding::Absolute,
            AddressEncoding::BaseRelative,
            AddressEncoding::AbsolutePercpu,
            AddressEncoding::PlaceRelative,
        ] {
            for two_byte in [false, true] {
                for seqs in [false, true] {
                    for align in [4, 8] {
                        v.push(Layout {
                            order,
                            encoding,
                            two_byte,
                            seqs,
                            align,
                        });
                    }
                }
            }
        }
    }
    v
}
