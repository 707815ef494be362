//! Ground truth read from inside a running guest, to check what introspection finds.
//!
//! Everything goes through the console command channel ([`Guest::run_command`]). The
//! serial console carries about 0.5 MB/s under TCG here, and `/proc/kallsyms` alone is
//! 6–9 MB (150–190k lines, ~17 s), so [`fetch`] has the guest write a command's output to
//! a tmpfs file, compress it with busybox `gzip` and print it with `base64` (about a
//! quarter of the bytes; all of sid's kallsyms in ~4 s); the host decodes the base64,
//! and `gzip -d` checks the CRC and length of what arrived. Nothing is sampled: every
//! set is the guest's complete view at the time the command ran.
//!
//! The console also carries `/init`'s `VMI-TEST tick <n>` lines, which may land in the
//! middle of a base64 line (one `write` each, between two of `base64`'s): they are cut
//! out before decoding (base64 has no spaces, so they are unambiguous). A kernel
//! message on the console in the middle of the output makes the transfer fail its
//! check; [`fetch`] then runs the command once more.
//!
//! The sets are snapshots taken at slightly different times, and the channel's own
//! processes (`sh`, `cat`, `gzip`, `base64`) are part of the process list.

use std::io::{self, Read as _, Write as _};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::guest::Guest;

/// How long one ground-truth command may take (TCG, a few MB through the console).
const TIMEOUT: Duration = Duration::from_secs(180);

/// The most bytes a decompressed ground-truth set may have.
const MAX_BYTES: usize = 256 << 20;

/// `PF_KTHREAD` in `/proc/<pid>/stat`'s flags (`include/linux/sched.h`).
const PF_KTHREAD: u64 = 0x0020_0000;

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The complete stdout of shell command line `command` run in the guest (see the module
/// documentation for how it travels); fails with its stderr if it exits non-zero.
pub fn fetch(guest: &Guest, command: &str) -> io::Result<Vec<u8>> {
    match fetch_once(guest, command) {
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            fetch_once(guest, command).map_err(|again| invalid(format!("{e}; and again: {again}")))
        }
        result => result,
    }
}

fn fetch_once(guest: &Guest, command: &str) -> io::Result<Vec<u8>> {
    let line = format!(
        "f=/tmp/vmi-truth.$$; {{ {command} ; }} >$f 2>$f.err; rc=$?; if [ $rc -eq 0 ]; then \
         gzip -c $f | base64; else cat $f.err; fi; rm -f $f $f.err; exit $rc"
    );
    let out = guest.run_command(&line, TIMEOUT)?;
    if out.rc != 0 {
        return Err(io::Error::other(format!(
            "guest command `{command}` failed ({}): {}",
            out.rc,
            out.lines.join("\n")
        )));
    }
    let mut text = String::new();
    for l in &out.lines {
        text.push_str(&strip_ticks(l));
    }
    let gz = base64_decode(&text)?;
    gunzip(&gz)
}

/// `line` without any `VMI-TEST tick <n>` glued into it.
fn strip_ticks(line: &str) -> String {
    const TICK: &str = "VMI-TEST tick ";
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = rest.find(TICK) {
        out.push_str(&rest[..at]);
        let after = &rest[at + TICK.len()..];
        rest = after.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    out.push_str(rest);
    out
}

/// Decodes standard base64 (with `=` padding); any other character is an error.
fn base64_decode(text: &str) -> io::Result<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = text.trim_end_matches('=').as_bytes();
    if text.len() % 4 != 0 {
        return Err(invalid(format!(
            "base64 text of {} characters is not a multiple of 4 (output interrupted?)",
            text.len()
        )));
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3 + 3);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            let v = value(c).ok_or_else(|| {
                invalid(format!(
                    "unexpected {:?} in base64 output (a console message in it?)",
                    char::from(c)
                ))
            })?;
            acc |= v << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Ok(out)
}

/// Decompresses with the host's `gzip -d`, which checks the stream's CRC and length.
fn gunzip(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("running the host's gzip: {e}")))?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let out = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(data));
        let mut out = Vec::new();
        let read = (&mut stdout)
            .take(MAX_BYTES as u64 + 1)
            .read_to_end(&mut out);
        let _ = writer.join();
        read.map(|_| out)
    });
    let result = child.wait_with_output()?;
    let out = out?;
    if !result.status.success() {
        return Err(invalid(format!(
            "the console transfer is corrupt: gzip: {}",
            String::from_utf8_lossy(&result.stderr).trim()
        )));
    }
    if out.len() > MAX_BYTES {
        return Err(invalid(format!(
            "more than {MAX_BYTES} bytes of ground truth"
        )));
    }
    Ok(out)
}

fn fetch_text(guest: &Guest, command: &str) -> io::Result<String> {
    String::from_utf8(fetch(guest, command)?)
        .map_err(|e| invalid(format!("`{command}`: not UTF-8: {e}")))
}

/// One line of `/proc/kallsyms`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ksym {
    /// The address (`/init` sets `kptr_restrict` to 0, so these are real).
    pub address: u64,
    /// The type letter (`T`, `t`, `D`, …).
    pub kind: char,
    /// The symbol name.
    pub name: String,
    /// The module it belongs to (`[name]` on the line), `None` for the kernel image.
    pub module: Option<String>,
}

/// Every line of the guest's `/proc/kallsyms`, modules' symbols included.
pub fn kallsyms_all(guest: &Guest) -> io::Result<Vec<Ksym>> {
    parse_kallsyms(&fetch_text(guest, "cat /proc/kallsyms")?)
}

/// The kernel image's symbols from `/proc/kallsyms` (address, type, name), in the order
/// the kernel lists them; modules' symbols are left out (see [`kallsyms_all`]).
pub fn kallsyms(guest: &Guest) -> io::Result<Vec<(u64, char, String)>> {
    Ok(kallsyms_all(guest)?
        .into_iter()
        .filter(|s| s.module.is_none())
        .map(|s| (s.address, s.kind, s.name))
        .collect())
}

fn parse_kallsyms(text: &str) -> io::Result<Vec<Ksym>> {
    text.lines()
        .map(|line| {
            let bad = || invalid(format!("bad /proc/kallsyms line {line:?}"));
            let mut f = line.split_whitespace();
            let address = u64::from_str_radix(f.next().ok_or_else(bad)?, 16).map_err(|_| bad())?;
            let kind = f.next().and_then(|k| k.chars().next()).ok_or_else(bad)?;
            let name = f.next().ok_or_else(bad)?.to_owned();
            let module = f
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_owned());
            Ok(Ksym {
                address,
                kind,
                name,
                module,
            })
        })
        .collect()
}

/// One task (thread) as `/proc` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcTruth {
    /// The task's id (`task_struct.pid`).
    pub pid: u32,
    /// Its thread group (`task_struct.tgid`; equals `pid` for a group leader).
    pub tgid: u32,
    /// The parent process's tgid.
    pub ppid: u32,
    /// `comm` (the `Name:` of `status`, which escapes `\n` and `\\`).
    pub comm: String,
    /// The state letter (`R`, `S`, `D`, `I`, …).
    pub state: char,
    /// The real user id.
    pub uid: u32,
    /// The real group id.
    pub gid: u32,
    /// Whether `PF_KTHREAD` is among the task's flags.
    pub is_kernel_thread: bool,
    /// The arguments (`/proc/<pid>/cmdline` split at NULs; empty for kernel threads).
    pub cmdline: Vec<String>,
}

/// Every task of the guest: each thread of each process, from `/proc/<pid>/task/<tid>/`
/// `stat`, `status` and `cmdline`. Tasks that exit while being read are left out.
pub fn processes(guest: &Guest) -> io::Result<Vec<ProcTruth>> {
    let text = fetch_text(
        guest,
        "for t in /proc/[0-9]*/task/[0-9]*; do echo \"@@task $t\"; cat $t/stat; \
         cat $t/status; echo \"@@cmdline $(od -An -v -tx1 $t/cmdline | tr -d ' \\n')\"; \
         done 2>/dev/null",
    )?;
    parse_processes(&text)
}

fn parse_processes(text: &str) -> io::Result<Vec<ProcTruth>> {
    let mut out = Vec::new();
    for block in text.split("@@task ").skip(1) {
        if let Some(p) = parse_task(block)? {
            out.push(p);
        }
    }
    out.sort_by_key(|p| p.pid);
    Ok(out)
}

/// One `@@task` block; `None` if the task vanished before all of it was read.
fn parse_task(block: &str) -> io::Result<Option<ProcTruth>> {
    let bad = |what: &str| invalid(format!("{what} in task block {block:?}"));
    let mut lines = block.lines();
    let _path = lines.next();
    let Some(stat) = lines.next().filter(|l| !l.starts_with("@@")) else {
        return Ok(None);
    };
    // "pid (comm) state ppid pgrp session tty_nr tpgid flags …": comm may hold spaces
    // and parentheses, so the fields after it start at the last ')'.
    let after = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| bad("stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let flags: u64 = fields
        .get(6)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| bad("stat flags"))?;
    let mut status = std::collections::HashMap::new();
    let mut cmdline_hex = None;
    for line in lines {
        if let Some(hex) = line.strip_prefix("@@cmdline") {
            cmdline_hex = Some(hex.trim());
        } else if let Some((k, v)) = line.split_once(':') {
            status.insert(k, v.trim());
        }
    }
    let (Some(hex), Some(name)) = (cmdline_hex, status.get("Name")) else {
        return Ok(None);
    };
    let num = |key: &str| -> io::Result<u32> {
        status
            .get(key)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad(key))
    };
    let state = status
        .get("State")
        .and_then(|s| s.chars().next())
        .ok_or_else(|| bad("State"))?;
    let bytes = (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad("cmdline hex"))?;
    let cmdline = bytes
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    Ok(Some(ProcTruth {
        pid: num("Pid")?,
        tgid: num("Tgid")?,
        ppid: num("PPid")?,
        comm: (*name).to_owned(),
        state,
        uid: num("Uid")?,
        gid: num("Gid")?,
        is_kernel_thread: flags & PF_KTHREAD != 0,
        cmdline,
    }))
}

/// One line of `/proc/modules`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleTruth {
    /// The module's name.
    pub name: String,
    /// Its size in bytes (all its memory, as the kernel counts it).
    pub size: u64,
    /// Its reference count (`None` where the kernel prints `-`).
    pub refcount: Option<u64>,
    /// The modules using it.
    pub used_by: Vec<String>,
    /// `Live`, `Loading` or `Unloading`.
    pub state: String,
    /// Its text address (`None` if printed as 0: `kptr_restrict`).
    pub address: Option<u64>,
}

/// The guest's `/proc/modules`.
pub fn modules(guest: &Guest) -> io::Result<Vec<ModuleTruth>> {
    parse_modules(&fetch_text(guest, "cat /proc/modules")?)
}

fn parse_modules(text: &str) -> io::Result<Vec<ModuleTruth>> {
    text.lines()
        .map(|line| {
            let bad = || invalid(format!("bad /proc/modules line {line:?}"));
            let f: Vec<&str> = line.split_whitespace().collect();
            let [name, size, refcount, used_by, state, address, ..] = f[..] else {
                return Err(bad());
            };
            let address = address.strip_prefix("0x").ok_or_else(bad)?;
            let address = u64::from_str_radix(address, 16).map_err(|_| bad())?;
            Ok(ModuleTruth {
                name: name.to_owned(),
                size: size.parse().map_err(|_| bad())?,
                refcount: refcount.parse().ok(),
                used_by: used_by
                    .split(',')
                    .filter(|u| !u.is_empty() && *u != "-")
                    .map(str::to_owned)
                    .collect(),
                state: state.to_owned(),
                address: (address != 0).then_some(address),
            })
        })
        .collect()
}

/// The kernel log (`dmesg`), one message line each, with its `[seconds]` prefix.
pub fn dmesg(guest: &Guest) -> io::Result<Vec<String>> {
    Ok(fetch_text(guest, "dmesg")?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapTruth {
    /// First address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// `rwxp`-style permissions.
    pub perms: String,
    /// Offset into the mapped file.
    pub offset: u64,
    /// The file's device, `major:minor` in hex.
    pub dev: String,
    /// The file's inode (0 for anonymous memory).
    pub inode: u64,
    /// The file or pseudo-name (`[stack]`, `[vdso]`, …), if any.
    pub path: Option<String>,
}

/// The memory map of process `pid` (`/proc/<pid>/maps`).
pub fn maps(guest: &Guest, pid: u32) -> io::Result<Vec<MapTruth>> {
    parse_maps(&fetch_text(guest, &format!("cat /proc/{pid}/maps"))?)
}

fn parse_maps(text: &str) -> io::Result<Vec<MapTruth>> {
    text.lines()
        .map(|line| {
            let bad = || invalid(format!("bad maps line {line:?}"));
            let mut f = line.splitn(6, ' ');
            let mut field = || f.next().ok_or_else(bad);
            let (range, perms, offset, dev, inode) =
                (field()?, field()?, field()?, field()?, field()?);
            let path = f.next().map(str::trim).filter(|p| !p.is_empty());
            let (start, end) = range.split_once('-').ok_or_else(bad)?;
            let hex = |s: &str| u64::from_str_radix(s, 16).map_err(|_| bad());
            Ok(MapTruth {
                start: hex(start)?,
                end: hex(end)?,
                perms: perms.to_owned(),
                offset: hex(offset)?,
                dev: dev.to_owned(),
                inode: inode.parse().map_err(|_| bad())?,
                path: path.map(str::to_owned),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_known_vectors() {
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("Zg==").unwrap(), b"f");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(base64_decode("Zm9v").unwrap(), b"foo");
        assert_eq!(base64_decode("Zm9vYmFy").unwrap(), b"foobar");
        assert!(base64_decode("Zm9").is_err());
        assert!(base64_decode("Zm 9").is_err());
    }

    #[test]
    fn ticks_glued_into_output_are_cut_out() {
        assert_eq!(strip_ticks("ABCVMI-TEST tick 15"), "ABC");
        assert_eq!(strip_ticks("AVMI-TEST tick 5BC"), "ABC");
        assert_eq!(strip_ticks("ABC"), "ABC");
    }

    #[test]
    fn parses_proc_formats() {
        let k =
            parse_kallsyms("ffffffff81000000 T _text\nffffffffc0001000 t foo\t[vfat]\n").unwrap();
        assert_eq!(k[0].address, 0xffff_ffff_8100_0000);
        assert_eq!((k[1].kind, k[1].module.as_deref()), ('t', Some("vfat")));
        assert!(parse_kallsyms("zz T x").is_err());

        let m = parse_modules(
            "vfat 24576 0 - Live 0xffffffffc0123000\nfat 90112 1 vfat, Live 0x0000000000000000 (E)\n",
        )
        .unwrap();
        assert_eq!(m[0].address, Some(0xffff_ffff_c012_3000));
        assert_eq!(
            (m[1].used_by.clone(), m[1].address),
            (vec!["vfat".to_owned()], None)
        );

        let maps = parse_maps(
            "00400000-00452000 r-xp 00000000 00:02 12 /bin/busybox\n7ffd0000-7ffd1000 rw-p 00000000 00:00 0          [stack]\n7f0000-7f1000 rw-p 00000000 00:00 0 \n",
        )
        .unwrap();
        assert_eq!(maps[0].path.as_deref(), Some("/bin/busybox"));
        assert_eq!(maps[1].path.as_deref(), Some("[stack]"));
        assert_eq!(maps[2].path, None);

        let p = parse_processes(
            "@@task /proc/1/task/1\n1 (init) S 0 1 1 0 -1 4194560 0 0\nName:\tinit\nState:\tS (sleeping)\nTgid:\t1\nPid:\t1\nPPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n@@cmdline 2f696e697400\n\
             @@task /proc/2/task/2\n2 (kthreadd) S 0 0 0 0 -1 2129984 0\nName:\tkthreadd\nState:\tS (sleeping)\nTgid:\t2\nPid:\t2\nPPid:\t0\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n@@cmdline \n\
             @@task /proc/9/task/9\n",
        )
        .unwrap();
        assert_eq!(p.len(), 2, "the vanished task 9 is left out");
        assert_eq!(
            (p[0].cmdline.clone(), p[0].is_kernel_thread),
            (vec!["/init".to_owned()], false)
        );
        assert!(p[1].is_kernel_thread && p[1].cmdline.is_empty());
    }
}
