//! One HTTP/1.1 request through a Warden pair (app client -> outbound proxy -> mTLS ->
//! inbound proxy -> app) versus the same request straight to the app, on 127.0.0.1, each
//! over a kept-alive connection. The authorization hook and metrics are on, as in production.
//!
//! Run: `cargo bench --bench pair` (figures in benches/README.md).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::ca::{self, InitOptions, SharedCa};
use warden_identity::rotation::CertSource;
use warden_proxy::authz::{Authorizer, Verdict};
use warden_proxy::config::{
    AppProtocol, InboundListener, OutboundRoute, ProxyConfig, RouteProtocol,
};
use warden_proxy::proxy::{self, Listeners};

/// The app: 64 bytes for every request.
async fn app() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async {
                    Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                        &[b'x'; 64],
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

async fn start_proxy(
    config: ProxyConfig,
    ca: &Arc<SharedCa>,
    name: &str,
    shutdown: &CancellationToken,
) -> proxy::BoundAddrs {
    let listeners = Listeners::bind(&config).await.unwrap();
    let addrs = listeners.addrs();
    let source = CertSource::Local {
        ca: ca.clone(),
        id: SpiffeId::parse(&format!("spiffe://cluster.local/ns/bench/sa/{name}")).unwrap(),
        dns_names: vec![],
        ttl: Duration::from_secs(3600),
    };
    // One ALLOW rule that matches, so the hook runs as it would with a policy.
    let authz = Authorizer::from_fn(|req| match req.client {
        Some(id) if id.namespace() == Some("bench") => Verdict::Allow,
        _ => Verdict::Deny {
            policy: "bench".into(),
        },
    });
    let metrics = warden_identity::telemetry::prometheus();
    tokio::spawn(proxy::run(
        config,
        listeners,
        source,
        authz,
        warden_identity::admin::Telemetry::new(metrics),
        shutdown.clone(),
    ));
    for _ in 0..200 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(addrs.admin).await {
            drop(tcp);
            tokio::time::sleep(Duration::from_millis(100)).await; // the certificate arrives
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    addrs
}

async fn client(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn request(sender: &mut SendRequest<Empty<Bytes>>) {
    sender.ready().await.unwrap();
    let req = http::Request::get("/")
        .header("host", "app")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 64);
}

fn bench(c: &mut Criterion) {
    warden_identity::tls::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let shutdown = CancellationToken::new();
    let (app_addr, outbound) = runtime.block_on(async {
        let app_addr = app().await;
        let ca = Arc::new(SharedCa::new(
            ca::generate(&InitOptions::new(TrustDomain::default()))
                .unwrap()
                .authority()
                .unwrap(),
        ));
        let mut server = ProxyConfig::default();
        server.admin.listen = "127.0.0.1:0".parse().unwrap();
        server.inbound = vec![InboundListener {
            listen: "127.0.0.1:0".parse().unwrap(),
            app: app_addr,
            protocol: AppProtocol::Http1,
        }];
        let server = start_proxy(server, &ca, "server", &shutdown).await;
        let mut client = ProxyConfig::default();
        client.admin.listen = "127.0.0.1:0".parse().unwrap();
        client.outbound = vec![OutboundRoute {
            listen: "127.0.0.1:0".parse().unwrap(),
            destination: server.inbound[0],
            identity: Some(SpiffeId::parse("spiffe://cluster.local/ns/bench/sa/server").unwrap()),
            protocol: RouteProtocol::Detect,
        }];
        let client = start_proxy(client, &ca, "client", &shutdown).await;
        (app_addr, client.outbound[0])
    });

    let direct = Arc::new(tokio::sync::Mutex::new(runtime.block_on(client(app_addr))));
    let through = Arc::new(tokio::sync::Mutex::new(runtime.block_on(client(outbound))));
    // Warm the pooled mTLS connection.
    runtime.block_on(async { request(&mut *through.lock().await).await });

    let mut group = c.benchmark_group("one_request");
    for (name, conn) in [("direct", &direct), ("warden_pair", &through)] {
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| {
                let conn = conn.clone();
                // Iterations run one at a time on the one kept-alive connection.
                async move { request(&mut *conn.lock().await).await }
            })
        });
    }
    group.finish();
    shutdown.cancel();
}

criterion_group!(benches, bench);
criterion_main!(benches);
