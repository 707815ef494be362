//! libkvmi-style batching: many commands and event replies in one `write`, one round
//! trip.
//!
//! A batch is sent as `[CONTROL_CMD_RESPONSE enable=0 now=1]`, the queued messages, then
//! `[CONTROL_CMD_RESPONSE enable=1 now=1]`; only the final message is answered. Commands
//! in a batch must not have reply data (the kernel closes the socket otherwise) and a
//! failing command is not reported (the final reply only says the batch was received).
//! A batch that holds only event replies is sent unwrapped.

use crate::codec;
use crate::commands::{page_access_payload, vcpu_payload};
use crate::connection::Connection;
use crate::error::Result;
use crate::event::EventResponse;
use kvmi_sys as sys;
use std::time::Duration;
use zerocopy::IntoBytes;

/// A batch under construction; see the module docs.
#[derive(Debug)]
pub struct Batch<'c> {
    conn: &'c Connection,
    msgs: Vec<u8>,
    commands: usize,
    replies: usize,
}

impl<'c> Batch<'c> {
    /// An empty batch on `conn`.
    pub fn new(conn: &'c Connection) -> Self {
        Batch {
            conn,
            msgs: Vec::new(),
            commands: 0,
            replies: 0,
        }
    }

    /// Queues a raw command (payload includes the vCPU header for vCPU commands).
    pub fn command(&mut self, id: u16, payload: &[u8]) -> Result<&mut Self> {
        let seq = self.conn.shared.next_seq();
        codec::encode_into(&mut self.msgs, id, seq, &[payload])?;
        self.commands += 1;
        Ok(self)
    }

    /// Queues an event reply.
    pub fn reply(&mut self, reply: &EventResponse) -> Result<&mut Self> {
        reply.encode_into(&mut self.msgs)?;
        self.replies += 1;
        Ok(self)
    }

    /// Queues `VM_SET_PAGE_ACCESS`.
    pub fn set_page_access(&mut self, view: u16, entries: &[(u64, u8)]) -> Result<&mut Self> {
        let p = page_access_payload(view, entries)?;
        self.command(sys::KVMI_VM_SET_PAGE_ACCESS, &p)
    }

    /// Queues `VCPU_PAUSE`.
    pub fn pause_vcpu(&mut self, vcpu: u16, wait: bool) -> Result<&mut Self> {
        let body = sys::VcpuPause {
            wait: u8::from(wait),
            ..Default::default()
        };
        self.command(sys::KVMI_VCPU_PAUSE, &vcpu_payload(vcpu, body.as_bytes()))
    }

    /// Queues `VCPU_SET_REGISTERS`.
    pub fn set_registers(&mut self, vcpu: u16, regs: &sys::KvmRegs) -> Result<&mut Self> {
        self.command(
            sys::KVMI_VCPU_SET_REGISTERS,
            &vcpu_payload(vcpu, regs.as_bytes()),
        )
    }

    /// Number of queued commands and event replies.
    pub fn len(&self) -> usize {
        self.commands + self.replies
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes [`commit`](Self::commit) would write, given the seqs of the wrapper
    /// messages (for tests and inspection).
    pub fn wire_bytes(&self, first_seq: u32, last_seq: u32) -> Result<Vec<u8>> {
        if self.commands == 0 {
            return Ok(self.msgs.clone());
        }
        let off = sys::VmControlCmdResponse {
            enable: 0,
            now: 1,
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
    pub fn commit(self, timeout: Duration) -> Result<()> {
        if self.is_empty() {
            return Ok(());
        }
        let shared = &self.conn.shared;
        if self.commands == 0 {
            return shared.write(&self.msgs);
        }
        let first = shared.next_seq();
        let last = shared.next_seq();
        let bytes = self.wire_bytes(first, last)?;
        let rx = shared.register(last, sys::KVMI_VM_CONTROL_CMD_RESPONSE)?;
        let pending = crate::connection::PendingReply::new(
            std::sync::Arc::clone(shared),
            last,
            sys::KVMI_VM_CONTROL_CMD_RESPONSE,
            rx,
        );
        shared.write(&bytes)?;
        pending.wait(timeout).map(drop)
    }
}
