//! A copy of the kernel image as it is mapped, the input of kallsyms and BTF carving.
//!
//! The bootstrap copies the kernel's mapped image once (tens of MiB, through the backend's
//! fastest path) and every decoder works on that copy: no guest round trip per table
//! entry, and the same decoders run on a `vmlinux` file's loadable segments in tests.

use crate::error::{Error, Result};

/// Page size of the copy's presence map.
pub const PAGE: u64 = 4096;

/// The kernel image as mapped from `base`: bytes of unmapped pages are zero and flagged.
#[derive(Debug, Clone)]
pub struct ImageCopy {
    base: u64,
    bytes: Vec<u8>,
    /// One flag per 4 KiB page: whether it was mapped (and read).
    present: Vec<bool>,
}

impl ImageCopy {
    /// An image whose every page is present.
    pub fn new(base: u64, bytes: Vec<u8>) -> Self {
        let pages = bytes.len().div_ceil(PAGE as usize);
        Self {
            base,
            bytes,
            present: vec![true; pages],
        }
    }

    /// An image with a presence flag per page (`present.len()` must cover `bytes`).
    pub fn with_presence(base: u64, bytes: Vec<u8>, present: Vec<bool>) -> Result<Self> {
        if present.len() < bytes.len().div_ceil(PAGE as usize) {
            return Err(Error::malformed(
                "kernel image copy",
                "presence map too short",
            ));
        }
        Ok(Self {
            base,
            bytes,
            present,
        })
    }

    /// The virtual address of the first byte.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// All bytes (unmapped pages read as zero).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the copy is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The virtual address of byte `offset`.
    pub fn va_of(&self, offset: usize) -> u64 {
        self.base.wrapping_add(offset as u64)
    }

    /// The offset of virtual address `va`, if inside the copy.
    pub fn offset_of(&self, va: u64) -> Option<usize> {
        let off = va.checked_sub(self.base)?;
        (off < self.bytes.len() as u64).then_some(off as usize)
    }

    /// `len` bytes at `va`, if all inside the copy and on mapped pages.
    pub fn slice(&self, va: u64, len: usize) -> Option<&[u8]> {
        let start = self.offset_of(va)?;
        let end = start.checked_add(len)?;
        if end > self.bytes.len() {
            return None;
        }
        if len > 0 {
            let first = start / PAGE as usize;
            let last = (end - 1) / PAGE as usize;
            if !self.present[first..=last].iter().all(|p| *p) {
                return None;
            }
        }
        Some(&self.bytes[start..end])
    }

    /// A little-endian u32 at `va`.
    pub fn u32_at(&self, va: u64) -> Option<u32> {
        self.slice(va, 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// A little-endian u64 at `va`.
    pub fn u64_at(&self, va: u64) -> Option<u64> {
        self.slice(va, 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
    }

    /// Whether the page holding byte `offset` was mapped.
    pub fn is_present(&self, offset: usize) -> bool {
        self.present
            .get(offset / PAGE as usize)
            .copied()
            .unwrap_or(false)
    }
}

/// Lowest virtual address of the kernel's text mapping on x86-64.
pub const KERNEL_MAP_START: u64 = 0xffff_ffff_8000_0000;

impl ImageCopy {
    /// The loadable segments of a `vmlinux` ELF file laid out as the kernel maps them (link
    /// addresses, no KASLR slide): from the lowest segment at or above
    /// [`KERNEL_MAP_START`] to the end of the highest. Segments outside that range (the
    /// per-CPU template, linked at 0) are left out, as are gaps between segments (absent).
    /// At most `max_len` bytes are laid out.
    pub fn from_vmlinux(elf: &[u8], max_len: usize) -> Result<Self> {
        let bad = |d: &'static str| Error::malformed("vmlinux ELF", d);
        let u16_at = |o: usize| -> Result<u16> {
            Ok(u16::from_le_bytes(
                elf.get(o..o + 2)
                    .ok_or(bad("truncated"))?
                    .try_into()
                    .unwrap_or_default(),
            ))
        };
        let u32_at = |o: usize| -> Result<u32> {
            Ok(u32::from_le_bytes(
                elf.get(o..o + 4)
                    .ok_or(bad("truncated"))?
                    .try_into()
                    .unwrap_or_default(),
            ))
        };
        let u64_at = |o: usize| -> Result<u64> {
            Ok(u64::from_le_bytes(
                elf.get(o..o + 8)
                    .ok_or(bad("truncated"))?
                    .try_into()
                    .unwrap_or_default(),
            ))
        };
        if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
            return Err(bad("not a little-endian ELF64 file"));
        }
        let phoff = usize::try_from(u64_at(0x20)?).map_err(|_| bad("program header offset"))?;
        let phentsize = usize::from(u16_at(0x36)?);
        let phnum = usize::from(u16_at(0x38)?);
        if phentsize < 56 {
            return Err(bad("program header entry size"));
        }
        // (vaddr, file offset, file size, memory size) of each PT_LOAD in the kernel map.
        let mut segs = Vec::new();
        for i in 0..phnum {
            let ph = phoff
                .checked_add(i * phentsize)
                .ok_or(bad("program header offset"))?;
            if u32_at(ph)? != 1 {
                continue;
            }
            let (off, vaddr, filesz, memsz) = (
                u64_at(ph + 8)?,
                u64_at(ph + 16)?,
                u64_at(ph + 32)?,
                u64_at(ph + 40)?,
            );
            if vaddr >= KERNEL_MAP_START {
                segs.push((vaddr, off, filesz, memsz));
            }
        }
        let base = segs
            .iter()
            .map(|s| s.0)
            .min()
            .ok_or(bad("no loadable segment in the kernel map"))?;
        let end = segs
            .iter()
            .map(|s| s.0.saturating_add(s.3))
            .max()
            .unwrap_or(base);
        let len = usize::try_from(end - base).map_err(|_| bad("image size"))?;
        if len > max_len {
            return Err(Error::Limit {
                what: "vmlinux image size",
                limit: max_len as u64,
            });
        }
        let mut bytes = vec![0u8; len];
        let mut present = vec![false; len.div_ceil(PAGE as usize)];
        for (vaddr, off, filesz, memsz) in segs {
            let at = (vaddr - base) as usize;
            let n = usize::try_from(filesz.min(memsz)).map_err(|_| bad("segment size"))?;
            let off = usize::try_from(off).map_err(|_| bad("segment offset"))?;
            let src = elf
                .get(off..off.checked_add(n).ok_or(bad("segment size"))?)
                .ok_or(bad("segment outside the file"))?;
            bytes[at..at + n].copy_from_slice(src);
            let mem_end = at
                + usize::try_from(memsz)
                    .map_err(|_| bad("segment size"))?
                    .min(len - at);
            for p in present
                .iter_mut()
                .take(mem_end.div_ceil(PAGE as usize))
                .skip(at / PAGE as usize)
            {
                *p = true;
            }
        }
        Self::with_presence(base, bytes, present)
    }
}
