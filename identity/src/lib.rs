//! warden-identity: Warden's certificate authority, the issuance service, and everything
//! that checks what it issues.
//!
//! - [`ca`]: the trust anchor and issuer on disk, and signing SVIDs from CSRs;
//! - [`profile`]: the pure X.509 profiles of the root, the issuer and SVID leaves;
//! - [`csr`]: building CSRs and reading them (signature checked, P-256 key only);
//! - [`svid`]: the SPIFFE X.509-SVID rules that WebPKI does not check;
//! - [`verify`]: full peer verification and the rustls verifiers built on it;
//! - [`tls`]: the crypto provider and mesh TLS configurations;
//! - [`service`], [`authn`], [`token_review`], [`join_token`], [`rate_limit`]: the
//!   issuance service and how it authenticates callers;
//! - [`client`], [`rotation`]: the workload side, obtaining and renewing SVIDs;
//! - [`admin`], [`telemetry`], [`http`], [`server`]: health, metrics, HTTP plumbing and
//!   the bounds every server here keeps;
//! - [`bundle`], [`credential`], [`inspect`], [`certify`]: trust bundles, SVID credentials,
//!   certificate summaries and the issuance wire format; [`timestamp`]: RFC 3339 times.

#![warn(missing_docs)]

pub mod admin;
pub mod audit_signature;
pub mod authn;
pub mod bundle;
pub mod ca;
pub mod certify;
pub mod client;
pub mod credential;
pub mod csr;
pub mod http;
pub mod inspect;
pub mod join_token;
pub mod process_metrics;
pub mod profile;
pub mod rate_limit;
pub mod rotation;
pub mod server;
pub mod service;
pub mod svid;
pub mod telemetry;
pub mod timestamp;
pub mod tls;
pub mod token_review;
pub mod verify;

pub use bundle::{TrustBundle, TrustStore};
pub use ca::CertificateAuthority;
pub use credential::Svid;
pub use verify::{ExpectedPeer, PeerRole, VerifyError};
