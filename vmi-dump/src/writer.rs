//! Writing a dump in QEMU's ELF layout from any memory and registers (a live session's,
//! or a test's), so what reads QEMU's dumps (this crate, crash, Volatility 3) reads it.

use std::io::Write;

use vmi_core::registers::{msr, Segment};
use vmi_core::{
    Error, Gpa, PhysicalMemory, PhysicalRange, RegisterGroups, RegisterSnapshot, Result,
};

use crate::elf::EM_X86_64;
use crate::notes::{
    NT_PRSTATUS, PRSTATUS_X86_64_SIZE, QEMU_CPU_STATE_SIZE, QEMU_CPU_STATE_SIZE_KGS,
};

const EHDR_LEN: u64 = 64;
const PHDR_LEN: u64 = 56;
/// Bytes copied per read of guest memory.
const CHUNK: usize = 1 << 20;

fn note(out: &mut Vec<u8>, name: &[u8], kind: u32, desc: &[u8]) {
    out.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&kind.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

fn prstatus(index: u32, r: &RegisterSnapshot) -> Vec<u8> {
    let g = r.gprs.unwrap_or_default();
    let s = r.segments.unwrap_or_default();
    let mut d = vec![0u8; PRSTATUS_X86_64_SIZE];
    d[32..36].copy_from_slice(&(index + 1).to_le_bytes());
    let regs = [
        g.r15,
        g.r14,
        g.r13,
        g.r12,
        g.rbp,
        g.rbx,
        g.r11,
        g.r10,
        g.r9,
        g.r8,
        g.rax,
        g.rcx,
        g.rdx,
        g.rsi,
        g.rdi,
        0, // orig_rax
        g.rip,
        u64::from(s.cs.selector),
        g.rflags,
        g.rsp,
        u64::from(s.ss.selector),
        s.fs.base,
        s.gs.base,
        u64::from(s.ds.selector),
        u64::from(s.es.selector),
        u64::from(s.fs.selector),
        u64::from(s.gs.selector),
    ];
    for (i, v) in regs.iter().enumerate() {
        d[112 + 8 * i..120 + 8 * i].copy_from_slice(&v.to_le_bytes());
    }
    d
}

fn qemu_cpu_state(r: &RegisterSnapshot) -> Vec<u8> {
    let g = r.gprs.unwrap_or_default();
    let s = r.segments.unwrap_or_default();
    let c = r.control.unwrap_or_default();
    let kgs = r.msrs.get(msr::KERNEL_GS_BASE);
    let size = if kgs.is_some() {
        QEMU_CPU_STATE_SIZE_KGS
    } else {
        QEMU_CPU_STATE_SIZE
    };
    let mut d = Vec::with_capacity(size);
    d.extend_from_slice(&1u32.to_le_bytes());
    d.extend_from_slice(&(size as u32).to_le_bytes());
    for v in [
        g.rax, g.rbx, g.rcx, g.rdx, g.rsi, g.rdi, g.rsp, g.rbp, g.r8, g.r9, g.r10, g.r11, g.r12,
        g.r13, g.r14, g.r15, g.rip, g.rflags,
    ] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    let mut seg = |selector: u32, limit: u32, flags: u32, base: u64| {
        for w in [selector, limit, flags, 0] {
            d.extend_from_slice(&w.to_le_bytes());
        }
        d.extend_from_slice(&base.to_le_bytes());
    };
    let flags = |s: &Segment| (s.attributes.to_vmx_ar() & 0xf0ff) << 8;
    for x in [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.ldtr, &s.tr] {
        seg(u32::from(x.selector), x.limit, flags(x), x.base);
    }
    for t in [r.gdtr.unwrap_or_default(), r.idtr.unwrap_or_default()] {
        seg(0, u32::from(t.limit), 0, t.base);
    }
    for v in [c.cr0, 0, c.cr2, c.cr3, c.cr4] {
        d.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(k) = kgs {
        d.extend_from_slice(&k.to_le_bytes());
    }
    d
}

/// Writes an x86-64 ELF core dump laid out as QEMU's `dump-guest-memory` does
/// (`"paging": false`): one `PT_NOTE` segment with a `CORE`/`NT_PRSTATUS` note per
/// vCPU, then a `QEMU` (`QEMUCPUState`) note per vCPU, then `VMCOREINFO` if given; and
/// a `PT_LOAD` segment per range of `ranges`, its bytes read from `memory`.
///
/// Every snapshot must hold GPRs, control registers, segments and descriptor tables
/// ([`Error::InvalidArgument`] otherwise: a dump must not invent zeros); CR8 and EFER
/// are not part of QEMU's format, `KERNEL_GS_BASE` is written when the snapshot has it.
/// Fails with the first error reading `memory` or writing `out`.
pub fn write_elf_dump<M: PhysicalMemory + ?Sized>(
    out: &mut dyn Write,
    memory: &M,
    ranges: &[PhysicalRange],
    vcpus: &[RegisterSnapshot],
    vmcoreinfo: Option<&[u8]>,
) -> Result<()> {
    let needed = RegisterGroups::GPRS
        | RegisterGroups::CONTROL
        | RegisterGroups::SEGMENTS
        | RegisterGroups::DESCRIPTOR_TABLES;
    if let Some((i, _)) = vcpus
        .iter()
        .enumerate()
        .find(|(_, r)| !r.groups().contains(needed))
    {
        return Err(Error::InvalidArgument {
            what: "dump registers",
            reason: format!(
                "vCPU {i} lacks GPRs, control registers, segments or descriptor tables"
            )
            .into(),
        });
    }
    let mut notes = Vec::new();
    for (i, r) in vcpus.iter().enumerate() {
        note(&mut notes, b"CORE", NT_PRSTATUS, &prstatus(i as u32, r));
    }
    for r in vcpus {
        note(&mut notes, b"QEMU", 0, &qemu_cpu_state(r));
    }
    if let Some(v) = vmcoreinfo {
        note(&mut notes, b"VMCOREINFO", 0, v);
    }
    let phnum = ranges.len() as u64 + 1;
    let phnum16 = u16::try_from(phnum)
        .ok()
        .filter(|n| *n < 0xffff)
        .ok_or_else(|| Error::InvalidArgument {
            what: "dump ranges",
            reason: format!("{} ranges (at most 65533)", ranges.len()).into(),
        })?;
    let notes_at = EHDR_LEN + PHDR_LEN * phnum;
    let mut head = Vec::with_capacity(notes_at as usize);
    head.extend_from_slice(b"\x7fELF\x02\x01\x01");
    head.resize(16, 0);
    head.extend_from_slice(&4u16.to_le_bytes()); // ET_CORE
    head.extend_from_slice(&EM_X86_64.to_le_bytes());
    head.extend_from_slice(&1u32.to_le_bytes()); // EV_CURRENT
    head.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    head.extend_from_slice(&EHDR_LEN.to_le_bytes()); // e_phoff
    head.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    head.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    head.extend_from_slice(&(EHDR_LEN as u16).to_le_bytes());
    head.extend_from_slice(&(PHDR_LEN as u16).to_le_bytes());
    head.extend_from_slice(&phnum16.to_le_bytes());
    head.extend_from_slice(&[0u8; 6]); // e_shentsize, e_shnum, e_shstrndx
    let mut phdr = |kind: u32, offset: u64, paddr: u64, len: u64| {
        head.extend_from_slice(&kind.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes()); // p_flags
        for v in [offset, 0, paddr, len, len, 0] {
            head.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(4, notes_at, 0, notes.len() as u64);
    let mut offset = notes_at + notes.len() as u64;
    for r in ranges {
        phdr(1, offset, r.start.0, r.len);
        offset += r.len;
    }
    let io = |e| Error::io("writing ELF dump", e);
    out.write_all(&head).map_err(io)?;
    out.write_all(&notes).map_err(io)?;
    let mut buf = vec![0u8; CHUNK];
    for r in ranges {
        let mut done = 0u64;
        while done < r.len {
            let n = (r.len - done).min(CHUNK as u64) as usize;
            memory.read_physical(Gpa(r.start.0 + done), &mut buf[..n])?;
            out.write_all(&buf[..n]).map_err(io)?;
            done += n as u64;
        }
    }
    out.flush().map_err(io)
}
