//! The app's HTTP/1.1 requests without a body, served on the connection's own task: the
//! head parsed with httparse into one shared buffer, the request handed to the handler, the
//! response written back, the next request read. hyper's server ran a dispatcher around each
//! request and cost ~8,500 instructions a request (`benches/README.md`, "2026-11-28
//! (midday)").
//!
//! Only requests whose framing is beyond doubt take this path: HTTP/1.1, complete heads
//! httparse accepts with hyper's own settings, no `Transfer-Encoding`, no `Content-Length`
//! but 0, no `Upgrade`, no `Expect`, not CONNECT. Such a request ends where its head ends
//! (RFC 9112, 6.3), as hyper would read it too. Anything else (a request with a body, an
//! upgrade, HTTP/1.0, a malformed or oversized head) hands the connection, with every byte
//! already read, to hyper's server for the rest of its life ([`Served::Handover`]), so the
//! two can never disagree about where one request ends and the next begins.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::task::{ready, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Frame};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::http::ProxyBody;
use crate::http1::{field, field_offsets, put_field, Lengths, MAX_HEADERS};
use crate::io::PrefixedIo;

/// The least room a read is given (the first read of a head goes through a stack buffer of
/// this size).
const MIN_READ: usize = 4 * 1024;
/// Body data up to this size is copied behind the head (or the chunk line) and written with
/// it in one system call; larger data is written on its own.
const COPY_AT: usize = 16 * 1024;
/// Room for a response head, made when one is written.
const HEAD_ROOM: usize = 512;

/// What bounds a request head.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The most bytes a head may have; a longer one goes to hyper, which answers 431 (above
    /// its floor of 8 KiB).
    pub max_head: usize,
    /// How long the next request's head may take to arrive, idle time included (hyper's
    /// `header_read_timeout`).
    pub head_within: Duration,
}

/// How the fast path left a connection.
pub enum Served<I> {
    /// Closed: the app closed it, asked to, idled out, or the proxy is shutting down.
    Closed,
    /// A request this path does not serve: the connection with its unread bytes, for hyper.
    Handover(PrefixedIo<I>),
}

/// Serves the app's connection `io` until it closes or a request needs hyper. `shutdown`
/// closes it when idle, and after the response in progress (`Connection: close`).
pub async fn serve<I, H, F>(
    io: I,
    limits: &Limits,
    shutdown: &CancellationToken,
    mut handler: H,
) -> io::Result<Served<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<Empty<Bytes>>) -> F,
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    let mut conn = Conn {
        io,
        buf: BytesMut::new(),
        out: BytesMut::new(),
    };
    let mut stop = pin!(shutdown.cancelled());
    // Moved on only when it fires early: a connection costs one timer registration per
    // `head_within`, not one per request.
    let mut timer = pin!(tokio::time::sleep(limits.head_within));
    loop {
        // Saturated, as tokio's own timers are, for an idle timeout of years.
        let deadline = Instant::now()
            .checked_add(limits.head_within)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365));
        // Where a partial head was last looked at: it is parsed again only once a blank line
        // may have arrived (so a head sent a byte at a time costs linear time, not square).
        let mut partial_at = None;
        let (request, asked_close) = loop {
            let may_be_complete = partial_at.is_none_or(|at| has_blank_line(&conn.buf, at));
            if may_be_complete || conn.buf.len() >= limits.max_head {
                match parse_request(&mut conn.buf, limits.max_head) {
                    Next::Request(request, close) => break (request, close),
                    Next::Hyper => {
                        return Ok(Served::Handover(PrefixedIo::new(
                            conn.buf.freeze(),
                            conn.io,
                        )))
                    }
                    Next::Partial => {}
                }
            }
            partial_at = (!conn.buf.is_empty()).then_some(conn.buf.len());
            let idle = conn.buf.is_empty();
            let waited = poll_fn(|cx| {
                if let Poll::Ready(read) = poll_read_some(&mut conn.io, &mut conn.buf, cx) {
                    return Poll::Ready(Some(read));
                }
                // A head on its way is read to its end, as hyper does.
                if idle && stop.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                while timer.as_mut().poll(cx).is_ready() {
                    if Instant::now() >= deadline {
                        return Poll::Ready(None);
                    }
                    timer.as_mut().reset(deadline);
                }
                Poll::Pending
            })
            .await;
            match waited {
                Some(Ok(0)) | None => return Ok(Served::Closed),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
        };
        let head_request = request.method() == Method::HEAD;
        // An app that hangs up cancels its request (and the stream to the peer), as with
        // hyper.
        let Some(Ok(response)) = conn.unless_closed(handler(request)).await? else {
            return Ok(Served::Closed);
        };
        let close = asked_close || shutdown.is_cancelled();
        let reusable = conn.respond(response, head_request, close).await?;
        if close || !reusable {
            // Shut down, not just dropped: the app reads to the end of what was written.
            let _ = conn.io.shutdown().await;
            return Ok(Served::Closed);
        }
        // An idle connection holds no buffer (most connections idle far longer than they
        // work): two allocations a request, for 4 KiB less per idle connection.
        if conn.buf.is_empty() {
            conn.buf = BytesMut::new();
        }
        conn.out = BytesMut::new();
    }
}

/// Reads what the app sent into `buf`. Into an empty `buf` through the stack, so that the
/// buffer is made (the size of what came) only once bytes are there, and an idle connection
/// holds none.
fn poll_read_some<I: AsyncRead + Unpin>(
    io: &mut I,
    buf: &mut BytesMut,
    cx: &mut std::task::Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.is_empty() {
        let mut stack = [MaybeUninit::<u8>::uninit(); MIN_READ];
        let mut read = tokio::io::ReadBuf::uninit(&mut stack);
        ready!(Pin::new(io).poll_read(cx, &mut read))?;
        buf.extend_from_slice(read.filled());
        return Poll::Ready(Ok(read.filled().len()));
    }
    if buf.capacity() - buf.len() < MIN_READ {
        buf.reserve(MIN_READ);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Whether `buf` may hold the blank line that ends a head, looking from a little before
/// `from` (a line end may straddle it).
fn has_blank_line(buf: &[u8], from: usize) -> bool {
    let from = from.saturating_sub(3).min(buf.len());
    memchr::memchr_iter(b'\n', &buf[from..]).any(|at| {
        let rest = &buf[from + at + 1..];
        rest.first() == Some(&b'\n') || rest.starts_with(b"\r\n")
    })
}

/// The app's connection, what was read from it, and what is being written to it.
struct Conn<I> {
    io: I,
    buf: BytesMut,
    out: BytesMut,
}

/// What the start of the read buffer holds.
// Returned by value once a request and never stored: boxing the request would cost an
// allocation a request to save a move.
#[allow(clippy::large_enum_variant)]
enum Next {
    /// A request this path serves, and whether it asked to close the connection.
    Request(Request<Empty<Bytes>>, bool),
    /// The start of a head that is within the limit so far.
    Partial,
    /// Anything else, left in the buffer for hyper.
    Hyper,
}

/// Takes the request at the start of `buf` if this path serves it (see the module's doc).
fn parse_request(buf: &mut BytesMut, max_head: usize) -> Next {
    // Empty lines before a request are ignored (RFC 9112, 2.2), as httparse and hyper do.
    // Dropped here, so the method starts the buffer and a run of them is looked at once.
    skip_empty_lines(buf);
    let (len, method_len, path, at, close) = {
        let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut request,
            buf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= max_head => len,
            Ok(httparse::Status::Partial) if buf.len() < max_head => return Next::Partial,
            _ => return Next::Hyper,
        };
        if request.version != Some(1) || request.method == Some("CONNECT") {
            return Next::Hyper;
        }
        let (mut close, mut length) = (false, false);
        for field in request.headers.iter() {
            let name = field.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                // A repeated length is hyper's to fold into one, as it does for the body
                // it reads.
                if field.value != b"0" || std::mem::replace(&mut length, true) {
                    return Next::Hyper;
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                || name.eq_ignore_ascii_case(b"upgrade")
                || name.eq_ignore_ascii_case(b"expect")
            {
                return Next::Hyper;
            } else if name.eq_ignore_ascii_case(b"connection") {
                close |= field
                    .value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
            }
        }
        let Some(path) = request.path else {
            return Next::Hyper;
        };
        let start = path.as_ptr() as usize - buf.as_ptr() as usize;
        let at = field_offsets(buf, request.headers);
        let method_len = request.method.map_or(0, str::len);
        (len, method_len, start..start + path.len(), at, close)
    };
    let head = buf.split_to(len).freeze();
    match build_request(&head, method_len, path, at) {
        Some(request) => Next::Request(request, close),
        None => {
            // hyper answers it (400); it gets the bytes back as they came.
            let mut whole = BytesMut::with_capacity(head.len() + buf.len());
            whole.extend_from_slice(&head);
            whole.extend_from_slice(buf);
            *buf = whole;
            Next::Hyper
        }
    }
}

/// Drops the empty lines (`CRLF` or `LF`) at the start of `buf`; a `CR` not yet followed by
/// its `LF` stays.
fn skip_empty_lines(buf: &mut BytesMut) {
    let mut at = 0;
    loop {
        match buf[at..] {
            [b'\n', ..] => at += 1,
            [b'\r', b'\n', ..] => at += 2,
            _ => break,
        }
    }
    buf.advance(at);
}

/// The request in `head`; `None` if `http` refuses its method, target or a field name.
fn build_request(
    head: &Bytes,
    method_end: usize,
    path: std::ops::Range<usize>,
    at: Vec<crate::http1::FieldAt>,
) -> Option<Request<Empty<Bytes>>> {
    let method = Method::from_bytes(&head[..method_end]).ok()?;
    let uri = Uri::from_maybe_shared(head.slice(path)).ok()?;
    let mut headers = HeaderMap::with_capacity(at.len());
    for at in at {
        let (name, value) = field(head, at)?;
        headers.append(name, value);
    }
    let mut request = Request::new(Empty::new());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = Version::HTTP_11;
    *request.headers_mut() = headers;
    Some(request)
}

/// How a response's body is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body: a response to HEAD, a 204 or a 304.
    Bodiless,
    /// `Content-Length`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Writes the status line and fields of a response to `out`, with this hop's framing
/// (`ended`: the body is known to be empty; `exact`: its size, if known) and `Connection:
/// close` if the connection closes after it; `Err` names what makes it unsendable.
fn encode_head(
    out: &mut BytesMut,
    status: StatusCode,
    headers: &HeaderMap,
    (ended, exact): (bool, Option<u64>),
    head_request: bool,
    close: bool,
) -> Result<Framing, &'static str> {
    if status.is_informational() {
        return Err("an informational status as the final response");
    }
    if status == StatusCode::OK {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.extend_from_slice(b" ");
        // A reason is written whatever the code: some parsers insist on one.
        out.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // One pass, with no lookups by name: this runs on every response.
    let (mut lengths, mut date) = (Lengths::default(), false);
    let mut declared_field = None;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            lengths.add(value);
            declared_field.get_or_insert(value);
            continue;
        }
        // The framing and the connection's fate are this hop's own.
        if name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        date |= name == header::DATE;
        put_field(out, name, value);
    }
    let declared = lengths.get()?;
    let no_body = head_request || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body || status == StatusCode::NO_CONTENT {
        // A HEAD or 304 response's length is the resource's, passed on as it came.
        if let (true, Some(n)) = (no_body && status != StatusCode::NO_CONTENT, declared) {
            put_length(out, n, declared_field.filter(|_| lengths.seen == 1));
        }
        Framing::Bodiless
    } else if let Some(n) = declared.or(if ended { Some(0) } else { exact }) {
        put_length(out, n, declared_field.filter(|_| lengths.seen == 1));
        Framing::Length(n)
    } else {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Framing::Chunked
    };
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    if !date {
        put_field(out, &header::DATE, &crate::http1::http_date());
    }
    out.extend_from_slice(b"\r\n");
    Ok(framing)
}

/// Writes `Content-Length: n`, as the response's own field if it had exactly one.
fn put_length(out: &mut BytesMut, n: u64, field: Option<&http::HeaderValue>) {
    match field {
        Some(value) => put_field(out, &header::CONTENT_LENGTH, value),
        None => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> Conn<I> {
    /// Writes `response` (through `out`, empty before and after); `Ok(false)` if its body
    /// ended short of its length, so the connection must close.
    async fn respond(
        &mut self,
        response: Response<ProxyBody>,
        head_request: bool,
        close: bool,
    ) -> io::Result<bool> {
        let (parts, mut body) = response.into_parts();
        self.out.reserve(HEAD_ROOM);
        let hint = (body.is_end_stream(), body.size_hint().exact());
        let head = encode_head(
            &mut self.out,
            parts.status,
            &parts.headers,
            hint,
            head_request,
            close,
        );
        let framing = match head {
            Ok(framing) => framing,
            Err(why) => {
                tracing::warn!(
                    status = parts.status.as_u16(),
                    error = why,
                    "the peer's response cannot be sent over HTTP/1.1; answering 502"
                );
                self.out.clear();
                self.out.extend_from_slice(
                    b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                self.write_out().await?;
                return Ok(false);
            }
        };
        let mut left = match framing {
            Framing::Bodiless => {
                self.write_out().await?;
                return Ok(true);
            }
            Framing::Length(n) => Some(n),
            Framing::Chunked => None,
        };
        loop {
            // Whatever the body has ready now goes out with the head, in one write.
            let frame = match poll_now(&mut body).await {
                Some(frame) => frame,
                // Its length is all there: the response is whole and the connection free for
                // the next request, whenever the peer ends its stream (as hyper).
                None if left == Some(0) => {
                    self.write_out().await?;
                    return Ok(true);
                }
                None => {
                    self.write_out().await?;
                    match self.unless_closed(body.frame()).await? {
                        Some(frame) => frame,
                        None => {
                            return Err(io::Error::new(
                                io::ErrorKind::ConnectionAborted,
                                "the app closed its connection mid-response",
                            ))
                        }
                    }
                }
            };
            let data = match frame {
                None => {
                    if left.is_none() {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                    self.write_out().await?;
                    return Ok(left.is_none_or(|n| n == 0));
                }
                Some(Err(e)) => {
                    self.write_out().await?;
                    return Err(io::Error::other(format!(
                        "the response body failed: {}",
                        crate::http::error_chain(&*e)
                    )));
                }
                // Trailers are not sent: hyper sent only those a `Trailer` field named, and
                // that field does not cross the mesh (it is hop-by-hop).
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => data,
                    _ => continue,
                },
            };
            if let Some(n) = left.as_mut() {
                *n = n.checked_sub(data.len() as u64).ok_or_else(|| {
                    io::Error::other("the response body is longer than its Content-Length")
                })?;
            } else {
                let _ = write!(self.out, "{:x}\r\n", data.len());
            }
            if data.len() >= COPY_AT {
                self.write_out().await?;
                self.io.write_all(&data).await?;
            } else {
                self.out.extend_from_slice(&data);
            }
            if left.is_none() {
                self.out.extend_from_slice(b"\r\n");
            }
            // Bounded: a body whose frames are all ready at once is written as it goes.
            if self.out.len() >= COPY_AT {
                self.write_out().await?;
            }
        }
    }

    /// `fut`'s output, or `None` if the app closed its connection first. As hyper, the
    /// socket is watched only while nothing is buffered: requests pipelined behind this one
    /// stop the watch, so a half-close after them cancels none of those before the last
    /// (which, if its answer is not ready when the FIN arrives, is cancelled as a hang-up).
    async fn unless_closed<F: Future>(&mut self, fut: F) -> io::Result<Option<F::Output>> {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if let Poll::Ready(output) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(Some(output)));
            }
            if self.buf.is_empty() {
                // No system call while nothing arrived: the last read emptied the socket,
                // so tokio polls readiness only.
                match poll_read_some(&mut self.io, &mut self.buf, cx) {
                    Poll::Ready(Ok(0)) => return Poll::Ready(Ok(None)),
                    Poll::Ready(Ok(_)) | Poll::Pending => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Writes and empties `out`, and flushes.
    async fn write_out(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        // A no-op on TCP; what a buffering stream needs.
        self.io.flush().await
    }
}

/// The body's next frame if it has one ready now, without waiting.
async fn poll_now(
    body: &mut ProxyBody,
) -> Option<Option<Result<Frame<Bytes>, crate::http::BoxError>>> {
    poll_fn(|cx| match Pin::new(&mut *body).poll_frame(cx) {
        Poll::Ready(frame) => Poll::Ready(Some(frame)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{boxed, BoxError};
    use http_body_util::Full;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// The method, target and close flag of a fast-path request; `None` for hyper's;
    /// `Err` for a head not complete yet.
    type Classified = Result<Option<(String, String, bool)>, ()>;

    /// What `parse_request` makes of `raw`: `Some((method, uri, close))` for a request of
    /// the fast path, `None` for hyper's (whose bytes must then be left exactly as they came).
    fn classify(raw: &[u8], max_head: usize) -> Classified {
        let mut buf = BytesMut::from(raw);
        match parse_request(&mut buf, max_head) {
            Next::Request(request, close) => {
                assert_eq!(request.version(), Version::HTTP_11);
                Ok(Some((
                    request.method().to_string(),
                    request.uri().to_string(),
                    close,
                )))
            }
            Next::Hyper => {
                // Every byte but the empty lines before the request, which hyper skips too.
                let mut skipped = BytesMut::from(raw);
                skip_empty_lines(&mut skipped);
                assert_eq!(buf, skipped, "hyper gets every byte");
                Ok(None)
            }
            Next::Partial => Err(()),
        }
    }

    #[test]
    fn only_requests_whose_end_is_beyond_doubt_take_the_fast_path() {
        let fast = |method: &str, uri: &str, close| Ok(Some((method.into(), uri.into(), close)));
        let hyper = Ok(None);
        let cases: &[(&str, &[u8], Classified)] = &[
            ("a GET", b"GET /a?b=c HTTP/1.1\r\nhost: s\r\n\r\n", fast("GET", "/a?b=c", false)),
            ("no Host", b"GET / HTTP/1.1\r\n\r\n", fast("GET", "/", false)),
            ("absolute form", b"GET http://s:8/x HTTP/1.1\r\n\r\n", fast("GET", "http://s:8/x", false)),
            ("a DELETE with Content-Length 0", b"DELETE /x HTTP/1.1\r\ncontent-length: 0\r\n\r\n", fast("DELETE", "/x", false)),
            ("empty lines before the request", b"\r\n\nGET / HTTP/1.1\r\n\r\n", fast("GET", "/", false)),
            ("two Content-Lengths of 0", b"POST / HTTP/1.1\r\nContent-Length: 0\r\ncontent-length: 0\r\n\r\n", hyper.clone()),
            ("Connection: close", b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", fast("GET", "/", true)),
            ("close among other tokens", b"GET / HTTP/1.1\r\nconnection: keep-alive , CLOSE\r\n\r\n", fast("GET", "/", true)),
            ("Connection: keep-alive", b"GET / HTTP/1.1\r\nconnection: keep-alive\r\n\r\n", fast("GET", "/", false)),
            ("a value with obs-text", b"GET / HTTP/1.1\r\nx-a: caf\xc3\xa9\r\n\r\n", fast("GET", "/", false)),
            ("an extension method", b"PURGE / HTTP/1.1\r\n\r\n", fast("PURGE", "/", false)),
            ("a body length", b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nabcd", hyper.clone()),
            ("a zero length written 00", b"POST / HTTP/1.1\r\ncontent-length: 00\r\n\r\n", hyper.clone()),
            ("lengths 0 and 4", b"POST / HTTP/1.1\r\ncontent-length: 0\r\ncontent-length: 4\r\n\r\nabcd", hyper.clone()),
            ("a list of lengths", b"POST / HTTP/1.1\r\ncontent-length: 0, 0\r\n\r\n", hyper.clone()),
            ("chunked", b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", hyper.clone()),
            ("any Transfer-Encoding", b"GET / HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n", hyper.clone()),
            ("an upgrade", b"GET / HTTP/1.1\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n", hyper.clone()),
            ("Expect", b"GET / HTTP/1.1\r\nexpect: 100-continue\r\n\r\n", hyper.clone()),
            ("HTTP/1.0", b"GET / HTTP/1.0\r\n\r\n", hyper.clone()),
            ("CONNECT", b"CONNECT s:443 HTTP/1.1\r\n\r\n", hyper.clone()),
            ("an obs-folded field", b"GET / HTTP/1.1\r\nx-a: a\r\n b\r\n\r\n", hyper.clone()),
            ("a space before a colon", b"GET / HTTP/1.1\r\nhost : s\r\n\r\n", hyper.clone()),
            ("two spaces in the request line", b"GET  / HTTP/1.1\r\n\r\n", hyper.clone()),
            ("a NUL in a value", b"GET / HTTP/1.1\r\nx-a: a\0b\r\n\r\n", hyper.clone()),
            ("a bare LF line end", b"GET / HTTP/1.1\nhost: s\n\n", fast("GET", "/", false)),
            ("a target http refuses", b"GET http://[::1/ HTTP/1.1\r\n\r\n", hyper.clone()),
            ("HTTP/2's preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", hyper.clone()),
            ("a head over the limit", b"GET / HTTP/1.1\r\nx-a: 01234567890123456789012345678901234567890123456789\r\n\r\n", hyper.clone()),
            ("an unfinished head", b"GET / HTTP/1.1\r\nhost: s\r\n", Err(())),
            ("empty lines only", b"\r\n\n\r", Err(())),
            ("a CR with no LF before the request", b"\r\n\rGET / HTTP/1.1\r\n\r\n", hyper.clone()),
            ("empty lines before a request hyper takes", b"\n\r\nGET / HTTP/1.0\r\n\r\n", hyper.clone()),
            ("an unfinished head over the limit", b"GET / HTTP/1.1\r\nx-a: 01234567890123456789012345678901234567890123456789\r\n", hyper.clone()),
        ];
        for (case, raw, expected) in cases {
            assert_eq!(&classify(raw, 64), expected, "{case}");
        }
        // The limit counts the head only, not what follows it.
        assert!(
            classify(b"GET / HTTP/1.1\r\n\r\nGET /next HTTP/1.1\r\n\r\n", 20)
                .is_ok_and(|r| r.is_some())
        );
    }

    #[test]
    fn a_request_is_taken_whole_with_its_fields_and_the_next_one_stays() {
        let mut buf = BytesMut::from(
            &b"GET /one HTTP/1.1\r\nHost: s\r\nX-Two: a\r\nx-two: b\r\n\r\nGET /two HTTP/1.1\r\n"[..],
        );
        let Next::Request(request, false) = parse_request(&mut buf, 1024) else {
            panic!("a request of the fast path");
        };
        assert_eq!(request.headers()["host"], "s");
        let two: Vec<_> = request.headers().get_all("x-two").iter().collect();
        assert_eq!(two, ["a", "b"]);
        assert_eq!(&buf[..], b"GET /two HTTP/1.1\r\n");
        assert!(matches!(parse_request(&mut buf, 1024), Next::Partial));
    }

    #[test]
    fn empty_lines_before_a_request_are_dropped_once_looked_at() {
        // A run of them, as an app could send a byte at a time, is not kept to be looked at
        // again; a CR waiting for its LF is.
        let mut buf = BytesMut::from("\r\n".repeat(1000).as_str());
        buf.extend_from_slice(b"\n\r");
        assert!(matches!(parse_request(&mut buf, 64), Next::Partial));
        assert_eq!(&buf[..], b"\r");
        buf.extend_from_slice(b"\nGET /a HTTP/1.1\r\n\r\n");
        let Next::Request(request, false) = parse_request(&mut buf, 64) else {
            panic!("a request of the fast path");
        };
        assert_eq!(
            (request.method(), request.uri().path()),
            (&Method::GET, "/a")
        );
        assert!(buf.is_empty());
    }

    /// A head as `head` shows it, and its framing.
    type Encoded = Result<(String, Framing), &'static str>;

    /// `encode_head`'s output without its `date` line, and the framing.
    fn head(
        status: u16,
        fields: &[(&str, &str)],
        hint: (bool, Option<u64>),
        head_request: bool,
        close: bool,
    ) -> Encoded {
        let mut headers = HeaderMap::new();
        for (name, value) in fields {
            headers.append(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        let mut out = BytesMut::new();
        let status = StatusCode::from_u16(status).unwrap();
        let framing = encode_head(&mut out, status, &headers, hint, head_request, close)?;
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        // A `date` is added when the response has none; its value is the clock's.
        let own_date = !fields.iter().any(|(n, _)| n.eq_ignore_ascii_case("date"));
        assert_eq!(text.matches("date: ").count(), 1, "{text}");
        let lines: Vec<_> = text
            .lines()
            .filter(|l| !(own_date && l.starts_with("date: ")))
            .collect();
        Ok((lines.join("|"), framing))
    }

    #[test]
    fn responses_are_framed_as_rfc_9110_and_9112_say() {
        use Framing::*;
        let open = (false, None);
        type Expected = Result<(&'static str, Framing), &'static str>;
        let cases: &[(&str, Encoded, Expected)] = &[
            (
                "a length",
                head(
                    200,
                    &[("content-length", "64"), ("x-a", "1")],
                    open,
                    false,
                    false,
                ),
                Ok(("HTTP/1.1 200 OK|x-a: 1|content-length: 64|", Length(64))),
            ),
            (
                "an empty body",
                head(200, &[], (true, Some(0)), false, false),
                Ok(("HTTP/1.1 200 OK|content-length: 0|", Length(0))),
            ),
            (
                "a known size",
                head(201, &[], (false, Some(5)), false, false),
                Ok(("HTTP/1.1 201 Created|content-length: 5|", Length(5))),
            ),
            (
                "an unknown size",
                head(200, &[], open, false, false),
                Ok(("HTTP/1.1 200 OK|transfer-encoding: chunked|", Chunked)),
            ),
            (
                "a length repeated",
                head(200, &[("content-length", "5, 5")], open, false, false),
                Ok(("HTTP/1.1 200 OK|content-length: 5|", Length(5))),
            ),
            (
                "two lengths",
                head(
                    200,
                    &[("content-length", "5"), ("content-length", "6")],
                    open,
                    false,
                    false,
                ),
                Err("two different Content-Lengths"),
            ),
            (
                "a length that is no number",
                head(200, &[("content-length", "-1")], open, false, false),
                Err("a Content-Length is not a number"),
            ),
            (
                "an unknown status",
                head(599, &[], (true, None), false, false),
                Ok(("HTTP/1.1 599 <none>|content-length: 0|", Length(0))),
            ),
            (
                "HEAD, its length kept",
                head(200, &[("content-length", "10")], (true, None), true, false),
                Ok(("HTTP/1.1 200 OK|content-length: 10|", Bodiless)),
            ),
            (
                "HEAD without a length",
                head(200, &[], (true, None), true, false),
                Ok(("HTTP/1.1 200 OK|", Bodiless)),
            ),
            (
                "204, a length dropped",
                head(204, &[("content-length", "3")], open, false, false),
                Ok(("HTTP/1.1 204 No Content|", Bodiless)),
            ),
            (
                "204 to a HEAD, a length dropped",
                head(204, &[("content-length", "3")], open, true, false),
                Ok(("HTTP/1.1 204 No Content|", Bodiless)),
            ),
            (
                "304, its length kept (RFC 9110, 8.6)",
                head(304, &[("content-length", "3")], open, false, false),
                Ok(("HTTP/1.1 304 Not Modified|content-length: 3|", Bodiless)),
            ),
            (
                "closing",
                head(404, &[], (true, None), false, true),
                Ok((
                    "HTTP/1.1 404 Not Found|content-length: 0|connection: close|",
                    Length(0),
                )),
            ),
            (
                "the app's date kept",
                head(
                    200,
                    &[("date", "Sat, 28 Nov 2026 06:00:00 GMT")],
                    (true, None),
                    false,
                    false,
                ),
                Ok((
                    "HTTP/1.1 200 OK|date: Sat, 28 Nov 2026 06:00:00 GMT|content-length: 0|",
                    Length(0),
                )),
            ),
            (
                "framing fields dropped",
                head(
                    200,
                    &[
                        ("transfer-encoding", "chunked"),
                        ("connection", "keep-alive"),
                    ],
                    (false, Some(2)),
                    false,
                    false,
                ),
                Ok(("HTTP/1.1 200 OK|content-length: 2|", Length(2))),
            ),
            (
                "an informational status",
                head(103, &[], open, false, false),
                Err("an informational status as the final response"),
            ),
        ];
        for (case, got, expected) in cases {
            let expected = expected.map(|(text, framing)| (text.to_string(), framing));
            assert_eq!(got, &expected, "{case}");
        }
    }

    /// A body of `chunks`, then an error if `fail`, or no end ever if `endless`, with no
    /// size known; each chunk comes after one `Pending` (waking its task at once), so each
    /// is written on its own.
    struct Streamed {
        chunks: std::collections::VecDeque<&'static str>,
        fail: bool,
        endless: bool,
        ready: bool,
    }

    impl Body for Streamed {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            if !std::mem::replace(&mut self.ready, false) {
                self.ready = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            match self.chunks.pop_front() {
                Some(chunk) => {
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk.as_bytes())))))
                }
                None if self.fail => Poll::Ready(Some(Err("the peer reset the stream".into()))),
                None if self.endless => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    fn streamed(chunks: &[&'static str], fail: bool) -> ProxyBody {
        boxed(Streamed {
            chunks: chunks.iter().copied().collect(),
            fail,
            endless: false,
            ready: false,
        })
    }

    /// The limits of the socket tests: heads within a second (the head timeout's own test
    /// uses less).
    const LIMITS: Limits = Limits {
        max_head: 8 * 1024,
        head_within: Duration::from_secs(1),
    };

    /// The test app's answers, by path.
    fn answer(request: &Request<Empty<Bytes>>) -> Response<ProxyBody> {
        let text = |t: &'static str| boxed(Full::new(Bytes::from_static(t.as_bytes())));
        let with_length = |n: &str, body| {
            let mut response = Response::new(body);
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, n.parse().unwrap());
            response
        };
        match request.uri().path() {
            "/len" => Response::new(text("hello")),
            "/chunked" => Response::new(streamed(&["ab", "cde"], false)),
            "/big" => Response::new(boxed(Full::new(Bytes::from(vec![b'x'; 40_000])))),
            "/fail" => Response::new(streamed(&["ab"], true)),
            "/short" => with_length("10", text("abc")),
            "/long" => with_length("2", text("abc")),
            // All of its length, then a stream the peer never ends.
            "/never-ends" => with_length(
                "5",
                boxed(Streamed {
                    chunks: ["hel", "lo"].into(),
                    fail: false,
                    endless: true,
                    ready: false,
                }),
            ),
            "/early-hints" => {
                let mut response = Response::new(text(""));
                *response.status_mut() = StatusCode::EARLY_HINTS;
                response
            }
            other => panic!("no route {other}"),
        }
    }

    /// Both ends of a TCP connection on 127.0.0.1: the app's, the proxy's.
    async fn socket_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let app = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        (app, listener.accept().await.unwrap().0)
    }

    /// A client connection to `serve` whose first request is held: `asked` says it reached
    /// the handler, and its answer waits for `release` (never sent: the handler's future is
    /// pending until dropped, which closes `release`). Later requests are answered at once.
    async fn first_held(
        limits: Limits,
        shutdown: CancellationToken,
    ) -> (
        TcpStream,
        tokio::sync::oneshot::Receiver<()>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<io::Result<Served<TcpStream>>>,
    ) {
        let (client, tcp) = socket_pair().await;
        let (asked, asked_rx) = tokio::sync::oneshot::channel::<()>();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let mut first = Some((asked, released));
        let server = tokio::spawn(async move {
            serve(tcp, &limits, &shutdown, move |request| {
                let hooks = first.take();
                async move {
                    if let Some((asked, released)) = hooks {
                        asked.send(()).unwrap();
                        if released.await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    Ok::<_, Infallible>(answer(&request))
                }
            })
            .await
        });
        (client, asked_rx, release, server)
    }

    /// A client connection to `serve` (with `answer`, `limits` and `shutdown`) and the
    /// server's task.
    async fn connection(
        limits: Limits,
        shutdown: CancellationToken,
    ) -> (
        TcpStream,
        tokio::task::JoinHandle<io::Result<Served<TcpStream>>>,
    ) {
        let (client, tcp) = socket_pair().await;
        let server = tokio::spawn(async move {
            serve(tcp, &limits, &shutdown, |request| {
                std::future::ready(Ok::<_, Infallible>(answer(&request)))
            })
            .await
        });
        (client, server)
    }

    /// Everything the server writes until it closes, without `date` lines.
    async fn transcript(client: &mut TcpStream) -> String {
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        let text = String::from_utf8(all).unwrap();
        let mut kept = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("date: ") {
            kept.push_str(&rest[..at]);
            rest = &rest[at + rest[at..].find("\r\n").unwrap() + 2..];
        }
        kept.push_str(rest);
        kept
    }

    #[tokio::test]
    async fn kept_alive_and_pipelined_requests_are_answered_in_order_then_closed_as_asked() {
        let (mut client, server) = connection(LIMITS, CancellationToken::new()).await;
        client
            .write_all(b"GET /len HTTP/1.1\r\nhost: s\r\n\r\n")
            .await
            .unwrap();
        let mut first = [0u8; 256];
        let n = client.read(&mut first).await.unwrap();
        assert!(
            first[..n].ends_with(b"\r\n\r\nhello"),
            "{:?}",
            String::from_utf8_lossy(&first[..n])
        );
        // Four at once, the last asking to close.
        client
            .write_all(b"GET /chunked HTTP/1.1\r\n\r\nGET /big HTTP/1.1\r\n\r\nHEAD /len HTTP/1.1\r\n\r\nGET /len HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let expected = [
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
            &format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 40000\r\n\r\n{}",
                "x".repeat(40_000)
            ),
            "HTTP/1.1 200 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
        ]
        .concat();
        assert_eq!(transcript(&mut client).await, expected);
        assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
    }

    #[tokio::test]
    async fn a_request_with_a_body_hands_the_connection_to_hyper_with_its_bytes() {
        let (mut client, server) = connection(LIMITS, CancellationToken::new()).await;
        let post = b"POST /up HTTP/1.1\r\ncontent-length: 3\r\n\r\nabc";
        let mut both = b"GET /len HTTP/1.1\r\n\r\n".to_vec();
        both.extend_from_slice(post);
        client.write_all(&both).await.unwrap();
        let Ok(Served::Handover(mut io)) = server.await.unwrap() else {
            panic!("handed over");
        };
        let mut replayed = vec![0u8; post.len()];
        io.read_exact(&mut replayed).await.unwrap();
        assert_eq!(replayed, post);
        drop(io);
        let answer = transcript(&mut client).await;
        assert_eq!(answer, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello");
    }

    #[tokio::test]
    async fn shutdown_closes_an_idle_connection_and_a_busy_one_after_its_response() {
        // A head timeout far away, so only the shutdown can close the idle connection.
        let limits = Limits {
            head_within: Duration::from_secs(600),
            ..LIMITS
        };
        let shutdown = CancellationToken::new();
        let (mut idle, idle_server) = connection(limits, shutdown.clone()).await;
        idle.write_all(b"GET /len HTTP/1.1\r\n\r\n").await.unwrap();
        let mut first = [0u8; 256];
        assert!(idle.read(&mut first).await.unwrap() > 0);

        // A request whose answer waits until after the shutdown.
        let (mut busy, asked_rx, release, busy_server) = first_held(limits, shutdown.clone()).await;
        busy.write_all(b"GET /len HTTP/1.1\r\n\r\n").await.unwrap();
        asked_rx.await.unwrap();

        shutdown.cancel();
        assert!(matches!(idle_server.await.unwrap(), Ok(Served::Closed)));
        assert_eq!(
            transcript(&mut idle).await,
            "",
            "the idle one closed with no answer"
        );
        release.send(()).unwrap();
        assert_eq!(
            transcript(&mut busy).await,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        );
        assert!(matches!(busy_server.await.unwrap(), Ok(Served::Closed)));
    }

    #[tokio::test]
    async fn a_head_that_does_not_arrive_in_time_closes_the_connection() {
        let within = Duration::from_millis(200);
        let limits = Limits {
            head_within: within,
            ..LIMITS
        };
        // Half a head, then nothing; then a connection idle after an answer. Each closes
        // without an answer, and not before its time.
        for first in ["GET /len HTTP/1.1\r\n", "GET /len HTTP/1.1\r\n\r\n"] {
            let (mut client, server) = connection(limits, CancellationToken::new()).await;
            let started = Instant::now();
            client.write_all(first.as_bytes()).await.unwrap();
            let answered = if first.ends_with("\r\n\r\n") {
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
            } else {
                ""
            };
            assert_eq!(transcript(&mut client).await, answered, "{first:?}");
            assert!(started.elapsed() >= within, "{first:?}");
            assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
        }
        // Half a head, then the app hangs up: closed, no answer.
        let (mut client, server) = connection(limits, CancellationToken::new()).await;
        client.write_all(b"GET /len HTTP/1.1\r\n").await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(transcript(&mut client).await, "");
        assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
    }

    #[tokio::test]
    async fn each_request_gets_the_whole_head_timeout_however_long_the_connection_lived() {
        // The timer armed for the first head fires while the second is awaited, within its
        // own time: the connection must stay open. Wide margins: 600 ms and 1,300 ms after
        // it opened, against deadlines of 1,000 and 1,600 ms.
        let limits = Limits {
            head_within: Duration::from_secs(1),
            ..LIMITS
        };
        let (mut client, server) = connection(limits, CancellationToken::new()).await;
        let mut answer = [0u8; 256];
        tokio::time::sleep(Duration::from_millis(600)).await;
        client
            .write_all(b"GET /len HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert!(client.read(&mut answer).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_millis(700)).await;
        client
            .write_all(b"GET /len HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            transcript(&mut client).await,
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
        );
        assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
    }

    #[tokio::test]
    async fn an_app_that_hangs_up_cancels_its_request() {
        let (mut client, asked_rx, mut release, server) =
            first_held(LIMITS, CancellationToken::new()).await;
        client
            .write_all(b"GET /len HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        asked_rx.await.unwrap();
        drop(client);
        // The handler's future holds `release`'s receiver: dropped when cancelled.
        let cancelled = tokio::time::timeout(Duration::from_secs(10), release.closed()).await;
        assert!(cancelled.is_ok(), "the request's future was dropped");
        assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
    }

    #[tokio::test]
    async fn a_half_close_after_pipelined_requests_drops_none_of_them() {
        // The first answer waits until after the app's FIN; the second, read with it, is
        // answered too (it is ready at once: one still waiting when the FIN is seen with
        // nothing behind it is cancelled as a hang-up, as with hyper).
        let (mut client, asked_rx, release, server) =
            first_held(LIMITS, CancellationToken::new()).await;
        client
            .write_all(b"GET /len HTTP/1.1\r\n\r\nGET /len HTTP/1.1\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        asked_rx.await.unwrap();
        client.shutdown().await.unwrap();
        // Time for the FIN to reach the server first (which must not matter).
        tokio::time::sleep(Duration::from_millis(50)).await;
        release.send(()).unwrap();
        assert_eq!(
            transcript(&mut client).await,
            [
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
            ]
            .concat()
        );
        assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
    }

    #[test]
    fn a_partial_head_is_parsed_again_only_once_it_may_have_ended() {
        let cases: &[(&[u8], usize, bool)] = &[
            (b"GET / HTTP/1.1\r\nhost: s\r\n", 0, false),
            (b"GET / HTTP/1.1\r\nhost: s\r\n\r\n", 0, true),
            (b"GET / HTTP/1.1\nhost: s\n\n", 0, true),
            // The blank line straddles where the last look ended (after the `host` line's
            // end, or inside the blank line).
            (b"GET / HTTP/1.1\r\nhost: s\r\n\r\n", 25, true),
            (b"GET / HTTP/1.1\r\nhost: s\r\n\r\n", 26, true),
            // Blank lines before a request line, looked at already, are not looked at again.
            (b"\r\n\r\nGET / HTTP/1.1\r\nhost: s", 10, false),
            (b"GET / HTTP/1.1\r\nhost: s\r\n\r", 0, false),
        ];
        for (buf, from, expected) in cases {
            assert_eq!(
                has_blank_line(buf, *from),
                *expected,
                "{:?} from {from}",
                String::from_utf8_lossy(buf)
            );
        }
    }

    #[tokio::test]
    async fn a_response_whose_length_has_all_come_frees_the_connection_before_its_stream_ends() {
        let (mut client, server) = connection(LIMITS, CancellationToken::new()).await;
        client
            .write_all(
                b"GET /never-ends HTTP/1.1\r\n\r\nGET /len HTTP/1.1\r\nconnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        // Bounded: before the fix, the second request waited for the first's stream to end.
        let answers = tokio::time::timeout(Duration::from_secs(10), transcript(&mut client))
            .await
            .expect("the next request answered");
        assert_eq!(
            answers,
            [
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello"
            ]
            .concat()
        );
        assert!(matches!(server.await.unwrap(), Ok(Served::Closed)));
    }

    #[tokio::test]
    async fn a_body_that_fails_or_breaks_its_length_closes_the_connection() {
        let cases = [
            // No last chunk: the app sees the body was cut.
            (
                "/fail",
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nab\r\n",
                false,
            ),
            // Fewer bytes than promised: closing is the only way to say so.
            (
                "/short",
                "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc",
                true,
            ),
            // More bytes than promised: nothing goes out.
            ("/long", "", false),
            // A status HTTP/1.1 cannot send as a final response: 502.
            (
                "/early-hints",
                "HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                true,
            ),
        ];
        for (path, expected, clean) in cases {
            let (mut client, server) = connection(LIMITS, CancellationToken::new()).await;
            client
                .write_all(
                    format!("GET {path} HTTP/1.1\r\n\r\nGET /len HTTP/1.1\r\n\r\n").as_bytes(),
                )
                .await
                .unwrap();
            assert_eq!(transcript(&mut client).await, expected, "{path}");
            let result = server.await.unwrap();
            assert_eq!(matches!(result, Ok(Served::Closed)), clean, "{path}");
        }
    }
}
