//! Like LibVMI's `descriptor-event-example`: prints descriptor-table register accesses,
//! IDTR, GDTR, LDTR and TR kept distinct. `descriptor-event SOCKET [SECRET] [COUNT]`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use vmi_core::{EventControl, EventKind, Monitor, Response};

fn main() {
    let a = args::parse("descriptor-event");
    let vm = args::connect(&a);
    vm.enable(&Monitor::Descriptor)
        .unwrap_or_else(|e| args::die(e));
    let n = args::each_event(&vm, a.count, |ev| {
        let counted = match ev.kind {
            EventKind::Descriptor {
                descriptor,
                is_write,
                ..
            } => {
                let op = if is_write { "load" } else { "store" };
                println!("vCPU {} {descriptor:?} {op}", ev.vcpu);
                true
            }
            _ => false,
        };
        let _ = ev.reply(Response::continue_());
        counted
    });
    println!("{n} descriptor events");
}
