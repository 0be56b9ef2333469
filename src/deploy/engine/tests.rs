//! Engine unit tests, driven by an in-memory twin of the fleet, queue and ledger.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};

use super::*;
use crate::deploy::analysis::{NodeServed, Scrape, Served, Settings};
use crate::deploy::approval::{self, Approval, Approvals};
use crate::deploy::checks::{Groups, NoData, Reading, Rule, Stage};
use crate::deploy::command::{HOOK_FAILED, UNHEALTHY};
use crate::deploy::command::{REFUSED, REFUSED_EXIT};
use crate::deploy::job::{JobId, Source};

fn t0() -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000, 0).unwrap()
}

fn job(version: &str, automatic: bool) -> DeployJob {
    let source = if automatic {
        Source::Upload {
            location: format!("wheelhouse/hello_app-{version}-py3-none-any.whl"),
        }
    } else {
        Source::Cli {
            user: "ann".into(),
            nonce: version.into(),
        }
    };
    DeployJob::new(
        "hello",
        "production",
        "hello-app".parse().unwrap(),
        Version::parse(version).unwrap(),
        source,
        t0(),
    )
}

fn succeeded() -> Outcome {
    Outcome::Succeeded {
        failed_installs: vec![],
        unhealthy: vec![],
        gone: vec![],
    }
}

fn policy() -> Rollout {
    Rollout {
        health_timeout_seconds: 1,
        health_interval_seconds: 1,
        bake_seconds: 0,
        ..Rollout::default()
    }
}

/// The twin: runs each command key once, fails what it is told to, logs what ran.
#[derive(Default)]
struct Twin {
    nodes: Vec<String>,
    /// (kind, node, version) → the result that command gets.
    fail: HashMap<(CommandKind, String, String), NodeResult>,
    /// Keys answered `Running` once before their result.
    slow: Vec<String>,
    /// Nodes that never report a result (they went away).
    silent: Vec<String>,
    /// (kind, node) answered `Gone`: the node went away before or during that command.
    gone: Vec<(CommandKind, String)>,
    /// `log.len()` when each faulty mark was written: marks come before the rollback.
    marked_at: Vec<usize>,
    /// Once the deploy has renewed this many times, another deploy takes the lock over
    /// right after answering `Held` (the lease lapsed in between): the nodes, fenced,
    /// refuse the next command.
    stolen_after_renewals: Option<usize>,
    results: BTreeMap<String, Vec<(String, NodeResult)>>,
    /// What really ran, in order: "install 1.1.0 n1,n2,n3", "restart n1 1.1.0", …
    log: Vec<String>,
    /// When (`clock`) each entry of `log` ran.
    log_at: Vec<i64>,
    lock: Option<LockInfo>,
    live: Option<DeployJob>,
    newer: Option<Version>,
    recorded: Vec<JobId>,
    faulty: Vec<crate::deploy::history::Faulty>,
    /// Lock generations handed out so far.
    generation: u64,
    /// An abort asked of the deploy holding the lock.
    abort: Option<String>,
    /// When (virtual ms) the deploy renewed its lease.
    renewals: Vec<i64>,
    /// Once this command (as logged) has run, someone asks the deploy to stop.
    abort_after: Option<String>,
    /// Once this command has run, another deploy takes the lock over.
    stolen_after: Option<String>,
    /// The fence every command carried.
    fences: Vec<u64>,
    waited: Vec<u64>,
    /// What each node has installed, as its version command prints it.
    installed: HashMap<String, String>,
    /// What the gate answers, in turn; `Pass` once they run out.
    verdicts: Vec<Verdict>,
    verifies: usize,
    /// Virtual time, in milliseconds: only waits advance it.
    clock: i64,
    /// The environment's calendar holds jobs back until this time (ms), saying so.
    closed_until: Option<i64>,
    /// The environment's approvals, and people's words on the job, each given at its
    /// time (`clock`, ms).
    approvals: Option<Approvals>,
    words: Vec<(i64, Approval)>,
    /// What the ledger holds written (one more at each record or mark), handed with a
    /// free lock; and what the deploy released the lock with.
    written: Written,
    released: Option<Written>,
    /// What the checks read, one entry per read in turn (a check missing from an entry
    /// passes); every check passes once they run out. Each read is logged as
    /// "checks STAGE".
    readings: Vec<Vec<(&'static str, Reading)>>,
    /// The nodes each read of the checks compared (an analysis's groups).
    groups: Vec<Groups>,
}

impl Twin {
    fn new(nodes: &[&str], live: Option<&str>) -> Twin {
        Twin {
            nodes: nodes.iter().map(|s| s.to_string()).collect(),
            live: live.map(|v| job(v, false)),
            ..Twin::default()
        }
    }

    fn fail(mut self, kind: CommandKind, node: &str, version: &str) -> Twin {
        self.fail.insert(
            (kind, node.into(), version.into()),
            NodeResult::Failed {
                exit_code: Some(1),
                output: format!("{node} broke"),
            },
        );
        self
    }

    fn now(&self) -> DateTime<Utc> {
        t0() + Duration::milliseconds(self.clock)
    }

    /// Another deploy takes the lock over.
    fn steal(&mut self) {
        self.generation += 1;
        self.lock = Some(LockInfo {
            holder: "job other".into(),
            reason: "deploying hello 9.9.9".into(),
            since: self.now(),
            expires: None,
            job: None,
            generation: self.generation,
            abort: None,
            written: Written::default(),
        });
    }

    fn execute(&mut self, action: &Action) -> Observation {
        match action {
            Action::Verify => {
                self.verifies += 1;
                let verdict = if self.verdicts.is_empty() {
                    Verdict::Pass
                } else {
                    self.verdicts.remove(0)
                };
                Observation::Verified { verdict }
            }
            Action::Lock { .. } if self.closed_until.is_some_and(|t| self.clock < t) => {
                Observation::Closed {
                    until: t0() + Duration::milliseconds(self.closed_until.unwrap_or_default()),
                    why: "frozen (holidays) until Mon 2027-01-04 00:00 Europe/Berlin".into(),
                }
            }
            Action::Lock { lock } => match &self.lock {
                Some(held) if held.job != lock.job => Observation::Lock {
                    taken: false,
                    holder: Some(held.clone()),
                },
                Some(held) => Observation::Lock {
                    taken: true,
                    holder: Some(held.clone()),
                },
                None => {
                    self.generation += 1;
                    let taken = LockInfo {
                        generation: self.generation,
                        written: self.written,
                        ..lock.clone()
                    };
                    self.lock = Some(taken.clone());
                    Observation::Lock {
                        taken: true,
                        holder: Some(taken),
                    }
                }
            },
            Action::Renew { generation } => {
                self.renewals.push(self.clock);
                let held = self
                    .lock
                    .as_ref()
                    .is_some_and(|l| l.generation == *generation);
                if held && self.stolen_after_renewals == Some(self.renewals.len()) {
                    self.steal();
                    return Observation::Renewed {
                        renewal: Renewal::Held { abort: None },
                    };
                }
                Observation::Renewed {
                    renewal: match &self.lock {
                        Some(l) if l.generation == *generation => Renewal::Held {
                            abort: self.abort.clone(),
                        },
                        other => Renewal::Lost {
                            holder: other.clone(),
                        },
                    },
                }
            }
            Action::Inspect => Observation::Inspected {
                live: self.live.clone().map(Box::new),
                newer_queued: self.newer.clone(),
                faulty: None,
            },
            Action::ResolveNodes => Observation::Nodes {
                nodes: self.nodes.clone(),
            },
            Action::Run(cmd) => {
                let kind = format!("{:?}", cmd.kind).to_lowercase();
                let desc = match cmd.kind {
                    CommandKind::Install => {
                        format!("{kind} {} {}", cmd.version, cmd.nodes.join(","))
                    }
                    _ => format!("{kind} {} {}", cmd.nodes.join(","), cmd.version),
                };
                if let Some(pos) = self.slow.iter().position(|k| *k == cmd.key) {
                    self.slow.remove(pos);
                    // Asked while it runs.
                    if self.abort_after.as_ref() == Some(&desc) {
                        self.abort = Some("@bob".into());
                    }
                    return Observation::Ran {
                        key: cmd.key.clone(),
                        results: cmd
                            .nodes
                            .iter()
                            .map(|n| (n.clone(), NodeResult::Running))
                            .collect(),
                        sent_at: None,
                    };
                }
                if self.lock.as_ref().is_some_and(|l| l.generation > cmd.fence) {
                    let refusal = NodeResult::Failed {
                        exit_code: Some(REFUSED_EXIT),
                        output: format!("{REFUSED} lock generation {} is stale", cmd.fence),
                    };
                    return Observation::Ran {
                        key: cmd.key.clone(),
                        results: cmd
                            .nodes
                            .iter()
                            .map(|n| (n.clone(), refusal.clone()))
                            .collect(),
                        sent_at: None,
                    };
                }
                if !self.results.contains_key(&cmd.key) {
                    self.log.push(desc);
                    self.log_at.push(self.clock);
                    self.fences.push(cmd.fence);
                    let last = self.log.last().cloned();
                    if last.is_some() && last == self.abort_after {
                        self.abort = Some("@bob".into());
                    }
                    if last.is_some() && last == self.stolen_after {
                        self.steal();
                    }
                    let results = cmd
                        .nodes
                        .iter()
                        .map(|n| {
                            if self.gone.contains(&(cmd.kind, n.clone())) {
                                return (
                                    n.clone(),
                                    NodeResult::Gone {
                                        detail: "terminated".into(),
                                    },
                                );
                            }
                            let failing = |kind| {
                                self.fail
                                    .get(&(kind, n.clone(), cmd.version.to_string()))
                                    .cloned()
                            };
                            let r = failing(cmd.kind)
                                .or_else(|| match cmd.kind {
                                    // The node's own wait for health (`until_healthy`).
                                    CommandKind::Restart => {
                                        failing(CommandKind::Health).map(|r| match r {
                                            NodeResult::Failed { exit_code, output } => {
                                                NodeResult::Failed {
                                                    exit_code,
                                                    output: format!(
                                                        "{output}\n{UNHEALTHY} 6 checks in 1 s"
                                                    ),
                                                }
                                            }
                                            r => r,
                                        })
                                    }
                                    _ => None,
                                })
                                .unwrap_or(NodeResult::Succeeded);
                            let r = match (cmd.kind, r) {
                                (CommandKind::Version, NodeResult::Succeeded) => {
                                    NodeResult::Reported {
                                        output: self.installed.get(n).cloned().unwrap_or_default(),
                                    }
                                }
                                (CommandKind::Install, NodeResult::Succeeded) => {
                                    self.installed.insert(n.clone(), cmd.version.to_string());
                                    NodeResult::Succeeded
                                }
                                (_, r) => r,
                            };
                            (n.clone(), r)
                        })
                        .collect();
                    self.results.insert(cmd.key.clone(), results);
                }
                Observation::Ran {
                    key: cmd.key.clone(),
                    results: self.results[&cmd.key]
                        .iter()
                        .filter(|(n, _)| !self.silent.contains(n))
                        .cloned()
                        .collect(),
                    sent_at: None,
                }
            }
            Action::Check {
                stage,
                checks,
                groups,
            } => {
                self.groups.push(groups.clone());
                self.log.push(format!("checks {stage:?}").to_lowercase());
                self.log_at.push(self.clock);
                let script = if self.readings.is_empty() {
                    vec![]
                } else {
                    self.readings.remove(0)
                };
                Observation::Checked {
                    readings: checks
                        .iter()
                        .map(|name| {
                            let r = script
                                .iter()
                                .find(|(n, _)| n == name)
                                .map(|(_, r)| r.clone())
                                .unwrap_or(Reading::Pass {
                                    detail: "0 (needs < 1)".into(),
                                });
                            (name.clone(), r)
                        })
                        .collect(),
                }
            }
            Action::Wait { millis } => {
                self.waited.push(*millis);
                self.clock += *millis as i64;
                Observation::Waited
            }
            Action::Record => {
                self.recorded
                    .push(self.live.as_ref().map(|j| j.id.clone()).unwrap_or_else(|| {
                        JobId::derive("x", "x", &Version::parse("0").unwrap(), "x")
                    }));
                self.written.live += 1;
                Observation::Recorded {
                    written: self.written,
                    promoted: None,
                }
            }
            Action::MarkFaulty { version, reason } => {
                self.marked_at.push(self.log.len());
                self.faulty.push(crate::deploy::history::Faulty {
                    version: version.clone(),
                    job: JobId::derive("x", "x", version, "x"),
                    reason: reason.clone(),
                    at: self.now(),
                });
                self.written.faulty += 1;
                Observation::MarkedFaulty {
                    written: self.written,
                }
            }
            Action::Unlock => {
                self.lock = None;
                Observation::Unlocked
            }
            Action::Finished(_) => unreachable!("the driver stops at Finished"),
        }
    }

    /// Drives `deploy` to the end; `crash_every` replays every n-th step from the state
    /// saved before it, as a driver that died after acting but before saving would.
    fn drive(&mut self, deploy: &mut Deploy, crash_every: Option<usize>) -> (Outcome, Vec<Notice>) {
        self.drive_until(deploy, crash_every, |_| false)
            .expect("the deploy finished")
    }

    /// `drive`, stopping short (`None`) once `until` holds after a step.
    fn drive_until(
        &mut self,
        deploy: &mut Deploy,
        crash_every: Option<usize>,
        until: impl Fn(&Twin) -> bool,
    ) -> Option<(Outcome, Vec<Notice>)> {
        let mut notices = vec![];
        for step in 1..10_000 {
            if until(self) {
                return None;
            }
            deploy.tick(self.now());
            let action = deploy.action();
            assert_eq!(action, deploy.action(), "action() is not pure");
            if let Action::Finished(outcome) = action {
                assert!(
                    self.lock.is_none()
                        || self.lock.as_ref().unwrap().job != Some(deploy.job.id.clone()),
                    "finished holding the lock"
                );
                return Some((outcome, notices));
            }
            if let Action::Record = action {
                self.live = Some(deploy.job.clone());
            }
            if let Action::Unlock = action {
                self.released = Some(deploy.written());
            }
            let rules = self
                .approvals
                .clone()
                .filter(|r| approval::needed(Some(r), &deploy.job));
            let mut obs = match (&action, rules) {
                (Action::Lock { .. }, Some(rules)) if self.closed_until.is_none() => {
                    let clock = self.clock;
                    let given: Vec<Approval> = self
                        .words
                        .iter()
                        .filter(|(at, _)| *at <= clock)
                        .map(|(_, w)| w.clone())
                        .collect();
                    Observation::Approval {
                        standing: rules.standing(&deploy.job, &given, self.now()),
                        approvers: rules.approvers.clone(),
                        timeout_seconds: rules.timeout_seconds,
                    }
                }
                _ => self.execute(&action),
            };
            if let Observation::Inspected { faulty, .. } = &mut obs {
                *faulty =
                    crate::deploy::history::faulty_mark(&self.faulty, &deploy.job.version).cloned();
            }
            if crash_every.is_some_and(|n| step % n == 0) {
                continue; // the observation is lost; the saved state asks again
            }
            notices.extend(
                deploy
                    .observe(self.now(), obs)
                    .expect("observation answers the action"),
            );
        }
        panic!("deploy did not finish");
    }
}

fn run(twin: &mut Twin, job: DeployJob, policy: Rollout) -> (Outcome, Vec<Notice>) {
    let mut d = Deploy::new(job, policy);
    twin.drive(&mut d, None)
}

/// An automatic job the calendar holds back waits (past `lock_wait_seconds`, looking
/// again at least every 15 minutes, saying why once), then deploys as any other.
#[test]
fn an_automatic_job_waits_for_its_calendar_and_then_deploys() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    let closed_ms = 3 * 3_600_000 + 123;
    assert!(policy().lock_wait_seconds * 1000 < closed_ms as u64);
    twin.closed_until = Some(closed_ms);
    let (outcome, notices) = run(&mut twin, job("1.1.0", true), policy());
    assert_eq!(outcome, succeeded());
    let said: Vec<&Notice> = notices
        .iter()
        .filter(|n| matches!(n, Notice::WaitingForWindow { .. }))
        .collect();
    assert_eq!(said.len(), 1, "{notices:?}");
    assert!(twin.waited.iter().all(|&w| w <= CALENDAR_LOOK_MILLIS));
    assert!(twin.waited.iter().sum::<u64>() >= closed_ms as u64);
    assert_eq!(twin.log[0], "install 1.1.0 n1,n2");
    assert!(twin.log_at[0] >= closed_ms, "nothing ran before it opened");
}

/// A month's wait is looked at a fiftieth of what is left apart, not every 15 minutes:
/// each look costs a Step Functions execution some of its 25,000 events.
#[test]
fn a_long_wait_for_the_calendar_looks_again_less_often() {
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    let closed_ms = 30 * 86_400_000;
    twin.closed_until = Some(closed_ms);
    let (outcome, _) = run(&mut twin, job("1.1.0", true), policy());
    assert_eq!(outcome, succeeded());
    let looks = twin.waited.iter().filter(|&&w| w >= 1_000).count();
    assert!(looks < 400, "{looks} looks");
    assert!(twin.waited[0] > CALENDAR_LOOK_MILLIS && twin.waited[0] <= closed_ms as u64 / 50);
    assert!(twin.log_at[0] >= closed_ms);
}

fn approvals() -> Approvals {
    Approvals {
        required: 1,
        approvers: vec!["U1".into(), "U2".into()],
        requester_may_approve: false,
        grace_seconds: 3600,
        timeout_seconds: 600,
    }
}

fn word(twin: &mut Twin, at_ms: i64, job: &DeployJob, by: &str, approved: bool) {
    let word = Approval {
        job: job.id.clone(),
        version: job.version.clone(),
        by: by.into(),
        approved,
        reason: (!approved).then(|| "not on a Friday".into()),
        at: t0() + Duration::milliseconds(at_ms),
    };
    twin.words.push((at_ms, word));
}

/// A deploy to an environment with approvals waits for them (not for the lock, saying so
/// once), then deploys, keeping who approved it in what it records.
#[test]
fn a_deploy_waits_for_approval_then_deploys_keeping_who_approved() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.approvals = Some(approvals());
    let j = job("1.1.0", true);
    word(&mut twin, 30_000, &j, "U9", true);
    word(&mut twin, 95_000, &j, "U2", true);
    let (outcome, notices) = run(&mut twin, j, policy());
    assert_eq!(outcome, succeeded());
    let asked = notices
        .iter()
        .filter(|n| {
            matches!(
                n,
                Notice::AwaitingApproval {
                    have: 0,
                    need: 1,
                    ..
                }
            )
        })
        .count();
    assert_eq!(asked, 1, "{notices:?}");
    assert!(notices.contains(&Notice::Approved {
        by: vec!["U2".into()]
    }));
    assert!(
        twin.log_at[0] >= 95_000,
        "nothing ran before it was approved"
    );
    assert_eq!(
        twin.live.as_ref().unwrap().approved_by,
        vec!["U2".to_string()]
    );
    // Soon at first, never more than a minute apart.
    assert_eq!(twin.waited[0], 5_000);
    assert!(
        twin.waited.iter().all(|&w| w <= 60_000),
        "{:?}",
        twin.waited
    );
}

/// One approver's rejection skips the job with their words: nothing runs, no lock.
#[test]
fn a_rejected_deploy_is_skipped_with_who_rejected_it() {
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.approvals = Some(approvals());
    let j = job("1.1.0", false);
    word(&mut twin, 20_000, &j, "U1", false);
    let (outcome, _) = run(&mut twin, j, policy());
    assert_eq!(
        outcome,
        Outcome::Skipped {
            reason: "rejected by U1: not on a Friday".into()
        }
    );
    assert!(twin.log.is_empty() && twin.lock.is_none() && twin.generation == 0);
}

/// Nobody approves within the timeout: skipped, saying so, nothing run.
#[test]
fn a_deploy_nobody_approves_in_time_is_skipped() {
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.approvals = Some(approvals());
    let (outcome, _) = run(&mut twin, job("1.1.0", true), policy());
    assert_eq!(
        outcome,
        Outcome::Skipped {
            reason: "not approved within 10 min (0 of 1 approvals)".into()
        }
    );
    assert!(
        twin.clock >= 600_000 && twin.clock < 660_000,
        "{}",
        twin.clock
    );
    assert!(twin.log.is_empty() && twin.lock.is_none());
}

/// A rollback never waits for approval.
#[test]
fn a_rollback_needs_no_approval() {
    let mut twin = Twin::new(&["n1"], Some("1.1.0"));
    twin.approvals = Some(approvals());
    let back = job("1.0.0", false).rollback(None, job("1.0.0", false).source, t0());
    let (outcome, notices) = run(&mut twin, back, policy());
    assert_eq!(outcome, succeeded());
    assert!(!notices
        .iter()
        .any(|n| matches!(n, Notice::AwaitingApproval { .. })));
}

/// A person's deploy is refused with the calendar's words: nothing runs, the lock is
/// never taken.
#[test]
fn a_person_s_deploy_the_calendar_holds_back_is_refused_with_its_words() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.closed_until = Some(60_000);
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    let Outcome::Skipped { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        reason,
        "refused: frozen (holidays) until Mon 2027-01-04 00:00 Europe/Berlin; a freeze overrider may deploy with --override REASON"
    );
    assert!(twin.log.is_empty() && twin.lock.is_none() && twin.generation == 0);
}

#[test]
fn happy_path_installs_everywhere_then_restarts_one_at_a_time_in_order() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), policy());
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            "restart n2 1.1.0",
            "restart n3 1.1.0",
        ]
    );
    assert_eq!(twin.recorded.len(), 1);
    assert!(twin.lock.is_none());
    assert_eq!(
        notices.first(),
        Some(&Notice::Started {
            from: Some(Version::parse("1.0.0").unwrap()),
            nodes: 3
        })
    );
    assert_eq!(
        notices.last(),
        Some(&Notice::Finished {
            outcome: succeeded()
        })
    );
}

#[test]
fn install_failure_restarts_nothing_and_puts_the_old_version_back_on_disk() {
    let mut twin =
        Twin::new(&["n1", "n2", "n3"], Some("1.0.0")).fail(CommandKind::Install, "n2", "1.1.0");
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: true, .. } if reason.contains("install of 1.1.0 failed on n2; nothing was restarted")),
        "{outcome:?}"
    );
    assert_eq!(twin.log, ["install 1.1.0 n1,n2,n3", "install 1.0.0 n1,n3"]);
    assert!(twin.recorded.is_empty() && twin.lock.is_none());
    assert!(notices.contains(&Notice::InstallFailed {
        node: "n2".into(),
        detail: "exit 1: n2 broke".into()
    }));

    // Without auto-rollback it just stops.
    let mut twin =
        Twin::new(&["n1", "n2"], Some("1.0.0")).fail(CommandKind::Install, "n2", "1.1.0");
    let (outcome, _) = run(
        &mut twin,
        job("1.1.0", false),
        Rollout {
            auto_rollback: false,
            ..policy()
        },
    );
    assert!(matches!(
        outcome,
        Outcome::Failed {
            rolled_back: false,
            ..
        }
    ));
    assert_eq!(twin.log, ["install 1.1.0 n1,n2"]);
}

#[test]
fn install_failures_within_max_errors_skip_those_nodes() {
    let mut twin =
        Twin::new(&["n1", "n2", "n3"], Some("1.0.0")).fail(CommandKind::Install, "n2", "1.1.0");
    let (outcome, _) = run(
        &mut twin,
        job("1.1.0", false),
        Rollout {
            max_errors: 1,
            ..policy()
        },
    );
    assert_eq!(
        outcome,
        Outcome::Succeeded {
            failed_installs: vec!["n2".into()],
            unhealthy: vec![],
            gone: vec![],
        }
    );
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            "restart n3 1.1.0",
        ]
    );
}

#[test]
fn health_failure_on_node_k_rolls_back_nodes_1_to_k_and_fails_the_job() {
    let mut twin =
        Twin::new(&["n1", "n2", "n3"], Some("1.0.0")).fail(CommandKind::Health, "n2", "1.1.0");
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: true, .. } if reason.contains("n2 failed its health check (6 checks in 1 s, the last: exit 1: n2 broke)")),
        "{outcome:?}"
    );
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            "restart n2 1.1.0",
            // Back to 1.0.0 on disk everywhere the new version landed; restarts only
            // where this deploy restarted, in the same order.
            "install 1.0.0 n1,n2,n3",
            "restart n1 1.0.0",
            "restart n2 1.0.0",
        ]
    );
    assert!(
        twin.recorded.is_empty(),
        "a failed deploy was recorded as live"
    );
    assert!(notices.iter().any(|n| matches!(n, Notice::RollingBack { to, nodes, .. } if to.as_str() == "1.0.0" && nodes == &["n1", "n2"])));
    assert!(twin.waited.is_empty(), "the node waited, not the deploy");
}

/// The log of a rollback from 1.1.0 that put 1.0.0 back on n1 and n2, after the
/// install and the restarts of n1 and n2 (three commands).
const N1_N2_PUT_BACK: [&str; 3] = [
    "install 1.0.0 n1,n2,n3",
    "restart n1 1.0.0",
    "restart n2 1.0.0",
];

#[test]
fn a_failed_drain_hook_fails_its_node_and_rolls_back_without_marking_the_version() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.fail.insert(
        (CommandKind::Restart, "n2".into(), "1.1.0".into()),
        NodeResult::Failed {
            exit_code: Some(3),
            output: format!("target group not found\n{HOOK_FAILED} pre_restart exited 3"),
        },
    );
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: true, .. } if reason.contains("restart of n2 failed (pre_restart exited 3, the last line: exit 3: target group not found)")),
        "{outcome:?}"
    );
    // The node whose hook failed is put back too (its hook may have half run).
    assert_eq!(twin.log[3..], N1_N2_PUT_BACK);
    assert!(
        twin.faulty.is_empty(),
        "a hook's failure is no verdict on the version"
    );

    // A health check failing beside it still is.
    let mut twin =
        Twin::new(&["n1", "n2", "n3"], Some("1.0.0")).fail(CommandKind::Health, "n1", "1.1.0");
    twin.fail.insert(
        (CommandKind::Restart, "n2".into(), "1.1.0".into()),
        NodeResult::Failed {
            exit_code: Some(3),
            output: format!("{HOOK_FAILED} pre_restart exited 3"),
        },
    );
    let policy = Rollout {
        max_failed: crate::deploy::rollout::Share::Nodes(1),
        ..policy()
    };
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy);
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    assert_eq!(twin.faulty.len(), 1, "{:?}", twin.faulty);
}

#[test]
fn a_failed_first_deploy_has_nothing_to_roll_back_to() {
    let mut twin = Twin::new(&["n1", "n2"], None).fail(CommandKind::Restart, "n1", "1.0.0");
    let (outcome, _) = run(&mut twin, job("1.0.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: false, .. } if reason.contains("no earlier version is on record")),
        "{outcome:?}"
    );
    assert_eq!(twin.log, ["install 1.0.0 n1,n2", "restart n1 1.0.0"]);
}

#[test]
fn a_rollback_that_fails_says_so() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"))
        .fail(CommandKind::Health, "n1", "1.1.0")
        .fail(CommandKind::Health, "n1", "1.0.0");
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::RollbackFailed { reason } if reason.contains("n1 stayed unhealthy on 1.0.0")),
        "{outcome:?}"
    );
    assert!(twin.lock.is_none(), "the lock must be released even then");
}

#[test]
fn replayed_steps_never_send_a_second_command() {
    for crash_every in [2, 3, 5, 7] {
        let mut twin =
            Twin::new(&["n1", "n2", "n3"], Some("1.0.0")).fail(CommandKind::Health, "n3", "1.1.0");
        twin.slow = vec!["x".into()];
        let mut d = Deploy::new(job("1.1.0", false), policy());
        let (outcome, _) = twin.drive(&mut d, Some(crash_every));
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    rolled_back: true,
                    ..
                }
            ),
            "crash every {crash_every}: {outcome:?}"
        );
        let mut clean =
            Twin::new(&["n1", "n2", "n3"], Some("1.0.0")).fail(CommandKind::Health, "n3", "1.1.0");
        run(&mut clean, job("1.1.0", false), policy());
        // Every command runs exactly as in a clean run, and each key once.
        assert_eq!(twin.log, clean.log, "crash every {crash_every}");
        assert!(twin.log.iter().any(|l| l == "restart n3 1.1.0"));
    }
}

#[test]
fn a_replayed_or_stale_observation_is_refused_and_changes_nothing() {
    let mut d = Deploy::new(job("1.1.0", false), policy());
    let before = d.clone();
    assert!(d
        .observe(
            t0(),
            Observation::Recorded {
                written: Written::default(),
                promoted: None,
            },
        )
        .is_err());
    assert!(d
        .observe(
            t0(),
            Observation::Ran {
                key: "other".into(),
                results: vec![],
                sent_at: None,
            }
        )
        .is_err());
    assert_eq!(d, before);
}

#[test]
fn commands_still_running_are_polled_not_resent() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    let j = job("1.1.0", false);
    twin.slow = vec![format!("{}:install", j.id), format!("{}:restart:n2", j.id)];
    let (outcome, _) = run(&mut twin, j, policy());
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log.iter().filter(|l| l.starts_with("install")).count(),
        1
    );
    assert_eq!(
        twin.log
            .iter()
            .filter(|l| l.starts_with("restart n2"))
            .count(),
        1
    );
    assert_eq!(twin.waited, [poll_millis(0), poll_millis(0)]);
}

#[test]
fn a_node_that_never_answers_fails_after_the_command_timeout_and_grace() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.silent = vec!["n2".into()];
    let p = policy();
    let limit = (p.command_timeout_seconds as i64 + COMMAND_GRACE_SECONDS) * 1000;
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), p);
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason.contains("n2")),
        "{outcome:?}"
    );
    assert!(notices.iter().any(|n| matches!(n,
        Notice::InstallFailed { node, detail } if node == "n2" && detail.contains("no result from n2"))));
    assert!(!twin.log.iter().any(|l| l.starts_with("restart")));
    // Polls start quick and back off to the steady interval; the wait covers the limit.
    assert_eq!(
        twin.waited[..11],
        [
            250,
            250,
            250,
            250,
            500,
            500,
            500,
            500,
            500,
            500,
            POLL_MILLIS
        ]
    );
    let total: u64 = twin.waited.iter().sum();
    assert!(total as i64 >= limit && (total as i64) < limit + POLL_MILLIS as i64 * 2);
}

#[test]
fn what_the_lock_holders_wrote_is_handed_on_with_the_lock() {
    // The ledger's versions came with the lock; the deploy adds its own writes and
    // releases the lock with them, for the next holder's reads to wait for.
    let before = Written { live: 7, faulty: 3 };
    let mut twin = Twin {
        written: before,
        ..Twin::new(&["n1", "n2"], Some("1.0.0"))
    };
    let mut d = Deploy::new(job("1.1.0", false), policy());
    assert_eq!(twin.drive(&mut d, None).0, succeeded());
    assert_eq!(twin.released, Some(Written { live: 8, faulty: 3 }));

    let mut twin = Twin {
        written: before,
        ..Twin::new(&["n1", "n2"], Some("1.0.0")).fail(CommandKind::Restart, "n1", "1.2.0")
    };
    let mut d = Deploy::new(job("1.2.0", false), policy());
    let (outcome, _) = twin.drive(&mut d, None);
    assert!(matches!(outcome, Outcome::Failed { .. }), "{outcome:?}");
    assert_eq!(twin.released, Some(Written { live: 7, faulty: 4 }));
}

#[test]
fn a_held_lock_makes_the_deploy_wait_then_go() {
    let other = job("0.9.0", false);
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.lock = Some(LockInfo {
        holder: format!("job {}", other.id),
        reason: "deploying".into(),
        since: t0(),
        expires: None,
        job: Some(other.id.clone()),
        generation: 1,
        abort: None,
        written: Written::default(),
    });
    let mut d = Deploy::new(job("1.1.0", false), policy());
    let mut notices = vec![];
    for _ in 0..4 {
        let obs = twin.execute(&d.action());
        notices.extend(d.observe(twin.now(), obs).unwrap());
    }
    assert!(twin.log.is_empty(), "ran commands without the lock");
    assert!(
        matches!(notices.as_slice(), [Notice::WaitingForLock { .. }]),
        "{notices:?}"
    );
    twin.lock = None;
    let (outcome, _) = twin.drive(&mut d, None);
    assert_eq!(outcome, succeeded());
    assert_eq!(twin.waited[..2], [2000, 4000], "back-off between tries");
}

#[test]
fn a_lock_held_too_long_fails_the_deploy_without_touching_nodes() {
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.lock = Some(LockInfo {
        holder: "@ann".into(),
        reason: "db migration".into(),
        since: t0(),
        expires: None,
        job: None,
        generation: 1,
        abort: None,
        written: Written::default(),
    });
    let (outcome, _) = run(
        &mut twin,
        job("1.1.0", false),
        Rollout {
            lock_wait_seconds: 300,
            ..policy()
        },
    );
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason.contains("waiting 300 s for the lock held by @ann (db migration)")),
        "{outcome:?}"
    );
    assert!(twin.log.is_empty());
    assert!(twin.waited.iter().all(|w| *w <= LOCK_RETRY_MAX_MILLIS));
    assert_eq!(
        twin.lock.as_ref().map(|l| l.holder.as_str()),
        Some("@ann"),
        "someone else's lock was released"
    );
}

#[test]
fn a_lock_already_ours_is_taken_over_after_a_crash() {
    let j = job("1.1.0", false);
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    let mut d = Deploy::new(j, policy());
    d.observe(t0(), twin.execute(&Action::Verify)).unwrap();
    let Action::Lock { lock } = d.action() else {
        panic!()
    };
    twin.lock = Some(lock.clone());
    let obs = Observation::Lock {
        taken: false,
        holder: Some(lock),
    };
    d.observe(t0(), obs).unwrap();
    assert_eq!(d.phase, Phase::Inspect);
}

#[test]
fn superseded_and_already_live_automatic_jobs_are_skipped() {
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.newer = Some(Version::parse("1.2.0").unwrap());
    let (outcome, notices) = run(&mut twin, job("1.1.0", true), policy());
    assert_eq!(
        outcome,
        Outcome::Skipped {
            reason: "superseded by 1.2.0, queued behind it".into()
        }
    );
    assert!(twin.log.is_empty() && twin.recorded.is_empty() && twin.lock.is_none());
    assert_eq!(notices, [Notice::Finished { outcome }]);

    // A person asking for a version gets it, newer queued or not.
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert_eq!(outcome, succeeded());

    let mut twin = Twin::new(&["n1"], Some("1.1.0"));
    let (outcome, _) = run(&mut twin, job("1.1.0", true), policy());
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.starts_with("1.1.0 is already live")),
        "{outcome:?}"
    );
}

#[test]
fn an_automatic_job_never_lowers_the_live_version_but_a_person_may() {
    // An older wheel uploaded (or an old tag pushed) after a newer version went live,
    // whenever either was asked for.
    for asked_later in [false, true] {
        let mut twin = Twin::new(&["n1"], Some("2.0.0"));
        let mut old = job("1.5.0", true);
        if asked_later {
            old.requested_at = t0() + Duration::hours(1);
        }
        let (outcome, _) = run(&mut twin, old, policy());
        assert_eq!(
            outcome,
            Outcome::Skipped {
                reason: "1.5.0 is older than live 2.0.0; deploy it by hand to go back".into()
            }
        );
        assert!(twin.log.is_empty() && twin.recorded.is_empty() && twin.lock.is_none());
    }
    let mut twin = Twin::new(&["n1"], Some("2.0.0"));
    let (outcome, _) = run(&mut twin, job("1.5.0", false), policy());
    assert_eq!(outcome, succeeded());
    assert_eq!(twin.live.unwrap().version.as_str(), "1.5.0");
}

fn mark(version: &str) -> crate::deploy::history::Faulty {
    crate::deploy::history::Faulty {
        version: Version::parse(version).unwrap(),
        job: JobId::derive(
            "hello",
            "production",
            &Version::parse(version).unwrap(),
            "x",
        ),
        reason: "job x rolled back from it".into(),
        at: t0(),
    }
}

#[test]
fn a_failed_health_check_marks_the_version_faulty_and_automatic_jobs_skip_it() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0")).fail(CommandKind::Health, "n1", "1.1.0");
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), policy());
    assert!(matches!(
        outcome,
        Outcome::Failed {
            rolled_back: true,
            ..
        }
    ));
    let versions: Vec<_> = twin.faulty.iter().map(|f| f.version.as_str()).collect();
    assert_eq!(versions, ["1.1.0"]);
    assert!(
        twin.faulty[0].reason.contains("n1 failed its health check"),
        "{}",
        twin.faulty[0].reason
    );
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::MarkedFaulty { version, .. } if version.as_str() == "1.1.0")));
    assert!(twin.lock.is_none());

    // The same version, tagged again or uploaded again, stays out.
    let before = twin.log.len();
    let (outcome, _) = run(&mut twin, job("1.1", true), policy());
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.starts_with("1.1 is marked faulty (job ")),
        "{outcome:?}"
    );
    assert_eq!(twin.log.len(), before);

    // A person may still send it out, and is told.
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.faulty.push(mark("1.1.0"));
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), policy());
    assert_eq!(outcome, succeeded());
    assert!(notices.iter().any(
        |n| matches!(n, Notice::DeployingFaulty { mark } if mark.version.as_str() == "1.1.0")
    ));
}

fn rollback_of(live: &DeployJob, to: &str) -> DeployJob {
    job(to, false).rollback(
        Some(&live.id),
        Source::Cli {
            user: "ann".into(),
            nonce: "rb".into(),
        },
        t0(),
    )
}

#[test]
fn a_rollback_marks_the_version_it_replaced_and_undoes_only_that_deploy() {
    let mut twin = Twin::new(&["n1"], Some("1.1.0"));
    let live = twin.live.clone().unwrap();
    let (outcome, notices) = run(&mut twin, rollback_of(&live, "1.0.0"), policy());
    assert_eq!(outcome, succeeded());
    let versions: Vec<_> = twin.faulty.iter().map(|f| f.version.as_str()).collect();
    assert_eq!(versions, ["1.1.0"]);
    assert!(twin.faulty[0]
        .reason
        .starts_with("rolled back to 1.0.0 by ann"));
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::MarkedFaulty { .. })));

    // A rollback asked against a deploy that is no longer live does nothing.
    let mut twin = Twin::new(&["n1"], Some("1.2.0"));
    let (outcome, _) = run(&mut twin, rollback_of(&live, "1.0.0"), policy());
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.starts_with("1.2.0 went live since this rollback was asked for")),
        "{outcome:?}"
    );
    assert!(twin.log.is_empty() && twin.faulty.is_empty());

    // Nor does one whose target was marked faulty meanwhile.
    let mut twin = Twin::new(&["n1"], Some("1.1.0"));
    twin.live = Some(live.clone());
    twin.faulty.push(mark("1.0.0"));
    let (outcome, _) = run(&mut twin, rollback_of(&live, "1.0.0"), policy());
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.starts_with("1.0.0 was marked faulty since")),
        "{outcome:?}"
    );
}

#[test]
fn the_canary_bakes_and_is_checked_again_before_the_rest() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    let (outcome, _) = run(
        &mut twin,
        job("1.1.0", false),
        Rollout {
            bake_seconds: 30,
            ..policy()
        },
    );
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2",
            "restart n1 1.1.0",
            "health n1 1.1.0",
            "restart n2 1.1.0",
        ]
    );
    assert_eq!(twin.waited, [30_000]);
}

#[test]
fn no_nodes_is_a_failure_not_a_success() {
    let mut twin = Twin::new(&[], Some("1.0.0"));
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason == "no nodes found for hello/production")
    );
    assert!(twin.lock.is_none());
}

#[test]
fn the_state_survives_a_json_round_trip_mid_deploy() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    let mut d = Deploy::new(job("1.1.0", false), policy());
    for _ in 0..6 {
        let obs = twin.execute(&d.action());
        d.observe(twin.now(), obs).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Deploy>(&json).unwrap(), d);
    }
}

fn pending(wait_seconds: u64) -> Verdict {
    Verdict::Pending {
        reason: "required check test is pending".into(),
        wait_seconds,
    }
}

#[test]
fn a_refused_version_is_skipped_before_taking_the_lock() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    let reason = "tag v1.1.0 (abc1234) is not on main".to_string();
    twin.verdicts = vec![Verdict::Refuse {
        reason: reason.clone(),
    }];
    let (outcome, notices) = run(&mut twin, job("1.1.0", true), policy());
    assert_eq!(outcome, Outcome::Skipped { reason });
    assert!(twin.log.is_empty() && twin.recorded.is_empty());
    assert!(twin.lock.is_none());
    assert_eq!(notices.len(), 1, "{notices:?}");
}

#[test]
fn pending_checks_are_waited_for_within_their_bound() {
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.verdicts = vec![pending(60), pending(60)];
    let (outcome, notices) = run(&mut twin, job("1.1.0", true), policy());
    assert_eq!(outcome, succeeded());
    assert_eq!(twin.verifies, 3);
    assert_eq!(twin.waited[..2], [5_000, 10_000]);
    let waiting = notices
        .iter()
        .filter(|n| matches!(n, Notice::WaitingForChecks { .. }))
        .count();
    assert_eq!(waiting, 1, "said once, not on every look");

    // Still pending at the bound: skipped, saying so; with no bound, at once.
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.verdicts = vec![pending(60); 20];
    let (outcome, _) = run(&mut twin, job("1.2.0", true), policy());
    assert!(
        matches!(&outcome, Outcome::Skipped { reason } if reason.ends_with("pending, still after 60 s")),
        "{outcome:?}"
    );
    assert!(
        twin.clock >= 60_000 && twin.clock < 120_000,
        "{}",
        twin.clock
    );
    assert!(twin.log.is_empty());
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.verdicts = vec![pending(0)];
    let (outcome, _) = run(&mut twin, job("1.2.0", true), policy());
    assert_eq!(
        outcome,
        Outcome::Skipped {
            reason: "required check test is pending".into()
        }
    );
    assert!(twin.waited.is_empty());
}

#[test]
fn forced_jobs_and_rollbacks_do_not_ask_the_gate() {
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.verdicts = vec![Verdict::Refuse {
        reason: "no".into(),
    }];
    let forced = job("1.1.0", false).forced();
    assert_eq!(forced.forced_by.as_deref(), Some("ann"));
    assert_eq!(run(&mut twin, forced, policy()).0, succeeded());
    let back = job("1.0.0", false).rollback(None, job("1.1.0", false).source, t0());
    assert_eq!(run(&mut twin, back, policy()).0, succeeded());
    assert_eq!(twin.verifies, 0);
}

fn sync_job(nodes: &[&str], version: &str) -> DeployJob {
    DeployJob::new(
        "hello",
        "production",
        "hello-app".parse().unwrap(),
        Version::parse(version).unwrap(),
        Source::Sync {
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            by: "ann".into(),
            nonce: "1".into(),
        },
        t0(),
    )
}

#[test]
fn a_sync_installs_and_restarts_only_the_nodes_off_the_live_version() {
    let mut twin = Twin::new(&["n1", "n2", "n3", "n4"], Some("1.1.0"));
    for (n, v) in [
        ("n1", "Name: hello-app\nVersion: 1.1\n"),
        ("n2", "1.0.0"),
        ("n3", "1.1.0"),
    ] {
        twin.installed.insert(n.into(), v.into());
    }
    // Queued while 1.0.0 was live; 1.1.0 went live before it ran: nodes get 1.1.0.
    let (outcome, notices) = run(&mut twin, sync_job(&[], "1.0.0"), policy());
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        [
            "version n1,n2,n3,n4 1.1.0",
            "install 1.1.0 n2,n4",
            "restart n2 1.1.0",
            "restart n4 1.1.0",
        ]
    );
    let drifted: Vec<_> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::Drifted {
                node, installed, ..
            } => Some((node.as_str(), installed.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        drifted,
        [("n2", Some(Version::parse("1.0.0").unwrap())), ("n4", None)]
    );
    assert!(twin.recorded.is_empty(), "a sync is not a new live version");
    assert!(twin.lock.is_none());

    // All in sync now: nothing runs but the probe.
    twin.log.clear();
    let mut again = sync_job(&[], "1.1.0");
    again.source = Source::Sync {
        nodes: vec![],
        by: "ann".into(),
        nonce: "2".into(),
    };
    assert_eq!(run(&mut twin, again, policy()).0, succeeded());
    assert_eq!(twin.log, ["version n1,n2,n3,n4 1.1.0"]);
}

#[test]
fn a_sync_of_one_new_node_touches_no_other() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.1.0"));
    let (outcome, _) = run(&mut twin, sync_job(&["n3"], "1.1.0"), policy());
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        ["version n3 1.1.0", "install 1.1.0 n3", "restart n3 1.1.0",]
    );

    // A node that is not (yet) among the environment's nodes fails the sync, naming it.
    let (outcome, _) = run(&mut twin, sync_job(&["n9"], "1.1.0"), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason.starts_with("n9: not among")),
        "{outcome:?}"
    );
}

#[test]
fn a_failed_sync_puts_nothing_back_and_nothing_live_skips() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.1.0")).fail(CommandKind::Health, "n2", "1.1.0");
    twin.installed.insert("n1".into(), "1.1.0".into());
    let (outcome, _) = run(&mut twin, sync_job(&[], "1.1.0"), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { rolled_back: false, reason, .. } if reason.contains("n2 failed its health check")),
        "{outcome:?}"
    );
    assert_eq!(
        twin.log[..3],
        [
            "version n1,n2 1.1.0",
            "install 1.1.0 n2",
            "restart n2 1.1.0"
        ]
    );
    assert!(
        twin.log[3..].iter().all(|l| l == "health n2 1.1.0"),
        "n1 untouched, nothing reinstalled: {:?}",
        twin.log
    );

    let mut twin = Twin::new(&["n1"], None);
    let (outcome, _) = run(&mut twin, sync_job(&[], "1.1.0"), policy());
    assert!(matches!(outcome, Outcome::Skipped { .. }), "{outcome:?}");
    assert!(twin.log.is_empty());
}

#[test]
fn every_command_carries_the_lock_generation_and_the_lease_is_renewed_before_each_restart() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.generation = 41;
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert_eq!(outcome, succeeded());
    assert!(twin.fences.iter().all(|f| *f == 42), "{:?}", twin.fences);
    assert_eq!(twin.renewals.len(), 3, "one heartbeat before each restart");
}

#[test]
fn no_pause_outlasts_the_lease_while_the_lock_is_held() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    let bake = 600;
    let (outcome, _) = run(
        &mut twin,
        job("1.1.0", false),
        Rollout {
            bake_seconds: bake,
            ..policy()
        },
    );
    assert_eq!(outcome, succeeded());
    let renew_ms = LEASE_RENEW_SECONDS * 1000;
    assert!(
        twin.waited.iter().all(|w| *w as i64 <= renew_ms),
        "{:?}",
        twin.waited
    );
    assert!(
        twin.waited.iter().sum::<u64>() >= bake * 1000,
        "the bake was cut short"
    );
    // Renewed at least every LEASE_RENEW_SECONDS all along: no gap in which the lease
    // (LEASE_SECONDS) could lapse.
    for pair in twin.renewals.windows(2) {
        assert!(pair[1] - pair[0] <= renew_ms * 2, "{:?}", twin.renewals);
    }
    assert!(twin.renewals.len() as u64 >= bake / LEASE_RENEW_SECONDS as u64);
}

#[test]
fn a_deploy_that_lost_its_lock_stops_before_its_next_command_and_says_so() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.stolen_after = Some("restart n1 1.1.0".into());
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: false, .. } if reason.contains("lost the lock of hello/production to job other (deploying hello 9.9.9)")),
        "{outcome:?}"
    );
    assert_eq!(
        twin.log.last().unwrap(),
        "restart n1 1.1.0",
        "{:?}",
        twin.log
    );
    assert_eq!(
        twin.lock.as_ref().map(|l| l.holder.as_str()),
        Some("job other"),
        "released someone else's lock"
    );
    assert!(twin.faulty.is_empty());
    assert_eq!(outcome.left_behind().as_deref(), Some("n1"));
    assert!(matches!(notices.last(), Some(Notice::Finished { .. })));
}

#[test]
fn a_refused_command_means_the_lock_is_lost_and_nothing_more_is_sent() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    // Renewed before restarting n1 and n2; taken over right after the second renewal.
    let renewals_before_n2 = {
        let mut probe = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
        let mut d = Deploy::new(job("1.1.0", false), policy());
        probe.drive_until(&mut d, None, |t| t.log.len() == 2);
        probe.renewals.len() + 1
    };
    twin.stolen_after_renewals = Some(renewals_before_n2);
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: false, .. } if reason.contains("n2 refused this deploy's command")),
        "{outcome:?}"
    );
    assert_eq!(twin.log, ["install 1.1.0 n1,n2,n3", "restart n1 1.1.0"]);
    assert_eq!(outcome.left_behind().as_deref(), Some("n1"));
    assert_eq!(
        twin.lock.as_ref().map(|l| l.holder.as_str()),
        Some("job other")
    );
    assert!(twin.recorded.is_empty() && twin.faulty.is_empty());
    assert!(matches!(notices.last(), Some(Notice::Finished { .. })));
}

#[test]
fn a_success_not_yet_recorded_when_the_lock_is_lost_is_a_failure_naming_its_nodes() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    let mut d = Deploy::new(job("1.1.0", false), policy());
    let stopped = twin.drive_until(&mut d, None, |t| t.log.len() == 3);
    assert!(stopped.is_none());
    while d.phase != Phase::Record {
        let action = d.action();
        let obs = twin.execute(&action);
        d.observe(twin.now(), obs).unwrap();
    }
    let mut notices = vec![];
    d.lost_lock(
        "lost the lock of hello/production to nobody".into(),
        &mut notices,
    );
    let Some(Notice::Finished { outcome }) = notices.last() else {
        panic!("{notices:?}")
    };
    assert!(
        matches!(outcome, Outcome::Failed { reason, .. } if reason.contains("before it recorded 1.1.0 as live")),
        "{outcome:?}"
    );
    assert_eq!(outcome.left_behind().as_deref(), Some("n1, n2"));
    assert_eq!(d.action(), Action::Finished(outcome.clone()));
}

#[test]
fn a_node_that_goes_away_is_dropped_and_the_rollout_goes_on_marking_nothing() {
    // Within the failure budget, a node gone while restarting is left out.
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.gone.push((CommandKind::Restart, "n2".into()));
    let budget = Rollout {
        max_failed: crate::deploy::rollout::Share::Nodes(1),
        ..policy()
    };
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), budget);
    assert_eq!(
        outcome,
        Outcome::Succeeded {
            failed_installs: vec![],
            unhealthy: vec![],
            gone: vec!["n2".into()],
        }
    );
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            "restart n2 1.1.0",
            "restart n3 1.1.0",
        ]
    );
    assert!(notices.contains(&Notice::Gone {
        node: "n2".into(),
        detail: "terminated".into()
    }));
    assert_eq!(twin.recorded.len(), 1);
    assert!(twin.faulty.is_empty());

    // Past it, the rollout stops and puts back the others, blaming nothing on 1.1.0: a
    // version that takes nodes down does not roll across the fleet.
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.gone.push((CommandKind::Restart, "n2".into()));
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: true, .. } if reason.contains("1 node(s) went away while restarting on 1.1.0")),
        "{outcome:?}"
    );
    assert_eq!(&twin.log[3..], ["install 1.0.0 n1,n3", "restart n1 1.0.0"]);
    assert!(twin.faulty.is_empty() && twin.recorded.is_empty());
    assert_eq!(outcome.left_behind().as_deref(), Some("n2"));

    // Gone during the install: never restarted.
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.gone.push((CommandKind::Install, "n1".into()));
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert_eq!(outcome.left_behind().as_deref(), Some("n1 gone"));
    assert_eq!(twin.log, ["install 1.1.0 n1,n2", "restart n2 1.1.0"]);

    // Every node gone: nothing to go live on, and nothing to blame the version for.
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.gone.push((CommandKind::Install, "n1".into()));
    twin.gone.push((CommandKind::Install, "n2".into()));
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, .. } if reason.contains("every node of hello/production went away")),
        "{outcome:?}"
    );
    assert!(twin.recorded.is_empty() && twin.faulty.is_empty());
}

#[test]
fn only_a_version_that_served_is_marked_and_the_mark_comes_before_the_rollback() {
    // An install failure is no verdict on the version.
    let mut twin =
        Twin::new(&["n1", "n2"], Some("1.0.0")).fail(CommandKind::Install, "n2", "1.1.0");
    run(&mut twin, job("1.1.0", false), policy());
    assert!(twin.faulty.is_empty(), "{:?}", twin.faulty);

    // A failed health check is, written before the first command that puts 1.0.0 back.
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0")).fail(CommandKind::Health, "n2", "1.1.0");
    let (_, notices) = run(&mut twin, job("1.1.0", false), policy());
    assert_eq!(twin.faulty.len(), 1);
    assert_eq!(twin.faulty[0].version.as_str(), "1.1.0");
    assert_eq!(twin.marked_at, [3], "{:?}", twin.log);
    assert_eq!(twin.log[3], "install 1.0.0 n1,n2");
    let marked = notices
        .iter()
        .position(|n| matches!(n, Notice::MarkedFaulty { .. }));
    let rolling = notices
        .iter()
        .position(|n| matches!(n, Notice::RollingBack { .. }));
    assert!(marked.is_some() && rolling < marked, "{notices:?}");

    // A re-deploy of the live version that fails rolls back from nothing.
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0")).fail(CommandKind::Health, "n2", "1.0.0");
    let again = DeployJob::new(
        "hello",
        "production",
        "hello-app".parse().unwrap(),
        Version::parse("1.0.0").unwrap(),
        Source::Cli {
            user: "ann".into(),
            nonce: "again".into(),
        },
        t0(),
    );
    let (outcome, _) = run(&mut twin, again, policy());
    // (Putting 1.0.0 back on n2 fails the same way.)
    assert!(
        matches!(outcome, Outcome::RollbackFailed { .. }),
        "{outcome:?}"
    );
    assert!(twin.faulty.is_empty(), "{:?}", twin.faulty);
}

#[test]
fn a_driver_that_cannot_go_on_puts_back_what_it_changed_and_marks_nothing() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    let mut d = Deploy::new(job("1.1.0", false), policy());
    // Stopped while n2's restart is in flight: n2 counts as restarted.
    twin.slow.push(format!("{}:restart:n2", d.job.id));
    twin.drive_until(&mut d, None, |t| t.slow.is_empty());
    let notices = d
        .stop(twin.now(), "SSM kept answering ThrottlingException")
        .unwrap();
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, Notice::RollingBack { nodes, .. } if nodes == &["n1", "n2"])),
        "{notices:?}"
    );
    let (outcome, _) = twin.drive(&mut d, None);
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: true, .. } if reason.contains("could not go on: SSM kept answering ThrottlingException")),
        "{outcome:?}"
    );
    assert_eq!(
        // (The twin logs a slow command once it answers: n2's never did.)
        &twin.log[2..],
        [
            "install 1.0.0 n1,n2,n3",
            "restart n1 1.0.0",
            "restart n2 1.0.0"
        ]
    );
    assert!(twin.faulty.is_empty() && twin.recorded.is_empty() && twin.lock.is_none());
    // Stopped again (putting back failed too): the driver gives up.
    assert_eq!(d.stop(twin.now(), "again"), None);

    // Before it touched a node: it just ends, releasing the lock.
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    let mut d = Deploy::new(job("1.1.0", false), policy());
    twin.drive_until(&mut d, None, |t| t.lock.is_some());
    d.stop(twin.now(), "no answer").unwrap();
    let (outcome, _) = twin.drive(&mut d, None);
    assert!(
        matches!(
            outcome,
            Outcome::Failed {
                rolled_back: false,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(twin.log.is_empty() && twin.lock.is_none());
}

#[test]
fn a_person_deploying_a_marked_version_lifts_the_mark_once_it_succeeds() {
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.faulty.push(crate::deploy::history::Faulty {
        version: Version::parse("1.1.0").unwrap(),
        job: JobId::derive("x", "x", &Version::parse("1.1.0").unwrap(), "x"),
        reason: "rolled back".into(),
        at: t0(),
    });
    let mut d = Deploy::new(job("1.1.0", false), policy());
    let (outcome, notices) = twin.drive(&mut d, None);
    assert_eq!(outcome, succeeded());
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::DeployingFaulty { .. })));
    assert_eq!(d.clears.as_ref().map(|m| m.version.as_str()), Some("1.1.0"));
    assert_eq!(twin.recorded.len(), 1);
}

#[test]
fn an_abort_stops_after_the_command_in_flight_and_puts_back_what_was_restarted() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.abort_after = Some("restart n2 1.1.0".into());
    // The restart of n2 runs for a minute: a heartbeat brings the abort meanwhile.
    let mut d = Deploy::new(job("1.1.0", false), policy());
    for _ in 0..40 {
        twin.slow.push(format!("{}:restart:n2", d.job.id));
    }
    let (outcome, notices) = twin.drive(&mut d, None);
    assert_eq!(
        outcome,
        Outcome::Aborted {
            by: "@bob".into(),
            rolled_back: true,
            reason: "aborted by @bob".into(),
            left_behind: vec![],
        }
    );
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            "restart n2 1.1.0",
            "install 1.0.0 n1,n2,n3",
            "restart n1 1.0.0",
            "restart n2 1.0.0",
        ]
    );
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::Aborting { by } if by == "@bob")));
    assert!(twin.lock.is_none(), "an aborted deploy releases its lock");
    assert!(
        twin.faulty.is_empty(),
        "an abort is no verdict on the version"
    );
    assert!(twin.recorded.is_empty());
}

#[test]
fn an_abort_seen_by_a_replayed_step_waits_for_the_command_the_failed_step_may_have_sent() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.abort_after = Some("restart n2 1.1.0".into());
    let mut d = Deploy::new(job("1.1.0", false), policy());
    // The step that sends n2's restart fails after it went out (its answer lost)...
    loop {
        d.tick(twin.now());
        let action = d.action();
        let n2 = matches!(&action, Action::Run(c) if c.nodes == ["n2"]);
        let obs = twin.execute(&action);
        if n2 {
            break;
        }
        d.observe(twin.now(), obs).unwrap();
    }
    // ... and the state machine tries it again later: the lease is renewed first, and
    // the abort asked meanwhile comes with it. The restart that may have gone out is
    // waited for and put back, not left on the new version.
    twin.clock += LEASE_RENEW_SECONDS * 1000;
    d.in_doubt(twin.now());
    let (outcome, _) = twin.drive(&mut d, None);
    assert!(
        matches!(
            outcome,
            Outcome::Aborted {
                rolled_back: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(twin.log[3..], N1_N2_PUT_BACK);
}

#[test]
fn a_command_a_retried_step_sends_late_is_waited_for_from_its_send() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    let mut d = Deploy::new(job("1.1.0", false), policy());
    let is_install = |a: &Action| matches!(a, Action::Run(c) if c.kind == CommandKind::Install);
    while !is_install(&d.action()) {
        let obs = twin.execute(&d.action());
        d.observe(twin.now(), obs).unwrap();
    }
    // The step that was to send the install failed; its retry counts the install as
    // running from its start, and is held up past the install's time before it sends
    // it (not found: it never went out).
    d.in_doubt(twin.now());
    let waited = policy().command_seconds(CommandKind::Install) as i64 + COMMAND_GRACE_SECONDS;
    twin.clock += (waited + 60) * 1000;
    loop {
        d.tick(twin.now());
        if is_install(&d.action()) {
            break;
        }
        let obs = twin.execute(&d.action());
        d.observe(twin.now(), obs).unwrap();
    }
    let Action::Run(cmd) = d.action() else {
        unreachable!()
    };
    let running = Observation::Ran {
        key: cmd.key.clone(),
        results: cmd
            .nodes
            .iter()
            .map(|n| (n.clone(), NodeResult::Running))
            .collect(),
        sent_at: Some(twin.now()),
    };
    d.observe(twin.now(), running).unwrap();
    // Given up on at once, it would end the deploy (and free the lock) while it runs.
    assert!(
        matches!(d.action(), Action::Wait { .. }),
        "{:?}",
        d.action()
    );
    let (outcome, _) = twin.drive(&mut d, None);
    assert_eq!(outcome, succeeded());
}

#[test]
fn an_abort_between_nodes_restarts_no_further_node() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.abort_after = Some("restart n1 1.1.0".into());
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    assert!(
        matches!(
            outcome,
            Outcome::Aborted {
                rolled_back: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert_eq!(
        twin.log[2..],
        ["install 1.0.0 n1,n2,n3", "restart n1 1.0.0",]
    );
}

fn batched(batches: &str, max_failed: &str) -> Rollout {
    #[derive(serde::Deserialize)]
    struct Shares {
        batches: Vec<crate::deploy::rollout::Share>,
        max_failed: crate::deploy::rollout::Share,
    }
    let s: Shares =
        toml::from_str(&format!("batches = {batches}\nmax_failed = {max_failed}")).unwrap();
    Rollout {
        batches: s.batches,
        max_failed: s.max_failed,
        ..policy()
    }
}

#[test]
fn batches_restart_in_node_order_and_the_last_size_repeats() {
    let nodes = ["n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8"];
    let mut twin = Twin::new(&nodes, Some("1.0.0"));
    // 50% of 8 is 4: then 4 again, of which one node is left.
    let (outcome, notices) = run(
        &mut twin,
        job("1.1.0", false),
        batched(r#"[1, 2, "50%"]"#, "0"),
    );
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3,n4,n5,n6,n7,n8",
            "restart n1 1.1.0",
            "restart n2,n3 1.1.0",
            "restart n4,n5,n6,n7 1.1.0",
            "restart n8 1.1.0",
        ]
    );
    let healthy: Vec<_> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::Healthy { node } => Some(node.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(healthy, nodes, "node order holds within and across batches");

    // A share too small for one node still restarts one; the lease is renewed before
    // each batch.
    assert_eq!(batched(r#"["20%"]"#, "0").batch_size(3, 3), 1);
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    run(&mut twin, job("1.1.0", false), batched("[1, 2]", "0"));
    assert_eq!(twin.renewals.len(), 2);
}

#[test]
fn a_batch_names_only_its_nodes_that_stayed_unhealthy() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.fail.insert(
        (CommandKind::Health, "n3".into(), "1.1.0".into()),
        NodeResult::Failed {
            exit_code: Some(7),
            output: "not yet".into(),
        },
    );
    let mut d = Deploy::new(job("1.1.0", false), batched("[3]", "1"));
    let (outcome, _) = twin.drive(&mut d, None);
    assert_eq!(
        outcome,
        Outcome::Succeeded {
            failed_installs: vec![],
            unhealthy: vec!["n3".into()],
            gone: vec![],
        }
    );
    assert_eq!(twin.log[1..], ["restart n1,n2,n3 1.1.0"]);
}

#[test]
fn failures_within_the_budget_are_named_and_the_rollout_goes_on() {
    let nodes = ["n1", "n2", "n3", "n4", "n5", "n6"];
    let mut twin = Twin::new(&nodes, Some("1.0.0")).fail(CommandKind::Health, "n3", "1.1.0");
    let (outcome, notices) = run(
        &mut twin,
        job("1.1.0", false),
        batched("[1, 2]", r#""20%""#),
    );
    assert_eq!(
        outcome,
        Outcome::Succeeded {
            failed_installs: vec![],
            unhealthy: vec!["n3".into()],
            gone: vec![],
        }
    );
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3,n4,n5,n6",
            "restart n1 1.1.0",
            "restart n2,n3 1.1.0",
            "restart n4,n5 1.1.0",
            "restart n6 1.1.0",
        ]
    );
    assert!(notices.contains(&Notice::Unhealthy {
        node: "n3".into(),
        detail: "6 checks in 1 s, the last: exit 1: n3 broke".into()
    }));
    assert_eq!(twin.recorded.len(), 1, "the version is live");
    let Some(Notice::Finished { outcome }) = notices.last() else {
        panic!("no outcome")
    };
    assert_eq!(outcome.left_behind().as_deref(), Some("n3 unhealthy"));
}

#[test]
fn one_failure_past_the_budget_rolls_back_exactly_the_restarted_nodes_in_batches() {
    let nodes = ["n1", "n2", "n3", "n4", "n5", "n6"];
    let mut twin = Twin::new(&nodes, Some("1.0.0"))
        .fail(CommandKind::Health, "n3", "1.1.0")
        .fail(CommandKind::Health, "n5", "1.1.0");
    // 20% of 6 is one failure allowed: n3 is, n5 is one too many.
    let (outcome, notices) = run(
        &mut twin,
        job("1.1.0", false),
        batched("[1, 2]", r#""20%""#),
    );
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: true, .. } if reason.starts_with("n5 failed its health check")),
        "{outcome:?}"
    );
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3,n4,n5,n6",
            "restart n1 1.1.0",
            "restart n2,n3 1.1.0",
            "restart n4,n5 1.1.0",
            // n6 was never restarted: it only gets the old version back on disk.
            "install 1.0.0 n1,n2,n3,n4,n5,n6",
            "restart n1 1.0.0",
            "restart n2,n3 1.0.0",
            "restart n4,n5 1.0.0",
        ]
    );
    assert!(notices.iter().any(|n| matches!(n, Notice::RollingBack { nodes, .. } if nodes == &["n1", "n2", "n3", "n4", "n5"])));
    assert!(twin.recorded.is_empty());
}

#[test]
fn a_failed_restart_stops_mid_batch_before_any_health_check() {
    let mut twin = Twin::new(&["n1", "n2", "n3", "n4"], Some("1.0.0")).fail(
        CommandKind::Restart,
        "n3",
        "1.1.0",
    );
    let (outcome, notices) = run(&mut twin, job("1.1.0", false), batched("[1, 3]", "0"));
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: true, .. } if reason == "restart of n3 failed (exit 1: n3 broke)"),
        "{outcome:?}"
    );
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3,n4",
            "restart n1 1.1.0",
            "restart n2,n3,n4 1.1.0",
            // The batch's health is never checked: the budget is already spent.
            "install 1.0.0 n1,n2,n3,n4",
            "restart n1 1.0.0",
            "restart n2,n3,n4 1.0.0",
        ]
    );
    assert!(notices.contains(&Notice::Restarted { node: "n4".into() }));
}

#[test]
fn shares_read_as_counts_or_percentages_and_refuse_anything_else() {
    use crate::deploy::rollout::Share;
    let p = batched(r#"[1, 5, "20%", 0]"#, r#""10%""#);
    assert_eq!(
        p.batches,
        [
            Share::Nodes(1),
            Share::Nodes(5),
            Share::Percent(20),
            Share::None
        ]
    );
    assert_eq!(p.failure_budget(25), 2);
    assert_eq!(p.batch_size(2, 1000), 200);
    assert_eq!(
        p.batch_size(9, 1000),
        1,
        "the last entry repeats, and 0 is still one"
    );
    for bad in [r#""101%""#, r#""x%""#, r#""5""#, "-1", "1.5"] {
        let r: Result<toml::Value, _> = toml::from_str(&format!("v = {bad}"));
        let parsed = r.ok().and_then(|v| v["v"].clone().try_into::<Share>().ok());
        assert_eq!(parsed, None, "{bad} was taken");
    }
    let json = serde_json::to_string(&p.batches).unwrap();
    assert_eq!(json, r#"[1,5,"20%",0]"#);
}

#[test]
fn a_running_restart_is_first_looked_at_when_the_ones_before_it_were_seen_finished() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    let j = job("1.1.0", false);
    // Each restart answers Running this many times (its send's answer the first).
    let slow = |node: &str, times: usize| vec![format!("{}:restart:{node}", j.id); times];
    twin.slow = [slow("n1", 4), slow("n2", 1), slow("n3", 3)].concat();
    let mut d = Deploy::new(j, policy());
    let (outcome, _) = twin.drive(&mut d, None);
    assert_eq!(outcome, succeeded());
    // n1 on the usual schedule: seen finished at 1,000 ms. n2 is first looked at then,
    // and found finished: n3 is first looked at 2 % earlier, found running, and looked
    // at on the schedule until it is seen finished at 1,480 ms.
    assert_eq!(twin.waited, [250, 250, 250, 250, 1000, 980, 250, 250]);
    assert_eq!(d.took.restart, Some(1480), "the next one's first look");
    assert_eq!(d.took.health, None, "health checks answered at once");
}

#[test]
fn a_first_look_moves_earlier_when_it_found_its_command_finished_and_later_when_not() {
    use super::phases::next_first_look;
    // Without one yet: when the look that found it finished was due.
    assert_eq!(next_first_look(None, 750, 4), 1000);
    assert_eq!(next_first_look(None, 0, 1), 250);
    // Found finished (nothing seen running since the send): 2 % earlier.
    assert_eq!(next_first_look(Some(3000), 0, 1), 2940);
    // Found running: when the look that found it finished was due after the last that
    // saw it running (at 500 ms after the ninth look), however late it came.
    assert_eq!(next_first_look(Some(3000), 3600, 9), 4100);
    assert_eq!(next_first_look(Some(3000), 3000, 2), 3250);
}

/// (xii) The state Step Functions carries between steps stays under its 256 KB at 10,000
/// nodes with AWS's instance ids, through a deploy with install failures, unhealthy and
/// gone nodes and a rollback; every list an outcome keeps is capped.
#[test]
fn a_ten_thousand_node_deploy_keeps_its_state_under_256_kb() {
    let names: Vec<String> = (0..10_000)
        .map(|i| format!("i-{:017x}", 0xabc0_0000_u64 + i))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut twin = Twin::new(&refs, Some("1.0.0"));
    for i in (3..10_000).step_by(97) {
        twin = twin.fail(CommandKind::Install, &names[i], "1.1.0");
    }
    for i in (5..6_000).step_by(89) {
        twin.gone.push((CommandKind::Restart, names[i].clone()));
    }
    twin = twin.fail(CommandKind::Health, &names[6_001], "1.1.0");
    let policy = Rollout {
        max_errors: 200,
        max_failed: crate::deploy::rollout::Share::Percent(10),
        batches: vec![
            crate::deploy::rollout::Share::Nodes(1),
            crate::deploy::rollout::Share::Nodes(5),
            crate::deploy::rollout::Share::Percent(20),
        ],
        ..policy()
    };
    let mut d = Deploy::new(job("1.1.0", false), policy);
    let mut largest = 0;
    let mut notices = vec![];
    for _ in 0..10_000 {
        d.tick(twin.now());
        largest = largest.max(serde_json::to_vec(&d).unwrap().len());
        let action = d.action();
        if let Action::Finished(_) = action {
            break;
        }
        let obs = twin.execute(&action);
        notices.extend(d.observe(twin.now(), obs).unwrap());
    }
    let outcome = d.outcome.clone().unwrap();
    assert!(matches!(outcome, Outcome::Succeeded { .. }), "{outcome:?}");
    let left = outcome.left_behind().unwrap();
    assert!(
        left.contains("… and 94 more") && left.len() < 1_500,
        "{left}"
    );
    // What the rest of the state holds (the job, 200 SSM command ids, the chat memo)
    // is under 16 KB.
    assert!(
        largest < 240 * 1024,
        "the deploy's state reached {largest} bytes"
    );
    eprintln!("10,000 nodes: the deploy's state peaked at {largest} bytes");
    let round: Deploy = serde_json::from_slice(&serde_json::to_vec(&d).unwrap()).unwrap();
    assert_eq!(round, d);
}

/// Past what one execution's state can carry, a deploy ends before it touches a node
/// (a step result over 256 KB cannot be caught, and would strand the deploy mid-rollout).
#[test]
fn a_fleet_too_big_for_the_deploys_state_is_refused_before_any_node_is_touched() {
    let names: Vec<String> = (0..10_500)
        .map(|i| format!("i-{:017x}", 0xabc0_0000_u64 + i))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut twin = Twin::new(&refs, Some("1.0.0"));
    let (outcome, _) = run(&mut twin, job("1.1.0", false), policy());
    let reason = outcome.reason().unwrap_or_default().to_string();
    assert!(
        reason.contains("10500 nodes are more than one deploy can carry")
            && reason.contains("split hello/production"),
        "{reason}"
    );
    assert!(twin.log.is_empty(), "{:?}", twin.log);
    // 10,000 such nodes still go (see the test above).
    assert!(super::phases::too_many_to_carry(&names[..10_000]).is_none());
}

#[test]
fn a_batch_travels_as_runs_of_indices_and_reads_back() {
    let batch = Batch {
        number: 2,
        nodes: vec![0, 1, 2, 5, 7, 8],
    };
    let json = serde_json::to_string(&batch).unwrap();
    assert_eq!(json, r#"{"number":2,"nodes":"0-2,5,7-8"}"#);
    assert_eq!(serde_json::from_str::<Batch>(&json).unwrap(), batch);
    let old: Batch = serde_json::from_str(r#"{"number":2,"nodes":[0,1,2,5,7,8]}"#).unwrap();
    assert_eq!(old, batch);
    assert!(serde_json::from_str::<Batch>(r#"{"number":0,"nodes":"3-1"}"#).is_err());
    let huge = r#"{"number":0,"nodes":"0-18446744073709551615"}"#;
    assert!(
        serde_json::from_str::<Batch>(huge).is_err(),
        "no run past a fleet"
    );
}

#[test]
fn a_job_cancelled_before_it_started_ends_through_unlock_and_touches_nothing() {
    let cancelled = Outcome::cancelled("U2");
    let by = || Observation::Cancelled {
        by: "U2".into(),
        holder: None,
    };
    // Cancelled while it waited for its checks, or for the lock: it ends through Unlock
    // (an earlier try may have taken the lock unseen; releasing frees only its own).
    for at_lock in [false, true] {
        let mut twin = Twin::new(&["n1"], Some("1.0.0"));
        let mut d = Deploy::new(job("1.1.0", false), policy());
        let now = twin.now();
        if at_lock {
            d.observe(now, twin.execute(&Action::Verify)).unwrap();
            assert!(matches!(d.action(), Action::Lock { .. }));
        } else {
            assert_eq!(d.action(), Action::Verify);
        }
        assert_eq!(d.observe(now, by()).unwrap(), []);
        assert_eq!(d.action(), Action::Unlock);
        assert_eq!(
            d.observe(now, Observation::Unlocked).unwrap(),
            [Notice::Finished {
                outcome: cancelled.clone()
            }]
        );
        assert_eq!(d.action(), Action::Finished(cancelled.clone()));
    }
    assert_eq!(
        crate::deploy::status::JobStatus::from(&cancelled),
        crate::deploy::status::JobStatus::Cancelled
    );

    // Cancelled first, learnt once it holds the lock: it releases it, nothing else.
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    let mut d = Deploy::new(job("1.1.0", false), policy());
    let now = twin.now();
    d.observe(now, twin.execute(&Action::Verify)).unwrap();
    let Observation::Lock { holder, .. } = twin.execute(&d.action()) else {
        panic!()
    };
    d.observe(
        now,
        Observation::Cancelled {
            by: "U2".into(),
            holder,
        },
    )
    .unwrap();
    assert_eq!(d.action(), Action::Unlock);
    let (outcome, _) = twin.drive(&mut d, None);
    assert_eq!(outcome, cancelled);
    assert!(twin.log.is_empty() && twin.lock.is_none(), "{:?}", twin.log);
}

#[test]
fn a_driver_stopped_while_trying_the_lock_gives_up_so_the_lock_is_released() {
    // The try may have taken the lock, its answer lost: the engine cannot know, and
    // leaves it to the driver's give_up, which releases whatever this job holds.
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    let mut d = Deploy::new(job("1.1.0", false), policy());
    d.observe(twin.now(), twin.execute(&Action::Verify))
        .unwrap();
    assert!(matches!(d.action(), Action::Lock { .. }));
    assert_eq!(d.stop(twin.now(), "no answer"), None);
}

#[test]
fn a_lock_got_back_as_it_stood_is_renewed_before_anything_is_done_under_it() {
    // A try at the lock whose answer was lost took it; the try again, much later, gets
    // it back with the expiry it had then: the deploy renews before it inspects.
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    let mut d = Deploy::new(job("1.1.0", false), policy());
    let now = twin.now();
    d.observe(now, twin.execute(&Action::Verify)).unwrap();
    let Action::Lock { lock } = d.action() else {
        panic!("{:?}", d.action())
    };
    let held = LockInfo {
        expires: Some(now - Duration::seconds(5)),
        generation: 1,
        ..lock
    };
    d.observe(
        now,
        Observation::Lock {
            taken: true,
            holder: Some(held),
        },
    )
    .unwrap();
    d.tick(now);
    assert_eq!(d.action(), Action::Renew { generation: 1 });
    // A lock taken now is not renewed at once.
    let mut d = Deploy::new(job("1.1.0", false), policy());
    d.observe(now, twin.execute(&Action::Verify)).unwrap();
    let Action::Lock { lock } = d.action() else {
        panic!()
    };
    let fresh = LockInfo {
        expires: Some(LockInfo::lease_from(
            now,
            crate::deploy::lock::lease_seconds(d.policy.longest_command_seconds()),
        )),
        generation: 2,
        ..lock
    };
    d.observe(
        now,
        Observation::Lock {
            taken: true,
            holder: Some(fresh),
        },
    )
    .unwrap();
    d.tick(now);
    assert_eq!(d.action(), Action::Inspect);
}

fn rules(no_data: &[(&str, NoData)]) -> Vec<Rule> {
    no_data
        .iter()
        .map(|(name, no_data)| Rule {
            name: name.to_string(),
            no_data: *no_data,
            analysis: None,
            per_version: true,
            on_nodes: false,
        })
        .collect()
}

fn fail(detail: &str) -> Reading {
    Reading::Fail {
        detail: detail.into(),
    }
}

fn no_data() -> Reading {
    Reading::NoData {
        detail: "the query returned no series".into(),
    }
}

fn checked(policy: Rollout) -> Rollout {
    Rollout {
        check_interval_seconds: 10,
        check_wait_seconds: 30,
        ..policy
    }
}

fn run_checked(
    twin: &mut Twin,
    job: DeployJob,
    policy: Rollout,
    checks: Vec<Rule>,
) -> (Outcome, Vec<Notice>) {
    let mut d = Deploy::new(job, checked(policy)).with_checks(checks);
    twin.drive(&mut d, None)
}

#[test]
fn checks_are_read_through_the_bake_after_each_batch_and_while_watching() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    let policy = Rollout {
        bake_seconds: 25,
        watch_seconds: 20,
        ..policy()
    };
    let (outcome, notices) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy,
        rules(&[("errors", NoData::Fail)]),
    );
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            // The bake, read every 10 s and at its end; then the canary's health once.
            "checks canary",
            "checks canary",
            "checks canary",
            "health n1 1.1.0",
            "restart n2 1.1.0",
            "checks batch",
            "restart n3 1.1.0",
            // The last node's checks are the watch's.
            "checks watch",
            "checks watch",
        ]
    );
    assert_eq!(twin.waited, [10_000, 10_000, 5_000, 10_000, 10_000, 10_000]);
    let passed = notices
        .iter()
        .filter(|n| matches!(n, Notice::ChecksPassed { .. }))
        .count();
    assert_eq!(passed, 3, "{notices:?}");
    assert_eq!(twin.recorded.len(), 1);
}

#[test]
fn a_failing_check_rolls_back_what_restarted_and_marks_the_version() {
    for (stage, reads, restarted) in [
        (Stage::Canary, 1, vec!["n1"]),
        (Stage::Batch, 3, vec!["n1", "n2"]),
        (Stage::Watch, 4, vec!["n1", "n2", "n3"]),
    ] {
        let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
        // Passing reads up to the one that fails.
        twin.readings = vec![vec![]; reads - 1];
        twin.readings
            .push(vec![("errors", fail("0.05 (needs < 0.01)"))]);
        let policy = Rollout {
            bake_seconds: 20,
            watch_seconds: 20,
            ..policy()
        };
        let (outcome, notices) = run_checked(
            &mut twin,
            job("1.1.0", false),
            policy,
            rules(&[("latency", NoData::Fail), ("errors", NoData::Fail)]),
        );
        let Outcome::Failed {
            reason,
            rolled_back: true,
            ..
        } = &outcome
        else {
            panic!("{stage:?}: {outcome:?}");
        };
        assert_eq!(
            *reason,
            format!("check errors failed {stage}: 0.05 (needs < 0.01)")
        );
        assert!(notices.contains(&Notice::CheckFailed {
            check: "errors".into(),
            stage,
            detail: "0.05 (needs < 0.01)".into(),
        }));
        // Marked before the rollback, which restarts exactly what had restarted.
        assert_eq!(twin.faulty.len(), 1, "{stage:?}");
        assert_eq!(twin.faulty[0].version.to_string(), "1.1.0");
        let back: Vec<String> = restarted
            .iter()
            .map(|n| format!("restart {n} 1.0.0"))
            .collect();
        let after = &twin.log[twin.marked_at[0]..];
        assert_eq!(after[0], "install 1.0.0 n1,n2,n3", "{stage:?}");
        assert_eq!(after[1..], back[..], "{stage:?}");
        assert!(twin.recorded.is_empty(), "{stage:?}");
    }
}

#[test]
fn a_check_without_data_is_read_again_then_follows_its_no_data() {
    // No data at first: read again, and the rollout waits for it.
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.readings = vec![vec![("errors", no_data())], vec![("errors", no_data())]];
    let (outcome, _) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy(),
        rules(&[("errors", NoData::Fail)]),
    );
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2",
            "restart n1 1.1.0",
            "checks batch",
            "checks batch",
            "checks batch",
            "restart n2 1.1.0",
            "checks batch",
        ]
    );

    // No data past the wait: `fail` rolls back, marking nothing (the metrics may be
    // at fault, not the version).
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.readings = vec![vec![("errors", no_data())]; 10];
    let (outcome, notices) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy(),
        rules(&[("errors", NoData::Fail)]),
    );
    assert!(
        matches!(&outcome, Outcome::Failed { rolled_back: true, reason, .. }
            if reason.starts_with("check errors after a batch: no data 30 s after the restart")),
        "{outcome:?}"
    );
    assert_eq!(twin.log.iter().filter(|l| *l == "checks batch").count(), 3);
    assert!(twin.faulty.is_empty());
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::CheckFailed { check, .. } if check == "errors")));

    // `pass`: passed over once its wait is over, saying so.
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.readings = vec![vec![("errors", no_data())]; 10];
    let (outcome, notices) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy(),
        rules(&[("errors", NoData::Pass)]),
    );
    assert_eq!(outcome, succeeded());
    assert_eq!(twin.log.iter().filter(|l| *l == "checks batch").count(), 1);
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::ChecksPassed { readings, .. }
        if readings[0].starts_with("errors: no data, passed over"))));
}

#[test]
fn a_rollback_and_a_sync_read_no_checks() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.1.0"));
    twin.readings = vec![vec![("errors", fail("red since the last deploy"))]; 10];
    let live = twin.live.clone().unwrap();
    let policy = Rollout {
        watch_seconds: 60,
        ..policy()
    };
    let (outcome, _) = run_checked(
        &mut twin,
        rollback_of(&live, "1.0.0"),
        policy.clone(),
        rules(&[("errors", NoData::Fail)]),
    );
    assert_eq!(outcome, succeeded());
    assert!(
        !twin.log.iter().any(|l| l.starts_with("checks")),
        "{:?}",
        twin.log
    );

    let mut twin = Twin::new(&["n1", "n2"], Some("1.1.0"));
    twin.readings = vec![vec![("errors", fail("red"))]; 10];
    twin.installed.insert("n1".into(), "1.1.0".into());
    let (outcome, _) = run_checked(
        &mut twin,
        sync_job(&["n1", "n2"], "1.1.0"),
        policy,
        rules(&[("errors", NoData::Fail)]),
    );
    assert!(matches!(outcome, Outcome::Succeeded { .. }), "{outcome:?}");
    assert!(
        !twin.log.iter().any(|l| l.starts_with("checks")),
        "{:?}",
        twin.log
    );
}

#[test]
fn an_abort_while_checks_are_read_puts_everything_back() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.abort_after = Some("restart n2 1.1.0".into());
    let policy = Rollout {
        watch_seconds: 600,
        ..policy()
    };
    let (outcome, _) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy,
        rules(&[("errors", NoData::Fail)]),
    );
    assert!(
        matches!(
            outcome,
            Outcome::Aborted {
                rolled_back: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(twin.log.ends_with(&[
        "restart n1 1.0.0".to_string(),
        "restart n2 1.0.0".to_string()
    ]));
    assert!(twin.faulty.is_empty());
}

fn scraped(canary: (u64, u64), baseline: (u64, u64)) -> Reading {
    let served = |(requests, errors)| Served {
        requests,
        errors,
        buckets: vec![],
    };
    let node = |name: &str, canary: bool, counts| NodeServed {
        node: name.into(),
        canary,
        served: served(counts),
    };
    Reading::Scraped {
        scrape: Box::new(Scrape {
            nodes: vec![node("n1", true, canary), node("n2", false, baseline)],
            unanswered: vec![],
        }),
    }
}

fn versus() -> Vec<Rule> {
    vec![Rule {
        name: "versus".into(),
        no_data: NoData::Fail,
        analysis: Some(Settings {
            alpha_ppm: 10_000,
            min_requests: 100,
        }),
        per_version: true,
        on_nodes: false,
    }]
}

#[test]
fn the_canary_is_compared_with_the_nodes_still_on_the_old_version() {
    let baked = Rollout {
        bake_seconds: 30,
        ..policy()
    };
    // 5 % errors on the canary, none on the baseline: worse at the first window.
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.readings = vec![
        vec![("versus", scraped((0, 0), (0, 0)))],
        vec![("versus", scraped((200, 10), (400, 0)))],
    ];
    let (outcome, notices) = run_checked(&mut twin, job("1.1.0", false), baked.clone(), versus());
    assert!(
        matches!(&outcome, Outcome::Failed { reason, rolled_back: true, .. }
            if reason == "check versus failed on the canary: error ratio 5.0 % (10 of 200) on n1 (1.1.0) vs 0.0 % (0 of 400) on 2 baseline nodes (1.0.0), p < 0.001"),
        "{outcome:?}"
    );
    assert_eq!(
        twin.groups[0],
        Groups {
            canary: vec!["n1".into()],
            baseline: vec!["n2".into(), "n3".into()],
        }
    );
    assert_eq!(twin.faulty.len(), 1);
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::CheckFailed { .. })));

    // Alike: it passes once the bake is over, then n1 and n2 are compared with n3; the
    // last batch has nothing left to compare with and is not read.
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    twin.readings = vec![
        vec![("versus", scraped((0, 0), (0, 0)))],
        vec![("versus", scraped((200, 1), (400, 2)))],
        vec![("versus", scraped((400, 2), (800, 4)))],
        vec![("versus", scraped((0, 0), (0, 0)))],
        vec![("versus", scraped((300, 1), (150, 1)))],
    ];
    let (outcome, _) = run_checked(&mut twin, job("1.1.0", false), baked, versus());
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            "checks canary",
            "checks canary",
            "checks canary",
            "health n1 1.1.0",
            "restart n2 1.1.0",
            // A first scrape, then a window of enough requests.
            "checks batch",
            "checks batch",
            "restart n3 1.1.0",
        ]
    );
    assert_eq!(twin.groups[3].canary, ["n1", "n2"]);
    assert_eq!(twin.groups[3].baseline, ["n3"]);
}

#[test]
fn a_fleet_wide_check_rolls_back_without_marking_and_a_broken_one_whatever_no_data_says() {
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.readings = vec![vec![("errors", fail("0.2 (needs < 0.01)"))]];
    let mut fleet_wide = rules(&[("errors", NoData::Fail)]);
    fleet_wide[0].per_version = false;
    let (outcome, _) = run_checked(&mut twin, job("1.1.0", false), policy(), fleet_wide);
    assert!(
        matches!(
            outcome,
            Outcome::Failed {
                rolled_back: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    assert!(twin.faulty.is_empty());

    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.readings = vec![vec![(
        "errors",
        Reading::Refused {
            detail: "Prometheus answered 400: parse error".into(),
        },
    )]];
    let (outcome, _) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy(),
        rules(&[("errors", NoData::Pass)]),
    );
    assert!(
        matches!(&outcome, Outcome::Failed { rolled_back: true, reason, .. }
            if reason == "check errors could not be read after a batch: Prometheus answered 400: parse error"),
        "{outcome:?}"
    );
    assert!(twin.faulty.is_empty());
}

fn node_check(name: &str) -> Rule {
    Rule {
        name: name.into(),
        no_data: NoData::Fail,
        analysis: None,
        per_version: true,
        on_nodes: true,
    }
}

/// A node check is run through the fleet on every node this deploy restarted, before
/// each reading of the other checks, a command of its own each time.
#[test]
fn a_node_check_runs_on_the_restarted_nodes_before_the_other_checks() {
    let mut twin = Twin::new(&["n1", "n2", "n3"], Some("1.0.0"));
    let policy = Rollout {
        watch_seconds: 10,
        ..policy()
    };
    let mut checks = rules(&[("errors", NoData::Fail)]);
    checks.push(node_check("disk"));
    let (outcome, notices) = run_checked(&mut twin, job("1.1.0", false), policy, checks);
    assert_eq!(outcome, succeeded());
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            "check n1 1.1.0",
            "checks batch",
            "restart n2 1.1.0",
            "check n1,n2 1.1.0",
            "checks batch",
            "restart n3 1.1.0",
            "check n1,n2,n3 1.1.0",
            "checks watch",
        ]
    );
    let said: Vec<&Vec<String>> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::ChecksPassed { readings, .. } => Some(readings),
            _ => None,
        })
        .collect();
    assert_eq!(
        said.last().map(|r| r.as_slice()),
        Some(
            &[
                "errors: 0 (needs < 1)".to_string(),
                "disk: exit 0 on 3 nodes".to_string()
            ][..]
        ),
        "{notices:?}"
    );
}

/// A node where the check exits other than 0 fails it: the deploy rolls back and marks
/// the version (the check ran on its own nodes). A node gone is left out; with every
/// node gone the check has no data.
#[test]
fn a_node_check_failing_on_a_node_rolls_back_and_marks_and_a_gone_node_is_left_out() {
    let mut twin =
        Twin::new(&["n1", "n2", "n3"], Some("1.0.0")).fail(CommandKind::Check, "n2", "1.1.0");
    let (outcome, notices) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy(),
        vec![node_check("disk")],
    );
    let Outcome::Failed {
        reason,
        rolled_back: true,
        ..
    } = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        reason,
        "check disk failed after a batch: failed on n2 (exit 1: n2 broke)"
    );
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::CheckFailed { check, .. } if check == "disk")));
    assert_eq!(twin.faulty.len(), 1);
    assert_eq!(twin.faulty[0].version.to_string(), "1.1.0");
    assert!(twin.recorded.is_empty());

    // n2's check finds it gone: the others decide.
    let mut twin = Twin::new(&["n1", "n2"], Some("1.0.0"));
    twin.gone.push((CommandKind::Check, "n2".into()));
    let (outcome, notices) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy(),
        vec![node_check("disk")],
    );
    assert_eq!(outcome, succeeded(), "{notices:?}");
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, Notice::ChecksPassed { readings, .. }
            if readings == &["disk: exit 0 on 1 node, 1 did not answer".to_string()])),
        "{notices:?}"
    );
    // Every node gone: no data, read again, then `no_data` decides (marking nothing).
    let mut twin = Twin::new(&["n1"], Some("1.0.0"));
    twin.gone.push((CommandKind::Check, "n1".into()));
    let (outcome, _) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy(),
        vec![node_check("disk")],
    );
    let Outcome::Failed { reason, .. } = &outcome else {
        panic!("{outcome:?}");
    };
    assert!(reason.contains("no node answered (n1)"), "{reason}");
    assert!(twin.faulty.is_empty());
}

/// With no node healthy on the version (one failed within `max_failed`), a node check
/// has nowhere to run and is not read, rather than read again until it lacks data.
#[test]
fn a_node_check_waits_for_a_healthy_node_on_the_version() {
    let mut twin =
        Twin::new(&["n1", "n2", "n3"], Some("1.0.0")).fail(CommandKind::Health, "n1", "1.1.0");
    let policy = Rollout {
        canary: false,
        max_failed: crate::deploy::rollout::Share::Nodes(1),
        ..policy()
    };
    let (outcome, notices) = run_checked(
        &mut twin,
        job("1.1.0", false),
        policy,
        vec![node_check("disk")],
    );
    assert!(
        matches!(outcome, Outcome::Succeeded { .. }),
        "{outcome:?} {notices:?}"
    );
    assert_eq!(
        twin.log,
        [
            "install 1.1.0 n1,n2,n3",
            "restart n1 1.1.0",
            // Nothing read after n1: no node serves the version.
            "restart n2 1.1.0",
            "check n2 1.1.0",
            "checks batch",
            "restart n3 1.1.0",
            "check n2,n3 1.1.0",
            "checks batch",
        ]
    );
}
