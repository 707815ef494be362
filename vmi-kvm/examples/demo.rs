//! A tour of the backend for `cargo xtask demo`: memory, registers, the capability
//! report, a CR3 event, a guest INT3 reinjected, a memory-access event.
//! `demo SOCKET [SECRET] [_] [GFN]` (GFN: the frame whose writes are trapped, default
//! 0x10). Against `kvmi-sim --socket SOCKET` it shows the simulator's guest.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use std::time::Duration;
use vmi_core::event::{InterruptKind, RegisterAccess, RegisterFilter};
use vmi_core::{
    Access, Backend, EventControl, EventKind, Gfn, Gpa, Monitor, PageAccess, PendingEvent,
    PhysicalMemory, ReadRegisters, Response, Support, VcpuControl, VcpuId, View,
};

fn one_event(
    vm: &vmi_kvm::KvmiVm,
    what: &str,
    want: impl Fn(&EventKind) -> bool,
) -> Option<PendingEvent> {
    for _ in 0..100 {
        match vm.wait_event(Duration::from_millis(300)) {
            Ok(Some(ev)) if want(&ev.kind) => return Some(ev),
            Ok(Some(other)) => drop(other),
            Ok(None) => {}
            Err(e) => args::die(e),
        }
    }
    println!("  (no {what} event within 30 s)");
    None
}

fn main() {
    let a = args::parse("demo");
    let gfn = Gfn(a.extra.unwrap_or(0x10));
    let vm = args::connect(&a);
    println!(
        "== VM {:?} over {}, {} vCPUs",
        vm.vm_name(),
        vm.name(),
        vm.vcpu_count().unwrap_or(0)
    );

    let caps = vm.capabilities();
    let (mut yes, mut part, mut no) = (0, 0, 0);
    for (_, s) in caps.rows() {
        match s {
            Support::Supported => yes += 1,
            Support::Partial(_) => part += 1,
            Support::Unsupported(_) => no += 1,
        }
    }
    println!("== capabilities: {yes} supported, {part} partly, {no} unsupported (with reasons)");

    let mut bytes = [0u8; 32];
    match vm.read_physical(Gpa(0x1000), &mut bytes) {
        Ok(()) => println!("== memory at 0x1000: {bytes:02x?}"),
        Err(e) => println!("== memory at 0x1000: {e}"),
    }
    match vm.all_registers(VcpuId(0)) {
        Ok(r) => println!(
            "== vCPU 0: rip {:#x} cr3 {:#x} efer {:#x}",
            r.gprs.map_or(0, |g| g.rip),
            r.control.map_or(0, |c| c.cr3),
            r.efer().unwrap_or(0)
        ),
        Err(e) => println!("== vCPU 0 registers: {e}"),
    }

    let cr3 = Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    };
    vm.enable(&cr3).unwrap_or_else(|e| args::die(e));
    println!("== waiting for a CR3 write");
    if let Some(ev) = one_event(&vm, "CR3", |k| matches!(k, EventKind::Register { .. })) {
        if let EventKind::Register {
            value, previous, ..
        } = ev.kind
        {
            println!(
                "  vCPU {} CR3 {:#x} -> {value:#x}",
                ev.vcpu,
                previous.unwrap_or(0)
            );
        }
        let _ = ev.reply(Response::continue_());
    }
    let _ = vm.disable(&cr3);

    let int3 = Monitor::Interrupt(InterruptKind::Int3);
    vm.enable(&int3).unwrap_or_else(|e| args::die(e));
    println!("== waiting for a guest INT3 (reinjected: the guest's own)");
    if let Some(ev) = one_event(&vm, "INT3", |k| matches!(k, EventKind::Breakpoint { .. })) {
        if let EventKind::Breakpoint {
            gla, gfn, offset, ..
        } = ev.kind
        {
            println!(
                "  vCPU {} INT3 at {gla} ({gfn}+{offset:#x}), reinjecting",
                ev.vcpu
            );
        }
        let _ = ev.reply(Response::reinject());
    }
    let _ = vm.disable(&int3);

    vm.enable(&Monitor::MemoryAccess)
        .unwrap_or_else(|e| args::die(e));
    vm.set_page_access(View::DEFAULT, gfn, Access::RX)
        .unwrap_or_else(|e| args::die(e));
    println!("== waiting for a write to {gfn}");
    if let Some(ev) = one_event(&vm, "memory access", |k| {
        matches!(k, EventKind::MemoryAccess { .. })
    }) {
        if let EventKind::MemoryAccess {
            gfn,
            offset,
            access,
            ..
        } = ev.kind
        {
            println!("  vCPU {} {access:?} at {gfn}+{offset:#x}", ev.vcpu);
        }
        let _ = ev.reply(Response::continue_());
    }
    match vm.close() {
        Ok(()) => println!("== closed: intercepts, page access and pauses undone"),
        Err(e) => println!("== closed with an error: {e}"),
    }
}
