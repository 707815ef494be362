// What vmi-linux's examples share: choosing the guest (a live QEMU through vmi-legacy,
// a KVMi socket through vmi-kvm), pausing it while the example reads, attaching
// [`vmi_linux::Linux`], and printing errors.
//
// ```text
// --qmp QMP_SOCKET [--gdb GDB_SOCKET]   unpatched QEMU (shared RAM backend recommended)
// --kvmi SOCKET [--secret SECRET]       a KVM-VMI host connecting to SOCKET
// --dump FILE                         a QEMU dump-guest-memory ELF (vmi-dump)
// ```

#![allow(dead_code)] // Each example uses a subset.

use std::process::ExitCode;
use std::time::Duration;

use vmi_core::{
    Gpa, PauseGuard, PhysicalMemory, ReadRegisters, RegisterGroups, RegisterSnapshot, VcpuControl,
    VcpuId,
};
use vmi_legacy::{LegacyConfig, LegacyQemu};
use vmi_linux::{Linux, LinuxOptions};

/// The guest an example reads: any backend, one type.
pub(crate) enum Target {
    /// An unpatched QEMU.
    Legacy(Box<LegacyQemu>),
    /// A KVMi host.
    Kvmi(vmi_kvm::KvmiVm),
    /// A memory dump (QEMU's `dump-guest-memory` ELF).
    Dump(vmi_dump::ElfDump),
}

impl PhysicalMemory for Target {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> vmi_core::Result<()> {
        match self {
            Target::Legacy(v) => v.read_physical(gpa, buf),
            Target::Kvmi(v) => v.read_physical(gpa, buf),
            Target::Dump(v) => v.read_physical(gpa, buf),
        }
    }
    fn read_physical_many(&self, requests: &mut [(Gpa, &mut [u8])]) -> vmi_core::Result<()> {
        match self {
            Target::Legacy(v) => v.read_physical_many(requests),
            Target::Kvmi(v) => v.read_physical_many(requests),
            Target::Dump(v) => v.read_physical_many(requests),
        }
    }
}

impl ReadRegisters for Target {
    fn registers(
        &self,
        vcpu: VcpuId,
        groups: RegisterGroups,
        msrs: &[u32],
    ) -> vmi_core::Result<RegisterSnapshot> {
        match self {
            Target::Legacy(v) => v.registers(vcpu, groups, msrs),
            Target::Kvmi(v) => v.registers(vcpu, groups, msrs),
            Target::Dump(v) => v.registers(vcpu, groups, msrs),
        }
    }
}

impl Target {
    /// Pauses a live guest (resumed when the guard drops); a dump needs none.
    pub(crate) fn pause(&self) -> vmi_core::Result<Option<PauseGuard<'_>>> {
        match self {
            Target::Legacy(v) => v.pause().map(Some),
            Target::Kvmi(v) => v.pause().map(Some),
            Target::Dump(_) => Ok(None),
        }
    }
}

/// An error for `main` to print (exit code 1, or 2 for usage errors).
pub(crate) struct Failure {
    pub(crate) message: String,
    pub(crate) usage: bool,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            message: e.to_string(),
            usage: false,
        }
    }
}

/// A usage error.
pub(crate) fn usage(text: &str) -> Failure {
    Failure {
        message: text.to_owned(),
        usage: true,
    }
}

/// Runs `body`, printing a failure as `NAME: error: …`; `--help` prints the usage, exit 0.
pub(crate) fn main_with(
    name: &str,
    usage_text: &str,
    body: impl FnOnce(Args) -> Result<(), Failure>,
) -> ExitCode {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(None) => {
            println!("usage: {name} {usage_text}\n{TARGET_HELP}");
            return ExitCode::SUCCESS;
        }
        Err(Some(e)) => {
            eprintln!("{name}: {e}\nusage: {name} {usage_text}\n{TARGET_HELP}");
            return ExitCode::from(2);
        }
    };
    match body(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if f.usage => {
            eprintln!(
                "{name}: {}\nusage: {name} {usage_text}\n{TARGET_HELP}",
                f.message
            );
            ExitCode::from(2)
        }
        Err(f) => {
            eprintln!("{name}: error: {}", f.message);
            ExitCode::from(1)
        }
    }
}

/// The target options every example takes.
pub(crate) const TARGET_HELP: &str = "target (one of):
  --qmp QMP_SOCKET [--gdb GDB_SOCKET]   a running, unpatched QEMU (vmi-legacy)
  --kvmi SOCKET [--secret SECRET]       a KVM-VMI host connecting to SOCKET (vmi-kvm)
  --dump FILE                           a QEMU dump-guest-memory ELF file (vmi-dump)
  --vcpu N                              the vCPU that locates the kernel (default 0)";

/// Positional arguments and `--name value` options.
pub(crate) struct Args {
    pub(crate) positional: Vec<String>,
    pub(crate) options: Vec<(String, String)>,
}

impl Args {
    fn parse() -> Result<Self, Option<String>> {
        let mut positional = Vec::new();
        let mut options = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            if a == "-h" || a == "--help" {
                return Err(None);
            }
            if let Some(name) = a.strip_prefix("--") {
                let v = it.next().ok_or(Some(format!("--{name} needs a value")))?;
                options.push((name.to_owned(), v));
            } else {
                positional.push(a);
            }
        }
        Ok(Self {
            positional,
            options,
        })
    }

    /// The value of `--name`.
    pub(crate) fn option(&self, name: &str) -> Option<&str> {
        self.options
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Connects to the target the options name.
    pub(crate) fn connect(&self) -> Result<Target, Failure> {
        if let Some(qmp) = self.option("qmp") {
            let mut cfg = LegacyConfig::new(qmp);
            cfg.writable = false;
            cfg.gdb_socket = self.option("gdb").map(Into::into);
            let vm = LegacyQemu::connect(cfg)
                .map_err(|e| format!("connecting to QEMU at {qmp}: {e}"))?;
            return Ok(Target::Legacy(Box::new(vm)));
        }
        if let Some(sock) = self.option("kvmi") {
            let cfg = vmi_kvm::Config {
                secret: self.option("secret").map(|s| s.as_bytes().to_vec()),
                ..vmi_kvm::Config::default()
            };
            let vm = vmi_kvm::KvmiVm::listen(sock, cfg, Duration::from_secs(60))
                .map_err(|e| format!("waiting for a KVMi host on {sock}: {e}"))?;
            return Ok(Target::Kvmi(vm));
        }
        if let Some(path) = self.option("dump") {
            let dump = vmi_dump::ElfDump::open(path).map_err(|e| format!("opening {path}: {e}"))?;
            return Ok(Target::Dump(dump));
        }
        Err(usage("name a target"))
    }

    /// The options of [`Linux::attach`].
    pub(crate) fn linux_options(&self) -> Result<LinuxOptions, Failure> {
        let mut o = LinuxOptions::default();
        if let Some(v) = self.option("vcpu") {
            o.vcpu = VcpuId(v.parse().map_err(|_| usage("--vcpu takes a number"))?);
        }
        Ok(o)
    }
}

/// Parses `0x…` or bare hex (as /proc/kallsyms prints), or decimal with `--dec`.
pub(crate) fn parse_address(s: &str) -> Option<u64> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(hex, 16).ok()
}

/// Attaches to the guest (paused while attaching) and runs `f` with the guest paused.
pub(crate) fn with_linux(
    args: &Args,
    f: impl FnOnce(&Linux<&Target>) -> Result<(), Failure>,
) -> Result<(), Failure> {
    let target = args.connect()?;
    let _pause = target.pause()?;
    let linux = Linux::attach(&target, args.linux_options()?)?;
    if args.option("report").is_some() {
        eprintln!("{}", linux.report());
    }
    f(&linux)
}
