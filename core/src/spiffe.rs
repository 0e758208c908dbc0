//! SPIFFE IDs and trust domains, parsed and validated per the SPIFFE-ID standard.
//!
//! A workload identity is `spiffe://<trust-domain>/<path>`. The trust domain is lowercase
//! `[a-z0-9._-]`; each path segment is `[a-zA-Z0-9._-]`, never empty, `.` or `..`. Because `%`,
//! `:`, `@`, `?` and `#` are in neither set, percent-encoding, ports, userinfo, queries and
//! fragments are all rejected by the character rules. In Kubernetes the path is
//! `/ns/<namespace>/sa/<service-account>`.

use std::fmt;
use std::str::FromStr;

/// The scheme prefix every SPIFFE ID starts with (lowercase, as the standard requires).
pub const SCHEME_PREFIX: &str = "spiffe://";
/// The longest SPIFFE ID accepted, in bytes (the standard's URI limit).
pub const MAX_ID_LEN: usize = 2048;
/// The longest trust domain name accepted, in bytes (a DNS name's limit).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// The trust domain used when none is configured.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";

/// Why a string is not a valid SPIFFE ID or trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("is empty")]
    Empty,
    /// The input is longer than [`MAX_ID_LEN`].
    #[error("is {0} bytes long, more than the {MAX_ID_LEN} allowed")]
    TooLong(usize),
    /// The input does not start with `spiffe://`.
    #[error("does not start with \"spiffe://\"")]
    WrongScheme,
    /// Nothing between `spiffe://` and the path.
    #[error("has an empty trust domain")]
    EmptyTrustDomain,
    /// The trust domain is longer than [`MAX_TRUST_DOMAIN_LEN`].
    #[error("has a trust domain of {0} bytes, more than the {MAX_TRUST_DOMAIN_LEN} allowed")]
    TrustDomainTooLong(usize),
    /// A character outside `[a-z0-9._-]` in the trust domain.
    #[error("has {0:?} in the trust domain (allowed: a-z 0-9 . - _; ports, userinfo and upper case are not)")]
    BadTrustDomainChar(char),
    /// A workload ID without a path.
    #[error("has no path (a workload identity needs one, e.g. /ns/<namespace>/sa/<account>)")]
    MissingPath,
    /// A path where only a trust domain was expected.
    #[error("has a path where only a trust domain was expected")]
    UnexpectedPath,
    /// `//` in the path, or a path ending in `/`.
    #[error("has an empty path segment (a doubled or trailing '/')")]
    EmptySegment,
    /// A `.` or `..` path segment.
    #[error("has a '.' or '..' path segment")]
    DotSegment,
    /// A character outside `[a-zA-Z0-9._-]` in the path.
    #[error("has {0:?} in the path (allowed: a-z A-Z 0-9 . - _; no percent-encoding, query or fragment)")]
    BadPathChar(char),
}

/// A SPIFFE ID (or trust domain) that failed to parse: the input and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid SPIFFE ID {input:?}: {reason}")]
pub struct InvalidSpiffeId {
    /// The offending input, shortened to 100 characters so errors stay one readable line.
    pub input: String,
    /// What rule it breaks.
    pub reason: SpiffeIdError,
}

impl InvalidSpiffeId {
    fn new(input: &str, reason: SpiffeIdError) -> Self {
        let input = if input.chars().count() > 100 {
            let cut: String = input.chars().take(100).collect();
            format!("{cut}...")
        } else {
            input.to_string()
        };
        Self { input, reason }
    }
}

/// A validated trust domain name such as `cluster.local`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain name (`cluster.local`) or its ID form (`spiffe://cluster.local`).
    pub fn parse(input: &str) -> Result<Self, InvalidSpiffeId> {
        let name = match input.strip_prefix(SCHEME_PREFIX) {
            Some(rest) => {
                if rest.contains('/') {
                    return Err(InvalidSpiffeId::new(input, SpiffeIdError::UnexpectedPath));
                }
                rest
            }
            None => input,
        };
        validate_trust_domain(name).map_err(|e| InvalidSpiffeId::new(input, e))?;
        Ok(Self(name.to_string()))
    }

    /// The trust domain's name, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>` (carried by signing certificates).
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

impl Default for TrustDomain {
    fn default() -> Self {
        Self(DEFAULT_TRUST_DOMAIN.to_string())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = InvalidSpiffeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A validated workload SPIFFE ID: `spiffe://<trust-domain>/<path>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    /// The whole ID, kept as one string because it is mostly displayed and compared whole.
    full: Box<str>,
    /// Byte offset where the path starts (the trust domain is `full[9..path_start]`).
    path_start: usize,
}

impl SpiffeId {
    /// Parses and validates a workload SPIFFE ID; the path is required.
    pub fn parse(input: &str) -> Result<Self, InvalidSpiffeId> {
        let err = |reason| InvalidSpiffeId::new(input, reason);
        if input.is_empty() {
            return Err(err(SpiffeIdError::Empty));
        }
        if input.len() > MAX_ID_LEN {
            return Err(err(SpiffeIdError::TooLong(input.len())));
        }
        let rest = input
            .strip_prefix(SCHEME_PREFIX)
            .ok_or_else(|| err(SpiffeIdError::WrongScheme))?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td).map_err(err)?;
        if path.is_empty() {
            return Err(err(SpiffeIdError::MissingPath));
        }
        validate_path(path).map_err(err)?;
        Ok(Self {
            full: input.into(),
            path_start: SCHEME_PREFIX.len() + td.len(),
        })
    }

    /// Builds `spiffe://<td>/<path>` from a trust domain and a path starting with `/`.
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, InvalidSpiffeId> {
        Self::parse(&format!("{SCHEME_PREFIX}{td}{path}"))
    }

    /// The Kubernetes form `spiffe://<td>/ns/<namespace>/sa/<service-account>`.
    pub fn for_service_account(
        td: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, InvalidSpiffeId> {
        let path = format!("/ns/{namespace}/sa/{service_account}");
        // Each name must be one segment: a '/' inside one would forge a different path.
        for name in [namespace, service_account] {
            if name.contains('/') {
                let input = format!("{SCHEME_PREFIX}{td}{path}");
                return Err(InvalidSpiffeId::new(
                    &input,
                    SpiffeIdError::BadPathChar('/'),
                ));
            }
        }
        Self::from_parts(td, &path)
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.full
    }

    /// The trust domain's name, e.g. `cluster.local`.
    pub fn trust_domain_name(&self) -> &str {
        &self.full[SCHEME_PREFIX.len()..self.path_start]
    }

    /// The trust domain as an owned value.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_string())
    }

    /// The path, starting with `/`.
    pub fn path(&self) -> &str {
        &self.full[self.path_start..]
    }

    /// `(namespace, service account)` when the path is exactly `/ns/<ns>/sa/<sa>`.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let mut segments = self.path()[1..].split('/');
        match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The Kubernetes namespace, when the path starts with `/ns/<namespace>`.
    pub fn namespace(&self) -> Option<&str> {
        let mut segments = self.path()[1..].split('/');
        match (segments.next(), segments.next()) {
            (Some("ns"), Some(ns)) => Some(ns),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for SpiffeId {
    type Err = InvalidSpiffeId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(SpiffeIdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

/// Validates a non-empty path that starts with `/`.
fn validate_path(path: &str) -> Result<(), SpiffeIdError> {
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(SpiffeIdError::BadPathChar(c));
        }
    }
    Ok(())
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TrustDomain::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SpiffeIdError::*;

    /// Each row: input, and `None` when valid or the rule it must break.
    #[test]
    fn spiffe_id_table() {
        let long_path = format!("spiffe://example.org/{}", "a".repeat(2048));
        let max_len = format!("spiffe://example.org/{}", "a".repeat(2048 - 21));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        let cases: Vec<(&str, Option<SpiffeIdError>)> = vec![
            // valid
            ("spiffe://cluster.local/ns/shop/sa/frontend", None),
            ("spiffe://example.org/workload", None),
            ("spiffe://example.org/a/b/c/d", None),
            ("spiffe://td_with-dash.and_underscore/p", None),
            ("spiffe://0123456789/p", None),
            ("spiffe://example.org/Upper-Case_Path.v1", None),
            ("spiffe://example.org/...a/a..", None),
            ("spiffe://a/b", None),
            (max_len.as_str(), None),
            // scheme
            ("", Some(Empty)),
            ("http://example.org/workload", Some(WrongScheme)),
            ("SPIFFE://example.org/workload", Some(WrongScheme)),
            ("spiffe:/example.org/workload", Some(WrongScheme)),
            ("example.org/workload", Some(WrongScheme)),
            ("spiffe//example.org/workload", Some(WrongScheme)),
            // trust domain
            ("spiffe:///workload", Some(EmptyTrustDomain)),
            ("spiffe://", Some(EmptyTrustDomain)),
            (
                "spiffe://Example.org/workload",
                Some(BadTrustDomainChar('E')),
            ),
            (
                "spiffe://example.org:8080/workload",
                Some(BadTrustDomainChar(':')),
            ),
            (
                "spiffe://user@example.org/workload",
                Some(BadTrustDomainChar('@')),
            ),
            (
                "spiffe://user:pw@example.org/workload",
                Some(BadTrustDomainChar(':')),
            ),
            (
                "spiffe://exa%6Dple.org/workload",
                Some(BadTrustDomainChar('%')),
            ),
            ("spiffe://example.org?x=1", Some(BadTrustDomainChar('?'))),
            ("spiffe://exa mple.org/w", Some(BadTrustDomainChar(' '))),
            ("spiffe://[::1]/w", Some(BadTrustDomainChar('['))),
            (long_td.as_str(), Some(TrustDomainTooLong(256))),
            // path
            ("spiffe://example.org", Some(MissingPath)),
            ("spiffe://example.org/", Some(EmptySegment)),
            ("spiffe://example.org/workload/", Some(EmptySegment)),
            ("spiffe://example.org//workload", Some(EmptySegment)),
            ("spiffe://example.org/./workload", Some(DotSegment)),
            ("spiffe://example.org/../workload", Some(DotSegment)),
            ("spiffe://example.org/a/..", Some(DotSegment)),
            ("spiffe://example.org/work%20load", Some(BadPathChar('%'))),
            (
                "spiffe://example.org/workload?query=1",
                Some(BadPathChar('?')),
            ),
            ("spiffe://example.org/workload#frag", Some(BadPathChar('#'))),
            ("spiffe://example.org/work load", Some(BadPathChar(' '))),
            ("spiffe://example.org/wörk", Some(BadPathChar('ö'))),
            ("spiffe://example.org/a:b", Some(BadPathChar(':'))),
            ("spiffe://example.org/a\\b", Some(BadPathChar('\\'))),
            (long_path.as_str(), Some(TooLong(long_path.len()))),
        ];
        assert!(cases.len() >= 30);
        for (input, want) in cases {
            let got = SpiffeId::parse(input);
            match (&got, &want) {
                (Ok(id), None) => assert_eq!(id.as_str(), input),
                (Err(e), Some(reason)) => {
                    assert_eq!(&e.reason, reason, "input {input:?}");
                }
                _ => panic!("input {input:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn parts_and_kubernetes_form() {
        let td = TrustDomain::parse("cluster.local").unwrap();
        let id = SpiffeId::for_service_account(&td, "shop", "frontend").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/shop/sa/frontend");
        assert_eq!(id.trust_domain_name(), "cluster.local");
        assert_eq!(id.trust_domain(), td);
        assert_eq!(id.path(), "/ns/shop/sa/frontend");
        assert_eq!(id.service_account(), Some(("shop", "frontend")));
        assert_eq!(id.namespace(), Some("shop"));

        let other = SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/frontend/extra").unwrap();
        assert_eq!(other.service_account(), None);
        assert_eq!(other.namespace(), Some("shop"));
        let plain = SpiffeId::parse("spiffe://example.org/web").unwrap();
        assert_eq!(plain.namespace(), None);

        assert!(SpiffeId::for_service_account(&td, "sh/op", "x").is_err());
        assert!(SpiffeId::for_service_account(&td, "", "x").is_err());
    }

    #[test]
    fn trust_domain_forms() {
        assert_eq!(
            TrustDomain::parse("example.org").unwrap().as_str(),
            "example.org"
        );
        assert_eq!(
            TrustDomain::parse("spiffe://example.org")
                .unwrap()
                .id_string(),
            "spiffe://example.org"
        );
        assert_eq!(
            TrustDomain::parse("spiffe://example.org/x")
                .unwrap_err()
                .reason,
            UnexpectedPath
        );
        assert_eq!(
            TrustDomain::parse("Example.org").unwrap_err().reason,
            BadTrustDomainChar('E')
        );
        assert_eq!(TrustDomain::parse("").unwrap_err().reason, EmptyTrustDomain);
        assert_eq!(TrustDomain::default().as_str(), DEFAULT_TRUST_DOMAIN);
    }

    #[test]
    fn errors_name_the_input() {
        let e = SpiffeId::parse("spiffe://Example.org/x").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("\"spiffe://Example.org/x\""), "{msg}");
        assert!(msg.contains("'E'"), "{msg}");
        let long = format!("spiffe://x/{}", "y".repeat(5000));
        let msg = SpiffeId::parse(&long).unwrap_err().to_string();
        assert!(msg.len() < 300, "error stays one short line: {}", msg.len());
    }
}
