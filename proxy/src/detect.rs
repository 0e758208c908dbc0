//! Protocol detection from an app connection's first bytes: an HTTP/2 prior-knowledge
//! preface, an HTTP/1.x request line, or anything else (opaque TCP). Pure, so it is tested
//! without sockets; the caller reads until the answer is not [`Detection::NeedMore`] or its
//! detect timeout passes (no bytes at all means a server-speaks-first protocol).

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// The longest method considered (standard ones have at most 17 characters); the limit
/// holds whether or not the rest of the line has arrived, so more bytes never change a verdict.
const MAX_METHOD: usize = 32;
/// The longest HTTP/1 request line considered; longer first lines are treated as opaque.
pub const MAX_REQUEST_LINE: usize = 8 * 1024;

/// What the app speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.0 or HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (h2c), e.g. gRPC.
    Http2,
    /// Anything else: proxied as bytes.
    Opaque,
}

/// The verdict on the bytes read so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    /// Decided.
    Known(Protocol),
    /// Could still be HTTP: read more.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub fn detect(buf: &[u8]) -> Detection {
    use Detection::*;
    if buf.is_empty() {
        return NeedMore;
    }
    if buf.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
        return NeedMore;
    }
    if buf.starts_with(H2_PREFACE) {
        return Known(Protocol::Http2);
    }
    // HTTP/1 servers skip empty lines before the request line (RFC 9112 section 2.2; hyper
    // and Go do), so a request behind a leading CRLF is still HTTP, not opaque bytes.
    let skip = match empty_lines(buf) {
        Some(skip) => skip,
        None => return Known(Protocol::Opaque),
    };
    if skip >= MAX_REQUEST_LINE {
        return Known(Protocol::Opaque);
    }
    let rest = &buf[skip..];
    if rest.is_empty() || rest == b"\r" {
        return NeedMore;
    }
    let line_end = rest.iter().position(|&b| b == b'\n');
    let line = match line_end {
        Some(end) if skip + end > MAX_REQUEST_LINE => return Known(Protocol::Opaque),
        Some(end) => &rest[..end],
        None if buf.len() >= MAX_REQUEST_LINE => return Known(Protocol::Opaque),
        None => rest,
    };
    match request_line(line, line_end.is_some()) {
        Some(true) => Known(Protocol::Http1),
        Some(false) => NeedMore,
        None => Known(Protocol::Opaque),
    }
}

/// The length of the leading empty lines (`\r\n` or `\n`), or `None` for a `\r` that does
/// not end a line (not HTTP). A trailing lone `\r` counts as not yet skipped.
fn empty_lines(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    loop {
        match buf.get(i..) {
            Some([b'\r', b'\n', ..]) => i += 2,
            Some([b'\n', ..]) => i += 1,
            Some([b'\r']) => return Some(i),
            Some([b'\r', ..]) => return None,
            _ => return Some(i),
        }
    }
}

/// `Some(true)`: a complete HTTP/1 request line; `Some(false)`: a valid prefix of one;
/// `None`: not one.
fn request_line(line: &[u8], complete: bool) -> Option<bool> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next()?;
    // A method is any RFC 9110 token, as HTTP servers parse it (`get` too: policies compare
    // methods upper-case); the rest of the line must still be a request line.
    if method.is_empty() || !method.iter().all(|b| is_tchar(*b)) || method.len() > MAX_METHOD {
        return None;
    }
    let Some(target) = parts.next() else {
        return (!complete).then_some(false);
    };
    if target.iter().any(|b| b.is_ascii_control() || *b == b' ') {
        return None;
    }
    let Some(version) = parts.next() else {
        return (!complete).then_some(false);
    };
    const VERSIONS: [&[u8]; 2] = [b"HTTP/1.1", b"HTTP/1.0"];
    if complete {
        (!target.is_empty() && VERSIONS.contains(&version)).then_some(true)
    } else if VERSIONS.iter().any(|v| v.starts_with(version)) {
        Some(false)
    } else {
        None
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::Detection::*;
    use super::Protocol::*;
    use super::*;

    #[test]
    fn detection_table() {
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_LINE));
        let cases: Vec<(&[u8], Detection)> = vec![
            (b"", NeedMore),
            (b"G", NeedMore),
            (b"GET", NeedMore),
            (b"GET ", NeedMore),
            (b"GET /index.html", NeedMore),
            (b"GET /index.html HTTP/1", NeedMore),
            (b"GET / HTTP/1.1\r\n", Known(Http1)),
            (b"GET / HTTP/1.1\n", Known(Http1)),
            (b"GET / HTTP/1.0\r\nhost: x\r\n\r\n", Known(Http1)),
            (b"POST /api/orders?id=1 HTTP/1.1\r\n", Known(Http1)),
            (b"OPTIONS * HTTP/1.1\r\n", Known(Http1)),
            (b"CONNECT example.org:443 HTTP/1.1\r\n", Known(Http1)),
            (b"M-SEARCH * HTTP/1.1\r\n", Known(Http1)),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Known(Http2)),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04",
                Known(Http2),
            ),
            (b"PRI * HTTP/2", NeedMore),
            (b"PRI * HTTP/2.0\r\n\r\nXX", Known(Opaque)),
            (b"GET / HTTP/2.0\r\n", Known(Opaque)),
            (b"GET / HTTP/1.2\r\n", Known(Opaque)),
            (b"GET /\r\n", Known(Opaque)),
            (b"GET  HTTP/1.1\r\n", Known(Opaque)),
            // methods are tokens, as servers parse them; policies compare them upper-case
            (b"get / HTTP/1.1\r\n", Known(Http1)),
            (b"Delete /x HTTP/1.1\r\n", Known(Http1)),
            (b"get key\r\n", Known(Opaque)), // a Redis inline command
            // empty lines before the request line are skipped by servers, so here too
            (b"\r", NeedMore),
            (b"\r\n", NeedMore),
            (b"\r\n\r", NeedMore),
            (b"\r\n\nGE", NeedMore),
            (b"\r\nGET /admin HTTP/1.1\r\n", Known(Http1)),
            (b"\n\n\nGET /admin HTTP/1.1\r\n", Known(Http1)),
            (b"\rGET / HTTP/1.1\r\n", Known(Opaque)),
            (b"\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Known(Opaque)),
            (b"\x16\x03\x01\x02\x00\x01", Known(Opaque)), // a TLS ClientHello
            (b"*1\r\n$4\r\nPING\r\n", Known(Opaque)),     // Redis
            (b"SSH-2.0-OpenSSH_9.2\r\n", Known(Opaque)),
            (b"EHLO mail.example.org\r\n", Known(Opaque)),
            (b"\x00\x00\x00\x08\x04\xd2\x16\x2f", Known(Opaque)), // PostgreSQL SSLRequest
            (b"HELLO", NeedMore),                                 // could still be a method
            (b"HELLO world", NeedMore),
            (b"HELLO world\r\n", Known(Opaque)),
            (long_target.as_bytes(), Known(Opaque)),
            // Found by the `detect` fuzz target: a too-long method was opaque only until a
            // space arrived.
            (&[b'G'; 33], Known(Opaque)),
            (
                b"GGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGGG / HTTP/1.1\r\n",
                Known(Opaque),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(detect(input), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn an_endless_line_is_opaque() {
        assert_eq!(detect(&vec![b'\n'; MAX_REQUEST_LINE]), Known(Opaque));
        let mut late = b"\r\n".repeat(MAX_REQUEST_LINE / 2 - 4);
        late.extend_from_slice(b"GET /admin HTTP/1.1\r\n");
        assert_eq!(detect(&late), Known(Opaque));
        assert_eq!(detect(&vec![b'A'; MAX_REQUEST_LINE]), Known(Opaque));
        let mut tokenish = b"GET /".to_vec();
        tokenish.extend(vec![b'a'; MAX_REQUEST_LINE]);
        assert_eq!(detect(&tokenish), Known(Opaque));
    }
}
