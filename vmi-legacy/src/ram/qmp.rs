//! [`QmpMemory`]: guest RAM read through QMP `pmemsave` or HMP `xp` (read-only).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use vmi_core::memory::MemoryLayout;
use vmi_core::{Error, Gpa, MemoryInfo, PhysicalMemory, Result};

use crate::hmp::parse_xp_bytes;
use crate::qmp::QmpClient;

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

pub(super) fn make_scratch_dir(parent: &Path) -> Result<PathBuf> {
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
