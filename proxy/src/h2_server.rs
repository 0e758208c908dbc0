//! An HTTP/2 server on `h2` itself, for the proxy-to-proxy connections the inbound proxy
//! accepts and an app's h2c connections to its outbound proxy.
//!
//! Each stream runs as a task of its own behind the stream idle guard ([`StallGuard`]): the
//! handler's future, polled there until it answers (dropped if the caller resets the stream
//! first), then the response's body piped within the caller's flow control. hyper's server
//! did the same through a generic service and executor, with a second check of the stream's
//! state on every poll and its upgrade machinery for each extended `CONNECT`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Ping, PingPong, Reason, RecvStream};
use http::{header, HeaderValue, Method, Request, Response};
use hyper::body::Body;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::h2_client::Keepalive;
use crate::h2_stream::BodyPipe;
pub use crate::h2_stream::{RecvBody, Tunnel};
use crate::http::{BoxError, ProxyBody};
use crate::shared::RunControl;
use crate::stall::StallGuard;

/// A connection's settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The receive window of each stream (bytes).
    pub stream_window: u32,
    /// The receive window of the whole connection (bytes).
    pub connection_window: u32,
    /// The largest request header list accepted (bytes).
    pub max_header_list_size: u32,
    /// How many streams the caller may have open at once.
    pub max_concurrent_streams: u32,
    /// Whether extended `CONNECT` (RFC 8441, WebSockets over HTTP/2) is offered.
    pub connect_protocol: bool,
    /// Pings that check the caller, if any.
    pub keepalive: Option<Keepalive>,
    /// A stream with no activity in either direction for this long is reset.
    pub stream_idle: Duration,
}

/// A `CONNECT` request's stream as a byte stream, once its handler has answered it with a
/// 2xx: in the request's extensions (which hold only what can be cloned: clones share it).
#[derive(Clone)]
pub struct OnTunnel(Arc<Mutex<Option<oneshot::Receiver<Tunnel>>>>);

impl OnTunnel {
    /// The tunnel; fails if the answer was not a 2xx (or a clone took it).
    pub async fn tunnel(self) -> Result<Tunnel, &'static str> {
        let handed = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        match handed {
            Some(handed) => handed
                .await
                .map_err(|_| "the CONNECT request was not answered 2xx"),
            None => Err("the CONNECT request's tunnel was already taken"),
        }
    }
}

/// Serves HTTP/2 on `io` until the caller closes the connection, or `run` stops it:
/// `handler` is called with each request on this task, and the future it returns is polled
/// on the stream's own.
///
/// The handler's response must carry no connection-specific header (`Connection`,
/// `Transfer-Encoding`, ...), which HTTP/2 forbids: such a response resets its stream.
pub async fn serve<T, H, F>(
    io: T,
    settings: &Settings,
    run: &RunControl,
    mut handler: H,
) -> Result<(), BoxError>
where
    T: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RecvBody>) -> F,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(settings.stream_window)
        .initial_connection_window_size(settings.connection_window)
        .max_header_list_size(settings.max_header_list_size)
        .max_concurrent_streams(settings.max_concurrent_streams)
        // As hyper's server: what a stream may buffer past the caller's window, and how many
        // streams this side may reset for the caller's errors before it closes the connection.
        .max_send_buffer_size(400 * 1024)
        .max_local_error_reset_streams(Some(1024));
    if settings.connect_protocol {
        builder.enable_connect_protocol();
    }
    // A shutdown during the handshake is handled after it, as any other: GOAWAY, and the
    // streams the caller already sent are served (dropping the connection instead would fail
    // them where a GOAWAY tells the caller they can go elsewhere).
    let mut connection = tokio::select! {
        handshake = builder.handshake::<_, Bytes>(io) => handshake?,
        () = run.hard_stop.cancelled() => return Ok(()),
    };
    let mut keepalive = settings
        .keepalive
        .zip(connection.ping_pong())
        .map(|(keepalive, ping_pong)| Pinger::new(keepalive, ping_pong));
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            accepted = connection.accept() => match accepted {
                Some(Ok((request, respond))) => {
                    start_stream(request, respond, &mut handler, settings.stream_idle);
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            () = run.shutdown.cancelled(), if !closing => {
                // GOAWAY: the streams open finish, no new one starts.
                closing = true;
                connection.graceful_shutdown();
            }
            () = run.hard_stop.cancelled() => return Ok(()),
            Err(e) = std::future::poll_fn(|cx| poll_pinger(keepalive.as_mut(), cx)) => {
                return Err(e.into());
            }
        }
    }
}

/// Hands one request to the handler and spawns its stream's task.
fn start_stream<H, F>(
    request: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
    handler: &mut H,
    idle: Duration,
) where
    H: FnMut(Request<RecvBody>) -> F,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    // A stream its caller reset before it was accepted (h2 hands those over too) goes no
    // further: its HEADERS and reset, passed on in a burst, would spend the upstream
    // connection's allowance for such streams (h2 closes a connection after 20), a
    // connection every caller shares.
    if respond
        .poll_reset(&mut Context::from_waker(Waker::noop()))
        .is_ready()
    {
        return;
    }
    let (mut parts, recv) = request.into_parts();
    let (body, tunnel) = if parts.method == Method::CONNECT {
        // Its stream is the tunnel's, not a body's.
        let length = parts.headers.get(header::CONTENT_LENGTH);
        if length
            .is_some_and(|len| len.to_str().ok().and_then(|v| v.parse::<u64>().ok()) != Some(0))
        {
            tracing::debug!("HTTP/2 CONNECT request with a body; reset");
            respond.send_reset(Reason::PROTOCOL_ERROR);
            return;
        }
        let (handed, on_tunnel) = oneshot::channel();
        parts
            .extensions
            .insert(OnTunnel(Arc::new(Mutex::new(Some(on_tunnel)))));
        (RecvBody::empty(), Some((handed, recv)))
    } else {
        (RecvBody::new(&parts.headers, recv), None)
    };
    let answer = handler(Request::from_parts(parts, body));
    let stream = StreamTask {
        state: State::Answering { answer },
        respond,
        tunnel,
    };
    tokio::spawn(StallGuard::new(stream, idle));
}

pin_project_lite::pin_project! {
    /// One stream, from its handler's future to the end of its response.
    struct StreamTask<F> {
        #[pin]
        state: State<F>,
        respond: SendResponse<Bytes>,
        // A `CONNECT` request's hand-over and its stream's incoming half.
        tunnel: Option<(oneshot::Sender<Tunnel>, RecvStream)>,
    }
}

pin_project_lite::pin_project! {
    /// Where a stream stands.
    #[project = StateProj]
    enum State<F> {
        /// Waiting for the handler's response.
        Answering { #[pin] answer: F },
        /// Sending the response's body.
        Body { pipe: BodyPipe },
    }
}

impl<F> Future for StreamTask<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let response = match this.state.as_mut().project() {
                StateProj::Body { pipe } => {
                    if let Err(e) = ready!(Pin::new(pipe).poll(cx)) {
                        tracing::debug!(error = %e, "HTTP/2 response body not sent");
                    }
                    return Poll::Ready(());
                }
                StateProj::Answering { answer } => match answer.poll(cx) {
                    Poll::Ready(Ok(response)) => response,
                    Poll::Ready(Err(never)) => match never {},
                    Poll::Pending => {
                        // Dropping the handler's future cancels what it waits on (the app's
                        // call) when the caller gives up on the stream.
                        if let Poll::Ready(reason) = this.respond.poll_reset(cx) {
                            tracing::debug!(?reason, "HTTP/2 stream reset by the caller");
                            return Poll::Ready(());
                        }
                        return Poll::Pending;
                    }
                },
            };
            match send_head(this.respond, this.tunnel.take(), response) {
                Some(pipe) => this.state.set(State::Body { pipe }),
                None => return Poll::Ready(()),
            }
        }
    }
}

/// Sends a response's head; its body, if it has one, is left to pipe. A 2xx to a `CONNECT`
/// hands the stream over as a tunnel instead.
fn send_head(
    respond: &mut SendResponse<Bytes>,
    tunnel: Option<(oneshot::Sender<Tunnel>, RecvStream)>,
    response: Response<ProxyBody>,
) -> Option<BodyPipe> {
    let (mut parts, body) = response.into_parts();
    // A proxy forwards a response with no date dated (RFC 9110, section 6.6.1).
    if !parts.headers.contains_key(header::DATE) {
        parts
            .headers
            .insert(header::DATE, crate::http1::http_date());
    }
    if let Some((handed, recv)) = tunnel {
        if parts.status.is_success() {
            // The stream stays open as the tunnel: a 2xx to CONNECT has no content, and one
            // that claims some is not a tunnel the caller could use.
            let length = parts.headers.remove(header::CONTENT_LENGTH);
            if !body.is_end_stream() || length.is_some_and(|len| len != "0") {
                tracing::warn!(status = %parts.status, "a 2xx answer to CONNECT with content; stream reset");
                respond.send_reset(Reason::INTERNAL_ERROR);
                return None;
            }
            match respond.send_response(Response::from_parts(parts, ()), false) {
                // The handler's side may have gone: the stream is then reset.
                Ok(send) => drop(handed.send(Tunnel::new(send, recv))),
                Err(e) => refused(respond, &e),
            }
            return None;
        }
    }
    let end = body.is_end_stream();
    if !end && !parts.headers.contains_key(header::CONTENT_LENGTH) {
        if let Some(len) = body.size_hint().exact() {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    match respond.send_response(Response::from_parts(parts, ()), end) {
        Ok(_) if end => None,
        Ok(send) => Some(BodyPipe::new(body, send)),
        Err(e) => {
            refused(respond, &e);
            None
        }
    }
}

/// A response h2 would not send: the caller reset the stream as it was answered, or the
/// response is malformed (a connection-specific header), and then the stream is reset.
fn refused(respond: &mut SendResponse<Bytes>, error: &h2::Error) {
    let noop = &mut Context::from_waker(std::task::Waker::noop());
    if let Poll::Ready(reason) = respond.poll_reset(noop) {
        tracing::debug!(
            ?reason,
            "HTTP/2 stream reset by the caller as it was answered"
        );
        return;
    }
    tracing::warn!(%error, "HTTP/2 response refused; stream reset");
    respond.send_reset(Reason::INTERNAL_ERROR);
}

/// Pings the caller every interval, idle or not, and fails once a ping goes unanswered for
/// the timeout.
struct Pinger {
    keepalive: Keepalive,
    ping_pong: PingPong,
    /// When the next ping is due, or (one in flight) when its pong is overdue.
    timer: Pin<Box<Sleep>>,
    in_flight: bool,
}

impl Pinger {
    fn new(keepalive: Keepalive, ping_pong: PingPong) -> Self {
        Self {
            timer: Box::pin(tokio::time::sleep(keepalive.interval)),
            keepalive,
            ping_pong,
            in_flight: false,
        }
    }

    /// Pending while the caller answers; an error when it did not in time.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        loop {
            if self.in_flight {
                match self.ping_pong.poll_pong(cx) {
                    Poll::Ready(Ok(_)) => {
                        self.in_flight = false;
                        let next = Instant::now() + self.keepalive.interval;
                        self.timer.as_mut().reset(next);
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(format!("keepalive ping: {e}"))),
                    Poll::Pending => {}
                }
                ready!(self.timer.as_mut().poll(cx));
                return Poll::Ready(Err(format!(
                    "no answer to a ping within {:?}",
                    self.keepalive.timeout
                )));
            }
            ready!(self.timer.as_mut().poll(cx));
            if let Err(e) = self.ping_pong.send_ping(Ping::opaque()) {
                return Poll::Ready(Err(format!("keepalive ping: {e}")));
            }
            self.in_flight = true;
            let overdue = Instant::now() + self.keepalive.timeout;
            self.timer.as_mut().reset(overdue);
        }
    }
}

/// The pinger's verdict, or pending forever for a connection without one.
fn poll_pinger(pinger: Option<&mut Pinger>, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
    match pinger {
        Some(pinger) => pinger.poll(cx),
        None => Poll::Pending,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2_client::{self, Sender};
    use crate::http::{boxed, empty};
    use http::{HeaderMap, StatusCode};
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use tokio::task::JoinHandle;
    use tokio_util::sync::CancellationToken;

    fn settings() -> Settings {
        Settings {
            stream_window: 65_535,
            connection_window: 65_535,
            max_header_list_size: 16 * 1024,
            max_concurrent_streams: 100,
            connect_protocol: true,
            keepalive: Some(Keepalive {
                interval: Duration::from_secs(30),
                timeout: Duration::from_secs(10),
            }),
            stream_idle: Duration::from_secs(60),
        }
    }

    /// A server with `settings` and `handler` on one end of an in-memory pipe: the other
    /// end, the server's stop controls, and its task.
    fn server<H, F>(
        settings: Settings,
        handler: H,
    ) -> (DuplexStream, RunControl, JoinHandle<Result<(), BoxError>>)
    where
        H: FnMut(Request<RecvBody>) -> F + Send + 'static,
        F: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
    {
        let (client_io, server_io) = tokio::io::duplex(256 * 1024);
        let run = RunControl::new(CancellationToken::new());
        let control = run.clone();
        let task =
            tokio::spawn(async move { serve(server_io, &settings, &control, handler).await });
        (client_io, run, task)
    }

    /// Warden's own pooled client on `io` (an independent client: the h2 crate's, below).
    async fn client(io: DuplexStream) -> Sender {
        let settings = h2_client::Settings {
            stream_window: 65_535,
            connection_window: 65_535,
            max_header_list_size: 16 * 1024,
            keepalive: None,
        };
        h2_client::handshake(io, &settings, "test").await.unwrap()
    }

    /// The response to `request`, and its tunnel for a `CONNECT` answered 200.
    async fn answer(
        sender: &Sender,
        request: Request<ProxyBody>,
    ) -> Result<(Response<ProxyBody>, Option<Tunnel>), h2::Error> {
        let Ok(responding) = sender.send(request).await else {
            panic!("the connection closed before the request was sent")
        };
        responding.await
    }

    fn ok(body: &'static str) -> Result<Response<ProxyBody>, Infallible> {
        Ok(Response::new(boxed(http_body_util::Full::new(
            Bytes::from_static(body.as_bytes()),
        ))))
    }

    /// An extended CONNECT for a WebSocket (RFC 8441) to `path`.
    fn websocket_connect(path: &str) -> Request<ProxyBody> {
        let mut request = Request::connect(format!("http://peer{path}"))
            .body(empty())
            .unwrap();
        request
            .extensions_mut()
            .insert(h2::ext::Protocol::from("websocket"));
        request
    }

    #[tokio::test]
    async fn a_request_and_its_answer_arrive_whole_with_their_trailers_length_and_date() {
        let (io, _run, _task) = server(settings(), |req: Request<RecvBody>| async move {
            assert_eq!(req.uri().path(), "/echo");
            assert_eq!(req.body().size_hint().exact(), Some(300_000));
            let got = req.into_body().collect().await.unwrap();
            let trailer = got
                .trailers()
                .and_then(|t| t.get("x-sum"))
                .cloned()
                .unwrap();
            let data = got.to_bytes();
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("x-sum", trailer);
            // No Content-Length, an exact size: the server gives the length.
            let body =
                http_body_util::Full::new(data).with_trailers(async move { Some(Ok(trailers)) });
            Ok(Response::new(boxed(body)))
        });
        let sender = client(io).await;
        // Five times the windows each way: both sides hand the windows back as they read.
        let sent = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let mut trailers = HeaderMap::new();
        trailers.insert("x-sum", "42".parse().unwrap());
        let body = http_body_util::Full::new(sent.clone())
            .with_trailers(async move { Some(Ok(trailers)) });
        let request = Request::post("http://peer/echo")
            .header(header::CONTENT_LENGTH, "300000")
            .body(boxed(body))
            .unwrap();
        let (response, tunnel) = tokio::time::timeout(Duration::from_secs(10), async {
            answer(&sender, request).await.unwrap()
        })
        .await
        .expect("the request within the windows");
        assert!(tunnel.is_none());
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[header::CONTENT_LENGTH], "300000");
        let date = response.headers()[header::DATE].to_str().unwrap();
        assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
        let got = tokio::time::timeout(Duration::from_secs(10), response.collect())
            .await
            .expect("the response within the windows")
            .unwrap();
        let trailers = got.trailers().unwrap().clone();
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["x-sum"], "42");
        assert!(got.to_bytes() == sent, "the echo differs");
    }

    #[tokio::test]
    async fn an_answer_with_a_date_keeps_it_and_an_empty_one_ends_with_its_headers() {
        let (io, _run, _task) = server(settings(), |_| async {
            Ok(Response::builder()
                .status(StatusCode::NO_CONTENT)
                .header(header::DATE, "Sun, 06 Nov 1994 08:49:37 GMT")
                .body(empty())
                .unwrap())
        });
        let sender = client(io).await;
        let request = Request::get("http://peer/").body(empty()).unwrap();
        let (response, _) = answer(&sender, request).await.unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            response.headers()[header::DATE],
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
        assert!(response.body().is_end_stream());
    }

    /// Sends `()` when dropped.
    struct Dropped(Option<oneshot::Sender<()>>);

    impl Drop for Dropped {
        fn drop(&mut self) {
            if let Some(tx) = self.0.take() {
                let _ = tx.send(());
            }
        }
    }

    #[tokio::test]
    async fn a_stream_the_caller_resets_drops_its_handler_and_the_connection_goes_on() {
        let (dropped_tx, dropped) = oneshot::channel();
        let mut guard = Some(Dropped(Some(dropped_tx)));
        let (io, _run, _task) = server(settings(), move |req: Request<RecvBody>| {
            let held = (req.uri().path() == "/held").then(|| guard.take());
            async move {
                if held.is_some() {
                    std::future::pending::<()>().await;
                }
                ok("next")
            }
        });
        // The h2 crate's client, which can reset a stream itself.
        let (send, connection) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let mut send = send.ready().await.unwrap();
        let held = Request::get("http://peer/held").body(()).unwrap();
        let (response, mut stream) = send.send_request(held, false).unwrap();
        // Once the server holds it (its handler called), the caller gives up.
        let mut send = send.ready().await.unwrap();
        let next = Request::get("http://peer/next").body(()).unwrap();
        let (next, _) = send.send_request(next, true).unwrap();
        let next = next.await.unwrap();
        assert_eq!(next.status(), StatusCode::OK);
        stream.send_reset(Reason::CANCEL);
        tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .expect("the handler's future dropped at the reset")
            .unwrap();
        drop(response);
        let again = Request::get("http://peer/again").body(()).unwrap();
        let mut send = send.ready().await.unwrap();
        let (again, _) = send.send_request(again, true).unwrap();
        let again = again.await.unwrap();
        let body = again.into_body().data().await.unwrap().unwrap();
        assert_eq!(body, "next");
    }

    /// A body that sends one chunk, then waits forever, holding `Dropped`.
    struct Endless(Option<Bytes>, #[allow(dead_code)] Dropped);

    impl Body for Endless {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
            match self.0.take() {
                Some(chunk) => Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk)))),
                None => Poll::Pending,
            }
        }
    }

    #[tokio::test]
    async fn a_response_body_the_caller_resets_is_dropped() {
        let (dropped_tx, dropped) = oneshot::channel();
        let mut guard = Some(Dropped(Some(dropped_tx)));
        let (io, _run, _task) = server(settings(), move |_| {
            let body = Endless(Some(Bytes::from_static(b"first")), guard.take().unwrap());
            async move { Ok(Response::new(boxed(body))) }
        });
        let (send, connection) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let mut send = send.ready().await.unwrap();
        let request = Request::get("http://peer/endless").body(()).unwrap();
        let (response, mut stream) = send.send_request(request, true).unwrap();
        let mut body = response.await.unwrap().into_body();
        assert_eq!(body.data().await.unwrap().unwrap(), "first");
        // The app's body has nothing more for now; the caller gives up on it.
        stream.send_reset(Reason::CANCEL);
        tokio::time::timeout(Duration::from_secs(10), dropped)
            .await
            .expect("the body dropped at the reset")
            .unwrap();
    }

    #[tokio::test]
    async fn a_2xx_to_an_extended_connect_is_a_tunnel_and_any_other_answer_is_not() {
        let (refused_tx, refused) = oneshot::channel();
        let mut refused_tx = Some(refused_tx);
        let (io, _run, _task) = server(settings(), move |mut req: Request<RecvBody>| {
            let on_tunnel = req.extensions_mut().remove::<OnTunnel>().unwrap();
            assert!(
                req.body().is_end_stream(),
                "a CONNECT's stream is not a body"
            );
            let refuse = req.uri().path() == "/refused";
            if req.uri().path() == "/content" {
                // A 2xx with content is no tunnel: the stream is reset before any answer.
                return Box::pin(async { ok("content") })
                    as Pin<Box<dyn Future<Output = _> + Send>>;
            }
            if refuse {
                let tx = refused_tx.take().unwrap();
                tokio::spawn(async move {
                    let _ = tx.send(on_tunnel.tunnel().await.is_err());
                });
            } else {
                tokio::spawn(async move {
                    let mut io = on_tunnel.tunnel().await.unwrap();
                    let mut buf = Vec::new();
                    io.read_to_end(&mut buf).await.unwrap();
                    io.write_all(&buf).await.unwrap();
                    io.shutdown().await.unwrap();
                });
            }
            Box::pin(async move {
                if refuse {
                    return Ok(Response::builder()
                        .status(StatusCode::FORBIDDEN)
                        .body(boxed(http_body_util::Full::new(Bytes::from_static(b"no"))))
                        .unwrap());
                }
                // A length of 0 on a 2xx to CONNECT is dropped: the stream is the tunnel's.
                Ok(Response::builder()
                    .header(header::CONTENT_LENGTH, "0")
                    .body(empty())
                    .unwrap())
            })
        });
        let sender = client(io).await;

        let (response, tunnel) = answer(&sender, websocket_connect("/chat")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get(header::CONTENT_LENGTH).is_none());
        let mut tunnel = tunnel.expect("a 200 to CONNECT opens a tunnel");
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

        let (response, tunnel) = answer(&sender, websocket_connect("/refused"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(tunnel.is_none());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "no");
        assert!(refused.await.unwrap(), "no tunnel for a 403");

        let e = answer(&sender, websocket_connect("/content"))
            .await
            .err()
            .expect("a reset");
        assert_eq!(e.reason(), Some(Reason::INTERNAL_ERROR), "{e}");
    }

    #[tokio::test]
    async fn an_answer_http2_forbids_resets_its_stream_only() {
        let (io, _run, _task) = server(settings(), |req: Request<RecvBody>| {
            let bad = req.uri().path() == "/bad";
            async move {
                let mut response = ok("fine")?;
                if bad {
                    response
                        .headers_mut()
                        .insert(header::CONNECTION, "close".parse().unwrap());
                }
                Ok(response)
            }
        });
        let sender = client(io).await;
        let bad = Request::get("http://peer/bad").body(empty()).unwrap();
        let e = answer(&sender, bad).await.err().expect("a reset");
        assert_eq!(e.reason(), Some(Reason::INTERNAL_ERROR), "{e}");
        let fine = Request::get("http://peer/fine").body(empty()).unwrap();
        let (response, _) = answer(&sender, fine).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn streams_reset_before_they_are_accepted_never_reach_the_handler() {
        let paths = Arc::new(Mutex::new(Vec::new()));
        let seen = paths.clone();
        let (io, _run, _task) = server(settings(), move |request: Request<RecvBody>| {
            seen.lock().unwrap().push(request.uri().path().to_string());
            async { ok("kept") }
        });
        // A raw client: each stream's HEADERS and RST_STREAM go out in one write, as a
        // rapid-reset burst does (fewer than the 20 h2 itself allows before it closes the
        // connection).
        let (mut send, connection) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(connection);
        for _ in 0..15 {
            let request = Request::get("http://peer/reset").body(()).unwrap();
            let (response, mut stream) = send.send_request(request, false).unwrap();
            stream.send_reset(Reason::CANCEL);
            drop(response);
        }
        let request = Request::get("http://peer/kept").body(()).unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("answered")
            .expect("the connection survived the burst");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            *paths.lock().unwrap(),
            ["/kept"],
            "only the stream not reset"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_idle_for_the_timeout_is_reset() {
        let settings = Settings {
            stream_idle: Duration::from_secs(5),
            ..settings()
        };
        let (io, _run, _task) = server(settings, |_| async {
            std::future::pending::<()>().await;
            ok("never")
        });
        let sender = client(io).await;
        let started = Instant::now();
        let request = Request::get("http://peer/").body(empty()).unwrap();
        // The paused clock jumps ahead when all is idle: a guard that never fires fails here.
        let answered = tokio::time::timeout(Duration::from_secs(3600), answer(&sender, request));
        let e = answered
            .await
            .expect("reset within the hour")
            .err()
            .expect("a reset");
        assert!(e.is_reset(), "{e}");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn at_shutdown_the_caller_is_told_to_go_away_and_open_streams_finish() {
        let (release_tx, release) = oneshot::channel::<()>();
        let (called_tx, called) = oneshot::channel::<()>();
        let mut first = Some((called_tx, release));
        let (io, run, task) = server(settings(), move |_| {
            let first = first.take();
            async move {
                if let Some((called, release)) = first {
                    let _ = called.send(());
                    let _ = release.await;
                }
                ok("done")
            }
        });
        let sender = client(io).await;
        let request = Request::get("http://peer/first").body(empty()).unwrap();
        let Ok(responding) = sender.send(request).await else {
            panic!("not sent")
        };
        let responding = tokio::spawn(responding);
        // The server holds the request, then is told to stop: GOAWAY.
        called.await.unwrap();
        run.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), async {
            while sender.is_open() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("a GOAWAY");
        // The caller, told to go away, opens no new stream here (the server would refuse one
        // above the GOAWAY's last stream all the same: h2's own behaviour).
        let late = Request::get("http://peer/late").body(empty()).unwrap();
        assert!(sender.send(late).await.is_err(), "refused after GOAWAY");
        if task.is_finished() {
            panic!("ended early: {:?}", task.await);
        }
        release_tx.send(()).unwrap();
        let (response, _) = responding.await.unwrap().unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "done");
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("the connection closes once its streams are done")
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_connection_that_arrived_before_shutdown_is_served_then_told_to_go_away() {
        // Sixteen times: a server that dropped such a connection would still serve it when
        // its handshake happened to be polled before the shutdown (the two are both ready).
        for _ in 0..16 {
            let (client_io, server_io) = tokio::io::duplex(256 * 1024);
            // The caller's preface and first request are in the pipe before the server reads.
            let (send, connection) = h2::client::handshake(client_io).await.unwrap();
            let mut send = send.ready().await.unwrap();
            let request = Request::get("http://peer/").body(()).unwrap();
            let (response, _) = send.send_request(request, true).unwrap();
            let connection = tokio::spawn(connection);
            tokio::task::yield_now().await;
            // The proxy is told to stop before its handshake.
            let run = RunControl::new(CancellationToken::new());
            run.shutdown.cancel();
            let control = run.clone();
            let task = tokio::spawn(async move {
                serve(server_io, &settings(), &control, |_| async { ok("served") }).await
            });
            let response = response.await.expect("served, not dropped");
            let body = response.into_body().data().await.unwrap().unwrap();
            assert_eq!(body, "served");
            drop(send);
            let ended = tokio::time::timeout(Duration::from_secs(10), connection)
                .await
                .expect("the connection closes")
                .unwrap();
            assert!(
                ended.is_ok(),
                "a GOAWAY, not a dropped connection: {ended:?}"
            );
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_caller_that_answers_pings_is_kept_and_one_that_does_not_is_dropped() {
        // Answers: the h2 crate answers pings while its connection runs.
        let (io, _run, task) = server(settings(), |_| async { ok("pong") });
        let sender = client(io).await;
        tokio::time::sleep(Duration::from_secs(200)).await;
        assert!(!task.is_finished());
        let request = Request::get("http://peer/").body(empty()).unwrap();
        assert_eq!(
            answer(&sender, request).await.unwrap().0.status(),
            StatusCode::OK
        );

        // Says hello, then reads nothing and answers nothing.
        let (mut io, _run, task) = server(settings(), |_| async { ok("pong") });
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
            .await
            .unwrap();
        let started = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(3600), task)
            .await
            .expect("dropped within the hour")
            .unwrap();
        assert!(ended.is_err(), "a missed ping is an error");
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(40),
            "interval + timeout"
        );
        drop(io);
    }
}
