//! HTTP plumbing shared by both directions: the body type, hop-by-hop headers, and the one
//! place where proxy errors become HTTP (or gRPC) responses.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};

/// Errors inside bodies are boxed: they come from hyper, TLS or our own code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every proxied request and response.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes any body into a [`ProxyBody`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    boxed(http_body_util::Empty::<Bytes>::new())
}

/// The URI a request is forwarded with: `http://{authority}{path_and_query}`, from parts
/// already parsed (formatting them to a string and parsing it again cost ~300 instructions
/// a request).
pub fn forwarded_uri(
    authority: Authority,
    path_and_query: PathAndQuery,
) -> Result<Uri, ProxyError> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority);
    uri.path_and_query = Some(path_and_query);
    Uri::from_parts(uri).map_err(|e| ProxyError::BadRequest(e.to_string()))
}

/// Refuses an authority-form request target (`GET example.org HTTP/1.1`) on anything but
/// CONNECT (RFC 9112 section 3.2.3), instead of guessing a path for it.
pub fn check_target<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let uri = req.uri();
    if uri.scheme().is_none() && uri.authority().is_some() && req.method() != Method::CONNECT {
        return Err(ProxyError::BadRequest(format!(
            "request target {uri:?} is not a path"
        )));
    }
    Ok(())
}

/// Why the proxy answered a request itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The destination refused the connection or could not be reached.
    #[error("{target} is unreachable: {reason}")]
    Unreachable {
        /// Where.
        target: String,
        /// Why.
        reason: String,
    },
    /// Connecting took longer than the connect timeout.
    #[error("connecting to {0} timed out")]
    ConnectTimeout(String),
    /// The mTLS handshake with the peer proxy failed (including its identity check).
    #[error("mTLS with {target} failed: {reason}")]
    Tls {
        /// Where.
        target: String,
        /// Why.
        reason: String,
    },
    /// No response headers within the response timeout.
    #[error("no response within {0:?}")]
    ResponseTimeout(std::time::Duration),
    /// The upstream connection failed mid-request; says which upstream and why.
    #[error("{0}")]
    Upstream(String),
    /// The request is malformed for proxying.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The authorization hook denied it.
    #[error("denied")]
    Denied {
        /// The policy that decided (for the logs, never the client).
        policy: String,
    },
    /// Its audit record could not be kept and `audit_failure` is `deny` (fail closed).
    #[error("the audit log is unavailable")]
    AuditUnavailable,
}

/// `error` and its sources, joined by `: ` (hyper's own text is only the outermost layer,
/// e.g. `client error (SendRequest)`).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

impl ProxyError {
    /// The HTTP status for this error (DESIGN.md: unreachable 502, timeout 504, denied 403).
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Unreachable { .. } | ProxyError::Tls { .. } | ProxyError::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::ConnectTimeout(_) | ProxyError::ResponseTimeout(_) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Denied { .. } => StatusCode::FORBIDDEN,
            ProxyError::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The gRPC status code for this error: UNAVAILABLE, DEADLINE_EXCEEDED, INTERNAL or
    /// PERMISSION_DENIED.
    pub fn grpc_status(&self) -> u8 {
        match self {
            ProxyError::Unreachable { .. } | ProxyError::Tls { .. } | ProxyError::Upstream(_) => 14,
            ProxyError::ConnectTimeout(_) | ProxyError::ResponseTimeout(_) => 4,
            ProxyError::BadRequest(_) => 13,
            ProxyError::Denied { .. } => 7,
            ProxyError::AuditUnavailable => 14,
        }
    }

    /// The response the app's client gets: a short body and the request id; gRPC clients get
    /// HTTP 200 with `grpc-status` so their libraries report the right code. Denials say
    /// nothing about which policy decided.
    pub fn to_response(&self, grpc: bool, request_id: &str) -> Response<ProxyBody> {
        let message = match self {
            ProxyError::Denied { .. } => "forbidden by policy".to_string(),
            other => other.to_string(),
        };
        let mut resp = if grpc {
            let mut r = Response::new(empty());
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            h.insert(
                "grpc-status",
                HeaderValue::from(u16::from(self.grpc_status())),
            );
            if let Ok(v) = HeaderValue::from_str(&percent_encode(&message)) {
                h.insert("grpc-message", v);
            }
            r
        } else {
            let mut r = Response::new(boxed(Full::new(Bytes::from(format!("{message}\n")))));
            *r.status_mut() = self.status();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            r
        };
        if let Ok(v) = HeaderValue::from_str(request_id) {
            resp.headers_mut().insert(names::REQUEST_ID, v);
        }
        resp
    }
}

/// gRPC's `grpc-message` is percent-encoded (RFC 3986 unreserved characters kept).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b' '..=b'~' if b != b'%' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether a request is gRPC (its errors are reported as gRPC statuses).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// A new request id (16 hex digits), unique within the process: a counter started at a
/// random point, through a bijective mixer (SplitMix64's finalizer) so ids look unrelated.
/// Ids only label logs and responses; nothing relies on them being secret. (The system RNG
/// per request cost ~2,000 instructions: an AES key set-up each.)
pub fn request_id() -> String {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let mut seed = [0u8; 8];
        // On the (theoretical) failure of the system RNG the ids start at 0: they only label
        // logs and responses.
        let _ = aws_lc_rs::rand::fill(&mut seed);
        std::sync::atomic::AtomicU64::new(u64::from_le_bytes(seed))
    });
    let mut x = next
        .fetch_add(0x9e37_79b9_7f4a_7c15, std::sync::atomic::Ordering::Relaxed)
        .wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, digit) in digits.iter_mut().enumerate() {
        *digit = HEX[((x >> ((15 - i) * 4)) & 0xf) as usize];
    }
    // ASCII digits: always valid, so this borrows, then copies once (pushing them one by
    // one as `char`s cost ~170 more instructions a request).
    String::from_utf8_lossy(&digits).into_owned()
}

/// The HTTP/1 server both proxies run for plaintext callers (the app, outbound; a caller
/// without a sidecar, inbound): a request head must arrive within the idle timeout and fit
/// in `max_header_bytes`.
pub fn http1_server(config: &crate::config::ProxyConfig) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(config.timeouts.idle)
        .max_buf_size(config.limits.max_header_bytes.max(8192));
    builder
}

/// The hop-by-hop headers: they describe one connection and must not be forwarded (RFC 9110
/// section 7.6.1, and the legacy ones proxies drop; HTTP/2 forbids them). A `static`, not
/// a `const`: a `const` array of `HeaderName`s would be built and dropped again at each
/// place that uses it.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];

/// Whether a name `len` bytes long may be one of [`HOP_BY_HOP`]: a cheap screen, since most
/// names are none of them.
fn hop_by_hop_length(len: usize) -> bool {
    matches!(len, 7 | 10 | 16..=18)
}

/// Whether `token` (a name `Connection` lists, any case) is one of [`HOP_BY_HOP`].
fn is_hop_by_hop_token(token: &[u8]) -> bool {
    HOP_BY_HOP
        .iter()
        .any(|h| h.as_str().as_bytes().eq_ignore_ascii_case(token))
}

/// Warden's own headers (`warden_core::contract::headers`) as `HeaderName`s made at compile
/// time: a header map given a `&str` name parses and validates it again on every insert or
/// removal (~550 instructions each, callgrind), and these are used on every request.
pub mod names {
    use http::header::HeaderName;
    use warden_core::contract::headers;

    /// [`headers::CLIENT_ID`].
    pub const CLIENT_ID: HeaderName = HeaderName::from_static(headers::CLIENT_ID);
    /// [`headers::TLS`].
    pub const TLS: HeaderName = HeaderName::from_static(headers::TLS);
    /// [`headers::ORIG_PROTO`].
    pub const ORIG_PROTO: HeaderName = HeaderName::from_static(headers::ORIG_PROTO);
    /// [`headers::REQUEST_ID`].
    pub const REQUEST_ID: HeaderName = HeaderName::from_static(headers::REQUEST_ID);
}

/// Removes hop-by-hop headers, and those the `Connection` header names. `TE: trailers` is
/// kept (gRPC needs it); other `TE` values are dropped.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names present, with no allocation and no hashing unless something is
    // to go: this runs on every message at each proxy, and most carry one hop-by-hop header
    // (`Connection`) or none.
    let mut present = 0u8; // bit i: HOP_BY_HOP[i] is present
    let mut te = false;
    // A header named `close` goes if `Connection: close` lists it, as any other would.
    let mut close_header = false;
    for name in headers.keys() {
        let len = name.as_str().len();
        if len == 2 {
            te |= name == header::TE;
        } else if len == 5 {
            close_header |= name.as_str() == "close";
        } else if hop_by_hop_length(len) {
            if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
                present |= 1 << i;
            }
        }
    }
    if present & 1 != 0 {
        // The names `Connection` lists go too: rarely any beyond those above (`TE` is
        // decided below).
        let others = |t: &&[u8]| {
            !t.is_empty()
                && (close_header || !t.eq_ignore_ascii_case(b"close"))
                && !t.eq_ignore_ascii_case(b"te")
                && !is_hop_by_hop_token(t)
        };
        // `keep-alive` and `close` (nearly every `Connection` header) are read as they are.
        let plain = |v: &HeaderValue| {
            let v = v.as_bytes();
            v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
        };
        let lists_others = (close_header || !headers.get_all(header::CONNECTION).iter().all(plain))
            && connection_tokens(headers).any(|t| others(&t));
        if lists_others {
            let listed: Vec<HeaderName> = headers
                .keys()
                .filter(|name| {
                    connection_tokens(headers)
                        .filter(others)
                        .any(|t| t.eq_ignore_ascii_case(name.as_str().as_bytes()))
                })
                .cloned()
                .collect();
            for name in &listed {
                headers.remove(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present & (1 << i) != 0 {
            headers.remove(name);
        }
    }
    if !te {
        return;
    }
    // Several `TE` lines read as one list.
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The tokens of every `Connection` header, trimmed; as bytes, so that a value holding
/// non-ASCII bytes still names the headers it lists.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
}

/// The protocol an HTTP/1.1 request asks to upgrade to (`Connection: upgrade` plus
/// `Upgrade: <proto>`) when the mesh carries it: only `websocket`. Any other upgrade goes as
/// a plain request (its `Upgrade` header is hop-by-hop and dropped): carried as a tunnel,
/// `h2c` above all would let a caller speak HTTP/2 to the app past per-request
/// authorization and header stripping.
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<String> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| v == WEBSOCKET)
}

/// The one protocol carried through upgrades and extended CONNECT (RFC 8441).
pub const WEBSOCKET: &str = "websocket";

/// Joins two sides of an HTTP upgrade once both have switched protocols, relaying bytes
/// until both finish, the connection idles out, or `revoked` resolves (a policy change
/// denies it: both sides are closed). The caller runs it as a task.
pub async fn bridge_upgrades<A, B, EA, EB>(
    first: impl std::future::Future<Output = Result<A, EA>>,
    second: impl std::future::Future<Output = Result<B, EB>>,
    idle: std::time::Duration,
    revoked: impl std::future::Future<Output = ()>,
    what: &'static str,
) where
    A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    EA: std::fmt::Display,
    EB: std::fmt::Display,
{
    let first = async { first.await.map_err(|e| e.to_string()) };
    let second = async { second.await.map_err(|e| e.to_string()) };
    let relay = async {
        match tokio::try_join!(first, second) {
            Ok((a, b)) => {
                if let Err((e, _)) = crate::io::copy_bidirectional(a, b, idle).await {
                    tracing::debug!(error = %e, "{what} upgraded connection ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, "{what} upgrade failed"),
        }
    };
    tokio::select! {
        () = relay => {}
        () = revoked => {}
    }
}

/// The connection an upgrade hands over, once it has.
pub async fn upgraded(
    upgrade: hyper::upgrade::OnUpgrade,
) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, hyper::Error> {
    upgrade.await.map(hyper_util::rt::TokioIo::new)
}

/// A body that runs `on_end` once when its end is handed on (polled, or known ended when
/// dropped); a body that fails or is dropped before its end never runs it.
pub struct OnEnd<B: hyper::body::Body + Unpin, F: FnOnce()> {
    body: B,
    on_end: Option<F>,
}

impl<B: hyper::body::Body + Unpin, F: FnOnce()> OnEnd<B, F> {
    /// `body`, running `on_end` at its end.
    pub fn new(body: B, on_end: F) -> Self {
        Self {
            body,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self) {
        if let Some(f) = self.on_end.take() {
            f();
        }
    }
}

impl<B: hyper::body::Body + Unpin, F: FnOnce() + Unpin> hyper::body::Body for OnEnd<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(std::pin::Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            None => this.end(),
            Some(Ok(_)) if this.body.is_end_stream() => this.end(),
            Some(Err(_)) => this.on_end = None,
            Some(Ok(_)) => {}
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl<B: hyper::body::Body + Unpin, F: FnOnce()> Drop for OnEnd<B, F> {
    fn drop(&mut self) {
        // A server may drop a body it knows has ended (empty, or all of its length read)
        // without polling it to the end.
        if self.body.is_end_stream() {
            self.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        let mut h = map(&[
            ("connection", "keep-alive, x-private"),
            ("keep-alive", "timeout=5"),
            ("x-private", "1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "gzip, trailers"),
            ("content-type", "text/plain"),
            ("x-request-id", "abc"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h
            .iter()
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap()))
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "content-type: text/plain",
                "te: trailers",
                "x-request-id: abc"
            ]
        );
        let mut h = map(&[("te", "gzip")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
        // No `Connection` header: the other hop-by-hop names still go.
        let mut h = map(&[
            ("proxy-connection", "keep-alive"),
            ("trailer", "grpc-status"),
            ("proxy-authenticate", "Basic"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["content-length"]);
        // `TE` named by `Connection` (as HTTP/1.1 asks) still keeps `trailers`.
        let mut h = map(&[("connection", "TE, X-A"), ("te", "trailers"), ("x-a", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["te"]);
        // Only the fixed names, in any case, and several `Connection` headers.
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("connection", "close, X-B"),
            ("keep-alive", "timeout=5"),
            ("x-b", "1"),
            ("x-c", "1"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["x-c"]);
        let untouched = map(&[("content-type", "text/plain"), ("x-a", "1")]);
        let mut h = untouched.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, untouched);
    }

    /// The plain reading of the rule, one header at a time, that `strip_hop_by_hop` must agree
    /// with.
    fn strip_reference(headers: &mut HeaderMap) {
        let listed: Vec<String> = headers
            .get_all(header::CONNECTION)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).to_ascii_lowercase())
            .flat_map(|v| {
                v.split(',')
                    .map(|t| t.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        let te_trailers = headers.get_all(header::TE).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
        });
        let names: Vec<HeaderName> = headers.keys().cloned().collect();
        for name in names {
            if name == header::TE {
                headers.remove(&name);
                if te_trailers {
                    headers.insert(header::TE, HeaderValue::from_static("trailers"));
                }
            } else if HOP_BY_HOP.contains(&name) || listed.iter().any(|t| t == name.as_str()) {
                headers.remove(&name);
            }
        }
    }

    #[test]
    fn hop_by_hop_stripping_agrees_with_the_plain_rule() {
        assert!(HOP_BY_HOP
            .iter()
            .all(|h| hop_by_hop_length(h.as_str().len())));
        let names = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authenticate",
            "transfer-encoding",
            "upgrade",
            "trailer",
            "te",
            "x-a",
            "x-b",
            "content-type",
            "close",
        ];
        let values: [&[u8]; 16] = [
            b"keep-alive",
            b"close",
            b"Keep-Alive",
            b"close, x-a",
            b"X-A, x-b",
            b"te",
            b"TE, x-a",
            b"upgrade",
            b"trailers",
            b"gzip, trailers",
            b"gzip",
            b"",
            b", ,",
            b"x-b , keep-alive",
            b"CLOSE",
            b"x-a, caf\xc3\xa9",
        ];
        // xorshift: the same 20,000 header sets on every run.
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut pick = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..20_000 {
            let mut headers = HeaderMap::new();
            for _ in 0..pick(7) {
                let name = HeaderName::from_static(names[pick(names.len())]);
                let value = HeaderValue::from_bytes(values[pick(values.len())]).unwrap();
                headers.append(name, value);
            }
            let (mut fast, mut plain) = (headers.clone(), headers.clone());
            strip_hop_by_hop(&mut fast);
            strip_reference(&mut plain);
            assert_eq!(fast, plain, "{headers:?}");
        }
    }

    #[test]
    fn upgrades_are_recognized() {
        assert_eq!(
            upgrade_protocol(&map(&[
                ("connection", "keep-alive, Upgrade"),
                ("upgrade", "WebSocket")
            ])),
            Some("websocket".into())
        );
        assert_eq!(upgrade_protocol(&map(&[("upgrade", "websocket")])), None);
        for other in ["h2c", "HTTP/2.0", "tls/1.3"] {
            let asks = map(&[
                ("connection", "Upgrade, HTTP2-Settings"),
                ("upgrade", other),
            ]);
            assert_eq!(upgrade_protocol(&asks), None, "{other} is not carried");
        }
        assert_eq!(upgrade_protocol(&map(&[("connection", "upgrade")])), None);
    }

    #[test]
    fn errors_map_to_status_in_one_place() {
        let cases: Vec<(ProxyError, u16, u8)> = vec![
            (
                ProxyError::Unreachable {
                    target: "x".into(),
                    reason: "refused".into(),
                },
                502,
                14,
            ),
            (
                ProxyError::Tls {
                    target: "x".into(),
                    reason: "bad cert".into(),
                },
                502,
                14,
            ),
            (ProxyError::Upstream("reset".into()), 502, 14),
            (ProxyError::ConnectTimeout("x".into()), 504, 4),
            (
                ProxyError::ResponseTimeout(std::time::Duration::from_secs(1)),
                504,
                4,
            ),
            (ProxyError::BadRequest("x".into()), 400, 13),
            (ProxyError::Denied { policy: "p".into() }, 403, 7),
            (ProxyError::AuditUnavailable, 503, 14),
        ];
        for (err, status, grpc) in cases {
            assert_eq!(err.status().as_u16(), status, "{err}");
            assert_eq!(err.grpc_status(), grpc, "{err}");
            let http = err.to_response(false, "abc123");
            assert_eq!(http.status().as_u16(), status);
            assert_eq!(http.headers()[names::REQUEST_ID], "abc123");
            let grpc_resp = err.to_response(true, "abc123");
            assert_eq!(grpc_resp.status(), 200);
            assert_eq!(
                grpc_resp.headers()["grpc-status"],
                grpc.to_string().as_str()
            );
        }
        let denied = ProxyError::Denied {
            policy: "secret-policy-name".into(),
        }
        .to_response(false, "id");
        assert_eq!(denied.status(), 403);
        assert!(format!("{:?}", denied.headers())
            .find("secret-policy-name")
            .is_none());
    }

    #[test]
    fn request_ids_are_distinct_hex() {
        let a = request_id();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
        assert_ne!(a, request_id());
        let many: std::collections::HashSet<String> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(many.len(), 10_000, "unique");
    }
}
