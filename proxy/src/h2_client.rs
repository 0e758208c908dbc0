//! An HTTP/2 client on `h2` itself, for the pooled proxy-to-proxy connections and the
//! shared h2c connection to an app.
//!
//! A request is opened on the connection by the task that serves it, and its response is
//! polled there. hyper's client instead hands each request to the connection's task through
//! a channel, and spawns a task per request to wait for the response, boxed (hyper types it
//! as large as the whole connection's state: kilobytes copied per request), which answers
//! through one more channel; callgrind counted that at about 8% of the client proxy's
//! instructions per request. A request body is piped by a task of its own only when it is
//! not all there once the request is sent.

use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Ping, SendStream};
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, Mutex, OwnedMutexGuard};

pub use crate::h2_stream::Tunnel;
use crate::h2_stream::{BodyPipe, RecvBody};
use crate::http::{boxed, empty, ProxyBody};

/// A connection's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The receive window of each stream (bytes).
    pub stream_window: u32,
    /// The receive window of the whole connection (bytes).
    pub connection_window: u32,
    /// The largest response header list accepted (bytes).
    pub max_header_list_size: u32,
    /// Pings that check the peer, if any.
    pub keepalive: Option<Keepalive>,
}

/// How a connection checks that its peer still answers.
#[derive(Debug, Clone, Copy)]
pub struct Keepalive {
    /// How often the peer is pinged, idle or not.
    pub interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub timeout: Duration,
}

/// Opens an HTTP/2 connection on `io` and runs it in a task of its own (which ends when the
/// peer closes it, a keepalive ping goes unanswered, or every [`Sender`] and stream is
/// gone); `peer` names it in the log.
pub async fn handshake<T>(
    io: T,
    settings: &Settings,
    peer: impl Display + Send + 'static,
) -> Result<Sender, h2::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, mut connection) = h2::client::Builder::new()
        // At most this many streams until the peer's settings say otherwise (as hyper).
        .initial_max_send_streams(100)
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_header_list_size(settings.max_header_list_size)
        .max_send_buffer_size(1024 * 1024)
        .max_local_error_reset_streams(Some(1024))
        .enable_push(false)
        .handshake::<_, Bytes>(io)
        .await?;
    let keepalive = settings.keepalive.zip(connection.ping_pong());
    tokio::spawn(async move {
        if let Err(e) = drive(connection, keepalive).await {
            tracing::debug!(%peer, error = %e, "pooled connection ended");
        }
    });
    Ok(Sender {
        send: Arc::new(Mutex::new(send)),
    })
}

/// Runs the connection, with keepalive pings if asked (a peer that stops answering is
/// otherwise noticed only by the requests that then wait on it).
async fn drive<T>(
    connection: h2::client::Connection<T, Bytes>,
    keepalive: Option<(Keepalive, h2::PingPong)>,
) -> Result<(), String>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut connection = std::pin::pin!(connection);
    let Some((Keepalive { interval, timeout }, mut ping_pong)) = keepalive else {
        return connection.await.map_err(|e| e.to_string());
    };
    loop {
        tokio::select! {
            biased;
            ended = &mut connection => return ended.map_err(|e| e.to_string()),
            () = tokio::time::sleep(interval) => {}
        }
        tokio::select! {
            biased;
            ended = &mut connection => return ended.map_err(|e| e.to_string()),
            pong = tokio::time::timeout(timeout, ping_pong.ping(Ping::opaque())) => match pong {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("keepalive ping: {e}")),
                Err(_) => return Err(format!("no answer to a ping within {timeout:?}")),
            },
        }
    }
}

/// Opens streams on a connection (cheap to clone; clones share it), one request at a time:
/// a request whose stream must wait for one of the peer's to close holds the others back
/// until it opens, as hyper's client does. Left to h2, every request over the peer's limit
/// would wait inside it with its HEADERS built, and one given up there (its response timed
/// out, or its app left) would still go out once a stream closes, followed by its reset; a
/// run of those makes an h2 server close the connection every request to the destination
/// shares (more than 20 streams reset before it accepted them). What h2 still queues, as
/// under hyper: the request that waits first, and a burst sent before the connection's task
/// has run (h2 counts a stream against the limit only once that task opens it).
///
/// A [`Responding`] that waits for its stream holds the sender until it is polled: a task
/// must not hold one and then wait on [`Sender::send`] itself.
#[derive(Debug, Clone)]
pub struct Sender {
    send: Arc<Mutex<SendRequest<Bytes>>>,
}

/// A request [`Sender::send`] did not send, and why.
pub struct Unsent {
    /// Why.
    pub error: h2::Error,
    /// The request, when none of it was sent (the connection closed while it waited): it
    /// may go on another connection.
    pub request: Option<Request<ProxyBody>>,
}

/// What [`Sender::try_send`] did with a request.
pub enum TrySend {
    /// Sent; the future resolves to the response.
    Sent(Responding),
    /// Refused by h2 (a malformed request): nothing was sent.
    Refused(h2::Error),
    /// Not sent, and handed back: the connection is closed, or a request waits for a stream.
    NotNow(Request<ProxyBody>),
}

impl Sender {
    /// Whether the connection takes new streams: neither closed nor told to go away.
    pub fn is_open(&self) -> bool {
        match self.send.try_lock() {
            Ok(mut send) => !matches!(poll_ready_now(&mut send), Poll::Ready(Err(_))),
            // A request waiting for a stream holds it: open, and busy.
            Err(_) => true,
        }
    }

    /// Sends `request` now if the connection takes a stream now (the usual case, with no
    /// future to wait on); otherwise hands it back.
    pub fn try_send(&self, request: Request<ProxyBody>) -> TrySend {
        let Ok(mut send) = self.send.clone().try_lock_owned() else {
            return TrySend::NotNow(request);
        };
        match poll_ready_now(&mut send) {
            Poll::Ready(Ok(())) => match open(send, request) {
                Ok(responding) => TrySend::Sent(responding),
                Err(e) => TrySend::Refused(e),
            },
            _ => TrySend::NotNow(request),
        }
    }

    /// Sends `request` once the connection takes a stream, in turn with other requests
    /// waiting for one; hands it back if the connection closes first. Dropped while it
    /// waits, nothing of the request is sent.
    pub async fn send(&self, request: Request<ProxyBody>) -> Result<Responding, Unsent> {
        let mut send = self.send.clone().lock_owned().await;
        if let Err(error) = std::future::poll_fn(|cx| send.poll_ready(cx)).await {
            return Err(Unsent {
                error,
                request: Some(request),
            });
        }
        open(send, request).map_err(|error| Unsent {
            error,
            request: None,
        })
    }
}

/// Whether the connection takes a stream now. Only the holder of the sender's lock polls
/// it: h2 keeps one waker per stream, shared with that stream's body, so the body of a
/// stream waiting to open is not polled until it has (see [`Responding`]).
fn poll_ready_now(send: &mut SendRequest<Bytes>) -> Poll<Result<(), h2::Error>> {
    send.poll_ready(&mut Context::from_waker(Waker::noop()))
}

/// Opens a stream for `request` (its HEADERS queued on the connection). If the stream has
/// to wait for one of the peer's to close, the sender stays locked until it opens.
fn open(
    mut send: OwnedMutexGuard<SendRequest<Bytes>>,
    request: Request<ProxyBody>,
) -> Result<Responding, h2::Error> {
    let (mut parts, body) = request.into_parts();
    let connect = parts.method == Method::CONNECT;
    let end = !connect && body.is_end_stream();
    // As hyper: a body of known length says so (an empty POST included).
    if let Some(len) = body.size_hint().exact() {
        let payload = !matches!(
            parts.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::CONNECT
        );
        if (len != 0 || payload) && !parts.headers.contains_key(header::CONTENT_LENGTH) {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    let (response, stream) = send.send_request(Request::from_parts(parts, ()), end)?;
    let outgoing = if connect {
        Outgoing::Tunnel(stream)
    } else if end {
        Outgoing::Sent
    } else {
        Outgoing::Body(BodyPipe::new(body, stream))
    };
    let opening = poll_ready_now(&mut send).is_pending().then_some(send);
    Ok(Responding {
        response,
        opening,
        outgoing,
    })
}

/// A request sent, until its response.
pub struct Responding {
    response: ResponseFuture,
    /// The sender, while the request's stream waits for one of the peer's to close.
    opening: Option<OwnedMutexGuard<SendRequest<Bytes>>>,
    outgoing: Outgoing,
}

/// What is left to send of a request.
enum Outgoing {
    /// Nothing.
    Sent,
    /// Its body, not yet polled.
    Body(BodyPipe),
    /// Its body, by a task of its own, which resets the stream if the sender is dropped
    /// before the response.
    Piping(oneshot::Sender<()>),
    /// A `CONNECT` request's stream, for the tunnel.
    Tunnel(SendStream<Bytes>),
}

impl Future for Responding {
    /// The response, and for a `CONNECT` answered 200, the tunnel (the response's body is
    /// then empty).
    type Output = Result<(Response<ProxyBody>, Option<Tunnel>), h2::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(send) = &mut this.opening {
            // Open (or the connection failed, which the response reports).
            let _ = ready!(send.poll_ready(cx));
            this.opening = None;
        }
        if let Outgoing::Body(pipe) = &mut this.outgoing {
            // Most bodies are all there by now: sent here, with no task for them.
            match Pin::new(&mut *pipe).poll(cx) {
                Poll::Ready(result) => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "request body not sent");
                    }
                    this.outgoing = Outgoing::Sent;
                }
                Poll::Pending => {
                    let Outgoing::Body(pipe) =
                        std::mem::replace(&mut this.outgoing, Outgoing::Sent)
                    else {
                        unreachable!("matched above")
                    };
                    let (cancel, cancelled) = oneshot::channel();
                    // `cx`'s waker is this exchange's task's (under its stream's idle guard).
                    tokio::spawn(pipe.unless_cancelled(cancelled, cx.waker().clone()));
                    this.outgoing = Outgoing::Piping(cancel);
                }
            }
        }
        let response = ready!(Pin::new(&mut this.response).poll(cx))?;
        let (parts, recv) = response.into_parts();
        let answer = match std::mem::replace(&mut this.outgoing, Outgoing::Sent) {
            Outgoing::Tunnel(send) if parts.status == StatusCode::OK => (
                Response::from_parts(parts, empty()),
                Some(Tunnel::new(send, recv)),
            ),
            // A body still piping goes on: the peer answered before it had all of it. It is
            // given up with the response, if that is given up before its end.
            Outgoing::Piping(cancel) => {
                let body = RecvBody::new(&parts.headers, recv).cancelling(cancel);
                (Response::from_parts(parts, boxed(body)), None)
            }
            _ => {
                let body = RecvBody::new(&parts.headers, recv);
                (Response::from_parts(parts, boxed(body)), None)
            }
        };
        Poll::Ready(Ok(answer))
    }
}

impl Drop for Responding {
    fn drop(&mut self) {
        if let Outgoing::Piping(cancel) = std::mem::replace(&mut self.outgoing, Outgoing::Sent) {
            let _ = cancel.send(());
        }
        if let Some(mut send) = self.opening.take() {
            // The sender refers to the stream until it opens (h2 queued its HEADERS): a task
            // waits for that, so its reset follows at once rather than with the next request.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    let _ = std::future::poll_fn(|cx| send.poll_ready(cx)).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;
    use http_body_util::BodyExt;
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::mpsc;

    fn settings() -> Settings {
        Settings {
            stream_window: 65_535,
            connection_window: 65_535,
            max_header_list_size: 16 * 1024,
            keepalive: Some(Keepalive {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(10),
            }),
        }
    }

    /// A client connected to a hyper HTTP/2 server (extended CONNECT on, the smallest
    /// windows) that answers with `answer`, over an in-memory pipe.
    async fn client_of<F, R>(answer: F) -> Sender
    where
        F: Fn(Request<Incoming>) -> R + Send + Sync + 'static,
        R: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        client_with(u32::MAX, answer).await
    }

    /// As `client_of`, with a server that allows `max_streams` streams at once.
    async fn client_with<F, R>(max_streams: u32, answer: F) -> Sender
    where
        F: Fn(Request<Incoming>) -> R + Send + Sync + 'static,
        R: Future<Output = Response<ProxyBody>> + Send + 'static,
    {
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        let answer = std::sync::Arc::new(answer);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let answer = answer.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
            });
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .enable_connect_protocol()
                .initial_stream_window_size(65_535)
                .initial_connection_window_size(65_535)
                .max_concurrent_streams(max_streams)
                .serve_connection(TokioIo::new(server_io), service)
                .await
                .unwrap();
        });
        handshake(client_io, &settings(), "test").await.unwrap()
    }

    fn get(path: &str) -> Request<ProxyBody> {
        Request::get(format!("http://peer{path}"))
            .body(empty())
            .unwrap()
    }

    /// `request`'s answer, sent when its turn comes.
    async fn answer(
        sender: &Sender,
        request: Request<ProxyBody>,
    ) -> (Response<ProxyBody>, Option<Tunnel>) {
        let Ok(responding) = sender.send(request).await else {
            panic!("the connection closed before the request was sent")
        };
        responding.await.unwrap()
    }

    /// An extended CONNECT for a WebSocket (RFC 8441).
    fn websocket_connect() -> Request<ProxyBody> {
        let mut request = Request::connect("http://peer/chat").body(empty()).unwrap();
        request
            .extensions_mut()
            .insert(h2::ext::Protocol::from("websocket"));
        request
    }

    /// A request body fed through a channel, one chunk per message.
    struct ChannelBody(mpsc::Receiver<Bytes>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    #[tokio::test]
    async fn a_response_larger_than_the_window_and_its_trailers_arrive_whole() {
        let sender = client_of(|_| async {
            let data = Bytes::from(vec![7u8; 300_000]);
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            let body =
                http_body_util::Full::new(data).with_trailers(async move { Some(Ok(trailers)) });
            Response::builder()
                .header(header::CONTENT_LENGTH, "300000")
                .body(boxed(body))
                .unwrap()
        })
        .await;
        let (response, tunnel) = answer(&sender, get("/big")).await;
        assert!(tunnel.is_none());
        assert_eq!(response.body().size_hint().exact(), Some(300_000));
        // A window not handed back would stall it: fail rather than hang.
        let collected = tokio::time::timeout(Duration::from_secs(10), response.collect())
            .await
            .expect("the whole body within the windows given back")
            .unwrap();
        assert_eq!(
            collected
                .trailers()
                .and_then(|t| t.get("grpc-status"))
                .unwrap(),
            "0"
        );
        let data = collected.to_bytes();
        assert_eq!(data.len(), 300_000, "five times the stream's window");
        assert!(data.iter().all(|b| *b == 7));
    }

    #[tokio::test]
    async fn a_response_ended_with_its_headers_has_an_empty_exact_body() {
        let sender = client_of(|_| async {
            Response::builder()
                .status(StatusCode::NO_CONTENT)
                .body(empty())
                .unwrap()
        })
        .await;
        let (response, _) = answer(&sender, get("/")).await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(response.body().is_end_stream());
        assert_eq!(response.body().size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_request_body_sent_after_the_request_is_piped_to_its_end() {
        let sender = client_of(|req: Request<Incoming>| async move {
            let received = req.into_body().collect().await.unwrap().to_bytes();
            Response::new(boxed(http_body_util::Full::new(Bytes::from(
                received.len().to_string(),
            ))))
        })
        .await;
        let (chunks, body) = mpsc::channel(4);
        let request = Request::post("http://peer/upload")
            .body(boxed(ChannelBody(body)))
            .unwrap();
        let responding = sender.send(request).await.ok().unwrap();
        // The body is not all there when first polled: a task pipes the rest, within the
        // server's stream window (a quarter of what is sent).
        let writer = tokio::spawn(async move {
            for _ in 0..25 {
                chunks.send(Bytes::from(vec![1u8; 10_000])).await.unwrap();
            }
        });
        let (response, _) = tokio::time::timeout(Duration::from_secs(10), responding)
            .await
            .expect("the body sent as the server's window allows")
            .unwrap();
        writer.await.unwrap();
        let answer = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(answer, "250000");
    }

    #[tokio::test]
    async fn a_request_dropped_before_its_answer_resets_the_body_still_piping() {
        let (seen, mut outcome) = mpsc::channel::<String>(1);
        let sender = client_of(move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let result = req.into_body().collect().await;
                let _ = seen
                    .send(match result {
                        Ok(_) => "ended".to_string(),
                        Err(e) => format!("failed: {e}"),
                    })
                    .await;
                Response::new(empty())
            }
        })
        .await;
        let (chunks, body) = mpsc::channel(1);
        let request = Request::post("http://peer/stream")
            .body(boxed(ChannelBody(body)))
            .unwrap();
        let mut responding = sender.send(request).await.ok().unwrap();
        chunks.send(Bytes::from_static(b"first")).await.unwrap();
        // Polled once: the body's first chunk goes out and the pipe becomes a task.
        assert!(futures_poll_once(&mut responding).await.is_none());
        drop(responding);
        let outcome = tokio::time::timeout(Duration::from_secs(10), outcome.recv())
            .await
            .expect("the stream is reset, not left open")
            .unwrap();
        assert!(outcome.starts_with("failed"), "{outcome}");
        drop(chunks);
    }

    /// A peer that answers at once with a response that never ends (until the request's
    /// body does), and reports how the request's body ended: `ended after N bytes`, or
    /// `failed: ...` if its stream was reset.
    async fn quiet_peer_reporting_the_request_body() -> (Sender, mpsc::Receiver<String>) {
        let (seen, outcome) = mpsc::channel::<String>(1);
        let sender = client_of(move |req: Request<Incoming>| {
            let seen = seen.clone();
            async move {
                let (held, quiet) = mpsc::channel::<Bytes>(1);
                tokio::spawn(async move {
                    let result = req.into_body().collect().await;
                    let _ = seen
                        .send(match result {
                            Ok(body) => format!("ended after {} bytes", body.to_bytes().len()),
                            Err(e) => format!("failed: {e}"),
                        })
                        .await;
                    drop(held);
                });
                Response::new(boxed(ChannelBody(quiet)))
            }
        })
        .await;
        (sender, outcome)
    }

    #[tokio::test]
    async fn a_response_given_up_before_its_end_resets_the_request_body_still_piping() {
        let (sender, mut outcome) = quiet_peer_reporting_the_request_body().await;
        let (chunks, body) = mpsc::channel(1);
        let request = Request::post("http://peer/stream")
            .body(boxed(ChannelBody(body)))
            .unwrap();
        let responding = sender.send(request).await.ok().unwrap();
        chunks.send(Bytes::from_static(b"first")).await.unwrap();
        let (response, _) = tokio::time::timeout(Duration::from_secs(10), responding)
            .await
            .expect("answered")
            .unwrap();
        // The caller gives up on the response before its end (it reset its stream, or the
        // stream went idle); the request's body has not ended either.
        drop(response);
        let outcome = tokio::time::timeout(Duration::from_secs(10), outcome.recv())
            .await
            .expect("the request's stream is reset, not left piping")
            .unwrap();
        assert!(outcome.starts_with("failed"), "{outcome}");
        drop(chunks);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_body_still_streaming_keeps_a_quiet_response_from_going_idle() {
        // The peer answers at once with a response that stays quiet, and reads the request
        // body, which comes a chunk every 400 ms for 4 s: four idle timeouts of 1 s.
        let (sender, mut outcome) = quiet_peer_reporting_the_request_body().await;
        let (chunks, body) = mpsc::channel(1);
        let request = Request::post("http://peer/upload")
            .body(boxed(ChannelBody(body)))
            .unwrap();
        tokio::spawn(async move {
            for _ in 0..10 {
                chunks.send(Bytes::from_static(b"chunk")).await.unwrap();
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        });
        // The exchange as a stream's task runs it: under the idle guard, holding the
        // response (whose body is quiet) until the peer has the whole request.
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = finished.clone();
        let guarded = crate::stall::StallGuard::new(
            async move {
                let responding = sender.send(request).await.ok().unwrap();
                let (_response, _) = responding.await.unwrap();
                let _ = done.await;
                flag.store(true, std::sync::atomic::Ordering::SeqCst);
            },
            Duration::from_secs(1),
        );
        let task = tokio::spawn(guarded);
        let outcome = outcome.recv().await.unwrap();
        assert_eq!(
            outcome, "ended after 50 bytes",
            "the request streamed to its end"
        );
        done_tx.send(()).unwrap();
        task.await.unwrap();
        assert!(
            finished.load(std::sync::atomic::Ordering::SeqCst),
            "the exchange was not dropped as idle"
        );
    }

    /// Polls `f` once.
    async fn futures_poll_once<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
        std::future::poll_fn(|cx| {
            Poll::Ready(match Pin::new(&mut *f).poll(cx) {
                Poll::Ready(out) => Some(out),
                Poll::Pending => None,
            })
        })
        .await
    }

    #[tokio::test]
    async fn a_200_to_an_extended_connect_is_a_tunnel_both_ways() {
        let sender = client_of(|mut req: Request<Incoming>| async move {
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let mut io = crate::http::upgraded(upgrade).await.unwrap();
                let mut buf = Vec::new();
                io.read_to_end(&mut buf).await.unwrap();
                io.write_all(&buf).await.unwrap();
                io.shutdown().await.unwrap();
            });
            Response::new(empty())
        })
        .await;
        let (response, tunnel) = answer(&sender, websocket_connect()).await;
        assert_eq!(response.status(), StatusCode::OK);
        let mut tunnel = tunnel.expect("a 200 to CONNECT opens a tunnel");
        // Five times the windows each way: the tunnel waits for them and hands them back.
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let echoed = tokio::time::timeout(Duration::from_secs(10), async {
            tunnel.write_all(&sent).await.unwrap();
            tunnel.shutdown().await.unwrap();
            let mut back = Vec::new();
            tunnel.read_to_end(&mut back).await.unwrap();
            back
        })
        .await
        .expect("both directions within the windows");
        assert!(echoed == sent, "the echo differs");
    }

    #[tokio::test]
    async fn a_refused_connect_is_an_answer_with_no_tunnel() {
        let sender = client_of(|_| async {
            Response::builder()
                .status(StatusCode::FORBIDDEN)
                .body(boxed(http_body_util::Full::new(Bytes::from_static(b"no"))))
                .unwrap()
        })
        .await;
        let (response, tunnel) = answer(&sender, websocket_connect()).await;
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(tunnel.is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "no");
    }

    /// A peer that allows one stream at a time, whose only stream `/a` holds until
    /// `release` is sent true; each request's path and body (or `(reset)`) arrive on the
    /// channel as the peer reads them.
    async fn one_stream_held() -> (
        Sender,
        mpsc::UnboundedReceiver<String>,
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<Result<(Response<ProxyBody>, Option<Tunnel>), h2::Error>>,
    ) {
        let (seen, mut arrivals) = mpsc::unbounded_channel::<String>();
        let (release, released) = tokio::sync::watch::channel(false);
        let sender = client_with(1, move |req: Request<Incoming>| {
            let (seen, mut released) = (seen.clone(), released.clone());
            async move {
                let path = req.uri().path().to_string();
                let body = match req.into_body().collect().await {
                    Ok(body) => String::from_utf8_lossy(&body.to_bytes()).into_owned(),
                    Err(_) => "(reset)".to_string(),
                };
                seen.send(format!("{path} {body}")).unwrap();
                if path == "/a" {
                    released.wait_for(|r| *r).await.unwrap();
                }
                Response::new(empty())
            }
        })
        .await;
        // The server's settings (one stream at a time) arrive with the first exchange.
        answer(&sender, get("/warm")).await;
        assert_eq!(arrivals.recv().await.unwrap(), "/warm ");
        let TrySend::Sent(a) = sender.try_send(get("/a")) else {
            panic!("a stream is free")
        };
        let a = tokio::spawn(a);
        assert_eq!(
            arrivals.recv().await.unwrap(),
            "/a ",
            "/a holds the only stream"
        );
        (sender, arrivals, release, a)
    }

    #[tokio::test]
    async fn at_the_peers_stream_limit_requests_wait_in_turn_and_one_given_up_is_never_sent() {
        let (sender, mut arrivals, release, a) = one_stream_held().await;
        // /b waits for /a's stream to close, its body too, and holds back those after it.
        let (b_chunks, b_body) = mpsc::channel(1);
        let b = Request::post("http://peer/b")
            .body(boxed(ChannelBody(b_body)))
            .unwrap();
        let TrySend::Sent(b) = sender.try_send(b) else {
            panic!("the first to wait is sent")
        };
        let TrySend::NotNow(c) = sender.try_send(get("/c")) else {
            panic!("/b waits for a stream")
        };
        let mut c = Box::pin(sender.send(c));
        assert!(
            futures_poll_once(&mut c).await.is_none(),
            "/c waits in turn"
        );
        drop(c); // given up (its response timed out, or its app left)
        let b = tokio::spawn(b);
        let d = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(get("/d")).await.ok().unwrap().await }
        });
        // /b's task waits for its stream and /d's for its turn (this runtime runs them in
        // order before coming back here); /b's body has data before its stream opens.
        tokio::task::yield_now().await;
        b_chunks.send(Bytes::from_static(b"b-body")).await.unwrap();
        release.send(true).unwrap();
        a.await.unwrap().unwrap();
        drop(b_chunks);
        // One waker per stream in h2: were /b's body polled before its stream opened, /d's
        // wait would take its wake-up, and /b's body would never be sent.
        let (b, d) = tokio::time::timeout(Duration::from_secs(10), async {
            (b.await.unwrap(), d.await.unwrap())
        })
        .await
        .expect("/b and /d answered");
        b.unwrap();
        d.unwrap();
        let rest: Vec<String> = [
            arrivals.recv().await.unwrap(),
            arrivals.recv().await.unwrap(),
        ]
        .into();
        assert_eq!(rest, ["/b b-body", "/d "], "/c never reached the peer");
    }

    #[tokio::test]
    async fn a_request_dropped_while_its_stream_waits_to_open_is_reset_once_it_opens() {
        let (sender, mut arrivals, release, a) = one_stream_held().await;
        // /b's HEADERS are queued in h2 when it is dropped, its body not yet begun.
        let (b_chunks, b_body) = mpsc::channel::<Bytes>(1);
        let b = Request::post("http://peer/b")
            .body(boxed(ChannelBody(b_body)))
            .unwrap();
        let TrySend::Sent(b) = sender.try_send(b) else {
            panic!("the first to wait is sent")
        };
        drop(b);
        release.send(true).unwrap();
        a.await.unwrap().unwrap();
        // With no request after it: the reset follows /b's HEADERS as soon as they go out.
        let outcome = tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
            .await
            .expect("the stream is reset, not left open")
            .unwrap();
        assert_eq!(outcome, "/b (reset)");
        drop(b_chunks);
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_stops_answering_pings_is_closed() {
        // The server end is never read: the handshake's frames and the ping wait unread.
        let (client_io, _server_io) = tokio::io::duplex(64 * 1024);
        let sender = handshake(client_io, &settings(), "test").await.unwrap();
        assert!(sender.is_open());
        // Time only moves while every task waits, so this is a wait for the ping's
        // interval and timeout, whatever the machine's speed.
        tokio::time::sleep(Duration::from_secs(39)).await;
        assert!(sender.is_open(), "the ping has 10 s to be answered");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!sender.is_open());
        assert!(matches!(sender.try_send(get("/")), TrySend::NotNow(_)));
        assert!(sender.send(get("/")).await.is_err());
    }

    #[tokio::test]
    async fn a_peer_that_goes_away_closes_the_sender() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                Ok::<_, std::convert::Infallible>(Response::new(empty()))
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server_io), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = &mut conn => {}
                _ = stopped => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        let sender = handshake(client_io, &settings(), "test").await.unwrap();
        let (response, _) = answer(&sender, get("/")).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(sender.is_open());
        stop.send(()).unwrap();
        for _ in 0..1000 {
            if !sender.is_open() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the sender is still open after the peer's GOAWAY");
    }
}
