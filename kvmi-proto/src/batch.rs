//! libkvmi-style batching: many commands and event replies in one `write`, one round
//! trip.
//!
//! A batch is sent as `[CONTROL_CMD_RESPONSE enable=0 now=1 flags]`, the queued
//! messages, then `[CONTROL_CMD_RESPONSE enable=1 now=1]`; only the final message is
//! answered. Commands in a batch must not have reply data (the kernel closes the socket
//! otherwise). A batch that holds only event replies is sent unwrapped.
//!
//! # Failure reporting
//!
//! On kvmi-v7 the leading message sets `flags` bit 0
//! ([`KVMI_CMD_RESPONSE_FLAG_CMD_ERROR`](kvmi_sys::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR)): the
//! host then sends a `KVMI_EVENT_CMD_ERROR` event (a VM event that gets no reply) for
//! each command that fails while replies are off. [`Batch::commit`] collects the
//! `CMD_ERROR` events naming one of the batch's seqs that arrive before the final reply
//! (they never reach [`Connection::next_event`]) and returns
//! [`ProtoError::BatchFailed`] listing each failed command (batch index, seq, id,
//! `KVM_E*` code). The rest of the batch was still executed.
//!
//! * The flag needs QEMU to allow the `CMD_ERROR` event (else the leading message
//!   fails with `-KVM_EPERM` and replies simply stay on). The flag is not sent when
//!   the probe cache says `CMD_ERROR` is disallowed; when the cache has no entry (e.g.
//!   [`Config::probe`](crate::Config::probe) off) it is tried, and an `-KVM_EPERM`
//!   answer is cached. If the leading message fails, every batched command is answered
//!   individually and error replies are reported the same way.
//! * kvmi-v6 has no `flags` byte (it must be 0, else `-KVM_EINVAL`) and no `CMD_ERROR`
//!   event: there, as with `CMD_ERROR` disallowed, a failing command inside a batch is
//!   **not reported** and `commit` returns `Ok(())` (see [`Batch::reports_errors`]).
//! * kvmi-v7 runs most vCPU commands as jobs on the vCPU thread. Errors found before
//!   queueing (bad vCPU index, bad padding) arrive in order, before the final reply; a
//!   `CMD_ERROR` sent later by the vCPU job itself may arrive after the final reply and
//!   is then queued as an ordinary [`EventKind::CmdError`](crate::EventKind::CmdError)
//!   event.

use crate::codec::{self, Abi};
use crate::connection::Connection;
use crate::error::{BatchFailure, ProtoError, Result};
use crate::event::{Event, Reply};
use crate::request::Request;
use kvmi_sys as sys;
use std::time::Duration;
use zerocopy::IntoBytes;

/// A batch under construction; see the module docs.
#[derive(Debug)]
pub struct Batch<'c> {
    conn: &'c Connection,
    msgs: Vec<u8>,
    /// `(seq, id, index)` of each queued command.
    commands: Vec<(u32, u16, usize)>,
    /// The events whose replies are queued: answered by the batch's write, or with
    /// their default reply if the batch is dropped without a commit.
    replies: Vec<Event>,
}

impl<'c> Batch<'c> {
    /// An empty batch on `conn`.
    pub fn new(conn: &'c Connection) -> Self {
        Batch {
            conn,
            msgs: Vec::new(),
            commands: Vec::new(),
            replies: Vec::new(),
        }
    }

    /// Queues a raw command (payload includes the vCPU header for vCPU commands).
    pub fn command(&mut self, id: u16, payload: &[u8]) -> Result<&mut Self> {
        let seq = self.conn.shared.next_seq();
        codec::encode_into(&mut self.msgs, id, seq, &[payload])?;
        let index = self.len();
        self.commands.push((seq, id, index));
        Ok(self)
    }

    /// Queues the reply to `event` (an [`Action`](crate::Action) or a [`Reply`]),
    /// taking the event: it is answered by [`commit`](Self::commit), or with its
    /// default reply if the batch is dropped uncommitted.
    pub fn reply(&mut self, event: Event, reply: impl Into<Reply>) -> Result<&mut Self> {
        if event.needs_reply() {
            event.encode_reply(&reply.into(), &mut self.msgs)?;
            self.replies.push(event);
        }
        Ok(self)
    }

    /// Queues a typed request whose reply carries no data (a batch gets no reply per
    /// command; see the module docs).
    pub fn push(&mut self, req: Request<()>) -> Result<&mut Self> {
        self.command(req.id(), req.payload())
    }

    /// Queues `VM_SET_PAGE_ACCESS`.
    pub fn set_page_access(&mut self, view: u16, entries: &[(u64, u8)]) -> Result<&mut Self> {
        self.push(Request::set_page_access(view, entries)?)
    }

    /// Queues `VCPU_PAUSE`.
    pub fn pause_vcpu(&mut self, vcpu: u16, wait: bool) -> Result<&mut Self> {
        self.push(Request::pause_vcpu(vcpu, wait))
    }

    /// Queues `VCPU_SET_REGISTERS`.
    pub fn set_registers(&mut self, vcpu: u16, regs: &sys::KvmRegs) -> Result<&mut Self> {
        self.push(Request::set_registers(vcpu, regs))
    }

    /// Sequence number of the most recently queued command (to match a
    /// [`BatchFailure`]).
    pub fn last_seq(&self) -> Option<u32> {
        self.commands.last().map(|c| c.0)
    }

    /// Number of queued commands and event replies.
    pub fn len(&self) -> usize {
        self.commands.len() + self.replies.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `flags` of the leading `CONTROL_CMD_RESPONSE`: the `CMD_ERROR` flag on
    /// kvmi-v7 unless the probe cache says that event is disallowed.
    fn flags(&self) -> u8 {
        let disallowed = self.conn.cached_event_allowed(sys::KVMI_EVENT_CMD_ERROR) == Some(false);
        if self.conn.abi() == Abi::V7 && !disallowed {
            sys::KVMI_CMD_RESPONSE_FLAG_CMD_ERROR
        } else {
            0
        }
    }

    /// Whether [`commit`](Self::commit) asks the host to report failing commands
    /// (kvmi-v7 and `CMD_ERROR` not known to be disallowed); if not, a failing command
    /// in the batch goes unreported (see the module docs).
    pub fn reports_errors(&self) -> bool {
        self.flags() != 0
    }

    /// The bytes [`commit`](Self::commit) would write, given the seqs of the wrapper
    /// messages (for tests and inspection).
    pub fn wire_bytes(&self, first_seq: u32, last_seq: u32) -> Result<Vec<u8>> {
        if self.commands.is_empty() {
            return Ok(self.msgs.clone());
        }
        let off = sys::VmControlCmdResponse {
            enable: 0,
            now: 1,
            flags: self.flags(),
            ..Default::default()
        };
        let on = sys::VmControlCmdResponse {
            enable: 1,
            now: 1,
            ..Default::default()
        };
        let mut out = Vec::with_capacity(self.msgs.len() + 32);
        codec::encode_into(
            &mut out,
            sys::KVMI_VM_CONTROL_CMD_RESPONSE,
            first_seq,
            &[off.as_bytes()],
        )?;
        out.extend_from_slice(&self.msgs);
        codec::encode_into(
            &mut out,
            sys::KVMI_VM_CONTROL_CMD_RESPONSE,
            last_seq,
            &[on.as_bytes()],
        )?;
        Ok(out)
    }

    /// Sends the batch in one write and waits (up to `timeout`) for the final reply.
    ///
    /// Returns [`ProtoError::BatchFailed`] if the host reported failing commands (see
    /// the module docs; the other messages took effect), or the error of the final
    /// reply / the wait.
    pub fn commit(mut self, timeout: Duration) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let shared = &self.conn.shared;
        if self.commands.is_empty() {
            let r = shared.write(&self.msgs);
            self.replies.drain(..).for_each(Event::disarm);
            return r;
        }
        let first = shared.next_seq();
        let last = shared.next_seq();
        let flags = self.flags();
        let bytes = self.wire_bytes(first, last)?;
        let mut msgs = Vec::with_capacity(self.commands.len() + 1);
        msgs.push((first, sys::KVMI_VM_CONTROL_CMD_RESPONSE));
        msgs.extend(self.commands.iter().map(|&(seq, id, _)| (seq, id)));
        shared.register(last, sys::KVMI_VM_CONTROL_CMD_RESPONSE)?;
        let pending = crate::connection::PendingReply::new(
            std::sync::Arc::clone(shared),
            last,
            sys::KVMI_VM_CONTROL_CMD_RESPONSE,
        );
        shared.register_batch(&msgs)?;
        let written = shared.write(&bytes);
        // Written (or the connection is gone): the replies are out, or nobody waits.
        self.replies.drain(..).for_each(Event::disarm);
        let sent = written.and_then(|()| pending.wait(timeout));
        // Frames are routed in arrival order, so every CMD_ERROR event / error reply the
        // host sent before the final reply has been recorded by now.
        let found = shared.take_batch(msgs.iter().map(|&(seq, _)| seq));
        sent?;
        let mut failures = Vec::new();
        for (i, f) in found.into_iter().enumerate() {
            let Some((id, err)) = f else { continue };
            let (seq, index) = if i == 0 {
                if flags != 0 && err == -sys::KVM_EPERM {
                    // CMD_ERROR is not allowed: replies stayed on, and every command
                    // was answered (and its errors recorded) individually.
                    self.conn.note_event_disallowed(sys::KVMI_EVENT_CMD_ERROR);
                    continue;
                }
                (first, None)
            } else {
                let (seq, _, index) = self.commands[i - 1];
                (seq, Some(index))
            };
            failures.push(BatchFailure {
                index,
                seq,
                id,
                err,
            });
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::BatchFailed(failures))
        }
    }
}
