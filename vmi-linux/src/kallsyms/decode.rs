//! Expanding the names and decoding the addresses of a located table.

use crate::error::{Error, Result};
use crate::image::ImageCopy;
use crate::symbols::{SymbolTable, SymbolTableBuilder};

use super::locate::{Names, Tokens};
use super::{
    describe, AddressEncoding, Anchors, KallsymsReport, KallsymsTables, NameLengths, Rejections,
    TableOrder, MAX_NAME_LEN,
};

/// Every name expanded once: `(start in arena, length, nm type)` per symbol.
struct Expanded {
    arena: String,
    entries: Vec<(u32, u16, u8)>,
    text: Option<usize>,
    banner: Option<usize>,
}

impl Expanded {
    fn name(&self, i: usize) -> &str {
        let (start, len, _) = self.entries[i];
        &self.arena[start as usize..start as usize + usize::from(len)]
    }
}

/// Expands every name through the token table. Names must be printable ASCII with an
/// alphabetic `nm` type; each is at most [`MAX_NAME_LEN`] bytes.
fn expand(image: &ImageCopy, tokens: &Tokens, names: &Names) -> Result<Expanded> {
    let bad = |d: &'static str| Error::malformed("kallsyms names", d);
    let b = image.bytes();
    let start = image
        .offset_of(names.names_va)
        .ok_or(bad("outside the image"))?;
    let end = image
        .offset_of(names.end_va)
        .unwrap_or(b.len())
        .max(start);
    let region = &b[start..end];
    // A name expands to at most MAX_NAME_LEN + 1 bytes; the region bounds the count.
    let mut arena = String::with_capacity(region.len().saturating_mul(2));
    let mut entries = Vec::with_capacity(names.count.min(region.len()));
    let mut name = Vec::with_capacity(MAX_NAME_LEN + 2 + 256);
    let (mut text, mut banner) = (None, None);
    let mut off = 0usize;
    for i in 0..names.count {
        let first = *region.get(off).ok_or(bad("truncated"))?;
        let (len, header) = if names.form == NameLengths::TwoByte && first & 0x80 != 0 {
            let second = *region.get(off + 1).ok_or(bad("truncated"))?;
            (usize::from(first & 0x7f) | usize::from(second) << 7, 2)
        } else {
            (usize::from(first), 1)
        };
        let compressed = region
            .get(off + header..off + header + len)
            .ok_or(bad("truncated"))?;
        off += header + len;
        name.clear();
        for &c in compressed {
            let (ts, tl) = tokens.spans[usize::from(c)];
            if name.len() + tl > MAX_NAME_LEN + 1 {
                return Err(Error::Limit {
                    what: "kallsyms name length",
                    limit: MAX_NAME_LEN as u64,
                });
            }
            name.extend_from_slice(&b[ts..ts + tl]);
        }
        let [kind, rest @ ..] = name.as_slice() else {
            return Err(bad("empty name"));
        };
        if !kind.is_ascii_alphabetic() || rest.is_empty() || !rest.iter().all(u8::is_ascii_graphic)
        {
            return Err(bad("name not printable"));
        }
        let s = std::str::from_utf8(rest).map_err(|_| bad("name not printable"))?;
        match s {
            "_text" => text = text.or(Some(i)),
            "linux_banner" => banner = banner.or(Some(i)),
            _ => {}
        }
        let at = u32::try_from(arena.len()).map_err(|_| bad("names too large"))?;
        arena.push_str(s);
        entries.push((at, rest.len() as u16, *kind));
    }
    Ok(Expanded {
        arena,
        entries,
        text,
        banner,
    })
}

/// One place and encoding the address table may have.
#[derive(Debug, Clone, Copy)]
struct AddressTable {
    order: TableOrder,
    encoding: AddressEncoding,
    va: u64,
    relative_base_va: Option<u64>,
}

impl AddressTable {
    fn width(&self) -> u64 {
        if self.encoding == AddressEncoding::Absolute {
            8
        } else {
            4
        }
    }
}

fn align8(va: u64) -> u64 {
    va.wrapping_add(7) & !7
}

/// Where the address table can be, given the names: before `num_syms` (< 6.4) or after
/// `token_index` (6.4+), each encoding, with 4- or 8-byte alignment.
fn address_tables(
    names: &Names,
    tokens: &Tokens,
    given: Option<&KallsymsTables>,
) -> Vec<AddressTable> {
    use AddressEncoding::*;
    let n = names.count as u64;
    let mut out = Vec::new();
    let relative = |out: &mut Vec<AddressTable>, order, va: u64, rbs: &[u64]| {
        for &encoding in &[PlaceRelative, AbsolutePercpu, BaseRelative] {
            if encoding == PlaceRelative {
                out.push(AddressTable {
                    order,
                    encoding,
                    va,
                    relative_base_va: None,
                });
                continue;
            }
            for &rb in rbs {
                out.push(AddressTable {
                    order,
                    encoding,
                    va,
                    relative_base_va: Some(rb),
                });
            }
        }
    };
    if let Some(va) = given.and_then(|g| g.offsets) {
        let order = if va < names.names_va {
            TableOrder::AddressesFirst
        } else {
            TableOrder::AddressesAfterTokenIndex
        };
        let end = va.wrapping_add(4 * n);
        let rbs = match given.and_then(|g| g.relative_base) {
            Some(rb) => vec![rb],
            None => vec![end, align8(end), names.num_syms_va.wrapping_sub(8)],
        };
        relative(&mut out, order, va, &rbs);
        out.push(AddressTable {
            order,
            encoding: Absolute,
            va,
            relative_base_va: None,
        });
        return out;
    }
    // 6.4+: after token_index.
    let after = tokens.index_va + 512;
    let mut starts = vec![after];
    if align8(after) != after {
        starts.push(align8(after));
    }
    for &va in &starts {
        let end = va + 4 * n;
        let mut rbs = vec![end];
        if align8(end) != end {
            rbs.push(align8(end));
        }
        relative(&mut out, TableOrder::AddressesAfterTokenIndex, va, &rbs);
    }
    out.push(AddressTable {
        order: TableOrder::AddressesAfterTokenIndex,
        encoding: Absolute,
        va: align8(after),
        relative_base_va: None,
    });
    // < 6.4: before num_syms (relative_base, a u64, sits just before it).
    let p = names.num_syms_va;
    let rb = p.wrapping_sub(8);
    for pad in [0, 4] {
        let va = rb.wrapping_sub(pad).wrapping_sub(4 * n);
        relative(&mut out, TableOrder::AddressesFirst, va, &[rb]);
        let va = p.wrapping_sub(pad).wrapping_sub(4 * n);
        out.push(AddressTable {
            order: TableOrder::AddressesFirst,
            encoding: PlaceRelative,
            va,
            relative_base_va: None,
        });
    }
    out.push(AddressTable {
        order: TableOrder::AddressesFirst,
        encoding: Absolute,
        va: p.wrapping_sub(8 * n),
        relative_base_va: None,
    });
    out
}

/// The address of symbol `i` from the raw entry `raw` (4 or 8 bytes).
#[inline]
fn address(table: &AddressTable, base: u64, i: usize, raw: &[u8]) -> u64 {
    let v = match raw.len() {
        8 => return u64::from_le_bytes(raw.try_into().unwrap_or_default()),
        _ => u32::from_le_bytes(raw.try_into().unwrap_or_default()),
    };
    match table.encoding {
        AddressEncoding::Absolute => u64::from(v),
        AddressEncoding::BaseRelative => base.wrapping_add(u64::from(v)),
        AddressEncoding::AbsolutePercpu => {
            if (v as i32) >= 0 {
                u64::from(v)
            } else {
                // relative_base − 1 − v, with v negative.
                base.wrapping_sub(1).wrapping_sub(v as i32 as i64 as u64)
            }
        }
        AddressEncoding::PlaceRelative => table
            .va
            .wrapping_add(4 * i as u64)
            .wrapping_add(v as i32 as i64 as u64),
    }
}

/// Tries every address table for these names; the first that passes every check becomes
/// the symbol table. Rejections are noted in `why`.
pub(super) fn try_names(
    image: &ImageCopy,
    tokens: &Tokens,
    names: &Names,
    given: Option<&KallsymsTables>,
    anchors: Anchors,
    why: &mut Rejections,
) -> Result<Option<(SymbolTable, KallsymsReport)>> {
    let expanded = match expand(image, tokens, names) {
        Ok(e) => e,
        Err(e) => {
            why.note(format!("names at {:#x}: {e}", names.names_va));
            return Ok(None);
        }
    };
    let Some(text) = expanded.text else {
        why.note(format!("names at {:#x}: no _text symbol", names.names_va));
        return Ok(None);
    };
    let n = names.count;
    for table in address_tables(names, tokens, given) {
        let w = table.width() as usize;
        let Some(raw) = image.slice(table.va, n * w) else {
            continue;
        };
        let base = match table.relative_base_va {
            Some(va) => match image.u64_at(va) {
                Some(b) => b,
                None => continue,
            },
            None => 0,
        };
        let at = |i: usize| address(&table, base, i, &raw[i * w..i * w + w]);
        let text_va = at(text);
        let text_ok = match anchors.text {
            Some(t) => text_va == t,
            None => image.offset_of(text_va).is_some(),
        };
        if !text_ok {
            why.note(format!(
                "{:?} {:?} at {:#x}: _text decodes to {text_va:#x}",
                table.order, table.encoding, table.va
            ));
            continue;
        }
        let banner_ok = match (anchors.banner, expanded.banner) {
            (Some(want), Some(i)) => at(i) == want,
            (Some(_), None) => false,
            (None, Some(i)) => image.slice(at(i), 14) == Some(b"Linux version ".as_slice()),
            (None, None) => true,
        };
        if !banner_ok {
            why.note(format!(
                "{:?} {:?} at {:#x}: linux_banner disagrees",
                table.order, table.encoding, table.va
            ));
            continue;
        }
        let mut addresses = Vec::with_capacity(n);
        let mut sorted = true;
        let mut prev = 0u64;
        for i in 0..n {
            let a = at(i);
            sorted &= i == 0 || a >= prev;
            prev = a;
            addresses.push(a);
        }
        if !sorted {
            why.note(format!(
                "{:?} {:?} at {:#x}: addresses not sorted",
                table.order, table.encoding, table.va
            ));
            continue;
        }
        let mut builder = SymbolTableBuilder::with_capacity(n);
        for (i, &a) in addresses.iter().enumerate() {
            builder.push(expanded.name(i), a, char::from(expanded.entries[i].2))?;
        }
        let mut report = KallsymsReport {
            description: String::new(),
            count: n,
            order: table.order,
            encoding: table.encoding,
            name_lengths: names.form,
            tables: KallsymsTables {
                names: Some(names.names_va),
                num_syms: Some(names.num_syms_va),
                token_table: Some(tokens.table_va),
                token_index: Some(tokens.index_va),
                markers: names.markers_va,
                offsets: Some(table.va),
                relative_base: table.relative_base_va,
            },
        };
        report.description = describe(&report);
        return Ok(Some((builder.build(), report)));
    }
    Ok(None)
}
