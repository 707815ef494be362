//! Registers: the snapshot of a paused vCPU against the guest's own state, groups and
//! single registers against the snapshot, and writes as the report says.

use vmi_core::registers::{msr, Register};
use vmi_core::{Backend, Capability, Error, RegisterGroups, RegisterSnapshot, VcpuId};

use super::{vcpus_of, wait_progress, ConformanceTarget};

/// Each readable group with the row that declares it.
const READ_ROWS: &[(RegisterGroups, Capability)] = &[
    (RegisterGroups::GPRS, Capability::ReadGprs),
    (RegisterGroups::CONTROL, Capability::ReadControlRegisters),
    (RegisterGroups::DEBUG, Capability::ReadDebugRegisters),
    (RegisterGroups::SEGMENTS, Capability::ReadSegmentRegisters),
    (
        RegisterGroups::DESCRIPTOR_TABLES,
        Capability::ReadDescriptorTables,
    ),
];

/// Single registers and the group each is read from.
const SINGLES: &[Register] = &[
    Register::Rip,
    Register::Rsp,
    Register::R12,
    Register::Rflags,
    Register::Cr0,
    Register::Cr3,
    Register::Cr4,
    Register::Efer,
    Register::GdtrBase,
    Register::IdtrLimit,
];

/// A paused vCPU 0: its snapshot has exactly the groups the report declares readable
/// and agrees with the guest's own state; each group read alone, and each single
/// register, equals the snapshot; a vCPU beyond the guest's is a typed error.
pub fn agree_with_the_guest<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    let reader = vm
        .register_reader()
        .unwrap_or_else(|| panic!("{}: no register reader", vm.name()));
    assert!(caps.is_supported(Capability::ReadGprs), "{caps}");
    let vcpus = vcpus_of(&vm);
    let count = vcpus.vcpu_count().expect("vcpu_count");
    assert!(count >= 1);
    {
        let _paused = vcpus.pause().expect("pause");
        let snap = reader.all_registers(VcpuId(0)).expect("all_registers");
        for (group, cap) in READ_ROWS {
            assert_eq!(
                snap.groups().contains(*group),
                caps.is_supported(*cap),
                "{group:?} in the snapshot exactly when the report says {cap} works: {snap:x?}"
            );
        }
        assert!(snap.efer().is_some(), "EFER (every backend reads it)");
        t.check_paused_registers(&snap);

        // Each group alone, while still paused: the same values.
        for (group, cap) in READ_ROWS {
            if !caps.is_supported(*cap) {
                continue;
            }
            let alone = reader
                .registers(VcpuId(0), *group, &[])
                .unwrap_or_else(|e| panic!("{group:?} alone: {e}"));
            assert_eq!(
                alone,
                snap.select(*group, &[]),
                "{group:?} alone equals the snapshot's"
            );
        }
        let efer = reader
            .registers(VcpuId(0), RegisterGroups::MSRS, &[msr::EFER])
            .expect("EFER as an MSR");
        assert_eq!(efer.efer(), snap.efer(), "EFER as an MSR and as a group");
        for reg in SINGLES {
            if !caps.is_supported(read_row(*reg)) {
                continue;
            }
            let one = reader
                .registers(VcpuId(0), reg.group(), &[])
                .unwrap_or_else(|e| panic!("{reg:?}: {e}"));
            assert_eq!(one.get(*reg), snap.get(*reg), "{reg:?}");
            assert!(snap.get(*reg).is_some(), "{reg:?} in the snapshot");
        }
        // Paused: a second snapshot is the first.
        let again = reader.all_registers(VcpuId(0)).unwrap();
        assert_eq!(again.gprs, snap.gprs, "GPRs of a paused vCPU do not change");
        assert_eq!(again.control, snap.control);

        for bad in [count, count + 7, u32::from(u16::MAX)] {
            match reader.registers(VcpuId(bad as u16), RegisterGroups::GPRS, &[]) {
                Err(Error::NoSuchVcpu { .. }) => {}
                other => panic!("registers of vCPU {bad} of {count}: {other:?}"),
            }
        }
    }
    // The reader works on a running guest too.
    let from = t.progress();
    let running = reader
        .registers(
            VcpuId(0),
            RegisterGroups::CONTROL | RegisterGroups::EFER,
            &[],
        )
        .expect("registers of a running vCPU");
    assert!(running.control.is_some() && running.efer().is_some());
    wait_progress(t, from, "after reading registers of the running guest");
    t.close(vm);
}

fn read_row(reg: Register) -> Capability {
    let g = reg.group();
    READ_ROWS
        .iter()
        .find(|(group, _)| *group == g)
        .map(|(_, c)| *c)
        .unwrap_or(Capability::ReadMsrs)
}

/// Writes: a writer exists exactly when some write row is supported; a group whose row
/// is unsupported is refused with [`Error::Unsupported`] before any request reaches the
/// guest; GPRs, where writable, are queued while paused (visible to reads at once) and
/// the guest runs on after the pause.
pub fn writes_follow_the_report<T: ConformanceTarget>(t: &T) {
    let vm = t.open();
    let caps = vm.capabilities();
    let write_rows = [
        (Capability::WriteGprs, RegisterGroups::GPRS),
        (Capability::WriteControlRegisters, RegisterGroups::CONTROL),
        (Capability::WriteDebugRegisters, RegisterGroups::DEBUG),
        (Capability::WriteSegmentRegisters, RegisterGroups::SEGMENTS),
        (
            Capability::WriteDescriptorTables,
            RegisterGroups::DESCRIPTOR_TABLES,
        ),
    ];
    let writer = vm.register_writer();
    assert_eq!(
        writer.is_some(),
        write_rows.iter().any(|(c, _)| caps.is_supported(*c)),
        "a register writer exactly when some register group is writable: {caps}"
    );
    let Some(writer) = writer else {
        t.close(vm);
        return;
    };
    let reader = vm.register_reader().expect("a reader beside the writer");
    let vcpus = vcpus_of(&vm);
    let snap = {
        let _paused = vcpus.pause().expect("pause");
        reader.all_registers(VcpuId(0)).expect("all_registers")
    };

    // Unwritable groups: refused, and nothing sent (the guest runs: an accepted write
    // would have to pause it).
    for (cap, group) in write_rows {
        if caps.is_supported(cap) {
            continue;
        }
        let only = group_snapshot(&snap, group);
        let before = t.requests(&vm);
        match writer.set_registers(VcpuId(0), &only) {
            Err(Error::Unsupported { .. }) => {}
            other => panic!("writing {group:?} ({cap} unsupported): {other:?}"),
        }
        assert_eq!(
            t.requests(&vm),
            before,
            "refused {group:?} write sent requests"
        );
    }

    if caps.is_supported(Capability::WriteGprs) {
        let _paused = vcpus.pause().expect("pause");
        let orig = reader
            .registers(VcpuId(0), RegisterGroups::GPRS, &[])
            .unwrap()
            .gprs
            .expect("GPRs");
        let mut changed = orig;
        changed.r15 ^= 0x5a5a_0000_0000_1234;
        let set = |g| RegisterSnapshot {
            gprs: Some(g),
            ..Default::default()
        };
        writer
            .set_registers(VcpuId(0), &set(changed))
            .expect("GPR write");
        let seen = reader
            .registers(VcpuId(0), RegisterGroups::GPRS, &[])
            .unwrap();
        assert_eq!(
            seen.get(Register::R15),
            Some(changed.r15),
            "queued write visible"
        );
        // Put the value back before the vCPU runs: the guest must not notice.
        writer
            .set_registers(VcpuId(0), &set(orig))
            .expect("GPR write back");
        let seen = reader
            .registers(VcpuId(0), RegisterGroups::GPRS, &[])
            .unwrap();
        assert_eq!(seen.gprs, Some(orig));
    }
    let from = t.progress();
    wait_progress(t, from, "after the register writes");
    t.close(vm);
}

/// `snap` reduced to `group` (defaults where the snapshot lacks it).
fn group_snapshot(snap: &RegisterSnapshot, group: RegisterGroups) -> RegisterSnapshot {
    let mut out = snap.select(group, &[]);
    if group == RegisterGroups::DEBUG && out.debug.is_none() {
        out.debug = Some(Default::default());
    }
    if group == RegisterGroups::SEGMENTS && out.segments.is_none() {
        out.segments = Some(Default::default());
    }
    if group == RegisterGroups::DESCRIPTOR_TABLES && out.gdtr.is_none() {
        out.gdtr = Some(Default::default());
        out.idtr = Some(Default::default());
    }
    out
}
