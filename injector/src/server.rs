//! The webhook's HTTPS server and its serving certificate: issued by Warden's CA (and
//! renewed), or supplied as PEM files (e.g. by cert-manager) and reloaded when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_identity::http::ServeLimits;

use crate::config::InjectorConfig;
use crate::webhook;

/// Why the serving certificate cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The certificate and key do not make a TLS configuration (e.g. they do not match).
    #[error("serving certificate {cert} with key {key}: {reason}")]
    Config {
        /// The certificate file.
        cert: String,
        /// The key file.
        key: String,
        /// The TLS error.
        reason: String,
    },
}

/// The TLS configuration for a supplied certificate chain and key (PEM files).
pub fn tls_from_files(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, ServingError> {
    let file_error = |path: &Path, reason: String| ServingError::File {
        path: path.display().to_string(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error(cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE block".into()));
    }
    // The key's bytes never reach an error message or a log line.
    let private_key = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| file_error(key, "no readable PEM private key".into()))?;
    let mut config = ServerConfig::builder_with_provider(warden_identity::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, private_key))
        .map_err(|e| ServingError::Config {
            cert: cert.display().to_string(),
            key: key.display().to_string(),
            reason: e.to_string(),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Loads the supplied files, then polls them every `interval` and swaps in the new pair when
/// they change; a pair that fails to load is logged and the last good one kept.
pub fn watch_files(
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    shutdown: CancellationToken,
) -> Result<watch::Receiver<Arc<ServerConfig>>, ServingError> {
    let (tx, rx) = watch::channel(tls_from_files(&cert, &key)?);
    let stamp = |cert: &Path, key: &Path| -> Option<(SystemTime, SystemTime)> {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((modified(cert)?, modified(key)?))
    };
    let mut last = stamp(&cert, &key);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&cert, &key);
            if now == last {
                continue;
            }
            match tls_from_files(&cert, &key) {
                Ok(config) => {
                    last = now;
                    tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                    tx.send_replace(config);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate not reloaded; keeping the last good one")
                }
            }
        }
    });
    Ok(rx)
}

/// Serves `POST /mutate` (and `/live`, `/ready`) over HTTPS on `listener` until `shutdown`;
/// `tls` gives the configuration for each new handshake.
pub async fn run<T>(
    listener: TcpListener,
    tls: T,
    config: Arc<InjectorConfig>,
    shutdown: CancellationToken,
) where
    T: Fn() -> Arc<ServerConfig> + Send + 'static,
{
    let limits = ServeLimits {
        handshake_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(10),
    };
    let handler = move |_peer, req| webhook::handle(req, config.clone());
    warden_identity::http::serve_tls(listener, tls, handler, limits, shutdown).await;
}
