//! The one configuration file: TOML, every field documented with its default and unit.
//!
//! Loaded and checked completely before anything starts (`switchboard check-config` runs the
//! same code and exits 0 or 64): unknown fields are refused, keys are read and decoded, and
//! limits are checked, so a running process never meets a configuration error.
//!
//! Every command reads the sections it needs: the router `[router]`, `[tokens]`, `[bus]`,
//! `[admin]`, `[tls]`; the journal `[journal]`, `[tokens]`, `[bus]`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

use crate::wire::keys::{KeyError, KeySet};
use crate::wire::token::TokenPolicy;

/// Why the configuration cannot be used. Maps to exit code 64.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("key file {path}: {source}")]
    Key { path: PathBuf, source: KeyError },
    #[error("{field}: {message}")]
    Invalid { field: &'static str, message: String },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, message: message.into() }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub router: RouterConfig,
    pub tokens: TokensConfig,
    pub bus: BusConfig,
    pub admin: AdminConfig,
    pub tls: Option<TlsConfig>,
    pub journal: JournalConfig,
}

/// `[router]`: the WebSocket side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Address the workers listen on (SO_REUSEPORT, shared by every worker). Default `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// HTTP path of the WebSocket endpoint. Default `/ws`.
    pub path: String,
    /// Worker processes; 0 means one per core. Default 0.
    pub workers: usize,
    /// Pin worker i to CPU i. Default false.
    pub pin_cpus: bool,
    /// Most open WebSocket connections per worker; the upgrade is answered 503 beyond. Default 50000.
    pub max_connections: usize,
    /// Largest client frame (and message), in bytes. Default 16384.
    pub max_frame_bytes: usize,
    /// Most topics one connection may subscribe to. Default 64.
    pub max_subscriptions_per_connection: usize,
    /// Bound of a connection's outbound queue, in bytes. Default 262144 (256 KiB).
    pub outbound_queue_bytes: usize,
    /// What happens when the outbound queue overflows: "gap" (drop and send a gap frame) or
    /// "close" (close with 4000). Default "gap".
    pub slow_consumer: SlowConsumerPolicy,
    /// Seconds of silence after which the router sends a WebSocket ping. Default 15.
    pub ping_interval_secs: u64,
    /// Seconds without any frame from the client (pongs included) before it is closed with 4001. Default 45.
    pub idle_timeout_secs: u64,
    /// Seconds a client has to complete the HTTP upgrade. Default 5.
    pub handshake_timeout_secs: u64,
    /// Client frames per second allowed per connection (token bucket refill). Default 20.
    pub client_frames_per_sec: u32,
    /// Burst of client frames allowed per connection (token bucket size). Default 100.
    pub client_frames_burst: u32,
    /// Protocol violations tolerated before the connection is closed. Default 8.
    pub max_violations: u32,
    /// Seconds a draining worker spreads its closes over, so clients do not all reconnect at once. Default 5.
    pub drain_window_secs: u64,
    /// Seconds after SIGTERM by which every worker has exited. Default 15.
    pub shutdown_grace_secs: u64,
    /// Directory for runtime files (per-worker metrics sockets). Default `run`.
    pub runtime_dir: PathBuf,
}

/// Slow-consumer policy (see [`RouterConfig::slow_consumer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlowConsumerPolicy {
    Gap,
    Close,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            path: "/ws".into(),
            workers: 0,
            pin_cpus: false,
            max_connections: 50_000,
            max_frame_bytes: 16 * 1024,
            max_subscriptions_per_connection: 64,
            outbound_queue_bytes: 256 * 1024,
            slow_consumer: SlowConsumerPolicy::Gap,
            ping_interval_secs: 15,
            idle_timeout_secs: 45,
            handshake_timeout_secs: 5,
            client_frames_per_sec: 20,
            client_frames_burst: 100,
            max_violations: 8,
            drain_window_secs: 5,
            shutdown_grace_secs: 15,
            runtime_dir: PathBuf::from("run"),
        }
    }
}

/// `[tokens]`: who may subscribe and reconcile.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    /// Files (or directories of `*.pub` files) holding public key lines. Default `["keys"]`.
    pub key_files: Vec<PathBuf>,
    /// Public key lines given inline (`switchboard-ed25519-public-v1 <kid> <key>`). Default none.
    pub keys: Vec<String>,
    /// Clock skew tolerated, in seconds. Default 30.
    pub skew_secs: u64,
    /// Longest token lifetime (`exp - iat`) accepted, in seconds. Default 3600.
    pub max_ttl_secs: u64,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self { key_files: vec![PathBuf::from("keys")], keys: vec![], skew_secs: 30, max_ttl_secs: 3600 }
    }
}

impl TokensConfig {
    pub fn policy(&self) -> TokenPolicy {
        TokenPolicy { skew_secs: self.skew_secs, max_ttl_secs: self.max_ttl_secs }
    }

    /// Reads every key file and inline key into one set (re-run on SIGHUP).
    pub fn load_keys(&self) -> Result<KeySet, ConfigError> {
        let mut set = KeySet::default();
        let mut add = |path: &Path, text: &str| -> Result<(), ConfigError> {
            let s = KeySet::parse(text).map_err(|source| ConfigError::Key { path: path.to_owned(), source })?;
            set.extend(s).map_err(|source| ConfigError::Key { path: path.to_owned(), source })
        };
        for path in &self.key_files {
            let read = |p: &Path| {
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.to_owned(), source })
            };
            if path.is_dir() {
                let entries =
                    std::fs::read_dir(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "pub"))
                    .collect();
                files.sort();
                for f in files {
                    add(&f, &read(&f)?)?;
                }
            } else {
                add(path, &read(path)?)?;
            }
        }
        for (i, line) in self.keys.iter().enumerate() {
            add(Path::new(&format!("tokens.keys[{i}]")), line)?;
        }
        if set.is_empty() {
            return Err(invalid(
                "tokens",
                "no public key configured (key_files or keys); `switchboard keygen` makes one",
            ));
        }
        Ok(set)
    }
}

/// `[bus]`: how envelopes reach the router workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// "local" (Unix sockets on this host, no broker) or "amqp" (RabbitMQ). Default "local".
    pub kind: BusKind,
    /// Directory of the local bus sockets, one per worker (`worker-N.sock`). Default `run/bus`.
    pub local_dir: PathBuf,
    /// AMQP URL (`amqp://user:pass@host:port/vhost`, vhost `/` written `%2f`; plain TCP only:
    /// this build has no AMQP TLS). A `heartbeat` query parameter in the URL wins over
    /// `heartbeat_secs`. Default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// Fan-out exchange name (durable). Buckets routing uses `<exchange>.buckets` (direct).
    /// At most 200 bytes. Default `switchboard.envelopes`.
    pub exchange: String,
    /// Unacknowledged deliveries per worker consumer (basic.qos, per consumer), at least 1.
    /// Bounds what a worker holds in memory. Default 1024.
    pub prefetch: u16,
    /// AMQP heartbeat, in seconds, at least 1: how fast a dead broker is noticed (about twice
    /// this). Default 10.
    pub heartbeat_secs: u16,
    /// Most messages a worker's queue holds at the broker before the oldest are dropped
    /// (x-max-length, drop-head), at least 1. Default 100000.
    pub queue_max_length: u32,
    /// "fanout" (every worker gets every envelope) or "buckets" (a worker binds only the topic
    /// buckets it has subscribers in). Publishers and routers must agree. Default "fanout".
    pub routing: BusRouting,
    /// Number of topic buckets in "buckets" routing, 1..=65536; bucket = FNV-1a-32(topic) %
    /// buckets (docs/rabbitmq.md). Publishers and routers must agree. Default 1024.
    pub buckets: u32,
    /// Seconds to establish an AMQP connection (TCP and handshake) before giving up. Default 5.
    pub connect_timeout_secs: u64,
    /// Seconds a publisher waits for the broker to confirm a batch before failing it. Default 10.
    pub publish_timeout_secs: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    Local,
    Amqp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusRouting {
    Fanout,
    Buckets,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            kind: BusKind::Local,
            local_dir: PathBuf::from("run/bus"),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            exchange: "switchboard.envelopes".into(),
            prefetch: 1024,
            heartbeat_secs: 10,
            queue_max_length: 100_000,
            routing: BusRouting::Fanout,
            buckets: 1024,
            connect_timeout_secs: 5,
            publish_timeout_secs: 10,
        }
    }
}

impl BusConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.kind == BusKind::Amqp {
            if self.amqp_url.starts_with("amqps://") {
                return Err(invalid(
                    "bus.amqp_url",
                    "amqps:// is not supported by this build (no AMQP TLS); use amqp://",
                ));
            }
            if !self.amqp_url.starts_with("amqp://") {
                return Err(invalid("bus.amqp_url", "must be an amqp:// URL"));
            }
            // The same parser lapin uses, so a URL that passes here connects the same way.
            if let Err(e) = self.amqp_url.parse::<lapin::uri::AMQPUri>() {
                return Err(invalid("bus.amqp_url", format!("not a valid AMQP URL: {e}")));
            }
        }
        if self.exchange.is_empty() || self.exchange.len() > 200 || self.exchange.starts_with("amq.") {
            return Err(invalid("bus.exchange", "must be 1..=200 bytes and not start with amq. (reserved)"));
        }
        if self.prefetch == 0 {
            return Err(invalid("bus.prefetch", "must be at least 1 (0 would mean unlimited at the broker)"));
        }
        if self.heartbeat_secs == 0 {
            return Err(invalid("bus.heartbeat_secs", "must be at least 1: it is how a dead broker is noticed"));
        }
        if self.queue_max_length == 0 {
            return Err(invalid("bus.queue_max_length", "must be at least 1"));
        }
        if self.buckets == 0 || self.buckets > 65536 {
            return Err(invalid("bus.buckets", "must be 1..=65536"));
        }
        if self.connect_timeout_secs == 0 || self.publish_timeout_secs == 0 {
            return Err(invalid("bus.connect_timeout_secs", "connect and publish timeouts must be at least 1"));
        }
        Ok(())
    }
}

/// `[admin]`: the per-host admin endpoint (`/metrics`, `/healthz`, `/readyz`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of the admin endpoint; keep it on loopback or a private network. Default `127.0.0.1:9100`.
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from(([127, 0, 0, 1], 9100)) }
    }
}

/// `[tls]`: optional wss://. Both files are PEM and are re-read on SIGHUP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Private key (PEM, PKCS#8 or RSA or SEC1).
    pub key_file: PathBuf,
}

/// `[journal]`: the durable log and its HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Address of the journal's HTTP API. Default `127.0.0.1:8001`.
    pub listen: SocketAddr,
    /// "sqlite" (embedded, one host) or "postgres". Default "sqlite".
    pub store: StoreKind,
    /// SQLite database file. Default `run/journal.sqlite`.
    pub sqlite_path: PathBuf,
    /// PostgreSQL connection string. Default `host=127.0.0.1 user=postgres dbname=switchboard`.
    pub postgres_url: String,
    /// Bearer credentials accepted on `POST /v1/envelopes` (application servers), each at
    /// least 16 characters without whitespace. Default none: publishing over HTTP is refused
    /// (403 `publishing_disabled`) until one is set.
    pub app_credentials: Vec<String>,
    /// Keep at most this many envelopes per topic; 0 keeps all. Default 0.
    pub retention_max_count: u64,
    /// Keep envelopes at most this many seconds; 0 keeps all. Default 0.
    pub retention_max_age_secs: u64,
    /// Largest page a reconciliation request may ask for. Default 1000.
    pub max_page: u32,
    /// Largest accepted request body, in bytes. Default 1048576.
    pub max_body_bytes: usize,
    /// Most envelope bytes in one reconciliation page; a page stops early (with `more`) past
    /// it, but always holds at least one envelope. Default 4194304 (4 MiB).
    pub max_page_bytes: usize,
    /// SQLite `synchronous` mode: "full" (every commit reaches the disk: nothing acknowledged
    /// is lost on power failure) or "normal" (WAL: safe against a process crash, the last
    /// commits may roll back on power loss). Default "full".
    pub sqlite_synchronous: SqliteSynchronous,
    /// PostgreSQL connections in the pool (appends, reads). Default 8.
    pub postgres_pool_size: usize,
    /// Seconds an append or read may wait for a database connection or lock before it fails
    /// with `store_unavailable`. Default 5.
    pub store_timeout_secs: u64,
    /// Most envelopes committed in one transaction when concurrent appends are grouped.
    /// Default 2048.
    pub append_batch_max: usize,
    /// Envelopes the outbox publishes per bus call. Default 2048.
    pub outbox_batch: usize,
    /// Safety-net poll of the outbox, in milliseconds: appends wake the publisher at once, the
    /// poll only catches what another process appended (SQLite) or a lost wake-up. Default 1000.
    pub outbox_poll_ms: u64,
    /// Longest pause between two publish attempts while the bus fails, in milliseconds (the
    /// pause starts at 50 ms and doubles). Default 5000.
    pub outbox_retry_max_ms: u64,
    /// Seconds between two retention passes. Default 10.
    pub retention_interval_secs: u64,
    /// Most envelopes deleted in one retention transaction (short transactions never hold
    /// appends back for long). Default 1000.
    pub retention_batch: u64,
    /// Address of a Prometheus `/metrics` endpoint for the journal process. Default none (no
    /// endpoint: the API port is client-facing, metrics stay off it).
    pub metrics_listen: Option<SocketAddr>,
}

/// SQLite durability (see [`JournalConfig::sqlite_synchronous`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Full,
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8001)),
            store: StoreKind::Sqlite,
            sqlite_path: PathBuf::from("run/journal.sqlite"),
            postgres_url: "host=127.0.0.1 user=postgres dbname=switchboard".into(),
            app_credentials: vec![],
            retention_max_count: 0,
            retention_max_age_secs: 0,
            max_page: 1000,
            max_body_bytes: 1024 * 1024,
            max_page_bytes: 4 * 1024 * 1024,
            sqlite_synchronous: SqliteSynchronous::Full,
            postgres_pool_size: 8,
            store_timeout_secs: 5,
            append_batch_max: 2048,
            outbox_batch: 2048,
            outbox_poll_ms: 1000,
            outbox_retry_max_ms: 5000,
            retention_interval_secs: 10,
            retention_batch: 1000,
            metrics_listen: None,
        }
    }
}

impl Config {
    /// Reads and checks a file. Relative paths inside it are resolved against its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut cfg = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse { path: path.to_owned(), message },
            e => e,
        })?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            cfg.resolve_paths(dir);
        }
        Ok(cfg)
    }

    /// Parses TOML text and checks the values (keys are not read: see [`Config::check`]).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: PathBuf::new(), message: e.message().to_owned() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        self.tokens.key_files.iter_mut().for_each(fix);
        fix(&mut self.bus.local_dir);
        fix(&mut self.router.runtime_dir);
        fix(&mut self.journal.sqlite_path);
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert_file);
            fix(&mut tls.key_file);
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let r = &self.router;
        if !r.path.starts_with('/') {
            return Err(invalid("router.path", "must start with /"));
        }
        if r.max_frame_bytes < 256 || r.max_frame_bytes > 1024 * 1024 {
            return Err(invalid("router.max_frame_bytes", "must be 256..=1048576"));
        }
        if r.max_connections == 0 || r.max_subscriptions_per_connection == 0 {
            return Err(invalid("router", "max_connections and max_subscriptions_per_connection must be at least 1"));
        }
        if r.outbound_queue_bytes < 4096 {
            return Err(invalid("router.outbound_queue_bytes", "must be at least 4096"));
        }
        if r.ping_interval_secs == 0 || r.idle_timeout_secs <= r.ping_interval_secs {
            return Err(invalid(
                "router.idle_timeout_secs",
                "must be above ping_interval_secs, which must be at least 1",
            ));
        }
        if r.client_frames_per_sec == 0 || r.client_frames_burst == 0 {
            return Err(invalid("router.client_frames_per_sec", "rate and burst must be at least 1"));
        }
        if r.shutdown_grace_secs < r.drain_window_secs {
            return Err(invalid("router.shutdown_grace_secs", "must be at least drain_window_secs"));
        }
        if self.tokens.max_ttl_secs == 0 {
            return Err(invalid("tokens.max_ttl_secs", "must be at least 1"));
        }
        self.bus.validate()?;
        let j = &self.journal;
        if j.max_page == 0 {
            return Err(invalid("journal.max_page", "must be at least 1"));
        }
        if j.max_body_bytes < 1024 || j.max_page_bytes < 1024 {
            return Err(invalid("journal.max_body_bytes", "max_body_bytes and max_page_bytes must be at least 1024"));
        }
        if j.postgres_pool_size == 0 || j.append_batch_max == 0 || j.outbox_batch == 0 || j.retention_batch == 0 {
            return Err(invalid(
                "journal",
                "postgres_pool_size, append_batch_max, outbox_batch and retention_batch must be at least 1",
            ));
        }
        if j.store_timeout_secs == 0 || j.outbox_poll_ms == 0 || j.retention_interval_secs == 0 {
            return Err(invalid(
                "journal",
                "store_timeout_secs, outbox_poll_ms and retention_interval_secs must be at least 1",
            ));
        }
        if j.outbox_retry_max_ms < 50 {
            return Err(invalid("journal.outbox_retry_max_ms", "must be at least 50"));
        }
        if j.app_credentials.iter().any(|c| c.len() < 16 || c.chars().any(char::is_whitespace)) {
            return Err(invalid(
                "journal.app_credentials",
                "each credential must be at least 16 characters without whitespace",
            ));
        }
        Ok(())
    }

    /// Everything `check-config` checks: the values and every key file.
    pub fn check(&self) -> Result<KeySet, ConfigError> {
        self.validate()?;
        if let Some(tls) = &self.tls {
            crate::tls::server_config(tls)?;
        }
        self.tokens.load_keys()
    }

    /// Workers to run: the configured count, or one per core.
    pub fn worker_count(&self) -> usize {
        match self.router.workers {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_fields_refused() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.router.path, "/ws");
        let e = Config::parse("[router]\nlisten_port = 1\n").unwrap_err();
        assert!(e.to_string().contains("unknown field `listen_port`"), "{e}");
        let e = Config::parse("[router]\nping_interval_secs = 10\nidle_timeout_secs = 5\n").unwrap_err();
        assert!(e.to_string().starts_with("router.idle_timeout_secs"), "{e}");
        assert!(Config::parse("[bus]\nkind = \"kafka\"\n").is_err());
    }

    #[test]
    fn bus_values_are_checked() {
        let err = |text: &str| Config::parse(text).expect_err("refused").to_string();
        assert!(err("[bus]\nprefetch = 0\n").starts_with("bus.prefetch"));
        assert!(err("[bus]\nbuckets = 0\n").starts_with("bus.buckets"));
        assert!(err("[bus]\nbuckets = 65537\n").starts_with("bus.buckets"));
        assert!(err("[bus]\nheartbeat_secs = 0\n").starts_with("bus.heartbeat_secs"));
        assert!(err("[bus]\nqueue_max_length = 0\n").starts_with("bus.queue_max_length"));
        assert!(err("[bus]\nexchange = \"amq.fanout\"\n").starts_with("bus.exchange"));
        assert!(err("[bus]\nkind = \"amqp\"\namqp_url = \"amqps://h/%2f\"\n").contains("no AMQP TLS"));
        assert!(err("[bus]\nkind = \"amqp\"\namqp_url = \"http://h/\"\n").starts_with("bus.amqp_url"));
        assert!(err("[bus]\nkind = \"amqp\"\namqp_url = \"amqp://h:notaport/\"\n").contains("not a valid"));
        // A non-power-of-two bucket count is fine: the hash is reduced with a plain modulo.
        let c = Config::parse("[bus]\nkind = \"amqp\"\nrouting = \"buckets\"\nbuckets = 1000\n").expect("valid");
        assert_eq!(c.bus.buckets, 1000);
    }

    #[test]
    fn keys_load_from_files_dirs_and_inline() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = crate::wire::SigningKeyFile::new("k1", [1; 32]);
        let k2 = crate::wire::SigningKeyFile::new("k2", [2; 32]);
        std::fs::write(dir.path().join("k1.pub"), k1.public_text()).unwrap();
        std::fs::write(dir.path().join("k1.secret"), k1.to_text()).unwrap();
        let t =
            TokensConfig { key_files: vec![dir.path().to_owned()], keys: vec![k2.public_text()], ..Default::default() };
        assert_eq!(t.load_keys().unwrap().kids(), ["k1", "k2"]);
        let none = TokensConfig { key_files: vec![], ..Default::default() };
        assert!(none.load_keys().unwrap_err().to_string().contains("no public key"));
    }
}
