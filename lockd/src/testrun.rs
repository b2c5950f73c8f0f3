//! `BPF_PROG_TEST_RUN` on a program descriptor, usable from any thread while the
//! [`crate::dataplane::Dataplane`] that owns the program keeps updating policy.

use std::{
    io,
    os::fd::{AsRawFd as _, OwnedFd},
};

use lockd_common::proto::ETH_HLEN;

const BPF_PROG_TEST_RUN: libc::c_long = 10;
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

/// The `test` arm of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Outcome of one `BPF_PROG_TEST_RUN`.
#[derive(Clone, Copy, Debug)]
pub struct RunResult {
    /// The XDP action returned (last repetition).
    pub action: u32,
    /// Kernel-reported mean duration per repetition, in nanoseconds.
    pub ns_per_run: u32,
}

/// An owned descriptor of a loaded XDP program.
#[derive(Debug)]
pub struct Runner {
    fd: OwnedFd,
}

impl Runner {
    pub fn new(fd: OwnedFd) -> Self {
        Self { fd }
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
        let mut attr = TestAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            data_size_in: frame.len() as u32,
            data_in: frame.as_ptr() as u64,
            repeat,
            ctx_size_in: size_of_val(md) as u32,
            ctx_in: md.as_ptr() as u64,
            flags,
            batch_size: batch,
            ..Default::default()
        };
        if !live {
            attr.data_size_out = out.len() as u32;
            attr.data_out = out.as_mut_ptr() as u64;
        }
        // SAFETY: every pointer in attr refers to a live buffer of the stated size.
        let r = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestAttr as *mut libc::c_void,
                size_of::<TestAttr>() as libc::c_uint,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RunResult {
            action: attr.retval,
            ns_per_run: attr.duration,
        })
    }
}
