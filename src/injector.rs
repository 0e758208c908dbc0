//! `warden injector`: the mutating admission webhook (HTTPS `POST /mutate`) and its admin
//! endpoint.

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
use warden_identity::ca::SharedCa;
use warden_identity::client::{CertifyClient, CertifyClientConfig};
use warden_identity::rotation::{self, CertSource, TlsOptions};
use warden_identity::tls::ClientAuth;
use warden_identity::{CertificateAuthority, TrustBundle, TrustStore};
use warden_injector::config::{
    InjectorConfig, Interception, SecurityAnnotation, SidecarMode, ALLOW_ANNOTATION_FLAG,
};
use warden_injector::{server, webhook};

use crate::mesh_grants::GrantsSync;

/// `warden injector` options.
#[derive(clap::Args)]
pub struct Args {
    /// Address of the HTTPS webhook.
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], contract::INJECTOR_PORT)))]
    listen: SocketAddr,
    /// Address of the admin endpoint (/live, /ready, /metrics).
    #[arg(long, default_value_t = SocketAddr::from(([0, 0, 0, 0], contract::ADMIN_PORT)))]
    admin_listen: SocketAddr,
    /// The serving certificate chain (PEM), reloaded when it changes; with --tls-key.
    #[arg(long, requires = "tls_key", conflicts_with = "ca_dir")]
    tls_cert: Option<PathBuf>,
    /// The serving certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Issue (and renew) the serving certificate from this CA directory instead.
    #[arg(long, conflicts_with = "identity_token_file")]
    ca_dir: Option<PathBuf>,
    /// Or obtain (and renew) the serving certificate from the identity service at
    /// --identity-url with this projected ServiceAccount token, like any workload's SVID,
    /// with the webhook's DNS name: no key material to mount, nothing to renew by hand.
    #[arg(long, conflicts_with_all = ["tls_cert", "ca_dir"], requires = "trust_anchors")]
    identity_token_file: Option<PathBuf>,
    /// DNS names of the issued serving certificate (repeatable): what the API server calls.
    #[arg(long = "dns-name", default_values_t = [contract::injector_service_dns()])]
    dns_names: Vec<String>,
    /// Lifetime of the issued serving certificate.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_ttl: Duration,
    /// How often the serving certificate files and the trust anchors file are checked for
    /// changes.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    reload_interval: Duration,
    /// The sidecar image injected into pods (the slim `warden-proxy` binary, whose `proxy` and
    /// `init` commands the injected containers run).
    #[arg(long)]
    image: String,
    /// The trust bundle (PEM) handed to every proxy (default with --ca-dir: the CA's bundle).
    #[arg(long, required_unless_present = "ca_dir")]
    trust_anchors: Option<PathBuf>,
    /// The trust domain of the mesh (default with --ca-dir: the CA's).
    #[arg(long, value_parser = TrustDomain::parse)]
    trust_domain: Option<TrustDomain>,
    /// The identity service proxies get their certificates from.
    #[arg(long)]
    identity_url: Option<String>,
    /// The controller proxies subscribe to for their policies (`host:port`; default the
    /// `warden-controller` Service).
    #[arg(long, default_value_t = warden_core::contract::controller_address())]
    control_plane: String,
    /// How the proxy runs unless a pod's `warden.dev/sidecar-mode` says otherwise.
    #[arg(long, value_parser = ["native", "regular"], default_value = "native")]
    sidecar_mode: String,
    /// The proxy's log filter unless a pod's `warden.dev/log-level` says otherwise.
    #[arg(long, default_value = "warn")]
    proxy_log_level: String,
    /// A security-relevant pod annotation pods may use (repeatable or comma-separated):
    /// warden.dev/skip-inbound-ports, skip-outbound-ports, skip-outbound-cidrs, inbound-mode.
    /// Default: none (the annotation is ignored with a warning).
    #[arg(
        long = ALLOW_ANNOTATION_FLAG,
        value_name = "ANNOTATION",
        value_delimiter = ',',
        value_parser = SecurityAnnotation::parse
    )]
    allow_pod_annotations: Vec<SecurityAnnotation>,
    /// Who installs the pods' interception rules: `init` (the `warden-init` container: root,
    /// NET_ADMIN and NET_RAW) or `cni` (Warden's CNI plugin on every node, `warden cni`: no
    /// privileged container, so pods meet Pod Security `restricted`).
    #[arg(long, value_parser = ["init", "cni"], default_value = "init")]
    interception: String,
    /// A kubeconfig for runs outside the cluster, to read MeshPolicies' `allowedAnnotations`
    /// and Namespaces' labels; in a pod, the ServiceAccount's in-cluster credentials are
    /// used. With neither, only --allow-pod-annotation applies.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

/// Runs the webhook until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(args))?;
    Ok(ExitCode::SUCCESS)
}

/// What the injector puts into pods, from the options (and the CA, when given).
fn injector_config(
    args: &Args,
    ca: Option<&CertificateAuthority>,
) -> anyhow::Result<InjectorConfig> {
    let anchors = match (&args.trust_anchors, ca) {
        (Some(path), _) => {
            std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?
        }
        (None, Some(ca)) => warden_identity::bundle::certs_to_pem(ca.bundle().roots()),
        (None, None) => anyhow::bail!("--trust-anchors FILE is needed without --ca-dir"),
    };
    let trust_domain = match (&args.trust_domain, ca) {
        (Some(td), _) => td.clone(),
        (None, Some(ca)) => ca.trust_domain().clone(),
        (None, None) => TrustDomain::default(),
    };
    // The proxies will refuse a bundle that is not PEM certificates; say so now, not in
    // every pod.
    TrustBundle::from_pem(trust_domain.clone(), anchors.as_bytes(), "--trust-anchors")?;
    let mut config = InjectorConfig::new(args.image.clone(), anchors);
    config.trust_domain = trust_domain;
    if let Some(url) = &args.identity_url {
        warden_identity::http::HttpsTarget::parse(url)
            .with_context(|| format!("--identity-url {url:?}"))?;
        config.identity_url = url.clone();
    }
    match args
        .control_plane
        .rsplit_once(':')
        .map(|(_, p)| p.parse::<u16>())
    {
        Some(Ok(p)) if p != 0 => config.control_plane = args.control_plane.clone(),
        _ => anyhow::bail!("--control-plane {:?}: not host:port", args.control_plane),
    }
    config.default_mode = SidecarMode::parse(&args.sidecar_mode).unwrap_or(SidecarMode::Native);
    config.log_level = args.proxy_log_level.clone();
    config.allowed_annotations = args.allow_pod_annotations.iter().copied().collect();
    config.interception = Interception::parse(&args.interception).unwrap_or(Interception::Init);
    Ok(config)
}

async fn serve(args: Args) -> anyhow::Result<()> {
    warden_identity::telemetry::prometheus(); // installed before anything is counted
    webhook::describe();
    let shutdown = CancellationToken::new();
    let ca = match &args.ca_dir {
        Some(dir) => Some(CertificateAuthority::load(dir, args.trust_domain.as_ref())?),
        None => None,
    };
    let config = injector_config(&args, ca.as_ref())?;
    // The trust anchors handed to proxies follow their file (a ConfigMap in a cluster).
    let anchors_file = match (&args.trust_anchors, &args.ca_dir) {
        (Some(path), _) => Some(path.clone()),
        (None, Some(dir)) => Some(dir.join(warden_identity::ca::BUNDLE)),
        (None, None) => None,
    };
    let trust_domain = config.trust_domain.clone();
    let (config_tx, config) = tokio::sync::watch::channel(Arc::new(config));
    let grants_synced = watch_mesh_policies(&args, config_tx.clone(), &shutdown).await?;
    if let Some(path) = anchors_file {
        server::watch_trust_anchors(
            path,
            config_tx,
            move |pem| {
                TrustBundle::from_pem(trust_domain.clone(), pem.as_bytes(), "trust anchors")
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
            args.reload_interval,
            shutdown.clone(),
        );
    }

    let (ready_tx, admin_addr) = crate::admin::start(args.admin_listen, shutdown.clone()).await?;
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;

    let server = match (ca, &args.tls_cert, &args.tls_key) {
        (_, Some(cert), Some(key)) => {
            let tls = server::watch_files(
                cert.clone(),
                key.clone(),
                args.reload_interval,
                shutdown.clone(),
            )?;
            let serving = move || tls.borrow().clone();
            tokio::spawn(server::run(
                listener,
                serving,
                config.clone(),
                shutdown.clone(),
            ))
        }
        (Some(ca), _, _) => {
            let id = SpiffeId::for_service_account(
                ca.trust_domain(),
                contract::SYSTEM_NAMESPACE,
                contract::INJECTOR_SERVICE,
            )?;
            let source = CertSource::Local {
                ca: Arc::new(SharedCa::new(ca)),
                id,
                dns_names: args.dns_names.clone(),
                ttl: args.cert_ttl,
            };
            serve_rotating(source, listener, config.clone(), &shutdown).await?
        }
        (None, None, None) if args.identity_token_file.is_some() => {
            let source = identity_serving(&args, &config.borrow())?;
            serve_rotating(source, listener, config.clone(), &shutdown).await?
        }
        _ => anyhow::bail!("give --tls-cert and --tls-key, --ca-dir, or --identity-token-file"),
    };
    if let Some(mut sync) = grants_synced {
        // Until both are listed a pod could lose an annotation a MeshPolicy allows.
        loop {
            let waiting = match &*sync.borrow_and_update() {
                GrantsSync::Listed => break,
                GrantsSync::Waiting(None) => {
                    "waiting for the first list of MeshPolicies and Namespaces".to_string()
                }
                GrantsSync::Waiting(Some(e)) => format!(
                    "waiting for the first list of MeshPolicies and Namespaces; last error: {e}"
                ),
            };
            ready_tx.send_replace(Readiness {
                ready: false,
                detail: waiting,
            });
            tokio::select! {
                changed = sync.changed() => changed.context("the MeshPolicy and Namespace watches ended")?,
                () = warden_proxy::cli::terminated() => return Ok(()),
            }
        }
    }
    ready_tx.send_replace(Readiness {
        ready: true,
        detail: format!(
            "ready: injecting {} for trust domain {}",
            config.borrow().image,
            config.borrow().trust_domain
        ),
    });
    tracing::info!(listen = %addr, admin = %admin_addr, "injector ready");
    eprintln!(
        "warden injector: serving https://{addr}{} (admin http://{admin_addr})",
        webhook::PATH
    );

    let stop = shutdown.clone();
    tokio::spawn(async move {
        warden_proxy::cli::terminated().await;
        stop.cancel();
    });
    server.await?;
    Ok(())
}

/// Starts the MeshPolicy and Namespace watches that keep `config`'s grants current, with
/// the kubeconfig or in-cluster credentials; `None` (logged) without either. The receiver
/// says when both have listed, or what they last failed with.
async fn watch_mesh_policies(
    args: &Args,
    config: tokio::sync::watch::Sender<Arc<InjectorConfig>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<tokio::sync::watch::Receiver<GrantsSync>>> {
    let kube_config = match &args.kubeconfig {
        Some(path) => crate::controller::kubeconfig_file(path).await?,
        None => match kube::Config::incluster() {
            Ok(config) => config,
            Err(e) => {
                tracing::warn!(error = %e, "no cluster credentials: MeshPolicies' allowedAnnotations are not read; only --{ALLOW_ANNOTATION_FLAG} applies");
                return Ok(None);
            }
        },
    };
    let client = kube::Client::try_from(kube_config).context("building the Kubernetes client")?;
    let (sync_tx, sync) = tokio::sync::watch::channel(GrantsSync::Waiting(None));
    tokio::spawn(crate::mesh_grants::run(
        client,
        config,
        sync_tx,
        shutdown.clone(),
    ));
    Ok(Some(sync))
}

/// Serves the webhook with a certificate from `source`, renewed before it expires (from the
/// CA directory, or the identity service).
async fn serve_rotating(
    source: CertSource,
    listener: TcpListener,
    config: tokio::sync::watch::Receiver<Arc<InjectorConfig>>,
    shutdown: &CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let tls = TlsOptions {
        server_alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        client_alpn: vec![],
        client_auth: ClientAuth::None,
    };
    let rotation = rotation::start(source, tls, Default::default(), shutdown.clone())
        .await
        .context("no serving certificate")?;
    let credentials = rotation.credentials;
    spawn_expiry_gauge(credentials.clone());
    let serving = move || credentials.borrow().server.clone();
    Ok(tokio::spawn(server::run(
        listener,
        serving,
        config,
        shutdown.clone(),
    )))
}

/// Keeps the serving certificate's validity gauges current as it rotates.
fn spawn_expiry_gauge(mut credentials: tokio::sync::watch::Receiver<Arc<rotation::Credentials>>) {
    tokio::spawn(async move {
        loop {
            let leaf = credentials.borrow_and_update().svid.chain()[0].clone();
            server::publish_serving_validity(&leaf);
            if credentials.changed().await.is_err() {
                return;
            }
        }
    });
}

/// The serving certificate from the identity service: the injector's SVID with the
/// webhook's DNS names, authenticated by its projected token.
fn identity_serving(args: &Args, config: &InjectorConfig) -> anyhow::Result<CertSource> {
    let token_file = args
        .identity_token_file
        .clone()
        .context("--identity-token-file")?;
    let bundle = TrustBundle::from_pem(
        config.trust_domain.clone(),
        config.trust_anchors_pem.as_bytes(),
        "--trust-anchors",
    )?;
    let td = &config.trust_domain;
    let client = CertifyClient::new(
        CertifyClientConfig {
            url: config.identity_url.clone(),
            server_id: SpiffeId::for_service_account(
                td,
                contract::SYSTEM_NAMESPACE,
                contract::IDENTITY_SERVICE_ACCOUNT,
            )?,
            token_file,
            expected_id: Some(SpiffeId::for_service_account(
                td,
                contract::SYSTEM_NAMESPACE,
                contract::INJECTOR_SERVICE,
            )?),
            timeout: Duration::from_secs(10),
        },
        TrustStore::single(bundle),
    )
    .map_err(|e| anyhow::anyhow!("--identity-url {}: {e}", config.identity_url))?
    .with_dns_names(args.dns_names.clone());
    Ok(CertSource::Remote(client))
}
