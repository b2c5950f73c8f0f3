//! `vif_ingress_tc`: TC ingress on every VIF, right after XDP on the same CPU (or alone, where
//! the VIF is judged at TC).
//!
//! - On a VIF judged by XDP it does the half of rule 2 that XDP cannot see: a VLAN tag the
//!   sender's kernel put beside the frame (a hardware-accelerated tag, as veth keeps it) is not
//!   in the bytes XDP reads, so XDP judged the frame as untagged. Such a frame from a locked VIF
//!   is dropped here as `bad_ethertype`, moving it out of the `pass` count XDP gave it, so every
//!   frame still counts under exactly one reason.
//! - On a VIF judged at TC (`FLAG_TC_CHECKS`: no native XDP, and this hook costs less than
//!   generic XDP) it makes every from-VM check itself, in the same code as XDP (`from_vm`),
//!   after pulling into the skb's head the bytes those checks read (`frame::pull`).
//! - A passing frame of a rate-limited VIF is redirected to the VIF's shaper, an ifb device
//!   whose tbf qdisc holds the frame until the rate allows it and drops only when its bounded
//!   backlog is full. The ifb then hands the frame back to the VIF's receive path, past TC (and
//!   past generic XDP, which skips redirected frames), to the bridge. Before Linux 6.4 an ifb
//!   drops what `bpf_redirect` gives it, so there (`FLAG_SHAPE_BY_FILTER`) the frame goes on
//!   to a u32 filter with a mirred redirect after this one, which hands it over.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    helpers::bpf_redirect,
    macros::classifier,
    programs::TcContext,
};
use lockd_common::{
    Direction, FLAG_SHAPE_BY_FILTER, FLAG_TC_CHECKS, MODE_UNLOCKED, Reason, SLOT_SHAPED, VifConfig,
};

use crate::{
    frame::{Frame, pull},
    from_vm::judge,
    maps::{config, count, count_slot, recount},
    monitor::report,
};

#[classifier]
pub fn vif_ingress_tc(ctx: TcContext) -> i32 {
    // SAFETY: reading a field of the program's own context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let Some(cfg) = config(ifindex) else {
        return TC_ACT_UNSPEC;
    };
    let len = ctx.frame_len() as u64;
    if cfg.flags & FLAG_TC_CHECKS != 0 {
        let reason = match pull(&ctx) {
            Ok(()) => judge(&ctx, cfg, ifindex),
            Err(r) => r,
        };
        count(cfg.counter, Direction::FromVm, reason, len);
        if !matches!(reason, Reason::Pass) {
            report(&ctx, cfg.counter, ifindex, Direction::FromVm, reason);
            return TC_ACT_SHOT;
        }
    } else if ctx.tagged_beside() && cfg.mode != MODE_UNLOCKED {
        recount(
            cfg.counter,
            Direction::FromVm,
            Reason::Pass,
            Reason::BadEthertype,
            len,
        );
        report(
            &ctx,
            cfg.counter,
            ifindex,
            Direction::FromVm,
            Reason::BadEthertype,
        );
        return TC_ACT_SHOT;
    }
    shape(cfg, len)
}

/// Hands a passing frame to the VIF's shaper, if it has one: itself, or (before Linux 6.4,
/// whose ifb drops what `bpf_redirect` gives it) by letting it go on to the hand-off filter.
#[inline(always)]
fn shape(cfg: &VifConfig, len: u64) -> i32 {
    if cfg.shaper == 0 {
        return TC_ACT_UNSPEC;
    }
    count_slot(cfg.counter, Direction::FromVm, SLOT_SHAPED, len);
    if cfg.flags & FLAG_SHAPE_BY_FILTER != 0 {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: helper without memory arguments.
    unsafe { bpf_redirect(cfg.shaper, 0) as i32 }
}
