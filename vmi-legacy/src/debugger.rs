//! Registers, pausing and events through QEMU's GDB stub: [`GdbSession`].
//!
//! QEMU's gdbstub stops the whole VM when a client attaches and on every stop it
//! reports, and it cannot serve a packet while the VM runs (any byte received then just
//! stops the VM). A [`GdbSession`] therefore tracks whether the VM runs, stops it
//! (interrupt byte) before every command and resumes it afterwards, and owns the stops:
//!
//! * idle, the guest runs (`c` outstanding);
//! * [`EventControl::wait_event`] waits for a stop; a breakpoint, watchpoint or single
//!   step becomes a [`PendingEvent`] while the VM stays stopped (status `debug` in QMP);
//! * [`EventControl::reply`] applies the response and resumes the VM.
//!
//! While single-stepping is on for some vCPUs, only they run (one step at a time, with
//! IRQs and timers masked by `qqemu.sstep`); the other vCPUs stay stopped.
//!
//! Do not mix with QMP `stop`/`cont` while a session is attached: a QMP stop is reported
//! to the gdbstub as a stop (`T02`), and a QMP `cont` runs a VM the session believes
//! stopped. [`crate::LegacyQemu`] routes its pause/resume here when given a GDB socket.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmi_core::event::InterruptKind;
use vmi_core::paging::{translate, PagingMode};
use vmi_core::registers::{msr, ControlRegs, Gprs, ReadRegisters, RegisterGroups, WriteRegisters};
use vmi_core::{
    Access, Action, Backend, Capability, CapabilityReport, Error, Event, EventControl, EventKind,
    Gfn, Gpa, Gva, Monitor, PauseCount, PendingEvent, PhysicalMemory, PhysicalMemoryWrite,
    RegisterSnapshot, ReplyToken, Response, Result, Support, VcpuControl, VcpuId, View,
};

use crate::gdb::codec::{StopReason, WatchKind};
use crate::gdb::{BreakpointKind, GdbClient};

/// QEMU single-step mask: enable, no IRQs, no timers.
const SSTEP_MASK: u64 = 0x7;
/// SIGTRAP: breakpoints, watchpoints and steps.
const SIGTRAP: u8 = 5;
/// How long one slice of [`EventControl::wait_event`] holds the lock.
const WAIT_SLICE: Duration = Duration::from_millis(20);

static NEXT_SESSION: AtomicU64 = AtomicU64::new(0x6764_6200_0000);

/// Selector and base registers the GDB stub has beyond [`RegisterSnapshot`]'s groups
/// (which need limits and attributes for segments; see [`crate::LegacyQemu`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct GdbSegments {
    pub cs: u16,
    pub ss: u16,
    pub ds: u16,
    pub es: u16,
    pub fs: u16,
    pub gs: u16,
    pub fs_base: u64,
    pub gs_base: u64,
    pub k_gs_base: u64,
}

/// A watchpoint placed with [`GdbSession::watch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Watch {
    gva: u64,
    len: u64,
    kind: u8,
}

impl Watch {
    fn kind(self) -> WatchKind {
        match self.kind {
            2 => WatchKind::Write,
            3 => WatchKind::Read,
            _ => WatchKind::Access,
        }
    }
}

/// What a stop turned out to be.
#[derive(Debug, Clone)]
enum StopEvent {
    Breakpoint {
        vcpu: VcpuId,
        rip: u64,
    },
    Singlestep {
        vcpu: VcpuId,
        rip: u64,
    },
    Watch {
        vcpu: VcpuId,
        kind: WatchKind,
        addr: u64,
    },
}

impl StopEvent {
    fn vcpu(&self) -> VcpuId {
        match self {
            Self::Breakpoint { vcpu, .. }
            | Self::Singlestep { vcpu, .. }
            | Self::Watch { vcpu, .. } => *vcpu,
        }
    }
}

#[derive(Debug)]
struct Inner {
    client: GdbClient,
    running: bool,
    vcpus: u32,
    breakpoints: BTreeSet<u64>,
    watches: BTreeSet<Watch>,
    int3: bool,
    singlestep: u64,
    /// Stops seen (e.g. while interrupting) and not yet handed out.
    queued: VecDeque<StopEvent>,
    /// The event awaiting its reply: (id, event).
    outstanding: Option<(u64, StopEvent)>,
    next_id: u64,
    next_step_vcpu: u32,
    /// Paused through [`VcpuControl`]: stay stopped.
    held: bool,
    regnums: BTreeMap<String, (usize, usize)>,
}

/// A session with QEMU's GDB stub: registers, pause/resume, breakpoints, watchpoints and
/// single steps, as `vmi-core` events. See the [module documentation](self).
#[derive(Debug)]
pub struct GdbSession {
    inner: Mutex<Inner>,
    session: u64,
    pause: PauseCount,
}

fn gdb_err(what: &'static str, reason: impl Into<Cow<'static, str>>) -> Error {
    Error::unsupported(what, reason)
}

impl GdbSession {
    /// Connects to the gdbstub's UNIX socket (`-gdb chardev:…`), switches `m`/`M` to
    /// guest-physical addresses, and lets the guest run (the stub stopped it on attach).
    pub fn connect_unix(path: &Path, timeout: Duration) -> Result<Self> {
        let client = GdbClient::connect_unix(path, timeout)?;
        Self::new(client)
    }

    /// Wraps a connected client (the VM is stopped, as after attaching) and resumes it.
    pub fn new(mut client: GdbClient) -> Result<Self> {
        let vcpus = client.threads()?.len() as u32;
        client.set_physical_mode(true)?;
        client.set_sstep_flags(SSTEP_MASK)?;
        let regnums = client
            .registers()
            .iter()
            .map(|r| (r.name.clone(), (r.regnum, r.bitsize.div_ceil(8))))
            .collect();
        let mut inner = Inner {
            client,
            running: false,
            vcpus,
            breakpoints: BTreeSet::new(),
            watches: BTreeSet::new(),
            int3: false,
            singlestep: 0,
            queued: VecDeque::new(),
            outstanding: None,
            next_id: 1,
            next_step_vcpu: 0,
            held: false,
            regnums,
        };
        inner.resume()?;
        Ok(Self {
            inner: Mutex::new(inner),
            session: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            pause: PauseCount::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the VM stopped, restoring its run state afterwards.
    fn stopped<T>(&self, f: impl FnOnce(&mut Inner) -> Result<T>) -> Result<T> {
        let mut g = self.lock();
        let was_running = g.running;
        g.stop()?;
        let r = f(&mut g);
        if was_running && g.outstanding.is_none() && !g.held {
            g.resume()?;
        }
        r
    }

    /// Whether the session believes the VM runs.
    pub fn is_running(&self) -> bool {
        self.lock().running
    }

    /// The number of vCPUs (gdbstub threads).
    pub fn vcpus(&self) -> u32 {
        self.lock().vcpus
    }

    /// Places a software breakpoint (`Z0`) at a guest-virtual address. Under TCG it is
    /// invisible to the guest (no `0xCC` in memory). Hits are reported as
    /// [`EventKind::Breakpoint`] once [`Monitor::Interrupt`]`(Int3)` is enabled.
    pub fn set_breakpoint(&self, gva: Gva) -> Result<()> {
        self.stopped(|g| {
            if g.breakpoints.contains(&gva.0) {
                return Ok(());
            }
            g.client
                .insert_breakpoint(BreakpointKind::Software, gva.0, 1)?;
            g.breakpoints.insert(gva.0);
            Ok(())
        })
    }

    /// Removes a breakpoint placed with [`Self::set_breakpoint`].
    pub fn clear_breakpoint(&self, gva: Gva) -> Result<()> {
        self.stopped(|g| {
            if g.breakpoints.remove(&gva.0) {
                g.client
                    .remove_breakpoint(BreakpointKind::Software, gva.0, 1)?;
            }
            Ok(())
        })
    }

    /// Watches `len` bytes at a guest-virtual address (`Z2` write, `Z3` read, `Z4`
    /// access): `access` W, R, or both. Hits are reported as [`EventKind::MemoryAccess`]
    /// (after the accessing instruction completed).
    pub fn watch(&self, gva: Gva, len: u64, access: Access) -> Result<()> {
        let w = watch_for(gva, len, access)?;
        self.stopped(|g| {
            if g.watches.contains(&w) {
                return Ok(());
            }
            g.client
                .insert_breakpoint(BreakpointKind::Watch(w.kind()), w.gva, w.len)?;
            g.watches.insert(w);
            Ok(())
        })
    }

    /// Removes a watchpoint placed with [`Self::watch`] (same arguments).
    pub fn unwatch(&self, gva: Gva, len: u64, access: Access) -> Result<()> {
        let w = watch_for(gva, len, access)?;
        self.stopped(|g| {
            if g.watches.remove(&w) {
                g.client
                    .remove_breakpoint(BreakpointKind::Watch(w.kind()), w.gva, w.len)?;
            }
            Ok(())
        })
    }

    /// Selectors and segment/TLS bases as the stub reports them.
    pub fn segments(&self, vcpu: VcpuId) -> Result<GdbSegments> {
        self.stopped(|g| {
            let v = g.read_g(vcpu)?;
            let sel = |n: &str| v.get(n).map_or(0, |x| *x as u16);
            let val = |n: &str| v.get(n).copied().unwrap_or(0);
            Ok(GdbSegments {
                cs: sel("cs"),
                ss: sel("ss"),
                ds: sel("ds"),
                es: sel("es"),
                fs: sel("fs"),
                gs: sel("gs"),
                fs_base: val("fs_base"),
                gs_base: val("gs_base"),
                k_gs_base: val("k_gs_base"),
            })
        })
    }

    /// Runs a monitor (HMP) command through the stub (`qRcmd`).
    pub fn monitor(&self, cmd: &str) -> Result<String> {
        self.stopped(|g| g.client.monitor(cmd))
    }

    fn translate_gla(&self, regs: &RegisterSnapshot, gla: u64) -> Option<Gpa> {
        let (cr0, cr4, efer) = regs.paging_inputs()?;
        let cr3 = regs.control?.cr3;
        translate(
            self,
            PagingMode::from_registers(cr0, cr4, efer),
            Gpa(cr3),
            Gva(gla),
        )
        .ok()
        .map(|t| t.gpa)
    }

    fn make_event(&self, id: u64, stop: &StopEvent) -> Result<PendingEvent> {
        let vcpu = stop.vcpu();
        let registers = self.registers(
            vcpu,
            RegisterGroups::GPRS | RegisterGroups::CONTROL | RegisterGroups::EFER,
            &[],
        )?;
        let kind = match *stop {
            StopEvent::Breakpoint { rip, .. } => {
                let gpa = self.translate_gla(&registers, rip).ok_or_else(|| {
                    Error::malformed("gdbstub", format!("breakpoint at unmapped {rip:#x}"))
                })?;
                EventKind::Breakpoint {
                    gla: Gva(rip),
                    gfn: gpa.gfn(),
                    offset: gpa.page_offset(),
                    insn_length: 1,
                }
            }
            StopEvent::Singlestep { rip, .. } => {
                let gpa = self.translate_gla(&registers, rip);
                EventKind::Singlestep {
                    gla: Gva(rip),
                    gfn: gpa.map(|g| g.gfn()),
                    offset: rip & 0xfff,
                    failed: false,
                }
            }
            StopEvent::Watch { kind, addr, .. } => {
                let gpa = self.translate_gla(&registers, addr);
                EventKind::MemoryAccess {
                    gfn: gpa.map_or(Gfn(0), |g| g.gfn()),
                    offset: addr & 0xfff,
                    gla: Some(Gva(addr)),
                    access: match kind {
                        WatchKind::Write => Access::W,
                        WatchKind::Read => Access::R,
                        WatchKind::Access => Access::RW,
                    },
                    page_walk: false,
                }
            }
        };
        Ok(PendingEvent {
            event: Event {
                vcpu,
                view: View::DEFAULT,
                registers,
                kind,
            },
            token: ReplyToken::new(self.session, id, vcpu),
        })
    }

    /// Removes every breakpoint and watchpoint, turns single-stepping off, restores
    /// virtual addressing and detaches; QEMU then resumes the guest.
    pub fn detach(&self) -> Result<()> {
        let mut g = self.lock();
        if g.running {
            g.stop()?;
        }
        let mut first_err = None;
        for bp in std::mem::take(&mut g.breakpoints) {
            if let Err(e) = g.client.remove_breakpoint(BreakpointKind::Software, bp, 1) {
                first_err.get_or_insert(e);
            }
        }
        for w in std::mem::take(&mut g.watches) {
            if let Err(e) =
                g.client
                    .remove_breakpoint(BreakpointKind::Watch(w.kind()), w.gva, w.len)
            {
                first_err.get_or_insert(e);
            }
        }
        g.singlestep = 0;
        g.int3 = false;
        g.outstanding = None;
        g.queued.clear();
        let _ = g.client.set_physical_mode(false);
        g.client.detach()?;
        g.running = true;
        first_err.map_or(Ok(()), Err)
    }
}

fn watch_for(gva: Gva, len: u64, access: Access) -> Result<Watch> {
    if len == 0 || len > 8 {
        return Err(Error::InvalidArgument {
            what: "watchpoint length",
            reason: "must be 1 to 8 bytes".into(),
        });
    }
    let kind = if access.contains(Access::RW) {
        4
    } else if access.contains(Access::W) {
        2
    } else if access.contains(Access::R) {
        3
    } else {
        return Err(Error::InvalidArgument {
            what: "watchpoint access",
            reason: "watch reads, writes or both (execute: use a breakpoint)".into(),
        });
    };
    Ok(Watch {
        gva: gva.0,
        len,
        kind,
    })
}

impl Inner {
    fn thread(&self, vcpu: VcpuId) -> Result<u64> {
        if u32::from(vcpu.raw()) >= self.vcpus {
            return Err(Error::NoSuchVcpu {
                vcpu,
                count: self.vcpus,
            });
        }
        Ok(u64::from(vcpu.raw()) + 1)
    }

    fn resume(&mut self) -> Result<()> {
        if !self.running {
            self.client.resume()?;
            self.running = true;
        }
        Ok(())
    }

    /// Stops a running VM; a stop that is not our interrupt is queued as an event.
    fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        let stop = self.client.interrupt()?;
        self.running = false;
        if let Some(ev) = self.classify(&stop, false)? {
            self.queued.push_back(ev);
        }
        Ok(())
    }

    /// Reads the `g` packet of `vcpu` as name → value (registers of up to 8 bytes).
    fn read_g(&mut self, vcpu: VcpuId) -> Result<BTreeMap<String, u64>> {
        let t = self.thread(vcpu)?;
        self.client.select_thread(t)?;
        let raw = self.client.read_all_registers()?;
        let mut out = BTreeMap::new();
        for r in self.client.registers() {
            let n = r.bitsize.div_ceil(8);
            if n > 8 {
                continue;
            }
            if let Some(b) = raw.get(r.offset..r.offset + n) {
                let mut v = [0u8; 8];
                v[..n].copy_from_slice(b);
                out.insert(r.name.clone(), u64::from_le_bytes(v));
            }
        }
        Ok(out)
    }

    fn rip(&mut self, vcpu: VcpuId) -> Result<u64> {
        let t = self.thread(vcpu)?;
        self.client.select_thread(t)?;
        self.client.read_register_u64("rip")
    }

    fn write_reg(&mut self, name: &str, value: u64) -> Result<()> {
        let (num, size) = *self
            .regnums
            .get(name)
            .ok_or_else(|| gdb_err("register write", format!("{name} not in target XML")))?;
        let bytes = value.to_le_bytes();
        self.client.write_register(num, &bytes[..size.min(8)])
    }

    /// Turns a stop reply into an event, or `None` for a stop that is not one (our own
    /// interrupt, a breakpoint hit without the INT3 monitor — stepped over here).
    fn classify(&mut self, stop: &StopReason, stepping: bool) -> Result<Option<StopEvent>> {
        let StopReason::Signal {
            signal,
            thread,
            watch,
            ..
        } = stop
        else {
            return Err(Error::Disconnected {
                reason: format!("the gdbstub target ended: {stop:?}").into(),
            });
        };
        if *signal != SIGTRAP {
            return Ok(None);
        }
        let vcpu = VcpuId(thread.map_or(0, |t| t.saturating_sub(1)) as u16);
        if let Some((kind, addr)) = watch {
            return Ok(Some(StopEvent::Watch {
                vcpu,
                kind: *kind,
                addr: *addr,
            }));
        }
        let rip = self.rip(vcpu)?;
        if self.breakpoints.contains(&rip) {
            if self.int3 {
                return Ok(Some(StopEvent::Breakpoint { vcpu, rip }));
            }
            if !stepping {
                // Not monitored: step over it silently.
                if let Some(ev) = self.step_over(vcpu, rip)? {
                    return Ok(Some(ev));
                }
                return Ok(None);
            }
        }
        if stepping {
            return Ok(Some(StopEvent::Singlestep { vcpu, rip }));
        }
        Ok(None)
    }

    /// Removes the breakpoint at `rip`, single-steps `vcpu`, reinserts it. Returns the
    /// event the step produced, if any (a watchpoint, or a step while single-stepping is
    /// on for `vcpu`).
    fn step_over(&mut self, vcpu: VcpuId, rip: u64) -> Result<Option<StopEvent>> {
        let t = self.thread(vcpu)?;
        let had = self.breakpoints.contains(&rip);
        if had {
            self.client
                .remove_breakpoint(BreakpointKind::Software, rip, 1)?;
        }
        let stop = self.client.step_thread(t);
        if had {
            self.client
                .insert_breakpoint(BreakpointKind::Software, rip, 1)?;
        }
        let stop = stop?;
        let stepping = self.singlestep & (1 << vcpu.raw()) != 0;
        if let StopReason::Signal {
            watch: Some((kind, addr)),
            ..
        } = stop
        {
            return Ok(Some(StopEvent::Watch { vcpu, kind, addr }));
        }
        if stepping {
            let rip = self.rip(vcpu)?;
            return Ok(Some(StopEvent::Singlestep { vcpu, rip }));
        }
        Ok(None)
    }

    /// One single step of the next vCPU that has single-stepping on.
    fn step_next(&mut self) -> Result<Option<StopEvent>> {
        let n = self.vcpus.max(1);
        let v = (0..n)
            .map(|i| (self.next_step_vcpu + i) % n)
            .find(|v| self.singlestep & (1 << v) != 0)
            .unwrap_or(0);
        self.next_step_vcpu = (v + 1) % n;
        let vcpu = VcpuId(v as u16);
        let rip = self.rip(vcpu)?;
        if self.breakpoints.contains(&rip) {
            return self.step_over(vcpu, rip);
        }
        let stop = self.client.step_thread(u64::from(v) + 1)?;
        self.classify(&stop, true)
    }
}

impl PhysicalMemory for GdbSession {
    /// Reads through the stub in physical mode (`Qqemu.PhyMemMode:1`, `m`), stopping
    /// the VM for the duration if it runs.
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.stopped(|g| g.client.read_memory(gpa.0, buf))
    }
}

impl PhysicalMemoryWrite for GdbSession {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        self.stopped(|g| g.client.write_memory(gpa.0, data))
    }
}

impl ReadRegisters for GdbSession {
    /// From the `g` packet of thread `vcpu + 1`: GPRS, CONTROL, EFER, and the MSRs
    /// `IA32_EFER`, `FS_BASE`, `GS_BASE`, `KERNEL_GS_BASE`. Segments (the stub has
    /// selectors only: [`GdbSession::segments`]), descriptor tables and debug registers
    /// are left out; [`crate::LegacyQemu`] adds them from `info registers`.
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        let v = self.stopped(|g| g.read_g(vcpu))?;
        let r = |n: &str| -> Result<u64> {
            v.get(n)
                .copied()
                .ok_or_else(|| Error::malformed("gdbstub", format!("no {n} in the g packet")))
        };
        let mut s = RegisterSnapshot::default();
        if groups.contains(RegisterGroups::GPRS) {
            s.gprs = Some(Gprs {
                rax: r("rax")?,
                rbx: r("rbx")?,
                rcx: r("rcx")?,
                rdx: r("rdx")?,
                rsi: r("rsi")?,
                rdi: r("rdi")?,
                rbp: r("rbp")?,
                rsp: r("rsp")?,
                r8: r("r8")?,
                r9: r("r9")?,
                r10: r("r10")?,
                r11: r("r11")?,
                r12: r("r12")?,
                r13: r("r13")?,
                r14: r("r14")?,
                r15: r("r15")?,
                rip: r("rip")?,
                rflags: r("eflags")?,
            });
        }
        if groups.contains(RegisterGroups::CONTROL) {
            s.control = Some(ControlRegs {
                cr0: r("cr0")?,
                cr2: r("cr2")?,
                cr3: r("cr3")?,
                cr4: r("cr4")?,
                cr8: r("cr8")?,
            });
        }
        if groups.contains(RegisterGroups::EFER) {
            s.efer = v.get("efer").copied();
        }
        if groups.contains(RegisterGroups::MSRS) {
            for (index, name) in [
                (msr::EFER, "efer"),
                (msr::FS_BASE, "fs_base"),
                (msr::GS_BASE, "gs_base"),
                (msr::KERNEL_GS_BASE, "k_gs_base"),
            ] {
                if msrs.contains(&index) {
                    if let Some(x) = v.get(name) {
                        s.msrs.insert(index, *x);
                    }
                }
            }
        }
        Ok(s)
    }
}

/// The MSRs the stub can write (`P` on their registers).
const WRITABLE_MSRS: [(u32, &str); 4] = [
    (msr::EFER, "efer"),
    (msr::FS_BASE, "fs_base"),
    (msr::GS_BASE, "gs_base"),
    (msr::KERNEL_GS_BASE, "k_gs_base"),
];

/// Whether the stub can write every group of `regs`; the first one it cannot, if not.
fn check_writable(regs: &RegisterSnapshot) -> Result<()> {
    let no = |what: &'static str, why: &'static str| Err(Error::unsupported(what, why));
    if regs.debug.is_some() {
        return no(
            "debug register writes",
            "QEMU's gdbstub has no debug registers",
        );
    }
    if regs.segments.is_some() {
        return no(
            "segment register writes",
            "QEMU's gdbstub writes selectors only, not bases, limits and attributes",
        );
    }
    if regs.gdtr.is_some() || regs.idtr.is_some() {
        return no(
            "descriptor table writes",
            "QEMU's gdbstub has no GDTR/IDTR registers",
        );
    }
    if regs.xcr0.is_some() {
        return no("XCR0 writes", "QEMU's gdbstub has no XCR0 register");
    }
    if let Some(m) = regs
        .msrs
        .keys()
        .find(|m| !WRITABLE_MSRS.iter().any(|(i, _)| i == *m))
    {
        return Err(Error::unsupported(
            format!("MSR {m:#x} write"),
            "QEMU's gdbstub only has EFER, FS_BASE, GS_BASE and KERNEL_GS_BASE",
        ));
    }
    Ok(())
}

fn write_snapshot(g: &mut Inner, vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
    check_writable(regs)?;
    let t = g.thread(vcpu)?;
    g.client.select_thread(t)?;
    if let Some(x) = regs.gprs {
        for (n, v) in [
            ("rax", x.rax),
            ("rbx", x.rbx),
            ("rcx", x.rcx),
            ("rdx", x.rdx),
            ("rsi", x.rsi),
            ("rdi", x.rdi),
            ("rbp", x.rbp),
            ("rsp", x.rsp),
            ("r8", x.r8),
            ("r9", x.r9),
            ("r10", x.r10),
            ("r11", x.r11),
            ("r12", x.r12),
            ("r13", x.r13),
            ("r14", x.r14),
            ("r15", x.r15),
            ("rip", x.rip),
            ("eflags", x.rflags),
        ] {
            g.write_reg(n, v)?;
        }
    }
    if let Some(c) = regs.control {
        for (n, v) in [
            ("cr0", c.cr0),
            ("cr2", c.cr2),
            ("cr3", c.cr3),
            ("cr4", c.cr4),
            ("cr8", c.cr8),
        ] {
            g.write_reg(n, v)?;
        }
    }
    if let Some(e) = regs.efer {
        g.write_reg("efer", e)?;
    }
    for (index, v) in &regs.msrs {
        if let Some((_, n)) = WRITABLE_MSRS.iter().find(|(i, _)| i == index) {
            g.write_reg(n, *v)?;
        }
    }
    Ok(())
}

impl WriteRegisters for GdbSession {
    /// Writes through `P`: GPRS (with RIP, RFLAGS), CONTROL, EFER and the MSRs EFER,
    /// FS_BASE, GS_BASE, KERNEL_GS_BASE. Any other group fails with
    /// [`Error::Unsupported`] before anything is written.
    fn set_registers(&self, vcpu: VcpuId, regs: &RegisterSnapshot) -> Result<()> {
        check_writable(regs)?;
        self.stopped(|g| write_snapshot(g, vcpu, regs))
    }
}

impl VcpuControl for GdbSession {
    fn vcpu_count(&self) -> Result<u32> {
        Ok(self.vcpus())
    }

    /// Stops the VM through the stub (interrupt byte) if it runs. A breakpoint or
    /// watchpoint hit racing with the interrupt is kept for [`EventControl::wait_event`].
    fn pause_vcpus(&self) -> Result<()> {
        let mut g = self.lock();
        g.held = true;
        g.stop()
    }

    /// Continues (`c`) unless an event awaits its reply.
    fn resume_vcpus(&self) -> Result<()> {
        let mut g = self.lock();
        g.held = false;
        if g.outstanding.is_some() || !g.queued.is_empty() {
            return Ok(());
        }
        g.resume()
    }

    fn pause_count(&self) -> &PauseCount {
        &self.pause
    }
}

impl EventControl for GdbSession {
    /// Supported: [`Monitor::Interrupt`]`(Int3)` (hits of [`GdbSession::set_breakpoint`]),
    /// [`Monitor::Singlestep`] and [`Monitor::MemoryAccess`] (hits of
    /// [`GdbSession::watch`]; always delivered).
    fn enable(&self, monitor: Monitor) -> Result<()> {
        match monitor {
            Monitor::Interrupt(InterruptKind::Int3) => {
                self.lock().int3 = true;
                Ok(())
            }
            Monitor::Singlestep(set) => {
                let mut g = self.lock();
                let all = if g.vcpus >= 64 {
                    u64::MAX
                } else {
                    (1u64 << g.vcpus) - 1
                };
                g.singlestep |= set.0 & all;
                Ok(())
            }
            Monitor::MemoryAccess => Ok(()),
            other => Err(Error::unsupported(
                format!("{other:?} events"),
                unsupported_monitor_reason(&other),
            )),
        }
    }

    fn disable(&self, monitor: Monitor) -> Result<()> {
        match monitor {
            Monitor::Interrupt(InterruptKind::Int3) => {
                self.lock().int3 = false;
                Ok(())
            }
            Monitor::Singlestep(set) => {
                let mut g = self.lock();
                g.singlestep &= !set.0;
                // The VM stays stopped between steps; with none left to step, run it.
                if g.singlestep == 0 && g.outstanding.is_none() && g.queued.is_empty() && !g.held {
                    g.resume()?;
                }
                Ok(())
            }
            Monitor::MemoryAccess => Ok(()),
            other => Err(Error::unsupported(
                format!("{other:?} events"),
                unsupported_monitor_reason(&other),
            )),
        }
    }

    /// Runs the VM until a stop (or steps a single-stepping vCPU) and returns it as an
    /// event; the VM stays stopped until [`EventControl::reply`]. `Ok(None)` on timeout,
    /// the VM still running. The lock is held in slices of 20 ms, so other calls proceed
    /// meanwhile.
    fn wait_event(&self, timeout: Duration) -> Result<Option<PendingEvent>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut g = self.lock();
            if g.outstanding.is_some() {
                return Err(Error::InvalidArgument {
                    what: "wait_event",
                    reason: "the previous event has not been replied to".into(),
                });
            }
            // Single-stepping was enabled while the VM runs: stop it to step.
            if g.singlestep != 0 && g.running && !g.held {
                g.stop()?;
            }
            let mut found = g.queued.pop_front();
            if found.is_none() && !g.running && !g.held {
                if g.singlestep != 0 {
                    found = g.step_next()?;
                } else {
                    g.resume()?;
                }
            }
            if found.is_none() && g.running {
                let left = deadline.saturating_duration_since(Instant::now());
                if let Some(stop) = g.client.wait_stop(left.min(WAIT_SLICE))? {
                    g.running = false;
                    found = g.classify(&stop, false)?;
                }
            }
            if let Some(ev) = found {
                let id = g.next_id;
                g.next_id += 1;
                g.outstanding = Some((id, ev.clone()));
                drop(g);
                return match self.make_event(id, &ev) {
                    Ok(p) => Ok(Some(p)),
                    Err(e) => {
                        let mut g = self.lock();
                        g.outstanding = None;
                        Err(e)
                    }
                };
            }
            drop(g);
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    /// Applies `set_registers` and `toggle_singlestep`, steps past a breakpoint, and
    /// resumes the VM. Actions other than [`Action::Continue`] are refused with
    /// [`Error::Unsupported`] — the event is still answered and the vCPU resumed.
    fn reply(&self, token: ReplyToken, response: Response) -> Result<()> {
        let mut g = self.lock();
        let Some((id, ev)) = g.outstanding.clone() else {
            return Err(Error::InvalidArgument {
                what: "reply token",
                reason: "no event awaits a reply".into(),
            });
        };
        if token.session() != self.session || token.id() != id {
            return Err(Error::InvalidArgument {
                what: "reply token",
                reason: "not the token of this session's outstanding event".into(),
            });
        }
        let refused = check(&ev, &response);
        let vcpu = ev.vcpu();
        let ok = refused.is_ok();
        let mut result = refused;
        if ok {
            if let Some(regs) = &response.set_registers {
                if let Err(e) = write_snapshot(&mut g, vcpu, regs) {
                    result = Err(e);
                }
            }
            if response.toggle_singlestep {
                g.singlestep ^= 1 << vcpu.raw();
            }
        }
        g.outstanding = None;
        // Get past the breakpoint (the step may itself be the next event).
        if let StopEvent::Breakpoint { rip, .. } = ev {
            let cur = g.rip(vcpu)?;
            if cur == rip {
                if let Some(next) = g.step_over(vcpu, rip)? {
                    g.queued.push_back(next);
                }
            }
        }
        if g.singlestep == 0 && g.queued.is_empty() && !g.held {
            g.resume()?;
        }
        result
    }

    fn pending_events(&self) -> Result<usize> {
        Ok(self.lock().queued.len())
    }

    fn check_response(&self, event: &Event, response: &Response) -> Result<()> {
        let ev = match event.kind {
            EventKind::Breakpoint { gla, .. } => StopEvent::Breakpoint {
                vcpu: event.vcpu,
                rip: gla.0,
            },
            EventKind::Singlestep { gla, .. } => StopEvent::Singlestep {
                vcpu: event.vcpu,
                rip: gla.0,
            },
            _ => StopEvent::Watch {
                vcpu: event.vcpu,
                kind: WatchKind::Access,
                addr: 0,
            },
        };
        check(&ev, response)
    }
}

fn check(ev: &StopEvent, r: &Response) -> Result<()> {
    match &r.action {
        Action::Continue => {}
        Action::Reinject if matches!(ev, StopEvent::Breakpoint { .. }) => {
            return Err(Error::unsupported(
                "breakpoint reinjection",
                "gdbstub breakpoints are not guest INT3s: under TCG there is no #BP to \
                 deliver, and QEMU's gdbstub cannot inject exceptions",
            ))
        }
        other => {
            return Err(Error::unsupported(
                format!("response action {other:?}"),
                "QEMU's gdbstub can only continue (no emulation, deny, retry or reinjection)",
            ))
        }
    }
    if r.switch_view.is_some() {
        return Err(Error::unsupported(
            "view switching",
            "unpatched QEMU has no SLAT views",
        ));
    }
    if r.get_next_interrupt {
        return Err(Error::unsupported(
            "next-interrupt reporting",
            "QEMU's gdbstub does not report interrupt delivery",
        ));
    }
    if r.set_value.is_some() {
        return Err(Error::unsupported(
            "register value override",
            "register events do not exist through the gdbstub",
        ));
    }
    if let Some(regs) = &r.set_registers {
        check_writable(regs)?;
    }
    Ok(())
}

fn unsupported_monitor_reason(m: &Monitor) -> &'static str {
    match m {
        Monitor::ControlRegister { .. } => "QEMU's gdbstub has no CR-write trap",
        Monitor::Msr { .. } | Monitor::AllMsrs { .. } => "QEMU's gdbstub has no MSR trap",
        Monitor::Interrupt(_) => {
            "QEMU's gdbstub reports only its own breakpoints, not guest interrupts"
        }
        Monitor::Xsetbv | Monitor::Cpuid | Monitor::Hypercall | Monitor::Descriptor => {
            "QEMU's gdbstub has no instruction traps (KVMi only)"
        }
        Monitor::DebugException => "guest #DB exceptions are not reported by the gdbstub",
        Monitor::Trap | Monitor::VcpuCreate => "KVMi only",
        _ => "not available through QEMU's gdbstub",
    }
}

impl Drop for GdbSession {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// The capability report of the gdbstub paths (with the QMP/RAM paths of
/// [`crate::LegacyQemu`] for memory).
pub(crate) fn gdb_capabilities(name: &'static str) -> CapabilityReport {
    use Capability as C;
    let mut r = CapabilityReport::new(name, "KVMi only: unpatched QEMU has no such interface");
    r.supported(&[
        C::ReadPhysicalMemory,
        C::WritePhysicalMemory,
        C::ReadGprs,
        C::ReadControlRegisters,
        C::ReadMsrs,
        C::WriteGprs,
        C::WriteControlRegisters,
        C::PauseResume,
        C::EventSinglestep,
        C::EventInterruptInt3,
        C::EventInterruptInsnLength,
        C::EventInterruptGla,
        C::EventInterruptGfn,
        C::EventInterruptOffset,
        C::EventMemGfn,
        C::EventMemOutAccess,
        C::EventMemGla,
        C::EventMemGlaValid,
        C::EventMemOffset,
        C::EventMemGptw,
        C::ResponseNone,
        C::ResponseToggleSinglestep,
        C::ResponseSetRegisters,
        C::VcpuCount,
    ]);
    r.set(
        C::ReadMsrs,
        Support::Supported, // EFER, FS/GS/KERNEL_GS_BASE only
    );
    r.set(
        C::WriteMsrs,
        Support::no("only EFER, FS_BASE, GS_BASE, KERNEL_GS_BASE (through the gdbstub)"),
    );
    r.unsupported(
        &[C::ReadDebugRegisters, C::WriteDebugRegisters],
        "QEMU's gdbstub has no debug registers (LegacyQemu reads them from info registers)",
    );
    r.unsupported(
        &[C::ReadSegmentRegisters, C::ReadDescriptorTables],
        "the gdbstub has selectors only; LegacyQemu adds them from info registers",
    );
    r.unsupported(
        &[C::WriteSegmentRegisters, C::WriteDescriptorTables],
        "QEMU's gdbstub cannot write segment caches or GDTR/IDTR",
    );
    r.unsupported(
        &[C::MemorySize, C::GuestMemoryMapping],
        "needs QMP (LegacyQemu)",
    );
    r.unsupported(
        &[
            C::EventRegisterCr,
            C::EventRegisterEqual,
            C::EventRegisterAsync,
            C::EventRegisterOnchange,
            C::EventRegisterAccessN,
            C::EventRegisterAccessW,
            C::EventRegisterAccessR,
            C::EventRegisterAccessRw,
            C::EventRegisterOutAccess,
            C::EventRegisterValue,
            C::EventRegisterPrevious,
        ],
        "QEMU's gdbstub has no CR-write trap",
    );
    r.unsupported(
        &[
            C::EventRegisterMsr,
            C::EventRegisterMsrAll,
            C::EventRegisterMsrIndex,
        ],
        "QEMU's gdbstub has no MSR trap",
    );
    r.unsupported(
        &[
            C::EventInterruptNext,
            C::EventInterruptVector,
            C::EventInterruptType,
            C::EventInterruptErrorCode,
            C::EventInterruptCr2,
            C::ResponseGetNextInterrupt,
        ],
        "QEMU's gdbstub does not report guest interrupt delivery",
    );
    r.unsupported(
        &[C::EventInterruptReinject, C::ResponseBreakpointReinject],
        "gdbstub breakpoints are not guest INT3s; QEMU's gdbstub cannot inject #BP",
    );
    r.unsupported(
        &[C::EventMemGeneric, C::EventMemInAccess],
        "memory events come from gdbstub watchpoints on guest-virtual ranges (≤ 8 bytes), not page permissions",
    );
    r.unsupported(
        &[
            C::ResponseEmulate,
            C::ResponseEmulateNowrite,
            C::ResponseSetEmulReadData,
            C::ResponseSetEmulInsn,
            C::ResponseDeny,
        ],
        "QEMU's gdbstub cannot emulate or deny instructions",
    );
    r.unsupported(
        &[C::ResponseSlatId, C::ResponseVmmPagetableId, C::Slat],
        "unpatched QEMU has no SLAT views",
    );
    r.unsupported(
        &[
            C::EventCpuid,
            C::EventPrivcall,
            C::EventDescriptorInstrInfo,
            C::EventDescriptorExitQualification,
            C::EventDescriptorExitInfo,
            C::EventDescriptorDescriptor,
            C::EventDescriptorIsWrite,
            C::EventXsetbv,
        ],
        "QEMU's gdbstub has no instruction traps (KVMi only)",
    );
    r.unsupported(
        &[C::EventDebugException],
        "guest #DB exceptions are not reported by the gdbstub",
    );
    r
}

impl Backend for GdbSession {
    fn name(&self) -> Cow<'_, str> {
        "legacy (QEMU gdbstub)".into()
    }

    fn capabilities(&self) -> CapabilityReport {
        gdb_capabilities("legacy (QEMU gdbstub)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GdbSession>();
    }

    #[test]
    fn watch_kinds() {
        assert_eq!(
            watch_for(Gva(8), 8, Access::W).unwrap().kind(),
            WatchKind::Write
        );
        assert_eq!(
            watch_for(Gva(8), 4, Access::R).unwrap().kind(),
            WatchKind::Read
        );
        assert_eq!(
            watch_for(Gva(8), 1, Access::RW).unwrap().kind(),
            WatchKind::Access
        );
        assert!(watch_for(Gva(8), 0, Access::W).is_err());
        assert!(watch_for(Gva(8), 4, Access::X).is_err());
    }

    #[test]
    fn responses_checked() {
        let bp = StopEvent::Breakpoint {
            vcpu: VcpuId(0),
            rip: 1,
        };
        assert!(check(&bp, &Response::continue_()).is_ok());
        assert!(check(&bp, &Response::continue_().toggle_singlestep()).is_ok());
        assert!(matches!(
            check(&bp, &Response::reinject()),
            Err(Error::Unsupported { .. })
        ));
        assert!(check(&bp, &Response::deny()).is_err());
        let regs = RegisterSnapshot {
            gdtr: Some(Default::default()),
            ..Default::default()
        };
        assert!(check(&bp, &Response::continue_().with_registers(regs)).is_err());
    }

    #[test]
    fn every_capability_answered() {
        let r = gdb_capabilities("t");
        assert_eq!(r.rows().count(), Capability::ALL.len());
        for (c, s) in r.rows() {
            if let Support::Unsupported(why) = s {
                assert!(!why.is_empty(), "{c}");
            }
        }
        assert!(r.is_supported(Capability::EventInterruptInt3));
    }
}
