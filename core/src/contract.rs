//! The contract between the proxy, the interception rules and the injector: ports, the proxy's
//! UID, ALPN protocol names and Kubernetes keys. Nothing else hard-codes these values.

/// Outbound listener: the app's traffic to other services arrives here (bound to loopback).
pub const OUTBOUND_PORT: u16 = 7140;
/// Inbound listener: mesh traffic from other proxies arrives here.
pub const INBOUND_PORT: u16 = 7143;
/// Admin listener: `/metrics`, `/ready`, `/live` and app-probe passthrough.
pub const ADMIN_PORT: u16 = 7191;

/// The UID the proxy runs as; interception skips it so the proxy's own traffic is not looped.
pub const PROXY_UID: u32 = 2626;
/// The GID the proxy runs as.
pub const PROXY_GID: u32 = 2626;

/// ALPN for proxy-to-proxy HTTP/2 (app HTTP/1.1 and HTTP/2 multiplexed over pooled connections).
pub const ALPN_HTTP2: &[u8] = b"warden/h2";
/// ALPN for opaque TCP: one mTLS connection per app connection.
pub const ALPN_TCP: &[u8] = b"warden/tcp";

/// The audience of the projected ServiceAccount token the proxy presents to the CA.
pub const IDENTITY_TOKEN_AUDIENCE: &str = "warden-identity";

/// Namespace and pod label that turns injection on (`enabled`) or off (`disabled`).
pub const INJECT_LABEL: &str = "warden.dev/inject";

/// The namespace Warden's control plane (identity service, injector) runs in.
pub const SYSTEM_NAMESPACE: &str = "warden-system";
/// The identity service's ServiceAccount (and Service) name.
pub const IDENTITY_SERVICE_ACCOUNT: &str = "warden-identity";
/// The identity service's HTTPS port (`POST /v1/certify`).
pub const IDENTITY_PORT: u16 = 7150;

/// The DNS name of the identity service inside the cluster.
pub fn identity_service_dns() -> String {
    format!("{IDENTITY_SERVICE_ACCOUNT}.{SYSTEM_NAMESPACE}.svc")
}
