//! vmi-kvm on kvmi-sim over a real UNIX socket, speaking kvmi-v7 or kvmi-v6.
//!
//! kvmi-sim's guest runs only what it is told to: while a session is open, a thread
//! plays the guest's main loop on vCPU 0 — call `__x64_sys_getpid` (the hot site), then
//! `do_timer` (`lock inc` of `jiffies`, the progress counter) — through
//! [`Simulator::execute`], which blocks while the vCPU is paused or in an event, exactly
//! as a vCPU would. Ground truth is the simulator's model: its memory and registers.
//!
//! A simulator serves one connection; a new session connects a new simulator made of
//! the last one's memory and vCPU state (a guest whose KVM-VMI QEMU reconnects to the
//! next tool). Between sessions no guest code runs, so progress is unobservable there
//! ([`ConformanceTarget::progress`] answers `None`); a fresh session's guest loop shows
//! the guest running again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvmi_sim::guest::{BANNER, BANNER_PA, BANNER_VA, JIFFIES_PA, SYM_BP_TARGET, SYM_BP_TARGET_PA};
use kvmi_sim::{Abi, GuestOp, SimConfig, SimError, Simulator, Vcpu};
use vmi_core::{Gpa, Gva, RegisterSnapshot};
use vmi_kvm::KvmiVm;

use crate::conformance::{ConformanceTarget, Site};

/// The simulator in use and the thread playing its guest.
struct Current {
    sim: Arc<Simulator>,
    running: Arc<AtomicBool>,
    guest_loop: Option<JoinHandle<()>>,
}

/// vmi-kvm on kvmi-sim.
pub struct KvmiSimTarget {
    abi: Abi,
    current: Mutex<Option<Current>>,
}

impl KvmiSimTarget {
    /// A target speaking `abi`; its first session starts kvmi-sim's default guest.
    pub fn new(abi: Abi) -> Self {
        Self {
            abi,
            current: Mutex::new(None),
        }
    }

    fn with_sim<R>(&self, f: impl FnOnce(&Simulator) -> R) -> R {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let cur = cur.as_ref().expect("no session was ever opened");
        f(&cur.sim)
    }

    fn config(&self, previous: Option<&Simulator>) -> SimConfig {
        let mut sc = SimConfig {
            abi: self.abi,
            vcpus: 2,
            // Long enough that a case holding an event or a pause never makes the
            // guest loop's wait fail; the loop retries anyway.
            event_timeout: Duration::from_secs(60),
            ..SimConfig::default()
        };
        if let Some(prev) = previous {
            let vm = prev.vm();
            sc.memory = vm.memory.clone();
            sc.initial_vcpus = Some(
                vm.vcpus
                    .iter()
                    .map(|v| Vcpu::with_state(v.regs, v.sregs, v.msrs.clone()))
                    .collect(),
            );
        }
        sc
    }

    /// Stops the guest loop of `cur` (its simulator is closed or closing).
    fn stop(cur: &mut Current) {
        cur.running.store(false, Ordering::SeqCst);
        if let Some(h) = cur.guest_loop.take() {
            let _ = h.join();
        }
    }
}

/// The guest's main loop on vCPU 0, until `running` clears or the connection closes.
fn guest_loop(sim: Arc<Simulator>, running: Arc<AtomicBool>) {
    let ops = [GuestOp::Call { gva: SYM_BP_TARGET }, GuestOp::Tick];
    while running.load(Ordering::SeqCst) {
        for op in &ops {
            match sim.execute(0, op) {
                Ok(_) | Err(SimError::Busy | SimError::Timeout) => {}
                Err(_) => return,
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl ConformanceTarget for KvmiSimTarget {
    type Session = KvmiVm;

    fn describe(&self) -> String {
        let abi = match self.abi {
            Abi::V7 => "kvmi-v7",
            Abi::V6 => "kvmi-v6",
        };
        format!("vmi-kvm on kvmi-sim ({abi})")
    }

    fn open(&self) -> KvmiVm {
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cur.as_mut() {
            Self::stop(c);
        }
        let config = self.config(cur.as_ref().map(|c| &*c.sim));
        let (vm, sim) = crate::kvmi::session(config, "conformance");
        let sim = Arc::new(sim);
        let running = Arc::new(AtomicBool::new(true));
        let guest_loop = {
            let (sim, running) = (Arc::clone(&sim), Arc::clone(&running));
            std::thread::spawn(move || guest_loop(sim, running))
        };
        *cur = Some(Current {
            sim,
            running,
            guest_loop: Some(guest_loop),
        });
        vm
    }

    fn close(&self, session: KvmiVm) {
        drop(session);
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let c = cur.as_mut().expect("a session was open");
        c.sim
            .wait_closed(Duration::from_secs(10))
            .expect("the session's teardown closed the connection");
        Self::stop(c);
    }

    fn read_truth(&self, gpa: Gpa, buf: &mut [u8]) {
        let bytes = self.with_sim(|s| s.vm().memory.read(gpa.0, buf.len()));
        let bytes = bytes.unwrap_or_else(|| panic!("{gpa}+{:#x} is not in the model", buf.len()));
        buf.copy_from_slice(&bytes);
    }

    fn known_bytes(&self) -> (Gpa, Vec<u8>) {
        (Gpa(BANNER_PA), BANNER.to_vec())
    }

    fn known_virtual(&self) -> (Gva, Vec<u8>) {
        (Gva(BANNER_VA), BANNER.to_vec())
    }

    fn scratch(&self) -> Gpa {
        // Above the kernel stacks, below the end of the default 2 MiB of RAM.
        Gpa(0x1e_0000)
    }

    fn ram_end(&self) -> Gpa {
        let top = self.with_sim(|s| s.vm().memory.gfns().max().expect("RAM"));
        Gpa((top + 1) << 12)
    }

    fn hot_site(&self) -> Site {
        Site {
            gva: Gva(SYM_BP_TARGET),
            gpa: Gpa(SYM_BP_TARGET_PA),
        }
    }

    fn progress(&self) -> Option<u64> {
        let cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let c = cur.as_ref()?;
        if c.sim.closed().is_some() {
            return None;
        }
        let jiffies = c.sim.vm().memory.read_u64(JIFFIES_PA).expect("jiffies");
        Some(jiffies)
    }

    fn check_paused_registers(&self, regs: &RegisterSnapshot) {
        let (r, s, efer) = self.with_sim(|sim| {
            let vm = sim.vm();
            let v = &vm.vcpus[0];
            (v.regs, v.sregs, v.msrs.get(&0xc000_0080).copied())
        });
        let g = regs.gprs.expect("GPRs");
        assert_eq!(
            (g.rip, g.rsp, g.rax, g.rdi, g.r12, g.rflags),
            (r.rip, r.rsp, r.rax, r.rdi, r.r12, r.rflags),
            "GPRs against the model"
        );
        let c = regs.control.expect("control registers");
        assert_eq!(
            (c.cr0, c.cr3, c.cr4),
            (s.cr0, s.cr3, s.cr4),
            "CRs against the model"
        );
        assert_eq!(regs.efer(), Some(efer.unwrap_or(s.efer)), "EFER");
    }

    fn requests(&self, _: &KvmiVm) -> Option<u64> {
        Some(self.with_sim(|s| s.stats().commands.values().sum()))
    }

    fn event_accounting(&self) -> Option<(u64, u64)> {
        let st = self.with_sim(|s| s.stats());
        Some((st.events.values().sum(), st.event_replies.values().sum()))
    }
}

impl Drop for KvmiSimTarget {
    fn drop(&mut self) {
        if let Some(c) = self
            .current
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            c.sim.shutdown();
            Self::stop(c);
        }
    }
}
