//! `warden check`: is the cluster ready for Warden (`--pre`), and is the installation healthy
//! (like `linkerd check`). This file reads the facts from the API server; the verdicts are
//! the pure [`evaluate`] module's.

mod evaluate;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec, SubjectAccessReview,
    SubjectAccessReviewSpec,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_core::contract;

use evaluate::{Access, Check, DeploymentFact, Facts, MeshedNamespace, ProxyFact, Status};

/// `warden check` options.
#[derive(clap::Args)]
pub struct Args {
    /// Check a cluster before installing: version, permissions, an existing installation,
    /// Pod Security of meshed namespaces.
    #[arg(long)]
    pre: bool,
    /// The kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Check as this user (impersonation, as `kubectl --as`).
    #[arg(long = "as", value_name = "USER")]
    as_user: Option<String>,
    /// The interception mode the install will use (with --pre).
    #[arg(long, value_parser = ["init", "cni"], default_value = "init")]
    interception: String,
    /// `text` (a line per check, with a hint when it does not pass) or `json`.
    #[arg(long, value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

/// Runs the checks; exit 1 when any fails (warnings pass).
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    let facts = runtime.block_on(gather(&args))?;
    let checks = evaluate::evaluate(&facts);
    let worst = checks
        .iter()
        .map(|c| c.status)
        .max()
        .unwrap_or(Status::Pass);
    if args.output == "json" {
        let report = serde_json::json!({"status": worst, "checks": checks});
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        warden_proxy::cli::print(&describe(&checks, worst));
    }
    Ok(if worst == Status::Fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The report for people: a line per check, grouped by category.
fn describe(checks: &[Check], worst: Status) -> String {
    let mut out = String::new();
    let mut category = "";
    for c in checks {
        if c.category != category {
            category = c.category;
            out.push_str(&format!("{category}\n"));
        }
        let mark = match c.status {
            Status::Pass => "ok  ",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        };
        out.push_str(&format!("  {mark} {}: {}\n", c.name, c.message));
        if !c.hint.is_empty() {
            out.push_str(&format!("       hint: {}\n", c.hint));
        }
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "\n{}: {} passed, {} warnings, {} failed\n",
        match worst {
            Status::Pass => "healthy",
            Status::Warn => "healthy, with warnings",
            Status::Fail => "NOT healthy",
        },
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}

/// The client, and the API server's address (for messages).
async fn client(args: &Args) -> anyhow::Result<(Client, String)> {
    let mut config = match &args.kubeconfig {
        Some(path) => crate::controller::kubeconfig_file(path).await?,
        None => kube::Config::infer()
            .await
            .context("no kubeconfig found (give --kubeconfig FILE)")?,
    };
    config.read_timeout = Some(Duration::from_secs(10));
    if let Some(user) = &args.as_user {
        config.auth_info.impersonate = Some(user.clone());
    }
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).context("building the Kubernetes client")?;
    Ok((client, url))
}

/// What install creates: `(verb, group, resource, namespaced)`.
const INSTALL_PERMISSIONS: [(&str, &str, &str, bool); 14] = [
    (
        "create",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        false,
    ),
    (
        "create",
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        false,
    ),
    ("create", "rbac.authorization.k8s.io", "clusterroles", false),
    (
        "create",
        "rbac.authorization.k8s.io",
        "clusterrolebindings",
        false,
    ),
    ("create", "rbac.authorization.k8s.io", "roles", true),
    ("create", "rbac.authorization.k8s.io", "rolebindings", true),
    ("create", "", "namespaces", false),
    ("create", "apps", "deployments", true),
    ("create", "", "secrets", true),
    ("create", "", "configmaps", true),
    ("create", "", "serviceaccounts", true),
    ("create", "", "services", true),
    ("create", "policy", "poddisruptionbudgets", true),
    ("create", "networking.k8s.io", "networkpolicies", true),
];

/// A read that may be forbidden or fail: the object (or `None` when it does not exist), and
/// an unreadable entry otherwise.
fn readable<T>(what: &str, result: kube::Result<Option<T>>, facts: &mut Facts) -> Option<T> {
    match result {
        Ok(found) => found,
        Err(e) => {
            facts.unreadable.push((what.to_string(), e.to_string()));
            None
        }
    }
}

fn certs(pem: &[u8], what: &str) -> Option<Vec<CertificateDer<'static>>> {
    warden_identity::bundle::certs_from_pem(pem, what).ok()
}

async fn gather(args: &Args) -> anyhow::Result<Facts> {
    let (client, url) = client(args).await?;
    let mut facts = Facts {
        now: Some(SystemTime::now()),
        cli_version: env!("CARGO_PKG_VERSION").to_string(),
        pre: args.pre,
        planned_interception: args.interception.clone(),
        ..Facts::default()
    };
    facts.server_version = Some(match client.apiserver_version().await {
        Ok(info) => {
            let number = |s: &str| s.trim_end_matches('+').parse::<u32>().unwrap_or(0);
            Ok((number(&info.major), number(&info.minor), info.git_version))
        }
        Err(e) => Err(format!("{url}: {e}")),
    });
    if matches!(facts.server_version, Some(Err(_))) {
        return Ok(facts);
    }
    let system = contract::SYSTEM_NAMESPACE;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    facts.installed =
        readable("namespaces", namespaces.get_opt(system).await, &mut facts).is_some();
    match namespaces
        .list(&ListParams::default().labels(&format!("{}=enabled", contract::INJECT_LABEL)))
        .await
    {
        Ok(list) => {
            facts.meshed_namespaces = list
                .items
                .into_iter()
                .map(|ns| MeshedNamespace {
                    enforce: ns
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get("pod-security.kubernetes.io/enforce").cloned()),
                    name: ns.metadata.name.unwrap_or_default(),
                })
                .collect()
        }
        Err(e) => facts.unreadable.push(("namespaces".into(), e.to_string())),
    }
    if args.pre {
        let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
        for (verb, group, resource, namespaced) in INSTALL_PERMISSIONS {
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.into()),
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        namespace: namespaced.then(|| system.to_string()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                ..Default::default()
            };
            let allowed = match reviews.create(&PostParams::default(), &review).await {
                Ok(answer) => answer.status.is_some_and(|s| s.allowed),
                Err(e) => {
                    facts
                        .unreadable
                        .push(("selfsubjectaccessreviews".into(), e.to_string()));
                    false
                }
            };
            let resource = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{group}/{resource}")
            };
            facts.access.push(Access {
                verb: verb.into(),
                resource,
                allowed,
            });
        }
        return Ok(facts);
    }
    if !facts.installed {
        return Ok(facts);
    }
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for name in evaluate::CRDS {
        if let Some(crd) = readable(
            "customresourcedefinitions",
            crds.get_opt(name).await,
            &mut facts,
        ) {
            let established = crd.status.and_then(|s| s.conditions).is_some_and(|c| {
                c.iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
            });
            facts.crds.push((name.to_string(), established));
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), system);
    for name in evaluate::DEPLOYMENTS {
        if let Some(d) = readable("deployments", deployments.get_opt(name).await, &mut facts) {
            let args: Vec<String> = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.args.clone())
                .unwrap_or_default();
            if name == "warden-injector" {
                facts.injector_from_identity = args.iter().any(|a| a == "--identity-token-file");
            }
            facts.deployments.push(DeploymentFact {
                name: name.to_string(),
                desired: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
                available: d.status.and_then(|s| s.available_replicas).unwrap_or(0),
                interception: args
                    .iter()
                    .position(|a| a == "--interception")
                    .and_then(|i| args.get(i + 1).cloned()),
            });
        }
    }
    injector_access(&client, &mut facts).await;
    let webhooks: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    if let Some(config) = readable(
        "mutatingwebhookconfigurations",
        webhooks.get_opt(contract::INJECTOR_SERVICE).await,
        &mut facts,
    ) {
        facts.webhook_ca_bundle = Some(
            config
                .webhooks
                .iter()
                .flatten()
                .filter_map(|w| w.client_config.ca_bundle.as_ref())
                .filter_map(|b| certs(&b.0, "caBundle"))
                .flatten()
                .collect(),
        );
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), system);
    let secret_file = |secret: &Secret, key: &str| -> Option<Vec<u8>> {
        secret.data.as_ref()?.get(key).map(|b| b.0.clone())
    };
    if !facts.injector_from_identity {
        if let Some(tls) = readable(
            "secrets",
            secrets.get_opt("warden-injector-tls").await,
            &mut facts,
        ) {
            facts.injector_chain =
                secret_file(&tls, "tls.crt").and_then(|pem| certs(&pem, "tls.crt"));
        }
    }
    if let Some(ca) = readable(
        "secrets",
        secrets.get_opt("warden-identity-ca").await,
        &mut facts,
    ) {
        // Warden's key names, or cert-manager's when it issues the mesh issuer (Helm).
        let either = |ours: &str, cert_manager: &str| {
            secret_file(&ca, ours).or_else(|| secret_file(&ca, cert_manager))
        };
        facts.issuer = either(warden_identity::ca::ISSUER_CERT, "tls.crt")
            .and_then(|pem| certs(&pem, "issuer.crt"))
            .and_then(|c| c.into_iter().next());
        facts.ca_bundle =
            either(warden_identity::ca::BUNDLE, "ca.crt").and_then(|pem| certs(&pem, "bundle.crt"));
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), system);
    if let Some(anchors) = readable(
        "configmaps",
        config_maps.get_opt("warden-trust-anchors").await,
        &mut facts,
    ) {
        facts.anchors = anchors
            .data
            .as_ref()
            .and_then(|d| d.get("bundle.crt"))
            .and_then(|pem| certs(pem.as_bytes(), "bundle.crt"));
    }
    let leases: Api<Lease> = Api::namespaced(client.clone(), system);
    if let Some(lease) = readable(
        "leases",
        leases.get_opt(warden_controller::lease::LEASE_NAME).await,
        &mut facts,
    ) {
        if let Some(spec) = lease.spec {
            let now = k8s_openapi::jiff::Timestamp::now().as_second();
            let renewed = spec.renew_time.map_or(0, |t| t.0.as_second());
            facts.lease = Some((
                spec.holder_identity.unwrap_or_default(),
                now - renewed,
                i64::from(spec.lease_duration_seconds.unwrap_or(15)),
            ));
        }
    }
    let pods: Api<Pod> = Api::all(client.clone());
    match pods.list(&ListParams::default()).await {
        Ok(list) => {
            let meshed: Vec<(String, String, Option<String>)> = list
                .items
                .into_iter()
                .filter_map(|pod| {
                    let version = pod
                        .metadata
                        .annotations
                        .as_ref()?
                        .get(contract::annotations::INJECTED_VERSION)?
                        .clone();
                    let name = format!(
                        "{}/{}",
                        pod.metadata.namespace.unwrap_or_default(),
                        pod.metadata.name.unwrap_or_default()
                    );
                    let ip = pod.status.and_then(|s| s.pod_ip);
                    Some((name, version, ip))
                })
                .collect();
            // Ask the reachable proxies (at most 100, in parallel, 1 s each) what they say.
            let asks = meshed.iter().take(100).map(|(_, _, ip)| ready(ip.clone()));
            let answers = futures_join(asks).await;
            facts.proxies = meshed
                .into_iter()
                .enumerate()
                .map(|(i, (pod, version, _))| ProxyFact {
                    pod,
                    version,
                    ready: answers.get(i).cloned().flatten(),
                })
                .collect();
        }
        Err(e) => facts.unreadable.push(("pods".into(), e.to_string())),
    }
    Ok(facts)
}

/// Asks the API server whether the injector's ServiceAccount may do what it needs
/// ([`evaluate::INJECTOR_PERMISSIONS`]).
async fn injector_access(client: &Client, facts: &mut Facts) {
    let system = contract::SYSTEM_NAMESPACE;
    let reviews: Api<SubjectAccessReview> = Api::all(client.clone());
    for (verb, resource) in evaluate::INJECTOR_PERMISSIONS {
        let (group, name) = resource.rsplit_once('/').unwrap_or(("", resource));
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!(
                    "system:serviceaccount:{system}:{}",
                    contract::INJECTOR_SERVICE
                )),
                groups: Some(vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{system}"),
                    "system:authenticated".into(),
                ]),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(group.into()),
                    resource: Some(name.into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        match reviews.create(&PostParams::default(), &review).await {
            Ok(answer) => facts.injector_access.push(Access {
                verb: verb.into(),
                resource: resource.into(),
                allowed: answer.status.is_some_and(|s| s.allowed),
            }),
            Err(e) => {
                facts
                    .unreadable
                    .push(("subjectaccessreviews".into(), e.to_string()));
                return;
            }
        }
    }
}

/// Runs the futures concurrently, answers in order.
async fn futures_join<F: std::future::Future<Output = Option<String>> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<Option<String>> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.ok().flatten());
    }
    out
}

/// A proxy's `/ready` on its admin port, when it answers within a second.
async fn ready(ip: Option<String>) -> Option<String> {
    let ip: std::net::IpAddr = ip?.parse().ok()?;
    let addr = std::net::SocketAddr::new(ip, contract::ADMIN_PORT);
    let ask = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        tcp.write_all(b"GET /ready HTTP/1.1\r\nhost: warden-check\r\nconnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut answer = String::new();
        tcp.take(64 * 1024).read_to_string(&mut answer).await.ok()?;
        answer
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_string())
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}
