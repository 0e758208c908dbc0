//! Certificate signing requests: building one (workload side) and reading one (CA side).
//!
//! The CA keeps nothing from a CSR but its public key, and only after checking the CSR's own
//! signature (proof that the caller holds the private key) and that the key is ECDSA P-256.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, SubjectPublicKeyInfo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateSigningRequestDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use warden_core::SpiffeId;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;

/// The largest CSR accepted; a P-256 CSR is well under 1 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Why a CSR was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    /// Larger than [`MAX_CSR_BYTES`].
    #[error("CSR is {0} bytes, more than the {MAX_CSR_BYTES} allowed")]
    TooLarge(usize),
    /// Not a PEM `CERTIFICATE REQUEST` block.
    #[error("CSR is not PEM with a \"BEGIN CERTIFICATE REQUEST\" block: {0}")]
    NotPem(String),
    /// Not a well-formed PKCS#10 structure.
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    Malformed(String),
    /// The CSR's signature does not verify with its own public key.
    #[error("CSR signature does not verify with its public key")]
    BadSignature,
    /// The key is not ECDSA P-256.
    #[error("CSR key must be ECDSA P-256; got {0}")]
    UnsupportedKey(String),
    /// Building a CSR failed (workload side).
    #[error("cannot build a CSR: {0}")]
    Build(String),
}

/// The only thing taken from a verified CSR: its subject public key.
#[derive(Debug, Clone)]
pub struct CsrPublicKey(SubjectPublicKeyInfo);

impl CsrPublicKey {
    /// The key as rcgen signs it.
    pub(crate) fn spki(&self) -> &SubjectPublicKeyInfo {
        &self.0
    }
}

/// Reads a PEM CSR, verifies its signature and returns its P-256 public key.
pub fn public_key_from_pem(pem: &str) -> Result<CsrPublicKey, CsrError> {
    if pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(pem.len()));
    }
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| CsrError::NotPem(e.to_string()))?;
    public_key_from_der(&der)
}

/// Reads a DER CSR, verifies its signature and returns its P-256 public key.
pub fn public_key_from_der(der: &[u8]) -> Result<CsrPublicKey, CsrError> {
    if der.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge(der.len()));
    }
    let (rest, csr) =
        X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed(format!(
            "{} trailing bytes after the request",
            rest.len()
        )));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        let name = match curve {
            Some(c) => format!("{} with parameters {c}", spki.algorithm.algorithm),
            None => format!("algorithm {}", spki.algorithm.algorithm),
        };
        return Err(CsrError::UnsupportedKey(name));
    }
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    let key =
        SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| CsrError::Malformed(e.to_string()))?;
    Ok(CsrPublicKey(key))
}

/// A fresh ECDSA P-256 key pair, generated in memory.
pub fn generate_key() -> Result<KeyPair, CsrError> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CsrError::Build(e.to_string()))
}

/// The key pair as rustls takes it (PKCS#8 DER, in memory).
pub fn private_key_der(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

/// A PEM CSR for `key` naming the identity the workload expects (if it knows it); the CA
/// ignores the name and uses the identity it authenticated, but it keeps CSRs
/// self-describing in logs and tools.
pub fn build_csr(key: &KeyPair, id: Option<&SpiffeId>) -> Result<String, CsrError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(id) = id {
        let uri = id
            .as_str()
            .try_into()
            .map_err(|_| CsrError::Build(format!("{id} is not an IA5 string")))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| CsrError::Build(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap()
    }

    #[test]
    fn round_trip_keeps_only_the_key() {
        let key = generate_key().unwrap();
        let pem = build_csr(&key, Some(&id())).unwrap();
        let got = public_key_from_pem(&pem).unwrap();
        use rcgen::PublicKeyData;
        assert_eq!(got.spki().der_bytes(), key.der_bytes());
    }

    #[test]
    fn rejections() {
        let key = generate_key().unwrap();
        let pem = build_csr(&key, Some(&id())).unwrap();
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).unwrap();

        // A flipped bit in the signed part breaks the signature.
        let mut tampered = der.to_vec();
        let i = tampered.len() / 2;
        tampered[i] ^= 0x01;
        let err = public_key_from_der(&tampered).unwrap_err();
        assert!(
            matches!(err, CsrError::BadSignature | CsrError::Malformed(_)),
            "{err:?}"
        );

        let mut trailing = der.to_vec();
        trailing.push(0);
        assert!(matches!(
            public_key_from_der(&trailing),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(
            public_key_from_der(b"\x30\x03junk"),
            Err(CsrError::Malformed(_))
        ));
        assert!(matches!(
            public_key_from_pem("hello"),
            Err(CsrError::NotPem(_))
        ));
        let huge = "A".repeat(MAX_CSR_BYTES + 1);
        assert!(matches!(
            public_key_from_pem(&huge),
            Err(CsrError::TooLarge(_))
        ));

        for alg in [&rcgen::PKCS_ECDSA_P384_SHA384, &rcgen::PKCS_ED25519] {
            let other = KeyPair::generate_for(alg).unwrap();
            let pem = build_csr(&other, Some(&id())).unwrap();
            let err = public_key_from_pem(&pem).unwrap_err();
            assert!(matches!(err, CsrError::UnsupportedKey(_)), "{err:?}");
        }
    }

    #[test]
    fn signature_by_another_key_is_refused() {
        // Take a valid CSR and graft a signature made by a different key onto it.
        let a = generate_key().unwrap();
        let b = generate_key().unwrap();
        let der_a = CertificateSigningRequestDer::from_pem_slice(
            build_csr(&a, Some(&id())).unwrap().as_bytes(),
        )
        .unwrap();
        let der_b = CertificateSigningRequestDer::from_pem_slice(
            build_csr(&b, Some(&id())).unwrap().as_bytes(),
        )
        .unwrap();
        let (_, csr_a) = X509CertificationRequest::from_der(&der_a).unwrap();
        let (_, csr_b) = X509CertificationRequest::from_der(&der_b).unwrap();
        let info_a = csr_a.certification_request_info.raw;
        let info_b = csr_b.certification_request_info.raw;
        // Swap in B's signed info (B's public key) under A's signature.
        let pos = der_a
            .windows(info_a.len())
            .position(|w| w == info_a)
            .unwrap();
        let mut forged = Vec::new();
        let body = [info_b, &der_a[pos + info_a.len()..]].concat();
        // Re-wrap as SEQUENCE { info_b, alg, sig_a } with a long-form length.
        forged.push(0x30);
        forged.push(0x82);
        forged.extend_from_slice(&(body.len() as u16).to_be_bytes());
        forged.extend_from_slice(&body);
        assert_eq!(
            public_key_from_der(&forged).unwrap_err(),
            CsrError::BadSignature
        );
    }
}
