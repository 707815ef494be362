//! Guest RAM access, fastest first.
//!
//! * [`SharedRam`] maps QEMU's RAM backend into this process (`mmap`, `MAP_SHARED`):
//!   a `memory-backend-file,share=on` file, or the memfd (or deleted hugetlbfs file) of a
//!   running QEMU opened through `/proc/<pid>/fd`. Reads and writes are plain memory
//!   copies. Zero-copy access is offered through [`MapPhysical`].
//! * [`ProcMem`] copies from and to QEMU's own mapping of the RAM with
//!   `process_vm_readv`/`process_vm_writev`: one system call per request (or per
//!   batch), works for anonymous RAM too, needs ptrace access to QEMU.
//! * [`QmpMemory`] asks QEMU over QMP: `pmemsave` into a scratch file (one command per
//!   chunk of up to 16 MiB) or HMP `xp` (text, slow). Read-only. Last resort.
//!
//! All three translate guest physical addresses with a [`RamLayout`] and fail with
//! [`Error::UnmappedPhysical`] outside it; an access may cross from one RAM range into
//! an adjacent one.
//!
//! **Writes bypass QEMU**: they do not mark pages dirty for live migration, and under
//! TCG they do not invalidate translated code, so patched guest code may keep running
//! in its old form until QEMU flushes its translation cache. With KVM, the guest sees
//! writes at once.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmi_core::memory::{MapPhysical, MappedRegion, MemoryLayout};
use vmi_core::{Error, Gpa, MemoryInfo, PhysicalMemory, PhysicalMemoryWrite, Result, PAGE_SIZE};

use crate::hmp::parse_xp_bytes;
use crate::layout::RamLayout;
use crate::procfs;
use crate::qmp::QmpClient;

fn single_backend(layout: &RamLayout) -> Result<()> {
    let names = layout.backend_names();
    match names.len() {
        0 => Err(Error::InvalidArgument {
            what: "RAM layout",
            reason: "the layout holds no RAM".into(),
        }),
        1 => Ok(()),
        _ => Err(Error::InvalidArgument {
            what: "RAM layout",
            reason: format!(
                "the layout spans several backends ({}); select one with RamLayout::for_backend",
                names.join(", ")
            )
            .into(),
        }),
    }
}

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

/// Guest RAM read and written in QEMU's address space with
/// `process_vm_readv`/`process_vm_writev`.
#[derive(Debug, Clone)]
pub struct ProcMem {
    pid: libc::pid_t,
    base_hva: u64,
    layout: RamLayout,
    writable: bool,
}

/// Most iovecs one `process_vm_readv` call takes (`IOV_MAX` on Linux).
const IOV_MAX: usize = 1024;

impl ProcMem {
    /// Accesses the RAM of process `pid`, where backend offset 0 of the layout's
    /// (single) backend is mapped at host virtual address `base_hva` (QEMU's
    /// `RAMBlock::host`; `gpa2hva` of a range start minus its backend offset).
    pub fn new(pid: libc::pid_t, base_hva: u64, layout: RamLayout, writable: bool) -> Result<Self> {
        single_backend(&layout)?;
        if base_hva.checked_add(layout.backend_extent()).is_none() {
            return Err(Error::InvalidArgument {
                what: "host virtual address",
                reason: format!("{base_hva:#x} plus the backend size overflows").into(),
            });
        }
        Ok(Self {
            pid,
            base_hva,
            layout,
            writable,
        })
    }

    /// Finds `base_hva` from `/proc/<pid>/maps`: the start of the mapping whose path
    /// column is `path` (a `mem-path` file or `/memfd:<name> (deleted)`), corrected by
    /// its file offset. Fails unless exactly one such mapping covers the backend.
    pub fn from_maps(
        pid: libc::pid_t,
        path: &str,
        layout: RamLayout,
        writable: bool,
    ) -> Result<Self> {
        let extent = layout.backend_extent();
        let maps = procfs::read_maps(pid)?;
        let hits: Vec<&procfs::MapsEntry> = maps
            .iter()
            .filter(|m| m.path == path && m.offset == 0 && m.end - m.start >= extent)
            .collect();
        match hits.as_slice() {
            [m] => Self::new(pid, m.start, layout, writable),
            [] => Err(Error::unsupported(
                "process memory access",
                format!("process {pid} has no mapping of {path} covering {extent:#x} bytes"),
            )),
            _ => Err(Error::unsupported(
                "process memory access",
                format!("process {pid} maps {path} several times"),
            )),
        }
    }

    /// The process whose memory is accessed.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Host virtual address of backend offset 0 in that process.
    pub fn base_hva(&self) -> u64 {
        self.base_hva
    }

    /// The layout served.
    pub fn layout(&self) -> &RamLayout {
        &self.layout
    }

    /// Transfers between local buffers and remote addresses, each pair the same length,
    /// in as few system calls as possible. `local` pointers must be valid for `len`
    /// bytes (reads: writable).
    fn transfer(&self, segments: &[(*mut u8, usize, u64)], write: bool, gpa: Gpa) -> Result<()> {
        let fail = |e: std::io::Error| Error::Backend {
            command: if write {
                "process_vm_writev".into()
            } else {
                "process_vm_readv".into()
            },
            vcpu: None,
            address: Some(gpa.0),
            source: Box::new(e),
        };
        let mut seg = 0usize;
        let mut done_in_seg = 0usize;
        while seg < segments.len() {
            let batch = &segments[seg..segments.len().min(seg + IOV_MAX)];
            let mut local = Vec::with_capacity(batch.len());
            let mut remote = Vec::with_capacity(batch.len());
            for (i, &(ptr, len, addr)) in batch.iter().enumerate() {
                let skip = if i == 0 { done_in_seg } else { 0 };
                // SAFETY: `skip < len`, so the pointer stays inside the caller's buffer.
                let p = unsafe { ptr.add(skip) };
                local.push(libc::iovec {
                    iov_base: p.cast(),
                    iov_len: len - skip,
                });
                remote.push(libc::iovec {
                    iov_base: (addr + skip as u64) as usize as *mut libc::c_void,
                    iov_len: len - skip,
                });
            }
            let want: usize = local.iter().map(|v| v.iov_len).sum();
            // SAFETY: the local iovecs describe live buffers of the caller (writable for
            // reads); the remote iovecs are only addresses in the other process, which
            // the kernel checks.
            let n = unsafe {
                if write {
                    libc::process_vm_writev(
                        self.pid,
                        local.as_ptr(),
                        local.len() as libc::c_ulong,
                        remote.as_ptr(),
                        remote.len() as libc::c_ulong,
                        0,
                    )
                } else {
                    libc::process_vm_readv(
                        self.pid,
                        local.as_ptr(),
                        local.len() as libc::c_ulong,
                        remote.as_ptr(),
                        remote.len() as libc::c_ulong,
                        0,
                    )
                }
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if e.raw_os_error() == Some(libc::ESRCH) {
                    return Err(Error::Disconnected {
                        reason: format!("QEMU (pid {}) has exited", self.pid).into(),
                    });
                }
                return Err(fail(e));
            }
            let mut n = n as usize;
            if n == 0 && want > 0 {
                return Err(fail(std::io::Error::from_raw_os_error(libc::EFAULT)));
            }
            // Advance past what was transferred (partial transfers stop mid-way).
            while n > 0 && seg < segments.len() {
                let left = segments[seg].1 - done_in_seg;
                if n >= left {
                    n -= left;
                    seg += 1;
                    done_in_seg = 0;
                } else {
                    done_in_seg += n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    fn segments(
        &self,
        gpa: Gpa,
        buf: *mut u8,
        len: usize,
        out: &mut Vec<(*mut u8, usize, u64)>,
    ) -> Result<()> {
        self.layout.split(gpa, len, |c| {
            if c.buf.is_empty() {
                return Ok(());
            }
            // SAFETY: `c.buf` lies within `0..len`, the caller's buffer length.
            let p = unsafe { buf.add(c.buf.start) };
            out.push((p, c.buf.len(), self.base_hva + c.backend_offset));
            Ok(())
        })
    }
}

impl PhysicalMemory for ProcMem {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        let mut segs = Vec::new();
        self.segments(gpa, buf.as_mut_ptr(), buf.len(), &mut segs)?;
        self.transfer(&segs, false, gpa)
    }

    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> Result<()> {
        let mut segs = Vec::new();
        for (gpa, buf) in requests.iter_mut() {
            self.segments(*gpa, buf.as_mut_ptr(), buf.len(), &mut segs)?;
        }
        let first = requests.first().map_or(Gpa(0), |r| r.0);
        self.transfer(&segs, false, first)
    }
}

impl PhysicalMemoryWrite for ProcMem {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        if !self.writable {
            return Err(Error::unsupported(
                "guest memory write",
                "process memory access was opened read-only",
            ));
        }
        self.layout.check_writable(gpa, data.len())?;
        let mut segs = Vec::new();
        // The pointer is only read from by process_vm_writev.
        self.segments(gpa, data.as_ptr().cast_mut(), data.len(), &mut segs)?;
        self.transfer(&segs, true, gpa)
    }
}

impl MemoryLayout for ProcMem {
    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(self.layout.memory_info())
    }
}

/// How [`QmpMemory`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QmpReadMethod {
    /// QMP `pmemsave` into a scratch file, then read the file: one command per chunk
    /// of up to [`QmpMemory::PMEMSAVE_CHUNK`] bytes. QEMU must be able to write the
    /// scratch directory.
    #[default]
    Pmemsave,
    /// HMP `xp /<n>bx`: text, one command per [`QmpMemory::XP_CHUNK`] bytes. Works when
    /// QEMU cannot write files we can read (another host, another user).
    Xp,
}

/// Guest RAM read through QMP (read-only).
#[derive(Debug)]
pub struct QmpMemory {
    qmp: Arc<Mutex<QmpClient>>,
    info: MemoryInfo,
    method: QmpReadMethod,
    scratch: PathBuf,
    owns_scratch: bool,
    counter: AtomicU64,
}

static SCRATCH_COUNTER: AtomicU64 = AtomicU64::new(0);

impl QmpMemory {
    /// Largest read per `pmemsave`.
    pub const PMEMSAVE_CHUNK: usize = 16 << 20;
    /// Largest read per `xp`.
    pub const XP_CHUNK: usize = 4096;

    /// Reads guest RAM (`info`, from the layout) over `qmp`. For `Pmemsave`, a private
    /// scratch directory is created under the system temporary directory and removed
    /// on drop.
    pub fn new(
        qmp: Arc<Mutex<QmpClient>>,
        info: MemoryInfo,
        method: QmpReadMethod,
    ) -> Result<Self> {
        let (scratch, owns_scratch) = match method {
            QmpReadMethod::Pmemsave => (make_scratch_dir(&std::env::temp_dir())?, true),
            QmpReadMethod::Xp => (PathBuf::new(), false),
        };
        Ok(Self {
            qmp,
            info,
            method,
            scratch,
            owns_scratch,
            counter: AtomicU64::new(0),
        })
    }

    /// As [`QmpMemory::new`] with `pmemsave`, writing scratch files into `dir` (which
    /// QEMU must be able to write and this process to read; it is not removed).
    pub fn with_scratch_dir(qmp: Arc<Mutex<QmpClient>>, info: MemoryInfo, dir: PathBuf) -> Self {
        Self {
            qmp,
            info,
            method: QmpReadMethod::Pmemsave,
            scratch: dir,
            owns_scratch: false,
            counter: AtomicU64::new(0),
        }
    }

    /// The read method.
    pub fn method(&self) -> QmpReadMethod {
        self.method
    }

    fn lock(&self) -> MutexGuard<'_, QmpClient> {
        self.qmp.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn read_chunk(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        match self.method {
            QmpReadMethod::Xp => {
                let text = self.lock().human_monitor_command(&format!(
                    "xp /{}bx {:#x}",
                    buf.len(),
                    gpa.0
                ))?;
                let bytes = parse_xp_bytes(&text, gpa, buf.len())?;
                buf.copy_from_slice(&bytes);
                Ok(())
            }
            QmpReadMethod::Pmemsave => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let path = self.scratch.join(format!("pmem-{n}"));
                let result = self
                    .lock()
                    .pmemsave(gpa.0, buf.len() as u64, &path)
                    .and_then(|()| {
                        let mut f = File::open(&path)
                            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
                        let len = f
                            .metadata()
                            .map_err(|e| Error::io("stat of pmemsave output", e))?
                            .len();
                        if len != buf.len() as u64 {
                            return Err(Error::malformed(
                                "QMP",
                                format!("pmemsave wrote {len} bytes, expected {}", buf.len()),
                            ));
                        }
                        std::io::Read::read_exact(&mut f, buf)
                            .map_err(|e| Error::io("reading pmemsave output", e))
                    });
                let _ = std::fs::remove_file(&path);
                result
            }
        }
    }
}

fn make_scratch_dir(parent: &Path) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..16 {
        let n = SCRATCH_COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = parent.join(format!("vmi-legacy-{}-{nanos:x}-{n}", std::process::id()));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(format!("creating {}", dir.display()), e)),
        }
    }
    Err(Error::io(
        "creating a scratch directory",
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

impl Drop for QmpMemory {
    fn drop(&mut self) {
        if self.owns_scratch {
            let _ = std::fs::remove_dir_all(&self.scratch);
        }
    }
}

impl PhysicalMemory for QmpMemory {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        // pmemsave and xp happily read holes and MMIO: check against the layout first.
        self.info.check(gpa, buf.len() as u64)?;
        let chunk = match self.method {
            QmpReadMethod::Pmemsave => Self::PMEMSAVE_CHUNK,
            QmpReadMethod::Xp => Self::XP_CHUNK,
        };
        for (i, piece) in buf.chunks_mut(chunk).enumerate() {
            self.read_chunk(Gpa(gpa.0 + (i * chunk) as u64), piece)?;
        }
        Ok(())
    }
}

impl MemoryLayout for QmpMemory {
    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(self.info.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::RamRange;
    use std::io::Write;

    fn range(start: u64, len: u64, off: u64) -> RamRange {
        RamRange {
            gpa_start: Gpa(start),
            len,
            backend_offset: off,
            backend_name: "ram0".into(),
            rom: false,
        }
    }

    /// A small PC-like layout over a 64 KiB backend: GPA 0..0x4000 → offset 0, a hole,
    /// GPA 0x8000..0xc000 → offset 0x8000, and GPA 0x10000..0x18000 → offset 0x4000
    /// (like RAM above 4 GiB, which continues the backend after the hole).
    fn layout() -> RamLayout {
        RamLayout::new(vec![
            range(0, 0x4000, 0),
            range(0x8000, 0x4000, 0x8000),
            range(0x10000, 0x4000, 0x4000),
        ])
        .unwrap()
    }

    fn backend() -> Vec<u8> {
        (0..0x10000u32)
            .map(|i| (i.wrapping_mul(7) >> 3) as u8)
            .collect()
    }

    fn temp_file(bytes: &[u8]) -> (PathBuf, PathBuf) {
        let dir = make_scratch_dir(&std::env::temp_dir()).unwrap();
        let path = dir.join("ram");
        File::create(&path).unwrap().write_all(bytes).unwrap();
        (dir, path)
    }

    fn check_reads(m: &(impl PhysicalMemory + ?Sized), back: &[u8]) {
        let mut b = [0u8; 32];
        m.read_physical(Gpa(0x10), &mut b).unwrap();
        assert_eq!(&b[..], &back[0x10..0x30]);
        m.read_physical(Gpa(0x10010), &mut b).unwrap();
        assert_eq!(&b[..], &back[0x4010..0x4030]);
        m.read_physical(Gpa(0xbff0), &mut b[..16]).unwrap();
        assert_eq!(&b[..16], &back[0xbff0..0xc000]);
        assert!(matches!(
            m.read_physical(Gpa(0x3ff0), &mut b),
            Err(Error::UnmappedPhysical { .. })
        ));
        assert!(m.read_physical(Gpa(0x4000), &mut b).is_err());
        assert!(m.read_physical(Gpa(0x13ff0), &mut b).is_err());
        assert!(m.read_physical(Gpa(u64::MAX - 4), &mut b).is_err());
        let mut whole = vec![0u8; 0x4000];
        m.read_physical(Gpa(0x8000), &mut whole).unwrap();
        assert_eq!(&whole[..], &back[0x8000..0xc000]);
        let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
        m.read_physical_many(&mut [(Gpa(0x20), &mut x[..]), (Gpa(0x10020), &mut y[..])])
            .unwrap();
        assert_eq!(&x[..], &back[0x20..0x28]);
        assert_eq!(&y[..], &back[0x4020..0x4028]);
    }

    #[test]
    fn shared_ram_over_a_file() {
        let back = backend();
        let (dir, path) = temp_file(&back);
        let ram = SharedRam::open_file(&path, layout(), true).unwrap();
        check_reads(&ram, &back);
        ram.write_physical(Gpa(0x10000), b"hello").unwrap();
        assert!(ram.write_physical(Gpa(0x3ffe), b"hello").is_err());
        let regions = ram.mapped_regions().unwrap();
        assert_eq!(regions.len(), 3);
        let mut b = [0u8; 5];
        regions[2].read(Gpa(0x10000), &mut b).unwrap();
        assert_eq!(&b, b"hello");
        drop(ram);
        // MAP_SHARED: the write reached the file.
        let on_disk = std::fs::read(&path).unwrap();
        assert_eq!(&on_disk[0x4000..0x4005], b"hello");

        let ro = SharedRam::open_file(&path, layout(), false).unwrap();
        assert!(matches!(
            ro.write_physical(Gpa(0), b"x"),
            Err(Error::Unsupported { .. })
        ));
        assert_eq!(ro.memory_info().unwrap().ram_size(), 0xc000);
        drop(ro);

        // A file shorter than the layout needs is refused (it would SIGBUS).
        let short = dir.join("short");
        File::create(&short)
            .unwrap()
            .write_all(&back[..0x8000])
            .unwrap();
        assert!(SharedRam::open_file(&short, layout(), false).is_err());
        // Several backends at once are refused.
        let mut two = layout().ranges().to_vec();
        two.push(RamRange {
            backend_name: "vga.vram".into(),
            ..range(0x20000, 0x1000, 0)
        });
        assert!(SharedRam::open_file(&path, RamLayout::new(two).unwrap(), false).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn shared_ram_through_proc_fd_of_a_memfd() {
        let back = backend();
        // SAFETY: a valid NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"vmi-test-ram".as_ptr(), 0) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor we own.
        let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        f.write_all(&back).unwrap();
        let pid = std::process::id() as libc::pid_t;
        let found = find_memfd(pid, Some("vmi-test-ram"), back.len() as u64).unwrap();
        assert!(found.target.starts_with("/memfd:vmi-test-ram"));
        let ram =
            SharedRam::open_memfd(pid, Some("vmi-test-ram"), back.len() as u64, layout(), true)
                .unwrap();
        check_reads(&ram, &back);
        assert!(find_memfd(pid, None, 12345).is_err());
        drop(f);
    }

    #[test]
    fn proc_mem_on_our_own_process() {
        let mut back = backend();
        let pid = std::process::id() as libc::pid_t;
        let base = back.as_mut_ptr() as u64;
        let pm = ProcMem::new(pid, base, layout(), true).unwrap();
        check_reads(&pm, &back.clone());
        pm.write_physical(Gpa(0x10001), b"abc").unwrap();
        // SAFETY: reading our own buffer after the kernel wrote to it through
        // process_vm_writev; volatile so the compiler does not assume it unchanged.
        let v = unsafe { std::ptr::read_volatile(back.as_ptr().add(0x4001)) };
        assert_eq!(v, b'a');
        assert_eq!(&back[0x4001..0x4004], b"abc");
        let ro = ProcMem::new(pid, base, layout(), false).unwrap();
        assert!(ro.write_physical(Gpa(0), b"x").is_err());
        // A remote address that is not mapped fails cleanly.
        let bad = ProcMem::new(pid, 0x1000, layout(), false).unwrap();
        let mut b = [0u8; 8];
        assert!(matches!(
            bad.read_physical(Gpa(0), &mut b),
            Err(Error::Backend { .. })
        ));
        // Many small requests (more than IOV_MAX segments) in one batch.
        let mut bufs: Vec<[u8; 4]> = vec![[0; 4]; 1500];
        let mut reqs: Vec<(Gpa, &mut [u8])> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| (Gpa((i as u64 * 8) % 0x4000), &mut b[..]))
            .collect();
        pm.read_physical_many(&mut reqs).unwrap();
        for (i, b) in bufs.iter().enumerate() {
            let o = (i * 8) % 0x4000;
            assert_eq!(&b[..], &back[o..o + 4]);
        }
    }

    #[test]
    fn proc_mem_from_maps_of_a_mapped_file() {
        let back = backend();
        let (dir, path) = temp_file(&back);
        let ram = SharedRam::open_file(&path, layout(), false).unwrap();
        let pid = std::process::id() as libc::pid_t;
        let pm = ProcMem::from_maps(pid, path.to_str().unwrap(), layout(), false).unwrap();
        check_reads(&pm, &back);
        assert!(ProcMem::from_maps(pid, "/nonexistent", layout(), false).is_err());
        drop(ram);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn everything_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SharedRam>();
        check::<ProcMem>();
        check::<QmpMemory>();
    }
}
