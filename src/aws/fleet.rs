//! SSM Run Command as the fleet: nodes are the managed nodes (EC2 `i-…` and hybrid `mi-…`)
//! carrying an environment's tags that SSM can reach; a command is `AWS-RunShellScript`.
//!
//! A command key becomes one or more SSM commands (at most 50 nodes each), each with the
//! comment `shipit {key} {i}/{n}`. The ids sent are kept in the deploy's state (`Sent`).
//! A step that may repeat one whose state was lost (a retry after a crash), or whose
//! last send failed without an answer, first looks for the command by that comment, so
//! it finds the command already sent instead of running it a second time; a step
//! continuing from a saved state sends at once (one ListCommands call less a command).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use async_trait::async_trait;
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_ssm::operation::send_command::SendCommandError;
use aws_sdk_ssm::types::{
    CommandFilter, CommandFilterKey, CommandInvocationStatus, InstanceInformationStringFilter,
};
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::retries::classifiers::{ClassifyRetry, RetryAction};

use chrono::{DateTime, Duration, SecondsFormat, Utc};

use super::{sdk_err, throttling};
use crate::config::command::{ScriptError, Site};
use crate::config::{App, Config, Environment, Nodes};
use crate::deploy::command::{tail, Command, CommandKind, NodeResult, OUTPUT_TAIL};
use crate::deploy::engine::COMMAND_GRACE_SECONDS;
use crate::deploy::job::DeployJob;
use crate::deploy::lock::DELIVERY_TIMEOUT_SECONDS;
use crate::deploy::ports::{is_throttled, Fleet, PortError, Refused, Sent};

/// SendCommand takes at most 50 instance ids.
pub const MAX_TARGETS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running,
    Succeeded,
    Failed,
    /// SSM could not deliver the command, or gave up on a node that stopped answering
    /// (StatusDetails `Undeliverable`, `DeliveryTimedOut`): terminated, stopped, offline.
    Gone(String),
}

/// SendCommand named a node that is no longer a running managed node (InvalidInstanceId):
/// SSM sent nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInstances(pub String);

/// One SendCommand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRequest {
    pub nodes: Vec<String>,
    pub script: String,
    pub dir: Option<String>,
    pub comment: String,
    pub max_concurrency: String,
    pub max_errors: String,
    pub timeout_seconds: u64,
}

/// The Run Command calls the fleet makes: the SDK in production, a model in the simulator.
#[async_trait]
pub trait RunCommand: Send + Sync {
    /// Managed nodes carrying every one of `tags` that SSM can reach now (any order).
    async fn online_nodes(&self, tags: &BTreeMap<String, String>)
        -> Result<Vec<String>, PortError>;
    /// Sends `req`; returns the command id. Fails with
    /// [`Throttled`](crate::deploy::ports::Throttled) only when no attempt went out (see
    /// `OnlyThrottledSendsAgain`).
    async fn send(&self, req: &SendRequest) -> Result<String, PortError>;
    /// The id of the command sent to `node` with `comment` after `after`, if ListCommands shows
    /// one yet; of several (a key sent again), the newest SSM took: one that reached its
    /// nodes too late and was refused there is older than a send that ran the key since.
    async fn find(
        &self,
        node: &str,
        comment: &str,
        after: DateTime<Utc>,
    ) -> Result<Option<String>, PortError>;
    /// Every invocation of the command visible so far.
    async fn statuses(&self, command_id: &str) -> Result<Vec<(String, Status)>, PortError>;
    /// A finished invocation's exit code and output tail; `None` while SSM does not show it.
    async fn outcome(
        &self,
        command_id: &str,
        node: &str,
    ) -> Result<Option<(Option<i32>, String)>, PortError>;
}

/// Shared ports (the simulator keeps a handle on its model to read it afterwards).
#[async_trait]
impl<T: RunCommand + ?Sized> RunCommand for std::sync::Arc<T> {
    async fn online_nodes(
        &self,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, PortError> {
        (**self).online_nodes(tags).await
    }
    async fn send(&self, req: &SendRequest) -> Result<String, PortError> {
        (**self).send(req).await
    }
    async fn find(
        &self,
        node: &str,
        comment: &str,
        after: DateTime<Utc>,
    ) -> Result<Option<String>, PortError> {
        (**self).find(node, comment, after).await
    }
    async fn statuses(&self, command_id: &str) -> Result<Vec<(String, Status)>, PortError> {
        (**self).statuses(command_id).await
    }
    async fn outcome(
        &self,
        command_id: &str,
        node: &str,
    ) -> Result<Option<(Option<i32>, String)>, PortError> {
        (**self).outcome(command_id, node).await
    }
}

/// What a command needs: its SSM commands (script, nodes) run in the environment's `dir`,
/// or no command at all (the results are known without one).
enum Plan {
    Parts {
        dir: Option<String>,
        parts: Vec<(String, Vec<String>)>,
    },
    Done(Vec<(String, NodeResult)>),
}

/// What time it is (the simulator's virtual clock, or the wall clock).
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub struct SsmFleet<R> {
    api: R,
    config: Arc<Config>,
    now: Clock,
}

impl<R: RunCommand> SsmFleet<R> {
    pub fn new(api: R, config: Arc<Config>) -> SsmFleet<R> {
        SsmFleet {
            api,
            config,
            now: Arc::new(Utc::now),
        }
    }

    pub fn with_clock(mut self, now: Clock) -> SsmFleet<R> {
        self.now = now;
        self
    }

    fn target(&self, job: &DeployJob) -> Result<(&App, &Environment), PortError> {
        self.config.target(job).map_err(Refused::error)
    }

    /// The environment's reachable nodes, in a stable order (by id).
    pub async fn resolve_env(&self, env: &Environment) -> Result<Vec<String>, PortError> {
        let Nodes::Ssm { tags, .. } = &env.nodes else {
            return Err(Refused::error(format!(
                "environment {} lists local nodes; deploy it with `shipit serve`",
                env.name
            )));
        };
        let mut nodes = self.api.online_nodes(tags).await?;
        nodes.sort();
        nodes.dedup();
        Ok(nodes)
    }

    /// Sends `cmd` the first time it is asked for (remembering it in `sent`), and reports
    /// on it after that. `max_errors` is the deploy's install error budget; `replayed`: see
    /// [`Fleet::run`].
    ///
    /// With a concurrency cap, at most that many nodes run the command at once across all
    /// of its SSM commands: a command goes out only when the ones before it leave room,
    /// and gets the room left as its `MaxConcurrency`.
    async fn run_on(
        &self,
        job: &DeployJob,
        cmd: &Command,
        max_errors: u32,
        sent: &mut Option<Sent>,
        replayed: bool,
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        let (app, env) = self.target(job)?;
        let mine = sent.as_ref().filter(|s| s.key == cmd.key);
        let gone: Vec<String> = mine.map_or(vec![], |s| s.gone.clone());
        let (ids, planned, unsure) = match mine {
            // A send that may have failed leaves its part to be looked for and sent.
            Some(s) if s.unsure => (s.commands.clone(), usize::MAX, true),
            Some(s) if s.commands.is_empty() => (vec![], usize::MAX, false),
            Some(s) => (s.commands.clone(), s.parts.max(s.commands.len()), false),
            None => (vec![], usize::MAX, false),
        };
        let mut results = if ids.is_empty() {
            all(&cmd.nodes, NodeResult::Running)
        } else {
            self.report(cmd, &ids).await?
        };
        let gone_since_send = |detail: &str| NodeResult::Gone {
            detail: format!("SSM: {detail}"),
        };
        for (node, result) in &mut results {
            if gone.contains(node) {
                *result = gone_since_send("not a running managed node when its command was sent");
            }
        }
        if ids.len() >= planned {
            return Ok(results);
        }
        let now = (self.now)();
        // Every node starts an uncapped command within the delivery timeout, or not at all
        // (see `Command::not_after`). A capped one runs in waves (its MaxConcurrency), a
        // later wave starting after the first ends: it carries no such limit.
        let cmd = &match cmd.concurrency {
            0 => cmd.sent_at(now),
            _ => cmd.clone(),
        };
        let (dir, parts) = match self.plan(app, env, cmd, &gone)? {
            Plan::Parts { dir, parts } => (dir, parts),
            Plan::Done(results) => return Ok(results),
        };
        let cap = cmd.concurrency as usize;
        let mut room = if cap == 0 {
            usize::MAX
        } else {
            // Nodes of a sent command still running may each hold a place; never more
            // than the cap per command.
            let running: BTreeSet<&str> = results
                .iter()
                .filter(|(_, r)| *r == NodeResult::Running)
                .map(|(n, _)| n.as_str())
                .collect();
            let busy: usize = parts
                .iter()
                .take(ids.len())
                .map(|(_, nodes)| {
                    let n = nodes.iter().filter(|n| running.contains(n.as_str()));
                    n.count().min(cap)
                })
                .sum();
            cap.saturating_sub(busy)
        };
        let max_errors = if cmd.kind == CommandKind::Install && cmd.version == job.version {
            max_errors.to_string()
        } else {
            // Putting the old version back: try every node.
            "100%".to_string()
        };
        // Commands are sent after the job was requested; a margin covers clock skew.
        let after = job.requested_at - Duration::minutes(5);
        let parts_count = parts.len();
        // The deploy waits for a command until `COMMAND_GRACE_SECONDS` past its time,
        // counted from its first look (`running_since`, which comes after the first try
        // here). A part that goes out later (re-planned after a node went away, waiting
        // for room under the install cap, after a held-up driver) must end by then too,
        // delivery included, or it would run on after the deploy stopped waiting (and
        // perhaps released its lock): SSM is told to end it in time, and a part with no
        // time left is not sent.
        let since = mine.and_then(|s| s.since).unwrap_or(now);
        let limit = app.rollout.command_seconds(cmd.kind);
        let margin = (COMMAND_GRACE_SECONDS - DELIVERY_TIMEOUT_SECONDS).max(0) as u64;
        let elapsed = (now - since).num_seconds().max(0) as u64;
        let left = (limit + margin).saturating_sub(elapsed).min(limit);
        let mut record = Sent {
            key: cmd.key.clone(),
            commands: ids,
            parts: if parts_count > 1 { parts_count } else { 0 },
            unsure,
            gone,
            since: Some(since),
        };
        while let (Some((script, nodes)), true) = (parts.get(record.commands.len()), room > 0) {
            let i = record.commands.len();
            let comment = format!("shipit {} {}/{}", cmd.key, i + 1, parts.len());
            let first = nodes.first().ok_or("an SSM command without nodes")?;
            let share = if cap == 0 {
                "100%".to_string()
            } else {
                room.min(nodes.len()).to_string()
            };
            room = room.saturating_sub(nodes.len());
            let found = if replayed || record.unsure {
                self.api.find(first, &comment, after).await?
            } else {
                None
            };
            let id = match found {
                Some(id) => {
                    tracing::info!(key = %cmd.key, command_id = %id, "found the command a previous step sent");
                    id
                }
                // Surely not sent, and too late to: the deploy cannot go on with this
                // command (the step fails; after its retries the deploy is wound down,
                // putting back what it changed, blaming the version for nothing).
                None if left == 0 => {
                    *sent = Some(record);
                    return Err(format!(
                        "part {} of {} of command {} was not sent: its {limit} s and the wait for it were up ({elapsed} s since its first part), as the deploy was held up",
                        i + 1,
                        parts.len(),
                        cmd.key
                    )
                    .into());
                }
                None => {
                    // Saved as unsure first: if the send fails, whoever goes on looks
                    // for it (it may have gone out) before sending it again.
                    let was_unsure = record.unsure;
                    record.unsure = true;
                    *sent = Some(record.clone());
                    // Its start-by time counts from this send, not from the first part's:
                    // sending many parts may take a while.
                    let script = match cmd.not_after {
                        Some(_) => self.script_of(app, env, &cmd.sent_at((self.now)()), first)?,
                        None => script.to_string(),
                    };
                    let req = SendRequest {
                        nodes: nodes.to_vec(),
                        script,
                        dir: dir.clone(),
                        comment,
                        max_concurrency: share,
                        max_errors: max_errors.clone(),
                        timeout_seconds: left,
                    };
                    match self.api.send(&req).await {
                        Ok(id) => id,
                        // Refused before SSM did anything: this send left nothing to
                        // look for (an earlier one whose answer was lost still may have,
                        // should the lookup have missed it). A key of one command saved
                        // sure and without it would read as all sent.
                        Err(e) if is_throttled(&e) => {
                            record.unsure = was_unsure;
                            *sent = (record.unsure || record.parts > 0 || !record.gone.is_empty())
                                .then_some(record);
                            return Err(e);
                        }
                        // A node of this part went away since it was resolved: SSM sent
                        // nothing. Those no longer online are left out (gone), and the
                        // part goes again, re-planned, on the next poll.
                        Err(e) if e.downcast_ref::<InvalidInstances>().is_some() => {
                            let Nodes::Ssm { tags, .. } = &env.nodes else {
                                return Err(e);
                            };
                            let online: BTreeSet<String> =
                                self.api.online_nodes(tags).await?.into_iter().collect();
                            let missing: Vec<String> = nodes
                                .iter()
                                .filter(|n| !online.contains(*n))
                                .cloned()
                                .collect();
                            if missing.is_empty() {
                                return Err(e);
                            }
                            tracing::warn!(key = %cmd.key, nodes = ?missing, "nodes went away before their command was sent");
                            record.unsure = was_unsure;
                            for (node, result) in &mut results {
                                if missing.contains(node) {
                                    *result = gone_since_send(
                                        "not a running managed node when its command was sent",
                                    );
                                }
                            }
                            record.gone.extend(missing);
                            *sent = Some(record);
                            return Ok(results);
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            record.commands.push(id);
            record.unsure = false;
        }
        *sent = Some(record);
        // SSM needs a moment before it shows new invocations: ask again on the next poll.
        Ok(results)
    }

    /// The SSM commands `cmd` needs, in a stable order: nodes whose script is the same
    /// share them (it differs only if `{node}` is used), at most 50 nodes each.
    fn plan(
        &self,
        app: &App,
        env: &Environment,
        cmd: &Command,
        gone: &[String],
    ) -> Result<Plan, PortError> {
        let Nodes::Ssm { dir, vars, .. } = &env.nodes else {
            return Err(Refused::error(format!(
                "environment {} has no ssm_tags",
                env.name
            )));
        };
        let mut groups: Vec<(String, Vec<String>)> = vec![];
        // Gone nodes leave later parts only: the parts before them are as they were sent.
        for node in cmd.nodes.iter().filter(|n| !gone.contains(n)) {
            let site = Site {
                node,
                dir: dir.as_deref(),
                vars,
            };
            let script = match app.script(env, cmd, &site) {
                Ok(Some(script)) => script,
                Ok(None) => return Ok(Plan::Done(all(&cmd.nodes, NodeResult::Succeeded))),
                Err(e @ ScriptError::NoVersionCommand(_)) => {
                    let unknown = NodeResult::Failed {
                        exit_code: None,
                        output: e.to_string(),
                    };
                    return Ok(Plan::Done(all(&cmd.nodes, unknown)));
                }
                Err(e) => return Err(e.to_string().into()),
            };
            match groups.iter_mut().find(|(s, _)| *s == script) {
                Some((_, nodes)) => nodes.push(node.clone()),
                None => groups.push((script, vec![node.clone()])),
            }
        }
        Ok(Plan::Parts {
            dir: dir.clone(),
            parts: groups
                .into_iter()
                .flat_map(|(script, nodes)| {
                    nodes
                        .chunks(MAX_TARGETS)
                        .map(|c| (script.clone(), c.to_vec()))
                        .collect::<Vec<_>>()
                })
                .collect(),
        })
    }

    /// The script of `cmd` on `node` (one of a part's nodes: they share it).
    fn script_of(
        &self,
        app: &App,
        env: &Environment,
        cmd: &Command,
        node: &str,
    ) -> Result<String, PortError> {
        let Nodes::Ssm { dir, vars, .. } = &env.nodes else {
            return Err(format!("environment {} has no ssm_tags", env.name).into());
        };
        let site = Site {
            node,
            dir: dir.as_deref(),
            vars,
        };
        match app.script(env, cmd, &site) {
            Ok(Some(script)) => Ok(script),
            Ok(None) => Err(format!("{:?} has no script on {node}", cmd.kind).into()),
            Err(e) => Err(e.to_string().into()),
        }
    }

    async fn report(
        &self,
        cmd: &Command,
        commands: &[String],
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        let mut seen: BTreeMap<String, NodeResult> = BTreeMap::new();
        for id in commands {
            for (node, status) in self.api.statuses(id).await? {
                let result = match status {
                    Status::Running => NodeResult::Running,
                    Status::Succeeded if cmd.kind == CommandKind::Version => {
                        match self.api.outcome(id, &node).await? {
                            Some((_, output)) => NodeResult::Reported { output },
                            None => NodeResult::Running,
                        }
                    }
                    Status::Succeeded => NodeResult::Succeeded,
                    Status::Failed => match self.api.outcome(id, &node).await? {
                        Some((exit_code, output)) => NodeResult::Failed { exit_code, output },
                        None => NodeResult::Running,
                    },
                    Status::Gone(details) => NodeResult::Gone {
                        detail: format!("SSM: {details} (terminated, stopped or offline)"),
                    },
                };
                seen.insert(node, result);
            }
        }
        // A node SSM does not show yet is still on its way (eventual consistency).
        Ok(cmd
            .nodes
            .iter()
            .map(|n| (n.clone(), seen.remove(n).unwrap_or(NodeResult::Running)))
            .collect())
    }
}

#[async_trait]
impl<R: RunCommand + 'static> Fleet for SsmFleet<R> {
    async fn resolve(&self, job: &DeployJob) -> Result<Vec<String>, PortError> {
        let (_, env) = self.target(job)?;
        self.resolve_env(env).await
    }

    async fn run(
        &self,
        job: &DeployJob,
        cmd: &Command,
        max_errors: u32,
        sent: &mut Option<Sent>,
        replayed: bool,
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        self.run_on(job, cmd, max_errors, sent, replayed).await
    }
}

fn all(nodes: &[String], r: NodeResult) -> Vec<(String, NodeResult)> {
    nodes.iter().map(|n| (n.clone(), r.clone())).collect()
}

/// StatusDetails that say the node never took the command, or stopped answering while it
/// ran: the API reference spells them with spaces, the API answers without.
pub(crate) fn is_gone(details: &str) -> bool {
    let squeezed: String = details.chars().filter(|c| !c.is_whitespace()).collect();
    matches!(squeezed.as_str(), "Undeliverable" | "DeliveryTimedOut")
}

/// SendCommand takes no idempotency token: a send the SDK made again after an answer that
/// never came back (a dropped connection, a 500 after the work) would run the command twice
/// on its nodes. So only a throttled send, which AWS refused before doing anything, is made
/// again; any other failure reaches `SsmFleet::run_on`, which saved the send as unsure and
/// looks for it by its comment before sending it again.
#[derive(Debug)]
struct OnlyThrottledSendsAgain;

impl ClassifyRetry for OnlyThrottledSendsAgain {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(err)) = ctx.output_or_error() else {
            return RetryAction::NoActionIndicated;
        };
        let code = err
            .as_operation_error()
            .and_then(|e| e.downcast_ref::<SendCommandError>())
            .and_then(|e| e.code());
        match throttling(code) {
            true => RetryAction::NoActionIndicated,
            false => RetryAction::RetryForbidden,
        }
    }

    fn name(&self) -> &'static str {
        "SendCommand made again only when throttled"
    }
}

/// Run Command through the AWS SDK. Throttling is retried by the client's retry policy
/// (see `run::aws::ssm_client`), with back-off.
pub struct SdkRunCommand {
    client: aws_sdk_ssm::Client,
}

impl SdkRunCommand {
    pub fn new(client: aws_sdk_ssm::Client) -> SdkRunCommand {
        SdkRunCommand { client }
    }

    /// Whether `instance` is an online managed node carrying every one of `tags` (no tags:
    /// whether its SSM agent has registered at all).
    pub async fn is_online(
        &self,
        instance: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<bool, PortError> {
        Ok(!self.describe(tags, Some(instance)).await?.is_empty())
    }

    async fn describe(
        &self,
        tags: &BTreeMap<String, String>,
        instance: Option<&str>,
    ) -> Result<Vec<String>, PortError> {
        let nodes = describe_nodes(&self.client, tags, instance).await?;
        Ok(nodes.into_iter().map(|(id, _)| id).collect())
    }
}

/// The online managed nodes carrying every tag (and, with `instance`, only that one), each
/// with the IP address its SSM agent reports.
async fn describe_nodes(
    client: &aws_sdk_ssm::Client,
    tags: &BTreeMap<String, String>,
    instance: Option<&str>,
) -> Result<Vec<(String, Option<String>)>, PortError> {
    let mut filters = vec![InstanceInformationStringFilter::builder()
        .key("PingStatus")
        .values("Online")
        .build()?];
    for (k, v) in tags {
        filters.push(
            InstanceInformationStringFilter::builder()
                .key(format!("tag:{k}"))
                .values(v)
                .build()?,
        );
    }
    if let Some(id) = instance {
        filters.push(
            InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .values(id)
                .build()?,
        );
    }
    let mut pages = client
        .describe_instance_information()
        .set_filters(Some(filters))
        .max_results(50)
        .into_paginator()
        .send();
    let mut nodes = vec![];
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| sdk_err("SSM DescribeInstanceInformation", e))?;
        nodes.extend(
            page.instance_information_list
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| Some((i.instance_id?, i.ip_address))),
        );
    }
    Ok(nodes)
}

/// The IP address each online node of `tags` reports through its SSM agent: where an
/// analysis scrapes its metrics. By tags, not by ids: an id no longer valid (a node
/// terminated mid-deploy) would fail the whole call.
pub async fn addresses(
    client: &aws_sdk_ssm::Client,
    tags: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, PortError> {
    let nodes = describe_nodes(client, tags, None).await?;
    Ok(nodes
        .into_iter()
        .filter_map(|(id, ip)| Some((id, ip?)))
        .collect())
}

#[async_trait]
impl RunCommand for SdkRunCommand {
    async fn online_nodes(
        &self,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, PortError> {
        self.describe(tags, None).await
    }

    async fn send(&self, req: &SendRequest) -> Result<String, PortError> {
        let mut call = self
            .client
            .send_command()
            .document_name("AWS-RunShellScript")
            .set_instance_ids(Some(req.nodes.clone()))
            .parameters("commands", vec![req.script.clone()])
            .parameters("executionTimeout", vec![req.timeout_seconds.to_string()])
            .comment(&req.comment)
            .max_concurrency(&req.max_concurrency)
            .max_errors(&req.max_errors)
            // A command delivered later than this could run after its deploy's lease
            // lapsed (see `lease_seconds`): SSM drops it instead.
            .timeout_seconds(DELIVERY_TIMEOUT_SECONDS as i32);
        if let Some(dir) = &req.dir {
            call = call.parameters("workingDirectory", vec![dir.clone()]);
        }
        let out = call
            .customize()
            .config_override(
                aws_sdk_ssm::config::Builder::new().retry_classifier(OnlyThrottledSendsAgain),
            )
            .send()
            .await
            .map_err(|e| match e.as_service_error() {
                Some(s) if s.is_invalid_instance_id() => {
                    let text = format!("SSM SendCommand: {}", DisplayErrorContext(&e));
                    Box::new(InvalidInstances(text)) as PortError
                }
                _ => sdk_err("SSM SendCommand", e),
            })?;
        out.command
            .and_then(|c| c.command_id)
            .ok_or_else(|| "SSM SendCommand returned no command id".into())
    }

    async fn find(
        &self,
        node: &str,
        comment: &str,
        after: DateTime<Utc>,
    ) -> Result<Option<String>, PortError> {
        let mut pages = self
            .client
            .list_commands()
            .instance_id(node)
            .filters(
                CommandFilter::builder()
                    .key(CommandFilterKey::InvokedAfter)
                    .value(after.to_rfc3339_opts(SecondsFormat::Secs, true))
                    .build()?,
            )
            .into_paginator()
            .send();
        // The newest of them: see `RunCommand::find`.
        let mut newest: Option<(Option<(i64, u32)>, Option<String>)> = None;
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("SSM ListCommands", e))?;
            for c in page.commands.unwrap_or_default() {
                if c.comment.as_deref() != Some(comment) {
                    continue;
                }
                let at = c.requested_date_time.map(|t| (t.secs(), t.subsec_nanos()));
                if newest.as_ref().is_none_or(|(seen, _)| at > *seen) {
                    newest = Some((at, c.command_id));
                }
            }
        }
        Ok(newest.and_then(|(_, id)| id))
    }

    async fn statuses(&self, command_id: &str) -> Result<Vec<(String, Status)>, PortError> {
        let mut pages = self
            .client
            .list_command_invocations()
            .command_id(command_id)
            .max_results(50)
            .into_paginator()
            .send();
        let mut out = vec![];
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("SSM ListCommandInvocations", e))?;
            for inv in page.command_invocations.unwrap_or_default() {
                let details = inv.status_details.as_deref().unwrap_or_default();
                let status = match inv.status {
                    _ if is_gone(details) => Status::Gone(details.to_string()),
                    Some(CommandInvocationStatus::Success) => Status::Succeeded,
                    Some(
                        CommandInvocationStatus::Failed
                        | CommandInvocationStatus::TimedOut
                        | CommandInvocationStatus::Cancelled,
                    ) => Status::Failed,
                    _ => Status::Running,
                };
                if let Some(id) = inv.instance_id {
                    out.push((id, status));
                }
            }
        }
        Ok(out)
    }

    async fn outcome(
        &self,
        command_id: &str,
        node: &str,
    ) -> Result<Option<(Option<i32>, String)>, PortError> {
        match self
            .client
            .get_command_invocation()
            .command_id(command_id)
            .instance_id(node)
            .send()
            .await
        {
            Ok(inv) => {
                let mut text = inv.standard_output_content.unwrap_or_default();
                let err = inv.standard_error_content.unwrap_or_default();
                if !err.is_empty() {
                    text.push('\n');
                    text.push_str(&err);
                }
                if text.trim().is_empty() {
                    text = inv.status_details.unwrap_or_default();
                }
                // SSM reports -1 when the script never ran to an exit (timeout, cancel).
                let code = Some(inv.response_code).filter(|c| *c >= 0);
                Ok(Some((code, tail(&text, OUTPUT_TAIL))))
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invocation_does_not_exist()) =>
            {
                Ok(None)
            }
            Err(e) => Err(sdk_err("SSM GetCommandInvocation", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    #[test]
    fn undelivered_invocations_read_as_gone_in_either_spelling() {
        for gone in ["Undeliverable", "DeliveryTimedOut", "Delivery Timed Out"] {
            assert!(super::is_gone(gone), "{gone}");
        }
        for not in [
            "Execution Timed Out",
            "ExecutionTimedOut",
            "Failed",
            "Terminated",
            "",
        ] {
            assert!(!super::is_gone(not), "{not}");
        }
    }

    use super::*;
    use crate::deploy::job::Source;
    use crate::deploy::ports::Throttled;
    use crate::deploy::version::Version;

    /// Run Command as far as the cap is concerned: each command starts at most its
    /// `MaxConcurrency` invocations at once, in order; an invocation takes one tick.
    #[derive(Default)]
    struct Twin {
        state: Mutex<TwinState>,
    }

    /// (comment, nodes, max concurrency, per node: the tick it started, if it has)
    type TwinCommand = (String, Vec<String>, usize, Vec<Option<u32>>);

    #[derive(Default)]
    struct TwinState {
        commands: Vec<TwinCommand>,
        now: u32,
        most_in_flight: usize,
        /// ListCommands calls (lookups by comment).
        finds: usize,
        /// The next send goes out, but its answer is lost (the call fails).
        lose_next_answer: bool,
        /// The next send is refused as throttled, and does not go out.
        throttle_next: bool,
        /// Each send's TimeoutSeconds, and its script.
        timeouts: Vec<u64>,
        scripts: Vec<String>,
    }

    impl Twin {
        fn tick(&self) {
            let mut s = self.state.lock().unwrap();
            s.now += 1;
            let now = s.now;
            let mut in_flight = 0;
            for (_, _, max, started) in &mut s.commands {
                let running = |t: &Option<u32>| t.is_some_and(|t| t >= now);
                let mut busy = started.iter().filter(|t| running(t)).count();
                for t in started.iter_mut().filter(|t| t.is_none()) {
                    if busy == *max {
                        break;
                    }
                    *t = Some(now);
                    busy += 1;
                }
                in_flight += busy;
            }
            s.most_in_flight = s.most_in_flight.max(in_flight);
        }
    }

    #[async_trait]
    impl RunCommand for Twin {
        async fn online_nodes(
            &self,
            _: &BTreeMap<String, String>,
        ) -> Result<Vec<String>, PortError> {
            unreachable!("the test names the nodes")
        }
        async fn send(&self, req: &SendRequest) -> Result<String, PortError> {
            let max = req.max_concurrency.parse().unwrap_or(usize::MAX);
            let mut s = self.state.lock().unwrap();
            if std::mem::take(&mut s.throttle_next) {
                return Err(Box::new(Throttled("ThrottlingException".into())));
            }
            let started = vec![None; req.nodes.len()];
            s.timeouts.push(req.timeout_seconds);
            s.scripts.push(req.script.clone());
            s.commands
                .push((req.comment.clone(), req.nodes.clone(), max, started));
            if std::mem::take(&mut s.lose_next_answer) {
                return Err("connection reset".into());
            }
            Ok((s.commands.len() - 1).to_string())
        }
        async fn find(
            &self,
            _: &str,
            comment: &str,
            _: DateTime<Utc>,
        ) -> Result<Option<String>, PortError> {
            let mut s = self.state.lock().unwrap();
            s.finds += 1;
            let found = s.commands.iter().rposition(|c| c.0 == comment);
            Ok(found.map(|i| i.to_string()))
        }
        async fn statuses(&self, id: &str) -> Result<Vec<(String, Status)>, PortError> {
            let s = self.state.lock().unwrap();
            let (_, nodes, _, started) = &s.commands[id.parse::<usize>()?];
            let done = |t: &Option<u32>| t.is_some_and(|t| t < s.now);
            Ok(nodes
                .iter()
                .zip(started)
                .map(|(n, t)| {
                    (
                        n.clone(),
                        if done(t) {
                            Status::Succeeded
                        } else {
                            Status::Running
                        },
                    )
                })
                .collect())
        }
        async fn outcome(
            &self,
            _: &str,
            _: &str,
        ) -> Result<Option<(Option<i32>, String)>, PortError> {
            Ok(None)
        }
    }

    /// The fleet over a twin, for app hello in production, and a job of it.
    fn rig(install: &str) -> (Arc<Config>, DeployJob) {
        let text = format!(
            r#"
[apps.hello]
package = "hello-app"
install = "{install}"
restart = "true"
[apps.hello.environments.production]
ssm_tags = {{ "shipit:app" = "hello", "shipit:env" = "production" }}
"#
        );
        let config = Arc::new(Config::parse(&text, std::path::Path::new("c.toml")).unwrap());
        let source = Source::Cli {
            user: "t".into(),
            nonce: "n".into(),
        };
        let job = DeployJob::new(
            "hello",
            "production",
            config.apps["hello"].package.clone(),
            Version::parse("1.0.0").unwrap(),
            source,
            Utc::now(),
        );
        (config, job)
    }

    fn install_on(job: &DeployJob, key: &str, nodes: usize, cap: u32) -> Command {
        Command {
            key: format!("{}:{key}", job.id),
            kind: CommandKind::Install,
            version: job.version.clone(),
            nodes: (0..nodes).map(|i| format!("i-{i:017x}")).collect(),
            concurrency: cap,
            fence: 0,
            not_after: None,
            check: None,
        }
    }

    /// Installs on `nodes` nodes with `install_concurrency = cap`, polling as the engine
    /// does (and replaying every poll once, as a crashed step would); the most installs
    /// that ran at once, and how many SSM commands carried them.
    async fn install(install: &str, nodes: usize, cap: u32) -> (usize, usize) {
        let (config, job) = rig(install);
        let fleet = SsmFleet::new(Twin::default(), config.clone());
        let cmd = install_on(&job, "install", nodes, cap);
        let mut sent = None;
        for _ in 0..10 * nodes {
            let before = sent.clone();
            let results = fleet.run_on(&job, &cmd, 0, &mut sent, false).await.unwrap();
            let mut replayed = before;
            fleet
                .run_on(&job, &cmd, 0, &mut replayed, true)
                .await
                .unwrap();
            if results.iter().all(|(_, r)| *r == NodeResult::Succeeded) {
                let s = fleet.api.state.lock().unwrap();
                return (s.most_in_flight, s.commands.len());
            }
            fleet.api.tick();
        }
        panic!("the install never ended");
    }

    #[tokio::test]
    async fn the_install_cap_holds_across_batches_of_50() {
        // Three SSM commands (50, 50, 20) under a cap of 2: not one invocation each.
        let (most, commands) = install("pip install {package}=={version}", 120, 2).await;
        assert_eq!(commands, 3);
        assert_eq!(most, 2);
        // A cap above the batches: all of it is used.
        assert_eq!(
            install("pip install {package}=={version}", 120, 70).await,
            (70, 3)
        );
    }

    #[tokio::test]
    async fn the_install_cap_holds_when_every_node_has_its_own_command() {
        let (most, commands) = install("pip install {package}=={version} # {node}", 10, 3).await;
        assert_eq!(commands, 10, "one command per node, each sent once");
        assert_eq!(most, 3);
        // No cap: every node at once.
        assert_eq!(
            install("pip install {package}=={version} # {node}", 10, 0).await,
            (10, 10)
        );
    }

    #[tokio::test]
    async fn each_part_must_start_within_the_delivery_timeout_of_its_own_send() {
        let (config, job) = rig("pip install {package}=={version}");
        // Every look at the clock is 50 s later: sending the parts takes a while.
        let t0 = Utc::now();
        let reads = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let clock = reads.clone();
        let fleet =
            SsmFleet::new(Twin::default(), config.clone()).with_clock(Arc::new(move || {
                let n = clock.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                t0 + Duration::seconds(50 * n)
            }));
        let deadline = |script: &str| -> i64 {
            let test = "\"$(date +%s)\" -gt ";
            let at = script.find(test).expect("a start-by time") + test.len();
            script[at..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        };
        // 120 nodes, uncapped: three parts sent in one go, each given its own time.
        let cmd = install_on(&job, "install", 120, 0);
        fleet.run_on(&job, &cmd, 0, &mut None, false).await.unwrap();
        let scripts = fleet.api.state.lock().unwrap().scripts.clone();
        let deadlines: Vec<i64> = scripts.iter().map(|s| deadline(s)).collect();
        assert_eq!(deadlines.len(), 3);
        assert!(
            deadlines.windows(2).all(|w| w[1] >= w[0] + 50),
            "{deadlines:?}"
        );
        assert!(deadlines[0] >= t0.timestamp() + DELIVERY_TIMEOUT_SECONDS);
        // Capped, it runs in waves: no start-by time.
        let fleet = SsmFleet::new(Twin::default(), config.clone());
        let cmd = install_on(&job, "capped", 10, 2);
        fleet.run_on(&job, &cmd, 0, &mut None, false).await.unwrap();
        let scripts = fleet.api.state.lock().unwrap().scripts.clone();
        assert!(!scripts.is_empty());
        assert!(scripts.iter().all(|s| !s.contains("\"$(date +%s)\" -gt ")));
    }

    #[tokio::test]
    async fn a_part_sent_late_gets_what_is_left_of_the_wait_for_it_and_none_once_it_is_up() {
        let (config, job) = rig("pip install {package}=={version}");
        let t0 = Utc::now();
        let clock = Arc::new(std::sync::Mutex::new(t0));
        let read = clock.clone();
        let fleet = SsmFleet::new(Twin::default(), config.clone())
            .with_clock(Arc::new(move || *read.lock().unwrap()));
        let at = |s: u64| *clock.lock().unwrap() = t0 + Duration::seconds(s as i64);
        let limit = config.apps["hello"]
            .rollout
            .command_seconds(CommandKind::Install);
        // What the deploy waits past a command's time, less SSM's delivery timeout.
        let margin = (COMMAND_GRACE_SECONDS - DELIVERY_TIMEOUT_SECONDS) as u64;
        // 120 nodes under a cap of 50: three parts, the later ones as room frees up.
        let cmd = install_on(&job, "install", 120, 50);
        let mut sent = None;
        fleet.run_on(&job, &cmd, 0, &mut sent, false).await.unwrap();
        fleet.api.tick();
        fleet.api.tick();
        // Late, but within the margin: the whole time. Past it: what is left.
        at(margin + 100);
        fleet.run_on(&job, &cmd, 0, &mut sent, false).await.unwrap();
        assert_eq!(
            fleet.api.state.lock().unwrap().timeouts,
            [limit, limit - 100]
        );
        // No time left for the last part: it is not sent, and the step fails (the
        // deploy is then wound down).
        fleet.api.tick();
        fleet.api.tick();
        at(limit + margin);
        let err = fleet
            .run_on(&job, &cmd, 0, &mut sent, false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("part 3 of 3"), "{err}");
        assert_eq!(fleet.api.state.lock().unwrap().commands.len(), 2);
        assert_eq!(sent.as_ref().map(|s| s.commands.len()), Some(2));
    }

    #[tokio::test]
    async fn only_a_replay_or_a_lost_answer_looks_for_a_command_before_sending_it() {
        let (config, job) = rig("pip install {package}=={version}");
        let fleet = SsmFleet::new(Twin::default(), config.clone());
        let counts = || {
            let s = fleet.api.state.lock().unwrap();
            (s.finds, s.commands.len())
        };
        // Continuing from a saved state: straight to SendCommand.
        let cmd = install_on(&job, "a", 2, 0);
        let mut sent = None;
        fleet.run_on(&job, &cmd, 0, &mut sent, false).await.unwrap();
        assert_eq!(counts(), (0, 1));
        // A retry of that same input may follow a send whose state was lost: it looks,
        // and finds the command instead of sending another.
        let mut again = None;
        fleet.run_on(&job, &cmd, 0, &mut again, true).await.unwrap();
        assert_eq!(counts(), (1, 1));
        // (Its time counted from this try: the first one's was lost with its state.)
        let commands = |s: &Option<Sent>| s.as_ref().map(|s| (s.key.clone(), s.commands.clone()));
        assert_eq!(commands(&again), commands(&sent));

        // A send that went out but whose answer was lost is saved as unsure, and the
        // next step, even from that saved state, looks for it first.
        let cmd = install_on(&job, "b", 2, 0);
        fleet.api.state.lock().unwrap().lose_next_answer = true;
        let mut sent = None;
        assert!(fleet.run_on(&job, &cmd, 0, &mut sent, false).await.is_err());
        assert!(sent
            .as_ref()
            .is_some_and(|s| s.unsure && s.commands.is_empty()));
        assert_eq!(counts(), (1, 2));
        fleet.run_on(&job, &cmd, 0, &mut sent, false).await.unwrap();
        assert_eq!(counts(), (2, 2), "sent a second time");
        let s = sent.unwrap();
        assert_eq!((s.commands, s.unsure), (vec!["1".to_string()], false));

        // A throttled send did not go out: nothing to look for before sending it.
        let cmd = install_on(&job, "c", 2, 0);
        fleet.api.state.lock().unwrap().throttle_next = true;
        let mut sent = None;
        let err = fleet.run_on(&job, &cmd, 0, &mut sent, false).await;
        assert!(err.is_err_and(|e| is_throttled(&e)));
        assert_eq!(sent, None);
        fleet.run_on(&job, &cmd, 0, &mut sent, false).await.unwrap();
        assert_eq!(counts(), (2, 3), "sent without a look");
        assert_eq!(sent.unwrap().commands, vec!["2".to_string()]);

        // After a lost answer whose command a lookup misses (SSM shows it late), a
        // throttled send still leaves the earlier one to look for.
        let cmd = install_on(&job, "e", 2, 0);
        fleet.api.state.lock().unwrap().lose_next_answer = true;
        let mut sent = None;
        assert!(fleet.run_on(&job, &cmd, 0, &mut sent, false).await.is_err());
        let hide = |s: &mut TwinState| s.commands.last_mut().unwrap().0 = "not yet".into();
        hide(&mut fleet.api.state.lock().unwrap());
        fleet.api.state.lock().unwrap().throttle_next = true;
        assert!(fleet.run_on(&job, &cmd, 0, &mut sent, false).await.is_err());
        assert!(sent.as_ref().is_some_and(|s| s.unsure));
        fleet.run_on(&job, &cmd, 0, &mut sent, false).await.unwrap();
        assert_eq!(counts(), (4, 5), "looked for again before sending");

        // The same for a key of several commands: its record stays, with none sent.
        let (config, job) = rig("pip install {package}=={version} # {node}");
        let fleet = SsmFleet::new(Twin::default(), config);
        let cmd = install_on(&job, "d", 3, 0);
        fleet.api.state.lock().unwrap().throttle_next = true;
        let mut sent = None;
        assert!(fleet.run_on(&job, &cmd, 0, &mut sent, false).await.is_err());
        let s = sent.clone().unwrap();
        assert_eq!((s.parts, s.commands.len(), s.unsure), (3, 0, false));
        fleet.run_on(&job, &cmd, 0, &mut sent, false).await.unwrap();
        let s = fleet.api.state.lock().unwrap();
        assert_eq!((s.finds, s.commands.len()), (0, 3));
    }
}
