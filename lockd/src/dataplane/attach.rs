//! Attaching and detaching a VIF's two programs: XDP (from the VM) and TC egress (to the VM,
//! TCX on 6.6+, clsact before). Both or neither: a half-attached VIF is rolled back.

use std::ffi::CStr;

use aya::programs::{
    SchedClassifier, TcAttachType, Xdp, XdpMode, links::FdLink, tc::SchedClassifierLink,
    xdp::XdpLinkId,
};
use lockd_common::{PROG_VIF_EGRESS, PROG_VIF_INGRESS};

use super::{
    AttachMode, Dataplane, DataplaneError, LinkHandle, Result, XdpModeRequest, pinning, prog_err,
};

/// The name of `ifindex` in the calling thread's network namespace.
fn ifname(ifindex: u32) -> Result<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return Err(DataplaneError::Program {
            name: PROG_VIF_EGRESS,
            source: aya::programs::ProgramError::UnknownInterface {
                name: format!("ifindex {ifindex}"),
            },
        });
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr().cast()) }
        .to_string_lossy()
        .into_owned())
}

impl Dataplane {
    fn xdp_attach(&mut self, ifindex: u32, req: XdpModeRequest) -> Result<(XdpLinkId, AttachMode)> {
        let prog = self.xdp(PROG_VIF_INGRESS)?;
        let err = prog_err(PROG_VIF_INGRESS);
        Ok(match req {
            XdpModeRequest::Native => (
                prog.attach_to_if_index(ifindex, XdpMode::Driver)
                    .map_err(err)?,
                AttachMode::Native,
            ),
            XdpModeRequest::Generic => (
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(err)?,
                AttachMode::Generic,
            ),
            XdpModeRequest::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => (id, AttachMode::Native),
                Err(e) => {
                    tracing::warn!(ifindex, error = %e, "native XDP refused, using generic XDP");
                    let id = prog
                        .attach_to_if_index(ifindex, XdpMode::Skb)
                        .map_err(err)?;
                    (id, AttachMode::Generic)
                }
            },
        })
    }

    pub(super) fn tc(&mut self) -> Result<&mut SchedClassifier> {
        super::program(&mut self.ebpf, PROG_VIF_EGRESS)
    }

    /// Attaches whichever of the two programs `ifindex` lacks. The VIF must already have a
    /// policy, so the first frame either way is judged by it. `Auto` tries native XDP and
    /// falls back to generic with a log line. On failure nothing new stays attached.
    pub fn attach(&mut self, ifindex: u32, req: XdpModeRequest) -> Result<AttachMode> {
        let state = self
            .vifs
            .get(&ifindex)
            .ok_or(DataplaneError::UnknownIfindex(ifindex))?;
        let (need_xdp, need_tc) = (state.xdp.is_none(), state.tc.is_none());
        if !need_xdp && !need_tc {
            return Err(DataplaneError::AlreadyAttached(ifindex));
        }
        if need_xdp {
            let (id, mode) = self.xdp_attach(ifindex, req)?;
            let handle = match &self.pins {
                None => LinkHandle::Owned(id),
                Some(p) => {
                    let path = p.link_path(ifindex, mode);
                    match self.pin_link(id, &path) {
                        Ok(link) => LinkHandle::Pinned { link, path },
                        Err(e) => return Err(e),
                    }
                }
            };
            self.vifs.get_mut(&ifindex).expect("checked").xdp = Some((mode, handle));
        }
        if need_tc && let Err(e) = self.tc_attach(ifindex) {
            if need_xdp {
                let _rollback = self.detach(ifindex);
            }
            return Err(e);
        }
        Ok(self.attach_mode(ifindex).expect("both attached"))
    }

    fn tc_attach(&mut self, ifindex: u32) -> Result<()> {
        let name = ifname(ifindex)?;
        let pins_path = self.pins.as_ref().map(|p| p.tc_link_path(ifindex));
        let prog = self.tc()?;
        // TCX on 6.6+, a clsact qdisc and netlink filter before (aya picks).
        if aya::util::KernelVersion::current()
            .is_ok_and(|v| v < aya::util::KernelVersion::new(6, 6, 0))
        {
            let _exists = aya::programs::tc::qdisc_add_clsact(&name);
        }
        let id = prog
            .attach(&name, TcAttachType::Egress)
            .map_err(prog_err(PROG_VIF_EGRESS))?;
        let handle = match pins_path {
            None => LinkHandle::Owned(id),
            Some(path) => {
                let link = prog.take_link(id).map_err(prog_err(PROG_VIF_EGRESS))?;
                let fd = FdLink::try_from(link)
                    .map_err(|e| pinning::pin_error(&path, std::io::Error::other(e)))?;
                let _stale = std::fs::remove_file(&path);
                let pinned = fd
                    .pin(&path)
                    .map_err(|e| pinning::pin_error(&path, std::io::Error::other(e)))?;
                LinkHandle::Pinned {
                    link: pinned.into(),
                    path,
                }
            }
        };
        self.vifs.get_mut(&ifindex).expect("checked").tc = Some(handle);
        Ok(())
    }

    /// Replaces the program behind a pinned TC link with this dataplane's (adoption).
    pub(super) fn tc_adopt(&mut self, link: FdLink) -> Result<FdLink> {
        let link = SchedClassifierLink::try_from(link).map_err(DataplaneError::Link)?;
        let prog = self.tc()?;
        let id = prog
            .attach_to_link(link)
            .map_err(prog_err(PROG_VIF_EGRESS))?;
        let link = prog.take_link(id).map_err(prog_err(PROG_VIF_EGRESS))?;
        FdLink::try_from(link).map_err(DataplaneError::Link)
    }

    /// Detaches both programs from `ifindex` where attached; the policy stays.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        let (xdp, tc) = match self.vifs.get_mut(&ifindex) {
            Some(s) => (s.xdp.take(), s.tc.take()),
            None => return Ok(()),
        };
        match tc {
            None => {}
            Some(LinkHandle::Owned(id)) => {
                self.tc()?.detach(id).map_err(prog_err(PROG_VIF_EGRESS))?;
            }
            Some(LinkHandle::Pinned { link, path }) => {
                // Removing the pin and closing our descriptor destroys the link.
                pinning::unpin(&path)?;
                drop(link);
            }
        }
        match xdp.map(|(_, h)| h) {
            None => {}
            Some(LinkHandle::Owned(id)) => {
                let prog: &mut Xdp = self.xdp(PROG_VIF_INGRESS)?;
                prog.detach(id).map_err(prog_err(PROG_VIF_INGRESS))?;
            }
            Some(LinkHandle::Pinned { link, path }) => {
                pinning::unpin(&path)?;
                drop(link);
            }
        }
        Ok(())
    }

    /// How `ifindex`'s XDP program is attached, when both programs are.
    pub fn attach_mode(&self, ifindex: u32) -> Option<AttachMode> {
        let s = self.vifs.get(&ifindex)?;
        s.tc.as_ref()?;
        s.xdp.as_ref().map(|(m, _)| *m)
    }
}
