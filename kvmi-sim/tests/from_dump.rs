//! A simulated guest built from an ELF dump (written here with vmi-dump's QEMU-layout
//! writer, so no QEMU is needed): memory, vCPU count and registers as in the dump.

use kvmi_sim::SimConfig;
use vmi_core::registers::{
    msr, ControlRegs, DescriptorTable, Gprs, Segment, SegmentAttributes, Segments,
};
use vmi_core::{Gpa, PhysicalRange, RegisterSnapshot, SparseMemory};
use vmi_dump::{write_elf_dump, ElfDump};

fn regs(i: u64) -> RegisterSnapshot {
    let code = Segment {
        selector: 0x10,
        base: 0,
        limit: 0xffff_ffff,
        attributes: SegmentAttributes::from_vmx_ar(0xa09b),
    };
    let data = Segment {
        selector: 0x18,
        attributes: SegmentAttributes::from_vmx_ar(0xc093),
        ..code
    };
    let mut s = RegisterSnapshot {
        gprs: Some(Gprs {
            rip: 0xffff_ffff_8100_0000 + i,
            rsp: 0xffff_c900_0000_4000,
            rax: i,
            ..Gprs::default()
        }),
        control: Some(ControlRegs {
            cr0: 0x8005_0033,
            cr3: 0x1000 * (i + 1),
            cr4: 0x6a0,
            ..ControlRegs::default()
        }),
        segments: Some(Segments {
            cs: code,
            ds: data,
            es: data,
            fs: data,
            gs: Segment {
                base: 0xffff_8880_0f00_0000 + i,
                ..data
            },
            ss: data,
            ldtr: data,
            tr: data,
        }),
        gdtr: Some(DescriptorTable {
            base: 0xffff_fe00_0000_1000,
            limit: 0x7f,
        }),
        idtr: Some(DescriptorTable {
            base: 0xffff_fe00_0000_0000,
            limit: 0xfff,
        }),
        ..RegisterSnapshot::default()
    };
    s.msrs.insert(msr::KERNEL_GS_BASE, 0x7f00 + i);
    s
}

#[test]
fn simulated_guest_has_the_dumps_memory_vcpus_and_registers() {
    let mut mem = SparseMemory::new();
    mem.write(Gpa(0), &[0; 0x2000]);
    mem.write(Gpa(0x1234), b"from the dump");
    mem.write(Gpa(0x10_0000), &[0x5a; 4096]);
    let ranges = [
        PhysicalRange {
            start: Gpa(0),
            len: 0x2000,
        },
        PhysicalRange {
            start: Gpa(0x10_0000),
            len: 0x1000,
        },
    ];
    let mut bytes = Vec::new();
    write_elf_dump(
        &mut bytes,
        &mem,
        &ranges,
        &[regs(0), regs(1), regs(2)],
        None,
    )
    .unwrap();
    let dump = ElfDump::from_bytes(bytes).unwrap();
    let cfg = SimConfig::from_dump(&dump).unwrap();
    assert_eq!(cfg.vcpus, 3);
    assert_eq!(cfg.memory.read(0x1234, 13).unwrap(), b"from the dump");
    assert_eq!(cfg.memory.read(0x10_0ffc, 4).unwrap(), [0x5a; 4]);
    assert!(
        cfg.memory.read(0x2000, 1).is_none(),
        "a hole in the dump is unbacked"
    );
    assert_eq!(cfg.memory.max_gfn, 0x101);
    let vcpus = cfg.initial_vcpus.as_ref().unwrap();
    for (i, v) in vcpus.iter().enumerate() {
        let want = regs(i as u64);
        assert_eq!(v.regs.rip, want.gprs.unwrap().rip);
        assert_eq!(v.regs.rax, i as u64);
        assert_eq!(v.sregs.cr3, want.control.unwrap().cr3);
        assert_eq!(v.sregs.gs.base, want.segments.unwrap().gs.base);
        assert_eq!((v.sregs.cs.l, v.sregs.cs.type_, v.sregs.ss.db), (1, 11, 1));
        assert_eq!(v.sregs.idt.limit, 0xfff);
        // EFER derived: long mode with NX.
        assert_eq!(v.sregs.efer, 0xd00);
        assert_eq!(v.msrs.get(&msr::EFER), Some(&0xd00));
        assert_eq!(v.msrs.get(&msr::KERNEL_GS_BASE), Some(&(0x7f00 + i as u64)));
        assert_eq!(v.msrs.get(&msr::LSTAR), None, "not in a dump");
        assert_eq!(v.mode(), 8);
    }
}

#[test]
fn a_dump_without_qemu_notes_is_refused() {
    let mut mem = SparseMemory::new();
    mem.write(Gpa(0), &[0; 4096]);
    let mut bytes = Vec::new();
    let ranges = [PhysicalRange {
        start: Gpa(0),
        len: 0x1000,
    }];
    write_elf_dump(&mut bytes, &mem, &ranges, &[], None).unwrap();
    let dump = ElfDump::from_bytes(bytes).unwrap();
    assert_eq!(dump.vcpu_count(), 0);
    assert!(matches!(
        SimConfig::from_dump(&dump),
        Err(vmi_core::Error::Unsupported { .. })
    ));
}
