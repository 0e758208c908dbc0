//! `warden init`: install (or remove) the pod's interception rules, atomically, for IPv4 and
//! IPv6. Runs as the `warden-init` init container with NET_ADMIN and NET_RAW.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use anyhow::Context;
use warden_core::cidr::{self, Cidr};
use warden_core::contract;
use warden_proxy::interception::{self, Family, InterceptionSettings};

/// Whether to install IPv6 rules too.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Ipv6 {
    /// If ip6tables' nat table is available.
    Auto,
    /// Always (fail if unavailable).
    On,
    /// Never.
    Off,
}

/// `warden init` options.
#[derive(clap::Args)]
pub struct Args {
    /// The proxy's inbound port (redirect target for inbound TCP).
    #[arg(long, default_value_t = contract::INBOUND_PORT)]
    inbound_port: u16,
    /// The proxy's outbound port (redirect target for the app's outbound TCP).
    #[arg(long, default_value_t = contract::OUTBOUND_PORT)]
    outbound_port: u16,
    /// The proxy's admin port (never intercepted).
    #[arg(long, default_value_t = contract::ADMIN_PORT)]
    admin_port: u16,
    /// The proxy's UID (its traffic is never intercepted).
    #[arg(long, default_value_t = contract::PROXY_UID)]
    proxy_uid: u32,
    /// Inbound ports to leave alone, comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports to leave alone, comma-separated.
    #[arg(long, value_delimiter = ',')]
    skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks to leave alone, comma-separated CIDRs.
    #[arg(long, value_parser = cidr::Cidr::parse, value_delimiter = ',')]
    skip_outbound_cidrs: Vec<Cidr>,
    /// Install IPv6 rules too.
    #[arg(long, value_enum, default_value = "auto")]
    ipv6: Ipv6,
    /// Print the iptables-restore input instead of applying it.
    #[arg(long)]
    dry_run: bool,
    /// Remove Warden's chains (and only those) instead of installing them.
    #[arg(long)]
    remove: bool,
}

fn tools(family: Family) -> (&'static str, &'static str) {
    match family {
        Family::V4 => ("iptables-save", "iptables-restore"),
        Family::V6 => ("ip6tables-save", "ip6tables-restore"),
    }
}

/// The current nat table, as `iptables-save` prints it.
fn current_rules(family: Family) -> anyhow::Result<String> {
    let (save, _) = tools(family);
    let out = Command::new(save)
        .args(["-t", "nat"])
        .output()
        .with_context(|| format!("cannot run {save} (install iptables)"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{save} -t nat failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apply(family: Family, input: &str) -> anyhow::Result<()> {
    let (_, restore) = tools(family);
    let mut child = Command::new(restore)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {restore} (install iptables)"))?;
    child
        .stdin
        .take()
        .context("no stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).replace('\n', " ");
        anyhow::bail!(
            "{restore} --noflush failed (nothing was changed): {}",
            err.trim()
        );
    }
    Ok(())
}

/// Installs or removes the rules.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let settings = InterceptionSettings {
        inbound_port: args.inbound_port,
        outbound_port: args.outbound_port,
        admin_port: args.admin_port,
        proxy_uid: args.proxy_uid,
        skip_inbound_ports: args.skip_inbound_ports,
        skip_outbound_ports: args.skip_outbound_ports,
        skip_outbound_cidrs: args.skip_outbound_cidrs,
    };
    if settings.inbound_port == settings.outbound_port {
        anyhow::bail!("--inbound-port and --outbound-port must differ");
    }
    let mut families = vec![Family::V4];
    match args.ipv6 {
        Ipv6::On => families.push(Family::V6),
        Ipv6::Auto if args.dry_run || current_rules(Family::V6).is_ok() => {
            families.push(Family::V6)
        }
        _ => {}
    }
    for family in families {
        // A dry run works without privileges: it plans against an empty table if need be.
        let current = match current_rules(family) {
            Ok(current) => current,
            Err(_) if args.dry_run => String::new(),
            Err(e) => return Err(e),
        };
        let plan = if args.remove {
            interception::remove_plan(&current)
        } else {
            interception::apply_plan(&settings, family, &current)
        };
        let (_, restore) = tools(family);
        if args.dry_run {
            crate::output::print(&format!("# {restore} --noflush <<EOF\n{plan}# EOF\n"));
            continue;
        }
        apply(family, &plan)?;
        let what = if args.remove { "removed" } else { "installed" };
        eprintln!("warden init: {what} the {restore} rules");
    }
    Ok(ExitCode::SUCCESS)
}
