//! Small helpers: errors, running commands, workspace paths.

use std::error::Error;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The error type of every xtask step: a message for the user.
pub(crate) type Result<T = (), E = Box<dyn Error>> = std::result::Result<T, E>;

/// Returns early with a formatted error message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(format!($($arg)*).into())
    };
}
pub(crate) use bail;

/// The workspace root (the parent of `xtask/`).
pub(crate) fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Cargo's target directory (`CARGO_TARGET_DIR` or `<root>/target`).
pub(crate) fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// `program arg…` as a user would type it.
pub(crate) fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            parts.push(format!("{}={}", k.to_string_lossy(), quote(v)));
        }
    }
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Runs `cmd` with inherited stdio, echoing it first; fails naming the command.
pub(crate) fn run(cmd: &mut Command) -> Result {
    eprintln!("$ {}", display(cmd));
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run `{}`: {e}", display(cmd)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(())
}

/// Like [`run`], but the command's stdout goes to our stderr, keeping our stdout clean
/// (`cargo xtask env` prints shell code there).
pub(crate) fn run_to_stderr(cmd: &mut Command) -> Result {
    run(cmd.stdout(std::io::stderr()))
}

/// Runs `cmd` and returns its stdout; on failure the error names the command and carries
/// its stderr.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", display(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}):\n{}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether `program` is found on `PATH` (or is an existing path).
pub(crate) fn find_in_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = PathBuf::from(program);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Whether this process runs as root (effective uid 0).
pub(crate) fn is_root() -> bool {
    // /proc/self/status: "Uid:\treal\teffective\tsaved\tfs".
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// Writes `data` to `path` unless it already holds exactly that (keeps mtimes stable);
/// writes through a temporary file and a rename so readers never see half a file.
pub(crate) fn write_if_changed(path: &Path, data: &[u8]) -> Result<bool> {
    if std::fs::read(path).is_ok_and(|old| old == data) {
        return Ok(false);
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, data).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))?;
    Ok(true)
}

/// Makes sure every program in `tools` is on `PATH`, installing Debian's `package` with
/// apt-get (as root) when one is missing; `why` says what needs them, for the error.
pub(crate) fn ensure_tools(tools: &[&str], package: &str, why: &str) -> Result {
    if tools.iter().all(|t| find_in_path(t).is_some()) {
        return Ok(());
    }
    if !is_root() || find_in_path("apt-get").is_none() {
        bail!(
            "{why} needs {}: install it, e.g. on Debian/Ubuntu `sudo apt-get install \
             {package}`",
            tools.join(", ")
        );
    }
    eprintln!(
        "xtask: {} missing; installing {package} with apt-get",
        tools.join(", ")
    );
    apt_install(package)?;
    match tools.iter().find(|t| find_in_path(t).is_none()) {
        Some(t) => bail!("`apt-get install {package}` succeeded but `{t}` is still not on PATH"),
        None => Ok(()),
    }
}

/// `apt-get install package` (as root, without recommends); runs `apt-get update` first
/// if the install fails (fresh containers have no package lists).
pub(crate) fn apt_install(package: &str) -> Result {
    if !is_root() || find_in_path("apt-get").is_none() {
        bail!("{package} is needed: install it, e.g. `sudo apt-get install {package}`");
    }
    let install = || {
        run_to_stderr(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["install", "-y", "-q", "--no-install-recommends", package]),
        )
    };
    if install().is_err() {
        run_to_stderr(Command::new("apt-get").args(["update", "-q"]))?;
        install()?;
    }
    Ok(())
}

/// Runs `cmd` with `input` on its stdin and returns its stdout (stderr is inherited); fails
/// naming the command if it cannot start or exits unsuccessfully.
pub(crate) fn filter(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    let (status, out) = filter_any(cmd, input)?;
    if !status.success() {
        bail!("`{}` failed ({status})", display(cmd));
    }
    Ok(out)
}

/// Like [`filter`], but returns the output whatever the exit status (with the status).
pub(crate) fn filter_any(
    cmd: &mut Command,
    input: &[u8],
) -> Result<(std::process::ExitStatus, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", display(cmd)))?;
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let mut stdout = child.stdout.take().ok_or("no stdout pipe")?;
    // Feed stdin from a second thread: the tool may fill its stdout pipe before it has
    // read all of its input.
    let out = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(input));
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out);
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("panic")));
        read.map(|_| out).and_then(|out| {
            // A tool that stops reading once it has decoded its stream is fine.
            match written {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e),
                _ => Ok(out),
            }
        })
    });
    let status = child
        .wait()
        .map_err(|e| format!("waiting for `{}`: {e}", display(cmd)))?;
    let out = out.map_err(|e| format!("piping through `{}`: {e}", display(cmd)))?;
    Ok((status, out))
}
