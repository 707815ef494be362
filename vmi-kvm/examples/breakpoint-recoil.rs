//! Like LibVMI's `breakpoint-recoil-example`: a breakpoint at a guest-physical address
//! that the guest keeps running past — each hit is printed and stepped over (the
//! original byte is put back for one instruction, then the INT3 again).
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
        let hit = matches!(ev.kind, EventKind::Breakpoint { .. });
        if let EventKind::Breakpoint {
            gla,
            gfn,
            offset,
            insn_length,
        } = ev.kind
        {
            println!(
                "vCPU {} hit at {gla} ({gfn}+{offset:#x}, {insn_length} byte)",
                ev.vcpu
            );
        }
        let _ = ev.reply(Response::continue_()); // ours: not delivered to the guest
        hit
    });
    println!("{n} breakpoint hits");
}
