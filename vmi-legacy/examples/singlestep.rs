//! `singlestep`: single-steps a vCPU and prints every instruction address, like LibVMI's
//! `step-event-example`.
//!
//! ```text
//! singlestep QMP_SOCKET GDB_SOCKET [--steps N] [--vcpu N]
//! ```
//!
//! Each step is a `vmi-core` single-step event (QEMU's gdbstub: IRQs masked while
//! stepping where the accelerator allows it); with the frame from the event and the 8
//! bytes at RIP read through the vCPU's address space. The guest runs on afterwards.

mod common;

use std::process::ExitCode;
use std::time::Duration;

use common::{connect, usage, Args, Failure, Needs};
use vmi_core::{Backend, EventKind, Monitor, Response, VcpuId, VcpuSet, VirtualMemory};

const USAGE: &str =
    "usage: legacy-singlestep QMP_SOCKET GDB_SOCKET [--steps N] [--vcpu N] [--qmp-timeout SECS]";
/// How long one step may take (a busy TCG host).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    common::main_with("singlestep", run)
}

fn run() -> Result<(), Failure> {
    let args = Args::parse(&["steps", "vcpu"], &[], USAGE)?;
    let (Some(qmp), Some(gdb)) = (args.path(0), args.path(1)) else {
        return Err(usage(USAGE));
    };
    let steps: u64 = match args.option("steps") {
        Some(n) => n.parse().map_err(|_| usage("--steps takes a number"))?,
        None => 10,
    };
    let vcpu = match args.option("vcpu") {
        Some(v) => VcpuId(v.parse().map_err(|_| usage("--vcpu takes a number"))?),
        None => VcpuId(0),
    };
    let vm = connect(&qmp, Some(&gdb), Needs::Gdb, args.timeout()?)?;
    let gdb = vm.gdb().expect("connected with a gdbstub");
    let events = vm.events().expect("events come with the gdbstub");
    let monitor = Monitor::Singlestep(VcpuSet::single(vcpu));
    events.enable(&monitor)?;
    println!(
        "single-stepping vcpu {} for {steps} steps (accelerator {:?}, step mask {:#x})",
        vcpu.raw(),
        gdb.accelerator(),
        gdb.sstep_mask()
    );
    let mut seen = 0;
    let mut failure = None;
    while seen < steps {
        let Some(ev) = events.wait_event(STEP_TIMEOUT)? else {
            failure = Some(format!("no step within {STEP_TIMEOUT:?}"));
            break;
        };
        if let EventKind::Singlestep { gla, gfn, .. } = ev.kind {
            seen += 1;
            let mut insn = [0u8; 8];
            let bytes = match vm.read_va(ev.vcpu, gla, &mut insn) {
                Ok(()) => insn
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(e) => format!("({e})"),
            };
            let gfn = gfn.map_or("?".to_owned(), |g| format!("{:#x}", g.0));
            println!("step {seen}: rip {:#x} gfn {gfn} bytes {bytes}", gla.0);
        }
        ev.reply(Response::continue_())?;
    }
    events.disable(&monitor)?;
    println!("{seen} steps; single-stepping off, the guest runs");
    match failure {
        Some(f) => Err(f.into()),
        None => Ok(()),
    }
}
