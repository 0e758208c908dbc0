//! The interception rules `warden init` (and the CNI plugin, `warden cni`) installs in a
//! pod's network namespace, as pure functions from settings (and the current
//! `iptables-save -t nat` output) to one `iptables-restore --noflush` input: applied
//! atomically, idempotent, removable, and checkable ([`verify`]).
//!
//! - nat/PREROUTING -> `WARDEN_INBOUND`: TCP to the pod is redirected to the inbound port,
//!   except the admin port and skipped ports;
//! - nat/OUTPUT -> `WARDEN_OUTPUT`: TCP from every UID but the proxy's is redirected to the
//!   outbound port, except loopback (the pod's own apps), skipped ports and skipped CIDRs.

use warden_core::contract::{self, chains};
use warden_core::Cidr;

/// What to intercept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterceptionSettings {
    /// Where inbound TCP is redirected (the proxy's inbound port).
    pub inbound_port: u16,
    /// Where the app's outbound TCP is redirected (the proxy's outbound port).
    pub outbound_port: u16,
    /// The proxy's admin port: never intercepted (probes reach it directly).
    pub admin_port: u16,
    /// The proxy's UID: its own traffic is never intercepted.
    pub proxy_uid: u32,
    /// Inbound destination ports left alone.
    pub skip_inbound_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub skip_outbound_ports: Vec<u16>,
    /// Outbound destination networks left alone.
    pub skip_outbound_cidrs: Vec<Cidr>,
}

impl Default for InterceptionSettings {
    fn default() -> Self {
        Self {
            inbound_port: contract::INBOUND_PORT,
            outbound_port: contract::OUTBOUND_PORT,
            admin_port: contract::ADMIN_PORT,
            proxy_uid: contract::PROXY_UID,
            skip_inbound_ports: Vec::new(),
            skip_outbound_ports: Vec::new(),
            skip_outbound_cidrs: Vec::new(),
        }
    }
}

/// IPv4 (`iptables`) or IPv6 (`ip6tables`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// iptables.
    V4,
    /// ip6tables.
    V6,
}

/// The jumps from built-in chains into ours, exactly as `iptables-save` prints them.
fn jumps() -> [String; 2] {
    [
        format!("-A PREROUTING -p tcp -j {}", chains::INBOUND),
        format!("-A OUTPUT -p tcp -j {}", chains::OUTPUT),
    ]
}

/// The rules of our chains for one address family.
pub fn chain_rules(settings: &InterceptionSettings, family: Family) -> Vec<String> {
    let inbound = chains::INBOUND;
    let output = chains::OUTPUT;
    let mut rules = Vec::new();
    let mut skip_in = vec![settings.admin_port];
    skip_in.extend(&settings.skip_inbound_ports);
    skip_in.dedup();
    for port in skip_in {
        rules.push(format!("-A {inbound} -p tcp --dport {port} -j RETURN"));
    }
    rules.push(format!(
        "-A {inbound} -p tcp -j REDIRECT --to-ports {}",
        settings.inbound_port
    ));
    rules.push(format!(
        "-A {output} -m owner --uid-owner {} -j RETURN",
        settings.proxy_uid
    ));
    // Loopback: the app talking to itself or a sidecar in the pod; never meshed.
    rules.push(format!("-A {output} -o lo -j RETURN"));
    for cidr in &settings.skip_outbound_cidrs {
        if cidr.is_ipv6() == (family == Family::V6) {
            rules.push(format!("-A {output} -d {cidr} -j RETURN"));
        }
    }
    for port in &settings.skip_outbound_ports {
        rules.push(format!("-A {output} -p tcp --dport {port} -j RETURN"));
    }
    rules.push(format!(
        "-A {output} -p tcp -j REDIRECT --to-ports {}",
        settings.outbound_port
    ));
    rules
}

/// Deletions of every jump into our chains found in `current` (the `iptables-save -t nat`
/// output), so that applying again, or removing, leaves no stale jump behind.
fn delete_existing_jumps(current: &str) -> Vec<String> {
    let ours = [chains::INBOUND, chains::OUTPUT];
    current
        .lines()
        .filter(|line| line.starts_with("-A PREROUTING ") || line.starts_with("-A OUTPUT "))
        .filter(|line| {
            line.split_whitespace()
                .skip_while(|w| *w != "-j")
                .nth(1)
                .is_some_and(|target| ours.contains(&target))
        })
        .map(|line| format!("-D{}", &line[2..]))
        .collect()
}

fn chain_exists(current: &str, chain: &str) -> bool {
    current
        .lines()
        .any(|l| l.starts_with(&format!(":{chain} ")))
}

/// The `iptables-restore --noflush` input that installs the rules, replacing any earlier
/// installation in one transaction.
pub fn apply_plan(settings: &InterceptionSettings, family: Family, current: &str) -> String {
    let mut out = vec!["*nat".to_string()];
    out.extend(delete_existing_jumps(current));
    // Declaring a chain creates it, or flushes it if it exists.
    for chain in [chains::INBOUND, chains::OUTPUT] {
        out.push(format!(":{chain} - [0:0]"));
    }
    out.extend(chain_rules(settings, family));
    out.extend(jumps());
    out.push("COMMIT".into());
    out.join("\n") + "\n"
}

/// The `iptables-restore --noflush` input that removes exactly what `apply_plan` installs
/// (nothing, if it is not installed).
pub fn remove_plan(current: &str) -> String {
    let mut out = vec!["*nat".to_string()];
    out.extend(delete_existing_jumps(current));
    for chain in [chains::INBOUND, chains::OUTPUT] {
        if chain_exists(current, chain) {
            out.push(format!("-F {chain}"));
            out.push(format!("-X {chain}"));
        }
    }
    out.push("COMMIT".into());
    out.join("\n") + "\n"
}

/// Whether `current` (the `iptables-save -t nat` output) holds exactly what [`apply_plan`]
/// installs for `settings`: both chains with exactly their rules in order, and each jump into
/// them once. The `-m tcp` that `iptables-save` adds to `--dport` matches is ignored.
pub fn verify(
    settings: &InterceptionSettings,
    family: Family,
    current: &str,
) -> Result<(), String> {
    let normalized: Vec<String> = current
        .lines()
        .map(|line| line.replace(" -m tcp ", " "))
        .collect();
    let want = chain_rules(settings, family);
    for chain in [chains::INBOUND, chains::OUTPUT] {
        if !chain_exists(current, chain) {
            return Err(format!("the chain {chain} is missing"));
        }
        let prefix = format!("-A {chain} ");
        let of = |rules: &[String]| -> Vec<String> {
            rules
                .iter()
                .filter(|r| r.starts_with(&prefix))
                .cloned()
                .collect()
        };
        let (have, expected) = (of(&normalized), of(&want));
        if have != expected {
            return Err(format!(
                "the chain {chain} holds {have:?} instead of {expected:?}"
            ));
        }
    }
    for jump in jumps() {
        let n = normalized.iter().filter(|l| **l == jump).count();
        if n != 1 {
            return Err(format!(
                "the jump {jump:?} appears {n} times instead of once"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n";

    fn settings() -> InterceptionSettings {
        InterceptionSettings {
            skip_inbound_ports: vec![22],
            skip_outbound_ports: vec![53],
            skip_outbound_cidrs: vec![
                Cidr::parse("169.254.169.254/32").unwrap(),
                Cidr::parse("fd00:ec2::254/128").unwrap(),
            ],
            ..InterceptionSettings::default()
        }
    }

    #[test]
    fn fresh_install_ipv4() {
        let plan = apply_plan(&settings(), Family::V4, EMPTY);
        assert_eq!(
            plan,
            "*nat
:WARDEN_INBOUND - [0:0]
:WARDEN_OUTPUT - [0:0]
-A WARDEN_INBOUND -p tcp --dport 7191 -j RETURN
-A WARDEN_INBOUND -p tcp --dport 22 -j RETURN
-A WARDEN_INBOUND -p tcp -j REDIRECT --to-ports 7143
-A WARDEN_OUTPUT -m owner --uid-owner 2626 -j RETURN
-A WARDEN_OUTPUT -o lo -j RETURN
-A WARDEN_OUTPUT -d 169.254.169.254/32 -j RETURN
-A WARDEN_OUTPUT -p tcp --dport 53 -j RETURN
-A WARDEN_OUTPUT -p tcp -j REDIRECT --to-ports 7140
-A PREROUTING -p tcp -j WARDEN_INBOUND
-A OUTPUT -p tcp -j WARDEN_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn ipv6_gets_only_ipv6_cidrs() {
        let plan = apply_plan(&settings(), Family::V6, EMPTY);
        assert!(plan.contains("-A WARDEN_OUTPUT -d fd00:ec2::254/128 -j RETURN"));
        assert!(!plan.contains("169.254.169.254"));
    }

    #[test]
    fn reapplying_replaces_instead_of_adding() {
        // What iptables-save prints after one install (plus a stray second jump and a rule
        // of someone else's that must be left alone).
        let installed = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:WARDEN_INBOUND - [0:0]
:WARDEN_OUTPUT - [0:0]
-A PREROUTING -p tcp -j WARDEN_INBOUND
-A PREROUTING -p tcp -j WARDEN_INBOUND
-A PREROUTING -p udp -j OTHER_CHAIN
-A OUTPUT -p tcp -j WARDEN_OUTPUT
-A WARDEN_INBOUND -p tcp -m tcp --dport 7191 -j RETURN
COMMIT
";
        let plan = apply_plan(&InterceptionSettings::default(), Family::V4, installed);
        let lines: Vec<&str> = plan.lines().collect();
        assert_eq!(
            &lines[1..4],
            [
                "-D PREROUTING -p tcp -j WARDEN_INBOUND",
                "-D PREROUTING -p tcp -j WARDEN_INBOUND",
                "-D OUTPUT -p tcp -j WARDEN_OUTPUT",
            ]
        );
        assert!(!plan.contains("OTHER_CHAIN"), "others' rules are untouched");
        assert_eq!(plan.matches("-A PREROUTING").count(), 1, "one jump after");
    }

    #[test]
    fn verify_accepts_exactly_what_apply_installs() {
        // What iptables-save prints after apply_plan(settings(), V4) on an empty table.
        let installed = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:WARDEN_INBOUND - [0:0]
:WARDEN_OUTPUT - [0:0]
-A PREROUTING -p tcp -j WARDEN_INBOUND
-A OUTPUT -p tcp -j WARDEN_OUTPUT
-A WARDEN_INBOUND -p tcp -m tcp --dport 7191 -j RETURN
-A WARDEN_INBOUND -p tcp -m tcp --dport 22 -j RETURN
-A WARDEN_INBOUND -p tcp -j REDIRECT --to-ports 7143
-A WARDEN_OUTPUT -m owner --uid-owner 2626 -j RETURN
-A WARDEN_OUTPUT -o lo -j RETURN
-A WARDEN_OUTPUT -d 169.254.169.254/32 -j RETURN
-A WARDEN_OUTPUT -p tcp -m tcp --dport 53 -j RETURN
-A WARDEN_OUTPUT -p tcp -j REDIRECT --to-ports 7140
COMMIT
";
        assert_eq!(verify(&settings(), Family::V4, installed), Ok(()));
        let cases = [
            (EMPTY.to_string(), "the chain WARDEN_INBOUND is missing"),
            (
                installed.replace("--dport 22 ", "--dport 2222 "),
                "the chain WARDEN_INBOUND holds",
            ),
            (
                installed.replace("-A WARDEN_OUTPUT -p tcp -m tcp --dport 53 -j RETURN\n", ""),
                "the chain WARDEN_OUTPUT holds",
            ),
            (
                installed.replace("-A OUTPUT -p tcp -j WARDEN_OUTPUT\n", ""),
                "appears 0 times",
            ),
            (
                installed.replace(
                    "-A PREROUTING -p tcp -j WARDEN_INBOUND\n",
                    "-A PREROUTING -p tcp -j WARDEN_INBOUND\n-A PREROUTING -p tcp -j WARDEN_INBOUND\n",
                ),
                "appears 2 times",
            ),
        ];
        for (current, want) in cases {
            let err = verify(&settings(), Family::V4, &current).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
        // Other settings are not what is installed.
        let err = verify(&InterceptionSettings::default(), Family::V4, installed).unwrap_err();
        assert!(err.contains("WARDEN_INBOUND holds"), "{err}");
    }

    #[test]
    fn removal_deletes_exactly_our_chains() {
        let installed = "*nat
:WARDEN_INBOUND - [0:0]
:WARDEN_OUTPUT - [0:0]
:SOMEONE_ELSE - [0:0]
-A PREROUTING -p tcp -j WARDEN_INBOUND
-A OUTPUT -p tcp -j WARDEN_OUTPUT
-A OUTPUT -p tcp -j SOMEONE_ELSE
COMMIT
";
        assert_eq!(
            remove_plan(installed),
            "*nat
-D PREROUTING -p tcp -j WARDEN_INBOUND
-D OUTPUT -p tcp -j WARDEN_OUTPUT
-F WARDEN_INBOUND
-X WARDEN_INBOUND
-F WARDEN_OUTPUT
-X WARDEN_OUTPUT
COMMIT
"
        );
        assert_eq!(remove_plan(EMPTY), "*nat\nCOMMIT\n", "nothing to remove");
    }
}
