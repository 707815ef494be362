//! `recover`: lets a guest run again that a killed debugging tool left stopped at its
//! breakpoints.
//!
//! ```text
//! recover QMP_SOCKET GDB_SOCKET
//! ```
//!
//! A tool killed (`SIGKILL`, `process::exit`) while its breakpoints were set leaves them
//! in QEMU's gdbstub: the next hit stops the guest in run state `debug`, and QMP `cont`
//! does not help (the vCPU runs into the same breakpoint at once). Nothing of the tool
//! is left in guest memory (QEMU keeps breakpoints in its own list under TCG, in debug
//! registers under KVM). Attaching to the gdbstub removes them (QEMU clears its list
//! when a client connects) and the session lets the guest run; so does every
//! `LegacyQemu::connect` with a gdbstub (see `vmi_legacy::attach`). This tool attaches,
//! says what it found and detaches. It refuses, changing nothing, when another client
//! (a gdb) is attached to the stub.

mod common;

use std::process::ExitCode;

use common::{connect, usage, Args, Failure, Needs};

const USAGE: &str = "usage: legacy-recover QMP_SOCKET GDB_SOCKET [--qmp-timeout SECS]
  lets a guest run again that a killed tool left stopped at its breakpoints (run state
  `debug`): attaching to the gdbstub removes them, detaching lets the guest run";

fn main() -> ExitCode {
    common::main_with("recover", run)
}

fn run() -> Result<(), Failure> {
    let args = Args::parse(&[], &[], USAGE)?;
    let (Some(qmp), Some(gdb)) = (args.path(0), args.path(1)) else {
        return Err(usage(USAGE));
    };
    let vm = connect(&qmp, Some(&gdb), Needs::Gdb, args.timeout()?)?;
    if vm.recovered_stale_debug_stop() {
        println!(
            "the guest was stopped in `debug` with no debugger attached (a tool that died \
             at its breakpoints): removed QEMU's stale breakpoints"
        );
    } else {
        println!("no stale breakpoint stop: nothing to recover");
    }
    let gdb = vm.gdb().expect("connected with a gdbstub");
    gdb.detach()?;
    drop(vm);
    // The session held the only QMP connection; ask afresh.
    let mut q = vmi_legacy::QmpClient::connect(&qmp)?;
    let status = q.query_status()?;
    println!("run state: {}", status.status);
    Ok(())
}
