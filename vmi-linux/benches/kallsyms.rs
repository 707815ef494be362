//! kallsyms costs (`VMI_LINUX_KERNELS=/path cargo bench -p vmi-linux --bench kallsyms`):
//! decoding each kernel's tables from its vmlinux image (with the anchors a bootstrap has, and
//! without) beside one memcpy of that image,
//! and symbol lookups both ways on the decoded table beside their floors — a
//! `HashMap<u64, u64>` lookup for name → VA and a binary search of a plain `[u64]` for
//! VA → name — measured in the same run.
//!
//! Lookups cycle through a shuffled list of every symbol name (resp. an address inside each
//! symbol), so neither the caches nor the branch predictor see one key repeatedly.
#![allow(missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{Criterion, Throughput};
use vmi_linux::kallsyms::{decode, Anchors};
use vmi_linux::ImageCopy;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

fn main() {
    let Some(dir) = std::env::var_os("VMI_LINUX_KERNELS").map(PathBuf::from) else {
        eprintln!("kallsyms bench skipped: set VMI_LINUX_KERNELS to a kernel matrix directory");
        return;
    };
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    for suite in ["bullseye", "bookworm", "trixie", "sid"] {
        let Ok(elf) = std::fs::read(dir.join(suite).join("vmlinux")) else {
            eprintln!("{suite}: no vmlinux, skipped");
            continue;
        };
        let image = ImageCopy::from_vmlinux(&elf, 1 << 30).expect("vmlinux lays out");
        drop(elf);
        // The anchors a bootstrap has: `_text` at the image base, the first banner found.
        let anchors = Anchors {
            text: Some(image.base()),
            banner: memchr::memmem::find(image.bytes(), b"Linux version ").map(|o| image.va_of(o)),
        };
        let (table, report) = decode(&image, anchors).expect("kallsyms decodes");
        eprintln!("{suite}: {}", report.description);

        let mut g = c.benchmark_group(format!("kallsyms/{suite}"));
        g.throughput(Throughput::Bytes(image.len() as u64));
        g.bench_function("image_memcpy_floor", |b| {
            let mut dst = vec![0u8; image.len()];
            b.iter(|| dst.copy_from_slice(black_box(image.bytes())))
        });
        g.bench_function("decode", |b| {
            b.iter(|| decode(black_box(&image), anchors).map(|(t, _)| t.len()))
        });
        g.bench_function("decode_without_anchors", |b| {
            b.iter(|| decode(black_box(&image), Anchors::default()).map(|(t, _)| t.len()))
        });
        g.finish();

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut names: Vec<(String, u64)> = table
            .iter()
            .map(|s| (s.name.to_owned(), s.address))
            .collect();
        rng.shuffle(&mut names);
        let floor_map: HashMap<u64, u64> = names
            .iter()
            .enumerate()
            .map(|(i, (_, a))| (i as u64, *a))
            .collect();
        let mut addrs: Vec<u64> = table.iter().map(|s| s.address).collect();
        addrs.dedup();
        let sorted = addrs.clone();
        rng.shuffle(&mut addrs);
        let probes: Vec<u64> = addrs.iter().map(|a| a + rng.next() % 16).collect();

        let mut g = c.benchmark_group(format!("lookup/{suite}"));
        g.throughput(Throughput::Elements(1));
        let mut i = 0usize;
        g.bench_function("name_to_va", |b| {
            b.iter(|| {
                i = (i + 1) % names.len();
                table.address_of(black_box(&names[i].0))
            })
        });
        let mut i = 0u64;
        let n = names.len() as u64;
        g.bench_function("hashmap_u64_floor", |b| {
            b.iter(|| {
                i = (i + 1) % n;
                floor_map.get(&black_box(i)).copied()
            })
        });
        let mut i = 0usize;
        g.bench_function("va_to_name", |b| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                table
                    .symbol_at(black_box(probes[i]))
                    .map(|(s, off)| (s.name.len(), off))
            })
        });
        let mut i = 0usize;
        g.bench_function("slice_binary_search_floor", |b| {
            b.iter(|| {
                i = (i + 1) % probes.len();
                sorted.partition_point(|&a| a <= black_box(probes[i]))
            })
        });
        g.finish();
    }
    c.final_summary();
}
