//! kallsyms and BTF destroyed in the kernel image, BTF files of garbage, and a CR3
//! pointing at garbage: attach itself must fail with a typed error.

use vmi_dump::ElfDump;
use vmi_linux::kallsyms::{self, Anchors};
use vmi_linux::{Error, Linux, LinuxOptions, SymbolSource, TypeSource};
use vmi_tests::overlay::Overlay;

use super::measure::{within, Measured};
use super::{clean, pa, Hostile};

// ---------------------------------------------------------------------------------------
// kallsyms and BTF destroyed in the image.

/// Where the clean image's kallsyms tables are.
fn kallsyms_tables(clean: &Linux<&ElfDump>) -> kallsyms::KallsymsTables {
    let anchors = Anchors {
        text: Some(clean.kernel().text),
        banner: None,
    };
    kallsyms::decode(clean.image(), anchors)
        .expect("kallsyms of the clean image")
        .1
        .tables
}

/// A System.map of the clean kernel: link-time addresses (the runtime table slid back).
fn system_map(clean: &Linux<&ElfDump>) -> String {
    let mut out = String::new();
    for s in clean.symbols().slid(-clean.kernel().slide).iter() {
        out.push_str(&format!("{:016x} {} {}\n", s.address, s.kind, s.name));
    }
    out
}

/// Patches `len` bytes of kernel virtual memory from `va` with `byte`, page by page.
fn fill(hostile: &mut Hostile, clean: &Linux<&ElfDump>, va: u64, len: u64, byte: u8) {
    let mut at = va;
    while at < va + len {
        let n = (0x1000 - (at & 0xfff)).min(va + len - at);
        hostile.patch(pa(clean, at), &vec![byte; n as usize]);
        at += n;
    }
}

fn attach_err(what: &str, hostile: Hostile, options: LinuxOptions) -> Measured<Error> {
    let r = within(what, move || Linux::attach(hostile, options).err());
    Measured {
        value: r
            .value
            .unwrap_or_else(|| panic!("{what}: attach succeeded")),
        elapsed: r.elapsed,
        peak_alloc: r.peak_alloc,
    }
}

#[test]
fn kallsyms_destroyed_in_the_image() {
    let Some((dump, clean)) = clean() else { return };
    let t = kallsyms_tables(clean);
    let num_syms = t.num_syms.expect("num_syms found");
    let token_table = t.token_table.expect("token table found");
    let token_index = t.token_index.expect("token index found");
    let names = t.names.expect("names found");

    // num_syms absurd: the tables no longer agree, no candidate is accepted.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u32(pa(clean, num_syms), 0xffff_fff0);
    let r = attach_err(
        "kallsyms num_syms 2^32-16",
        hostile,
        LinuxOptions::default(),
    );
    assert!(
        matches!(
            r.value,
            Error::NotFound {
                what: "kallsyms",
                ..
            }
        ),
        "{}",
        r.value
    );

    // The names table overwritten with 0xff (every length byte says 127/2-byte).
    let mut hostile = Overlay::new(dump);
    fill(&mut hostile, clean, names, 64 << 10, 0xff);
    let r = attach_err("kallsyms names destroyed", hostile, LinuxOptions::default());
    assert!(
        matches!(
            r.value,
            Error::NotFound {
                what: "kallsyms",
                ..
            }
        ),
        "{}",
        r.value
    );

    // The token table zeroed: no table is found at all; a System.map still attaches
    // (types from the kernel's BTF) to the same symbols and processes.
    let mut hostile = Overlay::new(dump);
    fill(
        &mut hostile,
        clean,
        token_table,
        token_index - token_table,
        0,
    );
    let r = attach_err(
        "kallsyms token table destroyed",
        hostile,
        LinuxOptions::default(),
    );
    assert!(
        matches!(
            r.value,
            Error::NotFound {
                what: "kallsyms",
                ..
            }
        ),
        "{}",
        r.value
    );
    let mut hostile = Overlay::new(dump);
    fill(
        &mut hostile,
        clean,
        token_table,
        token_index - token_table,
        0,
    );
    let map = system_map(clean);
    let r = within("System.map after kallsyms destroyed", move || {
        let linux = Linux::attach(
            hostile,
            LinuxOptions {
                symbols: SymbolSource::SystemMap(map),
                ..LinuxOptions::default()
            },
        )?;
        let procs: Vec<(u32, String)> = linux
            .processes()?
            .into_iter()
            .map(|p| (p.pid, p.comm))
            .collect();
        Ok::<_, Error>((linux.symbol("init_task")?, linux.symbols().len(), procs))
    });
    let (init_task, count, procs) = r.value.expect("System.map attach");
    assert_eq!(init_task, clean.symbol("init_task").unwrap());
    assert_eq!(count, clean.symbols().len());
    let want: Vec<(u32, String)> = clean
        .processes()
        .unwrap()
        .into_iter()
        .map(|p| (p.pid, p.comm))
        .collect();
    assert_eq!(procs, want);
}

#[test]
fn btf_destroyed_in_the_image() {
    let Some((dump, clean)) = clean() else { return };
    let (btf_va, blob) = vmi_linux::types::carve_btf(clean.image()).expect("clean BTF");

    let check_unavailable = |what: &str, e: &Error| match e {
        Error::Unavailable { what: w, reason } => {
            assert_eq!(*w, "kernel BTF", "{what}");
            assert!(
                reason.contains("TypeSource::BtfFile") && reason.contains("TypeSource::Isf"),
                "{what}: {reason}"
            );
        }
        other => panic!("{what}: {other}"),
    };

    // The magic gone.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u32(pa(clean, btf_va), 0);
    let r = attach_err("BTF magic destroyed", hostile, LinuxOptions::default());
    check_unavailable("BTF magic destroyed", &r.value);

    // A header claiming 4 GiB of types.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u32(pa(clean, btf_va + 12), u32::MAX); // type_len
    let r = attach_err("BTF type_len 2^32-1", hostile, LinuxOptions::default());
    check_unavailable("BTF type_len 2^32-1", &r.value);
    assert!(r.peak_alloc < 256 << 20, "{} bytes", r.peak_alloc);

    // The header intact, the first 64 KiB of type records overwritten.
    let hdr_len = u64::from(u32::from_le_bytes(blob[4..8].try_into().unwrap()));
    let mut hostile = Overlay::new(dump);
    fill(&mut hostile, clean, btf_va + hdr_len, 64 << 10, 0xff);
    let r = attach_err("BTF types destroyed", hostile, LinuxOptions::default());
    check_unavailable("BTF types destroyed", &r.value);

    // The fallback the error names: the same BTF as a file.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u32(pa(clean, btf_va), 0);
    let r = within("BTF file after the magic was destroyed", move || {
        let linux = Linux::attach(
            hostile,
            LinuxOptions {
                types: TypeSource::BtfFile(blob),
                ..LinuxOptions::default()
            },
        )?;
        Ok::<_, Error>(linux.processes()?.len())
    });
    assert_eq!(
        r.value.expect("BtfFile attach"),
        clean.processes().unwrap().len()
    );
}

#[test]
fn btf_file_of_garbage() {
    let Some((dump, clean)) = clean() else { return };
    let (_, blob) = vmi_linux::types::carve_btf(clean.image()).expect("clean BTF");
    let mut truncated = blob.clone();
    truncated.truncate(blob.len() / 2);
    let mut scrambled = blob.clone();
    for b in scrambled.iter_mut().skip(24).step_by(7) {
        *b ^= 0x5a;
    }
    for (what, bytes) in [
        ("empty BTF file", Vec::new()),
        ("truncated BTF file", truncated),
        ("scrambled BTF file", scrambled),
    ] {
        let r = attach_err(
            what,
            Overlay::new(dump),
            LinuxOptions {
                types: TypeSource::BtfFile(bytes),
                ..LinuxOptions::default()
            },
        );
        assert!(
            matches!(
                r.value,
                Error::Malformed { .. }
                    | Error::NotFound { .. }
                    | Error::Limit { .. }
                    | Error::Unavailable { .. }
            ),
            "{what}: {}",
            r.value
        );
    }
}

// ---------------------------------------------------------------------------------------
// Registers.

#[test]
fn cr3_pointing_at_garbage() {
    let Some((dump, clean)) = clean() else { return };
    let text_pa = pa(clean, clean.kernel().text + 0x10_0000);
    for (what, cr3) in [
        ("CR3 beyond RAM", 64u64 << 30),
        ("CR3 at a page of kernel code", text_pa),
        ("CR3 at page 0", 0),
    ] {
        let mut hostile = Overlay::new(dump);
        hostile.patch_registers(move |_, regs| {
            if let Some(c) = regs.control.as_mut() {
                c.cr3 = cr3;
            }
        });
        let r = attach_err(what, hostile, LinuxOptions::default());
        assert!(
            matches!(
                r.value,
                Error::NotFound {
                    what: "kernel image",
                    ..
                } | Error::Limit {
                    what: "kernel image size",
                    ..
                }
            ),
            "{what}: {}",
            r.value
        );
        // The image copy is bounded by `max_image_size` (256 MiB).
        assert!(
            r.peak_alloc <= (256 + 64) << 20,
            "{what}: {} bytes",
            r.peak_alloc
        );
    }
}
