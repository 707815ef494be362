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
