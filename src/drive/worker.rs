//! The local driver of the deploy engine: claims jobs from the SQLite queue and runs each
//! step, saving the engine's state after every one, so a killed process resumes a deploy
//! where it was (a finished command is never run again).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tracing::Instrument;

use super::{Driver, Outbound};
use crate::config::Config;
use crate::deploy::engine::{Action, Deploy, Notice, Observation, Outcome};
use crate::deploy::job::DeployJob;
use crate::deploy::ports::{is_refused, NotifyMemo, PortError, Refused};
use crate::local::fleet::LocalFleet;
use crate::local::store::Store;

/// How often an idle worker looks for new jobs.
const IDLE_POLL: Duration = Duration::from_millis(200);
/// The worker lease: renewed every `LEASE_RENEW`, lost `LEASE_TTL` after its holder died.
const LEASE_RENEW: Duration = Duration::from_secs(2);
pub const LEASE_TTL_SECONDS: i64 = 10;
/// Pause before retrying a step whose I/O failed (the state is unchanged, so it is safe).
const RETRY_PAUSE: Duration = Duration::from_secs(2);
/// How often a job waiting to start (its calendar, an approval, its time) looks for a
/// cancel during a wait that may last minutes.
const CANCEL_LOOK: Duration = Duration::from_secs(1);
const MAX_STEP_RETRIES: u32 = 5;

#[derive(Clone)]
pub struct Worker {
    driver: Driver,
    store: Store,
    health: Arc<watch::Sender<WorkerHealth>>,
}

/// What the worker is doing, for `/healthz`: a server whose worker cannot run jobs must
/// say so instead of answering 202 to jobs nobody will run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerHealth {
    Starting,
    Running,
    /// Another process holds the store's worker lease and runs the jobs.
    Waiting,
    /// Not running jobs now, and why; it keeps trying.
    Down(String),
}

/// Ends a step early: the worker is stopping, or the step cannot be done at all.
enum Stop {
    Shutdown,
    Abandon(String),
}

/// Why the claiming loop ended.
enum Ended {
    Shutdown,
    /// Another process took the worker lease: wait to get it back.
    LeaseLost,
}

impl Worker {
    pub fn new(config: Arc<Config>, store: Store, out: Outbound) -> Worker {
        let fleet = LocalFleet::new(store.clone(), config.clone());
        let ports = Arc::new(store.clone());
        let driver = Driver::new(
            config,
            ports.clone(),
            Arc::new(fleet),
            Some(ports.clone()),
            out,
        )
        .with_queue(ports.clone())
        .with_claims(ports);
        let (health, _) = watch::channel(WorkerHealth::Starting);
        Worker {
            driver,
            store,
            health: Arc::new(health),
        }
    }

    pub fn health(&self) -> watch::Receiver<WorkerHealth> {
        self.health.subscribe()
    }

    /// Says the worker is down (its loop crashed) until it runs again.
    pub fn crashed(&self, reason: String) {
        self.set_health(WorkerHealth::Down(reason));
    }

    fn set_health(&self, h: WorkerHealth) {
        self.health.send_if_modified(|old| {
            if *old == h {
                return false;
            }
            match &h {
                WorkerHealth::Down(reason) => {
                    tracing::error!(%reason, "the worker cannot run jobs; retrying")
                }
                _ if matches!(old, WorkerHealth::Down(_)) => {
                    tracing::info!("the worker runs jobs again")
                }
                _ => {}
            }
            *old = h;
            true
        });
    }

    /// Runs jobs until `shutdown` turns true: first the deploys a previous process left
    /// running, then new ones as they are queued (one at a time per app+env). A store
    /// that fails is retried, and said in `health`, for as long as it takes: only
    /// shutdown ends this.
    pub async fn run(&self, holder: &str, mut shutdown: watch::Receiver<bool>) {
        loop {
            if !self.wait_for_lease(holder, &mut shutdown).await {
                return;
            }
            let ended = self.claim_and_drive(holder, &mut shutdown).await;
            if let Err(e) = self.store.drop_worker_lease(holder).await {
                tracing::warn!(error = %e, "cannot drop the worker lease; it lapses by itself");
            }
            if let Ended::Shutdown = ended {
                return;
            }
        }
    }

    /// Takes the store's worker lease; `false` on shutdown first.
    async fn wait_for_lease(&self, holder: &str, shutdown: &mut watch::Receiver<bool>) -> bool {
        let ttl = chrono::Duration::seconds(LEASE_TTL_SECONDS);
        // Another worker (a `deploy --wait`, or one that died and whose lease has not run
        // out yet) holds the store: wait for it rather than run deploys side by side.
        loop {
            match self.store.take_worker_lease(holder, Utc::now(), ttl).await {
                Ok(true) => return true,
                Ok(false) => {
                    if *self.health.borrow() != WorkerHealth::Waiting {
                        tracing::warn!(
                            "another shipit worker holds this store; waiting for it to finish"
                        );
                    }
                    self.set_health(WorkerHealth::Waiting);
                }
                Err(e) => self.set_health(WorkerHealth::Down(format!(
                    "cannot take the worker lease: {e}"
                ))),
            }
            tokio::select! {
                _ = shutdown.changed() => return false,
                _ = tokio::time::sleep(LEASE_RENEW) => {}
            }
            if *shutdown.borrow() {
                return false;
            }
        }
    }

    async fn claim_and_drive(&self, holder: &str, shutdown: &mut watch::Receiver<bool>) -> Ended {
        let ttl = chrono::Duration::seconds(LEASE_TTL_SECONDS);
        let mut renewed = std::time::Instant::now();
        // Deploys stop at their next step boundary when this loop ends, for any reason.
        let (halt, halted) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut driving: HashMap<tokio::task::Id, DeployJob> = HashMap::new();
        let mut resumed = false;
        let ended = loop {
            let claimed = async {
                if !resumed {
                    for q in self.store.running_jobs(Utc::now()).await? {
                        tracing::info!(job_id = %q.job.id, "resuming deploy");
                        let (w, s, job) = (self.clone(), halted.clone(), q.job.clone());
                        driving.insert(
                            tasks.spawn(async move { w.drive(job, s).await }).id(),
                            q.job,
                        );
                    }
                    resumed = true;
                }
                while let Some(q) = self.store.claim_next(Utc::now()).await? {
                    let (w, s, job) = (self.clone(), halted.clone(), q.job.clone());
                    driving.insert(
                        tasks.spawn(async move { w.drive(job, s).await }).id(),
                        q.job,
                    );
                }
                Ok::<_, PortError>(())
            };
            match claimed.await {
                Ok(()) => self.set_health(WorkerHealth::Running),
                Err(e) => self.set_health(WorkerHealth::Down(format!(
                    "cannot read the job queue: {e}"
                ))),
            }
            while let Some(done) = tasks.try_join_next_with_id() {
                let id = match &done {
                    Ok((id, _)) => *id,
                    Err(e) => e.id(),
                };
                let job = driving.remove(&id);
                if let (Err(e), Some(job)) = (done, job) {
                    // A bug, not the deploy's fault: it ends alone, the worker goes on.
                    let reason = format!("the deploy task crashed: {e}");
                    tracing::error!(job_id = %job.id, %reason);
                    self.abandon(&job, None, &mut NotifyMemo::Null, reason)
                        .await;
                }
            }
            if renewed.elapsed() >= LEASE_RENEW {
                match self.store.take_worker_lease(holder, Utc::now(), ttl).await {
                    Ok(true) => renewed = std::time::Instant::now(),
                    // Paused past the lease and another worker took over: stop claiming;
                    // deploys under way finish their current step and are resumed there.
                    Ok(false) => {
                        tracing::error!(
                            "lost the worker lease to another process; waiting to get it back"
                        );
                        break Ended::LeaseLost;
                    }
                    Err(e) => self.set_health(WorkerHealth::Down(format!(
                        "cannot renew the worker lease: {e}"
                    ))),
                }
            }
            tokio::select! {
                _ = shutdown.changed() => break Ended::Shutdown,
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            if *shutdown.borrow() {
                break Ended::Shutdown;
            }
        };
        // Deploys stop at their next step boundary, state saved, and resume on next start.
        let _ = halt.send(true);
        while tasks.join_next().await.is_some() {}
        ended
    }

    /// Drives one job to its end (or until shutdown), checkpointing every step.
    pub async fn drive(&self, job: DeployJob, shutdown: watch::Receiver<bool>) -> Option<Outcome> {
        // Instrumented rather than entered: a guard held across awaits would tag other
        // tasks' lines on this thread with this job.
        let span = job.span();
        self.drive_job(job, shutdown).instrument(span).await
    }

    /// The DORA figures of `job`'s app+env once it ended, to whoever keeps them.
    async fn tell_figures(&self, job: &DeployJob) {
        let store = &self.store;
        let figures = async {
            let jobs = store.jobs_of(&job.group()).await?;
            let (days, now) = (crate::deploy::dora::WINDOW_DAYS, Utc::now());
            store.figures(&job.app, &job.env, &jobs, days, now).await
        };
        self.driver.tell_figures(job, figures).await;
    }

    async fn drive_job(
        &self,
        job: DeployJob,
        mut shutdown: watch::Receiver<bool>,
    ) -> Option<Outcome> {
        // Lost notifier state costs a second Slack message, never the deploy.
        let mut memo = self.store.load_notify(&job.id).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the notifiers' state");
            NotifyMemo::Null
        });
        let mut deploy = match self.store.load_deploy(&job.id).await {
            Ok(Some(d)) => d,
            Ok(None) => match self.driver.start(&job) {
                Ok(d) => d,
                Err(Refused(reason)) => return self.abandon(&job, None, &mut memo, reason).await,
            },
            Err(e) => {
                let reason = format!("cannot read its saved state: {e}");
                return self.abandon(&job, None, &mut memo, reason).await;
            }
        };
        loop {
            deploy.tick(Utc::now());
            let action = deploy.action();
            if let Action::Finished(outcome) = action {
                if let Err(e) = self.store.finish(&job.id, &outcome, Utc::now()).await {
                    tracing::error!(error = %e, "cannot record the job's outcome");
                }
                tracing::info!(outcome = ?outcome, "deploy finished");
                self.tell_figures(&job).await;
                return Some(outcome);
            }
            if *shutdown.borrow() {
                return None;
            }
            let obs = self.execute(&deploy, &action, &mut shutdown).await;
            let now = Utc::now();
            let notices = match obs {
                Ok(obs) => match deploy.observe(now, obs) {
                    Ok(n) => n,
                    Err(e) => {
                        let reason = format!("engine refused a result: {e}");
                        return self.abandon(&job, Some(&deploy), &mut memo, reason).await;
                    }
                },
                Err(Stop::Shutdown) => return None,
                // Put back what it changed before giving the lock up.
                Err(Stop::Abandon(reason)) => match deploy.stop(now, &reason) {
                    Some(notices) => {
                        tracing::error!(%reason, "the deploy cannot go on; winding it down");
                        notices
                    }
                    None => return self.abandon(&job, Some(&deploy), &mut memo, reason).await,
                },
            };
            // The next action waits until this step is saved: acting on unsaved state
            // would let a crash replay it from further back than the nodes are.
            let mut failures = 0;
            loop {
                let saved = self.store.save_step(&deploy, &notices, now).await;
                match saved {
                    Ok(()) => break,
                    Err(e) if failures < MAX_STEP_RETRIES => {
                        failures += 1;
                        tracing::warn!(error = %e, failures, "cannot save the deploy's state; retrying");
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                    Err(e) => {
                        let reason = format!("cannot save its state: {e}");
                        return self.abandon(&job, Some(&deploy), &mut memo, reason).await;
                    }
                }
            }
            if !notices.is_empty() {
                self.driver.tell(&deploy, &notices, &mut memo, now).await;
                if let Err(e) = self.store.save_notify(&job.id, &memo).await {
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
        let mut tries = 0;
        loop {
            let result = match action {
                Action::Wait { millis } => {
                    let waited = tokio::time::sleep(Duration::from_millis(*millis));
                    tokio::pin!(waited);
                    loop {
                        tokio::select! {
                            _ = &mut waited => break Ok(Observation::Waited),
                            _ = shutdown.changed() => return Err(Stop::Shutdown),
                            // Cut short by a cancel: its next step (the lock's) ends it.
                            _ = tokio::time::sleep(CANCEL_LOOK), if deploy.waits_to_start() => {
                                if let Ok(Some(_)) = self.driver.cancelled(&deploy.job).await {
                                    break Ok(Observation::Waited);
                                }
                            }
                        }
                    }
                }
                // Local commands end within the call: nothing to carry between steps.
                action => {
                    self.driver
                        // The local fleet keeps its own record of what ran.
                        .perform(deploy, action, &mut None, true, Utc::now())
                        .await
                }
            };
            match result {
                Ok(obs) => return Ok(obs),
                Err(e) if is_refused(&e) => return Err(Stop::Abandon(e.to_string())),
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
        deploy: Option<&Deploy>,
        memo: &mut NotifyMemo,
        reason: String,
    ) -> Option<Outcome> {
        let now = Utc::now();
        let outcome = self.driver.give_up(job, deploy, memo, reason, now).await;
        let finished = Notice::Finished {
            outcome: outcome.clone(),
        };
        let steps = async {
            self.store
                .add_notices(&job.id, std::slice::from_ref(&finished), now)
                .await?;
            self.store.finish(&job.id, &outcome, now).await
        };
        if let Err(e) = steps.await {
            tracing::error!(error = %e, "cannot record the abandoned job");
        }
        self.tell_figures(job).await;
        Some(outcome)
    }
}
