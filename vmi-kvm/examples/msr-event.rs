//! Like LibVMI's `msr-event-example`: prints writes to the MSRs LibVMI's `MSR_ALL`
//! names. `msr-event SOCKET [SECRET] [COUNT]`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use vmi_core::event::{RegisterAccess, RegisterId};
use vmi_core::{EventControl, EventKind, Monitor, Response};

fn main() {
    let a = args::parse("msr-event");
    let vm = args::connect(&a);
    vm.enable(&Monitor::AllMsrs {
        access: RegisterAccess::Write,
    })
    .unwrap_or_else(|e| args::die(e));
    let n = args::each_event(&vm, a.count, |ev| {
        let counted = match ev.kind {
            EventKind::Register {
                register: RegisterId::Msr(i),
                value,
                previous,
                ..
            } => {
                println!(
                    "vCPU {} MSR {i:#x} {:#x} -> {value:#x}",
                    ev.vcpu,
                    previous.unwrap_or(0)
                );
                true
            }
            _ => false,
        };
        let _ = ev.reply(Response::continue_());
        counted
    });
    println!("{n} MSR events");
}
