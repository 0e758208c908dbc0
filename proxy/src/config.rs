//! The proxy's configuration, parsed and validated in one place: a YAML file (optional), then
//! environment overrides (the names in `warden_core::contract::env`), then defaults. Every
//! field has a default and a doc line; `warden proxy --check-config` prints the result.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use warden_core::contract::{self, env};
use warden_core::probe::{self, AppProbes};
use warden_core::{Cidr, SpiffeId, TrustDomain};

/// Why the configuration is unusable. Each names the input and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// The YAML is malformed or has unknown or mistyped fields.
    #[error(transparent)]
    Parse(#[from] warden_core::yaml::YamlError),
    /// An environment variable has a bad value.
    #[error("environment variable {name}={value:?}: {reason}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A field has a bad value.
    #[error("config field {field}: {reason}")]
    Invalid {
        /// The field's path, e.g. `outbound[1].listen`.
        field: String,
        /// What is wrong.
        reason: String,
    },
}

/// The proxy's whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// The trust domain of this workload and of the peers it accepts.
    pub trust_domain: TrustDomain,
    /// Where and how to obtain this workload's SVID.
    pub identity: IdentityConfig,
    /// The admin endpoint.
    pub admin: AdminConfig,
    /// Inbound listeners: mesh traffic for the local app arrives here (explicit mode).
    pub inbound: Vec<InboundListener>,
    /// Outbound routes: the app connects here to reach another workload (explicit mode).
    pub outbound: Vec<OutboundRoute>,
    /// Ports always proxied as opaque TCP (server-speaks-first protocols, TLS the app does
    /// itself, databases): this workload's connections to them, and its own app's ports of
    /// these numbers, whose inbound bytes are relayed unread (none: the defaults, see
    /// [`is_opaque_app_port`](Self::is_opaque_app_port)).
    pub opaque_ports: Vec<u16>,
    /// Time limits.
    pub timeouts: Timeouts,
    /// Size and count limits.
    pub limits: Limits,
    /// Transparent mode: serving connections redirected by `warden init`'s iptables rules.
    pub transparent: TransparentConfig,
    /// Whether inbound listeners accept plaintext from callers without a sidecar.
    pub inbound_mode: InboundMode,
    /// Worker threads (default: one per CPU the process may use, at most 2), each a
    /// single-threaded runtime that owns the connections given to it; at most 64.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// Authorization policies and the audit log.
    pub authorization: AuthorizationConfig,
    /// The control plane (`warden controller`) the policies come from, in Kubernetes.
    pub control_plane: ControlPlaneConfig,
}

/// Where this proxy subscribes to its pod's policies (DESIGN section 9). With no address,
/// policies come from `authorization.policy_dir` (explicit mode, local runs, the demo).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlPlaneConfig {
    /// The controller's `host:port` addresses, tried in turn (a Service name in a cluster).
    pub addresses: Vec<String>,
    /// The controller's SPIFFE ID (default: `spiffe://<td>/ns/warden-system/sa/warden-controller`).
    pub server_id: Option<SpiffeId>,
    /// This pod's name (from the downward API): the workload the proxy subscribes for.
    pub pod_name: Option<String>,
}

/// Authorization: which policies protect this workload, what decides when none applies, and
/// where decisions are recorded.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthorizationConfig {
    /// The directory of policy files (`*.yaml`), watched for changes; none: only the default.
    pub policy_dir: Option<PathBuf>,
    /// What decides when no policy applies: `deny` (zero trust), `all-authenticated`, or
    /// `audit` (allowed and recorded); a control-plane snapshot's default overrides it.
    pub default: warden_core::policy::evaluate::DefaultPolicy,
    /// Where audit records go: `stdout` (collected by the node's log pipeline), `off`, or a
    /// file (appended; each run of the proxy is a chain of its own).
    pub audit_log: String,
    /// Record allowed decisions too (denials and audits always are).
    pub log_allowed: bool,
    /// A request whose record cannot be kept (full queue, failed write): `allow` (served,
    /// the loss counted) or `deny` (refused with 503 and the proxy not ready: fail closed).
    pub audit_failure: crate::audit::AuditFailure,
    /// A signed checkpoint after this many records...
    pub audit_checkpoint_records: u64,
    /// ...or this long after the last one, whichever is first.
    #[serde(with = "human_duration")]
    pub audit_checkpoint_interval: Duration,
    /// Records waiting to be written, at most (a full queue drops, or refuses, the next).
    pub audit_queue: usize,
    /// How often the policy directory is checked for changes.
    #[serde(with = "human_duration")]
    pub reload_interval: Duration,
}

impl Default for AuthorizationConfig {
    fn default() -> Self {
        Self {
            policy_dir: None,
            default: Default::default(),
            audit_log: "stdout".into(),
            log_allowed: false,
            audit_failure: Default::default(),
            audit_checkpoint_records: 1000,
            audit_checkpoint_interval: Duration::from_secs(10),
            audit_queue: 8192,
            reload_interval: Duration::from_secs(2),
        }
    }
}

/// What the inbound listeners do with plaintext (non-TLS) connections.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum InboundMode {
    /// Refuse them: only mTLS from peer proxies (the default, zero trust).
    #[default]
    Strict,
    /// Accept them as an unauthenticated caller, subject to policy (while adopting the mesh).
    Permissive,
}

/// Transparent mode (pods): the iptables rules send inbound TCP to `inbound_port` and the
/// app's outbound TCP to `outbound_port`; the original destination comes from conntrack.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransparentConfig {
    /// Serve the redirected ports.
    pub enabled: bool,
    /// Where redirected inbound TCP arrives (all addresses, IPv4 and IPv6).
    pub inbound_port: u16,
    /// Where the app's redirected outbound TCP arrives (loopback only).
    pub outbound_port: u16,
    /// Destinations in these networks are meshed (mTLS to their proxy); others pass through
    /// as plain TCP egress, counted separately.
    pub mesh_networks: Vec<Cidr>,
}

impl Default for TransparentConfig {
    fn default() -> Self {
        let private = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fd00::/8"];
        Self {
            enabled: false,
            inbound_port: contract::INBOUND_PORT,
            outbound_port: contract::OUTBOUND_PORT,
            mesh_networks: private
                .iter()
                .map(|c| Cidr::parse(c).expect("valid built-in networks"))
                .collect(),
        }
    }
}

impl TransparentConfig {
    /// Whether `ip` is a meshed destination.
    pub fn is_mesh(&self, ip: std::net::IpAddr) -> bool {
        self.mesh_networks.iter().any(|net| net.contains(ip))
    }
}

/// Where and how to obtain this workload's SVID.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// The identity service, `https://host:port`.
    pub url: String,
    /// The identity service's SPIFFE ID (default: `spiffe://<td>/ns/warden-system/sa/warden-identity`).
    pub server_id: Option<SpiffeId>,
    /// The token presented to the identity service, re-read at every renewal.
    pub token_file: PathBuf,
    /// The PEM trust bundle (roots) of the trust domain.
    pub trust_bundle: PathBuf,
    /// The trust bundle as PEM text; when set, used instead of `trust_bundle` (the injector
    /// passes it in the environment so pods need no extra volume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_anchors: Option<String>,
    /// The identity this workload must be issued; default from `namespace` and
    /// `service_account` when both are set, else whatever the CA issues.
    pub expected_id: Option<SpiffeId>,
    /// The pod's namespace (from the downward API).
    pub namespace: Option<String>,
    /// The pod's ServiceAccount (from the downward API).
    pub service_account: Option<String>,
}

/// The admin endpoint (`/live`, `/ready`, `/metrics`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The app's original probes, run on `GET /app-probe/<container>/<kind>` (set by the
    /// injector, which rewrites the pod's probes to call the admin port).
    #[serde(skip_serializing_if = "AppProbes::is_empty")]
    pub app_probes: AppProbes,
    /// Where app probes connect: the pod's IP (kubelet's target); default 127.0.0.1.
    pub app_probe_host: Option<IpAddr>,
}

/// How the inbound proxy speaks HTTP to the app.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// As the calling app's client did (HTTP/1.1 for HTTP/1 callers, h2c for HTTP/2 callers).
    Auto,
    /// Always HTTP/1.1.
    Http1,
    /// Always HTTP/2 over cleartext (prior knowledge), e.g. for gRPC servers.
    H2c,
}

/// One inbound listener: mTLS from peer proxies here, forwarded to `app`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InboundListener {
    /// Where peer proxies connect.
    pub listen: SocketAddr,
    /// The local app.
    pub app: SocketAddr,
    /// How to speak HTTP to the app (default `auto`).
    #[serde(default = "default_app_protocol")]
    pub protocol: AppProtocol,
}

fn default_app_protocol() -> AppProtocol {
    AppProtocol::Auto
}

/// How the outbound proxy treats an app connection.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RouteProtocol {
    /// Detect HTTP/1 or HTTP/2 from the first bytes; anything else is opaque TCP.
    Detect,
    /// Always opaque TCP, no detection (server-speaks-first protocols).
    Opaque,
}

/// One outbound route: the app connects to `listen`, the proxy originates mTLS to
/// `destination` (a peer proxy's inbound listener).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutboundRoute {
    /// Where the app connects (plaintext, normally loopback).
    pub listen: SocketAddr,
    /// The peer proxy's inbound address.
    pub destination: SocketAddr,
    /// The SPIFFE ID the destination must present (default: any identity of the trust domain).
    #[serde(default)]
    pub identity: Option<SpiffeId>,
    /// Protocol handling (default `detect`).
    #[serde(default = "default_route_protocol")]
    pub protocol: RouteProtocol,
}

fn default_route_protocol() -> RouteProtocol {
    RouteProtocol::Detect
}

/// Time limits; each bounds a wait so nothing hangs forever.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// How long to wait for an app's first bytes before treating the connection as opaque.
    #[serde(with = "human_duration")]
    pub detect: Duration,
    /// TCP connect to a peer proxy or the app (then 504/reset).
    #[serde(with = "human_duration")]
    pub connect: Duration,
    /// A TLS handshake with a peer.
    #[serde(with = "human_duration")]
    pub handshake: Duration,
    /// Response headers after a request was sent (then 504). Bodies may stream longer.
    #[serde(with = "human_duration")]
    pub response: Duration,
    /// A connection with no bytes either way is closed after this, and an HTTP/2 stream with
    /// no activity either way (a peer that never opens its flow-control window) is reset.
    #[serde(with = "human_duration")]
    pub idle: Duration,
    /// After SIGTERM, how long in-flight requests and connections may take to finish.
    #[serde(with = "human_duration")]
    pub shutdown_grace: Duration,
}

/// Size and count limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Connections served at once per listener; more are refused.
    pub max_connections: usize,
    /// Largest HTTP header section accepted (HTTP/1 buffer and HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
    /// Connections to the admin port at once (probes and scrapes); more are closed at once,
    /// so exhausting it never touches the mesh listeners.
    pub max_admin_connections: usize,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            url: format!(
                "https://{}:{}",
                contract::identity_service_dns(),
                contract::IDENTITY_PORT
            ),
            server_id: None,
            token_file: PathBuf::from("/var/run/secrets/warden/token"),
            trust_bundle: PathBuf::from("/var/run/warden/bundle.crt"),
            trust_anchors: None,
            expected_id: None,
            namespace: None,
            service_account: None,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], contract::ADMIN_PORT)),
            app_probes: AppProbes::new(),
            app_probe_host: None,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            detect: Duration::from_secs(2),
            connect: Duration::from_secs(3),
            handshake: Duration::from_secs(5),
            response: Duration::from_secs(60),
            idle: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_header_bytes: 64 * 1024,
            max_concurrent_streams: 1000,
            max_admin_connections: 64,
        }
    }
}

mod human_duration {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&warden_core::duration::format_duration(*d))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        warden_core::duration::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

impl ProxyConfig {
    /// The ports the proxy itself serves in transparent mode (inbound, outbound, admin):
    /// never an app's original destination.
    pub fn own_ports(&self) -> [u16; 3] {
        [
            self.transparent.inbound_port,
            self.transparent.outbound_port,
            self.admin.listen.port(),
        ]
    }

    /// Whether the app's `port` takes opaque TCP relayed unread: the ports this pod declares
    /// opaque (`opaque_ports`, its `warden.dev/opaque-ports`), or if it declares none the
    /// defaults, as discovery tells callers.
    pub fn is_opaque_app_port(&self, port: u16) -> bool {
        if self.opaque_ports.is_empty() {
            warden_core::contract::DEFAULT_OPAQUE_PORTS.contains(&port)
        } else {
            self.opaque_ports.contains(&port)
        }
    }

    /// Parses YAML text; `source_name` names it in errors. Unknown fields are errors.
    pub fn from_yaml(text: &str, source_name: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        Ok(warden_core::yaml::from_str(text, source_name)?)
    }

    /// Loads the file (if any), applies environment overrides from `vars`, and validates.
    /// `vars` is the process environment in production and a map in tests.
    pub fn load(
        file: Option<&std::path::Path>,
        vars: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Self::from_yaml(&text, &path.display().to_string())?
            }
            None => Self::default(),
        };
        config.apply_env(vars)?;
        config.validate()?;
        // Resolve what is derived, so what is printed and used is what is in force.
        config.identity.server_id = Some(config.identity_server_id());
        config.identity.expected_id = config.expected_id();
        Ok(config)
    }

    /// Applies the environment overrides that are set.
    pub fn apply_env(&mut self, vars: &BTreeMap<String, String>) -> Result<(), ConfigError> {
        fn parsed<T, E: std::fmt::Display>(
            name: &'static str,
            value: &str,
            parse: impl FnOnce(&str) -> Result<T, E>,
        ) -> Result<T, ConfigError> {
            parse(value).map_err(|e| ConfigError::Env {
                name,
                value: value.to_string(),
                reason: e.to_string(),
            })
        }
        for (name, value) in vars {
            let value = value.as_str();
            match name.as_str() {
                env::TRUST_DOMAIN => {
                    self.trust_domain = parsed(env::TRUST_DOMAIN, value, TrustDomain::parse)?
                }
                env::IDENTITY_URL => self.identity.url = value.to_string(),
                env::IDENTITY_SERVER_ID => {
                    self.identity.server_id =
                        Some(parsed(env::IDENTITY_SERVER_ID, value, SpiffeId::parse)?)
                }
                env::IDENTITY_TOKEN_FILE => self.identity.token_file = PathBuf::from(value),
                env::TRUST_BUNDLE => self.identity.trust_bundle = PathBuf::from(value),
                env::TRUST_ANCHORS => self.identity.trust_anchors = Some(value.to_string()),
                env::POD_IP => {
                    self.admin.app_probe_host =
                        Some(parsed(env::POD_IP, value, str::parse::<IpAddr>)?)
                }
                probe::ENV => {
                    self.admin.app_probes =
                        parsed(probe::ENV, value, |v| serde_json::from_str::<AppProbes>(v))?
                }
                env::POD_NAMESPACE => self.identity.namespace = Some(value.to_string()),
                env::POD_NAME => self.control_plane.pod_name = Some(value.to_string()),
                env::CONTROL_PLANE => {
                    self.control_plane.addresses = value
                        .split(',')
                        .map(str::trim)
                        .filter(|a| !a.is_empty())
                        .map(str::to_string)
                        .collect()
                }
                env::CONTROL_PLANE_ID => {
                    self.control_plane.server_id =
                        Some(parsed(env::CONTROL_PLANE_ID, value, SpiffeId::parse)?)
                }
                env::POD_SERVICE_ACCOUNT => self.identity.service_account = Some(value.to_string()),
                env::ADMIN_LISTEN => {
                    self.admin.listen = parsed(env::ADMIN_LISTEN, value, str::parse::<SocketAddr>)?
                }
                env::OPAQUE_PORTS => {
                    self.opaque_ports = parsed(env::OPAQUE_PORTS, value, |v| {
                        v.split(',')
                            .map(str::trim)
                            .filter(|p| !p.is_empty())
                            .map(str::parse::<u16>)
                            .collect::<Result<Vec<_>, _>>()
                    })?
                }
                env::TRANSPARENT => {
                    self.transparent.enabled = parsed(env::TRANSPARENT, value, str::parse::<bool>)?
                }
                env::MESH_NETWORKS => {
                    self.transparent.mesh_networks =
                        parsed(env::MESH_NETWORKS, value, warden_core::cidr::parse_list)?
                }
                env::POLICY_DIR => self.authorization.policy_dir = Some(PathBuf::from(value)),
                env::DEFAULT_POLICY => {
                    self.authorization.default = parsed(env::DEFAULT_POLICY, value, |v| match v {
                        "deny" => Ok(warden_core::policy::evaluate::DefaultPolicy::Deny),
                        "all-authenticated" => {
                            Ok(warden_core::policy::evaluate::DefaultPolicy::AllAuthenticated)
                        }
                        "audit" => Ok(warden_core::policy::evaluate::DefaultPolicy::Audit),
                        _ => Err("expected deny, all-authenticated or audit"),
                    })?
                }
                env::AUDIT_LOG => self.authorization.audit_log = value.to_string(),
                env::AUDIT_FAILURE => {
                    self.authorization.audit_failure =
                        parsed(env::AUDIT_FAILURE, value, |v| match v {
                            "allow" => Ok(crate::audit::AuditFailure::Allow),
                            "deny" => Ok(crate::audit::AuditFailure::Deny),
                            _ => Err("expected allow or deny"),
                        })?
                }
                env::WORKER_THREADS => {
                    self.worker_threads =
                        Some(parsed(env::WORKER_THREADS, value, str::parse::<usize>)?)
                }
                env::INBOUND_MODE => {
                    self.inbound_mode = parsed(env::INBOUND_MODE, value, |v| match v {
                        "strict" => Ok(InboundMode::Strict),
                        "permissive" => Ok(InboundMode::Permissive),
                        _ => Err("expected strict or permissive"),
                    })?
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The pod an audit chain names: `namespace/name` from the downward API, else the host
    /// name (outside Kubernetes).
    pub fn audit_pod(&self) -> String {
        let name = self.control_plane.pod_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        });
        match &self.identity.namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name,
        }
    }

    /// How many workers the proxy runs: `worker_threads`, or one per CPU the process may use
    /// (its cgroup's CPU limit counts) up to [`contract::DEFAULT_MAX_WORKER_THREADS`].
    pub fn workers(&self) -> usize {
        self.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(1, std::num::NonZeroUsize::get)
                .min(contract::DEFAULT_MAX_WORKER_THREADS)
        })
    }

    /// Checks what types alone cannot: positive limits, no address used twice, a usable URL,
    /// and an expected identity consistent with the namespace and ServiceAccount.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &str, reason: String| ConfigError::Invalid {
            field: field.to_string(),
            reason,
        };
        warden_identity::http::HttpsTarget::parse(&self.identity.url)
            .map_err(|e| invalid("identity.url", e.to_string()))?;
        for (field, value) in [
            ("timeouts.detect", self.timeouts.detect),
            ("timeouts.connect", self.timeouts.connect),
            ("timeouts.handshake", self.timeouts.handshake),
            ("timeouts.response", self.timeouts.response),
            ("timeouts.idle", self.timeouts.idle),
        ] {
            if value.is_zero() {
                return Err(invalid(field, "must be greater than zero".into()));
            }
        }
        if self.worker_threads == Some(0) {
            return Err(invalid("worker_threads", "must be at least 1".into()));
        }
        if self
            .worker_threads
            .is_some_and(|n| n > contract::MAX_WORKER_THREADS)
        {
            return Err(invalid(
                "worker_threads",
                format!("must be at most {}", contract::MAX_WORKER_THREADS),
            ));
        }
        if self.authorization.reload_interval.is_zero() {
            return Err(invalid(
                "authorization.reload_interval",
                "must be greater than zero".into(),
            ));
        }
        for (field, zero) in [
            (
                "authorization.audit_checkpoint_records",
                self.authorization.audit_checkpoint_records == 0,
            ),
            (
                "authorization.audit_checkpoint_interval",
                self.authorization.audit_checkpoint_interval.is_zero(),
            ),
            (
                "authorization.audit_queue",
                self.authorization.audit_queue == 0,
            ),
        ] {
            if zero {
                return Err(invalid(field, "must be greater than zero".into()));
            }
        }
        if self.authorization.audit_log.is_empty() {
            return Err(invalid(
                "authorization.audit_log",
                "use stdout, off, or a file path".into(),
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(invalid(
                "limits.max_connections",
                "must be at least 1".into(),
            ));
        }
        if self.limits.max_header_bytes < 1024 {
            return Err(invalid(
                "limits.max_header_bytes",
                "must be at least 1024".into(),
            ));
        }
        if self.limits.max_concurrent_streams == 0 {
            return Err(invalid(
                "limits.max_concurrent_streams",
                "must be at least 1".into(),
            ));
        }
        if self.limits.max_admin_connections == 0 {
            return Err(invalid(
                "limits.max_admin_connections",
                "must be at least 1".into(),
            ));
        }
        if let Some(i) = self.opaque_ports.iter().position(|p| *p == 0) {
            return Err(invalid(
                &format!("opaque_ports[{i}]"),
                "port 0 is not a port".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut claim = |field: String, addr: SocketAddr| {
            if addr.port() != 0 && !seen.insert(addr) {
                return Err(invalid(
                    &field,
                    format!("{addr} is already used by another listener"),
                ));
            }
            Ok(())
        };
        claim("admin.listen".into(), self.admin.listen)?;
        for (i, l) in self.inbound.iter().enumerate() {
            claim(format!("inbound[{i}].listen"), l.listen)?;
        }
        for (i, r) in self.outbound.iter().enumerate() {
            claim(format!("outbound[{i}].listen"), r.listen)?;
        }
        if self.transparent.enabled {
            let t = &self.transparent;
            if t.inbound_port == t.outbound_port || t.inbound_port == 0 || t.outbound_port == 0 {
                return Err(invalid(
                    "transparent",
                    "inbound_port and outbound_port must be distinct, non-zero ports".into(),
                ));
            }
            claim(
                "transparent.inbound_port".into(),
                SocketAddr::from(([0, 0, 0, 0], t.inbound_port)),
            )?;
            claim(
                "transparent.outbound_port".into(),
                SocketAddr::from(([127, 0, 0, 1], t.outbound_port)),
            )?;
        }
        for (field, value) in [
            ("identity.namespace", &self.identity.namespace),
            ("identity.service_account", &self.identity.service_account),
        ] {
            if let Some(v) = value {
                SpiffeId::for_service_account(&self.trust_domain, v, "x").map_err(|e| {
                    invalid(field, format!("{v:?} is not a usable name: {}", e.reason))
                })?;
            }
        }
        if !self.control_plane.addresses.is_empty() {
            if self.authorization.policy_dir.is_some() {
                return Err(invalid(
                    "control_plane.addresses",
                    "policies come from the controller or from authorization.policy_dir, not both"
                        .into(),
                ));
            }
            if self
                .control_plane
                .pod_name
                .as_deref()
                .is_none_or(str::is_empty)
            {
                return Err(invalid(
                    "control_plane.pod_name",
                    format!("needed with a control plane (set {})", env::POD_NAME),
                ));
            }
            for (i, address) in self.control_plane.addresses.iter().enumerate() {
                let port = address.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
                if !matches!(port, Some(Ok(p)) if p != 0) {
                    return Err(invalid(
                        &format!("control_plane.addresses[{i}]"),
                        format!("{address:?} is not host:port"),
                    ));
                }
            }
        }
        if let (Some(expected), Some(derived)) = (&self.identity.expected_id, self.derived_id()) {
            if expected != &derived {
                return Err(invalid(
                    "identity.expected_id",
                    format!("{expected} disagrees with namespace/service_account ({derived})"),
                ));
            }
        }
        Ok(())
    }

    fn derived_id(&self) -> Option<SpiffeId> {
        let (ns, sa) = (
            self.identity.namespace.as_ref()?,
            self.identity.service_account.as_ref()?,
        );
        SpiffeId::for_service_account(&self.trust_domain, ns, sa).ok()
    }

    /// The identity this workload must be issued, if known.
    pub fn expected_id(&self) -> Option<SpiffeId> {
        self.identity
            .expected_id
            .clone()
            .or_else(|| self.derived_id())
    }

    /// The controller's SPIFFE ID.
    pub fn control_plane_id(&self) -> SpiffeId {
        self.control_plane.server_id.clone().unwrap_or_else(|| {
            SpiffeId::for_service_account(
                &self.trust_domain,
                contract::SYSTEM_NAMESPACE,
                contract::CONTROLLER_SERVICE_ACCOUNT,
            )
            .expect("the system namespace and account are valid names")
        })
    }

    /// The identity service's SPIFFE ID.
    pub fn identity_server_id(&self) -> SpiffeId {
        self.identity.server_id.clone().unwrap_or_else(|| {
            SpiffeId::for_service_account(
                &self.trust_domain,
                contract::SYSTEM_NAMESPACE,
                contract::IDENTITY_SERVICE_ACCOUNT,
            )
            .expect("the system namespace and account are valid names")
        })
    }

    /// The resolved configuration as YAML (what `--check-config` prints).
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const FULL: &str = r#"
trust_domain: example.org
identity:
  url: https://127.0.0.1:7150
  token_file: /tmp/token
  trust_bundle: /tmp/bundle.crt
  namespace: shop
  service_account: web
admin:
  listen: 127.0.0.1:7191
inbound:
  - listen: 127.0.0.1:7143
    app: 127.0.0.1:8080
  - listen: 127.0.0.1:7144
    app: 127.0.0.1:9090
    protocol: h2c
outbound:
  - listen: 127.0.0.1:9000
    destination: 10.0.0.2:7143
    identity: spiffe://example.org/ns/shop/sa/db
  - listen: 127.0.0.1:9001
    destination: 10.0.0.3:7143
    protocol: opaque
opaque_ports: [3306, 5432]
timeouts:
  detect: 500ms
  response: 30s
limits:
  max_connections: 100
"#;

    #[test]
    fn a_full_file_parses_with_defaults_for_the_rest() {
        let c = ProxyConfig::from_yaml(FULL, "proxy.yaml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.trust_domain.as_str(), "example.org");
        assert_eq!(c.inbound[0].protocol, AppProtocol::Auto);
        assert_eq!(c.inbound[1].protocol, AppProtocol::H2c);
        assert_eq!(c.outbound[1].protocol, RouteProtocol::Opaque);
        assert_eq!(c.timeouts.detect, Duration::from_millis(500));
        assert_eq!(c.timeouts.connect, Duration::from_secs(3), "default kept");
        assert_eq!(c.limits.max_header_bytes, 64 * 1024, "default kept");
        assert_eq!(
            c.expected_id().unwrap().as_str(),
            "spiffe://example.org/ns/shop/sa/web"
        );
        assert_eq!(
            c.identity_server_id().as_str(),
            "spiffe://example.org/ns/warden-system/sa/warden-identity"
        );
        // The printed config reads back to the same thing.
        let again = ProxyConfig::from_yaml(&c.to_yaml(), "printed").unwrap();
        assert_eq!(again, c);
        assert_eq!(
            ProxyConfig::from_yaml("", "empty").unwrap(),
            ProxyConfig::default()
        );
    }

    #[test]
    fn bad_files_name_the_field() {
        let cases = [
            ("trust_domain: Example.org", "invalid SPIFFE ID"),
            ("bogus: 1", "bogus"),
            ("timeouts: {detect: 5 parsecs}", "invalid duration"),
            (
                "inbound: [{listen: nowhere, app: 127.0.0.1:1}]",
                "invalid socket address syntax at line 1, column 20",
            ),
            (
                "outbound: [{listen: 127.0.0.1:1, destination: 127.0.0.1:2, identity: spiffe://x}]",
                "has no path",
            ),
            (
                "inbound: [{listen: 127.0.0.1:1, app: 127.0.0.1:2, protocol: gopher}]",
                "gopher",
            ),
            ("limits: {max_connections: -1}", "max_connections"),
            ("identity: [1, 2]", "identity"),
        ];
        for (yaml, needle) in cases {
            let err = ProxyConfig::from_yaml(yaml, "proxy.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("proxy.yaml: "), "{yaml}: {err}");
            assert!(err.contains(needle), "{yaml}: {err}");
        }
    }

    #[test]
    fn validation_table() {
        let cases: Vec<(&str, &str)> = vec![
            ("timeouts: {connect: 0s}", "config field timeouts.connect: must be greater than zero"),
            ("limits: {max_connections: 0}", "config field limits.max_connections"),
            ("limits: {max_header_bytes: 10}", "config field limits.max_header_bytes"),
            ("opaque_ports: [0]", "config field opaque_ports[0]"),
            ("worker_threads: 0", "config field worker_threads: must be at least 1"),
            ("worker_threads: 65", "config field worker_threads: must be at most 64"),
            ("identity: {url: 'http://x'}", "config field identity.url"),
            (
                "admin: {listen: '127.0.0.1:9000'}\noutbound: [{listen: '127.0.0.1:9000', destination: '127.0.0.1:1'}]",
                "config field outbound[0].listen: 127.0.0.1:9000 is already used",
            ),
            (
                "identity: {namespace: shop, service_account: web, expected_id: 'spiffe://cluster.local/ns/shop/sa/db'}",
                "config field identity.expected_id",
            ),
            ("identity: {namespace: 'a/b'}", "config field identity.namespace"),
            (
                "control_plane: {addresses: ['c:7160']}",
                "config field control_plane.pod_name: needed with a control plane (set WARDEN_POD_NAME)",
            ),
            (
                "control_plane: {addresses: ['c:7160'], pod_name: web-1}\nauthorization: {policy_dir: /p}",
                "config field control_plane.addresses: policies come from the controller or from authorization.policy_dir, not both",
            ),
            (
                "control_plane: {addresses: ['c:7160', 'nowhere'], pod_name: web-1}",
                "config field control_plane.addresses[1]: \"nowhere\" is not host:port",
            ),
            (
                "control_plane: {addresses: ['c:0'], pod_name: web-1}",
                "config field control_plane.addresses[0]",
            ),
        ];
        for (yaml, want) in cases {
            let c = ProxyConfig::from_yaml(yaml, "t").unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("proxy.yaml");
        std::fs::write(&path, FULL).unwrap();
        let env = vars(&[
            (env::TRUST_DOMAIN, "cluster.local"),
            (env::IDENTITY_URL, "https://id:7150"),
            (env::POD_NAMESPACE, "prod"),
            (env::POD_SERVICE_ACCOUNT, "api"),
            (env::OPAQUE_PORTS, "25, 6379"),
            (env::ADMIN_LISTEN, "0.0.0.0:17191"),
            (env::TRANSPARENT, "true"),
            (env::MESH_NETWORKS, "10.213.0.0/16,fd00:213::/64"),
            (env::INBOUND_MODE, "permissive"),
            ("UNRELATED", "ignored"),
        ]);
        let c = ProxyConfig::load(Some(&path), &env).unwrap();
        assert_eq!(c.trust_domain.as_str(), "cluster.local");
        assert_eq!(c.identity.url, "https://id:7150");
        assert_eq!(
            c.expected_id().unwrap().as_str(),
            "spiffe://cluster.local/ns/prod/sa/api"
        );
        assert_eq!(c.opaque_ports, vec![25, 6379]);
        assert_eq!(c.admin.listen.port(), 17191);
        assert!(c.transparent.enabled);
        assert!(c.transparent.is_mesh("10.213.0.2".parse().unwrap()));
        assert!(!c.transparent.is_mesh("10.214.0.2".parse().unwrap()));
        assert_eq!(c.inbound_mode, InboundMode::Permissive);
        let err = ProxyConfig::load(None, &vars(&[(env::INBOUND_MODE, "lax")])).unwrap_err();
        assert!(
            err.to_string().contains("expected strict or permissive"),
            "{err}"
        );

        let bad = vars(&[(env::OPAQUE_PORTS, "25,smtp")]);
        let err = ProxyConfig::load(None, &bad).unwrap_err().to_string();
        assert!(
            err.starts_with("environment variable WARDEN_OPAQUE_PORTS=\"25,smtp\""),
            "{err}"
        );
        let err = ProxyConfig::load(Some(&dir.path().join("nope.yaml")), &BTreeMap::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope.yaml"), "{err}");
    }

    #[test]
    fn the_injectors_environment_is_understood() {
        let env = vars(&[
            (env::TRUST_ANCHORS, "-----BEGIN CERTIFICATE-----\n..."),
            (env::POD_IP, "10.0.3.7"),
            (probe::ENV, r#"{"web/liveness":{"kind":"tcp","port":8080}}"#),
        ]);
        let c = ProxyConfig::load(None, &env).unwrap();
        assert!(c.identity.trust_anchors.unwrap().starts_with("-----BEGIN"));
        let controller = vars(&[
            (env::CONTROL_PLANE, "a.svc:7160, b.svc:7160"),
            (env::POD_NAME, "web-1"),
            (env::DEFAULT_POLICY, "audit"),
        ]);
        let cp = ProxyConfig::load(None, &controller).unwrap();
        assert_eq!(cp.control_plane.addresses, ["a.svc:7160", "b.svc:7160"]);
        assert_eq!(cp.control_plane.pod_name.as_deref(), Some("web-1"));
        assert_eq!(
            cp.control_plane_id().as_str(),
            "spiffe://cluster.local/ns/warden-system/sa/warden-controller"
        );
        assert_eq!(
            cp.authorization.default,
            warden_core::policy::evaluate::DefaultPolicy::Audit
        );
        assert_eq!(c.admin.app_probe_host, Some("10.0.3.7".parse().unwrap()));
        assert_eq!(
            c.admin.app_probes.get("web/liveness"),
            Some(&warden_core::probe::AppProbe::Tcp { port: 8080 })
        );
        for (name, value, reason) in [
            (env::POD_IP, "10.0.3", "invalid IP address"),
            (
                probe::ENV,
                r#"{"web/liveness":{"kind":"exec"}}"#,
                "unknown variant",
            ),
        ] {
            let err = ProxyConfig::load(None, &vars(&[(name, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("environment variable {name}=")),
                "{err}"
            );
            assert!(err.contains(reason), "{err}");
        }
    }
}
