//! The DORA figures of one app+env, from the jobs the store kept and its history.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::jobs::QueuedJob;
use super::Store;
use crate::deploy::dora::{figures, Ended, Figures};
use crate::deploy::job::JobId;
use crate::deploy::ports::{Ledger, PortError};

/// History entries read for the figures: a deploy every hour for more than a year.
const HISTORY_READ: usize = 10_000;

impl Store {
    /// The figures of `app`/`env` over the `days` before `now`; `jobs`: the store's (read
    /// once by a caller that wants several app+envs).
    pub async fn figures(
        &self,
        app: &str,
        env: &str,
        jobs: &[QueuedJob],
        days: u32,
        now: DateTime<Utc>,
    ) -> Result<Figures, PortError> {
        // When each job went live: its history entry.
        let live: HashMap<JobId, DateTime<Utc>> = self
            .history(app, env, HISTORY_READ)
            .await?
            .into_iter()
            .map(|e| (e.job.id, e.recorded_at))
            .collect();
        let group = format!("{app}/{env}");
        let ended: Vec<Ended> = jobs
            .iter()
            .filter(|q| q.job.group() == group && !q.status.is_pending())
            .map(|q| Ended {
                job: q.job.clone(),
                status: q.status,
                started_at: q.started_at,
                ended_at: q.ended_at,
                live_at: live.get(&q.job.id).copied(),
            })
            .collect();
        Ok(figures(app, env, &ended, days, now))
    }
}
