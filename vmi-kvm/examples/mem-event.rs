//! Like LibVMI's `mem-event-example`: traps writes to one guest frame and prints them.
//! `mem-event SOCKET [SECRET] [COUNT] GFN`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use vmi_core::{Access, EventControl, EventKind, Gfn, Monitor, PageAccess, Response, View};

fn main() {
    let a = args::parse("mem-event");
    let gfn = Gfn(a
        .extra
        .unwrap_or_else(|| args::die("mem-event needs a GFN")));
    let vm = args::connect(&a);
    vm.enable(&Monitor::MemoryAccess)
        .unwrap_or_else(|e| args::die(e));
    vm.set_page_access(View::DEFAULT, gfn, Access::RX)
        .unwrap_or_else(|e| args::die(e));
    let n = args::each_event(&vm, a.count, |ev| {
        let counted = match ev.kind {
            EventKind::MemoryAccess {
                gfn,
                offset,
                gla,
                access,
                ..
            } => {
                let gla = gla.map_or("-".to_string(), |g| g.to_string());
                println!(
                    "vCPU {} {access:?} at {gfn}+{offset:#x} (gla {gla})",
                    ev.vcpu
                );
                true
            }
            _ => false,
        };
        let _ = ev.reply(Response::continue_()); // emulate the write: the guest goes on
        counted
    });
    println!("{n} memory events");
}
