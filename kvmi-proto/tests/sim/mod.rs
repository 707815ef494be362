//! The session both round-trip test binaries start: a kvmi-proto `Listener` and a
//! `kvmi-sim` host handshaking over a fresh UNIX socket.
// Each test binary uses what it needs of this module.
#![allow(dead_code)]

use kvmi_proto::{Config, Connection, Listener};
use kvmi_sim::{SimConfig, Simulator};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

pub(crate) const T: Duration = Duration::from_secs(5);

pub(crate) fn setup(
    abi: kvmi_sim::Abi,
    tweak: impl FnOnce(&mut SimConfig),
) -> (Connection, Simulator) {
    setup_probe(abi, true, tweak)
}

pub(crate) fn setup_probe(
    abi: kvmi_sim::Abi,
    probe: bool,
    tweak: impl FnOnce(&mut SimConfig),
) -> (Connection, Simulator) {
    static N: AtomicU32 = AtomicU32::new(0);
    let path = std::env::temp_dir().join(format!(
        "kvmi-proto-sim-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let cfg = Config {
        secret: Some(b"top secret".to_vec()),
        request_timeout: T,
        probe,
        ..Config::default()
    };
    let l = Listener::bind(&path, cfg).unwrap();
    let mut sc = SimConfig {
        abi,
        secret: Some(b"top secret".to_vec()),
        ..SimConfig::default()
    };
    tweak(&mut sc);
    let p = path.clone();
    let sim = thread::spawn(move || Simulator::connect(&p, sc).unwrap());
    let conn = l.accept(T).unwrap();
    (conn, sim.join().unwrap())
}
