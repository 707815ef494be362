//! Costs of the vmi-kvm backend against `kvmi-sim` over a real UNIX socket, beside the
//! physical floor measured in the same run. Every backend number includes the
//! simulator's own work (it is a thread of this process, sharing the cores).
//!
//! * `floor/pingpong_16B`, `floor/pingpong_4KiB_reply`: raw `UnixStream` ping-pong
//!   between two threads (a 16-byte request, a 16-byte or 4 KiB answer).
//! * `floor/memcpy_4KiB`: copying one page.
//! * `read_physical/random_4KiB`: one page at a random frame of 64 MiB of guest RAM
//!   (one request, one reply).
//! * `read_physical/bulk_64MiB`: 64 MiB in one call (16384 page requests, pipelined
//!   64 at a time).
//! * `page_cache/hit_4KiB`, `page_cache/miss_4KiB`: one page with the opt-in page
//!   cache on and the guest paused — served from the cache, or fetched (the cache
//!   emptied before each read) and inserted.
//! * `registers/snapshot_running`: GPRs, CRs, segments, GDTR/IDTR, EFER of a running
//!   vCPU (one `GET_REGISTERS`); `registers/snapshot_parked` of a paused one (cache);
//!   `registers/snapshot_full_msrs_running`: every group and ten MSRs of a running vCPU,
//!   one of them refused by the host.
//! * `event_round_trip/vcpus_N`: N vCPUs each raising CR3 events back to back, the
//!   tool answering with N workers; time per event.
//! * Everything runs pinned to one CPU (`VMI_KVM_BENCH_CPU`, default 0; `off`
//!   unpinned), floors alike: no round trip waits for a cross-CPU wake-up.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use kvmi_sim::{GuestMemory, SimConfig, SimEvent, Simulator};
use vmi_core::event::{RegisterAccess, RegisterFilter};
use vmi_core::{
    EventControl, Gpa, Monitor, PhysicalMemory, ReadRegisters, RegisterGroups, Response,
    VcpuControl, VcpuId,
};
use vmi_kvm::{Config, KvmiListener, KvmiVm};

const T: Duration = Duration::from_secs(10);
const FRAMES: u64 = 16 * 1024; // 64 MiB

fn setup(vcpus: usize) -> (KvmiVm, Simulator) {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "vmi-kvm-bench-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let l = KvmiListener::bind(
        &path,
        Config {
            request_timeout: T,
            ..Config::default()
        },
    )
    .unwrap();
    let mut memory = GuestMemory::new(FRAMES);
    for g in 0..FRAMES {
        memory.add_frame(g);
    }
    let sc = SimConfig {
        vcpus,
        memory,
        event_timeout: T,
        ..SimConfig::default()
    };
    let p = path.clone();
    let sim = thread::spawn(move || Simulator::connect(&p, sc).unwrap());
    let vm = l.accept(T).unwrap();
    (vm, sim.join().unwrap())
}

fn floor(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    for (name, answer) in [("pingpong_16B", 16usize), ("pingpong_4KiB_reply", 4096)] {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        let echo = thread::spawn(move || {
            let mut req = [0u8; 16];
            let out = vec![7u8; answer];
            while b.read_exact(&mut req).is_ok() {
                if b.write_all(&out).is_err() {
                    break;
                }
            }
        });
        let mut back = vec![0u8; answer];
        g.bench_function(name, |bench| {
            bench.iter(|| {
                a.write_all(&[1u8; 16]).unwrap();
                a.read_exact(&mut back).unwrap();
            })
        });
        drop(a);
        echo.join().unwrap();
    }
    let src = vec![3u8; 4096];
    let mut dst = vec![0u8; 4096];
    g.bench_function("memcpy_4KiB", |bench| {
        bench.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&dst);
        })
    });
    g.finish();
}

fn read_physical(c: &mut Criterion) {
    let (vm, _sim) = setup(1);
    let mut g = c.benchmark_group("read_physical");
    g.throughput(Throughput::Bytes(4096));
    let mut page = vec![0u8; 4096];
    let mut x = 0x2545_f491_4f6c_dd1du64;
    g.bench_function("random_4KiB", |bench| {
        bench.iter(|| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            vm.read_physical(Gpa((x % FRAMES) << 12), &mut page)
                .unwrap();
        })
    });
    g.throughput(Throughput::Bytes(FRAMES * 4096));
    g.sample_size(10);
    let mut all = vec![0u8; (FRAMES * 4096) as usize];
    g.bench_function("bulk_64MiB", |bench| {
        bench.iter(|| vm.read_physical(Gpa(0), &mut all).unwrap())
    });
    g.finish();
}

fn page_cache(c: &mut Criterion) {
    let (vm, _sim) = setup(1);
    vm.enable_page_cache(FRAMES as usize);
    let _paused = vm.pause().unwrap();
    let mut g = c.benchmark_group("page_cache");
    g.throughput(Throughput::Bytes(4096));
    let mut page = vec![0u8; 4096];
    vm.read_physical(Gpa(0x5000), &mut page).unwrap();
    g.bench_function("hit_4KiB", |bench| {
        bench.iter(|| vm.read_physical(Gpa(0x5000), black_box(&mut page)).unwrap())
    });
    g.bench_function("miss_4KiB", |bench| {
        bench.iter(|| {
            vm.enable_page_cache(FRAMES as usize); // empties it
            vm.read_physical(Gpa(0x5000), black_box(&mut page)).unwrap()
        })
    });
    g.finish();
    assert!(vm.page_cache_stats().hits > 0, "the hit bench hit");
}

fn registers(c: &mut Criterion) {
    let (vm, _sim) = setup(1);
    let groups = RegisterGroups::GPRS
        | RegisterGroups::CONTROL
        | RegisterGroups::SEGMENTS
        | RegisterGroups::DESCRIPTOR_TABLES
        | RegisterGroups::EFER;
    let mut g = c.benchmark_group("registers");
    g.bench_function("snapshot_running", |bench| {
        bench.iter(|| black_box(vm.registers(VcpuId(0), groups, &[]).unwrap()))
    });
    // Every group and ten MSRs, one of which the host refuses (0x4b564d00).
    let msrs = [
        0x174,
        0x175,
        0x176,
        0x277,
        0xc000_0081,
        0xc000_0082,
        0xc000_0083,
        0xc000_0084,
        0xc000_0102,
        0x4b56_4d00,
    ];
    g.bench_function("snapshot_full_msrs_running", |bench| {
        bench.iter(|| {
            black_box(
                vm.registers(VcpuId(0), RegisterGroups::all(), &msrs)
                    .unwrap(),
            )
        })
    });
    let pause = vm.pause().unwrap();
    g.bench_function("snapshot_parked", |bench| {
        bench.iter(|| black_box(vm.registers(VcpuId(0), groups, &[]).unwrap()))
    });
    drop(pause);
    g.finish();
}

fn event_round_trip(c: &mut Criterion) {
    let mut g = c.benchmark_group("event_round_trip");
    for n in [1usize, 2, 4] {
        let (vm, sim) = setup(n);
        vm.enable(&Monitor::ControlRegister {
            cr: 3,
            access: RegisterAccess::Write,
            filter: RegisterFilter::default(),
        })
        .unwrap();
        g.bench_function(format!("vcpus_{n}"), |bench| {
            bench.iter_custom(|iters| {
                let per = iters.div_ceil(n as u64);
                let stop = AtomicBool::new(false);
                let start = Instant::now();
                let mut took = Duration::ZERO;
                thread::scope(|s| {
                    for _ in 0..n {
                        s.spawn(|| {
                            while !stop.load(Ordering::Relaxed) {
                                if let Some(ev) = vm.wait_event(Duration::from_millis(20)).unwrap()
                                {
                                    ev.reply(Response::continue_()).unwrap();
                                }
                            }
                        });
                    }
                    let guests: Vec<_> = (0..n)
                        .map(|v| {
                            let sim = &sim;
                            s.spawn(move || {
                                let mut cr3 = sim.vm().vcpus[v].sregs.cr3;
                                for _ in 0..per {
                                    let new = cr3 ^ 0x1000;
                                    sim.trigger_and_wait(
                                        v,
                                        SimEvent::Cr {
                                            cr: 3,
                                            old: cr3,
                                            new,
                                        },
                                    )
                                    .unwrap();
                                    cr3 = new;
                                }
                            })
                        })
                        .collect();
                    for g in guests {
                        g.join().unwrap();
                    }
                    // Measured before the workers notice `stop` (up to one poll slice).
                    took = start.elapsed();
                    stop.store(true, Ordering::Relaxed);
                });
                took.mul_f64(iters as f64 / (per * n as u64) as f64)
            })
        });
    }
    g.finish();
}

mod common;

fn main() {
    // Every thread (tool, simulator, floor peers) on one CPU: see `pin_from_env`.
    common::pin_from_env("VMI_KVM_BENCH_CPU");
    let mut c = Criterion::default()
        .configure_from_args()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    floor(&mut c);
    read_physical(&mut c);
    page_cache(&mut c);
    registers(&mut c);
    event_round_trip(&mut c);
    c.final_summary();
}
