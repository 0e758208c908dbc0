//! Access logs (target `warden::access`, level info): one line per HTTP request, one per
//! relayed TCP connection when it ends. Whether they are on is the log filter's say
//! (`warden::access=info`), as for any target, but the lines are formatted here, straight into
//! the log writer's buffer, in the shape the fmt layer gives every other line (text, or JSON
//! with `--log-json`).
//!
//! Why not through `tracing`'s fmt layer: it cost about 12,500 instructions per line (the
//! timestamp's date worked out anew for every line, each string escaped a character at a time
//! through `Debug`, the duration's shortest float digits), with two lines per proxied request;
//! this costs about 2,500 (benches/README.md).
//! Here the date is worked out once a second, strings that need no escaping are copied whole,
//! and the duration is printed in whole microseconds.

use std::cell::Cell;
use std::fmt::{Display, Write as _};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::io::Transferred;
use crate::log_writer::NonBlocking;
use crate::metrics::Direction;
use crate::shared::Accounting;

/// The log target access logs are filtered by.
pub const TARGET: &str = "warden::access";

/// Where access log lines go, and in which format.
struct Sink {
    writer: NonBlocking,
    json: bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends access log lines to `writer`, as JSON objects (`json`) or text lines; called once by
/// [`crate::logging::init`]. Without it, no access log line is written.
pub fn install(writer: NonBlocking, json: bool) {
    let _ = SINK.set(Sink { writer, json });
}

/// Whether access logs are on: installed, and passed by the log filter. Callers check it
/// first, so that nothing is copied or formatted when they are off.
pub fn enabled() -> bool {
    SINK.get().is_some() && tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// One HTTP request, as its access log line tells it.
pub struct Request<'a> {
    /// Inbound or outbound.
    pub direction: Direction,
    /// The id the inbound side gave the request (`-` where none is known).
    pub request_id: &'a str,
    /// The calling side's identity.
    pub client_id: &'a str,
    /// The called side's identity.
    pub server_id: &'a str,
    /// The request's method.
    pub method: &'a str,
    /// The request's path.
    pub path: &'a str,
    /// The response's status.
    pub status: u16,
    /// From the request's arrival to its response's headers.
    pub elapsed: Duration,
}

/// Logs one HTTP request: who called whom, what, the outcome and how long it took.
pub fn request(request: &Request<'_>) {
    emit(|line| request_line(line, request));
}

/// Logs one relayed TCP connection (opaque mesh TCP, or plain TCP with `tls=false`) when it
/// ends: who, where, bytes each way, how long, and whether it ended cleanly.
pub fn connection(
    accounting: &Accounting<'_>,
    moved: &Transferred,
    elapsed: Duration,
    clean: bool,
) {
    emit(|line| connection_line(line, accounting, moved, elapsed, clean));
}

fn request_line(line: &mut Line<'_>, r: &Request<'_>) {
    line.start("request");
    line.string("request_id", r.request_id);
    line.string("direction", r.direction.as_str());
    line.string("client_id", r.client_id);
    line.string("server_id", r.server_id);
    line.boolean("tls", true);
    line.string("method", r.method);
    line.string("path", r.path);
    line.number("status", u64::from(r.status));
    line.millis("duration_ms", r.elapsed);
}

fn connection_line(
    line: &mut Line<'_>,
    accounting: &Accounting<'_>,
    moved: &Transferred,
    elapsed: Duration,
    clean: bool,
) {
    line.start("connection");
    match *accounting {
        Accounting::Mesh {
            direction,
            client_id,
            server_id,
        } => {
            line.string("direction", direction.as_str());
            line.string("client_id", client_id);
            line.string("server_id", server_id);
            line.boolean("tls", true);
        }
        Accounting::Plain {
            client_id,
            destination,
        } => {
            line.string("direction", Direction::Outbound.as_str());
            line.string("client_id", client_id);
            line.displayed("destination", destination);
            line.boolean("tls", false);
        }
    }
    line.number("client_to_server", moved.a_to_b);
    line.number("server_to_client", moved.b_to_a);
    line.boolean("clean", clean);
    line.millis("duration_ms", elapsed);
}

/// A line's buffer is given back after a line longer than this (a very long path), rather
/// than kept by the worker thread for its life.
const KEEP_LINE_CAPACITY: usize = 4096;

thread_local! {
    /// Each worker formats its lines into a buffer of its own, reused line after line. Taken
    /// out while a line is written (a `Cell`, not a `RefCell`: whatever happens meanwhile, and
    /// at the thread's end, there is no borrow to fail, only a new buffer).
    static LINE: Cell<String> = const { Cell::new(String::new()) };
    /// The second a line was last logged in on this thread, and its date and time of day.
    static SECOND: Cell<(u64, String)> = const { Cell::new((0, String::new())) };
}

fn emit(fill: impl FnOnce(&mut Line<'_>)) {
    let Some(sink) = SINK.get() else { return };
    let mut out = LINE.try_with(Cell::take).unwrap_or_default();
    out.clear();
    let mut line = Line {
        out: &mut out,
        json: sink.json,
        now: SystemTime::now(),
    };
    fill(&mut line);
    line.finish();
    sink.writer.push_line(out.as_bytes());
    if out.capacity() <= KEEP_LINE_CAPACITY {
        let _ = LINE.try_with(|cell| cell.set(out));
    }
}

/// A line being written, as the fmt layer writes an info event of [`TARGET`] with no span:
/// text (`<time>  INFO warden::access: <message> key=value ...`, strings quoted and escaped
/// as `Debug` does) or JSON (`{"timestamp":..,"level":"INFO","fields":{"message":..,..},
/// "target":"warden::access"}`).
struct Line<'a> {
    out: &'a mut String,
    json: bool,
    now: SystemTime,
}

impl Line<'_> {
    fn start(&mut self, message: &str) {
        if self.json {
            self.out.push_str("{\"timestamp\":\"");
            timestamp(self.out, self.now);
            self.out
                .push_str("\",\"level\":\"INFO\",\"fields\":{\"message\":");
            quoted(self.out, message, true);
        } else {
            timestamp(self.out, self.now);
            self.out.push_str("  INFO ");
            self.out.push_str(TARGET);
            self.out.push_str(": ");
            self.out.push_str(message);
        }
    }

    fn key(&mut self, key: &str) {
        if self.json {
            self.out.push_str(",\"");
            self.out.push_str(key);
            self.out.push_str("\":");
        } else {
            self.out.push(' ');
            self.out.push_str(key);
            self.out.push('=');
        }
    }

    /// A string field: quoted and escaped.
    fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        quoted(self.out, value, self.json);
    }

    /// A field recorded with `%` (its `Display`): bare in text, a string in JSON.
    fn displayed(&mut self, key: &str, value: impl Display) {
        self.key(key);
        if self.json {
            quoted(self.out, &value.to_string(), true);
        } else {
            let _ = write!(self.out, "{value}");
        }
    }

    /// A number: bare in both formats.
    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        digits(self.out, value, 1);
    }

    /// A boolean: bare in both formats.
    fn boolean(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out.push_str(if value { "true" } else { "false" });
    }

    /// A duration in milliseconds, to the microsecond, with at least one decimal (as a
    /// float's `Debug` prints it: `2.0`, `0.583`).
    fn millis(&mut self, key: &str, elapsed: Duration) {
        self.key(key);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        digits(self.out, micros / 1000, 1);
        self.out.push('.');
        let (mut fraction, mut width) = (micros % 1000, 3);
        while fraction % 10 == 0 && width > 1 {
            (fraction, width) = (fraction / 10, width - 1);
        }
        digits(self.out, fraction, width);
    }

    fn finish(&mut self) {
        if self.json {
            self.out.push_str("},\"target\":\"");
            self.out.push_str(TARGET);
            self.out.push_str("\"}");
        }
        self.out.push('\n');
    }
}

/// `value` in double quotes, escaped as the fmt layer escapes it: as `Debug` does in text
/// (`\"`, `\n`, `\u{1b}`), as JSON does in JSON: a line stays one line whatever the value. Most values need no escaping and
/// are copied whole.
fn quoted(out: &mut String, value: &str, json: bool) {
    // Without an early exit, so that the compiler checks many bytes per instruction.
    let escaped = value.bytes().fold(false, |escaped, b| {
        escaped | !(0x20..0x7f).contains(&b) | (b == b'"') | (b == b'\\')
    });
    if !escaped {
        out.push('"');
        out.push_str(value);
        out.push('"');
    } else if json {
        let _ = write!(out, "{}", serde_json::Value::from(value));
    } else {
        let _ = write!(out, "{value:?}");
    }
}

/// `value` in decimal, zero-padded to at least `width` digits; without `fmt`'s machinery,
/// which cost a few hundred instructions per number.
fn digits(out: &mut String, mut value: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut start = buf.len();
    while value > 0 {
        start -= 1;
        buf[start] = b'0' + (value % 10) as u8;
        value /= 10;
    }
    start = start.min(buf.len() - width.clamp(1, buf.len()));
    for &b in &buf[start..] {
        out.push(char::from(b));
    }
}

/// `now` as RFC 3339 in UTC to the microsecond (`2026-11-27T15:36:48.572733Z`), as the fmt
/// layer's default timer prints it; the date and time of day are worked out once a second.
fn timestamp(out: &mut String, now: SystemTime) {
    let since_epoch = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let second = since_epoch.as_secs();
    let (cached, mut text) = SECOND.try_with(Cell::take).unwrap_or_default();
    if cached != second || text.is_empty() {
        let t = i64::try_from(second)
            .ok()
            .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        text = warden_identity::timestamp::rfc3339_seconds(t);
        text.pop(); // the `Z`: the fraction comes first
    }
    out.push_str(&text);
    let _ = SECOND.try_with(|cell| cell.set((second, text)));
    out.push('.');
    digits(out, u64::from(since_epoch.subsec_micros()), 6);
    out.push('Z');
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    /// What the fmt layer writes for `emit` (text, or JSON), with its timestamp.
    fn through_fmt_layer(json: bool, emit: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        use tracing_subscriber::layer::SubscriberExt;
        let captured = Captured::default();
        let writer = captured.clone();
        let make = move || writer.clone();
        let text = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(make.clone()));
        let json = json.then(|| tracing_subscriber::fmt::layer().json().with_writer(make));
        let subscriber = tracing_subscriber::registry().with(text).with(json);
        tracing::subscriber::with_default(subscriber, emit);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    /// The line with its timestamp taken out (the two are written at different instants).
    fn without_timestamp(line: &str) -> String {
        let (start, end) = match line.strip_prefix("{\"timestamp\":\"") {
            Some(rest) => (14, 14 + rest.find('"').unwrap()),
            None => (0, line.find(' ').unwrap()),
        };
        format!("{}<time>{}", &line[..start], &line[end..])
    }

    fn ours(json: bool, fill: impl FnOnce(&mut Line<'_>)) -> String {
        let mut out = String::new();
        let mut line = Line {
            out: &mut out,
            json,
            now: SystemTime::now(),
        };
        fill(&mut line);
        line.finish();
        out
    }

    #[test]
    fn request_lines_are_what_the_fmt_layer_writes() {
        // Paths as a client may send them: plain, with quotes and backslashes, with a
        // control character (an ANSI escape), with non-ASCII text.
        let paths = ["/", "/a\"b\\c", "/x\u{1b}[31my", "/caf\u{e9}/\u{2028}"];
        for json in [false, true] {
            for path in paths {
                let r = Request {
                    direction: Direction::Inbound,
                    request_id: "6c49f04773aaf7da",
                    client_id: "spiffe://cluster.local/ns/a/sa/client",
                    server_id: "spiffe://cluster.local/ns/b/sa/server",
                    method: "GET",
                    path,
                    status: 503,
                    elapsed: Duration::from_micros(1_500),
                };
                let expected = through_fmt_layer(json, || {
                    tracing::info!(
                        target: "warden::access",
                        request_id = r.request_id,
                        direction = r.direction.as_str(),
                        client_id = r.client_id,
                        server_id = r.server_id,
                        tls = true,
                        method = r.method,
                        path = r.path,
                        status = r.status,
                        duration_ms = 1.5,
                        "request"
                    )
                });
                let got = ours(json, |line| request_line(line, &r));
                assert_eq!(
                    without_timestamp(&got),
                    without_timestamp(&expected),
                    "json: {json}, path {path:?}"
                );
            }
        }
    }

    #[test]
    fn connection_lines_are_what_the_fmt_layer_writes() {
        let destination: SocketAddr = "10.1.2.3:5432".parse().unwrap();
        let moved = Transferred {
            a_to_b: 512,
            b_to_a: 1 << 40,
        };
        for json in [false, true] {
            let mesh = Accounting::Mesh {
                direction: Direction::Outbound,
                client_id: "spiffe://cluster.local/ns/a/sa/client",
                server_id: "spiffe://cluster.local/ns/b/sa/db",
            };
            let expected = through_fmt_layer(json, || {
                tracing::info!(
                    target: "warden::access",
                    direction = "outbound",
                    client_id = "spiffe://cluster.local/ns/a/sa/client",
                    server_id = "spiffe://cluster.local/ns/b/sa/db",
                    tls = true,
                    client_to_server = moved.a_to_b,
                    server_to_client = moved.b_to_a,
                    clean = false,
                    duration_ms = 2.0,
                    "connection"
                )
            });
            let got = ours(json, |line| {
                connection_line(line, &mesh, &moved, Duration::from_millis(2), false)
            });
            assert_eq!(without_timestamp(&got), without_timestamp(&expected));

            let plain = Accounting::Plain {
                client_id: "spiffe://cluster.local/ns/a/sa/client",
                destination,
            };
            let expected = through_fmt_layer(json, || {
                tracing::info!(
                    target: "warden::access",
                    direction = "outbound",
                    client_id = "spiffe://cluster.local/ns/a/sa/client",
                    %destination,
                    tls = false,
                    client_to_server = moved.a_to_b,
                    server_to_client = moved.b_to_a,
                    clean = true,
                    duration_ms = 0.25,
                    "connection"
                )
            });
            let got = ours(json, |line| {
                connection_line(line, &plain, &moved, Duration::from_micros(250), true)
            });
            assert_eq!(without_timestamp(&got), without_timestamp(&expected));
        }
    }

    #[test]
    fn durations_print_to_the_microsecond() {
        for (micros, printed) in [
            (0, "0.0"),
            (1, "0.001"),
            (10, "0.01"),
            (583, "0.583"),
            (2_000, "2.0"),
            (5_834, "5.834"),
            (5_830, "5.83"),
            (61_000_007, "61000.007"),
        ] {
            let line = ours(false, |line| {
                line.millis("d", Duration::from_micros(micros));
            });
            assert_eq!(line, format!(" d={printed}\n"), "{micros} µs");
        }
    }

    #[test]
    fn numbers_print_in_decimal_zero_padded_to_their_width() {
        for (value, width, printed) in [
            (0, 1, "0"),
            (7, 1, "7"),
            (0, 6, "000000"),
            (42, 6, "000042"),
            (123, 2, "123"),
            (999_999, 6, "999999"),
            (u64::MAX, 1, "18446744073709551615"),
        ] {
            let mut out = String::from("x");
            digits(&mut out, value, width);
            assert_eq!(out, format!("x{printed}"), "{value} to {width} digits");
        }
    }

    #[test]
    fn timestamps_are_rfc3339_to_the_microsecond_in_utc() {
        let format = time::format_description::parse_borrowed::<2>(
            "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z",
        )
        .unwrap();
        // Two instants within one second (the cached date), the next second, a leap day,
        // the last microsecond of a year, the epoch.
        for nanos in [
            1_795_793_808_424_670_600_u128,
            1_795_793_808_999_999_999,
            1_795_793_809_000_000_000,
            1_709_164_800_000_001_000,
            1_798_761_599_999_999_000,
            0,
        ] {
            let now = SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos as u64);
            let mut out = String::new();
            timestamp(&mut out, now);
            let expected = time::OffsetDateTime::from_unix_timestamp_nanos(nanos as i128)
                .unwrap()
                .format(&format)
                .unwrap();
            assert_eq!(out, expected);
        }
    }
}
