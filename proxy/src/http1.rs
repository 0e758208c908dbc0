//! HTTP/1.1 pieces both of our own codecs share: the app-facing client
//! (`inbound::app_http1`) and the app-facing server (`outbound::http1`). Field values are
//! slices of the buffer the head arrived in, copied nowhere.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderName, HeaderValue};

/// The most header fields a head (or a chunked body's trailers) may have, as hyper.
pub const MAX_HEADERS: usize = 100;

/// Where one field's name and value are in the head's buffer: name start and end, value
/// start and end.
pub type FieldAt = (usize, usize, usize, usize);

/// Where each of `fields` (parsed by httparse from `buf`) is in `buf`, so the fields can
/// become slices of the head once it is frozen.
pub fn field_offsets(buf: &[u8], fields: &[httparse::Header<'_>]) -> Vec<FieldAt> {
    let base = buf.as_ptr() as usize;
    fields
        .iter()
        .map(|field| {
            let name = field.name.as_ptr() as usize - base;
            let value = field.value.as_ptr() as usize - base;
            (
                name,
                name + field.name.len(),
                value,
                value + field.value.len(),
            )
        })
        .collect()
}

/// The field at `at` in `head`, a head httparse accepted; `None` if its name is not one
/// `http` takes.
pub fn field(head: &Bytes, at: FieldAt) -> Option<(HeaderName, HeaderValue)> {
    let (name_start, name_end, value_start, value_end) = at;
    let name = HeaderName::from_bytes(&head[name_start..name_end]).ok()?;
    // SAFETY: httparse accepted these bytes as a field value: tab, 0x20-0x7e, 0x80-0xff,
    // no other control byte, exactly what `HeaderValue` allows (checked again in debug
    // builds). Checking each byte a second time cost ~500 instructions a message.
    let value =
        unsafe { HeaderValue::from_maybe_shared_unchecked(head.slice(value_start..value_end)) };
    Some((name, value))
}

/// Writes one field line.
pub fn put_field(out: &mut BytesMut, name: &HeaderName, value: &HeaderValue) {
    out.put_slice(name.as_str().as_bytes());
    out.put_slice(b": ");
    out.put_slice(value.as_bytes());
    out.put_slice(b"\r\n");
}

/// The `Content-Length` fields of a message as they are read: one value, however often
/// repeated (RFC 9112, 6.3).
#[derive(Debug, Default)]
pub struct Lengths {
    value: Option<u64>,
    /// Values seen, each item of a list counted.
    pub seen: usize,
    invalid: Option<&'static str>,
}

impl Lengths {
    /// Notes one `Content-Length` field.
    pub fn add(&mut self, field: &HeaderValue) {
        for item in field.as_bytes().split(|&b| b == b',') {
            self.seen += 1;
            match parse_decimal(item.trim_ascii()) {
                None => self.invalid = Some("a Content-Length is not a number"),
                Some(n) if self.value.is_some_and(|v| v != n) => {
                    self.invalid = Some("two different Content-Lengths");
                }
                Some(n) => self.value = Some(n),
            }
        }
    }

    /// The length, if any was given; what is wrong with the fields, if anything.
    pub fn get(&self) -> Result<Option<u64>, &'static str> {
        match self.invalid {
            Some(why) => Err(why),
            None => Ok(self.value),
        }
    }
}

/// A decimal number of at most 19 digits, nothing else.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether a comma-separated header field lists `token` (case-insensitive).
pub fn lists(field: &HeaderValue, token: &str) -> bool {
    field
        .as_bytes()
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// The `Date` header for now, made at most once a second per thread.
pub fn http_date() -> HeaderValue {
    thread_local! {
        static CACHED: RefCell<Option<(u64, HeaderValue)>> = const { RefCell::new(None) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with_borrow_mut(|cached| match cached {
        Some((at, value)) if *at == second => value.clone(),
        _ => {
            let value = HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *cached = Some((second, value.clone()));
            value
        }
    })
}
