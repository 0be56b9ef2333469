//! SSM Run Command as the fleet: nodes are the managed nodes (EC2 `i-…` and hybrid `mi-…`)
//! carrying an environment's tags that SSM can reach; a command is `AWS-RunShellScript`.
//!
//! A command key becomes one or more SSM commands (at most 50 nodes each), each with the
//! comment `shipit {key} {i}/{n}`. Before sending one, the fleet looks for it by that
//! comment, so a step replayed after a crash finds the command it already sent instead
//! of running it a second time.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_ssm::types::{
    CommandFilter, CommandFilterKey, CommandInvocationStatus, InstanceInformationStringFilter,
};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use std::sync::Arc;

use super::sdk_err;
use crate::config::command::{ScriptError, Site};
use crate::config::{App, Config, Environment, Nodes};
use crate::deploy::command::{tail, Command, CommandKind, NodeResult, OUTPUT_TAIL};
use crate::deploy::job::DeployJob;
use crate::deploy::lock::DELIVERY_TIMEOUT_SECONDS;
use crate::deploy::ports::{Fleet, PortError, Refused, Sent};

/// SendCommand takes at most 50 instance ids.
pub const MAX_TARGETS: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Running,
    Succeeded,
    Failed,
}

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
    /// Sends `req`; returns the command id.
    async fn send(&self, req: &SendRequest) -> Result<String, PortError>;
    /// The id of a command sent to `node` since `after` with `comment`.
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

pub struct SsmFleet<R> {
    api: R,
    config: Arc<Config>,
}

impl<R: RunCommand> SsmFleet<R> {
    pub fn new(api: R, config: Arc<Config>) -> SsmFleet<R> {
        SsmFleet { api, config }
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
    /// on it after that. `max_errors` is the deploy's install error budget.
    pub async fn run_on(
        &self,
        app: &App,
        env: &Environment,
        job: &DeployJob,
        cmd: &Command,
        max_errors: u32,
        sent: &mut Option<Sent>,
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        if let Some(s) = sent.as_ref().filter(|s| s.key == cmd.key) {
            return self.report(cmd, &s.commands).await;
        }
        let Nodes::Ssm { dir, vars, .. } = &env.nodes else {
            return Err(Refused::error(format!(
                "environment {} has no ssm_tags",
                env.name
            )));
        };
        // Nodes whose script is the same share SSM commands; it differs only if `{node}`
        // is used.
        let mut groups: Vec<(String, Vec<String>)> = vec![];
        for node in &cmd.nodes {
            let site = Site {
                node,
                dir: dir.as_deref(),
                vars,
            };
            let script = match app.script(env, cmd, &site) {
                Ok(Some(script)) => script,
                Ok(None) => return Ok(all(&cmd.nodes, NodeResult::Succeeded)),
                Err(e @ ScriptError::NoVersionCommand(_)) => {
                    let unknown = NodeResult::Failed {
                        exit_code: None,
                        output: e.to_string(),
                    };
                    return Ok(all(&cmd.nodes, unknown));
                }
                Err(e) => return Err(e.to_string().into()),
            };
            match groups.iter_mut().find(|(s, _)| *s == script) {
                Some((_, nodes)) => nodes.push(node.clone()),
                None => groups.push((script, vec![node.clone()])),
            }
        }
        let parts: Vec<(&String, &[String])> = groups
            .iter()
            .flat_map(|(script, nodes)| nodes.chunks(MAX_TARGETS).map(move |c| (script, c)))
            .collect();
        // A concurrency cap is shared out between the commands.
        let max_concurrency = match cmd.concurrency as usize {
            0 => "100%".to_string(),
            c => (c / parts.len()).max(1).to_string(),
        };
        let max_errors = if cmd.kind == CommandKind::Install && cmd.version == job.version {
            max_errors.to_string()
        } else {
            // Putting the old version back: try every node.
            "100%".to_string()
        };
        // Commands are sent after the job was requested; a margin covers clock skew.
        let after = job.requested_at - Duration::minutes(5);
        let mut ids = vec![];
        for (i, (script, nodes)) in parts.iter().enumerate() {
            let comment = format!("shipit {} {}/{}", cmd.key, i + 1, parts.len());
            let id = match self.api.find(&nodes[0], &comment, after).await? {
                Some(id) => {
                    tracing::info!(key = %cmd.key, command_id = %id, "found the command a previous step sent");
                    id
                }
                None => {
                    self.api
                        .send(&SendRequest {
                            nodes: nodes.to_vec(),
                            script: script.to_string(),
                            dir: dir.clone(),
                            comment,
                            max_concurrency: max_concurrency.clone(),
                            max_errors: max_errors.clone(),
                            timeout_seconds: app.rollout.command_timeout_seconds,
                        })
                        .await?
                }
            };
            ids.push(id);
        }
        *sent = Some(Sent {
            key: cmd.key.clone(),
            commands: ids,
        });
        // SSM needs a moment before it shows the invocations: ask again on the next poll.
        Ok(all(&cmd.nodes, NodeResult::Running))
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
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        let (app, env) = self.target(job)?;
        self.run_on(app, env, job, cmd, max_errors, sent).await
    }
}

fn all(nodes: &[String], r: NodeResult) -> Vec<(String, NodeResult)> {
    nodes.iter().map(|n| (n.clone(), r.clone())).collect()
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
        let mut pages = self
            .client
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
                    .filter_map(|i| i.instance_id),
            );
        }
        Ok(nodes)
    }
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
            .send()
            .await
            .map_err(|e| sdk_err("SSM SendCommand", e))?;
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
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| sdk_err("SSM ListCommands", e))?;
            if let Some(c) = page
                .commands
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.comment.as_deref() == Some(comment))
            {
                return Ok(c.command_id);
            }
        }
        Ok(None)
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
                let status = match inv.status {
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
