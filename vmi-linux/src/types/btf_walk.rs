//! Our own single-pass BTF reader: the bounded pre-walk's checks, building the [`Model`]
//! as it goes, names left in place in a copy of the string section.

use super::btf::{bad, extra_len, u32_at, Header, MAX_NAME, MAX_NAME_BYTES};
use super::model::{Kind, Member, Model, Name, Qualifier, Type};
use crate::error::{Error, Result};

/// Parses checked BTF (`h` read from `b`) into a model with room for `spare` more types.
pub(crate) fn parse(b: &[u8], h: &Header, spare: usize) -> Result<Model> {
    let types_start = (h.hdr_len + h.type_off) as usize;
    let types_end = types_start + h.type_len as usize;
    let strings_start = (h.hdr_len + h.str_off) as usize;
    let strings = &b[strings_start..strings_start + h.str_len as usize];
    if strings.first() != Some(&0) {
        return Err(bad("string section does not start with the empty string"));
    }
    let mut m = Model::with_strings(strings.to_vec());
    // A type record is at least 12 bytes.
    m.types.reserve(h.type_len as usize / 12 / 2 + spare);
    let mut name_bytes: u64 = 0;
    let mut name = |off: u32| -> Result<Name> {
        if off == 0 {
            return Ok(Name::default());
        }
        let rest = strings
            .get(off as usize..)
            .ok_or_else(|| bad(format!("name offset {off} beyond the string section")))?;
        let window = &rest[..rest.len().min(MAX_NAME + 1)];
        let len = memchr::memchr(0, window).ok_or_else(|| {
            bad(format!(
                "name at {off} not NUL-terminated within {MAX_NAME} bytes"
            ))
        })?;
        name_bytes += len as u64 + 1;
        if name_bytes > MAX_NAME_BYTES {
            return Err(Error::Limit {
                what: "BTF name bytes",
                limit: MAX_NAME_BYTES,
            });
        }
        Ok(Name::at(off, len as u32))
    };
    let word = |o: usize| u32_at(b, o).unwrap_or(0);
    let mut at = types_start;
    while at < types_end {
        if at + 12 > types_end {
            return Err(bad(format!("type record at {at} truncated")));
        }
        let id = m.len();
        let (name_off, info, size_or_type) = (word(at), word(at + 4), word(at + 8));
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kflag = info >> 31 == 1;
        let extra = extra_len(kind, vlen).ok_or_else(|| Error::Unavailable {
            what: "BTF kind",
            reason: format!(
                "type {id} has kind {kind}, unknown to this parser (newest known: 19, \
                 ENUM64); use an ISF or an older kernel's BTF"
            )
            .into(),
        })?;
        let data = at + 12;
        let next = data + extra;
        if next > types_end {
            return Err(bad(format!("type {id} runs past the type section")));
        }
        let ty_name = name(name_off)?;
        let kind = match kind {
            1 => {
                let encoding = word(data) >> 24;
                Kind::Int {
                    size: size_or_type,
                    signed: encoding & 1 != 0,
                    char: encoding & 2 != 0,
                    boolean: encoding & 4 != 0,
                }
            }
            2 => Kind::Pointer(size_or_type),
            3 => Kind::Array {
                element: word(data),
                len: word(data + 8),
            },
            4 | 5 => {
                let start = m.members.len();
                for i in 0..vlen {
                    let e = data + 12 * i;
                    let offset = word(e + 8);
                    let (bit_offset, bit_size) = if kflag {
                        (offset & 0x00ff_ffff, (offset >> 24) as u8)
                    } else {
                        (offset, 0)
                    };
                    m.members.push(Member {
                        name: name(word(e))?,
                        ty: word(e + 4),
                        bit_offset,
                        bit_size,
                    });
                }
                Kind::Record {
                    union: kind == 5,
                    size: size_or_type,
                    members: (start as u32, vlen as u32),
                }
            }
            6 | 19 => {
                let start = m.enumerators.len();
                let entry = if kind == 6 { 8 } else { 12 };
                for i in 0..vlen {
                    let e = data + entry * i;
                    let lo = word(e + 4);
                    // kind_flag marks a signed enum; 64-bit values keep their bit pattern.
                    let value = match (kind, kflag) {
                        (6, true) => i64::from(lo as i32),
                        (6, false) => i64::from(lo),
                        _ => ((u64::from(word(e + 8)) << 32) | u64::from(lo)) as i64,
                    };
                    m.enumerators.push((name(word(e))?, value));
                }
                Kind::Enum {
                    size: size_or_type,
                    signed: kflag,
                    values: (start as u32, vlen as u32),
                }
            }
            7 => Kind::Forward { union: kflag },
            8 => Kind::Typedef(size_or_type),
            9 => Kind::Qualified(Qualifier::Volatile, size_or_type),
            10 => Kind::Qualified(Qualifier::Const, size_or_type),
            11 => Kind::Qualified(Qualifier::Restrict, size_or_type),
            18 => Kind::Qualified(Qualifier::Tag, size_or_type),
            12 | 13 => {
                if kind == 13 {
                    for i in 0..vlen {
                        name(word(data + 8 * i))?;
                    }
                }
                Kind::Function
            }
            14 => Kind::Variable(size_or_type),
            16 => Kind::Float { size: size_or_type },
            _ => Kind::Other, // 15 DATASEC, 17 DECL_TAG
        };
        // Function, section and type-tag names (`address_space(1)`) are checked but not
        // kept: nothing looks them up.
        let keep = !matches!(kind, Kind::Function | Kind::Other | Kind::Qualified(..));
        m.push(Type {
            name: if keep { ty_name } else { Name::default() },
            kind,
        })?;
        at = next;
    }
    Ok(m)
}
