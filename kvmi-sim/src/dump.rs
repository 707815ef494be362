//! A simulated guest built from a real guest's memory dump: QEMU's ELF
//! `dump-guest-memory` file, parsed with `vmi-dump`.
//!
//! Guest memory is every `PT_LOAD` segment (4 KiB frames; a frame a segment only partly
//! covers is backed whole, the rest zero), `VM_GET_MAX_GFN` one past the highest. Each
//! vCPU's registers come from its `QEMU` note (GPRs, RIP, RFLAGS, segments with their
//! hidden parts, GDTR, IDTR, CR0/2/3/4) with EFER as [`vmi_dump::DumpVcpu::derived_efer`]
//! (QEMU does not save it); MSRs `EFER`, `FS_BASE`, `GS_BASE` and, where QEMU saved it,
//! `KERNEL_GS_BASE` are served, other MSR reads fail with `EINVAL` as for a real
//! absent MSR. What a dump does not hold is left at the model's reset values: CR8 0,
//! APIC base 0, XCR0 7, an empty XSAVE area, the default CPUID table.
//!
//! The built-in workload executes the default guest's instruction sites, which a
//! dump-backed guest does not have: leave it off ([`crate::Simulator::trigger`] with
//! raw events still works).
//!
//! The dump is parsed by `vmi-dump`, a tool-side crate: the memory and registers
//! served are what that parser read, so a tool's test against a dump-backed simulator
//! checks the tool and the KVMi path, not the dump parser (which has its own tests
//! against live QEMU guests).

use std::collections::BTreeMap;
use std::path::Path;

use kvmi_sys::{KvmDtable, KvmRegs, KvmSegment, KvmSregs};
use vmi_core::registers::{DescriptorTable, Segment};
use vmi_core::{Error, Gpa, PhysicalMemory, VcpuId};
use vmi_dump::ElfDump;

use crate::config::SimConfig;
use crate::model::{msr, GuestMemory, Vcpu};

/// Bytes copied from the dump per read.
const CHUNK: u64 = 1 << 20;

fn kvm_segment(s: &Segment) -> KvmSegment {
    let a = s.attributes;
    KvmSegment {
        base: s.base,
        limit: s.limit,
        selector: s.selector,
        type_: a.type_,
        present: a.present.into(),
        dpl: a.dpl,
        db: a.db.into(),
        s: a.s.into(),
        l: a.l.into(),
        g: a.g.into(),
        avl: a.avl.into(),
        unusable: a.unusable.into(),
        padding: 0,
    }
}

fn kvm_dtable(t: &DescriptorTable) -> KvmDtable {
    KvmDtable {
        base: t.base,
        limit: t.limit,
        padding: [0; 3],
    }
}

/// Guest memory holding every `PT_LOAD` segment of `dump`.
pub fn memory_from_dump(dump: &ElfDump) -> Result<GuestMemory, Error> {
    let mut memory = GuestMemory::new(0);
    let mut buf = vec![0u8; CHUNK as usize];
    for s in dump.segments() {
        let mut done = 0u64;
        while done < s.mem_len {
            let n = (s.mem_len - done).min(CHUNK) as usize;
            let gpa = s.gpa.0 + done;
            dump.read_physical(Gpa(gpa), &mut buf[..n])?;
            memory.load(gpa, &buf[..n]);
            done += n as u64;
        }
    }
    Ok(memory)
}

/// The vCPUs of `dump`, registers from their `QEMU` notes; [`Error::Unsupported`] if
/// a vCPU has none (a dump without control registers cannot run a paged guest).
pub fn vcpus_from_dump(dump: &ElfDump) -> Result<Vec<Vcpu>, Error> {
    (0..dump.vcpu_count())
        .map(|i| {
            let v = dump.vcpu(VcpuId(i as u16))?;
            let snap = v.snapshot();
            let (Some(g), Some(c), Some(s), Some(gdt), Some(idt)) =
                (snap.gprs, snap.control, snap.segments, snap.gdtr, snap.idtr)
            else {
                return Err(Error::unsupported(
                    "kvmi-sim guest from a dump",
                    format!("vCPU {i} has no QEMU note (no control registers or segments)"),
                ));
            };
            let regs = KvmRegs {
                rax: g.rax,
                rbx: g.rbx,
                rcx: g.rcx,
                rdx: g.rdx,
                rsi: g.rsi,
                rdi: g.rdi,
                rsp: g.rsp,
                rbp: g.rbp,
                r8: g.r8,
                r9: g.r9,
                r10: g.r10,
                r11: g.r11,
                r12: g.r12,
                r13: g.r13,
                r14: g.r14,
                r15: g.r15,
                rip: g.rip,
                rflags: g.rflags,
            };
            let efer = snap.efer().unwrap_or(0);
            let sregs = KvmSregs {
                cs: kvm_segment(&s.cs),
                ds: kvm_segment(&s.ds),
                es: kvm_segment(&s.es),
                fs: kvm_segment(&s.fs),
                gs: kvm_segment(&s.gs),
                ss: kvm_segment(&s.ss),
                tr: kvm_segment(&s.tr),
                ldt: kvm_segment(&s.ldtr),
                gdt: kvm_dtable(&gdt),
                idt: kvm_dtable(&idt),
                cr0: c.cr0,
                cr2: c.cr2,
                cr3: c.cr3,
                cr4: c.cr4,
                cr8: c.cr8,
                efer,
                ..KvmSregs::default()
            };
            let msrs: BTreeMap<u32, u64> = snap
                .msrs
                .iter()
                .filter(|(m, _)| {
                    [msr::EFER, msr::FS_BASE, msr::GS_BASE, msr::KERNEL_GS_BASE].contains(m)
                })
                .collect();
            Ok(Vcpu::with_state(regs, sregs, msrs))
        })
        .collect()
}

impl SimConfig {
    /// The default configuration with the guest of `dump`: its memory, its vCPU count
    /// and each vCPU's registers (see the [module](crate::dump) documentation).
    pub fn from_dump(dump: &ElfDump) -> Result<Self, Error> {
        let vcpus = vcpus_from_dump(dump)?;
        if vcpus.is_empty() {
            return Err(Error::unsupported(
                "kvmi-sim guest from a dump",
                "the dump has no vCPU notes",
            ));
        }
        Ok(Self {
            vcpus: vcpus.len(),
            initial_vcpus: Some(vcpus),
            memory: memory_from_dump(dump)?,
            ..Self::default()
        })
    }

    /// [`SimConfig::from_dump`] of the ELF dump file at `path`.
    pub fn from_dump_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        Self::from_dump(&ElfDump::open(path)?)
    }
}
