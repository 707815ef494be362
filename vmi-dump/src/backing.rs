//! Where a dump's bytes come from (a private read-only mapping, `pread`, or memory),
//! and how guest-physical ranges map onto file offsets.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use vmi_core::{Error, Gpa, MappedRegion, MemoryInfo, PhysicalRange, Result};

/// How a dump file is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Access {
    /// Map the file read-only and private (`MAP_PRIVATE`, `PROT_READ`): reads are
    /// copies out of the page cache, and [`vmi_core::MapPhysical`] hands out the
    /// mapping. The file must not be truncated while the dump is open (the kernel
    /// would send `SIGBUS` on access past the new end); use [`Access::Pread`] for
    /// files something else may shrink.
    #[default]
    Mmap,
    /// Read with `pread(2)` on every access: no mapping, nothing to fault on if the
    /// file changes, one system call per segment piece read.
    Pread,
}

/// The bytes of a dump.
#[derive(Debug)]
pub(crate) enum Backing {
    /// A private read-only mapping of the whole file.
    Mapped(memmap2::Mmap),
    /// An open file read with `pread`.
    File { file: File, len: u64 },
    /// Bytes in memory (tests, dumps built on the fly).
    Bytes(Vec<u8>),
}

impl Backing {
    /// Opens `path` for `access`.
    pub(crate) fn open(path: &Path, access: Access) -> Result<Self> {
        let context = || format!("opening dump {}", path.display());
        let file = File::open(path).map_err(|e| Error::io(context(), e))?;
        let len = file.metadata().map_err(|e| Error::io(context(), e))?.len();
        match access {
            // An empty file cannot be mapped (mmap rejects length 0); it holds nothing
            // either way, so read it the other way and let the parser say what is wrong.
            Access::Mmap if len > 0 => {
                // SAFETY: the mapping is private and read-only, so nothing this process
                // does through it can change the file, and the `Mmap` keeps it alive for
                // as long as the slices handed out borrow it. What memmap2 cannot rule
                // out — another process truncating the file — is documented on
                // `Access::Mmap` (`Access::Pread` avoids it).
                let map = unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) }
                    .map_err(|e| Error::io(format!("mapping dump {}", path.display()), e))?;
                Ok(Self::Mapped(map))
            }
            _ => Ok(Self::File { file, len }),
        }
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> u64 {
        match self {
            Self::Mapped(m) => m.len() as u64,
            Self::File { len, .. } => *len,
            Self::Bytes(b) => b.len() as u64,
        }
    }

    /// The bytes at `offset..offset+len`, when they are in memory.
    pub(crate) fn slice(&self, offset: u64, len: u64) -> Option<&[u8]> {
        let bytes: &[u8] = match self {
            Self::Mapped(m) => m,
            Self::Bytes(b) => b,
            Self::File { .. } => return None,
        };
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        bytes.get(start..end)
    }

    /// Fills `buf` from file offset `offset`; fails with [`Error::Malformed`] past the
    /// end of the file.
    pub(crate) fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let past_end = || {
            Error::malformed(
                "memory dump",
                format!(
                    "{:#x} bytes at file offset {offset:#x} lie past the end of the file ({:#x} bytes)",
                    buf.len(),
                    self.len()
                ),
            )
        };
        let end = offset.checked_add(buf.len() as u64).ok_or_else(past_end)?;
        if end > self.len() {
            return Err(past_end());
        }
        match self {
            Self::File { file, .. } => file
                .read_exact_at(buf, offset)
                .map_err(|e| Error::io(format!("reading dump at offset {offset:#x}"), e)),
            _ => {
                let src = self.slice(offset, buf.len() as u64).ok_or_else(past_end)?;
                buf.copy_from_slice(src);
                Ok(())
            }
        }
    }

    /// Reads `len` bytes at `offset` into a new vector (bounded by the file size, so a
    /// hostile length cannot allocate more than the file holds).
    pub(crate) fn read_vec(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        let in_file = offset.checked_add(len).is_some_and(|end| end <= self.len());
        if !in_file {
            return Err(Error::malformed(
                "memory dump",
                format!("{len:#x} bytes at file offset {offset:#x} lie past the end of the file ({:#x} bytes)", self.len()),
            ));
        }
        let mut v = vec![0u8; len as usize];
        self.read_at(offset, &mut v)?;
        Ok(v)
    }
}

/// One guest-physical range of a dump and where its bytes are in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Guest-physical address of the first byte.
    pub gpa: Gpa,
    /// File offset of the first byte.
    pub file_offset: u64,
    /// Bytes stored in the file.
    pub file_len: u64,
    /// Bytes of guest memory the range covers; those past `file_len` read as zeros
    /// (ELF's `p_memsz > p_filesz`).
    pub mem_len: u64,
}

impl LoadSegment {
    /// One past the last guest-physical byte.
    pub fn end(&self) -> u64 {
        self.gpa.0.saturating_add(self.mem_len)
    }
}

/// Guest-physical ranges over a [`Backing`], sorted and non-overlapping.
#[derive(Debug)]
pub(crate) struct SegmentMap {
    segments: Vec<LoadSegment>,
}

impl SegmentMap {
    /// Checks and sorts `segments`: every file range inside a file of `file_len` bytes,
    /// no guest range wrapping or overlapping another; empty ones are dropped.
    pub(crate) fn new(mut segments: Vec<LoadSegment>, file_len: u64) -> Result<Self> {
        segments.retain(|s| s.mem_len > 0);
        for s in &segments {
            if s.file_len > s.mem_len {
                return Err(Error::malformed(
                    "memory dump",
                    format!(
                        "segment at {} stores more bytes ({:#x}) than it covers ({:#x})",
                        s.gpa, s.file_len, s.mem_len
                    ),
                ));
            }
            if s.gpa.0.checked_add(s.mem_len).is_none() {
                return Err(Error::malformed(
                    "memory dump",
                    format!(
                        "segment at {} of {:#x} bytes wraps the address space",
                        s.gpa, s.mem_len
                    ),
                ));
            }
            if s.file_offset
                .checked_add(s.file_len)
                .is_none_or(|end| end > file_len)
            {
                return Err(Error::malformed(
                    "memory dump",
                    format!(
                        "segment at {} ({:#x} bytes at file offset {:#x}) extends past the end of the file ({file_len:#x} bytes): truncated dump?",
                        s.gpa, s.file_len, s.file_offset
                    ),
                ));
            }
        }
        segments.sort_by_key(|s| s.gpa.0);
        if let Some(w) = segments.windows(2).find(|w| w[0].end() > w[1].gpa.0) {
            return Err(Error::malformed(
                "memory dump",
                format!("segments at {} and {} overlap", w[0].gpa, w[1].gpa),
            ));
        }
        Ok(Self { segments })
    }

    pub(crate) fn segments(&self) -> &[LoadSegment] {
        &self.segments
    }

    /// The segment holding `addr`, if any.
    fn find(&self, addr: u64) -> Option<&LoadSegment> {
        let i = self.segments.partition_point(|s| s.gpa.0 <= addr);
        let s = self.segments.get(i.checked_sub(1)?)?;
        (addr < s.end()).then_some(s)
    }

    /// Fills `buf` with guest memory at `gpa`, which may span adjacent segments; fails
    /// with [`Error::UnmappedPhysical`] (before reading anything) if any byte is in a
    /// hole.
    pub(crate) fn read(&self, backing: &Backing, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        let unmapped = || Error::UnmappedPhysical { gpa, len };
        let end = gpa.0.checked_add(len).ok_or_else(unmapped)?;
        // Check first, so a failing read leaves no half-filled buffer behind.
        let mut addr = gpa.0;
        while addr < end {
            addr = self.find(addr).ok_or_else(unmapped)?.end();
        }
        let mut done = 0usize;
        while done < buf.len() {
            let addr = gpa.0 + done as u64;
            let s = self.find(addr).ok_or_else(unmapped)?;
            let off = addr - s.gpa.0;
            let n = (s.end() - addr).min((buf.len() - done) as u64) as usize;
            let out = &mut buf[done..done + n];
            let stored = s.file_len.saturating_sub(off).min(n as u64) as usize;
            backing.read_at(s.file_offset + off, &mut out[..stored])?;
            out[stored..].fill(0);
            done += n;
        }
        Ok(())
    }

    /// RAM ranges: the segments, adjacent ones merged.
    pub(crate) fn memory_info(&self) -> MemoryInfo {
        let mut ranges: Vec<PhysicalRange> = Vec::with_capacity(self.segments.len());
        for s in &self.segments {
            match ranges.last_mut() {
                Some(r) if r.end() == s.gpa.0 => r.len += s.mem_len,
                _ => ranges.push(PhysicalRange {
                    start: s.gpa,
                    len: s.mem_len,
                }),
            }
        }
        MemoryInfo { ranges }
    }

    /// The stored part of every segment as a mapped region, when the backing is in
    /// memory.
    pub(crate) fn mapped_regions<'a>(&self, backing: &'a Backing) -> Result<Vec<MappedRegion<'a>>> {
        let mut out = Vec::with_capacity(self.segments.len());
        for s in self.segments.iter().filter(|s| s.file_len > 0) {
            let bytes = backing.slice(s.file_offset, s.file_len).ok_or_else(|| {
                Error::unsupported(
                    "guest memory mapping",
                    "the dump is read with pread (Access::Pread), not mapped",
                )
            })?;
            let ptr = core::ptr::NonNull::from(bytes).cast::<u8>();
            // SAFETY: `bytes` borrows the backing for `'a`: the mapping or vector it
            // points into stays valid and unchanged (private, read-only) for `'a`, and
            // the region covers exactly `bytes.len()` bytes of it.
            out.push(unsafe { MappedRegion::new(s.gpa, ptr, bytes.len()) });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(gpa: u64, file_offset: u64, file_len: u64, mem_len: u64) -> LoadSegment {
        LoadSegment {
            gpa: Gpa(gpa),
            file_offset,
            file_len,
            mem_len,
        }
    }

    #[test]
    fn reads_span_adjacent_segments_and_zero_fill_tails() {
        let backing = Backing::Bytes((0u8..=255).collect());
        let map = SegmentMap::new(
            vec![
                seg(0x1010, 16, 16, 16),
                seg(0x1000, 0, 16, 16),
                seg(0x2000, 32, 8, 16),
            ],
            256,
        )
        .unwrap();
        let mut b = [0u8; 32];
        map.read(&backing, Gpa(0x1000), &mut b).unwrap();
        assert_eq!(b.to_vec(), (0u8..32).collect::<Vec<_>>());
        let mut b = [0xffu8; 12];
        map.read(&backing, Gpa(0x2004), &mut b).unwrap();
        assert_eq!(b, [36, 37, 38, 39, 0, 0, 0, 0, 0, 0, 0, 0]);
        // Holes, the end of a segment and wrapping fail, and leave the buffer alone.
        let mut b = [0xaau8; 4];
        for gpa in [0xffe, 0x101e, 0x200e, 0x3000, u64::MAX - 1] {
            assert!(matches!(
                map.read(&backing, Gpa(gpa), &mut b),
                Err(Error::UnmappedPhysical { .. })
            ));
            assert_eq!(b, [0xaa; 4]);
        }
        let info = map.memory_info();
        assert_eq!(info.ranges.len(), 2);
        assert_eq!(info.ram_size(), 48);
        let regions = map.mapped_regions(&backing).unwrap();
        let mut one = [0u8; 1];
        regions[2].read(Gpa(0x2007), &mut one).unwrap();
        assert_eq!(one[0], 39);
    }

    #[test]
    fn bad_segment_tables_are_refused() {
        let bad = [
            vec![seg(0, 0, 17, 16)],
            vec![seg(0, 250, 16, 16)],
            vec![seg(0, u64::MAX, 16, 16)],
            vec![seg(u64::MAX - 4, 0, 8, 8)],
            vec![seg(0, 0, 16, 16), seg(8, 0, 16, 16)],
        ];
        for segs in bad {
            assert!(
                matches!(
                    SegmentMap::new(segs.clone(), 256),
                    Err(Error::Malformed { .. })
                ),
                "{segs:?}"
            );
        }
    }
}
