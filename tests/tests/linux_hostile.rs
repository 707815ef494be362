//! A hostile guest: vmi-linux on a real kernel's memory with its structures corrupted —
//! task and module lists that loop or point outside RAM or at unmapped addresses, absurd
//! printk ring-buffer counts, maple-tree nodes of unknown type, pointing at themselves or
//! shared (a DAG), a dentry chain that loops, an absurd argument area, a garbage GS base,
//! kallsyms and BTF destroyed in the image ([`image`]), a CR3 pointing at garbage. Each
//! must end in a typed [`vmi_linux::Error`] (the variant is checked) within a time bound
//! measured here — a hang fails the test instead of hanging it — without a panic, and
//! with the allocation peak of the operation bounded ([`measure`]). A `comm` without NUL
//! is not an error: it is read up to the end of its 16-byte field.
//!
//! One bookworm (6.1) guest boots for the whole file; its memory is dumped once while
//! paused and every case patches bytes of that dump through [`Overlay`], at
//! guest-physical addresses found by attaching to the clean dump first. (No VMA *list*
//! loop: 6.1 keeps VMAs in the maple tree only.)

#[path = "linux_hostile/image.rs"]
mod image;
#[path = "linux_hostile/measure.rs"]
mod measure;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use vmi_core::{Gva, PhysicalMemory};
use vmi_dump::ElfDump;
use vmi_linux::{Error, Linux, LinuxOptions};
use vmi_tests::matrix::kernels_dir_or_skip;
use vmi_tests::overlay::Overlay;
use vmi_tests::{dump, Guest, GuestOptions};

use measure::within;

// ---------------------------------------------------------------------------------------
// The fixture: one bookworm guest, dumped once while paused.

struct Fixture {
    dump: ElfDump,
    clean: OnceLock<Linux<&'static ElfDump>>,
}

fn fixture() -> Option<&'static Fixture> {
    static F: OnceLock<Option<Fixture>> = OnceLock::new();
    F.get_or_init(|| {
        kernels_dir_or_skip("linux_hostile")?;
        let guest = Guest::launch(GuestOptions::for_matrix_kernel("bookworm")).expect("launch");
        guest.wait_ready().expect("boot");
        let elf = Path::new(env!("CARGO_TARGET_TMPDIR")).join("linux-hostile-bookworm.elf");
        let dump = dump::paused_elf_dump(&guest, &elf).expect("a dump of the paused guest");
        Some(Fixture {
            dump,
            clean: OnceLock::new(),
        })
    })
    .as_ref()
}

/// The clean dump and vmi-linux attached to it, or `None` (skip) without the matrix.
fn clean() -> Option<(&'static ElfDump, &'static Linux<&'static ElfDump>)> {
    let f = fixture()?;
    let linux = f.clean.get_or_init(|| {
        Linux::attach(&f.dump, LinuxOptions::default()).expect("attach to the clean dump")
    });
    Some((&f.dump, linux))
}

type Hostile = Overlay<&'static ElfDump>;

/// Byte ranges to replace: `(guest-physical address, bytes)`.
type Patches = Vec<(u64, Vec<u8>)>;

/// The guest-physical address of kernel virtual address `va`.
fn pa(linux: &Linux<&ElfDump>, va: u64) -> u64 {
    linux
        .kernel_va_to_pa(va)
        .expect("translating a clean address")
        .0
}

fn off(linux: &Linux<&ElfDump>, ty: &str, field: &str) -> u64 {
    linux.types().field(ty, field).expect("field").offset
}

fn u64_at(linux: &Linux<&ElfDump>, va: u64) -> u64 {
    linux.kernel_reader().u64(va).expect("reading clean memory")
}

/// Attaches to `hostile` with default options within the time limit; the attach must
/// succeed (the corruption is elsewhere).
fn attach(what: &str, hostile: Hostile) -> Linux<Hostile> {
    within(&format!("{what}: attach"), move || {
        Linux::attach(hostile, LinuxOptions::default())
    })
    .value
    .unwrap_or_else(|e| panic!("{what}: attach failed: {e}"))
}

// ---------------------------------------------------------------------------------------
// Task lists.

#[test]
fn task_list_looping_to_a_middle_node() {
    let Some((dump, clean)) = clean() else { return };
    let procs = clean.processes().unwrap();
    assert!(procs.len() > 10, "{} processes", procs.len());
    let tasks = off(clean, "task_struct", "tasks");
    // The 8th task's `next` goes back to the 3rd: a cycle that never returns to the head.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u64(pa(clean, procs[8].task + tasks), procs[3].task + tasks);
    let linux = attach("middle loop", hostile);
    let r = within("task list looping to a middle node", move || {
        linux.processes()
    });
    match r.value {
        Err(Error::Malformed { what, detail }) => {
            assert_eq!(what, "task list");
            assert!(detail.contains("loops"), "{detail}");
        }
        other => panic!("middle loop: {other:?}"),
    }
    // A node pointing at itself.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u64(pa(clean, procs[5].task + tasks), procs[5].task + tasks);
    let linux = attach("self loop", hostile);
    let r = within("task pointing at itself", move || linux.process(1));
    assert!(
        matches!(
            r.value,
            Err(Error::Malformed {
                what: "task list",
                ..
            })
        ),
        "{:?}",
        r.value
    );
}

/// A canonical kernel VA that nothing maps: a free 1 GiB slot of the page directory
/// pointer table under the kernel image's PML4 slot (511), below the image's own slot
/// (510). Returns the VA and the physical address of its PDPT entry.
fn free_gib_slot(clean: &Linux<&ElfDump>, dump: &ElfDump) -> (u64, u64) {
    let space = clean.kernel().kernel_space;
    assert!(
        !clean.kernel().la57,
        "4-level paging expected on this guest"
    );
    let pml4e = dump.read_u64(vmi_core::Gpa(space.cr3.0 + 511 * 8)).unwrap();
    let pdpt = pml4e & 0x000f_ffff_ffff_f000;
    for slot in (256..510u64).rev() {
        let entry_pa = pdpt + slot * 8;
        if dump.read_u64(vmi_core::Gpa(entry_pa)).unwrap() == 0 {
            let va = 0xffff_ff80_0000_0000 | slot << 30;
            assert!(
                vmi_core::translate(dump, space.mode, space.cr3, Gva(va)).is_err(),
                "{va:#x} is mapped"
            );
            return (va, entry_pa);
        }
    }
    panic!("no free PDPT slot under PML4[511]");
}

#[test]
fn task_next_pointing_outside_ram_and_to_an_unmapped_address() {
    let Some((dump, clean)) = clean() else { return };
    let procs = clean.processes().unwrap();
    let tasks = off(clean, "task_struct", "tasks");
    let (va, pdpte) = free_gib_slot(clean, dump);

    // Unmapped: the free slot as it is.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u64(pa(clean, procs[4].task + tasks), va + 0x1230);
    let linux = attach("unmapped next", hostile);
    let r = within("task next at an unmapped VA", move || linux.processes());
    assert!(
        matches!(r.value, Err(Error::Vmi(vmi_core::Error::PageFault { .. }))),
        "{:?}",
        r.value
    );

    // Mapped, but to physical memory far beyond the guest's RAM (and the dump): the
    // free slot made a 1 GiB page at 64 GiB.
    let beyond = 64u64 << 30;
    let ram_end = dump.segments().iter().map(|s| s.end()).max().unwrap_or(0);
    assert!(beyond > ram_end, "RAM ends at {ram_end:#x}");
    let mut hostile = Overlay::new(dump);
    hostile
        .patch_u64(pdpte, beyond | 0x83) // present, writable, 1 GiB page
        .patch_u64(pa(clean, procs[4].task + tasks), va + 0x1230);
    let linux = attach("next beyond RAM", hostile);
    let r = within("task next beyond RAM", move || linux.processes());
    match r.value {
        Err(Error::Vmi(vmi_core::Error::UnmappedPhysical { gpa, .. })) => {
            assert_eq!(gpa.0, beyond + 0x1230);
        }
        other => panic!("task next beyond RAM: {other:?}"),
    }
}

#[test]
fn comm_without_nul_is_cut_at_the_field() {
    let Some((dump, clean)) = clean() else { return };
    let init = clean.process(1).unwrap();
    let comm = clean.types().field("task_struct", "comm").unwrap();
    assert_eq!(comm.size, 16);
    let mut hostile = Overlay::new(dump);
    // 16 bytes, no NUL, and not UTF-8 in the middle; the field after it is left as is.
    let mut bytes = *b"AAAAAAA\xffBBBBBBBB";
    bytes[7] = 0xff;
    hostile.patch(pa(clean, init.task + comm.offset), &bytes);
    let linux = attach("comm without NUL", hostile);
    let r = within("comm without NUL", move || linux.process(1));
    let p = r.value.expect("a comm without NUL is still read");
    assert_eq!(p.comm, "AAAAAAA\u{fffd}BBBBBBBB");
    assert_eq!(p.name, p.comm);
    assert_eq!(p.pid, 1);
}

// ---------------------------------------------------------------------------------------
// Modules.

#[test]
fn module_list_loop() {
    let Some((dump, clean)) = clean() else { return };
    let modules = clean.modules().unwrap();
    assert!(modules.len() >= 4, "{} modules", modules.len());
    let list = off(clean, "module", "list");
    let mut hostile = Overlay::new(dump);
    hostile.patch_u64(
        pa(clean, modules[3].address + list),
        modules[1].address + list,
    );
    let linux = attach("module loop", hostile);
    let r = within("module list loop", move || linux.modules());
    assert!(
        matches!(
            r.value,
            Err(Error::Malformed {
                what: "module list",
                ..
            })
        ),
        "{:?}",
        r.value
    );
}

// ---------------------------------------------------------------------------------------
// The printk ring buffer.

/// Most any one hostile kernel-log read may allocate: the largest data ring accepted
/// (64 MiB, [`vmi_linux::dmesg::MAX_DATA_RING`]) plus the records.
const DMESG_ALLOC_LIMIT: usize = (vmi_linux::dmesg::MAX_DATA_RING as usize) + (32 << 20);

#[test]
fn printk_ring_buffer_with_absurd_counts() {
    let Some((dump, clean)) = clean() else { return };
    let clean_log = clean.dmesg().unwrap();
    assert!(clean_log.len() > 100, "{} records", clean_log.len());
    let rb = u64_at(clean, clean.symbol("prb").unwrap());
    let field = |f: &str| {
        let fl = clean.types().field("printk_ringbuffer", f).unwrap();
        (pa(clean, rb + fl.offset), fl.size)
    };
    let (count_bits, cb_size) = field("desc_ring.count_bits");
    let (size_bits, sb_size) = field("text_data_ring.size_bits");
    let (head_id, _) = field("desc_ring.head_id");
    let (tail_id, _) = field("desc_ring.tail_id");
    assert_eq!((cb_size, sb_size), (4, 4));
    let tail = dump.read_u64(vmi_core::Gpa(tail_id)).unwrap();
    let real_count_bits = dump.read_u32(vmi_core::Gpa(count_bits)).unwrap();

    // Refused counts and ids cost next to nothing, whatever size the guest claims for
    // its data ring: they are checked before anything is allocated.
    let cases: Vec<(&str, Patches)> = vec![
        (
            "count_bits 2^32-1",
            vec![(count_bits, u32::MAX.to_le_bytes().to_vec())],
        ),
        (
            "size_bits 63",
            vec![(size_bits, 63u32.to_le_bytes().to_vec())],
        ),
        (
            "head id 2^40 past the tail",
            vec![(head_id, (tail + (1 << 40)).to_le_bytes().to_vec())],
        ),
        (
            "head id 2^40 past the tail, a 64 MiB data ring",
            vec![
                (head_id, (tail + (1 << 40)).to_le_bytes().to_vec()),
                (size_bits, 26u32.to_le_bytes().to_vec()),
            ],
        ),
        (
            "head id a full ring past the tail",
            vec![(
                head_id,
                (tail + (1u64 << real_count_bits)).to_le_bytes().to_vec(),
            )],
        ),
    ];
    for (what, patches) in cases {
        let mut hostile = Overlay::new(dump);
        for (at, bytes) in &patches {
            hostile.patch(*at, bytes);
        }
        let linux = attach(what, hostile);
        let r = within(&format!("dmesg, {what}"), move || linux.dmesg());
        assert!(
            matches!(
                r.value,
                Err(Error::Malformed {
                    what: "printk ring buffer",
                    ..
                })
            ),
            "{what}: {:?}",
            r.value.map(|v| v.len())
        );
        assert!(r.peak_alloc <= 1 << 20, "{what}: {} bytes", r.peak_alloc);
    }

    // The largest counts accepted (2^20 descriptors, a 64 MiB data ring) with every id
    // in use: the ring's memory is mostly not the kernel's, so records are garbage; it
    // must end (records whose state word does not carry their id are skipped) or fail,
    // in bounded time and memory.
    let mut hostile = Overlay::new(dump);
    hostile
        .patch_u32(count_bits, 20)
        .patch_u32(size_bits, 26)
        .patch_u64(head_id, tail + (1 << 20) - 1);
    let linux = attach("largest counts", hostile);
    let r = within("dmesg, largest accepted counts", move || linux.dmesg());
    match &r.value {
        Ok(records) => assert!(records.len() < 1 << 20, "{} records", records.len()),
        Err(Error::Vmi(_) | Error::Malformed { .. }) => {}
        Err(e) => panic!("largest counts: {e}"),
    }
    assert!(
        r.peak_alloc <= DMESG_ALLOC_LIMIT,
        "largest counts: {} bytes",
        r.peak_alloc
    );
}

// ---------------------------------------------------------------------------------------
// Memory maps: the maple tree and the dentries of a mapped file.

#[test]
fn maple_tree_node_of_unknown_type_and_self_reference() {
    let Some((dump, clean)) = clean() else { return };
    let init = clean.process(1).unwrap();
    assert!(!clean.vmas(&init).unwrap().is_empty());
    let root_va = init.mm + off(clean, "mm_struct", "mm_mt") + off(clean, "maple_tree", "ma_root");
    let root = u64_at(clean, root_va);
    assert_eq!(root & 3, 2, "pid 1's maple tree root {root:#x} is a node");
    let kind = (root >> 3) & 0xf;

    // Type 7: no maple node type has that number.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u64(pa(clean, root_va), (root & !(0xf << 3)) | (7 << 3));
    let linux = attach("maple type 7", hostile);
    let r = within("maple node of unknown type", move || {
        let p = linux.process(1)?;
        linux.vmas(&p)
    });
    match r.value {
        Err(Error::Malformed { what, detail }) => {
            assert_eq!(what, "maple tree");
            assert!(detail.contains("type 7"), "{detail}");
        }
        other => panic!("unknown maple type: {other:?}"),
    }

    // An internal node whose first slot points at the node itself. pid 1 of the
    // initramfs has few mappings, so its root is usually a leaf: it is then retyped as a
    // `maple_range_64` internal node, which the kernel could have there as well.
    let (node_ty, self_ref) = match kind {
        1 | 2 => ("maple_range_64", (root & !(0xf << 3)) | (2 << 3)),
        3 => ("maple_arange_64", root),
        other => panic!("pid 1's maple root has type {other}"),
    };
    let slot0 = (root & !0xff) + off(clean, node_ty, "slot");
    let mut hostile = Overlay::new(dump);
    hostile
        .patch_u64(pa(clean, root_va), self_ref)
        .patch_u64(pa(clean, slot0), self_ref);
    let linux = attach("maple self reference", hostile);
    let r = within("maple node referencing itself", move || {
        let p = linux.process(1)?;
        linux.vmas(&p)
    });
    match r.value {
        Err(Error::Malformed { what, detail }) => {
            assert_eq!(what, "maple tree");
            assert!(detail.contains("reached twice"), "{detail}");
        }
        other => panic!("self-referencing maple node: {other:?}"),
    }
}

#[test]
fn dentry_parent_cycle() {
    let Some((dump, clean)) = clean() else { return };
    let init = clean.process(1).unwrap();
    let vmas = clean.vmas(&init).unwrap();
    let mapped = vmas
        .iter()
        .find(|v| v.name.as_deref().is_some_and(|n| n.starts_with('/')))
        .expect("pid 1 maps a file");
    let file = u64_at(
        clean,
        mapped.address + off(clean, "vm_area_struct", "vm_file"),
    );
    let dentry = u64_at(clean, file + off(clean, "file", "f_path.dentry"));
    let d_parent = off(clean, "dentry", "d_parent");
    let parent = u64_at(clean, dentry + d_parent);
    assert_ne!(parent, dentry, "{:?} is a mount root", mapped.name);
    // The file's parent directory claims the file as its parent: a two-dentry cycle.
    let mut hostile = Overlay::new(dump);
    hostile.patch_u64(pa(clean, parent + d_parent), dentry);
    let linux = attach("dentry cycle", hostile);
    let r = within("dentry d_parent cycle", move || {
        let p = linux.process(1)?;
        linux.vmas(&p)
    });
    assert!(
        matches!(
            r.value,
            Err(Error::Limit {
                what: "path depth",
                ..
            })
        ),
        "{:?}",
        r.value
    );
}

// ---------------------------------------------------------------------------------------
// Amplification: little hostile memory, much work.

/// A maple "tree" that is a DAG: six internal nodes, each of whose 16 slots points at the
/// next — 16^5 paths through 6 nodes of 256 bytes. A real maple tree gives every node one
/// parent; walking each path would read a million nodes.
#[test]
fn maple_tree_dag_of_shared_nodes() {
    let Some((dump, clean)) = clean() else { return };
    let init = clean.process(1).unwrap();
    let root_va = init.mm + off(clean, "mm_struct", "mm_mt") + off(clean, "maple_tree", "ma_root");
    // The nodes live in empty_zero_page (4 KiB of zeros nobody here reads otherwise).
    let page = clean.symbol("empty_zero_page").unwrap();
    let pivots = off(clean, "maple_range_64", "pivot");
    let slots = off(clean, "maple_range_64", "slot");
    const LEVELS: u64 = 6;
    let encode = |level: u64| {
        let kind = if level + 1 == LEVELS { 1 } else { 2 }; // leaf_64 last, range_64 above
        (page + level * 256) | kind << 3 | 2
    };
    let mut hostile = Overlay::new(dump);
    hostile.patch_u64(pa(clean, root_va), encode(0));
    for level in 0..LEVELS {
        let node = page + level * 256;
        let mut raw = [0u8; 256];
        for i in 0..15u64 {
            // Pivots equal neither the parent's pivot nor the maximum: no early end.
            let at = (pivots + i * 8) as usize;
            raw[at..at + 8].copy_from_slice(&(1000 + level).to_le_bytes());
        }
        if level + 1 < LEVELS {
            for i in 0..16u64 {
                let at = (slots + i * 8) as usize;
                raw[at..at + 8].copy_from_slice(&encode(level + 1).to_le_bytes());
            }
        }
        hostile.patch(pa(clean, node), &raw);
    }
    let linux = attach("maple DAG", hostile);
    let r = within("maple tree DAG", move || {
        let p = linux.process(1)?;
        linux.vmas(&p)
    });
    match r.value {
        Err(Error::Malformed { what, detail }) => {
            assert_eq!(what, "maple tree");
            assert!(detail.contains("reached twice"), "{detail}");
        }
        other => panic!("maple DAG: {other:?}"),
    }
    // Found at the second visit of a node, not after a million.
    assert!(r.elapsed < Duration::from_millis(500), "{:?}", r.elapsed);
}

/// 2^20 descriptors (the most accepted), all claimed in use, over the kernel's real data
/// ring: a million descriptor reads of memory that mostly is not the ring's.
#[test]
fn printk_ring_of_a_million_descriptors() {
    let Some((dump, clean)) = clean() else { return };
    let rb = u64_at(clean, clean.symbol("prb").unwrap());
    let at = |f: &str| pa(clean, rb + off(clean, "printk_ringbuffer", f));
    let tail = dump
        .read_u64(vmi_core::Gpa(at("desc_ring.tail_id")))
        .unwrap();
    let mut hostile = Overlay::new(dump);
    hostile
        .patch_u32(at("desc_ring.count_bits"), 20)
        .patch_u64(at("desc_ring.head_id"), tail + (1 << 20) - 1);
    let linux = attach("a million descriptors", hostile);
    let r = within("dmesg, a million descriptors", move || {
        linux.dmesg().map(|v| v.len())
    });
    match &r.value {
        Ok(n) => assert!(*n < 1 << 20, "{n} records"),
        Err(Error::Vmi(_) | Error::Malformed { .. }) => {}
        Err(e) => panic!("a million descriptors: {e}"),
    }
    // Records are reserved by what the data ring can hold, not by the ids claimed.
    assert!(r.peak_alloc <= 16 << 20, "{} bytes", r.peak_alloc);
}

#[test]
fn argument_area_of_absurd_size() {
    let Some((dump, clean)) = clean() else { return };
    let init = clean.process(1).unwrap();
    let arg_start = u64_at(clean, init.mm + off(clean, "mm_struct", "arg_start"));
    let arg_end_pa = pa(clean, init.mm + off(clean, "mm_struct", "arg_end"));
    let env_start_pa = pa(clean, init.mm + off(clean, "mm_struct", "env_start"));
    let env_end = u64_at(clean, init.mm + off(clean, "mm_struct", "env_end"));
    let mut hostile = Overlay::new(dump);
    hostile
        .patch_u64(arg_end_pa, arg_start + (1 << 40))
        .patch_u64(env_start_pa, env_end + 1); // ends before it starts
    let linux = attach("absurd argument area", hostile);
    let r = within(
        "cmdline of 1 TiB, environment ending before it starts",
        move || {
            let p = linux.process(1)?;
            Ok::<_, Error>((linux.cmdline(&p).err(), linux.environment(&p)?))
        },
    );
    let (cmdline, env) = r.value.expect("pid 1");
    assert!(
        matches!(
            cmdline,
            Some(Error::Limit {
                what: "argument/environment area",
                ..
            })
        ),
        "{cmdline:?}"
    );
    assert!(env.is_empty(), "{env:?}");
    assert!(r.peak_alloc < 8 << 20, "{} bytes", r.peak_alloc);
}

#[test]
fn current_task_with_a_garbage_gs_base() {
    let Some((dump, _clean)) = clean() else {
        return;
    };
    for (what, gs) in [
        ("GS base unmapped", 0xffff_ff7f_0000_0000u64),
        ("GS base non-canonical", 0x8000_0000_0000_0000u64),
    ] {
        let mut hostile = Overlay::new(dump);
        hostile.patch_registers(move |_, regs| {
            use vmi_core::registers::msr;
            if let Some(s) = regs.segments.as_mut() {
                s.gs.base = gs;
            }
            for m in [msr::GS_BASE, msr::KERNEL_GS_BASE] {
                if regs.msrs.get(m).is_some() {
                    regs.msrs.insert(m, gs);
                }
            }
        });
        let linux = attach(what, hostile);
        let r = within(what, move || linux.current_task(vmi_core::VcpuId(0)));
        assert!(
            matches!(r.value, Err(Error::Vmi(_))),
            "{what}: {:?}",
            r.value
        );
    }
}
