//! The kit's helper programs ([`lockd::dataplane::KIT_OBJECT`]): `xdp_empty` and `tc_empty`
//! (the floors a benchmark measures lockd against at each hook), `xdp_drop` (the drop floor),
//! `xdp_gen` (a line-rate generator under `BPF_F_TEST_XDP_LIVE_FRAMES`, redirecting every
//! frame out of one device) and `tc_head` (records how much of a frame its skb's head holds).


use aya::{
    Ebpf,
    maps::Array,
    programs::{SchedClassifier, Xdp},
};
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
/// The counting drop floor at generic XDP.
pub const PROG_DROP_COUNTED: &str = "xdp_drop_counted";
/// The counting drop floor at TC ingress.
pub const PROG_TC_DROP_COUNTED: &str = "tc_drop_counted";
/// The do-nothing TC program.
pub const PROG_TC_EMPTY: &str = "tc_empty";
/// The head-length probe (TC).
pub const PROG_TC_HEAD: &str = "tc_head";

/// The kit object, every program loaded (none attached).
pub struct Helpers {
    ebpf: Ebpf,
}

impl Helpers {
    /// Loads the object and its three programs; panics with the reason if the kernel refuses.
    pub fn load() -> Helpers {
        let mut ebpf = Ebpf::load(KIT_OBJECT).expect("load the kit's eBPF object");
        for name in [PROG_GEN, PROG_DROP, PROG_EMPTY, PROG_DROP_COUNTED] {
            let p: &mut Xdp = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("xdp");
            p.load().expect("load helper program");
        }
        for name in [PROG_TC_EMPTY, PROG_TC_HEAD, PROG_TC_DROP_COUNTED] {
            let p: &mut SchedClassifier = ebpf
                .program_mut(name)
                .expect("program")
                .try_into()
                .expect("tc");
            p.load().expect("load helper program");
        }
        Helpers { ebpf }
    }

    /// A TC program, to attach it.
    pub fn tc_program(&mut self, name: &str) -> &mut SchedClassifier {
        self.ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("tc")
    }

    /// A handle of TC program `name` for `BPF_PROG_TEST_RUN`.
    pub fn tc_runner(&self, name: &str) -> Runner {
        let p: &SchedClassifier = self
            .ebpf
            .program(name)
            .expect("program")
            .try_into()
            .expect("tc");
        Runner::tc(p, name).expect("a handle of the program")
    }

    /// Frames the counting floors dropped so far, over all CPUs.
    pub fn floor_count(&self) -> u64 {
        let m: aya::maps::PerCpuArray<_, u64> =
            aya::maps::PerCpuArray::try_from(self.ebpf.map("FLOOR_COUNT").expect("map"))
                .expect("per-CPU array");
        m.get(&0, 0).expect("count").iter().sum()
    }

    /// What `tc_head` saw last: (bytes in the skb's head, the frame's length).
    pub fn head(&self) -> (u32, u32) {
        let m: Array<_, u32> = Array::try_from(self.ebpf.map("HEAD").expect("map")).expect("array");
        (m.get(&0, 0).expect("head"), m.get(&1, 0).expect("len"))
    }

    /// A program, to attach it.
    pub fn program(&mut self, name: &str) -> &mut Xdp {
        self.ebpf
            .program_mut(name)
            .expect("program")
            .try_into()
            .expect("xdp")
    }

    /// A handle of `name` for `BPF_PROG_TEST_RUN` from any thread.
    pub fn runner(&self, name: &str) -> Runner {
        let p: &Xdp = self
            .ebpf
            .program(name)
            .expect("program")
            .try_into()
            .expect("xdp");
        Runner::xdp(p, name).expect("a handle of the program")
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
