//! A sender of skbs in any shape: an AF_PACKET transmit ring (`PACKET_TX_RING`, TPACKET_V2)
//! whose frames carry a virtio-net header. The kernel copies `hdr_len` bytes of each frame into
//! the skb's head and hangs the rest off it as page fragments of the ring itself, for a frame
//! of any length: a 1500-byte frame with 128 bytes in the head is what xen-netback builds, and
//! what `send(2)` on such a socket cannot build below a page. `hdr_len` = the frame's length
//! makes a linear skb of any length (9000 bytes included).

use std::{
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use lockd_kit::netlab::NetNs;

use crate::wire::raw_socket;

/// Ring geometry: 64 slots of 16 KiB (a 9000-byte frame and its headers fit one), four to a
/// 64 KiB block.
const SLOT: usize = 16 << 10;
const BLOCK: usize = 64 << 10;
const SLOTS: usize = 64;

/// Where a TPACKET_V2 transmit slot's frame starts: after the slot header, in the place a
/// receive slot keeps its `sockaddr_ll` (the kernel's `tp_hdrlen - sizeof(sockaddr_ll)`).
const DATA_OFF: usize = libc::TPACKET2_HDRLEN - size_of::<libc::sockaddr_ll>();

/// The virtio-net header: no offloads, `head` bytes for the skb's head.
fn vnet_header(head: u16) -> [u8; 10] {
    let mut h = [0u8; 10];
    h[2..4].copy_from_slice(&head.to_le_bytes());
    h
}

fn setsockopt<T>(fd: &OwnedFd, opt: libc::c_int, v: &T, what: &str) -> io::Result<()> {
    // SAFETY: a live value of the size given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            opt,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

/// A mapped transmit ring, unmapped on drop (before its socket closes).
struct Ring {
    base: *mut u8,
    len: usize,
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `ring`, not used after this.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

impl Ring {
    fn status(&self, slot: usize) -> &AtomicU32 {
        // SAFETY: tp_status is the first, 4-byte aligned u32 of a slot inside the mapping;
        // the kernel writes it concurrently, hence atomic access only.
        unsafe { &*self.base.add(slot * SLOT).cast::<AtomicU32>() }
    }
}

fn ring(sock: &OwnedFd) -> io::Result<Ring> {
    setsockopt(sock, libc::PACKET_VNET_HDR, &1i32, "PACKET_VNET_HDR")?;
    setsockopt(
        sock,
        libc::PACKET_VERSION,
        &(libc::tpacket_versions::TPACKET_V2 as libc::c_int),
        "PACKET_VERSION",
    )?;
    let req = libc::tpacket_req {
        tp_block_size: BLOCK as u32,
        tp_block_nr: (SLOTS * SLOT / BLOCK) as u32,
        tp_frame_size: SLOT as u32,
        tp_frame_nr: SLOTS as u32,
    };
    setsockopt(sock, libc::PACKET_TX_RING, &req, "PACKET_TX_RING")?;
    let len = SLOTS * SLOT;
    // SAFETY: a fresh shared mapping of the ring just set up on this socket.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            sock.as_raw_fd(),
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(Ring {
        base: base.cast(),
        len,
    })
}

/// Sends `frame` `count` times from `dev` inside `ns`, each as an skb with its first `head`
/// bytes in the skb's head and the rest in page fragments (`head` ≥ the frame's length: a
/// linear skb), from one thread pinned to CPU 0 (the receive side runs in the same CPU's
/// softirq, so the time taken includes the hooks'). Returns the frames handed to the kernel and
/// the time taken.
pub fn send_shaped(
    ns: &NetNs,
    dev: &str,
    frame: &[u8],
    head: u16,
    count: u64,
) -> io::Result<(u64, Duration)> {
    let dev = dev.to_string();
    let frame = frame.to_vec();
    let head = head.min(u16::try_from(frame.len()).unwrap_or(u16::MAX));
    if DATA_OFF + 10 + frame.len() > SLOT {
        return Err(io::Error::other(format!(
            "a {}-byte frame does not fit a {SLOT}-byte ring slot",
            frame.len()
        )));
    }
    ns.run(move || {
        // SAFETY: a zeroed cpu_set_t with one bit set, for this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(0, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set);
        }
        let sock = raw_socket(&dev)?;
        let ring = ring(&sock)?;
        // Every slot holds the same frame: written once.
        let tp_len = (10 + frame.len()) as u32;
        for slot in 0..SLOTS {
            // SAFETY: the slot's bytes lie inside the mapping (checked against SLOT above);
            // the kernel reads them only after the status says SEND_REQUEST.
            unsafe {
                let s = ring.base.add(slot * SLOT);
                let hdr = s.cast::<libc::tpacket2_hdr>();
                (*hdr).tp_len = tp_len;
                let data = s.add(DATA_OFF);
                std::ptr::copy_nonoverlapping(vnet_header(head).as_ptr(), data, 10);
                std::ptr::copy_nonoverlapping(frame.as_ptr(), data.add(10), frame.len());
            }
        }
        let kick = || {
            // SAFETY: send(2) with no buffer: the kernel sends the ring's requested slots (and
            // returns without waiting for them to leave: the loop below watches the slots).
            let r = unsafe {
                libc::send(sock.as_raw_fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT)
            };
            if r < 0 {
                let e = io::Error::last_os_error();
                // A full device queue, or slots still in flight: both only mean "later".
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::ENOBUFS | libc::EAGAIN | libc::EINTR | libc::ETIMEDOUT)
                ) {
                    return Err(e);
                }
            }
            Ok(())
        };
        let start = Instant::now();
        let (mut queued, mut slot) = (0u64, 0usize);
        while queued < count {
            let st = ring.status(slot);
            match st.load(Ordering::Acquire) {
                libc::TP_STATUS_AVAILABLE => {
                    st.store(libc::TP_STATUS_SEND_REQUEST, Ordering::Release);
                    queued += 1;
                    slot = (slot + 1) % SLOTS;
                    if slot % 16 == 0 {
                        kick()?;
                    }
                }
                libc::TP_STATUS_WRONG_FORMAT => {
                    return Err(io::Error::other("the kernel refused the ring's frame"));
                }
                // The slot is still in flight.
                _ => kick()?,
            }
        }
        // Everything queued has left the ring.
        kick()?;
        while (0..SLOTS).any(|s| ring.status(s).load(Ordering::Acquire) != 0) {
            kick()?;
            if start.elapsed() > Duration::from_secs(60) {
                return Err(io::Error::other("the ring's frames did not leave in 60 s"));
            }
        }
        Ok((queued, start.elapsed()))
    })
    .map_err(io::Error::other)?
}
