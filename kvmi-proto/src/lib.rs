//! KVM introspection (KVMi) protocol engine: the tool side of the socket that KVM-VMI
//! QEMU and the patched kernel connect to. Layering: `kvmi-sys` (raw ids and wire
//! structs) → **`kvmi-proto`** (listening socket, QEMU handshake, framing, sequence
//! numbers, reply matching with interleaved events, batching, typed commands and
//! events) → `vmi-kvm` (the `vmi-core` backend).
//!
//! * [`codec`]: pure framing (encode/decode, reply error codes, event parsing for the
//!   kvmi-v7 and kvmi-v6 layouts). Never panics, never allocates beyond the limits.
//! * [`handshake`]: the QEMU hookup struct, the SHA-1 cookie reply, `SO_PEERCRED`.
//! * [`Listener`] / [`Connection`]: accept VMs (handshakes run concurrently, each under
//!   one deadline, after a peer-uid check; the UNIX socket is never reachable with a
//!   wider mode than configured). No reader thread: the thread that waits (for a reply
//!   or an event) reads the socket itself while nobody else does and routes what is not
//!   its own, by sequence number, to the other waiters or into the bounded event queue
//!   (see [`router`]); a request costs one `write` and one `read`. Commands may be
//!   issued from any thread, including event handlers; every wait has a timeout; a
//!   disconnect or a desynchronised stream wakes every waiter with
//!   [`ProtoError::Disconnected`].
//! * [`request`]: every command as a typed [`Request<T>`] (encoding and reply
//!   decoder, no I/O), sent by [`Connection::send`] (a [`Pending<T>`] reply handle),
//!   [`Connection::send_all`] (many in one `write`) or [`Connection::pipeline`] (the
//!   windowed loop); [`commands`]: a typed method per command (`send` + `wait`);
//!   [`event`]: a received [`Event`] is answered exactly once (replying consumes it,
//!   dropping it sends its default reply); [`Batch`]: many commands/replies in one
//!   round trip.
//!
//! * [`Listener::bind`] listens on a UNIX socket path, [`Listener::bind_vsock`] on an
//!   `AF_VSOCK` port (any CID); both accept into the same [`Connection`], which runs on
//!   a [`Stream`] (UNIX or [`VsockStream`]).
//! * Batch failures: on kvmi-v7, [`Batch::commit`] asks for `CMD_ERROR` events and
//!   returns [`ProtoError::BatchFailed`] naming each failed command; kvmi-v6 can't
//!   report them (see [`batch`]).
//!
//! # Example
//!
//! ```no_run
//! use kvmi_proto::{Action, Config, EventKind, Listener};
//! use std::time::Duration;
//!
//! # fn main() -> Result<(), kvmi_proto::ProtoError> {
//! let cfg = Config { secret: Some(b"s3cret".to_vec()), ..Config::default() };
//! let listener = Listener::bind("/run/kvmi.sock", cfg)?;
//! let conn = listener.accept(Duration::from_secs(30))?;
//! println!("VM {} ({:?}), {} vCPUs", conn.hookup().name, conn.abi(), conn.get_guest_info()?);
//! conn.control_events(0, kvmi_sys::KVMI_EVENT_CR, true)?;
//! conn.control_cr(0, 3, true)?;
//! let ev = conn.next_event(Duration::from_secs(5))?;
//! if let EventKind::Cr(cr) = ev.kind {
//!     ev.reply_cr(Action::Continue, cr.new_value)?;
//! } // else: `ev` is dropped here and answered with its default reply
//! # Ok(()) }
//! ```
//!
//! An event is answered exactly once by construction: a second reply does not compile.
//!
//! ```compile_fail,E0382
//! # fn f(conn: &kvmi_proto::Connection) -> kvmi_proto::Result<()> {
//! let ev = conn.next_event(std::time::Duration::from_secs(5))?;
//! ev.reply_continue()?;
//! ev.reply(kvmi_proto::Action::Retry)?; // use of moved value: `ev`
//! # Ok(()) }
//! ```

pub mod batch;
pub mod codec;
pub mod commands;
pub mod connection;
pub mod error;
pub mod event;
pub mod handshake;
pub mod listener;
pub mod pipeline;
pub mod request;
pub mod router;
pub mod stream;

pub use batch::Batch;
pub use codec::Abi;
pub use connection::{Config, Connection, PendingReply, Probe};
pub use error::{BatchFailure, CommandName, EventName, ProtoError, Result};
pub use event::{Action, Event, EventInfo, EventKind, PfInfo, PfReply, Reply, TrapInfo};
pub use handshake::{HookupInfo, PeerCredentials, PeerUids};
/// The raw ids and wire structs this crate speaks (`kvmi-sys`), for users that need
/// constants or register layouts without depending on it themselves.
pub use kvmi_sys as sys;
pub use listener::{Listener, Rejected};
pub use pipeline::Flow;
pub use request::{Pending, Registers, Request};
pub use stream::{SocketTimeout, Stream, VsockStream};

#[cfg(test)]
mod tests;
