//! lockd: switch-port locking for hypervisor VIFs in XDP/TC.

pub mod daemon;
pub mod dataplane;
pub mod explain;
pub mod features;
pub mod frameinfo;
pub mod hook;
pub mod netlink;
pub mod protocol;
pub mod rcu;
pub mod store;
pub mod testrun;
pub mod xe;
pub mod xenopsd;
