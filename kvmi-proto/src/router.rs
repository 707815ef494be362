//! The receive path without a reader thread ("leader/follower").
//!
//! Whichever thread waits (for a reply, an event, a batch) reads the socket itself while
//! nobody else does: the right to read is a token (`State::reading`) taken and given
//! back under the state lock. The token holder reads once (one `read` into a buffer
//! that usually holds a whole frame, often several), routes every complete frame under
//! the state lock (replies into their waiter's slot, events into the bounded queue,
//! batch failures into the batch's slots), wakes exactly the threads whose item
//! arrived, and gives the token back. A thread leaving the wait loop with the token
//! free wakes one parked waiter to take it over, so a message is never
//! left unread while someone waits for it and never read by a thread that then sleeps
//! holding it (routing happens before the token is released).
//!
//! The common case, one thread issuing a request while nobody else reads, costs one
//! `write` and one `read`: no thread hand-over at all. A request issued while another
//! thread holds the token (e.g. an event loop blocked in `next_event`) costs one
//! wake-up: that thread reads the reply and unparks the requester.
//!
//! Every wait is bounded by its deadline: the token holder's blocking read uses
//! `SO_RCVTIMEO` no longer than its own remaining time (re-set only when the cached
//! value would overshoot or wake far too early, so a run of requests with the same
//! timeout costs no extra syscall), and parked waiters use `park_timeout`.
//!
//! Framing errors are fatal at once: a header announcing more than the protocol
//! allows, a reply shorter than its error code, a reply naming a sequence number never
//! sent or answering a request with another command id, a second reply for one request,
//! an unparsable event, or a frame left incomplete for [`FRAME_STALL`] all mean the
//! stream is out of sync, so the connection is closed and every waiter woken with
//! [`ProtoError::Disconnected`].

use crate::codec::{self, Abi};
use crate::error::{ProtoError, Result};
use crate::event::{parse_event, EventInfo, EventKind};
use crate::stream::Stream;
use kvmi_sys as sys;
use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

/// A frame whose bytes stop arriving for this long is taken as a desynchronised stream
/// (the kernel writes every message in one `sendmsg`, so it never leaves one half-sent).
pub const FRAME_STALL: Duration = Duration::from_secs(1);

/// Receive buffer: room for several maximal frames (8 + 8200 bytes each).
const READ_BUF: usize = 32 * 1024;

/// Longest single blocking read (a waiter with a longer deadline reads again).
const MAX_READ_TIMEOUT: Duration = Duration::from_secs(64);

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// `now + d`, saturating far in the future instead of panicking (`Duration::MAX`).
pub(crate) fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .or_else(|| now.checked_add(Duration::from_secs(86_400)))
        .unwrap_or(now)
}

/// A message of a batch in flight: its command id and the first failure reported for
/// it (by a `CMD_ERROR` event or an error reply), as `(id, err)`.
pub(crate) struct BatchSlot {
    id: u16,
    failure: Option<(u16, i32)>,
}

/// A request waiting for its reply.
struct Slot {
    id: u16,
    reply: Option<Vec<u8>>,
}

/// What a parked thread waits for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Reply(u32),
    Event,
}

struct Sleeper {
    thread: Thread,
    want: Want,
}

struct State {
    pending: HashMap<u32, Slot>,
    /// Seqs of the messages of batches in flight (see [`crate::Batch`]).
    batch: HashMap<u32, BatchSlot>,
    /// Allocated on arrival: an event then moves as a pointer through the queue, the
    /// wait and the [`crate::Event`] made of it (each ~600 bytes otherwise).
    events: VecDeque<Arc<EventInfo>>,
    sleepers: Vec<Sleeper>,
    /// The read token: some thread is reading the socket.
    reading: bool,
    closed: Option<String>,
}

impl State {
    /// Wakes one thread parked for `want` (taking it off the list, so the next
    /// message for the same kind of waiter wakes another one).
    fn wake(&mut self, want: Want) {
        if let Some(i) = self.sleepers.iter().position(|s| s.want == want) {
            self.sleepers.swap_remove(i).thread.unpark();
        }
    }

    fn wake_all(&mut self) {
        for s in self.sleepers.drain(..) {
            s.thread.unpark();
        }
    }

    /// With the token free, wakes one parked thread to take it over (threads whose item
    /// arrived were woken, and left the list, when it was routed).
    fn pass_token(&mut self) {
        if self.reading || self.closed.is_some() || self.sleepers.is_empty() {
            return;
        }
        self.sleepers.swap_remove(0).thread.unpark();
    }
}

/// The token holder's side: the read handle and the bytes read but not yet routed
/// (at most one incomplete frame between reads).
struct ReadSide {
    stream: Stream,
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// The `SO_RCVTIMEO` currently set (`None`: unknown or none).
    timeout: Option<Duration>,
    /// When the incomplete frame at `start` last received bytes.
    partial_since: Option<Instant>,
}

/// The per-connection engine shared by [`Connection`](crate::Connection),
/// [`PendingReply`](crate::PendingReply) and unanswered [`Event`](crate::Event)s.
pub(crate) struct Shared {
    writer: Mutex<Stream>,
    /// A third handle for `shutdown`, usable while a writer or the reader blocks.
    control: Stream,
    read: Mutex<ReadSide>,
    state: Mutex<State>,
    seq: AtomicU32,
    abi: AtomicU8,
    stray_replies: AtomicU32,
    event_cap: usize,
    write_timeout: Duration,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

enum ReadOutcome {
    /// Bytes arrived (maybe no complete frame yet), or the read timed out.
    Progress,
    /// The stream is unusable; close with this reason.
    Fatal(String),
}

/// The `SO_RCVTIMEO` to use for `remaining` time: the largest power of two of
/// milliseconds not above it (so consecutive waits with similar deadlines agree on
/// the value), exact below one millisecond, never zero ("no timeout").
fn read_timeout_for(remaining: Duration) -> Duration {
    let r = remaining.min(MAX_READ_TIMEOUT);
    let ms = r.as_millis() as u64;
    if ms == 0 {
        return r.max(Duration::from_micros(1));
    }
    Duration::from_millis(1u64 << (63 - ms.leading_zeros()))
}

impl Shared {
    /// A connected engine on `stream` (the handshake is done; `reader` is a clone of
    /// it used only by the token holder).
    pub(crate) fn new(
        stream: Stream,
        reader: Stream,
        control: Stream,
        event_cap: usize,
        write_timeout: Duration,
    ) -> Shared {
        Shared {
            writer: Mutex::new(stream),
            control,
            read: Mutex::new(ReadSide {
                stream: reader,
                buf: vec![0u8; READ_BUF].into_boxed_slice(),
                start: 0,
                end: 0,
                timeout: None,
                partial_since: None,
            }),
            state: Mutex::new(State {
                pending: HashMap::new(),
                batch: HashMap::new(),
                events: VecDeque::new(),
                sleepers: Vec::new(),
                reading: false,
                closed: None,
            }),
            seq: AtomicU32::new(0),
            abi: AtomicU8::new(7),
            stray_replies: AtomicU32::new(0),
            event_cap: event_cap.max(1),
            write_timeout,
        }
    }

    /// The next request sequence number (never 0, so a 0 in a reply is always bogus).
    pub(crate) fn next_seq(&self) -> u32 {
        loop {
            let s = self.seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
            if s != 0 {
                return s;
            }
        }
    }

    pub(crate) fn abi(&self) -> Abi {
        if self.abi.load(Ordering::Relaxed) == 6 {
            Abi::V6
        } else {
            Abi::V7
        }
    }

    pub(crate) fn set_abi(&self, abi: Abi) {
        self.abi
            .store(if abi == Abi::V6 { 6 } else { 7 }, Ordering::Relaxed);
    }

    pub(crate) fn stray_replies(&self) -> u32 {
        self.stray_replies.load(Ordering::Relaxed)
    }

    /// Registers a waiter for `seq` (must happen before the request is written).
    pub(crate) fn register(&self, seq: u32, id: u16) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(r) = &st.closed {
            return Err(ProtoError::Disconnected(r.clone()));
        }
        st.pending.insert(seq, Slot { id, reply: None });
        Ok(())
    }

    pub(crate) fn unregister(&self, seq: u32) {
        let mut st = lock(&self.state);
        st.pending.remove(&seq);
        // A waiter parked for this seq (another thread's `wait_raw`) re-checks.
        st.wake(Want::Reply(seq));
    }

    /// Starts collecting failures of the batch messages `(seq, id)`: `CMD_ERROR` events
    /// naming one of these seqs and error replies with one of them are recorded instead
    /// of being queued as events or counted as stray replies.
    pub(crate) fn register_batch(&self, msgs: &[(u32, u16)]) -> Result<()> {
        let mut st = lock(&self.state);
        if let Some(r) = &st.closed {
            return Err(ProtoError::Disconnected(r.clone()));
        }
        for &(seq, id) in msgs {
            st.batch.insert(seq, BatchSlot { id, failure: None });
        }
        Ok(())
    }

    /// Stops collecting for `seqs`; returns the failure recorded for each, in order.
    pub(crate) fn take_batch(&self, seqs: impl Iterator<Item = u32>) -> Vec<Option<(u16, i32)>> {
        let mut st = lock(&self.state);
        seqs.map(|seq| st.batch.remove(&seq).and_then(|s| s.failure))
            .collect()
    }

    /// Writes bytes as one `write` (under the writer lock). A failed write leaves the
    /// stream in an unknown state, so it closes the connection; a write that timed out
    /// is a [`ProtoError::Timeout`].
    pub(crate) fn write(&self, bytes: &[u8]) -> Result<()> {
        if let Some(r) = &lock(&self.state).closed {
            return Err(ProtoError::Disconnected(r.clone()));
        }
        let mut w = lock(&self.writer);
        if let Err(e) = w.write_all(bytes) {
            drop(w);
            self.close(format!("write failed: {e}"));
            return Err(match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => {
                    ProtoError::Timeout(self.write_timeout)
                }
                _ => e.into(),
            });
        }
        Ok(())
    }

    /// Marks the connection closed (first reason wins), shuts the socket down (which
    /// also ends a blocking read of the token holder) and wakes every waiter.
    pub(crate) fn close(&self, reason: String) {
        let _ = self.control.shutdown(Shutdown::Both);
        let mut st = lock(&self.state);
        Self::close_locked(&mut st, reason);
    }

    fn close_locked(st: &mut State, reason: String) {
        if st.closed.is_none() {
            st.closed = Some(reason);
        }
        st.wake_all();
    }

    pub(crate) fn closed_reason(&self) -> Option<String> {
        lock(&self.state).closed.clone()
    }

    /// Waits until the reply for `seq` arrives (whole payload, error code included).
    /// The slot stays registered on timeout (a later wait may still get the reply).
    pub(crate) fn wait_reply(&self, seq: u32, timeout: Duration) -> Result<Vec<u8>> {
        self.wait(timeout, Want::Reply(seq), |st| {
            match st.pending.get_mut(&seq) {
                Some(slot) => slot.reply.take().map(Ok),
                None => Some(Err(ProtoError::Disconnected(
                    st.closed
                        .clone()
                        .unwrap_or_else(|| format!("request {seq} no longer awaited")),
                ))),
            }
        })
    }

    /// Waits for the next event. Events queued before a disconnect come first.
    pub(crate) fn wait_event(&self, timeout: Duration) -> Result<Arc<EventInfo>> {
        self.wait(timeout, Want::Event, |st| st.events.pop_front().map(Ok))
    }

    /// The next queued event, after one non-blocking read if nobody else is reading.
    pub(crate) fn try_event(&self) -> Result<Option<Arc<EventInfo>>> {
        self.pump();
        let mut st = lock(&self.state);
        let ev = st.events.pop_front();
        st.pass_token();
        match (ev, &st.closed) {
            (Some(ev), _) => Ok(Some(ev)),
            (None, Some(r)) => Err(ProtoError::Disconnected(r.clone())),
            (None, None) => Ok(None),
        }
    }

    /// Number of queued events (after one non-blocking read if nobody else reads).
    pub(crate) fn queued_events(&self) -> usize {
        self.pump();
        lock(&self.state).events.len()
    }

    /// If the token is free: one non-blocking read and routing (notices events, a
    /// hang-up or garbage while nobody waits).
    pub(crate) fn pump(&self) {
        let mut st = lock(&self.state);
        if st.reading || st.closed.is_some() {
            return;
        }
        st.reading = true;
        drop(st);
        let mut rs = lock(&self.read);
        let outcome = Self::read_once(&mut rs, None);
        let mut st = lock(&self.state);
        self.finish_read(&mut rs, &mut st, outcome);
        st.pass_token();
    }

    /// The wait loop shared by replies and events: take the item if it is there; else
    /// read the socket if nobody does; else park until woken or the deadline.
    fn wait<T>(
        &self,
        timeout: Duration,
        want: Want,
        mut take: impl FnMut(&mut State) -> Option<Result<T>>,
    ) -> Result<T> {
        let deadline = deadline_after(timeout);
        let mut st = lock(&self.state);
        let mut has_read = false;
        loop {
            if let Some(r) = take(&mut st) {
                st.pass_token();
                return r;
            }
            if let Some(reason) = &st.closed {
                return Err(ProtoError::Disconnected(reason.clone()));
            }
            let now = Instant::now();
            let expired = now >= deadline;
            if expired && (has_read || st.reading) {
                st.pass_token();
                return Err(ProtoError::Timeout(timeout));
            }
            if !st.reading {
                st.reading = true;
                drop(st);
                let mut rs = lock(&self.read);
                // A wait that expired before reading at all (e.g. a zero timeout) still
                // looks once at what has arrived, without blocking.
                let remaining = (!expired).then(|| deadline - now);
                let outcome = Self::read_once(&mut rs, remaining);
                st = lock(&self.state);
                self.finish_read(&mut rs, &mut st, outcome);
                has_read = true;
                continue;
            }
            let me = thread::current();
            let id = me.id();
            st.sleepers.push(Sleeper { thread: me, want });
            drop(st);
            thread::park_timeout(deadline - now);
            st = lock(&self.state);
            st.sleepers.retain(|s| s.thread.id() != id);
        }
    }

    /// One read into the buffer: blocking with a timeout ≤ `remaining`, or
    /// non-blocking (`MSG_DONTWAIT`) when `remaining` is `None`.
    fn read_once(rs: &mut ReadSide, remaining: Option<Duration>) -> ReadOutcome {
        if rs.start == rs.end {
            rs.start = 0;
            rs.end = 0;
        } else if rs.buf.len() - rs.end < sys::MSG_HDR_SIZE + codec::MAX_RX_PAYLOAD {
            rs.buf.copy_within(rs.start..rs.end, 0);
            rs.end -= rs.start;
            rs.start = 0;
        }
        let partial = rs.start != rs.end;
        let n = match remaining {
            Some(mut r) => {
                if partial {
                    // Wake in time to notice a frame that stopped arriving.
                    let since = rs.partial_since.map_or(Duration::ZERO, |t| t.elapsed());
                    r = r.min(
                        FRAME_STALL
                            .saturating_sub(since)
                            .max(Duration::from_millis(1)),
                    );
                }
                let want = read_timeout_for(r);
                let keep = rs.timeout.is_some_and(|t| t <= r && t * 2 > want);
                if !keep {
                    if let Err(e) = rs.stream.set_read_timeout(Some(want)) {
                        return ReadOutcome::Fatal(format!("setting the read timeout: {e}"));
                    }
                    rs.timeout = Some(want);
                }
                let end = rs.end;
                rs.stream.read(&mut rs.buf[end..])
            }
            None => {
                let end = rs.end;
                recv_dontwait(&rs.stream, &mut rs.buf[end..])
            }
        };
        match n {
            Ok(0) => ReadOutcome::Fatal(if partial {
                "peer closed the connection in the middle of a frame".into()
            } else {
                "peer closed the connection".into()
            }),
            Ok(n) => {
                rs.end += n;
                rs.partial_since = Some(Instant::now());
                ReadOutcome::Progress
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                if partial && rs.partial_since.is_some_and(|t| t.elapsed() >= FRAME_STALL) {
                    ReadOutcome::Fatal(format!(
                        "stream out of sync: a frame stayed incomplete for {FRAME_STALL:?} \
                         ({} of its bytes received)",
                        rs.end - rs.start
                    ))
                } else {
                    ReadOutcome::Progress
                }
            }
            Err(e) => ReadOutcome::Fatal(format!("read failed: {e}")),
        }
    }

    /// Routes every complete frame in the buffer, then gives the token back (the
    /// caller's loop or `pass_token` hands it on).
    fn finish_read(&self, rs: &mut ReadSide, st: &mut State, outcome: ReadOutcome) {
        let mut fatal = match outcome {
            ReadOutcome::Progress => None,
            ReadOutcome::Fatal(r) => Some(r),
        };
        while fatal.is_none() {
            let avail = &rs.buf[rs.start..rs.end];
            match codec::decode(avail) {
                Ok(Some((frame, used))) => {
                    if let Err(reason) = self.route(st, frame.hdr, frame.payload) {
                        fatal = Some(reason);
                    }
                    rs.start += used;
                }
                Ok(None) => break,
                Err(e) => fatal = Some(format!("protocol error: {e}")),
            }
        }
        if rs.start == rs.end {
            rs.partial_since = None;
        }
        st.reading = false;
        if let Some(reason) = fatal {
            let _ = rs.stream.shutdown(Shutdown::Both);
            Self::close_locked(st, reason);
        }
    }

    /// Delivers one frame. `Err(reason)`: the stream is out of sync.
    fn route(
        &self,
        st: &mut State,
        hdr: sys::MsgHdr,
        payload: &[u8],
    ) -> std::result::Result<(), String> {
        if hdr.id == sys::KVMI_EVENT {
            let ev = parse_event(hdr.seq, payload, self.abi())
                .map_err(|e| format!("protocol error: bad event: {e}"))?;
            if let EventKind::CmdError(ce) = ev.kind {
                if let Some(slot) = st.batch.get_mut(&ce.msg_seq) {
                    slot.failure.get_or_insert((ce.msg_id, ce.err));
                    return Ok(());
                }
            }
            if st.events.len() >= self.event_cap {
                return Err(ProtoError::EventQueueFull(self.event_cap).to_string());
            }
            st.events.push_back(Arc::new(ev));
            st.wake(Want::Event);
            return Ok(());
        }
        let err = match codec::parse_reply(payload) {
            Ok(r) => r.err(),
            Err(e) => {
                return Err(format!(
                    "stream out of sync: reply {} (seq {}): {e}",
                    hdr.id, hdr.seq
                ))
            }
        };
        let last = self.seq.load(Ordering::Relaxed);
        if hdr.seq == 0 || (hdr.seq.wrapping_sub(last) as i32) > 0 {
            return Err(format!(
                "stream out of sync: reply {} with seq {} that was never sent",
                hdr.id, hdr.seq
            ));
        }
        if let Some(slot) = st.pending.get_mut(&hdr.seq) {
            if slot.id != hdr.id {
                return Err(format!(
                    "stream out of sync: {}",
                    ProtoError::IdMismatch {
                        expected: slot.id,
                        got: hdr.id,
                        seq: hdr.seq
                    }
                ));
            }
            if slot.reply.is_some() {
                return Err(format!(
                    "stream out of sync: second reply for seq {}",
                    hdr.seq
                ));
            }
            slot.reply = Some(payload.to_vec());
            st.wake(Want::Reply(hdr.seq));
            return Ok(());
        }
        if let Some(slot) = st.batch.get_mut(&hdr.seq) {
            if slot.id != hdr.id {
                return Err(format!(
                    "stream out of sync: reply id {} for batch message {} (seq {})",
                    hdr.id, slot.id, hdr.seq
                ));
            }
            // A batch message answered although replies should be off (the leading
            // CONTROL_CMD_RESPONSE failed, so they stayed on).
            if let Some(err) = err {
                slot.failure.get_or_insert((hdr.id, err));
            }
            return Ok(());
        }
        self.stray_replies.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// `recv(MSG_DONTWAIT)`: a non-blocking read that leaves the socket's (shared) file
/// status flags alone, so a concurrent writer keeps blocking semantics.
fn recv_dontwait(s: &Stream, buf: &mut [u8]) -> std::io::Result<usize> {
    let (got, _) = rustix::net::recv(s, buf, rustix::net::RecvFlags::DONTWAIT)?;
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_timeouts_never_exceed_the_remaining_time() {
        for us in [1u64, 999, 1000, 1500, 15_000_000, u64::MAX / 2] {
            let r = Duration::from_micros(us);
            let t = read_timeout_for(r);
            assert!(t <= r && !t.is_zero(), "{r:?} -> {t:?}");
            assert!(t * 2 > r.min(MAX_READ_TIMEOUT), "{r:?} -> {t:?}");
        }
        assert!(deadline_after(Duration::MAX) > Instant::now());
    }
}
