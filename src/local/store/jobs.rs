//! The queue: jobs in order, one running per app+env, and what is queued behind one.

use async_trait::async_trait;
use rusqlite::{params, OptionalExtension};

use super::Store;
use crate::deploy::job::{DeployJob, JobId};
use crate::deploy::ports::{Backlog, Enqueued, JobQueue, PortError};
use crate::deploy::status::JobStatus;
use crate::deploy::version::Version;

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
    pub async fn jobs(&self, status: Option<JobStatus>) -> Result<Vec<QueuedJob>, PortError> {
        let status = status.map(JobStatus::as_str);
        let rows: Vec<(i64, String, String)> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT seq, status, job FROM jobs
                     WHERE ?1 IS NULL OR status = ?1 ORDER BY seq",
                )?;
                let rows =
                    st.query_map(params![status], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(seq, status, job)| QueuedJob::decode(seq, &status, &job))
            .collect()
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

    /// Jobs marked running: after a crash, these are the deploys to resume.
    pub async fn running_jobs(&self) -> Result<Vec<QueuedJob>, PortError> {
        self.jobs(Some(JobStatus::Running)).await
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
