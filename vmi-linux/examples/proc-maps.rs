//! `proc-maps`: the memory map of a process, like `/proc/PID/maps`, read from outside
//! (maple tree on 6.1+, VMA list before).
//!
//! ```text
//! proc-maps --qmp /tmp/qmp.sock PID
//! ```

#![allow(missing_docs)]

mod common;

use std::process::ExitCode;

use common::usage;

fn main() -> ExitCode {
    common::main_with("proc-maps", "TARGET PID", |args| {
        let pid: u32 = args
            .positional
            .first()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| usage("name a pid"))?;
        common::with_linux(&args, |linux| {
            let p = linux.process(pid)?;
            for v in linux.vmas(&p)? {
                println!(
                    "{:08x}-{:08x} {} {:08x} {}",
                    v.start,
                    v.end,
                    v.perms(),
                    v.offset,
                    v.name.as_deref().unwrap_or("")
                );
            }
            Ok(())
        })
    })
}
