//! lockd: switch-port locking for hypervisor VIFs in XDP/TC.

pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod frames;
pub mod hook;
pub mod netlab;
pub mod netlink;
pub mod rcu;
pub mod state;
pub mod testrun;
pub mod xe;
