//! vmi-kvm sessions on kvmi-sim over a real UNIX socket: the simulator connects to the
//! session's listener as KVM-VMI QEMU would.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kvmi_sim::{SimConfig, Simulator};
use vmi_dump::ElfDump;
use vmi_kvm::{Config, KvmiListener, KvmiVm};

/// The secret both sides use.
const SECRET: &[u8] = b"vmi-tests";
/// How long the handshake and each request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A socket path unique to this process and call, tagged `tag`.
fn socket_path(tag: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "vmi-tests-{tag}-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A vmi-kvm session on a simulator made of `config` (whose secret is replaced by this
/// module's), connected over a fresh socket named after `tag`. Panics if either side
/// fails: for tests.
#[track_caller]
pub fn session(config: SimConfig, tag: &str) -> (KvmiVm, Simulator) {
    let path = socket_path(tag);
    let listener = KvmiListener::bind(
        &path,
        Config {
            secret: Some(SECRET.to_vec()),
            request_timeout: TIMEOUT,
            ..Config::default()
        },
    )
    .unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
    let sc = SimConfig {
        secret: Some(SECRET.to_vec()),
        ..config
    };
    let p = path.clone();
    let sim = std::thread::spawn(move || Simulator::connect(&p, sc));
    let vm = listener.accept(TIMEOUT);
    let sim = sim.join().expect("the simulator's thread");
    // The listener's socket file is not needed once connected.
    let _ = std::fs::remove_file(&path);
    let vm = vm.unwrap_or_else(|e| panic!("accepting kvmi-sim: {e}"));
    let sim = sim.unwrap_or_else(|e| panic!("kvmi-sim connecting: {e}"));
    (vm, sim)
}

/// A vmi-kvm session on kvmi-sim serving `dump` (its memory and vCPUs) as the guest.
#[track_caller]
pub fn serving_dump(dump: &ElfDump, tag: &str) -> (KvmiVm, Simulator) {
    let config = SimConfig::from_dump(dump).expect("a simulated guest from the dump");
    session(config, tag)
}
