//! What the examples share: argument parsing, connecting with a message that names the
//! QEMU option a failed part needs, and number parsing.

#![allow(dead_code)] // Each example uses a subset.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vmi_legacy::{LegacyConfig, LegacyQemu, RamAccess};

/// The QEMU options each part needs, as printed in the messages.
pub(crate) const QMP_OPTION: &str = "-qmp unix:/tmp/qmp.sock,server=on,wait=off";
pub(crate) const GDB_OPTION: &str =
    "-chardev socket,id=gdb0,path=/tmp/gdb.sock,server=on,wait=off -gdb chardev:gdb0";
pub(crate) const RAM_OPTION: &str = "-object memory-backend-memfd,id=ram0,size=<RAM>,share=on \
                              -machine memory-backend=ram0 (or memory-backend-file,…,share=on)";

/// An error for `main` to print: the message, then exit code 1 (2 for usage errors).
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) usage: bool,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            message: e.to_string(),
            usage: false,
        }
    }
}

pub(crate) fn usage(text: &str) -> Failure {
    Failure {
        message: text.to_owned(),
        usage: true,
    }
}

/// Runs `body`, printing a failure as `NAME: error: …`.
pub(crate) fn main_with(name: &str, body: impl FnOnce() -> Result<(), Failure>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!(
                "{name}: {}{}",
                if f.usage { "" } else { "error: " },
                f.message
            );
            ExitCode::from(if f.usage { 2 } else { 1 })
        }
    }
}

/// What a session must have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// QMP only.
    Qmp,
    /// QMP and guest RAM mapped from QEMU's shared backend.
    SharedRam,
    /// QMP and the gdbstub.
    Gdb,
}

/// Connects to QEMU; a missing part becomes a message with the option to add.
pub(crate) fn connect(qmp: &Path, gdb: Option<&Path>, needs: Needs) -> Result<LegacyQemu, Failure> {
    if !qmp.exists() {
        return Err(Failure::from(format!(
            "no QMP socket at {}: start QEMU with `{QMP_OPTION}` (with your path)",
            qmp.display()
        )));
    }
    let mut cfg = LegacyConfig::new(qmp);
    cfg.writable = false;
    if let Some(gdb) = gdb {
        if !gdb.exists() {
            return Err(Failure::from(format!(
                "no gdbstub socket at {}: start QEMU with `{GDB_OPTION}` (with your path)",
                gdb.display()
            )));
        }
        cfg.gdb_socket = Some(gdb.to_owned());
        // Breakpoints under TCG need no write access to RAM; be a read-only observer.
    }
    let vm = LegacyQemu::connect(cfg).map_err(|e| {
        let hint = match gdb {
            Some(g) => format!(
                " (is {} QEMU's gdbstub? it needs `{GDB_OPTION}`; is another debugger attached?)",
                g.display()
            ),
            None => String::new(),
        };
        Failure::from(format!(
            "connecting to QEMU at {}: {e}{hint}",
            qmp.display()
        ))
    })?;
    if needs == Needs::SharedRam && !matches!(vm.ram_access(), RamAccess::Shared(_)) {
        let why: Vec<String> = vm
            .ram_fallbacks()
            .iter()
            .map(|(path, e)| format!("{path}: {e}"))
            .collect();
        return Err(Failure::from(format!(
            "guest RAM is not a shared backend (reached through {} instead; {}): start QEMU \
             with `{RAM_OPTION}`",
            vm.ram_access().kind(),
            why.join("; ")
        )));
    }
    Ok(vm)
}

/// Parses `0x…` hex or decimal.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Positional arguments and `--name value` options.
pub(crate) struct Args {
    pub(crate) positional: Vec<String>,
    pub(crate) options: Vec<(String, String)>,
}

impl Args {
    /// Parses the process arguments; `flags` take a value.
    pub(crate) fn parse(flags: &[&str]) -> Result<Self, String> {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "-h" || a == "--help" {
                return Err(String::new());
            }
            if let Some(name) = a.strip_prefix("--") {
                if !flags.contains(&name) {
                    return Err(format!("unknown option --{name}"));
                }
                let v = it.next().ok_or(format!("--{name} needs a value"))?;
                options.push((name.to_owned(), v));
            } else {
                positional.push(a);
            }
        }
        Ok(Self {
            positional,
            options,
        })
    }

    pub(crate) fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn path(&self, i: usize) -> Option<PathBuf> {
        self.positional.get(i).map(PathBuf::from)
    }
}
