//! The embedded store: one SQLite file (WAL) holding the job queue, the deploy history,
//! locks and the package files already seen.

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::deploy::ports::{Enqueued, PortError};
use jobs::Row;

pub mod checkpoints;
mod dora;
pub mod jobs;
mod ledger;
mod packages;
mod story;

/// A time as the store writes it (RFC 3339).
fn time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, PortError> {
    Ok(chrono::DateTime::parse_from_rfc3339(text)?.with_timezone(&chrono::Utc))
}

#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    enqueues: Arc<Mutex<Enqueues>>,
}

/// Enqueues waiting for the next commit, and whether a committer is draining them.
#[derive(Default)]
struct Enqueues {
    waiting: Vec<(Vec<Row>, Waiter)>,
    committing: bool,
}

/// Hears how its rows fared, once they are committed.
type Waiter = oneshot::Sender<Result<Vec<Enqueued>, String>>;

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
CREATE INDEX IF NOT EXISTS jobs_by_group ON jobs(grp, seq);
CREATE TABLE IF NOT EXISTS history (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    app         TEXT NOT NULL,
    env         TEXT NOT NULL,
    job         TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    left_behind TEXT,
    cleared     TEXT
);
CREATE INDEX IF NOT EXISTS history_by_target ON history(app, env, seq);
CREATE TABLE IF NOT EXISTS faulty (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    app     TEXT NOT NULL,
    env     TEXT NOT NULL,
    version TEXT NOT NULL,
    mark    TEXT NOT NULL,
    UNIQUE (app, env, version)
);
CREATE TABLE IF NOT EXISTS lock_generations (
    app  TEXT NOT NULL,
    env  TEXT NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (app, env)
);
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
CREATE TABLE IF NOT EXISTS node_versions (
    app     TEXT NOT NULL,
    env     TEXT NOT NULL,
    node    TEXT NOT NULL,
    version TEXT NOT NULL,
    job_id  TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (app, env, node)
);
CREATE TABLE IF NOT EXISTS worker_lease (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    holder  TEXT NOT NULL,
    expires TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS approvals (
    app    TEXT NOT NULL,
    env    TEXT NOT NULL,
    job_id TEXT NOT NULL,
    by     TEXT NOT NULL,
    at_ms  INTEGER NOT NULL,
    word   TEXT NOT NULL,
    PRIMARY KEY (job_id, by)
);
CREATE INDEX IF NOT EXISTS approvals_by_env ON approvals(app, env, at_ms);
CREATE TABLE IF NOT EXISTS seen_files (
    dir     TEXT NOT NULL,
    name    TEXT NOT NULL,
    seen_at TEXT NOT NULL,
    PRIMARY KEY (dir, name)
);
";

impl Store {
    pub fn open(path: &Path) -> Result<Store, PortError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        // WAL lets the CLI read while `serve` writes; FULL sync because a job the webhook
        // answered 202 for must survive a power cut. The busy timeout comes first: switching
        // to WAL and creating the schema need the write lock, which another process
        // opening the same store (a CLI next to a starting `serve`) may hold for a moment.
        conn.execute_batch(
            "PRAGMA busy_timeout=5000; PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
        )?;
        conn.execute_batch(SCHEMA)?;
        // Stores made before deploys could go live leaving nodes behind, before a deploy
        // could lift a faulty mark, and before jobs kept their times and reasons. (Those
        // from when commands kept their pid keep the column, unused: nodes keep a record
        // of their runs now.)
        for (table, column) in [
            ("history", "left_behind TEXT"),
            ("history", "cleared TEXT"),
            ("jobs", "started_at TEXT"),
            ("jobs", "ended_at TEXT"),
            ("jobs", "reason TEXT"),
            // Who cancelled a job the worker drives before it started; '' once it started.
            ("jobs", "cancel_by TEXT"),
            ("commands", "started_at TEXT"),
        ] {
            let name = column.split(' ').next().unwrap_or(column);
            let has: bool = conn
                .prepare(&format!(
                    "SELECT 1 FROM pragma_table_info('{table}') WHERE name = '{name}'"
                ))?
                .exists([])?;
            if !has {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column}"))?;
                if name == "cancel_by" {
                    // Jobs running before a cancel could reach them may be past their
                    // start: none of them is cancelled that way.
                    conn.execute_batch("UPDATE jobs SET cancel_by = '' WHERE status = 'running'")?;
                }
            }
        }
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            enqueues: Arc::default(),
        })
    }

    /// Group commit: enqueues that arrive while a commit is under way wait for the next
    /// one, and all of them share its transaction and its fsync. Each caller still hears
    /// back only once its rows are on disk. The committer is a task of its own, so that a
    /// caller that goes away (a client hanging up) does not strand the others.
    async fn commit_together(&self, rows: Vec<Row>) -> Result<Vec<Enqueued>, PortError> {
        let (done, answer) = oneshot::channel();
        let lead = {
            let mut q = self
                .enqueues
                .lock()
                .map_err(|_| "enqueue queue poisoned by an earlier panic")?;
            q.waiting.push((rows, done));
            !std::mem::replace(&mut q.committing, true)
        };
        if lead {
            tokio::spawn(self.clone().commit_waiting());
        }
        answer
            .await
            .map_err(|_| "the commit was abandoned")?
            .map_err(PortError::from)
    }

    async fn commit_waiting(self) {
        loop {
            let batch = match self.enqueues.lock() {
                Ok(mut q) if q.waiting.is_empty() => {
                    q.committing = false;
                    return;
                }
                Ok(mut q) => std::mem::take(&mut q.waiting),
                Err(_) => return,
            };
            let (rows, senders): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
            let done = self
                .with(move |c| {
                    let tx = c.transaction()?;
                    let results = rows
                        .into_iter()
                        .map(|r| jobs::insert_jobs(&tx, r))
                        .collect::<Result<Vec<_>, _>>()?;
                    tx.commit()?;
                    Ok(results)
                })
                .await;
            match done {
                Ok(results) => {
                    for (send, result) in senders.into_iter().zip(results) {
                        let _ = send.send(Ok(result));
                    }
                }
                Err(e) => {
                    for send in senders {
                        let _ = send.send(Err(e.to_string()));
                    }
                }
            }
        }
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
}
