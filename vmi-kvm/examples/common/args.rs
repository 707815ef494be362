// Not every example uses every helper.
#![allow(dead_code)]

// Shared by the examples (included with `#[path]`): `SOCKET [SECRET] [COUNT]`, the way
// LibVMI's examples take a KVMi socket path.

use std::time::Duration;

pub(crate) struct Args {
    pub(crate) socket: String,
    pub(crate) secret: Option<Vec<u8>>,
    pub(crate) count: u64,
    /// A fourth argument (an address, a gfn), as a number (0x… or decimal).
    pub(crate) extra: Option<u64>,
}

pub(crate) fn parse(usage: &str) -> Args {
    let mut it = std::env::args().skip(1);
    let Some(socket) = it.next() else {
        eprintln!("usage: {usage} SOCKET [SECRET] [COUNT] [ADDRESS]");
        std::process::exit(2);
    };
    let secret = it.next().filter(|s| !s.is_empty()).map(String::into_bytes);
    let count = it.next().and_then(|c| c.parse().ok()).unwrap_or(5);
    let extra = it.next().and_then(|x| match x.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => x.parse().ok(),
    });
    Args {
        socket,
        secret,
        count,
        extra,
    }
}

/// Listens on the socket and waits up to 60 s for the VM.
pub(crate) fn connect(a: &Args) -> vmi_kvm::KvmiVm {
    let cfg = vmi_kvm::Config {
        secret: a.secret.clone(),
        ..vmi_kvm::Config::default()
    };
    match vmi_kvm::KvmiVm::listen(&a.socket, cfg, Duration::from_secs(60)) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

/// Waits for events and hands each to `f` until `count` were counted (`f` returns
/// whether an event counts) or 30 s pass without one. Returns the count.
pub(crate) fn each_event(
    vm: &vmi_kvm::KvmiVm,
    count: u64,
    mut f: impl FnMut(vmi_core::PendingEvent) -> bool,
) -> u64 {
    use vmi_core::EventControl;
    let mut seen = 0;
    while seen < count {
        match vm.wait_event(Duration::from_secs(30)) {
            Ok(Some(ev)) => seen += u64::from(f(ev)),
            Ok(None) => break,
            Err(e) => {
                eprintln!("{e}");
                break;
            }
        }
    }
    seen
}

/// Prints the error and exits.
pub(crate) fn die(e: impl std::fmt::Display) -> ! {
    eprintln!("{e}");
    std::process::exit(1)
}
