//! The kernel ELF (`vmlinux`) inside an x86 `bzImage` (`vmlinuz`).
//!
//! A bzImage is the real-mode setup code followed by the protected-mode part, which
//! carries the compressed kernel (`vmlinux.bin`: the ELF stripped of its symbol table but
//! with `.BTF` and the kallsyms tables, plus the relocation table) as its "payload". The
//! boot protocol (2.08+, Linux 2.6.26) names it: `setup_sects` at 0x1f1, `payload_offset`
//! and `payload_length` at 0x248/0x24c (see the kernel's `Documentation/arch/x86/boot.rst`).
//! The compressor is recognised by its magic. The kernel's build appends the uncompressed
//! size as 4 little-endian bytes to every payload but gzip's (whose trailer already ends
//! with it), which checks the result. An image without a usable header is searched for
//! the magics instead, each candidate decompressed until one yields an ELF.
//!
//! Decompression uses Debian's tools (`gzip`, `xz`, `zstd`, `lz4`; installed with apt
//! when missing): the reference implementations of each format, already on Debian hosts,
//! and no compile time for xtask — the Rust crates for zstd, lz4 and xz are C bindings,
//! and their pure-Rust ports differ in maturity (lz4's legacy frame, which the kernel
//! uses, is rarely supported).

use std::process::Command;

use crate::util::{bail, ensure_tools, filter, filter_any, Result};

/// A compression format the kernel may use for its payload.
#[derive(Clone, Copy, Debug)]
struct Format {
    name: &'static str,
    magic: &'static [u8],
    tool: &'static str,
    package: &'static str,
    /// Whether the build appended the uncompressed size after the stream.
    size_appended: bool,
}

const FORMATS: [Format; 4] = [
    Format {
        name: "zstd",
        magic: &[0x28, 0xb5, 0x2f, 0xfd],
        tool: "zstd",
        package: "zstd",
        size_appended: true,
    },
    Format {
        name: "lz4 (legacy frame)",
        magic: &[0x02, 0x21, 0x4c, 0x18],
        tool: "lz4",
        package: "lz4",
        size_appended: true,
    },
    Format {
        name: "xz",
        magic: &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
        tool: "xz",
        package: "xz-utils",
        size_appended: true,
    },
    Format {
        name: "gzip",
        magic: &[0x1f, 0x8b, 0x08],
        tool: "gzip",
        package: "gzip",
        size_appended: false,
    },
];

/// The ELF magic.
const ELF_MAGIC: &[u8] = b"\x7fELF";

/// Decompresses `format`'s stream `data` (without any appended size).
fn decompress(format: Format, data: &[u8]) -> Result<Vec<u8>> {
    ensure_tools(&[format.tool], format.package, "extracting vmlinux")?;
    filter(Command::new(format.tool).arg("-dcq"), data)
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let bytes = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The payload named by the boot header: its bytes, if the header is usable.
fn payload_from_header(image: &[u8]) -> Option<&[u8]> {
    if image.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let version = u16::from_le_bytes(image.get(0x206..0x208)?.try_into().ok()?);
    if version < 0x208 {
        return None;
    }
    // setup_sects 0 means 4 (boot.rst); the protected-mode code follows the boot sector.
    let setup_sects = match *image.get(0x1f1)? {
        0 => 4,
        n => usize::from(n),
    };
    let start = (setup_sects + 1) * 512 + usize::try_from(read_u32(image, 0x248)?).ok()?;
    let len = usize::try_from(read_u32(image, 0x24c)?).ok()?;
    image.get(start..start.checked_add(len)?)
}

/// The kernel ELF inside the bzImage `image`, with how it was found (for messages).
pub(crate) fn extract_vmlinux(image: &[u8]) -> Result<(Vec<u8>, String)> {
    if let Some(payload) = payload_from_header(image) {
        let Some(format) = FORMATS.iter().find(|f| payload.starts_with(f.magic)) else {
            bail!(
                "the bzImage payload starts with {:02x?}: not a compressor this knows \
                 (zstd, lz4, xz, gzip)",
                &payload[..payload.len().min(6)]
            );
        };
        let (stream, expected) = if format.size_appended {
            let at = payload.len().saturating_sub(4);
            (&payload[..at], read_u32(payload, at))
        } else {
            (payload, read_u32(payload, payload.len().saturating_sub(4)))
        };
        let elf = decompress(*format, stream)?;
        if !elf.starts_with(ELF_MAGIC) {
            bail!("the {} payload does not decompress to an ELF", format.name);
        }
        // The appended size is the length modulo 2^32.
        if expected.is_some_and(|n| n as usize != elf.len() % (1 << 32)) {
            bail!(
                "the {} payload decompressed to {} bytes, the image says {expected:?}",
                format.name,
                elf.len()
            );
        }
        return Ok((elf, format!("{} payload from the boot header", format.name)));
    }
    // No usable header: try each magic's occurrences, in order, until one decompresses
    // to an ELF. Bounded: at most 64 candidates per format.
    for format in FORMATS {
        let mut from = 0;
        for _ in 0..64 {
            let Some(at) = find(&image[from..], format.magic).map(|i| from + i) else {
                break;
            };
            from = at + 1;
            // The stream is followed by the rest of the image: the tool decodes it, then
            // fails on the trailing bytes; the output counts.
            ensure_tools(&[format.tool], format.package, "extracting vmlinux")?;
            let mut cmd = Command::new(format.tool);
            cmd.arg("-dcq").stderr(std::process::Stdio::null());
            if let Ok((_, out)) = filter_any(&mut cmd, &image[at..]) {
                if out.starts_with(ELF_MAGIC) {
                    return Ok((
                        out,
                        format!("{} stream at {at:#x} (magic scan)", format.name),
                    ));
                }
            }
        }
    }
    bail!("no compressed kernel ELF found (no boot header, no payload by magic)")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
