//! `process-list`: every process of a Linux guest, like LibVMI's `vmi-process-list` —
//! without a profile: symbols and types come from the guest's own kallsyms and BTF.
//!
//! ```text
//! process-list --qmp /tmp/qmp.sock
//! process-list --kvmi /tmp/kvmi.sock
//! ```
//!
//! Prints pid, ppid, uid, state, the kernel-thread mark, the page-table root, the name
//! and the command line read from the process's own memory.

#![allow(missing_docs)]

mod common;

use std::process::ExitCode;

fn main() -> ExitCode {
    common::main_with("process-list", "TARGET [--report yes]", |args| {
        common::with_linux(&args, |linux| {
            println!("{}", linux.kernel().banner);
            println!(
                "{:>7} {:>7} {:>5} {:>2} {:>18}  {:<16} CMDLINE",
                "PID", "PPID", "UID", "S", "PGD", "COMM"
            );
            for p in linux.processes()? {
                let cmdline = linux.cmdline(&p).unwrap_or_default().join(" ");
                let pgd = p.pgd.map_or("-".to_owned(), |g| format!("{:#x}", g.0));
                let name = if p.kernel_thread {
                    format!("[{}]", p.comm)
                } else {
                    p.comm.clone()
                };
                println!(
                    "{:>7} {:>7} {:>5} {:>2} {:>18}  {:<16} {}",
                    p.pid,
                    p.ppid,
                    p.uid,
                    p.state.letter(),
                    pgd,
                    name,
                    cmdline
                );
            }
            Ok(())
        })
    })
}
