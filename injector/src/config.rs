//! What the injector puts into pods, with defaults.

use warden_core::contract;
use warden_core::TrustDomain;

/// How the proxy runs beside the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SidecarMode {
    /// A native sidecar: an init container with `restartPolicy: Always` and a startup probe
    /// (Kubernetes 1.29+). The default.
    Native,
    /// A regular first container whose postStart hook holds the app until the proxy is
    /// ready (older clusters).
    Regular,
}

impl SidecarMode {
    /// Reads `native` or `regular`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "native" => Some(Self::Native),
            "regular" => Some(Self::Regular),
            _ => None,
        }
    }
}

/// CPU and memory requests and limits (Kubernetes quantities).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resources {
    /// CPU request, e.g. `10m`.
    pub cpu_request: String,
    /// Memory request, e.g. `20Mi`.
    pub memory_request: String,
    /// CPU limit (none: not throttled).
    pub cpu_limit: Option<String>,
    /// Memory limit.
    pub memory_limit: Option<String>,
}

/// The injector's settings.
#[derive(Debug, Clone)]
pub struct InjectorConfig {
    /// The Warden image (runs both `warden init` and `warden proxy`).
    pub image: String,
    /// The trust domain of the mesh.
    pub trust_domain: TrustDomain,
    /// The identity service, `https://host:port`.
    pub identity_url: String,
    /// The trust bundle (PEM) handed to every proxy.
    pub trust_anchors_pem: String,
    /// How the proxy runs unless a pod asks otherwise.
    pub default_mode: SidecarMode,
    /// The proxy's log filter unless a pod asks otherwise.
    pub log_level: String,
    /// The proxy's resources unless a pod asks otherwise.
    pub proxy_resources: Resources,
    /// The init container's resources.
    pub init_resources: Resources,
    /// Recorded in the `warden.dev/injected-version` annotation.
    pub version: String,
}

impl InjectorConfig {
    /// Defaults for `image` and `trust_anchors_pem`.
    pub fn new(image: impl Into<String>, trust_anchors_pem: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            trust_domain: TrustDomain::default(),
            identity_url: format!(
                "https://{}:{}",
                contract::identity_service_dns(),
                contract::IDENTITY_PORT
            ),
            trust_anchors_pem: trust_anchors_pem.into(),
            default_mode: SidecarMode::Native,
            log_level: "warn".into(),
            proxy_resources: Resources {
                cpu_request: "10m".into(),
                memory_request: "20Mi".into(),
                cpu_limit: None,
                memory_limit: Some("256Mi".into()),
            },
            init_resources: Resources {
                cpu_request: "10m".into(),
                memory_request: "10Mi".into(),
                cpu_limit: Some("100m".into()),
                memory_limit: Some("50Mi".into()),
            },
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}
