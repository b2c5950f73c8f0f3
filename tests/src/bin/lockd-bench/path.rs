//! The paths the bench compares: lockd at each hook, each peer, and each one's floor.

/// The paths compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Floor,
    LockdNative,
    LockdGeneric,
    NftNetdev,
    NftBridge,
    Ebtables {
        nf_call: bool,
    },
    /// xdp-filter (xdp-tools), native XDP, default deny with the guest's IPv4 source allowed.
    XdpFilter,
    /// Each peer's own floor: the same tool at the same hook with one rule dropping every
    /// frame.
    NftNetdevFloor,
    NftBridgeFloor,
    EbtablesFloor {
        nf_call: bool,
    },
    XdpFilterFloor,
    /// The skb path's floors: a drop program at generic XDP, and at TC ingress.
    FloorGeneric,
    FloorTc,
    /// lockd with the from-VM checks at TC ingress (what `--xdp-mode auto` picks without
    /// native XDP).
    LockdTc,
    /// The same two at TC ingress through a TCX link (`--tc-mode tcx`) instead of a
    /// `cls_bpf` filter on clsact.
    FloorTcx,
    LockdTcx,
    /// lockd at TC ingress (`cls_bpf`) with the empty TC program in a filter before it: both run
    /// on every frame, so their run statistics compare them on the same frames.
    LockdTcBeside,
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Path::Floor => "empty XDP drop (floor)",
            Path::LockdNative => "lockd, native XDP",
            Path::LockdGeneric => "lockd, generic XDP",
            Path::NftNetdev => "nftables netdev ingress",
            Path::NftBridge => "nftables bridge family",
            Path::Ebtables { nf_call: false } => "ebtables, bridge-nf-call 0",
            Path::Ebtables { nf_call: true } => "ebtables, bridge-nf-call 1",
            Path::XdpFilter => "xdp-filter (xdp-tools), native XDP",
            Path::NftNetdevFloor => "nftables netdev ingress, one-rule drop",
            Path::NftBridgeFloor => "nftables bridge family, one-rule drop",
            Path::EbtablesFloor { nf_call: false } => "ebtables, bridge-nf-call 0, one-rule drop",
            Path::EbtablesFloor { nf_call: true } => "ebtables, bridge-nf-call 1, one-rule drop",
            Path::XdpFilterFloor => "xdp-filter (xdp-tools), native XDP, one-rule drop",
            Path::FloorGeneric => "empty generic XDP drop",
            Path::FloorTc => "empty TC ingress drop",
            Path::LockdTc => "lockd, TC ingress",
            Path::FloorTcx => "empty TC ingress drop, TCX link",
            Path::LockdTcx => "lockd, TC ingress, TCX link",
            Path::LockdTcBeside => "lockd, TC ingress, after an empty TC program",
        }
    }

    pub fn key(self) -> &'static str {
        match self {
            Path::Floor => "floor",
            Path::LockdNative => "lockd_native",
            Path::LockdGeneric => "lockd_generic",
            Path::NftNetdev => "nft_netdev",
            Path::NftBridge => "nft_bridge",
            Path::Ebtables { nf_call: false } => "ebtables",
            Path::Ebtables { nf_call: true } => "ebtables_nf_call",
            Path::XdpFilter => "xdp_filter",
            Path::NftNetdevFloor => "nft_netdev_floor",
            Path::NftBridgeFloor => "nft_bridge_floor",
            Path::EbtablesFloor { nf_call: false } => "ebtables_floor",
            Path::EbtablesFloor { nf_call: true } => "ebtables_nf_call_floor",
            Path::XdpFilterFloor => "xdp_filter_floor",
            Path::FloorGeneric => "floor_generic",
            Path::FloorTc => "floor_tc",
            Path::LockdTc => "lockd_tc",
            Path::FloorTcx => "floor_tcx",
            Path::LockdTcx => "lockd_tcx",
            Path::LockdTcBeside => "lockd_tc_beside_empty",
        }
    }

    /// The throughput section's paths, each peer after its own floor.
    pub const ALL: [Path; 13] = [
        Path::Floor,
        Path::LockdNative,
        Path::LockdGeneric,
        Path::NftNetdevFloor,
        Path::NftNetdev,
        Path::NftBridgeFloor,
        Path::NftBridge,
        Path::EbtablesFloor { nf_call: false },
        Path::Ebtables { nf_call: false },
        Path::EbtablesFloor { nf_call: true },
        Path::Ebtables { nf_call: true },
        Path::XdpFilterFloor,
        Path::XdpFilter,
    ];

    /// The peer's own floor (None for lockd's paths and the floors themselves).
    pub fn own_floor(self) -> Option<Path> {
        match self {
            Path::NftNetdev => Some(Path::NftNetdevFloor),
            Path::NftBridge => Some(Path::NftBridgeFloor),
            Path::Ebtables { nf_call } => Some(Path::EbtablesFloor { nf_call }),
            Path::XdpFilter => Some(Path::XdpFilterFloor),
            _ => None,
        }
    }

    /// Whether the path runs on a Linux bridge.
    pub fn bridged(self) -> bool {
        matches!(
            self,
            Path::NftBridge
                | Path::NftBridgeFloor
                | Path::Ebtables { .. }
                | Path::EbtablesFloor { .. }
        )
    }
}

