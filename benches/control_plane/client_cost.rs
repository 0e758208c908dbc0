//! What the control-plane client costs a sidecar (issue 18, item 5): both clients, policy and
//! discovery, on one single-threaded runtime sharing one channel as `warden-proxy` runs them,
//! with the CPU time of that runtime's thread measured around each kind of work.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::Api;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_controller::crd::AuthorizationPolicy;
use warden_core::policy::evaluate::PolicySet;
use warden_identity::rotation::Credentials;
use warden_proxy::control_plane;
use warden_proxy::discovery::{Discovery, DiscoveryOptions};
use warden_proxy::grpc_client::SharedChannel;

use super::{control_plane_target, live_heap_kb, load_ip, mesh, policy, sidecar_runtime, BENCH_NS};

/// The figures, CPU in microseconds of the sidecar thread.
pub struct ClientCost {
    /// Policies in the sidecar's snapshot.
    pub policies: usize,
    /// Connecting, the first snapshot and the discovery stream's opening.
    pub start_cpu_us: f64,
    /// Live heap held by both clients with the snapshot and `destinations` answers, KB.
    pub heap_kb: f64,
    /// Per policy write received and applied (the snapshot decoded, the set rebuilt).
    pub per_update_us: f64,
    /// Per first lookup of a destination (sent on the stream, answer decoded and stored).
    pub per_first_lookup_us: f64,
    /// Per lookup of a known destination: what each new outbound connection pays.
    pub per_cached_lookup_us: f64,
    /// Per second at rest, holding the snapshot and the answers (keep-alives, sweeps).
    pub idle_us_per_s: f64,
    /// Destinations held at rest.
    pub destinations: usize,
}

/// CPU time of the thread that runs `runtime` (a current-thread runtime on its own thread).
async fn thread_cpu(runtime: &tokio::runtime::Handle) -> Duration {
    runtime
        .spawn(async {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: a valid timespec to write into; this thread's own clock.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            assert_eq!(rc, 0);
            Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
        })
        .await
        .unwrap()
}

/// Measures a sidecar's control-plane clients for pod `p-0`: `rounds` policy writes,
/// `destinations` first and ten times as many cached lookups, and `idle` at rest.
pub async fn measure(
    client: &kube::Client,
    controller: &mesh::Controller,
    credentials: &watch::Receiver<Arc<Credentials>>,
    rounds: usize,
    destinations: usize,
    idle: Duration,
) -> ClientCost {
    let (sidecar, _stop_sidecar) = sidecar_runtime();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let heap_before = live_heap_kb();
    let cpu_before = thread_cpu(&sidecar).await;
    let target = control_plane_target(controller, "p-0");
    let (feed, mut set, _status) = control_plane::feed(&target);
    let channel = SharedChannel::new(target, credentials.clone());
    let options = DiscoveryOptions {
        lookup_timeout: Duration::from_secs(30),
        ..Default::default()
    };
    let discovery = Discovery::new(channel.clone(), options);
    sidecar.spawn(control_plane::run(channel, feed, stop.clone()));
    sidecar.spawn(discovery.clone().run(stop.clone()));
    set.wait_for(|s| s.is_loaded()).await.unwrap();
    let one = discovery.clone();
    sidecar
        .spawn(async move { one.resolve("192.0.2.1:80".parse().unwrap()).await })
        .await
        .unwrap();
    let start_cpu = thread_cpu(&sidecar).await - cpu_before;
    let policies = set.borrow().policies().len();

    // Policy writes, each waited for at the sidecar before the next.
    let api: Api<AuthorizationPolicy> = Api::namespaced(client.clone(), BENCH_NS);
    let before = thread_cpu(&sidecar).await;
    for r in 0..rounds {
        let marker = format!("/cost-{r}");
        let object = policy(BENCH_NS, "bench-allow", "bench", &marker);
        api.patch(
            "bench-allow",
            &PatchParams::apply("warden-bench").force(),
            &Patch::Apply(&object),
        )
        .await
        .unwrap();
        let holds = |s: &Arc<PolicySet>| {
            s.policies().iter().any(|p| {
                p.spec.rules.iter().any(|rule| {
                    rule.to
                        .paths
                        .as_ref()
                        .is_some_and(|paths| paths.iter().any(|x| x == &marker))
                })
            })
        };
        tokio::time::timeout(Duration::from_secs(30), set.wait_for(|s| holds(s)))
            .await
            .expect("the write reaches the sidecar within 30 s")
            .unwrap();
    }
    let per_update = (thread_cpu(&sidecar).await - before) / rounds as u32;

    // First lookups, then cached ones, each kind on the sidecar's thread alone.
    let addrs: Vec<std::net::SocketAddr> = (0..destinations)
        .map(|i| format!("{}:8080", load_ip(i)).parse().unwrap())
        .collect();
    let before = thread_cpu(&sidecar).await;
    let (one, list) = (discovery.clone(), addrs.clone());
    sidecar
        .spawn(async move {
            for addr in list {
                one.resolve(addr).await.expect("an answer");
            }
        })
        .await
        .unwrap();
    let first = thread_cpu(&sidecar).await - before;
    let before = thread_cpu(&sidecar).await;
    let (one, list) = (discovery.clone(), addrs.clone());
    sidecar
        .spawn(async move {
            for _ in 0..10 {
                for addr in &list {
                    one.resolve(*addr).await.expect("an answer");
                }
            }
        })
        .await
        .unwrap();
    let cached = thread_cpu(&sidecar).await - before;

    // At rest.
    let before = thread_cpu(&sidecar).await;
    let started = Instant::now();
    tokio::time::sleep(idle).await;
    let at_rest = thread_cpu(&sidecar).await - before;
    let idle_us_per_s = at_rest.as_secs_f64() * 1e6 / started.elapsed().as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    ClientCost {
        policies,
        start_cpu_us: us(start_cpu),
        heap_kb: live_heap_kb() - heap_before,
        per_update_us: us(per_update),
        per_first_lookup_us: us(first) / destinations as f64,
        per_cached_lookup_us: us(cached) / (10 * destinations) as f64,
        idle_us_per_s,
        destinations,
    }
}
