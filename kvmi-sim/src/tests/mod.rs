//! Tests against a tiny hand-rolled tool: a `UnixListener` that accepts the simulator,
//! answers the handshake and speaks raw frames built from `kvmi-sys` structs.

use super::*;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU32, Ordering};
use zerocopy::{FromBytes, IntoBytes};

const T: Duration = Duration::from_secs(5);

fn sock_path() -> std::path::PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("kvmi-sim-test-{}-{n}.sock", std::process::id()))
}

struct Tool {
    s: UnixStream,
    seq: u32,
    hello: Vec<u8>,
}

fn sha1(b: &[u8]) -> [u8; 20] {
    sha1_smol::Sha1::from(b).digest().bytes()
}

/// Listen, let the simulator connect, answer the handshake with `cookie`.
fn start(cfg: SimConfig, cookie: [u8; 20]) -> (Result<Simulator>, Tool) {
    let path = sock_path();
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).unwrap();
    let p2 = path.clone();
    let th = std::thread::spawn(move || Simulator::connect(p2, cfg));
    let (mut s, _) = l.accept().unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut size = [0u8; 4];
    s.read_exact(&mut size).unwrap();
    let mut hello = size.to_vec();
    hello.resize(u32::from_le_bytes(size) as usize, 0);
    s.read_exact(&mut hello[4..]).unwrap();
    let r = sys::QemuFromIntrospector {
        struct_size: 24,
        cookie_hash: cookie,
    };
    s.write_all(r.as_bytes()).unwrap();
    let sim = th.join().unwrap();
    let _ = std::fs::remove_file(&path);
    (sim, Tool { s, seq: 0, hello })
}

fn connect(cfg: SimConfig) -> (Simulator, Tool) {
    let (sim, t) = start(cfg, [0; 20]);
    (sim.unwrap(), t)
}

impl Tool {
    fn send(&mut self, id: u16, payload: &[u8]) -> u32 {
        self.seq += 1;
        let h = sys::MsgHdr {
            id,
            size: payload.len() as u16,
            seq: self.seq,
        };
        let mut f = h.as_bytes().to_vec();
        f.extend_from_slice(payload);
        self.s.write_all(&f).unwrap();
        self.seq
    }

    fn read(&mut self) -> (sys::MsgHdr, Vec<u8>) {
        self.try_read().expect("frame")
    }

    fn try_read(&mut self) -> Option<(sys::MsgHdr, Vec<u8>)> {
        let mut hb = [0u8; 8];
        self.s.read_exact(&mut hb).ok()?;
        let h = sys::MsgHdr::read_from_bytes(&hb).unwrap();
        let mut p = vec![0u8; usize::from(h.size)];
        self.s.read_exact(&mut p).ok()?;
        Some((h, p))
    }

    /// Send a command and read its reply: (err, data).
    fn cmd(&mut self, id: u16, payload: &[u8]) -> (i32, Vec<u8>) {
        let seq = self.send(id, payload);
        let (h, p) = self.read();
        assert_eq!((h.id, h.seq), (id, seq), "reply header");
        let ec = sys::ErrorCode::read_from_prefix(&p).unwrap().0;
        assert_eq!(ec.padding, 0);
        if ec.err != 0 {
            assert_eq!(p.len(), 8, "error replies carry no data");
        }
        (ec.err, p[8..].to_vec())
    }

    fn vcmd<S: IntoBytes + zerocopy::Immutable>(
        &mut self,
        id: u16,
        vcpu: u16,
        s: &S,
    ) -> (i32, Vec<u8>) {
        let mut p = sys::VcpuHdr {
            vcpu,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        p.extend_from_slice(s.as_bytes());
        self.cmd(id, &p)
    }

    fn enable_event(&mut self, vcpu: u16, ev: u8) {
        let r = self.vcmd(
            sys::KVMI_VCPU_CONTROL_EVENTS,
            vcpu,
            &sys::VcpuControlEvents {
                event_id: ev.into(),
                enable: 1,
                ..Default::default()
            },
        );
        assert_eq!(r.0, 0);
    }

    /// Read one event: (hdr, common struct, specific payload).
    fn read_event(&mut self) -> (sys::MsgHdr, sys::Event, Vec<u8>) {
        let (h, p) = self.read();
        assert_eq!(h.id, sys::KVMI_EVENT);
        let ev = sys::Event::read_from_prefix(&p).unwrap().0;
        assert_eq!(ev.size as usize, sys::EVENT_SIZE);
        (h, ev, p[sys::EVENT_SIZE..].to_vec())
    }

    fn reply_event(&mut self, seq: u32, vcpu: u16, event: u8, action: u8, extra: &[u8]) {
        let mut p = sys::VcpuHdr {
            vcpu,
            ..Default::default()
        }
        .as_bytes()
        .to_vec();
        p.extend_from_slice(
            sys::EventReply {
                action,
                event,
                ..Default::default()
            }
            .as_bytes(),
        );
        p.extend_from_slice(extra);
        let h = sys::MsgHdr {
            id: sys::KVMI_EVENT_REPLY,
            size: p.len() as u16,
            seq,
        };
        let mut f = h.as_bytes().to_vec();
        f.extend_from_slice(&p);
        self.s.write_all(&f).unwrap();
    }
}

#[test]
fn handshake_with_good_secret_and_get_version() {
    let cfg = SimConfig {
        secret: Some(b"s3cret".to_vec()),
        name: "guest-a".into(),
        ..Default::default()
    };
    let (sim, mut t) = start(cfg.clone(), sha1(b"s3cret"));
    let sim = sim.unwrap();
    assert_eq!(t.hello.len(), 96);
    let hello = sys::QemuToIntrospector::read_from_bytes(&t.hello).unwrap();
    assert_eq!(hello.struct_size, 96);
    assert_eq!(hello.uuid, cfg.uuid);
    assert_eq!(hello.start_time, cfg.start_time);
    assert_eq!(&hello.name[..8], b"guest-a\0");
    assert_eq!(sim.hookup().cookie_hash, sha1(b"s3cret"));

    let (err, d) = t.cmd(sys::KVMI_GET_VERSION, &[]);
    assert_eq!(err, 0);
    assert_eq!(d.len(), 16);
    let v = sys::GetVersionReply::read_from_bytes(&d).unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(v.features.singlestep, 1);
    assert_eq!(v.features.eptp, 1);
    assert_eq!(sim.stats().commands[&sys::KVMI_GET_VERSION], 1);
}

#[test]
fn handshake_with_bad_secret_closes() {
    let cfg = SimConfig {
        secret: Some(b"s3cret".to_vec()),
        ..Default::default()
    };
    let (sim, mut t) = start(cfg, sha1(b"wrong"));
    assert!(matches!(sim, Err(SimError::BadCookie)));
    let mut b = [0u8; 1];
    assert_eq!(t.s.read(&mut b).unwrap(), 0, "socket closed");
}

#[test]
fn size_tolerant_handshake_reply() {
    let path = sock_path();
    let l = UnixListener::bind(&path).unwrap();
    let p2 = path.clone();
    let th = std::thread::spawn(move || Simulator::connect(p2, SimConfig::default()));
    let (mut s, _) = l.accept().unwrap();
    let mut hello = [0u8; 96];
    s.read_exact(&mut hello).unwrap();
    // A 40-byte reply: the 16 extra bytes are read and ignored.
    let mut r = vec![0u8; 40];
    r[..4].copy_from_slice(&40u32.to_le_bytes());
    r[4] = 0xaa;
    r[24..].fill(0xee);
    s.write_all(&r).unwrap();
    let sim = th.join().unwrap().unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(sim.hookup().struct_size, 40);
    assert_eq!(sim.hookup().cookie_hash[0], 0xaa);
    let mut t = Tool {
        s,
        seq: 0,
        hello: hello.to_vec(),
    };
    t.s.set_read_timeout(Some(T)).unwrap();
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
}

#[test]
fn read_write_physical_rules() {
    let mut cfg = SimConfig::default();
    cfg.memory.load(0x2000, b"initial");
    let (sim, mut t) = connect(cfg);
    let rp = |gpa, size| sys::VmReadPhysical { gpa, size };
    let (e, d) = t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x2000, 7).as_bytes());
    assert_eq!((e, d.as_slice()), (0, &b"initial"[..]));

    let mut w = sys::VmWritePhysical {
        gpa: 0x2003,
        size: 5,
    }
    .as_bytes()
    .to_vec();
    w.extend_from_slice(b"HELLO");
    assert_eq!(t.cmd(sys::KVMI_VM_WRITE_PHYSICAL, &w), (0, vec![]));
    let (e, d) = t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x2000, 8).as_bytes());
    assert_eq!((e, d.as_slice()), (0, &b"iniHELLO"[..]));
    assert_eq!(sim.vm().memory.read(0x2003, 5).unwrap(), b"HELLO");

    // Unbacked page below max_gfn: ENOENT; cross-page / zero / > 4096: EINVAL.
    let enoent = -sys::KVM_ENOENT;
    let einval = -sys::KVM_EINVAL;
    assert_eq!(
        t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x100_0000, 8).as_bytes())
            .0,
        enoent
    );
    assert_eq!(
        t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0xff8, 16).as_bytes())
            .0,
        einval
    );
    assert_eq!(
        t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x1000, 0).as_bytes())
            .0,
        einval
    );
    assert_eq!(
        t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x1000, 4097).as_bytes())
            .0,
        einval
    );
    let (e, d) = t.cmd(sys::KVMI_VM_READ_PHYSICAL, rp(0x1000, 4096).as_bytes());
    assert_eq!((e, d.len()), (0, 4096));
    let mut w = sys::VmWritePhysical {
        gpa: 0x100_0000,
        size: 1,
    }
    .as_bytes()
    .to_vec();
    w.push(1);
    assert_eq!(t.cmd(sys::KVMI_VM_WRITE_PHYSICAL, &w).0, enoent);

    // Max gfn and guest info.
    let (e, d) = t.cmd(sys::KVMI_VM_GET_MAX_GFN, &[]);
    assert_eq!(e, 0);
    // The real size: 2 MiB of backed frames, not a 1 GiB space of holes.
    assert_eq!(u64::read_from_bytes(&d).unwrap(), 0x200);
    assert_eq!(sim.vm().memory.gfns().count(), 0x200);
    let (e, d) = t.cmd(sys::KVMI_VM_GET_INFO, &[]);
    assert_eq!(e, 0);
    assert_eq!(
        sys::VmGetInfoReply::read_from_bytes(&d).unwrap().vcpu_count,
        2
    );

    // WRITE_PHYSICAL shorter than declared closes the socket.
    let w = sys::VmWritePhysical {
        gpa: 0x2000,
        size: 100,
    };
    t.send(sys::KVMI_VM_WRITE_PHYSICAL, w.as_bytes());
    assert!(t.try_read().is_none());
    assert!(sim.wait_closed(T).unwrap().contains("shorter"));
}

#[test]
fn get_set_registers_rules() {
    let (sim, mut t) = connect(SimConfig::default());
    let mut p = sys::VcpuHdr {
        vcpu: 1,
        ..Default::default()
    }
    .as_bytes()
    .to_vec();
    p.extend_from_slice(
        sys::VcpuGetRegisters {
            nmsrs: 2,
            ..Default::default()
        }
        .as_bytes(),
    );
    p.extend_from_slice(&0xc000_0082u32.to_le_bytes());
    p.extend_from_slice(&0x174u32.to_le_bytes());
    let (e, d) = t.cmd(sys::KVMI_VCPU_GET_REGISTERS, &p);
    assert_eq!(e, 0);
    assert_eq!(d.len(), 472 + 32);
    let r = sys::VcpuGetRegistersReply::read_from_prefix(&d).unwrap().0;
    assert_eq!(r.mode, 8);
    assert_eq!(r.msrs.nmsrs, 2);
    let (vrip, lstar) = {
        let vm = sim.vm();
        (vm.vcpus[1].regs.rip, vm.vcpus[1].msrs[&0xc000_0082])
    };
    assert_eq!(r.regs.rip, vrip);
    let m0 = sys::KvmMsrEntry::read_from_bytes(&d[472..488]).unwrap();
    assert_eq!((m0.index, m0.data), (0xc000_0082, lstar));

    // Unknown MSR: EINVAL. Bad vCPU: EINVAL.
    let mut p2 = p.clone();
    p2[16..20].copy_from_slice(&0x1234_5678u32.to_le_bytes());
    assert_eq!(t.cmd(sys::KVMI_VCPU_GET_REGISTERS, &p2).0, -sys::KVM_EINVAL);
    p2[0] = 9;
    assert_eq!(t.cmd(sys::KVMI_VCPU_GET_REGISTERS, &p2).0, -sys::KVM_EINVAL);

    // SET_REGISTERS outside an event: EOPNOTSUPP.
    let set = sys::VcpuSetRegisters {
        regs: sys::KvmRegs {
            rip: 0x1234,
            ..Default::default()
        },
    };
    let e = t.vcmd(sys::KVMI_VCPU_SET_REGISTERS, 0, &set).0;
    assert_eq!(e, -sys::KVM_EOPNOTSUPP);
    assert_ne!(sim.vm().vcpus[0].regs.rip, 0x1234);
}

#[test]
fn cr_event_round_trip_applies_new_value_and_registers() {
    let (sim, mut t) = connect(SimConfig::default());
    // Not enabled yet: not delivered.
    let ev = SimEvent::Cr {
        cr: 3,
        old: 0x10_0000,
        new: 0x20_0000,
    };
    assert!(matches!(
        sim.trigger(0, ev.clone()),
        Err(SimError::NotDelivered(_))
    ));
    t.enable_event(0, sys::KVMI_EVENT_CR);
    let ccr = sys::VcpuControlCr {
        enable: 1,
        cr: 3,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &ccr).0, 0);
    let bad = sys::VcpuControlCr {
        enable: 1,
        cr: 2,
        ..Default::default()
    };
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &bad).0,
        -sys::KVM_EINVAL
    );

    let h = sim.trigger(0, ev).unwrap();
    let (hdr, e, spec) = t.read_event();
    assert_eq!(hdr.size as usize, 544 + 24);
    assert_eq!(hdr.seq, h.seq);
    assert_eq!((e.vcpu, e.event, e.arch.mode), (0, sys::KVMI_EVENT_CR, 8));
    let cr = sys::EventCr::read_from_bytes(&spec).unwrap();
    assert_eq!(
        (cr.cr, cr.old_value, cr.new_value),
        (3, 0x10_0000, 0x20_0000)
    );

    // SET_REGISTERS is accepted while the event is pending, applied at reply time.
    let set = sys::VcpuSetRegisters {
        regs: sys::KvmRegs {
            rip: 0x1234,
            ..e.arch.regs
        },
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_SET_REGISTERS, 0, &set).0, 0);
    assert_ne!(sim.vm().vcpus[0].regs.rip, 0x1234);
    t.reply_event(
        hdr.seq,
        0,
        sys::KVMI_EVENT_CR,
        sys::KVMI_EVENT_ACTION_CONTINUE,
        &0x30_0000u64.to_le_bytes(),
    );
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_CONTINUE));
    assert_eq!(r.new_val, Some(0x30_0000));
    assert_eq!(r.regs_applied.map(|r| r.rip), Some(0x1234));
    assert_eq!(sim.vm().vcpus[0].sregs.cr3, 0x30_0000);
    assert_eq!(sim.vm().vcpus[0].regs.rip, 0x1234);
    // Event over: SET_REGISTERS refused again.
    let e = t.vcmd(sys::KVMI_VCPU_SET_REGISTERS, 0, &set).0;
    assert_eq!(e, -sys::KVM_EOPNOTSUPP);
    let s = sim.stats();
    assert_eq!(s.events[&sys::KVMI_EVENT_CR], 1);
    assert_eq!(s.event_replies[&sys::KVMI_EVENT_CR], 1);
}

#[test]
fn events_on_two_vcpus_outstanding_at_once() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_HYPERCALL);
    t.enable_event(1, sys::KVMI_EVENT_XSETBV);
    let h0 = sim.trigger(0, SimEvent::Hypercall).unwrap();
    let h1 = sim.trigger(1, SimEvent::Xsetbv { xcr0: 0xe7 }).unwrap();
    let (a, ea, _) = t.read_event();
    let (b, eb, _) = t.read_event();
    assert_eq!(ea.arch.regs.rax, sys::KVM_HC_XEN_HVM_OP);
    // Answer in reverse order.
    t.reply_event(b.seq, eb.vcpu, eb.event, 0, &[]);
    t.reply_event(a.seq, ea.vcpu, ea.event, 0, &[]);
    assert_eq!(h1.wait_reply(T).unwrap().event, sys::KVMI_EVENT_XSETBV);
    assert_eq!(h0.wait_reply(T).unwrap().event, sys::KVMI_EVENT_HYPERCALL);
    assert_eq!(sim.vm().vcpus[1].xcr0, 0xe7);
}

#[test]
fn pause_vcpu_queues_pause_event() {
    let (sim, mut t) = connect(SimConfig::default());
    let (e, d) = t.vcmd(
        sys::KVMI_VCPU_PAUSE,
        1,
        &sys::VcpuPause {
            wait: 1,
            ..Default::default()
        },
    );
    assert_eq!((e, d.len()), (0, 0));
    let (h, ev, spec) = t.read_event();
    assert_eq!((ev.vcpu, ev.event), (1, sys::KVMI_EVENT_PAUSE_VCPU));
    assert!(spec.is_empty());
    t.reply_event(h.seq, 1, ev.event, sys::KVMI_EVENT_ACTION_CONTINUE, &[]);
    // The reply has no answer; a following command is answered normally.
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    assert_eq!(sim.stats().event_replies[&sys::KVMI_EVENT_PAUSE_VCPU], 1);
}

#[test]
fn inject_exception_is_followed_by_trap() {
    let (sim, mut t) = connect(SimConfig::default());
    let inj = sys::VcpuInjectException {
        nr: 14,
        error_code: 2,
        address: 0xdead_b000,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_INJECT_EXCEPTION, 0, &inj).0, 0);
    let (h, ev, spec) = t.read_event();
    assert_eq!(ev.event, sys::KVMI_EVENT_TRAP);
    let tr = sys::EventTrap::read_from_bytes(&spec).unwrap();
    assert_eq!((tr.vector, tr.error_code, tr.cr2), (14, 2, 0xdead_b000));
    // A second injection while the TRAP is pending: EBUSY.
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_INJECT_EXCEPTION, 0, &inj).0,
        -sys::KVM_EBUSY
    );
    t.reply_event(h.seq, 0, ev.event, 0, &[]);
    assert_eq!(t.vcmd(sys::KVMI_VCPU_GET_INFO, 0, &()).0, 0);
    assert_eq!(sim.vm().vcpus[0].injections.len(), 1);
}

#[test]
fn pf_event_needs_restricted_page_and_decodes_reply() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_PF);
    let pf = SimEvent::Pf {
        gva: 0x7000,
        gpa: 0x5000,
        access: sys::KVMI_PAGE_ACCESS_W,
    };
    assert!(sim.trigger(0, pf.clone()).is_err());
    let mut p = sys::VmSetPageAccess {
        view: 0,
        count: 1,
        padding: 0,
    }
    .as_bytes()
    .to_vec();
    p.extend_from_slice(
        sys::PageAccessEntry {
            gpa: 0x5000,
            access: sys::KVMI_PAGE_ACCESS_R | sys::KVMI_PAGE_ACCESS_X,
            ..Default::default()
        }
        .as_bytes(),
    );
    assert_eq!(t.cmd(sys::KVMI_VM_SET_PAGE_ACCESS, &p).0, 0);
    let h = sim.trigger(0, pf).unwrap();
    let (hd, ev, spec) = t.read_event();
    assert_eq!(hd.size as usize, 544 + 24);
    let e = sys::EventPf::read_from_bytes(&spec).unwrap();
    assert_eq!((e.gva, e.gpa, e.access), (0x7000, 0x5000, 2));
    let mut pr = sys::EventPfReply {
        ctx_addr: 0x7000,
        ctx_size: 4,
        rep_complete: 1,
        ..Default::default()
    };
    pr.ctx_data[..4].copy_from_slice(b"fake");
    t.reply_event(
        hd.seq,
        0,
        ev.event,
        sys::KVMI_EVENT_ACTION_RETRY,
        pr.as_bytes(),
    );
    let r = h.wait_reply(T).unwrap();
    assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_RETRY));
    let pf = r.pf.unwrap();
    assert_eq!(
        (pf.ctx_addr, pf.ctx_data.as_slice()),
        (0x7000, &b"fake"[..])
    );
    assert!(pf.rep_complete);
}

#[test]
fn breakpoint_continue_reinjects_and_retry_does_not() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(1, sys::KVMI_EVENT_BREAKPOINT);
    for action in [
        sys::KVMI_EVENT_ACTION_RETRY,
        sys::KVMI_EVENT_ACTION_CONTINUE,
    ] {
        let bp = SimEvent::Breakpoint {
            gpa: 0x1000,
            insn_len: 1,
        };
        let h = sim.trigger(1, bp).unwrap();
        let (hd, ev, spec) = t.read_event();
        let b = sys::EventBreakpoint::read_from_bytes(&spec).unwrap();
        assert_eq!((b.gpa, b.insn_len), (0x1000, 1));
        t.reply_event(hd.seq, 1, ev.event, action, &[]);
        h.wait_reply(T).unwrap();
    }
    let inj = sim.vm().vcpus[1].injections.clone();
    assert_eq!(inj.len(), 1);
    assert!(inj[0].reinjected_bp && inj[0].vector == 3);
}

#[test]
fn translate_gva_walks_four_levels() {
    let (sim, mut t) = connect(SimConfig::default());
    {
        let mut vm = sim.vm();
        let mut next = 0x20_000u64;
        let cr3 = vm.vcpus[0].sregs.cr3;
        vm.memory
            .map_4level(cr3, 0xffff_8880_0000_3000, 0x3000, &mut next);
    }
    let tr = |gva| sys::VcpuTranslateGva { gva };
    let (e, d) = t.vcmd(sys::KVMI_VCPU_TRANSLATE_GVA, 0, &tr(0xffff_8880_0000_3abc));
    assert_eq!((e, u64::read_from_bytes(&d).unwrap()), (0, 0x3abc));
    let (e, d) = t.vcmd(sys::KVMI_VCPU_TRANSLATE_GVA, 0, &tr(0x1234_5000));
    assert_eq!((e, u64::read_from_bytes(&d).unwrap()), (0, u64::MAX));
}

#[test]
fn cmd_response_suppresses_replies() {
    let (_sim, mut t) = connect(SimConfig::default());
    let off = sys::VmControlCmdResponse {
        enable: 0,
        now: 1,
        ..Default::default()
    };
    t.send(sys::KVMI_VM_CONTROL_CMD_RESPONSE, off.as_bytes());
    let ce = sys::VmControlEvents {
        event_id: sys::KVMI_EVENT_UNHOOK.into(),
        enable: 1,
        ..Default::default()
    };
    t.send(sys::KVMI_VM_CONTROL_EVENTS, ce.as_bytes());
    let on = sys::VmControlCmdResponse {
        enable: 1,
        now: 1,
        ..Default::default()
    };
    let seq = t.send(sys::KVMI_VM_CONTROL_CMD_RESPONSE, on.as_bytes());
    let (h, p) = t.read();
    assert_eq!(
        (h.id, h.seq, p.len()),
        (sys::KVMI_VM_CONTROL_CMD_RESPONSE, seq, 8)
    );
    assert!(_sim.vm().vm_events.contains(&sys::KVMI_EVENT_UNHOOK));
}

#[test]
fn cmd_error_event_when_flag_set() {
    let (_sim, mut t) = connect(SimConfig::default());
    let off = sys::VmControlCmdResponse {
        enable: 0,
        now: 1,
        flags: sys::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR,
        ..Default::default()
    };
    t.send(sys::KVMI_VM_CONTROL_CMD_RESPONSE, off.as_bytes());
    let bad = sys::VmControlEvents {
        event_id: 99,
        enable: 1,
        ..Default::default()
    };
    let seq = t.send(sys::KVMI_VM_CONTROL_EVENTS, bad.as_bytes());
    let (_, ev, spec) = t.read_event();
    assert_eq!(ev.event, sys::KVMI_EVENT_CMD_ERROR);
    let ce = sys::EventCmdError::read_from_bytes(&spec).unwrap();
    assert_eq!((ce.err, ce.msg_seq, ce.msg_id), (-sys::KVM_EINVAL, seq, 8));
}

#[test]
fn vcpu_hdr_padding_closes_socket() {
    let (sim, mut t) = connect(SimConfig::default());
    let p = sys::VcpuHdr {
        vcpu: 0,
        padding1: 1,
        padding2: 0,
    };
    t.send(sys::KVMI_VCPU_GET_INFO, p.as_bytes());
    assert!(t.try_read().is_none());
    assert!(sim.wait_closed(T).unwrap().contains("padding"));
}

#[test]
fn unknown_and_disallowed_commands() {
    let cfg = SimConfig {
        allowed_commands: Some([sys::KVMI_VM_GET_INFO].into_iter().collect()),
        ..Default::default()
    };
    let (_sim, mut t) = connect(cfg);
    assert_eq!(t.cmd(50, &[]).0, -sys::KVM_ENOSYS);
    assert_eq!(t.cmd(sys::KVMI_VM_GET_MAX_GFN, &[]).0, -sys::KVM_EPERM);
    assert_eq!(t.cmd(sys::KVMI_VM_GET_INFO, &[]).0, 0);
    let cc = |id| sys::VmCheckCommand {
        id,
        ..Default::default()
    };
    let r = t.cmd(
        sys::KVMI_VM_CHECK_COMMAND,
        cc(sys::KVMI_VM_GET_MAX_GFN).as_bytes(),
    );
    assert_eq!(r.0, -sys::KVM_EPERM);
    assert_eq!(
        t.cmd(sys::KVMI_VM_CHECK_COMMAND, cc(64).as_bytes()).0,
        -sys::KVM_EINVAL
    );
    let ce = sys::VmCheckEvent {
        id: 14,
        ..Default::default()
    };
    assert_eq!(
        t.cmd(sys::KVMI_VM_CHECK_EVENT, ce.as_bytes()).0,
        -sys::KVM_EINVAL
    );
}

#[test]
fn v6_get_version_layout_and_unknown_command() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (_sim, mut t) = connect(cfg);
    let hello = sys::QemuToIntrospector::read_from_bytes(&t.hello).unwrap();
    assert_eq!((hello.start_time, hello.name[0]), (0, 0));
    let seq = t.send(sys::KVMI_GET_VERSION, &[]);
    let (h, p) = t.read();
    assert_eq!((h.id, h.seq, h.size), (2, seq, 16));
    let v = sys::v6::GetVersionReply::read_from_bytes(&p[8..]).unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(
        t.cmd(sys::KVMI_VCPU_TRANSLATE_GVA, &[0; 16]).0,
        -sys::KVM_EOPNOTSUPP
    );
    let cc = sys::VmCheckCommand {
        id: 63,
        ..Default::default()
    };
    assert_eq!(
        t.cmd(sys::KVMI_VM_CHECK_COMMAND, cc.as_bytes()).0,
        -sys::KVM_EINVAL
    );
}

#[test]
fn v6_pf_event_has_view_in_payload() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    t.enable_event(0, sys::KVMI_EVENT_PF);
    sim.vm().page_access.insert((0, 5), sys::KVMI_PAGE_ACCESS_R);
    let h = sim
        .trigger(
            0,
            SimEvent::Pf {
                gva: 1,
                gpa: 0x5000,
                access: sys::KVMI_PAGE_ACCESS_X,
            },
        )
        .unwrap();
    let (hd, ev, spec) = t.read_event();
    assert_eq!(spec.len(), 24);
    let e = sys::v6::EventPf::read_from_bytes(&spec).unwrap();
    assert_eq!((e.gpa, e.access, e.view), (0x5000, 4, 0));
    t.reply_event(hd.seq, 0, ev.event, 0, &[]);
    h.wait_reply(T).unwrap();
}

#[test]
fn fault_plan_truncates_frame() {
    let cfg = SimConfig {
        faults: FaultPlan {
            truncate_frame: Some((0, 10)),
            ..Default::default()
        },
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    t.send(sys::KVMI_GET_VERSION, &[]);
    let mut got = Vec::new();
    t.s.read_to_end(&mut got).unwrap();
    assert_eq!(got.len(), 10);
    assert!(sim.wait_closed(T).unwrap().contains("truncated"));
}

#[test]
fn fault_plan_corrupts_and_drops() {
    let cfg = SimConfig {
        faults: FaultPlan {
            corrupt_frame: Some((0, 0, 0xff)),
            drop_after_messages: Some(4),
            ..Default::default()
        },
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    t.send(sys::KVMI_GET_VERSION, &[]);
    let (h, _) = t.read();
    assert_eq!(h.id, sys::KVMI_GET_VERSION ^ 0xff);
    // Frames 3 (command) and 4 (reply): the reply is sent, then the socket dropped.
    let (h, _) = {
        t.send(sys::KVMI_GET_VERSION, &[]);
        t.read()
    };
    assert_eq!(h.id, sys::KVMI_GET_VERSION);
    assert!(t.try_read().is_none());
    assert!(sim.closed().is_some());
}

#[test]
fn crash_action_closes_connection() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_DESCRIPTOR);
    let h = sim
        .trigger(
            0,
            SimEvent::Descriptor {
                descriptor: sys::KVMI_DESC_GDTR,
                write: true,
            },
        )
        .unwrap();
    let (hd, ev, _) = t.read_event();
    t.reply_event(hd.seq, 0, ev.event, sys::KVMI_EVENT_ACTION_CRASH, &[]);
    assert_eq!(h.wait_reply(T).unwrap().action, Some(2));
    assert!(sim.wait_closed(T).unwrap().contains("CRASH"));
    assert!(sim.vm().crashed);
}

#[test]
fn workload_generates_every_enabled_event() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_CR);
    t.enable_event(0, sys::KVMI_EVENT_CPUID);
    t.enable_event(1, sys::KVMI_EVENT_MSR);
    t.enable_event(1, sys::KVMI_EVENT_SINGLESTEP);
    let ccr = sys::VcpuControlCr {
        enable: 1,
        cr: 4,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_CR, 0, &ccr).0, 0);
    let cm = sys::VcpuControlMsr {
        enable: 1,
        msr: 0xc000_0082,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_MSR, 1, &cm).0, 0);
    let ss = sys::VcpuControlSingleStep {
        enable: 1,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_SINGLESTEP, 1, &ss).0, 0);
    let mut tool = t;
    let th = std::thread::spawn(move || {
        let mut seen = Vec::new();
        while let Some((h, p)) = tool.try_read() {
            let ev = sys::Event::read_from_prefix(&p).unwrap().0;
            seen.push(ev.event);
            let extra = match ev.event {
                // Let the written value through (CR/MSR new_value at offset 16).
                1 | 2 => p[sys::EVENT_SIZE + 16..sys::EVENT_SIZE + 24].to_vec(),
                _ => vec![],
            };
            tool.reply_event(h.seq, ev.vcpu, ev.event, 0, &extra);
            if seen.len() == 5 {
                break;
            }
        }
        seen
    });
    let rep = sim.run_workload(Workload::EveryEnabledEvent);
    assert!(rep.failed.is_empty(), "{:?}", rep.failed);
    let mut seen = th.join().unwrap();
    seen.sort();
    // vCPU 1 single-steps both its WRMSR and its idle-loop step.
    assert_eq!(seen, vec![1, 2, 11, 11, 13]);
    assert_eq!(rep.answered.values().sum::<u64>(), 5);
    // CR4.PGE toggled; LSTAR written with the value the workload chose.
    assert_eq!(sim.vm().vcpus[0].sregs.cr4, 0x6a0 ^ 0x80);
    assert_eq!(
        sim.vm().vcpus[1].msrs[&0xc000_0082],
        crate::guest::SYM_ENTRY_SYSCALL ^ 0x1000
    );
    let summary = sim.stats().to_string();
    assert!(summary.contains("SINGLESTEP"), "{summary}");
}

#[test]
fn two_pauses_give_two_events_in_turn() {
    let (sim, mut t) = connect(SimConfig::default());
    let pause = sys::VcpuPause {
        wait: 1,
        ..Default::default()
    };
    // Batch of two pauses for vCPU 0 (wait = low byte of vCPU index under the quirk).
    let mut p = sys::VcpuHdr::default().as_bytes().to_vec();
    p.extend_from_slice(pause.as_bytes());
    t.send(sys::KVMI_VCPU_PAUSE, &p);
    t.send(sys::KVMI_VCPU_PAUSE, &p);
    // Two replies and one event (the second PAUSE waits for the first reply), in
    // any interleaving.
    let mut replies = 0;
    let mut events = Vec::new();
    while replies < 2 || events.is_empty() {
        let (h, p) = t.read();
        if h.id == sys::KVMI_EVENT {
            events.push((h, sys::Event::read_from_prefix(&p).unwrap().0));
        } else {
            assert_eq!((h.id, &p[..4]), (sys::KVMI_VCPU_PAUSE, &[0u8; 4][..]));
            replies += 1;
        }
    }
    assert_eq!(events.len(), 1);
    let (h1, e1) = events[0];
    assert_eq!(e1.event, sys::KVMI_EVENT_PAUSE_VCPU);
    // The second PAUSE comes only after the first is answered.
    t.reply_event(h1.seq, 0, e1.event, 0, &[]);
    let (h2, e2, _) = t.read_event();
    assert_eq!(e2.event, sys::KVMI_EVENT_PAUSE_VCPU);
    assert!(h2.seq > h1.seq);
    t.reply_event(h2.seq, 0, e2.event, 0, &[]);
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    let r = sim.recent_replies();
    assert_eq!(r.len(), 2);
    assert!(r.iter().all(|r| r.event == sys::KVMI_EVENT_PAUSE_VCPU));
}

#[test]
fn event_reply_with_wrong_seq_closes() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_HYPERCALL);
    let h = sim.trigger(0, SimEvent::Hypercall).unwrap();
    let (hd, ev, _) = t.read_event();
    t.reply_event(hd.seq + 7, 0, ev.event, 0, &[]);
    assert!(matches!(h.wait_reply(T), Err(SimError::Closed(_))));
    assert!(sim.closed().unwrap().contains("seq"));
}

#[test]
fn v6_inject_has_no_trap_and_check_event_range() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    let inj = sys::v6::InjectException {
        nr: 13,
        has_error: 1,
        error_code: 0x18,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_INJECT_EXCEPTION, 0, &inj).0, 0);
    // Next frame is the reply to this command, not a TRAP event.
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    assert_eq!(sim.vm().vcpus[0].injections[0].error_code, 0x18);
    let ce = |id| sys::VmCheckEvent {
        id,
        ..Default::default()
    };
    assert_eq!(t.cmd(sys::KVMI_VM_CHECK_EVENT, ce(11).as_bytes()).0, 0);
    let r = t.cmd(sys::KVMI_VM_CHECK_EVENT, ce(12).as_bytes()).0;
    assert_eq!(r, -sys::KVM_EINVAL);
}

#[test]
fn armed_fault_corrupts_next_frame_only() {
    let (sim, mut t) = connect(SimConfig::default());
    sim.arm_fault(Fault::CorruptNext {
        offset: 8,
        mask: 0x80,
    });
    let seq = t.send(sys::KVMI_GET_VERSION, &[]);
    let (h, p) = t.read();
    assert_eq!((h.id, h.seq), (sys::KVMI_GET_VERSION, seq));
    assert_eq!(p[0], 0x80, "error code byte corrupted");
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    sim.arm_fault(Fault::DropAfterNext);
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
    assert!(t.try_read().is_none());
    assert!(sim.closed().is_some());
}

#[test]
fn remaining_commands_round_trip() {
    let (sim, mut t) = connect(SimConfig::default());
    let u64_of = |d: &[u8]| u64::read_from_bytes(&d[..8]).unwrap();
    // VCPU_GET_INFO
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_INFO, 0, &());
    assert_eq!((e, u64_of(&d)), (0, 2_400_000_000));
    // GET_CPUID: leaf 0 present, 0x1234 absent.
    let c = |function| sys::VcpuGetCpuid { function, index: 0 };
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_CPUID, 0, &c(0));
    let r = sys::VcpuGetCpuidReply::read_from_bytes(&d).unwrap();
    assert_eq!((e, r.ebx), (0, 0x756e_6547));
    let e = t.vcmd(sys::KVMI_VCPU_GET_CPUID, 0, &c(0x1234)).0;
    assert_eq!(e, -sys::KVM_ENOENT);
    // SET_XSAVE then GET_XSAVE.
    let e = t.vcmd(sys::KVMI_VCPU_SET_XSAVE, 1, &[0xabu8; 64]).0;
    assert_eq!(e, 0);
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_XSAVE, 1, &());
    assert_eq!((e, d.len(), d[63], d[64]), (0, 4096, 0xab, 0));
    // GET_XCR
    let x = |xcr| sys::VcpuGetXcr {
        xcr,
        padding: [0; 7],
    };
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_XCR, 0, &x(0));
    assert_eq!((e, u64_of(&d)), (0, 7));
    assert_eq!(t.vcmd(sys::KVMI_VCPU_GET_XCR, 0, &x(1)).0, -sys::KVM_EINVAL);
    // GET_MTRR_TYPE
    let (e, d) = t.vcmd(
        sys::KVMI_VCPU_GET_MTRR_TYPE,
        0,
        &sys::VcpuGetMtrrType { gpa: 0x1000 },
    );
    assert_eq!((e, d.len(), d[0]), (0, 8, 6));
    // CONTROL_MSR range check (strict bounds).
    let m = |msr| sys::VcpuControlMsr {
        enable: 1,
        msr,
        ..Default::default()
    };
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_CONTROL_MSR, 0, &m(0x1fff)).0,
        -sys::KVM_EINVAL
    );
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_MSR, 0, &m(0x174)).0, 0);
    // EPT views.
    let (e, d) = t.cmd(sys::KVMI_CREATE_EPT_VIEW, &[]);
    assert_eq!((e, d.len(), d[0]), (0, 8, 1));
    let sv = |view| sys::VcpuSetEptView {
        view,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_SET_EPT_VIEW, 0, &sv(1)).0, 0);
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_SET_EPT_VIEW, 0, &sv(3)).0,
        -sys::KVM_EINVAL
    );
    let (e, d) = t.vcmd(sys::KVMI_VCPU_GET_EPT_VIEW, 0, &());
    assert_eq!((e, d[0]), (0, 1));
    let dv = sys::DestroyEptView {
        view: 1,
        padding: [0; 3],
    };
    assert_eq!(
        t.cmd(sys::KVMI_DESTROY_EPT_VIEW, dv.as_bytes()).0,
        -sys::KVM_EBUSY
    );
    let cev = sys::VcpuControlEptView {
        view: 1,
        visible: 1,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CONTROL_EPT_VIEW, 0, &cev).0, 0);
    assert!(sim.vm().vcpus[0].visible_views.contains(&1));
    // #VE
    let ve = sys::VcpuSetVeInfo {
        gpa: 0x3000,
        trigger_vmexit: 1,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_SET_VE_INFO, 0, &ve).0, 0);
    assert_eq!(sim.vm().vcpus[0].ve_info, Some((0x3000, true)));
    assert_eq!(t.vcmd(sys::KVMI_VCPU_DISABLE_VE, 0, &()).0, 0);
    let sve = sys::VmSetPageSve {
        view: 0,
        suppress: 1,
        gpa: 0x3000,
        ..Default::default()
    };
    assert_eq!(t.cmd(sys::KVMI_VM_SET_PAGE_SVE, sve.as_bytes()).0, 0);
    // SPP is not a default feature.
    let spp = sys::VmControlSpp {
        enable: 1,
        ..Default::default()
    };
    let e = t.cmd(sys::KVMI_VM_CONTROL_SPP, spp.as_bytes()).0;
    assert_eq!(e, -sys::KVM_EOPNOTSUPP);
    let e = t.cmd(sys::KVMI_VM_SET_PAGE_WRITE_BITMAP, &[0; 8]).0;
    assert_eq!(e, -sys::KVM_EOPNOTSUPP);
    // Map token, physical layout, GFN allocation.
    let (e, d) = t.cmd(sys::KVMI_VM_GET_MAP_TOKEN, &[]);
    assert_eq!((e, d.len()), (0, 32));
    let (e, d) = t.cmd(sys::KVMI_QUERY_PHYSICAL, &5u64.to_le_bytes());
    let q = sys::QueryPhysicalReply::read_from_bytes(&d).unwrap();
    assert_eq!((e, q.gfn, q.size), (0, 0, 0x200));
    let (e, d) = t.cmd(sys::KVMI_GET_NEXT_AVAILABLE_GFN, &[]);
    assert_eq!((e, u64_of(&d)), (0, 0x200));
    let g = sys::VcpuAllocGfn { gfn: 0x200 };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_ALLOC_GFN, 0, &g).0, 0);
    assert!(sim.vm().memory.is_backed(0x200));
    assert_eq!(t.vcmd(sys::KVMI_VCPU_ALLOC_GFN, 0, &g).0, -sys::KVM_EINVAL);
    assert_eq!(t.vcmd(sys::KVMI_VCPU_FREE_GFN, 0, &g).0, 0);
    let cg = |new_gfn| sys::VcpuChangeGfn {
        old_gfn: 1,
        new_gfn,
        ..Default::default()
    };
    assert_eq!(t.vcmd(sys::KVMI_VCPU_CHANGE_GFN, 0, &cg(2)).0, 0);
    assert_eq!(
        t.vcmd(sys::KVMI_VCPU_CHANGE_GFN, 0, &cg(u64::MAX)).0,
        -sys::KVM_EPERM
    );
    // Singlestep padding.
    let ss = sys::VcpuControlSingleStep {
        enable: 1,
        padding: [0, 1, 0, 0, 0, 0, 0],
    };
    let e = t.vcmd(sys::KVMI_VCPU_CONTROL_SINGLESTEP, 0, &ss).0;
    assert_eq!(e, -sys::KVM_EINVAL);
    // v6-only id on kvmi-v7: ENOSYS.
    assert_eq!(t.cmd(12, &[]).0, -sys::KVM_ENOSYS);
}

#[test]
fn oversized_message_closes_socket() {
    let (sim, mut t) = connect(SimConfig::default());
    let h = sys::MsgHdr {
        id: sys::KVMI_GET_VERSION,
        size: 8185,
        seq: 1,
    };
    t.s.write_all(h.as_bytes()).unwrap();
    assert!(t.try_read().is_none());
    assert!(sim.wait_closed(T).unwrap().contains("KVMI_MSG_SIZE"));
}

#[test]
fn unhook_and_create_vcpu_are_vm_events() {
    let (sim, mut t) = connect(SimConfig::default());
    assert!(matches!(sim.unhook(T), Err(SimError::NotDelivered(_))));
    for ev in [sys::KVMI_EVENT_UNHOOK, sys::KVMI_EVENT_CREATE_VCPU] {
        let ce = sys::VmControlEvents {
            event_id: ev.into(),
            enable: 1,
            ..Default::default()
        };
        assert_eq!(t.cmd(sys::KVMI_VM_CONTROL_EVENTS, ce.as_bytes()).0, 0);
    }
    // A vCPU event id through VM_CONTROL_EVENTS: EINVAL.
    let ce = sys::VmControlEvents {
        event_id: sys::KVMI_EVENT_CR.into(),
        enable: 1,
        ..Default::default()
    };
    assert_eq!(
        t.cmd(sys::KVMI_VM_CONTROL_EVENTS, ce.as_bytes()).0,
        -sys::KVM_EINVAL
    );
    let h = sim.trigger(1, SimEvent::CreateVcpu).unwrap();
    let (hd, ev, _) = t.read_event();
    assert_eq!((ev.vcpu, ev.event), (1, sys::KVMI_EVENT_CREATE_VCPU));
    t.reply_event(hd.seq, 1, ev.event, 0, &[]);
    h.wait_reply(T).unwrap();
    let th = std::thread::spawn(move || {
        let (_, ev, _) = t.read_event();
        assert_eq!((ev.vcpu, ev.event), (0, sys::KVMI_EVENT_UNHOOK));
        drop(t);
    });
    sim.unhook(T).unwrap();
    th.join().unwrap();
    assert!(sim.closed().is_some());
}

#[test]
fn v6_pf_retry_with_singlestep_sends_singlestep_event() {
    let cfg = SimConfig {
        abi: Abi::V6,
        ..Default::default()
    };
    let (sim, mut t) = connect(cfg);
    t.enable_event(0, sys::KVMI_EVENT_PF);
    sim.vm().page_access.insert((0, 7), 0);
    let h = sim
        .trigger(
            0,
            SimEvent::Pf {
                gva: 0x7000,
                gpa: 0x7000,
                access: sys::KVMI_PAGE_ACCESS_R,
            },
        )
        .unwrap();
    let (hd, ev, _) = t.read_event();
    let pr = sys::v6::EventPfReply {
        singlestep: 1,
        ..Default::default()
    };
    t.reply_event(
        hd.seq,
        0,
        ev.event,
        sys::KVMI_EVENT_ACTION_RETRY,
        pr.as_bytes(),
    );
    assert!(h.wait_reply(T).unwrap().pf.unwrap().singlestep);
    let (hd, ev, spec) = t.read_event();
    assert_eq!(ev.event, sys::KVMI_EVENT_SINGLESTEP);
    assert!(spec.is_empty(), "no SINGLESTEP payload in v6");
    t.reply_event(hd.seq, 0, ev.event, 0, &[]);
    assert_eq!(t.cmd(sys::KVMI_GET_VERSION, &[]).0, 0);
}

mod guest;
