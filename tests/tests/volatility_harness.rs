//! The Volatility 3 harness (`vmi_tests::volatility`) on a real guest's ELF dump,
//! before any ISF of ours exists: Volatility reads QEMU's `dump-guest-memory` ELF,
//! `banners.Banners` finds the guest's own banner in it, and a Linux plugin without a
//! matching ISF fails with Volatility's unsatisfied-requirement error.
//!
//! One guest boots for the whole file and is dumped once.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use vmi_tests::volatility::Volatility;
use vmi_tests::{dump, Guest};

struct Fixture {
    /// QEMU's ELF dump of the guest.
    elf: PathBuf,
    /// The guest's `/proc/version`.
    banner: String,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("volatility_harness");
        std::fs::create_dir_all(&dir).unwrap();
        let guest = Guest::boot();
        let banner = guest.banner().expect("banner marker").to_owned();
        let elf = dir.join("guest.elf");
        // QEMU refuses to overwrite nothing, but a previous run's file may be read-only.
        let _ = std::fs::remove_file(&elf);
        dump::dump_guest_memory(&guest, &elf).expect("dump-guest-memory");
        Fixture { elf, banner }
    })
}

#[test]
fn banners_plugin_finds_the_guest_banner_in_the_elf_dump() {
    let vol = Volatility::from_env_or_panic();
    let f = fixture();
    let (banners, elapsed) = vol.banners(&f.elf).expect("vol banners.Banners");
    eprintln!(
        "banners.Banners on {} MiB: {:.1} s, {} banners",
        std::fs::metadata(&f.elf).unwrap().len() >> 20,
        elapsed.as_secs_f64(),
        banners.len()
    );
    for b in &banners {
        eprintln!("  {:#x}: {:?}", b.offset, b.banner);
    }
    let want = f.banner.trim_end();
    assert!(
        banners.iter().any(|b| b.banner.trim_end() == want),
        "no banner equal to the guest's /proc/version {want:?} among {banners:?}"
    );
}

#[test]
fn linux_plugin_without_a_matching_isf_reports_the_missing_symbol_table() {
    let vol = Volatility::from_env_or_panic();
    let f = fixture();
    let err = vol
        .run(&f.elf, None, "linux.pslist.PsList", &[])
        .expect_err("linux.pslist cannot run without the kernel's ISF");
    let msg = err.to_string();
    eprintln!("{msg}");
    assert!(
        msg.contains("Unable to validate the plugin requirements")
            && msg.contains("kernel.symbol_table_name"),
        "unexpected error: {msg}"
    );
}

/// Standard base64 (RFC 4648, padded), as ISF `constant_data` holds bytes.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// An ISF holding nothing but `linux_banner` with `banner` (plus the kernel's `\n\0`)
/// as its constant data: enough for Volatility to pick it, far too little to use it.
fn banner_only_isf(path: &Path, banner: &str) {
    std::fs::write(
        path,
        serde_json::to_vec(&banner_only_isf_json(banner)).unwrap(),
    )
    .unwrap();
}

fn banner_only_isf_json(banner: &str) -> serde_json::Value {
    let bytes = format!("{banner}\n\0");
    serde_json::json!({
        "metadata": {
            "format": "6.2.0",
            "producer": { "name": "vmi-tests", "version": "0.1.0" }
        },
        "base_types": {
            "char": { "kind": "char", "size": 1, "signed": true, "endian": "little" }
        },
        "user_types": {},
        "enums": {},
        "symbols": {
            "linux_banner": {
                "address": 0,
                "constant_data": base64(bytes.as_bytes()),
                "type": {
                    "kind": "array",
                    "count": bytes.len(),
                    "subtype": { "kind": "base", "name": "char" }
                }
            }
        }
    })
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (plain, encoded) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(plain.as_bytes()), encoded, "{plain:?}");
    }
}

/// The harness hands Volatility the ISF, and Volatility picks an ISF by its banner: one
/// whose `linux_banner` is the guest's is tried on the dump (and fails there for want of
/// kernel types, which Volatility's log shows), one with another banner is never tried.
#[test]
fn isf_is_picked_by_its_linux_banner() {
    let vol = Volatility::from_env_or_panic();
    let f = fixture();
    let dir = f.elf.parent().unwrap();
    let matching = dir.join("banner-only.json");
    banner_only_isf(&matching, f.banner.trim_end());
    let other = dir.join("other-banner.json");
    banner_only_isf(
        &other,
        "Linux version 0.0.0-not-this-kernel (nobody@nowhere) #1",
    );

    let err = vol
        .run(&f.elf, Some(&matching), "linux.pslist.PsList", &[])
        .expect_err("a banner-only ISF cannot describe the kernel")
        .to_string();
    eprintln!("{err}");
    assert!(
        err.contains("Identified banner") && err.contains("Symbol type not in"),
        "Volatility did not try the ISF with the guest's banner: {err}"
    );

    let err = vol
        .run(&f.elf, Some(&other), "linux.pslist.PsList", &[])
        .expect_err("no ISF for this kernel")
        .to_string();
    assert!(
        err.contains("kernel.symbol_table_name") && !err.contains("Symbol type not in"),
        "Volatility tried an ISF whose banner is not in the dump: {err}"
    );
}

/// Volatility's schema check, without a dump: the banner-only ISF is well-formed; the
/// same ISF claiming BTF as its types' source (a `kind` the schema does not allow) is not.
#[test]
fn validate_isf_accepts_a_valid_isf_and_reports_schema_violations() {
    let vol = Volatility::from_env_or_panic();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("volatility_harness");
    std::fs::create_dir_all(&dir).unwrap();
    let banner = "Linux version 0.0.0-schema-check (nobody@nowhere) #1";
    let valid = dir.join("valid.json");
    banner_only_isf(&valid, banner);
    let elapsed = vol
        .validate_isf(&valid)
        .expect("the banner-only ISF is valid");
    eprintln!("isfinfo --validate: {:.1} s", elapsed.as_secs_f64());

    let mut isf = banner_only_isf_json(banner);
    isf["metadata"]["linux"] = serde_json::json!({
        "symbols": [{ "kind": "system-map", "name": "System.map" }],
        "types": [{ "kind": "btf", "name": "vmlinux" }]
    });
    let btf_kind = dir.join("btf-kind.json");
    std::fs::write(&btf_kind, serde_json::to_vec(&isf).unwrap()).unwrap();
    let err = vol
        .validate_isf(&btf_kind)
        .expect_err("metadata.linux.types[].kind `btf` is not in Volatility's schema")
        .to_string();
    eprintln!("{err}");
    assert!(err.contains("ValidationError"), "unexpected error: {err}");

    // Not JSON at all: Volatility skips it; the harness must not call it valid.
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, b"not json").unwrap();
    let err = vol
        .validate_isf(&garbage)
        .expect_err("a file that is not JSON is no ISF");
    eprintln!("{err}");
}
