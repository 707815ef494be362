//! The QMP client against scripted servers on socket pairs.

use super::*;
use std::io::{BufRead, BufReader};
use std::thread;

const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}}"#;

/// A scripted QMP server: answers each command with `respond(cmd, id)`, which
/// returns the raw lines to send.
fn server(
    respond: impl Fn(&Value) -> Vec<String> + Send + 'static,
) -> (UnixStream, thread::JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut w = b.try_clone().unwrap();
        writeln!(w, "{GREETING}").unwrap();
        let mut r = BufReader::new(b);
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let cmd: Value = serde_json::from_str(&line).unwrap();
            for out in respond(&cmd) {
                if w.write_all(out.as_bytes()).is_err() {
                    return;
                }
            }
            line.clear();
        }
    });
    (a, h)
}

fn ok(cmd: &Value, ret: Value) -> String {
    format!("{}\n", json!({"return": ret, "id": cmd["id"]}))
}

#[test]
fn negotiates_and_executes_with_ids_and_events() {
    let (s, h) = server(|cmd| match cmd["execute"].as_str().unwrap() {
        "qmp_capabilities" => vec![ok(cmd, json!({}))],
        "stop" => vec![
            // A stale reply to an older id must be skipped.
            format!("{}\n", json!({"return": {"stale": true}, "id": 999_999})),
            "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n"
                .into(),
            ok(cmd, json!({})),
        ],
        "query-status" => vec![ok(
            cmd,
            json!({"status": "paused", "singlestep": false, "running": false}),
        )],
        "query-cpus-fast" => vec![ok(
            cmd,
            json!([
                {"thread-id": 6022, "props": {"core-id": 1, "thread-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[2]", "cpu-index": 1, "target": "x86_64"},
                {"thread-id": 6021, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, "qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}
            ]),
        )],
        "query-memory-size-summary" => {
            vec![ok(
                cmd,
                json!({"base-memory": 67108864, "plugged-memory": 0}),
            )]
        }
        "query-version" => vec![ok(
            cmd,
            json!({"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}),
        )],
        "human-monitor-command" => {
            assert_eq!(cmd["arguments"]["cpu-index"], json!(1));
            vec![ok(cmd, json!("CPU#1\r\n"))]
        }
        "bogus" => vec![format!(
            "{}\n",
            json!({"error": {"class": "CommandNotFound", "desc": "The command bogus has not been found"}, "id": cmd["id"]})
        )],
        _ => vec![],
    });
    let mut c = QmpClient::from_stream(s, Duration::from_secs(5)).unwrap();
    assert_eq!(c.greeting().version.major, 7);
    assert_eq!(c.greeting().capabilities, vec!["oob".to_owned()]);
    c.stop().unwrap();
    let st = c.query_status().unwrap();
    assert!(!st.running);
    assert_eq!(st.status, "paused");
    let cpus = c.query_cpus_fast().unwrap();
    assert_eq!(cpus.len(), 2);
    assert_eq!(cpus[0].cpu_index, 0);
    assert_eq!(cpus[0].thread_id, 6021);
    assert_eq!(cpus[1].props.as_ref().unwrap().core_id, Some(1));
    assert_eq!(c.query_memory_size_summary().unwrap().base_memory, 64 << 20);
    assert_eq!(c.query_version().unwrap().to_string(), "7.2.22 (Debian)");
    assert_eq!(
        c.human_monitor_command_on("info registers", Some(1))
            .unwrap(),
        "CPU#1\r\n"
    );
    let e = c.execute("bogus", None).unwrap_err();
    assert_eq!(qmp_error(&e).unwrap().class, "CommandNotFound");
    assert!(e.to_string().contains("QMP bogus"), "{e}");
    let ev = c.wait_event("STOP", Duration::from_millis(10)).unwrap();
    assert_eq!(ev.timestamp, Some((1, 2)));
    assert!(c.events().unwrap().is_empty());
    assert!(
        c.execute("x", Some(json!([1]))).is_err(),
        "arguments must be an object"
    );
    drop(c);
    h.join().unwrap();
}

#[test]
fn times_out_and_skips_the_late_reply() {
    let (s, h) = server(|cmd| match cmd["execute"].as_str().unwrap() {
        "qmp_capabilities" => vec![ok(cmd, json!({}))],
        "slow" => {
            thread::sleep(Duration::from_millis(300));
            vec![ok(cmd, json!("late"))]
        }
        _ => vec![ok(cmd, json!("fast"))],
    });
    let mut c = QmpClient::from_stream(s, Duration::from_secs(5)).unwrap();
    c.set_timeout(Duration::from_millis(100)).unwrap();
    assert!(matches!(
        c.execute("slow", None),
        Err(Error::Timeout { .. })
    ));
    c.set_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(c.execute("next", None).unwrap(), json!("fast"));
    assert!(matches!(
        c.wait_event("NEVER", Duration::from_millis(50)),
        Err(Error::Timeout { .. })
    ));
    drop(c);
    h.join().unwrap();
}

#[test]
fn duration_max_waits_without_a_deadline_instead_of_panicking() {
    // `Instant::now() + Duration::MAX` used to panic here; now MAX means "no deadline".
    let (s, h) = server(|cmd| match cmd["execute"].as_str().unwrap() {
        "qmp_capabilities" => vec![ok(cmd, json!({}))],
        "slow" => {
            thread::sleep(Duration::from_millis(150));
            vec![ok(cmd, json!("late")), "{\"event\": \"LATER\"}\n".into()]
        }
        _ => vec![],
    });
    let mut c = QmpClient::from_stream(s, Duration::MAX).unwrap();
    assert_eq!(c.execute("slow", None).unwrap(), json!("late"));
    assert_eq!(c.wait_event("LATER", Duration::MAX).unwrap().event, "LATER");
    drop(c);
    h.join().unwrap();
}

#[test]
fn bounded_lines_and_protocol_violations_break_the_connection() {
    let (s, h) = server(|cmd| match cmd["execute"].as_str().unwrap() {
        "qmp_capabilities" => vec![ok(cmd, json!({}))],
        "huge" => vec![format!("{{\"return\": \"{}\"", "x".repeat(300_000))],
        _ => vec![],
    });
    let mut c = QmpClient::from_stream(s, Duration::from_secs(5)).unwrap();
    c.set_max_line(100_000);
    assert!(matches!(
        c.execute("huge", None),
        Err(Error::Malformed { .. })
    ));
    assert!(c.buf.len() <= 100_001 + 64 * 1024);
    assert!(matches!(
        c.execute("next", None),
        Err(Error::Disconnected { .. })
    ));
    drop(c);
    h.join().unwrap();

    let (s, h) = server(|cmd| match cmd["execute"].as_str().unwrap() {
        "qmp_capabilities" => vec![ok(cmd, json!({}))],
        _ => vec!["not json\n".into()],
    });
    let mut c = QmpClient::from_stream(s, Duration::from_secs(5)).unwrap();
    assert!(matches!(c.execute("x", None), Err(Error::Malformed { .. })));
    assert!(matches!(
        c.execute("x", None),
        Err(Error::Disconnected { .. })
    ));
    drop(c);
    h.join().unwrap();
}

#[test]
fn event_queue_is_bounded() {
    let (s, h) = server(|cmd| match cmd["execute"].as_str().unwrap() {
        "qmp_capabilities" => vec![ok(cmd, json!({}))],
        _ => {
            let mut v: Vec<String> = (0..10)
                .map(|i| format!("{}\n", json!({"event": "E", "data": {"i": i}})))
                .collect();
            v.push(ok(cmd, json!({})));
            v
        }
    });
    let mut c = QmpClient::from_stream(s, Duration::from_secs(5)).unwrap();
    c.set_event_capacity(4);
    c.execute("spam", None).unwrap();
    assert_eq!(c.dropped_events(), 6);
    let evs = c.events().unwrap();
    assert_eq!(evs.len(), 4);
    assert_eq!(evs[0].data["i"], json!(6));
    drop(c);
    h.join().unwrap();
}

#[test]
fn rejects_a_non_qmp_greeting_and_closed_sockets() {
    let (a, b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut b = b;
        writeln!(b, "{{\"hello\": 1}}").unwrap();
    });
    assert!(QmpClient::from_stream(a, Duration::from_secs(2)).is_err());
    h.join().unwrap();

    let (a, b) = UnixStream::pair().unwrap();
    drop(b);
    assert!(matches!(
        QmpClient::from_stream(a, Duration::from_secs(2)),
        Err(Error::Disconnected { .. })
    ));

    // A peer that never greets (QEMU with another client on the socket).
    let (a, _b) = UnixStream::pair().unwrap();
    let e = QmpClient::from_stream(a, Duration::from_millis(50)).unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e:?}");
    assert!(e.to_string().contains("probably in use"), "{e}");
}

/// QEMU keeps a monitor's unsent output across clients: an event and a reply meant for
/// the previous client may precede our greeting. They are skipped, a bounded number.
#[test]
fn output_left_over_from_the_previous_client_precedes_the_greeting() {
    let stale_event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#;
    let stale_reply = r#"{"return": {"status": "running", "running": true}, "id": 7}"#;
    let (a, b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut w = b.try_clone().unwrap();
        writeln!(w, "{stale_event}\n{stale_reply}\n{GREETING}").unwrap();
        let mut r = BufReader::new(b);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let cmd: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(cmd["execute"], "qmp_capabilities");
        w.write_all(ok(&cmd, json!({})).as_bytes()).unwrap();
    });
    let c = QmpClient::from_stream(a, Duration::from_secs(5)).unwrap();
    assert_eq!(c.greeting().version.major, 7);
    h.join().unwrap();

    // Left-over messages without end never make a greeting.
    let (a, b) = UnixStream::pair().unwrap();
    let h = thread::spawn(move || {
        let mut b = b;
        for _ in 0..=MAX_STALE_BEFORE_GREETING {
            if writeln!(b, "{stale_event}").is_err() {
                return;
            }
        }
    });
    let e = QmpClient::from_stream(a, Duration::from_secs(5)).unwrap_err();
    assert!(e.to_string().contains("not a QMP greeting"), "{e}");
    h.join().unwrap();
}

#[test]
fn peer_pid_of_a_socket_pair_is_ours() {
    let (a, _b) = UnixStream::pair().unwrap();
    let (s, h) = server(|cmd| vec![ok(cmd, json!({}))]);
    let c = QmpClient::from_stream(s, Duration::from_secs(2)).unwrap();
    assert_eq!(c.peer_pid().unwrap(), std::process::id() as libc::pid_t);
    drop((a, c));
    h.join().unwrap();
}

#[test]
fn a_slow_hmp_reply_names_the_command_and_what_raises_the_limit() {
    let (s, h) = server(|cmd| match cmd["execute"].as_str().unwrap() {
        "qmp_capabilities" => vec![ok(cmd, json!({}))],
        _ => {
            thread::sleep(Duration::from_millis(300));
            vec![ok(cmd, json!("late"))]
        }
    });
    let mut c = QmpClient::from_stream(s, Duration::from_millis(100)).unwrap();
    let e = c.human_monitor_command("info mtree -f").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(
        msg.contains("HMP `info mtree -f`") && msg.contains("LegacyConfig::timeout"),
        "{msg}"
    );
    drop(c);
    h.join().unwrap();
}
