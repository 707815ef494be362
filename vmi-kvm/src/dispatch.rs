//! Handling events of different vCPUs in parallel: [`dispatch_parallel`] runs N
//! workers that each wait for the next event and answer it with the tool's handler.
//!
//! A vCPU has at most one event outstanding (it waits for the answer), so events of
//! one vCPU are handled one after the other while events of different vCPUs are
//! handled concurrently. Each event is still answered exactly once: the handler's
//! return value is the reply, and an event whose handler panics is answered with the
//! default response by its guard while the worker unwinds (the worker then goes on
//! with the next event, and the panic count is reported).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use vmi_core::{Event, EventControl, Response, Result};

use crate::session::KvmiVm;

/// What a parallel dispatch did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DispatchReport {
    /// Events handed to the handler.
    pub handled: u64,
    /// Handler calls that panicked (their events were answered with the default).
    pub panicked: u64,
    /// Replies the backend refused (answered with the default instead).
    pub refused: u64,
}

/// Runs `workers` threads handling events with `handler` until `stop` is set or the
/// session fails; returns what happened, or the first session error.
pub fn dispatch_parallel<F>(
    vm: &KvmiVm,
    workers: usize,
    stop: &AtomicBool,
    handler: F,
) -> Result<DispatchReport>
where
    F: Fn(&Event) -> Response + Sync,
{
    let handled = AtomicU64::new(0);
    let panicked = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let failed = std::sync::Mutex::new(None);
    let handler = &handler;
    std::thread::scope(|s| {
        for _ in 0..workers.max(1) {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    let ev = match vm.wait_event(Duration::from_millis(50)) {
                        Ok(Some(ev)) => ev,
                        Ok(None) => continue,
                        Err(e) => {
                            failed
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .get_or_insert(e);
                            stop.store(true, Ordering::SeqCst);
                            return;
                        }
                    };
                    handled.fetch_add(1, Ordering::Relaxed);
                    // The guard moves into the closure: a panic drops it, which answers.
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
                        let response = handler(ev.event());
                        ev.reply(response)
                    }));
                    match r {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            panicked.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    Ok(DispatchReport {
        handled: handled.into_inner(),
        panicked: panicked.into_inner(),
        refused: refused.into_inner(),
    })
}
