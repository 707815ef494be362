//! Round-trip costs of kvmi-proto over a real UNIX socket, each beside the physical
//! floor measured in the same run (`cargo xtask bench -p kvmi-proto --bench roundtrip`
//! runs it with one idle-priority spinner per core, see the README).
//!
//! * `floor/*`: raw `UnixStream` ping-pong with the same message sizes, between two
//!   threads and between two processes (the peer is this executable re-run in a child
//!   process).
//! * `single/*`, `read_physical_64x4KiB/*`, `set_page_access_64/*`: commands against the
//!   `kvmi-sim` host simulator (a thread, or a child process for `*_2proc`). Every number
//!   includes the simulator's own work (frame parsing, the guest model, its statistics).
//!   `single/*_raw_host`: the same commands against a scripted host thread answering
//!   with pre-built replies (one `read` and one `write` per request, like the floor's
//!   echo), so the difference to the floor is kvmi-proto's own cost.
//! * After the criterion benches, a paired comparison (floor and measured operation
//!   back to back in each of 11 rounds, median of the per-round ratios) prints the ratio
//!   table; it is what the README reports, being robust against load drifting on a
//!   shared machine.
//! * `event/cr_1vcpu`, `event_throughput/*`: the tool's event loop (`next_event` →
//!   `reply_cr`) against a scripted raw host thread that writes a CR event and reads the
//!   reply, i.e. the same two messages as `floor/event_pingpong`; with several vCPUs,
//!   one event in flight per vCPU, handled by one event loop (`one_loop_vcpus_N`) or by
//!   one handler thread per vCPU (`thread_per_vcpu_N`).
//! * `event/cr_sim_trigger_to_wait_reply`: the same through the simulator (which adds a
//!   thread hop: its server thread reads the reply and wakes the triggering thread).
//! * Everything runs pinned to one CPU (`KVMI_PROTO_BENCH_CPU`, see `pin`), floors and
//!   measured operations alike, so every round trip is two context switches on that
//!   CPU and no cross-CPU wake-up.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command};
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
/// Environment variable that turns this executable into a benchmark peer process.
const CHILD_ENV: &str = "KVMI_PROTO_BENCH_PEER";
/// A CR event frame: header + common event part + `kvmi_event_cr`.
const EVENT_FRAME: usize = sys::MSG_HDR_SIZE + sys::EVENT_SIZE + 24;
/// A CR event reply frame: header + vCPU header + `kvmi_event_reply` + new value.
const CR_REPLY_FRAME: usize = sys::MSG_HDR_SIZE + 8 + 8 + 8;

fn sock_path(what: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "kvmi-proto-bench-{what}-{}-{}.sock",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

fn sim_config() -> SimConfig {
    let mut sc = SimConfig::default();
    let pattern: Vec<u8> = (0..N * PAGE).map(|i| (i * 7 + 3) as u8).collect();
    sc.memory.load(BASE, &pattern);
    sc
}

fn tool_config(probe: bool) -> Config {
    Config {
        request_timeout: T,
        probe,
        ..Config::default()
    }
}

/// A `Listener` + `Simulator::connect` pair over a fresh UNIX socket, with 64 pages of
/// guest memory pre-filled with a pattern.
fn setup() -> (Connection, Simulator) {
    let path = sock_path("sim");
    let listener = Listener::bind(&path, tool_config(true)).expect("bind");
    let p = path.clone();
    let sim = thread::spawn(move || Simulator::connect(&p, sim_config()).expect("sim connect"));
    let conn = listener.accept(T).expect("accept");
    let sim = sim.join().expect("simulator thread");
    drop(listener);
    let _ = std::fs::remove_file(&path);
    (conn, sim)
}

/// The same with the simulator in a child process.
fn setup_2proc() -> (Connection, Child) {
    let path = sock_path("sim2");
    let listener = Listener::bind(&path, tool_config(true)).expect("bind");
    let child = spawn_peer(&format!("sim:{}", path.display()));
    let conn = listener.accept(T).expect("accept");
    drop(listener);
    let _ = std::fs::remove_file(&path);
    (conn, child)
}

fn spawn_peer(spec: &str) -> Child {
    Command::new(std::env::current_exe().expect("current_exe"))
        .env(CHILD_ENV, spec)
        .spawn()
        .expect("spawn peer process")
}

/// Body of a peer process: `echo:PATH:REQ:REPLY` (read REQ bytes, answer REPLY bytes)
/// or `sim:PATH` (a simulator until the tool hangs up).
fn peer_main(spec: &str) {
    let mut parts = spec.splitn(2, ':');
    let kind = parts.next().unwrap_or_default();
    let rest = parts.next().unwrap_or_default();
    match kind {
        "echo" => {
            let mut f = rest.rsplitn(3, ':');
            let reply: usize = f.next().and_then(|v| v.parse().ok()).expect("reply size");
            let req: usize = f.next().and_then(|v| v.parse().ok()).expect("request size");
            let path = f.next().expect("path");
            let s = UnixStream::connect(path).expect("connect");
            echo_loop(s, req, reply);
        }
        "sim" => {
            let sim = Simulator::connect(rest, sim_config()).expect("sim connect");
            // Poll instead of `wait_closed`: a thread blocked on the simulator's condition
            // variable would be woken by every message the simulator handles.
            while sim.closed().is_none() {
                thread::sleep(Duration::from_millis(50));
            }
        }
        other => panic!("unknown peer kind {other:?}"),
    }
}

/// Reads `req`-byte messages and answers each with `reply` bytes until EOF.
fn echo_loop(mut s: UnixStream, req: usize, reply: usize) {
    let mut buf = vec![0u8; req];
    let out = vec![0x5au8; reply];
    while s.read_exact(&mut buf).is_ok() {
        if s.write_all(&out).is_err() {
            break;
        }
    }
}

/// Floor: a `req`-byte message and a `reply`-byte answer between two threads over a
/// `UnixStream` pair (two thread wake-ups per round trip).
fn floor_threads(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, req: usize, reply: usize) {
    let (mut a, b) = UnixStream::pair().expect("socketpair");
    let echo = thread::spawn(move || echo_loop(b, req, reply));
    pingpong(g, name, &mut a, req, reply);
    a.shutdown(Shutdown::Both).unwrap();
    echo.join().unwrap();
}

/// The same floor with the peer in another process.
fn floor_2proc(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, req: usize, reply: usize) {
    let path = sock_path("echo");
    let l = UnixListener::bind(&path).expect("bind");
    let mut child = spawn_peer(&format!("echo:{}:{req}:{reply}", path.display()));
    let (mut a, _) = l.accept().expect("accept");
    let _ = std::fs::remove_file(&path);
    pingpong(g, name, &mut a, req, reply);
    a.shutdown(Shutdown::Both).unwrap();
    child.wait().expect("echo process");
}

fn pingpong(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    a: &mut UnixStream,
    req: usize,
    reply: usize,
) {
    let out = vec![0xa5u8; req];
    let mut buf = vec![0u8; reply];
    g.bench_function(name, |bch| {
        bch.iter(|| {
            a.write_all(&out).unwrap();
            a.read_exact(&mut buf).unwrap();
            black_box(&buf);
        })
    });
}

/// Floor with a reader thread between the socket and the caller (kvmi-proto's layout
/// before the leader/follower receive path): three thread wake-ups per round trip.
fn floor_reader_thread(g: &mut BenchmarkGroup<'_, WallTime>, name: &str, reply: usize) {
    let (a, b) = UnixStream::pair().expect("socketpair");
    let echo = thread::spawn(move || echo_loop(b, 16, reply));
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

fn single_benches(g: &mut BenchmarkGroup<'_, WallTime>, conn: &Connection, suffix: &str) {
    g.bench_function(format!("get_version{suffix}"), |b| {
        b.iter(|| black_box(conn.get_version().unwrap()))
    });
    g.bench_function(format!("read_physical_4k{suffix}"), |b| {
        let mut i = 0usize;
        b.iter(|| {
            let d = conn.read_physical(read_req(i % N).gpa, PAGE).unwrap();
            i += 1;
            black_box(d)
        })
    });
}

fn single(c: &mut Criterion) {
    let mut g = c.benchmark_group("single");
    let (conn, sim) = setup();
    single_benches(&mut g, &conn, "");
    assert!(!conn.is_closed());
    drop(conn);
    drop(sim);
    let (conn, mut child) = setup_2proc();
    // Sanity: the child simulator serves the same pattern.
    assert_eq!(
        conn.read_physical(BASE + 5 * PAGE as u64, 4).unwrap(),
        sim_config().memory.read(BASE + 5 * PAGE as u64, 4).unwrap()
    );
    single_benches(&mut g, &conn, "_2proc");
    drop(conn);
    child.wait().expect("simulator process");
    let (conn, host) = raw_command_host();
    single_benches(&mut g, &conn, "_raw_host");
    drop(conn);
    host.join().expect("raw host");
    g.finish();
}

fn read_64(c: &mut Criterion) {
    let (conn, sim) = setup();
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
    let mut batch = Batch::new(&conn);
    batch
        .set_page_access(0, &[(BASE, sys::KVMI_PAGE_ACCESS_R)])
        .unwrap();
    batch.commit(T).unwrap();
    assert!(sim.vm().access_restricted(0, BASE, sys::KVMI_PAGE_ACCESS_W));
}

/// A connection to a scripted raw host (handshake and `GET_VERSION` by hand, no probe):
/// the host side is a bare `UnixStream` the bench drives itself.
fn raw_host_pair() -> (Connection, UnixStream) {
    let path = sock_path("raw");
    let l = Listener::bind(&path, tool_config(false)).expect("bind");
    let p = path.clone();
    let host = thread::spawn(move || {
        let mut s = UnixStream::connect(&p).expect("connect");
        let hello = sys::QemuToIntrospector {
            struct_size: sys::QEMU_TO_INTROSPECTOR_SIZE as u32,
            ..Default::default()
        };
        s.write_all(hello.as_bytes()).unwrap();
        let mut reply = [0u8; sys::QEMU_FROM_INTROSPECTOR_SIZE];
        s.read_exact(&mut reply).unwrap();
        let mut h = [0u8; sys::MSG_HDR_SIZE];
        s.read_exact(&mut h).unwrap();
        let hdr: sys::MsgHdr = zerocopy::FromBytes::read_from_bytes(&h[..]).unwrap();
        assert_eq!((hdr.id, hdr.size), (sys::KVMI_GET_VERSION, 0));
        let v = sys::GetVersionReply {
            version: sys::KVMI_VERSION,
            ..Default::default()
        };
        let m = kvmi_proto::codec::encode_reply(hdr.id, hdr.seq, 0, v.as_bytes()).unwrap();
        s.write_all(&m).unwrap();
        // The setup asks for the vCPU count next (since 51d2a6b; this bench's raw host
        // did not answer it, and `accept` timed out).
        s.read_exact(&mut h).unwrap();
        let hdr: sys::MsgHdr = zerocopy::FromBytes::read_from_bytes(&h[..]).unwrap();
        assert_eq!(hdr.id, sys::KVMI_VM_GET_INFO);
        let mut payload = vec![0u8; usize::from(hdr.size)];
        s.read_exact(&mut payload).unwrap();
        let info = sys::VmGetInfoReply {
            vcpu_count: 1,
            padding: [0; 3],
        };
        let m = kvmi_proto::codec::encode_reply(hdr.id, hdr.seq, 0, info.as_bytes()).unwrap();
        s.write_all(&m).unwrap();
        s
    });
    let conn = l.accept(T).expect("accept");
    drop(l);
    let _ = std::fs::remove_file(&path);
    (conn, host.join().unwrap())
}

/// A scripted raw host answering `GET_VERSION` and `VM_READ_PHYSICAL` (4 KiB of 0x5a)
/// with pre-built replies: the cost of the host side is that of the floor's echo
/// (one `read`, one `write` per request), so the difference to the floor is kvmi-proto's.
fn raw_command_host() -> (Connection, JoinHandle<()>) {
    let (conn, mut s) = raw_host_pair();
    let host = thread::spawn(move || {
        let v = sys::GetVersionReply {
            version: sys::KVMI_VERSION,
            ..Default::default()
        };
        let mut version =
            kvmi_proto::codec::encode_reply(sys::KVMI_GET_VERSION, 0, 0, v.as_bytes()).unwrap();
        let mut page =
            kvmi_proto::codec::encode_reply(sys::KVMI_VM_READ_PHYSICAL, 0, 0, &[0x5a; PAGE])
                .unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut have = 0usize;
        loop {
            match s.read(&mut buf[have..]) {
                Ok(0) | Err(_) => return,
                Ok(n) => have += n,
            }
            let mut at = 0;
            while let Ok(Some((f, used))) = kvmi_proto::codec::decode(&buf[at..have]) {
                let reply = match f.hdr.id {
                    sys::KVMI_GET_VERSION => &mut version,
                    sys::KVMI_VM_READ_PHYSICAL => &mut page,
                    other => panic!("raw host: unexpected command {other}"),
                };
                reply[4..8].copy_from_slice(&f.hdr.seq.to_ne_bytes());
                if s.write_all(reply).is_err() {
                    return;
                }
                at += used;
            }
            buf.copy_within(at..have, 0);
            have -= at;
        }
    });
    (conn, host)
}

fn cr_event_frame(seq: u32, vcpu: u16) -> Vec<u8> {
    let ev = sys::Event {
        size: sys::EVENT_SIZE as u16,
        vcpu,
        event: sys::KVMI_EVENT_CR,
        ..Default::default()
    };
    let cr = sys::EventCr {
        cr: 3,
        old_value: 0x1000,
        new_value: 0x2000,
        ..Default::default()
    };
    let f = kvmi_proto::codec::encode(
        sys::KVMI_EVENT,
        seq,
        &[ev.as_bytes(), cr.as_bytes()].concat(),
    )
    .unwrap();
    assert_eq!(f.len(), EVENT_FRAME);
    f
}

/// `handlers` tool threads answering CR events until `stop`.
fn spawn_handlers(
    conn: &Arc<Connection>,
    handlers: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<u64>> {
    (0..handlers)
        .map(|_| {
            let conn = Arc::clone(conn);
            let stop = Arc::clone(stop);
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
                        // The bench is over and its host hung up.
                        Err(ProtoError::Disconnected(_)) if stop.load(Ordering::Relaxed) => break,
                        Err(e) => panic!("next_event: {e}"),
                    }
                }
                handled
            })
        })
        .collect()
}

/// Raw host side: `n` CR events with `inflight` vCPUs busy at once (the next event for
/// a vCPU is sent when its reply arrives); returns the elapsed time. Like a kernel with
/// one thread per vCPU, it takes in every reply that has arrived in one `read` and
/// sends the events that follow in one `write`.
fn drive_events(
    s: &mut UnixStream,
    frames: &mut [Vec<u8>],
    n: u64,
    inflight: usize,
    seq: &mut u32,
) -> Duration {
    let mut buf = vec![0u8; CR_REPLY_FRAME * 64];
    let (mut have, mut received) = (0usize, 0u64);
    let mut out = Vec::with_capacity(EVENT_FRAME * frames.len());
    let queue = |out: &mut Vec<u8>, frames: &mut [Vec<u8>], vcpu: usize, seq: &mut u32| {
        *seq = seq.wrapping_add(1);
        frames[vcpu][4..8].copy_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&frames[vcpu]);
    };
    let t0 = Instant::now();
    let mut sent = 0u64;
    for v in 0..inflight.min(n as usize) {
        queue(&mut out, frames, v, seq);
        sent += 1;
    }
    s.write_all(&out).unwrap();
    while received < n {
        let got = s.read(&mut buf[have..]).unwrap();
        assert!(got > 0, "tool closed the connection");
        have += got;
        out.clear();
        let whole = have / CR_REPLY_FRAME * CR_REPLY_FRAME;
        for r in buf[..whole].chunks_exact(CR_REPLY_FRAME) {
            let vcpu = usize::from(u16::from_ne_bytes([r[8], r[9]]));
            debug_assert_eq!(u64::from_ne_bytes(r[24..32].try_into().unwrap()), 0x2001);
            received += 1;
            if sent < n {
                queue(&mut out, frames, vcpu, seq);
                sent += 1;
            }
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
        if !out.is_empty() {
            s.write_all(&out).unwrap();
        }
    }
    t0.elapsed()
}

fn events(c: &mut Criterion) {
    let mut g = c.benchmark_group("event");
    // The tool's loop against a raw host: the same two messages as the floor below.
    {
        let (conn, mut host) = raw_host_pair();
        let conn = Arc::new(conn);
        let stop = Arc::new(AtomicBool::new(false));
        let handlers = spawn_handlers(&conn, 1, &stop);
        let mut frames = vec![cr_event_frame(0, 0)];
        let mut seq = 0u32;
        // Sanity: the reply carries the handler's value.
        drive_events(&mut host, &mut frames, 1, 1, &mut seq);
        g.bench_function("cr_1vcpu", |b| {
            b.iter_custom(|iters| drive_events(&mut host, &mut frames, iters, 1, &mut seq))
        });
        stop.store(true, Ordering::Relaxed);
        for h in handlers {
            black_box(h.join().unwrap());
        }
    }
    // Through the simulator.
    {
        let (conn, sim) = setup();
        conn.control_events(0, sys::KVMI_EVENT_CR, true).unwrap();
        conn.control_cr(0, 3, true).unwrap();
        let conn = Arc::new(conn);
        let stop = Arc::new(AtomicBool::new(false));
        let handlers = spawn_handlers(&conn, 1, &stop);
        let ev = SimEvent::Cr {
            cr: 3,
            old: 0x1000,
            new: 0x2000,
        };
        g.bench_function("cr_sim_trigger_to_wait_reply", |b| {
            b.iter(|| {
                let h = sim.trigger(0, ev.clone()).unwrap();
                let r = h.wait_reply(T).unwrap();
                assert_eq!(r.new_val, Some(0x2001));
            })
        });
        stop.store(true, Ordering::Relaxed);
        for h in handlers {
            black_box(h.join().unwrap());
        }
    }
    g.finish();

    // Several vCPUs in flight: one event loop for all of them, and one handler thread
    // per vCPU.
    let mut g = c.benchmark_group("event_throughput");
    g.throughput(Throughput::Elements(1));
    for (handlers, vcpus) in [(1usize, 1usize), (1, 2), (1, 4), (2, 2), (4, 4)] {
        let (conn, mut host) = raw_host_pair();
        let conn = Arc::new(conn);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = spawn_handlers(&conn, handlers, &stop);
        let mut frames: Vec<_> = (0..vcpus).map(|v| cr_event_frame(0, v as u16)).collect();
        let mut seq = 0u32;
        let name = if handlers == 1 {
            format!("one_loop_vcpus_{vcpus}")
        } else {
            format!("thread_per_vcpu_{vcpus}")
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| drive_events(&mut host, &mut frames, iters, vcpus, &mut seq))
        });
        stop.store(true, Ordering::Relaxed);
        let handled: u64 = threads.into_iter().map(|h| h.join().unwrap()).sum();
        black_box(handled);
    }
    g.finish();
}

fn floors(c: &mut Criterion) {
    let mut g = c.benchmark_group("floor");
    floor_threads(&mut g, "unix_pingpong_16B", 16, 16);
    floor_threads(&mut g, "unix_pingpong_4KiB_reply", 16, PAGE);
    floor_threads(&mut g, "event_pingpong", EVENT_FRAME, CR_REPLY_FRAME);
    floor_2proc(&mut g, "unix_pingpong_16B_2proc", 16, 16);
    floor_2proc(&mut g, "unix_pingpong_4KiB_reply_2proc", 16, PAGE);
    floor_reader_thread(&mut g, "reader_thread_16B", 16);
    g.finish();
}

#[path = "roundtrip/paired.rs"]
mod paired;

/// Pins this process (its threads and the peer processes it starts inherit it) to the
/// CPU `KVMI_PROTO_BENCH_CPU` names, 0 by default; `off` leaves placement to the
/// scheduler. Unpinned, whether the two ends of a round trip shared a CPU decided a
/// paired block (about 4 µs or about 57 µs per round trip on the VMs this runs on,
/// where an idle vCPU halts), and the comparison came out bimodal.
fn pin() {
    let want = std::env::var("KVMI_PROTO_BENCH_CPU").unwrap_or_else(|_| "0".into());
    if want == "off" {
        return;
    }
    let cpu: usize = want
        .parse()
        .expect("KVMI_PROTO_BENCH_CPU: a CPU number or `off`");
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity only
    // touch the set they are given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0,
            "sched_setaffinity to CPU {cpu}"
        );
    }
    println!("pinned to CPU {cpu} (KVMI_PROTO_BENCH_CPU=off to leave placement to the scheduler)");
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        peer_main(&spec);
        return;
    }
    pin();
    let mut c = Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    floors(&mut c);
    single(&mut c);
    read_64(&mut c);
    commands_64(&mut c);
    events(&mut c);
    c.final_summary();
    paired::paired();
}
