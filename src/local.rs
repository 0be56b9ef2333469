//! The local fleet: a node is a directory on this machine; commands run there through
//! `sh -c`, with every substituted value shell-quoted (see `template`).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::process::Command as Process;
use tokio::sync::Semaphore;

use crate::config::{App, Environment, LocalNode, Nodes};
use crate::engine::{Command, CommandKind, NodeResult};
use crate::ports::PortError;
use crate::store::Store;

/// How much of a failed command's output is kept for the report.
pub const OUTPUT_TAIL: usize = 2000;

#[derive(Clone)]
pub struct LocalFleet {
    store: Store,
}

impl LocalFleet {
    pub fn new(store: Store) -> LocalFleet {
        LocalFleet { store }
    }

    /// Runs `cmd` on its nodes and returns every node's result. A node whose result for
    /// this key is recorded is not run again; one started by a process that died before
    /// recording a result is run again (its outcome is unknown).
    pub async fn run(
        &self,
        app: &App,
        env: &Environment,
        cmd: &Command,
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        let Nodes::Local(nodes) = &env.nodes else {
            return Err(format!(
                "{}/{} finds its nodes through SSM tags; deploy it with the AWS runtime",
                app.name, env.name
            )
            .into());
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
                Some(node) => script(app, env, node, cmd).map(|s| s.map(|s| (node.dir.clone(), s))),
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

fn failed(exit_code: Option<i32>, output: String) -> NodeResult {
    NodeResult::Failed { exit_code, output }
}

/// The shell command for `cmd` on `node`; `None` for a health check the app does not have.
fn script(
    app: &App,
    env: &Environment,
    node: &LocalNode,
    cmd: &Command,
) -> Result<Option<String>, String> {
    let template = match cmd.kind {
        CommandKind::Install => Some(&app.install),
        CommandKind::Restart => Some(&app.restart),
        CommandKind::Health => app.health.as_ref(),
        CommandKind::Version => match &app.version {
            Some(v) => Some(v),
            None => return Err(format!("apps.{}.version is not set", app.name)),
        },
    };
    let Some(template) = template else {
        return Ok(None);
    };
    let dir = node.dir.display().to_string();
    let package = app.package.to_string();
    template
        .render(|name| match name {
            "app" => Some(app.name.as_str()),
            "env" => Some(env.name.as_str()),
            "package" => Some(package.as_str()),
            "version" => Some(cmd.version.as_str()),
            "node" => Some(node.name.as_str()),
            "dir" => Some(dir.as_str()),
            other => node.vars.get(other).map(String::as_str),
        })
        .map(Some)
        .map_err(|e| e.to_string())
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

/// The last `max` bytes of `text`, cut at a character boundary.
pub fn tail(text: &str, max: usize) -> String {
    let text = text.trim_end();
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_string()
}
