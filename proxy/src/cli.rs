//! The sidecar's commands, shared by the slim `warden-proxy` binary and the full `warden`
//! CLI: `proxy` (run the proxy, check its configuration, wait for it) and `init` (the pod's
//! interception rules), and what they need from a command line.

pub mod init;
pub mod proxy;

use std::io::Write;

/// How a command logs: the options every command of both binaries takes.
#[derive(clap::Args)]
pub struct LogArgs {
    /// Log filter, e.g. `info` or `warn,warden::access=info`.
    #[arg(long, global = true, env = "WARDEN_LOG", default_value = "warn")]
    pub log_level: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    pub log_json: bool,
}

impl LogArgs {
    /// Installs the process's log subscriber as these options say; keep the result until
    /// the process ends (dropping it writes the buffered lines).
    pub fn init(&self) -> anyhow::Result<crate::log_writer::Flusher> {
        crate::logging::init(&self.log_level, self.log_json)
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) ends the output quietly.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: writing the output: {e}");
        }
    }
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or SIGINT (Ctrl-C).
pub async fn terminated() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
