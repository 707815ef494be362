//! Like LibVMI's `map-addr`: translates a guest-virtual address with vCPU 0's page
//! tables (software walk) and, on kvmi-v7, with the host, and prints the bytes there.
//! `map-addr SOCKET [SECRET] [COUNT] VA` (COUNT: bytes to print, default 16).
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use vmi_core::prelude::*;

fn main() {
    let a = args::parse("map-addr");
    let va = Gva(a.extra.unwrap_or_else(|| args::die("map-addr needs a VA")));
    let vm = args::connect(&a);
    // vCPU 0's paging mode and CR3, read once so the walk and the read use the same.
    let kernel = vm.address_space(VcpuId(0)).unwrap_or_else(|e| args::die(e));
    let t = vm.translate_va(kernel, va).unwrap_or_else(|e| args::die(e));
    println!("{va} -> {} (software walk, {:?} page)", t.gpa, t.page_size);
    match vm.translate_gva(VcpuId(0), va) {
        Ok(gpa) => println!("{va} -> {gpa} (host)"),
        Err(e) => println!("host translation: {e}"),
    }
    let mut buf = vec![0u8; a.count.min(4096) as usize];
    vm.read_va(kernel, va, &mut buf)
        .unwrap_or_else(|e| args::die(e));
    println!("{:02x?}", buf);
}
