//! The journal API's pure input parsers (src/journal/http.rs): the topic path segment
//! (percent-decoding, `/`, `..`, NUL, overlong, invalid UTF-8), the reconciliation query
//! string, and the publish body as JSON and as MessagePack. Nothing may panic; a decoded topic
//! must be valid and survive re-encoding; a parsed query must respect the page bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::journal::http::{decode_topic, parse_publish, parse_query};
use switchboard::journal::store::check_topic;

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(topic) = decode_topic(&text) {
        assert!(check_topic(&topic).is_ok(), "decoded an invalid topic {topic:?}");
        assert_eq!(decode_topic(&encode(&topic)).ok(), Some(topic.clone()));
    }
    for max_page in [1, 100, 1000] {
        if let Ok(p) = parse_query(Some(&text), max_page) {
            assert!(p.limit >= 1 && p.limit <= max_page, "{p:?}");
        }
    }
    let _ = parse_query(None, 100);
    for msgpack in [false, true] {
        if let Ok((items, batch)) = parse_publish(data, msgpack) {
            assert!(batch || items.len() == 1);
        }
    }
});
