//! Reads of kernel (or process) virtual memory for one operation, with a translation
//! cache that lives only as long as the operation (the guest may run between operations,
//! so translations are never kept across them).

use std::cell::RefCell;

use vmi_core::{AddressSpace, Gva, PhysicalMemory, TranslationCache};

use crate::error::{Error, Result};

/// Longest C string read from the guest by default.
pub const MAX_CSTR: usize = 4096;

/// Virtual-memory reads in one address space.
pub struct Reader<'a, M: ?Sized> {
    mem: &'a M,
    space: AddressSpace,
    cache: RefCell<TranslationCache>,
}

impl<'a, M: PhysicalMemory + ?Sized> Reader<'a, M> {
    /// A reader of `space` over `mem`.
    pub fn new(mem: &'a M, space: AddressSpace) -> Self {
        Self {
            mem,
            space,
            cache: RefCell::new(TranslationCache::with_capacity(512)),
        }
    }

    /// The address space read.
    pub fn space(&self) -> AddressSpace {
        self.space
    }

    /// Reads `buf.len()` bytes at `va`.
    pub fn read(&self, va: u64, buf: &mut [u8]) -> Result<()> {
        self.cache
            .borrow_mut()
            .read_virtual(self.mem, self.space.mode, self.space.cr3, Gva(va), buf)
            .map_err(Error::from)
    }

    /// Reads a little-endian u64.
    pub fn u64(&self, va: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read(va, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian u32.
    pub fn u32(&self, va: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read(va, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// Reads an unsigned little-endian integer of `size` bytes (1, 2, 4 or 8).
    pub fn uint(&self, va: u64, size: u64) -> Result<u64> {
        let mut b = [0u8; 8];
        let n = match size {
            1 | 2 | 4 | 8 => size as usize,
            _ => {
                return Err(Error::malformed(
                    "integer field",
                    format!("size {size} at {va:#x}"),
                ))
            }
        };
        self.read(va, &mut b[..n])?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a NUL-terminated string of at most `max` bytes; a string without NUL within
    /// `max` bytes is cut there (kernel strings in fixed arrays need not be terminated).
    pub fn cstr(&self, va: u64, max: usize) -> Result<String> {
        let mut out = Vec::new();
        let mut at = va;
        while out.len() < max {
            let in_page = (4096 - (at & 0xfff)) as usize;
            let n = in_page.min(max - out.len()).min(256);
            let mut chunk = [0u8; 256];
            self.read(at, &mut chunk[..n])?;
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.extend_from_slice(&chunk[..n]);
            at = at.wrapping_add(n as u64);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The nodes of a circular `list_head` list whose head is at `head`: the address of
    /// each node's `list_head` (not the head itself), following `next` (at offset 0).
    /// A list that does not come back to `head` within `max` nodes, or that revisits a
    /// node, is an error (a corrupted or hostile list), never an endless walk.
    pub fn list(&self, head: u64, max: usize, what: &'static str) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut node = self.u64(head)?;
        while node != head {
            if out.len() >= max {
                return Err(Error::Limit {
                    what,
                    limit: max as u64,
                });
            }
            if node == 0 || !seen.insert(node) {
                return Err(Error::malformed(
                    what,
                    format!("list through {head:#x} breaks or loops at {node:#x}"),
                ));
            }
            out.push(node);
            node = self.u64(node)?;
        }
        Ok(out)
    }
}
