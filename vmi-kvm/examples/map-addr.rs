//! Like LibVMI's `map-addr`: translates a guest-virtual address with vCPU 0's page
//! tables (software walk) and, on kvmi-v7, with the host, and prints the bytes there.
//! `map-addr SOCKET [SECRET] [COUNT] VA` (COUNT: bytes to print, default 16).
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use vmi_core::{
    Gpa, Gva, HostTranslation, PagingMode, PhysicalMemory, ReadRegisters, RegisterGroups,
    Translator, VcpuId,
};

fn main() {
    let a = args::parse("map-addr");
    let va = Gva(a.extra.unwrap_or_else(|| args::die("map-addr needs a VA")));
    let vm = args::connect(&a);
    let r = vm
        .registers(
            VcpuId(0),
            RegisterGroups::CONTROL | RegisterGroups::EFER,
            &[],
        )
        .unwrap_or_else(|e| args::die(e));
    let (cr0, cr4, efer) = r
        .paging_inputs()
        .unwrap_or_else(|| args::die("no CR0/CR4/EFER"));
    let tr = Translator::from(PagingMode::from_registers(cr0, cr4, efer));
    let cr3 = Gpa(r.control.map_or(0, |c| c.cr3));
    let t = tr
        .translate(&vm, tr.root_base(cr3), va)
        .unwrap_or_else(|e| args::die(e));
    println!("{va} -> {} (software walk, {:?} page)", t.gpa, t.page_size);
    match vm.translate_gva(VcpuId(0), va) {
        Ok(gpa) => println!("{va} -> {gpa} (host)"),
        Err(e) => println!("host translation: {e}"),
    }
    let mut buf = vec![0u8; a.count.min(4096) as usize];
    vm.read_physical(t.gpa, &mut buf)
        .unwrap_or_else(|e| args::die(e));
    println!("{:02x?}", buf);
}
