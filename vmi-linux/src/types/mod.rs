//! Kernel types: any struct by name, from BTF (in guest memory or a file) or an ISF.
//!
//! Sources:
//! - The kernel's own BTF, carved from the copy of its mapped image ([`carve_btf`], or
//!   [`carve_btf_at`] with `__start_BTF`/`__stop_BTF` from kallsyms), then
//!   [`Types::from_btf`]; [`carve_btf_types`] does both with one parse and no copy. The same constructor takes a BTF file a user supplies (a copy of
//!   the guest's `/sys/kernel/btf/vmlinux`, or one from BTFHub for kernels built without).
//!   Parsing is our own bounded single-pass reader (4–8 ms for a Debian kernel's 3–5 MB).
//!   The [btfparse](https://crates.io/crates/btfparse) crate (Apache-2.0; chosen over
//!   btf-rs because btf-rs is LGPL-2.1-or-later, awkward for a statically linked
//!   MIT/Apache crate) was the plan, but took 65–115 ms with its deallocation and
//!   conversion, too much of a 150 ms bootstrap; it is kept as the tests' reference
//!   parser, which our reader must match type by type on every kernel.
//! - A Volatility 3 ISF JSON file ([`Types::from_isf`]), which also carries link-time
//!   symbols; the caller slides them with [`SymbolTable::slid`](crate::SymbolTable::slid).
//!
//! Both fill one in-memory form, so every query behaves the same whichever the source:
//! [`Types::size_of`], [`Types::field`] (dotted paths, anonymous structs and unions
//! traversed, array indices), [`Types::enumerator`], [`Types::array_len`]. [`Types::to_isf`]
//! exports the types with a symbol table as an ISF that stock Volatility 3 loads.
//!
//! BTF types no global variables except the per-CPU ones: [`GLOBAL_TYPES`] is a small
//! built-in table for the globals an OS layer (and Volatility's Linux plugins) read, such
//! as `init_task` or `prb`; see [`Types::symbol_type`].
//!
//! Everything here may come from a hostile guest: ids out of range, typedef cycles and
//! absurd sizes are errors; every walk is bounded.

mod btf;
#[cfg(test)]
mod btf_oracle;
mod btf_walk;
mod carve;
mod globals;
mod isf_export;
mod isf_import;
mod model;
mod path;

use std::collections::HashMap;

pub use btf::MAX_BTF;
pub use carve::{carve_btf, carve_btf_at, carve_btf_types};
pub(crate) use carve::{
    plausible_len as btf_plausible_len, MAGIC_HDR24 as BTF_MAGIC_HDR24,
    MAX_HEADER as BTF_MAX_HEADER,
};
pub use globals::{GlobalType, GLOBAL_TYPES};
pub use isf_import::IsfInfo;

use crate::error::{Error, Result};
use model::{Model, TypeId};

/// A field of a struct or union, resolved along a dotted path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the outer type.
    pub offset: u64,
    /// For bitfields: the bit offset within the byte at `offset` and the width in bits.
    pub bits: Option<(u8, u16)>,
    /// Size of the field's type in bytes (for a bitfield: of its declared integer type).
    pub size: u64,
    /// The field's type, as C would print it (`struct list_head`, `int`, `char [16]`,
    /// `struct mm_struct *`; a function pointer is `fn *`, an anonymous struct `struct {…}`).
    pub type_name: String,
    /// For a pointer: the type pointed to, typedefs and qualifiers stripped, by the name
    /// [`Types::field`] takes (`mm_struct`, `char`, `void`).
    pub pointee: Option<String>,
    /// For an array: the element type (named as `pointee` is) and the element count.
    pub element: Option<(String, u64)>,
}

/// Where the types came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeSource {
    /// The kernel's BTF.
    Btf,
    /// A Volatility 3 ISF file.
    Isf,
}

/// Kernel type information.
#[derive(Clone)]
pub struct Types {
    model: Model,
    source: TypeSource,
    /// Global symbol → its type: from the ISF, or the built-in table resolved in BTF.
    symbol_types: HashMap<Box<str>, TypeId>,
}

impl std::fmt::Debug for Types {
    /// A summary: the tables are far too big to print.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Types")
            .field("source", &self.source)
            .field("types", &self.model.len())
            .field("symbol_types", &self.symbol_types.len())
            .finish()
    }
}

impl Types {
    /// Parses BTF bytes: the kernel's (from [`carve_btf`]) or a BTF file's, such as a copy
    /// of a guest's `/sys/kernel/btf/vmlinux`. At most [`MAX_BTF`] bytes.
    pub fn from_btf(bytes: Vec<u8>) -> Result<Types> {
        let model = btf::parse(&bytes, Self::SPARE_TYPES)?;
        Ok(Self::from_btf_model(model))
    }

    /// Room for the types [`Self::add_global_types`] adds to a BTF model.
    const SPARE_TYPES: usize = 2 * GLOBAL_TYPES.len() + 1;

    /// Types over a parsed BTF model (parsed with [`Self::SPARE_TYPES`] spare).
    fn from_btf_model(model: Model) -> Types {
        let mut types = Types {
            model,
            source: TypeSource::Btf,
            symbol_types: HashMap::new(),
        };
        types.add_global_types();
        types
    }

    /// Reads a Volatility 3 ISF (`dwarf2json` or `btf2json` output, formats 4.x to 6.x): its types,
    /// its symbols (link-time addresses: slide them with [`SymbolTable::slid`] for a KASLR
    /// kernel; addresses below the kernel half are marked absolute, kind `A`, so they keep
    /// their value) and what it says about itself (the banner). Symbol types in the file are
    /// kept for [`Types::symbol_type`].
    ///
    /// [`SymbolTable::slid`]: crate::SymbolTable::slid
    pub fn from_isf(json: &[u8]) -> Result<(Types, crate::SymbolTable, IsfInfo)> {
        isf_import::parse(json)
    }

    /// Where these types came from.
    pub fn source(&self) -> TypeSource {
        self.source
    }

    /// How many types the table holds (BTF: the type count plus `void`).
    pub fn type_count(&self) -> usize {
        self.model.len()
    }

    /// Whether a type named `name` exists (see [`Types::size_of`] for names).
    pub fn has_type(&self, name: &str) -> bool {
        self.model.lookup(name).is_ok()
    }

    /// Size of the struct, union, enum, typedef or base type `name` (`task_struct` finds
    /// `struct task_struct`; `struct x`, `union x`, `enum x` restrict the kind).
    pub fn size_of(&self, name: &str) -> Result<u64> {
        let id = self.model.lookup(name)?;
        self.model.size_of(id)
    }

    /// The field at dotted `path` in type `ty` (`field("task_struct", "se.vruntime")`).
    ///
    /// Members of anonymous structs and unions are found as C finds them; `name[3]`
    /// indexes an array; a pointer is not followed (read it and continue from the
    /// [`Field::pointee`] type). Errors: [`Error::NotFound`] for a missing type or member,
    /// [`Error::Malformed`] for a table that cannot be walked.
    pub fn field(&self, ty: &str, path: &str) -> Result<Field> {
        let id = self.model.lookup(ty)?;
        path::resolve(&self.model, id, ty, path)
    }

    /// The byte offset of the field at `path` in `ty` (shorthand for [`Types::field`]).
    pub fn offset_of(&self, ty: &str, path: &str) -> Result<u64> {
        self.field(ty, path).map(|f| f.offset)
    }

    /// Whether `ty` has a field at `path` (`has_field("task_struct", "__state")`).
    pub fn has_field(&self, ty: &str, path: &str) -> bool {
        self.field(ty, path).is_ok()
    }

    /// The element count of the array field at `path` (`array_len("module", "mem")`);
    /// `None` if there is no such field or it is not an array.
    pub fn array_len(&self, ty: &str, path: &str) -> Option<u64> {
        self.field(ty, path).ok()?.element.map(|(_, n)| n)
    }

    /// The names of the members of struct or union `ty`, in order; members of anonymous
    /// structs and unions are listed in their place, as C sees them.
    pub fn member_names(&self, ty: &str) -> Result<Vec<String>> {
        let id = self.model.strip(self.model.lookup(ty)?)?;
        let mut out = Vec::new();
        path::flatten_names(&self.model, id, &mut out)?;
        Ok(out)
    }

    /// The value of enumerator `name` (searched in every enum; the first definition wins).
    /// 64-bit unsigned values above `i64::MAX` keep their bit pattern.
    pub fn enumerator(&self, name: &str) -> Result<i64> {
        self.model
            .enumerator(name)
            .ok_or_else(|| Error::not_found("enumerator", name.to_owned()))
    }

    /// The type of global symbol `name` as C prints it (`struct task_struct` for
    /// `init_task`, `struct printk_ringbuffer *` for `prb`): from the ISF's symbols, BTF's
    /// per-CPU variables (`current_task`), or [`GLOBAL_TYPES`] resolved in these types.
    pub fn symbol_type(&self, name: &str) -> Option<String> {
        let id = self.symbol_type_id(name)?;
        self.model.c_name(id).ok()
    }

    fn symbol_type_id(&self, name: &str) -> Option<TypeId> {
        self.symbol_types
            .get(name)
            .copied()
            .or_else(|| self.model.variable(name))
    }

    /// Resolves [`GLOBAL_TYPES`] in the model (adding the pointer and array types they
    /// need); entries whose type the kernel lacks are skipped.
    fn add_global_types(&mut self) {
        for g in GLOBAL_TYPES {
            if self.symbol_types.contains_key(g.symbol) {
                continue;
            }
            if let Some(id) = globals::resolve(&mut self.model, g.type_spec) {
                self.symbol_types.insert(g.symbol.into(), id);
            }
        }
    }

    /// Exports these types and `symbols` as a Volatility 3 ISF (format 6.2.0, validated
    /// against the schema Volatility 3 ships), with `banner` (the `Linux version …` string
    /// as in memory) as `linux_banner`'s constant data, which Volatility matches against
    /// memory to pick the ISF.
    ///
    /// Addresses are written as given: pass the runtime table (kallsyms read from the live
    /// guest) and the ISF describes that boot of the kernel, with a KASLR slide of 0.
    /// Symbol types come from [`Types::symbol_type`].
    pub fn to_isf(&self, symbols: &crate::SymbolTable, banner: &str) -> Result<serde_json::Value> {
        let isf = isf_export::build(self, symbols, banner)?;
        serde_json::to_value(&isf).map_err(|e| Error::malformed("ISF export", e.to_string()))
    }

    /// [`Types::to_isf`] written as JSON to `out` (without building a JSON tree first).
    pub fn write_isf(
        &self,
        symbols: &crate::SymbolTable,
        banner: &str,
        out: impl std::io::Write,
    ) -> Result<()> {
        let isf = isf_export::build(self, symbols, banner)?;
        serde_json::to_writer(out, &isf)
            .map_err(|e| Error::io("writing the ISF", std::io::Error::other(e)))
    }
}

#[cfg(test)]
mod tests;
