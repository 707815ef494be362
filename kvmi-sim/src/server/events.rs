//! Events on the wire: building an event's payload, and checking and applying the
//! tool's reply as the kernel would.

use super::event_allowed;
use crate::model::{Injection, Vm};
use crate::{rd, Abi, Pending, PfReply, Shared, SimConfig, SimEvent, SimReply, State};
use kvmi_sys as sys;
use kvmi_sys::v6;
use zerocopy::IntoBytes;

/// Event payload (common struct + specific part) for `ev` on `vcpu`.
pub(crate) fn event_payload(cfg: &SimConfig, vm: &Vm, vcpu: usize, ev: &SimEvent) -> Vec<u8> {
    let v = &vm.vcpus[vcpu.min(vm.vcpus.len().saturating_sub(1))];
    let m = |i: u32| v.msrs.get(&i).copied().unwrap_or(0);
    use crate::model::msr;
    let msrs = sys::EventMsrs {
        sysenter_cs: m(msr::SYSENTER_CS),
        sysenter_esp: m(msr::SYSENTER_ESP),
        sysenter_eip: m(msr::SYSENTER_EIP),
        efer: m(msr::EFER),
        star: m(msr::STAR),
        lstar: m(msr::LSTAR),
        cstar: m(msr::CSTAR),
        pat: m(msr::PAT),
        shadow_gs: m(msr::KERNEL_GS_BASE),
    };
    let v7 = cfg.abi == Abi::V7;
    let mut out = if v7 {
        sys::Event {
            size: sys::EVENT_SIZE as u16,
            vcpu: vcpu as u16,
            event: ev.id(),
            padding: [0; 3],
            arch: sys::EventArch {
                mode: v.mode(),
                padding1: 0,
                view: v.view,
                padding2: 0,
                regs: v.regs,
                sregs: v.sregs,
                msrs,
            },
        }
        .as_bytes()
        .to_vec()
    } else {
        v6::Event {
            size: sys::EVENT_SIZE as u16,
            vcpu: vcpu as u16,
            event: ev.id(),
            padding: [0; 3],
            arch: v6::EventArch {
                mode: v.mode(),
                padding: [0; 7],
                regs: v.regs,
                sregs: v.sregs,
                msrs,
            },
        }
        .as_bytes()
        .to_vec()
    };
    match *ev {
        SimEvent::Cr { cr, old, new } => out.extend_from_slice(
            sys::EventCr {
                cr: cr as u16,
                padding: [0; 3],
                old_value: old,
                new_value: new,
            }
            .as_bytes(),
        ),
        SimEvent::Msr { msr, old, new } => out.extend_from_slice(
            sys::EventMsr {
                msr,
                padding: 0,
                old_value: old,
                new_value: new,
            }
            .as_bytes(),
        ),
        SimEvent::Breakpoint { gpa, insn_len } => out.extend_from_slice(
            sys::EventBreakpoint {
                gpa,
                insn_len,
                padding: [0; 7],
            }
            .as_bytes(),
        ),
        SimEvent::Pf { gva, gpa, access } => {
            if v7 {
                out.extend_from_slice(
                    sys::EventPf {
                        gva,
                        gpa,
                        access,
                        ..Default::default()
                    }
                    .as_bytes(),
                )
            } else {
                out.extend_from_slice(
                    v6::EventPf {
                        gva,
                        gpa,
                        access,
                        view: v.view,
                        ..Default::default()
                    }
                    .as_bytes(),
                )
            }
        }
        SimEvent::Trap {
            vector,
            error_code,
            cr2,
        } => {
            if v7 {
                out.extend_from_slice(
                    sys::EventTrap {
                        vector,
                        padding1: 0,
                        padding2: 0,
                        error_code,
                        cr2,
                    }
                    .as_bytes(),
                )
            } else {
                out.extend_from_slice(
                    v6::EventTrap {
                        vector: u32::from(vector),
                        type_: 3,
                        error_code,
                        padding: 0,
                        cr2,
                    }
                    .as_bytes(),
                )
            }
        }
        SimEvent::Descriptor { descriptor, write } => out.extend_from_slice(
            sys::EventDescriptor {
                descriptor,
                write: write.into(),
                padding: [0; 6],
            }
            .as_bytes(),
        ),
        SimEvent::Singlestep { failed } if v7 => out.extend_from_slice(
            sys::EventSingleStep {
                failed: failed.into(),
                padding: [0; 7],
            }
            .as_bytes(),
        ),
        SimEvent::Cpuid { leaf, subleaf } => out.extend_from_slice(
            sys::EventCpuid {
                function: leaf,
                index: subleaf,
                insn_length: 2,
                padding1: [0; 3],
                padding2: 0,
            }
            .as_bytes(),
        ),
        SimEvent::CmdError {
            err,
            msg_seq,
            msg_id,
        } => out.extend_from_slice(
            sys::EventCmdError {
                err,
                msg_seq,
                msg_id,
                padding: [0; 3],
            }
            .as_bytes(),
        ),
        _ => {}
    }
    out
}

pub(super) fn handle_event_reply(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, p: &[u8]) {
    let v7 = sh.cfg.abi == Abi::V7;
    if p.len() < sys::EVENT_REPLY_HEAD_SIZE {
        sh.close(st, "event reply shorter than 16 bytes");
        return;
    }
    let vh: sys::VcpuHdr = rd(p, 0);
    let er: sys::EventReply = rd(p, 8);
    let vcpu = usize::from(vh.vcpu);
    if vh.padding1 != 0 || vh.padding2 != 0 {
        sh.close(st, "non-zero vcpu_hdr padding in event reply");
        return;
    }
    let Some(Some(pending)) = st.pending.get(vcpu).cloned() else {
        sh.close(st, "event reply for a vCPU not waiting for one");
        return;
    };
    if pending.seq != hdr.seq {
        sh.close(st, "event reply seq mismatch");
        return;
    }
    if er.padding1 != 0 || er.padding2 != 0 {
        sh.close(st, "non-zero event reply padding");
        return;
    }
    let id = pending.event.id();
    let extra = &p[sys::EVENT_REPLY_HEAD_SIZE..];
    let max_extra = sys::event_reply_extra_size(id).unwrap_or(0);
    if extra.len() > max_extra {
        sh.close(st, "event reply data too long");
        return;
    }
    let mut r = SimReply {
        seq: hdr.seq,
        vcpu: vh.vcpu,
        event: id,
        action: Some(er.action),
        reply_event: er.event,
        new_val: None,
        pf: None,
        regs_applied: None,
        action_supported: true,
    };
    match pending.event {
        SimEvent::Cr { .. } | SimEvent::Msr { .. } => {
            let nv: u64 = rd(extra, 0);
            r.new_val = Some(nv);
        }
        SimEvent::Pf { .. } => {
            let (ctx_addr, ctx_size, pad, rep, ss) = if v7 {
                let pr: sys::EventPfReply = rd(extra, 0);
                (
                    pr.ctx_addr,
                    pr.ctx_size,
                    pr.padding1 != 0 || pr.padding2 != 0,
                    pr.rep_complete,
                    0,
                )
            } else {
                let pr: v6::EventPfReply = rd(extra, 0);
                (
                    pr.ctx_addr,
                    pr.ctx_size,
                    pr.padding != 0,
                    pr.rep_complete,
                    pr.singlestep,
                )
            };
            if pad {
                sh.close(st, "non-zero PF reply padding");
                return;
            }
            if ctx_size as usize > sys::KVMI_CTX_DATA_SIZE {
                sh.close(st, "PF reply ctx_size > 256");
                return;
            }
            let mut ctx = vec![0u8; sys::KVMI_CTX_DATA_SIZE];
            let from = extra.get(16..).unwrap_or(&[]);
            let n = from.len().min(ctx.len());
            ctx[..n].copy_from_slice(&from[..n]);
            ctx.truncate(ctx_size as usize);
            r.pf = Some(PfReply {
                ctx_addr,
                ctx_data: ctx,
                rep_complete: rep != 0,
                singlestep: ss != 0,
            });
        }
        _ => {}
    }
    *st.stats.event_replies.entry(id).or_default() += 1;
    let supports_retry = matches!(
        pending.event,
        SimEvent::Pf { .. } | SimEvent::Breakpoint { .. } | SimEvent::Descriptor { .. }
    );
    let action = er.action;
    r.action_supported = action == sys::KVMI_EVENT_ACTION_CONTINUE
        || action == sys::KVMI_EVENT_ACTION_CRASH
        || (action == sys::KVMI_EVENT_ACTION_RETRY && supports_retry);
    // Apply: registers set during the event first.
    if let Some(regs) = st.vm.vcpus[vcpu].pending_regs.take() {
        st.vm.vcpus[vcpu].regs = regs;
        r.regs_applied = Some(regs);
    }
    let cont = action == sys::KVMI_EVENT_ACTION_CONTINUE;
    let v = &mut st.vm.vcpus[vcpu];
    match pending.event {
        SimEvent::Cr { cr, .. } if cont => v.set_cr(cr, r.new_val.unwrap_or(0)),
        SimEvent::Msr { msr, .. } if cont => {
            v.msrs.insert(msr, r.new_val.unwrap_or(0));
            if msr == crate::model::msr::EFER {
                v.sregs.efer = r.new_val.unwrap_or(0);
            }
        }
        SimEvent::Xsetbv { xcr0 } if cont => v.xcr0 = xcr0,
        SimEvent::Breakpoint { .. } if cont => v.injections.push(Injection {
            vector: 3,
            error_code: 0,
            cr2: 0,
            reinjected_bp: true,
        }),
        _ => {}
    }
    // kvmi-v6: RETRY + singlestep=1 steps over the instruction, then SINGLESTEP.
    let v6_step = !v7
        && action == sys::KVMI_EVENT_ACTION_RETRY
        && r.pf.as_ref().is_some_and(|p| p.singlestep);
    st.pending[vcpu] = None;
    if st.recent.len() >= crate::RECENT_MAX {
        st.recent.pop_front();
    }
    st.recent.push_back(r.clone());
    if pending.waited {
        st.completed.insert(hdr.seq, r);
    }
    if action == sys::KVMI_EVENT_ACTION_CRASH {
        st.vm.crashed = true;
        sh.close(st, "guest crashed by event reply (CRASH)");
        return;
    }
    if v6_step && event_allowed(&sh.cfg, sys::KVMI_EVENT_SINGLESTEP) {
        let ev = SimEvent::Singlestep { failed: false };
        let seq = sh.send_event(st, vcpu, &ev);
        st.pending[vcpu] = Some(Pending {
            seq,
            event: ev,
            waited: false,
        });
    }
}
