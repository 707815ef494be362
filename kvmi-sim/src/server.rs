//! The kernel side: receive loop, command handlers, event building and event replies.

use crate::model::{Deferred, Injection, Vm, PAGE_SIZE};
use crate::{rd, Abi, Pending, PfReply, Shared, SimConfig, SimEvent, SimReply, State, WireRecord};
use kvmi_sys as sys;
use kvmi_sys::v6;
use std::io::Read;
use std::os::unix::net::UnixStream;
use zerocopy::IntoBytes;

/// Result of a command handler.
enum Out {
    /// Success with reply data (possibly empty).
    Ok(Vec<u8>),
    /// Failure: positive `KVM_E*` value.
    Err(i32),
    /// The kernel closes the socket without a reply.
    Close(&'static str),
}

fn ok() -> Out {
    Out::Ok(Vec::new())
}

fn data<T: IntoBytes + zerocopy::Immutable>(t: &T) -> Out {
    Out::Ok(t.as_bytes().to_vec())
}

pub(crate) fn event_allowed(cfg: &SimConfig, id: u8) -> bool {
    cfg.allowed_events.as_ref().is_none_or(|s| s.contains(&id))
}

fn command_allowed(cfg: &SimConfig, id: u16) -> bool {
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

fn num_events(abi: Abi) -> usize {
    match abi {
        Abi::V7 => sys::KVMI_NUM_EVENTS,
        Abi::V6 => v6::KVMI_NUM_EVENTS,
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<()> {
    r.read_exact(buf)
}

/// The receive thread. Reads through a buffer, so a whole message (often several)
/// costs one `read`, as for the kernel's receive path.
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
            handle_event_reply(sh, &mut st, hdr, &payload);
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
fn kick_idle_vcpus(sh: &Shared, st: &mut State) {
    for vcpu in 0..st.pending.len() {
        if st.pending[vcpu].is_some() || st.closed.is_some() {
            continue;
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

fn reply(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, err: i32, body: &[u8]) {
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
        control_cmd_response(sh, st, hdr, p);
        return;
    }
    let out = if sys::KVMI_VCPU_HDR_MESSAGE_IDS.contains(&hdr.id) {
        let vh: sys::VcpuHdr = rd(p, 0);
        if hdr.id == sys::KVMI_VCPU_PAUSE {
            vcpu_pause(cfg, st, p)
        } else if vh.padding1 != 0 || vh.padding2 != 0 {
            Out::Close("non-zero vcpu_hdr padding")
        } else if usize::from(vh.vcpu) >= st.vm.vcpus.len() {
            Out::Err(sys::KVM_EINVAL)
        } else {
            vcpu_command(cfg, st, hdr, usize::from(vh.vcpu), p)
        }
    } else {
        vm_command(cfg, st, hdr, p)
    };
    finish(sh, st, hdr, out);
}

fn finish(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, out: Out) {
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

fn control_cmd_response(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, p: &[u8]) {
    let req: sys::VmControlCmdResponse = rd(p, 0);
    let v7 = sh.cfg.abi == Abi::V7;
    let bad = req.padding1 != 0
        || req.padding2 != 0
        || req.enable > 1
        || req.now > 1
        || (!v7 && req.flags != 0)
        || req.flags & !sys::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR != 0
        || (req.enable != 0 && req.flags != 0);
    if bad {
        finish(sh, st, hdr, Out::Err(sys::KVM_EINVAL));
        return;
    }
    let wants_cmd_error = req.flags & sys::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR != 0;
    if wants_cmd_error && !event_allowed(&sh.cfg, sys::KVMI_EVENT_CMD_ERROR) {
        finish(sh, st, hdr, Out::Err(sys::KVM_EPERM));
        return;
    }
    if req.now == 1 {
        st.replies_enabled = req.enable == 1;
    }
    finish(sh, st, hdr, ok());
    if req.now == 0 {
        st.replies_enabled = req.enable == 1;
    }
    st.cmd_error_flag = req.enable == 0 && wants_cmd_error;
}

fn vcpu_pause(cfg: &SimConfig, st: &mut State, p: &[u8]) -> Out {
    let vh: sys::VcpuHdr = rd(p, 0);
    let req: sys::VcpuPause = if cfg.pause_quirk { rd(p, 0) } else { rd(p, 8) };
    if !cfg.pause_quirk && (vh.padding1 != 0 || vh.padding2 != 0) {
        return Out::Close("non-zero vcpu_hdr padding");
    }
    if req.padding1 != 0 || req.padding2 != 0 || req.padding3 != 0 {
        return Out::Err(sys::KVM_EINVAL);
    }
    let vcpu = usize::from(vh.vcpu);
    if vcpu >= st.vm.vcpus.len() {
        return Out::Err(sys::KVM_EINVAL);
    }
    if !event_allowed(cfg, sys::KVMI_EVENT_PAUSE_VCPU) {
        return Out::Close("VCPU_PAUSE with the PAUSE event disallowed");
    }
    let v = &mut st.vm.vcpus[vcpu];
    if v.pause_requests >= sys::KVMI_MAX_PAUSE_REQUESTS {
        return Out::Err(sys::KVM_EBUSY);
    }
    v.pause_requests += 1;
    ok()
}

fn vm_command(cfg: &SimConfig, st: &mut State, hdr: sys::MsgHdr, p: &[u8]) -> Out {
    let v7 = cfg.abi == Abi::V7;
    let vm = &mut st.vm;
    match hdr.id {
        sys::KVMI_GET_VERSION => {
            if v7 {
                let f = &cfg.features;
                data(&sys::GetVersionReply {
                    version: sys::KVMI_VERSION,
                    padding: 0,
                    features: sys::Features {
                        spp: f.spp.into(),
                        vmfunc: f.vmfunc.into(),
                        eptp: f.eptp.into(),
                        ve: f.ve.into(),
                        singlestep: f.singlestep.into(),
                        padding: [0; 3],
                    },
                })
            } else {
                data(&v6::GetVersionReply {
                    version: sys::KVMI_VERSION,
                    padding: 0,
                })
            }
        }
        sys::KVMI_VM_CHECK_COMMAND => {
            let r: sys::VmCheckCommand = rd(p, 0);
            let n = if v7 {
                sys::KVMI_NUM_COMMANDS
            } else {
                v6::KVMI_NUM_COMMANDS
            };
            if r.padding1 != 0 || r.padding2 != 0 || usize::from(r.id) >= n {
                Out::Err(sys::KVM_EINVAL)
            } else if !command_allowed(cfg, r.id) {
                Out::Err(sys::KVM_EPERM)
            } else {
                ok()
            }
        }
        sys::KVMI_VM_CHECK_EVENT => {
            let r: sys::VmCheckEvent = rd(p, 0);
            if r.padding1 != 0 || r.padding2 != 0 || usize::from(r.id) >= num_events(cfg.abi) {
                Out::Err(sys::KVM_EINVAL)
            } else if !event_allowed(cfg, r.id as u8) {
                Out::Err(sys::KVM_EPERM)
            } else {
                ok()
            }
        }
        sys::KVMI_VM_GET_INFO => data(&sys::VmGetInfoReply {
            vcpu_count: vm.vcpus.len() as u32,
            padding: [0; 3],
        }),
        sys::KVMI_VM_CONTROL_EVENTS => {
            let r: sys::VmControlEvents = rd(p, 0);
            let vm_ev = [
                sys::KVMI_EVENT_UNHOOK,
                sys::KVMI_EVENT_CREATE_VCPU,
                sys::KVMI_EVENT_CMD_ERROR,
            ];
            let id = r.event_id;
            if r.padding1 != 0
                || r.padding2 != 0
                || r.enable > 1
                || id > 255
                || usize::from(id) >= num_events(cfg.abi)
                || !vm_ev.contains(&(id as u8))
            {
                Out::Err(sys::KVM_EINVAL)
            } else if !event_allowed(cfg, id as u8) {
                Out::Err(sys::KVM_EPERM)
            } else {
                if r.enable == 1 {
                    vm.vm_events.insert(id as u8);
                } else {
                    vm.vm_events.remove(&(id as u8));
                }
                ok()
            }
        }
        sys::KVMI_VM_READ_PHYSICAL => {
            let r: sys::VmReadPhysical = rd(p, 0);
            match phys_check(vm, r.gpa, r.size) {
                Err(e) => Out::Err(e),
                Ok(()) => match vm.memory.read(r.gpa, r.size as usize) {
                    Some(d) => Out::Ok(d),
                    None => Out::Err(sys::KVM_ENOENT),
                },
            }
        }
        sys::KVMI_VM_WRITE_PHYSICAL => {
            let r: sys::VmWritePhysical = rd(p, 0);
            if (p.len() as u64) < 16u64.saturating_add(r.size) {
                return Out::Close("WRITE_PHYSICAL shorter than declared");
            }
            match phys_check(vm, r.gpa, r.size) {
                Err(e) => Out::Err(e),
                Ok(()) => {
                    let d = &p[16..16 + r.size as usize];
                    if vm.memory.write(r.gpa, d) {
                        ok()
                    } else {
                        Out::Err(sys::KVM_ENOENT)
                    }
                }
            }
        }
        sys::KVMI_VM_SET_PAGE_ACCESS => {
            let r: sys::VmSetPageAccess = rd(p, 0);
            if r.padding != 0 || p.len() < 8 + 16 * usize::from(r.count) {
                return Out::Err(sys::KVM_EINVAL);
            }
            if r.view >= sys::KVM_MAX_EPT_VIEWS {
                return Out::Err(sys::KVM_EINVAL);
            }
            if v7 && r.view != 0 && (!cfg.features.eptp || vm.spp_enabled) {
                return Out::Err(sys::KVM_EOPNOTSUPP);
            }
            if !v7 && r.view != 0 {
                return Out::Err(sys::KVM_EINVAL);
            }
            let mut first = 0;
            for i in 0..usize::from(r.count) {
                let e: sys::PageAccessEntry = rd(p, 8 + 16 * i);
                let invalid = e.padding1 != 0
                    || e.padding2 != 0
                    || e.padding3 != 0
                    || e.access & !sys::KVMI_PAGE_ACCESS_RWX != 0
                    || !vm.memory.is_backed(e.gpa >> 12);
                let err = if invalid {
                    sys::KVM_EINVAL
                } else {
                    if e.access == sys::KVMI_PAGE_ACCESS_RWX {
                        vm.page_access.remove(&(r.view, e.gpa >> 12));
                    } else {
                        vm.page_access.insert((r.view, e.gpa >> 12), e.access);
                    }
                    0
                };
                if first == 0 {
                    first = err;
                }
            }
            if first == 0 {
                ok()
            } else {
                Out::Err(first)
            }
        }
        v6::KVMI_GET_PAGE_ACCESS | v6::KVMI_GET_PAGE_WRITE_BITMAP if !v7 => {
            let r: v6::GetPageAccess = rd(p, 0);
            if r.padding != 0 || r.view != 0 || p.len() < 8 + 8 * usize::from(r.count) {
                return Out::Err(sys::KVM_EINVAL);
            }
            let mut out = Vec::new();
            for i in 0..usize::from(r.count) {
                let gpa: u64 = rd(p, 8 + 8 * i);
                if hdr.id == v6::KVMI_GET_PAGE_ACCESS {
                    out.push(
                        vm.page_access
                            .get(&(0, gpa >> 12))
                            .copied()
                            .unwrap_or(sys::KVMI_PAGE_ACCESS_RWX),
                    );
                } else {
                    let b = vm.write_bitmaps.get(&(gpa >> 12)).copied().unwrap_or(0);
                    out.extend_from_slice(&b.to_le_bytes());
                }
            }
            while out.len() % 8 != 0 {
                out.push(0);
            }
            Out::Ok(out)
        }
        sys::KVMI_VM_GET_MAP_TOKEN => {
            vm.map_tokens += 1;
            data(&sys::VmGetMapTokenReply {
                token: sys::MapMemToken {
                    token: [0x6b76_6d69, vm.map_tokens, 0, 0],
                },
            })
        }
        sys::KVMI_VM_CONTROL_SPP => {
            let r: sys::VmControlSpp = rd(p, 0);
            if r.padding1 != 0 || r.padding2 != 0 || r.padding3 != 0 {
                Out::Err(sys::KVM_EINVAL)
            } else if !cfg.features.spp || r.enable != 1 {
                Out::Err(sys::KVM_EOPNOTSUPP)
            } else {
                vm.spp_enabled = true;
                ok()
            }
        }
        sys::KVMI_VM_SET_PAGE_WRITE_BITMAP => {
            let r: sys::VmSetPageWriteBitmap = rd(p, 0);
            if r.padding1 != 0 || r.padding2 != 0 || p.len() < 8 + 16 * usize::from(r.count) {
                return Out::Err(sys::KVM_EINVAL);
            }
            if !vm.spp_enabled {
                return Out::Err(sys::KVM_EOPNOTSUPP);
            }
            let mut first = 0;
            for i in 0..usize::from(r.count) {
                let e: sys::PageWriteBitmapEntry = rd(p, 8 + 16 * i);
                if e.padding != 0 {
                    if first == 0 {
                        first = sys::KVM_EINVAL;
                    }
                    continue;
                }
                vm.write_bitmaps.insert(e.gpa >> 12, e.bitmap);
            }
            if first == 0 {
                ok()
            } else {
                Out::Err(first)
            }
        }
        sys::KVMI_VM_GET_MAX_GFN => data(&sys::VmGetMaxGfnReply {
            gfn: vm.memory.max_gfn,
        }),
        sys::KVMI_VM_SET_PAGE_SVE => {
            let r: sys::VmSetPageSve = rd(p, 0);
            if r.padding1 != 0
                || r.padding2 != 0
                || r.suppress > 1
                || r.view >= sys::KVM_MAX_EPT_VIEWS
            {
                Out::Err(sys::KVM_EINVAL)
            } else if !cfg.features.ve {
                Out::Err(sys::KVM_EOPNOTSUPP)
            } else {
                vm.sve.insert((r.view, r.gpa >> 12), r.suppress == 1);
                ok()
            }
        }
        sys::KVMI_GET_NEXT_AVAILABLE_GFN => {
            let mut g = vm.memory.max_gfn;
            while vm.memory.is_backed(g) {
                g += 1;
            }
            data(&sys::GetNextAvailableGfnReply { gfn: g })
        }
        sys::KVMI_QUERY_PHYSICAL => {
            let r: sys::QueryPhysical = rd(p, 0);
            if !vm.memory.is_backed(r.gfn) {
                return Out::Err(sys::KVM_ENOENT);
            }
            let mut start = r.gfn;
            while start > 0 && vm.memory.is_backed(start - 1) {
                start -= 1;
            }
            let mut end = r.gfn + 1;
            while vm.memory.is_backed(end) {
                end += 1;
            }
            data(&sys::QueryPhysicalReply {
                gfn: start,
                size: end - start,
            })
        }
        sys::KVMI_CREATE_EPT_VIEW => {
            if !cfg.features.eptp {
                return Out::Err(sys::KVM_EOPNOTSUPP);
            }
            match (1..sys::KVM_MAX_EPT_VIEWS).find(|v| !vm.views.contains(v)) {
                Some(v) => {
                    vm.views.insert(v);
                    data(&sys::CreateEptViewReply {
                        view: v,
                        padding: [0; 3],
                    })
                }
                None => Out::Err(sys::KVM_ENOMEM),
            }
        }
        sys::KVMI_DESTROY_EPT_VIEW => {
            let r: sys::DestroyEptView = rd(p, 0);
            if r.padding != [0; 3] || r.view == 0 || r.view >= sys::KVM_MAX_EPT_VIEWS {
                Out::Err(sys::KVM_EINVAL)
            } else if !cfg.features.eptp {
                Out::Err(sys::KVM_EOPNOTSUPP)
            } else if st.vm.vcpus.iter().any(|c| c.view == r.view) {
                Out::Err(sys::KVM_EBUSY)
            } else {
                let vm = &mut st.vm;
                vm.views.remove(&r.view);
                vm.page_access.retain(|(v, _), _| *v != r.view);
                ok()
            }
        }
        _ => Out::Err(sys::KVM_ENOSYS),
    }
}

fn phys_check(vm: &Vm, gpa: u64, size: u64) -> Result<(), i32> {
    if size == 0 || size > PAGE_SIZE as u64 || (gpa & 0xfff) + size > PAGE_SIZE as u64 {
        return Err(sys::KVM_EINVAL);
    }
    if gpa >> 12 >= vm.memory.max_gfn || !vm.memory.is_backed(gpa >> 12) {
        return Err(sys::KVM_ENOENT);
    }
    Ok(())
}

fn vcpu_command(cfg: &SimConfig, st: &mut State, hdr: sys::MsgHdr, vcpu: usize, p: &[u8]) -> Out {
    let v7 = cfg.abi == Abi::V7;
    let in_event = st.pending[vcpu].is_some();
    let trap_in_flight = matches!(
        st.pending[vcpu],
        Some(Pending {
            event: SimEvent::Trap { .. },
            ..
        })
    );
    let nev = num_events(cfg.abi);
    let vm = &mut st.vm;
    match hdr.id {
        sys::KVMI_VCPU_GET_INFO => data(&sys::VcpuGetInfoReply {
            tsc_speed: vm.vcpus[vcpu].tsc_speed,
        }),
        sys::KVMI_VCPU_CONTROL_EVENTS => {
            let r: sys::VcpuControlEvents = rd(p, 8);
            let id = r.event_id;
            let vm_ev = [
                sys::KVMI_EVENT_UNHOOK,
                sys::KVMI_EVENT_CREATE_VCPU,
                sys::KVMI_EVENT_CMD_ERROR,
            ];
            if r.padding1 != 0
                || r.padding2 != 0
                || r.enable > 1
                || usize::from(id) >= nev
                || vm_ev.contains(&(id as u8))
            {
                return Out::Err(sys::KVM_EINVAL);
            }
            let id = id as u8;
            if !event_allowed(cfg, id) {
                return Out::Err(sys::KVM_EPERM);
            }
            if id == sys::KVMI_EVENT_DESCRIPTOR && r.enable == 1 && !cfg.descriptor_supported {
                return Out::Err(sys::KVM_EOPNOTSUPP);
            }
            let v = &mut vm.vcpus[vcpu];
            if r.enable == 1 {
                v.events.insert(id);
            } else {
                v.events.remove(&id);
            }
            ok()
        }
        sys::KVMI_VCPU_CONTROL_CR => {
            let r: sys::VcpuControlCr = rd(p, 8);
            if r.padding1 != 0 || r.padding2 != 0 || r.enable > 1 || ![0, 3, 4].contains(&r.cr) {
                return Out::Err(sys::KVM_EINVAL);
            }
            if !event_allowed(cfg, sys::KVMI_EVENT_CR) {
                return Out::Err(sys::KVM_EPERM);
            }
            let v = &mut vm.vcpus[vcpu];
            if r.enable == 1 {
                v.cr_intercepts.insert(r.cr);
            } else {
                v.cr_intercepts.remove(&r.cr);
            }
            ok()
        }
        sys::KVMI_VCPU_CONTROL_MSR => {
            let r: sys::VcpuControlMsr = rd(p, 8);
            let m = r.msr;
            let in_range = m < 0x1fff || (m > 0xc000_0000 && m < 0xc000_1fff);
            if r.padding1 != 0 || r.padding2 != 0 || r.enable > 1 || !in_range {
                return Out::Err(sys::KVM_EINVAL);
            }
            if !event_allowed(cfg, sys::KVMI_EVENT_MSR) {
                return Out::Err(sys::KVM_EPERM);
            }
            let v = &mut vm.vcpus[vcpu];
            if r.enable == 1 {
                v.msr_intercepts.insert(m);
            } else {
                v.msr_intercepts.remove(&m);
            }
            ok()
        }
        sys::KVMI_VCPU_GET_REGISTERS => {
            let r: sys::VcpuGetRegisters = rd(p, 8);
            let n = usize::from(r.nmsrs);
            if r.padding1 != 0 || r.padding2 != 0 || p.len() < 16 + 4 * n {
                return Out::Err(sys::KVM_EINVAL);
            }
            if n > sys::KVMI_GET_REGISTERS_MAX_MSRS {
                return Out::Err(sys::KVM_ENOMEM);
            }
            let v = &vm.vcpus[vcpu];
            let mut entries = Vec::with_capacity(n);
            for i in 0..n {
                let idx: u32 = rd(p, 16 + 4 * i);
                let Some(d) = v.msrs.get(&idx) else {
                    return Out::Err(sys::KVM_EINVAL);
                };
                entries.push(sys::KvmMsrEntry {
                    index: idx,
                    reserved: 0,
                    data: *d,
                });
            }
            let head = sys::VcpuGetRegistersReply {
                mode: u32::from(v.mode()),
                padding: 0,
                regs: v.regs,
                sregs: v.sregs,
                msrs: sys::KvmMsrs {
                    nmsrs: n as u32,
                    pad: 0,
                },
            };
            let mut out = head.as_bytes().to_vec();
            for e in &entries {
                out.extend_from_slice(e.as_bytes());
            }
            Out::Ok(out)
        }
        sys::KVMI_VCPU_SET_REGISTERS => {
            if !in_event {
                return Out::Err(sys::KVM_EOPNOTSUPP);
            }
            let r: sys::VcpuSetRegisters = rd(p, 8);
            vm.vcpus[vcpu].pending_regs = Some(r.regs);
            ok()
        }
        sys::KVMI_VCPU_GET_CPUID => {
            let r: sys::VcpuGetCpuid = rd(p, 8);
            let idx_significant = matches!(r.function, 4 | 7 | 0xb | 0xd | 0xf | 0x10 | 0x12)
                || matches!(r.function, 0x14 | 0x17 | 0x18 | 0x1d | 0x1f | 0x8000_001d);
            let e = vm.cpuid.get(&(r.function, r.index)).or_else(|| {
                if idx_significant {
                    None
                } else {
                    vm.cpuid.get(&(r.function, 0))
                }
            });
            match e {
                Some(e) => data(&sys::VcpuGetCpuidReply {
                    eax: e[0],
                    ebx: e[1],
                    ecx: e[2],
                    edx: e[3],
                }),
                None => Out::Err(sys::KVM_ENOENT),
            }
        }
        sys::KVMI_VCPU_GET_XSAVE => data(&vm.vcpus[vcpu].xsave),
        sys::KVMI_VCPU_INJECT_EXCEPTION => {
            let (nr, bad, error_code, address, has_error) = if v7 {
                let r: sys::VcpuInjectException = rd(p, 8);
                let has = matches!(r.nr, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30);
                (
                    r.nr,
                    r.padding1 != 0 || r.padding2 != 0,
                    r.error_code,
                    r.address,
                    has,
                )
            } else {
                let r: v6::InjectException = rd(p, 8);
                (
                    r.nr,
                    r.padding != 0 || r.has_error > 1,
                    r.error_code,
                    r.address,
                    r.has_error == 1,
                )
            };
            if bad || nr >= 32 {
                return Out::Err(sys::KVM_EINVAL);
            }
            let v = &mut vm.vcpus[vcpu];
            if v.pending_trap.is_some() || trap_in_flight {
                return Out::Err(sys::KVM_EBUSY);
            }
            let inj = Injection {
                vector: nr,
                error_code: if has_error { error_code } else { 0 },
                cr2: if nr == 14 { address } else { 0 },
                reinjected_bp: false,
            };
            if nr == 14 {
                v.sregs.cr2 = address;
            }
            if v7 {
                v.pending_trap = Some(inj);
            } else {
                v.injections.push(inj);
            }
            ok()
        }
        sys::KVMI_VCPU_GET_MTRR_TYPE => data(&sys::VcpuGetMtrrTypeReply {
            type_: vm.mtrr_type,
            padding: [0; 7],
        }),
        sys::KVMI_VCPU_SET_VE_INFO => {
            let r: sys::VcpuSetVeInfo = rd(p, 8);
            if r.padding1 != 0 || r.padding2 != 0 || r.padding3 != 0 || r.trigger_vmexit > 1 {
                return Out::Err(sys::KVM_EINVAL);
            }
            if !cfg.features.ve {
                return Out::Err(sys::KVM_EINVAL);
            }
            vm.vcpus[vcpu].ve_info = Some((r.gpa, r.trigger_vmexit == 1));
            ok()
        }
        sys::KVMI_VCPU_DISABLE_VE => {
            if !cfg.features.ve {
                return Out::Err(sys::KVM_EINVAL);
            }
            vm.vcpus[vcpu].ve_info = None;
            ok()
        }
        sys::KVMI_VCPU_SET_EPT_VIEW => {
            let r: sys::VcpuSetEptView = rd(p, 8);
            if r.padding1 != 0 || r.padding2 != 0 || r.view >= sys::KVM_MAX_EPT_VIEWS {
                return Out::Err(sys::KVM_EINVAL);
            }
            if !cfg.features.eptp || (r.view != 0 && vm.spp_enabled) {
                return Out::Err(sys::KVM_EOPNOTSUPP);
            }
            vm.vcpus[vcpu].view = r.view;
            ok()
        }
        sys::KVMI_VCPU_GET_EPT_VIEW => data(&sys::VcpuGetEptViewReply {
            view: vm.vcpus[vcpu].view,
            padding1: 0,
            padding2: 0,
        }),
        sys::KVMI_VCPU_TRANSLATE_GVA => {
            let r: sys::VcpuTranslateGva = rd(p, 8);
            let gpa = vm.memory.translate(&vm.vcpus[vcpu].sregs, r.gva);
            data(&sys::VcpuTranslateGvaReply { gpa })
        }
        sys::KVMI_VCPU_CONTROL_EPT_VIEW => {
            let r: sys::VcpuControlEptView = rd(p, 8);
            if r.padding1 != 0
                || r.padding2 != 0
                || r.visible > 1
                || r.view >= sys::KVM_MAX_EPT_VIEWS
            {
                return Out::Err(sys::KVM_EINVAL);
            }
            if !cfg.features.eptp || !cfg.features.vmfunc {
                return Out::Err(sys::KVM_EOPNOTSUPP);
            }
            let v = &mut vm.vcpus[vcpu];
            if r.visible == 1 {
                v.visible_views.insert(r.view);
            } else {
                v.visible_views.remove(&r.view);
            }
            ok()
        }
        sys::KVMI_VCPU_GET_XCR => {
            let r: sys::VcpuGetXcr = rd(p, 8);
            if r.padding != [0; 7] || r.xcr != 0 {
                return Out::Err(sys::KVM_EINVAL);
            }
            data(&sys::VcpuGetXcrReply {
                value: vm.vcpus[vcpu].xcr0,
            })
        }
        sys::KVMI_VCPU_SET_XSAVE => {
            let d = &p[8.min(p.len())..];
            if d.len() > sys::KVM_XSAVE_SIZE {
                return Out::Err(sys::KVM_EINVAL);
            }
            let v = &mut vm.vcpus[vcpu];
            v.xsave.as_mut_bytes()[..d.len()].copy_from_slice(d);
            ok()
        }
        sys::KVMI_VCPU_ALLOC_GFN | sys::KVMI_VCPU_FREE_GFN => {
            let r: sys::VcpuAllocGfn = rd(p, 8);
            if hdr.id == sys::KVMI_VCPU_ALLOC_GFN {
                if vm.memory.is_backed(r.gfn) {
                    return Out::Err(sys::KVM_EINVAL);
                }
                vm.memory.add_frame(r.gfn);
                ok()
            } else if vm.memory.remove_frame(r.gfn) {
                ok()
            } else {
                Out::Err(sys::KVM_EINVAL)
            }
        }
        sys::KVMI_VCPU_CHANGE_GFN => {
            let r: sys::VcpuChangeGfn = rd(p, 8);
            if r.padding1 != 0 || r.padding2 != 0 || r.view >= sys::KVM_MAX_EPT_VIEWS {
                return Out::Err(sys::KVM_EINVAL);
            }
            if r.new_gfn == sys::KVMI_CHANGE_GFN_RESERVED {
                return Out::Err(sys::KVM_EPERM);
            }
            if !vm.memory.is_backed(r.old_gfn) || !vm.memory.is_backed(r.new_gfn) {
                return Out::Err(sys::KVM_EINVAL);
            }
            if r.old_gfn == r.new_gfn {
                vm.gfn_remap.remove(&(r.view, r.old_gfn));
            } else {
                vm.gfn_remap.insert((r.view, r.old_gfn), r.new_gfn);
            }
            ok()
        }
        sys::KVMI_VCPU_CONTROL_SINGLESTEP => {
            let r: sys::VcpuControlSingleStep = rd(p, 8);
            if r.padding != [0; 7] || r.enable > 1 || !cfg.features.singlestep {
                return Out::Err(sys::KVM_EINVAL);
            }
            vm.vcpus[vcpu].singlestep = r.enable == 1;
            ok()
        }
        _ => Out::Err(sys::KVM_ENOSYS),
    }
}

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

fn handle_event_reply(sh: &Shared, st: &mut State, hdr: sys::MsgHdr, p: &[u8]) {
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
