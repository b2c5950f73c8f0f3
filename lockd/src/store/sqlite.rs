//! The default store: one SQLite file (`lockd.db`), one row per network and per VIF, WAL with
//! `synchronous=FULL`, so a commit is durable when it returns. `sqlite3 lockd.db 'select * from
//! vif'` shows the state as the operator set it.

use std::path::{Path, PathBuf};

use lockd_common::{
    policy::{
        DefaultLockingMode, LockingMode, format_mac, parse_ipv4_list, parse_ipv6_list, parse_mac,
    },
    settings::{NetworkSettings, Qos, QosAlgorithm, VifSettings, item4, item6},
};
use rusqlite::{Connection, OpenFlags, params};

use super::{BadVif, Change, State, Store, StoreError};

/// The database file in the state directory.
pub const DB_FILE: &str = "lockd.db";
/// Schema version (`PRAGMA user_version`).
const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS network (
    uuid TEXT PRIMARY KEY NOT NULL,
    name_label TEXT NOT NULL,
    default_locking_mode TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS vif (
    uuid TEXT PRIMARY KEY NOT NULL,
    network_uuid TEXT NOT NULL,
    device TEXT NOT NULL,
    mac TEXT NOT NULL,
    vm_uuid TEXT,
    locking_mode TEXT NOT NULL,
    ipv4_allowed TEXT NOT NULL,
    ipv6_allowed TEXT NOT NULL,
    qos_algorithm_type TEXT NOT NULL,
    qos_kbps INTEGER,
    qos_timeslice_us INTEGER,
    extra_devices TEXT NOT NULL DEFAULT ''
);
";

/// Commits after which the WAL is checkpointed inline if the daemon was never idle meanwhile:
/// it bounds the WAL (about three frames a commit).
const CHECKPOINT_EVERY: u32 = 512;

/// The SQLite store.
pub struct SqliteStore {
    conn: Connection,
    path: PathBuf,
    /// Commits since the WAL was last checkpointed.
    commits: u32,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn row_err(path: &Path, table: &str, uuid: &str, reason: impl ToString) -> StoreError {
    StoreError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("{table} {uuid}: {}", reason.to_string()),
    }
}

/// A `vif` row's columns as SQLite gives them, in the order `read_vifs` selects them.
type VifRow = (
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    String,
    String,
    String,
    Option<i64>,
    Option<i64>,
    String,
);

/// A kbps / timeslice value as SQLite holds it (i64).
fn int(v: Option<u64>) -> Option<i64> {
    v.map(|n| i64::try_from(n).unwrap_or(i64::MAX))
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/lockd.db`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        let read = |e: &dyn ToString| StoreError::Read {
            path: path.clone(),
            reason: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| read(&e))?;
        let conn = Connection::open(&path).map_err(|e| read(&e))?;
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        };
        // The first statement reads the file header: a file that is not a database fails here.
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Corrupt {
                path,
                reason: format!("schema version {version} is newer than this lockd's"),
            });
        }
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(corrupt)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(corrupt)?;
        conn.execute_batch(SCHEMA).map_err(corrupt)?;
        if version == 1 {
            // Version 2 added the netdevs a VIF has beside its first (comma separated).
            conn.execute_batch("ALTER TABLE vif ADD COLUMN extra_devices TEXT NOT NULL DEFAULT ''")
                .map_err(corrupt)?;
        }
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(corrupt)?;
        // Checkpoints are lockd's (Store::idle, or every CHECKPOINT_EVERY commits), never
        // inside a commit at SQLite's own moment.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(corrupt)?;
        Ok(Self {
            conn,
            path,
            commits: 0,
        })
    }

    /// Opens an existing database read-only (tests, tools).
    pub fn open_read_only(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(DB_FILE);
        let conn =
            Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| {
                StoreError::Read {
                    path: path.clone(),
                    reason: e.to_string(),
                }
            })?;
        Ok(Self {
            conn,
            path,
            commits: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&mut self, changes: &[Change]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for c in changes {
            match c {
                Change::PutNetwork(n) => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO network (uuid, name_label, default_locking_mode) \
                         VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![
                        n.uuid,
                        n.name_label,
                        n.default_locking_mode.to_string()
                    ])?;
                }
                Change::DeleteNetwork(u) => {
                    tx.prepare_cached("DELETE FROM network WHERE uuid = ?1")?
                        .execute([u])?;
                }
                Change::PutVif(v) => {
                    let v4: Vec<String> = v.ipv4_allowed.iter().map(item4).collect();
                    let v6: Vec<String> = v.ipv6_allowed.iter().map(item6).collect();
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO vif (uuid, network_uuid, device, mac, vm_uuid, \
                         locking_mode, ipv4_allowed, ipv6_allowed, qos_algorithm_type, qos_kbps, \
                         qos_timeslice_us, extra_devices) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                    )?
                    .execute(params![
                        v.uuid,
                        v.network_uuid,
                        v.device,
                        format_mac(v.mac),
                        v.vm_uuid,
                        v.locking_mode.to_string(),
                        v4.join(","),
                        v6.join(","),
                        v.qos.algorithm.word(),
                        int(v.qos.kbps),
                        int(v.qos.timeslice_us),
                        v.extra_devices.join(","),
                    ])?;
                }
                Change::DeleteVif(u) => {
                    tx.prepare_cached("DELETE FROM vif WHERE uuid = ?1")?
                        .execute([u])?;
                }
            }
        }
        tx.commit()
    }

    fn read_networks(&self, state: &mut State) -> Result<(), StoreError> {
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let mut stmt = self
            .conn
            .prepare("SELECT uuid, name_label, default_locking_mode FROM network")
            .map_err(corrupt)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(corrupt)?;
        for row in rows {
            let (uuid, name_label, mode) = row.map_err(corrupt)?;
            let default_locking_mode = mode
                .parse::<DefaultLockingMode>()
                .map_err(|e| row_err(&self.path, "network", &uuid, e))?;
            state.apply(Change::PutNetwork(NetworkSettings {
                uuid,
                name_label,
                default_locking_mode,
            }));
        }
        Ok(())
    }

    fn read_vifs(&self, state: &mut State) -> Result<(), StoreError> {
        let corrupt = |e: rusqlite::Error| StoreError::Corrupt {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT uuid, network_uuid, device, mac, vm_uuid, locking_mode, ipv4_allowed, \
                 ipv6_allowed, qos_algorithm_type, qos_kbps, qos_timeslice_us, extra_devices FROM vif",
            )
            .map_err(corrupt)?;
        // A row whose columns cannot be read or whose values are not valid is kept out of the
        // state as a bad row (its VIF is held disabled, the rest goes on); only a table that
        // cannot be read at all is corrupt.
        let rows = stmt
            .query_map([], |r| {
                let row = (|| -> rusqlite::Result<VifRow> {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                        r.get(8)?,
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                })();
                let text = |i: usize| match r.get_ref(i) {
                    Ok(rusqlite::types::ValueRef::Text(t)) => {
                        String::from_utf8_lossy(t).into_owned()
                    }
                    Ok(rusqlite::types::ValueRef::Integer(n)) => n.to_string(),
                    _ => String::new(),
                };
                Ok((row, text(0), text(2), text(11)))
            })
            .map_err(corrupt)?;
        for raw in rows {
            let (row, raw_uuid, raw_device, raw_extra) = raw.map_err(corrupt)?;
            let bad_row = |reason: String| BadVif {
                uuid: raw_uuid.clone(),
                devices: std::iter::once(raw_device.clone())
                    .chain(raw_extra.split(',').map(str::to_string))
                    .filter(|d| !d.is_empty())
                    .collect(),
                reason,
            };
            match row.map_err(|e| e.to_string()).and_then(Self::vif_of) {
                Ok(vif) => match crate::xe::params::check_vif(&vif) {
                    Ok(()) => {
                        state.apply(Change::PutVif(vif));
                    }
                    Err((key, reason)) => state.add_bad_vif(bad_row(format!("{key}: {reason}"))),
                },
                Err(reason) => state.add_bad_vif(bad_row(reason)),
            }
        }
        Ok(())
    }

    /// A VIF from its row's columns, or what is wrong with them.
    fn vif_of(
        (uuid, network_uuid, device, mac, vm_uuid, mode, v4, v6, qt, kbps, ts, extra): VifRow,
    ) -> Result<VifSettings, String> {
        let bad = |field: &str, e: &dyn ToString| format!("{field}: {}", e.to_string());
        let unsigned = |field: &str, v: Option<i64>| {
            v.map(|n| u64::try_from(n).map_err(|e| bad(field, &e)))
                .transpose()
        };
        if uuid.is_empty() {
            return Err("uuid: empty".into());
        }
        crate::xe::params::device(&device).map_err(|e| bad("device", &e))?;
        let qos = Qos {
            algorithm: QosAlgorithm::from_word(&qt).ok_or_else(|| bad("qos_algorithm_type", &qt))?,
            kbps: unsigned("qos_kbps", kbps)?,
            timeslice_us: unsigned("qos_timeslice_us", ts)?,
        };
        Ok(VifSettings {
            mac: parse_mac(&mac).map_err(|e| bad("mac", &e))?,
            locking_mode: mode
                .parse::<LockingMode>()
                .map_err(|e| bad("locking_mode", &e))?,
            ipv4_allowed: parse_ipv4_list(&v4).map_err(|e| bad("ipv4_allowed", &e))?,
            ipv6_allowed: parse_ipv6_list(&v6).map_err(|e| bad("ipv6_allowed", &e))?,
            qos,
            network_uuid,
            device,
            extra_devices: extra
                .split(',')
                .filter(|d| !d.is_empty())
                .map(str::to_string)
                .collect(),
            vm_uuid,
            uuid,
        })
    }
}

impl Store for SqliteStore {
    fn load(&mut self) -> Result<State, StoreError> {
        let mut state = State::default();
        self.read_networks(&mut state)?;
        self.read_vifs(&mut state)?;
        Ok(state)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.write(changes).map_err(|e| StoreError::Write {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        self.commits += 1;
        if self.commits >= CHECKPOINT_EVERY {
            self.idle();
        }
        Ok(())
    }

    fn idle_due(&self) -> bool {
        self.commits > 0
    }

    /// Moves the WAL into the database file on the writer's own connection, so that every
    /// frame is backfilled and the next commit starts the WAL from its beginning again: the
    /// WAL stays a few hundred KiB, and a commit's fsync never also grows the file. (A
    /// checkpoint beside a busy writer, on another connection, never caught up: the WAL grew
    /// past 100 MB under a steady stream of commands.)
    fn idle(&mut self) {
        self.commits = 0;
        if let Err(e) = self.conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lockd-sqlite-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_undo() {
        let dir = tmp("rt");
        let mut s = SqliteStore::open(&dir).unwrap();
        let net = NetworkSettings {
            uuid: "n".into(),
            name_label: "xenbr0".into(),
            default_locking_mode: DefaultLockingMode::Disabled,
        };
        let mut vif = VifSettings::new("v".into(), "n".into(), "vif1.0".into(), [2, 0, 0, 0, 0, 1]);
        vif.ipv4_allowed = parse_ipv4_list("10.0.0.1, 10.0.2.0/24").unwrap();
        vif.ipv6_allowed = parse_ipv6_list("2001:db8::1").unwrap();
        vif.qos = Qos {
            algorithm: QosAlgorithm::Ratelimit,
            kbps: Some(1024),
            timeslice_us: None,
        };
        let changes = [Change::PutNetwork(net), Change::PutVif(vif.clone())];
        s.commit(&changes).unwrap();
        let mut want = State::default();
        let undo: Vec<Change> = changes.iter().cloned().map(|c| want.apply(c)).collect();
        drop(s);
        let mut s = SqliteStore::open(&dir).unwrap();
        let got = s.load().unwrap();
        assert_eq!(got, want);
        assert_eq!(got.vif_by_device("vif1.0"), Some(&vif));
        s.commit(&undo).unwrap();
        assert_eq!(s.load().unwrap(), State::default());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A steady stream of commits with no idle moment keeps the WAL bounded: every
    /// CHECKPOINT_EVERY commits it is checkpointed and then rewritten from its start.
    #[test]
    fn the_wal_stays_bounded_without_idle() {
        let dir = tmp("wal");
        let mut s = SqliteStore::open(&dir).unwrap();
        let mut vifs: Vec<VifSettings> = (0..64u8)
            .map(|i| VifSettings::new(format!("v{i}"), "n".into(), format!("vif{i}.0"), [2, 0, 0, 0, 0, i]))
            .collect();
        let wal = dir.join(format!("{DB_FILE}-wal"));
        let mut largest = 0;
        for k in 0..3 * CHECKPOINT_EVERY as usize {
            let v = &mut vifs[k % 64];
            v.ipv4_allowed = parse_ipv4_list(&format!("10.0.{}.{}", k / 256, k % 256)).unwrap();
            s.commit(&[Change::PutVif(v.clone())]).unwrap();
            largest = largest.max(std::fs::metadata(&wal).unwrap().len());
        }
        // A commit writes a few frames (page + 24-byte header each) after the 32-byte header.
        let bound = 32 + (CHECKPOINT_EVERY as u64 + 1) * 4 * (4096 + 24);
        assert!(largest <= bound, "WAL grew to {largest} bytes (bound {bound})");
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_database_is_refused_and_kept() {
        let dir = tmp("bad");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DB_FILE), b"this is not sqlite, it is a note").unwrap();
        let e = SqliteStore::open(&dir).unwrap_err();
        assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
        assert_eq!(
            std::fs::read(dir.join(DB_FILE)).unwrap(),
            b"this is not sqlite, it is a note"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
