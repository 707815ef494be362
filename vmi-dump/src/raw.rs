//! A raw dump: a flat file of guest-physical memory.

use std::path::Path;

use vmi_core::{
    Error, Gpa, MapPhysical, MappedRegion, MemoryInfo, MemoryLayout, PhysicalMemory, Result,
};

use crate::backing::{Access, Backing, LoadSegment, SegmentMap};

/// Guest-physical memory saved as a flat file: QMP `pmemsave` from address 0, a copy of
/// a `memory-backend-file`, LiME's `format=raw` padded output, and the like.
///
/// By default byte `n` of the file is guest-physical address `n`
/// ([`RawDump::open`]). A RAM file of a PC guest with more RAM than fits below the PCI
/// hole holds the part above 4 GiB after the part below: describe that with
/// [`RawDump::with_ranges`].
///
/// A raw dump has memory only: it implements [`PhysicalMemory`], [`MemoryLayout`] and
/// (when mapped) [`MapPhysical`], not register reads. Pair it with the registers from
/// somewhere else, or use an [`ElfDump`](crate::ElfDump).
#[derive(Debug)]
pub struct RawDump {
    backing: Backing,
    map: SegmentMap,
}

/// A guest-physical range of a [`RawDump`] and where it starts in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawRange {
    /// Guest-physical address of the first byte.
    pub gpa: Gpa,
    /// File offset of the first byte.
    pub file_offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl RawDump {
    /// Opens `path` (mapped): file offset = guest-physical address, for the whole file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Access::Mmap)
    }

    /// Opens `path` read as `access`: file offset = guest-physical address.
    pub fn open_with(path: impl AsRef<Path>, access: Access) -> Result<Self> {
        let backing = Backing::open(path.as_ref(), access)?;
        let len = backing.len();
        Self::build(
            backing,
            &[RawRange {
                gpa: Gpa(0),
                file_offset: 0,
                len,
            }],
        )
    }

    /// Opens `path` read as `access`, with guest-physical memory at `ranges` (each must
    /// lie inside the file; they may not overlap in guest-physical space).
    pub fn with_ranges(
        path: impl AsRef<Path>,
        access: Access,
        ranges: &[RawRange],
    ) -> Result<Self> {
        Self::build(Backing::open(path.as_ref(), access)?, ranges)
    }

    /// A raw dump held in memory (byte `n` = guest-physical address `n`).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        let len = bytes.len() as u64;
        Self::build(
            Backing::Bytes(bytes),
            &[RawRange {
                gpa: Gpa(0),
                file_offset: 0,
                len,
            }],
        )
    }

    fn build(backing: Backing, ranges: &[RawRange]) -> Result<Self> {
        let segments = ranges
            .iter()
            .map(|r| LoadSegment {
                gpa: r.gpa,
                file_offset: r.file_offset,
                file_len: r.len,
                mem_len: r.len,
            })
            .collect();
        let map = SegmentMap::new(segments, backing.len())?;
        if map.segments().is_empty() {
            return Err(Error::malformed(
                "raw memory dump",
                "the dump holds no memory (empty file or ranges)",
            ));
        }
        Ok(Self { backing, map })
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.backing.len()
    }

    /// The guest-physical ranges and their file offsets, sorted by address.
    pub fn segments(&self) -> &[LoadSegment] {
        self.map.segments()
    }
}

impl PhysicalMemory for RawDump {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.map.read(&self.backing, gpa, buf)
    }
}

impl MemoryLayout for RawDump {
    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(self.map.memory_info())
    }
}

impl MapPhysical for RawDump {
    /// The file's private read-only mapping ([`Access::Mmap`]), one region per range;
    /// [`Error::Unsupported`] with [`Access::Pread`].
    fn mapped_regions(&self) -> Result<Vec<MappedRegion<'_>>> {
        self.map.mapped_regions(&self.backing)
    }
}
