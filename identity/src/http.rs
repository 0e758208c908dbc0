//! Small helpers for hyper 1.x servers and clients: bodies, JSON replies, size limits.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::server::{serve_connection, ConnectionCap, ServerLimits};

/// The body type of every response Warden's own HTTP endpoints send.
pub type Body = Full<Bytes>;

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More than the limit.
    #[error("body larger than {0} bytes")]
    TooLarge(usize),
    /// The connection failed while reading.
    #[error("reading the body failed: {0}")]
    Read(String),
}

/// Reads a whole body, refusing more than `limit` bytes (checked against Content-Length
/// first, then while reading, so a lying header cannot get past it).
pub async fn read_body(
    headers: &http::HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge(limit)),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// A plain-text response.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|e| {
        format!("{{\"error\":\"cannot encode the response: {e}\"}}").into_bytes()
    });
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Why an outgoing HTTPS call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `https://host[:port]`.
    #[error("invalid URL {0:?}: expected https://host[:port]")]
    BadUrl(String),
    /// TCP connect failed.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed (including certificate verification).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The HTTP exchange failed.
    #[error("HTTP exchange with {addr} failed: {reason}")]
    Http {
        /// host:port.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No answer within the timeout.
    #[error("no answer from {0} within the timeout")]
    Timeout(String),
}

/// Where an HTTPS endpoint is: `host:port` to dial and the name to verify.
#[derive(Debug, Clone)]
pub struct HttpsTarget {
    /// `host:port` (IPv6 hosts in brackets).
    pub authority: String,
    /// The TLS server name (DNS name or IP address).
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl HttpsTarget {
    /// Parses `https://host[:port]` (port 443 by default; IPv6 as `[addr]`).
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let bad = || ClientError::BadUrl(url.to_string());
        let rest = url.strip_prefix("https://").ok_or_else(bad)?;
        let rest = rest.trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || rest.contains('@') {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "443",
                None => return Err(bad()),
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, p),
                None => (rest, "443"),
            }
        };
        let port: u16 = port.parse().map_err(|_| bad())?;
        let server_name =
            rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| bad())?;
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            authority,
            server_name,
        })
    }
}

/// POSTs a JSON body over HTTPS (HTTP/1.1, one connection) with `Authorization: Bearer
/// <bearer>` (none when `bearer` is empty) and returns the status and body, reading at most
/// `limit` bytes, all within `timeout`.
pub async fn post_json(
    tls: std::sync::Arc<rustls::ClientConfig>,
    target: &HttpsTarget,
    path: &str,
    bearer: &str,
    body: Vec<u8>,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    let addr = target.authority.clone();
    let exchange = async {
        let tcp =
            tokio::net::TcpStream::connect(&addr)
                .await
                .map_err(|e| ClientError::Connect {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(target.server_name.clone(), tcp)
            .await
            .map_err(|e| ClientError::Tls {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        let http_err = |e: hyper::Error| ClientError::Http {
            addr: addr.clone(),
            reason: e.to_string(),
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(http_err)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut request = http::Request::post(path)
            .header(header::HOST, &target.authority)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json");
        if !bearer.is_empty() {
            request = request.header(header::AUTHORIZATION, format!("Bearer {bearer}"));
        }
        let request =
            request
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ClientError::Http {
                    addr: addr.clone(),
                    reason: e.to_string(),
                })?;
        let response = sender.send_request(request).await.map_err(http_err)?;
        let status = response.status();
        let body = match Limited::new(response.into_body(), limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                return Err(ClientError::Http {
                    addr: addr.clone(),
                    reason: format!("reading the response: {e}"),
                })
            }
        };
        Ok((status, body))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ClientError::Timeout(target.authority.clone()))?
}

/// The two bounds of an HTTPS server that [`serve_tls`] took before [`ServerLimits`]; the
/// others get their defaults.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A TLS handshake, and reading request headers.
    pub handshake_timeout: std::time::Duration,
    /// How long in-flight requests may take to finish at shutdown.
    pub shutdown_grace: std::time::Duration,
}

impl From<ServeLimits> for ServerLimits {
    fn from(limits: ServeLimits) -> Self {
        Self {
            handshake_timeout: limits.handshake_timeout,
            header_read_timeout: limits.handshake_timeout,
            shutdown_grace: limits.shutdown_grace,
            ..Self::default()
        }
    }
}

/// The client certificate chain a TLS handshake verified, and its SPIFFE ID. [`serve_tls`]
/// puts it in the extensions of every request of that connection; absent when the client
/// presented none. A connection can outlive the certificate, or the trust bundle, it was
/// verified against: a request that relies on it checks the chain again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// The leaf's SPIFFE ID.
    pub id: warden_core::SpiffeId,
    /// The chain as presented, leaf first.
    pub chain: std::sync::Arc<[rustls::pki_types::CertificateDer<'static>]>,
}

/// Serves HTTPS (HTTP/1.1 and HTTP/2) on `listener` until `shutdown`, within `limits`
/// (connection cap, handshake, header, idle and request timeouts), then lets in-flight
/// requests finish within the grace period. `tls` gives the configuration for each new
/// handshake (so rotated certificates are picked up); `handler` answers each request.
pub async fn serve_tls<T, H, F>(
    listener: tokio::net::TcpListener,
    tls: T,
    handler: H,
    limits: impl Into<ServerLimits>,
    shutdown: tokio_util::sync::CancellationToken,
) where
    T: Fn() -> std::sync::Arc<rustls::ServerConfig>,
    H: Fn(std::net::SocketAddr, http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let limits = limits.into();
    let cap = ConnectionCap::new(limits.max_connections, "https");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    while let Some((tcp, peer, permit)) = cap.accept(&listener, &shutdown).await {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls());
        let handler = handler.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let stream =
                match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
            // A caller without a valid SVID (none, or a session resumed past its validity)
            // is unauthenticated: it may still bootstrap with a token.
            let conn = stream.get_ref().1;
            let verified = match crate::tls::peer_identity(conn) {
                Ok(id) => conn.peer_certificates().map(|chain| VerifiedPeer {
                    id,
                    chain: chain.iter().cloned().collect(),
                }),
                Err(crate::tls::PeerError::NoCertificate) => None,
                Err(error) => {
                    tracing::info!(%peer, %error, "caller's certificate not accepted");
                    None
                }
            };
            let handler = move |mut req: http::Request<Incoming>| {
                if let Some(verified) = &verified {
                    req.extensions_mut().insert(verified.clone());
                }
                handler(peer, req)
            };
            if let Err(e) = serve_connection(stream, handler, &limits, Some(watcher)).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period over; dropping remaining connections");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_targets() {
        let ok = [
            ("https://10.96.0.1:443", "10.96.0.1:443"),
            ("https://10.96.0.1", "10.96.0.1:443"),
            (
                "https://kubernetes.default.svc/",
                "kubernetes.default.svc:443",
            ),
            ("https://[fd00::1]:6443", "[fd00::1]:6443"),
            ("https://[fd00::1]", "[fd00::1]:443"),
            ("https://localhost:8443", "localhost:8443"),
        ];
        for (url, authority) in ok {
            assert_eq!(
                HttpsTarget::parse(url).unwrap().authority,
                authority,
                "{url}"
            );
        }
        for bad in [
            "http://x",
            "https://",
            "https://x:99999",
            "https://x/path",
            "https://u@x",
            "https://[fd00::1",
            "https://x:port",
        ] {
            assert!(HttpsTarget::parse(bad).is_err(), "{bad}");
        }
    }
}
