//! Host → tool decoder: a byte stream split into frames; each frame parsed as an event
//! (both ABIs) or a command reply. Must never panic.
#![no_main]

use kvmi_proto::codec::{self, Abi};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
