//! The local driver of the deploy engine: claims jobs from the SQLite queue and runs each
//! step, saving the engine's state after every one, so a killed process resumes a deploy
//! where it was (a finished command is never run again).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tracing::Instrument;

use crate::config::{Config, Nodes};
use crate::engine::{Action, Deploy, Notice, Observation, Outcome};
use crate::job::DeployJob;
use crate::local::LocalFleet;
use crate::notify::NotifyState;
use crate::ports::{Ledger, PortError};
use crate::step::{live_job, take_lock};
use crate::store::Store;
use crate::wiring::Outbound;

/// How often an idle worker looks for new jobs.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// The worker lease: renewed every `LEASE_RENEW`, lost `LEASE_TTL` after its holder died.
const LEASE_RENEW: Duration = Duration::from_secs(2);
pub const LEASE_TTL_SECONDS: i64 = 10;
/// Pause before retrying a step whose I/O failed (the state is unchanged, so it is safe).
const RETRY_PAUSE: Duration = Duration::from_secs(2);
const MAX_STEP_RETRIES: u32 = 5;

#[derive(Clone)]
pub struct Worker {
    config: Arc<Config>,
    store: Store,
    fleet: LocalFleet,
    out: Outbound,
}

pub fn status_of(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Failed { .. } => "failed",
        Outcome::RollbackFailed { .. } => "rollback_failed",
        Outcome::Skipped { .. } => "skipped",
    }
}

/// Ends a step early: the worker is stopping, or the step cannot be done at all.
enum Stop {
    Shutdown,
    Abandon(String),
}

impl Worker {
    pub fn new(config: Arc<Config>, store: Store, out: Outbound) -> Worker {
        let fleet = LocalFleet::new(store.clone());
        Worker {
            config,
            store,
            fleet,
            out,
        }
    }

    /// Runs jobs until `shutdown` turns true: first the deploys a previous process left
    /// running, then new ones as they are queued (one at a time per app+env).
    pub async fn run(
        &self,
        holder: &str,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), PortError> {
        let ttl = chrono::Duration::seconds(LEASE_TTL_SECONDS);
        // Another worker (a `deploy --wait`, or one that died and whose lease has not run
        // out yet) holds the store: wait for it rather than run deploys side by side.
        let mut said = false;
        while !self
            .store
            .take_worker_lease(holder, Utc::now(), ttl)
            .await?
        {
            if !said {
                tracing::warn!("another shipit worker holds this store; waiting for it to finish");
                said = true;
            }
            tokio::select! {
                _ = shutdown.changed() => return Ok(()),
                _ = tokio::time::sleep(LEASE_RENEW) => {}
            }
        }
        let mut renewed = std::time::Instant::now();
        // Deploys stop at their next step boundary when this loop ends, for any reason.
        let (halt, halted) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        for q in self.store.running_jobs().await? {
            tracing::info!(job_id = %q.job.id, "resuming deploy");
            let (w, s) = (self.clone(), halted.clone());
            tasks.spawn(async move { w.drive(q.job, s).await });
        }
        loop {
            while let Some(q) = self.store.claim_next().await? {
                let (w, s) = (self.clone(), halted.clone());
                tasks.spawn(async move { w.drive(q.job, s).await });
            }
            while let Some(done) = tasks.try_join_next() {
                if let Err(e) = done {
                    tracing::error!(error = %e, "deploy task panicked");
                }
            }
            if renewed.elapsed() >= LEASE_RENEW {
                if !self
                    .store
                    .take_worker_lease(holder, Utc::now(), ttl)
                    .await?
                {
                    // Paused past the lease and another worker took over: stop claiming;
                    // deploys under way finish their current step and are resumed there.
                    tracing::error!("lost the worker lease to another process; stopping");
                    break;
                }
                renewed = std::time::Instant::now();
            }
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            if *shutdown.borrow() {
                break;
            }
        }
        // Deploys stop at their next step boundary, state saved, and resume on next start.
        let _ = halt.send(true);
        while tasks.join_next().await.is_some() {}
        self.store.drop_worker_lease(holder).await
    }

    /// Drives one job to its end (or until shutdown), checkpointing every step.
    pub async fn drive(&self, job: DeployJob, shutdown: watch::Receiver<bool>) -> Option<Outcome> {
        // Instrumented rather than entered: a guard held across awaits would tag other
        // tasks' lines on this thread with this job.
        let span = job.span();
        self.drive_job(job, shutdown).instrument(span).await
    }

    async fn drive_job(
        &self,
        job: DeployJob,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Outcome> {
        let Some(app) = self.config.app(&job.app) else {
            return self
                .abandon(
                    &job,
                    None,
                    format!("app {} is no longer in the config", job.app),
                )
                .await;
        };
        let mut deploy = match self.store.load_deploy(&job.id).await {
            Ok(Some(d)) => d,
            Ok(None) => Deploy::new(job.clone(), app.rollout.clone()),
            Err(e) => {
                return self
                    .abandon(&job, None, format!("cannot read its saved state: {e}"))
                    .await
            }
        };
        // Lost notifier state costs a second Slack message, never the deploy.
        let mut told = self.store.load_notify(&job.id).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the notifiers' state");
            NotifyState::default()
        });
        let mut failures = 0;
        loop {
            let action = deploy.action();
            if let Action::Finished(outcome) = action {
                if let Err(e) = self.store.set_status(&job.id, status_of(&outcome)).await {
                    tracing::error!(error = %e, "cannot record the job's outcome");
                }
                tracing::info!(outcome = ?outcome, "deploy finished");
                return Some(outcome);
            }
            if *shutdown.borrow() {
                return None;
            }
            let obs = match self.execute(&deploy, &action, &mut shutdown).await {
                Ok(obs) => obs,
                Err(Stop::Shutdown) => return None,
                Err(Stop::Abandon(reason)) => {
                    return self.abandon(&job, Some((&deploy, &mut told)), reason).await
                }
            };
            let now = Utc::now();
            let notices = match deploy.observe(now, obs) {
                Ok(n) => n,
                Err(e) => {
                    return self
                        .abandon(
                            &job,
                            Some((&deploy, &mut told)),
                            format!("engine refused a result: {e}"),
                        )
                        .await
                }
            };
            let saved = self.store.save_deploy(&deploy, now).await;
            let noted = self.store.add_notices(&job.id, &notices, now).await;
            if let Err(e) = saved.and(noted) {
                failures += 1;
                tracing::warn!(error = %e, failures, "cannot save the deploy's state; retrying");
                if failures > MAX_STEP_RETRIES {
                    return self
                        .abandon(
                            &job,
                            Some((&deploy, &mut told)),
                            format!("cannot save its state: {e}"),
                        )
                        .await;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                continue;
            }
            if !notices.is_empty() {
                self.out
                    .notifier
                    .notify(&deploy, &notices, &mut told, now)
                    .await;
                if let Err(e) = self.store.save_notify(&job.id, &told).await {
                    tracing::warn!(error = %e, "cannot save the notifiers' state");
                }
            }
        }
    }

    async fn execute(
        &self,
        deploy: &Deploy,
        action: &Action,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Observation, Stop> {
        let job = &deploy.job;
        let mut tries = 0;
        loop {
            let result: Result<Observation, PortError> = match action {
                Action::Verify => match self.config.app(&job.app) {
                    Some(app) => self
                        .out
                        .gate
                        .verify(app, job)
                        .await
                        .map(|verdict| Observation::Verified { verdict }),
                    None => {
                        return Err(Stop::Abandon(format!(
                            "app {} is no longer in the config",
                            job.app
                        )))
                    }
                },
                Action::Lock { lock } => take_lock(&self.store, job, lock, Utc::now()).await,
                Action::Inspect => {
                    async {
                        let live = live_job(&self.store, job).await?;
                        let newer_queued = self.store.newer_queued(job).await?;
                        Ok(Observation::Inspected { live, newer_queued })
                    }
                    .await
                }
                Action::ResolveNodes => {
                    let env = self
                        .config
                        .app(&job.app)
                        .and_then(|a| a.environments.get(&job.env));
                    match env.map(|e| &e.nodes) {
                        Some(Nodes::Local(nodes)) => Ok(Observation::Nodes { nodes: nodes.iter().map(|n| n.name.clone()).collect() }),
                        Some(Nodes::Ssm { .. }) => return Err(Stop::Abandon(format!("{}/{} finds its nodes through SSM tags; deploy it with the AWS runtime", job.app, job.env))),
                        None => return Err(Stop::Abandon(format!("environment {} of {} is no longer in the config", job.env, job.app))),
                    }
                }
                Action::Run(cmd) => {
                    let app = self.config.app(&job.app);
                    match app.and_then(|a| a.environments.get(&job.env).map(|e| (a, e))) {
                        Some((app, env)) => {
                            self.fleet
                                .run(app, env, cmd)
                                .await
                                .map(|results| Observation::Ran {
                                    key: cmd.key.clone(),
                                    results,
                                })
                        }
                        None => {
                            return Err(Stop::Abandon(format!(
                                "{}/{} is no longer in the config",
                                job.app, job.env
                            )))
                        }
                    }
                }
                Action::Wait { millis } => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(*millis)) => Ok(Observation::Waited),
                        _ = shutdown.changed() => return Err(Stop::Shutdown),
                    }
                }
                Action::Record => self
                    .store
                    .record(job, Utc::now())
                    .await
                    .map(|_| Observation::Recorded),
                Action::Unlock => self
                    .store
                    .release(&job.app, &job.env, &job.id)
                    .await
                    .map(|_| Observation::Unlocked),
                Action::Finished(_) => unreachable!("the drive loop stops at Finished"),
            };
            match result {
                Ok(obs) => return Ok(obs),
                Err(e) if tries < MAX_STEP_RETRIES => {
                    tries += 1;
                    tracing::warn!(error = %e, tries, "step failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RETRY_PAUSE) => {}
                        _ = shutdown.changed() => return Err(Stop::Shutdown),
                    }
                }
                Err(e) => return Err(Stop::Abandon(format!("step failed {tries} times: {e}"))),
            }
        }
    }

    /// Ends a job the engine cannot finish: marks it failed, says why, frees its lock.
    async fn abandon(
        &self,
        job: &DeployJob,
        deploy: Option<(&Deploy, &mut NotifyState)>,
        reason: String,
    ) -> Option<Outcome> {
        tracing::error!(%reason, "deploy abandoned");
        let outcome = Outcome::Failed {
            reason: reason.clone(),
            rolled_back: false,
        };
        let now = Utc::now();
        let finished = Notice::Finished {
            outcome: outcome.clone(),
        };
        let locked = deploy.as_ref().is_some_and(|(d, _)| d.locked);
        match deploy {
            Some((d, told)) => {
                let ended = Deploy {
                    outcome: Some(outcome.clone()),
                    ..d.clone()
                };
                self.out
                    .notifier
                    .notify(&ended, std::slice::from_ref(&finished), told, now)
                    .await;
            }
            None => tracing::info!("{}", describe(&finished)),
        }
        let steps = async {
            if locked {
                self.store.release(&job.app, &job.env, &job.id).await?;
            }
            self.store
                .add_notices(&job.id, std::slice::from_ref(&finished), now)
                .await?;
            self.store.set_status(&job.id, status_of(&outcome)).await
        };
        if let Err(e) = steps.await {
            tracing::error!(error = %e, "cannot record the abandoned job");
        }
        Some(outcome)
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
        Notice::WaitingForLock { holder } => {
            format!("waiting: locked by {} ({})", holder.holder, holder.reason)
        }
        Notice::Installed { node } => format!("{node}: installed"),
        Notice::InstallFailed { node, detail } => format!("{node}: install FAILED: {detail}"),
        Notice::Restarted { node } => format!("{node}: restarted"),
        Notice::Healthy { node } => format!("{node}: healthy"),
        Notice::Unhealthy { node, detail } => format!("{node}: UNHEALTHY: {detail}"),
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
        Notice::Finished { outcome } => match outcome {
            Outcome::Succeeded { failed_installs } if failed_installs.is_empty() => {
                "succeeded".into()
            }
            Outcome::Succeeded { failed_installs } => format!(
                "succeeded, except installs on {}",
                failed_installs.join(", ")
            ),
            Outcome::Failed {
                reason,
                rolled_back: true,
            } => format!("FAILED and rolled back: {reason}"),
            Outcome::Failed { reason, .. } => format!("FAILED: {reason}"),
            Outcome::RollbackFailed { reason } => {
                format!("FAILED, and the rollback failed too (look now): {reason}")
            }
            Outcome::Skipped { reason } => format!("skipped: {reason}"),
        },
    }
}
