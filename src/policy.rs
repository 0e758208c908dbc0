//! `warden policy`: validate a policy directory, explain a decision, test policies against
//! cases in CI, suggest policies from recorded traffic, diff two sets, and mirror them as
//! NetworkPolicies. The files are the CRD YAML `kubectl apply` takes: AuthorizationPolicies
//! and MeshPolicies.

mod ci;
mod netpol;
mod traffic;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use warden_controller::crd::{self, MeshDefault, MeshPolicy};
use warden_core::policy::evaluate::{Decision, DefaultPolicy, PolicySet, Request, Workload};
use warden_core::policy::{lint, path};
use warden_core::SpiffeId;

/// `warden policy` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Validate every policy file of DIR; report each error with its location, and warn on
    /// rules that can never match or are shadowed.
    Check {
        /// The policy directory (or one file).
        dir: PathBuf,
    },
    /// Show the decision for one request, and the policy and rule that made it.
    Explain {
        /// The policy directory (or one file).
        dir: PathBuf,
        /// The protected workload's SPIFFE ID.
        #[arg(long, value_parser = SpiffeId::parse)]
        workload: SpiffeId,
        /// The caller's SPIFFE ID (omit for an unauthenticated caller).
        #[arg(long, value_parser = SpiffeId::parse)]
        from: Option<SpiffeId>,
        /// The app port.
        #[arg(long)]
        port: u16,
        /// The HTTP method (with --path; omit both for opaque TCP).
        #[arg(long, requires = "path")]
        method: Option<String>,
        /// The HTTP path.
        #[arg(long, requires = "method")]
        path: Option<String>,
        /// The mesh default when no policy applies (a MeshPolicy's `default` wins).
        #[arg(long, value_enum, default_value = "deny")]
        default: Default,
        /// A label of the workload's namespace, `KEY=VALUE` (repeatable): MeshPolicies apply
        /// where their `namespaceSelector` matches these labels.
        #[arg(long = "namespace-label", value_parser = parse_label)]
        namespace_labels: Vec<(String, String)>,
    },
    /// Run a file of cases (request -> expected decision) against DIR: policy as code in
    /// CI. Exit 1 when a case fails; `--junit` writes a JUnit XML report.
    Test(ci::TestArgs),
    /// Suggest the smallest AuthorizationPolicies that allow what collected audit records
    /// saw (AUDIT mode first), as YAML for `kubectl apply`.
    Suggest(traffic::SuggestArgs),
    /// Which decisions change from OLD to NEW: for recorded traffic (`--against`), or for
    /// requests made up from what the two sets name. Exit 0: no change; 2: changes, none
    /// newly denied; 3: something newly denied.
    Diff(traffic::DiffArgs),
    /// Kubernetes NetworkPolicies (L3/L4) mirroring DIR's ALLOW policies, as defense in
    /// depth the CNI enforces.
    Netpol(netpol::NetpolArgs),
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

/// What the files hold: namespace policies, and MeshPolicies (their rules as mesh-wide
/// policies, kept with the objects for their namespace selectors and defaults).
#[derive(Default)]
struct Loaded {
    policies: Vec<warden_core::policy::AuthorizationPolicy>,
    mesh: Vec<MeshPolicy>,
    errors: Vec<String>,
}

/// The documents of one file, by kind.
fn parse_file(text: &str, source: &str, loaded: &mut Loaded) -> Result<(), String> {
    let documents: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).map_err(|e| {
        let message = e.to_string();
        let first = message
            .lines()
            .next()
            .unwrap_or(&message)
            .trim()
            .to_string();
        format!(
            "{source}: {}",
            first.strip_prefix("error: ").unwrap_or(&first)
        )
    })?;
    for (i, document) in documents.into_iter().enumerate() {
        if document.is_null() {
            continue;
        }
        if document.get("kind").and_then(|k| k.as_str()) == Some("MeshPolicy") {
            let at = |field: String, message: String| {
                format!("{source}: document {}: field {field}: {message}", i + 1)
            };
            let object: MeshPolicy = serde_path_to_error::deserialize(document)
                .map_err(|e| at(e.path().to_string(), e.inner().to_string()))?;
            let rules = crd::mesh_rules(&object)
                .map_err(|e| format!("{source}: document {}: {e}", i + 1))?;
            loaded.policies.extend(rules);
            loaded.mesh.push(object);
        } else {
            let policy = warden_core::policy::from_document(document, source, i + 1)
                .map_err(|e| e.to_string())?;
            loaded.policies.push(policy);
        }
    }
    Ok(())
}

/// The mesh default, as a flag.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Default {
    /// Zero trust.
    Deny,
    /// Any identity of the workload's trust domain.
    AllAuthenticated,
    /// Allow, recorded as what deny would refuse.
    Audit,
}

/// Every file's errors (not just the first) and the policies of the valid ones.
fn load(dir: &Path) -> Loaded {
    let files: Vec<PathBuf> = if dir.is_file() {
        vec![dir.to_path_buf()]
    } else {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
            })
            .collect();
        files.sort();
        files
    };
    let mut loaded = Loaded::default();
    if files.is_empty() {
        loaded.errors.push(format!(
            "{}: no policy files (*.yaml, *.yml)",
            dir.display()
        ));
    }
    for file in files {
        match std::fs::read_to_string(&file) {
            Err(e) => loaded.errors.push(format!("{}: {e}", file.display())),
            Ok(text) => {
                // A bad file contributes nothing (as the proxy's loader would refuse it).
                let mut one = Loaded::default();
                match parse_file(&text, &file.display().to_string(), &mut one) {
                    Ok(()) => {
                        loaded.policies.extend(one.policies);
                        loaded.mesh.extend(one.mesh);
                    }
                    Err(e) => loaded.errors.push(e),
                }
            }
        }
    }
    loaded
}

impl Default {
    /// The policy model's default.
    fn policy(self) -> DefaultPolicy {
        match self {
            Default::Deny => DefaultPolicy::Deny,
            Default::AllAuthenticated => DefaultPolicy::AllAuthenticated,
            Default::Audit => DefaultPolicy::Audit,
        }
    }
}

impl Loaded {
    /// The policies of `dir`, or its first error.
    fn read(dir: &Path) -> anyhow::Result<Self> {
        let loaded = load(dir);
        if let Some(e) = loaded.errors.first() {
            anyhow::bail!("{e}");
        }
        Ok(loaded)
    }

    /// What decides in a namespace labelled `labels`, as the controller would push it: the
    /// namespace policies, and of the MeshPolicies whose namespace selector matches, the
    /// rules and the strictest default (else `default`).
    fn evaluator(&self, labels: &BTreeMap<String, String>, default: DefaultPolicy) -> Evaluator {
        let matching: Vec<_> = self
            .mesh
            .iter()
            .filter(|m| {
                m.spec
                    .namespace_selector
                    .as_ref()
                    .is_none_or(|s| s.matches(labels))
            })
            .collect();
        let selected: Vec<&str> = matching
            .iter()
            .filter_map(|m| m.metadata.name.as_deref())
            .collect();
        let policies: Vec<_> = self
            .policies
            .iter()
            .filter(|p| !p.metadata.mesh || selected.contains(&p.metadata.name.as_str()))
            .cloned()
            .collect();
        let default = match matching
            .iter()
            .filter_map(|m| m.spec.default)
            .max_by_key(|d| d.strictness())
        {
            Some(MeshDefault::Deny) => DefaultPolicy::Deny,
            Some(MeshDefault::AllAuthenticated) => DefaultPolicy::AllAuthenticated,
            Some(MeshDefault::Audit) => DefaultPolicy::Audit,
            None => default,
        };
        Evaluator {
            set: PolicySet::new(policies),
            default,
        }
    }
}

/// A policy set and its default, deciding requests as a proxy would.
struct Evaluator {
    set: PolicySet,
    default: DefaultPolicy,
}

impl Evaluator {
    /// The decision for a request; `http` is `(method, raw path)`, normalized here as the
    /// proxy does (a path the proxy refuses is an error naming it).
    fn decide(
        &self,
        workload: &SpiffeId,
        from: Option<&SpiffeId>,
        port: u16,
        http: Option<(&str, &str)>,
    ) -> Result<Decision, String> {
        let normalized = match http {
            Some((method, raw)) => Some((
                method.to_ascii_uppercase(),
                path::normalize(raw).map_err(|e| format!("path {raw:?}: {e}"))?,
            )),
            None => None,
        };
        let request = Request {
            client: from,
            port,
            http: normalized.as_ref().map(|(m, p)| (m.as_str(), p.as_str())),
        };
        Ok(self
            .set
            .evaluate(&Workload::from_id(workload), &request, self.default))
    }
}

/// Runs a `warden policy` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check { dir } => {
            let Loaded {
                policies, errors, ..
            } = load(&dir);
            for e in &errors {
                eprintln!("error: {e}");
            }
            let warnings = lint::lint(&policies);
            for w in &warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{} policies, {} errors, {} warnings",
                policies.len(),
                errors.len(),
                warnings.len()
            );
            Ok(if errors.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Explain {
            dir,
            workload,
            from,
            port,
            method,
            path: request_path,
            default,
            namespace_labels,
        } => {
            let loaded = Loaded::read(&dir)?;
            let labels: BTreeMap<String, String> = namespace_labels.into_iter().collect();
            let evaluator = loaded.evaluator(&labels, default.policy());
            let http = method.as_deref().zip(request_path.as_deref());
            let decision = evaluator
                .decide(&workload, from.as_ref(), port, http)
                .map_err(|e| anyhow::anyhow!("--{e}"))?;
            println!("decision: {}", decision.label());
            println!("policy:   {}", decision.policy.as_deref().unwrap_or("-"));
            println!(
                "rule:     {}",
                decision.rule.map_or("-".to_string(), |r| r.to_string())
            );
            println!("reason:   {}", decision.reason());
            if let Some(audit) = &decision.audit {
                println!("audit:    would be denied by {}", audit.policies.join(", "));
            }
            if let Some(raw) = &request_path {
                let normalized = path::normalize(raw).unwrap_or_default();
                if &normalized != raw {
                    println!("path:     {normalized} (normalized)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Test(args) => ci::run(args),
        Command::Suggest(args) => traffic::suggest(args),
        Command::Diff(args) => traffic::diff(args),
        Command::Netpol(args) => netpol::run(args),
    }
}
