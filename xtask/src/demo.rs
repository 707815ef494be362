//! `cargo xtask demo`: boot the test guest and show what it reports.

use std::time::Instant;

use vmi_tests::{Guest, GuestOptions, GuestPaths};

use crate::util::Result;

/// Boots the guest described by `paths`, waits for `VMI-TEST ready` and prints its markers.
pub(crate) fn run(paths: &GuestPaths) -> Result {
    let start = Instant::now();
    let guest = Guest::launch(GuestOptions::new(paths.clone()))?;
    println!("QEMU pid {} ({} accel)", guest.pid(), guest.accel());
    println!("  QMP socket: {}", guest.qmp_socket().display());
    println!("  GDB socket: {}", guest.gdb_socket().display());
    println!(
        "  guest RAM:  {} ({} MiB, shared)",
        guest.ram_path().display(),
        guest.ram_size() >> 20
    );
    let markers = guest.wait_ready()?;
    println!("guest ready after {:.1?}", start.elapsed());
    for (key, value) in markers.iter() {
        if value.is_empty() {
            println!("  {key}");
        } else {
            println!("  {key} = {value}");
        }
    }
    Ok(())
}
