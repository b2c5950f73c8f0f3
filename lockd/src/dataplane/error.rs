//! The dataplane's errors: each names what failed (a map, a program, a pin path).

use std::path::PathBuf;

use aya::{maps::MapError, programs::ProgramError};
use lockd_common::{MAP_TABLE4, MAP_TABLE6, MAX_VIFS};

/// Errors of the dataplane loader.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    /// The object did not load (verifier rejection, missing privileges, no BTF ...).
    #[error("loading the eBPF object failed: {0}")]
    Load(#[from] aya::EbpfError),
    /// A program could not be loaded, attached, detached or run.
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    /// The clsact qdisc the TC programs hang from could not be added to a netdev.
    #[error("clsact qdisc on {device}: {source}")]
    Qdisc {
        device: String,
        #[source]
        source: aya::programs::tc::TcError,
    },
    /// A pinned link is not of the expected kind.
    #[error("pinned link: {0}")]
    Link(#[source] aya::programs::links::LinkError),
    /// A map is missing from the object or has the wrong type.
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    /// Every counter slot is taken.
    #[error("no free VIF slot: lockd enforces at most {MAX_VIFS} VIFs")]
    NoSlot,
    /// The VIF has no policy in the dataplane.
    #[error("ifindex {0} has no policy")]
    UnknownIfindex(u32),
    /// The VIF already has the program attached.
    #[error("ifindex {0} is already attached")]
    AlreadyAttached(u32),
    /// The RCU barrier syscall failed.
    #[error("waiting for an RCU grace period failed: {0}")]
    Barrier(#[source] std::io::Error),
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] std::io::Error),
    /// A pin on bpffs could not be made, read or removed.
    #[error("bpffs pin {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The address table arrays have no free region big enough.
    #[error(
        "the {MAP_TABLE4}/{MAP_TABLE6} address tables are full (too many allowed addresses across all VIFs)"
    )]
    TableFull,
    /// A map could not be mapped into this process.
    #[error("mapping {name} into memory failed: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// Reading the number of CPUs failed.
    #[error("rate limit shaper: {0}")]
    Shaper(std::io::Error),
    #[error("reading the possible CPUs failed: {0}")]
    Cpus(#[source] std::io::Error),
}

pub(super) type Result<T, E = DataplaneError> = std::result::Result<T, E>;

pub(super) fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

pub(super) fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DataplaneError {
    move |source| DataplaneError::Program { name, source }
}
