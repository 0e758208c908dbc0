//! `warden controller`: Warden's control plane. `run` watches the policy CRDs, Pods and
//! Namespaces, serves each proxy its pod's policies over mTLS (its own SVID from the identity
//! service) and writes each policy's status; `crds` prints the policy CRDs generated from
//! their Rust types (what `deploy/kubernetes/base/crds.yaml` holds).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use warden_controller::destinations::Destinations;
use warden_controller::discovery_api::DiscoveryService;
use warden_controller::index::Index;
use warden_controller::policy_api::PolicyService;
use warden_controller::serve::ServeLimits;
use warden_core::{contract, SpiffeId, TrustDomain};
use warden_identity::admin::Readiness;
use warden_identity::client::{CertifyClient, CertifyClientConfig};
use warden_identity::rotation::{self, CertSource, RotationOptions, TlsOptions};
use warden_identity::tls::ClientAuth;
use warden_identity::{TrustBundle, TrustStore};

/// `warden controller` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Watch policies, Pods and Namespaces; serve proxies their policies; write statuses.
    Run(Box<RunArgs>),
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
    /// Address of the proxies' API (gRPC over mTLS).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], contract::CONTROLLER_PORT)))]
    listen: SocketAddr,
    /// The trust domain.
    #[arg(long, env = contract::env::TRUST_DOMAIN, default_value = "cluster.local", value_parser = TrustDomain::parse)]
    trust_domain: TrustDomain,
    /// The identity service the controller gets its own SVID from.
    #[arg(long, env = contract::env::IDENTITY_URL, default_value_t = format!("https://{}:{}", contract::identity_service_dns(), contract::IDENTITY_PORT))]
    identity_url: String,
    /// The token presented to the identity service (a projected ServiceAccount token).
    #[arg(long, env = contract::env::IDENTITY_TOKEN_FILE, default_value = "/var/run/secrets/warden/token")]
    identity_token_file: PathBuf,
    /// The trust bundle (PEM roots) of the trust domain.
    #[arg(long, env = contract::env::TRUST_BUNDLE, default_value = "/var/run/warden/bundle/bundle.crt")]
    trust_bundle: PathBuf,
    /// How long shutdown waits for proxies to move to another replica.
    #[arg(long, default_value = "5s", value_parser = warden_core::duration::parse_duration)]
    shutdown_grace: Duration,
}

/// Runs a `warden controller` subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Crds => warden_proxy::cli::print(&warden_controller::crd::crds_yaml()),
        Command::Run(args) => {
            let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
            runtime.block_on(serve(*args))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn client(args: &RunArgs) -> anyhow::Result<kube::Client> {
    let config = match &args.kubeconfig {
        Some(path) => kubeconfig_file(path).await?,
        None => kube::Config::incluster()
            .context("not in a pod (no in-cluster credentials): pass --kubeconfig FILE")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// The client configuration of a kubeconfig file, errors naming `--kubeconfig`.
pub async fn kubeconfig_file(path: &std::path::Path) -> anyhow::Result<kube::Config> {
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .with_context(|| format!("--kubeconfig {}", path.display()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .with_context(|| format!("--kubeconfig {}", path.display()))
}

/// The controller's own SVID, from the identity service like any workload's.
fn cert_source(args: &RunArgs) -> anyhow::Result<CertSource> {
    let bundle = TrustBundle::from_pem_file(args.trust_domain.clone(), &args.trust_bundle)
        .with_context(|| format!("--trust-bundle {}", args.trust_bundle.display()))?;
    let server_id = SpiffeId::for_service_account(
        &args.trust_domain,
        contract::SYSTEM_NAMESPACE,
        contract::IDENTITY_SERVICE_ACCOUNT,
    )?;
    let client = CertifyClient::new(
        CertifyClientConfig {
            url: args.identity_url.clone(),
            server_id,
            token_file: args.identity_token_file.clone(),
            expected_id: None,
            timeout: Duration::from_secs(10),
        },
        TrustStore::single(bundle),
    )
    .map_err(|e| anyhow::anyhow!("--identity-url {}: {e}", args.identity_url))?;
    Ok(CertSource::Remote(client))
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let source = cert_source(&args)?;
    let client = client(&args).await?;
    let version = client
        .apiserver_version()
        .await
        .context("cannot reach the API server")?;
    let grpc_listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let grpc_addr = grpc_listener.local_addr()?;
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
    let tls = TlsOptions {
        server_alpn: vec![b"h2".to_vec()],
        client_alpn: vec![],
        client_auth: ClientAuth::Required,
    };
    let serving = CancellationToken::new();
    let Some(rotation) =
        rotation::start(source, tls, RotationOptions::default(), shutdown.clone()).await
    else {
        anyhow::bail!("stopped before the controller had a certificate");
    };
    let own_id = rotation.credentials.borrow().svid.id().clone();
    {
        let ready_tx = ready_tx.clone();
        tokio::spawn(async move {
            if synced.wait_for(|s| *s).await.is_ok() {
                ready_tx.send_replace(Readiness {
                    ready: true,
                    detail: format!("ready: every watch has listed; serving proxies as {own_id}"),
                });
            }
        });
    }
    eprintln!(
        "warden controller: watching (Kubernetes {}), serving proxies on {grpc_addr}, admin on {admin_addr}",
        version.git_version
    );
    let index = Arc::new(Mutex::new(Index::new()));
    let destinations = Arc::new(Mutex::new(Destinations::new(args.trust_domain.clone())));
    let (revision_tx, revision) = tokio::sync::watch::channel(0u64);
    let notifier = warden_controller::discovery_api::Notifier::new();
    let limits = ServeLimits::default();
    let policy = PolicyService::new(
        index.clone(),
        revision,
        synced_tx.subscribe(),
        args.trust_domain.to_string(),
        limits.clone(),
        serving.clone(),
    );
    let discovery = DiscoveryService::new(
        destinations.clone(),
        notifier.clone(),
        synced_tx.subscribe(),
        args.trust_domain.to_string(),
        &limits,
        serving.clone(),
    );
    let server = tokio::spawn(warden_controller::serve::run(
        grpc_listener,
        policy,
        discovery,
        rotation.credentials.clone(),
        limits,
        serving.clone(),
    ));
    let feeds = warden_controller::watch::Feeds {
        index,
        policy_revision: revision_tx,
        destinations,
        notifier,
    };
    let watches = warden_controller::watch::run(
        client,
        feeds,
        synced_tx,
        leader,
        shutdown.clone().cancelled_owned(),
    );
    tokio::select! {
        () = watches => {}
        () = warden_proxy::cli::terminated() => {}
    }
    // Hand-over: leave the Service's endpoints first, then end every stream with
    // UNAVAILABLE so proxies reconnect to another replica at once (they keep enforcing
    // their last snapshot meanwhile: no policy gap).
    ready_tx.send_replace(Readiness::not_ready("not ready: shutting down"));
    serving.cancel();
    if tokio::time::timeout(args.shutdown_grace, server)
        .await
        .is_err()
    {
        eprintln!("warden controller: proxies did not all disconnect within the grace period");
    }
    shutdown.cancel();
    Ok(())
}
