//! Host provisioning: QEMU, the guest kernel and busybox.
//!
//! QEMU is installed with apt when missing (as root). The kernel (Debian's cloud flavour:
//! small, virtio and 8250 serial built in) and a static busybox are fetched with
//! `apt-get download` and unpacked with `dpkg-deb -x` into `target/guest/cache/`, so no
//! root is needed for them and nothing is installed on the host. Everything is cached:
//! once unpacked, nothing is downloaded again (delete `target/guest/cache` to refresh).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::util::{bail, find_in_path, is_root, output, run_to_stderr as run, Result};

/// The QEMU binary the tests use.
pub(crate) const QEMU: &str = "qemu-system-x86_64";
/// Debian's metapackage that depends on the current cloud kernel.
const KERNEL_METAPACKAGE: &str = "linux-image-cloud-amd64";
/// A statically linked busybox.
const BUSYBOX_PACKAGE: &str = "busybox-static";
/// Override: use this kernel image instead of downloading one.
const ENV_KERNEL_OVERRIDE: &str = "VMI_GUEST_KERNEL";
/// Override: use this static busybox binary instead of downloading one.
const ENV_BUSYBOX_OVERRIDE: &str = "VMI_BUSYBOX";

/// What provisioning produced.
#[derive(Debug)]
pub(crate) struct Provisioned {
    /// The QEMU binary.
    pub(crate) qemu: PathBuf,
    /// The guest kernel image.
    pub(crate) kernel: PathBuf,
    /// The kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub(crate) kernel_version: String,
    /// The static busybox binary.
    pub(crate) busybox: PathBuf,
}

/// Makes sure QEMU, the kernel and busybox are available; idempotent.
pub(crate) fn provision(cache: &Path) -> Result<Provisioned> {
    let qemu = ensure_qemu()?;
    let mut apt = Apt { updated: false };
    let (kernel, kernel_version) = match std::env::var_os(ENV_KERNEL_OVERRIDE) {
        Some(k) if !k.is_empty() => {
            let k = PathBuf::from(k);
            if !k.is_file() {
                bail!("{ENV_KERNEL_OVERRIDE}={} is not a file", k.display());
            }
            let name = k.file_name().unwrap_or_default().to_string_lossy();
            let version = name.strip_prefix("vmlinuz-").unwrap_or(&name).to_owned();
            (k, version)
        }
        _ => ensure_kernel(cache, &mut apt)?,
    };
    let busybox = match std::env::var_os(ENV_BUSYBOX_OVERRIDE) {
        Some(b) if !b.is_empty() => {
            let b = PathBuf::from(b);
            if !b.is_file() {
                bail!("{ENV_BUSYBOX_OVERRIDE}={} is not a file", b.display());
            }
            b
        }
        _ => ensure_busybox(cache, &mut apt)?,
    };
    Ok(Provisioned {
        qemu,
        kernel,
        kernel_version,
        busybox,
    })
}

/// Finds QEMU, installing it with apt-get when possible.
fn ensure_qemu() -> Result<PathBuf> {
    let wanted = std::env::var("VMI_QEMU").unwrap_or_else(|_| QEMU.to_owned());
    if let Some(path) = find_in_path(&wanted) {
        return Ok(path);
    }
    const HOW: &str = "install it, e.g. on Debian/Ubuntu: `sudo apt-get install \
                       --no-install-recommends qemu-system-x86`, on Fedora: `sudo dnf \
                       install qemu-system-x86-core`, then run this command again";
    if wanted != QEMU {
        bail!("VMI_QEMU={wanted} not found");
    }
    if !is_root() || find_in_path("apt-get").is_none() {
        bail!("{QEMU} is not installed: {HOW}");
    }
    eprintln!("xtask: {QEMU} is missing; installing qemu-system-x86 with apt-get");
    run(Command::new("apt-get").args(["update", "-q"]))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args([
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "qemu-system-x86",
        ]))?;
    find_in_path(QEMU).ok_or_else(|| {
        format!("`apt-get install qemu-system-x86` succeeded but {QEMU} is still not on PATH")
            .into()
    })
}

/// Debian's default cloud kernel, whatever `VMI_GUEST_KERNEL` says (the kernel matrix's
/// bookworm entry): its `vmlinuz`, release and unpacked modules directory.
pub(crate) fn debian_kernel(cache: &Path) -> Result<(PathBuf, String, PathBuf)> {
    let (vmlinuz, release) = ensure_kernel(cache, &mut Apt { updated: false })?;
    let root = cache.join("kernel");
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| root.join(d).join(&release))
        .find(|d| d.join("kernel").is_dir())
        .ok_or_else(|| format!("{} holds no modules of {release}", root.display()))?;
    Ok((vmlinuz, release, modules))
}

fn ensure_kernel(cache: &Path, apt: &mut Apt) -> Result<(PathBuf, String)> {
    let root = cache.join("kernel");
    if let Some(found) = find_vmlinuz(&root)? {
        return Ok(found);
    }
    let package = apt.retry(resolve_kernel_package)?;
    eprintln!("xtask: fetching the guest kernel ({package})");
    let deb = apt.download(&cache.join("debs"), &package)?;
    extract(&deb, &root)?;
    match find_vmlinuz(&root)? {
        Some(found) => Ok(found),
        None => bail!(
            "{} contains no boot/vmlinuz-*; is {package} a kernel package?",
            deb.display()
        ),
    }
}

fn ensure_busybox(cache: &Path, apt: &mut Apt) -> Result<PathBuf> {
    let root = cache.join("busybox");
    let bin = root.join("bin/busybox");
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!("xtask: fetching busybox ({BUSYBOX_PACKAGE})");
    let deb = apt.download(&cache.join("debs"), BUSYBOX_PACKAGE)?;
    extract(&deb, &root)?;
    if !bin.is_file() {
        bail!("{} contains no bin/busybox", deb.display());
    }
    Ok(bin)
}

/// `<root>/boot/vmlinuz-<version>`, if unpacked.
fn find_vmlinuz(root: &Path) -> Result<Option<(PathBuf, String)>> {
    let boot = root.join("boot");
    let Ok(dir) = std::fs::read_dir(&boot) else {
        return Ok(None);
    };
    let mut found: Vec<(PathBuf, String)> = dir
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().into_string().ok()?;
            let version = name.strip_prefix("vmlinuz-")?.to_owned();
            Some((e.path(), version))
        })
        .collect();
    found.sort();
    Ok(found.pop())
}

/// The real kernel package behind the metapackage, e.g. `linux-image-6.1.0-56-cloud-amd64`.
fn resolve_kernel_package() -> Result<String> {
    let out = output(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    for line in out.lines() {
        let line = line.trim().trim_start_matches('|');
        if let Some(dep) = line.strip_prefix("Depends:") {
            let dep = dep.trim();
            if dep.starts_with("linux-image-") && dep != KERNEL_METAPACKAGE && !dep.contains('<') {
                return Ok(dep.to_owned());
            }
        }
    }
    bail!("`apt-cache depends {KERNEL_METAPACKAGE}` names no linux-image-* package:\n{out}")
}

/// `dpkg-deb -x` into a scratch directory, then rename into place (no half-unpacked cache).
fn extract(deb: &Path, dest: &Path) -> Result {
    need_tool("dpkg-deb")?;
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&partial, dest)
        .map_err(|e| format!("renaming {} to {}: {e}", partial.display(), dest.display()))?;
    Ok(())
}

fn need_tool(tool: &str) -> Result {
    if find_in_path(tool).is_none() {
        bail!(
            "`{tool}` is needed to fetch the guest kernel and busybox (Debian/Ubuntu host); \
             alternatively set {ENV_KERNEL_OVERRIDE}=<bzImage> and {ENV_BUSYBOX_OVERRIDE}=<static \
             busybox>"
        );
    }
    Ok(())
}

/// apt-get/apt-cache, running `apt-get update` once (as root) if the package lists are
/// missing or stale.
struct Apt {
    updated: bool,
}

impl Apt {
    fn retry<T>(&mut self, mut f: impl FnMut() -> Result<T>) -> Result<T> {
        need_tool("apt-get")?;
        need_tool("apt-cache")?;
        match f() {
            Ok(v) => Ok(v),
            Err(e) if self.updated => Err(e),
            Err(e) if !is_root() => Err(format!(
                "{e}\n(the apt package lists may be missing or stale: run `sudo apt-get \
                 update` and try again)"
            )
            .into()),
            Err(e) => {
                eprintln!("xtask: {e}\nxtask: running `apt-get update` and retrying");
                run(Command::new("apt-get").args(["update", "-q"]))?;
                self.updated = true;
                f()
            }
        }
    }

    /// Downloads `package` (candidate version) into `dir` unless a `.deb` of it is there.
    fn download(&mut self, dir: &Path, package: &str) -> Result<PathBuf> {
        let find = |d: &Path| -> Option<PathBuf> {
            let prefix = format!("{package}_");
            let mut debs: Vec<PathBuf> = std::fs::read_dir(d)
                .ok()?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
                })
                .collect();
            debs.sort();
            debs.pop()
        };
        if let Some(deb) = find(dir) {
            return Ok(deb);
        }
        let partial = dir.join(format!(".download-{package}"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)
            .map_err(|e| format!("creating {}: {e}", partial.display()))?;
        self.retry(|| {
            let mut cmd = Command::new("apt-get");
            cmd.current_dir(&partial).arg("download").arg("-q");
            if is_root() {
                // apt would otherwise try (and fail, with a warning) to download as `_apt`,
                // which cannot write here.
                cmd.args(["-o", "APT::Sandbox::User=root"]);
            }
            run(cmd.arg(package))
        })?;
        let Some(deb) = find(&partial) else {
            bail!(
                "`apt-get download {package}` left no {package}_*.deb in {}",
                partial.display()
            );
        };
        let dest = dir.join(deb.file_name().unwrap_or_default());
        std::fs::rename(&deb, &dest)
            .map_err(|e| format!("renaming {} to {}: {e}", deb.display(), dest.display()))?;
        let _ = std::fs::remove_dir_all(&partial);
        Ok(dest)
    }
}
