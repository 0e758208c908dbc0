//! `warden identity`: run the issuance service (the CA over HTTPS) and its admin endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::contract;
use warden_core::duration::parse_duration;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::admin::Readiness;
use warden_identity::authn::Authenticator;
use warden_identity::ca::SharedCa;
use warden_identity::join_token::JoinTokens;
use warden_identity::rate_limit::Rate;
use warden_identity::service::{self, IdentityService, ServiceConfig, ServingIdentity};
use warden_identity::token_review::{TokenReviewConfig, TokenReviewer};
use warden_identity::{telemetry, CertificateAuthority};

/// How callers authenticate.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum AuthKind {
    /// Projected ServiceAccount tokens, checked with the TokenReview API.
    Kubernetes,
    /// Tokens whose SHA-256 hashes are listed in --join-tokens.
    JoinTokens,
}

/// `warden identity` options.
#[derive(clap::Args)]
pub struct Args {
    /// The CA directory (issuer.crt, issuer.key, bundle.crt), reloaded when it changes.
    #[arg(long)]
    ca_dir: PathBuf,
    /// The trust domain (default: from the issuer certificate).
    #[arg(long, value_parser = TrustDomain::parse)]
    trust_domain: Option<TrustDomain>,
    /// Address of the HTTPS issuance endpoint.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], contract::IDENTITY_PORT)))]
    listen: SocketAddr,
    /// Address of the admin endpoint (/live, /ready, /metrics).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], contract::ADMIN_PORT)))]
    admin_listen: SocketAddr,
    /// The service's own SPIFFE ID (default: spiffe://<td>/ns/warden-system/sa/warden-identity).
    #[arg(long, value_parser = SpiffeId::parse)]
    id: Option<SpiffeId>,
    /// DNS names in the serving certificate (repeatable).
    #[arg(long = "dns-name", default_values_t = [contract::identity_service_dns()])]
    dns_names: Vec<String>,
    /// Lifetime of issued SVIDs.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    svid_ttl: Duration,
    /// Sustained requests per minute allowed from one caller address.
    #[arg(long, default_value_t = 60)]
    rate_per_minute: u32,
    /// Requests one caller address may make at once.
    #[arg(long, default_value_t = 20)]
    rate_burst: u32,
    /// Largest request body accepted, in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    max_body_bytes: usize,
    /// How callers authenticate.
    #[arg(long, value_enum, default_value = "kubernetes")]
    auth: AuthKind,
    /// The join-token file (with --auth join-tokens).
    #[arg(long)]
    join_tokens: Option<PathBuf>,
    /// A kubeconfig for the TokenReview calls (its current context), for runs outside the
    /// cluster; when set, the --kube-api-* and --kube-*-file options are not used.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// The API server host (in a pod: set by Kubernetes).
    #[arg(long, env = "KUBERNETES_SERVICE_HOST")]
    kube_api_host: Option<String>,
    /// The API server port.
    #[arg(long, env = "KUBERNETES_SERVICE_PORT", default_value_t = 443)]
    kube_api_port: u16,
    /// The service's own ServiceAccount token, for TokenReview calls (re-read at each call).
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token"
    )]
    kube_token_file: PathBuf,
    /// The CA bundle of the API server.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
    )]
    kube_ca_file: PathBuf,
    /// The audience callers' tokens must be bound to.
    #[arg(long, default_value = contract::IDENTITY_TOKEN_AUDIENCE)]
    audience: String,
}

/// Runs the identity service until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

/// Bound on one TokenReview call, connect to reply.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

async fn authenticator(args: &Args, td: &TrustDomain) -> anyhow::Result<Authenticator> {
    Ok(match args.auth {
        AuthKind::JoinTokens => {
            let path = args
                .join_tokens
                .as_ref()
                .context("--auth join-tokens needs --join-tokens FILE")?;
            Authenticator::JoinTokens(JoinTokens::load(path, Duration::from_secs(1))?)
        }
        AuthKind::Kubernetes => {
            let reviewer = match &args.kubeconfig {
                Some(path) => {
                    TokenReviewer::from_kubeconfig(
                        path,
                        args.audience.clone(),
                        td.clone(),
                        REVIEW_TIMEOUT,
                    )
                    .await
                }
                None => {
                    let host = args.kube_api_host.as_ref().context(
                        "--auth kubernetes needs the API server: --kube-api-host or \
                         KUBERNETES_SERVICE_HOST (set in a pod), or --kubeconfig FILE",
                    )?;
                    let host = if host.contains(':') {
                        format!("[{host}]")
                    } else {
                        host.clone()
                    };
                    TokenReviewer::new(TokenReviewConfig {
                        api_url: format!("https://{host}:{}", args.kube_api_port),
                        ca_file: args.kube_ca_file.clone(),
                        token_file: args.kube_token_file.clone(),
                        audience: args.audience.clone(),
                        trust_domain: td.clone(),
                        timeout: REVIEW_TIMEOUT,
                    })
                }
            }
            .map_err(|e| anyhow::anyhow!("Kubernetes authenticator: {e}"))?;
            Authenticator::Kubernetes(reviewer)
        }
    })
}

async fn serve(args: Args) -> anyhow::Result<()> {
    telemetry::prometheus(); // installed before anything is counted
    let ca = CertificateAuthority::load(&args.ca_dir, args.trust_domain.as_ref())?;
    let td = ca.trust_domain().clone();
    let id = match &args.id {
        Some(id) => id.clone(),
        None => SpiffeId::for_service_account(
            &td,
            contract::SYSTEM_NAMESPACE,
            contract::IDENTITY_SERVICE_ACCOUNT,
        )?,
    };
    let authn = authenticator(&args, &td).await?;
    warden_identity::service::publish_expiry(&ca);
    let shared = Arc::new(SharedCa::new(ca));
    let shutdown = CancellationToken::new();

    let (ready_tx, admin_addr) = crate::admin::start(args.admin_listen, shutdown.clone()).await?;

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The injector may have its webhook's name in its certificate (a serving certificate
    // renewed like any SVID); nobody else gets a DNS name.
    let injector =
        SpiffeId::for_service_account(&td, contract::SYSTEM_NAMESPACE, contract::INJECTOR_SERVICE)?;
    let config = ServiceConfig {
        svid_ttl: args.svid_ttl,
        max_body_bytes: args.max_body_bytes,
        rate: Rate {
            per_minute: args.rate_per_minute,
            burst: args.rate_burst,
        },
        dns_names: [(injector.to_string(), vec![contract::injector_service_dns()])].into(),
        ..ServiceConfig::default()
    };
    let kind = authn.kind();
    let service = Arc::new(IdentityService::new(shared.clone(), authn, config));
    let serving = ServingIdentity {
        id: id.clone(),
        dns_names: args.dns_names.clone(),
    };
    let server = service::start(listener, service, serving, shutdown.clone())
        .await
        .context("no serving certificate")?;
    tokio::spawn(service::reload_ca_on_change(
        args.ca_dir.clone(),
        args.trust_domain.clone(),
        shared,
        Duration::from_secs(5),
        shutdown.clone(),
    ));
    ready_tx.send_replace(Readiness {
        ready: true,
        detail: format!("ready: issuing for {td} as {id} ({kind} authentication)"),
    });
    tracing::info!(listen = %addr, admin = %admin_addr, %id, auth = kind, "identity service ready");
    eprintln!("warden identity: serving https://{addr} (admin http://{admin_addr})");

    let stop = shutdown.clone();
    tokio::spawn(async move {
        warden_proxy::cli::terminated().await;
        stop.cancel();
    });
    server.await?;
    Ok(())
}
