//! Searching guest physical memory through the library, as a tool would.

use vmi_core::{Gpa, MemoryLayout, PhysicalMemory, Result};

/// Every guest-physical address at which `needle` starts, scanning all RAM ranges of
/// `mem` in 1 MiB chunks that overlap by `needle.len() - 1` bytes (so matches across
/// chunk boundaries are found once).
pub fn find_all<M: PhysicalMemory + MemoryLayout + ?Sized>(
    mem: &M,
    needle: &[u8],
) -> Result<Vec<Gpa>> {
    const CHUNK: u64 = 1 << 20;
    if needle.is_empty() {
        return Ok(Vec::new());
    }
    let overlap = needle.len() as u64 - 1;
    let mut hits = Vec::new();
    let mut buf = vec![0u8; (CHUNK + overlap) as usize];
    for range in mem.memory_info()?.ranges {
        let mut at = range.start.raw();
        while at < range.end() {
            let len = (range.end() - at).min(CHUNK + overlap) as usize;
            mem.read_physical(Gpa(at), &mut buf[..len])?;
            for (i, w) in buf[..len].windows(needle.len()).enumerate() {
                // Matches starting in the overlap are found again in the next chunk.
                if (i as u64) < CHUNK && w == needle {
                    hits.push(Gpa(at + i as u64));
                }
            }
            at += CHUNK;
        }
    }
    Ok(hits)
}
