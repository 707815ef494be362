//! The HMP text parsers against captured QEMU output, malformed and mutated text.

use super::*;
use vmi_core::registers::RegisterGroups;
use vmi_core::Register;

const RESET_A: &str = include_str!("../../tests/data/qemu72_info_registers_a_reset.txt");
const RESET: &str = include_str!("../../tests/data/qemu72_info_registers_reset.txt");
const PM: &str = include_str!("../../tests/data/qemu72_info_registers_protected_mode.txt");
const LONG_A: &str = include_str!("../../tests/data/qemu72_info_registers_a_long_mode.txt");
const LAPIC: &str = include_str!("../../tests/data/qemu72_info_lapic.txt");
const MTREE: &str = include_str!("../../tests/data/qemu72_info_mtree_f.txt");
const MTREE_PC4G: &str = include_str!("../../tests/data/qemu72_info_mtree_f_pc_4g_vga.txt");
const MTREE_Q35: &str = include_str!("../../tests/data/qemu72_info_mtree_f_q35_5g_vga.txt");

fn crlf(s: &str) -> String {
    s.replace('\n', "\r\n")
}

#[test]
fn reset_state_all_cpus() {
    for text in [RESET_A.to_owned(), crlf(RESET_A)] {
        let cpus = parse_info_registers(&text).unwrap();
        assert_eq!(cpus.len(), 2);
        for (i, c) in cpus.iter().enumerate() {
            assert_eq!(c.cpu_index, Some(i as u32));
            assert_eq!(c.layout, RegisterLayout::Bits32);
            assert_eq!(c.gprs.rip, 0xfff0);
            assert_eq!(c.gprs.rdx, 0x60fb1);
            assert_eq!(c.gprs.rflags, 2);
            assert_eq!(c.segments.cs.selector, 0xf000);
            assert_eq!(c.segments.cs.base, 0xffff_0000);
            assert_eq!(c.segments.cs.limit, 0xffff);
            assert_eq!(c.segments.cs.attributes.type_, 0xb);
            assert!(c.segments.cs.attributes.present);
            assert!(c.segments.cs.attributes.s);
            assert_eq!(c.segments.tr.attributes.type_, 0xb);
            assert!(!c.segments.tr.attributes.s);
            assert_eq!(c.control.cr0, 0x6000_0010);
            assert_eq!(c.debug.dr6, 0xffff_0ff0);
            assert_eq!(c.debug.dr7, 0x400);
            assert_eq!(c.gdtr.limit, 0xffff);
            assert_eq!(c.efer, 0);
            assert!(!c.is_truncated());
        }
        assert_eq!(cpus[0].halted, Some(false));
        assert_eq!(cpus[1].halted, Some(true));
    }
    let one = parse_cpu_registers(RESET, 0).unwrap();
    assert_eq!(one, parse_cpu_registers(RESET_A, 0).unwrap());
    assert!(parse_cpu_registers(RESET, 1).is_err());
    assert_eq!(parse_cpu_registers(RESET_A, 1).unwrap().cpu_index, Some(1));
}

#[test]
fn protected_mode() {
    let c = parse_cpu_registers(PM, 0).unwrap();
    assert_eq!(c.layout, RegisterLayout::Bits32);
    assert_eq!(c.gprs.rax, 0xdead_beef);
    assert_eq!(c.gprs.rsi, 0x0bad_f00d);
    assert_eq!(c.gprs.rsp, 0x8000);
    assert_eq!(c.gprs.r8, 0);
    assert_eq!(c.segments.cs.limit, 0xffff_ffff);
    assert!(c.segments.cs.attributes.db && c.segments.cs.attributes.g);
    assert_eq!(c.gdtr.base, 0xc02b8);
    assert_eq!(c.idtr.limit, 0x3ff);
    assert_eq!(c.control.cr0, 0x11);
    let s = c.to_snapshot(Some(0));
    assert_eq!(
        s.groups(),
        RegisterGroups::all() - RegisterGroups::XCR0 - RegisterGroups::MSRS
    );
}

#[test]
fn long_mode_with_r8_spacing() {
    let cpus = parse_info_registers(LONG_A).unwrap();
    let c = &cpus[0];
    assert_eq!(c.layout, RegisterLayout::Bits64);
    let want = [
        0x1111111111111111u64,
        0x2222222222222222,
        0x3333333333333333,
        0x4444444444444444,
        0x5555555555555555,
        0x6666666666666666,
        0x7777777777777777,
    ];
    assert_eq!(
        [c.gprs.rax, c.gprs.rbx, c.gprs.rcx, c.gprs.rdx, c.gprs.rsi, c.gprs.rdi, c.gprs.rbp],
        want
    );
    assert_eq!(c.gprs.rsp, 0x90000);
    // LibVMI skipped one character after "R8" and landed on "=": not here.
    assert_eq!(c.gprs.r8, 0x8888888888888888);
    assert_eq!(c.gprs.r9, 0x9999999999999999);
    assert_eq!(c.gprs.r10, 0xaaaaaaaaaaaaaaaa);
    assert_eq!(c.gprs.r15, 0xffffffff80001234);
    assert_eq!(c.gprs.rip, 0x100174);
    assert_eq!(c.gprs.rflags, 0x86);
    assert_eq!(c.segments.fs.base, 0x7fff_1234_5000);
    assert_eq!(c.segments.cs.attributes.to_vmx_ar(), 0xa09b);
    assert!(c.segments.cs.attributes.l);
    assert_eq!(c.segments.tr.selector, 0x18);
    assert_eq!(c.segments.tr.base, 0x20_0000);
    assert_eq!(c.segments.tr.limit, 0x67);
    assert_eq!(c.segments.tr.attributes.type_, 9);
    assert_eq!(
        c.gdtr,
        DescriptorTable {
            base: 0x100180,
            limit: 0x27
        }
    );
    assert_eq!(
        c.idtr,
        DescriptorTable {
            base: 0x300000,
            limit: 0xfff
        }
    );
    assert_eq!(c.control.cr3, 0x101000);
    assert_eq!(c.control.cr4, 0x20);
    assert_eq!(c.debug.dr0, 0xffff_8880_0000_1000);
    assert_eq!(c.debug.dr7, 0xf0401);
    assert_eq!(c.efer, 0xd01);
    // CPU#1 is still in the BIOS: 32-bit layout in the same text.
    assert_eq!(cpus[1].layout, RegisterLayout::Bits32);

    let tpr = parse_lapic_tpr(LAPIC).unwrap();
    assert_eq!(tpr, 0x50);
    let s = c.to_snapshot(Some(u64::from(tpr >> 4)));
    assert_eq!(s.get(Register::Cr8), Some(5));
    assert_eq!(s.get(Register::R8), Some(0x8888888888888888));
    assert_eq!(s.get(Register::Efer), Some(0xd01));
    assert_eq!(s.get(Register::Xcr0), None);
    // Without CR8 the CONTROL group is absent, not zero.
    let s = c.to_snapshot(None);
    assert_eq!(s.get(Register::Cr3), None);
    assert!(!s.groups().contains(RegisterGroups::CONTROL));
}

#[test]
fn compatibility_mode_is_not_reported_as_complete() {
    // A 32-bit program under a 64-bit kernel: EAX layout, EFER.LMA set, 64-bit
    // GDT/CR lines. Handcrafted from the cpu-dump.c format (not recorded).
    let text = PM
        .replace("EFER=0000000000000000", "EFER=0000000000000d01")
        .replace("GDT=     000c02b8", "GDT=     ffffffff8a000000");
    let c = parse_cpu_registers(&text, 0).unwrap();
    assert!(c.is_truncated());
    let s = c.to_snapshot(Some(0));
    assert!(s.gprs.is_none() && s.segments.is_none());
    assert_eq!(s.gdtr.unwrap().base, 0xffff_ffff_8a00_0000);
    assert!(s.control.is_some());
}

#[test]
fn rejects_garbage() {
    for bad in [
        "",
        "hello",
        "CPU#x\n",
        "CPU#0\nCPU#0\n",
        &RESET.replace("CR0=60000010 ", ""),
        &RESET.replace("EFER=0000000000000000", ""),
        &RESET.replace("LDT=", "XXX="),
        &RESET.replace("EAX=00000000", "EAX=0000000g"),
        &RESET.replace("EAX=00000000", "EAX=+0000000"),
        &RESET.replace("EAX=00000000", "EAX=000000000"),
        &RESET.replace("EAX=00000000", "EAX="),
        &RESET.replace("EBX=00000000", "EBX=00000000 EBX=00000000"),
        &RESET.replace("EBX=00000000", "RBX=0000000000000000"),
        &RESET.replace("CS =f000 ffff0000 0000ffff 00009b00", "CS =f000 ffff0000"),
        &RESET.replace("CS =f000", "CS =1f000"),
        &RESET.replace("GDT=     00000000 0000ffff", "GDT=     00000000 00010000"),
        &RESET.replace("GDT=     00000000 0000ffff", "GDT=00000000 0000ffff"),
        &LONG_A.replace("R8 =8888888888888888", "R8 =88888888888888881"),
        &LONG_A.replace("HLT=1", "HLT=2"),
        &LONG_A.replace("CPL=0", "CPL=4"),
        &RESET.replace("DR6=00000000ffff0ff0", "DR6=00000000ffff0ff0 XY=1"),
    ] {
        assert!(
            matches!(parse_info_registers(bad), Err(Error::Malformed { .. })),
            "accepted {:?}",
            &bad[..bad.len().min(80)]
        );
    }
    assert!(parse_lapic_tpr("APR 0x00 TPR 0x100").is_err());
    assert!(parse_lapic_tpr("APR 0x00 TPR").is_err());
    assert!(parse_lapic_tpr("No CPU available").is_err());
}

/// Deterministic xorshift so the mutation test needs no extra dependency.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn mutated_inputs_never_panic() {
    let alphabet = b"0123456789abcdefxX=# \n\r:@-()RECPUGDTLAS.,";
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for base in [RESET_A, LONG_A, PM, MTREE, MTREE_Q35, LAPIC] {
        for _ in 0..400 {
            let mut bytes = base.as_bytes().to_vec();
            let edits = 1 + xorshift(&mut seed) % 8;
            for _ in 0..edits {
                if bytes.is_empty() {
                    break;
                }
                let pos = (xorshift(&mut seed) % bytes.len() as u64) as usize;
                let c = alphabet[(xorshift(&mut seed) % alphabet.len() as u64) as usize];
                match xorshift(&mut seed) % 4 {
                    0 => bytes[pos] = c,
                    1 => {
                        bytes.remove(pos);
                    }
                    2 => bytes.insert(pos, c),
                    _ => bytes.truncate(pos),
                }
            }
            let text = String::from_utf8_lossy(&bytes);
            let _ = parse_info_registers(&text);
            let _ = parse_cpu_registers(&text, 1);
            let _ = parse_mtree_flat(&text);
            let _ = parse_lapic_tpr(&text);
            let _ = parse_xp_bytes(&text, Gpa(0), 16);
            let _ = parse_gpa2hva(&text);
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_text_never_panics(s in "(CPU#[0-9]{1,3}\n|[A-Z]{1,4} ?=[0-9a-fx]{0,18} |[ \n@:()a-z0-9-]{1,8})*") {
            let _ = parse_info_registers(&s);
            let _ = parse_mtree_flat(&s);
            let _ = parse_lapic_tpr(&s);
            let _ = parse_xp_bytes(&s, Gpa(0), 4);
            let _ = parse_gpa2hva(&s);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let s = String::from_utf8_lossy(&b);
            let _ = parse_info_registers(&s);
            let _ = parse_mtree_flat(&s);
        }
    }
}

/// `info mtree -f` of QEMU 7.2 after SeaBIOS ran (the test guest, 64 MiB): the
/// BIOS and option ROM areas are RAM of `ram0` made read-only.
const MTREE_AFTER_BIOS: &str = "FlatView #2
 AS \"memory\", root: system
 AS \"cpu-memory-0\", root: system
 Root memory region: system
  0000000000000000-00000000000c2fff (prio 0, ram): ram0
  00000000000c3000-00000000000e7fff (prio 0, rom): ram0 @00000000000c3000
  00000000000e8000-00000000000effff (prio 0, ram): ram0 @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): ram0 @00000000000f0000
  0000000000100000-0000000003ffffff (prio 0, ram): ram0 @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
";

#[test]
fn mtree_rom_of_a_ram_backend_is_guest_memory() {
    let l = parse_mtree_flat(MTREE_AFTER_BIOS).unwrap();
    let roms: Vec<_> = l.rom_ranges().map(|r| (r.gpa_start.0, r.len)).collect();
    assert_eq!(roms, vec![(0xc3000, 0x25000), (0xf0000, 0x10000)]);
    assert_eq!(
        l.backend_names(),
        vec!["ram0"],
        "pc.bios is no backend of ours"
    );
    let info = l.memory_info();
    assert_eq!(info.ranges.len(), 1, "{info:?}");
    assert_eq!(info.ranges[0].len, 64 << 20);
    assert_eq!(l.range_of(Gpa(0xf59d0)).unwrap().backend_offset, 0xf0000);
    assert!(l.check_writable(Gpa(0xe8000), 0x8000).is_ok());
    assert!(l.check_writable(Gpa(0xeffff), 2).is_err());
    assert!(l.check_writable(Gpa(0xc2fff), 1).is_ok());
    assert!(l.check_writable(Gpa(0xc2fff), 2).is_err());
}

#[test]
fn mtree_memory_backend_file() {
    for text in [MTREE.to_owned(), crlf(MTREE)] {
        let l = parse_mtree_flat(&text).unwrap();
        let r = l.ranges();
        assert_eq!(r.len(), 2, "{r:?}");
        assert_eq!(
            r[0],
            RamRange {
                gpa_start: Gpa(0),
                len: 0xc0000,
                backend_offset: 0,
                backend_name: "ram0".into(),
                rom: false,
            }
        );
        assert_eq!(r[1].gpa_start, Gpa(0x10_0000));
        assert_eq!(r[1].len, 0x3f0_0000);
        assert_eq!(r[1].backend_offset, 0x10_0000);
        assert_eq!(l.main_backend(), Some("ram0"));
        assert_eq!(l.backend_extent(), 64 << 20);
    }
}

#[test]
fn mtree_pc_and_q35_split_around_4g() {
    let l = parse_mtree_flat(MTREE_PC4G).unwrap();
    let v: Vec<(u64, u64, u64)> = l
        .ranges()
        .iter()
        .map(|r| (r.gpa_start.0, r.len, r.backend_offset))
        .collect();
    assert_eq!(
        v,
        vec![
            (0, 0xa0000, 0),
            (0x10_0000, 0xbff0_0000, 0x10_0000),
            (0x1_0000_0000, 0x4000_0000, 0xc000_0000)
        ]
    );
    assert_eq!(l.ram_size(), (4u64 << 30) - 0x60000);
    let l = parse_mtree_flat(MTREE_Q35).unwrap();
    assert_eq!(l.ranges().len(), 3);
    assert_eq!(l.ranges()[1].len, 0x7ff0_0000);
    assert_eq!(l.ranges()[2].gpa_start, Gpa(0x1_0000_0000));
    assert_eq!(l.ranges()[2].backend_offset, 0x8000_0000);
    assert_eq!(l.backend_extent(), 5 << 30);
    assert!(l.ranges().iter().all(|r| r.backend_name == "pc.ram"));
}

#[test]
fn mtree_variants() {
    // KVM appends the accelerator's name; other RAM (a VRAM BAR) is reported with
    // its own backend name. Handcrafted from the memory.c format.
    let text = "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n  \
                0000000000000000-000000000009ffff (prio 0, ram): pc.ram KVM\n  \
                00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem\n  \
                00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram KVM\n  \
                00000000fe000000-00000000fe000fff (prio 0, ramd): 0000:00:05.0 BAR 0 mmaps[0]\n";
    let l = parse_mtree_flat(text).unwrap();
    assert_eq!(l.backend_names(), vec!["pc.ram", "vga.vram"]);
    assert_eq!(l.main_backend(), Some("pc.ram"));
    assert_eq!(l.for_backend("pc.ram").ram_size(), 0xa0000);
    // No "memory" address space, a truncated line, and end < start.
    assert!(parse_mtree_flat("FlatView #0\n AS \"I/O\", root: io\n").is_err());
    let trunc = "FlatView #0\n AS \"memory\", root: system\n  0000000000000000-00000000";
    assert!(parse_mtree_flat(trunc).is_err());
    let rev = "FlatView #0\n AS \"memory\", root: system\n  \
               0000000000001000-0000000000000fff (prio 0, ram): r\n";
    assert!(parse_mtree_flat(rev).is_err());
    // An empty system flat view is an empty layout.
    let empty = "FlatView #0\n AS \"memory\", root: system\n Root memory region: (none)\n  No rendered FlatView\n";
    assert!(parse_mtree_flat(empty).unwrap().is_empty());
}

#[test]
fn xp_and_gpa2hva() {
    let text = "00000000000ffff0: 0xea 0x5b 0xe0 0x00 0xf0 0x30 0x36 0x2f\r\n\
                00000000000ffff8: 0x32 0x33 0x2f 0x39 0x39 0x00 0xfc 0x00\r\n";
    let b = parse_xp_bytes(text, Gpa(0xffff0), 16).unwrap();
    assert_eq!(&b[..4], &[0xea, 0x5b, 0xe0, 0x00]);
    assert!(parse_xp_bytes(text, Gpa(0xffff0), 15).is_err());
    assert!(parse_xp_bytes(text, Gpa(0xffff0), 17).is_err());
    assert!(parse_xp_bytes(text, Gpa(0xffff8), 16).is_err());
    assert!(parse_xp_bytes("Cannot access memory\n", Gpa(0), 1).is_err());

    let (name, hva) =
        parse_gpa2hva("Host virtual address for 0x100000 (ram0) is 0x7fdd340ff000\r\n").unwrap();
    assert_eq!(name, "ram0");
    assert_eq!(hva, 0x7fdd_340f_f000);
    assert!(parse_gpa2hva("No memory is mapped at address 0x4000000\r\n").is_err());
}
