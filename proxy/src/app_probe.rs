//! The app's original probes, run on the admin port for kubelet. The injector rewrites each
//! HTTP, TCP and gRPC probe to `GET /app-probe/<container>/<kind>`; here the proxy (whose own
//! traffic interception skips) runs the original against the app and answers 200 or 503.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use warden_core::probe::{AppProbe, AppProbes, PATH_PREFIX};
use warden_identity::admin::{ExtraRoutes, RouteFuture};
use warden_identity::http::text;

/// The longest a probe may take (kubelet gives up sooner with its own `timeoutSeconds`).
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The app could not be reached.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The app address.
        addr: SocketAddr,
        /// The I/O or TLS error.
        reason: String,
    },
    /// The app answered, but not healthy.
    #[error("{0}")]
    Unhealthy(String),
    /// The probe took longer than allowed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The admin routes serving `probes`, connecting to `host` (the pod IP, or loopback).
pub fn routes(probes: AppProbes, host: IpAddr) -> ExtraRoutes {
    let probes = Arc::new(probes);
    Arc::new(move |path: &str| -> Option<RouteFuture> {
        let key = path.strip_prefix(PATH_PREFIX)?.to_string();
        let probes = probes.clone();
        Some(Box::pin(async move {
            let Some(probe) = probes.get(&key) else {
                return text(StatusCode::NOT_FOUND, format!("no app probe {key:?}\n"));
            };
            match tokio::time::timeout(PROBE_TIMEOUT, run(probe, host)).await {
                Ok(Ok(detail)) => text(StatusCode::OK, format!("{detail}\n")),
                Ok(Err(e)) => unhealthy(&key, e),
                Err(_) => unhealthy(&key, ProbeError::Timeout(PROBE_TIMEOUT)),
            }
        }))
    })
}

fn unhealthy(key: &str, e: ProbeError) -> http::Response<warden_identity::http::Body> {
    tracing::debug!(probe = key, error = %e, "app probe failed");
    text(StatusCode::SERVICE_UNAVAILABLE, format!("{key}: {e}\n"))
}

/// Where an HTTP probe goes: this pod's app at `host`, or the probe's own `host` if that is
/// this pod too (`host` or loopback). The proxy's traffic is never intercepted, so a probe to
/// anywhere else would reach past the mesh's outbound rules.
fn probe_target(probe_host: Option<&str>, host: IpAddr) -> Result<IpAddr, ProbeError> {
    let Some(named) = probe_host else {
        return Ok(host);
    };
    match named.parse::<IpAddr>() {
        Ok(ip) if ip == host || ip.is_loopback() => Ok(ip),
        Ok(_) => Err(ProbeError::Unhealthy(format!(
            "probe host {named:?} is not this pod: the proxy only probes its own app"
        ))),
        Err(_) => Err(ProbeError::Unhealthy(format!(
            "probe host {named:?} is not an IP address"
        ))),
    }
}

/// Runs one probe against the app at `host`; `Ok` carries a one-line description.
pub async fn run(probe: &AppProbe, host: IpAddr) -> Result<String, ProbeError> {
    match probe {
        AppProbe::Tcp { port } => {
            connect(SocketAddr::new(host, *port)).await?;
            Ok(format!("tcp port {port} accepts connections"))
        }
        AppProbe::Http {
            scheme,
            host: probe_host,
            port,
            path,
            headers,
        } => {
            let target = probe_target(probe_host.as_deref(), host)?;
            let addr = SocketAddr::new(target, *port);
            let tcp = connect(addr).await?;
            let status = if scheme.eq_ignore_ascii_case("https") {
                let tls = tls_connect(tcp, target).await?;
                http_get(tls, addr, path, headers).await?
            } else {
                http_get(tcp, addr, path, headers).await?
            };
            if (200..400).contains(&status.as_u16()) {
                Ok(format!("{scheme} GET {path}: {status}"))
            } else {
                Err(ProbeError::Unhealthy(format!(
                    "{scheme} GET {path}: {status}"
                )))
            }
        }
        AppProbe::Grpc { port, service } => {
            let addr = SocketAddr::new(host, *port);
            grpc_health(connect(addr).await?, addr, service).await
        }
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, ProbeError> {
    TcpStream::connect(addr)
        .await
        .map_err(|e| ProbeError::Connect {
            addr,
            reason: e.to_string(),
        })
}

async fn http_get<S>(
    io: S,
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<StatusCode, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |e: hyper::Error| ProbeError::Unhealthy(format!("HTTP: {e}"));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(failed)?;
    tokio::spawn(conn);
    let mut req = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, "kube-probe/warden");
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let req = req
        .body(Empty::<Bytes>::new())
        .map_err(|e| ProbeError::Unhealthy(format!("probe request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(failed)?;
    Ok(resp.status())
}

/// `grpc.health.v1.Health/Check` over h2c; SERVING (1) is healthy.
async fn grpc_health(
    tcp: TcpStream,
    addr: SocketAddr,
    service: &str,
) -> Result<String, ProbeError> {
    let failed = |e: hyper::Error| ProbeError::Unhealthy(format!("gRPC: {e}"));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .map_err(failed)?;
    tokio::spawn(conn);
    let req = Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(health_check_request(service)))
        .map_err(|e| ProbeError::Unhealthy(format!("probe request: {e}")))?;
    let resp = sender.send_request(req).await.map_err(failed)?;
    if resp.status() != StatusCode::OK {
        return Err(ProbeError::Unhealthy(format!(
            "gRPC: HTTP {}",
            resp.status()
        )));
    }
    let head_status = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.map_err(failed)?;
    let grpc_status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(head_status);
    match grpc_status.as_ref().map(|v| v.as_bytes()) {
        Some(b"0") => {}
        Some(code) => {
            return Err(ProbeError::Unhealthy(format!(
                "gRPC health check: grpc-status {}",
                String::from_utf8_lossy(code)
            )))
        }
        None => return Err(ProbeError::Unhealthy("gRPC: no grpc-status".into())),
    }
    match serving_status(&collected.to_bytes()) {
        Some(1) => Ok(format!("gRPC health {service:?}: SERVING")),
        Some(status) => Err(ProbeError::Unhealthy(format!(
            "gRPC health {service:?}: status {status} (not SERVING)"
        ))),
        None => Err(ProbeError::Unhealthy(
            "gRPC health: malformed HealthCheckResponse".into(),
        )),
    }
}

/// A length-prefixed `HealthCheckRequest { service = 1 }` message.
fn health_check_request(service: &str) -> Bytes {
    let mut message = Vec::new();
    if !service.is_empty() {
        message.push(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(&message);
    Bytes::from(frame)
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn get_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

/// The `status` (field 1) of a length-prefixed `HealthCheckResponse`; absent means 0 (UNKNOWN).
fn serving_status(frame: &[u8]) -> Option<u64> {
    let (header, mut message) = (frame.get(..5)?, frame.get(5..)?);
    if header[0] != 0 {
        return None; // compressed: we never asked for it
    }
    let len = u32::from_be_bytes(header[1..5].try_into().ok()?) as usize;
    if message.len() != len {
        return None;
    }
    let mut status = 0;
    while !message.is_empty() {
        let key = get_varint(&mut message)?;
        match key & 7 {
            0 => {
                let value = get_varint(&mut message)?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let len = usize::try_from(get_varint(&mut message)?).ok()?;
                message = message.get(len..)?;
            }
            _ => return None,
        }
    }
    Some(status)
}

async fn tls_connect(
    tcp: TcpStream,
    ip: IpAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProbeError> {
    let provider = warden_identity::tls::crypto_provider();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ProbeError::Unhealthy(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServerCert(provider)))
        .with_no_client_auth();
    let addr = SocketAddr::new(ip, 0);
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
        .map_err(|e| ProbeError::Connect {
            addr,
            reason: format!("TLS: {e}"),
        })
}

/// Accepts any server certificate, as kubelet does for HTTPS probes: the app's serving
/// certificate is not ours to judge, only its health. Signatures are still checked.
#[derive(Debug)]
struct AnyServerCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_goes_only_to_this_pods_app() {
        let pod: IpAddr = "10.0.0.7".parse().unwrap();
        let cases = [
            (None, Some("10.0.0.7")),
            (Some("10.0.0.7"), Some("10.0.0.7")),
            (Some("127.0.0.1"), Some("127.0.0.1")),
            (Some("::1"), Some("::1")),
            (Some("10.0.0.8"), None),
            (Some("169.254.169.254"), None),
            (Some("db.example"), None),
        ];
        for (named, want) in cases {
            let got = probe_target(named, pod).ok();
            assert_eq!(got, want.map(|w| w.parse().unwrap()), "{named:?}");
        }
    }

    #[test]
    fn health_messages_encode_and_decode() {
        assert_eq!(&health_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &health_check_request("db")[..],
            &[0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
        let cases: &[(&[u8], Option<u64>)] = &[
            (&[0, 0, 0, 0, 2, 0x08, 1], Some(1)),
            (&[0, 0, 0, 0, 2, 0x08, 2], Some(2)),
            (&[0, 0, 0, 0, 0], Some(0)),
            (&[0, 0, 0, 0, 3, 0x08, 1], None),
            (&[1, 0, 0, 0, 2, 0x08, 1], None),
            (&[0, 0, 0], None),
            (&[0, 0, 0, 0, 5, 0x12, 1, b'x', 0x08, 1], Some(1)),
        ];
        for (frame, want) in cases {
            assert_eq!(serving_status(frame), *want, "{frame:?}");
        }
    }
}
