//! lockd's kernel programs.
//!
//! - `from_vm`: `vif_ingress`, XDP on the VIF netdev, judges frames the VM transmits;
//! - `to_vm`: `vif_egress`, TC egress on the VIF netdev, judges frames sent to the VM;
//! - `ingress_tc`: `vif_ingress_tc`, TC ingress on the VIF netdev: tags carried beside the
//!   bytes (which XDP cannot see), every from-VM check where the VIF is judged at TC, and the
//!   hand-off of a rate-limited VIF's frames to its shaper;
//! - `frame`: the frame as the checks read it at either hook;
//! - `lookup`: address-set membership (inline sets, table regions, tries);
//! - `maps`: every map, the config in force for a VIF, its counters;
//! - `monitor`: events for `lockd monitor`, one per dropped frame while a monitor listens.
//!
//! Both directions check in the same order as `lockd_common::model`, which the differential
//! tests hold them to, frame by frame; protocol numbers come from `lockd_common::proto`.
#![no_std]
// BPF_XADD: the BPF target has no atomic read-modify-write methods.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod frame;
mod from_vm;
mod ingress_tc;
mod lookup;
mod maps;
mod monitor;
mod to_vm;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
