//! `map-addr`: translates a guest virtual address to a physical one and shows the page
//! walk, like LibVMI's `map-addr`.
//!
//! ```text
//! map-addr QMP_SOCKET VA [--vcpu N] [--cr3 CR3] [--gdb GDB_SOCKET] [--qmp-timeout SECS]
//! ```
//!
//! `VA` and `CR3` are hex, with or without `0x` (`ffffffff81000000` as `/proc/kallsyms`
//! prints it).
//!
//! The paging mode and CR3 come from the vCPU (QMP `info registers`, or the gdbstub with
//! `--gdb`); `--cr3` walks another address space in the same mode. The walk is
//! `vmi-core`'s ([`vmi_core::translate`]), reading the page tables from guest RAM the
//! fastest way the session has (a shared backend, QEMU's process memory for anonymous
//! RAM, else QMP; the path taken goes to stderr); the 16 bytes at the address are read
//! with [`VirtualMemory`].

mod common;

use std::path::PathBuf;
use std::process::ExitCode;

use common::{connect, parse_address, usage, Args, Failure, Needs};
use vmi_core::{AddressSpace, Gpa, Gva, PagingMode, VcpuId, VirtualMemory};

const USAGE: &str = "usage: legacy-map-addr QMP_SOCKET VA [--vcpu N] [--cr3 CR3] [--gdb GDB_SOCKET] [--qmp-timeout SECS]
  VA and CR3 are hex, with or without 0x (as /proc/kallsyms prints them)";

fn main() -> ExitCode {
    common::main_with("map-addr", run)
}

fn level_name(mode: PagingMode, level: u8) -> &'static str {
    match (mode, level) {
        (_, 5) => "PML5E",
        (_, 4) => "PML4E",
        (PagingMode::Pae { .. }, 3) => "PDPTE (PAE)",
        (_, 3) => "PDPTE",
        (_, 2) => "PDE",
        (_, 1) => "PTE",
        _ => "?",
    }
}

/// The entry's flags as letters: P, W, U, A, D, PS, XD.
fn flags(v: u64) -> String {
    let bit = |n: u32, c: &'static str| if v >> n & 1 == 1 { c } else { "-" };
    [
        bit(0, "P"),
        bit(1, "W"),
        bit(2, "U"),
        bit(5, "A"),
        bit(6, "D"),
        bit(7, "S"),
        bit(63, "X"),
    ]
    .concat()
}

fn run() -> Result<(), Failure> {
    let args = Args::parse(&["vcpu", "cr3", "gdb"], &[], USAGE)?;
    let (Some(qmp), Some(va)) = (args.path(0), args.positional.get(1)) else {
        return Err(usage(USAGE));
    };
    let va =
        parse_address(va).ok_or_else(|| usage(&format!("{va:?} is not a hex address\n{USAGE}")))?;
    let vcpu = match args.option("vcpu") {
        Some(v) => VcpuId(v.parse().map_err(|_| usage("--vcpu takes a number"))?),
        None => VcpuId(0),
    };
    let gdb = args.option("gdb").map(PathBuf::from);
    let vm = connect(&qmp, gdb.as_deref(), Needs::Qmp, args.timeout()?)?;
    eprintln!("guest RAM through {}", vm.ram_access().kind());
    let mut space = vm.address_space(vcpu)?;
    if let Some(cr3) = args.option("cr3") {
        let cr3 = parse_address(cr3)
            .ok_or_else(|| usage(&format!("--cr3 takes a hex address, not {cr3:?}\n{USAGE}")))?;
        space = AddressSpace::new(space.mode, Gpa(cr3));
    }
    println!(
        "vcpu {}: {:?} paging, CR3 {:#x}",
        vcpu.raw(),
        space.mode,
        space.cr3.0
    );
    let t = match vm.translate_va(space, Gva(va)) {
        Ok(t) => t,
        Err(e) => return Err(format!("{va:#x} does not translate: {e}").into()),
    };
    for e in t.entries() {
        println!(
            "  {:<12} @ {:#014x} = {:#018x}  {}",
            level_name(space.mode, e.level),
            e.gpa.0,
            e.value,
            flags(e.value)
        );
    }
    println!(
        "{va:#x} -> {:#x} ({:?} page, {}{}{})",
        t.gpa.0,
        t.page_size,
        if t.writable { "writable" } else { "read-only" },
        if t.user { ", user" } else { ", supervisor" },
        if t.executable {
            ", executable"
        } else {
            ", no-execute"
        }
    );
    let mut bytes = [0u8; 16];
    vm.read_va(space, Gva(va), &mut bytes)?;
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02x}")).collect();
    println!("bytes at {va:#x}: {}", hex.join(" "));
    Ok(())
}
