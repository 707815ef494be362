//! QEMU hookup struct: buffer and stream parsers must agree and never panic.
#![no_main]

use kvmi_proto::handshake::{parse_hookup, read_hookup};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
