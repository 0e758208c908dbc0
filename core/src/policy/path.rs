//! Request paths as policies see them. A path is normalized before it is matched, and the
//! normalized path is what the app receives, so no spelling of a path can pass a rule as one
//! path and reach the app as another:
//!
//! - percent-encoded unreserved characters are decoded (RFC 3986 section 6.2.2.2: `%61` is
//!   `a`, `%2e` is `.`), and the remaining percent-encodings are written with upper-case hex
//!   (section 6.2.2.1), so `/%61dmin` is `/admin`, as Go, Spring, Django and Werkzeug read it;
//! - dot segments are removed (section 5.2.4), so `/api/../admin` is `/admin`;
//! - runs of `/` are merged, so `//admin` is `/admin`, as nginx `merge_slashes` serves it;
//! - paths that an app could read differently from the policy are refused: an encoded
//!   separator (`%2f`, `%5c`), a backslash, `;` path parameters (Tomcat and Spring drop them:
//!   `/admin;x` is `/admin` there), NUL and control characters, broken percent-encodings.
//!
//! The query string is not part of the path and is left as it is.

/// Why a path is refused (the request gets 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// An encoded or backslash separator, which apps and policies could read differently.
    #[error("the path contains an encoded or backslash separator")]
    HiddenSeparator,
    /// A NUL or control character, raw or percent-encoded.
    #[error("the path contains a control character")]
    Control,
    /// `;` path parameters, which some servers strip before routing and others do not.
    #[error("the path contains ';' parameters")]
    Parameters,
    /// A `%` not followed by two hex digits.
    #[error("the path contains a malformed percent-encoding")]
    BadEncoding,
}

/// Normalizes the path part of a request target (no query). See the module docs.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_normal(path) {
        // The common case, on every request: nothing to decode, merge or remove.
        return Ok(path.to_string());
    }
    let decoded = decode_unreserved(path)?;
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            // An empty segment comes from `//` (merged) or a trailing `/` (kept).
            "" | "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Ok(format!("/{}", out.join("/")))
}

/// A path pattern in the form request paths are matched in, if that differs from how it is
/// written: `/%61dmin*` is `/admin*`, `/api//x` is `/api/x`, `*/a/./b` is `*/a/b`, and a
/// prefix ending inside an encoding keeps it, in upper-case hex (`/caf%c3%a*` is
/// `/caf%C3%A*`). Written in another spelling, a pattern could never match (a DENY would deny
/// nothing); normalized, it matches what it names. A pattern whose literal does not
/// normalize (`;`, `%2f`, a broken `%`) or cannot be written normalized (`*/../admin`) is
/// left as written, and [`unmatchable`] names it for `warden policy check`.
pub fn normal_pattern(pattern: &str) -> Option<String> {
    let (literal, at_start, at_end) = if let Some(prefix) = pattern.strip_suffix('*') {
        (prefix, true, false)
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        (suffix, false, true)
    } else {
        (pattern, false, false)
    };
    if literal.is_empty() || literal.contains('*') {
        return None;
    }
    // A prefix may end inside an encoding (`/caf%c3%a*`): that part is kept aside, in
    // upper-case hex.
    let (literal, open) = if at_start {
        split_open_encoding(literal)
    } else {
        (literal, "")
    };
    // A prefix may end inside a segment and a suffix start inside one: complete them with a
    // plain segment, so only what the literal itself holds is normalized.
    let path = match (at_start, at_end) {
        (true, _) => format!("{literal}x"),
        (_, true) => format!("/x{literal}"),
        _ => literal.to_string(),
    };
    let normal = normalize(&path).ok()?;
    let open = open.to_ascii_uppercase();
    let normal = match (at_start, at_end) {
        (true, _) => normal.strip_suffix('x').map(|p| format!("{p}{open}*")),
        (_, true) => normal.strip_prefix("/x").map(|s| format!("*{s}")),
        _ => Some(normal),
    }?;
    (normal != pattern).then_some(normal)
}

/// `prefix` without a percent-encoding it ends inside of (`%` or `%` and one digit), and
/// that unfinished part.
fn split_open_encoding(prefix: &str) -> (&str, &str) {
    match prefix.rfind('%') {
        Some(i) if prefix.len() - i < 3 => prefix.split_at(i),
        _ => (prefix, ""),
    }
}

/// Why path pattern `pattern` (after [`normal_pattern`]) can match no request path, if it
/// cannot: request paths are matched in normal form, hold no query, and a spelling that
/// does not normalize (`;`, `%2f`, a broken `%`) is refused with 400 before any policy.
pub fn unmatchable(pattern: &str) -> Option<&'static str> {
    let pattern = normal_pattern(pattern).unwrap_or_else(|| pattern.to_string());
    if pattern.contains(['?', '#']) {
        return Some("a request path never holds '?' or '#' (the query is not part of it)");
    }
    let (literal, completed) = if let Some(prefix) = pattern.strip_suffix('*') {
        // A prefix may end inside an encoding (`/file%2*` matches `/file%20a`).
        let (whole, _) = split_open_encoding(prefix);
        (whole, format!("{whole}x"))
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        (suffix, format!("/x{suffix}"))
    } else {
        (pattern.as_str(), pattern.clone())
    };
    if literal.is_empty() {
        return None;
    }
    match normalize(&completed) {
        Ok(normal) if normal == completed => None,
        Ok(_) => Some("it is not in the normal form request paths are matched in (no dot segments, no '//', unreserved characters not encoded, upper-case hex)"),
        Err(PathError::NotAbsolute) => None,
        Err(_) => Some("requests spelled so are refused with 400 before any policy is asked"),
    }
}

/// Whether `path` is already normal: no percent-encoding, backslash, `;` or control
/// character, no empty segment (`//`) and no dot segment.
fn is_normal(path: &str) -> bool {
    let bytes = path.as_bytes();
    let clean = bytes
        .iter()
        .all(|&b| !matches!(b, b'%' | b'\\' | b';') && !b.is_ascii_control());
    clean
        && !path.contains("//")
        && path
            .split('/')
            .skip(1)
            .all(|segment| segment != "." && segment != "..")
}

/// Decodes percent-encoded unreserved characters, upper-cases the hex of the others, and
/// refuses what must not reach an app (see [`PathError`]).
fn decode_unreserved(path: &str) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|h| (*h as char).to_digit(16));
                let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                    return Err(PathError::BadEncoding);
                };
                let value = (hi * 16 + lo) as u8;
                match value {
                    b'/' | b'\\' => return Err(PathError::HiddenSeparator),
                    v if v.is_ascii_control() => return Err(PathError::Control),
                    v if is_unreserved(v) => out.push(v as char),
                    v => {
                        out.push('%');
                        out.push_str(&format!("{v:02X}"));
                    }
                }
                i += 3;
                continue;
            }
            b'\\' => return Err(PathError::HiddenSeparator),
            b';' => return Err(PathError::Parameters),
            b if b.is_ascii_control() => return Err(PathError::Control),
            _ => {}
        }
        // Copy the run up to the next byte that needs a look (keeps UTF-8 sequences whole).
        let end = bytes[i..]
            .iter()
            .position(|c| matches!(c, b'%' | b'\\' | b';') || c.is_ascii_control())
            .map_or(bytes.len(), |p| i + p);
        out.push_str(&path[i..end]);
        i = end;
    }
    Ok(out)
}

/// RFC 3986 section 2.3: `ALPHA / DIGIT / "-" / "." / "_" / "~"`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy's and Istio's path normalization cases (RFC 3986 normalization, `merge_slashes`,
    /// escaped-slash rejection), and the spellings a security review used to slip past rules.
    #[test]
    fn normalization_table() {
        let ok = [
            ("/", "/"),
            ("/api/v1", "/api/v1"),
            ("/api/v1/", "/api/v1/"),
            // dot segments (RFC 3986 5.2.4; Envoy normalize_path)
            ("/api/../admin", "/admin"),
            ("/api/./v1", "/api/v1"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..b/c", "/a/..b/c"),
            ("/a/b../c", "/a/b../c"),
            ("/..", "/"),
            ("/.", "/"),
            // dots written percent-encoded are dots for the app
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/a/%2E/b", "/a/b"),
            // unreserved characters decoded (RFC 3986 6.2.2.2)
            ("/%61dmin", "/admin"),
            ("/%41%44%4D%49%4E", "/ADMIN"),
            ("/%7euser/%5fx%2dy", "/~user/_x-y"),
            ("/a%30", "/a0"),
            // others kept, hex upper-cased (6.2.2.1)
            ("/a%20b", "/a%20b"),
            ("/a%3fb", "/a%3Fb"),
            ("/a%3bb", "/a%3Bb"),
            ("/%25", "/%25"),
            ("/%2561dmin", "/%2561dmin"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/café", "/café"),
            // merged slashes (Envoy merge_slashes; nginx merge_slashes)
            ("//admin", "/admin"),
            ("/a//b", "/a/b"),
            ("/a///b//", "/a/b/"),
            ("//", "/"),
            ("/a/.//../b", "/b"),
            ("/%2e%2e//admin", "/admin"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
            // The fast path takes only what the full path would leave unchanged.
            assert!(!is_normal(input) || input == want, "{input}");
        }
        for path in ["/a/b", "/", "/a/", "/..a/b.", "/café"] {
            assert!(is_normal(path), "{path}");
        }
        for path in ["/a//b", "/a/./b", "/a/..", "/%61", "/a;b", "/a\\b", "/."] {
            assert!(!is_normal(path), "{path}");
        }
        let bad = [
            ("api", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            // escaped separators (Envoy path_with_escaped_slashes_action: REJECT_REQUEST)
            ("/api%2f..%2fadmin", PathError::HiddenSeparator),
            ("/api%2F..%2Fadmin", PathError::HiddenSeparator),
            ("/api\\..\\admin", PathError::HiddenSeparator),
            ("/api%5cadmin", PathError::HiddenSeparator),
            ("/api%5Cadmin", PathError::HiddenSeparator),
            // path parameters (Tomcat, Spring)
            ("/admin;x", PathError::Parameters),
            ("/admin;jsessionid=1/x", PathError::Parameters),
            ("/a/..;/admin", PathError::Parameters),
            // control characters, raw or encoded
            ("/api%00", PathError::Control),
            ("/api\0", PathError::Control),
            ("/a%0d%0aSet-Cookie:x", PathError::Control),
            ("/a%7f", PathError::Control),
            ("/a\tb", PathError::Control),
            // broken encodings
            ("/a%", PathError::BadEncoding),
            ("/a%4", PathError::BadEncoding),
            ("/a%zz", PathError::BadEncoding),
            ("/a%%32%65", PathError::BadEncoding),
        ];
        for (input, want) in bad {
            assert_eq!(normalize(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn normalization_is_idempotent() {
        for input in [
            "/%61dmin//x/../y/%7e/%c3%a9",
            "/a/./b/../../c//",
            "/%2e%2e/%2e/a%20b",
        ] {
            let once = normalize(input).unwrap();
            assert_eq!(normalize(&once).unwrap(), once, "{input}");
        }
    }

    #[test]
    fn path_patterns_are_matched_in_normal_form() {
        let cases = [
            ("/%61dmin*", Some("/admin*")),
            ("/api//admin", Some("/api/admin")),
            ("/a/../admin", Some("/admin")),
            ("/caf%c3%a9", Some("/caf%C3%A9")),
            ("/api/./*", Some("/api/*")),
            ("*/a/./b", Some("*/a/b")),
            ("/caf%c3%a*", Some("/caf%C3%A*")),
            ("/%61dmin%2*", Some("/admin%2*")),
            // Already normal, or left as written.
            ("/admin*", None),
            ("/x/.well-known*", None),
            ("/a/..x*", None),
            ("/file%2*", None),
            ("/x;y", None),
            ("*.js", None),
            ("*", None),
            ("*/../admin", None),
        ];
        for (pattern, want) in cases {
            assert_eq!(normal_pattern(pattern).as_deref(), want, "{pattern}");
        }
    }

    #[test]
    fn patterns_no_request_path_can_match_are_named() {
        for pattern in [
            "*/../admin",
            "*/..",
            "/%61dmin%2x*",
            "/b%zz*",
            "/admin?debug=1",
            "*#top",
            "/x;y",
            "/a%2fb",
        ] {
            assert!(unmatchable(pattern).is_some(), "{pattern}");
        }
        for pattern in [
            "/admin*",
            "/%61dmin*",
            "/%61dmin%2*",
            "/caf%c3%a*",
            "/api//x",
            "/file%2*",
            "/file%*",
            "/caf%C3%A9",
            "*.js",
            "*",
            "/x/.well-known*",
            "/a/..x*",
        ] {
            assert_eq!(unmatchable(pattern), None, "{pattern}");
        }
    }
}
