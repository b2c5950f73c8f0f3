//! The bytes of a frame as the from-VM checks read them, at either hook.
//!
//! XDP sees one linear buffer. A TC program sees an skb whose head (`data .. data_end`) may
//! hold only the first bytes of the frame: netback, GRO and large sends leave the rest in page
//! fragments. [`Skb::load`] reads the head directly and falls back to `bpf_skb_load_bytes`
//! (which copies out of the fragments) for anything beyond it, so the checks read NDP options,
//! extension headers and BOOTP wherever they lie, without `bpf_skb_pull_data` copying the
//! whole frame into the head as generic XDP does.

use aya_ebpf::{
    helpers::bpf_skb_load_bytes,
    programs::{TcContext, XdpContext},
};
use lockd_common::Reason;

/// Largest offset the parser reads at; keeps every variable offset bounded for the verifier.
pub const MAX_OFF: usize = 4096;

/// A frame the checks can read.
pub trait Frame {
    /// The frame's whole length in bytes (from the Ethernet header).
    fn frame_len(&self) -> usize;
    /// `N` bytes at `off` from the start of the frame; `Malformed` past its end.
    fn load<const N: usize>(&self, off: usize) -> Result<[u8; N], Reason>;
    /// Whether the kernel carries a VLAN tag beside the bytes (rule 2 applies to it too).
    fn tagged_beside(&self) -> bool;
}

/// A bounds-checked read of `N` bytes at `start` from a linear buffer ending at `data_end`.
#[inline(always)]
fn direct<const N: usize>(start: usize, data_end: usize) -> Option<[u8; N]> {
    if start + N > data_end {
        return None;
    }
    // SAFETY: [start, start + N) lies inside the packet, checked just above.
    Some(unsafe { core::ptr::read_unaligned(start as *const [u8; N]) })
}

impl Frame for XdpContext {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        self.data_end() - self.data()
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Result<[u8; N], Reason> {
        if off > MAX_OFF {
            return Err(Reason::Malformed);
        }
        // A volatile load of data_end: otherwise LLVM proves this check redundant from the
        // parser's own length checks and drops it, and the verifier (which cannot follow that
        // proof) rejects the access.
        // SAFETY: self.ctx is the program's context pointer.
        let data_end = unsafe { core::ptr::read_volatile(&(*self.ctx).data_end) } as usize;
        direct(self.data() + off, data_end).ok_or(Reason::Malformed)
    }

    /// XDP cannot see such a tag; the TC ingress program catches it (see `ingress_tc`).
    #[inline(always)]
    fn tagged_beside(&self) -> bool {
        false
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.skb.skb).len as usize }
    }

    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Result<[u8; N], Reason> {
        if off > MAX_OFF {
            return Err(Reason::Malformed);
        }
        // SAFETY: reading fields of the program's own context; data_end volatile as above.
        let (data, data_end) = unsafe {
            let skb = self.skb.skb;
            (
                core::ptr::read_volatile(&(*skb).data) as usize,
                core::ptr::read_volatile(&(*skb).data_end) as usize,
            )
        };
        if let Some(b) = direct(data + off, data_end) {
            return Ok(b);
        }
        if off + N > self.frame_len() {
            return Err(Reason::Malformed);
        }
        let mut out = [0u8; N];
        // SAFETY: `out` is a live buffer of exactly N bytes.
        let r = unsafe {
            bpf_skb_load_bytes(
                self.skb.skb.cast(),
                off as u32,
                out.as_mut_ptr().cast(),
                N as u32,
            )
        };
        if r == 0 {
            Ok(out)
        } else {
            Err(Reason::Malformed)
        }
    }

    #[inline(always)]
    fn tagged_beside(&self) -> bool {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.skb.skb).vlan_present != 0 }
    }
}
