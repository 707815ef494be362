//! Import of a Volatility 3 ISF (dwarf2json or btf2json output, formats 4.x to 6.x, also
//! our own export): types into a [`Model`], symbols into a [`SymbolTable`].

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::model::{Kind, Member, Model, Name, Type, TypeId, MAX_CHAIN};
use super::{TypeSource, Types};
use crate::error::{Error, Result};
use crate::{SymbolTable, SymbolTableBuilder};

/// What an ISF says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsfInfo {
    /// The format version (`6.2.0`).
    pub format: String,
    /// The producer's name and version (`dwarf2json 0.8.0`), if given.
    pub producer: Option<String>,
    /// The kernel banner (`linux_banner`'s constant data, up to its NUL), if given:
    /// compare it with the guest's to know the ISF fits.
    pub banner: Option<String>,
}

fn bad(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::malformed("ISF", detail)
}

fn obj<'a>(v: &'a Value, key: &str) -> Result<&'a Map<String, Value>> {
    v.get(key)
        .and_then(Value::as_object)
        .ok_or_else(|| bad(format!("no {key} object")))
}

fn uint(v: &Value, key: &str) -> Result<u64> {
    let x = v.get(key).ok_or_else(|| bad(format!("no {key}")))?;
    x.as_u64()
        .or_else(|| {
            x.as_f64()
                .filter(|f| *f >= 0.0 && f.fract() == 0.0)
                .map(|f| f as u64)
        })
        .ok_or_else(|| bad(format!("{key} is not a non-negative integer: {x}")))
}

fn u32_of(x: u64, what: &str) -> Result<u32> {
    u32::try_from(x).map_err(|_| bad(format!("{what} {x} too large")))
}

struct Importer {
    m: Model,
    /// user type / enum / base type name → id
    user: HashMap<String, TypeId>,
    enums: HashMap<String, TypeId>,
    bases: HashMap<String, TypeId>,
    /// (pointer target) and (array element, count) → id, to share derived types.
    pointers: HashMap<TypeId, TypeId>,
    arrays: HashMap<(TypeId, u32), TypeId>,
    function: Option<TypeId>,
}

impl Importer {
    fn push(&mut self, name: &str, kind: Kind) -> Result<TypeId> {
        let name = self.m.intern(name)?;
        self.m.push(Type { name, kind })
    }

    /// The id a descriptor names, creating pointer/array types (and forward declarations
    /// for names the file does not define).
    fn desc(&mut self, d: &Value, depth: usize) -> Result<TypeId> {
        if depth > MAX_CHAIN {
            return Err(bad("type descriptor nesting too deep"));
        }
        let kind = d
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| bad(format!("type descriptor without kind: {d}")))?;
        let name = || {
            d.get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{kind} descriptor without name")))
        };
        match kind {
            "base" => {
                let n = name()?;
                if n == "void" {
                    return Ok(0);
                }
                match self.bases.get(n) {
                    Some(&id) => Ok(id),
                    None => Err(bad(format!("undefined base type {n}"))),
                }
            }
            "struct" | "class" | "union" => {
                let n = name()?;
                match self.user.get(n) {
                    Some(&id) => Ok(id),
                    None => {
                        let id = self.push(
                            n,
                            Kind::Forward {
                                union: kind == "union",
                            },
                        )?;
                        self.user.insert(n.to_owned(), id);
                        Ok(id)
                    }
                }
            }
            "enum" => {
                let n = name()?;
                match self.enums.get(n) {
                    Some(&id) => Ok(id),
                    None => Err(bad(format!("undefined enum {n}"))),
                }
            }
            "pointer" => {
                let target = self.desc(
                    d.get("subtype")
                        .ok_or_else(|| bad("pointer without subtype"))?,
                    depth + 1,
                )?;
                if let Some(&id) = self.pointers.get(&target) {
                    return Ok(id);
                }
                let id = self.push("", Kind::Pointer(target))?;
                self.pointers.insert(target, id);
                Ok(id)
            }
            "array" => {
                let len = u32_of(uint(d, "count")?, "array count")?;
                let element = self.desc(
                    d.get("subtype")
                        .ok_or_else(|| bad("array without subtype"))?,
                    depth + 1,
                )?;
                if let Some(&id) = self.arrays.get(&(element, len)) {
                    return Ok(id);
                }
                let id = self.push("", Kind::Array { element, len })?;
                self.arrays.insert((element, len), id);
                Ok(id)
            }
            "function" => match self.function {
                Some(id) => Ok(id),
                None => {
                    let id = self.push("", Kind::Function)?;
                    self.function = Some(id);
                    Ok(id)
                }
            },
            "bitfield" => self.desc(
                d.get("type").ok_or_else(|| bad("bitfield without type"))?,
                depth + 1,
            ),
            other => Err(bad(format!("unknown type descriptor kind {other}"))),
        }
    }
}

pub(crate) fn parse(json: &[u8]) -> Result<(Types, SymbolTable, IsfInfo)> {
    let root: Value = serde_json::from_slice(json).map_err(|e| bad(format!("not JSON: {e}")))?;
    let metadata = root.get("metadata").ok_or_else(|| bad("no metadata"))?;
    let format = metadata
        .get("format")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("no metadata.format"))?
        .to_owned();
    // 4.x to 6.x share the layout read here (they differ in metadata and anonymous fields).
    if !["4.", "5.", "6."].iter().any(|v| format.starts_with(v)) {
        return Err(Error::Unavailable {
            what: "ISF format",
            reason: format!("{format} (4.x to 6.x are read)").into(),
        });
    }
    let producer = metadata.get("producer").map(|p| {
        let s = |k| p.get(k).and_then(Value::as_str).unwrap_or("");
        format!("{} {}", s("name"), s("version")).trim().to_owned()
    });

    let mut imp = Importer {
        m: Model::new(),
        user: HashMap::new(),
        enums: HashMap::new(),
        bases: HashMap::new(),
        pointers: HashMap::new(),
        arrays: HashMap::new(),
        function: None,
    };
    for (name, b) in obj(&root, "base_types")? {
        let size = u32_of(uint(b, "size")?, "base type size")?;
        let signed = b.get("signed").and_then(Value::as_bool).unwrap_or(false);
        let kind = match b.get("kind").and_then(Value::as_str).unwrap_or("int") {
            "void" => continue,
            "float" => Kind::Float { size },
            k => Kind::Int {
                size,
                signed,
                char: k == "char",
                boolean: k == "bool",
            },
        };
        if name == "pointer" {
            continue; // the pointer size, which vmi-linux fixes at 8
        }
        let id = imp.push(name, kind)?;
        imp.bases.insert(name.clone(), id);
    }
    for (name, e) in obj(&root, "enums")? {
        let size = u32_of(uint(e, "size")?, "enum size")?;
        let start = imp.m.enumerators.len();
        let mut signed = false;
        for (c, v) in obj(e, "constants")? {
            let value = v
                .as_i64()
                .or_else(|| v.as_u64().map(|u| u as i64))
                .ok_or_else(|| bad(format!("enum constant {c} is not an integer")))?;
            signed |= value < 0 && v.as_i64().is_some();
            let n = imp.m.intern(c)?;
            imp.m.enumerators.push((n, value));
        }
        let count = imp.m.enumerators.len() - start;
        let id = imp.push(
            name,
            Kind::Enum {
                size,
                signed,
                values: (start as u32, count as u32),
            },
        )?;
        imp.enums.insert(name.clone(), id);
    }
    // Records first as placeholders so fields can name any of them; members next.
    let user_types = obj(&root, "user_types")?;
    let mut records = Vec::with_capacity(user_types.len());
    for (name, u) in user_types {
        let union = u.get("kind").and_then(Value::as_str) == Some("union");
        let size = u32_of(uint(u, "size")?, "user type size")?;
        let id = imp.push(
            name,
            Kind::Record {
                union,
                size,
                members: (0, 0),
            },
        )?;
        imp.user.insert(name.clone(), id);
        records.push((id, u));
    }
    for (id, u) in records {
        let mut members = Vec::new();
        for (fname, f) in obj(u, "fields")? {
            let ty_desc = f
                .get("type")
                .ok_or_else(|| bad(format!("field {fname} without type")))?;
            let ty = imp.desc(ty_desc, 0)?;
            let offset = uint(f, "offset")?;
            let anonymous = f.get("anonymous").and_then(Value::as_bool).unwrap_or(false);
            let (extra_bits, bit_size) =
                if ty_desc.get("kind").and_then(Value::as_str) == Some("bitfield") {
                    (uint(ty_desc, "bit_position")?, uint(ty_desc, "bit_length")?)
                } else {
                    (0, 0)
                };
            let bit_offset = offset
                .checked_mul(8)
                .and_then(|b| b.checked_add(extra_bits))
                .ok_or_else(|| bad("field offset overflows"))?;
            let name = if anonymous {
                Name::default()
            } else {
                imp.m.intern(fname)?
            };
            members.push(Member {
                name,
                ty,
                bit_offset: u32_of(bit_offset, "field bit offset")?,
                bit_size: u8::try_from(bit_size).map_err(|_| bad("bitfield too wide"))?,
            });
        }
        members.sort_by_key(|mem| mem.bit_offset);
        let start = imp.m.members.len() as u32;
        let count = members.len() as u32;
        imp.m.members.extend(members);
        if let Kind::Record { members, .. } = &mut imp.m.types[id as usize].kind {
            *members = (start, count);
        }
    }

    let syms = obj(&root, "symbols")?;
    let mut table = SymbolTableBuilder::with_capacity(syms.len());
    let mut symbol_types = HashMap::new();
    let mut banner = None;
    for (name, s) in syms {
        let address = uint(s, "address")?;
        // Per-CPU offsets and absolute values sit below the kernel half: not slid.
        let kind = if address < 1 << 63 { 'A' } else { '?' };
        table.push(name, address, kind)?;
        if let Some(d) = s.get("type") {
            let id = imp.desc(d, 0)?;
            symbol_types.insert(name.as_str().into(), id);
        }
        if name == "linux_banner" {
            if let Some(data) = s.get("constant_data").and_then(Value::as_str) {
                let bytes = unbase64(data).ok_or_else(|| bad("linux_banner is not base64"))?;
                let text = bytes.split(|&b| b == 0).next().unwrap_or(&[]);
                banner = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    let types = Types {
        model: imp.m,
        source: TypeSource::Isf,
        symbol_types,
    };
    let info = IsfInfo {
        format,
        producer,
        banner,
    };
    Ok((types, table.build(), info))
}

fn unbase64(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b'\n' | b'\r' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
