//! Like LibVMI's `interrupt-event-example`: reports the guest's own INT3s and passes
//! them on to the guest (reinjection). `interrupt-event SOCKET [SECRET] [COUNT]`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use vmi_core::event::InterruptKind;
use vmi_core::{EventControl, EventKind, Monitor, Response};

fn main() {
    let a = args::parse("interrupt-event");
    let vm = args::connect(&a);
    vm.enable(&Monitor::Interrupt(InterruptKind::Int3))
        .unwrap_or_else(|e| args::die(e));
    let n = args::each_event(&vm, a.count, |ev| {
        let hit = matches!(ev.kind, EventKind::Breakpoint { .. });
        if let EventKind::Breakpoint {
            gla, insn_length, ..
        } = ev.kind
        {
            println!(
                "vCPU {} INT3 at {gla} ({insn_length} byte), reinjected",
                ev.vcpu
            );
        }
        let _ = ev.reply(if hit {
            Response::reinject()
        } else {
            Response::continue_()
        });
        hit
    });
    println!("{n} INT3 events");
}
