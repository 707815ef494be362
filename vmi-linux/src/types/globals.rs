//! The types of global variables, which BTF does not record (only per-CPU variables have
//! `VAR` entries): a small built-in table for what an OS layer and Volatility 3's Linux
//! plugins read. The list follows btf2json's finding that about 32 symbols cover every
//! Volatility plugin, checked against the symbols Volatility 3 2.28's Linux plugins look
//! up (`object_from_symbol`, `get_symbol`).

use super::model::{Kind, Model, Type, TypeId};

/// One global and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalType {
    /// The symbol (`init_task`).
    pub symbol: &'static str,
    /// Its type, in a small C-like syntax: a type name (`struct task_struct`, `unsigned
    /// long`), then `*` for each pointer level, then `[N]` for an array; `{a,b}` is an
    /// anonymous struct whose members start with `a`, `b`; `|` separates alternatives
    /// tried in order (kernels renamed some).
    pub type_spec: &'static str,
}

const fn g(symbol: &'static str, type_spec: &'static str) -> GlobalType {
    GlobalType { symbol, type_spec }
}

/// Globals whose types BTF lacks, with their types (entries a kernel lacks are skipped).
pub const GLOBAL_TYPES: &[GlobalType] = &[
    g("init_task", "struct task_struct"),
    g("init_mm", "struct mm_struct"),
    g("init_files", "struct files_struct"),
    g("init_pid_ns", "struct pid_namespace"),
    g("init_uts_ns", "struct uts_namespace"),
    g("init_net", "struct net"),
    g("modules", "struct list_head"),
    g("mod_tree", "struct mod_tree_root"),
    g("module_kset", "struct kset *"),
    g("module_addr_min", "unsigned long"),
    g("module_addr_max", "unsigned long"),
    // printk: the lockless ring buffer (5.10+), the older log buffer before.
    g("prb", "struct printk_ringbuffer *"),
    g("log_buf", "char *"),
    g("log_buf_len", "u32"),
    g("log_first_idx", "u32"),
    g("log_next_idx", "u32"),
    // `static struct { seqcount_raw_spinlock_t seq; struct timekeeper timekeeper; }`,
    // named `struct tk_data` from 6.13.
    g("tk_core", "struct tk_data|{seq,timekeeper}"),
    g("net_namespace_list", "struct list_head"),
    g("tty_drivers", "struct list_head"),
    g("super_blocks", "struct list_head"),
    g("file_systems", "struct file_system_type *"),
    g("iomem_resource", "struct resource"),
    g("idt_table", "struct gate_struct [256]"),
    g("keyboard_notifier_list", "struct atomic_notifier_head"),
    g("ftrace_ops_list", "struct ftrace_ops *"),
    g("ftrace_list_end", "struct ftrace_ops"),
    g("prog_idr", "struct idr"),
    g("bpf_kallsyms", "struct list_head"),
    g("cap_last_cap", "int"),
    g("socket_file_ops", "struct file_operations"),
    g("sockfs_dentry_operations", "struct dentry_operations"),
    g("num_registered_fb", "int"),
    g("registered_fb", "struct fb_info *[32]"),
    g("mem_section", "struct mem_section **"),
    g("vmemmap_base", "unsigned long"),
    g("page_offset_base", "unsigned long"),
    g("jiffies", "unsigned long"),
    g("jiffies_64", "u64"),
    g("kallsyms_num_syms", "unsigned int"),
];

/// Resolves a type spec (see [`GlobalType::type_spec`]) in `m`, adding the pointer and
/// array types it needs; `None` if the kernel lacks the base type.
pub(crate) fn resolve(m: &mut Model, spec: &str) -> Option<TypeId> {
    spec.split('|').find_map(|alt| resolve_one(m, alt.trim()))
}

fn resolve_one(m: &mut Model, spec: &str) -> Option<TypeId> {
    let (spec, count) = match spec.strip_suffix(']') {
        Some(s) => {
            let open = s.rfind('[')?;
            (
                s[..open].trim_end(),
                Some(s[open + 1..].parse::<u32>().ok()?),
            )
        }
        None => (spec, None),
    };
    let base = spec.trim_end_matches(['*', ' ']);
    let stars = spec[base.len()..].matches('*').count();
    let mut id = match base.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
        Some(members) => anonymous_record(m, &members.split(',').collect::<Vec<_>>())?,
        None => m.lookup(base).ok()?,
    };
    if matches!(m.get(m.strip(id).ok()?).ok()?.kind, Kind::Forward { .. }) {
        return None;
    }
    for _ in 0..stars {
        id = m
            .push(Type {
                name: Default::default(),
                kind: Kind::Pointer(id),
            })
            .ok()?;
    }
    if let Some(len) = count {
        id = m
            .push(Type {
                name: Default::default(),
                kind: Kind::Array { element: id, len },
            })
            .ok()?;
    }
    Some(id)
}

/// The first anonymous struct whose members start with `names`.
fn anonymous_record(m: &Model, names: &[&str]) -> Option<TypeId> {
    (0..m.len() as TypeId).find(|&id| {
        let ty = m.types[id as usize];
        if !matches!(ty.kind, Kind::Record { union: false, .. }) || !m.text(ty.name).is_empty() {
            return false;
        }
        let members = m.members_of(id);
        members.len() >= names.len()
            && members
                .iter()
                .zip(names)
                .all(|(mem, n)| m.text(mem.name) == n.trim())
    })
}
