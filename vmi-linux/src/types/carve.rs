//! Finding the kernel's `.BTF` in a copy of its mapped image.
//!
//! The kernel keeps its BTF resident (between `__start_BTF` and `__stop_BTF`, in rodata)
//! for `/sys/kernel/btf/vmlinux` and the BPF verifier. Without kallsyms we scan for the
//! header: magic `9f eb 01 00`, a plausible header, sections inside the copy on mapped
//! pages, and confirm a candidate by parsing it and finding `struct task_struct`.

use super::btf::{self, Header, MAX_BTF};
use super::model::{Kind, Model};
use super::Types;
use crate::error::{Error, Result};
use crate::image::ImageCopy;

/// How many plausible candidates (magic and header checks passed) are parsed before
/// giving up: a hostile guest could plant copies of a header, and each costs a parse.
/// Hits failing the header checks cost next to nothing and are not counted.
const MAX_CANDIDATES: usize = 16;

/// Checks the header at `va` and returns the candidate's bytes if it looks like the
/// kernel's BTF: `hdr_len` ≥ 24, `type_off` 0, the strings right after the types, all
/// within the copy on mapped pages and at most [`MAX_BTF`] bytes.
fn candidate(image: &ImageCopy, va: u64) -> Option<&[u8]> {
    let head = image.slice(va, 24)?;
    let hdr_len = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let header_bytes = image.slice(va, hdr_len.clamp(24, btf::MAX_HDR_LEN) as usize)?;
    let total = plausible_len(header_bytes)?;
    let bytes = image.slice(va, total)?;
    // The string section starts with the empty name and ends with a NUL.
    (bytes.last() == Some(&0)).then_some(bytes)
}

/// The header checks of a candidate: `header` starts with [`MAGIC`] and holds the whole
/// header (up to `hdr_len`, at most 256 bytes); returns the BTF's total length when it looks
/// like the kernel's (`hdr_len` ≥ 24, `type_off` 0, strings right after the types, at most
/// [`MAX_BTF`] bytes). Shared with the scan that sizes the image window
/// ([`crate::kernel_map::CopyExtent::Window`]), so both judge a header alike.
pub(crate) fn plausible_len(header: &[u8]) -> Option<usize> {
    if header.get(0..4)? != MAGIC {
        return None;
    }
    let h = Header::parse_prefix(header)?;
    if h.type_off != 0 || h.str_off != h.type_len || h.type_len == 0 {
        return None;
    }
    let total = h.total_len();
    (total <= MAX_BTF).then_some(total)
}

/// The longest BTF header [`plausible_len`] looks at.
pub(crate) const MAX_HEADER: usize = btf::MAX_HDR_LEN as usize;

/// Confirms a candidate: it parses (4-8 ms for a Debian kernel's) and defines
/// `struct task_struct`. `spare` as for [`btf::parse`]; the model is returned.
fn confirm(bytes: &[u8], spare: usize) -> Result<Model> {
    let model = btf::parse(bytes, spare)?;
    let id = model.lookup("struct task_struct")?;
    match model.get(id)?.kind {
        Kind::Record { size, .. } if size > 0 => Ok(model),
        _ => Err(Error::not_found("BTF", "a BTF without struct task_struct")),
    }
}

/// The BTF magic, version 1, flags 0.
pub(crate) const MAGIC: [u8; 4] = [0x9f, 0xeb, 0x01, 0x00];
/// [`MAGIC`] and the 24-byte header every kernel writes so far (`hdr_len` 24).
pub(crate) const MAGIC_HDR24: [u8; 8] = [0x9f, 0xeb, 0x01, 0x00, 24, 0, 0, 0];

/// Scans `image` for the BTF header and confirms the first plausible candidate: its
/// virtual address, its bytes (in the copy) and its parsed model.
///
/// The usual header (`hdr_len` 24) is searched first: with four more bytes the search
/// runs at memory speed, where `9f eb` alone stops at every `jmp rel8` (`eb`) of the
/// kernel's code. Other header lengths are tried in a second scan; at most
/// [`MAX_CANDIDATES`] candidates are parsed over both.
fn scan(image: &ImageCopy, spare: usize) -> Result<(u64, &[u8], Model)> {
    let mut last_error = None;
    let mut parsed = 0;
    let bytes = image.bytes();
    let first = memchr::memmem::find_iter(bytes, &MAGIC_HDR24);
    let others = memchr::memmem::find_iter(bytes, &MAGIC)
        .filter(|&off| bytes.get(off..off + 8) != Some(&MAGIC_HDR24[..]));
    for off in first.chain(others) {
        let va = image.va_of(off);
        let Some(candidate) = candidate(image, va) else {
            continue;
        };
        parsed += 1;
        if parsed > MAX_CANDIDATES {
            return Err(Error::Limit {
                what: "plausible BTF headers",
                limit: MAX_CANDIDATES as u64,
            });
        }
        match confirm(candidate, spare) {
            Ok(model) => return Ok((va, candidate, model)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        Error::not_found(
            "BTF",
            "no BTF header in the kernel image (CONFIG_DEBUG_INFO_BTF off, or unmapped)",
        )
    }))
}

/// Finds the kernel's BTF in `image`: its virtual address and a copy of its bytes.
///
/// Scans for the magic with header checks and confirms the first plausible candidate by
/// parsing it and finding `struct task_struct`. Errors: [`Error::NotFound`] (no candidate, e.g.
/// a kernel built without `CONFIG_DEBUG_INFO_BTF`, or its pages not mapped), or the
/// parse error of the last candidate that looked right.
pub fn carve_btf(image: &ImageCopy) -> Result<(u64, Vec<u8>)> {
    let (va, bytes, _) = scan(image, 0)?;
    Ok((va, bytes.to_vec()))
}

/// [`carve_btf`] and [`Types::from_btf`] in one: the candidate that confirms is
/// the model kept, so the kernel's BTF is parsed once and not copied. Returns its
/// virtual address, its length in bytes and the types.
pub fn carve_btf_types(image: &ImageCopy) -> Result<(u64, usize, Types)> {
    let (va, bytes, model) = scan(image, Types::SPARE_TYPES)?;
    Ok((va, bytes.len(), Types::from_btf_model(model)))
}

/// The BTF between `start` and `stop` (`__start_BTF`, `__stop_BTF` from kallsyms): checks
/// the header and that the sections fit, without scanning. The bytes are not parsed here;
/// [`super::Types::from_btf`] does that.
pub fn carve_btf_at(image: &ImageCopy, start: u64, stop: u64) -> Result<(u64, Vec<u8>)> {
    let len = stop
        .checked_sub(start)
        .filter(|&l| l >= 24 && l <= MAX_BTF as u64)
        .ok_or_else(|| {
            Error::malformed(
                "BTF",
                format!("__start_BTF {start:#x} .. __stop_BTF {stop:#x}"),
            )
        })? as usize;
    let bytes = image.slice(start, len).ok_or_else(|| {
        Error::not_found(
            "BTF",
            format!("{start:#x}..{stop:#x} is not within the mapped kernel image"),
        )
    })?;
    let h = Header::parse(bytes)?;
    Ok((start, bytes[..h.total_len()].to_vec()))
}
