//! Group commit: `xe` commands already queued behind one another are applied in memory one
//! after the other and committed in one durable transaction (one fsync for all), then the
//! dataplane follows and each gets its reply, in order. No reply goes out before the
//! transaction that holds its command is durable; if it cannot be committed, every command of
//! the group is undone and fails, whatever it read or wrote.

use std::{collections::BTreeMap, time::Instant};

use tokio::sync::oneshot;

use super::{Core, toolstack::Fence};
use crate::{
    protocol::Reply,
    store::{BadVif, Change},
    xe,
};

/// The most commands one transaction takes.
pub(in crate::daemon) const GROUP_MAX: usize = 64;

/// A command's changes, applied to the state in memory, with what undoes them.
pub(super) struct Staged {
    pub(super) changes: Vec<Change>,
    undo: Vec<Change>,
    /// The netdevs the changes touch, sorted.
    pub(super) devices: Vec<String>,
    /// Hook fences the changes ended (a valid VIF took the netdev).
    unfenced: Vec<(String, Fence)>,
    bad_before: BTreeMap<String, BadVif>,
}

/// One command of a group: its reply channel and what it came to.
pub(in crate::daemon) struct Entry {
    reply: oneshot::Sender<Reply>,
    /// The reply so far (stdout, notes on stderr); a failure is final.
    answer: Reply,
    staged: Option<Staged>,
    /// When the core took it up (`lockd_policy_update_seconds` runs from here).
    started: Instant,
}

/// The commands of one transaction, in the order they came.
#[derive(Default)]
pub(in crate::daemon) struct Group {
    entries: Vec<Entry>,
}

impl Group {
    /// Whether another command may join: room left, and no read-only command yet (one that
    /// read the group's state ends it, so what it saw is committed right after it read it).
    pub(in crate::daemon) fn open(&self) -> bool {
        self.entries.len() < GROUP_MAX
            && self
                .entries
                .last()
                .is_none_or(|e| e.staged.is_some() || e.answer.code != 0)
    }
}

impl Core {
    /// Applies `changes` to the state in memory (ending the fences of netdevs a valid VIF
    /// takes); [`Core::unstage`] undoes it.
    pub(super) fn stage(&mut self, changes: Vec<Change>) -> Staged {
        let mut devices = Vec::new();
        let mut undo = Vec::with_capacity(changes.len());
        let mut unfenced = Vec::new();
        let bad_before = self.state.bad_vifs_snapshot();
        for c in &changes {
            self.state.devices_touched(c, &mut devices);
            undo.push(self.state.apply(c.clone()));
            self.state.devices_touched(c, &mut devices);
            // A valid VIF for a netdev ends a hook's fence on it.
            if let Change::PutVif(v) = c {
                for d in v.devices() {
                    if let Some(f) = self.fenced.remove(d) {
                        unfenced.push((d.clone(), f));
                    }
                }
            }
        }
        devices.sort();
        devices.dedup();
        Staged {
            changes,
            undo,
            devices,
            unfenced,
            bad_before,
        }
    }

    /// Undoes [`Core::stage`]: the state and fences as they were before it.
    pub(super) fn unstage(&mut self, s: Staged) {
        for u in s.undo.into_iter().rev() {
            self.state.apply(u);
        }
        self.state.restore_bad_vifs(s.bad_before);
        self.fenced.extend(s.unfenced);
    }

    /// Runs an `xe` command against the state as the group has left it and adds it to the
    /// group; nothing is durable, enforced or answered until [`Core::commit_group`].
    pub(in crate::daemon) fn join_group(
        &mut self,
        group: &mut Group,
        argv: &[String],
        reply: oneshot::Sender<Reply>,
    ) {
        let started = Instant::now();
        // Tests of the panic policy inject a fault here (the `test-hooks` feature only).
        #[cfg(feature = "test-hooks")]
        if argv.first().map(String::as_str) == Some("network-create")
            && std::env::var("LOCKD_FAULT").as_deref() == Ok("panic-on-network-create")
        {
            panic!("fault injected by LOCKD_FAULT");
        }
        let mut notes = String::new();
        // Host bits in a list item are accepted and stored as the network; say so.
        for a in argv.iter().skip(1) {
            if let Some((key, value)) = a.split_once('=')
                && key.to_ascii_lowercase().contains("allowed")
            {
                for n in lockd_common::policy::host_bit_notes(value) {
                    notes += &format!("lockd: note: {n}\n");
                }
            }
        }
        let (answer, staged) = match xe::execute(&self.state, self, argv) {
            Err(e) => (Reply::fail(1, e), None),
            Ok(out) => {
                let staged = (!out.changes.is_empty()).then(|| self.stage(out.changes));
                let answer = Reply {
                    code: 0,
                    stdout: out.output,
                    stderr: notes,
                };
                (answer, staged)
            }
        };
        group.entries.push(Entry {
            reply,
            answer,
            staged,
            started,
        });
    }

    /// Commits the group's changes in one transaction, makes the dataplane follow, and
    /// answers each command in order.
    pub(in crate::daemon) fn commit_group(&mut self, group: Group) {
        let Group { entries } = group;
        let changes: Vec<Change> = entries
            .iter()
            .filter_map(|e| e.staged.as_ref())
            .flat_map(|s| s.changes.iter().cloned())
            .collect();
        if let Err(e) = self.store.commit(&changes) {
            let mut entries = entries;
            for e in entries.iter_mut().rev() {
                if let Some(s) = e.staged.take() {
                    self.unstage(s);
                }
            }
            let why = format!("{e}; nothing was changed");
            for e in entries {
                // One that failed on its own keeps its own error.
                let answer = if e.answer.code != 0 { e.answer } else { Reply::fail(1, &why) };
                let _gone = e.reply.send(answer);
            }
            return;
        }
        // Each netdev once; a command is told of the holds among its own netdevs.
        let mut holds: std::collections::HashMap<String, Option<String>> = Default::default();
        let mut warnings = Vec::with_capacity(entries.len());
        for e in &entries {
            let mut w = String::new();
            for d in e.staged.iter().flat_map(|s| &s.devices) {
                if !holds.contains_key(d) {
                    let line = self.reconcile(std::slice::from_ref(d)).pop();
                    holds.insert(d.clone(), line);
                }
                if let Some(Some(line)) = holds.get(d) {
                    w += &format!("lockd: warning: {line}\n");
                }
            }
            warnings.push(w);
        }
        let stored: Vec<&Entry> = entries.iter().filter(|e| e.staged.is_some()).collect();
        if !stored.is_empty() {
            self.group_commands.observe(stored.len() as f64);
            // Each command that changed policy, from when the core took it up.
            for e in &stored {
                self.update_seconds.observe(e.started.elapsed().as_secs_f64());
            }
            tracing::debug!(
                took_us = stored[0].started.elapsed().as_micros() as u64,
                commands = entries.len(),
                devices = holds.len(),
                "commands applied in one transaction"
            );
        }
        for (Entry { reply, mut answer, .. }, w) in entries.into_iter().zip(warnings) {
            answer.stderr += &w;
            let _gone = reply.send(answer);
        }
    }
}
