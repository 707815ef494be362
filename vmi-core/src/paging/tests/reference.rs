//! A deliberately naive walker written straight from the SDM tables: recursive, indices
//! and fields by division, reserved bits listed bit by bit, allocation allowed.

use super::{PageFaultReason, PagingMode, SparseMemory};
use crate::addr::Gpa;
use crate::memory::PhysicalMemory;

/// A successful walk.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Walked {
    pub(super) gpa: u64,
    pub(super) size: u64,
    pub(super) level: u8,
    pub(super) writable: bool,
    pub(super) user: bool,
    pub(super) executable: bool,
    pub(super) entries: Vec<u64>,
}

/// (level, reason, entry) of a failed walk.
pub(super) type Fault = (u8, PageFaultReason, u64);

fn two_to(n: u32) -> u128 {
    2u128.pow(n)
}

/// Bit `i` of `v`.
fn bit(v: u64, i: u32) -> bool {
    (u128::from(v) / two_to(i)) % 2 == 1
}

/// Whether any of bits `lo..=hi` of `v` is set.
fn any_bit(v: u64, lo: u32, hi: u32) -> bool {
    (lo..=hi).any(|i| bit(v, i))
}

/// Bits `lo..=hi` of `v`, shifted down to bit 0 (0 when the range is empty).
fn field(v: u64, lo: u32, hi: u32) -> u64 {
    if hi < lo {
        return 0;
    }
    ((u128::from(v) / two_to(lo)) % two_to(hi - lo + 1)) as u64
}

fn read(mem: &SparseMemory, addr: u64, bytes: usize) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read_physical(Gpa(addr), &mut b[..bytes]).ok()?;
    Some(u64::from_le_bytes(b))
}

struct Acc {
    writable: bool,
    user: bool,
    xd: bool,
    entries: Vec<u64>,
}

pub(super) fn translate(
    mem: &SparseMemory,
    mode: PagingMode,
    m: u32,
    cr3: u64,
    gva: u64,
) -> Result<Walked, Fault> {
    let four_gib = 4 * 1024 * 1024 * 1024u64;
    let acc = Acc {
        writable: true,
        user: true,
        xd: false,
        entries: Vec::new(),
    };
    match mode {
        PagingMode::Disabled if gva < four_gib => Ok(Walked {
            gpa: gva,
            size: 4096,
            level: 0,
            writable: true,
            user: true,
            executable: true,
            entries: Vec::new(),
        }),
        PagingMode::Disabled => Err((0, PageFaultReason::NonCanonical, 0)),
        PagingMode::Legacy32 { .. } if gva >= four_gib => {
            Err((2, PageFaultReason::NonCanonical, 0))
        }
        PagingMode::Pae { .. } if gva >= four_gib => Err((3, PageFaultReason::NonCanonical, 0)),
        PagingMode::Legacy32 { pse } => walk32(mem, pse, m, 2, field(cr3, 12, 31) * 4096, gva, acc),
        PagingMode::Pae { nxe } => walk64(mem, true, nxe, m, 3, field(cr3, 5, 31) * 32, gva, acc),
        PagingMode::Ia32e { nxe } | PagingMode::Ia32e5 { nxe } => {
            let (levels, width) = if matches!(mode, PagingMode::Ia32e { .. }) {
                (4, 48)
            } else {
                (5, 57)
            };
            // Canonical: bits 63..=width-1 all equal.
            let high = field(gva, width - 1, 63);
            if high != 0 && u128::from(high) != two_to(65 - width) - 1 {
                return Err((levels, PageFaultReason::NonCanonical, 0));
            }
            walk64(
                mem,
                false,
                nxe,
                m,
                levels,
                field(cr3, 12, m - 1) * 4096,
                gva,
                acc,
            )
        }
    }
}

/// One level of 32-bit paging, then the next.
fn walk32(
    mem: &SparseMemory,
    pse: bool,
    m: u32,
    level: u8,
    table: u64,
    gva: u64,
    mut acc: Acc,
) -> Result<Walked, Fault> {
    let span = 4096 * 1024u64.pow(u32::from(level) - 1);
    let index = (gva / span) % 1024;
    let e = read(mem, table + index * 4, 4).ok_or((level, PageFaultReason::UnreadableTable, 0))?;
    acc.entries.push(e);
    if !bit(e, 0) {
        return Err((level, PageFaultReason::NotPresent, e));
    }
    let large = level == 2 && pse && bit(e, 7);
    let m40 = m.min(40);
    if large && (bit(e, 21) || any_bit(e, m40 - 19, 20)) {
        return Err((level, PageFaultReason::ReservedBit, e));
    }
    acc.writable = acc.writable && bit(e, 1);
    acc.user = acc.user && bit(e, 2);
    if large {
        let gpa = field(e, 22, 31) * two_to(22) as u64
            + field(e, 13, m40 - 20) * two_to(32) as u64
            + gva % two_to(22) as u64;
        return Ok(done(acc, gpa, 4 << 20, level, true));
    }
    if level == 1 {
        return Ok(done(
            acc,
            field(e, 12, 31) * 4096 + gva % 4096,
            4096,
            1,
            true,
        ));
    }
    walk32(mem, pse, m, level - 1, field(e, 12, 31) * 4096, gva, acc)
}

/// One level of PAE or IA-32e paging, then the next.
#[allow(clippy::too_many_arguments)]
fn walk64(
    mem: &SparseMemory,
    pae: bool,
    nxe: bool,
    m: u32,
    level: u8,
    table: u64,
    gva: u64,
    mut acc: Acc,
) -> Result<Walked, Fault> {
    let pdpt = pae && level == 3;
    let span = 4096 * 512u64.pow(u32::from(level) - 1);
    let index = if pdpt {
        (gva / span) % 4
    } else {
        (gva / span) % 512
    };
    let e = read(mem, table + index * 8, 8).ok_or((level, PageFaultReason::UnreadableTable, 0))?;
    acc.entries.push(e);
    if !bit(e, 0) {
        return Err((level, PageFaultReason::NotPresent, e));
    }
    let large = bit(e, 7) && (level == 2 || (level == 3 && !pae));
    let reserved = if pdpt {
        any_bit(e, m, 63)
    } else {
        (pae && any_bit(e, m, 62))
            || (!pae && any_bit(e, m, 51))
            || (!nxe && bit(e, 63))
            || (!pae && level >= 4 && bit(e, 7))
            || (large && level == 3 && any_bit(e, 13, 29))
            || (large && level == 2 && any_bit(e, 13, 20))
    };
    if reserved {
        return Err((level, PageFaultReason::ReservedBit, e));
    }
    if !pdpt {
        acc.writable = acc.writable && bit(e, 1);
        acc.user = acc.user && bit(e, 2);
        acc.xd = acc.xd || bit(e, 63);
    }
    if level == 1 || large {
        let low_bits = match level {
            1 => 12,
            2 => 21,
            _ => 30,
        };
        let gpa = field(e, low_bits, m - 1) * span + gva % span;
        let executable = !(nxe && acc.xd);
        return Ok(done(acc, gpa, span, level, executable));
    }
    walk64(
        mem,
        pae,
        nxe,
        m,
        level - 1,
        field(e, 12, m - 1) * 4096,
        gva,
        acc,
    )
}

fn done(acc: Acc, gpa: u64, size: u64, level: u8, executable: bool) -> Walked {
    Walked {
        gpa,
        size,
        level,
        writable: acc.writable,
        user: acc.user,
        executable,
        entries: acc.entries,
    }
}
