//! Tests against a tiny hand-rolled tool: a `UnixListener` that accepts the simulator,
//! answers the handshake and speaks raw frames built from `kvmi-sys` structs.

mod commands;
mod events;
mod guest;
mod handshake_and_wire;

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
