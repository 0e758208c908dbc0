//! `warden proxy`: run the per-pod proxy, or check its configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;
use warden_proxy::config::ProxyConfig;
use warden_proxy::proxy::{self, Listeners};

/// `warden proxy` options.
#[derive(clap::Args)]
pub struct Args {
    /// The YAML configuration file (optional: defaults and WARDEN_* environment variables).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Validate the configuration, print it resolved, and exit.
    #[arg(long)]
    check_config: bool,
}

/// Runs the proxy until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    // The one place the process environment is handed to the configuration.
    let vars = std::env::vars().collect();
    let config = ProxyConfig::load(args.config.as_deref(), &vars)?;
    if args.check_config {
        crate::output::print(&config.to_yaml());
        return Ok(ExitCode::SUCCESS);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
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
            crate::signals::terminated().await;
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
