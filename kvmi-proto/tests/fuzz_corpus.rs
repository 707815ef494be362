//! Replays the fuzz corpus (`fuzz/corpus/*`, grown by `cargo +nightly fuzz run <target>`)
//! through the same checks as the fuzz targets, so CI exercises every input the fuzzer
//! found interesting without needing nightly or cargo-fuzz. The targets' bodies are kept
//! in step with `fuzz/fuzz_targets/*.rs`.

use std::path::Path;

use kvmi_proto::codec::{self, Abi};
use kvmi_proto::handshake::{parse_hookup, read_hookup};

fn decode(data: &[u8]) {
    let mut buf = data;
    while let Ok(Some((frame, used))) = codec::decode(buf) {
        assert!(frame.payload.len() <= codec::MAX_RX_PAYLOAD);
        if frame.hdr.id == kvmi_sys::KVMI_EVENT {
            for abi in [Abi::V7, Abi::V6] {
                if let Ok(ev) = codec::parse_event(frame.hdr.seq, frame.payload, abi) {
                    let mut out = Vec::new();
                    let _ = ev.encode_reply(&ev.default_reply(), &mut out);
                    let cr = kvmi_proto::Reply::with_new_value(kvmi_proto::Action::Continue, 1);
                    let _ = ev.encode_reply(&cr, &mut out);
                    let _ = ev.needs_reply();
                }
            }
        } else if let Ok(Ok(d)) = codec::parse_reply(frame.payload) {
            let _ = codec::read_reply::<[u8; 16]>("reply", d);
        }
        buf = &buf[used..];
    }
}

fn handshake(data: &[u8]) {
    let parsed = parse_hookup(data);
    let mut cur = std::io::Cursor::new(data);
    let read = read_hookup(&mut cur);
    match (parsed, read) {
        (Ok(Some((a, n))), Ok(b)) => {
            assert_eq!(a, b);
            assert_eq!(n as u64, cur.position());
        }
        (Ok(Some(_)), Err(e)) => panic!("buffer parse ok, stream parse failed: {e}"),
        (Ok(None), Ok(_)) => panic!("stream parse ok on an incomplete buffer"),
        _ => {}
    }
}

fn replay(target: &str, check: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "corpus input {} fails", path.display());
        n += 1;
    }
    n
}

#[test]
fn decoder_corpus_replays_cleanly() {
    assert!(replay("decode", decode) > 10, "decode corpus is missing");
}

#[test]
fn handshake_corpus_replays_cleanly() {
    assert!(
        replay("handshake", handshake) > 5,
        "handshake corpus is missing"
    );
}
