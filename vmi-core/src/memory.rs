//! Guest physical memory capabilities.

use crate::addr::{Gfn, Gpa, PAGE_SIZE};
use crate::error::{Error, Result};

/// Read access to guest physical memory.
///
/// Implementations must fail with [`Error::UnmappedPhysical`] (not panic, not return
/// zeros) for ranges the guest has no memory at, and must be callable from several
/// threads at once (`&self`).
pub trait PhysicalMemory {
    /// Fills `buf` with guest physical memory starting at `gpa`. The range may cross page
    /// boundaries; it either succeeds completely or fails.
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()>;

    /// Reads several ranges. Backends with per-request costs (sockets) override this to
    /// batch; the default reads them one after the other and stops at the first error.
    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> Result<()> {
        for (gpa, buf) in requests.iter_mut() {
            self.read_physical(*gpa, buf)?;
        }
        Ok(())
    }

    /// Reads one whole 4 KiB frame.
    fn read_frame(&self, gfn: Gfn, buf: &mut [u8; PAGE_SIZE as usize]) -> Result<()> {
        let gpa = Gpa::try_from(gfn)?;
        self.read_physical(gpa, buf)
    }

    /// Reads a little-endian `u64` (a paging-structure entry, a pointer).
    fn read_u64(&self, gpa: Gpa) -> Result<u64> {
        let mut b = [0u8; 8];
        self.read_physical(gpa, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads a little-endian `u32`.
    fn read_u32(&self, gpa: Gpa) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_physical(gpa, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// Write access to guest physical memory.
pub trait PhysicalMemoryWrite {
    /// Writes `data` into guest physical memory at `gpa`. Fails with
    /// [`Error::UnmappedPhysical`] where the guest has no RAM.
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()>;
}

impl<T: PhysicalMemoryWrite + ?Sized> PhysicalMemoryWrite for &T {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        (**self).write_physical(gpa, data)
    }
}

impl<T: PhysicalMemoryWrite + ?Sized> PhysicalMemoryWrite for std::sync::Arc<T> {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        (**self).write_physical(gpa, data)
    }
}

/// The guest's physical memory size and layout.
pub trait MemoryLayout {
    /// RAM size and the RAM ranges of guest physical address space.
    fn memory_info(&self) -> Result<MemoryInfo>;
}

/// Guest RAM layout: how much RAM there is and where it lies in the physical address
/// space (below 4 GiB and above the PCI hole on x86 PCs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryInfo {
    /// RAM ranges, sorted and non-overlapping.
    pub ranges: Vec<PhysicalRange>,
}

/// A range of guest physical address space backed by RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhysicalRange {
    /// First byte.
    pub start: Gpa,
    /// Length in bytes.
    pub len: u64,
}

impl PhysicalRange {
    /// One past the last byte (saturating).
    pub fn end(&self) -> u64 {
        self.start.0.saturating_add(self.len)
    }

    /// Whether `[gpa, gpa+len)` lies inside this range.
    pub fn contains(&self, gpa: Gpa, len: u64) -> bool {
        gpa.0 >= self.start.0 && gpa.0.checked_add(len).is_some_and(|end| end <= self.end())
    }
}

impl MemoryInfo {
    /// Total bytes of RAM.
    pub fn ram_size(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// One past the highest RAM byte (LibVMI's `max_physical_address`).
    pub fn max_physical_address(&self) -> Gpa {
        Gpa(self
            .ranges
            .iter()
            .map(PhysicalRange::end)
            .max()
            .unwrap_or(0))
    }

    /// Checks that `[gpa, gpa+len)` is inside one RAM range.
    pub fn check(&self, gpa: Gpa, len: u64) -> Result<()> {
        if self.ranges.iter().any(|r| r.contains(gpa, len)) {
            Ok(())
        } else {
            Err(Error::UnmappedPhysical { gpa, len })
        }
    }
}

/// Zero-copy access to guest memory that is mapped into this process (a shared RAM
/// backend, a KVMi remote mapping). The LibVMI checklist row "guest memory mapping".
pub trait MapPhysical {
    /// The mapped regions, each covering a guest physical range.
    fn mapped_regions(&self) -> Result<Vec<MappedRegion<'_>>>;
}

/// A region of guest physical memory mapped into this process.
///
/// The guest's vCPUs may write it at any time, so the region never hands out `&[u8]`
/// (which would promise the bytes do not change); it copies with [`MappedRegion::read`]
/// and [`MappedRegion::write`], which access the mapping only with volatile loads and
/// stores: naturally aligned 8-byte words where the range allows (an aligned `u64` the
/// guest writes whole is read either old or new, never torn), single bytes at the
/// unaligned head and tail.
#[derive(Debug, Clone, Copy)]
pub struct MappedRegion<'a> {
    gpa: Gpa,
    ptr: core::ptr::NonNull<u8>,
    len: usize,
    _lifetime: core::marker::PhantomData<&'a [u8]>,
}

// SAFETY: the region is a plain pointer into a shared mapping that stays valid for `'a`;
// reading it from any thread is as sound as from one (the guest writes it concurrently
// anyway, which `read` tolerates by copying bytes without forming references).
unsafe impl Send for MappedRegion<'_> {}
// SAFETY: as above; `MappedRegion` offers no interior mutability.
unsafe impl Sync for MappedRegion<'_> {}

impl<'a> MappedRegion<'a> {
    /// Describes `len` bytes at `ptr` as guest physical memory starting at `gpa`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be a readable mapping that stays mapped for `'a`.
    pub unsafe fn new(gpa: Gpa, ptr: core::ptr::NonNull<u8>, len: usize) -> Self {
        Self {
            gpa,
            ptr,
            len,
            _lifetime: core::marker::PhantomData,
        }
    }

    /// Guest physical address of the first byte.
    pub fn gpa(&self) -> Gpa {
        self.gpa
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the region is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of the first byte (for `process_vm_readv`-style consumers).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// Copies `buf.len()` bytes at guest physical `gpa` out of the mapping.
    pub fn read(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        let off = self.offset_of(gpa, buf.len())?;
        // SAFETY: `offset_of` checked `off + buf.len() <= self.len`, and `new`'s contract
        // keeps `ptr..ptr+len` mapped for `'a`; `buf` is ours alone (`&mut`) and cannot
        // overlap the mapping, which nothing in this process borrows as a Rust reference.
        // The guest may write the mapping meanwhile, which `copy_from_shared` tolerates
        // (volatile accesses only).
        unsafe {
            crate::volatile_copy::copy_from_shared(
                self.ptr.as_ptr().add(off),
                buf.as_mut_ptr(),
                buf.len(),
            );
        }
        Ok(())
    }

    /// Copies `data` into the mapping at guest physical `gpa` (the mapping must be
    /// writable; regions from read-only mappings must not be given to this function).
    ///
    /// # Safety
    /// The mapping must be writable.
    pub unsafe fn write(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        let off = self.offset_of(gpa, data.len())?;
        // SAFETY: bounds checked by `offset_of`; writability is the caller's contract;
        // `data` is a shared borrow nobody writes during the call, and cannot overlap the
        // mapping (which is never borrowed as a Rust reference). The guest may access the
        // mapping meanwhile, which `copy_to_shared` tolerates (volatile accesses only).
        unsafe {
            crate::volatile_copy::copy_to_shared(
                data.as_ptr(),
                self.ptr.as_ptr().add(off),
                data.len(),
            );
        }
        Ok(())
    }

    fn offset_of(&self, gpa: Gpa, len: usize) -> Result<usize> {
        let unmapped = || Error::UnmappedPhysical {
            gpa,
            len: len as u64,
        };
        let off = gpa.0.checked_sub(self.gpa.0).ok_or_else(unmapped)?;
        let off = usize::try_from(off).map_err(|_| unmapped())?;
        match off.checked_add(len) {
            Some(end) if end <= self.len => Ok(off),
            _ => Err(unmapped()),
        }
    }
}

/// Guest physical memory held in a `Vec`, sparse by frame. Useful for tests, for
/// address-translation over a captured set of pages, and as a reference implementation.
#[derive(Debug, Default, Clone)]
pub struct SparseMemory {
    frames: std::collections::BTreeMap<u64, Box<[u8; PAGE_SIZE as usize]>>,
}

impl SparseMemory {
    /// Empty memory: every read fails until frames are written.
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `data` at `gpa`, creating zero-filled frames as needed.
    pub fn write(&mut self, gpa: Gpa, data: &[u8]) {
        let mut addr = gpa.0;
        let mut rest = data;
        while !rest.is_empty() {
            let off = (addr % PAGE_SIZE) as usize;
            let n = rest.len().min(PAGE_SIZE as usize - off);
            let frame = self
                .frames
                .entry(addr / PAGE_SIZE)
                .or_insert_with(|| Box::new([0u8; PAGE_SIZE as usize]));
            frame[off..off + n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            addr = addr.wrapping_add(n as u64);
        }
    }

    /// Writes a little-endian `u64`.
    pub fn write_u64(&mut self, gpa: Gpa, value: u64) {
        self.write(gpa, &value.to_le_bytes());
    }

    /// Number of frames present.
    pub fn frame_count(&self) -> usize {
        self.frames.len()
    }
}

impl PhysicalMemory for SparseMemory {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        gpa.0
            .checked_add(len)
            .ok_or(Error::UnmappedPhysical { gpa, len })?;
        let mut addr = gpa.0;
        let mut done = 0usize;
        while done < buf.len() {
            let off = (addr % PAGE_SIZE) as usize;
            let n = (buf.len() - done).min(PAGE_SIZE as usize - off);
            let frame = self
                .frames
                .get(&(addr / PAGE_SIZE))
                .ok_or(Error::UnmappedPhysical { gpa, len })?;
            buf[done..done + n].copy_from_slice(&frame[off..off + n]);
            done += n;
            addr += n as u64;
        }
        Ok(())
    }
}

impl<T: PhysicalMemory + ?Sized> PhysicalMemory for &T {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        (**self).read_physical(gpa, buf)
    }
    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> Result<()> {
        (**self).read_physical_many(requests)
    }
}

impl<T: PhysicalMemory + ?Sized> PhysicalMemory for std::sync::Arc<T> {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        (**self).read_physical(gpa, buf)
    }
    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> Result<()> {
        (**self).read_physical_many(requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_memory_reads_across_frames() {
        let mut m = SparseMemory::new();
        m.write(Gpa(0xff8), &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let mut b = [0u8; 12];
        m.read_physical(Gpa(0xff8), &mut b).unwrap();
        assert_eq!(b, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        assert!(matches!(
            m.read_physical(Gpa(0x2ff8), &mut b),
            Err(Error::UnmappedPhysical { .. })
        ));
        assert!(m.read_physical(Gpa(u64::MAX - 2), &mut b).is_err());
    }

    #[test]
    fn memory_info_bounds() {
        let info = MemoryInfo {
            ranges: vec![
                PhysicalRange {
                    start: Gpa(0),
                    len: 0xc000_0000,
                },
                PhysicalRange {
                    start: Gpa(0x1_0000_0000),
                    len: 0x4000_0000,
                },
            ],
        };
        assert_eq!(info.ram_size(), 0x1_0000_0000);
        assert_eq!(info.max_physical_address(), Gpa(0x1_4000_0000));
        assert!(info.check(Gpa(0xbfff_f000), 0x1000).is_ok());
        assert!(info.check(Gpa(0xbfff_f000), 0x1001).is_err());
        assert!(info.check(Gpa(u64::MAX), 2).is_err());
    }

    #[test]
    fn mapped_region_bounds() {
        let mut backing = vec![0u8; 64];
        backing[10] = 0xaa;
        let ptr = core::ptr::NonNull::new(backing.as_mut_ptr()).unwrap();
        // SAFETY: `backing` outlives `region` in this test.
        let region = unsafe { MappedRegion::new(Gpa(0x1000), ptr, backing.len()) };
        let mut b = [0u8; 1];
        region.read(Gpa(0x100a), &mut b).unwrap();
        assert_eq!(b[0], 0xaa);
        assert!(region.read(Gpa(0x1040), &mut b).is_err());
        assert!(region.read(Gpa(0xfff), &mut b).is_err());
        let mut big = [0u8; 65];
        assert!(region.read(Gpa(0x1000), &mut big).is_err());
    }

    /// Another thread rewrites every word of the mapping, each time with a new
    /// generation byte repeated eight times, while this one reads it through the region
    /// at word-aligned and unaligned offsets: every aligned word read is one whole
    /// generation (old or new, never a mix of bytes of two), and the reads see the
    /// writer's progress (the loads are not hoisted out of the loop).
    #[test]
    fn mapped_region_reads_whole_words_under_concurrent_writes() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        const WORDS: usize = 512;
        let backing: Vec<AtomicU64> = (0..WORDS).map(|_| AtomicU64::new(0)).collect();
        let ptr = core::ptr::NonNull::new(backing.as_ptr().cast_mut().cast::<u8>()).unwrap();
        // SAFETY: `backing` outlives `region`; another thread writes it only through
        // atomics, and the region only reads it (volatile, never through references).
        let region = unsafe { MappedRegion::new(Gpa(0x10_0000), ptr, WORDS * 8) };
        let stop = AtomicBool::new(false);
        let mut seen = std::collections::BTreeSet::new();
        let mut torn = None;
        std::thread::scope(|s| {
            s.spawn(|| {
                let mut generation = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    generation = generation.wrapping_add(1);
                    let word = u64::from_ne_bytes([generation; 8]);
                    for w in &backing {
                        w.store(word, Ordering::Relaxed);
                    }
                }
            });
            let mut buf = vec![0u8; WORDS * 8];
            'rounds: for round in 0..4_000usize {
                // Start offsets 0..8 within the region, destination offsets 0..8 in
                // `buf`, so the words are read aligned whatever the destination.
                let skip = round % 8;
                let dst = (round / 8) % 8;
                let len = WORDS * 8 - 8;
                region
                    .read(Gpa(0x10_0000 + skip as u64), &mut buf[dst..dst + len])
                    .unwrap();
                // The aligned words of the source start at `8 - skip` bytes in (or 0).
                let first = (8 - skip) % 8;
                for word in buf[dst + first..dst + len].chunks_exact(8) {
                    if word.iter().any(|&b| b != word[0]) {
                        torn = Some((round, word.to_vec()));
                        break 'rounds;
                    }
                    seen.insert(word[0]);
                }
            }
            // Stopped before asserting, so a failure cannot leave the writer spinning.
            stop.store(true, Ordering::Relaxed);
        });
        assert_eq!(torn, None, "a torn word (round, bytes)");
        assert!(
            seen.len() > 2,
            "reads saw only generations {seen:?}: the writer's stores never showed"
        );
    }

    #[test]
    fn mapped_region_writes_land_at_every_offset() {
        let mut backing = vec![0u8; 64];
        let ptr = core::ptr::NonNull::new(backing.as_mut_ptr()).unwrap();
        // SAFETY: `backing` outlives `region` and is writable; it is not touched
        // otherwise until the region is gone.
        let region = unsafe { MappedRegion::new(Gpa(0x2000), ptr, 64) };
        let data: Vec<u8> = (1..=21).collect();
        for off in 0..=43u64 {
            // SAFETY: the mapping (a Vec) is writable.
            unsafe { region.write(Gpa(0x2000 + off), &data).unwrap() };
            let mut back = [0u8; 21];
            region.read(Gpa(0x2000 + off), &mut back).unwrap();
            assert_eq!(back[..], data[..], "offset {off}");
        }
        // SAFETY: as above; this write is out of bounds and must be refused.
        assert!(unsafe { region.write(Gpa(0x2000 + 44), &data) }.is_err());
        drop(backing);
    }
}
