//! Hides a guest frame's content from the guest's own reads, the way a tool fools
//! PatchGuard-like integrity checks: reads of the frame trap and are answered with
//! zeroes as emulated read data (LibVMI `VMI_EVENT_RESPONSE_SET_EMUL_READ_DATA`).
//! `emul-read-data SOCKET [SECRET] [COUNT] GFN`.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use vmi_core::event::EmulReadData;
use vmi_core::{Access, Action, EventControl, EventKind, Gfn, Monitor, PageAccess, Response, View};

fn main() {
    let a = args::parse("emul-read-data");
    let gfn = Gfn(a
        .extra
        .unwrap_or_else(|| args::die("emul-read-data needs a GFN")));
    let vm = args::connect(&a);
    vm.enable(&Monitor::MemoryAccess)
        .unwrap_or_else(|e| args::die(e));
    // Trapping reads needs trapping writes too (EPT has no write-only pages).
    vm.set_page_access(View::DEFAULT, gfn, Access::X)
        .unwrap_or_else(|e| args::die(e));
    let zeroes = EmulReadData::new(&[0u8; 16]).unwrap_or_else(|e| args::die(e));
    let n = args::each_event(&vm, a.count, |ev| {
        let read = matches!(ev.kind, EventKind::MemoryAccess { access, .. } if access == Access::R);
        let response = if read {
            println!("vCPU {} read hidden", ev.vcpu);
            Response::action(Action::EmulateWithReadData(Box::new(zeroes.clone())))
        } else {
            Response::continue_()
        };
        let _ = ev.reply(response);
        read
    });
    println!("{n} reads answered with emulated data");
}
