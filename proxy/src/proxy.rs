//! Running a proxy: bind its listeners, obtain its SVID (serving nothing before), serve both
//! directions and the admin endpoint, and stop gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::contract::{self, ALPN_HTTP2, ALPN_TCP};
use warden_core::policy::evaluate::PolicySet;
use warden_identity::admin::{self, Readiness};
use warden_identity::client::{CertifyClient, CertifyClientConfig};
use warden_identity::rotation::{self, CertSource, RotationOptions, TlsOptions};
use warden_identity::tls::ClientAuth;
use warden_identity::{TrustBundle, TrustStore};

use crate::authz::Authorizer;
use crate::config::{OutboundRoute, ProxyConfig, RouteProtocol};
use crate::inbound::{self, app::AppClients, AppTarget, InboundTarget};
use crate::mesh::MeshConnector;
use crate::outbound::{self, pool::Pool, Destination, OutboundTarget};
use crate::shared::{RunControl, Shared};
use crate::workers::{WorkerThreads, Workers};

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr} ({field}): {reason}")]
    Bind {
        /// The config field.
        field: String,
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The trust bundle could not be read.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// The identity client could not be configured.
    #[error("identity client: {0}")]
    Identity(String),
    /// The audit log could not be opened.
    #[error("audit log: {0}")]
    Audit(String),
}

/// The bound listeners of a proxy (bind them first so tests can use port 0).
#[derive(Debug)]
pub struct Listeners {
    /// The admin endpoint.
    pub admin: TcpListener,
    /// Inbound listeners with their app.
    pub inbound: Vec<(TcpListener, AppTarget)>,
    /// Outbound listeners with their destination.
    pub outbound: Vec<(TcpListener, Destination)>,
}

/// The addresses actually bound (for port 0).
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    /// The admin endpoint.
    pub admin: SocketAddr,
    /// Each inbound listener, in config order.
    pub inbound: Vec<SocketAddr>,
    /// Each outbound listener, in config order.
    pub outbound: Vec<SocketAddr>,
}

async fn bind(field: String, addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| StartError::Bind {
        field,
        addr,
        reason: e.to_string(),
    })
}

impl Listeners {
    /// Binds every listener of `config`.
    pub async fn bind(config: &ProxyConfig) -> Result<Self, StartError> {
        let admin = bind("admin.listen".into(), config.admin.listen).await?;
        let mut inbound = Vec::new();
        for (i, l) in config.inbound.iter().enumerate() {
            let listener = bind(format!("inbound[{i}].listen"), l.listen).await?;
            inbound.push((
                listener,
                AppTarget::Fixed(InboundTarget {
                    app: l.app,
                    protocol: l.protocol,
                }),
            ));
        }
        let mut listeners = Self {
            admin,
            inbound,
            outbound: Vec::new(),
        };
        for (i, route) in config.outbound.iter().enumerate() {
            listeners
                .add_outbound(format!("outbound[{i}].listen"), route)
                .await?;
        }
        if config.transparent.enabled {
            let t = &config.transparent;
            listeners
                .bind_transparent(t.inbound_port, t.outbound_port)
                .await?;
        }
        Ok(listeners)
    }

    /// Transparent mode: redirected inbound TCP arrives on every address (dual-stack where
    /// IPv6 exists), the app's redirected outbound TCP on loopback (127.0.0.1, and ::1 for
    /// ip6tables' REDIRECT where IPv6 exists).
    async fn bind_transparent(
        &mut self,
        inbound_port: u16,
        outbound_port: u16,
    ) -> Result<(), StartError> {
        let any_v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, inbound_port));
        let inbound = match TcpListener::bind(any_v6).await {
            Ok(listener) => listener,
            Err(_) => {
                let any_v4 = SocketAddr::from(([0, 0, 0, 0], inbound_port));
                bind("transparent.inbound_port".into(), any_v4).await?
            }
        };
        self.inbound.push((inbound, AppTarget::OriginalDst));
        let loopback_v4 = SocketAddr::from(([127, 0, 0, 1], outbound_port));
        let v4 = bind("transparent.outbound_port".into(), loopback_v4).await?;
        self.outbound.push((v4, Destination::OriginalDst));
        let loopback_v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, outbound_port));
        if let Ok(v6) = TcpListener::bind(loopback_v6).await {
            self.outbound.push((v6, Destination::OriginalDst));
        }
        Ok(())
    }

    /// Binds one more outbound route (`field` names it in errors).
    pub async fn add_outbound(
        &mut self,
        field: String,
        route: &OutboundRoute,
    ) -> Result<SocketAddr, StartError> {
        let listener = bind(field, route.listen).await?;
        let addr = listener.local_addr().map_err(|e| StartError::Bind {
            field: "outbound".into(),
            addr: route.listen,
            reason: e.to_string(),
        })?;
        let target = OutboundTarget {
            addr: route.destination,
            expected: route.identity.clone().into_iter().collect(),
            opaque: route.protocol == RouteProtocol::Opaque,
        };
        self.outbound.push((listener, Destination::Route(target)));
        Ok(addr)
    }

    /// The bound addresses.
    pub fn addrs(&self) -> BoundAddrs {
        let addr = |l: &TcpListener| l.local_addr().expect("a bound listener has an address");
        BoundAddrs {
            admin: addr(&self.admin),
            inbound: self.inbound.iter().map(|(l, _)| addr(l)).collect(),
            outbound: self.outbound.iter().map(|(l, _)| addr(l)).collect(),
        }
    }
}

/// Where this proxy's SVID comes from, per its configuration: the identity service.
pub fn cert_source(config: &ProxyConfig) -> Result<CertSource, StartError> {
    let td = config.trust_domain.clone();
    let bundle = match &config.identity.trust_anchors {
        Some(pem) => TrustBundle::from_pem(td, pem.as_bytes(), contract::env::TRUST_ANCHORS),
        None => TrustBundle::from_pem_file(td, &config.identity.trust_bundle),
    }
    .map_err(|e| StartError::Bundle(e.to_string()))?;
    let client = CertifyClient::new(
        CertifyClientConfig {
            url: config.identity.url.clone(),
            server_id: config.identity_server_id(),
            token_file: config.identity.token_file.clone(),
            expected_id: config.expected_id(),
            timeout: config.timeouts.connect
                + config.timeouts.response.min(Duration::from_secs(10)),
        },
        TrustStore::single(bundle),
    )
    .map_err(|e| StartError::Identity(e.to_string()))?;
    Ok(CertSource::Remote(client))
}

/// The authorizer `config` asks for: the policy directory (watched), the mesh default, and
/// the audit log. Call inside the runtime (the watcher is a task stopped by `shutdown`).
pub fn authorizer(
    config: &ProxyConfig,
    shutdown: CancellationToken,
) -> Result<Authorizer, StartError> {
    let authz = &config.authorization;
    let audit = match crate::audit::AuditTarget::parse(&authz.audit_log) {
        None => None,
        Some(target) => Some(Arc::new(
            crate::audit::AuditLog::open(
                &target,
                crate::audit::AuditOptions {
                    log_allowed: authz.log_allowed,
                    failure: authz.audit_failure,
                    checkpoint_records: authz.audit_checkpoint_records,
                    checkpoint_interval: authz.audit_checkpoint_interval,
                    queue: authz.audit_queue,
                },
            )
            .map_err(|e| StartError::Audit(format!("{}: {e}", authz.audit_log)))?,
        )),
    };
    if !config.control_plane.addresses.is_empty() {
        let client = control_plane_client(config);
        let (feed, policies, status) = crate::control_plane::feed(&client);
        return Ok(Authorizer::from_control_plane(
            crate::authz::PolicyEngine {
                policies,
                status,
                default: authz.default,
                audit,
            },
            feed,
        ));
    }
    let watched = match &authz.policy_dir {
        Some(dir) => crate::policy_dir::watch(dir.clone(), authz.reload_interval, shutdown),
        None => {
            // No policy source: an empty set, and the mesh default decides.
            let (_, policies) = tokio::sync::watch::channel(Arc::new(PolicySet::new(Vec::new())));
            let (_, status) = tokio::sync::watch::channel(Default::default());
            crate::policy_dir::WatchedPolicies { policies, status }
        }
    };
    Ok(Authorizer::policies(crate::authz::PolicyEngine {
        policies: watched.policies,
        status: watched.status,
        default: authz.default,
        audit,
    }))
}

/// Starts the control-plane client if the authorizer has a feed for it: the connection to
/// the controller it made (for discovery to share), and the mesh policy's outbound rules as
/// they will follow.
fn shared_feed(
    authz: &Authorizer,
    config: &ProxyConfig,
    credentials: &tokio::sync::watch::Receiver<Arc<warden_identity::rotation::Credentials>>,
    shutdown: &CancellationToken,
) -> (
    Option<Arc<crate::grpc_client::SharedChannel>>,
    tokio::sync::watch::Receiver<crate::control_plane::OutboundRules>,
) {
    let Some(feed) = authz.take_feed() else {
        return (None, tokio::sync::watch::channel(Default::default()).1);
    };
    let rules = feed.outbound.subscribe();
    let channel =
        crate::grpc_client::SharedChannel::new(control_plane_client(config), credentials.clone());
    tokio::spawn(crate::control_plane::run(
        channel.clone(),
        feed,
        shutdown.clone(),
    ));
    (Some(channel), rules)
}

/// The control-plane client `config` asks for.
fn control_plane_client(config: &ProxyConfig) -> crate::control_plane::ControlPlaneClient {
    crate::control_plane::ControlPlaneClient {
        addresses: config.control_plane.addresses.clone(),
        server_id: config.control_plane_id(),
        pod: config.control_plane.pod_name.clone().unwrap_or_default(),
        connect_timeout: config.timeouts.connect + config.timeouts.handshake,
    }
}

/// What the binary runs once the proxy is first ready; process-wide, like the allocator it
/// is for (`warden-proxy` hands its allocator's free start-up memory back to the system).
static FIRST_READY: std::sync::OnceLock<fn()> = std::sync::OnceLock::new();

/// Sets what runs once the proxy is first ready (the first call wins).
pub fn on_first_ready(hook: fn()) {
    let _ = FIRST_READY.set(hook);
}

/// Runs the proxy until `shutdown`, then stops accepting, lets in-flight work finish within
/// `timeouts.shutdown_grace`, and returns.
pub async fn run(
    config: ProxyConfig,
    listeners: Listeners,
    source: CertSource,
    authz: Authorizer,
    telemetry: warden_identity::admin::Telemetry,
    shutdown: CancellationToken,
) {
    crate::metrics::describe();
    crate::metrics::initialize();
    let config = Arc::new(config);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(Readiness::not_ready(
        "not ready: waiting for a certificate from the identity service",
    ));
    let admin_stop = CancellationToken::new();
    let mut telemetry = telemetry;
    let probe_host = config
        .admin
        .app_probe_host
        .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
    telemetry.extra_routes = Some(crate::app_probe::routes(
        config.admin.app_probes.clone(),
        probe_host,
    ));
    #[cfg(feature = "hop-timing")]
    let hops = Arc::new(crate::hop_timing::Recorder::default());
    #[cfg(feature = "hop-timing")]
    {
        telemetry.extra_routes = Some(crate::hop_timing::routes(
            hops.clone(),
            telemetry.extra_routes,
        ));
    }
    let admin_limits = warden_identity::server::ServerLimits {
        max_connections: config.limits.max_admin_connections,
        ..Default::default()
    };
    tokio::spawn(admin::serve_with_limits(
        listeners.admin,
        ready_rx,
        telemetry,
        admin_limits,
        admin_stop.clone(),
    ));

    let tls = TlsOptions {
        server_alpn: vec![ALPN_HTTP2.to_vec(), ALPN_TCP.to_vec()],
        client_alpn: vec![],
        client_auth: ClientAuth::Required,
    };
    let Some(rotation) =
        rotation::start(source, tls, RotationOptions::default(), shutdown.clone()).await
    else {
        admin_stop.cancel();
        return;
    };
    let credentials = rotation.credentials;
    if let Some(audit) = authz.audit() {
        audit.start(&config.audit_pod(), credentials.clone());
    }
    let (control_plane, outbound_rules) = shared_feed(&authz, &config, &credentials, &shutdown);
    // Discovery decides what is meshed for redirected connections when a controller is
    // configured; explicit routes name their destinations themselves.
    let refresh_ready = control_plane.is_some();
    let discovery = control_plane
        .filter(|_| config.transparent.enabled)
        .map(|channel| {
            let discovery = crate::discovery::Discovery::new(
                channel,
                crate::discovery::DiscoveryOptions::default(),
            );
            tokio::spawn(discovery.clone().run(shutdown.clone()));
            discovery
        });
    let (runtimes, worker_threads) = WorkerThreads::start(config.workers()).await;
    // One connector for all workers: its TLS configurations and their session caches are
    // built once per certificate and resume across workers (it is used only to connect).
    let mesh = Arc::new(MeshConnector::new(
        credentials.clone(),
        config.timeouts.connect,
        config.timeouts.handshake,
    ));
    let workers = Arc::new(Workers::new(runtimes, || Shared {
        mesh: mesh.clone(),
        pool: Pool::new(config.limits.max_header_bytes),
        apps: AppClients::new(
            config.timeouts.connect,
            config.timeouts.idle,
            config.limits.max_header_bytes,
        ),
        credentials: credentials.clone(),
        config: config.clone(),
        authz: authz.clone(),
        discovery: discovery.clone(),
        outbound_rules: outbound_rules.clone(),
        #[cfg(feature = "hop-timing")]
        hops: hops.clone(),
    }));
    let shared = workers.first().clone();
    let run = RunControl::new(shutdown.clone());
    for (runtime, shared) in workers.each() {
        runtime.spawn(sweep_idle(shared.clone(), shutdown.clone()));
    }
    let (inbound_count, outbound_count) = (listeners.inbound.len(), listeners.outbound.len());
    for (listener, target) in listeners.inbound {
        tokio::spawn(inbound::serve(
            listener,
            target,
            workers.clone(),
            run.clone(),
        ));
    }
    for (listener, target) in listeners.outbound {
        tokio::spawn(outbound::serve(
            listener,
            target,
            workers.clone(),
            run.clone(),
        ));
    }
    let policy_status = shared.authz.clone();
    let audit = shared.authz.audit().cloned();
    let discovery = shared.discovery.clone();
    let readiness = move |creds: &warden_identity::rotation::Credentials| {
        let left = creds
            .svid
            .not_after()
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let policies = policy_status
            .status_line()
            .map(|l| format!("\n{l}"))
            .unwrap_or_default();
        if let Some(why) = policy_status.not_loaded() {
            // Fail closed: such a proxy denies everything, so it takes no traffic.
            return Readiness::not_ready(format!("not ready: {why}"));
        }
        // The audit status is read before whether requests are refused: the writer sets
        // its failing flag before it publishes the error, so a status showing the error is
        // never paired with a stale "not refusing" (a /ready answering 200 and a failing
        // audit log under `audit_failure: deny` at once).
        let audit_detail = audit
            .as_ref()
            .map(|a| audit_line(&a.status().borrow()))
            .unwrap_or_default();
        if let Some(why) = audit.as_ref().and_then(|a| a.refusing()) {
            // Fail closed: it refuses what it cannot record, so it takes no traffic.
            return Readiness::not_ready(format!("not ready: {why}"));
        }
        if let Some(why) = discovery.as_ref().and_then(|d| d.not_ready()) {
            // Its app's first connections would wait for the stream, then be unknown.
            return Readiness::not_ready(format!("not ready: {why}"));
        }
        if left.is_zero() {
            // Fail closed: peers refuse an expired certificate, so stop taking traffic too.
            return Readiness::not_ready(format!(
                "not ready: the certificate of {} has expired; renewing",
                creds.svid.id()
            ));
        }
        Readiness {
            ready: true,
            detail: format!(
                "ready: {} (certificate valid for {}s); {inbound_count} inbound, {outbound_count} outbound listeners{policies}{}{}",
                creds.svid.id(),
                left.as_secs(),
                discovery
                    .as_ref()
                    .map(|d| format!("\ndiscovery: {}", d.describe()))
                    .unwrap_or_default(),
                audit_detail
            ),
        }
    };
    ready_tx.send_replace(readiness(&credentials.borrow()));
    tracing::info!(id = %credentials.borrow().svid.id(), inbound = inbound_count, outbound = outbound_count, "proxy ready");
    if let Some(hook) = FIRST_READY.get() {
        hook();
    }

    // Keep /ready's detail current as certificates rotate and policies reload.
    let mut watch = credentials.clone();
    let mut policy_changes = shared.authz.status_changes();
    let mut discovery_opened = shared.discovery.as_ref().map(|d| d.opened());
    let mut audit_changes = shared.authz.audit().map(|a| a.status());
    loop {
        let audit_changed = async {
            match audit_changes.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        let policy_changed = async {
            match policy_changes.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        // Wake when the current certificate expires (if renewal has not replaced it by then).
        let expiry = watch
            .borrow()
            .svid
            .not_after()
            .duration_since(SystemTime::now())
            .ok();
        let expired = async {
            match expiry {
                Some(left) => tokio::time::sleep(left + Duration::from_millis(10)).await,
                None => std::future::pending().await,
            }
        };
        let discovery_changed = async {
            match discovery_opened.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = watch.changed() => {
                if changed.is_err() { break; }
            }
            ok = discovery_changed => {
                if !ok { discovery_opened = None; }
            }
            ok = policy_changed => {
                if !ok { policy_changes = None; }
            }
            ok = audit_changed => {
                if !ok { audit_changes = None; }
            }
            _ = expired => {}
            // The snapshot's age on /ready stays current.
            _ = tokio::time::sleep(Duration::from_secs(5)), if refresh_ready => {}
        }
        ready_tx.send_replace(readiness(&watch.borrow_and_update()));
    }

    ready_tx.send_replace(Readiness::not_ready("not ready: shutting down"));
    run.tasks.close();
    let grace = config.timeouts.shutdown_grace;
    if tokio::time::timeout(grace, run.tasks.wait()).await.is_err() {
        tracing::warn!(
            ?grace,
            open = run.tasks.len(),
            "grace period over; closing what is still open"
        );
        run.hard_stop.cancel();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), run.tasks.wait()).await;
    }
    // Before the final checkpoint: nothing still running there can decide (and record) after it.
    worker_threads.stop().await;
    if let Some(audit) = shared.authz.audit() {
        // The final checkpoint: the chain ends here, signed.
        audit.close(Duration::from_secs(5)).await;
    }
    admin_stop.cancel();
    tracing::info!("proxy stopped");
}

/// `/ready`'s line on the audit log, when it has lost records.
fn audit_line(status: &crate::audit::AuditStatus) -> String {
    match (&status.error, status.dropped) {
        (None, 0) => String::new(),
        (None, n) => {
            format!("\naudit: {n} records dropped so far (see warden_audit_records_dropped_total)")
        }
        (Some(e), n) => format!("\naudit: writes are failing ({e}); {n} records dropped so far"),
    }
}

/// Drops idle and closed pooled connections (to peer proxies and to the apps) every
/// `idle / 4` (at least each second), until `shutdown`.
async fn sweep_idle(shared: Arc<Shared>, shutdown: CancellationToken) {
    let idle = shared.config.timeouts.idle;
    let period = (idle / 4).max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        shared.pool.sweep(idle);
        shared.apps.sweep();
    }
}
