//! Harness: a `KvmiVm` and an in-process `kvmi-sim` connected over a real UNIX socket.
#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use kvmi_sim::{SimConfig, Simulator};
use vmi_kvm::{Config, KvmiVm};

pub const T: Duration = Duration::from_secs(5);
pub const SECRET: &[u8] = b"vmi-kvm test secret";

pub fn socket_path(tag: &str) -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "vmi-kvm-{tag}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

pub fn config() -> Config {
    Config {
        secret: Some(SECRET.to_vec()),
        request_timeout: T,
        ..Config::default()
    }
}

/// A session on a simulated VM speaking `abi`, configured by `tweak`.
pub fn setup(abi: kvmi_sim::Abi, tweak: impl FnOnce(&mut SimConfig)) -> (KvmiVm, Simulator) {
    setup_with(config(), abi, tweak)
}

/// [`setup`] with the tool's configuration `tool`.
pub fn setup_with(
    tool: Config,
    abi: kvmi_sim::Abi,
    tweak: impl FnOnce(&mut SimConfig),
) -> (KvmiVm, Simulator) {
    let path = socket_path("sim");
    let listener = vmi_kvm::KvmiListener::bind(&path, tool).unwrap();
    let mut sc = SimConfig {
        abi,
        secret: Some(SECRET.to_vec()),
        event_timeout: T,
        ..SimConfig::default()
    };
    tweak(&mut sc);
    let p = path.clone();
    let sim = thread::spawn(move || Simulator::connect(&p, sc).unwrap());
    let vm = listener.accept(T).unwrap();
    (vm, sim.join().unwrap())
}

pub fn v7() -> (KvmiVm, Simulator) {
    setup(kvmi_sim::Abi::V7, |_| {})
}

pub fn v6() -> (KvmiVm, Simulator) {
    setup(kvmi_sim::Abi::V6, |_| {})
}

/// Commands of id `id` the simulator received.
pub fn commands(sim: &Simulator, id: u16) -> u64 {
    sim.stats().commands.get(&id).copied().unwrap_or(0)
}

/// Events of id `id` the simulator sent, and replies to them it received.
pub fn events(sim: &Simulator, id: u8) -> (u64, u64) {
    let s = sim.stats();
    (
        s.events.get(&id).copied().unwrap_or(0),
        s.event_replies.get(&id).copied().unwrap_or(0),
    )
}

/// Polls `cond` until it holds or `T` passes.
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + T;
    while std::time::Instant::now() < end {
        if cond() {
            return true;
        }
        thread::sleep(Duration::from_millis(5));
    }
    cond()
}
