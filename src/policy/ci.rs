//! `warden policy test DIR CASES...`: each case file's requests decided by DIR's policies,
//! compared with what the file expects; a line per case, a JUnit XML report on request.

use std::path::PathBuf;
use std::process::ExitCode;

use warden_core::policy::cases::{self, Outcome};

use super::Loaded;

/// `warden policy test` arguments.
#[derive(clap::Args)]
pub struct TestArgs {
    /// The policy directory (or one file).
    dir: PathBuf,
    /// Case files (YAML: `default` and `cases`; see docs/policy-workflow.md).
    #[arg(required = true)]
    cases: Vec<PathBuf>,
    /// Also write the results as JUnit XML to this file.
    #[arg(long)]
    junit: Option<PathBuf>,
}

/// Runs the cases; exit 1 when any fails.
pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let loaded = Loaded::read(&args.dir)?;
    let mut suites: Vec<(String, Vec<Outcome>)> = Vec::new();
    for file in &args.cases {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
        let parsed = cases::parse(&text, &name)?;
        let outcomes = cases::run(&parsed, |case| {
            loaded
                .evaluator(&case.namespace_labels, parsed.default)
                .decide(
                    &case.workload,
                    case.from.as_ref(),
                    case.port,
                    case.method.as_deref().zip(case.path.as_deref()),
                )
        });
        suites.push((name, outcomes));
    }
    let mut out = String::new();
    let (mut total, mut failed) = (0, 0);
    for (name, outcomes) in &suites {
        for outcome in outcomes {
            total += 1;
            match &outcome.failure {
                None => out.push_str(&format!("ok    {name}: {}\n", outcome.title)),
                Some(why) => {
                    failed += 1;
                    out.push_str(&format!("FAIL  {name}: {}: {why}\n", outcome.title));
                }
            }
        }
    }
    out.push_str(&format!(
        "{total} cases, {} passed, {failed} failed\n",
        total - failed
    ));
    warden_proxy::cli::print(&out);
    if let Some(junit) = &args.junit {
        let xml = cases::junit(&suites);
        std::fs::write(junit, xml).map_err(|e| anyhow::anyhow!("{}: {e}", junit.display()))?;
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
