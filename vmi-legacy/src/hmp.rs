//! Parsers for the text of QEMU's human monitor (HMP) commands.
//!
//! Unpatched QEMU exposes vCPU registers, the memory map and a few other facts only as
//! HMP text (through QMP `human-monitor-command`). These are pure functions over that
//! text, tested against outputs recorded from QEMU 7.2 (`tests/data/`). They never
//! panic: anything they do not recognise is [`Error::Malformed`].
//!
//! Formats, from QEMU's sources:
//! * `info registers` — `x86_cpu_dump_state()` in `target/i386/cpu-dump.c`;
//! * `info lapic` — `x86_cpu_dump_local_apic_state()`, same file;
//! * `info mtree -f` — `mtree_print_flatview()` in `softmmu/memory.c`;
//! * `xp` — `memory_dump()` in `monitor/hmp-cmds.c`;
//! * `gpa2hva` — `hmp_gpa2hva()` in `monitor/misc.c`.

use std::borrow::Cow;

use vmi_core::registers::{
    ControlRegs, DebugRegs, DescriptorTable, Gprs, Segment, SegmentAttributes, Segments,
};
use vmi_core::{Error, Gpa, RegisterSnapshot, Result};

use crate::layout::{RamLayout, RamRange};

const ORIGIN: &str = "HMP";

fn malformed(detail: impl Into<Cow<'static, str>>) -> Error {
    Error::malformed(ORIGIN, detail)
}

/// Parses 1 to 16 hexadecimal digits (no sign, no `0x`).
fn hex(s: &str, what: &str) -> Result<u64> {
    if s.is_empty() || s.len() > 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(malformed(format!(
            "{what}: {:?} is not a hex number",
            clip(s)
        )));
    }
    u64::from_str_radix(s, 16).map_err(|_| malformed(format!("{what}: bad hex {:?}", clip(s))))
}

/// Parses `0x` followed by 1 to 16 hexadecimal digits.
fn hex0x(s: &str, what: &str) -> Result<u64> {
    let digits = s
        .strip_prefix("0x")
        .ok_or_else(|| malformed(format!("{what}: {:?} lacks 0x", clip(s))))?;
    hex(digits, what)
}

/// At most 40 characters of `s`, for error messages about hostile input.
fn clip(s: &str) -> String {
    s.chars().take(40).collect()
}

/// Which register layout `info registers` used.
///
/// QEMU prints the 64-bit layout (`RAX=…`, `R8 =…`) when the vCPU executes 64-bit code
/// (`HF_CS64`), and the 32-bit layout (`EAX=…`, no R8–R15) otherwise — in real mode,
/// protected mode, and in compatibility mode (a 32-bit program under a 64-bit kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterLayout {
    /// `RAX=` … `R15=`, `RIP=`, `RFL=`.
    Bits64,
    /// `EAX=` … `ESP=`, `EIP=`, `EFL=`.
    Bits32,
}

/// One vCPU's `info registers` block, as printed.
///
/// Convert it with [`HmpRegisters::to_snapshot`]; the fields are public for callers that
/// want what the text says without the snapshot's interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmpRegisters {
    /// The `CPU#n` header's index, if the block had one.
    pub cpu_index: Option<u32>,
    /// Which layout the block used.
    pub layout: RegisterLayout,
    /// GPRs, RIP and RFLAGS as printed. In the 32-bit layout R8–R15 are 0 and the other
    /// registers hold their low 32 bits.
    pub gprs: Gprs,
    /// CR0, CR2, CR3, CR4. `cr8` is always 0 here: QEMU does not print it (see
    /// [`HmpRegisters::to_snapshot`]).
    pub control: ControlRegs,
    /// DR0–DR3, DR6, DR7.
    pub debug: DebugRegs,
    /// ES, CS, SS, DS, FS, GS, LDTR, TR.
    pub segments: Segments,
    /// GDTR.
    pub gdtr: DescriptorTable,
    /// IDTR.
    pub idtr: DescriptorTable,
    /// IA32_EFER.
    pub efer: u64,
    /// `CPL=`.
    pub cpl: Option<u8>,
    /// `HLT=1`: the vCPU is halted.
    pub halted: Option<bool>,
}

/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;

impl HmpRegisters {
    /// Whether the text holds complete 64-bit state. In compatibility mode (EFER.LMA
    /// set, 32-bit layout printed) QEMU truncates the GPRs and segment bases to 32 bits
    /// and omits R8–R15, so those groups cannot be reported truthfully.
    pub fn is_truncated(&self) -> bool {
        self.layout == RegisterLayout::Bits32 && self.efer & EFER_LMA != 0
    }

    /// Builds a snapshot, with only the groups the text states truthfully:
    ///
    /// * **CONTROL** needs CR8, which `info registers` does not print. Pass it as `cr8`
    ///   (the session derives it from the local APIC's TPR, `CR8 = TPR bits 7:4`, see
    ///   [`parse_lapic_tpr`]); with `None` the CONTROL group is left out rather than
    ///   reporting a CR8 of 0 that was never read.
    /// * **GPRS** and **SEGMENTS** are left out in compatibility mode
    ///   ([`HmpRegisters::is_truncated`]). In legacy (non-long) mode R8–R15 do not
    ///   exist architecturally and are reported as 0.
    /// * **DEBUG**, **DESCRIPTOR_TABLES** and **EFER** are always present.
    /// * XCR0 and MSRs other than EFER are not printed by QEMU: absent.
    pub fn to_snapshot(&self, cr8: Option<u64>) -> RegisterSnapshot {
        let truncated = self.is_truncated();
        RegisterSnapshot {
            gprs: (!truncated).then_some(self.gprs),
            control: cr8.map(|cr8| ControlRegs {
                cr8,
                ..self.control
            }),
            debug: Some(self.debug),
            segments: (!truncated).then_some(self.segments),
            gdtr: Some(self.gdtr),
            idtr: Some(self.idtr),
            xcr0: None,
            msrs: [(vmi_core::registers::msr::EFER, self.efer)]
                .into_iter()
                .collect(),
        }
    }
}

/// Builder for one block; every field is `None` until its line is seen, so missing and
/// duplicated lines are detected.
#[derive(Default)]
struct Block {
    cpu_index: Option<u32>,
    layout: Option<RegisterLayout>,
    gprs: [Option<u64>; 18],
    cr: [Option<u64>; 4],
    dr: [Option<u64>; 6],
    segs: [Option<Segment>; 8],
    gdtr: Option<DescriptorTable>,
    idtr: Option<DescriptorTable>,
    efer: Option<u64>,
    cpl: Option<u8>,
    halted: Option<bool>,
}

const GPR64: [&str; 18] = [
    "RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8", "R9", "R10", "R11", "R12", "R13",
    "R14", "R15", "RIP", "RFL",
];
const GPR32: [&str; 10] = [
    "EAX", "EBX", "ECX", "EDX", "ESI", "EDI", "EBP", "ESP", "EIP", "EFL",
];
/// Index into `Block::gprs` of each `GPR32` name.
const GPR32_SLOT: [usize; 10] = [0, 1, 2, 3, 4, 5, 6, 7, 16, 17];
const SEGS: [&str; 8] = ["ES", "CS", "SS", "DS", "FS", "GS", "LDT", "TR"];
const CRS: [&str; 4] = ["CR0", "CR2", "CR3", "CR4"];
const DRS: [&str; 6] = ["DR0", "DR1", "DR2", "DR3", "DR6", "DR7"];

fn set_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<()> {
    if slot.is_some() {
        return Err(malformed(format!("{name} appears twice in one CPU block")));
    }
    *slot = Some(value);
    Ok(())
}

impl Block {
    fn set_layout(&mut self, layout: RegisterLayout) -> Result<()> {
        match self.layout {
            Some(l) if l != layout => Err(malformed(
                "a CPU block mixes the 64-bit (RAX=) and 32-bit (EAX=) layouts",
            )),
            _ => {
                self.layout = Some(layout);
                Ok(())
            }
        }
    }

    /// Handles one line (already normalised: `NAME =` turned into `NAME=`).
    fn line(&mut self, line: &str) -> Result<()> {
        let mut tokens = line.split_ascii_whitespace();
        let Some(first) = tokens.next() else {
            return Ok(());
        };
        let Some((name, value)) = first.split_once('=') else {
            // Lines without NAME= (e.g. a continuation we do not know) are ignored.
            return Ok(());
        };
        if GPR64.contains(&name) || GPR32.contains(&name) {
            // "RAX=… RBX=… …" or "RIP=… RFL=… [flags] CPL=0 II=0 A20=1 SMM=0 HLT=0".
            for tok in std::iter::once(first).chain(tokens) {
                let Some((n, v)) = tok.split_once('=') else {
                    continue;
                };
                if let Some(i) = GPR64.iter().position(|g| *g == n) {
                    self.set_layout(RegisterLayout::Bits64)?;
                    set_once(&mut self.gprs[i], hex(v, n)?, n)?;
                } else if let Some(i) = GPR32.iter().position(|g| *g == n) {
                    self.set_layout(RegisterLayout::Bits32)?;
                    if v.len() > 8 {
                        return Err(malformed(format!("{n} has more than 32 bits")));
                    }
                    set_once(&mut self.gprs[GPR32_SLOT[i]], hex(v, n)?, n)?;
                } else if n == "CPL" {
                    let cpl = v
                        .parse::<u8>()
                        .ok()
                        .filter(|c| *c <= 3)
                        .ok_or_else(|| malformed(format!("bad CPL {:?}", clip(v))))?;
                    set_once(&mut self.cpl, cpl, n)?;
                } else if n == "HLT" {
                    let h = match v {
                        "0" => false,
                        "1" => true,
                        _ => return Err(malformed(format!("bad HLT {:?}", clip(v)))),
                    };
                    set_once(&mut self.halted, h, n)?;
                }
            }
            return Ok(());
        }
        if let Some(i) = SEGS.iter().position(|s| *s == name) {
            // "CS =0008 0000000000000000 ffffffff 00af9b00 DPL=0 CS64 [-RA]"
            let (base, limit, flags) = match (tokens.next(), tokens.next(), tokens.next()) {
                (Some(b), Some(l), Some(f)) => (b, l, f),
                _ => return Err(malformed(format!("{name} line is incomplete"))),
            };
            if value.len() > 4 || limit.len() > 8 || flags.len() > 8 {
                return Err(malformed(format!("{name} field too wide")));
            }
            let selector = hex(value, name)? as u16;
            let base = hex(base, name)?;
            let limit = hex(limit, name)? as u32;
            let flags = hex(flags, name)? as u32;
            let mut attributes = SegmentAttributes::from_descriptor_flags(flags);
            // QEMU keeps no "unusable" bit; like KVM's own conversion, a segment
            // whose descriptor is not present is unusable.
            attributes.unusable = !attributes.present;
            let seg = Segment {
                selector,
                base,
                limit,
                attributes,
            };
            return set_once(&mut self.segs[i], seg, name);
        }
        match name {
            "GDT" | "IDT" => {
                // "GDT=     0000000000100180 00000027"
                let (base, limit) = match (value, tokens.next(), tokens.next()) {
                    ("", Some(b), Some(l)) => (b, l),
                    _ => return Err(malformed(format!("{name} line is malformed"))),
                };
                let base = hex(base, name)?;
                let limit = u16::try_from(hex(limit, name)?)
                    .map_err(|_| malformed(format!("{name} limit exceeds 16 bits")))?;
                let t = DescriptorTable { base, limit };
                let slot = if name == "GDT" {
                    &mut self.gdtr
                } else {
                    &mut self.idtr
                };
                set_once(slot, t, name)
            }
            "CR0" | "DR0" | "DR6" | "EFER" => {
                for tok in std::iter::once(first).chain(tokens) {
                    let (n, v) = tok
                        .split_once('=')
                        .ok_or_else(|| malformed(format!("unexpected {:?}", clip(tok))))?;
                    let value = hex(v, n)?;
                    if let Some(i) = CRS.iter().position(|c| *c == n) {
                        set_once(&mut self.cr[i], value, n)?;
                    } else if let Some(i) = DRS.iter().position(|d| *d == n) {
                        set_once(&mut self.dr[i], value, n)?;
                    } else if n == "EFER" {
                        set_once(&mut self.efer, value, n)?;
                    } else {
                        return Err(malformed(format!("unexpected {:?}", clip(n))));
                    }
                }
                Ok(())
            }
            // FPU, SSE, AVX, PKRU, CC*, … lines: not part of the snapshot.
            _ => Ok(()),
        }
    }

    fn finish(self) -> Result<HmpRegisters> {
        let who = match self.cpu_index {
            Some(i) => format!("CPU#{i}"),
            None => "info registers".to_owned(),
        };
        let missing = |what: &str| malformed(format!("{who}: no {what}"));
        let layout = self
            .layout
            .ok_or_else(|| missing("general-purpose registers"))?;
        let g = |i: usize| -> Result<u64> {
            match layout {
                RegisterLayout::Bits32 if (8..16).contains(&i) => Ok(0),
                RegisterLayout::Bits32 => self.gprs[i].ok_or_else(|| {
                    let n = GPR32_SLOT
                        .iter()
                        .position(|s| *s == i)
                        .map_or("?", |p| GPR32[p]);
                    missing(n)
                }),
                RegisterLayout::Bits64 => self.gprs[i].ok_or_else(|| missing(GPR64[i])),
            }
        };
        let gprs = Gprs {
            rax: g(0)?,
            rbx: g(1)?,
            rcx: g(2)?,
            rdx: g(3)?,
            rsi: g(4)?,
            rdi: g(5)?,
            rbp: g(6)?,
            rsp: g(7)?,
            r8: g(8)?,
            r9: g(9)?,
            r10: g(10)?,
            r11: g(11)?,
            r12: g(12)?,
            r13: g(13)?,
            r14: g(14)?,
            r15: g(15)?,
            rip: g(16)?,
            rflags: g(17)?,
        };
        let cr = |i: usize| self.cr[i].ok_or_else(|| missing(CRS[i]));
        let control = ControlRegs {
            cr0: cr(0)?,
            cr2: cr(1)?,
            cr3: cr(2)?,
            cr4: cr(3)?,
            cr8: 0,
        };
        let dr = |i: usize| self.dr[i].ok_or_else(|| missing(DRS[i]));
        let debug = DebugRegs {
            dr0: dr(0)?,
            dr1: dr(1)?,
            dr2: dr(2)?,
            dr3: dr(3)?,
            dr6: dr(4)?,
            dr7: dr(5)?,
        };
        let seg = |i: usize| self.segs[i].ok_or_else(|| missing(SEGS[i]));
        let segments = Segments {
            es: seg(0)?,
            cs: seg(1)?,
            ss: seg(2)?,
            ds: seg(3)?,
            fs: seg(4)?,
            gs: seg(5)?,
            ldtr: seg(6)?,
            tr: seg(7)?,
        };
        Ok(HmpRegisters {
            cpu_index: self.cpu_index,
            layout,
            gprs,
            control,
            debug,
            segments,
            gdtr: self.gdtr.ok_or_else(|| missing("GDT"))?,
            idtr: self.idtr.ok_or_else(|| missing("IDT"))?,
            efer: self.efer.ok_or_else(|| missing("EFER"))?,
            cpl: self.cpl,
            halted: self.halted,
        })
    }
}

/// Parses the output of `info registers` or `info registers -a`: one [`HmpRegisters`]
/// per `CPU#n` block (one block without index if the text has no header).
///
/// Both layouts are accepted (see [`RegisterLayout`]), as is QEMU's `R8 =` spacing and
/// `\r\n` line ends. A block that lacks any of the GPR, segment, descriptor-table,
/// control, debug or EFER lines, repeats one, or holds a value that is not hex of the
/// right width, is [`Error::Malformed`].
pub fn parse_info_registers(text: &str) -> Result<Vec<HmpRegisters>> {
    let mut blocks: Vec<Block> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let trimmed = line.trim();
        if let Some(n) = trimmed.strip_prefix("CPU#") {
            let index = n
                .parse::<u32>()
                .map_err(|_| malformed(format!("bad CPU header {:?}", clip(trimmed))))?;
            if blocks.iter().any(|b| b.cpu_index == Some(index)) {
                return Err(malformed(format!("CPU#{index} appears twice")));
            }
            blocks.push(Block {
                cpu_index: Some(index),
                ..Block::default()
            });
            continue;
        }
        if trimmed.is_empty() {
            continue;
        }
        if blocks.is_empty() {
            blocks.push(Block::default());
        }
        // QEMU pads two-letter names to three: "R8 =", "ES =", "TR =".
        let normalised = line.replace(" =", "=");
        if let Some(b) = blocks.last_mut() {
            b.line(&normalised)?;
        }
    }
    if blocks.is_empty() {
        return Err(malformed("no registers in the text"));
    }
    blocks.into_iter().map(Block::finish).collect()
}

/// Parses `info registers` output and returns the block of vCPU `cpu_index` (the block
/// without a `CPU#` header is accepted when it is the only one).
pub fn parse_cpu_registers(text: &str, cpu_index: u32) -> Result<HmpRegisters> {
    let blocks = parse_info_registers(text)?;
    if let [only] = blocks.as_slice() {
        if only.cpu_index.is_none() || only.cpu_index == Some(cpu_index) {
            return Ok(only.clone());
        }
    }
    blocks
        .into_iter()
        .find(|b| b.cpu_index == Some(cpu_index))
        .ok_or_else(|| malformed(format!("no CPU#{cpu_index} block in info registers")))
}

/// Extracts the task-priority register from `info lapic` output (the line
/// `APR 0x00 TPR 0x50 DFR 0x0f LDR 0x00 PPR 0x50`). CR8 is `TPR >> 4`.
pub fn parse_lapic_tpr(text: &str) -> Result<u8> {
    for line in text.lines() {
        let mut tokens = line.split_ascii_whitespace();
        while let Some(tok) = tokens.next() {
            if tok == "TPR" {
                let v = tokens
                    .next()
                    .ok_or_else(|| malformed("TPR without a value"))?;
                let v = hex0x(v, "TPR")?;
                return u8::try_from(v).map_err(|_| malformed("TPR exceeds 8 bits"));
            }
        }
    }
    Err(malformed(format!(
        "no TPR in info lapic output {:?}",
        clip(text.trim())
    )))
}

/// Parses the output of `info mtree -f` and returns the RAM of the system address space
/// (the flat view listing `AS "memory"`): every region of type `ram`, with its guest
/// physical range, backend name and offset into the backend.
///
/// Regions of other types (`rom`, `romd`, `i/o`, `ramd` device memory, `nv-ram`) are
/// not RAM and are skipped. The result may hold several backends (e.g. the main RAM and
/// a mapped VGA VRAM BAR); [`RamLayout::main_backend`] picks guest RAM proper.
pub fn parse_mtree_flat(text: &str) -> Result<RamLayout> {
    // Flat views start with "FlatView #n", then list ` AS "name", root: …` lines, a
    // ` Root memory region: …` line and the regions.
    let mut in_view = false;
    let mut is_memory = false;
    let mut found = false;
    let mut ranges: Vec<RamRange> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        let t = line.trim();
        if t.starts_with("FlatView #") {
            if is_memory {
                break;
            }
            in_view = true;
            continue;
        }
        if !in_view {
            continue;
        }
        if let Some(rest) = t.strip_prefix("AS \"") {
            if rest.starts_with("memory\"") {
                is_memory = true;
                found = true;
            }
            continue;
        }
        if !is_memory || t.is_empty() || t.starts_with("Root memory region") {
            continue;
        }
        if t.starts_with("No rendered FlatView") {
            break;
        }
        if let Some(r) = parse_flat_region(t)? {
            ranges.push(r);
        }
    }
    // ROM that lives in a RAM backend (the firmware's read-only shadow copies) is part
    // of guest memory; ROM regions of their own (`pc.bios`, `pc.rom`) are not in any
    // backend we map.
    let ram_names: Vec<String> = ranges
        .iter()
        .filter(|r| !r.rom)
        .map(|r| r.backend_name.clone())
        .collect();
    ranges.retain(|r| !r.rom || ram_names.contains(&r.backend_name));
    if !found {
        return Err(malformed(
            "info mtree -f has no flat view for address space \"memory\"",
        ));
    }
    RamLayout::new(ranges).map_err(|e| malformed(format!("info mtree -f: {e}")))
}

/// Parses one region line of a flat view; `None` for regions that are neither RAM nor
/// ROM.
///
/// `0000000000100000-0000000003ffffff (prio 0, ram): ram0 @0000000000100000 KVM`,
/// `00000000000f0000-00000000000fffff (prio 0, rom): ram0 @00000000000f0000`
fn parse_flat_region(t: &str) -> Result<Option<RamRange>> {
    let bad = || malformed(format!("bad flat view line {:?}", clip(t)));
    let (range, rest) = t.split_once(' ').ok_or_else(bad)?;
    let (start, end) = range.split_once('-').ok_or_else(bad)?;
    let start = hex(start, "region start")?;
    let end = hex(end, "region end")?;
    let rest = rest.strip_prefix("(prio ").ok_or_else(bad)?;
    let (_prio, rest) = rest.split_once(", ").ok_or_else(bad)?;
    let (kind, rest) = rest.split_once("): ").ok_or_else(bad)?;
    let rom = match kind {
        "ram" => false,
        "rom" => true,
        _ => return Ok(None),
    };
    let mut tokens = rest.split_ascii_whitespace();
    let name = tokens.next().ok_or_else(bad)?;
    let mut offset = 0;
    for tok in tokens {
        if let Some(o) = tok.strip_prefix('@') {
            offset = hex(o, "region offset")?;
        }
    }
    if end < start {
        return Err(bad());
    }
    let len = (end - start).checked_add(1).ok_or_else(bad)?;
    Ok(Some(RamRange {
        gpa_start: Gpa(start),
        len,
        backend_offset: offset,
        backend_name: name.to_owned(),
        rom,
    }))
}

/// Parses the output of `xp /<count>bx <gpa>` (lines of
/// `00000000000ffff0: 0xea 0x5b …`), checking that it covers exactly `count` bytes
/// starting at `gpa`.
pub fn parse_xp_bytes(text: &str, gpa: Gpa, count: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(count.min(1 << 20));
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        let (addr, bytes) = line
            .split_once(':')
            .ok_or_else(|| malformed(format!("bad xp line {:?}", clip(line))))?;
        let addr = hex(addr.trim(), "xp address")?;
        let expected = gpa.0.checked_add(out.len() as u64);
        if Some(addr) != expected {
            return Err(malformed(format!(
                "xp line at {addr:#x}, expected {:#x}",
                expected.unwrap_or(0)
            )));
        }
        for b in bytes.split_ascii_whitespace() {
            let v = hex0x(b, "xp byte")?;
            let v = u8::try_from(v).map_err(|_| malformed("xp value exceeds a byte"))?;
            if out.len() == count {
                return Err(malformed("xp printed more bytes than asked for"));
            }
            out.push(v);
        }
    }
    if out.len() != count {
        return Err(malformed(format!(
            "xp printed {} bytes, expected {count}",
            out.len()
        )));
    }
    Ok(out)
}

/// Parses the output of `gpa2hva <gpa>`: `Host virtual address for 0x0 (ram0) is
/// 0x7fdd33fff000`. Returns the region name and the host virtual address in QEMU.
pub fn parse_gpa2hva(text: &str) -> Result<(String, u64)> {
    let t = text.trim();
    let rest = t
        .strip_prefix("Host virtual address for ")
        .ok_or_else(|| malformed(format!("gpa2hva: {:?}", clip(t))))?;
    let (_, rest) = rest
        .split_once(" (")
        .ok_or_else(|| malformed("gpa2hva: no region name"))?;
    let (name, rest) = rest
        .rsplit_once(") is ")
        .ok_or_else(|| malformed("gpa2hva: no address"))?;
    Ok((name.to_owned(), hex0x(rest.trim(), "gpa2hva address")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmi_core::registers::RegisterGroups;
    use vmi_core::Register;

    const RESET_A: &str = include_str!("../tests/data/qemu72_info_registers_a_reset.txt");
    const RESET: &str = include_str!("../tests/data/qemu72_info_registers_reset.txt");
    const PM: &str = include_str!("../tests/data/qemu72_info_registers_protected_mode.txt");
    const LONG_A: &str = include_str!("../tests/data/qemu72_info_registers_a_long_mode.txt");
    const LAPIC: &str = include_str!("../tests/data/qemu72_info_lapic.txt");
    const MTREE: &str = include_str!("../tests/data/qemu72_info_mtree_f.txt");
    const MTREE_PC4G: &str = include_str!("../tests/data/qemu72_info_mtree_f_pc_4g_vga.txt");
    const MTREE_Q35: &str = include_str!("../tests/data/qemu72_info_mtree_f_q35_5g_vga.txt");

    fn crlf(s: &str) -> String {
        s.replace('\n', "\r\n")
    }

    #[test]
    fn reset_state_all_cpus() {
        for text in [RESET_A.to_owned(), crlf(RESET_A)] {
            let cpus = parse_info_registers(&text).unwrap();
            assert_eq!(cpus.len(), 2);
            for (i, c) in cpus.iter().enumerate() {
                assert_eq!(c.cpu_index, Some(i as u32));
                assert_eq!(c.layout, RegisterLayout::Bits32);
                assert_eq!(c.gprs.rip, 0xfff0);
                assert_eq!(c.gprs.rdx, 0x60fb1);
                assert_eq!(c.gprs.rflags, 2);
                assert_eq!(c.segments.cs.selector, 0xf000);
                assert_eq!(c.segments.cs.base, 0xffff_0000);
                assert_eq!(c.segments.cs.limit, 0xffff);
                assert_eq!(c.segments.cs.attributes.type_, 0xb);
                assert!(c.segments.cs.attributes.present);
                assert!(c.segments.cs.attributes.s);
                assert_eq!(c.segments.tr.attributes.type_, 0xb);
                assert!(!c.segments.tr.attributes.s);
                assert_eq!(c.control.cr0, 0x6000_0010);
                assert_eq!(c.debug.dr6, 0xffff_0ff0);
                assert_eq!(c.debug.dr7, 0x400);
                assert_eq!(c.gdtr.limit, 0xffff);
                assert_eq!(c.efer, 0);
                assert!(!c.is_truncated());
            }
            assert_eq!(cpus[0].halted, Some(false));
            assert_eq!(cpus[1].halted, Some(true));
        }
        let one = parse_cpu_registers(RESET, 0).unwrap();
        assert_eq!(one, parse_cpu_registers(RESET_A, 0).unwrap());
        assert!(parse_cpu_registers(RESET, 1).is_err());
        assert_eq!(parse_cpu_registers(RESET_A, 1).unwrap().cpu_index, Some(1));
    }

    #[test]
    fn protected_mode() {
        let c = parse_cpu_registers(PM, 0).unwrap();
        assert_eq!(c.layout, RegisterLayout::Bits32);
        assert_eq!(c.gprs.rax, 0xdead_beef);
        assert_eq!(c.gprs.rsi, 0x0bad_f00d);
        assert_eq!(c.gprs.rsp, 0x8000);
        assert_eq!(c.gprs.r8, 0);
        assert_eq!(c.segments.cs.limit, 0xffff_ffff);
        assert!(c.segments.cs.attributes.db && c.segments.cs.attributes.g);
        assert_eq!(c.gdtr.base, 0xc02b8);
        assert_eq!(c.idtr.limit, 0x3ff);
        assert_eq!(c.control.cr0, 0x11);
        let s = c.to_snapshot(Some(0));
        assert_eq!(
            s.groups(),
            RegisterGroups::all() - RegisterGroups::XCR0 - RegisterGroups::MSRS
        );
    }

    #[test]
    fn long_mode_with_r8_spacing() {
        let cpus = parse_info_registers(LONG_A).unwrap();
        let c = &cpus[0];
        assert_eq!(c.layout, RegisterLayout::Bits64);
        let want = [
            0x1111111111111111u64,
            0x2222222222222222,
            0x3333333333333333,
            0x4444444444444444,
            0x5555555555555555,
            0x6666666666666666,
            0x7777777777777777,
        ];
        assert_eq!(
            [c.gprs.rax, c.gprs.rbx, c.gprs.rcx, c.gprs.rdx, c.gprs.rsi, c.gprs.rdi, c.gprs.rbp],
            want
        );
        assert_eq!(c.gprs.rsp, 0x90000);
        // LibVMI skipped one character after "R8" and landed on "=": not here.
        assert_eq!(c.gprs.r8, 0x8888888888888888);
        assert_eq!(c.gprs.r9, 0x9999999999999999);
        assert_eq!(c.gprs.r10, 0xaaaaaaaaaaaaaaaa);
        assert_eq!(c.gprs.r15, 0xffffffff80001234);
        assert_eq!(c.gprs.rip, 0x100174);
        assert_eq!(c.gprs.rflags, 0x86);
        assert_eq!(c.segments.fs.base, 0x7fff_1234_5000);
        assert_eq!(c.segments.cs.attributes.to_vmx_ar(), 0xa09b);
        assert!(c.segments.cs.attributes.l);
        assert_eq!(c.segments.tr.selector, 0x18);
        assert_eq!(c.segments.tr.base, 0x20_0000);
        assert_eq!(c.segments.tr.limit, 0x67);
        assert_eq!(c.segments.tr.attributes.type_, 9);
        assert_eq!(
            c.gdtr,
            DescriptorTable {
                base: 0x100180,
                limit: 0x27
            }
        );
        assert_eq!(
            c.idtr,
            DescriptorTable {
                base: 0x300000,
                limit: 0xfff
            }
        );
        assert_eq!(c.control.cr3, 0x101000);
        assert_eq!(c.control.cr4, 0x20);
        assert_eq!(c.debug.dr0, 0xffff_8880_0000_1000);
        assert_eq!(c.debug.dr7, 0xf0401);
        assert_eq!(c.efer, 0xd01);
        // CPU#1 is still in the BIOS: 32-bit layout in the same text.
        assert_eq!(cpus[1].layout, RegisterLayout::Bits32);

        let tpr = parse_lapic_tpr(LAPIC).unwrap();
        assert_eq!(tpr, 0x50);
        let s = c.to_snapshot(Some(u64::from(tpr >> 4)));
        assert_eq!(s.get(Register::Cr8), Some(5));
        assert_eq!(s.get(Register::R8), Some(0x8888888888888888));
        assert_eq!(s.get(Register::Efer), Some(0xd01));
        assert_eq!(s.get(Register::Xcr0), None);
        // Without CR8 the CONTROL group is absent, not zero.
        let s = c.to_snapshot(None);
        assert_eq!(s.get(Register::Cr3), None);
        assert!(!s.groups().contains(RegisterGroups::CONTROL));
    }

    #[test]
    fn compatibility_mode_is_not_reported_as_complete() {
        // A 32-bit program under a 64-bit kernel: EAX layout, EFER.LMA set, 64-bit
        // GDT/CR lines. Handcrafted from the cpu-dump.c format (not recorded).
        let text = PM
            .replace("EFER=0000000000000000", "EFER=0000000000000d01")
            .replace("GDT=     000c02b8", "GDT=     ffffffff8a000000");
        let c = parse_cpu_registers(&text, 0).unwrap();
        assert!(c.is_truncated());
        let s = c.to_snapshot(Some(0));
        assert!(s.gprs.is_none() && s.segments.is_none());
        assert_eq!(s.gdtr.unwrap().base, 0xffff_ffff_8a00_0000);
        assert!(s.control.is_some());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "hello",
            "CPU#x\n",
            "CPU#0\nCPU#0\n",
            &RESET.replace("CR0=60000010 ", ""),
            &RESET.replace("EFER=0000000000000000", ""),
            &RESET.replace("LDT=", "XXX="),
            &RESET.replace("EAX=00000000", "EAX=0000000g"),
            &RESET.replace("EAX=00000000", "EAX=+0000000"),
            &RESET.replace("EAX=00000000", "EAX=000000000"),
            &RESET.replace("EAX=00000000", "EAX="),
            &RESET.replace("EBX=00000000", "EBX=00000000 EBX=00000000"),
            &RESET.replace("EBX=00000000", "RBX=0000000000000000"),
            &RESET.replace("CS =f000 ffff0000 0000ffff 00009b00", "CS =f000 ffff0000"),
            &RESET.replace("CS =f000", "CS =1f000"),
            &RESET.replace("GDT=     00000000 0000ffff", "GDT=     00000000 00010000"),
            &RESET.replace("GDT=     00000000 0000ffff", "GDT=00000000 0000ffff"),
            &LONG_A.replace("R8 =8888888888888888", "R8 =88888888888888881"),
            &LONG_A.replace("HLT=1", "HLT=2"),
            &LONG_A.replace("CPL=0", "CPL=4"),
            &RESET.replace("DR6=00000000ffff0ff0", "DR6=00000000ffff0ff0 XY=1"),
        ] {
            assert!(
                matches!(parse_info_registers(bad), Err(Error::Malformed { .. })),
                "accepted {:?}",
                &bad[..bad.len().min(80)]
            );
        }
        assert!(parse_lapic_tpr("APR 0x00 TPR 0x100").is_err());
        assert!(parse_lapic_tpr("APR 0x00 TPR").is_err());
        assert!(parse_lapic_tpr("No CPU available").is_err());
    }

    /// Deterministic xorshift so the mutation test needs no extra dependency.
    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn mutated_inputs_never_panic() {
        let alphabet = b"0123456789abcdefxX=# \n\r:@-()RECPUGDTLAS.,";
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for base in [RESET_A, LONG_A, PM, MTREE, MTREE_Q35, LAPIC] {
            for _ in 0..400 {
                let mut bytes = base.as_bytes().to_vec();
                let edits = 1 + xorshift(&mut seed) % 8;
                for _ in 0..edits {
                    if bytes.is_empty() {
                        break;
                    }
                    let pos = (xorshift(&mut seed) % bytes.len() as u64) as usize;
                    let c = alphabet[(xorshift(&mut seed) % alphabet.len() as u64) as usize];
                    match xorshift(&mut seed) % 4 {
                        0 => bytes[pos] = c,
                        1 => {
                            bytes.remove(pos);
                        }
                        2 => bytes.insert(pos, c),
                        _ => bytes.truncate(pos),
                    }
                }
                let text = String::from_utf8_lossy(&bytes);
                let _ = parse_info_registers(&text);
                let _ = parse_cpu_registers(&text, 1);
                let _ = parse_mtree_flat(&text);
                let _ = parse_lapic_tpr(&text);
                let _ = parse_xp_bytes(&text, Gpa(0), 16);
                let _ = parse_gpa2hva(&text);
            }
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]
            #[test]
            fn arbitrary_text_never_panics(s in "(CPU#[0-9]{1,3}\n|[A-Z]{1,4} ?=[0-9a-fx]{0,18} |[ \n@:()a-z0-9-]{1,8})*") {
                let _ = parse_info_registers(&s);
                let _ = parse_mtree_flat(&s);
                let _ = parse_lapic_tpr(&s);
                let _ = parse_xp_bytes(&s, Gpa(0), 4);
                let _ = parse_gpa2hva(&s);
            }

            #[test]
            fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
                let s = String::from_utf8_lossy(&b);
                let _ = parse_info_registers(&s);
                let _ = parse_mtree_flat(&s);
            }
        }
    }

    /// `info mtree -f` of QEMU 7.2 after SeaBIOS ran (the test guest, 64 MiB): the
    /// BIOS and option ROM areas are RAM of `ram0` made read-only.
    const MTREE_AFTER_BIOS: &str = "FlatView #2
 AS \"memory\", root: system
 AS \"cpu-memory-0\", root: system
 Root memory region: system
  0000000000000000-00000000000c2fff (prio 0, ram): ram0
  00000000000c3000-00000000000e7fff (prio 0, rom): ram0 @00000000000c3000
  00000000000e8000-00000000000effff (prio 0, ram): ram0 @00000000000e8000
  00000000000f0000-00000000000fffff (prio 0, rom): ram0 @00000000000f0000
  0000000000100000-0000000003ffffff (prio 0, ram): ram0 @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
";

    #[test]
    fn mtree_rom_of_a_ram_backend_is_guest_memory() {
        let l = parse_mtree_flat(MTREE_AFTER_BIOS).unwrap();
        let roms: Vec<_> = l.rom_ranges().map(|r| (r.gpa_start.0, r.len)).collect();
        assert_eq!(roms, vec![(0xc3000, 0x25000), (0xf0000, 0x10000)]);
        assert_eq!(
            l.backend_names(),
            vec!["ram0"],
            "pc.bios is no backend of ours"
        );
        let info = l.memory_info();
        assert_eq!(info.ranges.len(), 1, "{info:?}");
        assert_eq!(info.ranges[0].len, 64 << 20);
        assert_eq!(l.range_of(Gpa(0xf59d0)).unwrap().backend_offset, 0xf0000);
        assert!(l.check_writable(Gpa(0xe8000), 0x8000).is_ok());
        assert!(l.check_writable(Gpa(0xeffff), 2).is_err());
        assert!(l.check_writable(Gpa(0xc2fff), 1).is_ok());
        assert!(l.check_writable(Gpa(0xc2fff), 2).is_err());
    }

    #[test]
    fn mtree_memory_backend_file() {
        for text in [MTREE.to_owned(), crlf(MTREE)] {
            let l = parse_mtree_flat(&text).unwrap();
            let r = l.ranges();
            assert_eq!(r.len(), 2, "{r:?}");
            assert_eq!(
                r[0],
                RamRange {
                    gpa_start: Gpa(0),
                    len: 0xc0000,
                    backend_offset: 0,
                    backend_name: "ram0".into(),
                    rom: false,
                }
            );
            assert_eq!(r[1].gpa_start, Gpa(0x10_0000));
            assert_eq!(r[1].len, 0x3f0_0000);
            assert_eq!(r[1].backend_offset, 0x10_0000);
            assert_eq!(l.main_backend(), Some("ram0"));
            assert_eq!(l.backend_extent(), 64 << 20);
        }
    }

    #[test]
    fn mtree_pc_and_q35_split_around_4g() {
        let l = parse_mtree_flat(MTREE_PC4G).unwrap();
        let v: Vec<(u64, u64, u64)> = l
            .ranges()
            .iter()
            .map(|r| (r.gpa_start.0, r.len, r.backend_offset))
            .collect();
        assert_eq!(
            v,
            vec![
                (0, 0xa0000, 0),
                (0x10_0000, 0xbff0_0000, 0x10_0000),
                (0x1_0000_0000, 0x4000_0000, 0xc000_0000)
            ]
        );
        assert_eq!(l.ram_size(), (4u64 << 30) - 0x60000);
        let l = parse_mtree_flat(MTREE_Q35).unwrap();
        assert_eq!(l.ranges().len(), 3);
        assert_eq!(l.ranges()[1].len, 0x7ff0_0000);
        assert_eq!(l.ranges()[2].gpa_start, Gpa(0x1_0000_0000));
        assert_eq!(l.ranges()[2].backend_offset, 0x8000_0000);
        assert_eq!(l.backend_extent(), 5 << 30);
        assert!(l.ranges().iter().all(|r| r.backend_name == "pc.ram"));
    }

    #[test]
    fn mtree_variants() {
        // KVM appends the accelerator's name; other RAM (a VRAM BAR) is reported with
        // its own backend name. Handcrafted from the memory.c format.
        let text = "FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n  \
                    0000000000000000-000000000009ffff (prio 0, ram): pc.ram KVM\n  \
                    00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem\n  \
                    00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram KVM\n  \
                    00000000fe000000-00000000fe000fff (prio 0, ramd): 0000:00:05.0 BAR 0 mmaps[0]\n";
        let l = parse_mtree_flat(text).unwrap();
        assert_eq!(l.backend_names(), vec!["pc.ram", "vga.vram"]);
        assert_eq!(l.main_backend(), Some("pc.ram"));
        assert_eq!(l.for_backend("pc.ram").ram_size(), 0xa0000);
        // No "memory" address space, a truncated line, and end < start.
        assert!(parse_mtree_flat("FlatView #0\n AS \"I/O\", root: io\n").is_err());
        let trunc = "FlatView #0\n AS \"memory\", root: system\n  0000000000000000-00000000";
        assert!(parse_mtree_flat(trunc).is_err());
        let rev = "FlatView #0\n AS \"memory\", root: system\n  \
                   0000000000001000-0000000000000fff (prio 0, ram): r\n";
        assert!(parse_mtree_flat(rev).is_err());
        // An empty system flat view is an empty layout.
        let empty = "FlatView #0\n AS \"memory\", root: system\n Root memory region: (none)\n  No rendered FlatView\n";
        assert!(parse_mtree_flat(empty).unwrap().is_empty());
    }

    #[test]
    fn xp_and_gpa2hva() {
        let text = "00000000000ffff0: 0xea 0x5b 0xe0 0x00 0xf0 0x30 0x36 0x2f\r\n\
                    00000000000ffff8: 0x32 0x33 0x2f 0x39 0x39 0x00 0xfc 0x00\r\n";
        let b = parse_xp_bytes(text, Gpa(0xffff0), 16).unwrap();
        assert_eq!(&b[..4], &[0xea, 0x5b, 0xe0, 0x00]);
        assert!(parse_xp_bytes(text, Gpa(0xffff0), 15).is_err());
        assert!(parse_xp_bytes(text, Gpa(0xffff0), 17).is_err());
        assert!(parse_xp_bytes(text, Gpa(0xffff8), 16).is_err());
        assert!(parse_xp_bytes("Cannot access memory\n", Gpa(0), 1).is_err());

        let (name, hva) =
            parse_gpa2hva("Host virtual address for 0x100000 (ram0) is 0x7fdd340ff000\r\n")
                .unwrap();
        assert_eq!(name, "ram0");
        assert_eq!(hva, 0x7fdd_340f_f000);
        assert!(parse_gpa2hva("No memory is mapped at address 0x4000000\r\n").is_err());
    }
}
