//! The library's view of a real Linux guest from outside: QMP pause/resume through
//! `vmi-core`'s pause guard, guest physical memory through the shared RAM backend, and
//! `vmi-core`'s page walker fed with the CR3 QEMU reports.

use std::time::Duration;

use vmi_core::{
    translate, Gpa, Gva, MemoryLayout, PagingMode, PhysicalMemory, ReadRegisters, RegisterGroups,
    TranslationCache, VcpuControl, VcpuId, VirtualMemory,
};
use vmi_legacy::{LegacyConfig, LegacyQemu, RamSource};
use vmi_tests::Guest;

fn connect(guest: &Guest, ram: RamSource) -> LegacyQemu {
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    cfg.ram = ram;
    LegacyQemu::connect(cfg).unwrap_or_else(|e| panic!("connecting to QEMU: {e}"))
}

fn find_all(mem: &LegacyQemu, needle: &[u8]) -> Vec<u64> {
    vmi_tests::scan::find_all(mem, needle)
        .expect("scanning guest RAM")
        .into_iter()
        .map(Gpa::raw)
        .collect()
}

#[test]
fn qmp_pause_and_resume_change_the_guest_status() {
    let guest = Guest::boot();
    let vmi = connect(&guest, RamSource::default());
    assert!(vmi.status().unwrap().running, "a booted guest runs");

    let outer = vmi.pause().expect("pause");
    let status = vmi.status().unwrap();
    assert!(!status.running);
    assert_eq!(status.status, "paused");
    {
        // Nested guards do not resume early.
        let inner = vmi.pause().expect("nested pause");
        drop(inner);
        assert_eq!(vmi.status().unwrap().status, "paused");
        assert!(vmi.is_paused(), "the outer guard still holds");
    }
    // Paused means paused: RIP of every vCPU stays put. Asked of QEMU itself (the
    // session's own reads of a paused vCPU come from its cache).
    let rip = |v: u32| {
        let text = vmi
            .qmp()
            .human_monitor_command_on("info registers", Some(v))
            .unwrap();
        vmi_legacy::hmp::parse_cpu_registers(&text, v)
            .unwrap()
            .to_snapshot(None)
            .gprs
            .expect("GPRs")
            .rip
    };
    // The session's reads agree with QEMU's while paused.
    let cached = vmi
        .registers(VcpuId(0), RegisterGroups::GPRS, &[])
        .unwrap()
        .gprs
        .expect("GPRs")
        .rip;
    assert_eq!(cached, rip(0));
    let before: Vec<u64> = (0..2).map(rip).collect();
    std::thread::sleep(Duration::from_millis(300));
    let after: Vec<u64> = (0..2).map(rip).collect();
    assert_eq!(before, after, "vCPUs moved while paused");

    outer.resume().expect("resume");
    assert!(vmi.status().unwrap().running);
    // The guest really runs again: its console keeps ticking.
    let from = guest.serial_line_count();
    guest
        .wait_for_serial_from(from, "VMI-TEST tick", Duration::from_secs(30))
        .expect("guest ticks after resume");
}

#[test]
fn dropping_a_session_resumes_a_guest_it_paused() {
    let guest = Guest::boot();
    {
        let vmi = connect(&guest, RamSource::default());
        let guard = vmi.pause().unwrap();
        assert!(!vmi.status().unwrap().running);
        // Leak the guard's release on purpose: the session's drop must still resume.
        std::mem::forget(guard);
    }
    let vmi = connect(&guest, RamSource::default());
    assert!(vmi.status().unwrap().running, "guest left paused");
}

#[test]
fn shared_ram_holds_the_kernel_banner() {
    let guest = Guest::boot();
    let banner = guest.banner().expect("banner marker");
    assert!(banner.starts_with("Linux version "), "{banner}");
    let vmi = connect(&guest, RamSource::File(guest.ram_path().to_path_buf()));
    assert_eq!(vmi.ram_access().kind(), "shared");
    let info = vmi.memory_info().unwrap();
    // 256 MiB below 4 GiB: RAM ends where the backend ends. The BIOS SeaBIOS shadows
    // at 0xf0000 is ROM in the RAM backend (`rom: ram0` in the flat view): readable
    // guest memory, marked ROM in the layout.
    assert_eq!(info.max_physical_address(), Gpa(guest.ram_size()));
    assert!(info.ram_size() <= guest.ram_size());
    assert!(info.ram_size() > guest.ram_size() - (1 << 20), "{info:?}");
    assert!(
        info.check(Gpa(0xf0000), 1).is_ok(),
        "the BIOS shadow is guest memory: {info:?}"
    );
    assert!(
        vmi.layout()
            .rom_ranges()
            .any(|r| r.gpa_start.0 <= 0xf0000 && r.gpa_end() > 0xf0000),
        "the BIOS shadow is ROM: {:?}",
        vmi.layout()
    );
    let hits = find_all(&vmi, banner.as_bytes());
    assert!(!hits.is_empty(), "banner {banner:?} not in guest RAM");
}

#[test]
fn banner_virtual_address_translates_to_where_the_banner_is() {
    let guest = Guest::boot();
    let banner = guest.banner().expect("banner marker");
    let va = guest
        .kallsyms("linux_banner")
        .expect("linux_banner in kallsyms");
    let vmi = connect(&guest, RamSource::default());
    let _paused = vmi.pause().unwrap();

    let hits = find_all(&vmi, banner.as_bytes());
    assert!(!hits.is_empty(), "banner not found physically");

    for vcpu in 0..vmi.vcpu_count().unwrap() {
        let regs = vmi
            .registers(
                VcpuId(vcpu as u16),
                RegisterGroups::CONTROL | RegisterGroups::EFER,
                &[],
            )
            .unwrap();
        let (cr0, cr4, efer) = regs.paging_inputs().expect("CR0, CR4, EFER reported");
        let mode = PagingMode::from_registers(cr0, cr4, efer);
        assert!(
            matches!(mode, PagingMode::Ia32e { .. } | PagingMode::Ia32e5 { .. }),
            "64-bit kernel, got {mode:?}"
        );
        let cr3 = Gpa(regs.control.unwrap().cr3);
        let t = translate(&vmi, mode, cr3, Gva(va)).expect("linux_banner is mapped");
        assert!(
            hits.contains(&t.gpa.raw()),
            "vCPU {vcpu}: {va:#x} -> {} is not one of the banner's physical copies {hits:x?}",
            t.gpa
        );
        assert!(!t.user, "kernel rodata is supervisor-only");
        let mut bytes = vec![0u8; banner.len()];
        vmi.read_physical(t.gpa, &mut bytes).unwrap();
        assert_eq!(bytes, banner.as_bytes());

        // Reading through the virtual address gives the same bytes, cached or not.
        let mut cache = TranslationCache::new();
        let mut via_va = vec![0u8; banner.len()];
        cache
            .read_virtual(&vmi, mode, cr3, Gva(va), &mut via_va)
            .unwrap();
        assert_eq!(via_va, banner.as_bytes());
        let again = cache.translate(&vmi, mode, cr3, Gva(va)).unwrap();
        assert_eq!(again.gpa, t.gpa);
        assert!(cache.hits() >= 1, "second translation is a cache hit");

        // The one-call API: the C string at linux_banner in the vCPU's address space,
        // and the same under an explicit CR3.
        let v = VcpuId(vcpu as u16);
        let text = vmi.read_va_cstr(v, Gva(va), 4096).unwrap();
        assert!(text.starts_with(banner.as_bytes()), "{text:?}");
        assert!(
            text.len() <= banner.len() + 1,
            "ends at its NUL (after a newline)"
        );
        let space = vmi.address_space(v).unwrap();
        assert_eq!(space.cr3, cr3);
        let word = vmi.read_va_u64(space, Gva(va)).unwrap();
        assert_eq!(word.to_le_bytes(), bytes[..8]);
        assert!(matches!(
            vmi.read_va_cstr(v, Gva(va), 5),
            Err(vmi_core::Error::InvalidArgument { .. })
        ));
    }
}
