//! `vif_tagged`: the half of rule 2 that XDP cannot see. A VLAN tag the sender's kernel put
//! beside the frame (a hardware-accelerated tag, as veth keeps it) is not in the bytes XDP
//! reads, so the from-VM program judged the frame as untagged. This TC ingress program runs
//! right after it on the same VIF and CPU, sees `skb->vlan_present`, and drops such a frame
//! from a locked VIF as `bad_ethertype` — moving it out of the `pass` count XDP gave it, so
//! every frame still counts under exactly one reason.

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::classifier,
    programs::TcContext,
};
use lockd_common::{Direction, MODE_UNLOCKED, Reason};

use crate::maps::{config, recount};

#[classifier]
pub fn vif_tagged(ctx: TcContext) -> i32 {
    // SAFETY: reading fields of the program's own context.
    let (ifindex, tagged) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).vlan_present) };
    if tagged == 0 {
        return TC_ACT_UNSPEC;
    }
    let Some(cfg) = config(ifindex) else {
        return TC_ACT_UNSPEC;
    };
    if cfg.mode == MODE_UNLOCKED {
        return TC_ACT_UNSPEC;
    }
    recount(
        cfg.counter,
        Direction::FromVm,
        Reason::Pass,
        Reason::BadEthertype,
        u64::from(ctx.len()),
    );
    TC_ACT_SHOT as i32
}
