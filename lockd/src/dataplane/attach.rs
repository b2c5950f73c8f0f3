//! Attaching and detaching a VIF's programs: XDP (from the VM; none where the VIF is judged
//! at TC), TC ingress (from the VM: tags carried beside the frame, the shaper hand-off, and on
//! a VIF judged at TC every check) and TC egress (to the VM); TC is TCX on 6.6+ and a clsact
//! `cls_bpf` filter before. All or nothing: a half-attached VIF is rolled back.

use std::{ffi::CStr, fs, io, path::Path};

use std::path::PathBuf;

use aya::programs::{
    Link as _, SchedClassifier, Xdp, XdpMode,
    links::FdLink,
    tc::{SchedClassifierLink, TcHandle},
    xdp::XdpLinkId,
};
use lockd_common::{PROG_VIF_EGRESS, PROG_VIF_INGRESS};

use crate::features::Feature;

use super::{
    AttachMode, Dataplane, DataplaneError, LinkHandle, Result, XdpModeRequest, pinning, prog_err,
    side::Tc,
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

fn tc_handle(h: u32) -> TcHandle {
    TcHandle::new((h >> 16) as u16, h as u16)
}

/// Pins a TCX link at `path`.
fn pin_tc_link(
    link: SchedClassifierLink,
    path: PathBuf,
) -> Result<LinkHandle<aya::programs::tc::SchedClassifierLinkId>> {
    let fd =
        FdLink::try_from(link).map_err(|e| pinning::pin_error(&path, std::io::Error::other(e)))?;
    let _stale = std::fs::remove_file(&path);
    let pinned = fd
        .pin(&path)
        .map_err(|e| pinning::pin_error(&path, pinning::pin_io(e)))?;
    Ok(LinkHandle::Pinned {
        link: pinned.into(),
        path,
    })
}

/// Removes a clsact filter by its priority and handle. Best effort: a netdev that is gone
/// took its filters with it.
pub(super) fn clsact_detach(ifindex: u32, side: Tc, priority: u16, handle: u32) {
    let Ok(name) = ifname(ifindex) else { return };
    if let Ok(link) =
        SchedClassifierLink::attached(&name, side.attach_type(), priority, tc_handle(handle), None)
        && let Err(e) = link.detach()
    {
        tracing::warn!(ifindex, error = %e, "removing a clsact filter");
    }
}

impl Dataplane {
    /// Attaches the XDP program as asked; None where the from-VM checks go to the TC hook
    /// instead (`Tc`, or `Auto` on a netdev without native XDP).
    fn xdp_attach(
        &mut self,
        ifindex: u32,
        req: XdpModeRequest,
    ) -> Result<Option<(XdpLinkId, AttachMode)>> {
        let prog = self.xdp(PROG_VIF_INGRESS)?;
        let err = prog_err(PROG_VIF_INGRESS);
        Ok(match req {
            XdpModeRequest::Native => Some((
                prog.attach_to_if_index(ifindex, XdpMode::Driver)
                    .map_err(err)?,
                AttachMode::Native,
            )),
            XdpModeRequest::Generic => Some((
                prog.attach_to_if_index(ifindex, XdpMode::Skb)
                    .map_err(err)?,
                AttachMode::Generic,
            )),
            XdpModeRequest::Tc => None,
            XdpModeRequest::Auto => match prog.attach_to_if_index(ifindex, XdpMode::Driver) {
                Ok(id) => Some((id, AttachMode::Native)),
                Err(e) => {
                    tracing::info!(ifindex, error = %e, "no native XDP: judging frames at TC ingress");
                    None
                }
            },
        })
    }

    fn tc_prog(&mut self, side: Tc) -> Result<&mut SchedClassifier> {
        super::program(&mut self.ebpf, side.program())
    }

    /// Pins this object's TC program of `side` at `path`: a clsact filter's record.
    pub(super) fn pin_tc_program(&mut self, side: Tc, path: &std::path::Path) -> Result<()> {
        self.tc_prog(side)?
            .pin(path)
            .map_err(|e| pinning::pin_error(path, pinning::pin_io(e)))
    }

    /// Attaches whichever of the three programs `ifindex` lacks. The VIF must already have a
    /// policy, so the first frame either way is judged by it. `Auto` tries native XDP and
    /// falls back to generic with a log line. On failure nothing new stays attached.
    pub fn attach(&mut self, ifindex: u32, req: XdpModeRequest) -> Result<AttachMode> {
        let state = self
            .vifs
            .get(&ifindex)
            .ok_or(DataplaneError::UnknownIfindex(ifindex))?;
        let need_xdp = state.xdp.is_none() && !state.tc_checks;
        let need_tc: Vec<Tc> = Tc::ALL
            .into_iter()
            .filter(|side| state.tc(*side).is_none())
            .collect();
        if !need_xdp && need_tc.is_empty() {
            return Err(DataplaneError::AlreadyAttached(ifindex));
        }
        let xdp = if need_xdp {
            self.xdp_attach(ifindex, req)?
        } else {
            None
        };
        if need_xdp && xdp.is_none() {
            // Judged at TC: the flag is in force before the TC program can see a frame.
            self.set_tc_checks(ifindex, true)?;
        }
        if let Some((id, mode)) = xdp {
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
        let mut clsact_ready = false;
        for side in need_tc {
            if let Err(e) = self.tc_attach(ifindex, side, &mut clsact_ready) {
                // What this call attached goes again; what was there before stays.
                let _rollback = self.detach_new(ifindex, need_xdp);
                return Err(e);
            }
        }
        Ok(self.attach_mode(ifindex).expect("all attached"))
    }

    /// Rolls back a failed `attach`: everything, if it attached XDP (the VIF was bare), else
    /// nothing (a TC program attached alone next to a working set is harmless and retried).
    fn detach_new(&mut self, ifindex: u32, xdp_was_new: bool) -> Result<()> {
        if xdp_was_new {
            self.detach(ifindex)
        } else {
            Ok(())
        }
    }

    fn tc_attach(&mut self, ifindex: u32, side: Tc, clsact_ready: &mut bool) -> Result<()> {
        let name = ifname(ifindex)?;
        let paths = self
            .pins
            .as_ref()
            .map(|p| (p.tc_link_path(ifindex, side), p.links.clone()));
        // TCX from 6.6 (the rule aya uses to choose); clsact before.
        let tcx = self.tc_mode == super::TcMode::Tcx && Feature::Tcx.by_version();
        let pname = side.program();
        let prog = self.tc_prog(side)?;
        let id = if tcx {
            prog.attach(&name, side.attach_type())
        } else {
            // A clsact qdisc (kept if there) and a cls_bpf direct-action filter. A refused
            // qdisc (sch_ingress missing) is the error, named; so is an old-style `ingress`
            // qdisc at ffff:, which would take both filters on its one hook. Only a qdisc that
            // was there before this attach is looked at (one dump); one this attach made (the
            // first side's) is known good.
            if !*clsact_ready {
                if let Err(e) = aya::programs::tc::qdisc_add_clsact(&name) {
                    let exists = matches!(&e, aya::programs::tc::TcError::AlreadyAttached)
                        || matches!(&e, aya::programs::tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST));
                    let refused = |why: String| DataplaneError::Qdisc {
                        device: name.clone(),
                        source: aya::programs::tc::TcError::IoError(std::io::Error::other(why)),
                    };
                    if !exists {
                        return Err(refused(format!(
                            "refused ({e}); is module sch_ingress loaded?"
                        )));
                    }
                    match crate::netlink::ingress_qdisc(ifindex) {
                        Ok(Some(kind)) if kind != "clsact" => {
                            return Err(refused(format!(
                                "an {kind} qdisc holds handle ffff: where clsact goes"
                            )));
                        }
                        Ok(_) => {}
                        Err(e) => return Err(refused(format!("reading its qdiscs: {e}"))),
                    }
                }
                *clsact_ready = true;
            }
            prog.attach_with_options(
                    &name,
                    side.attach_type(),
                    aya::programs::tc::TcAttachOptions::Netlink(
                        aya::programs::tc::NlOptions::default(),
                    ),
                )
        }
        .map_err(prog_err(pname))?;
        let handle = match paths {
            None => LinkHandle::Owned(id),
            Some((link_path, links_dir)) => {
                let link = prog.take_link(id).map_err(prog_err(pname))?;
                if tcx {
                    pin_tc_link(link, link_path)?
                } else {
                    let priority = link.priority().map_err(prog_err(pname))?;
                    let handle = u32::from(link.handle().map_err(prog_err(pname))?);
                    // Dropping the wrapper would remove the filter; it must outlive us.
                    std::mem::forget(link);
                    let clsact_path =
                        links_dir.join(pinning::clsact_name(ifindex, side, priority, handle));
                    let pinned = prog
                        .pin(&clsact_path)
                        .map_err(|e| pinning::pin_error(&clsact_path, pinning::pin_io(e)));
                    if let Err(e) = pinned {
                        clsact_detach(ifindex, side, priority, handle);
                        return Err(e);
                    }
                    LinkHandle::Clsact {
                        priority,
                        handle,
                        path: clsact_path,
                    }
                }
            }
        };
        *self.vifs.get_mut(&ifindex).expect("checked").tc_mut(side) = Some(handle);
        Ok(())
    }

    /// Replaces the program of a clsact filter a previous daemon left (adoption): one netlink
    /// change of the filter in place, so frames are judged throughout.
    pub(super) fn clsact_adopt(
        &mut self,
        ifindex: u32,
        side: Tc,
        priority: u16,
        handle: u32,
    ) -> Result<()> {
        let name = ifname(ifindex)?;
        let pname = side.program();
        let link = SchedClassifierLink::attached(
            &name,
            side.attach_type(),
            priority,
            tc_handle(handle),
            None,
        )
        .map_err(|e| DataplaneError::Program {
            name: pname,
            source: aya::programs::ProgramError::IOError(e),
        })?;
        let prog = self.tc_prog(side)?;
        let id = prog.attach_to_link(link).map_err(prog_err(pname))?;
        let link = prog.take_link(id).map_err(prog_err(pname))?;
        std::mem::forget(link);
        Ok(())
    }

    /// Replaces the program behind a pinned TC link with this dataplane's (adoption).
    pub(super) fn tc_adopt(&mut self, side: Tc, link: FdLink) -> Result<FdLink> {
        let link = SchedClassifierLink::try_from(link).map_err(DataplaneError::Link)?;
        let pname = side.program();
        let prog = self.tc_prog(side)?;
        let id = prog.attach_to_link(link).map_err(prog_err(pname))?;
        let link = prog.take_link(id).map_err(prog_err(pname))?;
        FdLink::try_from(link).map_err(DataplaneError::Link)
    }

    /// Detaches every program from `ifindex` where attached; the policy stays.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        let Some(state) = self.vifs.get_mut(&ifindex) else {
            return Ok(());
        };
        let xdp = state.xdp.take();
        let tc_checks = state.tc_checks;
        let tcs: Vec<_> = Tc::ALL
            .into_iter()
            .filter_map(|side| state.tc_mut(side).take().map(|h| (side, h)))
            .collect();
        for (side, h) in tcs {
            match h {
                LinkHandle::Owned(id) => {
                    self.tc_prog(side)?
                        .detach(id)
                        .map_err(prog_err(side.program()))?;
                }
                LinkHandle::Pinned { link, path } => {
                    // Removing the pin and closing our descriptor destroys the link.
                    pinning::unpin(&path)?;
                    drop(link);
                }
                LinkHandle::Clsact {
                    priority,
                    handle,
                    path,
                } => {
                    clsact_detach(ifindex, side, priority, handle);
                    pinning::unpin(&path)?;
                }
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
            Some(LinkHandle::Clsact { .. }) => unreachable!("XDP is never a clsact filter"),
        }
        if tc_checks {
            // The next attach chooses its hook afresh.
            self.set_tc_checks(ifindex, false)?;
        }
        Ok(())
    }

    /// Where `ifindex`'s from-VM checks run, when all its programs are attached.
    pub fn attach_mode(&self, ifindex: u32) -> Option<AttachMode> {
        let s = self.vifs.get(&ifindex)?;
        for side in Tc::ALL {
            s.tc(side).as_ref()?;
        }
        if s.tc_checks {
            return Some(AttachMode::Tc);
        }
        s.xdp.as_ref().map(|(m, _)| *m)
    }

    /// Pins the link behind `id` at `path`; the program object gives up ownership.
    pub(super) fn pin_link(&mut self, id: XdpLinkId, path: &Path) -> Result<FdLink> {
        let prog = self.xdp(PROG_VIF_INGRESS)?;
        let link = prog.take_link(id).map_err(prog_err(PROG_VIF_INGRESS))?;
        let fd = FdLink::try_from(link).map_err(|e| pinning::pin_err(path)(io::Error::other(e)))?;
        let _stale = fs::remove_file(path);
        let pinned = fd
            .pin(path)
            .map_err(|e| pinning::pin_err(path)(pinning::pin_io(e)))?;
        Ok(pinned.into())
    }
}
