//! `warden demo`: the local mesh in one command, in-process on 127.0.0.1.
//!
//! Today it shows the identity layer end to end: an in-memory CA issues SVIDs to two
//! workloads, which speak mutual TLS 1.3 to each other over real sockets; a forged workload
//! from another CA and a plaintext client are refused. The proxies join it in the data-plane
//! issue.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use warden_core::contract::ALPN_TCP;
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::ca::{self, InitOptions};
use warden_identity::{tls, ExpectedPeer, Svid, TrustStore};

/// `warden demo` options.
#[derive(clap::Args)]
pub struct Args {
    /// The trust domain of the demo CA.
    #[arg(long, default_value = warden_core::spiffe::DEFAULT_TRUST_DOMAIN, value_parser = TrustDomain::parse)]
    trust_domain: TrustDomain,
}

/// One line of the demo's table.
struct Row {
    caller: String,
    callee: String,
    result: String,
    seen_by_callee: String,
    tls: String,
}

/// Runs the demo and prints its table.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rows = runtime.block_on(demo(args.trust_domain))?;
    print_table(&rows);
    let expected_ok = rows.iter().filter(|r| r.result == "ok").count();
    Ok(if expected_ok == 2 && rows.len() == 4 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn demo(td: TrustDomain) -> anyhow::Result<Vec<Row>> {
    let ttl = Duration::from_secs(3600);
    let mesh_ca = ca::generate(&InitOptions::new(td.clone()))?.authority()?;
    let store = Arc::new(TrustStore::single(mesh_ca.bundle().clone()));
    let frontend_id = SpiffeId::for_service_account(&td, "demo", "frontend")?;
    let backend_id = SpiffeId::for_service_account(&td, "demo", "backend")?;
    let frontend = mesh_ca.issue(&frontend_id, ttl)?;
    let backend = mesh_ca.issue(&backend_id, ttl)?;
    // An intruder with its own CA, claiming to be the frontend.
    let rogue_ca = ca::generate(&InitOptions::new(td.clone()))?.authority()?;
    let intruder = rogue_ca.issue(&frontend_id, ttl)?;

    // Calls run one at a time, so one channel tells what each callee saw of its caller.
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel();
    let frontend_addr = serve(&frontend, store.clone(), seen_tx.clone()).await?;
    let backend_addr = serve(&backend, store.clone(), seen_tx).await?;
    let mut next_seen = async || {
        tokio::time::timeout(Duration::from_secs(5), seen_rx.recv())
            .await
            .ok()
            .flatten()
            .unwrap_or_else(|| "(nothing)".into())
    };

    let mut rows = Vec::new();
    for (caller, svid, callee, addr) in [
        ("frontend", &frontend, "backend", backend_addr),
        ("backend", &backend, "frontend", frontend_addr),
        ("intruder (rogue CA)", &intruder, "backend", backend_addr),
    ] {
        let client =
            tls::client_config(svid, store.clone(), ExpectedPeer::AnyTrusted, &[ALPN_TCP])?;
        let outcome = call(client, addr).await;
        let seen = next_seen().await;
        rows.push(match outcome {
            Ok(tls) => Row {
                caller: caller.into(),
                callee: callee.into(),
                result: "ok".into(),
                seen_by_callee: seen,
                tls,
            },
            Err(_) => Row {
                caller: caller.into(),
                callee: callee.into(),
                result: "refused".into(),
                seen_by_callee: seen,
                tls: "-".into(),
            },
        });
    }

    // Plaintext straight to the backend's mTLS port.
    let mut tcp = TcpStream::connect(backend_addr).await?;
    tcp.write_all(b"GET / HTTP/1.1\r\nhost: backend\r\n\r\n")
        .await?;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    let seen = next_seen().await;
    let answered = String::from_utf8_lossy(&buf).contains("HTTP/");
    rows.push(Row {
        caller: "plaintext client".into(),
        callee: "backend".into(),
        result: if answered { "answered!" } else { "refused" }.into(),
        seen_by_callee: seen,
        tls: "-".into(),
    });
    Ok(rows)
}

/// A workload's mTLS server: answers "hello" and reports what it saw of each caller.
async fn serve(
    svid: &Svid,
    store: Arc<TrustStore>,
    seen_tx: mpsc::UnboundedSender<String>,
) -> anyhow::Result<std::net::SocketAddr> {
    let config = tls::server_config(svid, store, &[ALPN_TCP], tls::ClientAuth::Required)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let seen = match acceptor.accept(tcp).await {
                    Ok(mut stream) => {
                        let peer = tls::peer_identity(stream.get_ref().1);
                        let mut buf = [0u8; 5];
                        if stream.read_exact(&mut buf).await.is_ok() {
                            let _ = stream.write_all(b"hello").await;
                            let _ = stream.shutdown().await;
                        }
                        peer.map(|p| p.to_string())
                            .unwrap_or_else(|| "(no identity)".into())
                    }
                    Err(e) => format!("handshake refused: {e}"),
                };
                let _ = seen_tx.send(seen);
            });
        }
    });
    Ok(addr)
}

/// Calls a workload over mTLS; returns "<version> <key exchange>" on success.
async fn call(config: rustls::ClientConfig, addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut stream = connector.connect(tls::mesh_server_name(), tcp).await?;
    stream.write_all(b"hello").await?;
    let mut buf = [0u8; 5];
    stream.read_exact(&mut buf).await?;
    let conn = stream.get_ref().1;
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        other => format!("{other:?}"),
    };
    Ok(format!("{version} {}", tls::key_exchange_name(conn)))
}

fn print_table(rows: &[Row]) {
    let header = Row {
        caller: "CALLER".into(),
        callee: "CALLEE".into(),
        result: "RESULT".into(),
        seen_by_callee: "CALLEE SAW".into(),
        tls: "TLS".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (w1, w2, w3, w4) = (
        width(|r| &r.caller),
        width(|r| &r.callee),
        width(|r| &r.result),
        width(|r| &r.tls),
    );
    for r in all {
        println!(
            "{:w1$}  {:w2$}  {:w3$}  {:w4$}  {}",
            r.caller, r.callee, r.result, r.tls, r.seen_by_callee
        );
    }
}
