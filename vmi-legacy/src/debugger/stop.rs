//! The stop state machine: whether the VM runs, stopping and resuming it, classifying
//! stop replies into [`StopEvent`]s, stepping over breakpoints and single-stepping.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use vmi_core::paging::{translate, PagingMode};
use vmi_core::{Error, Gpa, Gva, PhysicalMemory, Result, VcpuId, VcpuSet};

use super::events::{StopEvent, Watch};
use super::skip::{nop_length, EFER_LMA, RFLAGS_TF};
use crate::gdb::codec::StopReason;
use crate::gdb::{BreakpointKind, GdbClient};

/// How long the teardown against an unresponsive (frozen) stub waits in the background
/// for QEMU to wake up before giving up and closing the connection.
pub(super) const DEFERRED_TEARDOWN_MAX: std::time::Duration = std::time::Duration::from_secs(600);

/// SIGTRAP: breakpoints, watchpoints and steps.
const SIGTRAP: u8 = 5;
/// SIGABRT: QEMU reports the run state `internal-error` (e.g. a KVM emulation failure).
const SIGABRT: u8 = 6;

/// The page-table root in CR3: without the PCID (11:0) and no-flush (63) bits.
pub(super) const CR3_ROOT_MASK: u64 = 0x000f_ffff_ffff_f000;

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) client: GdbClient,
    pub(super) running: bool,
    pub(super) vcpus: u32,
    /// Breakpoint addresses, each with the address spaces (CR3 page-table roots) its
    /// hits are reported in; `None` among them: every address space.
    pub(super) breakpoints: BTreeMap<u64, BTreeSet<Option<u64>>>,
    pub(super) watches: BTreeSet<Watch>,
    pub(super) int3: bool,
    pub(super) accelerator: super::Accelerator,
    pub(super) sstep_mask: u64,
    pub(super) singlestep: VcpuSet,
    /// Stops seen (e.g. while interrupting) and not yet handed out.
    pub(super) queued: VecDeque<StopEvent>,
    /// The event awaiting its reply: (id, event).
    pub(super) outstanding: Option<(u64, StopEvent)>,
    pub(super) next_id: u64,
    pub(super) next_step_vcpu: u32,
    pub(super) regnums: BTreeMap<String, (usize, usize)>,
    /// `D` was sent: the stub is no longer ours.
    pub(super) client_detached: bool,
    /// Someone else had stopped the guest (QMP `stop`, `-S`) when the session attached:
    /// the session never lets it run (`c`) and does not detach with `D`, which would.
    pub(super) keep_stopped: bool,
    /// A faster path to guest RAM than the stub's `m` packets (shared RAM), for page
    /// walks and instruction bytes: [`super::GdbSession::use_memory`].
    pub(super) fast_memory: Option<FastMemory>,
}

/// Guest RAM read without the stub.
#[derive(Clone)]
pub(super) struct FastMemory(pub(super) Arc<dyn PhysicalMemory + Send + Sync>);

impl std::fmt::Debug for FastMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FastMemory")
    }
}

impl Inner {
    pub(super) fn thread(&self, vcpu: VcpuId) -> Result<u64> {
        if u32::from(vcpu.raw()) >= self.vcpus {
            return Err(Error::NoSuchVcpu {
                vcpu,
                count: self.vcpus,
            });
        }
        Ok(u64::from(vcpu.raw()) + 1)
    }

    pub(super) fn resume(&mut self) -> Result<()> {
        if !self.running && !self.keep_stopped && !self.client_detached {
            self.client.resume()?;
            self.running = true;
        }
        Ok(())
    }

    /// Stops a running VM; a stop that is not our interrupt is queued as an event.
    pub(super) fn stop(&mut self) -> Result<()> {
        if self.client_detached {
            // An interrupt now would stop a guest that is no longer ours to resume.
            return Err(Error::Disconnected {
                reason: "the gdbstub session was detached".into(),
            });
        }
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

    /// RIP of `vcpu`, from its `g` packet (read once per stop: see
    /// [`GdbClient::thread_registers`]).
    pub(super) fn rip(&mut self, vcpu: VcpuId) -> Result<u64> {
        self.g_value(vcpu, "rip")
    }

    /// One register of `vcpu`'s `g` packet by its target-XML name. Always from `g`
    /// (cached for the stop): under KVM QEMU's `p` answers from its copy of the vCPU
    /// state without fetching it from KVM (stale: measured `rip` 0x18 at a
    /// breakpoint), while `g` synchronises it first.
    pub(super) fn g_value(&mut self, vcpu: VcpuId, name: &str) -> Result<u64> {
        let t = self.thread(vcpu)?;
        let raw = self.client.thread_registers(t)?;
        let desc = self
            .client
            .register(name)
            .ok_or_else(|| Error::malformed("gdbstub", format!("no {name} in the g packet")))?;
        let n = desc.bitsize.div_ceil(8).min(8);
        let bytes = raw
            .get(desc.offset..desc.offset + n)
            .ok_or_else(|| Error::malformed("gdbstub", format!("g packet without {name}")))?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(bytes);
        Ok(u64::from_le_bytes(v))
    }
    /// Turns a stop reply into an event, or `None` for a stop that is not one (our own
    /// interrupt, a breakpoint hit without the INT3 monitor — stepped over here).
    pub(super) fn classify(
        &mut self,
        stop: &StopReason,
        stepping: bool,
    ) -> Result<Option<StopEvent>> {
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
        if *signal == SIGABRT {
            return Err(Error::Disconnected {
                reason: "the VM stopped in QEMU's internal-error state (SIGABRT from the \
                         gdbstub; under KVM typically an emulation failure: see QEMU's stderr)"
                    .into(),
            });
        }
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
        if self.breakpoints.contains_key(&rip) {
            if self.int3 && self.in_breakpoint_space(vcpu, rip)? {
                return Ok(Some(StopEvent::Breakpoint { vcpu, rip }));
            }
            if !stepping {
                // Not monitored, or another address space: get past it silently.
                if let Some(ev) = self.pass_breakpoint(vcpu, rip)? {
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

    /// Gets `vcpu` past the breakpoint at `rip`: by moving RIP past the instruction where
    /// that is all it would do (see `skip`), else by [`Self::step_over`]. Returns the
    /// event the step produced, if any.
    pub(super) fn pass_breakpoint(&mut self, vcpu: VcpuId, rip: u64) -> Result<Option<StopEvent>> {
        if let Some(len) = self.skippable(vcpu, rip)? {
            let (num, size) = *self
                .regnums
                .get("rip")
                .ok_or_else(|| Error::malformed("gdbstub", "no rip in the target XML"))?;
            let t = self.thread(vcpu)?;
            self.client.select_register_thread(t)?;
            let next = rip.wrapping_add(len).to_le_bytes();
            self.client.write_register(num, &next[..size.min(8)])?;
            return Ok(None);
        }
        self.step_over(vcpu, rip)
    }

    /// The length of the instruction at `rip` if executing it would only advance RIP
    /// and nothing asks for the step itself (see `skip` for the conditions).
    fn skippable(&mut self, vcpu: VcpuId, rip: u64) -> Result<Option<u64>> {
        let Some(FastMemory(mem)) = self.fast_memory.clone() else {
            return Ok(None);
        };
        if self.singlestep.contains(vcpu) || rip <= u64::from(u32::MAX) {
            return Ok(None);
        }
        let efer = self.g_value(vcpu, "efer")?;
        let rflags = self.g_value(vcpu, "eflags")?;
        if efer & EFER_LMA == 0 || rflags & RFLAGS_TF != 0 {
            return Ok(None);
        }
        let (cr0, cr3, cr4) = (
            self.g_value(vcpu, "cr0")?,
            self.g_value(vcpu, "cr3")?,
            self.g_value(vcpu, "cr4")?,
        );
        let mode = PagingMode::from_registers(cr0, cr4, efer);
        let Ok(t) = translate(&*mem, mode, Gpa(cr3), Gva(rip)) else {
            return Ok(None);
        };
        // Up to the longest accepted NOP, within the page (a NOP crossing into the next
        // page is stepped).
        let mut code = [0u8; 15];
        let n = code.len().min((0x1000 - (rip & 0xfff)) as usize);
        if mem.read_physical(t.gpa, &mut code[..n]).is_err() {
            return Ok(None);
        }
        Ok(nop_length(&code[..n]))
    }

    /// Removes the breakpoint at `rip`, single-steps `vcpu`, reinserts it. Returns the
    /// event the step produced, if any (a watchpoint, or a step while single-stepping is
    /// on for `vcpu`).
    pub(super) fn step_over(&mut self, vcpu: VcpuId, rip: u64) -> Result<Option<StopEvent>> {
        let t = self.thread(vcpu)?;
        let had = self.breakpoints.contains_key(&rip);
        if had {
            let kind = self.accelerator.breakpoint_kind();
            self.client.remove_breakpoint(kind, rip, 1)?;
        }
        let stop = self.client.step_thread(t);
        if had {
            let kind = self.accelerator.breakpoint_kind();
            self.client.insert_breakpoint(kind, rip, 1)?;
        }
        let stop = stop?;
        let stepping = self.singlestep.contains(vcpu);
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

    /// Whether a hit of the breakpoint at `rip` on `vcpu` is in one of the address
    /// spaces it was set for.
    fn in_breakpoint_space(&mut self, vcpu: VcpuId, rip: u64) -> Result<bool> {
        let Some(spaces) = self.breakpoints.get(&rip) else {
            return Ok(false);
        };
        if spaces.contains(&None) {
            return Ok(true);
        }
        let spaces = spaces.clone();
        let cr3 = self.g_value(vcpu, "cr3")? & CR3_ROOT_MASK;
        Ok(spaces.contains(&Some(cr3)))
    }

    /// One single step of the next vCPU that has single-stepping on.
    pub(super) fn step_next(&mut self) -> Result<Option<StopEvent>> {
        let n = self.vcpus.max(1);
        let v = (0..n)
            .map(|i| (self.next_step_vcpu + i) % n)
            .find(|v| self.singlestep.contains(VcpuId(*v as u16)))
            .unwrap_or(0);
        self.next_step_vcpu = (v + 1) % n;
        let vcpu = VcpuId(v as u16);
        let rip = self.rip(vcpu)?;
        if self.breakpoints.contains_key(&rip) {
            return self.step_over(vcpu, rip);
        }
        let stop = self.client.step_thread(u64::from(v) + 1)?;
        self.classify(&stop, true)
    }
}

impl Inner {
    /// Inserts a breakpoint or watchpoint; under KVM a refusal means the 4 debug
    /// registers are taken, said so in the error.
    pub(super) fn insert(&mut self, kind: BreakpointKind, addr: u64, len: u64) -> Result<()> {
        match self.client.insert_breakpoint(kind, addr, len) {
            Err(Error::Backend { source, .. }) if self.accelerator == super::Accelerator::Kvm => {
                Err(Error::unsupported(
                    format!("{kind:?} at {addr:#x} under KVM"),
                    format!(
                        "QEMU refused it ({source}): under KVM breakpoints and watchpoints \
                         share the vCPU's 4 debug registers ({} breakpoints and {} \
                         watchpoints are set), watchpoints must be 1, 2, 4 or 8 bytes \
                         aligned to their length, and software breakpoints are not used \
                         (see vmi_legacy::Accelerator::Kvm)",
                        self.breakpoints.len(),
                        self.watches.len()
                    ),
                ))
            }
            r => r,
        }
    }

    /// Removes every breakpoint and watchpoint, turns single-stepping off, leaves
    /// virtual addressing on and detaches (QEMU resumes the guest) — or, when someone
    /// else had stopped the guest before we attached, closes without `D` so it stays
    /// stopped. A second call does nothing.
    ///
    /// Every step is tried; the first failure is reported. Once a step times out the
    /// stub is taken as unresponsive (a frozen QEMU): the teardown returns after that
    /// one timeout, and a background thread on the same connection finishes it when
    /// QEMU wakes up (within [`DEFERRED_TEARDOWN_MAX`]): it waits for the answer to what
    /// was already sent (an interrupt byte's stop reply), then removes the breakpoints
    /// and detaches, one answered packet at a time. Queuing those packets blindly would
    /// not do: QEMU handles the whole queue in one go, and a breakpoint hit the guest
    /// made meanwhile then stops it again after the detach. If the stub refuses the
    /// detach, the guest is resumed with `c` and the error returned.
    pub(super) fn detach(&mut self) -> Result<()> {
        if self.client_detached {
            return Ok(());
        }
        let mut first_err: Option<Error> = None;
        // A step timed out: the stub no longer answers.
        let mut frozen = false;
        if self.running {
            if let Err(e) = self.stop() {
                frozen = matches!(e, Error::Timeout { .. });
                first_err.get_or_insert(e);
            }
        }
        let mut packets: VecDeque<Vec<u8>> = VecDeque::new();
        for bp in std::mem::take(&mut self.breakpoints).into_keys() {
            let z = self.accelerator.breakpoint_kind().z_type();
            packets.push_back(format!("z{z},{bp:x},1").into_bytes());
        }
        for w in std::mem::take(&mut self.watches) {
            let z = BreakpointKind::Watch(w.kind()).z_type();
            packets.push_back(format!("z{z},{:x},{:x}", w.gva, w.len).into_bytes());
        }
        // Connect and every physical access switch it off already; this covers an
        // access cut short by an error.
        packets.push_back(b"Qqemu.PhyMemMode:0".to_vec());
        self.singlestep = VcpuSet::new();
        self.int3 = false;
        self.outstanding = None;
        self.queued.clear();
        self.client_detached = true;
        let detach = !self.keep_stopped;
        self.running = detach;
        while !frozen {
            let Some(p) = packets.pop_front() else { break };
            if let Err(e) = self.client.command_ok(&p) {
                if matches!(e, Error::Timeout { .. }) {
                    // Sent but unanswered: QEMU may have taken it in while the guest
                    // ran (and so dropped it); the background teardown sends it again.
                    frozen = true;
                    packets.push_front(p);
                }
                first_err.get_or_insert(e);
            }
        }
        if frozen {
            if let Err(e) = self.finish_later(packets, detach) {
                first_err = Some(e);
            }
            return first_err.map_or(Ok(()), Err);
        }
        if detach {
            match self.client.detach() {
                Ok(()) => {}
                Err(e @ Error::Timeout { .. }) => {
                    // Sent: keep the connection open until QEMU has answered it.
                    let _ = self.finish_later(VecDeque::new(), false);
                    first_err.get_or_insert(e);
                }
                Err(e) => {
                    // Refused: never leave the guest stopped silently.
                    let _ = self.client.resume();
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// The teardown against a stub that stopped answering, in a background thread on a
    /// duplicate of the connection: once the stub answers again (within
    /// [`DEFERRED_TEARDOWN_MAX`]) and has said what it had to say, sends `packets`
    /// (answers ignored) and, with `detach`, detaches (resuming with `c` if refused).
    fn finish_later(&self, packets: VecDeque<Vec<u8>>, detach: bool) -> Result<()> {
        let Some(mut client) = self.client.duplicate() else {
            return Err(Error::unsupported(
                "deferred gdbstub teardown",
                "the connection cannot be duplicated",
            ));
        };
        std::thread::Builder::new()
            .name("vmi-gdb-teardown".into())
            .spawn(move || {
                if !client.await_answer(DEFERRED_TEARDOWN_MAX) {
                    return;
                }
                for p in &packets {
                    let _ = client.command_ok(p);
                }
                if detach && client.detach().is_err() {
                    let _ = client.resume();
                }
            })
            .map(drop)
            .map_err(|e| Error::io("starting the deferred gdbstub teardown", e))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use vmi_core::{Breakpoint, Breakpoints, Error, Gva};

    use super::super::GdbSession;
    use crate::gdb::codec::encode_packet;
    use crate::gdb::GdbClient;

    /// What the scripted stub saw, in order: packets, `^C` for an interrupt byte, and
    /// `WOKE` where it came back from a freeze.
    type Log = Arc<Mutex<Vec<String>>>;

    /// A gdbstub over a real socket that answers like QEMU (`c` runs, the interrupt
    /// byte stops with `T02`), except that it freezes for `freeze` at its second
    /// interrupt — a SIGSTOPped QEMU — and then works through what was queued.
    fn freezing_stub(freeze: Duration) -> (UnixStream, Log, std::thread::JoinHandle<()>) {
        let (a, mut b) = UnixStream::pair().unwrap();
        let log: Log = Arc::default();
        let seen = Arc::clone(&log);
        let h = std::thread::spawn(move || {
            let mut pending: Vec<u8> = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut interrupts = 0;
            loop {
                // Interrupt bytes and packets, in the order they arrive.
                while let Some(&c) = pending.first() {
                    if c == 0x03 {
                        pending.remove(0);
                        interrupts += 1;
                        seen.lock().unwrap().push("^C".into());
                        if interrupts == 2 {
                            std::thread::sleep(freeze);
                            seen.lock().unwrap().push("WOKE".into());
                        }
                        if b.write_all(&encode_packet(b"T02thread:01;")).is_err() {
                            return;
                        }
                        continue;
                    }
                    if c != b'$' {
                        pending.remove(0); // acks
                        continue;
                    }
                    let Some(end) = pending.iter().position(|&x| x == b'#') else {
                        break;
                    };
                    if pending.len() < end + 3 {
                        break;
                    }
                    let p = String::from_utf8_lossy(&pending[1..end]).into_owned();
                    pending.drain(..end + 3);
                    seen.lock().unwrap().push(p.clone());
                    let reply: Option<&[u8]> = match p.as_str() {
                        s if s.starts_with("qSupported") => {
                            Some(b"PacketSize=1000;qXfer:features:read+")
                        }
                        "?" => Some(b"S05"),
                        s if s.starts_with("qXfer:features:read:target.xml:") => {
                            Some(br#"l<target><reg name="rip" bitsize="64"/></target>"#)
                        }
                        "qfThreadInfo" => Some(b"m01"),
                        "qsThreadInfo" => Some(b"l"),
                        "c" => None,
                        _ => Some(b"OK"),
                    };
                    if b.write_all(b"+").is_err() {
                        return;
                    }
                    if let Some(r) = reply {
                        if b.write_all(&encode_packet(r)).is_err() {
                            return;
                        }
                    }
                }
                match b.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&chunk[..n]),
                }
            }
        });
        (a, log, h)
    }

    #[test]
    fn teardown_of_a_frozen_stub_costs_one_timeout_and_finishes_in_order_after_it_wakes() {
        let timeout = Duration::from_millis(300);
        let (s, log, h) = freezing_stub(Duration::from_secs(1));
        let session = GdbSession::new(GdbClient::new(Box::new(s), timeout).unwrap()).unwrap();
        // The scripted stub's monitor answers nothing useful to `info kvm`, which the
        // session takes as KVM (hardware breakpoints); the removal follows that kind.
        let z = session.accelerator().breakpoint_kind().z_type();
        session.set_breakpoint(Breakpoint::at(Gva(0x1000))).unwrap();
        let started = Instant::now();
        let r = session.detach();
        let took = started.elapsed();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        assert!(took < Duration::from_millis(900), "teardown took {took:?}");
        // A second detach (and the drop) send nothing.
        session.detach().unwrap();
        drop(session);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.lock().unwrap().iter().any(|p| p == "D") {
            assert!(
                Instant::now() < deadline,
                "no detach: {:?}",
                log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = log.lock().unwrap().clone();
        let woke = log.iter().position(|p| p == "WOKE").unwrap();
        // Nothing was sent between the interrupt and the freeze's end, and afterwards the
        // removal, the addressing mode and the detach came in that order, once each.
        assert_eq!(&log[woke - 1], "^C", "{log:?}");
        let removal = format!("z{z},1000,1");
        assert_eq!(
            &log[woke + 1..],
            &[removal.as_str(), "Qqemu.PhyMemMode:0", "D"],
            "{log:?}"
        );
        drop(h); // the stub ends when the background teardown closes the connection
    }
}
