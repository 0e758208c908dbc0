//! Micro-benchmarks of the pieces on the hot and warm paths, so regressions show without the
//! whole side-by-side harness: policy evaluation (1 and 10,000 policies), SVID verification,
//! certificate issuance (CSR signing), a full mTLS handshake in memory, and Prometheus
//! exposition of a proxy's metrics.
//!
//! Run: `cargo bench --bench micro` (figures in benches/README.md).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rustls::pki_types::UnixTime;
use warden_core::policy::evaluate::{DefaultPolicy, PolicySet, Request, Workload};
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::ca::{self, CertificateAuthority, InitOptions};
use warden_identity::csr;
use warden_identity::tls::{self, ClientAuth};
use warden_identity::verify::{verify_svid, ExpectedPeer, PeerRole};
use warden_identity::{TrustBundle, TrustStore};

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")).unwrap()
}

/// `n` ALLOW policies in namespace `shop`, each protecting its own ServiceAccount; the last
/// one protects `backend` and lets `frontend` GET `/api/*` on 8080.
fn policies(n: usize) -> PolicySet {
    let mut text = String::new();
    for i in 0..n - 1 {
        text.push_str(&format!(
            "---\napiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: p{i}, namespace: shop}}\n\
             spec:\n  selector: {{serviceAccounts: [svc{i}]}}\n  action: ALLOW\n\
             \x20 rules: [{{from: {{identities: [\"spiffe://cluster.local/ns/shop/sa/c{i}\"]}}}}]\n"
        ));
    }
    text.push_str(
        "---\napiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\n\
         metadata: {name: backend, namespace: shop}\n\
         spec:\n  selector: {serviceAccounts: [backend]}\n  action: ALLOW\n\
         \x20 rules:\n    - from: {identities: [\"spiffe://cluster.local/ns/shop/sa/frontend\"]}\n\
         \x20     to: {ports: [8080], methods: [GET], paths: [\"/api/*\"]}\n",
    );
    // One YAML text holds at most 1,024 documents (the parser's budget), as one policy file
    // would; parse in files of 1,000 like a policy directory.
    let docs: Vec<&str> = text.split_inclusive("\n---").collect();
    let parsed: Vec<_> = docs
        .chunks(1000)
        .flat_map(|file| warden_core::policy::parse(&file.concat(), "bench").unwrap())
        .collect();
    assert_eq!(parsed.len(), n);
    PolicySet::new(parsed)
}

fn policy_evaluation(c: &mut Criterion) {
    let workload = Workload::from_id(&id("shop", "backend"));
    let client = id("shop", "frontend");
    let request = Request {
        client: Some(&client),
        port: 8080,
        http: Some(("GET", "/api/orders")),
    };
    for n in [1, 10_000] {
        let set = policies(n);
        assert!(
            set.evaluate(&workload, &request, DefaultPolicy::Deny)
                .allowed
        );
        c.bench_function(&format!("policy_evaluate_{n}_policies"), |b| {
            b.iter(|| set.evaluate(&workload, &request, DefaultPolicy::Deny))
        });
    }
}

fn path_normalization(c: &mut Criterion) {
    use warden_core::policy::path::normalize;
    // A typical API path (nothing to decode) and one with every kind of work to do.
    for (name, path, want) in [
        (
            "plain",
            "/api/v1/orders/12345/items",
            "/api/v1/orders/12345/items",
        ),
        (
            "encoded",
            "/api/%76%31//orders/./x/../12345/%7eitems%20a",
            "/api/v1/orders/12345/~items%20a",
        ),
    ] {
        assert_eq!(normalize(path).unwrap(), want);
        c.bench_function(&format!("path_normalize_{name}"), |b| {
            b.iter(|| normalize(path))
        });
    }
}

fn test_ca() -> CertificateAuthority {
    ca::generate(&InitOptions::new(TrustDomain::default()))
        .unwrap()
        .authority()
        .unwrap()
}

fn store(ca: &CertificateAuthority) -> Arc<TrustStore> {
    let bundle = TrustBundle::new(
        TrustDomain::default(),
        ca.bundle().roots().to_vec(),
        "bench",
    )
    .unwrap();
    Arc::new(TrustStore::single(bundle))
}

fn svid_verification(c: &mut Criterion) {
    let ca = test_ca();
    let svid = ca
        .issue(&id("shop", "web"), Duration::from_secs(3600))
        .unwrap();
    let store = store(&ca);
    let algorithms = tls::crypto_provider().signature_verification_algorithms;
    let now = UnixTime::since_unix_epoch(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap(),
    );
    let (leaf, intermediates) = svid.chain().split_first().unwrap();
    verify_svid(
        &store,
        leaf,
        intermediates,
        now,
        PeerRole::Client,
        &algorithms,
    )
    .unwrap();
    c.bench_function("svid_verify", |b| {
        b.iter(|| {
            verify_svid(
                &store,
                leaf,
                intermediates,
                now,
                PeerRole::Client,
                &algorithms,
            )
        })
    });
}

fn issuance(c: &mut Criterion) {
    let ca = test_ca();
    let web = id("shop", "web");
    let key = csr::generate_key().unwrap();
    let csr_pem = csr::build_csr(&key, Some(&web)).unwrap();
    c.bench_function("issue_svid_from_csr", |b| {
        b.iter(|| {
            ca.sign_csr(&csr_pem, &web, Duration::from_secs(86_400))
                .unwrap()
        })
    });
}

/// Moves TLS records between the two sides until neither has anything to send.
fn pump(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    let mut buf = Vec::new();
    loop {
        let mut moved = false;
        while client.wants_write() {
            buf.clear();
            client.write_tls(&mut buf).unwrap();
            server.read_tls(&mut &buf[..]).unwrap();
            server.process_new_packets().unwrap();
            moved = true;
        }
        while server.wants_write() {
            buf.clear();
            server.write_tls(&mut buf).unwrap();
            client.read_tls(&mut &buf[..]).unwrap();
            client.process_new_packets().unwrap();
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn handshake(c: &mut Criterion) {
    let ca = test_ca();
    let store = store(&ca);
    let server_svid = ca
        .issue(&id("shop", "backend"), Duration::from_secs(3600))
        .unwrap();
    let client_svid = ca
        .issue(&id("shop", "frontend"), Duration::from_secs(3600))
        .unwrap();
    let server_config = Arc::new(
        tls::server_config(
            &server_svid,
            store.clone(),
            &[warden_core::contract::ALPN_HTTP2],
            ClientAuth::Required,
        )
        .unwrap(),
    );
    let client_config = Arc::new(
        tls::client_config(
            &client_svid,
            store,
            ExpectedPeer::Exact(id("shop", "backend")),
            &[warden_core::contract::ALPN_HTTP2],
        )
        .unwrap(),
    );
    let connect = || {
        let mut client =
            rustls::ClientConnection::new(client_config.clone(), tls::mesh_server_name()).unwrap();
        let mut server = rustls::ServerConnection::new(server_config.clone()).unwrap();
        pump(&mut client, &mut server);
        assert!(!client.is_handshaking() && !server.is_handshaking());
        server
    };
    let server = connect();
    assert_eq!(
        tls::peer_identity(&server).unwrap(),
        id("shop", "frontend"),
        "mutual authentication happened"
    );
    c.bench_function("mtls_handshake_full", |b| b.iter(connect));
}

fn metrics_encoding(c: &mut Criterion) {
    let handle = warden_identity::telemetry::prometheus();
    warden_proxy::metrics::describe();
    warden_proxy::metrics::initialize();
    // A busy proxy: 20 peers calling, 5 status codes each.
    for peer in 0..20 {
        for status in ["200", "201", "404", "500", "503"] {
            metrics::counter!("warden_requests_total",
                "direction" => "inbound", "client_id" => format!("spiffe://cluster.local/ns/shop/sa/c{peer}"),
                "server_id" => "spiffe://cluster.local/ns/shop/sa/backend", "status_code" => status)
            .increment(1);
        }
        metrics::histogram!("warden_request_duration_seconds",
            "direction" => "inbound", "client_id" => format!("spiffe://cluster.local/ns/shop/sa/c{peer}"),
            "server_id" => "spiffe://cluster.local/ns/shop/sa/backend")
        .record(0.001);
    }
    c.bench_function("metrics_render", |b| {
        b.iter_batched(|| (), |_| handle.render(), BatchSize::SmallInput)
    });
}

criterion_group!(
    benches,
    policy_evaluation,
    path_normalization,
    svid_verification,
    issuance,
    handshake,
    metrics_encoding
);
criterion_main!(benches);
