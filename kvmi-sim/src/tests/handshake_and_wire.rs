//! Handshake, framing rules, fault injection, reply suppression.

use super::*;

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
fn event_reply_with_wrong_seq_closes() {
    let (sim, mut t) = connect(SimConfig::default());
    t.enable_event(0, sys::KVMI_EVENT_HYPERCALL);
    let h = sim.trigger(0, SimEvent::Hypercall).unwrap();
    let (hd, ev, _) = t.read_event();
    t.reply_event(hd.seq + 7, 0, ev.event, 0, &[]);
    assert!(matches!(h.wait_reply(T), Err(SimError::Closed(_))));
    assert!(sim.closed().unwrap().contains("seq"));
}
