//! kallsyms decoded from each real Debian kernel of the matrix (`$VMI_LINUX_KERNELS/<suite>/
//! vmlinux`), checked against ground truth the decoder does not use.
//!
//! Debian's vmlinux (decompressed from the package's vmlinuz) is stripped: no `.symtab`, and
//! the package's System.map is a placeholder. Ground truth is therefore what the compiler and
//! linker wrote independently of `scripts/kallsyms`:
//! - the anchors: `_text` is the start of the `.text` section (vmlinux.lds puts it there),
//!   `linux_banner` is where `Linux version <release> ` sits in the image;
//! - every exported symbol: `__ksymtab` / `__ksymtab_gpl` hold, per export, place-relative
//!   references to the symbol and to its name (11–30 k per kernel). Each must be in the
//!   decoded table with the same address, both ways.
//!
//! The same image is then moved by a KASLR-like slide (with `kallsyms_relative_base`
//! relocated as the kernel's boot code does) and must decode to every address slid.
//!
//! Without `VMI_LINUX_KERNELS` the test prints a skip message, unless `VMI_REQUIRE_QEMU=1`
//! (CI), where a missing matrix is a failure.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use vmi_linux::kallsyms::{decode, decode_at, AddressEncoding, Anchors, KallsymsReport};
use vmi_linux::{ImageCopy, SymbolTable};

const SUITES: [&str; 4] = ["bullseye", "bookworm", "trixie", "sid"];

fn kernels_dir() -> Option<PathBuf> {
    match std::env::var_os("VMI_LINUX_KERNELS") {
        Some(d) => Some(PathBuf::from(d)),
        None if std::env::var("VMI_REQUIRE_QEMU").as_deref() == Ok("1") => {
            panic!("VMI_REQUIRE_QEMU=1 but VMI_LINUX_KERNELS is not set")
        }
        None => {
            eprintln!("skipped: set VMI_LINUX_KERNELS to a kernel matrix directory");
            None
        }
    }
}

/// `(name, address, size)` of every ELF section (little-endian ELF64).
fn sections(elf: &[u8]) -> Vec<(String, u64, u64)> {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    let shoff = u64_at(0x28) as usize;
    let (shentsize, shnum, shstrndx) = (u16_at(0x3a), u16_at(0x3c), u16_at(0x3e));
    let strtab = u64_at(shoff + shstrndx * shentsize + 0x18) as usize;
    (0..shnum)
        .map(|i| {
            let sh = shoff + i * shentsize;
            let name_at = strtab + u32_at(sh);
            let len = elf[name_at..].iter().position(|&c| c == 0).unwrap();
            let name = String::from_utf8_lossy(&elf[name_at..name_at + len]).into_owned();
            (name, u64_at(sh + 0x10), u64_at(sh + 0x20))
        })
        .collect()
}

/// Every `(name, address)` the kernel exports, read from `__ksymtab*` in the image
/// (`struct kernel_symbol { int value_offset, name_offset, namespace_offset; }`).
fn exports(image: &ImageCopy, sections: &[(String, u64, u64)]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (_, start, size) in sections
        .iter()
        .filter(|s| s.0 == "__ksymtab" || s.0 == "__ksymtab_gpl")
    {
        assert_eq!(size % 12, 0, "kernel_symbol is 12 bytes");
        for e in (*start..start + size).step_by(12) {
            let rel = |va: u64| va.wrapping_add(image.u32_at(va).unwrap() as i32 as i64 as u64);
            let name_va = rel(e + 4);
            let name = image.slice(name_va, 1).map(|_| {
                let off = image.offset_of(name_va).unwrap();
                let len = image.bytes()[off..].iter().position(|&c| c == 0).unwrap();
                String::from_utf8(image.bytes()[off..off + len].to_vec()).unwrap()
            });
            out.push((name.expect("export name in the image"), rel(e)));
        }
    }
    out
}

/// Checks every export both ways; returns how many were checked.
fn check_exports(suite: &str, table: &SymbolTable, exports: &[(String, u64)]) -> usize {
    let all: HashSet<(&str, u64)> = table.iter().map(|s| (s.name, s.address)).collect();
    let mut copies: HashMap<&str, usize> = HashMap::new();
    for s in table.iter() {
        *copies.entry(s.name).or_default() += 1;
    }
    for (name, va) in exports {
        assert!(
            all.contains(&(name.as_str(), *va)),
            "{suite}: export {name} at {va:#x} missing from kallsyms"
        );
        if copies[name.as_str()] == 1 {
            assert_eq!(
                table.address_of(name),
                Some(*va),
                "{suite}: name → VA of {name}"
            );
        }
        let (sym, off) = table.symbol_at(*va).expect("reverse lookup");
        assert_eq!((sym.address, off), (*va, 0), "{suite}: VA → name of {name}");
        assert!(
            all.contains(&(sym.name, *va)),
            "{suite}: {va:#x} named {}",
            sym.name
        );
    }
    exports.len()
}

fn summary(suite: &str, report: &KallsymsReport, ms: f64, exports: usize) {
    eprintln!(
        "{suite}: {:?}, {:?}, {:?}, {} symbols, {exports} exports checked, decode {ms:.1} ms ({})",
        report.order,
        report.encoding,
        report.name_lengths,
        report.count,
        if cfg!(debug_assertions) {
            "debug build"
        } else {
            "release"
        }
    );
}

#[test]
fn kallsyms_of_each_debian_kernel() {
    let Some(dir) = kernels_dir() else { return };
    let require = std::env::var("VMI_REQUIRE_QEMU").as_deref() == Ok("1");
    for suite in SUITES {
        let Ok(elf) = std::fs::read(dir.join(suite).join("vmlinux")) else {
            assert!(!require, "{suite}: no vmlinux in {}", dir.display());
            eprintln!("{suite}: no vmlinux, skipped");
            continue;
        };
        let release = std::fs::read_to_string(dir.join(suite).join("release")).unwrap();
        let sections = sections(&elf);
        let image = ImageCopy::from_vmlinux(&elf, 1 << 30).unwrap();
        drop(elf);

        let text = sections.iter().find(|s| s.0 == ".text").unwrap().1;
        let banner_text = format!("Linux version {} ", release.trim());
        let banner = memchr::memmem::find(image.bytes(), banner_text.as_bytes())
            .map(|o| image.va_of(o))
            .expect("banner in the image");
        let anchors = Anchors {
            text: Some(text),
            banner: Some(banner),
        };

        let t0 = Instant::now();
        let (table, report) = decode(&image, anchors).unwrap_or_else(|e| panic!("{suite}: {e}"));
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        assert_eq!(table.len(), report.count);
        assert!(
            (50_000..=400_000).contains(&report.count),
            "{suite}: {} symbols",
            report.count
        );
        assert_eq!(
            table.get("_text").map(|s| (s.address, s.kind)),
            Some((text, 'T'))
        );
        // 6.1+ also links a weak copy of the banner before the real one: the anchor is the
        // first copy (as a scan finds it), linux_banner must be one of the copies.
        let copies: Vec<u64> = memchr::memmem::find_iter(image.bytes(), banner_text.as_bytes())
            .map(|o| image.va_of(o))
            .collect();
        let b = table.get("linux_banner").unwrap();
        assert!(
            copies.contains(&b.address),
            "{suite}: linux_banner {:#x}",
            b.address
        );
        let text_at = &image.bytes()[image.offset_of(b.address).unwrap()..];
        let hash = text_at.iter().position(|&c| c == b'#').unwrap();
        assert!(text_at[hash + 1].is_ascii_digit(), "{suite}: the #N banner");
        assert!(
            matches!(b.kind, 'D' | 'R'),
            "{suite}: linux_banner is {}",
            b.kind
        );
        assert!(table
            .iter()
            .all(|s| s.name.bytes().all(|c| c.is_ascii_graphic())));

        let exports = exports(&image, &sections);
        assert!(exports.len() > 5_000, "{suite}: {} exports", exports.len());
        assert!(report.count > 3 * exports.len());
        let checked = check_exports(suite, &table, &exports);
        summary(suite, &report, ms, checked);

        // Without anchors: the same table, found by the self-checks alone.
        let (free, free_report) = decode(&image, Anchors::default()).unwrap();
        assert_eq!(free_report.tables, report.tables);
        assert_eq!(free.len(), table.len());

        // With the tables known (as VMCOREINFO gives them): the same table.
        let (known, _) = decode_at(&image, report.tables, anchors).unwrap();
        assert!(known.iter().eq(table.iter()), "{suite}: decode_at differs");

        slid(suite, &image, &report, &table, anchors);
    }
}

/// The image as KASLR places it: every byte moved by `SLIDE`, and the one relocated value
/// of the tables (`kallsyms_relative_base`) moved with it. Every address must move by
/// `SLIDE`, except per-CPU offsets of the absolute-percpu encoding.
fn slid(suite: &str, image: &ImageCopy, report: &KallsymsReport, table: &SymbolTable, a: Anchors) {
    const SLIDE: u64 = 0x2a00_0000;
    let mut bytes = image.bytes().to_vec();
    if let Some(rb) = report.tables.relative_base {
        let off = image.offset_of(rb).unwrap();
        let v = image.u64_at(rb).unwrap() + SLIDE;
        bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
    }
    let present: Vec<bool> = (0..image.len().div_ceil(4096))
        .map(|p| image.is_present(p * 4096))
        .collect();
    let moved = ImageCopy::with_presence(image.base() + SLIDE, bytes, present).unwrap();
    let anchors = Anchors {
        text: a.text.map(|t| t + SLIDE),
        banner: a.banner.map(|b| b + SLIDE),
    };
    let (slid, slid_report) = decode(&moved, anchors).unwrap_or_else(|e| panic!("{suite}: {e}"));
    assert_eq!(
        (slid_report.order, slid_report.encoding),
        (report.order, report.encoding)
    );
    let percpu = report.encoding == AddressEncoding::AbsolutePercpu;
    let mut kept = 0;
    for (s, t) in slid.iter().zip(table.iter()) {
        assert_eq!(s.name, t.name);
        if percpu && s.address == t.address && t.address < image.base() {
            kept += 1;
        } else {
            assert_eq!(s.address, t.address + SLIDE, "{suite}: {} slid", s.name);
        }
    }
    eprintln!("{suite}: slid by {SLIDE:#x}: all addresses moved, {kept} per-CPU offsets kept");
}
