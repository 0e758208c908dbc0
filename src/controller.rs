//! `warden controller`: Warden's control plane. `run` watches the policy CRDs, Pods and
//! Namespaces and writes each policy's status; `crds` prints the policy CRDs generated from
//! their Rust types (what `deploy/kubernetes/base/crds.yaml` holds).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use warden_controller::index::Index;
use warden_core::contract;
use warden_identity::admin::Readiness;

/// `warden controller` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Watch policies, Pods and Namespaces; keep the index; write policy statuses.
    Run(RunArgs),
    /// Print the CustomResourceDefinitions of AuthorizationPolicy and MeshPolicy.
    Crds,
}

/// `warden controller run` options.
#[derive(clap::Args)]
pub struct RunArgs {
    /// A kubeconfig (its current context) for runs outside the cluster; in a pod, the
    /// ServiceAccount's in-cluster credentials are used.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Address of the admin endpoint (/live, /ready once every watch has listed, /metrics).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], contract::ADMIN_PORT)))]
    admin_listen: SocketAddr,
    /// The namespace of the Lease that elects the status writer (the controller's own).
    #[arg(long, env = "WARDEN_POD_NAMESPACE", default_value = contract::SYSTEM_NAMESPACE)]
    lease_namespace: String,
    /// This replica's name in the Lease (its pod name).
    #[arg(long, env = "WARDEN_POD_NAME")]
    identity: String,
    /// How long a Lease renewal holds; the writer renews every third of it.
    #[arg(long, default_value = "15s", value_parser = warden_core::duration::parse_duration)]
    lease_duration: Duration,
}

/// Runs a `warden controller` subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Crds => crate::output::print(&warden_controller::crd::crds_yaml()),
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(serve(args))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn client(args: &RunArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::incluster()
            .context("not in a pod (no in-cluster credentials): pass --kubeconfig FILE")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let client = client(&args).await?;
    let version = client
        .apiserver_version()
        .await
        .context("cannot reach the API server")?;
    let shutdown = CancellationToken::new();
    let (ready_tx, admin_addr) = crate::admin::start(args.admin_listen, shutdown.clone()).await?;
    let (synced_tx, mut synced) = tokio::sync::watch::channel(false);
    let (leader_tx, leader) = tokio::sync::watch::channel(false);
    tokio::spawn(warden_controller::lease::run(
        client.clone(),
        args.lease_namespace.clone(),
        args.identity.clone(),
        args.lease_duration,
        leader_tx,
        shutdown.clone().cancelled_owned(),
    ));
    tokio::spawn(async move {
        if synced.wait_for(|s| *s).await.is_ok() {
            ready_tx.send_replace(Readiness {
                ready: true,
                detail: "ready: every watch has listed".into(),
            });
        }
    });
    eprintln!(
        "warden controller: watching (Kubernetes {}), admin on {admin_addr}",
        version.git_version
    );
    let index = Arc::new(Mutex::new(Index::new()));
    let watches = warden_controller::watch::run(
        client,
        index,
        synced_tx,
        leader,
        shutdown.clone().cancelled_owned(),
    );
    tokio::select! {
        () = watches => {}
        () = crate::signals::terminated() => {}
    }
    shutdown.cancel();
    Ok(())
}
