//! What `/proc` says about the QEMU process: its memory mappings, open descriptors and
//! thread group.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use vmi_core::{Error, Result};

const ORIGIN: &str = "/proc";

/// One line of `/proc/<pid>/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Readable.
    pub read: bool,
    /// Writable.
    pub write: bool,
    /// Executable.
    pub exec: bool,
    /// `MAP_SHARED` (`s`) rather than private (`p`).
    pub shared: bool,
    /// Offset of `start` in the mapped file.
    pub offset: u64,
    /// Device of the mapped file (`major`, `minor`).
    pub dev: (u32, u32),
    /// Inode of the mapped file (0 for anonymous memory).
    pub inode: u64,
    /// The path column: a file path, `/memfd:<name> (deleted)`, `[heap]`, … or empty.
    pub path: String,
}

impl MapsEntry {
    /// Whether `[addr, addr+len)` lies inside this mapping.
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.start && addr.checked_add(len).is_some_and(|e| e <= self.end)
    }
}

fn bad(line: &str) -> Error {
    Error::malformed(
        ORIGIN,
        format!(
            "bad maps line {:?}",
            line.chars().take(80).collect::<String>()
        ),
    )
}

fn hex(s: &str, line: &str) -> Result<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad(line));
    }
    u64::from_str_radix(s, 16).map_err(|_| bad(line))
}

/// Parses the text of `/proc/<pid>/maps`.
pub fn parse_maps(text: &str) -> Result<Vec<MapsEntry>> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        // start-end perms offset dev inode [path]
        let mut rest = line;
        let mut field = || -> Result<&str> {
            let t = rest.trim_start();
            let end = t.find(' ').unwrap_or(t.len());
            let (f, r) = t.split_at(end);
            rest = r;
            if f.is_empty() {
                Err(bad(line))
            } else {
                Ok(f)
            }
        };
        let range = field()?;
        let perms = field()?;
        let offset = field()?;
        let dev = field()?;
        let inode = field()?;
        let path = rest.trim_start().to_owned();
        let (start, end) = range.split_once('-').ok_or_else(|| bad(line))?;
        let (start, end) = (hex(start, line)?, hex(end, line)?);
        if end < start {
            return Err(bad(line));
        }
        let p = perms.as_bytes();
        if p.len() != 4 {
            return Err(bad(line));
        }
        let (major, minor) = dev.split_once(':').ok_or_else(|| bad(line))?;
        let dev = (
            u32::try_from(hex(major, line)?).map_err(|_| bad(line))?,
            u32::try_from(hex(minor, line)?).map_err(|_| bad(line))?,
        );
        out.push(MapsEntry {
            start,
            end,
            read: p[0] == b'r',
            write: p[1] == b'w',
            exec: p[2] == b'x',
            shared: p[3] == b's',
            offset: hex(offset, line)?,
            dev,
            inode: inode.parse().map_err(|_| bad(line))?,
            path,
        });
    }
    Ok(out)
}

/// Reads and parses `/proc/<pid>/maps`.
pub fn read_maps(pid: libc::pid_t) -> Result<Vec<MapsEntry>> {
    let path = format!("/proc/{pid}/maps");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    parse_maps(&text)
}

/// The mapping of `pid` that contains `[addr, addr+len)`.
pub fn mapping_containing(maps: &[MapsEntry], addr: u64, len: u64) -> Option<&MapsEntry> {
    maps.iter().find(|m| m.contains(addr, len))
}

/// The thread group (process) id of thread `tid`, from `/proc/<tid>/status`.
pub fn tgid_of(tid: libc::pid_t) -> Result<libc::pid_t> {
    let path = format!("/proc/{tid}/status");
    let text = fs::read_to_string(&path).map_err(|e| Error::io(format!("reading {path}"), e))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Error::malformed(ORIGIN, format!("no Tgid in {path}")))
}

/// An open descriptor of another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcFd {
    /// `/proc/<pid>/fd/<n>`: opening it opens the same file (memfds included).
    pub path: PathBuf,
    /// Where the link points (`/memfd:name (deleted)`, a file path, `socket:[…]`, …).
    pub target: String,
    /// The file's size.
    pub size: u64,
    /// The file's device number.
    pub dev: u64,
    /// The file's inode.
    pub inode: u64,
}

/// The regular files (memfds and deleted files included) that `pid` holds open.
/// Descriptors that vanish or cannot be inspected meanwhile are skipped.
pub fn regular_fds(pid: libc::pid_t) -> Result<Vec<ProcFd>> {
    let dir = format!("/proc/{pid}/fd");
    let entries = fs::read_dir(&dir).map_err(|e| Error::io(format!("listing {dir}"), e))?;
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(target) = fs::read_link(&path) else {
            continue;
        };
        let Ok(meta) = fs::metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        out.push(ProcFd {
            path,
            target: target.to_string_lossy().into_owned(),
            size: meta.len(),
            dev: meta.dev(),
            inode: meta.ino(),
        });
    }
    Ok(out)
}

/// The device number as `/proc/<pid>/maps` prints it (major, minor).
pub fn dev_major_minor(dev: u64) -> (u32, u32) {
    (libc::major(dev), libc::minor(dev))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55c0705f3000-55c0709fa000 r--p 00000000 fe:00 10199046                   /usr/bin/qemu-system-x86_64
7fdd33fff000-7fdd37fff000 rw-s 00000000 00:01 27                         /memfd:memory-backend-memfd (deleted)
7fdd37fff000-7fdd38000000 ---p 00000000 00:00 0 
7fdd38000000-7fdd77fff000 rwxp 00000000 00:00 0
7fff1c8e1000-7fff1c902000 rw-p 00000000 00:00 0                          [stack]
";

    #[test]
    fn parses_qemu_maps() {
        let m = parse_maps(MAPS).unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].start, 0x7fdd_33ff_f000);
        assert_eq!(m[1].end, 0x7fdd_37ff_f000);
        assert!(m[1].shared && m[1].read && m[1].write && !m[1].exec);
        assert_eq!(m[1].dev, (0, 1));
        assert_eq!(m[1].inode, 27);
        assert_eq!(m[1].path, "/memfd:memory-backend-memfd (deleted)");
        assert_eq!(m[2].path, "");
        assert_eq!(m[3].path, "");
        assert!(m[3].exec && !m[3].shared);
        assert_eq!(m[4].path, "[stack]");
        assert_eq!(
            mapping_containing(&m, 0x7fdd_33ff_f000, 64 << 20)
                .unwrap()
                .inode,
            27
        );
        assert!(mapping_containing(&m, 0x7fdd_33ff_f000, (64 << 20) + 1).is_none());
    }

    #[test]
    fn rejects_bad_maps() {
        for bad in [
            "zz-10 rw-p 0 00:00 0",
            "10-0 rw-p 0 00:00 0",
            "0-10 rw-p 0 0000 0",
            "0-10 rw 0 00:00 0",
            "0-10 rw-p",
            "0-10 rw-p 0 00:00 x",
        ] {
            assert!(parse_maps(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn own_process() {
        let pid = std::process::id() as libc::pid_t;
        assert_eq!(tgid_of(pid).unwrap(), pid);
        let maps = read_maps(pid).unwrap();
        let here = parses_qemu_maps as fn() as usize as u64;
        assert!(mapping_containing(&maps, here, 1).unwrap().exec);
        let f = std::fs::File::open("/proc/self/exe").unwrap();
        let fds = regular_fds(pid).unwrap();
        assert!(!fds.is_empty());
        drop(f);
    }
}
