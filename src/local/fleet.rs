//! The one-machine runtime's fleet: the nodes listed in the config, each a directory on
//! this machine or one reached over SSH (see `ssh`). Commands run there through `sh -c`,
//! with every substituted value shell-quoted (see `template`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::process::Command as Process;
use tokio::sync::Semaphore;

use super::ssh;
use super::store::checkpoints::CommandRecord;
use super::store::Store;
use crate::config::command::Site;
use crate::config::ssh::Ssh;
use crate::config::{App, Config, Environment, Nodes};
use crate::deploy::command::{tail, Command, CommandKind, NodeResult, OUTPUT_TAIL};
use crate::deploy::job::DeployJob;
use crate::deploy::ports::{Fleet, PortError, Refused, Sent};

#[derive(Clone)]
pub struct LocalFleet {
    store: Store,
    config: Arc<Config>,
    /// Where connections to SSH nodes are shared from (see `ssh::control_dir`).
    control: Option<Arc<PathBuf>>,
}

impl LocalFleet {
    pub fn new(store: Store, config: Arc<Config>) -> LocalFleet {
        let listed = config.apps.values().flat_map(|a| a.environments.values());
        let over_ssh = listed
            .filter_map(|e| match &e.nodes {
                Nodes::Listed(nodes) => Some(nodes),
                Nodes::Ssm { .. } => None,
            })
            .flatten()
            .any(|n| n.ssh.is_some());
        let control = over_ssh
            .then(|| ssh::control_dir(&config.server.state))
            .flatten()
            .map(Arc::new);
        LocalFleet {
            store,
            config,
            control,
        }
    }

    fn target(&self, job: &DeployJob) -> Result<(&App, &Environment), PortError> {
        self.config.target(job).map_err(Refused::error)
    }

    /// Runs `cmd` on its nodes and returns every node's result. A node whose result for
    /// this key is recorded is not run again. One started by a process that died before
    /// recording a result is waited for (its `sh` lives on in its own process group);
    /// then an interrupted restart is probed with the health check, and run again only
    /// if the node does not serve the version yet. Other commands are run again (an
    /// install or a check is safe to repeat).
    pub async fn run_on(
        &self,
        app: &App,
        env: &Environment,
        cmd: &Command,
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        let Nodes::Listed(nodes) = &env.nodes else {
            return Err(ssm_nodes(app, env));
        };
        let recorded: HashMap<String, CommandRecord> = self
            .store
            .command_results(&cmd.key)
            .await?
            .into_iter()
            .map(|r| (r.node.clone(), r))
            .collect();
        let limit = if cmd.concurrency == 0 {
            cmd.nodes.len().max(1)
        } else {
            cmd.concurrency as usize
        };
        let permits = Arc::new(Semaphore::new(limit));
        let mut running = tokio::task::JoinSet::new();
        for name in &cmd.nodes {
            let interrupted = match recorded.get(name) {
                Some(CommandRecord {
                    result: Some(_), ..
                }) => continue,
                Some(r) => Some(r.since),
                None => None,
            };
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
                    let at = At {
                        dir: node.dir.clone(),
                        ssh: node.ssh.clone(),
                        control: self.control.clone(),
                    };
                    app.script(env, cmd, &site)
                        .map(|s| s.map(|script| (at, script)))
                        .map_err(|e| e.to_string())
                }
            };
            let (store, key, name, permits) = (
                self.store.clone(),
                cmd.key.clone(),
                name.clone(),
                permits.clone(),
            );
            let timeout = Duration::from_secs(app.rollout.command_seconds(cmd.kind));
            let kind = cmd.kind;
            let record = crate::config::command::run_record(&cmd.key);
            running.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let result = match plan {
                    // Nothing runs: recorded as started so that the result has its row.
                    Err(e) => {
                        store.command_started(&key, &name, Utc::now()).await?;
                        failed(None, e)
                    }
                    Ok(None) => {
                        store.command_started(&key, &name, Utc::now()).await?;
                        NodeResult::Succeeded
                    }
                    Ok(Some((at, script))) => {
                        let ran = match interrupted {
                            Some(since) => recover(&at, &record, &key, &name, since, timeout).await,
                            None => None,
                        };
                        match ran {
                            Some(result) => result,
                            None => {
                                // Noted before it runs: if shipit dies now, the next
                                // worker knows it was started, and when.
                                store.command_started(&key, &name, Utc::now()).await?;
                                execute(&at, &script, timeout, kind).await
                            }
                        }
                    }
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
            .map(|r| (r.node, r.result))
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

/// Where a node's commands run: its directory, here or over SSH.
struct At {
    dir: PathBuf,
    ssh: Option<Ssh>,
    control: Option<Arc<PathBuf>>,
}

/// After a crash: a command shipit started outlives it (in a process group of its own),
/// and its run-once record on the node says by which process (pid, boot id, start time:
/// a pid alone may be another process's after a reboot). Locally nothing else bounds it,
/// so this waits for it until the command's deadline, then stops it as a timeout would.
/// `None`: send the command again under its key, and the node's record answers what the
/// first run did (or runs it, if it never ran or died without an end). Over SSH the
/// remote `timeout` bounds the first run, and the node's record waits for it.
async fn recover(
    at: &At,
    record: &str,
    key: &str,
    node: &str,
    since: chrono::DateTime<Utc>,
    timeout: Duration,
) -> Option<NodeResult> {
    if at.ssh.is_some() {
        return None;
    }
    let record = at.dir.join(record);
    let first = first_run(&record)?;
    let deadline = since + chrono::Duration::from_std(timeout).unwrap_or(chrono::Duration::MAX);
    tracing::info!(%key, %node, pid = first, "the interrupted command still runs; waiting for it");
    // Its `sh`, not its group: a restart may leave its service in the group, running.
    while first_run(&record).is_some() {
        if Utc::now() >= deadline {
            tracing::warn!(%key, %node, pid = first, "the interrupted command ran past its timeout; stopping it");
            stop_group(first).await;
            return Some(failed(
                None,
                format!(
                    "timed out after {} s (while shipit was down); its processes were stopped",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The process of a command's first run, from its record (`config::command::once`), while
/// it still runs as that process: same boot, same start time, not a zombie.
fn first_run(record: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(record.join("pid")).ok()?;
    let mut fields = text.split_whitespace();
    let (pid, boot, began) = (
        fields.next()?.parse::<u32>().ok()?,
        fields.next()?,
        fields.next()?,
    );
    let now_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = Stat::read(Path::new(&format!("/proc/{pid}/stat")))?;
    (stat.running() && now_boot.trim() == boot && stat.field(22) == Some(began)).then_some(pid)
}

/// A process's `/proc/PID/stat`.
struct Stat(String);

impl Stat {
    fn read(path: &Path) -> Option<Stat> {
        std::fs::read_to_string(path).ok().map(Stat)
    }

    /// Field `n` (from 1, as proc(5) counts them), from 3 on: they follow the command
    /// name, which may hold anything but ends with the last ')'.
    fn field(&self, n: usize) -> Option<&str> {
        self.0
            .rsplit_once(')')?
            .1
            .split_whitespace()
            .nth(n.checked_sub(3)?)
    }

    /// Neither a zombie nor dead: zombies stay for good in a container whose first
    /// process reaps nothing, and run nothing.
    fn running(&self) -> bool {
        !matches!(self.field(3), Some("Z" | "X") | None)
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
            Nodes::Listed(nodes) => Ok(nodes.iter().map(|n| n.name.clone()).collect()),
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
        _replayed: bool,
    ) -> Result<Vec<(String, NodeResult)>, PortError> {
        let (app, env) = self.target(job)?;
        self.run_on(app, env, cmd).await
    }
}

fn failed(exit_code: Option<i32>, output: String) -> NodeResult {
    NodeResult::Failed { exit_code, output }
}

/// How long a timed-out command's processes have between TERM and KILL.
const KILL_AFTER: Duration = Duration::from_secs(5);

/// What ssh says when it cannot reach a server, or lost it mid-command.
const UNREACHABLE: [&str; 8] = [
    "Connection refused",
    "No route to host",
    "Connection timed out",
    "Network is unreachable",
    "Could not resolve hostname",
    "closed by remote host",
    "Connection reset",
    "not responding",
];

/// Sends SIG to every process of group `pgid` (a command's `sh` and all it started
/// that did not leave the group).
async fn signal_group(pgid: u32, sig: &str) {
    let _ = Process::new("kill")
        .args([format!("-{sig}"), "--".into(), format!("-{pgid}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
}

/// TERM to every process of group `pgid`, KILL to what is left `KILL_AFTER` later; back
/// once none runs (a killed process ends when it is next scheduled: the next command, a
/// rollback's install, must not start beside what is left of this one).
async fn stop_group(pgid: u32) {
    let gone = || async {
        while group_alive(pgid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    signal_group(pgid, "TERM").await;
    if tokio::time::timeout(KILL_AFTER, gone()).await.is_err() {
        signal_group(pgid, "KILL").await;
        let _ = tokio::time::timeout(KILL_AFTER, gone()).await;
    }
}

/// Whether a process of group `pgid` still runs (`Stat::running`).
fn group_alive(pgid: u32) -> bool {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        // No /proc: `kill -0` asks, zombies included.
        return std::process::Command::new("kill")
            .args(["-0", "--", &format!("-{pgid}")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    };
    let group = pgid.to_string();
    procs.flatten().any(|p| {
        Stat::read(&p.path().join("stat"))
            .is_some_and(|stat| stat.running() && stat.field(5) == Some(group.as_str()))
    })
}

/// Runs `script` in the node's directory in a process group of its own (a Ctrl-C or
/// SIGTERM meant for shipit does not cut a restart in half, and a command, or the `ssh`
/// that carries it, outlives a worker that was killed).
async fn execute(at: &At, script: &str, timeout: Duration, kind: CommandKind) -> NodeResult {
    let mut command = match &at.ssh {
        Some(remote) => ssh::command(
            remote,
            at.control.as_deref().map(PathBuf::as_path),
            &at.dir,
            script,
            timeout,
        ),
        None if !at.dir.is_dir() => {
            return failed(
                None,
                format!("node directory {} does not exist", at.dir.display()),
            );
        }
        None => {
            let mut c = Process::new("sh");
            c.arg("-c").arg(script).current_dir(&at.dir);
            c
        }
    };
    command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    #[cfg(unix)]
    command.process_group(0);
    let program = if at.ssh.is_some() { "ssh" } else { "sh" };
    let child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return failed(None, format!("cannot start {program}: {e}")),
    };
    let pid = child.id();
    // Over SSH the remote `timeout` stops the command and says so: give it time to.
    let timeout = match at.ssh {
        Some(_) => timeout + KILL_AFTER + Duration::from_secs(5),
        None => timeout,
    };
    let output = child.wait_with_output();
    tokio::pin!(output);
    let finished = tokio::select! {
        out = &mut output => Some(out),
        _ = tokio::time::sleep(timeout) => None,
    };
    let Some(finished) = finished else {
        // Past its timeout: the whole process group goes, not just `sh` (an install's
        // pip, a child a script left running): TERM, then KILL what is left.
        if let Some(pid) = pid {
            stop_group(pid).await;
        }
        return failed(
            None,
            format!(
                "timed out after {} s; its processes were stopped (TERM, then KILL after {} s)",
                timeout.as_secs(),
                KILL_AFTER.as_secs()
            ),
        );
    };
    match finished {
        Err(e) => failed(None, format!("waiting for the command: {e}")),
        Ok(out) if out.status.success() && kind == CommandKind::Version => NodeResult::Reported {
            output: tail(&String::from_utf8_lossy(&out.stdout), OUTPUT_TAIL),
        },
        Ok(out) if out.status.success() => NodeResult::Succeeded,
        Ok(out) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            // 255 is ssh's own failure (connection, login, host key), which its
            // message says; a remote command's own 255 reads the same, and is rare.
            if let (Some(remote), Some(255)) = (&at.ssh, out.status.code()) {
                text = format!("ssh {remote}: {}", text.trim_end());
                // Not there (down, terminated, cut off mid-command): no verdict on the
                // version. A host key that changed is no absence: it fails.
                if UNREACHABLE.iter().any(|m| text.contains(m)) {
                    return NodeResult::Gone {
                        detail: tail(&text, OUTPUT_TAIL),
                    };
                }
            }
            failed(out.status.code(), tail(&text, OUTPUT_TAIL))
        }
    }
}
