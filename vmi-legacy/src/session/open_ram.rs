//! Opening guest RAM for a session: the fastest strategy that works (shared RAM,
//! process memory, QMP), with the reasons the faster ones failed.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vmi_core::{Error, Gpa, PhysicalMemory, Result};

use crate::hmp;
use crate::layout::RamLayout;
use crate::procfs;
use crate::qmp::QmpClient;
use crate::ram::{ProcMem, QmpMemory, QmpReadMethod, SharedRam};

use super::{BackendMapping, LegacyConfig, RamAccess, RamSource};

/// Finds where QEMU maps the backend: `gpa2hva` of the first range, then the
/// `/proc/<pid>/maps` entry containing it.
pub(super) fn locate_backend(
    qmp: &mut QmpClient,
    pid: libc::pid_t,
    layout: &RamLayout,
) -> Result<BackendMapping> {
    let first = layout
        .ranges()
        .first()
        .ok_or_else(|| Error::malformed("HMP", "empty RAM layout"))?;
    let text = qmp.human_monitor_command(&format!("gpa2hva {:#x}", first.gpa_start.0))?;
    let (name, hva) = hmp::parse_gpa2hva(&text)?;
    if name != first.backend_name {
        return Err(Error::malformed(
            "HMP",
            format!(
                "gpa2hva names region {name:?}, expected {:?}",
                first.backend_name
            ),
        ));
    }
    let hva = hva
        .checked_sub(first.backend_offset)
        .ok_or_else(|| Error::malformed("HMP", "gpa2hva address below the backend offset"))?;
    let maps_entry = procfs::read_maps(pid)
        .ok()
        .and_then(|maps| procfs::mapping_containing(&maps, hva, layout.backend_extent()).cloned());
    Ok(BackendMapping { hva, maps_entry })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn open_ram(
    config: &LegacyConfig,
    qmp: &Arc<Mutex<QmpClient>>,
    pid: Option<libc::pid_t>,
    layout: &RamLayout,
    backend_name: &str,
    backend: Option<&BackendMapping>,
    fallbacks: &mut Vec<(&'static str, Error)>,
) -> Result<RamAccess> {
    let writable = config.writable;
    let no_pid = || {
        Error::unsupported(
            "QEMU's pid",
            "neither SO_PEERCRED nor the vCPU threads revealed QEMU's process",
        )
    };
    let file = |path: &PathBuf| -> Result<RamAccess> {
        let ram = SharedRam::open_file(path, layout.clone(), writable)?;
        // If QEMU's mapping is known, make sure it is this very file, and shared.
        if let Some(m) = backend.and_then(|b| b.maps_entry.as_ref()) {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(path)
                .map_err(|e| Error::io(format!("stat of {}", path.display()), e))?;
            let same_inode = meta.ino() == m.inode && procfs::dev_major_minor(meta.dev()) == m.dev;
            // Overlay file systems show the underlying inode in maps: accept the path.
            let same_path =
                std::fs::canonicalize(path).is_ok_and(|p| p.to_str() == Some(m.path.as_str()));
            if !same_inode && !same_path {
                return Err(Error::InvalidArgument {
                    what: "RAM backend file",
                    reason: format!(
                        "{} is not the file QEMU maps as guest RAM ({})",
                        path.display(),
                        m.path
                    )
                    .into(),
                });
            }
            if !m.shared {
                return Err(not_shared(&m.path));
            }
        }
        Ok(RamAccess::Shared(ram))
    };
    let memfd = || -> Result<RamAccess> {
        let pid = pid.ok_or_else(no_pid)?;
        if let Some(m) = backend.and_then(|b| b.maps_entry.as_ref()) {
            if m.inode == 0 {
                return Err(Error::unsupported(
                    "shared guest RAM",
                    "QEMU's RAM is anonymous memory (no memory-backend-memfd/file)",
                ));
            }
            if !m.shared {
                return Err(not_shared(&m.path));
            }
            let hva = backend.map_or(0, |b| b.hva);
            let file_offset = m.offset + (hva - m.start);
            let fd = procfs::regular_fds(pid)?
                .into_iter()
                .find(|f| f.inode == m.inode && procfs::dev_major_minor(f.dev) == m.dev)
                .ok_or_else(|| {
                    Error::unsupported(
                        "shared guest RAM",
                        format!("QEMU holds no descriptor of {} open", m.path),
                    )
                })?;
            let f = OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&fd.path)
                .map_err(|e| Error::io(format!("opening {}", fd.path.display()), e))?;
            let source = format!("{} ({})", fd.path.display(), fd.target);
            return Ok(RamAccess::Shared(SharedRam::from_file(
                &f,
                file_offset,
                layout.clone(),
                writable,
                source,
            )?));
        }
        // No gpa2hva or maps: choose a memfd by size and name.
        Ok(RamAccess::Shared(SharedRam::open_memfd(
            pid,
            Some(backend_name),
            layout.backend_extent(),
            layout.clone(),
            writable,
        )?))
    };
    let procmem = || -> Result<RamAccess> {
        let pid = pid.ok_or_else(no_pid)?;
        let b = backend.ok_or_else(|| {
            Error::unsupported(
                "process memory access",
                "gpa2hva did not reveal where QEMU maps guest RAM",
            )
        })?;
        let pm = ProcMem::new(pid, b.hva, layout.clone(), writable)?;
        // Probe: fails here (not on first use) without ptrace access.
        let first = layout.ranges().first().map_or(Gpa(0), |r| r.gpa_start);
        pm.read_physical(first, &mut [0u8; 1])?;
        Ok(RamAccess::Proc(pm))
    };
    let via_qmp = |method: QmpReadMethod| -> Result<RamAccess> {
        Ok(RamAccess::Qmp(QmpMemory::new(
            Arc::clone(qmp),
            layout.memory_info(),
            method,
        )?))
    };
    match &config.ram {
        RamSource::File(path) => file(path),
        RamSource::Memfd => memfd(),
        RamSource::ProcMem => procmem(),
        RamSource::Qmp(method) => via_qmp(*method),
        RamSource::Auto { file: path } => {
            if let Some(path) = path {
                match file(path) {
                    Ok(r) => return Ok(r),
                    Err(e) => fallbacks.push(("file", e)),
                }
            }
            match memfd() {
                Ok(r) => return Ok(r),
                Err(e) => fallbacks.push(("memfd", e)),
            }
            match procmem() {
                Ok(r) => return Ok(r),
                Err(e) => fallbacks.push(("procmem", e)),
            }
            let first = layout.ranges().first().map_or(Gpa(0), |r| r.gpa_start);
            // pmemsave needs QEMU to write a file we can read (same host, same user).
            match via_qmp(QmpReadMethod::Pmemsave).and_then(|r| {
                r.memory().read_physical(first, &mut [0u8; 1])?;
                Ok(r)
            }) {
                Ok(r) => return Ok(r),
                Err(e) => fallbacks.push(("pmemsave", e)),
            }
            via_qmp(QmpReadMethod::Xp)
        }
    }
}

fn not_shared(path: &str) -> Error {
    Error::unsupported(
        "shared guest RAM",
        format!("QEMU maps {path} privately (share=off): its changes never reach the file"),
    )
}
