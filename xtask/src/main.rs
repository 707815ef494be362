//! Project automation, run as `cargo xtask <command>`.
//!
//! The guest tests need QEMU, a Linux kernel and an initramfs; `xtask` provisions them
//! (see [`provision`]), builds the initramfs ([`image`]), picks the accelerator ([`accel`])
//! and runs cargo with `VMI_GUEST_KERNEL`, `VMI_GUEST_INITRD` and `VMI_GUEST_ACCEL` set.
//! It also provisions the kernel matrix ([`matrix`]: Debian kernels 5.10 to the newest,
//! each with an initramfs loading some of its modules) and names it in
//! `VMI_LINUX_KERNELS`. Everything it produces lives in `target/guest/`, but the Python
//! bindings' virtual environment ([`python`]: maturin, pytest, Volatility 3 and the `vmi`
//! wheel), which lives in `target/python/` and is named in `VMI_PYTHON_VENV`.

mod accel;
mod cpio;
mod demo;
mod image;
mod kimage;
mod kmod;
mod kvmi_demo;
mod matrix;
mod privapt;
mod provision;
mod python;
mod spinners;
mod testguest;
mod util;
mod volatility;

use std::ffi::OsString;
use std::process::Command;

use vmi_tests::GuestPaths;

use crate::util::{bail, output, run, target_dir, workspace_root, Result};

const USAGE: &str = "\
usage: cargo xtask <command> [args]

commands:
  provision      install QEMU if missing (apt, as root), fetch the guest kernel and busybox,
                 build the initramfs, choose the accelerator, fetch the kernel matrix
                 (bullseye, bookworm, trixie, sid; VMI_LINUX_KERNELS), install Volatility 3
                 (pip, for the tests that compare with it), build the Python bindings into
                 target/python/venv (VMI_PYTHON_VENV); print the guest environment
  env            like provision, then print `export VMI_GUEST_…=…` lines for the shell
                 (`eval \"$(cargo xtask env)\"; cargo test …`)
  test [ARGS]    provision, then `cargo test --workspace --exclude xtask ARGS`
  bench [ARGS]   provision, then `cargo bench --workspace --exclude xtask ARGS` with one
                 idle-priority spinner per core running (keeps the VM's vCPUs awake);
                 with `-p kvmi-proto|kvmi-sim|kvmi-sys|vmi-kvm` only, `cargo bench ARGS`
                 without provisioning the guest
  demo [kvmi|legacy]
                 kvmi: vmi-kvm against the KVMi host simulator (kvmi-sim, a second
                 process; simulated, no KVM-VMI kernel; needs neither root nor QEMU);
                 legacy: provision, then boot the guest under QEMU and introspect it;
                 both (kvmi first) without an argument
  python [--release]
                 the Python bindings alone: a virtual environment in target/python/venv
                 with maturin, pytest and Volatility 3 (PyPI, pinned) and the `vmi` wheel
                 built from vmi-python installed in it (`test` and `bench` do this too)
  lint           fmt check, clippy, docs (warnings are errors)
  ci             `lint`, then `test`

environment:
  VMI_ACCEL=kvm|tcg       force the Linux guest's accelerator (default: cached trial boot
                          of that guest with KVM)
  VMI_TEST_GUEST_ACCEL=kvm|tcg
                          force the test guest's accelerator (default: cached trial boot
                          of the test guest with KVM); `test` runs the test-guest suites
                          under TCG and, when it boots under KVM, again under KVM
  VMI_MATRIX_REFRESH=1|0  refresh the kernel matrix's package lists now (a new sid kernel
                          is then fetched) / never (default: when older than a day)
  VMI_GUEST_KERNEL=PATH   use this kernel instead of Debian's cloud kernel
  VMI_BUSYBOX=PATH        use this static busybox instead of Debian's busybox-static
  VMI_MAX_GUESTS=N        guests running at once per test process (default 2)
  VMI_GUEST_ECHO=1        echo guest serial output to stderr
";

fn main() {
    let mut args = std::env::args_os().skip(1);
    let command = args.next().map(|c| c.to_string_lossy().into_owned());
    let rest: Vec<OsString> = args.collect();
    let result = match command.as_deref() {
        Some("provision") => no_args("provision", &rest).and_then(|()| {
            let paths = prepare()?;
            print_env(&paths, false);
            Ok(())
        }),
        Some("env") => no_args("env", &rest).and_then(|()| {
            let paths = prepare()?;
            print_env(&paths, true);
            Ok(())
        }),
        Some("test") => prepare().and_then(|paths| test(&paths, &rest)),
        Some("bench") => bench(&rest),
        Some("demo") => demo(&rest),
        Some("python") => python_setup(&rest),
        Some("lint") => no_args("lint", &rest).and_then(|()| lint()),
        Some("ci") => ci(&rest),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command `{other}`\n\n{USAGE}").into()),
        None => Err(USAGE.into()),
    };
    if let Err(e) = result {
        eprintln!("xtask: error: {e}");
        std::process::exit(1);
    }
}

fn no_args(command: &str, rest: &[OsString]) -> Result {
    if !rest.is_empty() {
        bail!("`cargo xtask {command}` takes no arguments (got {rest:?})");
    }
    Ok(())
}

/// `demo [kvmi|legacy]`: the KVMi section needs no guest, so it runs first (and
/// runs where provisioning QEMU would fail).
fn demo(rest: &[OsString]) -> Result {
    let section = match rest {
        [] => None,
        [s] => Some(s.to_string_lossy()),
        _ => bail!("`cargo xtask demo` takes at most one argument (got {rest:?})"),
    };
    let (kvmi, legacy) = match section.as_deref() {
        None => (true, true),
        Some("kvmi") => (true, false),
        Some("legacy") => (false, true),
        Some(other) => bail!("`cargo xtask demo {other}`: the sections are `kvmi` and `legacy`"),
    };
    if kvmi {
        kvmi_demo::run_section()?;
    }
    if legacy {
        if kvmi {
            println!();
        }
        println!("=== legacy section — a real QEMU guest (vmi-legacy) ===");
        // The demo boots the default guest only: no kernel matrix.
        let paths = prepare_guest(false)?;
        demo::run(&paths)?;
    }
    Ok(())
}

/// `python [--release]`: the virtual environment with the `vmi` wheel; prints its path.
fn python_setup(rest: &[OsString]) -> Result {
    let profile = match rest {
        [] => python::Profile::Dev,
        [r] if r == "--release" => python::Profile::Release,
        _ => bail!("`cargo xtask python` takes only --release (got {rest:?})"),
    };
    python::export(profile);
    match std::env::var_os(python::ENV_VENV) {
        Some(venv) => {
            println!("{}", std::path::Path::new(&venv).display());
            Ok(())
        }
        None => bail!(
            "{}",
            std::env::var(python::ENV_VENV_ERROR).unwrap_or_default()
        ),
    }
}

/// Provisions the host, builds the guest image and provisions the kernel matrix; returns
/// the paths the tests need.
fn prepare() -> Result<GuestPaths> {
    prepare_guest(true)
}

/// [`prepare`], with or without the kernel matrix.
fn prepare_guest(with_matrix: bool) -> Result<GuestPaths> {
    let guest_dir = target_dir().join("guest");
    let cache = guest_dir.join("cache");
    std::fs::create_dir_all(&cache).map_err(|e| format!("creating {}: {e}", cache.display()))?;
    let p = provision::provision(&cache)?;

    let initrd = guest_dir.join("initramfs.cpio");
    if image::build_initramfs(&p.busybox, &initrd)? {
        eprintln!("xtask: built {}", initrd.display());
    }

    let qemu_version = output(Command::new(&p.qemu).arg("--version"))?;
    let qemu_version = qemu_version.lines().next().unwrap_or_default();
    let key = format!("kernel={}\nqemu={qemu_version}", p.kernel_version);
    let accel = accel::choose(&guest_dir.join("accel"), &p.kernel, &initrd, &key)?;

    let test_guest = testguest::build(&guest_dir)?;
    let test_guest_accel = accel::choose_test_guest(
        &guest_dir.join("accel-testguest"),
        &test_guest,
        &initrd,
        &key,
    )?;
    // Inherited by every cargo command xtask runs, and printed by `env`.
    if with_matrix {
        let matrix = matrix::provision(&cache, &p.busybox)?;
        std::env::set_var(matrix::ENV_LINUX_KERNELS, &matrix);
        volatility::export(&cache);
        python::export(python_profile());
    }
    std::env::set_var(testguest::ENV_TEST_GUEST, &test_guest);
    std::env::set_var(accel::ENV_TEST_GUEST_ACCEL, test_guest_accel.as_str());
    Ok(GuestPaths {
        kernel: p.kernel,
        initrd,
        accel,
    })
}

/// The profile the Python wheel is built in: release for `bench` (set by [`bench()`]
/// before provisioning), dev otherwise.
fn python_profile() -> python::Profile {
    if BENCHING.load(std::sync::atomic::Ordering::Relaxed) {
        python::Profile::Release
    } else {
        python::Profile::Dev
    }
}

/// Set by `cargo xtask bench` before it provisions.
static BENCHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn print_env(paths: &GuestPaths, shell: bool) {
    let set_by_prepare = [
        testguest::ENV_TEST_GUEST,
        accel::ENV_TEST_GUEST_ACCEL,
        matrix::ENV_LINUX_KERNELS,
        volatility::ENV_VOLATILITY,
        volatility::ENV_VOLATILITY_ERROR,
        python::ENV_VENV,
        python::ENV_VENV_ERROR,
    ]
    .into_iter()
    .filter_map(|name| std::env::var_os(name).map(|v| (name, v)));
    for (name, value) in paths.env_vars().into_iter().chain(set_by_prepare) {
        let value = value.to_string_lossy();
        if shell {
            println!("export {name}='{}'", value.replace('\'', r"'\''"));
        } else {
            println!("{name}={value}");
        }
    }
}

fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root());
    cmd
}

fn with_guest_env(mut cmd: Command, paths: &GuestPaths) -> Command {
    for (name, value) in paths.env_vars() {
        cmd.env(name, value);
    }
    // QEMU is provisioned: tests that would skip without it must run.
    cmd.env("VMI_REQUIRE_QEMU", "1");
    cmd
}

/// The suites that run on the test guest: run a second time under KVM when the test
/// guest boots with it. (`conformance_legacy_testguest_kvm` skips in the first, TCG,
/// pass and runs in this one; `conformance_legacy_testguest_tcg` forces TCG and runs in
/// the first pass only.)
const TEST_GUEST_SUITES: [&str; 7] = [
    "legacy_test_guest",
    "legacy_parked",
    "test_guest",
    "examples",
    "conformance_legacy_testguest_kvm",
    "legacy_safety",
    "legacy_newcomer",
];

/// All tests of the workspace except xtask's, with the guest environment, the test guest
/// under TCG; then, if the test guest boots under KVM, the test-guest suites again under
/// KVM (with the test filters after `--` in `args`). Guest tests limit themselves to
/// `VMI_MAX_GUESTS` concurrent guests (see `vmi_tests::Guest`).
fn test(paths: &GuestPaths, args: &[OsString]) -> Result {
    let test_guest_accel = std::env::var(accel::ENV_TEST_GUEST_ACCEL).unwrap_or_default();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "xtask"])
        .args(args)
        .env(accel::ENV_TEST_GUEST_ACCEL, "tcg");
    eprintln!(
        "xtask: all tests (Linux guest under {}, test guest under tcg)",
        paths.accel
    );
    run(&mut with_guest_env(cmd, paths))?;
    let packages = selected_packages(args);
    if !packages.is_empty() && !packages.iter().any(|p| p == "vmi-tests") {
        return Ok(());
    }
    if test_guest_accel != "kvm" {
        eprintln!(
            "xtask: the test guest does not boot under KVM here: its suites ran under TCG only"
        );
        return Ok(());
    }
    eprintln!(
        "xtask: test-guest suites again, under kvm: {}",
        TEST_GUEST_SUITES.join(", ")
    );
    let mut cmd = cargo();
    cmd.args(["test", "-p", "vmi-tests"]);
    for suite in TEST_GUEST_SUITES {
        cmd.args(["--test", suite]);
    }
    if let Some(split) = args.iter().position(|a| a == "--") {
        cmd.args(&args[split..]);
    }
    cmd.env(accel::ENV_TEST_GUEST_ACCEL, "kvm");
    run(&mut with_guest_env(cmd, paths))
}

/// Packages whose benchmarks need no guest (vmi-kvm's run against kvmi-sim).
const HOST_ONLY_PACKAGES: [&str; 4] = ["kvmi-sys", "kvmi-proto", "kvmi-sim", "vmi-kvm"];

/// The packages selected with `-p`/`--package` before any `--`.
fn selected_packages(args: &[OsString]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter().map(|a| a.to_string_lossy().into_owned());
    while let Some(a) = it.next() {
        match a.as_str() {
            "--" => break,
            "-p" | "--package" => out.extend(it.next()),
            _ => {
                if let Some(p) = a
                    .strip_prefix("--package=")
                    .or_else(|| a.strip_prefix("-p"))
                {
                    out.push(p.to_string());
                }
            }
        }
    }
    out
}

/// Benchmarks: built first, then run with one idle-priority spinner per core (see
/// [`spinners`]); the spinners stop on every exit path.
fn bench(args: &[OsString]) -> Result {
    let packages = selected_packages(args);
    let host_only = !packages.is_empty()
        && packages
            .iter()
            .all(|p| HOST_ONLY_PACKAGES.contains(&p.as_str()));
    let paths = if host_only {
        None
    } else {
        BENCHING.store(true, std::sync::atomic::Ordering::Relaxed);
        Some(prepare()?)
    };
    let cargo_bench = || {
        let mut cmd = cargo();
        cmd.arg("bench");
        if packages.is_empty() {
            cmd.args(["--workspace", "--exclude", "xtask"]);
        }
        match &paths {
            Some(p) => with_guest_env(cmd, p),
            None => cmd,
        }
    };
    // Build without the spinners competing for the cores (`--no-run` before any `--`).
    let split = args.iter().position(|a| a == "--").unwrap_or(args.len());
    run(cargo_bench().args(&args[..split]).arg("--no-run"))?;
    let _spinners = spinners::Spinners::start()?;
    run(cargo_bench().args(args))
}

/// What `.ci/run` does.
fn ci(args: &[OsString]) -> Result {
    lint()?;
    let paths = prepare()?;
    test(&paths, args)
}

/// Formatting, clippy and rustdoc, all with warnings as errors.
fn lint() -> Result {
    ensure_components()?;
    run(cargo().args(["fmt", "--all", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo()
        .env("RUSTDOCFLAGS", "-D warnings")
        .args(["doc", "--workspace", "--no-deps"]))
}

/// rustfmt and clippy, added with rustup when missing.
fn ensure_components() -> Result {
    let missing: Vec<&str> = [("fmt", "rustfmt"), ("clippy", "clippy")]
        .into_iter()
        .filter(|(sub, _)| {
            !cargo()
                .args([sub, "--version"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, component)| component)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if util::find_in_path("rustup").is_none() {
        bail!("cargo {missing:?} missing and rustup is not available to add them");
    }
    run(Command::new("rustup")
        .args(["component", "add"])
        .args(&missing))
}
