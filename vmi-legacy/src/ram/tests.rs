//! The three strategies against files and memory of this process.

use std::fs::File;
use std::path::PathBuf;

use vmi_core::memory::{MapPhysical, MemoryLayout};
use vmi_core::{Error, Gpa, PhysicalMemory, PhysicalMemoryWrite};

use crate::layout::RamLayout;

use super::qmp::make_scratch_dir;
use super::*;
use crate::layout::RamRange;
use std::io::Write;

fn range(start: u64, len: u64, off: u64) -> RamRange {
    RamRange {
        gpa_start: Gpa(start),
        len,
        backend_offset: off,
        backend_name: "ram0".into(),
        rom: false,
    }
}

/// A small PC-like layout over a 64 KiB backend: GPA 0..0x4000 → offset 0, a hole,
/// GPA 0x8000..0xc000 → offset 0x8000, and GPA 0x10000..0x18000 → offset 0x4000
/// (like RAM above 4 GiB, which continues the backend after the hole).
fn layout() -> RamLayout {
    RamLayout::new(vec![
        range(0, 0x4000, 0),
        range(0x8000, 0x4000, 0x8000),
        range(0x10000, 0x4000, 0x4000),
    ])
    .unwrap()
}

fn backend() -> Vec<u8> {
    (0..0x10000u32)
        .map(|i| (i.wrapping_mul(7) >> 3) as u8)
        .collect()
}

fn temp_file(bytes: &[u8]) -> (PathBuf, PathBuf) {
    let dir = make_scratch_dir(&std::env::temp_dir()).unwrap();
    let path = dir.join("ram");
    File::create(&path).unwrap().write_all(bytes).unwrap();
    (dir, path)
}

fn check_reads(m: &(impl PhysicalMemory + ?Sized), back: &[u8]) {
    let mut b = [0u8; 32];
    m.read_physical(Gpa(0x10), &mut b).unwrap();
    assert_eq!(&b[..], &back[0x10..0x30]);
    m.read_physical(Gpa(0x10010), &mut b).unwrap();
    assert_eq!(&b[..], &back[0x4010..0x4030]);
    m.read_physical(Gpa(0xbff0), &mut b[..16]).unwrap();
    assert_eq!(&b[..16], &back[0xbff0..0xc000]);
    assert!(matches!(
        m.read_physical(Gpa(0x3ff0), &mut b),
        Err(Error::UnmappedPhysical { .. })
    ));
    assert!(m.read_physical(Gpa(0x4000), &mut b).is_err());
    assert!(m.read_physical(Gpa(0x13ff0), &mut b).is_err());
    assert!(m.read_physical(Gpa(u64::MAX - 4), &mut b).is_err());
    let mut whole = vec![0u8; 0x4000];
    m.read_physical(Gpa(0x8000), &mut whole).unwrap();
    assert_eq!(&whole[..], &back[0x8000..0xc000]);
    let (mut x, mut y) = ([0u8; 8], [0u8; 8]);
    m.read_physical_many(&mut [(Gpa(0x20), &mut x[..]), (Gpa(0x10020), &mut y[..])])
        .unwrap();
    assert_eq!(&x[..], &back[0x20..0x28]);
    assert_eq!(&y[..], &back[0x4020..0x4028]);
}

#[test]
fn shared_ram_over_a_file() {
    let back = backend();
    let (dir, path) = temp_file(&back);
    let ram = SharedRam::open_file(&path, layout(), true).unwrap();
    check_reads(&ram, &back);
    ram.write_physical(Gpa(0x10000), b"hello").unwrap();
    assert!(ram.write_physical(Gpa(0x3ffe), b"hello").is_err());
    let regions = ram.mapped_regions().unwrap();
    assert_eq!(regions.len(), 3);
    let mut b = [0u8; 5];
    regions[2].read(Gpa(0x10000), &mut b).unwrap();
    assert_eq!(&b, b"hello");
    drop(ram);
    // MAP_SHARED: the write reached the file.
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(&on_disk[0x4000..0x4005], b"hello");

    let ro = SharedRam::open_file(&path, layout(), false).unwrap();
    assert!(matches!(
        ro.write_physical(Gpa(0), b"x"),
        Err(Error::Unsupported { .. })
    ));
    assert_eq!(ro.memory_info().unwrap().ram_size(), 0xc000);
    drop(ro);

    // A file shorter than the layout needs is refused (it would SIGBUS).
    let short = dir.join("short");
    File::create(&short)
        .unwrap()
        .write_all(&back[..0x8000])
        .unwrap();
    assert!(SharedRam::open_file(&short, layout(), false).is_err());
    // Several backends at once are refused.
    let mut two = layout().ranges().to_vec();
    two.push(RamRange {
        backend_name: "vga.vram".into(),
        ..range(0x20000, 0x1000, 0)
    });
    assert!(SharedRam::open_file(&path, RamLayout::new(two).unwrap(), false).is_err());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn shared_ram_through_proc_fd_of_a_memfd() {
    let back = backend();
    // SAFETY: a valid NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"vmi-test-ram".as_ptr(), 0) };
    assert!(fd >= 0);
    // SAFETY: `fd` is a fresh descriptor we own.
    let mut f = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    f.write_all(&back).unwrap();
    let pid = std::process::id() as libc::pid_t;
    let found = find_memfd(pid, Some("vmi-test-ram"), back.len() as u64).unwrap();
    assert!(found.target.starts_with("/memfd:vmi-test-ram"));
    let ram = SharedRam::open_memfd(pid, Some("vmi-test-ram"), back.len() as u64, layout(), true)
        .unwrap();
    check_reads(&ram, &back);
    assert!(find_memfd(pid, None, 12345).is_err());
    drop(f);
}

#[test]
fn proc_mem_on_our_own_process() {
    let mut back = backend();
    let pid = std::process::id() as libc::pid_t;
    let base = back.as_mut_ptr() as u64;
    let pm = ProcMem::new(pid, base, layout(), true).unwrap();
    check_reads(&pm, &back.clone());
    pm.write_physical(Gpa(0x10001), b"abc").unwrap();
    // SAFETY: reading our own buffer after the kernel wrote to it through
    // process_vm_writev; volatile so the compiler does not assume it unchanged.
    let v = unsafe { std::ptr::read_volatile(back.as_ptr().add(0x4001)) };
    assert_eq!(v, b'a');
    assert_eq!(&back[0x4001..0x4004], b"abc");
    let ro = ProcMem::new(pid, base, layout(), false).unwrap();
    assert!(ro.write_physical(Gpa(0), b"x").is_err());
    // A remote address that is not mapped fails cleanly.
    let bad = ProcMem::new(pid, 0x1000, layout(), false).unwrap();
    let mut b = [0u8; 8];
    assert!(matches!(
        bad.read_physical(Gpa(0), &mut b),
        Err(Error::Backend { .. })
    ));
    // Many small requests (more than IOV_MAX segments) in one batch.
    let mut bufs: Vec<[u8; 4]> = vec![[0; 4]; 1500];
    let mut reqs: Vec<(Gpa, &mut [u8])> = bufs
        .iter_mut()
        .enumerate()
        .map(|(i, b)| (Gpa((i as u64 * 8) % 0x4000), &mut b[..]))
        .collect();
    pm.read_physical_many(&mut reqs).unwrap();
    for (i, b) in bufs.iter().enumerate() {
        let o = (i * 8) % 0x4000;
        assert_eq!(&b[..], &back[o..o + 4]);
    }
}

#[test]
fn proc_mem_from_maps_of_a_mapped_file() {
    let back = backend();
    let (dir, path) = temp_file(&back);
    let ram = SharedRam::open_file(&path, layout(), false).unwrap();
    let pid = std::process::id() as libc::pid_t;
    let pm = ProcMem::from_maps(pid, path.to_str().unwrap(), layout(), false).unwrap();
    check_reads(&pm, &back);
    assert!(ProcMem::from_maps(pid, "/nonexistent", layout(), false).is_err());
    drop(ram);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn everything_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<SharedRam>();
    check::<ProcMem>();
    check::<QmpMemory>();
}
