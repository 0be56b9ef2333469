//! The safety simulation, in the spirit of FoundationDB's: the real engine, the real
//! deploy-step driver (`Stepper`, with the shared `Driver`) and the real SSM fleet
//! (`SsmFleet`: its sends, lookups and polls) run many deploys at once against in-memory
//! twins of the ledger (using the same lock decision as SQLite and Parameter Store) and
//! of Run Command (ListCommands lagging its sends, nodes keeping a record of each key),
//! in virtual time, with faults injected: drivers that
//! crash mid-step and replay it, drivers that stall past their lease, duplicate
//! deliveries, failing installs and health checks, chat locks, unlocks and aborts, calls
//! that fail (before or after they took effect: a lost answer) until the state machine's
//! Retry gives up and its Catch winds the deploy down, nodes terminated mid-rollout and
//! new ones joining (with the sync job that brings them to the live version), and
//! staging's successes promoted to production through its approvals and only while
//! staging's check is not red (the promotions queued on a twin of SQS FIFO's
//! deduplication), an SSM Change Calendar that closes beside b/prod's own windows and
//! freezes, and metric checks (b/prod's, a/staging's), which fail for a version that
//! serves badly, go red fleet-wide for a while, or go dark (no data).
//!
//! Jobs take the lock in queue order through the same `Turn` port the Step Functions
//! driver uses (a twin of the dispatcher's tickets), and chat cancels waiting jobs as
//! `SsmTurn` does: one create of the job's claim decides between its start and a cancel.
//! The dispatcher's calls (the ticket, then StartExecution) fail like any other, before
//! or after taking effect; SQS then delivers the message again, holding back the rest
//! of its FIFO group meanwhile.
//!
//! A schedule is a list of events generated from a seed, so that a failure can be
//! replayed and shrunk: the failing seed is printed with the shortest sub-list of its
//! events that still fails. After every event the invariants below are checked.
//!
//! Reads of history and marks may lag their writes, as Parameter Store's may (see
//! `Written`), for a few reads and at most `LAG_MS`.
//!
//! `SHIPIT_SIM_SEEDS=N cargo test --lib sim -- --nocapture` runs N schedules (CI runs
//! `CI_SEEDS`).

use crate::deploy::approval::{Approval, Standing};
use crate::deploy::promotion;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};

use super::step::{StepInput, StepState, Stepper};
use super::{Driver, Outbound};
use crate::aws::fleet::{InvalidInstances, RunCommand, SendRequest, SsmFleet, Status};
use crate::config::Config;
use crate::deploy::command::{
    Command, CommandKind, NodeResult, LATE, REFUSED, REFUSED_EXIT, UNHEALTHY,
};
use crate::deploy::engine::{Deploy, Notice, Verdict};
use crate::deploy::history::{
    faulty_mark, fit, rollback_target, Faulty, HistoryEntry, MARKS_MAX_BYTES,
};
use crate::deploy::job::{DeployJob, JobId, Source};
use crate::deploy::lock::{take, LockInfo, Renewal, Unlocked, Written, DELIVERY_TIMEOUT_SECONDS};
use crate::deploy::ports::{
    Enqueued, Gate, HeldBack, JobQueue, Ledger, Notify, NotifyMemo, PortError, Throttled, Turn,
};
use crate::deploy::status::JobStatus;
use crate::deploy::version::Version;

/// Schedules run in CI: about two minutes on this 2-core machine in a debug build.
const CI_SEEDS: u64 = 10_000;
const EVENTS: usize = 100;
const TARGETS: [(&str, &str); 3] = [("a", "prod"), ("b", "prod"), ("a", "staging")];
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const VERSIONS: [&str; 5] = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "2.0.0"];

fn config() -> Arc<Config> {
    // App b restarts in batches with one failure allowed, so that the invariants hold
    // for both ways of rolling out.
    let app = |name: &str, batches: &str, calendar: &str| {
        format!(
            r#"
[apps.{name}]
package = "{name}-app"
default_env = "prod"
install = "sim-install {{version}}"
restart = "sim-restart {{version}}"
health = "sim-health {{version}}"
version = "sim-version"
[apps.{name}.rollout]
health_timeout_seconds = 3
health_interval_seconds = 1
lock_wait_seconds = 900
command_timeout_seconds = 60
{batches}
[apps.{name}.environments.prod]
ssm_tags = {{ "shipit:app" = "{name}", "shipit:env" = "prod" }}
{calendar}
"#
        )
    };
    // b/prod takes deploys only in its windows and outside its freeze (t0 is a Friday,
    // 08:00 UTC): closed from 08:20 to 08:50 and from 09:30 to 09:45; U1 may override.
    // Its SSM Change Calendar closes at random too (`Event::CloseChanges`).
    let calendar = r#"time_zone = "UTC"
windows = ["Fri 00:00-09:30", "Fri 09:45-24:00", "Sat-Thu 00:00-24:00"]
freezes = [{ from = "2027-01-15T08:20", until = "2027-01-15T08:50", reason = "sim" }]
freeze_overriders = ["U1"]
change_calendar = "b-changes""#;
    // a/prod needs one approval, from U1 or U2 (U1 asks for every chat deploy, so only
    // U2's counts for those); one of a version carries over for 10 minutes; three hours
    // without, a job is skipped (a `Run` alone moves the clock up to 40 looks on).
    let approvals =
        r#"approvals = { approvers = ["U1", "U2"], grace_seconds = 600, timeout_seconds = 10800 }"#;
    // a/staging promotes what goes live there to a/prod five minutes later, through
    // a/prod's approvals, unless its fleet-wide check reads red then.
    let staging = r#"
[apps.a.environments.staging]
ssm_tags = { "shipit:app" = "a", "shipit:env" = "staging" }
promote = { to = "prod", after_seconds = 300 }
[[apps.a.environments.staging.checks]]
name = "errors"
prometheus = "http://127.0.0.1:9"
query = "sum(rate(errors[1m]))"
condition = "< 1"
"#;
    // b/prod reads two checks (see `SimChecks`) and one on its nodes (a sick node or a
    // bad version fails it): after each batch, and for 30 s after the last node.
    let checks = r#"
[[apps.b.checks]]
name = "errors"
prometheus = "http://127.0.0.1:9"
query = "sum(rate(errors{version={version}}[1m]))"
condition = "< 1"
[[apps.b.checks]]
name = "latency"
prometheus = "http://127.0.0.1:9"
query = "max(latency{version={version}})"
condition = "< 0.5"
no_data = "pass"
[[apps.b.checks]]
name = "disk"
check = "sim-check {version}"
no_data = "pass"
"#;
    let text = format!(
        "[server]\nstate = \"sim.db\"\n{}{staging}{}{checks}",
        app("a", "", approvals),
        app(
            "b",
            "batches = [1, 2]\nmax_failed = 1\nwatch_seconds = 30\ncheck_interval_seconds = 10\ncheck_wait_seconds = 20",
            calendar
        )
    );
    Arc::new(
        Config::parse(&text, std::path::Path::new("sim.toml")).unwrap_or_else(|r| panic!("{r}")),
    )
}

/// The simulation's time, as the drivers read it.
fn virtual_clock(now: &Arc<AtomicI64>) -> crate::aws::fleet::Clock {
    let now = now.clone();
    Arc::new(move || t0() + chrono::Duration::milliseconds(now.load(Ordering::SeqCst)))
}

/// A small deterministic generator (xorshift64*): the same seed, the same schedule.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
enum JobKind {
    Tag,
    Upload,
    Chat,
    Rollback,
}

#[derive(Debug, Clone)]
enum Event {
    /// A trigger queues a job (a rollback is computed from history as chat does).
    Queue {
        target: usize,
        kind: JobKind,
        version: usize,
    },
    /// The queue delivers an already-queued job again.
    Redeliver(usize),
    /// One step of the k-th execution that may run now: actions until it must wait.
    Step(usize),
    /// The same, but its driver dies after the `n`-th action, before the state machine
    /// saved the state: that action is replayed from the state before it.
    Crash(usize, usize),
    /// The k-th unfinished execution runs alone for a while: the clock moves to each of
    /// its waits' ends (the other executions stall meanwhile).
    Run(usize),
    /// Virtual time passes (drivers not stepped meanwhile have stalled).
    Advance(i64),
    Lock(usize),
    Unlock(usize),
    Abort(usize),
    /// A node's installs fail from now on (until faults stop).
    BreakInstall {
        target: usize,
        node: usize,
    },
    /// A node fails its health checks, whatever it serves (until faults stop).
    Sicken {
        target: usize,
        node: usize,
    },
    /// The next command to a node is held back until `DeliverLate`.
    Delay,
    /// The next `n` calls to the fleet and lock renewals are refused for the account's
    /// request rate, as AWS throttles them.
    Throttle(u32),
    /// Held commands reach their nodes now.
    DeliverLate,
    /// The next `n` calls to the fleet and ledger fail; `lost`: after taking effect (the
    /// answer was lost on its way back).
    FailCalls {
        n: u32,
        lost: bool,
    },
    /// A node is terminated: it answers nothing more, and resolving no longer finds it.
    Terminate {
        target: usize,
        node: usize,
    },
    /// A terminated node comes back as a new instance (nothing installed), and a sync job
    /// is queued for it, as the node-joined event does.
    Join {
        target: usize,
        node: usize,
    },
    /// The next write to a target's history or faulty marks is not seen by the `n` reads
    /// after it (eventual consistency: they answer what was there before), for at most
    /// `LAG_MS`.
    LagReads(u32),
    /// Chat cancels the k-th job delivered, whatever it is doing (`SsmTurn::cancel`).
    Cancel(usize),
    /// A person's word (approve or reject) on the k-th job queued that needs approval and
    /// has not ended, as chat keeps it.
    Word {
        k: usize,
        by: usize,
        approve: bool,
    },
    /// The next command sent is missing from the next `n` ListCommands reads (eventual
    /// consistency): a step replayed then sends it again.
    LagList(u32),
    /// b/prod's SSM Change Calendar closes for this many ms from now (its reads fail
    /// like any call).
    CloseChanges(i64),
    /// The next SendCommand request reaches SSM this many ms after it was made (a slow
    /// network), its sender having waited for the answer until the SDK gave up. AWS refuses a request signed
    /// more than five minutes before it arrives (Signature Version 4), so at most that.
    SlowSend(i64),
    /// b/prod's metrics answer no data for this many ms (the metrics source is down).
    Dark(i64),
    /// b/prod's `errors` check fails for this many ms whatever is deployed (an incident).
    Red(i64),
}

/// How long a read may lag a write. AWS names no bound; the ledger relies on one well
/// below a lease (a lock taken over from a holder that stopped renewing inherits only
/// what that holder inherited, not what it wrote since: see `SsmLedger`'s lock).
const LAG_MS: i64 = 60_000;

/// How long an AWS call may take in all before the SDK gives up (`aws::call_timeouts`),
/// and the state machine's first Retry interval (infra/statemachine/deploy.asl.json).
const CALL_TIMEOUT_MS: i64 = 60_000;
const STEP_RETRY_MS: i64 = 2_000;

/// How many times a read is made before a lagging one fails: `SsmLedger::read_at_least`
/// asks again for about five seconds.
const READS_BEFORE_GIVING_UP: u32 = 8;

fn schedule(seed: u64) -> Vec<Event> {
    let mut rng = Rng::new(seed);
    // Join has two of these: a sync needs a node terminated and one joining.
    let kinds = 11;
    (0..EVENTS)
        .map(|_| {
            let target = rng.below(TARGETS.len() as u64) as usize;
            match rng.below(100) {
                0..=11 => Event::Queue {
                    target,
                    kind: [JobKind::Tag, JobKind::Upload, JobKind::Chat][rng.below(3) as usize],
                    version: rng.below(VERSIONS.len() as u64) as usize,
                },
                12..=14 => Event::Queue {
                    target,
                    kind: JobKind::Rollback,
                    version: 0,
                },
                15 => Event::Redeliver(rng.below(8) as usize),
                16 => Event::Cancel(rng.below(8) as usize),
                17..=22 => Event::Word {
                    k: rng.below(8) as usize,
                    by: rng.below(2) as usize,
                    approve: rng.below(10) > 0,
                },
                23..=47 => Event::Step(rng.below(8) as usize),
                48..=62 => Event::Run(rng.below(8) as usize),
                63..=67 => Event::Crash(rng.below(8) as usize, rng.below(6) as usize),
                68..=81 => Event::Advance(match rng.below(10) {
                    0 => 200_000 + rng.below(200_000) as i64, // past a lease
                    _ => 500 + rng.below(20_000) as i64,
                }),
                82..=85 => Event::Lock(target),
                86..=89 => Event::Unlock(target),
                90..=94 => Event::Abort(target),
                95 => Event::Delay,
                96 => Event::Throttle(1 + rng.below(4) as u32),
                97 => match rng.below(kinds) {
                    0 => Event::DeliverLate,
                    4 => Event::LagReads(1 + rng.below(3) as u32),
                    5 => Event::LagList(1 + rng.below(3) as u32),
                    7 => Event::CloseChanges(1 + rng.below(1_200_000) as i64),
                    6 => Event::SlowSend(1 + rng.below(300_000) as i64),
                    8 => Event::Dark(1 + rng.below(120_000) as i64),
                    9 => Event::Red(1 + rng.below(600_000) as i64),
                    1 => Event::FailCalls {
                        // At most 5: three failed tries of a step, two of its Abort.
                        n: 1 + rng.below(5) as u32,
                        lost: rng.below(2) == 0,
                    },
                    2 => Event::Terminate {
                        target,
                        node: rng.below(NODES.len() as u64) as usize,
                    },
                    _ => Event::Join {
                        target,
                        node: rng.below(NODES.len() as u64) as usize,
                    },
                },
                98 => Event::BreakInstall {
                    target,
                    node: rng.below(NODES.len() as u64) as usize,
                },
                _ => Event::Sicken {
                    target,
                    node: rng.below(NODES.len() as u64) as usize,
                },
            }
        })
        .collect()
}

#[derive(Default)]
struct Node {
    fence: u64,
    installed: Option<Version>,
    serving: Option<Version>,
    /// The job whose restart put `serving` there.
    served_by: Option<JobId>,
    broken_install: bool,
    sick: bool,
    /// Terminated: resolving skips it, a send naming it is refused (InvalidInstanceId),
    /// and one held back for it is never delivered (DeliveryTimedOut).
    gone: bool,
    /// When (ms) this instance joined under the name of a terminated one.
    joined_at: Option<i64>,
}

/// A command started on a node: when it ends and what it answers then.
struct Run {
    job: JobId,
    end: i64,
    result: NodeResult,
}

/// What reads of history and marks still answer after a lagging write (with its
/// versions), for how many more reads, and until when (ms).
type Stale = (Vec<HistoryEntry>, Vec<Faulty>, Written, u32, i64);

#[derive(Default)]
struct Target {
    nodes: BTreeMap<String, Node>,
    history: Vec<HistoryEntry>,
    faulty: Vec<Faulty>,
    lock: Option<LockInfo>,
    last_generation: u64,
    /// Command key → node → its run.
    runs: HashMap<String, BTreeMap<String, Run>>,
    stale: Option<Stale>,
    /// The versions of history and marks, one more at each write.
    versions: Written,
    /// What the last released lock handed on.
    handed: Written,
    /// People's words on its jobs (see `approval`).
    words: Vec<Approval>,
    /// When (ms) each job went live here, and the versions marked faulty after each
    /// write of the marks, for (xvii).
    live_log: Vec<(i64, JobId)>,
    marks_log: Vec<(i64, Vec<Version>)>,
}

/// Everything the twins share, and the invariants' bookkeeping.
struct World {
    now: Arc<AtomicI64>,
    config: Arc<Config>,
    /// Jobs their calendar held back at some step.
    held_jobs: BTreeSet<JobId>,
    /// Jobs needing approval that a read of the words, as a driver made it, showed
    /// approved (see `SimLedger::approvals`).
    approved: BTreeSet<JobId>,
    targets: BTreeMap<(String, String), Target>,
    /// A version whose health check fails everywhere (a bad build).
    bad: Version,
    faults: bool,
    /// Job → node → forward restarts it ran there.
    restarts: HashMap<(JobId, String), u32>,
    violations: Vec<String>,
    stats: Stats,
    /// The next command sent is held back (see `SimRunCommand`).
    delay_next: bool,
    /// How many calls are still to be throttled.
    throttle_next: u32,
    held: Vec<Held>,
    /// Per app+env, the jobs in the order they were queued (SQS's FIFO group).
    fifo: BTreeMap<(String, String), Vec<JobId>>,
    /// Per app+env, the dispatcher's tickets, in queue order (see `SsmTurn`).
    tickets: BTreeMap<(String, String), Vec<JobId>>,
    /// The jobs whose execution the dispatcher started, and those whose execution ended.
    executing: BTreeSet<JobId>,
    ended: BTreeSet<JobId>,
    /// Calls still to fail, and whether after taking effect.
    fail_next: u32,
    /// The next write to history or marks lags this many reads (`Event::LagReads`).
    lag_next: u32,
    lose_next: u32,
    /// Jobs whose release of the lock failed: the lease frees it.
    unreleased: BTreeSet<JobId>,
    /// Every job delivered, by id.
    jobs: HashMap<JobId, DeployJob>,
    /// Each job's claim: `Some(by)` cancelled, `None` started (see `SsmTurn`).
    claims: HashMap<JobId, Option<String>>,
    /// The jobs chat said would not run.
    cancelled: BTreeSet<JobId>,
    /// Every SendCommand, by command id (its index).
    sent: Vec<SentCommand>,
    /// The next command sent is missing from this many ListCommands reads.
    list_lag_next: u32,
    /// The next SendCommand arrives this many ms late (`Event::SlowSend`).
    slow_next: Option<i64>,
    /// SendCommand requests on their way: when they reach SSM.
    in_flight: Vec<(i64, SendRequest)>,
    /// The step under way hung this long in a call (see `SimRunCommand::send`).
    hung: Option<i64>,
    /// The command just started was refused for reaching its node too late.
    refused_late: bool,
    /// Promotions a driver queued (see `SimQueue`), for the simulation to deliver, and
    /// when (ms) each job id was last sent, for SQS FIFO's deduplication.
    promotions: Vec<DeployJob>,
    promotion_sent: HashMap<JobId, i64>,
    /// Until when (ms) b/prod's change calendar is closed; jobs a step saw it hold back.
    changes_closed_until: Option<i64>,
    change_held: BTreeSet<JobId>,
    /// A version that passes its health checks but fails b/prod's `errors` check while
    /// it serves there; until when (ms) the checks have no data, and `errors` fails.
    serves_badly: Version,
    dark_until: Option<i64>,
    red_until: Option<i64>,
    /// Per job, its last reading of its checks (when, and whether `errors` passed), and
    /// when its last forward restart ended, for (xviii).
    last_reading: HashMap<JobId, (i64, bool)>,
    restarted_until: HashMap<JobId, i64>,
}

/// What the schedules exercised, printed at the end so a reader sees the simulation is
/// not vacuous.
#[derive(Debug, Default, Clone)]
struct Stats {
    schedules: u64,
    jobs: u64,
    outcomes: BTreeMap<String, u64>,
    commands: u64,
    fenced: u64,
    lost_locks: u64,
    takeovers: u64,
    rollbacks_queued: u64,
    rollbacks_recorded: u64,
    faulty_marked: u64,
    /// Deploys that succeeded within their failure budget, a node left unhealthy.
    left_unhealthy: u64,
    /// Calls refused as throttled.
    throttled: u64,
    /// Calls failed, before or after taking effect.
    failed_calls: u64,
    /// Steps that failed past the state machine's Retry: its Catch wound the deploy down.
    caught: u64,
    /// Sends refused for naming a terminated node, and commands started on one.
    gone: u64,
    /// Parts sent with less than their command's time (sent late: see `SsmFleet`).
    shortened: u64,
    /// Sync jobs queued for joined nodes.
    syncs: u64,
    /// Reads of history or marks that answered what was there before a write.
    stale_reads: u64,
    /// Jobs chat cancelled before they started.
    cancelled: u64,
    /// Lookups of a sent command that ListCommands did not show yet.
    missed_lookups: u64,
    /// Sends of a key to a node that had run it already (its run record answered).
    sent_again: u64,
    /// SendCommand requests that reached SSM after their sender gave up on them.
    slow_sends: u64,
    /// Commands their nodes refused for reaching them after they had to start.
    late: u64,
    /// Messages the dispatcher failed to handle (its ticket or execution call failed),
    /// delivered again later.
    undispatched: u64,
    /// Automatic jobs their calendar held back a while, and people's deploys it refused.
    held_back: u64,
    refused: u64,
    /// Words given; jobs approved, and of those by words on another deploy of the version.
    words: u64,
    approved: u64,
    carried: u64,
    /// Automatic jobs b/prod's change calendar held back a while.
    change_held: u64,
    /// Promotions queued (once per job id), and those that went live.
    promotions: u64,
    promoted: u64,
    /// Readings of b/prod's checks, and those in which `errors` failed or had no data.
    checks_read: u64,
    checks_failed: u64,
    checks_dark: u64,
    /// Node check commands run on a node, and those that failed there.
    node_checks: u64,
    node_checks_failed: u64,
    reasons: BTreeMap<String, u64>,
}

impl World {
    /// A call's turn at the rate: refused while `Throttle` says so.
    fn call(&mut self) -> Result<(), PortError> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            self.stats.failed_calls += 1;
            return Err("InternalServerError: the call failed".into());
        }
        if self.throttle_next == 0 {
            return Ok(());
        }
        self.throttle_next -= 1;
        self.stats.throttled += 1;
        Err(Box::new(Throttled(
            "ThrottlingException: Rate exceeded".into(),
        )))
    }

    /// The answer of a call that took effect: lost while `FailCalls` says so.
    fn answer(&mut self) -> Result<(), PortError> {
        if self.lose_next == 0 {
            return Ok(());
        }
        self.lose_next -= 1;
        self.stats.failed_calls += 1;
        Err("connection reset: the answer was lost".into())
    }

    fn now(&self) -> DateTime<Utc> {
        t0() + chrono::Duration::milliseconds(self.now.load(Ordering::SeqCst))
    }

    /// Whether job `id` keeps no place in its queue now, as the driver's turn sees it:
    /// its calendar holds it back, it is a promotion not due, or it waits for approval.
    fn held(&self, id: &JobId) -> bool {
        let Some(job) = self.jobs.get(id) else {
            return false;
        };
        let now = self.now();
        self.config.held_back(job, now).is_some()
            || self.change_closed(job)
            || promotion::not_due(job, now)
            || self.config.approvals_for(job).is_some_and(|rules| {
                let since = rules.words_since(now);
                let t = &self.targets[&(job.app.clone(), job.env.clone())];
                let words: Vec<Approval> =
                    t.words.iter().filter(|w| w.at >= since).cloned().collect();
                !matches!(rules.standing(job, &words, now), Standing::Approved { .. })
            })
    }

    /// Whether `job`'s environment's change calendar holds it back now.
    fn change_closed(&self, job: &DeployJob) -> bool {
        let Ok((_, env)) = self.config.target(job) else {
            return false;
        };
        let now = self.now.load(Ordering::SeqCst);
        env.change_calendar.is_some()
            && !env.exempt(job)
            && self.changes_closed_until.is_some_and(|until| now < until)
    }

    /// (xvii) Why promotion `job` must not take its lock now, if it must not: a promotion
    /// goes only once due, and only if what it promotes was live where it comes from, and
    /// its version not marked faulty there, as a read may see them (up to `LAG_MS` old).
    fn wrong_promotion(&self, job: &DeployJob) -> Option<String> {
        let Source::Promotion {
            from_env,
            from_job,
            due_at,
        } = &job.source
        else {
            return None;
        };
        if self.now() < *due_at {
            return Some(format!("before it was due at {due_at}"));
        }
        let t = &self.targets[&(job.app.clone(), from_env.clone())];
        let since = self.now.load(Ordering::SeqCst) - LAG_MS;
        let live_then = t.live_log.iter().rfind(|e| e.0 <= since).map(|(_, j)| j);
        let mut live_since = t.live_log.iter().filter(|e| e.0 > since).map(|(_, j)| j);
        if live_then != Some(from_job) && !live_since.any(|j| j == from_job) {
            return Some(format!("though job {from_job} was not live on {from_env}"));
        }
        // Marked in every state a read may have answered: the one at `since` and each after.
        let marked =
            |(_, marks): &(i64, Vec<Version>)| marks.iter().any(|v| v.same_as(&job.version));
        let then = t.marks_log.iter().rfind(|e| e.0 <= since);
        let always =
            then.is_some_and(marked) && t.marks_log.iter().filter(|e| e.0 > since).all(marked);
        if always {
            return Some(format!(
                "though {} was marked faulty on {from_env}",
                job.version
            ));
        }
        // And only on a reading of its source's checks, made once due, that passed.
        let from = DeployJob {
            env: from_env.clone(),
            ..job.clone()
        };
        if self.config.checks_for(&from).is_empty() {
            return None;
        }
        let due = (*due_at - t0()).num_milliseconds();
        match self.last_reading.get(&job.id) {
            Some((at, true)) if *at >= due => None,
            last => Some(format!(
                "without a passing reading of {from_env}'s checks once due (last: {last:?})"
            )),
        }
    }

    /// Before a write to app+env's history or marks: if a lag is due, reads go on
    /// answering what is there now for a while.
    fn lag_write(&mut self, app: &str, env: &str) {
        let lag = std::mem::take(&mut self.lag_next);
        let until = self.now.load(Ordering::SeqCst) + LAG_MS;
        let t = self.target(app, env);
        if lag > 0 {
            t.stale = Some((t.history.clone(), t.faulty.clone(), t.versions, lag, until));
        }
    }

    /// App+env's history and marks as a read sees them, with their versions.
    fn read(&mut self, app: &str, env: &str) -> (Vec<HistoryEntry>, Vec<Faulty>, Written) {
        let now = self.now.load(Ordering::SeqCst);
        let t = self.target(app, env);
        let seen = match &mut t.stale {
            Some((history, faulty, versions, left, until)) if *left > 0 && now < *until => {
                *left -= 1;
                Some((history.clone(), faulty.clone(), *versions))
            }
            _ => None,
        };
        match seen {
            Some(seen) => {
                self.stats.stale_reads += 1;
                seen
            }
            None => {
                t.stale = None;
                (t.history.clone(), t.faulty.clone(), t.versions)
            }
        }
    }

    /// `read`, made again while it answers older than `seen`, as the Parameter Store
    /// ledger does: an error after `READS_BEFORE_GIVING_UP` reads.
    fn read_at_least(
        &mut self,
        app: &str,
        env: &str,
        seen: Written,
    ) -> Result<(Vec<HistoryEntry>, Vec<Faulty>, Written), PortError> {
        for _ in 0..READS_BEFORE_GIVING_UP {
            let read = self.read(app, env);
            if read.2.live >= seen.live && read.2.faulty >= seen.faulty {
                return Ok(read);
            }
        }
        Err("Parameter Store still answers an older version: try again".into())
    }
    fn target(&mut self, app: &str, env: &str) -> &mut Target {
        self.targets
            .get_mut(&(app.to_string(), env.to_string()))
            .expect("a simulated target")
    }
}

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).unwrap()
}

type Shared = Arc<Mutex<World>>;

struct SimLedger(Shared);

#[async_trait]
impl Ledger for SimLedger {
    async fn record(&self, entry: &HistoryEntry, seen: Written) -> Result<Written, PortError> {
        let job = &entry.job;
        let mut w = self.0.lock().unwrap();
        w.call()?;
        // (xii) What Parameter Store keeps fits a standard parameter.
        let size = serde_json::to_string(entry)?.len();
        if size > 4096 {
            w.violations.push(format!(
                "(xii) the history entry of job {} is {size} bytes, past 4 KB",
                job.id
            ));
        }
        // As `SsmLedger::record`: what it reads to decide may lag, down to `seen`.
        let (history, marks, versions) = w.read_at_least(&job.app, &job.env, seen)?;
        if history.first().is_some_and(|e| e.job.id == job.id) {
            w.answer()?;
            return Ok(versions.max(seen));
        }
        w.lag_write(&job.app, &job.env);
        // (xviii) A job of an environment with checks goes live only after a reading in
        // which they passed, taken after its last restart ended (a rollback and a sync
        // read none).
        let reads = !w.config.checks_for(job).is_empty()
            && !matches!(job.source, Source::Rollback { .. } | Source::Sync { .. });
        if reads {
            let last = w.last_reading.get(&job.id).copied();
            let restarted = w.restarted_until.get(&job.id).copied().unwrap_or(0);
            if !last.is_some_and(|(at, passed)| passed && at >= restarted) {
                w.violations.push(format!(
                    "(xviii) job {} went live on {}/{} without its checks passing after its last restart (last reading {last:?}, restarts until {restarted})",
                    job.id, job.app, job.env
                ));
            }
        }
        let at = w.now.load(Ordering::SeqCst);
        let t = w.target(&job.app, &job.env);
        let live = t.history.first().map(|e| e.job.version.clone());
        let faulty = faulty_mark(&t.faulty, &job.version).is_some();
        let mut broken = vec![];
        // (iv) An automatic job never lowers the live version.
        if let (true, Some(live)) = (job.source.is_automatic(), &live) {
            if live.is_newer_than(&job.version) {
                broken.push(format!(
                    "(iv) automatic job {} lowered {}/{} from {live} to {}",
                    job.id, job.app, job.env, job.version
                ));
            }
        }
        // (v) Neither a rollback nor an automatic job lands on a faulty version.
        if (matches!(job.source, Source::Rollback { .. }) || job.source.is_automatic()) && faulty {
            broken.push(format!(
                "(v) job {} ({:?}) landed on faulty {}",
                job.id, job.source, job.version
            ));
        }
        t.history.insert(0, entry.clone());
        t.versions.live += 1;
        t.live_log.push((at, job.id.clone()));
        if let Some(cleared) = &entry.cleared {
            // The list as read, written back without the mark: a read older than the
            // last write would lose the marks it missed.
            let mut kept = marks;
            let before = kept.len();
            kept.retain(|f| !f.version.same_as(&cleared.version));
            if kept.len() != before {
                t.faulty = kept;
                t.versions.faulty += 1;
                t.marks_log
                    .push((at, t.faulty.iter().map(|f| f.version.clone()).collect()));
            }
        }
        let written = t.versions.max(seen);
        w.violations.extend(broken);
        if matches!(job.source, Source::Rollback { .. }) {
            w.stats.rollbacks_recorded += 1;
        }
        w.answer()?;
        Ok(written)
    }

    async fn history(
        &self,
        app: &str,
        env: &str,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, PortError> {
        let mut w = self.0.lock().unwrap();
        Ok(w.read(app, env).0.into_iter().take(limit).collect())
    }

    async fn mark_faulty(
        &self,
        app: &str,
        env: &str,
        mark: &Faulty,
        seen: Written,
    ) -> Result<Written, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        // (x) Only a version that served is marked: by the deploy that restarted a node
        // onto it, or by a rollback replacing it. Installs that failed, nodes that went
        // away, aborts and wound-down deploys mark nothing.
        let by = w.jobs.get(&mark.job).cloned();
        let restarted = w
            .restarts
            .iter()
            .any(|((j, _), n)| *j == mark.job && *n > 0);
        let served = match &by {
            Some(job) if job.version.same_as(&mark.version) => restarted,
            Some(job) => matches!(job.source, Source::Rollback { .. }),
            None => false,
        };
        if !served {
            w.violations.push(format!(
                "(x) job {} marked {} faulty without it having served",
                mark.job, mark.version
            ));
        }
        // As `SsmLedger::mark_faulty`: the list read (down to `seen`), the mark added.
        let (_, mut marks, versions) = w.read_at_least(app, env, seen)?;
        if faulty_mark(&marks, &mark.version).is_some() {
            w.answer()?;
            return Ok(versions.max(seen));
        }
        w.lag_write(app, env);
        marks.insert(0, mark.clone());
        let (value, _) = fit(&mut marks, MARKS_MAX_BYTES);
        if value.len() > MARKS_MAX_BYTES {
            w.violations.push(format!(
                "(xii) the faulty list of {app}/{env} is {} bytes, past 4 KB",
                value.len()
            ));
        }
        let at = w.now.load(Ordering::SeqCst);
        let t = w.target(app, env);
        t.faulty = marks;
        t.versions.faulty += 1;
        t.marks_log
            .push((at, t.faulty.iter().map(|f| f.version.clone()).collect()));
        let written = t.versions.max(seen);
        w.stats.faulty_marked += 1;
        w.answer()?;
        Ok(written)
    }

    async fn faulty(&self, app: &str, env: &str) -> Result<Vec<Faulty>, PortError> {
        Ok(self.0.lock().unwrap().read(app, env).1)
    }

    async fn approve(&self, app: &str, env: &str, word: &Approval) -> Result<bool, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        let words = &mut w.target(app, env).words;
        let first = !words.iter().any(|o| o.job == word.job && o.by == word.by);
        if first {
            words.push(word.clone());
        }
        w.answer()?;
        Ok(first)
    }

    async fn approvals(
        &self,
        app: &str,
        env: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<Approval>, PortError> {
        let mut guard = self.0.lock().unwrap();
        let w = &mut *guard;
        w.call()?;
        let now = w.now();
        let words: Vec<Approval> = w
            .target(app, env)
            .words
            .iter()
            .filter(|o| o.at >= since)
            .cloned()
            .collect();
        // What a driver may conclude from this read, for (xvi): each job of app+env still
        // waiting that these words approve.
        for job in w.jobs.values().filter(|j| j.app == app && j.env == env) {
            let Some(rules) = w.config.approvals_for(job) else {
                continue;
            };
            if w.ended.contains(&job.id) || w.approved.contains(&job.id) {
                continue;
            }
            if let Standing::Approved { by } = rules.standing(job, &words, now) {
                w.approved.insert(job.id.clone());
                w.stats.approved += 1;
                let own = words.iter().any(|o| o.job == job.id && by.contains(&o.by));
                if !own {
                    w.stats.carried += 1;
                }
            }
        }
        Ok(words)
    }

    async fn inspect(
        &self,
        app: &str,
        env: &str,
        seen: Written,
    ) -> Result<(Option<HistoryEntry>, Vec<Faulty>), PortError> {
        let mut w = self.0.lock().unwrap();
        let (history, marks, _) = w.read_at_least(app, env, seen)?;
        Ok((history.into_iter().next(), marks))
    }

    async fn try_lock(
        &self,
        app: &str,
        env: &str,
        lock: &LockInfo,
        now: DateTime<Utc>,
    ) -> Result<Result<LockInfo, LockInfo>, PortError> {
        let mut guard = self.0.lock().unwrap();
        let w = &mut *guard;
        w.call()?;
        let key = (app.to_string(), env.to_string());
        let queued = w.fifo.get(&key).cloned().unwrap_or_default();
        let held: BTreeSet<&JobId> = queued.iter().filter(|j| w.held(j)).collect();
        let mine_held = lock.job.as_ref().is_some_and(|j| w.held(j));
        let change_closed = lock
            .job
            .as_ref()
            .and_then(|j| w.jobs.get(j))
            .is_some_and(|j| w.change_closed(j));
        let wrong = lock
            .job
            .as_ref()
            .and_then(|j| w.wrong_promotion(w.jobs.get(j)?));
        let t = w.targets.get_mut(&key).expect("a simulated target");
        let decided = take(t.lock.as_ref(), t.last_generation, lock, now);
        if let (Ok(taken), Some(job)) = (&decided, &lock.job) {
            if t.lock.as_ref().and_then(|l| l.job.as_ref()) != Some(job) {
                // (vii) Jobs of one app+env take the lock in the order they were queued,
                // but for those their calendar holds back (they keep no place).
                let mine = queued.iter().position(|j| j == job).unwrap_or(0);
                let waiting = queued[..mine]
                    .iter()
                    .find(|j| !w.ended.contains(j) && !held.contains(j));
                if let Some(waiting) = waiting {
                    w.violations.push(format!(
                        "(vii) job {job} took {app}/{env} (generation {}) before job {waiting}, queued earlier, ended",
                        taken.generation
                    ));
                }
                // (xv) No job starts to change an app+env its calendar holds it back from
                // (outside its windows or in a freeze), unless it is a rollback or a
                // freeze overrider's override.
                let calendar = |j: &DeployJob| w.config.held_back(j, now).is_some();
                if mine_held && w.jobs.get(job).is_some_and(calendar) {
                    w.violations.push(format!(
                        "(xv) job {job} took {app}/{env} while its calendar held it back"
                    ));
                }
                if change_closed {
                    w.violations.push(format!(
                        "(xv) job {job} took {app}/{env} while its change calendar was closed"
                    ));
                }
                // (xvi) No job that needs approval takes the lock unless a read of the
                // words showed it approved (rejected or timed out, it never does).
                let needs = |j: &DeployJob| w.config.approvals_for(j).is_some();
                if w.jobs.get(job).is_some_and(needs) && !w.approved.contains(job) {
                    w.violations.push(format!(
                        "(xvi) job {job} took {app}/{env} without an approval"
                    ));
                }
                if let Some(why) = wrong {
                    w.violations
                        .push(format!("(xvii) job {job} took {app}/{env} {why}"));
                }
            }
        }
        let mut takeover = false;
        let mut decided = decided;
        if let Ok(taken) = &mut decided {
            if taken.generation > t.last_generation {
                // As `SsmLedger`'s lock: what was written under it goes on with it.
                taken.written = t
                    .lock
                    .as_ref()
                    .map_or(t.handed, |l| l.written.max(t.handed));
            }
            takeover = t.lock.as_ref().is_some_and(|l| l.job != taken.job);
            t.last_generation = t.last_generation.max(taken.generation);
            t.lock = Some(taken.clone());
        }
        if takeover {
            w.stats.takeovers += 1;
        }
        w.answer()?;
        Ok(decided)
    }

    async fn renew(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        generation: u64,
        until: DateTime<Utc>,
    ) -> Result<Renewal, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        let t = w.target(app, env);
        let renewal = match &mut t.lock {
            Some(l) if l.held_by(job, generation) => {
                l.expires = Some(until);
                Renewal::Held {
                    abort: l.abort.clone(),
                }
            }
            other => Renewal::Lost {
                holder: other.clone(),
            },
        };
        w.answer()?;
        Ok(renewal)
    }

    async fn release(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        written: Written,
    ) -> Result<(), PortError> {
        let mut w = self.0.lock().unwrap();
        if let Err(e) = w.call() {
            // Its lease frees the lock instead (see `drain`).
            w.unreleased.insert(job.clone());
            return Err(e);
        }
        let now = w.now.load(Ordering::SeqCst);
        let t = w.target(app, env);
        let mut broken = vec![];
        if let Some(l) = t.lock.take_if(|l| l.job.as_ref() == Some(job)) {
            t.handed = t.handed.max(l.written).max(written);
            // (xiv) No command of a job runs once it released its lock.
            for (key, runs) in &t.runs {
                for (node, r) in runs {
                    if &r.job == job && r.end > now && r.end != HELD {
                        broken.push(format!(
                            "(xiv) job {job} released {app}/{env} while {key} runs on {node} until +{} ms",
                            r.end
                        ));
                    }
                }
            }
        }
        w.violations.extend(broken);
        w.answer()
    }

    async fn unlock(
        &self,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Unlocked, PortError> {
        let mut w = self.0.lock().unwrap();
        let t = w.target(app, env);
        Ok(match t.lock.clone() {
            None => Unlocked::NotLocked,
            Some(l) if l.is_running_deploy(now) => Unlocked::Deploying(l),
            Some(l) => {
                t.lock = None;
                t.handed = t.handed.max(l.written);
                Unlocked::Released(l)
            }
        })
    }

    async fn request_abort(
        &self,
        app: &str,
        env: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError> {
        let mut w = self.0.lock().unwrap();
        let t = w.target(app, env);
        Ok(match &mut t.lock {
            Some(l) if l.is_running_deploy(now) => {
                l.abort.get_or_insert_with(|| by.to_string());
                Some(l.clone())
            }
            _ => None,
        })
    }

    async fn lock_state(
        &self,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError> {
        let mut w = self.0.lock().unwrap();
        Ok(w.target(app, env)
            .lock
            .clone()
            .filter(|l| !l.is_expired(now)))
    }
}

/// Run Command in virtual time, under the real `SsmFleet` (the deploy step's fleet): it
/// reads each command's key, kind, version and lock generation from what `SsmFleet`
/// sends (its comment and script, as a node would run it). Nodes: installs take 2–20 s,
/// restarts 2 s and their node's health checks 1 s (3 s more if it never passes), a
/// canary's single check 1 s. A key runs once per node, as the node's run record
/// (`config::command::once`) makes it however often it is sent; a command carrying an
/// older lock generation than the node has seen is refused, as the fence does. As SSM
/// does: a new command is missing from ListCommands for a few reads (`LagList`), a send
/// naming a terminated node is refused whole (InvalidInstanceId), and a command held
/// back (a node unreachable, SSM's queue) reaches its node late, after its deploy may
/// have lost the lock (what the fence is for), or is given up on (DeliveryTimedOut).
struct SimRunCommand(Shared, Arc<Config>);

/// SSM's GetCalendarState on b/prod's change calendar: closed until
/// `changes_closed_until`, failing like any call.
struct SimCalendars(Shared);

#[async_trait]
impl crate::deploy::ports::ChangeCalendars for SimCalendars {
    async fn state(
        &self,
        _name: &str,
        at: DateTime<Utc>,
    ) -> Result<Result<crate::deploy::ports::CalendarState, String>, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        let until = w
            .changes_closed_until
            .map(|ms| t0() + chrono::Duration::milliseconds(ms))
            .filter(|until| at < *until);
        w.answer()?;
        Ok(Ok(crate::deploy::ports::CalendarState {
            open: until.is_none(),
            next_change: until,
        }))
    }
}

/// b/prod's metric checks, as Prometheus would answer them: no data while dark (and for
/// a version no node serves); `errors` fails while red, and for `serves_badly` while a
/// node serves it; the rest pass.
struct SimChecks(Shared);

#[async_trait]
impl crate::deploy::ports::Checks for SimChecks {
    async fn read(
        &self,
        job: &DeployJob,
        names: &[String],
        _groups: &crate::deploy::checks::Groups,
    ) -> Vec<(String, crate::deploy::checks::Reading)> {
        use crate::deploy::checks::Reading;
        let mut w = self.0.lock().unwrap();
        let now = w.now.load(Ordering::SeqCst);
        if matches!(job.source, Source::Rollback { .. } | Source::Sync { .. }) {
            w.violations.push(format!(
                "(xviii) job {} ({:?}) read checks: a rollback or sync must not wait for them",
                job.id, job.source
            ));
        }
        let dark = w.dark_until.is_some_and(|until| now < until);
        let red = w.red_until.is_some_and(|until| now < until);
        let bad = w.serves_badly.clone();
        let serving = |v: &Version| {
            w.targets[&(job.app.clone(), job.env.clone())]
                .nodes
                .values()
                .any(|n| !n.gone && n.serving.as_ref().is_some_and(|s| s.same_as(v)))
        };
        let served = serving(&job.version);
        let fails = red || (job.version.same_as(&bad) && serving(&bad));
        let readings: Vec<(String, Reading)> = names
            .iter()
            .map(|name| {
                let r = if dark || !served {
                    Reading::NoData {
                        detail: "the query returned no series".into(),
                    }
                } else if name == "errors" && fails {
                    Reading::Fail {
                        detail: "3 (needs < 1)".into(),
                    }
                } else {
                    Reading::Pass {
                        detail: "0 (needs < 1)".into(),
                    }
                };
                (name.clone(), r)
            })
            .collect();
        let errors = readings.iter().find(|(n, _)| n == "errors").map(|(_, r)| r);
        let passed = matches!(errors, Some(Reading::Pass { .. }));
        w.stats.checks_read += 1;
        match errors {
            Some(Reading::Fail { .. }) => w.stats.checks_failed += 1,
            Some(Reading::NoData { .. }) => w.stats.checks_dark += 1,
            _ => {}
        }
        w.last_reading.insert(job.id.clone(), (now, passed));
        readings
    }
}

/// SQS FIFO under the drivers' promotions: a job id sent again within five minutes of its
/// first send is taken once (it is the deduplication id); past that, it is a new message.
struct SimQueue(Shared);

/// SQS FIFO's deduplication interval.
const DEDUP_MS: i64 = 300_000;

#[async_trait]
impl JobQueue for SimQueue {
    async fn enqueue(&self, jobs: &[DeployJob]) -> Result<Vec<Enqueued>, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        let now = w.now.load(Ordering::SeqCst);
        let mut answers = vec![];
        for job in jobs {
            let first = !w.promotion_sent.contains_key(&job.id);
            if w.promotion_sent
                .get(&job.id)
                .is_some_and(|at| now - at < DEDUP_MS)
            {
                answers.push(Enqueued::Duplicate);
                continue;
            }
            if first {
                w.stats.promotions += 1;
            }
            w.promotion_sent.insert(job.id.clone(), now);
            w.promotions.push(job.clone());
            answers.push(Enqueued::Queued);
        }
        w.answer()?;
        Ok(answers)
    }
}

/// One SendCommand, as ListCommands would list it.
struct SentCommand {
    comment: String,
    key: String,
    target: (String, String),
    nodes: Vec<String>,
    /// ListCommands reads that will still miss it.
    hidden: u32,
    /// Its nodes that refused it for reaching them too late.
    late: BTreeSet<String>,
}

/// The end of a command not delivered yet.
const HELD: i64 = i64::MAX;

/// A command sent but not yet delivered to `node`.
struct Held {
    /// Its SendCommand (an index in `World::sent`).
    command: usize,
    sent_at: i64,
    /// How long SSM lets it run once delivered.
    timeout_ms: i64,
    target: (String, String),
    job: JobId,
    cmd: Command,
    node: String,
}

/// Runs `cmd` of `job` on `name` now: the fence, invariant (i), and its effects.
fn start(
    w: &mut World,
    target: &(String, String),
    job: &JobId,
    cmd: &Command,
    name: &str,
    timeout_ms: i64,
) {
    let now = w.now.load(Ordering::SeqCst);
    let (bad, faults) = (w.bad.clone(), w.faults);
    // (xiii) A job chat said would not run touches no node.
    if w.cancelled.contains(job) {
        w.violations.push(format!(
            "(xiii) {} ran on {name}, although its job was cancelled",
            cmd.key
        ));
    }
    let t = w.targets.get_mut(target).expect("a simulated target");
    // (xi) A command key runs at most once on a node.
    if t.runs
        .get(&cmd.key)
        .and_then(|r| r.get(name))
        .is_some_and(|r| r.end != HELD)
    {
        w.violations
            .push(format!("(xi) {} ran twice on {name}", cmd.key));
    }
    let holds = t.lock.as_ref().is_some_and(|l| l.job.as_ref() == Some(job));
    let node = t.nodes.get_mut(name).expect("a simulated node");
    w.stats.commands += 1;
    if node.gone {
        w.stats.gone += 1;
        t.runs.entry(cmd.key.clone()).or_default().insert(
            name.to_string(),
            Run {
                job: job.clone(),
                end: now,
                result: NodeResult::Gone {
                    detail: "terminated".into(),
                },
            },
        );
        return;
    }
    // As the command's script: the fence first, then (its key not run here yet) the time
    // it had to start by.
    let late = cmd
        .not_after
        .is_some_and(|t| (t0() + chrono::Duration::milliseconds(now)).timestamp() > t.timestamp());
    // (ix) No command runs on a node for a deploy that does not hold the lock, unless the
    // node's fence or the command's deadline refuses it.
    if !holds && node.fence <= cmd.fence && !late {
        w.violations.push(format!(
            "(ix) {} of job {job} ran on {name} while the job did not hold {}/{}",
            cmd.key, target.0, target.1
        ));
    }
    if node.fence > cmd.fence {
        w.stats.fenced += 1;
        t.runs.entry(cmd.key.clone()).or_default().insert(
            name.to_string(),
            Run {
                job: job.clone(),
                end: now,
                result: fenced(),
            },
        );
        return;
    }
    node.fence = cmd.fence;
    if late {
        // Refused, and the node keeps no record of the key (a send in time runs it): the
        // refusal is this send's answer only (see `receive` and `deliver_late`).
        w.stats.late += 1;
        if t.runs
            .get(&cmd.key)
            .and_then(|r| r.get(name))
            .is_some_and(|r| r.end == HELD)
        {
            t.runs.get_mut(&cmd.key).expect("read above").remove(name);
        }
        w.refused_late = true;
        return;
    }
    // One check of what the node serves now.
    let check = |node: &Node| match &node.serving {
        _ if faults && node.sick => failed("503 Service Unavailable"),
        // A bad build stays bad when the faults stop.
        Some(v) if *v == bad => failed("500 Internal Server Error"),
        Some(v) if *v == cmd.version => NodeResult::Succeeded,
        _ => failed("serving another version"),
    };
    let (took, result) = match cmd.kind {
        CommandKind::Install if faults && node.broken_install => (3_000, failed("broken disk")),
        CommandKind::Install => {
            node.installed = Some(cmd.version.clone());
            // 2–20 s, by node and version, deterministic.
            let spread = (name.as_bytes()[1] as i64 * 7_919
                + cmd.version.as_str().as_bytes()[2] as i64 * 104_729)
                % 18_000;
            (2_000 + spread, NodeResult::Succeeded)
        }
        // The restart, then the node's checks until one passes or the timeout (3 s) is up.
        CommandKind::Restart => {
            node.serving = node.installed.clone();
            // Put back by a rollback, it serves what it did before this deploy.
            node.served_by = (!cmd.key.contains(":revert:")).then(|| job.clone());
            match check(node) {
                NodeResult::Succeeded => (3_000, NodeResult::Succeeded),
                NodeResult::Failed { exit_code, output } => (
                    5_000,
                    NodeResult::Failed {
                        exit_code,
                        output: format!("{output}\n{UNHEALTHY} 7 checks in 3 s"),
                    },
                ),
                other => (3_000, other),
            }
        }
        CommandKind::Health => (1_000, check(node)),
        CommandKind::Check => {
            let read = check(node);
            w.stats.node_checks += 1;
            if read != NodeResult::Succeeded {
                w.stats.node_checks_failed += 1;
            }
            (1_000, read)
        }
        CommandKind::Version => (
            500,
            NodeResult::Reported {
                output: node
                    .installed
                    .as_ref()
                    .map_or(String::new(), |v| format!("Version: {v}")),
            },
        ),
    };
    // SSM ends a command at its execution timeout.
    let (took, result) = match took > timeout_ms {
        true => (
            timeout_ms,
            NodeResult::Failed {
                exit_code: None,
                output: "TimedOut".into(),
            },
        ),
        false => (took, result),
    };
    let mut broken = vec![];
    // (i) Commands of two jobs never overlap on one app+env.
    for (key, runs) in &t.runs {
        for (n, r) in runs {
            // Held back (not on the node yet) and refused commands run nothing.
            if &r.job != job && r.end > now && r.end != HELD && r.result != fenced() {
                broken.push(format!(
                    "(i) {}/{}: {} on {name} while {key} of job {} runs on {n} until +{} ms",
                    target.0, target.1, cmd.key, r.job, r.end
                ));
            }
        }
    }
    t.runs.entry(cmd.key.clone()).or_default().insert(
        name.to_string(),
        Run {
            job: job.clone(),
            end: now + took,
            result,
        },
    );
    if cmd.kind == CommandKind::Restart && !cmd.key.contains(":revert:") {
        let until = w.restarted_until.entry(job.clone()).or_default();
        *until = (*until).max(now + took);
    }
    // (ii) No node is restarted twice by one deploy (the rollback's restart aside).
    if cmd.kind == CommandKind::Restart && !cmd.key.contains(":revert:") {
        let count = w
            .restarts
            .entry((job.clone(), name.to_string()))
            .or_default();
        *count += 1;
        if *count > 1 {
            broken.push(format!("(ii) job {job} restarted {name} twice"));
        }
    }
    w.violations.extend(broken);
}

/// Held commands reach their nodes now, those still within the delivery timeout; the
/// others were dropped, as SSM drops them (their nodes never answer).
fn deliver_late(w: &mut World) {
    let now = w.now.load(Ordering::SeqCst);
    for h in std::mem::take(&mut w.held) {
        if now - h.sent_at <= DELIVERY_TIMEOUT_SECONDS * 1000 {
            start(w, &h.target, &h.job, &h.cmd, &h.node, h.timeout_ms);
            if std::mem::take(&mut w.refused_late) {
                w.sent[h.command].late.insert(h.node.clone());
            }
        }
    }
}

/// What a sent script asks of a node: its kind, version and lock generation (the sim's
/// templates name their kind and version: `sim-install 1.2.0`).
fn read_script(script: &str) -> Option<(CommandKind, Version, u64, Option<DateTime<Utc>>)> {
    let after = |word: &str| {
        let rest = &script[script.find(word)? + word.len()..];
        Version::parse(rest.split_whitespace().next()?).ok()
    };
    let (kind, version) = if let Some(v) = after("sim-install ") {
        (CommandKind::Install, v)
    } else if let Some(v) = after("sim-restart ") {
        (CommandKind::Restart, v)
    } else if let Some(v) = after("sim-health ") {
        (CommandKind::Health, v)
    } else if let Some(v) = after("sim-check ") {
        (CommandKind::Check, v)
    } else if script.contains("sim-version") {
        // The probe's version is the job's: the node reports what it has.
        (CommandKind::Version, Version::parse("0").ok()?)
    } else {
        return None;
    };
    // The fence's test (`config::command::fenced`), not the health loop's.
    let test = "\"$shipit_seen\" -gt ";
    let fence = match script.find(test) {
        Some(i) => script[i + test.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()?,
        None => 0,
    };
    // The time it must start by (`config::command::once`).
    let test = "\"$(date +%s)\" -gt ";
    let not_after = match script.find(test) {
        Some(i) => {
            let secs = script[i + test.len()..]
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some(Utc.timestamp_opt(secs, 0).single()?)
        }
        None => None,
    };
    Some((kind, version, fence, not_after))
}

/// What SendCommand `c` answers for `node`: its refusal if it came too late, else what
/// the node's run of its key shows (none: a held send it waited on came too late).
fn answer(
    w: &World,
    c: &SentCommand,
    node: &str,
    runs: &HashMap<String, BTreeMap<String, Run>>,
) -> NodeResult {
    if c.late.contains(node) {
        return NodeResult::Failed {
            exit_code: Some(REFUSED_EXIT),
            output: format!("{LATE} this command had to start by …"),
        };
    }
    match runs.get(&c.key).and_then(|r| r.get(node)) {
        Some(r) => seen(w, &c.key, node, r),
        None => NodeResult::Gone {
            detail: "DeliveryTimedOut".into(),
        },
    }
}

/// Where a result stands now: held back past the delivery timeout, SSM gave up on it.
fn seen(w: &World, key: &str, node: &str, r: &Run) -> NodeResult {
    let now = w.now.load(Ordering::SeqCst);
    let held = w.held.iter().find(|h| h.cmd.key == key && h.node == node);
    if r.end == HELD && held.is_none_or(|h| now - h.sent_at > DELIVERY_TIMEOUT_SECONDS * 1000) {
        return NodeResult::Gone {
            detail: "DeliveryTimedOut".into(),
        };
    }
    if r.end > now {
        return NodeResult::Running;
    }
    r.result.clone()
}

#[async_trait]
impl RunCommand for SimRunCommand {
    async fn online_nodes(
        &self,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        let (app, env) = (tags["shipit:app"].clone(), tags["shipit:env"].clone());
        Ok(w.target(&app, &env)
            .nodes
            .iter()
            .filter(|(_, n)| !n.gone)
            .map(|(name, _)| name.clone())
            .collect())
    }

    async fn send(&self, req: &SendRequest) -> Result<String, PortError> {
        let mut guard = self.0.lock().unwrap();
        let w = &mut *guard;
        w.call()?;
        if let Some(late_ms) = w.slow_next.take() {
            // The request is on its way; the step waits for the answer until the request
            // arrives or the SDK gives up on it, and fails.
            let arrives = w.now.load(Ordering::SeqCst) + late_ms;
            w.in_flight.push((arrives, req.clone()));
            w.hung = Some(late_ms.min(CALL_TIMEOUT_MS));
            w.stats.slow_sends += 1;
            return Err("timed out waiting for SendCommand's answer".into());
        }
        let id = receive(w, &self.1, req)?;
        w.answer()?;
        Ok(id)
    }

    async fn find(
        &self,
        node: &str,
        comment: &str,
        _after: DateTime<Utc>,
    ) -> Result<Option<String>, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        let mut missed = false;
        let mut found = None;
        // Newest first, as `RunCommand::find` answers.
        for (i, c) in w.sent.iter_mut().enumerate().rev() {
            if c.comment != comment || !c.nodes.iter().any(|n| n == node) {
                continue;
            }
            if c.hidden > 0 {
                c.hidden -= 1;
                missed = true;
                continue;
            }
            found = Some(i.to_string());
            break;
        }
        if missed && found.is_none() {
            w.stats.missed_lookups += 1;
        }
        Ok(found)
    }

    async fn statuses(&self, id: &str) -> Result<Vec<(String, Status)>, PortError> {
        let mut guard = self.0.lock().unwrap();
        guard.call()?;
        let w = &*guard;
        let c = &w.sent[id.parse::<usize>()?];
        let runs = &w.targets[&c.target].runs;
        Ok(c.nodes
            .iter()
            .map(|n| {
                let status = match answer(w, c, n, runs) {
                    NodeResult::Running => Status::Running,
                    NodeResult::Succeeded | NodeResult::Reported { .. } => Status::Succeeded,
                    NodeResult::Failed { .. } => Status::Failed,
                    NodeResult::Gone { detail } => Status::Gone(detail),
                };
                (n.clone(), status)
            })
            .collect())
    }

    async fn outcome(
        &self,
        id: &str,
        node: &str,
    ) -> Result<Option<(Option<i32>, String)>, PortError> {
        let mut guard = self.0.lock().unwrap();
        guard.call()?;
        let w = &*guard;
        let c = &w.sent[id.parse::<usize>()?];
        let runs = &w.targets[&c.target].runs;
        Ok(match answer(w, c, node, runs) {
            NodeResult::Failed { exit_code, output } => Some((exit_code, output)),
            NodeResult::Reported { output } => Some((Some(0), output)),
            NodeResult::Succeeded => Some((Some(0), String::new())),
            NodeResult::Running | NodeResult::Gone { .. } => None,
        })
    }
}

/// SSM receives a SendCommand: the command, each node's part of it, its id.
fn receive(w: &mut World, config: &Config, req: &SendRequest) -> Result<String, PortError> {
    let key = req
        .comment
        .split(' ')
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let id = key.split(':').next().unwrap_or_default();
    let job = w.jobs.values().find(|j| j.id.as_str() == id).cloned();
    let (Some(job), Some((kind, version, fence, not_after))) = (job, read_script(&req.script))
    else {
        panic!(
            "a command the simulation cannot read: {}\n{}",
            req.comment, req.script
        );
    };
    let target = (job.app.clone(), job.env.clone());
    let t = w.targets.get_mut(&target).expect("a simulated target");
    let gone: Vec<&String> = req.nodes.iter().filter(|n| t.nodes[*n].gone).collect();
    if !gone.is_empty() {
        let refused = format!("InvalidInstanceId: {gone:?} are not running managed nodes");
        w.stats.gone += 1;
        return Err(Box::new(InvalidInstances(refused)));
    }
    let version = match kind {
        CommandKind::Version => job.version.clone(),
        _ => version,
    };
    let timeout_ms = req.timeout_seconds as i64 * 1000;
    if req.timeout_seconds < config.apps[&job.app].rollout.command_seconds(kind) {
        w.stats.shortened += 1;
    }
    let cmd = Command {
        key: key.clone(),
        kind,
        version,
        nodes: req.nodes.clone(),
        concurrency: 0,
        fence,
        not_after,
        check: None,
    };
    let mut late = BTreeSet::new();
    for name in &req.nodes {
        let t = w.targets.get_mut(&target).expect("a simulated target");
        // The node's run record: a second send answers what the first run did.
        if t.runs.get(&key).is_some_and(|r| r.contains_key(name)) {
            w.stats.sent_again += 1;
            continue;
        }
        if w.delay_next {
            w.delay_next = false;
            t.runs.entry(key.clone()).or_default().insert(
                name.clone(),
                Run {
                    job: job.id.clone(),
                    end: HELD,
                    result: NodeResult::Running,
                },
            );
            let sent_at = w.now.load(Ordering::SeqCst);
            w.held.push(Held {
                command: w.sent.len(),
                sent_at,
                timeout_ms,
                target: target.clone(),
                job: job.id.clone(),
                cmd: cmd.clone(),
                node: name.clone(),
            });
            continue;
        }
        start(w, &target, &job.id, &cmd, name, timeout_ms);
        if std::mem::take(&mut w.refused_late) {
            late.insert(name.clone());
        }
    }
    let hidden = std::mem::take(&mut w.list_lag_next);
    w.sent.push(SentCommand {
        comment: req.comment.clone(),
        key,
        target,
        nodes: req.nodes.clone(),
        hidden,
        late,
    });
    Ok((w.sent.len() - 1).to_string())
}

fn failed(output: &str) -> NodeResult {
    NodeResult::Failed {
        exit_code: Some(1),
        output: output.into(),
    }
}

fn fenced() -> NodeResult {
    NodeResult::Failed {
        exit_code: Some(REFUSED_EXIT),
        output: format!("{REFUSED} a newer lock generation has been here"),
    }
}

/// The queue order twin: the dispatcher's tickets, in queue order, an execution running
/// until the simulation sees it end (as `SsmTurn` asks Step Functions).
struct SimTurn(Shared);

impl World {
    /// Leaves `job`'s ticket at its place in the queue (`SsmTurn::enter`).
    fn enter(&mut self, job: &DeployJob) {
        let key = (job.app.clone(), job.env.clone());
        let place = |w: &World, id: &JobId| w.fifo[&key].iter().position(|j| j == id);
        let mine = place(self, &job.id);
        let tickets = self.tickets.get(&key).cloned().unwrap_or_default();
        if tickets.contains(&job.id) {
            return;
        }
        let at = tickets
            .iter()
            .position(|j| place(self, j) > mine)
            .unwrap_or(tickets.len());
        self.tickets
            .entry(key)
            .or_default()
            .insert(at, job.id.clone());
    }

    fn running(&self, job: &JobId) -> bool {
        self.executing.contains(job) && !self.ended.contains(job)
    }
}

#[async_trait]
impl Turn for SimTurn {
    async fn ahead(&self, job: &DeployJob, held: HeldBack<'_>) -> Result<Option<JobId>, PortError> {
        let mut guard = self.0.lock().unwrap();
        let w = &mut *guard;
        let Some(tickets) = w.tickets.get(&(job.app.clone(), job.env.clone())) else {
            return Ok(None);
        };
        let Some(mine) = tickets.iter().position(|j| *j == job.id) else {
            return Ok(None);
        };
        // As `SsmTurn`: the tickets before the first running execution not held back are
        // stale if their executions ended (or never started), and are removed.
        let ahead = tickets[..mine]
            .iter()
            .find(|j| w.running(j) && !w.jobs.get(*j).is_some_and(held))
            .cloned();
        let stale: Vec<JobId> = tickets[..mine]
            .iter()
            .take_while(|j| Some(*j) != ahead.as_ref())
            .filter(|j| !w.running(j))
            .cloned()
            .collect();
        w.tickets
            .get_mut(&(job.app.clone(), job.env.clone()))
            .expect("read above")
            .retain(|j| !stale.contains(j));
        Ok(ahead)
    }

    async fn leave(&self, job: &DeployJob) -> Result<(), PortError> {
        let mut w = self.0.lock().unwrap();
        if let Some(tickets) = w.tickets.get_mut(&(job.app.clone(), job.env.clone())) {
            tickets.retain(|j| *j != job.id);
        }
        Ok(())
    }
}

#[async_trait]
impl crate::deploy::ports::Claims for SimTurn {
    async fn cancelled(&self, job: &DeployJob) -> Result<Option<String>, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        Ok(w.claims.get(&job.id).cloned().flatten())
    }

    async fn start(&self, job: &DeployJob) -> Result<Option<String>, PortError> {
        let mut w = self.0.lock().unwrap();
        w.call()?;
        let claim = w.claims.entry(job.id.clone()).or_insert(None).clone();
        w.answer()?;
        Ok(claim)
    }
}

struct Pass;

#[async_trait]
impl Gate for Pass {
    async fn verify(&self, _job: &DeployJob) -> Result<Verdict, PortError> {
        Ok(Verdict::Pass)
    }
}

struct Quiet;

#[async_trait]
impl Notify for Quiet {
    async fn notify(&self, _: &Deploy, _: &[Notice], _: &mut NotifyMemo, _: DateTime<Utc>) {}
}

/// One execution of the deploy state machine: its state, and when it may step again.
struct Execution {
    state: StepState,
    ready_at: i64,
    /// Tries of its Step task that failed in a row (see `step_execution`).
    failures: u32,
}

struct Sim {
    world: Shared,
    ledger: Arc<SimLedger>,
    stepper: Stepper,
    executions: Vec<Execution>,
    /// Per app+env (a FIFO group), the messages the dispatcher has not yet handled: the
    /// first one's failure holds back the rest until SQS delivers it again.
    inbox: BTreeMap<(String, String), std::collections::VecDeque<DeployJob>>,
    config: Arc<Config>,
    queued: Vec<DeployJob>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let now = Arc::new(AtomicI64::new(0));
        let mut targets = BTreeMap::new();
        for (app, env) in TARGETS {
            let mut t = Target::default();
            for n in NODES {
                t.nodes.insert(n.to_string(), Node::default());
            }
            targets.insert((app.to_string(), env.to_string()), t);
        }
        let config = config();
        let world = Arc::new(Mutex::new(World {
            now: now.clone(),
            config: config.clone(),
            held_jobs: BTreeSet::new(),
            approved: BTreeSet::new(),
            targets,
            bad: Version::parse(VERSIONS[(seed % VERSIONS.len() as u64) as usize]).unwrap(),
            faults: true,
            restarts: HashMap::new(),
            violations: vec![],
            stats: Stats::default(),
            delay_next: false,
            throttle_next: 0,
            held: vec![],
            fifo: BTreeMap::new(),
            tickets: BTreeMap::new(),
            executing: BTreeSet::new(),
            ended: BTreeSet::new(),
            fail_next: 0,
            lag_next: 0,
            lose_next: 0,
            unreleased: BTreeSet::new(),
            jobs: HashMap::new(),
            claims: HashMap::new(),
            cancelled: BTreeSet::new(),
            sent: vec![],
            list_lag_next: 0,
            slow_next: None,
            in_flight: vec![],
            hung: None,
            refused_late: false,
            promotions: vec![],
            promotion_sent: HashMap::new(),
            changes_closed_until: None,
            change_held: BTreeSet::new(),
            serves_badly: Version::parse(VERSIONS[((seed + 2) % VERSIONS.len() as u64) as usize])
                .unwrap(),
            dark_until: None,
            red_until: None,
            last_reading: HashMap::new(),
            restarted_until: HashMap::new(),
        }));
        let ledger = Arc::new(SimLedger(world.clone()));
        let driver = Driver::new(
            config.clone(),
            ledger.clone(),
            Arc::new(
                SsmFleet::new(
                    Arc::new(SimRunCommand(world.clone(), config.clone())),
                    config.clone(),
                )
                .with_clock(virtual_clock(&now)),
            ),
            None,
            Outbound {
                gate: Arc::new(Pass),
                checks: Arc::new(SimChecks(world.clone())),
                notifier: Arc::new(Quiet),
            },
        )
        .with_turn(Arc::new(SimTurn(world.clone())))
        .with_queue(Arc::new(SimQueue(world.clone())))
        .with_calendars(Arc::new(SimCalendars(world.clone())));
        let stepper = Stepper::new(driver, Duration::ZERO).with_clock(virtual_clock(&now));
        Sim {
            world,
            ledger,
            stepper,
            executions: vec![],
            inbox: BTreeMap::new(),
            config,
            queued: vec![],
        }
    }

    fn now_ms(&self) -> i64 {
        self.world.lock().unwrap().now.load(Ordering::SeqCst)
    }

    fn now(&self) -> DateTime<Utc> {
        self.world.lock().unwrap().now()
    }

    /// `job` is queued: SQS hands it to the dispatcher once the jobs queued before it in
    /// its group were.
    fn queue(&mut self, job: DeployJob) {
        let key = (job.app.clone(), job.env.clone());
        self.world
            .lock()
            .unwrap()
            .fifo
            .entry(key.clone())
            .or_default()
            .push(job.id.clone());
        self.queued.push(job.clone());
        self.inbox.entry(key).or_default().push_back(job);
        self.pump();
    }

    /// SQS delivers each group's first message to the dispatcher until one fails: that
    /// one becomes visible again later (a later pump), holding back its group.
    fn pump(&mut self) {
        let keys: Vec<_> = self.inbox.keys().cloned().collect();
        for key in keys {
            while let Some(job) = self.inbox[&key].front().cloned() {
                if self.dispatch(&job).is_err() {
                    self.world.lock().unwrap().stats.undispatched += 1;
                    break;
                }
                self.inbox.get_mut(&key).expect("read above").pop_front();
            }
        }
    }

    /// The dispatcher (`start_deploy`): the ticket, then the execution named by the job
    /// id; each call may fail before or after taking effect.
    fn dispatch(&mut self, job: &DeployJob) -> Result<(), PortError> {
        let mut w = self.world.lock().unwrap();
        w.jobs.insert(job.id.clone(), job.clone());
        w.call()?;
        w.enter(job);
        w.answer()?;
        w.call()?;
        let fresh = w.executing.insert(job.id.clone());
        if fresh {
            self.executions.push(Execution {
                state: StepState::start(job.clone()),
                ready_at: w.now.load(Ordering::SeqCst),
                failures: 0,
            });
        }
        w.answer()?;
        // A message delivered again after its deploy ended leaves no ticket behind.
        if !fresh && w.ended.contains(&job.id) {
            if let Some(t) = w.tickets.get_mut(&(job.app.clone(), job.env.clone())) {
                t.retain(|j| *j != job.id);
            }
        }
        Ok(())
    }

    /// The clock moves on to `to`, SendCommand requests on their way reaching SSM at
    /// their times on the way there.
    fn advance_to(&mut self, to: i64) {
        loop {
            let next = {
                let w = self.world.lock().unwrap();
                w.in_flight.iter().map(|(at, _)| *at).min()
            };
            match next {
                Some(at) if at <= to => {
                    self.world
                        .lock()
                        .unwrap()
                        .now
                        .fetch_max(at, Ordering::SeqCst);
                    self.arrive();
                }
                _ => break,
            }
        }
        self.world
            .lock()
            .unwrap()
            .now
            .fetch_max(to, Ordering::SeqCst);
    }

    /// SendCommand requests reach SSM once their time has come.
    fn arrive(&mut self) {
        let mut w = self.world.lock().unwrap();
        let now = w.now.load(Ordering::SeqCst);
        let (due, later) = std::mem::take(&mut w.in_flight)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        w.in_flight = later;
        for (_, req) in due {
            // SSM refuses one that names a node gone since: nobody hears of it.
            let _ = receive(&mut w, &self.config, &req);
        }
    }

    async fn apply(&mut self, event: &Event) {
        self.arrive();
        let now = self.now();
        match event {
            Event::Queue {
                target,
                kind,
                version,
            } => {
                let (app, env) = TARGETS[*target];
                let v = Version::parse(VERSIONS[*version]).unwrap();
                let n = self.queued.len();
                let source = match kind {
                    JobKind::Tag => Source::Tag {
                        event: "push".into(),
                        repo: format!("acme/{app}"),
                        tag: format!("v{v}"),
                        commit: None,
                        delivery: None,
                        pusher: None,
                        committed_at: None,
                    },
                    JobKind::Upload => Source::Upload {
                        location: format!("s3://pkgs/{app}-{v}-{n}.whl"),
                    },
                    JobKind::Chat | JobKind::Rollback => Source::Chat {
                        user_id: "U1".into(),
                        user_name: "ann".into(),
                        channel_id: "C1".into(),
                        channel_name: "deploys".into(),
                        trigger_id: format!("t{n}"),
                        response_url: None,
                    },
                };
                let job = if let JobKind::Rollback = kind {
                    let history = self.ledger.history(app, env, 50).await.unwrap();
                    let faulty = self.ledger.faulty(app, env).await.unwrap();
                    match rollback_target(&history, &faulty) {
                        Ok((live, to)) => {
                            self.world.lock().unwrap().stats.rollbacks_queued += 1;
                            to.rollback(Some(&live.id), source, now)
                        }
                        Err(_) => return,
                    }
                } else {
                    let job = DeployJob::new(
                        app,
                        env,
                        format!("{app}-app").parse().unwrap(),
                        v,
                        source,
                        now,
                    );
                    // Every other chat deploy overrides the calendar (U1 may).
                    match kind {
                        JobKind::Chat if n.is_multiple_of(2) => job.overriding("sim"),
                        _ => job,
                    }
                };
                self.queue(job);
            }
            Event::Redeliver(k) => {
                if let Some(job) = self.queued.get(*k % self.queued.len().max(1)).cloned() {
                    let key = (job.app.clone(), job.env.clone());
                    match self.inbox[&key].iter().any(|j| j.id == job.id) {
                        true => self.pump(),
                        // A duplicate of a message handled already.
                        false => {
                            let _ = self.dispatch(&job);
                        }
                    }
                }
            }
            Event::Step(k) => {
                self.step(*k, None).await;
            }
            Event::Crash(k, n) => {
                self.step(*k, Some(*n)).await;
            }
            Event::Run(k) => {
                let pending: Vec<usize> = (0..self.executions.len())
                    .filter(|&i| !self.executions[i].state.done)
                    .collect();
                if pending.is_empty() {
                    return;
                }
                let i = pending[k % pending.len()];
                for _ in 0..40 {
                    if self.executions[i].state.done {
                        break;
                    }
                    let at = self.executions[i].ready_at;
                    self.advance_to(at);
                    self.step_execution(i, None).await;
                }
            }
            Event::Advance(ms) => {
                self.advance_to(self.now_ms() + *ms);
                self.pump();
            }
            Event::Lock(t) => {
                let (app, env) = TARGETS[*t];
                let lock = LockInfo {
                    holder: "@ann".into(),
                    reason: "maintenance".into(),
                    since: now,
                    expires: None,
                    job: None,
                    generation: 0,
                    abort: None,
                    written: Written::default(),
                };
                // A chat lock whose call failed is one chat said had failed.
                let _ = self.ledger.try_lock(app, env, &lock, now).await;
            }
            Event::Unlock(t) => {
                let (app, env) = TARGETS[*t];
                self.ledger.unlock(app, env, now).await.unwrap();
            }
            Event::Abort(t) => {
                let (app, env) = TARGETS[*t];
                self.ledger
                    .request_abort(app, env, "@bob", now)
                    .await
                    .unwrap();
            }
            Event::FailCalls { n, lost } => {
                let mut w = self.world.lock().unwrap();
                match lost {
                    true => w.lose_next = *n,
                    false => w.fail_next = *n,
                }
            }
            Event::LagReads(n) => self.world.lock().unwrap().lag_next = *n,
            Event::LagList(n) => self.world.lock().unwrap().list_lag_next = *n,
            Event::CloseChanges(ms) => {
                let mut w = self.world.lock().unwrap();
                let now = w.now.load(Ordering::SeqCst);
                w.changes_closed_until = Some(now + ms);
            }
            Event::SlowSend(ms) => self.world.lock().unwrap().slow_next = Some(*ms),
            Event::Dark(ms) => {
                let mut w = self.world.lock().unwrap();
                let now = w.now.load(Ordering::SeqCst);
                w.dark_until = Some(now + ms);
            }
            Event::Red(ms) => {
                let mut w = self.world.lock().unwrap();
                let now = w.now.load(Ordering::SeqCst);
                w.red_until = Some(now + ms);
            }
            Event::Terminate { target, node } => {
                let (app, env) = TARGETS[*target];
                let mut w = self.world.lock().unwrap();
                w.target(app, env).nodes.get_mut(NODES[*node]).unwrap().gone = true;
            }
            Event::Join { target, node } => {
                let (app, env) = TARGETS[*target];
                let live = {
                    let mut w = self.world.lock().unwrap();
                    let now = w.now.load(Ordering::SeqCst);
                    let t = w.target(app, env);
                    // The first terminated node from `node` on comes back.
                    let Some(name) = (0..NODES.len())
                        .map(|k| NODES[(node + k) % NODES.len()])
                        .find(|n| t.nodes[*n].gone)
                    else {
                        return;
                    };
                    let n = t.nodes.get_mut(name).unwrap();
                    // A new instance: a clean disk, nothing served, no fence seen.
                    *n = Node {
                        joined_at: Some(now),
                        ..Node::default()
                    };
                    (name, t.history.first().map(|e| e.job.version.clone()))
                };
                let (name, Some(live)) = live else { return };
                let nonce = format!("join-{}", self.queued.len());
                let job = DeployJob::new(
                    app,
                    env,
                    format!("{app}-app").parse().unwrap(),
                    live,
                    Source::Sync {
                        nodes: vec![name.to_string()],
                        by: "node-joined".into(),
                        nonce,
                    },
                    now,
                );
                self.world.lock().unwrap().stats.syncs += 1;
                self.queue(job);
            }
            Event::Cancel(k) => {
                let Some(job) = self.queued.get(*k % self.queued.len().max(1)) else {
                    return;
                };
                let mut w = self.world.lock().unwrap();
                // As `SsmTurn::cancel`: the claim, if free; the job will not run if its
                // execution still runs, else the claim is taken back.
                if w.claims.contains_key(&job.id) {
                    return;
                }
                if w.ended.contains(&job.id) {
                    return;
                }
                w.claims.insert(job.id.clone(), Some("U2".into()));
                w.cancelled.insert(job.id.clone());
                w.stats.cancelled += 1;
            }
            Event::Word { k, by, approve } => {
                let by = ["U1", "U2"][*by];
                let job = {
                    let w = self.world.lock().unwrap();
                    // As `approve::give`: only on a job still pending that needs one, by
                    // whoever may give that word.
                    let waiting: Vec<&DeployJob> = self
                        .queued
                        .iter()
                        .filter(|j| !w.ended.contains(&j.id))
                        .filter(|j| {
                            w.config
                                .approvals_for(j)
                                .is_some_and(|r| r.may(j, by, *approve).is_ok())
                        })
                        .collect();
                    match waiting.get(*k % waiting.len().max(1)) {
                        Some(job) => (*job).clone(),
                        None => return,
                    }
                };
                let word = Approval {
                    job: job.id.clone(),
                    version: job.version.clone(),
                    by: by.into(),
                    approved: *approve,
                    reason: (!*approve).then(|| "sim".into()),
                    at: now,
                };
                if let Ok(true) = self.ledger.approve(&job.app, &job.env, &word).await {
                    self.world.lock().unwrap().stats.words += 1;
                }
            }
            Event::Delay => self.world.lock().unwrap().delay_next = true,
            Event::Throttle(n) => self.world.lock().unwrap().throttle_next = *n,
            Event::DeliverLate => deliver_late(&mut self.world.lock().unwrap()),
            Event::BreakInstall { target, node } | Event::Sicken { target, node } => {
                let (app, env) = TARGETS[*target];
                let mut w = self.world.lock().unwrap();
                let n = w.target(app, env).nodes.get_mut(NODES[*node]).unwrap();
                match event {
                    Event::BreakInstall { .. } => n.broken_install = true,
                    _ => n.sick = true,
                }
            }
        }
    }

    /// Steps the `k`-th execution that may run now, one action at a time until it must
    /// wait, as a deploy-step invocation does; with `crash_at`, the driver dies after that
    /// action and before its state was saved, and the action is done again from the state
    /// before it.
    async fn step(&mut self, k: usize, crash_at: Option<usize>) {
        let now = self.now_ms();
        let ready: Vec<usize> = (0..self.executions.len())
            .filter(|&i| !self.executions[i].state.done && self.executions[i].ready_at <= now)
            .collect();
        if ready.is_empty() {
            return;
        }
        self.step_execution(ready[k % ready.len()], crash_at).await;
    }

    async fn step_execution(&mut self, i: usize, crash_at: Option<usize>) {
        self.arrive();
        let now = self.now_ms();
        let mut state = self.executions[i].state.clone();
        // Tries of the Step task that failed in a row: its Retry makes 2 more, then its
        // Catch hands the state, with the error, to Abort (5 more tries of its own).
        let mut failures = self.executions[i].failures;
        if failures == 3 {
            state = self.abort(state).await;
            failures = 0;
        }
        // A step after one that failed is a retry, as the state machine tells it.
        let mut retry = failures > 0;
        // The step waited on a call until the SDK gave up: retried that much later.
        let mut hung = None;
        for n in 0..50 {
            let before = state.clone();
            let input = |state: StepState, retry: bool| match retry {
                true => StepInput::from(state),
                false => StepInput::first(state),
            };
            (state, retry) = match self.stepper.step(input(before.clone(), retry)).await {
                Ok(s) => (s, false),
                Err(_) => (before.clone(), true),
            };
            if crash_at == Some(n) {
                (state, retry) = match self.stepper.step(input(before.clone(), true)).await {
                    Ok(s) => (s, false),
                    Err(_) => (before, true),
                };
            }
            failures = if retry { failures + 1 } else { 0 };
            {
                let mut w = self.world.lock().unwrap();
                let now = w.now();
                let calendar = |d: &Deploy| {
                    d.closed.is_some()
                        && d.approval_asked.is_none()
                        && w.config.held_back(&d.job, now).is_some()
                };
                if state.deploy.as_ref().is_some_and(calendar) {
                    w.held_jobs.insert(state.job.id.clone());
                }
                let changes = |d: &Deploy| {
                    d.closed
                        .as_deref()
                        .is_some_and(|c| c.starts_with("the change calendar"))
                };
                if state.deploy.as_ref().is_some_and(changes) {
                    w.change_held.insert(state.job.id.clone());
                    // (xv) … and a rollback, a sync or an override is never held back.
                    let exempt = w
                        .config
                        .target(&state.job)
                        .is_ok_and(|(_, e)| e.exempt(&state.job));
                    if exempt {
                        w.violations.push(format!(
                            "(xv) job {} ({:?}) was held back by its change calendar",
                            state.job.id, state.job.source
                        ));
                    }
                }
            }
            hung = self.world.lock().unwrap().hung.take();
            if hung.is_some() {
                break;
            }
            if failures == 3 {
                state = self.abort(state).await;
                retry = false;
                failures = 0;
            }
            if state.done || state.wait_seconds > 0 {
                break;
            }
        }
        // (xii) The state the state machine keeps between steps fits its 256 KB payload
        // (checked as each job ends: serializing every step would slow the run threefold;
        // the bench checks it at 10,000 nodes).
        let size = match state.done {
            true => serde_json::to_vec(&state).map_or(0, |v| v.len()),
            false => 0,
        };
        if size > 256 * 1024 {
            self.world.lock().unwrap().violations.push(format!(
                "(xii) job {}'s state is {size} bytes, past 256 KB",
                state.job.id
            ));
        }
        if state.done {
            self.finished(&state);
        }
        let wait = match hung {
            Some(ms) => ms + STEP_RETRY_MS,
            None => state.wait_seconds as i64 * 1000,
        };
        self.executions[i] = Execution {
            ready_at: now + wait,
            state,
            failures,
        };
        // SQS delivers the promotions the step queued.
        let promotions = std::mem::take(&mut self.world.lock().unwrap().promotions);
        for job in promotions {
            self.queue(job);
        }
    }

    /// The state machine's Catch → Abort: the step with the error, tried up to 6 times.
    async fn abort(&mut self, mut state: StepState) -> StepState {
        self.world.lock().unwrap().stats.caught += 1;
        state.error = Some(super::step::TaskError {
            error: "InternalServerError".into(),
            cause: "the step kept failing".into(),
        });
        for _ in 0..6 {
            let tried = self.stepper.step(StepInput::from(state.clone())).await;
            // Abort's tries are not held up by a hung call (a simplification).
            self.world.lock().unwrap().hung = None;
            if let Ok(next) = tried {
                return next;
            }
        }
        self.world.lock().unwrap().violations.push(format!(
            "(vi) the Abort of job {} failed 6 times: its execution would end with the lock maybe held",
            state.job.id
        ));
        state
    }

    fn finished(&self, state: &StepState) {
        self.check_finished(state);
        self.check_left_behind(state);
        let mut w = self.world.lock().unwrap();
        // (xiii) … and ends cancelled (or, wound down by the Catch while its claim could
        // not be read, failed: it touched nothing either way).
        let wound_down = state.status == Some(JobStatus::Failed)
            && state.reason.as_deref().is_some_and(|r| {
                r.contains("could not go on") || r.starts_with("the deploy step failed")
            });
        if w.cancelled.contains(&state.job.id)
            && state.status != Some(JobStatus::Cancelled)
            && !wound_down
        {
            w.violations.push(format!(
                "(xiii) job {} was cancelled but ended {:?}",
                state.job.id, state.status
            ));
        }
        w.ended.insert(state.job.id.clone());
        w.stats.jobs += 1;
        if matches!(state.job.source, Source::Promotion { .. })
            && state.status == Some(JobStatus::Succeeded)
        {
            w.stats.promoted += 1;
        }
        let status = state.status.map_or("?".to_string(), |s| s.to_string());
        *w.stats.outcomes.entry(status).or_default() += 1;
        let outcome = state.deploy.as_ref().and_then(|d| d.outcome.as_ref());
        if outcome
            .and_then(|o| o.left_behind())
            .is_some_and(|l| l.contains("unhealthy"))
        {
            w.stats.left_unhealthy += 1;
        }
        if w.held_jobs.contains(&state.job.id) {
            w.stats.held_back += 1;
        }
        if w.change_held.contains(&state.job.id) {
            w.stats.change_held += 1;
        }
        if let Some(r) = &state.reason {
            if r.contains("lost the lock") {
                w.stats.lost_locks += 1;
            }
            if r.starts_with("refused: ") {
                w.stats.refused += 1;
            }
            let short: String = r.chars().take(110).collect();
            *w.stats.reasons.entry(short).or_default() += 1;
        }
    }

    /// (iii) A deploy that succeeded is live, on every node it left healthy.
    fn check_finished(&self, state: &StepState) {
        let Some(deploy) = &state.deploy else { return };
        if state.status != Some(JobStatus::Succeeded)
            || matches!(deploy.job.source, Source::Sync { .. })
        {
            return;
        }
        let mut w = self.world.lock().unwrap();
        let job = &deploy.job;
        let t = w.target(&job.app, &job.env);
        let live = t.history.first().map(|e| e.job.id.clone());
        let mut broken = vec![];
        if live.as_ref() != Some(&job.id) {
            broken.push(format!(
                "(iii) job {} succeeded but job {:?} is live on {}/{}",
                job.id, live, job.app, job.env
            ));
        }
        // SSM names every instance anew; the simulation gives a joining one the name of a
        // terminated one, which a deploy that saw the old one pass cannot tell apart.
        let requested = (job.requested_at - t0()).num_milliseconds();
        for n in deploy
            .nodes
            .iter()
            .filter(|n| n.state == crate::deploy::engine::NodeState::Healthy)
        {
            let node = &t.nodes[&n.name];
            let replaced = node.joined_at.is_some_and(|at| at >= requested)
                && node.served_by.as_ref() != Some(&job.id);
            let serving = &node.serving;
            if serving.as_ref() != Some(&job.version) && !replaced {
                broken.push(format!(
                    "(iii) job {} left {} healthy but it serves {:?}",
                    job.id, n.name, serving
                ));
            }
        }
        w.violations.extend(broken);
    }

    /// (viii) A deploy that failed or was aborted leaves no node serving its version from
    /// its own restart, except the nodes its outcome names as left behind.
    fn check_left_behind(&self, state: &StepState) {
        let Some(deploy) = &state.deploy else { return };
        let Some(outcome) = &deploy.outcome else {
            return;
        };
        use crate::deploy::engine::Outcome;
        let left = match outcome {
            Outcome::Failed { left_behind, .. } | Outcome::Aborted { left_behind, .. } => {
                left_behind
            }
            _ => return,
        };
        let mut w = self.world.lock().unwrap();
        let job = &deploy.job;
        let t = w.target(&job.app, &job.env);
        let mut broken = vec![];
        for (name, n) in &t.nodes {
            let ours = n.served_by.as_ref() == Some(&job.id)
                && n.serving.as_ref().is_some_and(|v| v.same_as(&job.version));
            if ours && !n.gone && !left.contains(name) {
                broken.push(format!(
                    "(viii) job {} ended {:?} with {name} serving {} unnamed",
                    job.id, outcome, job.version
                ));
            }
        }
        w.violations.extend(broken);
    }

    /// (vi) Once faults stop: every job ends, and no deploy holds a lock.
    async fn drain(&mut self) {
        {
            let mut w = self.world.lock().unwrap();
            w.faults = false;
            w.changes_closed_until = None;
            w.delay_next = false;
            w.throttle_next = 0;
            w.fail_next = 0;
            w.lose_next = 0;
            deliver_late(&mut w);
        }
        self.pump();
        for (app, env) in TARGETS {
            let now = self.now();
            self.ledger.unlock(app, env, now).await.unwrap();
        }
        for _ in 0..20_000 {
            let now = self.now_ms();
            let pending: Vec<usize> = (0..self.executions.len())
                .filter(|&i| !self.executions[i].state.done)
                .collect();
            let Some(next) = pending.iter().map(|&i| self.executions[i].ready_at).min() else {
                break;
            };
            if next > now {
                self.advance_to(next);
            }
            self.step(0, None).await;
            if !self.world.lock().unwrap().violations.is_empty() {
                return;
            }
        }
        // Requests still on their way reach SSM after the last job ended.
        let last = self
            .world
            .lock()
            .unwrap()
            .in_flight
            .iter()
            .map(|(at, _)| *at)
            .max();
        if let Some(at) = last {
            self.advance_to(at);
        }
        let stuck: Vec<String> = self
            .executions
            .iter()
            .filter(|e| !e.state.done)
            .map(|e| {
                format!(
                    "{} ({:?})",
                    e.state.job.id,
                    e.state.deploy.as_ref().map(|d| &d.phase)
                )
            })
            .collect();
        let mut w = self.world.lock().unwrap();
        if !stuck.is_empty() {
            w.violations
                .push(format!("(vi) jobs never ended: {}", stuck.join(", ")));
        }
        // A lock whose release failed is freed by its lease, as a person's `unlock` sees.
        let unreleased = w.unreleased.clone();
        let held: Vec<String> = w
            .targets
            .iter()
            .filter(|(_, t)| {
                !t.lock
                    .as_ref()
                    .and_then(|l| l.job.as_ref())
                    .is_some_and(|j| unreleased.contains(j))
            })
            .filter_map(|((a, e), t)| t.lock.as_ref().map(|l| format!("{a}/{e} by {}", l.holder)))
            .collect();
        if !held.is_empty() {
            w.violations
                .push(format!("(vi) locks left held: {}", held.join(", ")));
        }
    }

    fn violations(&self) -> Vec<String> {
        self.world.lock().unwrap().violations.clone()
    }
}

/// Runs `events` (then the drain); the first broken invariant, if any.
async fn run(seed: u64, events: &[Event], stats: &mut Stats) -> Option<String> {
    let mut sim = Sim::new(seed);
    for e in events {
        sim.apply(e).await;
        if let Some(v) = sim.violations().first() {
            return Some(v.clone());
        }
    }
    sim.drain().await;
    let w = sim.world.lock().unwrap();
    stats.add(&w.stats);
    w.violations.first().cloned()
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.schedules += 1;
        self.jobs += o.jobs;
        for (k, v) in &o.outcomes {
            *self.outcomes.entry(k.clone()).or_default() += v;
        }
        self.commands += o.commands;
        self.fenced += o.fenced;
        self.lost_locks += o.lost_locks;
        self.takeovers += o.takeovers;
        self.rollbacks_queued += o.rollbacks_queued;
        self.rollbacks_recorded += o.rollbacks_recorded;
        self.faulty_marked += o.faulty_marked;
        self.left_unhealthy += o.left_unhealthy;
        self.throttled += o.throttled;
        self.failed_calls += o.failed_calls;
        self.caught += o.caught;
        self.gone += o.gone;
        self.syncs += o.syncs;
        self.stale_reads += o.stale_reads;
        self.cancelled += o.cancelled;
        self.missed_lookups += o.missed_lookups;
        self.sent_again += o.sent_again;
        self.undispatched += o.undispatched;
        self.slow_sends += o.slow_sends;
        self.held_back += o.held_back;
        self.refused += o.refused;
        self.words += o.words;
        self.approved += o.approved;
        self.carried += o.carried;
        self.change_held += o.change_held;
        self.promotions += o.promotions;
        self.promoted += o.promoted;
        self.checks_read += o.checks_read;
        self.checks_failed += o.checks_failed;
        self.checks_dark += o.checks_dark;
        self.node_checks += o.node_checks;
        self.node_checks_failed += o.node_checks_failed;
        self.late += o.late;
        self.shortened += o.shortened;
        for (k, v) in &o.reasons {
            *self.reasons.entry(k.clone()).or_default() += v;
        }
    }
}

/// The shortest sub-list of `events` that still breaks an invariant (one event removed
/// at a time, until no single removal keeps it failing).
async fn shrink(seed: u64, mut events: Vec<Event>) -> (Vec<Event>, String) {
    let mut ignored = Stats::default();
    let mut failure = run(seed, &events, &mut ignored).await.expect("it failed");
    loop {
        let mut smaller = None;
        for i in 0..events.len() {
            let mut fewer = events.clone();
            fewer.remove(i);
            if let Some(f) = run(seed, &fewer, &mut ignored).await {
                smaller = Some((fewer, f));
                break;
            }
        }
        match smaller {
            Some((fewer, f)) => {
                events = fewer;
                failure = f;
            }
            None => return (events, failure),
        }
    }
}

#[test]
fn the_invariants_hold_on_thousands_of_random_schedules() {
    let seeds: u64 = std::env::var("SHIPIT_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SEEDS);
    let first: u64 = std::env::var("SHIPIT_SIM_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let mut stats = Stats::default();
    rt.block_on(async {
        for seed in first..first + seeds {
            let events = schedule(seed);
            if run(seed, &events, &mut stats).await.is_some() {
                let (trace, failure) = shrink(seed, events).await;
                let lines: Vec<String> = trace.iter().map(|e| format!("  {e:?}")).collect();
                panic!(
                    "seed {seed} breaks an invariant: {failure}\nshortest failing schedule ({} events; SHIPIT_SIM_FIRST_SEED={seed} SHIPIT_SIM_SEEDS=1 replays it):\n{}",
                    trace.len(),
                    lines.join("\n")
                );
            }
        }
    });
    eprintln!("{stats:#?}");
    // The schedules must reach what the invariants are about, or passing means nothing.
    if seeds >= 1_000 {
        for (what, n) in [
            ("succeeded", stats.outcomes.get("succeeded")),
            ("failed", stats.outcomes.get("failed")),
            ("skipped", stats.outcomes.get("skipped")),
            ("aborted", stats.outcomes.get("aborted")),
            ("cancelled", stats.outcomes.get("cancelled")),
        ] {
            assert!(n.is_some_and(|n| *n > 0), "no job ever {what}: {stats:#?}");
        }
        // Fenced commands stay at zero: a command is delivered within
        // DELIVERY_TIMEOUT_SECONDS, and a lease outlasts that, so a stale command never
        // reaches a node after a newer holder's. The fence is there for when that
        // reasoning fails (clocks); config::command tests it.
        assert!(stats.takeovers > 0 && stats.lost_locks > 0, "{stats:#?}");
        assert!(
            stats.rollbacks_recorded > 0 && stats.faulty_marked > 0,
            "{stats:#?}"
        );
        assert!(stats.left_unhealthy > 0, "{stats:#?}");
        assert!(stats.throttled > 0, "{stats:#?}");
        assert!(
            stats.failed_calls > 0
                && stats.caught > 0
                && stats.gone > 0
                && stats.syncs > 0
                && stats.stale_reads > 0
                && stats.missed_lookups > 0
                && stats.sent_again > 0
                && stats.undispatched > 0
                && stats.slow_sends > 0
                && stats.late > 0
                && stats.held_back > 0
                && stats.change_held > 0
                && stats.refused > 0,
            "{stats:#?}"
        );
        // Approvals given, carried over, rejected and timed out.
        let reason = |start: &str| stats.reasons.keys().any(|r| r.starts_with(start));
        assert!(
            stats.words > 0
                && stats.approved > 0
                && stats.carried > 0
                && reason("rejected by U")
                && reason("not approved within"),
            "{stats:#?}"
        );
        // Checks read, failing (rolled back for it) and without data (rolled back too).
        assert!(
            stats.checks_read > 0
                && stats.checks_failed > 0
                && stats.checks_dark > 0
                && reason("check errors failed ")
                && reason("check errors after "),
            "{stats:#?}"
        );
        // A node check goes through the fleet (fenced, timed out, gone like any command):
        // the runs prove its commands reach nodes, and its failures that a node sick after
        // its restart rolls the deploy back through it.
        assert!(
            stats.node_checks > 0 && stats.node_checks_failed > 0 && reason("check disk failed "),
            "{stats:#?}"
        );
        // Promotions queued, gone live, and refused for what became of their source,
        // its checks among it.
        assert!(
            stats.promotions > 0
                && stats.promoted > 0
                && reason("not promoted: ")
                && reason("not promoted: check errors reads red on staging"),
            "{stats:#?}"
        );
    }
}
