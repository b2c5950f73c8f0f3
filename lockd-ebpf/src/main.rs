//! lockd's kernel programs.
//!
//! - `from_vm`: `vif_ingress`, XDP on the VIF netdev, judges frames the VM transmits;
//! - `to_vm`: `vif_egress`, TC egress on the VIF netdev, judges frames sent to the VM;
//! - `tagged`: `vif_tagged`, TC ingress on the VIF netdev, drops frames from a locked VIF
//!   whose VLAN tag the kernel carries beside the bytes (which XDP cannot see);
//! - `rate`: the from-VM rate limiter;
//! - `lookup`: address-set membership (inline sets, table regions, tries);
//! - `maps`: every map, the config in force for a VIF, its counters.
//!
//! Both directions check in the same order as `lockd_common::model`, which the differential
//! tests hold them to, frame by frame; protocol numbers come from `lockd_common::proto`.
#![no_std]
#![no_main]
// The rate limiter's compare-and-swap (see rate.rs).
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics for BPF_CMPXCHG")]

mod from_vm;
mod lookup;
mod maps;
mod rate;
mod tagged;
mod to_vm;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
