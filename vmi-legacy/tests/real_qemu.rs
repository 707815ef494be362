//! Smoke tests against a real `qemu-system-x86_64` (TCG, firmware only, no guest OS).
//!
//! Each test starts QEMU paused (`-S`) at the reset vector with 64 MiB of RAM and a QMP
//! socket, and kills it when the guard goes out of scope (also on panic). If QEMU is
//! not installed the tests print `SKIPPED` and pass, unless `VMI_REQUIRE_QEMU=1`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vmi_core::memory::{MapPhysical, MemoryLayout};
use vmi_core::registers::RegisterGroups;
use vmi_core::{
    Backend as _, Error, Gpa, PhysicalMemory, PhysicalMemoryWrite, ReadRegisters, VcpuControl,
    VcpuId,
};
use vmi_legacy::qmp::QmpClient;
use vmi_legacy::{
    LegacyConfig, LegacyQemu, ProcMem, QmpMemory, QmpReadMethod, RamAccess, RamSource, SharedRam,
};

const TIMEOUT: Duration = Duration::from_secs(20);
const RAM_SIZE: u64 = 64 << 20;

/// Outside `cargo xtask test` a missing tool skips the test; under it (`VMI_REQUIRE_QEMU=1`,
/// where xtask has provisioned QEMU and binutils) it is a failure.
fn skip_or_fail(why: &str) {
    if std::env::var("VMI_REQUIRE_QEMU").as_deref() == Ok("1") {
        panic!("{why}, and VMI_REQUIRE_QEMU=1");
    }
    eprintln!("SKIPPED: {why}");
}

fn qemu_binary() -> Option<PathBuf> {
    let name = std::env::var_os("VMI_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
    let candidate = PathBuf::from(&name);
    if candidate.is_absolute() {
        return candidate.exists().then_some(candidate);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(&name))
            .find(|p| p.is_file())
    })
}

/// How the guest's RAM is provided.
enum Backend {
    File,
    Memfd,
    Anonymous,
    /// Anonymous RAM, running (no `-S`) the multiboot kernel at this path.
    Kernel(PathBuf),
}

/// A running QEMU, killed on drop; owns a scratch directory.
struct Qemu {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
    ram_file: PathBuf,
}

impl Qemu {
    /// Starts QEMU, or returns `None` (test skipped) if it is not installed.
    fn start(backend: Backend, smp: u32) -> Option<Qemu> {
        let Some(bin) = qemu_binary() else {
            if std::env::var("VMI_REQUIRE_QEMU").as_deref() == Ok("1") {
                panic!("qemu-system-x86_64 not found and VMI_REQUIRE_QEMU=1");
            }
            eprintln!("SKIPPED: qemu-system-x86_64 not found");
            return None;
        };
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("vmi-legacy-qemu-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("qmp.sock");
        let ram_file = dir.join("ram");
        let mut cmd = Command::new(bin);
        cmd.args([
            "-accel",
            "tcg",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args(["-smp", &smp.to_string()])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", socket.display()));
        if !matches!(backend, Backend::Kernel(_)) {
            cmd.arg("-S");
        }
        match backend {
            Backend::Kernel(kernel) => {
                cmd.args(["-machine", "pc", "-kernel"]).arg(kernel);
            }
            Backend::File => {
                cmd.args(["-machine", "pc,memory-backend=ram0", "-object"])
                    .arg(format!(
                        "memory-backend-file,id=ram0,size=64M,mem-path={},share=on",
                        ram_file.display()
                    ));
            }
            Backend::Memfd => {
                cmd.args([
                    "-machine",
                    "pc,memory-backend=ram0",
                    "-object",
                    "memory-backend-memfd,id=ram0,size=64M,share=on",
                ]);
            }
            Backend::Anonymous => {
                cmd.args(["-machine", "pc"]);
            }
        }
        let log = std::fs::File::create(dir.join("qemu.log")).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawning QEMU");
        let q = Qemu {
            child,
            dir,
            socket,
            ram_file,
        };
        let deadline = Instant::now() + TIMEOUT;
        while !q.socket.exists() {
            assert!(
                Instant::now() < deadline,
                "QEMU did not create its QMP socket: {}",
                q.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(q)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
    }

    fn config(&self, ram: RamSource) -> LegacyConfig {
        let mut c = LegacyConfig::new(&self.socket);
        c.ram = ram;
        c.timeout = TIMEOUT;
        c
    }

    fn qmp(&self) -> QmpClient {
        QmpClient::connect_with_timeout(&self.socket, TIMEOUT).unwrap()
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn status(vm: &LegacyQemu) -> (bool, String) {
    let s = vm.status().unwrap();
    (s.running, s.status)
}

fn check_reset_registers(vm: &LegacyQemu, vcpus: u32) {
    assert_eq!(vm.vcpu_count().unwrap(), vcpus);
    for v in 0..vcpus as u16 {
        let r = vm.all_registers(VcpuId(v)).unwrap();
        let g = r.gprs.expect("GPRs");
        let s = r.segments.expect("segments");
        assert_eq!(g.rip, 0xfff0);
        assert_eq!(s.cs.selector, 0xf000);
        assert_eq!(s.cs.base, 0xffff_0000);
        let c = r.control.expect("CONTROL with CR8 from the TPR");
        assert_eq!(c.cr0, 0x6000_0010);
        assert_eq!(c.cr8, 0);
        assert_eq!(r.debug.unwrap().dr7, 0x400);
        assert_eq!(r.efer(), Some(0));
        assert_eq!(r.msrs.get(0xc000_0080), Some(0));
        assert_eq!(r.xcr0, None);
    }
    let only = vm.registers(VcpuId(0), RegisterGroups::GPRS, &[]).unwrap();
    assert_eq!(only.groups(), RegisterGroups::GPRS);
    assert!(matches!(
        vm.all_registers(VcpuId(vcpus as u16)),
        Err(Error::NoSuchVcpu { .. })
    ));
    // Without a gdbstub, register writes are not offered at all, and the report says why.
    assert!(vm.register_writer().is_none());
    assert!(vm.events().is_none());
    let caps = vm.capabilities();
    assert!(matches!(
        caps.require(vmi_core::Capability::WriteGprs),
        Err(Error::Unsupported { reason, .. }) if reason.contains("gdbstub")
    ));
}

fn check_layout(vm: &LegacyQemu) {
    let info = vm.memory_info().unwrap();
    assert_eq!(info.ranges[0].start, Gpa(0));
    assert_eq!(info.ranges[0].len, 0xc0000);
    assert_eq!(info.ram_size(), RAM_SIZE - 0x40000);
    assert_eq!(info.max_physical_address(), Gpa(RAM_SIZE));
    let mut b = [0u8; 16];
    assert!(matches!(
        vm.read_physical(Gpa(RAM_SIZE - 8), &mut b),
        Err(Error::UnmappedPhysical { .. })
    ));
    assert!(matches!(
        vm.read_physical(Gpa(0xc0000), &mut b),
        Err(Error::UnmappedPhysical { .. })
    ));
}

fn check_pause_guards(vm: &LegacyQemu) {
    // -S: "prelaunch", not running. A pause must not resume what it did not stop.
    assert_eq!(status(vm), (false, "prelaunch".into()));
    drop(vm.pause().unwrap());
    assert!(!vm.status().unwrap().running);

    vm.qmp().cont().unwrap();
    assert!(vm.status().unwrap().running);
    {
        let outer = vm.pause().unwrap();
        assert_eq!(status(vm), (false, "paused".into()));
        let inner = vm.pause().unwrap();
        drop(inner);
        assert_eq!(
            status(vm),
            (false, "paused".into()),
            "nested guard resumed early"
        );
        outer.resume().unwrap();
    }
    assert_eq!(status(vm), (true, "running".into()));
    let stop = vm.qmp().wait_event("STOP", TIMEOUT).unwrap();
    assert_eq!(stop.event, "STOP");
    vm.qmp().wait_event("RESUME", TIMEOUT).unwrap();

    // Paused by someone else: our guard leaves it paused.
    vm.qmp().stop().unwrap();
    drop(vm.pause().unwrap());
    assert_eq!(status(vm), (false, "paused".into()));
    vm.qmp().cont().unwrap();
}

#[test]
fn file_backed_guest() {
    let Some(q) = Qemu::start(Backend::File, 2) else {
        return;
    };
    let vm = LegacyQemu::connect(q.config(RamSource::Auto {
        file: Some(q.ram_file.clone()),
    }))
    .unwrap();
    assert!(
        matches!(vm.ram_access(), RamAccess::Shared(_)),
        "{:?}",
        vm.ram_fallbacks()
    );
    assert!(vm.ram_fallbacks().is_empty());
    assert!(vm.version().major >= 5, "{}", vm.version());
    let pid = vm.pid().expect("QEMU's pid");
    assert_eq!(pid as u32, q.child.id());
    check_layout(&vm);
    check_reset_registers(&vm, 2);

    // Write through the shared mapping; read back through every path.
    let data = pattern(3 * 4096 + 123, 7);
    let gpa = Gpa(0x20_0ff0);
    vm.write_physical(gpa, &data).unwrap();
    let mut back = vec![0u8; data.len()];
    vm.read_physical(gpa, &mut back).unwrap();
    assert_eq!(back, data);
    assert_eq!(vm.mapped_regions().unwrap().len(), 2);

    let hva = vm.backend_mapping().expect("gpa2hva").hva;
    let pm = ProcMem::new(pid, hva, vm.layout().clone(), true).unwrap();
    let mut via_proc = vec![0u8; data.len()];
    pm.read_physical(gpa, &mut via_proc).unwrap();
    assert_eq!(via_proc, data);

    for method in [QmpReadMethod::Pmemsave, QmpReadMethod::Xp] {
        let qm = QmpMemory::new(vm.qmp_handle(), vm.layout().memory_info(), method).unwrap();
        let mut via_qmp = vec![0u8; data.len()];
        qm.read_physical(gpa, &mut via_qmp).unwrap();
        assert_eq!(via_qmp, data, "{method:?}");
        let mut b = [0u8; 8];
        assert!(qm.read_physical(Gpa(0xa_0000_0000), &mut b).is_err());
    }

    // ProcMem writes are seen by the shared mapping and by QEMU itself.
    pm.write_physical(Gpa(0x30_0000), b"written via process_vm_writev")
        .unwrap();
    let mut b = [0u8; 29];
    vm.read_physical(Gpa(0x30_0000), &mut b).unwrap();
    assert_eq!(&b, b"written via process_vm_writev");
    let xp = vm.qmp().human_monitor_command("xp /4bx 0x300000").unwrap();
    assert!(xp.contains("0x77 0x72 0x69 0x74"), "{xp}");

    // A second, read-only mapping of the file sees the same bytes.
    let ro = SharedRam::open_file(&q.ram_file, vm.layout().clone(), false).unwrap();
    let mut via_file = vec![0u8; data.len()];
    ro.read_physical(gpa, &mut via_file).unwrap();
    assert_eq!(via_file, data);

    check_pause_guards(&vm);
}

#[test]
fn memfd_guest_through_every_path() {
    let Some(q) = Qemu::start(Backend::Memfd, 1) else {
        return;
    };
    let data = pattern(8192, 42);
    let gpa = Gpa(0x12_3000);
    {
        let vm = LegacyQemu::connect(q.config(RamSource::Auto { file: None })).unwrap();
        match vm.ram_access() {
            RamAccess::Shared(s) => assert!(s.source().contains("memfd"), "{}", s.source()),
            other => panic!(
                "expected shared memfd, got {} ({:?})",
                other.kind(),
                vm.ram_fallbacks()
            ),
        }
        vm.write_physical(gpa, &data).unwrap();
        check_reset_registers(&vm, 1);
    }
    // QMP serves one client at a time: one session after the other.
    for source in [
        RamSource::Memfd,
        RamSource::ProcMem,
        RamSource::Qmp(QmpReadMethod::Pmemsave),
        RamSource::Qmp(QmpReadMethod::Xp),
    ] {
        let vm = LegacyQemu::connect(q.config(source.clone())).unwrap();
        let mut back = vec![0u8; data.len()];
        vm.read_physical(gpa, &mut back).unwrap();
        assert_eq!(back, data, "{source:?}");
        check_layout(&vm);
        if let RamAccess::Qmp(_) = vm.ram_access() {
            assert!(matches!(
                vm.write_physical(gpa, b"x"),
                Err(Error::Unsupported { .. })
            ));
        }
    }
}

#[test]
fn anonymous_ram_falls_back_to_procmem_and_drop_resumes() {
    let Some(q) = Qemu::start(Backend::Anonymous, 1) else {
        return;
    };
    {
        let vm = LegacyQemu::connect(q.config(RamSource::default())).unwrap();
        assert_eq!(
            vm.ram_access().kind(),
            "procmem",
            "{:?}",
            vm.ram_fallbacks()
        );
        assert_eq!(vm.ram_fallbacks().len(), 1);
        assert_eq!(vm.layout().main_backend(), Some("pc.ram"));
        assert!(vm.mapped_regions().is_err());
        let data = pattern(5000, 3);
        vm.write_physical(Gpa(0x40_0000), &data).unwrap();
        let mut back = vec![0u8; data.len()];
        vm.read_physical(Gpa(0x40_0000), &mut back).unwrap();
        assert_eq!(back, data);

        // A pause still held when the session goes away is released by its Drop.
        vm.qmp().cont().unwrap();
        let guard = vm.pause().unwrap();
        assert!(!vm.status().unwrap().running);
        std::mem::forget(guard);
        assert!(vm.is_paused());
    }
    let mut qmp = q.qmp();
    assert!(
        qmp.query_status().unwrap().running,
        "the session left the guest paused"
    );
    assert_eq!(
        qmp.query_memory_size_summary().unwrap().base_memory,
        RAM_SIZE
    );
}

/// Assembles `tests/data/longmode_stub` (needs binutils' `as` and `ld`).
fn build_long_mode_stub(dir: &std::path::Path) -> Option<PathBuf> {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/longmode_stub");
    let obj = dir.join("stub.o");
    let elf = dir.join("stub.elf");
    let ok = Command::new("as")
        .arg("--32")
        .arg("-o")
        .arg(&obj)
        .arg(src.join("stub.S"))
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("ld")
            .args(["-m", "elf_i386", "-T"])
            .arg(src.join("link.ld"))
            .arg("-o")
            .arg(&elf)
            .arg(&obj)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    ok.then_some(elf)
}

#[test]
fn long_mode_registers_of_a_running_guest() {
    if qemu_binary().is_none() {
        skip_or_fail("qemu-system-x86_64 not found");
        return;
    }
    let build =
        DirGuard(std::env::temp_dir().join(format!("vmi-legacy-stub-{}", std::process::id())));
    std::fs::create_dir_all(&build.0).unwrap();
    let Some(elf) = build_long_mode_stub(&build.0) else {
        skip_or_fail("cannot assemble the long-mode stub (binutils missing?)");
        return;
    };
    let q = Qemu::start(Backend::Kernel(elf), 1).unwrap();
    let vm = LegacyQemu::connect(q.config(RamSource::default())).unwrap();
    // Wait (under pause guards) until the stub has reached its halt loop.
    let deadline = Instant::now() + TIMEOUT;
    let regs = loop {
        let guard = vm.pause().unwrap();
        let r = vm.all_registers(VcpuId(0)).unwrap();
        drop(guard);
        if r.gprs.is_some_and(|g| g.r15 == 0xffff_ffff_8000_1234) {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the stub never reached long mode: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let g = regs.gprs.unwrap();
    assert_eq!(g.rax, 0x1111_1111_1111_1111);
    assert_eq!(g.r8, 0x8888_8888_8888_8888);
    assert_eq!(g.rsp, 0x90000);
    let c = regs.control.unwrap();
    assert_eq!(c.cr8, 5, "CR8 from the local APIC's TPR");
    assert_eq!(c.cr4 & 0x20, 0x20);
    assert_eq!(regs.efer(), Some(0xd01));
    let s = regs.segments.unwrap();
    assert!(s.cs.attributes.l);
    assert_eq!(s.fs.base, 0x7fff_1234_5000);
    assert_eq!(regs.debug.unwrap().dr0, 0xffff_8880_0000_1000);
    // The stub's page tables, read at CR3 through guest memory.
    let pml4e = vm.read_u64(Gpa(c.cr3)).unwrap();
    assert_eq!(pml4e & 0x3, 0x3, "PML4[0] present and writable");
    drop(vm);
    drop(q);
}

/// Removes a directory on drop (also when a test panics).
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
