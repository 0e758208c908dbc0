//! App probes through the admin port, as kubelet calls them after the injector rewrote them;
//! and trust anchors handed in as PEM text (the injector's environment) instead of a file.

use std::net::SocketAddr;

use warden_core::probe::{AppProbe, AppProbes};
use warden_proxy::authz::Authorizer;

use crate::apps;
use crate::fixture::Mesh;

fn http(port: u16, path: &str, scheme: &str) -> AppProbe {
    AppProbe::Http {
        scheme: scheme.into(),
        host: None,
        port,
        path: path.into(),
        headers: vec![("x-probe".into(), "kubelet".into())],
    }
}

fn grpc(port: u16, service: &str) -> AppProbe {
    AppProbe::Grpc {
        port,
        service: service.into(),
    }
}

#[tokio::test]
async fn app_probes_run_against_the_app_and_anchors_come_from_the_environment() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::http_app().await;
    let (tcp_app, _) = apps::tcp_app(None).await;
    let closed_app = crate::fixture::closed_port();
    let closed = closed_app.addr.port();
    let identity: SocketAddr = mesh
        .identity_url
        .trim_start_matches("https://")
        .parse()
        .unwrap();
    let probes: AppProbes = [
        ("web/liveness", http(app.port(), "/status/204", "HTTP")),
        ("web/readiness", http(app.port(), "/status/500", "HTTP")),
        ("web/startup", http(app.port(), "/headers", "http")),
        ("tls/liveness", http(identity.port(), "/", "HTTPS")),
        (
            "tcp/liveness",
            AppProbe::Tcp {
                port: tcp_app.port(),
            },
        ),
        ("tcp/readiness", AppProbe::Tcp { port: closed }),
        ("grpc/liveness", grpc(app.port(), "")),
        ("grpc/readiness", grpc(app.port(), "down")),
        ("grpc/startup", grpc(closed, "")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let mut config = mesh.workload("probed");
    // The bundle arrives as PEM text; the file path points nowhere, so only the text can work.
    let anchors = std::fs::read_to_string(&config.identity.trust_bundle).unwrap();
    config.identity.trust_bundle = "/nonexistent/bundle.crt".into();
    config.identity.trust_anchors = Some(anchors);
    config.admin.app_probes = probes;
    let proxy = mesh.proxy(config, Authorizer::allow_all()).await;

    let cases: &[(&str, &str, &str)] = &[
        ("web/liveness", "200", "HTTP GET /status/204: 204"),
        ("web/readiness", "503", "HTTP GET /status/500: 500"),
        ("web/startup", "200", "GET /headers: 200"),
        // TLS to a server whose certificate kubelet would not verify either; its 404 proves
        // the handshake and the request went through.
        ("tls/liveness", "503", "HTTPS GET /: 404"),
        ("tcp/liveness", "200", "accepts connections"),
        ("tcp/readiness", "503", "connecting to 127.0.0.1"),
        ("grpc/liveness", "200", "SERVING"),
        ("grpc/readiness", "503", "status 2 (not SERVING)"),
        ("grpc/startup", "503", "connecting to 127.0.0.1"),
        ("web/unknown", "404", "no app probe \"web/unknown\""),
    ];
    for (probe, status, body) in cases {
        let response = proxy.admin(&format!("/app-probe/{probe}")).await;
        assert!(
            response.starts_with(&format!("HTTP/1.1 {status}")),
            "{probe}: {response}"
        );
        assert!(
            response.contains(body),
            "{probe}: want {body:?} in {response}"
        );
    }
}
