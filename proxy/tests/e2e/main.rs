//! End-to-end tests of the data plane: real sockets on 127.0.0.1, real mTLS between two
//! proxies started from their configuration, real apps behind them.

mod apps;
mod bypass;
mod failures;
mod fixture;
#[cfg(feature = "hop-timing")]
mod hop_timing;
mod hostile;
mod observability;
mod policy;
mod probes;
mod protocols;
mod slim_binary;
mod tcp;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;

/// The request body type the test clients send.
pub type ClientBody = BoxBody<Bytes, std::convert::Infallible>;

pub fn empty() -> ClientBody {
    Empty::new().boxed()
}

pub fn full(data: impl Into<Bytes>) -> ClientBody {
    Full::new(data.into()).boxed()
}

/// An HTTP/1.1 client connection, as an app would open to its outbound proxy.
pub async fn h1_client(addr: SocketAddr) -> http1::SendRequest<ClientBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// An HTTP/2 prior-knowledge (h2c) client connection, as a gRPC app would open.
pub async fn h2c_client(addr: SocketAddr) -> http2::SendRequest<ClientBody> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Reads a whole response body as text.
pub async fn text(resp: http::Response<hyper::body::Incoming>) -> String {
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}
