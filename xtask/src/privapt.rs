//! A private apt state for fetching other Debian releases' packages.
//!
//! The kernel matrix needs kernels from releases the host does not use (bullseye, trixie,
//! sid). Their package lists live in a directory of their own, named to apt with `-o`
//! options on every call (`Dir::Etc::sourcelist`, `Dir::Etc::sourceparts` (an empty dir),
//! `Dir::State::Lists`, `Dir::State::status`, `Dir::Cache`), so the host's sources, lists
//! and dpkg state are neither read for packages nor changed; the host's apt configuration
//! (proxies, mirrors) still applies (so do its `Acquire` settings; translations and
//! AppStream metadata are turned off here). Packages are only downloaded (`apt-get download`),
//! never installed, which needs no root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::util::{apt_install, bail, ensure_tools, is_root, output, run_to_stderr, Result};

/// The Debian archive keyring the sources are signed with.
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// A directory holding `sources.list`, `lists/`, `cache/` and an empty dpkg `status`.
pub(crate) struct PrivateApt {
    root: PathBuf,
}

/// A package pinned to a version (`name=version` for apt).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pinned {
    pub(crate) name: String,
    pub(crate) version: String,
}

impl std::fmt::Display for Pinned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.version)
    }
}

impl PrivateApt {
    /// Sets up `root` with `sources` (lines `deb <uri> <suite> <components>`, each signed
    /// by Debian's archive keyring).
    pub(crate) fn new(root: &Path, sources: &[&str]) -> Result<Self> {
        ensure_tools(
            &["apt-get", "apt-cache"],
            "apt",
            "fetching the kernel matrix",
        )?;
        ensure_tools(&["dpkg"], "dpkg", "fetching the kernel matrix")?;
        if !Path::new(KEYRING).is_file() {
            apt_install("debian-archive-keyring")?;
            if !Path::new(KEYRING).is_file() {
                bail!(
                    "{KEYRING} is missing: install debian-archive-keyring (e.g. `sudo apt-get \
                     install debian-archive-keyring`)"
                );
            }
        }
        for dir in ["lists/partial", "cache/archives/partial", "sources.list.d"] {
            let d = root.join(dir);
            std::fs::create_dir_all(&d).map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let list: String = sources
            .iter()
            .map(|s| {
                let s = s.strip_prefix("deb ").unwrap_or(s);
                format!("deb [signed-by={KEYRING}] {s}\n")
            })
            .collect();
        crate::util::write_if_changed(&root.join("sources.list"), list.as_bytes())?;
        let status = root.join("status");
        if !status.is_file() {
            std::fs::write(&status, b"").map_err(|e| format!("{}: {e}", status.display()))?;
        }
        Ok(PrivateApt {
            root: root.to_owned(),
        })
    }

    /// `program` with the options that point apt at this state.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let dir = |p: &str| self.root.join(p).into_os_string().into_string();
        let opts = [
            ("Dir::Etc::sourcelist", dir("sources.list")),
            // An empty directory of our own (`-` makes apt warn about `/etc/apt/-/`).
            ("Dir::Etc::sourceparts", dir("sources.list.d")),
            ("Dir::State::Lists", dir("lists")),
            ("Dir::State::status", dir("status")),
            ("Dir::Cache", dir("cache")),
            // Keep the binary cache between calls (Debian's Docker images turn it off):
            // building it from the lists takes ~3 s per call. See `drop_cache`.
            ("Dir::Cache::pkgcache", Ok("pkgcache.bin".into())),
            // Only the Packages indexes: no translations, no AppStream metadata.
            ("Acquire::Languages", Ok("none".into())),
            (
                "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled",
                Ok("false".into()),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled",
                Ok("false".into()),
            ),
            (
                "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled",
                Ok("false".into()),
            ),
            (
                "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled",
                Ok("false".into()),
            ),
        ];
        for (key, value) in opts {
            // Non-UTF-8 paths are passed lossily; apt would not cope with them anyway.
            let value = value.unwrap_or_else(|p| p.to_string_lossy().into_owned());
            cmd.arg("-o").arg(format!("{key}={value}"));
        }
        if is_root() {
            // apt would otherwise download as `_apt`, which may not write here.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd
    }

    /// `apt-get update` of this state's lists.
    pub(crate) fn update(&self) -> Result {
        run_to_stderr(self.command("apt-get").args(["update", "-q"]))?;
        let stamp = self.root.join("updated");
        std::fs::write(&stamp, b"").map_err(|e| format!("{}: {e}", stamp.display()).into())
    }

    /// Deletes apt's binary cache (~90 MB; rebuilt from the lists when next needed).
    pub(crate) fn drop_cache(&self) {
        let _ = std::fs::remove_file(self.root.join("cache/pkgcache.bin"));
    }

    /// How long ago the lists were updated (`None`: never).
    pub(crate) fn lists_age(&self) -> Option<Duration> {
        let modified = std::fs::metadata(self.root.join("updated"))
            .and_then(|m| m.modified())
            .ok()?;
        Some(
            SystemTime::now()
                .duration_since(modified)
                .unwrap_or_default(),
        )
    }

    /// The newest version of `package` in any of the archive suites `origins` (e.g.
    /// `bullseye` and `bullseye-security`), from `apt-cache madison`.
    pub(crate) fn newest_version(&self, package: &str, origins: &[&str]) -> Result<String> {
        let out = output(self.command("apt-cache").args(["madison", package]))?;
        let mut best: Option<String> = None;
        // "pkg | 5.10.262-1 | http://deb.debian.org/debian-security bullseye-security/main amd64 Packages"
        for line in out.lines() {
            let fields: Vec<&str> = line.split('|').map(str::trim).collect();
            let [name, version, source] = fields[..] else {
                continue;
            };
            let suite = source
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.split('/').next())
                .unwrap_or_default();
            if name != package || !origins.contains(&suite) {
                continue;
            }
            if best.as_deref().is_none_or(|b| version_newer(version, b)) {
                best = Some(version.to_owned());
            }
        }
        best.ok_or_else(|| {
            format!("`apt-cache madison {package}` lists no version from {origins:?}:\n{out}")
                .into()
        })
    }

    /// The `Depends:` of `package` at `version`, as (name, pinned version if `(= v)`).
    pub(crate) fn depends(&self, package: &Pinned) -> Result<Vec<(String, Option<String>)>> {
        let out = output(
            self.command("apt-cache")
                .args(["show", &package.to_string()]),
        )?;
        let Some(line) = out
            .lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix("Depends:"))
        else {
            return Ok(Vec::new());
        };
        Ok(line
            .split(',')
            .filter_map(|dep| {
                // "a (= 1.2) | b": the first alternative.
                let dep = dep.split('|').next()?.trim();
                let (name, rest) = dep.split_once(' ').unwrap_or((dep, ""));
                let pinned = rest
                    .trim()
                    .strip_prefix("(=")
                    .and_then(|v| v.strip_suffix(')'))
                    .map(|v| v.trim().to_owned());
                Some((name.to_owned(), pinned))
            })
            .collect())
    }

    /// Downloads `packages` into `dir` (those whose `.deb` is not there yet); returns the
    /// `.deb` paths in order.
    pub(crate) fn download(&self, dir: &Path, packages: &[Pinned]) -> Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let find = |p: &Pinned| deb_path(dir, p).filter(|d| d.is_file());
        let missing: Vec<String> = packages
            .iter()
            .filter(|p| find(p).is_none())
            .map(Pinned::to_string)
            .collect();
        if !missing.is_empty() {
            eprintln!("xtask: downloading {}", missing.join(" "));
            run_to_stderr(
                self.command("apt-get")
                    .current_dir(dir)
                    .args(["download", "-q"])
                    .args(&missing),
            )?;
        }
        packages
            .iter()
            .map(|p| {
                find(p).ok_or_else(|| {
                    format!("`apt-get download {p}` left no .deb in {}", dir.display()).into()
                })
            })
            .collect()
    }
}

/// Where `apt-get download` puts `package`: `<name>_<version with : as %3a>_<arch>.deb`.
fn deb_path(dir: &Path, package: &Pinned) -> Option<PathBuf> {
    let prefix = format!("{}_{}_", package.name, package.version.replace(':', "%3a"));
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
}

/// Whether Debian version `a` is newer than `b` (`dpkg --compare-versions`).
fn version_newer(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .is_ok_and(|s| s.success())
}
