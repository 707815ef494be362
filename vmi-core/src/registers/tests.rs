use super::*;

#[test]
fn absent_is_not_zero() {
    let s = RegisterSnapshot::default();
    assert_eq!(s.get(Register::Rax), None);
    assert_eq!(s.get(Register::Dr7), None);
    assert_eq!(s.get(Register::Msr(msr::LSTAR)), None);
    assert_eq!(s.groups(), RegisterGroups::empty());
}

#[test]
fn get_and_set_round_trip() {
    let mut s = RegisterSnapshot {
        gprs: Some(Gprs::default()),
        control: Some(ControlRegs::default()),
        segments: Some(Segments::default()),
        gdtr: Some(DescriptorTable::default()),
        idtr: Some(DescriptorTable::default()),
        ..Default::default()
    };
    s.set(Register::R13, 0x1313).unwrap();
    s.set(Register::Cr3, 0x1000).unwrap();
    s.set(Register::Msr(msr::LSTAR), 0xffff_ffff_8100_0000)
        .unwrap();
    s.set(Register::Efer, 0xd01).unwrap();
    s.set(
        Register::Segment(SegmentRegister::Fs, SegmentField::Base),
        0x7fff_0000,
    )
    .unwrap();
    assert_eq!(s.get(Register::R13), Some(0x1313));
    assert_eq!(s.get(Register::Cr3), Some(0x1000));
    assert_eq!(
        s.get(Register::Msr(msr::LSTAR)),
        Some(0xffff_ffff_8100_0000)
    );
    assert_eq!(s.get(Register::Msr(msr::EFER)), Some(0xd01));
    assert_eq!(
        s.get(Register::Segment(SegmentRegister::Fs, SegmentField::Base)),
        Some(0x7fff_0000)
    );
    assert!(
        s.set(Register::Dr7, 0x400).is_err(),
        "debug group is absent"
    );
    assert!(
        s.set(Register::GdtrLimit, 0x1_0000).is_err(),
        "limit is 16 bits"
    );
    assert!(s
        .groups()
        .contains(RegisterGroups::GPRS | RegisterGroups::MSRS));
}

#[test]
fn efer_is_held_once() {
    let mut s = RegisterSnapshot::default();
    s.set(Register::Efer, 0xd01).unwrap();
    assert_eq!(s.get(Register::Msr(msr::EFER)), Some(0xd01));
    assert_eq!(s.efer(), Some(0xd01));
    assert_eq!(s.groups(), RegisterGroups::EFER);
    s.set(Register::Msr(msr::LSTAR), 1).unwrap();
    assert!(s.groups().contains(RegisterGroups::MSRS));
    let sel = s.select(RegisterGroups::EFER, &[]);
    assert_eq!(sel.msrs.len(), 1);
    assert!(s.covers(RegisterGroups::EFER | RegisterGroups::MSRS, &[msr::LSTAR]));
    assert!(!s.covers(RegisterGroups::MSRS, &[msr::STAR]));
    assert!(!s.covers(RegisterGroups::GPRS, &[]));
}

#[test]
fn vmx_access_rights_round_trip() {
    // 64-bit kernel code segment: type 0xb, S, P, L, G.
    let ar = 0xa09b;
    let a = SegmentAttributes::from_vmx_ar(ar);
    assert_eq!(a.type_, 0xb);
    assert!(a.s && a.present && a.l && a.g && !a.db);
    assert_eq!(a.to_vmx_ar(), ar);
    // QEMU prints descriptor flags: 0x00af9b00 for the same segment.
    assert_eq!(
        SegmentAttributes::from_descriptor_flags(0x00af_9b00).to_vmx_ar(),
        0xa09b
    );
}

#[test]
fn changes_from_keeps_only_what_differs() {
    let mut base = RegisterSnapshot {
        gprs: Some(Gprs::default()),
        control: Some(ControlRegs::default()),
        ..Default::default()
    };
    base.set(Register::Msr(msr::LSTAR), 1).unwrap();
    base.set(Register::Msr(msr::STAR), 2).unwrap();
    let mut edited = base.clone();
    assert!(edited.changes_from(&base).is_empty());
    edited.set(Register::Rax, 5).unwrap();
    edited.set(Register::Msr(msr::STAR), 3).unwrap();
    edited.xcr0 = Some(7);
    let c = edited.changes_from(&base);
    assert_eq!(c.gprs.unwrap().rax, 5);
    assert_eq!(c.control, None);
    assert_eq!(c.xcr0, Some(7), "absent from the base: a change");
    assert_eq!(c.msrs.iter().collect::<Vec<_>>(), vec![(msr::STAR, 3)]);
}

/// A backend answering from one snapshot, counting its reads.
struct OneSnapshot(RegisterSnapshot, std::cell::Cell<u32>);

impl ReadRegisters for OneSnapshot {
    fn registers(
        &self,
        _vcpu: crate::VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> crate::Result<RegisterSnapshot> {
        self.1.set(self.1.get() + 1);
        Ok(self.0.select(groups, msrs))
    }
}

#[test]
fn one_register_reads_its_group() {
    let mut s = RegisterSnapshot {
        gprs: Some(Gprs {
            rip: 0xffff_8000_0000_1000,
            ..Gprs::default()
        }),
        ..Default::default()
    };
    s.set(Register::Msr(msr::LSTAR), 0x42).unwrap();
    let b = OneSnapshot(s, Default::default());
    let v = crate::VcpuId(0);
    assert_eq!(b.register(v, Register::Rip).unwrap(), 0xffff_8000_0000_1000);
    // Through a trait object (the default method is object safe).
    let by_ref: &dyn ReadRegisters = &b;
    assert_eq!(by_ref.register(v, Register::Msr(msr::LSTAR)).unwrap(), 0x42);
    let e = b.register(v, Register::Cr3).unwrap_err();
    assert!(matches!(e, crate::Error::Unsupported { .. }), "{e}");
    assert_eq!(b.1.get(), 3, "one read per call");
}

#[test]
fn clear_equals_a_fresh_snapshot_inline_and_spilled() {
    for msr_count in [3u32, Msrs::INLINE as u32 + 5] {
        let mut s = RegisterSnapshot {
            gprs: Some(Gprs::default()),
            control: Some(ControlRegs::default()),
            debug: Some(DebugRegs::default()),
            segments: Some(Segments::default()),
            gdtr: Some(DescriptorTable::default()),
            idtr: Some(DescriptorTable::default()),
            xcr0: Some(1),
            ..RegisterSnapshot::default()
        };
        s.msrs.extend((0..msr_count).map(|i| (i, u64::from(i))));
        assert_eq!(s.msrs.len(), msr_count as usize);
        s.clear();
        assert_eq!(s, RegisterSnapshot::default());
        assert!(s.is_empty());
        // Usable again after clearing, in order.
        s.msrs.insert(7, 70);
        s.msrs.insert(2, 20);
        assert_eq!(s.msrs.get(2), Some(20));
        assert_eq!(s.msrs.len(), 2);
    }
}

#[test]
fn from_ascending_equals_inserting_one_by_one() {
    let counting = |n: u32| (0..n).map(|i| (i, u64::from(i))).collect::<Vec<_>>();
    let cases: Vec<Vec<(u32, u64)>> = vec![
        vec![],
        vec![(1, 10), (5, 50), (0xc000_0080, 7)],
        // Out of order and repeated: sorted, the last value wins.
        vec![(5, 50), (1, 10), (5, 55)],
        // Exactly as many as fit inline, and more.
        counting(Msrs::INLINE as u32),
        counting(Msrs::INLINE as u32 + 1),
    ];
    for entries in &cases {
        let mut one_by_one = Msrs::new();
        for &(i, v) in entries {
            one_by_one.insert(i, v);
        }
        let built = Msrs::from_ascending(entries);
        assert_eq!(built, one_by_one, "{entries:?}");
        assert_eq!(built.len(), one_by_one.len());
    }
    assert_eq!(
        Msrs::from_ascending(&[(5, 50), (1, 10), (5, 55)]).get(5),
        Some(55)
    );
}

#[test]
fn clone_from_copies_exactly_what_is_held() {
    let inline = Msrs::from_ascending(&[(1, 10), (2, 20), (3, 30)]);
    let short = Msrs::from_ascending(&[(9, 90)]);
    let spilled: Msrs = (0..Msrs::INLINE as u32 + 4)
        .map(|i| (i, u64::from(i)))
        .collect();
    let all = [Msrs::new(), inline, short, spilled];
    for from in &all {
        assert_eq!(&from.clone(), from);
        for into in &all {
            let mut m = into.clone();
            m.clone_from(from);
            assert_eq!(&m, from);
            assert_eq!(m.len(), from.len());
            // Still usable: an insert after the largest index appends.
            m.insert(u32::MAX, 1);
            assert_eq!(m.len(), from.len() + 1);
            assert_eq!(m.get(u32::MAX), Some(1));
        }
    }
    let snap = RegisterSnapshot {
        gprs: Some(Gprs::default()),
        xcr0: Some(3),
        msrs: Msrs::from_ascending(&[(0xc000_0080, 0xd01)]),
        ..RegisterSnapshot::default()
    };
    let mut cache = RegisterSnapshot {
        debug: Some(DebugRegs::default()),
        msrs: (0..20).map(|i| (i, 0)).collect(),
        ..RegisterSnapshot::default()
    };
    cache.clone_from(&snap);
    assert_eq!(cache, snap);
    assert_eq!(snap.clone(), snap);
}
