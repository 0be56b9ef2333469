//! The queue: jobs in order, one running per app+env, and what is queued behind one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{time, Store};
use crate::deploy::engine::{Notice, Outcome};
use crate::deploy::job::{DeployJob, JobId};
use crate::deploy::ports::{Backlog, Cancel, Claims, Enqueued, JobQueue, PortError};
use crate::deploy::status::JobStatus;
use crate::deploy::version::newest_first;

/// A queued job as the store keeps it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueuedJob {
    pub seq: i64,
    pub status: JobStatus,
    pub job: DeployJob,
    pub queued_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// Why it did not succeed, or what a success left behind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The columns a `QueuedJob` is read from, in `JOB_COLUMNS` order.
type JobRow = (
    i64,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
);

pub(super) const JOB_COLUMNS: &str = "seq, status, job, queued_at, started_at, ended_at, reason";

pub(super) fn job_row(r: &rusqlite::Row) -> Result<JobRow, rusqlite::Error> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

impl QueuedJob {
    pub(super) fn decode(row: JobRow) -> Result<QueuedJob, PortError> {
        let (seq, status, job, queued_at, started_at, ended_at, reason) = row;
        Ok(QueuedJob {
            seq,
            status: status.parse()?,
            job: DeployJob::from_json(&job)?,
            queued_at: time(&queued_at)?,
            started_at: started_at.as_deref().map(time).transpose()?,
            ended_at: ended_at.as_deref().map(time).transpose()?,
            reason,
        })
    }

    fn running(seq: i64, job: DeployJob) -> QueuedJob {
        QueuedJob {
            seq,
            status: JobStatus::Running,
            queued_at: job.requested_at,
            job,
            started_at: None,
            ended_at: None,
            reason: None,
        }
    }
}

impl Store {
    pub async fn jobs(&self, status: Option<JobStatus>) -> Result<Vec<QueuedJob>, PortError> {
        self.jobs_where(status, None).await
    }

    /// The jobs of one app+env (`app/env`), oldest first.
    pub async fn jobs_of(&self, group: &str) -> Result<Vec<QueuedJob>, PortError> {
        self.jobs_where(None, Some(group.to_string())).await
    }

    async fn jobs_where(
        &self,
        status: Option<JobStatus>,
        group: Option<String>,
    ) -> Result<Vec<QueuedJob>, PortError> {
        let status = status.map(JobStatus::as_str);
        let rows: Vec<JobRow> = self
            .with(move |c| {
                let mut st = c.prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE (?1 IS NULL OR status = ?1)
                     AND (?2 IS NULL OR grp = ?2) ORDER BY seq"
                ))?;
                let rows = st.query_map(params![status, group], job_row)?;
                rows.collect()
            })
            .await?;
        // A row that cannot be read is left out of the list (the worker fails it with
        // the reason when it comes to it), not allowed to hide every other job.
        Ok(rows
            .into_iter()
            .filter_map(|row| {
                let seq = row.0;
                match QueuedJob::decode(row) {
                    Ok(q) => Some(q),
                    Err(e) => {
                        tracing::warn!(seq, error = %e, "a job in the store cannot be read");
                        None
                    }
                }
            })
            .collect())
    }

    /// Marks the oldest queued job whose app+env has nothing running as running, and
    /// returns it: deploys of one app+env never overlap, others run side by side. A job
    /// waiting for its calendar counts as nothing running for a rollback or a person's
    /// deploy, as it changes nothing while it waits (it tries the lock, as any job does,
    /// once its calendar opens). A job
    /// that cannot be read (written by a newer shipit, or damaged) fails alone, with the
    /// reason as its last notice, and the next one is claimed.
    pub async fn claim_next(&self, now: DateTime<Utc>) -> Result<Option<QueuedJob>, PortError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            loop {
                // A running job that waits to start (for its calendar, its approval or its
                // promotion's time: its last step saved it waiting, without its lock, see
                // `Deploy::waits_to_start`) keeps no place in its group for a rollback or a
                // person's deploy; automatic jobs stay queued behind it, to be superseded
                // and to go out in order, but for a promotion, which waits for a time of
                // its own. (The kinds are `Source::is_automatic`'s.)
                let row: Option<(i64, String, String)> = tx
                    .query_row(
                        "SELECT seq, id, job FROM jobs j WHERE status = 'queued' AND NOT EXISTS
                           (SELECT 1 FROM jobs r WHERE r.grp = j.grp AND r.status = 'running'
                              AND (NOT EXISTS (SELECT 1 FROM deploys d WHERE d.job_id = r.id
                                     AND json_valid(d.state)
                                     AND json_extract(d.state, '$.closed') IS NOT NULL
                                     AND json_extract(d.state, '$.locked') = 0)
                                   OR (json_valid(j.job)
                                       AND json_extract(j.job, '$.source.kind') IN ('tag', 'upload', 'promotion')
                                       AND NOT (json_valid(r.job)
                                                AND json_extract(r.job, '$.source.kind') = 'promotion'))))
                         ORDER BY seq LIMIT 1",
                        [],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                    )
                    .optional()?;
                let Some((seq, id, body)) = row else {
                    tx.commit()?;
                    return Ok(None);
                };
                match DeployJob::from_json(&body) {
                    Ok(job) => {
                        tx.execute(
                            "UPDATE jobs SET status = 'running',
                               started_at = COALESCE(started_at, ?2) WHERE seq = ?1",
                            params![seq, now.to_rfc3339()],
                        )?;
                        tx.commit()?;
                        return Ok(Some(QueuedJob::running(seq, job)));
                    }
                    Err(e) => fail_unreadable(&tx, seq, &id, &e.to_string(), now)?,
                }
            }
        })
        .await
    }

    /// The job ended with `outcome`: its status, when, and why (what a success left, or
    /// why the job did not succeed).
    pub async fn finish(
        &self,
        job: &JobId,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let (id, status) = (job.to_string(), JobStatus::from(outcome).as_str());
        let reason = outcome.why();
        self.with(move |c| {
            c.execute(
                "UPDATE jobs SET status = ?2, ended_at = ?3, reason = ?4 WHERE id = ?1",
                params![id, status, now.to_rfc3339(), reason],
            )
            .map(drop)
        })
        .await
    }

    pub async fn job(&self, job: &JobId) -> Result<Option<QueuedJob>, PortError> {
        let id = job.to_string();
        let row: Option<JobRow> = self
            .with(move |c| {
                c.query_row(
                    &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"),
                    params![id],
                    job_row,
                )
                .optional()
            })
            .await?;
        row.map(QueuedJob::decode).transpose()
    }

    /// The jobs whose id starts with `prefix` (at most two: one is an answer, two say it
    /// is not unique).
    pub async fn jobs_starting(&self, prefix: &str) -> Result<Vec<QueuedJob>, PortError> {
        // Ids are hex: anything else matches nothing (and `%`/`_` never reach LIKE).
        if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(vec![]);
        }
        let pattern = format!("{}%", prefix.to_ascii_lowercase());
        let rows: Vec<JobRow> = self
            .with(move |c| {
                let mut st = c.prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE id LIKE ?1 ORDER BY seq LIMIT 2"
                ))?;
                let rows = st.query_map(params![pattern], job_row)?;
                rows.collect()
            })
            .await?;
        rows.into_iter().map(QueuedJob::decode).collect()
    }

    /// Jobs marked running: after a crash, these are the deploys to resume. One that
    /// cannot be read any more fails alone, as in `claim_next`.
    pub async fn running_jobs(&self, now: DateTime<Utc>) -> Result<Vec<QueuedJob>, PortError> {
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let rows: Vec<(i64, String, String)> = {
                let mut st = tx.prepare(
                    "SELECT seq, id, job FROM jobs WHERE status = 'running' ORDER BY seq",
                )?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<Result<_, _>>()?
            };
            let mut out = vec![];
            for (seq, id, body) in rows {
                match DeployJob::from_json(&body) {
                    Ok(job) => out.push(QueuedJob::running(seq, job)),
                    Err(e) => fail_unreadable(&tx, seq, &id, &e.to_string(), now)?,
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }
}

#[async_trait]
impl Backlog for Store {
    async fn newer_queued(&self, job: &DeployJob) -> Result<Vec<DeployJob>, PortError> {
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
        let mut newer: Vec<DeployJob> = vec![];
        for body in bodies {
            // One that cannot be read fails when the worker comes to it; it hides nothing.
            if let Ok(j) = DeployJob::from_json(&body) {
                if j.version.is_newer_than(&job.version) {
                    newer.push(j);
                }
            }
        }
        newer.sort_by(|a, b| newest_first(&a.version, &b.version));
        Ok(newer)
    }
}

#[async_trait]
impl JobQueue for Store {
    /// Durable when it returns (a 202 means on disk); concurrent callers share one
    /// transaction and one fsync (see `Store::commit_together`).
    async fn enqueue(&self, jobs: &[DeployJob]) -> Result<Vec<Enqueued>, PortError> {
        let rows: Vec<Row> = jobs
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
        self.commit_together(rows).await
    }
}

/// A job as the jobs table holds it: id, group, JSON, queued at.
pub(super) type Row = (String, String, String, String);

/// Inserts `rows` within the caller's transaction: each is queued, or was already.
pub(super) fn insert_jobs(
    tx: &rusqlite::Transaction,
    rows: Vec<Row>,
) -> Result<Vec<Enqueued>, rusqlite::Error> {
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
    Ok(out)
}

/// Fails job `seq` that cannot be read, with the reason as its last notice.
fn fail_unreadable(
    c: &rusqlite::Connection,
    seq: i64,
    id: &str,
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), rusqlite::Error> {
    let reason = format!("cannot read this job: {error}");
    tracing::error!(job_id = %id, %reason, "job failed");
    let finished = Notice::Finished {
        outcome: Outcome::failed(reason.clone()),
    };
    let notice = serde_json::to_string(&finished)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    c.execute(
        "UPDATE jobs SET status = 'failed', ended_at = ?2, reason = ?3 WHERE seq = ?1",
        params![seq, now.to_rfc3339(), reason],
    )?;
    c.execute(
        "INSERT INTO notices (job_id, notice, at) VALUES (?1, ?2, ?3)",
        params![id, notice, now.to_rfc3339()],
    )?;
    Ok(())
}

#[async_trait]
impl Cancel for Store {
    /// One transaction, as the worker's claim is, so exactly one of them wins.
    async fn cancel(
        &self,
        job: &DeployJob,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<JobStatus>, PortError> {
        let (id, reason) = (job.id.to_string(), Outcome::cancelled(by).why());
        let by = by.to_string();
        let status: Option<String> = self
            .with(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let n = tx.execute(
                    "UPDATE jobs SET status = 'cancelled', ended_at = ?2, reason = ?3
                     WHERE id = ?1 AND status = 'queued'",
                    params![id, now.to_rfc3339(), reason],
                )?;
                // One the worker drives that has not started (it waits for its calendar,
                // an approval, its time or the lock): it ends at its next look, and
                // `start` will not let it touch a node.
                let asked = tx.execute(
                    "UPDATE jobs SET cancel_by = ?2
                     WHERE id = ?1 AND status = 'running' AND cancel_by IS NULL",
                    params![id, by],
                )?;
                let status = match n + asked {
                    1 => None,
                    // A cancel asked already of one that has not started yet: it is
                    // cancelled, as on AWS.
                    _ => Some(tx.query_row(
                        "SELECT CASE WHEN status = 'running' AND cancel_by <> '' THEN 'cancelled'
                                ELSE status END FROM jobs WHERE id = ?1",
                        params![id],
                        |r| r.get(0),
                    )?),
                };
                tx.commit()?;
                Ok(status)
            })
            .await?;
        Ok(status.map(|s| s.parse()).transpose()?)
    }
}

#[async_trait]
impl Claims for Store {
    async fn cancelled(&self, job: &DeployJob) -> Result<Option<String>, PortError> {
        let id = job.id.to_string();
        let by: Option<String> = self
            .with(move |c| {
                c.query_row(
                    "SELECT cancel_by FROM jobs WHERE id = ?1",
                    params![id],
                    |r| r.get(0),
                )
                .optional()
                .map(Option::flatten)
            })
            .await?;
        Ok(by.filter(|b| !b.is_empty()))
    }

    /// One transaction, as `cancel`'s is: a cancel asked first wins; after this, none
    /// is taken ('' marks the start).
    async fn start(&self, job: &DeployJob) -> Result<Option<String>, PortError> {
        let id = job.id.to_string();
        let by: Option<String> = self
            .with(move |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                tx.execute(
                    "UPDATE jobs SET cancel_by = '' WHERE id = ?1 AND cancel_by IS NULL",
                    params![id],
                )?;
                let by = tx
                    .query_row(
                        "SELECT cancel_by FROM jobs WHERE id = ?1",
                        params![id],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten();
                tx.commit()?;
                Ok(by)
            })
            .await?;
        Ok(by.filter(|b: &String| !b.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::job::Source;
    use crate::deploy::version::Version;

    fn job(i: usize) -> DeployJob {
        DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            Version::parse(&format!("1.0.{i}")).unwrap(),
            Source::Cli {
                user: "ann".into(),
                nonce: i.to_string(),
            },
            Utc::now(),
        )
    }

    /// Enqueues that share a commit each hear about their own jobs, and every job is on
    /// disk once its caller heard back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enqueues_share_commits_and_each_hears_its_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.db");
        let store = Store::open(&path).unwrap();
        let callers: Vec<_> = (0..64)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    // Odd callers also send their neighbour's job: a duplicate for one of
                    // the two, whichever commits second.
                    let jobs = match i % 2 {
                        0 => vec![job(i)],
                        _ => vec![job(i), job(i - 1)],
                    };
                    (i, store.enqueue(&jobs).await.unwrap())
                })
            })
            .collect();
        let mut queued = 0;
        for c in callers {
            let (i, answer) = c.await.unwrap();
            assert_eq!(answer.len(), if i % 2 == 0 { 1 } else { 2 });
            if i % 2 == 1 {
                assert_eq!(answer[0], Enqueued::Queued, "caller {i}'s own job");
            }
            queued += answer.iter().filter(|a| **a == Enqueued::Queued).count();
            // On disk: another connection sees it.
            let other = Store::open(&path).unwrap();
            let ids: Vec<String> = other
                .jobs(None)
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.job.id.to_string())
                .collect();
            assert!(ids.contains(&job(i).id.to_string()), "caller {i}");
        }
        assert_eq!(
            queued, 64,
            "each job queued once, the second send a duplicate"
        );
        assert_eq!(store.jobs(None).await.unwrap().len(), 64);
    }

    /// A job the worker drives but that has not started is cancelled through its row, and
    /// `start` then refuses it; once started, a cancel changes nothing.
    #[tokio::test]
    async fn a_cancel_and_the_start_of_a_claimed_job_are_decided_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.db")).unwrap();
        let (waiting, started) = (job(1), job(2));
        store.enqueue(std::slice::from_ref(&waiting)).await.unwrap();
        store.claim_next(Utc::now()).await.unwrap().unwrap();
        assert_eq!(
            store.cancel(&waiting, "ann", Utc::now()).await.unwrap(),
            None
        );
        assert_eq!(
            store.cancelled(&waiting).await.unwrap().as_deref(),
            Some("ann")
        );
        assert_eq!(store.start(&waiting).await.unwrap().as_deref(), Some("ann"));
        // Asked again, the same answers; a second cancel changes nothing.
        assert_eq!(store.start(&waiting).await.unwrap().as_deref(), Some("ann"));
        assert_eq!(
            store.cancel(&waiting, "bob", Utc::now()).await.unwrap(),
            Some(JobStatus::Cancelled)
        );
        assert_eq!(
            store.cancelled(&waiting).await.unwrap().as_deref(),
            Some("ann")
        );

        store
            .finish(&waiting.id, &Outcome::cancelled("ann"), Utc::now())
            .await
            .unwrap();
        store.enqueue(std::slice::from_ref(&started)).await.unwrap();
        let claimed = store.claim_next(Utc::now()).await.unwrap().unwrap();
        assert_eq!(claimed.job.id, started.id);
        assert_eq!(store.start(&started).await.unwrap(), None);
        assert_eq!(
            store.cancel(&started, "ann", Utc::now()).await.unwrap(),
            Some(JobStatus::Running)
        );
        assert_eq!(store.cancelled(&started).await.unwrap(), None);
    }
}
