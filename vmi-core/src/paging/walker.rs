//! The page walk itself.
//!
//! One bounded loop over the levels from the top down to 2 (each of which may end in a
//! large page), then the page table at level 1, which always ends the walk. At most
//! five entries are read; nothing is allocated.

use super::{fault, PageSize, PagingEntry, PagingMode, Translation, Translator};
use crate::addr::{Gpa, Gva};
use crate::error::{Error, PageFaultReason, Result};
use crate::memory::PhysicalMemory;

/// Present.
const P: u64 = 1 << 0;
/// Read/write.
const RW: u64 = 1 << 1;
/// User/supervisor.
const US: u64 = 1 << 2;
/// Page size (large page) in a page-directory entry or PDPTE.
const PS: u64 = 1 << 7;
/// Execute disable.
const XD: u64 = 1 << 63;
/// Bits 31:12 of a 32-bit entry: the next table or the 4 KiB frame.
const LEGACY_FRAME: u64 = 0xffff_f000;
/// Bits 31:22 of a 32-bit PDE mapping a 4 MiB page.
const LEGACY_4M_FRAME: u64 = 0xffc0_0000;
/// Bit 21 of a 32-bit PDE mapping a 4 MiB page, always reserved.
const LEGACY_4M_BIT21: u64 = 1 << 21;

/// Bits `lo..=hi` set; empty when `lo > hi` or `hi > 63`.
pub(super) const fn bit_range(lo: u32, hi: u32) -> u64 {
    if lo > hi || hi > 63 {
        return 0;
    }
    let width = hi - lo + 1;
    let ones = if width >= 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    ones << lo
}

/// Bits `0..max_phys_bits`: the bits a physical address may have.
pub(super) const fn phys_mask(max_phys_bits: u32) -> u64 {
    if max_phys_bits == 0 {
        0
    } else {
        bit_range(0, max_phys_bits - 1)
    }
}

/// The permissions gathered on the way down, and the entries read.
struct Walk {
    writable: bool,
    user: bool,
    xd: bool,
    entries: [PagingEntry; 5],
    count: u8,
}

/// Why one level of the walk stopped.
enum Stop {
    /// The guest would take a page fault: the entry read (0 if none) and why.
    Fault(u64, PageFaultReason),
    /// The memory failed for another reason than "no guest memory there" (a dead
    /// connection, a timeout, an I/O error): passed on as is, since the guest would not
    /// fault and a retry may succeed.
    Memory(Error),
}

impl Stop {
    /// The error of the walk for `gva` that stopped at `level`.
    fn into_error(self, gva: Gva, root: Gpa, level: u8) -> Error {
        match self {
            Self::Fault(entry, reason) => fault(gva, root, level, entry, reason),
            Self::Memory(e) => e,
        }
    }
}

/// Walks the paging structures of `tr`'s mode for `gva` from the CR3 value `cr3`.
pub(super) fn walk<M: PhysicalMemory + ?Sized>(
    mem: &M,
    tr: Translator,
    cr3: Gpa,
    gva: Gva,
) -> Result<Translation> {
    let mode = tr.mode();
    let root = tr.root_base(cr3);
    let top = mode.levels();
    if !mode.is_valid_address(gva) {
        return Err(fault(gva, root, top, 0, PageFaultReason::NonCanonical));
    }
    if let PagingMode::Disabled = mode {
        return Ok(Translation::identity(gva));
    }

    let mut w = Walk {
        writable: true,
        user: true,
        xd: false,
        entries: [PagingEntry::default(); 5],
        count: 0,
    };
    let mut table = root.0;
    for level in (2..=top).rev() {
        let entry = step(mem, tr, &mut w, level, table, gva)
            .map_err(|stop| stop.into_error(gva, root, level))?;
        if is_large(mode, level, entry) {
            return Ok(leaf(tr, &w, level, entry, gva));
        }
        table = next_table(tr, entry);
    }
    let entry =
        step(mem, tr, &mut w, 1, table, gva).map_err(|stop| stop.into_error(gva, root, 1))?;
    Ok(leaf(tr, &w, 1, entry, gva))
}

/// Reads and checks the entry for `gva` at `level` of the table at `table`, folding its
/// permissions into `w`.
///
/// Only [`Error::UnmappedPhysical`] from `mem` is a fault (the table lies where the guest
/// has no memory, as the CPU would find); every other memory error is passed on.
fn step<M: PhysicalMemory + ?Sized>(
    mem: &M,
    tr: Translator,
    w: &mut Walk,
    level: u8,
    table: u64,
    gva: Gva,
) -> core::result::Result<u64, Stop> {
    let mode = tr.mode();
    let legacy = matches!(mode, PagingMode::Legacy32 { .. });
    let entry_bytes: u64 = if legacy { 4 } else { 8 };
    let addr = table
        .checked_add(index(mode, level, gva) * entry_bytes)
        .ok_or(Stop::Fault(0, PageFaultReason::UnreadableTable))?;
    let read = if legacy {
        mem.read_u32(Gpa(addr)).map(u64::from)
    } else {
        mem.read_u64(Gpa(addr))
    };
    let entry = read.map_err(|e| match e {
        Error::UnmappedPhysical { .. } => Stop::Fault(0, PageFaultReason::UnreadableTable),
        e => Stop::Memory(e),
    })?;
    if entry & P == 0 {
        return Err(Stop::Fault(entry, PageFaultReason::NotPresent));
    }
    if entry & reserved_bits(tr, level, is_large(mode, level, entry)) != 0 {
        return Err(Stop::Fault(entry, PageFaultReason::ReservedBit));
    }
    // PAE PDPTEs have no permission bits: bits 2:1 (R/W, U/S elsewhere) are ignored.
    if !(matches!(mode, PagingMode::Pae { .. }) && level == 3) {
        w.writable &= entry & RW != 0;
        w.user &= entry & US != 0;
        w.xd |= entry & XD != 0;
    }
    if let Some(slot) = w.entries.get_mut(usize::from(w.count)) {
        *slot = PagingEntry {
            level,
            gpa: Gpa(addr),
            value: entry,
        };
        w.count += 1;
    }
    Ok(entry)
}

/// Index of the entry for `gva` in the table at `level`.
const fn index(mode: PagingMode, level: u8, gva: Gva) -> u64 {
    let below = (level as u32).saturating_sub(1);
    match mode {
        PagingMode::Legacy32 { .. } => (gva.0 >> (12 + 10 * below)) & 0x3ff,
        PagingMode::Pae { .. } if level == 3 => (gva.0 >> 30) & 0x3,
        _ => (gva.0 >> (12 + 9 * below)) & 0x1ff,
    }
}

/// Whether a present `entry` at `level` maps a large page.
const fn is_large(mode: PagingMode, level: u8, entry: u64) -> bool {
    if entry & PS == 0 {
        return false;
    }
    match mode {
        PagingMode::Legacy32 { pse } => pse && level == 2,
        PagingMode::Pae { .. } => level == 2,
        PagingMode::Ia32e { .. } | PagingMode::Ia32e5 { .. } => level == 2 || level == 3,
        PagingMode::Disabled => false,
    }
}

/// The bits that must be zero in a present entry at `level` (`large`: it maps a page).
const fn reserved_bits(tr: Translator, level: u8, large: bool) -> u64 {
    let m = tr.max_phys_bits();
    let xd = if tr.mode().nxe() { 0 } else { XD };
    match tr.mode() {
        PagingMode::Disabled => 0,
        PagingMode::Legacy32 { .. } => {
            if large {
                // PSE-36 carries physical bits 39:32 at most; the PDE bits above
                // MAXPHYADDR's share of 20:13 and bit 21 are reserved.
                let m = if m > 40 { 40 } else { m };
                LEGACY_4M_BIT21 | bit_range(m.saturating_sub(19), 20)
            } else {
                0
            }
        }
        PagingMode::Pae { .. } => {
            if level == 3 {
                // Only the bits every implementation rejects: the SDM also reserves
                // 2:1 and 8:5, but QEMU's TCG accepts them (and sets the accessed bit,
                // 5, itself), and a CPU that rejects them does so at MOV CR3, so no
                // running guest has them set in the PDPTEs it uses. See the module
                // documentation of `paging`.
                bit_range(m, 63)
            } else {
                let page = if large { bit_range(13, 20) } else { 0 };
                bit_range(m, 62) | xd | page
            }
        }
        PagingMode::Ia32e { .. } | PagingMode::Ia32e5 { .. } => {
            let shape = match (level, large) {
                (4 | 5, _) => PS,
                (3, true) => bit_range(13, 29),
                (2, true) => bit_range(13, 20),
                _ => 0,
            };
            bit_range(m, 51) | xd | shape
        }
    }
}

/// Physical address of the table a non-leaf `entry` points to.
const fn next_table(tr: Translator, entry: u64) -> u64 {
    match tr.mode() {
        PagingMode::Legacy32 { .. } => entry & LEGACY_FRAME,
        _ => entry & phys_mask(tr.max_phys_bits()) & !0xfff,
    }
}

/// The translation a leaf `entry` at `level` gives `gva`.
const fn leaf(tr: Translator, w: &Walk, level: u8, entry: u64, gva: Gva) -> Translation {
    let mode = tr.mode();
    let page_size = match (mode, level) {
        (_, 1) => PageSize::Size4K,
        (PagingMode::Legacy32 { .. }, _) => PageSize::Size4M,
        (_, 2) => PageSize::Size2M,
        _ => PageSize::Size1G,
    };
    let offset = gva.0 & page_size.offset_mask();
    let base = match (mode, page_size) {
        (PagingMode::Legacy32 { .. }, PageSize::Size4K) => entry & LEGACY_FRAME,
        (PagingMode::Legacy32 { .. }, _) => {
            // PSE-36: PDE bits (M'-20):13 are physical bits (M'-1):32, M' = min(M, 40).
            let m = tr.max_phys_bits();
            let m = if m > 40 { 40 } else { m };
            let high = (entry >> 13) & phys_mask(m.saturating_sub(32));
            (entry & LEGACY_4M_FRAME) | (high << 32)
        }
        _ => entry & phys_mask(tr.max_phys_bits()) & !page_size.offset_mask(),
    };
    Translation {
        gva,
        gpa: Gpa(base | offset),
        page_size,
        writable: w.writable,
        user: w.user,
        executable: !(w.xd && mode.nxe()),
        level,
        entries: w.entries,
        entry_count: w.count,
    }
}
