//! Expanding the names and decoding the addresses of a located table.

use crate::error::{Error, Result};
use crate::image::ImageCopy;
use crate::symbols::{SymbolTable, SymbolTableBuilder};

use super::locate::{Names, Tokens};
use super::{
    describe, AddressEncoding, Anchors, KallsymsReport, KallsymsTables, NameLengths, Rejections,
    TableOrder, MAX_NAME_LEN,
};

/// The most bytes all expanded names may take (a distro kernel needs 3–5 MiB).
const MAX_ARENA: usize = 256 << 20;

/// Width tokens are padded to for expanding (real tokens are at most ~20 bytes).
const PAD: usize = 32;

/// Every name expanded once into one arena: `(start, length, nm type)` per symbol, the
/// type char left in the arena just before each name.
struct Expanded {
    arena: Vec<u8>,
    entries: Vec<(u32, u16, u8)>,
    text: Option<usize>,
    banner: Option<usize>,
}

/// Expands every name through the token table (whose tokens are printable ASCII, checked
/// when it was located). Each name needs an alphabetic `nm` type and is at most
/// [`MAX_NAME_LEN`] bytes.
fn expand(image: &ImageCopy, tokens: &Tokens, names: &Names) -> Result<Expanded> {
    let bad = |d: &'static str| Error::malformed("kallsyms names", d);
    let b = image.bytes();
    let start = image
        .offset_of(names.names_va)
        .ok_or(bad("outside the image"))?;
    let end = image.offset_of(names.end_va).unwrap_or(b.len()).max(start);
    let region = &b[start..end];
    // Tokens padded to a fixed width when they all fit: expanding then copies one
    // constant-size block per token instead of calling memmove for a few bytes.
    let longest = tokens.spans.iter().map(|s| s.1).max().unwrap_or(0);
    let padded = (longest <= PAD).then(|| {
        let mut p = Box::new([[0u8; PAD]; 256]);
        for (slot, &(ts, tl)) in p.iter_mut().zip(&tokens.spans) {
            slot[..tl].copy_from_slice(&b[ts..ts + tl]);
        }
        p
    });
    let lens: Vec<usize> = tokens.spans.iter().map(|s| s.1).collect();
    let step = longest.max(PAD);
    let mut arena = vec![0u8; region.len().saturating_mul(2).min(MAX_ARENA)];
    let mut pos = 0usize;
    // Each entry takes at least 2 bytes of the region: that bounds the count.
    let mut entries = Vec::with_capacity(names.count.min(region.len() / 2));
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
        let room = pos + len * step;
        if room > arena.len() {
            if room > MAX_ARENA + (MAX_NAME_LEN + 2) * step {
                return Err(Error::Limit {
                    what: "kallsyms names",
                    limit: MAX_ARENA as u64,
                });
            }
            arena.resize(room.max(arena.len() * 2), 0);
        }
        let begin = pos;
        match &padded {
            Some(padded) => {
                for &c in compressed {
                    arena[pos..pos + PAD].copy_from_slice(&padded[usize::from(c)]);
                    pos += lens[usize::from(c)];
                }
            }
            None => {
                for &c in compressed {
                    let (ts, tl) = tokens.spans[usize::from(c)];
                    arena[pos..pos + tl].copy_from_slice(&b[ts..ts + tl]);
                    pos += tl;
                }
            }
        }
        let total = pos - begin;
        if total > MAX_NAME_LEN + 1 {
            return Err(Error::Limit {
                what: "kallsyms name length",
                limit: MAX_NAME_LEN as u64,
            });
        }
        if pos > MAX_ARENA {
            return Err(Error::Limit {
                what: "kallsyms names",
                limit: MAX_ARENA as u64,
            });
        }
        let kind = arena[begin];
        if total < 2 || !kind.is_ascii_alphabetic() {
            return Err(bad("name without an nm type"));
        }
        let name = &arena[begin + 1..pos];
        if name == b"_text" {
            text = text.or(Some(i));
        } else if name == b"linux_banner" {
            banner = banner.or(Some(i));
        }
        let at = u32::try_from(begin + 1).map_err(|_| bad("names too large"))?;
        entries.push((at, (total - 1) as u16, kind));
    }
    arena.truncate(pos);
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

/// Whether `linux_banner` decoded to `va` agrees with the banner found at `want`: the same
/// address, or the same banner up to the build number. 6.1+ links a weak copy in
/// `init/version.c` (`… #  SMP …`, no build number) before the strong one of
/// `init/version-timestamp.c` (`… #1 SMP …`), so a scan may find the weak one first.
fn same_banner(image: &ImageCopy, va: u64, want: u64) -> bool {
    if va == want {
        return true;
    }
    let text = |va: u64| {
        let start = image.offset_of(va)?;
        let b = image.bytes();
        let window = &b[start..b.len().min(start + 1024)];
        let len = memchr::memchr(0, window)?;
        image.slice(va, len + 1)?;
        Some(&window[..len])
    };
    let upto_hash = |s: &'_ [u8]| -> Option<usize> { memchr::memchr(b'#', s) };
    match (text(va), text(want)) {
        (Some(a), Some(b)) if a.starts_with(b"Linux version ") => {
            a == b || matches!((upto_hash(a), upto_hash(b)), (Some(i), Some(j)) if a[..i] == b[..j])
        }
        _ => false,
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
            (Some(want), Some(i)) => same_banner(image, at(i), want),
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

        let Expanded { arena, entries, .. } = expanded;
        // Every token was printable ASCII, so is every name.
        let arena = String::from_utf8(arena)
            .map_err(|_| Error::malformed("kallsyms names", "not ASCII"))?;
        let mut builder = SymbolTableBuilder::from_arena(arena, n);
        for (&(start, len, kind), &a) in entries.iter().zip(&addresses) {
            builder.push_in_arena(start, u32::from(len), a, kind)?;
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
