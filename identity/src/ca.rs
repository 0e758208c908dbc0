//! Warden's certificate authority: a trust anchor (root) that signs an issuer (intermediate),
//! which signs workload X.509-SVIDs.
//!
//! On disk (`warden ca init`): `root.crt`, `root.key`, `issuer.crt`, `issuer.key` and
//! `bundle.crt` (the trust bundle handed to workloads). Keys are written with mode 0600. The
//! issuing service needs only the issuer's pair and the bundle, so the root key may be moved
//! offline after init.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{Issuer, KeyPair, PublicKeyData};
use rustls_pki_types::CertificateDer;
use warden_core::{SpiffeId, TrustDomain};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::bundle::{self, BundleError, TrustBundle};
use crate::credential::Svid;
use crate::csr::{self, CsrError};
use crate::profile::{self, ProfileError, Validity};

/// File name of the trust anchor certificate.
pub const ROOT_CERT: &str = "root.crt";
/// File name of the trust anchor's private key.
pub const ROOT_KEY: &str = "root.key";
/// File name of the issuer (intermediate) certificate.
pub const ISSUER_CERT: &str = "issuer.crt";
/// File name of the issuer's private key.
pub const ISSUER_KEY: &str = "issuer.key";
/// File name of the trust bundle distributed to workloads.
pub const BUNDLE: &str = "bundle.crt";

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `init` found an existing CA file and `--force` was not given.
    #[error("{0} already exists; refusing to overwrite a CA (pass --force to replace it)")]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error (part of the message, not a separate cause).
        error: std::io::Error,
    },
    /// A certificate or bundle could not be read.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// A private key could not be read.
    #[error("{path}: not a usable private key: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A certificate is unfit for its role in the CA.
    #[error("{path}: {reason}")]
    Cert {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The requested validity cannot be issued.
    #[error(transparent)]
    Profile(#[from] ProfileError),
    /// The CSR was refused.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The identity is not in this CA's trust domain.
    #[error("{id} is not in this CA's trust domain {trust_domain}")]
    WrongTrustDomain {
        /// The identity asked for.
        id: SpiffeId,
        /// The CA's trust domain.
        trust_domain: TrustDomain,
    },
    /// rcgen failed to sign.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Options for creating a new CA.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The trust domain the CA issues for.
    pub trust_domain: TrustDomain,
    /// The trust anchor's lifetime.
    pub root_ttl: Duration,
    /// The issuer's lifetime (clamped to the root's).
    pub issuer_ttl: Duration,
    /// Replace an existing CA in the directory.
    pub force: bool,
}

impl InitOptions {
    /// Defaults: 10-year root, 1-year issuer, no overwrite.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            root_ttl: profile::DEFAULT_ROOT_TTL,
            issuer_ttl: profile::DEFAULT_ISSUER_TTL,
            force: false,
        }
    }
}

/// A certificate signed by the CA, with the chain a peer needs (leaf, then issuer).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The identity in the certificate.
    pub id: SpiffeId,
    /// Leaf first, then the issuer.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's `notAfter`.
    pub not_after: SystemTime,
}

/// A loaded CA able to sign SVIDs.
pub struct CertificateAuthority {
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    issuer_cert: CertificateDer<'static>,
    issuer_not_after: SystemTime,
    bundle: TrustBundle,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the issuer's key.
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("issuer_not_after", &self.issuer_not_after)
            .finish_non_exhaustive()
    }
}

/// A freshly generated root and issuer, in memory. [`GeneratedCa::write`] persists it;
/// [`GeneratedCa::authority`] uses it directly (the demo and tests never touch disk).
pub struct GeneratedCa {
    /// The trust domain it issues for.
    pub trust_domain: TrustDomain,
    /// The trust anchor certificate.
    pub root_cert: rcgen::Certificate,
    /// The trust anchor's key.
    pub root_key: KeyPair,
    /// The issuer certificate, signed by the root.
    pub issuer_cert: rcgen::Certificate,
    /// The issuer's key.
    pub issuer_key: KeyPair,
}

impl std::fmt::Debug for GeneratedCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedCa")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

/// Generates a new root and issuer in memory.
pub fn generate(opts: &InitOptions) -> Result<GeneratedCa, CaError> {
    let now = SystemTime::now();
    let td = &opts.trust_domain;
    let root_key = csr::generate_key()?;
    let root_validity = Validity::issued(now, opts.root_ttl, None)?;
    let root_params = profile::root_params(td, profile::random_serial(), root_validity)?;
    let root_cert = root_params.self_signed(&root_key).map_err(sign_err)?;

    let issuer_key = csr::generate_key()?;
    let issuer_validity = Validity::issued(now, opts.issuer_ttl, Some(root_validity.not_after))?;
    let issuer_params = profile::issuer_params(td, profile::random_serial(), issuer_validity)?;
    let root = Issuer::from_params(&root_params, &root_key);
    let issuer_cert = issuer_params
        .signed_by(&issuer_key, &root)
        .map_err(sign_err)?;
    Ok(GeneratedCa {
        trust_domain: td.clone(),
        root_cert,
        root_key,
        issuer_cert,
        issuer_key,
    })
}

impl GeneratedCa {
    /// Writes the CA's five files into `dir` (keys with mode 0600). Refuses to overwrite any
    /// existing CA file unless `force`.
    pub fn write(&self, dir: &Path, force: bool) -> Result<(), CaError> {
        let files = [ROOT_CERT, ROOT_KEY, ISSUER_CERT, ISSUER_KEY, BUNDLE].map(|f| dir.join(f));
        if !force {
            if let Some(existing) = files.iter().find(|p| p.exists()) {
                return Err(CaError::Exists(existing.clone()));
            }
        }
        std::fs::create_dir_all(dir).map_err(|error| CaError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        write_file(
            &dir.join(ROOT_KEY),
            self.root_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(
            &dir.join(ISSUER_KEY),
            self.issuer_key.serialize_pem().as_bytes(),
            0o600,
        )?;
        write_file(&dir.join(ROOT_CERT), self.root_cert.pem().as_bytes(), 0o644)?;
        write_file(
            &dir.join(ISSUER_CERT),
            self.issuer_cert.pem().as_bytes(),
            0o644,
        )?;
        write_file(&dir.join(BUNDLE), self.root_cert.pem().as_bytes(), 0o644)
    }

    /// A CA signing with this issuer, trusting this root.
    pub fn authority(&self) -> Result<CertificateAuthority, CaError> {
        CertificateAuthority::from_pem(
            &self.issuer_cert.pem(),
            Path::new(ISSUER_CERT),
            &self.issuer_key.serialize_pem(),
            Path::new(ISSUER_KEY),
            &self.root_cert.pem(),
            Path::new(BUNDLE),
            Some(&self.trust_domain),
        )
    }
}

/// Creates a new root and issuer in `dir` (see [`GeneratedCa::write`]) and returns the CA.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<CertificateAuthority, CaError> {
    let generated = generate(opts)?;
    generated.write(dir, opts.force)?;
    CertificateAuthority::load(dir, Some(&opts.trust_domain))
}

/// Signs a new issuer with the root of `dir` (`root.crt`, `root.key`: the root kept offline)
/// and replaces `issuer.crt` and `issuer.key` with it; the bundle is unchanged. SVIDs of the
/// old issuer stay valid (they chain to the same root) until they expire, so workloads renew
/// onto the new issuer without a gap. The new pair is checked as a CA (signed by a root of
/// `bundle.crt`) before anything is written.
pub fn rotate_issuer(dir: &Path, issuer_ttl: Duration) -> Result<CertificateAuthority, CaError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|error| CaError::Io { path, error })
    };
    let root_path = dir.join(ROOT_CERT);
    let key_path = dir.join(ROOT_KEY);
    let root_pem = read(ROOT_CERT)?;
    let root_key_pem = read(ROOT_KEY).map_err(|e| match e {
        CaError::Io { path, error } if error.kind() == std::io::ErrorKind::NotFound => {
            CaError::Key {
                path,
                reason: "not found: a new issuer is signed with the root key (bring it back from where it is kept offline)".into(),
            }
        }
        other => other,
    })?;
    let root_der = bundle::certs_from_pem(root_pem.as_bytes(), &root_path.display().to_string())?
        .swap_remove(0);
    let root_key = KeyPair::from_pem(&root_key_pem).map_err(|e| CaError::Key {
        path: key_path.clone(),
        reason: e.to_string(),
    })?;
    let (_, x509) = X509Certificate::from_der(&root_der).map_err(|e| CaError::Cert {
        path: root_path.clone(),
        reason: format!("not a valid certificate: {e}"),
    })?;
    if x509.public_key().subject_public_key.data.as_ref() != root_key.der_bytes() {
        return Err(CaError::Key {
            path: key_path,
            reason: format!("does not match the public key of {}", root_path.display()),
        });
    }
    let td = spiffe_trust_domain(&x509).ok_or_else(|| CaError::Cert {
        path: root_path.clone(),
        reason: "has no spiffe://<trust-domain> URI SAN".into(),
    })?;
    let root_not_after = to_system_time(x509.validity().not_after.timestamp());
    let root = Issuer::from_ca_cert_der(&root_der, root_key).map_err(|e| CaError::Cert {
        path: root_path.clone(),
        reason: format!("cannot be used to sign: {e}"),
    })?;
    let validity = Validity::issued(SystemTime::now(), issuer_ttl, Some(root_not_after))?;
    let issuer_key = csr::generate_key()?;
    let issuer_cert = profile::issuer_params(&td, profile::random_serial(), validity)?
        .signed_by(&issuer_key, &root)
        .map_err(sign_err)?;
    let (cert_pem, key_pem) = (issuer_cert.pem(), issuer_key.serialize_pem());
    // What the identity service will load: refuse now what it would refuse then.
    CertificateAuthority::from_pem(
        &cert_pem,
        &dir.join(ISSUER_CERT),
        &key_pem,
        &dir.join(ISSUER_KEY),
        &read(BUNDLE)?,
        &dir.join(BUNDLE),
        Some(&td),
    )?;
    // The key first: a service reloading in between sees a mismatched pair, refuses it and
    // keeps the old issuer until the certificate follows.
    write_file(&dir.join(ISSUER_KEY), key_pem.as_bytes(), 0o600)?;
    write_file(&dir.join(ISSUER_CERT), cert_pem.as_bytes(), 0o644)?;
    CertificateAuthority::load(dir, Some(&td))
}

/// Writes a file atomically and durably (temp file synced, renamed, directory synced) with the
/// given mode from the start, so a key is never readable by others even for a moment.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |error| CaError::Io {
        path: path.to_path_buf(),
        error,
    };
    // `<name>.tmp` next to `<name>`: two files of one directory never share a temporary name.
    let mut tmp = path.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(contents).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    // Make the rename itself durable: a crash right after must not bring the old file back.
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io)
}

fn sign_err(e: rcgen::Error) -> CaError {
    CaError::Sign(e.to_string())
}

impl CertificateAuthority {
    /// Loads the issuer pair and trust bundle from `dir`. The trust domain comes from the
    /// issuer's `spiffe://<td>` URI SAN, or from `trust_domain` for an issuer without one.
    pub fn load(dir: &Path, trust_domain: Option<&TrustDomain>) -> Result<Self, CaError> {
        let cert_path = dir.join(ISSUER_CERT);
        let key_path = dir.join(ISSUER_KEY);
        let bundle_path = dir.join(BUNDLE);
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|error| CaError::Io {
                path: path.to_path_buf(),
                error,
            })
        };
        Self::from_pem(
            &read(&cert_path)?,
            &cert_path,
            &read(&key_path)?,
            &key_path,
            &read(&bundle_path)?,
            &bundle_path,
            trust_domain,
        )
    }

    /// Builds a CA from PEM texts; the paths only name the inputs in errors.
    pub fn from_pem(
        issuer_pem: &str,
        issuer_path: &Path,
        key_pem: &str,
        key_path: &Path,
        bundle_pem: &str,
        bundle_path: &Path,
        trust_domain: Option<&TrustDomain>,
    ) -> Result<Self, CaError> {
        let cert_err = |reason: String| CaError::Cert {
            path: issuer_path.to_path_buf(),
            reason,
        };
        let issuer_cert =
            bundle::certs_from_pem(issuer_pem.as_bytes(), &issuer_path.display().to_string())?
                .swap_remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Key {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let (_, x509) = X509Certificate::from_der(&issuer_cert)
            .map_err(|e| cert_err(format!("not a valid certificate: {e}")))?;
        if !x509.is_ca() {
            return Err(cert_err(
                "is not a CA certificate (basic constraints cA=false)".into(),
            ));
        }
        match x509.key_usage() {
            Ok(Some(ku)) if ku.value.key_cert_sign() => {}
            _ => return Err(cert_err("lacks the keyCertSign key usage".into())),
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.der_bytes() {
            return Err(CaError::Key {
                path: key_path.to_path_buf(),
                reason: format!("does not match the public key of {}", issuer_path.display()),
            });
        }
        let td = match (spiffe_trust_domain(&x509), trust_domain) {
            (Some(found), Some(want)) if &found != want => {
                return Err(cert_err(format!(
                    "is for trust domain {found}, not the configured {want}"
                )))
            }
            (Some(found), _) => found,
            (None, Some(want)) => want.clone(),
            (None, None) => {
                return Err(cert_err(
                    "has no spiffe://<trust-domain> URI SAN; configure the trust domain".into(),
                ))
            }
        };
        let bundle = TrustBundle::from_pem(
            td.clone(),
            bundle_pem.as_bytes(),
            &bundle_path.display().to_string(),
        )?;
        let signed_by_bundle = bundle.roots().iter().any(|root| {
            X509Certificate::from_der(root)
                .map(|(_, r)| x509.verify_signature(Some(r.public_key())).is_ok())
                .unwrap_or(false)
        });
        if !signed_by_bundle {
            return Err(cert_err(format!(
                "is not signed by any root in {}",
                bundle_path.display()
            )));
        }
        let issuer_not_after = to_system_time(x509.validity().not_after.timestamp());
        let issuer = Issuer::from_ca_cert_der(&issuer_cert, key)
            .map_err(|e| cert_err(format!("cannot be used to sign: {e}")))?;
        Ok(Self {
            trust_domain: td,
            issuer,
            issuer_cert,
            issuer_not_after,
            bundle,
        })
    }

    /// The trust domain this CA issues for.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The trust bundle workloads need to verify what this CA issues.
    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// The issuer certificate (the second element of every issued chain).
    pub fn issuer_cert(&self) -> &CertificateDer<'static> {
        &self.issuer_cert
    }

    /// When the issuer expires; no SVID outlives it.
    pub fn issuer_not_after(&self) -> SystemTime {
        self.issuer_not_after
    }

    /// Signs a PEM CSR for `id`, the identity the caller was authenticated as. Only the CSR's
    /// public key is used: its names, CA flag, key usages and validity are all ignored.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        self.sign_csr_with_dns(csr_pem, id, &[], ttl)
    }

    /// Like [`sign_csr`](Self::sign_csr), adding DNS SANs the caller was checked to be
    /// allowed (the injector's webhook name).
    pub fn sign_csr_with_dns(
        &self,
        csr_pem: &str,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<IssuedCert, CaError> {
        let key = csr::public_key_from_pem(csr_pem)?;
        self.sign(key.spki(), id, dns_names, ttl, SystemTime::now())
    }

    /// Issues a new key and SVID for `id`; the key stays in memory (used by `warden ca issue`,
    /// the demo and tests).
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, CaError> {
        self.issue_with_dns(id, &[], ttl)
    }

    /// Like [`issue`](Self::issue), adding DNS SANs (for the identity service's own
    /// serving certificate).
    pub fn issue_with_dns(
        &self,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
    ) -> Result<Svid, CaError> {
        let key = csr::generate_key()?;
        let issued = self.sign(&key, id, dns_names, ttl, SystemTime::now())?;
        let key_der = csr::private_key_der(&key);
        Ok(Svid::new(
            issued.id,
            issued.chain,
            key_der,
            issued.not_after,
        ))
    }

    /// Builds an SVID with the X.509-SVID profile around `public_key`.
    pub fn sign_public_key(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        self.sign(public_key, id, &[], ttl, now)
    }

    fn sign(
        &self,
        public_key: &impl PublicKeyData,
        id: &SpiffeId,
        dns_names: &[String],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<IssuedCert, CaError> {
        if id.trust_domain_name() != self.trust_domain.as_str() {
            return Err(CaError::WrongTrustDomain {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let validity = Validity::issued(now, ttl, Some(self.issuer_not_after))?;
        let params =
            profile::server_svid_params(id, dns_names, profile::random_serial(), validity)?;
        let cert = params
            .signed_by(public_key, &self.issuer)
            .map_err(sign_err)?;
        Ok(IssuedCert {
            id: id.clone(),
            chain: vec![cert.der().clone(), self.issuer_cert.clone()],
            not_after: to_system_time(params.not_after.unix_timestamp()),
        })
    }
}

/// A CA that can be swapped while in use (the identity service reloads its files when they
/// change; requests in flight keep the one they started with).
#[derive(Debug)]
pub struct SharedCa(std::sync::RwLock<std::sync::Arc<CertificateAuthority>>);

impl SharedCa {
    /// Wraps a loaded CA.
    pub fn new(ca: CertificateAuthority) -> Self {
        Self(std::sync::RwLock::new(std::sync::Arc::new(ca)))
    }

    /// The current CA.
    pub fn get(&self) -> std::sync::Arc<CertificateAuthority> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the CA for all later requests.
    pub fn replace(&self, ca: CertificateAuthority) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(ca);
    }
}

/// The trust domain named by a signing certificate's `spiffe://<td>` URI SAN, if any.
fn spiffe_trust_domain(cert: &X509Certificate<'_>) -> Option<TrustDomain> {
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with(warden_core::spiffe::SCHEME_PREFIX) => {
            TrustDomain::parse(uri).ok()
        }
        _ => None,
    })
}

pub(crate) fn to_system_time(unix: i64) -> SystemTime {
    if unix >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(unix as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(unix.unsigned_abs())
    }
}
