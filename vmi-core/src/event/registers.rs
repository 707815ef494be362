//! [`EventRegisters`]: the registers an event carries, decoded on first use.
//!
//! A backend hands over what the host sent in its own format (KVMi's event carries
//! GPRs, sregs and nine MSRs as raw `kvm_*` structs) as a [`RegisterSource`]; the typed
//! [`RegisterSnapshot`] is built the first time the tool (or the parking, serving a
//! register read of the parked vCPU) looks at it, and then kept. A handler that only
//! looks at the event's kind — most handlers of a flood of CR3 or breakpoint events —
//! never pays for the decoding (about 800 instructions and 800 bytes per event).
//!
//! Clones share the decoded snapshot: the parking keeps one as the parked vCPU's
//! register cache without copying it.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

use crate::registers::RegisterSnapshot;

/// Registers in a backend's own format, turned into a [`RegisterSnapshot`] on demand
/// (see [`EventRegisters::lazy`]).
pub trait RegisterSource: Send + Sync + 'static {
    /// The typed snapshot. Called at most once per [`EventRegisters`] (and its clones).
    fn decode(&self) -> RegisterSnapshot;
}

/// How an [`EventRegisters`] reaches its snapshot.
trait Snapshot: Send + Sync {
    fn snapshot(&self) -> &RegisterSnapshot;
    fn is_decoded(&self) -> bool;
}

struct Lazy<S> {
    // Boxed: what is made per event is then the source alone, not also the ~800
    // bytes of room for a snapshot that most handlers never ask for.
    decoded: OnceLock<Box<RegisterSnapshot>>,
    source: S,
}

impl<S: RegisterSource> Snapshot for Lazy<S> {
    fn snapshot(&self) -> &RegisterSnapshot {
        self.decoded.get_or_init(|| Box::new(self.source.decode()))
    }

    fn is_decoded(&self) -> bool {
        self.decoded.get().is_some()
    }
}

struct Ready(RegisterSnapshot);

impl Snapshot for Ready {
    fn snapshot(&self) -> &RegisterSnapshot {
        &self.0
    }

    fn is_decoded(&self) -> bool {
        true
    }
}

/// The registers of an [`crate::Event`]: a [`RegisterSnapshot`] (it dereferences to
/// one, so `ev.registers.gprs` reads as before), decoded from the backend's format the
/// first time it is read.
///
/// Cloning is cheap and shares the snapshot; changing a clone (through `DerefMut`)
/// first gives it its own copy, so the event's registers stay what the host reported.
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
    /// Shared by clones, decoded at most once.
    Shared(Arc<dyn Snapshot>),
    /// A copy of its own, being edited.
    Owned(Box<RegisterSnapshot>),
}

/// What an empty [`EventRegisters`] dereferences to.
static EMPTY: RegisterSnapshot = RegisterSnapshot::new();

impl EventRegisters {
    /// Registers decoded from `source` when first read.
    pub fn lazy(source: impl RegisterSource) -> Self {
        Self(Repr::Shared(Arc::new(Lazy {
            decoded: OnceLock::new(),
            source,
        })))
    }

    /// The snapshot (decoded now if it was not yet).
    pub fn snapshot(&self) -> &RegisterSnapshot {
        match &self.0 {
            Repr::Empty => &EMPTY,
            Repr::Shared(s) => s.snapshot(),
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
            Repr::Shared(s) => s.is_decoded(),
            Repr::Empty | Repr::Owned(_) => true,
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
            Repr::Empty | Repr::Shared(_) => unreachable!("made owned just above"),
        }
    }
}

impl From<RegisterSnapshot> for EventRegisters {
    fn from(snapshot: RegisterSnapshot) -> Self {
        Self(Repr::Shared(Arc::new(Ready(snapshot))))
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

    struct Counting(Arc<AtomicU32>, u64);

    impl RegisterSource for Counting {
        fn decode(&self) -> RegisterSnapshot {
            self.0.fetch_add(1, Ordering::SeqCst);
            RegisterSnapshot {
                gprs: Some(Gprs {
                    rax: self.1,
                    ..Gprs::default()
                }),
                ..RegisterSnapshot::default()
            }
        }
    }

    #[test]
    fn decoded_once_on_first_read_and_shared_by_clones() {
        let n = Arc::new(AtomicU32::new(0));
        let regs = EventRegisters::lazy(Counting(n.clone(), 7));
        let copy = regs.clone();
        assert!(!regs.is_decoded());
        assert_eq!(n.load(Ordering::SeqCst), 0, "nothing decoded before a read");
        assert_eq!(regs.gprs.unwrap().rax, 7);
        assert!(copy.is_decoded(), "a clone shares the decoded snapshot");
        assert_eq!(copy.gprs.unwrap().rax, 7);
        let _ = regs.to_snapshot();
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn empty_and_ready_forms() {
        let empty = EventRegisters::default();
        assert!(empty.is_absent() && empty.is_decoded() && empty.is_empty());
        let ready = EventRegisters::from(RegisterSnapshot::default());
        assert!(!ready.is_absent());
        assert_eq!(empty, ready, "equal by content");
        let n = Arc::new(AtomicU32::new(0));
        let lazy = EventRegisters::lazy(Counting(n, 1));
        assert_ne!(lazy, empty);
        assert_eq!(RegisterSnapshot::from(&lazy), *lazy);
        assert_eq!(format!("{lazy:?}"), format!("{:?}", lazy.snapshot()));
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)] // the edit of an empty one is the point
    fn an_edited_clone_leaves_the_original() {
        let n = Arc::new(AtomicU32::new(0));
        let regs = EventRegisters::lazy(Counting(n.clone(), 7));
        let mut edited = regs.clone();
        edited.gprs.as_mut().unwrap().rax = 8;
        edited.gprs.as_mut().unwrap().rbx = 9;
        assert_eq!(regs.gprs.unwrap().rax, 7);
        assert_eq!(edited.gprs.unwrap().rax, 8);
        assert_eq!(edited.gprs.unwrap().rbx, 9, "edits accumulate in one copy");
        assert_eq!(RegisterSnapshot::from(edited).gprs.unwrap().rax, 8);
        assert_eq!(n.load(Ordering::SeqCst), 1);
        let mut empty = EventRegisters::default();
        empty.xcr0 = Some(1);
        assert_eq!(empty.xcr0, Some(1));
        assert!(
            EventRegisters::default().xcr0.is_none(),
            "the shared empty one unchanged"
        );
    }
}
