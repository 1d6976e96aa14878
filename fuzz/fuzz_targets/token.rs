//! Token parse and verify with a fixed key set (SPEC.md's key k1). The input is tried three
//! ways: as token text, as the raw bytes behind the text (claims || signature), and as claims
//! alone. Nothing may panic, nothing unsigned may verify, and claims that decode must survive
//! being minted with the real key and verified again.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use switchboard::wire::keys::{KeySet, SigningKeyFile};
use switchboard::wire::limits::MAX_TOKEN_TEXT_BYTES;
use switchboard::wire::token::{self, Claims, TokenError, TokenPolicy};

static KEY: LazyLock<SigningKeyFile> =
    LazyLock::new(|| SigningKeyFile::new("k1", std::array::from_fn(|i| i as u8 + 1)));
static KEYS: LazyLock<KeySet> =
    LazyLock::new(|| KeySet::parse(&KEY.public_text()).expect("the spec's public key line"));

const NOW: u64 = 1_700_000_100;
const POLICY: TokenPolicy = TokenPolicy {
    skew_secs: 30,
    max_ttl_secs: 3600,
};

fuzz_target!(|data: &[u8]| {
    // 1. Text as it arrives in a subscribe frame or an HTTP header. The only valid tokens the
    //    fuzzer can hold are the seeds, so anything else must fail.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = token::verify(text, &KEYS, NOW, &POLICY);
    }
    // 2. The raw token bytes: parse reaches the claims decoder and the signature check.
    let text = URL_SAFE_NO_PAD.encode(data);
    if let Ok(claims) = token::verify(&text, &KEYS, NOW, &POLICY) {
        // Only a correct signature gets here, and then the claims must re-encode exactly.
        assert_eq!(token::mint(&claims, &KEY.key), text);
    }
    // 3. Claims alone: decode, then sign for real and verify, the success path.
    if let Ok(claims) = Claims::decode(data) {
        assert_eq!(Claims::decode(&claims.encode()), Ok(claims.clone()));
        let claims = Claims {
            kid: "k1".into(),
            ..claims
        };
        let minted = token::mint(&claims, &KEY.key);
        let start = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
        let lenient = TokenPolicy {
            skew_secs: 0,
            max_ttl_secs: u64::MAX,
        };
        match token::verify(&minted, &KEYS, start, &lenient) {
            Ok(verified) => assert_eq!(verified, claims),
            // Claims within every per-field limit can still make text above the text limit.
            Err(TokenError::TooLarge { .. }) => assert!(minted.len() > MAX_TOKEN_TEXT_BYTES),
            // An nbf after exp decodes, but such a token is never valid.
            Err(TokenError::Expired { .. }) => assert!(start > claims.exp),
            Err(e) => panic!("minted claims refused: {e:?}"),
        }
        for now in [0, NOW, claims.exp, u64::MAX] {
            let _ = claims.check_times(now, &POLICY);
        }
    }
});
