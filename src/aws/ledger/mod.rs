//! History and locks on AWS: SSM Parameter Store.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{params, sdk_err};
use crate::deploy::history::faulty_mark;
use crate::deploy::job::JobId;
use crate::deploy::ports::{Faulty, HistoryEntry, Ledger, LockInfo, PortError, Renewal, Unlocked};

mod lock;

/// A standard-tier parameter's value limit.
const FAULTY_MAX_BYTES: usize = 4096;

/// Parameter Store: `{prefix}/live/{app}/{env}` holds the live job (its parameter
/// history is the deploy history); `{prefix}/lock/{app}/{env}/…` the lock, one parameter
/// per generation (see `lock`); `{prefix}/faulty/{app}/{env}`
/// lists the versions rolled back from, newest first, as many as fit in a standard
/// parameter (4 KB): only a lock holder writes it.
pub struct SsmLedger {
    client: aws_sdk_ssm::Client,
    prefix: String,
}

impl SsmLedger {
    pub fn new(client: aws_sdk_ssm::Client, prefix: &str) -> SsmLedger {
        SsmLedger {
            client,
            prefix: prefix.trim_end_matches('/').to_string(),
        }
    }

    fn live(&self, app: &str, env: &str) -> String {
        format!("{}/live/{app}/{env}", self.prefix)
    }

    fn faulty_list(&self, app: &str, env: &str) -> String {
        format!("{}/faulty/{app}/{env}", self.prefix)
    }

    /// The JSON value of parameter `name`, if it exists.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, PortError> {
        match self.client.get_parameter().name(name).send().await {
            Ok(out) => match out.parameter.and_then(|p| p.value) {
                Some(v) => Ok(Some(serde_json::from_str(&v)?)),
                None => Ok(None),
            },
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_parameter_not_found()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_err("SSM GetParameter", e)),
        }
    }

    async fn live_entry(&self, app: &str, env: &str) -> Result<Option<HistoryEntry>, PortError> {
        self.read(&self.live(app, env)).await
    }
}

#[async_trait]
impl Ledger for SsmLedger {
    async fn record(&self, entry: &HistoryEntry) -> Result<(), PortError> {
        let job = &entry.job;
        // A replayed step records once: the job is live already.
        if self
            .live_entry(&job.app, &job.env)
            .await?
            .is_none_or(|e| e.job.id != job.id)
        {
            let name = self.live(&job.app, &job.env);
            params::put(&self.client, &name, &serde_json::to_string(entry)?, true).await?;
        }
        // After the entry, and again on a replay: a mark lifted is lifted once it is live.
        if let Some(cleared) = &entry.cleared {
            let mut marks = self.faulty(&job.app, &job.env).await?;
            let before = marks.len();
            marks.retain(|m| !m.version.same_as(&cleared.version));
            if marks.len() != before {
                let value = serde_json::to_string(&marks)?;
                params::put(
                    &self.client,
                    &self.faulty_list(&job.app, &job.env),
                    &value,
                    true,
                )
                .await?;
            }
        }
        Ok(())
    }

    async fn history(
        &self,
        app: &str,
        env: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, PortError> {
        let mut pages = self
            .client
            .get_parameter_history()
            .name(self.live(app, env))
            .into_paginator()
            .send();
        let mut values = vec![];
        while let Some(page) = pages.next().await {
            match page {
                Ok(p) => values.extend(
                    p.parameters
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|p| p.value),
                ),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_parameter_not_found()) =>
                {
                    return Ok(vec![])
                }
                Err(e) => return Err(sdk_err("SSM GetParameterHistory", e)),
            }
        }
        // Parameter Store lists versions oldest first. A job is recorded once (`record`),
        // but a write the SDK made again after its answer was lost is a second version
        // of the same entry.
        let mut entries: Vec<HistoryEntry> = vec![];
        for v in values.iter().rev() {
            if entries.len() == limit {
                break;
            }
            let entry: HistoryEntry = serde_json::from_str(v)?;
            if entries.last().is_none_or(|e| e.job.id != entry.job.id) {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    async fn mark_faulty(&self, app: &str, env: &str, mark: &Faulty) -> Result<(), PortError> {
        let mut marks = self.faulty(app, env).await?;
        if faulty_mark(&marks, &mark.version).is_some() {
            return Ok(());
        }
        marks.insert(0, mark.clone());
        let mut value = serde_json::to_string(&marks)?;
        // The oldest marks go first when the list outgrows the parameter.
        while value.len() > FAULTY_MAX_BYTES && marks.len() > 1 {
            marks.pop();
            value = serde_json::to_string(&marks)?;
        }
        params::put(&self.client, &self.faulty_list(app, env), &value, true).await?;
        Ok(())
    }

    async fn faulty(&self, app: &str, env: &str) -> Result<Vec<Faulty>, PortError> {
        Ok(self
            .read(&self.faulty_list(app, env))
            .await?
            .unwrap_or_default())
    }

    async fn try_lock(
        &self,
        app: &str,
        env: &str,
        lock: &LockInfo,
        now: DateTime<Utc>,
    ) -> Result<Result<LockInfo, LockInfo>, PortError> {
        self.take_lock(app, env, lock, now).await
    }

    async fn renew(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        generation: u64,
        until: DateTime<Utc>,
    ) -> Result<Renewal, PortError> {
        self.renew_lock(app, env, job, generation, until).await
    }

    async fn release(&self, app: &str, env: &str, job: &JobId) -> Result<(), PortError> {
        self.release_lock(app, env, job).await
    }

    async fn unlock(
        &self,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Unlocked, PortError> {
        self.unlock_chat(app, env, now).await
    }

    async fn request_abort(
        &self,
        app: &str,
        env: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError> {
        self.abort_deploy(app, env, by, now).await
    }

    async fn lock_state(
        &self,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError> {
        Ok(self
            .slots(app, env)
            .await?
            .current()
            .filter(|l| !l.is_expired(now)))
    }
}
