//! `proxy`: run the per-pod proxy, check its configuration, or wait until it is ready.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::ProxyConfig;
use crate::proxy::{self, Listeners};
use tokio_util::sync::CancellationToken;

/// `warden proxy` options.
#[derive(clap::Args)]
pub struct Args {
    /// The YAML configuration file (optional: defaults and WARDEN_* environment variables).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration, print it resolved, and exit.
    #[arg(long)]
    check_config: bool,
    /// Wait until the proxy in this pod is ready (its admin `/ready` on loopback), then exit:
    /// the app container's postStart hook in `regular` sidecar mode.
    #[arg(long)]
    wait_ready: bool,
    /// How long --wait-ready waits before failing.
    #[arg(long, default_value = "120s", value_parser = warden_core::duration::parse_duration)]
    wait_timeout: Duration,
}

/// Runs the proxy until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The one place the process environment is handed to the configuration.
    let vars = std::env::vars().collect();
    let config = ProxyConfig::load(args.config.as_deref(), &vars)?;
    if args.check_config {
        super::print(&config.to_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    if args.wait_ready {
        let admin = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), config.admin.listen.port());
        return wait_ready(admin, args.wait_timeout);
    }
    // This thread's runtime is the first worker; `proxy::run` starts the others, each a
    // single-threaded runtime of its own (see `workers`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        warden_identity::telemetry::prometheus(); // installed before anything is counted
        let listeners = Listeners::bind(&config).await?;
        let addrs = listeners.addrs();
        let source = proxy::cert_source(&config)?;
        eprintln!(
            "warden proxy: admin http://{} inbound {:?} outbound {:?}",
            addrs.admin, addrs.inbound, addrs.outbound
        );
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            super::terminated().await;
            stop.cancel();
        });
        let authz = proxy::authorizer(&config, shutdown.clone())?;
        proxy::run(
            config,
            listeners,
            source,
            authz,
            crate::logging::telemetry(),
            shutdown,
        )
        .await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Polls `GET /ready` on the admin port until it answers 200 or `timeout` passes.
fn wait_ready(admin: SocketAddr, timeout: Duration) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match ready_status(admin) {
            Ok(line) if line.starts_with("HTTP/1.1 200") => return Ok(ExitCode::SUCCESS),
            Ok(line) => last = line,
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("the proxy at http://{admin}/ready was not ready within {timeout:?}: {last}")
}

/// The status line of one `GET /ready`.
fn ready_status(admin: SocketAddr) -> std::io::Result<String> {
    let mut tcp = TcpStream::connect_timeout(&admin, Duration::from_secs(1))?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))?;
    tcp.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    tcp.take(4096).read_to_string(&mut response)?;
    Ok(response.lines().next().unwrap_or_default().to_string())
}
