//! The four DORA figures of one app+env over a window, from the jobs that ended:
//! - deploy frequency: changes that went live, a day (syncs and rollbacks are not changes);
//! - lead time for changes: from the tag's commit (its time in the push event) to live,
//!   the median, over the changes that went live and carry one;
//! - change failure rate: of the changes that went live or failed on the way (a failed
//!   restart, health check or bake, rolled back or not), those that failed or that a
//!   rollback later replaced;
//! - time to restore: from a failed change's start (or, for one a rollback replaced, from
//!   when it went live) to when the previous version served again (the failed deploy's
//!   own end, after its automatic rollback; or the rollback going live), the median.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::history::HistoryEntry;
use super::job::{DeployJob, JobId, Source};
use super::status::JobStatus;
use super::story::Kept;

/// The days the figures look back, where nobody asked for another window (the page,
/// Datadog).
pub const WINDOW_DAYS: u32 = 30;

/// One job that ended, as the figures need it.
#[derive(Debug, Clone)]
pub struct Ended {
    pub job: DeployJob,
    pub status: JobStatus,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// When it went live (its history entry), if it did.
    pub live_at: Option<DateTime<Utc>>,
}

impl Ended {
    /// A job as the live history keeps it: it went live when it was recorded.
    pub fn went_live(entry: &HistoryEntry) -> Ended {
        Ended {
            job: entry.job.clone(),
            status: JobStatus::Succeeded,
            started_at: None,
            ended_at: Some(entry.recorded_at),
            live_at: Some(entry.recorded_at),
        }
    }

    /// A job that ended without going live, as a runtime kept it.
    pub fn not_live(kept: &Kept) -> Ended {
        Ended {
            job: kept.job.clone(),
            status: kept.status,
            started_at: kept.started_at,
            ended_at: kept.ended_at,
            live_at: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Figures {
    pub app: String,
    pub env: String,
    pub days: u32,
    /// Changes that went live in the window.
    pub deploys: u32,
    pub deploys_per_day: f64,
    /// Median, in seconds, over `lead_times` changes.
    pub lead_time_seconds: Option<i64>,
    pub lead_times: u32,
    /// Changes that went live or failed on the way, and of those, the ones that failed.
    pub changes: u32,
    pub failed_changes: u32,
    pub change_failure_rate: Option<f64>,
    /// Median, in seconds, over `restores` failed changes that were restored.
    pub time_to_restore_seconds: Option<i64>,
    pub restores: u32,
}

fn median(mut values: Vec<Duration>) -> Option<i64> {
    values.sort();
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2].num_seconds()),
        _ => Some((values[n / 2 - 1] + values[n / 2]).num_seconds() / 2),
    }
}

/// A change: a job that ships a version (not a sync, not a rollback).
fn is_change(job: &DeployJob) -> bool {
    !matches!(job.source, Source::Sync { .. } | Source::Rollback { .. })
}

/// The figures of `jobs` (one app+env's, any order) over the `days` before `now`.
pub fn figures(app: &str, env: &str, jobs: &[Ended], days: u32, now: DateTime<Utc>) -> Figures {
    let since = now - Duration::days(i64::from(days));
    let within = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t >= since && t <= now);
    // Jobs a rollback replaced, and when that rollback went live.
    let replaced: Vec<(&JobId, DateTime<Utc>)> = jobs
        .iter()
        .filter_map(|e| match (&e.job.source, e.live_at) {
            (
                Source::Rollback {
                    replaces: Some(r), ..
                },
                Some(at),
            ) => Some((r, at)),
            _ => None,
        })
        .collect();
    let mut deploys = 0;
    let mut lead = vec![];
    let mut changes = 0;
    let mut failed = 0;
    let mut restore = vec![];
    for e in jobs.iter().filter(|e| is_change(&e.job)) {
        let failed_on_the_way = matches!(e.status, JobStatus::Failed | JobStatus::RollbackFailed)
            && e.started_at.is_some();
        let when = e.live_at.or(e.ended_at);
        if !within(when) || (e.live_at.is_none() && !failed_on_the_way) {
            continue;
        }
        changes += 1;
        if let Some(live) = e.live_at {
            deploys += 1;
            if let Source::Tag {
                committed_at: Some(c),
                ..
            } = &e.job.source
            {
                lead.push(live - *c);
            }
            if let Some((_, back)) = replaced.iter().find(|(r, _)| **r == e.job.id) {
                failed += 1;
                restore.push(*back - live);
            }
        } else {
            failed += 1;
            if let (JobStatus::Failed, Some(start), Some(end)) =
                (e.status, e.started_at, e.ended_at)
            {
                restore.push(end - start);
            }
        }
    }
    Figures {
        app: app.to_string(),
        env: env.to_string(),
        days,
        deploys,
        deploys_per_day: f64::from(deploys) / f64::from(days.max(1)),
        lead_times: lead.len() as u32,
        lead_time_seconds: median(lead),
        changes,
        failed_changes: failed,
        change_failure_rate: (changes > 0).then(|| f64::from(failed) / f64::from(changes)),
        restores: restore.len() as u32,
        time_to_restore_seconds: median(restore),
    }
}

/// The figures as a person reads them, one phrase each (the CLI and the page).
pub struct Phrases {
    pub frequency: String,
    pub lead_time: String,
    pub failure_rate: String,
    pub restore: String,
}

pub fn dora_phrases(f: &Figures) -> Phrases {
    let none = |what: &str| format!("– (no {what})");
    Phrases {
        frequency: format!("{} ({:.2} a day)", f.deploys, f.deploys_per_day),
        lead_time: f.lead_time_seconds.map_or(none("commit times"), |s| {
            format!("{} (median of {})", human(s), f.lead_times)
        }),
        failure_rate: f.change_failure_rate.map_or(none("changes"), |r| {
            format!("{:.0} % ({} of {})", r * 100.0, f.failed_changes, f.changes)
        }),
        restore: f.time_to_restore_seconds.map_or(none("failures"), |s| {
            format!("{} (median of {})", human(s), f.restores)
        }),
    }
}

/// `3 h 20 min`, `45 s`: a duration as a person reads it.
pub fn human(seconds: i64) -> String {
    match seconds {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{} min", s / 60),
        s if s < 172_800 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        s => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::deploy::version::Version;

    fn at(h: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap() + Duration::hours(h)
    }

    fn tag(v: &str, committed: i64) -> DeployJob {
        DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            Version::parse(v).unwrap(),
            Source::Tag {
                event: "push".into(),
                repo: "acme/hello".into(),
                tag: format!("v{v}"),
                commit: None,
                delivery: None,
                pusher: None,
                committed_at: Some(at(committed)),
            },
            at(committed),
        )
    }

    fn ended(job: DeployJob, status: JobStatus, start: i64, end: i64, live: bool) -> Ended {
        Ended {
            job,
            status,
            started_at: Some(at(start)),
            ended_at: Some(at(end)),
            live_at: live.then(|| at(end)),
        }
    }

    #[test]
    fn the_four_figures_count_changes_failures_and_restores() {
        let ok1 = tag("1.0.0", 0);
        let bad = tag("1.1.0", 10);
        let replaced = tag("1.2.0", 20);
        let rollback = DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            Version::parse("1.0.0").unwrap(),
            Source::Rollback {
                restores: ok1.id.clone(),
                replaces: Some(replaced.id.clone()),
                requested_via: Box::new(Source::Cli {
                    user: "ann".into(),
                    nonce: "1".into(),
                }),
            },
            at(26),
        );
        let jobs = [
            ended(ok1, JobStatus::Succeeded, 1, 2, true),
            // Failed its canary's health check at hour 12 and was put back at hour 13.
            ended(bad, JobStatus::Failed, 12, 13, false),
            ended(replaced, JobStatus::Succeeded, 22, 24, true),
            ended(rollback, JobStatus::Succeeded, 26, 27, true),
            ended(tag("0.9.0", 0), JobStatus::Skipped, 3, 3, false),
        ];
        let f = figures("hello", "production", &jobs, 30, at(30));
        assert_eq!((f.deploys, f.changes, f.failed_changes), (2, 3, 2));
        assert_eq!(f.deploys_per_day, 2.0 / 30.0);
        // Lead times 2 h and 4 h: the median of two is their mean.
        assert_eq!((f.lead_times, f.lead_time_seconds), (2, Some(3 * 3600)));
        assert_eq!(f.change_failure_rate, Some(2.0 / 3.0));
        // Restores: 1 h (the failed deploy's own rollback) and 3 h (live at 24, the
        // rollback live at 27).
        assert_eq!((f.restores, f.time_to_restore_seconds), (2, Some(2 * 3600)));
        // A window that ends before the last two leaves them out.
        let early = figures("hello", "production", &jobs, 30, at(20));
        assert_eq!(
            (early.deploys, early.changes, early.failed_changes),
            (1, 2, 1)
        );
        let empty = figures("hello", "production", &[], 7, at(0));
        assert_eq!(
            (empty.change_failure_rate, empty.lead_time_seconds),
            (None, None)
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(45), "45 s");
        assert_eq!(human(600), "10 min");
        assert_eq!(human(3 * 3600 + 20 * 60), "3 h 20 min");
        assert_eq!(human(5 * 86_400), "5 days");
    }
}
