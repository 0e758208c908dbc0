//! `warden uninstall`: prints every object `warden install` creates, by name only, in the
//! order to delete them, for `warden uninstall | kubectl delete --ignore-not-found -f -`.
//! The webhook goes first, so pod creation never meets a webhook whose injector is gone;
//! the CRDs only with `--crds`, since deleting them deletes every policy. Pods are left as
//! they are: running ones keep serving, and pods created afterwards are not injected.

use std::process::ExitCode;

use anyhow::Context;
use serde_json::{json, Value};
use warden_core::contract;

use crate::install::{documents, BASE};

/// `warden uninstall` options.
#[derive(clap::Args)]
pub struct Args {
    /// Also delete the CRDs, and with them every AuthorizationPolicy and MeshPolicy.
    #[arg(long)]
    crds: bool,
}

/// The objects `warden install` creates that are not in the base (its key material).
const GENERATED: [(&str, &str, &str); 3] = [
    ("v1", "Secret", "warden-identity-ca"),
    ("v1", "Secret", "warden-injector-tls"),
    ("v1", "ConfigMap", "warden-trust-anchors"),
];

/// Prints the objects to delete.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut out = format!(
        "# Everything `warden install` created{}; pipe to `kubectl delete --ignore-not-found -f -`.\n",
        if args.crds {
            ", the CRDs and every policy included"
        } else {
            " but the CRDs (and so the policies; add --crds to delete them)"
        }
    );
    for object in objects(args.crds)? {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&object)?);
    }
    warden_proxy::cli::print(&out);
    Ok(ExitCode::SUCCESS)
}

/// Order of deletion: the webhook, what lives in the namespace, cluster-wide RBAC, the
/// namespace, then the CRDs.
fn rank(kind: &str) -> u8 {
    match kind {
        "MutatingWebhookConfiguration" => 0,
        "ClusterRole" | "ClusterRoleBinding" => 2,
        "Namespace" => 3,
        "CustomResourceDefinition" => 4,
        _ => 1,
    }
}

/// The install's objects, by name only, in deletion order.
pub fn objects(crds: bool) -> anyhow::Result<Vec<Value>> {
    let mut objects: Vec<Value> = Vec::new();
    for (name, text) in BASE {
        for doc in documents(text).with_context(|| format!("deploy/kubernetes/base/{name}"))? {
            let mut metadata = json!({"name": doc["metadata"]["name"]});
            if let Some(ns) = doc["metadata"]["namespace"].as_str() {
                metadata["namespace"] = json!(ns);
            }
            objects.push(
                json!({"apiVersion": doc["apiVersion"], "kind": doc["kind"], "metadata": metadata}),
            );
        }
    }
    for (api_version, kind, name) in GENERATED {
        objects.push(json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": contract::SYSTEM_NAMESPACE}}));
    }
    objects.retain(|o| crds || o["kind"] != "CustomResourceDefinition");
    objects.sort_by_key(|o| rank(o["kind"].as_str().unwrap_or_default()));
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_webhook_goes_first_the_namespace_late_and_crds_only_when_asked() {
        let kinds = |crds| -> Vec<String> {
            objects(crds)
                .unwrap()
                .iter()
                .map(|o| o["kind"].as_str().unwrap().to_string())
                .collect()
        };
        let without = kinds(false);
        assert_eq!(without[0], "MutatingWebhookConfiguration");
        assert_eq!(without.last().unwrap(), "Namespace");
        assert!(!without.contains(&"CustomResourceDefinition".to_string()));
        let with = kinds(true);
        assert_eq!(with.len(), without.len() + 2);
        assert_eq!(
            &with[with.len() - 2..],
            ["CustomResourceDefinition", "CustomResourceDefinition"]
        );
        for secret in ["warden-identity-ca", "warden-injector-tls"] {
            assert!(objects(false)
                .unwrap()
                .iter()
                .any(|o| o["metadata"]["name"] == secret));
        }
    }
}
