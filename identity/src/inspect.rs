//! A readable summary of a certificate, for `warden cert inspect`.

use std::fmt;

use rustls_pki_types::CertificateDer;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// What an operator wants to know about one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSummary {
    /// The URI SANs (a SPIFFE ID for an SVID, `spiffe://<td>` for a Warden CA).
    pub uris: Vec<String>,
    /// DNS SANs, if any.
    pub dns_names: Vec<String>,
    /// The subject distinguished name (empty for SVIDs).
    pub subject: String,
    /// The issuer distinguished name.
    pub issuer: String,
    /// The serial number, colon-separated hex.
    pub serial: String,
    /// `notBefore`, RFC 2822 style.
    pub not_before: String,
    /// `notAfter`, RFC 2822 style.
    pub not_after: String,
    /// Whether basic constraints say cA=true.
    pub is_ca: bool,
    /// Key usage bits by name, with "(critical)" when marked so.
    pub key_usage: Vec<String>,
    /// Extended key usages by name.
    pub extended_key_usage: Vec<String>,
    /// The public key algorithm.
    pub public_key: String,
}

/// A certificate's `(notBefore, notAfter)`, Unix seconds (`None` when it does not parse).
pub fn validity_unix(der: &CertificateDer<'_>) -> Option<(i64, i64)> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let validity = cert.validity();
    Some((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
    ))
}

/// A certificate's `notAfter`, Unix seconds (`None` when it does not parse).
pub fn not_after_unix(der: &CertificateDer<'_>) -> Option<i64> {
    validity_unix(der).map(|(_, not_after)| not_after)
}

/// The earliest `notAfter` of `certs` (the first to expire decides), Unix seconds.
pub fn earliest_not_after(certs: &[CertificateDer<'_>]) -> Option<i64> {
    certs.iter().filter_map(not_after_unix).min()
}

/// Whether `issuer`'s key signed `cert` (its signature only: no dates, no constraints).
pub fn signed_by(cert: &CertificateDer<'_>, issuer: &CertificateDer<'_>) -> bool {
    match (
        X509Certificate::from_der(cert),
        X509Certificate::from_der(issuer),
    ) {
        (Ok((_, c)), Ok((_, i))) => c.verify_signature(Some(i.public_key())).is_ok(),
        _ => false,
    }
}

/// Summarizes a DER certificate; `Err` carries the parser's complaint.
pub fn summarize(der: &CertificateDer<'_>) -> Result<CertSummary, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::URI(u) => uris.push(u.to_string()),
                GeneralName::DNSName(d) => dns_names.push(d.to_string()),
                _ => {}
            }
        }
    }
    let mut key_usage = Vec::new();
    if let Ok(Some(ku)) = cert.key_usage() {
        let k = ku.value;
        for (on, name) in [
            (k.digital_signature(), "digitalSignature"),
            (k.non_repudiation(), "nonRepudiation"),
            (k.key_encipherment(), "keyEncipherment"),
            (k.data_encipherment(), "dataEncipherment"),
            (k.key_agreement(), "keyAgreement"),
            (k.key_cert_sign(), "keyCertSign"),
            (k.crl_sign(), "cRLSign"),
        ] {
            if on {
                key_usage.push(name.to_string());
            }
        }
        if ku.critical {
            key_usage.push("(critical)".to_string());
        }
    }
    let mut extended_key_usage = Vec::new();
    if let Ok(Some(eku)) = cert.extended_key_usage() {
        let e = eku.value;
        for (on, name) in [
            (e.server_auth, "serverAuth"),
            (e.client_auth, "clientAuth"),
            (e.code_signing, "codeSigning"),
            (e.email_protection, "emailProtection"),
            (e.any, "any"),
        ] {
            if on {
                extended_key_usage.push(name.to_string());
            }
        }
    }
    let public_key = match cert.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(p)) => format!("ECDSA ({} bits)", p.key_size()),
        Ok(x509_parser::public_key::PublicKey::RSA(r)) => format!("RSA ({} bits)", r.key_size()),
        _ => cert.public_key().algorithm.algorithm.to_id_string(),
    };
    Ok(CertSummary {
        uris,
        dns_names,
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        is_ca: cert.is_ca(),
        key_usage,
        extended_key_usage,
        public_key,
    })
}

impl fmt::Display for CertSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_none = |v: &[String]| {
            if v.is_empty() {
                "(none)".to_string()
            } else {
                v.join(", ")
            }
        };
        let spiffe: Vec<String> = self
            .uris
            .iter()
            .filter(|u| u.starts_with(warden_core::spiffe::SCHEME_PREFIX))
            .cloned()
            .collect();
        writeln!(f, "SPIFFE ID:     {}", or_none(&spiffe))?;
        writeln!(f, "URI SANs:      {}", or_none(&self.uris))?;
        writeln!(f, "DNS SANs:      {}", or_none(&self.dns_names))?;
        let subject = if self.subject.is_empty() {
            "(empty)"
        } else {
            &self.subject
        };
        writeln!(f, "Subject:       {subject}")?;
        writeln!(f, "Issuer:        {}", self.issuer)?;
        writeln!(f, "Serial:        {}", self.serial)?;
        writeln!(f, "Not before:    {}", self.not_before)?;
        writeln!(f, "Not after:     {}", self.not_after)?;
        writeln!(
            f,
            "CA:            {}",
            if self.is_ca { "yes" } else { "no" }
        )?;
        writeln!(f, "Key usage:     {}", or_none(&self.key_usage))?;
        writeln!(f, "Extended KU:   {}", or_none(&self.extended_key_usage))?;
        write!(f, "Public key:    {}", self.public_key)
    }
}
