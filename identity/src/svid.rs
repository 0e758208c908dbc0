//! The X.509-SVID rules that generic WebPKI validation does not check: exactly one URI SAN
//! holding a valid SPIFFE ID, a leaf that is not a CA and may only sign (digitalSignature, no
//! keyCertSign/cRLSign, key usage critical), and signing certificates that are CAs with
//! keyCertSign. See the SPIFFE X509-SVID standard, sections 4 and 5.

use rustls_pki_types::CertificateDer;
use warden_core::{InvalidSpiffeId, SpiffeId};
use x509_parser::prelude::{ASN1Time, FromDer, GeneralName, X509Certificate};

/// Which SVID rule a certificate breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// No certificate was presented.
    #[error("no certificate was presented")]
    EmptyChain,
    /// A certificate is not valid DER X.509.
    #[error("certificate {index} is not a valid X.509 certificate: {reason}")]
    Unparseable {
        /// Position in the chain (0 = leaf).
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
    /// The leaf has no URI SAN (e.g. a DNS-only certificate).
    #[error("leaf has no URI SAN (an SVID carries its SPIFFE ID as exactly one URI SAN)")]
    NoUriSan,
    /// The leaf has several URI SANs.
    #[error("leaf has {0} URI SANs; an SVID has exactly one")]
    MultipleUriSans(usize),
    /// The URI SAN is not a `spiffe://` URI.
    #[error("leaf URI SAN {0:?} is not a SPIFFE ID")]
    NotSpiffe(String),
    /// The URI SAN is a malformed SPIFFE ID.
    #[error("leaf URI SAN: {0}")]
    InvalidId(InvalidSpiffeId),
    /// The leaf says it is a CA.
    #[error("leaf is a CA certificate (basic constraints cA=true)")]
    LeafIsCa,
    /// The leaf lacks the key usage extension.
    #[error("leaf has no key usage extension")]
    NoKeyUsage,
    /// The leaf's key usage is not marked critical.
    #[error("leaf key usage is not marked critical")]
    KeyUsageNotCritical,
    /// The leaf's key usage lacks digitalSignature.
    #[error("leaf key usage lacks digitalSignature")]
    NoDigitalSignature,
    /// The leaf's key usage allows signing certificates or CRLs.
    #[error("leaf key usage allows keyCertSign or cRLSign")]
    LeafCanSign,
    /// A certificate above the leaf is not a CA.
    #[error("chain certificate {0} is not a CA (basic constraints cA=false or missing)")]
    SigningCertNotCa(usize),
    /// A certificate above the leaf cannot sign certificates.
    #[error("chain certificate {0} lacks the keyCertSign key usage")]
    SigningCertCannotSign(usize),
    /// A signing certificate carries a workload SPIFFE ID (only `spiffe://<td>` is allowed).
    #[error("chain certificate {0} carries a SPIFFE ID with a path; signing certificates may not")]
    SigningCertHasPath(usize),
    /// A certificate is outside its validity period.
    #[error("certificate {index} is not valid at {at}: valid from {not_before} to {not_after}")]
    OutsideValidity {
        /// Position in the chain (0 = leaf).
        index: usize,
        /// When it was checked.
        at: String,
        /// Its `notBefore`.
        not_before: String,
        /// Its `notAfter`.
        not_after: String,
    },
}

fn parse<'a>(der: &'a CertificateDer<'_>, index: usize) -> Result<X509Certificate<'a>, SvidError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(SvidError::Unparseable {
            index,
            reason: format!("{} trailing bytes", rest.len()),
        }),
        Err(e) => Err(SvidError::Unparseable {
            index,
            reason: e.to_string(),
        }),
    }
}

fn uri_sans<'a>(cert: &'a X509Certificate<'_>, index: usize) -> Result<Vec<&'a str>, SvidError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Unparseable {
            index,
            reason: format!("bad subject alternative name: {e}"),
        })?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

fn leaf_identity_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, SvidError> {
    let uris = uri_sans(cert, 0)?;
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUriSan),
        [one] => *one,
        many => return Err(SvidError::MultipleUriSans(many.len())),
    };
    if !uri.starts_with(warden_core::spiffe::SCHEME_PREFIX) {
        return Err(SvidError::NotSpiffe(uri.to_string()));
    }
    SpiffeId::parse(uri).map_err(SvidError::InvalidId)
}

/// Checks that every certificate of `chain` (leaf first) is within its validity period at
/// `now` (seconds since the Unix epoch), `notBefore` and `notAfter` included.
pub fn check_validity(chain: &[CertificateDer<'_>], now: i64) -> Result<(), SvidError> {
    for (index, der) in chain.iter().enumerate() {
        let cert = parse(der, index)?;
        let validity = cert.validity();
        let (from, to) = (
            validity.not_before.timestamp(),
            validity.not_after.timestamp(),
        );
        if now < from || now > to {
            let at =
                ASN1Time::from_timestamp(now).map_or_else(|_| now.to_string(), |t| t.to_string());
            return Err(SvidError::OutsideValidity {
                index,
                at,
                not_before: validity.not_before.to_string(),
                not_after: validity.not_after.to_string(),
            });
        }
    }
    Ok(())
}

/// The SPIFFE ID of a leaf certificate (exactly one URI SAN, a valid workload SPIFFE ID).
/// Reads the identity only; it says nothing about trust.
pub fn identity_of(leaf: &CertificateDer<'_>) -> Result<SpiffeId, SvidError> {
    leaf_identity_of(&parse(leaf, 0)?)
}

/// Checks the leaf and signing-certificate rules over a presented chain (leaf first) and
/// returns the leaf's SPIFFE ID. Chain-of-trust and validity are checked separately.
pub fn check_chain(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
) -> Result<SpiffeId, SvidError> {
    let cert = parse(leaf, 0)?;
    let id = leaf_identity_of(&cert)?;
    check_leaf_usage(&cert)?;
    for (i, der) in intermediates.iter().enumerate() {
        check_signing_cert(&parse(der, i + 1)?, i + 1)?;
    }
    Ok(id)
}

fn check_leaf_usage(cert: &X509Certificate<'_>) -> Result<(), SvidError> {
    let bad = |reason: String| SvidError::Unparseable { index: 0, reason };
    let bc = cert
        .basic_constraints()
        .map_err(|e| bad(format!("bad basic constraints: {e}")))?;
    if bc.is_some_and(|bc| bc.value.ca) {
        return Err(SvidError::LeafIsCa);
    }
    let ku = cert
        .key_usage()
        .map_err(|e| bad(format!("bad key usage: {e}")))?
        .ok_or(SvidError::NoKeyUsage)?;
    if !ku.critical {
        return Err(SvidError::KeyUsageNotCritical);
    }
    if ku.value.key_cert_sign() || ku.value.crl_sign() {
        return Err(SvidError::LeafCanSign);
    }
    if !ku.value.digital_signature() {
        return Err(SvidError::NoDigitalSignature);
    }
    Ok(())
}

fn check_signing_cert(cert: &X509Certificate<'_>, index: usize) -> Result<(), SvidError> {
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .is_some_and(|bc| bc.value.ca);
    if !is_ca {
        return Err(SvidError::SigningCertNotCa(index));
    }
    let can_sign = cert
        .key_usage()
        .ok()
        .flatten()
        .is_some_and(|ku| ku.value.key_cert_sign());
    if !can_sign {
        return Err(SvidError::SigningCertCannotSign(index));
    }
    let has_path = uri_sans(cert, index)?.iter().any(|u| {
        u.strip_prefix(warden_core::spiffe::SCHEME_PREFIX)
            .is_some_and(|rest| rest.contains('/'))
    });
    if has_path {
        return Err(SvidError::SigningCertHasPath(index));
    }
    Ok(())
}
