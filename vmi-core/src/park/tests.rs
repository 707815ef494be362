use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::time::{Duration, Instant};

use super::*;
use crate::capability::{Capability, CapabilityReport};
use crate::event::EventKind;
use crate::registers::{ControlRegs, Gprs, RegisterGroups};
use crate::View;

#[derive(Debug, Clone, PartialEq)]
enum Call {
    Stop(PauseScope),
    Run(PauseScope, Vec<(VcpuId, RegisterSnapshot)>, Vec<VcpuId>),
    Answer(EventTicket, Response, AfterAnswer),
    /// The answer to the event of this vCPU returned.
    Answered(VcpuId),
}

/// A gate an answer waits at until the test opens it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
}

impl Gate {
    fn pass(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut open = self.open.lock().unwrap();
        while !*open {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "the gate was never opened");
            open = self.cv.wait_timeout(open, left).unwrap().0;
        }
    }
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.cv.notify_all();
    }
}

#[derive(Default)]
struct Recorder {
    calls: Mutex<Vec<Call>>,
    fail_run: AtomicBool,
    per_vcpu: bool,
    /// Answers for this vCPU wait at `gate`.
    blocked: Option<VcpuId>,
    gate: Gate,
    /// The parking whose lock must be free during every call.
    parking: Mutex<Weak<Parking>>,
}

impl Recorder {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }

    /// Fails unless the parking's lock can be taken: a lock held by this thread
    /// (across the call) never becomes free; another thread's holds are brief.
    fn probe_unlocked(&self) {
        let Some(p) = self.parking.lock().unwrap().upgrade() else {
            return;
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if p.state.try_lock().is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Parking holds its lock across a backend call"
            );
            std::thread::yield_now();
        }
    }
}

impl ParkOps for Recorder {
    fn stop(&self, scope: PauseScope) -> Result<Vec<(VcpuId, RegisterSnapshot)>> {
        self.probe_unlocked();
        self.record(Call::Stop(scope));
        Ok(Vec::new())
    }
    fn run(
        &self,
        scope: PauseScope,
        writes: &[(VcpuId, RegisterSnapshot)],
        still: &[VcpuId],
    ) -> Result<()> {
        self.probe_unlocked();
        if self.fail_run.load(Ordering::SeqCst) {
            return Err(Error::unsupported("resume", "test"));
        }
        self.record(Call::Run(scope, writes.to_vec(), still.to_vec()));
        Ok(())
    }
    fn answer(&self, t: EventTicket, r: Response, a: AfterAnswer) -> Result<()> {
        self.probe_unlocked();
        self.record(Call::Answer(t, r, a));
        if self.blocked == Some(t.vcpu) {
            self.gate.pass();
        }
        self.record(Call::Answered(t.vcpu));
        Ok(())
    }
    fn can_pause_vcpu(&self) -> bool {
        self.per_vcpu
    }
}

fn caps() -> CapabilityReport {
    let mut r = CapabilityReport::undeclared("test");
    r.supported(&[
        Capability::ResponseNone,
        Capability::ResponseSetRegisters,
        Capability::WriteGprs,
        Capability::WriteControlRegisters,
    ]);
    r
}

fn with(rec: Recorder) -> (Arc<Recorder>, Arc<Parking>) {
    let rec = Arc::new(rec);
    let p = Parking::new(rec.clone(), caps());
    *rec.parking.lock().unwrap() = Arc::downgrade(&p);
    (rec, p)
}

fn setup(per_vcpu: bool) -> (Arc<Recorder>, Arc<Parking>) {
    with(Recorder {
        per_vcpu,
        ..Recorder::default()
    })
}

/// Only the answers, without their completions.
fn answers(calls: &[Call]) -> Vec<Call> {
    calls
        .iter()
        .filter(|c| !matches!(c, Call::Answered(_)))
        .cloned()
        .collect()
}

fn regs(rax: u64) -> RegisterSnapshot {
    RegisterSnapshot {
        gprs: Some(Gprs {
            rax,
            ..Gprs::default()
        }),
        control: Some(ControlRegs {
            cr3: 0x1000,
            ..ControlRegs::default()
        }),
        ..RegisterSnapshot::default()
    }
}

fn event(vcpu: u16, rax: u64) -> Event {
    Event {
        vcpu: VcpuId(vcpu),
        view: View::DEFAULT,
        registers: regs(rax).into(),
        kind: EventKind::Cpuid {
            leaf: 0,
            subleaf: 0,
            insn_length: 2,
        },
    }
}

fn no_fetch(_: RegisterGroups, _: &[u32]) -> Result<RegisterSnapshot> {
    panic!("parked vCPU must be served from the cache")
}

#[test]
fn pauses_are_counted_once_across_handles() {
    let (rec, p) = setup(false);
    let other_handle = Arc::clone(&p);
    let a = p.pause(PauseScope::All).unwrap();
    let b = other_handle.pause(PauseScope::All).unwrap();
    assert!(p.is_paused());
    drop(a);
    assert!(p.is_paused(), "the second guard still holds");
    b.resume().unwrap();
    assert!(!p.is_paused());
    assert_eq!(
        rec.calls(),
        vec![
            Call::Stop(PauseScope::All),
            Call::Run(PauseScope::All, vec![], vec![])
        ]
    );
}

#[test]
fn dropped_event_is_answered_once_with_the_default() {
    let (rec, p) = setup(false);
    let ev = p.event(7, event(1, 5));
    assert!(p.is_parked(VcpuId(1)));
    drop(ev);
    assert!(!p.is_parked(VcpuId(1)));
    let calls = answers(&rec.calls());
    assert_eq!(calls.len(), 1);
    let Call::Answer(t, r, after) = &calls[0] else {
        panic!("{calls:?}")
    };
    assert_eq!(t.id, 7);
    assert_eq!(*r, Response::default());
    assert!(after.guest_released && !after.stays_parked);
}

#[test]
fn a_panicking_handler_still_answers() {
    let (rec, p) = setup(false);
    let ev = p.event(1, event(0, 0));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
        let _ev = ev;
        panic!("handler bug");
    }));
    assert!(r.is_err());
    assert!(
        matches!(&answers(&rec.calls())[..], [Call::Answer(_, r, _)] if *r == Response::default())
    );
}

#[test]
fn parked_registers_come_from_the_cache_and_writes_go_with_the_answer() {
    let (rec, p) = setup(false);
    let ev = p.event(3, event(0, 0x11));
    let got = p
        .read_registers(VcpuId(0), RegisterGroups::GPRS, &[], no_fetch)
        .unwrap();
    assert_eq!(got.gprs.unwrap().rax, 0x11);
    p.write_registers(VcpuId(0), &regs(0x22)).unwrap();
    let got = p
        .read_registers(VcpuId(0), RegisterGroups::GPRS, &[], no_fetch)
        .unwrap();
    assert_eq!(got.gprs.unwrap().rax, 0x22, "queued write is visible");
    assert!(rec.calls().is_empty(), "nothing sent before the answer");
    ev.reply(Response::continue_()).unwrap();
    let calls = answers(&rec.calls());
    let [Call::Answer(_, r, _)] = &calls[..] else {
        panic!("{calls:?}")
    };
    assert_eq!(r.set_registers.as_deref(), Some(&regs(0x22)));
    // Released: reads go to the backend again.
    let fetched = p
        .read_registers(VcpuId(0), RegisterGroups::GPRS, &[], |_, _| Ok(regs(0x33)))
        .unwrap();
    assert_eq!(fetched.gprs.unwrap().rax, 0x33);
}

#[test]
fn response_registers_win_over_queued_writes() {
    let (rec, p) = setup(false);
    let ev = p.event(3, event(0, 0));
    p.write_registers(VcpuId(0), &regs(1)).unwrap();
    ev.reply(Response::continue_().with_registers(RegisterSnapshot {
        gprs: Some(Gprs {
            rax: 2,
            ..Gprs::default()
        }),
        ..RegisterSnapshot::default()
    }))
    .unwrap();
    let calls = answers(&rec.calls());
    let [Call::Answer(_, r, _)] = &calls[..] else {
        panic!("{calls:?}")
    };
    let w = r.set_registers.as_deref().unwrap();
    assert_eq!(w.gprs.unwrap().rax, 2);
    assert_eq!(w.control.unwrap().cr3, 0x1000, "queued CR write kept");
}

#[test]
fn an_edited_copy_of_the_event_registers_writes_only_what_changed() {
    // The backend cannot write control registers, but the copy holds them unchanged.
    let rec = Arc::new(Recorder::default());
    let mut c = caps();
    c.set(
        Capability::WriteControlRegisters,
        crate::Support::no("not on this host"),
    );
    let p = Parking::new(rec.clone(), c);
    let ev = p.event(1, event(0, 0x10));
    let mut edited = ev.registers.clone();
    edited.set(crate::Register::Rax, 0x99).unwrap();
    ev.reply(Response::continue_().with_registers(edited))
        .unwrap();
    let calls = answers(&rec.calls());
    let [Call::Answer(_, r, _)] = &calls[..] else {
        panic!("{calls:?}")
    };
    let w = r.set_registers.as_deref().unwrap();
    assert_eq!(w.gprs.unwrap().rax, 0x99);
    assert_eq!(w.control, None, "unchanged CRs are no write");

    // An unchanged copy writes nothing.
    let ev = p.event(2, event(0, 0x10));
    let same = ev.registers.clone();
    ev.reply(Response::continue_().with_registers(same))
        .unwrap();
    let calls = answers(&rec.calls());
    let Call::Answer(_, r, _) = &calls[1] else {
        panic!("{calls:?}")
    };
    assert_eq!(r.set_registers, None);

    // A changed group the host cannot write is the error, and names the group.
    let ev = p.event(3, event(0, 0x10));
    let mut cr = ev.registers.clone();
    cr.set(crate::Register::Cr3, 0x2000).unwrap();
    cr.set(crate::Register::Rax, 1).unwrap();
    let e = ev
        .reply(Response::continue_().with_registers(cr))
        .unwrap_err();
    assert!(e.to_string().contains("write control registers"), "{e}");
    let calls = answers(&rec.calls());
    assert!(
        matches!(&calls[2], Call::Answer(_, r, _) if *r == Response::default()),
        "refused: answered with the default, {calls:?}"
    );
}

#[test]
fn writes_outside_events_park_for_the_write() {
    let (rec, p) = setup(false);
    p.write_registers(VcpuId(1), &regs(9)).unwrap();
    assert_eq!(
        rec.calls(),
        vec![
            Call::Stop(PauseScope::All),
            Call::Run(PauseScope::All, vec![(VcpuId(1), regs(9))], vec![]),
        ]
    );
    assert!(!p.is_paused());
}

#[test]
fn event_under_a_pause_stays_parked_until_the_pause_ends() {
    let (rec, p) = setup(false);
    let g = p.pause(PauseScope::All).unwrap();
    let ev = p.event(5, event(0, 0));
    ev.reply(Response::continue_()).unwrap();
    assert!(p.is_parked(VcpuId(0)));
    p.write_registers(VcpuId(0), &regs(4)).unwrap();
    drop(g);
    let calls = answers(&rec.calls());
    assert!(matches!(
        &calls[1],
        Call::Answer(
            _,
            _,
            AfterAnswer {
                stays_parked: true,
                guest_released: false
            }
        )
    ));
    assert_eq!(
        calls[2],
        Call::Run(PauseScope::All, vec![(VcpuId(0), regs(4))], vec![])
    );
}

#[test]
fn pause_ending_while_an_event_is_pending_keeps_that_vcpu() {
    let (rec, p) = setup(false);
    let ev = p.event(5, event(1, 0));
    drop(p.pause(PauseScope::All).unwrap());
    assert_eq!(
        rec.calls()[1],
        Call::Run(PauseScope::All, vec![], vec![VcpuId(1)])
    );
    assert!(p.is_parked(VcpuId(1)));
    drop(ev);
    assert!(!p.is_parked(VcpuId(1)));
}

#[test]
fn refused_responses_are_answered_with_the_default() {
    let (rec, p) = setup(false);
    let ev = p.event(5, event(0, 0));
    let e = ev.reply(Response::deny()).unwrap_err();
    assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    assert!(
        matches!(&answers(&rec.calls())[..], [Call::Answer(_, r, _)] if *r == Response::default())
    );
}

#[test]
fn failed_resume_keeps_the_pause_for_a_retry() {
    let (rec, p) = setup(false);
    let g = p.pause(PauseScope::All).unwrap();
    rec.fail_run.store(true, Ordering::SeqCst);
    assert!(g.resume().is_err());
    assert!(p.is_paused());
    rec.fail_run.store(false, Ordering::SeqCst);
    p.shutdown().unwrap();
    assert!(!p.is_paused());
    assert!(p.is_shut_down());
    assert!(matches!(
        rec.calls().last(),
        Some(Call::Run(PauseScope::All, _, _))
    ));
    assert!(p.pause(PauseScope::All).is_err(), "no pause after shutdown");
}

#[test]
fn per_vcpu_pauses() {
    let (_, p) = setup(false);
    assert!(matches!(
        p.pause(PauseScope::Vcpu(VcpuId(0))),
        Err(Error::Unsupported { .. })
    ));
    let (rec, p) = setup(true);
    let a = p.pause(PauseScope::Vcpu(VcpuId(2))).unwrap();
    let b = p.pause(PauseScope::Vcpu(VcpuId(2))).unwrap();
    assert!(p.is_parked(VcpuId(2)) && !p.is_parked(VcpuId(1)));
    drop(a);
    drop(b);
    assert_eq!(
        rec.calls(),
        vec![
            Call::Stop(PauseScope::Vcpu(VcpuId(2))),
            Call::Run(PauseScope::Vcpu(VcpuId(2)), vec![], vec![])
        ]
    );
}

#[test]
fn events_can_be_answered_from_another_thread() {
    let (rec, p) = setup(false);
    let ev = p.event(9, event(3, 0));
    std::thread::spawn(move || ev.reply(Response::continue_()))
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(answers(&rec.calls()).len(), 1);
}

/// Runs `f` on a thread and waits for it up to 10 s: a lock held across the blocked
/// answer would make it wait for the gate, which only opens afterwards.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} waited for another vCPU's answer"))
}

#[test]
fn answers_of_different_vcpus_proceed_while_one_blocks_in_the_backend() {
    let (rec, p) = with(Recorder {
        blocked: Some(VcpuId(0)),
        ..Recorder::default()
    });
    let slow = p.event(1, event(0, 0));
    let fast = p.event(2, event(1, 0x11));
    let slow = std::thread::spawn(move || slow.reply(Response::continue_()));
    // Wait until vCPU 0's answer is inside the backend.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rec
        .calls()
        .iter()
        .any(|c| matches!(c, Call::Answer(t, _, _) if t.vcpu == VcpuId(0)))
    {
        assert!(Instant::now() < deadline, "vCPU 0's answer never started");
        std::thread::yield_now();
    }
    // vCPU 1: its cache, a queued write and its answer all complete meanwhile.
    let p1 = Arc::clone(&p);
    within("vCPU 1's answer", move || {
        let got = p1
            .read_registers(VcpuId(1), RegisterGroups::GPRS, &[], no_fetch)
            .unwrap();
        assert_eq!(got.gprs.unwrap().rax, 0x11);
        p1.write_registers(VcpuId(1), &regs(0x12)).unwrap();
        fast.reply(Response::continue_()).unwrap();
        assert!(!p1.is_parked(VcpuId(1)));
    });
    let p3 = Arc::clone(&p);
    assert!(
        !within("is_parked", move || p3.is_parked(VcpuId(0))),
        "an event whose answer is under way parks nothing"
    );
    // A pause started now waits for the answer in flight: its stop comes after it.
    let p2 = Arc::clone(&p);
    let pauser = std::thread::spawn(move || p2.pause(PauseScope::All).map(drop));
    rec.gate.open();
    slow.join().unwrap().unwrap();
    pauser.join().unwrap().unwrap();
    let calls = rec.calls();
    let pos = |want: &Call| calls.iter().position(|c| c == want).unwrap();
    let done1 = pos(&Call::Answered(VcpuId(1)));
    let done0 = pos(&Call::Answered(VcpuId(0)));
    assert!(done1 < done0, "vCPU 1 finished first: {calls:?}");
    assert!(done0 < pos(&Call::Stop(PauseScope::All)), "{calls:?}");
    let Call::Answer(_, r, _) = calls
        .iter()
        .find(|c| matches!(c, Call::Answer(t, _, _) if t.vcpu == VcpuId(1)))
        .unwrap()
    else {
        unreachable!()
    };
    assert_eq!(r.set_registers.as_deref(), Some(&regs(0x12)));
}

#[test]
fn concurrent_pauses_and_answers_keep_counts_and_calls_consistent() {
    // Many threads answering events of their own vCPU while others pause and resume:
    // every event is answered once, stops and runs alternate, and nothing is left
    // paused.
    let (rec, p) = setup(true);
    std::thread::scope(|s| {
        for v in 0..4u16 {
            let p = Arc::clone(&p);
            s.spawn(move || {
                for i in 0..200u64 {
                    let ev = p.event(u64::from(v) << 32 | i, event(v, i));
                    ev.reply(Response::continue_()).unwrap();
                }
            });
        }
        for v in 0..2u16 {
            let p = Arc::clone(&p);
            s.spawn(move || {
                for _ in 0..100 {
                    let g = p.pause(PauseScope::All).unwrap();
                    let h = p.pause(PauseScope::Vcpu(VcpuId(v + 4))).unwrap();
                    drop(g);
                    drop(h);
                }
            });
        }
    });
    assert!(!p.is_paused());
    for v in 0..6 {
        assert!(!p.is_parked(VcpuId(v)), "vCPU {v} left parked");
    }
    let calls = rec.calls();
    let answered = calls
        .iter()
        .filter(|c| matches!(c, Call::Answer(..)))
        .count();
    assert_eq!(answered, 800);
    let all_stops = calls
        .iter()
        .filter(|c| matches!(c, Call::Stop(PauseScope::All)))
        .count();
    let all_runs = calls
        .iter()
        .filter(|c| matches!(c, Call::Run(PauseScope::All, ..)))
        .count();
    assert_eq!(all_stops, all_runs, "every stop of the guest was undone");
    let mut stopped = false;
    for c in &calls {
        match c {
            Call::Stop(PauseScope::All) => {
                assert!(!stopped, "stopped twice");
                stopped = true;
            }
            Call::Run(PauseScope::All, ..) => {
                assert!(stopped, "ran while running");
                stopped = false;
            }
            _ => {}
        }
    }
}
