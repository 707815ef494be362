//! The purpose-built test guest (`xtask/guest/testguest.S`): a multiboot kernel that sets
//! up its own 4-level paging and loops through breakpoint sites, a watched variable, CR3
//! reloads, MSR writes, CPUID and LGDT/LIDT, reporting on COM1 in the `VMI-TEST` marker
//! format. Built with binutils (`as`, `ld`, `objcopy`), installed with apt when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bail, find_in_path, is_root, run, workspace_root, Result};

/// Environment variable naming the built test guest, for the test fixtures.
pub(crate) const ENV_TEST_GUEST: &str = "VMI_TEST_GUEST";

const TOOLS: [&str; 3] = ["as", "ld", "objcopy"];

fn ensure_binutils() -> Result {
    if TOOLS.iter().all(|t| find_in_path(t).is_some()) {
        return Ok(());
    }
    if !is_root() || find_in_path("apt-get").is_none() {
        bail!(
            "building the test guest needs binutils (as, ld, objcopy): install it, e.g. on \
             Debian/Ubuntu `sudo apt-get install binutils`"
        );
    }
    eprintln!("xtask: binutils is missing; installing it with apt-get");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends", "binutils"]))
}

fn newer(a: &Path, b: &Path) -> bool {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    match (m(a), m(b)) {
        (Some(a), Some(b)) => a > b,
        _ => true,
    }
}

/// Builds `out_dir/testguest.elf` (an ELF32 multiboot image holding 64-bit code) if the
/// sources changed, and returns its path.
pub(crate) fn build(out_dir: &Path) -> Result<PathBuf> {
    let src_dir = workspace_root().join("xtask/guest");
    let src = src_dir.join("testguest.S");
    let script = src_dir.join("testguest.ld");
    let elf = out_dir.join("testguest.elf");
    if !newer(&src, &elf) && !newer(&script, &elf) {
        return Ok(elf);
    }
    ensure_binutils()?;
    let obj = out_dir.join("testguest.o");
    let elf64 = out_dir.join("testguest64.elf");
    run(Command::new("as").arg("--64").arg("-o").arg(&obj).arg(&src))?;
    run(Command::new("ld")
        .args(["-m", "elf_x86_64", "--no-warn-rwx-segments", "-T"])
        .arg(&script)
        .arg("-o")
        .arg(&elf64)
        .arg(&obj))?;
    // QEMU's multiboot loader refuses ELF64; the 32-bit container is fine.
    run(Command::new("objcopy")
        .args(["-O", "elf32-i386"])
        .arg(&elf64)
        .arg(&elf))?;
    eprintln!("xtask: built {}", elf.display());
    Ok(elf)
}
