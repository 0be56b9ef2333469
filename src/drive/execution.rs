//! A job's story on AWS, from what AWS keeps of it: its Step Functions execution (named
//! by the job id; each step's output holds the deploy's state and what it said) and the
//! Run Command invocations of its commands (each node's start, end, exit code and
//! output). Nothing more is stored for it; both are kept by AWS for 90 and 30 days.

use async_trait::async_trait;
use aws_sdk_sfn::types::{ExecutionListItem, ExecutionStatus, HistoryEventType};
use aws_sdk_ssm::types::{
    CommandFilter, CommandFilterKey, CommandInvocation, CommandInvocationStatus,
};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use std::time::Instant;

use super::step::{FiguresSource, StepState};
use crate::aws::sdk_err;
use crate::deploy::command::{tail, NodeResult, OUTPUT_TAIL};
use crate::deploy::dora::{figures, Ended, Figures, WINDOW_DAYS};
use crate::deploy::engine::Deploy;
use crate::deploy::job::JobId;
use crate::deploy::ports::{Ledger, PortError, Stories};
use crate::deploy::status::JobStatus;
use crate::deploy::story::{Event, Kept, Ran, Story};

/// How many node commands a story reads at most (50 a page): a story is read while
/// someone waits for it, and a 10,000-node deploy ran more than 20,000.
const MOST_INVOCATIONS: usize = 1_000;

/// How many pages of the account's invocations in the job's time a story looks through
/// at most for its own (other deploys' commands share the window).
const MOST_INVOCATION_PAGES: usize = 60;

/// How many events of the execution's history a story reads at most (1,000 a page).
const MOST_EVENTS: usize = 10_000;

/// How many failed jobs the DORA figures read at most (a DescribeExecution and a
/// GetExecutionHistory each, unless kept from an earlier read).
const MOST_FAILED: usize = 100;

/// How many ended executions' summaries a warm function keeps.
const KEPT_ENDED: usize = 2_000;

pub struct ExecutionStories {
    sfn: aws_sdk_sfn::Client,
    ssm: aws_sdk_ssm::Client,
    /// The deploy state machine's ARN.
    machine: String,
    /// Summaries of executions that ended, by ARN and redrive count (an ended execution
    /// changes only when redriven): a page that polls would otherwise read the same ones
    /// again every few seconds.
    ended: std::sync::Mutex<std::collections::HashMap<(String, i32), Kept>>,
    /// How long a story is read for at most, where someone waits on it (Slack wants a
    /// slash command answered within 3 s): past it, what was read, said to be cut short.
    budget: Option<std::time::Duration>,
}

impl ExecutionStories {
    pub fn new(
        sfn: aws_sdk_sfn::Client,
        ssm: aws_sdk_ssm::Client,
        machine: &str,
    ) -> ExecutionStories {
        ExecutionStories {
            sfn,
            ssm,
            machine: machine.to_string(),
            ended: Default::default(),
            budget: None,
        }
    }

    /// Reads each story for `budget` at most (see `budget`).
    pub fn within(mut self, budget: std::time::Duration) -> ExecutionStories {
        self.budget = Some(budget);
        self
    }

    fn execution(&self, job: &JobId) -> String {
        format!(
            "{}:{job}",
            self.machine.replacen(":stateMachine:", ":execution:", 1)
        )
    }

    /// What the deploy said, step after step (`Step`, or the `Abort` that winds a deploy
    /// down), oldest first; and whether the history was longer than read. A state a
    /// Catch passed on (with its `error`) is a step's input again, not what it said.
    async fn said(
        &self,
        arn: &str,
        until: Option<Instant>,
    ) -> Result<(Vec<Event>, bool), PortError> {
        let mut pages = self
            .sfn
            .get_execution_history()
            .execution_arn(arn)
            .include_execution_data(true)
            .max_results(1000)
            .into_paginator()
            .send();
        let (mut said, mut read) = (vec![], 0);
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("Step Functions GetExecutionHistory", e))?;
            let last = page.next_token.is_none();
            for event in page.events {
                read += 1;
                if event.r#type != HistoryEventType::TaskStateExited {
                    continue;
                }
                let Some(output) = event.state_exited_event_details.and_then(|d| d.output) else {
                    continue;
                };
                // A state that is no deploy step's (a sample, an older shape) tells nothing.
                if let Ok(state) = serde_json::from_str::<StepState>(&output) {
                    if state.error.is_none() {
                        said.extend(state.said);
                    }
                }
            }
            if last {
                break;
            }
            if read >= MOST_EVENTS || past(until) {
                return Ok((said, true));
            }
        }
        Ok((said, false))
    }

    /// The state the newest step left, or `None` before one ended (or without an
    /// execution): the history read newest first, a few events, and of those the step
    /// with the highest event id (the newest, whatever order they came in).
    async fn last_step(&self, arn: &str) -> Result<Option<StepState>, PortError> {
        let read = self
            .sfn
            .get_execution_history()
            .execution_arn(arn)
            .include_execution_data(true)
            .reverse_order(true)
            .max_results(20)
            .send()
            .await;
        let events = match read {
            Ok(out) => out.events,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_execution_does_not_exist()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(sdk_err("Step Functions GetExecutionHistory", e)),
        };
        Ok(events
            .into_iter()
            .filter(|e| e.r#type == HistoryEventType::TaskStateExited)
            .filter_map(|e| {
                let output = e.state_exited_event_details?.output?;
                let state: StepState = serde_json::from_str(&output).ok()?;
                state.error.is_none().then_some((e.id, state))
            })
            .max_by_key(|(id, _)| *id)
            .map(|(_, state)| state))
    }

    /// The deploy as its newest step left it: `None` before a step ended.
    pub async fn last_state(&self, job: &JobId) -> Result<Option<Deploy>, PortError> {
        Ok(self
            .last_step(&self.execution(job))
            .await?
            .and_then(|s| s.deploy))
    }

    /// What ran on each node for `job` between `from` and `to`, found by the comment its
    /// commands carry (`shipit KEY i/n`); and whether there were more than read.
    async fn ran(
        &self,
        job: &JobId,
        from: DateTime<Utc>,
        to: Option<DateTime<Utc>>,
        until: Option<Instant>,
    ) -> Result<(Vec<Ran>, bool), PortError> {
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
        let filter = |key, t| {
            CommandFilter::builder()
                .key(key)
                .value(at(t))
                .build()
                .map_err(PortError::from)
        };
        let mut ask = self
            .ssm
            .list_command_invocations()
            .details(true)
            .max_results(50)
            .filters(filter(
                CommandFilterKey::InvokedAfter,
                from - Duration::minutes(1),
            )?);
        if let Some(to) = to {
            ask = ask.filters(filter(
                CommandFilterKey::InvokedBefore,
                to + Duration::minutes(1),
            )?);
        }
        let mine = format!("shipit {job}:");
        let mut pages = ask.into_paginator().send();
        let (mut ran, mut read) = (vec![], 0);
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("SSM ListCommandInvocations", e))?;
            read += 1;
            let last = page.next_token.is_none();
            for inv in page.command_invocations.unwrap_or_default() {
                let Some(key) = inv
                    .comment
                    .as_deref()
                    .filter(|c| c.starts_with(&mine))
                    .and_then(|c| c.split(' ').nth(1))
                    .map(str::to_string)
                else {
                    continue;
                };
                if ran.len() == MOST_INVOCATIONS {
                    return Ok((ran, true));
                }
                ran.push(invocation(key, inv));
            }
            if last {
                break;
            }
            if read >= MOST_INVOCATION_PAGES || past(until) {
                return Ok((ran, true));
            }
        }
        Ok((ran, false))
    }
}

/// Whether `until` has come.
fn past(until: Option<Instant>) -> bool {
    until.is_some_and(|u| Instant::now() >= u)
}

/// One node's run of one command, as Run Command reports it.
fn invocation(key: String, inv: CommandInvocation) -> Ran {
    let plugin = inv.command_plugins.unwrap_or_default().into_iter().next();
    let details = inv.status_details.clone().unwrap_or_default();
    let (code, output, started, ended) = match &plugin {
        Some(p) => (
            Some(p.response_code).filter(|c| *c >= 0),
            p.output.clone().unwrap_or_default(),
            p.response_start_date_time.as_ref().map(chrono_of),
            p.response_finish_date_time.as_ref().map(chrono_of),
        ),
        None => (None, String::new(), None, None),
    };
    let result = match inv.status {
        _ if crate::aws::fleet::is_gone(&details) => Some(NodeResult::Gone {
            detail: format!("SSM: {details} (terminated, stopped or offline)"),
        }),
        Some(CommandInvocationStatus::Success) => Some(NodeResult::Succeeded),
        Some(
            CommandInvocationStatus::Failed
            | CommandInvocationStatus::TimedOut
            | CommandInvocationStatus::Cancelled,
        ) => Some(NodeResult::Failed {
            exit_code: code,
            output: tail(
                if output.is_empty() { &details } else { &output },
                OUTPUT_TAIL,
            ),
        }),
        _ => None,
    };
    let requested = inv.requested_date_time.as_ref().map(chrono_of);
    Ran {
        key,
        node: inv.instance_id.unwrap_or_default(),
        started_at: started.or(requested),
        ended_at: result.as_ref().and(ended),
        result,
    }
}

/// Past chrono's range (no date AWS sends): the epoch.
fn chrono_of(t: &aws_sdk_sfn::primitives::DateTime) -> DateTime<Utc> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos()).unwrap_or_default()
}

impl ExecutionStories {
    /// What AWS keeps of a job but its node commands: its execution (`None` without one,
    /// or for one no dispatcher started), and how its newest step left it.
    async fn summary(&self, arn: &str) -> Result<Option<Kept>, PortError> {
        let run = match self
            .sfn
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
        {
            Ok(run) => run,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_execution_does_not_exist()) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(sdk_err("Step Functions DescribeExecution", e)),
        };
        let Ok(first) = serde_json::from_str::<StepState>(run.input.as_deref().unwrap_or_default())
        else {
            return Ok(None);
        };
        // The execution's output is the last step's state when it succeeded; a failed one
        // has none (its Fail state takes the reason as its cause): ask its history.
        let last = match run.output.as_deref().map(serde_json::from_str::<StepState>) {
            Some(Ok(state)) => Some(state),
            _ => self.last_step(arn).await?,
        };
        let ended = last.as_ref().filter(|s| s.done && s.status.is_some());
        let (status, reason) = match (ended, &run.status) {
            (Some(s), _) => (s.status.unwrap_or(JobStatus::Failed), s.reason.clone()),
            (None, ExecutionStatus::Running) => match last.as_ref().and_then(|s| s.deploy.as_ref())
            {
                Some(d) if d.locked => (JobStatus::Running, None),
                _ => (JobStatus::Queued, None),
            },
            // Stopped by hand, timed out, or failed past its Abort.
            (None, other) => (
                JobStatus::Failed,
                Some(format!(
                    "its execution ended {} without a step saying how: {}",
                    other.as_str(),
                    run.cause
                        .as_deref()
                        .or(run.error.as_deref())
                        .unwrap_or("no cause given")
                )),
            ),
        };
        let started = chrono_of(&run.start_date);
        let kept = Kept {
            queued_at: first.job.requested_at.min(started),
            job: first.job,
            status,
            reason,
            // The execution's first step starts with it (and waits there for its turn).
            started_at: Some(started),
            ended_at: run.stop_date.as_ref().map(chrono_of),
            notices: vec![],
            ran: vec![],
        };
        if run.status != ExecutionStatus::Running {
            let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
            if ended.len() >= KEPT_ENDED {
                ended.clear();
            }
            let key = (arn.to_string(), run.redrive_count.unwrap_or(0));
            ended.insert(key, kept.clone());
        }
        Ok(Some(kept))
    }

    /// `summary` of an execution as ListExecutions lists it: kept from an earlier read if
    /// it had ended then and has not been redriven since.
    async fn summary_of(&self, e: &ExecutionListItem) -> Result<Option<Kept>, PortError> {
        let key = (e.execution_arn.clone(), e.redrive_count.unwrap_or(0));
        let kept = self
            .ended
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        match kept {
            Some(kept) if e.status != ExecutionStatus::Running => Ok(Some(kept)),
            _ => self.summary(&e.execution_arn).await,
        }
    }

    /// The jobs whose executions failed (a deploy that failed, was aborted or whose
    /// rollback failed) and ended in the `WINDOW_DAYS` before `now`, newest first, at
    /// most `MOST_FAILED`: with the live history, what the DORA figures count on AWS.
    pub async fn failed_lately(&self, now: DateTime<Utc>) -> Result<Vec<Ended>, PortError> {
        let since = now - Duration::days(i64::from(WINDOW_DAYS));
        let mut pages = self
            .sfn
            .list_executions()
            .state_machine_arn(&self.machine)
            .status_filter(ExecutionStatus::Failed)
            .max_results(100)
            .into_paginator()
            .send();
        let mut out = vec![];
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("Step Functions ListExecutions", e))?;
            for e in page.executions {
                // Newest first: an execution that started before the window is the last
                // that could have ended in it (a job waits minutes, not weeks).
                if chrono_of(&e.start_date) < since - Duration::days(7) {
                    return Ok(out);
                }
                if e.stop_date
                    .as_ref()
                    .map(chrono_of)
                    .is_none_or(|t| t < since)
                {
                    continue;
                }
                if out.len() == MOST_FAILED {
                    return Ok(out);
                }
                out.extend(self.summary_of(&e).await?.as_ref().map(Ended::not_live));
            }
        }
        Ok(out)
    }

    /// The `limit` newest jobs in short (no steps, nothing said), newest first: for the
    /// page's list of jobs.
    pub async fn recent(&self, limit: i32) -> Result<Vec<Story>, PortError> {
        let listed = self
            .sfn
            .list_executions()
            .state_machine_arn(&self.machine)
            .max_results(limit)
            .send()
            .await
            .map_err(|e| sdk_err("Step Functions ListExecutions", e))?;
        let mut out = vec![];
        for e in listed.executions {
            out.extend(self.summary_of(&e).await?.map(Story::tell));
        }
        Ok(out)
    }
}

/// The live versions the DORA figures look back through: as many as Parameter Store
/// keeps of a parameter.
const LIVE_VERSIONS_READ: usize = 100;

/// `app`/`env`'s DORA figures on AWS over the `WINDOW_DAYS` before `now`: the changes
/// that went live, from the live history (the last 100 versions Parameter Store keeps of
/// it), and those that failed on the way, from `failed` (`failed_lately`; other apps' are
/// left out).
pub async fn dora(
    ledger: &dyn Ledger,
    app: &str,
    env: &str,
    failed: &[Ended],
    now: DateTime<Utc>,
) -> Result<Figures, PortError> {
    let live = ledger.history(app, env, LIVE_VERSIONS_READ).await?;
    let mut ended: Vec<Ended> = live.iter().map(Ended::went_live).collect();
    // A job recorded live and then failed (its lock lost before it could say so) counts
    // once, as live.
    ended.extend(
        failed
            .iter()
            .filter(|f| f.job.app == app && f.job.env == env)
            .filter(|f| !live.iter().any(|e| e.job.id == f.job.id))
            .cloned(),
    );
    Ok(figures(app, env, &ended, WINDOW_DAYS, now))
}

#[async_trait]
impl FiguresSource for ExecutionStories {
    /// The job's failure, if it failed, counts from when it was queued (its execution
    /// started moments later: the figure the page shows for it).
    async fn figures(
        &self,
        ledger: &dyn Ledger,
        state: &StepState,
        now: DateTime<Utc>,
    ) -> Result<Figures, PortError> {
        let job = &state.job;
        let mut failed = self.failed_lately(now).await?;
        if let Some(status) = state
            .status
            .filter(|s| matches!(s, JobStatus::Failed | JobStatus::RollbackFailed))
        {
            failed.push(Ended {
                job: job.clone(),
                status,
                started_at: Some(job.requested_at),
                ended_at: Some(now),
                live_at: None,
            });
        }
        dora(ledger, &job.app, &job.env, &failed, now).await
    }
}

#[async_trait]
impl Stories for ExecutionStories {
    async fn story(&self, job: &JobId) -> Result<Option<Story>, PortError> {
        let arn = self.execution(job);
        let Some(mut kept) = self.summary(&arn).await? else {
            return Ok(None);
        };
        let until = self.budget.map(|b| Instant::now() + b);
        let (said, more_said) = self.said(&arn, until).await?;
        let (ran, more_ran) = self.ran(job, kept.queued_at, kept.ended_at, until).await?;
        kept.ran = ran;
        let mut story = Story::tell(kept);
        story.events = said;
        if more_said || more_ran {
            story.events.push(Event {
                at: Utc::now(),
                text: format!(
                    "this story is cut short: it shows what could be read in time, and at most {MOST_EVENTS} events of the execution and {MOST_INVOCATIONS} node commands"
                ),
            });
        }
        Ok(Some(story))
    }
}
