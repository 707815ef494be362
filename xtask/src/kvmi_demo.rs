//! `cargo xtask demo`'s KVMi section: vmi-kvm against the KVMi host *simulator*.
//!
//! No KVM-VMI kernel is involved: `kvmi-sim` plays KVM-VMI QEMU and a kvmi-v7 kernel
//! with a small simulated x86-64 guest (`kvmi_sim::guest`). Three processes take part,
//! as with a real host: this one builds and starts the two others, the tool (vmi-kvm's
//! `demo` example, which listens on a UNIX socket the way LibVMI's KVM driver does and
//! prints what it sees) and the host (the `kvmi-sim` binary, which connects to it, runs
//! the guest's workload and prints what crossed the wire). Needs neither root nor QEMU.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::util::{bail, run, target_dir, Result};

/// The cookie secret both sides are given (the tool checks SHA-1 of it).
const SECRET: &str = "xtask-demo";
/// How long the tool may take to listen, and each process to finish.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Builds the tool and the simulator, runs them against each other and prints both
/// sides' view.
pub(crate) fn run_section() -> Result {
    println!("=== KVMi section — SIMULATED host ===");
    println!(
        "The host here is kvmi-sim, a simulator speaking the kvmi-v7 protocol as KVM-VMI QEMU \
         and kernel would,\nwith a simulated guest kernel; not a real KVM-VMI host. \
         Tool: vmi-kvm's `demo` example (a process)."
    );
    // One build for both, so their shared dependencies are built once.
    let mut build = crate::cargo();
    build.args(["build", "-p", "vmi-kvm", "-p", "kvmi-sim"]);
    build.args(["--example", "demo", "--bin", "kvmi-sim"]);
    run(&mut build)?;

    let bin = target_dir().join("debug");
    let start = Instant::now();
    let socket = std::env::temp_dir().join(format!("vmi-xtask-demo-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    let logs = target_dir().join("demo");
    std::fs::create_dir_all(&logs).map_err(|e| format!("creating {}: {e}", logs.display()))?;

    let mut tool = Process::spawn(
        "demo",
        Command::new(bin.join("examples").join("demo"))
            .arg(&socket)
            .arg(SECRET)
            .stdin(Stdio::null()),
    )?;
    wait_listening(&mut tool, &socket)?;
    let sim_out = logs.join("kvmi-sim.out");
    let sim_err = logs.join("kvmi-sim.err");
    let file = |p: &Path| File::create(p).map_err(|e| format!("creating {}: {e}", p.display()));
    let mut sim = Process::spawn(
        "kvmi-sim",
        Command::new(bin.join("kvmi-sim"))
            .arg("--socket")
            .arg(&socket)
            .args(["--secret", SECRET, "--vcpus", "2", "--rate", "200"])
            .args(["--duration", "60"])
            .stdin(Stdio::null())
            .stdout(file(&sim_out)?)
            .stderr(file(&sim_err)?),
    )?;
    let tool_status = tool.wait(TIMEOUT)?;
    let sim_status = sim.wait(TIMEOUT)?;
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&socket);

    println!("\nthe host's side (kvmi-sim, the simulator's count of what crossed the wire):");
    let summary = std::fs::read_to_string(&sim_out).unwrap_or_default();
    for line in host_summary(&summary) {
        println!("  {line}");
    }
    println!(
        "  (full output: {} and {})",
        sim_out.display(),
        sim_err.display()
    );
    println!("KVMi section (simulated) took {elapsed:.2?} after the builds");
    if !sim_status.success() {
        // Shown, not fatal: the tool's side above is what the demo shows, and kvmi-sim
        // also fails when an operation of its workload is cut short by the tool's close.
        println!(
            "WARNING: kvmi-sim exited with {sim_status}; its stderr:\n{}",
            std::fs::read_to_string(&sim_err)
                .unwrap_or_default()
                .trim_end()
        );
    }
    if !tool_status.success() {
        bail!("the demo example failed ({tool_status})");
    }
    Ok(())
}

/// The lines of kvmi-sim's report worth showing: why the connection ended, the events
/// answered, and events sent beside replies received (one reply each).
fn host_summary(out: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut in_events = false;
    for line in out.lines() {
        if line.starts_with("connection:") || line.starts_with("events answered") {
            lines.push(line);
        } else if line.starts_with("events sent / replies received") {
            in_events = true;
            lines.push(line);
        } else if in_events && line.starts_with(' ') {
            lines.push(line);
        } else {
            in_events = false;
        }
    }
    lines
}

/// Waits until the tool's socket exists (the tool is listening).
fn wait_listening(tool: &mut Process, socket: &Path) -> Result {
    let start = Instant::now();
    while !socket.exists() {
        if let Some(status) = tool.child.try_wait()? {
            bail!("the demo example exited before listening ({status})");
        }
        if start.elapsed() > TIMEOUT {
            bail!(
                "the demo example did not listen on {} within {TIMEOUT:?}",
                socket.display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A child process, killed (by its handle) if still running when dropped.
struct Process {
    name: &'static str,
    child: Child,
}

impl Process {
    fn spawn(name: &'static str, cmd: &mut Command) -> Result<Process> {
        let program = PathBuf::from(cmd.get_program());
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", program.display()))?;
        Ok(Process { name, child })
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                bail!("{} did not finish within {timeout:?}", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
