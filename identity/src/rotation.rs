//! Keeping a workload's SVID fresh: obtain one before serving anything, renew at ~70% of its
//! lifetime (with jitter, so a fleet does not renew in step), retry failures with capped
//! exponential backoff while the current certificate stays in use, and publish ready rustls
//! configurations through a watch channel. New handshakes read the latest; live connections
//! keep the certificate they were made with.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use warden_core::SpiffeId;

use crate::bundle::TrustStore;
use crate::ca::SharedCa;
use crate::client::CertifyClient;
use crate::credential::Svid;
use crate::tls::{self, ClientAuth, TlsError};
use crate::verify::ExpectedPeer;

/// Everything a listener or connector needs, built once per certificate.
#[derive(Debug)]
pub struct Credentials {
    /// The current SVID.
    pub svid: Svid,
    /// When it was obtained, by the local clock: renewal is scheduled from here, not from
    /// `notBefore`, which the CA backdates for clock skew.
    pub obtained_at: SystemTime,
    /// The trust store that goes with it.
    pub trust: Arc<TrustStore>,
    /// Server side: presents the SVID.
    pub server: Arc<ServerConfig>,
    /// Client side: presents the SVID, accepts any identity of a trusted trust domain.
    pub client: Arc<ClientConfig>,
}

/// ALPN and client-authentication settings of the published configurations.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// ALPN protocols the server side offers.
    pub server_alpn: Vec<Vec<u8>>,
    /// ALPN protocols the client side asks for.
    pub client_alpn: Vec<Vec<u8>>,
    /// Whether the server side requires client SVIDs.
    pub client_auth: ClientAuth,
}

impl Credentials {
    /// Builds both configurations for an SVID.
    pub fn build(svid: Svid, trust: Arc<TrustStore>, opts: &TlsOptions) -> Result<Self, TlsError> {
        let server_alpn: Vec<&[u8]> = opts.server_alpn.iter().map(Vec::as_slice).collect();
        let client_alpn: Vec<&[u8]> = opts.client_alpn.iter().map(Vec::as_slice).collect();
        let server = tls::server_config(&svid, trust.clone(), &server_alpn, opts.client_auth)?;
        let client =
            tls::client_config(&svid, trust.clone(), ExpectedPeer::AnyTrusted, &client_alpn)?;
        Ok(Self {
            svid,
            obtained_at: SystemTime::now(),
            trust,
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }
}

/// Where certificates come from.
#[derive(Debug)]
pub enum CertSource {
    /// The identity service, over HTTPS (workloads).
    Remote(CertifyClient),
    /// An in-process CA (the identity service's own serving certificate, the demo).
    Local {
        /// The CA.
        ca: Arc<SharedCa>,
        /// The identity to issue.
        id: SpiffeId,
        /// DNS SANs to add.
        dns_names: Vec<String>,
        /// Lifetime of each certificate.
        ttl: Duration,
    },
}

impl CertSource {
    /// A certificate: the first one, or the one that replaces `current`.
    async fn obtain(&self, current: Option<&Svid>) -> Result<(Svid, Arc<TrustStore>), String> {
        match self {
            CertSource::Remote(client) => match current {
                Some(current) => client.renew(current).await,
                None => client.certify().await,
            }
            .map(|issued| (issued.svid, issued.trust))
            .map_err(|e| e.to_string()),
            CertSource::Local {
                ca,
                id,
                dns_names,
                ttl,
            } => {
                let ca = ca.get();
                let svid = ca
                    .issue_with_dns(id, dns_names, *ttl)
                    .map_err(|e| e.to_string())?;
                Ok((svid, Arc::new(TrustStore::single(ca.bundle().clone()))))
            }
        }
    }
}

/// Timing of renewals and retries.
#[derive(Debug, Clone)]
pub struct RotationOptions {
    /// Fraction of the lifetime after which to renew (0.7).
    pub renew_fraction: f64,
    /// Up to this fraction of the lifetime earlier, at random (0.1).
    pub jitter_fraction: f64,
    /// First retry delay after a failure.
    pub min_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
}

impl Default for RotationOptions {
    fn default() -> Self {
        Self {
            renew_fraction: 0.7,
            jitter_fraction: 0.1,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// How long to wait before renewing a certificate obtained at `obtained_at` and valid until
/// `not_after`: until `renew_fraction` of that span, minus up to `jitter_fraction` (`unit`
/// in [0, 1) picks where), and not at all if that time has passed.
pub fn renewal_delay(
    obtained_at: SystemTime,
    not_after: SystemTime,
    now: SystemTime,
    opts: &RotationOptions,
    unit: f64,
) -> Duration {
    let lifetime = not_after.duration_since(obtained_at).unwrap_or_default();
    let fraction = (opts.renew_fraction - opts.jitter_fraction * unit.clamp(0.0, 1.0)).max(0.0);
    let renew_at = obtained_at + lifetime.mul_f64(fraction);
    renew_at.duration_since(now).unwrap_or_default()
}

/// The delay before retry number `attempt` (0-based): doubling from `min_backoff`, capped
/// at `max_backoff`, then spread over its upper half by `unit` in [0, 1).
pub fn backoff(attempt: u32, opts: &RotationOptions, unit: f64) -> Duration {
    let base = opts
        .min_backoff
        .saturating_mul(2u32.saturating_pow(attempt.min(31)))
        .min(opts.max_backoff);
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// A random number in [0, 1) (for jitter).
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// A running rotation: the latest credentials, and the task keeping them fresh.
#[derive(Debug)]
pub struct Rotation {
    /// The latest credentials; `borrow()` for each new handshake.
    pub credentials: watch::Receiver<Arc<Credentials>>,
    /// The renewal task (ends on shutdown).
    pub task: tokio::task::JoinHandle<()>,
}

/// Obtains the first certificate (retrying until it succeeds), then keeps renewing it in the
/// background. Returns `None` only if `shutdown` fires before the first certificate.
pub async fn start(
    source: CertSource,
    tls: TlsOptions,
    opts: RotationOptions,
    shutdown: CancellationToken,
) -> Option<Rotation> {
    describe_metrics();
    let first = obtain_with_retry(&source, &tls, &opts, &shutdown, None).await?;
    let (tx, rx) = watch::channel(first);
    let task = tokio::spawn(async move {
        loop {
            let current = tx.borrow().clone();
            let delay = renewal_delay(
                current.obtained_at,
                current.svid.not_after(),
                SystemTime::now(),
                &opts,
                random_unit(),
            );
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            match obtain_with_retry(&source, &tls, &opts, &shutdown, Some(&current.svid)).await {
                Some(next) => {
                    tx.send_replace(next);
                }
                None => return,
            }
        }
    });
    Some(Rotation {
        credentials: rx,
        task,
    })
}

/// Tries until a certificate is obtained and its configs built, or shutdown. `current` is
/// the certificate still in use: it authenticates renewals where the service accepts that,
/// and its expiry says what failing means in the logs.
async fn obtain_with_retry(
    source: &CertSource,
    tls: &TlsOptions,
    opts: &RotationOptions,
    shutdown: &CancellationToken,
    current: Option<&Svid>,
) -> Option<Arc<Credentials>> {
    let current_expiry = current.map(Svid::not_after);
    let mut attempt = 0u32;
    loop {
        let result = source.obtain(current).await.and_then(|(svid, trust)| {
            Credentials::build(svid, trust, tls).map_err(|e| e.to_string())
        });
        match result {
            Ok(creds) => {
                let expiry = creds
                    .svid
                    .not_after()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default();
                metrics::gauge!("warden_identity_cert_expiry_timestamp_seconds")
                    .set(expiry.as_secs_f64());
                metrics::counter!("warden_identity_renewals_total", "result" => "success")
                    .increment(1);
                tracing::info!(id = %creds.svid.id(), expires_in_s = creds.svid.not_after().duration_since(SystemTime::now()).unwrap_or_default().as_secs(), "certificate obtained");
                return Some(Arc::new(creds));
            }
            Err(error) => {
                metrics::counter!("warden_identity_renewals_total", "result" => "failure")
                    .increment(1);
                let delay = backoff(attempt, opts, random_unit());
                match current_expiry {
                    Some(t) if t <= SystemTime::now() => {
                        tracing::error!(%error, retry_in_ms = delay.as_millis() as u64, "certificate expired and renewal failed; peers will refuse it until renewal succeeds")
                    }
                    Some(_) => {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "renewal failed; still serving with the current certificate")
                    }
                    None => {
                        tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "no certificate yet; retrying")
                    }
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(delay) => {}
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

fn describe_metrics() {
    metrics::describe_gauge!(
        "warden_identity_cert_expiry_timestamp_seconds",
        metrics::Unit::Seconds,
        "When the workload's current certificate expires (Unix time)."
    );
    metrics::describe_counter!(
        "warden_identity_renewals_total",
        "Attempts to obtain a certificate (the first one included), by result."
    );
    for result in ["success", "failure"] {
        metrics::counter!("warden_identity_renewals_total", "result" => result).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn renewal_schedule_table() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let opts = RotationOptions::default();
        // (lifetime, now offset, unit, expected delay)
        let cases = [
            (secs(100), secs(0), 0.0, secs(70)), // 70%
            (secs(100), secs(0), 1.0, secs(60)), // earliest with full jitter
            (secs(100), secs(0), 0.5, secs(65)),
            (secs(100), secs(30), 0.0, secs(40)), // part of the wait already passed
            (secs(100), secs(80), 0.0, secs(0)),  // overdue: renew now
            (secs(100), secs(200), 0.0, secs(0)), // expired: renew now
            (secs(86_400), secs(0), 0.0, secs(60_480)),
        ];
        for (lifetime, offset, unit, want) in cases {
            let got = renewal_delay(t0, t0 + lifetime, t0 + offset, &opts, unit);
            assert_eq!(
                got, want,
                "lifetime {lifetime:?} now +{offset:?} unit {unit}"
            );
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let opts = RotationOptions {
            min_backoff: S,
            max_backoff: 60 * S,
            ..Default::default()
        };
        // With unit = 1.0 the delay is the full base.
        let want = [1, 2, 4, 8, 16, 32, 60, 60];
        for (attempt, secs) in want.iter().enumerate() {
            assert_eq!(
                backoff(attempt as u32, &opts, 1.0),
                *secs * S,
                "attempt {attempt}"
            );
        }
        assert_eq!(backoff(3, &opts, 0.0), 4 * S, "never below half the base");
        assert_eq!(backoff(u32::MAX, &opts, 1.0), 60 * S, "no overflow");
    }

    #[test]
    fn random_units_are_in_range() {
        for _ in 0..1000 {
            let u = random_unit();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
