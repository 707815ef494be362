//! `dump-memory`: writes guest physical memory to a file, like LibVMI's `dump-memory`.
//!
//! ```text
//! dump-memory QMP_SOCKET OUTPUT [--live] [--qmp-timeout SECS]
//! ```
//!
//! Every range the session reports through `vmi-core`'s [`MemoryLayout`] (RAM, and any
//! ROM range the layout serves) is written at its guest physical address as file offset;
//! the gaps between ranges stay holes of the (sparse) file. The guest is paused for the
//! dump unless `--live` is given. Reads guest RAM directly: a shared backend (mapped),
//! or anonymous RAM through QEMU's process memory (`process_vm_readv`, needs ptrace
//! access to QEMU); the path taken goes to stderr, and so does a progress bar.

mod common;

use std::fs::File;
use std::io::{IsTerminal, Seek, SeekFrom, Write};
use std::process::ExitCode;
use std::time::Instant;

use common::{connect, usage, Args, Failure, Needs};
use vmi_core::{Gpa, MemoryLayout, PhysicalMemory, VcpuControl};

const USAGE: &str = "usage: legacy-dump-memory QMP_SOCKET OUTPUT [--live] [--qmp-timeout SECS]";
/// Bytes per read.
const CHUNK: usize = 1 << 20;

fn main() -> ExitCode {
    common::main_with("dump-memory", run)
}

/// `[#####.....]  45%  28.0/64.0 MiB`
fn progress(done: u64, total: u64) -> String {
    const WIDTH: u64 = 40;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH) as usize;
    let pct = (done * 100).checked_div(total).unwrap_or(100);
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    format!(
        "[{}{}] {pct:3}% {:.1}/{:.1} MiB",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        mib(done),
        mib(total)
    )
}

fn run() -> Result<(), Failure> {
    let args = Args::parse(&[], &["live"], USAGE)?;
    let live = args.switch("live");
    let [qmp, out] = &args.positional[..] else {
        return Err(usage(USAGE));
    };
    let vm = connect(qmp.as_ref(), None, Needs::DirectRam, args.timeout()?)?;
    eprintln!("guest RAM through {}", vm.ram_access().kind());
    let info = vm.memory_info()?;
    let total: u64 = info.ranges.iter().map(|r| r.len).sum();
    println!("{} ranges, {total} bytes:", info.ranges.len());
    for r in &info.ranges {
        let backend = vm
            .full_layout()
            .range_of(r.start)
            .map_or("?", |b| b.backend_name.as_str());
        println!(
            "  {:#014x}-{:#014x} {:>10} bytes  {backend}",
            r.start.0,
            r.end(),
            r.len
        );
    }
    let mut file = File::create(out).map_err(|e| format!("{out}: {e}"))?;
    let _paused = if live { None } else { Some(vm.pause()?) };
    let tty = std::io::stderr().is_terminal();
    let start = Instant::now();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    let mut last_shown = 0u64;
    for r in &info.ranges {
        file.seek(SeekFrom::Start(r.start.0))
            .map_err(|e| format!("{out}: {e}"))?;
        let mut at = r.start.0;
        while at < r.end() {
            let n = (r.end() - at).min(CHUNK as u64) as usize;
            vm.read_physical(Gpa(at), &mut buf[..n])
                .map_err(|e| format!("reading {n} bytes at {at:#x}: {e}"))?;
            file.write_all(&buf[..n])
                .map_err(|e| format!("{out}: {e}"))?;
            at += n as u64;
            done += n as u64;
            // On a terminal redraw in place; in a log one line per 16 MiB and the end.
            if tty {
                eprint!("\r{}", progress(done, total));
            } else if done - last_shown >= 16 << 20 || done == total {
                eprintln!("{}", progress(done, total));
                last_shown = done;
            }
        }
    }
    if tty {
        eprintln!();
    }
    let end = info.ranges.last().map_or(0, |r| r.end());
    file.set_len(end).map_err(|e| format!("{out}: {e}"))?;
    file.sync_all().map_err(|e| format!("{out}: {e}"))?;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "wrote {done} bytes of guest memory to {out} ({end} bytes with holes) in {secs:.2} s \
         ({:.0} MiB/s){}",
        done as f64 / f64::from(1u32 << 20) / secs.max(1e-9),
        if live { ", live" } else { ", guest paused" }
    );
    Ok(())
}
