//! vmi-linux on a real guest, beside floors measured in the same run (`cargo xtask bench
//! -p vmi-tests --bench linux`, which provisions the kernel matrix and sets its variables).
//!
//! The guest is the 6.1 kernel of the matrix (Debian bookworm), read through vmi-legacy
//! with shared RAM, paused once for the whole measurement (nothing changes under the
//! reads, so every iteration does the same work):
//!
//! - `bootstrap/attach`: [`Linux::attach`] until symbols and types are ready (registers,
//!   page-table walk and image copy, banner, BTF, kallsyms, `init_task` check);
//!   `bootstrap/image_copy`: only the step that finds and copies the kernel image
//!   ([`kernel_map::locate_kernel`]); floor `bootstrap/image_memcpy`: one `memcpy` of a
//!   buffer as large as the image copy into a buffer allocated once, and
//!   `bootstrap/image_memcpy_fresh`, the same into freshly allocated memory (as the image
//!   copy does: each page is faulted in and zeroed by the kernel first).
//! - `processes/list`: [`Linux::processes`], every thread-group leader with its fields.
//! - `lookup/*`: symbols both ways over the kernel's whole table, keys in shuffled order
//!   (so neither caches nor the branch predictor see one key twice in a row); floors: a
//!   `HashMap<u64, u64>` of as many entries, and a binary search of a sorted `Vec<u64>`.
//! - `dump/*`: vmi-linux on a QEMU ELF dump of the same paused guest (attach, then the
//!   process list), and, with `VMI_VOLATILITY` naming Volatility 3's `vol`, Volatility's
//!   `linux.pslist` on that dump with the ISF [`Linux::write_isf`] exported (a process per
//!   run: interpreter start, ISF load, stacking and the walk; not in criterion, timed
//!   rounds printed).
//!
//! After the attach group, 30 paired rounds run the memcpy (fastest of four), the memcpy
//! into fresh memory, the image copy and the attach back to back, so that the bar's ratio
//! (attach / memcpy) is taken between neighbours in time: on a shared host the memory
//! bandwidth a memcpy gets drifts between criterion groups (one run measured its memcpy
//! at 12 ms, the next at 4 ms).
//!
//! At the end a summary prints each median and the ratios the bars are stated in; absolute
//! times differ between runs and machines, ratios within one run are what to compare.
#![allow(missing_docs)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, SamplingMode, Throughput};
use vmi_core::VcpuControl;
use vmi_legacy::{LegacyConfig, LegacyQemu, RamSource};
use vmi_linux::kernel_map::{self, CopyExtent};
use vmi_linux::{Linux, LinuxOptions};
use vmi_tests::matrix::kernels_dir_or_skip;
use vmi_tests::{dump, volatility, Guest, GuestOptions};

/// The matrix suite benchmarked: Debian bookworm, Linux 6.1.
const SUITE: &str = "bookworm";

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

/// Per-iteration times of every sample criterion takes (warm-up included), by benchmark:
/// the summary's medians.
#[derive(Default)]
struct Samples(RefCell<BTreeMap<String, Vec<f64>>>);

impl Samples {
    /// Benchmarks `f` as `group/name` and records each sample's time per iteration.
    fn bench<R>(
        &self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        group: &str,
        name: &str,
        mut f: impl FnMut() -> R,
    ) {
        let key = format!("{group}/{name}");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(f());
                }
                let elapsed = start.elapsed();
                self.0
                    .borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .push(elapsed.as_secs_f64() / iters as f64);
                elapsed
            })
        });
    }

    /// As [`Self::bench`] for routines whose result is large (a kernel image copy): each
    /// iteration is timed alone and its result dropped outside the timing (freeing
    /// tens of MiB is not part of what is measured).
    fn bench_large_drop<R>(
        &self,
        g: &mut BenchmarkGroup<'_, WallTime>,
        group: &str,
        name: &str,
        mut f: impl FnMut() -> R,
    ) {
        let key = format!("{group}/{name}");
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    let r = black_box(f());
                    elapsed += start.elapsed();
                    drop(r);
                }
                self.0
                    .borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .push(elapsed.as_secs_f64() / iters as f64);
                elapsed
            })
        });
    }

    /// The median time per iteration of `key`, in seconds.
    fn median(&self, key: &str) -> Option<f64> {
        let map = self.0.borrow();
        let mut v = map.get(key)?.clone();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }
}

fn main() {
    if let Ok(mode) = std::env::var(FRESH_PROCESS_MODE) {
        return fresh_process_sample(&mode);
    }
    let Some(_) = kernels_dir_or_skip("bench linux") else {
        return;
    };
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let samples = Samples::default();

    let guest = Guest::launch(GuestOptions::for_matrix_kernel(SUITE)).expect("launching the guest");
    guest.wait_ready().expect("guest boot");
    // First attaches, each in a process of its own, before this process connects (QMP
    // takes one client at a time).
    let fresh = fresh_process_rounds(&guest);
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    cfg.ram = RamSource::File(guest.ram_path().to_path_buf());
    cfg.writable = false;
    let vm = LegacyQemu::connect(cfg).expect("QMP session");
    let paused = vm.pause().expect("pausing the guest");

    // The first attach of this process on a fresh connection: the shared-RAM mapping's
    // pages and this process's heap are touched for the first time (one sample, printed).
    let start = Instant::now();
    let linux = Linux::attach(&vm, LinuxOptions::default()).expect("attach");
    let first_attach = start.elapsed().as_secs_f64();
    println!("{SUITE}: {}\n{}", linux.kernel().release, linux.report());
    let facts = kernel_map::vcpu_facts(&vm, LinuxOptions::default().vcpu).expect("registers");
    let max = LinuxOptions::default().max_image_size;
    // The floors copy as much as the whole image (what a copy of it faults in), not
    // only the window attach now copies.
    let image_len = kernel_map::locate_kernel(&vm, &facts, max, CopyExtent::Whole)
        .expect("kernel image")
        .image
        .mapped_len;
    println!(
        "{SUITE}: attach copied {:.1} MiB of the image",
        linux.image().len() as f64 / (1 << 20) as f64
    );
    let pids: Vec<u32> = linux
        .processes()
        .expect("processes")
        .iter()
        .map(|p| p.pid)
        .collect();
    let task_count = pids.len();
    println!(
        "{SUITE}: kernel image copy {:.1} MiB, {} symbols, {task_count} processes",
        image_len as f64 / (1 << 20) as f64,
        linux.symbols().len()
    );

    let paired;
    {
        let name = "bootstrap";
        let mut g = c.benchmark_group(name);
        g.sampling_mode(SamplingMode::Flat);
        g.throughput(Throughput::Bytes(image_len as u64));
        // A source that is not all zeros (the kernel allocator's zero pages would make a
        // fresh `vec![0; n]` read from one shared page), touched before the first copy.
        let src: Vec<u8> = (0..image_len).map(|i| (i * 7 + 1) as u8).collect();
        let mut dst = vec![0u8; image_len];
        samples.bench(&mut g, name, "image_memcpy", || {
            dst.copy_from_slice(black_box(&src));
            dst[image_len / 2]
        });
        // The same copy into fresh memory, as the image copy allocates its buffer: every
        // 4 KiB page is then faulted in and zeroed by the kernel first.
        samples.bench_large_drop(&mut g, name, "image_memcpy_fresh", || {
            let mut fresh = vec![0u8; image_len];
            fresh.copy_from_slice(black_box(&src));
            fresh
        });
        samples.bench_large_drop(&mut g, name, "image_copy", || {
            kernel_map::locate_kernel(&vm, &facts, max, CopyExtent::Window).expect("kernel image")
        });
        samples.bench_large_drop(&mut g, name, "attach", || {
            Linux::attach(&vm, LinuxOptions::default()).expect("attach")
        });
        g.finish();
        paired = paired_rounds(
            &src,
            &mut dst,
            || {
                kernel_map::locate_kernel(&vm, &facts, max, CopyExtent::Window)
                    .expect("kernel image")
            },
            || Linux::attach(&vm, LinuxOptions::default()).expect("attach"),
        );
        drop((src, dst));
        // Where a warm attach spends its time (the first one above also faulted the
        // shared RAM mapping in).
        let warm = Linux::attach(&vm, LinuxOptions::default()).expect("attach");
        let phases: Vec<String> = warm
            .report()
            .timings
            .iter()
            .map(|(n, d)| format!("{n} {:.1} ms", d.as_secs_f64() * 1e3))
            .collect();
        println!(
            "bootstrap/attach phases (one warm attach): {}",
            phases.join(", ")
        );
    }

    {
        let name = "processes";
        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Elements(task_count as u64));
        samples.bench(&mut g, name, "list", || {
            linux.processes().expect("processes").len()
        });
        g.finish();
    }

    lookups(&mut c, &samples, &linux);

    // The same paused guest through a dump: vmi-linux, and Volatility 3 for scale.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-linux");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let elf = dir.join(format!("{SUITE}.elf"));
    let _ = std::fs::remove_file(&elf);
    dump::dump_guest_memory_with(&mut vm.qmp(), &elf).expect("dump-guest-memory");
    let isf = dir.join(format!("{SUITE}.json"));
    let file = std::fs::File::create(&isf).expect("ISF file");
    let mut out = std::io::BufWriter::new(file);
    linux.write_isf(&mut out).expect("ISF export");
    std::io::Write::flush(&mut out).expect("ISF written");
    drop(out);
    drop(linux);
    drop(paused);
    drop(vm);
    drop(guest);

    let dumped = vmi_dump::ElfDump::open(&elf).expect("opening the dump");
    {
        let name = "dump";
        let mut g = c.benchmark_group(name);
        g.sampling_mode(SamplingMode::Flat);
        g.sample_size(10);
        samples.bench_large_drop(&mut g, name, "attach", || {
            Linux::attach(&dumped, LinuxOptions::default()).expect("attach to the dump")
        });
        let linux = Linux::attach(&dumped, LinuxOptions::default()).expect("attach to the dump");
        samples.bench(&mut g, name, "processes", || {
            linux.processes().expect("processes from the dump").len()
        });
        g.finish();
    }
    drop(dumped);
    let vol = volatility_pslist(&elf, &isf, &pids);
    let _ = std::fs::remove_file(&elf);

    c.final_summary();
    summary(&samples, &paired, first_attach, vol);
    fresh.print(m_or_nan(&samples, "bootstrap/image_memcpy"));
}

fn m_or_nan(samples: &Samples, key: &str) -> f64 {
    samples.median(key).unwrap_or(f64::NAN)
}

/// Set (to `attach` or `fresh_memcpy`) in the environment of a process this benchmark
/// spawns to take one sample of a fresh process.
const FRESH_PROCESS_MODE: &str = "VMI_BENCH_LINUX_FRESH_PROCESS";
/// The guest's QMP socket and RAM file, for those processes.
const FRESH_PROCESS_QMP: &str = "VMI_BENCH_LINUX_QMP";
const FRESH_PROCESS_RAM: &str = "VMI_BENCH_LINUX_RAM";
/// Samples of each kind.
const FRESH_PROCESS_ROUNDS: usize = 15;

/// First attaches in fresh processes, and their floor: each round spawns this benchmark
/// twice, once to attach (connect, pause, then [`Linux::attach`] timed: the first in its
/// process), once to copy as many bytes as the whole kernel image into fresh memory (the
/// memory a whole-image copy faults in; its source filled first, untimed).
#[derive(Default)]
struct FreshRounds {
    attach: Vec<f64>,
    image_copy: Vec<f64>,
    copied: Vec<f64>,
    fresh_memcpy: Vec<f64>,
}

fn fresh_process_rounds(guest: &Guest) -> FreshRounds {
    let exe = std::env::current_exe().expect("this benchmark's path");
    let mut r = FreshRounds::default();
    let run = |mode: &str| -> Vec<f64> {
        let out = std::process::Command::new(&exe)
            .env(FRESH_PROCESS_MODE, mode)
            .env(FRESH_PROCESS_QMP, guest.qmp_socket())
            .env(FRESH_PROCESS_RAM, guest.ram_path())
            .output()
            .expect("spawning a fresh-process sample");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "fresh-process sample {mode}: {}{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find_map(|l| l.strip_prefix("sample "))
            .expect("a sample line")
            .split_whitespace()
            .map(|v| v.parse().expect("seconds"))
            .collect()
    };
    for _ in 0..FRESH_PROCESS_ROUNDS {
        let a = run("attach");
        r.attach.push(a[0]);
        r.image_copy.push(a[1]);
        r.copied.push(a[2]);
        r.fresh_memcpy.push(run("fresh_memcpy")[0]);
    }
    r
}

/// One fresh-process sample (see [`fresh_process_rounds`]); prints `sample <values>`.
fn fresh_process_sample(mode: &str) {
    let var = |k: &str| std::env::var_os(k).unwrap_or_else(|| panic!("{k} unset"));
    let mut cfg = LegacyConfig::new(PathBuf::from(var(FRESH_PROCESS_QMP)));
    cfg.ram = RamSource::File(PathBuf::from(var(FRESH_PROCESS_RAM)));
    cfg.writable = false;
    let vm = LegacyQemu::connect(cfg).expect("QMP session");
    let paused = vm.pause().expect("pausing the guest");
    match mode {
        "attach" => {
            let start = Instant::now();
            let linux = Linux::attach(&vm, LinuxOptions::default()).expect("attach");
            let t = start.elapsed().as_secs_f64();
            let copy = linux
                .report()
                .timings
                .iter()
                .find(|(n, _)| *n == "image copy")
                .map_or(f64::NAN, |(_, d)| d.as_secs_f64());
            println!("sample {t} {copy} {}", linux.image().len());
        }
        _ => {
            let facts =
                kernel_map::vcpu_facts(&vm, LinuxOptions::default().vcpu).expect("registers");
            // The image's length without copying it (the window path copies a few MiB
            // only: its cost is not part of the floor, which is timed alone).
            let runs = kernel_map::mapped_runs(
                &vm,
                facts.candidates[0],
                vmi_linux::image::KERNEL_MAP_START,
                kernel_map::KERNEL_MAP_END,
                4096,
            )
            .expect("kernel map");
            let len = match (runs.first(), runs.last()) {
                (Some(f), Some(l)) => (l.va + l.len - f.va) as usize,
                _ => panic!("no kernel image"),
            };
            let src: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let start = Instant::now();
            let mut fresh = vec![0u8; len];
            fresh.copy_from_slice(black_box(&src));
            let t = start.elapsed().as_secs_f64();
            black_box(&fresh);
            println!("sample {t}");
        }
    }
    drop(paused);
}

impl FreshRounds {
    fn print(&self, memcpy: f64) {
        let spread = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            (v[0] * 1e3, median(&v) * 1e3, v[v.len() - 1] * 1e3)
        };
        let (a0, am, a1) = spread(&self.attach);
        let (c0, cm, c1) = spread(&self.image_copy);
        let (f0, fm, f1) = spread(&self.fresh_memcpy);
        println!(
            "first attach in a fresh process ({} processes): median {am:.1} ms, min {a0:.1}, max {a1:.1} \
             (image copy step {cm:.1} ms, {c0:.1}..{c1:.1}; {:.1} MiB copied) = {:.1}x the warm memcpy ({:.3} ms)",
            self.attach.len(),
            median(&self.copied) / (1 << 20) as f64,
            am / (memcpy * 1e3),
            memcpy * 1e3
        );
        println!(
            "  floor: the whole image's bytes memcpy'd into fresh memory, first in a fresh process ({} processes): \
             median {fm:.1} ms, min {f0:.1}, max {f1:.1}",
            self.fresh_memcpy.len()
        );
    }
}

/// Times (seconds) of the bootstrap and its floors measured back to back in each round,
/// so that their ratios do not depend on the machine's load drifting between criterion
/// groups (other work on a shared host changes the memory bandwidth a memcpy gets).
#[derive(Default)]
struct Paired {
    memcpy: Vec<f64>,
    fresh: Vec<f64>,
    copy: Vec<f64>,
    attach: Vec<f64>,
}

const PAIRED_ROUNDS: usize = 30;

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

impl Paired {
    /// The median over the rounds of `a[i] / b[i]`.
    fn ratio(a: &[f64], b: &[f64]) -> f64 {
        let r: Vec<f64> = a.iter().zip(b).map(|(a, b)| a / b).collect();
        median(&r)
    }
}

/// [`PAIRED_ROUNDS`] rounds of: the memcpy floor (the fastest of four), the memcpy into
/// fresh memory, the image copy step (`copy`), the whole attach (`attach`); results are
/// dropped outside the timing.
fn paired_rounds<C, A>(
    src: &[u8],
    dst: &mut [u8],
    mut copy: impl FnMut() -> C,
    mut attach: impl FnMut() -> A,
) -> Paired {
    fn timed<R>(f: impl FnOnce() -> R) -> f64 {
        let start = Instant::now();
        let r = black_box(f());
        let t = start.elapsed().as_secs_f64();
        drop(r);
        t
    }
    let mut p = Paired::default();
    for _ in 0..PAIRED_ROUNDS {
        // The floor as criterion measures it, in a loop: the fastest of four copies back
        // to back (on this kind of host the first copies after other work run up to 2x
        // slower: 6.3, 4.8, 3.5, 3.2 ms in one round).
        let fastest = (0..4)
            .map(|_| {
                timed(|| {
                    dst.copy_from_slice(black_box(src));
                    dst[dst.len() / 2]
                })
            })
            .fold(f64::INFINITY, f64::min);
        p.memcpy.push(fastest);
        p.fresh.push(timed(|| {
            let mut fresh = vec![0u8; src.len()];
            fresh.copy_from_slice(black_box(src));
            fresh
        }));
        p.copy.push(timed(&mut copy));
        p.attach.push(timed(&mut attach));
    }
    p
}

/// Name → VA and VA → name over every symbol, beside their floors.
fn lookups<V: vmi_core::PhysicalMemory>(c: &mut Criterion, samples: &Samples, linux: &Linux<V>) {
    let table = linux.symbols();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut names: Vec<String> = table.iter().map(|s| s.name.to_owned()).collect();
    rng.shuffle(&mut names);
    // Addresses inside each symbol: its start plus up to 15 bytes, clamped below the next
    // symbol's start.
    let sorted: Vec<u64> = {
        let mut a: Vec<u64> = table.iter().map(|s| s.address).collect();
        a.dedup();
        a
    };
    let mut probes: Vec<u64> = sorted
        .iter()
        .zip(sorted.iter().skip(1).chain([&u64::MAX]))
        .map(|(&a, &next)| a + (rng.next() % 16).min(next.saturating_sub(a + 1)))
        .collect();
    rng.shuffle(&mut probes);
    // The floors, as many entries as the table: a HashMap keyed by the addresses (looked
    // up in shuffled order), and the sorted addresses themselves.
    let floor_map: HashMap<u64, u64> = table.iter().map(|s| (s.address, s.address)).collect();
    let mut floor_keys: Vec<u64> = floor_map.keys().copied().collect();
    rng.shuffle(&mut floor_keys);
    println!(
        "lookup: {} names, {} distinct addresses",
        names.len(),
        sorted.len()
    );

    let name = "lookup";
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    samples.bench(&mut g, name, "name_to_va", || {
        i = (i + 1) % names.len();
        table.address_of(black_box(&names[i]))
    });
    let mut i = 0usize;
    samples.bench(&mut g, name, "hashmap_u64", || {
        i = (i + 1) % floor_keys.len();
        floor_map.get(&black_box(floor_keys[i])).copied()
    });
    let mut i = 0usize;
    samples.bench(&mut g, name, "va_to_name", || {
        i = (i + 1) % probes.len();
        table
            .symbol_at(black_box(probes[i]))
            .map(|(s, off)| (s.name.len(), off))
    });
    let mut i = 0usize;
    samples.bench(&mut g, name, "binary_search_u64", || {
        i = (i + 1) % probes.len();
        sorted.partition_point(|&a| a <= black_box(probes[i]))
    });
    g.finish();
}

/// Wall times of Volatility's runs on the dump: the schema check of the ISF (once per
/// ISF, remembered in Volatility's cache) and `linux.pslist` rounds after it.
struct VolRuns {
    program: PathBuf,
    validate: f64,
    pslist: Vec<f64>,
}

/// Volatility 3's `linux.pslist` on `elf` with `isf` (through [`volatility`], as the
/// matrix tests run it), when xtask provisioned it; checks that it lists the processes
/// vmi-linux listed (the same leaders, without pid 0).
fn volatility_pslist(elf: &Path, isf: &Path, pids: &[u32]) -> Option<VolRuns> {
    let vol = match volatility::Volatility::from_env() {
        Ok(v) => v,
        Err(e) => {
            println!("volatility: skipped ({e})");
            return None;
        }
    };
    let validate = vol.validate_isf(isf).expect("Volatility validates the ISF");
    println!(
        "volatility: isfinfo --validate {:.2} s",
        validate.as_secs_f64()
    );
    let mut pslist = Vec::new();
    for round in 0..5 {
        let (tasks, elapsed) = vol.pslist(elf, isf).expect("linux.pslist");
        let theirs: Vec<u32> = tasks.iter().map(|t| t.pid as u32).collect();
        assert_eq!(theirs, pids[1..], "linux.pslist pids");
        println!(
            "volatility: linux.pslist round {round}: {} processes in {:.2} s",
            tasks.len(),
            elapsed.as_secs_f64()
        );
        pslist.push(elapsed.as_secs_f64());
    }
    Some(VolRuns {
        program: vol.program().to_path_buf(),
        validate: validate.as_secs_f64(),
        pslist,
    })
}

fn summary(samples: &Samples, p: &Paired, first_attach: f64, vol: Option<VolRuns>) {
    let m = |k: &str| samples.median(k).unwrap_or(f64::NAN);
    let ms = |s: f64| format!("{:.3} ms", s * 1e3);
    let ns = |s: f64| format!("{:.1} ns", s * 1e9);
    let memcpy = m("bootstrap/image_memcpy");
    let copy = m("bootstrap/image_copy");
    let attach = m("bootstrap/attach");
    let list = m("processes/list");
    println!("\nsummary (medians of every sample, this run):");
    println!("bootstrap/image_memcpy {} (floor)", ms(memcpy));
    let fresh = m("bootstrap/image_memcpy_fresh");
    println!(
        "bootstrap/image_memcpy_fresh {} = {:.2}x the memcpy",
        ms(fresh),
        fresh / memcpy
    );
    println!(
        "bootstrap/image_copy   {} = {:.2}x the memcpy, {:.2}x the memcpy into fresh memory",
        ms(copy),
        copy / memcpy,
        copy / fresh
    );
    println!(
        "bootstrap/attach       {} = {:.2}x the memcpy (bars: < 150 ms, < 10x)",
        ms(attach),
        attach / memcpy
    );
    println!(
        "bootstrap/attach first (cold, one sample) {} = {:.2}x the memcpy",
        ms(first_attach),
        first_attach / memcpy
    );
    println!(
        "paired rounds ({PAIRED_ROUNDS}, each: memcpy, fresh memcpy, image copy, attach back to back; medians):"
    );
    println!(
        "  memcpy {}, memcpy into fresh memory {}, image copy {}, attach {}",
        ms(median(&p.memcpy)),
        ms(median(&p.fresh)),
        ms(median(&p.copy)),
        ms(median(&p.attach))
    );
    println!(
        "  attach / memcpy {:.2}x (bar: < 10x), image copy / memcpy {:.2}x, image copy / fresh memcpy {:.2}x, fresh memcpy / memcpy {:.2}x",
        Paired::ratio(&p.attach, &p.memcpy),
        Paired::ratio(&p.copy, &p.memcpy),
        Paired::ratio(&p.copy, &p.fresh),
        Paired::ratio(&p.fresh, &p.memcpy),
    );
    println!("processes/list         {} (bar: < 2 ms)", ms(list));
    for (key, floor, bar) in [
        ("lookup/name_to_va", "lookup/hashmap_u64", 5e6),
        ("lookup/va_to_name", "lookup/binary_search_u64", 2e6),
    ] {
        let (t, f) = (m(key), m(floor));
        println!(
            "{key} {} = {:.2} M/s, {:.2}x {floor} ({}) (bar: >= {:.0} M/s)",
            ns(t),
            1e-6 / t,
            t / f,
            ns(f),
            bar / 1e6
        );
    }
    let dump_attach = m("dump/attach");
    let dump_list = m("dump/processes");
    println!(
        "dump/attach {} + dump/processes {}",
        ms(dump_attach),
        ms(dump_list)
    );
    if let Some(v) = vol {
        let mut runs = v.pslist.clone();
        runs.sort_by(f64::total_cmp);
        let median = runs[runs.len() / 2];
        println!(
            "volatility linux.pslist (median of {}) {:.2} s = {:.0}x vmi-linux's attach + process list on the same dump; ISF schema check once before: {:.2} s",
            runs.len(),
            median,
            median / (dump_attach + dump_list),
            v.validate,
        );
        println!(
            "volatility command: XDG_CACHE_HOME=<cache> {} --offline --quiet --renderer json \
             --log <log> --symbol-dirs <dir with linux/{SUITE}.json> --file <dump> linux.pslist.PsList",
            v.program.display()
        );
    }
}
