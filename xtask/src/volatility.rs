//! Volatility 3 for the tests that compare vmi-linux with it: a Python virtual
//! environment with a pinned `volatility3` from PyPI.
//!
//! The environment lives in `target/guest/cache/volatility/venv`; a stamp file written
//! after a successful install (naming the pinned requirements) makes later runs a no-op.
//! Failing to install is not fatal for xtask: the reason goes to the tests in
//! [`ENV_VOLATILITY_ERROR`], and the tests that need Volatility fail with it under
//! `VMI_REQUIRE_QEMU=1` (everything else still runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::util::{bail, find_in_path, is_root, output, run_to_stderr, Result};

/// Environment variable naming Volatility's `vol` program (inside the virtual environment).
pub(crate) const ENV_VOLATILITY: &str = "VMI_VOLATILITY";
/// Environment variable carrying why Volatility could not be provisioned.
pub(crate) const ENV_VOLATILITY_ERROR: &str = "VMI_VOLATILITY_ERROR";
/// Override: the Python interpreter the virtual environment is made from.
const ENV_PYTHON: &str = "VMI_PYTHON";

/// What pip installs, every package pinned (Volatility's own dependency `pefile`, and
/// `jsonschema` with its dependencies: without it Volatility accepts any ISF file
/// unvalidated, with it an ISF that breaks Volatility's schema is rejected).
pub(crate) const REQUIREMENTS: [&str; 8] = [
    "volatility3==2.28.2",
    "pefile==2024.8.26",
    "jsonschema==4.25.1",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
    "attrs==26.1.0",
    "typing_extensions==4.16.0",
];

/// Provisions Volatility and exports [`ENV_VOLATILITY`] (or, when that fails,
/// [`ENV_VOLATILITY_ERROR`]) to this process, hence to every cargo command xtask runs.
pub(crate) fn export(cache: &Path) {
    match ensure(&cache.join("volatility")) {
        Ok(vol) => {
            std::env::set_var(ENV_VOLATILITY, vol);
            std::env::remove_var(ENV_VOLATILITY_ERROR);
        }
        Err(e) => {
            let e = format!("Volatility 3 is not available: {e}");
            eprintln!("xtask: warning: {e}");
            std::env::remove_var(ENV_VOLATILITY);
            std::env::set_var(ENV_VOLATILITY_ERROR, e);
        }
    }
}

/// The `vol` program of a virtual environment in `dir`, created and filled when missing.
fn ensure(dir: &Path) -> Result<PathBuf> {
    let venv = dir.join("venv");
    let vol = venv.join("bin/vol");
    let stamp = venv.join("vmi-requirements.txt");
    let wanted = REQUIREMENTS.join("\n") + "\n";
    if vol.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
        return Ok(vol);
    }
    let start = Instant::now();
    // A virtual environment records its own path in its scripts: build it in place
    // (not in a scratch directory renamed afterwards); the stamp marks it complete.
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    make_venv(&python()?, &venv)?;
    eprintln!(
        "xtask: installing Volatility 3 from PyPI into {}",
        venv.display()
    );
    pip_install(&venv, &REQUIREMENTS)?;
    if !vol.is_file() {
        bail!("pip installed volatility3 but {} is missing", vol.display());
    }
    std::fs::write(&stamp, wanted).map_err(|e| format!("writing {}: {e}", stamp.display()))?;
    eprintln!(
        "xtask: Volatility 3 installed in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    Ok(vol)
}

/// `pip install REQUIREMENTS` into the virtual environment `venv` (quiet, no prompts,
/// bounded retries); a failure says whether PyPI was unreachable.
pub(crate) fn pip_install(venv: &Path, requirements: &[&str]) -> Result {
    let pip = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pip",
            "install",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .args(["--quiet", "--timeout", "30", "--retries", "2"])
        .args(requirements)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run pip of {}: {e}", venv.display()))?;
    if !pip.status.success() {
        let stderr = String::from_utf8_lossy(&pip.stderr);
        let unreachable = [
            "NewConnectionError",
            "Max retries exceeded",
            "ConnectTimeout",
            "Temporary failure in name resolution",
            "Network is unreachable",
        ]
        .iter()
        .any(|s| stderr.contains(s));
        let why = if unreachable {
            "PyPI is unreachable from this machine"
        } else {
            "pip failed"
        };
        bail!(
            "{why}: `pip install {}` ({}):\n{}",
            requirements.join(" "),
            pip.status,
            stderr.trim_end()
        );
    }
    Ok(())
}

/// The interpreter to build the environment from: `$VMI_PYTHON` or `python3`.
pub(crate) fn python() -> Result<PathBuf> {
    let wanted = std::env::var(ENV_PYTHON).unwrap_or_else(|_| "python3".to_owned());
    match find_in_path(&wanted) {
        Some(p) => Ok(p),
        None => bail!(
            "{wanted} not found (install Python 3.8 or later, e.g. `apt-get install python3 \
             python3-venv`, or set {ENV_PYTHON})"
        ),
    }
}

/// `python -m venv venv`; on Debian, whose Python lacks `ensurepip` until `python3-venv`
/// is installed, installs that package first (as root).
pub(crate) fn make_venv(python: &Path, venv: &Path) -> Result {
    let has_ensurepip = || {
        Command::new(python)
            .args(["-c", "import ensurepip, venv"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_ensurepip() {
        if !is_root() || find_in_path("apt-get").is_none() {
            bail!(
                "{} cannot make virtual environments (no ensurepip/venv): install \
                 python3-venv (Debian/Ubuntu: `sudo apt-get install python3-venv`)",
                python.display()
            );
        }
        eprintln!("xtask: python3 lacks venv/ensurepip; installing python3-venv with apt-get");
        run_to_stderr(Command::new("apt-get").args(["update", "-q"]))?;
        run_to_stderr(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "python3-venv",
                ]),
        )?;
    }
    output(Command::new(python).args(["-m", "venv"]).arg(venv))?;
    Ok(())
}
