//! One wording of where an app+env and its jobs stand, for every place a person reads
//! it: the CLI, chat replies and notifications. Notices have theirs in `status::describe`.

use super::engine::NodeState;
use super::history::{Faulty, HistoryEntry};
use super::job::DeployJob;
use super::lock::LockInfo;

pub const NOTHING_LIVE: &str = "nothing deployed yet";

/// Who holds an app+env: a deploy (`being deployed by job …`) or a person.
pub fn lock_phrase(lock: &LockInfo) -> String {
    match &lock.job {
        Some(job) => format!(
            "being deployed by job {job} (since {})",
            lock.since.format("%H:%M:%S UTC")
        ),
        None => format!("locked by {}: {}", lock.holder, lock.reason),
    }
}

pub fn lock_line(app: &str, env: &str, lock: &LockInfo) -> String {
    format!("{app}/{env} is {}", lock_phrase(lock))
}

/// `, forced past the gate by …` for a job someone forced; empty otherwise.
pub fn forced_note(job: &DeployJob) -> String {
    forced_by_note(job.forced_by.as_deref())
}

/// `, outside the calendar (override by ann: hotfix for INC-42)`, if it was.
pub fn override_note(job: &DeployJob) -> String {
    job.overridden.as_ref().map_or(String::new(), |o| {
        format!(
            ", outside the calendar (override by {}: {})",
            o.by, o.reason
        )
    })
}

/// `, approved by U1, ann`, if it waited for approval.
fn approved_note(job: &DeployJob) -> String {
    match job.approved_by.as_slice() {
        [] => String::new(),
        by => format!(", approved by {}", by.join(", ")),
    }
}

/// What was let through for a job, as one note: the gate forced, the calendar overridden,
/// who approved it.
pub fn job_notes(job: &DeployJob) -> String {
    format!(
        "{}{}{}",
        forced_note(job),
        override_note(job),
        approved_note(job)
    )
}

/// The same, from who forced it.
pub fn forced_by_note(forced_by: Option<&str>) -> String {
    forced_by.map_or(String::new(), |who| {
        format!(", forced past the gate by {who}")
    })
}

/// One past deploy: `1.2.0 — job … — 2026-11-24 10:00 UTC — by …`, what marked its
/// version faulty if something did, and the mark it lifted if it did.
pub fn history_line(entry: &HistoryEntry, mark: Option<&Faulty>) -> String {
    let job = &entry.job;
    format!(
        "{} — job {} — {} — by {}{}{}{}{}",
        job.version,
        job.id,
        entry.recorded_at.format("%Y-%m-%d %H:%M UTC"),
        job.requested_by,
        job_notes(job),
        entry
            .left_behind
            .as_ref()
            .map_or(String::new(), |l| format!(" — except {l}")),
        mark.map_or(String::new(), |m| format!(" — {}", faulty_phrase(m))),
        entry.cleared.as_ref().map_or(String::new(), |c| format!(
            " — lifted the FAULTY mark ({}) by deploying it by name",
            c.why()
        ))
    )
}

/// `FAULTY: rolled back to 1.0.0 by …`.
pub fn faulty_phrase(mark: &Faulty) -> String {
    format!("FAULTY: {}", mark.why())
}

/// Where a node of a deploy is.
pub fn node_phrase(state: NodeState) -> &'static str {
    match state {
        NodeState::Pending => "waiting",
        NodeState::Installed => "installed",
        NodeState::InstallFailed => "install failed",
        NodeState::Healthy => "healthy",
        NodeState::Unhealthy => "unhealthy",
        NodeState::Reverted => "back on the previous version",
        NodeState::Gone => "gone (did not answer)",
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;
    use crate::deploy::job::{JobId, Source};
    use crate::deploy::lock::Written;
    use crate::deploy::version::Version;

    fn entry(forced_by: Option<&str>) -> HistoryEntry {
        let at = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let job = DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            Version::parse("1.2.0").unwrap(),
            Source::Cli {
                user: "ann".into(),
                nonce: "n".into(),
            },
            at,
        );
        let job = match forced_by {
            Some(who) => DeployJob {
                forced_by: Some(who.into()),
                ..job
            },
            None => job,
        };
        HistoryEntry::new(job, at)
    }

    #[test]
    fn history_and_forced_read_the_same_everywhere() {
        let e = entry(None);
        let forced = entry(Some("@ann"));
        assert!(history_line(&forced, None).ends_with(", forced past the gate by @ann"));
        assert!(!history_line(&e, None).contains("forced"));
        let mark = Faulty {
            version: e.job.version.clone(),
            job: e.job.id.clone(),
            reason: "rolled back to 1.1.0 by ann".into(),
            at: e.recorded_at,
        };
        assert!(history_line(&e, Some(&mark))
            .ends_with(" — by ann — FAULTY: rolled back to 1.1.0 by ann"));
        let partial = HistoryEntry {
            left_behind: Some("web3 unhealthy".into()),
            ..e
        };
        assert!(history_line(&partial, None).ends_with(" — by ann — except web3 unhealthy"));
    }

    #[test]
    fn a_lock_says_whether_a_deploy_or_a_person_holds_it() {
        let since = Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap();
        let mut lock = LockInfo {
            holder: "@ann".into(),
            reason: "db migration".into(),
            since,
            expires: None,
            job: None,
            generation: 1,
            abort: None,
            written: Written::default(),
        };
        assert_eq!(
            lock_line("hello", "production", &lock),
            "hello/production is locked by @ann: db migration"
        );
        lock.job = Some(JobId::derive(
            "hello",
            "production",
            &Version::parse("1.0.0").unwrap(),
            "x",
        ));
        assert!(lock_phrase(&lock).starts_with("being deployed by job "));
        assert!(lock_phrase(&lock).ends_with("(since 10:00:00 UTC)"));
    }
}
