//! The Python bindings (vmi-python) and Volatility 3 on a live guest, tested from Python
//! against the same guests as the Rust tests.
//!
//! `cargo xtask test` builds the `vmi` wheel into a virtual environment under
//! `target/python/venv` (maturin, pytest and volatility3 from PyPI, pinned) and names it
//! in `VMI_PYTHON_VENV`. Each test here boots a guest, reads ground truth with the Rust
//! API and from inside the guest, hands it to pytest in a JSON file (`VMI_PY_TRUTH`), runs
//! `vmi-python/tests`, and checks afterwards what Python left in the guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vmi_core::{
    Backend, PhysicalMemory, ReadRegisters, RegisterGroups, VcpuControl, VcpuId, VirtualMemory,
};
use vmi_core::{Gpa, Gva, Register};
use vmi_legacy::{LegacyConfig, LegacyQemu};
use vmi_tests::{truth, Guest, GuestOptions};

/// Environment variable naming the virtual environment with the `vmi` wheel installed.
const ENV_VENV: &str = "VMI_PYTHON_VENV";
/// Why xtask could not build it.
const ENV_VENV_ERROR: &str = "VMI_PYTHON_VENV_ERROR";
/// The test guest's higher-half offset (`HIGH + pa` maps `pa`).
const HIGH: u64 = 0xffff_8000_0000_0000;
/// What the Rust API writes into the test guest's r13 (which the guest never touches)
/// before pytest runs, and what pytest writes there for the Rust API to read after.
const RUST_R13: u64 = 0x5255_5354_1357_9bdf;
const PYTHON_R13: u64 = 0x5059_5448_4f4e_2468;

/// The virtual environment, or `None` (test skipped) when not provisioned outside xtask.
fn venv() -> Option<PathBuf> {
    match std::env::var_os(ENV_VENV) {
        Some(v) => Some(PathBuf::from(v)),
        None if std::env::var_os("VMI_REQUIRE_QEMU").is_some_and(|v| v == "1") => panic!(
            "{ENV_VENV} is not set: {}",
            std::env::var(ENV_VENV_ERROR).unwrap_or_else(|_| "run through cargo xtask".into())
        ),
        None => {
            eprintln!("skipped: {ENV_VENV} is not set (run through `cargo xtask test`)");
            None
        }
    }
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The kvmi-sim binary, built once per test process.
fn kvmi_sim() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev",
            Some(p) => p,
        };
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .current_dir(root())
            .args(["build", "--quiet", "-p", "kvmi-sim", "--bin", "kvmi-sim"])
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(profile_dir.parent().unwrap())
            .status()
            .expect("cargo build");
        assert!(status.success(), "building kvmi-sim");
        profile_dir.join("kvmi-sim")
    })
}

/// Runs pytest on `files` with `truth`; fails with its output unless every test passed.
fn pytest(venv: &Path, dir: &Path, truth: &Value, files: &[&str]) {
    let truth_path = dir.join("python-truth.json");
    std::fs::write(&truth_path, serde_json::to_vec_pretty(truth).unwrap()).unwrap();
    let tests = root().join("vmi-python/tests");
    // Output to files: a pipe nobody reads while pytest runs would fill and block it.
    let (out_path, err_path) = (dir.join("pytest.out"), dir.join("pytest.err"));
    let mut child = Command::new(venv.join("bin/python"))
        .args([
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "-rs",
            "--tb=short",
        ])
        .args(files.iter().map(|f| tests.join(f)))
        .env("VMI_PY_TRUTH", &truth_path)
        .env("VMI_REQUIRE_GUEST", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("running pytest");
    let deadline = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pytest ran longer than 900 s:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    eprintln!("{stdout}");
    assert!(
        status.success(),
        "pytest {files:?} failed ({status}):\n{stdout}\n{stderr}"
    );
    assert!(
        !stdout.contains(" skipped") && stdout.contains(" passed"),
        "pytest skipped tests or ran none:\n{stdout}"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn ticks(guest: &Guest) -> usize {
    guest
        .serial_lines()
        .iter()
        .filter(|l| l.contains("VMI-TEST tick"))
        .count()
}

/// Fails unless the guest prints a new tick within 30 s (it was left running).
fn assert_ticks_on(guest: &Guest, what: &str) {
    let before = ticks(guest);
    let deadline = Instant::now() + Duration::from_secs(30);
    while ticks(guest) <= before {
        assert!(Instant::now() < deadline, "no tick after {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn connect(guest: &Guest, gdb: bool) -> LegacyQemu {
    let mut cfg = LegacyConfig::new(guest.qmp_socket());
    if gdb {
        cfg.gdb_socket = Some(guest.gdb_socket().to_owned());
    }
    LegacyQemu::connect(cfg).expect("connecting the Rust API")
}

#[test]
fn python_bindings_on_the_test_guest_and_kvmi_sim() {
    let Some(venv) = venv() else { return };
    let guest = Guest::launch(GuestOptions::test_guest()).expect("launching the test guest");
    let m = guest.wait_ready().expect("test guest ready");
    let (site_1, pattern) = (m.symbol("site_1"), m.symbol("pattern_phys"));

    // A dump of the guest for kvmi-sim to serve over KVMi, and the Rust API's reads of it
    // (vmi-dump) for the Python KVMi session to equal.
    let dump_path = guest.dir().join("testguest.elf");
    vmi_tests::dump::dump_guest_memory(&guest, &dump_path).expect("dump-guest-memory");
    let dump_truth = {
        let dump = vmi_dump::ElfDump::open(&dump_path).expect("opening the dump");
        let mut page = vec![0u8; 4096];
        dump.read_physical(Gpa(pattern), &mut page).unwrap();
        let regs = dump.all_registers(VcpuId(0)).unwrap();
        let names = [
            ("rip", Register::Rip),
            ("rsp", Register::Rsp),
            ("r12", Register::R12),
            ("cr0", Register::Cr0),
            ("cr3", Register::Cr3),
            ("cr4", Register::Cr4),
        ];
        let regs: serde_json::Map<String, Value> = names
            .iter()
            .filter_map(|(n, r)| {
                regs.get(*r)
                    .map(|v| ((*n).to_owned(), json!(format!("{v:#x}"))))
            })
            .collect();
        assert!(
            regs.contains_key("rip") && regs.contains_key("cr3"),
            "{regs:?}"
        );
        json!({"path": dump_path, "pattern_page": hex(&page), "registers": regs})
    };

    // The Rust API's view, in one pause once the loop runs (its first iteration reloads
    // GDTR and IDTR with their higher-half addresses); r13 set for Python to find.
    let truth = {
        let vm = connect(&guest, true);
        let deadline = Instant::now() + Duration::from_secs(30);
        let _paused = loop {
            let paused = vm.pause().unwrap();
            let r12 = vm.registers(VcpuId(0), RegisterGroups::GPRS, &[]).unwrap();
            if r12.get(Register::R12).unwrap() >= 2 {
                break paused;
            }
            drop(paused);
            assert!(Instant::now() < deadline, "the test guest's loop never ran");
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut page = vec![0u8; 4096];
        vm.read_physical(Gpa(pattern), &mut page).unwrap();
        let mut code = vec![0u8; 64];
        vm.read_va(VcpuId(0), Gva(site_1), &mut code).unwrap();
        let mut regs = vm.all_registers(VcpuId(0)).unwrap();
        regs.set(Register::R13, RUST_R13).unwrap();
        let gprs = regs.select(RegisterGroups::GPRS, &[]);
        vm.register_writer()
            .expect("register writes through the GDB stub")
            .set_registers(VcpuId(0), &gprs)
            .unwrap();
        let get = |r: Register| format!("{:#x}", regs.get(r).unwrap());
        use vmi_core::registers::{SegmentField, SegmentRegister};
        json!({
            "guest": "testguest",
            "qmp": guest.qmp_socket(),
            "gdb": guest.gdb_socket(),
            "ram_path": guest.ram_path(),
            "kvmi_sim": kvmi_sim(),
            "high": format!("{HIGH:#x}"),
            "site_1": format!("{site_1:#x}"),
            "pattern_phys": format!("{pattern:#x}"),
            "pml4_a": format!("{:#x}", m.symbol("pml4_a")),
            "pml4_b": format!("{:#x}", m.symbol("pml4_b")),
            "pattern_page": hex(&page),
            "site_1_code": hex(&code),
            "rust_r13": format!("{RUST_R13:#x}"),
            "python_r13": format!("{PYTHON_R13:#x}"),
            "dump": dump_truth,
            "registers": {
                "cr0": get(Register::Cr0),
                "cr4": get(Register::Cr4),
                "efer": get(Register::Efer),
                "gdtr_base": get(Register::GdtrBase),
                "idtr_base": get(Register::IdtrBase),
                "cs": get(Register::Segment(SegmentRegister::Cs, SegmentField::Selector)),
            },
        })
    };
    pytest(
        &venv,
        guest.dir(),
        &truth,
        &["test_testguest.py", "test_kvmi.py", "test_examples.py"],
    );

    // What Python wrote, as the Rust API reads it; and the guest runs on.
    let vm = connect(&guest, true);
    {
        let _paused = vm.pause().unwrap();
        let regs = vm.all_registers(VcpuId(0)).unwrap();
        assert_eq!(
            regs.get(Register::R13),
            Some(PYTHON_R13),
            "r13 written from Python"
        );
    }
    drop(vm);
    assert_ticks_on(&guest, "the Python tests");
}

#[test]
fn python_and_volatility_on_the_live_linux_guest() {
    let Some(venv) = venv() else { return };
    let guest = Guest::launch(GuestOptions::from_env()).expect("launching the Linux guest");
    let m = guest.wait_ready().expect("Linux guest ready");
    let ps = truth::processes(&guest).expect("the guest's /proc");
    let modules = truth::modules(&guest).expect("the guest's /proc/modules");
    let (banner, rust_processes) = {
        let vm = connect(&guest, false);
        let _paused = vm.pause().unwrap();
        let linux =
            vmi_linux::Linux::attach(&vm, vmi_linux::LinuxOptions::default()).expect("attach");
        let ps: Vec<Value> = linux
            .processes()
            .expect("processes")
            .iter()
            .map(|p| json!({"pid": p.pid, "ppid": p.ppid, "comm": p.comm}))
            .collect();
        (linux.kernel().banner.clone(), ps)
    };
    let truth = json!({
        "guest": "linux",
        "qmp": guest.qmp_socket(),
        "vol": venv.join("bin/vol"),
        "banner": banner,
        "linux_banner": format!("{:#x}", m.symbol("linux_banner")),
        "ps": ps.iter().map(|t| json!({
            "pid": t.pid, "tgid": t.tgid, "ppid": t.ppid, "comm": t.comm,
            "cmdline": t.cmdline, "kernel_thread": t.is_kernel_thread,
        })).collect::<Vec<_>>(),
        "modules": modules.iter().map(|m| m.name.clone()).collect::<Vec<_>>(),
        "rust_processes": rust_processes,
    });
    pytest(&venv, guest.dir(), &truth, &["test_linux.py"]);
    // Volatility and Python resumed the guest.
    let vm = connect(&guest, false);
    assert!(!vm.is_paused());
    drop(vm);
    assert_ticks_on(&guest, "Volatility on the live guest");
}
