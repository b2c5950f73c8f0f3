//! Traffic generation for the benchmark: kernel pktgen where the kernel has it, else the
//! built-in generator — an XDP program run with `BPF_F_TEST_XDP_LIVE_FRAMES` that redirects
//! every frame out of the VM end of a veth, one thread per vCPU.

use std::{
    os::fd::AsFd as _,
    path::Path,
    time::{Duration, Instant},
};

use aya::{Ebpf, maps::Array, programs::Xdp};
use lockd::{
    dataplane::EBPF_OBJECT,
    netlab::NetNs,
    testrun::{BPF_F_TEST_XDP_LIVE_FRAMES, Runner},
};

/// The helper programs of the benchmark: the generator and the drop floor.
pub struct Helpers {
    ebpf: Ebpf,
}

impl Helpers {
    pub fn load() -> Helpers {
        let mut ebpf = Ebpf::load(EBPF_OBJECT).expect("load the eBPF object");
        for name in ["xdp_gen", "xdp_drop", "xdp_empty"] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("xdp");
            p.load().expect("load helper program");
        }
        Helpers { ebpf }
    }

    pub fn program(&mut self, name: &str) -> &mut Xdp {
        self.ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("xdp")
    }

    fn runner(&self, name: &str) -> Runner {
        let p: &Xdp = self
            .ebpf
            .program(name)
            .expect("program")
            .try_into()
            .expect("xdp");
        Runner::new(
            p.fd()
                .expect("fd")
                .as_fd()
                .try_clone_to_owned()
                .expect("dup"),
        )
    }

    /// Points the generator at `ifindex` (in the generator's namespace).
    pub fn set_target(&mut self, ifindex: u32) {
        let mut m: Array<_, u32> =
            Array::try_from(self.ebpf.map_mut("GEN_TARGET").expect("map")).expect("array");
        m.set(0, ifindex, 0).expect("set target");
    }
}

impl Helpers {
    /// Sends `count` frames out of `ifindex` from the calling thread (already in the right
    /// namespace). Returns the count.
    pub fn send_here(&self, ifindex: u32, frame: &[u8], count: u32) -> u64 {
        self.runner("xdp_gen")
            .run(ifindex, frame, count, BPF_F_TEST_XDP_LIVE_FRAMES, 64)
            .expect("live-frames test_run");
        u64::from(count)
    }
}

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
            let runner = helpers.runner("xdp_gen");
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
