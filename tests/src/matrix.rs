//! The kernel matrix: real Debian kernels of several releases, each with its own initramfs.
//!
//! `cargo xtask` provisions it in `target/guest/cache/matrix` and names that directory in
//! [`ENV_LINUX_KERNELS`]. One directory per suite ([`SUITES`]):
//!
//! ```text
//! <suite>/vmlinuz      the bzImage to boot
//! <suite>/vmlinux      the kernel ELF decompressed from it (.BTF, kallsyms tables)
//! <suite>/release      `uname -r`
//! <suite>/initrd       the project's busybox initramfs plus some of this kernel's modules
//! <suite>/modules.txt  those modules, one name a line, in the order /init loads them
//! <suite>/package      the Debian packages it came from (`name=version`, one a line)
//! ```
//!
//! The directory of hand-fetched kernels used while developing may lack `initrd` and
//! `modules.txt`: [`MatrixKernel::open`] accepts that, [`MatrixKernel::guest_options`]
//! does not.

use std::path::{Path, PathBuf};

use crate::guest::GuestOptions;
use crate::paths::GuestPaths;

/// Environment variable naming the kernel-matrix directory.
pub const ENV_LINUX_KERNELS: &str = "VMI_LINUX_KERNELS";

/// Environment variable `cargo xtask` sets to `1`: tests must not skip for lack of QEMU or
/// provisioned files (they panic instead).
pub const ENV_REQUIRE_QEMU: &str = "VMI_REQUIRE_QEMU";

/// The matrix's suites, oldest kernel first: bullseye (5.10), bookworm (6.1), trixie
/// (6.12), sid (the newest, 7.x at the time of writing; its release is in `release`).
pub const SUITES: [&str; 4] = ["bullseye", "bookworm", "trixie", "sid"];

/// The matrix directory from [`ENV_LINUX_KERNELS`], if set and non-empty.
pub fn kernels_dir() -> Option<PathBuf> {
    std::env::var_os(ENV_LINUX_KERNELS)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// The matrix directory for test `test`, or `None` after printing a skip message when
/// [`ENV_LINUX_KERNELS`] is unset; panics instead when [`ENV_REQUIRE_QEMU`] is `1` (under
/// `cargo xtask test` a missing matrix is a failure, not a skip).
#[track_caller]
pub fn kernels_dir_or_skip(test: &str) -> Option<PathBuf> {
    if let Some(dir) = kernels_dir() {
        return Some(dir);
    }
    let why = format!(
        "{ENV_LINUX_KERNELS} is not set (run through `cargo xtask test`, or `eval \"$(cargo \
         xtask env)\"` first)"
    );
    if std::env::var(ENV_REQUIRE_QEMU).as_deref() == Ok("1") {
        panic!("{test}: {why}, and {ENV_REQUIRE_QEMU}=1");
    }
    eprintln!("SKIPPED {test}: {why}");
    None
}

impl GuestOptions {
    /// Options for the kernel-matrix suite `suite` (see [`crate::matrix`]): its `vmlinuz`
    /// and `initrd` from the directory in `VMI_LINUX_KERNELS`, on the Linux guest's
    /// accelerator, with [`crate::DEFAULT_APPEND`]. Panics with instructions if the matrix is not
    /// provisioned (use [`kernels_dir_or_skip`] first to skip instead).
    #[track_caller]
    pub fn for_matrix_kernel(suite: &str) -> Self {
        let dir = kernels_dir().unwrap_or_else(|| {
            panic!(
                "{} is not set: run the tests with `cargo xtask test`",
                ENV_LINUX_KERNELS
            )
        });
        MatrixKernel::open(&dir, suite)
            .and_then(|k| k.guest_options())
            .unwrap_or_else(|e| panic!("kernel matrix, suite {suite}: {e}"))
    }

    /// Boots with kernel page-table isolation forced on: `pti=on` on the command line,
    /// without `mitigations=off` (which turns PTI off).
    pub fn with_pti(mut self) -> Self {
        let words: Vec<&str> = self
            .append
            .split_whitespace()
            .filter(|w| *w != "mitigations=off" && !w.starts_with("pti=") && *w != "nopti")
            .collect();
        self.append = format!("{} pti=on", words.join(" "));
        self
    }
}

/// One suite's kernel in the matrix directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatrixKernel {
    /// The suite (`bullseye`, …).
    pub suite: String,
    /// `<matrix>/<suite>`.
    pub dir: PathBuf,
    /// The bzImage.
    pub vmlinuz: PathBuf,
    /// The decompressed kernel ELF.
    pub vmlinux: PathBuf,
    /// The kernel release (`uname -r`), from the `release` file.
    pub release: String,
    /// The initramfs, if provisioned.
    pub initrd: Option<PathBuf>,
    /// The modules the initramfs loads, in load order (empty without `modules.txt`).
    pub modules: Vec<String>,
}

impl MatrixKernel {
    /// Reads `<matrix>/<suite>`; fails naming what is missing.
    pub fn open(matrix: &Path, suite: &str) -> Result<Self, String> {
        let dir = matrix.join(suite);
        let file = |name: &str| -> Result<PathBuf, String> {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "{} is missing (provision the matrix with `cargo xtask provision`)",
                    p.display()
                ))
            }
        };
        let vmlinuz = file("vmlinuz")?;
        let vmlinux = file("vmlinux")?;
        let release_file = file("release")?;
        let release = std::fs::read_to_string(&release_file)
            .map_err(|e| format!("{}: {e}", release_file.display()))?
            .trim()
            .to_owned();
        let initrd = file("initrd").ok();
        let modules = match std::fs::read_to_string(dir.join("modules.txt")) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect(),
            Err(_) => Vec::new(),
        };
        Ok(MatrixKernel {
            suite: suite.to_owned(),
            dir,
            vmlinuz,
            vmlinux,
            release,
            initrd,
            modules,
        })
    }

    /// Options booting this kernel with its initramfs on the Linux guest's accelerator
    /// (`VMI_GUEST_ACCEL`, default `tcg`) and the default command line.
    pub fn guest_options(&self) -> Result<GuestOptions, String> {
        let initrd = self.initrd.clone().ok_or_else(|| {
            format!(
                "{} has no initrd (provision the matrix with `cargo xtask provision`)",
                self.dir.display()
            )
        })?;
        let accel = match std::env::var(crate::paths::ENV_ACCEL) {
            Ok(v) if !v.trim().is_empty() => v
                .parse()
                .map_err(|e| format!("{}: {e}", crate::paths::ENV_ACCEL))?,
            _ => crate::paths::Accel::Tcg,
        };
        Ok(GuestOptions::new(GuestPaths {
            kernel: self.vmlinuz.clone(),
            initrd,
            accel,
        }))
    }
}
