//! The deploy-step driver: what one invocation of the `deploy-step` Lambda does, and what
//! the simulator runs in virtual time. The deploy's state travels in the Step Functions
//! execution (input → output), so nothing else needs storing.
//!
//! One step performs the engine's actions for up to `budget`, waiting in-process for short
//! pauses (command polls, health re-checks) and handing longer ones to the state
//! machine's Wait state. That keeps an execution's history small: a 1,000-node deploy is
//! a few hundred state transitions, far below the 25,000-event limit.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::aws::fleet::{RunCommand, Sent, SsmFleet};
use crate::config::Config;
use crate::engine::{Action, Deploy, Notice, Observation, Outcome, LOCK_TTL_SECONDS};
use crate::job::DeployJob;
use crate::notify::NotifyState;
use crate::ports::{Ledger, LockInfo, PortError};
use crate::wiring::Outbound;
use crate::worker::status_of;

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
    /// Once done: succeeded, failed, rollback_failed or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What the notifiers remember (the Slack message to update, say).
    #[serde(default, skip_serializing_if = "is_default")]
    pub notify: NotifyState,
    /// Set by the state machine's Catch: the step failed for good; end the deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
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
            notify: NotifyState::default(),
            error: None,
        }
    }
}

fn is_default(n: &NotifyState) -> bool {
    *n == NotifyState::default()
}

pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub struct Stepper<R> {
    config: Arc<Config>,
    ledger: Arc<dyn Ledger>,
    fleet: SsmFleet<R>,
    out: Outbound,
    /// Longest a step keeps working before it returns its state.
    budget: Duration,
    now: Clock,
}

impl<R: RunCommand> Stepper<R> {
    pub fn new(
        config: Arc<Config>,
        ledger: Arc<dyn Ledger>,
        fleet: SsmFleet<R>,
        out: Outbound,
        budget: Duration,
    ) -> Stepper<R> {
        Stepper {
            config,
            ledger,
            fleet,
            out,
            budget,
            now: Arc::new(Utc::now),
        }
    }

    /// The simulator's virtual clock instead of the wall clock.
    pub fn with_clock(mut self, now: Clock) -> Stepper<R> {
        self.now = now;
        self
    }

    /// Runs the deploy for up to the budget. An `Err` leaves the input state as it was, for
    /// the state machine to retry; progress made before a failure is returned instead.
    pub async fn step(&self, state: StepState) -> Result<StepState, PortError> {
        let span = state.job.span();
        self.step_job(state).instrument(span).await
    }

    async fn step_job(&self, mut state: StepState) -> Result<StepState, PortError> {
        if let Some(err) = state.error.take() {
            return Ok(self.abort(state, err).await);
        }
        let job = state.job.clone();
        let Some(app) = self.config.app(&job.app) else {
            return Ok(self
                .abort(
                    state,
                    TaskError {
                        error: "UnknownApp".into(),
                        cause: format!("app {} is not in the config", job.app),
                    },
                )
                .await);
        };
        let Some(env) = app.environments.get(&job.env) else {
            return Ok(self
                .abort(
                    state,
                    TaskError {
                        error: "UnknownEnvironment".into(),
                        cause: format!("{} has no environment {}", job.app, job.env),
                    },
                )
                .await);
        };
        let mut deploy = state
            .deploy
            .take()
            .unwrap_or_else(|| Deploy::new(job.clone(), app.rollout.clone()));
        let started = tokio::time::Instant::now();
        let mut progressed = false;
        state.wait_seconds = 0;
        loop {
            let action = deploy.action();
            let obs = match &action {
                Action::Finished(outcome) => {
                    tracing::info!(outcome = ?outcome, "deploy finished");
                    finish(&mut state, outcome);
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
                action => match self.perform(&mut state, &deploy, app, env, action).await {
                    Ok(obs) => obs,
                    Err(e) if progressed => {
                        tracing::warn!(error = %e, "step failed; the next step retries it");
                        state.wait_seconds = 5;
                        break;
                    }
                    Err(e) => return Err(e),
                },
            };
            let now = (self.now)();
            let notices = deploy.observe(now, obs)?;
            if !notices.is_empty() {
                self.out
                    .notifier
                    .notify(&deploy, &notices, &mut state.notify, now)
                    .await;
            }
            progressed = true;
            if started.elapsed() >= self.budget {
                break;
            }
        }
        state.deploy = Some(deploy);
        Ok(state)
    }

    async fn perform(
        &self,
        state: &mut StepState,
        deploy: &Deploy,
        app: &crate::config::App,
        env: &crate::config::Environment,
        action: &Action,
    ) -> Result<Observation, PortError> {
        let job = &deploy.job;
        let now = (self.now)();
        Ok(match action {
            Action::Verify => Observation::Verified {
                verdict: self.out.gate.verify(app, job).await?,
            },
            Action::Lock { lock } => take_lock(self.ledger.as_ref(), job, lock, now).await?,
            Action::Inspect => Observation::Inspected {
                live: live_job(self.ledger.as_ref(), job).await?,
                // Executions of one app+env wait for its lock side by side; a job that
                // lost the race to a newer version is skipped once it sees it live.
                newer_queued: None,
            },
            Action::ResolveNodes => Observation::Nodes {
                nodes: self.fleet.resolve(env).await?,
            },
            Action::Run(cmd) => Observation::Ran {
                key: cmd.key.clone(),
                results: self
                    .fleet
                    .run(
                        app,
                        env,
                        job,
                        cmd,
                        deploy.policy.max_errors,
                        &mut state.sent,
                    )
                    .await?,
            },
            Action::Record => {
                self.ledger.record(job, now).await?;
                Observation::Recorded
            }
            Action::Unlock => {
                self.ledger.release(&job.app, &job.env, &job.id).await?;
                Observation::Unlocked
            }
            Action::Wait { .. } | Action::Finished(_) => {
                unreachable!("the step loop handles these itself")
            }
        })
    }

    /// Ends a deploy whose step failed for good: frees its lock (if it holds it) and says
    /// why. Never fails: it is the state machine's last resort.
    pub async fn abort(&self, mut state: StepState, err: TaskError) -> StepState {
        let job = &state.job;
        let reason = format!("the deploy step failed: {} {}", err.error, err.cause)
            .trim()
            .to_string();
        tracing::error!(job_id = %job.id, %reason, "deploy aborted");
        if let Err(e) = self.ledger.release(&job.app, &job.env, &job.id).await {
            tracing::error!(job_id = %job.id, error = %e, "cannot release the lock; `unlock` it from chat or the CLI");
        }
        let outcome = Outcome::Failed {
            reason,
            rolled_back: false,
        };
        let finished = [Notice::Finished {
            outcome: outcome.clone(),
        }];
        let ended = Deploy {
            outcome: Some(outcome.clone()),
            ..state
                .deploy
                .clone()
                .unwrap_or_else(|| Deploy::new(state.job.clone(), Default::default()))
        };
        let now = (self.now)();
        self.out
            .notifier
            .notify(&ended, &finished, &mut state.notify, now)
            .await;
        finish(&mut state, &outcome);
        state
    }
}

/// Tries the engine's lock, with the expiry that frees it if this deploy's driver dies.
pub async fn take_lock(
    ledger: &dyn Ledger,
    job: &DeployJob,
    lock: &LockInfo,
    now: DateTime<Utc>,
) -> Result<Observation, PortError> {
    let lock = LockInfo {
        since: now,
        expires: Some(now + chrono::Duration::seconds(LOCK_TTL_SECONDS)),
        ..lock.clone()
    };
    Ok(
        match ledger.try_lock(&job.app, &job.env, &lock, now).await? {
            Ok(()) => Observation::Lock {
                taken: true,
                holder: None,
            },
            Err(held) => Observation::Lock {
                taken: false,
                holder: Some(held),
            },
        },
    )
}

/// The job live on `job`'s app+env.
pub async fn live_job(
    ledger: &dyn Ledger,
    job: &DeployJob,
) -> Result<Option<Box<DeployJob>>, PortError> {
    Ok(ledger
        .history(&job.app, &job.env, 1)
        .await?
        .into_iter()
        .next()
        .map(|e| Box::new(e.job)))
}

fn finish(state: &mut StepState, outcome: &Outcome) {
    state.done = true;
    state.wait_seconds = 0;
    state.status = Some(status_of(outcome).to_string());
    state.reason = match outcome {
        Outcome::Succeeded { .. } => None,
        Outcome::Failed { reason, .. }
        | Outcome::RollbackFailed { reason }
        | Outcome::Skipped { reason } => Some(reason.clone()),
    };
}
