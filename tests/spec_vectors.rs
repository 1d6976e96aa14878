//! SPEC.md's test vectors, checked byte for byte against the code, so the document cannot drift.
//!
//! The vectors live in SPEC.md in fenced blocks whose info string is `vectors`. Inside one:
//!
//! ```text
//! name: 92 03 03          bytes, as hex pairs; indented lines that follow continue them
//! name = some text        text, exactly the rest of the line
//! ```
//!
//! Every vector the code computes must be in SPEC.md with the same value, SPEC.md may hold no
//! vector the code does not compute, and each vector must also decode back to what it stands
//! for. The tables of error codes, close codes and limits are checked against the code too.
//! When a vector is wrong the failure prints the block as the code would write it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use ed25519_dalek::{Signer as _, SigningKey};
use switchboard::wire::frame::{ClientFrame, CloseCode, ErrorCode, ServerFrame};
use switchboard::wire::keys::{KeySet, SigningKeyFile};
use switchboard::wire::routed::Routed;
use switchboard::wire::token::{self, Claims, TokenError, TokenPolicy};
use switchboard::wire::{envelope, limits};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Hex(Vec<u8>),
    Text(String),
}

fn spec_text() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/SPEC.md");
    std::fs::read_to_string(path).expect("SPEC.md at the repository root")
}

fn unhex(line: &str, at: usize) -> Vec<u8> {
    line.split_whitespace()
        .map(|pair| {
            assert_eq!(pair.len(), 2, "SPEC.md line {at}: {pair:?} is not one hex byte");
            u8::from_str_radix(pair, 16).unwrap_or_else(|_| panic!("SPEC.md line {at}: {pair:?} is not hex"))
        })
        .collect()
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Every vector in SPEC.md, by name.
fn spec_vectors(text: &str) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut in_fence = false;
    let mut in_vectors = false;
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let at = i + 1;
        if let Some(info) = line.strip_prefix("```") {
            in_vectors = !in_fence && info.trim() == "vectors";
            in_fence = !in_fence;
            current = None;
            continue;
        }
        if !in_vectors || line.trim().is_empty() {
            continue;
        }
        if line.starts_with(char::is_whitespace) {
            let name = current.as_ref().unwrap_or_else(|| panic!("SPEC.md line {at}: continuation without a name"));
            match out.get_mut(name) {
                Some(Value::Hex(bytes)) => bytes.extend(unhex(line, at)),
                _ => panic!("SPEC.md line {at}: only hex vectors continue on the next line"),
            }
            continue;
        }
        let (name, value) = match (line.split_once(": "), line.split_once(" = ")) {
            (Some((n, _)), Some((m, t))) if m.len() < n.len() => (m, Value::Text(t.to_owned())),
            (Some((n, h)), _) => (n, Value::Hex(unhex(h, at))),
            (None, Some((m, t))) => (m, Value::Text(t.to_owned())),
            (None, None) => match line.strip_suffix(':') {
                Some(n) => (n, Value::Hex(Vec::new())),
                None => panic!("SPEC.md line {at}: expected `name: hex` or `name = text`"),
            },
        };
        assert!(is_name(name), "SPEC.md line {at}: bad vector name {name:?}");
        assert!(out.insert(name.to_owned(), value).is_none(), "SPEC.md line {at}: vector {name} appears twice");
        current = Some(name.to_owned());
    }
    assert!(!in_fence, "SPEC.md ends inside a fenced block");
    out
}

// ---- the fixed inputs (SPEC.md, "Test vectors") ----

fn seed() -> [u8; 32] {
    std::array::from_fn(|i| i as u8 + 1)
}

fn signing_key() -> SigningKey {
    SigningKey::from_bytes(&seed())
}

fn key_set() -> KeySet {
    KeySet::parse(&SigningKeyFile::new("k1", seed()).public_text()).unwrap()
}

const POLICY: TokenPolicy = TokenPolicy { skew_secs: 30, max_ttl_secs: 3600 };

fn claims() -> Claims {
    Claims {
        kid: "k1".into(),
        sub: "user:7".into(),
        topics: vec!["post:42".into(), "user:7".into()],
        iat: 1_700_000_000,
        exp: 1_700_000_300,
        nbf: None,
    }
}

fn claims_nbf() -> Claims {
    Claims {
        kid: "k1".into(),
        sub: "".into(),
        topics: vec!["post:42".into()],
        iat: 1_700_000_000,
        exp: 1_700_003_600,
        nbf: Some(1_700_000_060),
    }
}

/// `now` values and the verdict at each: the boundaries of SPEC.md, "Verification".
fn verdicts() -> Vec<(&'static str, Claims, u64)> {
    vec![
        ("token", claims(), 1_699_999_969),
        ("token", claims(), 1_699_999_970),
        ("token", claims(), 1_700_000_330),
        ("token", claims(), 1_700_000_331),
        ("token_nbf", claims_nbf(), 1_700_000_029),
        ("token_nbf", claims_nbf(), 1_700_000_030),
        ("token_nbf", claims_nbf(), 1_700_003_630),
        ("token_nbf", claims_nbf(), 1_700_003_631),
    ]
}

const PAYLOAD: &[u8] = br#"{"id":7}"#;

fn envelope() -> envelope::EnvelopeRef<'static> {
    envelope::EnvelopeRef {
        topic: "post:42",
        seq: 42,
        id: "e42",
        ts: 1_700_000_000_123,
        kind: "comment.created",
        payload: PAYLOAD,
    }
}

fn client_frames(token: &str) -> Vec<(&'static str, ClientFrame<'_>)> {
    vec![
        ("frame.subscribe", ClientFrame::Subscribe { id: 1, topic: "post:42", token }),
        ("frame.unsubscribe", ClientFrame::Unsubscribe { id: 2, topic: "post:42" }),
        ("frame.ping", ClientFrame::Ping { id: 3 }),
    ]
}

fn server_frames() -> Vec<(&'static str, ServerFrame<'static>)> {
    vec![
        ("frame.ok", ServerFrame::Ok { id: 1, last_seq: Some(41) }),
        ("frame.ok_nil", ServerFrame::Ok { id: 2, last_seq: None }),
        (
            "frame.error",
            ServerFrame::Error { id: 5, code: "topic_not_granted", message: "token does not grant topic \"post:9\"" },
        ),
        ("frame.pong", ServerFrame::Pong { id: 3 }),
        ("frame.envelope", ServerFrame::Envelope(envelope())),
        ("frame.resync", ServerFrame::Resync { topics: vec!["post:42", "user:7"] }),
        ("frame.gap", ServerFrame::Gap { topic: "post:42", from_seq: 43, to_seq: 300 }),
        ("frame.unsubscribed", ServerFrame::Unsubscribed { topic: "post:42", code: "token_expired" }),
    ]
}

fn verdict(text: &str, now: u64) -> String {
    match token::verify(text, &key_set(), now, &POLICY) {
        Ok(_) => "ok".into(),
        Err(e) => e.code().into(),
    }
}

/// Every vector, as the code computes it, in SPEC.md order.
fn computed() -> Vec<(String, Value)> {
    let key = signing_key();
    let file = SigningKeyFile::new("k1", seed());
    let mut v: Vec<(String, Value)> = Vec::new();
    let mut hex = |name: &str, b: Vec<u8>| v.push((name.into(), Value::Hex(b)));
    hex("key.seed", seed().to_vec());
    hex("key.public", key.verifying_key().to_bytes().to_vec());
    let mut text = vec![
        ("key.secret_line", file.to_text().trim_end().to_owned()),
        ("key.public_line", file.public_text().trim_end().to_owned()),
    ];
    let mut tokens = Vec::new();
    for (name, c) in [("token", claims()), ("token_nbf", claims_nbf())] {
        let body = c.encode();
        let signed = token::signed_message(&body);
        hex(&format!("{name}.claims"), body);
        hex(&format!("{name}.signed"), signed.clone());
        hex(&format!("{name}.signature"), key.sign(&signed).to_bytes().to_vec());
        tokens.push((name, token::mint(&c, &key)));
    }
    let token_text = tokens[0].1.clone();
    for (name, f) in client_frames(&token_text) {
        hex(name, f.encode());
    }
    for (name, f) in server_frames() {
        hex(name, f.encode());
    }
    let frame = envelope().encode();
    hex("bus.record", Routed { topic: "post:42", seq: 42, frame: &frame }.encode());
    for (name, t) in &tokens {
        text.push((if *name == "token" { "token.text" } else { "token_nbf.text" }, t.clone()));
    }
    v.extend(text.into_iter().map(|(n, t)| (n.into(), Value::Text(t))));
    for (name, _, now) in verdicts() {
        let t = &tokens.iter().find(|(n, _)| *n == name).unwrap().1;
        v.push((format!("{name}.at.{now}"), Value::Text(verdict(t, now))));
    }
    v
}

/// The vectors as SPEC.md writes them (for pasting when the code changes on purpose).
fn render(vectors: &[(String, Value)]) -> String {
    let mut s = String::new();
    for (name, value) in vectors {
        match value {
            Value::Text(t) => writeln!(s, "{name} = {t}").unwrap(),
            Value::Hex(b) if b.len() <= 16 => {
                let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
                writeln!(s, "{name}: {}", h.join(" ")).unwrap();
            }
            Value::Hex(b) => {
                writeln!(s, "{name}:").unwrap();
                for chunk in b.chunks(16) {
                    let h: Vec<String> = chunk.iter().map(|x| format!("{x:02x}")).collect();
                    writeln!(s, "  {}", h.join(" ")).unwrap();
                }
            }
        }
    }
    s
}

fn hex_of<'a>(spec: &'a BTreeMap<String, Value>, name: &str) -> &'a [u8] {
    match spec.get(name) {
        Some(Value::Hex(b)) => b,
        other => panic!("SPEC.md vector {name}: expected hex, found {other:?}"),
    }
}

fn text_of<'a>(spec: &'a BTreeMap<String, Value>, name: &str) -> &'a str {
    match spec.get(name) {
        Some(Value::Text(t)) => t,
        other => panic!("SPEC.md vector {name}: expected text, found {other:?}"),
    }
}

#[test]
fn spec_vectors_match_the_code() {
    let spec = spec_vectors(&spec_text());
    let want = computed();
    let mut wrong = Vec::new();
    for (name, value) in &want {
        if spec.get(name) != Some(value) {
            wrong.push(name.clone());
        }
    }
    let extra: Vec<&String> = spec.keys().filter(|k| !want.iter().any(|(n, _)| n == *k)).collect();
    assert!(
        wrong.is_empty() && extra.is_empty(),
        "SPEC.md vectors differ from the code: wrong or missing {wrong:?}, not computed \
         {extra:?}.\nThe code computes:\n```vectors\n{}```",
        render(&want)
    );
}

#[test]
fn spec_vectors_decode_back() {
    let spec = spec_vectors(&spec_text());

    // Keys: both lines parse back to the seed's key pair.
    let secret = SigningKeyFile::parse(text_of(&spec, "key.secret_line")).unwrap();
    assert_eq!(secret.kid, "k1");
    assert_eq!(&secret.key.to_bytes()[..], hex_of(&spec, "key.seed"));
    let set = KeySet::parse(text_of(&spec, "key.public_line")).unwrap();
    assert_eq!(set.kids(), ["k1"]);
    assert_eq!(&set.get("k1").unwrap().to_bytes()[..], hex_of(&spec, "key.public"));

    // Tokens: the text is base64url(claims || signature), the claims decode, the signature
    // covers the signed message, and the token verifies with the public line alone.
    for (name, c) in [("token", claims()), ("token_nbf", claims_nbf())] {
        let body = hex_of(&spec, &format!("{name}.claims"));
        assert_eq!(Claims::decode(body).unwrap(), c);
        let signed = hex_of(&spec, &format!("{name}.signed"));
        assert_eq!(&signed[..token::SIGNING_CONTEXT.len()], token::SIGNING_CONTEXT);
        assert_eq!(&signed[token::SIGNING_CONTEXT.len()..], body);
        let sig = hex_of(&spec, &format!("{name}.signature"));
        let sig = ed25519_dalek::Signature::from_slice(sig).unwrap();
        set.get("k1").unwrap().verify_strict(signed, &sig).unwrap();
        let text = text_of(&spec, &format!("{name}.text"));
        assert!(!text.contains(['=', '+', '/']));
        let mut raw = body.to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        assert_eq!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw), text);
        let now = c.nbf.unwrap_or(c.iat);
        assert_eq!(token::verify(text, &set, now, &POLICY).unwrap(), c);
    }
    for (name, _, now) in verdicts() {
        let text = text_of(&spec, &format!("{name}.text"));
        assert_eq!(verdict(text, now), text_of(&spec, &format!("{name}.at.{now}")));
    }

    // Frames decode to what they stand for, and re-encode to the same bytes.
    let token_text = text_of(&spec, "token.text");
    for (name, frame) in client_frames(token_text) {
        let bytes = hex_of(&spec, name);
        assert_eq!(ClientFrame::decode(bytes).unwrap(), frame, "{name}");
        assert_eq!(frame.encode(), bytes, "{name}");
    }
    for (name, frame) in server_frames() {
        let bytes = hex_of(&spec, name);
        assert_eq!(ServerFrame::decode(bytes).unwrap(), frame, "{name}");
        assert_eq!(frame.encode(), bytes, "{name}");
    }
    let env = hex_of(&spec, "frame.envelope");
    assert_eq!(envelope::decode(env).unwrap(), envelope());

    // The bus record carries the envelope frame untouched.
    let record = hex_of(&spec, "bus.record");
    let (r, used) = Routed::decode_prefix(record).unwrap().unwrap();
    assert_eq!(used, record.len());
    assert_eq!((r.topic, r.seq, r.frame), ("post:42", 42, env));
}

// ---- the tables ----

/// The cells of every table row (header rows left out) in the section titled `heading`.
fn table_rows(text: &str, heading: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if line.starts_with('#') {
            inside = line.trim_start_matches('#').trim() == heading;
            continue;
        }
        let line = line.trim();
        if !inside || !line.starts_with('|') {
            continue;
        }
        if line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' ')) {
            rows.pop(); // the row above a separator is a header
            continue;
        }
        let cells = line.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`').to_owned()).collect();
        rows.push(cells);
    }
    assert!(!rows.is_empty(), "SPEC.md has no table under {heading:?}");
    rows
}

fn all_error_codes() -> Vec<&'static str> {
    // An exhaustive match: a new variant does not compile until it is listed here (and so
    // until SPEC.md documents it).
    fn token_code(e: &TokenError) -> &'static str {
        match e {
            TokenError::Malformed(_)
            | TokenError::TooLarge { .. }
            | TokenError::UnsupportedVersion(_)
            | TokenError::UnknownKid(_)
            | TokenError::BadSignature
            | TokenError::Expired { .. }
            | TokenError::NotYetValid { .. }
            | TokenError::TtlTooLong { .. }
            | TokenError::TopicNotGranted(_) => e.code(),
        }
    }
    fn frame_code(c: ErrorCode) -> &'static str {
        match c {
            ErrorCode::BadFrame
            | ErrorCode::UnknownFrame
            | ErrorCode::FrameTooLarge
            | ErrorCode::TextNotSupported
            | ErrorCode::BadTopic
            | ErrorCode::TooManySubscriptions
            | ErrorCode::RateLimited
            | ErrorCode::NotSubscribed
            | ErrorCode::Token(_)
            | ErrorCode::Internal => c.as_str(),
        }
    }
    let mut codes: Vec<&'static str> = [
        ErrorCode::BadFrame,
        ErrorCode::UnknownFrame,
        ErrorCode::FrameTooLarge,
        ErrorCode::TextNotSupported,
        ErrorCode::BadTopic,
        ErrorCode::TooManySubscriptions,
        ErrorCode::RateLimited,
        ErrorCode::NotSubscribed,
        ErrorCode::Internal,
    ]
    .into_iter()
    .map(frame_code)
    .collect();
    codes.extend(
        [
            TokenError::Malformed(String::new()),
            TokenError::TooLarge { len: 0, max: 0 },
            TokenError::UnsupportedVersion(0),
            TokenError::UnknownKid(String::new()),
            TokenError::BadSignature,
            TokenError::Expired { exp: 0, now: 0 },
            TokenError::NotYetValid { nbf: 0, now: 0 },
            TokenError::TtlTooLong { ttl: 0, max: 0 },
            TokenError::TopicNotGranted(String::new()),
        ]
        .iter()
        .map(token_code),
    );
    codes
}

#[test]
fn error_code_table_lists_every_code() {
    let text = spec_text();
    let mut documented: Vec<String> = table_rows(&text, "Error codes").into_iter().map(|r| r[0].clone()).collect();
    let mut codes: Vec<String> = all_error_codes().into_iter().map(String::from).collect();
    documented.sort();
    codes.sort();
    assert_eq!(documented, codes);
}

#[test]
fn close_code_table_lists_every_code() {
    let text = spec_text();
    let documented: Vec<(u16, String)> = table_rows(&text, "WebSocket close codes")
        .into_iter()
        .map(|r| (r[0].parse().expect("a close code"), r[1].clone()))
        .collect();
    let codes = [
        (CloseCode::NORMAL, "NORMAL"),
        (CloseCode::GOING_AWAY, "GOING_AWAY"),
        (CloseCode::INVALID_DATA, "INVALID_DATA"),
        (CloseCode::POLICY, "POLICY"),
        (CloseCode::TOO_BIG, "TOO_BIG"),
        (CloseCode::INTERNAL, "INTERNAL"),
        (CloseCode::RESTART, "RESTART"),
        (CloseCode::SLOW_CONSUMER, "SLOW_CONSUMER"),
        (CloseCode::IDLE_TIMEOUT, "IDLE_TIMEOUT"),
        (CloseCode::OVERLOADED, "OVERLOADED"),
    ];
    let codes: Vec<(u16, String)> = codes.iter().map(|(c, n)| (*c, n.to_string())).collect();
    assert_eq!(documented, codes);
}

#[test]
fn limits_table_matches_limits_rs() {
    let text = spec_text();
    let documented: Vec<(String, usize)> = table_rows(&text, "Limits")
        .into_iter()
        .map(|r| {
            let n = r[1].replace([',', '_'], "");
            (r[0].clone(), n.parse().expect("a number of bytes"))
        })
        .collect();
    let code = vec![
        ("MAX_TOPIC_BYTES", limits::MAX_TOPIC_BYTES),
        ("MAX_TOKEN_TOPICS", limits::MAX_TOKEN_TOPICS),
        ("MAX_TOKEN_TEXT_BYTES", limits::MAX_TOKEN_TEXT_BYTES),
        ("MAX_SUB_BYTES", limits::MAX_SUB_BYTES),
        ("MAX_KID_BYTES", limits::MAX_KID_BYTES),
        ("MAX_KIND_BYTES", limits::MAX_KIND_BYTES),
        ("MAX_ID_BYTES", limits::MAX_ID_BYTES),
        ("MAX_ENVELOPE_BYTES", limits::MAX_ENVELOPE_BYTES),
        ("MAX_ERROR_CODE_BYTES", limits::MAX_ERROR_CODE_BYTES),
        ("MAX_ERROR_MESSAGE_BYTES", limits::MAX_ERROR_MESSAGE_BYTES),
        ("MAX_RESYNC_TOPICS", limits::MAX_RESYNC_TOPICS),
        ("MAX_RECORD_BYTES", switchboard::wire::routed::MAX_RECORD_BYTES),
    ];
    let code: Vec<(String, usize)> = code.into_iter().map(|(n, v)| (n.to_owned(), v)).collect();
    assert_eq!(documented, code);
}

#[test]
fn the_parser_reads_both_vector_forms() {
    let text = "x\n```vectors\na: 01 02\nb:\n  03\n  04 05\nc = two words\n```\n```text\nd: ff\n```\n";
    let v = spec_vectors(text);
    assert_eq!(v["a"], Value::Hex(vec![1, 2]));
    assert_eq!(v["b"], Value::Hex(vec![3, 4, 5]));
    assert_eq!(v["c"], Value::Text("two words".into()));
    assert!(!v.contains_key("d"));
}
