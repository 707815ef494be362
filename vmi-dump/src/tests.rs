//! Dumps built in memory: written, parsed, read back, and corrupted.

use proptest::prelude::*;
use vmi_core::registers::{
    msr, ControlRegs, DescriptorTable, Gprs, Segment, SegmentAttributes, Segments,
};
use vmi_core::{
    Error, Gpa, Gva, MapPhysical, MemoryLayout, PhysicalMemory, PhysicalRange, ReadRegisters,
    RegisterGroups, RegisterSnapshot, SparseMemory, VcpuId, VirtualMemory,
};

use crate::{write_elf_dump, Access, ElfDump, RawDump, EFER_LMA, EFER_LME, EFER_NXE};

const KERNEL_VA: u64 = 0xffff_ffff_8100_0000;
const BANNER_PA: u64 = 0x20_0040;

/// Memory with one 4-level mapping of the 2 MiB page at 0x20_0000 to `KERNEL_VA` (XD
/// set, as Linux maps rodata), a banner in it, and a hole between 0x30_0000 and
/// 0x40_0000.
fn guest_memory() -> (SparseMemory, Vec<PhysicalRange>) {
    let mut m = SparseMemory::new();
    for gfn in (0..0x300).chain(0x400..0x410) {
        // A pattern that differs per frame, so misplaced reads show.
        let page: Vec<u8> = (0..4096u32).map(|i| (gfn as u32 * 7 + i) as u8).collect();
        m.write(Gpa(gfn << 12), &page);
    }
    let (pml4, pdpt, pd) = (0x1000u64, 0x2000u64, 0x3000u64);
    let idx = |shift: u32| (KERNEL_VA >> shift) & 0x1ff;
    m.write_u64(Gpa(pml4 + idx(39) * 8), pdpt | 3);
    m.write_u64(Gpa(pdpt + idx(30) * 8), pd | 3);
    m.write_u64(Gpa(pd + idx(21) * 8), 0x20_0000 | 0x83 | 1 << 63);
    m.write(Gpa(BANNER_PA), b"Linux version 6.1.0-test\n\0");
    let ranges = vec![
        PhysicalRange {
            start: Gpa(0),
            len: 0x30_0000,
        },
        PhysicalRange {
            start: Gpa(0x40_0000),
            len: 0x1_0000,
        },
    ];
    (m, ranges)
}

fn segment(selector: u16, base: u64, ar: u32) -> Segment {
    Segment {
        selector,
        base,
        limit: 0xffff_ffff,
        attributes: SegmentAttributes::from_vmx_ar(ar),
    }
}

fn vcpu_regs(i: u64, with_kgs: bool) -> RegisterSnapshot {
    let g = Gprs {
        rip: KERNEL_VA + 0x100 + i,
        rsp: 0xffff_c900_0000_8000 - i * 0x10,
        rax: 0x1111 * (i + 1),
        r15: 0xf15 + i,
        rflags: 0x246,
        ..Gprs::default()
    };
    let data = segment(0x18, 0, 0xc093);
    let mut s = RegisterSnapshot {
        gprs: Some(g),
        control: Some(ControlRegs {
            cr0: 0x8005_0033,
            cr2: 0x7f00_0000 + i,
            cr3: 0x1000,
            cr4: 0x3606e0,
            cr8: 0,
        }),
        segments: Some(Segments {
            cs: segment(0x10, 0, 0xa09b),
            ds: data,
            es: data,
            fs: data,
            gs: segment(0, 0xffff_8880_0f00_0000 + i * 0x1000, 0x1c000),
            ss: data,
            ldtr: segment(0, 0, 0x1c000),
            tr: segment(0x40, 0xffff_fe00_0000_3000, 0x8b),
        }),
        gdtr: Some(DescriptorTable {
            base: 0xffff_fe00_0000_1000 + i * 0x1000,
            limit: 0x7f,
        }),
        idtr: Some(DescriptorTable {
            base: 0xffff_fe00_0000_0000,
            limit: 0xfff,
        }),
        ..RegisterSnapshot::default()
    };
    if with_kgs {
        s.msrs.insert(msr::KERNEL_GS_BASE, 0x7fff_0000 + i);
    }
    s
}

fn write(vcpus: &[RegisterSnapshot], vmcoreinfo: Option<&[u8]>) -> Vec<u8> {
    let (m, ranges) = guest_memory();
    let mut out = Vec::new();
    write_elf_dump(&mut out, &m, &ranges, vcpus, vmcoreinfo).unwrap();
    out
}

#[test]
fn written_dump_reads_back_memory_registers_and_vmcoreinfo() {
    let vcpus: Vec<_> = (0..3).map(|i| vcpu_regs(i, i == 1)).collect();
    let info = b"OSRELEASE=6.1.0-test\nPAGESIZE=4096\n";
    let dump = ElfDump::from_bytes(write(&vcpus, Some(info))).unwrap();
    let (m, ranges) = guest_memory();
    assert_eq!(dump.memory_info().unwrap().ranges, ranges);
    for gpa in [0u64, 0xfff, 0x1_2345, 0x2f_f000, 0x40_0000, 0x40_fff0] {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        dump.read_physical(Gpa(gpa), &mut a).unwrap();
        m.read_physical(Gpa(gpa), &mut b).unwrap();
        assert_eq!(a, b, "at {gpa:#x}");
    }
    let mut b = [0u8; 16];
    for hole in [0x2f_fff8, 0x30_0000, 0x3f_fff0, 0x40_fff8, u64::MAX - 4] {
        assert!(matches!(
            dump.read_physical(Gpa(hole), &mut b),
            Err(Error::UnmappedPhysical { .. })
        ));
    }
    assert_eq!(dump.vcpu_count(), 3);
    for (i, want) in vcpus.iter().enumerate() {
        let v = VcpuId(i as u16);
        let got = dump
            .registers(
                v,
                RegisterGroups::all(),
                &[msr::GS_BASE, msr::KERNEL_GS_BASE],
            )
            .unwrap();
        assert_eq!(got.gprs, want.gprs);
        assert_eq!(got.control, want.control);
        assert_eq!(got.segments, want.segments);
        assert_eq!(got.gdtr, want.gdtr);
        assert_eq!(got.idtr, want.idtr);
        assert_eq!(got.efer(), Some(EFER_LME | EFER_LMA | EFER_NXE));
        assert_eq!(
            got.get(vmi_core::Register::Msr(msr::GS_BASE)),
            Some(want.segments.unwrap().gs.base)
        );
        assert_eq!(
            got.get(vmi_core::Register::Msr(msr::KERNEL_GS_BASE)),
            want.msrs.get(msr::KERNEL_GS_BASE)
        );
        let p = dump.vcpu(v).unwrap().prstatus.unwrap();
        assert_eq!(p.pid, i as u32 + 1);
        assert_eq!(p.gprs, want.gprs.unwrap());
        assert_eq!(p.selectors[0], 0x10);
        // The address space works: XD set on the mapping, which needs NXE.
        let text = dump.read_va_cstr(v, Gva(KERNEL_VA + 0x40), 64).unwrap();
        assert_eq!(text, b"Linux version 6.1.0-test\n");
    }
    let only = dump
        .registers(VcpuId(0), RegisterGroups::GPRS, &[])
        .unwrap();
    assert_eq!(only.groups(), RegisterGroups::GPRS);
    assert!(matches!(
        dump.registers(VcpuId(3), RegisterGroups::GPRS, &[]),
        Err(Error::NoSuchVcpu { count: 3, .. })
    ));
    assert_eq!(dump.vmcoreinfo(), Some(std::str::from_utf8(info).unwrap()));
    let regions = dump.mapped_regions().unwrap();
    assert_eq!(regions.len(), 2);
    let mut one = [0u8; 26];
    regions[0].read(Gpa(BANNER_PA), &mut one).unwrap();
    assert_eq!(&one[..13], b"Linux version");
}

#[test]
fn dumps_on_disk_read_the_same_mapped_and_with_pread() {
    let dir = std::env::temp_dir().join(format!("vmi-dump-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("dump.elf");
    std::fs::write(&path, write(&[vcpu_regs(0, false)], None)).unwrap();
    let mapped = ElfDump::open(&path).unwrap();
    let pread = ElfDump::open_with(&path, Access::Pread).unwrap();
    assert!(mapped.vmcoreinfo().is_none());
    let (mut a, mut b) = (vec![0u8; 0x3000], vec![0u8; 0x3000]);
    mapped.read_physical(Gpa(0x1_f800), &mut a).unwrap();
    pread.read_physical(Gpa(0x1_f800), &mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(
        mapped.all_registers(VcpuId(0)).unwrap(),
        pread.all_registers(VcpuId(0)).unwrap()
    );
    assert!(matches!(
        pread.mapped_regions(),
        Err(Error::Unsupported { .. })
    ));

    // A raw dump: file offset = guest-physical address.
    let raw_path = dir.join("dump.raw");
    let (m, _) = guest_memory();
    let mut flat = vec![0u8; 0x30_0000];
    m.read_physical(Gpa(0), &mut flat).unwrap();
    std::fs::write(&raw_path, &flat).unwrap();
    for access in [Access::Mmap, Access::Pread] {
        let raw = RawDump::open_with(&raw_path, access).unwrap();
        let mut c = vec![0u8; 0x3000];
        raw.read_physical(Gpa(0x1_f800), &mut c).unwrap();
        assert_eq!(a, c);
        assert!(raw.read_physical(Gpa(0x2f_ffff), &mut c[..2]).is_err());
        assert_eq!(raw.memory_info().unwrap().ram_size(), 0x30_0000);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn derived_efer_follows_the_paging_state() {
    let mut r = vcpu_regs(0, false);
    // A vCPU with paging off (an AP the kernel has not started).
    r.control.as_mut().unwrap().cr0 = 0x10;
    let dump = ElfDump::from_bytes(write(&[vcpu_regs(0, false), r], None)).unwrap();
    assert_eq!(
        dump.vcpu(VcpuId(0)).unwrap().derived_efer(),
        Some(EFER_LME | EFER_LMA | EFER_NXE)
    );
    assert_eq!(dump.vcpu(VcpuId(1)).unwrap().derived_efer(), Some(0));
    assert!(matches!(
        dump.read_va_u64(VcpuId(1), Gva(KERNEL_VA)),
        Err(Error::PageFault { .. })
    ));
}

#[test]
fn structural_errors_are_typed() {
    let good = write(&[vcpu_regs(0, false)], None);
    let malformed =
        |bytes: Vec<u8>| matches!(ElfDump::from_bytes(bytes), Err(Error::Malformed { .. }));
    assert!(malformed(Vec::new()));
    assert!(malformed(
        b"not an ELF file at all, just some text padding it out to 64 bytes!".to_vec()
    ));
    let mut b = good.clone();
    b[4] = 9; // class
    assert!(malformed(b));
    let mut b = good.clone();
    b[16] = 2; // ET_EXEC
    assert!(malformed(b));
    let mut b = good.clone();
    b[18] = 40; // ARM
    assert!(matches!(
        ElfDump::from_bytes(b),
        Err(Error::Unsupported { .. })
    ));
    let mut b = good.clone();
    b[5] = 2; // big-endian
    assert!(matches!(
        ElfDump::from_bytes(b),
        Err(Error::Unsupported { .. })
    ));
    let mut b = good.clone();
    b[56..58].copy_from_slice(&0xfffeu16.to_le_bytes()); // phnum past the file
    assert!(malformed(b));
    let mut b = good.clone();
    b[56..58].copy_from_slice(&0xffffu16.to_le_bytes()); // PN_XNUM, e_shoff 0: sh_info = bytes 44..48 of the file
    assert!(ElfDump::from_bytes(b).is_err());
    let mut b = good.clone();
    b[54..56].copy_from_slice(&8u16.to_le_bytes()); // phentsize too small
    assert!(malformed(b));
    // Truncated: the last segment runs past the end.
    assert!(malformed(good[..good.len() - 1].to_vec()));
    // Two vCPUs' PRSTATUS but one QEMU note.
    let two = write(&[vcpu_regs(0, false), vcpu_regs(1, false)], None);
    let dump = ElfDump::from_bytes(two.clone()).unwrap();
    assert_eq!(dump.vcpu_count(), 2);
    // Turn the second QEMU note's name into something unknown: counts disagree.
    let pos = two
        .windows(4)
        .enumerate()
        .filter(|(_, w)| *w == b"QEMU")
        .map(|(i, _)| i)
        .nth(1)
        .unwrap();
    let mut b = two;
    b[pos..pos + 4].copy_from_slice(b"QEMX");
    assert!(malformed(b));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any truncation and any handful of corrupted bytes in the headers and notes:
    /// an error or a dump, never a panic; and what opens still reads within bounds.
    #[test]
    fn corrupted_dumps_never_panic(
        cut in 0usize..2000,
        edits in proptest::collection::vec((0usize..1400, any::<u8>()), 1..8),
    ) {
        static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
        let good = GOOD.get_or_init(|| {
            write(&[vcpu_regs(0, true), vcpu_regs(1, false)], Some(b"OSRELEASE=x\n"))
        });
        let mut b = good.clone();
        for (at, v) in edits {
            if at < b.len() {
                b[at] = v;
            }
        }
        if cut < 1400 {
            b.truncate(cut);
        }
        if let Ok(d) = ElfDump::from_bytes(b) {
            let mut buf = [0u8; 64];
            for s in d.segments().to_vec() {
                let _ = d.read_physical(s.gpa, &mut buf);
            }
            for v in 0..d.vcpu_count() {
                let _ = d.all_registers(VcpuId(v as u16));
                let _ = d.read_va_u64(VcpuId(v as u16), Gva(KERNEL_VA));
            }
            let _ = d.memory_info();
            let _ = d.vmcoreinfo();
        }
    }
}
