//! The kit's helper XDP programs ([`lockd::dataplane::KIT_OBJECT`]): `xdp_empty` (the floor a
//! benchmark measures lockd against), `xdp_drop` (the drop floor) and `xdp_gen` (a line-rate
//! generator under `BPF_F_TEST_XDP_LIVE_FRAMES`, redirecting every frame out of one device).

use std::os::fd::AsFd as _;

use aya::{Ebpf, maps::Array, programs::Xdp};
use lockd::{
    dataplane::KIT_OBJECT,
    testrun::{BPF_F_TEST_XDP_LIVE_FRAMES, Runner},
};

/// The do-nothing XDP program.
pub const PROG_EMPTY: &str = "xdp_empty";
/// The drop-everything XDP program.
pub const PROG_DROP: &str = "xdp_drop";
/// The generator.
pub const PROG_GEN: &str = "xdp_gen";

/// The kit object, every program loaded (none attached).
pub struct Helpers {
    ebpf: Ebpf,
}

impl Helpers {
    /// Loads the object and its three programs; panics with the reason if the kernel refuses.
    pub fn load() -> Helpers {
        let mut ebpf = Ebpf::load(KIT_OBJECT).expect("load the kit's eBPF object");
        for name in [PROG_GEN, PROG_DROP, PROG_EMPTY] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("xdp");
            p.load().expect("load helper program");
        }
        Helpers { ebpf }
    }

    /// A program, to attach it.
    pub fn program(&mut self, name: &str) -> &mut Xdp {
        self.ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("xdp")
    }

    /// A descriptor of `name` for `BPF_PROG_TEST_RUN` from any thread.
    pub fn runner(&self, name: &str) -> Runner {
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

    /// Sends `count` frames out of `ifindex` from the calling thread (already in the right
    /// namespace) with the generator. Returns the count.
    pub fn send_here(&self, ifindex: u32, frame: &[u8], count: u32) -> u64 {
        self.runner(PROG_GEN)
            .run(ifindex, frame, count, BPF_F_TEST_XDP_LIVE_FRAMES, 64)
            .expect("live-frames test_run");
        u64::from(count)
    }
}
