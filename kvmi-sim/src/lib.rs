//! A KVMi host simulator for testing KVMi tools without a patched kernel.
//!
//! [`Simulator`] behaves as KVM-VMI QEMU plus the KVM-VMI `kvmi-v7` kernel (or, with
//! [`Abi::V6`], the `kvmi-v6` one) would towards an introspection tool: it connects to
//! the tool's listening UNIX socket like QEMU, sends the 96-byte hookup struct, reads the
//! tool's reply size-tolerantly and checks the cookie hash (SHA-1 of the configured
//! secret), then speaks as the kernel on a server thread. Commands are served from a
//! guest model ([`model::Vm`]: sparse physical memory, vCPUs with full register state,
//! MSRs, CPUID, XSAVE, MTRR type, page access per EPT view, event enables, CR/MSR
//! intercepts, singlestep state) following the kernel's rules (zero paddings, size
//! limits, which errors close the socket, `SET_REGISTERS` only while an event is pending,
//! TRAP after `INJECT_EXCEPTION`, reply suppression with `CONTROL_CMD_RESPONSE`).
//!
//! The default guest ([`guest`]) is a small but real x86-64 kernel: 4-level page
//! tables with identity, kernel (high-half) and direct maps, GDT/IDT, a banner and
//! kernel text whose instruction sites the vCPUs execute ([`Simulator::execute`] with a
//! [`GuestOp`]): the events they raise carry consistent RIPs, operands and gla/gpa, a
//! 0xCC written into guest memory is a breakpoint, and restricted pages the guest
//! touches raise PF events. Raw events can also be raised with [`Simulator::trigger`]
//! (the vCPU then blocks until the tool replies, and the reply is applied as the kernel
//! would); the built-in [`Workload`] executes every enabled kind. A [`FaultPlan`] can drop the connection, corrupt or truncate frames and
//! delay replies. [`Stats`] counts what crossed the wire.
//!
//! The crate depends only on `kvmi-sys` for the wire layouts and is written from the
//! protocol reference independently of any tool-side implementation, so it can serve as
//! an independent check of one. The exception is [`dump`]: a guest built from a real
//! guest's QEMU ELF dump ([`SimConfig::from_dump`]) is parsed with `vmi-dump`.
//!
//! ```no_run
//! use kvmi_sim::{SimConfig, SimEvent, Simulator};
//! use std::time::Duration;
//!
//! let sim = Simulator::connect("/tmp/introspector.sock", SimConfig::default())?;
//! // ... the tool enables the CR event and CR3 interception on vCPU 0 ...
//! let h = sim.trigger(0, SimEvent::Cr { cr: 3, old: 0x1000, new: 0x2000 })?;
//! let reply = h.wait_reply(Duration::from_secs(5))?;
//! println!("tool answered {:?}", reply.action);
//! # Ok::<(), kvmi_sim::SimError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvmi_sys as sys;
use zerocopy::{FromBytes, IntoBytes};

mod config;
pub mod dump;
mod event;
mod exec;
pub mod guest;
pub mod model;
mod server;
mod shared;
mod stats;

pub use config::{Abi, Fault, FaultPlan, Result, SimConfig, SimError, SimFeatures};
pub use event::{PfReply, SimEvent, SimReply};
pub use shared::RECENT_MAX;
pub(crate) use shared::{Pending, Shared, State};
pub use stats::{command_name, event_name, Stats, WireRecord};

pub use exec::{Executed, GuestOp, MAX_RETRIES, MAX_TOUCHED_PAGES};
pub use model::{GuestMemory, Injection, Vcpu, Vm};

/// A connected simulator (one VM).
pub struct Simulator {
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
    hello: HookupInfo,
}

/// What the tool sent in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookupInfo {
    /// `struct_size` of the tool's reply.
    pub struct_size: u32,
    /// The cookie hash it sent.
    pub cookie_hash: [u8; 20],
}

/// An event in flight (returned by [`Simulator::trigger`]).
pub struct EventHandle {
    shared: Arc<Shared>,
    /// Event seq.
    pub seq: u32,
    /// vCPU.
    pub vcpu: usize,
    /// Event id.
    pub event: u8,
    no_reply: bool,
}

impl EventHandle {
    /// Wait for the tool's reply (already applied to the model when this returns).
    ///
    /// For events without a reply (UNHOOK, CMD_ERROR) this returns at once with
    /// `action: None`, except UNHOOK, which waits for the tool to close the socket.
    pub fn wait_reply(&self, timeout: Duration) -> Result<SimReply> {
        let deadline = deadline_after(timeout);
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.completed.remove(&self.seq) {
                return Ok(r);
            }
            if self.no_reply && (self.event != sys::KVMI_EVENT_UNHOOK || st.closed.is_some()) {
                return Ok(SimReply {
                    seq: self.seq,
                    vcpu: self.vcpu as u16,
                    event: self.event,
                    action: None,
                    reply_event: 0,
                    new_val: None,
                    pf: None,
                    regs_applied: None,
                    action_supported: true,
                });
            }
            if let Some(c) = &st.closed {
                return Err(SimError::Closed(c.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SimError::Timeout);
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Built-in guest activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One round of [`Simulator::workload_ops`] on every vCPU (round-robin), each op
    /// run with [`Simulator::execute`]: every event kind the tool has enabled (and
    /// intercepted, for CR, MSR, PF and singlestep) from an instruction of the guest
    /// kernel, each waited for. UNHOOK is not included.
    EveryEnabledEvent,
}

/// Outcome of a workload run.
#[derive(Clone, Debug, Default)]
pub struct WorkloadReport {
    /// Events delivered and answered, by event id.
    pub answered: BTreeMap<u8, u64>,
    /// Ops that failed (timeout, closed…), with the error text.
    pub failed: Vec<(String, String)>,
}

impl Simulator {
    /// Connect to the tool's UNIX socket like QEMU, do the handshake and start serving
    /// as the kernel.
    pub fn connect(socket_path: impl AsRef<Path>, config: SimConfig) -> Result<Self> {
        let stream = UnixStream::connect(socket_path)?;
        Self::from_stream(stream, config)
    }

    /// Same as [`connect`](Self::connect) on an already connected stream.
    pub fn from_stream(mut stream: UnixStream, config: SimConfig) -> Result<Self> {
        stream.set_read_timeout(Some(config.handshake_timeout))?;
        let mut hello = sys::QemuToIntrospector {
            struct_size: sys::QEMU_TO_INTROSPECTOR_SIZE as u32,
            uuid: config.uuid,
            ..Default::default()
        };
        if config.abi == Abi::V7 {
            hello.start_time = config.start_time;
            let n = config.name.len().min(63);
            hello.name[..n].copy_from_slice(&config.name.as_bytes()[..n]);
        }
        stream.write_all(hello.as_bytes())?;
        let mut size = [0u8; 4];
        stream
            .read_exact(&mut size)
            .map_err(|e| SimError::Handshake(format!("reading reply size: {e}")))?;
        let struct_size = u32::from_le_bytes(size);
        if (struct_size as usize) < sys::QEMU_FROM_INTROSPECTOR_SIZE
            || struct_size as usize > sys::QEMU_TO_INTROSPECTOR_MAX_SIZE
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Err(SimError::Handshake(format!(
                "bad struct_size {struct_size}"
            )));
        }
        let mut rest = vec![0u8; struct_size as usize - 4];
        stream
            .read_exact(&mut rest)
            .map_err(|e| SimError::Handshake(format!("reading reply: {e}")))?;
        let mut cookie_hash = [0u8; 20];
        cookie_hash.copy_from_slice(&rest[..20]);
        if config.abi == Abi::V7 {
            if let Some(secret) = &config.secret {
                let want = sha1_smol::Sha1::from(secret).digest().bytes();
                if want != cookie_hash {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return Err(SimError::BadCookie);
                }
            }
        }
        stream.set_read_timeout(None)?;
        let mut vm = Vm {
            memory: config.memory.clone(),
            vcpus: match &config.initial_vcpus {
                Some(v) => v.clone(),
                None => (0..config.vcpus).map(Vcpu::new_long_mode).collect(),
            },
            cpuid: model::default_cpuid(),
            mtrr_type: 6,
            page_access: BTreeMap::new(),
            write_bitmaps: BTreeMap::new(),
            spp_enabled: false,
            sve: BTreeMap::new(),
            views: [0u16].into_iter().collect(),
            gfn_remap: BTreeMap::new(),
            vm_events: BTreeSet::new(),
            map_tokens: 0,
            crashed: false,
        };
        if vm.memory.max_gfn == 0 {
            vm.memory.max_gfn = vm.memory.gfns().last().map_or(0, |g| g + 1);
        }
        let state = State {
            pending: vec![None; vm.vcpus.len()],
            vm,
            completed: BTreeMap::new(),
            recent: std::collections::VecDeque::new(),
            seq: 0,
            replies_enabled: true,
            cmd_error_flag: false,
            stats: Stats::default(),
            closed: None,
            crossed: 0,
            sent: 0,
            armed: None,
            busy_waiters: 0,
            stalled: false,
            peer_gone: false,
            hold_pauses: false,
        };
        let reader = stream.try_clone()?;
        let shared = Arc::new(Shared {
            cfg: config,
            state: Mutex::new(state),
            cond: Condvar::new(),
            stream,
        });
        let sh = Arc::clone(&shared);
        let server = std::thread::Builder::new()
            .name("kvmi-sim-recv".into())
            .spawn(move || server::serve(&sh, reader))?;
        Ok(Self {
            shared,
            server: Some(server),
            hello: HookupInfo {
                struct_size,
                cookie_hash,
            },
        })
    }

    /// What the tool replied in the handshake.
    pub fn hookup(&self) -> &HookupInfo {
        &self.hello
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Lock and access the guest model. Do not hold the guard across a wait: the
    /// server thread needs it to answer commands.
    pub fn vm(&self) -> impl std::ops::DerefMut<Target = Vm> + '_ {
        VmGuard(self.shared.lock())
    }

    /// A copy of the wire statistics.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// The last [`RECENT_MAX`] event replies (including those to PAUSE and TRAP events
    /// the simulator generated by itself), oldest first.
    pub fn recent_replies(&self) -> Vec<SimReply> {
        self.shared.lock().recent.iter().cloned().collect()
    }

    /// Why the connection closed, if it did.
    pub fn closed(&self) -> Option<String> {
        self.shared.lock().closed.clone()
    }

    /// Wait until the connection is closed; returns the reason.
    pub fn wait_closed(&self, timeout: Duration) -> Result<String> {
        let deadline = deadline_after(timeout);
        let mut st = self.shared.lock();
        loop {
            if let Some(c) = &st.closed {
                return Ok(c.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SimError::Timeout);
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Arm a fault for the next frame the simulator sends (replacing an armed one).
    pub fn arm_fault(&self, fault: Fault) {
        self.shared.lock().armed = Some(fault);
    }

    /// Stalls or releases the host: while stalled, the receive thread handles no frame
    /// from the tool (commands and event replies wait, in order, in the socket), as a
    /// host whose introspection thread hangs; released, it handles them in order —
    /// also those the tool wrote before closing its end. Events can still be sent.
    pub fn set_stalled(&self, stalled: bool) {
        let mut st = self.shared.lock();
        st.stalled = stalled;
        self.shared.cond.notify_all();
    }

    /// While set, a vCPU asked to pause (`VCPU_PAUSE` answered) does not leave guest
    /// mode: its `PAUSE_VCPU` event is held back, as for a vCPU that takes long to
    /// exit; cleared, the held events go out.
    pub fn set_hold_pauses(&self, hold: bool) {
        let mut st = self.shared.lock();
        st.hold_pauses = hold;
        server::kick_idle_vcpus(&self.shared, &mut st);
        self.shared.cond.notify_all();
    }

    /// Close the connection (like QEMU tearing down the VM, without UNHOOK).
    pub fn shutdown(&self) {
        let mut st = self.shared.lock();
        self.shared.close(&mut st, "closed by the simulator");
    }

    /// Have the guest cause `ev` on `vcpu`. The event is sent only if the kernel would
    /// send it (enabled, allowed, intercepted); the vCPU then waits for the reply. If
    /// the vCPU is busy with another event, waits up to `event_timeout` for it, then
    /// checks again (the tool may have disabled the event or intercept meanwhile).
    ///
    /// The registers are the vCPU's as they are, except what the exit defines: RAX/RDI/
    /// RSI for the hypercall, EAX/ECX = leaf/subleaf for CPUID. To raise events from
    /// the guest's instructions (RIP, operands and addresses consistent with the page
    /// tables), use [`Simulator::execute`].
    pub fn trigger(&self, vcpu: usize, ev: SimEvent) -> Result<EventHandle> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let deadline = deadline_after(cfg.event_timeout);
        let mut st = sh.lock();
        if vcpu >= st.vm.vcpus.len() {
            return Err(SimError::NoSuchVcpu(vcpu));
        }
        let id = ev.id();
        deliverable(cfg, &st, vcpu, &ev)?;
        if st.closed.is_some() {
            return Err(SimError::Closed(st.closed.clone().unwrap_or_default()));
        }
        if ev.is_no_reply() {
            let seq = sh.send_event(&mut st, vcpu, &ev);
            return Ok(EventHandle {
                shared: Arc::clone(sh),
                seq,
                vcpu,
                event: id,
                no_reply: true,
            });
        }
        st.busy_waiters += 1;
        while st.pending[vcpu].is_some() {
            let now = Instant::now();
            if st.closed.is_some() || now >= deadline {
                st.busy_waiters -= 1;
                return Err(match &st.closed {
                    Some(c) => SimError::Closed(c.clone()),
                    None => SimError::Busy,
                });
            }
            st = sh
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.busy_waiters -= 1;
        // The tool may have paused the vCPU, removed the intercept and resumed while
        // this vCPU waited: a real kernel would no longer exit, so check again.
        deliverable(cfg, &st, vcpu, &ev)?;
        if let SimEvent::Hypercall = ev {
            let r = &mut st.vm.vcpus[vcpu].regs;
            r.rax = sys::KVM_HC_XEN_HVM_OP;
            r.rdi = sys::KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT;
            r.rsi = 0;
        }
        if let SimEvent::Cpuid { leaf, subleaf } = ev {
            // CPUID exits with the leaf in EAX and the subleaf in ECX.
            let r = &mut st.vm.vcpus[vcpu].regs;
            r.rax = u64::from(leaf);
            r.rcx = u64::from(subleaf);
        }
        let seq = sh.send_event(&mut st, vcpu, &ev);
        st.pending[vcpu] = Some(Pending {
            seq,
            event: ev,
            waited: true,
        });
        Ok(EventHandle {
            shared: Arc::clone(sh),
            seq,
            vcpu,
            event: id,
            no_reply: false,
        })
    }

    /// Trigger `ev` and wait for its reply with the configured `event_timeout`.
    pub fn trigger_and_wait(&self, vcpu: usize, ev: SimEvent) -> Result<SimReply> {
        let h = self.trigger(vcpu, ev)?;
        h.wait_reply(self.shared.cfg.event_timeout)
    }

    /// Raw events (for [`Simulator::trigger`]) of every kind enabled and intercepted on
    /// `vcpu`, with addresses of the default guest. The built-in workload runs
    /// [`Simulator::workload_ops`] instead, which also set RIP and the operands.
    pub fn enabled_events(&self, vcpu: usize) -> Vec<SimEvent> {
        let st = self.shared.lock();
        let cfg = &self.shared.cfg;
        let Some(v) = st.vm.vcpus.get(vcpu) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let on = |id: u8| v.events.contains(&id) && server::event_allowed(cfg, id);
        if on(sys::KVMI_EVENT_CR) {
            for cr in &v.cr_intercepts {
                let old = v.cr(*cr);
                let new = match cr {
                    3 if old == guest::KERNEL_CR3 => guest::USER_CR3,
                    3 => guest::KERNEL_CR3,
                    4 => old ^ (1 << 7),
                    _ => old ^ (1 << 16),
                };
                out.push(SimEvent::Cr { cr: *cr, old, new });
            }
        }
        if on(sys::KVMI_EVENT_MSR) {
            for m in &v.msr_intercepts {
                let old = v.msrs.get(m).copied().unwrap_or(0);
                out.push(SimEvent::Msr {
                    msr: *m,
                    old,
                    new: old ^ 0x1000,
                });
            }
        }
        if on(sys::KVMI_EVENT_XSETBV) {
            out.push(SimEvent::Xsetbv { xcr0: v.xcr0 | 0x7 });
        }
        if on(sys::KVMI_EVENT_BREAKPOINT) {
            out.push(SimEvent::Breakpoint {
                gpa: guest::SYM_INT3_SELFTEST_PA,
                insn_len: 1,
            });
        }
        if on(sys::KVMI_EVENT_HYPERCALL) {
            out.push(SimEvent::Hypercall);
        }
        if on(sys::KVMI_EVENT_PF) {
            if let Some((gpa, access)) = model::first_restricted(&st.vm, v.view) {
                out.push(SimEvent::Pf {
                    // Addresses that translate to `gpa` in the default guest.
                    gva: if access == sys::KVMI_PAGE_ACCESS_X {
                        guest::kva(gpa)
                    } else {
                        guest::dva(gpa)
                    },
                    gpa,
                    access,
                });
            }
        }
        if on(sys::KVMI_EVENT_DESCRIPTOR) {
            out.push(SimEvent::Descriptor {
                descriptor: sys::KVMI_DESC_IDTR,
                write: false,
            });
        }
        if on(sys::KVMI_EVENT_SINGLESTEP) && (v.singlestep || cfg.abi == Abi::V6) {
            out.push(SimEvent::Singlestep { failed: false });
        }
        if cfg.abi == Abi::V7 && on(sys::KVMI_EVENT_CPUID) {
            out.push(SimEvent::Cpuid {
                leaf: 1,
                subleaf: 0,
            });
        }
        if cfg.abi == Abi::V6 && on(sys::KVMI_EVENT_TRAP) {
            out.push(SimEvent::Trap {
                vector: 14,
                error_code: 2,
                cr2: 0x1000,
            });
        }
        if vcpu == 0
            && st.vm.vm_events.contains(&sys::KVMI_EVENT_CREATE_VCPU)
            && server::event_allowed(cfg, sys::KVMI_EVENT_CREATE_VCPU)
        {
            out.push(SimEvent::CreateVcpu);
        }
        out
    }

    /// Run a built-in workload and report what happened.
    pub fn run_workload(&self, w: Workload) -> WorkloadReport {
        let mut rep = WorkloadReport::default();
        match w {
            Workload::EveryEnabledEvent => {
                let n = self.shared.cfg.vcpus;
                let per: Vec<Vec<GuestOp>> = (0..n).map(|v| self.workload_ops(v)).collect();
                let rounds = per.iter().map(Vec::len).max().unwrap_or(0);
                for i in 0..rounds {
                    for (vcpu, ops) in per.iter().enumerate() {
                        let Some(op) = ops.get(i) else { continue };
                        match self.execute(vcpu, op) {
                            Ok(ex) => {
                                for r in &ex.events {
                                    *rep.answered.entry(r.event).or_default() += 1;
                                }
                            }
                            Err(e) => rep.failed.push((format!("{op:?}"), e.to_string())),
                        }
                    }
                }
            }
        }
        rep
    }

    /// Send UNHOOK if the tool enabled it (like QEMU's PREUNHOOK) and wait up to
    /// `timeout` for the tool to close the socket. `Err(NotDelivered)` if not enabled.
    pub fn unhook(&self, timeout: Duration) -> Result<()> {
        let h = self.trigger(0, SimEvent::Unhook)?;
        h.wait_reply(timeout).map(|_| ())
    }
}

/// Whether the kernel would send `ev` on `vcpu` now (ABI, QEMU's allow list, enables,
/// CR/MSR intercepts, page restrictions, armed singlestep).
fn deliverable(cfg: &SimConfig, st: &State, vcpu: usize, ev: &SimEvent) -> Result<()> {
    let id = ev.id();
    if cfg.abi == Abi::V6 && usize::from(id) >= sys::v6::KVMI_NUM_EVENTS {
        return Err(SimError::NotDelivered("event does not exist in kvmi-v6"));
    }
    if !server::event_allowed(cfg, id) {
        return Err(SimError::NotDelivered("event disallowed by QEMU"));
    }
    {
        let vm = &st.vm;
        let v = &vm.vcpus[vcpu];
        let enabled = match ev {
            SimEvent::Unhook | SimEvent::CreateVcpu | SimEvent::CmdError { .. } => {
                vm.vm_events.contains(&id)
                    || (matches!(ev, SimEvent::CmdError { .. }) && st.cmd_error_flag)
            }
            SimEvent::PauseVcpu => true,
            SimEvent::Trap { .. } => cfg.abi == Abi::V7 || v.events.contains(&id),
            _ => v.events.contains(&id),
        };
        if !enabled {
            return Err(SimError::NotDelivered("event not enabled"));
        }
        match ev {
            SimEvent::Cr { cr, old, new } => {
                if !v.cr_intercepts.contains(cr) {
                    return Err(SimError::NotDelivered("CR not intercepted"));
                }
                if old == new {
                    return Err(SimError::NotDelivered("CR value unchanged"));
                }
            }
            SimEvent::Msr { msr, old, new } => {
                if !v.msr_intercepts.contains(msr) {
                    return Err(SimError::NotDelivered("MSR not intercepted"));
                }
                if old == new {
                    return Err(SimError::NotDelivered("MSR value unchanged"));
                }
            }
            SimEvent::Pf { gpa, access, .. } if !vm.access_restricted(v.view, *gpa, *access) => {
                return Err(SimError::NotDelivered("access not restricted"));
            }
            SimEvent::Singlestep { .. } if cfg.abi == Abi::V7 && !v.singlestep => {
                return Err(SimError::NotDelivered("singlestep not armed"));
            }
            _ => {}
        }
    }
    Ok(())
}

impl Drop for EventHandle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.completed.remove(&self.seq);
        for p in st.pending.iter_mut().flatten() {
            if p.seq == self.seq {
                p.waited = false;
            }
        }
    }
}

struct VmGuard<'a>(MutexGuard<'a, State>);

impl std::ops::Deref for VmGuard<'_> {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.0.vm
    }
}

impl std::ops::DerefMut for VmGuard<'_> {
    fn deref_mut(&mut self) -> &mut Vm {
        &mut self.0.vm
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

/// Parse `T` at `off` from `p`, zero-extending a short message (as the kernel does).
pub(crate) fn rd<T: FromBytes>(p: &[u8], off: usize) -> T {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    if off < p.len() {
        let n = (p.len() - off).min(buf.len());
        buf[..n].copy_from_slice(&p[off..off + n]);
    }
    T::read_from_bytes(&buf).unwrap_or_else(|_| T::new_zeroed())
}

#[cfg(test)]
mod tests;

/// `now + d`, saturating at a year for huge `d` (`Duration::MAX` must not panic).
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}
