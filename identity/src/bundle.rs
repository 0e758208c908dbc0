//! Trust bundles: the root certificates that anchor each trust domain, and PEM reading.

use std::collections::BTreeMap;
use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor};
use warden_core::TrustDomain;

/// Why certificates or a trust bundle could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error (part of the message, not a separate cause).
        error: std::io::Error,
    },
    /// The PEM text is malformed.
    #[error("{what}: malformed PEM: {reason}")]
    Pem {
        /// What was being read (a file name or a description).
        what: String,
        /// The PEM parser's complaint.
        reason: String,
    },
    /// The PEM text has no CERTIFICATE block.
    #[error("{0}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)")]
    NoCertificates(String),
    /// A certificate cannot serve as a trust anchor.
    #[error("{what}: certificate {index} cannot be a trust anchor: {reason}")]
    BadAnchor {
        /// What was being read.
        what: String,
        /// Which certificate (0-based).
        index: usize,
        /// Why.
        reason: String,
    },
}

/// Reads every `CERTIFICATE` block of a PEM text; `what` names the input in errors.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BundleError::Pem {
            what: what.to_string(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(BundleError::NoCertificates(what.to_string()));
    }
    Ok(certs)
}

/// Reads every certificate of a PEM file.
pub fn certs_from_pem_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    certs_from_pem(&read_file(path)?, &path.display().to_string())
}

/// Encodes certificates as PEM text, one block each, in order.
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    certs.iter().map(|c| der_to_pem("CERTIFICATE", c)).collect()
}

/// Encodes one DER object as a PEM block with the given label.
pub fn der_to_pem(label: &str, der: &[u8]) -> String {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    pem::encode_config(&pem::Pem::new(label, der), config)
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>, BundleError> {
    std::fs::read(path).map_err(|error| BundleError::Read {
        path: path.display().to_string(),
        error,
    })
}

/// The root certificates trusted for one trust domain.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustBundle {
    /// Builds a bundle from root certificates; each must parse as a trust anchor.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
        what: &str,
    ) -> Result<Self, BundleError> {
        if roots.is_empty() {
            return Err(BundleError::NoCertificates(what.to_string()));
        }
        let anchors = roots
            .iter()
            .enumerate()
            .map(|(index, root)| {
                webpki::anchor_from_trusted_cert(root)
                    .map(|a| a.to_owned())
                    .map_err(|e| BundleError::BadAnchor {
                        what: what.to_string(),
                        index,
                        reason: format!("{e:?}"),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            trust_domain,
            roots,
            anchors,
        })
    }

    /// Parses a PEM bundle for a trust domain; `what` names the input in errors.
    pub fn from_pem(
        trust_domain: TrustDomain,
        pem: &[u8],
        what: &str,
    ) -> Result<Self, BundleError> {
        Self::new(trust_domain, certs_from_pem(pem, what)?, what)
    }

    /// Reads a PEM bundle file for a trust domain.
    pub fn from_pem_file(trust_domain: TrustDomain, path: &Path) -> Result<Self, BundleError> {
        Self::from_pem(trust_domain, &read_file(path)?, &path.display().to_string())
    }

    /// The trust domain these roots anchor.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The root certificates, in order.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as webpki trust anchors.
    pub fn anchors(&self) -> &[TrustAnchor<'static>] {
        &self.anchors
    }

    /// The bundle as PEM text.
    pub fn to_pem(&self) -> String {
        certs_to_pem(&self.roots)
    }
}

/// The trust bundles a workload accepts, one per trust domain (federation-ready).
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    bundles: BTreeMap<TrustDomain, TrustBundle>,
}

impl TrustStore {
    /// A store trusting exactly one trust domain.
    pub fn single(bundle: TrustBundle) -> Self {
        let mut store = Self::default();
        store.insert(bundle);
        store
    }

    /// Adds or replaces the bundle of its trust domain.
    pub fn insert(&mut self, bundle: TrustBundle) {
        self.bundles.insert(bundle.trust_domain.clone(), bundle);
    }

    /// The bundle of a trust domain, by name.
    pub fn get(&self, trust_domain: &str) -> Option<&TrustBundle> {
        self.bundles
            .iter()
            .find(|(td, _)| td.as_str() == trust_domain)
            .map(|(_, b)| b)
    }

    /// Every trusted trust domain.
    pub fn trust_domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.bundles.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_round_trips() {
        let der = CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x05]);
        let text = certs_to_pem(&[der.clone(), der.clone()]);
        assert!(text.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert_eq!(
            certs_from_pem(text.as_bytes(), "t").unwrap(),
            vec![der.clone(), der]
        );
    }

    #[test]
    fn pem_errors_name_the_input() {
        let err = certs_from_pem(b"hello", "bundle.pem").unwrap_err();
        assert_eq!(
            err.to_string(),
            "bundle.pem: no certificate found (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        );
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let err = certs_from_pem(broken, "x.pem").unwrap_err();
        assert!(err.to_string().starts_with("x.pem: malformed PEM"), "{err}");
    }
}
