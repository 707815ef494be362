//! Pure protocol logic: no I/O.

use vmi_core::{Error, Result};

/// Largest packet we accept from the stub, after run-length expansion. QEMU's own
/// limit is 131104 bytes; anything bigger is treated as hostile.
pub const MAX_PACKET: usize = 1 << 20;

/// The modulo-256 sum of the payload bytes.
pub fn checksum(data: &[u8]) -> u8 {
    data.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

/// Frames `payload` as `$<escaped payload>#<checksum>`.
pub fn encode_packet(payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(payload.len() + 8);
    for &b in payload {
        if matches!(b, b'$' | b'#' | b'}' | b'*') {
            body.push(b'}');
            body.push(b ^ 0x20);
        } else {
            body.push(b);
        }
    }
    let sum = checksum(&body);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(b'$');
    out.extend_from_slice(&body);
    out.push(b'#');
    out.extend_from_slice(format!("{sum:02x}").as_bytes());
    out
}

/// What the front of a receive buffer holds, as [`scan`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan<'a> {
    /// No packet starts in the buffer: only acknowledgements or noise.
    Nothing,
    /// A packet starts at `start` but its end (`#xx`) has not arrived.
    Partial {
        /// Where the `$` or `%` is.
        start: usize,
    },
    /// A complete packet; the buffer's first `consumed` bytes are done with (noise
    /// before the packet included).
    Complete {
        /// The packet.
        frame: Frame<'a>,
        /// Bytes of the buffer up to and including the checksum.
        consumed: usize,
    },
}

/// A complete packet found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// The checksum matches: the raw body, still escaped and run-length encoded (see
    /// [`decode_body`]).
    Packet {
        /// The bytes between `$`/`%` and `#`.
        body: &'a [u8],
        /// A `%` notification, which is never acknowledged.
        notification: bool,
    },
    /// A wrong or non-hex checksum: a corrupted packet, answered with `-` unless it is
    /// a notification. It is consumed like a good one, so it cannot fail later reads.
    Corrupt {
        /// A `%` notification.
        notification: bool,
    },
}

/// Finds the first packet (`$…#xx`, or a `%…#xx` notification) in received bytes.
pub fn scan(buf: &[u8]) -> Scan<'_> {
    let Some(start) = buf.iter().position(|&b| b == b'$' || b == b'%') else {
        return Scan::Nothing;
    };
    let Some(hash) = buf[start..].iter().position(|&b| b == b'#') else {
        return Scan::Partial { start };
    };
    let hash = start + hash;
    let Some(sum) = buf.get(hash + 1..hash + 3) else {
        return Scan::Partial { start };
    };
    let body = &buf[start + 1..hash];
    let notification = buf[start] == b'%';
    let frame = match parse_hex_u64(sum) {
        Ok(sum) if sum == u64::from(checksum(body)) => Frame::Packet { body, notification },
        _ => Frame::Corrupt { notification },
    };
    Scan::Complete {
        frame,
        consumed: hash + 3,
    }
}

/// The first acknowledgement or packet start in received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Token {
    /// `+`: the last packet sent arrived intact.
    Ack,
    /// `-`: it arrived corrupted; send it again.
    Nak,
    /// `$` or `%`: a packet begins (use [`scan`]).
    PacketStart,
}

/// The first [`Token`] in `buf` and its position; `None` if `buf` holds only noise.
pub fn first_token(buf: &[u8]) -> Option<(usize, Token)> {
    buf.iter().enumerate().find_map(|(i, b)| match b {
        b'+' => Some((i, Token::Ack)),
        b'-' => Some((i, Token::Nak)),
        b'$' | b'%' => Some((i, Token::PacketStart)),
        _ => None,
    })
}

/// Undoes escapes (`}` + byte^0x20) and run-length encoding (`X*n`: repeat the
/// previous byte `n - 29` more times) of a received packet body.
pub fn decode_body(body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'}' => {
                let b = *body
                    .get(i + 1)
                    .ok_or_else(|| Error::malformed("gdbstub", "escape at end of packet"))?;
                out.push(b ^ 0x20);
                i += 2;
            }
            b'*' => {
                let prev = *out.last().ok_or_else(|| {
                    Error::malformed("gdbstub", "run-length marker without a byte to repeat")
                })?;
                let n = *body
                    .get(i + 1)
                    .ok_or_else(|| Error::malformed("gdbstub", "run-length marker at end"))?;
                let count = usize::from(n)
                    .checked_sub(29)
                    .ok_or_else(|| Error::malformed("gdbstub", "bad run-length count"))?;
                if out.len() + count > MAX_PACKET {
                    return Err(Error::malformed("gdbstub", "packet too large"));
                }
                out.extend(std::iter::repeat_n(prev, count));
                i += 2;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(out)
}

/// Hex-encodes bytes (lower case).
pub fn to_hex(data: &[u8]) -> String {
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Decodes a hex string into bytes.
pub fn from_hex(s: &[u8]) -> Result<Vec<u8>> {
    if s.len() % 2 != 0 {
        return Err(Error::malformed("gdbstub", "odd-length hex data"));
    }
    s.chunks_exact(2)
        .map(|p| {
            let hi = hex_digit(p[0])?;
            let lo = hex_digit(p[1])?;
            Ok(hi << 4 | lo)
        })
        .collect()
}

fn hex_digit(c: u8) -> Result<u8> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(Error::malformed(
            "gdbstub",
            format!("not a hex digit: {:?}", c as char),
        )),
    }
}

/// Parses a big-endian hex number as the protocol writes addresses and counts.
pub fn parse_hex_u64(s: &[u8]) -> Result<u64> {
    if s.is_empty() || s.len() > 16 {
        return Err(Error::malformed("gdbstub", "bad hex number"));
    }
    s.iter()
        .try_fold(0u64, |acc, &c| Ok(acc << 4 | u64::from(hex_digit(c)?)))
}

/// Why the target stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// Stopped with a signal (`S`/`T` packets), with the details `T` packets carry.
    Signal {
        /// The signal (5 = SIGTRAP for breakpoints and steps, 2 = SIGINT).
        signal: u8,
        /// The thread (vCPU + 1 on QEMU) that stopped, if reported.
        thread: Option<u64>,
        /// A watchpoint triggered: the kind and the data address.
        watch: Option<(WatchKind, u64)>,
        /// A software breakpoint was hit (`swbreak`).
        swbreak: bool,
        /// A hardware breakpoint was hit (`hwbreak`).
        hwbreak: bool,
    },
    /// The process exited (`W`), with the status.
    Exited(u8),
    /// The process was terminated by a signal (`X`).
    Terminated(u8),
}

/// Watchpoint kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchKind {
    /// Write (`watch`, `Z2`).
    Write,
    /// Read (`rwatch`, `Z3`).
    Read,
    /// Any access (`awatch`, `Z4`).
    Access,
}

/// Parses a stop reply (`S05`, `T05thread:01;watch:ffff8000;`, `W00`, `X09`).
pub fn parse_stop_reply(p: &[u8]) -> Result<StopReason> {
    let bad = || {
        Error::malformed(
            "gdbstub",
            format!("bad stop reply {:?}", String::from_utf8_lossy(p)),
        )
    };
    let (&kind, rest) = p.split_first().ok_or_else(bad)?;
    let code = |r: &[u8]| -> Result<u8> {
        let v = parse_hex_u64(r.get(..2).ok_or_else(bad)?)?;
        u8::try_from(v).map_err(|_| bad())
    };
    match kind {
        b'W' => Ok(StopReason::Exited(code(rest)?)),
        b'X' => Ok(StopReason::Terminated(code(rest)?)),
        b'S' | b'T' => {
            let signal = code(rest)?;
            let mut thread = None;
            let mut watch = None;
            let mut swbreak = false;
            let mut hwbreak = false;
            if kind == b'T' {
                for pair in rest[2..].split(|&c| c == b';').filter(|s| !s.is_empty()) {
                    let mut kv = pair.splitn(2, |&c| c == b':');
                    let k = kv.next().unwrap_or_default();
                    let v = kv.next().unwrap_or_default();
                    match k {
                        b"thread" => {
                            // "p<pid>.<tid>" in multiprocess form, else "<tid>".
                            let tid = v.rsplit(|&c| c == b'.').next().unwrap_or(v);
                            let tid = tid.strip_prefix(b"p").unwrap_or(tid);
                            thread = Some(parse_hex_u64(tid)?);
                        }
                        b"watch" => watch = Some((WatchKind::Write, parse_hex_u64(v)?)),
                        b"rwatch" => watch = Some((WatchKind::Read, parse_hex_u64(v)?)),
                        b"awatch" => watch = Some((WatchKind::Access, parse_hex_u64(v)?)),
                        b"swbreak" => swbreak = true,
                        b"hwbreak" => hwbreak = true,
                        _ => {} // register values and unknown keys are not needed
                    }
                }
            }
            Ok(StopReason::Signal {
                signal,
                thread,
                watch,
                swbreak,
                hwbreak,
            })
        }
        _ => Err(bad()),
    }
}

/// One register of the target description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegDesc {
    /// Name (`rax`, `eflags`, `cr3`, …).
    pub name: String,
    /// Register number used by `p`/`P`.
    pub regnum: usize,
    /// Size in bits.
    pub bitsize: usize,
    /// Byte offset in the `g` packet.
    pub offset: usize,
}

/// Extracts `<reg .../>` elements from target XML documents, in order, numbering them
/// like GDB does (sequentially, unless `regnum` is given). `docs` are the main
/// document followed by its includes in inclusion order.
pub fn parse_target_regs(docs: &[String]) -> Result<Vec<RegDesc>> {
    let mut regs = Vec::new();
    let mut next_num = 0usize;
    let mut offset = 0usize;
    for doc in docs {
        // QEMU's i386-64bit.xml comments out cs_base…es_base: skip comments.
        let doc = strip_xml_comments(doc);
        let mut rest = doc.as_str();
        while let Some(start) = rest.find("<reg ") {
            let tail = &rest[start..];
            let end = tail
                .find('>')
                .ok_or_else(|| Error::malformed("gdbstub", "unterminated <reg> element"))?;
            let elem = &tail[..end];
            let name = xml_attr(elem, "name")
                .ok_or_else(|| Error::malformed("gdbstub", "<reg> without name"))?;
            let bitsize: usize = xml_attr(elem, "bitsize")
                .and_then(|b| b.parse().ok())
                .filter(|b| *b > 0 && *b <= 4096)
                .ok_or_else(|| Error::malformed("gdbstub", "<reg> with bad bitsize"))?;
            let regnum = match xml_attr(elem, "regnum") {
                Some(n) => n
                    .parse()
                    .map_err(|_| Error::malformed("gdbstub", "<reg> with bad regnum"))?,
                None => next_num,
            };
            next_num = regnum + 1;
            regs.push(RegDesc {
                name: name.to_string(),
                regnum,
                bitsize,
                offset,
            });
            offset += bitsize.div_ceil(8);
            if regs.len() > 4096 {
                return Err(Error::malformed("gdbstub", "too many registers"));
            }
            rest = &tail[end..];
        }
    }
    Ok(regs)
}

/// `doc` without its `<!-- … -->` comments (an unterminated one runs to the end).
pub fn strip_xml_comments(doc: &str) -> String {
    let mut out = String::with_capacity(doc.len());
    let mut rest = doc;
    while let Some(start) = rest.find("<!--") {
        out.push_str(&rest[..start]);
        match rest[start + 4..].find("-->") {
            Some(end) => rest = &rest[start + 4 + end + 3..],
            None => return out,
        }
    }
    out.push_str(rest);
    out
}

/// The `href`s of `<xi:include>` elements.
pub fn xml_includes(doc: &str) -> Vec<String> {
    let mut v = Vec::new();
    let doc = strip_xml_comments(doc);
    let mut rest = doc.as_str();
    while let Some(start) = rest.find("<xi:include") {
        let tail = &rest[start..];
        let end = tail.find('>').unwrap_or(tail.len());
        if let Some(h) = xml_attr(&tail[..end], "href") {
            v.push(h.to_string());
        }
        rest = &tail[end..];
    }
    v
}

fn xml_attr<'a>(elem: &'a str, name: &str) -> Option<&'a str> {
    let mut search = elem;
    loop {
        let i = search.find(name)?;
        let after = &search[i + name.len()..];
        let preceded_ok = i == 0 || search.as_bytes()[i - 1].is_ascii_whitespace();
        if preceded_ok {
            if let Some(v) = after.strip_prefix("=\"") {
                return v.find('"').map(|e| &v[..e]);
            }
        }
        search = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trip() {
        let p = encode_packet(b"m1000,4");
        assert_eq!(p, b"$m1000,4#8e".to_vec());
        let esc = encode_packet(b"a#b$c}d*");
        assert_eq!(decode_body(&esc[1..esc.len() - 3]).unwrap(), b"a#b$c}d*");
    }

    #[test]
    fn run_length_decoding() {
        // "0* " = '0' repeated 1 + (32 - 29) = 4 times.
        assert_eq!(decode_body(b"0* ").unwrap(), b"0000");
        assert!(decode_body(b"*a").is_err());
        assert!(decode_body(b"0*\x01").is_err());
        assert!(decode_body(b"}").is_err());
    }

    #[test]
    fn stop_replies() {
        assert_eq!(
            parse_stop_reply(b"T05thread:p01.02;watch:ffff8000;").unwrap(),
            StopReason::Signal {
                signal: 5,
                thread: Some(2),
                watch: Some((WatchKind::Write, 0xffff_8000)),
                swbreak: false,
                hwbreak: false
            }
        );
        assert!(matches!(
            parse_stop_reply(b"T05swbreak:;thread:01;").unwrap(),
            StopReason::Signal {
                swbreak: true,
                thread: Some(1),
                ..
            }
        ));
        assert_eq!(parse_stop_reply(b"W00").unwrap(), StopReason::Exited(0));
        assert!(parse_stop_reply(b"T").is_err());
        assert!(parse_stop_reply(b"Q").is_err());
        assert!(parse_stop_reply(b"Tzz").is_err());
    }

    #[test]
    fn target_xml() {
        let main = r#"<target><architecture>i386:x86-64</architecture>
            <xi:include href="core.xml"/></target>"#
            .to_string();
        assert_eq!(xml_includes(&main), vec!["core.xml".to_string()]);
        let core = r#"<feature><reg name="rax" bitsize="64" type="int64"/>
            <reg name="eflags" bitsize="32" type="i386_eflags"/>
            <reg name="cr3" bitsize="64" regnum="30"/><reg name="cr4" bitsize="64"/></feature>"#
            .to_string();
        let regs = parse_target_regs(&[main, core]).unwrap();
        assert_eq!(regs.len(), 4);
        assert_eq!(
            (regs[1].name.as_str(), regs[1].offset, regs[1].regnum),
            ("eflags", 8, 1)
        );
        assert_eq!(
            (regs[3].name.as_str(), regs[3].regnum, regs[3].offset),
            ("cr4", 31, 20)
        );
        assert!(parse_target_regs(&["<reg name=\"x\" bitsize=\"0\"/>".into()]).is_err());
        // Commented-out registers (QEMU's cs_base…es_base) take no slot.
        let doc = r#"<reg name="gs" bitsize="32"/><!--reg name="cs_base" bitsize="64"/>
            <reg name="ss_base" bitsize="64"/--><reg name="fs_base" bitsize="64"/>"#;
        let regs = parse_target_regs(&[doc.to_string()]).unwrap();
        assert_eq!(regs.len(), 2);
        assert_eq!(
            (regs[1].name.as_str(), regs[1].regnum, regs[1].offset),
            ("fs_base", 1, 4)
        );
    }

    #[test]
    fn hex_helpers() {
        assert_eq!(from_hex(b"00ff10").unwrap(), vec![0, 255, 16]);
        assert!(from_hex(b"0").is_err());
        assert!(from_hex(b"zz").is_err());
        assert_eq!(
            parse_hex_u64(b"ffffffff81000000").unwrap(),
            0xffff_ffff_8100_0000
        );
        assert!(parse_hex_u64(b"").is_err());
        assert!(parse_hex_u64(b"11111111111111111").is_err());
        assert_eq!(to_hex(&[0xde, 0xad]), "dead");
    }

    #[test]
    fn scanning_received_bytes() {
        assert_eq!(scan(b""), Scan::Nothing);
        assert_eq!(scan(b"++noise-"), Scan::Nothing);
        assert_eq!(scan(b"+$T05thr"), Scan::Partial { start: 1 });
        assert_eq!(scan(b"+$OK#9"), Scan::Partial { start: 1 });
        assert_eq!(
            scan(b"x+$OK#9arest"),
            Scan::Complete {
                frame: Frame::Packet {
                    body: b"OK",
                    notification: false
                },
                consumed: 8
            }
        );
        assert_eq!(
            scan(b"%Stop:T05;#56"),
            Scan::Complete {
                frame: Frame::Corrupt { notification: true },
                consumed: 13
            }
        );
        let stop = encode_packet(b"T05thread:01;");
        assert!(matches!(
            scan(&stop),
            Scan::Complete { frame: Frame::Packet { body: b"T05thread:01;", .. }, consumed }
                if consumed == stop.len()
        ));
        // A wrong checksum and a checksum that is not hex are consumed alike.
        for bad in [&b"$OK#00$OK#9a"[..], b"$OK#zz$OK#9a"] {
            let Scan::Complete { frame, consumed } = scan(bad) else {
                panic!("{bad:?}")
            };
            assert_eq!(
                frame,
                Frame::Corrupt {
                    notification: false
                }
            );
            assert!(matches!(
                scan(&bad[consumed..]),
                Scan::Complete {
                    frame: Frame::Packet { body: b"OK", .. },
                    ..
                }
            ));
        }
    }

    #[test]
    fn acknowledgements_and_packet_starts() {
        assert_eq!(first_token(b"noise"), None);
        assert_eq!(first_token(b"ab+"), Some((2, Token::Ack)));
        assert_eq!(first_token(b"-+"), Some((0, Token::Nak)));
        assert_eq!(first_token(b"x$T05#b9+"), Some((1, Token::PacketStart)));
        assert_eq!(first_token(b"%Stop"), Some((0, Token::PacketStart)));
    }
}
