//! The process's logs: a `tracing` subscriber writing text or JSON lines to stderr, whose
//! filter can be changed at runtime (the admin endpoint's `PUT /log-level`). Lines reach
//! stderr through [`crate::log_writer`]: logging never blocks a worker.

use std::sync::{Arc, OnceLock};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, Registry};
use warden_identity::admin::LogLevel;

use crate::log_writer::{self, Flusher};

static CONTROL: OnceLock<LogLevel> = OnceLock::new();

/// Installs the subscriber with `filter` (e.g. `info`, `warn,warden::access=info`). Keep
/// the returned [`Flusher`] until the process ends: dropping it writes what is buffered.
pub fn init(filter: &str, json: bool) -> anyhow::Result<Flusher> {
    let initial = parse(filter).map_err(|e| anyhow::anyhow!("--log-level {filter:?}: {e}"))?;
    let (writer, flusher) = log_writer::spawn(
        Box::new(std::io::stderr()),
        log_writer::MAX_BUFFERED,
        log_writer::OnDropped {
            each: Box::new(|| metrics::counter!("warden_log_lines_dropped_total").increment(1)),
            report: Box::new(|lines| {
                tracing::warn!(lines, "log lines dropped: stderr is not keeping up");
            }),
        },
    )
    .map_err(|e| anyhow::anyhow!("starting the log writer thread: {e}"))?;
    crate::access_log::install(writer.clone(), json);
    let (filter_layer, handle) = reload::Layer::<Targets, Registry>::new(initial);
    let text = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(writer.clone()));
    let json = json.then(|| tracing_subscriber::fmt::layer().json().with_writer(writer));
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(text)
        .with(json)
        .init();
    let control: LogLevel = Arc::new(move |new: Option<&str>| match new {
        None => handle
            .with_current(|f| f.to_string())
            .map_err(|e| e.to_string()),
        Some(filter) => {
            let parsed = parse(filter).map_err(|e| e.to_string())?;
            handle.reload(parsed).map_err(|e| e.to_string())?;
            tracing::warn!(filter, "log filter changed at runtime");
            Ok(filter.to_string())
        }
    });
    let _ = CONTROL.set(control);
    Ok(flusher)
}

/// A filter of comma-separated `level` and `target=level` directives. `Targets`, not
/// `EnvFilter`: the same syntax for what Warden documents, without a regex engine in the
/// sidecar binary (~300 KB of code pages).
fn parse(filter: &str) -> Result<Targets, tracing_subscriber::filter::ParseError> {
    filter.trim().parse()
}

/// The admin endpoint's view of logs and metrics for this process.
pub fn telemetry() -> warden_identity::admin::Telemetry {
    warden_identity::admin::Telemetry {
        metrics: warden_identity::telemetry::prometheus(),
        log_level: CONTROL.get().cloned(),
        extra_routes: None,
    }
}
