//! [`ProcMem`]: `process_vm_readv`/`process_vm_writev` into QEMU's mapping of the RAM.

use vmi_core::memory::MemoryLayout;
use vmi_core::{Error, Gpa, MemoryInfo, PhysicalMemory, PhysicalMemoryWrite, Result};

use crate::layout::RamLayout;
use crate::procfs;

use super::single_backend;

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
