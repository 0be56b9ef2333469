//! The local fleet: a node is a directory on this machine; commands run there through
//! `sh -c`, with every substituted value shell-quoted (see `template`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::process::Command as Process;
use tokio::sync::Semaphore;

use super::store::Store;
use crate::config::command::Site;
use crate::config::{App, Config, Environment, Nodes};
use crate::deploy::command::{tail, Command, CommandKind, NodeResult, OUTPUT_TAIL};
use crate::deploy::job::DeployJob;
use crate::deploy::ports::{Fleet, PortError, Refused, Sent};

#[derive(Clone)]
pub struct LocalFleet {
    store: Store,
    config: Arc<Config>,
}

impl LocalFleet {
    pub fn new(store: Store, config: Arc<Config>) -> LocalFleet {
        LocalFleet { store, config }
    }

    fn target(&self, job: &DeployJob) -> Result<(&App, &Environment), PortError> {
        self.config.target(job).map_err(Refused::error)
    }

    /// Runs `cmd` on its nodes and returns every node's result. A node whose result for
    /// this key is recorded is not run again; one started by a process that died before
    /// recording a result is run again (its outcome is unknown).
    pub async fn run_on(
        &self,
        app: &App,
        env: &Environment,
        cmd: &Command,
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        let Nodes::Local(nodes) = &env.nodes else {
            return Err(ssm_nodes(app, env));
        };
        let recorded: HashMap<String, Option<NodeResult>> = self
            .store
            .command_results(&cmd.key)
            .await?
            .into_iter()
            .collect();
        let limit = if cmd.concurrency == 0 {
            cmd.nodes.len().max(1)
        } else {
            cmd.concurrency as usize
        };
        let permits = Arc::new(Semaphore::new(limit));
        let mut running = tokio::task::JoinSet::new();
        for name in &cmd.nodes {
            if let Some(Some(_)) = recorded.get(name) {
                continue;
            }
            if recorded.contains_key(name) {
                tracing::warn!(key = %cmd.key, node = %name, "command was interrupted before it finished; running it again");
            }
            // What to run where: Err is a failure before anything runs, None nothing to run.
            let plan = match nodes.iter().find(|n| &n.name == name) {
                None => Err(format!("node {name} is not in the config")),
                Some(node) => {
                    let dir = node.dir.display().to_string();
                    let site = Site {
                        node: &node.name,
                        dir: Some(&dir),
                        vars: &node.vars,
                    };
                    app.script(env, cmd, &site)
                        .map(|s| s.map(|s| (node.dir.clone(), s)))
                        .map_err(|e| e.to_string())
                }
            };
            let (store, key, name, permits) = (
                self.store.clone(),
                cmd.key.clone(),
                name.clone(),
                permits.clone(),
            );
            let timeout = Duration::from_secs(app.rollout.command_timeout_seconds);
            let kind = cmd.kind;
            running.spawn(async move {
                let _permit = permits.acquire_owned().await;
                // Noted before it runs: if shipit dies now, the restart knows it was started.
                store.command_started(&key, &name, Utc::now()).await?;
                let result = match plan {
                    Err(e) => failed(None, e),
                    Ok(None) => NodeResult::Succeeded,
                    Ok(Some((dir, script))) => execute(&dir, &script, timeout, kind).await,
                };
                store
                    .command_finished(&key, &name, &result, Utc::now())
                    .await?;
                Ok::<_, PortError>(())
            });
        }
        while let Some(done) = running.join_next().await {
            done??;
        }
        let now: HashMap<String, Option<NodeResult>> = self
            .store
            .command_results(&cmd.key)
            .await?
            .into_iter()
            .collect();
        Ok(cmd
            .nodes
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    now.get(n).cloned().flatten().unwrap_or(NodeResult::Running),
                )
            })
            .collect())
    }
}

fn ssm_nodes(app: &App, env: &Environment) -> PortError {
    Refused::error(format!(
        "{}/{} finds its nodes through SSM tags; deploy it with the AWS runtime",
        app.name, env.name
    ))
}

#[async_trait]
impl Fleet for LocalFleet {
    async fn resolve(&self, job: &DeployJob) -> Result<Vec<String>, PortError> {
        let (app, env) = self.target(job)?;
        match &env.nodes {
            Nodes::Local(nodes) => Ok(nodes.iter().map(|n| n.name.clone()).collect()),
            Nodes::Ssm { .. } => Err(ssm_nodes(app, env)),
        }
    }

    /// Local commands finish within the call (results are in the store), so there is
    /// nothing to remember in `sent`.
    async fn run(
        &self,
        job: &DeployJob,
        cmd: &Command,
        _max_errors: u32,
        _sent: &mut Option<Sent>,
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        let (app, env) = self.target(job)?;
        self.run_on(app, env, cmd).await
    }
}

fn failed(exit_code: Option<i32>, output: String) -> NodeResult {
    NodeResult::Failed { exit_code, output }
}

async fn execute(dir: &Path, script: &str, timeout: Duration, kind: CommandKind) -> NodeResult {
    if !dir.is_dir() {
        return failed(
            None,
            format!("node directory {} does not exist", dir.display()),
        );
    }
    let child = Process::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => return failed(None, format!("cannot start sh: {e}")),
    };
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Err(_) => failed(None, format!("timed out after {} s", timeout.as_secs())),
        Ok(Err(e)) => failed(None, format!("waiting for the command: {e}")),
        Ok(Ok(out)) if out.status.success() && kind == CommandKind::Version => {
            NodeResult::Reported {
                output: tail(&String::from_utf8_lossy(&out.stdout), OUTPUT_TAIL),
            }
        }
        Ok(Ok(out)) if out.status.success() => NodeResult::Succeeded,
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            failed(out.status.code(), tail(&text, OUTPUT_TAIL))
        }
    }
}
