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
// The BPF programs have no std and no main; on the host, where only `cargo clippy` builds this
// crate, it is an ordinary (empty) program so that it type-checks.
#![cfg_attr(target_arch = "bpf", no_std)]
// BPF_XADD: the BPF target has no atomic read-modify-write methods. (On the host, where only
// `cargo clippy` ever builds this crate, `monitor::add` uses the atomic type instead.)
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]
// One BPF load instruction per packet word (`frame::word`).
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]
#![cfg_attr(target_arch = "bpf", no_main)]

mod frame;
mod from_vm;
mod ingress_tc;
mod lookup;
mod maps;
mod monitor;
mod to_vm;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
