//! The journal's HTTP API: publish envelopes, reconcile a topic, health.
//!
//! Role: the contract application servers in any language and browsers code against
//! (docs/journal-api.md states it precisely). [`Service`] answers the `/v1/...` and `/healthz`
//! routes and can be mounted in any hyper application; [`serve`] is the `switchboard journal`
//! server around it (listener, signals, graceful stop, optional metrics endpoint).
//!
//! Check order for every request, so an error is always the most fundamental one: route
//! (404/405), request shape (topic and query: 400), credentials (401/403), then the store.
//! The reconciliation read sends stored frames untouched: the MessagePack answer is a map
//! header and array header followed by the frames' bytes, concatenated.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use tokio::net::TcpListener;

use super::JournalError;
use super::outbox::{Outbox, OutboxOptions};
use super::store::{Appended, EnvelopeStore, InvalidEnvelope, NewEnvelope, ReadResult, StoreError, check_topic};
use crate::config::{Config, JournalConfig};
use crate::wire::keys::KeySet;
use crate::wire::msgpack::{DecodeError, Reader};
use crate::wire::token::{self, Claims, TokenError, TokenPolicy};

/// The response body every route answers with.
pub type ResponseBody = Full<Bytes>;

/// Default page size of a reconciliation read.
pub const DEFAULT_LIMIT: usize = 100;
/// Longest topic path segment looked at (percent-encoded, three bytes per topic byte).
const MAX_TOPIC_SEGMENT: usize = 3 * crate::wire::limits::MAX_TOPIC_BYTES;
/// Verified tokens remembered (their signature is checked once; expiry on every use).
const TOKEN_CACHE: usize = 4096;
/// How long a client has to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Seconds a client is told to wait when the store is down.
const RETRY_AFTER_SECS: &str = "1";

/// `payload_base64` accepts the standard alphabet with or without padding.
const BASE64_IN: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A refused request: status, machine code, human text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// For 410 `pruned`: the oldest seq still served.
    pub oldest_seq: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), oldest_seq: None }
    }
    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    fn bad_topic(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_topic", message)
    }
    fn store(e: &StoreError) -> Self {
        tracing::warn!(error = %e, "journal store failed a request");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", "the journal's database is unavailable; retry")
    }

    fn response(&self) -> Response<ResponseBody> {
        ::metrics::counter!(crate::metrics::JOURNAL_REJECTIONS, "reason" => self.code).increment(1);
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'a str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            oldest_seq: Option<u64>,
        }
        let body = Body { error: self.code, message: &self.message, oldest_seq: self.oldest_seq };
        let mut resp = json_response(self.status, &body);
        let h = resp.headers_mut();
        match self.status {
            StatusCode::UNAUTHORIZED => {
                h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                let allow = if self.message.contains("POST") { "POST" } else { "GET" };
                h.insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            _ => {}
        }
        resp
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<ResponseBody> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    bytes_response(status, "application/json", bytes)
}

fn bytes_response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<ResponseBody> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Answers carry private envelopes and depend on the credential: never cache them.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The credential of an `Authorization: Bearer <x>` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

/// Decodes a percent-encoded path segment into the topic it names.
pub fn decode_topic(segment: &str) -> Result<String, ApiError> {
    if segment.len() > MAX_TOPIC_SEGMENT {
        return Err(ApiError::bad_topic("topic is too long"));
    }
    let raw = segment.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(h), Some(l)) = (raw.get(i + 1).and_then(|&b| hex(b)), raw.get(i + 2).and_then(|&b| hex(b)))
                else {
                    return Err(ApiError::bad_topic("malformed percent-encoding in the topic"));
                };
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            b'/' => return Err(ApiError::bad_topic("the topic segment contains '/'")),
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let topic = String::from_utf8(out).map_err(|_| ApiError::bad_topic("the topic is not UTF-8"))?;
    check_topic(&topic).map_err(|e| ApiError::bad_topic(e.to_string()))?;
    Ok(topic)
}

/// `after` and `limit` of a reconciliation read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadParams {
    pub after: u64,
    pub limit: usize,
}

/// Parses the query string: `after` (default 0) and `limit` (default 100, 1.., capped at
/// `max_page`), decimal digits only, each at most once; other parameters are ignored.
pub fn parse_query(query: Option<&str>, max_page: usize) -> Result<ReadParams, ApiError> {
    let mut after = None;
    let mut limit = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match k {
            "after" => &mut after,
            "limit" => &mut limit,
            _ => continue,
        };
        if slot.is_some() {
            return Err(ApiError::bad_request(format!("{k} is given twice")));
        }
        if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::bad_request(format!("{k} must be a decimal integer")));
        }
        *slot = Some(v.parse::<u64>().map_err(|_| ApiError::bad_request(format!("{k} is out of range")))?);
    }
    let limit = match limit {
        None => DEFAULT_LIMIT.min(max_page),
        Some(0) => return Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => usize::try_from(n).unwrap_or(usize::MAX).min(max_page),
    };
    Ok(ReadParams { after: after.unwrap_or(0), limit })
}

/// One envelope of a JSON publish request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonEnvelope<'a> {
    topic: String,
    kind: String,
    /// Any JSON value; stored as the exact text it was sent as.
    #[serde(default, borrow, deserialize_with = "raw_present")]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_base64: Option<String>,
}

/// `Some` for any present value, `null` included (plain `Option` would read `null` as absent).
fn raw_present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// A publish request, parsed: the envelopes and whether they came as a batch (array).
#[derive(Debug)]
struct Parsed {
    items: Vec<(String, String, Vec<u8>)>,
    batch: bool,
}

fn parse_json(body: &[u8]) -> Result<Parsed, ApiError> {
    let bad = |e: serde_json::Error| ApiError::bad_request(format!("invalid JSON body: {e}"));
    let one = |e: JsonEnvelope<'_>| -> Result<(String, String, Vec<u8>), ApiError> {
        let payload = match (e.payload, e.payload_base64) {
            (Some(raw), None) => raw.get().as_bytes().to_vec(),
            (None, Some(b64)) => BASE64_IN
                .decode(b64.as_bytes())
                .map_err(|err| ApiError::bad_request(format!("payload_base64 is not base64: {err}")))?,
            (Some(_), Some(_)) => return Err(ApiError::bad_request("give payload or payload_base64, not both")),
            (None, None) => return Err(ApiError::bad_request("payload or payload_base64 is required")),
        };
        Ok((e.topic, e.kind, payload))
    };
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => {
            let list: Vec<JsonEnvelope<'_>> = serde_json::from_slice(body).map_err(bad)?;
            Ok(Parsed { items: list.into_iter().map(one).collect::<Result<_, _>>()?, batch: true })
        }
        Some(b'{') => {
            let e: JsonEnvelope<'_> = serde_json::from_slice(body).map_err(bad)?;
            Ok(Parsed { items: vec![one(e)?], batch: false })
        }
        _ => Err(ApiError::bad_request("the body must be a JSON object or an array of objects")),
    }
}

/// One envelope of a publish request: `(topic, kind, payload)`.
pub type PublishItem = (String, String, Vec<u8>);

/// Parses a publish body, JSON (`msgpack == false`) or MessagePack: the `(topic, kind,
/// payload)` items and whether they came as a batch. Pure (no I/O); exposed for the fuzz target.
/// The per-field limits (topic, kind, payload size) are checked after this, by the handler.
pub fn parse_publish(body: &[u8], msgpack: bool) -> Result<(Vec<PublishItem>, bool), ApiError> {
    let p = if msgpack { parse_msgpack(body)? } else { parse_json(body)? };
    Ok((p.items, p.batch))
}

fn is_str_marker(b: u8) -> bool {
    matches!(b, 0xa0..=0xbf | 0xd9 | 0xda | 0xdb)
}

fn parse_msgpack(body: &[u8]) -> Result<Parsed, ApiError> {
    let bad = |e: DecodeError| ApiError::bad_request(format!("invalid MessagePack body: {e}"));
    let mut r = Reader::new(body);
    let n = r.array_len().map_err(bad)?;
    let item = |r: &mut Reader<'_>| -> Result<(String, String, Vec<u8>), ApiError> {
        // Generous bounds here: the real limits are checked after, with their own codes.
        let topic = r.str("topic", 4096).map_err(bad)?.to_owned();
        let kind = r.str("kind", 4096).map_err(bad)?.to_owned();
        let payload = match r.rest().first() {
            Some(&b) if is_str_marker(b) => r.str("payload", usize::MAX).map_err(bad)?.as_bytes().to_vec(),
            _ => r.bin("payload", usize::MAX).map_err(bad)?.to_vec(),
        };
        Ok((topic, kind, payload))
    };
    let parsed = match r.rest().first() {
        None if n == 0 => return Err(ApiError::bad_request("an empty array publishes nothing")),
        Some(&b) if is_str_marker(b) => {
            if n != 3 {
                return Err(ApiError::bad_request(format!("an envelope is [topic, kind, payload], not {n} elements")));
            }
            Parsed { items: vec![item(&mut r)?], batch: false }
        }
        _ => {
            let mut items = Vec::with_capacity(n.min(4096));
            for i in 0..n {
                let m = r.array_len().map_err(bad)?;
                if m != 3 {
                    return Err(ApiError::bad_request(format!("envelope {i} has {m} elements, expected 3")));
                }
                items.push(item(&mut r)?);
            }
            Parsed { items, batch: true }
        }
    };
    r.finish().map_err(bad)?;
    Ok(parsed)
}

/// What one appended envelope is answered with.
#[derive(Serialize)]
struct AppendedJson<'a> {
    topic: &'a str,
    seq: u64,
    id: &'a str,
    ts: u64,
}

impl<'a> From<&'a Appended> for AppendedJson<'a> {
    fn from(a: &'a Appended) -> Self {
        Self { topic: &a.topic, seq: a.seq, id: &a.id, ts: a.ts }
    }
}

/// One envelope of a JSON reconciliation answer.
#[derive(Serialize)]
struct EnvelopeJson<'a> {
    topic: &'a str,
    seq: u64,
    id: &'a str,
    ts: u64,
    kind: &'a str,
    payload_base64: String,
}

/// Verified claims, by token text. Cleared when full and when keys change.
#[derive(Default)]
struct TokenCache {
    map: Mutex<HashMap<String, Claims>>,
}

struct Inner {
    store: EnvelopeStore,
    /// Application credentials accepted on POST.
    credentials: Vec<Vec<u8>>,
    keys: RwLock<Arc<KeySet>>,
    policy: TokenPolicy,
    max_page: usize,
    max_body: usize,
    cache: TokenCache,
}

/// The journal API as a hyper service: mount it in any hyper 1 application for the paths
/// [`Service::handles`] accepts, or run it with [`serve`]. Cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

impl Service {
    /// A service over `store`, with `[journal]`'s credentials and limits, verifying subscriber
    /// tokens with `keys` under `policy`.
    pub fn new(store: EnvelopeStore, journal: &JournalConfig, keys: KeySet, policy: TokenPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                credentials: journal.app_credentials.iter().map(|c| c.as_bytes().to_vec()).collect(),
                keys: RwLock::new(Arc::new(keys)),
                policy,
                max_page: journal.max_page as usize,
                max_body: journal.max_body_bytes,
                cache: TokenCache::default(),
            }),
        }
    }

    /// Replaces the subscriber key set (SIGHUP); tokens verified with the old set are forgotten.
    pub fn set_keys(&self, keys: KeySet) {
        *self.inner.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
        self.inner.cache.map.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The store behind the service.
    pub fn store(&self) -> &EnvelopeStore {
        &self.inner.store
    }

    /// Whether `path` belongs to this service (`/v1/...` and `/healthz`): a host application
    /// routes those requests to [`Service::handle`].
    pub fn handles(path: &str) -> bool {
        path.starts_with("/v1/") || path == "/healthz"
    }

    /// Answers one request. Never fails: every error is an HTTP answer.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.route(req).await {
            Ok(resp) => resp,
            Err(e) => e.response(),
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Result<Response<ResponseBody>, ApiError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        enum Route {
            Publish,
            Health,
            Reconcile(String),
        }
        let path = req.uri().path();
        let method = req.method();
        let not_allowed =
            |allow: &str| ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", format!("use {allow}"));
        let route = if path == "/v1/envelopes" {
            if method != Method::POST {
                return Err(not_allowed("POST"));
            }
            Route::Publish
        } else if path == "/healthz" {
            if method != Method::GET && method != Method::HEAD {
                return Err(not_allowed("GET"));
            }
            Route::Health
        } else if let Some(segment) = path.strip_prefix("/v1/topics/").and_then(|r| r.strip_suffix("/envelopes")) {
            if method != Method::GET {
                return Err(not_allowed("GET"));
            }
            Route::Reconcile(segment.to_owned())
        } else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route"));
        };
        // Any route: a body declared larger than the limit is refused before it is read.
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.inner.max_body as u64) {
            return Err(self.too_large());
        }
        match route {
            Route::Publish => self.publish(req).await,
            Route::Health => self.health().await,
            Route::Reconcile(segment) => {
                let topic = decode_topic(&segment)?;
                let params = parse_query(req.uri().query(), self.inner.max_page)?;
                self.reconcile(&topic, params, req.headers()).await
            }
        }
    }

    fn too_large(&self) -> ApiError {
        let max = self.inner.max_body;
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body exceeds {max} bytes"))
    }

    async fn health(&self) -> Result<Response<ResponseBody>, ApiError> {
        self.inner.store.health().await.map_err(|e| ApiError::store(&e))?;
        #[derive(Serialize)]
        struct Health {
            status: &'static str,
            store: &'static str,
        }
        let store = match self.inner.store.kind() {
            crate::config::StoreKind::Sqlite => "sqlite",
            crate::config::StoreKind::Postgres => "postgres",
        };
        Ok(json_response(StatusCode::OK, &Health { status: "ok", store }))
    }

    /// Verifies a subscriber token, from the cache when it was verified before.
    fn verify(&self, text: &str, now: u64) -> Result<Claims, TokenError> {
        let inner = &self.inner;
        if let Some(c) = inner.cache.map.lock().unwrap_or_else(|p| p.into_inner()).get(text) {
            c.check_times(now, &inner.policy)?;
            return Ok(c.clone());
        }
        let keys = inner.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let claims = token::verify(text, &keys, now, &inner.policy)?;
        let mut map = inner.cache.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= TOKEN_CACHE {
            map.clear();
        }
        map.insert(text.to_owned(), claims.clone());
        Ok(claims)
    }

    async fn reconcile(
        &self,
        topic: &str,
        params: ReadParams,
        headers: &HeaderMap,
    ) -> Result<Response<ResponseBody>, ApiError> {
        let text = bearer(headers).ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "missing_token", "Authorization: Bearer <token> is required")
        })?;
        let claims = self
            .verify(text, now_secs())
            .map_err(|e| ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()))?;
        claims.require(topic).map_err(|e| ApiError::new(StatusCode::FORBIDDEN, e.code(), e.to_string()))?;
        let page = match self.inner.store.read(topic, params.after, params.limit).await {
            Ok(ReadResult::Page(p)) => p,
            Ok(ReadResult::Pruned { oldest_seq }) => {
                return Err(ApiError {
                    oldest_seq: Some(oldest_seq),
                    ..ApiError::new(
                        StatusCode::GONE,
                        "pruned",
                        format!(
                            "envelopes after {} were removed by retention; the oldest kept is {oldest_seq}",
                            params.after
                        ),
                    )
                });
            }
            Err(e) => return Err(ApiError::store(&e)),
        };
        ::metrics::counter!(crate::metrics::JOURNAL_READS).increment(1);
        let wants_json = headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.to_ascii_lowercase().contains("application/json"));
        if wants_json {
            let mut envelopes = Vec::with_capacity(page.frames.len());
            for f in &page.frames {
                let e = crate::wire::envelope::decode(f).map_err(|e| {
                    ApiError::store(&StoreError::Database(format!("stored frame does not decode: {e}")))
                })?;
                envelopes.push(EnvelopeJson {
                    topic: e.topic,
                    seq: e.seq,
                    id: e.id,
                    ts: e.ts,
                    kind: e.kind,
                    payload_base64: STANDARD.encode(e.payload),
                });
            }
            #[derive(Serialize)]
            struct PageJson<'a> {
                envelopes: Vec<EnvelopeJson<'a>>,
                more: bool,
                next_after: u64,
            }
            return Ok(json_response(
                StatusCode::OK,
                &PageJson { envelopes, more: page.more, next_after: page.next_after },
            ));
        }
        let total: usize = page.frames.iter().map(|f| f.len()).sum();
        let mut out = Vec::with_capacity(total + 48);
        // Writing into a Vec cannot fail.
        let _ = rmp::encode::write_map_len(&mut out, 3);
        let _ = rmp::encode::write_str(&mut out, "envelopes");
        let _ = rmp::encode::write_array_len(&mut out, page.frames.len() as u32);
        for f in &page.frames {
            out.extend_from_slice(f);
        }
        let _ = rmp::encode::write_str(&mut out, "more");
        let _ = rmp::encode::write_bool(&mut out, page.more);
        let _ = rmp::encode::write_str(&mut out, "next_after");
        let _ = rmp::encode::write_uint(&mut out, page.next_after);
        Ok(bytes_response(StatusCode::OK, "application/msgpack", out))
    }

    async fn publish<B>(&self, req: Request<B>) -> Result<Response<ResponseBody>, ApiError>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let inner = &self.inner;
        if inner.credentials.is_empty() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "publishing_disabled",
                "no application credential is configured (journal.app_credentials)",
            ));
        }
        let given = bearer(req.headers()).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing_credential",
                "Authorization: Bearer <credential> is required",
            )
        })?;
        // Compare with every credential, not stopping at a match.
        let ok = inner.credentials.iter().fold(false, |acc, c| acc | ct_eq(c, given.as_bytes()));
        if !ok {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "bad_credential", "the credential is not accepted"));
        }
        let msgpack = match req.headers().get(header::CONTENT_TYPE) {
            None => false,
            Some(v) => {
                let media = v.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
                match media.as_str() {
                    "application/json" => false,
                    "application/msgpack" | "application/x-msgpack" | "application/vnd.msgpack" => true,
                    _ => {
                        return Err(ApiError::new(
                            StatusCode::UNSUPPORTED_MEDIA_TYPE,
                            "unsupported_media_type",
                            "send application/json or application/msgpack",
                        ));
                    }
                }
            }
        };
        let body = match Limited::new(req.into_body(), inner.max_body).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Err(self.too_large()),
            Err(e) => return Err(ApiError::bad_request(format!("cannot read the body: {e}"))),
        };
        let parsed = if msgpack { parse_msgpack(&body)? } else { parse_json(&body)? };
        if parsed.items.is_empty() {
            return Err(ApiError::bad_request("an empty array publishes nothing"));
        }
        let many = parsed.items.len() > 1;
        let mut batch = Vec::with_capacity(parsed.items.len());
        for (i, (topic, kind, payload)) in parsed.items.into_iter().enumerate() {
            let at = if many { format!("envelope {i}: ") } else { String::new() };
            let e = NewEnvelope::new(topic, kind, payload).map_err(|e| match e {
                InvalidEnvelope::Topic(m) => ApiError::bad_topic(format!("{at}{m}")),
                InvalidEnvelope::Kind => ApiError::new(StatusCode::BAD_REQUEST, "bad_kind", format!("{at}{e}")),
                InvalidEnvelope::TooLarge { .. } => {
                    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("{at}{e}"))
                }
            })?;
            batch.push(e);
        }
        let appended = inner.store.append(batch).await.map_err(|e| ApiError::store(&e))?;
        if parsed.batch {
            let list: Vec<AppendedJson<'_>> = appended.iter().map(AppendedJson::from).collect();
            Ok(json_response(StatusCode::CREATED, &list))
        } else {
            let one = appended.first().ok_or_else(|| ApiError::store(&StoreError::Database("no result".into())))?;
            Ok(json_response(StatusCode::CREATED, &AppendedJson::from(one)))
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Service {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let svc = self.clone();
        Box::pin(async move { Ok(svc.handle(req).await) })
    }
}

/// Serves `/metrics` from the process's Prometheus recorder on `addr`.
async fn serve_metrics(addr: SocketAddr) -> Result<(), JournalError> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| JournalError::Metrics(e.to_string()))?;
    let listener = TcpListener::bind(addr).await.map_err(|source| JournalError::Listen { addr, source })?;
    let h = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            h.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let handle = handle.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let handle = handle.clone();
                    async move {
                        Ok::<_, Infallible>(if req.uri().path() == "/metrics" {
                            bytes_response(StatusCode::OK, "text/plain; version=0.0.4", handle.render().into_bytes())
                        } else {
                            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").response()
                        })
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(())
}

/// The `switchboard journal` server: store, outbox, API, until SIGTERM or SIGINT; SIGHUP
/// reloads the subscriber keys. In-flight requests and the outbox get `grace` to finish.
pub async fn serve(cfg: Config, keys: KeySet, grace: Duration) -> Result<(), JournalError> {
    use tokio::signal::unix::{SignalKind, signal};
    if let Some(addr) = cfg.journal.metrics_listen {
        serve_metrics(addr).await?;
    }
    let store = EnvelopeStore::open(&cfg.journal).await?;
    let outbox = Outbox::start(store.clone(), &cfg.bus, OutboxOptions::from_config(&cfg.journal))?;
    let service = Service::new(store, &cfg.journal, keys, cfg.tokens.policy());
    let addr = cfg.journal.listen;
    let listener = TcpListener::bind(addr).await.map_err(|source| JournalError::Listen { addr, source })?;
    let local = listener.local_addr()?;
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready journal={local}")?;
        out.flush()?;
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(listen = %local, store = ?cfg.journal.store, "journal ready");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(error = %e, "journal accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let svc = service.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    // A client gets 10 s to send a request's head: an idle or trickling
                    // connection does not hold a task forever.
                    let conn = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), svc);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stop.changed() => {
                            conn.as_mut().graceful_shutdown();
                            let _ = conn.await;
                        }
                    }
                });
                while conns.try_join_next().is_some() {}
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => match cfg.tokens.load_keys() {
                Ok(k) => {
                    tracing::info!(keys = k.len(), "journal reloaded subscriber keys");
                    service.set_keys(k);
                }
                Err(e) => tracing::error!(error = %e, "journal kept its keys: reload failed"),
            },
        }
    }
    tracing::info!("journal stopping");
    drop(listener);
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await;
    outbox.close(grace).await;
    Ok(())
}

#[cfg(test)]
mod tests;
