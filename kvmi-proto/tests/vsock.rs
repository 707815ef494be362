//! The vsock listener: binding, typed errors, and (where the kernel has the
//! `vsock_loopback` transport) a real handshake with `kvmi-sim` over `VMADDR_CID_LOCAL`.

use kvmi_proto::{Abi, Batch, Config, Listener, ProtoError, VsockStream};
use kvmi_sim::{SimConfig, Simulator};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

const T: Duration = Duration::from_secs(5);

fn cfg() -> Config {
    Config {
        secret: Some(b"vsock secret".to_vec()),
        request_timeout: T,
        ..Config::default()
    }
}

#[test]
fn vsock_listener() {
    let l = match Listener::bind_vsock(libc::VMADDR_PORT_ANY, cfg()) {
        Ok(l) => l,
        Err(e) => {
            // No vsock here: the error must be the typed one, naming the cause.
            assert!(e.is_vsock_unavailable(), "{e:?}");
            assert!(matches!(e, ProtoError::Vsock { .. }), "{e:?}");
            assert!(e.to_string().contains("no vsock transport"), "{e}");
            eprintln!("vsock unavailable on this machine: {e}");
            return;
        }
    };
    let port = l.vsock_port().unwrap();
    assert_ne!(port, libc::VMADDR_PORT_ANY);
    assert_eq!(l.path(), None);

    // The port is taken now: a second bind is a typed error naming the call and port,
    // and not a "vsock unavailable" one.
    let e = Listener::bind_vsock(port, cfg()).unwrap_err();
    match &e {
        ProtoError::Vsock {
            op,
            port: p,
            source,
        } => {
            assert_eq!((*op, *p), ("bind", port));
            assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_vsock_unavailable());
    assert!(
        e.to_string()
            .contains(&format!("vsock bind on port {port}")),
        "{e}"
    );

    // Nobody connected yet.
    assert!(matches!(
        l.accept(Duration::from_millis(50)),
        Err(ProtoError::Timeout(_))
    ));

    // A real handshake through loopback vsock, if this kernel has that transport.
    let client = match VsockStream::connect(libc::VMADDR_CID_LOCAL, port) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("no vsock loopback (vsock_loopback module) on this machine: {e}");
            // Nothing reached the listener.
            assert!(matches!(
                l.accept(Duration::from_millis(50)),
                Err(ProtoError::Timeout(_))
            ));
            return;
        }
    };
    assert_eq!(client.peer_addr().unwrap(), (libc::VMADDR_CID_LOCAL, port));
    let sc = SimConfig {
        secret: Some(b"vsock secret".to_vec()),
        ..SimConfig::default()
    };
    // kvmi-sim speaks over any connected stream socket; it only takes a UnixStream.
    let sim = std::thread::spawn(move || {
        Simulator::from_stream(UnixStream::from(OwnedFd::from(client)), sc).unwrap()
    });
    let c = l.accept(T).unwrap();
    let sim = sim.join().unwrap();
    assert_eq!(c.abi(), Abi::V7);
    assert_eq!(c.hookup().name, "kvmi-sim");
    assert_eq!(c.peer_credentials(), None);
    assert_eq!(c.get_guest_info().unwrap(), 2);
    c.write_physical(0x2000, b"over vsock").unwrap();
    assert_eq!(c.read_physical(0x2000, 10).unwrap(), b"over vsock");
    let mut b = Batch::new(&c);
    b.set_page_access(0, &[(0x9000, 0)]).unwrap();
    b.commit(T).unwrap();
    assert!(sim
        .vm()
        .access_restricted(0, 0x9000, kvmi_sys::KVMI_PAGE_ACCESS_R));
    drop(c);
    sim.wait_closed(T).unwrap();
}

/// `VsockStream` only uses generic socket calls once connected (read, send,
/// `SO_RCVTIMEO`/`SO_SNDTIMEO`, `FIONBIO`, shutdown, dup), so the whole
/// `Connection`-over-`Stream::Vsock` path is exercised here on a UNIX socketpair
/// wrapped as a `VsockStream`, independent of the kernel's vsock transports.
#[test]
fn vsock_stream_path_over_a_socketpair() {
    // Timeouts and shutdown.
    let (a, b) = UnixStream::pair().unwrap();
    let mut s = VsockStream::from(OwnedFd::from(a));
    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = [0u8; 4];
    let e = std::io::Read::read(&mut s, &mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    assert!(s.set_read_timeout(Some(Duration::ZERO)).is_err());
    s.set_read_timeout(None).unwrap();
    s.set_nonblocking(true).unwrap();
    let e = std::io::Read::read(&mut s, &mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    s.set_nonblocking(false).unwrap();
    s.try_clone()
        .unwrap()
        .shutdown(std::net::Shutdown::Both)
        .unwrap();
    assert_eq!(std::io::Read::read(&mut s, &mut buf).unwrap(), 0);
    drop(b);

    // A full connection against kvmi-sim.
    let (a, b) = UnixStream::pair().unwrap();
    let sc = SimConfig {
        secret: Some(b"vsock secret".to_vec()),
        ..SimConfig::default()
    };
    let sim = std::thread::spawn(move || Simulator::from_stream(b, sc).unwrap());
    let c = kvmi_proto::Connection::establish_stream(VsockStream::from(OwnedFd::from(a)), cfg())
        .unwrap();
    let sim = sim.join().unwrap();
    assert_eq!(c.abi(), Abi::V7);
    assert_eq!(c.hookup().name, "kvmi-sim");
    assert_eq!(c.peer_credentials(), None, "no SO_PEERCRED on vsock");
    assert_eq!(c.get_guest_info().unwrap(), 2);
    c.write_physical(0x2000, b"over vsock").unwrap();
    assert_eq!(c.read_physical(0x2000, 10).unwrap(), b"over vsock");
    let mut b = Batch::new(&c);
    b.set_page_access(0, &[(0x9000, 0)]).unwrap();
    b.commit(T).unwrap();
    assert!(sim
        .vm()
        .access_restricted(0, 0x9000, kvmi_sys::KVMI_PAGE_ACCESS_R));
    drop(c);
    sim.wait_closed(T).unwrap();
}
