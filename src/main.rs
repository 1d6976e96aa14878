//! The `switchboard` command: parse the CLI, load the config, call into the library, map
//! errors to exit codes (64: bad arguments or configuration, 1: failure at start or run).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use switchboard::config::Config;

const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "A real-time update router: WebSocket clients subscribe to topics with Ed25519 tokens and receive the envelopes applications publish."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the router: a supervisor and one worker per core (see [router] in the config).
    Router {
        /// Config file (TOML). Without one, embedded defaults: 127.0.0.1:8000, local bus, keys in ./keys.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Override router.workers (0 = one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Run the journal: the durable log of envelopes, its outbox and its HTTP API.
    Journal {
        /// Config file (TOML). Without one, embedded defaults: SQLite in ./run, 127.0.0.1:8001.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Publish one envelope through the configured bus (for scripts and tests).
    ///
    /// This bypasses the journal: the envelope is not stored and its seq is the one given
    /// (default: the current time in ms). Applications publish through the journal.
    Publish {
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[arg(long)]
        topic: String,
        /// Names the payload's contract, e.g. comment.created.
        #[arg(long)]
        kind: String,
        /// Payload as JSON text (stored as its UTF-8 bytes).
        #[arg(long, conflicts_with = "payload_file")]
        payload_json: Option<String>,
        /// Payload read from a file, as raw bytes.
        #[arg(long)]
        payload_file: Option<PathBuf>,
        #[arg(long)]
        seq: Option<u64>,
    },
    /// Check a config file, its key files included; exit 0 when usable, 64 when not.
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Generate an Ed25519 key pair: DIR/KID.secret (mode 0600, for the application) and DIR/KID.pub (for routers and journals).
    Keygen {
        /// Key id, e.g. 2026-12 (letters, digits, . _ -).
        #[arg(long)]
        kid: String,
        /// Directory to write into (created if missing). Existing keys are never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Mint and inspect subscriber tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Print a token granting TOPICs to SUB for TTL.
    Mint {
        /// Secret key file written by `switchboard keygen`.
        #[arg(long)]
        key: PathBuf,
        /// Who the token is for (logged by the router, never used for routing).
        #[arg(long)]
        sub: String,
        /// A topic to grant; repeat for several (at most 64).
        #[arg(long = "topic", required = true)]
        topics: Vec<String>,
        /// Lifetime, e.g. 30s, 5m, 1h.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Print a token's claims and, with keys, whether it verifies now and why not.
    Inspect {
        token: String,
        /// Public key file or directory of *.pub files.
        #[arg(long)]
        keys: Option<PathBuf>,
        /// Maximum TTL accepted, as a router would apply it.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        max_ttl: Duration,
    },
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A failure and its exit code.
struct Fail(u8, String);

fn usage(e: impl std::fmt::Display) -> Fail {
    Fail(EX_USAGE, e.to_string())
}

fn runtime(e: impl std::fmt::Display) -> Fail {
    Fail(1, e.to_string())
}

fn load(config: Option<&PathBuf>) -> Result<Config, Fail> {
    match config {
        Some(p) => Config::load(p).map_err(usage),
        None => Ok(Config::default()),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // One line, not clap's usage block: scripts and systemd logs read it.
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.starts_with("Usage:"))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            let first = first.join(" ");
            eprintln!("switchboard: {} (see --help)", first.trim_start_matches("error: "));
            return ExitCode::from(EX_USAGE);
        }
    };
    switchboard::telemetry::init_logs();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Fail(code, msg)) => {
            eprintln!("switchboard: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(command: Command) -> Result<(), Fail> {
    match command {
        Command::Router { config, workers } => {
            let mut cfg = load(config.as_ref())?;
            if let Some(n) = workers {
                cfg.router.workers = n;
            }
            cfg.check().map_err(usage)?;
            switchboard::router::run(cfg, config).map_err(runtime)
        }
        Command::Journal { config } => {
            let cfg = load(config.as_ref())?;
            cfg.check().map_err(usage)?;
            switchboard::journal::run(cfg).map_err(runtime)
        }
        Command::Publish { config, topic, kind, payload_json, payload_file, seq } => {
            let cfg = load(config.as_ref())?;
            let payload = match (payload_json, payload_file) {
                (Some(j), _) => {
                    serde_json::from_str::<serde_json::Value>(&j)
                        .map_err(|e| usage(format!("--payload-json is not JSON: {e}")))?;
                    j.into_bytes()
                }
                (None, Some(f)) => std::fs::read(&f).map_err(|e| usage(format!("cannot read {}: {e}", f.display())))?,
                (None, None) => Vec::new(),
            };
            let seq = seq.unwrap_or_else(|| {
                SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
            });
            let n = switchboard::bus::publish_one(&cfg.bus, &topic, seq, &kind, payload).map_err(|e| match e {
                switchboard::bus::PublishOneError::Invalid(m) => usage(m),
                e => runtime(e),
            })?;
            println!("published {topic} seq {seq}{n}");
            Ok(())
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config).map_err(usage)?;
            let keys = cfg.check().map_err(usage)?;
            println!(
                "{}: ok ({} worker(s), bus {:?}, keys {})",
                config.display(),
                cfg.worker_count(),
                cfg.bus.kind,
                keys.kids().join(", ")
            );
            Ok(())
        }
        Command::Keygen { kid, out } => {
            let (secret, public) = switchboard::app::issuer::keygen(&out, &kid).map_err(usage)?;
            println!("wrote {} (keep it secret: the application signs with it)", secret.display());
            println!("wrote {} (give it to routers and journals)", public.display());
            Ok(())
        }
        Command::Token(TokenCommand::Mint { key, sub, topics, ttl }) => {
            let issuer = switchboard::app::TokenIssuer::from_file(&key).map_err(usage)?;
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let t = issuer.mint(&sub, &refs, now_secs(), ttl).map_err(usage)?;
            println!("{t}");
            Ok(())
        }
        Command::Token(TokenCommand::Inspect { token, keys, max_ttl }) => {
            use switchboard::wire::token;
            let parsed = token::parse(token.trim()).map_err(|e| Fail(1, format!("{} ({})", e, e.code())))?;
            let c = &parsed.claims;
            println!("kid     {}", c.kid);
            println!("sub     {}", c.sub);
            println!("topics  {}", c.topics.join(" "));
            println!("iat     {}", c.iat);
            println!("exp     {} (ttl {} s)", c.exp, c.exp - c.iat);
            if let Some(nbf) = c.nbf {
                println!("nbf     {nbf}");
            }
            let Some(keys) = keys else {
                println!("verify  skipped (no --keys)");
                return Ok(());
            };
            let tokens =
                switchboard::config::TokensConfig { key_files: vec![keys], keys: vec![], ..Default::default() };
            let set = tokens.load_keys().map_err(usage)?;
            let policy = switchboard::wire::TokenPolicy { max_ttl_secs: max_ttl.as_secs(), ..tokens.policy() };
            match parsed.verify(&set, now_secs(), &policy) {
                Ok(_) => {
                    println!("verify  ok");
                    Ok(())
                }
                Err(e) => {
                    println!("verify  FAILED: {e} ({})", e.code());
                    Err(Fail(1, format!("token does not verify: {}", e.code())))
                }
            }
        }
    }
}
