//! Measuring one hostile operation: on a thread of its own, within a time limit, with the
//! bytes that thread allocates counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::mpsc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Allocation accounting per thread: each hostile operation runs on a thread of its own, so
// its peak is measured exactly even while other tests of this file run in parallel
// (the process-wide VmHWM would mix them).

struct CountingAllocator;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(delta: isize) {
    // `try_with`: during thread teardown the slots may be gone; then nothing is counted.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every method forwards to the system allocator with the same arguments and only
// adds bookkeeping in const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            account(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is the system allocator.
        unsafe { System.dealloc(ptr, layout) };
        account(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `dealloc`, and the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            account(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// How long any one hostile operation may take (a clean attach takes 0.1–1 s here).
pub(crate) const TIME_LIMIT: Duration = Duration::from_secs(5);

/// What [`within`] measured.
pub(crate) struct Measured<T> {
    pub(crate) value: T,
    pub(crate) elapsed: Duration,
    /// Peak bytes allocated by the operation's thread above what it held at the start.
    pub(crate) peak_alloc: usize,
}

/// Runs `f` on a thread of its own and waits at most [`TIME_LIMIT`]: a hang or a panic
/// fails the test with `what`, and the time and allocation peak are returned.
pub(crate) fn within<T: Send + std::fmt::Debug + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Measured<T> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(format!("hostile: {what}"))
        .spawn(move || {
            let base = LIVE.with(Cell::get);
            PEAK.with(|p| p.set(base));
            let t = Instant::now();
            let value = f();
            let elapsed = t.elapsed();
            let peak = PEAK.with(Cell::get).saturating_sub(base).max(0) as usize;
            let _ = tx.send(Measured {
                value,
                elapsed,
                peak_alloc: peak,
            });
        })
        .expect("spawning the measured thread");
    let m = match rx.recv_timeout(TIME_LIMIT) {
        Ok(m) => m,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what}: no answer within {TIME_LIMIT:?} (an unbounded walk?)")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: panicked"),
    };
    let mut shown = format!("{:?}", m.value);
    if shown.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    eprintln!(
        "{what}: {:.1?}, peak allocation {:.1} MiB → {shown}",
        m.elapsed,
        m.peak_alloc as f64 / (1 << 20) as f64
    );
    m
}
