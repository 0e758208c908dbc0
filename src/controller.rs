//! `warden controller`: Warden's control plane. `run` watches the policy CRDs, Pods and
//! Namespaces and writes each policy's status; `crds` prints the policy CRDs generated from
//! their Rust types (what `deploy/kubernetes/base/crds.yaml` holds).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use warden_controller::index::Index;

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
    eprintln!(
        "warden controller: watching (Kubernetes {})",
        version.git_version
    );
    let index = Arc::new(Mutex::new(Index::new()));
    warden_controller::watch::run(client, index, crate::signals::terminated()).await;
    Ok(())
}
