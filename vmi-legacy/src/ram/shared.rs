//! [`SharedRam`]: the RAM backend mapped into this process.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

use vmi_core::memory::{MapPhysical, MappedRegion, MemoryLayout};
use vmi_core::{Error, Gpa, MemoryInfo, PhysicalMemory, PhysicalMemoryWrite, Result, PAGE_SIZE};

use crate::layout::RamLayout;
use crate::procfs;

use super::single_backend;

/// Guest RAM mapped into this process from QEMU's RAM backend.
#[derive(Debug)]
pub struct SharedRam {
    base: NonNull<u8>,
    map_len: usize,
    writable: bool,
    layout: RamLayout,
    source: String,
}

// SAFETY: `SharedRam` owns a `MAP_SHARED` mapping that stays valid until `Drop`; it
// only ever copies bytes in and out through raw pointers (never hands out references),
// so using it from several threads is as sound as from one.
unsafe impl Send for SharedRam {}
// SAFETY: as above; all methods take `&self` and do not mutate `SharedRam` itself.
unsafe impl Sync for SharedRam {}

impl SharedRam {
    /// Maps the RAM backend file at `path` (QEMU's `mem-path` of a
    /// `memory-backend-file,share=on`). Backend offset 0 is file offset 0.
    pub fn open_file(path: &Path, layout: RamLayout, writable: bool) -> Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(|e| Error::io(format!("opening RAM backend {}", path.display()), e))?;
        Self::from_file(&file, 0, layout, writable, path.display().to_string())
    }

    /// Maps `file`, in which backend offset 0 lies at `file_offset` (page-aligned).
    /// `source` names the file in messages. The file must be at least as large as the
    /// part of the backend the layout uses (a shorter file would fault on access).
    pub fn from_file(
        file: &File,
        file_offset: u64,
        layout: RamLayout,
        writable: bool,
        source: String,
    ) -> Result<Self> {
        single_backend(&layout)?;
        if file_offset % PAGE_SIZE != 0 {
            return Err(Error::InvalidArgument {
                what: "file offset",
                reason: format!("{file_offset:#x} is not page-aligned").into(),
            });
        }
        let extent = layout.backend_extent();
        let size = file
            .metadata()
            .map_err(|e| Error::io(format!("stat of RAM backend {source}"), e))?
            .len();
        if file_offset.checked_add(extent).is_none_or(|end| end > size) {
            return Err(Error::InvalidArgument {
                what: "RAM backend",
                reason: format!(
                    "{source} holds {size:#x} bytes, the layout needs {extent:#x} from offset {file_offset:#x}"
                )
                .into(),
            });
        }
        let map_len = usize::try_from(extent).map_err(|_| Error::InvalidArgument {
            what: "RAM backend",
            reason: "too large for this address space".into(),
        })?;
        let offset = libc::off_t::try_from(file_offset).map_err(|_| Error::InvalidArgument {
            what: "file offset",
            reason: "too large".into(),
        })?;
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh mapping at an address of the kernel's choosing: it aliases no
        // Rust object. The descriptor is valid for the call; the mapping keeps its own
        // reference to the file.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(Error::io(
                format!("mmap of RAM backend {source}"),
                std::io::Error::last_os_error(),
            ));
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| {
            Error::io(
                "mmap of RAM backend",
                std::io::Error::other("mapped at address 0"),
            )
        })?;
        Ok(Self {
            base,
            map_len,
            writable,
            layout,
            source,
        })
    }

    /// Maps the memfd of QEMU process `pid` (`memory-backend-memfd`), chosen among
    /// `/proc/<pid>/fd` by size (`size`, the backend's size) and, among several of
    /// that size, by `name` appearing in `/memfd:<name>`.
    pub fn open_memfd(
        pid: libc::pid_t,
        name: Option<&str>,
        size: u64,
        layout: RamLayout,
        writable: bool,
    ) -> Result<Self> {
        let fd = find_memfd(pid, name, size)?;
        let file = OpenOptions::new()
            .read(true)
            .write(writable)
            .open(&fd.path)
            .map_err(|e| Error::io(format!("opening {}", fd.path.display()), e))?;
        let source = format!("{} ({})", fd.path.display(), fd.target);
        Self::from_file(&file, 0, layout, writable, source)
    }

    /// The layout this mapping serves.
    pub fn layout(&self) -> &RamLayout {
        &self.layout
    }

    /// Whether the mapping is writable.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// What was mapped (path, or `/proc` descriptor and its target).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The mapped region holding backend bytes `[offset, offset+len)`.
    fn region(&self, gpa: Gpa, backend_offset: u64, len: usize) -> Result<MappedRegion<'_>> {
        let off = usize::try_from(backend_offset)
            .ok()
            .filter(|o| o.checked_add(len).is_some_and(|e| e <= self.map_len))
            .ok_or(Error::UnmappedPhysical {
                gpa,
                len: len as u64,
            })?;
        // SAFETY: `off + len <= map_len`, so the pointer stays inside the mapping.
        let ptr = unsafe { self.base.as_ptr().add(off) };
        let ptr = NonNull::new(ptr).ok_or(Error::UnmappedPhysical {
            gpa,
            len: len as u64,
        })?;
        // SAFETY: `ptr..ptr+len` lies inside our mapping, which stays mapped as long as
        // `self` (and so the region's borrow `'_`) lives.
        Ok(unsafe { MappedRegion::new(gpa, ptr, len) })
    }
}

impl Drop for SharedRam {
    fn drop(&mut self) {
        // SAFETY: `base`/`map_len` describe the mapping created in `from_file`, and no
        // `MappedRegion` borrowing `self` can outlive this call.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.map_len);
        }
    }
}

impl PhysicalMemory for SharedRam {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.layout.split(gpa, buf.len(), |c| {
            let at = Gpa(gpa.0 + c.buf.start as u64);
            self.region(at, c.backend_offset, c.buf.len())?
                .read(at, &mut buf[c.buf])
        })
    }
}

impl PhysicalMemoryWrite for SharedRam {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::unsupported(
                "guest memory write",
                "the RAM backend is mapped read-only",
            ));
        }
        self.layout.check_writable(gpa, data.len())?;
        self.layout.split(gpa, data.len(), |c| {
            let at = Gpa(gpa.0 + c.buf.start as u64);
            let region = self.region(at, c.backend_offset, c.buf.len())?;
            // SAFETY: the mapping was created with PROT_WRITE (`self.writable`).
            unsafe { region.write(at, &data[c.buf]) }
        })
    }
}

impl MapPhysical for SharedRam {
    fn mapped_regions(&self) -> Result<Vec<MappedRegion<'_>>> {
        self.layout
            .ranges()
            .iter()
            .map(|r| {
                let len = usize::try_from(r.len).map_err(|_| Error::UnmappedPhysical {
                    gpa: r.gpa_start,
                    len: r.len,
                })?;
                self.region(r.gpa_start, r.backend_offset, len)
            })
            .collect()
    }
}

impl MemoryLayout for SharedRam {
    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(self.layout.memory_info())
    }
}

/// Finds the memfd of `pid` that backs guest RAM: a descriptor whose target starts with
/// `/memfd:` and whose size is `size`; among several, the one whose name contains
/// `name`.
pub fn find_memfd(pid: libc::pid_t, name: Option<&str>, size: u64) -> Result<procfs::ProcFd> {
    let mut fds: Vec<procfs::ProcFd> = procfs::regular_fds(pid)?
        .into_iter()
        .filter(|f| f.target.starts_with("/memfd:") && f.size == size)
        .collect();
    if fds.len() > 1 {
        if let Some(name) = name {
            fds.retain(|f| f.target.contains(name));
        }
    }
    match fds.len() {
        1 => Ok(fds.remove(0)),
        0 => Err(Error::unsupported(
            "shared guest RAM",
            format!("process {pid} holds no memfd of {size:#x} bytes"),
        )),
        n => Err(Error::unsupported(
            "shared guest RAM",
            format!("process {pid} holds {n} memfds of {size:#x} bytes; cannot tell which is RAM"),
        )),
    }
}
