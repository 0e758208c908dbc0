//! `init`: install (or remove) the pod's interception rules, atomically, for IPv4 and
//! IPv6. Runs as the `warden-init` init container with NET_ADMIN and NET_RAW.
//!
//! [`install`] is also what the CNI plugin (`warden cni`) runs for a pod, from the node, in
//! the pod's network namespace: one function plans and applies the rules either way.

use std::fs::File;
use std::io::Write;
use std::net::Ipv6Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};

use crate::interception::{self, Family, InterceptionSettings};
use anyhow::Context;
use warden_core::cidr::{self, Cidr};
use warden_core::contract;

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

/// How `iptables-restore` is run: adding to the nat table, not replacing it. With the legacy
/// backend, a held xtables lock (`/run/xtables.lock`: kube-proxy's and other plugins' when
/// this runs as the CNI plugin on the node) would fail the restore at once; it is waited
/// for, 10 s at most. The nft backend has no lock.
const RESTORE_ARGS: [&str; 2] = ["--noflush", "--wait=10"];

fn apply(family: Family, input: &str) -> anyhow::Result<()> {
    let (_, restore) = tools(family);
    let mut child = Command::new(restore)
        .args(RESTORE_ARGS)
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
            "{restore} {} failed (nothing was changed): {}",
            RESTORE_ARGS.join(" "),
            err.trim()
        );
    }
    Ok(())
}

/// The kernel's list of IPv6 addresses of the calling thread's network namespace (absent when
/// IPv6 is disabled). `/proc/net` would be the process's, which is not the pod's when a thread
/// of the CNI plugin entered the pod's namespace.
const IF_INET6: &str = "/proc/thread-self/net/if_inet6";

/// The global IPv6 addresses of the current thread's network namespace.
fn pod_global_ipv6() -> anyhow::Result<Vec<Ipv6Addr>> {
    match std::fs::read_to_string(IF_INET6) {
        Ok(text) => Ok(global_ipv6(&text)),
        // IPv6 disabled: no address at all.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(anyhow::anyhow!(
            "cannot read the pod's IPv6 addresses ({IF_INET6}): {e}"
        )),
    }
}

/// The global-scope addresses in `/proc/net/if_inet6` text (ULA included: they are routed).
fn global_ipv6(if_inet6: &str) -> Vec<Ipv6Addr> {
    if_inet6
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (hex, scope) = (fields.first()?, fields.get(3)?);
            let bits = u128::from_str_radix(hex, 16)
                .ok()
                .filter(|_| hex.len() == 32)?;
            (*scope == "00").then_some(Ipv6Addr::from(bits))
        })
        .collect()
}

/// Whether to install IPv6 rules, given the mode, whether ip6tables' nat table answered,
/// and the pod's global IPv6 addresses. Interception never fails open: a pod reachable over
/// IPv6 whose IPv6 rules cannot be installed is an error, whatever the mode.
fn install_ipv6(mode: Ipv6, nat: Result<(), String>, global: &[Ipv6Addr]) -> anyhow::Result<bool> {
    let reachable = !global.is_empty();
    let addresses = || {
        global
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match (mode, nat) {
        (Ipv6::On, Ok(())) => Ok(true),
        (Ipv6::Auto, Ok(())) => Ok(true),
        (Ipv6::On, Err(e)) => {
            anyhow::bail!("--ipv6 on, but the IPv6 rules cannot be installed: {e}")
        }
        (Ipv6::Auto, Err(e)) if reachable => anyhow::bail!(
            "the pod has global IPv6 addresses ({}) but the IPv6 rules cannot be installed ({e}); \
             refusing to leave IPv6 unintercepted: load the ip6table_nat kernel module on the node \
             or disable IPv6 for the pod",
            addresses()
        ),
        (Ipv6::Off, _) if reachable => anyhow::bail!(
            "--ipv6 off, but the pod has global IPv6 addresses ({}): its IPv6 traffic would \
             bypass the proxy; use --ipv6 auto",
            addresses()
        ),
        (Ipv6::Auto | Ipv6::Off, _) => Ok(false),
    }
}

/// Runs `f` in the network namespace at `netns` (`None`: the caller's own), on a thread of
/// its own that enters the namespace with `setns(2)` and ends with `f`: the iptables children
/// it spawns start in that namespace, `/proc/thread-self/net` is the pod's, and no other
/// thread (nor the thread pool of an async runtime) ever runs in the pod's namespace.
fn in_netns<T: Send>(
    netns: Option<&Path>,
    f: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<T> {
    let Some(path) = netns else { return f() };
    let enter = || {
        let file = File::open(path)
            .with_context(|| format!("the pod's network namespace {}", path.display()))?;
        // SAFETY: setns on this thread only, with a namespace file descriptor that is open
        // for the duration of the call.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(anyhow::anyhow!(
                "cannot enter the pod's network namespace {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        f()
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, enter)
            .context("cannot start a thread")?
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("the network namespace thread panicked")))
    })
}

/// Installs the interception rules (IPv4, and IPv6 as `ipv6` and the pod decide) in the
/// network namespace at `netns` (`None`: this process's), atomically per address family and
/// replacing an earlier installation. Decided before anything changes, so a refusal (IPv6
/// that would stay open) leaves the tables untouched. `who` prefixes the notes on stderr.
pub fn install(
    settings: &InterceptionSettings,
    ipv6: Ipv6,
    netns: Option<&Path>,
    who: &str,
) -> anyhow::Result<()> {
    if settings.inbound_port == settings.outbound_port {
        anyhow::bail!("--inbound-port and --outbound-port must differ");
    }
    in_netns(netns, || {
        let nat = current_rules(Family::V6)
            .map(|_| ())
            .map_err(|e| e.to_string());
        let global = pod_global_ipv6()?;
        let mut families = vec![Family::V4];
        if install_ipv6(ipv6, nat, &global)? {
            families.push(Family::V6);
        } else {
            eprintln!("{who}: no IPv6 rules: the pod has no global IPv6 address");
        }
        for family in families {
            let plan = interception::apply_plan(settings, family, &current_rules(family)?);
            apply(family, &plan)?;
            eprintln!("{who}: installed the {} rules", tools(family).1);
        }
        Ok(())
    })
}

/// Checks that the network namespace at `netns` has exactly the rules [`install`] puts there
/// for `settings`: IPv4 always, IPv6 when the pod has a global IPv6 address or ip6tables' nat
/// table holds Warden's chains.
pub fn verify(settings: &InterceptionSettings, netns: Option<&Path>) -> anyhow::Result<()> {
    in_netns(netns, || {
        interception::verify(settings, Family::V4, &current_rules(Family::V4)?)
            .map_err(|e| anyhow::anyhow!("iptables: {e}"))?;
        let global = pod_global_ipv6()?;
        let v6 = current_rules(Family::V6);
        let ours = v6
            .as_ref()
            .is_ok_and(|t| t.contains(&format!(":{} ", contract::chains::INBOUND)));
        if !global.is_empty() || ours {
            interception::verify(settings, Family::V6, &v6?)
                .map_err(|e| anyhow::anyhow!("ip6tables: {e}"))?;
        }
        Ok(())
    })
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
    if !args.dry_run && !args.remove {
        install(&settings, args.ipv6, None, "warden init")?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut families = vec![Family::V4];
    let with_v6 = if args.dry_run {
        !matches!(args.ipv6, Ipv6::Off)
    } else {
        // Removing leaves nothing open: take away whatever of ours each table has.
        current_rules(Family::V6).is_ok()
    };
    if with_v6 {
        families.push(Family::V6);
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
            super::print(&format!(
                "# {restore} {} <<EOF\n{plan}# EOF\n",
                RESTORE_ARGS.join(" ")
            ));
            continue;
        }
        apply(family, &plan)?;
        eprintln!("warden init: removed the {restore} rules");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const IF_INET6: &str = "\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
20010db8000000000000000000000005 02 40 00 00     eth0
fd000213000000000000000000000002 02 40 00 00     eth0
";

    #[test]
    fn only_global_addresses_count() {
        let global = global_ipv6(IF_INET6);
        assert_eq!(
            global,
            vec![
                "2001:db8::5".parse::<Ipv6Addr>().unwrap(),
                "fd00:213::2".parse().unwrap()
            ]
        );
        assert!(global_ipv6("garbage\n\nxyz 01 80 00 80 lo").is_empty());
    }

    #[test]
    fn ipv6_never_fails_open() {
        let global = ["2001:db8::5".parse::<Ipv6Addr>().unwrap()];
        let none: [Ipv6Addr; 0] = [];
        let broken = || Err("ip6tables-save -t nat failed: table does not exist".to_string());
        // (mode, nat available, global addresses) -> install, or an error containing
        type Row<'a> = (
            Ipv6,
            Result<(), String>,
            &'a [Ipv6Addr],
            Result<bool, &'a str>,
        );
        let cases: Vec<Row> = vec![
            (Ipv6::Auto, Ok(()), &global, Ok(true)),
            (Ipv6::Auto, Ok(()), &none, Ok(true)),
            (Ipv6::Auto, broken(), &none, Ok(false)),
            (
                Ipv6::Auto,
                broken(),
                &global,
                Err("global IPv6 addresses (2001:db8::5)"),
            ),
            (Ipv6::On, Ok(()), &none, Ok(true)),
            (Ipv6::On, broken(), &none, Err("--ipv6 on")),
            (Ipv6::Off, Ok(()), &none, Ok(false)),
            (Ipv6::Off, Ok(()), &global, Err("--ipv6 off")),
        ];
        for (mode, nat, addrs, want) in cases {
            let got = install_ipv6(mode, nat, addrs).map_err(|e| e.to_string());
            match (got, want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want, "{mode:?} {addrs:?}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
                (got, want) => panic!("{mode:?} {addrs:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
