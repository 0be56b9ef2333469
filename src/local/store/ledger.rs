//! History and locks in SQLite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use super::{time, Store};
use crate::deploy::approval::{Approval, WORDS_KEPT_DAYS};
use crate::deploy::job::{DeployJob, JobId};
use crate::deploy::lock::take;
use crate::deploy::ports::{
    Faulty, HistoryEntry, Ledger, LockInfo, PortError, Renewal, Unlocked, Written,
};

fn read_lock(c: &Connection, app: &str, env: &str) -> Result<Option<LockInfo>, rusqlite::Error> {
    c.query_row(
        "SELECT info FROM locks WHERE app = ?1 AND env = ?2",
        params![app, env],
        |r| r.get::<_, String>(0),
    )
    .optional()?
    .map(|s| {
        serde_json::from_str(&s).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
        })
    })
    .transpose()
}

fn write_lock(
    c: &Connection,
    app: &str,
    env: &str,
    lock: &LockInfo,
) -> Result<(), rusqlite::Error> {
    let info = serde_json::to_string(lock)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    c.execute(
        "INSERT OR REPLACE INTO locks (app, env, info) VALUES (?1, ?2, ?3)",
        params![app, env, info],
    )
    .map(drop)
}

fn delete_lock(c: &Connection, app: &str, env: &str) -> Result<(), rusqlite::Error> {
    c.execute(
        "DELETE FROM locks WHERE app = ?1 AND env = ?2",
        params![app, env],
    )
    .map(drop)
}

#[async_trait]
impl Ledger for Store {
    // SQLite reads what was written: nothing to hand on (see `Written`).
    async fn record(&self, entry: &HistoryEntry, seen: Written) -> Result<Written, PortError> {
        let job = &entry.job;
        let (app, env, json, id, at, left) = (
            job.app.clone(),
            job.env.clone(),
            job.to_json(),
            job.id.clone(),
            entry.recorded_at.to_rfc3339(),
            entry.left_behind.clone(),
        );
        let cleared = entry
            .cleared
            .as_ref()
            .map(|f| Ok::<_, PortError>((f.version.to_string(), serde_json::to_string(f)?)))
            .transpose()?;
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
                let (version, mark) = cleared.unzip();
                tx.execute(
                    "INSERT INTO history (app, env, job, recorded_at, left_behind, cleared) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![app, env, json, at, left, mark],
                )?;
                // The mark goes with the entry that lifts it, in one transaction.
                if let Some(version) = version {
                    tx.execute(
                        "DELETE FROM faulty WHERE app = ?1 AND env = ?2 AND version = ?3",
                        params![app, env, version],
                    )?;
                }
            }
            tx.commit()
        })
        .await?;
        Ok(seen)
    }

    async fn history(
        &self,
        app: &str,
        env: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, PortError> {
        let (app, env) = (app.to_string(), env.to_string());
        let rows: Vec<(String, String, Option<String>, Option<String>)> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT job, recorded_at, left_behind, cleared FROM history
                     WHERE app = ?1 AND env = ?2 ORDER BY seq DESC LIMIT ?3",
                )?;
                let rows = st.query_map(params![app, env, limit as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?;
                rows.collect()
            })
            .await?;
        rows.into_iter()
            .map(|(job, at, left_behind, cleared)| {
                Ok(HistoryEntry {
                    job: DeployJob::from_json(&job)?,
                    recorded_at: time(&at)?,
                    left_behind,
                    cleared: cleared.map(|c| serde_json::from_str(&c)).transpose()?,
                })
            })
            .collect()
    }

    async fn mark_faulty(
        &self,
        app: &str,
        env: &str,
        mark: &Faulty,
        seen: Written,
    ) -> Result<Written, PortError> {
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
        .await?;
        Ok(seen)
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

    async fn approve(&self, app: &str, env: &str, word: &Approval) -> Result<bool, PortError> {
        let (app, env, job, by, at) = (
            app.to_string(),
            env.to_string(),
            word.job.to_string(),
            word.by.clone(),
            word.at.timestamp_millis(),
        );
        let json = serde_json::to_string(word)?;
        // As on AWS: words no rule can count any more go.
        let old = at - WORDS_KEPT_DAYS * 86_400_000;
        self.with(move |c| {
            let tx = c.transaction()?;
            let first = tx.execute(
                "INSERT OR IGNORE INTO approvals (app, env, job_id, by, at_ms, word)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![app, env, job, by, at, json],
            )? == 1;
            tx.execute(
                "DELETE FROM approvals WHERE app = ?1 AND env = ?2 AND at_ms < ?3",
                params![app, env, old],
            )?;
            tx.commit()?;
            Ok(first)
        })
        .await
    }

    async fn approvals(
        &self,
        app: &str,
        env: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Approval>, PortError> {
        let (app, env, since) = (app.to_string(), env.to_string(), since.timestamp_millis());
        let rows: Vec<String> = self
            .with(move |c| {
                let mut st = c.prepare(
                    "SELECT word FROM approvals WHERE app = ?1 AND env = ?2 AND at_ms >= ?3
                     ORDER BY at_ms, rowid",
                )?;
                let rows = st.query_map(params![app, env, since], |r| r.get(0))?;
                rows.collect()
            })
            .await?;
        rows.iter().map(|w| Ok(serde_json::from_str(w)?)).collect()
    }

    async fn try_lock(
        &self,
        app: &str,
        env: &str,
        lock: &LockInfo,
        now: DateTime<Utc>,
    ) -> Result<Result<LockInfo, LockInfo>, PortError> {
        let (app, env, asked) = (app.to_string(), env.to_string(), lock.clone());
        self.with(move |c| {
            // IMMEDIATE: the read and the write are one decision, however many processes
            // share the file.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = read_lock(&tx, &app, &env)?;
            let last: u64 = tx
                .query_row(
                    "SELECT last FROM lock_generations WHERE app = ?1 AND env = ?2",
                    params![app, env],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or(0);
            let decided = take(current.as_ref(), last, &asked, now);
            if let Ok(taken) = &decided {
                if taken.generation > last {
                    write_lock(&tx, &app, &env, taken)?;
                    tx.execute(
                        "INSERT OR REPLACE INTO lock_generations (app, env, last) VALUES (?1, ?2, ?3)",
                        params![app, env, taken.generation],
                    )?;
                }
            }
            tx.commit()?;
            Ok(decided)
        })
        .await
    }

    async fn renew(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        generation: u64,
        until: DateTime<Utc>,
    ) -> Result<Renewal, PortError> {
        let (app, env, job) = (app.to_string(), env.to_string(), job.clone());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let renewal = match read_lock(&tx, &app, &env)? {
                Some(held) if held.held_by(&job, generation) => {
                    let abort = held.abort.clone();
                    write_lock(
                        &tx,
                        &app,
                        &env,
                        &LockInfo {
                            expires: Some(until),
                            ..held
                        },
                    )?;
                    Renewal::Held { abort }
                }
                holder => Renewal::Lost { holder },
            };
            tx.commit()?;
            Ok(renewal)
        })
        .await
    }

    async fn release(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        _written: Written,
    ) -> Result<(), PortError> {
        let (app, env, job) = (app.to_string(), env.to_string(), job.clone());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            if read_lock(&tx, &app, &env)?.is_some_and(|l| l.job.as_ref() == Some(&job)) {
                delete_lock(&tx, &app, &env)?;
            }
            tx.commit()
        })
        .await
    }

    async fn unlock(
        &self,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Unlocked, PortError> {
        let (app, env) = (app.to_string(), env.to_string());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let unlocked = match read_lock(&tx, &app, &env)? {
                None => Unlocked::NotLocked,
                Some(l) if l.is_running_deploy(now) => Unlocked::Deploying(l),
                Some(l) => {
                    delete_lock(&tx, &app, &env)?;
                    Unlocked::Released(l)
                }
            };
            tx.commit()?;
            Ok(unlocked)
        })
        .await
    }

    async fn request_abort(
        &self,
        app: &str,
        env: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError> {
        let (app, env, by) = (app.to_string(), env.to_string(), by.to_string());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let asked = match read_lock(&tx, &app, &env)? {
                Some(l) if l.is_running_deploy(now) => {
                    // The first to ask is the one the deploy names.
                    let l = LockInfo {
                        abort: Some(l.abort.clone().unwrap_or(by)),
                        ..l
                    };
                    write_lock(&tx, &app, &env, &l)?;
                    Some(l)
                }
                _ => None,
            };
            tx.commit()?;
            Ok(asked)
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
        let lock = self.with(move |c| read_lock(c, &app, &env)).await?;
        Ok(lock.filter(|l| !l.is_expired(now)))
    }
}
