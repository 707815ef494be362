//! What the simulated VM and host are made of: ABI, features, faults, limits, errors.

use crate::guest;
use crate::model::GuestMemory;
use std::collections::BTreeSet;
use std::time::Duration;

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
    /// Stall (as [`Simulator::set_stalled`](crate::Simulator::set_stalled)`(true)`) when
    /// the first frame with this command id arrives, before handling it: a host whose
    /// receive thread hangs on that command.
    pub stall_on_command: Option<u16>,
    /// `VM_GET_INFO` reports this vCPU count instead of the real one (a host lying
    /// about, or a QEMU with, more vCPUs than the simulator models).
    pub reported_vcpu_count: Option<u32>,
}

/// A fault armed at run time with [`Simulator::arm_fault`](crate::Simulator::arm_fault); it hits the next frame the
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
    /// The vCPUs' initial state (e.g. [`SimConfig::from_dump`]); `None`: vCPU `i` is
    /// [`Vcpu::new_long_mode`](crate::Vcpu::new_long_mode)`(i)` of the default guest.
    /// When set, its length must be `vcpus`.
    pub initial_vcpus: Option<Vec<crate::model::Vcpu>>,
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
    /// How long [`Simulator::unhook`](crate::Simulator::unhook) callers (the binary) wait for the tool to close
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
            initial_vcpus: None,
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
