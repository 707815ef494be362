//! vmi-legacy (QMP + gdbstub + shared RAM) on a real QEMU guest: the purpose-built test
//! guest (`xtask/guest/testguest.S`, under TCG or KVM) or the Linux guest (TCG).
//!
//! Ground truth: the guest's RAM file (read without QEMU), the addresses the guest
//! printed on its serial console, and for Linux `/proc/iomem` (where the kernel's code
//! lies physically) read by a shell command inside the guest.

use std::time::Duration;

use vmi_core::paging::{translate, PagingMode};
use vmi_core::registers::Register;
use vmi_core::{Gpa, Gva, RegisterSnapshot};
use vmi_legacy::{LegacyConfig, LegacyQemu};

use super::RamFile;
use crate::conformance::{ConformanceTarget, Site};
use crate::{Accel, Guest, GuestOptions};

/// The test guest's higher half: `HIGH + pa` maps `pa` (0–2 MiB).
const HIGH: u64 = 0xffff_8000_0000_0000;
/// The test guest's pattern page starts with this (then bytes `i & 0xff`).
const PATTERN_MAGIC: &[u8] = b"VMI-TESTGUEST-PATTERN";
/// How long the shared guest lives (the watchdog's bound; the suite takes far less).
const LIFETIME: Duration = Duration::from_secs(1200);

/// Which guest, and what is known about it.
enum Kind {
    /// The test guest: its symbols (higher-half VAs, `pml4_*` and `pattern_phys`
    /// physical).
    TestGuest { pml4: [u64; 2], counter_pa: u64 },
    /// Linux: physical = virtual − `_text` + the start of "Kernel code" in /proc/iomem.
    Linux { banner_va: u64, banner_pa: u64 },
}

/// vmi-legacy with the gdbstub on a shared real guest.
pub struct LegacyTarget {
    guest: Guest,
    kind: Kind,
    label: String,
    known: (Gpa, Vec<u8>),
    known_virtual: (Gva, Vec<u8>),
    scratch: Gpa,
    site: Site,
    progress_pa: u64,
}

/// Whether the guest environment names what `needs` lists; prints a skip message and
/// returns `false` if not, or panics when `VMI_REQUIRE_QEMU=1` (under `cargo xtask`).
fn provisioned(test: &str, needs: &[&str]) -> bool {
    let missing: Vec<&str> = needs
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none_or(|x| x.is_empty()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not set (run through `cargo xtask test`)",
        missing.join(", ")
    );
    if std::env::var(crate::matrix::ENV_REQUIRE_QEMU).as_deref() == Ok("1") {
        panic!("{test}: {why}, and VMI_REQUIRE_QEMU=1");
    }
    eprintln!("SKIPPED {test}: {why}");
    false
}

impl LegacyTarget {
    /// [`LegacyTarget::test_guest`], or `None` (after a message) where the test guest is
    /// not provisioned — or, for `Some(Accel::Kvm)`, where `cargo xtask` found that KVM
    /// cannot run it on this host (`VMI_TEST_GUEST_ACCEL` is not `kvm`).
    pub fn test_guest_or_skip(accel: Option<Accel>) -> Option<Self> {
        let test = "conformance (test guest)";
        if !provisioned(
            test,
            &[
                crate::guest::ENV_TEST_GUEST,
                crate::paths::ENV_KERNEL,
                crate::paths::ENV_INITRD,
            ],
        ) {
            return None;
        }
        if accel == Some(Accel::Kvm)
            && std::env::var(crate::guest::ENV_TEST_GUEST_ACCEL).as_deref() != Ok("kvm")
        {
            eprintln!(
                "SKIPPED {test} under KVM: {} is not `kvm` (KVM cannot run the test guest \
                 here; the TCG suite covers it)",
                crate::guest::ENV_TEST_GUEST_ACCEL
            );
            return None;
        }
        Some(Self::test_guest(accel))
    }

    /// [`LegacyTarget::linux`], or `None` (after a message) where the Linux guest is not
    /// provisioned.
    pub fn linux_or_skip() -> Option<Self> {
        provisioned(
            "conformance (Linux guest)",
            &[crate::paths::ENV_KERNEL, crate::paths::ENV_INITRD],
        )
        .then(Self::linux)
    }

    /// Boots the test guest on `accel` (`None`: the accelerator `cargo xtask` chose for
    /// it) and waits until it is ready.
    pub fn test_guest(accel: Option<Accel>) -> Self {
        let mut opts = GuestOptions::test_guest();
        if let Some(a) = accel {
            opts.paths.accel = a;
        }
        opts.lifetime = LIFETIME;
        let guest = Guest::launch(opts).expect("launching the test guest");
        let m = guest.wait_ready().expect("the test guest is ready");
        let sym = |name: &str| {
            m.kallsyms(name)
                .unwrap_or_else(|| panic!("the test guest did not report {name}"))
        };
        let pattern = sym("pattern_phys");
        let mut known = PATTERN_MAGIC.to_vec();
        known.extend((PATTERN_MAGIC.len()..256).map(|i| i as u8));
        let site_2 = sym("site_2");
        let mut code = vec![0u8; 13];
        guest.read_ram(site_2 - HIGH, &mut code).unwrap();
        let site_1 = sym("site_1");
        let label = format!("vmi-legacy on the test guest ({})", guest.accel().as_str());
        Self {
            kind: Kind::TestGuest {
                pml4: [sym("pml4_a"), sym("pml4_b")],
                counter_pa: sym("counter") - HIGH,
            },
            label,
            known: (Gpa(pattern), known),
            known_virtual: (Gva(site_2), code),
            // The pattern page's second half: nothing in the guest reads it.
            scratch: Gpa(pattern + 0x800),
            site: Site {
                gva: Gva(site_1),
                gpa: Gpa(site_1 - HIGH),
            },
            progress_pa: sym("counter") - HIGH,
            guest,
        }
    }

    /// Boots the Linux guest (`VMI_GUEST_KERNEL`/`INITRD`) and starts a shell loop in
    /// it that opens `/proc/uptime` every 20 ms, so that `do_sys_openat2` (the hot
    /// site) runs often.
    pub fn linux() -> Self {
        let mut opts = GuestOptions::from_env();
        opts.lifetime = LIFETIME;
        let guest = Guest::launch(opts).expect("launching the Linux guest");
        let m = guest.wait_ready().expect("the Linux guest is ready");
        let sym = |name: &str| {
            m.kallsyms(name)
                .unwrap_or_else(|| panic!("the Linux guest did not report {name}"))
        };
        let iomem = guest
            .run_command("grep 'Kernel code' /proc/iomem", Duration::from_secs(60))
            .expect("/proc/iomem");
        let line = iomem.lines.iter().find(|l| l.contains("Kernel code"));
        let code_pa = line
            .map(|l| l.trim())
            .unwrap_or_default()
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no Kernel code in /proc/iomem: {:?}", iomem.lines));
        let text = sym("_text");
        let pa = |va: u64| va - text + code_pa;
        let banner = m.banner().expect("the banner marker").as_bytes().to_vec();
        let banner_va = sym("linux_banner");
        let mut check = vec![0u8; banner.len()];
        guest.read_ram(pa(banner_va), &mut check).unwrap();
        assert_eq!(
            check,
            banner,
            "linux_banner at {:#x} (from /proc/iomem)",
            pa(banner_va)
        );
        guest
            .run_command(
                "(while :; do read x < /proc/uptime; usleep 20000; done) \
                 </dev/null >/dev/null 2>&1 &",
                Duration::from_secs(60),
            )
            .expect("starting the opener loop");
        let site = sym("do_sys_openat2");
        let label = "vmi-legacy on the Linux guest (tcg)".to_owned();
        Self {
            kind: Kind::Linux {
                banner_va,
                banner_pa: pa(banner_va),
            },
            label,
            known: (Gpa(pa(banner_va)), banner.clone()),
            known_virtual: (Gva(banner_va), banner),
            // In the low 64 KiB the kernel reserves and never uses (X86_RESERVE_LOW).
            scratch: Gpa(0x2800),
            site: Site {
                gva: Gva(site),
                gpa: Gpa(pa(site)),
            },
            progress_pa: pa(sym("jiffies")),
            guest,
        }
    }

    /// The guest.
    pub fn guest(&self) -> &Guest {
        &self.guest
    }

    fn read_u64(&self, pa: u64) -> u64 {
        let mut b = [0u8; 8];
        self.guest.read_ram(pa, &mut b).expect("reading guest RAM");
        u64::from_le_bytes(b)
    }
}

impl ConformanceTarget for LegacyTarget {
    type Session = LegacyQemu;

    fn describe(&self) -> String {
        self.label.clone()
    }

    fn open(&self) -> LegacyQemu {
        let mut cfg = LegacyConfig::new(self.guest.qmp_socket());
        cfg.gdb_socket = Some(self.guest.gdb_socket().into());
        LegacyQemu::connect(cfg).unwrap_or_else(|e| panic!("connecting to {}: {e}", self.label))
    }

    fn read_truth(&self, gpa: Gpa, buf: &mut [u8]) {
        self.guest
            .read_ram(gpa.0, buf)
            .unwrap_or_else(|e| panic!("reading the RAM file at {gpa}: {e}"));
    }

    fn known_bytes(&self) -> (Gpa, Vec<u8>) {
        self.known.clone()
    }

    fn known_virtual(&self) -> (Gva, Vec<u8>) {
        self.known_virtual.clone()
    }

    fn scratch(&self) -> Gpa {
        self.scratch
    }

    fn ram_end(&self) -> Gpa {
        Gpa(self.guest.ram_size())
    }

    fn hot_site(&self) -> Site {
        self.site
    }

    fn progress(&self) -> Option<u64> {
        Some(self.read_u64(self.progress_pa))
    }

    fn check_paused_registers(&self, regs: &RegisterSnapshot) {
        let c = regs.control.expect("control registers");
        let efer = regs.efer().expect("EFER");
        assert_eq!(c.cr0 & 0x8000_0001, 0x8000_0001, "CR0.PG|PE: {:#x}", c.cr0);
        assert_ne!(c.cr4 & 0x20, 0, "CR4.PAE: {:#x}", c.cr4);
        assert_eq!(efer & 0x500, 0x500, "EFER.LME|LMA: {efer:#x}");
        let mode = PagingMode::from_registers(c.cr0, c.cr4, efer);
        let root = Gpa(c.cr3 & 0x000f_ffff_ffff_f000);
        match &self.kind {
            Kind::TestGuest { pml4, counter_pa } => {
                assert!(
                    pml4.contains(&root.0),
                    "CR3 {:#x} is pml4_a or pml4_b",
                    c.cr3
                );
                let g = regs.gprs.expect("GPRs");
                assert!(
                    (HIGH..HIGH + (2 << 20)).contains(&g.rip),
                    "RIP {:#x} in the higher half",
                    g.rip
                );
                // The loop stores r12 to `counter` right after incrementing it.
                let counter = self.read_u64(*counter_pa);
                assert!(
                    g.r12 == counter || g.r12 == counter + 1,
                    "r12 {:#x} vs counter {counter:#x}",
                    g.r12
                );
                assert_eq!(efer & 0x800, 0x800, "EFER.NXE (set by the guest)");
                assert_eq!(regs.get(Register::Cr3), Some(c.cr3));
            }
            Kind::Linux {
                banner_va,
                banner_pa,
            } => {
                // The guest's own page tables, walked in its RAM file with the CR3 the
                // backend reported, put linux_banner where /proc/iomem says.
                let t = translate(&RamFile(&self.guest), mode, root, Gva(*banner_va))
                    .unwrap_or_else(|e| panic!("linux_banner through CR3 {:#x}: {e}", c.cr3));
                assert_eq!(t.gpa, Gpa(*banner_pa), "linux_banner's frame");
                let g = regs.gprs.expect("GPRs");
                assert_ne!(g.rsp, 0);
            }
        }
    }

    fn requests(&self, session: &LegacyQemu) -> Option<u64> {
        session.gdb().map(|g| {
            let c = g.counters();
            c.requests + c.interrupts
        })
    }
}
