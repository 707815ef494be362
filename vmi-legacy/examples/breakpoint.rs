//! `breakpoint`: traps a guest kernel function by address or by symbol and prints every
//! hit (vCPU, RIP, frame, CR3 and the first argument registers), like LibVMI's
//! `breakpoint-example`.
//!
//! ```text
//! breakpoint QMP_SOCKET GDB_SOCKET ADDRESS|SYMBOL [--kallsyms FILE] [--hits N] [--timeout SECS]
//! ```
//!
//! An address is hex, with or without `0x` (`ffffffff81234560` as `/proc/kallsyms`
//! prints it); anything else is a symbol (a symbol whose name is all hex digits is
//! taken as an address: give its address). A symbol is looked up in `--kallsyms` (the
//! format of the guest's `/proc/kallsyms`: `ffffffff81234560 T name`; read it in the
//! guest as root, with `kptr_restrict=0`). The breakpoint is invisible to the guest
//! (no `0xCC` in memory: QEMU keeps it under TCG; a debug register under KVM) and is
//! removed on exit.

mod common;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use common::{connect, parse_address, usage, Args, Failure, Needs};
use vmi_core::{Backend, Breakpoint, EventKind, Gva, Response};

const USAGE: &str = "usage: legacy-breakpoint QMP_SOCKET GDB_SOCKET ADDRESS|SYMBOL \
                     [--kallsyms FILE] [--hits N] [--timeout SECS] [--qmp-timeout SECS]
  ADDRESS is hex, with or without 0x (as /proc/kallsyms prints it); anything else is a
  SYMBOL, looked up in --kallsyms FILE";

fn main() -> ExitCode {
    common::main_with("breakpoint", run)
}

/// The address of `name` in a `/proc/kallsyms`-format file.
fn lookup(kallsyms: &str, name: &str) -> Option<u64> {
    kallsyms.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (addr, _kind, sym) = (f.next()?, f.next()?, f.next()?);
        (sym == name).then(|| u64::from_str_radix(addr, 16).ok())?
    })
}

fn run() -> Result<(), Failure> {
    let args = Args::parse(&["kallsyms", "hits", "timeout"], &[], USAGE)?;
    let (Some(qmp), Some(gdb), Some(target)) = (args.path(0), args.path(1), args.positional.get(2))
    else {
        return Err(usage(USAGE));
    };
    let hits: u64 = match args.option("hits") {
        Some(n) => n.parse().map_err(|_| usage("--hits takes a number"))?,
        None => 10,
    };
    let timeout = match args.option("timeout") {
        Some(s) => Duration::from_secs(s.parse().map_err(|_| usage("--timeout takes seconds"))?),
        None => Duration::from_secs(30),
    };
    let addr = match parse_address(target) {
        Some(a) => a,
        None => {
            let file = args.option("kallsyms").ok_or_else(|| {
                usage(&format!(
                    "{target:?} is not an address: give --kallsyms FILE to look it up"
                ))
            })?;
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            lookup(&text, target).ok_or_else(|| format!("{target} is not in {file}"))?
        }
    };

    let vm = connect(&qmp, Some(&gdb), Needs::Gdb, args.timeout()?)?;
    let gdb = vm.gdb().expect("connected with a gdbstub");
    let events = vm.events().expect("events come with the gdbstub");
    let bp = Breakpoint::at(Gva(addr));
    vm.breakpoints()
        .expect("breakpoints come with the gdbstub")
        .set_breakpoint(bp)?;
    println!(
        "breakpoint at {addr:#x} ({target}), accelerator {:?}; waiting for {hits} hits",
        gdb.accelerator()
    );
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    while seen < hits {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        events.dispatch(left, &mut |ev| {
            if let EventKind::Breakpoint {
                gla, gfn, offset, ..
            } = ev.kind
            {
                seen += 1;
                let g = ev.registers.gprs.unwrap_or_default();
                let cr3 = ev.registers.control.map_or(0, |c| c.cr3);
                println!(
                    "hit {seen}: vcpu {} rip {:#x} gfn {:#x}+{offset:#x} cr3 {cr3:#x} \
                     rdi {:#x} rsi {:#x} r12 {:#x}",
                    ev.vcpu.raw(),
                    gla.0,
                    gfn.0,
                    g.rdi,
                    g.rsi,
                    g.r12
                );
            }
            Response::continue_()
        })?;
    }
    vm.breakpoints()
        .expect("breakpoints")
        .clear_breakpoint(bp)?;
    println!("{seen} hits; breakpoint removed");
    if seen < hits {
        return Err(format!("only {seen} of {hits} hits within {timeout:?}").into());
    }
    Ok(())
}
