//! The purpose-built test guest (`xtask/guest/testguest.S`) seen from outside: its
//! known pattern at a known physical address, its own page tables walked from the CR3
//! QEMU reports, CR3 reloads between its two PML4s, and its loop making progress.

use std::time::Duration;

use vmi_core::{
    read_virtual, translate, Gpa, Gva, PageSize, PagingMode, PhysicalMemory, ReadRegisters,
    RegisterGroups, VcpuControl, VcpuId,
};
use vmi_legacy::{LegacyConfig, LegacyQemu};
use vmi_tests::{Guest, GuestOptions, Markers};

const HIGH: u64 = 0xffff_8000_0000_0000;

fn boot() -> (Guest, Markers, LegacyQemu) {
    let guest = Guest::launch(GuestOptions::test_guest()).expect("launching the test guest");
    let markers = guest.wait_ready().expect("test guest ready");
    let vmi = LegacyQemu::connect(LegacyConfig::new(guest.qmp_socket())).expect("connect");
    (guest, markers, vmi)
}

#[test]
fn pattern_page_is_at_its_physical_address() {
    let (_guest, m, vmi) = boot();
    let pa = m.symbol("pattern_phys");
    assert_eq!(pa, 0x30_0000, "linker script places the pattern at 3 MiB");
    let mut page = vec![0u8; 4096];
    vmi.read_physical(Gpa(pa), &mut page).unwrap();
    let magic = b"VMI-TESTGUEST-PATTERN";
    assert_eq!(&page[..magic.len()], magic);
    for (i, b) in page.iter().enumerate().skip(magic.len()) {
        assert_eq!(*b, i as u8, "pattern byte {i}");
    }
}

#[test]
fn own_page_tables_translate_sites_and_cr3_alternates() {
    let (_guest, m, vmi) = boot();
    let (pml4_a, pml4_b) = (m.symbol("pml4_a"), m.symbol("pml4_b"));
    let site = m.symbol("site_1");
    assert!(site >= HIGH, "sites run in the higher half");

    let mut roots = std::collections::BTreeSet::new();
    let mut counters = Vec::new();
    for _ in 0..6 {
        let paused = vmi.pause().unwrap();
        let regs = vmi
            .registers(
                VcpuId(0),
                RegisterGroups::CONTROL | RegisterGroups::EFER | RegisterGroups::GPRS,
                &[],
            )
            .unwrap();
        let (cr0, cr4, efer) = regs.paging_inputs().unwrap();
        let mode = PagingMode::from_registers(cr0, cr4, efer);
        assert_eq!(mode, PagingMode::Ia32e { nxe: true });
        let cr3 = regs.control.unwrap().cr3;
        assert!(
            cr3 == pml4_a || cr3 == pml4_b,
            "CR3 {cr3:#x} is one of the PML4s"
        );
        roots.insert(cr3);
        assert!(
            regs.gprs.unwrap().rip >= HIGH,
            "the loop runs in the higher half"
        );

        // The higher-half alias uses 4 KiB pages; the identity map 2 MiB pages.
        let t = translate(&vmi, mode, Gpa(cr3), Gva(site)).unwrap();
        assert_eq!(t.gpa, Gpa(site - HIGH));
        assert_eq!(t.page_size, PageSize::Size4K);
        let low = translate(&vmi, mode, Gpa(cr3), Gva(site - HIGH)).unwrap();
        assert_eq!(
            (low.gpa, low.page_size),
            (Gpa(site - HIGH), PageSize::Size2M)
        );

        // The code at the site is the `nop` the source puts there.
        let mut insn = [0u8; 1];
        read_virtual(&vmi, mode, Gpa(cr3), Gva(site), &mut insn).unwrap();
        assert_eq!(insn, [0x90]);

        let mut counter = [0u8; 8];
        read_virtual(&vmi, mode, Gpa(cr3), Gva(m.symbol("counter")), &mut counter).unwrap();
        counters.push(u64::from_le_bytes(counter));
        paused.resume().unwrap();
        std::thread::sleep(Duration::from_millis(150));
    }
    assert!(
        counters.windows(2).all(|w| w[0] < w[1]),
        "the loop advances between pauses and not during them: {counters:?}"
    );
    // CR3 alternates every iteration; six samples that all hit the same root would mean
    // the reload never happened (probability 2^-5 otherwise, so allow one more try).
    if roots.len() < 2 {
        for _ in 0..20 {
            let _p = vmi.pause().unwrap();
            let r = vmi
                .registers(VcpuId(0), RegisterGroups::CONTROL, &[])
                .unwrap();
            roots.insert(r.control.unwrap().cr3);
            if roots.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(roots.len(), 2, "CR3 reloads switch between both PML4s");
}
