//! `warden ca init|rotate-issuer|issue|join-token`: create a CA on disk, sign a new issuer
//! with its root, issue an SVID from it for manual use, admit a host outside Kubernetes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use warden_core::duration::{format_duration, parse_duration};
use warden_core::{SpiffeId, TrustDomain};
use warden_identity::ca::{self, InitOptions};
use warden_identity::join_token;
use warden_identity::{bundle, CertificateAuthority};

/// `warden ca` subcommands.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Create a trust anchor (root) and an issuer signed by it, ECDSA P-256.
    Init {
        /// Directory for root.crt, root.key, issuer.crt, issuer.key and bundle.crt.
        #[arg(long)]
        dir: PathBuf,
        /// The trust domain the CA issues identities for.
        #[arg(long, default_value = warden_core::spiffe::DEFAULT_TRUST_DOMAIN, value_parser = TrustDomain::parse)]
        trust_domain: TrustDomain,
        /// Lifetime of the trust anchor.
        #[arg(long, default_value = "3650d", value_parser = parse_duration)]
        root_ttl: Duration,
        /// Lifetime of the issuer (never past the root's).
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        issuer_ttl: Duration,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Sign a new issuer with the root (root.key, kept offline, must be in DIR) and replace
    /// issuer.crt and issuer.key; the bundle is unchanged, so SVIDs of the old issuer stay
    /// valid until they expire while workloads renew onto the new one.
    RotateIssuer {
        /// The CA directory made by `warden ca init`.
        #[arg(long)]
        dir: PathBuf,
        /// Lifetime of the new issuer (never past the root's).
        #[arg(long, default_value = "365d", value_parser = parse_duration)]
        issuer_ttl: Duration,
    },
    /// Issue a key and X.509-SVID for manual use (writes PREFIX.key and PREFIX.crt).
    Issue {
        /// The CA directory made by `warden ca init`.
        #[arg(long)]
        dir: PathBuf,
        /// The SPIFFE ID to issue, in the CA's trust domain.
        #[arg(long, value_parser = SpiffeId::parse)]
        id: SpiffeId,
        /// Output prefix: PREFIX.key (mode 0600) and PREFIX.crt (leaf then issuer).
        #[arg(long)]
        out: PathBuf,
        /// Lifetime of the SVID (clamped to the issuer's).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// A DNS name the certificate is also valid for (repeatable), e.g. the injector's
        /// `warden-injector.warden-system.svc` for a webhook serving certificate.
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// Overwrite existing output files.
        #[arg(long)]
        force: bool,
    },
    /// Create a join token for a host outside Kubernetes: prints the token once and adds its
    /// SHA-256 hash, expiry and use limit to the token file that `warden identity --auth
    /// join-tokens` reads. A token admits a workload; its renewals then use its certificate.
    JoinToken {
        /// The join-token file (created with mode 0600 if missing).
        #[arg(long)]
        tokens: PathBuf,
        /// The SPIFFE ID the token authenticates as.
        #[arg(long, value_parser = SpiffeId::parse)]
        id: SpiffeId,
        /// How long the token is accepted (every token expires).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        ttl: Duration,
        /// Accept the token for one issuance only.
        #[arg(long)]
        single_use: bool,
    },
}

/// Runs a `warden ca` subcommand.
pub fn run(cmd: Command) -> anyhow::Result<ExitCode> {
    match cmd {
        Command::Init {
            dir,
            trust_domain,
            root_ttl,
            issuer_ttl,
            force,
        } => {
            let opts = InitOptions {
                trust_domain,
                root_ttl,
                issuer_ttl,
                force,
            };
            let ca = ca::init(&dir, &opts)?;
            println!(
                "created CA for trust domain {} in {} (root {}, issuer {}); \
                 distribute {} to workloads, keep root.key offline",
                ca.trust_domain(),
                dir.display(),
                format_duration(root_ttl),
                format_duration(issuer_ttl),
                dir.join(ca::BUNDLE).display(),
            );
        }
        Command::RotateIssuer { dir, issuer_ttl } => {
            let ca = ca::rotate_issuer(&dir, issuer_ttl)?;
            let left = ca
                .issuer_not_after()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            println!(
                "new issuer for trust domain {} in {}, valid for {}{}; \
                 give it to the identity service (`warden install --ca-dir {} | kubectl apply -f -`): \
                 proxies renew onto it, and certificates of the old issuer stay valid until they expire",
                ca.trust_domain(),
                dir.display(),
                format_duration(Duration::from_secs(left.as_secs().div_ceil(3600) * 3600)),
                if left + Duration::from_secs(3600) < issuer_ttl {
                    " (clamped to the root's expiry: rotate the trust anchor)"
                } else {
                    ""
                },
                dir.display(),
            );
        }
        Command::Issue {
            dir,
            id,
            out,
            ttl,
            dns_names,
            force,
        } => {
            let ca = CertificateAuthority::load(&dir, None)?;
            let svid = if dns_names.is_empty() {
                ca.issue(&id, ttl)?
            } else {
                ca.issue_with_dns(&id, &dns_names, ttl)?
            };
            let key_path = out.with_extension("key");
            let crt_path = out.with_extension("crt");
            for path in [&key_path, &crt_path] {
                if path.exists() && !force {
                    anyhow::bail!(
                        "{} already exists (pass --force to overwrite)",
                        path.display()
                    );
                }
            }
            let key_pem = bundle::der_to_pem("PRIVATE KEY", svid.key().secret_der());
            ca::write_file(&key_path, key_pem.as_bytes(), 0o600)
                .with_context(|| format!("writing {}", key_path.display()))?;
            ca::write_file(
                &crt_path,
                bundle::certs_to_pem(svid.chain()).as_bytes(),
                0o644,
            )?;
            let lifetime = svid
                .not_after()
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            // A lifetime more than a second short of the request was clamped to the issuer's.
            let clamped = lifetime + Duration::from_secs(1) < ttl;
            println!(
                "issued {} valid for {}{}: {} {}",
                svid.id(),
                format_duration(Duration::from_secs(lifetime.as_secs().div_ceil(60) * 60)),
                if clamped {
                    " (clamped to the issuer's expiry)"
                } else {
                    ""
                },
                crt_path.display(),
                key_path.display()
            );
        }
        Command::JoinToken {
            tokens,
            id,
            ttl,
            single_use,
        } => {
            let options = join_token::TokenOptions { ttl, single_use };
            let (token, line) = join_token::new_token_with(&id, &options)?;
            let mut existing = match std::fs::read_to_string(&tokens) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
                Err(e) => anyhow::bail!("cannot read {}: {e}", tokens.display()),
            };
            // Validate what is there, so a typo is caught now rather than at the service.
            join_token::parse(&existing, &tokens.display().to_string())?;
            if !existing.is_empty() && !existing.ends_with('\n') {
                existing.push('\n');
            }
            existing.push_str(&line);
            ca::write_file(&tokens, existing.as_bytes(), 0o600)?;
            // The token goes to stdout only; the file holds its hash.
            println!("{token}");
            eprintln!(
                "added a {}join token for {id} to {}, valid for {}",
                if single_use { "single-use " } else { "" },
                tokens.display(),
                format_duration(ttl)
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
