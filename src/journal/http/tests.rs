//! HTTP API unit tests: parsing rules, and the service mounted in another hyper application.

use super::*;
use crate::journal::store::tests::sqlite_config;

#[test]
fn journal_query_rules() {
    let p = |q: &str| parse_query(Some(q), 1000);
    assert_eq!(parse_query(None, 1000).unwrap(), ReadParams { after: 0, limit: 100 });
    assert_eq!(p("after=5&limit=7").unwrap(), ReadParams { after: 5, limit: 7 });
    assert_eq!(p("limit=5000").unwrap().limit, 1000, "capped at max_page");
    assert_eq!(parse_query(None, 10).unwrap().limit, 10);
    assert_eq!(p("after=18446744073709551615&x=y").unwrap().after, u64::MAX);
    for bad in
        ["after=-1", "after=", "after=1e3", "after=18446744073709551616", "limit=0", "after=1&after=2", "after=%31"]
    {
        assert_eq!(p(bad).unwrap_err().code, "bad_request", "{bad}");
    }
}

#[test]
fn journal_topic_segment_rules() {
    assert_eq!(decode_topic("post:42").unwrap(), "post:42");
    assert_eq!(decode_topic("post%3A42").unwrap(), "post:42");
    assert_eq!(decode_topic("a%25b").unwrap(), "a%b");
    for bad in ["", "..", ".", "%2E%2E", "a%2Fb", "a/b", "%zz", "%4", "%FF", "a%20b", "%C3%A9", &"x".repeat(201)] {
        assert_eq!(decode_topic(bad).unwrap_err().code, "bad_topic", "{bad:?}");
    }
}

#[test]
fn journal_msgpack_bodies() {
    let mut one = Vec::new();
    rmp::encode::write_array_len(&mut one, 3).unwrap();
    rmp::encode::write_str(&mut one, "t").unwrap();
    rmp::encode::write_str(&mut one, "k").unwrap();
    rmp::encode::write_bin(&mut one, &[0, 255]).unwrap();
    let p = parse_msgpack(&one).unwrap();
    assert!(!p.batch);
    assert_eq!(p.items, [("t".to_owned(), "k".to_owned(), vec![0, 255])]);
    let mut two = Vec::new();
    rmp::encode::write_array_len(&mut two, 2).unwrap();
    two.extend_from_slice(&one);
    two.extend_from_slice(&one);
    let p = parse_msgpack(&two).unwrap();
    assert!(p.batch && p.items.len() == 2);
    assert!(parse_msgpack(&one[..one.len() - 1]).is_err());
    assert!(parse_msgpack(&[0x92, 0xa1, b't', 0xa1, b'k']).is_err());
    let mut trailing = one.clone();
    trailing.push(0);
    assert!(parse_msgpack(&trailing).is_err());
}

#[test]
fn journal_json_bodies() {
    let p = parse_json(br#" {"topic":"t","kind":"k","payload": {"b":1, "a":null}} "#).unwrap();
    assert_eq!(p.items[0].2, br#"{"b":1, "a":null}"#.to_vec(), "the exact JSON text, key order kept");
    let p = parse_json(br#"{"topic":"t","kind":"k","payload":null}"#).unwrap();
    assert_eq!(p.items[0].2, b"null".to_vec());
    let p = parse_json(br#"[{"topic":"t","kind":"k","payload_base64":"AAE"}]"#).unwrap();
    assert!(p.batch);
    assert_eq!(p.items[0].2, vec![0, 1]);
    for bad in [
        &br#"{"topic":"t","kind":"k"}"#[..],
        br#"{"topic":"t","kind":"k","payload":1,"payload_base64":""}"#,
        br#"{"topic":"t","kind":"k","payload":1,"extra":2}"#,
        br#"{"topic":"t","kind":"k","payload_base64":"!!"}"#,
        br#""text""#,
        b"",
    ] {
        assert_eq!(parse_json(bad).unwrap_err().code, "bad_request", "{}", String::from_utf8_lossy(bad));
    }
}

/// The blog demo's situation: its own hyper service answers its routes and hands `/v1/...`
/// to the journal's.
#[tokio::test]
async fn journal_service_mounts_in_another_hyper_app() {
    use http_body_util::BodyExt as _;
    let dir = tempfile::tempdir().unwrap();
    let cfg = JournalConfig { app_credentials: vec!["credential-0123456789".into()], ..sqlite_config(dir.path()) };
    let store = EnvelopeStore::open(&cfg).await.unwrap();
    let key = crate::wire::SigningKeyFile::new("k1", [3; 32]);
    let keys = KeySet::parse(&key.public_text()).unwrap();
    let journal = Service::new(store, &cfg, keys, TokenPolicy::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let journal = journal.clone();
            tokio::spawn(async move {
                let app = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let journal = journal.clone();
                    async move {
                        if Service::handles(req.uri().path()) {
                            Ok::<_, Infallible>(journal.handle(req).await)
                        } else {
                            Ok(bytes_response(StatusCode::OK, "text/html", b"<p>blog</p>".to_vec()))
                        }
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), app).await;
            });
        }
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut call = async |req: Request<Full<Bytes>>| {
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        (status, resp.into_body().collect().await.unwrap().to_bytes())
    };
    let (s, b) = call(Request::get("/").header("host", "x").body(Full::default()).unwrap()).await;
    assert_eq!((s, &b[..]), (StatusCode::OK, &b"<p>blog</p>"[..]));
    let post = Request::post("/v1/envelopes")
        .header("host", "x")
        .header("authorization", "Bearer credential-0123456789")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(br#"{"topic":"post:1","kind":"k","payload":[1]}"#)))
        .unwrap();
    let (s, b) = call(post).await;
    assert_eq!(s, StatusCode::CREATED, "{}", String::from_utf8_lossy(&b));
    let token = crate::app::TokenIssuer::new(key).mint("u", &["post:1"], now_secs(), Duration::from_secs(60)).unwrap();
    let get = Request::get("/v1/topics/post:1/envelopes")
        .header("host", "x")
        .header("authorization", format!("Bearer {token}"))
        .header("accept", "application/json")
        .body(Full::default())
        .unwrap();
    let (s, b) = call(get).await;
    assert_eq!(s, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    assert_eq!(v["envelopes"][0]["payload_base64"], "WzFd");
    assert_eq!(v["next_after"], 1);
}
