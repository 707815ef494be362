//! QEMU's ELF `dump-guest-memory` format: memory from `PT_LOAD` segments, registers and
//! VMCOREINFO from the `PT_NOTE` segments.

use std::path::Path;

use vmi_core::{
    Error, Gpa, MapPhysical, MappedRegion, MemoryInfo, MemoryLayout, PhysicalMemory, ReadRegisters,
    RegisterGroups, RegisterSnapshot, Result, VcpuId,
};

use crate::backing::{Access, Backing, LoadSegment, SegmentMap};
use crate::notes::{parse_notes, PrStatus, QemuCpuState, NT_PRSTATUS};
use crate::vcpu::DumpVcpu;

const ORIGIN: &str = "ELF dump";

/// `e_machine` of an x86-64 ELF.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of an i386 ELF.
pub const EM_386: u16 = 3;
const ET_CORE: u16 = 4;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
/// `e_phnum` saying the real count is in section header 0's `sh_info`.
const PN_XNUM: u16 = 0xffff;
/// The most note bytes read (QEMU writes under 1 KiB per vCPU plus VMCOREINFO, which
/// it caps at 1 MiB): a corrupted header cannot make the reader allocate the file.
pub const MAX_NOTE_BYTES: u64 = 64 << 20;
/// The most vCPUs a dump may describe (KVM's limit is 4096 on x86).
pub const MAX_VCPUS: usize = 1 << 16;

/// ELF class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfClass {
    /// ELFCLASS32 (QEMU: a guest not in long mode with all RAM below 4 GiB).
    Elf32,
    /// ELFCLASS64.
    Elf64,
}

/// A memory dump in ELF core format, as QMP `dump-guest-memory` (`"format": "elf"`,
/// the default) or `virsh dump --memory-only` writes it.
///
/// * Memory: each `PT_LOAD` segment is the guest-physical range at its `p_paddr`;
///   addresses in no segment fail with [`Error::UnmappedPhysical`]. Dumps taken with
///   `"paging": true` describe virtual mappings and may cover a physical page twice:
///   overlapping segments are refused — take dumps with `"paging": false`.
/// * vCPUs: one per `CORE`/`NT_PRSTATUS` note and per `QEMU` note, in note order (QEMU
///   writes them by CPU index). [`ReadRegisters`] serves [`DumpVcpu::snapshot`], so
///   [`vmi_core::VirtualMemory`] works on the dump (EFER is derived: see
///   [`DumpVcpu::derived_efer`]).
/// * [`ElfDump::vmcoreinfo`]: the guest kernel's VMCOREINFO note, which QEMU copies in
///   when the guest has the `vmcoreinfo` device and its kernel filled it.
///
/// The file is untrusted: every header field is checked before use, and a malformed
/// file gives [`Error::Malformed`] (or [`Error::Unsupported`] for another architecture
/// or byte order), never a panic, and no allocation larger than the file.
#[derive(Debug)]
pub struct ElfDump {
    backing: Backing,
    map: SegmentMap,
    class: ElfClass,
    machine: u16,
    vcpus: Vec<DumpVcpu>,
    vmcoreinfo: Option<Vec<u8>>,
}

struct Header {
    class: ElfClass,
    machine: u16,
    phoff: u64,
    phentsize: u16,
    phnum: u64,
}

struct Phdr {
    kind: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

fn malformed(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::malformed(ORIGIN, detail)
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}

fn le32(b: &[u8], o: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(w)
}

fn le64(b: &[u8], o: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(w)
}

fn read_header(backing: &Backing) -> Result<Header> {
    if backing.len() < 52 {
        return Err(malformed(format!(
            "{} bytes is too short for an ELF header",
            backing.len()
        )));
    }
    let mut e = [0u8; 64];
    let n = backing.len().min(64) as usize;
    backing.read_at(0, &mut e[..n])?;
    if e[..4] != *b"\x7fELF" {
        return Err(malformed("no ELF magic at the start of the file"));
    }
    let class = match e[4] {
        1 => ElfClass::Elf32,
        2 => ElfClass::Elf64,
        c => {
            return Err(malformed(format!(
                "ELF class {c} is neither 32- nor 64-bit"
            )))
        }
    };
    if e[5] != 1 {
        return Err(Error::unsupported(
            "ELF dump",
            format!(
                "byte order {} (only little-endian x86 dumps are read)",
                e[5]
            ),
        ));
    }
    let e_type = le16(&e, 16);
    if e_type != ET_CORE {
        return Err(malformed(format!(
            "ELF type {e_type} is not a core file (4)"
        )));
    }
    let machine = le16(&e, 18);
    if machine != EM_X86_64 && machine != EM_386 {
        return Err(Error::unsupported(
            "ELF dump",
            format!(
                "machine {machine} (only x86-64 ({EM_X86_64}) and i386 ({EM_386}) dumps are read)"
            ),
        ));
    }
    let (phoff, shoff, phentsize, phnum, need) = match class {
        ElfClass::Elf64 => {
            if n < 64 {
                return Err(malformed("file too short for an ELF64 header"));
            }
            (le64(&e, 32), le64(&e, 40), le16(&e, 54), le16(&e, 56), 56)
        }
        ElfClass::Elf32 => (
            u64::from(le32(&e, 28)),
            u64::from(le32(&e, 32)),
            le16(&e, 42),
            le16(&e, 44),
            32,
        ),
    };
    if phentsize < need {
        return Err(malformed(format!(
            "program header entries of {phentsize} bytes (at least {need})"
        )));
    }
    let phnum = if phnum == PN_XNUM {
        // The real count is section header 0's sh_info.
        let (sh_info_at, shdr_len) = match class {
            ElfClass::Elf64 => (44, 64),
            ElfClass::Elf32 => (28, 40),
        };
        let shdr = backing.read_vec(shoff, shdr_len)?;
        u64::from(le32(&shdr, sh_info_at))
    } else {
        u64::from(phnum)
    };
    Ok(Header {
        class,
        machine,
        phoff,
        phentsize,
        phnum,
    })
}

fn read_phdrs(backing: &Backing, h: &Header) -> Result<Vec<Phdr>> {
    let table_len = h
        .phnum
        .checked_mul(u64::from(h.phentsize))
        .ok_or_else(|| malformed("program header table size overflows"))?;
    // Bounded by the file size before anything is allocated.
    let table = backing.read_vec(h.phoff, table_len)?;
    let mut out = Vec::with_capacity(h.phnum as usize);
    for entry in table.chunks_exact(usize::from(h.phentsize)) {
        out.push(match h.class {
            ElfClass::Elf64 => Phdr {
                kind: le32(entry, 0),
                offset: le64(entry, 8),
                paddr: le64(entry, 24),
                filesz: le64(entry, 32),
                memsz: le64(entry, 40),
            },
            ElfClass::Elf32 => Phdr {
                kind: le32(entry, 0),
                offset: u64::from(le32(entry, 4)),
                paddr: u64::from(le32(entry, 12)),
                filesz: u64::from(le32(entry, 16)),
                memsz: u64::from(le32(entry, 20)),
            },
        });
    }
    Ok(out)
}

impl ElfDump {
    /// Opens and checks the dump at `path`, mapped ([`Access::Mmap`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, Access::Mmap)
    }

    /// Opens and checks the dump at `path`, read as `access`.
    pub fn open_with(path: impl AsRef<Path>, access: Access) -> Result<Self> {
        Self::parse(Backing::open(path.as_ref(), access)?)
    }

    /// Parses a dump held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::parse(Backing::Bytes(bytes))
    }

    fn parse(backing: Backing) -> Result<Self> {
        let h = read_header(&backing)?;
        let phdrs = read_phdrs(&backing, &h)?;
        let long_mode = h.machine == EM_X86_64;
        let mut segments = Vec::new();
        let mut prstatus: Vec<PrStatus> = Vec::new();
        let mut qemu: Vec<QemuCpuState> = Vec::new();
        let mut vmcoreinfo = None;
        let mut note_bytes = 0u64;
        for p in &phdrs {
            match p.kind {
                PT_LOAD => segments.push(LoadSegment {
                    gpa: Gpa(p.paddr),
                    file_offset: p.offset,
                    file_len: p.filesz,
                    mem_len: p.memsz,
                }),
                PT_NOTE => {
                    note_bytes = note_bytes.saturating_add(p.filesz);
                    if note_bytes > MAX_NOTE_BYTES {
                        return Err(malformed(format!(
                            "more than {MAX_NOTE_BYTES} bytes of notes"
                        )));
                    }
                    let data = backing.read_vec(p.offset, p.filesz)?;
                    for note in parse_notes(&data)? {
                        match (note.name, note.kind) {
                            (b"CORE", NT_PRSTATUS) => {
                                prstatus.push(PrStatus::parse(note.desc, long_mode)?)
                            }
                            (b"QEMU", 0) => qemu.push(QemuCpuState::parse(note.desc)?),
                            (b"VMCOREINFO", _) => {
                                let mut text = note.desc.to_vec();
                                while text.last() == Some(&0) {
                                    text.pop();
                                }
                                vmcoreinfo = Some(text);
                            }
                            _ => {}
                        }
                        if prstatus.len().max(qemu.len()) > MAX_VCPUS {
                            return Err(malformed(format!("more than {MAX_VCPUS} vCPU notes")));
                        }
                    }
                }
                _ => {}
            }
        }
        let map = SegmentMap::new(segments, backing.len())?;
        if map.segments().is_empty() {
            return Err(malformed("no PT_LOAD segment: the dump holds no memory"));
        }
        if !prstatus.is_empty() && !qemu.is_empty() && prstatus.len() != qemu.len() {
            return Err(malformed(format!(
                "{} NT_PRSTATUS notes but {} QEMU notes: they should be one of each per vCPU",
                prstatus.len(),
                qemu.len()
            )));
        }
        let count = prstatus.len().max(qemu.len());
        let vcpus = (0..count)
            .map(|i| DumpVcpu {
                prstatus: prstatus.get(i).copied(),
                qemu: qemu.get(i).copied(),
                long_mode_dump: long_mode,
            })
            .collect();
        Ok(Self {
            backing,
            map,
            class: h.class,
            machine: h.machine,
            vcpus,
            vmcoreinfo,
        })
    }

    /// Number of vCPUs the notes describe (0 for a dump without CPU notes).
    pub fn vcpu_count(&self) -> u32 {
        self.vcpus.len() as u32
    }

    /// What the notes say about `vcpu`.
    pub fn vcpu(&self, vcpu: VcpuId) -> Result<&DumpVcpu> {
        self.vcpus
            .get(usize::from(vcpu.0))
            .ok_or(Error::NoSuchVcpu {
                vcpu,
                count: self.vcpu_count(),
            })
    }

    /// Every vCPU, by index.
    pub fn vcpus(&self) -> &[DumpVcpu] {
        &self.vcpus
    }

    /// The VMCOREINFO note as text, if present and UTF-8 (it is ASCII `KEY=value`
    /// lines when the guest kernel wrote it; the guest controls it, so check what
    /// you use).
    pub fn vmcoreinfo(&self) -> Option<&str> {
        std::str::from_utf8(self.vmcoreinfo.as_deref()?).ok()
    }

    /// The VMCOREINFO note's bytes (trailing NULs removed), if present.
    pub fn vmcoreinfo_bytes(&self) -> Option<&[u8]> {
        self.vmcoreinfo.as_deref()
    }

    /// The `PT_LOAD` segments, sorted by guest-physical address.
    pub fn segments(&self) -> &[LoadSegment] {
        self.map.segments()
    }

    /// ELF class of the file.
    pub fn class(&self) -> ElfClass {
        self.class
    }

    /// ELF machine ([`EM_X86_64`] or [`EM_386`]).
    pub fn machine(&self) -> u16 {
        self.machine
    }

    /// Size of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.backing.len()
    }
}

impl PhysicalMemory for ElfDump {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.map.read(&self.backing, gpa, buf)
    }
}

impl MemoryLayout for ElfDump {
    /// The `PT_LOAD` ranges, adjacent ones merged.
    fn memory_info(&self) -> Result<MemoryInfo> {
        Ok(self.map.memory_info())
    }
}

impl MapPhysical for ElfDump {
    /// The stored part of each `PT_LOAD` segment in the file's private read-only
    /// mapping ([`Access::Mmap`]); [`Error::Unsupported`] with [`Access::Pread`].
    fn mapped_regions(&self) -> Result<Vec<MappedRegion<'_>>> {
        self.map.mapped_regions(&self.backing)
    }
}

impl ReadRegisters for ElfDump {
    /// The part of [`DumpVcpu::snapshot`] that `groups` and `msrs` select; groups the
    /// dump does not hold are left `None`.
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> Result<RegisterSnapshot> {
        Ok(self.vcpu(vcpu)?.snapshot().select(groups, msrs))
    }
}
