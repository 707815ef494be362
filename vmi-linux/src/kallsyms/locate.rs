//! Finding the kallsyms tables in an image copy by their shape.
//!
//! Offsets here are into [`ImageCopy::bytes`]; virtual addresses are converted at the edges.
//! Every walk is bounded by the image length and by [`MAX_SYMBOLS`] / [`MAX_NAME_LEN`].

use crate::error::{Error, Result};
use crate::image::ImageCopy;

use super::{NameLengths, MAX_NAME_LEN, MAX_SYMBOLS};

/// The longest token accepted (real kernels have tokens of a few to a few tens of bytes).
const MAX_TOKEN_LEN: usize = 256;

/// Most digit runs examined (a real image has a handful: the token table, and u16 tables
/// of characters in fonts and keymaps that fail validation at once).
const MAX_DIGIT_RUNS: usize = 4096;

/// Most `seqs_of_names`-gap marker candidates examined per token table.
const MAX_GAP_CANDIDATES: usize = 16;

/// The longest a compressed name entry can be: a 2-byte length plus one index per char.
const MAX_ENTRY: usize = 2 + MAX_NAME_LEN + 1;

/// Slots `'0'..='9'` of the token table: each digit is its own token.
const DIGIT_RUN: &[u8; 20] = b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00";

/// A validated token table and index.
#[derive(Debug, Clone)]
pub(super) struct Tokens {
    pub(super) table_va: u64,
    pub(super) index_va: u64,
    /// (offset in the image, length) of each of the 256 tokens.
    pub(super) spans: [(usize, usize); 256],
}

/// A names table whose entries were walked and (where found) checked against the markers.
#[derive(Debug, Clone)]
pub(super) struct Names {
    pub(super) names_va: u64,
    pub(super) num_syms_va: u64,
    pub(super) count: usize,
    /// The form that decoded; `OneByte` also when no length had bit 7 set.
    pub(super) form: NameLengths,
    pub(super) end_va: u64,
    pub(super) markers_va: Option<u64>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(off..off.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(off..off.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn zeros(b: &[u8], from: usize, to: usize) -> bool {
    b.get(from..to).is_some_and(|s| s.iter().all(|&c| c == 0))
}

/// Validates the token table at `table_va` with its index at `index_va`: every index entry
/// must point just past the previous token's NUL, and the table must end at most 7 zero bytes
/// before the index.
pub(super) fn tokens_at(image: &ImageCopy, table_va: u64, index_va: u64) -> Result<Tokens> {
    let bad = |d: &'static str| Error::malformed("kallsyms token table", d);
    let b = image.bytes();
    let index = image
        .slice(index_va, 512)
        .ok_or(bad("token_index outside the image"))?;
    let t = image
        .offset_of(table_va)
        .ok_or(bad("token_table outside the image"))?;
    let i = image
        .offset_of(index_va)
        .filter(|&i| i > t)
        .ok_or(bad("token_index does not follow token_table"))?;
    let mut spans = [(0usize, 0usize); 256];
    let mut expect = 0usize;
    for (slot, span) in spans.iter_mut().enumerate() {
        let at = usize::from(u16_at(index, 2 * slot).unwrap_or(u16::MAX));
        if at != expect {
            return Err(bad("token_index does not match the tokens"));
        }
        let start = t + at;
        let region = b
            .get(start..i.min(start + MAX_TOKEN_LEN + 1))
            .ok_or(bad("token runs into token_index"))?;
        let len = memchr::memchr(0, region).ok_or(bad("token too long or unterminated"))?;
        // Tokens are pieces of `nm` types and names: printable ASCII.
        if !region[..len].iter().all(u8::is_ascii_graphic) {
            return Err(bad("token not printable"));
        }
        *span = (start, len);
        expect = at + len + 1;
    }
    let end = t + expect;
    if end > i || i - end >= 8 || !zeros(b, end, i) {
        return Err(bad("token_table does not end just before token_index"));
    }
    if image.slice(table_va, i - t).is_none() {
        return Err(bad("token_table on an unmapped page"));
    }
    Ok(Tokens {
        table_va,
        index_va,
        spans,
    })
}

/// Token tables (with their index) in the image, found by the digit run, lazily: first
/// from offset `from` to the end, then from the start up to `from` (kallsyms sits a few MiB
/// after `linux_banner`, at the start of `.rodata`, so a banner hint skips `.text`).
pub(super) fn token_tables(image: &ImageCopy, from: usize) -> impl Iterator<Item = Tokens> + '_ {
    let b = image.bytes();
    let from = from.min(b.len());
    let head_end = b.len().min(from + DIGIT_RUN.len() - 1);
    memchr::memmem::find_iter(&b[from..], DIGIT_RUN)
        .map(move |d| d + from)
        .chain(memchr::memmem::find_iter(&b[..head_end], DIGIT_RUN).filter(move |&d| d < from))
        .take(MAX_DIGIT_RUNS)
        .filter_map(move |d| tokens_around(image, d))
}

/// The token table whose digit `'0'` is at offset `d`, if it validates.
fn tokens_around(image: &ImageCopy, d: usize) -> Option<Tokens> {
    let b = image.bytes();
    // Slots 0x30..=0xff follow the digit '0': walk them to the table's end.
    let mut p = d;
    for _ in 0x30..0x100 {
        let region = b.get(p..b.len().min(p + MAX_TOKEN_LEN + 1))?;
        p += memchr::memchr(0, region)? + 1;
    }
    (p..p + 8).find_map(|a| {
        let t = d.checked_sub(usize::from(u16_at(b, a + 2 * 0x30)?))?;
        tokens_at(image, image.va_of(t), image.va_of(a)).ok()
    })
}

/// Walks `count` name entries from offset `start`, staying below `limit`. With `markers`
/// (their offset), checks that every 256th entry starts where its marker says. Returns the
/// end offset and whether a 2-byte length was read.
fn walk(
    b: &[u8],
    start: usize,
    count: usize,
    form: NameLengths,
    limit: usize,
    markers: Option<usize>,
) -> Option<(usize, bool)> {
    let mut off = start;
    let mut long = false;
    for i in 0..count {
        if let Some(m) = markers {
            if i % 256 == 0 && u32_at(b, m + i / 256 * 4)? as usize != off - start {
                return None;
            }
        }
        let first = *b.get(off)?;
        let (len, header) = if form == NameLengths::TwoByte && first & 0x80 != 0 {
            long = true;
            let second = usize::from(*b.get(off + 1)?);
            (usize::from(first & 0x7f) | second << 7, 2)
        } else {
            (usize::from(first), 1)
        };
        if len == 0 || len > MAX_NAME_LEN + 1 {
            return None;
        }
        off += header + len;
        if off > limit {
            return None;
        }
    }
    Some((off, long))
}

/// The names table ending before markers at offset `m_start` (`m` markers): finds
/// `num_syms` before the names by its value (N with ⌈N/256⌉ = m) and checks the walk.
fn names_from_markers(image: &ImageCopy, m_start: usize, m: usize) -> Option<Names> {
    let b = image.bytes();
    let last = u32_at(b, m_start + (m - 1) * 4)? as usize;
    let lo = 256 * (m - 1) + 1;
    let hi = 256 * m;
    let s_max = m_start.checked_sub(last + 2)?;
    let s_min = s_max.saturating_sub(256 * MAX_ENTRY + 8).max(8);
    // Names start 4-byte aligned.
    let mut s = s_max.saturating_sub((image.va_of(s_max) % 4) as usize);
    while s >= s_min {
        let n_at = |p: usize| {
            u32_at(b, p)
                .map(|v| v as usize)
                .filter(|v| (lo..=hi).contains(v))
        };
        let found = match (n_at(s - 4), n_at(s - 8)) {
            (Some(n), _) => Some((n, s - 4)),
            (None, Some(n)) if u32_at(b, s - 4) == Some(0) => Some((n, s - 8)),
            _ => None,
        };
        if let Some((n, p)) = found {
            for form in [NameLengths::TwoByte, NameLengths::OneByte] {
                let tail = walk(b, s + last, n - 256 * (m - 1), form, m_start, None);
                let Some((end, _)) = tail else { continue };
                if m_start - end >= 8 || !zeros(b, end, m_start) {
                    continue;
                }
                let Some((end, long)) = walk(b, s, n, form, m_start, Some(m_start)) else {
                    continue;
                };
                if image.slice(image.va_of(s), end - s).is_none() {
                    continue;
                }
                return Some(Names {
                    names_va: image.va_of(s),
                    num_syms_va: image.va_of(p),
                    count: n,
                    form: if long { form } else { NameLengths::OneByte },
                    end_va: image.va_of(end),
                    markers_va: Some(image.va_of(m_start)),
                });
            }
        }
        s -= 4;
    }
    None
}

/// Walks markers backwards from `end` (exclusive): strictly decreasing u32 values, each
/// gap a plausible size of 256 entries, down to the 0 of symbol 0. Returns (start, count).
fn markers_ending_at(b: &[u8], end: usize) -> Option<(usize, usize)> {
    let mut q = end;
    let mut prev: Option<u32> = None;
    let mut m = 0usize;
    while m <= MAX_SYMBOLS / 256 + 1 {
        let v = u32_at(b, q.checked_sub(4)?)?;
        if let Some(p) = prev {
            let gap = p.checked_sub(v)? as usize;
            if !(256 * 2..=256 * MAX_ENTRY).contains(&gap) {
                return None;
            }
        }
        m += 1;
        q -= 4;
        if v == 0 {
            return Some((q, m));
        }
        prev = Some(v);
    }
    None
}

/// Names tables that end at the markers before the token table: markers right before it
/// (every layout but 6.2–6.3's), or before a `kallsyms_seqs_of_names` gap of 3 bytes per
/// symbol (6.2–6.3, and Debian's 6.1 which has it backported).
pub(super) fn names_before(image: &ImageCopy, tokens: &Tokens) -> Result<Vec<Names>> {
    let b = image.bytes();
    let Some(t) = image.offset_of(tokens.table_va) else {
        return Ok(Vec::new());
    };
    // Markers directly before the table (up to 7 bytes of zero padding between).
    let mut direct: Vec<(usize, usize)> = (0..8)
        .step_by(4)
        .filter_map(|pad| t.checked_sub(pad))
        .filter(|&end| zeros(b, end, t))
        .filter_map(|end| markers_ending_at(b, end))
        .collect();
    direct.sort_by_key(|&(_, m)| std::cmp::Reverse(m));
    for (start, m) in direct {
        if let Some(names) = names_from_markers(image, start, m) {
            return Ok(vec![names]);
        }
    }
    // A seqs_of_names gap: markers end at X with t − X ≈ 3·N (plus alignment).
    let mut tried = 0;
    let lowest = t.saturating_sub(3 * MAX_SYMBOLS + 16);
    let mut x = t.saturating_sub(8) & !3;
    while x > lowest && x >= 8 && tried < MAX_GAP_CANDIDATES {
        let (a, z) = (u32_at(b, x - 4), u32_at(b, x - 8));
        let plausible = matches!((a, z), (Some(a), Some(z))
            if a > z && ((a - z) as usize) >= 512 && ((a - z) as usize) <= 256 * MAX_ENTRY);
        if plausible {
            if let Some((start, m)) = markers_ending_at(b, x) {
                let gap = t - x;
                if gap >= 3 * (256 * (m - 1) + 1) && gap <= 3 * 256 * m + 16 {
                    tried += 1;
                    if let Some(names) = names_from_markers(image, start, m) {
                        return Ok(vec![names]);
                    }
                }
            }
        }
        x -= 4;
    }
    Ok(Vec::new())
}

/// The names table at a known address with its count at `num_syms_va` (VMCOREINFO).
/// Returns each length form that walks; the markers, if found after the names, must agree.
pub(super) fn names_at(image: &ImageCopy, names_va: u64, num_syms_va: u64) -> Result<Vec<Names>> {
    let bad = |d: &'static str| Error::malformed("kallsyms names", d);
    let n = image
        .u32_at(num_syms_va)
        .ok_or(bad("kallsyms_num_syms outside the image"))? as usize;
    if n == 0 {
        return Err(bad("kallsyms_num_syms is 0"));
    }
    if n > MAX_SYMBOLS {
        return Err(Error::Limit {
            what: "kallsyms symbols",
            limit: MAX_SYMBOLS as u64,
        });
    }
    let b = image.bytes();
    let s = image
        .offset_of(names_va)
        .ok_or(bad("kallsyms_names outside the image"))?;
    let mut out = Vec::new();
    for form in [NameLengths::TwoByte, NameLengths::OneByte] {
        let Some((end, long)) = walk(b, s, n, form, b.len(), None) else {
            continue;
        };
        if image.slice(names_va, end - s).is_none() {
            continue;
        }
        let form = if long { form } else { NameLengths::OneByte };
        // Markers start at the next 4- or 8-byte boundary with a 0 and must agree.
        let markers = (end..end + 8)
            .filter(|&m| image.va_of(m) % 4 == 0 && zeros(b, end, m))
            .find(|&m| u32_at(b, m) == Some(0) && walk(b, s, n, form, end, Some(m)).is_some());
        out.push(Names {
            names_va,
            num_syms_va,
            count: n,
            form,
            end_va: image.va_of(end),
            markers_va: markers.map(|m| image.va_of(m)),
        });
        if !long {
            break;
        }
    }
    if out.is_empty() {
        return Err(bad("the names do not walk to a plausible end"));
    }
    Ok(out)
}
