//! The test oracle: BTF parsed by the btfparse crate, converted into a [`Model`] and
//! compared with our reader's, type by type, on the real kernels.

use btfparse::{Readable, Type as _, TypeInformation, TypeVariant};

use super::model::{Kind, Member, Model, Name, Qualifier, Type, TypeId};
use crate::error::Result;

fn bad(detail: impl Into<std::borrow::Cow<'static, str>>) -> crate::Error {
    crate::Error::malformed("BTF (btfparse)", detail)
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

/// btfparse's parse of `bytes` as a [`Model`].
fn parse(bytes: &[u8]) -> Result<Model> {
    let info = TypeInformation::new(&Bytes(bytes)).map_err(|e| bad(format!("{e:?}")))?;
    convert(&info)
}

fn convert(info: &TypeInformation) -> Result<Model> {
    let mut m = Model::new();
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

/// Our reader and btfparse agree on every type, member and enumerator of each kernel's BTF
/// (carved from `ImageCopy::from_vmlinux`, as the bootstrap does).
#[test]
fn our_reader_matches_btfparse_on_real_kernels() {
    let Some(dir) = std::env::var_os("VMI_LINUX_KERNELS") else {
        assert_ne!(
            std::env::var("VMI_REQUIRE_QEMU").as_deref(),
            Ok("1"),
            "VMI_LINUX_KERNELS is unset and VMI_REQUIRE_QEMU=1"
        );
        eprintln!("SKIPPED: VMI_LINUX_KERNELS is unset");
        return;
    };
    for suite in ["bullseye", "bookworm", "trixie", "sid"] {
        let elf = std::fs::read(std::path::Path::new(&dir).join(suite).join("vmlinux")).unwrap();
        let image = crate::ImageCopy::from_vmlinux(&elf, 256 << 20).unwrap();
        let (_, bytes) = super::carve_btf(&image).unwrap();
        let ours = super::btf::parse(&bytes, 0).unwrap();
        let theirs = parse(&bytes).unwrap();
        assert_eq!(ours.len(), theirs.len(), "{suite}: type count");
        let text = |m: &Model, n: Name| m.text(n).to_owned();
        for id in 0..ours.len() {
            let (a, b) = (ours.types[id], theirs.types[id]);
            assert_eq!(
                text(&ours, a.name),
                text(&theirs, b.name),
                "{suite}: type {id} name"
            );
            match (a.kind, b.kind) {
                (
                    Kind::Record {
                        union: u1,
                        size: s1,
                        ..
                    },
                    Kind::Record {
                        union: u2,
                        size: s2,
                        ..
                    },
                )
                | (
                    Kind::Enum {
                        signed: u1,
                        size: s1,
                        ..
                    },
                    Kind::Enum {
                        signed: u2,
                        size: s2,
                        ..
                    },
                ) => assert_eq!((u1, s1), (u2, s2), "{suite}: type {id}"),
                (x, y) => assert_eq!(x, y, "{suite}: type {id}"),
            }
            let id = id as TypeId;
            let (ma, mb) = (ours.members_of(id), theirs.members_of(id));
            assert_eq!(ma.len(), mb.len(), "{suite}: type {id} member count");
            for (x, y) in ma.iter().zip(mb) {
                assert_eq!(
                    (text(&ours, x.name), x.ty, x.bit_offset, x.bit_size),
                    (text(&theirs, y.name), y.ty, y.bit_offset, y.bit_size),
                    "{suite}: type {id} member"
                );
            }
            let (ea, eb) = (ours.enumerators_of(id), theirs.enumerators_of(id));
            assert_eq!(ea.len(), eb.len(), "{suite}: type {id} enumerator count");
            for (x, y) in ea.iter().zip(eb) {
                assert_eq!(
                    (text(&ours, x.0), x.1),
                    (text(&theirs, y.0), y.1),
                    "{suite}: type {id}"
                );
            }
        }
        eprintln!("{suite}: {} types identical in both parsers", ours.len());
    }
}
