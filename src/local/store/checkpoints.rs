//! What the worker saves after every step: the engine's state, the notifiers' memo,
//! each node's command results, the notices, and the worker lease.

use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::{time, Store};
use crate::deploy::command::NodeResult;
use crate::deploy::engine::{Deploy, NodeState, Notice};
use crate::deploy::job::JobId;
use crate::deploy::ports::{NotifyMemo, PortError};
use crate::deploy::version::Version;

/// A node and the version it was last seen serving.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeSeen {
    pub node: String,
    pub version: Version,
    pub job: JobId,
    pub seen_at: DateTime<Utc>,
}

/// The nodes this step saw serve a version: healthy after their restart (the deploy's
/// version) or after being put back (the one before it).
fn serving(deploy: &Deploy, notices: &[Notice]) -> Vec<(String, String)> {
    notices
        .iter()
        .filter_map(|n| match n {
            Notice::Healthy { node } => {
                let state = deploy.nodes.iter().find(|x| &x.name == node)?.state;
                let version = match state {
                    NodeState::Reverted => deploy.previous.as_ref()?,
                    _ => &deploy.job.version,
                };
                Some((node.clone(), version.to_string()))
            }
            _ => None,
        })
        .collect()
}

/// What the store knows of one node's run of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    pub node: String,
    pub result: Option<NodeResult>,
    /// When it was started (last), or finished.
    pub since: DateTime<Utc>,
}

impl Store {
    /// One step of a deploy, in one transaction: its engine state and the notices it
    /// produced (so that a retried save never records a notice twice).
    pub async fn save_step(
        &self,
        deploy: &Deploy,
        notices: &[Notice],
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let (id, state) = (deploy.job.id.to_string(), serde_json::to_string(deploy)?);
        let rows = notices
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<Vec<_>, _>>()?;
        let seen = serving(deploy, notices);
        let (app, env) = (deploy.job.app.clone(), deploy.job.env.clone());
        self.with(move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO deploys (job_id, state, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(job_id) DO UPDATE
                 SET state = excluded.state, updated_at = excluded.updated_at",
                params![id, state, now.to_rfc3339()],
            )?;
            insert_notices(&tx, &id, &rows, now)?;
            for (node, version) in seen {
                tx.execute(
                    "INSERT INTO node_versions (app, env, node, version, job_id, seen_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT(app, env, node) DO UPDATE SET version = excluded.version,
                       job_id = excluded.job_id, seen_at = excluded.seen_at",
                    params![app, env, node, version, id, now.to_rfc3339()],
                )?;
            }
            tx.commit()
        })
        .await
    }

    /// Each node of app+env, the version it was last seen serving (restarted onto it and
    /// healthy, or put back onto it), by which job and when.
    pub async fn node_versions(&self, app: &str, env: &str) -> Result<Vec<NodeSeen>, PortError> {
        let (app, env) = (app.to_string(), env.to_string());
        let rows: Vec<(String, String, String, String)> = self
            .with(move |c| {
                c.prepare(
                    "SELECT node, version, job_id, seen_at FROM node_versions
                     WHERE app = ?1 AND env = ?2",
                )?
                .query_map(params![app, env], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .await?;
        rows.into_iter()
            .map(|(node, version, job, at)| {
                Ok(NodeSeen {
                    node,
                    version: Version::parse(&version)?,
                    job: serde_json::from_value(serde_json::Value::String(job))?,
                    seen_at: time(&at)?,
                })
            })
            .collect()
    }

    /// What the notifiers remember of a deploy (its Slack message, say).
    pub async fn save_notify(&self, job: &JobId, state: &NotifyMemo) -> Result<(), PortError> {
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

    pub async fn load_notify(&self, job: &JobId) -> Result<NotifyMemo, PortError> {
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

    /// Each node's result for `key`; `None` while the node's command was started but not
    /// finished (by this process, or one that died before it recorded the result).
    pub async fn command_results(&self, key: &str) -> Result<Vec<CommandRecord>, PortError> {
        let key = key.to_string();
        let rows: Vec<(String, Option<String>, String)> = self
            .with(move |c| {
                let mut st =
                    c.prepare("SELECT node, result, updated_at FROM commands WHERE key = ?1")?;
                let rows = st.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(node, result, since)| {
                Ok(CommandRecord {
                    node,
                    result: result.map(|r| serde_json::from_str(&r)).transpose()?,
                    since: time(&since)?,
                })
            })
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
                "INSERT INTO commands (key, node, status, updated_at, started_at)
                 VALUES (?1, ?2, 'running', ?3, ?3)
                 ON CONFLICT(key, node) DO UPDATE
                 SET status = 'running', updated_at = excluded.updated_at,
                     started_at = excluded.started_at",
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
                "UPDATE commands SET status = 'done', result = ?3, updated_at = ?4
                 WHERE key = ?1 AND node = ?2",
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
            insert_notices(&tx, &id, &rows, now)?;
            tx.commit()
        })
        .await
    }

    /// A mark that changes whenever a job is queued or ends, a deploy says something, or
    /// a lock is taken or given up: what the page's live updates watch.
    pub async fn changes(&self) -> Result<String, PortError> {
        self.with(|c| {
            c.query_row(
                "SELECT (SELECT IFNULL(MAX(seq), 0) FROM notices) || '/' ||
                        (SELECT IFNULL(MAX(seq), 0) FROM jobs) || '/' ||
                        (SELECT COUNT(*) FROM jobs WHERE status NOT IN ('queued', 'running'))
                        || '/' || (SELECT IFNULL(group_concat(info), '') FROM locks)",
                [],
                |r| r.get(0),
            )
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
                .query_row(
                    "SELECT holder, expires FROM worker_lease WHERE id = 1",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let free = match &current {
                None => true,
                Some((h, _)) if *h == holder => true,
                Some((_, expires)) => {
                    DateTime::parse_from_rfc3339(expires).map_or(true, |e| e <= now)
                }
            };
            if free {
                tx.execute(
                    "INSERT INTO worker_lease (id, holder, expires) VALUES (1, ?1, ?2)
                     ON CONFLICT(id) DO UPDATE
                 SET holder = excluded.holder, expires = excluded.expires",
                    params![holder, (now + ttl).to_rfc3339()],
                )?;
            }
            tx.commit()?;
            Ok(free)
        })
        .await
    }

    /// Whether a worker (`shipit serve`, or a `--wait`) holds the lease: queued jobs run.
    pub async fn worker_running(&self, now: DateTime<Utc>) -> Result<bool, PortError> {
        let expires: Option<String> = self
            .with(|c| {
                c.query_row("SELECT expires FROM worker_lease WHERE id = 1", [], |r| {
                    r.get(0)
                })
                .optional()
            })
            .await?;
        Ok(expires
            .and_then(|e| DateTime::parse_from_rfc3339(&e).ok())
            .is_some_and(|e| e > now))
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
}

fn insert_notices(
    c: &rusqlite::Connection,
    job: &str,
    notices: &[String],
    now: DateTime<Utc>,
) -> Result<(), rusqlite::Error> {
    for n in notices {
        c.execute(
            "INSERT INTO notices (job_id, notice, at) VALUES (?1, ?2, ?3)",
            params![job, n, now.to_rfc3339()],
        )?;
    }
    Ok(())
}
