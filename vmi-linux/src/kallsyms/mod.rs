//! kallsyms decoded from a copy of the kernel image.
//!
//! The kernel links its own symbol table into `.rodata` (`scripts/kallsyms`): every symbol's
//! name compressed with a 256-entry token table, plus its address in one of several
//! encodings. Nothing in the image says which layout a build uses, so the decoder finds the
//! tables by their shape, tries every layout x86-64 kernels 5.10–7.x use, and accepts a
//! candidate only when it is self-consistent (markers agree with the names, addresses are
//! sorted as the kernel sorts them, names are printable) and agrees with the anchors found
//! independently (`_text`, `linux_banner`).
//!
//! The tables, in kernel order:
//!
//! | table | content |
//! |---|---|
//! | `kallsyms_num_syms` | u32 count N |
//! | `kallsyms_names` | per symbol: length (1 byte, or 2 bytes when bit 7 is set, 6.1+), then that many token indices; the first expanded char is the `nm` type |
//! | `kallsyms_markers` | u32 offset in `names` of every 256th symbol |
//! | `kallsyms_seqs_of_names` | 3 bytes per symbol (6.2+, and Debian's 6.1), not needed here |
//! | `kallsyms_token_table` | 256 NUL-terminated tokens; slot `'0'..='9'` holds the digit itself |
//! | `kallsyms_token_index` | 256 × u16 offsets into the token table |
//! | `kallsyms_offsets` / `kallsyms_addresses` | per symbol: i32/u32 offset, or u64 address |
//! | `kallsyms_relative_base` | u64 base of the offsets (until 6.19) |
//!
//! Before 6.4 the addresses come first (then `num_syms`, `names`, …); from 6.4 they follow
//! `token_index` ([`TableOrder`]). See [`AddressEncoding`] for the address forms.
//!
//! Everything read is untrusted: counts are capped ([`MAX_SYMBOLS`], [`MAX_NAME_LEN`]),
//! every loop is bounded by the image size, and a corrupted table is an [`Error`], never a
//! panic or an allocation sized by an unchecked guest value.

mod decode;
mod locate;
#[cfg(test)]
mod synth;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;

use crate::error::{Error, Result};
use crate::image::ImageCopy;
use crate::symbols::SymbolTable;

/// The most symbols a table may hold (a distro kernel has 150–250 k).
pub const MAX_SYMBOLS: usize = 2_000_000;

/// The longest symbol name accepted (the kernel's `KSYM_NAME_LEN` since 6.1).
pub const MAX_NAME_LEN: usize = 512;

/// What a decoded table must agree with before it is accepted.
#[derive(Debug, Clone, Copy, Default)]
pub struct Anchors {
    /// The runtime address of `_text` found from the page tables / IDT, if known.
    pub text: Option<u64>,
    /// The runtime address of the `Linux version …` banner found in the image, if known.
    /// `linux_banner` must decode to it, or to the same banner up to the build number
    /// (`#1`): 6.1+ kernels hold two copies (a weak one in `init/version.c` without the
    /// build number, the strong one in `init/version-timestamp.c`), and the first found by
    /// a scan is the weak one.
    pub banner: Option<u64>,
}

/// Where the address table sits relative to the name tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableOrder {
    /// Before 6.4: `offsets`/`addresses`, `relative_base`, then `num_syms`, `names`,
    /// `markers`, (`seqs_of_names`), `token_table`, `token_index`.
    #[default]
    AddressesFirst,
    /// 6.4 and later: `num_syms`, `names`, `markers`, `token_table`, `token_index`, then
    /// `offsets`/`addresses`, `relative_base`, `seqs_of_names`.
    AddressesAfterTokenIndex,
}

/// How a symbol's address is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressEncoding {
    /// `kallsyms_addresses`: a u64 per symbol (no `CONFIG_KALLSYMS_BASE_RELATIVE`, gone in
    /// 6.11).
    Absolute,
    /// `relative_base + (u32)offset` (6.15–6.19 on x86-64).
    BaseRelative,
    /// `CONFIG_KALLSYMS_ABSOLUTE_PERCPU` (x86-64 up to 6.14): a non-negative offset is the
    /// value itself (per-CPU symbols), a negative one means `relative_base − 1 − offset`.
    #[default]
    AbsolutePercpu,
    /// 7.0 and later: each i32 entry is relative to its own address; no `relative_base`.
    PlaceRelative,
}

/// How a name's compressed length is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NameLengths {
    /// One byte. Also reported when no length reached 0x80, where both forms read the same.
    #[default]
    OneByte,
    /// One byte, or two when bit 7 of the first is set (6.1+, names longer than 127).
    TwoByte,
}

/// Virtual addresses of the kallsyms tables (VMCOREINFO's `SYMBOL(kallsyms_*)` entries when
/// known; filled in by the decoder in [`KallsymsReport::tables`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KallsymsTables {
    /// `kallsyms_names`.
    pub names: Option<u64>,
    /// `kallsyms_num_syms`.
    pub num_syms: Option<u64>,
    /// `kallsyms_token_table`.
    pub token_table: Option<u64>,
    /// `kallsyms_token_index`.
    pub token_index: Option<u64>,
    /// `kallsyms_markers` (not in VMCOREINFO; found after the names).
    pub markers: Option<u64>,
    /// `kallsyms_offsets`, or `kallsyms_addresses` on kernels with absolute addresses.
    pub offsets: Option<u64>,
    /// `kallsyms_relative_base` (none with absolute or place-relative addresses).
    pub relative_base: Option<u64>,
}

/// How the tables were laid out and encoded.
#[derive(Debug, Clone, Default)]
pub struct KallsymsReport {
    /// A one-line description (layout, encoding, name lengths, table addresses).
    pub description: String,
    /// Number of symbols.
    pub count: usize,
    /// Where the address table sits.
    pub order: TableOrder,
    /// How addresses are stored.
    pub encoding: AddressEncoding,
    /// How name lengths are stored.
    pub name_lengths: NameLengths,
    /// Where each table was found.
    pub tables: KallsymsTables,
}

/// Finds and decodes kallsyms in `image`.
///
/// Finds the token table by its digit run (`"0\0" … "9\0"` at slots 0x30–0x39), the token
/// index after it, the markers and names before it and `num_syms` before the names, then
/// tries each address table position and encoding; the first candidate that passes every
/// check wins. With `anchors` given, decoded `_text` and `linux_banner` must equal them;
/// without, `_text` must lie in the image and `linux_banner` (if present) must point at a
/// `Linux version ` string.
pub fn decode(image: &ImageCopy, anchors: Anchors) -> Result<(SymbolTable, KallsymsReport)> {
    let mut why = Rejections::default();
    let from = anchors
        .banner
        .and_then(|va| image.offset_of(va))
        .unwrap_or(0);
    for tokens in locate::token_tables(image, from) {
        for names in locate::names_before(image, &tokens)? {
            if let Some(found) = decode::try_names(image, &tokens, &names, None, anchors, &mut why)?
            {
                return Ok(found);
            }
        }
        why.note(format!(
            "token table at {:#x}: no names table decoded",
            tokens.table_va
        ));
    }
    Err(why.into_error())
}

/// Decodes kallsyms whose table addresses are known (VMCOREINFO's `SYMBOL(kallsyms_*)`).
///
/// `names`, `num_syms`, `token_table` and `token_index` are required; `offsets` and
/// `relative_base` are used when given and searched (both table orders, every encoding)
/// when not. The same checks as [`decode`] apply.
pub fn decode_at(
    image: &ImageCopy,
    tables: KallsymsTables,
    anchors: Anchors,
) -> Result<(SymbolTable, KallsymsReport)> {
    let need = |v: Option<u64>, what: &'static str| {
        v.ok_or_else(|| Error::not_found("kallsyms table address", what))
    };
    let names_va = need(tables.names, "kallsyms_names")?;
    let num_syms_va = need(tables.num_syms, "kallsyms_num_syms")?;
    let tokens = locate::tokens_at(
        image,
        need(tables.token_table, "kallsyms_token_table")?,
        need(tables.token_index, "kallsyms_token_index")?,
    )?;
    let mut why = Rejections::default();
    for names in locate::names_at(image, names_va, num_syms_va)? {
        if let Some(found) =
            decode::try_names(image, &tokens, &names, Some(&tables), anchors, &mut why)?
        {
            return Ok(found);
        }
    }
    Err(why.into_error())
}

/// Why candidates were rejected, for the error message (bounded).
#[derive(Debug, Default)]
pub(crate) struct Rejections {
    notes: Vec<String>,
    dropped: usize,
}

impl Rejections {
    const KEEP: usize = 8;

    pub(crate) fn note(&mut self, why: String) {
        if self.notes.len() < Self::KEEP {
            self.notes.push(why);
        } else {
            self.dropped += 1;
        }
    }

    fn into_error(self) -> Error {
        if self.notes.is_empty() {
            return Error::not_found("kallsyms", "no token table in the image");
        }
        let mut detail = self.notes.join("; ");
        if self.dropped > 0 {
            let _ = write!(detail, "; and {} more", self.dropped);
        }
        Error::not_found("kallsyms", detail)
    }
}

fn describe(report: &KallsymsReport) -> String {
    let order = match report.order {
        TableOrder::AddressesFirst => "addresses before names (< 6.4)",
        TableOrder::AddressesAfterTokenIndex => "addresses after token_index (6.4+)",
    };
    let encoding = match report.encoding {
        AddressEncoding::Absolute => "absolute u64",
        AddressEncoding::BaseRelative => "base-relative u32",
        AddressEncoding::AbsolutePercpu => "absolute-percpu i32",
        AddressEncoding::PlaceRelative => "place-relative i32",
    };
    let lengths = match report.name_lengths {
        NameLengths::OneByte => "1-byte",
        NameLengths::TwoByte => "1/2-byte",
    };
    let t = &report.tables;
    let mut s = format!(
        "kallsyms: {} symbols, {order}, {encoding} addresses, {lengths} name lengths;",
        report.count
    );
    for (name, va) in [
        ("num_syms", t.num_syms),
        ("names", t.names),
        ("markers", t.markers),
        ("token_table", t.token_table),
        ("token_index", t.token_index),
        ("offsets", t.offsets),
        ("relative_base", t.relative_base),
    ] {
        if let Some(va) = va {
            let _ = write!(s, " {name} {va:#x}");
        }
    }
    s
}
