//! What the HTTP/2 client and server share: a body piped into a stream within its flow
//! control, a stream's incoming data as a body, and an extended `CONNECT` stream as a byte
//! stream.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h2::{Reason, RecvStream, SendStream};
use http::{header, HeaderMap};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
// Tokio's clock, so tests with paused time see the body's progress.
use tokio::time::Instant;

use crate::http::{BoxError, ProxyBody};

/// How often at most a request body piping by a task of its own tells its exchange it
/// moves: often enough for any idle timeout a person would set, seldom enough to cost
/// nothing.
const ACTIVITY_EVERY: Duration = Duration::from_millis(100);

/// Sends a message's body on its stream, within the stream's flow control.
pub(crate) struct BodyPipe {
    body: ProxyBody,
    stream: SendStream<Bytes>,
    /// A chunk waiting for the peer's window, and whether it is the last.
    held: Option<(Bytes, bool)>,
}

impl BodyPipe {
    /// Pipes `body` into `stream`.
    pub(crate) fn new(body: ProxyBody, stream: SendStream<Bytes>) -> Self {
        Self {
            body,
            stream,
            held: None,
        }
    }

    /// Pipes the body until its end, or resets the stream when `cancelled` fires. Its
    /// progress wakes `exchange` (the task of the exchange it belongs to, under that
    /// stream's idle guard, `stall`) at most every [`ACTIVITY_EVERY`]: a request still
    /// streaming is activity, even while its response is quiet.
    pub(crate) async fn unless_cancelled(
        mut self,
        cancelled: oneshot::Receiver<()>,
        exchange: Waker,
    ) {
        let mut told: Option<Instant> = None;
        let piped = std::future::poll_fn(|cx| {
            // This task is woken by nothing but the body's data, the stream's window or a
            // reset: each poll is progress.
            let result = Pin::new(&mut self).poll(cx);
            if told.is_none_or(|at| at.elapsed() >= ACTIVITY_EVERY) {
                exchange.wake_by_ref();
                told = Some(Instant::now());
            }
            result
        });
        tokio::select! {
            result = piped => if let Err(e) = result {
                tracing::debug!(error = %e, "request body not sent");
            },
            Ok(()) = cancelled => self.stream.send_reset(Reason::CANCEL),
        }
    }
}

impl Future for BodyPipe {
    type Output = Result<(), BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            if let Some((data, last)) = this.held.take() {
                while this.stream.capacity() == 0 {
                    match this.stream.poll_capacity(cx) {
                        Poll::Pending => {
                            this.held = Some((data, last));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {}
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                        Poll::Ready(None) => {
                            return Poll::Ready(Err("the stream closed before its body".into()))
                        }
                    }
                }
                this.stream.send_data(data, last)?;
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The next frame is polled before any window is claimed: a claim held while
            // the body has nothing to send would starve other streams (hyper#4003).
            let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) else {
                // Registers for the peer's reset while the body has nothing to send (a reset
                // while the stream waits for a window ends `poll_capacity`).
                if let Poll::Ready(reason) = this.stream.poll_reset(cx)? {
                    return Poll::Ready(Err(h2::Error::from(reason).into()));
                }
                return Poll::Pending;
            };
            match frame {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        let last = this.body.is_end_stream();
                        if data.is_empty() {
                            if last {
                                this.stream.send_data(data, true)?;
                                return Poll::Ready(Ok(()));
                            }
                            continue;
                        }
                        // A minimal claim: h2 raises it to what is buffered when sent.
                        this.stream.reserve_capacity(1);
                        this.held = Some((data, last));
                    }
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            this.stream.reserve_capacity(0);
                            this.stream.send_trailers(trailers)?;
                            return Poll::Ready(Ok(()));
                        }
                    }
                },
                Some(Err(e)) => {
                    this.stream.send_reset(Reason::INTERNAL_ERROR);
                    return Poll::Ready(Err(e));
                }
                None => {
                    this.stream.send_data(Bytes::new(), true)?;
                    return Poll::Ready(Ok(()));
                }
            }
        }
    }
}

/// A message's body as it arrives on its stream; what is read is handed back to the peer's
/// window at once (the reader is the one that waits).
pub struct RecvBody {
    /// None: a body known empty, whatever the stream carries (a `CONNECT` request's).
    recv: Option<RecvStream>,
    data_done: bool,
    /// What `Content-Length` says is still to come: an exact size, so an HTTP/1.1 app gets
    /// the response framed by its length rather than chunked.
    remaining: Option<u64>,
    /// Told if the body is dropped before its end: the request still piping on the same
    /// stream is then given up too (see [`RecvBody::cancelling`]).
    on_abandon: Option<oneshot::Sender<()>>,
}

impl RecvBody {
    /// The body `recv` carries, of the length `headers` give.
    pub(crate) fn new(headers: &HeaderMap, recv: RecvStream) -> Self {
        let remaining = if recv.is_end_stream() {
            Some(0)
        } else {
            headers
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        };
        Self {
            recv: Some(recv),
            data_done: false,
            remaining,
            on_abandon: None,
        }
    }

    /// A response body whose request still pipes on the same stream, by a task of its own:
    /// a response given up before its end (its caller reset it, or it went idle) cancels
    /// that task through `cancel`, which resets the stream; a response that ended leaves
    /// the request to finish (a full-duplex exchange).
    pub(crate) fn cancelling(mut self, cancel: oneshot::Sender<()>) -> Self {
        self.on_abandon = Some(cancel);
        self
    }

    /// A body with nothing in it.
    pub(crate) fn empty() -> Self {
        Self {
            recv: None,
            data_done: true,
            remaining: Some(0),
            on_abandon: None,
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        if let Some(cancel) = self.on_abandon.take() {
            if !self.is_end_stream() {
                let _ = cancel.send(());
            }
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = &mut *self;
        let Some(recv) = &mut this.recv else {
            return Poll::Ready(None);
        };
        if !this.data_done {
            match ready!(recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => this.data_done = true,
            }
        }
        match ready!(recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.as_ref().is_none_or(RecvStream::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

/// The two directions of an extended `CONNECT` stream (RFC 8441) as one byte stream.
pub struct Tunnel {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received, not yet read.
    unread: Bytes,
}

impl Tunnel {
    /// The stream whose halves are `send` and `recv`.
    pub(crate) fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            unread: Bytes::new(),
        }
    }
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.unread.is_empty() {
            match ready!(this.recv.poll_data(cx)) {
                None => return Poll::Ready(Ok(())),
                Some(Ok(data)) => this.unread = data,
                Some(Err(e)) => {
                    return Poll::Ready(match e.reason() {
                        // The peer closed its side, or cancelled: the end of the stream.
                        Some(Reason::NO_ERROR | Reason::CANCEL) => Ok(()),
                        _ => Err(h2_io_error(e)),
                    });
                }
            }
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        let _ = this.recv.flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.send;
        send.reserve_capacity(buf.len());
        loop {
            if send.capacity() > 0 {
                let n = send.capacity().min(buf.len());
                send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_io_error)?;
                return Poll::Ready(Ok(n));
            }
            if let Poll::Ready(reason) = send.poll_reset(cx).map_err(h2_io_error)? {
                return Poll::Ready(Err(h2_io_error(h2::Error::from(reason))));
            }
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(h2_io_error(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // h2 writes out what it has as soon as its connection task runs.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.send.reserve_capacity(0);
        Poll::Ready(self.send.send_data(Bytes::new(), true).map_err(h2_io_error))
    }
}

/// `e` as an I/O error (the I/O error itself when it is one).
pub(crate) fn h2_io_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        e.into_io()
            .unwrap_or_else(|| io::ErrorKind::BrokenPipe.into())
    } else {
        io::Error::other(e)
    }
}
