//! Exactly one reply per event across 4 vCPUs handled by 4 workers in parallel, with
//! handlers that bail out with an error, panic, are slow, or answer — against kvmi-sim
//! over a real socket, with pseudo-random interleavings.

mod common;

use common::*;
use kvmi_proto::sys;
use kvmi_sim::SimEvent;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;
use vmi_core::event::{RegisterAccess, RegisterFilter};
use vmi_core::{EventControl, EventKind, Monitor, Response, VcpuControl};

const PER_VCPU: u64 = 25;

/// xorshift: deterministic per thread, different across threads.
fn jitter(state: &mut u64) -> Duration {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    Duration::from_micros(*state % 3000)
}

#[test]
fn v7_four_vcpus_error_panic_slow_handlers_each_event_answered_once() {
    four_vcpus_error_panic_slow(kvmi_sim::Abi::V7);
}

#[test]
fn v6_four_vcpus_error_panic_slow_handlers_each_event_answered_once() {
    four_vcpus_error_panic_slow(kvmi_sim::Abi::V6);
}

fn four_vcpus_error_panic_slow(abi: kvmi_sim::Abi) {
    let (vm, sim) = setup(abi, |s| s.vcpus = 4);
    vm.enable(&Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    })
    .unwrap();
    let stop = AtomicBool::new(false);
    let handled = AtomicU64::new(0);
    let failures = AtomicU64::new(0);
    // Silence the expected panics of the vCPU-1 handler.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let Some(ev) = vm.wait_event(Duration::from_millis(50)).unwrap() else {
                        continue;
                    };
                    handled.fetch_add(1, Ordering::SeqCst);
                    let EventKind::Register { value, .. } = ev.kind else {
                        panic!("{:?}", ev.kind)
                    };
                    match ev.vcpu.0 {
                        // A handler that fails early: `?` drops the guard.
                        0 => {
                            fn failing(_ev: vmi_core::PendingEvent) -> Result<(), &'static str> {
                                Err("handler error")
                            }
                            assert!(failing(ev).is_err());
                        }
                        // A handler that panics while holding the guard.
                        1 => {
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                let _ev = ev;
                                panic!("handler bug");
                            }));
                            assert!(r.is_err());
                        }
                        2 => {
                            thread::sleep(Duration::from_millis(10));
                            ev.reply(Response::continue_().with_value(value)).unwrap();
                        }
                        _ => ev.reply(Response::continue_()).unwrap(),
                    }
                }
            });
        }
        let guests: Vec<_> = (0..4usize)
            .map(|vcpu| {
                let sim = &sim;
                let failures = &failures;
                s.spawn(move || {
                    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (vcpu as u64 + 1);
                    let mut cr3 = sim.vm().vcpus[vcpu].sregs.cr3;
                    for _ in 0..PER_VCPU {
                        thread::sleep(jitter(&mut seed));
                        let new = cr3 ^ 0x1000;
                        match sim.trigger_and_wait(
                            vcpu,
                            SimEvent::Cr {
                                cr: 3,
                                old: cr3,
                                new,
                            },
                        ) {
                            Ok(r) => {
                                assert_eq!(r.action, Some(sys::KVMI_EVENT_ACTION_CONTINUE));
                                assert_eq!(
                                    r.new_val,
                                    Some(new),
                                    "default and explicit replies let the write through"
                                );
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        cr3 = new;
                    }
                })
            })
            .collect();
        for g in guests {
            g.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
    });
    std::panic::set_hook(hook);
    assert_eq!(failures.load(Ordering::SeqCst), 0);
    assert_eq!(handled.load(Ordering::SeqCst), 4 * PER_VCPU);
    let (sent, answered) = events(&sim, sys::KVMI_EVENT_CR);
    assert_eq!(
        (sent, answered),
        (4 * PER_VCPU, 4 * PER_VCPU),
        "exactly one reply each"
    );
    assert!(sim.closed().is_none(), "no reply the host would reject");
    // Pausing still works after the storm.
    drop(vm.pause().unwrap());
    assert!(eventually(
        || events(&sim, sys::KVMI_EVENT_PAUSE_VCPU) == (4, 4)
    ));
}

#[test]
fn pauses_interleaved_with_events_on_four_vcpus() {
    let (vm, sim) = setup(kvmi_sim::Abi::V7, |s| s.vcpus = 4);
    vm.enable(&Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    })
    .unwrap();
    let stop = AtomicBool::new(false);
    let pauses = AtomicU64::new(0);
    thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    if let Some(ev) = vm.wait_event(Duration::from_millis(20)).unwrap() {
                        ev.reply(Response::continue_()).unwrap();
                    }
                }
            });
        }
        s.spawn(|| {
            let mut seed = 77u64;
            while !stop.load(Ordering::SeqCst) {
                let g = vm.pause().unwrap();
                assert!(vm.is_paused());
                thread::sleep(jitter(&mut seed));
                g.resume().unwrap();
                pauses.fetch_add(1, Ordering::SeqCst);
                thread::sleep(jitter(&mut seed));
            }
        });
        let guests: Vec<_> = (0..4usize)
            .map(|vcpu| {
                let sim = &sim;
                s.spawn(move || {
                    let mut seed = 0x1234_5678u64 ^ (vcpu as u64 + 1);
                    let mut cr3 = sim.vm().vcpus[vcpu].sregs.cr3;
                    for _ in 0..PER_VCPU {
                        thread::sleep(jitter(&mut seed));
                        let new = cr3 ^ 0x1000;
                        let r = sim
                            .trigger_and_wait(
                                vcpu,
                                SimEvent::Cr {
                                    cr: 3,
                                    old: cr3,
                                    new,
                                },
                            )
                            .unwrap();
                        assert_eq!(r.new_val, Some(new));
                        cr3 = new;
                    }
                })
            })
            .collect();
        for g in guests {
            g.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(pauses.load(Ordering::SeqCst) > 0);
    assert_eq!(
        events(&sim, sys::KVMI_EVENT_CR),
        (4 * PER_VCPU, 4 * PER_VCPU)
    );
    // Every PAUSE_VCPU event was answered: no vCPU is left paused.
    assert!(eventually(|| {
        let (s, a) = events(&sim, sys::KVMI_EVENT_PAUSE_VCPU);
        s == a && sim.vm().vcpus.iter().all(|v| v.pause_requests == 0)
    }));
    assert!(sim.closed().is_none());
}

#[test]
fn dispatcher_with_four_workers_answers_each_event_once() {
    let (vm, sim) = setup(kvmi_sim::Abi::V7, |s| s.vcpus = 4);
    vm.enable(&Monitor::ControlRegister {
        cr: 3,
        access: RegisterAccess::Write,
        filter: RegisterFilter::default(),
    })
    .unwrap();
    let stop = AtomicBool::new(false);
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let report = thread::scope(|s| {
        let d = s.spawn(|| {
            vmi_kvm::dispatch_parallel(&vm, 4, &stop, |ev| match ev.vcpu.0 {
                1 => panic!("handler bug"),
                2 => {
                    thread::sleep(Duration::from_millis(5));
                    Response::deny()
                }
                // A response CR events cannot take: refused, answered with the default.
                3 => Response::reinject(),
                _ => Response::continue_(),
            })
        });
        let guests: Vec<_> = (0..4usize)
            .map(|vcpu| {
                let sim = &sim;
                s.spawn(move || {
                    let mut seed = 0xabcdu64 ^ (vcpu as u64 + 7);
                    let mut cr3 = sim.vm().vcpus[vcpu].sregs.cr3;
                    for _ in 0..PER_VCPU {
                        thread::sleep(jitter(&mut seed));
                        let new = cr3 ^ 0x1000;
                        let r = sim
                            .trigger_and_wait(
                                vcpu,
                                SimEvent::Cr {
                                    cr: 3,
                                    old: cr3,
                                    new,
                                },
                            )
                            .unwrap();
                        let want = if vcpu == 2 { cr3 } else { new };
                        assert_eq!(r.new_val, Some(want), "vCPU {vcpu}");
                        if vcpu != 2 {
                            cr3 = new;
                        }
                    }
                })
            })
            .collect();
        for g in guests {
            g.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        d.join().unwrap().unwrap()
    });
    std::panic::set_hook(hook);
    assert_eq!(report.handled, 4 * PER_VCPU);
    assert_eq!(report.panicked, PER_VCPU);
    assert_eq!(report.refused, PER_VCPU);
    assert_eq!(
        events(&sim, sys::KVMI_EVENT_CR),
        (4 * PER_VCPU, 4 * PER_VCPU)
    );
}
