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
//! (`getrusage(RUSAGE_SELF)`: the host is another process), with the median ratios —
//! what the README reports, being robust against load drifting on a shared machine.
#![allow(missing_docs)]

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

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

fn spawn_host(path: &std::path::Path, vcpus: usize) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(HOST_ENV, format!("{}:{vcpus}", path.display()))
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
    fn bare(vcpus: usize) -> Side {
        let path = sock_path("bare");
        let l = Listener::bind(
            &path,
            kvmi_proto::Config {
                request_timeout: T,
                ..kvmi_proto::Config::default()
            },
        )
        .unwrap();
        let host = spawn_host(&path, vcpus);
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

    fn vmi(vcpus: usize) -> Side {
        let path = sock_path("vmi");
        let l = KvmiListener::bind(
            &path,
            Config {
                request_timeout: T,
                ..Config::default()
            },
        )
        .unwrap();
        let host = spawn_host(&path, vcpus);
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

    /// Runs the handlers for `window` after a short warm-up: events, wall time, CPU.
    fn window(&self, window: Duration) -> (u64, Duration, Duration) {
        self.gate.set(true);
        thread::sleep(Duration::from_millis(30));
        let (n0, c0, t0) = (self.handled.load(Ordering::Relaxed), cpu(), Instant::now());
        thread::sleep(window);
        let (n1, c1, t1) = (self.handled.load(Ordering::Relaxed), cpu(), Instant::now());
        self.gate.set(false);
        // Let the handlers reach the gate before the other side starts.
        thread::sleep(Duration::from_millis(30));
        (n1 - n0, t1 - t0, c1.saturating_sub(c0))
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

/// User + system CPU of this process (the tool; the host is a child process).
fn cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
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
    for n in VCPUS {
        let sides = [Side::bare(n), Side::vmi(n)];
        {
            let mut g = c.benchmark_group("events_flood");
            g.throughput(Throughput::Elements(1));
            for s in &sides {
                g.bench_function(format!("{}_vcpus_{n}", s.name), |b| {
                    b.iter_custom(|iters| s.run_events(iters))
                });
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
        // Paired rounds: (events/s, CPU µs per event) of bare and vmi.
        let mut rows = Vec::new();
        for round in 0..ROUNDS {
            let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            let mut r = [(0.0, 0.0); 2];
            for i in order {
                let (events, wall, cpu) = sides[i].window(WINDOW);
                let events = events.max(1) as f64;
                r[i] = (
                    events / wall.as_secs_f64(),
                    cpu.as_secs_f64() * 1e6 / events,
                );
            }
            rows.push(r);
        }
        let rate = |i: usize| median(rows.iter().map(|r| r[i].0).collect());
        let cpu_per = |i: usize| median(rows.iter().map(|r| r[i].1).collect());
        let rate_ratio = quartiles(rows.iter().map(|r| r[1].0 / r[0].0).collect());
        let cpu_ratio = quartiles(rows.iter().map(|r| r[1].1 / r[0].1).collect());
        table.push((
            n,
            rate(0),
            rate(1),
            rate_ratio,
            cpu_per(0),
            cpu_per(1),
            cpu_ratio,
        ));
        for s in sides {
            s.finish();
        }
    }
    c.final_summary();
    println!(
        "\npaired CR3 event flood, one handler thread per vCPU, {ROUNDS} rounds of {WINDOW:?} \
         (medians)\n"
    );
    println!(
        "| vCPUs | bare events/s | vmi events/s | vmi/bare events/s (quartiles) | bare CPU µs/event \
         | vmi CPU µs/event | vmi/bare CPU (quartiles) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, rb, rv, rr, cb, cv, cr) in table {
        println!(
            "| {n} | {rb:.0} | {rv:.0} | **{:.2}** ({:.2}–{:.2}) | {cb:.1} | {cv:.1} | **{:.2}** ({:.2}–{:.2}) |",
            rr.1, rr.0, rr.2, cr.1, cr.0, cr.2
        );
    }
}
