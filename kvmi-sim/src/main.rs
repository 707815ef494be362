//! `kvmi-sim`: connect to a listening KVMi tool as QEMU + the KVM-VMI kernel would, run a
//! workload producing every event the tool enables, answer its commands, and print a
//! summary of what crossed the wire.

use kvmi_sim::{event_name, Abi, SimConfig, SimError, Simulator};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: kvmi-sim --socket PATH [--v6] [--vcpus N] [--secret S] \
[--duration SECS] [--rate EVENTS_PER_SEC|unlimited] [--name NAME] [--from-dump FILE]

Connects to the introspection tool listening on the UNIX socket PATH like KVM-VMI QEMU
(hookup struct, cookie check against SHA-1 of S), then acts as the kvmi-v7 (or, with
--v6, kvmi-v6) kernel: answers every command from a simulated guest and, for SECS
seconds (default 10), raises every event the tool has enabled. Each of the N vCPUs
(default 2) runs on its own thread, executing the simulated guest kernel's instructions
for each enabled event in turn (RIP, operands and addresses consistent with its page
tables; a 0xCC written into guest memory is a breakpoint) and waiting for each reply,
so up to N events are in flight at once. --rate paces the events of
all vCPUs together to that many per second (default 20); `unlimited` raises the next
event as soon as the previous one on that vCPU is answered. At the end it sends UNHOOK
if the tool enabled it, and prints the wire statistics and the event rate reached.

With --from-dump FILE the guest is the one in FILE, a QEMU ELF dump-guest-memory file:
its memory, vCPU count and registers (no --vcpus). It raises no events: it answers the
tool's commands until the tool closes the connection or SECS pass.";

/// Events per second over all vCPUs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Rate {
    PerSecond(f64),
    Unlimited,
}

impl Rate {
    fn parse(s: &str) -> Result<Rate, String> {
        if s == "unlimited" {
            return Ok(Rate::Unlimited);
        }
        match s.parse::<f64>() {
            Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
            _ => Err(format!(
                "--rate: {s:?} is neither a positive number of events per second nor `unlimited`"
            )),
        }
    }
}

/// Hands out event start times: the `k`-th event (over all vCPUs) starts at
/// `start + k / rate`, so the total rate holds whatever the number of vCPUs.
struct Pacer {
    start: Instant,
    rate: Rate,
    next: AtomicU64,
}

impl Pacer {
    /// Waits for the next slot; `false` if that slot is past `end`.
    fn wait_turn(&self, end: Instant) -> bool {
        let Rate::PerSecond(r) = self.rate else {
            return Instant::now() < end;
        };
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        let at = Duration::try_from_secs_f64(k as f64 / r)
            .ok()
            .and_then(|d| self.start.checked_add(d));
        let Some(at) = at.filter(|at| *at < end) else {
            return false;
        };
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        true
    }
}

struct Args {
    socket: String,
    /// Serve the guest of an ELF dump (no workload).
    from_dump: bool,
    cfg: SimConfig,
    duration: Duration,
    rate: Rate,
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut socket = None;
    let mut cfg = SimConfig::default();
    let mut duration = Duration::from_secs(10);
    let mut rate = Rate::PerSecond(20.0);
    let mut from_dump = None;
    let mut vcpus_given = false;
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--socket" => socket = Some(val("--socket")?),
            "--v6" => cfg.abi = Abi::V6,
            "--vcpus" => {
                vcpus_given = true;
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
            "--rate" => rate = Rate::parse(&val("--rate")?)?,
            "--from-dump" => from_dump = Some(val("--from-dump")?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let socket = socket.ok_or("--socket is required")?;
    if let Some(path) = &from_dump {
        if vcpus_given {
            return Err("--vcpus conflicts with --from-dump (the dump says how many)".into());
        }
        let dumped =
            SimConfig::from_dump_file(path).map_err(|e| format!("--from-dump {path}: {e}"))?;
        cfg = SimConfig {
            vcpus: dumped.vcpus,
            initial_vcpus: dumped.initial_vcpus,
            memory: dumped.memory,
            ..cfg
        };
    }
    Ok(Args {
        socket,
        from_dump: from_dump.is_some(),
        cfg,
        duration,
        rate,
    })
}

/// What the vCPU threads did.
#[derive(Default)]
struct Tally {
    answered: BTreeMap<u8, u64>,
    failed: usize,
}

/// One guest vCPU: raise its enabled events in turn, each waited for, until `end` or
/// the connection closes.
fn run_vcpu(sim: &Simulator, vcpu: usize, pacer: &Pacer, end: Instant, tally: &Mutex<Tally>) {
    while Instant::now() < end && sim.closed().is_none() {
        let ops = sim.workload_ops(vcpu);
        if ops.is_empty() {
            // Nothing enabled (yet): look again soon.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        for op in ops {
            if !pacer.wait_turn(end) || sim.closed().is_some() {
                return;
            }
            let r = sim.execute(vcpu, &op);
            let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                Ok(ex) => {
                    for r in &ex.events {
                        *t.answered.entry(r.event).or_default() += 1;
                    }
                }
                Err(e) => {
                    t.failed += 1;
                    eprintln!("kvmi-sim: vCPU {vcpu}: {op:?} failed: {e}");
                }
            }
        }
    }
}

/// A dump-backed guest: answer commands until the tool closes or `duration` passes.
fn serve_dump(sim: &Simulator, duration: Duration) -> ExitCode {
    match sim.wait_closed(duration) {
        Ok(reason) => println!("connection: {reason}"),
        Err(_) => {
            sim.shutdown();
            println!("connection: closed after {duration:?}");
        }
    }
    print!("{}", sim.stats());
    ExitCode::SUCCESS
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
    if args.from_dump {
        return serve_dump(&sim, args.duration);
    }
    let vcpus = sim.config().vcpus;
    let start = Instant::now();
    let end = start
        .checked_add(args.duration)
        .unwrap_or(start + Duration::from_secs(365 * 86_400));
    let pacer = Pacer {
        start,
        rate: args.rate,
        next: AtomicU64::new(0),
    };
    let tally = Mutex::new(Tally::default());
    std::thread::scope(|s| {
        for vcpu in 0..vcpus {
            let (sim, pacer, tally) = (&sim, &pacer, &tally);
            s.spawn(move || run_vcpu(sim, vcpu, pacer, end, tally));
        }
    });
    let elapsed = start.elapsed();
    let Tally { answered, failed } = tally.into_inner().unwrap_or_else(|e| e.into_inner());
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
    let total: u64 = answered.values().sum();
    println!(
        "events answered during the workload: {total} in {:.3} s ({:.0} events/s, {} vCPUs, rate {})",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64().max(1e-9),
        vcpus,
        match args.rate {
            Rate::PerSecond(r) => format!("{r}/s"),
            Rate::Unlimited => "unlimited".into(),
        }
    );
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
