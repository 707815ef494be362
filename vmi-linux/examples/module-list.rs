//! `module-list`: loaded kernel modules of a Linux guest, like LibVMI's `vmi-module-list`
//! (which hard-codes the name at list+16; here the layout comes from the guest's BTF).
//!
//! ```text
//! module-list --qmp /tmp/qmp.sock
//! ```

#![allow(missing_docs)]

mod common;

use std::process::ExitCode;

fn main() -> ExitCode {
    common::main_with("module-list", "TARGET", |args| {
        common::with_linux(&args, |linux| {
            println!("{:<24} {:>10} {:<10} ADDRESS", "MODULE", "SIZE", "STATE");
            for m in linux.modules()? {
                println!(
                    "{:<24} {:>10} {:<10} {:#x}",
                    m.name,
                    m.size,
                    m.state.proc_name(),
                    m.base
                );
            }
            Ok(())
        })
    })
}
