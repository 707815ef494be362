//! Round-trip costs of kvmi-proto against the `kvmi-sim` host simulator over a real
//! UNIX socket, with the physical floor (raw `UnixStream` ping-pong between threads)
//! measured in the same run (`cargo bench -p kvmi-proto --bench roundtrip`).
//!
//! Every number includes the simulator's own work (it is a model of the kernel side,
//! not a real host): frame parsing, the guest model, its wire statistics.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput};
use kvmi_proto::{Action, Batch, Config, Connection, EventKind, Listener, ProtoError};
use kvmi_sim::{SimConfig, SimEvent, Simulator};
use kvmi_sys as sys;
use zerocopy::IntoBytes;

const T: Duration = Duration::from_secs(5);
const PAGE: usize = 4096;
/// Pages read / commands sent by the "×64" benches.
const N: usize = 64;
/// First GPA of the pre-filled pages (GFN 16…79, inside the simulator's default RAM).
const BASE: u64 = 0x1_0000;
/// The simulator keeps a transcript of the last 10 000 frames; a fresh connection has
/// crossed ~112 frames, so this many 2-frame round trips stay below the cap.
const FRESH_ROUND_TRIPS: u64 = 4_000;

/// A `Listener` + `Simulator::connect` pair over a fresh UNIX socket, with 64 pages of
/// guest memory pre-filled with a pattern.
fn setup() -> (Connection, Simulator) {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "kvmi-proto-bench-{}-{}.sock",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let cfg = Config {
        request_timeout: T,
        ..Config::default()
    };
    let listener = Listener::bind(&path, cfg).expect("bind");
    let mut sc = SimConfig::default();
    let pattern: Vec<u8> = (0..N * PAGE).map(|i| (i * 7 + 3) as u8).collect();
    sc.memory.load(BASE, &pattern);
    let p = path.clone();
    let sim = thread::spawn(move || Simulator::connect(&p, sc).expect("simulator connect"));
    let conn = listener.accept(T).expect("accept");
    let sim = sim.join().expect("simulator thread");
    drop(listener);
    let _ = std::fs::remove_file(&path);
    (conn, sim)
}

/// Echo peer of the floor benches: reads 16-byte requests, answers `reply` bytes each.
fn spawn_echo(mut s: UnixStream, reply: usize) -> JoinHandle<()> {
    thread::spawn(move || {
        let mut req = [0u8; 16];
        let out = vec![0x5au8; reply];
        while s.read_exact(&mut req).is_ok() {
            if s.write_all(&out).is_err() {
                break;
            }
        }
    })
}

/// Physical floor: a 16-byte request and a `reply`-byte answer between two threads over
/// a `UnixStream` pair (two thread wake-ups per round trip).
fn floor_direct(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, reply: usize) {
    let (mut a, b) = UnixStream::pair().expect("socketpair");
    let echo = spawn_echo(b, reply);
    let req = [0xa5u8; 16];
    let mut buf = vec![0u8; reply];
    g.bench_function(name, |bch| {
        bch.iter(|| {
            a.write_all(&req).unwrap();
            a.read_exact(&mut buf).unwrap();
            black_box(&buf);
        })
    });
    a.shutdown(Shutdown::Both).unwrap();
    echo.join().unwrap();
}

/// Floor with kvmi-proto's thread layout: the caller writes, the peer answers, a
/// dedicated reader thread reads the answer and hands it over a crossbeam channel
/// (three thread wake-ups per round trip).
fn floor_reader_thread(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, reply: usize) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    let echo = spawn_echo(b, reply);
    let mut rd = a.try_clone().expect("clone");
    let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(1);
    let reader = thread::spawn(move || loop {
        let mut buf = vec![0u8; reply];
        if rd.read_exact(&mut buf).is_err() || tx.send(buf).is_err() {
            break;
        }
    });
    let mut w = a;
    let req = [0xa5u8; 16];
    g.bench_function(name, |bch| {
        bch.iter(|| {
            w.write_all(&req).unwrap();
            black_box(rx.recv().unwrap());
        })
    });
    w.shutdown(Shutdown::Both).unwrap();
    echo.join().unwrap();
    reader.join().unwrap();
}

fn read_req(i: usize) -> sys::VmReadPhysical {
    sys::VmReadPhysical {
        gpa: BASE + (i * PAGE) as u64,
        size: PAGE as u64,
    }
}

fn single(c: &mut Criterion) {
    let (conn, sim) = setup();
    let mut g = c.benchmark_group("single");
    g.bench_function("get_version", |b| {
        b.iter(|| black_box(conn.get_version().unwrap()))
    });
    g.bench_function("read_physical_4KiB", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let d = conn.read_physical(read_req(i % N).gpa, PAGE).unwrap();
            i += 1;
            black_box(d)
        })
    });
    // Same as `get_version`, but never letting the simulator's 10 000-record
    // transcript fill up (a fresh pair every FRESH_ROUND_TRIPS; setup not timed).
    g.bench_function("get_version_fresh_sim", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(FRESH_ROUND_TRIPS);
                let (c2, s2) = setup();
                let t0 = Instant::now();
                for _ in 0..n {
                    black_box(c2.get_version().unwrap());
                }
                total += t0.elapsed();
                drop(c2);
                drop(s2);
                left -= n;
            }
            total
        })
    });
    g.finish();
    assert!(!conn.is_closed());
    drop(conn);
    drop(sim);
}

fn read_64(c: &mut Criterion) {
    let (conn, sim) = setup();
    // Sanity: the pattern is there and both paths return it.
    let want = sim.vm().memory.read(BASE + 5 * PAGE as u64, PAGE).unwrap();
    assert_eq!(
        conn.read_physical(BASE + 5 * PAGE as u64, PAGE).unwrap(),
        want
    );
    let mut g = c.benchmark_group("read_physical_64x4KiB");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("sequential", |b| {
        b.iter(|| {
            for i in 0..N {
                black_box(conn.read_physical(read_req(i).gpa, PAGE).unwrap());
            }
        })
    });
    g.bench_function("pipelined", |b| {
        b.iter(|| {
            let pending: Vec<_> = (0..N)
                .map(|i| {
                    conn.send_request(sys::KVMI_VM_READ_PHYSICAL, read_req(i).as_bytes())
                        .unwrap()
                })
                .collect();
            for p in pending {
                let d = p.wait(T).unwrap();
                assert_eq!(d.len(), PAGE);
                black_box(d);
            }
        })
    });
    g.finish();
    drop(conn);
    drop(sim);
}

fn access_entry(i: usize, round: usize) -> (u64, u8) {
    let access = if (i + round) % 2 == 0 {
        sys::KVMI_PAGE_ACCESS_R | sys::KVMI_PAGE_ACCESS_X
    } else {
        sys::KVMI_PAGE_ACCESS_RWX
    };
    (BASE + (i * PAGE) as u64, access)
}

fn commands_64(c: &mut Criterion) {
    let (conn, sim) = setup();
    let mut g = c.benchmark_group("set_page_access_64");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("one_by_one", |b| {
        let mut round = 0usize;
        b.iter(|| {
            for i in 0..N {
                conn.set_page_access(0, &[access_entry(i, round)]).unwrap();
            }
            round += 1;
        })
    });
    g.bench_function("batch", |b| {
        let mut round = 0usize;
        b.iter(|| {
            let mut batch = Batch::new(&conn);
            for i in 0..N {
                batch.set_page_access(0, &[access_entry(i, round)]).unwrap();
            }
            batch.commit(T).unwrap();
            round += 1;
        })
    });
    g.finish();
    // A batch reaches the simulator's model.
    let mut batch = Batch::new(&conn);
    batch
        .set_page_access(0, &[(BASE, sys::KVMI_PAGE_ACCESS_R)])
        .unwrap();
    batch.commit(T).unwrap();
    assert!(sim.vm().access_restricted(0, BASE, sys::KVMI_PAGE_ACCESS_W));
    drop(conn);
    drop(sim);
}

fn cr_event(c: &mut Criterion) {
    let (conn, sim) = setup();
    conn.control_events(0, sys::KVMI_EVENT_CR, true).unwrap();
    conn.control_cr(0, 3, true).unwrap();
    let conn = Arc::new(conn);
    let stop = Arc::new(AtomicBool::new(false));
    let tool = {
        let conn = Arc::clone(&conn);
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let mut handled = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match conn.next_event(Duration::from_millis(50)) {
                    Ok(ev) => {
                        let EventKind::Cr(cr) = ev.kind else {
                            panic!("unexpected event {:?}", ev.kind)
                        };
                        ev.reply_cr(Action::Continue, cr.new_value + 1).unwrap();
                        handled += 1;
                    }
                    Err(ProtoError::Timeout(_)) => {}
                    Err(e) => panic!("next_event: {e}"),
                }
            }
            handled
        })
    };
    let ev = SimEvent::Cr {
        cr: 3,
        old: 0x1000,
        new: 0x2000,
    };
    let mut g = c.benchmark_group("event");
    g.bench_function("cr_trigger_to_wait_reply", |b| {
        b.iter(|| {
            let h = sim.trigger(0, ev.clone()).unwrap();
            let r = h.wait_reply(T).unwrap();
            assert_eq!(r.new_val, Some(0x2001));
        })
    });
    g.finish();
    stop.store(true, Ordering::Relaxed);
    // (0 when the bench was filtered out.)
    black_box(tool.join().unwrap());
    drop(conn);
    drop(sim);
}

fn main() {
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let mut g = c.benchmark_group("floor");
    floor_direct(&mut g, "unix_pingpong_16B", 16);
    floor_direct(&mut g, "unix_pingpong_4KiB_reply", PAGE);
    floor_reader_thread(&mut g, "reader_thread_16B", 16);
    floor_reader_thread(&mut g, "reader_thread_4KiB_reply", PAGE);
    g.finish();
    single(&mut c);
    read_64(&mut c);
    commands_64(&mut c);
    cr_event(&mut c);

    c.final_summary();
}
