//! App probes handed from the injector to the proxy. The injector rewrites each HTTP, TCP
//! and gRPC probe of an app container to `GET <admin>/app-probe/<container>/<kind>`, and
//! passes the original probes in `WARDEN_APP_PROBES` (a JSON map from `<container>/<kind>`);
//! the proxy's admin port runs them against the app, so kubelet probes keep working under
//! strict mTLS and default-deny policies.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The admin path prefix of rewritten probes.
pub const PATH_PREFIX: &str = "/app-probe/";
/// The environment variable carrying the original probes.
pub const ENV: &str = "WARDEN_APP_PROBES";

/// One original probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum AppProbe {
    /// An HTTP(S) GET; 200-399 is success.
    Http {
        /// `HTTP` or `HTTPS` (not verified, as kubelet does not).
        scheme: String,
        /// The host to call (default: the pod).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        /// The app port.
        port: u16,
        /// The path and query.
        path: String,
        /// Extra request headers.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
    /// A TCP connect.
    Tcp {
        /// The app port.
        port: u16,
    },
    /// A gRPC health check (`grpc.health.v1.Health/Check`); SERVING is success.
    Grpc {
        /// The app port.
        port: u16,
        /// The service name to check (empty: the server).
        #[serde(default)]
        service: String,
    },
}

/// The probes of a pod, by `<container>/<kind>`.
pub type AppProbes = BTreeMap<String, AppProbe>;

/// The admin path a rewritten probe calls.
pub fn admin_path(container: &str, kind: &str) -> String {
    format!("{PATH_PREFIX}{container}/{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_format_round_trips() {
        let mut probes = AppProbes::new();
        probes.insert(
            "app/liveness".into(),
            AppProbe::Http {
                scheme: "HTTP".into(),
                host: None,
                port: 8080,
                path: "/healthz".into(),
                headers: vec![("x-probe".into(), "1".into())],
            },
        );
        probes.insert("app/readiness".into(), AppProbe::Tcp { port: 8080 });
        probes.insert(
            "grpc/startup".into(),
            AppProbe::Grpc {
                port: 9090,
                service: String::new(),
            },
        );
        let text = serde_json::to_string(&probes).unwrap();
        assert!(
            text.contains(r#""app/readiness":{"kind":"tcp","port":8080}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<AppProbes>(&text).unwrap(), probes);
        assert_eq!(admin_path("app", "liveness"), "/app-probe/app/liveness");
    }
}
