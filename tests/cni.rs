//! Warden's CNI plugin for real: the `warden` binary installed as `warden-cni` and run as a
//! container runtime runs a chained plugin (CNI spec 1.0: `CNI_COMMAND`, `CNI_NETNS`,
//! `CNI_ARGS`, the network configuration with `prevResult` on stdin), against the real API
//! server (DESIGN section 10) with exactly the rights the docs give it (`get` on pods, through
//! a ServiceAccount token), in real network namespaces with real iptables. Pods are Pod
//! objects in that API server, injected by the injector's own patch in CNI mode, and network
//! namespaces here (no kubelet or container runtime runs).
//!
//! Needs root, iproute2 and iptables, and the API server of `scripts/testenv.sh`. Under
//! `CI=true` a missing piece fails the test; elsewhere it is skipped with a message.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/host.rs"]
mod host;

use host::run;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use apiserver::ApiServer;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use warden_core::contract;
use warden_injector::config::{InjectorConfig, Interception, SecurityAnnotation};

/// Whether this machine can run the tests; under CI it must.
fn runnable() -> bool {
    host::runnable(
        "the CNI plugin tests",
        &[
            ("ip", "iproute2"),
            ("iptables-save", "iptables"),
            ("ip6tables-save", "iptables"),
            ("iptables-restore", "iptables"),
            ("ip6tables-restore", "iptables"),
        ],
    ) && apiserver::available()
}

/// A pod's network namespace; deleted when dropped (also when a test fails).
struct Netns {
    name: String,
}

impl Netns {
    /// A fresh namespace with loopback up (what the cluster's network plugin would have set
    /// up before Warden's, chained after it, runs).
    fn new(suffix: &str) -> Self {
        let name = format!("wdcni{}{suffix}", std::process::id() % 100_000);
        // A leftover of a killed run with the same process id.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Gives the pod a global IPv6 address.
    fn add_ipv6(&self, address: &str) {
        run(&["ip", "-n", &self.name, "addr", "add", address, "dev", "lo"]);
    }

    /// `tool -t nat` inside the namespace, without its comment lines (dates) and counters.
    fn nat(&self, tool: &str) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, tool, "-t", "nat"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{tool}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.replace(" [0:0]", ""))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `warden init ARGS` inside the namespace, as the `warden-init` container runs it.
    fn warden_init(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(env!("CARGO_BIN_EXE_warden"))
            .arg("init")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "warden init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// What the plugin may do: read pods, nothing else. The docs grant exactly this.
const PLUGIN_RBAC: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: cni-plugin}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: warden-cni, namespace: cni-plugin}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: nobody, namespace: cni-plugin}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: warden-cni-test}
rules:
- apiGroups: [\"\"]
  resources: [pods]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: warden-cni-test}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: warden-cni-test}
subjects:
- {kind: ServiceAccount, name: warden-cni, namespace: cni-plugin}
";

/// The test's plugin installation: the binary as `warden-cni`, and kubeconfigs with the
/// plugin's ServiceAccount token (`kubeconfig`) and with one without rights (`no_rights`).
struct Plugin {
    api: &'static ApiServer,
    bin: PathBuf,
    kubeconfig: PathBuf,
    no_rights: PathBuf,
}

fn plugin() -> Option<&'static Plugin> {
    static PLUGIN: OnceLock<Plugin> = OnceLock::new();
    if !runnable() {
        return None;
    }
    Some(PLUGIN.get_or_init(|| {
        let api = apiserver::get();
        api.kubectl_ok(&["apply", "-f", "-"], Some(PLUGIN_RBAC));
        let dir = api.dir.join("cni");
        std::fs::create_dir_all(&dir).unwrap();
        // Installed as a runtime finds it: a file named after the configuration's `type`,
        // run without arguments.
        let bin = dir.join(contract::cni::PLUGIN_TYPE);
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_warden"), &bin).unwrap();
        let kubeconfig = |sa: &str| {
            let token = api.kubectl_ok(&["create", "token", sa, "-n", "cni-plugin"], None);
            let path = dir.join(format!("{sa}-kubeconfig"));
            std::fs::write(
                &path,
                format!(
                    "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                    api.url,
                    api.ca_file.display(),
                    token.trim()
                ),
            )
            .unwrap();
            path
        };
        Plugin {
            api,
            bin,
            kubeconfig: kubeconfig("warden-cni"),
            no_rights: kubeconfig("nobody"),
        }
    }))
}

/// What the cluster's network plugin handed on (a bridge plugin's result).
fn prev_result(netns: &Netns) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:16:00:01"},
            {"name": "eth0", "mac": "0a:58:0a:16:00:05", "sandbox": netns.path()},
        ],
        "ips": [{"address": "10.22.0.5/16", "gateway": "10.22.0.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {},
    })
}

/// The chained plugin's network configuration, as the runtime hands it over.
fn network_config(kubeconfig: &Path, prev: Option<&Value>) -> Value {
    let mut config = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": contract::cni::PLUGIN_TYPE,
        "kubeconfig": kubeconfig,
    });
    if let Some(prev) = prev {
        config["prevResult"] = prev.clone();
    }
    config
}

/// One plugin run: exit code, stdout, stderr.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {:?}", self.stdout))
    }
}

impl Plugin {
    /// Runs the plugin as the runtime does: `command`, the pod's namespace, the pod (`None`:
    /// no Kubernetes arguments), `config` on stdin, and `env` on top.
    fn run(
        &self,
        command: &str,
        netns: &Netns,
        pod: Option<(&str, &str)>,
        config: &Value,
        env: &[(&str, String)],
    ) -> Outcome {
        let mut cmd = Command::new(&self.bin);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "3f1e0c2b9a8d")
            .env("CNI_NETNS", netns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin");
        if let Some((namespace, name)) = pod {
            cmd.env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=3f1e0c2b9a8d"
                ),
            );
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(config.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `ADD` for `pod` with a bridge plugin's result: asserts success and that the result
    /// is passed on unchanged.
    fn add_ok(&self, netns: &Netns, namespace: &str, pod: &str) {
        let prev = prev_result(netns);
        let out = self.run(
            "ADD",
            netns,
            Some((namespace, pod)),
            &network_config(&self.kubeconfig, Some(&prev)),
            &[],
        );
        assert_eq!(out.code, 0, "ADD {pod}: {} {}", out.stdout, out.stderr);
        assert_eq!(
            out.json(),
            prev,
            "ADD passes the previous result on unchanged"
        );
    }

    /// `ADD` for `pod` that must fail: the CNI error (stdout) and stderr.
    fn add_fails(
        &self,
        netns: &Netns,
        namespace: &str,
        pod: &str,
        kubeconfig: &Path,
        env: &[(&str, String)],
    ) -> (Value, String) {
        let prev = prev_result(netns);
        let out = self.run(
            "ADD",
            netns,
            Some((namespace, pod)),
            &network_config(kubeconfig, Some(&prev)),
            env,
        );
        assert_eq!(out.code, 1, "ADD {pod} must fail: {}", out.stdout);
        let error = out.json();
        assert_eq!(error["cniVersion"], "1.0.0", "{error}");
        assert!(error["code"].is_u64(), "{error}");
        assert!(error["msg"].is_string(), "{error}");
        (error, out.stderr)
    }
}

/// `pod` as the injector patches it under `config` (the injector's own patch, applied by
/// kubectl).
fn injected(pod: &Value, config: &InjectorConfig) -> Value {
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let injection = warden_injector::patch::inject(&typed, config).expect("injected");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.json");
    std::fs::write(&file, pod.to_string()).unwrap();
    let out = Command::new(apiserver::bin_dir().join("kubectl"))
        .args(["patch", "--local", "--type=json", "-o", "json", "-f"])
        .arg(&file)
        .arg("-p")
        .arg(injection.patch.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn app_pod(name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]},
    })
}

fn cni_injector(allowed: &[SecurityAnnotation]) -> InjectorConfig {
    let mut config = InjectorConfig::new("registry.example/warden:1", "");
    config.interception = Interception::Cni;
    config.allowed_annotations = allowed.iter().copied().collect();
    config
}

fn create(api: &ApiServer, namespace: &str, pod: &Value) {
    api.kubectl_ok(
        &["create", "-n", namespace, "-f", "-"],
        Some(&pod.to_string()),
    );
}

/// The node's own nat table must never get Warden's rules: the plugin enters the pod's
/// namespace on a thread of its own.
fn assert_node_untouched() {
    for tool in ["iptables-save", "ip6tables-save"] {
        let out = Command::new(tool).args(["-t", "nat"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("WARDEN"), "the node's {tool}: {text}");
    }
}

// ---------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------

#[test]
fn add_installs_in_a_cni_mode_pod_exactly_the_rules_warden_init_would() {
    let Some(plugin) = plugin() else { return };
    let started = Instant::now();
    let ns = plugin.api.namespace("cni-meshed", &[]);
    // Skipped ports and networks the operator allows, and one it does not (ignored).
    let annotations = json!({
        "warden.dev/skip-inbound-ports": "22",
        "warden.dev/skip-outbound-cidrs": "169.254.169.254/32,fd00:ec2::254/128",
        "warden.dev/skip-outbound-ports": "5432",
    });
    let injector = cni_injector(&[
        SecurityAnnotation::SkipInboundPorts,
        SecurityAnnotation::SkipOutboundCidrs,
    ]);
    create(
        plugin.api,
        &ns,
        &injected(&app_pod("meshed", annotations), &injector),
    );

    let pod = Netns::new("a");
    pod.add_ipv6("2001:db8::7/128");
    assert!(!pod.nat("iptables-save").contains("WARDEN"));
    plugin.add_ok(&pod, &ns, "meshed");

    // The same as `warden init` with the arguments the injector would give warden-init, in a
    // namespace just like it.
    let reference = Netns::new("r");
    reference.add_ipv6("2001:db8::7/128");
    reference.warden_init(&[
        "--skip-inbound-ports",
        "22",
        "--skip-outbound-cidrs",
        "169.254.169.254/32,fd00:ec2::254/128",
    ]);
    for tool in ["iptables-save", "ip6tables-save"] {
        let (got, want) = (pod.nat(tool), reference.nat(tool));
        assert_eq!(got, want, "{tool}: the plugin's rules are warden init's");
        assert!(
            got.contains(":WARDEN_INBOUND") && got.contains(":WARDEN_OUTPUT"),
            "{got}"
        );
        assert!(
            got.contains("-A WARDEN_INBOUND -p tcp -m tcp --dport 22 -j RETURN"),
            "{got}"
        );
        assert!(
            !got.contains("5432"),
            "a skip the operator does not allow: {got}"
        );
    }
    assert!(pod
        .nat("iptables-save")
        .contains("-d 169.254.169.254/32 -j RETURN"));
    assert!(pod
        .nat("ip6tables-save")
        .contains("-d fd00:ec2::254/128 -j RETURN"));
    assert_node_untouched();

    // CHECK finds them; another ADD (a runtime retry) leaves one set; DEL leaves the rules to
    // go with the namespace.
    let config = network_config(&plugin.kubeconfig, Some(&prev_result(&pod)));
    let check = plugin.run("CHECK", &pod, Some((&ns, "meshed")), &config, &[]);
    assert_eq!(
        (check.code, check.stdout.as_str()),
        (0, ""),
        "{}",
        check.stderr
    );
    let before = pod.nat("iptables-save");
    plugin.add_ok(&pod, &ns, "meshed");
    assert_eq!(
        pod.nat("iptables-save"),
        before,
        "ADD again replaces, never adds"
    );
    let del = plugin.run("DEL", &pod, Some((&ns, "meshed")), &config, &[]);
    assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{}", del.stderr);

    // CHECK of a namespace without the rules fails.
    let bare = Netns::new("b");
    let check = plugin.run("CHECK", &bare, Some((&ns, "meshed")), &config, &[]);
    assert_eq!(check.code, 1, "{}", check.stdout);
    let error: Value = serde_json::from_str(&check.stdout).unwrap();
    assert_eq!(error["code"], 101, "{error}");
    assert!(
        error["msg"]
            .as_str()
            .unwrap()
            .contains("the interception rules are not in place"),
        "{error}"
    );
    eprintln!("cni add: {:?}", started.elapsed());
}

#[test]
fn pods_not_injected_in_cni_mode_are_passed_through_untouched() {
    let Some(plugin) = plugin() else { return };
    let ns = plugin.api.namespace("cni-plain", &[]);
    // A pod of its own, even one that carries the CNI annotation; and a pod injected in init
    // mode, whose warden-init installs the rules.
    create(plugin.api, &ns, &app_pod("plain", json!({})));
    create(
        plugin.api,
        &ns,
        &app_pod("annotated", json!({"warden.dev/interception": "cni"})),
    );
    let init_mode = InjectorConfig::new("registry.example/warden:1", "");
    create(
        plugin.api,
        &ns,
        &injected(&app_pod("init-mode", json!({})), &init_mode),
    );
    for name in ["plain", "annotated", "init-mode"] {
        let pod = Netns::new("p");
        plugin.add_ok(&pod, &ns, name);
        for tool in ["iptables-save", "ip6tables-save"] {
            assert!(!pod.nat(tool).contains("WARDEN"), "{name}: {tool}");
        }
    }
    // Not a Kubernetes pod at all (no K8S_POD_* arguments).
    let pod = Netns::new("k");
    let prev = prev_result(&pod);
    let out = plugin.run(
        "ADD",
        &pod,
        None,
        &network_config(&plugin.kubeconfig, Some(&prev)),
        &[],
    );
    assert_eq!((out.code, out.json()), (0, prev), "{}", out.stderr);
    assert!(!pod.nat("iptables-save").contains("WARDEN"));
}

#[test]
fn the_spec_decides_not_the_annotations_which_can_change_after_admission() {
    let Some(plugin) = plugin() else { return };
    let ns = plugin.api.namespace("cni-edited", &[]);
    create(
        plugin.api,
        &ns,
        &injected(&app_pod("edited", json!({})), &cni_injector(&[])),
    );
    // Anyone who may patch the pod can remove the annotation before the pod starts...
    plugin.api.kubectl_ok(
        &[
            "annotate",
            "pod",
            "-n",
            &ns,
            "edited",
            "warden.dev/interception-",
        ],
        None,
    );
    let stored: Value = serde_json::from_str(
        &plugin
            .api
            .kubectl_ok(&["get", "pod", "-n", &ns, "edited", "-o", "json"], None),
    )
    .unwrap();
    assert!(
        stored["metadata"]["annotations"]
            .get(contract::cni::INTERCEPTION_ANNOTATION)
            .is_none(),
        "{}",
        stored["metadata"]
    );
    // ... but not the settings, which live in the proxy container: the API server refuses.
    let proxy = &stored["spec"]["initContainers"][0];
    assert_eq!(proxy["name"], contract::PROXY_CONTAINER);
    let at = proxy["env"]
        .as_array()
        .unwrap()
        .iter()
        .position(|e| e["name"] == contract::cni::SETTINGS_ENV)
        .expect("the settings are in the proxy's environment");
    let widen = json!([{"op": "replace", "path": format!("/spec/initContainers/0/env/{at}/value"),
                        "value": "{\"skipInboundPorts\":[8080]}"}]);
    let out = plugin.api.kubectl_with(
        &[
            "patch",
            "pod",
            "-n",
            &ns,
            "edited",
            "--type=json",
            "-p",
            &widen.to_string(),
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "the API server let the settings change"
    );
    let refusal = String::from_utf8_lossy(&out.stderr);
    assert!(
        refusal.contains("Forbidden: pod updates may not change fields"),
        "{refusal}"
    );

    // The pod is still intercepted, with the settings it was admitted with.
    let pod = Netns::new("e");
    plugin.add_ok(&pod, &ns, "edited");
    let rules = pod.nat("iptables-save");
    assert!(
        rules.contains("-A WARDEN_INBOUND -p tcp -j REDIRECT --to-ports 7143"),
        "{rules}"
    );
    assert!(!rules.contains("8080"), "{rules}");
}

#[test]
fn the_add_fails_closed_when_the_pod_cannot_be_read_or_ipv6_would_stay_open() {
    let Some(plugin) = plugin() else { return };
    let started = Instant::now();
    let ns = plugin.api.namespace("cni-closed", &[]);
    let pod = Netns::new("c");

    // A pod the API server does not have.
    let (error, stderr) = plugin.add_fails(&pod, &ns, "missing", &plugin.kubeconfig, &[]);
    assert_eq!(error["code"], 100, "{error}");
    let msg = error["msg"].as_str().unwrap();
    assert!(
        msg.contains(&format!("pod {ns}/missing")) && msg.contains("not found"),
        "{msg}"
    );
    assert!(stderr.contains(msg), "said on stderr too: {stderr}");

    // Credentials that may not read pods (403).
    create(
        plugin.api,
        &ns,
        &injected(&app_pod("meshed", json!({})), &cni_injector(&[])),
    );
    let (error, _) = plugin.add_fails(&pod, &ns, "meshed", &plugin.no_rights, &[]);
    assert_eq!(error["code"], 100, "{error}");
    assert!(
        error["msg"].as_str().unwrap().contains("forbidden"),
        "{error}"
    );

    // An API server that does not answer: refused within the plugin's timeout.
    // A socket bound there and not listening: refused, and the port stays unused meanwhile.
    let closed = apiserver::ports::closed_port();
    let port = closed.addr.port();
    let text = std::fs::read_to_string(&plugin.kubeconfig).unwrap();
    let unreachable = plugin.api.dir.join("cni/unreachable-kubeconfig");
    std::fs::write(
        &unreachable,
        text.replace(&plugin.api.url, &format!("https://127.0.0.1:{port}")),
    )
    .unwrap();
    let asked = Instant::now();
    let (error, _) = plugin.add_fails(&pod, &ns, "meshed", &unreachable, &[]);
    assert_eq!(error["code"], 100, "{error}");
    assert!(
        asked.elapsed() < Duration::from_secs(30),
        "{:?}",
        asked.elapsed()
    );

    // A pod with a global IPv6 address whose IPv6 nat table cannot be used (a node without
    // ip6table_nat, stood in for by an ip6tables-save that fails as it does there).
    pod.add_ipv6("2001:db8::9/128");
    let stub = plugin.api.dir.join("cni/no-ip6table-nat");
    std::fs::create_dir_all(&stub).unwrap();
    std::fs::write(
        stub.join("ip6tables-save"),
        "#!/bin/sh\necho \"ip6tables-save v1.8.9 (nf_tables): table 'nat' does not exist\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(
        stub.join("ip6tables-save"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        stub.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let (error, _) = plugin.add_fails(&pod, &ns, "meshed", &plugin.kubeconfig, &[("PATH", path)]);
    assert_eq!(error["code"], 101, "{error}");
    let msg = error["msg"].as_str().unwrap();
    assert!(
        msg.contains("global IPv6 addresses (2001:db8::9)") && msg.contains("ip6table_nat"),
        "{msg}"
    );
    for tool in ["iptables-save", "ip6tables-save"] {
        assert!(
            !pod.nat(tool).contains("WARDEN"),
            "nothing installed: {tool}"
        );
    }
    // The same pod with its IPv6 nat table: both families.
    plugin.add_ok(&pod, &ns, "meshed");
    assert!(pod.nat("ip6tables-save").contains(":WARDEN_OUTPUT"));
    assert_node_untouched();
    eprintln!("cni fail closed: {:?}", started.elapsed());
}

#[test]
fn version_prints_the_supported_versions_as_both_names() {
    let Some(plugin) = plugin() else { return };
    let pod = Netns::new("v");
    let out = plugin.run("VERSION", &pod, None, &json!({"cniVersion": "1.0.0"}), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let version = out.json();
    assert_eq!(version["cniVersion"], "1.0.0");
    let supported: Vec<&str> = version["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for v in ["0.3.1", "0.4.0", "1.0.0"] {
        assert!(supported.contains(&v), "{supported:?}");
    }
    // `warden cni` is the same plugin.
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("cni")
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<Value>(&out.stdout).unwrap(),
        version
    );
    // A configuration of a version it does not speak: the CNI error, exit 1.
    let out = plugin.run(
        "ADD",
        &pod,
        None,
        &json!({"cniVersion": "0.2.0", "name": "x", "type": "warden-cni"}),
        &[],
    );
    assert_eq!(out.code, 1);
    assert_eq!(out.json()["code"], 1, "{}", out.stdout);
}
