//! The certificate profiles Warden's CA issues, as pure functions from an identity and a
//! validity window to rcgen parameters: the trust anchor, the issuer, and X.509-SVID leaves.
//!
//! Nothing here reads a CSR: a leaf is built only from the authenticated identity.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;
use warden_core::{SpiffeId, TrustDomain};

/// How far `notBefore` is backdated, so peers whose clocks lag a little accept a fresh cert.
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(60);
/// The default lifetime of a workload SVID.
pub const DEFAULT_SVID_TTL: Duration = Duration::from_secs(24 * 3600);
/// The default lifetime of the trust anchor (root).
pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The default lifetime of the issuer (intermediate).
pub const DEFAULT_ISSUER_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// The shortest lifetime the CA issues: shorter ones could expire before they are used.
pub const MIN_TTL: Duration = Duration::from_secs(1);

/// Why a validity window cannot be issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// The requested lifetime is below [`MIN_TTL`].
    #[error("lifetime {0:?} is shorter than the minimum of {MIN_TTL:?}")]
    TtlTooShort(Duration),
    /// The issuer has expired (or expires before the minimum lifetime).
    #[error("the issuer certificate has expired or expires within {MIN_TTL:?}; rotate the issuer")]
    IssuerExpired,
    /// A time outside what X.509 can encode.
    #[error("time out of range")]
    TimeOutOfRange,
    /// A name that cannot be encoded as an IA5String SAN.
    #[error("{0:?} cannot be encoded in a certificate")]
    Unencodable(String),
}

/// A certificate's validity window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// `notBefore`.
    pub not_before: SystemTime,
    /// `notAfter`.
    pub not_after: SystemTime,
}

impl Validity {
    /// The window of a certificate issued at `now` for `ttl`: backdated by the clock-skew
    /// allowance and never extending past `ceiling` (the issuer's own `notAfter`).
    pub fn issued(
        now: SystemTime,
        ttl: Duration,
        ceiling: Option<SystemTime>,
    ) -> Result<Self, ProfileError> {
        if ttl < MIN_TTL {
            return Err(ProfileError::TtlTooShort(ttl));
        }
        let not_before = now
            .checked_sub(CLOCK_SKEW_ALLOWANCE)
            .ok_or(ProfileError::TimeOutOfRange)?;
        let mut not_after = now.checked_add(ttl).ok_or(ProfileError::TimeOutOfRange)?;
        if let Some(ceiling) = ceiling {
            if ceiling < now + MIN_TTL {
                return Err(ProfileError::IssuerExpired);
            }
            not_after = not_after.min(ceiling);
        }
        Ok(Self {
            not_before,
            not_after,
        })
    }

    fn apply(&self, params: &mut CertificateParams) -> Result<(), ProfileError> {
        params.not_before = to_offset(self.not_before)?;
        params.not_after = to_offset(self.not_after)?;
        Ok(())
    }
}

fn to_offset(t: SystemTime) -> Result<OffsetDateTime, ProfileError> {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| ProfileError::TimeOutOfRange)?
        .as_secs();
    OffsetDateTime::from_unix_timestamp(secs as i64).map_err(|_| ProfileError::TimeOutOfRange)
}

/// A random, positive, 16-byte certificate serial number.
pub fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // aws-lc's RNG fails only if the OS has no entropy source at all; a zero serial would then
    // still be distinct per key via the signature, but we prefer to fail loudly in that case.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random number generator failed");
    bytes[0] &= 0x7f; // keep it positive in DER
    bytes[0] |= 0x01; // and of fixed length (no leading zero octet dropped)
    SerialNumber::from_slice(&bytes)
}

/// The X.509-SVID leaf profile: exactly one URI SAN (critical, with an empty subject), basic
/// constraints present with cA=false, critical key usage `digitalSignature` only, EKU
/// serverAuth+clientAuth, the given serial and window, and an authority key identifier.
pub fn svid_params(
    id: &SpiffeId,
    serial: SerialNumber,
    validity: Validity,
) -> Result<CertificateParams, ProfileError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        id.as_str()
            .try_into()
            .map_err(|_| ProfileError::Unencodable(id.to_string()))?,
    )];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.serial_number = Some(serial);
    params.use_authority_key_identifier_extension = true;
    validity.apply(&mut params)?;
    Ok(params)
}

/// The SVID profile plus DNS SANs, for a server that standard HTTPS clients also reach by
/// name (the identity service). Still exactly one URI SAN, as the SPIFFE standard requires.
pub fn server_svid_params(
    id: &SpiffeId,
    dns_names: &[String],
    serial: SerialNumber,
    validity: Validity,
) -> Result<CertificateParams, ProfileError> {
    let mut params = svid_params(id, serial, validity)?;
    for name in dns_names {
        let dns = name
            .as_str()
            .try_into()
            .map_err(|_| ProfileError::Unencodable(name.clone()))?;
        params.subject_alt_names.push(SanType::DnsName(dns));
    }
    Ok(params)
}

/// The trust anchor (root): a CA limited to one intermediate below it, carrying the trust
/// domain's own SPIFFE ID (`spiffe://<td>`) so the CA's files name their trust domain.
pub fn root_params(
    td: &TrustDomain,
    serial: SerialNumber,
    validity: Validity,
) -> Result<CertificateParams, ProfileError> {
    signing_params(td, "Warden trust anchor", 1, serial, validity)
}

/// The issuer (intermediate): signs workload SVIDs only (path length 0).
pub fn issuer_params(
    td: &TrustDomain,
    serial: SerialNumber,
    validity: Validity,
) -> Result<CertificateParams, ProfileError> {
    let mut params = signing_params(td, "Warden issuer", 0, serial, validity)?;
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn signing_params(
    td: &TrustDomain,
    common_name: &str,
    path_len: u8,
    serial: SerialNumber,
    validity: Validity,
) -> Result<CertificateParams, ProfileError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, td.as_str());
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(
        td.id_string()
            .try_into()
            .map_err(|_| ProfileError::Unencodable(td.id_string()))?,
    )];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(serial);
    validity.apply(&mut params)?;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn validity_table() {
        let now = at(1_800_000_000);
        // (ttl, issuer notAfter, expected notAfter or error)
        let cases: Vec<(
            Duration,
            Option<SystemTime>,
            Result<SystemTime, ProfileError>,
        )> = vec![
            (24 * HOUR, None, Ok(now + 24 * HOUR)),
            (24 * HOUR, Some(now + 48 * HOUR), Ok(now + 24 * HOUR)),
            (24 * HOUR, Some(now + HOUR), Ok(now + HOUR)), // clamped to the issuer
            (24 * HOUR, Some(now + 24 * HOUR), Ok(now + 24 * HOUR)),
            (MIN_TTL, None, Ok(now + MIN_TTL)),
            (
                Duration::from_millis(500),
                None,
                Err(ProfileError::TtlTooShort(Duration::from_millis(500))),
            ),
            (HOUR, Some(now), Err(ProfileError::IssuerExpired)),
            (HOUR, Some(now - HOUR), Err(ProfileError::IssuerExpired)),
            (
                HOUR,
                Some(now + Duration::from_millis(500)),
                Err(ProfileError::IssuerExpired),
            ),
        ];
        for (ttl, ceiling, want) in cases {
            let got = Validity::issued(now, ttl, ceiling).map(|v| {
                assert_eq!(v.not_before, now - CLOCK_SKEW_ALLOWANCE, "backdated");
                v.not_after
            });
            assert_eq!(got, want, "ttl {ttl:?} ceiling {ceiling:?}");
        }
    }

    #[test]
    fn svid_profile_fields() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap();
        let v = Validity::issued(at(1_800_000_000), HOUR, None).unwrap();
        let p = svid_params(&id, random_serial(), v).unwrap();
        assert!(
            p.distinguished_name.iter().next().is_none(),
            "empty subject"
        );
        assert_eq!(p.subject_alt_names.len(), 1);
        assert!(matches!(&p.subject_alt_names[0], SanType::URI(u) if u.as_str() == id.as_str()));
        assert_eq!(p.is_ca, IsCa::ExplicitNoCa);
        assert_eq!(p.key_usages, vec![KeyUsagePurpose::DigitalSignature]);
        assert_eq!(
            p.extended_key_usages,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth
            ]
        );
        assert_eq!(p.not_before.unix_timestamp(), 1_800_000_000 - 60);
        assert_eq!(p.not_after.unix_timestamp(), 1_800_003_600);
    }

    #[test]
    fn signing_profiles() {
        let td = TrustDomain::parse("example.org").unwrap();
        let v = Validity::issued(at(1_800_000_000), HOUR, None).unwrap();
        let root = root_params(&td, random_serial(), v).unwrap();
        let issuer = issuer_params(&td, random_serial(), v).unwrap();
        assert_eq!(root.is_ca, IsCa::Ca(BasicConstraints::Constrained(1)));
        assert_eq!(issuer.is_ca, IsCa::Ca(BasicConstraints::Constrained(0)));
        for p in [&root, &issuer] {
            assert!(p.key_usages.contains(&KeyUsagePurpose::KeyCertSign));
            assert!(!p.key_usages.contains(&KeyUsagePurpose::DigitalSignature));
            assert!(
                matches!(&p.subject_alt_names[0], SanType::URI(u) if u.as_str() == "spiffe://example.org")
            );
        }
    }

    #[test]
    fn serials_are_random_positive_and_fixed_length() {
        let a = random_serial().to_bytes();
        let b = random_serial().to_bytes();
        assert_ne!(a, b);
        for s in [a, b] {
            assert_eq!(s.len(), 16);
            assert!(s[0] & 0x80 == 0 && s[0] != 0);
        }
    }
}
