//! The identity service over real HTTPS on 127.0.0.1: issuance end to end, every error
//! status, Kubernetes TokenReview against a local stand-in of the API server, and tokens
//! kept out of logs.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::admin::{self, Readiness, Telemetry};
use warden_identity::authn::Authenticator;
use warden_identity::ca::{self, InitOptions, SharedCa};
use warden_identity::certify::{CertifyResponse, ErrorResponse, CERTIFY_PATH};
use warden_identity::client::{CertifyClient, CertifyClientConfig, CertifyClientError};
use warden_identity::http::{post_json, HttpsTarget};
use warden_identity::join_token::{self, JoinTokens, TokenOptions};
use warden_identity::rate_limit::Rate;
use warden_identity::server::ServerLimits;
use warden_identity::service::{self, IdentityService, ServiceConfig, ServingIdentity};
use warden_identity::token_review::{TokenReview, TokenReviewConfig, TokenReviewer};
use warden_identity::verify::ExpectedPeer;
use warden_identity::{csr, telemetry, tls, TrustStore};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// A running identity service and what a client needs to reach it.
struct Running {
    url: String,
    server_id: SpiffeId,
    trust: TrustStore,
    shutdown: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(authenticator: Authenticator, config: ServiceConfig) -> Running {
    let generated = ca::generate(&InitOptions::new(TrustDomain::default())).unwrap();
    let authority = generated.authority().unwrap();
    let trust = TrustStore::single(authority.bundle().clone());
    let ca = Arc::new(SharedCa::new(authority));
    let service = Arc::new(IdentityService::new(ca, authenticator, config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_id = id("spiffe://cluster.local/ns/warden-system/sa/warden-identity");
    let serving = ServingIdentity {
        id: server_id.clone(),
        dns_names: vec!["localhost".into()],
    };
    let shutdown = CancellationToken::new();
    service::start(listener, service, serving, shutdown.clone())
        .await
        .unwrap();
    Running {
        url: format!("https://{addr}"),
        server_id,
        trust,
        shutdown,
    }
}

/// A join-token file admitting one token as `who`.
fn join_tokens(dir: &Path, who: &str) -> (String, JoinTokens) {
    join_tokens_with(dir, who, &TokenOptions::default())
}

/// A join-token file admitting one token as `who`, made with `options`.
fn join_tokens_with(dir: &Path, who: &str, options: &TokenOptions) -> (String, JoinTokens) {
    let (token, line) = join_token::new_token_with(&id(who), options).unwrap();
    let path = dir.join("tokens");
    std::fs::write(&path, line).unwrap();
    (token, JoinTokens::load(&path, Duration::ZERO).unwrap())
}

const SINGLE_USE: TokenOptions = TokenOptions {
    ttl: join_token::DEFAULT_TTL,
    single_use: true,
};

fn write_token(dir: &Path, token: &str) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, token).unwrap();
    path
}

fn client(svc: &Running, token_file: PathBuf, expected: Option<&str>) -> CertifyClient {
    CertifyClient::new(
        CertifyClientConfig {
            url: svc.url.clone(),
            server_id: svc.server_id.clone(),
            token_file,
            expected_id: expected.map(id),
            timeout: Duration::from_secs(10),
        },
        svc.trust.clone(),
    )
    .unwrap()
}

/// POSTs raw bytes to the service the way any HTTPS client would.
async fn post(svc: &Running, path: &str, bearer: &str, body: Vec<u8>) -> (StatusCode, String) {
    let config = tls::anonymous_client_config(
        Arc::new(svc.trust.clone()),
        ExpectedPeer::Exact(svc.server_id.clone()),
        &[],
    );
    let target = HttpsTarget::parse(&svc.url).unwrap();
    let (status, body) = post_json(
        Arc::new(config),
        &target,
        path,
        bearer,
        body,
        1 << 20,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn csr_json(csr_pem: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "csr": csr_pem })).unwrap()
}

fn good_csr() -> String {
    csr::build_csr(&csr::generate_key().unwrap(), None).unwrap()
}

#[tokio::test]
async fn issues_over_https_and_the_client_checks_what_it_gets() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens(dir.path(), WEB);
    let svc = start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await;
    let metrics = telemetry::prometheus();

    let client = client(&svc, write_token(dir.path(), &token), Some(WEB));
    let issued = client.certify().await.unwrap();
    assert_eq!(issued.svid.id(), &id(WEB));
    assert_eq!(issued.svid.chain().len(), 2, "leaf + issuer");
    let left = issued
        .svid
        .not_after()
        .duration_since(std::time::SystemTime::now())
        .unwrap();
    assert!(left > Duration::from_secs(23 * 3600) && left <= Duration::from_secs(24 * 3600));
    assert_eq!(
        issued.trust.get("cluster.local").unwrap().roots(),
        svc.trust.get("cluster.local").unwrap().roots()
    );
    // The issued SVID works for mutual TLS right away.
    tls::server_config(
        &issued.svid,
        issued.trust.clone(),
        &[],
        tls::ClientAuth::Required,
    )
    .unwrap();

    let exposition = metrics.render();
    assert!(
        exposition.contains("warden_ca_certificates_issued_total{result=\"issued\"}"),
        "{exposition}"
    );
    assert!(exposition.contains("warden_ca_request_duration_seconds_bucket{result=\"issued\""));
}

#[tokio::test]
async fn dns_names_are_granted_only_to_identities_allowed_them() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens(dir.path(), WEB);
    let webhook = "web.shop.svc".to_string();
    let config = ServiceConfig {
        dns_names: [(WEB.to_string(), vec![webhook.clone()])].into(),
        ..ServiceConfig::default()
    };
    let svc = start(Authenticator::JoinTokens(tokens), config).await;
    let token_file = write_token(dir.path(), &token);
    let issued = client(&svc, token_file.clone(), Some(WEB))
        .with_dns_names(vec![webhook.clone()])
        .certify()
        .await
        .unwrap();
    let leaf = warden_identity::inspect::summarize(&issued.svid.chain()[0]).unwrap();
    assert_eq!(leaf.dns_names, [webhook]);
    assert_eq!(leaf.uris, [WEB]);
    // A name the identity is not allowed: refused, naming it; nothing issued.
    let err = client(&svc, token_file, Some(WEB))
        .with_dns_names(vec!["kubernetes.default.svc".into()])
        .certify()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("DNS name \"kubernetes.default.svc\" is not allowed for spiffe://cluster.local/ns/shop/sa/web"),
        "{err}"
    );
}

#[tokio::test]
async fn every_refusal_has_its_status_and_issues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens(dir.path(), WEB);
    let config = ServiceConfig {
        max_body_bytes: 4096,
        ..ServiceConfig::default()
    };
    let svc = start(Authenticator::JoinTokens(tokens), config).await;
    let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384_csr = csr::build_csr(&p384, None).unwrap();
    let huge = csr_json(&"A".repeat(5000));

    let cases = [
        Refusal {
            name: "unknown token",
            path: CERTIFY_PATH,
            bearer: "not-a-token",
            body: csr_json(&good_csr()),
            status: 401,
            message: "unknown join token",
        },
        Refusal {
            name: "no token",
            path: CERTIFY_PATH,
            bearer: "",
            body: csr_json(&good_csr()),
            status: 401,
            message: "missing \"Authorization: Bearer",
        },
        Refusal {
            name: "malformed JSON",
            path: CERTIFY_PATH,
            bearer: &token,
            body: b"{\"csr\": ".to_vec(),
            status: 400,
            message: "malformed JSON",
        },
        Refusal {
            name: "unknown field",
            path: CERTIFY_PATH,
            bearer: &token,
            body: b"{\"csr\":\"x\",\"ttl\":\"99y\"}".to_vec(),
            status: 400,
            message: "unknown field",
        },
        Refusal {
            name: "not a CSR",
            path: CERTIFY_PATH,
            bearer: &token,
            body: csr_json("hello"),
            status: 400,
            message: "CSR is not PEM",
        },
        Refusal {
            name: "P-384 key",
            path: CERTIFY_PATH,
            bearer: &token,
            body: csr_json(&p384_csr),
            status: 400,
            message: "must be ECDSA P-256",
        },
        Refusal {
            name: "too large",
            path: CERTIFY_PATH,
            bearer: &token,
            body: huge,
            status: 413,
            message: "larger than 4096 bytes",
        },
        Refusal {
            name: "wrong path",
            path: "/v1/other",
            bearer: &token,
            body: csr_json(&good_csr()),
            status: 404,
            message: "not found",
        },
    ];
    for Refusal {
        name,
        path,
        bearer,
        body,
        status,
        message,
    } in cases
    {
        let (got, body) = post(&svc, path, bearer, body).await;
        assert_eq!(got.as_u16(), status, "{name}: {body}");
        let error: ErrorResponse = serde_json::from_str(&body).unwrap();
        assert!(error.error.contains(message), "{name}: {}", error.error);
        assert!(
            !body.contains("BEGIN CERTIFICATE\""),
            "{name}: nothing issued"
        );
        assert!(!body.contains(&token), "{name}: the token is never echoed");
    }

    // A chunked body with no Content-Length is cut off at the limit as well.
    let (status, _) = chunked_upload(&svc, &token, 10_000).await;
    assert_eq!(status, 413);
    // The service is still fine for everyone else.
    assert_eq!(
        post(&svc, CERTIFY_PATH, &token, csr_json(&good_csr()))
            .await
            .0,
        200
    );
}

/// One row of the refusal table: what is sent and what must come back.
struct Refusal<'a> {
    name: &'a str,
    path: &'a str,
    bearer: &'a str,
    body: Vec<u8>,
    status: u16,
    message: &'a str,
}

/// Sends a chunked HTTP/1.1 upload of `size` bytes and returns the status code.
async fn chunked_upload(svc: &Running, token: &str, size: usize) -> (u16, String) {
    let config = tls::anonymous_client_config(
        Arc::new(svc.trust.clone()),
        ExpectedPeer::AnyTrusted,
        &[b"http/1.1"],
    );
    let target = HttpsTarget::parse(&svc.url).unwrap();
    let tcp = tokio::net::TcpStream::connect(&target.authority)
        .await
        .unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(target.server_name.clone(), tcp)
        .await
        .unwrap();
    let head = format!(
        "POST {CERTIFY_PATH} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 1000, "A".repeat(1000));
    for _ in 0..size / 1000 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let code = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, text)
}

#[tokio::test]
async fn callers_over_their_rate_get_429() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens(dir.path(), WEB);
    let config = ServiceConfig {
        rate: Rate {
            per_minute: 1,
            burst: 2,
        },
        ..ServiceConfig::default()
    };
    let svc = start(Authenticator::JoinTokens(tokens), config).await;
    assert_eq!(
        post(&svc, CERTIFY_PATH, &token, csr_json(&good_csr()))
            .await
            .0,
        200
    );
    assert_eq!(
        post(&svc, CERTIFY_PATH, &token, csr_json(&good_csr()))
            .await
            .0,
        200
    );
    let (status, body) = post(&svc, CERTIFY_PATH, &token, csr_json(&good_csr())).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("too many requests"));
}

#[tokio::test]
async fn a_csr_asking_for_more_gets_the_callers_identity_and_a_leaf() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens(dir.path(), WEB);
    let svc = start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await;

    let key = csr::generate_key().unwrap();
    let mut greedy = CertificateParams::default();
    greedy.subject_alt_names = vec![
        SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ),
        SanType::DnsName("kubernetes.default.svc".try_into().unwrap()),
    ];
    greedy.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    greedy.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let csr_pem = greedy.serialize_request(&key).unwrap().pem().unwrap();

    let (status, body) = post(&svc, CERTIFY_PATH, &token, csr_json(&csr_pem)).await;
    assert_eq!(status, 200, "{body}");
    let reply: CertifyResponse = serde_json::from_str(&body).unwrap();
    assert_eq!(reply.spiffe_id, WEB);
    let chain =
        warden_identity::bundle::certs_from_pem(reply.certificate_chain.as_bytes(), "x").unwrap();
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    let names = &leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names;
    assert_eq!(names.len(), 1);
    assert!(
        matches!(names[0], GeneralName::URI(u) if u == WEB),
        "{names:?}"
    );
    assert!(!leaf.is_ca());
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
}

#[tokio::test]
async fn the_client_refuses_another_identity_or_an_impostor_service() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens(dir.path(), WEB);
    let svc = start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await;
    let token_file = write_token(dir.path(), &token);

    // The workload expects to be "db", but its token says "web".
    let err = client(
        &svc,
        token_file.clone(),
        Some("spiffe://cluster.local/ns/shop/sa/db"),
    )
    .certify()
    .await
    .unwrap_err();
    assert!(
        matches!(err, CertifyClientError::WrongIdentity { .. }),
        "{err}"
    );

    // The service presents a valid SVID, but not the identity service's.
    let impostor = CertifyClient::new(
        CertifyClientConfig {
            url: svc.url.clone(),
            server_id: id(WEB),
            token_file: token_file.clone(),
            expected_id: Some(id(WEB)),
            timeout: Duration::from_secs(5),
        },
        svc.trust.clone(),
    )
    .unwrap();
    let err = impostor.certify().await.unwrap_err();
    assert!(err.to_string().contains("expected"), "{err}");

    // A missing token file is named, its content never shown.
    let missing = client(&svc, dir.path().join("nope"), None)
        .certify()
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("cannot read the token file"),
        "{missing}"
    );
}

// --- Kubernetes TokenReview -------------------------------------------------------------
//
// The stand-in answers exactly as the API server does for
// `POST /apis/authentication.k8s.io/v1/tokenreviews` (status 201, the request echoed back
// with a `status`):
//
//   request:  {"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview",
//              "spec":{"token":"<caller token>","audiences":["warden-identity"]}}
//   accepted: {"apiVersion":"authentication.k8s.io/v1","kind":"TokenReview",
//              "metadata":{"creationTimestamp":null},"spec":{...},
//              "status":{"authenticated":true,
//                        "user":{"username":"system:serviceaccount:shop:web",
//                                "uid":"...","groups":["system:serviceaccounts", ...],
//                                "extra":{"authentication.kubernetes.io/pod-name":["..."]}},
//                        "audiences":["warden-identity"]}}
//   refused:  {... "status":{"user":{},"error":"[invalid bearer token, ...]"}}
//
// A token bound to another audience is refused by the API server itself (authenticated
// absent, an error naming the audiences); an old API server that ignores `audiences` answers
// authenticated without echoing them, which Warden must refuse on its own. Requests without
// the service's own valid token get 401 from the API server.

const SERVICE_TOKEN: &str = "identity-service-own-token";

fn review_reply(req: &TokenReview) -> serde_json::Value {
    let token = req.spec.token.as_deref().unwrap_or_default();
    let wants_ours = req
        .spec
        .audiences
        .iter()
        .flatten()
        .any(|a| a == "warden-identity");
    let status = match token {
        "web-token" if wants_ours => serde_json::json!({
            "authenticated": true,
            "user": {
                "username": "system:serviceaccount:shop:web",
                "uid": "6d9c1bd5-1d1a-4a32-9f3f-0c1ad5b1f2a1",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:shop", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["web-7d4b9c-abcde"]}
            },
            "audiences": ["warden-identity"]
        }),
        "other-audience-token" => serde_json::json!({
            "user": {},
            "error": "[invalid bearer token, token audiences [\"vault\"] is invalid for the target audiences [\"warden-identity\"]]"
        }),
        "old-apiserver-token" => serde_json::json!({
            "authenticated": true,
            "user": {"username": "system:serviceaccount:shop:web"}
        }),
        "node-token" => serde_json::json!({
            "authenticated": true,
            "user": {"username": "system:node:worker-1"},
            "audiences": ["warden-identity"]
        }),
        _ => {
            serde_json::json!({"user": {}, "error": "[invalid bearer token, square/go-jose: error in cryptographic primitive]"})
        }
    };
    serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "metadata": {"creationTimestamp": null},
        "spec": {"token": token, "audiences": req.spec.audiences},
        "status": status,
    })
}

/// An HTTPS stand-in of the API server's TokenReview endpoint. `broken` answers 500.
async fn api_server(dir: &Path, broken: bool) -> (SocketAddr, PathBuf, CancellationToken) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(vec![]).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_file = dir.join("kube-ca.crt");
    std::fs::write(&ca_file, ca_cert.pem()).unwrap();

    let config = rustls::ServerConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], csr::private_key_der(&key))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            let tcp = tokio::select! {
                _ = stopped.cancelled() => return,
                r = listener.accept() => r.unwrap().0,
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let handler = hyper::service::service_fn(
                    move |req: http::Request<hyper::body::Incoming>| async move {
                        let authorized = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            == Some(&format!("Bearer {SERVICE_TOKEN}"));
                        let path_ok =
                            req.uri().path() == "/apis/authentication.k8s.io/v1/tokenreviews";
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let (status, reply) = if broken {
                            (
                                500,
                                serde_json::json!({"kind": "Status", "status": "Failure", "code": 500}),
                            )
                        } else if !authorized {
                            (
                                401,
                                serde_json::json!({"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401}),
                            )
                        } else if !path_ok {
                            (404, serde_json::json!({"kind": "Status", "code": 404}))
                        } else {
                            let review: TokenReview = serde_json::from_slice(&body).unwrap();
                            (201, review_reply(&review))
                        };
                        let mut resp =
                            http::Response::new(Full::new(Bytes::from(reply.to_string())));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), handler)
                    .await;
            });
        }
    });
    (addr, ca_file, stop)
}

fn reviewer(dir: &Path, api: SocketAddr, ca_file: PathBuf) -> Authenticator {
    let token_file = dir.join("sa-token");
    std::fs::write(&token_file, format!("{SERVICE_TOKEN}\n")).unwrap();
    Authenticator::Kubernetes(
        TokenReviewer::new(TokenReviewConfig {
            api_url: format!("https://{api}"),
            ca_file,
            token_file,
            audience: "warden-identity".into(),
            trust_domain: TrustDomain::default(),
            timeout: Duration::from_secs(5),
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn kubernetes_tokens_are_checked_with_token_review() {
    let dir = tempfile::tempdir().unwrap();
    let (api, ca_file, _api_stop) = api_server(dir.path(), false).await;
    let svc = start(reviewer(dir.path(), api, ca_file), ServiceConfig::default()).await;

    // (token, status, error fragment)
    let cases = [
        ("web-token", 200, ""),
        ("garbage", 401, "invalid bearer token"),
        (
            "other-audience-token",
            401,
            "token audiences [\\\"vault\\\"] is invalid",
        ),
        ("old-apiserver-token", 401, "not bound to the audience"),
        ("node-token", 401, "is not a ServiceAccount"),
    ];
    for (token, status, fragment) in cases {
        let (got, body) = post(&svc, CERTIFY_PATH, token, csr_json(&good_csr())).await;
        assert_eq!(got.as_u16(), status, "{token}: {body}");
        assert!(body.contains(fragment), "{token}: {body}");
        if status == 200 {
            let reply: CertifyResponse = serde_json::from_str(&body).unwrap();
            assert_eq!(
                reply.spiffe_id, WEB,
                "identity from the TokenReview username"
            );
        }
    }
    // The service's own token is wrong: the API server says 401, callers get 503.
    std::fs::write(dir.path().join("sa-token"), "stale").unwrap();
    let (got, body) = post(&svc, CERTIFY_PATH, "web-token", csr_json(&good_csr())).await;
    assert_eq!(got, 503, "{body}");
}

#[tokio::test]
async fn an_unreachable_or_failing_api_server_means_503_and_no_certificate() {
    let dir = tempfile::tempdir().unwrap();
    // Down: nothing listens at its address (a socket bound there, not listening, holds the
    // port so that nothing else can take it).
    let (_, ca_file, stop) = api_server(dir.path(), false).await;
    stop.cancel();
    let down = tokio::net::TcpSocket::new_v4().unwrap();
    down.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let api = down.local_addr().unwrap();
    let svc = start(reviewer(dir.path(), api, ca_file), ServiceConfig::default()).await;
    let (status, body) = post(&svc, CERTIFY_PATH, "web-token", csr_json(&good_csr())).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("authenticator unavailable"), "{body}");
    assert!(!body.contains("BEGIN CERTIFICATE"));

    // Up but failing.
    let (api, ca_file, _stop) = api_server(dir.path(), true).await;
    let svc = start(reviewer(dir.path(), api, ca_file), ServiceConfig::default()).await;
    let (status, body) = post(&svc, CERTIFY_PATH, "web-token", csr_json(&good_csr())).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("500"), "{body}");
}

// --- Logs -----------------------------------------------------------------------------

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn tokens_never_appear_in_logs() {
    // A process-wide subscriber: a thread-local one would miss callsites that tests running
    // in parallel on other threads registered first (tracing caches interest per callsite).
    // It captures every test of this binary from here on, which only widens the check.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only test that sets one");

    let dir = tempfile::tempdir().unwrap();
    let (join, tokens) = join_tokens(dir.path(), WEB);
    let svc = start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await;
    client(&svc, write_token(dir.path(), &join), Some(WEB))
        .certify()
        .await
        .unwrap();
    let unknown = "unknown-secret-join-token-0123456789";
    post(&svc, CERTIFY_PATH, unknown, csr_json(&good_csr())).await;
    post(&svc, CERTIFY_PATH, &join, b"{broken".to_vec()).await;
    // Expired and used tokens are refused without being logged either.
    let expired = "expired-secret-join-token-0123456789";
    let once_dir = tempfile::tempdir().unwrap();
    let (once, once_tokens) = join_tokens_with(once_dir.path(), WEB, &SINGLE_USE);
    std::fs::write(
        once_dir.path().join("tokens"),
        format!(
            "{}sha256:{} {WEB} expires=2001-01-01T00:00:00Z\n",
            std::fs::read_to_string(once_dir.path().join("tokens")).unwrap(),
            join_token::token_hash(expired)
        ),
    )
    .unwrap();
    let once_svc = start(
        Authenticator::JoinTokens(once_tokens),
        ServiceConfig::default(),
    )
    .await;
    for token in [once.as_str(), once.as_str(), expired] {
        post(&once_svc, CERTIFY_PATH, token, csr_json(&good_csr())).await;
    }

    let (api, ca_file, _stop) = api_server(dir.path(), false).await;
    let k8s = start(reviewer(dir.path(), api, ca_file), ServiceConfig::default()).await;
    post(&k8s, CERTIFY_PATH, "web-token", csr_json(&good_csr())).await;
    post(
        &k8s,
        CERTIFY_PATH,
        "garbage-secret-sa-token",
        csr_json(&good_csr()),
    )
    .await;

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(text.contains("issued"), "the capture works: {text}");
    assert!(text.contains("certify refused"), "refusals are logged");
    assert!(text.contains("join token already used") && text.contains("join token expired"));
    for secret in [
        join.as_str(),
        unknown,
        expired,
        once.as_str(),
        "web-token",
        "garbage-secret-sa-token",
        SERVICE_TOKEN,
    ] {
        assert!(!text.contains(secret), "{secret:?} leaked into the logs");
    }
}

// --- Trust anchor rotation ----------------------------------------------------------------

/// Certifies until `done` holds for the result (the CA reload is polled), or panics.
async fn certify_until(
    client: &CertifyClient,
    what: &str,
    done: impl Fn(&warden_identity::client::Issued) -> bool,
) -> warden_identity::client::Issued {
    for _ in 0..100 {
        let issued = client.certify().await.unwrap();
        if done(&issued) {
            return issued;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not reached within 5s");
}

#[tokio::test]
async fn trust_anchors_rotate_with_an_overlap_and_a_bad_edit_keeps_the_last_good_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let old = ca::generate(&InitOptions::new(TrustDomain::default())).unwrap();
    old.write(&ca_dir, false).unwrap();
    let new = ca::generate(&InitOptions::new(TrustDomain::default())).unwrap();

    let shared = Arc::new(SharedCa::new(
        warden_identity::CertificateAuthority::load(&ca_dir, None).unwrap(),
    ));
    let stop = CancellationToken::new();
    tokio::spawn(service::reload_ca_on_change(
        ca_dir.clone(),
        None,
        shared.clone(),
        Duration::from_millis(20),
        stop.clone(),
    ));
    let (token, tokens) = join_tokens(dir.path(), WEB);
    let service = Arc::new(IdentityService::new(
        shared,
        Authenticator::JoinTokens(tokens),
        ServiceConfig::default(),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    let server_id = id("spiffe://cluster.local/ns/warden-system/sa/warden-identity");
    let serving = ServingIdentity {
        id: server_id.clone(),
        dns_names: vec![],
    };
    service::start(listener, service, serving, stop.clone())
        .await
        .unwrap();

    let trust = TrustStore::single(
        warden_identity::TrustBundle::new(
            TrustDomain::default(),
            vec![old.root_cert.der().clone()],
            "old",
        )
        .unwrap(),
    );
    let client = CertifyClient::new(
        CertifyClientConfig {
            url,
            server_id,
            token_file: write_token(dir.path(), &token),
            expected_id: Some(id(WEB)),
            timeout: Duration::from_secs(5),
        },
        trust,
    )
    .unwrap();
    let roots = |issued: &warden_identity::client::Issued| {
        issued.trust.get("cluster.local").unwrap().roots().len()
    };
    assert_eq!(roots(&client.certify().await.unwrap()), 1);

    // 1. The operator adds the new root to the bundle: workloads learn it on their next renewal.
    let overlap = format!("{}{}", old.root_cert.pem(), new.root_cert.pem());
    std::fs::write(ca_dir.join(ca::BUNDLE), &overlap).unwrap();
    certify_until(&client, "the overlapping bundle", |i| roots(i) == 2).await;

    // 2. A broken edit (the new issuer's certificate without its key) is not taken: the CA
    //    keeps signing with the old issuer.
    std::fs::write(ca_dir.join(ca::ISSUER_CERT), new.issuer_cert.pem()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let issued = client.certify().await.unwrap();
    assert_eq!(
        &issued.svid.chain()[1],
        old.issuer_cert.der(),
        "last good CA kept"
    );

    // 3. With its key in place, the new issuer takes over; its SVIDs verify under the new
    //    root alone, which every workload already trusts.
    std::fs::write(ca_dir.join(ca::ISSUER_KEY), new.issuer_key.serialize_pem()).unwrap();
    let issued = certify_until(&client, "the new issuer", |i| {
        &i.svid.chain()[1] == new.issuer_cert.der()
    })
    .await;
    let new_only = TrustStore::single(
        warden_identity::TrustBundle::new(
            TrustDomain::default(),
            vec![new.root_cert.der().clone()],
            "new",
        )
        .unwrap(),
    );
    let algs = tls::crypto_provider().signature_verification_algorithms;
    let chain = issued.svid.chain();
    warden_identity::verify::verify_svid(
        &new_only,
        &chain[0],
        &chain[1..],
        rustls::pki_types::UnixTime::now(),
        warden_identity::PeerRole::Client,
        &algs,
    )
    .unwrap();

    // 4. That SVID renews with itself at once (its token gone), although the service's own
    //    certificate, from the old issuer, was issued before the new root was in the bundle.
    std::fs::remove_file(dir.path().join("token")).unwrap();
    let renewed = client.renew(&issued.svid).await.unwrap();
    assert_eq!(&renewed.svid.chain()[1], new.issuer_cert.der());
    stop.cancel();
}

// --- Join tokens: expiry, single use, renewal by SVID -------------------------------------

/// The value of a counter series (`name{labels}`), 0 when absent.
fn counter(series: &str) -> f64 {
    let exposition = telemetry::prometheus().render();
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.parse().unwrap())
}

/// The value of `warden_ca_certificates_issued_total{result="<result>"}`.
fn issued_total(result: &str) -> f64 {
    counter(&format!(
        "warden_ca_certificates_issued_total{{result=\"{result}\"}}"
    ))
}

#[tokio::test]
async fn expired_join_tokens_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens");
    let token = "a-token-that-expired-long-ago";
    std::fs::write(
        &path,
        format!(
            "sha256:{} {WEB} expires=2001-01-01T00:00:00Z\n",
            join_token::token_hash(token)
        ),
    )
    .unwrap();
    let tokens = JoinTokens::load(&path, Duration::ZERO).unwrap();
    let svc = start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await;
    let before = issued_total("expired_token");
    let (status, body) = post(&svc, CERTIFY_PATH, token, csr_json(&good_csr())).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("join token expired"), "{body}");
    assert!(!body.contains(token));
    assert!(
        issued_total("expired_token") > before,
        "counted as expired_token"
    );
}

#[tokio::test]
async fn a_single_use_token_issues_once_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens_with(dir.path(), WEB, &SINGLE_USE);
    let svc = start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await;
    let before = issued_total("used_token");
    let (status, body) = post(&svc, CERTIFY_PATH, &token, csr_json(&good_csr())).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = post(&svc, CERTIFY_PATH, &token, csr_json(&good_csr())).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("join token already used"), "{body}");
    assert!(issued_total("used_token") > before, "counted as used_token");
    drop(svc);

    // A new service on the same files remembers the use.
    let path = dir.path().join("tokens");
    let record = std::fs::read_to_string(join_token::used_path(&path)).unwrap();
    assert!(
        !record.contains(&token),
        "the record holds the hash, not the token"
    );
    let tokens = JoinTokens::load(&path, Duration::ZERO).unwrap();
    let svc = start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await;
    let (status, body) = post(&svc, CERTIFY_PATH, &token, csr_json(&good_csr())).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("join token already used"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_concurrent_requests_with_a_single_use_token_exactly_one_is_issued() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens_with(dir.path(), WEB, &SINGLE_USE);
    let svc = Arc::new(start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await);
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (svc, token) = (svc.clone(), token.clone());
        requests
            .spawn(async move { post(&svc, CERTIFY_PATH, &token, csr_json(&good_csr())).await });
    }
    let replies = requests.join_all().await;
    let issued = replies.iter().filter(|(status, _)| *status == 200).count();
    assert_eq!(issued, 1, "{replies:?}");
    for (status, body) in replies.iter().filter(|(status, _)| *status != 200) {
        assert_eq!(*status, 401, "{body}");
        assert!(body.contains("join token already used"), "{body}");
    }
}

#[tokio::test]
async fn a_workload_admitted_once_renews_with_its_svid_until_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens_with(dir.path(), WEB, &SINGLE_USE);
    let svc = start(Authenticator::JoinTokens(tokens), ServiceConfig::default()).await;
    let client = client(&svc, write_token(dir.path(), &token), Some(WEB));
    let first = client.certify().await.unwrap();
    // The token is used up: it no longer works alone...
    let err = client.certify().await.unwrap_err().to_string();
    assert!(err.contains("join token already used"), "{err}");
    // ...but the SVID it got renews, again and again, with or without the token file.
    let second = client.renew(&first.svid).await.unwrap();
    assert_eq!(second.svid.id(), &id(WEB));
    std::fs::remove_file(dir.path().join("token")).unwrap();
    let third = client.renew(&second.svid).await.unwrap();
    assert_ne!(
        third.svid.chain()[0],
        second.svid.chain()[0],
        "a new certificate"
    );

    // Removing every line for the identity evicts it: renewals are refused.
    std::fs::write(dir.path().join("tokens"), "").unwrap();
    let err = client.renew(&third.svid).await.unwrap_err().to_string();
    assert!(err.contains("is no longer in the join-token file"), "{err}");
}

#[tokio::test]
async fn a_connection_kept_open_past_its_svids_expiry_renews_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let (token, tokens) = join_tokens(dir.path(), WEB);
    let config = ServiceConfig {
        svid_ttl: Duration::from_secs(2),
        ..ServiceConfig::default()
    };
    let svc = start(Authenticator::JoinTokens(tokens), config).await;
    let first = client(&svc, write_token(dir.path(), &token), Some(WEB))
        .certify()
        .await
        .unwrap();
    // One HTTP/1.1 connection presenting that SVID, kept open.
    let tls_config = tls::client_config(
        &first.svid,
        Arc::new(svc.trust.clone()),
        ExpectedPeer::Exact(svc.server_id.clone()),
        &[b"http/1.1"],
    )
    .unwrap();
    let addr = svc.url.strip_prefix("https://").unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls_config))
        .connect(tls::mesh_server_name(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut renew = async || {
        let request = http::Request::post(CERTIFY_PATH)
            .header(http::header::HOST, "localhost")
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(csr_json(&good_csr()))))
            .unwrap();
        let response = sender.send_request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let (status, body) = renew().await;
    assert_eq!(status, 200, "renewed while the SVID is valid: {body}");
    // Past its notAfter (a whole second, valid through it), on the same connection.
    let not_after = first.svid.not_after() + Duration::from_secs(1);
    while std::time::SystemTime::now() <= not_after {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = renew().await;
    assert_eq!(status, 401, "{body}");
    assert!(
        body.contains("the certificate this connection presented") && body.contains("xpired"),
        "{body}"
    );
}

// --- Connection limits: cap, header, idle and request timeouts -----------------------------

/// What both servers' connections are: TLS to the issuance endpoint, plain TCP to admin.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for T {}

/// Bound on every wait of these tests; none is a timing assertion.
const BOUND: Duration = Duration::from_secs(30);
const HOUR: Duration = Duration::from_secs(3600);

/// A server under test: the issuance endpoint or an admin endpoint, with given limits.
enum Server {
    Identity(Running),
    Admin(SocketAddr, CancellationToken),
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Server::Admin(_, stop) = self {
            stop.cancel();
        }
    }
}

impl Server {
    /// Both kinds, with the same limits.
    async fn both(limits: ServerLimits) -> [Server; 2] {
        let dir = tempfile::tempdir().unwrap();
        let (_, tokens) = join_tokens(dir.path(), WEB);
        let config = ServiceConfig {
            max_connections: limits.max_connections,
            handshake_timeout: limits.handshake_timeout,
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            request_timeout: limits.request_timeout,
            ..ServiceConfig::default()
        };
        assert_eq!(config.server_limits(), limits);
        let identity = Server::Identity(start(Authenticator::JoinTokens(tokens), config).await);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_ready, readiness) = tokio::sync::watch::channel(Readiness::not_ready("test"));
        let mut telemetry = Telemetry::new(telemetry::prometheus());
        // A /log-level that reads a request body, for the slow-body case.
        telemetry.log_level = Some(Arc::new(|_| Ok("info".to_string())));
        let stop = CancellationToken::new();
        tokio::spawn(admin::serve_with_limits(
            listener,
            readiness,
            telemetry,
            limits,
            stop.clone(),
        ));
        [identity, Server::Admin(addr, stop)]
    }

    /// The `server` label of its refusal counter.
    fn label(&self) -> &'static str {
        match self {
            Server::Identity(_) => "https",
            Server::Admin(..) => "admin",
        }
    }

    /// A request whose body the server reads: it stays in flight until the body comes.
    fn body_request(&self) -> &'static str {
        match self {
            Server::Identity(_) => {
                "POST /v1/certify HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
            }
            Server::Admin(..) => {
                "PUT /log-level HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n"
            }
        }
    }

    /// A new connection, TLS established for the issuance endpoint (timing out after BOUND).
    async fn connect(&self) -> std::io::Result<Box<dyn Stream>> {
        let connect = async {
            match self {
                Server::Identity(svc) => {
                    let config = tls::anonymous_client_config(
                        Arc::new(svc.trust.clone()),
                        ExpectedPeer::Exact(svc.server_id.clone()),
                        &[b"http/1.1"],
                    );
                    let target = HttpsTarget::parse(&svc.url).unwrap();
                    let tcp = tokio::net::TcpStream::connect(&target.authority).await?;
                    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                        .connect(target.server_name.clone(), tcp)
                        .await?;
                    Ok(Box::new(tls) as Box<dyn Stream>)
                }
                Server::Admin(addr, _) => {
                    let tcp = tokio::net::TcpStream::connect(addr).await?;
                    Ok(Box::new(tcp) as Box<dyn Stream>)
                }
            }
        };
        tokio::time::timeout(BOUND, connect)
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    }

    /// Whether a request on a new connection gets an HTTP answer.
    async fn serves(&self) -> bool {
        let Ok(mut stream) = self.connect().await else {
            return false;
        };
        let request = b"GET /live HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        if stream.write_all(request).await.is_err() {
            return false;
        }
        reply(&mut stream).await.starts_with("HTTP/1.1 ")
    }

    /// Waits until a request on a new connection is answered.
    async fn until_served(&self) {
        let deadline = tokio::time::Instant::now() + BOUND;
        while !self.serves().await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: never served again",
                self.label()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether a new connection is closed by the server before any request.
    async fn refuses(&self) -> bool {
        match self.connect().await {
            Err(e) => e.kind() != std::io::ErrorKind::TimedOut,
            Ok(mut stream) => closed_by_server(&mut stream).await,
        }
    }
}

/// What the server sends until it closes (or BOUND passes), as text.
async fn reply(stream: &mut Box<dyn Stream>) -> String {
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut bytes)).await;
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Whether the server closes the connection within BOUND (whatever it says first).
async fn closed_by_server(stream: &mut Box<dyn Stream>) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut sink))
        .await
        .is_ok()
}

/// Sends request headers one byte every 50 ms and never finishes them; whether the server
/// cuts the connection within BOUND.
async fn slowloris(mut stream: Box<dyn Stream>) -> bool {
    let deadline = tokio::time::Instant::now() + BOUND;
    if stream
        .write_all(b"GET /live HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .is_err()
    {
        return true;
    }
    while tokio::time::Instant::now() < deadline {
        if stream.write_all(b"a").await.is_err() || stream.flush().await.is_err() {
            return true;
        }
        let mut buf = [0u8; 64];
        match tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await {
            Err(_) => {} // nothing yet: keep trickling
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => return true, // answered (an error) rather than waiting
        }
    }
    false
}

#[tokio::test]
async fn slow_headers_and_slow_bodies_are_cut_off_and_others_are_served() {
    // Only the header and request timeouts are short: nothing else can end these connections.
    let limits = ServerLimits {
        header_read_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        handshake_timeout: HOUR,
        idle_timeout: HOUR,
        ..ServerLimits::default()
    };
    for server in Server::both(limits).await {
        let name = server.label();
        assert!(
            slowloris(server.connect().await.unwrap()).await,
            "{name}: a slowloris client is cut at the header timeout"
        );
        let mut slow_body = server.connect().await.unwrap();
        slow_body
            .write_all(server.body_request().as_bytes())
            .await
            .unwrap();
        let answer = reply(&mut slow_body).await;
        assert!(
            answer.starts_with("HTTP/1.1 408"),
            "{name}: a body that never comes gets 408: {answer:?}"
        );
        assert!(server.serves().await, "{name}: others are served");
    }
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_counted() {
    // Nothing times out: only the cap decides.
    let limits = ServerLimits {
        max_connections: 8,
        handshake_timeout: HOUR,
        header_read_timeout: HOUR,
        idle_timeout: HOUR,
        request_timeout: HOUR,
        ..ServerLimits::default()
    };
    for server in Server::both(limits).await {
        let name = server.label();
        let series = format!("warden_server_connections_refused_total{{server=\"{name}\"}}");
        let before = counter(&series);
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(server.connect().await.unwrap());
        }
        assert!(
            server.refuses().await,
            "{name}: the 9th connection is closed"
        );
        assert!(counter(&series) > before, "{name}: and counted");
        // Clients that leave free their slots.
        drop(held);
        server.until_served().await;
    }
}

#[tokio::test]
async fn idle_connections_are_closed_at_the_idle_timeout_and_free_their_slots() {
    // Only the idle timeout is short: nothing else can end these connections.
    let limits = ServerLimits {
        max_connections: 8,
        idle_timeout: Duration::from_secs(1),
        handshake_timeout: HOUR,
        header_read_timeout: HOUR,
        request_timeout: HOUR,
        ..ServerLimits::default()
    };
    for server in Server::both(limits).await {
        let name = server.label();
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(server.connect().await.unwrap());
        }
        for (i, stream) in held.iter_mut().enumerate() {
            assert!(
                closed_by_server(stream).await,
                "{name}: idle connection {i} is closed by the server"
            );
        }
        // The slots are free again while the clients still hold their ends.
        server.until_served().await;
    }
}
