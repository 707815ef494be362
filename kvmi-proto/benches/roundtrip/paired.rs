//! The paired floor / measured comparison printed after the criterion benches (see
//! [`paired`]).

use super::*;

/// One measured operation of the paired comparison: runs `n` iterations, returns the
/// elapsed time.
type Op<'a> = Box<dyn FnMut(u64) -> Duration + 'a>;

/// A raw ping-pong client for the paired comparison (peer thread or process kept
/// alive by the returned guard).
fn pingpong_op(mut a: UnixStream, req: usize, reply: usize) -> Op<'static> {
    let out = vec![0xa5u8; req];
    let mut buf = vec![0u8; reply];
    Box::new(move |n| {
        let t0 = Instant::now();
        for _ in 0..n {
            a.write_all(&out).unwrap();
            a.read_exact(&mut buf).unwrap();
        }
        black_box(&buf);
        t0.elapsed()
    })
}

fn echo_pair_threads(req: usize, reply: usize) -> UnixStream {
    let (a, b) = UnixStream::pair().expect("socketpair");
    thread::spawn(move || echo_loop(b, req, reply));
    a
}

fn echo_pair_2proc(req: usize, reply: usize, children: &mut Vec<Child>) -> UnixStream {
    let path = sock_path("echo");
    let l = UnixListener::bind(&path).expect("bind");
    children.push(spawn_peer(&format!(
        "echo:{}:{req}:{reply}",
        path.display()
    )));
    let (a, _) = l.accept().expect("accept");
    let _ = std::fs::remove_file(&path);
    a
}

fn get_version_op(conn: &Connection) -> Op<'_> {
    Box::new(move |n| {
        let t0 = Instant::now();
        for _ in 0..n {
            black_box(conn.get_version().unwrap());
        }
        t0.elapsed()
    })
}

fn read_4k_op(conn: &Connection) -> Op<'_> {
    let mut i = 0usize;
    Box::new(move |n| {
        let t0 = Instant::now();
        for _ in 0..n {
            black_box(conn.read_physical(read_req(i % N).gpa, PAGE).unwrap());
            i += 1;
        }
        t0.elapsed()
    })
}

/// An event loop over `vcpus` vCPUs (`handlers` threads) against a raw host; the
/// handlers stop when `stop` is set.
fn event_op(handlers: usize, vcpus: usize, stop: &Arc<AtomicBool>) -> Op<'static> {
    let (conn, mut host) = raw_host_pair();
    let conn = Arc::new(conn);
    drop(spawn_handlers(&conn, handlers, stop));
    let mut frames: Vec<_> = (0..vcpus).map(|v| cr_event_frame(0, v as u16)).collect();
    let mut seq = 0u32;
    Box::new(move |n| {
        let _keep = &conn;
        drive_events(&mut host, &mut frames, n, vcpus, &mut seq)
    })
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Paired comparison, robust against the load of a shared machine drifting during the
/// run: each pair alternates short blocks (~`BLOCK`, same iteration count) of its floor
/// and its measured operation, `ROUNDS` times; the table shows the median per-op time
/// of each side's blocks and their ratio. Set `KVMI_PROTO_BENCH_PAIRED=0` to skip.
pub(crate) fn paired() {
    const ROUNDS: usize = 201;
    const BLOCK: Duration = Duration::from_millis(2);
    if std::env::var("KVMI_PROTO_BENCH_PAIRED").is_ok_and(|v| v == "0") {
        return;
    }
    let mut children = Vec::new();
    let stop = Arc::new(AtomicBool::new(false));
    let (sim_conn, sim) = setup();
    let (proc_conn, sim_child) = setup_2proc();
    let (raw_conn, raw_host) = raw_command_host();
    let mut pairs: Vec<(&str, Op<'_>, &str, Op<'_>)> = vec![
        (
            "floor/unix_pingpong_16B",
            pingpong_op(echo_pair_threads(16, 16), 16, 16),
            "single/get_version_raw_host",
            get_version_op(&raw_conn),
        ),
        (
            "floor/unix_pingpong_4KiB_reply",
            pingpong_op(echo_pair_threads(16, PAGE), 16, PAGE),
            "single/read_physical_4k_raw_host",
            read_4k_op(&raw_conn),
        ),
        (
            "floor/unix_pingpong_16B",
            pingpong_op(echo_pair_threads(16, 16), 16, 16),
            "single/get_version",
            get_version_op(&sim_conn),
        ),
        (
            "floor/unix_pingpong_16B_2proc",
            pingpong_op(echo_pair_2proc(16, 16, &mut children), 16, 16),
            "single/get_version_2proc",
            get_version_op(&proc_conn),
        ),
        (
            "floor/unix_pingpong_4KiB_reply",
            pingpong_op(echo_pair_threads(16, PAGE), 16, PAGE),
            "single/read_physical_4k",
            read_4k_op(&sim_conn),
        ),
        (
            "floor/unix_pingpong_4KiB_reply_2proc",
            pingpong_op(echo_pair_2proc(16, PAGE, &mut children), 16, PAGE),
            "single/read_physical_4k_2proc",
            read_4k_op(&proc_conn),
        ),
        (
            "floor/event_pingpong",
            pingpong_op(
                echo_pair_threads(EVENT_FRAME, CR_REPLY_FRAME),
                EVENT_FRAME,
                CR_REPLY_FRAME,
            ),
            "event/cr_1vcpu",
            event_op(1, 1, &stop),
        ),
    ];
    for (handlers, vcpus, name) in [
        (1, 2, "event_throughput/one_loop_vcpus_2"),
        (1, 4, "event_throughput/one_loop_vcpus_4"),
        (2, 2, "event_throughput/thread_per_vcpu_2"),
        (4, 4, "event_throughput/thread_per_vcpu_4"),
    ] {
        pairs.push((
            "event_throughput/one_loop_vcpus_1",
            event_op(1, 1, &stop),
            name,
            event_op(handlers, vcpus, &stop),
        ));
    }
    // Calibrate: iterations per block from a short run of the target.
    let counts: Vec<u64> = pairs
        .iter_mut()
        .map(|(_, f, _, t)| {
            f(50);
            let d = t(200);
            (BLOCK.as_secs_f64() / (d.as_secs_f64() / 200.0)).clamp(20.0, 20_000.0) as u64
        })
        .collect();
    println!(
        "\npaired comparison ({ROUNDS} alternating blocks of ~{BLOCK:?} per side; µs per \
         operation or event: median and 10th percentile of the blocks)"
    );
    println!(
        "{:<38} {:>7} {:>7}   {:<34} {:>7} {:>7} {:>7} {:>7}",
        "floor", "median", "p10", "measured", "median", "p10", "ratio", "p10"
    );
    for (i, (fname, f, tname, t)) in pairs.iter_mut().enumerate() {
        let n = counts[i];
        let (mut fl, mut tg) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            fl.push(f(n).as_secs_f64() * 1e6 / n as f64);
            tg.push(t(n).as_secs_f64() * 1e6 / n as f64);
        }
        let (mf, mt) = (median(&mut fl), median(&mut tg));
        let (pf, pt) = (fl[ROUNDS / 10], tg[ROUNDS / 10]);
        println!(
            "{fname:<38} {mf:>7.2} {pf:>7.2}   {tname:<34} {mt:>7.2} {pt:>7.2} {:>6.2}× {:>6.2}×",
            mt / mf,
            pt / pf
        );
    }
    stop.store(true, Ordering::Relaxed);
    drop(pairs);
    drop(raw_conn);
    let _ = raw_host.join();
    drop(proc_conn);
    drop(sim_conn);
    drop(sim);
    for mut c in children.into_iter().chain([sim_child]) {
        let _ = c.wait();
    }
}
