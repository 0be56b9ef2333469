//! Approvals by a second person: an environment may require that deploys to it (manual or
//! automatic; never a rollback or a sync) are approved before they take the lock. Pure:
//! the words people gave come in, where the job stands goes out.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::deploy::job::{DeployJob, JobId, Source};
use crate::deploy::version::Version;

/// Default `grace_seconds`: an approval of a version carries over to another deploy of it
/// for four hours.
pub const DEFAULT_GRACE_SECONDS: u64 = 4 * 3600;
/// Default `timeout_seconds`: a deploy nobody approved within a day is skipped.
pub const DEFAULT_TIMEOUT_SECONDS: u64 = 24 * 3600;
/// The longest `timeout_seconds`: a Step Functions execution that waits looks again at
/// most every `timeout / 2000` (a few of its 25,000 events each look).
pub const MAX_TIMEOUT_SECONDS: u64 = 7 * 24 * 3600;

/// The `action_id`s of a deploy message's Approve and Reject buttons (Slack).
pub const APPROVE_ACTION: &str = "shipit_approve";
pub const REJECT_ACTION: &str = "shipit_reject";

/// How long words are kept (the AWS ledger prunes older ones): past the longest grace.
pub const WORDS_KEPT_DAYS: i64 = 31;
/// The longest `grace_seconds`.
pub const MAX_GRACE_SECONDS: u64 = 30 * 24 * 3600;

/// `approvals = { required, approvers, requester_may_approve, grace_seconds,
/// timeout_seconds }` on an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approvals {
    /// How many different people must approve.
    pub required: u32,
    /// Slack user ids, or the accounts of CLI users.
    pub approvers: Vec<String>,
    pub requester_may_approve: bool,
    pub grace_seconds: u64,
    pub timeout_seconds: u64,
}

/// One person's word on one job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub job: JobId,
    pub version: Version,
    /// A Slack user id or a CLI user's account.
    pub by: String,
    pub approved: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// Where a job stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "standing", rename_all = "snake_case")]
pub enum Standing {
    /// Enough approvers said yes (some perhaps to an earlier deploy of the version, within
    /// the grace period).
    Approved {
        by: Vec<String>,
    },
    Rejected {
        by: String,
        reason: Option<String>,
    },
    Waiting {
        have: u32,
        need: u32,
    },
}

/// Whether `job` needs approving on an environment with `approvals`.
pub fn needed(approvals: Option<&Approvals>, job: &DeployJob) -> bool {
    approvals.is_some()
        && job.approved_by.is_empty()
        && !matches!(job.source, Source::Rollback { .. } | Source::Sync { .. })
}

impl Approvals {
    /// Whether `who` may give that word on `job`: an approval from one of the approvers,
    /// not who asked for it unless that is allowed; a rejection from an approver or from
    /// who asked for it (taking it back).
    pub fn may(&self, job: &DeployJob, who: &str, approve: bool) -> Result<(), String> {
        if !approve && job.source.person_id() == Some(who) {
            return Ok(());
        }
        self.may_approve(job, who)
    }

    fn may_approve(&self, job: &DeployJob, who: &str) -> Result<(), String> {
        if !self.approvers.iter().any(|a| a == who) {
            return Err(format!(
                "{who} is not an approver of {}/{}: its approvals name {}",
                job.app,
                job.env,
                self.approvers.join(", ")
            ));
        }
        if !self.requester_may_approve && job.source.person_id() == Some(who) {
            return Err(format!(
                "{who} asked for this deploy and may not approve it: another approver must (requester_may_approve = false)"
            ));
        }
        Ok(())
    }

    /// Where `job` stands given `words` (any jobs' of its app+env, in the order given):
    /// a rejection of it by an approver rejects it; otherwise it is approved once
    /// `required` different approvers approved it, or its version within `grace_seconds`
    /// before `now`.
    pub fn standing(&self, job: &DeployJob, words: &[Approval], now: DateTime<Utc>) -> Standing {
        let grace = Duration::seconds(self.grace_seconds.min(i64::MAX as u64) as i64);
        let counts = |w: &&Approval| self.may(job, &w.by, w.approved).is_ok();
        if let Some(no) = words
            .iter()
            .filter(counts)
            .find(|w| w.job == job.id && !w.approved)
        {
            return Standing::Rejected {
                by: no.by.clone(),
                reason: no.reason.clone(),
            };
        }
        // A deploy someone rejected passes none of its approvals on: asking again must not
        // undo a rejection.
        let rejected: Vec<&JobId> = words
            .iter()
            .filter(|w| !w.approved)
            .map(|w| &w.job)
            .collect();
        let mut by: Vec<String> = vec![];
        for w in words.iter().filter(counts).filter(|w| w.approved) {
            let this = w.job == job.id;
            let carried = w.version == job.version
                && w.at + grace >= now
                && w.at <= now
                && !rejected.contains(&&w.job);
            if (this || carried) && !by.contains(&w.by) {
                by.push(w.by.clone());
            }
        }
        let need = self.required.max(1);
        if by.len() as u32 >= need {
            Standing::Approved { by }
        } else {
            Standing::Waiting {
                have: by.len() as u32,
                need,
            }
        }
    }
}

impl Approvals {
    /// From when words may count at `now`: a job's own (given after it asked, at most
    /// `timeout_seconds` ago while it waits) and those carried over (`grace_seconds`).
    pub fn words_since(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let reach = self.grace_seconds.max(self.timeout_seconds);
        let reach = Duration::seconds(i64::try_from(reach).unwrap_or(i64::MAX / 1000));
        now.checked_sub_signed(reach)
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// How often a job waiting for approval looks again, after `looks` looks: soon at first
/// (someone may be about to click), then every minute, or a 2,000th of a long timeout
/// (each look is a few of a Step Functions execution's 25,000 events).
pub fn look_millis(timeout_seconds: u64, looks: u32) -> u64 {
    let most = 60_000u64.max(timeout_seconds.saturating_mul(1000) / 2000);
    (5_000u64 << looks.min(8)).min(most)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::job::Source;

    fn rules(required: u32, requester_may_approve: bool) -> Approvals {
        Approvals {
            required,
            approvers: vec!["U1".into(), "U2".into(), "ann".into()],
            requester_may_approve,
            grace_seconds: 3600,
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
        }
    }

    fn t(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn job(version: &str, by: &str) -> DeployJob {
        let source = Source::Cli {
            user: by.into(),
            nonce: format!("{version}{by}"),
        };
        DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            Version::parse(version).unwrap(),
            source,
            t(0),
        )
    }

    fn word(job: &DeployJob, by: &str, approved: bool, at: i64) -> Approval {
        Approval {
            job: job.id.clone(),
            version: job.version.clone(),
            by: by.into(),
            approved,
            reason: (!approved).then(|| "not on a Friday".into()),
            at: t(at),
        }
    }

    #[test]
    fn approvals_count_different_approvers_only() {
        let j = job("1.4.2", "bob");
        let r = rules(2, false);
        let once = [word(&j, "U1", true, 10)];
        assert_eq!(
            r.standing(&j, &once, t(20)),
            Standing::Waiting { have: 1, need: 2 }
        );
        let twice = [word(&j, "U1", true, 10), word(&j, "U1", true, 11)];
        assert_eq!(
            r.standing(&j, &twice, t(20)),
            Standing::Waiting { have: 1, need: 2 }
        );
        let stranger = [word(&j, "U1", true, 10), word(&j, "U9", true, 11)];
        assert_eq!(
            r.standing(&j, &stranger, t(20)),
            Standing::Waiting { have: 1, need: 2 }
        );
        let two = [word(&j, "U1", true, 10), word(&j, "U2", true, 11)];
        assert_eq!(
            r.standing(&j, &two, t(20)),
            Standing::Approved {
                by: vec!["U1".into(), "U2".into()]
            }
        );
    }

    #[test]
    fn the_requester_counts_only_where_allowed() {
        let j = job("1.4.2", "ann");
        let mine = [word(&j, "ann", true, 10)];
        assert_eq!(
            rules(1, false).standing(&j, &mine, t(20)),
            Standing::Waiting { have: 0, need: 1 }
        );
        let err = rules(1, false).may(&j, "ann", true).unwrap_err();
        assert!(err.contains("asked for this deploy"), "{err}");
        // Taking it back is theirs, approver or not.
        let mut r = rules(1, false);
        r.approvers.retain(|a| a != "ann");
        assert_eq!(r.may(&j, "ann", false), Ok(()));
        let no = [word(&j, "ann", false, 10)];
        assert!(matches!(
            r.standing(&j, &no, t(20)),
            Standing::Rejected { .. }
        ));
        assert!(r.may(&j, "bob", false).is_err());
        assert_eq!(
            rules(1, true).standing(&j, &mine, t(20)),
            Standing::Approved {
                by: vec!["ann".into()]
            }
        );
    }

    #[test]
    fn one_approver_s_rejection_rejects_whatever_else_was_said() {
        let j = job("1.4.2", "bob");
        let words = [word(&j, "U1", true, 10), word(&j, "U2", false, 11)];
        assert_eq!(
            rules(1, false).standing(&j, &words, t(20)),
            Standing::Rejected {
                by: "U2".into(),
                reason: Some("not on a Friday".into())
            }
        );
        // Not an approver's: it does not count either way.
        let words = [word(&j, "U9", false, 11)];
        assert_eq!(
            rules(1, false).standing(&j, &words, t(20)),
            Standing::Waiting { have: 0, need: 1 }
        );
    }

    #[test]
    fn an_approval_of_the_version_carries_over_within_the_grace_period() {
        let earlier = job("1.4.2", "bob");
        let again = job("1.4.2", "carol");
        let other = job("1.4.3", "carol");
        let words = [word(&earlier, "U1", true, 100)];
        let r = rules(1, false);
        assert_eq!(
            r.standing(&again, &words, t(100 + 3600)),
            Standing::Approved {
                by: vec!["U1".into()]
            }
        );
        assert_eq!(
            r.standing(&again, &words, t(100 + 3601)),
            Standing::Waiting { have: 0, need: 1 }
        );
        assert_eq!(
            r.standing(&other, &words, t(200)),
            Standing::Waiting { have: 0, need: 1 }
        );
        // A rejection does not carry over, nor do approvals of a deploy someone rejected.
        let words = [word(&earlier, "U1", false, 100)];
        assert_eq!(
            r.standing(&again, &words, t(200)),
            Standing::Waiting { have: 0, need: 1 }
        );
        let words = [
            word(&earlier, "U1", true, 100),
            word(&earlier, "U2", false, 110),
        ];
        assert_eq!(
            r.standing(&again, &words, t(200)),
            Standing::Waiting { have: 0, need: 1 }
        );
        // Nor does an approval by the new deploy's own requester, where not allowed.
        let words = [word(&earlier, "ann", true, 100)];
        let mine = job("1.4.2", "ann");
        assert_eq!(
            r.standing(&mine, &words, t(200)),
            Standing::Waiting { have: 0, need: 1 }
        );
    }

    #[test]
    fn rollbacks_syncs_and_approved_jobs_need_nothing() {
        let r = rules(1, false);
        let live = job("1.4.1", "bob");
        assert!(needed(Some(&r), &live));
        assert!(!needed(None, &live));
        let via = Source::Cli {
            user: "bob".into(),
            nonce: "n".into(),
        };
        let rollback = live.rollback(None, via, t(0));
        assert!(!needed(Some(&r), &rollback));
        let approved = DeployJob {
            approved_by: vec!["U1".into()],
            ..live
        };
        assert!(!needed(Some(&r), &approved));
    }

    #[test]
    fn looks_come_soon_then_every_minute_or_rarer_for_a_long_timeout() {
        assert_eq!(look_millis(DEFAULT_TIMEOUT_SECONDS, 0), 5_000);
        assert_eq!(look_millis(DEFAULT_TIMEOUT_SECONDS, 1), 10_000);
        assert_eq!(look_millis(DEFAULT_TIMEOUT_SECONDS, 30), 60_000);
        let most = look_millis(MAX_TIMEOUT_SECONDS, 30);
        assert!(MAX_TIMEOUT_SECONDS * 1000 / most <= 2000, "{most}");
    }
}
