//! Per-hop latency of each request through a pair of proxies, for benchmarks only: compiled
//! with `--features hop-timing`, never in the sidecar image (issue 18's method).
//!
//! The client proxy marks each request it forwards with [`HEADER`]; the server proxy answers
//! with its own timestamps in the same header (taken off the request before the app sees it,
//! and off the response before the client's app does). Timestamps are `CLOCK_MONOTONIC`,
//! which both proxies share only on one host: a bench on one machine, as `benches/mesh` is.
//! The client proxy keeps one sample per completed request, five hops long:
//!
//! 1. `client_out`: the client proxy has the request head, until the server proxy has it
//!    (client proxy's forwarding, HTTP/2 and TLS, the kernel, the server proxy's wake-up);
//! 2. `server_in`: the server proxy has it, until it hands it to the app pool (policy,
//!    audit, header rewriting);
//! 3. `app`: until the app's response head is back in the server proxy (the app's time, the
//!    app connection's HTTP/1.1 encoding and decoding);
//! 4. `server_back`: until the client proxy has the response head;
//! 5. `client_back`: until the client proxy has handed the app the response body's end.
//!
//! `GET /debug/hops` on the client proxy's admin port gives its percentiles per hop as JSON,
//! `GET /debug/hops/reset` starts over.

use std::sync::{Arc, Mutex};

use http::{HeaderMap, HeaderValue, StatusCode};
use warden_identity::admin::{ExtraRoutes, RouteFuture};

use crate::http::{boxed, OnEnd, ProxyBody};

/// Asks the server proxy for its timestamps (request), carries them back (response).
pub const HEADER: &str = "x-warden-hop-timing";

/// The hops of a sample, in order.
const HOPS: [&str; 5] = [
    "client_out",
    "server_in",
    "app",
    "server_back",
    "client_back",
];

/// Samples kept at most (a bench run at 5,000 req/s for 60 s is 300,000).
const MAX_SAMPLES: usize = 2_000_000;

/// One request's hops in nanoseconds, in the order of [`HOPS`].
type Sample = [u32; 5];

/// One proxy's samples (the client proxy's: it completes them).
#[derive(Debug, Default)]
pub struct Recorder {
    samples: Mutex<Vec<Sample>>,
}

impl Recorder {
    fn samples(&self) -> std::sync::MutexGuard<'_, Vec<Sample>> {
        self.samples.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, sample: Sample) {
        let mut samples = self.samples();
        if samples.len() < MAX_SAMPLES {
            samples.push(sample);
        }
    }
}

/// Now, in nanoseconds of `CLOCK_MONOTONIC` (the same clock in every process of the host).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Client proxy, request on its way out: marks it and returns when it was taken.
pub fn outbound_request(headers: &mut HeaderMap) -> u64 {
    headers.insert(HEADER, HeaderValue::from_static("?"));
    now_ns()
}

/// Client proxy, response head back: reads the server proxy's timestamps off the response
/// and returns its body, which records the sample when it ends. A response without them
/// (an error of the client proxy's own, or a server proxy without this feature) records
/// nothing.
pub fn outbound_response(
    recorder: &Arc<Recorder>,
    sent: u64,
    headers: &mut HeaderMap,
    body: ProxyBody,
) -> ProxyBody {
    let back = now_ns();
    let server = headers
        .remove(HEADER)
        .and_then(|v| parse_stamps(v.to_str().ok()?));
    match server {
        Some([s_in, s_app, s_back]) => {
            let stamps = [sent, s_in, s_app, s_back, back];
            let recorder = recorder.clone();
            boxed(OnEnd::new(body, move || {
                recorder.record(sample(stamps, now_ns()))
            }))
        }
        None => body,
    }
}

/// Server proxy, request in: when it arrived, if the client proxy asks for timestamps.
pub fn inbound_request(headers: &HeaderMap, arrived: u64) -> Option<u64> {
    headers.contains_key(HEADER).then_some(arrived)
}

/// Server proxy, response head from the app: adds the timestamps for the client proxy.
pub fn inbound_response(arrived: u64, to_app: u64, headers: &mut HeaderMap) {
    let value = format!("{arrived},{to_app},{}", now_ns());
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(HEADER, v);
    }
}

fn parse_stamps(value: &str) -> Option<[u64; 3]> {
    let mut parts = value.split(',').map(|p| p.trim().parse::<u64>().ok());
    let stamps = [parts.next()??, parts.next()??, parts.next()??];
    parts.next().is_none().then_some(stamps)
}

/// The hops between consecutive timestamps (`stamps` is five, `end` the sixth), in ns.
fn sample(stamps: [u64; 5], end: u64) -> Sample {
    let mut all = [0u64; 6];
    all[..5].copy_from_slice(&stamps);
    all[5] = end;
    std::array::from_fn(|i| u32::try_from(all[i + 1].saturating_sub(all[i])).unwrap_or(u32::MAX))
}

/// Percentiles of each hop, and of the proxies' share (every hop but the app), in µs.
fn summary(samples: &[Sample]) -> serde_json::Value {
    let mut hops = serde_json::Map::new();
    let mut column = Vec::with_capacity(samples.len());
    for (i, name) in HOPS.iter().enumerate() {
        column.clear();
        column.extend(samples.iter().map(|s| u64::from(s[i])));
        hops.insert((*name).to_string(), percentiles(&mut column));
    }
    column.clear();
    column.extend(
        samples
            .iter()
            .map(|s| s.iter().map(|&h| u64::from(h)).sum::<u64>() - u64::from(s[2])),
    );
    hops.insert("proxies".to_string(), percentiles(&mut column));
    column.clear();
    column.extend(
        samples
            .iter()
            .map(|s| s.iter().map(|&h| u64::from(h)).sum::<u64>()),
    );
    hops.insert("total".to_string(), percentiles(&mut column));
    serde_json::json!({ "samples": samples.len(), "unit": "µs", "hops": hops })
}

fn percentiles(ns: &mut [u64]) -> serde_json::Value {
    ns.sort_unstable();
    let at = |q: f64| -> f64 {
        if ns.is_empty() {
            return 0.0;
        }
        let rank = ((q * ns.len() as f64).ceil() as usize).clamp(1, ns.len());
        ns[rank - 1] as f64 / 1000.0
    };
    serde_json::json!({
        "p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "p999": at(0.999), "max": at(1.0),
    })
}

/// The admin routes `/debug/hops` and `/debug/hops/reset` over `recorder`, before `others`.
pub fn routes(recorder: Arc<Recorder>, others: Option<ExtraRoutes>) -> ExtraRoutes {
    Arc::new(move |path: &str| -> Option<RouteFuture> {
        let reply = match path {
            "/debug/hops" => {
                let samples = recorder.samples();
                warden_identity::http::json(StatusCode::OK, &summary(&samples))
            }
            "/debug/hops/reset" => {
                let mut samples = recorder.samples();
                let dropped = samples.len();
                samples.clear();
                warden_identity::http::text(StatusCode::OK, format!("{dropped} samples dropped\n"))
            }
            _ => return others.as_ref().and_then(|o| o(path)),
        };
        Some(Box::pin(async move { reply }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_become_hops() {
        assert_eq!(parse_stamps("10,20,30"), Some([10, 20, 30]));
        for bad in ["", "1,2", "1,2,3,4", "1,x,3", "-1,2,3"] {
            assert_eq!(parse_stamps(bad), None, "{bad:?}");
        }
        assert_eq!(
            sample([100, 150, 170, 970, 1000], 1010),
            [50, 20, 800, 30, 10]
        );
        // Out of order (no shared clock): zero, not a wrapped-around huge hop.
        assert_eq!(sample([100, 90, 170, 970, 1000], 1010)[0], 0);
    }

    #[test]
    fn summary_gives_percentiles_and_the_proxies_share() {
        let samples: Vec<Sample> = (1..=1000)
            .map(|i| [i * 1000, 1000, 50_000, 1000, 1000])
            .collect();
        let s = summary(&samples);
        assert_eq!(s["samples"], 1000);
        assert_eq!(s["hops"]["client_out"]["p50"], 500.0);
        assert_eq!(s["hops"]["client_out"]["p99"], 990.0);
        assert_eq!(s["hops"]["client_out"]["p999"], 999.0);
        assert_eq!(s["hops"]["client_out"]["max"], 1000.0);
        assert_eq!(s["hops"]["app"]["p50"], 50.0);
        assert_eq!(s["hops"]["proxies"]["max"], 1003.0);
        assert_eq!(s["hops"]["total"]["max"], 1053.0);
    }
}
