//! `warden policy suggest` and `warden policy diff`: policies from recorded traffic, and
//! what a change of policies would do to it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use warden_core::audit::verify::{self, Status};
use warden_core::policy::diff::{self, Kind, Probe};
use warden_core::policy::suggest::{self, Options};
use warden_core::policy::Action;
use warden_core::TrustDomain;

use super::{parse_label, Default, Loaded};
use crate::audit::{read_inputs, verify_inputs};

/// The suggested policies' action.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum SuggestedAction {
    /// Dry run: allow everything, record what the policies would deny.
    Audit,
    /// Enforce.
    Allow,
}

/// `warden policy suggest` arguments.
#[derive(clap::Args)]
pub struct SuggestArgs {
    /// Collected audit logs (raw, CRI or JSON-wrapped lines; `-` for standard input),
    /// recorded with `log_allowed: true` or under an AUDIT policy or the audit default.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Verify the records first with this trust bundle: a tampered collection is refused, and
    /// only records a valid signed checkpoint vouches for are used.
    #[arg(long)]
    trust_bundle: Option<PathBuf>,
    /// The trust domain the bundle anchors.
    #[arg(long, value_parser = TrustDomain::parse, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// Keep this many leading path segments and allow anything below (`/api/v1/*` at 2);
    /// default: exact paths.
    #[arg(long)]
    path_depth: Option<usize>,
    /// Name callers by their namespace instead of their identity.
    #[arg(long)]
    by_namespace: bool,
    /// The policies' action: audit first, allow once the audit log is quiet.
    #[arg(long, value_enum, default_value = "audit")]
    action: SuggestedAction,
}

/// Prints suggested policies for the records of `args.files`.
pub fn suggest(args: SuggestArgs) -> anyhow::Result<ExitCode> {
    let inputs = read_inputs(&args.files)?;
    let (mut records, unreadable) = verify::decisions(&inputs);
    let mut not_vouched = 0;
    match &args.trust_bundle {
        Some(bundle) => {
            let report = verify_inputs(&inputs, args.trust_domain.clone(), bundle)?;
            if report.status == Status::Tampered {
                anyhow::bail!(
                    "the records were tampered with (see `warden audit verify`); no policy is suggested from them"
                );
            }
            // Only what a valid signed checkpoint vouches for: a chain without one, or the
            // tail after its last, could have been written by anyone with the log store.
            let vouched = |chain: &str, seq: u64| {
                report.chains.iter().any(|c| {
                    c.chain == chain && c.verified.iter().any(|(a, b)| (*a..=*b).contains(&seq))
                })
            };
            let before = records.len();
            records.retain(|r| vouched(&r.chain, r.seq));
            not_vouched = before - records.len();
        }
        None => eprintln!(
            "warning: the records are not verified (give --trust-bundle to use only what signed checkpoints vouch for)"
        ),
    }
    if records.is_empty() {
        anyhow::bail!(
            "no decision records in {} (allowed requests are recorded with `log_allowed: true`, or under an AUDIT policy or the audit default)",
            args.files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let options = Options {
        path_depth: args.path_depth,
        by_namespace: args.by_namespace,
        action: match args.action {
            SuggestedAction::Audit => Action::Audit,
            SuggestedAction::Allow => Action::Allow,
        },
    };
    let suggestion = suggest::suggest(&records, &options);
    warden_proxy::cli::print(&suggest::to_yaml(&suggestion));
    for note in &suggestion.notes {
        eprintln!("note: {note}");
    }
    let mut summary = format!(
        "{} policies from {} of {} decision records",
        suggestion.policies.len(),
        suggestion.used,
        records.len()
    );
    for (why, count) in &suggestion.skipped {
        summary.push_str(&format!("; {count} left out: {why}"));
    }
    if not_vouched > 0 {
        summary.push_str(&format!(
            "; {not_vouched} left out: not vouched for by a signed checkpoint (yet)"
        ));
    }
    if unreadable > 0 {
        summary.push_str(&format!("; {unreadable} lines were not audit records"));
    }
    eprintln!("{summary}");
    Ok(ExitCode::SUCCESS)
}

/// `warden policy diff` arguments.
#[derive(clap::Args)]
pub struct DiffArgs {
    /// The policies now (a directory or one file).
    old: PathBuf,
    /// The policies proposed.
    new: PathBuf,
    /// Compare on these collected audit logs' requests, counting each as often as seen.
    #[arg(long, num_args = 1..)]
    against: Vec<PathBuf>,
    /// The trust domain of the made-up requests (without --against).
    #[arg(long, value_parser = TrustDomain::parse, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The mesh default when no MeshPolicy sets one.
    #[arg(long, value_enum, default_value = "deny")]
    default: Default,
    /// A label of the workloads' namespaces, `KEY=VALUE` (repeatable), for MeshPolicies'
    /// namespace selectors.
    #[arg(long = "namespace-label", value_parser = parse_label)]
    namespace_labels: Vec<(String, String)>,
    /// Changed requests shown per caller and workload.
    #[arg(long, default_value_t = 5)]
    show: usize,
}

/// Exit code: some decisions change, none to deny.
pub const EXIT_CHANGED: u8 = 2;
/// Exit code: something allowed before is denied.
pub const EXIT_NEWLY_DENIED: u8 = 3;

/// Prints the decisions that change between two policy sets.
pub fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let (old, new) = (Loaded::read(&args.old)?, Loaded::read(&args.new)?);
    let labels: BTreeMap<String, String> = args.namespace_labels.into_iter().collect();
    let (old_eval, new_eval) = (
        old.evaluator(&labels, args.default.policy()),
        new.evaluator(&labels, args.default.policy()),
    );
    let (requests, source): (Vec<(Probe, u64)>, String) = if args.against.is_empty() {
        let probes = diff::probes(args.trust_domain.as_str(), &[&old.policies, &new.policies])
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let source = format!(
            "{} made-up requests (one per case the policies tell apart)",
            probes.len()
        );
        (probes.into_iter().map(|p| (p, 1)).collect(), source)
    } else {
        let inputs = read_inputs(&args.against)?;
        let (records, _) = verify::decisions(&inputs);
        if records.is_empty() {
            anyhow::bail!("--against: no decision records in the files given");
        }
        let n = records.len();
        (
            records
                .iter()
                .filter_map(Probe::from_record)
                .map(|p| (p, 1))
                .collect(),
            format!("{n} recorded requests"),
        )
    };
    // A request the proxy would refuse as malformed is refused under both sets alike.
    let decide = |evaluator: &super::Evaluator, p: &Probe| {
        evaluator
            .decide(
                &p.workload,
                p.client.as_ref(),
                p.port,
                p.http.as_ref().map(|(m, p)| (m.as_str(), p.as_str())),
            )
            .unwrap_or_else(|why| warden_core::policy::evaluate::Decision {
                allowed: false,
                policy: None,
                rule: None,
                why: warden_core::policy::evaluate::Reason::Refused(why),
                audit: None,
            })
    };
    let report = diff::compare(requests, |p| decide(&old_eval, p), |p| decide(&new_eval, p));
    let (denied, allowed, other) = (
        report.count(Kind::NewlyDenied),
        report.count(Kind::NewlyAllowed),
        report.count(Kind::Other),
    );
    let mut out = format!(
        "compared {source}: {denied} newly denied, {allowed} newly allowed, {other} decided differently but still let through\n"
    );
    for ((caller, workload), changes) in &report.groups {
        let count = |kind| {
            changes
                .iter()
                .filter(|c| c.kind() == kind)
                .map(|c| c.count)
                .sum::<u64>()
        };
        out.push_str(&format!(
            "\n{caller} -> {workload}: {} newly denied, {} newly allowed, {} other\n",
            count(Kind::NewlyDenied),
            count(Kind::NewlyAllowed),
            count(Kind::Other)
        ));
        for change in changes.iter().take(args.show) {
            out.push_str(&format!("  {}\n", change.line()));
        }
        if changes.len() > args.show {
            out.push_str(&format!("  ... and {} more\n", changes.len() - args.show));
        }
    }
    warden_proxy::cli::print(&out);
    Ok(ExitCode::from(if denied > 0 {
        EXIT_NEWLY_DENIED
    } else if report.groups.is_empty() {
        0
    } else {
        EXIT_CHANGED
    }))
}
