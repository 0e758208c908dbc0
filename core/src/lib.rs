//! warden-core: the model every part of Warden shares, with no I/O.
//!
//! SPIFFE identities ([`spiffe`]), human durations ([`duration`]), YAML with operator-grade
//! errors ([`yaml`]) and the contract between the proxy and the injector ([`contract`]):
//! ports, UIDs, ALPN names, environment variables and Kubernetes keys.

#![warn(missing_docs)]

pub mod audit;
pub mod cidr;
pub mod contract;
pub mod duration;
pub mod policy;
pub mod probe;
pub mod spiffe;
pub mod yaml;

pub use cidr::Cidr;
pub use spiffe::{InvalidSpiffeId, SpiffeId, SpiffeIdError, TrustDomain};
