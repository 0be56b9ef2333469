//! How a deploy advances on each result: one method per observation and per phase.

use chrono::{DateTime, Duration, Utc};

use super::*;
use crate::deploy::analysis::{self, Settings, Tally};
use crate::deploy::approval::{look_millis, Standing};
use crate::deploy::checks::{NoData, Reading, Rule, Stage};
use crate::deploy::command::{tail, Command, NodeResult, HOOK_FAILED, UNHEALTHY};
use crate::deploy::history::Faulty;
use crate::deploy::job::{DeployJob, Source};
use crate::deploy::lists;
use crate::deploy::lock::{lease_seconds, LockInfo};
use crate::deploy::version::Version;

/// Why a node failed a command: its exit code and the last line it printed; for a restart
/// whose service never passed its health check, how often the node checked (what its
/// `UNHEALTHY` line says), and the exit code and last line of its last check.
struct Failure {
    checks: Option<String>,
    /// Which drain hook failed, and how (what its `HOOK_FAILED` line says).
    hook: Option<String>,
    detail: String,
}

impl Failure {
    fn of(r: &NodeResult) -> Failure {
        let NodeResult::Failed { exit_code, output } = r else {
            return Failure {
                checks: None,
                hook: None,
                detail: String::new(),
            };
        };
        let code = exit_code.map_or("?".to_string(), |c| c.to_string());
        // The last line says what went wrong (the error after a traceback, say); the
        // whole tail stays with the command's result.
        let mut lines = output.lines().rev().filter(|l| !l.trim().is_empty());
        let last = lines.next().unwrap_or("").trim();
        let (checks, hook, said) = if let Some(checks) = last.strip_prefix(UNHEALTHY) {
            let said = lines.next().unwrap_or("");
            (Some(checks.trim().to_string()), None, said)
        } else if let Some(hook) = last.strip_prefix(HOOK_FAILED) {
            (
                None,
                Some(hook.trim().to_string()),
                lines.next().unwrap_or(""),
            )
        } else {
            (None, None, last)
        };
        let said: String = said.trim().chars().take(DETAIL_CHARS).collect();
        Failure {
            checks,
            hook,
            detail: format!("exit {code}: {said}"),
        }
    }
}

/// For a notice: "exit 1: HTTP 502", or for a node that stayed unhealthy "12 checks in
/// 30 s, the last: exit 1: HTTP 502".
impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.checks, &self.hook) {
            (Some(checks), _) => write!(f, "{checks}, the last: {}", self.detail),
            (None, Some(hook)) => write!(f, "{hook}, the last line: {}", self.detail),
            (None, None) => f.write_str(&self.detail),
        }
    }
}

/// When (ms after its send) to first look at the next command of a kind, from this one:
/// `first`, when this one's first look was due (`None`: on the usual schedule), `seen`,
/// the last look that found it running, and `polls`, how many found it running (its
/// send's answer the first). Each look is an API call on AWS, and a restart holds up the
/// next node until it is seen finished. A first look that found its command finished
/// comes `FIRST_LOOK_EARLIER_PERCENT` earlier next time, so that commands that get
/// quicker are followed (a look that comes too early costs a call and one poll interval
/// at most). One that found it running moves to when the look that found it finished was
/// due, not when it came: a late look (a throttled call, say) must not push every later
/// one back.
pub(super) fn next_first_look(first: Option<u64>, seen: u64, polls: u32) -> u64 {
    match first {
        Some(first) if seen < first => first - first * FIRST_LOOK_EARLIER_PERCENT / 100,
        _ => seen + poll_millis(polls.saturating_sub(1)),
    }
}

fn detail(r: &NodeResult) -> String {
    Failure::of(r).to_string()
}

impl Deploy {
    /// `name` went away: dropped from the deploy (see `NodeResult::Gone`).
    fn went(&mut self, name: &str, detail: String, notices: &mut Vec<Notice>) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.name == name) {
            node.state = NodeState::Gone;
        }
        notices.push(Notice::Gone {
            node: name.to_string(),
            detail,
        });
    }

    pub(super) fn on_verdict(
        &mut self,
        now: DateTime<Utc>,
        verdict: Verdict,
        notices: &mut Vec<Notice>,
    ) {
        let Phase::Verify { since, tries } = self.phase.clone() else {
            unreachable!("Action::Verify comes only from Phase::Verify")
        };
        match verdict {
            Verdict::Pass => self.phase = Phase::Lock,
            Verdict::Refuse { reason } => self.finish(Outcome::Skipped { reason }, notices),
            Verdict::Pending {
                reason,
                wait_seconds,
            } => {
                let since = since.unwrap_or(now);
                if now - since >= Duration::seconds(wait_seconds as i64) {
                    let reason = if wait_seconds == 0 {
                        reason
                    } else {
                        format!("{reason}, still after {wait_seconds} s")
                    };
                    self.finish(Outcome::Skipped { reason }, notices);
                } else {
                    if tries == 0 {
                        notices.push(Notice::WaitingForChecks {
                            reason,
                            wait_seconds,
                        });
                    }
                    self.wait = Some(
                        (VERIFY_FIRST_RETRY_MILLIS << tries.min(5)).min(VERIFY_RETRY_MAX_MILLIS),
                    );
                    self.phase = Phase::Verify {
                        since: Some(since),
                        tries: tries + 1,
                    };
                }
            }
        }
    }

    /// The calendar holds this job back: a person's deploy is refused (they may override),
    /// an automatic one waits, not for the lock (its wait for the lock starts afresh).
    pub(super) fn on_closed(
        &mut self,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
        why: String,
        notices: &mut Vec<Notice>,
    ) {
        if !self.job.source.is_automatic() {
            let reason =
                format!("refused: {why}; a freeze overrider may deploy with --override REASON");
            // An earlier try at the lock may have taken it unseen (its answer lost): end
            // through Unlock, which frees it only if this job holds it.
            self.locked = true;
            return self.finish(Outcome::Skipped { reason }, notices);
        }
        self.lock_waiting_since = None;
        self.lock_tries = 0;
        // A wait for approval starts again once the calendar opens: its timeout is the
        // approvers' time, not the freeze's.
        self.approval_asked = None;
        if self.closed.as_deref() != Some(why.as_str()) {
            notices.push(Notice::WaitingForWindow { why: why.clone() });
            self.closed = Some(why);
        }
        // Every 15 minutes, or a fiftieth of a long wait: each look is a few events of a
        // Step Functions execution's 25,000.
        let left = (until - now).num_milliseconds().max(1_000) as u64;
        self.wait = Some(left.min(CALENDAR_LOOK_MILLIS.max(left / 50)));
    }

    /// Where this job stands on its environment's approvals: approved, it goes for the
    /// lock at once (and keeps who approved it); rejected, it is skipped; otherwise it
    /// waits, not for the lock, saying so once, until `timeout_seconds` from its first ask.
    pub(super) fn on_approval(
        &mut self,
        now: DateTime<Utc>,
        standing: Standing,
        approvers: Vec<String>,
        timeout_seconds: u64,
        notices: &mut Vec<Notice>,
    ) {
        match standing {
            Standing::Approved { by } => {
                notices.push(Notice::Approved { by: by.clone() });
                self.job.approved_by = by;
                self.closed = None;
            }
            // Approval is asked before any try at the lock, and never again once given:
            // no lock to free.
            Standing::Rejected { by, reason } => {
                let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                let reason = format!("rejected by {by}{why}");
                self.finish(Outcome::Skipped { reason }, notices);
            }
            Standing::Waiting { have, need } => {
                if self.approval_looks == 0 {
                    notices.push(Notice::AwaitingApproval {
                        have,
                        need,
                        approvers,
                    });
                }
                let asked = *self.approval_asked.get_or_insert(now);
                let waited = (now - asked).num_seconds().max(0);
                if waited >= timeout_seconds as i64 {
                    let reason = format!(
                        "not approved within {} ({have} of {need} approvals)",
                        crate::deploy::dora::human(timeout_seconds as i64)
                    );
                    return self.finish(Outcome::Skipped { reason }, notices);
                }
                self.lock_waiting_since = None;
                self.lock_tries = 0;
                self.closed = Some(format!(
                    "waits for approval ({have} of {need}): /deploy approve {id} or shipit approve {id}",
                    id = self.job.id
                ));
                let left = (timeout_seconds as i64 - waited).max(1) as u64 * 1000;
                self.wait = Some(look_millis(timeout_seconds, self.approval_looks).min(left));
                self.approval_looks += 1;
            }
        }
    }

    pub(super) fn on_lock(
        &mut self,
        now: DateTime<Utc>,
        taken: bool,
        holder: Option<LockInfo>,
        notices: &mut Vec<Notice>,
    ) {
        let ours = holder
            .as_ref()
            .is_some_and(|h| h.job.as_ref() == Some(&self.job.id));
        if taken || ours {
            self.locked = true;
            // A lock got back as it stood (a try again after an answer was lost) may be
            // near its end, or past it: the lease counts from the last renewal the ledger
            // knows, so a late one is renewed before anything else is done under it.
            let lease = Duration::seconds(lease_seconds(self.policy.longest_command_seconds()));
            let renewed_at = holder
                .as_ref()
                .and_then(|h| h.expires)
                .map_or(now, |e| (e - lease).min(now));
            self.lease = Some(Lease {
                generation: holder.as_ref().map_or(0, |h| h.generation),
                renewed_at,
                written: holder.as_ref().map_or(Written::default(), |h| h.written),
            });
            self.lock_waiting_since = None;
            self.phase = Phase::Inspect;
        } else {
            let since = *self.lock_waiting_since.get_or_insert(now);
            if self.lock_tries == 0 {
                if let Some(h) = holder.clone() {
                    notices.push(Notice::WaitingForLock { holder: h });
                }
            }
            if now - since >= Duration::seconds(self.policy.lock_wait_seconds as i64) {
                let who = holder.map_or("someone".to_string(), |h| {
                    format!("{} ({})", h.holder, h.reason)
                });
                self.finish(
                    Outcome::failed(format!(
                        "gave up after waiting {} s for the lock held by {who}",
                        self.policy.lock_wait_seconds
                    )),
                    notices,
                );
            } else {
                // 2, 4, 8 … up to a minute between tries.
                self.wait =
                    Some((POLL_MILLIS << self.lock_tries.min(5)).min(LOCK_RETRY_MAX_MILLIS));
                self.lock_tries += 1;
            }
        }
    }

    pub(super) fn on_live_for_sync(
        &mut self,
        live: Option<Box<DeployJob>>,
        notices: &mut Vec<Notice>,
    ) {
        match live {
            Some(l) => {
                // Whatever went live while this job waited is what nodes get.
                self.job.version = l.version.clone();
                self.previous = Some(l.version);
                self.phase = Phase::Resolve;
            }
            None => self.finish(
                Outcome::Skipped {
                    reason: format!(
                        "nothing is live on {}/{} yet: deploy a version first",
                        self.job.app, self.job.env
                    ),
                },
                notices,
            ),
        }
    }

    pub(super) fn on_inspected(
        &mut self,
        live: Option<Box<DeployJob>>,
        newer_queued: Option<Version>,
        faulty: Option<Faulty>,
        notices: &mut Vec<Notice>,
    ) {
        let skip = self.skip_reason(live.as_deref(), newer_queued, faulty.as_ref());
        self.previous = live.map(|l| l.version);
        match skip {
            Some(reason) => self.finish(Outcome::Skipped { reason }, notices),
            None => {
                if let Some(mark) = faulty {
                    // A person sends it out by name: if it goes well, the mark is lifted.
                    self.clears = Some(mark.clone());
                    notices.push(Notice::DeployingFaulty { mark });
                }
                self.phase = Phase::Resolve;
            }
        }
    }

    /// Why this job must not deploy, seen from what is live now. People may send any
    /// version anywhere; automatic jobs never go back, and a rollback undoes only the
    /// deploy it was asked to undo.
    fn skip_reason(
        &self,
        live: Option<&DeployJob>,
        newer_queued: Option<Version>,
        faulty: Option<&Faulty>,
    ) -> Option<String> {
        let v = &self.job.version;
        if let Source::Rollback { replaces, .. } = &self.job.source {
            return match (replaces, live) {
                (Some(r), Some(l)) if &l.id != r => Some(format!(
                    "{} went live since this rollback was asked for (it was to undo job {r}): ask again",
                    l.version
                )),
                _ => faulty.map(|f| {
                    format!("{v} was marked faulty since this rollback was asked for: {}", f.why())
                }),
            };
        }
        if !self.job.source.is_automatic() {
            return None;
        }
        if let Some(newer) = newer_queued {
            return Some(format!("superseded by {newer}, queued behind it"));
        }
        match (live, faulty) {
            (Some(l), _) if l.version.same_as(v) => {
                Some(format!("{} is already live (job {})", l.version, l.id))
            }
            (Some(l), _) if l.version.is_newer_than(v) => Some(format!(
                "{v} is older than live {}; deploy it by hand to go back",
                l.version
            )),
            (_, Some(f)) => Some(format!(
                "{v} is marked faulty ({}); deploy it by hand to send it out anyway",
                f.why()
            )),
            _ => None,
        }
    }

    /// Live now (a rollback marked the version it replaced before it was recorded).
    pub(super) fn on_recorded(&mut self) {
        self.phase = Phase::Unlock;
    }

    pub(super) fn on_nodes(&mut self, mut nodes: Vec<String>, notices: &mut Vec<Notice>) {
        let wanted = match &self.job.source {
            Source::Sync { nodes: only, .. } if !only.is_empty() => {
                nodes.retain(|n| only.contains(n));
                Some(only.join(", "))
            }
            _ => None,
        };
        if let (Some(wanted), true) = (&wanted, nodes.is_empty()) {
            self.finish(
                Outcome::failed(format!(
                    "{wanted}: not among the nodes of {}/{} (yet)",
                    self.job.app, self.job.env
                )),
                notices,
            );
        } else if nodes.is_empty() {
            self.finish(
                Outcome::failed(format!(
                    "no nodes found for {}/{}",
                    self.job.app, self.job.env
                )),
                notices,
            );
        } else if let Some(bytes) = too_many_to_carry(&nodes) {
            // Refused before any node is touched: a step result past the limit cannot be
            // caught by the state machine, and would leave the deploy where it stood.
            self.finish(
                Outcome::failed(format!(
                    "{} nodes are more than one deploy can carry: its state would need about \
                     {bytes} bytes, and a step of an AWS execution may return \
                     {STATE_ROOM_BYTES}; split {}/{} into environments of fewer nodes",
                    nodes.len(),
                    self.job.app,
                    self.job.env
                )),
                notices,
            );
        } else {
            self.nodes = nodes
                .into_iter()
                .map(|name| Node {
                    name,
                    state: NodeState::Pending,
                })
                .collect();
            notices.push(Notice::Started {
                from: self.previous.clone(),
                nodes: self.nodes.len(),
            });
            self.phase = if self.is_sync() {
                Phase::Probe
            } else {
                Phase::Install
            };
        }
    }

    pub(super) fn on_ran(
        &mut self,
        now: DateTime<Utc>,
        cmd: &Command,
        results: Vec<(String, NodeResult)>,
        sent_at: Option<DateTime<Utc>>,
        notices: &mut Vec<Notice>,
    ) {
        // A map: a command of a large fleet has thousands of nodes.
        let results: std::collections::HashMap<String, NodeResult> = results.into_iter().collect();
        let result_of = |node: &str| results.get(node).cloned().unwrap_or(NodeResult::Running);
        let mut late = false;
        if cmd
            .nodes
            .iter()
            .any(|n| result_of(n) == NodeResult::Running)
        {
            // A command sent after the deploy began to wait for it (a retried step that
            // did not find it sends it anew) may run its full time from its send.
            let since = match (self.running_since, sent_at) {
                (Some(since), Some(sent)) => since.max(sent.min(now)),
                (Some(since), None) => since,
                (None, _) => now,
            };
            self.running_since = Some(since);
            let limit = self.policy.command_seconds(cmd.kind) as i64 + COMMAND_GRACE_SECONDS;
            if now - since <= Duration::seconds(limit) {
                let elapsed = (now - since).num_milliseconds().max(0) as u64;
                self.wait = Some(self.next_look(cmd.kind, elapsed));
                self.running_seen = Some(now);
                self.polls += 1;
                return;
            }
            late = true;
        }
        if let (Some(since), Some(seen), false) = (self.running_since, self.running_seen, late) {
            let seen = (seen - since).num_milliseconds().max(0) as u64;
            let polls = self.polls;
            if let Some(first_look) = self.took.of(cmd.kind) {
                *first_look = Some(next_first_look(*first_look, seen, polls));
            }
        }
        self.running_since = None;
        self.running_seen = None;
        self.polls = 0;
        if let Some(node) = cmd.nodes.iter().find(|n| result_of(n).is_refused()) {
            // Nodes of a batch that restarted before the refusal serve this version now.
            if let Phase::Restart { batch } = self.phase.clone() {
                for i in batch.nodes {
                    if !result_of(&self.nodes[i].name).is_refused() {
                        self.nodes[i].state = NodeState::Unhealthy;
                    }
                }
            }
            let why = format!(
                "{node} refused this deploy's command: it has taken commands under a newer lock generation of {}/{}, so another deploy took the lock over",
                self.job.app, self.job.env
            );
            return self.lost_lock(why, notices);
        }
        let waited = self.policy.command_seconds(cmd.kind) as i64 + COMMAND_GRACE_SECONDS;
        let result_of = |node: &str| match result_of(node) {
            NodeResult::Running if late => NodeResult::Failed {
                exit_code: None,
                output: format!("no result from {node} after {waited} s"),
            },
            // It did not run there, through no fault of the version: the node is left out
            // as one that went away is.
            r if r.is_late() => NodeResult::Gone {
                detail: match r {
                    NodeResult::Failed { output, .. } => tail(&output, 300),
                    _ => String::new(),
                },
            },
            r => r,
        };
        self.on_command(cmd.clone(), &result_of, notices);
    }

    /// How long to wait before looking at a command of `kind` that has run `elapsed` ms:
    /// until the first look learnt from the commands of its kind before it (see
    /// `next_first_look`), then (or without one) on the usual schedule.
    fn next_look(&mut self, kind: CommandKind, elapsed: u64) -> u64 {
        match self.took.of(kind).and_then(|t| *t) {
            Some(first) if elapsed + poll_millis(0) < first => first - elapsed,
            _ => poll_millis(self.polls),
        }
    }

    pub(super) fn on_probe(
        &mut self,
        result_of: &dyn Fn(&str) -> NodeResult,
        notices: &mut Vec<Notice>,
    ) {
        let target = self.job.version.clone();
        for node in &mut self.nodes {
            let result = result_of(&node.name);
            if let NodeResult::Gone { detail } = result {
                node.state = NodeState::Gone;
                notices.push(Notice::Gone {
                    node: node.name.clone(),
                    detail,
                });
                continue;
            }
            let (installed, detail) = probed(&result);
            if installed.as_ref().is_some_and(|v| v.same_as(&target)) {
                node.state = NodeState::Healthy;
            } else {
                notices.push(Notice::Drifted {
                    node: node.name.clone(),
                    installed,
                    detail,
                });
            }
        }
        if self
            .nodes
            .iter()
            .all(|n| matches!(n.state, NodeState::Healthy | NodeState::Gone))
        {
            self.outcome = Some(Outcome::Succeeded {
                failed_installs: vec![],
                unhealthy: vec![],
                gone: lists::capped(self.names_where(|s| s == NodeState::Gone)),
            });
            self.phase = Phase::Unlock;
        } else {
            self.phase = Phase::Install;
        }
    }

    pub(super) fn on_install(
        &mut self,
        cmd: &Command,
        result_of: &dyn Fn(&str) -> NodeResult,
        notices: &mut Vec<Notice>,
    ) {
        let sent: std::collections::HashSet<&str> = cmd.nodes.iter().map(String::as_str).collect();
        for node in &mut self.nodes {
            if !sent.contains(node.name.as_str()) {
                continue;
            }
            match result_of(&node.name) {
                NodeResult::Succeeded => {
                    node.state = NodeState::Installed;
                    notices.push(Notice::Installed {
                        node: node.name.clone(),
                    });
                }
                NodeResult::Gone { detail } => {
                    node.state = NodeState::Gone;
                    notices.push(Notice::Gone {
                        node: node.name.clone(),
                        detail,
                    });
                }
                r => {
                    node.state = NodeState::InstallFailed;
                    notices.push(Notice::InstallFailed {
                        node: node.name.clone(),
                        detail: detail(&r),
                    });
                }
            }
        }
        let failed = self.names_where(|s| s == NodeState::InstallFailed);
        let installed = self
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Installed && sent.contains(n.name.as_str()))
            .count();
        // A sync whose nodes all went away has nothing left to do; a deploy with no node
        // left installed has nothing to go live on.
        let nothing_left = installed == 0 && (!self.is_sync() || !failed.is_empty());
        if failed.len() as u64 > u64::from(self.policy.max_errors) || nothing_left {
            let reason = if failed.is_empty() {
                format!(
                    "every node of {}/{} went away before {} was installed; nothing was restarted",
                    self.job.app, self.job.env, self.job.version
                )
            } else {
                format!(
                    "install of {} failed on {}; nothing was restarted",
                    self.job.version,
                    lists::names(&failed)
                )
            };
            self.revert_or_fail(reason, false, notices);
        } else {
            self.restart_from(0, 0);
        }
    }

    pub(super) fn on_restart(
        &mut self,
        batch: Batch,
        result_of: &dyn Fn(&str) -> NodeResult,
        notices: &mut Vec<Notice>,
    ) {
        let mut failed = vec![];
        for &i in &batch.nodes {
            let node = self.nodes[i].name.clone();
            match result_of(&node) {
                NodeResult::Succeeded => {
                    self.nodes[i].state = NodeState::Healthy;
                    notices.push(Notice::Restarted { node: node.clone() });
                    notices.push(Notice::Healthy { node });
                }
                NodeResult::Gone { detail } => {
                    self.nodes[i].state = NodeState::Gone;
                    self.vanished += 1;
                    notices.push(Notice::Gone { node, detail });
                }
                // A failed restart may have stopped the service: the node counts as
                // restarted, and is rolled back with the others.
                r => {
                    let failure = Failure::of(&r);
                    if failure.checks.is_some() {
                        notices.push(Notice::Restarted { node });
                    }
                    if failure.hook.is_some() {
                        self.hook_failures += 1;
                    }
                    failed.push((i, failure));
                }
            }
        }
        let first = failed
            .first()
            .map(|f| (f.1.checks.is_some(), f.1.to_string()));
        let why = |names: &[String]| match &first {
            Some((true, first)) => {
                let whose = if names.len() == 1 { "its" } else { "their" };
                format!(
                    "{} failed {whose} health check ({first})",
                    lists::names(names)
                )
            }
            _ => format!(
                "restart of {} failed ({})",
                lists::names(names),
                first.as_ref().map_or("", |f| f.1.as_str())
            ),
        };
        let failed = failed
            .into_iter()
            .map(|(i, f)| (i, f.to_string()))
            .collect();
        if !self.count_failures(failed, why, notices) {
            return;
        }
        let more = batch.nodes.last().is_some_and(|&l| {
            self.nodes[l + 1..]
                .iter()
                .any(|n| n.state == NodeState::Installed)
        });
        let healthy = batch
            .nodes
            .iter()
            .any(|&i| self.nodes[i].state == NodeState::Healthy);
        let policy = &self.policy;
        let bakes =
            batch.number == 0 && policy.canary && policy.bake_seconds > 0 && more && healthy;
        // The last batch's checks are the watch's, when there is one (see `restart_from`).
        let last_checked = more || policy.watch_seconds == 0;
        if bakes && self.reads_checks() {
            self.check(Stage::Canary, Some(batch));
        } else if bakes {
            self.wait = Some(policy.bake_seconds * 1000);
            self.phase = Phase::Bake { batch };
        } else if self.reads_checks() && last_checked {
            self.check(Stage::Batch, Some(batch));
        } else {
            self.restart_after(&batch);
        }
    }

    /// How long a stage's checks are read whatever they say (unless one fails).
    fn stage_millis(&self, stage: Stage) -> u64 {
        match stage {
            Stage::Canary => self.policy.bake_seconds * 1000,
            // An analysis needs two scrapes for its first window.
            Stage::Batch if self.reading_now().iter().any(|r| r.analysis.is_some()) => {
                self.policy.check_interval_seconds.max(1) * 2000
            }
            Stage::Batch => 0,
            Stage::Watch => self.policy.watch_seconds * 1000,
        }
    }

    /// The wait before the next reading of a stage that has waited `waited` ms: an
    /// interval, and no further than the stage's end while it lasts.
    fn check_step(&self, stage: Stage, waited: u64) -> u64 {
        let interval = self.policy.check_interval_seconds.max(1) * 1000;
        let end = self.stage_millis(stage);
        if waited < end {
            interval.min(end - waited)
        } else {
            interval
        }
    }

    /// Starts reading the checks of `stage`, after `batch` restarted (none: the watch).
    /// The first reading comes an interval later: rates need samples of the new version.
    pub(super) fn check(&mut self, stage: Stage, batch: Option<Batch>) {
        if self.reading_now().is_empty() {
            // Nothing to read: an analysis with no node left on the old version, or node
            // checks with no node healthy on the new one. The bake still takes its time.
            if stage == Stage::Canary {
                self.wait = Some(self.policy.bake_seconds * 1000);
            }
            return self.after_checks(stage, batch);
        }
        let step = self.check_step(stage, 0);
        self.wait = Some(step);
        self.phase = Phase::Checks {
            stage,
            batch,
            waited: step,
            tally: None,
            on_nodes: vec![],
        };
    }

    /// A node check's reading from its command's results: a node that exits other than
    /// 0 (or does not finish in time) fails it; nodes that went away, or whose command
    /// came too late to run, do not count; no node answering is no data.
    pub(super) fn on_node_check(&mut self, cmd: &Command, result_of: &dyn Fn(&str) -> NodeResult) {
        let Phase::Checks { on_nodes, .. } = &mut self.phase else {
            return;
        };
        let (mut passed, mut failed, mut away) = (0usize, vec![], vec![]);
        for node in &cmd.nodes {
            match result_of(node) {
                NodeResult::Succeeded | NodeResult::Reported { .. } => passed += 1,
                NodeResult::Failed { exit_code, output } => {
                    let exit =
                        exit_code.map_or("no exit code".to_string(), |c| format!("exit {c}"));
                    failed.push(format!("{node} ({exit}: {})", last_line(&output)));
                }
                NodeResult::Gone { detail } => away.push((node.clone(), detail)),
                NodeResult::Running => away.push((node.clone(), String::new())),
            }
        }
        let reading = if !failed.is_empty() {
            Reading::Fail {
                detail: format!("failed on {}", lists::names(&failed)),
            }
        } else if passed == 0 {
            // One reason for all (the check left the config, say) is said once.
            let why = match away.first() {
                Some((_, first)) if !first.is_empty() && away.iter().all(|(_, d)| d == first) => {
                    format!(": {first}")
                }
                _ => String::new(),
            };
            let names: Vec<String> = away.iter().map(|(n, _)| n.clone()).collect();
            Reading::NoData {
                detail: format!("no node answered ({}){why}", lists::names(&names)),
            }
        } else {
            Reading::Pass {
                detail: format!(
                    "exit 0 on {passed} node{}{}",
                    if passed == 1 { "" } else { "s" },
                    match away.len() {
                        0 => String::new(),
                        n => format!(", {n} did not answer"),
                    }
                ),
            }
        };
        on_nodes.push((cmd.check.clone().unwrap_or_default(), reading));
    }

    /// The analysis's verdict on what `tally` added up, as a reading.
    fn judged(&self, tally: &Tally, settings: Settings) -> Reading {
        let g = self.groups();
        let canary = format!("{} ({})", lists::names(&g.canary), self.job.version);
        let baseline = format!(
            "{} baseline node{} ({})",
            g.baseline.len(),
            if g.baseline.len() == 1 { "" } else { "s" },
            self.previous
                .as_ref()
                .map_or("the old version".to_string(), |v| v.to_string())
        );
        match analysis::judge(tally, settings, &canary, &baseline) {
            analysis::Verdict::Worse(detail) => Reading::Fail { detail },
            analysis::Verdict::Pass(detail) => Reading::Pass { detail },
            analysis::Verdict::Inconclusive(detail) => Reading::NoData { detail },
        }
    }

    /// A reading of every check: one that fails rolls the deploy back (marking the
    /// version if the check reads its own figures and it served on a node this deploy
    /// restarted); once the stage's time is over and every check has data (or its data
    /// wait is over), the rollout goes on.
    pub(super) fn on_checked(
        &mut self,
        readings: Vec<(String, Reading)>,
        notices: &mut Vec<Notice>,
    ) {
        let Phase::Checks {
            stage,
            batch,
            waited,
            tally,
            on_nodes,
        } = self.phase.clone()
        else {
            return;
        };
        let readings: Vec<(String, Reading)> = on_nodes.into_iter().chain(readings).collect();
        let mut tally = tally.unwrap_or_default();
        let reading = |name: &str| {
            readings
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, r)| r.clone())
                .unwrap_or(Reading::NoData {
                    detail: "not read".into(),
                })
        };
        let rules: Vec<Rule> = self.reading_now().into_iter().cloned().collect();
        let read: Vec<(Rule, Reading)> = rules
            .into_iter()
            .map(|rule| {
                let r = match (rule.analysis, reading(&rule.name)) {
                    (Some(settings), Reading::Scraped { scrape }) => {
                        tally.add(*scrape);
                        self.judged(&tally, settings)
                    }
                    (None, Reading::Scraped { .. }) => Reading::NoData {
                        detail: "a scrape, for a check that compares nothing".into(),
                    },
                    (_, r) => r,
                };
                (rule, r)
            })
            .collect();
        if let Some((rule, Reading::Fail { detail })) =
            read.iter().find(|(_, r)| matches!(r, Reading::Fail { .. }))
        {
            let reason = format!("check {} failed {stage}: {detail}", rule.name);
            // A verdict on the version when the check reads the version's own figures and
            // it served on a node this deploy restarted (not only one whose drain hook
            // failed; a query of `{version}` also sees nodes an earlier deploy left on
            // it). A fleet-wide figure may be red for any reason.
            let healthy = self.nodes.iter().any(|n| n.state == NodeState::Healthy);
            let unhealthy = self
                .nodes
                .iter()
                .filter(|n| n.state == NodeState::Unhealthy)
                .count();
            let served = healthy || unhealthy > self.hook_failures as usize;
            let marks = served && rule.per_version;
            return self.check_failed(&rule.name, stage, detail, reason, marks, notices);
        }
        if let Some((rule, Reading::Refused { detail })) = read
            .iter()
            .find(|(_, r)| matches!(r, Reading::Refused { .. }))
        {
            let reason = format!("check {} could not be read {stage}: {detail}", rule.name);
            return self.check_failed(&rule.name, stage, detail, reason, false, notices);
        }
        let missing: Vec<&(Rule, Reading)> = read
            .iter()
            .filter(|(rule, r)| matches!(r, Reading::NoData { .. }) && rule.no_data == NoData::Fail)
            .collect();
        let end = self.stage_millis(stage);
        let wait = self.policy.check_wait_seconds * 1000;
        if waited < end || (!missing.is_empty() && waited < end + wait) {
            let step = self.check_step(stage, waited);
            self.wait = Some(step);
            self.phase = Phase::Checks {
                stage,
                batch,
                waited: waited + step,
                tally: (tally != Tally::default()).then_some(tally),
                on_nodes: vec![],
            };
            return;
        }
        if let Some((rule, r)) = missing.first() {
            let detail = format!(
                "no data {} s after {}: {}",
                waited / 1000,
                match stage {
                    Stage::Watch => "the last node",
                    _ => "the restart",
                },
                r.detail()
            );
            // No data may be the metrics' fault, not the version's: nothing is marked.
            let reason = format!("check {} {stage}: {detail} (no_data = \"fail\")", rule.name);
            return self.check_failed(&rule.name, stage, &detail, reason, false, notices);
        }
        notices.push(Notice::ChecksPassed {
            stage,
            readings: read
                .iter()
                .map(|(rule, r)| match r {
                    Reading::NoData { detail } => {
                        format!("{}: no data, passed over ({detail})", rule.name)
                    }
                    r => format!("{}: {}", rule.name, r.detail()),
                })
                .collect(),
        });
        // The bake's time is spent: its closing health check at once.
        self.after_checks(stage, batch);
    }

    /// `check` failed `stage` (`detail`, as chat says it): the deploy rolls back, ending
    /// with `reason`, marking its version faulty if `marks`.
    fn check_failed(
        &mut self,
        check: &str,
        stage: Stage,
        detail: &str,
        reason: String,
        marks: bool,
        notices: &mut Vec<Notice>,
    ) {
        notices.push(Notice::CheckFailed {
            check: check.to_string(),
            stage,
            detail: detail.to_string(),
        });
        self.revert_or_fail(reason, marks, notices);
    }

    /// What follows a stage's checks: the canary's closing health check, the next batch,
    /// or (after the watch) the success.
    fn after_checks(&mut self, stage: Stage, batch: Option<Batch>) {
        match (stage, batch) {
            (Stage::Canary, Some(batch)) => self.phase = Phase::Bake { batch },
            (Stage::Batch, Some(batch)) => self.restart_after(&batch),
            _ => self.succeed(),
        }
    }

    pub(super) fn on_bake(
        &mut self,
        batch: Batch,
        result_of: &dyn Fn(&str) -> NodeResult,
        notices: &mut Vec<Notice>,
    ) {
        let mut failed: Vec<(usize, String)> = vec![];
        for &i in &batch.nodes {
            if self.nodes[i].state != NodeState::Healthy {
                continue;
            }
            match result_of(&self.nodes[i].name) {
                NodeResult::Succeeded => {}
                NodeResult::Gone { detail } => {
                    self.nodes[i].state = NodeState::Gone;
                    self.vanished += 1;
                    notices.push(Notice::Gone {
                        node: self.nodes[i].name.clone(),
                        detail,
                    });
                }
                r => failed.push((i, detail(&r))),
            }
        }
        let first = failed.first().map_or(String::new(), |f| f.1.clone());
        let why = |names: &[String]| {
            format!(
                "canary {} turned unhealthy while baking ({first})",
                lists::names(names)
            )
        };
        if self.count_failures(failed, why, notices) {
            self.restart_after(&batch);
        }
    }

    pub(super) fn on_revert(
        &mut self,
        cmd: &Command,
        to: Version,
        reason: String,
        result_of: &dyn Fn(&str) -> NodeResult,
        notices: &mut Vec<Notice>,
    ) {
        let mut failed: Vec<String> = vec![];
        for name in &cmd.nodes {
            match result_of(name) {
                NodeResult::Succeeded => {}
                // Nothing to put back on a node that is not there.
                NodeResult::Gone { detail } => self.went(name, detail, notices),
                _ => failed.push(name.clone()),
            }
        }
        if !failed.is_empty() {
            let why = format!(
                "{reason}; then reinstalling {to} failed on {}",
                lists::names(&failed)
            );
            return self.finish(Outcome::RollbackFailed { reason: why }, notices);
        }
        let sent: std::collections::HashSet<&str> = cmd.nodes.iter().map(String::as_str).collect();
        for node in &mut self.nodes {
            if sent.contains(node.name.as_str())
                && !was_restarted(node.state)
                && node.state != NodeState::Gone
            {
                node.state = NodeState::Reverted;
            }
        }
        self.revert_restart_from(to, 0, 0, reason, notices);
    }

    pub(super) fn on_revert_restart(
        &mut self,
        to: Version,
        batch: Batch,
        reason: String,
        result_of: &dyn Fn(&str) -> NodeResult,
        notices: &mut Vec<Notice>,
    ) {
        let mut failed = None;
        for &i in &batch.nodes {
            let name = self.nodes[i].name.clone();
            match result_of(&name) {
                NodeResult::Succeeded => {
                    self.nodes[i].state = NodeState::Reverted;
                    notices.push(Notice::Healthy { node: name });
                }
                NodeResult::Gone { detail } => self.went(&name, detail, notices),
                r => {
                    failed.get_or_insert((name, Failure::of(&r)));
                }
            }
        }
        match failed {
            None => {
                let next = batch.nodes.last().map_or(0, |i| i + 1);
                self.revert_restart_from(to, next, batch.number + 1, reason, notices);
            }
            Some((name, failure)) => {
                let what = match failure.checks {
                    Some(_) => format!("{name} stayed unhealthy on {to}"),
                    None => format!("restarting {name} on {to} failed"),
                };
                let why = format!("{reason}; then {what} ({failure})");
                self.finish(Outcome::RollbackFailed { reason: why }, notices);
            }
        }
    }
}

/// What a deploy's state needs beside its nodes: the job, the chat memo, an outcome's
/// capped lists and clipped reasons (12 KB at most in `bench sim`'s 10,000-node deploy).
const STATE_RESERVE_BYTES: usize = 8 * 1024;

/// The bytes a deploy of `nodes` would carry, if more than `STATE_ROOM_BYTES`: each node's
/// name as JSON and its state letter, and per node about one byte more for the SSM command
/// ids (one per 50 nodes) and a batch in flight (kept as runs of indices).
pub(super) fn too_many_to_carry(nodes: &[String]) -> Option<usize> {
    let names: usize = nodes
        .iter()
        .map(|n| serde_json::to_string(n).map_or(n.len() + 2, |j| j.len()) + 1)
        .sum();
    let bytes = names + 2 * nodes.len() + STATE_RESERVE_BYTES;
    (bytes > STATE_ROOM_BYTES).then_some(bytes)
}
