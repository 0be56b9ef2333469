//! History and locks in SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, OptionalExtension};

use super::Store;
use crate::deploy::job::{DeployJob, JobId};
use crate::deploy::ports::{Faulty, HistoryEntry, Ledger, LockInfo, PortError};

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
                    "SELECT job, recorded_at FROM history
                     WHERE app = ?1 AND env = ?2 ORDER BY seq DESC LIMIT ?3",
                )?;
                let rows = st.query_map(params![app, env, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
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

    async fn mark_faulty(&self, app: &str, env: &str, mark: &Faulty) -> Result<(), PortError> {
        let (app, env, version, json) = (
            app.to_string(),
            env.to_string(),
            mark.version.to_string(),
            serde_json::to_string(mark)?,
        );
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO faulty (app, env, version, mark) VALUES (?1, ?2, ?3, ?4)",
                params![app, env, version, json],
            )
            .map(drop)
        })
        .await
    }

    async fn faulty(&self, app: &str, env: &str) -> Result<Vec<Faulty>, PortError> {
        let (app, env) = (app.to_string(), env.to_string());
        let rows: Vec<String> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT mark FROM faulty WHERE app = ?1 AND env = ?2 ORDER BY seq DESC",
                )?;
                let rows = st.query_map(params![app, env], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        rows.iter().map(|m| Ok(serde_json::from_str(m)?)).collect()
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
