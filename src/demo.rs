//! `warden demo`: the local mesh in one command, in-process on 127.0.0.1.
//!
//! It starts the identity service (a fresh CA, join tokens), then two workloads, each an
//! unmodified HTTP app with a Warden sidecar that obtains its SVID from the identity
//! service. Requests go app -> outbound proxy -> mutual TLS -> inbound proxy -> app; the
//! table shows what each callee saw. A plaintext connection straight to a sidecar's inbound
//! port is refused. Without `--once` it stays up and prints where to point curl.

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
use warden_proxy::authz::Authorizer;
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

/// One line of the table.
struct Row {
    caller: String,
    callee: String,
    status: String,
    seen: String,
    tls: String,
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
    let metrics = warden_identity::telemetry::prometheus();
    let dir = tempfile::tempdir()?;
    let td = args.trust_domain;
    let shutdown = CancellationToken::new();

    // The identity service: a fresh CA, HTTPS on 127.0.0.1, join tokens for the workloads.
    let authority = ca::generate(&InitOptions::new(td.clone()))?.authority()?;
    let bundle = dir.path().join("bundle.crt");
    std::fs::write(&bundle, authority.bundle().to_pem())?;
    let tokens = dir.path().join("join-tokens");
    let mut lines = String::new();
    for name in ["frontend", "backend"] {
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

    // Two workloads; each sidecar has an inbound listener for its app and an outbound route
    // to the other. Inbound listeners are bound first so the routes can name them.
    let apps = [
        ("frontend", app("frontend").await?),
        ("backend", app("backend").await?),
    ];
    let mut configs = Vec::new();
    for (name, app_addr) in &apps {
        let mut config = ProxyConfig {
            trust_domain: td.clone(),
            ..ProxyConfig::default()
        };
        config.identity.url = identity_url.clone();
        config.identity.trust_bundle = bundle.clone();
        config.identity.token_file = dir.path().join(format!("{name}.token"));
        config.identity.namespace = Some(NAMESPACE.into());
        config.identity.service_account = Some((*name).into());
        config.admin.listen = "127.0.0.1:0".parse()?;
        config.inbound = vec![InboundListener {
            listen: "127.0.0.1:0".parse()?,
            app: *app_addr,
            protocol: AppProtocol::Auto,
        }];
        configs.push(config);
    }
    let mut listeners = Vec::new();
    for config in &configs {
        listeners.push(Listeners::bind(config).await?);
    }
    let inbound: Vec<SocketAddr> = listeners.iter().map(|l| l.addrs().inbound[0]).collect();
    let mut workloads = Vec::new();
    for (i, ((name, app_addr), mut config)) in apps.into_iter().zip(configs).enumerate() {
        let other = 1 - i;
        let route = OutboundRoute {
            listen: "127.0.0.1:0".parse()?,
            destination: inbound[other],
            identity: Some(workload_id(&td, ["frontend", "backend"][other])?),
            protocol: RouteProtocol::Detect,
        };
        config.outbound = vec![route.clone()];
        config.validate()?;
        let mut bound = listeners.remove(0);
        bound
            .add_outbound("outbound[0].listen".into(), &route)
            .await?;
        let sidecar = bound.addrs();
        let source = proxy::cert_source(&config)?;
        tokio::spawn(proxy::run(
            config,
            bound,
            source,
            Authorizer::allow_all(),
            metrics.clone(),
            shutdown.clone(),
        ));
        workloads.push(Workload {
            name,
            app: app_addr,
            sidecar,
        });
    }
    for w in &workloads {
        wait_ready(w).await?;
    }

    let mut rows = Vec::new();
    for (caller, callee) in [
        (&workloads[0], &workloads[1]),
        (&workloads[1], &workloads[0]),
    ] {
        rows.push(call(caller, callee).await);
    }
    rows.push(plaintext(&workloads[1]).await);
    print_table(&rows);
    let ok = rows[..2].iter().all(|r| r.status == "200") && rows[2].status == "refused";

    if !args.once {
        println!();
        for w in &workloads {
            println!(
                "{:<9} app http://{}  sidecar: outbound http://{} (to the other workload)  inbound {} (mTLS only)  admin http://{}/metrics",
                w.name, w.app, w.sidecar.outbound[0], w.sidecar.inbound[0], w.sidecar.admin
            );
        }
        println!(
            "\ntry: curl http://{}/   (the frontend's app calling the backend through the mesh)\nCtrl-C to stop.",
            workloads[0].sidecar.outbound[0]
        );
        crate::signals::terminated().await;
    }
    shutdown.cancel();
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
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
            (status.to_string(), field("caller: "), field("tls: "))
        }
        Err(e) => ("error".to_string(), e.to_string(), "-".to_string()),
    };
    Row {
        caller: caller.name.into(),
        callee: callee.name.into(),
        status,
        seen,
        tls,
    }
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
        seen: "- (the TLS handshake failed; the app saw nothing)".into(),
        tls: "-".into(),
    }
}

fn print_table(rows: &[Row]) {
    let header = Row {
        caller: "CALLER".into(),
        callee: "CALLEE".into(),
        status: "STATUS".into(),
        seen: "CLIENT IDENTITY THE CALLEE SAW".into(),
        tls: "TLS".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (w1, w2, w3, w4) = (
        width(|r| &r.caller),
        width(|r| &r.callee),
        width(|r| &r.status),
        width(|r| &r.tls),
    );
    for r in all {
        println!(
            "{:w1$}  {:w2$}  {:w3$}  {:w4$}  {}",
            r.caller, r.callee, r.status, r.tls, r.seen
        );
    }
}
