//! A client for the GDB remote serial protocol, as QEMU's gdbstub speaks it.
//!
//! No maintained Rust RSP *client* exists (the `gdbstub` crate is the server side), so
//! this is ours. It is split like `gdbstub`: [`codec`] holds the pure protocol logic
//! (framing, checksums, escapes, run-length decoding, stop replies, target XML), and
//! [`GdbClient`] drives it over any byte stream (a UNIX socket or TCP with `TCP_NODELAY`,
//! without which every packet waits ~40 ms for a delayed ACK).
//!
//! QEMU specifics handled here: it does not support `QStartNoAckMode`, so every packet is
//! acknowledged; `qqemu.sstep` masks IRQs and timers while single-stepping;
//! `Qqemu.PhyMemMode:1` makes `m`/`M` use guest-physical addresses; threads are vCPUs
//! (thread id = vCPU index + 1).

mod client;
pub mod codec;
mod transport;

#[cfg(test)]
use client::MAX_BUFFERED;
pub use client::{BreakpointKind, GdbClient, GdbCounters};
pub use transport::{GdbAddress, Transport};

#[cfg(test)]
mod cache_tests;

#[cfg(test)]
mod client_tests;

#[cfg(test)]
mod hostile_tests;
