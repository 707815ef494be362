// Shared by the examples (included with `#[path]`): `SOCKET [SECRET] [COUNT]`, the way
// LibVMI's examples take a KVMi socket path.

use std::time::Duration;

pub(crate) struct Args {
    pub(crate) socket: String,
    pub(crate) secret: Option<Vec<u8>>,
    pub(crate) count: u64,
}

pub(crate) fn parse(usage: &str) -> Args {
    let mut it = std::env::args().skip(1);
    let Some(socket) = it.next() else {
        eprintln!("usage: {usage} SOCKET [SECRET] [COUNT]");
        std::process::exit(2);
    };
    let secret = it.next().filter(|s| !s.is_empty()).map(String::into_bytes);
    let count = it.next().and_then(|c| c.parse().ok()).unwrap_or(5);
    Args {
        socket,
        secret,
        count,
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
