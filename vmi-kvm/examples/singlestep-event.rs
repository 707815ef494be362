//! Like LibVMI's `singlestep-event-example`: single-steps vCPU 0 and prints RIP
//! (kvmi-v7; refused with the reason on kvmi-v6). `singlestep-event SOCKET [SECRET] [COUNT]`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use std::time::Duration;
use vmi_core::{EventControl, EventKind, Monitor, Response, VcpuId, VcpuSet};

fn main() {
    let a = args::parse("singlestep-event");
    let vm = args::connect(&a);
    if let Err(e) = vm.enable(&Monitor::Singlestep(VcpuSet::single(VcpuId(0)))) {
        println!("singlestep unavailable: {e}");
        return;
    }
    let mut seen = 0;
    while seen < a.count {
        let Ok(Some(ev)) = vm.wait_event(Duration::from_secs(30)) else {
            break;
        };
        if let EventKind::Singlestep { gla, failed, .. } = ev.kind {
            println!(
                "vCPU {} stepped to {gla}{}",
                ev.vcpu,
                if failed { " (failed)" } else { "" }
            );
            seen += 1;
        }
        let _ = ev.reply(Response::continue_());
    }
    println!("{seen} singlestep events");
}
