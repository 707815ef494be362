//! The receive path against the scripted host: desynchronised streams close at once,
//! many requesters and event loops share one socket, unbounded and zero timeouts.

use super::pair;
use crate::codec::{self, Abi};
use crate::event::EventKind;
use crate::ProtoError;
use kvmi_sys as sys;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;
use zerocopy::FromBytes;

#[test]
fn reply_to_unsent_seq_or_with_wrong_id_closes_at_once() {
    // A reply naming a seq never sent.
    let (c, mut h) = pair(Abi::V7);
    let c = Arc::new(c);
    let c2 = Arc::clone(&c);
    let waiter = thread::spawn(move || c2.get_max_gfn());
    let (hdr, _) = h.recv();
    let bogus = sys::MsgHdr {
        seq: hdr.seq + 1000,
        ..hdr
    };
    h.reply(&bogus, 0, &1u64.to_ne_bytes());
    match waiter.join().unwrap() {
        Err(ProtoError::Disconnected(r)) => assert!(r.contains("never sent"), "{r}"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(c.is_closed());
    // A reply whose id is not the request's.
    let (c, mut h) = pair(Abi::V7);
    let c = Arc::new(c);
    let c2 = Arc::clone(&c);
    let waiter = thread::spawn(move || c2.get_max_gfn());
    let (hdr, _) = h.recv();
    let wrong = sys::MsgHdr {
        id: sys::KVMI_VM_GET_INFO,
        ..hdr
    };
    h.reply(&wrong, 0, &1u64.to_ne_bytes());
    match waiter.join().unwrap() {
        Err(ProtoError::Disconnected(r)) => assert!(r.contains("does not match"), "{r}"),
        other => panic!("unexpected {other:?}"),
    }
    // A reply shorter than its error code.
    let (c, mut h) = pair(Abi::V7);
    let c = Arc::new(c);
    let c2 = Arc::clone(&c);
    let waiter = thread::spawn(move || c2.get_max_gfn());
    let (hdr, _) = h.recv();
    h.s.write_all(&codec::encode(hdr.id, hdr.seq, &[0; 4]).unwrap())
        .unwrap();
    assert!(matches!(
        waiter.join().unwrap(),
        Err(ProtoError::Disconnected(_))
    ));
    assert!(matches!(c.get_max_gfn(), Err(ProtoError::Disconnected(_))));
}

/// Many requesters and two event loops at once, answered out of order with events in
/// between: every reply reaches its own requester, every event one handler, whoever
/// happens to be reading the socket.
#[test]
fn concurrent_requesters_and_event_loops_share_the_socket() {
    const THREADS: u64 = 4;
    const PER_THREAD: u64 = 50;
    let (c, mut h) = pair(Abi::V7);
    let c = Arc::new(c);
    let host = thread::spawn(move || {
        let total = (THREADS * PER_THREAD) as usize;
        let mut answered = 0;
        let mut held = Vec::new();
        let mut events = 0u32;
        let mut replies_seen = 0;
        h.s.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        while answered < total || replies_seen < events {
            let mut hb = [0u8; 8];
            let got = match h.s.read(&mut hb[..1]) {
                Ok(1) => {
                    h.s.read_exact(&mut hb[1..]).unwrap();
                    true
                }
                Ok(_) => panic!("tool closed the socket"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
                Err(e) => panic!("{e}"),
            };
            if got {
                let hdr = sys::MsgHdr::read_from_bytes(&hb[..]).unwrap();
                let mut p = vec![0; hdr.size as usize];
                h.s.read_exact(&mut p).unwrap();
                if hdr.id == sys::KVMI_EVENT_REPLY {
                    replies_seen += 1;
                    continue;
                }
                assert_eq!(hdr.id, sys::KVMI_VCPU_TRANSLATE_GVA);
                held.push((hdr, u64::from_ne_bytes(p[8..16].try_into().unwrap())));
            }
            // Answer in bursts (3 held, or the tool went quiet), newest first, with an
            // event before each burst.
            if held.len() >= 3 || (!got && !held.is_empty()) {
                let vcpu = (events % 2) as u16;
                h.event(vcpu, sys::KVMI_EVENT_PAUSE_VCPU, &[]);
                events += 1;
                while let Some((hdr, gva)) = held.pop() {
                    h.reply(&hdr, 0, &(gva ^ 0xffff).to_ne_bytes());
                    answered += 1;
                }
            }
        }
        (events, h)
    });
    let stop = Arc::new(AtomicBool::new(false));
    let handled = Arc::new(AtomicU32::new(0));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let (c, stop, handled) = (Arc::clone(&c), Arc::clone(&stop), Arc::clone(&handled));
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match c.next_event(Duration::from_millis(20)) {
                        Ok(ev) => {
                            assert_eq!(ev.kind, EventKind::PauseVcpu);
                            ev.reply_continue().unwrap();
                            handled.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(ProtoError::Timeout(_)) => {}
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        })
        .collect();
    let requesters: Vec<_> = (0..THREADS)
        .map(|t| {
            let c = Arc::clone(&c);
            thread::spawn(move || {
                for i in 0..PER_THREAD {
                    let gva = (t << 32) | i;
                    assert_eq!(c.translate_gva(0, gva).unwrap(), gva ^ 0xffff);
                }
            })
        })
        .collect();
    for r in requesters {
        r.join().unwrap();
    }
    let (events, _h) = host.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.join().unwrap();
    }
    assert_eq!(handled.load(Ordering::Relaxed), events);
    assert_eq!(c.stray_replies(), 0);
    assert!(!c.is_closed());
}

#[test]
fn unbounded_timeouts_do_not_panic() {
    let (c, mut h) = pair(Abi::V7);
    h.event(0, sys::KVMI_EVENT_XSETBV, &[]);
    let ev = c.next_event(Duration::MAX).unwrap();
    assert_eq!(ev.kind, EventKind::Xsetbv);
    drop(ev);
    let (hdr, p) = h.recv();
    assert_eq!((hdr.id, p.len(), p[8]), (sys::KVMI_EVENT_REPLY, 16, 0));
    let t = thread::spawn(move || {
        let (hdr, _) = h.recv();
        h.reply(&hdr, 0, &3u64.to_ne_bytes());
        h
    });
    let data = c
        .request(sys::KVMI_VM_GET_MAX_GFN, &[], Duration::MAX)
        .unwrap();
    assert_eq!(data, 3u64.to_ne_bytes());
    let mut h = t.join().unwrap();
    // A zero timeout still takes what has arrived (one non-blocking read).
    assert!(matches!(
        c.next_event(Duration::ZERO),
        Err(ProtoError::Timeout(_))
    ));
    h.event(1, sys::KVMI_EVENT_HYPERCALL, &[]);
    let ev = c.next_event(Duration::ZERO).unwrap();
    assert_eq!((ev.kind, ev.vcpu()), (EventKind::Hypercall, 1));
    ev.reply_continue().unwrap();
    assert_eq!(h.recv().0.id, sys::KVMI_EVENT_REPLY);
}
