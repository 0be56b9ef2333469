//! The embedded store: one SQLite file (WAL) holding the job queue, the deploy history,
//! locks and the package files already seen.

use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension};

use crate::deploy::command::NodeResult;
use crate::deploy::engine::{Deploy, Notice};
use crate::deploy::job::{DeployJob, JobId};
use crate::deploy::ports::{
    Backlog, Enqueued, HistoryEntry, JobQueue, Ledger, LockInfo, PortError,
};
use crate::deploy::status::JobStatus;
use crate::deploy::version::Version;
use crate::outbound::notify::NotifyState;

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
CREATE TABLE IF NOT EXISTS deploys (
    job_id     TEXT PRIMARY KEY,
    state      TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS notify_state (
    job_id TEXT PRIMARY KEY,
    state  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS commands (
    key        TEXT NOT NULL,
    node       TEXT NOT NULL,
    status     TEXT NOT NULL,
    result     TEXT,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (key, node)
);
CREATE TABLE IF NOT EXISTS notices (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL,
    notice  TEXT NOT NULL,
    at      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS notices_by_job ON notices(job_id, seq);
CREATE TABLE IF NOT EXISTS worker_lease (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    holder  TEXT NOT NULL,
    expires TEXT NOT NULL
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
    pub status: JobStatus,
    pub job: DeployJob,
}

impl QueuedJob {
    fn decode(seq: i64, status: &str, job: &str) -> Result<QueuedJob, PortError> {
        Ok(QueuedJob {
            seq,
            status: status.parse()?,
            job: DeployJob::from_json(job)?,
        })
    }
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

    pub async fn jobs(&self, status: Option<JobStatus>) -> Result<Vec<QueuedJob>, PortError> {
        let status = status.map(JobStatus::as_str);
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
            .map(|(seq, status, job)| QueuedJob::decode(seq, &status, &job))
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

    /// Marks the oldest queued job whose app+env has nothing running as running, and
    /// returns it: deploys of one app+env never overlap, others run side by side.
    pub async fn claim_next(&self) -> Result<Option<QueuedJob>, PortError> {
        let row: Option<(i64, String)> = self
            .with(|c| {
                let tx = c.transaction()?;
                let row: Option<(i64, String)> = tx
                    .query_row(
                        "SELECT seq, job FROM jobs j WHERE status = 'queued' AND NOT EXISTS
                           (SELECT 1 FROM jobs r WHERE r.grp = j.grp AND r.status = 'running')
                         ORDER BY seq LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                if let Some((seq, _)) = &row {
                    tx.execute(
                        "UPDATE jobs SET status = 'running' WHERE seq = ?1",
                        params![seq],
                    )?;
                }
                tx.commit()?;
                Ok(row)
            })
            .await?;
        row.map(|(seq, job)| {
            Ok(QueuedJob {
                seq,
                status: JobStatus::Running,
                job: DeployJob::from_json(&job)?,
            })
        })
        .transpose()
    }

    pub async fn set_status(&self, job: &JobId, status: JobStatus) -> Result<(), PortError> {
        let (id, status) = (job.to_string(), status.as_str());
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET status = ?2 WHERE id = ?1",
                params![id, status],
            )
            .map(drop)
        })
        .await
    }

    pub async fn job(&self, job: &JobId) -> Result<Option<QueuedJob>, PortError> {
        let id = job.to_string();
        let row: Option<(i64, String, String)> = self
            .with(move |c| {
                c.query_row(
                    "SELECT seq, status, job FROM jobs WHERE id = ?1",
                    params![id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
            })
            .await?;
        row.map(|(seq, status, job)| QueuedJob::decode(seq, &status, &job))
            .transpose()
    }

    /// Checkpoints a deploy; called after every step.
    pub async fn save_deploy(&self, deploy: &Deploy, now: DateTime<Utc>) -> Result<(), PortError> {
        let (id, state) = (deploy.job.id.to_string(), serde_json::to_string(deploy)?);
        self.with(move |c| {
            c.execute(
                "INSERT INTO deploys (job_id, state, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(job_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at",
                params![id, state, now.to_rfc3339()],
            )
            .map(drop)
        })
        .await
    }

    /// What the notifiers remember of a deploy (its Slack message, say).
    pub async fn save_notify(&self, job: &JobId, state: &NotifyState) -> Result<(), PortError> {
        let (id, state) = (job.to_string(), serde_json::to_string(state)?);
        self.with(move |c| {
            c.execute(
                "INSERT INTO notify_state (job_id, state) VALUES (?1, ?2)
                 ON CONFLICT(job_id) DO UPDATE SET state = excluded.state",
                params![id, state],
            )
            .map(drop)
        })
        .await
    }

    pub async fn load_notify(&self, job: &JobId) -> Result<NotifyState, PortError> {
        let id = job.to_string();
        let state: Option<String> = self
            .with(move |c| {
                c.query_row(
                    "SELECT state FROM notify_state WHERE job_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        Ok(state
            .map(|s| serde_json::from_str(&s))
            .transpose()?
            .unwrap_or_default())
    }

    pub async fn load_deploy(&self, job: &JobId) -> Result<Option<Deploy>, PortError> {
        let id = job.to_string();
        let state: Option<String> = self
            .with(move |c| {
                c.query_row(
                    "SELECT state FROM deploys WHERE job_id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
            })
            .await?;
        Ok(state.map(|s| serde_json::from_str(&s)).transpose()?)
    }

    /// Jobs marked running: after a crash, these are the deploys to resume.
    pub async fn running_jobs(&self) -> Result<Vec<QueuedJob>, PortError> {
        self.jobs(Some(JobStatus::Running)).await
    }

    /// The recorded result of every node of command `key` that has one; `None` while the
    /// node's command was started but not finished (by this process or one that died).
    pub async fn command_results(
        &self,
        key: &str,
    ) -> Result<Vec<(String, Option<NodeResult>)>, PortError> {
        let key = key.to_string();
        let rows: Vec<(String, Option<String>)> = self
            .with(move |c| {
                let mut st = c.prepare("SELECT node, result FROM commands WHERE key = ?1")?;
                let rows = st.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(node, result)| Ok((node, result.map(|r| serde_json::from_str(&r)).transpose()?)))
            .collect()
    }

    /// Notes, durably and before anything runs, that `key` is starting on `node`.
    pub async fn command_started(
        &self,
        key: &str,
        node: &str,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let (key, node) = (key.to_string(), node.to_string());
        self.with(move |c| {
            c.execute(
                "INSERT INTO commands (key, node, status, updated_at) VALUES (?1, ?2, 'running', ?3)
                 ON CONFLICT(key, node) DO UPDATE SET status = 'running', updated_at = excluded.updated_at",
                params![key, node, now.to_rfc3339()],
            )
            .map(drop)
        })
        .await
    }

    pub async fn command_finished(
        &self,
        key: &str,
        node: &str,
        result: &NodeResult,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let (key, node, result) = (
            key.to_string(),
            node.to_string(),
            serde_json::to_string(result)?,
        );
        self.with(move |c| {
            c.execute(
                "UPDATE commands SET status = 'done', result = ?3, updated_at = ?4 WHERE key = ?1 AND node = ?2",
                params![key, node, result, now.to_rfc3339()],
            )
            .map(drop)
        })
        .await
    }

    pub async fn add_notices(
        &self,
        job: &JobId,
        notices: &[Notice],
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let id = job.to_string();
        let rows = notices
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        self.with(move |c| {
            let tx = c.transaction()?;
            for n in rows {
                tx.execute(
                    "INSERT INTO notices (job_id, notice, at) VALUES (?1, ?2, ?3)",
                    params![id, n, now.to_rfc3339()],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// The job's notices after `after` (a sequence number), oldest first.
    pub async fn notices(&self, job: &JobId, after: i64) -> Result<Vec<(i64, Notice)>, PortError> {
        let id = job.to_string();
        let rows: Vec<(i64, String)> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT seq, notice FROM notices WHERE job_id = ?1 AND seq > ?2 ORDER BY seq",
                )?;
                let rows = st.query_map(params![id, after], |r| Ok((r.get(0)?, r.get(1)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(seq, n)| Ok((seq, serde_json::from_str(&n)?)))
            .collect()
    }

    /// Takes or renews the single worker lease: one process runs deploys from this store
    /// at a time. False while another holder's lease is unexpired.
    pub async fn take_worker_lease(
        &self,
        holder: &str,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<bool, PortError> {
        let holder = holder.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let current: Option<(String, String)> = tx
                .query_row("SELECT holder, expires FROM worker_lease WHERE id = 1", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            let free = match &current {
                None => true,
                Some((h, _)) if *h == holder => true,
                Some((_, expires)) => DateTime::parse_from_rfc3339(expires).map_or(true, |e| e <= now),
            };
            if free {
                tx.execute(
                    "INSERT INTO worker_lease (id, holder, expires) VALUES (1, ?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET holder = excluded.holder, expires = excluded.expires",
                    params![holder, (now + ttl).to_rfc3339()],
                )?;
            }
            tx.commit()?;
            Ok(free)
        })
        .await
    }

    pub async fn drop_worker_lease(&self, holder: &str) -> Result<(), PortError> {
        let holder = holder.to_string();
        self.with(move |c| {
            c.execute(
                "DELETE FROM worker_lease WHERE holder = ?1",
                params![holder],
            )
            .map(drop)
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
impl Backlog for Store {
    async fn newer_queued(&self, job: &DeployJob) -> Result<Option<Version>, PortError> {
        let (id, grp) = (job.id.to_string(), job.group());
        let bodies: Vec<String> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT job FROM jobs WHERE grp = ?2 AND status = 'queued'
                       AND seq > (SELECT seq FROM jobs WHERE id = ?1)",
                )?;
                let rows = st.query_map(params![id, grp], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        let mut newest: Option<Version> = None;
        for body in bodies {
            let v = DeployJob::from_json(&body)?.version;
            if v.is_newer_than(newest.as_ref().unwrap_or(&job.version)) {
                newest = Some(v);
            }
        }
        Ok(newest)
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
        let (app, env, json, id) = (
            job.app.clone(),
            job.env.clone(),
            job.to_json(),
            job.id.clone(),
        );
        self.with(move |c| {
            let tx = c.transaction()?;
            let latest: Option<String> = tx
                .query_row(
                    "SELECT job FROM history WHERE app = ?1 AND env = ?2 ORDER BY seq DESC LIMIT 1",
                    params![app, env],
                    |r| r.get(0),
                )
                .optional()?;
            // A replayed step records once: the job is live already.
            let already = latest
                .map(|l| DeployJob::from_json(&l).map(|j| j.id == id))
                .transpose()
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?
                .unwrap_or(false);
            if !already {
                tx.execute(
                    "INSERT INTO history (app, env, job, recorded_at) VALUES (?1, ?2, ?3, ?4)",
                    params![app, env, json, now.to_rfc3339()],
                )?;
            }
            tx.commit()
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

    async fn release(&self, app: &str, env: &str, job: &JobId) -> Result<(), PortError> {
        let (app, env, job) = (app.to_string(), env.to_string(), job.clone());
        self.with(move |c| {
            let tx = c.transaction()?;
            let held = decode_lock(
                tx.query_row(
                    "SELECT info FROM locks WHERE app = ?1 AND env = ?2",
                    params![app, env],
                    |r| r.get(0),
                )
                .optional()?,
            )?;
            if held.is_some_and(|l| l.job.as_ref() == Some(&job)) {
                tx.execute(
                    "DELETE FROM locks WHERE app = ?1 AND env = ?2",
                    params![app, env],
                )?;
            }
            tx.commit()
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
