//! The host's copy of the pool's keys: every key under the prefix as etcd last gave it, with
//! its revision, in one SQLite file beside the daemon's other state (`etcd-cache.db`). A
//! daemon that starts while etcd is unreachable enforces what it holds, and catches up from
//! its revision when etcd is back.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::store::StoreError;

/// The cache's file in the state directory.
pub const CACHE_FILE: &str = "etcd-cache.db";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS kv (
    key TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL,
    mod_revision INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
";

/// One key as etcd gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Kv {
    pub(super) key: String,
    pub(super) value: Vec<u8>,
    pub(super) mod_revision: i64,
}

/// What the cache holds: the keys, the revision they are at, and the store they came from.
pub(super) struct Cached {
    pub(super) kvs: Vec<Kv>,
    pub(super) revision: i64,
}

pub(super) struct Cache {
    conn: Connection,
    path: PathBuf,
}

impl Cache {
    /// Opens (creating) the cache of store `identity` (its endpoints and prefix): a cache of
    /// another store is emptied, never enforced.
    pub(super) fn open(dir: &Path, identity: &str) -> Result<Self, StoreError> {
        let path = dir.join(CACHE_FILE);
        let err = |e: &dyn ToString| StoreError::Read {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        let conn = Connection::open(&path).map_err(|e| err(&e))?;
        let setup = || -> rusqlite::Result<()> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.execute_batch(SCHEMA)?;
            let stored: Option<String> = conn
                .query_row("SELECT value FROM meta WHERE name = 'store'", [], |r| r.get(0))
                .optional()?;
            if stored.as_deref() != Some(identity) {
                conn.execute_batch("DELETE FROM kv; DELETE FROM meta;")?;
                conn.execute(
                    "INSERT INTO meta (name, value) VALUES ('store', ?1)",
                    [identity],
                )?;
            }
            Ok(())
        };
        setup().map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        Ok(Self { conn, path })
    }

    fn write_err(&self, e: rusqlite::Error) -> StoreError {
        StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        }
    }

    /// Everything cached.
    pub(super) fn load(&self) -> Result<Cached, StoreError> {
        let read = || -> rusqlite::Result<Cached> {
            let revision = self
                .conn
                .query_row("SELECT value FROM meta WHERE name = 'revision'", [], |r| {
                    r.get::<_, String>(0)
                })
                .optional()?
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let mut stmt = self
                .conn
                .prepare("SELECT key, value, mod_revision FROM kv ORDER BY key")?;
            let kvs = stmt
                .query_map([], |r| {
                    Ok(Kv {
                        key: r.get(0)?,
                        value: r.get(1)?,
                        mod_revision: r.get(2)?,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            Ok(Cached { kvs, revision })
        };
        read().map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Records keys put (`Some`) and deleted (`None`), each at its revision; with `revision`,
    /// every change up to it is in (the watch's), without, not yet (this host's own commit,
    /// which earlier changes of other hosts may still be on their way before).
    pub(super) fn update(
        &mut self,
        changes: &[(String, Option<Vec<u8>>, i64)],
        revision: Option<i64>,
    ) -> Result<(), StoreError> {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            for (key, value, rev) in changes {
                match value {
                    Some(v) => tx
                        .prepare_cached(
                            "INSERT OR REPLACE INTO kv (key, value, mod_revision) VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![key, v, rev])?,
                    None => tx
                        .prepare_cached("DELETE FROM kv WHERE key = ?1")?
                        .execute([key])?,
                };
            }
            if let Some(r) = revision {
                set_revision(&tx, r)?;
            }
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| self.write_err(e))
    }

    /// Replaces everything with `kvs` at `revision` (a full read of the store).
    pub(super) fn replace(&mut self, kvs: &[Kv], revision: i64) -> Result<(), StoreError> {
        let run = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            tx.execute("DELETE FROM kv", [])?;
            for kv in kvs {
                tx.prepare_cached("INSERT INTO kv (key, value, mod_revision) VALUES (?1, ?2, ?3)")?
                    .execute(params![kv.key, kv.value, kv.mod_revision])?;
            }
            set_revision(&tx, revision)?;
            tx.commit()
        };
        run(&mut self.conn).map_err(|e| self.write_err(e))
    }
}

fn set_revision(tx: &rusqlite::Transaction<'_>, revision: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT OR REPLACE INTO meta (name, value) VALUES ('revision', ?1)")?
        .execute([revision.to_string()])?;
    Ok(())
}
