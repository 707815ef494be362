//! [`EventRegisters`]: the registers an event carries, decoded on first use.
//!
//! A backend hands over what the host sent, in its own format and shared (KVMi's event
//! carries GPRs, sregs and nine MSRs as raw `kvm_*` structs; kvmi-proto keeps the
//! parsed event behind an `Arc`), with the [`RegisterDecoder`] that reads it. The typed
//! [`RegisterSnapshot`] is built the first time the tool (or the parking, serving a
//! register read of the parked vCPU) looks at it, and then kept. A handler that only
//! looks at the event's kind — most handlers of a flood of CR3 or breakpoint events —
//! pays neither for the decoding (about 800 instructions) nor for a copy of what the
//! host sent: nothing is allocated or copied per event.

use std::any::Any;
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

use crate::registers::RegisterSnapshot;

/// Turns registers in a backend's own format (`Source`) into a [`RegisterSnapshot`],
/// on demand (see [`EventRegisters::lazy`]).
///
/// ```
/// use std::sync::Arc;
/// use vmi_core::registers::{Gprs, RegisterSnapshot};
/// use vmi_core::{EventRegisters, RegisterDecoder};
///
/// /// What a made-up host sends: RAX and RIP.
/// struct HostRegs([u64; 2]);
///
/// struct Decoder;
/// impl RegisterDecoder for Decoder {
///     type Source = HostRegs;
///     fn decode(r: &HostRegs) -> RegisterSnapshot {
///         RegisterSnapshot {
///             gprs: Some(Gprs { rax: r.0[0], rip: r.0[1], ..Gprs::default() }),
///             ..RegisterSnapshot::default()
///         }
///     }
/// }
///
/// let regs = EventRegisters::lazy::<Decoder>(Arc::new(HostRegs([1, 0x1000])));
/// assert!(!regs.is_decoded());
/// assert_eq!(regs.gprs.unwrap().rip, 0x1000);
/// ```
pub trait RegisterDecoder: 'static {
    /// What the backend keeps of the event (shared with the [`EventRegisters`]).
    type Source: Send + Sync + 'static;

    /// The typed snapshot. Called at most once per [`EventRegisters`] value (clones
    /// made before it ran decode again if read).
    fn decode(source: &Self::Source) -> RegisterSnapshot;
}

/// A decoder with its source type erased.
type DecodeFn = fn(&(dyn Any + Send + Sync)) -> RegisterSnapshot;

fn decode_erased<D: RegisterDecoder>(source: &(dyn Any + Send + Sync)) -> RegisterSnapshot {
    // The source was stored with this decoder ([`EventRegisters::lazy`]): the
    // downcast cannot fail; were it to, the snapshot would be empty, not a panic.
    source
        .downcast_ref::<D::Source>()
        .map_or_else(RegisterSnapshot::new, D::decode)
}

/// The registers of an [`crate::Event`]: a [`RegisterSnapshot`] (it dereferences to
/// one, so `ev.registers.gprs` reads as before), decoded from the backend's format the
/// first time it is read.
///
/// Cloning is cheap (a reference count, plus a copy of the snapshot if it was decoded
/// already); changing a clone (through `DerefMut`) first gives it its own copy, so the
/// event's registers stay what the host reported.
/// An edited clone is a reply's register write as it is — LibVMI's
/// `VMI_EVENT_RESPONSE_SET_REGISTERS` with `x86_regs` changed in place:
///
/// ```
/// # use vmi_core::{Event, EventKind, Response, VcpuId, View};
/// # use vmi_core::registers::{Gprs, RegisterSnapshot};
/// # let ev = Event { vcpu: VcpuId(0), view: View::DEFAULT, kind: EventKind::Unhook,
/// #     registers: RegisterSnapshot { gprs: Some(Gprs::default()), ..Default::default() }.into() };
/// let mut regs = ev.registers.clone();
/// regs.gprs.as_mut().unwrap().rax = 0x1337;
/// assert_eq!(ev.registers.gprs.unwrap().rax, 0, "the event keeps what the host sent");
/// let reply = Response::continue_().with_registers(regs);
/// # assert_eq!(reply.set_registers.unwrap().gprs.unwrap().rax, 0x1337);
/// ```
#[derive(Clone, Default)]
pub struct EventRegisters(Repr);

#[derive(Clone, Default)]
enum Repr {
    /// Nothing (an event without vCPU state, such as UNHOOK).
    #[default]
    Empty,
    /// The backend's format, decoded at most once.
    Lazy {
        source: Arc<dyn Any + Send + Sync>,
        decode: DecodeFn,
        // Boxed: the room for a snapshot most handlers never ask for is not part of
        // every event.
        decoded: OnceLock<Box<RegisterSnapshot>>,
    },
    /// A snapshot made as such, shared by clones.
    Shared(Arc<RegisterSnapshot>),
    /// A copy of its own, being edited.
    Owned(Box<RegisterSnapshot>),
}

/// What an empty [`EventRegisters`] dereferences to.
static EMPTY: RegisterSnapshot = RegisterSnapshot::new();

impl EventRegisters {
    /// Registers read from `source` by `D` when first read. Only a reference count
    /// changes here: nothing is copied or allocated.
    pub fn lazy<D: RegisterDecoder>(source: Arc<D::Source>) -> Self {
        Self(Repr::Lazy {
            source,
            decode: decode_erased::<D>,
            decoded: OnceLock::new(),
        })
    }

    /// The snapshot (decoded now if it was not yet).
    pub fn snapshot(&self) -> &RegisterSnapshot {
        match &self.0 {
            Repr::Empty => &EMPTY,
            Repr::Lazy {
                source,
                decode,
                decoded,
            } => decoded.get_or_init(|| Box::new(decode(source.as_ref()))),
            Repr::Shared(s) => s,
            Repr::Owned(s) => s,
        }
    }

    /// An owned copy of the snapshot.
    pub fn to_snapshot(&self) -> RegisterSnapshot {
        self.snapshot().clone()
    }

    /// Whether the snapshot has been built (for tests and diagnostics: reading any
    /// field builds it).
    pub fn is_decoded(&self) -> bool {
        match &self.0 {
            Repr::Lazy { decoded, .. } => decoded.get().is_some(),
            Repr::Empty | Repr::Shared(_) | Repr::Owned(_) => true,
        }
    }

    /// Whether this holds nothing at all (an empty snapshot made from a value counts
    /// as something).
    pub(crate) fn is_absent(&self) -> bool {
        matches!(self.0, Repr::Empty)
    }
}

impl Deref for EventRegisters {
    type Target = RegisterSnapshot;

    fn deref(&self) -> &RegisterSnapshot {
        self.snapshot()
    }
}

impl DerefMut for EventRegisters {
    /// Copies the snapshot first unless this one is being edited already.
    fn deref_mut(&mut self) -> &mut RegisterSnapshot {
        if !matches!(self.0, Repr::Owned(_)) {
            self.0 = Repr::Owned(Box::new(self.to_snapshot()));
        }
        match &mut self.0 {
            Repr::Owned(s) => s,
            _ => unreachable!("made owned just above"),
        }
    }
}

impl From<RegisterSnapshot> for EventRegisters {
    fn from(snapshot: RegisterSnapshot) -> Self {
        Self(Repr::Shared(Arc::new(snapshot)))
    }
}

impl From<EventRegisters> for RegisterSnapshot {
    fn from(regs: EventRegisters) -> Self {
        match regs.0 {
            Repr::Owned(s) => *s,
            _ => regs.to_snapshot(),
        }
    }
}

impl From<&EventRegisters> for RegisterSnapshot {
    fn from(regs: &EventRegisters) -> Self {
        regs.to_snapshot()
    }
}

impl PartialEq for EventRegisters {
    fn eq(&self, other: &Self) -> bool {
        self.snapshot() == other.snapshot()
    }
}

impl Eq for EventRegisters {}

impl PartialEq<RegisterSnapshot> for EventRegisters {
    fn eq(&self, other: &RegisterSnapshot) -> bool {
        self.snapshot() == other
    }
}

impl fmt::Debug for EventRegisters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.snapshot().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::registers::Gprs;

    static DECODED: AtomicU32 = AtomicU32::new(0);

    /// Counts its decodings in `DECODED` (one test uses it; the others count nothing).
    struct Counting;

    impl RegisterDecoder for Counting {
        type Source = u64;
        fn decode(rax: &u64) -> RegisterSnapshot {
            DECODED.fetch_add(1, Ordering::SeqCst);
            Plain::decode(rax)
        }
    }

    struct Plain;

    impl RegisterDecoder for Plain {
        type Source = u64;
        fn decode(rax: &u64) -> RegisterSnapshot {
            RegisterSnapshot {
                gprs: Some(Gprs {
                    rax: *rax,
                    ..Gprs::default()
                }),
                ..RegisterSnapshot::default()
            }
        }
    }

    #[test]
    fn decoded_once_on_first_read() {
        let regs = EventRegisters::lazy::<Counting>(Arc::new(7));
        assert!(!regs.is_decoded());
        assert_eq!(
            DECODED.load(Ordering::SeqCst),
            0,
            "nothing decoded before a read"
        );
        let early = regs.clone();
        assert_eq!(regs.gprs.unwrap().rax, 7);
        assert_eq!(regs.gprs.unwrap().rbx, 0);
        let _ = regs.to_snapshot();
        assert_eq!(DECODED.load(Ordering::SeqCst), 1, "decoded once");
        let late = regs.clone();
        assert!(late.is_decoded(), "a later clone carries the snapshot");
        assert!(!early.is_decoded(), "an earlier clone decodes on its own");
        assert_eq!(early, late);
        assert_eq!(DECODED.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn empty_and_ready_forms() {
        let empty = EventRegisters::default();
        assert!(empty.is_absent() && empty.is_decoded() && empty.is_empty());
        let ready = EventRegisters::from(RegisterSnapshot::default());
        assert!(!ready.is_absent());
        assert_eq!(empty, ready, "equal by content");
        let lazy = EventRegisters::lazy::<Plain>(Arc::new(1));
        assert_ne!(lazy, empty);
        assert_eq!(RegisterSnapshot::from(&lazy), *lazy);
        assert_eq!(format!("{lazy:?}"), format!("{:?}", lazy.snapshot()));
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)] // the edit of an empty one is the point
    fn an_edited_clone_leaves_the_original() {
        let regs = EventRegisters::lazy::<Plain>(Arc::new(7));
        let mut edited = regs.clone();
        edited.gprs.as_mut().unwrap().rax = 8;
        edited.gprs.as_mut().unwrap().rbx = 9;
        assert_eq!(regs.gprs.unwrap().rax, 7);
        assert_eq!(edited.gprs.unwrap().rax, 8);
        assert_eq!(edited.gprs.unwrap().rbx, 9, "edits accumulate in one copy");
        assert_eq!(RegisterSnapshot::from(edited).gprs.unwrap().rax, 8);
        let mut empty = EventRegisters::default();
        empty.xcr0 = Some(1);
        assert_eq!(empty.xcr0, Some(1));
        assert!(
            EventRegisters::default().xcr0.is_none(),
            "the shared empty one unchanged"
        );
    }
}
