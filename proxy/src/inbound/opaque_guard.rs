//! Opaque TCP relayed to an app that may speak HTTP: each of the caller's bytes is read, until
//! its first line ends, as the most lenient HTTP/1 server would read it, before it is passed
//! on. A line that turns out to be an HTTP request line would bring the app a request with
//! whatever `x-warden-client-id` the caller wrote (the HTTP path is where a request's
//! headers are replaced), so the connection ends before the bytes that make it one reach the
//! app: at most a line with no version (HTTP/0.9, which has no headers) ever does. Nothing is
//! held: a server-speaks-first protocol goes on while the caller is silent, a short first
//! message is passed on at once, and the first line is checked however late it comes, so
//! waiting out the callers' detect timeout does not get past it.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::detect::{is_tchar, Detection, Protocol};

/// How much of a first line is read: a line that could still be an HTTP request line after
/// this many bytes is refused (fail closed; Go's server takes up to 1 MiB of request line
/// and headers).
pub const MAX_SCANNED: usize = 1024 * 1024;

/// The version marker whose presence makes a first line an HTTP/1 request line (or the
/// HTTP/2 preface's `PRI * HTTP/2.0`), in any case.
const VERSION_MARK: &[u8] = b"HTTP/";

/// The start of a PROXY protocol v1 header (HAProxy's): a text line before the request.
const PROXY_V1: &[u8] = b"PROXY ";
/// The signature of a PROXY protocol v2 header, followed by 4 bytes (version and command,
/// family, and the big-endian length of the addresses that follow).
const PROXY_V2: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a stream's first line, byte by byte, as a lenient HTTP/1 server would: leading
/// whitespace skipped, any token as the method, spaces or tabs after it, and a request line
/// that names an `HTTP/` version before its end. A PROXY protocol header (v1 or v2) first is
/// skipped, as servers that accept one do, and the line after it read instead. Each byte is
/// looked at once, however the bytes are split, so a caller dribbling bytes costs no more
/// than one sending them at once.
#[derive(Debug, Default)]
pub struct FirstLine {
    state: LineState,
    seen: usize,
    /// How many of the first bytes match [`PROXY_V1`] and [`PROXY_V2`].
    proxy_v1: usize,
    proxy_v2: usize,
    /// A PROXY header was skipped: no other may follow.
    proxy_done: bool,
}

#[derive(Debug, Default, Clone, Copy)]
enum LineState {
    /// Whitespace before the method (servers skip empty lines, some any whitespace).
    #[default]
    Leading,
    /// In the method token.
    Method,
    /// After the method; `matched` bytes of [`VERSION_MARK`] seen last; `proxy` for the
    /// line of a PROXY v1 header.
    Rest { matched: usize, proxy: bool },
    /// In a PROXY v2 signature.
    ProxyV2Signature,
    /// In the 4 bytes after it: `got` of them, `length` from the last two.
    ProxyV2Fixed { got: u8, length: usize },
    /// In its addresses: `left` bytes to skip.
    ProxyV2Addresses { left: usize },
}

impl FirstLine {
    /// Takes the next bytes: `Known(Http1)` if the line is an HTTP request line (or could
    /// still be one after [`MAX_SCANNED`] bytes), `Known(Opaque)` once it cannot be one.
    pub fn feed(&mut self, bytes: &[u8]) -> Detection {
        for &b in bytes {
            let at = self.seen;
            self.seen += 1;
            if self.proxy_v1 == at && PROXY_V1.get(at) == Some(&b) {
                self.proxy_v1 += 1;
            }
            if self.proxy_v2 == at && PROXY_V2.get(at) == Some(&b) {
                self.proxy_v2 += 1;
            }
            let v2_so_far = !self.proxy_done && self.proxy_v2 == self.seen;
            self.state = match self.state {
                LineState::Leading if b.is_ascii_whitespace() => LineState::Leading,
                LineState::Leading | LineState::ProxyV2Signature if v2_so_far => {
                    if self.proxy_v2 == PROXY_V2.len() {
                        LineState::ProxyV2Fixed { got: 0, length: 0 }
                    } else {
                        LineState::ProxyV2Signature
                    }
                }
                LineState::ProxyV2Signature => return Detection::Known(Protocol::Opaque),
                LineState::ProxyV2Fixed { got, length } => {
                    let length = if got >= 2 {
                        length << 8 | usize::from(b)
                    } else {
                        0
                    };
                    match (got, length) {
                        (3, 0) => self.header_skipped(),
                        (3, left) => LineState::ProxyV2Addresses { left },
                        _ => LineState::ProxyV2Fixed {
                            got: got + 1,
                            length,
                        },
                    }
                }
                LineState::ProxyV2Addresses { left: 1 } => self.header_skipped(),
                LineState::ProxyV2Addresses { left } => {
                    LineState::ProxyV2Addresses { left: left - 1 }
                }
                LineState::Leading | LineState::Method if is_tchar(b) => LineState::Method,
                LineState::Method if b == b' ' || b == b'\t' => LineState::Rest {
                    matched: 0,
                    proxy: !self.proxy_done && self.proxy_v1 == PROXY_V1.len() && self.seen == 6,
                },
                LineState::Leading | LineState::Method => {
                    return Detection::Known(Protocol::Opaque)
                }
                LineState::Rest { proxy: true, .. } if b == b'\n' => self.header_skipped(),
                // HTTP/0.9's `GET /` has no headers, so a line without a version is harmless.
                LineState::Rest { .. } if b == b'\n' => return Detection::Known(Protocol::Opaque),
                // Servers refuse control bytes in a request line (tab and CR aside).
                LineState::Rest { .. } if b.is_ascii_control() && b != b'\t' && b != b'\r' => {
                    return Detection::Known(Protocol::Opaque)
                }
                LineState::Rest { matched, proxy } => {
                    let upper = b.to_ascii_uppercase();
                    // No proper prefix of `HTTP/` is also its suffix, so a mismatch restarts
                    // the match at this byte.
                    let matched = if upper == VERSION_MARK[matched] {
                        matched + 1
                    } else {
                        usize::from(upper == VERSION_MARK[0])
                    };
                    if matched == VERSION_MARK.len() {
                        return Detection::Known(Protocol::Http1);
                    }
                    LineState::Rest { matched, proxy }
                }
            };
        }
        if self.seen >= MAX_SCANNED {
            Detection::Known(Protocol::Http1)
        } else {
            Detection::NeedMore
        }
    }

    /// After a PROXY header: the request line, if any, comes next.
    fn header_skipped(&mut self) -> LineState {
        self.proxy_done = true;
        LineState::Leading
    }
}

/// The refusal [`OpaqueGuard`] reads end with.
#[derive(Debug, thiserror::Error)]
#[error("the caller's opaque TCP starts an HTTP request, which would reach the app unread")]
pub struct HttpOverOpaque;

/// A caller's stream whose first line is checked by [`FirstLine`] as it is read; the read
/// that would complete an HTTP request line fails with [`HttpOverOpaque`] instead, its bytes
/// not passed on. Writes (the app's bytes) pass through.
#[derive(Debug)]
pub struct OpaqueGuard<T> {
    io: T,
    first_line: Option<FirstLine>,
}

impl<T> OpaqueGuard<T> {
    /// Guards `inner`'s first line; with `enabled` false, a plain pass-through.
    pub fn new(inner: T, enabled: bool) -> Self {
        Self {
            io: inner,
            first_line: enabled.then(FirstLine::default),
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for OpaqueGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(line) = &mut this.first_line else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        match line.feed(&buf.filled()[before..]) {
            Detection::NeedMore => {}
            Detection::Known(Protocol::Opaque) => this.first_line = None,
            Detection::Known(_) => {
                buf.set_filled(before);
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    HttpOverOpaque,
                )));
            }
        }
        Poll::Ready(Ok(()))
    }
}

crate::io::delegate_async_write!(OpaqueGuard, io);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const HTTP: Detection = Detection::Known(Protocol::Http1);
    const OPAQUE: Detection = Detection::Known(Protocol::Opaque);
    const MORE: Detection = Detection::NeedMore;

    fn whole(input: &[u8]) -> Detection {
        FirstLine::default().feed(input)
    }

    fn byte_by_byte(input: &[u8]) -> Detection {
        let mut line = FirstLine::default();
        for b in input {
            match line.feed(std::slice::from_ref(b)) {
                MORE => {}
                known => return known,
            }
        }
        MORE
    }

    #[test]
    fn first_line_table() {
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(9 * 1024));
        let v2 = |addresses: &[u8], then: &[u8]| {
            let mut header = PROXY_V2.to_vec();
            header.extend_from_slice(&[0x21, 0x11]); // PROXY, TCP over IPv4
            header.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
            header.extend_from_slice(addresses);
            header.extend_from_slice(then);
            header
        };
        // The addresses hold bytes that would end a line or a method, and `HTTP/`.
        let addresses = b"\n\x00 HTTP/\r\n\x0a\x0b\x0c";
        let proxy_v2_then_request = v2(addresses, b"GET / HTTP/1.1\r\n");
        let proxy_v2_local = v2(b"", b"GET / HTTP/1.1\r\n");
        let proxy_v2_then_redis = v2(addresses, b"*1\r\n$4\r\nPING\r\n");
        let cases: Vec<(&[u8], Detection)> = vec![
            (b"", MORE),
            (b"GET", MORE),
            (b"GET /admin", MORE),
            (b"GET /admin HTTP", MORE),
            (b"GET /admin HTTP/", HTTP),
            (
                b"GET / HTTP/1.1\r\nx-warden-client-id: forged\r\n\r\n",
                HTTP,
            ),
            // what the proxies' own detection calls opaque, and lenient servers take
            (long_target.as_bytes(), HTTP),
            (b"GET / HTTP/1.2\r\n", HTTP),
            (b"GET / http/1.1\r\n", HTTP),
            (b"GET  /  HTTP/1.1\r\n", HTTP),
            (b"GET\t/\tHTTP/1.1\r\n", HTTP),
            (b" \t\r\n\rGET / HTTP/1.1\r\n", HTTP),
            (
                b"ANY-TOKEN-AS-LONG-AS-YOU-LIKE-REALLY /x HTTP/1.1\r\n",
                HTTP,
            ),
            (b"GET /HTTHTTP/1.1", HTTP),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTP),
            (b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", HTTP),
            // not a request line with headers
            (b"GET /\r\nx-warden-client-id: forged\r\n\r\n", OPAQUE), // HTTP/0.9
            (b"get key\r\n", OPAQUE),                                 // Redis inline
            (b"*1\r\n$4\r\nPING\r\n", OPAQUE),                        // Redis
            (b"EHLO mail.example.org\r\n", OPAQUE),
            (b"SSH-2.0-OpenSSH_9.2\r\n", OPAQUE),
            (b"OPTIONS rtsp://cam/1 RTSP/1.0\r\n", OPAQUE),
            (b"\x16\x03\x01\x02\x00\x01", OPAQUE), // a TLS ClientHello
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", OPAQUE), // PostgreSQL
            (b"GET /\x00 HTTP/1.1\r\n", OPAQUE),
            (b"GET/ HTTP/1.1\r\n", OPAQUE),
            (b"{\"op\": \"HTTP/1.1\"}", OPAQUE),
            // a PROXY protocol header is skipped, as servers that take one do
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\nGET / HTTP/1.1\r\n",
                HTTP,
            ),
            (b"PROXY UNKNOWN\r\n\r\nGET / HTTP/1.1\r\n", HTTP),
            (
                b"PROXY TCP4 10.0.0.1 10.0.0.2 5000 80\r\nEHLO x\r\n",
                OPAQUE,
            ),
            (b"PROXY / HTTP/1.1\r\n", HTTP), // a request whose method is PROXY
            (b"PROXY x\r\nPROXY y\r\nGET / HTTP/1.1\r\n", OPAQUE), // one header only
            (b" PROXY x\r\nGET / HTTP/1.1\r\n", OPAQUE), // not at the start: a line
            (&proxy_v2_then_request, HTTP),
            (&proxy_v2_local, HTTP),
            (&proxy_v2_then_redis, OPAQUE),
            (b"\r\n\r\n\0\r\nQUIX\n", OPAQUE),
            (b"\r\n\r\nGET / HTTP/1.1\r\n", HTTP),
        ];
        for (input, want) in cases {
            let shown = String::from_utf8_lossy(&input[..input.len().min(60)]).into_owned();
            assert_eq!(whole(input), want, "{shown:?}");
            assert_eq!(byte_by_byte(input), want, "byte by byte: {shown:?}");
        }
    }

    #[test]
    fn a_line_that_could_still_be_a_request_line_at_the_limit_is_refused() {
        let mut endless = b"GET /".to_vec();
        endless.resize(MAX_SCANNED, b'a');
        assert_eq!(whole(&endless[..MAX_SCANNED - 1]), MORE);
        assert_eq!(whole(&endless), HTTP);
        assert_eq!(whole(&vec![b'\n'; MAX_SCANNED]), HTTP);
        assert_eq!(whole(&vec![b'A'; MAX_SCANNED]), HTTP);
    }

    /// What the app is passed of `sent` (written in these parts, each read as it comes),
    /// and whether the guard refused it.
    async fn through_guard(sent: &[&[u8]], enabled: bool) -> (Vec<u8>, bool) {
        let (mut caller, proxy_side) = tokio::io::duplex(1 << 20);
        let mut guard = OpaqueGuard::new(proxy_side, enabled);
        let mut passed = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for part in sent {
            caller.write_all(part).await.unwrap();
            let mut got = 0;
            while got < part.len() {
                match guard.read(&mut buf).await {
                    Ok(n) => {
                        passed.extend_from_slice(&buf[..n]);
                        got += n;
                    }
                    Err(e) => {
                        assert!(e.to_string().contains("HTTP request"), "{e}");
                        return (passed, true);
                    }
                }
            }
        }
        (passed, false)
    }

    #[tokio::test]
    async fn opaque_bytes_pass_at_once_and_http_ends_the_stream() {
        let opaque: &[&[u8]] = &[
            b"one",
            b"EHLO ",
            b"mail\r\nMAIL FROM:<a@b> HTTP/1.1\r\n",
            &[0u8; 5000],
        ];
        assert_eq!(through_guard(opaque, true).await, (opaque.concat(), false));
        let forged: &[&[u8]] = &[
            b"\r\nGET / HT",
            b"TP/1.1\r\nx-warden-client-id: forged\r\n\r\n",
        ];
        // The app gets at most a line without a version, then the connection ends.
        assert_eq!(
            through_guard(forged, true).await,
            (b"\r\nGET / HT".to_vec(), true)
        );
        let at_once = forged.concat();
        assert_eq!(through_guard(&[&at_once], true).await, (Vec::new(), true));
        // Off (an opaque port): relayed as sent.
        assert_eq!(through_guard(forged, false).await, (at_once, false));
    }

    #[tokio::test]
    async fn the_app_speaks_first_while_the_caller_is_silent() {
        let (mut caller, proxy_side) = tokio::io::duplex(4096);
        let mut guard = OpaqueGuard::new(proxy_side, true);
        guard.write_all(b"220 mail ESMTP\r\n").await.unwrap();
        let mut banner = [0u8; 16];
        caller.read_exact(&mut banner).await.unwrap();
        assert_eq!(&banner, b"220 mail ESMTP\r\n");
        // Then, however late, an HTTP request is still refused.
        caller
            .write_all(b"GET / HTTP/1.1\r\nx-warden-client-id: forged\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(guard.read(&mut buf).await.is_err());
    }
}
