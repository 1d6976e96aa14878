//! Router frames as a Rust client reads them: never a panic, and whatever decodes re-encodes to
//! bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::wire::ServerFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ServerFrame::decode(data) {
        let again = frame.encode();
        assert_eq!(ServerFrame::decode(&again), Ok(frame));
    }
});
