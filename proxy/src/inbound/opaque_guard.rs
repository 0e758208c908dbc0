//! Opaque TCP relayed to an app that may speak HTTP. The bytes are not parsed, so nothing
//! removes a header the caller wrote, and an app that reads them as HTTP would take a forged
//! `x-warden-client-id` for the proxy's. Reading them as HTTP servers do cannot settle it:
//! servers differ too much (Node takes headers after a request line with no version, llhttp
//! takes `RTSP/1.0` for a version, Netty skips control bytes before a request, some servers
//! take a PROXY protocol header first). So the guard looks for what the attack needs instead:
//! a line, anywhere in the caller's bytes, that starts with a header name an app could read
//! as Warden's (`is_warden_header`'s folding: any case, any separators), or with what would
//! turn the connection into HTTP/2, whose compressed headers no scan can read (the h2c
//! preface, an `HTTP2-Settings` upgrade header). The read holding the byte that completes one
//! ends the connection instead, those bytes not passed on: the app never gets a complete
//! header block with it. Nothing is held back, so a server-speaks-first protocol goes on and
//! a short first message is passed on at once; each byte is looked at once (`memchr` finds
//! the line ends), so a large transfer costs little.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

/// The line starts refused, letters and digits only (other bytes are skipped, as an app's
/// header-name folding would): `x-warden-*`, the HTTP/2 preface `PRI * HTTP/2.0`, and h2c's
/// `HTTP2-Settings` upgrade header.
const REFUSED_LINE_STARTS: [&[u8]; 3] = [b"xwarden", b"prihttp20", b"http2settings"];

/// Looks at the start of every line of a byte stream (after a CR or a LF, and the stream's
/// start) for [`REFUSED_LINE_STARTS`]. Pure, so it is tested without sockets; bytes may be
/// split anywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineStarts {
    state: ScanState,
}

#[derive(Debug, Clone, Copy)]
enum ScanState {
    /// At a line's start: `matched` letters of `candidate` seen so far.
    Start {
        candidate: Option<&'static [u8]>,
        matched: usize,
    },
    /// Past the start: nothing to look at until the line ends.
    Rest,
}

impl Default for ScanState {
    fn default() -> Self {
        ScanState::Start {
            candidate: None,
            matched: 0,
        }
    }
}

impl LineStarts {
    /// Takes the next bytes; `true` once a line starts with one of [`REFUSED_LINE_STARTS`].
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        let mut i = 0;
        while i < bytes.len() {
            let ScanState::Start { candidate, matched } = self.state else {
                match memchr::memchr2(b'\n', b'\r', &bytes[i..]) {
                    Some(end) => {
                        i += end + 1;
                        self.state = ScanState::default();
                        continue;
                    }
                    None => return false,
                }
            };
            let b = bytes[i].to_ascii_lowercase();
            i += 1;
            if b == b'\n' || b == b'\r' {
                self.state = ScanState::default();
                continue;
            }
            if !b.is_ascii_alphanumeric() {
                continue; // indentation, separators
            }
            let candidate = candidate.or_else(|| {
                REFUSED_LINE_STARTS
                    .iter()
                    .copied()
                    .find(|start| start[0] == b)
            });
            self.state = match candidate {
                Some(start) if start[matched] == b => {
                    if matched + 1 == start.len() {
                        return true;
                    }
                    ScanState::Start {
                        candidate: Some(start),
                        matched: matched + 1,
                    }
                }
                _ => ScanState::Rest,
            };
        }
        false
    }
}

/// The refusal [`OpaqueGuard`] reads end with.
#[derive(Debug, thiserror::Error)]
#[error("the caller's opaque TCP carries a header line an app could take for Warden's (x-warden-*), or HTTP/2")]
pub struct HttpOverOpaque;

/// A caller's stream whose bytes [`LineStarts`] looks at as they are read; the read that
/// completes a refused line start fails with [`HttpOverOpaque`] instead, its bytes not
/// passed on, and so does every read after it. Writes (the app's bytes) pass through.
#[derive(Debug)]
pub struct OpaqueGuard<T> {
    io: T,
    scan: Option<LineStarts>,
    refused: bool,
}

impl<T> OpaqueGuard<T> {
    /// Guards `inner`'s bytes; with `enabled` false, a plain pass-through.
    pub fn new(inner: T, enabled: bool) -> Self {
        Self {
            io: inner,
            scan: enabled.then(LineStarts::default),
            refused: false,
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
        let refusal = || io::Error::new(io::ErrorKind::InvalidData, HttpOverOpaque);
        if this.refused {
            return Poll::Ready(Err(refusal()));
        }
        let Some(scan) = &mut this.scan else {
            return Pin::new(&mut this.io).poll_read(cx, buf);
        };
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if scan.feed(&buf.filled()[before..]) {
            buf.set_filled(before);
            this.refused = true;
            return Poll::Ready(Err(refusal()));
        }
        Poll::Ready(Ok(()))
    }
}

crate::io::delegate_async_write!(OpaqueGuard, io);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const F: &str = "\r\nx-warden-client-id: forged\r\n\r\n";

    /// Whether the scan refuses `input`, checked fed whole, byte by byte, and (up to 1 KiB)
    /// split in two at every position: all must agree.
    fn refused(input: &[u8]) -> bool {
        let whole = LineStarts::default().feed(input);
        let mut bytewise = LineStarts::default();
        assert_eq!(
            input.chunks(1).any(|b| bytewise.feed(b)),
            whole,
            "byte by byte: {:?}",
            String::from_utf8_lossy(input)
        );
        for at in (0..input.len()).filter(|_| input.len() <= 1024) {
            let mut split = LineStarts::default();
            let (a, b) = input.split_at(at);
            assert_eq!(split.feed(a) || split.feed(b), whole, "split at {at}");
        }
        whole
    }

    #[test]
    fn line_start_table() {
        // Each way some server reads a request with headers (found by review: Node takes
        // headers after `GET /`, llhttp takes RTSP and ICE versions, Python splits on any
        // whitespace, Netty skips control bytes, nginx reads a PROXY header first).
        let request_lines = [
            "GET / HTTP/1.1",
            "GET /",
            "GET / RTSP/1.0",
            "SOURCE / ICE/1.0",
            "\x0bGET\x0b/ HTTP/1.1",
            "GET /\x01 HTTP/1.1",
            "\x00\x7fGET / HTTP/1.1",
            "get / http/1.2",
            "PROXY UNKNOWN\x00\r\nGET / HTTP/1.1",
            "x\r\nGET / HTTP/1.1",
        ];
        for line in request_lines {
            let forged = format!("{line}{F}");
            assert!(refused(forged.as_bytes()), "{forged:?}");
        }
        let refused_cases: Vec<&[u8]> = vec![
            b"x-warden-client-id: forged\r\n",
            b"GET / HTTP/1.1\rX-Warden-Client-Id: forged\r\r", // CR-only line ends
            b"GET / HTTP/1.1\nX_WARDEN_CLIENT_ID: forged\n\n",
            b"GET / HTTP/1.1\r\nx.warden.client.id: forged\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\n  x-warden-client-id: folded\r\n",
            b"GET / HTTP/1.1\r\nx-warden-tls: TLSv1.3\r\n",
            b"GET / HTTP/1.1\r\nhost: a\r\n\r\nGET /2 HTTP/1.1\r\nx-warden-client-id: late\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\r\nPRI * HTTP/2.0\r\n",
            b"GET / HTTP/1.1\r\nupgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
            b"\x00\x00\n\x01x\x02warden",
        ];
        for input in refused_cases {
            assert!(refused(input), "{:?}", String::from_utf8_lossy(input));
        }
        let long = format!("GET /{} HTTP/1.1\r\nhost: a\r\n\r\n", "a".repeat(70_000));
        let passed: Vec<&[u8]> = vec![
            b"",
            b"GET / HTTP/1.1\r\nhost: a\r\nx-request-id: 1\r\n\r\n", // no header of ours
            long.as_bytes(),
            b"GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: x-warden-client-id\r\n",
            b"the x-warden-client-id header, mid-line",
            b"x-warde", // not (yet) a whole name
            b"xwardrobe\r\n",
            b"*1\r\n$4\r\nPING\r\n",
            b"EHLO mail\r\nMAIL FROM:<a@b>\r\nDATA\r\nsubject: hi\r\n",
            b"\x16\x03\x01\x02\x00\x01", // TLS the app terminates itself
            b"PRIORITY: high\r\nhttp2: no\r\n",
            &[0xa5; 300],
        ];
        for input in passed {
            assert!(!refused(input), "{:?}", String::from_utf8_lossy(input));
        }
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
                        assert!(e.to_string().contains("x-warden-*"), "{e}");
                        // Refused for good: every later read fails too.
                        assert!(guard.read(&mut buf).await.is_err());
                        return (passed, true);
                    }
                }
            }
        }
        (passed, false)
    }

    #[tokio::test]
    async fn other_bytes_pass_at_once_and_a_forged_header_ends_the_stream() {
        let opaque: &[&[u8]] = &[b"one", b"EHLO mail\r\n", &[0u8; 5000]];
        assert_eq!(through_guard(opaque, true).await, (opaque.concat(), false));
        let forged: &[&[u8]] = &[b"GET / HTTP/1.1\r\nx-war", b"den-client-id: forged\r\n\r\n"];
        // The app gets at most part of a header name, then the connection ends.
        assert_eq!(
            through_guard(forged, true).await,
            (b"GET / HTTP/1.1\r\nx-war".to_vec(), true)
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
        // Then, however late, a forged header is still refused.
        caller
            .write_all(format!("GET / HTTP/1.1{F}").as_bytes())
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        assert!(guard.read(&mut buf).await.is_err());
    }
}
