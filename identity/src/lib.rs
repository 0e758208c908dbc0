//! warden-identity: Warden's certificate authority and everything that checks what it issues.
//!
//! - [`ca`]: the trust anchor and issuer on disk, and signing SVIDs from CSRs;
//! - [`profile`]: the pure X.509 profiles of the root, the issuer and SVID leaves;
//! - [`csr`]: building CSRs and reading them (signature checked, P-256 key only);
//! - [`svid`]: the SPIFFE X.509-SVID rules that WebPKI does not check;
//! - [`verify`]: full peer verification and the rustls verifiers built on it;
//! - [`tls`]: the crypto provider and mesh TLS configurations;
//! - [`bundle`], [`credential`], [`inspect`]: trust bundles, SVID credentials, summaries.

#![warn(missing_docs)]

pub mod bundle;
pub mod ca;
pub mod credential;
pub mod csr;
pub mod inspect;
pub mod profile;
pub mod svid;
pub mod tls;
pub mod verify;

pub use bundle::{TrustBundle, TrustStore};
pub use ca::CertificateAuthority;
pub use credential::Svid;
pub use verify::{ExpectedPeer, PeerRole, VerifyError};
