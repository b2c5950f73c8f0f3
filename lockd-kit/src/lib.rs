//! lockd's test kit, kept apart from the product: frame builders (pnet), network-namespace
//! topologies, the benchmark's helper XDP programs (a separate BPF object the daemon never
//! loads) and the demo. The tests, the benchmark and `lockd-demo` use it; the `lockd` binary
//! does not link it.

pub mod demo;
pub mod frames;
pub mod netlab;
pub mod programs;
