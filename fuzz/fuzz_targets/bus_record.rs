//! A local bus stream: records read one after another with decode_prefix until it needs more
//! bytes or refuses one. Never a panic, never past the input, and each record re-encodes to
//! exactly the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::wire::Routed;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((record, used))) = Routed::decode_prefix(rest) {
        assert!(used > 0 && used <= rest.len());
        assert_eq!(record.encode(), &rest[..used]);
        rest = &rest[used..];
    }
});
