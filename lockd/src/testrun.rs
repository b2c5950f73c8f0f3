//! `BPF_PROG_TEST_RUN` (aya's `TestRun`) on a handle of its own of a loaded program, usable
//! from any thread while the [`crate::dataplane::Dataplane`] that owns the program keeps
//! updating policy.

use std::io;

use aya::programs::{
    ProgramError, SchedClassifier, TestRun as _, TestRunAttrs, TestRunOptions, Xdp,
};
use aya_obj::programs::XdpAttachType;

use lockd_common::proto::ETH_HLEN;

/// `BPF_F_TEST_XDP_LIVE_FRAMES` (5.18+): frames the program redirects are really sent.
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The size of the buffer a frame shorter than an Ethernet header is handed to the kernel in.
///
/// `BPF_PROG_TEST_RUN` refuses XDP input whose packet is shorter than ETH_HLEN (14), counting
/// every byte of the buffer after the metadata, fragments included (Linux 6.18.44, tried here:
/// 5 bytes behind 16 bytes of `xdp_md` metadata get EINVAL). What it checks is the whole
/// buffer, not the linear part the program reads: with `xdp_md.data_end` = the frame's length
/// and zeros after it up to 14 bytes, the frame is the linear part (`data .. data_end`) and
/// the zeros go into a fragment. lockd's XDP program reads only `data .. data_end` (direct
/// packet access, no `bpf_xdp_load_bytes` or `bpf_xdp_get_buff_len`) and counts
/// `data_end - data` bytes, so it sees exactly the frame; `explain` checks the byte counter.
pub const SHORT_FRAME_PAD: usize = ETH_HLEN;

/// Outcome of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    /// The XDP action returned (last repetition).
    pub action: u32,
    /// Kernel-reported mean duration per repetition, in nanoseconds.
    pub ns_per_run: u32,
}

/// A handle of a loaded program (its own descriptor), for `BPF_PROG_TEST_RUN` from any thread.
#[derive(Debug)]
pub enum Runner {
    /// An XDP program: frames run with an `xdp_md` context.
    Xdp(Xdp),
    /// A TC (`sched_cls`) program: frames run as skbs with a `__sk_buff` context.
    Tc(SchedClassifier),
}

impl Runner {
    /// A handle of XDP program `p` (named `name`).
    pub fn xdp(p: &Xdp, name: &str) -> Result<Self, ProgramError> {
        Xdp::from_program_info(p.info()?, name.to_owned().into(), XdpAttachType::Interface).map(Self::Xdp)
    }

    /// A handle of TC program `p` (named `name`).
    pub fn tc(p: &SchedClassifier, name: &str) -> Result<Self, ProgramError> {
        SchedClassifier::from_program_info(p.info()?, name.to_owned().into()).map(Self::Tc)
    }

    /// Runs the program `repeat` times on `frame` as if received on `ifindex` (a device in
    /// the calling thread's network namespace, or 0 for none). `flags` and `batch` are for
    /// live-frame mode. Outside it, a frame shorter than an Ethernet header runs too: see
    /// [`SHORT_FRAME_PAD`].
    pub fn run(
        &self,
        ifindex: u32,
        frame: &[u8],
        repeat: u32,
        flags: u32,
        batch: u32,
    ) -> io::Result<RunResult> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. data = 0 (no metadata); data_end = the end of the linear part.
        let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
        let live = flags & BPF_F_TEST_XDP_LIVE_FRAMES != 0;
        if frame.len() >= SHORT_FRAME_PAD || live {
            return self.run_ctx(&md, frame, repeat, flags, batch);
        }
        let mut buf = frame.to_vec();
        buf.resize(SHORT_FRAME_PAD, 0);
        self.run_ctx(&md, &buf, repeat, flags, batch)
    }
    /// Runs a TC (sched_cls) program on `frame` as if sent out of `ifindex`.
    pub fn run_skb(&self, ifindex: u32, frame: &[u8], repeat: u32) -> io::Result<RunResult> {
        // struct __sk_buff up to and including `ifindex` (offset 40); the kernel accepts a
        // prefix and only a few fields may be non-zero, ifindex among them.
        let mut skb = [0u32; 11];
        skb[10] = ifindex;
        self.run_ctx(&skb, frame, repeat, 0, 0)
    }

    fn run_ctx(
        &self,
        md: &[u32],
        frame: &[u8],
        repeat: u32,
        flags: u32,
        batch: u32,
    ) -> io::Result<RunResult> {
        let live = flags & BPF_F_TEST_XDP_LIVE_FRAMES != 0;
        let mut out = vec![0u8; frame.len() + 256];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: (!live).then_some(out.as_mut_slice()),
            ctx_in: Some(&ctx),
            repeat,
            attrs: if live {
                TestRunAttrs::new().xdp_live_frames(batch)
            } else {
                TestRunAttrs::new()
            },
            ..TestRunOptions::new()
        };
        let r = match self {
            Runner::Xdp(p) => p.test_run(opts),
            Runner::Tc(p) => p.test_run(opts),
        };
        let r = r.map_err(|e| match e {
            ProgramError::SyscallError(s) => s.io_error,
            other => io::Error::other(other),
        })?;
        Ok(RunResult {
            action: r.return_value,
            ns_per_run: u32::try_from(r.duration.as_nanos()).unwrap_or(u32::MAX),
        })
    }
}
