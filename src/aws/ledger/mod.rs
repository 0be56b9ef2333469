//! History and locks on AWS: SSM Parameter Store.

use std::time::Duration;

use async_trait::async_trait;
use backoff::ExponentialBackoff;
use chrono::{DateTime, Utc};

use super::{params, sdk_err};
use crate::deploy::approval::{Approval, WORDS_KEPT_DAYS};
use crate::deploy::history::{faulty_mark, fit, MARKS_MAX_BYTES};
use crate::deploy::job::JobId;
use crate::deploy::ports::{
    Faulty, HistoryEntry, Ledger, LockInfo, PortError, Renewal, Unlocked, Written,
};

mod lock;

/// Parameter Store: `{prefix}/live/{app}/{env}` holds the live job (its parameter
/// history is the deploy history); `{prefix}/lock/{app}/{env}/…` the lock, one parameter
/// per generation (see `lock`); `{prefix}/faulty/{app}/{env}`
/// lists the versions rolled back from, newest first, as many as fit in a standard
/// parameter (4 KB): only a lock holder writes it; `{prefix}/approvals/{app}/{env}/{job}.{by}`
/// one person's word on a job (see `approval`), created once, pruned after
/// `WORDS_KEPT_DAYS`.
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

    fn words(&self, app: &str, env: &str) -> String {
        format!("{}/approvals/{app}/{env}", self.prefix)
    }

    fn faulty_list(&self, app: &str, env: &str) -> String {
        format!("{}/faulty/{app}/{env}", self.prefix)
    }

    /// The JSON value of parameter `name` and its version, if it exists.
    async fn read<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<(T, u64)>, PortError> {
        match params::get(&self.client, name).await? {
            Some((v, version)) => Ok(Some((serde_json::from_str(&v)?, version))),
            None => Ok(None),
        }
    }

    /// `read`, asked again until it answers version `floor` or a newer one: Parameter
    /// Store may answer from before a write it has acknowledged. Still older after a few
    /// seconds, an error: the step is tried again later.
    async fn read_at_least<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        floor: u64,
    ) -> Result<Option<(T, u64)>, PortError> {
        let policy = ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            max_interval: Duration::from_secs(1),
            max_elapsed_time: Some(Duration::from_secs(5)),
            ..ExponentialBackoff::default()
        };
        backoff::future::retry(policy, || async {
            let got = self.read(name).await.map_err(backoff::Error::permanent)?;
            let version = got.as_ref().map_or(0, |(_, v)| *v);
            if version >= floor {
                Ok(got)
            } else {
                Err(backoff::Error::transient(PortError::from(format!(
                    "Parameter Store still answers version {version} of {name}, older than \
                     version {floor} written before this deploy took the lock; try again"
                ))))
            }
        })
        .await
    }

    /// The live entry, no older than version `floor`.
    async fn live_entry(
        &self,
        app: &str,
        env: &str,
        floor: u64,
    ) -> Result<(Option<HistoryEntry>, u64), PortError> {
        Ok(
            match self.read_at_least(&self.live(app, env), floor).await? {
                Some((entry, version)) => (Some(entry), version),
                None => (None, 0),
            },
        )
    }

    /// The faulty marks, no older than version `floor`.
    async fn marks(
        &self,
        app: &str,
        env: &str,
        floor: u64,
    ) -> Result<(Vec<Faulty>, u64), PortError> {
        Ok(self
            .read_at_least(&self.faulty_list(app, env), floor)
            .await?
            .unwrap_or_default())
    }
}

#[async_trait]
impl Ledger for SsmLedger {
    async fn record(&self, entry: &HistoryEntry, seen: Written) -> Result<Written, PortError> {
        let job = &entry.job;
        let mut written = seen;
        // A replayed step records once: the job is live already.
        let (live, version) = self.live_entry(&job.app, &job.env, seen.live).await?;
        written.live = version;
        if live.is_none_or(|e| e.job.id != job.id) {
            let name = self.live(&job.app, &job.env);
            let value = serde_json::to_string(entry)?;
            written.live = params::put(&self.client, &name, &value, true)
                .await?
                .unwrap_or(version);
        }
        // After the entry, and again on a replay: a mark lifted is lifted once it is live.
        if let Some(cleared) = &entry.cleared {
            let (mut marks, version) = self.marks(&job.app, &job.env, seen.faulty).await?;
            written.faulty = version;
            let before = marks.len();
            marks.retain(|m| !m.version.same_as(&cleared.version));
            if marks.len() != before {
                let value = serde_json::to_string(&marks)?;
                let name = self.faulty_list(&job.app, &job.env);
                written.faulty = params::put(&self.client, &name, &value, true)
                    .await?
                    .unwrap_or(version);
            }
        }
        Ok(written.max(seen))
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

    async fn mark_faulty(
        &self,
        app: &str,
        env: &str,
        mark: &Faulty,
        seen: Written,
    ) -> Result<Written, PortError> {
        let (mut marks, version) = self.marks(app, env, seen.faulty).await?;
        if faulty_mark(&marks, &mark.version).is_some() {
            return Ok(Written {
                faulty: version,
                ..seen
            }
            .max(seen));
        }
        marks.insert(0, mark.clone());
        let (value, dropped) = fit(&mut marks, MARKS_MAX_BYTES);
        if dropped > 0 {
            tracing::warn!(
                app,
                env,
                dropped,
                "faulty marks past the parameter's 4 KB: the oldest were dropped"
            );
        }
        let name = self.faulty_list(app, env);
        let faulty = params::put(&self.client, &name, &value, true)
            .await?
            .unwrap_or(version);
        Ok(Written { faulty, ..seen }.max(seen))
    }

    async fn faulty(&self, app: &str, env: &str) -> Result<Vec<Faulty>, PortError> {
        Ok(self.marks(app, env, 0).await?.0)
    }

    async fn inspect(
        &self,
        app: &str,
        env: &str,
        seen: Written,
    ) -> Result<(Option<HistoryEntry>, Vec<Faulty>), PortError> {
        Ok((
            self.live_entry(app, env, seen.live).await?.0,
            self.marks(app, env, seen.faulty).await?.0,
        ))
    }

    async fn approve(&self, app: &str, env: &str, word: &Approval) -> Result<bool, PortError> {
        let dir = self.words(app, env);
        let name = format!("{dir}/{}.{}", word.job, word.by);
        let first = params::put(&self.client, &name, &serde_json::to_string(word)?, false)
            .await?
            .is_some();
        // Each word is one parameter: those no rule can count any more go, so that an
        // environment's words stay well within Parameter Store's 10,000 a region.
        let old = word.at - chrono::Duration::days(WORDS_KEPT_DAYS);
        let listed = match params::under(&self.client, &dir).await {
            Ok(listed) => listed,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list approvals to prune; the next word tries again");
                vec![]
            }
        };
        let stale: Vec<String> = listed
            .into_iter()
            .filter(|(_, v)| serde_json::from_str::<Approval>(v).map_or(true, |w| w.at < old))
            .map(|(n, _)| n)
            .collect();
        // The word is kept: failing to prune is for the next word to mend.
        if let Err(e) = params::delete(&self.client, &stale).await {
            tracing::warn!(error = %e, "cannot prune old approvals; the next word tries again");
        }
        Ok(first)
    }

    async fn approvals(
        &self,
        app: &str,
        env: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Approval>, PortError> {
        let mut words: Vec<Approval> = params::under(&self.client, &self.words(app, env))
            .await?
            .iter()
            .filter_map(|(name, v)| match serde_json::from_str::<Approval>(v) {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(parameter = %name, error = %e, "an approval that is not one: ignored");
                    None
                }
            })
            .filter(|w| w.at >= since)
            .collect();
        words.sort_by_key(|w| w.at);
        Ok(words)
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

    async fn release(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        written: Written,
    ) -> Result<(), PortError> {
        self.release_lock(app, env, job, written).await
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
