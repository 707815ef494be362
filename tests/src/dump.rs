//! Memory dumps of a running [`Guest`], for tests that analyse dumps
//! (vmi-dump, vmi-linux on dumps, kvmi-sim serving a dump, Volatility 3).
//!
//! QEMU's QMP accepts one client at a time: with a session connected (a
//! `LegacyQemu`), pass its client (`&mut vmi.qmp()`) to the `*_with` functions;
//! otherwise the plain ones connect for the one command.

use std::io;
use std::path::Path;
use std::time::Duration;

use vmi_legacy::QmpClient;

use crate::Guest;

/// How long QEMU gets to write a dump (seconds; QEMU writes ~1 GiB/s to a page cache).
const DUMP_TIMEOUT: Duration = Duration::from_secs(300);

fn qmp_io(what: &str, e: vmi_core::Error) -> io::Error {
    io::Error::other(format!("{what}: {e}"))
}

fn absolute(path: &Path) -> io::Result<String> {
    let path = std::path::absolute(path)?;
    path.to_str().map(str::to_owned).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is not UTF-8 (QMP paths are JSON strings)",
                path.display()
            ),
        )
    })
}

/// Runs `cmd` with the client's timeout raised to [`DUMP_TIMEOUT`].
fn long_command(qmp: &mut QmpClient, cmd: &str, args: serde_json::Value) -> io::Result<()> {
    let before = qmp.timeout();
    qmp.set_timeout(DUMP_TIMEOUT)
        .map_err(|e| qmp_io("raising the QMP timeout", e))?;
    let r = qmp.execute(cmd, Some(args));
    let restored = qmp.set_timeout(before);
    r.map_err(|e| qmp_io(&format!("QMP {cmd}"), e))?;
    restored.map_err(|e| qmp_io("restoring the QMP timeout", e))
}

/// Writes QEMU's ELF dump of the guest (`dump-guest-memory`, `"paging": false`,
/// format `elf`: every RAM block as a `PT_LOAD` segment at its physical address, and
/// per-vCPU `NT_PRSTATUS` and `QEMU` register notes) to `path`, through `qmp`.
///
/// QEMU stops a running guest for the dump and resumes it afterwards; a guest paused
/// before stays paused, so its registers and memory then match the dump exactly.
pub fn dump_guest_memory_with(qmp: &mut QmpClient, path: &Path) -> io::Result<()> {
    let file = absolute(path)?;
    long_command(
        qmp,
        "dump-guest-memory",
        serde_json::json!({ "paging": false, "protocol": format!("file:{file}"), "format": "elf" }),
    )
}

/// [`dump_guest_memory_with`] over a QMP connection of its own (no other QMP client
/// may be connected).
pub fn dump_guest_memory(guest: &Guest, path: &Path) -> io::Result<()> {
    let mut qmp =
        QmpClient::connect(guest.qmp_socket()).map_err(|e| qmp_io("connecting to QMP", e))?;
    dump_guest_memory_with(&mut qmp, path)
}

/// Writes `size` bytes of guest-physical memory from address 0 to `path` (QMP
/// `pmemsave`): a raw dump, file offset = guest-physical address.
pub fn pmemsave_with(qmp: &mut QmpClient, size: u64, path: &Path) -> io::Result<()> {
    let file = absolute(path)?;
    long_command(
        qmp,
        "pmemsave",
        serde_json::json!({ "val": 0, "size": size, "filename": file }),
    )
}

/// Pauses `guest` (through a vmi-legacy session reading its RAM file), dumps its memory
/// with `dump-guest-memory` to `elf`, resumes it and opens the dump. The file is removed
/// once open (the dump keeps its data), so a 256 MiB guest does not stay on disk.
pub fn paused_elf_dump(guest: &Guest, elf: &Path) -> io::Result<vmi_dump::ElfDump> {
    use vmi_core::VcpuControl;
    let mut cfg = vmi_legacy::LegacyConfig::new(guest.qmp_socket());
    cfg.ram = vmi_legacy::RamSource::File(guest.ram_path().to_path_buf());
    let vm = vmi_legacy::LegacyQemu::connect(cfg).map_err(|e| qmp_io("connecting to QEMU", e))?;
    let paused = vm.pause().map_err(|e| qmp_io("pausing the guest", e))?;
    let _ = std::fs::remove_file(elf);
    dump_guest_memory_with(&mut vm.qmp(), elf)?;
    drop(paused);
    let dump = vmi_dump::ElfDump::open(elf).map_err(|e| qmp_io("reading the dump", e));
    let _ = std::fs::remove_file(elf);
    dump
}
