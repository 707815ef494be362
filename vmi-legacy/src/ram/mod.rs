//! Guest RAM access, fastest first.
//!
//! * [`SharedRam`] maps QEMU's RAM backend into this process (`mmap`, `MAP_SHARED`):
//!   a `memory-backend-file,share=on` file, or the memfd (or deleted hugetlbfs file) of a
//!   running QEMU opened through `/proc/<pid>/fd`. Reads and writes are plain memory
//!   copies. Zero-copy access is offered through [`MapPhysical`](vmi_core::memory::MapPhysical).
//! * [`ProcMem`] copies from and to QEMU's own mapping of the RAM with
//!   `process_vm_readv`/`process_vm_writev`: one system call per request (or per
//!   batch), works for anonymous RAM too, needs ptrace access to QEMU.
//! * [`QmpMemory`] asks QEMU over QMP: `pmemsave` into a scratch file (one command per
//!   chunk of up to 16 MiB) or HMP `xp` (text, slow). Read-only. Last resort.
//!
//! All three translate guest physical addresses with a [`RamLayout`] and fail with
//! [`Error::UnmappedPhysical`] outside it; an access may cross from one RAM range into
//! an adjacent one.
//!
//! **Writes bypass QEMU**: they do not mark pages dirty for live migration, and under
//! TCG they do not invalidate translated code, so patched guest code may keep running
//! in its old form until QEMU flushes its translation cache. With KVM, the guest sees
//! writes at once.

use vmi_core::{Error, Result};

use crate::layout::RamLayout;

mod procmem;
mod qmp;
mod shared;

pub use procmem::ProcMem;
pub use qmp::{QmpMemory, QmpReadMethod};
pub use shared::{find_memfd, SharedRam};

fn single_backend(layout: &RamLayout) -> Result<()> {
    let names = layout.backend_names();
    match names.len() {
        0 => Err(Error::InvalidArgument {
            what: "RAM layout",
            reason: "the layout holds no RAM".into(),
        }),
        1 => Ok(()),
        _ => Err(Error::InvalidArgument {
            what: "RAM layout",
            reason: format!(
                "the layout spans several backends ({}); select one with RamLayout::for_backend",
                names.join(", ")
            )
            .into(),
        }),
    }
}

#[cfg(test)]
mod tests;
