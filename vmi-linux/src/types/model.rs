//! The one in-memory form of kernel types, whichever source filled it (BTF or an ISF).
//!
//! Types live in a vector indexed by type id (0 is `void`, as in BTF); names live in one
//! string arena; struct members and enumerators in two flat vectors, each type holding a
//! range. Every walk over it (qualifier chains, nested arrays, type names) is bounded, so a
//! hostile table with cycles or absurd ids gives an error, not a hang or a stack overflow.

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Index of a type in [`Model::types`].
pub(crate) type TypeId = u32;

/// How many typedefs/qualifiers/array levels a walk follows before calling it a cycle.
pub(crate) const MAX_CHAIN: usize = 64;

/// Size of a pointer: BTF does not record it; vmi-linux reads x86-64 guests.
pub(crate) const POINTER_SIZE: u64 = 8;

/// C spellings of integer types and the names GCC gives them (BTF and DWARF use GCC's).
const BASE_ALIASES: &[(&str, &str)] = &[
    ("unsigned long", "long unsigned int"),
    ("long", "long int"),
    ("unsigned long long", "long long unsigned int"),
    ("long long", "long long int"),
    ("unsigned short", "short unsigned int"),
    ("short", "short int"),
    ("unsigned", "unsigned int"),
];

/// A name in the arena; `len == 0` is an anonymous type or member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Name {
    start: u32,
    len: u32,
}

impl Name {
    /// The name of `len` bytes at `start` in the arena given to [`Model::with_strings`].
    pub(crate) fn at(start: u32, len: u32) -> Self {
        Self { start, len }
    }
}

/// A type qualifier that does not change layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qualifier {
    Const,
    Volatile,
    Restrict,
    /// BTF's `type_tag` (`__user`, `__rcu`, …).
    Tag,
}

/// What a type is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Void,
    Int {
        size: u32,
        signed: bool,
        /// A `char` (for the ISF's `char` base kind).
        char: bool,
        /// A `_Bool`.
        boolean: bool,
    },
    Float {
        size: u32,
    },
    Pointer(TypeId),
    Array {
        element: TypeId,
        len: u32,
    },
    /// A struct (`union == false`) or union with members `members.0 .. members.0 + members.1`.
    Record {
        union: bool,
        size: u32,
        members: (u32, u32),
    },
    Enum {
        size: u32,
        signed: bool,
        values: (u32, u32),
    },
    /// A forward declaration: the type is declared but not defined here.
    Forward {
        union: bool,
    },
    Typedef(TypeId),
    Qualified(Qualifier, TypeId),
    /// A function or function prototype (only pointed to).
    Function,
    /// A variable (BTF `VAR`: the per-CPU variables) of the given type.
    Variable(TypeId),
    /// Anything else (data sections, declaration tags): kept so ids stay aligned.
    Other,
}

/// One type.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Type {
    pub(crate) name: Name,
    pub(crate) kind: Kind,
}

/// One struct or union member.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub(crate) name: Name,
    pub(crate) ty: TypeId,
    /// Offset from the start of the record, in bits.
    pub(crate) bit_offset: u32,
    /// Width of a bitfield; 0 for an ordinary member.
    pub(crate) bit_size: u8,
}

/// Kernel types, filled by a source and then only queried.
#[derive(Debug, Default, Clone)]
pub(crate) struct Model {
    /// Name bytes: BTF's string section as is, or names appended by [`Model::intern`].
    names: Vec<u8>,
    pub(crate) types: Vec<Type>,
    pub(crate) members: Vec<Member>,
    pub(crate) enumerators: Vec<(Name, i64)>,
    /// struct/union/enum tags → the first complete definition (else the first forward).
    tagged: HashMap<Box<str>, TypeId>,
    /// typedef and base type names → id.
    plain: HashMap<Box<str>, TypeId>,
    /// Variables (per-CPU ones in BTF) → their type.
    variables: HashMap<Box<str>, TypeId>,
}

impl Model {
    /// An empty model holding `void` at id 0.
    pub(crate) fn new() -> Self {
        Self {
            types: vec![Type {
                name: Name::default(),
                kind: Kind::Void,
            }],
            ..Self::default()
        }
    }

    /// Stores a name in the arena.
    pub(crate) fn intern(&mut self, s: &str) -> Result<Name> {
        if s.is_empty() {
            return Ok(Name::default());
        }
        let limit = || Error::Limit {
            what: "type name arena",
            limit: u32::MAX.into(),
        };
        let start = u32::try_from(self.names.len()).map_err(|_| limit())?;
        let len = u32::try_from(s.len()).map_err(|_| limit())?;
        self.names.extend_from_slice(s.as_bytes());
        Ok(Name { start, len })
    }

    /// A model whose arena starts as `strings` (BTF's string section), for names given
    /// by [`Name::at`].
    pub(crate) fn with_strings(strings: Vec<u8>) -> Self {
        Self {
            names: strings,
            ..Self::new()
        }
    }

    /// The text of a name (empty for anonymous; U+FFFD for bytes that are not UTF-8,
    /// which no lookup matches).
    pub(crate) fn text(&self, n: Name) -> &str {
        let bytes = self
            .names
            .get(n.start as usize..(n.start as usize).saturating_add(n.len as usize))
            .unwrap_or(&[]);
        std::str::from_utf8(bytes).unwrap_or("\u{fffd}")
    }

    /// Appends a type and indexes its name; returns its id.
    pub(crate) fn push(&mut self, ty: Type) -> Result<TypeId> {
        let id = TypeId::try_from(self.types.len()).map_err(|_| Error::Limit {
            what: "type count",
            limit: u32::MAX.into(),
        })?;
        self.types.push(ty);
        self.index(id);
        Ok(id)
    }

    fn index(&mut self, id: TypeId) {
        let ty = self.types[id as usize];
        if ty.name.len == 0 {
            return;
        }
        let name: Box<str> = self.text(ty.name).into();
        match ty.kind {
            Kind::Record { .. } | Kind::Enum { .. } => {
                // A complete definition replaces a forward declaration seen first.
                let replace = match self.tagged.get(&name) {
                    None => true,
                    Some(&old) => matches!(self.types[old as usize].kind, Kind::Forward { .. }),
                };
                if replace {
                    self.tagged.insert(name, id);
                }
            }
            Kind::Forward { .. } => {
                self.tagged.entry(name).or_insert(id);
            }
            Kind::Typedef(_) | Kind::Int { .. } | Kind::Float { .. } => {
                self.plain.entry(name).or_insert(id);
            }
            Kind::Variable(t) => {
                self.variables.entry(name).or_insert(t);
            }
            _ => {}
        }
    }

    /// The type `id`, or a typed error for an id outside the table.
    pub(crate) fn get(&self, id: TypeId) -> Result<&Type> {
        self.types
            .get(id as usize)
            .ok_or_else(|| Error::malformed("kernel types", format!("type id {id} out of range")))
    }

    /// The type named `name`: `task_struct`, `struct task_struct`, `union …`, `enum …`,
    /// a typedef (`pid_t`) or a base type (`unsigned long`). Tags win over typedefs for a
    /// bare name (the kernel rarely has both, and the struct is what callers mean).
    pub(crate) fn lookup(&self, name: &str) -> Result<TypeId> {
        let name = name.trim();
        let (tag, bare) = match name.split_once(' ') {
            Some(("struct", rest)) => (Some(false), rest.trim()),
            Some(("union", rest)) => (Some(true), rest.trim()),
            Some(("enum", rest)) => (None, rest.trim()),
            _ => (None, name),
        };
        if name == "void" {
            return Ok(0);
        }
        let found = if bare.len() != name.len() {
            self.tagged
                .get(bare)
                .copied()
                .filter(|&id| match (tag, self.types[id as usize].kind) {
                    (Some(u), Kind::Record { union, .. } | Kind::Forward { union }) => u == union,
                    (None, Kind::Enum { .. }) => true,
                    _ => false,
                })
        } else {
            self.tagged
                .get(bare)
                .or_else(|| self.plain.get(bare))
                .copied()
        };
        found
            .or_else(|| {
                // C spellings of base types, as GCC names them in BTF and DWARF.
                let gcc = BASE_ALIASES
                    .iter()
                    .find(|(c, g)| *c == name || *g == name)
                    .map(|&(c, g)| if c == name { g } else { c })?;
                self.plain.get(gcc).copied()
            })
            .ok_or_else(|| Error::not_found("type", name.to_owned()))
    }

    /// The type of variable `name` (BTF knows the per-CPU ones).
    pub(crate) fn variable(&self, name: &str) -> Option<TypeId> {
        self.variables.get(name).copied()
    }

    /// Follows typedefs and qualifiers to the type that has a layout.
    pub(crate) fn strip(&self, mut id: TypeId) -> Result<TypeId> {
        for _ in 0..MAX_CHAIN {
            match self.get(id)?.kind {
                Kind::Typedef(t) | Kind::Qualified(_, t) => id = t,
                _ => return Ok(id),
            }
        }
        Err(Error::malformed(
            "kernel types",
            format!("typedef/qualifier chain from type {id} too long (a cycle?)"),
        ))
    }

    /// Size in bytes of type `id`.
    pub(crate) fn size_of(&self, id: TypeId) -> Result<u64> {
        let mut id = self.strip(id)?;
        let mut count: u64 = 1;
        for _ in 0..MAX_CHAIN {
            let unit = match self.get(id)?.kind {
                Kind::Int { size, .. }
                | Kind::Float { size }
                | Kind::Record { size, .. }
                | Kind::Enum { size, .. } => u64::from(size),
                Kind::Pointer(_) => POINTER_SIZE,
                Kind::Array { element, len } => {
                    count = count
                        .checked_mul(len.into())
                        .ok_or_else(|| Error::malformed("kernel types", "array size overflows"))?;
                    id = self.strip(element)?;
                    continue;
                }
                Kind::Variable(t) => {
                    id = self.strip(t)?;
                    continue;
                }
                Kind::Void | Kind::Forward { .. } | Kind::Function | Kind::Other => {
                    return Err(Error::malformed(
                        "kernel types",
                        format!("type {id} has no size"),
                    ))
                }
                Kind::Typedef(_) | Kind::Qualified(..) => {
                    id = self.strip(id)?;
                    continue;
                }
            };
            return count
                .checked_mul(unit)
                .ok_or_else(|| Error::malformed("kernel types", "array size overflows"));
        }
        Err(Error::malformed(
            "kernel types",
            "nested arrays too deep (a cycle?)",
        ))
    }

    /// The members of a struct or union (empty for anything else).
    pub(crate) fn members_of(&self, id: TypeId) -> &[Member] {
        match self.types.get(id as usize).map(|t| t.kind) {
            Some(Kind::Record {
                members: (start, n),
                ..
            }) => self
                .members
                .get(start as usize..(start as usize).saturating_add(n as usize))
                .unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The enumerators of an enum (empty for anything else).
    pub(crate) fn enumerators_of(&self, id: TypeId) -> &[(Name, i64)] {
        match self.types.get(id as usize).map(|t| t.kind) {
            Some(Kind::Enum {
                values: (start, n), ..
            }) => self
                .enumerators
                .get(start as usize..(start as usize).saturating_add(n as usize))
                .unwrap_or(&[]),
            _ => &[],
        }
    }

    /// The type as C prints it: `struct list_head`, `char [16]`, `struct mm_struct *`,
    /// `const char *`, `pid_t`. Anonymous records print as `struct {…}`.
    pub(crate) fn c_name(&self, id: TypeId) -> Result<String> {
        // The C declarator (`*`, `[16]`, `(*)[4]`) built outside-in around the base type.
        let mut declarator = String::new();
        let mut prefix = String::new();
        let mut id = id;
        for _ in 0..MAX_CHAIN {
            let ty = self.get(id)?;
            let name = self.text(ty.name);
            let base = match ty.kind {
                Kind::Void => "void".to_owned(),
                Kind::Int { .. } | Kind::Float { .. } | Kind::Typedef(_) => name.to_owned(),
                Kind::Record { union, .. } | Kind::Forward { union } => {
                    let tag = if union { "union" } else { "struct" };
                    if name.is_empty() {
                        format!("{tag} {{…}}")
                    } else {
                        format!("{tag} {name}")
                    }
                }
                Kind::Enum { .. } => {
                    if name.is_empty() {
                        "enum {…}".to_owned()
                    } else {
                        format!("enum {name}")
                    }
                }
                Kind::Function => "fn".to_owned(),
                Kind::Other => "?".to_owned(),
                Kind::Variable(t) => {
                    id = t;
                    continue;
                }
                Kind::Qualified(q, t) => {
                    match q {
                        Qualifier::Const => prefix.push_str("const "),
                        Qualifier::Volatile => prefix.push_str("volatile "),
                        Qualifier::Restrict | Qualifier::Tag => {}
                    }
                    id = t;
                    continue;
                }
                Kind::Pointer(t) => {
                    declarator.insert(0, '*');
                    id = t;
                    continue;
                }
                Kind::Array { element, len } => {
                    if declarator.starts_with('*') {
                        declarator = format!("({declarator})");
                    }
                    declarator.push_str(&format!("[{len}]"));
                    id = element;
                    continue;
                }
            };
            let mut out = prefix;
            out.push_str(&base);
            if !declarator.is_empty() {
                out.push(' ');
                out.push_str(&declarator);
            }
            return Ok(out);
        }
        Err(Error::malformed(
            "kernel types",
            "type name chain too long (a cycle?)",
        ))
    }

    /// The name [`Model::lookup`] takes for type `id`: qualifiers stripped, then a tag
    /// without its keyword (`mm_struct`), a typedef's or base type's name (`pgd_t`,
    /// `char`), or the C spelling for anything else (`struct {…}`, `void *`).
    pub(crate) fn bare_name(&self, mut id: TypeId) -> Result<String> {
        for _ in 0..MAX_CHAIN {
            let ty = self.get(id)?;
            match ty.kind {
                Kind::Qualified(_, t) => id = t,
                Kind::Void => return Ok("void".to_owned()),
                Kind::Record { .. }
                | Kind::Enum { .. }
                | Kind::Forward { .. }
                | Kind::Int { .. }
                | Kind::Float { .. }
                | Kind::Typedef(_)
                    if ty.name.len > 0 =>
                {
                    return Ok(self.text(ty.name).to_owned())
                }
                _ => return self.c_name(id),
            }
        }
        Err(Error::malformed(
            "kernel types",
            "qualifier chain too long (a cycle?)",
        ))
    }

    /// The enumerator `name`, searched in every enum (first definition wins).
    pub(crate) fn enumerator(&self, name: &str) -> Option<i64> {
        self.enumerators
            .iter()
            .find(|(n, _)| self.text(*n) == name)
            .map(|&(_, v)| v)
    }

    /// How many types (including `void`).
    pub(crate) fn len(&self) -> usize {
        self.types.len()
    }
}
