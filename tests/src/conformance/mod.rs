//! The backend-neutral conformance suite: one set of checks, written against the
//! `vmi-core` traits only, that every backend runs on a guest whose state is known from
//! outside the backend (issue 17, "One suite, every backend").
//!
//! A backend gets the suite by implementing [`ConformanceTarget`] — how to open a
//! session on its guest, and where the guest's ground truth comes from (its RAM read
//! without the backend, a code site it executes over and over, a counter it advances) —
//! and invoking [`conformance_tests!`](crate::conformance_tests) in one test file, which generates one `#[test]`
//! per case (see [`CASES`]). The cases share one guest per test binary and run one at a
//! time on it ([`Suite`]).
//!
//! What the cases check, each against ground truth where it exists:
//!
//! * [`memory`] — reads equal the guest's RAM read without the backend; writes reach
//!   it; a range beyond guest RAM is a typed error, never a panic or a short read.
//! * [`registers`] — a paused vCPU's snapshot agrees with what the guest's own state
//!   says, a group read alone equals the same group of the snapshot, single registers
//!   equal their groups, writes are visible while parked and a group the report calls
//!   unwritable is refused before anything reaches the guest.
//! * [`pause`] — a pause stops the guest (its counter stands still), guards nest and the
//!   last one resumes it; per-vCPU pausing works or is refused as the report says.
//! * [`breakpoints`] — set, hit (exact address), hit again, removed while the hit waits,
//!   none left behind (guest memory bytes, no further hit); single-stepping.
//! * [`events`] — an event dropped unanswered, or whose handler panics, is answered once
//!   and the guest runs on; dropping a session with a breakpoint, single-stepping, a
//!   pause and an unanswered event installed leaves the guest running with nothing
//!   installed (checked with a fresh session and the guest's counter).
//! * [`capabilities`] — every row agrees with the backend's accessors and behaviour: a
//!   monitor or response the report declares unsupported is refused with
//!   [`vmi_core::Error::Unsupported`] without a single request reaching the guest, and
//!   one declared supported works.
//!
//! The targets of this repository are in [`targets`].

pub mod breakpoints;
pub mod capabilities;
pub mod events;
pub mod memory;
pub mod pause;
pub mod registers;
pub mod targets;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use vmi_core::{
    Backend, Breakpoints, EventControl, EventKind, Gpa, Gva, PendingEvent, RegisterSnapshot,
    VcpuControl,
};

/// How long the suite waits for anything the guest does (an event, progress).
pub const WAIT: Duration = Duration::from_secs(15);

/// How long a paused guest must keep its counter still, and how long a guest without
/// breakpoints must stay free of events.
pub const QUIET: Duration = Duration::from_millis(400);

/// A code site the guest executes over and over, on any vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// Its linear address (in every address space the guest runs it in).
    pub gva: Gva,
    /// Its guest-physical address.
    pub gpa: Gpa,
}

/// One backend on one guest, as the suite sees it: sessions, and ground truth about the
/// guest from outside the backend.
///
/// The guest must be running (not paused) whenever no session holds it, and must keep
/// executing [`ConformanceTarget::hot_site`] and advancing
/// [`ConformanceTarget::progress`] while it runs.
pub trait ConformanceTarget: Send + Sync + 'static {
    /// The backend's session type.
    type Session: Backend;

    /// What runs, e.g. "vmi-legacy on the test guest (KVM)".
    fn describe(&self) -> String;

    /// Opens a new session on the guest (no other session of the suite is open).
    fn open(&self) -> Self::Session;

    /// Ends a session: drops it, then waits for whatever the host does once a tool is
    /// gone (the default only drops it).
    fn close(&self, session: Self::Session) {
        drop(session);
    }

    /// Reads guest-physical memory without the backend (the RAM file, the simulator's
    /// model): the ground truth of memory.
    fn read_truth(&self, gpa: Gpa, buf: &mut [u8]);

    /// A guest-physical range whose content the guest itself put there and does not
    /// change, and that content.
    fn known_bytes(&self) -> (Gpa, Vec<u8>);

    /// A linear address mapped in every address space the guest's vCPU 0 runs in, and
    /// the bytes there (as [`ConformanceTarget::known_bytes`], but virtual).
    fn known_virtual(&self) -> (Gva, Vec<u8>);

    /// 64 bytes of guest RAM nothing in the guest uses, which the suite may overwrite
    /// (it restores them).
    fn scratch(&self) -> Gpa;

    /// One past the guest's highest RAM byte: every access from here on is beyond RAM.
    fn ram_end(&self) -> Gpa;

    /// A code site the guest keeps executing.
    fn hot_site(&self) -> Site;

    /// A value the running guest keeps increasing, read without the backend; `None`
    /// where the guest's progress cannot be observed now (checks of it are skipped).
    fn progress(&self) -> Option<u64>;

    /// Checks a snapshot of vCPU 0, taken while the guest is paused, against what the
    /// guest's own state says (panics on a mismatch).
    fn check_paused_registers(&self, regs: &RegisterSnapshot);

    /// Requests the session has sent towards the guest so far (`None`: not countable):
    /// a refused operation must not change it.
    fn requests(&self, session: &Self::Session) -> Option<u64>;

    /// Events the host delivered and the replies it received (`None`: not countable).
    fn event_accounting(&self) -> Option<(u64, u64)> {
        None
    }
}

/// A target shared by the tests of one binary; [`Suite::case`] runs one case at a time
/// on it (the cases pause, stop and resume the one guest).
pub struct Suite<T> {
    target: T,
    serial: Mutex<()>,
}

impl<T: ConformanceTarget> Suite<T> {
    /// Wraps `target`.
    pub fn new(target: T) -> Self {
        Self {
            target,
            serial: Mutex::new(()),
        }
    }

    /// The target.
    pub fn target(&self) -> &T {
        &self.target
    }

    /// Runs `case` alone on the target (a failed case before it does not stop it: its
    /// sessions were dropped while it unwound).
    pub fn case(&self, name: &str, case: fn(&T)) {
        let _alone: MutexGuard<'_, ()> = self.serial.lock().unwrap_or_else(|e| e.into_inner());
        let started = Instant::now();
        eprintln!("conformance: {name} on {}", self.target.describe());
        case(&self.target);
        eprintln!("conformance: {name} passed in {:.1?}", started.elapsed());
    }
}

/// Every case, by name, in the order [`conformance_tests!`](crate::conformance_tests) generates them.
pub const CASES: &[&str] = &[
    "memory_reads_equal_guest_ram",
    "memory_writes_reach_guest_ram",
    "memory_beyond_ram_is_a_typed_error",
    "registers_agree_with_the_guest",
    "register_writes_follow_the_report",
    "pause_stops_the_guest_and_guards_nest",
    "breakpoints_hit_and_leave_nothing_behind",
    "singlestep_steps_or_is_refused",
    "dropped_event_is_answered_once",
    "panicking_handler_answers_once",
    "teardown_leaves_the_guest_running_and_clean",
    "report_rows_agree_with_accessors",
    "unsupported_monitors_are_refused_before_the_guest",
    "unsupported_responses_are_refused_and_the_event_answered",
];

/// Generates one `#[test]` per conformance case, each running it on the shared
/// [`Suite`] that `$suite` (an expression of type `&'static Suite<T>`, or `None` to
/// skip) returns:
///
/// ```ignore
/// fn suite() -> Option<&'static Suite<MyTarget>> { /* a OnceLock */ }
/// vmi_tests::conformance_tests!(suite());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($suite:expr) => {
        $crate::conformance_tests!(@cases $suite;
            memory_reads_equal_guest_ram => memory::reads_equal_guest_ram,
            memory_writes_reach_guest_ram => memory::writes_reach_guest_ram,
            memory_beyond_ram_is_a_typed_error => memory::beyond_ram_is_a_typed_error,
            registers_agree_with_the_guest => registers::agree_with_the_guest,
            register_writes_follow_the_report => registers::writes_follow_the_report,
            pause_stops_the_guest_and_guards_nest => pause::stops_the_guest_and_guards_nest,
            breakpoints_hit_and_leave_nothing_behind => breakpoints::hit_and_leave_nothing_behind,
            singlestep_steps_or_is_refused => breakpoints::singlestep_steps_or_is_refused,
            dropped_event_is_answered_once => events::dropped_event_is_answered_once,
            panicking_handler_answers_once => events::panicking_handler_answers_once,
            teardown_leaves_the_guest_running_and_clean => events::teardown_leaves_the_guest_running_and_clean,
            report_rows_agree_with_accessors => capabilities::rows_agree_with_accessors,
            unsupported_monitors_are_refused_before_the_guest => capabilities::unsupported_monitors_are_refused,
            unsupported_responses_are_refused_and_the_event_answered => capabilities::unsupported_responses_are_refused,
        );
    };
    (@cases $suite:expr; $($name:ident => $module:ident :: $case:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                if let Some(suite) = $suite {
                    suite.case(
                        stringify!($name),
                        $crate::conformance::$module::$case,
                    );
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the cases.

/// The session's event control, which the report's event rows require.
pub(crate) fn events_of<B: Backend + ?Sized>(vm: &B) -> &dyn EventControl {
    vm.events()
        .unwrap_or_else(|| panic!("{}: no event control", vm.name()))
}

/// The session's breakpoints.
pub(crate) fn breakpoints_of<B: Backend + ?Sized>(vm: &B) -> &dyn Breakpoints {
    vm.breakpoints()
        .unwrap_or_else(|| panic!("{}: no breakpoints", vm.name()))
}

/// The session's vCPU control.
pub(crate) fn vcpus_of<B: Backend + ?Sized>(vm: &B) -> &dyn VcpuControl {
    vm.vcpu_control()
        .unwrap_or_else(|| panic!("{}: no vCPU control", vm.name()))
}

/// The next event within [`WAIT`], or a panic naming `what`.
pub(crate) fn next_event(events: &dyn EventControl, what: &str) -> PendingEvent {
    events
        .wait_event(WAIT)
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
        .unwrap_or_else(|| panic!("no {what} within {WAIT:?}"))
}

/// The next event, which must be a breakpoint hit at `site`.
pub(crate) fn next_hit(events: &dyn EventControl, site: Site) -> PendingEvent {
    let p = next_event(events, "a breakpoint hit");
    check_hit(&p, site);
    p
}

/// Checks that `p` is a hit of the breakpoint at `site`, with exact addresses.
pub(crate) fn check_hit(p: &PendingEvent, site: Site) {
    let EventKind::Breakpoint {
        gla,
        gfn,
        offset,
        insn_length,
    } = p.kind
    else {
        panic!("expected a breakpoint hit at {site:x?}: {:?}", p.kind)
    };
    assert_eq!(gla, site.gva, "the hit's linear address");
    assert_eq!(
        (gfn, offset),
        (site.gpa.gfn(), site.gpa.page_offset()),
        "the hit's frame and offset"
    );
    assert_eq!(insn_length, 1, "an INT3 (or its stand-in) is one byte");
    if let Some(g) = p.registers.gprs {
        assert_eq!(g.rip, site.gva.0, "RIP at the hit");
    }
}

/// Waits until the guest's counter passes `from`; panics after [`WAIT`]. Returns at
/// once where progress is not observable.
pub(crate) fn wait_progress<T: ConformanceTarget>(
    t: &T,
    from: Option<u64>,
    what: &str,
) -> Option<u64> {
    let from = from?;
    let deadline = Instant::now() + WAIT;
    loop {
        let now = t.progress()?;
        if now > from {
            return Some(now);
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the guest's counter stayed at {from} for {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts the guest's counter stays put for [`QUIET`] (the guest is stopped).
pub(crate) fn assert_still<T: ConformanceTarget>(t: &T, what: &str) -> Option<u64> {
    let before = t.progress();
    std::thread::sleep(QUIET);
    let after = t.progress();
    assert_eq!(before, after, "{what}: the guest ran while paused");
    after
}

/// Asserts no event arrives for [`QUIET`].
pub(crate) fn assert_no_event(events: &dyn EventControl, what: &str) {
    if let Some(p) = events
        .wait_event(QUIET)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
    {
        panic!("{what}: unexpected event {:?}", p.kind);
    }
}

/// Answers every event already queued or arriving within [`QUIET`] with the default.
pub(crate) fn drain(events: &dyn EventControl) {
    while let Some(p) = events.wait_event(QUIET).expect("draining events") {
        drop(p);
    }
}

/// The guest's bytes at `gpa` (ground truth).
pub(crate) fn truth_bytes<T: ConformanceTarget>(t: &T, gpa: Gpa, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    t.read_truth(gpa, &mut b);
    b
}
