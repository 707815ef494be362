//! CPU placement for the benches of this crate (a module of each bench, not a bench).
#![allow(dead_code)] // each bench uses what it needs

pub(crate) fn all_cpus() -> Vec<usize> {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    (0..n.max(1) as usize).collect()
}

/// Pins the calling thread (and the threads it starts later) to `cpus`.
pub(crate) fn pin_to(cpus: &[usize]) {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET and sched_setaffinity only
    // touch the set they are given.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0,
            "sched_setaffinity to CPUs {cpus:?}"
        );
    }
}

/// Pins the bench (its threads, and processes it starts) to the CPU the environment
/// variable `var` names, 0 by default; `off` leaves placement to the scheduler.
/// Unpinned on these VMs, whether the two ends of a round trip shared a CPU decided a
/// measurement (~4 µs or ~57 µs per round trip: an idle vCPU halts, and waking it
/// costs tens of µs), and criterion's samples came out bimodal.
pub(crate) fn pin_from_env(var: &str) {
    let want = std::env::var(var).unwrap_or_else(|_| "0".into());
    if want == "off" {
        return;
    }
    let cpu: usize = want
        .parse()
        .unwrap_or_else(|_| panic!("{var}: a CPU number or `off`"));
    pin_to(&[cpu]);
    println!("pinned to CPU {cpu} ({var}=off to leave placement to the scheduler)");
}
