//! `warden demo`: the local mesh in one command, in-process on 127.0.0.1.
//!
//! It starts the identity service (a fresh CA, join tokens), then three workloads, each an
//! unmodified HTTP app with a Warden sidecar that obtains its SVID from the identity
//! service. A policy lets the frontend call the backend; the intruder, a workload of the same
//! mesh with a valid identity, is not allowed. Requests go app -> outbound proxy -> mutual
//! TLS -> inbound proxy -> policy -> app; the table shows what each callee saw and which
//! policy decided (from the backend sidecar's audit log). A plaintext connection straight to
//! a sidecar's inbound port is refused. Without `--once` it stays up for curl.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use warden_core::contract::headers;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::authn::Authenticator;
use warden_identity::ca::{self, InitOptions, SharedCa};
use warden_identity::join_token::{self, JoinTokens};
use warden_identity::service::{self, IdentityService, ServiceConfig, ServingIdentity};
use warden_proxy::config::{
    AppProtocol, InboundListener, OutboundRoute, ProxyConfig, RouteProtocol,
};
use warden_proxy::proxy::{self, BoundAddrs, Listeners};

/// `warden demo` options.
#[derive(clap::Args)]
pub struct Args {
    /// Print the table and exit (used by tests); otherwise stay up until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// The trust domain of the demo CA.
    #[arg(long, default_value = warden_core::spiffe::DEFAULT_TRUST_DOMAIN, value_parser = TrustDomain::parse)]
    trust_domain: TrustDomain,
}

/// The demo's namespace.
const NAMESPACE: &str = "demo";

/// How long the demo waits for its sidecars to stop, at most (their shutdown grace, then
/// the audit log's final checkpoint).
const SIDECARS_STOP: Duration = Duration::from_secs(20);

/// The policy the demo installs: the backend accepts GETs from the frontend only.
const POLICY: &str = r#"apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: demo}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://TD/ns/demo/sa/frontend"]}
      to: {methods: [GET]}
"#;

/// The workloads: the backend serves, the others call it.
const WORKLOADS: [&str; 3] = ["backend", "frontend", "intruder"];

/// One line of the table.
struct Row {
    caller: String,
    callee: String,
    status: String,
    seen: String,
    tls: String,
    policy: String,
}

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(demo(args))
}

/// A running workload: its app, its sidecar's addresses.
struct Workload {
    name: &'static str,
    app: SocketAddr,
    sidecar: BoundAddrs,
}

async fn demo(args: Args) -> anyhow::Result<ExitCode> {
    warden_identity::telemetry::prometheus(); // installed before anything is counted
    let dir = tempfile::tempdir()?;
    let td = args.trust_domain;
    let shutdown = CancellationToken::new();

    // The identity service: a fresh CA, HTTPS on 127.0.0.1, join tokens for the workloads.
    let authority = ca::generate(&InitOptions::new(td.clone()))?.authority()?;
    let bundle = dir.path().join("bundle.crt");
    std::fs::write(&bundle, authority.bundle().to_pem())?;
    let tokens = dir.path().join("join-tokens");
    let mut lines = String::new();
    for name in WORKLOADS {
        let (token, line) = join_token::new_token(&workload_id(&td, name)?);
        std::fs::write(dir.path().join(format!("{name}.token")), token)?;
        lines.push_str(&line);
    }
    std::fs::write(&tokens, lines)?;
    let authn = Authenticator::JoinTokens(JoinTokens::load(&tokens, Duration::from_secs(1))?);
    let identity = Arc::new(IdentityService::new(
        Arc::new(SharedCa::new(authority)),
        authn,
        ServiceConfig::default(),
    ));
    let identity_listener = TcpListener::bind("127.0.0.1:0").await?;
    let identity_url = format!("https://{}", identity_listener.local_addr()?);
    let serving = ServingIdentity {
        id: SpiffeId::for_service_account(&td, "warden-system", "warden-identity")?,
        dns_names: vec!["localhost".into()],
    };
    service::start(identity_listener, identity, serving, shutdown.clone())
        .await
        .ok_or_else(|| anyhow::anyhow!("the identity service did not start"))?;

    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies)?;
    std::fs::write(
        policies.join("demo.yaml"),
        POLICY.replace("TD", td.as_str()),
    )?;

    // Each sidecar has an inbound listener for its app (default deny, the demo policy,
    // every decision audited); the callers also get an outbound route to the backend.
    let mut workloads = Vec::new();
    let mut sidecars = Vec::new();
    let mut backend_inbound = None;
    for name in WORKLOADS {
        let app_addr = app(name).await?;
        let mut config = ProxyConfig {
            trust_domain: td.clone(),
            ..ProxyConfig::default()
        };
        config.identity.url = identity_url.clone();
        config.identity.trust_bundle = bundle.clone();
        config.identity.token_file = dir.path().join(format!("{name}.token"));
        config.identity.namespace = Some(NAMESPACE.into());
        config.identity.service_account = Some(name.into());
        config.admin.listen = "127.0.0.1:0".parse()?;
        config.authorization.policy_dir = Some(policies.clone());
        config.authorization.audit_log = audit_log(dir.path(), name).display().to_string();
        config.authorization.log_allowed = true;
        config.inbound = vec![InboundListener {
            listen: "127.0.0.1:0".parse()?,
            app: app_addr,
            protocol: AppProtocol::Auto,
        }];
        if let Some(destination) = backend_inbound {
            config.outbound = vec![OutboundRoute {
                listen: "127.0.0.1:0".parse()?,
                destination,
                identity: Some(workload_id(&td, "backend")?),
                protocol: RouteProtocol::Detect,
            }];
        }
        config.validate()?;
        let bound = Listeners::bind(&config).await?;
        let sidecar = bound.addrs();
        backend_inbound.get_or_insert(sidecar.inbound[0]);
        let source = proxy::cert_source(&config)?;
        let authz = proxy::authorizer(&config, shutdown.clone())?;
        sidecars.push(tokio::spawn(proxy::run(
            config,
            bound,
            source,
            authz,
            warden_proxy::logging::telemetry(),
            shutdown.clone(),
        )));
        workloads.push(Workload {
            name,
            app: app_addr,
            sidecar,
        });
    }
    for w in &workloads {
        wait_ready(w).await?;
    }

    let backend_audit = audit_log(dir.path(), "backend");
    let mut rows = Vec::new();
    for caller in &workloads[1..] {
        let mut row = call(caller, &workloads[0]).await;
        row.policy = decided_by(&backend_audit, &workload_id(&td, caller.name)?).await;
        rows.push(row);
    }
    rows.push(plaintext(&workloads[0]).await);
    print_table(&rows);
    let ok = rows[0].status == "200" && rows[1].status == "403" && rows[2].status == "refused";

    if !args.once {
        println!();
        for w in &workloads {
            let outbound = w
                .sidecar
                .outbound
                .first()
                .map_or("-".into(), |a| format!("http://{a} (to the backend)"));
            println!(
                "{:<9} app http://{}  sidecar: outbound {}  inbound {} (mTLS only)  admin http://{}/metrics",
                w.name, w.app, outbound, w.sidecar.inbound[0], w.sidecar.admin
            );
        }
        println!(
            "\ntry: curl http://{}/   (the frontend calling the backend: allowed)\n     curl http://{}/   (the intruder calling the backend: 403)\n     the backend's audit log: {}\nCtrl-C to stop.",
            workloads[1].sidecar.outbound[0],
            workloads[2].sidecar.outbound[0],
            backend_audit.display()
        );
        warden_proxy::cli::terminated().await;
    }
    shutdown.cancel();
    // Each sidecar ends its audit chain with a signed checkpoint as it stops: the process
    // must not exit while one is signing (exit tears down the crypto library's random
    // number state under that thread, and the process aborts).
    let deadline = tokio::time::Instant::now() + SIDECARS_STOP;
    for sidecar in sidecars {
        if tokio::time::timeout_at(deadline, sidecar).await.is_err() {
            eprintln!("warden demo: the sidecars did not stop within {SIDECARS_STOP:?}");
            break;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn audit_log(dir: &std::path::Path, workload: &str) -> std::path::PathBuf {
    dir.join(format!("{workload}-audit.log"))
}

fn workload_id(td: &TrustDomain, name: &str) -> anyhow::Result<SpiffeId> {
    Ok(SpiffeId::for_service_account(td, NAMESPACE, name)?)
}

/// A small, mesh-unaware HTTP app: says who it is and what the mesh told it about the caller.
async fn app(name: &'static str) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let header = |h: &str| {
                            req.headers()
                                .get(h)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let body = format!(
                            "hello from {name}\ncaller: {}\ntls: {}\n",
                            header(headers::CLIENT_ID),
                            header(headers::TLS)
                        );
                        async move {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(body))))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn wait_ready(w: &Workload) -> anyhow::Result<()> {
    for _ in 0..200 {
        if let Ok(resp) = get(w.sidecar.admin, "/ready").await {
            if resp.0 == 200 {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    anyhow::bail!("the {} sidecar did not become ready", w.name)
}

/// A plain HTTP/1.1 GET, as an app does it: (status, body).
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, "demo")
        .body(Empty::<Bytes>::new())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await??;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The caller's app calls the callee through the caller's outbound sidecar.
async fn call(caller: &Workload, callee: &Workload) -> Row {
    let (status, seen, tls) = match get(caller.sidecar.outbound[0], "/").await {
        Ok((status, body)) => {
            let field = |name: &str| {
                body.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("-")
                    .to_string()
            };
            let seen = if status == 200 {
                field("caller: ")
            } else {
                "- (denied before the app)".into()
            };
            (
                status.to_string(),
                seen,
                if status == 200 {
                    field("tls: ")
                } else {
                    "-".into()
                },
            )
        }
        Err(e) => ("error".to_string(), e.to_string(), "-".to_string()),
    };
    Row {
        caller: caller.name.into(),
        callee: callee.name.into(),
        status,
        seen,
        tls,
        policy: "-".into(),
    }
}

/// The policy that decided the caller's last request, from the callee's audit log (written
/// by the proxy's audit thread, so waited for up to 2 s).
async fn decided_by(audit_log: &std::path::Path, caller: &SpiffeId) -> String {
    for _ in 0..100 {
        let text = std::fs::read_to_string(audit_log).unwrap_or_default();
        let found = text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|r| r["type"] == "decision" && r["client"] == caller.as_str());
        if let Some(r) = found {
            let decision = r["decision"].as_str().unwrap_or("?");
            return match r["policy"].as_str() {
                Some(policy) => format!("{decision} by {policy}"),
                None => format!("{decision}: {}", r["reason"].as_str().unwrap_or("")),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    "-".into()
}

/// A plaintext HTTP request straight to a sidecar's inbound (mTLS-only) port.
async fn plaintext(callee: &Workload) -> Row {
    let mut answer = Vec::new();
    if let Ok(mut tcp) = tokio::net::TcpStream::connect(callee.sidecar.inbound[0]).await {
        let _ = tcp.write_all(b"GET / HTTP/1.1\r\nhost: demo\r\n\r\n").await;
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    }
    let answered = String::from_utf8_lossy(&answer).contains("hello from");
    Row {
        caller: "plaintext client".into(),
        callee: callee.name.into(),
        status: if answered { "ANSWERED" } else { "refused" }.into(),
        seen: "- (TLS handshake refused)".into(),
        tls: "-".into(),
        policy: "- (strict mode: mTLS only)".into(),
    }
}

fn print_table(rows: &[Row]) {
    let header = Row {
        caller: "CALLER".into(),
        callee: "CALLEE".into(),
        status: "STATUS".into(),
        seen: "CLIENT IDENTITY THE CALLEE SAW".into(),
        tls: "TLS".into(),
        policy: "DECISION".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (w1, w2, w3, w4, w5) = (
        width(|r| &r.caller),
        width(|r| &r.callee),
        width(|r| &r.status),
        width(|r| &r.tls),
        width(|r| &r.seen),
    );
    for r in all {
        println!(
            "{:w1$}  {:w2$}  {:w3$}  {:w4$}  {:w5$}  {}",
            r.caller, r.callee, r.status, r.tls, r.seen, r.policy
        );
    }
}
