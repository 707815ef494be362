//! Hand-built BTF: the shapes a hostile guest can give (cycles, ids out of range, unknown
//! kinds, anonymous members, bitfields, ENUM64), small enough to reason about.

use super::*;
use crate::ImageCopy;

/// Builds a BTF blob type by type.
#[derive(Default)]
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Builder {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
        }
    }

    fn name(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }

    fn record(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, size_or_type: u32) {
        let n = self.name(name);
        let info = (u32::from(kflag) << 31) | (kind << 24) | vlen;
        for w in [n, info, size_or_type] {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }

    fn word(&mut self, w: u32) {
        self.types.extend_from_slice(&w.to_le_bytes());
    }

    fn int(&mut self, name: &str, size: u32, signed: bool) {
        self.record(name, 1, 0, false, size);
        self.word((u32::from(signed) << 24) | (size * 8));
    }

    /// members: (name, type id, bit offset, bitfield width)
    fn record_type(
        &mut self,
        name: &str,
        union: bool,
        size: u32,
        members: &[(&str, u32, u32, u32)],
    ) {
        let kflag = members.iter().any(|m| m.3 > 0);
        self.record(
            name,
            if union { 5 } else { 4 },
            members.len() as u32,
            kflag,
            size,
        );
        for &(n, ty, off, width) in members {
            let n = self.name(n);
            self.word(n);
            self.word(ty);
            self.word(if kflag { (width << 24) | off } else { off });
        }
    }

    fn build(&self) -> Vec<u8> {
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strings);
        b
    }
}

/// 1 int, 2 unsigned int, 3 struct inner { int a; unsigned int flag:1, mode:3; },
/// 4 anonymous union { inner in; long l }, 5 struct outer { int x; union {…}; inner arr[4]; int *p },
/// 6 array inner[4], 7 ptr → int, 8 long
fn sample() -> Builder {
    let mut b = Builder::new();
    b.int("int", 4, true); // 1
    b.int("unsigned int", 4, false); // 2
    b.record_type(
        "inner",
        false,
        8,
        &[("a", 1, 0, 0), ("flag", 2, 32, 1), ("mode", 2, 33, 3)],
    ); // 3
    b.record_type("", true, 8, &[("in", 3, 0, 0), ("l", 8, 0, 0)]); // 4
    b.record_type(
        "outer",
        false,
        48,
        &[
            ("x", 1, 0, 0),
            ("", 4, 64, 0),
            ("arr", 6, 128, 0),
            ("p", 7, 320, 0),
        ],
    ); // 5
    b.record("", 3, 0, false, 0); // 6 array
    b.word(3);
    b.word(1);
    b.word(4);
    b.record("", 2, 0, false, 1); // 7 ptr → int
    b.int("long", 8, true); // 8
    b
}

#[test]
fn paths_anonymous_members_bitfields_arrays() {
    let t = Types::from_btf(sample().build()).unwrap();
    assert_eq!(t.size_of("outer").unwrap(), 48);
    assert_eq!(
        t.field("outer", "in.a").unwrap().offset,
        8,
        "through the anonymous union"
    );
    let flag = t.field("outer", "in.flag").unwrap();
    assert_eq!((flag.offset, flag.bits, flag.size), (12, Some((0, 1)), 4));
    let mode = t.field("outer", "in.mode").unwrap();
    assert_eq!(mode.bits, Some((1, 3)));
    let arr = t.field("outer", "arr").unwrap();
    assert_eq!(arr.type_name, "struct inner [4]");
    assert_eq!(arr.element, Some(("inner".to_owned(), 4)));
    assert_eq!(t.array_len("outer", "arr"), Some(4));
    assert_eq!(t.field("outer", "arr[2].a").unwrap().offset, 16 + 16);
    assert!(t.field("outer", "arr[4]").is_err(), "index out of bounds");
    let p = t.field("outer", "p").unwrap();
    assert_eq!(
        (p.type_name.as_str(), p.pointee.as_deref()),
        ("int *", Some("int"))
    );
    assert!(t.field("outer", "p.x").is_err());
    assert!(t.field("outer", "nope").is_err());
    assert!(t.field("outer", "").is_err());
    assert!(t.field("outer", "x..y").is_err());
    assert_eq!(
        t.member_names("outer").unwrap(),
        ["x", "in", "l", "arr", "p"]
    );
}

#[test]
fn typedef_cycles_and_bad_ids_are_errors() {
    let mut b = sample();
    b.record("loop_a", 8, 0, false, 10); // 9 typedef → 10
    b.record("loop_b", 8, 0, false, 9); // 10 typedef → 9
    b.record_type(
        "victim",
        false,
        16,
        &[("c", 9, 0, 0), ("d", 0xffff_fff0, 64, 0)],
    ); // 11
    b.record("", 2, 0, false, 12); // 12 pointer to itself
    b.record_type("selfish", false, 8, &[("", 13, 0, 0)]); // 13 anonymous member of itself
    let t = Types::from_btf(b.build()).unwrap();
    assert!(matches!(t.size_of("loop_a"), Err(Error::Malformed { .. })));
    assert!(matches!(
        t.field("victim", "c"),
        Err(Error::Malformed { .. })
    ));
    assert!(matches!(
        t.field("victim", "d"),
        Err(Error::Malformed { .. })
    ));
    assert!(t.field("selfish", "anything").is_err());
    assert!(t.member_names("selfish").is_err());
    // The export meets the same cycles and refuses them.
    assert!(t.to_isf(&Default::default(), "x").is_err());
}

#[test]
fn unknown_kind_is_named() {
    let mut b = sample();
    b.record("future", 25, 0, false, 0);
    match Types::from_btf(b.build()) {
        Err(Error::Unavailable { reason, .. }) => assert!(reason.contains("kind 25"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn enum64_and_enumerators() {
    let mut b = sample();
    b.record("big", 19, 2, false, 8); // ENUM64, unsigned
    for (name, v) in [("BIG_SMALL", 3u64), ("BIG_HUGE", u64::MAX - 1)] {
        let n = b.name(name);
        b.word(n);
        b.word(v as u32);
        b.word((v >> 32) as u32);
    }
    b.record("", 6, 1, false, 4); // ENUM, anonymous
    let n = b.name("ANON_ONE");
    b.word(n);
    b.word(1);
    let t = Types::from_btf(b.build()).unwrap();
    assert_eq!(t.enumerator("BIG_SMALL").unwrap(), 3);
    assert_eq!(t.enumerator("BIG_HUGE").unwrap() as u64, u64::MAX - 1);
    assert_eq!(t.enumerator("ANON_ONE").unwrap(), 1);
    assert_eq!(t.size_of("enum big").unwrap(), 8);
    assert!(t.enumerator("NOPE").is_err());
}

#[test]
fn hostile_strings_are_bounded() {
    let mut b = sample();
    // A name without its NUL within the limit.
    let long = "x".repeat(btf::MAX_NAME + 10);
    b.record(&long, 8, 0, false, 1);
    assert!(matches!(
        Types::from_btf(b.build()),
        Err(Error::Malformed { .. })
    ));
    let mut bytes = sample().build();
    bytes[24] = 0xff; // first type's name offset far beyond the strings
    bytes[27] = 0x7f;
    assert!(Types::from_btf(bytes).is_err());
}

#[test]
fn isf_round_trip_of_the_sample() {
    let t = Types::from_btf(sample().build()).unwrap();
    let json = t.to_isf(&Default::default(), "Linux version test").unwrap();
    let bytes = serde_json::to_vec(&json).unwrap();
    let (back, _, info) = Types::from_isf(&bytes).unwrap();
    assert_eq!(info.banner.as_deref(), Some("Linux version test"));
    for path in [
        "x", "in.a", "in.flag", "in.mode", "arr", "arr[3].a", "p", "l",
    ] {
        let (a, b) = (
            t.field("outer", path).unwrap(),
            back.field("outer", path).unwrap(),
        );
        assert_eq!(
            (a.offset, a.bits, a.size),
            (b.offset, b.bits, b.size),
            "{path}"
        );
    }
}

#[test]
fn hostile_isf_gives_errors() {
    let isf = |body: &str| {
        format!(
            r#"{{"metadata":{{"format":"6.2.0","producer":{{"name":"t","version":"1.0.0"}}}},{body}}}"#
        )
    };
    let cases = [
        "not json".to_owned(),
        r#"{"metadata":{"format":"9.0.0"},"base_types":{},"user_types":{},"enums":{},"symbols":{}}"#
            .to_owned(),
        isf(r#""base_types":{},"user_types":{},"enums":{}"#),
        isf(
            r#""base_types":{},"enums":{},"symbols":{},
            "user_types":{"s":{"kind":"struct","size":8,"fields":{"f":{"offset":0,"type":{"kind":"base","name":"undefined"}}}}}"#,
        ),
        isf(
            r#""base_types":{},"enums":{},"symbols":{},
            "user_types":{"s":{"kind":"struct","size":8,"fields":{"f":{"offset":99999999999,"type":{"kind":"function"}}}}}"#,
        ),
        isf(r#""base_types":{"int":{"size":-4,"signed":true,"kind":"int","endian":"little"}},"user_types":{},"enums":{},"symbols":{}"#),
        isf(r#""base_types":{},"user_types":{},"enums":{},"symbols":{"x":{"address":"zero"}}"#),
    ];
    for case in &cases {
        assert!(Types::from_isf(case.as_bytes()).is_err(), "{case}");
    }
    // A pointer chain deeper than any walk follows.
    let mut desc = r#"{"kind":"function"}"#.to_owned();
    for _ in 0..100 {
        desc = format!(r#"{{"kind":"pointer","subtype":{desc}}}"#);
    }
    let deep = isf(&format!(
        r#""base_types":{{}},"enums":{{}},"symbols":{{}},
        "user_types":{{"s":{{"kind":"struct","size":8,"fields":{{"f":{{"offset":0,"type":{desc}}}}}}}}}"#
    ));
    assert!(matches!(
        Types::from_isf(deep.as_bytes()),
        Err(Error::Malformed { .. })
    ));
}

fn with_task_struct() -> Vec<u8> {
    let mut b = sample();
    b.record_type("task_struct", false, 8, &[("pid", 1, 0, 0)]);
    b.build()
}

#[test]
fn carving_skips_fake_magic_and_needs_mapped_pages() {
    let btf = with_task_struct();
    let mut bytes = vec![0u8; 64 * 1024];
    // Chance hits of the magic with nonsense headers, and one plausible header whose types
    // are garbage: skipped.
    for i in 0..200 {
        bytes[i * 64..i * 64 + 4].copy_from_slice(&[0x9f, 0xeb, 0x01, 0x00]);
    }
    let mut fake = btf.clone();
    fake[24..28].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
    bytes[20_000..20_000 + fake.len()].copy_from_slice(&fake);
    let at = 40_000;
    bytes[at..at + btf.len()].copy_from_slice(&btf);
    let base = 0xffff_ffff_8100_0000;
    let image = ImageCopy::new(base, bytes.clone());
    let (va, carved) = carve_btf(&image).unwrap();
    assert_eq!((va, &carved), (base + at as u64, &btf));
    let (va, carved) = carve_btf_at(&image, va, va + btf.len() as u64).unwrap();
    assert_eq!((va, carved), (base + at as u64, btf.clone()));
    assert!(carve_btf_at(&image, va, va - 1).is_err());
    assert!(carve_btf_at(&image, va, va.wrapping_add(1 << 40)).is_err());
    assert!(carve_btf_at(&image, base - 4096, base + 4096).is_err());
    // The page holding the BTF unmapped: not found (the fake's parse error is reported).
    let mut present = vec![true; bytes.len().div_ceil(4096)];
    present[at / 4096] = false;
    let image = ImageCopy::with_presence(base, bytes, present).unwrap();
    assert!(carve_btf(&image).is_err());
    assert!(carve_btf_at(&image, base + at as u64, base + (at + btf.len()) as u64).is_err());
    // Many plausible fakes: bounded.
    let mut many = Vec::new();
    for _ in 0..40 {
        many.extend_from_slice(&fake);
    }
    assert!(matches!(
        carve_btf(&ImageCopy::new(base, many)),
        Err(Error::Limit { .. })
    ));
}
