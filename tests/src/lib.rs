//! Fixtures for the integration tests: real QEMU guests to introspect.
//!
//! `cargo xtask test` provisions QEMU, a Debian cloud kernel and a busybox initramfs, picks
//! the accelerator, and runs the tests with `VMI_GUEST_KERNEL`, `VMI_GUEST_INITRD` and
//! `VMI_GUEST_ACCEL` set. A test then boots a guest:
//!
//! ```no_run
//! use std::time::Duration;
//! use vmi_tests::{Guest, GuestOptions};
//!
//! # fn main() -> std::io::Result<()> {
//! let guest = Guest::launch(GuestOptions::from_env())?; // panics if not provisioned
//! let markers = guest.wait_ready()?;
//! let banner_va = markers.kallsyms("linux_banner").unwrap();
//! // QMP: guest.qmp_socket(), GDB stub: guest.gdb_socket(),
//! // RAM: mmap guest.ram_path() (guest.ram_size() bytes, shared).
//! let out = guest.run_command("cat /proc/cpuinfo", Duration::from_secs(30))?;
//! # let _ = (banner_va, out);
//! # Ok(())
//! # }
//! ```
//!
//! The guest's `/init` prints `VMI-TEST …` markers on the serial console (see
//! [`markers`]), then prints `VMI-TEST tick <n>` every 5 s while reading `/proc/uptime`
//! every second, and runs one-line shell commands sent by [`Guest::run_command`].
//!
//! The kernel matrix ([`matrix`], `VMI_LINUX_KERNELS`) holds real Debian kernels from 5.10
//! to the newest, each with its own initramfs ([`GuestOptions::for_matrix_kernel`]);
//! [`truth`] reads ground truth (kallsyms, processes, modules, dmesg, memory maps) from
//! inside a running guest to check introspection against.

pub mod conformance;
pub mod dump;
pub mod examples;
pub mod guest;
pub mod kvmi;
pub mod markers;
pub mod matrix;
mod output;
pub mod overlay;
pub mod paths;
pub mod scan;
pub mod truth;
pub mod volatility;

pub use guest::{CommandOutput, Guest, GuestOptions, RamBackend, DEFAULT_APPEND};
pub use markers::Markers;
pub use matrix::MatrixKernel;
pub use paths::{Accel, GuestPaths};

// Guests may be shared between test threads (e.g. behind a `OnceLock`).
const _: fn() = || {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Guest>();
};
