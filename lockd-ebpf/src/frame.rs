//! The bytes of a frame as the from-VM checks read them, at either hook.
//!
//! XDP sees one linear buffer. A TC program sees an skb whose head (`data .. data_end`) may
//! hold only the first bytes of the frame: netback, GRO and large sends leave the rest in page
//! fragments. [`pull`] makes linear what the checks will read before they run, so they read
//! the head directly at either hook.

use aya_ebpf::{
    helpers::bpf_skb_load_bytes,
    programs::{TcContext, XdpContext},
};
use lockd_common::{
    EVENT_FRAME_BYTES, Reason,
    proto::{ETH_HLEN, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP},
};

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
    /// Eight bytes at `off` wherever they lie (for a monitor event).
    fn piece(&self, off: usize) -> Option<[u8; 8]>;

    /// Copies the frame's first bytes into `out` (for a monitor event); how many. Eight at a
    /// time, the last eight overlapping the piece before: constant sizes and offsets the
    /// verifier of Linux 6.1 can bound (a byte-wise tail and a helper's variable size it
    /// cannot).
    #[inline(always)]
    fn copy_head(&self, out: &mut [u8; EVENT_FRAME_BYTES]) -> u16 {
        let len = self.frame_len();
        let mut n = 0;
        while n + 8 <= EVENT_FRAME_BYTES && n + 8 <= len {
            let Some(b) = self.piece(n) else {
                break;
            };
            out[n..n + 8].copy_from_slice(&b);
            n += 8;
        }
        if n < EVENT_FRAME_BYTES && n < len && len >= 8 {
            // Masked so the verifier bounds it whatever LLVM makes of the checks around it
            // (here the frame is shorter than EVENT_FRAME_BYTES, so the mask changes nothing).
            let i = len.wrapping_sub(8) & (EVENT_FRAME_BYTES - 1);
            if i <= EVENT_FRAME_BYTES - 8
                && let Some(b) = self.piece(i)
            {
                out[i..i + 8].copy_from_slice(&b);
                n = len;
            }
        }
        n as u16
    }
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

    /// No helper copies from an XDP buffer before Linux 5.18: a direct read.
    #[inline(always)]
    fn piece(&self, off: usize) -> Option<[u8; 8]> {
        self.load::<8>(off).ok()
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn frame_len(&self) -> usize {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.skb.skb).len as usize }
    }

    /// Direct reads only: [`pull`] has made linear every byte the checks read.
    #[inline(always)]
    fn load<const N: usize>(&self, off: usize) -> Result<[u8; N], Reason> {
        if off > MAX_OFF {
            return Err(Reason::Malformed);
        }
        // SAFETY: reading fields of the program's own context; volatile as for XDP, and
        // afresh on every read since a pull moves the data.
        let (data, data_end) = unsafe {
            let skb = self.skb.skb;
            (
                core::ptr::read_volatile(&(*skb).data) as usize,
                core::ptr::read_volatile(&(*skb).data_end) as usize,
            )
        };
        direct(data + off, data_end).ok_or(Reason::Malformed)
    }

    #[inline(always)]
    fn tagged_beside(&self) -> bool {
        // SAFETY: reading a field of the program's own context.
        unsafe { (*self.skb.skb).vlan_present != 0 }
    }

    /// Copied out of the skb wherever the bytes lie.
    #[inline(always)]
    fn piece(&self, off: usize) -> Option<[u8; 8]> {
        copy::<8>(self, off)
    }
}

/// Bytes that cover every read of the checks on an ARP or IPv4 frame (the deepest: a DHCP
/// client's `chaddr` behind a 60-byte IPv4 header, at byte 116), or on an IPv6 frame whose
/// next header is TCP or UDP (62).
pub const PULL_SHORT: usize = 128;

/// Makes linear, before the checks run, the bytes they will read: nothing for a linear skb
/// (veth, loopback, most local senders); for a non-linear one (netback keeps all but the
/// first 128 bytes of a frame in page fragments; GRO and large sends do the same), the first
/// [`PULL_SHORT`] bytes, or the whole frame (up to the parser's bound) for IPv6 that the
/// checks walk into: extension headers, ICMPv6 and its NDP options. So a TCP or UDP frame is
/// never copied whole, as generic XDP copies every frame, and the checks themselves read the
/// head directly, one path per read (a read-or-copy fallback at every read doubled the paths
/// the verifier walks, past its limit on Linux 6.1).
///
/// Err only when the kernel cannot pull (no memory): the frame is dropped as malformed, as
/// the checks could not read it.
#[inline(always)]
pub fn pull(ctx: &TcContext) -> Result<(), Reason> {
    let len = ctx.frame_len();
    // SAFETY: reading fields of the program's own context.
    let head = unsafe {
        let skb = ctx.skb.skb;
        (*skb).data_end as usize - (*skb).data as usize
    };
    if head >= len {
        return Ok(());
    }
    let deep = match copy::<2>(ctx, 12) {
        Some(t) if u16::from_be_bytes(t) == ETH_P_IPV6 => !matches!(
            copy::<1>(ctx, ETH_HLEN + 6),
            Some([IPPROTO_TCP | IPPROTO_UDP])
        ),
        _ => false,
    };
    let want = if deep { MAX_OFF + 64 } else { PULL_SHORT };
    let want = want.min(len);
    if head >= want {
        return Ok(());
    }
    ctx.pull_data(want as u32).map_err(|_| Reason::Malformed)
}

/// `N` bytes at `off` copied out of the skb wherever they lie (head or fragments).
#[inline(always)]
fn copy<const N: usize>(ctx: &TcContext, off: usize) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    // SAFETY: `out` is a live buffer of exactly N bytes.
    let r = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb.cast(),
            off as u32,
            out.as_mut_ptr().cast(),
            N as u32,
        )
    };
    (r == 0).then_some(out)
}
