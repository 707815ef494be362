//! Address-translation costs (`cargo bench -p vmi-core --bench translate`): a
//! [`TranslationCache`] hit beside an uncached 4-level walk, over a [`SparseMemory`] and
//! over a shared memfd mapping laid out like QEMU's guest RAM, with the physical floor —
//! copying the 32 bytes of paging entries a 4-level walk reads — measured in the same run.
//!
//! Each translation is consumed the way a tool does (`translate(..)?.gpa`); keeping the
//! whole [`Translation`](vmi_core::Translation) adds a copy of its ~150 bytes.
//!
//! The tables map `PAGES` 4 KiB pages spread over the whole lower half (distinct PML4,
//! PDPT and PD entries), and every iteration translates the next address of a shuffled
//! list, so neither the cache nor the CPU sees the same key twice in a row.
#![allow(missing_docs)]

use std::hint::black_box;
use std::ptr::NonNull;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use vmi_core::{
    translate, Error, Gpa, Gva, PagingMode, PhysicalMemory, Result, SparseMemory, TranslationCache,
};

/// Translated pages: well inside the cache's default capacity.
const PAGES: usize = 1024;
/// Bytes of guest "RAM" the tables and data pages live in.
const RAM: usize = 64 << 20;
const MODE: PagingMode = PagingMode::Ia32e { nxe: true };
const CR3: u64 = 0x1000;
/// Present, writable, user.
const PWU: u64 = 0b111;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// Guest RAM in a `MAP_SHARED` memfd mapping, like QEMU's `memory-backend-memfd`
/// (the vmi-legacy shared-RAM backend reads exactly such a mapping).
struct MemfdRam {
    ptr: NonNull<u8>,
    len: usize,
}

impl MemfdRam {
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
        Self {
            ptr: NonNull::new(p.cast()).expect("mmap address"),
            len,
        }
    }

    fn range(&self, gpa: Gpa, len: usize) -> Option<usize> {
        let start = usize::try_from(gpa.0).ok()?;
        (start.checked_add(len)? <= self.len).then_some(start)
    }

    fn write(&self, gpa: Gpa, data: &[u8]) {
        let start = self.range(gpa, data.len()).expect("inside the RAM");
        // SAFETY: `start..start + data.len()` is inside the mapping (checked above).
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(start), data.len())
        };
    }
}

impl PhysicalMemory for MemfdRam {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        let start = self.range(gpa, buf.len()).ok_or(Error::UnmappedPhysical {
            gpa,
            len: buf.len() as u64,
        })?;
        // SAFETY: the range is inside the mapping (checked above); nothing else writes
        // it during the benchmark.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(start), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }
}

impl Drop for MemfdRam {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Builds 4-level tables mapping `PAGES` random canonical lower-half addresses, each to
/// its own data frame; calls `write(gpa, bytes)` for every entry. Returns the addresses,
/// shuffled.
fn build_tables(mut write: impl FnMut(Gpa, &[u8])) -> Vec<Gva> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // Table frames are allocated on demand after the root; data frames from 32 MiB.
    let mut next_table = CR3 + 0x1000;
    let mut next_data = 32u64 << 20;
    let mut tables: std::collections::HashMap<(u8, u64), u64> = Default::default();
    let mut gvas = Vec::with_capacity(PAGES);
    while gvas.len() < PAGES {
        let gva = rng.next() & 0x0000_7fff_ffff_f000;
        if gvas.contains(&Gva(gva)) {
            continue;
        }
        let mut table = CR3;
        for level in (1..=4u8).rev() {
            let index = (gva >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff;
            let target = if level == 1 {
                let f = next_data;
                next_data += 0x1000;
                f
            } else {
                // One table per distinct path from the root (all index bits above).
                *tables
                    .entry((level, gva >> (12 + 9 * (u32::from(level) - 1))))
                    .or_insert_with(|| {
                        let f = next_table;
                        next_table += 0x1000;
                        f
                    })
            };
            write(Gpa(table + index * 8), &(target | PWU).to_le_bytes());
            table = target;
        }
        assert!(next_table < 32 << 20 && next_data < RAM as u64);
        gvas.push(Gva(gva | (rng.next() & 0xff8)));
    }
    gvas
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let mut sparse = SparseMemory::new();
    let gvas = build_tables(|gpa, bytes| sparse.write(gpa, bytes));
    let memfd = MemfdRam::new(RAM);
    assert_eq!(build_tables(|gpa, bytes| memfd.write(gpa, bytes)), gvas);
    let memories: [(&str, &dyn PhysicalMemory); 2] = [("sparse", &sparse), ("memfd", &memfd)];
    for (name, mem) in memories {
        // Both memories hold the same tables: the same translations.
        for &gva in &gvas {
            assert!(translate(mem, MODE, Gpa(CR3), gva).is_ok(), "{name} {gva}");
        }
    }

    let mut g = c.benchmark_group("translate");
    g.throughput(Throughput::Elements(1));

    // Floor: the bytes a 4-level walk must read, copied from four random places of a
    // buffer as large as the RAM (no translation logic at all).
    {
        let src = vec![0x5au8; RAM];
        let mut rng = Rng(7);
        let offsets: Vec<usize> = (0..4096)
            .map(|_| (rng.next() as usize % (RAM / 8)) * 8)
            .collect();
        let mut i = 0;
        g.bench_function("memcpy_4x8_floor", |b| {
            b.iter(|| {
                let mut e = [0u8; 32];
                for (k, chunk) in e.chunks_exact_mut(8).enumerate() {
                    let off = offsets[(i + k) % offsets.len()];
                    chunk.copy_from_slice(&src[off..off + 8]);
                }
                i = (i + 4) % offsets.len();
                black_box(e)
            })
        });
    }

    for (name, mem) in memories {
        let mut i = 0;
        g.bench_function(format!("walk/{name}"), |b| {
            b.iter(|| {
                let gva = gvas[i % PAGES];
                i += 1;
                black_box(translate(mem, MODE, Gpa(CR3), black_box(gva)).unwrap().gpa)
            })
        });
    }

    for (name, mem) in memories {
        let mut cache = TranslationCache::new();
        for &gva in &gvas {
            cache.translate(mem, MODE, Gpa(CR3), gva).unwrap();
        }
        let misses = cache.misses();
        let mut i = 0;
        g.bench_function(format!("cached_hit/{name}"), |b| {
            b.iter(|| {
                let gva = gvas[i % PAGES];
                i += 1;
                black_box(
                    cache
                        .translate(mem, MODE, Gpa(CR3), black_box(gva))
                        .unwrap()
                        .gpa,
                )
            })
        });
        assert_eq!(cache.misses(), misses, "every timed lookup was a hit");
    }
    g.finish();

    // Reading one u64 through a translation: cached read_virtual beside the physical read.
    let mut g = c.benchmark_group("read_u64");
    g.throughput(Throughput::Elements(1));
    {
        let mut cache = TranslationCache::new();
        let gpas: Vec<Gpa> = gvas
            .iter()
            .map(|&gva| cache.translate(&memfd, MODE, Gpa(CR3), gva).unwrap().gpa)
            .collect();
        let mut i = 0;
        g.bench_function("physical/memfd", |b| {
            b.iter(|| {
                let gpa = gpas[i % PAGES];
                i += 1;
                black_box(memfd.read_u64(black_box(gpa)).unwrap())
            })
        });
        let mut i = 0;
        g.bench_function("virtual_cached/memfd", |b| {
            b.iter(|| {
                let gva = gvas[i % PAGES];
                i += 1;
                let mut buf = [0u8; 8];
                cache
                    .read_virtual(&memfd, MODE, Gpa(CR3), black_box(gva), &mut buf)
                    .unwrap();
                black_box(u64::from_le_bytes(buf))
            })
        });
    }
    g.finish();
    c.final_summary();
}
