//! `warden policy test`: policy as code in CI. A YAML file of cases (caller, workload, port,
//! method, path, and the decision expected, optionally the policy that must make it) is run
//! against a policy set; each failure says what was decided, by which policy and rule, and
//! what was expected. Results print as lines or as JUnit XML.
//!
//! ```yaml
//! default: deny                      # the mesh default when no MeshPolicy sets one
//! cases:
//!   - name: the frontend lists orders
//!     from: spiffe://cluster.local/ns/shop/sa/frontend    # omitted: unauthenticated
//!     workload: spiffe://cluster.local/ns/shop/sa/backend
//!     port: 8080
//!     method: GET                    # with path; both omitted: opaque TCP
//!     path: /api/orders
//!     expect: allow                  # allow | deny | audit
//!     policy: shop/backend-allow-frontend   # optional; also `default` or `no-match`
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use super::evaluate::{Decision, DefaultPolicy};
use crate::yaml::{self, YamlError};
use crate::SpiffeId;

/// A case file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// The mesh default when no MeshPolicy sets one (default: deny).
    #[serde(default)]
    pub default: DefaultPolicy,
    /// The cases, run in order.
    pub cases: Vec<Case>,
}

/// One request and the decision it must get.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Case {
    /// What it checks, in words (default: the request).
    #[serde(default)]
    pub name: Option<String>,
    /// The caller (omitted: unauthenticated).
    #[serde(default)]
    pub from: Option<SpiffeId>,
    /// The protected workload.
    pub workload: SpiffeId,
    /// The app port.
    pub port: u16,
    /// HTTP method (with `path`).
    #[serde(default)]
    pub method: Option<String>,
    /// HTTP path (with `method`), normalized as the proxy would.
    #[serde(default)]
    pub path: Option<String>,
    /// `allow`, `deny` or `audit`.
    pub expect: Expect,
    /// The policy that must decide: `namespace/name`, `MeshPolicy/name`, `default` or
    /// `no-match`.
    #[serde(default)]
    pub policy: Option<String>,
    /// Labels of the workload's namespace (MeshPolicies' namespace selectors read them).
    #[serde(default)]
    pub namespace_labels: BTreeMap<String, String>,
}

/// An expected decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
    /// Let through, flagged by an AUDIT policy or the audit default.
    Audit,
}

impl Expect {
    fn label(self) -> &'static str {
        match self {
            Expect::Allow => "allow",
            Expect::Deny => "deny",
            Expect::Audit => "audit",
        }
    }
}

impl Case {
    /// The case's name, or the request in words.
    pub fn title(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let what = match (&self.method, &self.path) {
                (Some(m), Some(p)) => format!("{m} {p}"),
                _ => "TCP".to_string(),
            };
            let from = self
                .from
                .as_ref()
                .map_or("unauthenticated".to_string(), |f| f.to_string());
            format!("{from} -> {}:{} {what}", self.workload, self.port)
        })
    }
}

/// Reads a case file; errors name the file, the field and the problem.
pub fn parse(text: &str, source: &str) -> Result<CaseFile, YamlError> {
    let file: CaseFile = yaml::from_str(text, source)?;
    if file.cases.is_empty() {
        // A gate that tests nothing must not pass.
        return Err(YamlError {
            source: source.to_string(),
            field: "cases".into(),
            message: "no cases: give at least one".into(),
        });
    }
    for (i, case) in file.cases.iter().enumerate() {
        let bad = |field: &str, message: &str| YamlError {
            source: source.to_string(),
            field: format!("cases[{i}].{field}"),
            message: message.to_string(),
        };
        if case.method.is_some() != case.path.is_some() {
            return Err(bad(
                "method",
                "method and path go together (both omitted: TCP)",
            ));
        }
        if case.port == 0 {
            return Err(bad("port", "port 0 is not a port"));
        }
    }
    Ok(file)
}

/// What one case got.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The case's title.
    pub title: String,
    /// `None`: passed; else why it failed.
    pub failure: Option<String>,
}

/// Runs every case: `decide` evaluates one (an error, e.g. a path the proxy would refuse,
/// fails that case with the error).
pub fn run(file: &CaseFile, decide: impl Fn(&Case) -> Result<Decision, String>) -> Vec<Outcome> {
    file.cases
        .iter()
        .map(|case| Outcome {
            title: case.title(),
            failure: match decide(case) {
                Err(e) => Some(format!("cannot evaluate: {e}")),
                Ok(decision) => check(case, &decision),
            },
        })
        .collect()
}

/// Why `decision` is not what `case` expects, if it is not.
pub fn check(case: &Case, decision: &Decision) -> Option<String> {
    let label_ok = decision.label() == case.expect.label();
    let policy_ok = case
        .policy
        .as_deref()
        .is_none_or(|p| p == decision.policy_label());
    if label_ok && policy_ok {
        return None;
    }
    let expected = match &case.policy {
        Some(p) => format!("{} by {p}", case.expect.label()),
        None => case.expect.label().to_string(),
    };
    Some(format!(
        "expected {expected}, got {} by {}{} ({})",
        decision.label(),
        decision.policy_label(),
        decision
            .rule
            .map(|r| format!(" rule {r}"))
            .unwrap_or_default(),
        decision.reason()
    ))
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Characters XML 1.0 cannot carry at all.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The outcomes of each case file `(name, outcomes)` as a JUnit XML report (a suite per
/// file), what CI systems read.
pub fn junit(suites: &[(String, Vec<Outcome>)]) -> String {
    let failed = |o: &[Outcome]| o.iter().filter(|o| o.failure.is_some()).count();
    let all: usize = suites.iter().map(|(_, o)| o.len()).sum();
    let all_failed: usize = suites.iter().map(|(_, o)| failed(o)).sum();
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"warden policy test\" tests=\"{all}\" failures=\"{all_failed}\" errors=\"0\">\n"
    );
    for (suite, outcomes) in suites {
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"0\" skipped=\"0\">\n",
            xml_escape(suite),
            outcomes.len(),
            failed(outcomes)
        ));
        for outcome in outcomes {
            let name = xml_escape(&outcome.title);
            match &outcome.failure {
                None => out.push_str(&format!(
                    "    <testcase classname=\"{}\" name=\"{name}\"/>\n",
                    xml_escape(suite)
                )),
                Some(why) => out.push_str(&format!(
                    "    <testcase classname=\"{}\" name=\"{name}\">\n      <failure message=\"{m}\" type=\"decision\">{m}</failure>\n    </testcase>\n",
                    xml_escape(suite),
                    m = xml_escape(why)
                )),
            }
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::evaluate::{PolicySet, Request, Workload};

    const POLICIES: &str = r#"
apiVersion: warden.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: backend-allow-frontend, namespace: shop}
spec:
  selector: {serviceAccounts: [backend]}
  action: ALLOW
  rules:
    - from: {identities: ["spiffe://cluster.local/ns/shop/sa/frontend"]}
      to: {ports: [8080], methods: [GET]}
"#;

    const CASES: &str = r#"
cases:
  - name: frontend reads
    from: spiffe://cluster.local/ns/shop/sa/frontend
    workload: spiffe://cluster.local/ns/shop/sa/backend
    port: 8080
    method: GET
    path: /orders
    expect: allow
    policy: shop/backend-allow-frontend
  - from: spiffe://cluster.local/ns/shop/sa/frontend
    workload: spiffe://cluster.local/ns/shop/sa/backend
    port: 8080
    method: DELETE
    path: /orders
    expect: deny
    policy: no-match
  - name: a wrong expectation
    from: spiffe://cluster.local/ns/shop/sa/frontend
    workload: spiffe://cluster.local/ns/shop/sa/backend
    port: 8080
    method: POST
    path: /orders
    expect: allow
  - name: the right decision by the wrong policy
    workload: spiffe://cluster.local/ns/shop/sa/web
    port: 80
    expect: deny
    policy: shop/backend-allow-frontend
"#;

    fn decide(case: &Case) -> Result<Decision, String> {
        let set = PolicySet::new(crate::policy::parse(POLICIES, "p.yaml").unwrap());
        let request = Request {
            client: case.from.as_ref(),
            port: case.port,
            http: case.method.as_deref().zip(case.path.as_deref()),
        };
        Ok(set.evaluate(
            &Workload::from_id(&case.workload),
            &request,
            DefaultPolicy::Deny,
        ))
    }

    #[test]
    fn cases_pass_or_say_what_was_decided_and_expected() {
        let file = parse(CASES, "cases.yaml").unwrap();
        let outcomes = run(&file, decide);
        let failures: Vec<Option<&str>> = outcomes.iter().map(|o| o.failure.as_deref()).collect();
        assert_eq!(failures[0], None);
        assert_eq!(failures[1], None);
        let third = failures[2].unwrap();
        assert!(
            third.starts_with("expected allow, got deny by no-match"),
            "{third}"
        );
        let fourth = failures[3].unwrap();
        assert!(
            fourth.starts_with("expected deny by shop/backend-allow-frontend, got deny by default"),
            "{fourth}"
        );
        assert_eq!(
            outcomes[1].title,
            "spiffe://cluster.local/ns/shop/sa/frontend -> spiffe://cluster.local/ns/shop/sa/backend:8080 DELETE /orders"
        );
    }

    #[test]
    fn bad_case_files_name_the_field() {
        let cases = [
            (
                "cases: [{workload: spiffe://td/ns/a/sa/b, port: 80, expect: permit}]",
                "field cases[0].expect",
            ),
            (
                "cases: [{workload: not-an-id, port: 80, expect: allow}]",
                "field cases[0].workload",
            ),
            (
                "cases: [{workload: spiffe://td/ns/a/sa/b, port: 80, method: GET, expect: allow}]",
                "field cases[0].method: method and path go together",
            ),
            (
                "cases: [{workload: spiffe://td/ns/a/sa/b, port: 0, expect: allow}]",
                "field cases[0].port",
            ),
            (
                "cases: [{workload: spiffe://td/ns/a/sa/b, port: 80, expect: allow, extra: 1}]",
                "unknown field `extra`",
            ),
            ("default: sometimes\ncases: []", "field default"),
            ("cases: []", "field cases: no cases"),
        ];
        for (text, want) in cases {
            let got = parse(text, "cases.yaml").unwrap_err().to_string();
            assert!(
                got.starts_with("cases.yaml: ") && got.contains(want),
                "want {want:?} in {got:?}"
            );
        }
    }

    #[test]
    fn junit_reports_each_case_and_escapes_text() {
        let outcomes = vec![
            Outcome {
                title: "a <b> & \"c\"".into(),
                failure: None,
            },
            Outcome {
                title: "d".into(),
                failure: Some("expected allow, got deny by x/y & more\u{1}".into()),
            },
        ];
        let xml = junit(&[("cases.yaml".to_string(), outcomes)]);
        assert!(
            xml.contains("<testsuite name=\"cases.yaml\" tests=\"2\" failures=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("name=\"a &lt;b&gt; &amp; &quot;c&quot;\"/>"),
            "{xml}"
        );
        assert!(
            xml.contains("<failure message=\"expected allow, got deny by x/y &amp; more\u{fffd}\""),
            "{xml}"
        );
    }
}
