//! `cargo xtask demo`: boot the bundled guest and introspect it live from outside,
//! through the same crates a tool would use (`vmi-legacy` behind `vmi-core`'s traits).

use std::time::Instant;

use std::time::Duration;

use vmi_core::event::InterruptKind;
use vmi_core::{
    translate, Backend, Breakpoint, Breakpoints, EventControl, EventKind, Gpa, Gva, MemoryLayout,
    Monitor, PagingMode, PhysicalMemory, ReadRegisters, Register, RegisterSnapshot, Response,
    VcpuControl, VcpuId,
};
use vmi_legacy::{LegacyConfig, LegacyQemu};
use vmi_linux::{Linux, LinuxOptions};
use vmi_tests::{Guest, GuestOptions, GuestPaths};

use crate::util::Result;

/// Boots the guest described by `paths`, waits until it is up, then shows what the
/// library sees: the kernel banner in guest physical memory, the vCPU registers, and the
/// translation of the banner's kernel virtual address.
pub(crate) fn run(paths: &GuestPaths) -> Result {
    let start = Instant::now();
    let guest = Guest::launch(GuestOptions::new(paths.clone()))?;
    println!("QEMU pid {} ({} accel)", guest.pid(), guest.accel());
    println!("  QMP socket: {}", guest.qmp_socket().display());
    println!("  GDB socket: {}", guest.gdb_socket().display());
    println!(
        "  guest RAM:  {} ({} MiB, shared)",
        guest.ram_path().display(),
        guest.ram_size() >> 20
    );
    let markers = guest.wait_ready()?;
    println!("guest ready after {:.1?}", start.elapsed());
    // The serial console's view, for comparison only: everything below is found by
    // vmi-linux from the guest's own memory.
    let console_banner_va = markers.kallsyms("linux_banner");

    // QMP for status and layout, shared RAM for memory, the GDB stub for registers and
    // events.
    let mut config = LegacyConfig::new(guest.qmp_socket());
    config.gdb_socket = Some(guest.gdb_socket().to_path_buf());
    let vmi = LegacyQemu::connect(config)?;
    let layout = vmi.memory_info()?;
    println!(
        "\nconnected: memory via {}, {} MiB RAM in {} ranges, max physical address {}",
        vmi.ram_access().kind(),
        layout.ram_size() >> 20,
        layout.ranges.len(),
        layout.max_physical_address()
    );

    // A consistent picture: pause while looking, resume when the guard drops.
    let paused = vmi.pause()?;
    let vcpus = vmi.vcpu_count()?;
    println!("paused {vcpus} vCPUs");

    // 0. The operating system, from the guest's own kallsyms and BTF (no profile).
    let linux = Linux::attach(&vmi, LinuxOptions::default())?;
    println!("\nvmi-linux attached ({} symbols):", linux.symbols().len());
    for line in linux.report().to_string().lines() {
        println!("  {line}");
    }
    let banner_va = linux.symbol("linux_banner")?;
    println!(
        "  linux_banner = {banner_va:#x} (the serial console says {})",
        console_banner_va.map_or("?".into(), |v| format!("{v:#x}"))
    );
    println!("\nprocesses:");
    println!(
        "  {:>5} {:>5} {:>4} S  {:<16} CMDLINE",
        "PID", "PPID", "UID", "NAME"
    );
    for p in linux.processes()? {
        let cmdline = linux.cmdline(&p).unwrap_or_default().join(" ");
        let name = if p.kernel_thread {
            format!("[{}]", p.name)
        } else {
            p.name.clone()
        };
        println!(
            "  {:>5} {:>5} {:>4} {}  {:<16} {}",
            p.pid,
            p.ppid,
            p.uid,
            p.state.letter(),
            name,
            cmdline
        );
    }
    let modules = linux.modules()?;
    println!(
        "\nmodules:{}",
        if modules.is_empty() {
            " none loaded (this initramfs loads none)"
        } else {
            ""
        }
    );
    for m in modules {
        println!(
            "  {:<16} {:>8} {:<8} {:#x}",
            m.name,
            m.size,
            m.state.proc_name(),
            m.base
        );
    }
    println!("\nlast kernel log lines:");
    let log = linux.dmesg()?;
    for r in &log[log.len().saturating_sub(5)..] {
        for line in r.dmesg_lines() {
            println!("  {line}");
        }
    }
    let breakpoint_target = linux.symbol("do_sys_openat2").ok();
    drop(linux);

    // 1. The kernel banner, found by scanning guest physical memory: the first
    // "Linux version " followed by a printable line (other hits are fragments in
    // freed or compressed memory).
    let mut banner_pa = None;
    let mut copies = 0;
    for pa in vmi_tests::scan::find_all(&vmi, b"Linux version ")? {
        let mut text = vec![0u8; 256];
        if vmi.read_physical(pa, &mut text).is_err() {
            continue;
        }
        let Some(end) = text.iter().position(|&b| b == b'\n') else {
            continue;
        };
        if text[..end].iter().all(|b| (0x20..0x7f).contains(b)) {
            copies += 1;
            if banner_pa.is_none() {
                println!(
                    "\nkernel banner at physical {pa}:\n  {}",
                    String::from_utf8_lossy(&text[..end])
                );
                banner_pa = Some(pa);
            }
        }
    }
    match banner_pa {
        Some(_) => println!("  ({copies} complete copies in guest RAM)"),
        None => println!("\nkernel banner not found in guest RAM"),
    }

    // 2. Registers of every vCPU.
    let mut vcpu0 = None;
    for v in 0..vcpus {
        let regs = vmi.all_registers(VcpuId::try_from(v)?)?;
        print_registers(v, &regs);
        if v == 0 {
            vcpu0 = Some(regs);
        }
    }

    // 3. linux_banner's virtual address, translated with the CR3 QEMU reported.
    if let Some(regs) = vcpu0 {
        let va = banner_va;
        let (cr0, cr4, efer) = regs.paging_inputs().ok_or("CR0/CR4/EFER not reported")?;
        let mode = PagingMode::from_registers(cr0, cr4, efer);
        let cr3 = regs.get(Register::Cr3).ok_or("CR3 not reported")?;
        let t = translate(&vmi, mode, Gpa(cr3), Gva(va))?;
        let mut bytes = [0u8; 14];
        vmi.read_physical(t.gpa, &mut bytes)?;
        println!("\ntranslation ({mode:?}, CR3 {cr3:#x}):");
        println!(
            "  linux_banner {va:#x} -> physical {} ({:?} page, {}{}{})",
            t.gpa,
            t.page_size,
            if t.writable { "writable" } else { "read-only" },
            if t.user { ", user" } else { ", supervisor" },
            if t.executable {
                ", executable"
            } else {
                ", no-execute"
            },
        );
        println!(
            "  bytes there: {:?} — {}",
            String::from_utf8_lossy(&bytes),
            match banner_pa {
                Some(pa) if pa == t.gpa => "exactly where the scan found the banner".to_string(),
                Some(pa) => format!("a copy of the banner (the scan found {pa} first)"),
                None => "the scan found no banner".to_string(),
            }
        );
    }

    paused.resume()?;
    println!(
        "\nresumed; QEMU status: {}",
        vmi.status()
            .map(|s| s.status)
            .unwrap_or_else(|e| e.to_string())
    );

    // 4. A breakpoint on a kernel function the guest calls every second, then a few
    // single steps from there.
    if let Some(func) = breakpoint_target {
        breakpoint_and_steps(&vmi, func)?;
    }

    // 5. What this backend can and cannot do, row by row of LibVMI's checklist.
    let report = vmi.capabilities();
    let supported = report.rows().filter(|(_, s)| s.is_supported()).count();
    println!(
        "\ncapability report of {} ({supported} of {} rows supported):",
        vmi.name(),
        report.rows().count()
    );
    for line in report.to_string().lines().skip(1) {
        println!("  {line}");
    }
    Ok(())
}

/// Breaks on `func`, shows the INT3 event, then single-steps three instructions.
fn breakpoint_and_steps(vmi: &LegacyQemu, func: u64) -> Result {
    let gdb = vmi.gdb().ok_or("no GDB stub session")?;
    gdb.enable(&Monitor::Interrupt(InterruptKind::Int3))?;
    gdb.set_breakpoint(Breakpoint::at(Gva(func)))?;
    println!("\nbreakpoint on do_sys_openat2 ({func:#x}); waiting for the guest to hit it");
    let start = Instant::now();
    let Some(hit) = gdb.wait_event(Duration::from_secs(30))? else {
        gdb.clear_breakpoint(Breakpoint::at(Gva(func)))?;
        return Err("the breakpoint was not hit within 30 s".into());
    };
    if let EventKind::Breakpoint {
        gla,
        gfn,
        offset,
        insn_length,
    } = &hit.kind
    {
        println!(
            "  INT3 event after {:.1?} on vCPU {}: gla {gla} gfn {gfn} offset {offset:#x} \
             insn_length {insn_length}",
            start.elapsed(),
            hit.vcpu
        );
    }
    // Leave the breakpoint with single-stepping turned on.
    gdb.clear_breakpoint(Breakpoint::at(Gva(func)))?;
    hit.reply(Response::continue_().toggle_singlestep())?;
    for step in 1..=3 {
        let Some(ev) = gdb.wait_event(Duration::from_secs(10))? else {
            return Err("no single-step event within 10 s".into());
        };
        let rip = ev.registers.get(Register::Rip);
        if let EventKind::Singlestep { gla, .. } = &ev.kind {
            println!(
                "  step {step}: vCPU {} at {gla} (rip {})",
                ev.vcpu,
                rip.map_or("?".into(), |r| format!("{r:#x}"))
            );
        }
        let response = if step == 3 {
            Response::continue_().toggle_singlestep()
        } else {
            Response::continue_()
        };
        ev.reply(response)?;
    }
    gdb.disable(&Monitor::Interrupt(InterruptKind::Int3))?;
    println!("  single-stepping off, breakpoint removed, guest running");
    Ok(())
}

fn print_registers(vcpu: u32, r: &RegisterSnapshot) {
    println!("\nvCPU {vcpu}:");
    if let Some(g) = r.gprs {
        println!(
            "  rip {:016x}  rsp {:016x}  rflags {:08x}",
            g.rip, g.rsp, g.rflags
        );
        println!(
            "  rax {:016x}  rbx {:016x}  rcx {:016x}  rdx {:016x}",
            g.rax, g.rbx, g.rcx, g.rdx
        );
        println!(
            "  rsi {:016x}  rdi {:016x}  rbp {:016x}  r8  {:016x}",
            g.rsi, g.rdi, g.rbp, g.r8
        );
    }
    if let Some(c) = r.control {
        println!(
            "  cr0 {:08x}  cr2 {:016x}  cr3 {:016x}  cr4 {:08x}  cr8 {:x}",
            c.cr0, c.cr2, c.cr3, c.cr4, c.cr8
        );
    }
    if let Some(efer) = r.efer() {
        println!("  efer {efer:x}");
    }
    if let Some(s) = r.segments {
        println!(
            "  cs {:04x} (base {:x}, ar {:x})  ss {:04x}  gs base {:016x}  tr {:04x}",
            s.cs.selector,
            s.cs.base,
            s.cs.attributes.to_vmx_ar(),
            s.ss.selector,
            s.gs.base,
            s.tr.selector
        );
    }
    if let (Some(g), Some(i)) = (r.gdtr, r.idtr) {
        println!(
            "  gdtr {:016x}/{:x}  idtr {:016x}/{:x}",
            g.base, g.limit, i.base, i.limit
        );
    }
    if let Some(d) = r.debug {
        println!("  dr6 {:x}  dr7 {:x}", d.dr6, d.dr7);
    }
    let absent: Vec<_> = [
        ("MSRs other than EFER", r.msrs.is_empty()),
        ("XCR0", r.xcr0.is_none()),
    ]
    .iter()
    .filter(|(_, a)| *a)
    .map(|(n, _)| *n)
    .collect();
    if !absent.is_empty() {
        println!("  (not available from this backend: {})", absent.join(", "));
    }
}
