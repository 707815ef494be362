//! A kernel's own loadable modules for its matrix initramfs.
//!
//! Debian's packages ship no `modules.dep` (`depmod` makes it at install time), so the
//! dependencies come from where depmod reads them: the `depends=` entry of each module's
//! `.modinfo` ELF section. Modules may be compressed (`.ko.xz` from 6.x, `.ko.zst`,
//! `.ko.gz`); busybox `insmod` cannot decompress, so they are stored decompressed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bail, ensure_tools, filter, Result};

/// The modules each matrix guest loads: small, present as modules in every Debian cloud
/// kernel from 5.10 to 7.x, harmless to load, and from different subsystems. `vfat`
/// depends on `fat`, so dependency order is exercised too.
pub(crate) const WANTED: [&str; 4] = ["binfmt_misc", "nls_utf8", "ts_kmp", "vfat"];

/// The most modules the dependency closure may hold (a bound on guest-data loops).
const MAX_MODULES: usize = 32;

/// A module chosen for the initramfs.
pub(crate) struct Module {
    /// Its name (underscores, as the kernel reports it).
    pub(crate) name: String,
    /// The uncompressed `.ko`.
    pub(crate) data: Vec<u8>,
}

/// The module name for a file name: the stem before `.ko`, dashes as underscores.
fn module_name(file_name: &str) -> Option<String> {
    let stem = file_name.split_once(".ko").map(|(stem, _)| stem)?;
    let rest = &file_name[stem.len()..];
    matches!(rest, ".ko" | ".ko.xz" | ".ko.zst" | ".ko.gz").then(|| stem.replace('-', "_"))
}

/// Every module file under `dir` (recursively), by module name.
fn index(dir: &Path, out: &mut BTreeMap<String, PathBuf>, depth: u32) -> Result {
    if depth > 16 {
        bail!("{}: directories nested too deeply", dir.display());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if kind.is_dir() {
            index(&path, out, depth + 1)?;
        } else if let Some(name) = entry.file_name().to_str().and_then(module_name) {
            out.insert(name, path);
        }
    }
    Ok(())
}

/// The uncompressed contents of module file `path`.
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let data = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let name = path.to_string_lossy();
    let (tool, package) = if name.ends_with(".xz") {
        ("xz", "xz-utils")
    } else if name.ends_with(".zst") {
        ("zstd", "zstd")
    } else if name.ends_with(".gz") {
        ("gzip", "gzip")
    } else {
        return Ok(data);
    };
    ensure_tools(&[tool], package, "decompressing kernel modules")?;
    filter(Command::new(tool).arg("-dcq"), &data)
        .map_err(|e| format!("decompressing {}: {e}", path.display()).into())
}

/// The contents of the section `wanted` of the 64-bit little-endian ELF `elf`.
fn elf_section<'a>(elf: &'a [u8], wanted: &str) -> Option<&'a [u8]> {
    let u16_at = |at: usize| Some(u16::from_le_bytes(elf.get(at..at + 2)?.try_into().ok()?));
    let u32_at = |at: usize| Some(u32::from_le_bytes(elf.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_le_bytes(elf.get(at..at + 8)?.try_into().ok()?));
    // ELFCLASS64, ELFDATA2LSB.
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    if shentsize < 0x40 {
        return None;
    }
    let section = |i: usize| -> Option<(u32, &'a [u8])> {
        let at = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = u32_at(at)?;
        let offset = usize::try_from(u64_at(at + 0x18)?).ok()?;
        let size = usize::try_from(u64_at(at + 0x20)?).ok()?;
        Some((name, elf.get(offset..offset.checked_add(size)?)?))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum).find_map(|i| {
        let (name, data) = section(i)?;
        let name = names.get(usize::try_from(name).ok()?..)?;
        let end = name.iter().position(|&b| b == 0)?;
        (&name[..end] == wanted.as_bytes()).then_some(data)
    })
}

/// The modules `.modinfo` says `module` needs (`depends=a,b`).
fn depends(module: &[u8]) -> Option<Vec<String>> {
    let modinfo = elf_section(module, ".modinfo")?;
    let entry = modinfo
        .split(|&b| b == 0)
        .find_map(|e| e.strip_prefix(b"depends="))?;
    let text = std::str::from_utf8(entry).ok()?;
    Some(
        text.split(',')
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"))
            .collect(),
    )
}

/// The [`WANTED`] modules found under `modules_dir` (`…/lib/modules/<release>`) with
/// their dependencies, each after the modules it needs (`insmod` order). A wanted module
/// this kernel lacks is left out with a warning (it may have become built-in).
pub(crate) fn select(modules_dir: &Path, suite: &str) -> Result<Vec<Module>> {
    let mut files = BTreeMap::new();
    index(&modules_dir.join("kernel"), &mut files, 0)?;
    let mut chosen: Vec<Module> = Vec::new();
    for wanted in WANTED {
        if !files.contains_key(wanted) {
            eprintln!(
                "xtask: warning: {suite}: no module {wanted} under {}; its guest loads the \
                 others",
                modules_dir.display()
            );
            continue;
        }
        add(wanted, &files, &mut chosen, &mut Vec::new())?;
    }
    if chosen.is_empty() {
        bail!(
            "{suite}: none of the modules {WANTED:?} under {}",
            modules_dir.display()
        );
    }
    Ok(chosen)
}

/// Adds `name` after its dependencies (depth first; `stack` catches cycles).
fn add(
    name: &str,
    files: &BTreeMap<String, PathBuf>,
    chosen: &mut Vec<Module>,
    stack: &mut Vec<String>,
) -> Result {
    if chosen.iter().any(|m| m.name == name) {
        return Ok(());
    }
    if stack.iter().any(|s| s == name) || stack.len() > MAX_MODULES {
        bail!("module dependency cycle or chain too long: {stack:?} -> {name}");
    }
    let Some(path) = files.get(name) else {
        bail!("module {name} is needed by {stack:?} but not shipped");
    };
    let data = read_module(path)?;
    let Some(deps) = depends(&data) else {
        bail!("{}: no .modinfo depends= entry", path.display());
    };
    stack.push(name.to_owned());
    for dep in &deps {
        add(dep, files, chosen, stack)?;
    }
    stack.pop();
    if chosen.len() >= MAX_MODULES {
        bail!("more than {MAX_MODULES} modules for {WANTED:?}");
    }
    chosen.push(Module {
        name: name.to_owned(),
        data,
    });
    Ok(())
}
