//! Linux OS awareness for virtual machine introspection, read from the guest itself.
//!
//! Every peer (LibVMI, vmi-rs, memflow-linux, Volatility 3) needs an artefact prepared for
//! the exact kernel build: a System.map, an ISF/Rekall JSON, a debug vmlinux, an offsets
//! module run inside the guest. Distribution kernels already carry what is needed in
//! guest memory: the **kallsyms** tables and the kernel's own **BTF** type information
//! (CONFIG_DEBUG_INFO_BTF: Debian ≥ 11, Ubuntu ≥ 20.10, Fedora, RHEL ≥ 8.2). This crate
//! reads both from a paused guest, through any `vmi-core` backend with physical memory
//! and registers — vmi-legacy (unpatched QEMU), vmi-kvm (KVMi), or a memory dump.
//!
//! ```no_run
//! use vmi_core::VcpuControl;
//! use vmi_legacy::{LegacyConfig, LegacyQemu};
//! use vmi_linux::{Linux, LinuxOptions};
//!
//! let vm = LegacyQemu::connect(LegacyConfig::new("/tmp/qmp.sock"))?;
//! let _paused = vm.pause()?;
//! let linux = Linux::attach(&vm, LinuxOptions::default())?;
//! println!("{}", linux.kernel().banner);
//! for p in linux.processes()? {
//!     println!("{:>6} {:<16} {:?}", p.pid, p.comm, linux.cmdline(&p)?);
//! }
//! let va = linux.symbol("do_sys_openat2")?; // a breakpoint target by name
//! let (sym, off) = linux.symbols().symbol_at(va + 3).unwrap();
//! assert_eq!((sym.name, off), ("do_sys_openat2", 3));
//! let vruntime = linux.object("task_struct", linux.symbol("init_task")?).read_uint("se.vruntime")?;
//! # let _ = vruntime;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Bootstrap
//!
//! [`Linux::attach`] runs these steps, each checked by the next, and records in its
//! [`BootstrapReport`] what came from where:
//!
//! 1. **Kernel page tables** from a vCPU's CR3 with PCID and the KPTI user-PGD bit masked
//!    ([`kernel_map`]), so a vCPU paused in user mode under `pti=on` works too.
//! 2. **Kernel image**: the first mapped 2 MiB slot of the kernel map is `_text`; the
//!    mapped image is copied once by walking its page tables; the IDT's divide-error gate
//!    and LSTAR must land inside it.
//! 3. **Banner** (`Linux version …`) and the release.
//! 4. **Symbols**: kallsyms decoded from the image copy in every layout x86-64 kernels
//!    5.10–7.x use ([`kallsyms`]); a candidate is accepted only when `_text` and
//!    `linux_banner` agree with steps 2 and 3.
//! 5. **Types**: the kernel's `.BTF` carved from the image copy ([`types`]).
//! 6. **Validation**: `init_task` has pid 0, comm `swapper…`, no mm, and a task list
//!    linked both ways.
//!
//! Fallbacks, selectable in [`LinuxOptions`]: a Volatility 3 ISF (types and symbols, slide
//! applied), a BTF file with in-memory kallsyms, a System.map with BTF.
//!
//! # Kernel differences
//!
//! Handled from the kernel's types, not its version: `state`/`__state`, the VMA list vs
//! the maple tree (6.1), `module_core`/`core_layout`/`mem[]` (6.4), the lockless printk
//! ring buffer (5.10), the current task through `current_task` or `pcpu_hot`, 5-level
//! paging, and CONFIG_RANDOMIZE_MEMORY (a direct-map address is translated through the
//! page tables, never converted by subtracting a constant).
//!
//! # Untrusted guest
//!
//! Everything read from the guest is untrusted: malformed tables, loops and absurd counts
//! are typed [`Error`]s, every walk is bounded, and no allocation is sized by a guest
//! value without a cap.

pub mod dmesg;
pub mod error;
pub mod image;
pub mod kallsyms;
pub mod kernel_map;
pub mod layout;
pub mod linux;
pub mod modules;
pub mod object;
pub mod reader;
pub mod symbols;
pub mod tasks;
pub mod types;
pub mod vma;
pub mod vmcoreinfo;
mod window;

pub use dmesg::LogRecord;
pub use error::{Error, Result};
pub use image::ImageCopy;
pub use linux::{BootstrapReport, KernelInfo, Linux, LinuxOptions, SymbolSource, TypeSource};
pub use modules::{Module, ModuleState};
pub use object::Object;
pub use symbols::{Symbol, SymbolTable, SymbolTableBuilder};
pub use tasks::{Process, TaskState};
pub use types::{Field, Types};
pub use vma::Vma;
pub use vmcoreinfo::Vmcoreinfo;
