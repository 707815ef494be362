//! Kernel types from BTF bytes: header checks, then our own single-pass reader
//! ([`super::btf_walk`]) into the [`Model`].
//!
//! The lead's choice was the btfparse crate (Apache-2.0; chosen over btf-rs because btf-rs
//! is LGPL-2.1-or-later, awkward for a statically linked MIT/Apache crate). btfparse parses
//! all four Debian kernels (5.10 to 7.2, every kind up to ENUM64), but it is too slow for a
//! bootstrap budget of 150 ms: measured in release on this 2-core machine, 46–55 ms to
//! parse 3.4–5.2 MB (quiet machine) and 25–40 ms more to free its maps (a `String` per
//! name, a `BTreeMap` node per type), 65–115 ms with the conversion into our model; our
//! reader takes 4–8 ms for the same kernels. It also trusts its input more than guest
//! data deserves: names read byte by byte to the NUL (quadratic on a hostile string
//! section), unchecked header offset sums in places, and an `offset_of` that follows
//! typedef cycles and anonymous members without a bound. So the reader here is ours, and
//! btfparse stays a dev-dependency: the tests parse every kernel with both and compare
//! every type, member and enumerator (`btf_oracle`).
//!
//! The reader is bounded: each record must fit the type section, each kind be known (an
//! unknown one is [`Error::Unavailable`] naming it), each name lie in the string section
//! and end within [`MAX_NAME`] bytes, names add up to at most [`MAX_NAME_BYTES`].

use super::model::Model;
use crate::error::{Error, Result};

/// BTF magic, little-endian, as the bytes start.
pub(crate) const MAGIC: [u8; 2] = [0x9f, 0xeb];
/// Largest BTF accepted (the 7.2 kernel's is 5 MB).
pub const MAX_BTF: usize = 64 << 20;
/// Longest type or member name accepted (the kernel's KSYM_NAME_LEN is 512).
pub(crate) const MAX_NAME: usize = 1024;
/// Total name bytes the parser may read (each name is read once per use).
pub(crate) const MAX_NAME_BYTES: u64 = 64 << 20;
/// Longest header accepted (24 today; later kernels may append fields).
pub(crate) const MAX_HDR_LEN: u32 = 256;

/// The fixed part of the BTF header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) hdr_len: u32,
    pub(crate) type_off: u32,
    pub(crate) type_len: u32,
    pub(crate) str_off: u32,
    pub(crate) str_len: u32,
}

pub(crate) fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o.checked_add(4)?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn bad(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::malformed("BTF", detail)
}

impl Header {
    /// Reads and checks the header at the start of `b` (the sections may lie beyond `b`).
    pub(crate) fn read(b: &[u8]) -> Result<Self> {
        if b.len() < 24 || b[0..2] != MAGIC {
            return Err(bad("no little-endian BTF magic 9f eb"));
        }
        if b[2] != 1 {
            return Err(bad(format!("version {} (only 1 is known)", b[2])));
        }
        let f = |o| u32_at(b, o).unwrap_or(u32::MAX);
        let h = Header {
            hdr_len: f(4),
            type_off: f(8),
            type_len: f(12),
            str_off: f(16),
            str_len: f(20),
        };
        if !(24..=MAX_HDR_LEN).contains(&h.hdr_len) {
            return Err(bad(format!("header length {}", h.hdr_len)));
        }
        if h.str_len == 0 || h.type_len % 4 != 0 {
            return Err(bad("empty string section or unaligned type section"));
        }
        let end = |off: u32, len: u32| u64::from(h.hdr_len) + u64::from(off) + u64::from(len);
        let total = end(h.type_off, h.type_len).max(end(h.str_off, h.str_len));
        if total > MAX_BTF as u64 {
            return Err(Error::Limit {
                what: "BTF size",
                limit: MAX_BTF as u64,
            });
        }
        Ok(h)
    }

    /// [`Header::read`], without the error: for scanning.
    pub(crate) fn parse_prefix(b: &[u8]) -> Option<Self> {
        Self::read(b).ok()
    }

    /// Reads and checks the header at the start of `b`; the sections must fit in `b`.
    pub(crate) fn parse(b: &[u8]) -> Result<Self> {
        let h = Self::read(b)?;
        if h.total_len() > b.len() {
            return Err(bad(format!(
                "sections end at {}, beyond the {} bytes given",
                h.total_len(),
                b.len()
            )));
        }
        Ok(h)
    }

    /// Bytes from the header's start to the end of the last section.
    pub(crate) fn total_len(&self) -> usize {
        let end = |off: u32, len: u32| self.hdr_len as usize + off as usize + len as usize;
        end(self.type_off, self.type_len).max(end(self.str_off, self.str_len))
    }
}

/// Size of the data following a type's 12-byte record, by kind; `None` for unknown kinds.
pub(crate) fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 => 4,                    // INT: encoding
        2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        3 => 12,                   // ARRAY
        4 | 5 => 12 * vlen,        // STRUCT, UNION: members
        6 => 8 * vlen,             // ENUM
        13 => 8 * vlen,            // FUNC_PROTO: params
        14 => 4,                   // VAR: linkage
        15 => 12 * vlen,           // DATASEC
        17 => 4,                   // DECL_TAG: component index
        19 => 12 * vlen,           // ENUM64
        _ => return None,
    })
}

/// Parses BTF `bytes` into a [`Model`], with room for `spare` types added later (the
/// global-types table's pointers and arrays: growing a vector of 100k types would copy it).
pub(crate) fn parse(bytes: &[u8], spare: usize) -> Result<Model> {
    let h = Header::parse(bytes)?;
    super::btf_walk::parse(bytes, &h, spare)
}
