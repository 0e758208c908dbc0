//! `warden`: the one CLI of the Warden service mesh. Each subcommand lives in its own file and
//! only parses arguments and calls the library crates.

mod admin;
mod audit;
mod ca;
mod cert;
mod check;
mod cni;
mod controller;
mod demo;
mod identity;
mod injector;
mod install;
mod mesh_grants;
mod policy;
mod uninstall;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Warden: a zero-trust service-mesh sidecar for Kubernetes.
#[derive(Parser)]
#[command(name = "warden", version, about, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    log: warden_proxy::cli::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the local mesh: an identity service and two workloads with sidecars, on 127.0.0.1.
    Demo(demo::Args),
    /// Create a certificate authority or issue certificates from one.
    #[command(subcommand)]
    Ca(ca::Command),
    /// Inspect or verify certificates.
    #[command(subcommand)]
    Cert(cert::Command),
    /// The control plane: watch policies and write their status, or print the CRDs.
    #[command(subcommand)]
    Controller(controller::Command),
    /// Run the identity service: the CA issuing SVIDs over HTTPS (POST /v1/certify).
    Identity(Box<identity::Args>),
    /// Run the per-pod proxy (inbound, outbound, admin), or check its configuration.
    Proxy(warden_proxy::cli::proxy::Args),
    /// Install (or --remove) the pod's traffic interception rules (iptables, IPv4 and IPv6).
    Init(warden_proxy::cli::init::Args),
    /// The CNI plugin: installs injected pods' interception rules from the node (as `warden-cni`).
    Cni(cni::Args),
    /// Run the mutating admission webhook that adds Warden to pods.
    Injector(Box<injector::Args>),
    /// Print the control-plane manifests with fresh certificates: `warden install | kubectl apply -f -`.
    Install(install::Args),
    /// Print what `install` created, for `kubectl delete` (the CRDs only with --crds).
    Uninstall(uninstall::Args),
    /// Check policy files, or explain a decision.
    #[command(subcommand)]
    Policy(policy::Command),
    /// Verify collected audit logs: hash chains and signed checkpoints.
    #[command(subcommand)]
    Audit(audit::Command),
    /// Check a cluster before installing (--pre), or the installation's health.
    Check(check::Args),
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    // Held to the end of `run`: dropped, it writes the buffered log lines, before `main`
    // prints an error.
    let _logs = cli.log.init()?;
    warden_identity::tls::install_crypto_provider();
    match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Ca(cmd) => ca::run(cmd),
        Command::Cert(cmd) => cert::run(cmd),
        Command::Controller(cmd) => controller::run(cmd),
        Command::Identity(args) => identity::run(*args),
        Command::Proxy(args) => warden_proxy::cli::proxy::run(args),
        Command::Init(args) => warden_proxy::cli::init::run(args),
        Command::Cni(args) => cni::run(args),
        Command::Injector(args) => injector::run(*args),
        Command::Install(args) => install::run(args),
        Command::Uninstall(args) => uninstall::run(args),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Audit(cmd) => audit::run(cmd),
        Command::Check(args) => check::run(args),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse_from(cni::command_line())) {
        Ok(code) => code,
        Err(err) => {
            // One line: the input and what is wrong with it, causes joined by ": ".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
