//! HTTP/1.1 exchanges with the local app on connections of our own, one at a time. The
//! request's own future writes the request and reads the response head; the response body
//! then carries the connection and hands it back (`on_idle`) when the body ends cleanly.
//! hyper's client ran a task per connection and passed each request and response through
//! channels to it: about 4,500 instructions a request more (`benches/README.md`,
//! "2026-11-28 (morning)"). Anything that leaves a connection's framing in doubt closes it,
//! so one response can never be read as part of the next.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::future::Future;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::http::{BoxError, ProxyBody};
use crate::http1::{field, field_offsets, lists, put_field, Lengths, MAX_HEADERS};

/// The most bytes of one chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;
/// The most informational (1xx) responses skipped before the final one.
const MAX_INFORMATIONAL: u8 = 16;
/// The first read of a response, and the least any read asks for.
const MIN_READ: usize = 8 * 1024;
/// The most one read asks for: reads that fill their buffer double the next one.
const MAX_READ: usize = 256 * 1024;

/// Why an exchange with the app failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    /// Reading from or writing to the app failed.
    #[error("I/O with the app: {0}")]
    Io(#[from] io::Error),
    /// The connection ended before any byte of a response (it may have been closed as idle).
    #[error("the app closed the connection before it answered")]
    ClosedBeforeResponse,
    /// The connection ended inside a response.
    #[error("the app closed the connection in the middle of its response")]
    ClosedMidResponse,
    /// The response head does not parse.
    #[error("the app's response head is malformed: {0}")]
    Malformed(httparse::Error),
    /// The response head (or the trailers) went past the limit.
    #[error("the app's response head is larger than {0} bytes")]
    HeadTooLarge(usize),
    /// The response parses but says something that cannot be forwarded safely.
    #[error("the app's response is invalid: {0}")]
    Invalid(&'static str),
    /// The request's body (from the caller) failed.
    #[error("the request body failed: {0}")]
    RequestBody(BoxError),
    /// The request's body did not have the length its `Content-Length` declared.
    #[error("the request body is not the {0} bytes its Content-Length declared")]
    RequestLength(u64),
}

/// A connection to the app between exchanges.
#[derive(Debug)]
pub struct Conn {
    io: TcpStream,
}

impl Conn {
    /// A connection for exchanges, from a connected socket.
    pub fn new(io: TcpStream) -> Self {
        Self { io }
    }

    /// Whether the connection can take a request now: as far as the runtime has seen, the app
    /// has not closed it or sent anything unasked. No system call unless the socket is
    /// readable; and no poll, which a task that used its budget would see as not ready.
    pub fn is_usable(&self) -> bool {
        // Readable: an end, bytes nobody asked for, or readiness left from the last
        // response's read. Only the last is fine (and the read clears it).
        matches!(
            self.io.try_read(&mut [0u8; 1]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }
}

/// What an exchange is allowed.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// The most bytes of a response head, or of a chunked body's trailers.
    pub max_head: usize,
    /// How long the rest of a request may take to go out once its response has ended.
    pub finish_within: Duration,
}

/// How a request's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body.
    Empty,
    /// `Content-Length`: the bytes still to send.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request ready to go: its head as bytes, and its body if it has one.
pub struct Encoded {
    /// The request line and header fields, blank line included.
    head: Bytes,
    body: Option<(ProxyBody, Framing)>,
    head_request: bool,
    /// The request can go again on another connection as it is: it has no body to resend,
    /// and its method is safe (RFC 9110, 9.2.1).
    retryable: bool,
}

/// Encodes `req` (its URI absolute, as for HTTP/2) for the app at `app`: origin-form target,
/// a `Host` if it has none, and the body's framing: its `Content-Length` if it declares one,
/// else its exact size if known, else chunked.
pub fn encode(req: Request<ProxyBody>, app: SocketAddr) -> Encoded {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let fields: usize = parts
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    let mut head = BytesMut::with_capacity(96 + target.len() + fields);
    head.put_slice(parts.method.as_str().as_bytes());
    head.put_u8(b' ');
    head.put_slice(target.as_bytes());
    head.put_slice(b" HTTP/1.1\r\n");
    // One pass, with no lookups by name: this runs on every request.
    let mut host = false;
    let mut lengths = Lengths::default();
    for (name, value) in &parts.headers {
        // The framing is this hop's own, written below. A caller's `Content-Length` was
        // checked against its body already (by h2, or hyper's server).
        if name == header::CONTENT_LENGTH {
            lengths.add(value);
            continue;
        }
        // `Expect: 100-continue` is this hop's to answer, and it sends the body at once (as
        // Envoy does): an app told to expect a wait could answer early and take the body
        // for the next request.
        if name == header::TRANSFER_ENCODING || name == header::EXPECT {
            continue;
        }
        host |= name == header::HOST;
        put_field(&mut head, name, value);
    }
    if !host {
        head.put_slice(b"host: ");
        head.put_slice(app.to_string().as_bytes());
        head.put_slice(b"\r\n");
    }
    let declared = lengths.get().ok().flatten();
    let framing = if body.is_end_stream() {
        Framing::Empty
    } else if let Some(n) = declared.or(body.size_hint().exact()) {
        Framing::Length(n)
    } else if matches!(parts.method, Method::GET | Method::HEAD | Method::CONNECT) {
        // These almost never have a body: none rather than a chunked one, as hyper does.
        Framing::Empty
    } else {
        Framing::Chunked
    };
    match framing {
        Framing::Empty => {
            // A method whose body has a meaning says "none" explicitly, as hyper does.
            let method = &parts.method;
            if declared.is_some()
                || method == Method::POST
                || method == Method::PUT
                || method == Method::PATCH
            {
                head.put_slice(b"content-length: 0\r\n");
            }
        }
        Framing::Length(n) => {
            head.put_slice(b"content-length: ");
            head.put_slice(n.to_string().as_bytes());
            head.put_slice(b"\r\n");
        }
        Framing::Chunked => head.put_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.put_slice(b"\r\n");
    // Safe methods only (RFC 9110, 9.2.1): a PUT or DELETE the app may have carried out
    // already does not go twice.
    let safe = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    Encoded {
        head: head.freeze(),
        body: (framing != Framing::Empty).then_some((body, framing)),
        head_request: parts.method == Method::HEAD,
        retryable: safe && framing == Framing::Empty,
    }
}

/// Writes the request's head and body, in pieces as the body yields them.
struct RequestWriter {
    /// The head, kept whole (a retry sends it again); `head_sent` of it is written.
    head: Bytes,
    head_sent: usize,
    out: VecDeque<Bytes>,
    body: Option<(ProxyBody, Framing)>,
    /// The `Content-Length` sent, if the body has one.
    declared: u64,
}

/// Why the request could not be written.
enum WriteError {
    /// The connection (what failed there shows on the read side): the app may still
    /// answer, or have answered already.
    Io,
    /// The request itself: the exchange ends.
    Request(Http1Error),
}

impl RequestWriter {
    fn new(head: Bytes, body: Option<(ProxyBody, Framing)>) -> Self {
        let declared = match body {
            Some((_, Framing::Length(n))) => n,
            _ => 0,
        };
        Self {
            head,
            head_sent: 0,
            out: VecDeque::new(),
            body,
            declared,
        }
    }

    /// A writer with nothing to write.
    fn done() -> Self {
        Self {
            head: Bytes::new(),
            head_sent: 0,
            out: VecDeque::new(),
            body: None,
            declared: 0,
        }
    }

    /// The body has ended: its length is checked, or its last chunk queued.
    fn finish_body(&mut self) -> Result<(), WriteError> {
        match self.body.take().map(|(_, framing)| framing) {
            Some(Framing::Length(left)) if left > 0 => Err(WriteError::Request(
                Http1Error::RequestLength(self.declared),
            )),
            Some(Framing::Chunked) => {
                self.out.push_back(Bytes::from_static(b"0\r\n\r\n"));
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn is_done(&self) -> bool {
        self.head_sent == self.head.len() && self.out.is_empty() && self.body.is_none()
    }

    /// Whether every byte of the request is written: a body of known length may still wait
    /// for its end (an END_STREAM after its last DATA), which adds none.
    fn all_sent(&self) -> bool {
        self.head_sent == self.head.len()
            && self.out.is_empty()
            && matches!(self.body, None | Some((_, Framing::Length(0))))
    }

    /// Writes all it can; ready when the whole request is written.
    fn poll_write(
        &mut self,
        io: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), WriteError>> {
        loop {
            while self.head_sent < self.head.len() || !self.out.is_empty() {
                let mut slices = [IoSlice::new(&[]); 4];
                let head = &self.head[self.head_sent..];
                let pieces = (!head.is_empty()).then_some(head).into_iter();
                let pieces = pieces.chain(self.out.iter().map(|b| &b[..]));
                let mut count = 0;
                for (slice, piece) in slices.iter_mut().zip(pieces) {
                    *slice = IoSlice::new(piece);
                    count += 1;
                }
                let written = Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]);
                let mut written = match ready!(written) {
                    Ok(0) => return Poll::Ready(Err(WriteError::Io)),
                    Ok(n) => n,
                    Err(_) => return Poll::Ready(Err(WriteError::Io)),
                };
                let from_head = written.min(self.head.len() - self.head_sent);
                self.head_sent += from_head;
                written -= from_head;
                while written > 0 {
                    let front = &mut self.out[0];
                    if written >= front.len() {
                        written -= front.len();
                        self.out.pop_front();
                    } else {
                        front.advance(written);
                        written = 0;
                    }
                }
            }
            let Some((body, framing)) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => match framing {
                        Framing::Length(left) => {
                            let len = data.len() as u64;
                            if len > *left {
                                let wrong = Http1Error::RequestLength(self.declared);
                                return Poll::Ready(Err(WriteError::Request(wrong)));
                            }
                            *left -= len;
                            self.out.push_back(data);
                        }
                        Framing::Chunked => {
                            self.out
                                .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                            self.out.push_back(data);
                            self.out.push_back(Bytes::from_static(b"\r\n"));
                        }
                        Framing::Empty => {}
                    },
                    Err(_) => {
                        // Trailers end the body. They are not passed on: a caller's trailers
                        // are checked by nothing (an `x-warden-*` one included), and hyper
                        // sent only those a `Trailer` header named, a hop-by-hop header
                        // removed before this.
                        self.finish_body()?;
                    }
                },
                Some(Err(e)) => {
                    return Poll::Ready(Err(WriteError::Request(Http1Error::RequestBody(e))))
                }
                None => self.finish_body()?,
            }
        }
    }
}

/// A response head, parsed.
struct Head {
    status: StatusCode,
    http11: bool,
    headers: HeaderMap,
    /// Its `Content-Length` fields.
    lengths: Lengths,
    /// Whether its last transfer coding is chunked, if it has a `Transfer-Encoding`.
    chunked: Option<bool>,
    /// `Connection: close`.
    close: bool,
}

/// What the start of a buffer holds.
enum Parsed {
    /// An informational (1xx) response, now skipped.
    Informational,
    /// The final response's head, now taken from the buffer.
    Final(Head),
}

/// Parses the response head at the start of `buf`; `None` until it is complete.
fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<Parsed>, Http1Error> {
    // Where each field's name and value are in `buf`: they become slices of one shared
    // buffer, copied nowhere.
    let (len, http11, code, at) = {
        let mut fields = [MaybeUninit::<httparse::Header<'_>>::uninit(); MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut fields,
        );
        match parsed {
            Ok(httparse::Status::Complete(len)) => {
                let at = field_offsets(buf, response.headers);
                let http11 = response.version == Some(1);
                (len, http11, response.code.unwrap_or(0), at)
            }
            Ok(httparse::Status::Partial) if buf.len() >= max => {
                return Err(Http1Error::HeadTooLarge(max))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Http1Error::Malformed(e)),
        }
    };
    if len > max {
        return Err(Http1Error::HeadTooLarge(max));
    }
    let status = StatusCode::from_u16(code).map_err(|_| Http1Error::Invalid("a status code"))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Http1Error::Invalid(
            "101 Switching Protocols to a request for no upgrade",
        ));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Some(Parsed::Informational));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(at.len());
    let (mut lengths, mut chunked, mut close) = (Lengths::default(), None, false);
    for at in at {
        let (name, value) = field(&head, at).ok_or(Http1Error::Invalid("a header field name"))?;
        // What the framing needs, noted on the way: no lookups by name afterwards.
        if name == header::CONTENT_LENGTH {
            lengths.add(&value);
        } else if name == header::TRANSFER_ENCODING {
            let last = value.as_bytes().rsplit(|&b| b == b',').next();
            chunked = Some(last.is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked")));
        } else if name == header::CONNECTION {
            close |= lists(&value, "close");
        }
        headers.append(name, value);
    }
    Ok(Some(Parsed::Final(Head {
        status,
        http11,
        headers,
        lengths,
        chunked,
        close,
    })))
}

/// How a response's body is framed, and what of it is still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyFraming {
    /// `Content-Length`: the bytes still to come.
    Length(u64),
    /// `Transfer-Encoding: chunked`, at this point of it.
    Chunked(Chunk),
    /// Everything until the app closes the connection.
    UntilClose,
    /// Nothing more.
    Ended,
}

/// Where a chunked body's reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// At a chunk-size line.
    Size,
    /// Inside a chunk's data: the bytes still to come.
    Data(u64),
    /// At the line end after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers, then a blank line.
    Trailers,
}

/// How the response to a request is framed (RFC 9112, 6.3), and whether its connection can
/// take another request afterwards. Removes a `Content-Length` a chunked response carries,
/// and writes repeats of one `Content-Length` as one.
fn response_framing(
    head: &mut Head,
    head_request: bool,
) -> Result<(BodyFraming, bool), Http1Error> {
    let mut reusable = head.http11 && !head.close;
    let status = head.status;
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        // A 204 has no body and says nothing of one (RFC 9110, 8.6 and 15.3.5): one that
        // gives a length or a coding may send a body after it, so its connection is not
        // used again.
        if status == StatusCode::NO_CONTENT && (head.chunked.is_some() || head.lengths.seen > 0) {
            reusable = false;
        }
        return Ok((BodyFraming::Ended, reusable));
    }
    if let Some(chunked) = head.chunked {
        if !head.http11 {
            return Err(Http1Error::Invalid(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        if head.lengths.seen > 0 {
            // Both: the message is suspect, so its connection is not used again.
            head.headers.remove(header::CONTENT_LENGTH);
            reusable = false;
        }
        return Ok(if chunked {
            (BodyFraming::Chunked(Chunk::Size), reusable)
        } else {
            (BodyFraming::UntilClose, false)
        });
    }
    match head.lengths.get().map_err(Http1Error::Invalid)? {
        Some(n) => {
            if head.lengths.seen > 1 {
                head.headers
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            Ok((BodyFraming::Length(n), reusable))
        }
        None => Ok((BodyFraming::UntilClose, false)),
    }
}

/// Sends `request` on `conn`; ready with the response once its head is in. `on_idle` gets the
/// connection back when the response has ended and the connection can take another request.
pub fn send<F>(conn: Conn, request: Encoded, options: Options, on_idle: F) -> Sending<F>
where
    F: FnOnce(Conn) + Send + Unpin + 'static,
{
    Sending {
        io: Some(conn.io),
        writer: RequestWriter::new(request.head, request.body),
        write_failed: false,
        buf: BytesMut::new(),
        informational: 0,
        head_request: request.head_request,
        retryable: request.retryable,
        options,
        on_idle: Some(on_idle),
    }
}

/// A request on its way, and its response's head on the way back.
pub struct Sending<F> {
    io: Option<TcpStream>,
    writer: RequestWriter,
    /// The connection failed for writing; the app may have answered before it did.
    write_failed: bool,
    buf: BytesMut,
    informational: u8,
    head_request: bool,
    retryable: bool,
    options: Options,
    on_idle: Option<F>,
}

impl<F> Sending<F> {
    /// The same request for another connection, if it can go twice (see
    /// [`Encoded::retryable`]).
    pub fn again(&self) -> Option<Encoded> {
        self.retryable.then(|| Encoded {
            head: self.writer.head.clone(),
            body: None,
            head_request: self.head_request,
            retryable: true,
        })
    }
}

impl<F> Future for Sending<F>
where
    F: FnOnce(Conn) + Send + Unpin + 'static,
{
    type Output = Result<Response<ResponseBody<F>>, Http1Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(Http1Error::Invalid("an exchange polled after its end")));
        };
        if !this.write_failed && !this.writer.is_done() {
            match this.writer.poll_write(io, cx) {
                Poll::Ready(Err(WriteError::Request(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(Err(WriteError::Io)) => this.write_failed = true,
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        loop {
            if !this.buf.is_empty() {
                match parse_head(&mut this.buf, this.options.max_head)? {
                    Some(Parsed::Informational) => {
                        this.informational += 1;
                        if this.informational > MAX_INFORMATIONAL {
                            return Poll::Ready(Err(Http1Error::Invalid(
                                "too many informational responses",
                            )));
                        }
                        continue;
                    }
                    Some(Parsed::Final(head)) => return Poll::Ready(this.respond(head)),
                    None => {}
                }
            }
            let nothing_yet = this.buf.is_empty() && this.informational == 0;
            this.buf.reserve(MIN_READ);
            // Held until the head is in.
            let Some(io) = this.io.as_mut() else {
                return Poll::Ready(Err(Http1Error::Invalid("an exchange polled after its end")));
            };
            match ready!(tokio_util::io::poll_read_buf(
                Pin::new(io),
                cx,
                &mut this.buf
            )) {
                Ok(0) if nothing_yet => return Poll::Ready(Err(Http1Error::ClosedBeforeResponse)),
                Ok(0) => return Poll::Ready(Err(Http1Error::ClosedMidResponse)),
                Ok(_) => {}
                Err(e) if nothing_yet && is_reset(&e) => {
                    return Poll::Ready(Err(Http1Error::ClosedBeforeResponse))
                }
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    }
}

impl<F> Sending<F>
where
    F: FnOnce(Conn) + Send + Unpin + 'static,
{
    /// The response for `head`, its body reading on from what is buffered.
    fn respond(&mut self, mut head: Head) -> Result<Response<ResponseBody<F>>, Http1Error> {
        let (framing, reusable) = response_framing(&mut head, self.head_request)?;
        let writing = !self.write_failed && !self.writer.is_done();
        let mut body = ResponseBody {
            io: self.io.take(),
            buf: std::mem::take(&mut self.buf),
            framing,
            // A response that came before the whole request was written leaves it unknown
            // whether the app will read the rest as this request's or as the next one's (an
            // app that answered early and neither reads on nor closes): its connection is not
            // used again, whatever the rest of the request does.
            reusable: reusable && !self.write_failed && self.writer.all_sent(),
            // The rest of the request goes out as the response is read, as a full-duplex app
            // expects.
            writer: writing.then(|| std::mem::replace(&mut self.writer, RequestWriter::done())),
            on_idle: self.on_idle.take(),
            next_read: MIN_READ,
            options: self.options,
        };
        if matches!(framing, BodyFraming::Ended | BodyFraming::Length(0)) {
            body.end();
        }
        let mut response = Response::new(body);
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }
}

/// Whether a read error says the app reset the connection.
fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// The app's response body, read from the connection it came on.
pub struct ResponseBody<F> {
    /// `None` once the body has ended or failed (the connection went back, or closed).
    io: Option<TcpStream>,
    buf: BytesMut,
    framing: BodyFraming,
    reusable: bool,
    /// The rest of a request still being written.
    writer: Option<RequestWriter>,
    on_idle: Option<F>,
    next_read: usize,
    options: Options,
}

impl<F> std::fmt::Debug for ResponseBody<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody")
            .field("framing", &self.framing)
            .field("reusable", &self.reusable)
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

/// Writes the rest of a request whose response has ended, then hands its connection on.
async fn finish<F: FnOnce(Conn)>(
    mut io: TcpStream,
    mut writer: RequestWriter,
    within: Duration,
    on_idle: Option<F>,
) {
    let written = poll_fn(|cx| writer.poll_write(&mut io, cx));
    if let (Ok(Ok(())), Some(on_idle)) = (tokio::time::timeout(within, written).await, on_idle) {
        on_idle(Conn { io });
    }
}

impl<F: FnOnce(Conn) + Send + 'static> ResponseBody<F> {
    /// The body has ended: its connection goes back if nothing about it is in doubt. A
    /// request the app answered before its end still goes out (the app may read it, as
    /// hyper's client let it), within `finish_within`; the connection then closes, unless
    /// all its bytes had gone before the response (only its end was awaited).
    fn end(&mut self) {
        self.framing = BodyFraming::Ended;
        let Some(io) = self.io.take() else {
            return;
        };
        let on_idle = self
            .on_idle
            .take()
            .filter(|_| self.reusable && self.buf.is_empty());
        match (self.writer.take(), on_idle) {
            (None, Some(on_idle)) => on_idle(Conn { io }),
            (None, None) => {}
            (Some(writer), on_idle) => {
                tokio::spawn(finish(io, writer, self.options.finish_within, on_idle));
            }
        }
    }

    /// Writes what it can of a request still going out; an error if the request itself
    /// failed (the app would wait for the rest of it).
    fn drive_writer(&mut self, cx: &mut Context<'_>) -> Result<(), Http1Error> {
        let (Some(writer), Some(io)) = (self.writer.as_mut(), self.io.as_mut()) else {
            return Ok(());
        };
        match writer.poll_write(io, cx) {
            Poll::Pending => Ok(()),
            Poll::Ready(Ok(())) => {
                self.writer = None;
                Ok(())
            }
            // The app stopped reading, and answered already: the rest of the request is
            // dropped, and the connection with it once the answer is in.
            Poll::Ready(Err(WriteError::Io)) => {
                self.writer = None;
                self.reusable = false;
                Ok(())
            }
            Poll::Ready(Err(WriteError::Request(e))) => Err(e),
        }
    }

    /// Reads more of the response into the buffer; `Ok(0)` at the connection's end.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<usize, Http1Error>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(self.next_read);
        let space = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(io),
            cx,
            &mut self.buf
        ))?;
        if n == space {
            self.next_read = (self.next_read * 2).min(MAX_READ);
        }
        Poll::Ready(Ok(n))
    }

    /// Reads more of the response; the connection's end is an error here.
    fn poll_more(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Http1Error>> {
        match ready!(self.poll_read(cx))? {
            0 => Poll::Ready(Err(Http1Error::ClosedMidResponse)),
            _ => Poll::Ready(Ok(())),
        }
    }

    /// Up to `left` bytes of data from the buffer (read first if it is empty).
    fn poll_data(&mut self, cx: &mut Context<'_>, left: u64) -> Poll<Result<Bytes, Http1Error>> {
        if self.buf.is_empty() && ready!(self.poll_read(cx))? == 0 {
            return Poll::Ready(Err(Http1Error::ClosedMidResponse));
        }
        let take = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(self.buf.len());
        Poll::Ready(Ok(self.buf.split_to(take).freeze()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        loop {
            match self.framing {
                BodyFraming::Ended => return Poll::Ready(None),
                BodyFraming::Length(left) => {
                    let data = ready!(self.poll_data(cx, left))?;
                    let left = left - data.len() as u64;
                    self.framing = BodyFraming::Length(left);
                    if left == 0 {
                        self.end();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::UntilClose => {
                    if self.buf.is_empty() && ready!(self.poll_read(cx))? == 0 {
                        self.reusable = false;
                        self.end();
                        return Poll::Ready(None);
                    }
                    let data = self.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::Chunked(Chunk::Size) => {
                    let Some(line) = memchr::memchr(b'\n', &self.buf) else {
                        if self.buf.len() > MAX_CHUNK_LINE {
                            return Poll::Ready(Some(Err(Http1Error::Invalid(
                                "a chunk-size line is too long",
                            ))));
                        }
                        ready!(self.poll_more(cx))?;
                        continue;
                    };
                    let size = chunk_size(&self.buf[..=line])?;
                    self.buf.advance(line + 1);
                    self.framing = BodyFraming::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                BodyFraming::Chunked(Chunk::Data(left)) => {
                    let data = ready!(self.poll_data(cx, left))?;
                    let left = left - data.len() as u64;
                    self.framing = BodyFraming::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                BodyFraming::Chunked(Chunk::DataEnd) => {
                    if self.buf.len() < 2 {
                        ready!(self.poll_more(cx))?;
                        continue;
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Poll::Ready(Some(Err(Http1Error::Invalid(
                            "a chunk's data does not end with CRLF",
                        ))));
                    }
                    self.buf.advance(2);
                    self.framing = BodyFraming::Chunked(Chunk::Size);
                }
                BodyFraming::Chunked(Chunk::Trailers) => {
                    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    match httparse::parse_headers(&self.buf, &mut fields) {
                        Ok(httparse::Status::Complete((len, fields))) => {
                            let trailers = trailers(fields)?;
                            self.buf.advance(len);
                            self.end();
                            return Poll::Ready(
                                (!trailers.is_empty()).then(|| Ok(Frame::trailers(trailers))),
                            );
                        }
                        Ok(httparse::Status::Partial)
                            if self.buf.len() >= self.options.max_head =>
                        {
                            let max = self.options.max_head;
                            return Poll::Ready(Some(Err(Http1Error::HeadTooLarge(max))));
                        }
                        Ok(httparse::Status::Partial) => {
                            ready!(self.poll_more(cx))?;
                        }
                        Err(e) => return Poll::Ready(Some(Err(Http1Error::Malformed(e)))),
                    }
                }
            }
        }
    }
}

impl<F: FnOnce(Conn) + Send + Unpin + 'static> Body for ResponseBody<F> {
    type Data = Bytes;
    type Error = Http1Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Http1Error>>> {
        let this = self.get_mut();
        let frame = match this.drive_writer(cx) {
            Ok(()) => ready!(this.poll_next(cx)),
            Err(e) => Some(Err(e)),
        };
        if let Some(Err(_)) = frame {
            // Where the response stands is unknown: the connection closes.
            this.io = None;
            this.framing = BodyFraming::Ended;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.framing == BodyFraming::Ended
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            BodyFraming::Length(n) => SizeHint::with_exact(n),
            BodyFraming::Ended => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// The size of a chunk from its line (`\n` included): hex digits, then nothing or
/// extensions (ignored) after a `;`, spaces or tabs allowed before it; the line must end
/// with CRLF, and hold no other CR.
fn chunk_size(line: &[u8]) -> Result<u64, Http1Error> {
    let invalid = Http1Error::Invalid("a chunk-size line");
    if line.len() > MAX_CHUNK_LINE {
        return Err(Http1Error::Invalid("a chunk-size line is too long"));
    }
    let line = line
        .strip_suffix(b"\r\n")
        .filter(|l| !l.contains(&b'\r'))
        .ok_or(Http1Error::Invalid(
            "a chunk-size line does not end with CRLF",
        ))?;
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    // Leading zeros are allowed however many; at most 16 digits after them fit a u64.
    let zeros = line[..digits].iter().take_while(|&&b| b == b'0').count();
    if digits == 0 || digits - zeros > 16 {
        return Err(invalid);
    }
    let rest = &line[digits..];
    let blanks = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    if !(rest.len() == blanks || rest[blanks] == b';') {
        return Err(invalid);
    }
    if digits == zeros {
        return Ok(0);
    }
    let hex = std::str::from_utf8(&line[zeros..digits]).map_err(|_| invalid)?;
    u64::from_str_radix(hex, 16).map_err(|_| Http1Error::Invalid("a chunk size"))
}

/// A chunked body's trailer fields as a header map, without the connection-specific ones
/// HTTP/2 refuses (RFC 9113, 8.2.2), which would reset the caller's stream.
fn trailers(fields: &[httparse::Header<'_>]) -> Result<HeaderMap, Http1Error> {
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| Http1Error::Invalid("a trailer field name"))?;
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || name == header::UPGRADE
            || name == header::TE
            || name.as_str() == "keep-alive"
            || name.as_str() == "proxy-connection"
        {
            continue;
        }
        let value = HeaderValue::from_bytes(field.value)
            .map_err(|_| Http1Error::Invalid("a trailer field value"))?;
        trailers.append(name, value);
    }
    Ok(trailers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{boxed, empty};
    use http_body_util::{BodyExt, Full};
    use std::convert::Infallible;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    /// A request body fed through a channel.
    struct ChannelBody(mpsc::Receiver<Frame<Bytes>>);

    impl Body for ChannelBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            self.0.poll_recv(cx).map(|frame| frame.map(Ok))
        }
    }

    fn channel_body() -> (mpsc::Sender<Frame<Bytes>>, ProxyBody) {
        let (tx, rx) = mpsc::channel(4);
        (tx, boxed(ChannelBody(rx)))
    }

    /// An app on 127.0.0.1:0 that takes one connection, reads a request head, and hands the
    /// socket and the head to `script`.
    async fn app<F, Fut>(script: F) -> SocketAddr
    where
        F: FnOnce(TcpStream, String) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let head = read_head(&mut tcp).await;
            script(tcp, head).await;
        });
        addr
    }

    /// Reads up to and including a blank line, a byte at a time (so nothing after it).
    async fn read_head(tcp: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(tcp.read_u8().await.unwrap());
        }
        String::from_utf8(head).unwrap()
    }

    /// Whether a connection came back, and the connection.
    type Returned = Arc<Mutex<Option<Conn>>>;

    async fn exchange(
        addr: SocketAddr,
        req: Request<ProxyBody>,
    ) -> (
        Result<Response<ResponseBody<impl FnOnce(Conn) + Send + Unpin>>, Http1Error>,
        Returned,
    ) {
        let conn = Conn::new(TcpStream::connect(addr).await.unwrap());
        let returned = Returned::default();
        let back = returned.clone();
        let on_idle = move |conn| *back.lock().unwrap() = Some(conn);
        let options = Options {
            max_head: 64 * 1024,
            finish_within: std::time::Duration::from_secs(60),
        };
        let sending = send(conn, encode(req, addr), options, on_idle);
        (sending.await, returned)
    }

    fn get(path: &str) -> Request<ProxyBody> {
        Request::get(format!("http://app.example{path}"))
            .body(empty())
            .unwrap()
    }

    /// Reads a whole body: its data, and its trailers if any.
    async fn collect<B: Body<Data = Bytes> + Unpin>(
        body: B,
    ) -> Result<(String, Option<HeaderMap>), B::Error> {
        let collected = body.collect().await?;
        let trailers = collected.trailers().cloned();
        Ok((
            String::from_utf8(collected.to_bytes().to_vec()).unwrap(),
            trailers,
        ))
    }

    #[tokio::test]
    async fn responses_are_framed_as_rfc_9112_says_and_reused_only_when_clean() {
        // (response, request method, body, trailer, kept for another request)
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            ("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", "GET", "hello", None, true),
            ("HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\nhello", "GET", "hello", None, true),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5 ;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
                "GET",
                "hello world",
                None,
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\ngrpc-status: 0\r\n\r\n",
                "GET",
                "ok",
                Some("0"),
                true,
            ),
            ("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", "GET", "ok", None, true),
            ("HTTP/1.1 204 No Content\r\n\r\n", "GET", "", None, true),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0000000000000000005\r\nhello\r\n0\r\n\r\n",
                "GET",
                "hello",
                None,
                true,
            ),
            // Connection-specific trailers (HTTP/2 refuses them) are dropped, the rest kept.
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nconnection: x\r\ngrpc-status: 0\r\nkeep-alive: 5\r\nte: gzip\r\n\r\n",
                "GET",
                "ok",
                Some("0"),
                true,
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n", "HEAD", "", None, true),
            ("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", "GET", "", None, true),
            // Not reusable: the app says so, an old version, no length, framing in doubt,
            // bytes after the response.
            ("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", "GET", "ok", None, false),
            ("HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok", "GET", "ok", None, false),
            ("HTTP/1.1 200 OK\r\n\r\nuntil the end", "GET", "until the end", None, false),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 99\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
                "GET",
                "ok",
                None,
                false,
            ),
            ("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA", "GET", "ok", None, false),
            // A 204 that speaks of a body may send one after it.
            ("HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n", "GET", "", None, false),
        ];
        for &(raw, method, body, trailer, reused) in cases {
            let addr = app(move |mut tcp, _| async move {
                tcp.write_all(raw.as_bytes()).await.unwrap();
                if !reused {
                    // What is not reused ends with the connection (as a body read to the
                    // end needs); the rest stays open.
                    return;
                }
                let _ = tcp.read_u8().await;
            })
            .await;
            let req = Request::builder()
                .method(method)
                .uri(format!("http://{addr}/"))
                .body(empty())
                .unwrap();
            let (response, returned) = exchange(addr, req).await;
            let response = response.unwrap_or_else(|e| panic!("{raw:?}: {e}"));
            let headers = response.headers().clone();
            let (data, trailers) = collect(response.into_body()).await.unwrap();
            assert_eq!(data, body, "{raw}");
            if let Some(trailers) = &trailers {
                assert_eq!(trailers.len(), 1, "{raw}: only grpc-status: {trailers:?}");
            }
            assert_eq!(
                trailers
                    .as_ref()
                    .and_then(|t| t.get("grpc-status"))
                    .map(|v| v.to_str().unwrap()),
                trailer,
                "{raw}"
            );
            assert_eq!(returned.lock().unwrap().is_some(), reused, "{raw}");
            let lengths: Vec<_> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
            assert!(lengths.len() <= 1, "{raw}: {lengths:?}");
            if headers.contains_key(header::TRANSFER_ENCODING) {
                assert!(lengths.is_empty(), "{raw}: a length beside chunked");
            }
        }
    }

    #[tokio::test]
    async fn responses_that_cannot_be_forwarded_safely_are_errors() {
        // (response, the error's text, when: at the head or in the body)
        let cases: &[(&str, &str, bool)] = &[
            ("HTTX/1.1 200 OK\r\n\r\n", "malformed", true),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
                "two different",
                true,
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
                "not a number",
                true,
            ),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", "101", true),
            (
                "HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                "HTTP/1.0",
                true,
            ),
            ("", "before it answered", true),
            ("HTTP/1.1 200 OK\r\ncontent-le", "middle", true),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok",
                "middle",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "chunk-size line",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\nok\r\n",
                "CRLF",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\r\nok\r\n",
                "CRLF",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2 x\r\nok\r\n",
                "chunk-size line",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX",
                "CRLF",
                false,
            ),
            (
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n",
                "middle",
                false,
            ),
        ];
        for &(raw, error, at_head) in cases {
            let addr = app(move |mut tcp, _| async move {
                tcp.write_all(raw.as_bytes()).await.unwrap();
            })
            .await;
            let (answer, returned) = exchange(addr, get("/")).await;
            let error_text = match answer {
                Err(e) => {
                    assert!(at_head, "{raw}: failed at the head: {e}");
                    e.to_string()
                }
                Ok(response) => {
                    assert!(!at_head, "{raw}: answered with {response:?}");
                    collect(response.into_body()).await.unwrap_err().to_string()
                }
            };
            assert!(error_text.contains(error), "{raw}: {error_text}");
            assert!(returned.lock().unwrap().is_none(), "{raw}");
        }
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused() {
        let addr = app(|mut tcp, _| async move {
            let big = format!("HTTP/1.1 200 OK\r\nx-big: {}\r\n\r\n", "y".repeat(70_000));
            let _ = tcp.write_all(big.as_bytes()).await;
        })
        .await;
        let (answer, _) = exchange(addr, get("/")).await;
        assert!(
            matches!(answer, Err(Http1Error::HeadTooLarge(65536))),
            "{answer:?}"
        );
    }

    #[test]
    fn requests_are_encoded_in_origin_form_with_their_framing() {
        let with = |method: &str, path: &str, headers: &[(&str, &str)], body: ProxyBody| {
            let mut req = Request::builder()
                .method(method)
                .uri(format!("http://app.example{path}"));
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            encode(req.body(body).unwrap(), "127.0.0.1:8080".parse().unwrap())
        };
        let (_, streaming) = channel_body();
        // (request, head, retryable)
        let cases = [
            (
                with("GET", "/a?b=1", &[], empty()),
                "GET /a?b=1 HTTP/1.1\r\nhost: 127.0.0.1:8080\r\n\r\n",
                true,
            ),
            (
                with("GET", "", &[("host", "svc")], empty()),
                "GET / HTTP/1.1\r\nhost: svc\r\n\r\n",
                true,
            ),
            (
                with("POST", "/p", &[("host", "svc")], empty()),
                "POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 0\r\n\r\n",
                false,
            ),
            (
                with(
                    "PUT",
                    "/p",
                    &[("host", "svc"), ("transfer-encoding", "chunked")],
                    boxed(Full::new(Bytes::from("abc"))),
                ),
                "PUT /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 3\r\n\r\n",
                false,
            ),
            (
                with(
                    "POST",
                    "/p",
                    &[("host", "svc"), ("content-length", "7")],
                    streaming,
                ),
                "POST /p HTTP/1.1\r\nhost: svc\r\ncontent-length: 7\r\n\r\n",
                false,
            ),
            (
                with("GET", "/g", &[("host", "svc")], channel_body().1),
                "GET /g HTTP/1.1\r\nhost: svc\r\n\r\n",
                true,
            ),
            (
                with("DELETE", "/d", &[("host", "svc")], empty()),
                "DELETE /d HTTP/1.1\r\nhost: svc\r\n\r\n",
                false,
            ),
            (
                with("POST", "/p", &[("host", "svc")], channel_body().1),
                "POST /p HTTP/1.1\r\nhost: svc\r\ntransfer-encoding: chunked\r\n\r\n",
                false,
            ),
        ];
        for (encoded, head, retryable) in cases {
            assert_eq!(std::str::from_utf8(&encoded.head).unwrap(), head);
            assert_eq!(encoded.retryable, retryable, "{head}");
        }
    }

    #[tokio::test]
    async fn a_chunked_request_body_reaches_the_app_and_its_trailers_do_not() {
        let (seen_tx, seen) = tokio::sync::oneshot::channel();
        let addr = app(|mut tcp, head| async move {
            let mut body = Vec::new();
            while !body.ends_with(b"\r\n\r\n") {
                body.push(tcp.read_u8().await.unwrap());
            }
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            let _ = seen_tx.send((head, String::from_utf8(body).unwrap()));
            let _ = tcp.read_u8().await;
        })
        .await;
        let (tx, body) = channel_body();
        tx.send(Frame::data(Bytes::from("hello"))).await.unwrap();
        tx.send(Frame::data(Bytes::from(" world!"))).await.unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert(
            "x-warden-client-id",
            HeaderValue::from_static("spiffe://forged"),
        );
        tx.send(Frame::trailers(trailers)).await.unwrap();
        drop(tx);
        let req = Request::post(format!("http://{addr}/up"))
            .body(body)
            .unwrap();
        let (response, returned) = exchange(addr, req).await;
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.body().is_end_stream());
        let (head, body) = seen.await.unwrap();
        assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
        assert_eq!(body, "5\r\nhello\r\n7\r\n world!\r\n0\r\n\r\n");
        assert!(returned.lock().unwrap().is_some());
    }

    #[tokio::test]
    async fn a_request_answered_before_its_chunked_end_still_goes_out_then_its_connection_closes() {
        let (seen_tx, seen) = tokio::sync::oneshot::channel();
        let addr = app(|mut tcp, _| async move {
            // Answers at once, then reads the upload.
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let mut body = Vec::new();
            while !body.ends_with(b"0\r\n\r\n") {
                body.push(tcp.read_u8().await.unwrap());
            }
            let _ = seen_tx.send(String::from_utf8(body).unwrap());
            let _ = tcp.read_u8().await;
        })
        .await;
        let (tx, body) = channel_body();
        let req = Request::post(format!("http://{addr}/up"))
            .body(body)
            .unwrap();
        let (response, returned) = exchange(addr, req).await;
        let (data, _) = collect(response.unwrap().into_body()).await.unwrap();
        assert_eq!(data, "ok");
        assert!(
            returned.lock().unwrap().is_none(),
            "the request has not ended"
        );
        tx.send(Frame::data(Bytes::from("rest"))).await.unwrap();
        drop(tx);
        assert_eq!(seen.await.unwrap(), "4\r\nrest\r\n0\r\n\r\n");
        // Both ended cleanly, but the answer came before the request was written: the app
        // might have taken the rest for a next request.
        assert!(returned.lock().unwrap().is_none(), "not reused");
    }

    #[tokio::test]
    async fn a_request_body_shorter_than_its_length_fails_the_exchange() {
        let addr = app(|mut tcp, _| async move {
            let _ = tcp.read_u8().await;
        })
        .await;
        let (tx, body) = channel_body();
        tx.send(Frame::data(Bytes::from("abc"))).await.unwrap();
        drop(tx);
        let req = Request::post(format!("http://{addr}/"))
            .header(header::CONTENT_LENGTH, "10")
            .body(body)
            .unwrap();
        let (answer, _) = exchange(addr, req).await;
        assert!(
            matches!(answer, Err(Http1Error::RequestLength(10))),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn a_full_duplex_app_gets_the_request_body_as_its_response_streams() {
        // The app answers at once, then echoes the body it receives after that: the body
        // is sent only once the response's head is in.
        let addr = app(|mut tcp, _| async move {
            tcp.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let mut echoed = Vec::new();
            while !echoed.ends_with(b"0\r\n\r\n") {
                let byte = tcp.read_u8().await.unwrap();
                echoed.push(byte);
            }
            tcp.write_all(&echoed).await.unwrap();
            let _ = tcp.read_u8().await;
        })
        .await;
        let (tx, body) = channel_body();
        let req = Request::post(format!("http://{addr}/echo"))
            .body(body)
            .unwrap();
        let (response, returned) = exchange(addr, req).await;
        let response = response.unwrap();
        tx.send(Frame::data(Bytes::from("ping"))).await.unwrap();
        drop(tx);
        let (data, _) = collect(response.into_body()).await.unwrap();
        assert_eq!(data, "ping");
        // Answered before its request was written: not used for another.
        assert!(returned.lock().unwrap().is_none(), "not reused");
    }

    #[tokio::test]
    async fn an_early_answer_ends_the_exchange_and_closes_the_connection() {
        // The app answers before the request's body, then reads whatever comes until the
        // connection closes. Were the connection reused, it would not close, and the body
        // would be read as the next request (an app that answered early and reads on).
        let (seen_tx, seen) = tokio::sync::oneshot::channel::<Vec<u8>>();
        let addr = app(|mut tcp, _| async move {
            tcp.write_all(b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\n\r\nbig")
                .await
                .unwrap();
            let mut rest = Vec::new();
            let _ = tcp.read_to_end(&mut rest).await;
            let _ = seen_tx.send(rest);
        })
        .await;
        let (tx, body) = channel_body();
        let req = Request::post(format!("http://{addr}/"))
            .header(header::CONTENT_LENGTH, "4")
            .body(body)
            .unwrap();
        let (response, returned) = exchange(addr, req).await;
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let (data, _) = collect(response.into_body()).await.unwrap();
        assert_eq!(data, "big");
        // The rest of the request still goes out (the app may read it), then the connection
        // closes.
        tx.send(Frame::data(Bytes::from_static(b"more")))
            .await
            .unwrap();
        drop(tx);
        let rest = tokio::time::timeout(Duration::from_secs(10), seen)
            .await
            .expect("the connection closed")
            .unwrap();
        assert_eq!(rest, b"more");
        assert!(returned.lock().unwrap().is_none(), "not reused");
    }

    #[tokio::test]
    async fn a_request_all_written_whose_end_comes_after_the_answer_keeps_its_connection() {
        // Every byte of the body went before the answer; only its end (an END_STREAM after
        // the last DATA) came after: nothing is in doubt.
        let (body_read_tx, body_read) = tokio::sync::oneshot::channel::<()>();
        let addr = app(|mut tcp, _| async move {
            let mut body = [0u8; 4];
            tcp.read_exact(&mut body).await.unwrap();
            assert_eq!(&body, b"data");
            let _ = body_read_tx.send(());
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = tcp.read_u8().await;
        })
        .await;
        let (tx, body) = channel_body();
        tx.send(Frame::data(Bytes::from_static(b"data")))
            .await
            .unwrap();
        let req = Request::post(format!("http://{addr}/"))
            .header(header::CONTENT_LENGTH, "4")
            .body(body)
            .unwrap();
        let (response, returned) = exchange(addr, req).await;
        body_read.await.unwrap();
        let (data, _) = collect(response.unwrap().into_body()).await.unwrap();
        assert_eq!(data, "ok");
        drop(tx);
        let back = tokio::time::timeout(Duration::from_secs(10), async {
            while returned.lock().unwrap().is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(back.is_ok(), "the connection came back once the body ended");
    }

    #[test]
    fn expect_is_not_passed_to_the_app() {
        let req = Request::post("http://app.example/up")
            .header(header::EXPECT, "100-continue")
            .header("x-kept", "1")
            .body(empty())
            .unwrap();
        let encoded = encode(req, "127.0.0.1:8080".parse().unwrap());
        let head = String::from_utf8(encoded.head.to_vec()).unwrap();
        assert!(!head.to_ascii_lowercase().contains("expect"), "{head}");
        assert!(head.contains("x-kept: 1"), "{head}");
    }

    #[tokio::test]
    async fn an_idle_connection_is_usable_until_the_app_closes_it() {
        let (close_tx, close) = tokio::sync::oneshot::channel::<()>();
        let (closed_tx, closed) = tokio::sync::oneshot::channel::<()>();
        let addr = app(|mut tcp, _| async move {
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .await
                .unwrap();
            let _ = close.await;
            drop(tcp);
            let _ = closed_tx.send(());
        })
        .await;
        let (response, returned) = exchange(addr, get("/")).await;
        collect(response.unwrap().into_body()).await.unwrap();
        let conn = returned.lock().unwrap().take().unwrap();
        assert!(conn.is_usable());
        close_tx.send(()).unwrap();
        closed.await.unwrap();
        // Once the end has reached this side's readiness.
        conn.io.readable().await.unwrap();
        assert!(!conn.is_usable());
    }
}
