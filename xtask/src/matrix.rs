//! The kernel matrix: Debian's cloud kernels of bullseye (5.10), bookworm (6.1), trixie
//! (6.12) and sid (the newest), each with an initramfs that loads some of its own modules.
//!
//! Bookworm's is the default guest kernel [`crate::provision`] fetches with the host's
//! apt. The others come from Debian's archive through a [`PrivateApt`] state (bullseye +
//! bullseye-security, trixie, sid): the newest `linux-image-cloud-amd64` of the suite
//! names the kernel package (`linux-image-<release>`), which in sid is a small package
//! depending on `linux-binary-<release>` (the `vmlinuz`) and `linux-modules-<release>`.
//!
//! Layout (see `vmi_tests::matrix`): `target/guest/cache/matrix/<suite>/{vmlinuz, vmlinux,
//! release, initrd, modules.txt, package, modules/*.ko}`, the `.deb`s in
//! `matrix/debs/<suite>/`. Everything is cached: a run with every suite in place
//! downloads nothing. The package lists are refreshed when older than a day (or with
//! `VMI_MATRIX_REFRESH=1`; `=0` never), and a suite whose newest kernel changed (sid
//! keeps only its newest) is fetched again; `package` and `release` record what is there.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::image::build_initramfs_with_modules;
use crate::privapt::{Pinned, PrivateApt};
use crate::util::{bail, ensure_tools, run_to_stderr, write_if_changed, Result};
use crate::{kimage, kmod, provision};

/// Environment variable naming the matrix directory for the tests.
pub(crate) const ENV_LINUX_KERNELS: &str = vmi_tests::matrix::ENV_LINUX_KERNELS;
/// Environment variable: `1` refreshes the package lists now, `0` never.
const ENV_REFRESH: &str = "VMI_MATRIX_REFRESH";
/// Package lists older than this are refreshed (a new sid kernel is then fetched).
const REFRESH_AFTER: Duration = Duration::from_secs(24 * 3600);
/// The metapackage depending on a suite's current cloud kernel.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// The archive the private apt state reads.
const SOURCES: [&str; 4] = [
    "http://deb.debian.org/debian bullseye main",
    "http://deb.debian.org/debian-security bullseye-security main",
    "http://deb.debian.org/debian trixie main",
    "http://deb.debian.org/debian sid main",
];

/// The suites fetched through the private apt state, with the archive suites whose
/// newest kernel they take.
const FETCHED: [(&str, &[&str]); 3] = [
    ("bullseye", &["bullseye", "bullseye-security"]),
    ("trixie", &["trixie"]),
    ("sid", &["sid"]),
];

/// The suite whose kernel is the default guest's.
const DEFAULT_SUITE: &str = "bookworm";

/// Makes sure every suite of the matrix is in place under `cache/matrix`, with an
/// initramfs built around `busybox`; returns the matrix directory (absolute).
pub(crate) fn provision(cache: &Path, busybox: &Path) -> Result<PathBuf> {
    let started = Instant::now();
    let matrix = cache.join("matrix");
    std::fs::create_dir_all(&matrix).map_err(|e| format!("{}: {e}", matrix.display()))?;

    let (vmlinuz, release, modules_dir) = provision::debian_kernel(cache)?;
    if !release.starts_with("6.1.") {
        eprintln!(
            "xtask: warning: kernel matrix: the host's default Debian cloud kernel is \
             {release}, not bookworm's 6.1; it stands in for bookworm"
        );
    }
    let key = format!("{}\n", vmlinuz.display());
    ensure_suite(&matrix.join(DEFAULT_SUITE), &key, |partial| {
        let link = partial.join("vmlinuz");
        std::os::unix::fs::symlink(&vmlinuz, &link)
            .map_err(|e| format!("linking {}: {e}", link.display()))?;
        let config = vmlinuz.with_file_name(format!("config-{release}"));
        finish_suite(
            partial,
            DEFAULT_SUITE,
            &vmlinuz,
            &release,
            &modules_dir,
            Some(&config),
        )
    })?;

    let apt = PrivateApt::new(&matrix.join("apt"), &SOURCES)?;
    let complete = FETCHED
        .iter()
        .all(|(suite, _)| is_complete(&matrix.join(suite)));
    let refresh = match std::env::var(ENV_REFRESH).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => apt.lists_age().is_none_or(|age| age > REFRESH_AFTER),
    };
    if !complete || refresh {
        if let Err(e) = apt.update() {
            if !complete {
                return Err(e);
            }
            eprintln!("xtask: warning: kernel matrix: {e}; keeping the cached kernels");
        } else {
            let fetched = FETCHED
                .iter()
                .try_for_each(|(suite, origins)| fetch_suite(&apt, &matrix, suite, origins));
            apt.drop_cache();
            fetched?;
        }
    }

    let mut summary = Vec::new();
    for suite in vmi_tests::matrix::SUITES {
        let dir = matrix.join(suite);
        if !is_complete(&dir) {
            bail!(
                "kernel matrix: {} is incomplete after provisioning",
                dir.display()
            );
        }
        build_initrd(&dir, busybox)?;
        let release = read_trimmed(&dir.join("release"))?;
        summary.push(format!("{suite} {release}"));
    }
    eprintln!(
        "xtask: kernel matrix ({:.1?}): {}",
        started.elapsed(),
        summary.join(", ")
    );
    Ok(matrix)
}

/// Resolves `suite`'s newest kernel packages and (re)builds its directory when they
/// differ from what it holds.
fn fetch_suite(apt: &PrivateApt, matrix: &Path, suite: &str, origins: &[&str]) -> Result {
    let meta = Pinned {
        name: METAPACKAGE.to_owned(),
        version: apt.newest_version(METAPACKAGE, origins)?,
    };
    let image = pinned_dep(apt, &meta, |n| n.starts_with("linux-image-"))?
        .ok_or_else(|| format!("{meta} depends on no linux-image-* package"))?;
    // sid: linux-image-<release> only depends on the binary and modules packages.
    let mut packages = vec![image.clone()];
    for (name, version) in apt.depends(&image)? {
        if name.starts_with("linux-binary-") || name.starts_with("linux-modules-") {
            let version = version.unwrap_or_else(|| image.version.clone());
            packages.push(Pinned { name, version });
        }
    }
    let release = image
        .name
        .strip_prefix("linux-image-")
        .unwrap_or(&image.name)
        .to_owned();
    let key: String = packages.iter().map(|p| format!("{p}\n")).collect();
    let dir = matrix.join(suite);
    ensure_suite(&dir, &key, |partial| {
        eprintln!("xtask: kernel matrix: fetching {suite} {release}");
        let debs_dir = matrix.join("debs").join(suite);
        let debs = apt.download(&debs_dir, &packages)?;
        remove_other_debs(&debs_dir, &debs);
        let unpacked = partial.join("unpacked");
        ensure_tools(&["dpkg-deb"], "dpkg", "unpacking the kernel matrix")?;
        for deb in &debs {
            run_to_stderr(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&unpacked))?;
        }
        let modules_dir = ["usr/lib/modules", "lib/modules"]
            .iter()
            .map(|d| unpacked.join(d).join(&release))
            .find(|d| d.join("kernel").is_dir())
            .ok_or_else(|| format!("{suite}: the packages hold no modules of {release}"))?;
        let vmlinuz = [
            unpacked.join("boot").join(format!("vmlinuz-{release}")),
            modules_dir.join("vmlinuz"),
        ]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{suite}: the packages hold no vmlinuz of {release}"))?;
        let config = unpacked.join("boot").join(format!("config-{release}"));
        let copy = partial.join("vmlinuz");
        std::fs::copy(&vmlinuz, &copy).map_err(|e| format!("copying {}: {e}", copy.display()))?;
        finish_suite(partial, suite, &copy, &release, &modules_dir, Some(&config))?;
        std::fs::remove_dir_all(&unpacked).map_err(|e| format!("{}: {e}", unpacked.display()))?;
        Ok(())
    })
}

/// The first dependency of `package` whose name satisfies `wanted`, pinned.
fn pinned_dep(
    apt: &PrivateApt,
    package: &Pinned,
    wanted: impl Fn(&str) -> bool,
) -> Result<Option<Pinned>> {
    Ok(apt
        .depends(package)?
        .into_iter()
        .find(|(name, _)| wanted(name))
        .map(|(name, version)| Pinned {
            name,
            version: version.unwrap_or_else(|| package.version.clone()),
        }))
}

/// Keeps `dir` if its `package` file says `key` and it is complete; otherwise builds it
/// with `build` in `<dir>.partial` and renames that into place.
fn ensure_suite(dir: &Path, key: &str, build: impl FnOnce(&Path) -> Result) -> Result {
    let current = std::fs::read_to_string(dir.join("package")).unwrap_or_default();
    if current == key && is_complete(dir) {
        return Ok(());
    }
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    build(&partial)?;
    write_if_changed(&partial.join("package"), key.as_bytes())?;
    let _ = std::fs::remove_dir_all(dir);
    std::fs::rename(&partial, dir)
        .map_err(|e| format!("renaming {} to {}: {e}", partial.display(), dir.display()).into())
}

/// Writes `vmlinux`, `release`, `config`, `modules/` and `modules.txt` into `dir`, whose
/// `vmlinuz` is already in place.
fn finish_suite(
    dir: &Path,
    suite: &str,
    vmlinuz: &Path,
    release: &str,
    modules_dir: &Path,
    config: Option<&Path>,
) -> Result {
    let image = std::fs::read(vmlinuz).map_err(|e| format!("{}: {e}", vmlinuz.display()))?;
    let (elf, how) = kimage::extract_vmlinux(&image)
        .map_err(|e| format!("{suite}: vmlinux from {}: {e}", vmlinuz.display()))?;
    eprintln!(
        "xtask: kernel matrix: {suite}: vmlinux ({} MB) from the {how}",
        elf.len() >> 20
    );
    write_if_changed(&dir.join("vmlinux"), &elf)?;
    write_if_changed(&dir.join("release"), format!("{release}\n").as_bytes())?;
    if let Some(config) = config.filter(|c| c.is_file()) {
        std::fs::copy(config, dir.join("config"))
            .map_err(|e| format!("copying {}: {e}", config.display()))?;
    }
    let modules = kmod::select(modules_dir, suite)?;
    let ko_dir = dir.join("modules");
    std::fs::create_dir_all(&ko_dir).map_err(|e| format!("{}: {e}", ko_dir.display()))?;
    let mut list = String::new();
    for m in &modules {
        write_if_changed(&ko_dir.join(format!("{}.ko", m.name)), &m.data)?;
        list.push_str(&m.name);
        list.push('\n');
    }
    write_if_changed(&dir.join("modules.txt"), list.as_bytes())?;
    Ok(())
}

/// Whether `dir` holds a whole suite.
fn is_complete(dir: &Path) -> bool {
    let files = ["vmlinuz", "vmlinux", "release", "modules.txt", "package"];
    if !files.iter().all(|f| dir.join(f).is_file()) {
        return false;
    }
    std::fs::read_to_string(dir.join("modules.txt")).is_ok_and(|list| {
        list.lines()
            .all(|m| dir.join("modules").join(format!("{m}.ko")).is_file())
    })
}

/// (Re)builds `dir/initrd` from busybox and the suite's modules (unchanged: untouched).
fn build_initrd(dir: &Path, busybox: &Path) -> Result {
    let list = read_trimmed(&dir.join("modules.txt"))?;
    let mut modules = Vec::new();
    for name in list.lines() {
        let ko = dir.join("modules").join(format!("{name}.ko"));
        let data = std::fs::read(&ko).map_err(|e| format!("{}: {e}", ko.display()))?;
        modules.push((name.to_owned(), data));
    }
    let initrd = dir.join("initrd");
    if build_initramfs_with_modules(busybox, &initrd, &modules)? {
        eprintln!("xtask: built {}", initrd.display());
    }
    Ok(())
}

/// Deletes the `.deb`s in `dir` other than `keep` (a suite's superseded kernels).
fn remove_other_debs(dir: &Path, keep: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        if path.extension().is_some_and(|x| x == "deb") && !keep.contains(&path) {
            eprintln!(
                "xtask: kernel matrix: removing superseded {}",
                path.display()
            );
            let _ = std::fs::remove_file(&path);
        }
    }
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .trim()
        .to_owned())
}
