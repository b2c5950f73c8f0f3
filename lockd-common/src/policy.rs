//! Userspace view of a VIF's policy and the parsers for `xe`-style values.

use std::{
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::{MAX_ALLOWED_PER_VIF, MODE_DISABLED, MODE_LOCKED, MODE_UNLOCKED};

/// A VIF's `locking-mode` setting as the operator wrote it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockingMode {
    #[default]
    NetworkDefault,
    Locked,
    Unlocked,
    Disabled,
}

/// The mode in force after `network_default` is resolved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectiveMode {
    #[default]
    Unlocked,
    Disabled,
    Locked,
}

/// A network's `default-locking-mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DefaultLockingMode {
    #[default]
    Unlocked,
    Disabled,
}

impl LockingMode {
    /// Resolves `network_default` against the network's default.
    pub fn effective(self, network: DefaultLockingMode) -> EffectiveMode {
        match self {
            LockingMode::Locked => EffectiveMode::Locked,
            LockingMode::Unlocked => EffectiveMode::Unlocked,
            LockingMode::Disabled => EffectiveMode::Disabled,
            LockingMode::NetworkDefault => match network {
                DefaultLockingMode::Unlocked => EffectiveMode::Unlocked,
                DefaultLockingMode::Disabled => EffectiveMode::Disabled,
            },
        }
    }
}

impl EffectiveMode {
    /// The `MODE_*` value stored in the kernel.
    pub fn kernel(self) -> u32 {
        match self {
            EffectiveMode::Unlocked => MODE_UNLOCKED,
            EffectiveMode::Disabled => MODE_DISABLED,
            EffectiveMode::Locked => MODE_LOCKED,
        }
    }
}

/// A value that is not one of the words a setting accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{value}' is not one of: {expected}")]
pub struct BadWord {
    /// What the operator wrote.
    pub value: String,
    /// The accepted words, comma separated.
    pub expected: &'static str,
}

/// Each mode's word, declared once: `name()`, `ALL`, `Display` and `FromStr` come from it (the
/// serde names, `rename_all = "snake_case"`, are the same words).
macro_rules! words {
    ($($t:ident { $($v:ident = $s:literal),+ }),+ $(,)?) => {$(
        impl $t {
            /// Every value, in declaration order.
            pub const ALL: &'static [$t] = &[$($t::$v),+];
            /// The accepted words, comma separated.
            pub const WORDS: &'static str = words!(@join $($s),+);

            /// The operator's word for it.
            pub fn name(self) -> &'static str {
                match self { $($t::$v => $s),+ }
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $t {
            type Err = BadWord;
            fn from_str(s: &str) -> Result<Self, BadWord> {
                match s.trim() {
                    $($s => Ok($t::$v),)+
                    other => Err(BadWord { value: other.to_string(), expected: Self::WORDS }),
                }
            }
        }
    )+};
    (@join $first:literal $(, $rest:literal)*) => { concat!($first $(, ", ", $rest)*) };
}

words! {
    LockingMode { NetworkDefault = "network_default", Locked = "locked", Unlocked = "unlocked", Disabled = "disabled" },
    EffectiveMode { Locked = "locked", Unlocked = "unlocked", Disabled = "disabled" },
    DefaultLockingMode { Unlocked = "unlocked", Disabled = "disabled" },
}

/// Everything the dataplane needs to judge one VIF's traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VifPolicy {
    pub mode: EffectiveMode,
    /// The guest MAC.
    pub mac: [u8; 6],
    /// A4: allowed IPv4 addresses and prefixes.
    pub ipv4: Vec<Ipv4Network>,
    /// A6: allowed IPv6 addresses and prefixes (without the derived link-local).
    pub ipv6: Vec<Ipv6Network>,
    /// The QoS rate limit on frames from the VM, if any.
    pub rate: Option<RateLimit>,
}

/// `qos_algorithm_type=ratelimit` with its params.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Kilobytes (1024 B) per second.
    pub kbps: u64,
    /// Bucket depth as time at the rate.
    pub timeslice_us: u64,
}

impl VifPolicy {
    /// Is `ip` in A4?
    pub fn allows4(&self, ip: Ipv4Addr) -> bool {
        self.ipv4.iter().any(|n| n.contains(ip))
    }

    /// Is S6 non-empty (A6 non-empty)?
    pub fn has_s6(&self) -> bool {
        !self.ipv6.is_empty()
    }

    /// Is `ip` in S6 = A6 ∪ {LL(guest MAC)} (empty when A6 is empty)?
    pub fn allows6(&self, ip: Ipv6Addr) -> bool {
        self.has_s6() && (ip == link_local(self.mac) || self.ipv6.iter().any(|n| n.contains(ip)))
    }
}

/// The EUI-64 link-local address of a MAC (RFC 4291 appendix A): fe80::/64 with the MAC's
/// universal/local bit flipped and ff:fe inserted in the middle.
pub fn link_local(mac: [u8; 6]) -> Ipv6Addr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8] = mac[0] ^ 0x02;
    a[9] = mac[1];
    a[10] = mac[2];
    a[11] = 0xff;
    a[12] = 0xfe;
    a[13] = mac[3];
    a[14] = mac[4];
    a[15] = mac[5];
    Ipv6Addr::from(a)
}

/// The solicited-node multicast address of `target` (RFC 4291 2.7.1): ff02::1:ffXX:XXXX.
pub fn solicited_node(target: Ipv6Addr) -> Ipv6Addr {
    let t = target.octets();
    let mut a = [0u8; 16];
    a[0] = 0xff;
    a[1] = 0x02;
    a[11] = 0x01;
    a[12] = 0xff;
    a[13] = t[13];
    a[14] = t[14];
    a[15] = t[15];
    Ipv6Addr::from(a)
}

/// Why a list or item was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ListError {
    /// The item is not an address or prefix of the list's family.
    #[error("'{item}' is not an {family} address or CIDR prefix")]
    Garbage { item: String, family: &'static str },
    /// The item can never be a VM's own source address.
    #[error("'{item}' is {why}: it cannot be a VM's address")]
    Refused { item: String, why: &'static str },
    /// The list has more items than a VIF may hold.
    #[error("{count} entries exceed the per-VIF limit of {MAX_ALLOWED_PER_VIF}")]
    TooMany { count: usize },
}

/// Why an IPv4 network can never be a VM's: unspecified, multicast or limited broadcast.
fn refused4(a: Ipv4Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("the unspecified address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else if a.is_broadcast() {
        Some("the limited broadcast address")
    } else {
        None
    }
}

/// Why an IPv6 network can never be a VM's: unspecified or multicast.
fn refused6(a: Ipv6Addr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("the unspecified address")
    } else if a.is_multicast() {
        Some("a multicast address")
    } else {
        None
    }
}

/// Notes for the items of a list value that have host bits set: each is stored as its
/// network (`'10.0.0.5/24' has host bits set: stored as 10.0.0.0/24`).
pub fn host_bit_notes(value: &str) -> Vec<String> {
    items(value)
        .filter_map(|item| {
            let (network, prefix) = match (Ipv4Network::from_str(item), Ipv6Network::from_str(item))
            {
                (Ok(n), _) if item.contains('/') && n.network() != n.ip() => {
                    (n.network().to_string(), n.prefix())
                }
                (_, Ok(n)) if item.contains('/') && n.network() != n.ip() => {
                    (n.network().to_string(), n.prefix())
                }
                _ => return None,
            };
            Some(format!(
                "'{item}' has host bits set: stored as {network}/{prefix}"
            ))
        })
        .collect()
}

/// Splits an `xe` list value: comma separated, whitespace around items ignored, empty = clear.
fn items(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn check_len(n: usize) -> Result<(), ListError> {
    if n > MAX_ALLOWED_PER_VIF {
        return Err(ListError::TooMany { count: n });
    }
    Ok(())
}

/// Parses an `ipv4-allowed` value. Duplicates are folded.
pub fn parse_ipv4_list(value: &str) -> Result<Vec<Ipv4Network>, ListError> {
    let mut out: Vec<Ipv4Network> = Vec::new();
    for item in items(value) {
        let net = if item.contains('/') {
            Ipv4Network::from_str(item).ok()
        } else {
            Ipv4Addr::from_str(item).ok().map(Ipv4Network::from)
        }
        .ok_or_else(|| ListError::Garbage {
            item: item.to_string(),
            family: "IPv4",
        })?;
        if let Some(why) = refused4(net.network()) {
            return Err(ListError::Refused {
                item: item.to_string(),
                why,
            });
        }
        // Host bits are accepted, as xapi accepts them, and stored as the network.
        let net = Ipv4Network::new(net.network(), net.prefix()).expect("same prefix");
        if !out.contains(&net) {
            out.push(net);
        }
    }
    check_len(out.len())?;
    Ok(out)
}

/// Parses an `ipv6-allowed` value. Duplicates are folded.
pub fn parse_ipv6_list(value: &str) -> Result<Vec<Ipv6Network>, ListError> {
    let mut out: Vec<Ipv6Network> = Vec::new();
    for item in items(value) {
        let net = if item.contains('/') {
            Ipv6Network::from_str(item).ok()
        } else {
            Ipv6Addr::from_str(item).ok().map(Ipv6Network::from)
        }
        .ok_or_else(|| ListError::Garbage {
            item: item.to_string(),
            family: "IPv6",
        })?;
        if let Some(why) = refused6(net.network()) {
            return Err(ListError::Refused {
                item: item.to_string(),
                why,
            });
        }
        // Host bits are accepted, as xapi accepts them, and stored as the network.
        let net = Ipv6Network::new(net.network(), net.prefix()).expect("same prefix");
        if !out.contains(&net) {
            out.push(net);
        }
    }
    check_len(out.len())?;
    Ok(out)
}

/// A MAC address that does not parse, or cannot be a guest's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadMac {
    #[error("'{0}' is not a MAC address (expected six hex bytes like 02:00:00:00:00:01)")]
    Syntax(String),
    #[error("'{0}' is {1}: a guest MAC must be unicast and non-zero")]
    NotUnicast(String, &'static str),
}

/// Parses `aa:bb:cc:dd:ee:ff` (or with `-`).
pub fn parse_mac(s: &str) -> Result<[u8; 6], BadMac> {
    let bad = || BadMac::Syntax(s.to_string());
    let mut out = [0u8; 6];
    let mut parts = s.trim().split([':', '-']);
    for b in out.iter_mut() {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if out == [0; 6] {
        return Err(BadMac::NotUnicast(s.to_string(), "the zero MAC"));
    }
    if out[0] & 1 != 0 {
        return Err(BadMac::NotUnicast(
            s.to_string(),
            if out == [0xff; 6] {
                "the broadcast MAC"
            } else {
                "a multicast MAC"
            },
        ));
    }
    Ok(out)
}

/// Formats a MAC as lowercase colon-separated hex.
pub fn format_mac(mac: [u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_trim_and_fold() {
        let l = parse_ipv4_list(" 10.0.0.1 , 10.1.0.0/16,10.0.0.1,").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].prefix(), 16);
        assert!(parse_ipv4_list("").unwrap().is_empty());
        let l6 = parse_ipv6_list("2001:db8::1, 2001:db8:1::/48").unwrap();
        assert_eq!(l6.len(), 2);
    }

    #[test]
    fn list_errors_name_the_item() {
        // Host bits: accepted and stored as the network, with a note for the CLI.
        let l = parse_ipv4_list("10.0.0.1, 10.0.0.5/24").unwrap();
        assert_eq!(l[1].to_string(), "10.0.0.0/24");
        assert_eq!(
            host_bit_notes("10.0.0.1, 10.0.0.5/24, 2001:db8::1/64"),
            [
                "'10.0.0.5/24' has host bits set: stored as 10.0.0.0/24",
                "'2001:db8::1/64' has host bits set: stored as 2001:db8::/64"
            ]
        );
        assert_eq!(
            parse_ipv6_list("2001:db8::1/64").unwrap()[0].to_string(),
            "2001:db8::/64"
        );
        for (v4, why) in [
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("239.1.0.0/16", "multicast"),
            ("255.255.255.255", "broadcast"),
        ] {
            let e = parse_ipv4_list(&format!("10.0.0.1,{v4}")).unwrap_err();
            assert!(
                e.to_string().contains(&format!("'{v4}'")) && e.to_string().contains(why),
                "{e}"
            );
        }
        for v6 in ["::", "ff02::1", "ff00::/8"] {
            let e = parse_ipv6_list(v6).unwrap_err();
            assert!(e.to_string().contains(&format!("'{v6}'")), "{e}");
        }
        let e = parse_ipv4_list("10.0.0.1,2001:db8::1").unwrap_err();
        assert!(e.to_string().contains("'2001:db8::1'"), "{e}");
        let e = parse_ipv6_list("fe80::1,banana").unwrap_err();
        assert!(e.to_string().contains("'banana'"), "{e}");
        assert!(parse_ipv4_list("10.0.0.0/33").is_err());
        assert!(parse_ipv6_list("10.0.0.1").is_err());
    }

    #[test]
    fn too_many_entries_refused() {
        let many: Vec<String> = (0..=MAX_ALLOWED_PER_VIF as u32)
            .map(|i| Ipv4Addr::from(0x0a00_0000 + i).to_string())
            .collect();
        let e = parse_ipv4_list(&many.join(",")).unwrap_err();
        assert!(matches!(e, ListError::TooMany { .. }));
    }

    #[test]
    fn mac_and_link_local() {
        let mac = parse_mac("52:54:00:12:34:56").unwrap();
        assert_eq!(format_mac(mac), "52:54:00:12:34:56");
        assert_eq!(
            link_local(mac),
            Ipv6Addr::from_str("fe80::5054:ff:fe12:3456").unwrap()
        );
        assert!(parse_mac("52:54:00:12:34").is_err());
        assert!(parse_mac("52:54:00:12:34:56:78").is_err());
        assert!(parse_mac("zz:54:00:12:34:56").is_err());
        for m in [
            "00:00:00:00:00:00",
            "ff:ff:ff:ff:ff:ff",
            "01:00:5e:00:00:01",
            "33:33:00:00:00:01",
        ] {
            let e = parse_mac(m).unwrap_err();
            assert!(e.to_string().contains("unicast and non-zero"), "{e}");
        }
        assert_eq!(
            solicited_node(Ipv6Addr::from_str("2001:db8::12:3456").unwrap()),
            Ipv6Addr::from_str("ff02::1:ff12:3456").unwrap()
        );
    }

    #[test]
    fn modes_resolve() {
        assert_eq!(
            LockingMode::NetworkDefault.effective(DefaultLockingMode::Disabled),
            EffectiveMode::Disabled
        );
        assert_eq!(
            LockingMode::Locked.effective(DefaultLockingMode::Disabled),
            EffectiveMode::Locked
        );
        assert!("bogus".parse::<LockingMode>().is_err());
    }
}
