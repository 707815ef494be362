//! `kvmi-sim`: connect to a listening KVMi tool as QEMU + the KVM-VMI kernel would, run a
//! workload producing every event the tool enables, answer its commands, and print a
//! summary of what crossed the wire.

use kvmi_sim::{event_name, Abi, SimConfig, SimError, Simulator, Workload};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: kvmi-sim --socket PATH [--v6] [--vcpus N] [--secret S] \
[--duration SECS] [--name NAME]

Connects to the introspection tool listening on the UNIX socket PATH like KVM-VMI QEMU
(hookup struct, cookie check against SHA-1 of S), then acts as the kvmi-v7 (or, with
--v6, kvmi-v6) kernel: answers every command from a simulated guest and, for SECS
seconds (default 10), raises every event the tool has enabled, round-robin over the N
vCPUs (default 2). At the end it sends UNHOOK if the tool enabled it, and prints the
wire statistics.";

struct Args {
    socket: String,
    cfg: SimConfig,
    duration: Duration,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut socket = None;
    let mut cfg = SimConfig::default();
    let mut duration = Duration::from_secs(10);
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--socket" => socket = Some(val("--socket")?),
            "--v6" => cfg.abi = Abi::V6,
            "--vcpus" => {
                cfg.vcpus = val("--vcpus")?
                    .parse()
                    .map_err(|e| format!("--vcpus: {e}"))?;
                if cfg.vcpus == 0 || cfg.vcpus > 256 {
                    return Err("--vcpus must be 1..=256".into());
                }
            }
            "--secret" => cfg.secret = Some(val("--secret")?.into_bytes()),
            "--name" => cfg.name = val("--name")?,
            "--duration" => {
                let s: f64 = val("--duration")?
                    .parse()
                    .map_err(|e| format!("--duration: {e}"))?;
                duration =
                    Duration::try_from_secs_f64(s).map_err(|e| format!("--duration: {e}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let socket = socket.ok_or("--socket is required")?;
    Ok(Args {
        socket,
        cfg,
        duration,
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("kvmi-sim: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let abi = args.cfg.abi;
    let unhook_timeout = args.cfg.unhook_timeout.min(Duration::from_secs(10));
    let sim = match Simulator::connect(&args.socket, args.cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("kvmi-sim: connecting to {}: {e}", args.socket);
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "kvmi-sim: hooked to {} ({abi:?}), running for {:?}",
        args.socket, args.duration
    );
    let start = Instant::now();
    let mut answered: BTreeMap<u8, u64> = BTreeMap::new();
    let mut failed = 0usize;
    while start.elapsed() < args.duration && sim.closed().is_none() {
        let rep = sim.run_workload(Workload::EveryEnabledEvent);
        for (id, n) in rep.answered {
            *answered.entry(id).or_default() += n;
        }
        for (id, e) in &rep.failed {
            failed += 1;
            eprintln!("kvmi-sim: {} event failed: {e}", event_name(*id));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if sim.closed().is_none() {
        match sim.unhook(unhook_timeout) {
            Ok(()) => eprintln!("kvmi-sim: sent UNHOOK, tool closed the socket"),
            Err(SimError::NotDelivered(_)) => {}
            Err(e) => eprintln!("kvmi-sim: unhook: {e}"),
        }
        sim.shutdown();
    }
    if let Some(reason) = sim.closed() {
        println!("connection: {reason}");
    }
    println!("events answered during the workload:");
    for (id, n) in &answered {
        println!("  {:>2} {:<12} {n}", id, event_name(*id));
    }
    print!("{}", sim.stats());
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
