//! The byte streams the client talks over, and where QEMU's gdbstub listens.

use std::io::{self, Read, Write};
use std::time::Duration;

use vmi_core::{Error, Result};

use super::GdbClient;

/// Where QEMU's gdbstub listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GdbAddress {
    /// A UNIX socket (`-chardev socket,path=…,server=on -gdb chardev:…`).
    Unix(std::path::PathBuf),
    /// TCP (`-gdb tcp:HOST:PORT`; QEMU's `-s` is `tcp::1234`, all interfaces).
    Tcp {
        /// Host name or address (`localhost` when QEMU's option leaves it empty).
        host: String,
        /// Port.
        port: u16,
    },
}

impl GdbAddress {
    /// Reads QEMU's notation: `tcp:HOST:PORT`, `tcp::PORT` (localhost), `tcp:[V6]:PORT`,
    /// `unix:PATH`, or a plain UNIX socket path (write `./tcp:…` for a file named so).
    pub fn parse(s: &std::path::Path) -> Result<Self> {
        let Some(text) = s.to_str() else {
            return Ok(Self::Unix(s.to_owned()));
        };
        if let Some(path) = text.strip_prefix("unix:") {
            return Ok(Self::Unix(path.into()));
        }
        let Some(rest) = text.strip_prefix("tcp:") else {
            return Ok(Self::Unix(s.to_owned()));
        };
        let bad = |why: &str| Error::InvalidArgument {
            what: "gdbstub address",
            reason: format!("{text:?}: {why} (expected tcp:HOST:PORT or tcp::PORT)").into(),
        };
        // QEMU options may follow (`tcp::1234,server=on`): ignore them.
        let rest = rest.split(',').next().unwrap_or(rest);
        let (host, port) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.is_empty() { "localhost" } else { host };
        Ok(Self::Tcp {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for GdbAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unix(p) => write!(f, "{}", p.display()),
            Self::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Self::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
        }
    }
}

/// A byte stream the client can talk over.
pub trait Transport: Read + Write + Send {
    /// Sets the read timeout.
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;

    /// A second handle on the same stream (keeps it open after the first is dropped),
    /// if the transport can make one.
    fn try_clone_transport(&self) -> io::Result<Box<dyn Transport>> {
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }
}

impl Transport for std::os::unix::net::UnixStream {
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }

    fn try_clone_transport(&self) -> io::Result<Box<dyn Transport>> {
        Ok(Box::new(self.try_clone()?))
    }
}

impl Transport for std::net::TcpStream {
    fn set_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(t)
    }

    fn try_clone_transport(&self) -> io::Result<Box<dyn Transport>> {
        Ok(Box::new(self.try_clone()?))
    }
}

/// The longest single TCP connect attempt (`connect_timeout` refuses a zero duration;
/// a longer one than this is never needed).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(3600);

impl GdbClient {
    /// Connects to a gdbstub listening on a UNIX socket.
    pub fn connect_unix(path: &std::path::Path, timeout: Duration) -> Result<Self> {
        let s = std::os::unix::net::UnixStream::connect(path)
            .map_err(|e| Error::io(format!("connecting to gdbstub {}", path.display()), e))?;
        Self::new(Box::new(s), timeout)
    }

    /// Connects to a gdbstub at `addr`.
    pub fn connect(addr: &GdbAddress, timeout: Duration) -> Result<Self> {
        match addr {
            GdbAddress::Unix(path) => Self::connect_unix(path, timeout),
            GdbAddress::Tcp { host, port } => Self::connect_tcp(&format!("{host}:{port}"), timeout),
        }
    }

    /// Connects to a gdbstub on TCP (`HOST:PORT`; each address the name resolves to is
    /// tried, each for at most `timeout`), with `TCP_NODELAY`.
    pub fn connect_tcp(addr: &str, timeout: Duration) -> Result<Self> {
        use std::net::ToSocketAddrs;
        let context = || format!("connecting to gdbstub {addr}");
        let mut last = None;
        let mut stream = None;
        for a in addr
            .to_socket_addrs()
            .map_err(|e| Error::io(context(), e))?
        {
            match std::net::TcpStream::connect_timeout(
                &a,
                timeout.clamp(Duration::from_millis(1), MAX_CONNECT_TIMEOUT),
            ) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let s = stream.ok_or_else(|| {
            Error::io(
                context(),
                last.unwrap_or_else(|| io::Error::other("the name resolves to no address")),
            )
        })?;
        s.set_nodelay(true)
            .map_err(|e| Error::io("setting TCP_NODELAY", e))?;
        Self::new(Box::new(s), timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdb_addresses_in_qemu_notation() {
        use std::path::Path;
        let tcp = |host: &str, port| GdbAddress::Tcp {
            host: host.into(),
            port,
        };
        let p = |s: &str| GdbAddress::parse(Path::new(s));
        assert_eq!(p("tcp::1234").unwrap(), tcp("localhost", 1234));
        assert_eq!(p("tcp:10.0.0.2:9000").unwrap(), tcp("10.0.0.2", 9000));
        assert_eq!(p("tcp:[::1]:1234").unwrap(), tcp("::1", 1234));
        assert_eq!(p("tcp::1234,server=on").unwrap(), tcp("localhost", 1234));
        assert_eq!(
            p("/run/gdb.sock").unwrap(),
            GdbAddress::Unix("/run/gdb.sock".into())
        );
        assert_eq!(
            p("unix:/run/gdb.sock").unwrap(),
            GdbAddress::Unix("/run/gdb.sock".into())
        );
        assert_eq!(p("./tcp:1").unwrap(), GdbAddress::Unix("./tcp:1".into()));
        assert!(p("tcp:").is_err());
        assert!(p("tcp::99999").is_err());
        assert!(p("tcp:host").is_err());
        assert_eq!(tcp("::1", 1).to_string(), "tcp:[::1]:1");
    }
}
