//! Guest physical memory over the socket: reads and writes of any length and
//! alignment, split at page boundaries (`READ_PHYSICAL`/`WRITE_PHYSICAL` take at most
//! one page) and pipelined — every page request of a call goes out before the first
//! reply is awaited, in windows of [`WINDOW`] requests, so a 64 KiB read costs about
//! one round trip, not sixteen. Memory size comes from `GET_MAX_GFN`.
//!
//! Reads may be served by the opt-in [page cache](crate::page_cache) while the whole
//! guest is held in our pause events; writes keep it honest.

use kvmi_proto::{Flow, Request};
use vmi_core::memory::{MemoryInfo, PhysicalRange};
use vmi_core::{Error, Gpa, MemoryLayout, PhysicalMemory, PhysicalMemoryWrite, Result, PAGE_SIZE};

use crate::error::{physical, proto};
use crate::session::{KvmiVm, Shared};

/// Requests in flight per call (bounded so one huge read cannot queue unbounded
/// replies).
pub const WINDOW: usize = 64;

/// `(gpa, offset in the caller's buffer, length)` of each page piece of a range.
fn pieces(gpa: u64, len: usize) -> Result<Vec<(u64, usize, usize)>> {
    if len == 0 {
        return Ok(Vec::new());
    }
    gpa.checked_add(len as u64 - 1)
        .ok_or(Error::UnmappedPhysical {
            gpa: Gpa(gpa),
            len: len as u64,
        })?;
    let mut out = Vec::with_capacity(len / PAGE_SIZE as usize + 2);
    let mut done = 0usize;
    while done < len {
        let a = gpa + done as u64;
        let room = PAGE_SIZE as usize - (a % PAGE_SIZE) as usize;
        let n = room.min(len - done);
        out.push((a, done, n));
        done += n;
    }
    Ok(out)
}

impl Shared {
    /// Reads through the page cache when it is enabled and the guest is held (see
    /// [`crate::page_cache`]), else over the socket.
    pub(crate) fn read_physical(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        if !self.page_cache.enabled() {
            return self.fetch_physical(gpa, buf);
        }
        let Some(holds) = self.hold_set() else {
            // Some vCPU may run: nothing cached can be trusted now or later.
            let mut c = self.page_cache.lock();
            if !c.frames.is_empty() {
                c.frames.clear();
            }
            drop(c);
            return self.fetch_physical(gpa, buf);
        };
        let parts = pieces(gpa, buf.len())?;
        // Serve what is cached; collect the frames to fetch.
        let (generation, missing) = {
            let mut c = self.page_cache.lock();
            if c.holds != holds {
                c.frames.clear();
                c.holds = holds.clone();
            }
            let mut missing: Vec<u64> = Vec::new();
            let mut hits = 0;
            for &(a, off, n) in &parts {
                let gfn = a / PAGE_SIZE;
                let at = (a % PAGE_SIZE) as usize;
                match c.frames.get(&gfn) {
                    Some(f) => {
                        buf[off..off + n].copy_from_slice(&f[at..at + n]);
                        hits += 1;
                    }
                    None => {
                        if missing.last() != Some(&gfn) {
                            missing.push(gfn);
                        }
                    }
                }
            }
            c.hits += hits;
            (c.generation, missing)
        };
        if missing.is_empty() {
            return Ok(());
        }
        // Fetch whole frames (pipelined: adjacent frames as one range).
        let mut fetched: Vec<(u64, crate::page_cache::Frame)> = Vec::with_capacity(missing.len());
        let mut frames = vec![0u8; missing.len() * PAGE_SIZE as usize];
        // One call per run of adjacent frames keeps the error of a hole precise.
        let mut i = 0;
        while i < missing.len() {
            let mut j = i + 1;
            while j < missing.len() && missing[j] == missing[j - 1] + 1 {
                j += 1;
            }
            let span = &mut frames[i * PAGE_SIZE as usize..j * PAGE_SIZE as usize];
            if let Err(e) = self.fetch_physical(missing[i] * PAGE_SIZE, span) {
                return match e {
                    // Report the caller's range, not the frame's.
                    Error::UnmappedPhysical { .. } => Err(Error::UnmappedPhysical {
                        gpa: Gpa(gpa),
                        len: buf.len() as u64,
                    }),
                    other => Err(other),
                };
            }
            i = j;
        }
        for (k, &gfn) in missing.iter().enumerate() {
            let mut f: crate::page_cache::Frame = Box::new([0; PAGE_SIZE as usize]);
            f.copy_from_slice(&frames[k * PAGE_SIZE as usize..(k + 1) * PAGE_SIZE as usize]);
            fetched.push((gfn, f));
        }
        for &(a, off, n) in &parts {
            let gfn = a / PAGE_SIZE;
            if let Ok(k) = missing.binary_search(&gfn) {
                let at = (a % PAGE_SIZE) as usize;
                buf[off..off + n].copy_from_slice(&fetched[k].1[at..at + n]);
            }
        }
        // Keep the frames only if no vCPU ran and we wrote nothing meanwhile.
        let still_held = self.hold_set().as_ref() == Some(&holds);
        let mut c = self.page_cache.lock();
        c.misses += missing.len() as u64;
        if still_held && c.generation == generation && c.holds == holds {
            for (gfn, f) in fetched {
                if c.frames.len() >= c.capacity {
                    break;
                }
                c.frames.insert(gfn, f);
            }
        }
        Ok(())
    }

    /// Reads over the socket, bypassing the cache: one `READ_PHYSICAL` per page piece,
    /// through kvmi-proto's pipeline ([`WINDOW`] in flight).
    pub(crate) fn fetch_physical(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let parts = pieces(gpa, buf.len())?;
        let reqs = parts
            .iter()
            .map(|&(a, _, n)| Request::read_physical(a, n).map_err(|e| physical(READ, a, n, e)))
            .collect::<Result<Vec<_>>>()?;
        let mut first = None;
        let sent = self.conn.pipeline(reqs, WINDOW, None, |i, r| {
            let (a, off, n) = parts[i];
            match r {
                Ok(data) => buf[off..off + n].copy_from_slice(&data),
                Err(e) => {
                    first.get_or_insert_with(|| physical(READ, a, n, e));
                }
            }
            if first.is_some() {
                Flow::Stop
            } else {
                Flow::Continue
            }
        });
        finish(sent, first, parts.len(), READ, gpa, buf.len())
    }

    /// Writes, dropping the frames written from the page cache before and after (a
    /// read racing with the write sees the generation change and caches nothing).
    pub(crate) fn write_physical(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let parts = pieces(gpa, data.len())?;
        let gfns = || parts.iter().map(|&(a, _, _)| a / PAGE_SIZE);
        self.page_cache.invalidate(gfns());
        let r = self.send_writes(&parts, data);
        self.page_cache.invalidate(gfns());
        r
    }

    fn send_writes(&self, parts: &[(u64, usize, usize)], data: &[u8]) -> Result<()> {
        let reqs = parts
            .iter()
            .map(|&(a, off, n)| {
                Request::write_physical(a, &data[off..off + n])
                    .map_err(|e| physical(WRITE, a, n, e))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut first = None;
        let sent = self.conn.pipeline(reqs, WINDOW, None, |i, r| {
            let (a, _, n) = parts[i];
            if let Err(e) = r {
                first.get_or_insert_with(|| physical(WRITE, a, n, e));
                return Flow::Stop;
            }
            Flow::Continue
        });
        let gpa = parts.first().map_or(0, |p| p.0);
        finish(sent, first, parts.len(), WRITE, gpa, data.len())
    }
}

const READ: &str = "KVMI_VM_READ_PHYSICAL";
const WRITE: &str = "KVMI_VM_WRITE_PHYSICAL";

/// The outcome of a physical-memory pipeline of `total` pieces of the caller's range
/// (`gpa`, `len`): its first failure (a hole reported for the caller's range), or the
/// failure that kept pieces from being sent.
fn finish(
    sent: kvmi_proto::Result<usize>,
    first: Option<Error>,
    total: usize,
    command: &'static str,
    gpa: u64,
    len: usize,
) -> Result<()> {
    let first = match (first, sent) {
        (Some(e), _) => Some(e),
        (None, Err(e)) => Some(physical(command, gpa, len, e)),
        (None, Ok(n)) if n < total => Some(Error::Timeout {
            what: command.into(),
            after: std::time::Duration::ZERO,
        }),
        (None, Ok(_)) => None,
    };
    match first {
        None => Ok(()),
        Some(Error::UnmappedPhysical { .. }) => Err(Error::UnmappedPhysical {
            gpa: Gpa(gpa),
            len: len as u64,
        }),
        Some(other) => Err(other),
    }
}

impl PhysicalMemory for KvmiVm {
    fn read_physical(&self, gpa: Gpa, buf: &mut [u8]) -> Result<()> {
        self.shared.read_physical(gpa.0, buf)
    }
}

impl KvmiVm {
    /// Enables the page cache for physical reads, keeping at most `frames` frames
    /// (0 disables it). Frames are cached only while every vCPU is held by a pause
    /// (no tool event in progress) and dropped as soon as one may run; writes through
    /// this session keep them honest. Writes by QEMU's devices (DMA) while the guest is
    /// paused are not seen — see [`crate::page_cache`] — which is why it is opt-in.
    pub fn enable_page_cache(&self, frames: usize) {
        let mut c = self.shared.page_cache.lock();
        c.capacity = frames;
        c.generation += 1;
        c.frames.clear();
    }

    /// Frames held and hits/misses since the session started.
    pub fn page_cache_stats(&self) -> crate::page_cache::PageCacheStats {
        let c = self.shared.page_cache.lock();
        crate::page_cache::PageCacheStats {
            frames: c.frames.len(),
            hits: c.hits,
            misses: c.misses,
        }
    }
}

impl PhysicalMemoryWrite for KvmiVm {
    fn write_physical(&self, gpa: Gpa, data: &[u8]) -> Result<()> {
        self.shared.write_physical(gpa.0, data)
    }
}

impl MemoryLayout for KvmiVm {
    /// One range from 0 to the host's max gfn (`GET_MAX_GFN`: the first frame above
    /// guest RAM). KVMi does not describe holes; reads of a hole fail with
    /// [`Error::UnmappedPhysical`].
    fn memory_info(&self) -> Result<MemoryInfo> {
        let gfn = self
            .shared
            .conn
            .call(Request::get_max_gfn())
            .map_err(|e| proto("KVMI_VM_GET_MAX_GFN", e))?;
        let len = gfn.checked_mul(PAGE_SIZE).ok_or_else(|| {
            Error::malformed("KVMi reply", format!("GET_MAX_GFN {gfn:#x} overflows"))
        })?;
        Ok(MemoryInfo {
            ranges: vec![PhysicalRange { start: Gpa(0), len }],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::pieces;

    #[test]
    fn ranges_split_at_page_boundaries() {
        assert_eq!(
            pieces(0xff0, 0x20).unwrap(),
            vec![(0xff0, 0, 0x10), (0x1000, 0x10, 0x10)]
        );
        assert_eq!(pieces(0x1000, 0x2000).unwrap().len(), 2);
        assert!(pieces(0, 0).unwrap().is_empty());
        assert!(
            pieces(u64::MAX - 2, 8).is_err(),
            "wrapping ranges are refused"
        );
        let p = pieces(0x123, 3 * 4096).unwrap();
        assert_eq!(p.iter().map(|x| x.2).sum::<usize>(), 3 * 4096);
        assert!(p.iter().all(|&(a, _, n)| (a % 4096) as usize + n <= 4096));
    }
}
