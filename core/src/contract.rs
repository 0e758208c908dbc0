//! The contract between the proxy, the interception rules and the injector: ports, the proxy's
//! UID, ALPN protocol names and Kubernetes keys. Nothing else hard-codes these values.

/// Outbound listener: the app's traffic to other services arrives here (bound to loopback).
pub const OUTBOUND_PORT: u16 = 7140;
/// Inbound listener: mesh traffic from other proxies arrives here.
pub const INBOUND_PORT: u16 = 7143;
/// Admin listener: `/metrics`, `/ready`, `/live` and app-probe passthrough.
pub const ADMIN_PORT: u16 = 7191;

/// The most worker threads a proxy runs (`worker_threads`; the injector caps what it
/// derives from a CPU limit to it).
pub const MAX_WORKER_THREADS: usize = 64;
/// Worker threads when none are configured: the CPUs the process may use, at most this
/// (Istio's sidecar default; a pod's CPU is its app's first, and each worker pools
/// connections of its own).
pub const DEFAULT_MAX_WORKER_THREADS: usize = 2;

/// The UID the proxy runs as; interception skips it so the proxy's own traffic is not looped.
pub const PROXY_UID: u32 = 2626;
/// The GID the proxy runs as.
pub const PROXY_GID: u32 = 2626;

/// ALPN for proxy-to-proxy HTTP/2 (app HTTP/1.1 and HTTP/2 multiplexed over pooled connections).
pub const ALPN_HTTP2: &[u8] = b"warden/h2";
/// ALPN for opaque TCP: one mTLS connection per app connection.
pub const ALPN_TCP: &[u8] = b"warden/tcp";

/// Ports proxied as opaque TCP unless a pod's `warden.dev/opaque-ports` says otherwise:
/// protocols where the server speaks first or detection cannot work (SMTP, MySQL, Galera,
/// PostgreSQL, Elasticsearch transport, Redis, memcached), as Linkerd's defaults. Callers'
/// proxies send them as opaque TCP (discovery says so) and the pod's own proxy relays them
/// unread.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// The audience of the projected ServiceAccount token the proxy presents to the CA.
pub const IDENTITY_TOKEN_AUDIENCE: &str = "warden-identity";

/// Namespace and pod label that turns injection on (`enabled`) or off (`disabled`).
pub const INJECT_LABEL: &str = "warden.dev/inject";
/// Set by the injector on every pod it meshes to the pod's ServiceAccount (overwriting any
/// value the pod came with): what the NetworkPolicies of `warden policy netpol` select.
pub const SERVICE_ACCOUNT_LABEL: &str = "warden.dev/service-account";

/// Whether `value` can be a Kubernetes label value: at most 63 characters, alphanumerics
/// with `-`, `_` and `.` inside.
pub fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && value
            .bytes()
            .next()
            .is_none_or(|b| b.is_ascii_alphanumeric())
        && value
            .bytes()
            .last()
            .is_none_or(|b| b.is_ascii_alphanumeric())
}

/// The name of the proxy container's admin port (scraped by Prometheus).
pub const ADMIN_PORT_NAME: &str = "warden-admin";
/// The proxy container's name.
pub const PROXY_CONTAINER: &str = "warden-proxy";

/// The namespace Warden's control plane (identity service, injector) runs in.
pub const SYSTEM_NAMESPACE: &str = "warden-system";
/// The identity service's ServiceAccount (and Service) name.
pub const IDENTITY_SERVICE_ACCOUNT: &str = "warden-identity";
/// The identity service's HTTPS port (`POST /v1/certify`).
pub const IDENTITY_PORT: u16 = 7150;

/// The controller's ServiceAccount (its SVID's).
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "warden-controller";
/// The controller's Service.
pub const CONTROLLER_SERVICE: &str = "warden-controller";
/// The port of the controller's proxy API (gRPC over mTLS).
pub const CONTROLLER_PORT: u16 = 7160;

/// The controller's address in a cluster: `host:port` of its Service.
pub fn controller_address() -> String {
    format!("{CONTROLLER_SERVICE}.{SYSTEM_NAMESPACE}.svc:{CONTROLLER_PORT}")
}

/// The injector's ServiceAccount, Service and webhook-serving name.
pub const INJECTOR_SERVICE: &str = "warden-injector";
/// The injector's HTTPS port (`POST /mutate`); its Service maps 443 to it.
pub const INJECTOR_PORT: u16 = 7443;

/// The DNS name the API server calls the injector by (in its serving certificate).
pub fn injector_service_dns() -> String {
    format!("{INJECTOR_SERVICE}.{SYSTEM_NAMESPACE}.svc")
}

/// The DNS name of the identity service inside the cluster.
pub fn identity_service_dns() -> String {
    format!("{IDENTITY_SERVICE_ACCOUNT}.{SYSTEM_NAMESPACE}.svc")
}

/// Environment variables the proxy reads (set by the injector from the downward API and the
/// injector's configuration). Each overrides the config file field named in its doc.
pub mod env {
    /// `trust_domain`.
    pub const TRUST_DOMAIN: &str = "WARDEN_TRUST_DOMAIN";
    /// `identity.url`: the identity service, `https://host:port`.
    pub const IDENTITY_URL: &str = "WARDEN_IDENTITY_URL";
    /// `identity.server_id`: the identity service's SPIFFE ID.
    pub const IDENTITY_SERVER_ID: &str = "WARDEN_IDENTITY_SERVER_ID";
    /// `identity.token_file`: the projected ServiceAccount token (audience warden-identity).
    pub const IDENTITY_TOKEN_FILE: &str = "WARDEN_IDENTITY_TOKEN_FILE";
    /// `identity.trust_bundle`: the PEM trust bundle.
    pub const TRUST_BUNDLE: &str = "WARDEN_TRUST_BUNDLE";
    /// `identity.namespace`: the pod's namespace (downward API).
    pub const POD_NAMESPACE: &str = "WARDEN_POD_NAMESPACE";
    /// `identity.service_account`: the pod's ServiceAccount (downward API).
    pub const POD_SERVICE_ACCOUNT: &str = "WARDEN_POD_SERVICE_ACCOUNT";
    /// The pod's name (downward API), for logs.
    pub const POD_NAME: &str = "WARDEN_POD_NAME";
    /// The pod's IP (downward API).
    pub const POD_IP: &str = "WARDEN_POD_IP";
    /// `admin.listen`.
    pub const ADMIN_LISTEN: &str = "WARDEN_ADMIN_LISTEN";
    /// `opaque_ports`: comma-separated destination ports always proxied as opaque TCP.
    pub const OPAQUE_PORTS: &str = "WARDEN_OPAQUE_PORTS";
    /// `transparent.enabled`: `true` in pods, where `warden init` redirects traffic.
    pub const TRANSPARENT: &str = "WARDEN_TRANSPARENT";
    /// `transparent.mesh_networks`: comma-separated CIDRs proxied with mTLS; other
    /// destinations pass through as egress.
    pub const MESH_NETWORKS: &str = "WARDEN_MESH_NETWORKS";
    /// `inbound_mode`: `strict` or `permissive`.
    pub const INBOUND_MODE: &str = "WARDEN_INBOUND_MODE";
    /// `authorization.policy_dir`: the mounted policy ConfigMap.
    pub const POLICY_DIR: &str = "WARDEN_POLICY_DIR";
    /// `authorization.default`: `deny` or `all-authenticated`.
    pub const DEFAULT_POLICY: &str = "WARDEN_DEFAULT_POLICY";
    /// `authorization.audit_log`: `stdout`, `off`, or a file path.
    pub const AUDIT_LOG: &str = "WARDEN_AUDIT_LOG";
    /// `authorization.audit_failure`: `allow` or `deny` (fail closed).
    pub const AUDIT_FAILURE: &str = "WARDEN_AUDIT_FAILURE";
    /// `identity.trust_anchors`: the trust bundle as PEM text (instead of a file).
    pub const TRUST_ANCHORS: &str = "WARDEN_TRUST_ANCHORS";
    /// `log`: the log filter, e.g. `warn`.
    pub const LOG: &str = "WARDEN_LOG";
    /// `worker_threads`: the proxy's worker threads (the injector sets it from the proxy's
    /// CPU limit).
    pub const WORKER_THREADS: &str = "WARDEN_WORKER_THREADS";
    /// The controller's `host:port` addresses, comma-separated (policies come from it).
    pub const CONTROL_PLANE: &str = "WARDEN_CONTROL_PLANE";
    /// The controller's SPIFFE ID, when not the default.
    pub const CONTROL_PLANE_ID: &str = "WARDEN_CONTROL_PLANE_ID";
}

/// Pod annotations the injector reads (`warden.dev/*`) and writes.
pub mod annotations {
    /// `disabled` opts a pod out (also accepted as a label).
    pub const INJECT: &str = "warden.dev/inject";
    /// Written by the injector: the Warden version injected (marks a pod as injected).
    pub const INJECTED_VERSION: &str = "warden.dev/injected-version";
    /// `native` (default: an init container with restartPolicy Always) or `regular` (a
    /// first container, the app held until the proxy is ready; for clusters before 1.29).
    pub const SIDECAR_MODE: &str = "warden.dev/sidecar-mode";
    /// The proxy's CPU request, e.g. `50m`.
    pub const PROXY_CPU_REQUEST: &str = "warden.dev/proxy-cpu-request";
    /// The proxy's CPU limit (none by default).
    pub const PROXY_CPU_LIMIT: &str = "warden.dev/proxy-cpu-limit";
    /// The proxy's memory request, e.g. `32Mi`.
    pub const PROXY_MEMORY_REQUEST: &str = "warden.dev/proxy-memory-request";
    /// The proxy's memory limit, e.g. `256Mi`.
    pub const PROXY_MEMORY_LIMIT: &str = "warden.dev/proxy-memory-limit";
    /// The proxy's log filter, e.g. `info`.
    pub const LOG_LEVEL: &str = "warden.dev/log-level";
    /// Inbound ports not intercepted, comma-separated.
    pub const SKIP_INBOUND_PORTS: &str = "warden.dev/skip-inbound-ports";
    /// Outbound ports not intercepted, comma-separated.
    pub const SKIP_OUTBOUND_PORTS: &str = "warden.dev/skip-outbound-ports";
    /// Outbound networks not intercepted, comma-separated CIDRs.
    pub const SKIP_OUTBOUND_CIDRS: &str = "warden.dev/skip-outbound-cidrs";
    /// Destination ports proxied as opaque TCP, comma-separated.
    pub const OPAQUE_PORTS: &str = "warden.dev/opaque-ports";
    /// `strict` (default) or `permissive`.
    pub const INBOUND_MODE: &str = "warden.dev/inbound-mode";
    /// kubectl's default container for `logs` and `exec` (set to the app's).
    pub const DEFAULT_CONTAINER: &str = "kubectl.kubernetes.io/default-container";
}

/// The init container that installs the interception rules.
pub const INIT_CONTAINER: &str = "warden-init";
/// Where the proxy's projected ServiceAccount token is mounted.
pub const TOKEN_MOUNT: &str = "/var/run/secrets/warden";
/// The projected token's file name.
pub const TOKEN_FILE: &str = "token";

/// Names of the iptables chains `warden init` owns (and `--remove` deletes).
pub mod chains {
    /// nat/PREROUTING jumps here: inbound TCP to the inbound port.
    pub const INBOUND: &str = "WARDEN_INBOUND";
    /// nat/OUTPUT jumps here: the app's outbound TCP to the outbound port.
    pub const OUTPUT: &str = "WARDEN_OUTPUT";
}

/// Request headers the inbound proxy sets for the app (and strips when a client sends them).
pub mod headers {
    /// The verified SPIFFE ID of the calling workload.
    pub const CLIENT_ID: &str = "x-warden-client-id";
    /// The mesh hop's TLS version and key exchange, e.g. `TLSv1.3/X25519MLKEM768`.
    pub const TLS: &str = "x-warden-tls";
    /// Set between proxies: the protocol the app's client spoke (`HTTP/1.1`), so the inbound
    /// proxy speaks the same to the app.
    pub const ORIG_PROTO: &str = "x-warden-orig-proto";
    /// The id of a request the proxy answered itself (denials, errors), for the logs.
    pub const REQUEST_ID: &str = "x-warden-request-id";
}

/// Interception installed by the CNI plugin (`warden cni`, the injector's `--interception
/// cni`) instead of the privileged `warden-init` container, so that injected pods meet Pod
/// Security `restricted`.
pub mod cni {
    /// Pod annotation written by the injector in CNI mode: [`INTERCEPTION_CNI`]. It tells
    /// people (and `kubectl`) how the pod is intercepted; the plugin itself decides from the
    /// pod's spec, which cannot change after admission, never from an annotation, which can.
    pub const INTERCEPTION_ANNOTATION: &str = "warden.dev/interception";
    /// The value of [`INTERCEPTION_ANNOTATION`] for pods whose rules the CNI plugin installs.
    pub const INTERCEPTION_CNI: &str = "cni";
    /// Environment variable of the `warden-proxy` container of a CNI-mode pod: the effective
    /// interception settings (skipped ports and networks, after the injector applied its
    /// allowed-annotations policy) as JSON. Read by the CNI plugin, not by the proxy; a
    /// container's environment is immutable, so the settings cannot be weakened after
    /// admission.
    pub const SETTINGS_ENV: &str = "WARDEN_INTERCEPTION_SETTINGS";
    /// The plugin's `type` in a CNI network configuration (the file name of the binary in the
    /// node's CNI bin directory; `warden` run under this name acts as `warden cni`).
    pub const PLUGIN_TYPE: &str = "warden-cni";
}
