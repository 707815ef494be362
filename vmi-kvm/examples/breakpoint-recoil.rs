//! Like LibVMI's `breakpoint-recoil-example`: a breakpoint at a guest-physical address
//! that the guest keeps running past — each hit is printed and stepped over (the
//! original byte is put back for one instruction, then the INT3 again). Hits of other
//! INT3s (the guest's own) are reinjected and not counted.
//! `breakpoint-recoil SOCKET [SECRET] [COUNT] GPA`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use vmi_core::{Breakpoint, Breakpoints, EventKind, Gpa, Response};

fn main() {
    let a = args::parse("breakpoint-recoil");
    let gpa = Gpa(a
        .extra
        .unwrap_or_else(|| args::die("breakpoint-recoil needs a GPA")));
    let vm = args::connect(&a);
    vm.set_breakpoint(Breakpoint::physical(gpa))
        .unwrap_or_else(|e| args::die(e));
    let n = args::each_event(&vm, a.count, |ev| {
        let EventKind::Breakpoint {
            gla,
            gfn,
            offset,
            insn_length,
        } = ev.kind
        else {
            return false;
        };
        // An INT3 elsewhere is the guest's own: pass it on to the guest.
        let ours = ((gfn.0 << 12) | offset) == gpa.0;
        println!(
            "vCPU {} hit at {gla} ({gfn}+{offset:#x}, {insn_length} byte){}",
            ev.vcpu,
            if ours { "" } else { ": not ours, reinjected" }
        );
        let response = if ours {
            Response::continue_() // ours: not delivered to the guest
        } else {
            Response::reinject()
        };
        let _ = ev.reply(response);
        ours
    });
    println!("{n} breakpoint hits");
}
