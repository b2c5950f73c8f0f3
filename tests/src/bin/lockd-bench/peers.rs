//! The peers lockd is compared with — nftables (netdev and bridge family), ebtables and
//! xdp-filter — each set up on the VIF with the locking policy or with its own floor: the same
//! tool at the same hook doing the least it can (one rule that drops every frame), so what the
//! policy adds over that floor is the policy's cost, not the stack's.

use lockd_kit::netlab::NetNs;
use serde_json::Value;

use crate::topo::GUEST_STR;

/// Which rules a peer is given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rules {
    /// The closest the tool comes to lockd's policy for the VIF.
    Policy,
    /// One rule that drops every frame (for xdp-filter, its default-deny policy): the tool's
    /// floor at its hook.
    Floor,
}

const NFT_TABLE: &str = "lockd_bench";

/// The policy's address sets, and the named counter its dropping rule (or the floor's one
/// rule) bumps: read back as the path's drop count.
const NFT_SETS: &str = r#"
    set a4 { type ipv4_addr; elements = { 10.0.0.2 } }
    set a6 { type ipv6_addr; elements = { 2001:db8::2, fe80::ff:fe00:b } }
    counter spoof {
    }
"#;

/// The lockd policy as nftables rules (MAC, EtherType, ARP and IP sources), or the one-rule
/// floor.
fn nft_rules(dev_match: &str, rules: Rules) -> String {
    match rules {
        Rules::Floor => "counter name spoof drop\n".to_string(),
        Rules::Policy => format!(
            "{dev_match} ether saddr != {GUEST_STR} drop\n\
             {dev_match} ether type != {{ ip, arp, ip6 }} drop\n\
             {dev_match} ether type arp arp saddr ip != @a4 drop\n\
             {dev_match} ether type ip ip saddr != @a4 counter name spoof drop\n\
             {dev_match} ether type ip6 ip6 saddr != @a6 drop\n"
        ),
    }
}

/// Loads the nftables table for `family` ("netdev": ingress of vif0; "bridge": the bridge's
/// prerouting hook, frames from vif0).
pub fn nft_load(ns: &NetNs, family: &str, rules: Rules) {
    let chain = match family {
        "netdev" => format!(
            "chain ingress {{\ntype filter hook ingress device \"vif0\" priority 0; policy accept;\n{}}}",
            nft_rules("", rules)
        ),
        _ => format!(
            "chain pre {{\ntype filter hook prerouting priority 0; policy accept;\n{}}}",
            nft_rules("iifname \"vif0\"", rules)
        ),
    };
    let script = format!("table {family} {NFT_TABLE} {{\n{NFT_SETS}\n{chain}\n}}\n");
    let path = std::env::temp_dir().join(format!("lockd-bench-{}.nft", std::process::id()));
    std::fs::write(&path, script).expect("write nft script");
    let res = ns.exec(&["nft", "-f", path.to_str().expect("utf-8")]);
    let _ = std::fs::remove_file(path);
    res.expect("nft -f");
}

/// Packets the dropping rule counted.
pub fn nft_counter(ns: &NetNs, family: &str) -> Option<u64> {
    let out = ns
        .exec(&["nft", "-j", "list", "counter", family, NFT_TABLE, "spoof"])
        .ok()?;
    let v: Value = serde_json::from_str(&out).ok()?;
    v["nftables"]
        .as_array()?
        .iter()
        .find_map(|o| o["counter"]["packets"].as_u64())
}

/// ebtables-legacy (the kernel's ebtables, as XenServer uses) where this kernel has its
/// `filter` table, else the nftables-backed ebtables (`ebtables-nft`, from Debian's iptables
/// package), else why neither can run.
pub fn ebtables_cmd(ns: &NetNs) -> Result<String, String> {
    let legacy = ns.exec(&["ebtables-legacy", "-t", "filter", "-L"]);
    if legacy.is_ok() {
        return Ok("ebtables-legacy".into());
    }
    match ns.exec(&["ebtables-nft", "-t", "filter", "-L"]) {
        Ok(_) => Ok("ebtables-nft".into()),
        Err(nft) => Err(format!(
            "neither ebtables-legacy ({}) nor ebtables-nft ({nft}) works here",
            legacy.err().map(|e| e.to_string()).unwrap_or_default()
        )),
    }
}

/// Sets `bridge-nf-call-*` in `ns` and loads xapi's ebtables rules for a locked VIF on the
/// bridge backend (or the one-rule floor) into FORWARD. Returns the ebtables command used.
pub fn ebtables_load(ns: &NetNs, nf_call: bool, rules: Rules) -> Result<String, String> {
    let v = if nf_call { "1" } else { "0" };
    for k in ["iptables", "ip6tables", "arptables"] {
        let key = format!("net.bridge.bridge-nf-call-{k}");
        ns.exec(&["sysctl", "-qw", &format!("{key}={v}")])
            .map_err(|e| format!("sysctl {key}={v}: {e}"))?;
    }
    let eb = ebtables_cmd(ns)?;
    let policy: Vec<Vec<&str>> = match rules {
        Rules::Floor => vec![vec!["-A", "FORWARD", "-j", "DROP"]],
        Rules::Policy => vec![
            vec![
                "-A", "FORWARD", "-i", "vif0", "-s", "!", GUEST_STR, "-j", "DROP",
            ],
            vec![
                "-A",
                "FORWARD",
                "-i",
                "vif0",
                "-p",
                "ARP",
                "--arp-ip-src",
                "!",
                "10.0.0.2",
                "-j",
                "DROP",
            ],
            vec![
                "-A", "FORWARD", "-i", "vif0", "-p", "IPv4", "--ip-src", "!", "10.0.0.2", "-j",
                "DROP",
            ],
        ],
    };
    for rule in policy {
        let mut args = vec![eb.as_str()];
        args.extend(rule);
        ns.exec(&args)
            .map_err(|e| format!("{eb} refused the rule {args:?}: {e}"))?;
    }
    Ok(eb)
}

/// Frames FORWARD's rules dropped: the sum of their packet counters (a frame is counted by
/// the one rule that drops it; every rule here drops).
pub fn ebtables_counter(ns: &NetNs, eb: &str) -> Option<u64> {
    let out = ns.exec(&[eb, "-L", "FORWARD", "--Lc"]).ok()?;
    // Each rule's line ends with ", pcnt = N -- bcnt = M".
    let counts: Vec<u64> = out
        .lines()
        .filter_map(|l| l.split("pcnt = ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect();
    (!counts.is_empty()).then(|| counts.iter().sum())
}

/// `xdp-filter ARGS` in the network namespace `ns` (entered with nsenter: `ip netns exec`
/// remounts /sys, hiding bpffs from libxdp).
pub fn xdp_filter(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg("xdp-filter")
        .args(args)
        .output()
        .map_err(|e| format!("xdp-filter: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "xdp-filter {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Loads xdp-filter on vif0 in native mode. Its rules are alternatives (any match passes), so
/// it cannot require the MAC and the address together: the closest policy that drops this
/// frame is default deny with the guest's IPv4 source allowed. Its floor is the least the same
/// program can do: default deny and no rule, so every frame is dropped after the one lookup
/// that finds nothing. (Its Ethernet-only program denying the guest's MAC, tried first, cost
/// 7 ns more per frame than the IPv4 policy itself: not the least it can do.)
pub fn xdp_filter_load(ns: &str, rules: Rules) -> Result<(), String> {
    let load = xdp_filter(
        ns,
        &["load", "-m", "native", "-p", "deny", "-f", "ipv4", "vif0"],
    );
    match rules {
        Rules::Policy => load.and_then(|_| xdp_filter(ns, &["ip", "-m", "src", "10.0.0.2"])),
        Rules::Floor => load,
    }
    .map(|_| ())
}

/// Frames xdp-filter dropped (its `status`: "  XDP_DROP   N pkts   M KiB").
pub fn xdp_filter_counter(ns: &str) -> Option<u64> {
    xdp_filter(ns, &["status"])
        .ok()?
        .lines()
        .find(|l| l.trim_start().starts_with("XDP_DROP"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
}
