//! The control-plane client (DESIGN section 9): subscribes to this pod's policies at the
//! controller, over mTLS with the proxy's SVID (the controller's SVID must be the expected
//! one), and publishes each snapshot as the policy set in force.
//!
//! gRPC is spoken by hand over hyper's HTTP/2 client and prost messages (`warden_api::grpc`),
//! so the sidecar carries neither tonic nor tower. Until the first snapshot the set is
//! "not loaded" (everything denied, `/ready` 503); while the controller is unreachable the
//! last snapshot stays in force, its age visible on `/ready` and in
//! `warden_policy_snapshot_age_seconds`; the client reconnects with backoff and resyncs.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_api::convert::{snapshot_from_proto, ConvertError, PolicySnapshot};
use warden_api::grpc::{self, MAX_SNAPSHOT_BYTES};
use warden_api::policy::v1;
use warden_core::policy::evaluate::PolicySet;
use warden_identity::rotation::{backoff, random_unit, RotationOptions};

use crate::grpc_client::{self, SharedChannel};
pub use crate::grpc_client::{ControlPlaneClient, ControlPlaneError};
use crate::policy_dir::{PolicyStatus, SnapshotStatus};

/// The mesh policy's rules for outbound connections (both off without a control plane).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboundRules {
    /// Refuse destinations without a sidecar (`meshOnly`).
    pub mesh_only: bool,
    /// Refuse destinations the controller does not know (`unknownDestinations: refuse`).
    pub refuse_unknown: bool,
}

/// The senders the client publishes through (the receivers are the policy engine's).
#[derive(Debug)]
pub struct PolicyFeed {
    /// The policy set in force.
    pub set: watch::Sender<Arc<PolicySet>>,
    /// The mesh policy's rules for outbound connections.
    pub outbound: watch::Sender<OutboundRules>,
    /// The state shown on `/ready`.
    pub status: watch::Sender<PolicyStatus>,
}

/// A feed whose set is "not loaded" until the first snapshot, and its receivers.
pub fn feed(
    client: &ControlPlaneClient,
) -> (
    PolicyFeed,
    watch::Receiver<Arc<PolicySet>>,
    watch::Receiver<PolicyStatus>,
) {
    let (set, set_rx) = watch::channel(Arc::new(PolicySet::not_loaded()));
    let (status, status_rx) = watch::channel(PolicyStatus {
        error: Some(format!(
            "waiting for the first policy snapshot from the controller ({})",
            client.addresses.join(", ")
        )),
        ..Default::default()
    });
    let (outbound, _) = watch::channel(OutboundRules::default());
    (
        PolicyFeed {
            set,
            outbound,
            status,
        },
        set_rx,
        status_rx,
    )
}

fn describe_metrics() {
    metrics::describe_counter!(
        "warden_policy_snapshots_total",
        "Policy snapshots received from the controller, by result (accepted, refused: the last good one stays)."
    );
    metrics::describe_gauge!(
        "warden_policy_snapshot_age_seconds",
        "Seconds since the policy snapshot in force arrived (refreshed every few seconds)."
    );
    metrics::describe_gauge!(
        "warden_control_plane_connected",
        "1 while the policy stream to the controller is up."
    );
    metrics::describe_counter!(
        "warden_control_plane_disconnects_total",
        "Policy streams that ended or could not be opened."
    );
    for result in ["accepted", "refused"] {
        metrics::counter!("warden_policy_snapshots_total", "result" => result).increment(0);
    }
    metrics::counter!("warden_control_plane_disconnects_total").increment(0);
    metrics::gauge!("warden_control_plane_connected").set(0.0);
}

/// How often the snapshot age is refreshed.
const AGE_TICK: Duration = Duration::from_secs(2);

/// Subscribes on `channel` until `shutdown`, re-subscribing with backoff (on a new
/// connection, to the next address, when the old one closed or the controller said
/// UNAVAILABLE), and keeps `feed` current.
pub async fn run(channel: Arc<SharedChannel>, feed: PolicyFeed, shutdown: CancellationToken) {
    describe_metrics();
    let retry = RotationOptions {
        min_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
        ..Default::default()
    };
    let mut attempt = 0u32;
    let mut next_address = 0usize;
    let received: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    {
        let received = received.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AGE_TICK);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let at = *received.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = at {
                    metrics::gauge!("warden_policy_snapshot_age_seconds")
                        .set(at.elapsed().as_secs_f64());
                }
            }
        });
    }
    while !shutdown.is_cancelled() {
        let mut got_one = false;
        let mut connected = None;
        let outcome = tokio::select! {
            () = shutdown.cancelled() => break,
            outcome = subscribe(&channel, next_address, &mut connected, |address, snapshot| {
                got_one = true;
                *received.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                publish(&feed, address, snapshot);
            }) => outcome,
        };
        next_address += 1;
        metrics::gauge!("warden_control_plane_connected").set(0.0);
        metrics::counter!("warden_control_plane_disconnects_total").increment(1);
        if got_one {
            attempt = 0;
        }
        let error = match outcome {
            Ok(()) => "the controller ended the stream".to_string(),
            Err(e) => e.to_string(),
        };
        // A controller going away (or not ready) says UNAVAILABLE: move to the next one at
        // once, on a new connection.
        let unavailable = error.contains("UNAVAILABLE");
        if let (true, Some(address)) = (unavailable, &connected) {
            channel.give_up(address).await;
        }
        let delay = if unavailable && attempt == 0 {
            Duration::ZERO
        } else {
            backoff(attempt, &retry, random_unit())
        };
        attempt = attempt.saturating_add(1);
        feed.status.send_modify(|status| {
            if let Some(snapshot) = &mut status.snapshot {
                snapshot.connected_to = None;
                status.error = Some(format!(
                    "the controller is unreachable ({error}); keeping the last snapshot"
                ));
            } else {
                status.error = Some(format!(
                    "no policy snapshot from the controller yet ({error})"
                ));
            }
        });
        tracing::warn!(%error, retry_in = ?delay, "policy stream to the controller ended; keeping the last snapshot");
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Makes `snapshot` the policy set in force.
fn publish(feed: &PolicyFeed, address: &str, snapshot: PolicySnapshot) {
    let count = snapshot.policies.len();
    let version = snapshot.version.clone();
    let set = PolicySet::new(snapshot.policies).with_default(snapshot.default);
    // The set first: a status change makes /ready look at the set.
    feed.set.send_replace(Arc::new(set));
    feed.outbound.send_replace(OutboundRules {
        mesh_only: snapshot.mesh_only,
        refuse_unknown: snapshot.refuse_unknown,
    });
    feed.status.send_replace(PolicyStatus {
        policies: count,
        error: None,
        snapshot: Some(SnapshotStatus {
            version: version.clone(),
            received: Instant::now(),
            connected_to: Some(address.to_string()),
        }),
    });
    metrics::counter!("warden_policy_snapshots_total", "result" => "accepted").increment(1);
    metrics::gauge!("warden_policy_snapshot_age_seconds").set(0.0);
    let unix = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("warden_policy_snapshot_timestamp_seconds").set(unix.as_secs_f64());
    tracing::info!(controller = %address, %version, policies = count, default = ?snapshot.default, "policy snapshot in force");
}

/// One subscription: call `Watch` on the shared connection (connecting to address number
/// `attempt` if there is none; its address goes to `connected`), and hand every valid
/// snapshot to `on_snapshot` until the stream ends. A snapshot that does not convert is
/// refused whole (counted and logged) and the stream goes on.
async fn subscribe(
    channel: &SharedChannel,
    attempt: usize,
    connected: &mut Option<String>,
    mut on_snapshot: impl FnMut(&str, PolicySnapshot),
) -> Result<(), ControlPlaneError> {
    let (address, mut http2) = channel.get(attempt).await?;
    *connected = Some(address.clone());
    let request = grpc_client::RequestBody::once(grpc::frame(&v1::WatchRequest {
        pod: channel.target().pod.clone(),
    }));
    let body = grpc_client::call(&mut http2, &address, grpc::WATCH_INBOUND_POLICY, request).await?;
    metrics::gauge!("warden_control_plane_connected").set(1.0);
    grpc_client::read_messages(
        body,
        &address,
        MAX_SNAPSHOT_BYTES,
        |snapshot: v1::Snapshot| match snapshot_from_proto(&snapshot) {
            Ok(snapshot) => on_snapshot(&address, snapshot),
            Err(error) => refused(&address, &snapshot.version, &error),
        },
    )
    .await
}

fn refused(address: &str, version: &str, error: &ConvertError) {
    metrics::counter!("warden_policy_snapshots_total", "result" => "refused").increment(1);
    tracing::error!(controller = %address, %version, %error, "refused a policy snapshot; keeping the last good one");
}

/// `/ready`'s line for a control-plane snapshot: its version, age and the stream's state.
pub fn describe(snapshot: &SnapshotStatus) -> String {
    let age = snapshot.received.elapsed().as_secs();
    match &snapshot.connected_to {
        Some(address) => format!(
            "snapshot {} from the controller at {address}, {age}s old, stream up",
            snapshot.version
        ),
        None => format!(
            "snapshot {}, {age}s old; reconnecting to the controller",
            snapshot.version
        ),
    }
}
