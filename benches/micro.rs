//! Micro-benchmarks of the pieces on the hot and warm paths, so regressions show without the
//! whole side-by-side harness: policy evaluation (1 and 10,000 policies), SVID verification,
//! certificate issuance (CSR signing), a full mTLS handshake in memory, Prometheus
//! exposition of a proxy's metrics, and an audit record's CPU cost.
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

/// CPU time (user + system) of the whole process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage(2) fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One decision's audit record from the request path to the written line, in CPU time of the
/// whole process (the request side and the writer thread, hashing, writing and checkpoints
/// every 1,000 records), to /dev/null.
fn audit_record(c: &mut Criterion) {
    use warden_proxy::audit::{AuditFailure, AuditLog, AuditOptions, AuditTarget};
    let ca = test_ca();
    let svid = ca
        .issue(&id("shop", "backend"), Duration::from_secs(3600))
        .unwrap();
    let tls = warden_identity::rotation::TlsOptions {
        server_alpn: vec![],
        client_alpn: vec![],
        client_auth: ClientAuth::Required,
    };
    let creds = warden_identity::rotation::Credentials::build(svid, store(&ca), &tls).unwrap();
    let (_keep, credentials) = tokio::sync::watch::channel(Arc::new(creds));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let reason = "matched ALLOW policy shop/backend-allow-frontend rule 0";
    let record = warden_core::audit::DecisionFields {
        time: "2026-11-26T08:00:00.123456Z",
        direction: "inbound",
        client: Some("spiffe://cluster.local/ns/shop/sa/frontend"),
        client_addr: Some("10.1.2.4:51012".parse().unwrap()),
        workload: "spiffe://cluster.local/ns/shop/sa/backend",
        port: 8080,
        method: Some("GET"),
        path: Some("/api/orders/12345"),
        decision: "allow",
        policy: Some("shop/backend-allow-frontend"),
        rule: Some(0),
        reason,
        audit_policies: None,
        request_id: Some("9f3c2a1b4d5e6f70"),
    };
    c.bench_function("audit_record_cpu", |b| {
        b.iter_custom(|iters| {
            let options = AuditOptions {
                log_allowed: true,
                // Refuse rather than drop when the writer falls behind, so every record is
                // written and counted.
                failure: AuditFailure::Deny,
                ..AuditOptions::default()
            };
            let log = AuditLog::open(&AuditTarget::File("/dev/null".into()), options).unwrap();
            log.start("shop/backend-0", credentials.clone());
            let before = process_cpu();
            for _ in 0..iters {
                while log.record(&record).is_err() {
                    // Waiting, not spinning: the figure is the records' CPU.
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            runtime.block_on(log.close(Duration::from_secs(60)));
            process_cpu() - before
        })
    });
}

criterion_group!(
    benches,
    policy_evaluation,
    path_normalization,
    svid_verification,
    issuance,
    handshake,
    metrics_encoding,
    audit_record
);
criterion_main!(benches);
