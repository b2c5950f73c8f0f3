//! The one grace-period queue: what an update or removal replaced and a packet may still be
//! reading — a generation's address entries (trie keys, table regions) and `CONFIGS` copies.
//! Nothing in it is freed until one RCU grace period has passed after it was queued.

use super::encode::Entries;

/// One thing waiting for a grace period.
#[derive(Debug)]
pub(super) enum Retired {
    /// A replaced generation's address entries of a VIF.
    Entries {
        ifindex: u32,
        generation: u32,
        entries: Entries,
    },
    /// A `CONFIGS` copy no position names any more.
    Copy(u32),
}

/// Retired things, in the order they were retired.
#[derive(Debug, Default)]
pub(super) struct Garbage {
    queue: Vec<Retired>,
    /// Address entries waiting, over all `Retired::Entries`.
    entries: usize,
}

impl Garbage {
    pub(super) fn push(&mut self, r: Retired) {
        if let Retired::Entries { entries, .. } = &r {
            self.entries += entries.len();
        }
        self.queue.push(r);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Address entries waiting.
    pub(super) fn entries(&self) -> usize {
        self.entries
    }

    /// Everything waiting; the caller has just waited a grace period.
    pub(super) fn take(&mut self) -> Vec<Retired> {
        self.entries = 0;
        std::mem::take(&mut self.queue)
    }

    /// Takes a copy out of the queue (adoption found it in force after all).
    pub(super) fn reclaim_copy(&mut self, copy: u32) {
        self.queue
            .retain(|r| !matches!(r, Retired::Copy(c) if *c == copy));
    }
}
