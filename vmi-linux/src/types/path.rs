//! Dotted field paths (`se.vruntime`, `mem[1].base`) resolved in a [`Model`], bounded.

use super::model::{Kind, Member, Model, TypeId};
use super::Field;
use crate::error::{Error, Result};

/// Most path components accepted.
const MAX_COMPONENTS: usize = 32;
/// How deep anonymous structs/unions are searched for a member.
const MAX_ANON_DEPTH: usize = 8;
/// How many anonymous members one lookup may visit (a hostile table could fan out).
const MAX_ANON_VISITS: usize = 4096;

/// One component: a member name and the array indices after it.
struct Component<'a> {
    name: &'a str,
    indices: Vec<u64>,
}

fn parse(path: &str) -> Result<Vec<Component<'_>>> {
    let bad = || Error::not_found("field", format!("invalid path {path:?}"));
    let mut out = Vec::new();
    for part in path.split('.') {
        if out.len() >= MAX_COMPONENTS {
            return Err(Error::Limit {
                what: "field path components",
                limit: MAX_COMPONENTS as u64,
            });
        }
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad());
        }
        let mut indices = Vec::new();
        while !rest.is_empty() {
            let close = rest.find(']').ok_or_else(bad)?;
            let index = rest
                .get(1..close)
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(bad)?;
            indices.push(index);
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(bad());
            }
        }
        out.push(Component { name, indices });
    }
    Ok(out)
}

/// Finds member `name` in record `id`, looking into anonymous members as C does; returns
/// the member and its bit offset from the start of `id`.
fn find_member(m: &Model, id: TypeId, name: &str) -> Result<Option<(Member, u64)>> {
    let mut visits = 0;
    find_in(m, id, name, 0, &mut visits)
}

fn find_in(
    m: &Model,
    id: TypeId,
    name: &str,
    depth: usize,
    visits: &mut usize,
) -> Result<Option<(Member, u64)>> {
    let members = m.members_of(id);
    if let Some(mem) = members.iter().find(|mem| m.text(mem.name) == name) {
        return Ok(Some((*mem, u64::from(mem.bit_offset))));
    }
    if depth >= MAX_ANON_DEPTH {
        return Ok(None);
    }
    for mem in members.iter().filter(|mem| m.text(mem.name).is_empty()) {
        *visits += 1;
        if *visits > MAX_ANON_VISITS {
            return Err(Error::Limit {
                what: "anonymous members searched",
                limit: MAX_ANON_VISITS as u64,
            });
        }
        let inner = m.strip(mem.ty)?;
        if let Some((found, off)) = find_in(m, inner, name, depth + 1, visits)? {
            return Ok(Some((found, off + u64::from(mem.bit_offset))));
        }
    }
    Ok(None)
}

/// The field at `path` in type `root` (named `root_name` in errors).
pub(crate) fn resolve(m: &Model, root: TypeId, root_name: &str, path: &str) -> Result<Field> {
    let components = parse(path)?;
    let mut current = m.strip(root)?;
    let mut bit_offset: u64 = 0;
    let mut last: Option<(TypeId, u8)> = None;
    let not_found = |what: &str| Error::not_found("field", format!("{root_name}.{path}: {what}"));
    for (i, c) in components.iter().enumerate() {
        let outer = if i == 0 {
            root_name
        } else {
            components[i - 1].name
        };
        match m.get(current)?.kind {
            Kind::Record { .. } => {}
            Kind::Pointer(_) => {
                return Err(not_found(&format!(
                    "{outer} is a pointer (read it, then look up the rest in its pointee)"
                )))
            }
            _ => return Err(not_found(&format!("{outer} is not a struct or union"))),
        }
        let (mem, off) = find_member(m, current, c.name)?
            .ok_or_else(|| not_found(&format!("no member {}", c.name)))?;
        bit_offset = bit_offset
            .checked_add(off)
            .ok_or_else(|| Error::malformed("kernel types", "field offset overflows"))?;
        let mut ty = mem.ty;
        for &index in &c.indices {
            let Kind::Array { element, len } = m.get(m.strip(ty)?)?.kind else {
                return Err(not_found(&format!("{} is not an array", c.name)));
            };
            if index >= u64::from(len) {
                return Err(not_found(&format!(
                    "index {index} out of bounds of {}[{len}]",
                    c.name
                )));
            }
            let step = m
                .size_of(element)?
                .checked_mul(index)
                .and_then(|b| b.checked_mul(8))
                .ok_or_else(|| Error::malformed("kernel types", "array offset overflows"))?;
            bit_offset = bit_offset
                .checked_add(step)
                .ok_or_else(|| Error::malformed("kernel types", "field offset overflows"))?;
            ty = element;
        }
        let bits = if c.indices.is_empty() {
            mem.bit_size
        } else {
            0
        };
        last = Some((ty, bits));
        current = m.strip(ty)?;
    }
    let (ty, bit_size) = last.ok_or_else(|| not_found("empty path"))?;
    if bit_size == 0 && bit_offset % 8 != 0 {
        return Err(Error::malformed(
            "kernel types",
            format!("{root_name}.{path} is not byte-aligned and not a bitfield"),
        ));
    }
    let stripped = m.strip(ty)?;
    let (pointee, element) = match m.get(stripped)?.kind {
        Kind::Pointer(t) => (Some(m.bare_name(t)?), None),
        Kind::Array { element, len } => (None, Some((m.bare_name(element)?, u64::from(len)))),
        _ => (None, None),
    };
    Ok(Field {
        offset: bit_offset / 8,
        bits: (bit_size > 0).then_some(((bit_offset % 8) as u8, u16::from(bit_size))),
        size: m.size_of(ty)?,
        type_name: m.c_name(ty)?,
        pointee,
        element,
    })
}

/// Appends the member names of record `id`, those of anonymous members in their place.
pub(crate) fn flatten_names(m: &Model, id: TypeId, out: &mut Vec<String>) -> Result<()> {
    let mut visits = 0;
    flatten_in(m, id, out, 0, &mut visits)
}

fn flatten_in(
    m: &Model,
    id: TypeId,
    out: &mut Vec<String>,
    depth: usize,
    visits: &mut usize,
) -> Result<()> {
    if !matches!(m.get(id)?.kind, Kind::Record { .. }) {
        return Err(Error::not_found("struct or union", m.c_name(id)?));
    }
    for mem in m.members_of(id) {
        let name = m.text(mem.name);
        if !name.is_empty() {
            out.push(name.to_owned());
        } else {
            if depth >= MAX_ANON_DEPTH {
                return Err(Error::Limit {
                    what: "anonymous member nesting",
                    limit: MAX_ANON_DEPTH as u64,
                });
            }
            *visits += 1;
            if *visits > MAX_ANON_VISITS {
                return Err(Error::Limit {
                    what: "anonymous members listed",
                    limit: MAX_ANON_VISITS as u64,
                });
            }
            let inner = m.strip(mem.ty)?;
            if matches!(m.get(inner)?.kind, Kind::Record { .. }) {
                flatten_in(m, inner, out, depth + 1, visits)?;
            }
        }
    }
    Ok(())
}
