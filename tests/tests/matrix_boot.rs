//! Every kernel of the matrix (`VMI_LINUX_KERNELS`) boots with its own initramfs, loads
//! its modules, and the ground-truth helpers (`vmi_tests::truth`) read sane, mutually
//! consistent data from it; with `pti=on` the kernel really isolates its page tables.
//!
//! Each test prints its timings (boot, and each ground-truth set through the console).

use std::time::{Duration, Instant};

use vmi_tests::matrix::{kernels_dir_or_skip, MatrixKernel};
use vmi_tests::{truth, Guest, GuestOptions};

/// Boots `suite` (with `pti`: `pti=on`), returning the guest, its kernel and the boot time.
fn boot(test: &str, suite: &str, pti: bool) -> Option<(Guest, MatrixKernel, Duration)> {
    let dir = kernels_dir_or_skip(test)?;
    let kernel = MatrixKernel::open(&dir, suite).unwrap_or_else(|e| panic!("{e}"));
    let mut opts = GuestOptions::for_matrix_kernel(suite);
    if pti {
        opts = opts.with_pti();
    }
    let started = Instant::now();
    let guest = Guest::launch(opts).unwrap_or_else(|e| panic!("launching {suite}: {e}"));
    guest
        .wait_ready()
        .unwrap_or_else(|e| panic!("booting {suite}: {e}"));
    Some((guest, kernel, started.elapsed()))
}

fn timed<T>(what: &str, timings: &mut Vec<String>, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    timings.push(format!("{what} {:.2?}", started.elapsed()));
    out
}

fn boots_and_tells_the_truth(suite: &str) {
    let test = format!("matrix_boot::{suite}");
    let Some((guest, kernel, boot_time)) = boot(&test, suite, false) else {
        return;
    };
    let mut timings = vec![format!("boot {boot_time:.2?}")];
    let markers = guest.markers();
    // The vmlinux xtask decompressed is the booted kernel: it holds the very banner
    // (`linux_banner`, which /proc/version prints) the guest reports.
    let vmlinux = std::fs::read(&kernel.vmlinux).expect("vmlinux");
    let banner = markers.banner().expect("banner").trim().to_owned();
    assert!(
        vmlinux.starts_with(b"\x7fELF"),
        "{suite}: vmlinux is not an ELF"
    );
    assert!(
        vmlinux
            .windows(banner.len())
            .any(|w| w == banner.as_bytes()),
        "{suite}: {banner:?} is not in {}",
        kernel.vmlinux.display()
    );
    drop(vmlinux);
    assert_eq!(
        markers.get("release"),
        Some(kernel.release.as_str()),
        "{suite}"
    );
    assert!(
        !kernel.modules.is_empty(),
        "{suite}: modules.txt lists no module"
    );
    for m in &kernel.modules {
        assert_eq!(
            markers.get(&format!("module {m}")),
            Some("loaded"),
            "{suite}: /init did not load {m}:\n{}",
            guest.serial_log()
        );
    }

    let lsmod = guest
        .run_command("lsmod", Duration::from_secs(60))
        .expect("lsmod");
    for m in &kernel.modules {
        assert!(
            lsmod
                .lines
                .iter()
                .any(|l| l.split_whitespace().next() == Some(m)),
            "{suite}: lsmod lacks {m}: {:?}",
            lsmod.lines
        );
    }

    // kallsyms: complete (compare the line count the guest counts itself), and agreeing
    // with the addresses /init printed at boot.
    let count = guest
        .run_command("wc -l < /proc/kallsyms", Duration::from_secs(60))
        .expect("wc");
    let count: usize = count
        .lines
        .last()
        .and_then(|l| l.trim().parse().ok())
        .expect("count");
    let all = timed("kallsyms", &mut timings, || truth::kallsyms_all(&guest)).expect("kallsyms");
    assert_eq!(
        all.len(),
        count,
        "{suite}: every /proc/kallsyms line arrived"
    );
    let image = truth::kallsyms(&guest).expect("kallsyms");
    assert!(
        image.len() > 50_000 && image.len() < all.len(),
        "{suite}: {}",
        image.len()
    );
    for name in ["_text", "linux_banner", "init_task"] {
        let printed = markers.kallsyms(name).expect(name);
        let found: Vec<u64> = image
            .iter()
            .filter(|(_, _, n)| n == name)
            .map(|(a, _, _)| *a)
            .collect();
        assert_eq!(found, [printed], "{suite}: {name}");
    }
    for m in &kernel.modules {
        assert!(
            all.iter().any(|s| s.module.as_deref() == Some(m.as_str())),
            "{suite}: no kallsyms symbol of module {m}"
        );
    }
    timings.push(format!("({} symbols)", all.len()));

    let procs = timed("processes", &mut timings, || truth::processes(&guest)).expect("processes");
    let init = procs.iter().find(|p| p.pid == 1).expect("pid 1");
    assert_eq!(
        (
            init.comm.as_str(),
            init.ppid,
            init.uid,
            init.is_kernel_thread
        ),
        ("init", 0, 0, false),
        "{suite}: {init:?}"
    );
    assert_eq!(
        init.cmdline.last().map(String::as_str),
        Some("/init"),
        "{suite}"
    );
    let kthreadd = procs.iter().find(|p| p.pid == 2).expect("pid 2");
    assert!(
        kthreadd.is_kernel_thread && kthreadd.cmdline.is_empty(),
        "{kthreadd:?}"
    );
    assert_eq!(kthreadd.comm, "kthreadd");
    let kernel_threads = procs.iter().filter(|p| p.is_kernel_thread).count();
    assert!(
        kernel_threads > 10,
        "{suite}: {kernel_threads} kernel threads"
    );
    // The tick loop: a subshell of init, alive for the whole boot.
    assert!(
        procs
            .iter()
            .any(|p| p.ppid == 1 && p.comm == "init" && !p.is_kernel_thread),
        "{suite}: the tick loop is missing from {procs:?}"
    );
    timings.push(format!("({} tasks)", procs.len()));

    let modules = timed("modules", &mut timings, || truth::modules(&guest)).expect("modules");
    for m in &kernel.modules {
        let found = modules.iter().find(|t| &t.name == m).expect(m);
        assert_eq!(found.state, "Live", "{suite}: {found:?}");
        assert!(
            found.address.is_some_and(|a| a >= 0xffff_8000_0000_0000),
            "{suite}: {found:?}"
        );
    }
    if kernel.modules.iter().any(|m| m == "vfat") {
        let fat = modules.iter().find(|t| t.name == "fat").expect("fat");
        assert!(fat.used_by.iter().any(|u| u == "vfat"), "{fat:?}");
    }

    let dmesg = timed("dmesg", &mut timings, || truth::dmesg(&guest)).expect("dmesg");
    assert!(
        dmesg.iter().any(|l| l.contains(&banner)),
        "{suite}: the banner is not in dmesg"
    );
    timings.push(format!("({} dmesg lines)", dmesg.len()));

    let maps = timed("maps(1)", &mut timings, || truth::maps(&guest, 1)).expect("maps");
    assert!(
        maps.iter()
            .any(|m| m.path.as_deref() == Some("/bin/busybox")),
        "{maps:?}"
    );
    assert!(
        maps.iter().any(|m| m.path.as_deref() == Some("[stack]")),
        "{maps:?}"
    );
    assert!(maps.windows(2).all(|w| w[0].end <= w[1].start), "{maps:?}");

    // mitigations=off: no page-table isolation.
    let flags = guest
        .run_command("grep -m1 ^flags /proc/cpuinfo", Duration::from_secs(60))
        .expect("cpuinfo");
    assert!(
        !flags
            .lines
            .iter()
            .any(|l| l.split_whitespace().any(|f| f == "pti")),
        "{suite}: pti without pti=on: {:?}",
        flags.lines
    );
    eprintln!("{suite} ({}): {}", kernel.release, timings.join(", "));
}

fn pti_is_on(suite: &str) {
    let test = format!("matrix_boot::pti_{suite}");
    let Some((guest, kernel, boot_time)) = boot(&test, suite, true) else {
        return;
    };
    let cmdline = guest
        .markers()
        .get("cmdline")
        .unwrap_or_default()
        .to_owned();
    assert!(
        cmdline.contains("pti=on") && !cmdline.contains("mitigations=off"),
        "{cmdline}"
    );
    let flags = guest
        .run_command("grep -m1 ^flags /proc/cpuinfo", Duration::from_secs(60))
        .expect("cpuinfo");
    assert!(
        flags
            .lines
            .iter()
            .any(|l| l.split_whitespace().any(|f| f == "pti")),
        "{suite}: no pti flag: {:?}",
        flags.lines
    );
    let dmesg = truth::dmesg(&guest).expect("dmesg");
    assert!(
        dmesg
            .iter()
            .any(|l| l.contains("Kernel/User page tables isolation: enabled")),
        "{suite}: dmesg does not say PTI is enabled"
    );
    eprintln!(
        "{suite} ({}) with pti=on: boot {boot_time:.2?}",
        kernel.release
    );
}

#[test]
fn bullseye() {
    boots_and_tells_the_truth("bullseye");
}

#[test]
fn bookworm() {
    boots_and_tells_the_truth("bookworm");
}

#[test]
fn trixie() {
    boots_and_tells_the_truth("trixie");
}

#[test]
fn sid() {
    boots_and_tells_the_truth("sid");
}

#[test]
fn pti_bullseye() {
    pti_is_on("bullseye");
}

#[test]
fn pti_bookworm() {
    pti_is_on("bookworm");
}

#[test]
fn pti_trixie() {
    pti_is_on("trixie");
}

#[test]
fn pti_sid() {
    pti_is_on("sid");
}
