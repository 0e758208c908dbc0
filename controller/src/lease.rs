//! Which replica writes statuses: a `coordination.k8s.io/v1` Lease (`warden-controller` in
//! the controller's namespace), held by renewing it before it expires. Every replica keeps
//! the index and serves; only the holder writes, so replicas never fight over a status.
//! The decision is a pure function; the loop around it only reads and writes the Lease,
//! with the API server's optimistic concurrency (resourceVersion) settling races.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// The Lease's name.
pub const LEASE_NAME: &str = "warden-controller";

/// What the Lease says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Who holds it.
    pub identity: String,
    /// When it was last renewed (seconds since the epoch).
    pub renewed: i64,
    /// For how long a renewal holds (seconds).
    pub duration: i64,
}

/// What this replica does with the Lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// We hold it: renew it.
    Renew,
    /// Someone else holds it and it is current: wait.
    Follow,
}

/// The step for replica `me` at `now`, given the Lease's holder (`None`: no Lease, or none
/// holds it).
pub fn step(holder: Option<&Holder>, me: &str, now: i64) -> Step {
    match holder {
        None => Step::Acquire,
        Some(h) if h.identity == me => Step::Renew,
        Some(h) if now >= h.renewed + h.duration => Step::Acquire,
        Some(_) => Step::Follow,
    }
}

fn holder(lease: &Lease) -> Option<Holder> {
    let spec = lease.spec.as_ref()?;
    let identity = spec.holder_identity.clone().filter(|h| !h.is_empty())?;
    let renewed = spec.renew_time.as_ref()?.0.as_second();
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
    Some(Holder {
        identity,
        renewed,
        duration,
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Tries one step; returns whether this replica holds the Lease afterwards.
async fn try_once(api: &Api<Lease>, me: &str, duration: Duration) -> Result<bool, kube::Error> {
    let current = api.get_opt(LEASE_NAME).await?;
    let now_time = MicroTime(k8s_openapi::jiff::Timestamp::now());
    let seconds = i32::try_from(duration.as_secs()).unwrap_or(i32::MAX);
    let held = |previous: Option<&LeaseSpec>, acquired: bool| LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(seconds),
        renew_time: Some(now_time.clone()),
        acquire_time: if acquired {
            Some(now_time.clone())
        } else {
            previous.and_then(|p| p.acquire_time.clone())
        },
        lease_transitions: previous
            .and_then(|p| p.lease_transitions)
            .map(|t| t + i32::from(acquired)),
        ..Default::default()
    };
    match current {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(LEASE_NAME.to_string()),
                    ..Default::default()
                },
                spec: Some(held(None, true)),
            };
            api.create(&PostParams::default(), &lease).await?;
            Ok(true)
        }
        Some(mut lease) => match step(holder(&lease).as_ref(), me, now()) {
            Step::Follow => Ok(false),
            step => {
                // The resourceVersion read makes this a compare-and-swap: a replica that
                // lost the race gets a conflict and follows.
                lease.spec = Some(held(lease.spec.as_ref(), step == Step::Acquire));
                api.replace(LEASE_NAME, &PostParams::default(), &lease)
                    .await?;
                Ok(true)
            }
        },
    }
}

/// Keeps trying to hold the Lease in `namespace` as `me`, every third of `duration`,
/// publishing whether this replica holds it, until `shutdown`.
pub async fn run(
    client: Client,
    namespace: String,
    me: String,
    duration: Duration,
    leader: watch::Sender<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let api: Api<Lease> = Api::namespaced(client, &namespace);
    let period = (duration / 3).max(Duration::from_millis(200));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let holds = match try_once(&api, &me, duration).await {
            Ok(holds) => holds,
            Err(kube::Error::Api(e)) if e.code == 409 => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or renew the Lease; not writing statuses");
                false
            }
        };
        if *leader.borrow() != holds {
            tracing::info!(holds, identity = %me, "status writer changed");
        }
        leader.send_replace(holds);
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(period) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_goes_to_whoever_finds_it_free_or_expired() {
        let held = |by: &str, renewed| Holder {
            identity: by.into(),
            renewed,
            duration: 15,
        };
        let cases = [
            (None, 100, Step::Acquire),
            (Some(held("me", 90)), 100, Step::Renew),
            (Some(held("me", 0)), 100, Step::Renew), // ours, even if late: renew
            (Some(held("other", 90)), 100, Step::Follow),
            (Some(held("other", 85)), 99, Step::Follow),
            (Some(held("other", 85)), 100, Step::Acquire), // expired at 100
            (Some(held("other", 0)), 100, Step::Acquire),
        ];
        for (holder, now, want) in cases {
            assert_eq!(
                step(holder.as_ref(), "me", now),
                want,
                "{holder:?} at {now}"
            );
        }
    }
}
