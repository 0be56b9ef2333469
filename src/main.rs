use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail};
use chrono::Utc;
use clap::{Parser, Subcommand};
use serde_json::Value;
use shipit::cli;
use shipit::config::{self, Config};
use shipit::run::local::{self, open_store};
use shipit::run::telemetry::init_tracing;

#[derive(Parser)]
#[command(
    name = "shipit",
    version,
    about = "Deploys as easy to revert as to ship"
)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, env = "SHIPIT_CONFIG")]
    #[arg(default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    /// How logs (on standard error) are written: text, coloured only on a terminal, or
    /// one JSON object a line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config; print every problem with its key and a hint.
    Check,
    /// Accept webhooks, slash commands and package uploads over HTTP.
    Serve {
        /// Overrides server.listen.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Process event files (API Gateway, S3, CodeArtifact: see events/) as AWS would
    /// deliver them, queueing into the local store.
    Ingest {
        /// Event files, as AWS delivers them (see events/).
        #[arg(required = true)]
        events: Vec<PathBuf>,
        /// Print the full replies instead of one line per result.
        #[arg(long)]
        json: bool,
    },
    /// List the jobs in the local store.
    Jobs {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deploy VERSION of APP. Exit 0 only if the deploy succeeded (with --wait).
    Deploy {
        /// The app, as named in the config.
        app: String,
        /// The version to deploy (PEP 440, e.g. 1.4.2).
        version: String,
        /// The environment (default: the app's default_env).
        #[arg(long)]
        env: Option<String>,
        /// Follow the deploy to its end (running it here if no server is running).
        #[arg(long)]
        wait: bool,
        /// Deploy even if the gate would not (tag not merged, checks not green); recorded.
        #[arg(long)]
        force: bool,
        /// Print what the deploy would do (gate asked, nodes, commands) and queue nothing.
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
        /// With --dry-run: the plan as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
        /// Deploy outside the environment's windows or in a freeze, for this reason (only
        /// its freeze_overriders; kept in history).
        #[arg(long, value_name = "REASON")]
        r#override: Option<String>,
    },
    /// Bring every node of APP to the live version: nodes added to the config, and nodes
    /// that drifted (another version installed by hand, say). Only those are touched.
    Sync {
        /// The app, as named in the config.
        app: String,
        /// The environment (default: the app's default_env).
        #[arg(long)]
        env: Option<String>,
        /// Only list each node's installed version; exit 1 if any differs from the live one.
        #[arg(long)]
        check: bool,
    },
    /// Put the previous version of APP back, through the same pipeline.
    Rollback {
        /// The app, as named in the config.
        app: String,
        /// The environment (default: the app's default_env).
        #[arg(long)]
        env: Option<String>,
        /// Follow it to its end (running it here if no server is running); exit 0 only if it succeeded.
        #[arg(long)]
        wait: bool,
        /// Print what the rollback would do and queue nothing.
        #[arg(long, conflicts_with = "wait")]
        dry_run: bool,
        /// With --dry-run: the plan as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// Stop deploys of APP until `unlock` (as `/deploy lock` does).
    Lock {
        /// The app, as named in the config.
        app: String,
        /// The environment (default: the app's default_env).
        #[arg(long)]
        env: Option<String>,
        /// Why, for whoever finds it locked.
        #[arg(required = true)]
        reason: Vec<String>,
    },
    /// Remove a lock taken with `lock`; a running deploy's lock stays (see `abort`).
    Unlock {
        /// The app, as named in the config.
        app: String,
        /// The environment (default: the app's default_env).
        #[arg(long)]
        env: Option<String>,
    },
    /// Stop the deploy running on APP after its command in flight; the nodes it restarted
    /// are put back on the previous version, and it is recorded as aborted by you.
    Abort {
        /// The app, as named in the config.
        app: String,
        /// The environment (default: the app's default_env).
        #[arg(long)]
        env: Option<String>,
    },
    /// The whole job on one machine: set up the example (3 local nodes), serve, and play a
    /// tag push, an upload, a failing /deploy that rolls back, and /deploy rollback.
    Demo {
        /// Where to set up the example (default: a new directory under the temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// What is live where, what is queued or running, and what is locked.
    Status {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The deploys of APP that went live, newest first; with --all, every job that ended.
    History {
        /// The app, as named in the config.
        app: String,
        /// The environment (default: the app's default_env).
        #[arg(long)]
        env: Option<String>,
        /// Every job that ended: failed, skipped and aborted ones too, with why.
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// The DORA figures of every app+env: deploy frequency, lead time for changes,
    /// change failure rate, time to restore.
    Stats {
        /// Over the last this many days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Take a queued job, or one waiting to start, off the queue (a running one: see
    /// `abort`).
    Cancel {
        /// The job's id, or the start of it (see `shipit jobs`).
        job: String,
    },
    /// Approve a deploy that waits for approval (its environment's approvers only; you
    /// are the account running this).
    Approve {
        /// The job's id, or the start of it (see `shipit jobs`).
        job: String,
    },
    /// Reject a deploy that waits for approval: it never runs.
    Reject {
        /// The job's id, or the start of it (see `shipit jobs`).
        job: String,
        /// Why, kept with the job.
        #[arg(long)]
        reason: Option<String>,
    },
    /// One job's story: status, why, who asked, when, and what ran on each node.
    Show {
        /// The job's id, or the start of it (see `shipit jobs`).
        job: String,
        /// As JSON (what `/api/jobs/ID` answers).
        #[arg(long)]
        json: bool,
    },
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Config::load(path).map_err(|report| anyhow!("{report}run `shipit check` for details"))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => {
            let report = config::check(&cli.config);
            print!("{report}");
            if report.has_errors() {
                let n = report
                    .problems
                    .iter()
                    .filter(|p| p.severity == config::Severity::Error)
                    .count();
                eprintln!("{}: {n} error(s)", cli.config.display());
                return Ok(ExitCode::FAILURE);
            }
            let c = load(&cli.config)?;
            println!(
                "{}: ok ({} app(s): {})",
                cli.config.display(),
                c.apps.len(),
                c.apps.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        Command::Serve { listen } => cli::serve(load(&cli.config)?, listen).await?,
        Command::Ingest { events, json } => {
            let config = load(&cli.config)?;
            let (ingress, _store) = local::ingress(config).await?;
            // One bad file is reported and the others still go through.
            let mut failed = 0;
            for path in events {
                let event = std::fs::read_to_string(&path)
                    .map_err(|e| format!("reading it: {e}"))
                    .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("not JSON: {e}")));
                let out = match event {
                    Ok(event) => shipit::run::lambda::handle_any(&ingress, event, Utc::now()).await,
                    Err(e) => Err(e),
                };
                let out = match out {
                    Ok(out) => out,
                    Err(e) => {
                        eprintln!("{}: {e}", path.display());
                        failed += 1;
                        continue;
                    }
                };
                if json {
                    println!(
                        "{}: {}",
                        path.display(),
                        serde_json::to_string_pretty(&out)?
                    );
                } else {
                    for line in summarize(&out) {
                        println!("{}: {line}", path.display());
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} event file(s) could not be ingested");
            }
        }
        Command::Jobs { json } => {
            let config = load(&cli.config)?;
            let store = open_store(&config)?;
            let jobs = store.jobs(None).await.map_err(|e| anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                cli::views::print_jobs(&jobs);
            }
        }
        Command::Deploy {
            app,
            version,
            env,
            wait,
            force,
            dry_run,
            json,
            r#override,
        } => {
            let config = Arc::new(load(&cli.config)?);
            let store = open_store(&config)?;
            let job = match &r#override {
                Some(reason) => {
                    let what = (app.as_str(), version.as_str(), env.as_deref());
                    cli::override_job(&config, what, force, reason)?
                }
                None => cli::deploy_job(&config, &app, &version, env.as_deref(), force)?,
            };
            if dry_run {
                return print_plan(&config, &store, &job, json).await;
            }
            let job = cli::queue_deploy(&config, &store, job).await?;
            return follow(config, &store, job, wait).await;
        }
        Command::Sync { app, env, check } => {
            let config = Arc::new(load(&cli.config)?);
            let store = open_store(&config)?;
            if !check {
                let job = cli::sync(&config, &store, &app, env.as_deref()).await?;
                return follow(config, &store, job, true).await;
            }
            let (live, nodes) = cli::drift(&config, &store, &app, env.as_deref()).await?;
            let drifted = cli::views::print_drift(&app, &live, &nodes);
            return Ok(if drifted > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        Command::Rollback {
            app,
            env,
            wait,
            dry_run,
            json,
        } => {
            let config = Arc::new(load(&cli.config)?);
            let store = open_store(&config)?;
            if dry_run {
                let job = cli::rollback_job(&config, &store, &app, env.as_deref()).await?;
                return print_plan(&config, &store, &job, json).await;
            }
            let job = cli::rollback(&config, &store, &app, env.as_deref()).await?;
            return follow(config, &store, job, wait).await;
        }
        Command::Lock { app, env, reason } => {
            let config = load(&cli.config)?;
            let l = cli::lock(
                &config,
                &open_store(&config)?,
                &app,
                env.as_deref(),
                &reason.join(" "),
            )
            .await?;
            println!("locked {app}: {} (until `shipit unlock {app}`)", l.reason);
        }
        Command::Unlock { app, env } => {
            let config = load(&cli.config)?;
            match cli::unlock(&config, &open_store(&config)?, &app, env.as_deref()).await? {
                Some(l) => println!("unlocked {app} (was locked by {}: {})", l.holder, l.reason),
                None => println!("{app} was not locked"),
            }
        }
        Command::Abort { app, env } => {
            let config = load(&cli.config)?;
            let l = cli::abort(&config, &open_store(&config)?, &app, env.as_deref()).await?;
            println!(
                "aborting job {}: it stops after the command in flight and puts back the nodes it restarted",
                l.job.map_or("?".to_string(), |j| j.to_string())
            );
        }
        Command::Demo { dir } => {
            return Ok(if shipit::cli::demo::run(dir).await? {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Command::Status { json } => {
            let config = load(&cli.config)?;
            let store = open_store(&config)?;
            let jobs = store.jobs(None).await.map_err(|e| anyhow!("{e}"))?;
            let status = cli::status(&config, &store, &jobs).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                cli::views::print_status(&status);
            }
        }
        Command::History {
            app,
            env,
            all: true,
            json,
        } => {
            let config = load(&cli.config)?;
            let jobs = cli::ended(&config, &open_store(&config)?, &app, env.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                cli::views::print_ended(&jobs);
            }
        }
        Command::History {
            app,
            env,
            all: false,
            json,
        } => {
            let config = load(&cli.config)?;
            let entries =
                cli::history(&config, &open_store(&config)?, &app, env.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                cli::views::print_history(&entries)?;
            }
        }
        Command::Stats { days, json } => {
            let config = load(&cli.config)?;
            let store = open_store(&config)?;
            let jobs = store.jobs(None).await.map_err(|e| anyhow!("{e}"))?;
            let figures =
                shipit::run::overview::dora(&config, &store, &jobs, days, Utc::now()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&figures)?);
            } else {
                cli::views::print_dora(&figures);
            }
        }
        Command::Cancel { job } => {
            let config = load(&cli.config)?;
            let q = cli::cancel(&open_store(&config)?, &job).await?;
            println!(
                "cancelled job {} ({} {} to {}): it will not run",
                q.job.id, q.job.app, q.job.version, q.job.env
            );
        }
        Command::Approve { job } => {
            let config = load(&cli.config)?;
            println!(
                "{}",
                cli::word(&config, &open_store(&config)?, &job, true, None).await?
            );
        }
        Command::Reject { job, reason } => {
            let config = load(&cli.config)?;
            let store = open_store(&config)?;
            let said = cli::word(&config, &store, &job, false, reason.as_deref()).await?;
            println!("{said}");
        }
        Command::Show { job, json } => {
            let config = load(&cli.config)?;
            let story = cli::story(&open_store(&config)?, &job).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&story)?);
            } else {
                cli::views::print_story(&story);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the queued job, and with `wait` its progress; the exit code says how it ended.
async fn follow(
    config: Arc<Config>,
    store: &shipit::local::store::Store,
    job: shipit::deploy::job::DeployJob,
    wait: bool,
) -> anyhow::Result<ExitCode> {
    println!(
        "queued {} {} to {} (job {})",
        job.app, job.version, job.env, job.id
    );
    if !wait {
        if !store
            .worker_running(Utc::now())
            .await
            .map_err(|e| anyhow!("{e}"))?
        {
            println!(
                "no `shipit serve` runs jobs from this store: this one waits until one starts \
                 (or run it here with --wait)"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let prefix = format!("{}/{} {}", job.app, job.env, job.version);
    let mut finished = false;
    let status = if std::io::stdout().is_terminal() {
        let mut view = cli::views::LiveView::new(format!("{prefix} (job {})", job.id));
        cli::wait(config, store, &job.id, |n, took| {
            finished |= matches!(n, shipit::deploy::engine::Notice::Finished { .. });
            print!("{}", view.update(n, took))
        })
        .await?
    } else {
        // Once it rolls back, the lines are about the version it puts back.
        let mut now_on = prefix.clone();
        cli::wait(config, store, &job.id, |n, took| {
            use shipit::deploy::engine::Notice;
            if let Notice::RollingBack { to, .. } = n {
                now_on = format!("{}/{} rollback to {to}", job.app, job.env);
            }
            let on = match n {
                Notice::Finished { .. } => {
                    finished = true;
                    &prefix
                }
                _ => &now_on,
            };
            let took = match took {
                "" => String::new(),
                t => format!(" ({t})"),
            };
            println!("{on}: {}{took}", shipit::deploy::status::describe(n))
        })
        .await?
    };
    // The outcome's own line already said how it ended.
    if !finished {
        println!("{prefix}: {status}");
    }
    Ok(if status == shipit::deploy::status::JobStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn print_plan(
    config: &Arc<Config>,
    store: &shipit::local::store::Store,
    job: &shipit::deploy::job::DeployJob,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let plan = cli::plan::plan(config, store, job).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&plan)?);
    } else {
        for line in plan.lines() {
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per job or refusal in an ingest result (API Gateway reply, upload outcomes, or
/// why the event is not for ingress).
fn summarize(out: &Value) -> Vec<String> {
    let job = |j: &Value| {
        format!(
            "{} {}/{} {} (job {})",
            j["result"].as_str().unwrap_or("?"),
            text(&j["app"]),
            text(&j["env"]),
            text(&j["version"]),
            text(&j["job"])
        )
    };
    let results = |status: String, body: &Value| match body["jobs"].as_array() {
        Some(jobs) => jobs.iter().map(|j| format!("{status}{}", job(j))).collect(),
        None => vec![format!(
            "{status}{}",
            body["reason"]
                .as_str()
                .or(body["status"].as_str())
                .unwrap_or_default()
        )],
    };
    match out {
        Value::Array(outcomes) => outcomes
            .iter()
            .flat_map(|o| results(String::new(), o))
            .collect(),
        reply if reply.get("statusCode").is_some() => {
            results(format!("{} ", reply["statusCode"]), &reply["body"])
        }
        // Not for ingress: why.
        other => results(String::new(), other),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet = !matches!(cli.command, Command::Serve { .. });
    init_tracing(
        cli.log_format == LogFormat::Json,
        if quiet { "warn" } else { "info" },
    );
    if matches!(
        cli.command,
        Command::Check
            | Command::Jobs { .. }
            | Command::Status { .. }
            | Command::History { .. }
            | Command::Stats { .. }
            | Command::Show { .. }
    ) {
        // Reports end quietly when their reader does (`shipit history hello | head -1`),
        // as Unix tools do, instead of panicking on the broken pipe. Not for the commands
        // that run deploys: one must not die half-way because its terminal went away.
        // SAFETY: signal(2) only sets the process's disposition for SIGPIPE; these commands
        // write to no socket or child that relies on it being ignored.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `shipit X --help` explains every argument of every command.
    #[test]
    fn every_argument_has_help() {
        let cli = super::Cli::command();
        let mut missing = vec![];
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                if arg.get_help().is_none() && !matches!(arg.get_id().as_str(), "help" | "version")
                {
                    missing.push(format!("{} {}", sub.get_name(), arg.get_id()));
                }
            }
        }
        assert!(missing.is_empty(), "no help for: {missing:?}");
        cli.debug_assert();
    }
}
