//! An opt-in cache of whole guest frames for physical reads, honest by construction
//! in the one situation where that is cheap to guarantee: **every vCPU is held in
//! one of our internal `PAUSE_VCPU` events** (the whole guest is paused and no tool
//! event is in progress), so no guest instruction can write memory.
//!
//! KVMi offers no guest-memory mapping over its socket (see the capability row
//! "guest memory mapping"), so every read is a round trip; the cache saves those
//! while a tool scans a paused guest.
//!
//! How it stays honest:
//! * **Guest writes.** Each `PAUSE_VCPU` hold gets a stamp when it starts
//!   (`VcpuHost::held_stamp` in the session state). The cache belongs to one *hold
//!   set* — the stamps of all vCPUs at fill time. A lookup first computes the current
//!   hold set: if some vCPU is not held (running, or in a tool event whose answer may
//!   emulate a write), the cache is bypassed and emptied; if the set differs (a vCPU
//!   was released and paused again, so it may have run), the cache is emptied. A frame
//!   fetched from the host is inserted only if the hold set is unchanged after the
//!   fetch, so a release racing with a read cannot leave a stale frame.
//! * **Our own writes.** Memory writes, breakpoint arming/clearing and the teardown's
//!   restores go through the session's `write_physical`, which bumps the cache's
//!   generation and drops the frames it touches before and after the write; a fetch
//!   that overlapped a write (generation changed) is not inserted. The byte writes of
//!   a breakpoint step-over go out with an event's answer, while that vCPU is not
//!   held, so the hold-set rule above already keeps them out. Frame allocation and
//!   freeing empty the cache.
//! * **Not seen:** writes by QEMU's devices (DMA, e.g. a virtio queue completing)
//!   while the vCPUs are paused — KVMi reports nothing about them. That is why the
//!   cache is off unless the tool enables it ([`crate::KvmiVm::enable_page_cache`]).
//!   Nor is a vCPU hot-plugged after connect: the session counts vCPUs once, so
//!   "every vCPU held" means every vCPU it knows.
//!
//! The cache is bounded (`frames` given when enabling); past that, frames are simply
//! not cached.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use vmi_core::PAGE_SIZE;

/// One frame's bytes.
pub(crate) type Frame = Box<[u8; PAGE_SIZE as usize]>;

#[derive(Default)]
pub(crate) struct CacheState {
    /// Most frames kept; 0 = disabled.
    pub(crate) capacity: usize,
    /// The hold set the frames belong to.
    pub(crate) holds: Vec<u64>,
    /// Bumped by every invalidation (our writes, allocation).
    pub(crate) generation: u64,
    pub(crate) frames: HashMap<u64, Frame>,
    /// Statistics: frames served from the cache / fetched from the host.
    pub(crate) hits: u64,
    pub(crate) misses: u64,
}

/// The session's page cache (see the module docs).
#[derive(Default)]
pub(crate) struct PageCache {
    state: Mutex<CacheState>,
}

impl PageCache {
    pub(crate) fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn enabled(&self) -> bool {
        self.lock().capacity > 0
    }

    /// Drops frames `gfns` and bumps the generation (our own write).
    pub(crate) fn invalidate(&self, gfns: impl Iterator<Item = u64>) {
        let mut c = self.lock();
        if c.capacity == 0 {
            return;
        }
        c.generation += 1;
        for g in gfns {
            c.frames.remove(&g);
        }
    }

    /// Drops every frame and bumps the generation.
    pub(crate) fn clear(&self) {
        let mut c = self.lock();
        c.generation += 1;
        c.frames.clear();
    }
}

/// Page-cache statistics of a session ([`crate::KvmiVm::page_cache_stats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PageCacheStats {
    /// Frames held now.
    pub frames: usize,
    /// Page pieces served from the cache.
    pub hits: u64,
    /// Frames fetched from the host while the cache was usable.
    pub misses: u64,
}
