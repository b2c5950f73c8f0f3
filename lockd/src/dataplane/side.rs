//! The two sides of a VIF's TC hook, and what each side's program, hook and pins are called.

use aya::programs::TcAttachType;
use lockd_common::{PROG_VIF_EGRESS, PROG_VIF_INGRESS_TC};

/// A VIF's two TC programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Tc {
    /// `vif_egress`: frames to the VM.
    ToVm,
    /// `vif_ingress_tc`: frames from the VM.
    FromVm,
}

impl Tc {
    pub(super) const ALL: [Tc; 2] = [Tc::ToVm, Tc::FromVm];

    pub(super) fn program(self) -> &'static str {
        match self {
            Tc::ToVm => PROG_VIF_EGRESS,
            Tc::FromVm => PROG_VIF_INGRESS_TC,
        }
    }

    pub(super) fn attach_type(self) -> TcAttachType {
        match self {
            Tc::ToVm => TcAttachType::Egress,
            Tc::FromVm => TcAttachType::Ingress,
        }
    }

    /// The pin (TCX) or record (clsact) name prefix; `tc-` is the release's egress name.
    pub(super) fn pin_prefix(self) -> &'static str {
        match self {
            Tc::ToVm => "tc",
            Tc::FromVm => "tci",
        }
    }
}

