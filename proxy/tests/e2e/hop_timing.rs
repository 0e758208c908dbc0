//! The bench-only per-hop timing (`--features hop-timing`, `benches/mesh/hops.py`): each
//! request through a pair leaves one sample in the client proxy, and neither app sees the
//! header the two proxies pass the timestamps in.

use http::Request;
use warden_proxy::authz::Authorizer;
use warden_proxy::config::{AppProtocol, RouteProtocol};

use crate::apps;
use crate::fixture::Mesh;
use crate::{empty, h1_client, text};

const HOPS: [&str; 7] = [
    "client_out",
    "server_in",
    "app",
    "server_back",
    "client_back",
    "proxies",
    "total",
];

#[tokio::test]
async fn each_request_leaves_one_sample_and_no_header_reaches_an_app() {
    let mesh = Mesh::start().await;
    let (app, hits) = apps::http_app().await;
    let pair = mesh
        .pair(
            app,
            AppProtocol::Http1,
            RouteProtocol::Detect,
            Authorizer::allow_all(),
        )
        .await;
    let mut client = h1_client(pair.outbound).await;
    for _ in 0..5 {
        let req = Request::get("/headers")
            .header("host", "server.test")
            .body(empty())
            .unwrap();
        let resp = client.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            !resp.headers().contains_key("x-warden-hop-timing"),
            "the client app got the server proxy's timestamps: {:?}",
            resp.headers()
        );
        let seen = text(resp).await;
        assert!(
            !seen.contains("x-warden-hop-timing"),
            "the server app got the client proxy's mark: {seen}"
        );
    }
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 5);

    let summary = json(&pair.client.admin("/debug/hops").await);
    assert_eq!(summary["samples"], 5, "{summary}");
    for hop in HOPS {
        let max = summary["hops"][hop]["max"].as_f64().unwrap();
        assert!(max > 0.0, "hop {hop} never took any time: {summary}");
    }
    let total = summary["hops"]["total"]["max"].as_f64().unwrap();
    assert!(total >= summary["hops"]["proxies"]["max"].as_f64().unwrap());
    // The server proxy completes no samples: its client is the other proxy.
    assert_eq!(json(&pair.server.admin("/debug/hops").await)["samples"], 0);

    assert!(pair
        .client
        .admin("/debug/hops/reset")
        .await
        .contains("5 samples dropped"));
    assert_eq!(json(&pair.client.admin("/debug/hops").await)["samples"], 0);
}

/// The JSON body of a raw admin response.
fn json(response: &str) -> serde_json::Value {
    let (_, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {response:?}"));
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}
