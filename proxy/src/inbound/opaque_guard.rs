//! Opaque TCP relayed to an app that may speak HTTP. The bytes are not parsed, so nothing
//! removes a header the caller wrote, and an app that reads them as HTTP would take a forged
//! `x-warden-client-id` for the proxy's. Reading them as HTTP servers do cannot settle it:
//! servers differ too much (Node takes headers after a request line with no version, llhttp
//! takes `RTSP/1.0` for a version, Netty skips control bytes before a request, some servers
//! take a PROXY protocol header first). So the guard looks for what the attack needs instead:
//! a line, anywhere in the caller's bytes, that starts with a header name an app could read
//! as Warden's (`is_warden_header`'s folding: any case, any separators), or what would turn
//! the connection into HTTP/2, whose compressed headers no scan can read: the preface
//! `PRI * HTTP/2.0` anywhere (Go takes it as any request on a connection, not only the first),
//! or an h2c `HTTP2-Settings` upgrade header. The read holding the byte that completes one
//! ends the connection instead, those bytes not passed on: the app never gets a complete
//! header block with it. Nothing is held back, so a server-speaks-first protocol goes on and
//! a short first message is passed on at once; `memchr` finds the line ends and the preface,
//! and at most [`MAX_START`] bytes of a line's start are looked at one by one, so a large
//! transfer costs little.

use std::io;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{ready, Context, Poll};

use memchr::memmem::Finder;
use tokio::io::{AsyncRead, ReadBuf};

/// How many bytes of a line's start are looked at: enough for indentation and the
/// separators of a folded name, so a line of bytes that are not letters (binary data) is
/// not walked byte by byte.
const MAX_START: u8 = 64;

/// The line starts refused, letters and digits only (other bytes are skipped, as an app's
/// header-name folding would): `x-warden-*`, and h2c's `HTTP2-Settings` upgrade header.
const REFUSED_LINE_STARTS: [&[u8]; 2] = [b"xwarden", b"http2settings"];

/// The HTTP/2 preface's request line, refused wherever it is.
const H2_PREFACE_LINE: &[u8] = b"PRI * HTTP/2.0";

/// Finds [`H2_PREFACE_LINE`] (built once: its searcher's tables are not free).
static H2_PREFACE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(H2_PREFACE_LINE));

/// Looks at a byte stream for what [`OpaqueGuard`] refuses: the start of every line (after a
/// CR or a LF, and the stream's start) for [`REFUSED_LINE_STARTS`], and every byte for
/// [`H2_PREFACE_LINE`]. Pure, so it is tested without sockets; bytes may be split anywhere.
#[derive(Debug, Clone, Copy, Default)]
pub struct HeaderScan {
    line: LineState,
    /// The last bytes seen, for a preface split between two reads.
    tail: [u8; H2_PREFACE_LINE.len() - 1],
    tail_len: usize,
}

#[derive(Debug, Clone, Copy)]
enum LineState {
    /// At a line's start: `matched` letters of `candidate` seen so far, in `examined` bytes.
    Start {
        candidate: Option<&'static [u8]>,
        matched: usize,
        examined: u8,
    },
    /// Past the start: nothing to look at until the line ends.
    Rest,
}

impl Default for LineState {
    fn default() -> Self {
        LineState::Start {
            candidate: None,
            matched: 0,
            examined: 0,
        }
    }
}

impl HeaderScan {
    /// Takes the next bytes; `true` once they hold something refused.
    pub fn feed(&mut self, bytes: &[u8]) -> bool {
        self.preface(bytes) || self.line_starts(bytes)
    }

    /// Whether [`H2_PREFACE_LINE`] ends in `bytes` (it may have begun in earlier ones).
    fn preface(&mut self, bytes: &[u8]) -> bool {
        let keep = self.tail.len();
        if self.tail_len > 0 {
            let mut joint = [0u8; 2 * H2_PREFACE_LINE.len()];
            let head = &bytes[..bytes.len().min(keep)];
            joint[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
            joint[self.tail_len..self.tail_len + head.len()].copy_from_slice(head);
            if H2_PREFACE
                .find(&joint[..self.tail_len + head.len()])
                .is_some()
            {
                return true;
            }
        }
        if H2_PREFACE.find(bytes).is_some() {
            return true;
        }
        // Keep the last `keep` bytes of what was seen, for the next read.
        if bytes.len() >= keep {
            self.tail.copy_from_slice(&bytes[bytes.len() - keep..]);
            self.tail_len = keep;
        } else {
            let kept = (self.tail_len + bytes.len()).min(keep);
            let from_old = kept - bytes.len();
            self.tail
                .copy_within(self.tail_len - from_old..self.tail_len, 0);
            self.tail[from_old..kept].copy_from_slice(bytes);
            self.tail_len = kept;
        }
        false
    }

    /// Whether a line in `bytes` starts with one of [`REFUSED_LINE_STARTS`].
    fn line_starts(&mut self, bytes: &[u8]) -> bool {
        let mut i = 0;
        while i < bytes.len() {
            let LineState::Start {
                candidate,
                matched,
                examined,
            } = self.line
            else {
                match memchr::memchr2(b'\n', b'\r', &bytes[i..]) {
                    Some(end) => {
                        i += end + 1;
                        self.line = LineState::default();
                        continue;
                    }
                    None => return false,
                }
            };
            let b = bytes[i].to_ascii_lowercase();
            i += 1;
            if b == b'\n' || b == b'\r' {
                self.line = LineState::default();
                continue;
            }
            if examined == MAX_START {
                self.line = LineState::Rest;
                continue;
            }
            if !b.is_ascii_alphanumeric() {
                // Before the name, whitespace and control bytes (which some servers skip);
                // within it, separators (which apps fold). Anything else starts no name.
                let skipped = candidate.is_some() || b <= b' ' || b == 0x7f;
                self.line = if skipped {
                    LineState::Start {
                        candidate,
                        matched,
                        examined: examined + 1,
                    }
                } else {
                    LineState::Rest
                };
                continue;
            }
            let candidate = candidate.or_else(|| {
                REFUSED_LINE_STARTS
                    .iter()
                    .copied()
                    .find(|start| start[0] == b)
            });
            self.line = match candidate {
                Some(start) if start[matched] == b => {
                    if matched + 1 == start.len() {
                        return true;
                    }
                    LineState::Start {
                        candidate: Some(start),
                        matched: matched + 1,
                        examined: examined + 1,
                    }
                }
                _ => LineState::Rest,
            };
        }
        false
    }
}

/// The refusal [`OpaqueGuard`] reads end with.
#[derive(Debug, thiserror::Error)]
#[error("the caller's opaque TCP carries a header line an app could take for Warden's (x-warden-*), or HTTP/2")]
pub struct HttpOverOpaque;

/// A caller's stream whose bytes [`HeaderScan`] looks at as they are read; the read that
/// completes something refused fails with [`HttpOverOpaque`] instead, its bytes not
/// passed on, and so does every read after it. Writes (the app's bytes) pass through.
#[derive(Debug)]
pub struct OpaqueGuard<T> {
    io: T,
    scan: Option<HeaderScan>,
    refused: bool,
}

impl<T> OpaqueGuard<T> {
    /// Guards `inner`'s bytes; with `enabled` false, a plain pass-through.
    pub fn new(inner: T, enabled: bool) -> Self {
        Self {
            io: inner,
            scan: enabled.then(HeaderScan::default),
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
        let whole = HeaderScan::default().feed(input);
        let mut bytewise = HeaderScan::default();
        assert_eq!(
            input.chunks(1).any(|b| bytewise.feed(b)),
            whole,
            "byte by byte: {:?}",
            String::from_utf8_lossy(input)
        );
        for at in (0..input.len()).filter(|_| input.len() <= 1024) {
            let mut split = HeaderScan::default();
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
            // Found by review: Go takes the preface as any request of a connection, here
            // after a body byte; and after a PROXY v2 header's addresses.
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nzPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0cAAAA\x01\x02\x03\x04\x01\x01\x01\x01PRI * HTTP/2.0\r\n",
            b"GET / HTTP/1.1\r\nupgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
            b"\x00\x00\n\x01x\x02warden",
        ];
        for input in refused_cases {
            assert!(refused(input), "{:?}", String::from_utf8_lossy(input));
        }
        let long = format!("GET /{} HTTP/1.1\r\nhost: a\r\n\r\n", "a".repeat(70_000));
        let padded = [&[b' '; 60][..], b"x-warden-client-id: forged\r\n"].concat();
        assert!(
            refused(&padded[4..]),
            "60 bytes of indentation and name are looked at"
        );
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
            b"PRIORITY: high\r\nhttp2: no\r\nPRI * HTTP/1.1\r\n",
            b"> x-warden-client-id: a curl -v dump\r\n<13>x-warden-client-id in syslog\n",
            &[0xa5; 300],
            &padded, // more than a folded name's separators
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
