//! Peer verification: a presented chain is an acceptable SVID when its SPIFFE ID names a
//! trusted trust domain, it satisfies the SVID rules, and it chains to that trust domain's
//! bundle (WebPKI path building, validity and EKU). The rustls verifiers here run exactly that,
//! on both sides of a handshake; server certificates carry no DNS SAN, so the client side does
//! not check a server name but the expected SPIFFE ID instead.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use warden_core::SpiffeId;

use crate::bundle::TrustStore;
use crate::svid::{self, SvidError};

/// Which end of a connection the certificate must be fit for (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// The peer is a TLS server (needs serverAuth when EKU is present).
    Server,
    /// The peer is a TLS client (needs clientAuth when EKU is present).
    Client,
}

/// Which identities are acceptable for the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExpectedPeer {
    /// Any identity of any trust domain in the trust store.
    AnyTrusted,
    /// Exactly this identity.
    Exact(SpiffeId),
    /// Any one of these (a Service's endpoints); an empty list accepts none.
    OneOf(Vec<SpiffeId>),
}

/// Why a peer's certificate chain was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The chain breaks an SVID rule.
    #[error(transparent)]
    Svid(#[from] SvidError),
    /// The SPIFFE ID's trust domain has no bundle here.
    #[error("trust domain {0:?} is not trusted here")]
    UntrustedTrustDomain(String),
    /// No path from the leaf to a root of its trust domain's bundle.
    #[error("not signed by the trust bundle of {0} (unknown issuer)")]
    UnknownIssuer(String),
    /// The leaf (or a chain certificate) has expired.
    #[error("certificate expired {0} seconds ago")]
    Expired(u64),
    /// The leaf (or a chain certificate) is not valid yet.
    #[error("certificate is not valid for another {0} seconds")]
    NotYetValid(u64),
    /// Any other WebPKI path-validation failure.
    #[error("certificate chain is invalid: {0}")]
    Chain(String),
    /// A valid SVID, but not the identity this connection expects.
    #[error("peer is {got}, expected {want}")]
    UnexpectedIdentity {
        /// What the peer presented.
        got: SpiffeId,
        /// What was expected.
        want: SpiffeId,
    },
    /// A valid SVID, but none of the identities this connection accepts.
    #[error("peer is {got}, expected one of {}", .want.iter().map(SpiffeId::as_str).collect::<Vec<_>>().join(", "))]
    NoneOfExpected {
        /// What the peer presented.
        got: SpiffeId,
        /// What was acceptable.
        want: Vec<SpiffeId>,
    },
}

/// Verifies a presented chain and returns the peer's SPIFFE ID.
pub fn verify_svid(
    store: &TrustStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
    algorithms: &WebPkiSupportedAlgorithms,
) -> Result<SpiffeId, VerifyError> {
    let id = svid::check_chain(end_entity, intermediates)?;
    let td = id.trust_domain_name();
    let bundle = store
        .get(td)
        .ok_or_else(|| VerifyError::UntrustedTrustDomain(td.to_string()))?;
    let cert = webpki::EndEntityCert::try_from(end_entity)
        .map_err(|e| VerifyError::Chain(format!("{e}")))?;
    let usage = match role {
        PeerRole::Server => webpki::KeyUsage::server_auth(),
        PeerRole::Client => webpki::KeyUsage::client_auth(),
    };
    cert.verify_for_usage(
        algorithms.all,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map_err(|e| chain_error(e, td))?;
    Ok(id)
}

fn chain_error(e: webpki::Error, td: &str) -> VerifyError {
    match e {
        // A same-named issuer whose signature fails is, to an operator, just as unknown.
        webpki::Error::UnknownIssuer | webpki::Error::InvalidSignatureForPublicKey => {
            VerifyError::UnknownIssuer(td.to_string())
        }
        webpki::Error::CertExpired { time, not_after } => {
            VerifyError::Expired(time.as_secs().saturating_sub(not_after.as_secs()))
        }
        webpki::Error::CertNotValidYet { time, not_before } => {
            VerifyError::NotYetValid(not_before.as_secs().saturating_sub(time.as_secs()))
        }
        other => VerifyError::Chain(format!("{other}")),
    }
}

impl VerifyError {
    /// The rustls error for this failure (drives the TLS alert and rustls' own reporting).
    pub fn to_rustls(&self) -> rustls::Error {
        let cert_error = match self {
            VerifyError::UnknownIssuer(_) => CertificateError::UnknownIssuer,
            VerifyError::Expired(_) => CertificateError::Expired,
            VerifyError::NotYetValid(_) => CertificateError::NotValidYet,
            other => CertificateError::Other(OtherError(Arc::new(other.clone()))),
        };
        rustls::Error::InvalidCertificate(cert_error)
    }
}

/// A TLS handshake failure in words an operator can act on: what was refused and what to
/// check, instead of rustls' debug names (`Other(OtherError(Svid(NoUriSan)))`).
pub fn describe_handshake_error(error: &std::io::Error) -> String {
    match error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    {
        Some(tls) => describe_tls_error(tls),
        None => error.to_string(),
    }
}

/// See [`describe_handshake_error`].
pub fn describe_tls_error(error: &rustls::Error) -> String {
    use rustls::{AlertDescription, Error, InvalidMessage};
    let refused = "the peer's certificate was refused";
    match error {
        Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            match inner.downcast_ref::<VerifyError>() {
                Some(
                    e @ (VerifyError::UnexpectedIdentity { .. }
                    | VerifyError::NoneOfExpected { .. }),
                ) => {
                    format!("{refused}: {e} (another workload answered at that address)")
                }
                Some(e) => format!("{refused}: {e} (is the peer's SVID issued by Warden's CA?)"),
                None => format!("{refused}: {inner}"),
            }
        }
        Error::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "{refused}: not signed by a trusted issuer (do both sides use the same trust bundle?)"
        ),
        Error::InvalidCertificate(CertificateError::Expired) => {
            format!(
                "{refused}: it has expired (is the peer renewing its SVID? are the clocks right?)"
            )
        }
        Error::InvalidCertificate(CertificateError::NotValidYet) => {
            format!("{refused}: it is not valid yet (are the clocks right?)")
        }
        Error::NoCertificatesPresented => {
            "the peer presented no certificate (is it a Warden proxy?)".to_string()
        }
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the peer requires a client certificate this side did not send".to_string()
        }
        Error::AlertReceived(alert) => format!(
            "the peer ended the handshake with the TLS alert {alert:?} (its log says why: often \
             our certificate or identity is not accepted there)"
        ),
        Error::InvalidMessage(InvalidMessage::InvalidContentType) => {
            "the peer does not speak TLS (a plaintext server, or no sidecar at that address?)"
                .to_string()
        }
        Error::PeerIncompatible(why) => {
            format!("the peer cannot speak TLS 1.3 as Warden requires ({why:?})")
        }
        other => other.to_string(),
    }
}

fn check_expected(id: SpiffeId, expected: &ExpectedPeer) -> Result<SpiffeId, VerifyError> {
    match expected {
        ExpectedPeer::Exact(want) if &id != want => Err(VerifyError::UnexpectedIdentity {
            got: id,
            want: want.clone(),
        }),
        ExpectedPeer::OneOf(want) if !want.contains(&id) => Err(VerifyError::NoneOfExpected {
            got: id,
            want: want.clone(),
        }),
        _ => Ok(id),
    }
}

/// Verifies the server's SVID on the client side of a mesh connection.
#[derive(Debug)]
pub struct SvidServerVerifier {
    store: Arc<TrustStore>,
    expected: ExpectedPeer,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SvidServerVerifier {
    /// A verifier accepting servers whose SVID chains to `store` and matches `expected`.
    pub fn new(
        store: Arc<TrustStore>,
        expected: ExpectedPeer,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self {
            store,
            expected,
            algorithms,
        }
    }
}

impl ServerCertVerifier for SvidServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_svid(
            &self.store,
            end_entity,
            intermediates,
            now,
            PeerRole::Server,
            &self.algorithms,
        )
        .and_then(|id| check_expected(id, &self.expected))
        .map(|_| ServerCertVerified::assertion())
        .map_err(|e| {
            tracing::debug!(error = %e, "rejected server certificate");
            e.to_rustls()
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Verifies the client's SVID on the server side of a connection; a client certificate is
/// mandatory unless made with [`SvidClientVerifier::optional`].
#[derive(Debug)]
pub struct SvidClientVerifier {
    store: Arc<TrustStore>,
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
}

impl SvidClientVerifier {
    /// A verifier requiring clients to present an SVID chaining to `store`.
    pub fn new(store: Arc<TrustStore>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self {
            store,
            algorithms,
            mandatory: true,
        }
    }

    /// A verifier letting clients present no certificate, and verifying the SVID of those
    /// that present one exactly as [`SvidClientVerifier::new`] does.
    pub fn optional(store: Arc<TrustStore>, algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self {
            mandatory: false,
            ..Self::new(store, algorithms)
        }
    }
}

impl ClientCertVerifier for SvidClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: clients have exactly one SVID to offer.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        verify_svid(
            &self.store,
            end_entity,
            intermediates,
            now,
            PeerRole::Client,
            &self.algorithms,
        )
        .map(|_| ClientCertVerified::assertion())
        .map_err(|e| {
            tracing::debug!(error = %e, "rejected client certificate");
            e.to_rustls()
        })
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::svid::SvidError;

    #[test]
    fn a_peer_must_be_the_expected_identity_or_one_of_the_expected_set() {
        let id = |s: &str| SpiffeId::parse(s).unwrap();
        let web = id("spiffe://cluster.local/ns/shop/sa/web");
        let api = id("spiffe://cluster.local/ns/shop/sa/api");
        let db = id("spiffe://cluster.local/ns/data/sa/db");
        // (expected, presented, accepted)
        let cases = [
            (ExpectedPeer::AnyTrusted, &db, true),
            (ExpectedPeer::Exact(web.clone()), &web, true),
            (ExpectedPeer::Exact(web.clone()), &db, false),
            (
                ExpectedPeer::OneOf(vec![web.clone(), api.clone()]),
                &api,
                true,
            ),
            (
                ExpectedPeer::OneOf(vec![web.clone(), api.clone()]),
                &db,
                false,
            ),
            (ExpectedPeer::OneOf(vec![]), &web, false),
        ];
        for (expected, presented, accepted) in cases {
            let got = check_expected(presented.clone(), &expected);
            assert_eq!(got.is_ok(), accepted, "{expected:?} {presented}: {got:?}");
        }
        let err = check_expected(db, &ExpectedPeer::OneOf(vec![web, api])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "peer is spiffe://cluster.local/ns/data/sa/db, expected one of spiffe://cluster.local/ns/shop/sa/web, spiffe://cluster.local/ns/shop/sa/api"
        );
    }

    #[test]
    fn handshake_errors_say_what_happened_and_what_to_check() {
        let other = |e: VerifyError| {
            rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
        };
        let wrong = VerifyError::UnexpectedIdentity {
            got: SpiffeId::parse("spiffe://cluster.local/ns/a/sa/x").unwrap(),
            want: SpiffeId::parse("spiffe://cluster.local/ns/a/sa/y").unwrap(),
        };
        let cases = [
            (
                other(VerifyError::Svid(SvidError::NoUriSan)),
                "refused: leaf has no URI SAN",
            ),
            (other(wrong), "another workload answered"),
            (
                rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
                "same trust bundle",
            ),
            (
                rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
                "does not speak TLS",
            ),
            (
                rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
                "TLS alert BadCertificate",
            ),
        ];
        for (error, want) in cases {
            let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
            let text = describe_handshake_error(&io);
            assert!(text.contains(want), "{text}");
            assert!(!text.contains("OtherError"), "{text}");
        }
    }
}
