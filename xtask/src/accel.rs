//! Choosing the accelerator per guest: KVM if a trial boot of that guest with it works,
//! else TCG.
//!
//! `/dev/kvm` existing is not enough (nested or paravirtual KVM may fail to run an
//! unmodified Linux guest while it runs the small test guest), so each verdict comes from
//! booting that guest with KVM and waiting for `VMI-TEST ready` (and, for the test guest,
//! its first tick). The Linux guest's verdict is cached in `target/guest/accel`, the test
//! guest's in `target/guest/accel-testguest`, each with what invalidates it (kernel and
//! QEMU versions, the test guest's size and mtime); `VMI_ACCEL=kvm|tcg` overrides the
//! Linux guest's, `VMI_TEST_GUEST_ACCEL=kvm|tcg` the test guest's.

use std::path::Path;
use std::time::{Duration, Instant};

use vmi_tests::{Accel, Guest, GuestOptions, GuestPaths};

use crate::util::{write_if_changed, Result};

/// Environment variable that forces the Linux guest's accelerator.
const ENV_ACCEL: &str = "VMI_ACCEL";
/// Environment variable that forces the test guest's accelerator (also what the test
/// fixtures read: `vmi_tests::guest::ENV_TEST_GUEST_ACCEL`).
pub(crate) const ENV_TEST_GUEST_ACCEL: &str = vmi_tests::guest::ENV_TEST_GUEST_ACCEL;
/// How long the KVM trial boot of the Linux guest may take to reach `VMI-TEST ready`.
const TRIAL_TIMEOUT: Duration = Duration::from_secs(20);
/// The same for the test guest: on this project's CI machine (paravirtual KVM) SeaBIOS
/// and the multiboot loader take about 12 s under KVM (0.4 s under TCG), more on a
/// loaded host; a timeout would cache TCG and silently drop the KVM runs.
const TEST_GUEST_TRIAL_TIMEOUT: Duration = Duration::from_secs(60);

/// The accelerator for `kernel` + `initrd`; `key` (kernel and QEMU versions) invalidates
/// the cached verdict in `cache_file` when it changes.
pub(crate) fn choose(cache_file: &Path, kernel: &Path, initrd: &Path, key: &str) -> Result<Accel> {
    let paths = GuestPaths {
        kernel: kernel.to_owned(),
        initrd: initrd.to_owned(),
        accel: Accel::Kvm,
    };
    decide(ENV_ACCEL, "Linux guest", cache_file, key, || {
        probe(GuestOptions::new(paths), None, TRIAL_TIMEOUT)
    })
}

/// The accelerator for the test guest `elf` (booted with `initrd` like the fixture does).
pub(crate) fn choose_test_guest(
    cache_file: &Path,
    elf: &Path,
    initrd: &Path,
    key: &str,
) -> Result<Accel> {
    let meta = std::fs::metadata(elf).map_err(|e| format!("{}: {e}", elf.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let key = format!("{key}\ntestguest={} bytes, mtime {mtime}", meta.len());
    let mut opts = GuestOptions::new(GuestPaths {
        kernel: elf.to_owned(),
        initrd: initrd.to_owned(),
        accel: Accel::Kvm,
    });
    // As `GuestOptions::test_guest` (which reads the environment this decides).
    opts.memory_mib = 64;
    opts.cpus = 1;
    opts.append = String::new();
    decide(ENV_TEST_GUEST_ACCEL, "test guest", cache_file, &key, || {
        probe(opts, Some("VMI-TEST tick"), TEST_GUEST_TRIAL_TIMEOUT)
    })
}

fn decide(
    env: &str,
    what: &str,
    cache_file: &Path,
    key: &str,
    probe: impl FnOnce() -> (Accel, String),
) -> Result<Accel> {
    if let Ok(v) = std::env::var(env) {
        if !v.trim().is_empty() {
            let accel: Accel = v.parse().map_err(|e| format!("{env}: {e}"))?;
            eprintln!("xtask: {what}: accelerator {accel} (from {env})");
            return Ok(accel);
        }
    }
    if let Some(accel) = cached(cache_file, key) {
        return Ok(accel);
    }
    let (accel, reason) = probe();
    eprintln!("xtask: {what}: accelerator {accel}: {reason}");
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

/// Boots the guest of `opts` once under KVM, waits for ready (and for `then`, a later
/// serial line, if given); returns the verdict and why.
fn probe(mut opts: GuestOptions, then: Option<&str>, timeout: Duration) -> (Accel, String) {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return (Accel::Tcg, format!("/dev/kvm is not usable ({e})"));
    }
    eprintln!(
        "xtask: /dev/kvm exists; trial boot with KVM (up to {}s)",
        timeout.as_secs()
    );
    opts.paths.accel = Accel::Kvm;
    opts.boot_timeout = timeout;
    opts.lifetime = timeout * 2 + Duration::from_secs(30);
    let start = Instant::now();
    let result = Guest::launch(opts).and_then(|guest| {
        guest.wait_ready()?;
        if let Some(line) = then {
            guest.wait_for_serial(line, timeout)?;
        }
        Ok(())
    });
    match result {
        Ok(_) => (
            Accel::Kvm,
            format!(
                "KVM trial boot reached {:?} in {:.1?}",
                then.unwrap_or("VMI-TEST ready"),
                start.elapsed()
            ),
        ),
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or_default().to_owned();
            (Accel::Tcg, format!("KVM trial boot failed: {first}"))
        }
    }
}
