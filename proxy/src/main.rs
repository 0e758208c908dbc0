//! `warden-proxy`: the sidecar image's slim binary (DESIGN section 1). It runs the proxy and
//! installs the pod's interception rules, nothing else: no CA, injector, installer,
//! controller or Kubernetes client, so a sidecar maps less code and keeps less resident.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use warden_proxy::cli;

#[global_allocator]
static ALLOC: warden_proxy::alloc::Allocator = warden_proxy::alloc::Allocator;

/// Warden's sidecar: the per-pod proxy and its interception rules.
#[derive(Parser)]
#[command(name = "warden-proxy", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    log: cli::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the per-pod proxy (inbound, outbound, admin), or check its configuration.
    Proxy(cli::proxy::Args),
    /// Install (or --remove) the pod's traffic interception rules (iptables, IPv4 and IPv6).
    Init(cli::init::Args),
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Held to the end of `run`: dropped, it writes the buffered log lines, before `main`
    // prints an error.
    let _logs = cli.log.init()?;
    warden_identity::tls::install_crypto_provider();
    match cli.command {
        Command::Proxy(args) => {
            warden_proxy::proxy::on_first_ready(warden_proxy::alloc::release_unused);
            cli::proxy::run(args)
        }
        Command::Init(args) => cli::init::run(args),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            // One line: the input and what is wrong with it, causes joined by ": ".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
