//! What `warden check` concludes from what it read: a pure function of [`Facts`] (read from
//! the API server by `check.rs`), so every verdict is tested without a cluster.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::Serialize;
use warden_core::contract;

/// Warn this long before a certificate expires.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The oldest Kubernetes minor version Warden supports, and the first with native sidecars
/// on by default.
pub const MIN_MINOR: u32 = 26;
/// Native sidecars (init containers with `restartPolicy: Always`) are on by default from here.
pub const NATIVE_SIDECAR_MINOR: u32 = 29;

/// The CRDs Warden installs.
pub const CRDS: [&str; 2] = [
    "authorizationpolicies.warden.dev",
    "meshpolicies.warden.dev",
];
/// The Deployments Warden installs.
pub const DEPLOYMENTS: [&str; 3] = ["warden-identity", "warden-injector", "warden-controller"];

/// One permission `warden install` needs, and whether the caller has it.
#[derive(Debug, Clone)]
pub struct Access {
    /// `create`, `patch`, ...
    pub verb: String,
    /// `apiGroup/resource`, e.g. `apps/deployments`.
    pub resource: String,
    /// Whether the API server said yes.
    pub allowed: bool,
}

/// What the injector's ServiceAccount needs: `(verb, apiGroup/resource)` (its MeshPolicy
/// and Namespace watches).
pub const INJECTOR_PERMISSIONS: [(&str, &str); 4] = [
    ("list", "namespaces"),
    ("watch", "namespaces"),
    ("list", "warden.dev/meshpolicies"),
    ("watch", "warden.dev/meshpolicies"),
];

/// A Deployment as read.
#[derive(Debug, Clone, Default)]
pub struct DeploymentFact {
    /// Its name.
    pub name: String,
    /// Replicas asked for.
    pub desired: i32,
    /// Replicas available.
    pub available: i32,
    /// The injector's `--interception` argument, for the injector.
    pub interception: Option<String>,
}

/// A meshed namespace and the Pod Security level it enforces.
#[derive(Debug, Clone)]
pub struct MeshedNamespace {
    /// Its name.
    pub name: String,
    /// `pod-security.kubernetes.io/enforce`, if set.
    pub enforce: Option<String>,
}

/// A meshed pod as read.
#[derive(Debug, Clone)]
pub struct ProxyFact {
    /// `namespace/name`.
    pub pod: String,
    /// The injected version (`warden.dev/injected-version`).
    pub version: String,
    /// Its proxy's `/ready` answer, when its admin port could be reached.
    pub ready: Option<String>,
}

/// Everything `warden check` read.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// When the checks ran.
    pub now: Option<SystemTime>,
    /// This CLI's version.
    pub cli_version: String,
    /// Checking before an install (`--pre`).
    pub pre: bool,
    /// The API server's `(major, minor, gitVersion)`, or why it could not be read.
    pub server_version: Option<Result<(u32, u32, String), String>>,
    /// Permissions install needs (pre only).
    pub access: Vec<Access>,
    /// Whether the `warden-system` namespace exists.
    pub installed: bool,
    /// Warden's CRDs found, and whether each is Established.
    pub crds: Vec<(String, bool)>,
    /// Warden's Deployments found.
    pub deployments: Vec<DeploymentFact>,
    /// The webhook's caBundle (PEM), if the webhook configuration exists.
    pub webhook_ca_bundle: Option<Vec<CertificateDer<'static>>>,
    /// The injector's serving chain (Secret `warden-injector-tls`), when it serves one.
    pub injector_chain: Option<Vec<CertificateDer<'static>>>,
    /// The injector gets its serving certificate from the identity service (its SVID with
    /// the webhook's name, renewed by itself): no Secret to read.
    pub injector_from_identity: bool,
    /// The issuer certificate (Secret `warden-identity-ca`).
    pub issuer: Option<CertificateDer<'static>>,
    /// The CA Secret's bundle.
    pub ca_bundle: Option<Vec<CertificateDer<'static>>>,
    /// The ConfigMap `warden-trust-anchors`' bundle.
    pub anchors: Option<Vec<CertificateDer<'static>>>,
    /// The controller Lease: `(holder, seconds since its last renewal, its duration)`.
    pub lease: Option<(String, i64, i64)>,
    /// Namespaces labelled for injection.
    pub meshed_namespaces: Vec<MeshedNamespace>,
    /// The interception mode a pre-install check assumes (`--interception`).
    pub planned_interception: String,
    /// Meshed pods.
    pub proxies: Vec<ProxyFact>,
    /// What the injector's ServiceAccount may do of what it needs (SubjectAccessReviews).
    pub injector_access: Vec<Access>,
    /// What could not be read (`what`, why); each is a failed check.
    pub unreadable: Vec<(String, String)>,
}

/// A check's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Fine.
    Pass,
    /// Works now; act before it does not.
    Warn,
    /// Broken.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// The area, e.g. `certificates`.
    pub category: &'static str,
    /// What was checked.
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub message: String,
    /// What to do (empty when passing).
    pub hint: String,
}

/// An `rbac` check of `access`: it fails naming what is not granted (then `consequence`).
fn permissions(name: &str, access: &[Access], consequence: &str, hint: &str) -> Check {
    let missing: Vec<String> = access
        .iter()
        .filter(|a| !a.allowed)
        .map(|a| format!("{} {}", a.verb, a.resource))
        .collect();
    let (status, message) = if missing.is_empty() {
        (
            Status::Pass,
            format!("all {} permissions granted", access.len()),
        )
    } else {
        (
            Status::Fail,
            format!("missing: {}{consequence}", missing.join(", ")),
        )
    };
    check("rbac", name, status, message, hint)
}

fn check(
    category: &'static str,
    name: impl Into<String>,
    status: Status,
    message: impl Into<String>,
    hint: &str,
) -> Check {
    Check {
        category,
        name: name.into(),
        status,
        message: message.into(),
        hint: if status == Status::Pass {
            String::new()
        } else {
            hint.to_string()
        },
    }
}

fn days(d: Duration) -> String {
    let days = d.as_secs() / 86400;
    if days >= 2 {
        format!("{days} days")
    } else {
        format!("{} hours", d.as_secs() / 3600)
    }
}

/// A certificate's expiry as a check: fail when expired, warn within [`EXPIRY_WARNING`].
fn expiry(
    category: &'static str,
    what: &str,
    cert: &CertificateDer<'_>,
    now: SystemTime,
    hint: &str,
) -> Check {
    let Some(not_after) = warden_identity::inspect::not_after_unix(cert) else {
        return check(
            category,
            what,
            Status::Fail,
            "not a readable certificate",
            hint,
        );
    };
    let at = UNIX_EPOCH + Duration::from_secs(not_after.max(0) as u64);
    match at.duration_since(now) {
        Err(_) => check(category, what, Status::Fail, "expired", hint),
        Ok(left) if left < EXPIRY_WARNING => check(
            category,
            what,
            Status::Warn,
            format!("expires in {}", days(left)),
            hint,
        ),
        Ok(left) => check(
            category,
            what,
            Status::Pass,
            format!("valid for {}", days(left)),
            hint,
        ),
    }
}

/// Whether `chain` is what an API server trusting `roots` accepts for the webhook's Service
/// name, as it would check it (`Err`: why not).
pub fn serves_webhook(
    chain: &[CertificateDer<'static>],
    roots: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<(), String> {
    let mut store = rustls::RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| format!("caBundle: {e}"))?;
    }
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(store),
        warden_identity::tls::crypto_provider(),
    )
    .build()
    .map_err(|e| format!("caBundle: {e}"))?;
    let (leaf, rest) = chain.split_first().ok_or("no certificate")?;
    let name = ServerName::try_from(contract::injector_service_dns()).map_err(|e| e.to_string())?;
    let now = UnixTime::since_unix_epoch(now.duration_since(UNIX_EPOCH).unwrap_or_default());
    verifier
        .verify_server_cert(leaf, rest, &name, &[], now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Every check, in report order.
pub fn evaluate(facts: &Facts) -> Vec<Check> {
    let now = facts.now.unwrap_or_else(SystemTime::now);
    let mut out = Vec::new();
    match facts
        .server_version
        .clone()
        .unwrap_or_else(|| Err("not asked".into()))
    {
        Err(e) => {
            out.push(check(
                "kubernetes-api",
                "the API server answers",
                Status::Fail,
                e.clone(),
                "check --kubeconfig, the context and the network",
            ));
            return out;
        }
        Ok((major, minor, git)) => {
            let (major, minor) = (&major, &minor);
            out.push(check(
                "kubernetes-api",
                "the API server answers",
                Status::Pass,
                format!("Kubernetes {git}"),
                "",
            ));
            let status = if *major > 1 || *minor >= NATIVE_SIDECAR_MINOR {
                Status::Pass
            } else if *minor >= MIN_MINOR {
                Status::Warn
            } else {
                Status::Fail
            };
            out.push(check(
                "kubernetes-api",
                "version and native sidecars",
                status,
                match status {
                    Status::Pass => format!("{major}.{minor}: native sidecars available"),
                    Status::Warn => format!("{major}.{minor}: no native sidecars"),
                    Status::Fail => format!("{major}.{minor} is older than 1.{MIN_MINOR}"),
                },
                "upgrade the cluster; meanwhile install with --sidecar-mode regular",
            ));
        }
    }
    for (what, why) in &facts.unreadable {
        out.push(check(
            "kubernetes-api",
            format!("read {what}"),
            Status::Fail,
            why.clone(),
            "grant the checking user get/list on it, or fix what the error says",
        ));
    }
    if facts.pre {
        out.push(permissions(
            "permissions to install",
            &facts.access,
            "",
            "install as a cluster admin (cluster-admin or equivalent)",
        ));
        out.push(check(
            "installation",
            "no installation yet",
            if facts.installed { Status::Warn } else { Status::Pass },
            if facts.installed {
                format!("namespace {} exists", contract::SYSTEM_NAMESPACE)
            } else {
                "none found".to_string()
            },
            "Warden is installed: run `warden check` without --pre; installing again with the same --ca-dir upgrades it",
        ));
        pod_security(facts, &facts.planned_interception, &mut out);
        return out;
    }
    if !facts.installed {
        out.push(check(
            "installation",
            "installed",
            Status::Fail,
            format!("namespace {} not found", contract::SYSTEM_NAMESPACE),
            "warden install | kubectl apply -f -",
        ));
        return out;
    }
    for crd in CRDS {
        let found = facts.crds.iter().find(|(name, _)| name == crd);
        let (status, message) = match found {
            None => (Status::Fail, "not found".to_string()),
            Some((_, false)) => (Status::Fail, "not established".to_string()),
            Some((_, true)) => (Status::Pass, "established".to_string()),
        };
        out.push(check(
            "crds",
            crd,
            status,
            message,
            "apply `warden controller crds` (part of `warden install`)",
        ));
    }
    for name in DEPLOYMENTS {
        let found = facts.deployments.iter().find(|d| d.name == name);
        let (status, message) = match found {
            None => (Status::Fail, "not found".to_string()),
            Some(d) if d.desired == 0 => (Status::Warn, "scaled to 0".to_string()),
            Some(d) if d.available < d.desired => (
                Status::Fail,
                format!("{} of {} replicas available", d.available, d.desired),
            ),
            Some(d) if d.available < 2 => (
                Status::Warn,
                format!("{} replica available: no redundancy", d.available),
            ),
            Some(d) => (
                Status::Pass,
                format!("{} of {} replicas available", d.available, d.desired),
            ),
        };
        out.push(check(
            "control-plane",
            name,
            status,
            message,
            &format!(
                "kubectl -n {} describe deployment {name}",
                contract::SYSTEM_NAMESPACE
            ),
        ));
    }
    out.push(permissions(
        "the injector may read MeshPolicies and Namespaces",
        &facts.injector_access,
        " (it stays unready without them)",
        "apply the install again: ClusterRole and ClusterRoleBinding warden-injector",
    ));
    let lease = match &facts.lease {
        None => check(
            "control-plane",
            "a controller writes policy status",
            Status::Fail,
            "no Lease warden-controller",
            "check the warden-controller pods' logs",
        ),
        Some((holder, age, duration)) if age > duration => check(
            "control-plane",
            "a controller writes policy status",
            Status::Fail,
            format!(
                "the Lease held by {holder} was last renewed {age}s ago (it lasts {duration}s)"
            ),
            "check the warden-controller pods' logs",
        ),
        Some((holder, age, _)) => check(
            "control-plane",
            "a controller writes policy status",
            Status::Pass,
            format!("{holder} renewed the Lease {age}s ago"),
            "",
        ),
    };
    out.push(lease);
    let webhook_hint = "install again (`warden install --ca-dir DIR | kubectl apply -f -`) so the caBundle and the injector's certificate come from one CA";
    match (&facts.webhook_ca_bundle, &facts.injector_chain) {
        (None, _) => out.push(check(
            "webhook",
            "caBundle verifies the injector",
            Status::Fail,
            "no MutatingWebhookConfiguration warden-injector",
            webhook_hint,
        )),
        (Some(roots), None) if facts.injector_from_identity => {
            // Its certificate chains to the CA's roots: the caBundle must hold every one.
            let missing = facts
                .ca_bundle
                .iter()
                .flatten()
                .filter(|r| !roots.contains(r))
                .count();
            out.push(if missing == 0 && facts.ca_bundle.is_some() {
                check(
                    "webhook",
                    "caBundle verifies the injector",
                    Status::Pass,
                    "holds the mesh's trust anchors; the injector serves its SVID (renewed by itself)",
                    "",
                )
            } else {
                check(
                    "webhook",
                    "caBundle verifies the injector",
                    Status::Fail,
                    format!("lacks {missing} trust anchor(s) of the CA: the API server would refuse the injector's certificate"),
                    webhook_hint,
                )
            });
        }
        (_, None) => out.push(check(
            "webhook",
            "caBundle verifies the injector",
            Status::Fail,
            "no Secret warden-injector-tls",
            webhook_hint,
        )),
        (Some(roots), Some(chain)) => out.push(match serves_webhook(chain, roots, now) {
            Ok(()) => check(
                "webhook",
                "caBundle verifies the injector",
                Status::Pass,
                format!("for {}", contract::injector_service_dns()),
                "",
            ),
            Err(e) => check(
                "webhook",
                "caBundle verifies the injector",
                Status::Fail,
                format!("the API server would refuse it: {e}"),
                webhook_hint,
            ),
        }),
    }
    let rotate = "warden ca rotate-issuer --dir DIR, then warden install --ca-dir DIR | kubectl apply -f - (docs/identity.md)";
    match &facts.issuer {
        Some(issuer) => out.push(expiry("certificates", "issuer", issuer, now, rotate)),
        None => out.push(check(
            "certificates",
            "issuer",
            Status::Fail,
            "no Secret warden-identity-ca with issuer.crt",
            rotate,
        )),
    }
    for (i, root) in facts.ca_bundle.iter().flatten().enumerate() {
        out.push(expiry(
            "certificates",
            format!("trust anchor {}", i + 1).as_str(),
            root,
            now,
            "rotate the trust anchor with an overlapping bundle (docs/identity.md)",
        ));
    }
    if let Some(chain) = &facts.injector_chain {
        if let Some(leaf) = chain.first() {
            out.push(expiry(
                "certificates",
                "injector serving certificate",
                leaf,
                now,
                "install again to renew it (warden install --ca-dir DIR | kubectl apply -f -)",
            ));
        }
    }
    let bundle_hint =
        "install again so the ConfigMap, the Secret and the webhook carry the same bundle";
    match (&facts.ca_bundle, &facts.anchors) {
        (Some(ca), Some(anchors)) => {
            let same = ca.len() == anchors.len() && ca.iter().all(|c| anchors.contains(c));
            out.push(check(
                "trust-bundle",
                "proxies start with the CA's bundle",
                if same { Status::Pass } else { Status::Fail },
                if same {
                    format!("{} root(s) in both", ca.len())
                } else {
                    "ConfigMap warden-trust-anchors differs from the CA Secret's bundle.crt: new pods cannot verify the identity service".to_string()
                },
                bundle_hint,
            ));
        }
        _ => out.push(check(
            "trust-bundle",
            "proxies start with the CA's bundle",
            Status::Fail,
            "ConfigMap warden-trust-anchors or the CA Secret's bundle.crt is missing",
            bundle_hint,
        )),
    }
    if let (Some(issuer), Some(roots)) = (&facts.issuer, &facts.ca_bundle) {
        let signed = roots
            .iter()
            .any(|r| warden_identity::inspect::signed_by(issuer, r));
        out.push(check(
            "trust-bundle",
            "the issuer chains to the bundle",
            if signed { Status::Pass } else { Status::Fail },
            if signed {
                "signed by a root of the bundle"
            } else {
                "signed by no root of the bundle: every proxy would refuse the SVIDs it issues"
            },
            bundle_hint,
        ));
    }
    let interception = facts
        .deployments
        .iter()
        .find(|d| d.name == "warden-injector")
        .and_then(|d| d.interception.clone())
        .unwrap_or_else(|| "init".into());
    pod_security(facts, &interception, &mut out);
    proxies(facts, &mut out);
    out
}

/// Meshed namespaces whose Pod Security level refuses what the injector adds.
fn pod_security(facts: &Facts, interception: &str, out: &mut Vec<Check>) {
    let refused: Vec<&str> = facts
        .meshed_namespaces
        .iter()
        .filter(|n| {
            interception != "cni" && matches!(n.enforce.as_deref(), Some("baseline" | "restricted"))
        })
        .map(|n| n.name.as_str())
        .collect();
    out.push(check(
        "pod-security",
        "meshed namespaces admit injected pods",
        if refused.is_empty() { Status::Pass } else { Status::Fail },
        if refused.is_empty() {
            format!("{} meshed namespace(s), interception {interception}", facts.meshed_namespaces.len())
        } else {
            format!("{} enforce baseline or restricted, which refuse warden-init (NET_ADMIN, NET_RAW)", refused.join(", "))
        },
        "install with --interception cni (Warden's CNI plugin on every node), or lower the namespace's enforce level",
    ));
}

/// Meshed pods: versions behind this CLI, and what their proxies say where reachable.
fn proxies(facts: &Facts, out: &mut Vec<Check>) {
    let behind: Vec<&ProxyFact> = facts
        .proxies
        .iter()
        .filter(|p| p.version != facts.cli_version)
        .collect();
    out.push(check(
        "proxies",
        "proxies run this version",
        if behind.is_empty() { Status::Pass } else { Status::Warn },
        if behind.is_empty() {
            format!("{} meshed pod(s) at {}", facts.proxies.len(), facts.cli_version)
        } else {
            let mut versions: Vec<String> = behind.iter().map(|p| p.version.clone()).collect();
            versions.sort();
            versions.dedup();
            format!("{} of {} meshed pod(s) run {} (this CLI is {}): {}", behind.len(), facts.proxies.len(), versions.join(", "), facts.cli_version,
                behind.iter().take(5).map(|p| p.pod.as_str()).collect::<Vec<_>>().join(", "))
        },
        "restart them (kubectl rollout restart) to run the installed version; the control plane serves one version back",
    ));
    for proxy in facts.proxies.iter().filter(|p| p.ready.is_some()) {
        let ready = proxy.ready.as_deref().unwrap_or_default();
        out.push(check(
            "proxies",
            format!("{} is ready", proxy.pod),
            if ready.starts_with("ready") {
                Status::Pass
            } else {
                Status::Fail
            },
            ready.lines().next().unwrap_or_default().to_string(),
            "see the pod's warden-proxy logs and /ready",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_core::TrustDomain;
    use warden_identity::ca::{self, InitOptions};

    /// A healthy installation's facts, certificates from a fresh CA with `issuer_ttl`.
    fn healthy(issuer_ttl: Duration) -> Facts {
        let mut options = InitOptions::new(TrustDomain::default());
        options.issuer_ttl = issuer_ttl;
        let generated = ca::generate(&options).unwrap();
        let authority = generated.authority().unwrap();
        let injector_id = warden_core::SpiffeId::for_service_account(
            &TrustDomain::default(),
            "warden-system",
            "warden-injector",
        )
        .unwrap();
        let serving = authority
            .issue_with_dns(
                &injector_id,
                &[contract::injector_service_dns()],
                Duration::from_secs(365 * 86400),
            )
            .unwrap();
        let root = generated.root_cert.der().clone();
        Facts {
            now: Some(SystemTime::now()),
            cli_version: "1.0.0".into(),
            server_version: Some(Ok((1, 34, "v1.34.2".into()))),
            installed: true,
            crds: CRDS.iter().map(|c| (c.to_string(), true)).collect(),
            deployments: DEPLOYMENTS
                .iter()
                .map(|d| DeploymentFact {
                    name: d.to_string(),
                    desired: 2,
                    available: 2,
                    interception: None,
                })
                .collect(),
            webhook_ca_bundle: Some(vec![root.clone()]),
            injector_chain: Some(serving.chain().to_vec()),
            issuer: Some(generated.issuer_cert.der().clone()),
            ca_bundle: Some(vec![root.clone()]),
            anchors: Some(vec![root]),
            lease: Some(("warden-controller-abc".into(), 3, 15)),
            meshed_namespaces: vec![MeshedNamespace {
                name: "shop".into(),
                enforce: None,
            }],
            proxies: vec![ProxyFact {
                pod: "shop/web-1".into(),
                version: "1.0.0".into(),
                ready: None,
            }],
            injector_access: super::INJECTOR_PERMISSIONS
                .iter()
                .map(|(verb, resource)| Access {
                    verb: verb.to_string(),
                    resource: resource.to_string(),
                    allowed: true,
                })
                .collect(),
            ..Facts::default()
        }
    }

    fn failing(checks: &[Check]) -> Vec<String> {
        checks
            .iter()
            .filter(|c| c.status != Status::Pass)
            .map(|c| format!("{:?} {}: {}", c.status, c.name, c.message))
            .collect()
    }

    #[test]
    fn a_healthy_installation_passes_every_check() {
        let checks = evaluate(&healthy(Duration::from_secs(365 * 86400)));
        assert_eq!(failing(&checks), Vec::<String>::new());
        assert!(checks.len() >= 14, "{checks:?}");
        assert!(checks.iter().all(|c| c.hint.is_empty()));
    }

    #[test]
    fn each_way_of_breaking_it_is_named() {
        let other = ca::generate(&InitOptions::new(TrustDomain::default())).unwrap();
        let other_root = other.root_cert.der().clone();
        type Break = fn(&mut Facts, &CertificateDer<'static>);
        let cases: Vec<(Break, &str)> = vec![
            (|f, _| f.server_version = Some(Ok((1, 28, "v1.28.0".into()))), "Warn version and native sidecars: 1.28: no native sidecars"),
            (|f, _| f.server_version = Some(Ok((1, 24, "v1.24.0".into()))), "Fail version and native sidecars: 1.24 is older than 1.26"),
            (|f, _| { f.crds.pop(); }, "Fail meshpolicies.warden.dev: not found"),
            (|f, _| f.crds[0].1 = false, "Fail authorizationpolicies.warden.dev: not established"),
            (|f, _| f.deployments[1].available = 0, "Fail warden-injector: 0 of 2 replicas available"),
            (|f, _| f.injector_access[2].allowed = false, "Fail the injector may read MeshPolicies and Namespaces: missing: list warden.dev/meshpolicies (it stays unready without them)"),
            (|f, _| { f.deployments[0].desired = 1; f.deployments[0].available = 1; }, "Warn warden-identity: 1 replica available: no redundancy"),
            (|f, _| f.lease = Some(("x".into(), 60, 15)), "Fail a controller writes policy status: the Lease held by x was last renewed 60s ago"),
            (|f, _| f.lease = None, "Fail a controller writes policy status: no Lease warden-controller"),
            (|f, root| f.webhook_ca_bundle = Some(vec![root.clone()]), "Fail caBundle verifies the injector: the API server would refuse it"),
            (|f, root| f.anchors = Some(vec![root.clone()]), "Fail proxies start with the CA's bundle: ConfigMap warden-trust-anchors differs"),
            (|f, root| f.ca_bundle = Some(vec![root.clone()]), "Fail the issuer chains to the bundle: signed by no root"),
            (|f, _| f.meshed_namespaces.push(MeshedNamespace { name: "pci".into(), enforce: Some("restricted".into()) }), "Fail meshed namespaces admit injected pods: pci enforce baseline or restricted"),
            (|f, _| f.proxies.push(ProxyFact { pod: "shop/old-1".into(), version: "0.9.0".into(), ready: None }), "Warn proxies run this version: 1 of 2 meshed pod(s) run 0.9.0 (this CLI is 1.0.0): shop/old-1"),
            (|f, _| f.proxies[0].ready = Some("not ready: waiting for a certificate".into()), "Fail shop/web-1 is ready: not ready: waiting for a certificate"),
            (|f, _| f.unreadable.push(("secrets".into(), "forbidden".into())), "Fail read secrets: forbidden"),
            (|f, _| f.installed = false, "Fail installed: namespace warden-system not found"),
        ];
        for (breaking, want) in cases {
            let mut facts = healthy(Duration::from_secs(365 * 86400));
            breaking(&mut facts, &other_root);
            let got = failing(&evaluate(&facts));
            assert!(
                got.iter().any(|g| g.starts_with(want)),
                "want {want:?} in {got:?}"
            );
        }
        // An API server that cannot be reached: only that is said.
        let mut facts = healthy(Duration::from_secs(365 * 86400));
        facts.server_version = Some(Err("connection refused".into()));
        assert_eq!(
            failing(&evaluate(&facts)),
            ["Fail the API server answers: connection refused"]
        );
    }

    #[test]
    fn an_injector_serving_its_svid_needs_the_anchors_in_the_ca_bundle() {
        let mut facts = healthy(Duration::from_secs(365 * 86400));
        facts.injector_chain = None;
        facts.injector_from_identity = true;
        assert_eq!(failing(&evaluate(&facts)), Vec::<String>::new());
        let other = ca::generate(&InitOptions::new(TrustDomain::default())).unwrap();
        facts.webhook_ca_bundle = Some(vec![other.root_cert.der().clone()]);
        let got = failing(&evaluate(&facts));
        assert!(
            got.iter()
                .any(|g| g
                    .starts_with("Fail caBundle verifies the injector: lacks 1 trust anchor(s)")),
            "{got:?}"
        );
    }

    #[test]
    fn certificates_warn_within_30_days_and_fail_once_expired() {
        let facts = healthy(Duration::from_secs(20 * 86400));
        let got = failing(&evaluate(&facts));
        assert!(
            got.contains(&"Warn issuer: expires in 19 days".to_string()),
            "{got:?}"
        );
        // The injector's certificate is clamped to the issuer's expiry.
        assert!(
            got.iter()
                .any(|g| g.starts_with("Warn injector serving certificate: expires in")),
            "{got:?}"
        );
        let mut later = facts.clone();
        later.now = Some(SystemTime::now() + Duration::from_secs(21 * 86400));
        let got = failing(&evaluate(&later));
        assert!(got.contains(&"Fail issuer: expired".to_string()), "{got:?}");
        assert!(
            got.iter()
                .any(|g| g.starts_with("Fail caBundle verifies the injector")),
            "{got:?}"
        );
    }

    #[test]
    fn pre_install_checks_permissions_existing_installs_and_pod_security() {
        let mut facts = Facts {
            pre: true,
            server_version: Some(Ok((1, 34, "v1.34.2".into()))),
            planned_interception: "init".into(),
            access: vec![
                Access {
                    verb: "create".into(),
                    resource: "apiextensions.k8s.io/customresourcedefinitions".into(),
                    allowed: true,
                },
                Access {
                    verb: "create".into(),
                    resource: "admissionregistration.k8s.io/mutatingwebhookconfigurations".into(),
                    allowed: false,
                },
            ],
            ..Facts::default()
        };
        let got = failing(&evaluate(&facts));
        assert_eq!(got, ["Fail permissions to install: missing: create admissionregistration.k8s.io/mutatingwebhookconfigurations"]);
        facts.access[1].allowed = true;
        facts.installed = true;
        facts.meshed_namespaces.push(MeshedNamespace {
            name: "pci".into(),
            enforce: Some("baseline".into()),
        });
        let got = failing(&evaluate(&facts));
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].starts_with("Warn no installation yet: namespace warden-system exists"));
        assert!(got[1].starts_with("Fail meshed namespaces admit injected pods: pci"));
        facts.planned_interception = "cni".into();
        assert_eq!(failing(&evaluate(&facts)).len(), 1);
    }
}
