//! A tour of the backend for `cargo xtask demo`'s KVMi section: the capability
//! report, memory (the banner through vmi-core's `VirtualMemory`, a physical read),
//! the registers of every vCPU, a CR3-write event, a breakpoint of ours stepped over
//! beside the guest's own INT3 reinjected, and a memory-access event.
//!
//! `demo SOCKET [SECRET] [_] [GFN]` (GFN: the frame whose writes are trapped, default
//! the page of the guest's `jiffies`). The addresses are those of the simulated guest
//! ([`kvmi_sim::guest`], its `System.map`): run it against `kvmi-sim --socket SOCKET`.
//! Against another guest the symbols do not match, and the sections that need them
//! say what they could not find.
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use kvmi_sim::guest;
use std::time::{Duration, Instant};
use vmi_core::event::{RegisterAccess, RegisterFilter};
use vmi_core::{
    Access, Backend, Breakpoint, Breakpoints, EventControl, EventKind, Gfn, Gpa, Gva, Monitor,
    PageAccess, PendingEvent, PhysicalMemory, ReadRegisters, RegisterSnapshot, Response, Support,
    VcpuControl, VcpuId, View, VirtualMemory,
};
use vmi_kvm::KvmiVm;

/// How long each event section waits for its events.
const EVENT_WAIT: Duration = Duration::from_secs(30);

/// `name+0xoff` of the simulated guest's symbol at or below `va` (within 4 KiB).
fn sym(va: u64) -> String {
    guest::SYMBOLS
        .iter()
        .filter(|(_, a)| *a <= va && va - *a < 0x1000)
        .max_by_key(|(_, a)| *a)
        .map_or_else(|| "?".into(), |(n, a)| format!("{n}+{:#x}", va - a))
}

/// Waits for events until `f` says it has seen enough (returns `true`) or
/// [`EVENT_WAIT`] passes; `f` answers each event it is given. Returns whether `f` was
/// satisfied. Events of other kinds (still queued from an earlier section) are
/// answered by their guard's drop, with their default reply.
fn events(vm: &KvmiVm, what: &str, mut f: impl FnMut(PendingEvent) -> bool) -> bool {
    let start = Instant::now();
    while let Some(left) = EVENT_WAIT.checked_sub(start.elapsed()) {
        match vm.wait_event(left.min(Duration::from_millis(300))) {
            Ok(Some(ev)) => {
                if f(ev) {
                    return true;
                }
            }
            Ok(None) => {}
            Err(e) => {
                println!("  waiting for {what}: {e}");
                return false;
            }
        }
    }
    println!("  (not all {what} seen within {EVENT_WAIT:?})");
    false
}

fn reply(ev: PendingEvent, r: Response) {
    if let Err(e) = ev.reply(r) {
        println!("  reply refused: {e}");
    }
}

fn main() {
    let a = args::parse("demo");
    let vm = args::connect(&a);
    println!(
        "== VM {:?} over {}, {} vCPUs",
        vm.vm_name(),
        vm.name(),
        vm.vcpu_count().unwrap_or(0)
    );
    capabilities(&vm);
    memory_and_registers(&vm);
    cr3_event(&vm);
    breakpoints(&vm);
    memory_access(&vm, a.extra.map_or(Gfn(guest::JIFFIES_PA >> 12), Gfn));
    match vm.close() {
        Ok(()) => println!("== closed: intercepts, page access and pauses undone"),
        Err(e) => println!("== closed with an error: {e}"),
    }
}

fn capabilities(vm: &KvmiVm) {
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
}

/// The banner read through the page tables and physically, then every vCPU's
/// registers, all while the guest is paused (one consistent picture).
fn memory_and_registers(vm: &KvmiVm) {
    let paused = match vm.pause() {
        Ok(p) => Some(p),
        Err(e) => {
            println!("== pause: {e} (reading the running guest)");
            None
        }
    };
    println!("== memory");
    let banner = Gva(guest::BANNER_VA);
    match vm.read_va_cstr(VcpuId(0), banner, 256) {
        Ok(text) => println!(
            "  linux_banner {banner} (virtual, vCPU 0's page tables):\n    {:?}",
            String::from_utf8_lossy(&text).trim_end()
        ),
        Err(e) => println!("  linux_banner {banner}: {e}"),
    }
    match vm.translate_va(VcpuId(0), banner) {
        Ok(t) => println!(
            "  {banner} -> physical {} ({:?} page, {})",
            t.gpa,
            t.page_size,
            if t.executable {
                "executable"
            } else {
                "no-execute"
            }
        ),
        Err(e) => println!("  translating {banner}: {e}"),
    }
    let mut bytes = [0u8; 16];
    match vm.read_physical(Gpa(guest::BANNER_PA), &mut bytes) {
        Ok(()) => println!(
            "  physical {:#x}, 16 bytes: {bytes:02x?} {:?}",
            guest::BANNER_PA,
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => println!("  physical {:#x}: {e}", guest::BANNER_PA),
    }
    println!("== registers");
    let vcpus = vm.vcpu_count().unwrap_or(0);
    for v in (0..vcpus).filter_map(|v| VcpuId::try_from(v).ok()) {
        match vm.all_registers(v) {
            Ok(r) => print_registers(v, &r),
            Err(e) => println!("  vCPU {v}: {e}"),
        }
    }
    if let Some(p) = paused {
        if let Err(e) = p.resume() {
            println!("  resume: {e}");
        }
    }
}

fn print_registers(vcpu: VcpuId, r: &RegisterSnapshot) {
    if let Some(g) = r.gprs {
        println!(
            "  vCPU {vcpu}: rip {:#x} ({})  rsp {:#x}  rflags {:#x}",
            g.rip,
            sym(g.rip),
            g.rsp,
            g.rflags
        );
    }
    if let Some(c) = r.control {
        println!(
            "    cr0 {:#x}  cr3 {:#x}  cr4 {:#x}  efer {:#x}",
            c.cr0,
            c.cr3,
            c.cr4,
            r.efer().unwrap_or(0)
        );
    }
    if let Some(s) = r.segments {
        println!(
            "    cs {:#x}  ss {:#x}  tr {:#x}  gs base {:#x}",
            s.cs.selector, s.ss.selector, s.tr.selector, s.gs.base
        );
    }
    if let (Some(g), Some(i)) = (r.gdtr, r.idtr) {
        println!(
            "    gdtr {:#x}/{:#x}  idtr {:#x}/{:#x}",
            g.base, g.limit, i.base, i.limit
        );
    }
}

fn cr3_event(vm: &KvmiVm) {
    let cr3 = Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    };
    if let Err(e) = vm.enable(&cr3) {
        println!("== CR3 writes: {e}");
        return;
    }
    println!("== CR3 writes (address-space switches): waiting for one");
    events(vm, "CR3 writes", |ev| {
        let EventKind::Register {
            value, previous, ..
        } = ev.kind
        else {
            return false;
        };
        let rip = ev.registers.gprs.map_or(0, |g| g.rip);
        println!(
            "  vCPU {} at {}: CR3 {} -> {value:#x}, answered: continue (the write happens)",
            ev.vcpu,
            sym(rip),
            previous.map_or_else(|| "?".into(), |p| format!("{p:#x}")),
        );
        reply(ev, Response::continue_());
        true
    });
    let _ = vm.disable(&cr3);
}

/// A breakpoint of ours at `__x64_sys_getpid`, which the guest calls: its hit is
/// answered with continue, so the guest never sees that INT3 (the backend steps over
/// it). The guest's own INT3 in `int3_selftest` arrives as a breakpoint event too: it
/// is not ours, so it is reinjected to the guest's #BP handler.
fn breakpoints(vm: &KvmiVm) {
    let target = Gva(guest::SYM_BP_TARGET);
    let bp = Breakpoint::at(target);
    if let Err(e) = vm.set_breakpoint(bp) {
        println!("== breakpoint at __x64_sys_getpid {target}: {e}");
        return;
    }
    let mut byte = [0u8; 1];
    let placed = vm.read_physical(Gpa(guest::SYM_BP_TARGET_PA), &mut byte);
    println!(
        "== breakpoint at __x64_sys_getpid {target} (physical {:#x}, byte there now {}); \
         waiting for its hit and for the guest's own INT3",
        guest::SYM_BP_TARGET_PA,
        placed.map_or_else(|e| e.to_string(), |()| format!("{:#04x}", byte[0]))
    );
    let (mut ours, mut guests) = (false, false);
    events(vm, "breakpoint hits", |ev| {
        let EventKind::Breakpoint {
            gla,
            gfn,
            offset,
            insn_length,
        } = ev.kind
        else {
            return false;
        };
        let mine = gla == target;
        println!(
            "  vCPU {} INT3 at gla {gla} ({}) gfn {gfn} offset {offset:#x} insn_length \
             {insn_length}: {}",
            ev.vcpu,
            sym(gla.0),
            if mine {
                "ours, answered: continue (stepped over, not delivered to the guest)"
            } else {
                "the guest's own, answered: reinject (delivered to its #BP handler)"
            }
        );
        reply(
            ev,
            if mine {
                Response::continue_()
            } else {
                Response::reinject()
            },
        );
        ours |= mine;
        guests |= !mine;
        ours && guests
    });
    match vm.clear_breakpoint(bp) {
        Ok(()) => {
            let restored = vm.read_physical(Gpa(guest::SYM_BP_TARGET_PA), &mut byte);
            println!(
                "  breakpoint cleared, byte at {:#x}: {}",
                guest::SYM_BP_TARGET_PA,
                restored.map_or_else(|e| e.to_string(), |()| format!("{:#04x}", byte[0]))
            );
        }
        Err(e) => println!("  clearing the breakpoint: {e}"),
    }
}

/// Writes to `gfn` trapped by taking W away from it in the default view.
fn memory_access(vm: &KvmiVm, gfn: Gfn) {
    let restricted = vm
        .enable(&Monitor::MemoryAccess)
        .and_then(|()| vm.set_page_access(View::DEFAULT, gfn, Access::RX));
    if let Err(e) = restricted {
        println!("== memory access on {gfn}: {e}");
        return;
    }
    println!("== page {gfn} made read/execute-only: waiting for a write to it");
    events(vm, "writes", |ev| {
        let EventKind::MemoryAccess {
            gfn,
            offset,
            gla,
            access,
            ..
        } = ev.kind
        else {
            return false;
        };
        let rip = ev.registers.gprs.map_or(0, |g| g.rip);
        println!(
            "  vCPU {} at {}: {access:?} at gfn {gfn} offset {offset:#x} gla {} ({}), \
             answered: continue (the write happens)",
            ev.vcpu,
            sym(rip),
            gla.map_or_else(|| "not reported".into(), |g| g.to_string()),
            gla.map_or_else(|| "?".into(), |g| sym(g.0)),
        );
        reply(ev, Response::continue_());
        true
    });
    if let Err(e) = vm.set_page_access(View::DEFAULT, gfn, Access::RWX) {
        println!("  restoring {gfn}: {e}");
    }
    let _ = vm.disable(&Monitor::MemoryAccess);
}
