//! Tests against a minimal scripted QEMU + kernel peer.

use crate::codec::{self, Abi};
use crate::event::{Action, EventKind, PfReply, Reply};
use crate::{Batch, Config, Connection, Listener, ProtoError};
use kvmi_sys as sys;
use proptest::prelude::*;
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

#[test]
fn listener_mode_stale_path_and_timeout() {
    use std::os::unix::fs::PermissionsExt;
    let path = sock_path();
    {
        let _l1 = std::os::unix::net::UnixListener::bind(&path).unwrap();
    }
    assert!(path.exists());
    let l = Listener::bind(&path, cfg(false)).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(matches!(
        l.accept(Duration::from_millis(30)),
        Err(ProtoError::Timeout(_))
    ));
    drop(l);
    assert!(!path.exists());
    std::fs::write(&path, b"x").unwrap();
    assert!(Listener::bind(&path, cfg(false)).is_err());
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn listener_accepts_many_vms() {
    let path = sock_path();
    let l = Listener::bind(&path, cfg(false)).unwrap();
    let hosts: Vec<_> = (0..3)
        .map(|_| {
            let p = path.clone();
            thread::spawn(move || {
                let mut h = Host::connect(&p);
                h.serve_version(Abi::V7);
                h
            })
        })
        .collect();
    let conns: Vec<_> = (0..3).map(|_| l.accept(T).unwrap()).collect();
    assert!(conns.iter().all(|c| c.abi() == Abi::V7));
    for h in hosts {
        h.join().unwrap();
    }
}

#[test]
fn handshake_size_tolerance() {
    use crate::handshake::{parse_hookup, read_hookup};
    // kvmi-v12: 104 bytes; exactly struct_size bytes are consumed.
    let mut bytes = hookup_bytes(104, "v12");
    bytes.extend_from_slice(b"NEXT");
    let mut cur = std::io::Cursor::new(&bytes);
    let info = read_hookup(&mut cur).unwrap();
    assert_eq!(info.name, "v12");
    let mut rest = Vec::new();
    cur.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"NEXT");
    // Short (v6-like) struct: 32 bytes, no name.
    let short = hookup_bytes(96, "x")[..32].to_vec();
    let mut s = short.clone();
    s[..4].copy_from_slice(&32u32.to_ne_bytes());
    let (info, n) = parse_hookup(&s).unwrap().unwrap();
    assert_eq!((n, info.name.as_str(), info.struct_size), (32, "", 32));
    for bad in [16u32, 31, 64 * 1024 + 1, u32::MAX] {
        let b = bad.to_ne_bytes();
        assert!(matches!(parse_hookup(&b), Err(ProtoError::Handshake(_))));
        assert!(read_hookup(&mut &b[..]).is_err());
    }
    assert!(parse_hookup(&hookup_bytes(96, "a")[..50])
        .unwrap()
        .is_none());
    assert!(matches!(
        read_hookup(&mut &hookup_bytes(96, "a")[..50]),
        Err(ProtoError::Handshake(_))
    ));
}

#[test]
fn cookie_hash_is_sha1() {
    assert_eq!(
        crate::handshake::cookie_hash(b"abc"),
        [
            0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
            0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
        ]
    );
    assert_eq!(crate::handshake::reply_bytes(None)[4..], [0u8; 20]);
}

#[test]
fn encode_limits() {
    assert!(codec::encode(2, 1, &vec![0; codec::MAX_TX_PAYLOAD]).is_ok());
    assert!(matches!(
        codec::encode(2, 1, &vec![0; codec::MAX_TX_PAYLOAD + 1]),
        Err(ProtoError::FrameTooLarge { .. })
    ));
    assert!(codec::encode_reply(2, 1, 0, &vec![0; 8192]).is_ok());
    assert!(codec::encode_reply(2, 1, 0, &vec![0; 8193]).is_err());
    assert!(matches!(
        codec::parse_reply(&[0; 7]),
        Err(ProtoError::Truncated { .. })
    ));
    assert_eq!(
        codec::parse_reply(&(-22i64).to_ne_bytes()).unwrap(),
        Err(-22)
    );
    assert_eq!(crate::error::kvm_error_name(-1000), "KVM_ENOSYS");
    assert_eq!(crate::error::kvm_error_name(i32::MIN), "unknown error");
}

proptest! {
    #[test]
    fn prop_encode_decode_round_trip(id: u16, seq: u32, payload in proptest::collection::vec(any::<u8>(), 0..=codec::MAX_TX_PAYLOAD), tail in proptest::collection::vec(any::<u8>(), 0..16)) {
        let mut m = codec::encode(id, seq, &payload).unwrap();
        let len = m.len();
        m.extend_from_slice(&tail);
        let (f, used) = codec::decode(&m).unwrap().unwrap();
        prop_assert_eq!(used, len);
        prop_assert_eq!((f.hdr.id, f.hdr.seq, usize::from(f.hdr.size)), (id, seq, payload.len()));
        prop_assert_eq!(f.payload, &payload[..]);
        // Any strict prefix is incomplete, never an error.
        prop_assert!(codec::decode(&m[..len - 1]).unwrap().is_none());
    }

    #[test]
    fn prop_reply_round_trip(id: u16, seq: u32, err in -2000i32..2000, data in proptest::collection::vec(any::<u8>(), 0..=8192)) {
        let m = codec::encode_reply(id, seq, err, &data).unwrap();
        let (f, _) = codec::decode(&m).unwrap().unwrap();
        match codec::parse_reply(f.payload).unwrap() {
            Ok(d) => { prop_assert_eq!(err, 0); prop_assert_eq!(d, &data[..]); }
            Err(e) => prop_assert_eq!(e, err),
        }
    }

    #[test]
    fn prop_event_reply_round_trip(seq: u32, vcpu: u16, event in 0u8..14, new_val: u64) {
        let ev = crate::EventInfo {
            seq, abi: Abi::V7,
            common: sys::Event { vcpu, event, size: 544, ..Default::default() },
            kind: EventKind::Unknown(event),
        };
        let mut out = Vec::new();
        ev.encode_reply(&Reply::with_new_value(Action::Retry, new_val), &mut out).unwrap();
        let (f, _) = codec::decode(&out).unwrap().unwrap();
        prop_assert_eq!((f.hdr.id, f.hdr.seq, f.hdr.size), (sys::KVMI_EVENT_REPLY, seq, 24));
        prop_assert_eq!(u16::from_ne_bytes([f.payload[0], f.payload[1]]), vcpu);
        prop_assert_eq!(f.payload[8], sys::KVMI_EVENT_ACTION_RETRY);
        prop_assert_eq!(u64::from_ne_bytes(f.payload[16..24].try_into().unwrap()), new_val);
    }

    #[test]
    fn prop_decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200), seq: u32) {
        let _ = codec::decode(&bytes);
        let _ = codec::parse_reply(&bytes);
        let _ = crate::event::parse_event(seq, &bytes, Abi::V7);
        let _ = crate::event::parse_event(seq, &bytes, Abi::V6);
        let _ = crate::handshake::parse_hookup(&bytes);
        let _ = crate::handshake::read_hookup(&mut &bytes[..]);
    }

    #[test]
    fn prop_events_parse_for_every_id(id in 0u8..=255, vcpu: u16, extra in proptest::collection::vec(any::<u8>(), 0..40)) {
        let common = sys::Event { size: 544, vcpu, event: id, ..Default::default() };
        let payload = [common.as_bytes(), &extra[..]].concat();
        for abi in [Abi::V6, Abi::V7] {
            match crate::event::parse_event(1, &payload, abi) {
                Ok(ev) => prop_assert_eq!(ev.vcpu(), vcpu),
                Err(e) => prop_assert!(matches!(e, ProtoError::Truncated { .. }), "{e}"),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random bytes from the host after the handshake: the reader never panics or hangs;
    /// the tool sees whole events and then a typed disconnect.
    #[test]
    fn prop_garbage_stream_yields_typed_errors(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let (c, mut h) = pair(Abi::V7);
        h.s.write_all(&bytes).unwrap();
        drop(h);
        loop {
            match c.next_event(T) {
                Ok(_) => continue,
                Err(ProtoError::Disconnected(_)) => break,
                Err(e) => prop_assert!(false, "unexpected {e}"),
            }
        }
        prop_assert!(matches!(c.get_max_gfn(), Err(ProtoError::Disconnected(_))));
    }
}

#[test]
fn vsock_error_names_the_cause() {
    let e = ProtoError::Vsock {
        op: "bind",
        port: 9,
        source: std::io::Error::from_raw_os_error(libc::ENODEV),
    };
    assert!(e.is_vsock_unavailable());
    let s = e.to_string();
    assert!(s.starts_with("vsock bind on port 9 failed: "), "{s}");
    assert!(s.contains("no vsock transport"), "{s}");
    let e = ProtoError::Vsock {
        op: "bind",
        port: 9,
        source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
    };
    assert!(!e.is_vsock_unavailable());
    assert!(!e.to_string().contains("no vsock transport"));
    assert!(!ProtoError::Timeout(T).is_vsock_unavailable());
}

#[test]
fn batch_failure_display() {
    let e = ProtoError::BatchFailed(vec![
        crate::BatchFailure {
            index: Some(2),
            seq: 7,
            id: sys::KVMI_VCPU_SET_REGISTERS,
            err: -sys::KVM_EINVAL,
        },
        crate::BatchFailure {
            index: None,
            seq: 5,
            id: sys::KVMI_VM_CONTROL_CMD_RESPONSE,
            err: -sys::KVM_EPERM,
        },
    ]);
    assert_eq!(
        e.to_string(),
        format!(
            "2 batched command(s) failed: command KVMI_VCPU_SET_REGISTERS ({}, seq 7, batch \
             index 2) failed with KVM_EINVAL (-22); command KVMI_VM_CONTROL_CMD_RESPONSE (27, \
             seq 5) failed with KVM_EPERM (-1)",
            sys::KVMI_VCPU_SET_REGISTERS
        )
    );
}
