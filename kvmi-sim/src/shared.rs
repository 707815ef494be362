//! State shared by the API and the server thread, and sending frames (with the fault
//! plan applied).

use crate::model::Vm;
use crate::{server, Fault, SimConfig, SimEvent, SimReply, Stats, WireRecord};
use kvmi_sys as sys;
use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::{Condvar, Mutex, MutexGuard};
use zerocopy::IntoBytes;

/// Per-vCPU outstanding event.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) seq: u32,
    pub(crate) event: SimEvent,
    /// An `EventHandle` waits for this reply.
    pub(crate) waited: bool,
}

/// How many recent event replies [`Simulator::recent_replies`](crate::Simulator::recent_replies) keeps.
pub const RECENT_MAX: usize = 256;

/// Mutable simulator state (behind one mutex).
pub(crate) struct State {
    pub(crate) vm: Vm,
    pub(crate) pending: Vec<Option<Pending>>,
    pub(crate) completed: BTreeMap<u32, SimReply>,
    pub(crate) recent: std::collections::VecDeque<SimReply>,
    pub(crate) seq: u32,
    pub(crate) replies_enabled: bool,
    pub(crate) cmd_error_flag: bool,
    pub(crate) stats: Stats,
    pub(crate) closed: Option<String>,
    pub(crate) crossed: u64,
    pub(crate) sent: u64,
    pub(crate) armed: Option<Fault>,
    /// `trigger` calls waiting for a busy vCPU (tests observe it).
    pub(crate) busy_waiters: usize,
    /// The receive thread handles no frame while set (see
    /// [`Simulator::set_stalled`](crate::Simulator::set_stalled)).
    pub(crate) stalled: bool,
    /// A write to the tool failed (it closed its end): frames it sent before are still
    /// handled, their replies dropped, until the receive thread reads the end of the
    /// stream and closes.
    pub(crate) peer_gone: bool,
    /// Paused vCPUs send no `PAUSE_VCPU` event while set (see
    /// [`Simulator::set_hold_pauses`](crate::Simulator::set_hold_pauses)).
    pub(crate) hold_pauses: bool,
}

/// State shared between the API and the server thread.
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) state: Mutex<State>,
    pub(crate) cond: Condvar,
    pub(crate) stream: UnixStream,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Close the connection (idempotent).
    pub(crate) fn close(&self, st: &mut State, reason: impl Into<String>) {
        if st.closed.is_none() {
            st.closed = Some(reason.into());
            let _ = self.stream.shutdown(std::net::Shutdown::Both);
        }
        self.cond.notify_all();
    }

    /// Count a frame crossing the wire and apply `drop_after_messages`.
    pub(crate) fn crossed(&self, st: &mut State) {
        st.crossed += 1;
        if let Some(n) = self.cfg.faults.drop_after_messages {
            if st.crossed >= n {
                self.close(st, "fault plan: dropped connection");
            }
        }
    }

    /// Send one frame, applying the fault plan.
    /// The payload is the concatenation of `parts` (copied once, into the frame).
    pub(crate) fn send(&self, st: &mut State, id: u16, seq: u32, parts: &[&[u8]], rec: WireRecord) {
        if st.closed.is_some() || st.peer_gone {
            return;
        }
        let size: usize = parts.iter().map(|p| p.len()).sum();
        let hdr = sys::MsgHdr {
            id,
            size: size as u16,
            seq,
        };
        let mut frame = Vec::with_capacity(8 + size);
        frame.extend_from_slice(hdr.as_bytes());
        for p in parts {
            frame.extend_from_slice(p);
        }
        let n = st.sent;
        st.sent += 1;
        let faults = &self.cfg.faults;
        if let Some((at, off, mask)) = faults.corrupt_frame {
            if at == n {
                if let Some(b) = frame.get_mut(off) {
                    *b ^= mask;
                }
            }
        }
        let mut truncate = false;
        if let Some((at, keep)) = faults.truncate_frame {
            if at == n {
                frame.truncate(keep);
                truncate = true;
            }
        }
        let mut drop_after = false;
        match st.armed.take() {
            Some(Fault::CorruptNext { offset, mask }) => {
                if let Some(b) = frame.get_mut(offset) {
                    *b ^= mask;
                }
            }
            Some(Fault::TruncateNext { keep }) => {
                frame.truncate(keep);
                truncate = true;
            }
            Some(Fault::DropAfterNext) => drop_after = true,
            None => {}
        }
        let res = (&self.stream).write_all(&frame);
        st.stats.frames_out += 1;
        st.stats.bytes_out += frame.len() as u64;
        st.stats.record(rec);
        if truncate {
            self.close(st, "fault plan: truncated frame");
            return;
        }
        if let Err(e) = res {
            if matches!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            ) {
                // The tool closed its end. Like the kernel's receive thread, the
                // frames it wrote before closing are still read and handled; the
                // end of the stream then closes the connection.
                st.peer_gone = true;
                self.cond.notify_all();
                return;
            }
            self.close(st, format!("write failed: {e}"));
            return;
        }
        if drop_after {
            self.close(st, "fault: dropped connection");
            return;
        }
        self.crossed(st);
    }

    /// Build and send an event for `vcpu`; returns its seq.
    pub(crate) fn send_event(&self, st: &mut State, vcpu: usize, ev: &SimEvent) -> u32 {
        st.seq = st.seq.wrapping_add(1);
        let seq = st.seq;
        let payload = server::event_payload(&self.cfg, &st.vm, vcpu, ev);
        let id = ev.id();
        *st.stats.events.entry(id).or_default() += 1;
        let rec = WireRecord {
            outgoing: true,
            id: sys::KVMI_EVENT,
            seq,
            size: payload.len() as u16,
            event: Some(id),
            err: None,
        };
        self.send(st, sys::KVMI_EVENT, seq, &[&payload], rec);
        seq
    }
}
