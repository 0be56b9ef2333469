//! The deploy-step driver: what one invocation of the `deploy-step` Lambda does, and what
//! the simulator runs in virtual time. The deploy's state travels in the Step Functions
//! execution (input → output), so nothing else needs storing.
//!
//! One step performs the engine's actions for up to `budget`, waiting in-process for short
//! pauses (command polls, health re-checks) and handing longer ones to the state
//! machine's Wait state. That keeps an execution's history small: a 1,000-node deploy is
//! a few hundred state transitions, far below the 25,000-event limit.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use super::Driver;
use crate::deploy::dora::Figures;
use crate::deploy::engine::{Action, Deploy, Notice, Observation, Outcome, STATE_ROOM_BYTES};
use crate::deploy::job::DeployJob;
use crate::deploy::lists::clip;
use crate::deploy::ports::{
    is_refused, is_throttled, Ledger, NotifyMemo, PortError, Refused, Sent,
};
use crate::deploy::status::describe;
use crate::deploy::status::JobStatus;
use crate::deploy::story::Event;

/// The state machine's payload between steps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    pub job: DeployJob,
    /// Absent in an execution's first input (the dispatcher sends only the job).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy: Option<Deploy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent: Option<Sent>,
    /// How long the state machine waits before the next step.
    #[serde(default)]
    pub wait_seconds: u64,
    #[serde(default)]
    pub done: bool,
    /// Once done: how the job ended (the state machine's Choice reads it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the notifiers remember (the Slack message to update, say).
    #[serde(default, skip_serializing_if = "NotifyMemo::is_null")]
    pub notify: NotifyMemo,
    /// Set by the state machine's Catch: the step failed for good; end the deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// Steps in a row that AWS throttled before they could go on (see `throttled_wait`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled: u32,
    /// What the deploy said during this step, as chat words it (each clipped, at most
    /// `SAID_MAX`, a node's routine progress left out): kept by the execution's history,
    /// where a job's story on AWS reads it (`drive::execution`). Dropped from a state that would
    /// not fit otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub said: Vec<Event>,
}

/// How many of a step's notices its state keeps, and how long each may be.
const SAID_MAX: usize = 20;
const SAID_TEXT_MAX: usize = 300;

impl StepState {
    /// Keeps what `notices` say for the job's story (see `said`).
    fn say(&mut self, now: DateTime<Utc>, notices: &[Notice]) {
        let told = notices.iter().filter(|n| {
            !matches!(
                n,
                Notice::Installed { .. } | Notice::Restarted { .. } | Notice::Healthy { .. }
            )
        });
        for n in told {
            if self.said.len() == SAID_MAX {
                self.said.remove(0);
            }
            self.said.push(Event {
                at: now,
                text: clip(&describe(n), SAID_TEXT_MAX),
            });
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The first wait after a throttled step; it doubles with each throttled step in a row,
/// up to 8 times as long.
const THROTTLED_WAIT_SECONDS: u64 = 5;

/// How long to wait after the `n`th throttled step in a row: `THROTTLED_WAIT_SECONDS`
/// doubled each time up to eight times, plus up to as much again picked by the job's id,
/// so that deploys throttled together do not all come back together. (Throttled for a
/// day and more, an execution would reach its history limit; the lock's lease lapses.)
fn throttled_wait(n: u32, job: &DeployJob) -> u64 {
    let base = THROTTLED_WAIT_SECONDS << n.saturating_sub(1).min(3);
    let mut spread = std::hash::DefaultHasher::new();
    job.id.hash(&mut spread);
    base + spread.finish() % base
}

/// What the state machine passes to a step: the state, and `$$.State.RetryCount`, how
/// often this step was retried. A bare state (an older definition, the Abort task, a
/// sample event) counts as a retry: commands are looked up before they are sent.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StepInput {
    Attempt { state: StepState, attempt: u32 },
    State(StepState),
}

impl From<StepState> for StepInput {
    fn from(state: StepState) -> StepInput {
        StepInput::State(state)
    }
}

impl StepInput {
    /// The first attempt at a state a step saved: nothing was sent that it does not list.
    pub fn first(state: StepState) -> StepInput {
        StepInput::Attempt { state, attempt: 0 }
    }

    fn into_parts(self) -> (StepState, bool) {
        match self {
            StepInput::Attempt { state, attempt } => (state, attempt > 0),
            StepInput::State(state) => (state, true),
        }
    }
}

/// Step Functions' error object (`ResultPath: "$.error"` in a Catch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskError {
    #[serde(rename = "Error", default)]
    pub error: String,
    #[serde(rename = "Cause", default)]
    pub cause: String,
}

impl StepState {
    pub fn start(job: DeployJob) -> StepState {
        StepState {
            job,
            deploy: None,
            sent: None,
            wait_seconds: 0,
            done: false,
            status: None,
            reason: None,
            notify: NotifyMemo::Null,
            error: None,
            throttled: 0,
            said: vec![],
        }
    }
}

pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Where a job's DORA figures are read once it ended (`execution::ExecutionStories` on
/// AWS).
#[async_trait::async_trait]
pub trait FiguresSource: Send + Sync {
    /// The figures of `state`'s app+env as they stand at `now`, its job counted as it
    /// ended (its execution still runs: this is its last step).
    async fn figures(
        &self,
        ledger: &dyn Ledger,
        state: &StepState,
        now: DateTime<Utc>,
    ) -> Result<Figures, PortError>;
}

/// Longest the step that ends a job spends reading its DORA figures (a cold function
/// reads up to a hundred failed executions).
const FIGURES_WAIT: Duration = Duration::from_secs(20);

pub struct Stepper {
    driver: Driver,
    /// Longest a step keeps working before it returns its state.
    budget: Duration,
    now: Clock,
    /// Where a job's DORA figures are read when it ends (the executions), for notifiers
    /// that keep them.
    figures: Option<Arc<dyn FiguresSource>>,
}

impl Stepper {
    pub fn new(driver: Driver, budget: Duration) -> Stepper {
        Stepper {
            driver,
            budget,
            now: Arc::new(Utc::now),
            figures: None,
        }
    }

    /// Tells notifiers that keep DORA figures how they stand once a job ends, read from
    /// `source` (on AWS, the executions and the ledger: `execution::dora`).
    pub fn with_figures(mut self, source: Arc<dyn FiguresSource>) -> Stepper {
        self.figures = Some(source);
        self
    }

    /// The simulator's virtual clock instead of the wall clock.
    pub fn with_clock(mut self, now: Clock) -> Stepper {
        self.now = now;
        self
    }

    /// Runs the deploy for up to the budget. An `Err` leaves the input state as it was, for
    /// the state machine to retry; progress made before a failure is returned instead.
    pub async fn step(&self, input: impl Into<StepInput>) -> Result<StepState, PortError> {
        let (state, replayed) = input.into().into_parts();
        let span = state.job.span();
        // Boxed: the step's future nests the driver's and every port's, deep enough to
        // overflow the compiler's layout query in callers that nest it further.
        let mut state = Box::pin(self.step_job(state, replayed))
            .instrument(span)
            .await?;
        if !state.said.is_empty() && fits(&state).is_err() {
            state.said.clear();
        }
        Ok(state)
    }

    async fn step_job(&self, mut state: StepState, replayed: bool) -> Result<StepState, PortError> {
        state.said.clear();
        if let Some(err) = state.error.take() {
            let reason = format!("the deploy step failed: {} {}", err.error, err.cause);
            let reason = reason.trim().to_string();
            // A job cancelled before it started touched nothing: it just ends, cancelled.
            // Unread, it is wound down as any other: the Catch must not hang on one more
            // call that can fail.
            match self.driver.cancelled(&state.job).await {
                Ok(Some(by)) => return Ok(self.end(state, Outcome::cancelled(by)).await),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read whether the job was cancelled"),
            }
            // Put back what it changed before giving the lock up: the state machine goes
            // on stepping from here. Stopped a second time, it gives up.
            let now = (self.now)();
            let stopped = state.deploy.as_mut().and_then(|d| d.stop(now, &reason));
            let Some(notices) = stopped else {
                return Ok(self.give_up(state, reason).await);
            };
            tracing::error!(%reason, "the deploy cannot go on; winding it down");
            state.say(now, &notices);
            if let Some(deploy) = &state.deploy {
                self.driver
                    .tell(deploy, &notices, &mut state.notify, now)
                    .await;
            }
            state.throttled = 0;
            state.wait_seconds = 0;
            return Ok(state);
        }
        let mut deploy = match state.deploy.take() {
            Some(deploy) => deploy,
            None => match self.driver.start(&state.job) {
                Ok(deploy) => deploy,
                Err(Refused(reason)) => return Ok(self.give_up(state, reason).await),
            },
        };
        // A step tried again, or one after a send that failed once it may have gone out.
        if replayed || state.sent.as_ref().is_some_and(|s| s.unsure) {
            deploy.in_doubt((self.now)());
        }
        let started = tokio::time::Instant::now();
        let mut progressed = false;
        state.wait_seconds = 0;
        loop {
            deploy.tick((self.now)());
            let action = deploy.action();
            let obs = match &action {
                Action::Finished(outcome) => {
                    tracing::info!(outcome = ?outcome, "deploy finished");
                    finish(&mut state, outcome);
                    self.driver.ended(&state.job).await;
                    self.tell_figures(&state).await;
                    break;
                }
                Action::Wait { millis } => {
                    let pause = Duration::from_millis(*millis);
                    if started.elapsed() + pause > self.budget {
                        // The state machine's Wait does the waiting; the next step goes on.
                        state.wait_seconds = millis.div_ceil(1000);
                        deploy.observe((self.now)(), Observation::Waited)?;
                        break;
                    }
                    tokio::time::sleep(pause).await;
                    Observation::Waited
                }
                action => {
                    let now = (self.now)();
                    match self
                        .driver
                        .perform(&deploy, action, &mut state.sent, replayed, now)
                        .await
                    {
                        Ok(obs) => {
                            state.throttled = 0;
                            obs
                        }
                        Err(e) if is_refused(&e) => {
                            state.deploy = Some(deploy);
                            return Ok(self.give_up(state, e.to_string()).await);
                        }
                        // Failing the step would have the state machine try again within
                        // seconds and end the deploy after three tries, mid-rollout; the
                        // rate comes back, so wait for it, longer while it lasts.
                        Err(e) if is_throttled(&e) => {
                            state.throttled += 1;
                            state.wait_seconds = throttled_wait(state.throttled, &state.job);
                            tracing::warn!(error = %e, wait_seconds = state.wait_seconds, "throttled; the next step goes on");
                            break;
                        }
                        Err(e) if progressed => {
                            tracing::warn!(error = %e, "step failed; the next step retries it");
                            state.wait_seconds = 5;
                            break;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            let now = (self.now)();
            let notices = deploy.observe(now, obs)?;
            state.say(now, &notices);
            self.driver
                .tell(&deploy, &notices, &mut state.notify, now)
                .await;
            progressed = true;
            if started.elapsed() >= self.budget {
                break;
            }
        }
        state.deploy = Some(deploy);
        Ok(state)
    }

    /// The job of `state` ended: its app+env's DORA figures as they stand now.
    async fn tell_figures(&self, state: &StepState) {
        let Some(executions) = &self.figures else {
            return;
        };
        let job = &state.job;
        let now = (self.now)();
        let figures = executions.figures(self.driver.ledger(), state, now);
        // The job has ended: its last step must not fail (and be retried) over figures.
        let figures = async {
            match tokio::time::timeout(FIGURES_WAIT, figures).await {
                Ok(figures) => figures,
                Err(_) => {
                    Err(format!("reading them took over {} s", FIGURES_WAIT.as_secs()).into())
                }
            }
        };
        self.driver.tell_figures(job, figures).await;
    }

    /// Ends a deploy that cannot go on (its step failed for good, its app left the
    /// config). Never fails: it is the state machine's last resort.
    async fn give_up(&self, mut state: StepState, reason: String) -> StepState {
        let now = (self.now)();
        let outcome = self
            .driver
            .give_up(
                &state.job,
                state.deploy.as_ref(),
                &mut state.notify,
                reason,
                now,
            )
            .await;
        self.ended_as(state, outcome, now).await
    }

    /// Ends the job as `outcome`, the engine aside (see `Driver::end`).
    async fn end(&self, mut state: StepState, outcome: Outcome) -> StepState {
        let now = (self.now)();
        let outcome = self
            .driver
            .end(
                &state.job,
                state.deploy.as_ref(),
                &mut state.notify,
                outcome,
                now,
            )
            .await;
        self.ended_as(state, outcome, now).await
    }

    /// The job ended as `outcome`, out of the engine's loop: the state says so.
    async fn ended_as(
        &self,
        mut state: StepState,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> StepState {
        state.say(
            now,
            &[Notice::Finished {
                outcome: outcome.clone(),
            }],
        );
        finish(&mut state, &outcome);
        self.tell_figures(&state).await;
        state
    }
}

/// A state past what an execution carries fails its step instead of being returned
/// (`run::lambda`, as the step function returns it): the state machine cannot catch a
/// result over the limit (`States.DataLimitExceeded`), but after its retries it catches a
/// failure, and winds the deploy down from the last state that fit. Deploys too big for
/// it are refused before they touch a node; this is the guard for whatever else might
/// grow.
pub fn fits(state: &StepState) -> Result<(), PortError> {
    let bytes = serde_json::to_vec(state)?.len();
    if bytes > STATE_ROOM_BYTES {
        return Err(format!(
            "the deploy's state grew to {bytes} bytes, past the {STATE_ROOM_BYTES} a step may return"
        )
        .into());
    }
    Ok(())
}

fn finish(state: &mut StepState, outcome: &Outcome) {
    state.done = true;
    state.wait_seconds = 0;
    state.status = Some(JobStatus::from(outcome));
    state.reason = outcome.reason().map(str::to_string);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::job::Source;

    fn job_of(user: &str, nonce: &str) -> DeployJob {
        DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            crate::deploy::version::Version::parse("1.0.0").unwrap(),
            Source::Cli {
                user: user.into(),
                nonce: nonce.into(),
            },
            Utc::now(),
        )
    }

    #[test]
    fn a_throttled_wait_doubles_up_to_eight_times_and_spreads_by_job() {
        let job = |i: u32| job_of("ann", &i.to_string());
        for (n, base) in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 40), (60, 40)] {
            let wait = throttled_wait(n, &job(0));
            assert!((base..2 * base).contains(&wait), "{n}: {wait}");
        }
        let waits: std::collections::BTreeSet<u64> =
            (0..20).map(|i| throttled_wait(1, &job(i))).collect();
        assert!(waits.len() > 1, "{waits:?}");
    }

    #[test]
    fn a_state_past_what_an_execution_carries_fails_its_step() {
        assert!(fits(&StepState::start(job_of("ann", "n"))).is_ok());
        let big = job_of(&"a".repeat(STATE_ROOM_BYTES), "n");
        let err = fits(&StepState::start(big)).unwrap_err();
        assert!(
            err.to_string()
                .contains("past the 249856 a step may return"),
            "{err}"
        );
    }
}
