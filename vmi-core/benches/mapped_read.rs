//! Bulk reads of guest RAM mapped into this process (`cargo bench -p vmi-core --bench
//! mapped_read`): 64 MiB read through [`MappedRegion::read`] — volatile word loads, as
//! memory the guest writes concurrently requires — beside the `memcpy` floor, a plain
//! `copy_nonoverlapping` of the same 64 MiB from the same mapping into the same buffer,
//! measured in the same run.
//!
//! The mapping is a `MAP_SHARED` memfd, like QEMU's `memory-backend-memfd` (the
//! vmi-legacy shared-RAM backend reads exactly such a mapping through `MappedRegion`).
#![allow(missing_docs)]

use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use vmi_core::{Gpa, MappedRegion};

const MIB64: usize = 64 << 20;
/// Where the region lies in guest physical memory (above 4 GiB, like high RAM).
const BASE: u64 = 0x1_0000_0000;

/// A `MAP_SHARED` memfd mapping of `len` bytes, every page touched.
struct Memfd {
    ptr: NonNull<u8>,
    len: usize,
}

impl Memfd {
    fn new(len: usize) -> Self {
        // SAFETY: the name is a NUL-terminated C string; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"vmi-core-bench".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        let size = libc::off_t::try_from(len).expect("RAM size");
        // SAFETY: `fd` is a memfd this function owns.
        assert_eq!(unsafe { libc::ftruncate(fd, size) }, 0, "ftruncate");
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap");
        // SAFETY: the mapping keeps the memfd alive; the descriptor is ours to close.
        unsafe { libc::close(fd) };
        let ptr = NonNull::new(p.cast::<u8>()).expect("mmap address");
        // SAFETY: the `len` bytes just mapped writable; nothing else uses them yet.
        unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0x5a, len) };
        Self { ptr, len }
    }
}

impl Drop for Memfd {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once (no region outlives `self`).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let ram = Memfd::new(MIB64);
    // SAFETY: the mapping stays mapped while `ram` lives, which outlives `region`.
    let region = unsafe { MappedRegion::new(Gpa(BASE), ram.ptr, ram.len) };
    let mut buf = vec![0u8; MIB64];

    let mut g = c.benchmark_group("read_64m");
    g.throughput(Throughput::Bytes(MIB64 as u64));
    g.bench_function("memcpy_floor", |b| {
        b.iter(|| {
            // SAFETY: both ranges are 64 MiB, distinct, and nothing writes the mapping
            // during the benchmark (the floor is the copy without volatile accesses).
            unsafe {
                std::ptr::copy_nonoverlapping(black_box(ram.ptr.as_ptr()), buf.as_mut_ptr(), MIB64)
            };
            black_box(&buf);
        })
    });
    g.bench_function("mapped_region", |b| {
        b.iter(|| {
            region.read(black_box(Gpa(BASE)), &mut buf).unwrap();
            black_box(&buf);
        })
    });
    g.finish();
    drop(buf);
    drop(ram);
}
