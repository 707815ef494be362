//! Like LibVMI's `dump-memory`: writes guest physical memory to a file, page by page,
//! zero-filling holes. `dump-memory SOCKET [SECRET] [MiB] > out` (default: 1 MiB).
#![allow(missing_docs)]

#[path = "common/args.rs"]
mod args;

use std::io::Write;
use vmi_core::{Error, Gpa, MemoryLayout, PhysicalMemory};

fn main() {
    let a = args::parse("dump-memory");
    let vm = args::connect(&a);
    let size = vm.memory_info().map(|m| m.ram_size()).unwrap_or(0);
    let limit = (a.count << 20).min(size);
    let mut out = std::io::stdout().lock();
    let (mut holes, mut page) = (0u64, vec![0u8; 4096]);
    let mut gpa = 0u64;
    while gpa < limit {
        match vm.read_physical(Gpa(gpa), &mut page) {
            Ok(()) => {}
            Err(Error::UnmappedPhysical { .. }) => {
                page.fill(0);
                holes += 1;
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(1);
            }
        }
        out.write_all(&page).expect("stdout");
        gpa += 4096;
    }
    eprintln!("dumped {limit} bytes of {size}, {holes} pages unbacked");
}
