//! `warden policy netpol DIR`: the NetworkPolicies mirroring DIR's ALLOW policies.

use std::path::PathBuf;
use std::process::ExitCode;

use warden_core::policy::netpol::{self, Options};
use warden_core::TrustDomain;

use super::Loaded;

/// `warden policy netpol` arguments.
#[derive(clap::Args)]
pub struct NetpolArgs {
    /// The policy directory (or one file).
    dir: PathBuf,
    /// The mesh's trust domain (identities of others come from outside the cluster).
    #[arg(long, value_parser = TrustDomain::parse, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The proxies' admin port, kept open for probes and scrapes.
    #[arg(long, default_value_t = warden_core::contract::ADMIN_PORT)]
    admin_port: u16,
}

/// Prints the NetworkPolicies; what is not mirrored goes to standard error.
pub fn run(args: NetpolArgs) -> anyhow::Result<ExitCode> {
    let loaded = Loaded::read(&args.dir)?;
    let options = Options {
        trust_domain: args.trust_domain.as_str().to_string(),
        admin_port: args.admin_port,
    };
    let (generated, skipped) = netpol::generate(&loaded.policies, &options);
    warden_proxy::cli::print(&netpol::to_yaml(&generated).map_err(|e| anyhow::anyhow!("{e}"))?);
    for line in &skipped {
        eprintln!("note: {line}");
    }
    eprintln!(
        "{} NetworkPolicy objects; pods are selected by the label {} the injector sets",
        generated.len(),
        warden_core::contract::SERVICE_ACCOUNT_LABEL
    );
    Ok(ExitCode::SUCCESS)
}
