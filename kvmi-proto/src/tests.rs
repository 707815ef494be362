//! Tests against a minimal scripted QEMU + kernel peer.

use crate::codec::{self, Abi};
use crate::event::{Action, EventKind, PfReply, Reply};
use crate::{Batch, Config, Connection, Listener, ProtoError};
use kvmi_sys as sys;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use zerocopy::{FromBytes, IntoBytes};

const T: Duration = Duration::from_secs(5);

/// The receive path: desynchronised streams, many threads sharing one socket, deadlines.
mod receive;
mod setup;

fn sock_path() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    std::env::temp_dir().join(format!(
        "kvmi-proto-test-{}-{}.sock",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Scripted host: QEMU for the handshake, then the kernel.
struct Host {
    s: UnixStream,
    event_seq: u32,
}

fn hookup_bytes(struct_size: u32, name: &str) -> Vec<u8> {
    let mut h = sys::QemuToIntrospector {
        struct_size,
        uuid: *b"0123456789abcdef",
        padding: 0,
        start_time: 1_700_000_000,
        name: [0; 64],
    };
    h.name[..name.len()].copy_from_slice(name.as_bytes());
    let mut v = h.as_bytes().to_vec();
    v.resize(struct_size as usize, 0xee);
    v
}

impl Host {
    fn connect(path: &std::path::Path) -> Host {
        let mut s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        s.write_all(&hookup_bytes(96, "vm-test")).unwrap();
        let mut reply = [0u8; 24];
        s.read_exact(&mut reply).unwrap();
        let r = sys::QemuFromIntrospector::read_from_bytes(&reply[..]).unwrap();
        assert_eq!(r.struct_size, 24);
        assert_eq!(r.cookie_hash, crate::handshake::cookie_hash(b"secret"));
        Host { s, event_seq: 0 }
    }

    fn recv(&mut self) -> (sys::MsgHdr, Vec<u8>) {
        let mut h = [0u8; 8];
        self.s.read_exact(&mut h).unwrap();
        let hdr = sys::MsgHdr::read_from_bytes(&h[..]).unwrap();
        let mut p = vec![0; hdr.size as usize];
        self.s.read_exact(&mut p).unwrap();
        (hdr, p)
    }

    fn reply(&mut self, hdr: &sys::MsgHdr, err: i32, data: &[u8]) {
        let m = codec::encode_reply(hdr.id, hdr.seq, err, data).unwrap();
        self.s.write_all(&m).unwrap();
    }

    /// Sends an event; returns its seq.
    fn event(&mut self, vcpu: u16, id: u8, specific: &[u8]) -> u32 {
        self.event_seq += 1;
        let mut ev = sys::Event {
            size: sys::EVENT_SIZE as u16,
            vcpu,
            event: id,
            ..Default::default()
        };
        ev.arch.view = 2;
        ev.arch.regs.rip = 0x1000;
        let m = codec::encode(
            sys::KVMI_EVENT,
            self.event_seq,
            &[ev.as_bytes(), specific].concat(),
        )
        .unwrap();
        self.s.write_all(&m).unwrap();
        self.event_seq
    }

    fn serve_version(&mut self, abi: Abi) {
        let (h, _) = self.recv();
        assert_eq!(h.id, sys::KVMI_GET_VERSION);
        match abi {
            Abi::V6 => self.reply(
                &h,
                0,
                sys::v6::GetVersionReply {
                    version: 1,
                    padding: 0,
                }
                .as_bytes(),
            ),
            _ => {
                let r = sys::GetVersionReply {
                    version: 1,
                    padding: 0,
                    features: sys::Features {
                        eptp: 1,
                        singlestep: 1,
                        ..Default::default()
                    },
                };
                self.reply(&h, 0, r.as_bytes())
            }
        }
        // The setup asks for the vCPU count next.
        let (h, _) = self.recv();
        assert_eq!(h.id, sys::KVMI_VM_GET_INFO);
        let r = sys::VmGetInfoReply {
            vcpu_count: 2,
            padding: [0; 3],
        };
        self.reply(&h, 0, r.as_bytes());
    }
}

fn cfg(probe: bool) -> Config {
    Config {
        secret: Some(b"secret".to_vec()),
        probe,
        request_timeout: T,
        ..Config::default()
    }
}

/// A connection plus the host, with `setup` run by the host thread during accept.
fn pair_with(config: Config, setup: impl FnOnce(&mut Host) + Send + 'static) -> (Connection, Host) {
    let path = sock_path();
    let l = Listener::bind(&path, config).unwrap();
    let p2 = path.clone();
    let h = thread::spawn(move || {
        let mut host = Host::connect(&p2);
        setup(&mut host);
        host
    });
    let conn = l.accept(T).unwrap();
    (conn, h.join().unwrap())
}

fn pair(abi: Abi) -> (Connection, Host) {
    pair_with(cfg(false), move |h| h.serve_version(abi))
}

#[test]
fn handshake_version_and_features_v7() {
    let (c, _h) = pair(Abi::V7);
    assert_eq!(c.abi(), Abi::V7);
    assert_eq!(c.version(), 1);
    let f = c.features().unwrap();
    assert_eq!((f.eptp, f.singlestep, f.spp), (1, 1, 0));
    assert_eq!(c.hookup().name, "vm-test");
    assert_eq!(c.hookup().uuid, *b"0123456789abcdef");
    assert_eq!(c.hookup().start_time, 1_700_000_000);
    assert_eq!(
        c.hookup().uuid_string(),
        "30313233-3435-3637-3839-616263646566"
    );
    assert_eq!(c.peer_credentials().unwrap().pid, std::process::id() as i32);
}

#[test]
fn detects_v6() {
    let (c, _h) = pair(Abi::V6);
    assert_eq!(c.abi(), Abi::V6);
    assert!(c.features().is_none());
}

#[test]
fn probe_caches_results() {
    let (c, _h) = pair_with(cfg(true), |h| {
        h.serve_version(Abi::V7);
        for _ in 0..(sys::KVMI_COMMAND_IDS.len() + sys::KVMI_EVENT_IDS.len()) {
            let (hdr, p) = h.recv();
            let id = u16::from_ne_bytes([p[0], p[1]]);
            let deny = (hdr.id == sys::KVMI_VM_CHECK_COMMAND
                && id == sys::KVMI_VCPU_CONTROL_SINGLESTEP)
                || (hdr.id == sys::KVMI_VM_CHECK_EVENT && id == u16::from(sys::KVMI_EVENT_CPUID));
            h.reply(&hdr, if deny { -sys::KVM_EPERM } else { 0 }, &[]);
        }
    });
    assert!(!c
        .command_allowed(sys::KVMI_VCPU_CONTROL_SINGLESTEP)
        .unwrap());
    assert!(c.command_allowed(sys::KVMI_VM_READ_PHYSICAL).unwrap());
    assert!(!c.event_allowed(sys::KVMI_EVENT_CPUID).unwrap());
    assert!(c.event_allowed(sys::KVMI_EVENT_PF).unwrap());
    assert_eq!(c.probe().commands.len(), sys::KVMI_COMMAND_IDS.len());
}

#[test]
fn read_physical_and_errors() {
    let (c, mut h) = pair(Abi::V7);
    let t = thread::spawn(move || {
        let (hdr, p) = h.recv();
        assert_eq!(hdr.id, sys::KVMI_VM_READ_PHYSICAL);
        let r = sys::VmReadPhysical::read_from_bytes(&p[..]).unwrap();
        assert_eq!((r.gpa, r.size), (0x2000, 4));
        h.reply(&hdr, 0, &[1, 2, 3, 4]);
        let (hdr, _) = h.recv();
        h.reply(&hdr, -sys::KVM_ENOENT, &[]);
        h
    });
    assert_eq!(c.read_physical(0x2000, 4).unwrap(), vec![1, 2, 3, 4]);
    let e = c.read_physical(0x3000, 8).unwrap_err();
    assert_eq!(e.kvm_error(), Some(-sys::KVM_ENOENT));
    assert!(matches!(
        c.read_physical(0xfff, 2),
        Err(ProtoError::InvalidArgument(_))
    ));
    t.join().unwrap();
}

#[test]
fn get_registers_with_msrs() {
    let (c, mut h) = pair(Abi::V7);
    let t = thread::spawn(move || {
        let (hdr, p) = h.recv();
        assert_eq!(hdr.id, sys::KVMI_VCPU_GET_REGISTERS);
        assert_eq!(p.len(), 8 + 8 + 8);
        assert_eq!(u16::from_ne_bytes([p[0], p[1]]), 1); // vcpu
        let mut r = sys::VcpuGetRegistersReply {
            mode: 8,
            ..Default::default()
        };
        r.regs.rip = 0xffff_8000_0000_1000;
        r.msrs.nmsrs = 2;
        let mut data = r.as_bytes().to_vec();
        for (i, idx) in [0xc000_0080u32, 0xc000_0082].iter().enumerate() {
            let e = sys::KvmMsrEntry {
                index: *idx,
                reserved: 0,
                data: i as u64 + 7,
            };
            data.extend_from_slice(e.as_bytes());
        }
        h.reply(&hdr, 0, &data);
        h
    });
    let r = c.get_registers(1, &[0xc000_0080, 0xc000_0082]).unwrap();
    assert_eq!(r.mode, 8);
    assert_eq!(r.regs.rip, 0xffff_8000_0000_1000);
    assert_eq!(r.msrs.len(), 2);
    assert_eq!((r.msrs[1].index, r.msrs[1].data), (0xc000_0082, 8));
    t.join().unwrap();
}

#[test]
fn events_interleave_with_replies_and_cr_reply_bytes() {
    let (c, mut h) = pair(Abi::V7);
    let t = thread::spawn(move || {
        let (hdr, _) = h.recv();
        assert_eq!(hdr.id, sys::KVMI_VM_GET_INFO);
        // An event arrives before the reply.
        let cr = sys::EventCr {
            cr: 3,
            old_value: 0x1000,
            new_value: 0x2000,
            ..Default::default()
        };
        let seq = h.event(1, sys::KVMI_EVENT_CR, cr.as_bytes());
        h.reply(
            &hdr,
            0,
            sys::VmGetInfoReply {
                vcpu_count: 4,
                padding: [0; 3],
            }
            .as_bytes(),
        );
        let (rh, rp) = h.recv();
        assert_eq!((rh.id, rh.seq, rh.size), (sys::KVMI_EVENT_REPLY, seq, 24));
        let vh = sys::VcpuHdr::read_from_bytes(&rp[..8]).unwrap();
        let er = sys::EventReply::read_from_bytes(&rp[8..16]).unwrap();
        let extra = sys::EventCrReply::read_from_bytes(&rp[16..]).unwrap();
        assert_eq!(vh.vcpu, 1);
        assert_eq!(
            (er.action, er.event),
            (sys::KVMI_EVENT_ACTION_CONTINUE, sys::KVMI_EVENT_CR)
        );
        assert_eq!(extra.new_val, 0x3000);
        h
    });
    assert_eq!(c.get_guest_info().unwrap(), 4);
    let ev = c.next_event(T).unwrap();
    assert_eq!(ev.vcpu(), 1);
    assert_eq!(ev.common.arch.view, 2);
    let EventKind::Cr(cr) = ev.kind else {
        panic!("not a CR event: {:?}", ev.kind)
    };
    assert_eq!(cr.new_value, 0x2000);
    ev.reply_cr(Action::Continue, 0x3000).unwrap();
    t.join().unwrap();
}

#[test]
fn request_from_event_handler_and_concurrent_vcpus() {
    let (c, mut h) = pair(Abi::V7);
    let c = Arc::new(c);
    let host = thread::spawn(move || {
        let s0 = h.event(0, sys::KVMI_EVENT_PAUSE_VCPU, &[]);
        let s1 = h.event(1, sys::KVMI_EVENT_PAUSE_VCPU, &[]);
        // Both handlers issue a command, then reply; answer commands in reverse order.
        let mut cmds = vec![h.recv(), h.recv()];
        cmds.reverse();
        for (hdr, p) in &cmds {
            assert_eq!(hdr.id, sys::KVMI_VCPU_TRANSLATE_GVA);
            let gva = u64::from_ne_bytes(p[8..16].try_into().unwrap());
            h.reply(hdr, 0, &(gva + 1).to_ne_bytes());
        }
        let mut seqs = vec![h.recv().0.seq, h.recv().0.seq];
        seqs.sort();
        assert_eq!(seqs, vec![s0, s1]);
        h
    });
    let mut handlers = Vec::new();
    for _ in 0..2 {
        let c = Arc::clone(&c);
        handlers.push(thread::spawn(move || {
            let ev = c.next_event(T).unwrap();
            assert_eq!(ev.kind, EventKind::PauseVcpu);
            let gpa = c
                .translate_gva(ev.vcpu(), 0x100 * u64::from(ev.vcpu()))
                .unwrap();
            assert_eq!(gpa, 0x100 * u64::from(ev.vcpu()) + 1);
            ev.reply_continue().unwrap();
        }));
    }
    for t in handlers {
        t.join().unwrap();
    }
    host.join().unwrap();
}

#[test]
fn disconnect_wakes_waiters() {
    let (c, mut h) = pair(Abi::V7);
    let c = Arc::new(c);
    let c2 = Arc::clone(&c);
    let waiter = thread::spawn(move || c2.get_max_gfn());
    let (hdr, _) = h.recv();
    assert_eq!(hdr.id, sys::KVMI_VM_GET_MAX_GFN);
    drop(h);
    assert!(matches!(
        waiter.join().unwrap(),
        Err(ProtoError::Disconnected(_))
    ));
    assert!(matches!(c.next_event(T), Err(ProtoError::Disconnected(_))));
    assert!(matches!(c.get_max_gfn(), Err(ProtoError::Disconnected(_))));
    assert!(c.is_closed());
}

#[test]
fn timeout_then_stray_reply() {
    let (c, mut h) = pair(Abi::V7);
    let e = c
        .request(sys::KVMI_VM_GET_MAX_GFN, &[], Duration::from_millis(50))
        .unwrap_err();
    assert!(matches!(e, ProtoError::Timeout(_)));
    let (hdr, _) = h.recv();
    h.reply(&hdr, 0, &5u64.to_ne_bytes());
    let t = thread::spawn(move || {
        let (hdr, _) = h.recv();
        h.reply(&hdr, 0, &9u64.to_ne_bytes());
        h
    });
    assert_eq!(c.get_max_gfn().unwrap(), 9);
    assert_eq!(c.stray_replies(), 1);
    assert!(matches!(
        c.next_event(Duration::from_millis(10)),
        Err(ProtoError::Timeout(_))
    ));
    t.join().unwrap();
}

#[test]
fn batch_is_one_write_and_one_round_trip() {
    let (c, mut h) = pair(Abi::V7);
    let host = thread::spawn(move || {
        let seq = h.event(2, sys::KVMI_EVENT_XSETBV, &[]);
        let mut got = Vec::new();
        loop {
            let (hdr, p) = h.recv();
            let last = hdr.id == sys::KVMI_VM_CONTROL_CMD_RESPONSE && p[0] == 1;
            got.push((hdr, p));
            if last {
                break;
            }
        }
        let ids: Vec<u16> = got.iter().map(|(h, _)| h.id).collect();
        assert_eq!(
            ids,
            vec![
                sys::KVMI_VM_CONTROL_CMD_RESPONSE,
                sys::KVMI_VM_SET_PAGE_ACCESS,
                sys::KVMI_VCPU_PAUSE,
                sys::KVMI_EVENT_REPLY,
                sys::KVMI_VM_CONTROL_CMD_RESPONSE
            ]
        );
        let first = sys::VmControlCmdResponse::read_from_bytes(&got[0].1[..]).unwrap();
        assert_eq!(
            (first.enable, first.now, first.flags),
            (0, 1, sys::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR)
        );
        assert_eq!(got[3].0.seq, seq);
        let pa = sys::VmSetPageAccess::read_from_prefix(&got[1].1[..])
            .unwrap()
            .0;
        assert_eq!((pa.view, pa.count), (1, 2));
        assert_eq!(got[1].1.len(), 8 + 2 * 16);
        let last = got.last().unwrap().0;
        h.reply(&last, 0, &[]);
        h
    });
    let ev = c.next_event(T).unwrap();
    assert_eq!(ev.kind, EventKind::Xsetbv);
    let mut b = Batch::new(&c);
    b.set_page_access(
        1,
        &[
            (0x1000, sys::KVMI_PAGE_ACCESS_R),
            (0x2000, sys::KVMI_PAGE_ACCESS_RWX),
        ],
    )
    .unwrap()
    .pause_vcpu(0, true)
    .unwrap()
    .reply(ev, Action::Continue)
    .unwrap();
    assert_eq!(b.len(), 3);
    b.commit(T).unwrap();
    host.join().unwrap();
}

#[test]
fn reply_only_batch_is_unwrapped() {
    let (c, mut h) = pair(Abi::V7);
    let seq = h.event(0, sys::KVMI_EVENT_HYPERCALL, &[]);
    let ev = c.next_event(T).unwrap();
    let mut b = Batch::new(&c);
    b.reply(ev, Action::Continue).unwrap();
    b.commit(T).unwrap();
    let (hdr, p) = h.recv();
    assert_eq!((hdr.id, hdr.seq, p.len()), (sys::KVMI_EVENT_REPLY, seq, 16));
}

#[test]
fn oversized_frame_disconnects_with_typed_error() {
    let (c, mut h) = pair(Abi::V7);
    let hdr = sys::MsgHdr {
        id: 5,
        size: 9000,
        seq: 1,
    };
    h.s.write_all(hdr.as_bytes()).unwrap();
    match c.next_event(T) {
        Err(ProtoError::Disconnected(r)) => assert!(r.contains("exceeds"), "{r}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn malformed_event_disconnects() {
    let (c, mut h) = pair(Abi::V7);
    // CR event without its payload.
    h.event(0, sys::KVMI_EVENT_CR, &[]);
    assert!(matches!(c.next_event(T), Err(ProtoError::Disconnected(_))));
}

#[test]
fn event_queue_overflow_disconnects() {
    let mut config = cfg(false);
    config.event_queue = 2;
    let (c, mut h) = pair_with(config, |h| h.serve_version(Abi::V7));
    for v in 0..3 {
        h.event(v, sys::KVMI_EVENT_PAUSE_VCPU, &[]);
    }
    // Let all three reach the socket before anything is read: the first read then
    // routes all of them, and the third finds the queue full.
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(c.next_event(T).is_ok());
    assert!(c.next_event(T).is_ok());
    match c.next_event(T) {
        Err(ProtoError::Disconnected(r)) => assert!(r.contains("queue full"), "{r}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn v6_event_layouts_and_pf_reply() {
    let (c, mut h) = pair(Abi::V6);
    let pf = sys::v6::EventPf {
        gva: 0x7000,
        gpa: 0x3000,
        access: sys::KVMI_PAGE_ACCESS_W,
        padding1: 0,
        view: 1,
        padding2: 0,
    };
    let seq = h.event(0, sys::KVMI_EVENT_PF, pf.as_bytes());
    let ev = c.next_event(T).unwrap();
    assert_eq!(ev.common.arch.view, 0);
    assert_eq!(
        ev.kind,
        EventKind::Pf(crate::PfInfo {
            gva: 0x7000,
            gpa: 0x3000,
            access: sys::KVMI_PAGE_ACCESS_W,
            view: 1
        })
    );
    ev.reply_pf(
        Action::Retry,
        &PfReply {
            singlestep_v6: true,
            ctx_data: &[9; 4],
            ctx_addr: 0x7000,
            rep_complete: false,
        },
    )
    .unwrap();
    let (hdr, p) = h.recv();
    assert_eq!((hdr.seq, p.len()), (seq, 16 + 272));
    let pr = sys::v6::EventPfReply::read_from_bytes(&p[16..]).unwrap();
    assert_eq!((pr.singlestep, pr.ctx_size, pr.ctx_data[3]), (1, 4, 9));
    let trap = sys::v6::EventTrap {
        vector: 14,
        type_: 3,
        error_code: 2,
        padding: 0,
        cr2: 0x1234,
    };
    h.event(0, sys::KVMI_EVENT_TRAP, trap.as_bytes());
    let ev = c.next_event(T).unwrap();
    assert_eq!(
        ev.kind,
        EventKind::Trap(crate::TrapInfo {
            vector: 14,
            type_: Some(3),
            error_code: 2,
            cr2: 0x1234
        })
    );
    assert!(matches!(
        Reply::pf(
            Action::Continue,
            &PfReply {
                ctx_data: &[0; 257],
                ..Default::default()
            }
        ),
        Err(ProtoError::InvalidArgument(_))
    ));
    ev.reply_continue().unwrap();
    let (hdr, p) = h.recv();
    assert_eq!((hdr.id, p.len(), p[8]), (sys::KVMI_EVENT_REPLY, 16, 0));
}
