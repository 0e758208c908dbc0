//! A workload's credential: its SPIFFE ID, certificate chain and private key, held in memory.

use std::time::SystemTime;

use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use warden_core::SpiffeId;

/// An X.509-SVID with its private key, ready to hand to rustls.
pub struct Svid {
    id: SpiffeId,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_after: SystemTime,
}

impl Svid {
    /// Bundles an identity, its chain (leaf first), its key and the leaf's expiry.
    pub fn new(
        id: SpiffeId,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        not_after: SystemTime,
    ) -> Self {
        Self {
            id,
            chain,
            key,
            not_after,
        }
    }

    /// The SPIFFE ID the certificate carries.
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    /// The chain presented to peers: leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key (PKCS#8 DER). Never logged, never written by the proxy.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// When the leaf expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

impl Clone for Svid {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            not_after: self.not_after,
        }
    }
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is deliberately left out.
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}
