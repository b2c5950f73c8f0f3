//! The test kit's helper programs: a separate object that the benchmark and tests load and the
//! daemon never does.
// The BPF programs have no std and no main; on the host, where only `cargo clippy` builds this
// crate, it is an ordinary (empty) program so that it type-checks.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

use aya_ebpf::{
    bindings::{
        TC_ACT_SHOT, TC_ACT_UNSPEC,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    macros::{classifier, map, xdp},
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};

/// The floor for benchmarks: an XDP program that does nothing.
#[xdp]
pub fn xdp_empty(_ctx: XdpContext) -> u32 {
    XDP_PASS
}

/// The floor at the TC hook: a TC program that does nothing.
#[classifier]
pub fn tc_empty(_ctx: TcContext) -> i32 {
    TC_ACT_UNSPEC
}

/// Records the last frame's head (the bytes in the skb's linear part) and whole length: shows a
/// test that the skbs it sends carry the frame in page fragments.
#[classifier]
pub fn tc_head(ctx: TcContext) -> i32 {
    // SAFETY: reading fields of the program's own context.
    let (data, end, len) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).data, (*skb).data_end, (*skb).len)
    };
    if let Some(p) = HEAD.get_ptr_mut(0) {
        // SAFETY: an array element, valid for this run.
        unsafe { *p = end - data };
    }
    if let Some(p) = HEAD.get_ptr_mut(1) {
        // SAFETY: as above.
        unsafe { *p = len };
    }
    TC_ACT_UNSPEC
}

#[map]
static HEAD: Array<u32> = Array::with_max_entries(2, 0);

/// The drop floor for throughput benchmarks.
#[xdp]
pub fn xdp_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

/// The drop floor on the skb path (generic XDP): counts what it drops, since frames the
/// receive backlog sheds before the hook must not count as processed.
#[xdp]
pub fn xdp_drop_counted(_ctx: XdpContext) -> u32 {
    floor_count();
    XDP_DROP
}

/// The drop floor at the TC ingress hook, counting likewise.
#[classifier]
pub fn tc_drop_counted(_ctx: TcContext) -> i32 {
    floor_count();
    TC_ACT_SHOT
}

#[inline(always)]
fn floor_count() {
    if let Some(c) = FLOOR_COUNT.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; nothing else writes it while we run.
        unsafe { *c += 1 };
    }
}

#[map]
static FLOOR_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Benchmark traffic generator: with `BPF_F_TEST_XDP_LIVE_FRAMES`, every frame is redirected
/// out of the device in `GEN_TARGET[0]` (the VM end of a veth, so it arrives on the VIF).
#[xdp]
pub fn xdp_gen(_ctx: XdpContext) -> u32 {
    let target = GEN_TARGET.get(0).copied().unwrap_or(0);
    // SAFETY: helper without memory arguments.
    unsafe { aya_ebpf::helpers::bpf_redirect(target, 0) as u32 }
}

#[map]
static GEN_TARGET: Array<u32> = Array::with_max_entries(1, 0);

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
