//! `control_plane`: how long a policy write takes to be enforced by N proxies, and what the
//! controller costs, against the real API server (DESIGN section 10).
//!
//! The cluster holds `--pods` Pod objects (10,000) in 100 namespaces and `--policies`
//! AuthorizationPolicies (1,000) besides the measured one. A real `warden controller`
//! (SVID from a real `warden identity`) serves N simulated proxies: each is the proxy's own
//! control-plane client (`warden_proxy::control_plane::run`) on its own mTLS stream, for its
//! own pod, in this process. Each round rewrites the measured policy through the API server
//! and times, per proxy, from just before the write to the moment that proxy's policy set
//! holds the new version. All proxies connect from 127.0.0.1, so every bench pod has that IP.
//!
//! Run: `cargo bench --bench control_plane` (options: `--proxies 1,100,1000 --pods 10000
//! --policies 1000 --rounds 20`). Needs the test API server (`scripts/testenv.sh`).

#[path = "../tests/support/apiserver.rs"]
mod apiserver;
#[path = "control_plane/client_cost.rs"]
mod client_cost;
#[path = "../tests/support/mesh.rs"]
mod mesh;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use warden_controller::crd::AuthorizationPolicy;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::rotation::{Credentials, TlsOptions};
use warden_identity::tls::ClientAuth;
use warden_identity::CertificateAuthority;
use warden_proxy::control_plane::{self, ControlPlaneClient};
use warden_proxy::discovery::{Discovery, DiscoveryOptions};
use warden_proxy::grpc_client::SharedChannel;

/// The options.
struct Options {
    proxies: Vec<usize>,
    pods: usize,
    policies: usize,
    rounds: usize,
}

fn options() -> Options {
    let mut options = Options {
        proxies: vec![1, 100, 1000],
        pods: 10_000,
        policies: 1_000,
        rounds: 20,
    };
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    if let Some(v) = value("--proxies") {
        options.proxies = v.split(',').map(|n| n.parse().unwrap()).collect();
    }
    for (name, field) in [
        ("--pods", &mut options.pods),
        ("--policies", &mut options.policies),
        ("--rounds", &mut options.rounds),
    ] {
        if let Some(v) = value(name) {
            *field = v.parse().unwrap();
        }
    }
    options
}

/// Namespaces of the background load.
const LOAD_NAMESPACES: usize = 100;
/// The namespace of the measured proxies' pods.
const BENCH_NS: &str = "bench";

fn json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).unwrap()
}

/// A write to the API server, boxed so writes of every kind share one list.
type Job = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Runs `jobs` with at most 16 in flight.
async fn in_parallel(jobs: Vec<Job>) {
    let limit = Arc::new(Semaphore::new(16));
    let mut set = tokio::task::JoinSet::new();
    for job in jobs {
        let permit = limit.clone().acquire_owned().await.unwrap();
        set.spawn(async move {
            job.await;
            drop(permit);
        });
    }
    while let Some(done) = set.join_next().await {
        done.unwrap();
    }
}

async fn create_namespace(client: &kube::Client, name: &str, sas: &[String]) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let _ = namespaces
        .create(
            &PostParams::default(),
            &json(serde_json::json!({"metadata": {"name": name}})),
        )
        .await;
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    for sa in sas {
        let _ = accounts
            .create(
                &PostParams::default(),
                &json(serde_json::json!({"metadata": {"name": sa}})),
            )
            .await;
    }
}

fn pod(name: &str, sa: &str) -> Pod {
    json(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": sa,
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "registry.example/app:1"}]
        }
    }))
}

fn policy(ns: &str, name: &str, sa: &str, path: &str) -> AuthorizationPolicy {
    json(serde_json::json!({
        "apiVersion": "warden.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"serviceAccounts": [sa]},
            "action": "ALLOW",
            "rules": [{
                "from": {"namespaces": [ns]},
                "to": {"ports": [8080], "methods": ["GET"], "paths": [path]}
            }]
        }
    }))
}

/// The address of load pod `i` (10.1.0.0/16): what discovery resolves.
fn load_ip(i: usize) -> String {
    format!("10.1.{}.{}", i / 250, i % 250 + 1)
}

/// Fills the cluster: `pods` Pods (the bench pods included) and `policies` policies.
async fn fill(client: &kube::Client, options: &Options, bench_pods: usize) {
    let started = Instant::now();
    let sas: Vec<String> = (0..10).map(|i| format!("sa-{i}")).collect();
    create_namespace(client, BENCH_NS, &["bench".to_string()]).await;
    for n in 0..LOAD_NAMESPACES {
        create_namespace(client, &format!("load-{n}"), &sas).await;
    }
    let mut jobs: Vec<Job> = Vec::new();
    let load_pods = options.pods.saturating_sub(bench_pods);
    for i in 0..load_pods {
        let client = client.clone();
        jobs.push(Box::pin(async move {
            let ns = format!("load-{}", i % LOAD_NAMESPACES);
            let api: Api<Pod> = Api::namespaced(client, &ns);
            let name = format!("pod-{i}");
            let _ = api
                .create(
                    &PostParams::default(),
                    &pod(&name, &format!("sa-{}", i % 10)),
                )
                .await;
            let ip = load_ip(i);
            let status = serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await;
        }));
    }
    for i in 0..options.policies {
        let client = client.clone();
        jobs.push(Box::pin(async move {
            let ns = format!("load-{}", i % LOAD_NAMESPACES);
            let api: Api<AuthorizationPolicy> = Api::namespaced(client, &ns);
            let object = policy(
                &ns,
                &format!("policy-{i}"),
                &format!("sa-{}", i % 10),
                "/api/*",
            );
            let _ = api.create(&PostParams::default(), &object).await;
        }));
    }
    for i in 0..bench_pods {
        let client = client.clone();
        jobs.push(Box::pin(async move {
            let api: Api<Pod> = Api::namespaced(client, BENCH_NS);
            let name = format!("p-{i}");
            let _ = api.create(&PostParams::default(), &pod(&name, "bench")).await;
            let status = serde_json::json!({"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}});
            api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
                .await
                .unwrap();
        }));
    }
    in_parallel(jobs).await;
    eprintln!(
        "control_plane: {} pods and {} policies written in {:.1}s",
        options.pods,
        options.policies,
        started.elapsed().as_secs_f64()
    );
}

/// CPU seconds (user + system) and RSS/peak RSS in MB of process `pid`.
fn usage(pid: u32) -> (f64, f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = |key: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse::<f64>()
            .unwrap()
            / 1024.0
    };
    (ticks / hz, kb("VmRSS:"), kb("VmHWM:"))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// When the current round's write started, and its marker path.
type Round = Arc<Mutex<(Instant, String)>>;

/// One row of results.
struct Row {
    proxies: usize,
    samples: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    subscribe: Duration,
    cpu_per_round: f64,
    rss: f64,
}

async fn measure(
    client: &kube::Client,
    controller: &mesh::Controller,
    credentials: &watch::Receiver<Arc<Credentials>>,
    proxies: usize,
    rounds: usize,
) -> Row {
    let stop = CancellationToken::new();
    let round: Round = Arc::new(Mutex::new((Instant::now(), String::new())));
    let (samples_tx, mut samples_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Duration)>();
    let started = Instant::now();
    let mut first_snapshots = Vec::new();
    for i in 0..proxies {
        let target = control_plane_target(controller, &format!("p-{i}"));
        let (feed, mut set, _status) = control_plane::feed(&target);
        tokio::spawn(control_plane::run(
            SharedChannel::new(target, credentials.clone()),
            feed,
            stop.clone(),
        ));
        let (round, samples, stop) = (round.clone(), samples_tx.clone(), stop.clone());
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel();
        first_snapshots.push(loaded_rx);
        tokio::spawn(async move {
            let mut loaded = Some(loaded_tx);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = set.changed() => if changed.is_err() { return },
                }
                let now = Instant::now();
                let current = set.borrow_and_update().clone();
                if let Some(tx) = loaded.take() {
                    let _ = tx.send(());
                }
                let (at, marker) = round.lock().unwrap().clone();
                let holds = current.policies().iter().any(|p| {
                    p.spec.rules.iter().any(|r| {
                        r.to.paths
                            .as_ref()
                            .is_some_and(|paths| paths.iter().any(|x| x == &marker))
                    })
                });
                if holds {
                    let _ = samples.send((marker, now - at));
                }
            }
        });
    }
    for loaded in first_snapshots {
        tokio::time::timeout(Duration::from_secs(120), loaded)
            .await
            .expect("every proxy gets its first snapshot")
            .unwrap();
    }
    let subscribe = started.elapsed();
    let api: Api<AuthorizationPolicy> = Api::namespaced(client.clone(), BENCH_NS);
    let (cpu_before, _, _) = usage(controller.process.pid());
    let mut all = Vec::new();
    for r in 0..rounds {
        let marker = format!("/round-{proxies}-{r}");
        *round.lock().unwrap() = (Instant::now(), marker.clone());
        let object = policy(BENCH_NS, "bench-allow", "bench", &marker);
        api.patch(
            "bench-allow",
            &PatchParams::apply("warden-bench").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
        let mut got = 0;
        while got < proxies {
            let (m, elapsed) = tokio::time::timeout(Duration::from_secs(60), samples_rx.recv())
                .await
                .expect("every proxy enforces the write within 60 s")
                .unwrap();
            if m == marker {
                all.push(elapsed);
                got += 1;
            }
        }
    }
    let (cpu_after, rss, _) = usage(controller.process.pid());
    stop.cancel();
    all.sort();
    Row {
        proxies,
        samples: all.len(),
        p50: percentile(&all, 50.0),
        p99: percentile(&all, 99.0),
        max: *all.last().unwrap(),
        subscribe,
        cpu_per_round: (cpu_after - cpu_before) / rounds as f64,
        rss,
    }
}

/// The system allocator, counting the bytes allocated and not yet freed: a memory figure
/// free of the allocator's own reuse and fragmentation, beside RSS.
struct Counting;

static LIVE_BYTES: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is added.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new as isize - layout.size() as isize,
            std::sync::atomic::Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes allocated and not freed, in KB.
fn live_heap_kb() -> f64 {
    LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1024.0
}

/// VmRSS of this process, in KB.
fn own_rss_kb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

/// The controller as a proxy of pod `pod` reaches it.
fn control_plane_target(controller: &mesh::Controller, pod: &str) -> ControlPlaneClient {
    ControlPlaneClient {
        addresses: vec![controller.grpc.clone()],
        server_id: SpiffeId::parse("spiffe://cluster.local/ns/warden-system/sa/warden-controller")
            .unwrap(),
        pod: pod.to_string(),
        connect_timeout: Duration::from_secs(20),
    }
}

/// A discovery client running on `runtime` until `stop`.
fn discovery_client(
    controller: &mesh::Controller,
    credentials: &watch::Receiver<Arc<Credentials>>,
    runtime: &tokio::runtime::Handle,
    stop: &CancellationToken,
) -> Arc<Discovery> {
    let target = control_plane_target(controller, "");
    let options = DiscoveryOptions {
        lookup_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let discovery = Discovery::new(SharedChannel::new(target, credentials.clone()), options);
    runtime.spawn(discovery.clone().run(stop.clone()));
    discovery
}

/// Discovery's figures.
struct DiscoveryRow {
    first: Vec<Duration>,
    cached: Vec<Duration>,
    identity_change: Vec<Duration>,
    rss_per_1000_kb: f64,
    rss_next_1000_kb: f64,
    heap_next_1000_kb: f64,
    clients: usize,
    per_client: usize,
    subscribe: Duration,
    fanout: Vec<Duration>,
    controller_rss: f64,
    controller_cpu_per_update: f64,
}

/// First and cached lookups of 1,000 destinations by one proxy (and what they cost it in
/// memory), then `clients` proxies watching `per_client` destinations each, one of them a
/// Service whose endpoints change `rounds` times.
async fn measure_discovery(
    client: &kube::Client,
    controller: &mesh::Controller,
    credentials: &watch::Receiver<Arc<Credentials>>,
    load_pods: usize,
    clients: usize,
    per_client: usize,
    rounds: usize,
) -> DiscoveryRow {
    // The proxy's client on a runtime of its own, as a sidecar with `worker_threads: 1` runs
    // it (the mesh benchmark's setting): one thread, no cross-thread wake-ups.
    let (sidecar, _stop_sidecar) = sidecar_runtime();
    let stop_clients = CancellationToken::new();
    let _stop_clients = stop_clients.clone().drop_guard();
    let one = discovery_client(controller, credentials, &sidecar, &stop_clients);
    // The connection first, so the figures are lookups, not the handshake.
    {
        let one = one.clone();
        sidecar
            .spawn(async move { one.resolve("192.0.2.1:80".parse().unwrap()).await })
            .await
            .unwrap();
    }
    // The previous round's proxies disconnect first: lookups meet a controller at rest.
    settle(controller.process.pid()).await;
    let before = own_rss_kb();
    let lookups = {
        let one = one.clone();
        let count = 1000.min(load_pods);
        sidecar.spawn(async move {
            let (mut first, mut cached, mut when) = (Vec::new(), Vec::new(), Vec::new());
            let began = Instant::now();
            for i in 0..count {
                let addr: std::net::SocketAddr = format!("{}:8080", load_ip(i)).parse().unwrap();
                let started = Instant::now();
                let found = one.resolve(addr).await.expect("an answer");
                first.push(started.elapsed());
                when.push(started - began);
                assert_eq!(found.kind, warden_proxy::discovery::Kind::Pod);
                let started = Instant::now();
                one.resolve(addr).await.expect("an answer");
                cached.push(started.elapsed());
            }
            (first, cached, when)
        })
    };
    let (mut first, mut cached, when) = lookups.await.unwrap();
    let rss_per_1000_kb = (own_rss_kb() - before) * 1000.0 / first.len() as f64;
    // 1,000 more: the growth once the thread's allocator has its first memory.
    let after_first = own_rss_kb();
    let heap_before = live_heap_kb();
    {
        let one = one.clone();
        let count = 1000.min(load_pods.saturating_sub(1000));
        sidecar
            .spawn(async move {
                for i in 1000..1000 + count {
                    let addr = format!("{}:8080", load_ip(i)).parse().unwrap();
                    one.resolve(addr).await.expect("an answer");
                }
            })
            .await
            .unwrap();
    }
    let rss_next_1000_kb = own_rss_kb() - after_first;
    let heap_next_1000_kb = live_heap_kb() - heap_before;
    // Where the tail is: by position in the sequence (a cost growing with the destinations
    // already watched would show), and when the slowest happened (a periodic stall would).
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    for (q, part) in first.chunks(first.len().div_ceil(4)).enumerate() {
        let mut part = part.to_vec();
        part.sort();
        eprintln!(
            "control_plane: first lookups, quarter {}: p50 {:.3} ms, p99 {:.3} ms",
            q + 1,
            ms(percentile(&part, 50.0)),
            ms(percentile(&part, 99.0))
        );
    }
    let mut slowest: Vec<(Duration, usize)> = first.iter().copied().zip(0..).collect();
    slowest.sort();
    let slowest: Vec<String> = slowest
        .iter()
        .rev()
        .take(12)
        .map(|(d, i)| format!("#{i} {:.2} ms at +{:.0} ms", ms(*d), ms(when[*i])))
        .collect();
    eprintln!(
        "control_plane: slowest first lookups: {}",
        slowest.join(", ")
    );
    first.sort();
    eprintln!(
        "control_plane: first lookups p90 {:.3} ms, p95 {:.3} ms, p99.9 {:.3} ms",
        ms(percentile(&first, 90.0)),
        ms(percentile(&first, 95.0)),
        ms(percentile(&first, 99.9))
    );
    cached.sort();
    let identity_change = replace_pods(client, &one, rounds).await;

    // A Service whose one endpoint turns ready and not ready.
    let services: Api<Service> = Api::namespaced(client.clone(), BENCH_NS);
    let service: Service = json(serde_json::json!({
        "metadata": {"name": "fan"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    }));
    let service = services
        .patch(
            "fan",
            &PatchParams::apply("warden-bench").force(),
            &Patch::Apply(&service),
        )
        .await
        .unwrap();
    let cluster_ip = service.spec.unwrap().cluster_ip.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), BENCH_NS);
    let slice = |ready: bool| -> EndpointSlice {
        json(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "fan-1", "labels": {"kubernetes.io/service-name": "fan"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [load_ip(0)], "conditions": {"ready": ready}}]
        }))
    };
    let write = |ready: bool| {
        let slices = slices.clone();
        async move {
            slices
                .patch(
                    "fan-1",
                    &PatchParams::apply("warden-bench").force(),
                    &Patch::Apply(&slice(ready)),
                )
                .await
                .unwrap();
        }
    };
    write(true).await;
    let fan: std::net::SocketAddr = format!("{cluster_ip}:80").parse().unwrap();
    let started = Instant::now();
    // Proxies subscribe 50 at a time, each its destinations one after another (as an app's
    // first calls would).
    let gate = Arc::new(Semaphore::new(50));
    let subscribing = (0..clients).map(|c| {
        let proxy = discovery_client(
            controller,
            credentials,
            &tokio::runtime::Handle::current(),
            &stop_clients,
        );
        let gate = gate.clone();
        tokio::spawn(async move {
            let _permit = gate.acquire().await.unwrap();
            proxy.resolve(fan).await.expect("the Service");
            for k in 1..per_client {
                let i = (c * per_client + k) % load_pods;
                let addr = format!("{}:8080", load_ip(i)).parse().unwrap();
                proxy.resolve(addr).await.expect("an answer");
            }
            proxy
        })
    });
    let mut proxies = Vec::new();
    for handle in subscribing.collect::<Vec<_>>() {
        proxies.push(handle.await.unwrap());
    }
    let watchers: Vec<_> = proxies.iter().map(|p| p.changes(fan).unwrap()).collect();
    let subscribe = started.elapsed();
    let (cpu_before, controller_rss, _) = usage(controller.process.pid());
    let mut fanout = Vec::new();
    for r in 0..rounds {
        let ready = r % 2 == 1;
        let at = Instant::now();
        write(ready).await;
        let waits = watchers.iter().cloned().map(|mut rx| async move {
            rx.wait_for(|a| a.as_ref().is_some_and(|a| a.no_endpoints != ready))
                .await
                .unwrap();
            at.elapsed()
        });
        let all = tokio::time::timeout(Duration::from_secs(60), futures_join_all(waits))
            .await
            .expect("every proxy sees the change within 60 s");
        fanout.extend(all);
    }
    let (cpu_after, _, _) = usage(controller.process.pid());
    fanout.sort();
    drop(proxies);
    DiscoveryRow {
        first,
        cached,
        identity_change,
        rss_next_1000_kb,
        heap_next_1000_kb,
        rss_per_1000_kb,
        clients,
        per_client,
        subscribe,
        fanout,
        controller_rss,
        controller_cpu_per_update: (cpu_after - cpu_before) / rounds as f64,
    }
}

/// A single-threaded runtime on a thread of its own (a sidecar's with `worker_threads: 1`),
/// running until the returned sender is dropped.
fn sidecar_runtime() -> (tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (handle_tx, handle_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        handle_tx.send(runtime.handle().clone()).unwrap();
        runtime.block_on(async {
            let _ = stopped.await;
        });
    });
    (handle_rx.recv().unwrap(), stop)
}

/// Waits (at most 20 s) until the controller uses under 5% of a core over half a second.
async fn settle(pid: u32) {
    for _ in 0..40 {
        let (before, _, _) = usage(pid);
        tokio::time::sleep(Duration::from_millis(500)).await;
        if usage(pid).0 - before < 0.025 {
            return;
        }
    }
}

/// `rounds` times, replaces a pod `one` watches by a pod of another ServiceAccount at the
/// same IP (the IP reuse of issue 17), timed from the write that gives the new pod the IP
/// to `one`'s answer naming the new identity.
async fn replace_pods(client: &kube::Client, one: &Discovery, rounds: usize) -> Vec<Duration> {
    let mut times = Vec::new();
    for r in 0..rounds {
        let i = r;
        let ns = format!("load-{}", i % LOAD_NAMESPACES);
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let old = format!("pod-{i}");
        api.delete(&old, &kube::api::DeleteParams::default())
            .await
            .unwrap();
        let sa = format!("sa-{}", (i + 1) % 10);
        let name = format!("pod-{i}-again");
        // Meshed (it has the sidecar), so the answer names its identity.
        let mut meshed = pod(&name, &sa);
        let mut sidecar = meshed.spec.as_ref().unwrap().containers[0].clone();
        sidecar.name = "warden-proxy".into();
        meshed.spec.as_mut().unwrap().containers.push(sidecar);
        api.create(&PostParams::default(), &meshed).await.unwrap();
        let addr: std::net::SocketAddr = format!("{}:8080", load_ip(i)).parse().unwrap();
        let mut answers = one.changes(addr).expect("watched since the first lookups");
        let expected = format!("spiffe://cluster.local/ns/{ns}/sa/{sa}");
        let ip = load_ip(i);
        let status = serde_json::json!({"status": {"podIP": ip, "podIPs": [{"ip": ip}]}});
        let at = Instant::now();
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
        tokio::time::timeout(
            Duration::from_secs(30),
            answers.wait_for(|a| {
                a.as_ref()
                    .is_some_and(|a| a.identities.iter().any(|id| id.as_str() == expected))
            }),
        )
        .await
        .expect("the new identity within 30 s")
        .unwrap();
        times.push(at.elapsed());
    }
    times.sort();
    times
}

/// Awaits every future (spawned, so they progress together).
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<Duration>
where
    F: std::future::Future<Output = Duration> + Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

fn main() {
    let options = options();
    if !apiserver::available() {
        eprintln!("control_plane: the test API server is not built; run scripts/testenv.sh");
        std::process::exit(1);
    }
    warden_identity::tls::install_crypto_provider();
    let api = apiserver::get();
    api.install_crds();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let bench_pods = options.proxies.iter().copied().max().unwrap_or(1);
    runtime.block_on(async {
        let client = api.client().await;
        fill(&client, &options, bench_pods).await;
        let policies: Api<AuthorizationPolicy> = Api::namespaced(client.clone(), BENCH_NS);
        policies
            .patch(
                "bench-allow",
                &PatchParams::apply("warden-bench").force(),
                &Patch::Apply(&policy(BENCH_NS, "bench-allow", "bench", "/start")),
            )
            .await
            .unwrap();

        let identity = mesh::Identity::start();
        let spawned = Instant::now();
        let controller =
            mesh::controller(&api.kubeconfig, &identity, "bench", BENCH_NS, "127.0.0.1:0");
        mesh::eventually("the controller lists everything", || {
            let (status, body) = mesh::http_get(&controller.admin, "/ready", "localhost");
            if status.contains(" 200") { Ok(()) } else { Err(format!("{status} {body}")) }
        });
        let synced = spawned.elapsed();
        let (cpu, rss, peak) = usage(controller.process.pid());
        eprintln!(
            "control_plane: controller ready in {:.2}s; {cpu:.2} CPU-s; RSS {rss:.1} MB (peak {peak:.1} MB)",
            synced.as_secs_f64()
        );

        let ca = CertificateAuthority::load(&identity.dir.path().join("ca"), None).unwrap();
        let id = SpiffeId::for_service_account(&TrustDomain::default(), BENCH_NS, "bench").unwrap();
        let svid = ca.issue(&id, Duration::from_secs(3600)).unwrap();
        let trust = Arc::new(warden_identity::TrustStore::single(ca.bundle().clone()));
        let tls = TlsOptions {
            server_alpn: vec![],
            client_alpn: vec![],
            client_auth: ClientAuth::Required,
        };
        let (_credentials_tx, credentials) =
            watch::channel(Arc::new(Credentials::build(svid, trust, &tls).unwrap()));

        let mut rows = Vec::new();
        for &n in &options.proxies {
            let row = measure(&client, &controller, &credentials, n, options.rounds).await;
            eprintln!(
                "control_plane: {n} proxies: p50 {:?} p99 {:?} max {:?} ({} samples); all subscribed in {:?}; controller {:.3} CPU-s per write, RSS {:.1} MB",
                row.p50, row.p99, row.max, row.samples, row.subscribe, row.cpu_per_round, row.rss
            );
            rows.push(row);
            // Let the previous streams close before the next size.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let load_pods = options.pods.saturating_sub(bench_pods);
        settle(controller.process.pid()).await;
        let cost = client_cost::measure(
            &client,
            &controller,
            &credentials,
            options.rounds,
            1000.min(load_pods),
            Duration::from_secs(10),
        )
        .await;
        let disco = measure_discovery(
            &client,
            &controller,
            &credentials,
            load_pods,
            bench_pods,
            20,
            options.rounds,
        )
        .await;
        let (cpu, rss, peak) = usage(controller.process.pid());
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        println!("\n### discovery\n");
        println!(
            "one proxy (single-threaded runtime), 1,000 new destinations: first lookup p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms; cached p50 {:.4} ms, p99 {:.4} ms; its memory (RSS) {:.0} KB for the first 1,000 destinations, {:.0} KB for the next 1,000 (of which {:.0} KB live heap)",
            ms(percentile(&disco.first, 50.0)),
            ms(percentile(&disco.first, 90.0)),
            ms(percentile(&disco.first, 99.0)),
            ms(percentile(&disco.cached, 50.0)),
            ms(percentile(&disco.cached, 99.0)),
            disco.rss_per_1000_kb,
            disco.rss_next_1000_kb,
            disco.heap_next_1000_kb
        );
        println!(
            "a watched pod's IP reused by a pod of another ServiceAccount: the new identity reaches the proxy p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms after the write ({} samples)",
            ms(percentile(&disco.identity_change, 50.0)),
            ms(percentile(&disco.identity_change, 99.0)),
            ms(*disco.identity_change.last().unwrap()),
            disco.identity_change.len()
        );
        println!(
            "{} proxies x {} destinations subscribed (50 proxies at a time) in {:.2} s; controller RSS {:.1} MB; a Service's endpoint change reaches all of them: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples); controller {:.1} ms CPU per change\n",
            disco.clients,
            disco.per_client,
            disco.subscribe.as_secs_f64(),
            disco.controller_rss,
            ms(percentile(&disco.fanout, 50.0)),
            ms(percentile(&disco.fanout, 99.0)),
            ms(*disco.fanout.last().unwrap()),
            disco.fanout.len(),
            disco.controller_cpu_per_update * 1e3
        );
        println!("\n### the control-plane client's cost to one sidecar (CPU of its thread)\n");
        println!("| connect, first snapshot ({} policies), discovery stream | per policy write applied | per first lookup | per cached lookup (each new outbound connection) | at rest, holding {} destinations | live heap held |", cost.policies, cost.destinations);
        println!("|---|---|---|---|---|---|");
        println!(
            "| {:.0} µs | {:.0} µs | {:.1} µs | {:.2} µs | {:.1} µs per second | {:.0} KB |",
            cost.start_cpu_us,
            cost.per_update_us,
            cost.per_first_lookup_us,
            cost.per_cached_lookup_us,
            cost.idle_us_per_s,
            cost.heap_kb
        );
        println!("\n### control_plane ({} pods, {} policies, {} rounds)\n", options.pods, options.policies + 1, options.rounds);
        println!("controller: ready (every watch listed) {:.2} s after start; {cpu:.1} CPU-s in all; RSS now {rss:.1} MB, peak {peak:.1} MB\n", synced.as_secs_f64());
        println!("| proxies | apply-to-enforce p50 | p99 | max | samples | all subscribed in | controller CPU per write | controller RSS |");
        println!("|---|---|---|---|---|---|---|---|");
        for r in &rows {
            println!(
                "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {} | {:.2} s | {:.1} ms | {:.1} MB |",
                r.proxies,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3,
                r.max.as_secs_f64() * 1e3,
                r.samples,
                r.subscribe.as_secs_f64(),
                r.cpu_per_round * 1e3,
                r.rss
            );
        }
    });
}
