//! Memory dumps of a real guest, read back: QEMU's ELF `dump-guest-memory` and raw
//! `pmemsave` / RAM-file copies through `vmi-dump`, checked against the paused guest
//! itself (shared RAM and QEMU's registers through vmi-legacy); and the same dump
//! served by kvmi-sim to a vmi-kvm session.
//!
//! One guest boots for the whole file: it is paused, its registers and RAM are
//! recorded, both dumps are taken, and the tests compare against that record.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vmi_core::registers::msr;
use vmi_core::{
    Error, Gpa, Gva, MapPhysical, MemoryLayout, PhysicalMemory, ReadRegisters, RegisterGroups,
    RegisterSnapshot, VcpuControl, VcpuId, VirtualMemory,
};
use vmi_dump::{Access, ElfDump, RawDump, EFER_DERIVED_BITS};
use vmi_legacy::{LegacyConfig, LegacyQemu, RamSource};
use vmi_tests::{dump, Guest};

/// What the paused guest was, and the dumps taken of it then.
struct Fixture {
    /// QEMU's ELF dump.
    elf: PathBuf,
    /// `pmemsave` of all RAM below the PCI hole.
    pmemsave: PathBuf,
    /// A copy of the RAM backend file taken while paused: the reference bytes.
    ram_copy: PathBuf,
    ram_size: u64,
    /// Registers of each vCPU as QEMU reported them while paused.
    live: Vec<RegisterSnapshot>,
    banner: String,
    banner_va: u64,
}

const MSRS: [u32; 3] = [msr::EFER, msr::FS_BASE, msr::GS_BASE];

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dump_qemu");
        std::fs::create_dir_all(&dir).unwrap();
        let guest = Guest::boot();
        let banner = guest.banner().expect("banner marker").to_owned();
        let banner_va = guest
            .kallsyms("linux_banner")
            .expect("linux_banner in kallsyms");
        let mut cfg = LegacyConfig::new(guest.qmp_socket());
        cfg.ram = RamSource::File(guest.ram_path().to_path_buf());
        let vmi = LegacyQemu::connect(cfg).expect("connecting to QEMU");
        let paused = vmi.pause().expect("pause");
        let n = vmi.vcpu_count().unwrap();
        let live = (0..n)
            .map(|v| {
                vmi.registers(VcpuId(v as u16), RegisterGroups::all(), &MSRS)
                    .expect("live registers")
            })
            .collect();
        let f = Fixture {
            elf: dir.join("guest.elf"),
            pmemsave: dir.join("guest.pmemsave"),
            ram_copy: dir.join("guest.ram"),
            ram_size: guest.ram_size(),
            live,
            banner,
            banner_va,
        };
        // QEMU creates its dump files read-only: clear the last run's first.
        for p in [&f.elf, &f.pmemsave, &f.ram_copy] {
            let _ = std::fs::remove_file(p);
        }
        std::fs::copy(guest.ram_path(), &f.ram_copy).expect("copying guest RAM");
        dump::dump_guest_memory_with(&mut vmi.qmp(), &f.elf).expect("dump-guest-memory");
        dump::pmemsave_with(&mut vmi.qmp(), f.ram_size, &f.pmemsave).expect("pmemsave");
        // Nothing ran meanwhile: the RAM file still equals the copy at a few places.
        let mut a = vec![0u8; 1 << 20];
        let mut b = vec![0u8; 1 << 20];
        guest.read_ram(0x100_0000, &mut a).unwrap();
        RawDump::open(&f.ram_copy)
            .unwrap()
            .read_physical(Gpa(0x100_0000), &mut b)
            .unwrap();
        assert!(a == b, "guest RAM changed while paused");
        drop(paused);
        f
    })
}

/// Compares `mem` with the RAM copy over `[start, start+len)`, 1 MiB at a time.
fn assert_same_bytes(
    what: &str,
    mem: &dyn PhysicalMemory,
    reference: &RawDump,
    start: u64,
    len: u64,
) {
    const STEP: u64 = 1 << 20;
    let mut a = vec![0u8; STEP as usize];
    let mut b = vec![0u8; STEP as usize];
    let mut at = start;
    while at < start + len {
        let n = (start + len - at).min(STEP) as usize;
        mem.read_physical(Gpa(at), &mut a[..n])
            .unwrap_or_else(|e| panic!("{what}: reading {at:#x}+{n:#x}: {e}"));
        reference.read_physical(Gpa(at), &mut b[..n]).unwrap();
        if a[..n] != b[..n] {
            let i = a[..n]
                .iter()
                .zip(&b[..n])
                .position(|(x, y)| x != y)
                .unwrap();
            panic!(
                "{what}: byte at {:#x} differs from guest RAM",
                at + i as u64
            );
        }
        at += n as u64;
    }
}

#[test]
fn elf_dump_memory_equals_the_paused_guest_ram() {
    let f = fixture();
    let reference = RawDump::open(&f.ram_copy).unwrap();
    for access in [Access::Mmap, Access::Pread] {
        let dump = ElfDump::open_with(&f.elf, access).unwrap();
        let segments = dump.segments();
        // RAM from 0, and the firmware ROM QEMU also dumps (pc.bios, the 256 KiB below
        // 4 GiB), which is not in the RAM file.
        let (ram, rom): (Vec<&vmi_dump::LoadSegment>, Vec<_>) =
            segments.iter().partition(|s| s.end() <= f.ram_size);
        let covered: u64 = ram.iter().map(|s| s.mem_len).sum();
        assert!(
            covered <= f.ram_size && covered > f.ram_size - (1 << 20),
            "{covered:#x} of {:#x} bytes: {segments:x?}",
            f.ram_size
        );
        for s in &ram {
            assert_same_bytes(
                &format!("ELF dump ({access:?})"),
                &dump,
                &reference,
                s.gpa.0,
                s.mem_len,
            );
        }
        for s in &rom {
            assert!(
                s.gpa.0 >= 0xfff0_0000 && s.end() == 1 << 32,
                "{s:x?} is neither RAM nor the BIOS"
            );
        }
        if !rom.is_empty() {
            // The reset vector: SeaBIOS's far jump.
            assert_eq!(dump.read_u32(Gpa(0xffff_fff0)).unwrap() & 0xff, 0xea);
        }
        // Outside the segments: typed errors.
        let mut b = [0u8; 8];
        for gpa in [f.ram_size, 0xfee0_0000, 0xfff0_0000 - 8, u64::MAX - 3] {
            assert!(
                matches!(
                    dump.read_physical(Gpa(gpa), &mut b),
                    Err(Error::UnmappedPhysical { .. })
                ),
                "{gpa:#x}"
            );
        }
        let covered = covered + rom.iter().map(|s| s.mem_len).sum::<u64>();
        let info = dump.memory_info().unwrap();
        assert_eq!(info.ram_size(), covered);
        if access == Access::Mmap {
            let regions = dump.mapped_regions().unwrap();
            assert_eq!(regions.len(), segments.len());
        }
    }
}

#[test]
fn raw_dumps_equal_the_paused_guest_ram() {
    let f = fixture();
    let reference = RawDump::open(&f.ram_copy).unwrap();
    let raw = RawDump::open_with(&f.pmemsave, Access::Pread).unwrap();
    assert_eq!(raw.file_len(), f.ram_size);
    // pmemsave reads through the guest's view: the legacy VGA window is device memory
    // there, not RAM; compare around it.
    assert_same_bytes("pmemsave", &raw, &reference, 0, 0xa_0000);
    assert_same_bytes(
        "pmemsave",
        &raw,
        &reference,
        0x10_0000,
        f.ram_size - 0x10_0000,
    );
    let mut b = [0u8; 2];
    assert!(matches!(
        raw.read_physical(Gpa(f.ram_size - 1), &mut b),
        Err(Error::UnmappedPhysical { .. })
    ));
}

/// The registers a dump must agree with QEMU on (EFER: the bits a dump can tell).
fn assert_registers_match(
    what: &str,
    vcpu: usize,
    got: &RegisterSnapshot,
    live: &RegisterSnapshot,
) {
    let ctx = format!("{what}, vCPU {vcpu}");
    assert_eq!(got.gprs, live.gprs, "{ctx}: GPRs, RIP, RFLAGS");
    let (g, l) = (got.control.expect("CRs"), live.control.expect("live CRs"));
    assert_eq!(
        (g.cr0, g.cr2, g.cr3, g.cr4),
        (l.cr0, l.cr2, l.cr3, l.cr4),
        "{ctx}: CR0, CR2, CR3, CR4"
    );
    // CR8 is not in QEMU's dump (no TPR saved): not compared.
    let live_efer = live.efer().expect("live EFER");
    assert_eq!(
        got.efer().map(|e| e & EFER_DERIVED_BITS),
        Some(live_efer & EFER_DERIVED_BITS),
        "{ctx}: EFER {live_efer:#x}"
    );
    assert_eq!(got.segments, live.segments, "{ctx}: segments");
    assert_eq!(got.gdtr, live.gdtr, "{ctx}: GDTR");
    assert_eq!(got.idtr, live.idtr, "{ctx}: IDTR");
    let gs = live.segments.expect("live segments").gs.base;
    assert_eq!(got.msrs.get(msr::GS_BASE), Some(gs), "{ctx}: GS base");
}

#[test]
fn elf_dump_registers_equal_the_paused_guest_registers() {
    let f = fixture();
    let dump = ElfDump::open(&f.elf).unwrap();
    assert_eq!(dump.vcpu_count() as usize, f.live.len());
    for (i, live) in f.live.iter().enumerate() {
        let got = dump
            .registers(VcpuId(i as u16), RegisterGroups::all(), &MSRS)
            .unwrap();
        assert_registers_match("ELF dump", i, &got, live);
        let v = dump.vcpu(VcpuId(i as u16)).unwrap();
        let p = v.prstatus.expect("NT_PRSTATUS note");
        assert_eq!(p.pid, i as u32 + 1, "QEMU writes the CPU index + 1");
        assert_eq!(Some(p.gprs), live.gprs, "NT_PRSTATUS GPRs");
        let q = v.qemu.expect("QEMU note");
        eprintln!(
            "vCPU {i}: QEMUCPUState version {} size {} (kernel_gs_base {:x?}), RIP {:#x}",
            q.version, q.size, q.kernel_gs_base, q.gprs.rip
        );
    }
    // QEMU copies VMCOREINFO only when the guest has the vmcoreinfo device and its
    // kernel filled it; when there, it names the running kernel.
    if let Some(info) = dump.vmcoreinfo() {
        let release = f.banner.split_whitespace().nth(2).unwrap();
        assert!(info.contains(&format!("OSRELEASE={release}")), "{info}");
    }
}

#[test]
fn linux_banner_reads_through_the_dumps_page_tables() {
    let f = fixture();
    let dump = ElfDump::open(&f.elf).unwrap();
    for v in 0..dump.vcpu_count() {
        let vcpu = VcpuId(v as u16);
        let text = dump
            .read_va_cstr(vcpu, Gva(f.banner_va), 4096)
            .unwrap_or_else(|e| panic!("vCPU {v}: linux_banner at {:#x}: {e}", f.banner_va));
        let text = String::from_utf8_lossy(&text);
        assert!(
            text.starts_with(&f.banner),
            "vCPU {v}: {text:?} vs {:?}",
            f.banner
        );
        let t = dump.translate_va(vcpu, Gva(f.banner_va)).unwrap();
        assert!(!t.user && !t.executable, "rodata: supervisor, NX: {t:?}");
    }
}

#[test]
fn kvmi_sim_serves_the_dump_to_a_vmi_kvm_session() {
    let f = fixture();
    let dump = ElfDump::open(&f.elf).unwrap();
    let (vm, _sim) = vmi_tests::kvmi::serving_dump(&dump, "dump");
    assert_eq!(vm.vcpu_count().unwrap(), dump.vcpu_count());
    // Memory: the same bytes as the dump at spread addresses in every segment.
    let mut a = vec![0u8; 4096];
    let mut b = vec![0u8; 4096];
    let mut compared = 0;
    for s in dump.segments() {
        let mut at = s.gpa.0;
        while at + 4096 <= s.end() {
            vm.read_physical(Gpa(at), &mut a).unwrap();
            dump.read_physical(Gpa(at), &mut b).unwrap();
            assert!(a == b, "page at {at:#x} differs over KVMi");
            compared += 1;
            at += 0x10_0000 + 0x1000 * (compared % 7);
        }
    }
    assert!(compared > 200, "{compared} pages compared");
    // Registers: what the dump says, through the wire, for every vCPU.
    for (i, live) in f.live.iter().enumerate() {
        let vcpu = VcpuId(i as u16);
        let got = vm.registers(vcpu, RegisterGroups::all(), &MSRS).unwrap();
        let want = dump.registers(vcpu, RegisterGroups::all(), &MSRS).unwrap();
        assert_eq!(got.gprs, want.gprs, "vCPU {i}");
        assert_eq!(got.control, want.control, "vCPU {i}");
        assert_eq!(got.segments, want.segments, "vCPU {i}");
        assert_eq!((got.gdtr, got.idtr), (want.gdtr, want.idtr), "vCPU {i}");
        assert_eq!(got.efer(), want.efer(), "vCPU {i}");
        assert_eq!(
            got.msrs.get(msr::GS_BASE),
            want.msrs.get(msr::GS_BASE),
            "vCPU {i}"
        );
        // And so what QEMU said of the live guest.
        assert_registers_match("vmi-kvm over kvmi-sim", i, &got, live);
        let text = vm.read_va_cstr(vcpu, Gva(f.banner_va), 4096).unwrap();
        assert!(String::from_utf8_lossy(&text).starts_with(&f.banner));
    }
}
