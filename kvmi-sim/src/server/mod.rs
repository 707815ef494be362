//! The kernel side: the receive loop and command dispatch. Each command has its own
//! handler, one `fn` per command, grouped by family: [`control`] (version, checks,
//! event enables, CR/MSR intercepts, reply suppression), [`memory`] (physical memory,
//! GFNs, translation), [`registers`] (registers, CPUID, XSAVE, XCR, MTRR, TSC),
//! [`vcpu`] (pause, exception injection, singlestep, vCPU count), [`slat`] (page
//! access, SPP, EPT views, #VE, GFN remapping); [`events`] builds events and applies
//! the tool's replies.

mod control;
mod events;
mod memory;
mod registers;
mod slat;
mod vcpu;

use crate::model::Deferred;
use crate::{rd, Abi, Pending, Shared, SimConfig, SimEvent, State, WireRecord};
use kvmi_sys as sys;
use kvmi_sys::v6;
use std::io::Read;
use std::os::unix::net::UnixStream;
use zerocopy::IntoBytes;

pub(crate) use events::event_payload;

/// Result of a command handler.
pub(super) enum Out {
    /// Success with reply data (possibly empty).
    Ok(Vec<u8>),
    /// Failure: positive `KVM_E*` value.
    Err(i32),
    /// The kernel closes the socket without a reply.
    Close(&'static str),
}

pub(super) fn ok() -> Out {
    Out::Ok(Vec::new())
}

pub(super) fn data<T: IntoBytes + zerocopy::Immutable>(t: &T) -> Out {
    Out::Ok(t.as_bytes().to_vec())
}

pub(crate) fn event_allowed(cfg: &SimConfig, id: u8) -> bool {
    cfg.allowed_events.as_ref().is_none_or(|s| s.contains(&id))
}

pub(super) fn command_allowed(cfg: &SimConfig, id: u16) -> bool {
    matches!(
        id,
        sys::KVMI_GET_VERSION | sys::KVMI_VM_CHECK_COMMAND | sys::KVMI_VM_CHECK_EVENT
    ) || cfg
        .allowed_commands
        .as_ref()
        .is_none_or(|s| s.contains(&id))
}

/// Whether the ABI knows (implements) a command id.
fn command_known(abi: Abi, id: u16) -> bool {
    match abi {
        Abi::V7 => sys::KVMI_COMMAND_IDS.contains(&id),
        Abi::V6 => matches!(id, 2..=11 | 13..=27 | 29),
    }
}

pub(super) fn num_events(abi: Abi) -> usize {
    match abi {
        Abi::V7 => sys::KVMI_NUM_EVENTS,
        Abi::V6 => v6::KVMI_NUM_EVENTS,
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    r.read_exact(buf)
}

/// The receive thread.
/// Reads through a buffer, so a whole message (often several) costs one `read`, as for
/// the kernel's receive path.
pub(crate) fn serve(sh: &Shared, reader: UnixStream) {
    let mut reader = std::io::BufReader::with_capacity(32 * 1024, reader);
    loop {
        let mut hb = [0u8; 8];
        if let Err(e) = read_full(&mut reader, &mut hb) {
            let mut st = sh.lock();
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                sh.close(&mut st, "the tool closed the connection");
            } else {
                sh.close(&mut st, format!("read failed: {e}"));
            }
            return;
        }
        let hdr: sys::MsgHdr = rd(&hb, 0);
        if usize::from(hdr.size) > sys::KVMI_MSG_SIZE {
            let mut st = sh.lock();
            sh.close(&mut st, "message larger than KVMI_MSG_SIZE");
            return;
        }
        let mut payload = vec![0u8; usize::from(hdr.size)];
        if let Err(e) = read_full(&mut reader, &mut payload) {
            let mut st = sh.lock();
            sh.close(&mut st, format!("read failed: {e}"));
            return;
        }
        if hdr.id != sys::KVMI_EVENT_REPLY {
            if let Some(d) = sh.cfg.faults.reply_delay {
                std::thread::sleep(d);
            }
        }
        let mut st = sh.lock();
        if sh.cfg.faults.stall_on_command == Some(hdr.id) && hdr.id != sys::KVMI_EVENT_REPLY {
            st.stalled = true;
        }
        while st.stalled && st.closed.is_none() {
            st = sh.cond.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.closed.is_some() {
            return;
        }
        st.stats.frames_in += 1;
        st.stats.bytes_in += 8 + u64::from(hdr.size);
        let ev = if hdr.id == sys::KVMI_EVENT_REPLY {
            let vh: sys::VcpuHdr = rd(&payload, 0);
            st.pending
                .get(usize::from(vh.vcpu))
                .and_then(|p| p.as_ref().map(|p| p.event.id()))
        } else {
            None
        };
        st.stats.record(WireRecord {
            outgoing: false,
            id: hdr.id,
            seq: hdr.seq,
            size: hdr.size,
            event: ev,
            err: None,
        });
        sh.crossed(&mut st);
        if st.closed.is_some() {
            return;
        }
        if hdr.id == sys::KVMI_EVENT_REPLY {
            events::handle_event_reply(sh, &mut st, hdr, &payload);
        } else {
            handle_command(sh, &mut st, hdr, &payload);
        }
        kick_idle_vcpus(sh, &mut st);
        sh.cond.notify_all();
        if st.closed.is_some() {
            return;
        }
    }
}

/// Send deferred TRAP/PAUSE events for idle vCPUs.
pub(crate) fn kick_idle_vcpus(sh: &Shared, st: &mut State) {
    for vcpu in 0..st.pending.len() {
        if st.pending[vcpu].is_some() || st.closed.is_some() {
            continue;
        }
        let v = &st.vm.vcpus[vcpu];
        if st.hold_pauses && v.pending_trap.is_none() && v.pause_requests > 0 {
            continue; // the vCPU stays in guest mode: no PAUSE_VCPU yet
        }
        let ev = match st.vm.take_deferred(vcpu) {
            Some(Deferred::Trap(t)) => {
                st.vm.vcpus[vcpu].injections.push(t);
                SimEvent::Trap {
                    vector: t.vector,
                    error_code: t.error_code,
                    cr2: t.cr2,
                }
            }
            Some(Deferred::Pause) => SimEvent::PauseVcpu,
            None => continue,
        };
        let seq = sh.send_event(st, vcpu, &ev);
        st.pending[vcpu] = Some(Pending {
            seq,
            event: ev,
            waited: false,
        });
    }
}

pub(super) fn reply(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, err: i32, body: &[u8]) {
    let ec = sys::ErrorCode {
        err: -err,
        padding: 0,
    };
    let body = if err == 0 { body } else { &[][..] };
    *st.stats.replies.entry((hdr.id, -err)).or_default() += 1;
    let rec = WireRecord {
        outgoing: true,
        id: hdr.id,
        seq: hdr.seq,
        size: (ec.as_bytes().len() + body.len()) as u16,
        event: None,
        err: Some(-err),
    };
    sh.send(st, hdr.id, hdr.seq, &[ec.as_bytes(), body], rec);
}

fn handle_command(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, p: &[u8]) {
    let cfg = &sh.cfg;
    *st.stats.commands.entry(hdr.id).or_default() += 1;
    let known = command_known(cfg.abi, hdr.id);
    let allowed = command_allowed(cfg, hdr.id);
    if !known || !allowed {
        if !st.replies_enabled {
            sh.close(st, "unknown/disallowed command while replies are disabled");
            return;
        }
        let e = if !known {
            match cfg.abi {
                Abi::V7 => sys::KVM_ENOSYS,
                Abi::V6 => sys::KVM_EOPNOTSUPP,
            }
        } else {
            sys::KVM_EPERM
        };
        reply(sh, st, hdr, e, &[]);
        return;
    }
    if hdr.id == sys::KVMI_VM_CONTROL_CMD_RESPONSE {
        control::control_cmd_response(sh, st, hdr, p);
        return;
    }
    let vcpu_cmd = sys::KVMI_VCPU_HDR_MESSAGE_IDS.contains(&hdr.id);
    let vh: sys::VcpuHdr = rd(p, 0);
    let out = if hdr.id == sys::KVMI_VCPU_PAUSE {
        vcpu::vcpu_pause(cfg, st, p)
    } else if vcpu_cmd && (vh.padding1 != 0 || vh.padding2 != 0) {
        Out::Close("non-zero vcpu_hdr padding")
    } else if vcpu_cmd && usize::from(vh.vcpu) >= st.vm.vcpus.len() {
        Out::Err(sys::KVM_EINVAL)
    } else {
        let handler = if vcpu_cmd {
            vcpu_handler(hdr.id)
        } else {
            vm_handler(cfg.abi, hdr.id)
        };
        match handler {
            Some(h) => h(&mut Cmd {
                cfg,
                st,
                hdr,
                p,
                vcpu: if vcpu_cmd { usize::from(vh.vcpu) } else { 0 },
            }),
            None => Out::Err(sys::KVM_ENOSYS),
        }
    };
    finish(sh, st, hdr, out);
}

pub(super) fn finish(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, out: Out) {
    match out {
        Out::Close(why) => sh.close(st, why),
        Out::Ok(d) if st.replies_enabled => reply(sh, st, hdr, 0, &d),
        Out::Err(e) if st.replies_enabled => reply(sh, st, hdr, e, &[]),
        Out::Ok(d) => {
            if !d.is_empty() {
                sh.close(st, "command with reply data while replies are disabled");
            }
        }
        Out::Err(e) => {
            if st.cmd_error_flag && sh.cfg.abi == Abi::V7 {
                let ev = SimEvent::CmdError {
                    err: -e,
                    msg_seq: hdr.seq,
                    msg_id: hdr.id,
                };
                sh.send_event(st, 0, &ev);
            }
        }
    }
}

/// What a command handler gets: the configuration, the state, the message.
pub(super) struct Cmd<'a> {
    pub(super) cfg: &'a SimConfig,
    pub(super) st: &'a mut State,
    pub(super) hdr: sys::MsgHdr,
    /// The payload (vCPU commands: `kvmi_vcpu_hdr` first).
    pub(super) p: &'a [u8],
    /// The target vCPU of a vCPU command (checked to exist; 0 for VM commands).
    pub(super) vcpu: usize,
}

impl Cmd<'_> {
    pub(super) fn v7(&self) -> bool {
        self.cfg.abi == Abi::V7
    }
}

type Handler = fn(&mut Cmd<'_>) -> Out;

/// The handler of a VM command.
fn vm_handler(abi: Abi, id: u16) -> Option<Handler> {
    let v7 = abi == Abi::V7;
    Some(match id {
        sys::KVMI_GET_VERSION => control::get_version,
        sys::KVMI_VM_CHECK_COMMAND => control::vm_check_command,
        sys::KVMI_VM_CHECK_EVENT => control::vm_check_event,
        sys::KVMI_VM_GET_INFO => vcpu::vm_get_info,
        sys::KVMI_VM_CONTROL_EVENTS => control::vm_control_events,
        sys::KVMI_VM_READ_PHYSICAL => memory::vm_read_physical,
        sys::KVMI_VM_WRITE_PHYSICAL => memory::vm_write_physical,
        sys::KVMI_VM_SET_PAGE_ACCESS => slat::vm_set_page_access,
        v6::KVMI_GET_PAGE_ACCESS | v6::KVMI_GET_PAGE_WRITE_BITMAP if !v7 => {
            slat::v6_get_page_access
        }
        sys::KVMI_VM_GET_MAP_TOKEN => memory::vm_get_map_token,
        sys::KVMI_VM_CONTROL_SPP => slat::vm_control_spp,
        sys::KVMI_VM_SET_PAGE_WRITE_BITMAP => slat::vm_set_page_write_bitmap,
        sys::KVMI_VM_GET_MAX_GFN => memory::vm_get_max_gfn,
        sys::KVMI_VM_SET_PAGE_SVE => slat::vm_set_page_sve,
        sys::KVMI_GET_NEXT_AVAILABLE_GFN => memory::get_next_available_gfn,
        sys::KVMI_QUERY_PHYSICAL => memory::query_physical,
        sys::KVMI_CREATE_EPT_VIEW => slat::create_ept_view,
        sys::KVMI_DESTROY_EPT_VIEW => slat::destroy_ept_view,
        _ => return None,
    })
}

/// The handler of a vCPU command (VCPU_PAUSE aside, which has its own header rules).
fn vcpu_handler(id: u16) -> Option<Handler> {
    Some(match id {
        sys::KVMI_VCPU_GET_INFO => registers::vcpu_get_info,
        sys::KVMI_VCPU_CONTROL_EVENTS => control::vcpu_control_events,
        sys::KVMI_VCPU_CONTROL_CR => control::vcpu_control_cr,
        sys::KVMI_VCPU_CONTROL_MSR => control::vcpu_control_msr,
        sys::KVMI_VCPU_GET_REGISTERS => registers::vcpu_get_registers,
        sys::KVMI_VCPU_SET_REGISTERS => registers::vcpu_set_registers,
        sys::KVMI_VCPU_GET_CPUID => registers::vcpu_get_cpuid,
        sys::KVMI_VCPU_GET_XSAVE => registers::vcpu_get_xsave,
        sys::KVMI_VCPU_INJECT_EXCEPTION => vcpu::vcpu_inject_exception,
        sys::KVMI_VCPU_GET_MTRR_TYPE => registers::vcpu_get_mtrr_type,
        sys::KVMI_VCPU_SET_VE_INFO => slat::vcpu_set_ve_info,
        sys::KVMI_VCPU_DISABLE_VE => slat::vcpu_disable_ve,
        sys::KVMI_VCPU_SET_EPT_VIEW => slat::vcpu_set_ept_view,
        sys::KVMI_VCPU_GET_EPT_VIEW => slat::vcpu_get_ept_view,
        sys::KVMI_VCPU_TRANSLATE_GVA => memory::vcpu_translate_gva,
        sys::KVMI_VCPU_CONTROL_EPT_VIEW => slat::vcpu_control_ept_view,
        sys::KVMI_VCPU_GET_XCR => registers::vcpu_get_xcr,
        sys::KVMI_VCPU_SET_XSAVE => registers::vcpu_set_xsave,
        sys::KVMI_VCPU_ALLOC_GFN | sys::KVMI_VCPU_FREE_GFN => memory::vcpu_alloc_free_gfn,
        sys::KVMI_VCPU_CHANGE_GFN => slat::vcpu_change_gfn,
        sys::KVMI_VCPU_CONTROL_SINGLESTEP => vcpu::vcpu_control_singlestep,
        _ => return None,
    })
}
