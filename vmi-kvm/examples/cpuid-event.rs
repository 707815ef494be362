//! Like LibVMI's `cpuid-event-example`: prints CPUID executions (kvmi-v7).
//! `cpuid-event SOCKET [SECRET] [COUNT]`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use std::time::Duration;
use vmi_core::{EventControl, EventKind, Monitor, Response};

fn main() {
    let a = args::parse("cpuid-event");
    let vm = args::connect(&a);
    if let Err(e) = vm.enable(&Monitor::Cpuid) {
        eprintln!("{e}");
        std::process::exit(1);
    }
    let mut seen = 0;
    while seen < a.count {
        let Ok(Some(ev)) = vm.wait_event(Duration::from_secs(30)) else {
            break;
        };
        if let EventKind::Cpuid {
            leaf,
            subleaf,
            insn_length,
        } = ev.kind
        {
            println!(
                "vCPU {} CPUID leaf {leaf:#x} subleaf {subleaf:#x} ({insn_length} bytes)",
                ev.vcpu
            );
            seen += 1;
        }
        let _ = ev.reply(Response::continue_());
    }
    println!("{seen} CPUID events");
}
