//! What the injector puts into pods, with defaults.

use std::collections::BTreeSet;
use std::sync::Arc;

use warden_core::contract::{self, annotations};
use warden_core::TrustDomain;

use crate::grants::NamespaceGrants;

/// The `warden injector` flag (without its dashes) that allows a [`SecurityAnnotation`].
pub const ALLOW_ANNOTATION_FLAG: &str = "allow-pod-annotation";

/// A bad injector setting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not one of the annotations that [`SecurityAnnotation`] names.
    #[error(
        "{0:?} is not a security-relevant pod annotation (one of: {known})",
        known = SecurityAnnotation::known()
    )]
    UnknownAnnotation(String),
}

/// A pod annotation that weakens enforcement: honoured only when the operator allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecurityAnnotation {
    /// `warden.dev/skip-inbound-ports`: those ports get neither mTLS nor authorization.
    SkipInboundPorts,
    /// `warden.dev/skip-outbound-ports`: the app's traffic to those ports leaves unmeshed.
    SkipOutboundPorts,
    /// `warden.dev/skip-outbound-cidrs`: the app's traffic to those networks leaves unmeshed.
    SkipOutboundCidrs,
    /// `warden.dev/inbound-mode: permissive`: plaintext callers are accepted.
    PermissiveInbound,
}

impl SecurityAnnotation {
    /// Every security-relevant annotation.
    pub const ALL: [Self; 4] = [
        Self::SkipInboundPorts,
        Self::SkipOutboundPorts,
        Self::SkipOutboundCidrs,
        Self::PermissiveInbound,
    ];

    /// The annotation's key.
    pub fn key(self) -> &'static str {
        match self {
            Self::SkipInboundPorts => annotations::SKIP_INBOUND_PORTS,
            Self::SkipOutboundPorts => annotations::SKIP_OUTBOUND_PORTS,
            Self::SkipOutboundCidrs => annotations::SKIP_OUTBOUND_CIDRS,
            Self::PermissiveInbound => annotations::INBOUND_MODE,
        }
    }

    /// Whether `value` weakens enforcement (`inbound-mode: strict`, the default, does not).
    pub fn weakens(self, value: &str) -> bool {
        match self {
            Self::PermissiveInbound => value != "strict",
            _ => true,
        }
    }

    /// The keys of [`Self::ALL`], comma-separated.
    fn known() -> String {
        Self::ALL.map(Self::key).join(", ")
    }

    /// Reads an annotation key, e.g. `warden.dev/skip-inbound-ports`.
    pub fn parse(key: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|a| a.key() == key.trim())
            .ok_or_else(|| ConfigError::UnknownAnnotation(key.to_string()))
    }
}

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

/// Who installs an injected pod's interception rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interception {
    /// The `warden-init` init container (root, `NET_ADMIN` and `NET_RAW`). The default; Pod
    /// Security `baseline` and `restricted` refuse it.
    Init,
    /// Warden's CNI plugin (`warden cni`), from the node, while the pod's network is set up:
    /// no privileged container, so injected pods can meet Pod Security `restricted`. The
    /// plugin must be installed on every node.
    Cni,
}

impl Interception {
    /// Reads `init` or `cni`.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "init" => Some(Self::Init),
            "cni" => Some(Self::Cni),
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
    /// The sidecar image: its `warden-proxy` binary runs both `init` and `proxy`.
    pub image: String,
    /// The trust domain of the mesh.
    pub trust_domain: TrustDomain,
    /// The identity service, `https://host:port`.
    pub identity_url: String,
    /// The controller proxies subscribe to for their policies, `host:port`.
    pub control_plane: String,
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
    /// The security-relevant annotations pods may use anywhere (`--allow-pod-annotation`;
    /// default: none; others are ignored with a warning unless `grants` allow them).
    pub allowed_annotations: BTreeSet<SecurityAnnotation>,
    /// What MeshPolicies' `allowedAnnotations` allow, namespace by namespace.
    pub grants: Arc<NamespaceGrants>,
    /// Who installs the interception rules (default: the `warden-init` container).
    pub interception: Interception,
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
            control_plane: contract::controller_address(),
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
            allowed_annotations: BTreeSet::new(),
            grants: Arc::default(),
            interception: Interception::Init,
        }
    }

    /// Whether pods of `namespace` may use `annotation`: allowed everywhere, or by a
    /// MeshPolicy for that namespace.
    pub fn allows(&self, annotation: SecurityAnnotation, namespace: &str) -> bool {
        self.allowed_annotations.contains(&annotation)
            || self.grants.granted_by(namespace, annotation).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_annotations_parse_by_key_and_nothing_else() {
        for annotation in SecurityAnnotation::ALL {
            assert_eq!(SecurityAnnotation::parse(annotation.key()), Ok(annotation));
        }
        for bad in [
            "",
            "skip-inbound-ports",
            "warden.dev/opaque-ports",
            "warden.dev/log-level",
        ] {
            let err = SecurityAnnotation::parse(bad).unwrap_err();
            assert!(err.to_string().contains("not a security-relevant"), "{err}");
        }
        let config = InjectorConfig::new("img", "");
        assert!(
            SecurityAnnotation::ALL
                .iter()
                .all(|a| !config.allows(*a, "default")),
            "none by default"
        );
    }

    #[test]
    fn interception_is_init_unless_cni_is_asked_for() {
        assert_eq!(
            InjectorConfig::new("img", "").interception,
            Interception::Init
        );
        assert_eq!(Interception::parse("init"), Some(Interception::Init));
        assert_eq!(Interception::parse("cni"), Some(Interception::Cni));
        for bad in ["", "CNI", "iptables", "none"] {
            assert_eq!(Interception::parse(bad), None, "{bad:?}");
        }
    }
}
