//! The kernel log, read from the lockless `printk_ringbuffer` (`prb`, 5.10+).
//!
//! Layout (all from the kernel's types): a descriptor ring (`desc_ring`: `count_bits`,
//! `descs`, `infos`, `head_id`, `tail_id`) and a data ring (`text_data_ring`:
//! `size_bits`, `data`). Each descriptor's `state_var` holds its id and, in the top two
//! bits, its state; committed and finalized records are read, from the tail id to the
//! head id. A text block starts with the descriptor id (one `unsigned long`); a block
//! whose logical positions lie in different wraps of the data ring starts at `data[0]`.
//! Kernels before 5.10 kept `log_buf` with `struct printk_log` records: detected by
//! `prb` missing and reported as unsupported with that reason.

use vmi_core::{PhysicalMemory, ReadRegisters};

use crate::error::{Error, Result};
use crate::layout::{req, Off};
use crate::linux::Linux;
use crate::types::Types;

/// At most this many records are read (the ring holds far fewer: 2^count_bits ≤ 2^20).
pub const MAX_RECORDS: u64 = 1 << 20;
/// Largest data ring accepted (the kernel's maximum log_buf is 32 MiB).
pub const MAX_DATA_RING: u64 = 1 << 26;

/// One record of the kernel log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Sequence number.
    pub seq: u64,
    /// Timestamp in nanoseconds since boot (`dmesg` prints seconds with 6 decimals).
    pub timestamp_ns: u64,
    /// Log level (0 = emerg … 7 = debug).
    pub level: u8,
    /// Syslog facility (0 = kernel).
    pub facility: u8,
    /// The message text.
    pub text: String,
}

impl LogRecord {
    /// The lines as `dmesg` prints them: `[    1.234567] text`, one per line of the text
    /// (the kernel's syslog format repeats the prefix on every line of a record).
    pub fn dmesg_lines(&self) -> impl Iterator<Item = String> + '_ {
        let prefix = format!(
            "[{:5}.{:06}] ",
            self.timestamp_ns / 1_000_000_000,
            (self.timestamp_ns % 1_000_000_000) / 1000
        );
        self.text.split('\n').map(move |l| format!("{prefix}{l}"))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct LogLayout {
    count_bits: Off,
    descs: Off,
    infos: Off,
    head_id: Off,
    tail_id: Off,
    desc_size: u64,
    state_var: Off,
    blk_begin: Off,
    blk_next: Off,
    size_bits: Off,
    data: Off,
    info_size: u64,
    seq: Off,
    ts_nsec: Off,
    text_len: Off,
    facility: Off,
    /// Byte holding `flags:5, level:3`, and the level's bit position in it.
    level: (u64, u8),
}

impl LogLayout {
    pub(crate) fn resolve(types: &Types) -> Result<Self> {
        let rb = "printk_ringbuffer";
        let level = types.field("printk_info", "level")?;
        let level_bits = level.bits.map_or(0, |(bit, _)| bit);
        Ok(Self {
            count_bits: req(types, rb, "desc_ring.count_bits")?,
            descs: req(types, rb, "desc_ring.descs")?,
            infos: req(types, rb, "desc_ring.infos")?,
            head_id: req(types, rb, "desc_ring.head_id")?,
            tail_id: req(types, rb, "desc_ring.tail_id")?,
            desc_size: types.size_of("prb_desc")?,
            state_var: req(types, "prb_desc", "state_var")?,
            blk_begin: req(types, "prb_desc", "text_blk_lpos.begin")?,
            blk_next: req(types, "prb_desc", "text_blk_lpos.next")?,
            size_bits: req(types, rb, "text_data_ring.size_bits")?,
            data: req(types, rb, "text_data_ring.data")?,
            info_size: types.size_of("printk_info")?,
            seq: req(types, "printk_info", "seq")?,
            ts_nsec: req(types, "printk_info", "ts_nsec")?,
            text_len: req(types, "printk_info", "text_len")?,
            facility: req(types, "printk_info", "facility")?,
            level: (level.offset, level_bits),
        })
    }
}

/// Descriptor states (top two bits of `state_var`).
const DESC_COMMITTED: u64 = 1;
const DESC_FINALIZED: u64 = 2;
const DESC_ID_MASK: u64 = !(3u64 << 62);

impl<V: PhysicalMemory + ReadRegisters> Linux<V> {
    /// The kernel log, oldest record first (what `dmesg` prints).
    pub fn dmesg(&self) -> Result<Vec<LogRecord>> {
        let Some(prb_ptr) = self.symbols().address_of("prb") else {
            return Err(Error::Unavailable {
                what: "kernel log",
                reason: if self.symbols().address_of("log_buf").is_some() {
                    "this kernel keeps the pre-5.10 log_buf format, which is not read yet".into()
                } else {
                    "neither prb nor log_buf is among the kernel's symbols".into()
                },
            });
        };
        let l = self.log_layout()?;
        let r = self.kernel_reader();
        let rb = r.u64(prb_ptr)?;
        let count_bits = r.uint(rb + l.count_bits.offset, l.count_bits.size)?;
        let size_bits = r.uint(rb + l.size_bits.offset, l.size_bits.size)?;
        if count_bits > 20 || size_bits > 26 {
            return Err(Error::malformed(
                "printk ring buffer",
                format!("count_bits {count_bits}, size_bits {size_bits}"),
            ));
        }
        let descs = r.u64(rb + l.descs.offset)?;
        let infos = r.u64(rb + l.infos.offset)?;
        let data = r.u64(rb + l.data.offset)?;
        let head = r.u64(rb + l.head_id.offset)? & DESC_ID_MASK;
        let tail = r.u64(rb + l.tail_id.offset)? & DESC_ID_MASK;
        let ring = 1u64 << count_bits;
        let data_size = 1u64 << size_bits;
        // The ids are checked before anything is allocated for the records.
        let n = head.wrapping_sub(tail) & DESC_ID_MASK;
        if n >= ring.min(MAX_RECORDS) {
            return Err(Error::malformed(
                "printk ring buffer",
                format!(
                    "head id {head:#x} and tail id {tail:#x} are {n} apart in a ring of {ring}"
                ),
            ));
        }
        // Copy the whole data ring once: records are read from it, not one by one.
        let mut text_ring = vec![0u8; data_size as usize];
        r.read(data, &mut text_ring)?;
        // Each record takes at least a block header in the data ring: that, not the
        // guest's ids, bounds what is reserved up front.
        let mut out = Vec::with_capacity((n as usize + 1).min(text_ring.len() / 16));
        let mut desc_raw = vec![0u8; l.desc_size as usize];
        let mut info_raw = vec![0u8; l.info_size as usize];
        for k in 0..=n {
            let id = tail.wrapping_add(k) & DESC_ID_MASK;
            let slot = id & (ring - 1);
            r.read(descs + slot * l.desc_size, &mut desc_raw)?;
            let sv = field(&desc_raw, l.state_var);
            let state = sv >> 62;
            if sv & DESC_ID_MASK != id || (state != DESC_COMMITTED && state != DESC_FINALIZED) {
                continue;
            }
            r.read(infos + slot * l.info_size, &mut info_raw)?;
            let text_len = field(&info_raw, l.text_len);
            let begin = field(&desc_raw, l.blk_begin);
            let next = field(&desc_raw, l.blk_next);
            let text = block_text(&text_ring, size_bits, begin, next, text_len);
            let level_byte = info_raw.get(l.level.0 as usize).copied().unwrap_or(0);
            out.push(LogRecord {
                seq: field(&info_raw, l.seq),
                timestamp_ns: field(&info_raw, l.ts_nsec),
                level: (level_byte >> l.level.1) & 7,
                facility: field(&info_raw, l.facility) as u8,
                text,
            });
        }
        Ok(out)
    }

    fn log_layout(&self) -> Result<&LogLayout> {
        self.log_layout
            .get_or_init(|| LogLayout::resolve(self.types()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::not_found("printk ring buffer layout", e.clone()))
    }
}

/// An unsigned field out of a copied struct (0 if out of range).
fn field(raw: &[u8], f: Off) -> u64 {
    let start = f.offset as usize;
    let n = (f.size as usize).min(8);
    let mut b = [0u8; 8];
    if let Some(src) = raw.get(start..start + n) {
        b[..n].copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

/// The text of the data block at logical positions `begin..next` (see the module docs).
fn block_text(ring: &[u8], size_bits: u64, begin: u64, next: u64, text_len: u64) -> String {
    // Data-less records (odd positions: FAILED_LPOS / NO_LPOS) have no text.
    if begin & 1 != 0 || next & 1 != 0 {
        return String::new();
    }
    let size = ring.len() as u64;
    let (start, end) = if begin >> size_bits == next >> size_bits {
        (begin % size, next % size)
    } else {
        (0, next % size)
    };
    if end < start + 8 {
        return String::new();
    }
    let text = &ring[(start + 8) as usize..end as usize];
    let len = (text_len as usize).min(text.len());
    String::from_utf8_lossy(&text[..len]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_block_starts_at_the_ring_start() {
        let mut ring = vec![0u8; 64];
        ring[8..13].copy_from_slice(b"hello");
        // begin in wrap 0 near the end, next in wrap 1 at 16.
        assert_eq!(block_text(&ring, 6, 56, 64 + 16, 5), "hello");
        ring[24..29].copy_from_slice(b"world");
        assert_eq!(block_text(&ring, 6, 16, 32, 5), "world");
        assert_eq!(block_text(&ring, 6, 1, 3, 5), "");
        // A hostile text_len longer than the block is cut to the block.
        assert_eq!(block_text(&ring, 6, 16, 32, 500), "world\0\0\0");
    }
}
