//! The wire format of `POST /v1/certify`, shared by the identity service and its clients.

use serde::{Deserialize, Serialize};

/// The issuance endpoint's path.
pub const CERTIFY_PATH: &str = "/v1/certify";

/// The request body: a PEM CSR. The caller's identity comes from its bearer token, never
/// from the CSR.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertifyRequest {
    /// PKCS#10 CSR, PEM.
    pub csr: String,
    /// DNS names the certificate should also carry (a webhook's serving certificate); only
    /// names the service allows for the caller's identity are granted, others refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
}

/// The reply to a successful issuance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertifyResponse {
    /// The SPIFFE ID in the certificate (the authenticated caller's).
    pub spiffe_id: String,
    /// The leaf then the issuer, PEM.
    pub certificate_chain: String,
    /// The trust bundle for the trust domain, PEM (may hold several roots during rotation).
    pub trust_bundle: String,
    /// The leaf's `notAfter`, RFC 3339.
    pub expires_at: String,
}

/// The body of every error reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// What was wrong, safe to show the caller (never a token).
    pub error: String,
}
