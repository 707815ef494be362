//! A real QEMU guest: process, sockets, shared RAM, serial console, watchdog.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::markers::{Markers, READY};
use crate::output::{LineBuffer, Wait};
use crate::paths::{Accel, GuestPaths};

mod host;
use host::{Permit, TempDir};

/// The kernel command line guests boot with by default.
///
/// KASLR stays on: tests learn kernel addresses from the `kallsyms` markers. The rest keeps
/// the console quiet (only `/init`'s markers and real trouble) and shortens boot under TCG.
pub const DEFAULT_APPEND: &str = "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init \
                                  tsc=reliable no_timer_check mitigations=off \
                                  8250.nr_uarts=1 i8042.noaux i8042.nopnp";

/// Environment variable: the most guests one test process runs at once (default 2).
pub const ENV_MAX_GUESTS: &str = "VMI_MAX_GUESTS";
/// Environment variable: default guest lifetime in seconds before the watchdog kills it.
pub const ENV_LIFETIME: &str = "VMI_GUEST_LIFETIME_SECS";
/// Environment variable: default boot timeout in seconds for [`Guest::wait_ready`].
pub const ENV_BOOT_TIMEOUT: &str = "VMI_GUEST_BOOT_TIMEOUT_SECS";
/// Environment variable: if set (non-empty, not `0`), serial lines are echoed to stderr.
pub const ENV_ECHO: &str = "VMI_GUEST_ECHO";
/// Environment variable: directory for the per-guest temporary directories.
pub const ENV_TMPDIR: &str = "VMI_GUEST_TMPDIR";
/// Environment variable: the QEMU binary (default `qemu-system-x86_64` from `PATH`).
pub const ENV_QEMU: &str = "VMI_QEMU";
/// Environment variable: path of the purpose-built test guest (see
/// [`GuestOptions::test_guest`]).
pub const ENV_TEST_GUEST: &str = "VMI_TEST_GUEST";
/// Environment variable: the accelerator of the test guest (`kvm` or `tcg`), decided by
/// `cargo xtask` from a trial boot of the test guest itself (it boots under KVM on hosts
/// where a Linux guest does not). Unset: the Linux guest's [`crate::paths::ENV_ACCEL`].
pub const ENV_TEST_GUEST_ACCEL: &str = "VMI_TEST_GUEST_ACCEL";

/// How long QEMU gets to create its sockets and guest RAM.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long QEMU gets to exit after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(2);

/// Where guest RAM lives; both are shared mappings another process can `mmap`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RamBackend {
    /// `memory-backend-file,share=on` on a file in the guest's temporary directory.
    File,
    /// `memory-backend-memfd,share=on`; [`Guest::ram_path`] is then `/proc/<qemu>/fd/<n>`.
    Memfd,
}

/// How to launch a [`Guest`]. Construct with [`GuestOptions::new`] or
/// [`GuestOptions::from_env`], then adjust the public fields.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// Kernel, initramfs and accelerator.
    pub paths: GuestPaths,
    /// Guest RAM in MiB (default 256).
    pub memory_mib: u32,
    /// Number of vCPUs (default 2).
    pub cpus: u32,
    /// Where guest RAM lives (default [`RamBackend::File`]).
    pub ram_backend: RamBackend,
    /// Kernel command line (default [`DEFAULT_APPEND`]).
    pub append: String,
    /// `-cpu` model; `None` is QEMU's default for the accelerator.
    pub cpu_model: Option<String>,
    /// Start with vCPUs stopped (`-S`); resume them through QMP `cont`.
    pub paused: bool,
    /// After this long a watchdog kills QEMU (default 300 s or [`ENV_LIFETIME`]).
    pub lifetime: Duration,
    /// Timeout of [`Guest::wait_ready`] (default 180 s under TCG, 60 s under KVM, or
    /// [`ENV_BOOT_TIMEOUT`]).
    pub boot_timeout: Duration,
    /// The QEMU binary (default `qemu-system-x86_64`, or [`ENV_QEMU`]).
    pub qemu: PathBuf,
    /// More QEMU arguments, appended last.
    pub extra_args: Vec<OsString>,
    /// Echo serial lines to stderr (default: [`ENV_ECHO`] is set).
    pub echo_serial: bool,
}

fn env_secs(name: &str) -> Option<Duration> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse::<u64>() {
        Ok(s) => Some(Duration::from_secs(s)),
        Err(_) => panic!("{name}={v:?} is not a number of seconds"),
    }
}

/// The `-accel` value for `accel` with `cpus` vCPUs.
///
/// Multi-threaded TCG (QEMU's default with more than one vCPU) loses cross-modifying code
/// between vCPU threads now and then: Linux patches a static branch with `text_poke_bp`
/// (int3 first, then the new bytes, a sync IPI, then the int3 removed) and another vCPU
/// still executes the stale int3 after the patch completed, which the kernel reports as
/// `Oops: int3` and panics on (seen booting Debian 6.12 on QEMU 7.2, about one boot in a
/// few hundred). One TCG thread running the vCPUs in turn cannot interleave inside a
/// translated block, so the guest sees code changes exactly as it made them.
fn accel_option(accel: Accel, cpus: u32) -> String {
    match accel {
        Accel::Tcg if cpus > 1 => "tcg,thread=single".to_owned(),
        other => other.as_str().to_owned(),
    }
}

impl GuestOptions {
    /// Default options for a guest booting `paths`.
    pub fn new(paths: GuestPaths) -> Self {
        let boot_timeout = env_secs(ENV_BOOT_TIMEOUT).unwrap_or(match paths.accel {
            Accel::Kvm => Duration::from_secs(60),
            Accel::Tcg => Duration::from_secs(180),
        });
        GuestOptions {
            paths,
            memory_mib: 256,
            cpus: 2,
            ram_backend: RamBackend::File,
            append: DEFAULT_APPEND.to_owned(),
            cpu_model: None,
            paused: false,
            lifetime: env_secs(ENV_LIFETIME).unwrap_or(Duration::from_secs(300)),
            boot_timeout,
            qemu: std::env::var_os(ENV_QEMU)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from("qemu-system-x86_64"), PathBuf::from),
            extra_args: Vec::new(),
            echo_serial: std::env::var_os(ENV_ECHO).is_some_and(|v| !v.is_empty() && v != "0"),
        }
    }

    /// Default options for the guest `cargo xtask` provisioned; panics with instructions if
    /// the environment does not name one (so guest tests fail rather than silently pass).
    #[track_caller]
    pub fn from_env() -> Self {
        Self::new(GuestPaths::from_env_or_panic())
    }

    /// Options for the purpose-built test guest (`xtask/guest/testguest.S`, path in
    /// `VMI_TEST_GUEST`, set by `cargo xtask test`): one vCPU, 64 MiB, no command line,
    /// on the accelerator `VMI_TEST_GUEST_ACCEL` names ([`ENV_TEST_GUEST_ACCEL`]).
    /// It prints the same `VMI-TEST` markers as the Linux guest, with its sites and
    /// variables as `kallsyms` entries.
    #[track_caller]
    pub fn test_guest() -> Self {
        let kernel = std::env::var_os(ENV_TEST_GUEST)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                panic!("{ENV_TEST_GUEST} is not set: run the tests with `cargo xtask test`")
            });
        let mut paths = GuestPaths::from_env_or_panic();
        paths.kernel = kernel;
        if let Ok(v) = std::env::var(ENV_TEST_GUEST_ACCEL) {
            if !v.trim().is_empty() {
                paths.accel = v
                    .parse()
                    .unwrap_or_else(|e| panic!("{ENV_TEST_GUEST_ACCEL}: {e}"));
            }
        }
        let mut opts = Self::new(paths);
        opts.memory_mib = 64;
        opts.cpus = 1;
        opts.append = String::new();
        opts
    }

    /// The RAM size in bytes.
    pub fn ram_size(&self) -> u64 {
        u64::from(self.memory_mib) << 20
    }
}

// ---------------------------------------------------------------------------------------
// The guest.

/// What a command run with [`Guest::run_command`] printed, and its exit status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// The shell's exit status.
    pub rc: i32,
    /// Output lines (stdout and stderr), without the guest's `tick` markers.
    pub lines: Vec<String>,
}

/// A running QEMU guest. Dropping it kills QEMU (SIGTERM, then SIGKILL) and removes its
/// temporary directory; a watchdog kills it anyway after [`GuestOptions::lifetime`], and the
/// kernel kills it if the test process dies (`PR_SET_PDEATHSIG`).
///
/// QEMU's interfaces, all in a fresh temporary directory:
/// - QMP on the UNIX socket [`Guest::qmp_socket`] (server; connect any time),
/// - the GDB stub on the UNIX socket [`Guest::gdb_socket`],
/// - guest RAM as a shared mapping at [`Guest::ram_path`], [`Guest::ram_size`] bytes,
///   guest-physical address 0 at offset 0 (and, above 3 GiB of RAM, the usual PC hole),
/// - the serial console (ttyS0, the guest's `/dev/console`) collected line by line.
///
/// At most [`ENV_MAX_GUESTS`] (default 2) guests run at once per process; further
/// [`Guest::launch`] calls wait for a slot.
#[derive(Debug)]
pub struct Guest {
    child: Arc<Mutex<Child>>,
    pid: u32,
    stdin: Mutex<Option<ChildStdin>>,
    serial: Arc<LineBuffer>,
    stderr: Arc<LineBuffer>,
    readers: Vec<JoinHandle<()>>,
    watchdog: Option<(Sender<()>, JoinHandle<()>)>,
    expired: Arc<AtomicBool>,
    qmp: PathBuf,
    gdb: PathBuf,
    ram_path: PathBuf,
    ram_size: u64,
    ram_backend: RamBackend,
    accel: Accel,
    boot_timeout: Duration,
    lifetime: Duration,
    command_line: String,
    launched: Instant,
    next_command: AtomicU64,
    // Dropped after QEMU is dead (see `Drop`): the directory, then the slot.
    dir: TempDir,
    _permit: Permit,
}

impl Guest {
    /// Starts QEMU and returns once its QMP and GDB sockets and guest RAM exist; the guest
    /// then boots in the background (see [`Guest::wait_ready`]).
    pub fn launch(opts: GuestOptions) -> io::Result<Guest> {
        let permit = Permit::acquire(opts.lifetime + Duration::from_secs(60))?;
        let ram_size = opts.ram_size();
        let dir = TempDir::create(ram_size, opts.ram_backend)?;
        let qmp = dir.0.join("qmp.sock");
        let gdb = dir.0.join("gdb.sock");
        let ram_file = dir.0.join("guest-ram");

        let mut args: Vec<OsString> = Vec::new();
        let mut arg = |a: &str| args.push(a.into());
        let mib = opts.memory_mib;
        arg("-name");
        arg("vmi-test-guest,debug-threads=on");
        arg("-machine");
        arg("pc,memory-backend=ram0");
        arg("-accel");
        arg(&accel_option(opts.paths.accel, opts.cpus));
        if let Some(cpu) = &opts.cpu_model {
            arg("-cpu");
            arg(cpu);
        }
        arg("-m");
        arg(&format!("{mib}M"));
        arg("-smp");
        arg(&opts.cpus.to_string());
        arg("-object");
        match opts.ram_backend {
            RamBackend::File => arg(&format!(
                "memory-backend-file,id=ram0,size={mib}M,mem-path={},share=on",
                qemu_opt_path(&ram_file)?
            )),
            RamBackend::Memfd => arg(&format!(
                "memory-backend-memfd,id=ram0,size={mib}M,share=on"
            )),
        }
        arg("-nographic");
        arg("-nodefaults");
        arg("-no-reboot");
        arg("-chardev");
        arg("stdio,id=ser0,signal=off");
        arg("-serial");
        arg("chardev:ser0");
        arg("-qmp");
        arg(&format!("unix:{},server=on,wait=off", qemu_opt_path(&qmp)?));
        arg("-chardev");
        arg(&format!(
            "socket,id=gdb0,path={},server=on,wait=off",
            qemu_opt_path(&gdb)?
        ));
        arg("-gdb");
        arg("chardev:gdb0");
        if opts.paused {
            arg("-S");
        }
        args.extend([
            "-kernel".into(),
            opts.paths.kernel.clone().into_os_string(),
            "-initrd".into(),
            opts.paths.initrd.clone().into_os_string(),
            "-append".into(),
            opts.append.clone().into(),
        ]);
        args.extend(opts.extra_args.iter().cloned());

        let command_line = std::iter::once(opts.qemu.as_os_str())
            .chain(args.iter().map(OsString::as_os_str))
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");

        let mut cmd = Command::new(&opts.qemu);
        cmd.args(&args)
            .current_dir(&dir.0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
        // which is async-signal-safe; it allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(|| {
                // QEMU dies with the thread that spawned it: the watchdog thread below,
                // which lives exactly as long as the Guest (or the whole test process).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }

        // The watchdog thread spawns QEMU (see PR_SET_PDEATHSIG above) and kills it when
        // the lifetime is over or when it is told to stop (Drop).
        let (child_tx, child_rx) = mpsc::sync_channel::<io::Result<Arc<Mutex<Child>>>>(1);
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let expired = Arc::new(AtomicBool::new(false));
        let lifetime = opts.lifetime;
        let watchdog = {
            let expired = Arc::clone(&expired);
            let dir_name = dir.0.display().to_string();
            thread::Builder::new()
                .name("vmi-guest-watchdog".into())
                .spawn(move || {
                    let child = match cmd.spawn() {
                        Ok(c) => Arc::new(Mutex::new(c)),
                        Err(e) => {
                            let _ = child_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = child_tx.send(Ok(Arc::clone(&child)));
                    if let Err(RecvTimeoutError::Timeout) = stop_rx.recv_timeout(lifetime) {
                        expired.store(true, Ordering::SeqCst);
                        eprintln!(
                            "vmi-tests: guest in {dir_name} outlived its lifetime of \
                             {lifetime:?}; watchdog kills QEMU"
                        );
                        let _ = lock(&child).kill();
                    }
                })?
        };
        let child = match child_rx.recv() {
            Ok(Ok(child)) => child,
            Ok(Err(e)) => {
                let _ = watchdog.join();
                let hint = if e.kind() == io::ErrorKind::NotFound {
                    " (is QEMU installed? `cargo xtask provision` installs it)"
                } else {
                    ""
                };
                return Err(io::Error::new(
                    e.kind(),
                    format!("spawning `{}`: {e}{hint}", opts.qemu.display()),
                ));
            }
            Err(_) => {
                let _ = watchdog.join();
                return Err(io::Error::other("the guest watchdog thread died"));
            }
        };

        let (pid, stdin, stdout, stderr) = {
            let mut c = lock(&child);
            (c.id(), c.stdin.take(), c.stdout.take(), c.stderr.take())
        };
        let mut readers = Vec::new();
        let echo = opts.echo_serial.then(|| format!("[guest {pid}] "));
        let (serial, h) = LineBuffer::spawn(
            "vmi-guest-serial",
            stdout.ok_or_else(|| io::Error::other("no QEMU stdout pipe"))?,
            echo,
        )?;
        readers.push(h);
        let (stderr, h) = LineBuffer::spawn(
            "vmi-guest-stderr",
            stderr.ok_or_else(|| io::Error::other("no QEMU stderr pipe"))?,
            opts.echo_serial.then(|| format!("[qemu {pid} stderr] ")),
        )?;
        readers.push(h);

        let mut guest = Guest {
            child,
            pid,
            stdin: Mutex::new(stdin),
            serial,
            stderr,
            readers,
            watchdog: Some((stop_tx, watchdog)),
            expired,
            qmp,
            gdb,
            ram_path: ram_file,
            ram_size,
            ram_backend: opts.ram_backend,
            accel: opts.paths.accel,
            boot_timeout: opts.boot_timeout,
            lifetime,
            command_line,
            launched: Instant::now(),
            next_command: AtomicU64::new(1),
            dir,
            _permit: permit,
        };
        guest.wait_started()?;
        Ok(guest)
    }

    /// Launches a guest with [`GuestOptions::from_env`] and waits for `VMI-TEST ready`;
    /// panics (with the serial log and QEMU's stderr) if that fails.
    #[track_caller]
    pub fn boot() -> Guest {
        let guest = match Guest::launch(GuestOptions::from_env()) {
            Ok(g) => g,
            Err(e) => panic!("launching the guest: {e}"),
        };
        if let Err(e) = guest.wait_ready() {
            panic!("booting the guest: {e}");
        }
        guest
    }

    /// Waits for the sockets and guest RAM; for memfd RAM finds QEMU's file descriptor.
    fn wait_started(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if self.ram_backend == RamBackend::Memfd {
                if let Some(p) = find_memfd(self.pid, self.ram_size) {
                    self.ram_path = p;
                }
            }
            let ram_ok = std::fs::metadata(&self.ram_path)
                .map(|m| m.len() == self.ram_size)
                .unwrap_or(false);
            if ram_ok && self.qmp.exists() && self.gdb.exists() {
                return Ok(());
            }
            if let Some(status) = self.exit_status() {
                return Err(self.error(
                    io::ErrorKind::UnexpectedEof,
                    &format!("QEMU exited during startup ({status})"),
                ));
            }
            if Instant::now() >= deadline {
                return Err(self.error(
                    io::ErrorKind::TimedOut,
                    &format!("QEMU did not create its sockets and RAM within {STARTUP_TIMEOUT:?}"),
                ));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The QMP socket (QEMU listens; any number of sequential connections).
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp
    }

    /// The GDB remote-protocol socket (QEMU listens).
    pub fn gdb_socket(&self) -> &Path {
        &self.gdb
    }

    /// A path whose file is guest RAM, for `open` + `mmap(MAP_SHARED)`: the backing file,
    /// or `/proc/<qemu pid>/fd/<n>` for [`RamBackend::Memfd`].
    pub fn ram_path(&self) -> &Path {
        &self.ram_path
    }

    /// Guest RAM size in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram_size
    }

    /// Reads guest-physical memory at `gpa` straight from the RAM file (below the PCI hole,
    /// guest-physical address = file offset): an independent check on what a backend reads.
    pub fn read_ram(&self, gpa: u64, buf: &mut [u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = gpa.checked_add(buf.len() as u64);
        if end.is_none_or(|end| end > self.ram_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{:#x}+{:#x} is outside guest RAM", gpa, buf.len()),
            ));
        }
        std::fs::File::open(&self.ram_path)?.read_exact_at(buf, gpa)
    }

    /// How guest RAM is shared.
    pub fn ram_backend(&self) -> RamBackend {
        self.ram_backend
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The accelerator the guest runs on.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// The guest's temporary directory (removed on drop).
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// The QEMU command line, for messages.
    pub fn command_line(&self) -> &str {
        &self.command_line
    }

    /// Time since QEMU was started.
    pub fn uptime(&self) -> Duration {
        self.launched.elapsed()
    }

    /// QEMU's exit status if it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Whether QEMU is still running.
    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// All complete serial-console lines so far.
    pub fn serial_lines(&self) -> Vec<String> {
        self.serial.lines()
    }

    /// The number of complete serial lines so far: a start index for
    /// [`Guest::wait_for_serial_from`].
    pub fn serial_line_count(&self) -> usize {
        self.serial.len()
    }

    /// The whole serial log as text.
    pub fn serial_log(&self) -> String {
        self.serial.text()
    }

    /// What QEMU wrote to stderr so far.
    pub fn qemu_stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits for a serial line containing `pattern` and returns it (the first such line
    /// since boot). Fails with the serial log tail and QEMU's stderr on timeout or if QEMU
    /// exits.
    pub fn wait_for_serial(&self, pattern: &str, timeout: Duration) -> io::Result<String> {
        self.wait_for_serial_from(0, pattern, timeout)
            .map(|(_, line)| line)
    }

    /// Like [`Guest::wait_for_serial`], but only considers lines from index `start` on
    /// (see [`Guest::serial_line_count`]); returns the line's index and text.
    pub fn wait_for_serial_from(
        &self,
        start: usize,
        pattern: &str,
        timeout: Duration,
    ) -> io::Result<(usize, String)> {
        match self
            .serial
            .wait_for(start, timeout, |l| l.contains(pattern))
        {
            Wait::Found(i, line) => Ok((i, line)),
            Wait::Closed => {
                // Give the status a moment to become reapable.
                let status = (0..50).find_map(|_| {
                    self.exit_status()
                        .or_else(|| {
                            thread::sleep(Duration::from_millis(10));
                            None
                        })
                        .map(|s| s.to_string())
                });
                let status = status.unwrap_or_else(|| "closed its serial output".into());
                Err(self.error(
                    io::ErrorKind::UnexpectedEof,
                    &format!("QEMU {status} before the guest printed {pattern:?}"),
                ))
            }
            Wait::TimedOut => Err(self.error(
                io::ErrorKind::TimedOut,
                &format!(
                    "timed out after {timeout:?} waiting for {pattern:?} on the serial console"
                ),
            )),
        }
    }

    /// Launches the purpose-built test guest and waits until it is ready; fails the test
    /// if it does not boot.
    pub fn boot_test_guest() -> (Guest, Markers) {
        let guest = Guest::launch(GuestOptions::test_guest()).expect("launching the test guest");
        let m = guest.wait_ready().expect("test guest ready");
        (guest, m)
    }

    /// Waits for `VMI-TEST ready` (up to [`GuestOptions::boot_timeout`]) and returns the
    /// markers `/init` printed.
    pub fn wait_ready(&self) -> io::Result<Markers> {
        self.wait_for_serial(READY, self.boot_timeout)?;
        Ok(self.markers())
    }

    /// The `VMI-TEST` markers printed so far.
    pub fn markers(&self) -> Markers {
        Markers::parse(self.serial.lines())
    }

    /// The guest's `/proc/version`, once printed.
    pub fn banner(&self) -> Option<String> {
        self.markers().banner().map(str::to_owned)
    }

    /// The runtime address of kernel symbol `name` as the guest printed it.
    pub fn kallsyms(&self, name: &str) -> Option<u64> {
        self.markers().kallsyms(name)
    }

    /// Writes raw bytes to the guest's serial console input.
    pub fn send_serial(&self, data: &[u8]) -> io::Result<()> {
        let mut stdin = lock(&self.stdin);
        let pipe = stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("the serial input is closed"))?;
        pipe.write_all(data)?;
        pipe.flush()
    }

    /// Runs a shell command line in the guest (as root, through `/init`'s console command
    /// loop; needs `VMI-TEST ready` first) and returns its output lines and exit status.
    ///
    /// The command must be one line and must not read the console.
    pub fn run_command(&self, command: &str, timeout: Duration) -> io::Result<CommandOutput> {
        if command.contains('\n') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "guest commands are one line",
            ));
        }
        let id = self.next_command.fetch_add(1, Ordering::Relaxed);
        let start = self.serial.len();
        let deadline = Instant::now() + timeout;
        self.send_serial(format!("{id} {command}\n").as_bytes())?;
        let begin = format!("VMI-CMD begin {id}");
        let (b, _) = self.wait_for_serial_from(start, &begin, timeout)?;
        let end = format!("VMI-CMD end {id} ");
        let left = deadline.saturating_duration_since(Instant::now());
        let (e, line) = self.wait_for_serial_from(b + 1, &end, left)?;
        let rc = line[line.find(&end).unwrap_or(0) + end.len()..]
            .trim()
            .parse()
            .unwrap_or(-1);
        let lines = self
            .serial
            .lines_from(b + 1)
            .into_iter()
            .take(e - b - 1)
            .filter(|l| !l.starts_with("VMI-TEST tick"))
            .collect();
        Ok(CommandOutput { rc, lines })
    }

    /// An error describing the guest's state: serial tail and QEMU's stderr.
    fn error(&self, kind: io::ErrorKind, what: &str) -> io::Error {
        // Let the stderr reader catch up if QEMU is gone.
        if !self.is_running() {
            let _ = self
                .stderr
                .wait_for(usize::MAX, Duration::from_secs(1), |_| false);
        }
        let mut msg = format!(
            "{what}\n  accel {}, QEMU pid {}, up {:.1?}, dir {}",
            self.accel,
            self.pid,
            self.launched.elapsed(),
            self.dir.0.display()
        );
        if self.expired.load(Ordering::SeqCst) {
            let _ = write!(
                msg,
                "\n  the watchdog killed QEMU after {:?}",
                self.lifetime
            );
        }
        let _ = write!(msg, "\n  command: {}", self.command_line);
        let _ = write!(
            msg,
            "\n--- last serial lines ---\n{}\n--- QEMU stderr ---\n{}\n---",
            self.serial.tail(40),
            self.stderr.tail(40)
        );
        io::Error::new(kind, msg)
    }

    /// Stops QEMU: SIGTERM, SIGKILL after a grace period, reap; stops the watchdog and
    /// joins the reader threads. Called by `Drop`.
    fn terminate(&mut self) {
        {
            let mut child = lock(&self.child);
            if let Ok(None) = child.try_wait() {
                // SAFETY: kill(2) with a pid we have not reaped yet (we hold the Child and
                // its lock), so it cannot name another process.
                unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
                let deadline = Instant::now() + TERM_GRACE;
                while let Ok(None) = child.try_wait() {
                    if Instant::now() >= deadline {
                        let _ = child.kill();
                        break;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
            let _ = child.wait();
        }
        if let Some((stop, handle)) = self.watchdog.take() {
            drop(stop);
            let _ = handle.join();
        }
        lock(&self.stdin).take();
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.terminate();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A path for a QEMU `key=value` option (commas would need doubling; refuse them).
fn qemu_opt_path(p: &Path) -> io::Result<String> {
    let s = p.to_str().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("non-UTF-8 path {p:?}"))
    })?;
    if s.contains(',') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("path {s:?} contains a comma; set {ENV_TMPDIR} to another directory"),
        ));
    }
    Ok(s.to_owned())
}

/// QEMU's memfd for guest RAM: a descriptor whose link reads `/memfd:…` with the RAM size.
fn find_memfd(pid: u32, size: u64) -> Option<PathBuf> {
    let fd_dir = PathBuf::from(format!("/proc/{pid}/fd"));
    std::fs::read_dir(&fd_dir).ok()?.find_map(|entry| {
        let path = entry.ok()?.path();
        let target = std::fs::read_link(&path).ok()?;
        let is_memfd = target.as_os_str().as_bytes().starts_with(b"/memfd:");
        (is_memfd && std::fs::metadata(&path).ok()?.len() == size).then_some(path)
    })
}
