//! The Python bindings' speed beside its floors (`vmi-python/bench/bench.py`) on the
//! Linux guest: a 4 KiB physical read from Python vs a Python-level 4 KiB copy, and
//! Volatility 3's `linux.pslist` on the live guest vs on a raw dump of it.
//!
//! `cargo xtask bench -p vmi-tests --bench python` (xtask builds the release wheel into
//! `VMI_PYTHON_VENV`).

use std::path::{Path, PathBuf};
use std::process::Command;

use vmi_tests::{Guest, GuestOptions};

fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours means another bench ran.
    let Some(venv) = std::env::var_os("VMI_PYTHON_VENV").map(PathBuf::from) else {
        eprintln!(
            "python bench skipped: VMI_PYTHON_VENV is not set (run through cargo xtask bench)"
        );
        return;
    };
    let guest = Guest::launch(GuestOptions::from_env()).expect("launching the Linux guest");
    guest.wait_ready().expect("Linux guest ready");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let status = Command::new(venv.join("bin/python"))
        .arg(root.join("vmi-python/bench/bench.py"))
        .arg("--qmp")
        .arg(guest.qmp_socket())
        .status()
        .expect("running bench.py");
    assert!(status.success(), "bench.py failed: {status}");
}
