//! Export as a Volatility 3 ISF (intermediate symbol format 6.2.0).
//!
//! Conventions Volatility 3 relies on: a `pointer` base type gives the pointer size;
//! `linux_banner`'s `constant_data` (base64) is the banner Volatility scans memory for to
//! pick an ISF; anonymous members are named `unnamed_field_N` with `"anonymous": true`
//! (format 6.2 flattens them); typedefs do not exist (they are resolved); bitfields carry
//! their bit position relative to a storage unit of their integer type. Anonymous records
//! and enums are named `unnamed_<type id>`, and a second, different definition of a name
//! `<name>_<type id>`. The metadata's `linux` source lists stay empty: the schema only
//! knows `dwarf`, `symtab` and `system-map`, and these types came from neither.

use std::collections::BTreeMap;

use serde::Serialize;

use super::model::{Kind, Model, TypeId, MAX_CHAIN, POINTER_SIZE};
use super::Types;
use crate::error::{Error, Result};
use crate::SymbolTable;

#[derive(Serialize)]
pub(crate) struct Isf {
    metadata: Metadata,
    base_types: BTreeMap<String, BaseType>,
    user_types: BTreeMap<String, UserType>,
    enums: BTreeMap<String, EnumType>,
    symbols: BTreeMap<String, Symbol>,
}

#[derive(Serialize)]
struct Metadata {
    format: &'static str,
    producer: Producer,
    linux: Linux,
}

#[derive(Serialize)]
struct Producer {
    name: &'static str,
    version: &'static str,
}

#[derive(Serialize)]
struct Linux {}

#[derive(Serialize)]
struct BaseType {
    size: u64,
    signed: bool,
    kind: &'static str,
    endian: &'static str,
}

#[derive(Serialize)]
struct UserType {
    kind: &'static str,
    size: u64,
    fields: BTreeMap<String, FieldOut>,
}

#[derive(Serialize)]
struct FieldOut {
    #[serde(rename = "type")]
    ty: Desc,
    offset: u64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    anonymous: bool,
}

#[derive(Serialize)]
struct EnumType {
    size: u64,
    base: String,
    constants: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Symbol {
    address: u64,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    ty: Option<Desc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    constant_data: Option<String>,
}

/// An ISF type descriptor.
#[derive(Serialize, Clone)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Desc {
    Pointer {
        subtype: Box<Desc>,
    },
    Base {
        name: String,
    },
    Array {
        count: u64,
        subtype: Box<Desc>,
    },
    Struct {
        name: String,
    },
    Union {
        name: String,
    },
    Enum {
        name: String,
    },
    Function,
    Bitfield {
        bit_position: u64,
        bit_length: u64,
        #[serde(rename = "type")]
        ty: Box<Desc>,
    },
}

fn malformed(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::malformed("kernel types (ISF export)", detail)
}

/// The ISF name of record or enum `id`.
fn isf_name(m: &Model, id: TypeId) -> String {
    let ty = m.types[id as usize];
    let name = m.text(ty.name);
    if name.is_empty() {
        return format!("unnamed_{id}");
    }
    let first = match ty.kind {
        Kind::Record { union: true, .. } | Kind::Forward { union: true } => {
            m.lookup(&format!("union {name}"))
        }
        Kind::Enum { .. } => m.lookup(&format!("enum {name}")),
        _ => m.lookup(&format!("struct {name}")),
    };
    match first {
        // A forward declaration stands for the definition of its name, if any.
        Ok(f) if f == id || matches!(ty.kind, Kind::Forward { .. }) => name.to_owned(),
        _ => format!("{name}_{id}"),
    }
}

fn desc(m: &Model, id: TypeId, depth: usize) -> Result<Desc> {
    if depth > MAX_CHAIN {
        return Err(malformed("type descriptor nesting too deep (a cycle?)"));
    }
    let id = m.strip(id)?;
    let ty = m.get(id)?;
    Ok(match ty.kind {
        Kind::Void | Kind::Other => Desc::Base {
            name: "void".into(),
        },
        Kind::Variable(t) => desc(m, t, depth + 1)?,
        Kind::Int { .. } | Kind::Float { .. } => Desc::Base {
            name: m.text(ty.name).to_owned(),
        },
        Kind::Pointer(t) => Desc::Pointer {
            subtype: Box::new(desc(m, t, depth + 1)?),
        },
        Kind::Array { element, len } => Desc::Array {
            count: len.into(),
            subtype: Box::new(desc(m, element, depth + 1)?),
        },
        Kind::Record { union: false, .. } | Kind::Forward { union: false } => Desc::Struct {
            name: isf_name(m, id),
        },
        Kind::Record { union: true, .. } | Kind::Forward { union: true } => Desc::Union {
            name: isf_name(m, id),
        },
        Kind::Enum { .. } => Desc::Enum {
            name: isf_name(m, id),
        },
        Kind::Function => Desc::Function,
        Kind::Typedef(_) | Kind::Qualified(..) => return Err(malformed("unstripped typedef")),
    })
}

fn base_kind(k: Kind, name: &str) -> Option<(u64, bool, &'static str)> {
    match k {
        Kind::Int {
            size,
            signed,
            char,
            boolean,
        } => {
            let kind = if boolean {
                "bool"
            } else if char || name.ends_with("char") {
                "char"
            } else {
                "int"
            };
            Some((size.into(), signed, kind))
        }
        Kind::Float { size } => Some((size.into(), true, "float")),
        _ => None,
    }
}

/// A base type name of `size` bytes and the given signedness, added if missing.
fn base_for(bases: &mut BTreeMap<String, BaseType>, size: u64, signed: bool) -> String {
    if let Some((name, _)) = bases
        .iter()
        .find(|(_, b)| b.size == size && b.signed == signed && b.kind == "int")
    {
        return name.clone();
    }
    let name = format!("{}{}", if signed { "s" } else { "u" }, size * 8);
    bases.insert(
        name.clone(),
        BaseType {
            size,
            signed,
            kind: "int",
            endian: "little",
        },
    );
    name
}

fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn user_type(m: &Model, id: TypeId, union: bool, size: u32) -> Result<UserType> {
    let mut fields = BTreeMap::new();
    for (i, mem) in m.members_of(id).iter().enumerate() {
        let name = m.text(mem.name);
        let anonymous = name.is_empty();
        let key = if anonymous {
            format!("unnamed_field_{i}")
        } else {
            name.to_owned()
        };
        let bit = u64::from(mem.bit_offset);
        let field = if mem.bit_size > 0 {
            bitfield(m, mem.ty, bit, mem.bit_size)?
        } else {
            FieldOut {
                ty: desc(m, mem.ty, 0)?,
                offset: bit / 8,
                anonymous,
            }
        };
        fields.insert(key, field);
    }
    Ok(UserType {
        kind: if union { "union" } else { "struct" },
        size: size.into(),
        fields,
    })
}

/// A bitfield: Volatility reads its integer type at `offset` and takes bits
/// `bit_position ..+ bit_length`, so the offset is the aligned storage unit holding it
/// (or its byte, for a bitfield straddling units in a packed struct).
fn bitfield(m: &Model, ty: TypeId, bit: u64, width: u8) -> Result<FieldOut> {
    let inner = desc(m, ty, 0)?;
    let unit = m.size_of(ty)?.max(1);
    let width = u64::from(width);
    let aligned = bit / (unit * 8) * unit;
    let offset = if bit + width <= (aligned + unit) * 8 {
        aligned
    } else {
        bit / 8
    };
    let ty = match inner {
        Desc::Base { .. } | Desc::Enum { .. } => Desc::Bitfield {
            bit_position: bit - offset * 8,
            bit_length: width,
            ty: Box::new(inner),
        },
        other => other,
    };
    Ok(FieldOut {
        ty,
        offset,
        anonymous: false,
    })
}

/// Arrays whose length is a kernel `#define` that changes between versions
/// (`TAINT_FLAGS_COUNT`: 18 in 5.10, 19 in 6.1, 20 in 6.15): typed by their extent in the
/// symbol table (up to the next symbol's address) divided by the element's size.
const EXTENT_ARRAYS: &[(&str, &str)] = &[("taint_flags", "taint_flag")];

/// Longest array typed by [`EXTENT_ARRAYS`].
const MAX_EXTENT_ELEMENTS: u64 = 4096;

fn extent_array(
    types: &Types,
    symbols: &SymbolTable,
    name: &str,
    address: u64,
) -> Result<Option<Desc>> {
    let Some(&(_, element)) = EXTENT_ARRAYS.iter().find(|(n, _)| *n == name) else {
        return Ok(None);
    };
    let Ok(size) = types.size_of(element) else {
        return Ok(None);
    };
    let next = symbols
        .iter()
        .map(|s| s.address)
        .filter(|&a| a > address)
        .min();
    let count = match (next, size) {
        (Some(next), size) if size > 0 => (next - address) / size,
        _ => return Ok(None),
    };
    if count == 0 || count > MAX_EXTENT_ELEMENTS {
        return Ok(None);
    }
    Ok(Some(Desc::Array {
        count,
        subtype: Box::new(Desc::Struct {
            name: element.to_owned(),
        }),
    }))
}

pub(crate) fn build(types: &Types, symbols: &SymbolTable, banner: &str) -> Result<Isf> {
    let m = &types.model;
    let mut base_types = BTreeMap::new();
    let mut user_types = BTreeMap::new();
    let mut enums = BTreeMap::new();
    base_types.insert(
        "pointer".to_owned(),
        BaseType {
            size: POINTER_SIZE,
            signed: false,
            kind: "int",
            endian: "little",
        },
    );
    base_types.insert(
        "void".to_owned(),
        BaseType {
            size: 0,
            signed: false,
            kind: "void",
            endian: "little",
        },
    );
    for (id, ty) in m.types.iter().enumerate() {
        let name = m.text(ty.name);
        if let Some((size, signed, kind)) = base_kind(ty.kind, name) {
            if !name.is_empty() {
                base_types.entry(name.to_owned()).or_insert(BaseType {
                    size,
                    signed,
                    kind,
                    endian: "little",
                });
            }
            continue;
        }
        let id = id as TypeId;
        match ty.kind {
            Kind::Record { union, size, .. } => {
                user_types.insert(isf_name(m, id), user_type(m, id, union, size)?);
            }
            Kind::Forward { union } if m.lookup(name).ok() == Some(id) => {
                // Declared, never defined: an empty type keeps references valid.
                user_types.entry(name.to_owned()).or_insert(UserType {
                    kind: if union { "union" } else { "struct" },
                    size: 0,
                    fields: BTreeMap::new(),
                });
            }
            _ => {}
        }
    }
    for (id, ty) in m.types.iter().enumerate() {
        let Kind::Enum { size, signed, .. } = ty.kind else {
            continue;
        };
        let base = base_for(&mut base_types, size.into(), signed);
        let constants = m
            .enumerators_of(id as TypeId)
            .iter()
            .map(|&(n, v)| {
                let value = if !signed && v < 0 {
                    serde_json::Value::from(v as u64)
                } else {
                    serde_json::Value::from(v)
                };
                (m.text(n).to_owned(), value)
            })
            .collect();
        enums.insert(
            isf_name(m, id as TypeId),
            EnumType {
                size: size.into(),
                base,
                constants,
            },
        );
    }
    let mut out_symbols = BTreeMap::new();
    for s in symbols.iter() {
        if out_symbols.contains_key(s.name) {
            continue; // the lowest address of a repeated static name, as lookups give
        }
        let ty = match types.symbol_type_id(s.name) {
            Some(id) => Some(desc(m, id, 0)?),
            None => extent_array(types, symbols, s.name, s.address)?,
        };
        out_symbols.insert(
            s.name.to_owned(),
            Symbol {
                address: s.address,
                ty,
                constant_data: None,
            },
        );
    }
    let mut banner = banner.as_bytes().to_vec();
    if banner.last() != Some(&0) {
        banner.push(0);
    }
    let char_name = if base_types.contains_key("char") {
        "char".to_owned()
    } else {
        base_for(&mut base_types, 1, true)
    };
    let banner_symbol = out_symbols
        .entry("linux_banner".to_owned())
        .or_insert(Symbol {
            address: 0,
            ty: None,
            constant_data: None,
        });
    banner_symbol.ty = Some(Desc::Array {
        count: banner.len() as u64,
        subtype: Box::new(Desc::Base { name: char_name }),
    });
    banner_symbol.constant_data = Some(base64(&banner));
    Ok(Isf {
        metadata: Metadata {
            format: "6.2.0",
            producer: Producer {
                name: "vmi-linux",
                version: env!("CARGO_PKG_VERSION"),
            },
            linux: Linux {},
        },
        base_types,
        user_types,
        enums,
        symbols: out_symbols,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
