//! `dmesg`: the kernel log of a Linux guest, like LibVMI's `vmi-dmesg` — from the
//! lockless ring buffer of 5.10+ kernels (LibVMI reads only the old `log_buf`).
//!
//! ```text
//! dmesg --qmp /tmp/qmp.sock [--last N]
//! ```

#![allow(missing_docs)]

mod common;

use std::process::ExitCode;

use common::usage;

fn main() -> ExitCode {
    common::main_with("dmesg", "TARGET [--last N]", |args| {
        let last: usize = match args.option("last") {
            Some(n) => n.parse().map_err(|_| usage("--last takes a number"))?,
            None => usize::MAX,
        };
        common::with_linux(&args, |linux| {
            let log = linux.dmesg()?;
            for r in &log[log.len().saturating_sub(last)..] {
                for line in r.dmesg_lines() {
                    println!("{line}");
                }
            }
            Ok(())
        })
    })
}
