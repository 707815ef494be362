//! CR3 events on a flood host: `vmi_core` dispatch over vmi-kvm beside a bare
//! kvmi-proto event loop, on the same kind of host in the same run.
//!
//! The host is `kvmi-sim` in a child process (this executable re-run), whose N vCPU
//! threads each raise the next CR3 write as soon as the previous one is answered (the
//! binary's `--rate unlimited`): up to N events in flight. The tool side has one
//! handler thread per vCPU:
//!
//! * `bare`: `kvmi_proto::Connection::next_event` → `reply_cr(Continue, new_value)`;
//! * `vmi`: `vmi_core::EventControl::dispatch` with a handler answering
//!   `Response::continue_()` (vmi-kvm's `KvmiVm`: event conversion, `Parking`, reply).
//!
//! Both sessions are connected at once, each to its own host; a gate lets one side's
//! handlers run at a time (the other host then waits, one event per vCPU in flight,
//! using no CPU). Criterion times `events_flood/{bare,vmi}_vcpus_N` per event; then
//! a paired comparison (bare and vmi windows back to back in each of 41 rounds, the
//! order alternating) prints events/s and the tool process's CPU per event
//! (`getrusage(RUSAGE_SELF)`: the host is another process; user and system time, and
//! context switches, beside it), with the median ratios — what the README reports,
//! being robust against load drifting on a shared machine.
//!
//! Each vCPU count is measured in two placements (see [`Placement`]): tool and hosts
//! on CPUs of their own, and all on one CPU. `VMI_KVM_EVENTS_VCPUS=2` measures one
//! vCPU count only, and
//! `VMI_KVM_EVENTS_CRITERION_ONLY=1` skips the paired rounds (for profiling).
#![allow(missing_docs)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{all_cpus, pin_to};
use criterion::{Criterion, Throughput};
use kvmi_proto::sys;
use kvmi_proto::{Action, EventKind, Listener, ProtoError};
use kvmi_sim::{SimConfig, SimError, SimEvent, Simulator};
use vmi_core::event::{RegisterAccess, RegisterFilter};
use vmi_core::{EventControl, Monitor, Response};
use vmi_kvm::{Config, KvmiListener};

const T: Duration = Duration::from_secs(10);
/// Turns this executable into the flood host: `socket-path:vcpus`.
const HOST_ENV: &str = "VMI_KVM_EVENTS_BENCH_HOST";
const VCPUS: [usize; 3] = [1, 2, 4];
const ROUNDS: usize = 41;
const WINDOW: Duration = Duration::from_millis(120);

fn sock_path(what: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "vmi-kvm-events-{what}-{}-{}.sock",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The flood host: every vCPU raises CR3 writes back to back until the tool hangs up.
fn host_main(spec: &str) {
    let (spec, cpu) = spec.rsplit_once(':').expect("path:vcpus:cpu");
    if let Ok(cpu) = cpu.parse() {
        pin_to(&[cpu]);
    }
    let (path, vcpus) = spec.rsplit_once(':').expect("path:vcpus");
    let vcpus: usize = vcpus.parse().expect("vCPU count");
    let sim = Simulator::connect(
        path,
        SimConfig {
            vcpus,
            // A gated tool leaves one event per vCPU unanswered for many windows.
            event_timeout: Duration::from_secs(3600),
            ..SimConfig::default()
        },
    )
    .expect("host connect");
    thread::scope(|s| {
        for v in 0..vcpus {
            let sim = &sim;
            s.spawn(move || {
                let mut cr3 = sim.vm().vcpus[v].sregs.cr3;
                loop {
                    let new = cr3 ^ 0x1000;
                    match sim.trigger_and_wait(
                        v,
                        SimEvent::Cr {
                            cr: 3,
                            old: cr3,
                            new,
                        },
                    ) {
                        Ok(_) => cr3 = new,
                        // Not enabled yet.
                        Err(SimError::NotDelivered(_)) => thread::sleep(Duration::from_millis(1)),
                        Err(_) => return,
                    }
                }
            });
        }
    });
}

/// Starts the host on `cpu` (`None`: anywhere).
fn spawn_host(path: &std::path::Path, vcpus: usize, cpu: Option<usize>) -> Child {
    let cpu = cpu.map_or("any".to_string(), |c| c.to_string());
    Command::new(std::env::current_exe().unwrap())
        .env(HOST_ENV, format!("{}:{vcpus}:{cpu}", path.display()))
        .spawn()
        .expect("spawning the host")
}

/// Lets one side's handlers run, or holds them (at no CPU cost) between events.
#[derive(Default)]
struct Gate {
    open: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Gate {
    /// Waits until open; `false` once stopping.
    fn pass(&self) -> bool {
        if self.open.load(Ordering::Acquire) {
            return true;
        }
        let mut g = self.lock.lock().unwrap();
        while !self.open.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire) {
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap()
                .0;
        }
        !self.stop.load(Ordering::Acquire)
    }

    fn set(&self, open: bool) {
        let _g = self.lock.lock().unwrap();
        self.open.store(open, Ordering::Release);
        self.cv.notify_all();
    }

    fn finish(&self) {
        let _g = self.lock.lock().unwrap();
        self.stop.store(true, Ordering::Release);
        self.cv.notify_all();
    }
}

/// One tool session with its handler threads and its host.
struct Side {
    name: &'static str,
    gate: Arc<Gate>,
    handled: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
    host: Child,
}

impl Side {
    fn bare(vcpus: usize, host_cpu: Option<usize>) -> Side {
        let path = sock_path("bare");
        let l = Listener::bind(
            &path,
            kvmi_proto::Config {
                request_timeout: T,
                ..kvmi_proto::Config::default()
            },
        )
        .unwrap();
        let host = spawn_host(&path, vcpus, host_cpu);
        let conn = Arc::new(l.accept(T).unwrap());
        for v in 0..vcpus as u16 {
            conn.control_events(v, sys::KVMI_EVENT_CR, true).unwrap();
            conn.control_cr(v, 3, true).unwrap();
        }
        let gate = Arc::new(Gate::default());
        let handled = Arc::new(AtomicU64::new(0));
        let threads = (0..vcpus)
            .map(|_| {
                let (conn, gate, handled) = (conn.clone(), gate.clone(), handled.clone());
                thread::spawn(move || {
                    while gate.pass() {
                        match conn.next_event(Duration::from_millis(20)) {
                            Ok(ev) => {
                                let EventKind::Cr(cr) = ev.kind else {
                                    panic!("unexpected event {:?}", ev.kind)
                                };
                                ev.reply_cr(Action::Continue, cr.new_value).unwrap();
                                handled.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(ProtoError::Timeout(_)) => {}
                            Err(e) => panic!("next_event: {e}"),
                        }
                    }
                })
            })
            .collect();
        Side {
            name: "bare",
            gate,
            handled,
            threads,
            host,
        }
    }

    fn vmi(vcpus: usize, host_cpu: Option<usize>) -> Side {
        let path = sock_path("vmi");
        let l = KvmiListener::bind(
            &path,
            Config {
                request_timeout: T,
                ..Config::default()
            },
        )
        .unwrap();
        let host = spawn_host(&path, vcpus, host_cpu);
        let vm = Arc::new(l.accept(T).unwrap());
        vm.enable(&Monitor::ControlRegister {
            cr: 3,
            access: RegisterAccess::Write,
            filter: RegisterFilter::default(),
        })
        .unwrap();
        let gate = Arc::new(Gate::default());
        let handled = Arc::new(AtomicU64::new(0));
        let threads = (0..vcpus)
            .map(|_| {
                let (vm, gate, handled) = (vm.clone(), gate.clone(), handled.clone());
                thread::spawn(move || {
                    let mut handler = |_: &vmi_core::Event| Response::continue_();
                    while gate.pass() {
                        if vm
                            .dispatch(Duration::from_millis(20), &mut handler)
                            .unwrap()
                        {
                            handled.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Side {
            name: "vmi",
            gate,
            handled,
            threads,
            host,
        }
    }

    /// Runs the handlers until `n` more events are handled; the time it took.
    fn run_events(&self, n: u64) -> Duration {
        let target = self.handled.load(Ordering::Relaxed) + n;
        let t0 = Instant::now();
        self.gate.set(true);
        while self.handled.load(Ordering::Relaxed) < target {
            thread::sleep(Duration::from_micros(50));
        }
        let took = t0.elapsed();
        self.gate.set(false);
        took
    }

    /// Runs the handlers for `window` after a short warm-up: events, wall time, and
    /// the process's resource use meanwhile.
    fn window(&self, window: Duration) -> (u64, Duration, Usage) {
        self.gate.set(true);
        thread::sleep(Duration::from_millis(30));
        let (n0, u0, t0) = (
            self.handled.load(Ordering::Relaxed),
            usage(),
            Instant::now(),
        );
        thread::sleep(window);
        let (n1, u1, t1) = (
            self.handled.load(Ordering::Relaxed),
            usage(),
            Instant::now(),
        );
        self.gate.set(false);
        // Let the handlers reach the gate before the other side starts.
        thread::sleep(Duration::from_millis(30));
        (n1 - n0, t1 - t0, u1.since(&u0))
    }

    fn finish(mut self) {
        self.gate.finish();
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
        let _ = self.host.kill();
        let _ = self.host.wait();
    }
}

/// Resource use of this process (the tool; the host is a child process).
#[derive(Clone, Copy, Default)]
struct Usage {
    user: Duration,
    system: Duration,
    /// Voluntary and involuntary context switches.
    switches: u64,
}

impl Usage {
    fn cpu(&self) -> Duration {
        self.user + self.system
    }

    fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            switches: self.switches.saturating_sub(earlier.switches),
        }
    }
}

fn usage() -> Usage {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Usage {
        user: tv(u.ru_utime),
        system: tv(u.ru_stime),
        switches: (u.ru_nvcsw + u.ru_nivcsw) as u64,
    }
}

fn median(v: Vec<f64>) -> f64 {
    quartiles(v).1
}

/// First quartile, median, third quartile.
fn quartiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: usize| v[(v.len() - 1) * q / 4];
    (at(1), at(2), at(3))
}

/// Where the tool and its hosts run (`VMI_KVM_EVENTS_PLACEMENT`, a comma-separated
/// list; default `split,shared` on a machine with two CPUs or more, else `off`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// The tool's threads on CPU 0, the hosts' on CPU 1: each side keeps its own core,
    /// as a tool and QEMU's vCPU threads would on a real host. Every event crosses
    /// CPUs twice, and on this VM a cross-CPU wake-up costs tens of µs, which then
    /// dominates both loops alike.
    Split,
    /// Tool and hosts on CPU 0: no cross-CPU wake-up at all, so the CPU per event is
    /// the work each loop does and events/s is bound by the tool's and the host's CPU
    /// together.
    Shared,
    /// Wherever the scheduler puts the threads: the paired ratios of two runs on this
    /// 2-CPU machine differed by up to 0.5 in one cell (placement luck); pinned, by
    /// 0.05 at most.
    Off,
}

impl Placement {
    fn from_env() -> Vec<Placement> {
        let spec = std::env::var("VMI_KVM_EVENTS_PLACEMENT").unwrap_or_else(|_| {
            let cpus = thread::available_parallelism().map_or(1, |n| n.get());
            if cpus >= 2 { "split,shared" } else { "off" }.to_string()
        });
        spec.split(',')
            .map(|p| match p.trim() {
                "split" => Placement::Split,
                "shared" => Placement::Shared,
                "off" => Placement::Off,
                other => panic!("VMI_KVM_EVENTS_PLACEMENT: unknown placement {other:?}"),
            })
            .collect()
    }

    fn name(self) -> &'static str {
        match self {
            Placement::Split => "split",
            Placement::Shared => "shared",
            Placement::Off => "off",
        }
    }

    /// The tool's CPUs and the hosts' CPU (`None`: any).
    fn cpus(self) -> (Vec<usize>, Option<usize>) {
        match self {
            Placement::Split => (vec![0], Some(1)),
            Placement::Shared => (vec![0], Some(0)),
            Placement::Off => (all_cpus(), None),
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var(HOST_ENV) {
        host_main(&spec);
        return;
    }
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    let mut table = Vec::new();
    // `VMI_KVM_EVENTS_VCPUS=2,4` measures only these vCPU counts (for profiling).
    let vcpu_counts: Vec<usize> = match std::env::var("VMI_KVM_EVENTS_VCPUS") {
        Ok(list) => list
            .split(',')
            .map(|n| n.trim().parse().expect("VMI_KVM_EVENTS_VCPUS: numbers"))
            .collect(),
        Err(_) => VCPUS.to_vec(),
    };
    for (placement, n) in Placement::from_env()
        .into_iter()
        .flat_map(|p| vcpu_counts.iter().map(move |&n| (p, n)))
    {
        let (tool_cpus, host_cpu) = placement.cpus();
        // The handler threads the sides start inherit it.
        pin_to(&tool_cpus);
        let sides = [Side::bare(n, host_cpu), Side::vmi(n, host_cpu)];
        {
            let mut g = c.benchmark_group("events_flood");
            g.throughput(Throughput::Elements(1));
            for s in &sides {
                let name = format!("{}_{}_vcpus_{n}", placement.name(), s.name);
                g.bench_function(name, |b| b.iter_custom(|iters| s.run_events(iters)));
            }
            g.finish();
        }
        if std::env::var_os("VMI_KVM_EVENTS_CRITERION_ONLY").is_some() {
            // For profiling (`--profile-time`): no paired rounds.
            for s in sides {
                s.finish();
            }
            continue;
        }
        // Paired rounds: per side, events/s and per event the CPU (user, system) and
        // context switches.
        let mut rows: Vec<[Row; 2]> = Vec::new();
        for round in 0..ROUNDS {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut r = [Row::default(); 2];
            for i in order {
                let (events, wall, used) = sides[i].window(WINDOW);
                let events = events.max(1) as f64;
                let per_event_us = |d: Duration| d.as_secs_f64() * 1e6 / events;
                r[i] = Row {
                    rate: events / wall.as_secs_f64(),
                    cpu: per_event_us(used.cpu()),
                    user: per_event_us(used.user),
                    system: per_event_us(used.system),
                    switches: used.switches as f64 / events,
                };
            }
            rows.push(r);
        }
        let med = |i: usize, f: fn(&Row) -> f64| median(rows.iter().map(|r| f(&r[i])).collect());
        let ratio =
            |f: fn(&Row) -> f64| quartiles(rows.iter().map(|r| f(&r[1]) / f(&r[0])).collect());
        table.push(format!(
            "| {} | {n} | {:.0} | {:.0} | **{:.2}** ({:.2}–{:.2}) | {:.1} | {:.1} | **{:.2}** ({:.2}–{:.2}) \
             | {:.1} / {:.1} | {:.1} / {:.1} | {:.2} / {:.2} |",
            placement.name(),
            med(0, |r| r.rate),
            med(1, |r| r.rate),
            ratio(|r| r.rate).1,
            ratio(|r| r.rate).0,
            ratio(|r| r.rate).2,
            med(0, |r| r.cpu),
            med(1, |r| r.cpu),
            ratio(|r| r.cpu).1,
            ratio(|r| r.cpu).0,
            ratio(|r| r.cpu).2,
            med(0, |r| r.user),
            med(1, |r| r.user),
            med(0, |r| r.system),
            med(1, |r| r.system),
            med(0, |r| r.switches),
            med(1, |r| r.switches),
        ));
        for s in sides {
            s.finish();
        }
    }
    c.final_summary();
    println!(
        "\npaired CR3 event flood, one handler thread per vCPU, {ROUNDS} rounds of {WINDOW:?} \
         (medians); placement split = tool on CPU 0, hosts on CPU 1; shared = all on CPU 0\n"
    );
    println!(
        "| placement | vCPUs | bare events/s | vmi events/s | vmi/bare events/s (quartiles) | bare CPU µs/event \
         | vmi CPU µs/event | vmi/bare CPU (quartiles) | user µs/event bare / vmi \
         | system µs/event bare / vmi | context switches/event bare / vmi |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in table {
        println!("{row}");
    }
}

/// One side's figures in one window.
#[derive(Clone, Copy, Default)]
struct Row {
    rate: f64,
    cpu: f64,
    user: f64,
    system: f64,
    switches: f64,
}
