//! The deploy engine: a pure state machine with no I/O and no clock.
//!
//! A driver (Step Functions, the local worker, the simulator) loops:
//! `let a = deploy.action()` → perform `a` → `deploy.observe(now, result)` → save the
//! state. `action()` depends only on the state, and every command carries a key derived
//! from the job, so a driver that crashes and replays a step asks for the same command
//! again; fleets run a key at most once and answer a repeat with its status. That is what
//! keeps a node from being restarted twice.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::checks::{Groups, Rule, Stage};
use super::command::{Command, CommandKind, NodeResult};
use super::history::Faulty;
use super::job::{DeployJob, Source};
use super::lists;
use super::lock::{LockInfo, Renewal, Written, LEASE_RENEW_SECONDS};
use super::rollout::Rollout;
use super::version::Version;

mod phases;
mod types;

pub use types::{
    Action, Batch, Mark, Node, NodeState, Notice, Observation, Outcome, Phase, Promoted, Took,
    Verdict,
};

/// How often to look at a command still running: every 250 ms for its first second and
/// every 500 ms until its fourth (restarts and health checks take seconds, and each poll
/// late is a second added per node), then every `POLL_MILLIS`.
pub fn poll_millis(polls: u32) -> u64 {
    match polls {
        0..=3 => 250,
        4..=9 => 500,
        _ => POLL_MILLIS,
    }
}
pub const POLL_MILLIS: u64 = 2000;
/// How much earlier than the last one a command's first look comes when the last one
/// found its command finished (see `next_first_look`): small, so that the looks stay
/// near the top of how long the command takes and few of them find it running.
pub const FIRST_LOOK_EARLIER_PERCENT: u64 = 2;
/// Beyond its `command_timeout_seconds`, how long a command may go without a result from a
/// node (delivery to a node that went away, say) before that node counts as failed.
pub const COMMAND_GRACE_SECONDS: i64 = 600;

/// The most a deploy's state may take as JSON: what a Step Functions execution carries
/// from one state to the next (256 KB).
pub const STATE_MAX_BYTES: usize = 256 * 1024;

/// The most a step may return: the limit less room for what Step Functions puts around
/// the state (the Lambda invoke's metadata before `OutputPath`, the `attempt` beside it
/// in the next step's input, a Catch's `$.error`).
pub const STATE_ROOM_BYTES: usize = STATE_MAX_BYTES - 12 * 1024;
/// How much of a failed command's last output line goes into a notice.
pub const DETAIL_CHARS: usize = 300;
/// Longest pause between two tries of a held lock.
pub const LOCK_RETRY_MAX_MILLIS: u64 = 60_000;
/// A job the calendar holds back looks again this often (15 minutes; a fiftieth of the
/// wait when the opening is further off), so that it learns of a cancel and says where it
/// stands while it waits.
pub const CALENDAR_LOOK_MILLIS: u64 = 15 * 60_000;
/// Pending required checks are looked at again after 5 s, then twice as late each time,
/// up to a minute: CI runs take minutes, and each look costs GitHub API calls.
pub const VERIFY_FIRST_RETRY_MILLIS: u64 = 5_000;
pub const VERIFY_RETRY_MAX_MILLIS: u64 = 60_000;

/// One deploy in flight: everything a driver needs to continue it, small enough to travel
/// as a Step Functions execution's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deploy {
    pub job: DeployJob,
    pub policy: Rollout,
    pub phase: Phase,
    #[serde(with = "types::compact_nodes")]
    pub nodes: Vec<Node>,
    /// The version live before this deploy: what a rollback puts back.
    pub previous: Option<Version>,
    /// Set while the driver should wait before doing the phase's work.
    pub wait: Option<u64>,
    pub lock_waiting_since: Option<DateTime<Utc>>,
    /// Why this job waits before it takes its lock (its environment's calendar holds it
    /// back, or it waits for approval), as last said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed: Option<String>,
    /// When this job first asked for approval, and how often it looked since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_asked: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub approval_looks: u32,
    /// Lock tries so far while someone else holds it (for the back-off).
    pub lock_tries: u32,
    /// Held once taken, so that a rollback or failure still releases it.
    pub locked: bool,
    pub outcome: Option<Outcome>,
    /// While a command runs: since when, and how often it was looked at.
    #[serde(default)]
    pub running_since: Option<DateTime<Utc>>,
    #[serde(default)]
    pub polls: u32,
    /// When a look last found the running command still running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_seen: Option<DateTime<Utc>>,
    /// When to first look at a running restart or health check, learnt from the ones
    /// before it, so that it is first looked at about when it should be done (each look
    /// is an API call on AWS).
    #[serde(default, skip_serializing_if = "Took::is_empty")]
    pub took: Took,
    /// The lock this deploy holds: its generation (every command carries it, for nodes to
    /// refuse a holder that was taken over) and when its lease was last renewed.
    #[serde(default)]
    pub lease: Option<Lease>,
    /// The lease must be renewed before anything else: time has come, or a node is about
    /// to be restarted (so a lost lock or an abort is seen before each restart).
    #[serde(default)]
    pub renew_due: bool,
    /// Who asked this deploy to stop; it does once no command is in flight.
    #[serde(default)]
    pub abort_asked: Option<String>,
    /// The abort is under way: the failure path ends `Aborted`, not `Failed`.
    #[serde(default)]
    pub aborting: bool,
    /// A faulty mark to write before anything else while the lock is held: the verdict
    /// on a version this deploy rolls back from, written before the rollback starts, so
    /// that a deploy that loses its lock midway has not put back anything unmarked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<Mark>,
    /// The mark on this job's version that a person deploying it by name lifts once the
    /// deploy succeeds (recorded with the history entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clears: Option<Faulty>,
    /// The driver could not go on (see `stop`): why. This deploy is putting back what it
    /// changed; stopped a second time, it ends where it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopping: Option<String>,
    /// Nodes that went away while restarting or baking (see `count_failures`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub vanished: u32,
    /// Nodes whose restart failed in a drain hook (see `count_failures`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub hook_failures: u32,
    /// The app+env's metric checks, read on the canary, after each batch and while
    /// watching (see `Phase::Checks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<Rule>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub generation: u64,
    pub renewed_at: DateTime<Utc>,
    /// What the lock's holders, this deploy included, wrote to the ledger: its reads
    /// answer no older, and its release hands it on.
    #[serde(default, skip_serializing_if = "Written::is_none")]
    pub written: Written,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("observation {got} does not answer {expected}")]
pub struct Mismatch {
    pub expected: String,
    pub got: String,
}

impl Deploy {
    pub fn new(job: DeployJob, policy: Rollout) -> Deploy {
        // A rollback re-sends a version that was live; a forced job was let through by
        // someone who said so. Neither asks the gate.
        let phase = if job.is_gated() {
            Phase::Verify {
                since: None,
                tries: 0,
            }
        } else {
            Phase::Lock
        };
        Deploy {
            job,
            policy,
            phase,
            nodes: vec![],
            previous: None,
            wait: None,
            lock_waiting_since: None,
            closed: None,
            approval_asked: None,
            approval_looks: 0,
            lock_tries: 0,
            locked: false,
            outcome: None,
            running_since: None,
            polls: 0,
            running_seen: None,
            took: Took::default(),
            lease: None,
            renew_due: false,
            abort_asked: None,
            aborting: false,
            mark: None,
            clears: None,
            stopping: None,
            vanished: 0,
            hook_failures: 0,
            checks: vec![],
        }
    }

    /// This deploy reads `checks` as it goes (a rollback or a sync reads none).
    pub fn with_checks(mut self, checks: Vec<Rule>) -> Deploy {
        self.checks = checks;
        self
    }

    /// The nodes an analysis compares now: those restarted onto the new version and
    /// healthy, and those not restarted yet.
    fn groups(&self) -> Groups {
        Groups {
            canary: self.names_where(|s| s == NodeState::Healthy),
            baseline: self.names_where(|s| s == NodeState::Installed),
        }
    }

    /// The checks to read now: an analysis only while nodes serve both versions (not on
    /// a first deploy, nor while watching or after a last batch); a node check only while
    /// a node serves the version (none may, within a failure budget).
    fn reading_now(&self) -> Vec<&Rule> {
        let g = self.groups();
        let both = self.previous.is_some() && !g.canary.is_empty() && !g.baseline.is_empty();
        self.checks
            .iter()
            .filter(|r| r.analysis.is_none() || both)
            .filter(|r| !r.on_nodes || !g.canary.is_empty())
            .collect()
    }

    /// Whether this deploy reads checks: a rollback must not wait for (or be stopped by)
    /// a check that may still be red from what it undoes, and a sync puts back what is
    /// live already.
    fn reads_checks(&self) -> bool {
        !self.checks.is_empty()
            && !self.is_sync()
            && !matches!(self.job.source, Source::Rollback { .. })
    }

    fn is_sync(&self) -> bool {
        matches!(self.job.source, Source::Sync { .. })
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.job.id)
    }

    fn run(&self, key: String, kind: CommandKind, version: &Version, nodes: Vec<String>) -> Action {
        Action::Run(Command {
            key,
            kind,
            version: version.clone(),
            nodes,
            concurrency: if kind == CommandKind::Install {
                self.policy.install_concurrency
            } else {
                0
            },
            fence: self.lease.as_ref().map_or(0, |l| l.generation),
            not_after: None,
            check: None,
        })
    }

    fn names_where(&self, keep: impl Fn(NodeState) -> bool) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| keep(n.state))
            .map(|n| n.name.clone())
            .collect()
    }

    /// A batch's name in command keys: its first node, and how many follow it (a node is
    /// in one batch of a rollout and one of its rollback, so this is unique).
    fn label(&self, batch: &Batch) -> String {
        let first = batch
            .nodes
            .first()
            .map_or("", |&i| self.nodes[i].name.as_str());
        match batch.nodes.len() {
            0 | 1 => first.to_string(),
            n => format!("{first}+{}", n - 1),
        }
    }

    fn batch_names(&self, batch: &Batch, keep: impl Fn(NodeState) -> bool) -> Vec<String> {
        batch
            .nodes
            .iter()
            .map(|&i| &self.nodes[i])
            .filter(|n| keep(n.state))
            .map(|n| n.name.clone())
            .collect()
    }

    /// The next batch from `index` on: up to the rollout's size for batch `number`, of
    /// the nodes in state `wanted`, in node order. Empty when none is left.
    fn batch_from(&self, index: usize, number: usize, wanted: impl Fn(NodeState) -> bool) -> Batch {
        let size = self.policy.batch_size(number, self.nodes.len());
        Batch {
            number,
            nodes: (index..self.nodes.len())
                .filter(|&i| wanted(self.nodes[i].state))
                .take(size)
                .collect(),
        }
    }

    /// What to do now. A pure function of the state: asking twice gives the same answer.
    pub fn action(&self) -> Action {
        if let (true, Some(lease)) = (self.renew_due, &self.lease) {
            return Action::Renew {
                generation: lease.generation,
            };
        }
        if let (true, Some(mark)) = (self.locked, &self.mark) {
            return Action::MarkFaulty {
                version: mark.version.clone(),
                reason: mark.reason.clone(),
            };
        }
        if let Some(millis) = self.wait {
            // While the lock is held, no pause outlasts the next heartbeat.
            let millis = match self.lease {
                Some(_) => millis.min(LEASE_RENEW_SECONDS as u64 * 1000),
                None => millis,
            };
            return Action::Wait { millis };
        }
        self.phase_action()
    }

    /// What the phase asks for, heartbeat and pauses aside.
    fn phase_action(&self) -> Action {
        let v = &self.job.version;
        match &self.phase {
            Phase::Verify { .. } => Action::Verify,
            Phase::Lock => Action::Lock {
                lock: LockInfo {
                    holder: format!("job {}", self.job.id),
                    reason: format!("deploying {} {}", self.job.app, v),
                    // Both fixed by the job, so that a replayed step asks for the same lock.
                    since: self.job.requested_at,
                    expires: None,
                    job: Some(self.job.id.clone()),
                    generation: 0,
                    abort: None,
                    written: Written::default(),
                },
            },
            Phase::Inspect => Action::Inspect,
            Phase::Resolve => Action::ResolveNodes,
            Phase::Probe => self.run(
                self.key("probe"),
                CommandKind::Version,
                v,
                self.nodes.iter().map(|n| n.name.clone()).collect(),
            ),
            // Every node on a deploy; on a sync, those not on the live version.
            Phase::Install => self.run(
                self.key("install"),
                CommandKind::Install,
                v,
                self.names_where(|s| s == NodeState::Pending),
            ),
            Phase::Restart { batch } => self.run(
                self.key(&format!("restart:{}", self.label(batch))),
                CommandKind::Restart,
                v,
                self.batch_names(batch, |_| true),
            ),
            Phase::Bake { batch } => self.run(
                self.key(&format!("bake:{}", self.label(batch))),
                CommandKind::Health,
                v,
                self.batch_names(batch, |s| s == NodeState::Healthy),
            ),
            Phase::Checks {
                stage,
                batch,
                waited,
                on_nodes,
                ..
            } => {
                let rules = self.reading_now();
                let unread = |r: &&&Rule| r.on_nodes && !on_nodes.iter().any(|(n, _)| n == &r.name);
                if let Some(rule) = rules.iter().find(unread) {
                    // Unique to this reading, and short: SSM's comment holds 100 characters.
                    let look = format!(
                        "check:{}:{}{}.{waited}",
                        rule.name,
                        match stage {
                            Stage::Canary => 'c',
                            Stage::Batch => 'b',
                            Stage::Watch => 'w',
                        },
                        batch.as_ref().map_or(0, |b| b.number)
                    );
                    let nodes = self.names_where(|s| s == NodeState::Healthy);
                    let mut action = self.run(self.key(&look), CommandKind::Check, v, nodes);
                    if let Action::Run(cmd) = &mut action {
                        cmd.check = Some(rule.name.clone());
                    }
                    return action;
                }
                let groups = if rules.iter().any(|r| r.analysis.is_some()) {
                    self.groups()
                } else {
                    Groups::default()
                };
                Action::Check {
                    stage: *stage,
                    checks: rules
                        .iter()
                        .filter(|c| !c.on_nodes)
                        .map(|c| c.name.clone())
                        .collect(),
                    groups,
                }
            }
            Phase::Revert { to, .. } => self.run(
                self.key("revert:install"),
                CommandKind::Install,
                to,
                self.names_where(has_new_version),
            ),
            Phase::RevertRestart { to, batch, .. } => self.run(
                self.key(&format!("revert:restart:{}", self.label(batch))),
                CommandKind::Restart,
                to,
                self.batch_names(batch, |_| true),
            ),
            Phase::Record => Action::Record,
            Phase::Unlock => Action::Unlock,
            Phase::Done => Action::Finished(
                self.outcome
                    .clone()
                    .unwrap_or(Outcome::failed("finished without an outcome")),
            ),
        }
    }

    /// Advances on the result of the last `action()`. A result that does not answer it
    /// is refused and changes nothing.
    pub fn observe(
        &mut self,
        now: DateTime<Utc>,
        obs: Observation,
    ) -> Result<Vec<Notice>, Mismatch> {
        let action = self.action();
        let mut notices = vec![];
        let n = &mut notices;
        match (&action, obs) {
            (Action::Wait { millis }, Observation::Waited) => {
                self.wait = self
                    .wait
                    .map(|w| w.saturating_sub(*millis))
                    .filter(|&w| w > 0)
            }
            (Action::Renew { .. }, Observation::Renewed { renewal }) => {
                self.on_renewed(now, renewal, n)
            }
            (Action::Verify, Observation::Verified { verdict }) => self.on_verdict(now, verdict, n),
            (Action::Lock { .. }, Observation::Lock { taken, holder }) => {
                self.closed = None;
                self.on_lock(now, taken, holder, n)
            }
            (Action::Lock { .. }, Observation::Closed { until, why }) => {
                self.on_closed(now, until, why, n)
            }
            (Action::Lock { .. }, Observation::Skip { reason }) => {
                // An earlier try at the lock may have taken it unseen (its answer lost):
                // end through Unlock, which frees it only if this job holds it.
                self.locked = true;
                self.finish(Outcome::Skipped { reason }, n);
            }
            (
                Action::Lock { .. },
                Observation::Approval {
                    standing,
                    approvers,
                    timeout_seconds,
                },
            ) => self.on_approval(now, standing, approvers, timeout_seconds, n),
            (Action::Verify | Action::Lock { .. }, Observation::Cancelled { by, holder }) => {
                if holder.is_some() {
                    self.on_lock(now, true, holder, n);
                }
                // An earlier try at the lock may have taken it unseen (its answer lost):
                // end through Unlock, which frees the lock only if this job holds it.
                self.locked = true;
                self.finish(Outcome::cancelled(by), n);
            }
            (Action::Inspect, Observation::Inspected { live, .. }) if self.is_sync() => {
                self.on_live_for_sync(live, n)
            }
            (
                Action::Inspect,
                Observation::Inspected {
                    live,
                    newer_queued,
                    faulty,
                },
            ) => self.on_inspected(live, newer_queued, faulty, n),
            (Action::ResolveNodes, Observation::Nodes { nodes }) => self.on_nodes(nodes, n),
            (
                Action::Run(cmd),
                Observation::Ran {
                    key,
                    results,
                    sent_at,
                },
            ) if key == cmd.key => self.on_ran(now, cmd, results, sent_at, n),
            (Action::Check { .. }, Observation::Checked { readings }) => {
                self.on_checked(readings, n)
            }
            (Action::Record, Observation::Recorded { written, promoted }) => {
                self.wrote(written);
                if let Some(promoted) = promoted {
                    n.push(Notice::Promoting { promoted });
                }
                self.on_recorded()
            }
            (Action::MarkFaulty { version, reason }, Observation::MarkedFaulty { written }) => {
                self.wrote(written);
                n.push(Notice::MarkedFaulty {
                    version: version.clone(),
                    reason: reason.clone(),
                });
                self.mark = None;
            }
            (Action::Unlock, Observation::Unlocked) => {
                self.locked = false;
                self.phase = Phase::Done;
                if let Some(outcome) = self.outcome.clone() {
                    n.push(Notice::Finished { outcome });
                }
            }
            (action, got) => {
                return Err(Mismatch {
                    expected: format!("{action:?}"),
                    got: format!("{got:?}"),
                })
            }
        }
        self.heartbeat(now, n);
        Ok(notices)
    }

    /// What the lock's holders wrote to the ledger, as far as this deploy knows.
    pub fn written(&self) -> Written {
        self.lease
            .as_ref()
            .map_or(Written::default(), |l| l.written)
    }

    /// The ledger took a write of this deploy's: the lock hands it to the next holder.
    fn wrote(&mut self, written: Written) {
        if let Some(lease) = &mut self.lease {
            lease.written = lease.written.max(written);
        }
    }

    /// Waiting for people to approve it (asked, not yet approved, not ended).
    pub fn waits_for_approval(&self) -> bool {
        self.approval_asked.is_some() && self.job.approved_by.is_empty() && self.outcome.is_none()
    }

    /// Waiting for its environment's calendar or for approval, without its lock (the local
    /// store's claim reads the same from a saved state).
    pub fn waits_to_start(&self) -> bool {
        self.closed.is_some() && !self.locked
    }

    /// The step that saved this state failed, and may have sent the command it was about
    /// to send before failing: that command counts as running from `now`, so that an
    /// abort seen first waits for it (as for any command in flight: looked up, or sent if
    /// not found) instead of ending the deploy while it may still reach its nodes. Only
    /// the next command is known: one a failed step sent after others it completed is
    /// not (see the README's "What does not hold").
    pub fn in_doubt(&mut self, now: DateTime<Utc>) {
        if self.running_since.is_none() && matches!(self.action(), Action::Run(_)) {
            self.running_since = Some(now);
        }
    }

    /// Tells the deploy the time before its next `action()`: a lease that has not been
    /// renewed for `LEASE_RENEW_SECONDS` is renewed before anything else, so a driver that
    /// stalled (a frozen process, a step retried late) learns whether it still holds the
    /// lock before it acts again, not after.
    pub fn tick(&mut self, now: DateTime<Utc>) {
        if let Some(lease) = &self.lease {
            if self.locked
                && !matches!(self.phase, Phase::Unlock | Phase::Done)
                && now - lease.renewed_at >= Duration::seconds(LEASE_RENEW_SECONDS)
            {
                self.renew_due = true;
            }
        }
    }

    /// The driver cannot go on with this deploy (a step kept failing): put back what it
    /// changed and end, as a failed health check would but marking nothing, so that it
    /// never releases its lock with nodes on two versions. The command this state was
    /// about to send or look at may have reached its nodes unseen: they count as changed,
    /// and nothing more is sent before it surely ended. A deploy that touched no node just
    /// ends (releasing its lock); one that fails while putting things back ends
    /// `RollbackFailed`. `None`: the engine can do nothing more (stopped a second time, or
    /// only the unlock is left, or a try at the lock may have taken it unseen): the driver
    /// gives up, which releases the lock if this job holds it.
    pub fn stop(&mut self, now: DateTime<Utc>, reason: &str) -> Option<Vec<Notice>> {
        if self.stopping.is_some()
            || matches!(self.phase, Phase::Unlock | Phase::Done)
            || (self.phase == Phase::Lock && !self.locked)
        {
            return None;
        }
        let mut notices = vec![];
        let mut reason = format!("the deploy could not go on: {reason}");
        self.stopping = Some(reason.clone());
        // A command is in flight (sent, not seen to end), or about to be sent: the step
        // that failed may have sent it.
        let in_doubt = self.running_since.is_some() || matches!(self.action(), Action::Run(_));
        let in_flight = match self.phase_action() {
            Action::Run(cmd) if in_doubt => Some(cmd),
            _ => None,
        };
        if let Some(mark) = self.mark.take() {
            // Marks are written before anything else: this is what kept failing.
            reason.push_str(&format!(" (marking {} faulty failed)", mark.version));
        }
        if !self.locked {
            self.finish(Outcome::failed(reason), &mut notices);
            return Some(notices);
        }
        let since = self.running_since.take().unwrap_or(now);
        self.running_seen = None;
        self.polls = 0;
        if let Some(cmd) =
            in_flight.filter(|c| matches!(c.kind, CommandKind::Install | CommandKind::Restart))
        {
            let limit = Duration::seconds(
                self.policy.command_seconds(cmd.kind) as i64 + COMMAND_GRACE_SECONDS,
            );
            let left = (since + limit - now).num_milliseconds().max(0) as u64;
            self.wait = (left > 0).then_some(left);
            let sent: std::collections::HashSet<&str> =
                cmd.nodes.iter().map(String::as_str).collect();
            let (from, to) = match cmd.kind {
                CommandKind::Install => (NodeState::Pending, NodeState::Installed),
                _ => (NodeState::Installed, NodeState::Unhealthy),
            };
            for node in &mut self.nodes {
                if node.state == from && sent.contains(node.name.as_str()) {
                    node.state = to;
                }
            }
        }
        match self.phase.clone() {
            Phase::Revert { to, .. } | Phase::RevertRestart { to, .. } => {
                let why = format!("{reason}, while putting {to} back");
                self.finish(Outcome::RollbackFailed { reason: why }, &mut notices);
            }
            _ => {
                // Recorded as live only once Record answers: a failure there is before it.
                if self.phase == Phase::Record {
                    self.outcome = None;
                }
                self.revert_or_fail(reason, false, &mut notices);
            }
        }
        Some(notices)
    }

    /// After every step: renew the lease when it is time, and act on an abort once no
    /// command is in flight (a restart half-observed must finish before it is undone).
    fn heartbeat(&mut self, now: DateTime<Utc>, notices: &mut Vec<Notice>) {
        self.tick(now);
        if self.lease.is_none() {
            return;
        }
        let forward = matches!(
            self.phase,
            Phase::Inspect
                | Phase::Resolve
                | Phase::Probe
                | Phase::Install
                | Phase::Restart { .. }
                | Phase::Bake { .. }
                | Phase::Checks { .. }
        );
        if let (Some(by), false, true, None) = (
            self.abort_asked.clone(),
            self.aborting,
            forward,
            self.running_since,
        ) {
            self.aborting = true;
            self.wait = None;
            self.polls = 0;
            self.revert_or_fail(format!("aborted by {by}"), false, notices);
        }
    }

    /// The lease renewed (and perhaps an abort asked for), or the lock lost: then the
    /// nodes are someone else's to change, and this deploy stops where it is.
    fn on_renewed(&mut self, now: DateTime<Utc>, renewal: Renewal, notices: &mut Vec<Notice>) {
        self.renew_due = false;
        match renewal {
            Renewal::Held { abort } => {
                if let Some(lease) = &mut self.lease {
                    lease.renewed_at = now;
                }
                if let (Some(by), None) = (abort, &self.abort_asked) {
                    notices.push(Notice::Aborting { by: by.clone() });
                    self.abort_asked = Some(by);
                }
            }
            Renewal::Lost { holder } => {
                let who = holder.map_or("nobody (it was removed)".to_string(), |h| {
                    format!("{} ({})", h.holder, h.reason)
                });
                let why = format!(
                    "lost the lock of {}/{} to {who}",
                    self.job.app, self.job.env
                );
                self.lost_lock(why, notices);
            }
        }
    }

    /// The lock is someone else's now (taken over after this deploy's lease lapsed, or
    /// removed): the nodes are that holder's to change, so this deploy stops where it is,
    /// writes nothing more, and names the nodes it leaves on its version. A success not
    /// yet recorded is no success: history does not say so.
    fn lost_lock(&mut self, why: String, notices: &mut Vec<Notice>) {
        // A restart in flight may have taken effect: its nodes count as on the version.
        if let (Some(_), Phase::Restart { batch }) = (self.running_since, &self.phase) {
            for &i in &batch.nodes {
                if self.nodes[i].state == NodeState::Installed {
                    self.nodes[i].state = NodeState::Unhealthy;
                }
            }
        }
        self.locked = false;
        self.lease = None;
        self.wait = None;
        self.renew_due = false;
        self.mark = None;
        self.running_since = None;
        self.running_seen = None;
        self.polls = 0;
        let outcome = match self.outcome.take() {
            Some(Outcome::Succeeded { .. }) if self.phase == Phase::Record => Outcome::Failed {
                reason: format!(
                    "{why} before it recorded {} as live: its nodes serve it, history does not say so",
                    self.job.version
                ),
                rolled_back: false,
                left_behind: self.left_on_version(),
            },
            // Decided already (recorded, or put back): only the bookkeeping after it is
            // left undone, and the lock is not ours to release.
            Some(outcome) => outcome,
            None => self.failed(
                format!("{why}; stopped before its next command, nodes are that deploy's to change now"),
                false,
            ),
        };
        self.phase = Phase::Done;
        self.outcome = Some(outcome.clone());
        notices.push(Notice::Finished { outcome });
    }

    /// The nodes that may serve this job's version: restarted on it and not put back, or
    /// gone (a node that went away may come back as it was).
    fn left_on_version(&self) -> Vec<String> {
        lists::capped(self.names_where(|s| {
            matches!(
                s,
                NodeState::Healthy | NodeState::Unhealthy | NodeState::Gone
            )
        }))
    }

    /// How a failed deploy ends (`Aborted` when a person stopped it), naming the nodes it
    /// leaves on its version.
    pub fn failed(&self, reason: String, rolled_back: bool) -> Outcome {
        let left_behind = self.left_on_version();
        match (&self.abort_asked, self.aborting) {
            (Some(by), true) => Outcome::Aborted {
                by: by.clone(),
                rolled_back,
                reason,
                left_behind,
            },
            _ => Outcome::Failed {
                reason,
                rolled_back,
                left_behind,
            },
        }
    }

    /// Ends with `outcome`: through Unlock if the lock is ours (a pending faulty mark is
    /// written first, see `action`).
    fn finish(&mut self, outcome: Outcome, notices: &mut Vec<Notice>) {
        self.outcome = Some(outcome.clone());
        if self.locked {
            self.phase = Phase::Unlock;
        } else {
            self.phase = Phase::Done;
            notices.push(Notice::Finished { outcome });
        }
    }

    /// Advances on a finished command: every node has its result (`Running` ones timed out).
    fn on_command(
        &mut self,
        cmd: Command,
        result_of: &dyn Fn(&str) -> NodeResult,
        notices: &mut Vec<Notice>,
    ) {
        match self.phase.clone() {
            Phase::Probe => self.on_probe(result_of, notices),
            Phase::Install => self.on_install(&cmd, result_of, notices),
            Phase::Restart { batch } => self.on_restart(batch, result_of, notices),
            Phase::Bake { batch } => self.on_bake(batch, result_of, notices),
            Phase::Checks { .. } => self.on_node_check(&cmd, result_of),
            Phase::Revert { to, reason } => self.on_revert(&cmd, to, reason, result_of, notices),
            Phase::RevertRestart { to, batch, reason } => {
                self.on_revert_restart(to, batch, reason, result_of, notices)
            }
            _ => {}
        }
    }

    /// Restarts the next batch of nodes that installed, from `index` on; records when none
    /// is left.
    fn restart_from(&mut self, index: usize, number: usize) {
        let batch = self.batch_from(index, number, |s| s == NodeState::Installed);
        if batch.nodes.is_empty() && self.reads_checks() && self.policy.watch_seconds > 0 {
            self.check(Stage::Watch, None);
        } else if batch.nodes.is_empty() {
            self.succeed();
        } else {
            self.phase = Phase::Restart { batch };
            // Before each batch, make sure the lock is still ours and nobody asked to stop.
            self.renew_due = true;
        }
    }

    /// Every node that installed went live (or failed within the rollout's budget): record
    /// it.
    fn succeed(&mut self) {
        self.outcome = Some(Outcome::Succeeded {
            failed_installs: lists::capped(self.names_where(|s| s == NodeState::InstallFailed)),
            unhealthy: lists::capped(self.names_where(|s| s == NodeState::Unhealthy)),
            gone: lists::capped(self.names_where(|s| s == NodeState::Gone)),
        });
        // A rollback that went out replaced the version it undoes: marked before it
        // is recorded, while the lock is surely this deploy's.
        if let (Source::Rollback { .. }, Some(from)) = (&self.job.source, &self.previous) {
            if !from.same_as(&self.job.version) {
                self.mark = Some(Mark {
                    version: from.clone(),
                    reason: format!(
                        "rolled back to {} by {} (job {})",
                        self.job.version, self.job.requested_by, self.job.id
                    ),
                });
            }
        }
        // A sync changes no history: the live version stays the live version.
        self.phase = if self.is_sync() {
            Phase::Unlock
        } else {
            Phase::Record
        };
    }

    /// The batch after `batch`: next in node order, one further in the rollout's sizes.
    fn restart_after(&mut self, batch: &Batch) {
        let next = batch.nodes.last().map_or(0, |i| i + 1);
        self.restart_from(next, batch.number + 1);
    }

    /// Marks `failed` unhealthy (they failed a restart, a health check or the bake); stops
    /// and rolls back once more nodes failed than the rollout allows, or else goes on.
    fn count_failures(
        &mut self,
        failed: Vec<(usize, String)>,
        reason: impl FnOnce(&[String]) -> String,
        notices: &mut Vec<Notice>,
    ) -> bool {
        let mut names = vec![];
        for (i, detail) in failed {
            self.nodes[i].state = NodeState::Unhealthy;
            names.push(self.nodes[i].name.clone());
            notices.push(Notice::Unhealthy {
                node: self.nodes[i].name.clone(),
                detail,
            });
        }
        let unhealthy = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Unhealthy)
            .count();
        // Nodes that went away while restarting count against the budget too: a version
        // that takes its nodes down must not roll across the fleet. They are no verdict
        // on it, though: only nodes that failed their checks mark it (not those whose
        // drain hook failed: those are the load balancer's).
        if unhealthy + self.vanished as usize > self.policy.failure_budget(self.nodes.len()) {
            let why = if names.is_empty() {
                format!(
                    "{} node(s) went away while restarting on {}, more than the rollout allows",
                    self.vanished, self.job.version
                )
            } else {
                reason(&names)
            };
            let served = unhealthy > self.hook_failures as usize;
            self.revert_or_fail(why, served, notices);
            return false;
        }
        true
    }

    /// After a failure: put the previous version back where the new one was installed and
    /// restart the nodes this deploy restarted, or stop if the policy or history forbids it.
    /// `served`: the version failed on a node after it served there (its restart, health
    /// check or bake), so rolling back from it marks it faulty; an install failure, an
    /// abort or a driver that cannot go on is no verdict on the version.
    fn revert_or_fail(&mut self, reason: String, served: bool, notices: &mut Vec<Notice>) {
        if self.is_sync() {
            // The nodes it touched did not run the live version before either; there
            // is nothing better to put back.
            return self.finish(self.failed(reason, false), notices);
        }
        let installed = self.names_where(has_new_version);
        match (
            &self.previous,
            self.policy.auto_rollback,
            installed.is_empty(),
        ) {
            (Some(to), true, false) => {
                let to = to.clone();
                // Rolling back to the version itself (a re-deploy of the live one) rolls
                // back from nothing.
                if served && !to.same_as(&self.job.version) {
                    self.mark = Some(Mark {
                        version: self.job.version.clone(),
                        reason: format!("job {} rolled back from it: {reason}", self.job.id),
                    });
                }
                notices.push(Notice::RollingBack {
                    to: to.clone(),
                    nodes: lists::capped(self.names_where(was_restarted)),
                    reason: reason.clone(),
                });
                self.phase = Phase::Revert { to, reason };
            }
            (None, true, false) => {
                let why = format!("{reason}; no earlier version is on record to roll back to");
                self.finish(self.failed(why, false), notices);
            }
            _ => self.finish(self.failed(reason, false), notices),
        }
    }

    /// Restarts, in node order and in the rollout's batches, the next nodes from `index`
    /// on that this deploy restarted.
    fn revert_restart_from(
        &mut self,
        to: Version,
        index: usize,
        number: usize,
        reason: String,
        notices: &mut Vec<Notice>,
    ) {
        let batch = self.batch_from(index, number, was_restarted);
        if batch.nodes.is_empty() {
            self.finish(self.failed(reason, true), notices);
        } else {
            self.phase = Phase::RevertRestart { to, batch, reason };
        }
    }
}

/// The version a `CommandKind::Version` command printed: `pip show`'s `Version:` line, or
/// else its last line.
fn installed_version(output: &str) -> Option<Version> {
    let line = output
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::to_string)
        .unwrap_or_else(|| last_line(output));
    Version::parse(line.trim()).ok()
}

/// What a node answered a `CommandKind::Version` command: the version it runs, if it
/// printed one, and the last line it said.
pub fn probed(result: &NodeResult) -> (Option<Version>, String) {
    match result {
        NodeResult::Reported { output } => (installed_version(output), last_line(output)),
        NodeResult::Failed { output, .. } => (None, last_line(output)),
        _ => (None, String::new()),
    }
}

/// The last non-blank line of `output`, trimmed and cut to `DETAIL_CHARS`.
fn last_line(output: &str) -> String {
    let last = output
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    last.chars().take(DETAIL_CHARS).collect()
}

/// The node has the new version on disk.
fn has_new_version(s: NodeState) -> bool {
    matches!(
        s,
        NodeState::Installed | NodeState::Healthy | NodeState::Unhealthy
    )
}

fn was_restarted(s: NodeState) -> bool {
    matches!(s, NodeState::Healthy | NodeState::Unhealthy)
}

#[cfg(test)]
mod tests;
