//! lockd: switch-port locking for hypervisor VIFs in XDP/TC.

pub mod dataplane;
pub mod demo;
pub mod frames;
pub mod netlab;
pub mod rcu;
pub mod testrun;
