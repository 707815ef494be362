//! Loaded kernel modules, from the kernel's `modules` list.

use vmi_core::{PhysicalMemory, ReadRegisters};

use crate::error::{Error, Result};
use crate::layout::{first_of, req, Off};
use crate::linux::Linux;
use crate::types::Types;

/// At most this many modules are walked.
pub const MAX_MODULES: usize = 1 << 16;

/// A module's life-cycle state (`enum module_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModuleState {
    /// `MODULE_STATE_LIVE`: `/proc/modules` says `Live`.
    Live,
    /// `MODULE_STATE_COMING`: `Loading`.
    Coming,
    /// `MODULE_STATE_GOING`: `Unloading`.
    Going,
    /// `MODULE_STATE_UNFORMED`: still being set up (`/proc/modules` hides it).
    Unformed,
    /// A value the kernel's enum does not name.
    Unknown(i64),
}

/// The enumerators, as `/proc/modules` names them.
const STATES: [(&str, ModuleState, &str); 4] = [
    ("MODULE_STATE_LIVE", ModuleState::Live, "Live"),
    ("MODULE_STATE_COMING", ModuleState::Coming, "Loading"),
    ("MODULE_STATE_GOING", ModuleState::Going, "Unloading"),
    ("MODULE_STATE_UNFORMED", ModuleState::Unformed, "Unformed"),
];

impl ModuleState {
    /// The word `/proc/modules` prints.
    pub fn proc_name(self) -> &'static str {
        STATES
            .iter()
            .find(|s| s.1 == self)
            .map_or("Unknown", |s| s.2)
    }
}

/// A loaded module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Address of its `struct module`.
    pub address: u64,
    /// Its name.
    pub name: String,
    /// Base address of its core text (the address `/proc/modules` prints).
    pub base: u64,
    /// Size in bytes as `/proc/modules` prints it (all its memory regions).
    pub size: u64,
    /// State.
    pub state: ModuleState,
}

/// Where a module's memory is described: three generations of `struct module`.
#[derive(Debug, Clone)]
enum MemoryLayout {
    /// ≥ 6.4: `struct module_memory mem[MOD_MEM_NUM_TYPES]`, text at `mem[MOD_TEXT]`.
    Mem {
        mem: Off,
        stride: u64,
        count: u64,
        text_index: u64,
        base: Off,
        size: Off,
    },
    /// 4.5–6.3: `core_layout` and `init_layout` (`struct module_layout`).
    Layout {
        core_base: Off,
        core_size: Off,
        init_size: Off,
    },
    /// Before 4.5: `module_core`, `core_size`, `init_size`.
    Flat {
        core_base: Off,
        core_size: Off,
        init_size: Off,
    },
}

#[derive(Debug, Clone)]
pub(crate) struct ModuleLayout {
    list: Off,
    name: Off,
    state: Off,
    memory: MemoryLayout,
}

impl ModuleLayout {
    pub(crate) fn resolve(types: &Types) -> Result<Self> {
        let m = "module";
        let (_, which) = first_of(types, m, &["mem", "core_layout", "module_core"])?;
        let memory = match which {
            0 => {
                let mem = req(types, m, "mem")?;
                let stride = types.size_of("module_memory")?;
                let count = types
                    .enumerator("MOD_MEM_NUM_TYPES")
                    .ok()
                    .and_then(|n| u64::try_from(n).ok())
                    .filter(|&n| n > 0 && n * stride == mem.size)
                    .unwrap_or(mem.size.checked_div(stride).unwrap_or(0));
                MemoryLayout::Mem {
                    mem,
                    stride,
                    count,
                    text_index: u64::try_from(types.enumerator("MOD_TEXT").unwrap_or(0))
                        .unwrap_or(0),
                    base: req(types, "module_memory", "base")?,
                    size: req(types, "module_memory", "size")?,
                }
            }
            1 => MemoryLayout::Layout {
                core_base: req(types, m, "core_layout.base")?,
                core_size: req(types, m, "core_layout.size")?,
                init_size: req(types, m, "init_layout.size")?,
            },
            _ => MemoryLayout::Flat {
                core_base: req(types, m, "module_core")?,
                core_size: req(types, m, "core_size")?,
                init_size: req(types, m, "init_size")?,
            },
        };
        Ok(Self {
            list: req(types, m, "list")?,
            name: req(types, m, "name")?,
            state: req(types, m, "state")?,
            memory,
        })
    }
}

impl<V: PhysicalMemory + ReadRegisters> Linux<V> {
    /// Every module on the kernel's `modules` list, in list order (newest first, as
    /// `/proc/modules`).
    pub fn modules(&self) -> Result<Vec<Module>> {
        let l = self.module_layout()?;
        let head = self.symbol("modules")?;
        let r = self.kernel_reader();
        let states: Vec<(i64, ModuleState)> = STATES
            .iter()
            .filter_map(|(n, s, _)| Some((self.types().enumerator(n).ok()?, *s)))
            .collect();
        let mut out = Vec::new();
        for node in r.list(head, MAX_MODULES, "module list")? {
            let m = node - l.list.offset;
            let name = r.cstr(m + l.name.offset, l.name.size.min(256) as usize)?;
            let raw_state = r.uint(m + l.state.offset, l.state.size)? as i64;
            let state = states
                .iter()
                .find(|(v, _)| *v == raw_state)
                .map_or(ModuleState::Unknown(raw_state), |(_, s)| *s);
            let (base, size) = match &l.memory {
                MemoryLayout::Mem {
                    mem,
                    stride,
                    count,
                    text_index,
                    base,
                    size,
                } => {
                    let at = |i: u64| m + mem.offset + i * stride;
                    let b = r.u64(at(*text_index) + base.offset)?;
                    let mut total = 0u64;
                    for i in 0..*count {
                        total += r.uint(at(i) + size.offset, size.size)?;
                    }
                    (b, total)
                }
                MemoryLayout::Layout {
                    core_base,
                    core_size,
                    init_size,
                }
                | MemoryLayout::Flat {
                    core_base,
                    core_size,
                    init_size,
                } => (
                    r.u64(m + core_base.offset)?,
                    r.uint(m + core_size.offset, core_size.size)?
                        + r.uint(m + init_size.offset, init_size.size)?,
                ),
            };
            out.push(Module {
                address: m,
                name,
                base,
                size,
                state,
            });
        }
        Ok(out)
    }

    fn module_layout(&self) -> Result<&ModuleLayout> {
        self.module_layout
            .get_or_init(|| ModuleLayout::resolve(self.types()).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| Error::not_found("struct module layout", e.clone()))
    }
}
