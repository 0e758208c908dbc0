//! SVID verification with real certificates: every malformed SVID is rejected by the checker
//! (naming the broken rule) and by a real rustls mutual-TLS handshake over 127.0.0.1, in both
//! directions; a good pair completes a TLS 1.3 handshake and each side sees the other's ID.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::HandshakeKind;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_core::contract::ALPN_TCP;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::ca::{self, GeneratedCa, InitOptions};
use warden_identity::profile::{self, Validity};
use warden_identity::svid::SvidError;
use warden_identity::verify::{verify_svid, ExpectedPeer, PeerRole, VerifyError};
use warden_identity::{csr, tls, Svid, TrustBundle, TrustStore};

const HOUR: Duration = Duration::from_secs(3600);

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A test PKI: a real Warden CA plus its keys, so tests can also sign what the CA never would.
struct Pki {
    generated: GeneratedCa,
    authority: warden_identity::CertificateAuthority,
}

impl Pki {
    fn new(td: &str) -> Self {
        let generated = ca::generate(&InitOptions::new(TrustDomain::parse(td).unwrap())).unwrap();
        let authority = generated.authority().unwrap();
        Self {
            generated,
            authority,
        }
    }

    fn store(&self) -> Arc<TrustStore> {
        Arc::new(TrustStore::single(self.authority.bundle().clone()))
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_ca_cert_der(self.generated.issuer_cert.der(), &self.generated.issuer_key)
            .unwrap()
    }

    fn root(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_ca_cert_der(self.generated.root_cert.der(), &self.generated.root_key).unwrap()
    }

    /// Signs `params` with the real issuer; the chain is leaf + issuer.
    fn leaf(&self, params: CertificateParams) -> Svid {
        let key = csr::generate_key().unwrap();
        let cert = params.signed_by(&key, &self.issuer()).unwrap();
        svid(
            cert.der().clone(),
            vec![self.generated.issuer_cert.der().clone()],
            &key,
        )
    }
}

fn svid(leaf: CertificateDer<'static>, rest: Vec<CertificateDer<'static>>, key: &KeyPair) -> Svid {
    let id = warden_identity::svid::identity_of(&leaf)
        .unwrap_or_else(|_| SpiffeId::parse("spiffe://unknown/x").unwrap());
    let mut chain = vec![leaf];
    chain.extend(rest);
    Svid::new(
        id,
        chain,
        csr::private_key_der(key),
        SystemTime::now() + HOUR,
    )
}

/// The correct SVID profile for `spiffe_id`, valid for an hour; cases mutate it.
fn good(spiffe_id: &str) -> CertificateParams {
    let v = Validity::issued(SystemTime::now(), HOUR, None).unwrap();
    profile::svid_params(&id(spiffe_id), profile::random_serial(), v).unwrap()
}

fn ts(t: SystemTime) -> time::OffsetDateTime {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap()
}

const FRONTEND: &str = "spiffe://cluster.local/ns/shop/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/shop/sa/backend";

/// Each malformed SVID and the error the checker must give.
fn bad_svids(pki: &Pki, stranger: &Pki) -> Vec<(&'static str, Svid, VerifyError)> {
    let now = SystemTime::now();
    let mut cases = Vec::new();

    let mut p = good(FRONTEND);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    cases.push(("leaf with cA=true", pki.leaf(p), SvidError::LeafIsCa.into()));

    let mut p = good(FRONTEND);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
    ];
    cases.push((
        "leaf with keyCertSign",
        pki.leaf(p),
        SvidError::LeafCanSign.into(),
    ));

    let mut p = good(FRONTEND);
    p.key_usages = vec![KeyUsagePurpose::KeyAgreement];
    cases.push((
        "leaf without digitalSignature",
        pki.leaf(p),
        SvidError::NoDigitalSignature.into(),
    ));

    let mut p = good(FRONTEND);
    p.key_usages = vec![];
    cases.push((
        "leaf without key usage",
        pki.leaf(p),
        SvidError::NoKeyUsage.into(),
    ));

    let mut p = good(FRONTEND);
    p.subject_alt_names = vec![];
    p.distinguished_name.push(DnType::CommonName, "frontend");
    cases.push(("no URI SAN", pki.leaf(p), SvidError::NoUriSan.into()));

    let mut p = good(FRONTEND);
    p.subject_alt_names
        .push(SanType::URI(BACKEND.try_into().unwrap()));
    cases.push((
        "two URI SANs",
        pki.leaf(p),
        SvidError::MultipleUriSans(2).into(),
    ));

    let mut p = good(FRONTEND);
    p.subject_alt_names = vec![SanType::DnsName("frontend.shop.svc".try_into().unwrap())];
    cases.push(("DNS SAN only", pki.leaf(p), SvidError::NoUriSan.into()));

    let mut p = good(FRONTEND);
    p.subject_alt_names = vec![SanType::URI("https://frontend.shop/".try_into().unwrap())];
    cases.push((
        "a non-spiffe URI",
        pki.leaf(p),
        SvidError::NotSpiffe("https://frontend.shop/".into()).into(),
    ));

    cases.push((
        "other trust domain",
        pki.leaf(good("spiffe://other.org/ns/shop/sa/frontend")),
        VerifyError::UntrustedTrustDomain("other.org".into()),
    ));

    let mut p = good(FRONTEND);
    p.not_before = ts(now - 2 * HOUR);
    p.not_after = ts(now - HOUR);
    cases.push(("expired", pki.leaf(p), VerifyError::Expired(3600)));

    let mut p = good(FRONTEND);
    p.not_before = ts(now + HOUR);
    p.not_after = ts(now + 2 * HOUR);
    cases.push(("not yet valid", pki.leaf(p), VerifyError::NotYetValid(3600)));

    cases.push((
        "signed by an unrelated CA",
        stranger.authority.issue(&id(FRONTEND), HOUR).unwrap(),
        VerifyError::UnknownIssuer("cluster.local".into()),
    ));

    // An intermediate that is not a CA (but claims keyCertSign), signed by the real root.
    let fake_key = csr::generate_key().unwrap();
    let mut fake = CertificateParams::default();
    fake.distinguished_name.push(DnType::CommonName, "not a CA");
    fake.is_ca = IsCa::ExplicitNoCa;
    fake.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let fake_cert = fake.signed_by(&fake_key, &pki.root()).unwrap();
    let fake_issuer = Issuer::from_ca_cert_der(fake_cert.der(), &fake_key).unwrap();
    let leaf_key = csr::generate_key().unwrap();
    let leaf = good(FRONTEND).signed_by(&leaf_key, &fake_issuer).unwrap();
    cases.push((
        "chain through an intermediate that is not a CA",
        svid(leaf.der().clone(), vec![fake_cert.der().clone()], &leaf_key),
        SvidError::SigningCertNotCa(1).into(),
    ));

    // A self-signed leaf presented alone, with a perfectly good SVID profile.
    let self_key = csr::generate_key().unwrap();
    let self_signed = good(FRONTEND).self_signed(&self_key).unwrap();
    cases.push((
        "self-signed leaf presented alone",
        svid(self_signed.der().clone(), vec![], &self_key),
        VerifyError::UnknownIssuer("cluster.local".into()),
    ));
    cases
}

fn check(store: &TrustStore, svid: &Svid, role: PeerRole) -> Result<SpiffeId, VerifyError> {
    let algs = tls::crypto_provider().signature_verification_algorithms;
    verify_svid(
        store,
        &svid.chain()[0],
        &svid.chain()[1..],
        UnixTime::now(),
        role,
        &algs,
    )
}

#[test]
fn the_checker_rejects_each_malformed_svid_naming_the_rule() {
    let pki = Pki::new("cluster.local");
    let stranger = Pki::new("cluster.local");
    let cases = bad_svids(&pki, &stranger);
    assert!(cases.len() >= 13);
    for (name, svid, want) in &cases {
        for role in [PeerRole::Client, PeerRole::Server] {
            match check(&pki.store(), svid, role) {
                Err(VerifyError::Expired(s)) if matches!(want, VerifyError::Expired(_)) => {
                    assert!((3590..3700).contains(&s), "{name}: {s}")
                }
                Err(VerifyError::NotYetValid(s)) if matches!(want, VerifyError::NotYetValid(_)) => {
                    assert!((3500..3610).contains(&s), "{name}: {s}")
                }
                Err(got) => assert_eq!(&got, want, "{name}"),
                Ok(id) => panic!("{name}: accepted as {id}"),
            }
        }
    }
    // The control: a proper SVID passes in both roles.
    let ok = pki.authority.issue(&id(FRONTEND), HOUR).unwrap();
    assert_eq!(
        check(&pki.store(), &ok, PeerRole::Client).unwrap(),
        id(FRONTEND)
    );
    assert_eq!(
        check(&pki.store(), &ok, PeerRole::Server).unwrap(),
        id(FRONTEND)
    );
}

/// What each side of a handshake saw: the peer's identity, or the error.
struct Outcome {
    server: Result<SpiffeId, String>,
    client: Result<(SpiffeId, String, String), String>,
}

/// Runs one mutual-TLS exchange over 127.0.0.1: the client sends "ping", the server answers
/// "pong" only after a successful handshake.
async fn handshake(
    server: &Svid,
    client: &Svid,
    store: Arc<TrustStore>,
    expected: ExpectedPeer,
) -> Outcome {
    let server_cfg = tls::server_config(
        server,
        store.clone(),
        &[ALPN_TCP],
        tls::ClientAuth::Required,
    )
    .unwrap();
    let client_cfg = tls::client_config(client, store, expected, &[ALPN_TCP]).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let peer = tls::peer_identity(tls.get_ref().1).map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.shutdown().await.ok();
        Ok::<_, String>(peer)
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let client = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = connector
            .connect(tls::mesh_server_name(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"pong");
        let conn = tls.get_ref().1;
        let peer = tls::peer_identity(conn).map_err(|e| e.to_string())?;
        let version = format!("{:?}", conn.protocol_version().unwrap());
        Ok::<_, String>((peer, version, tls::key_exchange_name(conn)))
    }
    .await;
    let server = tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .expect("server side finished")
        .unwrap();
    Outcome { server, client }
}

#[tokio::test]
async fn a_good_pair_completes_tls13_mutual_auth_and_sees_each_other() {
    let pki = Pki::new("cluster.local");
    let frontend = pki.authority.issue(&id(FRONTEND), HOUR).unwrap();
    let backend = pki.authority.issue(&id(BACKEND), HOUR).unwrap();

    let out = handshake(
        &backend,
        &frontend,
        pki.store(),
        ExpectedPeer::Exact(id(BACKEND)),
    )
    .await;
    assert_eq!(
        out.server.unwrap(),
        id(FRONTEND),
        "server sees the client's ID"
    );
    let (peer, version, group) = out.client.unwrap();
    assert_eq!(peer, id(BACKEND), "client sees the server's ID");
    assert_eq!(version, "TLSv1_3");
    assert_eq!(group, "X25519MLKEM768", "post-quantum hybrid preferred");

    // Any identity of the trust domain, when no exact one is expected.
    let out = handshake(&backend, &frontend, pki.store(), ExpectedPeer::AnyTrusted).await;
    assert_eq!(out.client.unwrap().0, id(BACKEND));

    // A valid SVID, but not the one the route expects: the client refuses.
    let out = handshake(
        &backend,
        &frontend,
        pki.store(),
        ExpectedPeer::Exact(id(FRONTEND)),
    )
    .await;
    let err = out.client.unwrap_err();
    assert!(err.contains("expected"), "{err}");
}

#[tokio::test]
async fn each_malformed_svid_fails_a_real_handshake_in_both_directions() {
    let pki = Pki::new("cluster.local");
    let stranger = Pki::new("cluster.local");
    let good_svid = pki.authority.issue(&id(BACKEND), HOUR).unwrap();
    for (name, bad, _) in bad_svids(&pki, &stranger) {
        // The bad SVID as the client's: the server refuses it and the app gets nothing.
        let out = handshake(&good_svid, &bad, pki.store(), ExpectedPeer::AnyTrusted).await;
        assert!(out.server.is_err(), "{name}: server accepted a bad client");
        assert!(out.client.is_err(), "{name}: client got an answer");

        // The bad SVID as the server's: the client refuses it.
        let out = handshake(&bad, &good_svid, pki.store(), ExpectedPeer::AnyTrusted).await;
        assert!(out.client.is_err(), "{name}: client accepted a bad server");
        assert!(out.server.is_err(), "{name}: server completed");
    }
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let pki = Pki::new("cluster.local");
    let server = pki.authority.issue(&id(BACKEND), HOUR).unwrap();
    let server_cfg =
        tls::server_config(&server, pki.store(), &[ALPN_TCP], tls::ClientAuth::Required).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg))
            .accept(tcp)
            .await
            .map(|_| ())
    });
    // A client that trusts the server but has no certificate of its own.
    let cfg = tls::anonymous_client_config(pki.store(), ExpectedPeer::AnyTrusted, &[]);
    let tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(tls::mesh_server_name(), tcp)
        .await;
    let err = accept.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[test]
fn bundles_are_per_trust_domain() {
    let a = Pki::new("a.example");
    let b = Pki::new("b.example");
    let svid_b = b
        .authority
        .issue(&id("spiffe://b.example/w"), HOUR)
        .unwrap();
    // Only a.example trusted: b's SVID names an untrusted trust domain.
    let err = check(&a.store(), &svid_b, PeerRole::Client).unwrap_err();
    assert_eq!(err, VerifyError::UntrustedTrustDomain("b.example".into()));
    // Federated: both bundles, each for its own trust domain.
    let mut store = TrustStore::default();
    store.insert(a.authority.bundle().clone());
    store.insert(b.authority.bundle().clone());
    assert_eq!(
        check(&store, &svid_b, PeerRole::Client).unwrap(),
        id("spiffe://b.example/w")
    );
    // b's roots filed under a's name do not let b vouch for a.example identities.
    let mut crossed = TrustStore::default();
    crossed.insert(
        TrustBundle::new(
            TrustDomain::parse("a.example").unwrap(),
            b.authority.bundle().roots().to_vec(),
            "crossed",
        )
        .unwrap(),
    );
    let svid_a = a
        .authority
        .issue(&id("spiffe://a.example/w"), HOUR)
        .unwrap();
    assert_eq!(
        check(&crossed, &svid_a, PeerRole::Client).unwrap_err(),
        VerifyError::UnknownIssuer("a.example".into())
    );
}

/// A chain, when it is checked (Unix seconds), and `Ok` or the failing certificate's index.
type ValidityCase<'a> = (
    &'a str,
    &'a [CertificateDer<'static>],
    i64,
    Result<(), usize>,
);

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[test]
fn validity_is_checked_for_every_certificate_of_a_chain() {
    let pki = Pki::new("cluster.local");
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let svid = pki.authority.issue(&id(FRONTEND), day).unwrap();
    // A leaf signed to outlive its issuer (one year): the CA never issues one.
    let mut params = good(FRONTEND);
    params.not_after = ts(now + 2 * 365 * day);
    let outliving = pki.leaf(params);
    let garbage = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x01])];
    // The bounds are inclusive, as webpki's.
    let (not_before, not_after) =
        warden_identity::inspect::validity_unix(&svid.chain()[0]).unwrap();
    let now = unix(now);
    let (day_s, year_s) = (86_400, 365 * 86_400);
    let cases: &[ValidityCase] = &[
        ("a day's SVID, now", svid.chain(), now, Ok(())),
        ("at its notAfter", svid.chain(), not_after, Ok(())),
        (
            "a second after its notAfter",
            svid.chain(),
            not_after + 1,
            Err(0),
        ),
        ("at its notBefore", svid.chain(), not_before, Ok(())),
        (
            "a second before its notBefore",
            svid.chain(),
            not_before - 1,
            Err(0),
        ),
        (
            "a leaf valid, its issuer expired",
            outliving.chain(),
            now + year_s + 35 * day_s,
            Err(1),
        ),
        (
            "the same leaf and issuer within both",
            outliving.chain(),
            now + 300 * day_s,
            Ok(()),
        ),
    ];
    for (case, chain, at, expected) in cases {
        let result = warden_identity::svid::check_validity(chain, *at);
        match (result, expected) {
            (Ok(()), Ok(())) => {}
            (Err(SvidError::OutsideValidity { index, .. }), Err(want)) if index == *want => {}
            (other, _) => panic!("{case}: {other:?}, expected {expected:?}"),
        }
    }
    let err = warden_identity::svid::check_validity(&garbage, now).unwrap_err();
    assert!(
        matches!(err, SvidError::Unparseable { index: 0, .. }),
        "{err}"
    );
    // The message names the certificate and its period.
    let err = warden_identity::svid::check_validity(svid.chain(), now + 2 * day_s);
    let message = err.unwrap_err().to_string();
    assert!(
        message.starts_with("certificate 0 is not valid at") && message.contains("valid from"),
        "{message}"
    );
}

/// What one side of a connection saw: the kind of handshake, and the peer's identity checked
/// now and two hours on (past both SVIDs' hour).
type Seen = (
    Option<HandshakeKind>,
    Result<SpiffeId, String>,
    Result<SpiffeId, String>,
);

fn seen(conn: &rustls::CommonState, now: i64) -> Seen {
    let at = |t| tls::peer_identity_at(conn, t).map_err(|e| e.to_string());
    (conn.handshake_kind(), at(now), at(now + 2 * 3600))
}

#[tokio::test]
async fn a_session_resumed_after_its_certificates_expired_is_refused_on_both_sides() {
    let pki = Pki::new("cluster.local");
    let frontend = pki.authority.issue(&id(FRONTEND), HOUR).unwrap();
    let backend = pki.authority.issue(&id(BACKEND), HOUR).unwrap();
    let server_cfg = tls::server_config(
        &backend,
        pki.store(),
        &[ALPN_TCP],
        tls::ClientAuth::Required,
    )
    .unwrap();
    let client_cfg = tls::client_config(
        &frontend,
        pki.store(),
        ExpectedPeer::Exact(id(BACKEND)),
        &[ALPN_TCP],
    )
    .unwrap();
    let now = unix(SystemTime::now());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server = tokio::spawn(async move {
        let mut all = Vec::new();
        for _ in 0..2 {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            all.push(seen(tls.get_ref().1, now));
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(b"pong").await.unwrap();
            tls.shutdown().await.ok();
        }
        all
    });
    // Two connections with the same configurations: the second resumes the first's session.
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let mut client = Vec::new();
    for _ in 0..2 {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = connector
            .connect(tls::mesh_server_name(), tcp)
            .await
            .unwrap();
        tls.write_all(b"ping").await.unwrap();
        // The server's session tickets are read before its answer.
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        client.push(seen(tls.get_ref().1, now));
    }
    let server = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server side finished")
        .unwrap();
    for (side, all, peer) in [("server", server, FRONTEND), ("client", client, BACKEND)] {
        let [full, resumed] = <[Seen; 2]>::try_from(all).unwrap();
        assert_eq!(full.0, Some(HandshakeKind::Full), "{side}");
        assert_eq!(full.1, Ok(id(peer)), "{side}");
        assert_eq!(resumed.0, Some(HandshakeKind::Resumed), "{side}");
        assert_eq!(
            resumed.1,
            Ok(id(peer)),
            "{side}: within the certificates' validity"
        );
        let err = resumed.2.unwrap_err();
        assert!(
            err.contains("resumed a TLS session") && err.contains("certificate 0 is not valid"),
            "{side}: {err}"
        );
    }
}
