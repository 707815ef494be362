//! Counters and a bounded transcript of what crossed the wire.

use kvmi_sys as sys;
use std::collections::BTreeMap;

/// Counters and a bounded transcript of what crossed the wire.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// Commands received, by id.
    pub commands: BTreeMap<u16, u64>,
    /// Command replies sent, by (id, err).
    pub replies: BTreeMap<(u16, i32), u64>,
    /// Events sent, by id.
    pub events: BTreeMap<u8, u64>,
    /// Event replies received, by event id.
    pub event_replies: BTreeMap<u8, u64>,
    /// Frames received / sent after the handshake.
    pub frames_in: u64,
    /// Frames sent.
    pub frames_out: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Last frames (at most [`Stats::TRANSCRIPT_MAX`]).
    pub transcript: std::collections::VecDeque<WireRecord>,
}

/// One frame in the transcript.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireRecord {
    /// `true` if sent by the simulator.
    pub outgoing: bool,
    /// Header id.
    pub id: u16,
    /// Header seq.
    pub seq: u32,
    /// Payload size.
    pub size: u16,
    /// Event id (events and event replies).
    pub event: Option<u8>,
    /// Error code (command replies).
    pub err: Option<i32>,
}

impl Stats {
    /// Maximum transcript length kept.
    pub const TRANSCRIPT_MAX: usize = 10_000;

    pub(crate) fn record(&mut self, r: WireRecord) {
        if self.transcript.len() >= Self::TRANSCRIPT_MAX {
            self.transcript.pop_front();
        }
        self.transcript.push_back(r);
    }
}

/// Name of a command id for summaries: the kvmi-v7 C name (the kvmi-v6 one for the
/// v6-only ids), or `"unknown"`; see [`kvmi_sys::command_name`].
pub fn command_name(id: u16) -> &'static str {
    sys::command_name(id)
        .or(sys::v6::command_name(id))
        .unwrap_or("unknown")
}

/// Name of an event id for summaries (or `"unknown"`); see [`kvmi_sys::event_name`].
pub fn event_name(id: u8) -> &'static str {
    sys::event_name(id).unwrap_or("unknown")
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "frames in/out: {}/{}, bytes in/out: {}/{}",
            self.frames_in, self.frames_out, self.bytes_in, self.bytes_out
        )?;
        writeln!(f, "commands received:")?;
        for (id, n) in &self.commands {
            writeln!(f, "  {:>2} {:<28} {n}", id, command_name(*id))?;
        }
        writeln!(f, "command replies (id, err):")?;
        for ((id, err), n) in &self.replies {
            writeln!(f, "  {:>2} {:<28} err {err:<5} {n}", id, command_name(*id))?;
        }
        writeln!(f, "events sent / replies received:")?;
        for (id, n) in &self.events {
            let r = self.event_replies.get(id).copied().unwrap_or(0);
            writeln!(f, "  {:>2} {:<21} {n} / {r}", id, event_name(*id))?;
        }
        Ok(())
    }
}
