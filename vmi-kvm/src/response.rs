//! A `vmi-core` [`Response`] → the kvmi reply for that event kind, plus the commands
//! that must precede it (set registers, toggle singlestep, switch view).
//!
//! Every action kvmi-v7 can express is mapped; anything else is refused by
//! `check` before anything is sent (the capability table refuses what the host
//! lacks, `check` what the event kind cannot take):
//!
//! | vmi-core | CR / MSR | breakpoint | memory access (PF) | others |
//! |---|---|---|---|---|
//! | `Continue` | CONTINUE, `new_val` = value (or `set_value`) | RETRY (no #BP for the guest) | CONTINUE (emulate) | CONTINUE |
//! | `Reinject` | – | CONTINUE (#BP delivered) | – | – |
//! | `Deny` | CONTINUE, `new_val` = old value | – | – | – |
//! | `Retry` | – | RETRY | RETRY | RETRY (descriptor) |
//! | `Emulate` | – | – | CONTINUE | – |
//! | `EmulateWithReadData` | – | – | CONTINUE + ctx data at the gla | – |

use kvmi_proto::{sys, Request};
use kvmi_proto::{Action as KAction, Event as KEvent, EventKind as KKind, PfReply, Reply};
use vmi_core::event::Action;
use vmi_core::{Error, Event, EventKind, Response, Result};

use crate::events::{control_singlestep, Command};
use crate::registers::writable;
use crate::session::Shared;

fn refuse(what: &'static str, why: &'static str) -> Error {
    Error::unsupported(what, why)
}

/// Whether `response` can answer `event` on this host (beyond the capability table).
pub(crate) fn check(sh: &Shared, event: &Event, response: &Response) -> Result<()> {
    let register = matches!(event.kind, EventKind::Register { .. });
    let breakpoint = matches!(event.kind, EventKind::Breakpoint { .. });
    let memory = matches!(event.kind, EventKind::MemoryAccess { .. });
    let descriptor = matches!(event.kind, EventKind::Descriptor { .. });
    match &response.action {
        Action::Continue => {}
        Action::Reinject if breakpoint => {}
        Action::Reinject => {
            return Err(refuse(
                "reinject",
                "only breakpoint events can reinject over KVMi (kvmi-protocol.md §4.3 id 4)",
            ))
        }
        Action::Deny if register => {}
        Action::Deny => {
            return Err(refuse(
                "deny",
                "only CR and MSR writes can be denied over KVMi (kvmi-protocol.md §4.3)",
            ))
        }
        Action::Retry if breakpoint || memory || descriptor => {}
        Action::Retry => {
            return Err(refuse(
                "retry",
                "KVMi accepts RETRY for breakpoint, PF and descriptor events only \
                 (kvmi-protocol.md §4.3)",
            ))
        }
        Action::Emulate | Action::EmulateWithReadData(_) if memory => {}
        Action::Emulate | Action::EmulateWithReadData(_) => {
            return Err(refuse(
                "emulation",
                "KVMi emulates only in answer to memory-access (PF) events (kvmi-protocol.md §6)",
            ))
        }
        _ => {
            return Err(refuse(
                "emulation variant",
                "the KVMi PF reply cannot discard writes or take instruction bytes \
                 (kvmi-protocol.md §6)",
            ))
        }
    }
    if response.set_value.is_some() && !register {
        return Err(refuse(
            "value override",
            "only CR and MSR events carry a value to override (kvmi-protocol.md §4.3)",
        ));
    }
    if let Some(regs) = &response.set_registers {
        writable(regs)?;
    }
    if let Some(v) = response.switch_view {
        if !sh.facts.ept_views() || v.0 >= sys::KVM_MAX_EPT_VIEWS {
            return Err(refuse(
                "view switch in a response",
                "needs kvmi-v7 EPT views and a view below KVM_MAX_EPT_VIEWS (kvmi-protocol.md §3 id 32)",
            ));
        }
    }
    if response.toggle_singlestep && !sh.facts.singlestep() {
        return Err(refuse(
            "toggle singlestep",
            "needs kvmi-v7 with MTF singlestep (kvmi-protocol.md §6, §7)",
        ));
    }
    Ok(())
}

/// The reply for `ev` and the commands to send before it.
pub(crate) fn build(
    sh: &Shared,
    ev: &KEvent,
    response: &Response,
) -> Result<(Reply, Vec<Command>)> {
    let mut commands = Vec::new();
    let vcpu = ev.vcpu();
    if let Some(regs) = &response.set_registers {
        if let Some(k) = writable(regs)? {
            commands.push(Request::set_registers(vcpu, &k));
        }
    }
    if let Some(view) = response.switch_view {
        commands.push(Request::set_ept_view(vcpu, view.0));
        sh.slat().switched.insert(vcpu);
    }
    if response.toggle_singlestep {
        let mut st = sh.monitors();
        let on = st.singlestep.contains(&vcpu);
        // Turning it on also delivers the steps: the SINGLESTEP event is enabled on the
        // vCPU if no monitor did (recorded, so the teardown disables it).
        let key = (vcpu, sys::KVMI_EVENT_SINGLESTEP);
        if !on && !st.vcpu_events.contains_key(&key) {
            st.vcpu_events.insert(key, 1);
            commands.push(crate::events::command_events(
                vcpu,
                sys::KVMI_EVENT_SINGLESTEP,
                true,
            ));
        }
        commands.push(control_singlestep(vcpu, !on));
    }
    let bad = || Error::InvalidReply {
        reason: format!("{:?} cannot answer this event", response.action).into(),
    };
    let reply = match (&ev.kind, &response.action) {
        (KKind::Cr(c), Action::Continue) => {
            Reply::with_new_value(KAction::Continue, response.set_value.unwrap_or(c.new_value))
        }
        (KKind::Cr(c), Action::Deny) => Reply::with_new_value(KAction::Continue, c.old_value),
        (KKind::Msr(m), Action::Continue) => {
            Reply::with_new_value(KAction::Continue, response.set_value.unwrap_or(m.new_value))
        }
        (KKind::Msr(m), Action::Deny) => Reply::with_new_value(KAction::Continue, m.old_value),
        (KKind::Breakpoint(b), Action::Continue) => {
            if let Some(step) = crate::breakpoints::step_over_plan(sh, vcpu, b.gpa) {
                commands.extend(step);
            }
            Reply::breakpoint(false)
        }
        (KKind::Breakpoint(_), Action::Retry) => Reply::breakpoint(false),
        (KKind::Breakpoint(_), Action::Reinject) => Reply::breakpoint(true),
        (KKind::Pf(_), Action::Continue | Action::Emulate) => ev.default_reply(),
        (KKind::Pf(_), Action::Retry) => Reply::new(KAction::Retry),
        (KKind::Pf(pf), Action::EmulateWithReadData(data)) => Reply::pf(
            KAction::Continue,
            &PfReply {
                ctx_addr: pf.gva,
                ctx_data: data.as_bytes(),
                ..PfReply::default()
            },
        )
        .map_err(|e| crate::error::proto("PF reply", e))?,
        (KKind::Descriptor(_), Action::Retry) => Reply::new(KAction::Retry),
        (_, Action::Continue) => Reply::new(KAction::Continue),
        _ => return Err(bad()),
    };
    Ok((reply, commands))
}

/// Book-keeping after the answer went out (singlestep state).
pub(crate) fn after_commit(sh: &Shared, vcpu: u16, response: &Response, sent: bool) {
    if sent && response.toggle_singlestep {
        let mut m = sh.monitors();
        if !m.singlestep.remove(&vcpu) {
            m.singlestep.insert(vcpu);
        }
    }
}
