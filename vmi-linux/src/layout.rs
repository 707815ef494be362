//! Field offsets the OS helpers use, resolved once from the type information.
//!
//! Kernel versions rename and move fields; each fact is looked up by trying its known
//! spellings in order (a table, not version checks), so a kernel is handled by what its
//! own types say. A missing *required* field is an error naming every spelling tried.

use crate::error::{Error, Result};
use crate::types::{Field, Types};

/// A resolved field: offset and size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Off {
    /// Byte offset from the start of the outer struct.
    pub offset: u64,
    /// Size of the field in bytes.
    pub size: u64,
}

impl From<Field> for Off {
    fn from(f: Field) -> Self {
        Self {
            offset: f.offset,
            size: f.size,
        }
    }
}

/// The first of `paths` that exists in `ty`.
pub fn first_of(types: &Types, ty: &str, paths: &[&str]) -> Result<(Off, usize)> {
    for (i, p) in paths.iter().enumerate() {
        if let Ok(f) = types.field(ty, p) {
            return Ok((f.into(), i));
        }
    }
    Err(Error::not_found(
        "field",
        format!(
            "{ty}.{{{}}} (none of the known spellings)",
            paths.join(", ")
        ),
    ))
}

/// A required field.
pub fn req(types: &Types, ty: &str, path: &str) -> Result<Off> {
    types.field(ty, path).map(Off::from)
}

/// `struct task_struct` and what hangs off it.
#[derive(Debug, Clone)]
pub struct TaskLayout {
    /// Size of `struct task_struct`.
    pub size: u64,
    /// `tasks` (list_head linking every thread-group leader).
    pub tasks: Off,
    /// `pid`.
    pub pid: Off,
    /// `tgid`.
    pub tgid: Off,
    /// `comm`.
    pub comm: Off,
    /// `mm`.
    pub mm: Off,
    /// `active_mm`.
    pub active_mm: Off,
    /// `real_parent`.
    pub real_parent: Off,
    /// `__state` (≥ 5.14) or `state`.
    pub state: Off,
    /// `exit_state`.
    pub exit_state: Off,
    /// `flags` (PF_KTHREAD).
    pub flags: Off,
    /// `cred` (effective credentials; /proc's Uid line starts with the real uid).
    pub real_cred: Off,
    /// `cred.uid` (kuid_t, its `val`).
    pub cred_uid: Off,
    /// `cred.gid`.
    pub cred_gid: Off,
    /// `signal`.
    pub signal: Off,
    /// `signal_struct.thread_head`.
    pub signal_thread_head: Off,
    /// `task_struct.thread_node`.
    pub thread_node: Off,
    /// A kernel thread's full name (5.17+: `task_struct.worker_private` points at its
    /// `struct kthread`, whose `full_name` holds names longer than `comm`).
    pub kthread_full_name: Option<(Off, Off)>,
}

impl TaskLayout {
    /// Resolves the layout from `types`.
    pub fn resolve(types: &Types) -> Result<Self> {
        let t = "task_struct";
        Ok(Self {
            size: types.size_of(t)?,
            tasks: req(types, t, "tasks")?,
            pid: req(types, t, "pid")?,
            tgid: req(types, t, "tgid")?,
            comm: req(types, t, "comm")?,
            mm: req(types, t, "mm")?,
            active_mm: req(types, t, "active_mm")?,
            real_parent: req(types, t, "real_parent")?,
            state: first_of(types, t, &["__state", "state"])?.0,
            exit_state: req(types, t, "exit_state")?,
            flags: req(types, t, "flags")?,
            real_cred: req(types, t, "real_cred")?,
            cred_uid: req(types, "cred", "uid")?,
            cred_gid: req(types, "cred", "gid")?,
            signal: req(types, t, "signal")?,
            signal_thread_head: req(types, "signal_struct", "thread_head")?,
            thread_node: req(types, t, "thread_node")?,
            kthread_full_name: req(types, t, "worker_private")
                .and_then(|w| Ok((w, req(types, "kthread", "full_name")?)))
                .ok(),
        })
    }
}

/// `struct mm_struct`.
#[derive(Debug, Clone)]
pub struct MmLayout {
    /// `pgd`.
    pub pgd: Off,
    /// `arg_start`, `arg_end`, `env_start`, `env_end`.
    pub arg_start: Off,
    /// See `arg_start`.
    pub arg_end: Off,
    /// See `arg_start`.
    pub env_start: Off,
    /// See `arg_start`.
    pub env_end: Off,
    /// `start_brk`, `brk`, `start_stack` (to name `[heap]` and `[stack]`).
    pub start_brk: Off,
    /// See `start_brk`.
    pub brk: Off,
    /// See `start_brk`.
    pub start_stack: Off,
}

impl MmLayout {
    /// Resolves the layout from `types`.
    pub fn resolve(types: &Types) -> Result<Self> {
        let m = "mm_struct";
        Ok(Self {
            pgd: req(types, m, "pgd")?,
            arg_start: req(types, m, "arg_start")?,
            arg_end: req(types, m, "arg_end")?,
            env_start: req(types, m, "env_start")?,
            env_end: req(types, m, "env_end")?,
            start_brk: req(types, m, "start_brk")?,
            brk: req(types, m, "brk")?,
            start_stack: req(types, m, "start_stack")?,
        })
    }
}
