use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use chrono::Utc;
use clap::{Parser, Subcommand};
use serde_json::Value;
use shipit::config::{self, Config};
use shipit::wiring::{init_tracing, local_ingress, open_store};

#[derive(Parser)]
#[command(
    name = "shipit",
    version,
    about = "Deploys as easy to revert as to ship"
)]
struct Cli {
    /// The config file.
    #[arg(long, short, global = true, env = "SHIPIT_CONFIG", default_value = config::DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
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
        #[arg(required = true)]
        events: Vec<PathBuf>,
        /// Print the full replies instead of one line per result.
        #[arg(long)]
        json: bool,
    },
    /// List the jobs in the local store.
    Jobs {
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
        Command::Serve { listen } => {
            let config = load(&cli.config)?;
            let addr = listen.unwrap_or(config.server.listen);
            let (ingress, store) = local_ingress(config).await?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?;
            tracing::info!(addr = %listener.local_addr()?, "shipit serving");
            let shutdown = async {
                let ctrl_c = tokio::signal::ctrl_c();
                #[cfg(unix)]
                {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .ok();
                    tokio::select! {
                        _ = ctrl_c => {},
                        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
                    }
                }
                #[cfg(not(unix))]
                let _ = ctrl_c.await;
                tracing::info!("shutting down");
            };
            shipit::server::serve(Arc::new(ingress), store, listener, shutdown).await?;
        }
        Command::Ingest { events, json } => {
            let config = load(&cli.config)?;
            let (ingress, _store) = local_ingress(config).await?;
            for path in events {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let event = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON", path.display()))?;
                let out = shipit::lambda::handle_any(&ingress, event, Utc::now())
                    .await
                    .map_err(|e| anyhow!("{}: {e}", path.display()))?;
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
        }
        Command::Jobs { json } => {
            let config = load(&cli.config)?;
            let store = open_store(&config)?;
            let jobs = store.jobs(None).await.map_err(|e| anyhow!("{e}"))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("no jobs");
            } else {
                println!(
                    "{:<22} {:<8} {:<22} {:<12} REQUESTED BY",
                    "JOB", "STATUS", "APP/ENV", "VERSION"
                );
                for q in jobs {
                    let j = &q.job;
                    println!(
                        "{:<22} {:<8} {:<22} {:<12} {}",
                        j.id,
                        q.status,
                        j.group(),
                        j.version,
                        j.requested_by
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line per job or refusal in an ingest result (API Gateway reply or upload outcomes).
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
        reply => results(format!("{} ", reply["statusCode"]), &reply["body"]),
    }
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

#[tokio::main]
async fn main() -> ExitCode {
    init_tracing(false);
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
