//! vmi-linux where the kernel's page tables are not the obvious ones:
//! - `pti=on` (KPTI) with vCPU 0 paused while it runs user code, so its CR3 holds the
//!   *user* PGD (bit 12 set) — the kernel address space must still be found (LibVMI
//!   #897);
//! - 5-level paging (`-cpu qemu64,+la57`; Debian's 6.1 kernel has CONFIG_X86_5LEVEL).
//!
//! Ground truth: the guest's own /proc/kallsyms and process list.

use std::time::{Duration, Instant};

use vmi_core::{ReadRegisters, RegisterGroups, VcpuControl, VcpuId};
use vmi_legacy::{LegacyConfig, LegacyQemu, RamSource};
use vmi_linux::{Linux, LinuxOptions};
use vmi_tests::matrix::kernels_dir_or_skip;
use vmi_tests::{truth, Guest, GuestOptions};

fn connect(guest: &Guest) -> LegacyQemu {
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    cfg.ram = RamSource::File(guest.ram_path().to_path_buf());
    LegacyQemu::connect(cfg).expect("connecting to QEMU")
}

/// Checks symbols and the process list of `linux` against the running guest's /proc.
fn agrees_with_proc<V: vmi_core::PhysicalMemory + ReadRegisters>(
    what: &str,
    linux: &Linux<V>,
    kallsyms: &[(u64, char, String)],
    pids: &[u32],
) {
    let mut checked = 0;
    for (addr, _, name) in kallsyms.iter().step_by(97) {
        if let Some(a) = linux.symbols().address_of(name) {
            if kallsyms.iter().filter(|(_, _, n)| n == name).count() == 1 {
                assert_eq!(a, *addr, "{what}: {name}");
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "{what}: {checked} symbols compared");
    let ours: Vec<u32> = linux
        .processes()
        .expect("processes")
        .iter()
        .map(|p| p.pid)
        .collect();
    for pid in pids {
        assert!(ours.contains(pid), "{what}: pid {pid} missing");
    }
}

#[test]
fn kpti_user_mode_vcpu_still_gives_the_kernel() {
    if kernels_dir_or_skip("linux_paging::kpti").is_none() {
        return;
    }
    let guest =
        Guest::launch(GuestOptions::for_matrix_kernel("bookworm").with_pti()).expect("launch");
    guest.wait_ready().expect("boot");
    let cpuinfo = guest
        .run_command("grep -c ' pti' /proc/cpuinfo", Duration::from_secs(30))
        .expect("cpuinfo");
    assert_ne!(
        cpuinfo.lines.first().map(String::as_str),
        Some("0"),
        "PTI is on"
    );
    let kallsyms = truth::kallsyms(&guest).expect("kallsyms");
    // Two busy user-mode loops keep both vCPUs in user code most of the time.
    for _ in 0..2 {
        guest
            .run_command(
                "sh -c 'while :; do :; done' >/dev/null 2>&1 &",
                Duration::from_secs(30),
            )
            .expect("spinner");
    }
    let pids: Vec<u32> = truth::processes(&guest)
        .expect("processes")
        .iter()
        .filter(|p| p.pid == p.tgid && (p.is_kernel_thread || p.pid == 1))
        .map(|p| p.pid)
        .collect();
    let vm = connect(&guest);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut tries = 0;
    loop {
        tries += 1;
        let paused = vm.pause().expect("pause");
        let regs = vm
            .registers(
                VcpuId(0),
                RegisterGroups::CONTROL | RegisterGroups::SEGMENTS,
                &[],
            )
            .expect("registers");
        let cs = regs.segments.expect("segments").cs.selector;
        let cr3 = regs.control.expect("CR3").cr3;
        if cs & 3 == 3 {
            assert_ne!(
                cr3 & (1 << 12),
                0,
                "user mode under KPTI runs on the user PGD"
            );
            let linux = Linux::attach(&vm, LinuxOptions::default())
                .unwrap_or_else(|e| panic!("attach with vCPU 0 in user mode (CR3 {cr3:#x}): {e}"));
            eprintln!("after {tries} pauses, CR3 {cr3:#x}:\n{}", linux.report());
            assert_eq!(
                linux.kernel().kernel_space.cr3.0,
                cr3 & 0x000f_ffff_ffff_e000
            );
            agrees_with_proc("pti=on, user mode", &linux, &kallsyms, &pids);
            // The task vCPU 0 runs is a user process (one of the spinners or a shell).
            let cur = linux.current_task(VcpuId(0)).expect("current task");
            assert!(!cur.kernel_thread, "vCPU 0 in user mode runs {cur:?}");
            drop(paused);
            return;
        }
        drop(paused);
        assert!(
            Instant::now() < deadline,
            "vCPU 0 never paused in user mode in {tries} tries"
        );
        std::thread::sleep(Duration::from_millis(37));
    }
}

#[test]
fn five_level_paging() {
    if kernels_dir_or_skip("linux_paging::la57").is_none() {
        return;
    }
    let mut opts = GuestOptions::for_matrix_kernel("bookworm");
    opts.cpu_model = Some("qemu64,+la57".to_owned());
    let guest = Guest::launch(opts).expect("launch");
    guest.wait_ready().expect("boot");
    let kallsyms = truth::kallsyms(&guest).expect("kallsyms");
    let pids: Vec<u32> = truth::processes(&guest)
        .expect("processes")
        .iter()
        .filter(|p| p.pid == p.tgid && (p.is_kernel_thread || p.pid == 1))
        .map(|p| p.pid)
        .collect();
    let vm = connect(&guest);
    let _paused = vm.pause().expect("pause");
    let linux = Linux::attach(&vm, LinuxOptions::default()).expect("attach");
    eprintln!("{}", linux.report());
    assert!(linux.kernel().la57, "the guest runs with 5-level paging");
    agrees_with_proc("la57", &linux, &kallsyms, &pids);
    let init = linux.process(1).expect("pid 1");
    let vmas = linux.vmas(&init).expect("VMAs");
    assert!(vmas
        .iter()
        .any(|v| v.name.as_deref() == Some("/bin/busybox")));
}
