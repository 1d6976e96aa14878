//! Envelope frames as the journal and clients read them: never a panic, a round trip for what
//! decodes, and the router frame decoder agrees on the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::wire::{ServerFrame, envelope};

fuzz_target!(|data: &[u8]| {
    let decoded = envelope::decode(data);
    if let Ok(e) = decoded {
        let again = e.encode();
        assert_eq!(envelope::decode(&again), Ok(e));
        assert_eq!(ServerFrame::decode(data), Ok(ServerFrame::Envelope(e)));
    }
});
