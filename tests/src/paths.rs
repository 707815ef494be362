//! Where the guest image lives and which accelerator runs it, as handed over by `cargo xtask`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Environment variable naming the guest kernel (`bzImage`/`vmlinuz`).
pub const ENV_KERNEL: &str = "VMI_GUEST_KERNEL";
/// Environment variable naming the guest initramfs (newc cpio).
pub const ENV_INITRD: &str = "VMI_GUEST_INITRD";
/// Environment variable naming the QEMU accelerator: `kvm` or `tcg`.
pub const ENV_ACCEL: &str = "VMI_GUEST_ACCEL";

/// How to tell a user to get the environment right.
const HOW_TO: &str = "run the guest tests through `cargo xtask test` (it provisions QEMU, \
                      the guest kernel and initramfs, and sets VMI_GUEST_KERNEL, \
                      VMI_GUEST_INITRD and VMI_GUEST_ACCEL)";

/// The QEMU accelerator a guest runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`.
    Kvm,
    /// QEMU's binary translator (slow, works everywhere).
    Tcg,
}

impl Accel {
    /// The name QEMU uses for it (`-accel <name>`).
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?} (expected `kvm` or `tcg`)"
            )),
        }
    }
}

/// The guest image and accelerator, normally read from the environment `cargo xtask` sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestPaths {
    /// The guest kernel image.
    pub kernel: PathBuf,
    /// The guest initramfs.
    pub initrd: PathBuf,
    /// The accelerator to run the guest on.
    pub accel: Accel,
}

impl GuestPaths {
    /// Reads [`ENV_KERNEL`], [`ENV_INITRD`] and [`ENV_ACCEL`] (which defaults to `tcg`).
    ///
    /// The error explains what is missing and how to fix it.
    pub fn from_env() -> Result<Self, String> {
        let get = |name: &str| match std::env::var_os(name) {
            Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
            _ => Err(format!("{name} is not set: {HOW_TO}")),
        };
        let kernel = get(ENV_KERNEL)?;
        let initrd = get(ENV_INITRD)?;
        let accel = match std::env::var(ENV_ACCEL) {
            Ok(v) if !v.trim().is_empty() => v.parse().map_err(|e| format!("{ENV_ACCEL}: {e}"))?,
            _ => Accel::Tcg,
        };
        for (name, path) in [(ENV_KERNEL, &kernel), (ENV_INITRD, &initrd)] {
            if !path.is_file() {
                return Err(format!(
                    "{name}={} does not name a file: {HOW_TO}",
                    path.display()
                ));
            }
        }
        Ok(GuestPaths {
            kernel,
            initrd,
            accel,
        })
    }

    /// Like [`GuestPaths::from_env`], but panics with the explanation: for tests, which must
    /// fail (not silently pass) when the guest is not provisioned.
    #[track_caller]
    pub fn from_env_or_panic() -> Self {
        match Self::from_env() {
            Ok(paths) => paths,
            Err(e) => panic!("guest test fixture: {e}"),
        }
    }

    /// The environment variables that describe these paths, for a child process.
    pub fn env_vars(&self) -> [(&'static str, OsString); 3] {
        [
            (ENV_KERNEL, self.kernel.clone().into_os_string()),
            (ENV_INITRD, self.initrd.clone().into_os_string()),
            (ENV_ACCEL, self.accel.as_str().into()),
        ]
    }
}
