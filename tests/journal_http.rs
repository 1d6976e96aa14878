//! The journal's HTTP API through the real `switchboard journal` binary, over real sockets.
//!
//! Each test starts the binary with a temporary config on port 0, waits for its
//! `ready journal=<addr>` line, and talks raw HTTP/1.1 to it (raw, so path tricks reach the
//! server byte for byte). PostgreSQL tests need 127.0.0.1:5432 (`scripts/services.sh
//! postgres`) and fail without it.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use switchboard::app::TokenIssuer;
use switchboard::wire::{EnvelopeRef, SigningKeyFile};

const CREDENTIAL: &str = "app-credential-0123456789";

/// A running journal process, killed on drop.
struct Journal {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    /// Every line the process printed on stdout.
    lines: std::sync::mpsc::Receiver<String>,
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Journal {
    /// Starts the binary with `journal_toml` appended to the `[journal]` section.
    fn start(journal_toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        switchboard::app::issuer::keygen(&dir.path().join("keys"), "k1").unwrap();
        let config = format!(
            "[tokens]\nkey_files = [\"keys/k1.pub\"]\n[bus]\nlocal_dir = \"run/bus\"\n\
             [journal]\nlisten = \"127.0.0.1:0\"\nsqlite_path = \"run/journal.sqlite\"\n{journal_toml}\n"
        );
        std::fs::write(dir.path().join("switchboard.toml"), config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["journal", "--config"])
            .arg(dir.path().join("switchboard.toml"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env("RUST_LOG", "warn")
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Some(a) = line.strip_prefix("ready journal=") {
                    let _ = tx.send(a.parse::<SocketAddr>().unwrap());
                }
                let _ = lines_tx.send(line);
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(30)).expect("the journal printed no ready line");
        Self { child, addr, dir, lines }
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("keys/k1.secret")
    }

    fn token(&self, topics: &[&str]) -> String {
        TokenIssuer::from_file(&self.key()).unwrap().mint("user:1", topics, now(), Duration::from_secs(300)).unwrap()
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        request(self.addr, method, path, headers, body)
    }

    fn post_json(&self, body: &str) -> Resp {
        let auth = format!("Bearer {CREDENTIAL}");
        self.call(
            "POST",
            "/v1/envelopes",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            body.as_bytes(),
        )
    }

    fn get(&self, path: &str, token: &str, accept: &str) -> Resp {
        let auth = format!("Bearer {token}");
        self.call("GET", path, &[("Authorization", &auth), ("Accept", accept)], b"")
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    /// Asserts an error answer: status and code.
    #[track_caller]
    fn error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", String::from_utf8_lossy(&self.body));
        let v = self.json();
        assert_eq!(v["error"], code, "{v}");
        assert!(v["message"].is_string(), "{v}");
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// One raw HTTP/1.1 request on a fresh connection (`Connection: close`).
fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: journal\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    // The server may answer (413) before reading a large body and close; that is fine.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a complete response head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Resp { status, headers, body: raw[split + 4..].to_vec() }
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn msgpack_one(topic: &str, kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    rmp::encode::write_array_len(&mut b, 3).unwrap();
    rmp::encode::write_str(&mut b, topic).unwrap();
    rmp::encode::write_str(&mut b, kind).unwrap();
    rmp::encode::write_bin(&mut b, payload).unwrap();
    b
}

type Frame = (u8, String, u64, String, u64, String, serde_bytes::ByteBuf);

#[derive(serde::Deserialize)]
struct MsgpackPage {
    envelopes: Vec<Frame>,
    more: bool,
    next_after: u64,
}

fn publish_and_reconcile(j: &Journal) {
    // JSON, single and batch; the payload is the JSON text as sent.
    let r = j.post_json(r#"{"topic":"post:42","kind":"comment.created","payload":{"b":1,"a":[2]}}"#);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!((v["topic"].as_str(), v["seq"].as_u64()), (Some("post:42"), Some(1)));
    assert_eq!(v["id"].as_str().unwrap().len(), 26);
    assert!(v["ts"].as_u64().unwrap() > 1_600_000_000_000);
    let r = j.post_json(
        r#"[{"topic":"post:42","kind":"k","payload":null},{"topic":"user:7","kind":"k","payload_base64":"AAEC"}]"#,
    );
    assert_eq!(r.status, 201);
    let v = r.json();
    assert_eq!(
        (v[0]["seq"].as_u64(), v[1]["topic"].as_str(), v[1]["seq"].as_u64()),
        (Some(2), Some("user:7"), Some(1))
    );
    // MessagePack, single and batch.
    let auth = format!("Bearer {CREDENTIAL}");
    let mp = [("Authorization", auth.as_str()), ("Content-Type", "application/msgpack")];
    let r = j.call("POST", "/v1/envelopes", &mp, &msgpack_one("post:42", "bin", &[0, 159, 255]));
    assert_eq!((r.status, r.json()["seq"].as_u64()), (201, Some(3)));
    let mut batch = vec![0x92];
    batch.extend(msgpack_one("post:42", "b", b"x"));
    batch.extend(msgpack_one("post:42", "b", b"y"));
    let r = j.call("POST", "/v1/envelopes", &mp, &batch);
    assert_eq!(r.status, 201);
    assert_eq!(r.json().as_array().unwrap().iter().map(|a| a["seq"].as_u64().unwrap()).collect::<Vec<_>>(), [4, 5]);

    // Reconcile: MessagePack by default, the stored frames themselves.
    let token = j.token(&["post:42"]);
    let r = j.get("/v1/topics/post:42/envelopes?after=0&limit=3", &token, "*/*");
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/msgpack")));
    let page: MsgpackPage = rmp_serde::from_slice(&r.body).unwrap();
    assert_eq!((page.envelopes.len(), page.more, page.next_after), (3, true, 3));
    let mut expected = Vec::new();
    rmp::encode::write_map_len(&mut expected, 3).unwrap();
    rmp::encode::write_str(&mut expected, "envelopes").unwrap();
    rmp::encode::write_array_len(&mut expected, 3).unwrap();
    for (t, topic, seq, id, ts, kind, payload) in &page.envelopes {
        assert_eq!(*t, 19);
        expected.extend(EnvelopeRef { topic, seq: *seq, id, ts: *ts, kind, payload }.encode());
    }
    rmp::encode::write_str(&mut expected, "more").unwrap();
    rmp::encode::write_bool(&mut expected, true).unwrap();
    rmp::encode::write_str(&mut expected, "next_after").unwrap();
    rmp::encode::write_uint(&mut expected, 3).unwrap();
    assert_eq!(r.body, expected, "map and array headers around the frames, canonical encoding");
    assert_eq!(&page.envelopes[0].6[..], br#"{"b":1,"a":[2]}"#);
    assert_eq!(&page.envelopes[1].6[..], b"null");
    assert_eq!(&page.envelopes[2].6[..], &[0, 159, 255]);
    let r = j.get("/v1/topics/post:42/envelopes?after=3", &token, "application/msgpack");
    let page: MsgpackPage = rmp_serde::from_slice(&r.body).unwrap();
    assert_eq!(page.envelopes.iter().map(|e| e.2).collect::<Vec<_>>(), [4, 5]);
    assert_eq!((page.more, page.next_after), (false, 5));
    let r = j.get("/v1/topics/post:42/envelopes?after=5", &token, "application/msgpack");
    let page: MsgpackPage = rmp_serde::from_slice(&r.body).unwrap();
    assert_eq!((page.envelopes.len(), page.more, page.next_after), (0, false, 5));

    // JSON on request; percent-encoded topic.
    let r = j.get("/v1/topics/post%3A42/envelopes?after=1&limit=2", &token, "application/json");
    assert_eq!((r.status, r.header("content-type")), (200, Some("application/json")));
    let v = r.json();
    assert_eq!((v["more"].as_bool(), v["next_after"].as_u64()), (Some(true), Some(3)));
    let e = &v["envelopes"][1];
    assert_eq!((e["topic"].as_str(), e["seq"].as_u64(), e["kind"].as_str()), (Some("post:42"), Some(3), Some("bin")));
    assert_eq!(e["payload_base64"], base64::engine::general_purpose::STANDARD.encode([0, 159, 255]));
    assert_eq!(e["id"].as_str().unwrap().len(), 26);

    let r = j.call("GET", "/healthz", &[], b"");
    assert_eq!(r.status, 200);
}

#[test]
fn journal_http_publish_and_reconcile_sqlite() {
    let j = Journal::start(&format!("app_credentials = [{CREDENTIAL:?}]"));
    publish_and_reconcile(&j);
}

/// A PostgreSQL database for one test, dropped afterwards.
struct Db(String);

fn psql(sql: &str) {
    let ok = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qtAc", sql])
        .status()
        .expect("psql must be installed (scripts/services.sh postgres)")
        .success();
    assert!(ok, "psql failed: {sql} (is PostgreSQL running at 127.0.0.1:5432?)");
}

impl Db {
    fn new(tag: &str) -> Self {
        let name = format!("switchboard_test_{}_{tag}", std::process::id());
        psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&format!("CREATE DATABASE {name}"));
        Self(name)
    }
    fn toml(&self) -> String {
        format!(
            "store = \"postgres\"\npostgres_url = \"host=127.0.0.1 user=postgres dbname={}\"\nstore_timeout_secs = 2\n",
            self.0
        )
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0));
    }
}

#[test]
fn journal_http_publish_and_reconcile_postgres() {
    let db = Db::new("http");
    let j = Journal::start(&format!("app_credentials = [{CREDENTIAL:?}]\n{}", db.toml()));
    publish_and_reconcile(&j);
}

#[test]
fn journal_http_publish_errors() {
    let off = Journal::start("");
    off.post_json(r#"{"topic":"t","kind":"k","payload":1}"#).error(403, "publishing_disabled");

    let j = Journal::start(&format!("app_credentials = [{CREDENTIAL:?}]\nmax_body_bytes = 4096"));
    let ok = r#"{"topic":"t","kind":"k","payload":1}"#;
    j.call("POST", "/v1/envelopes", &[("Content-Type", "application/json")], ok.as_bytes())
        .error(401, "missing_credential");
    let wrong = [("Authorization", "Bearer app-credential-0123456780"), ("Content-Type", "application/json")];
    j.call("POST", "/v1/envelopes", &wrong, ok.as_bytes()).error(401, "bad_credential");
    let basic = [("Authorization", "Basic YTpi")];
    j.call("POST", "/v1/envelopes", &basic, ok.as_bytes()).error(401, "missing_credential");
    let auth = format!("Bearer {CREDENTIAL}");
    let r = j.call("POST", "/v1/envelopes", &[("Authorization", &auth), ("Content-Type", "text/plain")], ok.as_bytes());
    r.error(415, "unsupported_media_type");
    let big = format!(r#"{{"topic":"t","kind":"k","payload":"{}"}}"#, "x".repeat(5000));
    j.post_json(&big).error(413, "too_large");
    j.post_json("{not json").error(400, "bad_request");
    j.post_json("[]").error(400, "bad_request");
    j.post_json(r#"{"topic":"t","kind":"k"}"#).error(400, "bad_request");
    j.post_json(r#"{"topic":"t","kind":"k","payload":1,"payload_base64":"AA=="}"#).error(400, "bad_request");
    j.post_json(r#"{"topic":"t","kind":"k","payload_base64":"***"}"#).error(400, "bad_request");
    j.post_json(r#"{"topic":"a b","kind":"k","payload":1}"#).error(400, "bad_topic");
    j.post_json(r#"{"topic":"a/b","kind":"k","payload":1}"#).error(400, "bad_topic");
    j.post_json(r#"{"topic":"","kind":"k","payload":1}"#).error(400, "bad_topic");
    j.post_json(r#"{"topic":"t","kind":"","payload":1}"#).error(400, "bad_kind");
    j.post_json(&format!(r#"{{"topic":"t","kind":"{}","payload":1}}"#, "k".repeat(129))).error(400, "bad_kind");
    // A bad envelope anywhere in a batch refuses the whole batch.
    j.post_json(r#"[{"topic":"t","kind":"k","payload":1},{"topic":"t","kind":"","payload":1}]"#).error(400, "bad_kind");
    let mp = [("Authorization", auth.as_str()), ("Content-Type", "application/msgpack")];
    j.call("POST", "/v1/envelopes", &mp, &[0x93, 0xa1]).error(400, "bad_request");
    j.call("POST", "/v1/envelopes", &mp, &msgpack_one("a b", "k", b"")).error(400, "bad_topic");
    let token = j.token(&["t"]);
    let r = j.get("/v1/topics/t/envelopes", &token, "application/json");
    assert_eq!(r.json()["envelopes"].as_array().unwrap().len(), 0, "nothing refused was stored");

    // The envelope limit (1 MiB frame) holds even when the body limit is larger.
    let wide = Journal::start(&format!("app_credentials = [{CREDENTIAL:?}]\nmax_body_bytes = 4194304"));
    let payload = base64::engine::general_purpose::STANDARD.encode(vec![0u8; 1024 * 1024]);
    wide.post_json(&format!(r#"{{"topic":"t","kind":"k","payload_base64":"{payload}"}}"#)).error(413, "too_large");
}

#[test]
fn journal_http_reconcile_errors() {
    let j = Journal::start(&format!("app_credentials = [{CREDENTIAL:?}]"));
    assert_eq!(j.post_json(r#"{"topic":"post:1","kind":"k","payload":1}"#).status, 201);
    let token = j.token(&["post:1"]);
    let path = "/v1/topics/post:1/envelopes";
    j.call("GET", path, &[], b"").error(401, "missing_token");
    let r = j.get(path, "not-a-token", "application/json");
    r.error(401, "token_malformed");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let issuer = TokenIssuer::from_file(&j.key()).unwrap();
    let expired = issuer.mint("u", &["post:1"], now() - 7200, Duration::from_secs(60)).unwrap();
    j.get(path, &expired, "application/json").error(401, "token_expired");
    let mut raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&token).unwrap();
    *raw.last_mut().unwrap() ^= 1;
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    j.get(path, &forged, "application/json").error(401, "token_bad_signature");
    let stranger = TokenIssuer::new(SigningKeyFile::new("k9", [9; 32]));
    let unknown = stranger.mint("u", &["post:1"], now(), Duration::from_secs(60)).unwrap();
    j.get(path, &unknown, "application/json").error(401, "token_unknown_kid");
    let long = issuer.mint("u", &["post:1"], now(), Duration::from_secs(7200)).unwrap();
    j.get(path, &long, "application/json").error(401, "token_ttl_too_long");
    let other = j.token(&["post:2"]);
    j.get(path, &other, "application/json").error(403, "topic_not_granted");
    for q in ["after=x", "after=-1", "after=", "limit=0", "limit=abc", "after=1&after=2", "after=99999999999999999999"]
    {
        j.get(&format!("{path}?{q}"), &token, "application/json").error(400, "bad_request");
    }
    let long_topic = format!("/v1/topics/{}/envelopes", "x".repeat(201));
    for p in [
        "/v1/topics/../envelopes",
        "/v1/topics/%2e%2e/envelopes",
        "/v1/topics/post%2F1/envelopes",
        "/v1/topics/post:1/../envelopes",
        "/v1/topics//envelopes",
        "/v1/topics/%FF/envelopes",
        "/v1/topics/%C3%A9/envelopes",
        "/v1/topics/a%2/envelopes",
        "/v1/topics/a%20b/envelopes",
        long_topic.as_str(),
    ] {
        j.get(p, &token, "application/json").error(400, "bad_topic");
    }
    j.get("/v1/topics/post:1", &token, "application/json").error(404, "not_found");
    j.get("/v1/nothing", &token, "application/json").error(404, "not_found");
    j.get("/", &token, "application/json").error(404, "not_found");
    let r = j.call("POST", path, &[], b"{}");
    r.error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    let r = j.call("GET", "/v1/envelopes", &[], b"");
    r.error(405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    let r = j.call("GET", path, &[("Authorization", &format!("Bearer {token}"))], &vec![b'x'; 2 * 1024 * 1024]);
    r.error(413, "too_large");
    // After all that, the right request still works.
    let r = j.get(path, &token, "application/json");
    assert_eq!(r.json()["envelopes"][0]["seq"], 1);
}

#[test]
fn journal_http_gone_after_retention() {
    let j = Journal::start(&format!(
        "app_credentials = [{CREDENTIAL:?}]\nretention_max_count = 3\nretention_interval_secs = 1\nretention_batch = 2"
    ));
    for i in 0..10 {
        let r = j.post_json(&format!(r#"{{"topic":"room:1","kind":"k","payload":{i}}}"#));
        assert_eq!(r.status, 201);
    }
    let token = j.token(&["room:1"]);
    let path = "/v1/topics/room:1/envelopes";
    wait_for("retention", || j.get(&format!("{path}?after=6"), &token, "application/json").status == 410);
    let r = j.get(&format!("{path}?after=0"), &token, "application/json");
    r.error(410, "pruned");
    assert_eq!(r.json()["oldest_seq"], 8);
    let r = j.get(&format!("{path}?after=7"), &token, "application/json");
    let seqs: Vec<u64> = r.json()["envelopes"].as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [8, 9, 10]);
}

#[test]
fn journal_http_store_down_is_503() {
    let db = Db::new("down");
    let j = Journal::start(&format!("app_credentials = [{CREDENTIAL:?}]\n{}", db.toml()));
    assert_eq!(j.post_json(r#"{"topic":"t","kind":"k","payload":1}"#).status, 201);
    psql(&format!("DROP DATABASE {} WITH (FORCE)", db.0));
    let r = j.post_json(r#"{"topic":"t","kind":"k","payload":2}"#);
    r.error(503, "store_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    let token = j.token(&["t"]);
    j.get("/v1/topics/t/envelopes", &token, "application/json").error(503, "store_unavailable");
    j.call("GET", "/healthz", &[], b"").error(503, "store_unavailable");
}

#[test]
fn journal_http_stops_on_sigterm_after_one_ready_line() {
    let mut j = Journal::start(&format!("app_credentials = [{CREDENTIAL:?}]"));
    assert_eq!(j.post_json(r#"{"topic":"t","kind":"k","payload":1}"#).status, 201);
    let pid = nix::unistd::Pid::from_raw(j.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = j.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the journal did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let out: Vec<String> = j.lines.try_iter().collect();
    assert_eq!(out, [format!("ready journal={}", j.addr)], "exactly one line on stdout");
}

#[test]
fn journal_http_metrics_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let j = Journal::start(&format!("app_credentials = [{CREDENTIAL:?}]\nmetrics_listen = \"{port}\""));
    assert_eq!(j.post_json(r#"{"topic":"t","kind":"k","payload":1}"#).status, 201);
    j.call("GET", "/metrics", &[], b"").error(404, "not_found");
    wait_for("the metrics", || {
        let r = request(port, "GET", "/metrics", &[], b"");
        r.status == 200 && String::from_utf8_lossy(&r.body).contains("switchboard_journal_appends_total 1")
    });
}
