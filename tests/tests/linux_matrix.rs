//! vmi-linux on every kernel of the matrix (Debian 5.10, 6.1, 6.12 and sid's newest),
//! live through vmi-legacy, checked against the guest's own `/proc` read through its
//! console: symbols both ways (/proc/kallsyms), every process (/proc/PID/status and
//! cmdline), modules (/proc/modules), the kernel log (dmesg) and pid 1's memory map
//! (/proc/1/maps). Then the same kernel through a memory dump and through vmi-kvm on
//! kvmi-sim serving that dump. Each kernel boots once.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vmi_core::{VcpuControl, VcpuId};
use vmi_legacy::{LegacyConfig, LegacyQemu, RamSource};
use vmi_linux::{Linux, LinuxOptions, Process};
use vmi_tests::matrix::{kernels_dir_or_skip, MatrixKernel};
use vmi_tests::{dump, examples, truth, volatility, Guest, GuestOptions};

struct Truth {
    kallsyms: Vec<(u64, char, String)>,
    processes: Vec<truth::ProcTruth>,
    modules: Vec<truth::ModuleTruth>,
    dmesg: Vec<String>,
    maps1: Vec<truth::MapTruth>,
}

fn gather(guest: &Guest) -> Truth {
    Truth {
        kallsyms: truth::kallsyms(guest).expect("/proc/kallsyms"),
        processes: truth::processes(guest).expect("/proc/PID"),
        modules: truth::modules(guest).expect("/proc/modules"),
        dmesg: truth::dmesg(guest).expect("dmesg"),
        maps1: truth::maps(guest, 1).expect("/proc/1/maps"),
    }
}

fn connect(guest: &Guest) -> LegacyQemu {
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    cfg.ram = RamSource::File(guest.ram_path().to_path_buf());
    LegacyQemu::connect(cfg).expect("connecting to QEMU")
}

/// Symbols both ways against /proc/kallsyms: every name that occurs once there has the
/// same address here, and every address resolves to a symbol at that address.
fn check_symbols<V: vmi_core::PhysicalMemory + vmi_core::ReadRegisters>(
    suite: &str,
    linux: &Linux<V>,
    truth: &[(u64, char, String)],
) {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for (_, _, n) in truth {
        *count.entry(n).or_default() += 1;
    }
    let mut checked = 0;
    let mut missing = Vec::new();
    for (addr, _, name) in truth {
        if count[name.as_str()] != 1 {
            continue;
        }
        match linux.symbols().address_of(name) {
            Some(a) => assert_eq!(a, *addr, "{suite}: {name}"),
            None => missing.push(name.clone()),
        }
        let (s, off) = linux
            .symbols()
            .symbol_at(*addr)
            .unwrap_or_else(|| panic!("{suite}: {addr:#x} resolves to nothing"));
        assert_eq!(
            off, 0,
            "{suite}: {addr:#x} ({name}) resolves to {}+{off:#x}",
            s.name
        );
        assert_eq!(s.address, *addr);
        checked += 1;
    }
    assert!(
        missing.len() * 1000 < checked,
        "{suite}: {} of {checked} /proc/kallsyms names missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(checked > 50_000, "{suite}: only {checked} symbols compared");
    eprintln!(
        "{suite}: {checked} symbols equal both ways ({} missing)",
        missing.len()
    );
}

/// Every process of ours against /proc: those the console command spawned are not in a
/// snapshot taken after it ended, everything else must be, with equal fields.
fn check_processes<V: vmi_core::PhysicalMemory + vmi_core::ReadRegisters>(
    suite: &str,
    linux: &Linux<V>,
    truth: &[truth::ProcTruth],
) -> Vec<Process> {
    let ours = linux.processes().expect("processes");
    assert_eq!(ours[0].pid, 0, "{suite}: init_task first");
    let by_pid: BTreeMap<u32, &Process> = ours.iter().map(|p| (p.pid, p)).collect();
    let mut compared = 0;
    // States change between the console's snapshot and ours (a worker may be running
    // at the pause): most idle kernel threads must still read as idle.
    let (mut idle, mut idle_agree) = (0, 0);
    for t in truth.iter().filter(|t| t.pid == t.tgid) {
        let Some(p) = by_pid.get(&t.pid) else {
            // Spawned by the truth command itself (sh, cat, gzip…) and gone since.
            assert!(
                !t.is_kernel_thread && t.pid > 1,
                "{suite}: pid {} ({}) missing from our list",
                t.pid,
                t.comm
            );
            continue;
        };
        // /proc names a workqueue worker by its comm plus what it works on now
        // (`kworker/0:0-rcu_gp`, the kernel's wq_worker_comm); the task holds the comm.
        // 6.10+ also rebuilds a rescuer's long name (`kworker/R-kvfree_rcu_reclaim`)
        // from its workqueue, where the task's comm is cut at 15 bytes.
        let proc_name = match t.comm.strip_prefix(p.name.as_str()) {
            Some(rest)
                if p.comm.starts_with("kworker/")
                    && (rest.starts_with(['-', '+']) || p.comm.len() == 15) =>
            {
                p.name.as_str()
            }
            _ => t.comm.as_str(),
        };
        assert!(p.name.starts_with(&p.comm), "{suite}: {p:?}");
        assert_eq!(
            (
                p.tgid,
                p.ppid,
                p.name.as_str(),
                p.uid,
                p.gid,
                p.kernel_thread
            ),
            (t.tgid, t.ppid, proc_name, t.uid, t.gid, t.is_kernel_thread),
            "{suite}: pid {}",
            t.pid
        );
        if p.kernel_thread {
            assert!(
                p.pgd.is_none(),
                "{suite}: kernel thread {} has a pgd",
                p.pid
            );
            if t.state == 'I' && p.state.letter() == 'I' {
                idle_agree += 1;
            }
            if t.state == 'I' {
                idle += 1;
            }
        } else {
            assert!(p.pgd.is_some(), "{suite}: pid {} has no pgd", p.pid);
            let cmdline = linux.cmdline(p).expect("cmdline");
            assert_eq!(cmdline, t.cmdline, "{suite}: cmdline of pid {}", t.pid);
        }
        compared += 1;
    }
    assert!(
        idle_agree * 10 >= idle * 8,
        "{suite}: only {idle_agree} of {idle} idle kernel threads read as idle"
    );
    let kthreads = truth
        .iter()
        .filter(|t| t.is_kernel_thread && t.pid == t.tgid)
        .count();
    assert!(
        compared > kthreads,
        "{suite}: {compared} processes compared"
    );
    eprintln!(
        "{suite}: {compared} processes equal to /proc ({} listed)",
        ours.len()
    );
    ours
}

fn check_modules<V: vmi_core::PhysicalMemory + vmi_core::ReadRegisters>(
    suite: &str,
    linux: &Linux<V>,
    truth: &[truth::ModuleTruth],
) {
    let ours = linux.modules().expect("modules");
    let got: Vec<(String, u64, &str, Option<u64>)> = ours
        .iter()
        .map(|m| (m.name.clone(), m.size, m.state.proc_name(), Some(m.base)))
        .collect();
    let want: Vec<(String, u64, &str, Option<u64>)> = truth
        .iter()
        .map(|m| (m.name.clone(), m.size, m.state.as_str(), m.address))
        .collect();
    assert_eq!(got, want, "{suite}: modules");
    assert!(
        ours.len() >= 4,
        "{suite}: the initramfs loads at least 4 modules"
    );
}

fn check_dmesg<V: vmi_core::PhysicalMemory + vmi_core::ReadRegisters>(
    suite: &str,
    linux: &Linux<V>,
    truth: &[String],
) {
    let ours = linux.dmesg().expect("dmesg");
    let lines: Vec<String> = ours.iter().flat_map(|r| r.dmesg_lines()).collect();
    // The guest's log may have grown after its dmesg ran: its lines are a prefix.
    let n = truth.len();
    assert!(
        lines.len() >= n,
        "{suite}: {} records, dmesg printed {n}",
        lines.len()
    );
    for (i, (a, b)) in lines.iter().zip(truth).enumerate() {
        assert_eq!(a.trim_end(), b.trim_end(), "{suite}: dmesg line {i}");
    }
    eprintln!("{suite}: {n} dmesg lines equal");
}

fn check_maps<V: vmi_core::PhysicalMemory + vmi_core::ReadRegisters>(
    suite: &str,
    linux: &Linux<V>,
    truth: &[truth::MapTruth],
) {
    let init = linux.process(1).expect("pid 1");
    let ours = linux.vmas(&init).expect("VMAs of pid 1");
    let got: Vec<(u64, u64, String, u64, Option<String>)> = ours
        .iter()
        .map(|v| (v.start, v.end, v.perms(), v.offset, v.name.clone()))
        .collect();
    let want: Vec<(u64, u64, String, u64, Option<String>)> = truth
        .iter()
        .map(|m| (m.start, m.end, m.perms.clone(), m.offset, m.path.clone()))
        .collect();
    assert_eq!(got, want, "{suite}: /proc/1/maps");
}

/// The same kernel through a dump file and through vmi-kvm on kvmi-sim serving it.
fn check_dump_and_kvmi(suite: &str, elf: &Path, live: &[Process]) {
    let dump = vmi_dump::ElfDump::open(elf).expect("dump");
    let linux = Linux::attach(&dump, LinuxOptions::default()).expect("attach to the dump");
    let from_dump: Vec<(u32, String)> = linux
        .processes()
        .unwrap()
        .into_iter()
        .map(|p| (p.pid, p.comm))
        .collect();
    let want: Vec<(u32, String)> = live.iter().map(|p| (p.pid, p.comm.clone())).collect();
    assert_eq!(from_dump, want, "{suite}: processes from the dump");

    let (vm, _sim) = vmi_tests::kvmi::serving_dump(&dump, &format!("linux-{suite}"));
    let started = Instant::now();
    let linux = Linux::attach(&vm, LinuxOptions::default()).expect("attach over KVMi");
    let over_kvmi: Vec<(u32, String)> = linux
        .processes()
        .unwrap()
        .into_iter()
        .map(|p| (p.pid, p.comm))
        .collect();
    assert_eq!(over_kvmi, want, "{suite}: processes over vmi-kvm/kvmi-sim");
    let names: HashSet<String> = linux
        .modules()
        .unwrap()
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(names.len() >= 4, "{suite}: modules over KVMi");
    eprintln!(
        "{suite}: dump and KVMi agree ({:.1?} over KVMi)",
        started.elapsed()
    );
}

/// Volatility 3 (PyPI) with the ISF vmi-linux exported, on the dump: its pslist and
/// lsmod agree with vmi-linux.
fn check_volatility(
    suite: &str,
    elf: &Path,
    isf: &Path,
    live: &[Process],
    modules: &[vmi_linux::Module],
    taint_flag_module: bool,
) {
    let vol = volatility::Volatility::from_env_or_panic();
    let (tasks, took) = vol.pslist(elf, isf).expect("linux.pslist");
    let got: BTreeMap<u64, (u64, String, u64)> = tasks
        .iter()
        .map(|t| (t.pid, (t.ppid, t.comm.clone(), t.offset)))
        .collect();
    let want: BTreeMap<u64, (u64, String, u64)> = live
        .iter()
        .filter(|p| p.pid != 0)
        .map(|p| {
            (
                u64::from(p.pid),
                (u64::from(p.ppid), p.comm.clone(), p.task),
            )
        })
        .collect();
    // Every task Volatility lists is ours, field for field. Volatility may leave out a
    // short-lived user task caught mid-fork/exec/exit at the pause (seen once: the tick
    // loop's `sleep`, pid 196 on 5.10); ours lists it. Anything else missing fails.
    for (pid, fields) in &got {
        assert_eq!(
            want.get(pid),
            Some(fields),
            "{suite}: Volatility's pid {pid}"
        );
    }
    let extra: Vec<(&u64, &(u64, String, u64))> = want
        .iter()
        .filter(|(pid, _)| !got.contains_key(pid))
        .collect();
    let live_by_pid: BTreeMap<u64, &Process> = live.iter().map(|p| (u64::from(p.pid), p)).collect();
    assert!(
        extra.len() <= 2
            && extra.iter().all(|(pid, _)| {
                let p = live_by_pid[pid];
                !p.kernel_thread && p.pid > 1 && p.ppid > 1
            }),
        "{suite}: Volatility's linux.pslist lacks {extra:?}"
    );
    if !extra.is_empty() {
        eprintln!("{suite}: Volatility left out short-lived user tasks {extra:?}");
    }
    if !taint_flag_module {
        // Kernel 7.x dropped `struct taint_flag.module`, which Volatility 3 2.28's lsmod
        // reads for every module: its lsmod fails whatever the ISF. When a Volatility
        // release handles it, this fails and the comparison below takes over.
        let err = vol
            .lsmod(elf, isf)
            .expect_err("linux.lsmod on a kernel without taint_flag.module");
        assert!(
            err.to_string().contains("taint_flag.module"),
            "{suite}: {err}"
        );
        eprintln!("{suite}: Volatility agrees: {} tasks (pslist {took:.1?}); its lsmod cannot read this kernel (taint_flag.module is gone)", tasks.len());
        return;
    }
    let (vol_modules, took_lsmod) = vol.lsmod(elf, isf).expect("linux.lsmod");
    let got: Vec<(String, u64)> = vol_modules
        .iter()
        .map(|m| (m.name.clone(), m.offset))
        .collect();
    let want: Vec<(String, u64)> = modules
        .iter()
        .map(|m| (m.name.clone(), m.address))
        .collect();
    assert_eq!(got, want, "{suite}: Volatility's linux.lsmod");
    eprintln!(
        "{suite}: Volatility agrees: {} tasks (pslist {took:.1?}), {} modules (lsmod {took_lsmod:.1?})",
        tasks.len(),
        vol_modules.len()
    );
}

/// The examples' directory and the kvmi-sim binary, built once per test process.
fn binaries() -> (PathBuf, PathBuf) {
    examples::cargo_build(&[
        "-p",
        "vmi-linux",
        "--examples",
        "-p",
        "kvmi-sim",
        "--bin",
        "kvmi-sim",
    ]);
    let dir = examples::profile_dir();
    (dir.join("examples"), dir.join("kvmi-sim"))
}

/// Waits for `child` (at most 120 s) and returns its output.
fn finish(child: Child, what: &str) -> Output {
    examples::wait_output(child, what, Duration::from_secs(120))
}

/// Runs example `name` with `args`; returns its stdout, failing with its output if it
/// failed.
fn example(name: &str, args: &[&str]) -> String {
    examples::run_example_ok("vmi-linux", name, args, Duration::from_secs(120))
}

/// `process-list` over vmi-kvm, with the `kvmi-sim` binary serving the dump as the
/// KVMi host (two processes, as with a real KVM-VMI QEMU).
fn example_over_kvmi(suite: &str, name: &str, elf: &Path) -> String {
    let sock =
        std::env::temp_dir().join(format!("vmi-linux-ex-{suite}-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let sock_s = sock.to_str().unwrap().to_owned();
    let tool = Command::new(binaries().0.join(name))
        .args(["--kvmi", &sock_s, "--secret", "linux"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !sock.exists() {
        assert!(
            Instant::now() < deadline,
            "{name} never listened on {sock_s}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let host = Command::new(&binaries().1)
        .args([
            "--socket",
            &sock_s,
            "--secret",
            "linux",
            "--duration",
            "120",
            "--from-dump",
        ])
        .arg(elf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = finish(tool, name);
    let host = finish(host, "kvmi-sim");
    let _ = std::fs::remove_file(&sock);
    assert!(
        out.status.success(),
        "{name} over KVMi: {}\n{}\nkvmi-sim: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&host.stdout),
        String::from_utf8_lossy(&host.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The examples named after LibVMI's, run as a user runs them: live through vmi-legacy
/// (the guest running; each example pauses it), on the dump, and over vmi-kvm.
fn check_examples(suite: &str, guest: &Guest, elf: &Path, truth: &Truth) {
    let qmp = guest.qmp_socket().to_str().unwrap().to_owned();
    let live = ["--qmp", qmp.as_str()];
    let init_line = |out: &str| {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some("1"))
            .map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
    };
    let want_init = Some("init /bin/busybox sh /init".to_owned());
    let ps = example("process-list", &live);
    assert_eq!(
        init_line(&ps),
        want_init,
        "{suite}: process-list live:\n{ps}"
    );
    assert!(ps.contains("[kthreadd]"), "{suite}: process-list:\n{ps}");
    let ps = example("process-list", &["--dump", elf.to_str().unwrap()]);
    assert_eq!(
        init_line(&ps),
        want_init,
        "{suite}: process-list on the dump:\n{ps}"
    );
    let ps = example_over_kvmi(suite, "process-list", elf);
    assert_eq!(
        init_line(&ps),
        want_init,
        "{suite}: process-list over KVMi:\n{ps}"
    );

    let lsmod = example("module-list", &live);
    let names: BTreeSet<&str> = lsmod
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let want: BTreeSet<&str> = truth.modules.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, want, "{suite}: module-list:\n{lsmod}");

    let sym = |name: &str| {
        truth
            .kallsyms
            .iter()
            .find(|(_, _, n)| n == name)
            .map(|(a, _, _)| *a)
            .unwrap()
    };
    let banner = sym("linux_banner");
    let out = example("map-symbol", &[&live[..], &["linux_banner"]].concat());
    assert!(
        out.contains(&format!("linux_banner = {banner:#x}")),
        "{suite}: map-symbol:\n{out}"
    );
    let func = sym("do_sys_openat2");
    let hex = format!("{:x}", func + 0x10); // as /proc/kallsyms prints, without 0x
    let out = example("map-symbol", &[&live[..], &[hex.as_str()]].concat());
    assert!(
        out.contains("= do_sys_openat2+0x10"),
        "{suite}: map-symbol {hex}:\n{out}"
    );

    let out = example("dmesg", &[&live[..], &["--last", "3"]].concat());
    assert!(
        out.lines().count() >= 3 && out.lines().all(|l| l.starts_with('[')),
        "{suite}: dmesg:\n{out}"
    );
    let out = example("proc-maps", &[&live[..], &["1"]].concat());
    assert!(
        out.contains("/bin/busybox") && out.contains("[stack]"),
        "{suite}: proc-maps 1:\n{out}"
    );
    eprintln!("{suite}: the examples agree (live, dump, KVMi)");
}

fn check_kernel(suite: &str) {
    let test = format!("linux_matrix::{suite}");
    let Some(dir) = kernels_dir_or_skip(&test) else {
        return;
    };
    let kernel = MatrixKernel::open(&dir, suite).unwrap_or_else(|e| panic!("{e}"));
    let guest = Guest::launch(GuestOptions::for_matrix_kernel(suite)).expect("launch");
    guest.wait_ready().expect("boot");
    let t = Instant::now();
    let truth = gather(&guest);
    eprintln!(
        "{suite}: ground truth through the console in {:.1?}",
        t.elapsed()
    );
    let vm = connect(&guest);
    let paused = vm.pause().expect("pause");
    let t = Instant::now();
    let linux = Linux::attach(&vm, LinuxOptions::default())
        .unwrap_or_else(|e| panic!("{suite} ({}): attach: {e}", kernel.release));
    eprintln!(
        "{suite}: attached in {:.1?}\n{}",
        t.elapsed(),
        linux.report()
    );
    assert_eq!(linux.kernel().release, kernel.release, "{suite}: release");
    // Attach copied only the window from the banner to the end of .BTF (kallsyms between),
    // not up to the running kernel's later copies of the banner (printk ring in .bss,
    // pages freed after boot): it ends at most a page past the BTF.
    let (btf_va, btf) = vmi_linux::types::carve_btf(linux.image()).expect("BTF in the copy");
    let copy_end = linux.image().base() + linux.image().len() as u64;
    let btf_end = btf_va + btf.len() as u64;
    assert!(
        copy_end <= btf_end.next_multiple_of(4096) + 4096,
        "{suite}: copy {:#x}..{copy_end:#x}, BTF ends at {btf_end:#x}",
        linux.image().base()
    );
    check_symbols(suite, &linux, &truth.kallsyms);
    let live = check_processes(suite, &linux, &truth.processes);
    check_modules(suite, &linux, &truth.modules);
    check_dmesg(suite, &linux, &truth.dmesg);
    check_maps(suite, &linux, &truth.maps1);
    // The task each vCPU runs is a real one: on the list, or that CPU's idle task.
    for v in 0..2u16 {
        let cur = linux.current_task(VcpuId(v)).expect("current task");
        assert!(
            live.iter().any(|p| p.task == cur.task)
                || cur.pid == 0 && cur.comm.starts_with("swapper/"),
            "{suite}: vCPU {v} runs {cur:?}"
        );
    }
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let elf = tmp.join(format!("linux-{suite}.elf"));
    let _ = std::fs::remove_file(&elf);
    dump::dump_guest_memory_with(&mut vm.qmp(), &elf).expect("dump-guest-memory");
    let isf = tmp.join(format!("linux-{suite}.isf.json"));
    let t = Instant::now();
    linux
        .write_isf(std::io::BufWriter::new(
            std::fs::File::create(&isf).unwrap(),
        ))
        .expect("ISF export");
    eprintln!("{suite}: ISF exported in {:.1?}", t.elapsed());
    let modules = linux.modules().expect("modules");
    let taint_flag_module = linux.types().has_field("taint_flag", "module");
    drop(linux);
    drop(paused);
    check_dump_and_kvmi(suite, &elf, &live);
    drop(vm);
    check_examples(suite, &guest, &elf, &truth);
    check_volatility(suite, &elf, &isf, &live, &modules, taint_flag_module);
    let _ = std::fs::remove_file(&elf);
    let _ = std::fs::remove_file(&isf);
}

#[test]
fn bullseye_5_10() {
    check_kernel("bullseye");
}

#[test]
fn bookworm_6_1() {
    check_kernel("bookworm");
}

#[test]
fn trixie_6_12() {
    check_kernel("trixie");
}

#[test]
fn sid_newest() {
    check_kernel("sid");
}
