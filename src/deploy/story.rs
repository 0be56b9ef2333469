//! A job's story: what every view tells of one job (`shipit show`, `/api/jobs/ID`, and
//! later chat and the page): where it is, why it ended as it did, who asked, when, and
//! what ran on each node. Built here from what a runtime keeps, so that every view and
//! runtime tells it the same way.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::command::NodeResult;
use super::engine::Notice;
use super::job::DeployJob;
use super::status::{describe, JobStatus};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Story {
    pub job: DeployJob,
    pub status: JobStatus,
    /// Why it did not succeed (failed, skipped, aborted), or what a success left behind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub queued_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// What ran on each node, in the order it started.
    pub steps: Vec<Step>,
    /// What the deploy said as it went, with when.
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub text: String,
}

/// One command on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    pub node: String,
    pub stage: Stage,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    pub result: StepResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The end of what it printed, when it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub output: String,
}

impl Step {
    /// How long it took, `1.2 s`; empty while it runs or when a time is unknown.
    pub fn took(&self) -> String {
        match (self.started_at, self.ended_at) {
            (Some(a), Some(b)) => format!("{:.1} s", (b - a).num_milliseconds() as f64 / 1000.0),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// A sync reading the installed version.
    Probe,
    Install,
    /// The restart and the health checks the node runs after it.
    Restart,
    /// The canary's health check after its bake.
    Bake,
    RollbackInstall,
    RollbackRestart,
}

impl Stage {
    /// The stage of a command by its key (`JOB:install`, `JOB:restart:2`, …; see the
    /// engine's `key`); `None` for a key of another job or unknown form.
    pub fn of_key(job: &DeployJob, key: &str) -> Option<Stage> {
        let what = key.strip_prefix(job.id.as_str())?.strip_prefix(':')?;
        let first = |p: &str| what == p || what.starts_with(&format!("{p}:"));
        Some(if first("revert:install") {
            Stage::RollbackInstall
        } else if first("revert:restart") {
            Stage::RollbackRestart
        } else if first("install") {
            Stage::Install
        } else if first("restart") {
            Stage::Restart
        } else if first("bake") {
            Stage::Bake
        } else if first("probe") {
            Stage::Probe
        } else {
            return None;
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Probe => "probe",
            Stage::Install => "install",
            Stage::Restart => "restart",
            Stage::Bake => "bake",
            Stage::RollbackInstall => "rollback install",
            Stage::RollbackRestart => "rollback restart",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepResult {
    Running,
    Ok,
    Failed,
    Gone,
}

/// What a runtime kept of one node's run of one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub key: String,
    pub node: String,
    pub started_at: Option<DateTime<Utc>>,
    /// `None` while it runs.
    pub result: Option<NodeResult>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// What a runtime kept of one job.
#[derive(Debug, Clone)]
pub struct Kept {
    pub job: DeployJob,
    pub status: JobStatus,
    pub reason: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub notices: Vec<(DateTime<Utc>, Notice)>,
    pub ran: Vec<Ran>,
}

impl Story {
    pub fn tell(mut kept: Kept) -> Story {
        // Slack's reply address lets whoever holds it post as shipit: no view shows it.
        kept.job.source.forget_reply_address();
        let mut steps: Vec<Step> = kept
            .ran
            .into_iter()
            .filter_map(|r| {
                let stage = Stage::of_key(&kept.job, &r.key)?;
                let (result, exit_code, output) = match r.result {
                    None | Some(NodeResult::Running) => (StepResult::Running, None, String::new()),
                    Some(NodeResult::Succeeded) | Some(NodeResult::Reported { .. }) => {
                        (StepResult::Ok, Some(0), String::new())
                    }
                    Some(NodeResult::Failed { exit_code, output }) => {
                        (StepResult::Failed, exit_code, output)
                    }
                    Some(NodeResult::Gone { detail }) => (StepResult::Gone, None, detail),
                };
                let ended_at = (result != StepResult::Running)
                    .then_some(r.ended_at)
                    .flatten();
                Some(Step {
                    node: r.node,
                    stage,
                    started_at: r.started_at,
                    ended_at,
                    result,
                    exit_code,
                    output,
                })
            })
            .collect();
        steps.sort_by_key(|s| (s.started_at, s.ended_at));
        // The outcome's words, when the store kept none (a job that ended before it did).
        let reason = kept.reason.or_else(|| {
            kept.notices.iter().rev().find_map(|(_, n)| match n {
                Notice::Finished { outcome } => outcome.why(),
                _ => None,
            })
        });
        Story {
            job: kept.job,
            status: kept.status,
            reason,
            queued_at: kept.queued_at,
            started_at: kept.started_at,
            ended_at: kept.ended_at,
            steps,
            events: kept
                .notices
                .iter()
                .map(|(at, n)| Event {
                    at: *at,
                    text: describe(n),
                })
                .collect(),
        }
    }
}

/// How many node steps a story shows in chat before it says how many more there are, and
/// how many of the last things it said (a chat message holds at most 40,000 characters).
const CHAT_STEPS: usize = 30;
const CHAT_EVENTS: usize = 20;

impl Story {
    /// The story in a chat message: plain lines, the steps (at most `CHAT_STEPS`) and
    /// what the deploy said.
    pub fn chat_text(&self) -> String {
        let j = &self.job;
        let at =
            |t: Option<DateTime<Utc>>| t.map_or("-".into(), |t| t.format("%H:%M:%S").to_string());
        let mut lines = vec![format!(
            "Job {} — {} {} to {}: {}",
            j.id, j.app, j.version, j.env, self.status
        )];
        if let Some(reason) = &self.reason {
            lines.push(format!("Reason: {reason}"));
        }
        lines.push(format!(
            "Asked by {} — queued {}, started {}, ended {} (UTC, {})",
            j.requested_by,
            self.queued_at.format("%H:%M:%S"),
            at(self.started_at),
            at(self.ended_at),
            self.queued_at.format("%Y-%m-%d")
        ));
        if !self.steps.is_empty() {
            lines.push("Steps:".into());
            for s in self.steps.iter().take(CHAT_STEPS) {
                let mut line = format!(
                    "• {} {} {}",
                    s.node,
                    s.stage.as_str(),
                    format!("{:?}", s.result).to_lowercase()
                );
                if let Some(code) = s.exit_code.filter(|c| *c != 0) {
                    line.push_str(&format!(" (exit {code})"));
                }
                let took = s.took();
                if !took.is_empty() {
                    line.push_str(&format!(" in {took}"));
                }
                if let Some(last) = s.output.lines().last().filter(|l| !l.trim().is_empty()) {
                    line.push_str(&format!(": {last}"));
                }
                lines.push(line);
            }
            if self.steps.len() > CHAT_STEPS {
                lines.push(format!(
                    "… and {} more steps",
                    self.steps.len() - CHAT_STEPS
                ));
            }
        }
        if !self.events.is_empty() {
            lines.push("Said:".into());
            let earlier = self.events.len().saturating_sub(CHAT_EVENTS);
            if earlier > 0 {
                lines.push(format!("… {earlier} earlier lines"));
            }
            lines.extend(
                self.events
                    .iter()
                    .skip(earlier)
                    .map(|e| format!("• {} {}", e.at.format("%H:%M:%S"), e.text)),
            );
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};

    use super::*;
    use crate::deploy::engine::Outcome;
    use crate::deploy::job::Source;
    use crate::deploy::version::Version;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000, 0).unwrap() + Duration::seconds(s)
    }

    fn job() -> DeployJob {
        DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            Version::parse("1.1.0").unwrap(),
            Source::Cli {
                user: "ann".into(),
                nonce: "1".into(),
            },
            at(0),
        )
    }

    fn ran(job: &DeployJob, what: &str, node: &str, from: i64, result: Option<NodeResult>) -> Ran {
        Ran {
            key: format!("{}:{what}", job.id),
            node: node.into(),
            started_at: Some(at(from)),
            ended_at: result.as_ref().map(|_| at(from + 2)),
            result,
        }
    }

    #[test]
    fn a_failed_deploy_tells_why_and_what_ran_where_in_order() {
        let job = job();
        let failed = NodeResult::Failed {
            exit_code: Some(1),
            output: "shipit: unhealthy after 3 checks in 2 s".into(),
        };
        let outcome = Outcome::Failed {
            reason: "n2 failed its health check".into(),
            rolled_back: true,
            left_behind: vec![],
        };
        let story = Story::tell(Kept {
            job: job.clone(),
            status: JobStatus::Failed,
            reason: None,
            queued_at: at(0),
            started_at: Some(at(1)),
            ended_at: Some(at(20)),
            notices: vec![(at(20), Notice::Finished { outcome })],
            ran: vec![
                ran(
                    &job,
                    "revert:restart:1",
                    "n1",
                    12,
                    Some(NodeResult::Succeeded),
                ),
                ran(&job, "restart:2", "n2", 8, Some(failed)),
                ran(&job, "install", "n1", 2, Some(NodeResult::Succeeded)),
                ran(&job, "restart:1", "n1", 5, Some(NodeResult::Succeeded)),
                ran(&job, "install", "n2", 2, None),
                Ran {
                    key: "otherjob:install".into(),
                    ..ran(&job, "install", "n3", 2, None)
                },
            ],
        });
        assert_eq!(story.reason.as_deref(), Some("n2 failed its health check"));
        let order: Vec<(&str, Stage, StepResult)> = story
            .steps
            .iter()
            .map(|s| (s.node.as_str(), s.stage, s.result))
            .collect();
        assert_eq!(
            order,
            [
                ("n2", Stage::Install, StepResult::Running),
                ("n1", Stage::Install, StepResult::Ok),
                ("n1", Stage::Restart, StepResult::Ok),
                ("n2", Stage::Restart, StepResult::Failed),
                ("n1", Stage::RollbackRestart, StepResult::Ok),
            ]
        );
        let n2 = &story.steps[3];
        assert_eq!((n2.exit_code, n2.ended_at), (Some(1), Some(at(10))));
        assert!(n2.output.contains("unhealthy"), "{n2:?}");
        assert_eq!(story.steps[0].ended_at, None, "still running");
        assert!(story.events[0].text.contains("n2 failed its health check"));
    }

    #[test]
    fn a_kept_reason_comes_first_and_a_success_says_what_it_left() {
        let base = Kept {
            job: job(),
            status: JobStatus::Succeeded,
            reason: None,
            queued_at: at(0),
            started_at: None,
            ended_at: None,
            notices: vec![(
                at(9),
                Notice::Finished {
                    outcome: Outcome::Succeeded {
                        failed_installs: vec![],
                        unhealthy: vec!["n3".into()],
                        gone: vec![],
                    },
                },
            )],
            ran: vec![],
        };
        let told = Story::tell(base.clone());
        assert_eq!(told.reason.as_deref(), Some("except n3 unhealthy"));
        let kept = Story::tell(Kept {
            reason: Some("kept".into()),
            ..base
        });
        assert_eq!(kept.reason.as_deref(), Some("kept"));
    }
}
