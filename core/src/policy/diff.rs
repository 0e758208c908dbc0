//! `warden policy diff`: which decisions change between two policy sets. Requests come from
//! recorded traffic (each counted as often as it was seen), or are generated from the values
//! the two sets name (one representative request per class the policies can tell apart:
//! every named workload, caller, port, method and path, plus one of each they do not name).

use std::collections::{BTreeMap, BTreeSet};

use super::evaluate::Decision;
use super::{AuthorizationPolicy, Pattern};
use crate::audit::AuditRecord;
use crate::SpiffeId;

/// A request both sets decide.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Probe {
    /// The protected workload's SPIFFE ID.
    pub workload: SpiffeId,
    /// The caller (`None`: unauthenticated).
    pub client: Option<SpiffeId>,
    /// The app port.
    pub port: u16,
    /// `(method, path)` for HTTP, `None` for opaque TCP.
    pub http: Option<(String, String)>,
}

impl Probe {
    /// The recorded request of `record` (`None` when its IDs do not parse).
    pub fn from_record(record: &AuditRecord) -> Option<Self> {
        Some(Self {
            workload: SpiffeId::parse(&record.workload).ok()?,
            client: match &record.client {
                Some(c) => Some(SpiffeId::parse(c).ok()?),
                None => None,
            },
            port: record.port,
            http: record
                .method
                .as_ref()
                .zip(record.path.as_ref())
                .map(|(m, p)| (m.to_ascii_uppercase(), p.clone())),
        })
    }

    fn what(&self) -> String {
        match &self.http {
            Some((m, p)) => format!("port {} {m} {p}", self.port),
            None => format!("port {} TCP", self.port),
        }
    }
}

/// The most requests [`probes`] generates before giving up (use recorded traffic then).
pub const MAX_PROBES: usize = 2_000_000;

/// Names no policy uses, for "anything else".
const OTHER: &str = "warden-diff-other";

/// Representative requests for the values `sets` name, within `trust_domain`: per
/// namespace a policy protects (and one no policy names), each ServiceAccount its selectors
/// name and one other; as
/// callers, every identity named (patterns instantiated), one per namespace named, the
/// workloads themselves, an unknown one, a foreign trust domain's and an unauthenticated
/// one; every port named and one other; every method and path named (patterns
/// instantiated) with `/` and GET, and opaque TCP. Errors when there would be more than
/// [`MAX_PROBES`].
pub fn probes(trust_domain: &str, sets: &[&[AuthorizationPolicy]]) -> Result<Vec<Probe>, String> {
    let policies = || sets.iter().flat_map(|s| s.iter());
    let id =
        |ns: &str, sa: &str| SpiffeId::parse(&format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}"));
    let mut workloads: BTreeSet<SpiffeId> = BTreeSet::new();
    let mut namespaces: BTreeSet<String> = BTreeSet::new();
    for policy in policies() {
        let ns = if policy.metadata.mesh {
            OTHER
        } else {
            &policy.metadata.namespace
        };
        namespaces.insert(ns.to_string());
        for sa in policy
            .spec
            .selector
            .iter()
            .flat_map(|s| &s.service_accounts)
        {
            workloads.extend(id(ns, sa));
        }
    }
    // And a namespace no policy names: where only the mesh default decides.
    namespaces.insert(OTHER.to_string());
    for ns in &namespaces {
        workloads.extend(id(ns, OTHER));
    }
    let rules = || policies().flat_map(|p| &p.spec.rules);
    let mut callers: BTreeSet<Option<SpiffeId>> = BTreeSet::new();
    callers.insert(None);
    callers.extend(workloads.iter().cloned().map(Some));
    callers.extend(id(OTHER, OTHER).ok().map(Some));
    callers.extend(
        SpiffeId::parse(&format!("spiffe://{OTHER}.example/ns/{OTHER}/sa/{OTHER}"))
            .ok()
            .map(Some),
    );
    for rule in rules() {
        for pattern in rule.from.identities.iter().flatten() {
            callers.extend(
                instances_of_identity(pattern, trust_domain)
                    .into_iter()
                    .map(Some),
            );
        }
        for ns in rule.from.namespaces.iter().flatten() {
            callers.extend(id(if ns == "*" { OTHER } else { ns }, OTHER).ok().map(Some));
        }
    }
    let mut ports: BTreeSet<u16> = rules()
        .flat_map(|r| r.to.ports.iter().flatten().copied())
        .collect();
    ports.insert((1..=u16::MAX).find(|p| !ports.contains(p)).unwrap_or(1));
    let mut methods: BTreeSet<String> = rules()
        .flat_map(|r| r.to.methods.iter().flatten().cloned())
        .collect();
    methods.insert("GET".into());
    // And one method no rule names, for "any other method".
    let other_method = ["POST", "DELETE", "PUT", "PATCH"]
        .into_iter()
        .find(|m| !methods.contains(*m))
        .unwrap_or("WARDEN-DIFF-OTHER");
    methods.insert(other_method.into());
    let mut paths: BTreeSet<String> = BTreeSet::from(["/".to_string()]);
    for pattern in rules().flat_map(|r| r.to.paths.iter().flatten()) {
        paths.extend(instances_of_path(pattern));
    }
    let mut http: Vec<Option<(String, String)>> = vec![None];
    for m in &methods {
        http.extend(paths.iter().map(|p| Some((m.clone(), p.clone()))));
    }
    let total = workloads.len() * callers.len() * ports.len() * http.len();
    if total > MAX_PROBES {
        return Err(format!(
            "the two sets name too many values to compare every combination ({total} requests); compare against recorded traffic (--against)"
        ));
    }
    let mut out = Vec::with_capacity(total);
    for workload in &workloads {
        for client in &callers {
            for port in &ports {
                for h in &http {
                    out.push(Probe {
                        workload: workload.clone(),
                        client: client.clone(),
                        port: *port,
                        http: h.clone(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// SPIFFE IDs an identity pattern matches (exact: itself; a prefix or suffix: one made up).
fn instances_of_identity(pattern: &str, trust_domain: &str) -> Vec<SpiffeId> {
    let candidates = match Pattern::parse(pattern) {
        Ok(Pattern::Exact(e)) => vec![e.to_string()],
        Ok(Pattern::Prefix(p)) if p.ends_with('/') => {
            vec![format!("{p}sa/{OTHER}"), format!("{p}{OTHER}")]
        }
        Ok(Pattern::Prefix(p)) => vec![
            format!("{p}{OTHER}"),
            format!("{p}/sa/{OTHER}"),
            format!("{p}.{OTHER}/ns/{OTHER}/sa/{OTHER}"),
        ],
        Ok(Pattern::Suffix(s)) => vec![
            format!("spiffe://{trust_domain}/ns/{OTHER}{s}"),
            format!("spiffe://{trust_domain}{s}"),
            format!("spiffe://{trust_domain}/{s}"),
        ],
        Ok(Pattern::Any) | Err(_) => vec![],
    };
    candidates
        .iter()
        .find_map(|c| {
            SpiffeId::parse(c)
                .ok()
                .filter(|id| Pattern::parse(pattern).is_ok_and(|p| p.matches(id.as_str())))
        })
        .into_iter()
        .collect()
}

/// Paths a path pattern matches, and the pattern's stem (what a prefix barely misses).
fn instances_of_path(pattern: &str) -> Vec<String> {
    match Pattern::parse(pattern) {
        Ok(Pattern::Exact(e)) => vec![e.to_string()],
        Ok(Pattern::Prefix(p)) => {
            let mut out = vec![format!("{p}{OTHER}")];
            if let Some(stem) = p.strip_suffix('/').filter(|s| !s.is_empty()) {
                out.push(stem.to_string());
            }
            out
        }
        Ok(Pattern::Suffix(s)) => vec![format!("/{OTHER}{s}")],
        Ok(Pattern::Any) | Err(_) => vec![],
    }
}

/// A decision, as the diff shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Outcome {
    /// `allow`, `deny` or `audit`.
    pub label: &'static str,
    /// The deciding policy (or `default`, `no-match`).
    pub policy: String,
}

impl Outcome {
    /// The outcome of `decision`.
    pub fn of(decision: &Decision) -> Self {
        Self {
            label: decision.label(),
            policy: decision.policy_label().to_string(),
        }
    }
}

/// How a request's decision changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Allowed (or audited) before, denied now.
    NewlyDenied,
    /// Denied before, allowed (or audited) now.
    NewlyAllowed,
    /// Still let through, but audit flags change, or another policy decides.
    Other,
}

/// One changed request and how often it was seen (1 for a generated one).
#[derive(Debug, Clone)]
pub struct Change {
    /// The request.
    pub probe: Probe,
    /// Before.
    pub old: Outcome,
    /// After.
    pub new: Outcome,
    /// Times seen.
    pub count: u64,
}

impl Change {
    /// Which way the decision moved.
    pub fn kind(&self) -> Kind {
        match (self.old.label == "deny", self.new.label == "deny") {
            (false, true) => Kind::NewlyDenied,
            (true, false) => Kind::NewlyAllowed,
            _ => Kind::Other,
        }
    }

    /// One line: the request and its two decisions.
    pub fn line(&self) -> String {
        format!(
            "{}: {} by {} -> {} by {}{}",
            self.probe.what(),
            self.old.label,
            self.old.policy,
            self.new.label,
            self.new.policy,
            if self.count > 1 {
                format!(" ({} requests)", self.count)
            } else {
                String::new()
            }
        )
    }
}

/// Changes grouped by caller and workload.
#[derive(Debug, Clone, Default)]
pub struct DiffReport {
    /// Requests compared (counting repeats).
    pub compared: u64,
    /// By `(caller, workload)`: the changes, in request order.
    pub groups: BTreeMap<(String, String), Vec<Change>>,
}

impl DiffReport {
    /// Requests (counting repeats) whose decision moves `kind`'s way.
    pub fn count(&self, kind: Kind) -> u64 {
        self.groups
            .values()
            .flatten()
            .filter(|c| c.kind() == kind)
            .map(|c| c.count)
            .sum()
    }
}

/// Decides every request under both sets and keeps the ones that differ. `requests` are
/// `(request, times seen)`; equal requests are merged.
pub fn compare(
    requests: impl IntoIterator<Item = (Probe, u64)>,
    old: impl Fn(&Probe) -> Decision,
    new: impl Fn(&Probe) -> Decision,
) -> DiffReport {
    let mut merged: BTreeMap<Probe, u64> = BTreeMap::new();
    for (probe, count) in requests {
        *merged.entry(probe).or_default() += count;
    }
    let mut report = DiffReport::default();
    for (probe, count) in merged {
        report.compared += count;
        let (before, after) = (Outcome::of(&old(&probe)), Outcome::of(&new(&probe)));
        if before != after {
            let caller = probe
                .client
                .as_ref()
                .map_or("unauthenticated".to_string(), |c| c.to_string());
            report
                .groups
                .entry((caller, probe.workload.to_string()))
                .or_default()
                .push(Change {
                    probe,
                    old: before,
                    new: after,
                    count,
                });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::evaluate::{DefaultPolicy, PolicySet, Request, Workload};
    use crate::policy::parse;

    const OLD: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
      to: {ports: [8080], paths: ["/api/*"]}
    - from: {namespaces: [batch]}
      to: {ports: [5432]}
"#;

    /// The new set: POST refused to the frontend, batch narrowed to one job, and reports
    /// let in.
    const NEW: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
      to: {ports: [8080], methods: [GET], paths: ["/api/*"]}
    - from: {identities: ["spiffe://cluster.local/ns/batch/sa/nightly"]}
      to: {ports: [5432]}
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/reports"]}
      to: {ports: [8080], methods: [GET], paths: ["/api/reports"]}
"#;

    fn decider(text: &str) -> impl Fn(&Probe) -> Decision {
        let set = PolicySet::new(parse(text, "p.yaml").unwrap());
        move |p: &Probe| {
            let request = Request {
                client: p.client.as_ref(),
                port: p.port,
                http: p.http.as_ref().map(|(m, p)| (m.as_str(), p.as_str())),
            };
            set.evaluate(
                &Workload::from_id(&p.workload),
                &request,
                DefaultPolicy::Deny,
            )
        }
    }

    fn probe(client: Option<&str>, port: u16, http: Option<(&str, &str)>) -> Probe {
        Probe {
            workload: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/backend").unwrap(),
            client: client
                .map(|c| SpiffeId::parse(&format!("spiffe://cluster.local/{c}")).unwrap()),
            port,
            http: http.map(|(m, p)| (m.to_string(), p.to_string())),
        }
    }

    #[test]
    fn generated_requests_find_every_change_both_ways() {
        let (old, new) = (parse(OLD, "o").unwrap(), parse(NEW, "n").unwrap());
        let requests = probes("cluster.local", &[&old, &new]).unwrap();
        let report = compare(
            requests.into_iter().map(|p| (p, 1)),
            decider(OLD),
            decider(NEW),
        );
        let groups: Vec<String> = report
            .groups
            .iter()
            .map(|((caller, _), changes)| {
                let kinds: BTreeSet<Kind> = changes.iter().map(Change::kind).collect();
                format!("{caller} {kinds:?}")
            })
            .collect();
        assert_eq!(
            groups,
            [
                "spiffe://cluster.local/ns/batch/sa/warden-diff-other {NewlyDenied}",
                "spiffe://cluster.local/ns/shop/sa/frontend {NewlyDenied}",
                "spiffe://cluster.local/ns/shop/sa/reports {NewlyAllowed}",
            ]
        );
        // The frontend loses exactly the non-GET methods on /api/*.
        let frontend = &report.groups[&(
            "spiffe://cluster.local/ns/shop/sa/frontend".to_string(),
            "spiffe://cluster.local/ns/shop/sa/backend".to_string(),
        )];
        assert!(frontend.iter().all(|c| c.probe.port == 8080
            && c.probe
                .http
                .as_ref()
                .is_some_and(|(m, p)| m != "GET" && p.starts_with("/api/"))));
        assert!(!frontend.is_empty());
    }

    #[test]
    fn recorded_requests_are_counted_by_caller_and_workload() {
        let fe = Some("ns/shop/sa/frontend");
        let requests = vec![
            (probe(fe, 8080, Some(("GET", "/api/orders"))), 40),
            (probe(fe, 8080, Some(("POST", "/api/orders"))), 7),
            (probe(fe, 8080, Some(("POST", "/api/orders"))), 3),
            (probe(Some("ns/batch/sa/nightly"), 5432, None), 5),
            (probe(Some("ns/batch/sa/adhoc"), 5432, None), 2),
            (
                probe(
                    Some("ns/shop/sa/reports"),
                    8080,
                    Some(("GET", "/api/reports")),
                ),
                9,
            ),
        ];
        let report = compare(requests, decider(OLD), decider(NEW));
        assert_eq!(report.compared, 66);
        assert_eq!(report.count(Kind::NewlyDenied), 12);
        assert_eq!(report.count(Kind::NewlyAllowed), 9);
        assert_eq!(report.count(Kind::Other), 0);
        let lines: Vec<String> = report.groups.values().flatten().map(Change::line).collect();
        assert_eq!(
            lines,
            [
                "port 5432 TCP: allow by shop/backend -> deny by no-match (2 requests)",
                "port 8080 POST /api/orders: allow by shop/backend -> deny by no-match (10 requests)",
                "port 8080 GET /api/reports: deny by no-match -> allow by shop/backend (9 requests)",
            ]
        );
    }

    #[test]
    fn a_changed_mesh_default_alone_is_a_change() {
        let requests = probes("cluster.local", &[&[], &[]]).unwrap();
        assert!(!requests.is_empty());
        let decide = |default| {
            let set = PolicySet::new(Vec::new());
            move |p: &Probe| {
                let request = Request {
                    client: p.client.as_ref(),
                    port: p.port,
                    http: p.http.as_ref().map(|(m, p)| (m.as_str(), p.as_str())),
                };
                set.evaluate(&Workload::from_id(&p.workload), &request, default)
            }
        };
        let report = compare(
            requests.into_iter().map(|p| (p, 1)),
            decide(DefaultPolicy::AllAuthenticated),
            decide(DefaultPolicy::Deny),
        );
        assert!(report.count(Kind::NewlyDenied) > 0);
        assert_eq!(report.count(Kind::NewlyAllowed), 0);
    }

    #[test]
    fn patterns_are_instantiated_to_ids_and_paths_they_match() {
        let td = "cluster.local";
        let cases = [
            (
                "spiffe://cluster.local/ns/batch/*",
                "spiffe://cluster.local/ns/batch/sa/warden-diff-other",
            ),
            (
                "spiffe://cluster.local/ns/batch/sa/job-*",
                "spiffe://cluster.local/ns/batch/sa/job-warden-diff-other",
            ),
            (
                "*/sa/admin",
                "spiffe://cluster.local/ns/warden-diff-other/sa/admin",
            ),
            (
                "spiffe://other.org/ns/a/sa/b",
                "spiffe://other.org/ns/a/sa/b",
            ),
        ];
        for (pattern, want) in cases {
            let got: Vec<String> = instances_of_identity(pattern, td)
                .iter()
                .map(|i| i.to_string())
                .collect();
            assert_eq!(got, [want], "{pattern}");
        }
        assert!(instances_of_identity("*", td).is_empty());
        assert_eq!(
            instances_of_path("/api/*"),
            ["/api/warden-diff-other", "/api"]
        );
        assert_eq!(instances_of_path("*.json"), ["/warden-diff-other.json"]);
    }
}
