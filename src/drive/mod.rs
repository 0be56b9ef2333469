//! The one deploy driver. The engine says what to do next; a [`Driver`] does it through
//! the ports and hands back what happened. Two loops run it: `step` (one invocation of
//! the deploy-step Lambda, state carried by Step Functions) and `worker` (`shipit serve`,
//! state checkpointed in SQLite). They differ only in how they wait, retry and save.

pub mod execution;
#[cfg(test)]
mod sim;
pub mod step;
#[cfg(feature = "local")]
pub mod worker;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::secrets::Secrets;
use crate::config::{App, Config};
use crate::deploy::approval::{Approval, Standing};
use crate::deploy::calendar::{self, Closed};
use crate::deploy::command::NodeResult;
use crate::deploy::engine::{Action, Deploy, Notice, Observation, Outcome, Promoted, Verdict};
use crate::deploy::history::{faulty_mark, Faulty, HistoryEntry};
use crate::deploy::job::{DeployJob, Source};
use crate::deploy::lock::{lease_seconds, Written};
use crate::deploy::ports::{
    Backlog, ChangeCalendars, Checks, Claims, Fleet, Gate, JobQueue, Ledger, LockInfo, Notify,
    NotifyMemo, PortError, Refused, Sent, Turn,
};
use crate::deploy::promotion;
use crate::deploy::rollout::Rollout;
use crate::deploy::version::Version;
use crate::outbound::checks::CheckReader;
use crate::outbound::gate::Gatekeeper;
use crate::outbound::notify::Notifier;

/// Why a promotion's source checks hold it back ("check … reads red on staging: …"):
/// one reads red (it is not promoted), or one has no data where that fails (read again
/// for a while).
enum Red {
    Red(String),
    NoData(String),
}

/// What a deploy asks of and tells the world outside: the gate (GitHub) before it
/// starts, the notifiers as it goes.
#[derive(Clone)]
pub struct Outbound {
    pub gate: Arc<dyn Gate>,
    pub checks: Arc<dyn Checks>,
    pub notifier: Arc<dyn Notify>,
}

impl Outbound {
    pub fn new(config: Arc<Config>, secrets: Arc<Secrets>) -> Outbound {
        Outbound {
            gate: Arc::new(Gatekeeper::new(config.clone(), secrets.clone())),
            checks: Arc::new(CheckReader::new(config.clone(), secrets.clone())),
            notifier: Arc::new(Notifier::new(config, secrets)),
        }
    }
}

/// The ports a deploy runs through, on either runtime.
#[derive(Clone)]
pub struct Driver {
    config: Arc<Config>,
    ledger: Arc<dyn Ledger>,
    fleet: Arc<dyn Fleet>,
    /// Where the runtime can see the jobs queued behind one: the SQLite store, or on AWS
    /// the queue tickets the dispatcher leaves (SQS itself cannot be looked into).
    backlog: Option<Arc<dyn Backlog>>,
    /// Where jobs of one app+env would otherwise race for the lock (Step Functions
    /// executions): the order they were queued in. The SQLite queue keeps it itself.
    turn: Option<Arc<dyn Turn>>,
    /// Where a job waiting to start learns it was cancelled, and where its start is
    /// decided against a cancel: the turn on AWS, the job's row in SQLite.
    claims: Option<Arc<dyn Claims>>,
    /// Where promotions are queued (see `promote`): the runtime's deploy queue.
    queue: Option<Arc<dyn JobQueue>>,
    /// Where environments' `change_calendar`s are read (SSM, on AWS).
    calendars: Option<Arc<dyn ChangeCalendars>>,
    out: Outbound,
}

impl Driver {
    pub fn new(
        config: Arc<Config>,
        ledger: Arc<dyn Ledger>,
        fleet: Arc<dyn Fleet>,
        backlog: Option<Arc<dyn Backlog>>,
        out: Outbound,
    ) -> Driver {
        Driver {
            config,
            ledger,
            fleet,
            backlog,
            turn: None,
            claims: None,
            queue: None,
            calendars: None,
            out,
        }
    }

    /// Jobs of one app+env take the lock in queue order, as `turn` says.
    pub fn with_turn(mut self, turn: Arc<dyn Turn>) -> Driver {
        self.claims = Some(turn.clone());
        self.turn = Some(turn);
        self
    }

    /// A cancel reaches a job waiting to start through `claims` (where there is no turn).
    pub fn with_claims(mut self, claims: Arc<dyn Claims>) -> Driver {
        self.claims = Some(claims);
        self
    }

    /// Promotions go to `queue`.
    pub fn with_queue(mut self, queue: Arc<dyn JobQueue>) -> Driver {
        self.queue = Some(queue);
        self
    }

    /// Environments' change calendars are read from `calendars`.
    pub fn with_calendars(mut self, calendars: Arc<dyn ChangeCalendars>) -> Driver {
        self.calendars = Some(calendars);
        self
    }

    /// What `job`'s environment's SSM Change Calendar holds back now (whichever job:
    /// see `calendar::exempt`), where it names one: read at each try for the lock, as
    /// the config's calendar is looked at. A failure worth trying again is an error, so
    /// the step fails and is tried again.
    async fn change_calendar(
        &self,
        job: &DeployJob,
        now: DateTime<Utc>,
    ) -> Result<Option<Closed>, PortError> {
        let Some(name) = self
            .config
            .target(job)
            .ok()
            .and_then(|(_, env)| env.change_calendar.as_deref())
        else {
            return Ok(None);
        };
        let state = match &self.calendars {
            Some(calendars) => calendars.state(name, now).await?,
            None => Err("this runtime has no SSM to read it from".to_string()),
        };
        if let Err(why) = &state {
            tracing::warn!(job_id = %job.id, calendar = name, error = %why, "cannot read the change calendar");
        }
        Ok(calendar::change_calendar_closed(name, state, now))
    }

    /// Where history, locks and marks are kept.
    pub fn ledger(&self) -> &dyn Ledger {
        &*self.ledger
    }

    /// The job ended (the loop saw `Action::Finished`): the one queued behind it may go.
    /// Best effort: a ticket left behind is removed by the next job that finds its
    /// execution ended.
    pub async fn ended(&self, job: &DeployJob) {
        if let Some(turn) = &self.turn {
            if let Err(e) = turn.leave(job).await {
                tracing::warn!(job_id = %job.id, error = %e, "cannot leave the queue; the next job will clear it");
            }
        }
    }

    /// A job's first engine state, with its app's rollout policy and its app+env's
    /// checks.
    pub fn start(&self, job: &DeployJob) -> Result<Deploy, Refused> {
        let checks = self
            .config
            .checks_for(job)
            .iter()
            .map(|c| c.rule())
            .collect();
        Ok(Deploy::new(job.clone(), self.app(job)?.rollout.clone()).with_checks(checks))
    }

    fn app(&self, job: &DeployJob) -> Result<&App, Refused> {
        Ok(self.config.target(job).map_err(Refused)?.0)
    }

    /// Does `action` (anything but `Wait` and `Finished`, which the loops do their own
    /// way) and says what happened. A [`Refused`] error will not go away by retrying.
    /// `replayed`: see [`Fleet::run`].
    pub async fn perform(
        &self,
        deploy: &Deploy,
        action: &Action,
        sent: &mut Option<Sent>,
        replayed: bool,
        now: DateTime<Utc>,
    ) -> Result<Observation, PortError> {
        let job = &deploy.job;
        Ok(match action {
            // A job waiting for its checks may be cancelled meanwhile.
            Action::Verify => match self.cancelled(job).await? {
                Some(by) => Observation::Cancelled { by, holder: None },
                None => Observation::Verified {
                    verdict: self.out.gate.verify(job).await?,
                },
            },
            Action::Lock { lock } => self.take_lock(deploy, lock, now).await?,
            Action::Renew { generation } => Observation::Renewed {
                renewal: self
                    .ledger
                    .renew(
                        &job.app,
                        &job.env,
                        &job.id,
                        *generation,
                        LockInfo::lease_from(
                            now,
                            lease_seconds(deploy.policy.longest_command_seconds()),
                        ),
                    )
                    .await?,
            },
            Action::Inspect => {
                let (live, faulty) = self
                    .ledger
                    .inspect(&job.app, &job.env, deploy.written())
                    .await?;
                Observation::Inspected {
                    live: live.map(|e| Box::new(e.job)),
                    newer_queued: self.superseding(job, &faulty, now).await?,
                    faulty: faulty_mark(&faulty, &job.version).cloned(),
                }
            }
            Action::ResolveNodes => Observation::Nodes {
                nodes: self.fleet.resolve(job).await?,
            },
            Action::Run(cmd) if self.node_check_left(job, cmd) => Observation::Ran {
                key: cmd.key.clone(),
                results: cmd
                    .nodes
                    .iter()
                    .map(|n| {
                        let detail = "the node check is not in the config now".to_string();
                        (n.clone(), NodeResult::Gone { detail })
                    })
                    .collect(),
                sent_at: None,
            },
            Action::Run(cmd) => Observation::Ran {
                key: cmd.key.clone(),
                results: self
                    .fleet
                    .run(job, cmd, deploy.policy.max_errors, sent, replayed)
                    .await?,
                sent_at: sent
                    .as_ref()
                    .filter(|s| s.key == cmd.key)
                    .and_then(|s| s.since),
            },
            Action::Check { checks, groups, .. } => Observation::Checked {
                readings: self.out.checks.read(job, checks, groups).await,
            },
            Action::Record => {
                let entry = HistoryEntry {
                    left_behind: deploy.outcome.as_ref().and_then(Outcome::left_behind),
                    cleared: deploy.clears.clone(),
                    ..HistoryEntry::new(job.clone(), now)
                };
                let written = self.ledger.record(&entry, deploy.written()).await?;
                Observation::Recorded {
                    written,
                    promoted: self.promote(deploy, now).await,
                }
            }
            Action::MarkFaulty { version, reason } => {
                let mark = Faulty {
                    version: version.clone(),
                    job: job.id.clone(),
                    reason: crate::deploy::lists::clip(
                        reason,
                        crate::deploy::lists::MARK_REASON_MAX,
                    ),
                    at: now,
                };
                Observation::MarkedFaulty {
                    written: self
                        .ledger
                        .mark_faulty(&job.app, &job.env, &mark, deploy.written())
                        .await?,
                }
            }
            Action::Unlock => {
                self.ledger
                    .release(&job.app, &job.env, &job.id, deploy.written())
                    .await?;
                Observation::Unlocked
            }
            Action::Wait { .. } | Action::Finished(_) => {
                unreachable!("the driver's loop waits and finishes itself")
            }
        })
    }

    /// Tells the notifiers; they never fail or hold up a deploy.
    pub async fn tell(
        &self,
        deploy: &Deploy,
        notices: &[Notice],
        memo: &mut NotifyMemo,
        now: DateTime<Utc>,
    ) {
        if !notices.is_empty() {
            self.out.notifier.notify(deploy, notices, memo, now).await;
        }
    }

    /// The job ended: tells whoever keeps its app's DORA figures how they stand now, as
    /// `figures` computes them (only asked when someone keeps them).
    pub async fn tell_figures<F>(&self, job: &DeployJob, figures: F)
    where
        F: std::future::Future<Output = Result<crate::deploy::dora::Figures, PortError>>,
    {
        if !self.out.notifier.wants_figures(&job.app) {
            return;
        }
        match figures.await {
            Ok(f) => self.out.notifier.figures(&f, Utc::now()).await,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "cannot compute the DORA figures")
            }
        }
    }

    /// Ends a job the engine cannot finish: frees its lock if it holds it and says why.
    /// Never fails: it is each runtime's last resort.
    pub async fn give_up(
        &self,
        job: &DeployJob,
        deploy: Option<&Deploy>,
        memo: &mut NotifyMemo,
        reason: String,
        now: DateTime<Utc>,
    ) -> Outcome {
        tracing::error!(job_id = %job.id, %reason, "deploy given up");
        // A job that was cancelled never started (its claim says so): it touched nothing.
        let cancelled = match self.cancelled(job).await {
            Ok(by) => by,
            Err(e) => {
                tracing::warn!(job_id = %job.id, error = %e, "cannot read whether the job was cancelled");
                None
            }
        };
        let outcome = match (cancelled, deploy) {
            (Some(by), _) => Outcome::cancelled(by),
            (None, Some(d)) => d.failed(reason, false),
            (None, None) => Outcome::failed(reason),
        };
        self.end(job, deploy, memo, outcome, now).await
    }

    /// Ends a job as `outcome`, the engine aside: frees its lock if it holds it and says
    /// how it ended. Never fails.
    pub async fn end(
        &self,
        job: &DeployJob,
        deploy: Option<&Deploy>,
        memo: &mut NotifyMemo,
        outcome: Outcome,
        now: DateTime<Utc>,
    ) -> Outcome {
        let written = deploy.map_or(Written::default(), Deploy::written);
        if let Err(e) = self
            .ledger
            .release(&job.app, &job.env, &job.id, written)
            .await
        {
            tracing::error!(job_id = %job.id, error = %e, "cannot release the lock; `unlock` it from chat or the CLI");
        }
        let ended = Deploy {
            outcome: Some(outcome.clone()),
            ..deploy
                .cloned()
                .unwrap_or_else(|| Deploy::new(job.clone(), Rollout::default()))
        };
        let finished = [Notice::Finished {
            outcome: outcome.clone(),
        }];
        self.tell(&ended, &finished, memo, now).await;
        self.ended(job).await;
        outcome
    }

    /// Who took `job` off the queue before it started (a read that may lag:
    /// `Claims::start` decides).
    pub async fn cancelled(&self, job: &DeployJob) -> Result<Option<String>, PortError> {
        match &self.claims {
            Some(claims) => claims.cancelled(job).await,
            None => Ok(None),
        }
    }

    /// A job just made live on an environment that promotes: the promotion, queued (a
    /// step replayed queues the same job again, which the queue takes once). Queuing it
    /// may fail without failing the deploy, which says so.
    async fn promote(&self, deploy: &Deploy, now: DateTime<Utc>) -> Option<Promoted> {
        let job = &deploy.job;
        let (_, env) = self.config.target(job).ok()?;
        let promotion = env.promote.as_ref()?.job(job, now)?;
        let Source::Promotion { due_at, .. } = promotion.source else {
            return None;
        };
        // Only what went live on every node goes on.
        let left = deploy.outcome.as_ref().and_then(Outcome::left_behind);
        let failed = match (&self.queue, left) {
            (_, Some(left)) => Some(format!("this deploy left {left}")),
            (None, None) => Some("this runtime has no queue to send it to".to_string()),
            (Some(queue), None) => match queue.enqueue(std::slice::from_ref(&promotion)).await {
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "cannot queue the promotion");
                    Some(e.to_string())
                }
            },
        };
        Some(Promoted {
            to: promotion.env,
            due_at,
            failed,
        })
    }

    /// For a promotion, where it stands now (see `promotion::standing`); `None` for other
    /// jobs. What is live where it comes from is read only once it is due.
    async fn promotion(
        &self,
        job: &DeployJob,
        now: DateTime<Utc>,
    ) -> Result<Option<promotion::Standing>, PortError> {
        let Source::Promotion { from_env, .. } = &job.source else {
            return Ok(None);
        };
        if promotion::not_due(job, now) {
            return Ok(promotion::standing(job, None, &[], now));
        }
        let live = self.ledger.history(&job.app, from_env, 1).await?;
        let faulty = self.ledger.faulty(&job.app, from_env).await?;
        Ok(promotion::standing(job, live.first(), &faulty, now))
    }

    /// Why promotion `job` must not go, if a check of the environment it comes from reads
    /// red now (or has no data where that fails): its checks are read there once more,
    /// as a deploy reads them (a comparison with a baseline is not: nothing there runs
    /// the old version).
    async fn red_where_promoted_from(&self, job: &DeployJob) -> Option<Red> {
        let Source::Promotion { from_env, .. } = &job.source else {
            return None;
        };
        let from = DeployJob {
            env: from_env.clone(),
            ..job.clone()
        };
        let checks: Vec<_> = self
            .config
            .checks_for(&from)
            .into_iter()
            .map(|c| c.rule())
            .filter(|r| r.analysis.is_none())
            .collect();
        if checks.is_empty() {
            return None;
        }
        let names: Vec<String> = checks.iter().map(|r| r.name.clone()).collect();
        let readings = self
            .out
            .checks
            .read(&from, &names, &crate::deploy::checks::Groups::default())
            .await;
        readings.into_iter().find_map(|(name, reading)| {
            use crate::deploy::checks::{NoData, Reading};
            let no_data = checks
                .iter()
                .find(|r| r.name == name)
                .map_or(NoData::Fail, |r| r.no_data);
            match reading {
                Reading::Fail { detail } | Reading::Refused { detail } => Some(Red::Red(format!(
                    "check {name} reads red on {from_env}: {detail}"
                ))),
                Reading::NoData { detail } if no_data == NoData::Fail => Some(Red::NoData(
                    format!("check {name} has no data on {from_env}: {detail}"),
                )),
                _ => None,
            }
        })
    }

    /// The words given on `job`'s app+env that an approval rule may count now, where its
    /// environment has approvals.
    async fn words(&self, job: &DeployJob, now: DateTime<Utc>) -> Result<Vec<Approval>, PortError> {
        let Some(rules) = self
            .config
            .target(job)
            .ok()
            .and_then(|(_, e)| e.approvals.as_ref())
        else {
            return Ok(vec![]);
        };
        let since = rules.words_since(now);
        self.ledger.approvals(&job.app, &job.env, since).await
    }

    /// Tries the engine's lock, as a lease that lapses if this deploy stops renewing it.
    async fn take_lock(
        &self,
        deploy: &Deploy,
        lock: &LockInfo,
        now: DateTime<Utc>,
    ) -> Result<Observation, PortError> {
        let job = &deploy.job;
        // A cancelled job need not wait for its turn to end.
        if let Some(by) = self.cancelled(job).await? {
            return Ok(Observation::Cancelled { by, holder: None });
        }
        // A promotion waits for its time as for the calendar, then goes only if what it
        // promotes is still live where it comes from, and its checks there are not red
        // (before any calendar wait: one that will not go is skipped at once).
        match self.promotion(job, now).await? {
            Some(promotion::Standing::Waits { until, why }) => {
                return Ok(Observation::Closed { until, why })
            }
            Some(promotion::Standing::Refused(reason)) => return Ok(Observation::Skip { reason }),
            Some(promotion::Standing::Goes) => match self.red_where_promoted_from(job).await {
                Some(Red::Red(why)) => {
                    let reason = format!("not promoted: {why}");
                    return Ok(Observation::Skip { reason });
                }
                // No data (the metrics source down for a moment): read again, within the
                // check's data wait from the promotion's time, then not promoted.
                Some(Red::NoData(why)) => {
                    let reason = format!("not promoted: {why}");
                    let app = self.app(job).map_err(|e| Box::new(e) as PortError)?;
                    let r = &app.rollout;
                    let Source::Promotion { due_at, .. } = &job.source else {
                        return Ok(Observation::Skip { reason });
                    };
                    let gives_up = *due_at + chrono::Duration::seconds(r.check_wait_seconds as i64);
                    if now >= gives_up {
                        return Ok(Observation::Skip { reason });
                    }
                    let again =
                        now + chrono::Duration::seconds(r.check_interval_seconds.max(1) as i64);
                    return Ok(Observation::Closed {
                        until: again.min(gives_up),
                        why: format!(
                            "{why}; read again until {}",
                            gives_up.format("%Y-%m-%d %H:%M:%S UTC")
                        ),
                    });
                }
                None => {}
            },
            None => {}
        }
        // Checked at each try, just before the lock: nothing starts to change nodes
        // outside the environment's calendar or its change calendar (a deploy under way
        // goes on to its end).
        let exempt = |j: &DeployJob| self.config.target(j).is_ok_and(|(_, e)| e.exempt(j));
        let change = match self.change_calendar(job, now).await {
            Ok(change) => change,
            // A rollback (a sync, an override) passes the calendar: a failed read only
            // costs the jobs ahead that it holds back their places being kept.
            Err(e) if exempt(job) => {
                tracing::warn!(job_id = %job.id, error = %e, "cannot read the change calendar; this job passes it");
                None
            }
            Err(e) => return Err(e),
        };
        let closed = self
            .config
            .held_back(job, now)
            .or_else(|| change.clone().filter(|_| !exempt(job)));
        if let Some(closed) = closed {
            // Unless an earlier try took the lock unseen (its answer lost): a job holding
            // its lock goes on, as one that took it before the calendar closed does.
            let held = self.ledger.lock_state(&job.app, &job.env, now).await?;
            if held.and_then(|l| l.job).as_ref() != Some(&job.id) {
                return Ok(Observation::Closed {
                    until: closed.until,
                    why: closed.why,
                });
            }
        }
        // Then (the calendar open) its approvals, once: approved, the job keeps who did it
        // and comes back for the lock.
        if let Some(rules) = self.config.approvals_for(job) {
            let words = self.words(job, now).await?;
            return Ok(Observation::Approval {
                standing: rules.standing(job, &words, now),
                approvers: rules.approvers.clone(),
                timeout_seconds: rules.timeout_seconds,
            });
        }
        if let Some(turn) = &self.turn {
            // Jobs ahead that wait for their calendar or for approval keep no place: a
            // rollback or an override is not stuck behind a job that may wait for days.
            // Words that cannot be read hold nobody back (the order is kept).
            let (words, unread) = match self.words(job, now).await {
                Ok(words) => (words, false),
                Err(e) => {
                    tracing::warn!(job_id = %job.id, error = %e, "cannot read the approvals of the jobs ahead");
                    (vec![], true)
                }
            };
            let held = |j: &DeployJob| {
                self.config.held_back(j, now).is_some()
                    || (change.is_some() && !exempt(j))
                    || promotion::not_due(j, now)
                    || (!unread
                        && self.config.approvals_for(j).is_some_and(|rules| {
                            !matches!(rules.standing(j, &words, now), Standing::Approved { .. })
                        }))
            };
            if let Some(ahead) = turn.ahead(job, &held).await? {
                // Waits as for a held lock (backing off, within lock_wait_seconds).
                return Ok(Observation::Lock {
                    taken: false,
                    holder: Some(LockInfo {
                        holder: format!("job {ahead}"),
                        reason: "queued before this one".into(),
                        since: now,
                        expires: None,
                        job: Some(ahead),
                        generation: 0,
                        abort: None,
                        written: Written::default(),
                    }),
                });
            }
        }
        let lease = lease_seconds(deploy.policy.longest_command_seconds());
        let lock = LockInfo {
            since: now,
            expires: Some(LockInfo::lease_from(now, lease)),
            ..lock.clone()
        };
        let (taken, holder) = match self.ledger.try_lock(&job.app, &job.env, &lock, now).await? {
            Ok(ours) => (true, ours),
            Err(theirs) => (false, theirs),
        };
        // Held (taken now, or by an earlier try of this step), before any node: from here
        // the job can only run, unless it was cancelled first.
        if taken || holder.job.as_ref() == Some(&job.id) {
            if let Some(claims) = &self.claims {
                if let Some(by) = claims.start(job).await? {
                    return Ok(Observation::Cancelled {
                        by,
                        holder: Some(holder),
                    });
                }
            }
        }
        Ok(Observation::Lock {
            taken,
            holder: Some(holder),
        })
    }

    /// A node check's command whose check left the config under the running deploy: its
    /// nodes cannot be asked, which is no data, not the version's failure.
    fn node_check_left(&self, job: &DeployJob, cmd: &crate::deploy::command::Command) -> bool {
        let Some(name) = &cmd.check else {
            return false;
        };
        !self.config.target(job).is_ok_and(|(app, env)| {
            app.check_named(env, name)
                .is_some_and(|c| matches!(c.source, crate::config::CheckSource::Node { .. }))
        })
    }

    /// The newest version queued behind an automatic `job` that will go out when its turn
    /// comes: one the gate lets through now and not marked faulty. A newer tag whose
    /// checks are still red supersedes nothing, so the version before it still deploys.
    async fn superseding(
        &self,
        job: &DeployJob,
        faulty: &[Faulty],
        now: DateTime<Utc>,
    ) -> Result<Option<Version>, PortError> {
        let (Some(backlog), true) = (&self.backlog, job.source.is_automatic()) else {
            return Ok(None);
        };
        let mut words = None;
        for newer in backlog.newer_queued(job).await? {
            // A sync sends out whatever is live at its turn: it supersedes nothing.
            if matches!(newer.source, Source::Sync { .. }) {
                continue;
            }
            // Nor a promotion not due yet, or one that will not go: it may never deploy.
            if matches!(newer.source, Source::Promotion { .. })
                && self.promotion(&newer, now).await? != Some(promotion::Standing::Goes)
            {
                continue;
            }
            // Nor does one still waiting for approval: it may never get it.
            if let Some(rules) = self.config.approvals_for(&newer) {
                if words.is_none() {
                    words = Some(self.words(job, now).await?);
                }
                let given = words.as_deref().unwrap_or_default();
                if !matches!(
                    rules.standing(&newer, given, now),
                    Standing::Approved { .. }
                ) {
                    continue;
                }
            }
            if newer.source.is_automatic() && faulty_mark(faulty, &newer.version).is_some() {
                continue;
            }
            if !newer.is_gated() || self.out.gate.verify(&newer).await? == Verdict::Pass {
                return Ok(Some(newer.version));
            }
        }
        Ok(None)
    }
}
