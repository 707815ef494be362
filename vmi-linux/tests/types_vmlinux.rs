//! Kernel types from the BTF of real Debian kernels (5.10, 6.1, 6.12, 7.2): carving from
//! the kernel image, facts that differ between versions, ISF round trip, corrupted BTF.
//!
//! Kernels are found through `VMI_LINUX_KERNELS=<dir>` (`<dir>/<suite>/vmlinux` and
//! `release`). Unset, the tests print a skip message, unless `VMI_REQUIRE_QEMU=1` (set by
//! `cargo xtask test`), which makes a missing kernel a failure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use vmi_linux::types::{carve_btf, carve_btf_at, TypeSource, GLOBAL_TYPES};
use vmi_linux::{Error, ImageCopy, SymbolTableBuilder, Types};

const SUITES: &[&str] = &["bullseye", "bookworm", "trixie", "sid"];

struct Kernel {
    suite: &'static str,
    /// (major, minor) from `release`.
    version: (u32, u32),
    release: String,
    elf: Vec<u8>,
}

fn kernels() -> Vec<Kernel> {
    let Some(dir) = std::env::var_os("VMI_LINUX_KERNELS") else {
        if std::env::var("VMI_REQUIRE_QEMU").as_deref() == Ok("1") {
            panic!("VMI_LINUX_KERNELS is unset and VMI_REQUIRE_QEMU=1");
        }
        eprintln!("SKIPPED: VMI_LINUX_KERNELS is unset (a directory of <suite>/vmlinux)");
        return Vec::new();
    };
    let dir = PathBuf::from(dir);
    SUITES
        .iter()
        .map(|&suite| {
            let k = dir.join(suite);
            let release = std::fs::read_to_string(k.join("release"))
                .unwrap_or_else(|e| panic!("{}: {e}", k.join("release").display()))
                .trim()
                .to_owned();
            let mut parts = release.split(['.', '-', '+']);
            let major = parts.next().and_then(|p| p.parse().ok()).unwrap();
            let minor = parts.next().and_then(|p| p.parse().ok()).unwrap();
            let elf = std::fs::read(k.join("vmlinux"))
                .unwrap_or_else(|e| panic!("{}: {e}", k.join("vmlinux").display()));
            Kernel {
                suite,
                version: (major, minor),
                release,
                elf,
            }
        })
        .collect()
}

/// The `.BTF` section of an ELF64 file: (address, bytes), from the section header table.
fn btf_section(elf: &[u8]) -> (u64, &[u8]) {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let shoff = u64_at(0x28) as usize;
    let (shentsize, shnum, shstrndx) = (u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let section = |i: usize| shoff + i * shentsize;
    let strtab = u64_at(section(shstrndx) + 0x18) as usize;
    for i in 0..shnum {
        let sh = section(i);
        let name_at = strtab + u32_at(sh);
        let name_len = elf[name_at..].iter().position(|&b| b == 0).unwrap();
        if &elf[name_at..name_at + name_len] == b".BTF" {
            let addr = u64_at(sh + 0x10);
            let off = u64_at(sh + 0x18) as usize;
            let size = u64_at(sh + 0x20) as usize;
            return (addr, &elf[off..off + size]);
        }
    }
    panic!("no .BTF section");
}

fn parse_timed(bytes: &[u8]) -> (Types, Duration) {
    let t = Instant::now();
    let types = Types::from_btf(bytes.to_vec()).unwrap();
    (types, t.elapsed())
}

#[test]
fn carved_btf_is_the_elf_section() {
    for k in kernels() {
        let image = ImageCopy::from_vmlinux(&k.elf, 256 << 20).unwrap();
        let (addr, section) = btf_section(&k.elf);
        let t = Instant::now();
        let (va, bytes) = carve_btf(&image).unwrap();
        let scan = t.elapsed();
        assert_eq!(va, addr, "{}: BTF address", k.suite);
        assert_eq!(bytes, section, "{}: carved bytes differ from .BTF", k.suite);
        let (va2, bytes2) = carve_btf_at(&image, addr, addr + section.len() as u64).unwrap();
        assert_eq!((va2, &bytes2[..]), (addr, section));
        eprintln!(
            "{} ({}): .BTF at {va:#x}, {} bytes, carved (scan + confirming parse) in {scan:?}",
            k.suite,
            k.release,
            bytes.len()
        );
    }
}

#[test]
fn facts_that_differ_between_versions() {
    for k in kernels() {
        let (_, section) = btf_section(&k.elf);
        let (t, took) = parse_timed(section);
        let v = k.version;
        let name = format!("{} {}", k.suite, k.release);
        assert_eq!(t.source(), TypeSource::Btf);

        // task_struct.state became __state in 5.14.
        assert_eq!(
            t.has_field("task_struct", "__state"),
            v >= (5, 14),
            "{name}"
        );
        assert_eq!(t.has_field("task_struct", "state"), v < (5, 14), "{name}");
        // The VMA list became a maple tree in 6.1.
        assert_eq!(t.has_field("mm_struct", "mm_mt"), v >= (6, 1), "{name}");
        assert_eq!(t.has_field("mm_struct", "mmap"), v < (6, 1), "{name}");
        // module.core_layout became mem[MOD_MEM_NUM_TYPES] in 6.4.
        assert_eq!(t.has_field("module", "mem"), v >= (6, 4), "{name}");
        assert_eq!(t.has_field("module", "core_layout"), v < (6, 4), "{name}");
        if v >= (6, 4) {
            let n = t.enumerator("MOD_MEM_NUM_TYPES").unwrap();
            assert_eq!(t.array_len("module", "mem"), Some(n as u64), "{name}");
            assert_eq!(t.enumerator("MOD_TEXT").unwrap(), 0);
            let mem = t.field("module", "mem").unwrap();
            assert_eq!(mem.element.as_ref().unwrap().0, "module_memory");
            let one = t.field("module", "mem[1]").unwrap();
            assert_eq!(one.offset, mem.offset + t.size_of("module_memory").unwrap());
        } else {
            assert!(t.enumerator("MOD_MEM_NUM_TYPES").is_err());
            assert_eq!(t.array_len("module", "core_layout"), None);
        }

        assert_eq!(t.size_of("list_head").unwrap(), 16);
        assert_eq!(
            t.size_of("unsigned long").unwrap(),
            8,
            "C spelling of GCC's name"
        );
        assert_eq!(t.size_of("long unsigned int").unwrap(), 8);
        assert_eq!(t.size_of("struct list_head").unwrap(), 16);
        assert!(t.size_of("union list_head").is_err());
        let comm = t.field("task_struct", "comm").unwrap();
        assert_eq!(comm.type_name, "char [16]", "{name}");
        assert_eq!((comm.size, comm.bits), (16, None));
        assert_eq!(comm.element, Some(("char".to_owned(), 16)));
        if let Ok(n) = t.enumerator("TASK_COMM_LEN") {
            assert_eq!(n, 16);
        }

        let mm = t.field("task_struct", "mm").unwrap();
        assert_eq!(mm.type_name, "struct mm_struct *");
        assert_eq!((mm.size, mm.pointee.as_deref()), (8, Some("mm_struct")));
        let tasks = t.field("task_struct", "tasks").unwrap();
        assert_eq!(tasks.type_name, "struct list_head");
        assert!(
            t.field("task_struct", "mm.pgd").is_err(),
            "pointers are not followed"
        );

        // A one-bit bitfield in task_struct.
        let b = t.field("task_struct", "sched_reset_on_fork").unwrap();
        assert_eq!(b.bits.map(|(_, w)| w), Some(1), "{name}");
        assert_eq!(b.size, 4, "{name}: unsigned int");

        // Nested paths add up.
        let se = t.field("task_struct", "se").unwrap();
        let vruntime = t.field("sched_entity", "vruntime").unwrap();
        let nested = t.field("task_struct", "se.vruntime").unwrap();
        assert_eq!(nested.offset, se.offset + vruntime.offset, "{name}");
        assert_eq!(nested.type_name, "u64");
        assert_eq!(nested.size, 8);

        // Anonymous unions/structs are traversed: struct page's lru sits in two of them.
        assert_eq!(t.offset_of("page", "lru").unwrap(), 8, "{name}");
        assert!(t.member_names("page").unwrap().contains(&"lru".to_owned()));

        // Globals BTF does not type come from the built-in table; per-CPU ones from BTF.
        assert_eq!(t.symbol_type("init_task").unwrap(), "struct task_struct");
        assert_eq!(t.symbol_type("prb").unwrap(), "struct printk_ringbuffer *");
        assert!(t.symbol_type("tk_core").is_some(), "{name}: tk_core's type");
        assert!(t.symbol_type("no_such_symbol").is_none());
        for sym in [
            "init_mm",
            "modules",
            "mod_tree",
            "init_files",
            "idt_table",
            "mem_section",
        ] {
            assert!(t.symbol_type(sym).is_some(), "{name}: {sym}'s type");
        }
        let unresolved: Vec<&str> = GLOBAL_TYPES
            .iter()
            .map(|g| g.symbol)
            .filter(|s| t.symbol_type(s).is_none())
            .collect();
        eprintln!("{name}: global types not in this kernel's BTF: {unresolved:?}");

        eprintln!(
            "{name}: {} bytes of BTF, {} types, parsed in {took:?}; task_struct {} bytes, \
             se.vruntime at {}, state field {}, VMAs {}, module memory {}",
            section.len(),
            t.type_count(),
            t.size_of("task_struct").unwrap(),
            nested.offset,
            if v >= (5, 14) { "__state" } else { "state" },
            if v >= (6, 1) { "mm_mt" } else { "mmap" },
            match t.array_len("module", "mem") {
                Some(n) => format!("mem[{n}]"),
                None => "core_layout".to_owned(),
            },
        );
    }
}

/// Fields whose answers must survive BTF → ISF → import.
const ROUND_TRIP: &[(&str, &str)] = &[
    ("task_struct", "tasks"),
    ("task_struct", "pid"),
    ("task_struct", "tgid"),
    ("task_struct", "comm"),
    ("task_struct", "mm"),
    ("task_struct", "real_parent"),
    ("task_struct", "se.vruntime"),
    ("task_struct", "sched_reset_on_fork"),
    ("mm_struct", "pgd"),
    ("list_head", "prev"),
    ("page", "lru"),
    ("module", "list"),
    ("module", "name"),
    ("printk_ringbuffer", "desc_ring"),
];

#[test]
fn isf_round_trip() {
    for k in kernels() {
        let (_, section) = btf_section(&k.elf);
        let (t, _) = parse_timed(section);
        let mut b = SymbolTableBuilder::default();
        b.push("init_task", 0xffff_ffff_8261_2940, 'D').unwrap();
        b.push("prb", 0xffff_ffff_8280_0000, 'd').unwrap();
        b.push("current_task", 0x1fbc0, 'A').unwrap();
        let symbols = b.build();
        let banner = format!("Linux version {} (test)", k.release);
        let started = Instant::now();
        let mut json = Vec::new();
        t.write_isf(&symbols, &banner, &mut json).unwrap();
        let exported = started.elapsed();
        let (back, syms, info) = Types::from_isf(&json).unwrap();
        assert_eq!(back.source(), TypeSource::Isf);
        assert_eq!(info.banner.as_deref(), Some(banner.as_str()));
        assert_eq!(info.format, "6.2.0");
        assert_eq!(syms.address_of("init_task"), Some(0xffff_ffff_8261_2940));
        // Per-CPU offsets are absolute: a KASLR slide leaves them.
        assert_eq!(syms.slid(0x1000).address_of("current_task"), Some(0x1fbc0));
        assert_eq!(back.symbol_type("init_task").unwrap(), "struct task_struct");
        assert_eq!(
            back.symbol_type("prb").unwrap(),
            "struct printk_ringbuffer *"
        );
        for &(ty, path) in ROUND_TRIP {
            if !t.has_field(ty, path) {
                continue;
            }
            let (a, z) = (t.field(ty, path).unwrap(), back.field(ty, path).unwrap());
            assert_eq!(
                (a.offset, a.size, a.bits, a.element.map(|e| e.1)),
                (z.offset, z.size, z.bits, z.element.map(|e| e.1)),
                "{} {ty}.{path}",
                k.suite
            );
        }
        for ty in ["task_struct", "mm_struct", "module", "list_head", "page"] {
            assert_eq!(t.size_of(ty).unwrap(), back.size_of(ty).unwrap());
        }
        if let Ok(n) = t.enumerator("MOD_MEM_NUM_TYPES") {
            assert_eq!(back.enumerator("MOD_MEM_NUM_TYPES").unwrap(), n);
        }
        eprintln!(
            "{}: ISF export {} bytes in {exported:?}",
            k.suite,
            json.len()
        );
        if let Some(python) = std::env::var_os("VMI_VOLATILITY_PYTHON") {
            validate_with_volatility(&python, &json, k.suite);
        }
    }
}

/// Validates `json` with the schema Volatility 3 ships (its own `schemas.validate`):
/// `VMI_VOLATILITY_PYTHON` names a Python with `volatility3` and `jsonschema` installed.
fn validate_with_volatility(python: &std::ffi::OsStr, json: &[u8], suite: &str) {
    let dir = std::env::temp_dir().join(format!("vmi-linux-isf-{}-{suite}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kernel.json");
    std::fs::write(&path, json).unwrap();
    let script = "import json,sys\n\
        from volatility3 import schemas\n\
        d=json.load(open(sys.argv[1]))\n\
        sys.exit(0 if schemas.validate(d, use_cache=False) else 1)\n";
    let status = std::process::Command::new(python)
        .args(["-c", script])
        .arg(&path)
        .status()
        .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        status.success(),
        "{suite}: Volatility 3 rejects the exported ISF"
    );
}

/// A deterministic xorshift generator for the corruption test.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn corrupted_btf_gives_errors_not_panics() {
    let Some(k) = kernels().into_iter().find(|k| k.suite == "bookworm") else {
        return;
    };
    let (_, section) = btf_section(&k.elf);
    // `VMI_FUZZ_ROUNDS` and `VMI_FUZZ_SEED` run it longer or differently by hand.
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let mut rng = Rng(env("VMI_FUZZ_SEED").unwrap_or(0x9e37_79b9_7f4a_7c15) | 1);
    let rounds = env("VMI_FUZZ_ROUNDS").unwrap_or(if cfg!(debug_assertions) { 12 } else { 60 });
    let (mut ok, mut failed) = (0, 0);
    let started = Instant::now();
    for round in 0..rounds {
        let mut bytes = section.to_vec();
        // A few random words: headers, ids, offsets, lengths, names.
        for _ in 0..1 + round % 8 {
            let at = (rng.next() as usize % (bytes.len() - 4)) & !3;
            let value = match rng.next() % 4 {
                0 => 0xffff_ffff,
                1 => rng.next() as u32,
                2 => (rng.next() % 200_000) as u32,
                _ => 0,
            };
            bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }
        if round % 5 == 0 {
            // The header itself.
            let at = 4 + 4 * (rng.next() as usize % 5);
            bytes[at..at + 4].copy_from_slice(&(rng.next() as u32).to_le_bytes());
        }
        match Types::from_btf(bytes) {
            Ok(t) => {
                ok += 1;
                // Queries on a damaged table answer or fail, bounded.
                for (ty, path) in ROUND_TRIP {
                    let _ = t.field(ty, path);
                    let _ = t.size_of(ty);
                    let _ = t.member_names(ty);
                }
                let _ = t.enumerator("MOD_TEXT");
                let _ = t.to_isf(&Default::default(), "Linux version x");
            }
            Err(Error::Malformed { .. } | Error::Limit { .. } | Error::Unavailable { .. }) => {
                failed += 1
            }
            Err(e) => panic!("unexpected error kind: {e}"),
        }
    }
    eprintln!(
        "corruption: {rounds} rounds, {ok} parsed, {failed} refused, in {:?}",
        started.elapsed()
    );
    // Truncated or absurd headers.
    for bad in [
        &section[..10],
        &section[..section.len() / 2],
        &[0x9f, 0xeb, 0x01, 0x00, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        assert!(Types::from_btf(bad.to_vec()).is_err());
    }
    let mut huge = section.to_vec();
    huge[12..16].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // type_len
    assert!(Types::from_btf(huge).is_err());
}
