//! The Python bindings for the tests and benchmarks: a virtual environment in
//! `target/python/venv` with maturin, pytest and Volatility 3 from PyPI (every package
//! pinned), and the `vmi` wheel built from `vmi-python` by maturin and installed into it.
//!
//! The packages are installed once (a stamp file names the pinned requirements); the
//! wheel is rebuilt on every call (cargo makes that a no-op when nothing changed) and
//! reinstalled. Failing is not fatal for xtask: the reason goes to the tests in
//! [`ENV_VENV_ERROR`], and `tests/tests/python_bindings.rs` fails with it under
//! `VMI_REQUIRE_QEMU=1`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::util::{bail, run, target_dir, workspace_root, Result};
use crate::volatility;

/// Environment variable naming the virtual environment.
pub(crate) const ENV_VENV: &str = "VMI_PYTHON_VENV";
/// Environment variable carrying why it could not be provisioned.
pub(crate) const ENV_VENV_ERROR: &str = "VMI_PYTHON_VENV_ERROR";

/// Build and test tools, pinned with their dependencies (Volatility's come from
/// [`volatility::REQUIREMENTS`]).
const TOOLS: [&str; 6] = [
    "maturin==1.16.0",
    "pytest==9.2.0",
    "iniconfig==2.3.1",
    "packaging==26.4",
    "pluggy==1.7.0",
    "Pygments==2.21.0",
];

/// How the wheel is compiled.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Profile {
    /// Cargo's dev profile (the tests: shares the build of `cargo test`).
    Dev,
    /// Release (the benchmarks).
    Release,
}

/// Provisions the environment with the wheel built in `profile` and exports
/// [`ENV_VENV`] (or, when that fails, [`ENV_VENV_ERROR`]) to this process, hence to every
/// cargo command xtask runs.
pub(crate) fn export(profile: Profile) {
    match ensure(profile) {
        Ok(venv) => {
            std::env::set_var(ENV_VENV, venv);
            std::env::remove_var(ENV_VENV_ERROR);
        }
        Err(e) => {
            let e = format!("the Python bindings are not available: {e}");
            eprintln!("xtask: warning: {e}");
            std::env::remove_var(ENV_VENV);
            std::env::set_var(ENV_VENV_ERROR, e);
        }
    }
}

/// The virtual environment, its packages installed and the current wheel in it.
fn ensure(profile: Profile) -> Result<PathBuf> {
    let dir = target_dir().join("python");
    let venv = dir.join("venv");
    let stamp = venv.join("vmi-requirements.txt");
    let requirements: Vec<&str> = TOOLS
        .iter()
        .chain(volatility::REQUIREMENTS.iter())
        .copied()
        .collect();
    let wanted = requirements.join("\n") + "\n";
    if !std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        let start = Instant::now();
        // In place: a virtual environment records its own path in its scripts.
        let _ = std::fs::remove_dir_all(&venv);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        volatility::make_venv(&volatility::python()?, &venv)?;
        eprintln!(
            "xtask: installing maturin, pytest and Volatility 3 from PyPI into {}",
            venv.display()
        );
        volatility::pip_install(&venv, &requirements)?;
        std::fs::write(&stamp, &wanted).map_err(|e| format!("writing {}: {e}", stamp.display()))?;
        eprintln!(
            "xtask: Python tools installed in {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
    install_wheel(&venv, &dir.join("wheels"), profile)?;
    Ok(venv)
}

/// Builds the `vmi` wheel with maturin into `wheels` and installs it into `venv`.
fn install_wheel(venv: &Path, wheels: &Path, profile: Profile) -> Result {
    let start = Instant::now();
    let _ = std::fs::remove_dir_all(wheels);
    let mut build = Command::new(venv.join("bin/maturin"));
    build
        .current_dir(workspace_root())
        .args([
            "build",
            "--quiet",
            "--manifest-path",
            "vmi-python/Cargo.toml",
        ])
        .args(["--compatibility", "linux", "--interpreter"])
        .arg(venv.join("bin/python"))
        .arg("--out")
        .arg(wheels)
        .env("VIRTUAL_ENV", venv);
    match profile {
        Profile::Dev => build.args(["--profile", "dev"]),
        Profile::Release => build.arg("--release"),
    };
    run(&mut build)?;
    let wheel = std::fs::read_dir(wheels)
        .map_err(|e| format!("reading {}: {e}", wheels.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"));
    let Some(wheel) = wheel else {
        bail!("maturin built no wheel into {}", wheels.display());
    };
    run(Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--force-reinstall",
        ])
        .args(["--disable-pip-version-check", "--no-input"])
        .arg(&wheel))?;
    eprintln!(
        "xtask: built and installed {} ({profile:?}) in {:.1} s",
        wheel.file_name().unwrap_or_default().to_string_lossy(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
