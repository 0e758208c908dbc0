//! Opaque TCP through a proxy pair.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_proxy::config::RouteProtocol;

use crate::apps;
use crate::fixture::Mesh;

async fn echo_round(addr: std::net::SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(payload).await.unwrap();
    let mut got = vec![0u8; payload.len()];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

#[tokio::test]
async fn opaque_tcp_echo_detected_and_configured() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::tcp_app(None).await;
    // Not HTTP: detected as opaque from its first bytes.
    let pair = mesh.open_pair(app).await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert_eq!(echo_round(pair.outbound, &binary).await, binary);
    // Declared opaque: no detection at all, even for HTTP-looking bytes.
    let client = mesh
        .client_to(pair.server.addrs.inbound[0], None, RouteProtocol::Opaque)
        .await;
    let http_like = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n".to_vec();
    assert_eq!(
        echo_round(client.addrs.outbound[0], &http_like).await,
        http_like
    );
}

#[tokio::test]
async fn a_server_speaks_first_protocol_works() {
    let mesh = Mesh::start().await;
    let (app, _) = apps::tcp_app(Some("220 smtp.test ESMTP ready\r\n")).await;
    let pair = mesh.open_pair(app).await;
    let mut tcp = TcpStream::connect(pair.outbound).await.unwrap();
    // The client waits for the banner; detection gives up after its timeout and goes opaque.
    let mut banner = vec![0u8; 27];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut banner))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(banner, b"220 smtp.test ESMTP ready\r\n");
    tcp.write_all(b"EHLO me\r\n").await.unwrap();
    let mut echo = vec![0u8; 9];
    tcp.read_exact(&mut echo).await.unwrap();
    assert_eq!(echo, b"EHLO me\r\n");
}

#[tokio::test]
async fn a_client_that_half_closes_still_gets_its_answer() {
    let mesh = Mesh::start().await;
    let app = apps::half_close_app().await;
    let pair = mesh.opaque_pair(app).await;
    let mut tcp = TcpStream::connect(pair.outbound).await.unwrap();
    tcp.write_all(&vec![7u8; 100_000]).await.unwrap();
    tcp.shutdown().await.unwrap(); // done sending, still listening
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "got 100000 bytes");
}
