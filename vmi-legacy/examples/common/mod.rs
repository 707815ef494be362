//! What the examples share: argument parsing, connecting with a message that names the
//! QEMU option a failed part needs, and address parsing.

#![allow(dead_code)] // Each example uses a subset.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vmi_legacy::{LegacyConfig, LegacyQemu, RamAccess};

/// The QEMU options each part needs, as printed in the messages.
pub(crate) const QMP_OPTION: &str = "-qmp unix:/tmp/qmp.sock,server=on,wait=off";
pub(crate) const GDB_OPTION: &str =
    "-chardev socket,id=gdb0,path=/tmp/gdb.sock,server=on,wait=off -gdb chardev:gdb0";
pub(crate) const RAM_OPTION: &str = "-object memory-backend-memfd,id=ram0,size=<RAM>,share=on \
                              -machine memory-backend=ram0 (or memory-backend-file,…,share=on)";

/// The option every example takes for how long one request to QEMU may take.
pub(crate) const TIMEOUT_FLAG: &str = "qmp-timeout";
/// What `main` prints and how it exits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A failure: `NAME: error: …` on stderr, exit code 1.
    Error,
    /// Arguments `main` cannot use: `NAME: …` (with the usage) on stderr, exit code 2.
    Usage,
    /// `--help` was asked for: the usage alone on stdout, exit code 0.
    Help,
}

/// Why `run` stopped early: a message and how to report it.
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) outcome: Outcome,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            message: e.to_string(),
            outcome: Outcome::Error,
        }
    }
}

pub(crate) fn usage(text: &str) -> Failure {
    Failure {
        message: text.to_owned(),
        outcome: Outcome::Usage,
    }
}

/// Runs `body`: a failure is printed as `NAME: error: …` (exit 1), a usage error as
/// `NAME: …` (exit 2), `--help` as the usage alone on stdout (exit 0).
pub(crate) fn main_with(name: &str, body: impl FnOnce() -> Result<(), Failure>) -> ExitCode {
    match body() {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => match f.outcome {
            Outcome::Help => {
                println!("{}", f.message);
                ExitCode::SUCCESS
            }
            Outcome::Usage => {
                eprintln!("{name}: {}", f.message);
                ExitCode::from(2)
            }
            Outcome::Error => {
                eprintln!("{name}: error: {}", f.message);
                ExitCode::from(1)
            }
        },
    }
}

/// What a session must have.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// QMP only.
    Qmp,
    /// QMP and guest RAM read directly: mapped from QEMU's shared backend, or, for
    /// anonymous RAM (no shared backend), copied from QEMU's memory with
    /// `process_vm_readv` (needs ptrace access to QEMU: same user, and
    /// `kernel.yama.ptrace_scope` 0 or `CAP_SYS_PTRACE`). Not QMP `pmemsave`/`xp`.
    DirectRam,
    /// QMP and the gdbstub.
    Gdb,
}

/// Connects to QEMU, with `timeout` per request if given (`--qmp-timeout`); a missing
/// part becomes a message with the option to add, a request that timed out one that
/// names `--qmp-timeout`.
pub(crate) fn connect(
    qmp: &Path,
    gdb: Option<&Path>,
    needs: Needs,
    timeout: Option<Duration>,
) -> Result<LegacyQemu, Failure> {
    if !qmp.exists() {
        return Err(Failure::from(format!(
            "no QMP socket at {}: start QEMU with `{QMP_OPTION}` (with your path)",
            qmp.display()
        )));
    }
    let mut cfg = LegacyConfig::new(qmp);
    cfg.writable = false;
    if let Some(t) = timeout {
        cfg.timeout = t;
    }
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
            _ if matches!(e, vmi_core::Error::Timeout { .. }) => format!(
                " (each request may take {:?}: raise it with --{TIMEOUT_FLAG} SECS)",
                timeout.unwrap_or(vmi_legacy::qmp::DEFAULT_TIMEOUT)
            ),
            // A wrong socket (the two paths swapped) is already named in the error.
            _ if matches!(e, vmi_core::Error::InvalidArgument { .. }) => String::new(),
            // A stub held by another client: the error names it and what to do.
            _ if vmi_legacy::attach::stub_in_use(&e).is_some() => String::new(),
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
    if needs == Needs::DirectRam && matches!(vm.ram_access(), RamAccess::Qmp(_)) {
        let why: Vec<String> = vm
            .ram_fallbacks()
            .iter()
            .map(|(path, e)| format!("{path}: {e}"))
            .collect();
        return Err(Failure::from(format!(
            "guest RAM can be read only through QMP here, too slowly for this ({}): give \
             this process ptrace access to QEMU (same user; kernel.yama.ptrace_scope 0 or \
             CAP_SYS_PTRACE), or start QEMU with `{RAM_OPTION}`",
            why.join("; ")
        )));
    }
    Ok(vm)
}

/// Parses an address: hex, with or without `0x`/`0X` (`ffffffff81000000` as
/// `/proc/kallsyms` prints it, or `0xffffffff81000000`). Never decimal, so that one
/// string cannot mean two addresses.
pub(crate) fn parse_address(s: &str) -> Option<u64> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    // from_str_radix takes a leading sign; an address has none.
    if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

/// Positional arguments, `--name value` options and `--name` switches.
pub(crate) struct Args {
    pub(crate) positional: Vec<String>,
    pub(crate) options: Vec<(String, String)>,
    pub(crate) switches: Vec<String>,
}

impl Args {
    /// Parses the process arguments: `flags` (and `--qmp-timeout`, which every example
    /// takes) take a value, `switches` do not.
    /// `-h`/`--help` anywhere asks for `usage_text` (a [`Outcome::Help`] failure); an
    /// unknown option is a usage error.
    pub(crate) fn parse(
        flags: &[&str],
        switches: &[&str],
        usage_text: &str,
    ) -> Result<Self, Failure> {
        let mut parsed = Self {
            positional: Vec::new(),
            options: Vec::new(),
            switches: Vec::new(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "-h" || a == "--help" {
                return Err(Failure {
                    message: usage_text.to_owned(),
                    outcome: Outcome::Help,
                });
            }
            let Some(name) = a.strip_prefix("--") else {
                parsed.positional.push(a);
                continue;
            };
            if switches.contains(&name) {
                parsed.switches.push(name.to_owned());
            } else if flags.contains(&name) || name == TIMEOUT_FLAG {
                let v = it
                    .next()
                    .ok_or_else(|| usage(&format!("--{name} needs a value\n{usage_text}")))?;
                parsed.options.push((name.to_owned(), v));
            } else {
                return Err(usage(&format!("unknown option --{name}\n{usage_text}")));
            }
        }
        Ok(parsed)
    }

    /// Whether switch `--name` was given.
    pub(crate) fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    pub(crate) fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `--qmp-timeout SECS`, if given.
    pub(crate) fn timeout(&self) -> Result<Option<Duration>, Failure> {
        self.option(TIMEOUT_FLAG)
            .map(|s| {
                s.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v > 0.0 && *v < 1e9)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| usage(&format!("--{TIMEOUT_FLAG} takes seconds, not {s:?}")))
            })
            .transpose()
    }

    pub(crate) fn path(&self, i: usize) -> Option<PathBuf> {
        self.positional.get(i).map(PathBuf::from)
    }
}
