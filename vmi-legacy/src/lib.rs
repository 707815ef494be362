//! The legacy backend of `vmi-core`: introspection of an **unpatched** QEMU guest
//! (KVM or TCG), with nothing but what stock QEMU offers — the QMP socket, the human
//! monitor's text, QEMU's GDB stub, and access to the guest's RAM backend.
//!
//! Layering: `vmi-core` defines
//! the backend-neutral traits ([`PhysicalMemory`](vmi_core::PhysicalMemory),
//! [`ReadRegisters`](vmi_core::ReadRegisters), [`VcpuControl`](vmi_core::VcpuControl),
//! …); `vmi-legacy` implements them for a QEMU process, next to `vmi-kvm`, which
//! implements them over a patched kernel's KVMi socket. Tools program against
//! `vmi-core` and pick a backend.
//!
//! # Layers
//!
//! * [`qmp`] — a QMP client over a UNIX socket: negotiation, commands matched to
//!   replies by id, a bounded event queue, time limits and bounded message sizes.
//! * [`hmp`] — parsers for HMP text: `info registers`, `info lapic`, `info mtree -f`,
//!   `xp`, `gpa2hva`.
//! * [`layout`] — the guest-physical RAM layout and its translation to RAM-backend
//!   offsets.
//! * [`ram`] — guest RAM access, fastest first: [`SharedRam`] (the RAM backend mapped
//!   into this process), [`ProcMem`] (`process_vm_readv` into QEMU), [`QmpMemory`]
//!   (`pmemsave`/`xp`).
//! * [`pmemaccess`] — [`PmemAccess`], the client of LibVMI's old fast-memaccess QEMU
//!   patch, for hosts still running such a QEMU.
//! * [`procfs`] — what `/proc` says about the QEMU process.
//! * [`liveness`] — noticing that QEMU exited (shared RAM stays readable after it).
//! * [`gdb`] — a GDB remote-protocol client for QEMU's gdbstub: [`gdb::codec`] (framing,
//!   checksums, packet scanning, stop replies, target XML; no I/O), its transports, and
//!   [`gdb::GdbClient`].
//! * [`attach`] — checks before attaching to the gdbstub: a stub another client holds
//!   is refused ([`attach::StubInUse`]), and a guest a killed tool left stopped at its
//!   breakpoints is recovered.
//! * [`debugger`] — [`GdbSession`]: registers, pause/resume, breakpoints, watchpoints
//!   and single steps through the gdbstub, as `vmi-core` events.
//! * [`session`] — [`LegacyQemu`], which ties them together and implements the
//!   `vmi-core` traits.
//!
//! # What works without patching QEMU, and what does not
//!
//! Guest memory reads and writes (fast with a shared RAM backend or ptrace access to
//! QEMU), the memory layout, register reads (GPRs, control, debug, segment and
//! descriptor-table registers, EFER), vCPU count, and pause/resume with
//! reference-counted guards. With the GDB stub ([`LegacyConfig::gdb_socket`]): exact
//! GPRs/CRs/EFER and FS/GS/KERNEL_GS_BASE, register writes (GPRs, CRs, EFER, those
//! MSRs), breakpoint, single-step and watchpoint events. Not available: CR/MSR and
//! instruction traps, page-permission events, views, XCR0 and other MSRs (KVMi only);
//! `Backend::capabilities` lists every row with its reason.
//!
//! Under KVM ([`Accelerator`]) breakpoints are hardware breakpoints: at most 4
//! breakpoints and watchpoints together, no `0xCC` in guest memory; the fifth fails with
//! an error that says so. The `vmi-legacy/examples/` (`dump-memory`, `map-addr`,
//! `breakpoint`, `singlestep`) show the API end to end.
//!
//! # Requirements
//!
//! * QEMU ≥ 2.12 (`query-cpus-fast`; `gpa2hva`, used to find QEMU's RAM mapping,
//!   exists since 2.10), started with a QMP UNIX socket. QMP serves one client at a
//!   time: while a session is connected, nobody else can use that socket.
//! * For [`SharedRam`] through `/proc/<pid>/fd` and for [`ProcMem`]: QEMU on this host
//!   and ptrace access to it (same user, and `kernel.yama.ptrace_scope` 0 or
//!   `CAP_SYS_PTRACE` for `process_vm_readv`). For `SharedRam` the backend must be
//!   shared (`share=on`; `memory-backend-memfd` is shared by default).
//! * For [`QmpMemory`] with `pmemsave`: QEMU must be able to write a scratch file that
//!   this process can read.
//!
//! # Example
//!
//! Start QEMU with a QMP socket and a shared RAM backend:
//!
//! ```text
//! qemu-system-x86_64 -accel kvm -m 1G \
//!     -object memory-backend-memfd,id=ram0,size=1G,share=on -machine memory-backend=ram0 \
//!     -qmp unix:/run/vm.qmp,server=on,wait=off ...
//! ```
//!
//! ```no_run
//! use vmi_core::{PhysicalMemory, ReadRegisters, VcpuControl, VcpuId, Gpa};
//! use vmi_legacy::{LegacyConfig, LegacyQemu};
//!
//! # fn main() -> vmi_core::Result<()> {
//! let vm = LegacyQemu::connect(LegacyConfig::new("/run/vm.qmp"))?;
//! println!("QEMU {}, RAM via {}", vm.version(), vm.ram_access().kind());
//!
//! let _paused = vm.pause()?; // resumed when dropped
//! let regs = vm.all_registers(VcpuId(0))?;
//! let cr3 = regs.control.map(|c| c.cr3);
//! let mut page = [0u8; 4096];
//! vm.read_physical(Gpa(0x1000), &mut page)?;
//! println!("CR3 = {cr3:x?}, vCPUs: {}", vm.vcpu_count()?);
//! # Ok(())
//! # }
//! ```

pub mod attach;
pub mod capabilities;
pub mod debugger;
pub mod gdb;
pub mod hmp;
pub mod layout;
pub mod liveness;
pub mod pmemaccess;
pub mod procfs;
pub mod qmp;
pub mod ram;
pub mod session;
mod sockets;

pub use debugger::{Accelerator, GdbSegments, GdbSession};
pub use layout::{RamLayout, RamRange};
pub use pmemaccess::PmemAccess;
pub use qmp::{QmpClient, QmpError, QmpEvent};
pub use ram::{ProcMem, QmpMemory, QmpReadMethod, SharedRam};
pub use session::{LegacyConfig, LegacyQemu, RamAccess, RamSource};
