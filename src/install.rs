//! `warden install`: prints the complete control-plane manifests (the kustomize base in
//! `deploy/kubernetes/base`, plus the CA Secret, the trust anchors and the webhook's caBundle),
//! so `warden install | kubectl apply -f -` installs. The injector's serving certificate is
//! its SVID from the identity service (with the webhook's name), so no key goes in for it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use serde_json::{json, Value};
use warden_core::{contract, TrustDomain};
use warden_identity::ca::{self, CertificateAuthority, InitOptions};

/// The base's files, in the order of its kustomization.yaml.
pub const BASE: [(&str, &str); 7] = [
    (
        "crds.yaml",
        include_str!("../deploy/kubernetes/base/crds.yaml"),
    ),
    (
        "namespace.yaml",
        include_str!("../deploy/kubernetes/base/namespace.yaml"),
    ),
    (
        "identity.yaml",
        include_str!("../deploy/kubernetes/base/identity.yaml"),
    ),
    (
        "injector.yaml",
        include_str!("../deploy/kubernetes/base/injector.yaml"),
    ),
    (
        "controller.yaml",
        include_str!("../deploy/kubernetes/base/controller.yaml"),
    ),
    (
        "webhook.yaml",
        include_str!("../deploy/kubernetes/base/webhook.yaml"),
    ),
    (
        "network-policies.yaml",
        include_str!("../deploy/kubernetes/base/network-policies.yaml"),
    ),
];

/// `warden install` options.
#[derive(clap::Args)]
pub struct Args {
    /// The trust domain of the mesh (with --ca-dir: must match the CA's).
    #[arg(long, value_parser = TrustDomain::parse)]
    trust_domain: Option<TrustDomain>,
    /// The control plane's image (the full `warden` CLI).
    #[arg(long, default_value = concat!("ghcr.io/warden-mesh/warden:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// The sidecar image the injector adds to pods (the slim `warden-proxy` binary).
    #[arg(long, default_value = concat!("ghcr.io/warden-mesh/warden-proxy:", env!("CARGO_PKG_VERSION")))]
    proxy_image: String,
    /// The CA directory (`warden ca init`'s files): used when it holds a CA, else a fresh CA
    /// is created in it. Only the issuer and the bundle go into the cluster; the root key
    /// stays here (keep it offline: `warden ca rotate-issuer` needs it).
    #[arg(long, default_value = "warden-ca")]
    ca_dir: PathBuf,
}

/// The issuer and trust bundle as PEM texts: what goes into the cluster.
struct CaFiles {
    issuer_pem: String,
    issuer_key_pem: String,
    bundle_pem: String,
}

impl CaFiles {
    /// Reads a CA directory.
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))
        };
        Ok(Self {
            issuer_pem: read(ca::ISSUER_CERT)?,
            issuer_key_pem: read(ca::ISSUER_KEY)?,
            bundle_pem: read(ca::BUNDLE)?,
        })
    }

    fn authority(
        &self,
        trust_domain: Option<&TrustDomain>,
    ) -> anyhow::Result<CertificateAuthority> {
        Ok(CertificateAuthority::from_pem(
            &self.issuer_pem,
            Path::new(ca::ISSUER_CERT),
            &self.issuer_key_pem,
            Path::new(ca::ISSUER_KEY),
            &self.bundle_pem,
            Path::new(ca::BUNDLE),
            trust_domain,
        )?)
    }
}

/// Prints the manifests.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let manifests = render(&args)?;
    warden_proxy::cli::print(&manifests);
    Ok(ExitCode::SUCCESS)
}

/// The whole install as multi-document YAML.
fn render(args: &Args) -> anyhow::Result<String> {
    let dir = &args.ca_dir;
    if !dir.join(ca::ISSUER_CERT).exists() {
        let td = args.trust_domain.clone().unwrap_or_default();
        ca::init(dir, &InitOptions::new(td.clone()))?;
        eprintln!(
            "created a CA for trust domain {td} in {}: keep its root.key offline (a new issuer is \
             signed with it); install again with --ca-dir {} to keep this CA",
            dir.display(),
            dir.display()
        );
    }
    let files = CaFiles::read(dir)?;
    let authority = files.authority(args.trust_domain.as_ref())?;
    let td = authority.trust_domain().clone();
    if let Some(wanted) = &args.trust_domain {
        anyhow::ensure!(
            wanted == &td,
            "--trust-domain {wanted} does not match the CA's trust domain {td}"
        );
    }
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);

    let mut docs = Vec::new();
    let images = Images {
        control_plane: &args.image,
        sidecar: &args.proxy_image,
    };
    for (name, text) in BASE {
        for doc in documents(text).with_context(|| format!("deploy/kubernetes/base/{name}"))? {
            docs.push(customize(doc, &td, &images, &b64(&files.bundle_pem)));
        }
    }
    let generated = [
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata("warden-identity-ca"),
            "type": "Opaque",
            "data": {
                ca::ISSUER_CERT: b64(&files.issuer_pem),
                ca::ISSUER_KEY: b64(&files.issuer_key_pem),
                ca::BUNDLE: b64(&files.bundle_pem),
            },
        }),
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": metadata("warden-trust-anchors"),
            "data": { "bundle.crt": files.bundle_pem },
        }),
    ];
    // After the Namespace, before the Deployments that mount them.
    let at = docs
        .iter()
        .position(|d| d["kind"] == "Namespace")
        .map_or(0, |i| i + 1);
    docs.splice(at..at, generated);

    let mut out = format!(
        "# Warden {} control plane for trust domain {td}, generated by `warden install`.\n\
         # It holds the mesh issuer's private key: apply it, do not commit it.\n",
        env!("CARGO_PKG_VERSION")
    );
    for doc in &docs {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(doc)?);
    }
    Ok(out)
}

fn metadata(name: &str) -> Value {
    json!({
        "name": name,
        "namespace": contract::SYSTEM_NAMESPACE,
        "labels": { "app.kubernetes.io/part-of": "warden" },
    })
}

/// The YAML documents of a file (comment-only documents dropped).
pub fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for chunk in text.split("\n---") {
        let chunk = chunk.strip_prefix("---").unwrap_or(chunk);
        let doc: Value = warden_core::yaml::from_str(chunk, "manifest")?;
        if !doc.is_null() {
            docs.push(doc);
        }
    }
    Ok(docs)
}

/// The install's two images.
struct Images<'a> {
    /// Runs the control plane's Deployments (the full CLI).
    control_plane: &'a str,
    /// Injected into pods (the slim sidecar binary).
    sidecar: &'a str,
}

/// Applies what kustomize's `labels` would, and the install's choices: images, trust domain
/// (arguments and `WARDEN_TRUST_DOMAIN`), and the webhook's caBundle.
fn customize(mut doc: Value, td: &TrustDomain, images: &Images, ca_bundle_b64: &str) -> Value {
    let label = |meta: &mut Value| {
        if let Some(meta) = meta.as_object_mut() {
            let labels = meta.entry("labels").or_insert_with(|| json!({}));
            labels["app.kubernetes.io/part-of"] = json!("warden");
        }
    };
    label(&mut doc["metadata"]);
    if let Some(template) = doc.pointer_mut("/spec/template/metadata") {
        label(template);
    }
    if let Some(containers) = doc
        .pointer_mut("/spec/template/spec/containers")
        .and_then(Value::as_array_mut)
    {
        for container in containers {
            container["image"] = json!(images.control_plane);
            if let Some(env) = container.get_mut("env").and_then(Value::as_array_mut) {
                for var in env {
                    if var["name"] == contract::env::TRUST_DOMAIN {
                        var["value"] = json!(td.as_str());
                    }
                }
            }
            if let Some(args) = container.get_mut("args").and_then(Value::as_array_mut) {
                for i in 1..args.len() {
                    match args[i - 1].as_str() {
                        Some("--image") => args[i] = json!(images.sidecar),
                        Some("--trust-domain") => args[i] = json!(td.as_str()),
                        _ => {}
                    }
                }
            }
        }
    }
    if doc["kind"] == "MutatingWebhookConfiguration" {
        if let Some(webhooks) = doc["webhooks"].as_array_mut() {
            for webhook in webhooks {
                webhook["clientConfig"]["caBundle"] = json!(ca_bundle_b64);
            }
        }
    }
    doc
}
