//! Kernel symbols both ways: name → address and address → (name, offset).
//!
//! A [`SymbolTable`] is built once (from kallsyms decoded in guest memory, a System.map, or
//! an ISF file) and then only queried, so it is laid out for lookups: one string arena,
//! entries sorted by address for reverse lookups, and a hash index for names.

use std::hash::BuildHasher;

use foldhash::quality::RandomState;
use hashbrown::HashTable;

use crate::error::{Error, Result};

/// One kernel symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symbol<'a> {
    /// The symbol's name.
    pub name: &'a str,
    /// Its runtime virtual address (for per-CPU symbols: the offset in the per-CPU area).
    pub address: u64,
    /// The `nm` type letter (`T`, `t`, `D`, `d`, `B`, `R`, `A`, …), `?` when unknown.
    pub kind: char,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    address: u64,
    name_start: u32,
    name_len: u32,
    /// In the last entry of a run sharing one address: the entry reverse lookups give
    /// (the last that is not a `__pfx_` marker), so they read no names to choose.
    preferred: u32,
    kind: u8,
}

/// Kernel symbols, queried both ways.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    names: String,
    /// Sorted by (address, insertion order).
    entries: Vec<Entry>,
    /// `entries[i].address`, packed for the binary search of reverse lookups.
    addresses: Vec<u64>,
    /// Index in `entries` of the first symbol of each name, hashed by name. The names are
    /// the guest's, so the hash is keyed at random: no crafted collisions.
    by_name: HashTable<u32>,
    hasher: RandomState,
}

/// Builds a [`SymbolTable`].
#[derive(Debug, Default)]
pub struct SymbolTableBuilder {
    names: String,
    entries: Vec<Entry>,
}

impl SymbolTableBuilder {
    /// An empty builder with room for `n` symbols.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            names: String::with_capacity(n.saturating_mul(24)),
            entries: Vec::with_capacity(n),
        }
    }

    /// A builder over names a decoder already laid out in one arena; symbols are then
    /// added with [`Self::push_in_arena`] (no copy of each name).
    pub(crate) fn from_arena(names: String, capacity: usize) -> Self {
        Self {
            names,
            entries: Vec::with_capacity(capacity),
        }
    }

    /// Adds a symbol whose name is `names[start..start + len]` of the arena given to
    /// [`Self::from_arena`]; refused if that is not a `str` range of the arena.
    pub(crate) fn push_in_arena(
        &mut self,
        start: u32,
        len: u32,
        address: u64,
        kind: u8,
    ) -> Result<()> {
        let (s, e) = (start as usize, start as usize + len as usize);
        if self.names.get(s..e).is_none() {
            return Err(Error::malformed("symbol name", "outside the name arena"));
        }
        self.entries.push(Entry {
            address,
            name_start: start,
            name_len: len,
            preferred: 0,
            kind: if kind.is_ascii() { kind } else { b'?' },
        });
        Ok(())
    }

    /// Adds a symbol. Names longer than `u32::MAX` bytes or past a 4 GiB arena are refused.
    pub fn push(&mut self, name: &str, address: u64, kind: char) -> Result<()> {
        let name_start = u32::try_from(self.names.len()).map_err(|_| Error::Limit {
            what: "symbol name arena",
            limit: u32::MAX.into(),
        })?;
        let name_len = u32::try_from(name.len()).map_err(|_| Error::Limit {
            what: "symbol name length",
            limit: u32::MAX.into(),
        })?;
        self.names.push_str(name);
        self.entries.push(Entry {
            address,
            name_start,
            name_len,
            preferred: 0,
            kind: if kind.is_ascii() { kind as u8 } else { b'?' },
        });
        Ok(())
    }

    /// How many symbols were pushed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The finished table. Where a name occurs more than once (static functions of the
    /// same name in different files), name lookups give the lowest address.
    pub fn build(mut self) -> SymbolTable {
        self.entries.sort_by_key(|e| e.address);
        let mut t = SymbolTable {
            names: self.names,
            entries: self.entries,
            addresses: Vec::new(),
            by_name: HashTable::new(),
            hasher: RandomState::default(),
        };
        t.index();
        t
    }
}

impl SymbolTable {
    fn name_of(&self, e: &Entry) -> &str {
        &self.names[e.name_start as usize..(e.name_start + e.name_len) as usize]
    }

    /// (Re)builds the indexes of the sorted entries: the packed addresses, each address
    /// run's preferred entry, and the name index.
    fn index(&mut self) {
        self.addresses = self.entries.iter().map(|e| e.address).collect();
        let mut run_start = 0;
        for i in 0..self.entries.len() {
            let last_of_run = self.addresses.get(i + 1) != Some(&self.addresses[i]);
            if last_of_run {
                let run = run_start..=i;
                let preferred = run
                    .clone()
                    .rev()
                    .find(|&j| !self.name_of(&self.entries[j]).starts_with("__pfx_"))
                    .unwrap_or(i);
                self.entries[i].preferred = preferred as u32;
                run_start = i + 1;
            }
        }
        self.index_names();
    }

    /// Builds the name index: the first entry (lowest address) of each name.
    fn index_names(&mut self) {
        let mut by_name = HashTable::with_capacity(self.entries.len());
        for (i, e) in self.entries.iter().enumerate() {
            let name = self.name_of(e);
            let hash = self.hasher.hash_one(name);
            let slot = by_name.entry(
                hash,
                |&j: &u32| self.name_of(&self.entries[j as usize]) == name,
                |&j: &u32| {
                    self.hasher
                        .hash_one(self.name_of(&self.entries[j as usize]))
                },
            );
            if let hashbrown::hash_table::Entry::Vacant(v) = slot {
                v.insert(i as u32);
            }
        }
        self.by_name = by_name;
    }

    fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name
            .find(self.hasher.hash_one(name), |&j| {
                self.name_of(&self.entries[j as usize]) == name
            })
            .map(|&j| j as usize)
    }

    fn symbol(&self, e: &Entry) -> Symbol<'_> {
        Symbol {
            name: &self.names[e.name_start as usize..(e.name_start + e.name_len) as usize],
            address: e.address,
            kind: e.kind as char,
        }
    }

    /// How many symbols the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The address of `name`.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.index_of(name).map(|i| self.entries[i].address)
    }

    /// The symbol named `name`.
    pub fn get(&self, name: &str) -> Option<Symbol<'_>> {
        self.index_of(name).map(|i| self.symbol(&self.entries[i]))
    }

    /// The symbol containing `address` and the offset into it: the symbol with the highest
    /// address ≤ `address`, preferring text and data symbols over the zero-size markers
    /// (`__pfx_*` padding, `__key.*`) sharing its address. `None` below the first symbol.
    pub fn symbol_at(&self, address: u64) -> Option<(Symbol<'_>, u64)> {
        let end = self.addresses.partition_point(|&a| a <= address);
        let last = self.entries.get(end.checked_sub(1)?)?;
        let best = &self.entries[last.preferred as usize];
        Some((self.symbol(best), address - last.address))
    }

    /// Every symbol, by address.
    pub fn iter(&self) -> impl Iterator<Item = Symbol<'_>> + '_ {
        self.entries.iter().map(|e| self.symbol(e))
    }

    /// A copy with every address moved by `slide` (wrapping, as the CPU adds).
    /// For link-time tables (System.map, ISF) of a KASLR kernel. Symbols of kind `A`
    /// (absolute) keep their value, and so does every value below the kernel half of the
    /// address space: x86-64's zero-based per-CPU offsets, which kallsyms marks `A` but a
    /// System.map (`nm`) lists as the `D`/`d`/`b` symbols they are in vmlinux.
    pub fn slid(&self, slide: i64) -> SymbolTable {
        let mut t = self.clone();
        for e in &mut t.entries {
            if e.kind != b'A' && e.address >= 1 << 63 {
                e.address = e.address.wrapping_add(slide as u64);
            }
        }
        t.entries.sort_by_key(|e| e.address);
        t.index();
        t
    }

    /// Parses a System.map (`ffffffff81000000 T _text` per line). Lines that do not parse
    /// are errors naming the line; at most `max_symbols` lines are accepted.
    pub fn from_system_map(text: &str, max_symbols: usize) -> Result<SymbolTable> {
        let mut b = SymbolTableBuilder::with_capacity(text.len() / 40);
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_ascii_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(Error::malformed(
                    "System.map",
                    format!("line {}: {line:?}", n + 1),
                ));
            };
            let address = u64::from_str_radix(addr, 16).map_err(|_| {
                Error::malformed(
                    "System.map",
                    format!("line {}: bad address {addr:?}", n + 1),
                )
            })?;
            let kind = kind.chars().next().unwrap_or('?');
            if b.len() >= max_symbols {
                return Err(Error::Limit {
                    what: "System.map symbols",
                    limit: max_symbols as u64,
                });
            }
            b.push(name, address, kind)?;
        }
        if b.is_empty() {
            return Err(Error::malformed("System.map", "no symbols"));
        }
        Ok(b.build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> SymbolTable {
        let mut b = SymbolTableBuilder::default();
        b.push("_text", 0xffff_ffff_8100_0000, 'T').unwrap();
        b.push("__pfx_start_kernel", 0xffff_ffff_8200_0000, 't')
            .unwrap();
        b.push("start_kernel", 0xffff_ffff_8200_0000, 'T').unwrap();
        b.push("linux_banner", 0xffff_ffff_8280_0100, 'D').unwrap();
        b.push("current_task", 0x1fbc0, 'A').unwrap();
        b.push("cpu_tss_rw", 0x6000, 'D').unwrap();
        b.build()
    }

    #[test]
    fn both_ways() {
        let t = table();
        assert_eq!(t.address_of("linux_banner"), Some(0xffff_ffff_8280_0100));
        assert_eq!(t.address_of("nope"), None);
        let (s, off) = t.symbol_at(0xffff_ffff_8200_0010).unwrap();
        assert_eq!((s.name, off), ("start_kernel", 0x10));
        assert_eq!(t.symbol_at(0x10), None);
        let (s, off) = t.symbol_at(0x1fbc8).unwrap();
        assert_eq!((s.name, off), ("current_task", 8));
    }

    #[test]
    fn slide_keeps_absolute() {
        let t = table().slid(0x1000_0000);
        assert_eq!(t.address_of("_text"), Some(0xffff_ffff_9100_0000));
        assert_eq!(t.address_of("current_task"), Some(0x1fbc0));
        // A per-CPU offset as System.map types it.
        assert_eq!(t.address_of("cpu_tss_rw"), Some(0x6000));
    }

    #[test]
    fn system_map() {
        let t = SymbolTable::from_system_map(
            "ffffffff81000000 T _text\nffffffff82800100 D linux_banner\n",
            10,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert!(SymbolTable::from_system_map("zz T x\n", 10).is_err());
        assert!(SymbolTable::from_system_map("1 T a\n2 T b\n", 1).is_err());
        assert!(SymbolTable::from_system_map("", 10).is_err());
    }
}
