//! Software breakpoints set by the tool: `0xCC` written at the guest-physical address
//! (a [`Breakpoint::Virtual`] is translated with vCPU 0's paging mode and the given
//! CR3, or vCPU 0's own), the original byte kept, `BREAKPOINT` events enabled; bytes
//! restored at clear and at teardown.
//!
//! A hit answered with [`vmi_core::Response::continue_`] must not deliver #BP to the
//! guest (the INT3 is ours, not the guest's), so the reply is `RETRY`. To let the
//! guest execute the instruction under the breakpoint, on kvmi-v7 with singlestep the
//! backend steps over it: it restores the original byte, arms singlestep on that vCPU
//! and answers `RETRY`; the internal `SINGLESTEP` event that follows puts `0xCC` back
//! and disarms singlestep (unless the tool armed it itself, in which case the tool sees
//! that step). Meanwhile another vCPU may run past the restored byte without a hit (as
//! with LibVMI's breakpoint-recoil). Without singlestep (kvmi-v6), `RETRY` re-executes
//! the INT3: the tool must clear the breakpoint or move RIP.
//! [`vmi_core::Response::reinject`] delivers #BP (`CONTINUE`).
//!
//! A breakpoint limited to one address space ([`Breakpoint::in_space`]) is still one
//! byte in guest-physical memory, so every space mapping that byte hits it. A hit whose
//! vCPU CR3 (bits 51:12, i.e. without PCID and flag bits) is none of the spaces the
//! breakpoints at that byte are for is not shown to the tool: on kvmi-v7 it is stepped
//! over internally exactly like a hit the tool answered with continue (`RETRY` plus the
//! internal singlestep), and the next hit in a wanted space arrives as usual. On
//! kvmi-v6 there is no singlestep to step over it, and `RETRY` would re-execute the
//! INT3 forever in that space: such hits are shown to the tool (the capability table
//! marks space-limited breakpoints as partial there), whose event carries the CR3 to
//! tell.

use kvmi_proto::sys;
use std::collections::BTreeMap;

use kvmi_proto::{Batch, Event as KEvent, Request};
use vmi_core::{
    Breakpoint, Breakpoints, Error, EventControl, Gpa, Monitor, PagingMode, PhysicalMemory,
    PhysicalMemoryWrite, ReadRegisters, RegisterGroups, Result, VcpuId,
};

use crate::events::{command_events, control_singlestep, Command};
use crate::session::{KvmiVm, Shared};

const INT3: u8 = 0xcc;

/// The page-table root a CR3 value names: bits 51:12 (no PCID, PWT/PCD or bit 63).
pub(crate) fn cr3_root(cr3: u64) -> u64 {
    cr3 & 0x000f_ffff_ffff_f000
}

/// The session's breakpoints (owned by this module).
#[derive(Default)]
pub(crate) struct BreakpointState {
    /// gpa → the tool's breakpoints there (several when addresses of different
    /// spaces share the byte) and the original byte.
    pub(crate) bytes: BTreeMap<u64, (Vec<Breakpoint>, u8)>,
    /// Steps over one of our breakpoints in progress, by vCPU.
    pub(crate) step_over: BTreeMap<u16, StepOver>,
}

/// Whether `ev` is a hit on one of our bytes in an address space none of the
/// breakpoints there is for, and can be stepped over internally (kvmi-v7 singlestep).
pub(crate) fn foreign_space(sh: &Shared, ev: &KEvent) -> bool {
    let kvmi_proto::EventKind::Breakpoint(b) = ev.kind else {
        return false;
    };
    if !sh.facts.singlestep() {
        return false;
    }
    let state = sh.breakpoints();
    let Some((bps, _)) = state.bytes.get(&b.gpa) else {
        return false;
    };
    let here = cr3_root(ev.common.arch.sregs.cr3);
    !bps.iter().any(|bp| match bp {
        Breakpoint::Physical(_) | Breakpoint::Virtual { cr3: None, .. } => true,
        Breakpoint::Virtual { cr3: Some(c), .. } => cr3_root(c.0) == here,
    })
}

/// Answers a hit [`foreign_space`] found, as a continue from the tool would be: the
/// step over is armed and the event answered with `RETRY`, in one batch.
pub(crate) fn step_over_foreign(sh: &Shared, ev: KEvent) {
    let gpa = match ev.kind {
        kvmi_proto::EventKind::Breakpoint(b) => b.gpa,
        _ => return, // dropped: default reply
    };
    // No plan (the breakpoint was cleared meanwhile, the byte is back): RETRY runs
    // the original instruction.
    let cmds = step_over_plan(sh, ev.vcpu(), gpa).unwrap_or_default();
    let mut batch = Batch::new(&sh.conn);
    for c in cmds {
        let _ = batch.push(c);
    }
    let _ = batch.reply(ev, kvmi_proto::Reply::breakpoint(false));
    let _ = batch.commit(sh.reply_timeout());
}

/// A step over one of our breakpoints in progress on a vCPU.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StepOver {
    gpa: u64,
    /// The tool has the SINGLESTEP event enabled on this vCPU.
    tool_event: bool,
    /// The tool armed singlestep on this vCPU.
    tool_armed: bool,
}

impl StepOver {
    pub(crate) fn tool_armed(self) -> bool {
        self.tool_armed
    }

    pub(crate) fn tool_event(self) -> bool {
        self.tool_event
    }
}

fn write_byte(gpa: u64, byte: u8) -> Option<Command> {
    // One byte is always within one page: only a gpa kvmi-proto refuses fails here.
    Request::write_physical(gpa, &[byte]).ok()
}

/// The commands that start a step over our breakpoint at `gpa` on `vcpu`, or `None`
/// when `gpa` is not ours or the host cannot singlestep.
pub(crate) fn step_over_plan(sh: &Shared, vcpu: u16, gpa: u64) -> Option<Vec<Command>> {
    if !sh.facts.singlestep() || u32::from(vcpu) >= sh.vcpu_count {
        return None;
    }
    let (tool_event, tool_armed) = {
        let m = sh.monitors();
        (
            m.vcpu_events
                .contains_key(&(vcpu, sys::KVMI_EVENT_SINGLESTEP)),
            m.singlestep.contains(&vcpu),
        )
    };
    let mut state = sh.breakpoints();
    let orig = state.bytes.get(&gpa)?.1;
    state.step_over.insert(
        vcpu,
        StepOver {
            gpa,
            tool_event,
            tool_armed,
        },
    );
    drop(state);
    let mut cmds: Vec<Command> = write_byte(gpa, orig).into_iter().collect();
    if !tool_event {
        cmds.push(command_events(vcpu, sys::KVMI_EVENT_SINGLESTEP, true));
    }
    if !tool_armed {
        cmds.push(control_singlestep(vcpu, true));
    }
    Some(cmds)
}

/// Called by the inbox for a SINGLESTEP event: finishes a step over, if one is in
/// progress on the vCPU. Returns the event back when the tool should see it.
pub(crate) fn on_singlestep(sh: &Shared, ev: KEvent) -> Option<KEvent> {
    let vcpu = ev.vcpu();
    let (s, ours) = {
        let mut state = sh.breakpoints();
        let Some(s) = state.step_over.remove(&vcpu) else {
            return Some(ev);
        };
        let ours = state.bytes.contains_key(&s.gpa);
        (s, ours)
    };
    let mut cmds = Vec::new();
    if ours {
        cmds.extend(write_byte(s.gpa, INT3));
    }
    if !s.tool_armed {
        cmds.push(control_singlestep(vcpu, false));
    }
    if !s.tool_event {
        cmds.push(command_events(vcpu, sys::KVMI_EVENT_SINGLESTEP, false));
    }
    let forward = s.tool_armed && s.tool_event;
    let mut batch = Batch::new(&sh.conn);
    for c in cmds {
        let _ = batch.push(c);
    }
    if forward {
        // Commit first: the tool's event is handed out with the byte back in place.
        let _ = batch.commit(sh.reply_timeout());
        return Some(ev);
    }
    let _ = batch.reply(ev, kvmi_proto::Action::Continue);
    let _ = batch.commit(sh.reply_timeout());
    None
}

impl KvmiVm {
    fn resolve(&self, bp: Breakpoint) -> Result<u64> {
        match bp {
            Breakpoint::Physical(gpa) => Ok(gpa.0),
            Breakpoint::Virtual { gva, cr3 } => {
                let r = self.registers(
                    VcpuId(0),
                    RegisterGroups::CONTROL | RegisterGroups::EFER,
                    &[],
                )?;
                let (cr0, cr4, efer) = r.paging_inputs().ok_or_else(|| {
                    Error::unsupported("breakpoint translation", "vCPU 0's CR0/CR4/EFER unknown")
                })?;
                let mode = PagingMode::from_registers(cr0, cr4, efer);
                let cr3 = cr3.unwrap_or(Gpa(r.control.map_or(0, |c| c.cr3)));
                let tr = vmi_core::Translator::from(mode);
                let t = tr.translate(self, tr.root_base(cr3), gva)?;
                Ok(t.gpa.0)
            }
        }
    }
}

impl Breakpoints for KvmiVm {
    fn set_breakpoint(&self, bp: Breakpoint) -> Result<()> {
        self.parking
            .capabilities()
            .require(vmi_core::Capability::SoftwareBreakpoints)?;
        let gpa = self.resolve(bp)?;
        {
            let mut state = self.shared.breakpoints();
            if let Some((bps, _)) = state.bytes.get_mut(&gpa) {
                // The byte is ours already (maybe for another space): one more user.
                if !bps.contains(&bp) {
                    bps.push(bp);
                }
                return Ok(());
            }
        }
        self.enable(&Monitor::Interrupt(vmi_core::event::InterruptKind::Int3))?;
        let mut orig = [0u8; 1];
        let placed = self.read_physical(Gpa(gpa), &mut orig).and_then(|()| {
            self.shared
                .breakpoints()
                .bytes
                .insert(gpa, (vec![bp], orig[0]));
            self.write_physical(Gpa(gpa), &[INT3])
        });
        if placed.is_err() {
            self.shared.breakpoints().bytes.remove(&gpa);
            let _ = self.disable(&Monitor::Interrupt(vmi_core::event::InterruptKind::Int3));
        }
        placed
    }

    fn clear_breakpoint(&self, bp: Breakpoint) -> Result<()> {
        let orig = {
            let mut state = self.shared.breakpoints();
            let Some((&gpa, (bps, _))) = state
                .bytes
                .iter_mut()
                .find(|(_, (bps, _))| bps.contains(&bp))
            else {
                return Ok(());
            };
            bps.retain(|b| *b != bp);
            if !bps.is_empty() {
                return Ok(()); // another breakpoint still needs the byte
            }
            state.bytes.remove(&gpa).map(|(_, orig)| (gpa, orig))
        };
        let Some((gpa, orig)) = orig else {
            return Ok(());
        };
        let restored = self.write_physical(Gpa(gpa), &[orig]);
        let disabled = self.disable(&Monitor::Interrupt(vmi_core::event::InterruptKind::Int3));
        restored.and(disabled)
    }

    fn active_breakpoints(&self) -> Vec<Breakpoint> {
        let mut v: Vec<_> = self
            .shared
            .breakpoints()
            .bytes
            .values()
            .flat_map(|(bps, _)| bps.iter().copied())
            .collect();
        v.sort();
        v
    }
}
