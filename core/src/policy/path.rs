//! Request paths as policies see them. A path is normalized before it is matched, and the
//! normalized path is what the app receives, so `/api/../admin` cannot pass a `/api/*` rule
//! and reach `/admin`: dot segments are removed (RFC 3986 section 5.2.4, also when written
//! `%2e`), and paths that hide a separator (`%2f`, `%5c`, `\`) or a NUL are refused.

/// Why a path is refused (the request gets 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not an origin-form path.
    #[error("the path must start with '/'")]
    NotAbsolute,
    /// An encoded or backslash separator, which apps and policies could read differently.
    #[error("the path contains an encoded or backslash separator")]
    HiddenSeparator,
    /// A NUL or control character.
    #[error("the path contains a control character")]
    Control,
}

/// Normalizes the path part of a request target (no query). See the module docs.
pub fn normalize(path: &str) -> Result<String, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if path.bytes().any(|b| b.is_ascii_control()) {
        return Err(PathError::Control);
    }
    let lower = path.to_ascii_lowercase();
    if path.contains('\\')
        || lower.contains("%2f")
        || lower.contains("%5c")
        || lower.contains("%00")
    {
        return Err(PathError::HiddenSeparator);
    }
    // Dots written as %2e are dots for the app: decode them before removing dot segments.
    let decoded = replace_ignore_case(path, "%2e", ".");
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.iter().enumerate() {
        match *segment {
            "." => {
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

fn replace_ignore_case(haystack: &str, needle: &str, with: &str) -> String {
    let lower = haystack.to_ascii_lowercase();
    let mut out = String::with_capacity(haystack.len());
    let mut i = 0;
    while let Some(found) = lower[i..].find(needle) {
        out.push_str(&haystack[i..i + found]);
        out.push_str(with);
        i += found + needle.len();
    }
    out.push_str(&haystack[i..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_table() {
        let ok = [
            ("/", "/"),
            ("/api/v1", "/api/v1"),
            ("/api/v1/", "/api/v1/"),
            ("/api/../admin", "/admin"),
            ("/api/./v1", "/api/v1"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("/api/.%2e/admin", "/admin"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a//b", "/a//b"),
            ("/a/..b/c", "/a/..b/c"),
            ("/%41pi", "/%41pi"),
        ];
        for (input, want) in ok {
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
        }
        let bad = [
            ("api", PathError::NotAbsolute),
            ("*", PathError::NotAbsolute),
            ("/api%2f..%2fadmin", PathError::HiddenSeparator),
            ("/api%2F..%2Fadmin", PathError::HiddenSeparator),
            ("/api\\..\\admin", PathError::HiddenSeparator),
            ("/api%5cadmin", PathError::HiddenSeparator),
            ("/api%00", PathError::HiddenSeparator),
            ("/api\0", PathError::Control),
        ];
        for (input, want) in bad {
            assert_eq!(normalize(input), Err(want), "{input:?}");
        }
    }
}
