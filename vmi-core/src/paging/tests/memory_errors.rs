//! Memory errors during a walk: only "not backed by guest memory" is a page fault;
//! disconnects, timeouts, I/O and backend errors come back unchanged, from the plain walk,
//! from `read_virtual` and from the cache (which must not remember them).

use std::cell::Cell;
use std::time::Duration;

use super::*;
use crate::memory::SparseMemory;

const PWU: u64 = 0b111;
const GVA: u64 = 0x0000_7f12_3456_7abc;

/// Guest memory whose reads of one frame fail with the error `make` builds, for as long
/// as `broken` is set — a backend whose connection died while the walk was reading that
/// paging structure.
struct FailingMemory<F> {
    inner: SparseMemory,
    frame: Gfn,
    make: F,
    broken: Cell<bool>,
}

impl<F: Fn(Gpa) -> Error> PhysicalMemory for FailingMemory<F> {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        if self.broken.get() && gpa.gfn() == self.frame {
            return Err((self.make)(gpa));
        }
        self.inner.read_physical(gpa, buf)
    }
}

/// Builds the error a failing read of `gpa` returns.
type MakeError = fn(Gpa) -> Error;

/// The error kinds a backend reports that are not "no memory there", by name.
fn non_fault_errors() -> Vec<(&'static str, MakeError)> {
    vec![
        ("disconnected", |_| Error::Disconnected {
            reason: "peer closed the socket".into(),
        }),
        ("timeout", |_| Error::Timeout {
            what: "a memory reply".into(),
            after: Duration::from_secs(1),
        }),
        ("io", |_| {
            Error::io(
                "reading guest memory",
                std::io::Error::from(std::io::ErrorKind::BrokenPipe),
            )
        }),
        ("backend", |gpa| Error::Backend {
            command: "KVMI_VM_READ_PHYSICAL".into(),
            vcpu: None,
            address: Some(gpa.0),
            source: "EFAULT".into(),
        }),
        ("malformed", |_| {
            Error::malformed("memory server", "short reply")
        }),
    ]
}

/// A 4-level chain for `GVA`: PML4 at 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000, data
/// page 0x9000.
fn ia32e_tables() -> SparseMemory {
    let mut mem = SparseMemory::new();
    let idx = |level: u32| (GVA >> (12 + 9 * (level - 1))) & 0x1ff;
    mem.write_u64(Gpa(0x1000 + idx(4) * 8), 0x2000 | PWU);
    mem.write_u64(Gpa(0x2000 + idx(3) * 8), 0x3000 | PWU);
    mem.write_u64(Gpa(0x3000 + idx(2) * 8), 0x4000 | PWU);
    mem.write_u64(Gpa(0x4000 + idx(1) * 8), 0x9000 | PWU);
    mem.write(Gpa(0x9abc), b"payload");
    mem
}

/// Which error variant `e` is, for comparison (errors are not `PartialEq`).
fn kind(e: &Error) -> &'static str {
    match e {
        Error::Disconnected { .. } => "disconnected",
        Error::Timeout { .. } => "timeout",
        Error::Io { .. } => "io",
        Error::Backend { .. } => "backend",
        Error::Malformed { .. } => "malformed",
        Error::PageFault { .. } => "page fault",
        Error::UnmappedPhysical { .. } => "unmapped",
        _ => "other",
    }
}

const LONG: PagingMode = PagingMode::Ia32e { nxe: true };

#[test]
fn non_fault_errors_pass_through_the_walk_at_every_level() {
    for (name, make) in non_fault_errors() {
        for (level, frame) in [(4u8, 1u64), (3, 2), (2, 3), (1, 4)] {
            let mem = FailingMemory {
                inner: ia32e_tables(),
                frame: Gfn(frame),
                make,
                broken: Cell::new(true),
            };
            let e = translate(&mem, LONG, Gpa(0x1000), Gva(GVA)).unwrap_err();
            assert_eq!(kind(&e), name, "level {level}: {e}");
            // Healthy again: the same walk succeeds, so nothing was wrong with the tables.
            mem.broken.set(false);
            assert_eq!(
                translate(&mem, LONG, Gpa(0x1000), Gva(GVA)).unwrap().gpa,
                Gpa(0x9abc)
            );
        }
    }
}

#[test]
fn unbacked_tables_still_fault_at_their_level() {
    for (level, frame) in [(4u8, 1u64), (3, 2), (2, 3), (1, 4)] {
        let mem = FailingMemory {
            inner: ia32e_tables(),
            frame: Gfn(frame),
            make: |gpa| Error::UnmappedPhysical { gpa, len: 8 },
            broken: Cell::new(true),
        };
        match translate(&mem, LONG, Gpa(0x1000), Gva(GVA)) {
            Err(Error::PageFault {
                level: l,
                reason: PageFaultReason::UnreadableTable,
                entry: 0,
                ..
            }) => assert_eq!(l, level),
            other => panic!("level {level}: expected an unreadable-table fault, got {other:?}"),
        }
    }
}

#[test]
fn non_fault_errors_pass_through_in_the_32_bit_modes() {
    // PAE: PDPT at 0x1020 (frame 1), PD 0x2000, PT 0x3000. 32-bit: PD 0x1000, PT 0x2000.
    let gva = 0xc012_3456u64;
    let mut pae = SparseMemory::new();
    pae.write_u64(Gpa(0x1020 + 3 * 8), 0x2000 | 1);
    pae.write_u64(Gpa(0x2000 + ((gva >> 21) & 0x1ff) * 8), 0x3000 | PWU);
    pae.write_u64(Gpa(0x3000 + ((gva >> 12) & 0x1ff) * 8), 0x5000 | PWU);
    let mut legacy = SparseMemory::new();
    legacy.write(
        Gpa(0x1000 + (gva >> 22) * 4),
        &(0x2000u32 | 0b111).to_le_bytes(),
    );
    legacy.write(
        Gpa(0x2000 + ((gva >> 12) & 0x3ff) * 4),
        &(0x5000u32 | 0b111).to_le_bytes(),
    );
    let cases = [
        (
            PagingMode::Pae { nxe: true },
            pae,
            0x1020,
            [1u64, 2, 3].as_slice(),
        ),
        (PagingMode::Legacy32 { pse: true }, legacy, 0x1000, &[1, 2]),
    ];
    for (mode, tables, cr3, frames) in cases {
        for &frame in frames {
            for (name, make) in non_fault_errors() {
                let mem = FailingMemory {
                    inner: tables.clone(),
                    frame: Gfn(frame),
                    make,
                    broken: Cell::new(true),
                };
                let e = translate(&mem, mode, Gpa(cr3), Gva(gva)).unwrap_err();
                assert_eq!(kind(&e), name, "{mode:?} frame {frame}: {e}");
                mem.broken.set(false);
                assert!(translate(&mem, mode, Gpa(cr3), Gva(gva)).is_ok());
            }
        }
    }
}

#[test]
fn the_cache_passes_errors_on_and_does_not_remember_them() {
    for (name, make) in non_fault_errors() {
        let mem = FailingMemory {
            inner: ia32e_tables(),
            frame: Gfn(3),
            make,
            broken: Cell::new(true),
        };
        let mut cache = TranslationCache::new();
        let e = cache
            .translate(&mem, LONG, Gpa(0x1000), Gva(GVA))
            .unwrap_err();
        assert_eq!(kind(&e), name, "{e}");
        assert!(cache.is_empty());
        mem.broken.set(false);
        let t = cache.translate(&mem, LONG, Gpa(0x1000), Gva(GVA)).unwrap();
        assert_eq!(t.gpa, Gpa(0x9abc));
        assert_eq!((cache.len(), cache.misses(), cache.hits()), (1, 2, 0));
    }
}

#[test]
fn read_virtual_passes_table_and_data_errors_on() {
    for (name, make) in non_fault_errors() {
        // A paging structure (the PT, frame 4) and the data page (frame 9).
        for frame in [4u64, 9] {
            let mem = FailingMemory {
                inner: ia32e_tables(),
                frame: Gfn(frame),
                make,
                broken: Cell::new(true),
            };
            let mut buf = [0u8; 7];
            let e = read_virtual(&mem, LONG, Gpa(0x1000), Gva(GVA), &mut buf).unwrap_err();
            assert_eq!(kind(&e), name, "frame {frame}: {e}");
            let e = TranslationCache::new()
                .read_virtual(&mem, LONG, Gpa(0x1000), Gva(GVA), &mut buf)
                .unwrap_err();
            assert_eq!(kind(&e), name, "cached, frame {frame}: {e}");
            mem.broken.set(false);
            read_virtual(&mem, LONG, Gpa(0x1000), Gva(GVA), &mut buf).unwrap();
            assert_eq!(&buf, b"payload");
        }
    }
}
