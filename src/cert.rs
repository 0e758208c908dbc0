//! `warden cert inspect|verify`: read certificates the way an operator needs to.

use std::path::PathBuf;
use std::process::ExitCode;

use rustls::pki_types::UnixTime;
use warden_core::TrustDomain;
use warden_identity::verify::{verify_svid, PeerRole};
use warden_identity::{bundle, inspect, svid, tls, TrustBundle, TrustStore};

/// `warden cert` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Print SPIFFE ID, issuer, serial, validity, key usage and EKU of each certificate.
    Inspect {
        /// A PEM file with one or more certificates.
        file: PathBuf,
    },
    /// Verify an SVID chain against a trust bundle; prints the SPIFFE ID or the broken rule.
    Verify {
        /// The trust bundle (PEM roots).
        #[arg(long)]
        bundle: PathBuf,
        /// The trust domain the bundle anchors (default: the one the leaf names).
        #[arg(long, value_parser = TrustDomain::parse)]
        trust_domain: Option<TrustDomain>,
        /// The chain to verify: leaf first, then intermediates (PEM).
        chain: PathBuf,
    },
}

/// Runs a `warden cert` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Inspect { file } => {
            let certs = bundle::certs_from_pem_file(&file)?;
            for (i, der) in certs.iter().enumerate() {
                let summary = inspect::summarize(der)
                    .map_err(|e| anyhow::anyhow!("{}: certificate {i}: {e}", file.display()))?;
                let header = if certs.len() > 1 {
                    format!("--- certificate {i} of {}\n", certs.len())
                } else {
                    String::new()
                };
                warden_proxy::cli::print(&format!("{header}{summary}\n"));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify {
            bundle: bundle_path,
            trust_domain,
            chain,
        } => {
            let certs = bundle::certs_from_pem_file(&chain)?;
            let (leaf, intermediates) = (&certs[0], &certs[1..]);
            let td = match trust_domain {
                Some(td) => td,
                None => match svid::identity_of(leaf) {
                    Ok(id) => id.trust_domain(),
                    Err(e) => return Ok(rejected(&chain, &e)),
                },
            };
            let store = TrustStore::single(TrustBundle::from_pem_file(td, &bundle_path)?);
            let algorithms = tls::crypto_provider().signature_verification_algorithms;
            // A Warden SVID serves both ends of a connection: check it for both.
            for role in [PeerRole::Server, PeerRole::Client] {
                if let Err(e) = verify_svid(
                    &store,
                    leaf,
                    intermediates,
                    UnixTime::now(),
                    role,
                    &algorithms,
                ) {
                    return Ok(rejected(&chain, &e));
                }
            }
            let id = svid::identity_of(leaf)?;
            println!("{id}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn rejected(chain: &std::path::Path, err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("{}: rejected: {err}", chain.display());
    ExitCode::from(1)
}
