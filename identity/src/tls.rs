//! rustls configuration for mesh connections: one crypto provider (aws-lc-rs), TLS 1.3 only,
//! the post-quantum hybrid X25519MLKEM768 preferred, mutual authentication with SVIDs.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, CommonState, HandshakeKind, ServerConfig};
use warden_core::SpiffeId;

use crate::bundle::TrustStore;
use crate::credential::Svid;
use crate::svid;
use crate::verify::{ExpectedPeer, SvidClientVerifier, SvidServerVerifier};

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (e.g. a key that does not match the certificate).
    #[error("TLS configuration for {id}: {error}")]
    Config {
        /// Whose credential.
        id: SpiffeId,
        /// rustls' complaint.
        error: rustls::Error,
    },
}

/// Warden's crypto provider: aws-lc-rs with TLS 1.3 cipher suites only, and key exchange
/// groups in preference order X25519MLKEM768, X25519, P-256.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let base = rustls::crypto::aws_lc_rs::default_provider();
    let cipher_suites = base
        .cipher_suites
        .iter()
        .copied()
        .filter(|s| s.version() == &rustls::version::TLS13)
        .collect();
    use rustls::crypto::aws_lc_rs::kx_group;
    Arc::new(CryptoProvider {
        cipher_suites,
        kx_groups: vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
        ],
        ..base
    })
}

/// Installs [`crypto_provider`] as the process default, so any rustls user in the process
/// (tokio-rustls, kube, hyper clients) gets the same one. Idempotent.
pub fn install_crypto_provider() {
    // An error means a provider is already installed; ours is the only one compiled in.
    let _ = CryptoProvider::install_default(Arc::unwrap_or_clone(crypto_provider()));
}

/// Whether a server demands a client SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mesh connections: a client SVID is required and verified.
    Required,
    /// The identity service with Kubernetes tokens: callers authenticate with a token.
    None,
    /// The identity service with join tokens: a caller may present its current SVID, which
    /// is then verified like a required one, to renew without a token.
    Optional,
}

/// The server side of a connection: presents `svid`, verifies client SVIDs against `store`
/// when `client_auth` requires them, and offers the given ALPN protocols.
pub fn server_config(
    svid: &Svid,
    store: Arc<TrustStore>,
    alpn: &[&[u8]],
    client_auth: ClientAuth,
) -> Result<ServerConfig, TlsError> {
    let provider = crypto_provider();
    let verifier: Arc<dyn rustls::server::danger::ClientCertVerifier> = match client_auth {
        ClientAuth::Required => Arc::new(SvidClientVerifier::new(
            store,
            provider.signature_verification_algorithms,
        )),
        ClientAuth::Optional => Arc::new(SvidClientVerifier::optional(
            store,
            provider.signature_verification_algorithms,
        )),
        ClientAuth::None => Arc::new(rustls::server::NoClientAuth),
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| {
            b.with_client_cert_verifier(verifier)
                .with_single_cert(svid.chain().to_vec(), svid.key().clone_key())
        })
        .map_err(config_error(svid))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

fn config_error(svid: &Svid) -> impl Fn(rustls::Error) -> TlsError + '_ {
    |error| TlsError::Config {
        id: svid.id().clone(),
        error,
    }
}

/// The client side of a mesh connection: presents `svid` and accepts a server whose SVID
/// chains to `store` and matches `expected`.
pub fn client_config(
    svid: &Svid,
    store: Arc<TrustStore>,
    expected: ExpectedPeer,
    alpn: &[&[u8]],
) -> Result<ClientConfig, TlsError> {
    let provider = crypto_provider();
    let verifier =
        SvidServerVerifier::new(store, expected, provider.signature_verification_algorithms);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| {
            b.dangerous() // a custom verifier: SPIFFE IDs instead of DNS names
                .with_custom_certificate_verifier(Arc::new(verifier))
                .with_client_auth_cert(svid.chain().to_vec(), svid.key().clone_key())
        })
        .map_err(config_error(svid))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// A client that verifies the server's SVID against `store` and `expected` but presents no
/// certificate: how a workload without an SVID yet reaches the identity service.
pub fn anonymous_client_config(
    store: Arc<TrustStore>,
    expected: ExpectedPeer,
    alpn: &[&[u8]],
) -> ClientConfig {
    let provider = crypto_provider();
    let verifier =
        SvidServerVerifier::new(store, expected, provider.signature_verification_algorithms);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the provider")
        .dangerous() // a custom verifier: SPIFFE IDs instead of DNS names
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

/// The server name a client passes to rustls. SVIDs have no DNS names and our verifier
/// ignores it, so a fixed placeholder keeps SNI from leaking anything about the destination.
pub fn mesh_server_name() -> ServerName<'static> {
    ServerName::try_from("warden.mesh.invalid").expect("a valid DNS name")
}

/// Why an established connection's peer has no identity to act on.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// No certificate was presented (a server that does not ask for one).
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The leaf carries no valid SPIFFE ID.
    #[error("the peer's certificate: {0}")]
    Svid(svid::SvidError),
    /// A resumed TLS session whose certificates are no longer valid.
    #[error("the peer resumed a TLS session its certificate no longer covers: {0}")]
    ResumedPastValidity(svid::SvidError),
}

/// The peer's SPIFFE ID on an established connection. The verifier checked the chain of a
/// full handshake a moment ago; a resumed session's chain was checked when the session began,
/// perhaps hours ago, and rustls does not check it again, so its validity is checked here:
/// a session ticket is not a way to outlive an expired (unrenewed) SVID. Every certificate
/// the peer presented is checked (webpki checks those on the path it builds: the same two,
/// leaf and issuer, for a Warden SVID). The clock is the system's, as the verifier's is (no
/// configuration here sets a `time_provider`).
pub fn peer_identity(conn: &CommonState) -> Result<SpiffeId, PeerError> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    peer_identity_at(conn, now)
}

/// [`peer_identity`], with a resumed session's certificates checked at `now` (seconds since
/// the Unix epoch).
pub fn peer_identity_at(conn: &CommonState, now: i64) -> Result<SpiffeId, PeerError> {
    let chain = conn.peer_certificates().ok_or(PeerError::NoCertificate)?;
    let leaf = chain.first().ok_or(PeerError::NoCertificate)?;
    if conn.handshake_kind() == Some(HandshakeKind::Resumed) {
        svid::check_validity(chain, now).map_err(PeerError::ResumedPastValidity)?;
    }
    svid::identity_of(leaf).map_err(PeerError::Svid)
}

/// A short name for the key exchange group of an established connection, e.g. `X25519MLKEM768`.
pub fn key_exchange_name(conn: &CommonState) -> String {
    conn.negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_else(|| "-".to_string())
}
