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
    let leaf = chain[0].clone();
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
    publish_serving_validity(&leaf);
    Ok(Arc::new(config))
}

/// Sets the serving certificate's validity gauges (Unix seconds): when it expires the API
/// server can no longer call the webhook and, with `failurePolicy: Fail`, pod creation stops;
/// alerts compare what is left with its lifetime (a yearly certificate and a daily renewed
/// one alike).
pub fn publish_serving_validity(leaf: &CertificateDer<'_>) {
    if let Some((not_before, not_after)) = warden_identity::inspect::validity_unix(leaf) {
        metrics::gauge!("warden_injector_serving_cert_not_before_timestamp_seconds")
            .set(not_before as f64);
        metrics::gauge!("warden_injector_serving_cert_expiry_timestamp_seconds")
            .set(not_after as f64);
    }
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

/// Polls the trust anchors file every `interval` and hands each pod injected after a change
/// the new bundle (the one proxies start with before the identity service's replies keep it
/// current); a file that does not hold PEM certificates is logged and the last good bundle
/// kept. `check` validates a candidate bundle.
pub fn watch_trust_anchors(
    path: PathBuf,
    config: watch::Sender<Arc<InjectorConfig>>,
    check: impl Fn(&str) -> Result<(), String> + Send + 'static,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified().map(|t| (t, m.len())))
            .ok()
    };
    let mut last = stamp(&path);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = stamp(&path);
            if now == last {
                continue;
            }
            last = now;
            let loaded = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|pem| check(&pem).map(|()| pem));
            match loaded {
                Ok(pem) if pem == config.borrow().trust_anchors_pem => {}
                Ok(pem) => {
                    // In place: the MeshPolicy watch changes the same config, and a copy
                    // written back could undo a change it made in between.
                    config.send_modify(|c| Arc::make_mut(c).trust_anchors_pem = pem);
                    tracing::info!(path = %path.display(), "trust anchors reloaded");
                    metrics::counter!("warden_injector_trust_anchor_reloads_total", "result" => "success").increment(1);
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "trust anchors not reloaded; injecting the last good bundle");
                    metrics::counter!("warden_injector_trust_anchor_reloads_total", "result" => "failure").increment(1);
                }
            }
        }
    });
}

/// Serves `POST /mutate` (and `/live`, `/ready`) over HTTPS on `listener` until `shutdown`;
/// `tls` gives the configuration for each new handshake, `config` the current injection
/// settings for each review.
pub async fn run<T>(
    listener: TcpListener,
    tls: T,
    config: watch::Receiver<Arc<InjectorConfig>>,
    shutdown: CancellationToken,
) where
    T: Fn() -> Arc<ServerConfig> + Send + 'static,
{
    let limits = ServeLimits {
        handshake_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(10),
    };
    let handler = move |_peer, req| webhook::handle(req, config.borrow().clone());
    warden_identity::http::serve_tls(listener, tls, handler, limits, shutdown).await;
}
