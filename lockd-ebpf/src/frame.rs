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

/// A bounds-checked read of `N` bytes at `start` from a linear buffer ending at `data_end`,
/// in the widest loads that fit (8, 4, 2, then 1 bytes).
#[inline(always)]
fn direct<const N: usize>(start: usize, data_end: usize) -> Option<[u8; N]> {
    if start + N > data_end {
        return None;
    }
    let mut out = Words([0u8; N]);
    let mut i = 0;
    while i + 8 <= N {
        out.0[i..i + 8].copy_from_slice(&word::<8>(start + i));
        i += 8;
    }
    if i + 4 <= N {
        out.0[i..i + 4].copy_from_slice(&word::<4>(start + i));
        i += 4;
    }
    if i + 2 <= N {
        out.0[i..i + 2].copy_from_slice(&word::<2>(start + i));
        i += 2;
    }
    if i < N {
        out.0[i] = word::<1>(start + i)[0];
    }
    Some(out.0)
}

/// The bytes a read assembles, kept aligned so that LLVM keeps its words whole.
#[repr(C, align(8))]
struct Words<const N: usize>([u8; N]);

/// One load of `W` (1, 2, 4 or 8) bytes at `addr`, whatever its alignment. A packet's fields
/// are rarely aligned (the IP header starts at byte 14), and LLVM's BPF backend splits every
/// load it cannot prove aligned into single bytes, each shifted into place (a 16-byte IPv6
/// address: 16 loads and 30 ALU instructions instead of two loads), though the kernel's JIT
/// loads misaligned packet words directly on every architecture lockd runs on (the verifier
/// checks alignment only under `BPF_F_STRICT_ALIGNMENT`). So the load is written as the one
/// BPF instruction it is.
#[inline(always)]
fn word<const W: usize>(addr: usize) -> [u8; W] {
    #[cfg(target_arch = "bpf")]
    {
        let mut out = [0u8; W];
        let v: u64;
        // SAFETY: the caller has checked [addr, addr + W) against the packet's end; the
        // instruction reads exactly those bytes and nothing else.
        unsafe {
            match W {
                8 => core::arch::asm!("{0} = *(u64 *)({1} + 0)", lateout(reg) v, in(reg) addr,
                    options(readonly, nostack, preserves_flags)),
                4 => core::arch::asm!("{0} = *(u32 *)({1} + 0)", lateout(reg) v, in(reg) addr,
                    options(readonly, nostack, preserves_flags)),
                2 => core::arch::asm!("{0} = *(u16 *)({1} + 0)", lateout(reg) v, in(reg) addr,
                    options(readonly, nostack, preserves_flags)),
                _ => core::arch::asm!("{0} = *(u8 *)({1} + 0)", lateout(reg) v, in(reg) addr,
                    options(readonly, nostack, preserves_flags)),
            }
        }
        out.copy_from_slice(&v.to_le_bytes()[..W]);
        out
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: as above (the host never runs this crate's programs; clippy only).
        unsafe { core::ptr::read_unaligned(addr as *const [u8; W]) }
    }
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

/// Makes linear, before the checks run, the bytes they will read, where the skb's head does not
/// hold them already: nothing for a linear skb (veth, loopback, most local senders), nor for
/// netback's (all but the first 128 bytes of a frame in page fragments) unless the checks read
/// past its head; otherwise the first [`PULL_SHORT`] bytes, or the whole frame (up to the
/// parser's bound) for IPv6 that the checks walk into past the head: extension headers,
/// ICMPv6 and its NDP options. So a frame is never copied whole, as generic XDP copies every
/// frame, and the checks themselves read the head directly, one path per read (a
/// read-or-copy fallback at every read doubled the paths the verifier walks, past its limit on
/// Linux 6.1).
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
    let deep = deep(ctx, head);
    if !deep && head >= PULL_SHORT.min(len) {
        return Ok(());
    }
    // Rare: a head shorter than netback's 128 bytes, or IPv6 that the checks walk past it.
    let want = if deep { MAX_OFF + 64 } else { PULL_SHORT };
    ctx.pull_data(want.min(len) as u32)
        .map_err(|_| Reason::Malformed)
}

/// Whether the checks read past the first [`PULL_SHORT`] bytes and past the head: IPv6 whose
/// next header is not TCP or UDP (extension headers, ICMPv6 and its NDP options, walked up to
/// the payload's end) and whose payload ends past the head. The EtherType and the next header
/// are read from the head where they are (netback's 128 bytes always hold them); copied out
/// of the skb only for a shorter head.
#[inline(always)]
fn deep(ctx: &TcContext, head: usize) -> bool {
    let at = |off| {
        Frame::load::<2>(ctx, off)
            .ok()
            .or_else(|| copy::<2>(ctx, off))
            .map(u16::from_be_bytes)
    };
    if at(12) != Some(ETH_P_IPV6) {
        return false;
    }
    // Payload length (bytes 18–19), then next header (byte 20) with the hop limit after it.
    let Some(plen) = at(ETH_HLEN + 4) else {
        return true;
    };
    if ETH_HLEN + 40 + plen as usize <= head {
        return false;
    }
    !matches!(
        at(ETH_HLEN + 6).map(|v| (v >> 8) as u8),
        Some(IPPROTO_TCP | IPPROTO_UDP)
    )
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
