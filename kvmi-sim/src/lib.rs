//! A KVMi host simulator for testing KVMi tools without a patched kernel.
//!
//! [`Simulator`] behaves as KVM-VMI QEMU plus the KVM-VMI `kvmi-v7` kernel (or, with
//! [`Abi::V6`], the `kvmi-v6` one) would towards an introspection tool: it connects to
//! the tool's listening UNIX socket like QEMU, sends the 96-byte hookup struct, reads the
//! tool's reply size-tolerantly and checks the cookie hash (SHA-1 of the configured
//! secret), then speaks as the kernel on a server thread. Commands are served from a
//! guest model ([`model::Vm`]: sparse physical memory, vCPUs with full register state,
//! MSRs, CPUID, XSAVE, MTRR type, page access per EPT view, event enables, CR/MSR
//! intercepts, singlestep state) following the kernel's rules (zero paddings, size
//! limits, which errors close the socket, `SET_REGISTERS` only while an event is pending,
//! TRAP after `INJECT_EXCEPTION`, reply suppression with `CONTROL_CMD_RESPONSE`).
//!
//! Events are raised on demand with [`Simulator::trigger`] (the vCPU then blocks until
//! the tool replies, and the reply is applied as the kernel would), or by a built-in
//! [`Workload`]. A [`FaultPlan`] can drop the connection, corrupt or truncate frames and
//! delay replies. [`Stats`] counts what crossed the wire.
//!
//! The crate depends only on `kvmi-sys` for the wire layouts and is written from the
//! protocol reference independently of any tool-side implementation, so it can serve as
//! an independent check of one.
//!
//! ```no_run
//! use kvmi_sim::{SimConfig, SimEvent, Simulator};
//! use std::time::Duration;
//!
//! let sim = Simulator::connect("/tmp/introspector.sock", SimConfig::default())?;
//! // ... the tool enables the CR event and CR3 interception on vCPU 0 ...
//! let h = sim.trigger(0, SimEvent::Cr { cr: 3, old: 0x1000, new: 0x2000 })?;
//! let reply = h.wait_reply(Duration::from_secs(5))?;
//! println!("tool answered {:?}", reply.action);
//! # Ok::<(), kvmi_sim::SimError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvmi_sys as sys;
use zerocopy::{FromBytes, IntoBytes};

mod exec;
pub mod guest;
pub mod model;
mod server;

pub use exec::{Executed, GuestOp, MAX_RETRIES, MAX_TOUCHED_PAGES};
pub use model::{GuestMemory, Injection, Vcpu, Vm};

/// Which kernel ABI the simulator speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Abi {
    /// KVM-VMI `kvmi-v7` (libkvmi master, LibVMI).
    #[default]
    V7,
    /// KVM-VMI `kvmi-v6` (libkvmi branch `kvmi-v6`).
    V6,
}

/// Faults injected on the simulator's side of the wire.
#[derive(Clone, Debug, Default)]
pub struct FaultPlan {
    /// Close the socket once this many frames crossed the wire after the handshake
    /// (both directions counted).
    pub drop_after_messages: Option<u64>,
    /// XOR `mask` into byte `offset` of the `n`-th frame the simulator sends (0-based,
    /// counted after the handshake): `(n, offset, mask)`.
    pub corrupt_frame: Option<(u64, usize, u8)>,
    /// Send only the first `keep` bytes of the `n`-th frame the simulator sends, then
    /// close the socket: `(n, keep)`.
    pub truncate_frame: Option<(u64, usize)>,
    /// Delay every command reply by this much.
    pub reply_delay: Option<Duration>,
}

/// A fault armed at run time with [`Simulator::arm_fault`]; it hits the next frame the
/// simulator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// XOR `mask` into byte `offset` of the next frame.
    CorruptNext {
        /// Byte offset in the frame (header included).
        offset: usize,
        /// XOR mask.
        mask: u8,
    },
    /// Send only the first `keep` bytes of the next frame, then close.
    TruncateNext {
        /// Bytes kept.
        keep: usize,
    },
    /// Close the socket after the next frame.
    DropAfterNext,
}

/// Host features reported by `GET_VERSION` (kvmi-v7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimFeatures {
    /// Sub-page protection.
    pub spp: bool,
    /// VMFUNC.
    pub vmfunc: bool,
    /// EPTP switching (EPT views).
    pub eptp: bool,
    /// #VE.
    pub ve: bool,
    /// MTF single-stepping.
    pub singlestep: bool,
}

impl Default for SimFeatures {
    fn default() -> Self {
        Self {
            spp: false,
            vmfunc: true,
            eptp: true,
            ve: true,
            singlestep: true,
        }
    }
}

/// Everything the simulated VM and host are made of.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// VM UUID sent in the hookup struct.
    pub uuid: [u8; 16],
    /// VM name (truncated to 63 bytes; kvmi-v6 QEMU sends none).
    pub name: String,
    /// VM start time in seconds (kvmi-v6 QEMU sends 0).
    pub start_time: i64,
    /// Number of vCPUs.
    pub vcpus: usize,
    /// Guest memory (initial contents; `max_gfn`). The default is the guest of
    /// [`guest`] with [`guest::DEFAULT_RAM_SIZE`]; [`SimConfig::with_ram`] sizes it.
    pub memory: GuestMemory,
    /// ABI spoken.
    pub abi: Abi,
    /// QEMU secret: when set (kvmi-v7), the tool's cookie hash must be its SHA-1.
    pub secret: Option<Vec<u8>>,
    /// Allowed command ids (QEMU `command=`); `None` = all.
    pub allowed_commands: Option<BTreeSet<u16>>,
    /// Allowed event ids (QEMU `event=`); `None` = all.
    pub allowed_events: Option<BTreeSet<u8>>,
    /// Host features.
    pub features: SimFeatures,
    /// Whether the DESCRIPTOR event can be enabled (needs UMIP emulation on real hosts).
    pub descriptor_supported: bool,
    /// Model the kvmi-v7 `VCPU_PAUSE` quirk: the pause struct is read from offset 0 of
    /// the payload (so `wait` is the low byte of the vCPU index).
    pub pause_quirk: bool,
    /// Handshake timeout (QEMU default 10 s).
    pub handshake_timeout: Duration,
    /// How long [`Simulator::unhook`] callers (the binary) wait for the tool to close
    /// after UNHOOK (QEMU default 60 s).
    pub unhook_timeout: Duration,
    /// Default time `Simulator::trigger` waits for a busy vCPU and the workload waits
    /// for event replies.
    pub event_timeout: Duration,
    /// Faults to inject.
    pub faults: FaultPlan,
}

impl Default for SimConfig {
    fn default() -> Self {
        let memory = guest::build_memory(guest::DEFAULT_RAM_SIZE);
        Self {
            uuid: *b"kvmi-sim-uuid-01",
            name: "kvmi-sim".into(),
            start_time: 1_700_000_000,
            vcpus: 2,
            memory,
            abi: Abi::V7,
            secret: None,
            allowed_commands: None,
            allowed_events: None,
            features: SimFeatures::default(),
            descriptor_supported: true,
            pause_quirk: true,
            handshake_timeout: Duration::from_secs(10),
            unhook_timeout: Duration::from_secs(60),
            event_timeout: Duration::from_secs(15),
            faults: FaultPlan::default(),
        }
    }
}

impl SimConfig {
    /// The default configuration with `ram_size` bytes of guest RAM (see
    /// [`guest::build_memory`] for the rounding): a full-memory scan then walks exactly
    /// the backed frames `VM_GET_MAX_GFN` reports.
    pub fn with_ram(ram_size: u64) -> Self {
        Self {
            memory: guest::build_memory(ram_size),
            ..Self::default()
        }
    }
}

/// Errors of the simulator API.
#[derive(Debug)]
pub enum SimError {
    /// Socket I/O failed.
    Io(std::io::Error),
    /// The handshake reply was malformed.
    Handshake(String),
    /// The tool's cookie hash did not match SHA-1 of the secret (socket closed).
    BadCookie,
    /// No such vCPU.
    NoSuchVcpu(usize),
    /// The event is not enabled/intercepted/allowed, so the kernel would not send it.
    NotDelivered(&'static str),
    /// The vCPU is still waiting for the reply to another event.
    Busy,
    /// Timed out waiting.
    Timeout,
    /// The connection is closed (reason).
    Closed(String),
}

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "I/O error: {e}"),
            Self::Handshake(s) => write!(f, "handshake failed: {s}"),
            Self::BadCookie => write!(f, "cookie hash mismatch"),
            Self::NoSuchVcpu(v) => write!(f, "no vCPU {v}"),
            Self::NotDelivered(s) => write!(f, "event not delivered: {s}"),
            Self::Busy => write!(f, "vCPU busy with another event"),
            Self::Timeout => write!(f, "timed out"),
            Self::Closed(s) => write!(f, "connection closed: {s}"),
        }
    }
}

impl std::error::Error for SimError {}

impl From<std::io::Error> for SimError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Result alias.
pub type Result<T, E = SimError> = std::result::Result<T, E>;

/// An event the guest can cause (argument of [`Simulator::trigger`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimEvent {
    /// Write of CR0/3/4 (sent only if intercepted and `old != new`).
    Cr {
        /// Register number.
        cr: u32,
        /// Current value.
        old: u64,
        /// Value the guest writes.
        new: u64,
    },
    /// Write of an MSR (sent only if intercepted and `old != new`).
    Msr {
        /// MSR index.
        msr: u32,
        /// Current value.
        old: u64,
        /// Value the guest writes.
        new: u64,
    },
    /// XSETBV writing XCR0.
    Xsetbv {
        /// New XCR0 value (applied on CONTINUE).
        xcr0: u64,
    },
    /// INT3 hit.
    Breakpoint {
        /// Guest-physical address of the INT3.
        gpa: u64,
        /// Instruction length.
        insn_len: u8,
    },
    /// The introspection hypercall (RAX/RDI/RSI are set accordingly).
    Hypercall,
    /// EPT violation on a restricted page (sent only if `access` is restricted in the
    /// vCPU's current view).
    Pf {
        /// Linear address.
        gva: u64,
        /// Guest-physical address.
        gpa: u64,
        /// The violated access bit (R=1, W=2, X=4).
        access: u8,
    },
    /// A TRAP report (normally generated after `INJECT_EXCEPTION`).
    Trap {
        /// Vector.
        vector: u8,
        /// Error code.
        error_code: u32,
        /// CR2.
        cr2: u64,
    },
    /// Descriptor-table register access.
    Descriptor {
        /// `KVMI_DESC_*`.
        descriptor: u8,
        /// Write access.
        write: bool,
    },
    /// A vCPU was created (VM event, delivered on this vCPU).
    CreateVcpu,
    /// A PAUSE_VCPU event (normally generated by `VCPU_PAUSE`).
    PauseVcpu,
    /// One instruction was single-stepped.
    Singlestep {
        /// The step failed.
        failed: bool,
    },
    /// The guest executed CPUID.
    Cpuid {
        /// Leaf.
        leaf: u32,
        /// Subleaf.
        subleaf: u32,
    },
    /// QEMU is about to unhook (VM event, no reply; the tool should close).
    Unhook,
    /// A CMD_ERROR report (VM event, no reply).
    CmdError {
        /// Negative error code.
        err: i32,
        /// Seq of the failed command.
        msg_seq: u32,
        /// Id of the failed command.
        msg_id: u16,
    },
}

impl SimEvent {
    /// The kvmi event id.
    pub fn id(&self) -> u8 {
        match self {
            Self::Cr { .. } => sys::KVMI_EVENT_CR,
            Self::Msr { .. } => sys::KVMI_EVENT_MSR,
            Self::Xsetbv { .. } => sys::KVMI_EVENT_XSETBV,
            Self::Breakpoint { .. } => sys::KVMI_EVENT_BREAKPOINT,
            Self::Hypercall => sys::KVMI_EVENT_HYPERCALL,
            Self::Pf { .. } => sys::KVMI_EVENT_PF,
            Self::Trap { .. } => sys::KVMI_EVENT_TRAP,
            Self::Descriptor { .. } => sys::KVMI_EVENT_DESCRIPTOR,
            Self::CreateVcpu => sys::KVMI_EVENT_CREATE_VCPU,
            Self::PauseVcpu => sys::KVMI_EVENT_PAUSE_VCPU,
            Self::Singlestep { .. } => sys::KVMI_EVENT_SINGLESTEP,
            Self::Cpuid { .. } => sys::KVMI_EVENT_CPUID,
            Self::Unhook => sys::KVMI_EVENT_UNHOOK,
            Self::CmdError { .. } => sys::KVMI_EVENT_CMD_ERROR,
        }
    }

    /// Whether the tool must not reply (UNHOOK, CMD_ERROR).
    pub fn is_no_reply(&self) -> bool {
        matches!(self, Self::Unhook | Self::CmdError { .. })
    }
}

/// The PF-specific part of an event reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PfReply {
    /// Start of the linear range whose reads are served from `ctx_data`.
    pub ctx_addr: u64,
    /// The `ctx_size` bytes of custom read data.
    pub ctx_data: Vec<u8>,
    /// Complete a REP instruction without further events.
    pub rep_complete: bool,
    /// kvmi-v6 only: single-step the faulting instruction.
    pub singlestep: bool,
}

/// A decoded event reply, as applied by the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReply {
    /// Event seq.
    pub seq: u32,
    /// vCPU.
    pub vcpu: u16,
    /// Event id sent.
    pub event: u8,
    /// Action the tool chose (`None` for events without reply).
    pub action: Option<u8>,
    /// `kvmi_event_reply.event` as sent by the tool (informational).
    pub reply_event: u8,
    /// CR/MSR reply `new_val`.
    pub new_val: Option<u64>,
    /// PF reply data.
    pub pf: Option<PfReply>,
    /// Registers set with `VCPU_SET_REGISTERS` during the event (applied).
    pub regs_applied: Option<sys::KvmRegs>,
    /// Whether the action was one this event supports (else "not continued").
    pub action_supported: bool,
}

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

/// Per-vCPU outstanding event.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub(crate) seq: u32,
    pub(crate) event: SimEvent,
    /// An `EventHandle` waits for this reply.
    pub(crate) waited: bool,
}

/// How many recent event replies [`Simulator::recent_replies`] keeps.
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
    pub(crate) fn send(&self, st: &mut State, id: u16, seq: u32, payload: &[u8], rec: WireRecord) {
        if st.closed.is_some() {
            return;
        }
        let hdr = sys::MsgHdr {
            id,
            size: payload.len() as u16,
            seq,
        };
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.extend_from_slice(hdr.as_bytes());
        frame.extend_from_slice(payload);
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
        self.send(st, sys::KVMI_EVENT, seq, &payload, rec);
        seq
    }
}

/// A connected simulator (one VM).
pub struct Simulator {
    shared: Arc<Shared>,
    server: Option<JoinHandle<()>>,
    hello: HookupInfo,
}

/// What the tool sent in the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookupInfo {
    /// `struct_size` of the tool's reply.
    pub struct_size: u32,
    /// The cookie hash it sent.
    pub cookie_hash: [u8; 20],
}

/// An event in flight (returned by [`Simulator::trigger`]).
pub struct EventHandle {
    shared: Arc<Shared>,
    /// Event seq.
    pub seq: u32,
    /// vCPU.
    pub vcpu: usize,
    /// Event id.
    pub event: u8,
    no_reply: bool,
}

impl EventHandle {
    /// Wait for the tool's reply (already applied to the model when this returns).
    ///
    /// For events without a reply (UNHOOK, CMD_ERROR) this returns at once with
    /// `action: None`, except UNHOOK, which waits for the tool to close the socket.
    pub fn wait_reply(&self, timeout: Duration) -> Result<SimReply> {
        let deadline = deadline_after(timeout);
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.completed.remove(&self.seq) {
                return Ok(r);
            }
            if self.no_reply && (self.event != sys::KVMI_EVENT_UNHOOK || st.closed.is_some()) {
                return Ok(SimReply {
                    seq: self.seq,
                    vcpu: self.vcpu as u16,
                    event: self.event,
                    action: None,
                    reply_event: 0,
                    new_val: None,
                    pf: None,
                    regs_applied: None,
                    action_supported: true,
                });
            }
            if let Some(c) = &st.closed {
                return Err(SimError::Closed(c.clone()));
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SimError::Timeout);
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Built-in guest activity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// One round of [`Simulator::workload_ops`] on every vCPU (round-robin), each op
    /// run with [`Simulator::execute`]: every event kind the tool has enabled (and
    /// intercepted, for CR, MSR, PF and singlestep) from an instruction of the guest
    /// kernel, each waited for. UNHOOK is not included.
    EveryEnabledEvent,
}

/// Outcome of a workload run.
#[derive(Clone, Debug, Default)]
pub struct WorkloadReport {
    /// Events delivered and answered, by event id.
    pub answered: BTreeMap<u8, u64>,
    /// Ops that failed (timeout, closed…), with the error text.
    pub failed: Vec<(String, String)>,
}

impl Simulator {
    /// Connect to the tool's UNIX socket like QEMU, do the handshake and start serving
    /// as the kernel.
    pub fn connect(socket_path: impl AsRef<Path>, config: SimConfig) -> Result<Self> {
        let stream = UnixStream::connect(socket_path)?;
        Self::from_stream(stream, config)
    }

    /// Same as [`connect`](Self::connect) on an already connected stream.
    pub fn from_stream(mut stream: UnixStream, config: SimConfig) -> Result<Self> {
        stream.set_read_timeout(Some(config.handshake_timeout))?;
        let mut hello = sys::QemuToIntrospector {
            struct_size: sys::QEMU_TO_INTROSPECTOR_SIZE as u32,
            uuid: config.uuid,
            ..Default::default()
        };
        if config.abi == Abi::V7 {
            hello.start_time = config.start_time;
            let n = config.name.len().min(63);
            hello.name[..n].copy_from_slice(&config.name.as_bytes()[..n]);
        }
        stream.write_all(hello.as_bytes())?;
        let mut size = [0u8; 4];
        stream
            .read_exact(&mut size)
            .map_err(|e| SimError::Handshake(format!("reading reply size: {e}")))?;
        let struct_size = u32::from_le_bytes(size);
        if (struct_size as usize) < sys::QEMU_FROM_INTROSPECTOR_SIZE
            || struct_size as usize > sys::QEMU_TO_INTROSPECTOR_MAX_SIZE
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
            return Err(SimError::Handshake(format!(
                "bad struct_size {struct_size}"
            )));
        }
        let mut rest = vec![0u8; struct_size as usize - 4];
        stream
            .read_exact(&mut rest)
            .map_err(|e| SimError::Handshake(format!("reading reply: {e}")))?;
        let mut cookie_hash = [0u8; 20];
        cookie_hash.copy_from_slice(&rest[..20]);
        if config.abi == Abi::V7 {
            if let Some(secret) = &config.secret {
                let want = sha1_smol::Sha1::from(secret).digest().bytes();
                if want != cookie_hash {
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return Err(SimError::BadCookie);
                }
            }
        }
        stream.set_read_timeout(None)?;
        let mut vm = Vm {
            memory: config.memory.clone(),
            vcpus: (0..config.vcpus).map(Vcpu::new_long_mode).collect(),
            cpuid: model::default_cpuid(),
            mtrr_type: 6,
            page_access: BTreeMap::new(),
            write_bitmaps: BTreeMap::new(),
            spp_enabled: false,
            sve: BTreeMap::new(),
            views: [0u16].into_iter().collect(),
            gfn_remap: BTreeMap::new(),
            vm_events: BTreeSet::new(),
            map_tokens: 0,
            crashed: false,
        };
        if vm.memory.max_gfn == 0 {
            vm.memory.max_gfn = vm.memory.gfns().last().map_or(0, |g| g + 1);
        }
        let state = State {
            pending: vec![None; vm.vcpus.len()],
            vm,
            completed: BTreeMap::new(),
            recent: std::collections::VecDeque::new(),
            seq: 0,
            replies_enabled: true,
            cmd_error_flag: false,
            stats: Stats::default(),
            closed: None,
            crossed: 0,
            sent: 0,
            armed: None,
            busy_waiters: 0,
        };
        let reader = stream.try_clone()?;
        let shared = Arc::new(Shared {
            cfg: config,
            state: Mutex::new(state),
            cond: Condvar::new(),
            stream,
        });
        let sh = Arc::clone(&shared);
        let server = std::thread::Builder::new()
            .name("kvmi-sim-recv".into())
            .spawn(move || server::serve(&sh, reader))?;
        Ok(Self {
            shared,
            server: Some(server),
            hello: HookupInfo {
                struct_size,
                cookie_hash,
            },
        })
    }

    /// What the tool replied in the handshake.
    pub fn hookup(&self) -> &HookupInfo {
        &self.hello
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.shared.cfg
    }

    /// Lock and access the guest model. Do not hold the guard across a wait: the
    /// server thread needs it to answer commands.
    pub fn vm(&self) -> impl std::ops::DerefMut<Target = Vm> + '_ {
        VmGuard(self.shared.lock())
    }

    /// A copy of the wire statistics.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats.clone()
    }

    /// The last [`RECENT_MAX`] event replies (including those to PAUSE and TRAP events
    /// the simulator generated by itself), oldest first.
    pub fn recent_replies(&self) -> Vec<SimReply> {
        self.shared.lock().recent.iter().cloned().collect()
    }

    /// Why the connection closed, if it did.
    pub fn closed(&self) -> Option<String> {
        self.shared.lock().closed.clone()
    }

    /// Wait until the connection is closed; returns the reason.
    pub fn wait_closed(&self, timeout: Duration) -> Result<String> {
        let deadline = deadline_after(timeout);
        let mut st = self.shared.lock();
        loop {
            if let Some(c) = &st.closed {
                return Ok(c.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SimError::Timeout);
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Arm a fault for the next frame the simulator sends (replacing an armed one).
    pub fn arm_fault(&self, fault: Fault) {
        self.shared.lock().armed = Some(fault);
    }

    /// Close the connection (like QEMU tearing down the VM, without UNHOOK).
    pub fn shutdown(&self) {
        let mut st = self.shared.lock();
        self.shared.close(&mut st, "closed by the simulator");
    }

    /// Have the guest cause `ev` on `vcpu`. The event is sent only if the kernel would
    /// send it (enabled, allowed, intercepted); the vCPU then waits for the reply. If
    /// the vCPU is busy with another event, waits up to `event_timeout` for it.
    pub fn trigger(&self, vcpu: usize, ev: SimEvent) -> Result<EventHandle> {
        let sh = &self.shared;
        let cfg = &sh.cfg;
        let deadline = deadline_after(cfg.event_timeout);
        let mut st = sh.lock();
        if vcpu >= st.vm.vcpus.len() {
            return Err(SimError::NoSuchVcpu(vcpu));
        }
        let id = ev.id();
        deliverable(cfg, &st, vcpu, &ev)?;
        if st.closed.is_some() {
            return Err(SimError::Closed(st.closed.clone().unwrap_or_default()));
        }
        if ev.is_no_reply() {
            let seq = sh.send_event(&mut st, vcpu, &ev);
            return Ok(EventHandle {
                shared: Arc::clone(sh),
                seq,
                vcpu,
                event: id,
                no_reply: true,
            });
        }
        st.busy_waiters += 1;
        while st.pending[vcpu].is_some() {
            let now = Instant::now();
            if st.closed.is_some() || now >= deadline {
                st.busy_waiters -= 1;
                return Err(match &st.closed {
                    Some(c) => SimError::Closed(c.clone()),
                    None => SimError::Busy,
                });
            }
            st = sh
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        st.busy_waiters -= 1;
        // The tool may have paused the vCPU, removed the intercept and resumed while
        // this vCPU waited: a real kernel would no longer exit, so check again.
        deliverable(cfg, &st, vcpu, &ev)?;
        if let SimEvent::Hypercall = ev {
            let r = &mut st.vm.vcpus[vcpu].regs;
            r.rax = sys::KVM_HC_XEN_HVM_OP;
            r.rdi = sys::KVM_HC_XEN_HVM_OP_GUEST_REQUEST_VM_EVENT;
            r.rsi = 0;
        }
        if let SimEvent::Cpuid { leaf, subleaf } = ev {
            // CPUID exits with the leaf in EAX and the subleaf in ECX.
            let r = &mut st.vm.vcpus[vcpu].regs;
            r.rax = u64::from(leaf);
            r.rcx = u64::from(subleaf);
        }
        let seq = sh.send_event(&mut st, vcpu, &ev);
        st.pending[vcpu] = Some(Pending {
            seq,
            event: ev,
            waited: true,
        });
        Ok(EventHandle {
            shared: Arc::clone(sh),
            seq,
            vcpu,
            event: id,
            no_reply: false,
        })
    }

    /// Trigger `ev` and wait for its reply with the configured `event_timeout`.
    pub fn trigger_and_wait(&self, vcpu: usize, ev: SimEvent) -> Result<SimReply> {
        let h = self.trigger(vcpu, ev)?;
        h.wait_reply(self.shared.cfg.event_timeout)
    }

    /// Raw events (for [`Simulator::trigger`]) of every kind enabled and intercepted on
    /// `vcpu`, with addresses of the default guest. The built-in workload runs
    /// [`Simulator::workload_ops`] instead, which also set RIP and the operands.
    pub fn enabled_events(&self, vcpu: usize) -> Vec<SimEvent> {
        let st = self.shared.lock();
        let cfg = &self.shared.cfg;
        let Some(v) = st.vm.vcpus.get(vcpu) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let on = |id: u8| v.events.contains(&id) && server::event_allowed(cfg, id);
        if on(sys::KVMI_EVENT_CR) {
            for cr in &v.cr_intercepts {
                let old = v.cr(*cr);
                let new = match cr {
                    3 => old ^ 0x1000,
                    4 => old ^ (1 << 7),
                    _ => old ^ (1 << 16),
                };
                out.push(SimEvent::Cr { cr: *cr, old, new });
            }
        }
        if on(sys::KVMI_EVENT_MSR) {
            for m in &v.msr_intercepts {
                let old = v.msrs.get(m).copied().unwrap_or(0);
                out.push(SimEvent::Msr {
                    msr: *m,
                    old,
                    new: old ^ 0x1000,
                });
            }
        }
        if on(sys::KVMI_EVENT_XSETBV) {
            out.push(SimEvent::Xsetbv { xcr0: v.xcr0 | 0x7 });
        }
        if on(sys::KVMI_EVENT_BREAKPOINT) {
            out.push(SimEvent::Breakpoint {
                gpa: guest::SYM_INT3_SELFTEST_PA,
                insn_len: 1,
            });
        }
        if on(sys::KVMI_EVENT_HYPERCALL) {
            out.push(SimEvent::Hypercall);
        }
        if on(sys::KVMI_EVENT_PF) {
            if let Some((gpa, access)) = model::first_restricted(&st.vm, v.view) {
                out.push(SimEvent::Pf {
                    // Addresses that translate to `gpa` in the default guest.
                    gva: if access == sys::KVMI_PAGE_ACCESS_X {
                        guest::kva(gpa)
                    } else {
                        guest::dva(gpa)
                    },
                    gpa,
                    access,
                });
            }
        }
        if on(sys::KVMI_EVENT_DESCRIPTOR) {
            out.push(SimEvent::Descriptor {
                descriptor: sys::KVMI_DESC_IDTR,
                write: false,
            });
        }
        if on(sys::KVMI_EVENT_SINGLESTEP) && (v.singlestep || cfg.abi == Abi::V6) {
            out.push(SimEvent::Singlestep { failed: false });
        }
        if cfg.abi == Abi::V7 && on(sys::KVMI_EVENT_CPUID) {
            out.push(SimEvent::Cpuid {
                leaf: 1,
                subleaf: 0,
            });
        }
        if cfg.abi == Abi::V6 && on(sys::KVMI_EVENT_TRAP) {
            out.push(SimEvent::Trap {
                vector: 14,
                error_code: 2,
                cr2: 0x1000,
            });
        }
        if vcpu == 0
            && st.vm.vm_events.contains(&sys::KVMI_EVENT_CREATE_VCPU)
            && server::event_allowed(cfg, sys::KVMI_EVENT_CREATE_VCPU)
        {
            out.push(SimEvent::CreateVcpu);
        }
        out
    }

    /// Run a built-in workload and report what happened.
    pub fn run_workload(&self, w: Workload) -> WorkloadReport {
        let mut rep = WorkloadReport::default();
        match w {
            Workload::EveryEnabledEvent => {
                let n = self.shared.cfg.vcpus;
                let per: Vec<Vec<GuestOp>> = (0..n).map(|v| self.workload_ops(v)).collect();
                let rounds = per.iter().map(Vec::len).max().unwrap_or(0);
                for i in 0..rounds {
                    for (vcpu, ops) in per.iter().enumerate() {
                        let Some(op) = ops.get(i) else { continue };
                        match self.execute(vcpu, op) {
                            Ok(ex) => {
                                for r in &ex.events {
                                    *rep.answered.entry(r.event).or_default() += 1;
                                }
                            }
                            Err(e) => rep.failed.push((format!("{op:?}"), e.to_string())),
                        }
                    }
                }
            }
        }
        rep
    }

    /// Send UNHOOK if the tool enabled it (like QEMU's PREUNHOOK) and wait up to
    /// `timeout` for the tool to close the socket. `Err(NotDelivered)` if not enabled.
    pub fn unhook(&self, timeout: Duration) -> Result<()> {
        let h = self.trigger(0, SimEvent::Unhook)?;
        h.wait_reply(timeout).map(|_| ())
    }
}

/// Whether the kernel would send `ev` on `vcpu` now (ABI, QEMU's allow list, enables,
/// CR/MSR intercepts, page restrictions, armed singlestep).
fn deliverable(cfg: &SimConfig, st: &State, vcpu: usize, ev: &SimEvent) -> Result<()> {
    let id = ev.id();
    if cfg.abi == Abi::V6 && usize::from(id) >= sys::v6::KVMI_NUM_EVENTS {
        return Err(SimError::NotDelivered("event does not exist in kvmi-v6"));
    }
    if !server::event_allowed(cfg, id) {
        return Err(SimError::NotDelivered("event disallowed by QEMU"));
    }
    {
        let vm = &st.vm;
        let v = &vm.vcpus[vcpu];
        let enabled = match ev {
            SimEvent::Unhook | SimEvent::CreateVcpu | SimEvent::CmdError { .. } => {
                vm.vm_events.contains(&id)
                    || (matches!(ev, SimEvent::CmdError { .. }) && st.cmd_error_flag)
            }
            SimEvent::PauseVcpu => true,
            SimEvent::Trap { .. } => cfg.abi == Abi::V7 || v.events.contains(&id),
            _ => v.events.contains(&id),
        };
        if !enabled {
            return Err(SimError::NotDelivered("event not enabled"));
        }
        match ev {
            SimEvent::Cr { cr, old, new } => {
                if !v.cr_intercepts.contains(cr) {
                    return Err(SimError::NotDelivered("CR not intercepted"));
                }
                if old == new {
                    return Err(SimError::NotDelivered("CR value unchanged"));
                }
            }
            SimEvent::Msr { msr, old, new } => {
                if !v.msr_intercepts.contains(msr) {
                    return Err(SimError::NotDelivered("MSR not intercepted"));
                }
                if old == new {
                    return Err(SimError::NotDelivered("MSR value unchanged"));
                }
            }
            SimEvent::Pf { gpa, access, .. } if !vm.access_restricted(v.view, *gpa, *access) => {
                return Err(SimError::NotDelivered("access not restricted"));
            }
            SimEvent::Singlestep { .. } if cfg.abi == Abi::V7 && !v.singlestep => {
                return Err(SimError::NotDelivered("singlestep not armed"));
            }
            _ => {}
        }
    }
    Ok(())
}

impl Drop for EventHandle {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.completed.remove(&self.seq);
        for p in st.pending.iter_mut().flatten() {
            if p.seq == self.seq {
                p.waited = false;
            }
        }
    }
}

struct VmGuard<'a>(MutexGuard<'a, State>);

impl std::ops::Deref for VmGuard<'_> {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        &self.0.vm
    }
}

impl std::ops::DerefMut for VmGuard<'_> {
    fn deref_mut(&mut self) -> &mut Vm {
        &mut self.0.vm
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.shutdown();
        if let Some(h) = self.server.take() {
            let _ = h.join();
        }
    }
}

/// Parse `T` at `off` from `p`, zero-extending a short message (as the kernel does).
pub(crate) fn rd<T: FromBytes>(p: &[u8], off: usize) -> T {
    let mut buf = vec![0u8; std::mem::size_of::<T>()];
    if off < p.len() {
        let n = (p.len() - off).min(buf.len());
        buf[..n].copy_from_slice(&p[off..off + n]);
    }
    T::read_from_bytes(&buf).unwrap_or_else(|_| T::new_zeroed())
}

#[cfg(test)]
mod tests;

/// `now + d`, saturating at a year for huge `d` (`Duration::MAX` must not panic).
fn deadline_after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86_400)))
        .unwrap_or(now)
}
