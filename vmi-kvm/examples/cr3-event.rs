//! Like LibVMI's `cr3-event-example`: prints CR3 writes (address-space switches).
//! `cr3-event SOCKET [SECRET] [COUNT]`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use std::time::Duration;
use vmi_core::event::{RegisterAccess, RegisterFilter};
use vmi_core::{EventControl, EventKind, Monitor, Response};

fn main() {
    let a = args::parse("cr3-event");
    let vm = args::connect(&a);
    let m = Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    };
    if let Err(e) = vm.enable(&m) {
        eprintln!("{e}");
        std::process::exit(1);
    }
    let mut seen = 0;
    while seen < a.count {
        match vm.wait_event(Duration::from_secs(30)) {
            Ok(Some(ev)) => {
                if let EventKind::Register {
                    value, previous, ..
                } = ev.kind
                {
                    println!(
                        "vCPU {} CR3 {:#x} -> {value:#x}",
                        ev.vcpu,
                        previous.unwrap_or(0)
                    );
                    seen += 1;
                }
                let _ = ev.reply(Response::continue_());
            }
            Ok(None) => break,
            Err(e) => {
                eprintln!("{e}");
                break;
            }
        }
    }
    println!("{seen} CR3 events");
}
