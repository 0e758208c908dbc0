//! A real Prometheus server (Debian's `prometheus` package) on 127.0.0.1 scrapes the demo's
//! proxies; its query API must return request rates, a latency quantile and denial counts
//! with the labels dashboards use.

#[path = "support/ports.rs"]
mod ports;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ports::reserved_port;

/// Fails under CI=true when Prometheus is missing; elsewhere says so and skips.
fn prometheus_available() -> bool {
    if Command::new("prometheus").arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prometheus is required under CI=true: apt-get install -y prometheus (scripts/test.sh does)");
    }
    eprintln!("SKIPPED: prometheus not installed (apt-get install -y prometheus)");
    false
}

/// Kills its process on drop, also when a test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: &str, target: &str) -> (u16, String) {
    let Ok(mut tcp) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        tcp,
        "GET {target} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    );
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn encode(query: &str) -> String {
    query
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Runs a PromQL instant query; returns the result vector.
fn query(prometheus: &str, promql: &str) -> Vec<serde_json::Value> {
    let (status, body) = http_get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(promql)),
    );
    assert_eq!(status, 200, "{promql}: {body}");
    let reply: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["status"], "success", "{promql}: {body}");
    reply["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Runs `promql` until `check` accepts its result (Prometheus scrapes every second; a
/// scrape can come late on a busy machine), for at most 30 s.
fn until_query<T>(
    prometheus: &str,
    promql: &str,
    check: impl Fn(&[serde_json::Value]) -> Result<T, &'static str>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = query(prometheus, promql);
        match check(&result) {
            Ok(found) => return found,
            Err(missing) if Instant::now() > deadline => {
                panic!("{promql}: still missing after 30 s: {missing}: {result:?}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(500)),
        }
    }
}

fn value(sample: &serde_json::Value) -> f64 {
    sample["value"][1].as_str().unwrap().parse().unwrap()
}

#[test]
fn prometheus_scrapes_the_demo_and_answers_dashboard_queries() {
    if !prometheus_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut demo = Command::new(env!("CARGO_BIN_EXE_warden"))
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let demo = Killed(demo);
    let (mut admins, mut outbound) = (Vec::new(), Vec::new());
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        if let Some(at) = line.find("admin http://") {
            admins.push(line[at + 13..].trim_end_matches("/metrics").to_string());
        }
        if let Some(rest) = line.split("curl http://").nth(1) {
            outbound.push(rest.split('/').next().unwrap().to_string());
        }
        if line.starts_with("Ctrl-C") {
            break;
        }
    }
    assert_eq!(admins.len(), 3, "the demo printed its admin endpoints");
    let (frontend, intruder) = (outbound[0].clone(), outbound[1].clone());

    let port = reserved_port();
    let prometheus_addr = format!("127.0.0.1:{port}");
    let targets: Vec<String> = admins.iter().map(|a| format!("'{a}'")).collect();
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: warden\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(tmp.path().join("prometheus.yml"), config).unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            tmp.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={prometheus_addr}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _prometheus = Killed(prometheus);
    let started = Instant::now();
    while http_get(&prometheus_addr, "/-/ready").0 != 200 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "prometheus did not become ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Steady traffic, the frontend allowed and the intruder denied, until the queries below
    // have seen it: rates over the last seconds need traffic in those seconds.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, denied) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, denied) = (stop.clone(), ok.clone(), denied.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                if http_get(&frontend, "/").0 == 200 {
                    ok.fetch_add(1, Ordering::SeqCst);
                }
                if http_get(&intruder, "/").0 == 403 {
                    denied.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    // A few scrapes' worth, and enough requests of each kind.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6)
        || ok.load(Ordering::SeqCst) < 50
        || denied.load(Ordering::SeqCst) < 50
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "traffic flowed: {ok:?} allowed, {denied:?} denied"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    until_query(&prometheus_addr, "up{job=\"warden\"}", |up| {
        (up.len() == 3 && up.iter().all(|s| value(s) == 1.0))
            .then_some(())
            .ok_or("every proxy scraped")
    });

    // Request rate per caller/callee pair, as the dashboard asks for it.
    until_query(
        &prometheus_addr,
        "max by (client_id, server_id, status_code) (rate(warden_requests_total{direction=\"inbound\"}[5s]))",
        |rates| {
            let allowed = rates
                .iter()
                .find(|s| {
                    s["metric"]["client_id"] == "spiffe://cluster.local/ns/demo/sa/frontend"
                        && s["metric"]["status_code"] == "200"
                })
                .ok_or("a frontend->backend rate")?;
            assert_eq!(
                allowed["metric"]["server_id"],
                "spiffe://cluster.local/ns/demo/sa/backend"
            );
            if value(allowed) <= 1.0 {
                return Err("a real frontend->backend rate");
            }
            rates
                .iter()
                .any(|s| {
                    s["metric"]["client_id"] == "spiffe://cluster.local/ns/demo/sa/intruder"
                        && s["metric"]["status_code"] == "403"
                })
                .then_some(())
                .ok_or("an intruder->backend rate of 403s")
        },
    );

    // A latency quantile from the histogram.
    let seconds = until_query(
        &prometheus_addr,
        "histogram_quantile(0.99, max by (le, server_id) (rate(warden_request_duration_seconds_bucket{direction=\"inbound\"}[5s])))",
        |p99| {
            p99.iter()
                .find(|s| s["metric"]["server_id"] == "spiffe://cluster.local/ns/demo/sa/backend")
                .map(value)
                .filter(|seconds| !seconds.is_nan())
                .ok_or("a p99 for the backend")
        },
    );
    assert!(seconds > 0.0 && seconds < 1.0, "a plausible p99: {seconds}");

    // Denials by policy, with the traffic stopped: every denial the intruder got is counted
    // (the demo's own check adds one), and allows by the policy that allowed them.
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    let denied_in_all = denied.load(Ordering::SeqCst) as f64;
    until_query(
        &prometheus_addr,
        "max by (policy) (warden_authz_decisions_total{decision=\"deny\"})",
        |denials| {
            let no_match = denials
                .iter()
                .find(|s| s["metric"]["policy"] == "no-match")
                .ok_or("a denial count")?;
            (value(no_match) >= denied_in_all)
                .then_some(())
                .ok_or("every denial counted")
        },
    );
    until_query(
        &prometheus_addr,
        "max by (policy) (warden_authz_decisions_total{decision=\"allow\"})",
        |allows| {
            allows
                .iter()
                .any(|s| s["metric"]["policy"] == "demo/backend-allow-frontend")
                .then_some(())
                .ok_or("an allow count by the frontend's policy")
        },
    );
    drop(demo);
}

/// Fails under CI=true when promtool is missing; elsewhere says so and skips.
fn promtool_available() -> bool {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("promtool is required under CI=true: apt-get install -y prometheus (scripts/test.sh does)");
    }
    eprintln!("SKIPPED: promtool not installed (apt-get install -y prometheus)");
    false
}

#[test]
fn the_certificate_alerts_pass_promtool_unit_tests_and_the_operator_rule_matches() {
    if !promtool_available() {
        return;
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/prometheus");
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules-test.yaml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let read = |name: &str| -> serde_json::Value {
        serde_saphyr::from_str(&std::fs::read_to_string(format!("{dir}/{name}")).unwrap()).unwrap()
    };
    let (rules, operator) = (read("rules.yaml"), read("prometheusrule.yaml"));
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        operator["spec"]["groups"], rules["groups"],
        "prometheusrule.yaml drifted from rules.yaml"
    );
}
