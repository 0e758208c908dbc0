//! gRPC's wire format over HTTP/2, the parts a hand-written client needs (so the sidecar
//! carries neither tonic nor tower): length-prefixed messages, and the status a server sends
//! in trailers (or in headers, for a call that fails at once).

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;

/// The content type of gRPC requests and responses (protobuf messages).
pub const CONTENT_TYPE: &str = "application/grpc";

/// The path of `warden.policy.v1.InboundPolicy/Watch`.
pub const WATCH_INBOUND_POLICY: &str = "/warden.policy.v1.InboundPolicy/Watch";

/// The path of `warden.discovery.v1.Destinations/Subscribe`.
pub const SUBSCRIBE_DESTINATIONS: &str = "/warden.discovery.v1.Destinations/Subscribe";

/// The largest snapshot a proxy accepts, and the controller sends (bytes).
pub const MAX_SNAPSHOT_BYTES: usize = 4 * 1024 * 1024;

/// The largest request message the controller accepts (bytes).
pub const MAX_REQUEST_BYTES: usize = 4 * 1024;

/// Destinations one proxy watches at once; beyond it a new destination is handled as
/// unknown (by the proxy), and a stream adding more is ended (by the controller).
pub const MAX_WATCHED_DESTINATIONS: usize = 10_000;

/// Addresses one `Subscription` message carries at most, so that even IPv6 ones fit in
/// [`MAX_REQUEST_BYTES`] (49 bytes each, encoded).
pub const MAX_ADDRESSES_PER_MESSAGE: usize = 64;

/// Status codes this contract uses (gRPC's numbering).
pub mod code {
    /// Success.
    pub const OK: u32 = 0;
    /// The pod does not exist (or no longer does).
    pub const NOT_FOUND: u32 = 5;
    /// The caller may not read what it asked for.
    pub const PERMISSION_DENIED: u32 = 7;
    /// Too many subscriptions, or a message over the limit.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// The server is going away or not ready: retry, elsewhere if possible.
    pub const UNAVAILABLE: u32 = 14;
    /// The caller presented no usable identity.
    pub const UNAUTHENTICATED: u32 = 16;
}

/// What is wrong with a received stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// A message over the size limit (refused before it is buffered).
    #[error("a gRPC message of {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// The length the prefix claims.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A compressed message, which this client never asks for.
    #[error("a compressed gRPC message, which was not negotiated")]
    Compressed,
    /// A flag byte that is neither 0 nor 1.
    #[error("a gRPC message with flag byte {0}")]
    BadFlag(u8),
    /// The stream ended inside a message.
    #[error("the stream ended inside a gRPC message ({0} bytes left over)")]
    Truncated(usize),
}

/// `message`, length-prefixed (uncompressed).
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    message
        .encode(&mut out)
        .expect("the buffer has the message's length");
    out.freeze()
}

/// Splits a received byte stream into messages, refusing any over `max` bytes.
#[derive(Debug)]
pub struct FrameDecoder {
    buffer: BytesMut,
    max: usize,
}

impl FrameDecoder {
    /// A decoder accepting messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            buffer: BytesMut::new(),
            max,
        }
    }

    /// Adds received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    /// The next whole message, if one has arrived. The size is checked from the prefix, so
    /// an oversized message fails before its body is buffered.
    pub fn next_message(&mut self) -> Result<Option<Bytes>, FrameError> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        match self.buffer[0] {
            0 => {}
            1 => return Err(FrameError::Compressed),
            other => return Err(FrameError::BadFlag(other)),
        }
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if self.buffer.len() < 5 + len {
            return Ok(None);
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(len).freeze()))
    }

    /// At the end of the stream: an error if a message was cut short.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buffer.len() {
            0 => Ok(()),
            left => Err(FrameError::Truncated(left)),
        }
    }
}

/// A call's status: its code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The gRPC status code.
    pub code: u32,
    /// The server's message (percent-decoded).
    pub message: String,
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gRPC status {} ({})", self.code, code_name(self.code))?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The status in `headers` (trailers, or the headers of a call that failed at once), if any.
pub fn status(headers: &HeaderMap) -> Option<Status> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .map(percent_decode)
        .unwrap_or_default();
    Some(Status { code, message })
}

/// gRPC's name for `code`.
pub fn code_name(code: u32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.get(code as usize).copied().unwrap_or("UNKNOWN")
}

/// `grpc-message` is percent-encoded UTF-8; anything malformed is kept as sent.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied(),
            bytes.get(i + 2).copied(),
        ) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::v1;

    #[test]
    fn messages_are_split_however_the_bytes_arrive() {
        let a = v1::WatchRequest {
            pod: "web-1".into(),
        };
        let b = v1::WatchRequest {
            pod: "x".repeat(300),
        };
        let mut wire = frame(&a).to_vec();
        wire.extend_from_slice(&frame(&b));
        for chunk in [1, 2, 5, 7, 64, wire.len()] {
            let mut decoder = FrameDecoder::new(1024);
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(m) = decoder.next_message().unwrap() {
                    got.push(<v1::WatchRequest as prost::Message>::decode(m).unwrap());
                }
            }
            decoder.finish().unwrap();
            assert_eq!(got, [a.clone(), b.clone()], "chunks of {chunk}");
        }
    }

    #[test]
    fn hostile_frames_are_refused_before_they_are_buffered() {
        // (bytes, error)
        let cases: [(&[u8], FrameError); 3] = [
            (
                &[0, 0x7f, 0xff, 0xff, 0xff],
                FrameError::TooLarge {
                    len: 0x7fff_ffff,
                    max: 1024,
                },
            ),
            (&[1, 0, 0, 0, 1, 0], FrameError::Compressed),
            (&[9, 0, 0, 0, 0], FrameError::BadFlag(9)),
        ];
        for (bytes, want) in cases {
            let mut decoder = FrameDecoder::new(1024);
            decoder.push(bytes);
            assert_eq!(decoder.next_message(), Err(want));
        }
        let mut cut = FrameDecoder::new(1024);
        cut.push(&[0, 0, 0, 0, 9, 1, 2]);
        assert_eq!(cut.next_message(), Ok(None));
        assert_eq!(cut.finish(), Err(FrameError::Truncated(7)));
    }

    #[test]
    fn statuses_are_read_from_trailers_with_their_messages_decoded() {
        let mut headers = HeaderMap::new();
        assert_eq!(status(&headers), None);
        headers.insert("grpc-status", "7".parse().unwrap());
        headers.insert(
            "grpc-message",
            "pod%20shop/web-1%3A not yours%".parse().unwrap(),
        );
        let got = status(&headers).unwrap();
        assert_eq!(got.code, code::PERMISSION_DENIED);
        assert_eq!(got.message, "pod shop/web-1: not yours%");
        assert_eq!(
            got.to_string(),
            "gRPC status 7 (PERMISSION_DENIED): pod shop/web-1: not yours%"
        );
        assert_eq!(code_name(99), "UNKNOWN");
    }
}
