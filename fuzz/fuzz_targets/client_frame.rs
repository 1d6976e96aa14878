//! Client frames as a router reads them off a WebSocket: never a panic, and whatever decodes
//! re-encodes to bytes that decode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::wire::ClientFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = ClientFrame::decode(data) {
        let again = frame.encode();
        assert_eq!(ClientFrame::decode(&again), Ok(frame));
    }
});
