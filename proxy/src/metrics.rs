//! The proxy's Prometheus series (DESIGN.md section 5): names, help texts, and the calls
//! that record them. Labels are bounded: direction, identities, status code, result.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use metrics::{
    counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter,
    Gauge, Histogram, Unit,
};

/// Which way traffic flows through this proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From a peer proxy to the local app.
    Inbound,
    /// From the local app to a peer proxy.
    Outbound,
}

impl Direction {
    /// The `direction` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Registers help texts and units for every series.
pub fn describe() {
    describe_counter!(
        "warden_requests_total",
        "HTTP requests proxied, by direction, client and server identity, and status code."
    );
    describe_histogram!(
        "warden_request_duration_seconds",
        Unit::Seconds,
        "Time from receiving a request to its response headers, by direction and identities."
    );
    describe_counter!(
        "warden_tcp_connections_opened_total",
        "TCP connections accepted or opened by the proxy, by direction."
    );
    describe_counter!(
        "warden_tcp_connections_closed_total",
        "TCP connections closed, by direction and whether they ended in an error."
    );
    describe_gauge!(
        "warden_tcp_connections_active",
        "TCP connections currently open, by direction."
    );
    describe_counter!(
        "warden_tcp_bytes_total",
        Unit::Bytes,
        "Bytes relayed for TCP connections, by direction, identities, flow (client_to_server, server_to_client) and tls (false: plain TCP to a destination without a sidecar)."
    );
    describe_counter!(
        "warden_tls_handshakes_total",
        "TLS handshakes with peer proxies, by direction and result."
    );
    describe_histogram!(
        "warden_tls_handshake_duration_seconds",
        Unit::Seconds,
        "Time to complete a TLS handshake with a peer proxy, by direction."
    );
    describe_counter!(
        "warden_connections_refused_total",
        "Connections refused because a listener was at its connection limit, by direction."
    );
    describe_counter!(
        "warden_outbound_refused_total",
        "Redirected outbound connections refused, by reason (unmeshed-destination: meshOnly; unknown-destination: unknownDestinations refuse)."
    );
    describe_counter!(
        "warden_outbound_connections_total",
        "App connections routed by the outbound, by tls (true: mTLS to a peer proxy; false: plain TCP to a destination without a sidecar or outside the mesh)."
    );
    describe_counter!(
        "warden_log_lines_dropped_total",
        "Log lines dropped because stderr did not take them as fast as they came (1 MiB buffered)."
    );
}

/// Creates every series whose label values are known in advance at zero, so dashboards and
/// alerts see 0 rather than "no data" before the first event.
pub fn initialize() {
    for direction in [Direction::Inbound, Direction::Outbound] {
        let d = direction.as_str();
        for result in ["success", "failure", "timeout"] {
            counter!("warden_tls_handshakes_total", "direction" => d, "result" => result)
                .increment(0);
        }
        counter!("warden_connections_refused_total", "direction" => d).increment(0);
    }
    counter!("warden_log_lines_dropped_total").increment(0);
    // The per-connection series, registered (at zero) on this thread.
    CONNECTION_SERIES.with(|_| {});
}

/// An HTTP request's outcome.
pub fn request(
    direction: Direction,
    client_id: &str,
    server_id: &str,
    status: u16,
    elapsed: Duration,
) {
    let register = || register_request_series(direction, client_id, server_id, status);
    let record = |(requests, duration): &RequestSeries| {
        requests.increment(1);
        duration.record(elapsed.as_secs_f64());
    };
    REQUEST_SERIES.with_borrow_mut(|clients| {
        // Each identity hashed once when both are known (nearly always); keys are allocated
        // only for a new one, as `entry` would need owned keys on every call.
        if let Some(series) = clients
            .get_mut(client_id)
            .and_then(|servers| servers.get_mut(server_id))
        {
            record(series.entry((direction, status)).or_insert_with(register));
            return;
        }
        let series = clients
            .entry(client_id.into())
            .or_default()
            .entry(server_id.into())
            .or_default();
        record(series.entry((direction, status)).or_insert_with(register));
    });
}

/// A request series' counter and duration histogram.
type RequestSeries = (Counter, Histogram);

/// Request series by client, server, direction and status.
type RequestSeriesIndex =
    FastMap<Box<str>, FastMap<Box<str>, FastMap<(Direction, u16), RequestSeries>>>;

/// A map with a fast hasher seeded per process: its keys are identities, hashed on every
/// request (SipHash was ~1,300 instructions per request here, callgrind).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

thread_local! {
    /// The request series' handles, per thread: a request then costs three lookups, not four
    /// label strings and two registry lookups (~7,000 instructions, callgrind). Bounded as
    /// the series themselves are: by the identities and status codes seen.
    static REQUEST_SERIES: RefCell<RequestSeriesIndex> = RefCell::default();
}

fn register_request_series(
    direction: Direction,
    client_id: &str,
    server_id: &str,
    status: u16,
) -> RequestSeries {
    let labels = [
        ("direction", direction.as_str().to_string()),
        ("client_id", client_id.to_string()),
        ("server_id", server_id.to_string()),
        ("status_code", status.to_string()),
    ];
    (
        counter!("warden_requests_total", &labels),
        histogram!("warden_request_duration_seconds", &labels[..3]),
    )
}

/// An authorization decision (`allow`, `deny` or `audit`) and the policy that made it.
pub fn authz_decision(decision: &'static str, policy: &str) {
    AUTHZ_SERIES.with_borrow_mut(|policies| {
        // The policy hashed once when known (nearly always), its key allocated only if new.
        let series = match policies.get_mut(policy) {
            Some(series) => series,
            None => policies.entry(policy.into()).or_default(),
        };
        match series.iter().find(|(d, _)| *d == decision) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = counter!("warden_authz_decisions_total", "decision" => decision, "policy" => policy.to_string());
                counter.increment(1);
                series.push((decision, counter));
            }
        }
    });
}

thread_local! {
    /// The decision counters' handles by policy and decision, per thread, as for requests
    /// (~1,400 instructions a decision otherwise, callgrind). Bounded by the policies seen.
    static AUTHZ_SERIES: RefCell<AuthzSeriesIndex> = RefCell::default();
}

/// Decision counters by policy, then by decision.
type AuthzSeriesIndex = FastMap<Box<str>, Vec<(&'static str, Counter)>>;

/// The per-connection series' handles. Their labels are fixed, so they are registered once
/// per thread, not by name and labels on every connection (~4,400 instructions an outbound
/// connection, callgrind).
struct ConnectionSeries {
    /// `warden_tcp_connections_opened_total`, by direction (inbound, outbound).
    opened: [Counter; 2],
    /// `warden_tcp_connections_active`, by direction.
    active: [Gauge; 2],
    /// `warden_tcp_connections_closed_total`, by direction, then error (false, true).
    closed: [[Counter; 2]; 2],
    /// `warden_outbound_connections_total`, by tls (false, true).
    outbound: [Counter; 2],
}

impl ConnectionSeries {
    fn register() -> Self {
        let directions = [Direction::Inbound, Direction::Outbound].map(Direction::as_str);
        Self {
            opened: directions
                .map(|d| counter!("warden_tcp_connections_opened_total", "direction" => d)),
            active: directions.map(|d| gauge!("warden_tcp_connections_active", "direction" => d)),
            closed: directions.map(|d| {
                ["false", "true"].map(|error| {
                    counter!("warden_tcp_connections_closed_total", "direction" => d, "error" => error)
                })
            }),
            outbound: ["false", "true"]
                .map(|tls| counter!("warden_outbound_connections_total", "tls" => tls)),
        }
    }
}

thread_local! {
    /// Registered on a thread's first connection (the recorder is installed before any).
    static CONNECTION_SERIES: ConnectionSeries = ConnectionSeries::register();
}

/// A TCP connection opened (call [`tcp_closed`] when it ends).
pub fn tcp_opened(direction: Direction) {
    CONNECTION_SERIES.with(|series| {
        series.opened[direction as usize].increment(1);
        series.active[direction as usize].increment(1.0);
    });
}

/// A TCP connection closed.
pub fn tcp_closed(direction: Direction, error: bool) {
    CONNECTION_SERIES.with(|series| {
        series.closed[direction as usize][usize::from(error)].increment(1);
        series.active[direction as usize].decrement(1.0);
    });
}

/// Bytes moved through a relayed TCP connection (`tls`: false for plain TCP).
pub fn tcp_bytes(
    direction: Direction,
    client_id: &str,
    server_id: &str,
    tls: bool,
    client_to_server: u64,
    server_to_client: u64,
) {
    for (flow, n) in [
        ("client_to_server", client_to_server),
        ("server_to_client", server_to_client),
    ] {
        counter!(
            "warden_tcp_bytes_total",
            "direction" => direction.as_str(),
            "client_id" => client_id.to_string(),
            "server_id" => server_id.to_string(),
            "flow" => flow,
            "tls" => if tls { "true" } else { "false" }
        )
        .increment(n);
    }
}

/// A TLS handshake's outcome (`result`: `success`, `failure` or `timeout`).
pub fn tls_handshake(direction: Direction, result: &'static str, elapsed: Duration) {
    counter!("warden_tls_handshakes_total", "direction" => direction.as_str(), "result" => result)
        .increment(1);
    histogram!("warden_tls_handshake_duration_seconds", "direction" => direction.as_str())
        .record(elapsed.as_secs_f64());
}

/// A connection refused at the connection limit.
pub fn refused(direction: Direction) {
    counter!("warden_connections_refused_total", "direction" => direction.as_str()).increment(1);
}

/// An app connection routed by the outbound (`tls`: false when passed through as plain TCP).
pub fn outbound_connection(tls: bool) {
    CONNECTION_SERIES.with(|series| series.outbound[usize::from(tls)].increment(1));
}

/// A redirected connection refused, by reason (e.g. `unmeshed-destination` under meshOnly).
pub fn outbound_refused(reason: &'static str) {
    counter!("warden_outbound_refused_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_series_count_under_their_own_labels() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // A fresh test thread: its handles are registered here, with this recorder.
        metrics::with_local_recorder(&recorder, || {
            tcp_opened(Direction::Inbound);
            tcp_opened(Direction::Inbound);
            tcp_opened(Direction::Outbound);
            tcp_closed(Direction::Inbound, true);
            outbound_connection(true);
            outbound_connection(false);
            outbound_connection(false);
        });
        let text = handle.render();
        for line in [
            r#"warden_tcp_connections_opened_total{direction="inbound"} 2"#,
            r#"warden_tcp_connections_opened_total{direction="outbound"} 1"#,
            r#"warden_tcp_connections_active{direction="inbound"} 1"#,
            r#"warden_tcp_connections_active{direction="outbound"} 1"#,
            r#"warden_tcp_connections_closed_total{direction="inbound",error="true"} 1"#,
            r#"warden_tcp_connections_closed_total{direction="inbound",error="false"} 0"#,
            r#"warden_tcp_connections_closed_total{direction="outbound",error="true"} 0"#,
            r#"warden_outbound_connections_total{tls="true"} 1"#,
            r#"warden_outbound_connections_total{tls="false"} 2"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn request_and_decision_series_count_under_their_own_labels() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let ms = Duration::from_millis(1);
        metrics::with_local_recorder(&recorder, || {
            // New client, new server for a known client, new status, then repeats.
            request(Direction::Inbound, "spiffe://t/a", "spiffe://t/s", 200, ms);
            request(Direction::Inbound, "spiffe://t/a", "spiffe://t/s", 200, ms);
            request(Direction::Inbound, "spiffe://t/a", "spiffe://t/s", 403, ms);
            request(Direction::Outbound, "spiffe://t/a", "spiffe://t/s", 200, ms);
            request(
                Direction::Inbound,
                "spiffe://t/a",
                "spiffe://t/other",
                200,
                ms,
            );
            request(Direction::Inbound, "spiffe://t/b", "spiffe://t/s", 200, ms);
            authz_decision("allow", "p1");
            authz_decision("allow", "p1");
            authz_decision("deny", "p1");
            authz_decision("allow", "p2");
        });
        let text = handle.render();
        let series = |direction: &str, client: &str, server: &str, status: u16, n: u32| {
            format!(
                r#"warden_requests_total{{direction="{direction}",client_id="{client}",server_id="{server}",status_code="{status}"}} {n}"#
            )
        };
        for line in [
            series("inbound", "spiffe://t/a", "spiffe://t/s", 200, 2),
            series("inbound", "spiffe://t/a", "spiffe://t/s", 403, 1),
            series("outbound", "spiffe://t/a", "spiffe://t/s", 200, 1),
            series("inbound", "spiffe://t/a", "spiffe://t/other", 200, 1),
            series("inbound", "spiffe://t/b", "spiffe://t/s", 200, 1),
            r#"warden_authz_decisions_total{decision="allow",policy="p1"} 2"#.to_string(),
            r#"warden_authz_decisions_total{decision="deny",policy="p1"} 1"#.to_string(),
            r#"warden_authz_decisions_total{decision="allow",policy="p2"} 1"#.to_string(),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        assert_eq!(text.matches("warden_requests_total{").count(), 5, "{text}");
    }
}
