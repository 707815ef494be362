//! Kernel types from BTF bytes: a bounded pre-walk of our own, then the btfparse crate,
//! then conversion into [`Model`].
//!
//! btfparse (Apache-2.0) does the parsing. We chose it over btf-rs because btf-rs is
//! LGPL-2.1-or-later, awkward for a statically linked MIT/Apache crate. btfparse trusts its
//! input more than guest data deserves, so it only sees bytes our pre-walk accepted:
//! - it reads every name byte by byte up to the NUL, so a string section of one huge
//!   string named by every member would take quadratic time: the pre-walk caps each name
//!   at [`MAX_NAME`] bytes and the sum of all name bytes at [`MAX_NAME_BYTES`];
//! - it adds header offsets without overflow checks in places: the pre-walk bounds them;
//! - it rejects kinds it does not know (it knows all 19 up to ENUM64, which covers the
//!   Debian kernels 5.10 to 7.2); the pre-walk names the unknown kind in a typed error;
//! - its own path resolution follows typedef chains and anonymous members without a
//!   bound: we do not use it; [`Model`] resolves paths with bounds.
//!
//! Measured (release, this machine): btfparse parses the Debian 5.10–7.2 kernels' BTF
//! (3.4–5.2 MB, 78k–118k types) in 46–55 ms; the pre-walk and conversion add the rest
//! (see the tests' report).

use btfparse::{Readable, Type as _, TypeInformation, TypeVariant};

use super::model::{Kind, Member, Model, Name, Qualifier, Type, TypeId};
use crate::error::{Error, Result};

/// BTF magic, little-endian, as the bytes start.
pub(crate) const MAGIC: [u8; 2] = [0x9f, 0xeb];
/// Largest BTF accepted (the 7.2 kernel's is 5 MB).
pub const MAX_BTF: usize = 64 << 20;
/// Longest type or member name accepted (the kernel's KSYM_NAME_LEN is 512).
pub(crate) const MAX_NAME: usize = 1024;
#[cfg(test)]
pub(crate) const MAX_NAME_LEN_FOR_TESTS: usize = MAX_NAME;
/// Total name bytes the parser may read (each name is read once per use).
pub(crate) const MAX_NAME_BYTES: u64 = 64 << 20;
/// Longest header accepted (24 today; later kernels may append fields).
pub(crate) const MAX_HDR_LEN: u32 = 256;

/// The fixed part of the BTF header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) hdr_len: u32,
    pub(crate) type_off: u32,
    pub(crate) type_len: u32,
    pub(crate) str_off: u32,
    pub(crate) str_len: u32,
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    b.get(o..o.checked_add(4)?)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

fn bad(detail: impl Into<std::borrow::Cow<'static, str>>) -> Error {
    Error::malformed("BTF", detail)
}

impl Header {
    /// Reads and checks the header at the start of `b` (the sections may lie beyond `b`).
    pub(crate) fn read(b: &[u8]) -> Result<Self> {
        if b.len() < 24 || b[0..2] != MAGIC {
            return Err(bad("no little-endian BTF magic 9f eb"));
        }
        if b[2] != 1 {
            return Err(bad(format!("version {} (only 1 is known)", b[2])));
        }
        let f = |o| u32_at(b, o).unwrap_or(u32::MAX);
        let h = Header {
            hdr_len: f(4),
            type_off: f(8),
            type_len: f(12),
            str_off: f(16),
            str_len: f(20),
        };
        if !(24..=MAX_HDR_LEN).contains(&h.hdr_len) {
            return Err(bad(format!("header length {}", h.hdr_len)));
        }
        if h.str_len == 0 || h.type_len % 4 != 0 {
            return Err(bad("empty string section or unaligned type section"));
        }
        let end = |off: u32, len: u32| u64::from(h.hdr_len) + u64::from(off) + u64::from(len);
        let total = end(h.type_off, h.type_len).max(end(h.str_off, h.str_len));
        if total > MAX_BTF as u64 {
            return Err(Error::Limit {
                what: "BTF size",
                limit: MAX_BTF as u64,
            });
        }
        Ok(h)
    }

    /// [`Header::read`], without the error: for scanning.
    pub(crate) fn parse_prefix(b: &[u8]) -> Option<Self> {
        Self::read(b).ok()
    }

    /// Reads and checks the header at the start of `b`; the sections must fit in `b`.
    pub(crate) fn parse(b: &[u8]) -> Result<Self> {
        let h = Self::read(b)?;
        if h.total_len() > b.len() {
            return Err(bad(format!(
                "sections end at {}, beyond the {} bytes given",
                h.total_len(),
                b.len()
            )));
        }
        Ok(h)
    }

    /// Bytes from the header's start to the end of the last section.
    pub(crate) fn total_len(&self) -> usize {
        let end = |off: u32, len: u32| self.hdr_len as usize + off as usize + len as usize;
        end(self.type_off, self.type_len).max(end(self.str_off, self.str_len))
    }
}

/// Size of the data following a type's 12-byte record, by kind; `None` for unknown kinds.
fn extra_len(kind: u32, vlen: usize) -> Option<usize> {
    Some(match kind {
        1 => 4,                    // INT: encoding
        2 | 7..=12 | 16 | 18 => 0, // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
        3 => 12,                   // ARRAY
        4 | 5 => 12 * vlen,        // STRUCT, UNION: members
        6 => 8 * vlen,             // ENUM
        13 => 8 * vlen,            // FUNC_PROTO: params
        14 => 4,                   // VAR: linkage
        15 => 12 * vlen,           // DATASEC
        17 => 4,                   // DECL_TAG: component index
        19 => 12 * vlen,           // ENUM64
        _ => return None,
    })
}

/// Our own bounded walk over the type section, before btfparse sees it: every record fits,
/// every kind is known, every name is in the string section, NUL-terminated within
/// [`MAX_NAME`] bytes, and the names add up to at most [`MAX_NAME_BYTES`]. Counts the types
/// and, if asked, whether a struct named `find_struct` is among them.
pub(crate) fn prewalk(b: &[u8], h: &Header, find_struct: Option<&str>) -> Result<Walk> {
    let types_start = (h.hdr_len + h.type_off) as usize;
    let types_end = types_start + h.type_len as usize;
    let strings_start = (h.hdr_len + h.str_off) as usize;
    let strings = &b[strings_start..strings_start + h.str_len as usize];
    if strings.first() != Some(&0) {
        return Err(bad("string section does not start with the empty string"));
    }
    let mut name_bytes: u64 = 0;
    let mut check_name = |off: u32| -> Result<()> {
        if off == 0 {
            return Ok(());
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
        Ok(())
    };
    let mut at = types_start;
    let mut count = 0usize;
    let mut found = false;
    while at < types_end {
        let (Some(name_off), Some(info)) = (u32_at(b, at), u32_at(b, at + 4)) else {
            return Err(bad(format!("type record at {at} truncated")));
        };
        if at + 12 > types_end {
            return Err(bad(format!("type record at {at} truncated")));
        }
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let extra = extra_len(kind, vlen).ok_or_else(|| Error::Unavailable {
            what: "BTF kind",
            reason: format!(
                "type {} has kind {kind}, unknown to this parser (newest known: 19, ENUM64); \
                     use an ISF or an older kernel's BTF",
                count + 1
            )
            .into(),
        })?;
        let data = at + 12;
        let next = data + extra;
        if next > types_end {
            return Err(bad(format!(
                "type {} runs past the type section",
                count + 1
            )));
        }
        check_name(name_off)?;
        if kind == 4 && !found {
            if let Some(want) = find_struct {
                let name = strings.get(name_off as usize..).unwrap_or(&[]);
                found = name.starts_with(want.as_bytes()) && name.get(want.len()) == Some(&0);
            }
        }
        let entry = match kind {
            4 | 5 | 19 => 12,
            6 | 13 => 8,
            _ => 0,
        };
        if entry > 0 {
            for i in 0..vlen {
                check_name(u32_at(b, data + i * entry).unwrap_or(0))?;
            }
        }
        count += 1;
        at = next;
    }
    Ok(Walk {
        types: count,
        found,
    })
}

/// What [`prewalk`] saw.
pub(crate) struct Walk {
    /// How many types.
    pub(crate) types: usize,
    /// Whether the struct asked for is defined.
    pub(crate) found: bool,
}

/// btfparse's input: the BTF bytes.
struct Bytes<'a>(&'a [u8]);

impl Readable for Bytes<'_> {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(s) => {
                buffer.copy_from_slice(s);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::IOError,
                "read beyond the BTF bytes",
            )),
        }
    }
}

/// Parses BTF `bytes` into a [`Model`].
pub(crate) fn parse(bytes: &[u8]) -> Result<Model> {
    let h = Header::parse(bytes)?;
    let count = prewalk(bytes, &h, None)?.types;
    let bytes = &bytes[..h.total_len()];
    // btfparse is not ours: should it still panic on something the pre-walk let through,
    // that is a malformed BTF to our caller, not a crash of the introspecting process.
    let info = std::panic::catch_unwind(|| TypeInformation::new(&Bytes(bytes)))
        .map_err(|_| bad("the BTF parser panicked"))?
        .map_err(|e| bad(format!("btfparse: {e:?}")))?;
    let model = convert(&info, count);
    // Freeing btfparse's maps (a String per name, a BTreeMap node per type) takes 25-40 ms
    // on the 6.x kernels: done on another thread, off the bootstrap's path. Should the
    // thread not start, the drop happens here.
    let _ = std::thread::Builder::new()
        .name("btfparse-drop".into())
        .spawn(move || drop(info));
    model
}

fn convert(info: &TypeInformation, count: usize) -> Result<Model> {
    let mut m = Model::new();
    // Room for the pointer/array types the global-types table adds later: growing a
    // vector of 100k types then would copy it.
    m.types.reserve(count + 2 * super::GLOBAL_TYPES.len() + 1);
    for (&id, var) in info.get() {
        if id as usize != m.len() {
            return Err(bad(format!("type ids not contiguous at {id}")));
        }
        let named = |m: &mut Model, n: &Option<String>| m.intern(n.as_deref().unwrap_or(""));
        let (name, kind) = match var {
            TypeVariant::Void => (Name::default(), Kind::Void),
            TypeVariant::Int(t) => (
                named(&mut m, t.name())?,
                Kind::Int {
                    size: clamp(*t.size()),
                    signed: *t.signed(),
                    char: *t.char(),
                    boolean: *t.boolean(),
                },
            ),
            TypeVariant::Float(t) => (
                named(&mut m, t.name())?,
                Kind::Float {
                    size: clamp(*t.size()),
                },
            ),
            TypeVariant::Typedef(t) => (named(&mut m, t.name())?, Kind::Typedef(*t.tid())),
            TypeVariant::Ptr(t) => (Name::default(), Kind::Pointer(*t.tid())),
            TypeVariant::Const(t) => qualified(Qualifier::Const, *t.tid()),
            TypeVariant::Volatile(t) => qualified(Qualifier::Volatile, *t.tid()),
            TypeVariant::Restrict(t) => qualified(Qualifier::Restrict, *t.tid()),
            TypeVariant::TypeTag(t) => qualified(Qualifier::Tag, *t.tid()),
            TypeVariant::Array(t) => (
                Name::default(),
                Kind::Array {
                    element: *t.element_tid(),
                    len: *t.element_count(),
                },
            ),
            TypeVariant::Struct(t) => {
                let name = named(&mut m, t.name())?;
                let members = members(&mut m, t.member_list())?;
                (
                    name,
                    Kind::Record {
                        union: false,
                        size: clamp(*t.size()),
                        members,
                    },
                )
            }
            TypeVariant::Union(t) => {
                let name = named(&mut m, t.name())?;
                let members = members(&mut m, t.member_list())?;
                (
                    name,
                    Kind::Record {
                        union: true,
                        size: clamp(*t.size()),
                        members,
                    },
                )
            }
            TypeVariant::Enum(t) => {
                let name = named(&mut m, t.name())?;
                let start = m.enumerators.len();
                for v in t.named_value_list() {
                    let value = match v.value {
                        btfparse::Integer32Value::Signed(x) => i64::from(x),
                        btfparse::Integer32Value::Unsigned(x) => i64::from(x),
                    };
                    let n = m.intern(&v.name)?;
                    m.enumerators.push((n, value));
                }
                (
                    name,
                    Kind::Enum {
                        size: clamp(*t.size()),
                        signed: *t.signed(),
                        values: range(start, m.enumerators.len()),
                    },
                )
            }
            TypeVariant::Enum64(t) => {
                let name = named(&mut m, t.name())?;
                let start = m.enumerators.len();
                for v in t.named_value_list() {
                    // Unsigned values above i64::MAX keep their bit pattern.
                    let value = match v.value {
                        btfparse::Integer64Value::Signed(x) => x,
                        btfparse::Integer64Value::Unsigned(x) => x as i64,
                    };
                    let n = m.intern(&v.name)?;
                    m.enumerators.push((n, value));
                }
                (
                    name,
                    Kind::Enum {
                        size: clamp(*t.size()),
                        signed: *t.signed(),
                        values: range(start, m.enumerators.len()),
                    },
                )
            }
            TypeVariant::Fwd(t) => (
                named(&mut m, t.name())?,
                Kind::Forward {
                    union: t.header().kind_flag(),
                },
            ),
            TypeVariant::Var(t) => (named(&mut m, t.name())?, Kind::Variable(*t.tid())),
            TypeVariant::Func(_) | TypeVariant::FuncProto(_) => (Name::default(), Kind::Function),
            TypeVariant::DataSec(_) | TypeVariant::DeclTag(_) => (Name::default(), Kind::Other),
        };
        m.push(Type { name, kind })?;
    }
    Ok(m)
}

fn qualified(q: Qualifier, t: TypeId) -> (Name, Kind) {
    (Name::default(), Kind::Qualified(q, t))
}

fn clamp(x: usize) -> u32 {
    u32::try_from(x).unwrap_or(u32::MAX)
}

fn range(start: usize, end: usize) -> (u32, u32) {
    (clamp(start), clamp(end - start))
}

fn members(m: &mut Model, list: &[btfparse::Member]) -> Result<(u32, u32)> {
    let start = m.members.len();
    for mem in list {
        let name = match mem.name() {
            Some(n) => m.intern(&n)?,
            None => Name::default(),
        };
        let (bit_offset, bit_size) = match mem.offset() {
            btfparse::Offset::ByteOffset(b) => (
                b.checked_mul(8)
                    .ok_or_else(|| bad("member offset overflows"))?,
                0,
            ),
            btfparse::Offset::BitOffsetAndSize(o, s) => (o, u8::try_from(s).unwrap_or(u8::MAX)),
        };
        m.members.push(Member {
            name,
            ty: mem.tid(),
            bit_offset,
            bit_size,
        });
    }
    Ok(range(start, m.members.len()))
}
