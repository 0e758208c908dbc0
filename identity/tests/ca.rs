//! The CA on disk and the certificates it issues, checked field by field with x509-parser and
//! by OpenSSL.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose, SanType};
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::ca::{self, CaError, InitOptions};
use warden_identity::{bundle, csr, CertificateAuthority};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

fn td() -> TrustDomain {
    TrustDomain::parse("cluster.local").unwrap()
}

fn frontend() -> SpiffeId {
    SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend").unwrap()
}

#[test]
fn init_writes_the_ca_with_private_keys_0600_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca::init(dir.path(), &InitOptions::new(td())).unwrap();
    assert_eq!(ca.trust_domain(), &td());
    for (file, mode) in [
        (ca::ROOT_KEY, 0o600),
        (ca::ISSUER_KEY, 0o600),
        (ca::ROOT_CERT, 0o644),
        (ca::ISSUER_CERT, 0o644),
        (ca::BUNDLE, 0o644),
    ] {
        let meta = std::fs::metadata(dir.path().join(file)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{file}");
    }
    let before = std::fs::read(dir.path().join(ca::ROOT_KEY)).unwrap();

    let err = ca::init(dir.path(), &InitOptions::new(td())).unwrap_err();
    assert!(matches!(err, CaError::Exists(_)), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join(ca::ROOT_KEY)).unwrap(),
        before,
        "untouched"
    );

    let mut force = InitOptions::new(td());
    force.force = true;
    ca::init(dir.path(), &force).unwrap();
    assert_ne!(
        std::fs::read(dir.path().join(ca::ROOT_KEY)).unwrap(),
        before,
        "replaced"
    );
    // No temp files left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
}

#[test]
fn rotate_issuer_signs_a_new_issuer_with_the_root_and_old_svids_stay_valid() {
    let dir = tempfile::tempdir().unwrap();
    let old = ca::init(dir.path(), &InitOptions::new(td())).unwrap();
    let old_svid = old.issue(&frontend(), Duration::from_secs(3600)).unwrap();
    let bundle_before = std::fs::read(dir.path().join(ca::BUNDLE)).unwrap();

    let new = ca::rotate_issuer(dir.path(), Duration::from_secs(30 * 24 * 3600)).unwrap();
    assert_ne!(new.issuer_cert(), old.issuer_cert());
    assert_eq!(
        std::fs::read(dir.path().join(ca::BUNDLE)).unwrap(),
        bundle_before,
        "the bundle is unchanged"
    );
    let mode = std::fs::metadata(dir.path().join(ca::ISSUER_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let left = new
        .issuer_not_after()
        .duration_since(SystemTime::now())
        .unwrap();
    assert!(
        left > Duration::from_secs(29 * 24 * 3600) && left <= Duration::from_secs(30 * 24 * 3600),
        "{left:?}"
    );
    // Both issuers' SVIDs verify under the one root: the overlap needs nothing else.
    let new_svid = new.issue(&frontend(), Duration::from_secs(3600)).unwrap();
    let root = std::fs::read_to_string(dir.path().join(ca::ROOT_CERT)).unwrap();
    for svid in [&old_svid, &new_svid] {
        let chain = svid.chain();
        let (_, issuer) = X509Certificate::from_der(&chain[1]).unwrap();
        let root_der = bundle::certs_from_pem(root.as_bytes(), "root")
            .unwrap()
            .remove(0);
        let (_, root) = X509Certificate::from_der(&root_der).unwrap();
        issuer.verify_signature(Some(root.public_key())).unwrap();
    }
    // The reloaded files are the new issuer.
    let loaded = CertificateAuthority::load(dir.path(), None).unwrap();
    assert_eq!(loaded.issuer_cert(), new.issuer_cert());

    // Without the root key (kept offline), nothing is written and the error says why.
    let offline = dir.path().join("offline.key");
    std::fs::rename(dir.path().join(ca::ROOT_KEY), &offline).unwrap();
    let before = std::fs::read(dir.path().join(ca::ISSUER_CERT)).unwrap();
    let err = ca::rotate_issuer(dir.path(), Duration::from_secs(3600))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("root.key: not a usable private key: not found: a new issuer is signed with the root key"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(ca::ISSUER_CERT)).unwrap(),
        before
    );

    // A root key that is not the root's: refused, nothing written.
    let other = tempfile::tempdir().unwrap();
    ca::init(other.path(), &InitOptions::new(td())).unwrap();
    std::fs::copy(
        other.path().join(ca::ROOT_KEY),
        dir.path().join(ca::ROOT_KEY),
    )
    .unwrap();
    let err = ca::rotate_issuer(dir.path(), Duration::from_secs(3600))
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match the public key of"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join(ca::ISSUER_CERT)).unwrap(),
        before
    );

    // A bundle that no longer holds the root: the new issuer would not be trusted.
    std::fs::rename(&offline, dir.path().join(ca::ROOT_KEY)).unwrap();
    std::fs::copy(other.path().join(ca::BUNDLE), dir.path().join(ca::BUNDLE)).unwrap();
    let err = ca::rotate_issuer(dir.path(), Duration::from_secs(3600))
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not signed by any root in"), "{err}");
    assert_eq!(
        std::fs::read(dir.path().join(ca::ISSUER_CERT)).unwrap(),
        before
    );
}

#[test]
fn load_derives_the_trust_domain_and_checks_the_files_agree() {
    let dir = tempfile::tempdir().unwrap();
    ca::init(
        dir.path(),
        &InitOptions::new(TrustDomain::parse("example.org").unwrap()),
    )
    .unwrap();
    let ca = CertificateAuthority::load(dir.path(), None).unwrap();
    assert_eq!(ca.trust_domain().as_str(), "example.org");

    // A configured trust domain that disagrees with the issuer is an error.
    let err = CertificateAuthority::load(dir.path(), Some(&td())).unwrap_err();
    assert!(err.to_string().contains("example.org"), "{err}");

    // A key from another CA does not match the issuer certificate.
    let other = tempfile::tempdir().unwrap();
    ca::init(other.path(), &InitOptions::new(td())).unwrap();
    std::fs::copy(
        other.path().join(ca::ISSUER_KEY),
        dir.path().join(ca::ISSUER_KEY),
    )
    .unwrap();
    let err = CertificateAuthority::load(dir.path(), None).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");

    // An issuer not signed by the bundle's root is refused.
    let third = tempfile::tempdir().unwrap();
    ca::init(third.path(), &InitOptions::new(td())).unwrap();
    std::fs::copy(third.path().join(ca::BUNDLE), other.path().join(ca::BUNDLE)).unwrap();
    let err = CertificateAuthority::load(other.path(), None).unwrap_err();
    assert!(err.to_string().contains("not signed by any root"), "{err}");

    // A missing file is named.
    std::fs::remove_file(third.path().join(ca::ISSUER_KEY)).unwrap();
    let err = CertificateAuthority::load(third.path(), None).unwrap_err();
    assert!(err.to_string().contains("issuer.key"), "{err}");
}

/// Every field of the X.509-SVID profile of DESIGN.md section 2, read back from the DER.
fn assert_svid_profile(der: &[u8], id: &SpiffeId, issuer_not_after: SystemTime, ttl: Duration) {
    let (rest, cert) = X509Certificate::from_der(der).unwrap();
    assert!(rest.is_empty());
    assert!(cert.subject().iter().next().is_none(), "empty subject");

    let san = cert
        .subject_alternative_name()
        .unwrap()
        .expect("SAN present");
    assert!(san.critical, "SAN critical with an empty subject");
    assert_eq!(san.value.general_names.len(), 1, "exactly one SAN");
    assert!(matches!(san.value.general_names[0], GeneralName::URI(u) if u == id.as_str()));

    let bc = cert
        .basic_constraints()
        .unwrap()
        .expect("basic constraints present");
    assert!(!bc.value.ca, "cA=false");
    let ku = cert.key_usage().unwrap().expect("key usage present");
    assert!(ku.critical, "key usage critical");
    assert!(ku.value.digital_signature());
    assert_eq!(ku.value.flags, 1, "digitalSignature and nothing else");
    let eku = cert
        .extended_key_usage()
        .unwrap()
        .expect("EKU present")
        .value;
    assert!(eku.server_auth && eku.client_auth && !eku.any && !eku.code_signing);

    let serial = cert.raw_serial();
    assert!(serial.len() >= 8, "random serial of {} bytes", serial.len());

    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!(
        (now - 70..=now - 50).contains(&nb),
        "backdated ~60s: {}",
        now - nb
    );
    let cap = issuer_not_after
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let want = (now + ttl.as_secs() as i64).min(cap);
    assert!(
        (want - 5..=want + 5).contains(&na),
        "notAfter {na} vs {want}"
    );
}

#[test]
fn signs_csrs_with_the_svid_profile_and_ignores_what_the_csr_asks_for() {
    let generated = ca::generate(&InitOptions::new(td())).unwrap();
    let ca = generated.authority().unwrap();

    // A CSR asking for: another identity, extra DNS/URI SANs, a subject, CA powers,
    // certificate-signing key usage and a validity of its own.
    let key = csr::generate_key().unwrap();
    let mut greedy = CertificateParams::default();
    greedy.distinguished_name.push(DnType::CommonName, "admin");
    greedy.subject_alt_names = vec![
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
        SanType::URI("spiffe://evil.org/root".try_into().unwrap()),
        SanType::DnsName("kubernetes.default.svc".try_into().unwrap()),
    ];
    greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    greedy.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    greedy.not_before = rcgen::date_time_ymd(2000, 1, 1);
    greedy.not_after = rcgen::date_time_ymd(2999, 1, 1);
    let csr_pem = greedy.serialize_request(&key).unwrap().pem().unwrap();

    let ttl = Duration::from_secs(3600);
    let issued = ca.sign_csr(&csr_pem, &frontend(), ttl).unwrap();
    assert_eq!(issued.chain.len(), 2, "leaf + issuer");
    assert_eq!(&issued.chain[1], ca.issuer_cert());
    assert_svid_profile(&issued.chain[0], &frontend(), ca.issuer_not_after(), ttl);

    // The certificate carries the CSR's public key, nothing else from it.
    let (_, cert) = X509Certificate::from_der(&issued.chain[0]).unwrap();
    use rcgen::PublicKeyData;
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.der_bytes()
    );

    // A TTL past the issuer's own expiry is clamped to it.
    let long = Duration::from_secs(100 * 365 * 24 * 3600);
    let issued = ca.sign_csr(&csr_pem, &frontend(), long).unwrap();
    assert_svid_profile(&issued.chain[0], &frontend(), ca.issuer_not_after(), long);
}

#[test]
fn refuses_identities_of_other_trust_domains_and_bad_csrs() {
    let ca = ca::generate(&InitOptions::new(td()))
        .unwrap()
        .authority()
        .unwrap();
    let key = csr::generate_key().unwrap();
    let other = SpiffeId::parse("spiffe://other.org/ns/a/sa/b").unwrap();
    let pem = csr::build_csr(&key, Some(&frontend())).unwrap();
    let err = ca
        .sign_csr(&pem, &other, Duration::from_secs(3600))
        .unwrap_err();
    assert!(matches!(err, CaError::WrongTrustDomain { .. }), "{err}");

    let err = ca
        .sign_csr("not a csr", &frontend(), Duration::from_secs(3600))
        .unwrap_err();
    assert!(matches!(err, CaError::Csr(_)), "{err}");
}

/// Fails under CI=true when the tool is missing; elsewhere says so and skips.
fn require_tool(tool: &str, package: &str) -> bool {
    if Command::new(tool).arg("version").output().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "{tool} is required under CI=true: apt-get install -y {package} (scripts/test.sh does)"
        );
    }
    eprintln!("SKIPPED: {tool} not installed (apt-get install -y {package})");
    false
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap();
}

#[test]
fn openssl_verifies_issued_svids_against_the_root() {
    if !require_tool("openssl", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = ca::init(dir.path(), &InitOptions::new(td())).unwrap();
    let svid = ca.issue(&frontend(), Duration::from_secs(3600)).unwrap();
    let leaf = dir.path().join("leaf.crt");
    write(&leaf, &bundle::certs_to_pem(&svid.chain()[..1]));

    let verify = |purpose: &str| {
        Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
            .arg(dir.path().join(ca::ROOT_CERT))
            .arg("-untrusted")
            .arg(dir.path().join(ca::ISSUER_CERT))
            .arg(&leaf)
            .output()
            .unwrap()
    };
    for purpose in ["sslserver", "sslclient"] {
        let out = verify(purpose);
        assert!(
            out.status.success(),
            "openssl verify ({purpose}) failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": OK"));
    }

    // And the negative control: a leaf from an unrelated CA does not verify.
    let other = ca::generate(&InitOptions::new(td()))
        .unwrap()
        .authority()
        .unwrap();
    let stranger = other.issue(&frontend(), Duration::from_secs(3600)).unwrap();
    write(&leaf, &bundle::certs_to_pem(&stranger.chain()[..1]));
    assert!(!verify("sslclient").status.success());
}
