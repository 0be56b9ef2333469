//! The ports the core talks through. Adapters: `aws` (SQS, Parameter Store, Run Command)
//! and `local` (SQLite, local processes).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::approval::Approval;
use super::checks::{Groups, Reading};
use super::command::{Command, NodeResult};
use super::dora::Figures;
use super::engine::{Deploy, Notice, Verdict};
pub use super::history::{Faulty, HistoryEntry};
use super::job::{DeployJob, JobId};
pub use super::lock::{LockInfo, Renewal, Unlocked, Written};
use super::status::JobStatus;
use super::story::Story;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enqueued {
    Queued,
    /// The queue already had this job id; nothing new was queued.
    Duplicate,
}

/// Boxed so adapters can carry their SDK's error without the core naming it.
pub type PortError = Box<dyn std::error::Error + Send + Sync>;

/// An error that trying again cannot fix (the job's app left the config, its nodes are
/// for the other runtime): a driver ends the job at once instead of retrying the step.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl Refused {
    pub fn error(reason: impl Into<String>) -> PortError {
        Box::new(Refused(reason.into()))
    }
}

pub fn is_refused(e: &PortError) -> bool {
    e.downcast_ref::<Refused>().is_some()
}

/// An API refused a call for the account's request rate, after the client's own retries
/// (other deploys, other tools share that rate): trying again later will do, and a driver
/// that waits longer the longer it lasts leaves more of the rate to everyone.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Throttled(pub String);

pub fn is_throttled(e: &PortError) -> bool {
    e.downcast_ref::<Throttled>().is_some()
}

#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Queues jobs in order; all of them or, on error, as many as the error says nothing
    /// about (callers treat an error as "retry the whole event", which dedupe makes safe).
    async fn enqueue(&self, jobs: &[DeployJob]) -> Result<Vec<Enqueued>, PortError>;
}

/// Where a deploy's metric checks are read (Prometheus's HTTP API).
#[async_trait]
pub trait Checks: Send + Sync {
    /// One reading of each of `names`, checks of `job`'s app+env (an analysis scrapes
    /// `groups`). Never fails: a check that cannot be read has no data, and says why (its
    /// `no_data` decides).
    async fn read(
        &self,
        job: &DeployJob,
        names: &[String],
        groups: &Groups,
    ) -> Vec<(String, Reading)>;
}

/// An SSM Change Calendar's state at a time: open or not, and when that next changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalendarState {
    pub open: bool,
    pub next_change: Option<DateTime<Utc>>,
}

/// Where an environment's `change_calendar` is read (SSM's GetCalendarState, on AWS).
#[async_trait]
pub trait ChangeCalendars: Send + Sync {
    /// Its state at `at`; `Ok(Err(why))` for a calendar that cannot be read however often
    /// it is asked (not there, not a calendar, not readable by this role); `Err` for a
    /// failure worth trying again (throttled, a timeout, a 5xx).
    async fn state(
        &self,
        name: &str,
        at: DateTime<Utc>,
    ) -> Result<Result<CalendarState, String>, PortError>;
}

/// Whether a version may go out, asked of where it comes from (GitHub) before the lock.
#[async_trait]
pub trait Gate: Send + Sync {
    async fn verify(&self, job: &DeployJob) -> Result<Verdict, PortError>;
}

/// What the notifiers remember of one deploy between steps (the Slack message to update,
/// say). Drivers keep it with the deploy's state without looking inside.
pub type NotifyMemo = serde_json::Value;

/// Chat, APM and the log. Best effort: never fails, never holds a deploy up for long.
#[async_trait]
pub trait Notify: Send + Sync {
    async fn notify(
        &self,
        deploy: &Deploy,
        notices: &[Notice],
        memo: &mut NotifyMemo,
        now: DateTime<Utc>,
    );
    /// Whether anyone keeps `app`'s DORA figures (so that a runtime computes them only then).
    fn wants_figures(&self, app: &str) -> bool {
        let _ = app;
        false
    }
    /// An app+env's DORA figures, as they stand after one of its jobs ended.
    async fn figures(&self, figures: &Figures, now: DateTime<Utc>) {
        let _ = (figures, now);
    }
}

/// Every job's story, where its runtime keeps it: the SQLite store, or on AWS the job's
/// execution and its Run Command invocations.
#[async_trait]
pub trait Stories: Send + Sync {
    /// `None`: no job of that id is kept.
    async fn story(&self, job: &JobId) -> Result<Option<Story>, PortError>;
}

/// Taking a job off the queue before it starts, decided in one step with the start of
/// the job ([`Claims::start`]: the job's row in SQLite, its claim on AWS).
#[async_trait]
pub trait Cancel: Send + Sync {
    /// `Ok(None)` once `job` will not run (cancelled by `by`); `Ok(Some(status))` when it
    /// had started or ended already, and nothing changed.
    async fn cancel(
        &self,
        job: &DeployJob,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<JobStatus>, PortError>;
}

/// The jobs still queued behind one, where a runtime can see them.
#[async_trait]
pub trait Backlog: Send + Sync {
    /// The jobs queued behind `job` for its app+env with a newer version, newest first.
    async fn newer_queued(&self, job: &DeployJob) -> Result<Vec<DeployJob>, PortError>;
}

/// Whether a job is held back by its environment's calendar now.
pub type HeldBack<'a> = &'a (dyn Fn(&DeployJob) -> bool + Send + Sync);

/// Jobs of one app+env start in the order they were queued, where the queue does not
/// hold that order itself: SQS FIFO hands jobs over in order, but to Step Functions
/// executions that then run side by side and would race for the lock.
#[async_trait]
pub trait Turn: Claims {
    /// The oldest job queued before `job` on its app+env that has not ended, if any, but
    /// for those `held` (its environment's calendar holds them back: they keep no place,
    /// so that a rollback or an override is not stuck behind a job that waits for days).
    async fn ahead(&self, job: &DeployJob, held: HeldBack<'_>) -> Result<Option<JobId>, PortError>;
    /// `job` ended: the one queued behind it may go.
    async fn leave(&self, job: &DeployJob) -> Result<(), PortError>;
}

/// Whether a job the runtime is driving was cancelled before it started (it may wait to
/// start for a while: its calendar, an approval, a promotion's time, its turn).
#[async_trait]
pub trait Claims: Send + Sync {
    /// Who took `job` off the queue, if someone did: a read that may lag the cancel, for
    /// a job still waiting to end early. `start` is what decides.
    async fn cancelled(&self, job: &DeployJob) -> Result<Option<String>, PortError>;
    /// `job` holds its lock and has touched no node: from now on it cannot be cancelled,
    /// unless someone cancelled it first (`Some(by)`): then it must not run. Decided in
    /// one step with [`Cancel::cancel`], whichever comes first; the same answer again
    /// when asked again.
    async fn start(&self, job: &DeployJob) -> Result<Option<String>, PortError>;
}

/// The remote commands sent for one command key (SSM command ids), kept with the deploy's
/// state so that a step replayed after a crash finds them instead of sending again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent {
    pub key: String,
    pub commands: Vec<String>,
    /// How many commands the key needs in all, when they go out a few at a time (an
    /// install capped below its number of commands); 0: all are in `commands`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parts: usize,
    /// A send was under way when this was saved: it may have gone out without its id
    /// being kept, so it is looked up before being sent again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unsure: bool,
    /// Nodes the key's commands leave out: gone before one could be sent to them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gone: Vec<String>,
    /// When the first of the key's commands was first tried: a later one gets only what
    /// lets it end before the deploy stops waiting for it (see `SsmFleet::run_on`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// The nodes of an app+env, and a way to run commands on them.
#[async_trait]
pub trait Fleet: Send + Sync {
    /// The job's nodes, in a stable order.
    async fn resolve(&self, job: &DeployJob) -> Result<Vec<String>, PortError>;
    /// Runs `cmd` on its nodes the first time its key is asked for, and reports on it
    /// after that (a key never runs twice on a node): every node's result, `Running`
    /// while unknown. `max_errors` is the deploy's install error budget; `sent` what this
    /// fleet needs to remember between steps. `replayed`: this step may repeat one that
    /// sent commands `sent` does not list (a retry after a crash), so a fleet that cannot
    /// tell by itself looks for them before sending.
    async fn run(
        &self,
        job: &DeployJob,
        cmd: &Command,
        max_errors: u32,
        sent: &mut Option<Sent>,
        replayed: bool,
    ) -> Result<Vec<(String, NodeResult)>, PortError>;
}

/// What is live where, and who holds which app+env.
#[async_trait]
pub trait Ledger: Send + Sync {
    /// `entry.job` is now live on its app+env. Recording the live job again changes nothing.
    /// `seen`: what the lock's holders wrote before (reads answer no older); returns it
    /// with this write added.
    async fn record(&self, entry: &HistoryEntry, seen: Written) -> Result<Written, PortError>;
    /// Newest first. Reads outside the lock: they may lag the newest writes (see [`Written`]).
    async fn history(
        &self,
        app: &str,
        env: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, PortError>;
    /// Marks a version rolled back from. Marking a version again keeps the first mark.
    /// `seen` and the answer as for `record`.
    async fn mark_faulty(
        &self,
        app: &str,
        env: &str,
        mark: &Faulty,
        seen: Written,
    ) -> Result<Written, PortError>;
    /// The versions marked faulty on app+env, newest mark first.
    async fn faulty(&self, app: &str, env: &str) -> Result<Vec<Faulty>, PortError>;
    /// What a lock holder decides on: the live entry and the marks, no older than what the
    /// lock's earlier holders wrote (`seen`). A ledger that cannot answer that yet fails,
    /// to be asked again.
    async fn inspect(
        &self,
        app: &str,
        env: &str,
        seen: Written,
    ) -> Result<(Option<HistoryEntry>, Vec<Faulty>), PortError> {
        let _ = seen;
        Ok((
            self.history(app, env, 1).await?.into_iter().next(),
            self.faulty(app, env).await?,
        ))
    }
    /// Keeps a person's word on one of app+env's jobs (see
    /// [`approval`](crate::deploy::approval)). Each person has one word on a job: `false`
    /// if they had given it already (the first stays).
    async fn approve(&self, app: &str, env: &str, word: &Approval) -> Result<bool, PortError>;
    /// The words given on app+env's jobs at or after `since`, oldest first.
    async fn approvals(
        &self,
        app: &str,
        env: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Approval>, PortError>;
    /// Takes the lock if it is free or its holder's lease lapsed (of two contenders,
    /// exactly one wins), with the next generation; a deploy asking again for the lock it
    /// holds gets it back as it stands. `Ok(the lock now held)`, `Err(whoever holds it)`.
    async fn try_lock(
        &self,
        app: &str,
        env: &str,
        lock: &LockInfo,
        now: DateTime<Utc>,
    ) -> Result<Result<LockInfo, LockInfo>, PortError>;
    /// The heartbeat: extends the lease of `job`'s lock of `generation` to `until`, and
    /// says whether it is still held (and whether someone asked it to stop).
    async fn renew(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        generation: u64,
        until: DateTime<Utc>,
    ) -> Result<Renewal, PortError>;
    /// Releases the lock if `job` holds it (a deploy ending); anyone else's stays. `written`
    /// goes to the next holder.
    async fn release(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        written: Written,
    ) -> Result<(), PortError>;
    /// Releases a lock taken from chat (or a deploy's whose lease lapsed); a running
    /// deploy's stays.
    async fn unlock(&self, app: &str, env: &str, now: DateTime<Utc>)
        -> Result<Unlocked, PortError>;
    /// Asks the deploy holding app+env to stop; it learns at its next heartbeat. That
    /// deploy's lock, or `None` when no deploy holds it.
    async fn request_abort(
        &self,
        app: &str,
        env: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError>;
    /// The unexpired lock, if any.
    async fn lock_state(
        &self,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError>;
}
