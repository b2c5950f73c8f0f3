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

/// `e` and every cause under it, `: `-separated: for an error whose text carries a cause that
/// has causes of its own (an aya error keeps the errno as its source).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        // A transparent wrapper repeats its source's text: say it once.
        if !s.ends_with(&text) {
            s += ": ";
            s += &text;
        }
        cause = c.source();
    }
    s
}
