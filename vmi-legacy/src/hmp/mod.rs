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
mod tests;
