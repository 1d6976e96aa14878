//! Optional wss://: the `[tls]` certificate chain and key (PEM) as a rustls server config.
//!
//! Loaded by `check-config` and the supervisor's checks (so a bad file is refused before any
//! worker sees it), at worker start and again on every SIGHUP: new connections get the new
//! certificate, established ones keep the session they negotiated. The ring provider is used
//! (no aws-lc, no C toolchain beyond ring's own); ALPN offers `http/1.1` only, since the
//! WebSocket upgrade is HTTP/1.1.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ConfigError, TlsConfig};

/// Reads both files and builds the server config; errors name the file and the problem.
pub fn server_config(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, ConfigError> {
    let bad = |field: &'static str, path: &std::path::Path, e: &dyn std::fmt::Display| ConfigError::Invalid {
        field,
        message: format!("{}: {e}", path.display()),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| bad("tls.cert_file", &cfg.cert_file, &e))?;
    if certs.is_empty() {
        return Err(bad("tls.cert_file", &cfg.cert_file, &"no CERTIFICATE in the file"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key_file).map_err(|e| bad("tls.key_file", &cfg.key_file, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("tls", &cfg.cert_file, &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad("tls.key_file", &cfg.key_file, &format!("does not fit the certificate: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
