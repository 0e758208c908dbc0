//! The workload side of issuance: generate a P-256 key in memory, send a CSR to the identity
//! service with the workload's token, and check what comes back before using it.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::PublicKeyData;
use rustls::pki_types::UnixTime;
use warden_core::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::bundle::{certs_from_pem, TrustBundle, TrustStore};
use crate::certify::{CertifyRequest, CertifyResponse, ErrorResponse, CERTIFY_PATH};
use crate::credential::Svid;
use crate::http::{post_json, ClientError, HttpsTarget};
use crate::verify::{verify_svid, ExpectedPeer, PeerRole, VerifyError};
use crate::{csr, svid, tls};

/// The largest reply read from the identity service.
const MAX_REPLY_BYTES: usize = 256 * 1024;

/// How to reach the identity service and what to expect from it.
#[derive(Debug, Clone)]
pub struct CertifyClientConfig {
    /// `https://host:port` of the identity service.
    pub url: String,
    /// The identity service's own SPIFFE ID (its serving certificate must carry it).
    pub server_id: SpiffeId,
    /// File holding the workload's token; re-read at every call (Kubernetes rotates it).
    pub token_file: PathBuf,
    /// The identity this workload must receive (from the downward API); `None` accepts
    /// whatever the CA decides, within the trust store's trust domains.
    pub expected_id: Option<SpiffeId>,
    /// Bound on one call, connect to reply.
    pub timeout: Duration,
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertifyClientError {
    /// The token file could not be read (its content is never shown).
    #[error("cannot read the token file {path}: {reason}")]
    Token {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// Building the key or CSR failed.
    #[error(transparent)]
    Csr(#[from] csr::CsrError),
    /// The identity service could not be reached.
    #[error(transparent)]
    Request(#[from] ClientError),
    /// The identity service said no.
    #[error("identity service refused ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Its error message.
        message: String,
    },
    /// The reply is not what the protocol promises.
    #[error("unusable reply from the identity service: {0}")]
    BadReply(String),
    /// The current certificate cannot be presented (its key does not match it).
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The issued chain does not verify against the returned bundle.
    #[error("issued certificate does not verify: {0}")]
    Verify(#[from] VerifyError),
    /// The CA issued another identity than the one this workload must have.
    #[error("issued identity {got} is not the expected {want}")]
    WrongIdentity {
        /// What the certificate says.
        got: SpiffeId,
        /// What the workload expects.
        want: SpiffeId,
    },
}

/// A freshly issued SVID and the trust store updated from the CA's bundle.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The new credential.
    pub svid: Svid,
    /// The trust store to use with it.
    pub trust: Arc<TrustStore>,
}

/// A client of `POST /v1/certify`.
#[derive(Debug)]
pub struct CertifyClient {
    config: CertifyClientConfig,
    target: HttpsTarget,
    trust: Mutex<Arc<TrustStore>>,
    dns_names: Vec<String>,
}

impl CertifyClient {
    /// A client trusting `trust` to authenticate the identity service at first.
    pub fn new(config: CertifyClientConfig, trust: TrustStore) -> Result<Self, ClientError> {
        let target = HttpsTarget::parse(&config.url)?;
        Ok(Self {
            config,
            target,
            trust: Mutex::new(Arc::new(trust)),
            dns_names: Vec::new(),
        })
    }

    /// Asks for these DNS names in every certificate too (the service grants them only to
    /// identities allowed them: the injector's webhook name).
    pub fn with_dns_names(mut self, dns_names: Vec<String>) -> Self {
        self.dns_names = dns_names;
        self
    }

    /// The trust store as last updated by the CA.
    pub fn trust(&self) -> Arc<TrustStore> {
        self.trust.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Obtains a new SVID for a new in-memory key, authenticated by the token.
    pub async fn certify(&self) -> Result<Issued, CertifyClientError> {
        self.request(None).await
    }

    /// Obtains the SVID that replaces `current`, presenting `current` as the TLS client
    /// certificate while it is valid: a workload admitted by a join token renews that way
    /// after the token expired or was used up (the token is still sent when its file can be
    /// read; a service authenticating by Kubernetes tokens asks for no certificate). If the
    /// exchange fails at the TLS or HTTP level with the certificate (say the service no
    /// longer trusts its issuer), it is tried once more with the token alone.
    pub async fn renew(&self, current: &Svid) -> Result<Issued, CertifyClientError> {
        if current.not_after() <= std::time::SystemTime::now() {
            return self.certify().await;
        }
        match self.request(Some(current)).await {
            Err(CertifyClientError::Request(
                e @ (ClientError::Tls { .. } | ClientError::Http { .. }),
            )) => {
                tracing::debug!(error = %e, "renewal with the current certificate failed; trying the token alone");
                self.certify().await
            }
            other => other,
        }
    }

    /// One request, presenting `svid` as the client certificate if given.
    async fn request(&self, svid: Option<&Svid>) -> Result<Issued, CertifyClientError> {
        let token = match std::fs::read_to_string(&self.config.token_file) {
            Ok(token) => token,
            // The certificate authenticates a renewal; the token may be gone by now.
            Err(_) if svid.is_some() => String::new(),
            Err(e) => {
                return Err(CertifyClientError::Token {
                    path: self.config.token_file.display().to_string(),
                    reason: e.to_string(),
                })
            }
        };
        let key = csr::generate_key()?;
        let body = serde_json::to_vec(&CertifyRequest {
            csr: csr::build_csr(&key, self.config.expected_id.as_ref())?,
            dns_names: self.dns_names.clone(),
        })
        .map_err(|e| CertifyClientError::BadReply(e.to_string()))?;

        let expected = ExpectedPeer::Exact(self.config.server_id.clone());
        let alpn: &[&[u8]] = &[b"http/1.1"];
        let tls_config = match svid {
            Some(svid) => tls::client_config(svid, self.trust(), expected, alpn)?,
            None => tls::anonymous_client_config(self.trust(), expected, alpn),
        };

        let (status, reply) = post_json(
            Arc::new(tls_config),
            &self.target,
            CERTIFY_PATH,
            token.trim(),
            body,
            MAX_REPLY_BYTES,
            self.config.timeout,
        )
        .await?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorResponse>(&reply)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&reply).chars().take(200).collect());
            return Err(CertifyClientError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        let reply: CertifyResponse = serde_json::from_slice(&reply)
            .map_err(|e| CertifyClientError::BadReply(format!("malformed JSON: {e}")))?;
        let issued = self.check(reply, &key)?;
        *self.trust.lock().unwrap_or_else(|p| p.into_inner()) = issued.trust.clone();
        Ok(issued)
    }

    /// Verifies the reply: our key, the expected identity, a valid SVID under the new bundle.
    fn check(
        &self,
        reply: CertifyResponse,
        key: &rcgen::KeyPair,
    ) -> Result<Issued, CertifyClientError> {
        let bad = |e: String| CertifyClientError::BadReply(e);
        let chain = certs_from_pem(reply.certificate_chain.as_bytes(), "certificate_chain")
            .map_err(|e| bad(e.to_string()))?;
        let id = svid::identity_of(&chain[0]).map_err(|e| bad(e.to_string()))?;
        if let Some(want) = &self.config.expected_id {
            if &id != want {
                return Err(CertifyClientError::WrongIdentity {
                    got: id,
                    want: want.clone(),
                });
            }
        }
        let (_, leaf) = X509Certificate::from_der(&chain[0]).map_err(|e| bad(e.to_string()))?;
        if leaf.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(bad("the certificate is not for the key we sent".into()));
        }
        let not_after = crate::ca::to_system_time(leaf.validity().not_after.timestamp());
        let bundle = TrustBundle::from_pem(
            id.trust_domain(),
            reply.trust_bundle.as_bytes(),
            "trust_bundle",
        )
        .map_err(|e| bad(e.to_string()))?;
        // Keep other trust domains' bundles (federation); replace this one's.
        let mut trust = (*self.trust()).clone();
        trust.insert(bundle);
        let algorithms = tls::crypto_provider().signature_verification_algorithms;
        for role in [PeerRole::Server, PeerRole::Client] {
            verify_svid(
                &trust,
                &chain[0],
                &chain[1..],
                UnixTime::now(),
                role,
                &algorithms,
            )?;
        }
        Ok(Issued {
            svid: Svid::new(id, chain, csr::private_key_der(key), not_after),
            trust: Arc::new(trust),
        })
    }
}
