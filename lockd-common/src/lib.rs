//! Types shared by the lockd eBPF programs and userspace.
//!
//! Everything that crosses the kernel/user boundary is `#[repr(C)]`, `Copy`, made of fixed-width
//! integers and arrays, with padding spelled out as named fields. The policy reference model and
//! the list parsers live behind the `user` feature, which adds `std`.
#![cfg_attr(not(feature = "user"), no_std)]

#[cfg(feature = "user")]
pub mod model;
#[cfg(feature = "user")]
pub mod policy;
pub mod proto;
#[cfg(feature = "user")]
pub mod settings;

/// Name of the from-VM XDP program in the object file.
pub const PROG_VIF_INGRESS: &str = "vif_ingress";
/// Name of the to-VM TC egress program in the object file.
pub const PROG_VIF_EGRESS: &str = "vif_egress";
/// Name of the from-VM TC ingress program in the object file: on every VIF it drops frames
/// whose VLAN tag the kernel carries beside the bytes and hands a rate-limited VIF's frames to
/// its shaper; on a VIF judged at TC ([`FLAG_TC_CHECKS`]) it makes every from-VM check.
pub const PROG_VIF_INGRESS_TC: &str = "vif_ingress_tc";
/// Map: ifindex (u32) → [`VifConfig`]. Every VIF's config, the one the programs read for a
/// VIF whose [`MAP_VIF_SLOTS`] position another VIF holds, and the record a restarted daemon
/// adopts.
pub const MAP_VIF_CONFIG: &str = "VIF_CONFIG";
/// Array (`BPF_F_MMAPABLE`) of u64, [`POSITIONS`] long, indexed by `ifindex % POSITIONS`:
/// `ifindex << 32 | copy`, naming the [`MAP_CONFIGS`] element in force for that VIF, or 0.
/// Userspace stores it through a shared mapping with one atomic 8-byte store.
pub const MAP_VIF_SLOTS: &str = "VIF_SLOTS";
/// Array of [`VifConfig`], [`CONFIG_COPIES`] long: configs the programs reach through
/// [`MAP_VIF_SLOTS`] with two array lookups (which the verifier inlines) instead of a hash
/// lookup. A copy is written only while no slot names it and no packet can still hold it.
pub const MAP_CONFIGS: &str = "CONFIGS";
/// Array (`BPF_F_MMAPABLE`) of [`Slot4`], [`TABLE_SLOTS`] long: per VIF and generation, a
/// region (a power-of-two run of slots) holding an open-addressing table of the exact IPv4
/// addresses that do not fit inline; see [`table_home4`].
pub const MAP_TABLE4: &str = "TABLE4";
/// Array (`BPF_F_MMAPABLE`) of [`Slot6`]: the same for IPv6.
pub const MAP_TABLE6: &str = "TABLE6";
/// LPM trie: [`Lpm4Data`] → u8, IPv4 prefixes shorter than /32.
pub const MAP_PREFIX4: &str = "PREFIX4";
/// LPM trie: [`Lpm6Data`] → u8, IPv6 prefixes shorter than /128.
pub const MAP_PREFIX6: &str = "PREFIX6";
/// Per-CPU array of [`Counter`], indexed by [`counter_index`].
pub const MAP_COUNTERS: &str = "COUNTERS_V2";

/// Default `timeslice_us` of the rate limit (burst = rate × timeslice).
pub const DEFAULT_TIMESLICE_US: u64 = 50_000;

/// Most VIFs one host enforces at once (counters are allocated per VIF).
pub const MAX_VIFS: u32 = 4096;
/// Positions of [`MAP_VIF_SLOTS`] (a power of two).
pub const POSITIONS: u32 = 8192;
/// Elements of [`MAP_CONFIGS`]: one in force per VIF, the rest free or waiting out a grace
/// period after being replaced.
pub const CONFIG_COPIES: u32 = 4 * MAX_VIFS;
/// The [`MAP_VIF_SLOTS`] position of `ifindex`.
pub const fn position(ifindex: u32) -> u32 {
    ifindex & (POSITIONS - 1)
}
/// Most allowed entries (both families together) on one VIF.
pub const MAX_ALLOWED_PER_VIF: usize = 65_536;
/// Slots of each address table array: room for every VIF's tables at a load of at most one
/// half, twice over (old and new generation coexist during an update).
pub const TABLE_SLOTS: u32 = 1 << 19;
/// Slots a lookup probes from an address's home slot; a table is built so that every entry
/// lies within this many of its home (else it is built bigger).
pub const MAX_PROBES: u32 = 64;
/// Capacity of the prefix tries.
pub const MAX_PREFIX_ENTRIES: u32 = 65_536;
/// Counter slots reserved per reason and direction (a power of two, ≥ [`Reason::COUNT`]).
pub const REASON_SLOTS: u32 = 32;
/// Directions.
pub const DIRECTIONS: u32 = 2;
/// The from-VM counter slot (past every reason) of frames handed to the VIF's shaper.
pub const SLOT_SHAPED: u32 = REASON_SLOTS - 1;

/// Most IPv6 extension headers walked before a frame is `malformed`.
pub const MAX_EXT_HEADERS: usize = 8;
/// Most NDP options walked before a frame is `malformed`.
pub const MAX_ND_OPTIONS: usize = 8;

/// Effective locking modes as stored in [`VifConfig::mode`] (`network_default` is resolved in
/// userspace before it reaches the kernel).
pub const MODE_UNLOCKED: u32 = 0;
pub const MODE_DISABLED: u32 = 1;
pub const MODE_LOCKED: u32 = 2;

/// [`VifConfig::flags`]: ipv4-allowed is non-empty.
pub const FLAG_HAS_A4: u32 = 1;
/// [`VifConfig::flags`]: S6 is non-empty (ipv6-allowed non-empty; S6 then also holds LL).
pub const FLAG_HAS_S6: u32 = 2;
/// [`VifConfig::flags`]: IPv4 prefixes shorter than /32 are in the trie (it must be asked).
pub const FLAG_PREFIX4: u32 = 4;
/// [`VifConfig::flags`]: IPv6 prefixes shorter than /128 are in the trie.
pub const FLAG_PREFIX6: u32 = 8;
/// [`VifConfig::flags`]: the exact IPv4 set is `inline4[..n4]` (else the table region
/// `t4_base ..= t4_base + t4_mask` of [`MAP_TABLE4`]).
pub const FLAG_INLINE4: u32 = 16;
/// [`VifConfig::flags`]: the exact IPv6 set is `inline6[..n6]` (else its [`MAP_TABLE6`] region).
pub const FLAG_INLINE6: u32 = 32;
/// [`VifConfig::flags`]: the IPv4 prefixes are `pfx4[..np4]` (not in the trie).
pub const FLAG_INLINE_P4: u32 = 64;
/// [`VifConfig::flags`]: the IPv6 prefixes are `pfx6[..np6]` (not in the trie).
pub const FLAG_INLINE_P6: u32 = 128;
/// [`VifConfig::flags`]: the VIF has no XDP program (its netdev has no native XDP and the TC
/// hook is the cheaper skb hook); the TC ingress program makes every from-VM check. Set by
/// the dataplane for the attachment, not by the policy.
pub const FLAG_TC_CHECKS: u32 = 256;
/// [`VifConfig::flags`]: a passing frame of this shaped VIF goes on to the hand-off filter
/// after the TC ingress program (a u32 filter matching every frame, with a mirred redirect to
/// the shaper), not to
/// `bpf_redirect`, which an ifb takes only from Linux 6.4. Set by the dataplane.
pub const FLAG_SHAPE_BY_FILTER: u32 = 512;

/// Declares [`Reason`] once: each variant's discriminant (which indexes the kernel counters),
/// its stable name (CLI, JSON, metrics) and its description (rustdoc, `lockd --help`, the
/// README's table) come from one line here.
macro_rules! reasons {
    ($($(#[doc = $doc:literal])+ $variant:ident = $value:literal => $name:literal,)+) => {
        /// Why a frame was passed or dropped. The discriminant indexes the kernel counters and
        /// the names returned by [`Reason::name`] are stable API; add new reasons at the end.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "user", derive(serde::Serialize))]
        #[cfg_attr(feature = "user", serde(rename_all = "snake_case"))]
        #[repr(u32)]
        pub enum Reason {
            $($(#[doc = $doc])+ $variant = $value,)+
        }

        impl Reason {
            /// Every reason, in discriminant order.
            pub const ALL: [Reason; Reason::COUNT] = [$(Reason::$variant,)+];
            pub const COUNT: usize = [$(Reason::$variant,)+].len();

            /// The stable name printed by the CLI and used in JSON.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Reason::$variant => $name,)+
                }
            }

            /// One line saying what the reason means (its doc comment).
            pub const fn description(self) -> &'static str {
                match self {
                    $(Reason::$variant => concat!($($doc),+).trim_ascii(),)+
                }
            }
        }
    };
}

reasons! {
    /// The frame passed every check.
    Pass = 0 => "pass",
    /// The VIF's locking mode is disabled: every frame is dropped.
    Disabled = 1 => "disabled",
    /// From the VM, the source MAC is not the VIF's MAC.
    MacSpoof = 2 => "mac_spoof",
    /// A locked VIF sent an EtherType other than ARP, IPv4 or IPv6.
    BadEthertype = 3 => "bad_ethertype",
    /// A header is truncated, inconsistent or too long to parse.
    Malformed = 4 => "malformed",
    /// An ARP sender MAC or IPv4 address is not the VIF's.
    ArpSpoof = 5 => "arp_spoof",
    /// An IPv4 source address is not in ipv4-allowed.
    Ipv4Spoof = 6 => "ipv4_spoof",
    /// The VM acted as a DHCP server or relay (UDP from port 67 or to port 68; DHCPv6 from 547 or to 546).
    DhcpServer = 7 => "dhcp_server",
    /// An IPv6 source address is not in ipv6-allowed or the VIF's link-local address.
    Ipv6Spoof = 8 => "ipv6_spoof",
    /// A neighbour solicitation or advertisement claims an address or MAC that is not the VIF's.
    NdSpoof = 9 => "nd_spoof",
    /// The VM sent a router-side ICMPv6 message (router advertisement, redirect, renumbering and kin).
    NdRouter = 10 => "nd_router",
    /// An NDP message arrived fragmented.
    NdFragment = 11 => "nd_fragment",
    /// To the VM, the destination MAC is neither the VIF's nor broadcast or multicast.
    RxForeignMac = 12 => "rx_foreign_mac",
    /// To the VM, the destination IP address is not one the VIF may receive.
    RxForeignIp = 13 => "rx_foreign_ip",
    /// The VIF is over its rate limit and its shaper's bounded backlog is full.
    Ratelimit = 14 => "ratelimit",
    /// A DHCP client message that is not a BOOTREQUEST for the guest's own MAC.
    DhcpSpoof = 15 => "dhcp_spoof",
    /// The VM sent an IGMP or MLD membership query (it would win the querier election).
    McQuerier = 16 => "mc_querier",
}

/// Counter slots per reason and direction must cover every reason.
const _: () = assert!(REASON_SLOTS as usize >= Reason::COUNT);
// The shaped count has a slot no reason uses.
const _: () = assert!(SLOT_SHAPED as usize >= Reason::COUNT);

/// Traffic direction, as seen from the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Direction {
    /// Frames the VM transmits (received on the VIF netdev, XDP).
    FromVm = 0,
    /// Frames the host transmits to the VM (TC egress on the VIF netdev).
    ToVm = 1,
}

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Direction::FromVm => "from_vm",
            Direction::ToVm => "to_vm",
        }
    }
}

/// Index into [`MAP_COUNTERS`] for a VIF's counter index, a direction and a reason.
#[inline(always)]
pub const fn counter_index(counter: u32, dir: u32, reason: u32) -> u32 {
    (counter * DIRECTIONS + dir) * REASON_SLOTS + reason
}

/// Per-VIF policy header. Never written where a packet can read it: an update writes a free
/// [`MAP_CONFIGS`] copy and swaps the slot to it, or swaps a new `BPF_F_NO_PREALLOC` hash
/// element in under RCU; either way a reader sees the old or the new one whole.
/// `generation` names which trie entries belong to this policy (table regions are named by
/// `t4_base`/`t6_base`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VifConfig {
    /// One of `MODE_*`.
    pub mode: u32,
    /// Generation of the address entries this policy uses.
    pub generation: u32,
    /// Index of this VIF's counters and rate state (`0..MAX_VIFS`).
    pub counter: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// The guest MAC.
    pub mac: [u8; 6],
    /// Entries of `inline4` in use (with `FLAG_INLINE4`).
    pub n4: u8,
    /// Entries of `inline6` in use (with `FLAG_INLINE6`).
    pub n6: u8,
    /// Rate limit from the VM: the ifindex of the VIF's shaper (an ifb device whose tbf
    /// qdisc holds the rate), where frames that pass the policy are redirected; 0 = no limit.
    pub shaper: u32,
    pub _rsv0: u32,
    pub _rsv1: u64,
    /// A small exact IPv4 set kept in the config itself, saving a hash lookup per packet.
    pub inline4: [[u8; 4]; INLINE4],
    /// A small exact IPv6 set (S6's addresses, link-local included) kept likewise.
    pub inline6: [[u8; 16]; INLINE6],
    /// Entries of `pfx4` in use (with `FLAG_INLINE_P4`).
    pub np4: u8,
    /// Entries of `pfx6` in use (with `FLAG_INLINE_P6`).
    pub np6: u8,
    pub _pad: [u8; 6],
    /// A few IPv4 prefixes kept in the config, matched with a mask instead of a trie lookup.
    pub pfx4: [Prefix4; INLINE_P4],
    /// A few IPv6 prefixes kept likewise.
    pub pfx6: [Prefix6; INLINE_P6],
    /// First slot of the IPv4 table region (without `FLAG_INLINE4`).
    pub t4_base: u32,
    /// Region size − 1 (a power of two − 1).
    pub t4_mask: u32,
    /// First slot of the IPv6 table region (without `FLAG_INLINE6`).
    pub t6_base: u32,
    pub t6_mask: u32,
}

/// An IPv4 prefix as a network and a mask, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix4 {
    pub net: [u8; 4],
    pub mask: [u8; 4],
}

/// An IPv6 prefix as a network and a mask, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prefix6 {
    pub net: [u8; 16],
    pub mask: [u8; 16],
}

/// IPv4 prefixes a config holds inline; more go to the `PREFIX4` trie.
pub const INLINE_P4: usize = 4;
/// IPv6 prefixes a config holds inline; more go to the `PREFIX6` trie.
pub const INLINE_P6: usize = 2;

/// Exact IPv4 addresses a config holds inline; more go to a table region.
pub const INLINE4: usize = 4;
/// Exact IPv6 addresses a config holds inline; more go to a table region.
pub const INLINE6: usize = 4;

/// One slot of [`MAP_TABLE4`]; `used` 0 marks an empty slot (it ends a probe).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot4 {
    pub addr: [u8; 4],
    pub used: u32,
}

/// One slot of [`MAP_TABLE6`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot6 {
    pub addr: [u8; 16],
    pub used: u32,
    pub _pad: u32,
}

/// The murmur3 finaliser: every input bit moves every output bit.
#[inline(always)]
const fn mix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Home slot (before masking) of an IPv4 address in a table, from its bytes in network order.
#[inline(always)]
pub const fn table_home4(addr: [u8; 4]) -> u32 {
    mix32(u32::from_le_bytes(addr))
}

/// Home slot (before masking) of an IPv6 address.
#[inline(always)]
pub const fn table_home6(addr: [u8; 16]) -> u32 {
    let a = addr;
    let w0 = u32::from_le_bytes([a[0], a[1], a[2], a[3]]);
    let w1 = u32::from_le_bytes([a[4], a[5], a[6], a[7]]);
    let w2 = u32::from_le_bytes([a[8], a[9], a[10], a[11]]);
    let w3 = u32::from_le_bytes([a[12], a[13], a[14], a[15]]);
    mix32(w0 ^ mix32(w1 ^ mix32(w2 ^ mix32(w3))))
}

/// Data part of an IPv4 LPM key. The trie matches bytes most significant bit first, so
/// ifindex and generation are stored big-endian and always covered by the prefix length
/// (`64 + prefix`), which makes them exact.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lpm4Data {
    pub ifindex_be: [u8; 4],
    pub generation_be: [u8; 4],
    pub addr: [u8; 4],
}

/// Data part of an IPv6 LPM key (see [`Lpm4Data`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lpm6Data {
    pub ifindex_be: [u8; 4],
    pub generation_be: [u8; 4],
    pub addr: [u8; 16],
}

/// Bits of an LPM key taken by ifindex and generation.
pub const LPM_HEADER_BITS: u32 = 64;

/// The monitor's switch and cap (one element): while `enabled` is 0 the programs write no
/// event; otherwise each VIF writes at most `cap` events a second and counts the rest.
pub const MAP_MONITOR: &str = "MONITOR";
/// Per VIF (by counter index): this second's events and the drops over the cap.
pub const MAP_MONITOR_BUDGET: &str = "MONITOR_BUDGET";
/// The ring buffer of [`DropEvent`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// Bytes of the ring buffer: about 1700 events, a second of the default cap on 17 VIFs.
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Bytes of a dropped frame an event carries (enough for every header the checks read but
/// NDP options and BOOTP past the fixed part).
pub const EVENT_FRAME_BYTES: usize = 128;
/// The default per-VIF cap, events a second.
pub const DEFAULT_MONITOR_CAP: u32 = 100;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorCtl {
    pub enabled: u32,
    pub cap: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MonitorBudget {
    /// The second (of `bpf_ktime_get_ns`) `emitted` counts in.
    pub second: u64,
    pub emitted: u64,
    /// Drops over the cap (or with the ring full) since the VIF got its counters; never reset.
    pub suppressed: u64,
}

/// One dropped frame, as the programs write it to [`MAP_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC).
    pub time_ns: u64,
    pub ifindex: u32,
    /// The frame's length on the wire.
    pub len: u32,
    /// Bytes of `frame` that hold the frame (≤ [`EVENT_FRAME_BYTES`]).
    pub caplen: u16,
    /// `Reason as u8`.
    pub reason: u8,
    /// `Direction as u8`.
    pub direction: u8,
    pub _pad: u32,
    pub frame: [u8; EVENT_FRAME_BYTES],
}

/// One packet/byte counter (per CPU in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)], Copy, integer/array fields with no implicit padding.
    unsafe impl aya::Pod for super::VifConfig {}
    unsafe impl aya::Pod for super::MonitorCtl {}
    unsafe impl aya::Pod for super::MonitorBudget {}
    unsafe impl aya::Pod for super::Slot4 {}
    unsafe impl aya::Pod for super::Slot6 {}
    unsafe impl aya::Pod for super::Lpm4Data {}
    unsafe impl aya::Pod for super::Lpm6Data {}
    unsafe impl aya::Pod for super::Counter {}
}

/// The kernel and userspace agree on these layouts; a field added without its padding, or
/// moved, fails the build here rather than corrupting a map.
const _: () = {
    assert!(core::mem::size_of::<VifConfig>() == 240);
    assert!(core::mem::size_of::<VifConfig>().is_multiple_of(8));
    assert!(core::mem::size_of::<Prefix4>() == 8);
    assert!(core::mem::size_of::<Prefix6>() == 32);
    assert!(core::mem::size_of::<Slot4>() == 8);
    assert!(core::mem::size_of::<Slot6>() == 24);
    assert!(core::mem::size_of::<Lpm4Data>() == 12);
    assert!(core::mem::size_of::<Lpm6Data>() == 24);
    assert!(core::mem::size_of::<Counter>() == 16);
    assert!(core::mem::size_of::<DropEvent>() == 24 + EVENT_FRAME_BYTES);
    assert!(core::mem::size_of::<MonitorBudget>() == 24);
    assert!(EVENT_FRAME_BYTES.is_power_of_two());
    assert!(POSITIONS.is_power_of_two() && REASON_SLOTS.is_power_of_two());
};
