//! The engine's vocabulary: what it asks a driver to do, what it is told back, what it
//! says happened, and the phases and node states a deploy goes through.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::deploy::analysis::Tally;
use crate::deploy::approval::Standing;
use crate::deploy::checks::{Groups, Reading, Stage};
use crate::deploy::command::{Command, CommandKind, NodeResult};
use crate::deploy::history::Faulty;
use crate::deploy::job::DeployJob;
use crate::deploy::lock::{LockInfo, Renewal, Written};
use crate::deploy::version::Version;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Check that the job's version may go out (its tag merged, its required checks
    /// green); answer `Observation::Verified`.
    Verify,
    /// Take `lock` on the job's app+env; answer `Observation::Lock`.
    Lock { lock: LockInfo },
    /// Renew the lease of the lock this deploy took with `generation`; answer
    /// `Observation::Renewed`.
    Renew { generation: u64 },
    /// Read the live job, any newer queued version and whether the job's version was
    /// rolled back from; answer `Observation::Inspected`.
    Inspect,
    /// Find the job's nodes, in a stable order; answer `Observation::Nodes`.
    ResolveNodes,
    /// Answer `Observation::Ran` with a result for every node of the command.
    Run(Command),
    /// Read these checks of the job's app+env (by name) once, an analysis comparing
    /// `groups`; answer `Observation::Checked` with a reading of each.
    Check {
        stage: Stage,
        checks: Vec<String>,
        #[serde(default, skip_serializing_if = "Groups::is_empty")]
        groups: Groups,
    },
    /// Answer `Observation::Waited` after this long.
    Wait { millis: u64 },
    /// The job is now live: record it (and lift the faulty mark on its version, if a
    /// person deployed a marked version and it went well); answer `Observation::Recorded`.
    Record,
    /// Mark `version` as rolled back from after it served (before the rollback starts,
    /// while the lock is surely held); answer `Observation::MarkedFaulty`.
    MarkFaulty { version: Version, reason: String },
    /// Release the lock; answer `Observation::Unlocked`.
    Unlock,
    /// Nothing more to do.
    Finished(Outcome),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "observation", rename_all = "snake_case")]
pub enum Observation {
    Verified {
        verdict: Verdict,
    },
    /// `holder`: the lock as it stands, this deploy's when `taken`.
    Lock {
        taken: bool,
        holder: Option<LockInfo>,
    },
    /// In answer to `Action::Verify` or `Action::Lock`: someone took the job off the
    /// queue (`by`) before it started. `holder`: this deploy's lock, when it took it
    /// before it learnt that.
    Cancelled {
        by: String,
        holder: Option<LockInfo>,
    },
    Renewed {
        renewal: Renewal,
    },
    Inspected {
        live: Option<Box<DeployJob>>,
        newer_queued: Option<Version>,
        /// The mark on the job's version, if it was rolled back from.
        #[serde(default)]
        faulty: Option<Faulty>,
    },
    Nodes {
        nodes: Vec<String>,
    },
    /// Asked for the lock while the environment takes no deploys from this job: it opens
    /// at `until`.
    Closed {
        until: DateTime<Utc>,
        why: String,
    },
    /// Asked for the lock by a job that must not go at all (a promotion whose version is
    /// no longer live where it comes from): it is skipped.
    Skip {
        reason: String,
    },
    /// Asked for the lock by a job its environment's approvals hold (see
    /// [`approval`](crate::deploy::approval)): where it stands, who may approve it, and
    /// how long it may wait from the first ask.
    Approval {
        standing: Standing,
        approvers: Vec<String>,
        timeout_seconds: u64,
    },
    Ran {
        key: String,
        results: Vec<(String, NodeResult)>,
        /// When the fleet sent the key's first command, if it keeps track: the deploy
        /// waits for the command counted from then when that is later than its own first
        /// look (a retried step counts from its start, and may send much later).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent_at: Option<DateTime<Utc>>,
    },
    Waited,
    Checked {
        readings: Vec<(String, Reading)>,
    },
    /// `written`: the ledger's answer, what the lock's holders have written now;
    /// `promoted`: the promotion this success queued, if its environment promotes.
    Recorded {
        #[serde(default)]
        written: Written,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        promoted: Option<Promoted>,
    },
    MarkedFaulty {
        #[serde(default)]
        written: Written,
    },
    Unlocked,
}

/// The promotion a deploy queued on success (see `promotion`): where to, when it is due,
/// or why it could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promoted {
    pub to: String,
    pub due_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Whether a version may be deployed, from its source (GitHub) rather than from shipit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    /// It may not, and waiting will not change that: the job is skipped.
    Refuse {
        reason: String,
    },
    /// Not yet (a required check is still running): ask again for up to `wait_seconds`
    /// from the first answer, then skip.
    Pending {
        reason: String,
        wait_seconds: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Live on every node that installed (installs that failed within `max_errors` are
    /// listed), except those that failed their restart within `max_failed` and those that
    /// went away. Lists past `lists::NAMES_SHOWN` names end `… and N more`.
    Succeeded {
        failed_installs: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unhealthy: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gone: Vec<String>,
    },
    /// Nothing was restarted (or everything restarted was put back); the old version
    /// serves, except on the nodes `left_behind` names (this deploy lost its lock before it
    /// could put them back, or they went away while on the new version).
    Failed {
        reason: String,
        rolled_back: bool,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left_behind: Vec<String>,
    },
    /// A rollback did not bring a node back healthy: someone must look.
    RollbackFailed { reason: String },
    /// Not deployed, on purpose.
    Skipped { reason: String },
    /// Stopped by a person (`/deploy abort`); nodes it restarted were put back, except
    /// `left_behind`.
    Aborted {
        by: String,
        rolled_back: bool,
        reason: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left_behind: Vec<String>,
    },
    /// Taken off the queue by a person before it touched a node: it never ran.
    Cancelled { by: String, reason: String },
}

impl Outcome {
    /// A failure that changed nothing it did not put back.
    pub fn failed(reason: impl Into<String>) -> Outcome {
        Outcome::Failed {
            reason: reason.into(),
            rolled_back: false,
            left_behind: vec![],
        }
    }

    /// Taken off the queue by `by` before it touched a node.
    pub fn cancelled(by: impl Into<String>) -> Outcome {
        let by = by.into();
        Outcome::Cancelled {
            reason: format!("cancelled by {by} before it started"),
            by,
        }
    }

    /// The nodes a deploy that ended left as they are, and how: for a success, installs
    /// that failed, nodes unhealthy within `max_failed` and nodes gone; for a failure, the
    /// nodes that may still serve its version.
    pub fn left_behind(&self) -> Option<String> {
        let mut parts = vec![];
        match self {
            Outcome::Succeeded {
                failed_installs,
                unhealthy,
                gone,
            } => {
                if !failed_installs.is_empty() {
                    parts.push(format!("installs on {}", failed_installs.join(", ")));
                }
                if !unhealthy.is_empty() {
                    parts.push(format!("{} unhealthy", unhealthy.join(", ")));
                }
                if !gone.is_empty() {
                    parts.push(format!("{} gone", gone.join(", ")));
                }
            }
            Outcome::Failed { left_behind, .. } | Outcome::Aborted { left_behind, .. } => {
                if !left_behind.is_empty() {
                    parts.push(left_behind.join(", "));
                }
            }
            Outcome::RollbackFailed { .. }
            | Outcome::Skipped { .. }
            | Outcome::Cancelled { .. } => {}
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }

    /// Why it did not succeed, or what a success left behind (`except …`): what a job's
    /// story and its stored row say of how it ended.
    pub fn why(&self) -> Option<String> {
        self.reason()
            .map(str::to_string)
            .or_else(|| self.left_behind().map(|l| format!("except {l}")))
    }

    /// Why it did not succeed.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Outcome::Succeeded { .. } => None,
            Outcome::Failed { reason, .. }
            | Outcome::RollbackFailed { reason }
            | Outcome::Skipped { reason }
            | Outcome::Aborted { reason, .. }
            | Outcome::Cancelled { reason, .. } => Some(reason),
        }
    }
}

/// What happened, for chat, APM and logs. Sent best-effort; never blocks the deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Notice {
    Started {
        from: Option<Version>,
        nodes: usize,
    },
    WaitingForChecks {
        reason: String,
        wait_seconds: u64,
    },
    WaitingForLock {
        holder: LockInfo,
    },
    /// The environment takes no deploys now (outside its windows, or frozen): an
    /// automatic job waits, saying until when.
    WaitingForWindow {
        why: String,
    },
    /// The deploy waits for `need` approvals (it has `have`) from `approvers` before it
    /// starts: said once, when it first asks.
    AwaitingApproval {
        have: u32,
        need: u32,
        approvers: Vec<String>,
    },
    /// Enough approvers approved it (some perhaps an earlier deploy of the version).
    Approved {
        by: Vec<String>,
    },
    /// Live here, the version is sent on to another environment (queued, due then).
    Promoting {
        promoted: Promoted,
    },
    /// Someone asked this deploy to stop: it does after the command in flight.
    Aborting {
        by: String,
    },
    Installed {
        node: String,
    },
    InstallFailed {
        node: String,
        detail: String,
    },
    Restarted {
        node: String,
    },
    Healthy {
        node: String,
    },
    Unhealthy {
        node: String,
        detail: String,
    },
    /// The node went away (terminated, deregistered, unreachable): dropped from the
    /// deploy, which goes on with the others.
    Gone {
        node: String,
        detail: String,
    },
    /// A check failed (or had no data past its wait, where that fails): the deploy rolls
    /// back.
    CheckFailed {
        check: String,
        stage: Stage,
        detail: String,
    },
    /// Every check passed (or was passed over for lack of data): each as `name: detail`.
    ChecksPassed {
        stage: Stage,
        readings: Vec<String>,
    },
    RollingBack {
        to: Version,
        nodes: Vec<String>,
        reason: String,
    },
    /// A sync found `node` on another version than the live one (`None`: none installed
    /// or unreadable, with what the node said).
    Drifted {
        node: String,
        installed: Option<Version>,
        detail: String,
    },
    /// This deploy marked `version` faulty (it rolled back from it after it served):
    /// nothing automatic sends it out again.
    MarkedFaulty {
        version: Version,
        reason: String,
    },
    /// Someone deploys by name a version that was rolled back from.
    DeployingFaulty {
        mark: Faulty,
    },
    Finished {
        outcome: Outcome,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Pending,
    Installed,
    InstallFailed,
    /// Restarted and passed its health check.
    Healthy,
    Unhealthy,
    /// Back on the previous version (reinstalled, and restarted and healthy if it had been
    /// restarted).
    Reverted,
    /// Went away mid-deploy: no longer sent anything.
    Gone,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub state: NodeState,
}

/// A deploy's nodes as its state keeps them: the names in one list and the states as one
/// letter each, so that the state of a 10,000-node deploy fits the 256 KB Step Functions
/// passes between steps (an object per node took about 50 bytes: 500 KB). Reads the
/// object form that older states hold too.
pub(super) mod compact_nodes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{Node, NodeState};

    /// Exhaustive, so that a new state cannot be written without a letter.
    fn letter(state: NodeState) -> char {
        match state {
            NodeState::Pending => 'p',
            NodeState::Installed => 'i',
            NodeState::InstallFailed => 'f',
            NodeState::Healthy => 'h',
            NodeState::Unhealthy => 'u',
            NodeState::Reverted => 'r',
            NodeState::Gone => 'g',
        }
    }

    fn state(letter: char) -> Option<NodeState> {
        [
            NodeState::Pending,
            NodeState::Installed,
            NodeState::InstallFailed,
            NodeState::Healthy,
            NodeState::Unhealthy,
            NodeState::Reverted,
            NodeState::Gone,
        ]
        .into_iter()
        .find(|s| self::letter(*s) == letter)
    }

    #[derive(Serialize)]
    struct Written<'a> {
        names: Vec<&'a str>,
        states: String,
    }

    #[derive(Deserialize)]
    struct Read {
        names: Vec<String>,
        states: String,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Compact(Read),
        Objects(Vec<Node>),
    }

    pub fn serialize<S: Serializer>(nodes: &[Node], s: S) -> Result<S::Ok, S::Error> {
        Written {
            names: nodes.iter().map(|n| n.name.as_str()).collect(),
            states: nodes.iter().map(|n| letter(n.state)).collect(),
        }
        .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Node>, D::Error> {
        let read = match Either::deserialize(d)? {
            Either::Objects(nodes) => return Ok(nodes),
            Either::Compact(read) => read,
        };
        let states: Vec<char> = read.states.chars().collect();
        if states.len() != read.names.len() {
            return Err(serde::de::Error::custom(format!(
                "{} node names but {} states",
                read.names.len(),
                states.len()
            )));
        }
        read.names
            .into_iter()
            .zip(states)
            .map(|(name, c)| match state(c) {
                Some(state) => Ok(Node { name, state }),
                None => Err(serde::de::Error::custom(format!("node state {c:?}"))),
            })
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// Ask the gate; `since` the first pending answer, `tries` asks after it.
    Verify {
        since: Option<DateTime<Utc>>,
        tries: u32,
    },
    Lock,
    Inspect,
    Resolve,
    /// A sync asks every node which version it runs.
    Probe,
    Install,
    /// Restart the batch's nodes together, each waiting on the node for its service to
    /// pass the health check (see `CommandKind::Restart`).
    Restart {
        batch: Batch,
    },
    /// Watch the first batch (the canary) for `bake_seconds`, then check it once more.
    Bake {
        batch: Batch,
    },
    /// Read the checks every `check_interval_seconds` through the stage's time (the
    /// bake, the watch; none after a batch), then until each has data or
    /// `check_wait_seconds` more have passed. `waited`: ms of waits so far; `batch`: the
    /// batch just restarted (none while watching).
    Checks {
        stage: Stage,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<Batch>,
        waited: u64,
        /// What the stage's canary-versus-baseline analysis has added up.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tally: Option<Tally>,
        /// This reading's node checks read so far, each through the fleet, before the
        /// others are read through the `Checks` port.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        on_nodes: Vec<(String, Reading)>,
    },
    /// Put the previous version back on disk wherever the new one was installed; then
    /// restart, in order and in the same batches, the nodes this deploy restarted.
    Revert {
        to: Version,
        reason: String,
    },
    RevertRestart {
        to: Version,
        batch: Batch,
        reason: String,
    },
    Record,
    Unlock,
    Done,
}

/// A faulty mark to write: `version` was rolled back from after it served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    pub version: Version,
    pub reason: String,
}

/// Nodes restarted together: the `number`th batch (from 0) of a rollout or a rollback,
/// as indices into the deploy's nodes, in node order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub number: usize,
    /// As runs, "0-1999,2001-2400": a batch of a large fleet is thousands of nodes, mostly
    /// in a row, and travels in the execution's state.
    #[serde(with = "index_runs")]
    pub nodes: Vec<usize>,
}

/// Indices as runs of consecutive ones ("3,5-9"); the plain list still reads.
pub(super) mod index_runs {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(indices: &[usize], s: S) -> Result<S::Ok, S::Error> {
        let mut runs: Vec<(usize, usize)> = vec![];
        for &i in indices {
            match runs.last_mut() {
                Some((_, end)) if i == *end + 1 => *end = i,
                _ => runs.push((i, i)),
            }
        }
        let text: Vec<String> = runs
            .iter()
            .map(|&(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        s.serialize_str(&text.join(","))
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        Runs(String),
        List(Vec<usize>),
    }

    const MAX_RUN: usize = 1_000_000;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<usize>, D::Error> {
        let text = match Either::deserialize(d)? {
            Either::List(list) => return Ok(list),
            Either::Runs(text) => text,
        };
        let bad = |part: &str| serde::de::Error::custom(format!("not a run of indices: {part:?}"));
        let mut out = vec![];
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let (a, b): (usize, usize) = (
                a.parse().map_err(|_| bad(part))?,
                b.parse().map_err(|_| bad(part))?,
            );
            // A batch is at most a fleet: a run past that is no state shipit wrote.
            if b < a || b - a >= MAX_RUN {
                return Err(bad(part));
            }
            out.extend(a..=b);
        }
        Ok(out)
    }
}

/// When (ms after its send) the next restart (with the node's wait for health) and the
/// next single health check of this deploy are first worth a look (see
/// `next_first_look`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Took {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<u64>,
}

impl Took {
    pub fn is_empty(&self) -> bool {
        *self == Took::default()
    }

    pub(super) fn of(&mut self, kind: CommandKind) -> Option<&mut Option<u64>> {
        match kind {
            CommandKind::Restart => Some(&mut self.restart),
            CommandKind::Health => Some(&mut self.health),
            // An install runs once a deploy, a version probe too: nothing to learn from. A
            // node check is the operator's own command, each its own time.
            CommandKind::Install | CommandKind::Version | CommandKind::Check => None,
        }
    }
}
