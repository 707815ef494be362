//! Where guest RAM lies in guest physical address space, and where each piece lives in
//! its RAM backend.
//!
//! QEMU splits one RAM backend (`pc.ram`, or the `memory-backend-*` object named by
//! `-machine memory-backend=`) into several guest-physical ranges: below the legacy VGA
//! hole, from 1 MiB up to the PCI hole, and above 4 GiB. A [`RamLayout`] records each
//! range together with its offset in the backend, which is what turns a guest physical
//! address into a file offset ([`SharedRam`](crate::ram::SharedRam)) or a host virtual
//! address in QEMU ([`ProcMem`](crate::ram::ProcMem)). It is parsed from `info mtree -f`
//! by [`crate::hmp::parse_mtree_flat`].

use std::ops::Range;

use vmi_core::{Error, Gpa, MemoryInfo, PhysicalRange, Result};

/// One guest-physical range of RAM and where it lives in its backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamRange {
    /// First guest physical address of the range.
    pub gpa_start: Gpa,
    /// Length in bytes (never 0).
    pub len: u64,
    /// Offset of `gpa_start` inside the RAM backend.
    pub backend_offset: u64,
    /// Name of the RAM backend's memory region (`pc.ram`, a memory-backend id such as
    /// `ram0`, …).
    pub backend_name: String,
    /// Read-only to the guest: RAM of the backend the firmware made ROM (`rom: ram0
    /// @000f0000` in `info mtree -f`: SeaBIOS's shadowed BIOS and option ROMs). Readable
    /// like RAM; writes are refused.
    pub rom: bool,
}

impl RamRange {
    /// One past the last guest physical address (the constructor of [`RamLayout`]
    /// guarantees it does not overflow).
    pub fn gpa_end(&self) -> u64 {
        self.gpa_start.0.saturating_add(self.len)
    }

    /// One past the last backend offset.
    pub fn backend_end(&self) -> u64 {
        self.backend_offset.saturating_add(self.len)
    }
}

/// A piece of an access that lies inside one [`RamRange`], as produced by
/// [`RamLayout::split`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk<'a> {
    /// The range this piece lies in.
    pub range: &'a RamRange,
    /// Offset of the piece in the RAM backend.
    pub backend_offset: u64,
    /// Bytes of the caller's buffer this piece covers.
    pub buf: Range<usize>,
}

/// The RAM ranges of guest physical address space: sorted, non-overlapping, each
/// non-empty, with ranges that are contiguous both in guest physical address space and
/// in the same backend merged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RamLayout {
    ranges: Vec<RamRange>,
}

impl RamLayout {
    /// Builds a layout, sorting the ranges and merging neighbours. Fails with
    /// [`Error::InvalidArgument`] on empty, overflowing or overlapping ranges.
    pub fn new(mut ranges: Vec<RamRange>) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidArgument {
            what: "RAM layout",
            reason: reason.into(),
        };
        for r in &ranges {
            if r.len == 0 {
                return Err(invalid(format!("empty range at {}", r.gpa_start)));
            }
            if r.gpa_start.0.checked_add(r.len).is_none()
                || r.backend_offset.checked_add(r.len).is_none()
            {
                return Err(invalid(format!(
                    "range {}+{:#x} (backend offset {:#x}) overflows 64 bits",
                    r.gpa_start, r.len, r.backend_offset
                )));
            }
        }
        ranges.sort_by_key(|r| r.gpa_start);
        let mut merged: Vec<RamRange> = Vec::with_capacity(ranges.len());
        for r in ranges {
            if let Some(last) = merged.last_mut() {
                if r.gpa_start.0 < last.gpa_end() {
                    return Err(invalid(format!(
                        "ranges {}+{:#x} and {}+{:#x} overlap",
                        last.gpa_start, last.len, r.gpa_start, r.len
                    )));
                }
                if r.gpa_start.0 == last.gpa_end()
                    && r.backend_name == last.backend_name
                    && r.backend_offset == last.backend_end()
                    && r.rom == last.rom
                {
                    last.len += r.len;
                    continue;
                }
            }
            merged.push(r);
        }
        Ok(Self { ranges: merged })
    }

    /// The ranges, sorted by guest physical address.
    pub fn ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// Whether the layout has no RAM at all.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The distinct backend names, in order of first appearance.
    pub fn backend_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.ranges {
            if !names.contains(&r.backend_name.as_str()) {
                names.push(&r.backend_name);
            }
        }
        names
    }

    /// The backend that holds guest RAM proper: the one mapped at guest physical
    /// address 0 (true for every x86 PC machine), else the one with the most bytes.
    pub fn main_backend(&self) -> Option<&str> {
        if let Some(r) = self.ranges.iter().find(|r| r.gpa_start.0 == 0) {
            return Some(&r.backend_name);
        }
        self.backend_names().into_iter().max_by_key(|name| {
            self.ranges
                .iter()
                .filter(|r| r.backend_name == *name)
                .map(|r| r.len)
                .sum::<u64>()
        })
    }

    /// The ranges of one backend only.
    pub fn for_backend(&self, name: &str) -> RamLayout {
        RamLayout {
            ranges: self
                .ranges
                .iter()
                .filter(|r| r.backend_name == name)
                .cloned()
                .collect(),
        }
    }

    /// One past the highest backend offset any range uses: how much of the backend
    /// must be mapped.
    pub fn backend_extent(&self) -> u64 {
        self.ranges
            .iter()
            .map(RamRange::backend_end)
            .max()
            .unwrap_or(0)
    }

    /// Total bytes of RAM.
    pub fn ram_size(&self) -> u64 {
        self.ranges.iter().map(|r| r.len).sum()
    }

    /// The ROM ranges (see [`RamRange::rom`]).
    pub fn rom_ranges(&self) -> impl Iterator<Item = &RamRange> {
        self.ranges.iter().filter(|r| r.rom)
    }

    /// [`Error::Unsupported`] if `[gpa, gpa+len)` touches a ROM range.
    pub fn check_writable(&self, gpa: Gpa, len: usize) -> Result<()> {
        let end = gpa.0.saturating_add(len as u64);
        match self
            .rom_ranges()
            .find(|r| r.gpa_start.0 < end && gpa.0 < r.gpa_end())
        {
            Some(r) => Err(Error::unsupported(
                "guest memory write",
                format!(
                    "{}+{:#x} is ROM to the guest ({}..{:#x})",
                    gpa,
                    len,
                    r.gpa_start,
                    r.gpa_end()
                ),
            )),
            None => Ok(()),
        }
    }

    /// The range containing `gpa`.
    pub fn range_of(&self, gpa: Gpa) -> Option<&RamRange> {
        let i = self.ranges.partition_point(|r| r.gpa_start <= gpa);
        let r = self.ranges.get(i.checked_sub(1)?)?;
        (gpa.0 < r.gpa_end()).then_some(r)
    }

    /// Splits the access `[gpa, gpa+len)` into pieces that each lie in one range. An
    /// access may cross from one range into the next only if the two are adjacent in
    /// guest physical address space; anything else fails with
    /// [`Error::UnmappedPhysical`] before `f` is called at all.
    pub fn split<'a>(
        &'a self,
        gpa: Gpa,
        len: usize,
        mut f: impl FnMut(Chunk<'a>) -> Result<()>,
    ) -> Result<()> {
        let unmapped = || Error::UnmappedPhysical {
            gpa,
            len: len as u64,
        };
        let len64 = u64::try_from(len).map_err(|_| unmapped())?;
        let end = gpa.0.checked_add(len64).ok_or_else(unmapped)?;
        if len == 0 {
            return self.range_of(gpa).map(|_| ()).ok_or_else(unmapped);
        }
        // First pass: check the whole access is covered.
        let first = self
            .ranges
            .partition_point(|r| r.gpa_start <= gpa)
            .checked_sub(1)
            .ok_or_else(unmapped)?;
        let mut addr = gpa.0;
        let mut i = first;
        while addr < end {
            let r = self.ranges.get(i).ok_or_else(unmapped)?;
            if addr < r.gpa_start.0 || addr >= r.gpa_end() {
                return Err(unmapped());
            }
            addr = r.gpa_end().min(end);
            i += 1;
        }
        // Second pass: hand out the pieces.
        let mut addr = gpa.0;
        let mut done = 0usize;
        for r in &self.ranges[first..i] {
            let in_range = addr - r.gpa_start.0;
            let n = (r.gpa_end().min(end) - addr) as usize;
            f(Chunk {
                range: r,
                backend_offset: r.backend_offset + in_range,
                buf: done..done + n,
            })?;
            done += n;
            addr += n as u64;
        }
        Ok(())
    }

    /// The layout as the backend-neutral [`MemoryInfo`].
    pub fn memory_info(&self) -> MemoryInfo {
        MemoryInfo::from(self)
    }
}

impl From<&RamLayout> for MemoryInfo {
    fn from(layout: &RamLayout) -> Self {
        // Ranges of different backends may be adjacent; MemoryInfo only cares about
        // the guest physical side, so merge those too.
        let mut ranges: Vec<PhysicalRange> = Vec::with_capacity(layout.ranges.len());
        for r in &layout.ranges {
            match ranges.last_mut() {
                Some(last) if last.end() == r.gpa_start.0 => last.len += r.len,
                _ => ranges.push(PhysicalRange {
                    start: r.gpa_start,
                    len: r.len,
                }),
            }
        }
        MemoryInfo { ranges }
    }
}

impl From<RamLayout> for MemoryInfo {
    fn from(layout: RamLayout) -> Self {
        MemoryInfo::from(&layout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(start: u64, len: u64, off: u64, name: &str) -> RamRange {
        RamRange {
            gpa_start: Gpa(start),
            len,
            backend_offset: off,
            backend_name: name.into(),
            rom: false,
        }
    }

    /// The layout of `-machine pc -m 4G`: RAM below 640 KiB, from 1 MiB to 3 GiB, and
    /// the last GiB above 4 GiB.
    fn pc_4g() -> RamLayout {
        RamLayout::new(vec![
            range(0x1_0000_0000, 0x4000_0000, 0xc000_0000, "pc.ram"),
            range(0, 0xa0000, 0, "pc.ram"),
            range(0x10_0000, 0xbff0_0000, 0x10_0000, "pc.ram"),
        ])
        .unwrap()
    }

    #[test]
    fn sorted_and_sized() {
        let l = pc_4g();
        assert_eq!(l.ranges()[0].gpa_start, Gpa(0));
        assert_eq!(l.ranges()[2].gpa_start, Gpa(0x1_0000_0000));
        assert_eq!(l.ram_size(), 0x1_0000_0000 - 0x60000);
        assert_eq!(l.backend_extent(), 0x1_0000_0000);
        assert_eq!(l.main_backend(), Some("pc.ram"));
        let info = MemoryInfo::from(&l);
        assert_eq!(info.max_physical_address(), Gpa(0x1_4000_0000));
        assert_eq!(info.ranges.len(), 3);
    }

    #[test]
    fn merges_contiguous_ranges_of_one_backend_only() {
        let l = RamLayout::new(vec![
            range(0, 0x1000, 0, "a"),
            range(0x1000, 0x1000, 0x1000, "a"),
            range(0x2000, 0x1000, 0x5000, "a"),
            range(0x3000, 0x1000, 0, "b"),
        ])
        .unwrap();
        assert_eq!(l.ranges().len(), 3);
        assert_eq!(l.ranges()[0].len, 0x2000);
        assert_eq!(l.backend_names(), vec!["a", "b"]);
        assert_eq!(l.for_backend("b").ranges().len(), 1);
        // The guest-physical view merges everything adjacent.
        assert_eq!(MemoryInfo::from(&l).ranges.len(), 1);
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(RamLayout::new(vec![range(0, 0, 0, "a")]).is_err());
        assert!(RamLayout::new(vec![range(u64::MAX - 1, 2, 0, "a")]).is_err());
        assert!(RamLayout::new(vec![range(0, 2, u64::MAX, "a")]).is_err());
        assert!(RamLayout::new(vec![
            range(0, 0x2000, 0, "a"),
            range(0x1000, 0x1000, 0, "b")
        ])
        .is_err());
    }

    #[test]
    fn range_lookup() {
        let l = pc_4g();
        assert_eq!(l.range_of(Gpa(0)).unwrap().len, 0xa0000);
        assert_eq!(l.range_of(Gpa(0x9ffff)).unwrap().gpa_start, Gpa(0));
        assert!(l.range_of(Gpa(0xa0000)).is_none());
        assert!(l.range_of(Gpa(0xc000_0000)).is_none());
        assert_eq!(
            l.range_of(Gpa(0x1_3fff_ffff)).unwrap().backend_offset,
            0xc000_0000
        );
        assert!(l.range_of(Gpa(0x1_4000_0000)).is_none());
        assert!(l.range_of(Gpa(u64::MAX)).is_none());
    }

    fn collect(l: &RamLayout, gpa: u64, len: usize) -> Result<Vec<(u64, Range<usize>)>> {
        let mut v = Vec::new();
        l.split(Gpa(gpa), len, |c| {
            v.push((c.backend_offset, c.buf));
            Ok(())
        })?;
        Ok(v)
    }

    #[test]
    fn split_translates_to_backend_offsets() {
        let l = pc_4g();
        assert_eq!(
            collect(&l, 0x1_0000_0010, 16).unwrap(),
            vec![(0xc000_0010, 0..16)]
        );
        assert_eq!(collect(&l, 0x1234, 8).unwrap(), vec![(0x1234, 0..8)]);
        // Reads into the hole, across the hole, and past the end fail.
        assert!(matches!(
            collect(&l, 0x9fff8, 16),
            Err(Error::UnmappedPhysical { .. })
        ));
        assert!(collect(&l, 0xbfff_fff8, 16).is_err());
        assert!(collect(&l, 0x1_3fff_fff8, 16).is_err());
        assert!(collect(&l, u64::MAX - 4, 16).is_err());
        // Zero-length accesses are fine inside RAM only.
        assert_eq!(collect(&l, 0x10, 0).unwrap(), vec![]);
        assert!(collect(&l, 0xa0000, 0).is_err());
    }

    #[test]
    fn split_crosses_adjacent_ranges_of_different_offsets() {
        let l = RamLayout::new(vec![
            range(0, 0x1000, 0x8000, "a"),
            range(0x1000, 0x1000, 0x2000, "a"),
        ])
        .unwrap();
        assert_eq!(
            collect(&l, 0xff8, 16).unwrap(),
            vec![(0x8ff8, 0..8), (0x2000, 8..16)]
        );
    }
}
