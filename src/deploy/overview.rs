//! Where an app+env stands: what is live, who holds it, which versions are faulty, the
//! jobs queued or running there, and each node's version as last seen. One read model
//! for every view (`shipit status`, the page, chat's `/deploy status`): read here from
//! the ledger, which both runtimes keep, and completed by a runtime that keeps more (the
//! SQLite store's jobs and node versions).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::history::{faulty_mark, Faulty, HistoryEntry};
use super::job::JobId;
use super::lock::LockInfo;
use super::ports::{Ledger, PortError};
use super::report::{lock_line, NOTHING_LIVE};
use super::status::JobStatus;
use super::version::Version;

#[derive(Debug, Clone, Serialize)]
pub struct EnvStatus {
    pub app: String,
    pub env: String,
    pub live: Option<Live>,
    pub lock: Option<LockInfo>,
    /// Versions rolled back from, newest mark first: no rollback or automatic job sends
    /// them out again.
    pub faulty: Vec<Version>,
    /// Queued and running jobs, oldest first, where the runtime can see them.
    pub jobs: Vec<ActiveJob>,
    /// Each node, in the config's order, with the version it was last seen serving, where
    /// the runtime keeps that.
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// `None`: no deploy of shipit's has seen it serve yet.
    pub version: Option<Version>,
    pub seen_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub version: Version,
    pub job: JobId,
    pub since: DateTime<Utc>,
    pub by: String,
}

impl From<HistoryEntry> for Live {
    fn from(e: HistoryEntry) -> Live {
        Live {
            version: e.job.version,
            job: e.job.id,
            since: e.recorded_at,
            by: e.job.requested_by,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveJob {
    pub job: JobId,
    pub version: Version,
    pub status: JobStatus,
    /// Why its environment's calendar holds it back now, and until when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<String>,
}

impl EnvStatus {
    /// What the ledger says of `app`/`env`; jobs and nodes are left to a runtime that
    /// keeps them.
    pub async fn read(
        ledger: &dyn Ledger,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<EnvStatus, PortError> {
        let live = ledger.history(app, env, 1).await?.into_iter().next();
        Ok(EnvStatus {
            app: app.to_string(),
            env: env.to_string(),
            live: live.map(Live::from),
            lock: ledger.lock_state(app, env, now).await?,
            faulty: ledger
                .faulty(app, env)
                .await?
                .into_iter()
                .map(|f| f.version)
                .collect(),
            jobs: vec![],
            nodes: vec![],
        })
    }

    /// One line, as chat says it: `hello/production: 1.2.0 (job …, … by …) — hello/production
    /// is being deployed by job … — faulty: 1.1.0 — queued: 1.3.0`.
    pub fn line(&self) -> String {
        let mut line = format!(
            "{}/{}: {}",
            self.app,
            self.env,
            live_line(self.live.as_ref())
        );
        if let Some(lock) = &self.lock {
            line.push_str(&format!(" — {}", lock_line(&self.app, &self.env, lock)));
        }
        if !self.faulty.is_empty() {
            let versions: Vec<String> = self.faulty.iter().map(|v| v.to_string()).collect();
            line.push_str(&format!(" — faulty: {}", versions.join(", ")));
        }
        for j in &self.jobs {
            line.push_str(&format!(" — {}: {} (job {})", j.status, j.version, j.job));
            if let Some(why) = &j.held {
                line.push_str(&format!(", waiting: {why}"));
            }
        }
        line
    }
}

/// One deploy that went live, and the mark on its version if it was rolled back from
/// since.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryRow {
    #[serde(flatten)]
    pub entry: HistoryEntry,
    pub faulty: Option<Faulty>,
}

/// The last `limit` deploys of `app`/`env` that went live, newest first, each with its
/// version's faulty mark: what `shipit history` and `/deploy history` show.
pub async fn history(
    ledger: &dyn Ledger,
    app: &str,
    env: &str,
    limit: usize,
) -> Result<Vec<HistoryRow>, PortError> {
    let marks = ledger.faulty(app, env).await?;
    Ok(ledger
        .history(app, env, limit)
        .await?
        .into_iter()
        .map(|entry| HistoryRow {
            faulty: faulty_mark(&marks, &entry.job.version).cloned(),
            entry,
        })
        .collect())
}

/// What is live: `1.2.0 (job …, 2026-11-24 10:00 UTC by …)`.
pub fn live_line(live: Option<&Live>) -> String {
    live.map_or(NOTHING_LIVE.to_string(), |l| {
        format!(
            "{} (job {}, {} by {})",
            l.version,
            l.job,
            l.since.format("%Y-%m-%d %H:%M UTC"),
            l.by
        )
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::deploy::job::{DeployJob, Source};

    #[test]
    fn a_line_says_what_is_live_who_holds_it_what_is_faulty_and_what_waits() {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let job = DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            Version::parse("1.2.0").unwrap(),
            Source::Cli {
                user: "ann".into(),
                nonce: "1".into(),
            },
            at,
        );
        let id = job.id.clone();
        let mut s = EnvStatus {
            app: "hello".into(),
            env: "production".into(),
            live: None,
            lock: None,
            faulty: vec![],
            jobs: vec![],
            nodes: vec![],
        };
        assert_eq!(s.line(), format!("hello/production: {NOTHING_LIVE}"));
        s.live = Some(Live::from(HistoryEntry::new(job, at)));
        s.faulty = vec![Version::parse("1.1.0").unwrap()];
        s.jobs = vec![ActiveJob {
            job: id.clone(),
            version: Version::parse("1.3.0").unwrap(),
            status: JobStatus::Queued,
            held: None,
        }];
        assert_eq!(
            s.line(),
            format!(
                "hello/production: 1.2.0 (job {id}, 2026-11-24 10:00 UTC by ann) — faulty: 1.1.0 — queued: 1.3.0 (job {id})"
            )
        );
    }
}
