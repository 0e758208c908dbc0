//! Request bodies read to their end after an early response, instead of reset.
//!
//! An app may answer before it has read the whole request (a gRPC error from an interceptor,
//! a 413, a static reply). hyper then drops the request body and resets the HTTP/2 stream,
//! but the caller's DATA frames already on the wire still arrive. h2 remembers only ten
//! recently reset streams; a frame for a stream it no longer remembers is a protocol error
//! it answers with RST_STREAM, and it counts those: at 1,024 on one connection it closes the
//! connection with GOAWAY (ENHANCE_YOUR_CALM, "too_many_internal_resets"). Between two
//! proxies that connection is the pooled one every call to the destination shares, so a
//! busy app that answers early would fail every in-flight call now and then. Read to its end
//! (within bounds) the stream closes normally, and nothing is counted.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};

/// The most a dropped body is read for: the caller's stream window, all it can have sent
/// without our say (`outbound::pool::CONNECTION_WINDOW / 4`).
pub const DRAIN_MAX_BYTES: usize = 1024 * 1024;

/// How long a dropped body is read for, waiting for its end.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A request body that, dropped before its end, is read to its end by a task of its own
/// (at most [`DRAIN_MAX_BYTES`] and [`DRAIN_TIMEOUT`]; then it is dropped, as before).
pub struct DrainOnDrop<B: Body + Send + Unpin + 'static> {
    body: Option<B>,
}

impl<B: Body + Send + Unpin + 'static> DrainOnDrop<B> {
    /// Wraps `body`.
    pub fn new(body: B) -> Self {
        Self { body: Some(body) }
    }
}

impl<B: Body + Send + Unpin + 'static> Body for DrainOnDrop<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match self.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B: Body + Send + Unpin + 'static> Drop for DrainOnDrop<B> {
    fn drop(&mut self) {
        let Some(body) = self.body.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        // Dropped outside the runtime (at shutdown): nothing to keep the stream for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(drain(body, DRAIN_MAX_BYTES, DRAIN_TIMEOUT));
        }
    }
}

/// Reads `body` to its end; gives up (dropping it) after `max_bytes` or `timeout`.
async fn drain<B: Body + Unpin>(mut body: B, max_bytes: usize, timeout: Duration) {
    let mut left = max_bytes;
    let _ = tokio::time::timeout(timeout, async {
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, Buf::remaining);
            if len > left {
                return;
            }
            left -= len;
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::StreamBody;
    use std::convert::Infallible;
    use tokio::sync::mpsc;

    type Chunk = Result<Frame<Bytes>, Infallible>;

    /// A body fed through a channel; `closed()` on the sender tells when it was dropped.
    fn channel_body() -> (
        mpsc::Sender<Chunk>,
        DrainOnDrop<StreamBody<tokio_stream_shim::Receiver>>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        (
            tx,
            DrainOnDrop::new(StreamBody::new(tokio_stream_shim::Receiver(rx))),
        )
    }

    /// `mpsc::Receiver` as a `Stream` (tokio-stream is not a dependency).
    mod tokio_stream_shim {
        use super::Chunk;
        use std::pin::Pin;
        use std::task::{Context, Poll};

        pub struct Receiver(pub tokio::sync::mpsc::Receiver<Chunk>);

        impl futures_util::Stream for Receiver {
            type Item = Chunk;
            fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
                self.0.poll_recv(cx)
            }
        }
    }

    fn data(n: usize) -> Chunk {
        Ok(Frame::data(Bytes::from(vec![b'x'; n])))
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_read_to_its_end() {
        let (tx, body) = channel_body();
        tx.send(data(10)).await.unwrap();
        drop(body);
        // The caller's remaining frames are all taken (five times the channel's room): a
        // body simply dropped would fail the sends, one not read would block them.
        let sending = async {
            for _ in 0..20 {
                tx.send(data(100)).await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(10), sending)
            .await
            .expect("the dropped body is read on");
    }

    #[tokio::test(start_paused = true)]
    async fn draining_stops_at_the_byte_limit() {
        let (tx, rx) = mpsc::channel(64);
        let body = StreamBody::new(tokio_stream_shim::Receiver(rx));
        for _ in 0..4 {
            tx.send(data(400)).await.unwrap();
        }
        let started = tokio::time::Instant::now();
        drain(body, 1000, Duration::from_secs(60)).await;
        // Two frames fit in 1,000 bytes, the third did not: the body was dropped at once
        // (a drain past the limit would have read all four, then waited out the timeout).
        assert!(tx.is_closed());
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn draining_stops_after_the_timeout() {
        let (tx, rx) = mpsc::channel(4);
        let body = StreamBody::new(tokio_stream_shim::Receiver(rx));
        tx.send(data(10)).await.unwrap();
        // Nothing more comes: the (paused) clock runs to the timeout and the body is dropped.
        drain(body, DRAIN_MAX_BYTES, Duration::from_secs(5)).await;
        assert!(tx.is_closed());
    }

    #[tokio::test]
    async fn a_finished_or_never_started_body_spawns_nothing() {
        let tasks = || {
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
        };
        let before = tasks();
        let body = DrainOnDrop::new(http_body_util::Empty::<Bytes>::new());
        assert!(body.is_end_stream());
        drop(body);
        assert_eq!(tasks(), before, "no drain task for a body at its end");
        // One not at its end gets one (what the count above would have seen).
        let (_tx, body) = channel_body();
        drop(body);
        assert_eq!(tasks(), before + 1);
        // Outside a runtime nothing is spawned either (no panic).
        let (tx, body) = channel_body();
        std::thread::spawn(move || drop(body)).join().unwrap();
        assert!(tx.is_closed());
    }
}
