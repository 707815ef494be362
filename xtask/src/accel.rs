//! Choosing the accelerator: KVM if a trial boot with it works, else TCG.
//!
//! `/dev/kvm` existing is not enough (nested or paravirtual KVM may fail to run an
//! unmodified Linux guest), so the verdict comes from booting the real guest with KVM and
//! waiting for `VMI-TEST ready`. It is cached in `target/guest/accel` together with the
//! kernel and QEMU versions; `VMI_ACCEL=kvm|tcg` overrides it.

use std::path::Path;
use std::time::{Duration, Instant};

use vmi_tests::{Accel, Guest, GuestOptions, GuestPaths};

use crate::util::{write_if_changed, Result};

/// Environment variable that forces the accelerator.
const ENV_ACCEL: &str = "VMI_ACCEL";
/// How long the KVM trial boot may take to reach `VMI-TEST ready`.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(20);

/// The accelerator for `kernel` + `initrd`; `key` (kernel and QEMU versions) invalidates
/// the cached verdict in `cache_file` when it changes.
pub(crate) fn choose(cache_file: &Path, kernel: &Path, initrd: &Path, key: &str) -> Result<Accel> {
    if let Ok(v) = std::env::var(ENV_ACCEL) {
        if !v.trim().is_empty() {
            let accel: Accel = v.parse().map_err(|e| format!("{ENV_ACCEL}: {e}"))?;
            eprintln!("xtask: accelerator {accel} (from {ENV_ACCEL})");
            return Ok(accel);
        }
    }
    if let Some(accel) = cached(cache_file, key) {
        return Ok(accel);
    }
    let (accel, reason) = probe(kernel, initrd);
    eprintln!("xtask: accelerator {accel}: {reason}");
    let text = format!(
        "# Accelerator verdict of `cargo xtask` (delete this file to probe again).\n\
         {key}\naccel={accel}\nreason={}\n",
        reason.replace('\n', " ")
    );
    write_if_changed(cache_file, text.as_bytes())?;
    Ok(accel)
}

fn cached(cache_file: &Path, key: &str) -> Option<Accel> {
    let text = std::fs::read_to_string(cache_file).ok()?;
    let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    let key_lines: Vec<&str> = key.lines().collect();
    if body.len() < key_lines.len() || body[..key_lines.len()] != key_lines[..] {
        return None;
    }
    body.iter()
        .find_map(|l| l.strip_prefix("accel="))
        .and_then(|a| a.parse().ok())
}

/// Boots the guest once under KVM; returns the verdict and why.
fn probe(kernel: &Path, initrd: &Path) -> (Accel, String) {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return (Accel::Tcg, format!("/dev/kvm is not usable ({e})"));
    }
    eprintln!(
        "xtask: /dev/kvm exists; trial boot with KVM (up to {}s)",
        TRIAL_TIMEOUT.as_secs()
    );
    let paths = GuestPaths {
        kernel: kernel.to_owned(),
        initrd: initrd.to_owned(),
        accel: Accel::Kvm,
    };
    let mut opts = GuestOptions::new(paths);
    opts.boot_timeout = TRIAL_TIMEOUT;
    opts.lifetime = TRIAL_TIMEOUT + Duration::from_secs(30);
    let start = Instant::now();
    let result = Guest::launch(opts).and_then(|guest| guest.wait_ready());
    match result {
        Ok(_) => (
            Accel::Kvm,
            format!("KVM trial boot reached ready in {:.1?}", start.elapsed()),
        ),
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_owned();
            (Accel::Tcg, format!("KVM trial boot failed: {first}"))
        }
    }
}
