//! Queue order per app+env on AWS. The dispatcher starts one execution per job as SQS
//! FIFO hands them over, in order, and leaves a ticket for each under
//! `{prefix}/queue/{app}/{env}/{sequence}` (the message's SQS sequence number, which
//! grows within a FIFO group) holding its job. Before it takes the lock, a deploy waits
//! while an older ticket's execution still runs; a job removes its ticket when it ends,
//! and a ticket whose execution ended without removing it (stopped by hand, timed out)
//! is removed by whoever finds it. The tickets behind a job are also the backlog an
//! automatic job looks at to see whether a newer version supersedes it.
//!
//! Whether a job runs or was cancelled is decided by one conditional create of its claim,
//! `{prefix}/claim/{app}/{env}/{job}`: the deploy makes it (`started`) once it holds the
//! lock and before it touches a node, `/deploy cancel` makes it (`cancelled`) while the
//! job waits; Parameter Store lets exactly one create succeed, and the other reads what
//! won. A claim outlives its job's execution (were the job to remove its own, a cancel
//! could come after and claim an ended job), and is removed by a later job of its
//! app+env once its execution has ended: a few claims per app+env at a time.

use super::params;
use async_trait::async_trait;
use aws_sdk_sfn::types::ExecutionStatus;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::sdk_err;
use crate::deploy::job::{DeployJob, JobId};
use crate::deploy::ports::{Backlog, Cancel, Claims, HeldBack, PortError, Turn};
use crate::deploy::status::JobStatus;
use crate::deploy::version::newest_first;

/// Who won a job: its start, or a person's cancel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "claim", rename_all = "snake_case")]
enum Claim {
    Started,
    Cancelled { by: String, at: DateTime<Utc> },
}

pub struct SsmTurn {
    ssm: aws_sdk_ssm::Client,
    sfn: aws_sdk_sfn::Client,
    prefix: String,
    /// The deploy state machine's ARN: executions are named by job id under it.
    machine: String,
}

/// A ticket: its parameter, its sequence number, the job it holds.
struct Ticket {
    name: String,
    sequence: String,
    job: DeployJob,
}

impl SsmTurn {
    pub fn new(
        ssm: aws_sdk_ssm::Client,
        sfn: aws_sdk_sfn::Client,
        prefix: &str,
        machine: &str,
    ) -> SsmTurn {
        SsmTurn {
            ssm,
            sfn,
            prefix: prefix.trim_end_matches('/').to_string(),
            machine: machine.to_string(),
        }
    }

    fn path(&self, job: &DeployJob) -> String {
        self.path_of(&job.app, &job.env)
    }

    fn path_of(&self, app: &str, env: &str) -> String {
        format!("{}/queue/{app}/{env}", self.prefix)
    }

    /// The jobs of `app`/`env` with a ticket (queued, or running: a ticket leaves when its
    /// job ends), oldest first.
    pub async fn waiting(&self, app: &str, env: &str) -> Result<Vec<DeployJob>, PortError> {
        Ok(self
            .read_tickets(&self.path_of(app, env))
            .await?
            .into_iter()
            .map(|t| t.job)
            .collect())
    }

    /// Leaves `job`'s ticket, at its place in the queue: `sequence`, SQS's sequence number
    /// of its message (digits, growing within the FIFO group). Idempotent.
    pub async fn enter(&self, job: &DeployJob, sequence: &str) -> Result<(), PortError> {
        if sequence.is_empty() || !sequence.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("SQS sequence number {sequence:?} is not a number").into());
        }
        // The job without its Slack reply address: only the deploy itself answers there.
        let mut held = job.clone();
        held.source.forget_reply_address();
        // Zero-padded to SQS's 128 bits (39 digits), so names sort as numbers do.
        let name = format!("{}/{sequence:0>40}", self.path(job));
        params::put(&self.ssm, &name, &held.to_json(), true).await?;
        Ok(())
    }

    fn claims_of(&self, app: &str, env: &str) -> String {
        format!("{}/claim/{app}/{env}", self.prefix)
    }

    fn claim_name(&self, job: &DeployJob) -> String {
        format!("{}/{}", self.claims_of(&job.app, &job.env), job.id)
    }

    /// `job`'s claim, if one was made (a read that may lag the create).
    async fn claim(&self, job: &DeployJob) -> Result<Option<Claim>, PortError> {
        match params::get(&self.ssm, &self.claim_name(job)).await? {
            Some((value, _)) => Ok(Some(serde_json::from_str(&value)?)),
            None => Ok(None),
        }
    }

    /// Makes `claim` for `job` unless one was made first: `None` when this one was made,
    /// else the one that won.
    async fn make_claim(&self, job: &DeployJob, claim: &Claim) -> Result<Option<Claim>, PortError> {
        let name = self.claim_name(job);
        if params::put(&self.ssm, &name, &serde_json::to_string(claim)?, false)
            .await?
            .is_some()
        {
            return Ok(None);
        }
        match self.claim(job).await? {
            Some(first) => Ok(Some(first)),
            // The create failed on a claim that a read does not show yet.
            None => Err(format!("job {}'s claim exists but cannot be read yet", job.id).into()),
        }
    }

    /// Removes the claims of `app`/`env`'s jobs whose executions ended, but `keep`'s.
    async fn clear_claims(&self, app: &str, env: &str, keep: &JobId) -> Result<(), PortError> {
        let mut ended = vec![];
        for (name, _) in params::under(&self.ssm, &self.claims_of(app, env)).await? {
            let Some(id) = JobId::parse(name.rsplit('/').next().unwrap_or_default()) else {
                continue;
            };
            // A claim of a job with no execution yet (its dispatch to be tried again)
            // is a cancel it has still to read.
            if id != *keep && !matches!(self.status(&id).await?, Some(JobStatus::Running) | None) {
                ended.push(name);
            }
        }
        params::delete(&self.ssm, &ended).await
    }

    /// Removes `job`'s ticket if its execution is not running (it ended already).
    pub async fn leave_if_ended(&self, job: &DeployJob) -> Result<(), PortError> {
        if self.running(&job.id).await? {
            return Ok(());
        }
        self.leave(job).await
    }

    /// The tickets of `job`'s app+env, oldest first.
    async fn tickets(&self, job: &DeployJob) -> Result<Vec<Ticket>, PortError> {
        self.read_tickets(&self.path(job)).await
    }

    async fn read_tickets(&self, path: &str) -> Result<Vec<Ticket>, PortError> {
        let mut out = vec![];
        for (name, value) in params::under(&self.ssm, path).await? {
            let sequence = name.rsplit('/').next().unwrap_or_default().to_string();
            match DeployJob::from_json(&value) {
                Ok(job) => out.push(Ticket {
                    name,
                    sequence,
                    job,
                }),
                // Written by a newer shipit: it keeps its place, unread.
                Err(e) => {
                    tracing::warn!(ticket = %name, error = %e, "queue ticket cannot be read")
                }
            }
        }
        out.sort_by(|a, b| a.sequence.cmp(&b.sequence));
        Ok(out)
    }

    /// Whether the execution of job `id` still runs.
    async fn running(&self, id: &JobId) -> Result<bool, PortError> {
        Ok(self.status(id).await? == Some(JobStatus::Running))
    }

    /// Where job `id` is, as its execution says (`None`: it has none): running, or how it
    /// ended, as its last step's state says (`status`) or else the execution's own end.
    async fn status(&self, id: &JobId) -> Result<Option<JobStatus>, PortError> {
        let arn = format!(
            "{}:{id}",
            self.machine.replacen(":stateMachine:", ":execution:", 1)
        );
        let out = match self
            .sfn
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_execution_does_not_exist()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(sdk_err("Step Functions DescribeExecution", e)),
        };
        #[derive(Deserialize)]
        struct Ended {
            status: JobStatus,
        }
        let told = out
            .output
            .as_deref()
            .and_then(|o| serde_json::from_str::<Ended>(o).ok());
        Ok(Some(match (&out.status, told) {
            (ExecutionStatus::Running, _) => JobStatus::Running,
            (_, Some(ended)) => ended.status,
            (ExecutionStatus::Aborted, None) => JobStatus::Aborted,
            (_, None) => JobStatus::Failed,
        }))
    }
}

#[async_trait]
impl Turn for SsmTurn {
    async fn ahead(&self, job: &DeployJob, held: HeldBack<'_>) -> Result<Option<JobId>, PortError> {
        let tickets = self.tickets(job).await?;
        // A job without a ticket (started before tickets, or by hand) keeps no order.
        let Some(mine) = tickets.iter().position(|t| t.job.id == job.id) else {
            return Ok(None);
        };
        let mut stale = vec![];
        let mut ahead = None;
        for t in &tickets[..mine] {
            if !self.running(&t.job.id).await? {
                stale.push(t.name.clone());
            } else if !held(&t.job) {
                ahead = Some(t.job.id.clone());
                break;
            }
        }
        if !stale.is_empty() {
            tracing::warn!(tickets = ?stale, "queue tickets of executions that ended without removing them");
            params::delete(&self.ssm, &stale).await?;
        }
        Ok(ahead)
    }

    async fn leave(&self, job: &DeployJob) -> Result<(), PortError> {
        let mine: Vec<String> = self
            .tickets(job)
            .await?
            .into_iter()
            .filter(|t| t.job.id == job.id)
            .map(|t| t.name)
            .collect();
        params::delete(&self.ssm, &mine).await?;
        self.clear_claims(&job.app, &job.env, &job.id).await
    }
}

#[async_trait]
impl Claims for SsmTurn {
    async fn cancelled(&self, job: &DeployJob) -> Result<Option<String>, PortError> {
        Ok(match self.claim(job).await? {
            Some(Claim::Cancelled { by, .. }) => Some(by),
            Some(Claim::Started) | None => None,
        })
    }

    async fn start(&self, job: &DeployJob) -> Result<Option<String>, PortError> {
        Ok(match self.make_claim(job, &Claim::Started).await? {
            Some(Claim::Cancelled { by, .. }) => Some(by),
            Some(Claim::Started) | None => None,
        })
    }
}

#[async_trait]
impl Cancel for SsmTurn {
    async fn cancel(
        &self,
        job: &DeployJob,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<JobStatus>, PortError> {
        let ours = Claim::Cancelled {
            by: by.to_string(),
            at: now,
        };
        match self.make_claim(job, &ours).await? {
            // The claim was free: either the job has not started, and its execution (or,
            // while the dispatcher has not started one yet, the one it will start) will
            // read the claim and end, or its execution ended without ever starting it (or
            // its claim was cleared once it ended): then nothing was cancelled.
            None => match self.status(&job.id).await {
                Ok(Some(JobStatus::Running) | None) => Ok(None),
                Ok(Some(ended)) => {
                    params::delete(&self.ssm, &[self.claim_name(job)]).await?;
                    Ok(Some(ended))
                }
                Err(e) => Err(format!(
                    "the cancel is recorded, so the job will not start if it has not yet, \
                     but whether it had could not be read ({e})"
                )
                .into()),
            },
            Some(Claim::Cancelled { .. }) => Ok(Some(JobStatus::Cancelled)),
            Some(Claim::Started) => Ok(Some(
                self.status(&job.id).await?.unwrap_or(JobStatus::Running),
            )),
        }
    }
}

#[async_trait]
impl Backlog for SsmTurn {
    async fn newer_queued(&self, job: &DeployJob) -> Result<Vec<DeployJob>, PortError> {
        let tickets = self.tickets(job).await?;
        let Some(mine) = tickets.iter().position(|t| t.job.id == job.id) else {
            return Ok(vec![]);
        };
        let mut newer: Vec<DeployJob> = tickets
            .into_iter()
            .skip(mine + 1)
            .map(|t| t.job)
            .filter(|j| j.version.is_newer_than(&job.version))
            .collect();
        newer.sort_by(|a, b| newest_first(&a.version, &b.version));
        Ok(newer)
    }
}
