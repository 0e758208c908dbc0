//! `warden policy check|explain`: validate a policy directory, and explain a decision.

use std::path::PathBuf;
use std::process::ExitCode;

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
        /// The mesh default when no policy applies.
        #[arg(long, value_enum, default_value = "deny")]
        default: Default,
    },
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
fn load(dir: &std::path::Path) -> (Vec<warden_core::policy::AuthorizationPolicy>, Vec<String>) {
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
    let mut policies = Vec::new();
    let mut errors = Vec::new();
    if files.is_empty() {
        errors.push(format!(
            "{}: no policy files (*.yaml, *.yml)",
            dir.display()
        ));
    }
    for file in files {
        match std::fs::read_to_string(&file) {
            Err(e) => errors.push(format!("{}: {e}", file.display())),
            Ok(text) => match warden_core::policy::parse(&text, &file.display().to_string()) {
                Ok(p) => policies.extend(p),
                Err(e) => errors.push(e.to_string()),
            },
        }
    }
    (policies, errors)
}

/// Runs a `warden policy` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Check { dir } => {
            let (policies, errors) = load(&dir);
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
        } => {
            let (policies, errors) = load(&dir);
            if let Some(e) = errors.first() {
                anyhow::bail!("{e}");
            }
            let normalized = match &request_path {
                Some(p) => {
                    Some(path::normalize(p).map_err(|e| anyhow::anyhow!("--path {p:?}: {e}"))?)
                }
                None => None,
            };
            let http = method.as_deref().zip(normalized.as_deref());
            let set = PolicySet::new(policies);
            let default = match default {
                Default::Deny => DefaultPolicy::Deny,
                Default::AllAuthenticated => DefaultPolicy::AllAuthenticated,
                Default::Audit => DefaultPolicy::Audit,
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
