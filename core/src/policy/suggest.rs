//! `warden policy suggest`: the smallest set of AuthorizationPolicies that allows every
//! request seen in audit records, per workload: its callers, ports, methods and paths, each
//! rule counting the requests it covers. A pure function of the records and the options.
//!
//! Rules are built so that each allows no more than what was seen, after the chosen
//! generalization: requests are grouped by caller, port and path into the methods seen;
//! paths with the same callers, port and methods share a rule; callers with the same
//! port, methods and paths share one; ports with the same everything else share one.

use std::collections::{BTreeMap, BTreeSet};

use super::{Action, AuthorizationPolicy, From, Rule, Selector, Spec, To};
use crate::audit::AuditRecord;
use crate::SpiffeId;

/// How far to generalize what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Keep this many leading path segments and allow anything below them (`/api/v1/*` at
    /// 2); `None` keeps exact paths.
    pub path_depth: Option<usize>,
    /// Callers of the workload's trust domain collapsed to their namespace.
    pub by_namespace: bool,
    /// The suggested policies' action: AUDIT first, then ALLOW.
    pub action: Action,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            path_depth: None,
            by_namespace: false,
            action: Action::Audit,
        }
    }
}

/// How many requests a rule covers, and when they were seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Recorded requests.
    pub requests: u64,
    /// The first one's time (RFC 3339).
    pub first: String,
    /// The last one's time.
    pub last: String,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.requests += other.requests;
        if self.first.is_empty() || (!other.first.is_empty() && other.first < self.first) {
            self.first.clone_from(&other.first);
        }
        if other.last > self.last {
            self.last.clone_from(&other.last);
        }
    }

    fn seen(time: &str) -> Self {
        Self {
            requests: 1,
            first: time.to_string(),
            last: time.to_string(),
        }
    }
}

/// One suggested policy and what each of its rules covers (same order as its rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggested {
    /// The policy, valid as a file or CRD.
    pub policy: AuthorizationPolicy,
    /// Per rule.
    pub coverage: Vec<Coverage>,
}

/// The suggestion: policies, and the records left out and why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Suggestion {
    /// One policy per workload, by namespace then ServiceAccount.
    pub policies: Vec<Suggested>,
    /// Decision records used.
    pub used: u64,
    /// Records left out, counted by reason.
    pub skipped: BTreeMap<String, u64>,
    /// Where a rule had to allow more than was seen, and why.
    pub notes: Vec<String>,
}

/// A caller, as a rule names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Caller {
    Identity(String),
    Namespace(String),
    Unauthenticated,
}

/// What was called on a port: opaque TCP, an HTTP path (pattern) with its methods, or
/// anything (a port that carried both: see [`widen_mixed_ports`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum PathKey {
    Opaque,
    Path(String),
    Any,
}

/// The path as a rule writes it: generalized to `depth` segments, and never a pattern by
/// accident (a `*` inside a recorded path makes it a prefix up to the `*`, a superset).
fn path_pattern(path: &str, depth: Option<usize>) -> String {
    let path = path.split(['?', '#']).next().unwrap_or(path);
    let path = if path.starts_with('/') { path } else { "/" };
    let mut pattern = match depth {
        Some(depth) => {
            let segments: Vec<&str> = path[1..].split('/').collect();
            if segments.len() > depth {
                let kept = segments[..depth].join("/");
                if kept.is_empty() {
                    "/*".to_string()
                } else {
                    format!("/{kept}/*")
                }
            } else {
                path.to_string()
            }
        }
        None => path.to_string(),
    };
    if let Some(star) = pattern.find('*') {
        pattern.truncate(star + 1);
    }
    pattern
}

fn method_token(method: &str) -> Option<String> {
    let upper = method.to_ascii_uppercase();
    (!upper.is_empty() && upper.bytes().all(|b| b.is_ascii_uppercase() || b == b'-'))
        .then_some(upper)
}

/// Seen requests of one workload: `(caller, port, path)` to the methods seen (empty for
/// opaque TCP) with their coverage.
type Seen = BTreeMap<(Caller, u16, PathKey), BTreeMap<String, Coverage>>;

/// Suggests policies allowing every allowed or audited decision of `records`; denied ones
/// (a DENY policy decided them, or the default refused them) are left out and counted.
pub fn suggest(records: &[AuditRecord], options: &Options) -> Suggestion {
    let mut suggestion = Suggestion::default();
    let mut skip = |why: &str| *suggestion.skipped.entry(why.to_string()).or_default() += 1;
    let mut workloads: BTreeMap<(String, String), Seen> = BTreeMap::new();
    for record in records {
        if record.decision == "deny" {
            skip("denied when recorded");
            continue;
        }
        let Some((td, namespace, sa)) = SpiffeId::parse(&record.workload).ok().and_then(|id| {
            let (ns, sa) = id.service_account()?;
            Some((
                id.trust_domain_name().to_string(),
                ns.to_string(),
                sa.to_string(),
            ))
        }) else {
            skip("workload is not a Kubernetes SPIFFE ID");
            continue;
        };
        let caller = match &record.client {
            None => Caller::Unauthenticated,
            Some(client) => match SpiffeId::parse(client) {
                Err(_) => {
                    skip("caller is not a SPIFFE ID");
                    continue;
                }
                Ok(id) => match id.namespace() {
                    Some(ns) if options.by_namespace && id.trust_domain_name() == td => {
                        Caller::Namespace(ns.to_string())
                    }
                    _ => Caller::Identity(id.to_string()),
                },
            },
        };
        if record.port == 0 {
            skip("port 0");
            continue;
        }
        let (path, method) = match (&record.method, &record.path) {
            (Some(method), Some(path)) => match method_token(method) {
                Some(m) => (PathKey::Path(path_pattern(path, options.path_depth)), m),
                None => {
                    skip("method cannot be written in a policy");
                    continue;
                }
            },
            _ => (PathKey::Opaque, String::new()),
        };
        let seen = workloads.entry((namespace, sa)).or_default();
        seen.entry((caller, record.port, path))
            .or_default()
            .entry(method)
            .or_default()
            .add(&Coverage::seen(&record.time));
    }
    for ((namespace, sa), seen) in workloads {
        let requests: u64 = seen
            .values()
            .flat_map(|m| m.values())
            .map(|c| c.requests)
            .sum();
        let seen = widen_mixed_ports(seen, &format!("{namespace}/{sa}"), &mut suggestion.notes);
        let (rules, coverage): (Vec<Rule>, Vec<Coverage>) = rules(seen).into_iter().unzip();
        let spec = Spec {
            selector: Some(Selector {
                service_accounts: vec![sa.clone()],
            }),
            action: options.action,
            rules,
        };
        let name = format!("{sa}-suggested");
        match AuthorizationPolicy::checked(name, namespace, false, spec) {
            Ok(policy) => {
                suggestion.used += requests;
                suggestion.policies.push(Suggested { policy, coverage })
            }
            // A ServiceAccount name too long for `<name>-suggested`, say: fail closed.
            Err((field, why)) => {
                *suggestion
                    .skipped
                    .entry(format!("suggested policy invalid: {field}: {why}"))
                    .or_default() += requests
            }
        }
    }
    suggestion
}

/// A port that carried opaque TCP and HTTP (from any callers) is allowed whole: an ALLOW rule
/// with HTTP fields refuses opaque TCP on its port (so a connection cannot dodge it by not
/// looking like HTTP), which would refuse the TCP that was seen. Says so in `notes`.
fn widen_mixed_ports(seen: Seen, workload: &str, notes: &mut Vec<String>) -> Seen {
    let ports = |opaque: bool| -> BTreeSet<u16> {
        seen.keys()
            .filter(|(_, _, t)| (*t == PathKey::Opaque) == opaque)
            .map(|(_, port, _)| *port)
            .collect()
    };
    let mixed: BTreeSet<u16> = ports(true).intersection(&ports(false)).copied().collect();
    for port in &mixed {
        notes.push(format!(
            "{workload} port {port} carried both HTTP and opaque TCP: allowed for any request there"
        ));
    }
    let mut out = Seen::new();
    for ((caller, port, target), methods) in seen {
        if mixed.contains(&port) {
            let any = out
                .entry((caller, port, PathKey::Any))
                .or_default()
                .entry(String::new())
                .or_default();
            for coverage in methods.values() {
                any.add(coverage);
            }
        } else {
            out.insert((caller, port, target), methods);
        }
    }
    out
}

/// The methods seen, as a rule's `methods` (empty set: opaque TCP).
type Methods = BTreeSet<String>;

/// The rules of one workload, merged step by step (see the module's comment).
fn rules(seen: Seen) -> Vec<(Rule, Coverage)> {
    // (caller, port, methods) -> paths.
    let mut by_methods: BTreeMap<(Caller, u16, Methods), (BTreeSet<PathKey>, Coverage)> =
        BTreeMap::new();
    for ((caller, port, path), methods) in seen {
        let entry = by_methods
            .entry((
                caller,
                port,
                methods.keys().filter(|m| !m.is_empty()).cloned().collect(),
            ))
            .or_default();
        entry.0.insert(path);
        for coverage in methods.values() {
            entry.1.add(coverage);
        }
    }
    // (caller kind, port, methods, paths) -> callers.
    type CallerKind = u8;
    let kind = |c: &Caller| match c {
        Caller::Identity(_) => 0,
        Caller::Namespace(_) => 1,
        Caller::Unauthenticated => 2,
    };
    type Paths = BTreeSet<PathKey>;
    type Callers = BTreeSet<Caller>;
    let mut by_target: BTreeMap<(CallerKind, u16, Methods, Paths), (Callers, Coverage)> =
        BTreeMap::new();
    for ((caller, port, methods), (paths, coverage)) in by_methods {
        let entry = by_target
            .entry((kind(&caller), port, methods, paths))
            .or_default();
        entry.0.insert(caller);
        entry.1.add(&coverage);
    }
    // (callers, methods, paths) -> ports.
    let mut by_callers: BTreeMap<(Callers, Methods, Paths), (BTreeSet<u16>, Coverage)> =
        BTreeMap::new();
    for ((_, port, methods, paths), (callers, coverage)) in by_target {
        let entry = by_callers.entry((callers, methods, paths)).or_default();
        entry.0.insert(port);
        entry.1.add(&coverage);
    }
    by_callers
        .into_iter()
        .map(|((callers, methods, paths), (ports, coverage))| {
            let mut from = From::default();
            for caller in callers {
                match caller {
                    Caller::Identity(id) => from.identities.get_or_insert_default().push(id),
                    Caller::Namespace(ns) => from.namespaces.get_or_insert_default().push(ns),
                    Caller::Unauthenticated => from.unauthenticated = true,
                }
            }
            let opaque = paths.iter().all(|t| *t == PathKey::Opaque);
            let paths: Vec<String> = paths
                .into_iter()
                .filter_map(|t| match t {
                    PathKey::Path(p) => Some(p),
                    PathKey::Opaque | PathKey::Any => None,
                })
                .collect();
            let to = To {
                ports: Some(ports.into_iter().collect()),
                methods: (!methods.is_empty()).then(|| methods.into_iter().collect()),
                opaque,
                paths: (!paths.is_empty()).then_some(paths),
            };
            (Rule { from, to }, coverage)
        })
        .collect()
}

/// The suggestion as YAML for `kubectl apply -f` (or a policy directory): one document per
/// policy, a comment on each rule saying how many requests it covers and when.
pub fn to_yaml(suggestion: &Suggestion) -> String {
    let mut out = String::new();
    for suggested in &suggestion.policies {
        let policy = &suggested.policy;
        let total: u64 = suggested.coverage.iter().map(|c| c.requests).sum();
        out.push_str(&format!(
            "---\n# Suggested from {total} recorded requests to {}/{}; review before applying.\n",
            policy.metadata.namespace,
            policy
                .spec
                .selector
                .as_ref()
                .map_or("*", |s| s.service_accounts[0].as_str())
        ));
        out.push_str(&format!(
            "apiVersion: {}\nkind: {}\nmetadata:\n  name: {}\n  namespace: {}\nspec:\n",
            policy.api_version,
            policy.kind,
            flow_item(&policy.metadata.name),
            flow_item(&policy.metadata.namespace)
        ));
        if let Some(selector) = &policy.spec.selector {
            out.push_str(&format!(
                "  selector:\n    serviceAccounts: {}\n",
                flow(&selector.service_accounts)
            ));
        }
        out.push_str(&format!("  action: {}\n  rules:\n", policy.spec.action));
        for (rule, coverage) in policy.spec.rules.iter().zip(&suggested.coverage) {
            out.push_str(&format!(
                "    # {} request{}, {} to {}{}\n",
                coverage.requests,
                if coverage.requests == 1 { "" } else { "s" },
                coverage.first,
                coverage.last,
                if rule.from.unauthenticated {
                    "; unauthenticated callers: this rule matches any caller"
                } else {
                    ""
                }
            ));
            out.push_str("    - from:");
            let from = &rule.from;
            let mut any = false;
            if let Some(ids) = &from.identities {
                out.push_str(&format!("\n        identities: {}", flow(ids)));
                any = true;
            }
            if let Some(namespaces) = &from.namespaces {
                out.push_str(&format!("\n        namespaces: {}", flow(namespaces)));
                any = true;
            }
            if from.unauthenticated {
                out.push_str("\n        unauthenticated: true");
                any = true;
            }
            if !any {
                out.push_str(" {}");
            }
            out.push_str("\n      to:\n");
            let ports: Vec<String> = rule
                .to
                .ports
                .iter()
                .flatten()
                .map(|p| p.to_string())
                .collect();
            out.push_str(&format!("        ports: [{}]\n", ports.join(", ")));
            if let Some(methods) = &rule.to.methods {
                out.push_str(&format!("        methods: {}\n", flow(methods)));
            }
            if let Some(paths) = &rule.to.paths {
                out.push_str(&format!("        paths: {}\n", flow(paths)));
            }
            if rule.to.opaque {
                out.push_str("        opaque: true\n");
            }
        }
    }
    out
}

/// A YAML flow sequence of strings, each double-quoted (JSON strings are YAML scalars).
fn flow(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| flow_item(s)).collect();
    format!("[{}]", quoted.join(", "))
}

/// A string as a double-quoted YAML scalar (`yes`, `null` and the like stay strings).
fn flow_item(item: &str) -> String {
    serde_json::to_string(item).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::evaluate::{DefaultPolicy, PolicySet, Request, Workload};
    use crate::policy::parse;

    const TD: &str = "spiffe://cluster.local";

    fn record(
        client: Option<&str>,
        workload: &str,
        port: u16,
        http: Option<(&str, &str)>,
        decision: &str,
    ) -> AuditRecord {
        AuditRecord {
            chain: "shop/backend-1/1-a".into(),
            seq: 1,
            time: "2026-11-26T10:00:00Z".into(),
            direction: "inbound".into(),
            client: client.map(|c| format!("{TD}/{c}")),
            client_addr: None,
            workload: format!("{TD}/{workload}"),
            port,
            method: http.map(|h| h.0.to_string()),
            path: http.map(|h| h.1.to_string()),
            decision: decision.into(),
            policy: None,
            rule: None,
            reason: "default".into(),
            audit_policies: None,
            request_id: None,
            prev: String::new(),
        }
    }

    fn traffic() -> Vec<AuditRecord> {
        let fe = Some("ns/shop/sa/frontend");
        let rep = Some("ns/shop/sa/reports");
        let batch = Some("ns/batch/sa/nightly");
        vec![
            record(
                fe,
                "ns/shop/sa/backend",
                8080,
                Some(("GET", "/api/orders/1")),
                "allow",
            ),
            record(
                fe,
                "ns/shop/sa/backend",
                8080,
                Some(("GET", "/api/orders/2")),
                "audit",
            ),
            record(
                fe,
                "ns/shop/sa/backend",
                8080,
                Some(("POST", "/api/orders")),
                "allow",
            ),
            record(
                rep,
                "ns/shop/sa/backend",
                8080,
                Some(("GET", "/api/orders/1")),
                "allow",
            ),
            record(batch, "ns/shop/sa/backend", 5432, None, "allow"),
            record(
                fe,
                "ns/shop/sa/backend",
                8080,
                Some(("GET", "/secret")),
                "deny",
            ),
            record(None, "ns/shop/sa/web", 80, Some(("get", "/")), "allow"),
            record(
                fe,
                "ns/shop/sa/ledger",
                9090,
                Some(("GET", "/a*b/c")),
                "allow",
            ),
            record(fe, "not-kubernetes", 80, Some(("GET", "/")), "allow"),
        ]
    }

    /// Evaluates `record` against `set` as the proxy would.
    fn decide(set: &PolicySet, r: &AuditRecord) -> bool {
        let workload = SpiffeId::parse(&r.workload).unwrap();
        let client = r.client.as_deref().map(|c| SpiffeId::parse(c).unwrap());
        let method = r.method.as_deref().map(str::to_ascii_uppercase);
        let request = Request {
            client: client.as_ref(),
            port: r.port,
            http: method.as_deref().zip(r.path.as_deref()),
        };
        set.evaluate(&Workload::from_id(&workload), &request, DefaultPolicy::Deny)
            .allowed
    }

    #[test]
    fn paths_generalize_to_a_depth_and_never_become_patterns_by_accident() {
        let cases = [
            ("/api/orders/1", None, "/api/orders/1"),
            ("/api/orders/1", Some(2), "/api/orders/*"),
            ("/api/orders/1", Some(1), "/api/*"),
            ("/api/orders/1", Some(0), "/*"),
            ("/api/orders", Some(2), "/api/orders"),
            ("/healthz?x=1", None, "/healthz"),
            ("/a*b/c", None, "/a*"),
            ("/pkg.Service/Method", Some(1), "/pkg.Service/*"),
        ];
        for (path, depth, want) in cases {
            assert_eq!(path_pattern(path, depth), want, "{path} {depth:?}");
        }
    }

    #[test]
    fn the_suggestion_allows_what_was_seen_and_little_else() {
        let records = traffic();
        for options in [
            Options::default(),
            Options {
                path_depth: Some(1),
                by_namespace: true,
                action: Action::Allow,
            },
        ] {
            let suggestion = suggest(&records, &options);
            assert_eq!(suggestion.used, 7, "{options:?}");
            assert_eq!(suggestion.skipped["denied when recorded"], 1);
            assert_eq!(
                suggestion.skipped["workload is not a Kubernetes SPIFFE ID"],
                1
            );
            // The YAML reads back as the same policies, and enforced (as ALLOW) they allow
            // every request used, and refuse a new caller, a new method and a new port.
            let yaml = to_yaml(&suggestion);
            let parsed = parse(&yaml, "suggested.yaml").unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            let mut policies: Vec<AuthorizationPolicy> = suggestion
                .policies
                .iter()
                .map(|s| s.policy.clone())
                .collect();
            assert_eq!(parsed, policies, "{yaml}");
            for p in &mut policies {
                assert_eq!(p.spec.action, options.action);
                p.spec.action = Action::Allow;
            }
            let set = PolicySet::new(policies);
            for r in records.iter().filter(|r| r.decision != "deny") {
                if r.workload.contains("not-kubernetes") {
                    continue;
                }
                assert!(decide(&set, r), "{r:?} refused by\n{yaml}");
            }
            let fe = Some("ns/shop/sa/frontend");
            let refused = [
                record(
                    Some("ns/other/sa/x"),
                    "ns/shop/sa/backend",
                    8080,
                    Some(("GET", "/api/orders/1")),
                    "allow",
                ),
                record(
                    fe,
                    "ns/shop/sa/backend",
                    8080,
                    Some(("DELETE", "/api/orders/1")),
                    "allow",
                ),
                record(
                    fe,
                    "ns/shop/sa/backend",
                    8081,
                    Some(("GET", "/api/orders/1")),
                    "allow",
                ),
                record(fe, "ns/shop/sa/backend", 5432, None, "allow"),
                record(
                    Some("ns/batch/sa/nightly"),
                    "ns/shop/sa/backend",
                    5432,
                    Some(("GET", "/")),
                    "allow",
                ),
            ];
            for r in &refused {
                assert!(!decide(&set, r), "{r:?} allowed by\n{yaml}");
            }
        }
    }

    #[test]
    fn rules_merge_paths_callers_and_ports_and_count_requests() {
        let fe = Some("ns/shop/sa/frontend");
        let rep = Some("ns/shop/sa/reports");
        let b = "ns/shop/sa/backend";
        let records = vec![
            record(fe, b, 8080, Some(("GET", "/a")), "allow"),
            record(fe, b, 8080, Some(("GET", "/b")), "allow"),
            record(rep, b, 8080, Some(("GET", "/a")), "allow"),
            record(rep, b, 8080, Some(("GET", "/b")), "allow"),
            record(rep, b, 8080, Some(("GET", "/b")), "allow"),
            record(fe, b, 9090, Some(("GET", "/a")), "allow"),
            record(fe, b, 9090, Some(("GET", "/b")), "allow"),
        ];
        let suggestion = suggest(&records, &Options::default());
        assert_eq!(suggestion.policies.len(), 1);
        let s = &suggestion.policies[0];
        assert_eq!(s.policy.metadata.name, "backend-suggested");
        assert_eq!(s.policy.metadata.namespace, "shop");
        let rules: Vec<String> = s
            .policy
            .spec
            .rules
            .iter()
            .zip(&s.coverage)
            .map(|(r, c)| {
                format!(
                    "{:?} {:?} {:?} {:?} = {}",
                    r.from.identities, r.to.ports, r.to.methods, r.to.paths, c.requests
                )
            })
            .collect();
        let fe = format!("{TD}/ns/shop/sa/frontend");
        let rep = format!("{TD}/ns/shop/sa/reports");
        assert_eq!(
            rules,
            [
                format!("Some([\"{fe}\"]) Some([9090]) Some([\"GET\"]) Some([\"/a\", \"/b\"]) = 2"),
                format!("Some([\"{fe}\", \"{rep}\"]) Some([8080]) Some([\"GET\"]) Some([\"/a\", \"/b\"]) = 5"),
            ]
        );
        let yaml = to_yaml(&suggestion);
        assert!(
            yaml.contains(
                "    # 5 requests, 2026-11-26T10:00:00Z to 2026-11-26T10:00:00Z\n    - from:\n"
            ),
            "{yaml}"
        );
        assert!(yaml.contains("action: AUDIT"), "{yaml}");
    }

    #[test]
    fn a_port_that_carried_http_and_opaque_tcp_is_allowed_whole() {
        let b = "ns/shop/sa/backend";
        let records = vec![
            record(
                Some("ns/shop/sa/frontend"),
                b,
                9000,
                Some(("GET", "/x")),
                "allow",
            ),
            record(Some("ns/batch/sa/nightly"), b, 9000, None, "allow"),
            record(
                Some("ns/shop/sa/frontend"),
                b,
                8080,
                Some(("GET", "/y")),
                "allow",
            ),
        ];
        let suggestion = suggest(
            &records,
            &Options {
                action: Action::Allow,
                ..Options::default()
            },
        );
        assert_eq!(suggestion.notes, ["shop/backend port 9000 carried both HTTP and opaque TCP: allowed for any request there"]);
        let set = PolicySet::new(
            suggestion
                .policies
                .iter()
                .map(|s| s.policy.clone())
                .collect(),
        );
        // Enforced, both kinds of traffic seen on 9000 pass (an HTTP rule there would refuse
        // the TCP), and 8080 stays HTTP-only.
        for r in &records {
            assert!(decide(&set, r), "{r:?}");
        }
        assert!(!decide(
            &set,
            &record(Some("ns/shop/sa/frontend"), b, 8080, None, "allow")
        ));
        assert_eq!(suggestion.used, 3);
    }

    #[test]
    fn unauthenticated_callers_get_a_rule_that_says_what_it_matches() {
        let records = vec![record(
            None,
            "ns/shop/sa/web",
            80,
            Some(("GET", "/")),
            "allow",
        )];
        let yaml = to_yaml(&suggest(&records, &Options::default()));
        assert!(yaml.contains("unauthenticated: true"), "{yaml}");
        assert!(yaml.contains("this rule matches any caller"), "{yaml}");
    }
}
