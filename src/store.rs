//! The embedded store: one SQLite file (WAL) holding the job queue, the deploy history,
//! locks and the package files already seen.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::job::DeployJob;
use crate::ports::{Enqueued, HistoryEntry, JobQueue, Ledger, LockInfo, PortError};

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    id        TEXT NOT NULL UNIQUE,
    grp       TEXT NOT NULL,
    status    TEXT NOT NULL DEFAULT 'queued',
    job       TEXT NOT NULL,
    queued_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs(status, seq);
CREATE TABLE IF NOT EXISTS history (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    app         TEXT NOT NULL,
    env         TEXT NOT NULL,
    job         TEXT NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_target ON history(app, env, seq);
CREATE TABLE IF NOT EXISTS locks (
    app  TEXT NOT NULL,
    env  TEXT NOT NULL,
    info TEXT NOT NULL,
    PRIMARY KEY (app, env)
);
CREATE TABLE IF NOT EXISTS seen_files (
    dir     TEXT NOT NULL,
    name    TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (dir, name)
);
";

/// A queued job as the store keeps it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueuedJob {
    pub seq: i64,
    pub status: String,
    pub job: DeployJob,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, PortError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        // WAL lets the CLI read while `serve` writes; FULL sync because a job the webhook
        // answered 202 for must survive a power cut.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=5000;",
        )?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection off the async threads.
    async fn with<T, F>(&self, f: F) -> Result<T, PortError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| "store mutex poisoned by an earlier panic")?;
            f(&mut guard).map_err(PortError::from)
        })
        .await?
    }

    pub async fn jobs(&self, status: Option<&str>) -> Result<Vec<QueuedJob>, PortError> {
        let status = status.map(str::to_string);
        let rows: Vec<(i64, String, String)> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT seq, status, job FROM jobs WHERE ?1 IS NULL OR status = ?1 ORDER BY seq",
                )?;
                let rows = st.query_map(params![status], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(seq, status, job)| {
                Ok(QueuedJob {
                    seq,
                    status,
                    job: DeployJob::from_json(&job)?,
                })
            })
            .collect()
    }

    /// The names in `dir` not seen before.
    pub async fn unseen_files(
        &self,
        dir: &str,
        names: Vec<String>,
    ) -> Result<Vec<String>, PortError> {
        let dir = dir.to_string();
        self.with(move |c| {
            let mut st =
                c.prepare("SELECT EXISTS(SELECT 1 FROM seen_files WHERE dir = ?1 AND name = ?2)")?;
            let mut new = vec![];
            for name in names {
                if !st.query_row(params![dir, name], |r| r.get::<_, bool>(0))? {
                    new.push(name);
                }
            }
            Ok(new)
        })
        .await
    }

    pub async fn mark_seen(
        &self,
        dir: &str,
        names: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let dir = dir.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            for name in names {
                tx.execute(
                    "INSERT OR IGNORE INTO seen_files (dir, name, seen_at) VALUES (?1, ?2, ?3)",
                    params![dir, name, now.to_rfc3339()],
                )?;
            }
            tx.commit()
        })
        .await
    }

    pub async fn has_seen_dir(&self, dir: &str) -> Result<bool, PortError> {
        let dir = dir.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM seen_files WHERE dir = ?1)",
                params![dir],
                |r| r.get(0),
            )
        })
        .await
    }
}

#[async_trait]
impl JobQueue for Store {
    async fn enqueue(&self, jobs: &[DeployJob]) -> Result<Vec<Enqueued>, PortError> {
        let rows: Vec<(String, String, String, String)> = jobs
            .iter()
            .map(|j| {
                (
                    j.id.to_string(),
                    j.group(),
                    j.to_json(),
                    j.requested_at.to_rfc3339(),
                )
            })
            .collect();
        self.with(move |c| {
            let tx = c.transaction()?;
            let mut out = Vec::with_capacity(rows.len());
            for (id, grp, job, at) in rows {
                let n = tx.execute(
                    "INSERT OR IGNORE INTO jobs (id, grp, job, queued_at) VALUES (?1, ?2, ?3, ?4)",
                    params![id, grp, job, at],
                )?;
                out.push(if n == 1 {
                    Enqueued::Queued
                } else {
                    Enqueued::Duplicate
                });
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

fn decode_lock(info: Option<String>) -> Result<Option<LockInfo>, rusqlite::Error> {
    info.map(|s| {
        serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

#[async_trait]
impl Ledger for Store {
    async fn record(&self, job: &DeployJob, now: DateTime<Utc>) -> Result<(), PortError> {
        let (app, env, json) = (job.app.clone(), job.env.clone(), job.to_json());
        self.with(move |c| {
            c.execute(
                "INSERT INTO history (app, env, job, recorded_at) VALUES (?1, ?2, ?3, ?4)",
                params![app, env, json, now.to_rfc3339()],
            )
            .map(drop)
        })
        .await
    }

    async fn history(
        &self,
        app: &str,
        env: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, PortError> {
        let (app, env) = (app.to_string(), env.to_string());
        let rows: Vec<(String, String)> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT job, recorded_at FROM history WHERE app = ?1 AND env = ?2 ORDER BY seq DESC LIMIT ?3",
                )?;
                let rows = st.query_map(params![app, env, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(job, at)| {
                Ok(HistoryEntry {
                    job: DeployJob::from_json(&job)?,
                    recorded_at: DateTime::parse_from_rfc3339(&at)?.with_timezone(&Utc),
                })
            })
            .collect()
    }

    async fn try_lock(
        &self,
        app: &str,
        env: &str,
        lock: &LockInfo,
        now: DateTime<Utc>,
    ) -> Result<Result<(), LockInfo>, PortError> {
        let (app, env, info) = (
            app.to_string(),
            env.to_string(),
            serde_json::to_string(lock)?,
        );
        self.with(move |c| {
            let tx = c.transaction()?;
            let current = decode_lock(
                tx.query_row(
                    "SELECT info FROM locks WHERE app = ?1 AND env = ?2",
                    params![app, env],
                    |r| r.get(0),
                )
                .optional()?,
            )?;
            if let Some(held) = current.filter(|l| !l.is_expired(now)) {
                return Ok(Err(held));
            }
            tx.execute(
                "INSERT OR REPLACE INTO locks (app, env, info) VALUES (?1, ?2, ?3)",
                params![app, env, info],
            )?;
            tx.commit()?;
            Ok(Ok(()))
        })
        .await
    }

    async fn unlock(&self, app: &str, env: &str) -> Result<Option<LockInfo>, PortError> {
        let (app, env) = (app.to_string(), env.to_string());
        self.with(move |c| {
            decode_lock(
                c.query_row(
                    "DELETE FROM locks WHERE app = ?1 AND env = ?2 RETURNING info",
                    params![app, env],
                    |r| r.get(0),
                )
                .optional()?,
            )
        })
        .await
    }

    async fn lock_state(
        &self,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError> {
        let (app, env) = (app.to_string(), env.to_string());
        let lock = self
            .with(move |c| {
                decode_lock(
                    c.query_row(
                        "SELECT info FROM locks WHERE app = ?1 AND env = ?2",
                        params![app, env],
                        |r| r.get(0),
                    )
                    .optional()?,
                )
            })
            .await?;
        Ok(lock.filter(|l| !l.is_expired(now)))
    }
}
