//! The fallbacks of [`LinuxOptions`], each on a real kernel (bookworm, 6.1) and checked
//! against the default attach (kallsyms and BTF read from the guest's memory) of the same
//! dump: a Volatility 3 ISF for types and symbols (as exported, and link-time with the
//! KASLR slide to apply), a BTF file (the `.BTF` of the kernel's own vmlinux) with
//! in-memory kallsyms, a System.map with the in-memory BTF, and a VMCOREINFO note (the
//! kernel's own) that locates kallsyms; and the typed errors of wrong combinations.
//!
//! One guest boots for the whole file; its memory is dumped once while paused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use vmi_core::VcpuId;
use vmi_dump::ElfDump;
use vmi_linux::{
    Error, ImageCopy, Linux, LinuxOptions, Module, Process, SymbolSource, SymbolTable, TypeSource,
};
use vmi_tests::matrix::{kernels_dir_or_skip, MatrixKernel};
use vmi_tests::{dump, truth, Guest, GuestOptions};

struct Fixture {
    dump: ElfDump,
    /// `<matrix>/bookworm/vmlinux`.
    vmlinux: PathBuf,
    /// `<matrix>/bookworm/release`.
    release: String,
    /// `/proc/modules` of the guest.
    modules: Vec<truth::ModuleTruth>,
    clean: OnceLock<Clean>,
}

/// The default attach and what it found.
struct Clean {
    linux: Linux<&'static ElfDump>,
    processes: Vec<Process>,
    modules: Vec<Module>,
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        let dir = kernels_dir_or_skip("linux_fallbacks")?;
        let kernel = MatrixKernel::open(&dir, "bookworm").unwrap_or_else(|e| panic!("{e}"));
        let guest = Guest::launch(GuestOptions::for_matrix_kernel("bookworm")).expect("launch");
        guest.wait_ready().expect("boot");
        let modules = truth::modules(&guest).expect("/proc/modules");
        let elf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-fallbacks-bookworm.elf");
        let dump = dump::paused_elf_dump(&guest, &elf).expect("a dump of the paused guest");
        Some(Fixture {
            dump,
            vmlinux: kernel.vmlinux,
            release: kernel.release,
            modules,
            clean: OnceLock::new(),
        })
    })
    .as_ref()
}

/// The fixture and its default attach (checked against `/proc/modules`), or `None`
/// (skip) without the kernel matrix.
fn clean() -> Option<(&'static Fixture, &'static Clean)> {
    let f = fixture()?;
    let c = f.clean.get_or_init(|| {
        let linux = Linux::attach(&f.dump, LinuxOptions::default()).expect("default attach");
        assert_eq!(linux.kernel().release, f.release);
        let processes = linux.processes().expect("processes");
        let modules = linux.modules().expect("modules");
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        let want: Vec<&str> = f.modules.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, want, "default attach: modules");
        assert!(processes.len() > 10);
        Clean {
            linux,
            processes,
            modules,
        }
    });
    Some((f, c))
}

/// Attaches to the dump with `options`, timed.
fn attach(what: &str, options: LinuxOptions) -> Linux<&'static ElfDump> {
    let f = fixture().expect("fixture");
    let t = Instant::now();
    let linux = Linux::attach(&f.dump, options).unwrap_or_else(|e| panic!("{what}: attach: {e}"));
    eprintln!(
        "{what}: attached in {:.1?}\n{}",
        t.elapsed(),
        linux.report()
    );
    linux
}

/// `linux` finds the same processes and modules as the default attach.
fn same_processes_and_modules(what: &str, linux: &Linux<&ElfDump>, clean: &Clean) {
    assert_eq!(
        linux.processes().expect("processes"),
        clean.processes,
        "{what}: processes"
    );
    assert_eq!(
        linux.modules().expect("modules"),
        clean.modules,
        "{what}: modules"
    );
}

/// Every name that occurs once in `want` has the same address in `got`; returns how many
/// were compared.
fn same_addresses(what: &str, got: &SymbolTable, want: &SymbolTable) -> usize {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for s in want.iter() {
        *count.entry(s.name).or_default() += 1;
    }
    let mut compared = 0;
    for s in want.iter().filter(|s| count[s.name] == 1) {
        assert_eq!(
            got.address_of(s.name),
            Some(s.address),
            "{what}: {}",
            s.name
        );
        compared += 1;
    }
    assert!(
        compared > 50_000,
        "{what}: only {compared} symbols compared"
    );
    compared
}

fn the_banner(linux: &Linux<&ElfDump>) -> String {
    format!("{}\n", linux.kernel().banner)
}

fn isf_options(json: Vec<u8>) -> LinuxOptions {
    LinuxOptions {
        symbols: SymbolSource::Isf,
        types: TypeSource::Isf(json),
        ..LinuxOptions::default()
    }
}

// ---------------------------------------------------------------------------------------
// (a) ISF.

#[test]
fn isf_exported_from_the_attach() {
    let Some((_, clean)) = clean() else { return };
    let mut json = Vec::new();
    let t = Instant::now();
    clean.linux.write_isf(&mut json).expect("write_isf");
    eprintln!(
        "ISF of link-time symbols: {} MiB in {:.1?}",
        json.len() >> 20,
        t.elapsed()
    );
    let linux = attach("ISF (runtime)", isf_options(json));
    assert!(
        linux
            .report()
            .steps
            .iter()
            .any(|s| s.starts_with("types: ISF file")),
        "{}",
        linux.report()
    );
    // Its symbols are link-time addresses (as dwarf2json writes them): attaching applies
    // this boot's slide again.
    let slide = format!("KASLR slide {:#x} applied", clean.linux.kernel().slide);
    assert!(
        linux
            .report()
            .steps
            .iter()
            .any(|s| s.starts_with("symbols: ISF") && s.ends_with(&slide)),
        "{}",
        linux.report()
    );
    let n = same_addresses("ISF (exported)", linux.symbols(), clean.linux.symbols());
    eprintln!("ISF (exported): {n} symbols at the same addresses");
    same_processes_and_modules("ISF (exported)", &linux, clean);
}

#[test]
fn isf_with_link_time_symbols() {
    let Some((_, clean)) = clean() else { return };
    let slide = clean.linux.kernel().slide;
    assert_ne!(slide, 0, "this guest boots with KASLR");
    // What dwarf2json/btf2json would write for this build: the link-time addresses.
    let link_time = clean.linux.symbols().slid(-slide);
    assert_eq!(
        link_time.address_of("_text"),
        Some(vmi_linux::linux::LINK_TEXT)
    );
    let mut json = Vec::new();
    clean
        .linux
        .types()
        .write_isf(&link_time, &the_banner(&clean.linux), &mut json)
        .expect("write_isf");
    let linux = attach("ISF (link time)", isf_options(json));
    let applied = format!("KASLR slide {slide:#x} applied");
    assert!(
        linux
            .report()
            .steps
            .iter()
            .any(|s| s.starts_with("symbols: ISF") && s.ends_with(&applied)),
        "{}",
        linux.report()
    );
    let n = same_addresses("ISF (link time)", linux.symbols(), clean.linux.symbols());
    eprintln!("ISF (link time): {n} symbols at the runtime addresses");
    same_processes_and_modules("ISF (link time)", &linux, clean);
    assert_eq!(
        linux.current_task(VcpuId(0)).expect("current task"),
        clean.linux.current_task(VcpuId(0)).unwrap()
    );
}

// ---------------------------------------------------------------------------------------
// (b) A BTF file with kallsyms from memory.

#[test]
fn btf_file_from_the_kernels_vmlinux() {
    let Some((f, clean)) = clean() else { return };
    let elf = std::fs::read(&f.vmlinux).expect("reading vmlinux");
    let image = ImageCopy::from_vmlinux(&elf, 256 << 20).expect("vmlinux image");
    let (va, blob) = vmi_linux::types::carve_btf(&image).expect(".BTF of vmlinux");
    // The kernel keeps its BTF unchanged in memory: the file is the same bytes.
    let (mem_va, in_memory) = vmi_linux::types::carve_btf(clean.linux.image()).unwrap();
    assert_eq!(
        mem_va.wrapping_sub(va) as i64,
        clean.linux.kernel().slide,
        "BTF link address + slide"
    );
    assert!(
        blob == in_memory,
        "the vmlinux's .BTF differs from memory's"
    );
    let linux = attach(
        "BTF file",
        LinuxOptions {
            types: TypeSource::BtfFile(blob),
            ..LinuxOptions::default()
        },
    );
    assert!(
        linux
            .report()
            .steps
            .iter()
            .any(|s| s.starts_with("types: BTF file")),
        "{}",
        linux.report()
    );
    assert_eq!(linux.types().type_count(), clean.linux.types().type_count());
    same_processes_and_modules("BTF file", &linux, clean);
    assert_eq!(
        linux.dmesg().expect("dmesg"),
        clean.linux.dmesg().expect("dmesg")
    );
}

// ---------------------------------------------------------------------------------------
// (c) A System.map with the kernel's BTF.

/// A System.map of this build as `nm` writes it: link-time addresses (the runtime table
/// slid back by the slide), and the per-CPU variables — which kallsyms marks `A`
/// (absolute) — as the data symbols at their zero-based offsets that they are in the
/// vmlinux's symbol table.
fn system_map(linux: &Linux<&ElfDump>) -> String {
    let mut out = String::new();
    for s in linux.symbols().slid(-linux.kernel().slide).iter() {
        let kind = if s.kind == 'A' { 'D' } else { s.kind };
        out.push_str(&format!("{:016x} {kind} {}\n", s.address, s.name));
    }
    out
}

#[test]
fn system_map_with_kernel_btf() {
    let Some((_, clean)) = clean() else { return };
    let map = system_map(&clean.linux);
    let linux = attach(
        "System.map",
        LinuxOptions {
            symbols: SymbolSource::SystemMap(map),
            ..LinuxOptions::default()
        },
    );
    let applied = format!("KASLR slide {:#x} applied", clean.linux.kernel().slide);
    assert!(
        linux
            .report()
            .steps
            .iter()
            .any(|s| s.starts_with("symbols: System.map") && s.ends_with(&applied)),
        "{}",
        linux.report()
    );
    let n = same_addresses("System.map", linux.symbols(), clean.linux.symbols());
    eprintln!("System.map: {n} symbols at the same runtime addresses as kallsyms");
    same_processes_and_modules("System.map", &linux, clean);
    // Per-CPU symbols are offsets, which the slide must leave alone.
    for v in 0..2 {
        assert_eq!(
            linux.current_task(VcpuId(v)).expect("current task"),
            clean.linux.current_task(VcpuId(v)).unwrap(),
            "vCPU {v}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// (d) VMCOREINFO.

/// The note's text as the kernel writes it (`KEY=value` lines).
fn note_text(v: &vmi_linux::Vmcoreinfo) -> String {
    v.entries
        .iter()
        .map(|(k, val)| format!("{k}={val}\n"))
        .collect()
}

#[test]
fn vmcoreinfo_of_the_kernel() {
    let Some((f, clean)) = clean() else { return };
    let v = clean.linux.vmcoreinfo().expect("the kernel's VMCOREINFO");
    assert_eq!(v.osrelease(), Some(f.release.as_str()));
    // Every symbol it names is ours at the same address (init_task is not among them: the
    // kernel's note names memory-management and log symbols). `mem_section` is the
    // array's address read from the pointer (VMCOREINFO_SYMBOL_ARRAY), not the pointer's.
    let mut symbols = 0;
    for (key, _) in &v.entries {
        let Some(name) = key
            .strip_prefix("SYMBOL(")
            .and_then(|k| k.strip_suffix(')'))
        else {
            continue;
        };
        let (Some(ours), Some(theirs)) = (clean.linux.symbols().address_of(name), v.symbol(name))
        else {
            continue;
        };
        if name != "mem_section" {
            assert_eq!(ours, theirs, "SYMBOL({name})");
            symbols += 1;
        }
    }
    assert!(symbols >= 8, "{symbols} VMCOREINFO symbols compared");
    // And the kernel's own field offsets and sizes are what its BTF says.
    let types = clean.linux.types();
    let mut layout = 0;
    for (key, value) in &v.entries {
        let Ok(n) = value.parse::<u64>() else {
            continue;
        };
        let inner = |prefix: &str| key.strip_prefix(prefix).and_then(|k| k.strip_suffix(')'));
        if let Some((ty, field)) = inner("OFFSET(").and_then(|k| k.split_once('.')) {
            if let Ok(off) = types.offset_of(ty, field) {
                assert_eq!(off, n, "{key}");
                layout += 1;
            }
        } else if let Some(ty) = inner("SIZE(") {
            if let Ok(size) = types.size_of(ty) {
                assert_eq!(size, n, "{key}");
                layout += 1;
            }
        }
    }
    assert!(
        layout >= 30,
        "{layout} VMCOREINFO offsets and sizes compared"
    );
    eprintln!("VMCOREINFO: {symbols} symbols and {layout} offsets/sizes agree");
    assert_eq!(
        v.kernel_offset(),
        Some(clean.linux.kernel().slide as u64),
        "KERNELOFFSET"
    );
    // Its kallsyms tables are where the decoder found them by their shape.
    let tables = v.kallsyms_tables().expect("6.1 names its kallsyms tables");
    let anchors = vmi_linux::kallsyms::Anchors {
        text: Some(clean.linux.kernel().text),
        banner: None,
    };
    let found = vmi_linux::kallsyms::decode(clean.linux.image(), anchors)
        .unwrap()
        .1
        .tables;
    assert_eq!(
        (
            tables.names,
            tables.num_syms,
            tables.token_table,
            tables.token_index
        ),
        (
            found.names,
            found.num_syms,
            found.token_table,
            found.token_index
        )
    );

    let linux = attach(
        "VMCOREINFO",
        LinuxOptions {
            vmcoreinfo: Some(note_text(&v)),
            ..LinuxOptions::default()
        },
    );
    let report = linux.report().to_string();
    assert!(
        report.contains("kallsyms decoded from memory at the addresses VMCOREINFO gives"),
        "{report}"
    );
    assert!(report.contains("KERNELOFFSET"), "{report}");
    // The very same table.
    let got: Vec<(&str, u64, char)> = linux
        .symbols()
        .iter()
        .map(|s| (s.name, s.address, s.kind))
        .collect();
    let want: Vec<(&str, u64, char)> = clean
        .linux
        .symbols()
        .iter()
        .map(|s| (s.name, s.address, s.kind))
        .collect();
    assert!(got == want, "VMCOREINFO: a different symbol table");
    same_processes_and_modules("VMCOREINFO", &linux, clean);
}

#[test]
fn vmcoreinfo_with_a_wrong_kerneloffset() {
    let Some((f, clean)) = clean() else { return };
    let v = clean.linux.vmcoreinfo().expect("the kernel's VMCOREINFO");
    let slide = clean.linux.kernel().slide as u64;
    let wrong: String = note_text(&v)
        .lines()
        .map(|l| {
            if l.starts_with("KERNELOFFSET=") {
                format!("KERNELOFFSET={:x}\n", slide + 0x20_0000)
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(wrong, note_text(&v));
    let e = Linux::attach(
        &f.dump,
        LinuxOptions {
            vmcoreinfo: Some(wrong),
            ..LinuxOptions::default()
        },
    )
    .expect_err("a KERNELOFFSET that disagrees with the image");
    match e {
        Error::Malformed { what, detail } => {
            assert_eq!(what, "VMCOREINFO");
            assert!(detail.contains("KERNELOFFSET"), "{detail}");
        }
        other => panic!("wrong KERNELOFFSET: {other}"),
    }
    // A note that is not one at all.
    let e = Linux::attach(
        &f.dump,
        LinuxOptions {
            vmcoreinfo: Some("no key-value lines here".into()),
            ..LinuxOptions::default()
        },
    )
    .expect_err("a note without KEY=value lines");
    assert!(
        matches!(
            e,
            Error::Malformed {
                what: "VMCOREINFO",
                ..
            }
        ),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// (e) Wrong combinations.

#[test]
fn isf_symbols_need_isf_types() {
    let Some((f, _)) = clean() else { return };
    let e = Linux::attach(
        &f.dump,
        LinuxOptions {
            symbols: SymbolSource::Isf,
            ..LinuxOptions::default()
        },
    )
    .expect_err("SymbolSource::Isf with the kernel's BTF");
    match e {
        Error::Unavailable { what, reason } => {
            assert_eq!(what, "ISF symbols");
            assert!(reason.contains("TypeSource::Isf"), "{reason}");
        }
        other => panic!("SymbolSource::Isf without TypeSource::Isf: {other}"),
    }
}
