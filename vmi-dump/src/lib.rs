//! Guest memory dumps as `vmi-core` backends, so the same introspection code serves
//! live guests and forensics.
//!
//! * [`ElfDump`]: QEMU's `dump-guest-memory` ELF core (QMP `dump-guest-memory` with
//!   `"paging": false`, `virsh dump --memory-only`). Memory from the `PT_LOAD`
//!   segments by physical address, per-vCPU registers from the `QEMU` and
//!   `NT_PRSTATUS` notes, the guest kernel's VMCOREINFO. It implements
//!   [`PhysicalMemory`](vmi_core::PhysicalMemory),
//!   [`MemoryLayout`](vmi_core::MemoryLayout), [`MapPhysical`](vmi_core::MapPhysical)
//!   and [`ReadRegisters`](vmi_core::ReadRegisters) — hence also
//!   [`VirtualMemory`](vmi_core::VirtualMemory).
//! * [`RawDump`]: a flat file of guest-physical memory (QMP `pmemsave`, a copy of a
//!   RAM backend file): memory only.
//! * [`write_elf_dump`]: writes QEMU's ELF layout from any memory and registers.
//!
//! Files are mapped privately and read-only ([`Access::Mmap`], the default) or read
//! with `pread` ([`Access::Pread`]). A dump is untrusted input: malformed headers and
//! notes give [`vmi_core::Error::Malformed`], never a panic, and nothing is allocated
//! beyond what the file holds.
//!
//! ```no_run
//! use vmi_core::{Gva, VcpuId, VirtualMemory};
//! use vmi_dump::ElfDump;
//!
//! let dump = ElfDump::open("guest.elf")?;
//! let vcpu = VcpuId(0);
//! let banner = dump.read_va_cstr(vcpu, Gva(0xffff_ffff_8200_0100), 256)?;
//! println!("{} vCPUs; {}", dump.vcpu_count(), String::from_utf8_lossy(&banner));
//! # Ok::<(), vmi_core::Error>(())
//! ```

mod backing;
mod elf;
mod notes;
mod raw;
mod vcpu;
mod writer;

pub use backing::{Access, LoadSegment};
pub use elf::{ElfClass, ElfDump, EM_386, EM_X86_64, MAX_NOTE_BYTES, MAX_VCPUS};
pub use notes::{PrStatus, QemuCpuState};
pub use raw::{RawDump, RawRange};
pub use vcpu::{DumpVcpu, EFER_DERIVED_BITS, EFER_LMA, EFER_LME, EFER_NXE};
pub use writer::write_elf_dump;

#[cfg(test)]
mod tests;
