//! Guest-memory paths and the breakpoint round trip of the legacy backend, on the real
//! Linux guest (`cargo xtask bench`, which provisions the guest and sets its variables).
//!
//! Every group has a `memcpy` baseline of the same size measured in the same run. The
//! GDB-stub reads are measured with the VM stopped through the session (each unpaused
//! read would also pay a stop and a continue).
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use vmi_core::event::InterruptKind;
use vmi_core::{
    Breakpoint, Breakpoints, EventControl, Gpa, Gva, Monitor, PhysicalMemory, Response, VcpuControl,
};
use vmi_legacy::{
    GdbSession, LegacyConfig, LegacyQemu, ProcMem, QmpMemory, QmpReadMethod, RamSource, SharedRam,
};
use vmi_tests::Guest;

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
    let shared = SharedRam::open_file(guest.ram_path(), layout.clone(), false).expect("shared RAM");
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
        ("shared", &shared, true),
        ("procmem", &procmem, true),
        ("gdb", &gdb, true),
        ("pmemsave", &pmemsave, true),
        ("xp", &xp, false),
    ];

    // Random 4 KiB reads.
    {
        let mut g = c.benchmark_group("read_4k");
        g.throughput(Throughput::Bytes(KIB4 as u64));
        let src = vec![0x5au8; 8 << 20];
        let mut buf = vec![0u8; KIB4];
        let mut rng = Rng(0x1234_5678);
        g.bench_function("memcpy", |b| {
            b.iter(|| {
                let off = rng.page(src.len() as u64).0 as usize;
                buf.copy_from_slice(&src[off..off + KIB4]);
                black_box(&buf);
            })
        });
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

    // Breakpoint round trip: a loop in the guest opens /proc/uptime without forking, so
    // do_sys_openat2 is hit continuously; one iteration = wait_event + reply(continue).
    {
        guest
            .run_command(
                "(while :; do read x < /proc/uptime; done) >/dev/null 2>&1 &",
                Duration::from_secs(60),
            )
            .expect("starting the open loop");
        let target = guest.kallsyms("do_sys_openat2").expect("do_sys_openat2");
        gdb.enable(&Monitor::Interrupt(InterruptKind::Int3))
            .unwrap();
        gdb.set_breakpoint(Breakpoint::at(Gva(target))).unwrap();
        let mut g = c.benchmark_group("breakpoint");
        g.bench_function(BenchmarkId::new("hit_round_trip", "do_sys_openat2"), |b| {
            b.iter(|| {
                let p = gdb
                    .wait_event(Duration::from_secs(10))
                    .unwrap()
                    .expect("breakpoint hit");
                p.reply(Response::continue_()).unwrap();
            })
        });
        // The backend's share: the reply alone (remove, step, reinsert, continue).
        g.bench_function(BenchmarkId::new("reply_continue", "do_sys_openat2"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let p = gdb
                        .wait_event(Duration::from_secs(10))
                        .unwrap()
                        .expect("breakpoint hit");
                    let t = std::time::Instant::now();
                    p.reply(Response::continue_()).unwrap();
                    spent += t.elapsed();
                }
                spent
            })
        });
        g.finish();
        gdb.clear_breakpoint(Breakpoint::at(Gva(target))).unwrap();
    }
    drop(gdb);
    drop(vm);
    c.final_summary();
}
