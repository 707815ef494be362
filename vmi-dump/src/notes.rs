//! ELF notes of a QEMU dump: `CORE`/`NT_PRSTATUS` and `QEMU` per vCPU, `VMCOREINFO`.
//!
//! Layouts (QEMU's `target/i386/arch_dump.c`, stable since QEMU 1.x):
//!
//! * x86-64 `elf_prstatus`, 336 bytes: `pr_pid` at 32, then at 112 the 27 `u64` of
//!   `user_regs_struct` (r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx,
//!   rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs).
//! * i386 `elf_prstatus` (a dump of a guest not in long mode), 144 bytes: `pr_pid` at 24,
//!   registers at 72 (ebx, ecx, edx, esi, edi, ebp, eax as `u32`; ds, es, fs, gs as
//!   `u16` + pad; orig_eax, eip; cs + pad; eflags, esp; ss + pad).
//! * `QEMUCPUState` (note name `QEMU`, type 0), version 1: `version`, `size` (`u32`),
//!   rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8–r15, rip, rflags (`u64`), ten segments
//!   of 24 bytes (`selector`, `limit`, `flags`, pad as `u32`, `base` as `u64`): cs, ds,
//!   es, fs, gs, ss, ldt, tr, gdt, idt; then `cr[5]` — 432 bytes. Newer QEMU appends
//!   `kernel_gs_base` (440 bytes), still version 1, so the `size` field says whether it
//!   is there. `flags` is the descriptor's high dword (QEMU's `SegmentCache::flags`);
//!   there is no "unusable" bit: a segment that is not present is reported unusable.

use vmi_core::registers::{DescriptorTable, Gprs, Segment, SegmentAttributes, Segments};
use vmi_core::{Error, Result};

/// `NT_PRSTATUS`.
pub(crate) const NT_PRSTATUS: u32 = 1;
/// Size of the x86-64 `elf_prstatus`.
pub(crate) const PRSTATUS_X86_64_SIZE: usize = 336;
/// Size of the i386 `elf_prstatus`.
pub(crate) const PRSTATUS_I386_SIZE: usize = 144;
/// `QEMUCPUState` version 1 without `kernel_gs_base`.
pub(crate) const QEMU_CPU_STATE_SIZE: usize = 432;
/// `QEMUCPUState` version 1 with `kernel_gs_base`.
pub(crate) const QEMU_CPU_STATE_SIZE_KGS: usize = 440;

const ORIGIN: &str = "ELF dump note";

/// One ELF note.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Note<'a> {
    /// Name without its terminating NULs.
    pub(crate) name: &'a [u8],
    pub(crate) kind: u32,
    pub(crate) desc: &'a [u8],
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(w)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn align4(n: usize) -> Option<usize> {
    n.checked_add(3).map(|n| n & !3)
}

/// Splits a note segment into notes (4-byte aligned names and descriptors, as in core
/// files). Fewer than 12 bytes left over at the end are padding.
pub(crate) fn parse_notes(data: &[u8]) -> Result<Vec<Note<'_>>> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while data.len() - off >= 12 {
        let namesz = u32_at(data, off) as usize;
        let descsz = u32_at(data, off + 4) as usize;
        let kind = u32_at(data, off + 8);
        let bad = |what: &str| {
            Error::malformed(
                ORIGIN,
                format!(
                    "note at offset {off:#x} ({what}) runs past its segment of {:#x} bytes",
                    data.len()
                ),
            )
        };
        let name_start = off + 12;
        let name_end = name_start
            .checked_add(namesz)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad("name"))?;
        let desc_start = align4(name_end).ok_or_else(|| bad("name"))?;
        let desc_end = desc_start
            .checked_add(descsz)
            .filter(|e| *e <= data.len())
            .ok_or_else(|| bad("descriptor"))?;
        let mut name = &data[name_start..name_end];
        while let [rest @ .., 0] = name {
            name = rest;
        }
        out.push(Note {
            name,
            kind,
            desc: &data[desc_start..desc_end],
        });
        // The last note's descriptor padding may be cut off by the segment's end.
        off = align4(desc_end).map_or(data.len(), |n| n.min(data.len()));
    }
    Ok(out)
}

/// Registers from a vCPU's `NT_PRSTATUS` note (what a process core file holds: GPRs,
/// selectors, FS and GS bases — no control registers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrStatus {
    /// `pr_pid`: QEMU writes the vCPU's index + 1.
    pub pid: u32,
    /// General-purpose registers, RIP, RFLAGS (upper halves zero for i386).
    pub gprs: Gprs,
    /// Selectors: cs, ds, es, fs, gs, ss.
    pub selectors: [u16; 6],
    /// FS base (x86-64 only).
    pub fs_base: Option<u64>,
    /// GS base (x86-64 only).
    pub gs_base: Option<u64>,
}

impl PrStatus {
    /// Parses an x86-64 (`long_mode`) or i386 `elf_prstatus`.
    pub(crate) fn parse(desc: &[u8], long_mode: bool) -> Result<Self> {
        let need = if long_mode {
            PRSTATUS_X86_64_SIZE
        } else {
            PRSTATUS_I386_SIZE
        };
        if desc.len() < need {
            return Err(Error::malformed(
                ORIGIN,
                format!("NT_PRSTATUS of {} bytes, expected {need}", desc.len()),
            ));
        }
        if long_mode {
            let r = |i: usize| u64_at(desc, 112 + 8 * i);
            let sel = |i: usize| r(i) as u16;
            Ok(Self {
                pid: u32_at(desc, 32),
                gprs: Gprs {
                    r15: r(0),
                    r14: r(1),
                    r13: r(2),
                    r12: r(3),
                    rbp: r(4),
                    rbx: r(5),
                    r11: r(6),
                    r10: r(7),
                    r9: r(8),
                    r8: r(9),
                    rax: r(10),
                    rcx: r(11),
                    rdx: r(12),
                    rsi: r(13),
                    rdi: r(14),
                    rip: r(16),
                    rflags: r(18),
                    rsp: r(19),
                },
                // cs, ds, es, fs, gs, ss
                selectors: [sel(17), sel(23), sel(24), sel(25), sel(26), sel(20)],
                fs_base: Some(r(21)),
                gs_base: Some(r(22)),
            })
        } else {
            let r = |off: usize| u64::from(u32_at(desc, 72 + off));
            let sel = |off: usize| u16_at(desc, 72 + off);
            Ok(Self {
                pid: u32_at(desc, 24),
                gprs: Gprs {
                    rbx: r(0),
                    rcx: r(4),
                    rdx: r(8),
                    rsi: r(12),
                    rdi: r(16),
                    rbp: r(20),
                    rax: r(24),
                    rip: r(48),
                    rflags: r(56),
                    rsp: r(60),
                    ..Gprs::default()
                },
                selectors: [sel(52), sel(28), sel(32), sel(36), sel(40), sel(64)],
                fs_base: None,
                gs_base: None,
            })
        }
    }
}

/// A vCPU's state from QEMU's own `QEMU` note (`QEMUCPUState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QemuCpuState {
    /// The structure's version (1).
    pub version: u32,
    /// The structure's size as QEMU wrote it (432, or 440 with `kernel_gs_base`).
    pub size: u32,
    /// General-purpose registers, RIP, RFLAGS.
    pub gprs: Gprs,
    /// CS, DS, ES, FS, GS, SS, LDTR, TR with their hidden parts.
    pub segments: Segments,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// CR0–CR4 (`cr[1]` is reserved and 0).
    pub cr: [u64; 5],
    /// `IA32_KERNEL_GS_BASE`, in QEMU versions that save it.
    pub kernel_gs_base: Option<u64>,
}

impl QemuCpuState {
    /// Parses a `QEMUCPUState` descriptor.
    pub(crate) fn parse(desc: &[u8]) -> Result<Self> {
        if desc.len() < 8 {
            return Err(Error::malformed(
                ORIGIN,
                "QEMU note shorter than its header",
            ));
        }
        let version = u32_at(desc, 0);
        let size = u32_at(desc, 4);
        if version != 1 {
            return Err(Error::unsupported(
                "QEMU CPU state note",
                format!("QEMUCPUState version {version} (this reader knows version 1)"),
            ));
        }
        let len = size as usize;
        if len < QEMU_CPU_STATE_SIZE || len > desc.len() {
            return Err(Error::malformed(
                ORIGIN,
                format!(
                    "QEMUCPUState says it has {size} bytes (at least {QEMU_CPU_STATE_SIZE}) in a note of {}",
                    desc.len()
                ),
            ));
        }
        let q = |i: usize| u64_at(desc, 8 + 8 * i);
        let gprs = Gprs {
            rax: q(0),
            rbx: q(1),
            rcx: q(2),
            rdx: q(3),
            rsi: q(4),
            rdi: q(5),
            rsp: q(6),
            rbp: q(7),
            r8: q(8),
            r9: q(9),
            r10: q(10),
            r11: q(11),
            r12: q(12),
            r13: q(13),
            r14: q(14),
            r15: q(15),
            rip: q(16),
            rflags: q(17),
        };
        // Segment `i` (cs, ds, es, fs, gs, ss, ldt, tr, gdt, idt) at 152 + 24 i.
        let raw = |i: usize| {
            let o = 152 + 24 * i;
            (
                u32_at(desc, o),
                u32_at(desc, o + 4),
                u32_at(desc, o + 8),
                u64_at(desc, o + 16),
            )
        };
        let seg = |i: usize| -> Result<Segment> {
            let (selector, limit, flags, base) = raw(i);
            let mut attributes = SegmentAttributes::from_descriptor_flags(flags);
            // QEMU keeps no "unusable" bit; as QEMU does when it hands segments to KVM
            // (and vmi-legacy when it parses `info registers`), a segment whose
            // descriptor is not present is unusable.
            attributes.unusable = !attributes.present;
            Ok(Segment {
                selector: u16::try_from(selector).map_err(|_| {
                    Error::malformed(
                        ORIGIN,
                        format!("segment selector {selector:#x} wider than 16 bits"),
                    )
                })?,
                base,
                limit,
                attributes,
            })
        };
        let table = |i: usize| -> Result<DescriptorTable> {
            let (_, limit, _, base) = raw(i);
            Ok(DescriptorTable {
                base,
                limit: u16::try_from(limit).map_err(|_| {
                    Error::malformed(
                        ORIGIN,
                        format!("descriptor-table limit {limit:#x} wider than 16 bits"),
                    )
                })?,
            })
        };
        let segments = Segments {
            cs: seg(0)?,
            ds: seg(1)?,
            es: seg(2)?,
            fs: seg(3)?,
            gs: seg(4)?,
            ss: seg(5)?,
            ldtr: seg(6)?,
            tr: seg(7)?,
        };
        let cr = [0, 1, 2, 3, 4].map(|i| u64_at(desc, 392 + 8 * i));
        Ok(Self {
            version,
            size,
            gprs,
            segments,
            gdtr: table(8)?,
            idtr: table(9)?,
            cr,
            kernel_gs_base: (len >= QEMU_CPU_STATE_SIZE_KGS).then(|| u64_at(desc, 432)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(name.len() as u32).to_le_bytes());
        v.extend_from_slice(&(desc.len() as u32).to_le_bytes());
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(name);
        v.resize(align4(v.len()).unwrap(), 0);
        v.extend_from_slice(desc);
        v.resize(align4(v.len()).unwrap(), 0);
        v
    }

    #[test]
    fn notes_split_and_truncations_are_typed_errors() {
        let mut data = note(b"CORE\0", 1, &[1, 2, 3]);
        data.extend(note(b"VMCOREINFO\0", 0, b"OSRELEASE=6.1\n"));
        let notes = parse_notes(&data).unwrap();
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].name, b"CORE");
        assert_eq!(notes[0].desc, [1, 2, 3]);
        assert_eq!(notes[1].name, b"VMCOREINFO");
        assert_eq!(notes[1].desc, b"OSRELEASE=6.1\n");
        for cut in 0..data.len() {
            // Never a panic; whole notes up to the cut, or an error.
            if let Ok(n) = parse_notes(&data[..cut]) {
                assert!(n.len() <= 2);
            }
        }
        let mut huge = data.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_notes(&huge), Err(Error::Malformed { .. })));
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(parse_notes(&huge), Err(Error::Malformed { .. })));
    }

    #[test]
    fn qemu_cpu_state_size_and_version_are_checked() {
        let mut d = vec![0u8; QEMU_CPU_STATE_SIZE_KGS];
        d[0] = 1;
        d[4..8].copy_from_slice(&(QEMU_CPU_STATE_SIZE_KGS as u32).to_le_bytes());
        d[432..440].copy_from_slice(&0x1234u64.to_le_bytes());
        assert_eq!(
            QemuCpuState::parse(&d).unwrap().kernel_gs_base,
            Some(0x1234)
        );
        d[4..8].copy_from_slice(&(QEMU_CPU_STATE_SIZE as u32).to_le_bytes());
        assert_eq!(QemuCpuState::parse(&d).unwrap().kernel_gs_base, None);
        d[4..8].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            QemuCpuState::parse(&d),
            Err(Error::Malformed { .. })
        ));
        d[0] = 2;
        assert!(matches!(
            QemuCpuState::parse(&d),
            Err(Error::Unsupported { .. })
        ));
        assert!(QemuCpuState::parse(&d[..7]).is_err());
    }
}
