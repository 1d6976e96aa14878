//! Property tests of the wire contract: every encoder round-trips through its decoder, no
//! decoder panics on arbitrary or mutated bytes, and a strict prefix of a valid frame is a
//! typed error.
//!
//! One module per role, in the order of SPEC.md: client frames, router frames, envelope,
//! token, key files, bus record, then untrusted input across all decoders.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use switchboard::wire::envelope::{self, Envelope};
use switchboard::wire::frame::{ClientFrame, FrameError, ServerFrame};
use switchboard::wire::keys::{KeySet, SigningKeyFile};
use switchboard::wire::limits::{MAX_RESYNC_TOPICS, MAX_TOKEN_TEXT_BYTES, MAX_TOKEN_TOPICS};
use switchboard::wire::msgpack::DecodeError;
use switchboard::wire::routed::Routed;
use switchboard::wire::token::{self, Claims, TokenError, TokenPolicy};

/// A valid topic, mostly short, sometimes at the 200-byte limit.
fn topic() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => "[!-~]{1,24}",
        1 => "[!-~]{190,200}",
    ]
}

/// Any UTF-8 text of at most `max` bytes (chars are up to 4 bytes, so `max / 4` chars).
fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("\\PC{{0,{}}}", max / 4)).unwrap()
}

fn token_text() -> impl Strategy<Value = String> {
    prop_oneof!["[A-Za-z0-9_-]{0,300}", text(400)]
}

/// Strict prefix lengths to try: all of them for small inputs; for large ones (each decode is
/// linear, so all cuts are quadratic in a debug build) the first and last 256 and a stride.
fn cuts(len: usize) -> impl Iterator<Item = usize> {
    let stride = (len / 256).max(1);
    (0..len).filter(move |&c| c < 256 || c + 256 >= len || c % stride == 0)
}

/// Asserts that every strict prefix of `bytes` fails with `Truncated`.
fn prefixes_are_truncated(bytes: &[u8], decode: impl Fn(&[u8]) -> Result<(), FrameError>) {
    for cut in cuts(bytes.len()) {
        match decode(&bytes[..cut]) {
            Err(FrameError::Decode(DecodeError::Truncated { .. })) => {}
            other => panic!("prefix of {cut}/{} bytes gave {other:?}", bytes.len()),
        }
    }
    let mut longer = bytes.to_vec();
    longer.push(0xc0);
    assert_eq!(decode(&longer), Err(FrameError::Decode(DecodeError::TrailingBytes { extra: 1 })));
}

mod client_frames {
    use super::*;

    #[derive(Debug, Clone)]
    pub enum Owned {
        Subscribe(u32, String, String),
        Unsubscribe(u32, String),
        Ping(u32),
    }

    impl Owned {
        pub fn frame(&self) -> ClientFrame<'_> {
            match self {
                Owned::Subscribe(id, topic, token) => ClientFrame::Subscribe { id: *id, topic, token },
                Owned::Unsubscribe(id, topic) => ClientFrame::Unsubscribe { id: *id, topic },
                Owned::Ping(id) => ClientFrame::Ping { id: *id },
            }
        }
    }

    pub fn arb() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (any::<u32>(), topic(), token_text()).prop_map(|(i, t, k)| Owned::Subscribe(i, t, k)),
            (any::<u32>(), topic()).prop_map(|(i, t)| Owned::Unsubscribe(i, t)),
            any::<u32>().prop_map(Owned::Ping),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(f in arb()) {
            let bytes = f.frame().encode();
            prop_assert_eq!(ClientFrame::decode(&bytes).unwrap(), f.frame());
        }

        #[test]
        fn strict_prefixes_are_truncated(f in arb()) {
            prefixes_are_truncated(&f.frame().encode(), |b| ClientFrame::decode(b).map(|_| ()));
        }
    }
}

mod server_frames {
    use super::*;

    #[derive(Debug, Clone)]
    pub enum Owned {
        Ok(u32, Option<u64>),
        Error(u32, String, String),
        Pong(u32),
        Envelope(Envelope),
        Resync(Vec<String>),
        Gap(String, u64, u64),
        Unsubscribed(String, String),
    }

    impl Owned {
        pub fn frame(&self) -> ServerFrame<'_> {
            match self {
                Owned::Ok(id, last_seq) => ServerFrame::Ok { id: *id, last_seq: *last_seq },
                Owned::Error(id, code, message) => ServerFrame::Error { id: *id, code, message },
                Owned::Pong(id) => ServerFrame::Pong { id: *id },
                Owned::Envelope(e) => ServerFrame::Envelope(e.as_ref()),
                Owned::Resync(topics) => ServerFrame::Resync { topics: topics.iter().map(String::as_str).collect() },
                Owned::Gap(topic, from_seq, to_seq) => ServerFrame::Gap { topic, from_seq: *from_seq, to_seq: *to_seq },
                Owned::Unsubscribed(topic, code) => ServerFrame::Unsubscribed { topic, code },
            }
        }
    }

    pub fn arb() -> impl Strategy<Value = Owned> {
        prop_oneof![
            (any::<u32>(), any::<Option<u64>>()).prop_map(|(i, s)| Owned::Ok(i, s)),
            (any::<u32>(), "[a-z_]{0,64}", text(1024)).prop_map(|(i, c, m)| Owned::Error(i, c, m)),
            any::<u32>().prop_map(Owned::Pong),
            envelopes::arb().prop_map(Owned::Envelope),
            proptest::collection::vec(topic(), 0..=MAX_RESYNC_TOPICS).prop_map(Owned::Resync),
            (topic(), any::<u64>(), any::<u64>()).prop_map(|(t, a, b)| Owned::Gap(t, a, b)),
            (topic(), "[a-z_]{0,64}").prop_map(|(t, c)| Owned::Unsubscribed(t, c)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip(f in arb()) {
            let bytes = f.frame().encode();
            prop_assert_eq!(ServerFrame::decode(&bytes).unwrap(), f.frame());
        }

        #[test]
        fn strict_prefixes_are_truncated(f in arb()) {
            prefixes_are_truncated(&f.frame().encode(), |b| ServerFrame::decode(b).map(|_| ()));
        }
    }
}

mod envelopes {
    use super::*;

    pub fn arb() -> impl Strategy<Value = Envelope> {
        (
            topic(),
            any::<u64>(),
            text(64),
            any::<u64>(),
            text(128),
            prop_oneof![
                8 => proptest::collection::vec(any::<u8>(), 0..300),
                1 => proptest::collection::vec(any::<u8>(), 60_000..70_000),
            ],
        )
            .prop_map(|(topic, seq, id, ts, kind, payload)| Envelope { topic, seq, id, ts, kind, payload })
    }

    proptest! {
        #[test]
        fn round_trip(e in arb()) {
            let bytes = e.encode();
            prop_assert_eq!(envelope::decode(&bytes).unwrap().to_owned(), e.clone());
            // The router frame decoder reads the same bytes as the same envelope.
            prop_assert_eq!(ServerFrame::decode(&bytes).unwrap(), ServerFrame::Envelope(e.as_ref()));
        }

        #[test]
        fn strict_prefixes_are_truncated(e in arb()) {
            let bytes = e.encode();
            for cut in cuts(bytes.len()) {
                let r = envelope::decode(&bytes[..cut]);
                prop_assert!(
                    matches!(r, Err(FrameError::Decode(DecodeError::Truncated { .. }))),
                    "cut {} gave {:?}", cut, r
                );
            }
        }
    }
}

mod tokens {
    use super::*;

    pub fn claims() -> impl Strategy<Value = Claims> {
        (
            "[A-Za-z0-9._-]{1,64}",
            text(256),
            proptest::collection::vec(topic(), 1..=MAX_TOKEN_TOPICS),
            any::<u64>(),
            any::<u64>(),
            any::<Option<u64>>(),
        )
            .prop_map(|(kid, sub, topics, a, b, nbf)| Claims {
                kid,
                sub,
                topics,
                iat: a.min(b),
                exp: a.max(b),
                nbf,
            })
    }

    /// Claims that verify at `nbf.unwrap_or(iat).max(iat)` under a one-hour policy.
    fn live_claims() -> impl Strategy<Value = Claims> {
        (claims(), 0u64..=3600, 0u64..=3600).prop_map(|(c, ttl, delay)| {
            let iat = c.iat % (1 << 40);
            Claims { iat, exp: iat + ttl, nbf: c.nbf.map(|_| iat + delay.min(ttl)), ..c }
        })
    }

    const POLICY: TokenPolicy = TokenPolicy { skew_secs: 30, max_ttl_secs: 3600 };

    fn key_set(kid: &str, seed: [u8; 32]) -> KeySet {
        KeySet::parse(&SigningKeyFile::new(kid, seed).public_text()).unwrap()
    }

    /// SPEC.md, "Verification", steps 8 to 10, written out as the rule reads.
    fn model(c: &Claims, now: u64, p: &TokenPolicy) -> Result<(), &'static str> {
        let not_before = std::cmp::max(c.nbf.unwrap_or(c.iat), c.iat);
        if (now as u128) + (p.skew_secs as u128) < not_before as u128 {
            return Err("token_not_yet_valid");
        }
        if (now as u128) > (c.exp as u128) + (p.skew_secs as u128) {
            return Err("token_expired");
        }
        if c.exp - c.iat > p.max_ttl_secs {
            return Err("token_ttl_too_long");
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn claims_round_trip(c in claims()) {
            prop_assert_eq!(Claims::decode(&c.encode()).unwrap(), c);
        }

        #[test]
        fn claims_prefixes_are_malformed(c in claims()) {
            let bytes = c.encode();
            for cut in 0..bytes.len() {
                let r = Claims::decode(&bytes[..cut]);
                prop_assert!(matches!(r, Err(TokenError::Malformed(_))), "cut {} gave {:?}", cut, r);
            }
        }

        #[test]
        fn time_rules_match_the_spec(
            c in claims(),
            now in any::<u64>(),
            skew in prop_oneof![Just(0u64), 0u64..120, Just(u64::MAX)],
            max_ttl in prop_oneof![Just(0u64), 0u64..100_000, Just(u64::MAX)],
        ) {
            let p = TokenPolicy { skew_secs: skew, max_ttl_secs: max_ttl };
            let got = c.check_times(now, &p).map_err(|e| e.code());
            prop_assert_eq!(got, model(&c, now, &p));
        }

        #[test]
        fn time_boundaries_are_exact(c in live_claims()) {
            let start = c.nbf.unwrap_or(c.iat).max(c.iat);
            prop_assert!(c.check_times(start - start.min(30), &POLICY).is_ok());
            if start >= 31 {
                prop_assert_eq!(c.check_times(start - 31, &POLICY).unwrap_err().code(), "token_not_yet_valid");
            }
            prop_assert!(c.check_times(c.exp + 30, &POLICY).is_ok());
            prop_assert_eq!(c.check_times(c.exp + 31, &POLICY).unwrap_err().code(), "token_expired");
        }
    }

    #[test]
    fn the_text_limit_binds_before_the_claim_limits() {
        let c = Claims {
            kid: "k1".into(),
            sub: "s".repeat(256),
            topics: (0..MAX_TOKEN_TOPICS).map(|i| format!("{i:0>200}")).collect(),
            iat: 1,
            exp: 2,
            nbf: None,
        };
        assert_eq!(Claims::decode(&c.encode()).unwrap(), c);
        let text = token::mint(&c, &SigningKeyFile::new("k1", [1; 32]).key);
        assert!(text.len() > MAX_TOKEN_TEXT_BYTES);
        let r = token::verify(&text, &key_set("k1", [1; 32]), 1, &POLICY);
        assert_eq!(r.unwrap_err().code(), "token_too_large");
    }

    proptest! {
        // Each case signs and verifies a few times: fewer cases keep the debug run short.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn mint_then_verify(c in live_claims(), seed in any::<[u8; 32]>(), other in any::<[u8; 32]>()) {
            let text = token::mint(&c, &SigningKeyFile::new(&c.kid, seed).key);
            let keys = key_set(&c.kid, seed);
            let now = c.nbf.unwrap_or(c.iat).max(c.iat);
            prop_assert_eq!(token::verify(&text, &keys, now, &POLICY).unwrap(), c.clone());
            prop_assert_eq!(token::parse(&text).unwrap().claims, c.clone());
            // Tolerated padding changes nothing.
            prop_assert_eq!(token::verify(&format!("{text}=="), &keys, now, &POLICY).unwrap(), c.clone());
            // The same claims under another key, or another kid, do not verify.
            if other != seed {
                let wrong = key_set(&c.kid, other);
                prop_assert_eq!(token::verify(&text, &wrong, now, &POLICY), Err(TokenError::BadSignature));
            }
            let elsewhere = key_set("not-the-kid-", seed);
            prop_assert_eq!(token::verify(&text, &elsewhere, now, &POLICY).unwrap_err().code(), "token_unknown_kid");
            // Batch verification agrees with one-by-one.
            let batch = token::verify_many(&[&text, &text], &keys, now, &POLICY);
            prop_assert!(batch.iter().all(|r| r.as_ref() == Ok(&c)));
        }

        #[test]
        fn token_text_prefixes_are_malformed(c in live_claims(), seed in any::<[u8; 32]>()) {
            let text = token::mint(&c, &SigningKeyFile::new(&c.kid, seed).key);
            let keys = key_set(&c.kid, seed);
            for cut in 0..text.len() {
                let r = token::verify(&text[..cut], &keys, c.iat, &POLICY);
                prop_assert!(matches!(r, Err(TokenError::Malformed(_))), "cut {} gave {:?}", cut, r);
            }
        }

        #[test]
        fn any_flipped_bit_is_refused(c in live_claims(), seed in any::<[u8; 32]>(), bit in any::<prop::sample::Index>()) {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let mut raw = b64.decode(token::mint(&c, &SigningKeyFile::new(&c.kid, seed).key)).unwrap();
            let i = bit.index(raw.len() * 8);
            raw[i / 8] ^= 1 << (i % 8);
            let keys = key_set(&c.kid, seed);
            let now = c.nbf.unwrap_or(c.iat).max(c.iat);
            prop_assert!(token::verify(&b64.encode(&raw), &keys, now, &POLICY).is_err());
        }
    }
}

mod key_files {
    use super::*;

    fn kid() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._-]{1,64}"
    }

    proptest! {
        #[test]
        fn secret_round_trip(kid in kid(), seed in any::<[u8; 32]>()) {
            let file = SigningKeyFile::new(&kid, seed);
            let again = SigningKeyFile::parse(&file.to_text()).unwrap();
            prop_assert_eq!(&again.kid, &kid);
            prop_assert_eq!(again.key.to_bytes(), seed);
            prop_assert_eq!(again.to_text(), file.to_text());
        }

        #[test]
        fn public_set_round_trip(
            keys in proptest::collection::btree_map(kid(), any::<[u8; 32]>(), 1..8),
            comment in "# [ -~]{0,40}",
        ) {
            let mut text = String::new();
            for (kid, seed) in &keys {
                text.push_str(&comment);
                text.push_str("\n\n");
                text.push_str(&SigningKeyFile::new(kid, *seed).public_text());
            }
            let set = KeySet::parse(&text).unwrap();
            prop_assert_eq!(set.kids(), keys.keys().map(String::as_str).collect::<Vec<_>>());
            for (kid, seed) in &keys {
                let vk = SigningKeyFile::new(kid, *seed).key.verifying_key();
                prop_assert_eq!(set.get(kid), Some(&vk));
            }
        }
    }
}

mod bus_records {
    use super::*;

    fn arb() -> impl Strategy<Value = (String, u64, Vec<u8>)> {
        (topic(), any::<u64>(), proptest::collection::vec(any::<u8>(), 1..400))
    }

    proptest! {
        #[test]
        fn round_trip_in_a_stream(records in proptest::collection::vec(arb(), 1..6)) {
            let mut stream = Vec::new();
            for (topic, seq, frame) in &records {
                Routed { topic, seq: *seq, frame }.encode_into(&mut stream);
            }
            let mut rest = &stream[..];
            for (topic, seq, frame) in &records {
                let (r, used) = Routed::decode_prefix(rest).unwrap().unwrap();
                prop_assert_eq!(r, Routed { topic, seq: *seq, frame });
                rest = &rest[used..];
            }
            prop_assert!(rest.is_empty());
        }

        #[test]
        fn strict_prefixes_need_more((topic, seq, frame) in arb()) {
            let bytes = Routed { topic: &topic, seq, frame: &frame }.encode();
            for cut in 0..bytes.len() {
                prop_assert_eq!(Routed::decode_prefix(&bytes[..cut]), Ok(None));
            }
        }
    }
}

/// Bytes from the network: no decoder panics, and what decodes re-encodes to an equal value.
mod untrusted {
    use super::*;

    /// Random bytes, or a valid frame with a few bytes changed, cut or added.
    fn hostile() -> impl Strategy<Value = Vec<u8>> {
        let valid = prop_oneof![
            client_frames::arb().prop_map(|f| f.frame().encode()),
            server_frames::arb().prop_map(|f| f.frame().encode()),
            tokens::claims().prop_map(|c| c.encode()),
        ];
        let edits = proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4);
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..256),
            (valid, edits).prop_map(|(mut b, edits)| {
                for (at, byte, op) in edits {
                    if b.is_empty() {
                        b.push(byte);
                        continue;
                    }
                    let i = at.index(b.len());
                    match op {
                        0 => b[i] = byte,
                        1 => b.insert(i, byte),
                        _ => b.truncate(i),
                    }
                }
                b
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn decoders_never_panic(bytes in hostile()) {
            if let Ok(f) = ClientFrame::decode(&bytes) {
                let again = f.encode();
                prop_assert_eq!(ClientFrame::decode(&again).unwrap(), f);
            }
            if let Ok(f) = ServerFrame::decode(&bytes) {
                let again = f.encode();
                prop_assert_eq!(ServerFrame::decode(&again).unwrap(), f);
            }
            if let Ok(e) = envelope::decode(&bytes) {
                let again = e.encode();
                prop_assert_eq!(envelope::decode(&again).unwrap(), e);
            }
            if let Ok(c) = Claims::decode(&bytes) {
                prop_assert_eq!(Claims::decode(&c.encode()).unwrap(), c);
            }
            if let Ok(Some((r, used))) = Routed::decode_prefix(&bytes) {
                prop_assert!(used <= bytes.len());
                prop_assert_eq!(&r.encode()[..], &bytes[..used]);
            }
            let text = String::from_utf8_lossy(&bytes);
            let keys = KeySet::parse(&SigningKeyFile::new("k1", [1; 32]).public_text()).unwrap();
            prop_assert!(token::verify(&text, &keys, 1_700_000_000, &TokenPolicy::default()).is_err());
            let _ = KeySet::parse(&text);
            let _ = SigningKeyFile::parse(&text);
        }

        #[test]
        fn token_bytes_never_verify_unsigned(bytes in hostile()) {
            use base64::Engine as _;
            let mut raw = bytes;
            raw.extend_from_slice(&[0u8; 64]);
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw);
            let keys = KeySet::parse(&SigningKeyFile::new("k1", [1; 32]).public_text()).unwrap();
            prop_assert!(token::verify(&text, &keys, 1_700_000_000, &TokenPolicy::default()).is_err());
        }
    }
}
