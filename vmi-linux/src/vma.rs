//! A process's memory map (`/proc/PID/maps`): VMAs from the maple tree (6.1+) or the
//! `mmap` list (before 6.1), with the file each maps.
//!
//! Which index the kernel uses is read from its types (`mm_struct.mm_mt` or
//! `mm_struct.mmap`), not from the version. Maple tree walk: `ma_root` is an encoded node
//! pointer (`(entry & 3) == 2`, type in bits 3–6, node at `entry & ~0xff`); internal nodes
//! (`maple_range_64`, `maple_arange_64`) hold child pointers, leaves (`maple_leaf_64`)
//! hold VMAs, each slot covering up to its pivot; a pivot equal to the node's maximum, or
//! a zero pivot after the first slot, ends the node's data.

use std::collections::HashSet;

use vmi_core::{PhysicalMemory, ReadRegisters};

use crate::error::{Error, Result};
use crate::layout::{first_of, req, Off};
use crate::linux::Linux;
use crate::reader::Reader;
use crate::tasks::Process;
use crate::types::Types;

/// At most this many VMAs per process (the kernel's default max_map_count is 65530).
pub const MAX_VMAS: usize = 1 << 20;
/// Deepest maple tree walked (a real one is at most ~10 levels).
const MAX_DEPTH: u32 = 32;
/// Longest path assembled from dentries, in components.
const MAX_PATH_DEPTH: usize = 256;

const VM_READ: u64 = 0x1;
const VM_WRITE: u64 = 0x2;
const VM_EXEC: u64 = 0x4;
const VM_MAYSHARE: u64 = 0x80;

/// One mapping of a process, as a line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vma {
    /// Address of its `vm_area_struct`.
    pub address: u64,
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// `vm_flags`.
    pub flags: u64,
    /// Offset into the file, in bytes (0 for anonymous mappings).
    pub offset: u64,
    /// The mapped file's path, or `[heap]`, `[stack]`, `[vdso]`…, or `None` (anonymous).
    pub name: Option<String>,
}

impl Vma {
    /// `rwxp` as `/proc/PID/maps` prints it.
    pub fn perms(&self) -> String {
        let f = self.flags;
        [
            if f & VM_READ != 0 { 'r' } else { '-' },
            if f & VM_WRITE != 0 { 'w' } else { '-' },
            if f & VM_EXEC != 0 { 'x' } else { '-' },
            if f & VM_MAYSHARE != 0 { 's' } else { 'p' },
        ]
        .iter()
        .collect()
    }
}

#[derive(Debug, Clone)]
enum VmaIndex {
    Maple {
        mm_mt: Off,
        ma_root: Off,
        /// (pivot offset, slot offset, slot count) of maple_range_64 and maple_arange_64.
        range64: (u64, u64, u64),
        arange64: (u64, u64, u64),
    },
    List {
        mmap: Off,
        vm_next: Off,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct VmaLayout {
    index: VmaIndex,
    vm_start: Off,
    vm_end: Off,
    vm_mm: Off,
    vm_flags: Off,
    vm_pgoff: Off,
    vm_file: Off,
    vm_ops: Off,
    vm_private_data: Off,
    f_dentry: Off,
    f_vfsmnt: Off,
    d_name: Off,
    d_parent: Off,
    mount_mnt: Off,
    mnt_parent: Off,
    mnt_mountpoint: Off,
    special_name: Option<Off>,
}

fn node_shape(types: &Types, ty: &str) -> Result<(u64, u64, u64)> {
    let pivot = req(types, ty, "pivot")?;
    let slot = req(types, ty, "slot")?;
    Ok((pivot.offset, slot.offset, slot.size / 8))
}

impl VmaLayout {
    pub(crate) fn resolve(types: &Types) -> Result<Self> {
        let (_, which) = first_of(types, "mm_struct", &["mm_mt", "mmap"])?;
        let index = if which == 0 {
            VmaIndex::Maple {
                mm_mt: req(types, "mm_struct", "mm_mt")?,
                ma_root: req(types, "maple_tree", "ma_root")?,
                range64: node_shape(types, "maple_range_64")?,
                arange64: node_shape(types, "maple_arange_64")?,
            }
        } else {
            VmaIndex::List {
                mmap: req(types, "mm_struct", "mmap")?,
                vm_next: req(types, "vm_area_struct", "vm_next")?,
            }
        };
        let v = "vm_area_struct";
        Ok(Self {
            index,
            vm_start: req(types, v, "vm_start")?,
            vm_end: req(types, v, "vm_end")?,
            vm_mm: req(types, v, "vm_mm")?,
            vm_flags: first_of(types, v, &["vm_flags", "__vm_flags"])?.0,
            vm_pgoff: req(types, v, "vm_pgoff")?,
            vm_file: req(types, v, "vm_file")?,
            vm_ops: req(types, v, "vm_ops")?,
            vm_private_data: req(types, v, "vm_private_data")?,
            f_dentry: req(types, "file", "f_path.dentry")?,
            f_vfsmnt: req(types, "file", "f_path.mnt")?,
            d_name: req(types, "dentry", "d_name.name")?,
            d_parent: req(types, "dentry", "d_parent")?,
            mount_mnt: req(types, "mount", "mnt")?,
            mnt_parent: req(types, "mount", "mnt_parent")?,
            mnt_mountpoint: req(types, "mount", "mnt_mountpoint")?,
            special_name: types
                .field("vm_special_mapping", "name")
                .ok()
                .map(Off::from),
        })
    }
}

impl<V: PhysicalMemory + ReadRegisters> Linux<V> {
    /// The memory map of `process`, sorted by address (`/proc/PID/maps`). Kernel threads
    /// have none.
    pub fn vmas(&self, process: &Process) -> Result<Vec<Vma>> {
        if process.mm == 0 {
            return Ok(Vec::new());
        }
        let l = self.vma_layout()?;
        let mm_l = self.mm_layout()?;
        let r = self.kernel_reader();
        let mm = process.mm;
        let mut addrs = Vec::new();
        match &l.index {
            VmaIndex::Maple {
                mm_mt,
                ma_root,
                range64,
                arange64,
            } => {
                let root = r.u64(mm + mm_mt.offset + ma_root.offset)?;
                let mut nodes = HashSet::new();
                maple_walk(
                    &r,
                    root,
                    u64::MAX,
                    0,
                    *range64,
                    *arange64,
                    &mut nodes,
                    &mut addrs,
                )?;
            }
            VmaIndex::List { mmap, vm_next } => {
                let mut v = r.u64(mm + mmap.offset)?;
                let mut seen = HashSet::new();
                while v != 0 {
                    if !seen.insert(v) || addrs.len() >= MAX_VMAS {
                        return Err(Error::malformed("VMA list", format!("loops at {v:#x}")));
                    }
                    addrs.push(v);
                    v = r.u64(v + vm_next.offset)?;
                }
            }
        }
        let special_vmops: Vec<u64> = ["special_mapping_vmops", "legacy_special_mapping_vmops"]
            .iter()
            .filter_map(|s| self.symbols().address_of(s))
            .collect();
        let brk = (
            r.u64(mm + mm_l.start_brk.offset)?,
            r.u64(mm + mm_l.brk.offset)?,
        );
        let start_stack = r.u64(mm + mm_l.start_stack.offset)?;
        let mut out = Vec::with_capacity(addrs.len());
        for va in addrs {
            if r.u64(va + l.vm_mm.offset)? != mm {
                return Err(Error::malformed(
                    "VMA",
                    format!("{va:#x} does not belong to mm {mm:#x}"),
                ));
            }
            let start = r.u64(va + l.vm_start.offset)?;
            let end = r.u64(va + l.vm_end.offset)?;
            let flags = r.uint(va + l.vm_flags.offset, l.vm_flags.size)?;
            let file = r.u64(va + l.vm_file.offset)?;
            let (offset, name) = if file != 0 {
                let pgoff = r.u64(va + l.vm_pgoff.offset)?;
                (pgoff << 12, Some(self.file_path(&r, l, file)?))
            } else {
                let ops = r.u64(va + l.vm_ops.offset)?;
                let name = if ops != 0 && special_vmops.contains(&ops) {
                    match l.special_name {
                        Some(n) => {
                            let sm = r.u64(va + l.vm_private_data.offset)?;
                            let p = r.u64(sm + n.offset)?;
                            (p != 0).then(|| r.cstr(p, 64)).transpose()?
                        }
                        None => None,
                    }
                } else if start <= brk.1 && end >= brk.0 {
                    Some("[heap]".to_owned())
                } else if start <= start_stack && end >= start_stack {
                    Some("[stack]".to_owned())
                } else {
                    None
                };
                (0, name)
            };
            out.push(Vma {
                address: va,
                start,
                end,
                flags,
                offset,
                name,
            });
        }
        out.sort_by_key(|v| v.start);
        Ok(out)
    }

    /// The path of an open file (`struct file`), assembled from its dentries and mounts.
    fn file_path(&self, r: &Reader<'_, V>, l: &VmaLayout, file: u64) -> Result<String> {
        let mut dentry = r.u64(file + l.f_dentry.offset)?;
        let mut mount = r
            .u64(file + l.f_vfsmnt.offset)?
            .wrapping_sub(l.mount_mnt.offset);
        let mut parts = Vec::new();
        for _ in 0..MAX_PATH_DEPTH {
            let parent = r.u64(dentry + l.d_parent.offset)?;
            if parent == dentry || parent == 0 {
                // Root of this mount: continue from where it is mounted.
                let up = r.u64(mount + l.mnt_parent.offset)?;
                if up == mount || up == 0 {
                    parts.reverse();
                    return Ok(format!("/{}", parts.join("/")));
                }
                dentry = r.u64(mount + l.mnt_mountpoint.offset)?;
                mount = up;
                continue;
            }
            let name = r.u64(dentry + l.d_name.offset)?;
            parts.push(r.cstr(name, 256)?);
            dentry = parent;
        }
        Err(Error::Limit {
            what: "path depth",
            limit: MAX_PATH_DEPTH as u64,
        })
    }

    fn vma_layout(&self) -> Result<&VmaLayout> {
        self.vma_layout
            .get_or_init(|| VmaLayout::resolve(self.types()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::not_found("VMA layout", e.clone()))
    }
}

const MAPLE_LEAF_64: u64 = 1;
const MAPLE_RANGE_64: u64 = 2;
const MAPLE_ARANGE_64: u64 = 3;

#[allow(clippy::too_many_arguments)]
fn maple_walk<M: PhysicalMemory + ?Sized>(
    r: &Reader<'_, M>,
    entry: u64,
    max: u64,
    depth: u32,
    range64: (u64, u64, u64),
    arange64: (u64, u64, u64),
    nodes: &mut HashSet<u64>,
    out: &mut Vec<u64>,
) -> Result<()> {
    if entry == 0 {
        return Ok(());
    }
    let is_node = entry & 3 == 2 && entry > 4096;
    if !is_node {
        // A single entry stored in the root (or an internal marker): keep only pointers.
        if entry & 3 == 0 && entry > 4096 {
            out.push(entry);
        }
        return Ok(());
    }
    if depth > MAX_DEPTH || nodes.len() >= MAX_VMAS {
        return Err(Error::Limit {
            what: "maple tree nodes",
            limit: MAX_VMAS as u64,
        });
    }
    let node = entry & !0xff;
    // Every node of a maple tree has one parent: a node reached twice makes a DAG whose
    // paths multiply (6 hostile nodes of 16 slots each would be a million visits).
    if !nodes.insert(node) {
        return Err(Error::malformed(
            "maple tree",
            format!("node {node:#x} is reached twice"),
        ));
    }
    let kind = (entry >> 3) & 0xf;
    let (pivots, slots, count) = match kind {
        MAPLE_LEAF_64 | MAPLE_RANGE_64 => range64,
        MAPLE_ARANGE_64 => arange64,
        other => {
            return Err(Error::malformed(
                "maple tree",
                format!("node {entry:#x} has type {other}"),
            ))
        }
    };
    if count == 0 || count > 64 {
        return Err(Error::malformed("maple tree", "node shape"));
    }
    let mut raw = vec![0u8; (slots + count * 8) as usize];
    r.read(node, &mut raw)?;
    let word = |off: u64| {
        u64::from_le_bytes(
            raw[off as usize..off as usize + 8]
                .try_into()
                .unwrap_or_default(),
        )
    };
    for i in 0..count {
        let slot = word(slots + i * 8);
        let pivot = if i + 1 < count {
            word(pivots + i * 8)
        } else {
            max
        };
        if i > 0 && pivot == 0 {
            break;
        }
        if kind == MAPLE_LEAF_64 {
            if slot & 3 == 0 && slot > 4096 {
                if out.len() >= MAX_VMAS {
                    return Err(Error::Limit {
                        what: "VMAs",
                        limit: MAX_VMAS as u64,
                    });
                }
                out.push(slot);
            }
        } else {
            maple_walk(r, slot, pivot, depth + 1, range64, arange64, nodes, out)?;
        }
        if pivot == max {
            break;
        }
    }
    Ok(())
}
