//! Copies in and out of memory that another agent writes concurrently (guest RAM mapped
//! into this process: the guest's vCPUs and QEMU write it while we read).
//!
//! Such memory must not be read with `copy_nonoverlapping` or through slices: the
//! compiler may assume that memory it reads that way does not change under it (merge,
//! repeat or drop the loads). Every access to the shared side here is volatile instead.
//! The middle of a range is copied as naturally aligned `u64` words — one load or store
//! each, so an aligned word another agent writes whole is seen either old or new, never
//! torn — and the unaligned head and tail byte by byte. The private side (our buffer) is
//! accessed with plain unaligned word accesses, which the compiler may schedule freely.

const WORD: usize = core::mem::size_of::<u64>();
/// Words per iteration of the main loop: independent loads the CPU can keep in flight.
const UNROLL: usize = 4;
/// Copies at least this long write the private side with non-temporal stores (`movnti`),
/// as glibc's `memcpy` does for copies larger than the cache would usefully hold: the
/// destination lines are not read first (no read-for-ownership), which is what keeps a
/// word-by-word copy at `memcpy`'s throughput for bulk reads.
const STREAM_MIN: usize = 4 << 20;

/// Bytes from `addr` up to the next multiple of 8, at most `len`.
fn head_len(addr: usize, len: usize) -> usize {
    (addr.wrapping_neg() % WORD).min(len)
}

/// Copies `len` bytes from shared memory at `src` into `dst`, reading `src` only with
/// volatile accesses (aligned `u64` words where it can).
///
/// # Safety
/// `src..src+len` must be readable and `dst..dst+len` writable, and `dst..dst+len` must
/// not overlap `src..src+len` nor be accessed by anyone else during the call. `src` may
/// be written concurrently by another agent.
pub(crate) unsafe fn copy_from_shared(src: *const u8, dst: *mut u8, len: usize) {
    let head = head_len(src as usize, len);
    let words = (len - head) / WORD;
    let body_end = head + words * WORD;
    // SAFETY: for every access below, all offsets are below `len`, so each access lies in the
    // ranges the caller vouched for; `src + head` is 8-aligned by `head_len`, so every
    // `u64` read from `src + head + 8k` is aligned; `dst` words may be unaligned and are
    // written with `write_unaligned`.
    unsafe {
        for i in 0..head {
            dst.add(i).write(src.add(i).read_volatile());
        }
        let src_words = src.add(head).cast::<u64>();
        let dst_words = dst.add(head).cast::<u64>();
        let mut k = 0;
        // `movnti` (SSE2, part of the x86-64 baseline) takes an unaligned destination;
        // the fence orders the streamed stores before anything after the copy.
        #[cfg(target_arch = "x86_64")]
        if len >= STREAM_MIN {
            use core::arch::x86_64::{_mm_sfence, _mm_stream_si64};
            let dst_i64 = dst_words.cast::<i64>();
            while k + UNROLL <= words {
                let w0 = src_words.add(k).read_volatile();
                let w1 = src_words.add(k + 1).read_volatile();
                let w2 = src_words.add(k + 2).read_volatile();
                let w3 = src_words.add(k + 3).read_volatile();
                _mm_stream_si64(dst_i64.add(k), w0 as i64);
                _mm_stream_si64(dst_i64.add(k + 1), w1 as i64);
                _mm_stream_si64(dst_i64.add(k + 2), w2 as i64);
                _mm_stream_si64(dst_i64.add(k + 3), w3 as i64);
                k += UNROLL;
            }
            _mm_sfence();
        }
        while k + UNROLL <= words {
            let w0 = src_words.add(k).read_volatile();
            let w1 = src_words.add(k + 1).read_volatile();
            let w2 = src_words.add(k + 2).read_volatile();
            let w3 = src_words.add(k + 3).read_volatile();
            dst_words.add(k).write_unaligned(w0);
            dst_words.add(k + 1).write_unaligned(w1);
            dst_words.add(k + 2).write_unaligned(w2);
            dst_words.add(k + 3).write_unaligned(w3);
            k += UNROLL;
        }
        while k < words {
            dst_words
                .add(k)
                .write_unaligned(src_words.add(k).read_volatile());
            k += 1;
        }
        for i in body_end..len {
            dst.add(i).write(src.add(i).read_volatile());
        }
    }
}

/// Copies `len` bytes from `src` into shared memory at `dst`, writing `dst` only with
/// volatile accesses (aligned `u64` words where it can).
///
/// # Safety
/// `src..src+len` must be readable and `dst..dst+len` writable, and the ranges must not
/// overlap. `src` must not be written by anyone during the call; `dst` may be read or
/// written concurrently by another agent.
pub(crate) unsafe fn copy_to_shared(src: *const u8, dst: *mut u8, len: usize) {
    let head = head_len(dst as usize, len);
    let words = (len - head) / WORD;
    let body_end = head + words * WORD;
    // SAFETY: for every access below, all offsets are below `len`, inside the ranges the
    // caller vouched for; `dst + head` is 8-aligned by `head_len`, so every `u64` written
    // to `dst + head + 8k` is aligned; `src` words may be unaligned and are read with
    // `read_unaligned`.
    unsafe {
        for i in 0..head {
            dst.add(i).write_volatile(src.add(i).read());
        }
        let src_words = src.add(head).cast::<u64>();
        let dst_words = dst.add(head).cast::<u64>();
        let mut k = 0;
        while k + UNROLL <= words {
            let w0 = src_words.add(k).read_unaligned();
            let w1 = src_words.add(k + 1).read_unaligned();
            let w2 = src_words.add(k + 2).read_unaligned();
            let w3 = src_words.add(k + 3).read_unaligned();
            dst_words.add(k).write_volatile(w0);
            dst_words.add(k + 1).write_volatile(w1);
            dst_words.add(k + 2).write_volatile(w2);
            dst_words.add(k + 3).write_volatile(w3);
            k += UNROLL;
        }
        while k < words {
            dst_words
                .add(k)
                .write_volatile(src_words.add(k).read_unaligned());
            k += 1;
        }
        for i in body_end..len {
            dst.add(i).write_volatile(src.add(i).read());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr;

    /// A source of 64 + 24 distinct bytes, copied at every source alignment (0..8) and
    /// every length from 0 to 64 (covering head only, head + tail, head + words + tail,
    /// more than one unrolled iteration), into destinations at every alignment.
    #[test]
    fn copies_every_alignment_and_length_both_ways() {
        let pattern: Vec<u8> = (0..88u32).map(|i| (i * 7 + 3) as u8).collect();
        // `u64` backing so offset 0 is 8-aligned and offsets 0..8 give every alignment.
        let mut shared = vec![0u64; 12];
        let mut private = vec![0u64; 12];
        for src_off in 0..8 {
            for dst_off in 0..8 {
                for len in 0..=64 {
                    // Shared -> private.
                    let s = shared.as_mut_ptr().cast::<u8>();
                    let d = private.as_mut_ptr().cast::<u8>();
                    // SAFETY: both buffers are 96 bytes; offsets < 8 and len <= 64 keep
                    // every range inside them, and the two are distinct allocations.
                    unsafe {
                        ptr::copy_nonoverlapping(pattern.as_ptr(), s, 88);
                        ptr::write_bytes(d, 0xee, 96);
                        copy_from_shared(s.add(src_off), d.add(dst_off), len);
                        let out = core::slice::from_raw_parts(d, 96);
                        assert_eq!(
                            &out[dst_off..dst_off + len],
                            &pattern[src_off..src_off + len],
                            "from shared: src+{src_off} dst+{dst_off} len {len}"
                        );
                        assert!(out[..dst_off].iter().all(|&b| b == 0xee), "wrote before");
                        assert!(
                            out[dst_off + len..].iter().all(|&b| b == 0xee),
                            "wrote past the end: src+{src_off} dst+{dst_off} len {len}"
                        );
                    }
                    // Private -> shared.
                    let (s, d) = (d, s);
                    // SAFETY: as above, with the roles swapped.
                    unsafe {
                        ptr::copy_nonoverlapping(pattern.as_ptr(), s, 88);
                        ptr::write_bytes(d, 0xee, 96);
                        copy_to_shared(s.add(src_off), d.add(dst_off), len);
                        let out = core::slice::from_raw_parts(d, 96);
                        assert_eq!(
                            &out[dst_off..dst_off + len],
                            &pattern[src_off..src_off + len],
                            "to shared: src+{src_off} dst+{dst_off} len {len}"
                        );
                        assert!(out[..dst_off].iter().all(|&b| b == 0xee), "wrote before");
                        assert!(
                            out[dst_off + len..].iter().all(|&b| b == 0xee),
                            "wrote past the end: src+{src_off} dst+{dst_off} len {len}"
                        );
                    }
                }
            }
        }
    }

    /// Copies long enough for the streaming path, at odd source and destination
    /// offsets, with a tail: every byte lands, nothing past the end.
    #[test]
    fn bulk_copies_stream_every_byte() {
        let len = STREAM_MIN + 4096 + 13;
        let pattern: Vec<u8> = (0..len + 16).map(|i| (i % 251) as u8).collect();
        for (src_off, dst_off) in [(0, 0), (3, 3), (5, 1), (0, 7)] {
            let mut out = vec![0xeeu8; len + 16];
            // SAFETY: both buffers hold `len + 16` bytes; offsets < 8 keep the ranges
            // inside them; they are distinct allocations.
            unsafe {
                copy_from_shared(
                    pattern.as_ptr().add(src_off),
                    out.as_mut_ptr().add(dst_off),
                    len,
                )
            };
            assert!(
                out[dst_off..dst_off + len] == pattern[src_off..src_off + len],
                "src+{src_off} dst+{dst_off}"
            );
            assert!(out[..dst_off].iter().all(|&b| b == 0xee));
            assert!(out[dst_off + len..].iter().all(|&b| b == 0xee));
        }
    }

    #[test]
    fn head_len_stops_at_the_next_word_or_the_end() {
        assert_eq!(head_len(0x1000, 100), 0);
        assert_eq!(head_len(0x1001, 100), 7);
        assert_eq!(head_len(0x1007, 100), 1);
        assert_eq!(head_len(0x1003, 2), 2);
        assert_eq!(head_len(usize::MAX, 100), 1);
    }
}
