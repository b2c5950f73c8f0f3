//! `vif_egress`: frames the host sends to the VM (TC egress on the VIF netdev, TCX where the
//! kernel has it). Same maps, counters and reasons as the from-VM side; the order of checks is
//! `lockd_common::model::verdict_to_vm`.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use lockd_common::{Direction, MODE_DISABLED, MODE_UNLOCKED, Reason, VifConfig, proto::*};

use crate::{
    lookup::{allowed4, allowed6},
    maps::{config, count},
    monitor::report,
};

/// Pass hands the frame on (`TC_ACT_UNSPEC` is `TCX_NEXT`: later programs still run); a drop
/// is final.
#[classifier]
pub fn vif_egress(ctx: TcContext) -> i32 {
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(cfg) = config(ifindex) else {
        return TC_ACT_UNSPEC;
    };
    let reason = match cfg.mode {
        MODE_UNLOCKED => Reason::Pass,
        MODE_DISABLED => Reason::Disabled,
        _ => match locked(&ctx, cfg, ifindex) {
            Ok(()) => Reason::Pass,
            Err(r) => r,
        },
    };
    count(cfg.counter, Direction::ToVm, reason, u64::from(ctx.len()));
    if matches!(reason, Reason::Pass) {
        TC_ACT_UNSPEC
    } else {
        report(&ctx, cfg.counter, ifindex, Direction::ToVm, reason);
        TC_ACT_SHOT
    }
}

/// `bpf_skb_load_bytes`: works on non-linear skbs too.
#[inline(always)]
fn load<const N: usize>(ctx: &TcContext, off: usize) -> Result<[u8; N], Reason> {
    ctx.load::<[u8; N]>(off).map_err(|_| Reason::Malformed)
}

#[inline(always)]
fn locked(ctx: &TcContext, cfg: &VifConfig, ifindex: u32) -> Result<(), Reason> {
    let eth = load::<14>(ctx, 0)?;
    if eth[0] & 1 != 0 {
        return Ok(()); // broadcast or multicast
    }
    if eth[0] != cfg.mac[0]
        || eth[1] != cfg.mac[1]
        || eth[2] != cfg.mac[2]
        || eth[3] != cfg.mac[3]
        || eth[4] != cfg.mac[4]
        || eth[5] != cfg.mac[5]
    {
        return Err(Reason::RxForeignMac);
    }
    match u16::from_be_bytes([eth[12], eth[13]]) {
        ETH_P_IP => {
            let h = load::<20>(ctx, ETH_HLEN)?;
            let d = [h[16], h[17], h[18], h[19]];
            let multicast = d[0] & 0xf0 == 0xe0;
            let broadcast = d == [0xff; 4];
            if multicast || broadcast || allowed4(cfg, ifindex, d) {
                Ok(())
            } else {
                Err(Reason::RxForeignIp)
            }
        }
        ETH_P_IPV6 => {
            let h = load::<8>(ctx, ETH_HLEN)?;
            let d = load::<16>(ctx, ETH_HLEN + 24)?;
            let ndp = h[6] == IPPROTO_ICMPV6 && load::<1>(ctx, ETH_HLEN + 40).is_ok_and(|t| is_ndp(t[0]));
            if ndp || d[0] == 0xff || allowed6(cfg, ifindex, d) {
                Ok(())
            } else {
                Err(Reason::RxForeignIp)
            }
        }
        _ => Ok(()),
    }
}
