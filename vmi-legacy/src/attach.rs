//! Before a session attaches to QEMU's gdbstub: is another client holding it, and did a
//! tool die and leave the guest stopped at its breakpoints?
//!
//! **A held stub.** QEMU's gdbstub serves one client. A second connection is not
//! refused: it waits in the listening socket's queue, and when the first client leaves,
//! QEMU accepts it and stops the guest for it (the stub stops the guest whenever a
//! client attaches). A session that gave up waiting has closed that connection by then,
//! so the guest stayed paused with nobody attached. QMP's `query-chardev` tells whether
//! a client is attached to the stub's character device (its `filename` starts with
//! `disconnected:` while nobody is); [`crate::LegacyQemu::connect`] asks it first and
//! refuses a held stub with [`StubInUse`] before connecting, so nothing is queued.
//!
//! **A tool that died at its breakpoints.** A session killed (`SIGKILL`,
//! `process::exit`) with breakpoints set never removes them: QEMU keeps them in its
//! gdbstub's list, the next hit stops the guest in run state `debug`, and QMP `cont`
//! does not help (the vCPU runs into the same breakpoint again at once). Nothing of
//! ours is left in guest memory: breakpoints are `Z0` (TCG: QEMU's translator checks
//! its list, memory is untouched) or `Z1` (KVM: debug registers), never an `int3`
//! written by us. What is left lives in QEMU's breakpoint list, and the next client's
//! `?` empties it (QEMU removes every breakpoint on `?`, which gdb sends on connect).
//! [`crate::LegacyQemu::connect`] with a gdbstub therefore recovers such a guest: it
//! finds `debug` with nobody attached, attaches (the handshake's `?` removes the stale
//! breakpoints) and lets the guest run ([`crate::LegacyQemu::recovered_stale_debug_stop`]
//! says it did). The `legacy-recover` example does just that.

use std::path::Path;

use vmi_core::{Error, Result};

use crate::gdb::GdbAddress;
use crate::qmp::QmpClient;

/// The gdbstub is held by another client (a gdb, another tool): refused before
/// connecting, so that no connection of ours waits in QEMU's queue to stop the guest
/// when that client leaves. The [`Error::Backend`] of
/// [`crate::LegacyQemu::connect`] carries it; find it with [`stub_in_use`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "QEMU's gdbstub at {address} is held by another client (chardev {chardev:?}: {filename}); \
     detach that client (gdb: `detach`) or connect without the gdbstub"
)]
pub struct StubInUse {
    /// The gdbstub address the session was given.
    pub address: String,
    /// The label of QEMU's character device behind it.
    pub chardev: String,
    /// What `query-chardev` says of it (for TCP, the connected peer after `<->`).
    pub filename: String,
}

/// The [`StubInUse`] behind an error of [`crate::LegacyQemu::connect`], if that is why it
/// failed.
pub fn stub_in_use(e: &Error) -> Option<&StubInUse> {
    match e {
        Error::Backend { source, .. } => source.downcast_ref::<StubInUse>(),
        _ => None,
    }
}

/// One character device as `query-chardev` lists it.
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Chardev {
    label: String,
    filename: String,
}

/// Fails with [`StubInUse`] if `query-chardev` shows a client attached to the
/// character device that serves `addr`. A QEMU that does not answer, or lists no device
/// for `addr`, is not refused: connecting is then the only way to find out.
///
/// A client that closed its connection a moment ago may still be listed until QEMU's
/// main loop sees the close: a held stub is asked about again [`RECHECKS`] times,
/// [`RECHECK_AFTER`] apart, before it is refused.
pub(crate) fn refuse_if_held(qmp: &mut QmpClient, addr: &GdbAddress) -> Result<()> {
    let mut checks = 0;
    loop {
        let Ok(chardevs) = qmp.execute_as::<Vec<Chardev>>("query-chardev", None) else {
            return Ok(());
        };
        let Some(c) = held_chardev(&chardevs, addr) else {
            return Ok(());
        };
        if checks == RECHECKS {
            return Err(Error::backend(
                "attaching to the gdbstub",
                StubInUse {
                    address: addr.to_string(),
                    chardev: c.label.clone(),
                    filename: c.filename.clone(),
                },
            ));
        }
        checks += 1;
        std::thread::sleep(RECHECK_AFTER);
    }
}

/// How often a stub found held is asked about again before it is refused.
const RECHECKS: u32 = 3;
/// How long before asking again.
const RECHECK_AFTER: std::time::Duration = std::time::Duration::from_millis(100);

/// The character device serving `addr`, if a client is attached to it.
fn held_chardev<'a>(chardevs: &'a [Chardev], addr: &GdbAddress) -> Option<&'a Chardev> {
    chardevs
        .iter()
        .find(|c| !c.filename.starts_with("disconnected:") && serves(&c.filename, addr))
}

/// Whether a chardev `filename` (`unix:PATH,server=on`, `tcp:HOST:PORT,server=on <->
/// PEER`, each with a `disconnected:` prefix while nobody is attached) listens at
/// `addr`. UNIX paths are compared after resolving them (QEMU prints the path it was
/// given, which may be relative or reach the socket through a link); TCP by port (QEMU
/// prints the address it listens on, `0.0.0.0` for `tcp::1234`).
fn serves(filename: &str, addr: &GdbAddress) -> bool {
    let f = filename.strip_prefix("disconnected:").unwrap_or(filename);
    let listener = f.split(',').next().unwrap_or(f);
    match addr {
        GdbAddress::Unix(path) => listener
            .strip_prefix("unix:")
            .is_some_and(|p| same_path(Path::new(p), path)),
        GdbAddress::Tcp { port, .. } => listener
            .strip_prefix("tcp:")
            .and_then(|hp| hp.rsplit_once(':'))
            .is_some_and(|(_, p)| p.parse::<u16>().ok() == Some(*port)),
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || matches!(
            (std::fs::canonicalize(a), std::fs::canonicalize(b)),
            (Ok(x), Ok(y)) if x == y
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(label: &str, filename: &str) -> Chardev {
        Chardev {
            label: label.into(),
            filename: filename.into(),
        }
    }

    /// What QEMU 7.2 lists (captured with a UNIX and a TCP gdbstub, free and held).
    #[test]
    fn held_stubs_are_found_by_address() {
        let unix = GdbAddress::Unix("/tmp/qc/gdb.sock".into());
        let tcp = GdbAddress::Tcp {
            host: "localhost".into(),
            port: 47123,
        };
        let free = [
            dev("#chr071", "gdb"),
            dev("gdb0", "disconnected:unix:/tmp/qc/gdb.sock,server=on"),
            dev("compat_monitor0", "unix:/tmp/qc/qmp.sock,server=on"),
            dev("gdb", "disconnected:tcp:0.0.0.0:47123,server=on"),
        ];
        assert!(held_chardev(&free, &unix).is_none());
        assert!(held_chardev(&free, &tcp).is_none());
        let held = [
            dev("#chr071", "gdb"),
            dev("gdb0", "unix:/tmp/qc/gdb.sock,server=on"),
            dev("compat_monitor0", "unix:/tmp/qc/qmp.sock,server=on"),
            dev("gdb", "tcp:127.0.0.1:47123,server=on <-> 127.0.0.1:55270"),
        ];
        assert_eq!(held_chardev(&held, &unix).unwrap().label, "gdb0");
        assert_eq!(held_chardev(&held, &tcp).unwrap().label, "gdb");
        // Another port, another path: not ours.
        let other = GdbAddress::Tcp {
            host: "localhost".into(),
            port: 4712,
        };
        assert!(held_chardev(&held, &other).is_none());
        assert!(held_chardev(&held, &GdbAddress::Unix("/tmp/qc/gdb".into())).is_none());
    }

    #[test]
    fn the_refusal_is_typed_and_names_the_holder() {
        let e = Error::backend(
            "attaching to the gdbstub",
            StubInUse {
                address: "/run/gdb.sock".into(),
                chardev: "gdb0".into(),
                filename: "unix:/run/gdb.sock,server=on".into(),
            },
        );
        let s = stub_in_use(&e).expect("typed");
        assert_eq!(s.chardev, "gdb0");
        let msg = e.to_string();
        assert!(msg.contains("held by another client") && msg.contains("/run/gdb.sock"));
        assert!(stub_in_use(&Error::malformed("x", "y")).is_none());
    }
}
