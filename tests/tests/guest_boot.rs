//! The guest fixture itself: boot, markers, shared RAM, sockets, console commands.

use std::io;
use std::time::{Duration, Instant};

use vmi_tests::{Guest, GuestOptions, RamBackend};

/// Maps the guest RAM file read-only and shared, as an introspection backend would.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(guest: &Guest) -> io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(guest.ram_path())?;
        let len = usize::try_from(guest.ram_size()).map_err(io::Error::other)?;
        // SAFETY: mapping a file we opened; the result is checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }

    /// The offset (guest-physical address) of the first occurrence of `needle`.
    fn find(&self, needle: &[u8]) -> Option<u64> {
        // SAFETY: `ptr..ptr+len` is our live mapping and `needle` a valid slice; memmem
        // only reads both.
        let hit = unsafe { libc::memmem(self.ptr, self.len, needle.as_ptr().cast(), needle.len()) };
        (!hit.is_null()).then(|| hit as u64 - self.ptr as u64)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// The banner `/init` printed must be in guest RAM, seen through a shared mapping.
fn assert_banner_in_ram(guest: &Guest, banner: &str) -> io::Result<()> {
    let map = Mapping::new(guest)?;
    let gpa = map.find(banner.as_bytes()).unwrap_or_else(|| {
        panic!(
            "banner not found in guest RAM ({})",
            guest.ram_path().display()
        )
    });
    let mut buf = vec![0; banner.len()];
    guest.read_ram(gpa, &mut buf)?;
    assert_eq!(buf, banner.as_bytes());
    Ok(())
}

#[test]
fn boots_and_reports_markers() -> io::Result<()> {
    let start = Instant::now();
    let guest = Guest::launch(GuestOptions::from_env())?;
    assert!(guest.qmp_socket().exists(), "no QMP socket");
    assert!(guest.gdb_socket().exists(), "no GDB socket");
    assert_eq!(guest.ram_backend(), RamBackend::File);
    assert_eq!(guest.ram_size(), 256 << 20);
    let meta = std::fs::metadata(guest.ram_path())?;
    assert!(meta.is_file());
    assert_eq!(meta.len(), guest.ram_size(), "RAM file size");

    let markers = guest.wait_ready()?;
    eprintln!(
        "guest ready after {:.1?} ({})",
        start.elapsed(),
        guest.accel()
    );
    let banner = markers.banner().expect("no banner marker");
    assert!(banner.starts_with("Linux version "), "banner: {banner:?}");
    let linux_banner = markers.kallsyms("linux_banner").expect("no linux_banner");
    assert!(
        linux_banner >= 0xffff_ffff_8000_0000,
        "linux_banner {linux_banner:#x} is not in the kernel image mapping"
    );
    assert!(markers.kallsyms("init_task").is_some());
    assert_eq!(guest.kallsyms("linux_banner"), Some(linux_banner));
    assert_eq!(markers.cpus(), Some(2));
    let mem = markers.memtotal_kib().expect("no memtotal");
    assert!(mem > 100 << 10 && mem < 256 << 10, "memtotal {mem} kB");

    assert_banner_in_ram(&guest, banner)?;

    // The console command loop, while the tick loop keeps running.
    let out = guest.run_command("echo hello; echo err >&2; exit 3", Duration::from_secs(60))?;
    assert_eq!(out.rc, 3);
    assert_eq!(out.lines, ["hello", "err"]);
    let uptime = guest.run_command("cat /proc/uptime", Duration::from_secs(60))?;
    assert_eq!(uptime.rc, 0);
    let n = guest.serial_line_count();
    guest.wait_for_serial_from(n, "VMI-TEST tick", Duration::from_secs(30))?;
    assert!(guest.is_running());
    Ok(())
}

#[test]
fn memfd_backend_is_shared() -> io::Result<()> {
    let mut opts = GuestOptions::from_env();
    opts.ram_backend = RamBackend::Memfd;
    opts.memory_mib = 192;
    opts.cpus = 1;
    let guest = Guest::launch(opts)?;
    let path = guest.ram_path().to_owned();
    assert!(
        path.starts_with(format!("/proc/{}/fd", guest.pid())),
        "memfd RAM path {}",
        path.display()
    );
    assert_eq!(std::fs::metadata(&path)?.len(), 192 << 20);
    let markers = guest.wait_ready()?;
    assert_eq!(markers.cpus(), Some(1));
    assert_banner_in_ram(&guest, markers.banner().expect("no banner"))?;
    Ok(())
}

#[test]
fn drop_kills_qemu_and_cleans_up() -> io::Result<()> {
    let mut opts = GuestOptions::from_env();
    opts.paused = true; // never boots: this test is about process handling only
    opts.cpus = 1;
    let guest = Guest::launch(opts)?;
    let pid = guest.pid();
    let dir = guest.dir().to_owned();
    assert!(dir.exists());
    drop(guest);
    assert!(!dir.exists(), "{} left behind", dir.display());
    // Reaped, so the pid is gone (or reused by an unrelated process, which is fine).
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    assert!(!comm.starts_with("qemu"), "QEMU {pid} still running");
    Ok(())
}

#[test]
fn wait_for_serial_times_out_with_context() -> io::Result<()> {
    let mut opts = GuestOptions::from_env();
    opts.paused = true;
    opts.cpus = 1;
    let guest = Guest::launch(opts)?;
    let err = guest
        .wait_for_serial("never printed", Duration::from_millis(300))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    let msg = err.to_string();
    assert!(
        msg.contains("never printed") && msg.contains("QEMU stderr"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn watchdog_kills_a_guest_that_outlives_its_lifetime() -> io::Result<()> {
    let mut opts = GuestOptions::from_env();
    opts.paused = true;
    opts.cpus = 1;
    opts.lifetime = Duration::from_secs(2);
    let guest = Guest::launch(opts)?;
    let err = guest
        .wait_for_serial("never printed", Duration::from_secs(60))
        .unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
    assert!(err.to_string().contains("watchdog"), "{err}");
    assert!(!guest.is_running());
    Ok(())
}
