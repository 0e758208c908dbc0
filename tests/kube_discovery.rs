//! Discovery end to end: pods are network namespaces whose Pod objects (with the namespaces'
//! IPs in `status.podIP`) live in the real API server; a real `warden controller` and
//! `warden identity` run on the lab's switch; transparent proxies (real `warden init`
//! iptables rules, UID 2626) in pods a and b take their SVIDs, policies and destinations from
//! them. Pod c has no sidecar.
//!
//! Needs root, iproute2, iptables and setpriv (`scripts/test.sh` installs them), and the
//! test API server.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/host.rs"]
mod host;
#[path = "support/lab.rs"]
mod lab;
#[path = "support/mesh.rs"]
mod mesh;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use apiserver::ApiServer;
use lab::{
    banner_app, echo_app, http_app, http_get, pod_v4, pod_v6, read_banner, relay_into, Lab, SW,
};
use mesh::eventually;

fn runnable() -> bool {
    host::runnable(
        "discovery tests",
        &[
            ("ip", "iproute2"),
            ("iptables-restore", "iptables"),
            ("ip6tables-restore", "iptables"),
            ("setpriv", "util-linux"),
        ],
    ) && apiserver::available()
}

/// Pod `name` running as `sa` at the lab address `idx` (IPv4 and IPv6), with Warden's
/// sidecar or without.
fn pod(api: &ApiServer, ns: &str, name: &str, sa: &str, idx: u8, meshed: bool) {
    let (v4, v6) = (pod_v4(idx), pod_v6(idx));
    mesh::pod_with(api, ns, name, sa, &[&v4, &v6], meshed);
}

/// The status line of `GET path` from pod `from` to `addr`.
fn status_of(lab: &Lab, from: &str, addr: &str, path: &str) -> String {
    let reply = http_get(&lab.ns(from), addr, path);
    reply.lines().next().unwrap_or("(nothing)").to_string()
}

/// Starts the controller on the switch; its index for [`Lab::kill`].
fn controller(lab: &mut Lab, api: &ApiServer, lease_ns: &str) -> usize {
    // The controller runs on the switch, where the pods' addresses are what it sees; the
    // API server is on this process's loopback, relayed in.
    let relayed = relay_into(&lab.ns(SW), ([127, 0, 0, 1], api.port).into());
    let kubeconfig = std::fs::read_to_string(&api.kubeconfig)
        .unwrap()
        .replace(&api.url, &format!("https://{relayed}"));
    std::fs::write(lab.path("kubeconfig"), kubeconfig).unwrap();
    let token = lab.join_token("spiffe://cluster.local/ns/warden-system/sa/warden-controller");
    let args = [
        "controller",
        "run",
        "--kubeconfig",
        &lab.path("kubeconfig").display().to_string(),
        "--listen",
        "10.213.0.254:7160",
        "--admin-listen",
        "10.213.0.254:7192",
        "--identity",
        "replica-d",
        "--lease-namespace",
        lease_ns,
        "--identity-url",
        "https://10.213.0.254:7150",
        "--identity-token-file",
        &token.display().to_string(),
        "--trust-bundle",
        &lab.path("ca/bundle.crt").display().to_string(),
    ]
    .map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.spawn(SW, &[], &args, &[], "warden controller: watching")
}

/// What kube-proxy does on a node, on the switch: connections to `cluster_ip:port` are
/// DNATed to `backends` in turn (each new connection to the next), and masqueraded so the
/// replies come back through the switch; pod a routes the Service range to the switch.
fn kube_proxy_stand_in(lab: &Lab, cluster_ip: &str, port: u16, backends: &[String]) {
    let sw = lab.ns(SW);
    host::run(&[
        "ip",
        "netns",
        "exec",
        &sw,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]);
    let n = backends.len();
    for (i, backend) in backends.iter().enumerate() {
        let mut rule = vec![
            "ip".to_string(),
            "netns".into(),
            "exec".into(),
            sw.clone(),
            "iptables".into(),
            "-t".into(),
            "nat".into(),
            "-A".into(),
            "PREROUTING".into(),
            "-d".into(),
            format!("{cluster_ip}/32"),
            "-p".into(),
            "tcp".into(),
            "--dport".into(),
            port.to_string(),
        ];
        if i + 1 < n {
            rule.extend(
                [
                    "-m",
                    "statistic",
                    "--mode",
                    "nth",
                    "--every",
                    &(n - i).to_string(),
                    "--packet",
                    "0",
                ]
                .map(str::to_string),
            );
        }
        rule.extend(
            [
                "-j",
                "DNAT",
                "--to-destination",
                &format!("{backend}:{port}"),
            ]
            .map(str::to_string),
        );
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        host::run(&rule);
    }
    host::run(&[
        "ip",
        "netns",
        "exec",
        &sw,
        "iptables",
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-m",
        "conntrack",
        "--ctstate",
        "DNAT",
        "-j",
        "MASQUERADE",
    ]);
    host::run(&[
        "ip",
        "-n",
        &lab.ns("a"),
        "route",
        "add",
        "10.96.0.0/16",
        "via",
        "10.213.0.254",
    ]);
}

/// Installs the rules and starts the sidecar of pod `name` (ServiceAccount `name`).
fn sidecar(lab: &mut Lab, ns: &str, name: &str, config: &str) -> usize {
    let out = lab.warden_in(name, &["init"]);
    assert!(
        out.status.success(),
        "warden init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = lab.join_token(&format!("spiffe://cluster.local/ns/{ns}/sa/{name}"));
    std::fs::write(lab.path(&format!("{name}.yaml")), config).unwrap();
    let env = [
        (
            "WARDEN_IDENTITY_URL",
            "https://10.213.0.254:7150".to_string(),
        ),
        ("WARDEN_IDENTITY_TOKEN_FILE", token.display().to_string()),
        (
            "WARDEN_TRUST_BUNDLE",
            lab.path("ca/bundle.crt").display().to_string(),
        ),
        ("WARDEN_POD_NAMESPACE", ns.to_string()),
        ("WARDEN_POD_SERVICE_ACCOUNT", name.to_string()),
        ("WARDEN_POD_NAME", name.to_string()),
        ("WARDEN_TRANSPARENT", "true".to_string()),
        ("WARDEN_CONTROL_PLANE", "10.213.0.254:7160".to_string()),
        ("WARDEN_AUDIT_LOG", "off".to_string()),
        ("WARDEN_LOG", "info,warden::access=info".to_string()),
    ];
    let uid = [
        "setpriv",
        "--reuid",
        "2626",
        "--regid",
        "2626",
        "--clear-groups",
    ];
    let config = lab.path(&format!("{name}.yaml")).display().to_string();
    let index = lab.spawn(
        name,
        &uid,
        &["--log-json", "proxy", "--config", &config],
        &env,
        "proxy ready",
    );
    let pod = lab.ns(name);
    eventually(&format!("{name}'s proxy ready"), || {
        match status_of(lab, name, "127.0.0.1:7191", "/ready") {
            s if s.contains(" 200") => Ok(()),
            s => Err(format!("{s} in {pod}")),
        }
    });
    index
}

#[test]
fn outbound_connections_follow_discovery_meshed_unmeshed_and_reused_ips() {
    if !runnable() {
        return;
    }
    let api = apiserver::get();
    api.install_crds();
    let ns = api.namespace("disco", &[]);
    let mut lab = Lab::new();
    pod(api, &ns, "a", "a", 1, true);
    pod(api, &ns, "b", "b", 2, true);
    pod(api, &ns, "c", "c", 3, false);
    pod(api, &ns, "d", "d", 4, true);
    // Port 7000 of b and d is opaque (they speak first on it); the annotation replaces the
    // defaults, so 3306 is named again.
    for name in ["b", "d"] {
        api.kubectl_ok(
            &[
                "annotate",
                "pod",
                name,
                "-n",
                &ns,
                "warden.dev/opaque-ports=7000,3306",
            ],
            None,
        );
    }
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: warden.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-ns, namespace: {ns}}}\nspec: {{action: ALLOW, rules: [{{from: {{namespaces: [{ns}]}}}}]}}\n"
        )),
    );
    let hits = Arc::new(AtomicUsize::new(0));
    http_app(&lab.ns("b"), format!("{}:8080", pod_v4(2)), hits.clone());
    http_app(&lab.ns("b"), format!("[{}]:8080", pod_v6(2)), hits.clone());
    banner_app(
        &lab.ns("b"),
        format!("{}:3306", pod_v4(2)),
        b"5.7.0-mysql-like\n",
    );
    http_app(&lab.ns("c"), format!("{}:8080", pod_v4(3)), hits.clone());
    banner_app(&lab.ns("b"), format!("{}:7000", pod_v4(2)), b"b\n");
    banner_app(&lab.ns("d"), format!("{}:7000", pod_v4(4)), b"d\n");
    // Outside the cluster: an address no Pod or Service has.
    echo_app(&lab.ns(SW), "10.213.0.254:9100".to_string());
    lab.identity_service();
    let first = controller(&mut lab, api, &ns);
    // A waits for a client's first bytes for a minute before calling a connection opaque,
    // so only the controller's hint can make a server-speaks-first port work at once.
    let proxy_a = sidecar(&mut lab, &ns, "a", "timeouts: {detect: 60s}\n");
    sidecar(&mut lab, &ns, "b", "");
    sidecar(&mut lab, &ns, "d", "");

    // Meshed -> meshed: mTLS with B's identity, over IPv4 and IPv6.
    let b = format!("{}:8080", pod_v4(2));
    let reply = http_get(&lab.ns("a"), &b, "/hello");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(
        reply.contains(&format!(
            "x-warden-client-id: spiffe://cluster.local/ns/{ns}/sa/a"
        )),
        "{reply}"
    );
    let reply6 = http_get(&lab.ns("a"), &format!("[{}]:8080", pod_v6(2)), "/six");
    assert!(reply6.starts_with("HTTP/1.1 200"), "{reply6}");

    // Meshed -> a pod without a sidecar, inside the private ranges that used to be assumed
    // meshed: plain TCP, as if there were no mesh.
    let reply = http_get(&lab.ns("a"), &format!("{}:8080", pod_v4(3)), "/plain");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(!reply.contains("x-warden-client-id"), "{reply}");
    // ... and visible as such: `tls="false"` in A's metrics and access log.
    // (Bytes are counted when the relay ends, just after the reply.)
    eventually("A's metrics count the plain connection", || {
        let metrics = http_get(&lab.ns("a"), "127.0.0.1:7191", "/metrics");
        for series in [
            r#"warden_outbound_connections_total{tls="false"} 1"#.to_string(),
            format!(
                r#"warden_tcp_bytes_total{{direction="outbound",client_id="spiffe://cluster.local/ns/{ns}/sa/a",server_id="",flow="client_to_server",tls="false"}}"#
            ),
        ] {
            if !metrics.contains(&series) {
                return Err(format!("{series} in {metrics}"));
            }
        }
        Ok(())
    });
    let plain = format!("{}:8080", pod_v4(3));
    eventually("A's access log has the plain connection", || {
        let log = lab.log(proxy_a);
        log.iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|v| {
                v["target"] == "warden::access"
                    && v["fields"]["destination"] == plain.as_str()
                    && v["fields"]["tls"] == false
            })
            .map(|_| ())
            .ok_or_else(|| format!("no tls=false connection to {plain} in {log:?}"))
    });

    // One connection per proxy at the controller: A's policy stream and its destination
    // watches share it (B and D watch only their policies).
    eventually("one controller connection per proxy", || {
        let metrics = http_get(&lab.ns(SW), "10.213.0.254:7192", "/metrics");
        if metrics.contains("warden_controller_connections 3\n") {
            Ok(())
        } else {
            Err(metrics
                .lines()
                .filter(|l| l.starts_with("warden_controller_connections"))
                .collect::<Vec<_>>()
                .join("\n"))
        }
    });

    // A server-speaks-first port (3306, opaque by default): the banner comes at once.
    assert_eq!(
        read_banner(&lab.ns("a"), &format!("{}:3306", pod_v4(2)), 17).as_deref(),
        Some(&b"5.7.0-mysql-like\n"[..]),
        "the opaque hint skips the detection wait"
    );
    let metrics = http_get(&lab.ns("a"), "127.0.0.1:7191", "/metrics");
    assert!(
        metrics.contains("warden_discovery_lookups_total{result=\"fetched\"}"),
        "{metrics}"
    );
    // /ready's detail is refreshed every few seconds.
    eventually("/ready shows discovery connected", || {
        let ready = http_get(&lab.ns("a"), "127.0.0.1:7191", "/ready");
        if ready.contains("destinations watched; connected to the controller at 10.213.0.254:7160")
        {
            Ok(())
        } else {
            Err(ready)
        }
    });

    // The controller is gone: destinations A knows keep working with their last answers,
    // and A stays ready, saying it is reconnecting.
    lab.kill(first);
    for (addr, what) in [
        (b.clone(), "meshed"),
        (format!("{}:8080", pod_v4(3)), "unmeshed"),
    ] {
        let status = status_of(&lab, "a", &addr, "/while-down");
        assert!(status.contains(" 200"), "{what}: {status}");
    }
    eventually("A says it is reconnecting, and stays ready", || {
        let ready = http_get(&lab.ns("a"), "127.0.0.1:7191", "/ready");
        if ready.starts_with("HTTP/1.1 200")
            && ready.contains("reconnecting to the controller")
            && ready.contains("not connected to the controller (known destinations keep")
        {
            Ok(())
        } else {
            Err(ready)
        }
    });
    controller(&mut lab, api, &ns);
    // A adds everything it knows to its stream at the new controller, whole.
    eventually(
        "A's destinations watched again at the new controller",
        || {
            let gauge = |text: &str, name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
            };
            let proxy = http_get(&lab.ns("a"), "127.0.0.1:7191", "/metrics");
            let controller = http_get(&lab.ns(SW), "10.213.0.254:7192", "/metrics");
            let watched = gauge(&proxy, "warden_discovery_destinations");
            let at_controller = gauge(&controller, "warden_controller_destination_watches");
            match (watched, at_controller) {
                (Some(a), Some(c)) if a == c && a >= 4.0 => Ok(()),
                other => Err(format!("watched by A, at the controller: {other:?}")),
            }
        },
    );

    // Operators close the mesh: meshOnly refuses pods without a sidecar, and unknown
    // destinations are refused too; lifting it restores both.
    let c = format!("{}:8080", pod_v4(3));
    let outside = "10.213.0.254:9100";
    assert!(status_of(&lab, "a", outside, "/out").starts_with("GET /out"));
    let closed = format!(
        "apiVersion: warden.dev/v1alpha1\nkind: MeshPolicy\nmetadata: {{name: closed-{ns}}}\nspec: {{meshOnly: true, unknownDestinations: refuse}}\n"
    );
    api.kubectl_ok(&["apply", "-f", "-"], Some(&closed));
    for addr in [c.as_str(), outside] {
        eventually(
            &format!("{addr} refused under meshOnly/refuse"),
            || match status_of(&lab, "a", addr, "/closed") {
                s if s == "(nothing)" => Ok(()),
                s => Err(s),
            },
        );
    }
    assert!(status_of(&lab, "a", &b, "/meshed").contains(" 200"));
    let metrics = http_get(&lab.ns("a"), "127.0.0.1:7191", "/metrics");
    for reason in ["unmeshed-destination", "unknown-destination"] {
        assert!(
            metrics.contains(&format!(
                "warden_outbound_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {metrics}"
        );
    }
    api.kubectl_ok(&["delete", "meshpolicy", &format!("closed-{ns}")], None);
    eventually(
        "plain TCP again once the MeshPolicy is gone",
        || match status_of(&lab, "a", &c, "/open") {
            s if s.contains(" 200") => Ok(()),
            s => Err(s),
        },
    );

    // A Service with two meshed backends, through a kube-proxy stand-in on the switch (DNAT
    // to b and d in turn, replies back through it): each connection is mTLS with whichever
    // backend answers, accepted because it is one of the Service's identities.
    api.kubectl_ok(
        &["apply", "-f", "-"],
        Some(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: echo, namespace: {ns}}}\nspec: {{ports: [{{name: tcp, port: 7000}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: echo-1, namespace: {ns}, labels: {{kubernetes.io/service-name: echo}}}}\naddressType: IPv4\nports: [{{name: tcp, port: 7000, protocol: TCP}}]\nendpoints: [{{addresses: [\"{}\"], conditions: {{ready: true}}}}, {{addresses: [\"{}\"], conditions: {{ready: true}}}}]\n",
            pod_v4(2),
            pod_v4(4)
        )),
    );
    let cluster_ip = api.kubectl_ok(
        &[
            "get",
            "service",
            "echo",
            "-n",
            &ns,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
        None,
    );
    kube_proxy_stand_in(&lab, &cluster_ip, 7000, &[pod_v4(2), pod_v4(4)]);
    let mut answered = Vec::new();
    for _ in 0..2 {
        let banner = eventually("the Service answers", || {
            read_banner(&lab.ns("a"), &format!("{cluster_ip}:7000"), 2)
                .ok_or_else(|| "no banner".to_string())
        });
        answered.push(String::from_utf8_lossy(&banner).trim().to_string());
    }
    answered.sort();
    assert_eq!(answered, ["b", "d"], "both backends answered through mTLS");

    // B's pod is deleted and its IP reused by a pod of another ServiceAccount: A now
    // expects that identity there, and B's proxy (still holding B's SVID) is refused.
    // (No kubelet: a pod never scheduled is deleted at once.)
    api.kubectl_ok(&["delete", "pod", "b", "-n", &ns], None);
    pod(api, &ns, "b-next", "pay", 2, true);
    eventually(
        "a connection to the reused IP expects the new identity",
        || match status_of(&lab, "a", &b, "/after") {
            s if s.contains(" 502") => Ok(()),
            s => Err(s),
        },
    );
    let metrics = http_get(&lab.ns("a"), "127.0.0.1:7191", "/metrics");
    let failed = metrics
        .lines()
        .find(|l| {
            l.starts_with("warden_tls_handshakes_total")
                && l.contains("direction=\"outbound\"")
                && l.contains("result=\"failure\"")
        })
        .unwrap_or_default();
    assert!(
        failed.rsplit(' ').next().is_some_and(|n| n != "0"),
        "the handshake with the impostor failed and was counted: {metrics}"
    );
}
