//! `warden audit verify`: checks collected audit logs (several proxies' records interleaved,
//! raw, CRI or JSON-wrapped lines) against the trust bundle and reports per chain what signed
//! checkpoints vouch for, the unverified tail, and any tampering.

use std::path::PathBuf;
use std::process::ExitCode;

use warden_core::audit::verify::{self, Report, Status};
use warden_core::TrustDomain;
use warden_identity::{audit_signature, TrustBundle, TrustStore};

/// Exit code: every record is vouched for by a valid checkpoint.
pub const EXIT_VERIFIED: u8 = 0;
/// Exit code: no tampering seen, but some records are not vouched for.
pub const EXIT_UNVERIFIED: u8 = 2;
/// Exit code: records were edited, removed or spliced in, or a checkpoint is forged.
pub const EXIT_TAMPERED: u8 = 3;

/// `warden audit` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Verify collected audit logs. Exit 0: verified; 2: an unverified tail or an incomplete
    /// chain, nothing tampered; 3: tampered; 1: the input cannot be read.
    Verify {
        /// The trust bundle (PEM roots) the proxies' SVIDs chain to.
        #[arg(long)]
        trust_bundle: PathBuf,
        /// The trust domain the bundle anchors.
        #[arg(long, value_parser = TrustDomain::parse, default_value = "cluster.local")]
        trust_domain: TrustDomain,
        /// Also count a chain without its final checkpoint (the proxy still running, killed,
        /// or the collection cut short) as unverified.
        #[arg(long)]
        require_closed: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// The collected files (JSON lines; `-` for standard input).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

/// Runs a `warden audit` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    let Command::Verify {
        trust_bundle,
        trust_domain,
        require_closed,
        json,
        files,
    } = cmd;
    let inputs = read_inputs(&files)?;
    let mut report = verify_inputs(&inputs, trust_domain, &trust_bundle)?;
    if require_closed {
        for chain in report.chains.iter_mut().filter(|c| !c.closed) {
            chain.status = chain.status.max(Status::Unverified);
        }
        report.status = report
            .chains
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Verified);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        warden_proxy::cli::print(&describe(&report));
    }
    Ok(ExitCode::from(match report.status {
        Status::Verified => EXIT_VERIFIED,
        Status::Unverified => EXIT_UNVERIFIED,
        Status::Tampered => EXIT_TAMPERED,
    }))
}

/// The text of each file (`-`: standard input), named by its path.
pub fn read_inputs(files: &[PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
    files
        .iter()
        .map(|file| {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(file)
            }
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
            Ok((file.display().to_string(), text))
        })
        .collect()
}

/// Verifies collected records against the trust bundle at `bundle`.
pub fn verify_inputs(
    inputs: &[(String, String)],
    trust_domain: TrustDomain,
    bundle: &std::path::Path,
) -> anyhow::Result<Report> {
    let store = TrustStore::single(TrustBundle::from_pem_file(trust_domain, bundle)?);
    let check = |cp: &warden_core::audit::Checkpoint| {
        audit_signature::check(&store, cp).map(|id| id.to_string())
    };
    Ok(verify::verify(inputs, &check))
}

/// The report for people: a block per chain, then the lines that are not records.
fn describe(report: &Report) -> String {
    let ranges = |r: &[(u64, u64)]| {
        r.iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::new();
    for c in &report.chains {
        let status = match c.status {
            Status::Verified => "VERIFIED",
            Status::Unverified => "UNVERIFIED",
            Status::Tampered => "TAMPERED",
        };
        out.push_str(&format!(
            "{status} chain {} (pod {}, workload {}): {} records; {}\n",
            c.chain,
            c.pod.as_deref().unwrap_or("?"),
            c.workload.as_deref().unwrap_or("?"),
            c.records,
            if c.closed {
                "closed by its final checkpoint"
            } else {
                "open (no final checkpoint)"
            }
        ));
        if !c.verified.is_empty() {
            out.push_str(&format!("  verified: {}\n", ranges(&c.verified)));
        }
        if !c.unverified.is_empty() {
            out.push_str(&format!(
                "  unverified (no checkpoint vouches for them): {}\n",
                ranges(&c.unverified)
            ));
        }
        for f in &c.findings {
            let at = f.at.as_ref().map(|a| format!(" ({a})")).unwrap_or_default();
            out.push_str(&format!("  {}: {}{at}\n", f.kind, f.detail));
        }
    }
    for u in &report.unreadable {
        out.push_str(&format!("not a record: {}: {}\n", u.at, u.problem));
    }
    if report.duplicates > 0 {
        out.push_str(&format!(
            "{} duplicate copies of records ignored\n",
            report.duplicates
        ));
    }
    out.push_str(&format!(
        "{}: {} chain(s)\n",
        match report.status {
            Status::Verified => "verified",
            Status::Unverified => "unverified records, no tampering seen",
            Status::Tampered => "TAMPERED",
        },
        report.chains.len()
    ));
    out
}
