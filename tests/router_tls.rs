//! wss://: a router with `[tls]` (a self-signed certificate made here with `openssl req`),
//! a rustls client doing the WebSocket upgrade and a subscribe; plain TCP refused; the
//! certificate re-read on SIGHUP (new connections get the new one, an established one stays);
//! `check-config` validates the files.

// Test helpers panic on failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use support::{Env, envelope};
use switchboard::client::{self, Message, op};
use switchboard::wire::{ClientFrame, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A fresh self-signed certificate for localhost / 127.0.0.1 (EC P-256, PKCS#8 key).
fn make_cert(dir: &Path) {
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        // An end-entity certificate (webpki refuses a CA certificate as a server's).
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .expect("openssl (the test makes its certificate with `openssl req`)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn read_cert(dir: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(dir.join("cert.pem")).unwrap()
}

/// A TLS client that trusts exactly `cert`.
fn connector(cert: CertificateDer<'static>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A WebSocket client over TLS, raw frames (switchboard::client speaks plain TCP only).
struct Wss {
    io: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

impl Wss {
    async fn connect(addr: SocketAddr, tls: &tokio_rustls::TlsConnector) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(addr).await?;
        let mut io = tls.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
        io.write_all(client::request(&addr.to_string(), "/ws", "").as_bytes()).await?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut chunk = [0u8; 1024];
            let n = io.read(&mut chunk).await?;
            assert!(n > 0, "EOF before the HTTP answer");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        buf.drain(..end + 4);
        Ok(Self { io, buf })
    }

    async fn send(&mut self, f: &ClientFrame<'_>) {
        self.io.write_all(&client::encode_masked(op::BINARY, true, &f.encode(), [1, 2, 3, 4])).await.unwrap();
    }

    async fn next(&mut self) -> Message {
        let fut = async {
            loop {
                if let Some((m, used)) = client::decode_unmasked(&self.buf).unwrap() {
                    self.buf.drain(..used);
                    if m.op == op::PING {
                        continue;
                    }
                    return m;
                }
                let mut chunk = [0u8; 4096];
                let n = self.io.read(&mut chunk).await.unwrap();
                assert!(n > 0, "EOF");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(Duration::from_secs(10), fut).await.expect("a frame in time")
    }

    async fn subscribe_ok(&mut self, id: u32, topic: &str, token: &str) {
        self.send(&ClientFrame::Subscribe { id, topic, token }).await;
        let m = self.next().await;
        assert!(matches!(m.frame(), Some(ServerFrame::Ok { id: got, .. }) if got == id), "{m:?}");
    }

    async fn expect_envelope(&mut self, seq: u64) {
        let m = self.next().await;
        assert!(matches!(m.frame(), Some(ServerFrame::Envelope(e)) if e.seq == seq), "{m:?}");
    }
}

/// `switchboard_config_reloads_total{result="ok"}` summed over workers, from the admin.
fn reloads(admin: SocketAddr) -> f64 {
    let mut s = std::net::TcpStream::connect(admin).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with("switchboard_config_reloads_total{") && l.contains("result=\"ok\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn tls_env() -> Env {
    let env = Env::new();
    make_cert(env.path());
    env.with("router", "workers = 2").with("tls", "cert_file = \"cert.pem\"").with("tls", "key_file = \"key.pem\"")
}

#[test]
fn wss_subscribe_and_a_certificate_reloaded_on_sighup() {
    let env = tls_env();
    let mut router = env.router();
    let addr = router.addr("router");
    let admin = router.addr("admin");
    let first = read_cert(env.path());
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let tls1 = connector(first.clone());
        let mut held = vec![];
        for _ in 0..4 {
            let mut c = Wss::connect(addr, &tls1).await.unwrap();
            c.subscribe_ok(1, "news", &env.token(&["news"], 300)).await;
            held.push(c);
        }
        let mut bus = env.publisher();
        bus.publish(&[envelope("news", 1, b"1")]).await.unwrap();
        for c in &mut held {
            c.expect_envelope(1).await;
        }
        // Plain WebSocket on the TLS port gets no upgrade.
        let plain = client::Client::connect(addr, "/ws").await;
        assert!(plain.is_err(), "a plain-TCP handshake was answered on the TLS port");

        // A new certificate (new key) at the same paths, then SIGHUP.
        make_cert(env.path());
        let second = read_cert(env.path());
        assert_ne!(first, second);
        let pid = nix::unistd::Pid::from_raw(router.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while reloads(admin) < 2.0 {
            assert!(Instant::now() < deadline, "workers did not reload: {}", router.stderr());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // New connections get the new certificate: a client trusting only the old one fails,
        // one trusting the new one subscribes.
        for _ in 0..4 {
            assert!(Wss::connect(addr, &tls1).await.is_err(), "the old certificate is still served");
            let mut c = Wss::connect(addr, &connector(second.clone())).await.unwrap();
            c.subscribe_ok(1, "news", &env.token(&["news"], 300)).await;
        }
        // The established connections stay and still receive.
        bus.publish(&[envelope("news", 2, b"2")]).await.unwrap();
        for c in &mut held {
            c.expect_envelope(2).await;
        }
    });
    assert_eq!(router.signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(10)), Some(0));
}

#[test]
fn check_config_validates_the_tls_files() {
    let env = tls_env();
    let check = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["check-config", "--config"])
            .arg(env.config_path())
            .output()
            .unwrap()
    };
    let ok = check();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    // A key that is not the certificate's.
    let other = tempfile::tempdir().unwrap();
    make_cert(other.path());
    std::fs::copy(other.path().join("key.pem"), env.path().join("key.pem")).unwrap();
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tls.key_file"), "{err}");
    // Not PEM at all.
    std::fs::write(env.path().join("cert.pem"), "garbage").unwrap();
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("tls.cert_file"), "{err}");
    // Missing.
    std::fs::remove_file(env.path().join("key.pem")).unwrap();
    assert!(!check().status.success());
}
