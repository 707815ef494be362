//! Guest-memory paths and breakpoint hits of the legacy backend (`vmi-legacy`), on the
//! real Linux guest and the purpose-built test guest (`cargo xtask bench`, which
//! provisions the guests and sets their variables; only this bench:
//! `cargo xtask bench -p vmi-tests --bench legacy_memory`).
//!
//! It lives in the integration-test crate because it needs the guest fixture: the
//! backend crate itself depends on nothing above it.
//!
//! Every memory group has `memcpy` floors of the same size measured in the same run:
//! one hot buffer (always in cache) and, for random 4 KiB reads, random pages of a
//! buffer as large as the guest's RAM (what a read from guest RAM cannot beat). The
//! GDB-stub reads are measured with the VM stopped through the session (each unpaused
//! read would also pay a stop and a continue).
//!
//! Breakpoint hits are measured per memory path of the session (`stub`: page walks
//! through `m` packets and a single step past every hit; `shared`: walks and
//! instruction bytes from shared RAM, NOPs passed by moving RIP), as the wall time of a
//! hit (`hit`: `wait_event` + `reply(continue)`, mostly the guest running and QEMU
//! re-translating code), the time the session holds the VM stopped per hit (`stopped`,
//! from the stop reply to the continue: the backend's share), and the requests per hit
//! (printed: `requests/hit`).
#![allow(missing_docs)]

use std::cell::Cell;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput};
use vmi_core::event::InterruptKind;
use vmi_core::{
    Breakpoint, Breakpoints, EventControl, EventKind, Gpa, Gva, Monitor, PhysicalMemory, Response,
    VcpuControl,
};
use vmi_legacy::{
    GdbSession, LegacyConfig, LegacyQemu, ProcMem, QmpMemory, QmpReadMethod, RamSource, SharedRam,
};
use vmi_tests::{Guest, GuestOptions};

const KIB4: usize = 4096;
const MIB64: usize = 64 << 20;

/// xorshift64*: random page-aligned addresses below `limit`.
struct Rng(u64);

impl Rng {
    fn page(&mut self, limit: u64) -> Gpa {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let r = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Gpa((r % (limit / KIB4 as u64)) * KIB4 as u64)
    }
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let guest = Guest::boot();
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    cfg.ram = RamSource::File(guest.ram_path().to_path_buf());
    cfg.writable = false;
    let vm = LegacyQemu::connect(cfg).expect("QMP session");
    let layout = vm.layout().clone();
    // The largest RAM range (the first ones are split by the VGA hole and ROMs).
    let big = layout
        .ranges()
        .iter()
        .max_by_key(|r| r.len)
        .expect("guest RAM")
        .clone();
    assert!(big.len >= MIB64 as u64, "a 64 MiB RAM range");
    let (base, span) = (big.gpa_start.0, big.len);
    let shared = Arc::new(
        SharedRam::open_file(guest.ram_path(), layout.clone(), false).expect("shared RAM"),
    );
    let procmem = ProcMem::new(
        vm.pid().expect("QEMU pid"),
        vm.backend_mapping().expect("gpa2hva").hva,
        layout.clone(),
        false,
    )
    .expect("ProcMem");
    let qmp: Arc<Mutex<_>> = vm.qmp_handle();
    let pmemsave = QmpMemory::new(
        Arc::clone(&qmp),
        layout.memory_info(),
        QmpReadMethod::Pmemsave,
    )
    .unwrap();
    let xp = QmpMemory::new(qmp, layout.memory_info(), QmpReadMethod::Xp).unwrap();
    let gdb = GdbSession::connect_unix(guest.gdb_socket(), Duration::from_secs(30))
        .expect("gdbstub session");

    let paths: [(&str, &dyn PhysicalMemory, bool); 5] = [
        ("shared", &*shared, true),
        ("procmem", &procmem, true),
        ("gdb", &gdb, true),
        ("pmemsave", &pmemsave, true),
        ("xp", &xp, false),
    ];

    // Random 4 KiB reads.
    {
        let mut g = c.benchmark_group("read_4k");
        g.throughput(Throughput::Bytes(KIB4 as u64));
        let src = vec![0x5au8; KIB4];
        let mut buf = vec![0u8; KIB4];
        let mut rng = Rng(0x1234_5678);
        // Floor 1: a hot 4 KiB source, always in cache.
        g.bench_function("memcpy_hot", |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&src[..KIB4]));
                black_box(&buf);
            })
        });
        // Floor 2: random pages of a buffer as large as the RAM range the paths read
        // (cache and TLB misses as for guest RAM); every page touched first.
        let ram_sized = vec![0x5au8; span as usize];
        g.bench_function("memcpy_random_ram", |b| {
            b.iter(|| {
                let off = rng.page(span).0 as usize;
                buf.copy_from_slice(&ram_sized[off..off + KIB4]);
                black_box(&buf);
            })
        });
        drop(ram_sized);
        for (name, mem, _) in paths {
            let _paused = (name == "gdb").then(|| gdb.pause().unwrap());
            g.bench_function(name, |b| {
                b.iter(|| {
                    mem.read_physical(Gpa(base + rng.page(span).0), &mut buf)
                        .unwrap();
                    black_box(&buf);
                })
            });
        }
        g.finish();
    }

    // Bulk 64 MiB reads from the start of the largest RAM range.
    {
        let mut g = c.benchmark_group("read_64m");
        g.throughput(Throughput::Bytes(MIB64 as u64));
        g.sampling_mode(SamplingMode::Flat);
        let src = vec![0x5au8; MIB64];
        let mut buf = vec![0u8; MIB64];
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                buf.copy_from_slice(black_box(&src));
                black_box(&buf);
            })
        });
        for (name, mem, bulk) in paths {
            if !bulk {
                continue;
            }
            let _paused = (name == "gdb").then(|| gdb.pause().unwrap());
            g.bench_function(name, |b| {
                b.iter(|| {
                    mem.read_physical(Gpa(base), &mut buf).unwrap();
                    black_box(&buf);
                })
            });
        }
        g.finish();
    }

    // Breakpoint hits: a loop in the guest opens /proc/uptime without forking, so
    // do_sys_openat2 (entered through its ftrace NOP) is hit continuously.
    drop(gdb);
    guest
        .run_command(
            "(while :; do read x < /proc/uptime; done) >/dev/null 2>&1 &",
            Duration::from_secs(60),
        )
        .expect("starting the open loop");
    let target = guest.kallsyms("do_sys_openat2").expect("do_sys_openat2");
    {
        let mut g = c.benchmark_group("breakpoint");
        g.sampling_mode(SamplingMode::Flat);
        for fast in [false, true] {
            let gdb = GdbSession::connect_unix(guest.gdb_socket(), Duration::from_secs(30))
                .expect("gdbstub session");
            if fast {
                gdb.use_memory(shared.clone());
            }
            bench_hits(&mut g, &gdb, fast, "do_sys_openat2", &[target]);
        }
        g.finish();
    }
    drop(vm);
    drop(guest);

    // The test guest: site_1 is a one-byte NOP, site_2 a `mov` (always stepped).
    {
        let guest = Guest::launch(GuestOptions::test_guest()).expect("test guest");
        let m = guest.wait_ready().expect("test guest ready");
        let shared = Arc::new(
            SharedRam::open_file(
                guest.ram_path(),
                LegacyQemu::connect(LegacyConfig::new(guest.qmp_socket()))
                    .expect("QMP session")
                    .layout()
                    .clone(),
                false,
            )
            .expect("shared RAM"),
        );
        let mut g = c.benchmark_group("breakpoint");
        g.sampling_mode(SamplingMode::Flat);
        for fast in [false, true] {
            for site in ["site_1", "site_2"] {
                let gdb = GdbSession::connect_unix(guest.gdb_socket(), Duration::from_secs(30))
                    .expect("gdbstub session");
                if fast {
                    gdb.use_memory(shared.clone());
                }
                let at = m.kallsyms(site).expect("site");
                bench_hits(&mut g, &gdb, fast, &format!("testguest_{site}"), &[at]);
            }
        }
        g.finish();
    }
    c.final_summary();
}

/// `breakpoint/{hit,stopped}/{stub,shared}-{target}`, and the requests per hit printed.
fn bench_hits(
    g: &mut BenchmarkGroup<'_, WallTime>,
    gdb: &GdbSession,
    fast: bool,
    target: &str,
    at: &[u64],
) {
    gdb.enable(&Monitor::Interrupt(InterruptKind::Int3))
        .unwrap();
    for a in at {
        gdb.set_breakpoint(Breakpoint::at(Gva(*a))).unwrap();
    }
    let hits = Cell::new(0u64);
    let hit = || {
        let p = gdb
            .wait_event(Duration::from_secs(10))
            .unwrap()
            .expect("breakpoint hit");
        assert!(
            matches!(p.kind, EventKind::Breakpoint { .. }),
            "{:?}",
            p.kind
        );
        p.reply(Response::continue_()).unwrap();
        hits.set(hits.get() + 1);
    };
    let mode = if fast { "shared" } else { "stub" };
    let before = gdb.counters();
    g.bench_function(BenchmarkId::new("hit", format!("{mode}-{target}")), |b| {
        b.iter(hit)
    });
    // The session's share: how long it holds the VM stopped per hit.
    g.bench_function(
        BenchmarkId::new("stopped", format!("{mode}-{target}")),
        |b| {
            b.iter_custom(|iters| {
                let start = gdb.counters().stopped_time;
                for _ in 0..iters {
                    hit();
                }
                gdb.counters().stopped_time - start
            })
        },
    );
    let after = gdb.counters();
    let n = hits.get().max(1) as f64;
    println!(
        "breakpoint/{mode}-{target}: {:.2} requests/hit, {:.2} stops/hit, {:.2} interrupts/hit, {:.3} ms stopped/hit over {} hits",
        (after.requests - before.requests) as f64 / n,
        (after.stops - before.stops) as f64 / n,
        (after.interrupts - before.interrupts) as f64 / n,
        (after.stopped_time - before.stopped_time).as_secs_f64() * 1e3 / n,
        hits.get(),
    );
    for a in at {
        gdb.clear_breakpoint(Breakpoint::at(Gva(*a))).unwrap();
    }
}
