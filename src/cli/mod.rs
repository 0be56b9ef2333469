//! What the `shipit` commands do on one machine, over the SQLite store.

pub mod demo;
pub mod plan;
pub mod views;

use views::{HistoryRow, NodeVersion};

pub use crate::run::overview::status;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use chrono::Utc;
use tokio::sync::watch;

use crate::config::{App, Config};
use crate::deploy::engine::Notice;
use crate::deploy::history::rollback_target;
use crate::deploy::job::{DeployJob, JobId, Source};
use crate::deploy::ports::{Cancel, JobQueue, Ledger, LockInfo, Stories, Unlocked};
use crate::deploy::report::lock_line;
use crate::deploy::status::JobStatus;
use crate::deploy::story::{Stage, Story};
use crate::deploy::version::Version;
use crate::drive::worker::Worker;
use crate::local::store::jobs::QueuedJob;
use crate::local::store::Store;

fn port(e: crate::deploy::ports::PortError) -> anyhow::Error {
    anyhow!("{e}")
}

fn target<'c>(
    config: &'c Config,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<(&'c App, String)> {
    let a = config.app(app).ok_or_else(|| {
        anyhow!(
            "unknown app {app:?}; known: {}",
            config.apps.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let env = env.unwrap_or(&a.default_env).to_string();
    if !a.environments.contains_key(&env) {
        bail!(
            "{app} has no environment {env:?} (it has: {})",
            a.environments
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok((a, env))
}

fn cli_source() -> Source {
    Source::Cli {
        user: cli_user(),
        nonce: nonce(),
    }
}

/// Who runs the command: `$USER` or `$LOGNAME` as a login shell sets them, else the
/// account of the process's uid (a service or a container may set neither).
fn cli_user() -> String {
    for var in ["USER", "LOGNAME"] {
        if let Some(user) = std::env::var(var).ok().filter(|u| !u.is_empty()) {
            return user;
        }
    }
    account()
}

/// The account of the process's uid, whatever the environment says: who overrides a
/// calendar is checked against `freeze_overriders` by it.
fn account() -> String {
    // SAFETY: getuid cannot fail; getpwuid's answer is read at once, before any other
    // call could reuse its buffer, and copied out.
    unsafe {
        let uid = libc::getuid();
        let pw = libc::getpwuid(uid);
        if !pw.is_null() && !(*pw).pw_name.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
        format!("uid {uid}")
    }
}

fn nonce() -> String {
    Utc::now()
        .timestamp_nanos_opt()
        .unwrap_or_default()
        .to_string()
}

pub async fn deploy(
    config: &Config,
    store: &Store,
    app: &str,
    version: &str,
    env: Option<&str>,
    force: bool,
) -> anyhow::Result<DeployJob> {
    let job = deploy_job(config, app, version, env, force)?;
    queue_deploy(config, store, job).await
}

/// Queues a person's deploy, unless its environment's calendar refuses it now (see
/// [`Environment::admit`](crate::config::Environment::admit)).
pub async fn queue_deploy(
    config: &Config,
    store: &Store,
    job: DeployJob,
) -> anyhow::Result<DeployJob> {
    let (_, env) = config.target(&job).map_err(|e| anyhow!(e))?;
    env.admit(&job, Utc::now())
        .map_err(|e| anyhow!("{e}; nothing was queued"))?;
    store
        .enqueue(std::slice::from_ref(&job))
        .await
        .map_err(port)?;
    Ok(job)
}

/// The job `shipit deploy` queues (and `--dry-run` plans).
pub fn deploy_job(
    config: &Config,
    app: &str,
    version: &str,
    env: Option<&str>,
    force: bool,
) -> anyhow::Result<DeployJob> {
    deploy_job_from(config, (app, version, env), force, cli_source())
}

/// The same, asked by the account running it, outside the environment's calendar
/// (`--override REASON`).
pub fn override_job(
    config: &Config,
    (app, version, env): (&str, &str, Option<&str>),
    force: bool,
    reason: &str,
) -> anyhow::Result<DeployJob> {
    let source = Source::Cli {
        user: account(),
        nonce: nonce(),
    };
    Ok(deploy_job_from(config, (app, version, env), force, source)?.overriding(reason))
}

fn deploy_job_from(
    config: &Config,
    (app, version, env): (&str, &str, Option<&str>),
    force: bool,
    source: Source,
) -> anyhow::Result<DeployJob> {
    let (a, env) = target(config, app, env)?;
    let version = Version::parse(version).map_err(|e| anyhow!("{e}; nothing was queued"))?;
    // Where a second person must approve, the requester is the account running this, as
    // for an approver: $USER could name anyone.
    let approvals = a
        .environments
        .get(&env)
        .is_some_and(|e| e.approvals.is_some());
    let source = match source {
        Source::Cli { nonce, .. } if approvals => Source::Cli {
            user: account(),
            nonce,
        },
        other => other,
    };
    let mut job = DeployJob::new(
        &a.name,
        &env,
        a.package.clone(),
        version,
        source,
        Utc::now(),
    );
    if force {
        job = job.forced();
    }
    Ok(job)
}

/// The live version of APP/ENV, and the app, for sync: refuses early what sync cannot do.
async fn sync_target<'c>(
    config: &'c Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<(&'c App, String, DeployJob)> {
    let (a, env) = target(config, app, env)?;
    let layout = a
        .environments
        .get(&env)
        .map(|e| e.layout)
        .unwrap_or_default();
    if a.version.is_none() && layout.version_command().is_none() {
        bail!(
            "apps.{}.version is not set: sync needs a command that prints a node's installed \
             version (e.g. venv/bin/pip show {{package}})",
            a.name
        );
    }
    let live = store
        .history(&a.name, &env, 1)
        .await
        .map_err(port)?
        .pop()
        .ok_or_else(|| {
            anyhow!(
                "nothing is live on {}/{env} yet: deploy a version first",
                a.name
            )
        })?;
    Ok((a, env, live.job))
}

/// Every node's installed version next to the live one; changes nothing.
pub async fn drift(
    config: &Arc<Config>,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<(Version, Vec<NodeVersion>)> {
    let (a, env, live) = sync_target(config, store, app, env).await?;
    let e = &a.environments[&env];
    let nodes = match &e.nodes {
        crate::config::Nodes::Listed(nodes) => nodes.iter().map(|n| n.name.clone()).collect(),
        crate::config::Nodes::Ssm { .. } => {
            bail!(
                "{}/{env} finds its nodes through SSM tags; check it on AWS",
                a.name
            )
        }
    };
    let cmd = crate::deploy::command::Command {
        key: format!("check:{}", nonce()),
        kind: crate::deploy::command::CommandKind::Version,
        version: live.version.clone(),
        nodes,
        concurrency: 0,
        // Reading versions changes nothing: no lock, no fence.
        fence: 0,
        not_after: None,
        check: None,
    };
    let results = crate::local::fleet::LocalFleet::new(store.clone(), config.clone())
        .run_on(a, e, &cmd)
        .await
        .map_err(port)?;
    let report = results
        .into_iter()
        .map(|(node, r)| {
            let (installed, detail) = crate::deploy::engine::probed(&r);
            NodeVersion {
                node,
                installed,
                detail,
            }
        })
        .collect();
    Ok((live.version, report))
}

/// Queues a sync of every node of APP/ENV to the live version.
pub async fn sync(
    config: &Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<DeployJob> {
    let (a, env, live) = sync_target(config, store, app, env).await?;
    let job = DeployJob::new(
        &a.name,
        &env,
        a.package.clone(),
        live.version,
        Source::Sync {
            nodes: vec![],
            by: cli_user(),
            nonce: nonce(),
        },
        Utc::now(),
    );
    store
        .enqueue(std::slice::from_ref(&job))
        .await
        .map_err(port)?;
    Ok(job)
}

pub async fn rollback(
    config: &Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<DeployJob> {
    let job = rollback_job(config, store, app, env).await?;
    store
        .enqueue(std::slice::from_ref(&job))
        .await
        .map_err(port)?;
    Ok(job)
}

/// The job `shipit rollback` queues (and `--dry-run` plans).
pub async fn rollback_job(
    config: &Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<DeployJob> {
    let (a, env) = target(config, app, env)?;
    let history = store.history(&a.name, &env, 50).await.map_err(port)?;
    let faulty = store.faulty(&a.name, &env).await.map_err(port)?;
    let (live, previous) = rollback_target(&history, &faulty)
        .map_err(|why| anyhow!("nothing to roll back to on {}/{env}: {why}", a.name))?;
    Ok(previous.rollback(Some(&live.id), cli_source(), Utc::now()))
}

/// Stops deploys of APP until `unlock`, as `/deploy lock` does.
pub async fn lock(
    config: &Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
    reason: &str,
) -> anyhow::Result<LockInfo> {
    let (a, env) = target(config, app, env)?;
    let asked = LockInfo::by_person(cli_user(), reason, Utc::now());
    match store
        .try_lock(&a.name, &env, &asked, Utc::now())
        .await
        .map_err(port)?
    {
        Ok(taken) => Ok(taken),
        Err(held) => bail!("already held: {}", lock_line(&a.name, &env, &held)),
    }
}

/// Removes a lock taken with `lock` (here or from chat). A running deploy's lock stays:
/// `abort` stops the deploy instead.
pub async fn unlock(
    config: &Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<Option<LockInfo>> {
    let (a, env) = target(config, app, env)?;
    match store.unlock(&a.name, &env, Utc::now()).await.map_err(port)? {
        Unlocked::Released(l) => Ok(Some(l)),
        Unlocked::NotLocked => Ok(None),
        Unlocked::Deploying(l) => bail!(
            "{}; unlock removes only a lock taken with `lock`. To stop that deploy: shipit abort {}{}",
            lock_line(&a.name, &env, &l),
            a.name,
            if env == a.default_env { String::new() } else { format!(" --env {env}") }
        ),
    }
}

/// Asks the deploy running on APP to stop after its command in flight and put back the
/// nodes it restarted. The lock it holds.
pub async fn abort(
    config: &Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<LockInfo> {
    let (a, env) = target(config, app, env)?;
    store
        .request_abort(&a.name, &env, &cli_user(), Utc::now())
        .await
        .map_err(port)?
        .ok_or_else(|| anyhow!("no deploy of {}/{env} is running", a.name))
}

/// Waits for `job` to finish, handing each of its notices to `on_notice`; runs the jobs
/// here whenever no other worker holds this store (a server, or one that died and whose
/// lease ran out: the worker waits for the lease). The job's final status.
pub async fn wait(
    config: Arc<Config>,
    store: &Store,
    job: &JobId,
    on_notice: impl FnMut(&Notice, &str),
) -> anyhow::Result<JobStatus> {
    let holder = format!(
        "cli-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros()
    );
    let (stop, stopped) = watch::channel(false);
    let out = crate::run::local::outbound(config.clone()).await;
    let worker = Worker::new(config, store.clone(), out);
    let runner = tokio::spawn(async move { worker.run(&holder, stopped).await });
    let finished = follow_job(store, job, on_notice).await;
    let _ = stop.send(true);
    runner.await?;
    Ok(finished?.status)
}

/// Hands each of the job's notices to `on_notice` as they come, with how long the step
/// it ends took on its node (`2.1 s`, or empty), until the job has ended; returns the
/// ended job.
pub async fn follow_job(
    store: &Store,
    job: &JobId,
    mut on_notice: impl FnMut(&Notice, &str),
) -> anyhow::Result<QueuedJob> {
    let mut seen = 0;
    loop {
        let q = store
            .job(job)
            .await
            .map_err(port)?
            .context("the job disappeared from the store")?;
        // Read after the status: a job's notices are all written before it ends.
        let notices = store.notices(job, seen).await.map_err(port)?;
        let ends_a_step = |n: &Notice| step_node(n).is_some();
        let story = match notices.iter().any(|(_, n)| ends_a_step(n)) {
            true => store.story(job).await.map_err(port)?,
            false => None,
        };
        for (seq, notice) in notices {
            seen = seq;
            let took = match (step_node(&notice), &story) {
                (Some((node, stages)), Some(story)) => story
                    .steps
                    .iter()
                    .filter(|s| s.node == node && stages.contains(&s.stage))
                    .filter(|s| s.ended_at.is_some())
                    .max_by_key(|s| s.ended_at)
                    .map(|s| s.took())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            on_notice(&notice, &took);
        }
        if !q.status.is_pending() {
            return Ok(q);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node whose step `notice` says has ended (the notice comes right after it), and
/// the stages that step may be.
fn step_node(notice: &Notice) -> Option<(&str, &'static [Stage])> {
    const INSTALL: &[Stage] = &[Stage::Install, Stage::RollbackInstall];
    const RESTART: &[Stage] = &[Stage::Restart, Stage::RollbackRestart, Stage::Bake];
    match notice {
        Notice::Installed { node } | Notice::InstallFailed { node, .. } => Some((node, INSTALL)),
        Notice::Healthy { node } | Notice::Unhealthy { node, .. } => Some((node, RESTART)),
        _ => None,
    }
}

/// `shipit serve`: the HTTP ingress, the package watcher and the worker, until Ctrl-C or
/// SIGTERM; deploys under way stop at a step boundary and resume on the next start.
pub async fn serve(config: Config, listen: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let addr = listen.unwrap_or(config.server.listen);
    let runtime = crate::run::local::Runtime::new(config).await?;
    let ingress = runtime.ingress().await?;
    let api_token = runtime.api_token().await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "shipit serving");
    let (stop, stopped) = watch::channel(false);
    let worker = runtime.worker();
    let health = worker.health();
    let holder = format!("serve-{}", std::process::id());
    let supervisor = tokio::spawn(supervise(worker, holder, stopped));
    crate::run::server::serve(
        Arc::new(ingress),
        runtime.store,
        listener,
        health,
        api_token,
        shutdown_signal(),
    )
    .await?;
    let _ = stop.send(true);
    supervisor.await?;
    Ok(())
}

/// Keeps the worker running until `stopped`: it retries store errors itself, and if it
/// ever crashes it is started again (jobs under way resume from their last saved step),
/// with `/healthz` saying so meanwhile.
async fn supervise(worker: Worker, holder: String, mut stopped: watch::Receiver<bool>) {
    loop {
        let (w, h, s) = (worker.clone(), holder.clone(), stopped.clone());
        match tokio::spawn(async move { w.run(&h, s).await }).await {
            Ok(()) => return,
            Err(e) => worker.crashed(format!("the worker crashed ({e}); restarting it")),
        }
        tokio::select! {
            _ = stopped.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Ctrl-C, or SIGTERM where there is one (what a service manager sends).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

/// The last deploys of APP, newest first, each with the mark on its version if it was
/// rolled back from.
pub async fn history(
    config: &Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<Vec<HistoryRow>> {
    let (a, env) = target(config, app, env)?;
    crate::deploy::overview::history(store, &a.name, &env, 50)
        .await
        .map_err(port)
}

/// Every job of APP's environment that ended, newest first: failed, skipped and aborted
/// ones too, with why.
pub async fn ended(
    config: &Config,
    store: &Store,
    app: &str,
    env: Option<&str>,
) -> anyhow::Result<Vec<QueuedJob>> {
    let (a, env) = target(config, app, env)?;
    let group = format!("{}/{env}", a.name);
    let mut jobs: Vec<QueuedJob> = store
        .jobs(None)
        .await
        .map_err(port)?
        .into_iter()
        .filter(|q| q.job.group() == group && !q.status.is_pending())
        .collect();
    jobs.reverse();
    Ok(jobs)
}

/// The job whose id is or starts with `id` (as `git` takes a commit).
async fn one_job(store: &Store, id: &str) -> anyhow::Result<QueuedJob> {
    let mut found = store.jobs_starting(id).await.map_err(port)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no job {id:?} (see `shipit jobs` for their ids)"),
        _ => bail!("{id:?} starts more than one job id: give more of it"),
    }
}

/// The story of the job whose id is or starts with `id`.
pub async fn story(store: &Store, id: &str) -> anyhow::Result<Story> {
    let q = one_job(store, id).await?;
    store
        .story(&q.job.id)
        .await
        .map_err(port)?
        .ok_or_else(|| anyhow!("job {} went away while being read", q.job.id))
}

/// The account running this approves (or rejects) the job whose id is or starts with
/// `id`: what to say of it.
pub async fn word(
    config: &Config,
    store: &Store,
    id: &str,
    approved: bool,
    reason: Option<&str>,
) -> anyhow::Result<String> {
    let q = one_job(store, id).await?;
    let by = account();
    let word = crate::ingress::approve::Word {
        job: &q.job.id,
        by: &by,
        approved,
        reason,
    };
    crate::ingress::approve::give(config, store, store, word, Utc::now())
        .await
        .map_err(|e| anyhow!(e))
}

/// Takes a queued job (by its id or the start of it) off the queue: it never runs.
pub async fn cancel(store: &Store, id: &str) -> anyhow::Result<QueuedJob> {
    let q = one_job(store, id).await?;
    match store
        .cancel(&q.job, &cli_user(), Utc::now())
        .await
        .map_err(port)?
    {
        None => Ok(q),
        Some(JobStatus::Running) => bail!(
            "job {} is running: `shipit abort {} --env {}` stops it and puts back what it restarted",
            q.job.id,
            q.job.app,
            q.job.env
        ),
        Some(status) => bail!("job {} is not queued: it is {status}", q.job.id),
    }
}
