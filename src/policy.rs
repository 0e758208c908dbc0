//! `warden policy check|explain`: validate a policy directory, and explain a decision. The
//! files are the CRD YAML `kubectl apply` takes: AuthorizationPolicies and MeshPolicies.

use std::path::PathBuf;
use std::process::ExitCode;

use warden_controller::crd::{self, MeshDefault, MeshPolicy};
use warden_core::policy::evaluate::{DefaultPolicy, PolicySet, Request, Workload};
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
fn load(dir: &std::path::Path) -> Loaded {
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
            let Loaded {
                policies,
                mesh,
                errors,
            } = load(&dir);
            if let Some(e) = errors.first() {
                anyhow::bail!("{e}");
            }
            // MeshPolicies apply where their namespace selector matches the given labels, as
            // the controller decides; the strictest default any of them sets wins.
            let labels: std::collections::BTreeMap<String, String> =
                namespace_labels.into_iter().collect();
            let selected: Vec<String> = mesh
                .iter()
                .filter(|m| {
                    m.spec
                        .namespace_selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&labels))
                })
                .filter_map(|m| m.metadata.name.clone())
                .collect();
            let policies: Vec<_> = policies
                .into_iter()
                .filter(|p| !p.metadata.mesh || selected.contains(&p.metadata.name))
                .collect();
            let mesh_default = mesh
                .iter()
                .filter_map(|m| m.spec.default)
                .max_by_key(|d| d.strictness());
            let normalized = match &request_path {
                Some(p) => {
                    Some(path::normalize(p).map_err(|e| anyhow::anyhow!("--path {p:?}: {e}"))?)
                }
                None => None,
            };
            let http = method.as_deref().zip(normalized.as_deref());
            let set = PolicySet::new(policies);
            let default = match (mesh_default, default) {
                (Some(MeshDefault::Deny), _) | (None, Default::Deny) => DefaultPolicy::Deny,
                (Some(MeshDefault::AllAuthenticated), _) | (None, Default::AllAuthenticated) => {
                    DefaultPolicy::AllAuthenticated
                }
                (Some(MeshDefault::Audit), _) | (None, Default::Audit) => DefaultPolicy::Audit,
            };
            let request = Request {
                client: from.as_ref(),
                port,
                http,
            };
            let decision = set.evaluate(&Workload::from_id(&workload), &request, default);
            println!("decision: {}", decision.label());
            println!("policy:   {}", decision.policy.as_deref().unwrap_or("-"));
            println!(
                "rule:     {}",
                decision.rule.map_or("-".to_string(), |r| r.to_string())
            );
            println!("reason:   {}", decision.reason);
            if let Some(audit) = &decision.audit {
                println!("audit:    would be denied by {}", audit.policies.join(", "));
            }
            if normalized.is_some() && normalized != request_path {
                println!("path:     {} (normalized)", normalized.unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
