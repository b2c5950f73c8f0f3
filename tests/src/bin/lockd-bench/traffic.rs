//! Traffic generation for the benchmark: kernel pktgen where the kernel has it, else the
//! built-in generator — an XDP program run with `BPF_F_TEST_XDP_LIVE_FRAMES` that redirects
//! every frame out of the VM end of a veth, one thread per vCPU.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use lockd::testrun::BPF_F_TEST_XDP_LIVE_FRAMES;
pub use lockd_kit::programs::Helpers;
use lockd_kit::{netlab::NetNs, programs::PROG_GEN};

pub fn has_pktgen() -> bool {
    Path::new("/proc/net/pktgen").exists()
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, applied to the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Sends `per_thread` copies of `frame` from each of `threads` threads (thread i on CPU i),
/// out of `dev_ifindex` in `ns`. Returns (frames sent, wall time).
pub fn send(
    helpers: &Helpers,
    ns: &NetNs,
    dev_ifindex: u32,
    frame: &[u8],
    threads: usize,
    per_thread: u32,
) -> (u64, Duration) {
    if has_pktgen() {
        eprintln!(
            "    (kernel pktgen exists here; the built-in generator is used for like-for-like numbers)"
        );
    }
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|cpu| {
            let runner = helpers.runner(PROG_GEN);
            let frame = frame.to_vec();
            ns.spawn(move || {
                pin_to_cpu(cpu);
                let mut sent = 0u64;
                // Several calls rather than one: each is interruptible and bounded.
                let chunk = 1_000_000u32.min(per_thread);
                while sent < u64::from(per_thread) {
                    runner
                        .run(dev_ifindex, &frame, chunk, BPF_F_TEST_XDP_LIVE_FRAMES, 64)
                        .expect("live-frames test_run");
                    sent += u64::from(chunk);
                }
                sent
            })
            .expect("spawn generator")
        })
        .collect();
    let total: u64 = handles
        .into_iter()
        .map(|h| h.join().expect("generator").expect("generator ns"))
        .sum();
    (total, start.elapsed())
}
