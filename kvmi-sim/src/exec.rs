//! The guest's execution: vCPUs run instructions of the [`guest`](crate::guest) kernel
//! image, and the events they raise carry the state a real exit would (RIP at the
//! instruction, the operands in their registers, gla/gpa from the page tables).
//!
//! See [`GuestOp`] for how one instruction runs.

use crate::guest::{self, Op};
use crate::{server, Abi, PfReply, SimError, SimEvent, SimReply, Simulator, State};
use kvmi_sys as sys;
use std::sync::MutexGuard;
use std::time::Instant;

/// How often one instruction is re-executed after RETRY replies.
pub const MAX_RETRIES: usize = 8;

/// At most this many restricted pages are touched per [`Simulator::workload_ops`] round.
pub const MAX_TOUCHED_PAGES: usize = 16;

/// Something the guest does: one instruction at a site of the kernel image.
///
/// One `GuestOp` sets RIP to an instruction site and its operand registers, then
/// executes one instruction at RIP:
/// 1. instruction fetch: RIP is translated with the vCPU's CR3; if X is restricted on
///    that page in its view, a PF event (gva = RIP, access X);
/// 2. if the byte at the fetched gpa is 0xCC: a BREAKPOINT event (gpa, insn_len 1,
///    RIP = the INT3); RETRY re-executes at RIP (the tool restored the byte or moved
///    RIP), CONTINUE reinjects #BP: the guest's #BP handler runs and returns past the
///    INT3; without the event enabled the guest takes #BP itself;
/// 3. the instruction's effect, with its event (CR, MSR, XSETBV, hypercall, CPUID,
///    descriptor, or PF for a restricted data access; RETRY re-executes, CONTINUE lets
///    the access or write happen, PF context data is what the guest reads);
/// 4. RIP advances past the instruction and, if singlestep is armed, SINGLESTEP.
///
/// The guest's fetches, reads and writes go to the frame `VCPU_CHANGE_GFN` put behind
/// a GFN in the vCPU's view (so a breakpoint can live in a remapped copy only);
/// page-table walks and the tool's READ/WRITE_PHYSICAL see guest-physical memory.
///
/// A RETRY that changes nothing would loop forever in a real guest; here an
/// instruction is retried at most [`MAX_RETRIES`] times.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestOp {
    /// Execute the instruction at the vCPU's current RIP.
    Step,
    /// Call the code at `gva`: RIP = `gva`, then execute one instruction (e.g. a
    /// breakpoint at [`guest::SYM_BP_TARGET`]).
    Call {
        /// Linear address of the code.
        gva: u64,
    },
    /// `mov cr3, rax` at [`guest::SYM_SWITCH_MM`].
    SwitchMm {
        /// New CR3.
        cr3: u64,
    },
    /// `mov cr4, rax` at [`guest::SYM_WRITE_CR4`].
    WriteCr4 {
        /// New CR4.
        value: u64,
    },
    /// `mov cr0, rax` at [`guest::SYM_WRITE_CR0`].
    WriteCr0 {
        /// New CR0.
        value: u64,
    },
    /// `wrmsr` at [`guest::SYM_WRMSR`].
    Wrmsr {
        /// MSR index (ECX).
        msr: u32,
        /// Value (EDX:EAX).
        value: u64,
    },
    /// `xsetbv` at [`guest::SYM_XSETBV`] (XCR0).
    Xsetbv {
        /// New XCR0.
        xcr0: u64,
    },
    /// `vmcall` at [`guest::SYM_VMCALL`] with the introspection hypercall's registers.
    Vmcall,
    /// `cpuid` at [`guest::SYM_CPUID`].
    Cpuid {
        /// Leaf (EAX).
        leaf: u32,
        /// Subleaf (ECX).
        subleaf: u32,
    },
    /// `sidt`/`sgdt`/`sldt`/`str` (reads) or `lgdt` (GDTR write) at their sites.
    Descriptor {
        /// `KVMI_DESC_*`.
        descriptor: u8,
        /// Write access (only GDTR: `lgdt`).
        write: bool,
    },
    /// `mov rax, [rdi]` at [`guest::SYM_LOAD`]: an 8-byte read of `gva`.
    Load {
        /// Linear address read.
        gva: u64,
    },
    /// `lock or qword [rdi], 0` at [`guest::SYM_TOUCH`]: a write to `gva` that changes
    /// nothing.
    Touch {
        /// Linear address written.
        gva: u64,
    },
    /// `lock inc qword [rdi]` at [`guest::SYM_TICK`] on [`guest::JIFFIES_VA`].
    Tick,
    /// The guest's own `int3` at [`guest::SYM_INT3_SELFTEST`].
    Int3Selftest,
    /// An event not tied to an instruction (TRAP, CREATE_VCPU, kvmi-v6 SINGLESTEP),
    /// raised as [`Simulator::trigger`] does.
    Raw(SimEvent),
}

/// What one [`GuestOp`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Executed {
    /// Replies to the events raised, in order.
    pub events: Vec<SimReply>,
    /// RIP afterwards.
    pub rip: u64,
    /// The bytes a [`GuestOp::Load`] read (the tool's PF context data if it sent some).
    pub read: Option<Vec<u8>>,
    /// #BP reached the guest's handler (reinjected by CONTINUE, or not intercepted).
    pub bp_delivered: bool,
    /// A linear address that did not translate: the guest took #PF with this CR2.
    pub guest_fault: Option<u64>,
    /// The instruction was retried [`MAX_RETRIES`] times and not executed.
    pub retries_exhausted: bool,
}

/// Outcome of one execution attempt.
enum Attempt {
    Done,
    Retry,
}

/// Outcome of a data access's PF check.
enum Access {
    /// The access happens (`pf`: the PF-specific part of the PF event's reply).
    Go {
        gva: u64,
        gpa: u64,
        pf: Option<PfReply>,
    },
    /// The instruction stops here.
    Stop(Attempt),
}

/// The frame that backs `gpa` for `vcpu`'s accesses: `VCPU_CHANGE_GFN` remaps a GFN in
/// an EPT view (the events still report the guest-physical address).
fn backing(vm: &crate::Vm, vcpu: usize, gpa: u64) -> u64 {
    let view = vm.vcpus[vcpu].view;
    match vm.gfn_remap.get(&(view, gpa >> 12)) {
        Some(new_gfn) => (new_gfn << 12) | (gpa & 0xfff),
        None => gpa,
    }
}

fn is_retry(r: &SimReply) -> bool {
    r.action == Some(sys::KVMI_EVENT_ACTION_RETRY) && !r.pf.as_ref().is_some_and(|p| p.singlestep)
}

impl Simulator {
    /// Raise `ev` and wait for its reply; `None` if the kernel would not send it.
    fn raise(
        &self,
        vcpu: usize,
        ev: SimEvent,
        ex: &mut Executed,
    ) -> Result<Option<SimReply>, SimError> {
        match self.trigger_and_wait(vcpu, ev) {
            Ok(r) => {
                ex.events.push(r.clone());
                Ok(Some(r))
            }
            Err(SimError::NotDelivered(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Have `vcpu` perform `op` (see [`GuestOp`] for what one instruction does): set RIP and the operand
    /// registers, execute one instruction, raise the events a real kernel would and
    /// apply the replies. A paused vCPU (or one in an event) runs nothing: this waits
    /// until it runs again, up to `event_timeout`. Errors are those of
    /// [`Simulator::trigger`] other than `NotDelivered` (an event not enabled is simply
    /// not raised). Run one caller per vCPU, as a vCPU runs one instruction at a time.
    pub fn execute(&self, vcpu: usize, op: &GuestOp) -> Result<Executed, SimError> {
        let mut ex = Executed::default();
        {
            let mut st = self.runnable(vcpu)?;
            let v = &mut st.vm.vcpus[vcpu];
            let r = &mut v.regs;
            let lo_hi = |x: u64| (x & 0xffff_ffff, x >> 32);
            match *op {
                GuestOp::Step | GuestOp::Raw(_) => {}
                GuestOp::Call { gva } => r.rip = gva,
                GuestOp::SwitchMm { cr3 } => (r.rip, r.rax) = (guest::SYM_SWITCH_MM, cr3),
                GuestOp::WriteCr4 { value } => (r.rip, r.rax) = (guest::SYM_WRITE_CR4, value),
                GuestOp::WriteCr0 { value } => (r.rip, r.rax) = (guest::SYM_WRITE_CR0, value),
                GuestOp::Wrmsr { msr, value } => {
                    (r.rip, r.rcx) = (guest::SYM_WRMSR, u64::from(msr));
                    (r.rax, r.rdx) = lo_hi(value);
                }
                GuestOp::Xsetbv { xcr0 } => {
                    (r.rip, r.rcx) = (guest::SYM_XSETBV, 0);
                    (r.rax, r.rdx) = lo_hi(xcr0);
                }
                GuestOp::Vmcall => {
                    r.rip = guest::SYM_VMCALL;
                    r.rax = sys::KVM_HC_XEN_HVM_OP;
                    r.rdi = sys::KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT;
                    r.rsi = 0;
                }
                GuestOp::Cpuid { leaf, subleaf } => {
                    r.rip = guest::SYM_CPUID;
                    (r.rax, r.rcx) = (u64::from(leaf), u64::from(subleaf));
                }
                GuestOp::Descriptor { descriptor, write } => {
                    r.rip = match (descriptor, write) {
                        (sys::KVMI_DESC_IDTR, _) => guest::SYM_SIDT,
                        (sys::KVMI_DESC_GDTR, false) => guest::SYM_SGDT,
                        (sys::KVMI_DESC_GDTR, true) => guest::SYM_LGDT,
                        (sys::KVMI_DESC_LDTR, _) => guest::SYM_SLDT,
                        _ => guest::SYM_STR,
                    };
                    r.rdi = guest::percpu_va(vcpu) + 0x800;
                }
                GuestOp::Load { gva } => (r.rip, r.rdi) = (guest::SYM_LOAD, gva),
                GuestOp::Touch { gva } => (r.rip, r.rdi) = (guest::SYM_TOUCH, gva),
                GuestOp::Tick => (r.rip, r.rdi) = (guest::SYM_TICK, guest::JIFFIES_VA),
                GuestOp::Int3Selftest => r.rip = guest::SYM_INT3_SELFTEST,
            }
        }
        if let GuestOp::Raw(ev) = op {
            self.raise(vcpu, ev.clone(), &mut ex)?;
        } else {
            let mut done = false;
            for _ in 0..MAX_RETRIES {
                if let Attempt::Done = self.attempt(vcpu, &mut ex)? {
                    done = true;
                    break;
                }
            }
            ex.retries_exhausted = !done;
        }
        ex.rip = self.vm().vcpus[vcpu].regs.rip;
        Ok(ex)
    }

    /// Translate `gva` with `vcpu`'s paging; on failure the guest takes #PF.
    fn translate_or_fault(&self, vcpu: usize, gva: u64, ex: &mut Executed) -> Option<u64> {
        let mut vm = self.vm();
        let gpa = vm.memory.translate(&vm.vcpus[vcpu].sregs, gva);
        if gpa == sys::KVMI_UNMAPPED_GPA {
            let v = &mut vm.vcpus[vcpu];
            v.sregs.cr2 = gva;
            v.injections.push(crate::Injection {
                vector: 14,
                error_code: 0,
                cr2: gva,
                reinjected_bp: false,
            });
            ex.guest_fault = Some(gva);
            return None;
        }
        Some(gpa)
    }

    /// The state, once `vcpu` runs: not paused, not waiting for an event's reply (up to
    /// `event_timeout`, then [`SimError::Busy`]). A stopped vCPU executes nothing.
    fn runnable(&self, vcpu: usize) -> Result<MutexGuard<'_, State>, SimError> {
        let sh = &self.shared;
        let deadline = crate::deadline_after(sh.cfg.event_timeout);
        let mut st = sh.lock();
        if vcpu >= st.vm.vcpus.len() {
            return Err(SimError::NoSuchVcpu(vcpu));
        }
        st.busy_waiters += 1;
        let res = loop {
            let now = Instant::now();
            if let Some(c) = &st.closed {
                break Err(SimError::Closed(c.clone()));
            }
            if st.pending[vcpu].is_none() {
                break Ok(());
            }
            if now >= deadline {
                break Err(SimError::Busy);
            }
            st = sh
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        st.busy_waiters -= 1;
        res.map(|()| st)
    }

    /// One try at the instruction at RIP.
    fn attempt(&self, vcpu: usize, ex: &mut Executed) -> Result<Attempt, SimError> {
        let rip = self.runnable(vcpu)?.vm.vcpus[vcpu].regs.rip;
        let Some(gpa) = self.translate_or_fault(vcpu, rip, ex) else {
            return Ok(Attempt::Done);
        };
        let fetch = SimEvent::Pf {
            gva: rip,
            gpa,
            access: sys::KVMI_PAGE_ACCESS_X,
        };
        if self.raise(vcpu, fetch, ex)?.is_some_and(|r| is_retry(&r)) {
            return Ok(Attempt::Retry);
        }
        let byte = {
            let vm = self.vm();
            vm.memory
                .read(backing(&vm, vcpu, gpa), 1)
                .map_or(0, |b| b[0])
        };
        if byte == 0xcc {
            let bp = SimEvent::Breakpoint { gpa, insn_len: 1 };
            match self.raise(vcpu, bp, ex)? {
                Some(r) if is_retry(&r) => return Ok(Attempt::Retry),
                Some(r) if r.action != Some(sys::KVMI_EVENT_ACTION_CONTINUE) => {
                    return Ok(Attempt::Done)
                }
                // CONTINUE: the reply handler recorded the reinjected #BP.
                Some(_) => {}
                None => self.vm().vcpus[vcpu].injections.push(crate::Injection {
                    vector: 3,
                    error_code: 0,
                    cr2: 0,
                    reinjected_bp: false,
                }),
            }
            // The guest's #BP handler (an `iretq`) returns past the INT3.
            ex.bp_delivered = true;
            self.vm().vcpus[vcpu].regs.rip = rip.wrapping_add(1);
            self.after_insn(vcpu, ex)?;
            return Ok(Attempt::Done);
        }
        let (len, op) = guest::insn_at(rip).unwrap_or((1, Op::Plain));
        if let Attempt::Retry = self.effect(vcpu, op, ex)? {
            return Ok(Attempt::Retry);
        }
        {
            let mut vm = self.vm();
            let r = &mut vm.vcpus[vcpu].regs;
            r.rip = if op == Op::ToIdle {
                guest::SYM_IDLE
            } else {
                r.rip.wrapping_add(u64::from(len))
            };
        }
        self.after_insn(vcpu, ex)?;
        Ok(Attempt::Done)
    }

    /// SINGLESTEP after a completed instruction (kvmi-v7, armed and enabled).
    fn after_insn(&self, vcpu: usize, ex: &mut Executed) -> Result<(), SimError> {
        if self.config().abi == Abi::V7 && self.vm().vcpus[vcpu].singlestep {
            self.raise(vcpu, SimEvent::Singlestep { failed: false }, ex)?;
        }
        Ok(())
    }

    /// A data access of `access` to RDI; `Retry` if the tool answered its PF with RETRY.
    fn data_access(&self, vcpu: usize, access: u8, ex: &mut Executed) -> Result<Access, SimError> {
        let gva = self.vm().vcpus[vcpu].regs.rdi;
        let Some(gpa) = self.translate_or_fault(vcpu, gva, ex) else {
            return Ok(Access::Stop(Attempt::Done));
        };
        let reply = self.raise(vcpu, SimEvent::Pf { gva, gpa, access }, ex)?;
        if reply.as_ref().is_some_and(is_retry) {
            return Ok(Access::Stop(Attempt::Retry));
        }
        Ok(Access::Go {
            gva,
            gpa,
            pf: reply.and_then(|r| r.pf),
        })
    }

    /// The instruction's own effect and event.
    fn effect(&self, vcpu: usize, op: Op, ex: &mut Executed) -> Result<Attempt, SimError> {
        let regs = self.vm().vcpus[vcpu].regs;
        let edx_eax = ((regs.rdx & 0xffff_ffff) << 32) | (regs.rax & 0xffff_ffff);
        match op {
            Op::MovCr(cr) => {
                let old = self.vm().vcpus[vcpu].cr(cr);
                let ev = SimEvent::Cr {
                    cr,
                    old,
                    new: regs.rax,
                };
                if self.raise(vcpu, ev, ex)?.is_none() {
                    self.vm().vcpus[vcpu].set_cr(cr, regs.rax);
                }
            }
            Op::Wrmsr => {
                let msr = regs.rcx as u32;
                let old = self.vm().vcpus[vcpu].msrs.get(&msr).copied().unwrap_or(0);
                let ev = SimEvent::Msr {
                    msr,
                    old,
                    new: edx_eax,
                };
                if self.raise(vcpu, ev, ex)?.is_none() {
                    let mut vm = self.vm();
                    let v = &mut vm.vcpus[vcpu];
                    v.msrs.insert(msr, edx_eax);
                    if msr == crate::model::msr::EFER {
                        v.sregs.efer = edx_eax;
                    }
                }
            }
            Op::Xsetbv => {
                if self
                    .raise(vcpu, SimEvent::Xsetbv { xcr0: edx_eax }, ex)?
                    .is_none()
                {
                    self.vm().vcpus[vcpu].xcr0 = edx_eax;
                }
            }
            Op::Vmcall => {
                self.raise(vcpu, SimEvent::Hypercall, ex)?;
            }
            Op::Cpuid => {
                let (leaf, subleaf) = (regs.rax as u32, regs.rcx as u32);
                self.raise(vcpu, SimEvent::Cpuid { leaf, subleaf }, ex)?;
                let mut vm = self.vm();
                let out = vm
                    .cpuid
                    .get(&(leaf, subleaf))
                    .or_else(|| vm.cpuid.get(&(leaf, 0)))
                    .copied()
                    .unwrap_or([0; 4]);
                let r = &mut vm.vcpus[vcpu].regs;
                [r.rax, r.rbx, r.rcx, r.rdx] = out.map(u64::from);
            }
            Op::Desc(descriptor, write) => {
                let ev = SimEvent::Descriptor { descriptor, write };
                if self.raise(vcpu, ev, ex)?.is_some_and(|r| is_retry(&r)) {
                    return Ok(Attempt::Retry);
                }
            }
            Op::Load => {
                let (gva, gpa, reply) = match self.data_access(vcpu, sys::KVMI_PAGE_ACCESS_R, ex)? {
                    Access::Go { gva, gpa, pf } => (gva, gpa, pf),
                    Access::Stop(a) => return Ok(a),
                };
                let real = {
                    let vm = self.vm();
                    vm.memory.read(backing(&vm, vcpu, gpa), 8)
                }
                .unwrap_or_else(|| vec![0; 8]);
                // CONTINUE with context data: the emulated read returns it.
                let ctx = reply.filter(|p| !p.ctx_data.is_empty());
                let data = match ctx {
                    Some(p) => {
                        let skip = gva.wrapping_sub(p.ctx_addr) as usize;
                        let mut d: Vec<u8> =
                            p.ctx_data.iter().skip(skip).take(8).copied().collect();
                        d.extend_from_slice(&real[d.len()..]);
                        d
                    }
                    None => real,
                };
                let mut a = [0u8; 8];
                a.copy_from_slice(&data[..8]);
                self.vm().vcpus[vcpu].regs.rax = u64::from_le_bytes(a);
                ex.read = Some(data);
            }
            Op::Touch | Op::Inc => {
                let (_, gpa, _) = match self.data_access(vcpu, sys::KVMI_PAGE_ACCESS_W, ex)? {
                    Access::Go { gva, gpa, pf } => (gva, gpa, pf),
                    Access::Stop(a) => return Ok(a),
                };
                if op == Op::Inc {
                    let mut vm = self.vm();
                    let at = backing(&vm, vcpu, gpa);
                    if let Some(n) = vm.memory.read_u64(at) {
                        vm.memory.write(at, &n.wrapping_add(1).to_le_bytes());
                    }
                }
            }
            Op::Int3 | Op::ToIdle | Op::Plain => {}
        }
        Ok(Attempt::Done)
    }

    /// The ops the built-in workload runs on `vcpu` now: one per kind of event the tool
    /// has enabled there (and intercepted, for CR and MSR; for PF, an access of each
    /// missing kind to each restricted page of the vCPU's view, at most
    /// [`MAX_TOUCHED_PAGES`]), with values that change the register so the event is
    /// sent. UNHOOK is not included.
    pub fn workload_ops(&self, vcpu: usize) -> Vec<GuestOp> {
        let cfg = self.config();
        let vm = self.vm();
        let Some(v) = vm.vcpus.get(vcpu) else {
            return Vec::new();
        };
        let on = |id: u8| v.events.contains(&id) && server::event_allowed(cfg, id);
        let v7 = cfg.abi == Abi::V7;
        let mut out = Vec::new();
        if on(sys::KVMI_EVENT_CR) {
            for cr in &v.cr_intercepts {
                out.push(match cr {
                    3 if v.sregs.cr3 == guest::KERNEL_CR3 => GuestOp::SwitchMm {
                        cr3: guest::USER_CR3,
                    },
                    3 => GuestOp::SwitchMm {
                        cr3: guest::KERNEL_CR3,
                    },
                    // Linux flushes global TLB entries by toggling CR4.PGE.
                    4 => GuestOp::WriteCr4 {
                        value: v.sregs.cr4 ^ (1 << 7),
                    },
                    // Toggling CR0.WP, as old kernels did to patch text.
                    _ => GuestOp::WriteCr0 {
                        value: v.sregs.cr0 ^ (1 << 16),
                    },
                });
            }
        }
        if on(sys::KVMI_EVENT_MSR) {
            for m in &v.msr_intercepts {
                let old = v.msrs.get(m).copied().unwrap_or(0);
                out.push(GuestOp::Wrmsr {
                    msr: *m,
                    value: old ^ 0x1000,
                });
            }
        }
        if on(sys::KVMI_EVENT_XSETBV) {
            out.push(GuestOp::Xsetbv { xcr0: v.xcr0 | 0x7 });
        }
        if on(sys::KVMI_EVENT_BREAKPOINT) {
            out.push(GuestOp::Call {
                gva: guest::SYM_BP_TARGET,
            });
            out.push(GuestOp::Int3Selftest);
        }
        if on(sys::KVMI_EVENT_HYPERCALL) {
            out.push(GuestOp::Vmcall);
        }
        if on(sys::KVMI_EVENT_PF) {
            let restricted = vm
                .page_access
                .iter()
                .filter(|((view, _), _)| *view == v.view)
                .take(MAX_TOUCHED_PAGES);
            for (&(_, gfn), &allowed) in restricted {
                let pa = gfn << 12;
                if allowed & sys::KVMI_PAGE_ACCESS_R == 0 {
                    let gva = if pa == guest::BANNER_PA {
                        guest::BANNER_VA
                    } else {
                        guest::dva(pa)
                    };
                    out.push(GuestOp::Load { gva });
                }
                if allowed & sys::KVMI_PAGE_ACCESS_W == 0 {
                    out.push(if pa == guest::JIFFIES_PA & !0xfff {
                        GuestOp::Tick
                    } else {
                        GuestOp::Touch {
                            gva: guest::dva(pa),
                        }
                    });
                }
                if allowed & sys::KVMI_PAGE_ACCESS_X == 0 {
                    out.push(GuestOp::Call {
                        gva: guest::kva(pa),
                    });
                }
            }
        }
        if on(sys::KVMI_EVENT_DESCRIPTOR) {
            for (descriptor, write) in [
                (sys::KVMI_DESC_IDTR, false),
                (sys::KVMI_DESC_GDTR, false),
                (sys::KVMI_DESC_LDTR, false),
                (sys::KVMI_DESC_TR, false),
                (sys::KVMI_DESC_GDTR, true),
            ] {
                out.push(GuestOp::Descriptor { descriptor, write });
            }
        }
        if on(sys::KVMI_EVENT_SINGLESTEP) {
            if v7 && v.singlestep {
                out.push(GuestOp::Step);
            } else if !v7 {
                out.push(GuestOp::Raw(SimEvent::Singlestep { failed: false }));
            }
        }
        if v7 && on(sys::KVMI_EVENT_CPUID) {
            out.push(GuestOp::Cpuid {
                leaf: 1,
                subleaf: 0,
            });
        }
        if !v7 && on(sys::KVMI_EVENT_TRAP) {
            out.push(GuestOp::Raw(SimEvent::Trap {
                vector: 14,
                error_code: 2,
                cr2: guest::dva(0x1000),
            }));
        }
        if vcpu == 0
            && vm.vm_events.contains(&sys::KVMI_EVENT_CREATE_VCPU)
            && server::event_allowed(cfg, sys::KVMI_EVENT_CREATE_VCPU)
        {
            out.push(GuestOp::Raw(SimEvent::CreateVcpu));
        }
        out
    }
}
