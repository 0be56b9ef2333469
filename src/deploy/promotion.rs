//! Promotion: a version that went live on one environment (staging) is sent on to another
//! (production) once it has been live there `after_seconds`, if it still is and is not
//! marked faulty. The promotion is queued when the first deploy succeeds, due at that
//! time; it then passes its environment's gate, calendar and approvals as any automatic
//! job does. Pure: what is live and marked comes in, the verdict goes out.

use chrono::{DateTime, Duration, Utc};

use crate::deploy::history::{faulty_mark, Faulty, HistoryEntry};
use crate::deploy::job::{DeployJob, Source};

/// Default `after_seconds`: an hour live before it goes on.
pub const DEFAULT_AFTER_SECONDS: u64 = 3600;
/// The longest `after_seconds`: a promotion waits in its queue that long, and a day is as
/// long as a version should sit between environments unwatched.
pub const MAX_AFTER_SECONDS: u64 = 86_400;
/// `promote = { to, after_seconds }` on an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promote {
    pub to: String,
    pub after_seconds: u64,
}

impl Promote {
    /// The job that sends `job`, just made live on its environment, on to `to`; none for
    /// a rollback or a sync (they bring back or keep what was live, promoted already).
    pub fn job(&self, job: &DeployJob, now: DateTime<Utc>) -> Option<DeployJob> {
        if matches!(job.source, Source::Rollback { .. } | Source::Sync { .. }) {
            return None;
        }
        let after = Duration::seconds(i64::try_from(self.after_seconds).ok()?);
        let source = Source::Promotion {
            from_env: job.env.clone(),
            from_job: job.id.clone(),
            due_at: now.checked_add_signed(after)?,
        };
        Some(DeployJob::new(
            &job.app,
            &self.to,
            job.package.clone(),
            job.version.clone(),
            source,
            now,
        ))
    }
}

/// Where a promotion stands at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Not due yet: it waits (holding no lock, keeping no place in the queue).
    Waits { until: DateTime<Utc>, why: String },
    /// What it promotes is no longer live where it comes from, or was marked faulty there.
    Refused(String),
    /// It goes on as any automatic job.
    Goes,
}

/// Where promotion `job` stands at `now`, given what is live on the environment it comes
/// from and the marks there; `None` for a job that is not a promotion.
pub fn standing(
    job: &DeployJob,
    live: Option<&HistoryEntry>,
    faulty: &[Faulty],
    now: DateTime<Utc>,
) -> Option<Standing> {
    let Source::Promotion {
        from_env,
        from_job,
        due_at,
    } = &job.source
    else {
        return None;
    };
    if now < *due_at {
        return Some(Standing::Waits {
            until: *due_at,
            why: format!(
                "promoted from {from_env} at {} if {} is still live there and not marked faulty",
                due_at.format("%Y-%m-%d %H:%M:%S UTC"),
                job.version
            ),
        });
    }
    let refused = |why: String| Some(Standing::Refused(format!("not promoted: {why}")));
    match live {
        None => return refused(format!("nothing is live on {from_env} any more")),
        Some(e) if e.job.id != *from_job => {
            return refused(format!(
                "{from_env} runs {} now (job {}), not job {from_job}",
                e.job.version, e.job.id
            ))
        }
        Some(_) => {}
    }
    match faulty_mark(faulty, &job.version) {
        Some(mark) => refused(format!(
            "{} was marked faulty on {from_env} ({})",
            job.version,
            mark.why()
        )),
        None => Some(Standing::Goes),
    }
}

/// Whether `job` is a promotion not due yet at `now` (it keeps no place in its queue).
pub fn not_due(job: &DeployJob, now: DateTime<Utc>) -> bool {
    matches!(job.source, Source::Promotion { due_at, .. } if now < due_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::version::Version;

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn staging(version: &str, nonce: &str) -> DeployJob {
        let source = Source::Cli {
            user: "ann".into(),
            nonce: nonce.into(),
        };
        DeployJob::new(
            "hello",
            "staging",
            "hello-app".parse().unwrap(),
            Version::parse(version).unwrap(),
            source,
            t(0),
        )
    }

    fn rule() -> Promote {
        Promote {
            to: "production".into(),
            after_seconds: 600,
        }
    }

    #[test]
    fn a_promotion_waits_until_due_then_goes_if_its_version_is_still_live_and_sound() {
        let live = staging("1.4.2", "a");
        let promotion = rule().job(&live, t(10)).unwrap();
        assert_eq!(
            (promotion.env.as_str(), &promotion.version),
            ("production", &live.version)
        );
        // Delivered again, it is the same job.
        assert_eq!(rule().job(&live, t(10)).unwrap().id, promotion.id);
        let entry = HistoryEntry::new(live.clone(), t(5));
        let Some(Standing::Waits { until, why }) = standing(&promotion, Some(&entry), &[], t(300))
        else {
            panic!("goes before its time");
        };
        assert_eq!(until, t(610));
        assert!(why.starts_with("promoted from staging at"), "{why}");
        assert!(not_due(&promotion, t(609)) && !not_due(&promotion, t(610)));
        assert_eq!(
            standing(&promotion, Some(&entry), &[], t(610)),
            Some(Standing::Goes)
        );
    }

    #[test]
    fn a_promotion_of_a_version_replaced_or_marked_faulty_is_refused() {
        let live = staging("1.4.2", "a");
        let promotion = rule().job(&live, t(10)).unwrap();
        let newer = HistoryEntry::new(staging("1.4.3", "b"), t(100));
        let Some(Standing::Refused(reason)) = standing(&promotion, Some(&newer), &[], t(700))
        else {
            panic!("promoted what is no longer live");
        };
        assert!(
            reason.starts_with("not promoted: staging runs 1.4.3 now"),
            "{reason}"
        );
        let mark = Faulty {
            version: live.version.clone(),
            job: live.id.clone(),
            reason: "n2 failed its health check".into(),
            at: t(200),
        };
        let entry = HistoryEntry::new(live.clone(), t(5));
        let Some(Standing::Refused(reason)) = standing(&promotion, Some(&entry), &[mark], t(700))
        else {
            panic!("promoted a faulty version");
        };
        assert!(
            reason.contains("1.4.2 was marked faulty on staging"),
            "{reason}"
        );
        assert!(matches!(
            standing(&promotion, None, &[], t(700)),
            Some(Standing::Refused(_))
        ));
    }

    #[test]
    fn rollbacks_and_syncs_are_not_promoted_and_other_jobs_have_no_promotion_standing() {
        let live = staging("1.4.2", "a");
        let back = live.rollback(None, live.source.clone(), t(1));
        assert!(rule().job(&back, t(2)).is_none());
        assert_eq!(standing(&live, None, &[], t(0)), None);
        assert!(!not_due(&live, t(0)));
    }
}
