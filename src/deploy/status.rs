//! Where a job is, in one type: queued, running, then how it ended. Every runtime,
//! view and the state machine's Choice states read it; its text form is the wire form.

use serde::{Deserialize, Serialize};

use super::engine::{Notice, Outcome};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    /// A rollback did not bring a node back healthy: someone must look.
    RollbackFailed,
    Skipped,
    /// Stopped by a person; nodes it restarted were put back.
    Aborted,
    /// Taken off the queue by a person before it started: it never ran.
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 8] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::RollbackFailed,
        JobStatus::Skipped,
        JobStatus::Aborted,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::RollbackFailed => "rollback_failed",
            JobStatus::Skipped => "skipped",
            JobStatus::Aborted => "aborted",
            JobStatus::Cancelled => "cancelled",
        }
    }

    /// Queued or running: not ended yet.
    pub fn is_pending(self) -> bool {
        matches!(self, JobStatus::Queued | JobStatus::Running)
    }
}

impl From<&Outcome> for JobStatus {
    fn from(outcome: &Outcome) -> JobStatus {
        match outcome {
            Outcome::Succeeded { .. } => JobStatus::Succeeded,
            Outcome::Failed { .. } => JobStatus::Failed,
            Outcome::RollbackFailed { .. } => JobStatus::RollbackFailed,
            Outcome::Skipped { .. } => JobStatus::Skipped,
            Outcome::Aborted { .. } => JobStatus::Aborted,
            Outcome::Cancelled { .. } => JobStatus::Cancelled,
        }
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a job status")]
pub struct UnknownStatus(pub String);

impl std::str::FromStr for JobStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<JobStatus, UnknownStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|j| j.as_str() == s)
            .ok_or_else(|| UnknownStatus(s.to_string()))
    }
}

/// One line per notice, as the demo and `serve`'s log show them.
pub fn describe(n: &Notice) -> String {
    match n {
        Notice::Started { from, nodes } => format!(
            "started: {} node(s), live before: {}",
            nodes,
            from.as_ref().map_or("nothing".into(), |v| v.to_string())
        ),
        Notice::WaitingForChecks {
            reason,
            wait_seconds,
        } => format!("waiting up to {wait_seconds} s: {reason}"),
        Notice::Aborting { by } => {
            format!("abort asked by {by}: stopping after the command in flight")
        }
        Notice::WaitingForWindow { why } => format!("waiting: {why}"),
        Notice::AwaitingApproval {
            have,
            need,
            approvers,
        } => format!(
            "waiting for approval ({have} of {need}) by {}",
            crate::deploy::lists::names(approvers)
        ),
        Notice::Approved { by } => format!("approved by {}", by.join(", ")),
        Notice::Promoting { promoted } => match &promoted.failed {
            None => format!(
                "promotion to {} queued: due at {}, if still live here and not marked faulty then",
                promoted.to,
                promoted.due_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            Some(why) => format!(
                "promotion to {} NOT queued: {why}; deploy it there by hand",
                promoted.to
            ),
        },
        Notice::WaitingForLock { holder } => {
            format!("waiting: locked by {} ({})", holder.holder, holder.reason)
        }
        Notice::Installed { node } => format!("{node}: installed"),
        Notice::InstallFailed { node, detail } => format!("{node}: install FAILED: {detail}"),
        Notice::Restarted { node } => format!("{node}: restarted"),
        Notice::Healthy { node } => format!("{node}: healthy"),
        Notice::Unhealthy { node, detail } => format!("{node}: UNHEALTHY: {detail}"),
        Notice::Gone { node, detail } => format!("{node}: GONE: {detail}"),
        Notice::CheckFailed {
            check,
            stage,
            detail,
        } => format!("check {check} FAILED {stage}: {detail}"),
        Notice::ChecksPassed { stage, readings } => {
            format!("checks passed {stage}: {}", readings.join("; "))
        }
        Notice::RollingBack { to, nodes, reason } => format!(
            "rolling back to {to} ({}): {reason}",
            if nodes.is_empty() {
                "nothing restarted yet".into()
            } else {
                format!("restarting {}", nodes.join(", "))
            }
        ),
        Notice::Drifted {
            node,
            installed,
            detail,
        } => match installed {
            Some(v) => format!("{node}: runs {v}"),
            None if detail.is_empty() => format!("{node}: no version installed"),
            None => format!("{node}: no version installed ({detail})"),
        },
        Notice::MarkedFaulty { version, reason } => format!("{version} marked faulty: {reason}"),
        Notice::DeployingFaulty { mark } => {
            format!("deploying {}, marked faulty: {}", mark.version, mark.why())
        }
        Notice::Finished { outcome } => match outcome {
            Outcome::Succeeded { .. } => match outcome.left_behind() {
                None => "succeeded".into(),
                Some(left) => format!("succeeded, except {left}"),
            },
            Outcome::Failed {
                reason,
                rolled_back: true,
                ..
            } => format!("FAILED and rolled back: {reason}"),
            Outcome::Failed { reason, .. } => format!("FAILED: {reason}"),
            Outcome::RollbackFailed { reason } => {
                format!("FAILED, and the rollback failed too (look now): {reason}")
            }
            Outcome::Skipped { reason } => format!("skipped: {reason}"),
            Outcome::Aborted {
                by,
                rolled_back: true,
                ..
            } => format!("ABORTED by {by}; the nodes it restarted were put back"),
            Outcome::Aborted { reason, .. } => format!("ABORTED: {reason}"),
            Outcome::Cancelled { reason, .. } => reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_matches_serde() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>(), Ok(s));
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("done".parse::<JobStatus>().is_err());
    }
}
