//! `warden controller`: Warden's control plane. `warden controller crds` prints the policy
//! CRDs generated from their Rust types (what `deploy/kubernetes/base/crds.yaml` holds).

use std::process::ExitCode;

/// `warden controller` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Print the CustomResourceDefinitions of AuthorizationPolicy and MeshPolicy.
    Crds,
}

/// Runs a `warden controller` subcommand.
pub fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Crds => crate::output::print(&warden_controller::crd::crds_yaml()),
    }
    Ok(ExitCode::SUCCESS)
}
