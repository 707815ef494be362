//! Volatility 3 on memory dumps, for tests that compare vmi-linux with it.
//!
//! `cargo xtask` installs a pinned Volatility 3 from PyPI into a virtual environment and
//! sets [`ENV_VOLATILITY`] to its `vol` program (or [`ENV_VOLATILITY_ERROR`] to why it
//! could not). A run never goes online (`--offline`), sees only the ISF it is given, and
//! not the user's `~/.cache/volatility3`:
//!
//! ```text
//! XDG_CACHE_HOME=<cache> vol --offline --quiet --renderer json --log <scratch>/vol.log \
//!     --symbol-dirs <scratch>/symbols --file <dump> <plugin> <extra…>
//! ```
//!
//! with the ISF file linked as `<scratch>/symbols/linux/<its file name>` (a scratch
//! directory per run) and `<cache>` shared by the runs with the same ISF file, one at a
//! time (it remembers which ISFs passed schema validation, the slowest step).
//!
//! How Volatility uses that ISF: it has no option naming one ISF file for a Linux
//! kernel. It indexes every `*.json`, `*.json.xz`, `*.json.gz` and `*.json.bz2` below the
//! symbol directories, keyed by the bytes base64-encoded in
//! `symbols.linux_banner.constant_data`; its Linux stackers scan the dump for those
//! exact bytes (the kernel's `linux_banner`, `Linux version …`, with or without the
//! trailing `\n\0`), and the ISF whose banner is found describes the kernel. So an ISF is
//! used only when its banner matches the dump's. It is then validated against
//! Volatility's JSON schema for its `metadata.format` (`6.x.y`; with `jsonschema`
//! installed, as here, an invalid ISF is rejected: e.g. `metadata.linux.symbols[].kind`
//! and `types[].kind` must be `dwarf`, `symtab` or `system-map`), must define the types
//! Volatility's Linux symbol table requires (`task_struct`, `file`, `list_head`,
//! `mm_struct`, `dentry`, `inode`, `net`, `sock`, … — a kernel's full BTF has them),
//! and the stacker finds the page tables and KASLR shifts from the guest's VMCOREINFO
//! note or else from `init_task` (scanning for `swapper/0` at `task_struct.comm`),
//! `init_files`, `init_mm` and `init_top_pgt`.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Environment variable naming Volatility 3's `vol` program.
pub const ENV_VOLATILITY: &str = "VMI_VOLATILITY";
/// Environment variable carrying why `cargo xtask` could not provision Volatility 3.
pub const ENV_VOLATILITY_ERROR: &str = "VMI_VOLATILITY_ERROR";

/// The file name endings Volatility accepts for ISF files.
const ISF_EXTENSIONS: [&str; 4] = [".json", ".json.xz", ".json.gz", ".json.bz2"];

/// One row of a plugin's output: column name to value (`-r json`; the rows of tree
/// output are flattened, parents before their children).
pub type Row = serde_json::Map<String, Value>;

/// A plugin's rows and how long Volatility took to produce them.
#[derive(Clone, Debug)]
pub struct PluginRun {
    /// The rows, in Volatility's order.
    pub rows: Vec<Row>,
    /// Wall-clock time of the `vol` process.
    pub elapsed: Duration,
}

/// A task as `linux.pslist` reports it (thread-group leaders unless `--threads`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolTask {
    /// Virtual address of the `task_struct` (canonical: Volatility prints it masked to
    /// 48 bits, this is sign-extended back).
    pub offset: u64,
    /// Process id as user space sees it (`task_struct.tgid`).
    pub pid: u64,
    /// Thread id (`task_struct.pid`).
    pub tid: u64,
    /// Parent's process id.
    pub ppid: u64,
    /// `task_struct.comm`.
    pub comm: String,
}

/// A loaded module as `linux.lsmod` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolModule {
    /// Virtual address of the `struct module` (canonical, as [`VolTask::offset`]).
    pub offset: u64,
    /// The module's name.
    pub name: String,
    /// Size of its code (`Code Size`).
    pub size: u64,
}

/// A Linux banner found by `banners.Banners` (needs no ISF).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolBanner {
    /// Offset in Volatility's base layer (for an ELF dump: the guest-physical address).
    pub offset: u64,
    /// The banner text, `Linux version …`.
    pub banner: String,
}

/// The Volatility 3 installation the tests use.
#[derive(Clone, Debug)]
pub struct Volatility {
    program: PathBuf,
}

impl Volatility {
    /// Uses the `vol` program named by [`ENV_VOLATILITY`]; the error explains what is
    /// missing (including [`ENV_VOLATILITY_ERROR`], xtask's reason, when set).
    pub fn from_env() -> Result<Self, String> {
        match std::env::var_os(ENV_VOLATILITY) {
            Some(p) if !p.is_empty() => {
                let program = PathBuf::from(p);
                if program.is_file() {
                    Ok(Volatility { program })
                } else {
                    Err(format!(
                        "{ENV_VOLATILITY}={} does not name a file: run the tests through \
                         `cargo xtask test` (or `eval \"$(cargo xtask env)\"`)",
                        program.display()
                    ))
                }
            }
            _ => match std::env::var(ENV_VOLATILITY_ERROR) {
                Ok(why) if !why.is_empty() => Err(why),
                _ => Err(format!(
                    "{ENV_VOLATILITY} is not set: run the tests through `cargo xtask test` \
                     (or `eval \"$(cargo xtask env)\"`), which installs Volatility 3"
                )),
            },
        }
    }

    /// Like [`Volatility::from_env`], but panics with the explanation: tests that need
    /// Volatility must fail, not silently pass, when it is missing.
    #[track_caller]
    pub fn from_env_or_panic() -> Self {
        match Self::from_env() {
            Ok(v) => v,
            Err(e) => panic!("Volatility 3 fixture: {e}"),
        }
    }

    /// Uses `program` as Volatility's `vol`.
    pub fn with_program(program: impl Into<PathBuf>) -> Self {
        Volatility {
            program: program.into(),
        }
    }

    /// The `vol` program.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// Runs `plugin` (e.g. `linux.pslist.PsList`, or a unique prefix such as
    /// `linux.pslist`) on `dump` (a raw or ELF memory dump, e.g. QEMU's
    /// `dump-guest-memory`), with `isf` as the only Linux symbol table it may use, and
    /// `extra` arguments after the plugin name.
    ///
    /// Fails when Volatility exits unsuccessfully (the error carries its stderr, e.g.
    /// `Unsatisfied requirement plugins.PsList.kernel.symbol_table_name` when no ISF
    /// matches the dump's banner) or prints no JSON.
    pub fn run(
        &self,
        dump: &Path,
        isf: Option<&Path>,
        plugin: &str,
        extra: &[&str],
    ) -> io::Result<PluginRun> {
        self.invoke(Some(dump), isf, plugin, extra)
    }

    /// Checks `isf` against Volatility's JSON schema for its `metadata.format`, as
    /// Volatility does before using an ISF (`isfinfo.IsfInfo --isf <url> --validate
    /// --live`; needs no dump). The error carries the schema violation. A valid ISF is
    /// remembered, so later runs with it skip the check (the slowest step of a run).
    pub fn validate_isf(&self, isf: &Path) -> io::Result<Duration> {
        let url = file_url(&std::path::absolute(isf)?);
        let run = self.invoke(
            None,
            Some(isf),
            "isfinfo.IsfInfo",
            &["--isf", &url, "--validate", "--live"],
        )?;
        match run.rows.as_slice() {
            [row] if row.get("Valid").and_then(Value::as_str) == Some("True") => Ok(run.elapsed),
            rows => Err(invalid(format!(
                "Volatility does not call {} valid: {rows:?}",
                isf.display()
            ))),
        }
    }

    fn invoke(
        &self,
        dump: Option<&Path>,
        isf: Option<&Path>,
        plugin: &str,
        extra: &[&str],
    ) -> io::Result<PluginRun> {
        let scratch = Scratch::new()?;
        let symbols = scratch.path.join("symbols");
        fs::create_dir_all(symbols.join("linux"))?;
        if let Some(isf) = isf {
            link_isf(isf, &symbols.join("linux"))?;
        }
        let (cache, _lock) = SharedCache::lock(isf)?;
        let log = scratch.path.join("vol.log");
        let mut cmd = Command::new(&self.program);
        cmd.env("XDG_CACHE_HOME", &cache)
            .args(["--offline", "--quiet", "--renderer", "json", "--log"])
            .arg(&log)
            .arg("--symbol-dirs")
            .arg(&symbols);
        let on = match dump {
            Some(dump) => {
                let dump = std::path::absolute(dump)?;
                cmd.arg("--file").arg(&dump);
                format!(" on {}", dump.display())
            }
            None => String::new(),
        };
        cmd.arg(plugin)
            .args(extra)
            .current_dir(&scratch.path)
            .stdin(Stdio::null());
        let start = Instant::now();
        let out = cmd.output().map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {}: {e}", self.program.display()),
            )
        })?;
        let elapsed = start.elapsed();
        let stderr = excerpt(&String::from_utf8_lossy(&out.stderr), |_| true);
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "`vol {plugin}`{on} failed ({}):\n{stderr}{}",
                out.status,
                log_excerpt(&log)
            )));
        }
        let json: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
            invalid(format!(
                "`vol {plugin}`{on} printed no JSON ({e}); stderr:\n{stderr}"
            ))
        })?;
        Ok(PluginRun {
            rows: flatten(json)?,
            elapsed,
        })
    }

    /// `linux.pslist` with `isf`.
    pub fn pslist(&self, dump: &Path, isf: &Path) -> io::Result<(Vec<VolTask>, Duration)> {
        let run = self.run(dump, Some(isf), "linux.pslist.PsList", &[])?;
        let tasks = run
            .rows
            .iter()
            .map(|r| {
                Ok(VolTask {
                    offset: kernel_address(uint(r, "OFFSET (V)")?),
                    pid: uint(r, "PID")?,
                    tid: uint(r, "TID")?,
                    ppid: uint(r, "PPID")?,
                    comm: text(r, "COMM")?,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok((tasks, run.elapsed))
    }

    /// `linux.lsmod` with `isf`.
    pub fn lsmod(&self, dump: &Path, isf: &Path) -> io::Result<(Vec<VolModule>, Duration)> {
        let run = self.run(dump, Some(isf), "linux.lsmod.Lsmod", &[])?;
        let modules = run
            .rows
            .iter()
            .map(|r| {
                Ok(VolModule {
                    offset: kernel_address(uint(r, "Offset")?),
                    name: text(r, "Module Name")?,
                    size: uint(r, "Code Size")?,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok((modules, run.elapsed))
    }

    /// `banners.Banners`: the Linux banners in `dump` (needs no ISF).
    pub fn banners(&self, dump: &Path) -> io::Result<(Vec<VolBanner>, Duration)> {
        let run = self.run(dump, None, "banners.Banners", &[])?;
        let banners = run
            .rows
            .iter()
            .map(|r| {
                Ok(VolBanner {
                    offset: uint(r, "Offset")?,
                    banner: text(r, "Banner")?,
                })
            })
            .collect::<io::Result<_>>()?;
        Ok((banners, run.elapsed))
    }
}

/// [`Volatility::run`] with the installation from the environment and an ISF.
pub fn run_plugin(dump: &Path, isf: &Path, plugin: &str, extra: &[&str]) -> io::Result<PluginRun> {
    from_env()?.run(dump, Some(isf), plugin, extra)
}

/// [`Volatility::pslist`] with the installation from the environment.
pub fn pslist(dump: &Path, isf: &Path) -> io::Result<(Vec<VolTask>, Duration)> {
    from_env()?.pslist(dump, isf)
}

/// [`Volatility::lsmod`] with the installation from the environment.
pub fn lsmod(dump: &Path, isf: &Path) -> io::Result<(Vec<VolModule>, Duration)> {
    from_env()?.lsmod(dump, isf)
}

/// [`Volatility::banners`] with the installation from the environment.
pub fn banners(dump: &Path) -> io::Result<(Vec<VolBanner>, Duration)> {
    from_env()?.banners(dump)
}

fn from_env() -> io::Result<Volatility> {
    Volatility::from_env().map_err(|e| io::Error::new(io::ErrorKind::NotFound, e))
}

/// Links `isf` into `dir` under its own file name (which must end as Volatility expects).
fn link_isf(isf: &Path, dir: &Path) -> io::Result<()> {
    let isf = std::path::absolute(isf)?;
    let name = isf
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| ISF_EXTENSIONS.iter().any(|e| n.ends_with(e)))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{}: Volatility reads ISF files named *{}",
                    isf.display(),
                    ISF_EXTENSIONS.join(", *")
                ),
            )
        })?;
    if !isf.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("ISF {} is not a file", isf.display()),
        ));
    }
    std::os::unix::fs::symlink(&isf, dir.join(name))
}

/// The rows of `-r json` output: a list of nodes whose `__children` hold their subtrees.
fn flatten(json: Value) -> io::Result<Vec<Row>> {
    let Value::Array(top) = json else {
        return Err(invalid("`-r json` output is not a list".into()));
    };
    let mut rows = Vec::new();
    // Depth-first, parents first; the stack holds the siblings still to visit, reversed.
    let mut stack: Vec<Value> = top.into_iter().rev().collect();
    while let Some(node) = stack.pop() {
        let Value::Object(mut row) = node else {
            return Err(invalid(format!("`-r json` row is not an object: {node}")));
        };
        if let Some(Value::Array(children)) = row.remove("__children") {
            stack.extend(children.into_iter().rev());
        }
        rows.push(row);
    }
    Ok(rows)
}

/// What in Volatility's debug log explains a failure: which banners it found, and
/// why stacking a layer on them failed (only logged at debug levels).
const LOG_CLUES: [&str; 5] = [
    "Identified banner",
    "Exception during stacking",
    "Error:",
    "does not pass",
    "Unsatisfied requirement",
];

/// Characters kept of one log line (a schema error quotes whole ISF sections).
const LOG_LINE_MAX: usize = 400;

/// Lines kept of Volatility's stderr or log in an error.
const LOG_LINES_MAX: usize = 40;

/// The lines of `text` that `keep` selects, at most [`LOG_LINES_MAX`] (the last ones,
/// where Python's tracebacks end), each cut at [`LOG_LINE_MAX`] characters.
fn excerpt(text: &str, keep: impl Fn(&str) -> bool) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| keep(l))
        .map(|l| match l.char_indices().nth(LOG_LINE_MAX) {
            Some((cut, _)) => &l[..cut],
            None => l,
        })
        .collect();
    lines[lines.len().saturating_sub(LOG_LINES_MAX)..].join("\n")
}

/// The lines of the `--log` file that match [`LOG_CLUES`], or nothing.
fn log_excerpt(log: &Path) -> String {
    let Ok(text) = fs::read_to_string(log) else {
        return String::new();
    };
    let clues = excerpt(&text, |l| {
        LOG_CLUES.iter().any(|c| l.contains(c)) && !l.contains("ModuleNotFoundError")
    });
    if clues.is_empty() {
        return String::new();
    }
    format!("\nfrom Volatility's log:\n{clues}")
}

/// `file://` URL of an absolute path, percent-encoding all but unreserved bytes and `/`.
fn file_url(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut url = String::from("file://");
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            url.push(char::from(b));
        } else {
            url.push_str(&format!("%{b:02X}"));
        }
    }
    url
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn uint(row: &Row, column: &str) -> io::Result<u64> {
    row.get(column).and_then(Value::as_u64).ok_or_else(|| {
        invalid(format!(
            "column {column:?} is not an unsigned integer in {row:?}"
        ))
    })
}

/// The canonical form of an x86-64 virtual address that Volatility printed masked to
/// the 48 bits its page tables translate (`0xffff8880…` comes out as `0x8880…`).
fn kernel_address(masked: u64) -> u64 {
    if masked < 1 << 48 && masked & 1 << 47 != 0 {
        masked | 0xffff_0000_0000_0000
    } else {
        masked
    }
}

fn text(row: &Row, column: &str) -> io::Result<String> {
    row.get(column)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| invalid(format!("column {column:?} is not a string in {row:?}")))
}

/// Volatility's cache directory (`XDG_CACHE_HOME`) for the runs with one ISF file (by
/// path, size and modification time), locked for one run at a time.
///
/// Shared because the cache remembers which ISF files passed schema validation, which
/// costs ~18 s for a 6 MiB ISF on every run otherwise (measured: `linux.pslist` 19 s
/// uncached, ~2 s cached); locked because Volatility's cache files are not safe for
/// concurrent writers.
struct SharedCache;

impl SharedCache {
    fn lock(isf: Option<&Path>) -> io::Result<(PathBuf, fs::File)> {
        let mut key = std::collections::hash_map::DefaultHasher::new();
        if let Some(isf) = isf {
            let meta = fs::metadata(isf)?;
            (std::path::absolute(isf)?, meta.len(), meta.modified()?).hash(&mut key);
        }
        let dir = std::env::temp_dir()
            .join("vmi-volatility-cache")
            .join(format!("{:016x}", key.finish()));
        fs::create_dir_all(&dir)?;
        let lock = fs::File::create(dir.join("lock"))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)?;
        Ok((dir, lock))
    }
}

/// A scratch directory for one run, removed when dropped.
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new() -> io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("vmi-volatility-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)?;
        Ok(Scratch { path })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}
