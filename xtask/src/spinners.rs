//! Idle-priority busy loops that keep every vCPU of this (virtual) machine awake while
//! benchmarks run.
//!
//! Idle vCPUs of the VMs these benchmarks run on halt, and waking a halted vCPU costs
//! 40–80 µs, which would hide what a round trip itself costs. One `SCHED_IDLE` busy loop
//! per core (`chrt --idle 0 sh -c 'while …; do :; done'`) keeps them running; being
//! idle-priority, it yields at once to any real work. The loops end when [`Spinners`] is
//! dropped (normal return, error, panic), and each loop also stops by itself once this
//! process is gone (it polls `kill -0 <our pid>`), so a killed xtask leaves none behind.

use std::process::{Child, Command, Stdio};

use crate::util::{find_in_path, Result};

/// Running spinner processes; dropping this stops them.
pub(crate) struct Spinners {
    children: Vec<Child>,
}

impl Spinners {
    /// Starts one spinner per available core.
    pub(crate) fn start() -> Result<Spinners> {
        if find_in_path("chrt").is_none() {
            return Err("`chrt` (util-linux) is needed to run the benchmark spinners".into());
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let script = format!(
            "while kill -0 {} 2>/dev/null; do :; done",
            std::process::id()
        );
        let mut spinners = Spinners {
            children: Vec::with_capacity(cores),
        };
        for _ in 0..cores {
            let child = Command::new("chrt")
                .args(["--idle", "0", "sh", "-c", &script])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting a spinner (`chrt --idle 0 sh -c …`): {e}"))?;
            // On an error above, `spinners` is dropped and stops the ones started.
            spinners.children.push(child);
        }
        eprintln!(
            "xtask: {cores} idle-priority spinner(s) running (pids {:?})",
            spinners.children.iter().map(Child::id).collect::<Vec<_>>()
        );
        Ok(spinners)
    }
}

impl Drop for Spinners {
    fn drop(&mut self) {
        for c in &mut self.children {
            // Only our own children, by their pid.
            let _ = c.kill();
            let _ = c.wait();
        }
        if !self.children.is_empty() {
            eprintln!("xtask: spinners stopped");
        }
    }
}
