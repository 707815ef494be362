//! Golden-byte tests: hand-written little-endian frames parsed with zerocopy and
//! serialized back. Offsets below are typed in from the reference, not computed from the
//! structs, so they check the layouts independently of the compile-time assertions.

extern crate std;

use crate::*;
use std::vec::Vec;
use zerocopy::{FromBytes, IntoBytes};

/// Writes `v` little-endian at `off`.
fn put(buf: &mut [u8], off: usize, v: &[u8]) {
    buf[off..off + v.len()].copy_from_slice(v);
}

#[test]
fn cr_event_frame() {
    // hdr + kvmi_event (544) + kvmi_event_cr (24) = 8 + 568.
    let mut f = [0u8; 8 + 568];
    put(&mut f, 0, &1u16.to_le_bytes()); // id = KVMI_EVENT
    put(&mut f, 2, &568u16.to_le_bytes()); // size
    put(&mut f, 4, &0x1234u32.to_le_bytes()); // seq
    let p = 8; // payload start
    put(&mut f, p, &544u16.to_le_bytes()); // event.size
    put(&mut f, p + 2, &3u16.to_le_bytes()); // vcpu
    f[p + 4] = 1; // event = CR
    f[p + 8] = 8; // arch.mode
    put(&mut f, p + 10, &2u16.to_le_bytes()); // arch.view
    put(&mut f, p + 16, &0xaaaa_u64.to_le_bytes()); // rax
    put(&mut f, p + 144, &0xffff_f800_0000_1000_u64.to_le_bytes()); // rip
    put(&mut f, p + 152, &0x246u64.to_le_bytes()); // rflags
    put(&mut f, p + 160 + 12, &0x10u16.to_le_bytes()); // cs.selector
    f[p + 160 + 19] = 1; // cs.l
    put(&mut f, p + 368, &0xffff_f800_0000_2000_u64.to_le_bytes()); // idt.base
    put(&mut f, p + 376, &0xfffu16.to_le_bytes()); // idt.limit
    put(&mut f, p + 384, &0x8005_0033u64.to_le_bytes()); // cr0
    put(&mut f, p + 400, &0x1ad000u64.to_le_bytes()); // cr3
    put(&mut f, p + 496, &0xd01u64.to_le_bytes()); // msrs.efer
    put(&mut f, p + 512, &0xffff_f800_0000_3000_u64.to_le_bytes()); // msrs.lstar
    put(&mut f, p + 536, &0xffff_f800_0000_4000_u64.to_le_bytes()); // msrs.shadow_gs
    let e = p + 544; // event-specific data
    put(&mut f, e, &3u16.to_le_bytes()); // cr = 3
    put(&mut f, e + 8, &0x1ad000u64.to_le_bytes()); // old_value
    put(&mut f, e + 16, &0x2be000u64.to_le_bytes()); // new_value

    let (hdr, payload) = MsgHdr::read_from_prefix(&f).unwrap();
    assert_eq!(
        hdr,
        MsgHdr {
            id: KVMI_EVENT,
            size: 568,
            seq: 0x1234
        }
    );
    assert_eq!(payload.len(), usize::from(hdr.size));
    let (ev, _) = Event::read_from_prefix(payload).unwrap();
    assert_eq!((ev.size, ev.vcpu, ev.event), (544, 3, KVMI_EVENT_CR));
    assert_eq!((ev.arch.mode, ev.arch.view), (KVMI_MODE_64, 2));
    assert_eq!(ev.arch.regs.rax, 0xaaaa);
    assert_eq!(ev.arch.regs.rip, 0xffff_f800_0000_1000);
    assert_eq!(ev.arch.regs.rflags, 0x246);
    assert_eq!((ev.arch.sregs.cs.selector, ev.arch.sregs.cs.l), (0x10, 1));
    assert_eq!(
        ev.arch.sregs.idt,
        KvmDtable {
            base: 0xffff_f800_0000_2000,
            limit: 0xfff,
            padding: [0; 3]
        }
    );
    assert_eq!(ev.arch.sregs.cr0, 0x8005_0033);
    assert_eq!(ev.arch.sregs.cr3, 0x1ad000);
    assert_eq!(ev.arch.msrs.efer, 0xd01);
    assert_eq!(ev.arch.msrs.lstar, 0xffff_f800_0000_3000);
    assert_eq!(ev.arch.msrs.shadow_gs, 0xffff_f800_0000_4000);
    // Event-specific data starts at `ev.size`, as a forward-compatible reader does it.
    let specific = &payload[usize::from(ev.size)..];
    assert_eq!(specific.len(), event_payload_size(ev.event).unwrap());
    let cr = EventCr::read_from_bytes(specific).unwrap();
    assert_eq!(
        cr,
        EventCr {
            cr: 3,
            padding: [0; 3],
            old_value: 0x1ad000,
            new_value: 0x2be000
        }
    );

    // Serialize back.
    let mut out = Vec::new();
    out.extend_from_slice(hdr.as_bytes());
    out.extend_from_slice(ev.as_bytes());
    out.extend_from_slice(cr.as_bytes());
    assert_eq!(out.as_slice(), &f[..]);
}

#[test]
fn cr_event_reply_frame() {
    // hdr{id 0, size 24, seq 0x1234} + vcpu_hdr{3} + reply{CONTINUE, CR} + new_val.
    #[rustfmt::skip]
    let golden: [u8; 32] = [
        0x00, 0x00, 0x18, 0x00, 0x34, 0x12, 0x00, 0x00,
        0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0xe0, 0x2b, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let extra = event_reply_extra_size(KVMI_EVENT_CR).unwrap();
    let size = (EVENT_REPLY_HEAD_SIZE + extra) as u16;
    let mut out = Vec::new();
    out.extend_from_slice(
        MsgHdr {
            id: KVMI_EVENT_REPLY,
            size,
            seq: 0x1234,
        }
        .as_bytes(),
    );
    out.extend_from_slice(
        VcpuHdr {
            vcpu: 3,
            ..Default::default()
        }
        .as_bytes(),
    );
    let reply = EventReply {
        action: KVMI_EVENT_ACTION_CONTINUE,
        event: KVMI_EVENT_CR,
        ..Default::default()
    };
    out.extend_from_slice(reply.as_bytes());
    out.extend_from_slice(EventCrReply { new_val: 0x2be000 }.as_bytes());
    assert_eq!(out.as_slice(), &golden[..]);

    let (vh, rest) = VcpuHdr::read_from_prefix(&golden[8..]).unwrap();
    let (r, rest) = EventReply::read_from_prefix(rest).unwrap();
    assert_eq!((vh.vcpu, r), (3, reply));
    assert_eq!(
        EventCrReply::read_from_bytes(rest).unwrap().new_val,
        0x2be000
    );
}

#[test]
fn set_page_access_request() {
    // hdr{id 21, size 40, seq 7} + {view 1, count 2} + 2 entries.
    #[rustfmt::skip]
    let golden: [u8; 48] = [
        0x15, 0x00, 0x28, 0x00, 0x07, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x20, 0x34, 0x12, 0x01, 0x00, 0x00, 0x00,
        0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];
    let entries = [
        PageAccessEntry {
            gpa: 0x1000,
            access: KVMI_PAGE_ACCESS_R | KVMI_PAGE_ACCESS_X,
            ..Default::default()
        },
        PageAccessEntry {
            gpa: 0x1_1234_2000,
            access: KVMI_PAGE_ACCESS_RWX,
            ..Default::default()
        },
    ];
    let head = VmSetPageAccess {
        view: 1,
        count: entries.len() as u16,
        padding: 0,
    };
    let size = (head.as_bytes().len() + entries.as_bytes().len()) as u16;
    let mut out = Vec::new();
    out.extend_from_slice(
        MsgHdr {
            id: KVMI_VM_SET_PAGE_ACCESS,
            size,
            seq: 7,
        }
        .as_bytes(),
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(entries.as_bytes());
    assert_eq!(out.as_slice(), &golden[..]);

    let (hdr, payload) = MsgHdr::read_from_prefix(&golden).unwrap();
    assert_eq!((hdr.id, hdr.size, hdr.seq), (21, 40, 7));
    let (h, tail) = VmSetPageAccess::read_from_prefix(payload).unwrap();
    assert_eq!(h, head);
    let parsed: Vec<PageAccessEntry> = tail
        .chunks_exact(core::mem::size_of::<PageAccessEntry>())
        .map(|c| PageAccessEntry::read_from_bytes(c).unwrap())
        .collect();
    assert_eq!(parsed.as_slice(), &entries[..]);
}

#[test]
fn error_reply_and_version_reply() {
    // Failed command: hdr{id 21, size 8, seq 7} + err = -KVM_EINVAL.
    #[rustfmt::skip]
    let failed: [u8; 16] = [
        0x15, 0x00, 0x08, 0x00, 0x07, 0x00, 0x00, 0x00,
        0xea, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
    ];
    let (_, rest) = MsgHdr::read_from_prefix(&failed).unwrap();
    assert_eq!(ErrorCode::read_from_bytes(rest).unwrap().err, -KVM_EINVAL);

    // kvmi-v7 GET_VERSION reply: err 0, version 1, features spp=0 vmfunc=1 eptp=1 ve=0
    // singlestep=1.
    #[rustfmt::skip]
    let v7: [u8; 24] = [
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00,
    ];
    let (ec, rest) = ErrorCode::read_from_prefix(&v7).unwrap();
    assert_eq!(ec.err, 0);
    let r = GetVersionReply::read_from_bytes(rest).unwrap();
    assert_eq!(r.version, KVMI_VERSION);
    assert_eq!(
        (r.features.vmfunc, r.features.eptp, r.features.singlestep),
        (1, 1, 1)
    );
    // A kvmi-v6 host answers with only 8 bytes of reply data.
    assert!(GetVersionReply::read_from_bytes(&v7[8..16]).is_err());
    assert_eq!(
        v6::GetVersionReply::read_from_bytes(&v7[8..16])
            .unwrap()
            .version,
        1
    );
}

#[test]
fn get_registers_reply_with_msrs() {
    let n = 2usize;
    let mut f = std::vec![0u8; 472 + 16 * n];
    put(&mut f, 0, &8u32.to_le_bytes()); // mode
    put(&mut f, 8, &0x11u64.to_le_bytes()); // regs.rax
    put(&mut f, 8 + 128, &0x4000u64.to_le_bytes()); // regs.rip
    put(&mut f, 152 + 240, &0x1ad000u64.to_le_bytes()); // sregs.cr3
    put(&mut f, 464, &(n as u32).to_le_bytes()); // msrs.nmsrs
    put(&mut f, 472, &0xc000_0080u32.to_le_bytes()); // entries[0].index (EFER)
    put(&mut f, 480, &0xd01u64.to_le_bytes()); // entries[0].data
    put(&mut f, 488, &0xc000_0082u32.to_le_bytes()); // entries[1].index (LSTAR)
    put(&mut f, 496, &0xffff_f800_0000_3000_u64.to_le_bytes()); // entries[1].data

    let (r, tail) = VcpuGetRegistersReply::read_from_prefix(&f).unwrap();
    assert_eq!(
        (r.mode, r.regs.rax, r.regs.rip, r.sregs.cr3),
        (8, 0x11, 0x4000, 0x1ad000)
    );
    assert_eq!(r.msrs.nmsrs as usize, n);
    let msrs: Vec<KvmMsrEntry> = tail
        .chunks_exact(16)
        .map(|c| KvmMsrEntry::read_from_bytes(c).unwrap())
        .collect();
    assert_eq!(
        msrs[0],
        KvmMsrEntry {
            index: 0xc000_0080,
            reserved: 0,
            data: 0xd01
        }
    );
    assert_eq!(
        msrs[1],
        KvmMsrEntry {
            index: 0xc000_0082,
            reserved: 0,
            data: 0xffff_f800_0000_3000
        }
    );

    let mut out = Vec::from(r.as_bytes());
    out.extend_from_slice(msrs.as_slice().as_bytes());
    assert_eq!(out, f);
}

#[test]
fn pf_event_and_reply() {
    // kvmi-v7 PF payload: gva, gpa, access=W.
    let mut pf = [0u8; 24];
    put(&mut pf, 0, &0xffff_a000_0000_0123_u64.to_le_bytes());
    put(&mut pf, 8, &0x7_6543_2123u64.to_le_bytes());
    pf[16] = KVMI_PAGE_ACCESS_W;
    let e = EventPf::read_from_bytes(&pf).unwrap();
    assert_eq!(
        (e.gva, e.gpa, e.access),
        (0xffff_a000_0000_0123, 0x7_6543_2123, 2)
    );
    assert_eq!(e.as_bytes(), &pf[..]);

    // The same bytes with a view at offset 18 read as a kvmi-v6 PF event.
    put(&mut pf, 18, &1u16.to_le_bytes());
    assert_eq!(v6::EventPf::read_from_bytes(&pf).unwrap().view, 1);
    assert_eq!(EventPf::read_from_bytes(&pf).unwrap().padding2, 1);

    // PF reply hiding 4 bytes at ctx_addr, rep_complete = 1.
    let mut reply = EventPfReply {
        ctx_addr: 0xffff_a000_0000_0120,
        ctx_size: 4,
        rep_complete: 1,
        ..Default::default()
    };
    reply.ctx_data[..4].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    let b = reply.as_bytes();
    assert_eq!(b.len(), 272);
    assert_eq!(&b[0..8], &0xffff_a000_0000_0120_u64.to_le_bytes());
    assert_eq!(&b[8..12], &4u32.to_le_bytes());
    assert_eq!((b[12], b[13]), (0, 1));
    assert_eq!(&b[16..20], &[0xde, 0xad, 0xbe, 0xef]);
    assert_eq!(EventPfReply::read_from_bytes(b).unwrap(), reply);
    assert_eq!(event_reply_extra_size(KVMI_EVENT_PF), Some(272));
}

#[test]
fn v6_trap_and_inject() {
    let mut t = [0u8; 24];
    put(&mut t, 0, &14u32.to_le_bytes());
    put(&mut t, 4, &3u32.to_le_bytes());
    put(&mut t, 8, &2u32.to_le_bytes());
    put(&mut t, 16, &0xdead_b000u64.to_le_bytes());
    let trap = v6::EventTrap::read_from_bytes(&t).unwrap();
    assert_eq!(
        (trap.vector, trap.type_, trap.error_code, trap.cr2),
        (14, 3, 2, 0xdead_b000)
    );

    // INJECT_EXCEPTION payload (with vcpu_hdr): v6 byte 9 = has_error, v7 padding.
    let inj = v6::InjectException {
        nr: 14,
        has_error: 1,
        error_code: 2,
        address: 0x1000,
        ..Default::default()
    };
    let mut payload = Vec::from(
        VcpuHdr {
            vcpu: 1,
            ..Default::default()
        }
        .as_bytes(),
    );
    payload.extend_from_slice(inj.as_bytes());
    assert_eq!(payload.len(), 24);
    assert_eq!((payload[8], payload[9]), (14, 1));
    assert_eq!(
        VcpuInjectException::read_from_bytes(&payload[8..])
            .unwrap()
            .padding1,
        1
    );
}

#[test]
fn handshake_structs() {
    let mut q = [0u8; 96];
    put(&mut q, 0, &96u32.to_le_bytes());
    put(&mut q, 4, &[0x11; 16]);
    put(&mut q, 24, &1_700_000_000i64.to_le_bytes());
    put(&mut q, 32, b"win10\0");
    let h = QemuToIntrospector::read_from_bytes(&q).unwrap();
    assert_eq!(h.struct_size as usize, QEMU_TO_INTROSPECTOR_SIZE);
    assert_eq!((h.uuid, h.start_time), ([0x11; 16], 1_700_000_000));
    assert_eq!(&h.name[..6], b"win10\0");
    assert_eq!(h.as_bytes(), &q[..]);

    let mut reply = QemuFromIntrospector {
        struct_size: QEMU_FROM_INTROSPECTOR_SIZE as u32,
        ..Default::default()
    };
    reply.cookie_hash[0] = 0xab;
    reply.cookie_hash[19] = 0xcd;
    let b = reply.as_bytes();
    assert_eq!(&b[..5], &[24, 0, 0, 0, 0xab]);
    assert_eq!(b[23], 0xcd);
}

#[test]
fn ids_and_tables() {
    assert_eq!(KVMI_COMMAND_IDS.len(), 41);
    assert!(KVMI_VCPU_HDR_MESSAGE_IDS
        .iter()
        .all(|id| *id == KVMI_EVENT_REPLY || KVMI_COMMAND_IDS.contains(id)));
    for ev in KVMI_EVENT_IDS {
        assert!(event_payload_size(ev).is_some());
        assert!(event_reply_extra_size(ev).is_some());
    }
    assert_eq!(event_payload_size(KVMI_NUM_EVENTS as u8), None);
    assert_eq!(event_reply_extra_size(KVMI_NUM_EVENTS as u8), None);
    assert_eq!(
        KVM_ERRORS.iter().find(|(v, _)| *v == 1000).map(|e| e.1),
        Some("KVM_ENOSYS")
    );
    assert_eq!(
        ioctl::v7::KVM_INTROSPECTION_PREUNHOOK,
        ioctl::v6::KVM_INTROSPECTION_UNHOOK
    );
}

#[cfg(target_arch = "x86_64")]
#[test]
fn kvm_bindings_round_trip() {
    let mut regs = kvm_bindings::kvm_regs {
        rax: 1,
        rip: 0x4000,
        rflags: 2,
        ..Default::default()
    };
    regs.r15 = 15;
    let ours = KvmRegs::from(regs);
    assert_eq!(
        (ours.rax, ours.r15, ours.rip, ours.rflags),
        (1, 15, 0x4000, 2)
    );
    assert_eq!(kvm_bindings::kvm_regs::from(ours), regs);

    let mut sregs = kvm_bindings::kvm_sregs::default();
    sregs.cs.selector = 0x10;
    sregs.cs.l = 1;
    sregs.gdt.base = 0xffff_f800_0000_5000;
    sregs.cr3 = 0x1ad000;
    sregs.interrupt_bitmap[3] = 1 << 63;
    let ours = KvmSregs::from(sregs);
    assert_eq!(
        (ours.cs.selector, ours.cs.l, ours.gdt.base, ours.cr3),
        (0x10, 1, 0xffff_f800_0000_5000, 0x1ad000)
    );
    assert_eq!(ours.interrupt_bitmap[3], 1 << 63);
    assert_eq!(kvm_bindings::kvm_sregs::from(ours), sregs);

    let e = kvm_bindings::kvm_msr_entry {
        index: 0xc000_0080,
        reserved: 0,
        data: 0xd01,
    };
    assert_eq!(kvm_bindings::kvm_msr_entry::from(KvmMsrEntry::from(e)), e);

    let mut xs = kvm_bindings::kvm_xsave::default();
    xs.region[0] = 0x37f;
    xs.region[1023] = 7;
    let ours = KvmXsave::from(&xs);
    assert_eq!(ours.as_bytes().len(), KVM_XSAVE_SIZE);
    assert_eq!(kvm_bindings::kvm_xsave::from(ours).region, xs.region);
}

#[test]
fn names_of_commands_and_events() {
    use std::collections::BTreeSet;
    let names: BTreeSet<_> = KVMI_COMMAND_IDS
        .iter()
        .map(|&id| command_name(id).expect("every kvmi-v7 command has a name"))
        .collect();
    assert_eq!(names.len(), KVMI_COMMAND_IDS.len(), "names are distinct");
    assert!(names.iter().all(|n| n.starts_with("KVMI_")));
    assert_eq!(
        command_name(KVMI_VM_READ_PHYSICAL),
        Some("KVMI_VM_READ_PHYSICAL")
    );
    assert_eq!(command_name(KVMI_EVENT_REPLY), Some("KVMI_EVENT_REPLY"));
    // v6-only numbers, gaps and out-of-range ids have no kvmi-v7 name.
    for id in [12, 20, 25, 40, 45, 59, 61, 62, 64, u16::MAX] {
        assert_eq!(command_name(id), None, "{id}");
    }
    assert_eq!(
        v6::command_name(v6::KVMI_GET_PAGE_ACCESS),
        Some("KVMI_GET_PAGE_ACCESS")
    );
    assert_eq!(v6::command_name(5), Some("KVMI_GET_GUEST_INFO"));
    for id in (2..v6::KVMI_NUM_COMMANDS as u16).chain([v6::KVMI_GET_MAX_GFN]) {
        assert!(v6::command_name(id).is_some(), "{id}");
    }
    assert_eq!(v6::command_name(28), None);
    for &id in &KVMI_EVENT_IDS {
        assert!(event_name(id).unwrap().starts_with("KVMI_EVENT_"));
    }
    assert_eq!(event_name(KVMI_EVENT_PF), Some("KVMI_EVENT_PF"));
    assert_eq!(event_name(KVMI_NUM_EVENTS as u8), None);
}
