//! The blog-comments demo: an application server that keeps every business rule, next to a
//! router that keeps none.
//!
//! One process: the blog (posts and comments in its own SQLite file), the token endpoint that
//! decides who may follow what, the comment endpoint that stores a comment and publishes its
//! envelope through [`switchboard::app::Publisher`] (journal append, then the local bus), and
//! the journal's reconciliation API ([`switchboard::journal::http::Service`], mounted under
//! `/v1/`) over the same journal database. The page is static HTML plus the JS client, served
//! from `clients/js/src` as ES modules.
//!
//!     cargo run --release --example blog -- --config run/switchboard.toml \
//!         --listen 127.0.0.1:8080 --key run/keys/dev.secret --db run/blog.sqlite \
//!         --router-ws ws://127.0.0.1:8000/ws --js clients/js
//!
//! Business rules (this file, and only here):
//! - post 1 is public; post 2 is private to alice and bob (carol's token request is a 403
//!   with the reason, which the page shows);
//! - a token for `user:{id}` is minted only for that user;
//! - a reply to someone else's comment also sends `notification.reply` to `user:{author}`.
//!
//! Demo identity: `?as=alice` (or the `demo_user` cookie that `/login?user=alice` sets). No
//! passwords: it says so on the page.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rusqlite::{OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};
use switchboard::app::{NewEnvelope, Publisher, TokenIssuer};
use switchboard::config::Config;
use switchboard::journal::http::Service as JournalService;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

const USERS: [&str; 3] = ["alice", "bob", "carol"];
const TOKEN_TTL: Duration = Duration::from_secs(300);
const MAX_COMMENT_CHARS: usize = 2000;
const PAGE: &str = include_str!("blog/index.html");

struct Args {
    config: PathBuf,
    listen: SocketAddr,
    key: PathBuf,
    db: PathBuf,
    router_ws: String,
    js: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        config: "run/switchboard.toml".into(),
        listen: "127.0.0.1:8080".parse()?,
        key: "run/keys/dev.secret".into(),
        db: "run/blog.sqlite".into(),
        router_ws: "ws://127.0.0.1:8000/ws".into(),
        js: "clients/js".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--config" => a.config = val()?.into(),
            "--listen" => a.listen = val()?.parse().context("--listen")?,
            "--key" => a.key = val()?.into(),
            "--db" => a.db = val()?.into(),
            "--router-ws" => a.router_ws = val()?,
            "--js" => a.js = val()?.into(),
            "-h" | "--help" => {
                println!("blog [--config F] [--listen ADDR] [--key SECRET] [--db FILE] [--router-ws URL] [--js DIR]");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(a)
}

struct App {
    db: Mutex<rusqlite::Connection>,
    publisher: Publisher,
    issuer: TokenIssuer,
    journal: JournalService,
    router_ws: String,
    js_src: PathBuf,
    msgpack_dir: PathBuf,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn open_db(path: &Path) -> anyhow::Result<rusqlite::Connection> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let db = rusqlite::Connection::open(path).with_context(|| format!("open {}", path.display()))?;
    db.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS posts (
           id INTEGER PRIMARY KEY, title TEXT NOT NULL, body TEXT NOT NULL,
           readers TEXT -- comma-separated users allowed; NULL: public
         );
         CREATE TABLE IF NOT EXISTS comments (
           id INTEGER PRIMARY KEY AUTOINCREMENT, post_id INTEGER NOT NULL REFERENCES posts(id),
           parent_id INTEGER REFERENCES comments(id), author TEXT NOT NULL, body TEXT NOT NULL,
           created_at INTEGER NOT NULL, seq INTEGER
         );",
    )?;
    let n: i64 = db.query_row("SELECT count(*) FROM posts", [], |r| r.get(0))?;
    if n == 0 {
        db.execute(
            "INSERT INTO posts (id, title, body, readers) VALUES
             (1, 'Hello, Switchboard', 'This post is public: anyone may follow its comments live.', NULL),
             (2, 'Team roadmap (private)', 'Only alice and bob may read this post and follow its comments.', 'alice,bob')",
            [],
        )?;
    }
    Ok(db)
}

#[derive(Clone)]
struct Post {
    id: i64,
    title: String,
    body: String,
    readers: Option<Vec<String>>,
}

impl Post {
    /// The business rule: who may read (and so follow) this post.
    fn may_read(&self, user: &str) -> Result<(), String> {
        match &self.readers {
            None => Ok(()),
            Some(r) if r.iter().any(|u| u == user) => Ok(()),
            Some(r) => Err(format!(
                "\"{}\" is private to {}; you are signed in as {user}, so you may not follow it.",
                self.title,
                r.join(" and ")
            )),
        }
    }
    fn json(&self) -> Value {
        json!({"id": self.id, "title": self.title, "body": self.body, "private": self.readers.is_some()})
    }
}

fn load_post(db: &rusqlite::Connection, id: i64) -> rusqlite::Result<Option<Post>> {
    db.query_row("SELECT id, title, body, readers FROM posts WHERE id = ?1", [id], |r| {
        let readers: Option<String> = r.get(3)?;
        Ok(Post {
            id: r.get(0)?,
            title: r.get(1)?,
            body: r.get(2)?,
            readers: readers.map(|s| s.split(',').map(str::to_owned).collect()),
        })
    })
    .optional()
}

fn comment_json(r: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
    Ok(json!({
        "id": r.get::<_, i64>(0)?, "post_id": r.get::<_, i64>(1)?, "parent_id": r.get::<_, Option<i64>>(2)?,
        "author": r.get::<_, String>(3)?, "body": r.get::<_, String>(4)?, "created_at": r.get::<_, i64>(5)?,
    }))
}

type Resp = Response<Full<Bytes>>;

fn respond(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    respond(status, "application/json", serde_json::to_vec(v).unwrap_or_default())
}

fn error(status: StatusCode, code: &str, reason: impl Into<String>) -> Resp {
    json_resp(status, &json!({"error": code, "reason": reason.into()}))
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?.split('&').filter_map(|p| p.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// The demo login: `?as=NAME`, else the `demo_user` cookie. Only the fixed users exist.
fn demo_user<B>(req: &Request<B>) -> Option<&'static str> {
    let from_query = query_param(req.uri().query(), "as");
    let from_cookie = req
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == "demo_user")
        .map(|(_, v)| v);
    let name = from_query.or(from_cookie)?;
    USERS.iter().copied().find(|u| *u == name)
}

impl App {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Resp {
        let path = req.uri().path().to_owned();
        if JournalService::handles(&path) {
            return self.journal.handle(req).await;
        }
        let user = demo_user(&req);
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        let u = user.unwrap_or(""); // only read after the not-signed-in arm
        let result = match (&method, segs.as_slice()) {
            (&Method::GET, [""]) | (&Method::GET, ["posts", _]) => Ok(self.page()),
            (&Method::GET, ["login"]) => Ok(login(req.uri().query())),
            (&Method::GET, ["js", file]) => Ok(static_file(&self.js_src, file)),
            (&Method::GET, ["vendor", "msgpack", file]) => Ok(static_file(&self.msgpack_dir, file)),
            (&Method::GET, ["vendor", "msgpack", "utils", file]) => {
                Ok(static_file(&self.msgpack_dir.join("utils"), file))
            }
            (&Method::GET, ["api", "me"]) => Ok(json_resp(StatusCode::OK, &json!({"user": user, "users": USERS}))),
            (&Method::GET, ["api", "posts"]) => self.posts(user).await,
            (_, ["api", ..]) if user.is_none() => {
                Ok(error(StatusCode::UNAUTHORIZED, "not_signed_in", "pick a demo user first (alice, bob or carol)"))
            }
            (&Method::GET, ["api", "posts", id]) => self.post(u, id).await,
            (&Method::GET, ["api", "posts", id, "token"]) => self.post_token(u, id).await,
            (&Method::POST, ["api", "posts", id, "comments"]) => self.add_comment(u, id, req).await,
            (&Method::GET, ["api", "users", name, "token"]) => Ok(self.user_token(u, name)),
            _ => Ok(error(StatusCode::NOT_FOUND, "not_found", format!("no route {method} {path}"))),
        };
        result.unwrap_or_else(|e| {
            eprintln!("blog: {method} {path}: {e:#}");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{e:#}"))
        })
    }

    fn page(&self) -> Resp {
        let cfg = json!({"routerWs": self.router_ws}).to_string();
        respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.replace("__DEMO_CONFIG__", &cfg))
    }

    async fn posts(&self, user: Option<&str>) -> anyhow::Result<Resp> {
        let db = self.db.lock().await;
        let mut st = db.prepare("SELECT id FROM posts ORDER BY id")?;
        let ids: Vec<i64> = st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        let mut out = vec![];
        for id in ids {
            if let Some(p) = load_post(&db, id)? {
                let mut v = p.json();
                v["readable"] = json!(user.is_some_and(|u| p.may_read(u).is_ok()));
                out.push(v);
            }
        }
        Ok(json_resp(StatusCode::OK, &json!({ "posts": out })))
    }

    /// The post and its comments, with the seq they reflect: the page subscribes after it.
    async fn post(&self, user: &str, id: &str) -> anyhow::Result<Resp> {
        let Ok(id) = id.parse::<i64>() else { return Ok(error(StatusCode::NOT_FOUND, "no_post", "no such post")) };
        let db = self.db.lock().await;
        let Some(post) = load_post(&db, id)? else {
            return Ok(error(StatusCode::NOT_FOUND, "no_post", "no such post"));
        };
        if let Err(reason) = post.may_read(user) {
            return Ok(json_resp(
                StatusCode::FORBIDDEN,
                &json!({"error": "forbidden", "reason": reason, "post": {"id": post.id, "title": post.title}}),
            ));
        }
        let mut st = db.prepare(
            "SELECT id, post_id, parent_id, author, body, created_at FROM comments WHERE post_id = ?1 ORDER BY id",
        )?;
        let comments: Vec<Value> = st.query_map([id], comment_json)?.collect::<Result<_, _>>()?;
        let seq: i64 =
            db.query_row("SELECT coalesce(max(seq), 0) FROM comments WHERE post_id = ?1", [id], |r| r.get(0))?;
        Ok(json_resp(StatusCode::OK, &json!({"post": post.json(), "comments": comments, "seq": seq})))
    }

    /// The authorization decision, then a token for exactly this topic.
    async fn post_token(&self, user: &str, id: &str) -> anyhow::Result<Resp> {
        let Ok(id) = id.parse::<i64>() else { return Ok(error(StatusCode::NOT_FOUND, "no_post", "no such post")) };
        let post = load_post(&*self.db.lock().await, id)?;
        let Some(post) = post else { return Ok(error(StatusCode::NOT_FOUND, "no_post", "no such post")) };
        if let Err(reason) = post.may_read(user) {
            return Ok(error(StatusCode::FORBIDDEN, "forbidden", reason));
        }
        Ok(self.mint(user, &format!("post:{id}")))
    }

    fn user_token(&self, user: &str, name: &str) -> Resp {
        if name != user {
            return error(StatusCode::FORBIDDEN, "forbidden", format!("notifications of {name} are for {name} only"));
        }
        self.mint(user, &format!("user:{user}"))
    }

    fn mint(&self, user: &str, topic: &str) -> Resp {
        match self.issuer.mint(&format!("user:{user}"), &[topic], now_secs(), TOKEN_TTL) {
            Ok(token) => {
                json_resp(StatusCode::OK, &json!({"token": token, "topic": topic, "ttl": TOKEN_TTL.as_secs()}))
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "mint_failed", e.to_string()),
        }
    }

    /// Stores a comment and publishes `comment.created` to `post:{id}`, and for a reply to
    /// someone else `notification.reply` to `user:{author}`, in one journal transaction.
    async fn add_comment(&self, user: &str, id: &str, req: Request<Incoming>) -> anyhow::Result<Resp> {
        #[derive(Deserialize)]
        struct In {
            body: String,
            parent_id: Option<i64>,
        }
        let Ok(id) = id.parse::<i64>() else { return Ok(error(StatusCode::NOT_FOUND, "no_post", "no such post")) };
        let bytes = match Limited::new(req.into_body(), 16 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return Ok(error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "comment too large")),
        };
        let Ok(input) = serde_json::from_slice::<In>(&bytes) else {
            return Ok(error(StatusCode::BAD_REQUEST, "bad_request", "expected {\"body\": text, \"parent_id\"?: id}"));
        };
        let text = input.body.trim();
        if text.is_empty() || text.chars().count() > MAX_COMMENT_CHARS {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "bad_comment",
                format!("a comment is 1..={MAX_COMMENT_CHARS} characters"),
            ));
        }
        // One lock over store + publish: comments get seqs in the order of their ids, and a
        // page read sees every comment together with the seq that covers it.
        let db = self.db.lock().await;
        let Some(post) = load_post(&db, id)? else {
            return Ok(error(StatusCode::NOT_FOUND, "no_post", "no such post"));
        };
        if let Err(reason) = post.may_read(user) {
            return Ok(error(StatusCode::FORBIDDEN, "forbidden", reason));
        }
        let parent_author: Option<String> = match input.parent_id {
            None => None,
            Some(pid) => {
                let a = db
                    .query_row("SELECT author FROM comments WHERE id = ?1 AND post_id = ?2", params![pid, id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                match a {
                    Some(a) => Some(a),
                    None => {
                        return Ok(error(
                            StatusCode::BAD_REQUEST,
                            "no_parent",
                            "the comment replied to is not on this post",
                        ));
                    }
                }
            }
        };
        let now = now_secs() as i64;
        db.execute(
            "INSERT INTO comments (post_id, parent_id, author, body, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, input.parent_id, user, text, now],
        )?;
        let cid = db.last_insert_rowid();
        let comment = db.query_row(
            "SELECT id, post_id, parent_id, author, body, created_at FROM comments WHERE id = ?1",
            [cid],
            comment_json,
        )?;
        let mut batch = vec![NewEnvelope::new(format!("post:{id}"), "comment.created", serde_json::to_vec(&comment)?)?];
        if let Some(to) = parent_author.as_deref().filter(|a| *a != user) {
            let note = json!({"post_id": id, "post_title": post.title, "comment_id": cid,
                              "parent_id": input.parent_id, "from": user, "body": text});
            batch.push(NewEnvelope::new(format!("user:{to}"), "notification.reply", serde_json::to_vec(&note)?)?);
        }
        match self.publisher.publish_batch(batch).await {
            Ok(appended) => {
                db.execute("UPDATE comments SET seq = ?1 WHERE id = ?2", params![appended[0].seq as i64, cid])?;
                Ok(json_resp(StatusCode::CREATED, &json!({"comment": comment, "seq": appended[0].seq})))
            }
            Err(e) => {
                // Not in the journal: not stored either, so nobody sees a comment others missed.
                db.execute("DELETE FROM comments WHERE id = ?1", [cid])?;
                Ok(error(StatusCode::SERVICE_UNAVAILABLE, "journal_unavailable", e.to_string()))
            }
        }
    }
}

fn login(query: Option<&str>) -> Resp {
    let user = query_param(query, "user").filter(|u| USERS.contains(u));
    let next = query_param(query, "next").filter(|n| n.starts_with('/') && !n.starts_with("//")).unwrap_or("/");
    let mut r = respond(StatusCode::SEE_OTHER, "text/plain", "");
    if let Ok(v) = HeaderValue::from_str(next) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    let cookie = match user {
        Some(u) => format!("demo_user={u}; Path=/; SameSite=Lax"),
        None => "demo_user=; Path=/; Max-Age=0".to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// A file from `dir` (one path segment, no dot files): the JS client's ES modules.
fn static_file(dir: &Path, name: &str) -> Resp {
    let ok = !name.starts_with('.') && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    let ctype = if name.ends_with(".js") || name.ends_with(".mjs") {
        "text/javascript; charset=utf-8"
    } else if name.ends_with(".map") {
        "application/json"
    } else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such file");
    };
    match ok.then(|| std::fs::read(dir.join(name))) {
        Some(Ok(bytes)) => respond(StatusCode::OK, ctype, bytes),
        _ => error(StatusCode::NOT_FOUND, "not_found", "no such file"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cfg = Config::load(&args.config).with_context(|| format!("config {}", args.config.display()))?;
    let keys = cfg.tokens.load_keys().context("subscriber keys")?;
    let issuer = TokenIssuer::from_file(&args.key).context("signing key")?;
    let db = open_db(&args.db)?;
    let msgpack_dir = args.js.join("node_modules/@msgpack/msgpack/dist.esm");
    if !msgpack_dir.join("index.mjs").exists() {
        bail!("{} is missing: run `npm ci` in {}", msgpack_dir.display(), args.js.display());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let publisher = Publisher::open(&cfg.journal, &cfg.bus).await.context("journal")?;
        let journal = JournalService::new(publisher.store().clone(), &cfg.journal, keys, cfg.tokens.policy());
        let app = Arc::new(App {
            db: Mutex::new(db),
            publisher,
            issuer,
            journal,
            router_ws: args.router_ws.clone(),
            js_src: args.js.join("src"),
            msgpack_dir,
        });
        let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listen {}", args.listen))?;
        let local = listener.local_addr()?;
        println!("ready blog=http://{local} router={} journal=http://{local}/v1/", args.router_ws);
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((stream, _)) = accepted else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let app = app.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let app = app.clone();
                            async move { Ok::<_, Infallible>(app.handle(req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
                    });
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        drop(listener);
        if let Ok(app) = Arc::try_unwrap(app) {
            app.publisher.close(Duration::from_secs(2)).await;
        }
        anyhow::Ok(())
    })
}
