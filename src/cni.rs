//! `warden cni`: Warden's CNI plugin (CNI spec 1.0, chained after the cluster's network
//! plugin). For a pod injected in CNI mode it installs exactly the rules `warden init` would,
//! in the pod's network namespace, from the node, so the pod needs no privileged container.
//!
//! The container runtime runs it with `CNI_COMMAND` (`ADD`, `CHECK`, `DEL`, `VERSION`),
//! `CNI_NETNS`, `CNI_ARGS` (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`) and the network
//! configuration on stdin, `prevResult` included; the binary installed as `warden-cni` acts as
//! `warden cni`. On `ADD` it reads the pod from the API server (the kubeconfig named by the
//! configuration's `"kubeconfig"`), asks [`warden_injector::cni::interception`] what the pod
//! needs, and passes the previous result on unchanged. A pod that is not Warden's, or whose
//! `warden-init` does the job, is left alone; an API error or a rule that cannot be installed
//! fails the `ADD`, and the runtime does not start the pod (fail closed). `DEL` changes
//! nothing: the rules go with the pod's network namespace.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use warden_core::contract;
use warden_injector::cni::{interception, CniSettings, PodInterception};
use warden_proxy::interception::InterceptionSettings;

use warden_proxy::cli::init::{self, Ipv6};

/// `warden cni` takes no arguments: the runtime passes everything in the environment and on
/// stdin.
#[derive(clap::Args)]
pub struct Args {}

/// The CNI versions whose configurations and results this plugin understands (chaining and
/// `prevResult` since 0.3.0, `CHECK` since 0.4.0).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// The spec version this plugin implements.
const SPEC_VERSION: &str = "1.0.0";
/// How long the API server may take to answer (the runtime gives the whole ADD a few minutes).
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// CNI error codes (the spec's, and Warden's own from 100).
mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    /// The pod could not be read from the API server.
    pub const KUBERNETES: u32 = 100;
    /// The interception rules could not be installed (or are not in place, on `CHECK`).
    pub const INTERCEPTION: u32 = 101;
}

/// A CNI error: printed as `{"cniVersion", "code", "msg"}` on stdout, exit status 1.
#[derive(Debug)]
struct CniError {
    code: u32,
    msg: String,
}

fn fail(code: u32, msg: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
    }
}

/// The command line as the CLI parses it: the binary installed under the plugin's type name
/// (`warden-cni`, which runtimes run without arguments) is `warden cni`.
pub fn command_line() -> Vec<OsString> {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    let as_plugin = args
        .first()
        .and_then(|arg0| Path::new(arg0).file_name())
        .is_some_and(|name| name == contract::cni::PLUGIN_TYPE);
    if as_plugin {
        args.insert(1, "cni".into());
    }
    args
}

/// Runs one plugin command; never fails otherwise than with a CNI error on stdout.
pub fn run(_args: Args) -> anyhow::Result<ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CNI_"))
        .collect();
    let mut stdin = String::new();
    let read = std::io::stdin().read_to_string(&mut stdin);
    let version = serde_json::from_str::<Value>(&stdin)
        .ok()
        .and_then(|c| c["cniVersion"].as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| SPEC_VERSION.to_string());
    let outcome = match read {
        Ok(_) => handle(&env, &stdin),
        Err(e) => Err(fail(code::IO, format!("cannot read stdin: {e}"))),
    };
    match outcome {
        Ok(Some(result)) => {
            warden_proxy::cli::print(&format!("{result}\n"));
            Ok(ExitCode::SUCCESS)
        }
        Ok(None) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("warden cni: {}", e.msg);
            let error = json!({"cniVersion": version, "code": e.code, "msg": e.msg});
            warden_proxy::cli::print(&format!("{error}\n"));
            Ok(ExitCode::from(1))
        }
    }
}

/// `K8S_POD_NAMESPACE` and `K8S_POD_NAME` from `CNI_ARGS` (`K=V;K=V`), if both are there.
fn pod_ref(cni_args: &str) -> Option<(String, String)> {
    let args: BTreeMap<&str, &str> = cni_args
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let namespace = args.get("K8S_POD_NAMESPACE").filter(|v| !v.is_empty())?;
    let name = args.get("K8S_POD_NAME").filter(|v| !v.is_empty())?;
    Some((namespace.to_string(), name.to_string()))
}

fn handle(env: &BTreeMap<String, String>, stdin: &str) -> Result<Option<Value>, CniError> {
    let var = |name: &str| env.get(name).filter(|v| !v.is_empty());
    let command = var("CNI_COMMAND")
        .ok_or_else(|| fail(code::INVALID_ENVIRONMENT, "CNI_COMMAND is not set"))?;
    if command == "VERSION" {
        return Ok(Some(
            json!({"cniVersion": SPEC_VERSION, "supportedVersions": SUPPORTED_VERSIONS}),
        ));
    }
    let config: Value = serde_json::from_str(stdin).map_err(|e| {
        fail(
            code::DECODE,
            format!("the network configuration on stdin is not JSON: {e}"),
        )
    })?;
    let version = config["cniVersion"].as_str().ok_or_else(|| {
        fail(
            code::INVALID_CONFIG,
            "the network configuration has no cniVersion",
        )
    })?;
    if !SUPPORTED_VERSIONS.contains(&version) {
        return Err(fail(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CNI version {version} is not supported (supported: {})",
                SUPPORTED_VERSIONS.join(", ")
            ),
        ));
    }
    let check = match command.as_str() {
        "ADD" => false,
        "CHECK" => true,
        // The rules live in the pod's network namespace and go with it.
        "DEL" => return Ok(None),
        other => {
            return Err(fail(
                code::INVALID_ENVIRONMENT,
                format!("unknown CNI_COMMAND {other:?} (ADD, CHECK, DEL or VERSION)"),
            ))
        }
    };
    let netns = var("CNI_NETNS").ok_or_else(|| {
        fail(
            code::INVALID_ENVIRONMENT,
            format!("CNI_NETNS is not set ({command})"),
        )
    })?;
    // What the chain has so far, passed on unchanged (ADD's result).
    let result = match config.get("prevResult") {
        Some(prev) if prev.is_object() => {
            let mut prev = prev.clone();
            if prev.get("cniVersion").is_none() {
                prev["cniVersion"] = json!(version);
            }
            prev
        }
        _ => json!({"cniVersion": version}),
    };
    let done = if check { None } else { Some(result) };
    let Some((namespace, name)) = var("CNI_ARGS").and_then(|a| pod_ref(a)) else {
        // Not a Kubernetes pod (no K8S_POD_* arguments): nothing of Warden's.
        return Ok(done);
    };
    let kubeconfig = config["kubeconfig"].as_str().ok_or_else(|| {
        fail(
            code::INVALID_CONFIG,
            "the plugin configuration has no \"kubeconfig\" (the path of the kubeconfig the \
             plugin reads pods with)",
        )
    })?;
    let pod = read_pod(Path::new(kubeconfig), &namespace, &name)
        .map_err(|e| fail(code::KUBERNETES, format!("pod {namespace}/{name}: {e:#}")))?;
    let settings = match interception(&pod) {
        Ok(PodInterception::Cni(settings)) => settings,
        Ok(PodInterception::NotInjected | PodInterception::InitContainer) => return Ok(done),
        Err(e) => {
            return Err(fail(
                code::INTERCEPTION,
                format!("pod {namespace}/{name}: {e}"),
            ))
        }
    };
    let settings = interception_settings(settings);
    let netns = Path::new(netns.as_str());
    let outcome = if check {
        init::verify(&settings, Some(netns))
    } else {
        init::install(&settings, Ipv6::Auto, Some(netns), "warden cni")
    };
    outcome.map_err(|e| {
        let what = if check {
            "the interception rules are not in place"
        } else {
            "cannot install the interception rules"
        };
        fail(
            code::INTERCEPTION,
            format!("pod {namespace}/{name}: {what}: {e:#}"),
        )
    })?;
    Ok(done)
}

/// What `warden init` gets from the injected `warden-init`'s arguments, the rest Warden's
/// contract.
fn interception_settings(cni: CniSettings) -> InterceptionSettings {
    InterceptionSettings {
        inbound_port: contract::INBOUND_PORT,
        outbound_port: contract::OUTBOUND_PORT,
        admin_port: contract::ADMIN_PORT,
        proxy_uid: contract::PROXY_UID,
        skip_inbound_ports: cni.skip_inbound_ports,
        skip_outbound_ports: cni.skip_outbound_ports,
        skip_outbound_cidrs: cni.skip_outbound_cidrs,
    }
}

/// The pod as the API server has it, through the kubeconfig's current context.
fn read_pod(kubeconfig: &Path, namespace: &str, name: &str) -> anyhow::Result<Pod> {
    use anyhow::Context;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let file = kube::config::Kubeconfig::read_from(kubeconfig)
            .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
        let mut config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
        config.connect_timeout = Some(API_TIMEOUT);
        config.read_timeout = Some(API_TIMEOUT);
        config.write_timeout = Some(API_TIMEOUT);
        let client = kube::Client::try_from(config)?;
        let pods: kube::Api<Pod> = kube::Api::namespaced(client, namespace);
        match pods.get_opt(name).await {
            Ok(Some(pod)) => Ok(pod),
            Ok(None) => Err(anyhow::anyhow!(
                "not found in the API server; refusing to set up a pod Warden cannot check"
            )),
            Err(e) => Err(anyhow::Error::new(e).context("reading it from the API server")),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_ref_reads_the_kubernetes_arguments() {
        assert_eq!(
            pod_ref("IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc"),
            Some(("shop".into(), "web-0".into()))
        );
        for partial in [
            "",
            "K8S_POD_NAMESPACE=shop",
            "K8S_POD_NAME=web-0",
            "K8S_POD_NAMESPACE=;K8S_POD_NAME=x",
        ] {
            assert_eq!(pod_ref(partial), None, "{partial:?}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn commands_and_configurations_without_a_pod() {
        // (environment, stdin) -> result, or the error code and a piece of its message
        let prev = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "eth0"}],
                          "ips": [{"address": "10.1.2.3/24", "interface": 0}]});
        let config = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "warden-cni",
                            "kubeconfig": "/nonexistent", "prevResult": prev})
        .to_string();
        type Row<'a> = (
            Vec<(&'a str, &'a str)>,
            String,
            Result<Option<Value>, (u32, &'a str)>,
        );
        let cases: Vec<Row> = vec![
            (
                vec![("CNI_COMMAND", "VERSION")],
                "{\"cniVersion\":\"1.0.0\"}".into(),
                Ok(Some(
                    json!({"cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS}),
                )),
            ),
            (vec![], config.clone(), Err((4, "CNI_COMMAND is not set"))),
            (
                vec![("CNI_COMMAND", "GC")],
                config.clone(),
                Err((4, "unknown CNI_COMMAND")),
            ),
            (
                vec![("CNI_COMMAND", "ADD")],
                "{".into(),
                Err((6, "not JSON")),
            ),
            (
                vec![("CNI_COMMAND", "ADD")],
                "{}".into(),
                Err((7, "no cniVersion")),
            ),
            (
                vec![("CNI_COMMAND", "ADD")],
                "{\"cniVersion\":\"0.2.0\"}".into(),
                Err((1, "CNI version 0.2.0 is not supported")),
            ),
            (
                vec![("CNI_COMMAND", "ADD")],
                config.clone(),
                Err((4, "CNI_NETNS is not set")),
            ),
            (vec![("CNI_COMMAND", "DEL")], config.clone(), Ok(None)),
            // Not a Kubernetes pod: passed through.
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/var/run/netns/x")],
                config.clone(),
                Ok(Some(prev.clone())),
            ),
            (
                vec![("CNI_COMMAND", "CHECK"), ("CNI_NETNS", "/var/run/netns/x")],
                config.clone(),
                Ok(None),
            ),
            // No prevResult: an empty result of the configuration's version.
            (
                vec![("CNI_COMMAND", "ADD"), ("CNI_NETNS", "/var/run/netns/x")],
                "{\"cniVersion\":\"0.4.0\"}".into(),
                Ok(Some(json!({"cniVersion": "0.4.0"}))),
            ),
            // A pod, but no kubeconfig to read it with.
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_NETNS", "/var/run/netns/x"),
                    ("CNI_ARGS", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"),
                ],
                "{\"cniVersion\":\"1.0.0\"}".into(),
                Err((7, "no \"kubeconfig\"")),
            ),
            (
                vec![
                    ("CNI_COMMAND", "ADD"),
                    ("CNI_NETNS", "/var/run/netns/x"),
                    ("CNI_ARGS", "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b"),
                ],
                config.clone(),
                Err((100, "pod a/b: kubeconfig /nonexistent")),
            ),
        ];
        for (vars, stdin, want) in cases {
            let got = handle(&env(&vars), &stdin);
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{vars:?}"),
                (Err(got), Err((code, msg))) => {
                    assert_eq!(got.code, code, "{vars:?}: {}", got.msg);
                    assert!(got.msg.contains(msg), "{vars:?}: {}", got.msg);
                }
                (got, want) => panic!("{vars:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
