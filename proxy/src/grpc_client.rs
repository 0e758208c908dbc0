//! A minimal gRPC client over hyper's HTTP/2 client and prost messages, so the sidecar
//! carries neither tonic nor tower: mTLS to the controller (whose SVID must be exactly the
//! expected one), one HTTP/2 connection shared by every call of the proxy (the policy stream
//! and the discovery stream), request streams fed as the proxy goes, response streams read
//! message by message with a size limit, and the status from trailers.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::watch;
use warden_api::grpc::{self, FrameDecoder, FrameError};
use warden_core::SpiffeId;
use warden_identity::rotation::Credentials;
use warden_identity::verify::ExpectedPeer;

/// Why a call to the controller failed or its stream ended.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    /// The address did not resolve or refused the connection.
    #[error("connecting to {address}: {reason}")]
    Connect {
        /// `host:port`.
        address: String,
        /// What failed.
        reason: String,
    },
    /// The mTLS handshake failed (e.g. the server is not the controller).
    #[error("mTLS with {address}: {reason}")]
    Handshake {
        /// `host:port`.
        address: String,
        /// What failed.
        reason: String,
    },
    /// HTTP/2 failed.
    #[error("HTTP/2 with {address}: {reason}")]
    Http {
        /// `host:port`.
        address: String,
        /// What failed.
        reason: String,
    },
    /// The controller refused or ended the call.
    #[error("{address}: {status}")]
    Status {
        /// `host:port`.
        address: String,
        /// The gRPC status.
        status: grpc::Status,
    },
    /// The stream broke the framing rules.
    #[error("{address}: {error}")]
    Frame {
        /// `host:port`.
        address: String,
        /// What is wrong.
        error: FrameError,
    },
    /// A message that does not decode.
    #[error("{address}: a message that does not decode: {error}")]
    Decode {
        /// `host:port`.
        address: String,
        /// What is wrong.
        error: prost::DecodeError,
    },
}

/// An HTTP/2 connection to the controller; cloned for concurrent calls.
pub type Channel = hyper::client::conn::http2::SendRequest<RequestBody>;

/// A call's request stream: one message given at the start, or the messages sent through
/// its sender until that is dropped (which ends the stream).
#[derive(Debug)]
pub struct RequestBody {
    first: Option<Bytes>,
    more: Option<tokio::sync::mpsc::UnboundedReceiver<Bytes>>,
}

impl RequestBody {
    /// A request stream of the one framed `message`.
    pub fn once(message: Bytes) -> Self {
        Self {
            first: Some(message),
            more: None,
        }
    }

    /// A request stream fed, framed message by framed message, through the sender.
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedSender<Bytes>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let body = Self {
            first: None,
            more: Some(rx),
        };
        (body, tx)
    }
}

impl hyper::body::Body for RequestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        match &mut self.more {
            Some(more) => more
                .poll_recv(cx)
                .map(|message| message.map(|m| Ok(Frame::data(m)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.more.is_none()
    }
}

/// Where the controller is, and as which pod this proxy subscribes.
#[derive(Debug, Clone)]
pub struct ControlPlaneClient {
    /// The controller's `host:port` addresses, tried in turn.
    pub addresses: Vec<String>,
    /// The controller's SPIFFE ID (its SVID must carry exactly this).
    pub server_id: SpiffeId,
    /// This proxy's pod.
    pub pod: String,
    /// Bound on connecting plus the TLS handshake.
    pub connect_timeout: Duration,
}

/// Where a [`SharedChannel`] stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelState {
    /// Connected to the controller at this address.
    Connected(String),
    /// A connection is being made.
    Connecting,
    /// Not connected (the next call connects).
    Disconnected,
}

/// The proxy's one connection to the controller, shared by the policy stream and every
/// destination watch: connected on first use, and again (to the next address in turn) once
/// it closed or was given up. The SVID in force is read at every connection, so a rotated
/// one is used from the next connection on.
pub struct SharedChannel {
    target: ControlPlaneClient,
    credentials: watch::Receiver<Arc<Credentials>>,
    slot: tokio::sync::Mutex<Option<(String, Channel)>>,
}

impl std::fmt::Debug for SharedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedChannel")
            .field("controller", &self.target.addresses)
            .finish()
    }
}

impl SharedChannel {
    /// A channel to `target`, presenting the SVID in `credentials`; nothing connects yet.
    pub fn new(
        target: ControlPlaneClient,
        credentials: watch::Receiver<Arc<Credentials>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            target,
            credentials,
            slot: tokio::sync::Mutex::new(None),
        })
    }

    /// Where the controller is, and this proxy's pod.
    pub fn target(&self) -> &ControlPlaneClient {
        &self.target
    }

    /// The open connection and its address; else a new one to address number `attempt`
    /// (modulo their count). Callers wait for each other while one connects.
    pub async fn get(&self, attempt: usize) -> Result<(String, Channel), ControlPlaneError> {
        let mut slot = self.slot.lock().await;
        if let Some((address, channel)) = slot.as_ref() {
            if !channel.is_closed() {
                return Ok((address.clone(), channel.clone()));
            }
        }
        let addresses = &self.target.addresses;
        let address = addresses[attempt % addresses.len()].clone();
        let creds = self.credentials.borrow().clone();
        // Boxed: the TLS handshake's state is kilobytes, and every caller's future (one task
        // per watched destination) would otherwise reserve room for it for its whole life.
        let channel = Box::pin(connect(
            &address,
            &self.target.server_id,
            self.target.connect_timeout,
            &creds,
        ))
        .await?;
        *slot = Some((address.clone(), channel.clone()));
        Ok((address, channel))
    }

    /// Gives up the connection to `address` (a controller that said UNAVAILABLE), so the
    /// next [`SharedChannel::get`] connects anew; calls already on it go on until they end.
    pub async fn give_up(&self, address: &str) {
        let mut slot = self.slot.lock().await;
        if slot.as_ref().is_some_and(|(a, _)| a == address) {
            *slot = None;
        }
    }

    /// The connection's state, for `/ready`.
    pub fn state(&self) -> ChannelState {
        match self.slot.try_lock() {
            Ok(slot) => match slot.as_ref() {
                Some((address, channel)) if !channel.is_closed() => {
                    ChannelState::Connected(address.clone())
                }
                _ => ChannelState::Disconnected,
            },
            Err(_) => ChannelState::Connecting,
        }
    }
}

/// Connects to `address`, completes mTLS presenting `creds` and requiring `server_id`, and
/// starts HTTP/2, all within `timeout`.
pub async fn connect(
    address: &str,
    server_id: &SpiffeId,
    timeout: Duration,
    creds: &Credentials,
) -> Result<Channel, ControlPlaneError> {
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| {
            ControlPlaneError::Connect {
                address: address.to_string(),
                reason: e.to_string(),
            }
        })?;
        let _ = tcp.set_nodelay(true);
        let config = warden_identity::tls::client_config(
            &creds.svid,
            creds.trust.clone(),
            ExpectedPeer::Exact(server_id.clone()),
            &[b"h2"],
        )
        .map_err(|e| ControlPlaneError::Handshake {
            address: address.to_string(),
            reason: e.to_string(),
        })?;
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(warden_identity::tls::mesh_server_name(), tcp)
            .await
            .map_err(|e| ControlPlaneError::Handshake {
                address: address.to_string(),
                reason: warden_identity::verify::describe_handshake_error(&e),
            })
    };
    let tls = tokio::time::timeout(timeout, connect())
        .await
        .map_err(|_| ControlPlaneError::Connect {
            address: address.to_string(),
            reason: format!("no connection within {timeout:?}"),
        })??;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Notices a controller that vanished without closing (a partition, a dead node).
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(tls))
        .await
        .map_err(|e| http_error(address, &e))?;
    tokio::spawn(connection);
    Ok(sender)
}

fn http_error(address: &str, e: &hyper::Error) -> ControlPlaneError {
    ControlPlaneError::Http {
        address: address.to_string(),
        reason: crate::http::error_chain(e),
    }
}

/// Starts the call `path` with `request` as its request stream; its response body.
pub async fn call(
    channel: &mut Channel,
    address: &str,
    path: &str,
    request: RequestBody,
) -> Result<Incoming, ControlPlaneError> {
    channel.ready().await.map_err(|e| http_error(address, &e))?;
    let request = http::Request::post(format!("http://controller{path}"))
        .header(http::header::CONTENT_TYPE, grpc::CONTENT_TYPE)
        .header(http::header::TE, "trailers")
        .body(request)
        .map_err(|e| ControlPlaneError::Http {
            address: address.to_string(),
            reason: format!("the call {path:?} is not a valid request: {e}"),
        })?;
    let response = channel
        .send_request(request)
        .await
        .map_err(|e| http_error(address, &e))?;
    // A call refused at once carries its status in the headers ("trailers-only").
    if let Some(status) = grpc::status(response.headers()) {
        return Err(ControlPlaneError::Status {
            address: address.to_string(),
            status,
        });
    }
    if response.status() != http::StatusCode::OK {
        return Err(ControlPlaneError::Http {
            address: address.to_string(),
            reason: format!("HTTP status {}", response.status()),
        });
    }
    Ok(response.into_body())
}

/// A response stream, read message by message (each at most `max` bytes).
pub struct Messages {
    body: Incoming,
    decoder: FrameDecoder,
    address: String,
}

impl Messages {
    /// Reads `body`, a response of the controller at `address`.
    pub fn new(body: Incoming, address: &str, max: usize) -> Self {
        Self {
            body,
            decoder: FrameDecoder::new(max),
            address: address.to_string(),
        }
    }

    /// The next message; `None` once the server ended the stream with status OK, the
    /// status otherwise. Cancel-safe: what was received stays buffered for the next call.
    pub async fn next<M: prost::Message + Default>(
        &mut self,
    ) -> Result<Option<M>, ControlPlaneError> {
        let address = &self.address;
        let frame_error = |error| ControlPlaneError::Frame {
            address: address.to_string(),
            error,
        };
        loop {
            if let Some(message) = self.decoder.next_message().map_err(frame_error)? {
                return M::decode(message)
                    .map(Some)
                    .map_err(|error| ControlPlaneError::Decode {
                        address: address.to_string(),
                        error,
                    });
            }
            let Some(frame) = self.body.frame().await else {
                self.decoder.finish().map_err(frame_error)?;
                return Ok(None);
            };
            let frame = frame.map_err(|e| http_error(address, &e))?;
            if let Some(trailers) = frame.trailers_ref() {
                return match grpc::status(trailers) {
                    Some(status) if status.code != grpc::code::OK => {
                        Err(ControlPlaneError::Status {
                            address: address.to_string(),
                            status,
                        })
                    }
                    _ => Ok(None),
                };
            }
            if let Ok(data) = frame.into_data() {
                self.decoder.push(&data);
            }
        }
    }
}

/// Reads a response stream, handing each message (at most `max` bytes) to `on_message`,
/// until the server ends it: `Ok` for status OK, the status otherwise.
pub async fn read_messages<M: prost::Message + Default>(
    body: Incoming,
    address: &str,
    max: usize,
    mut on_message: impl FnMut(M),
) -> Result<(), ControlPlaneError> {
    let mut messages = Messages::new(body, address, max);
    while let Some(message) = messages.next().await? {
        on_message(message);
    }
    Ok(())
}
