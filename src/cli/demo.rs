//! `shipit demo`: the whole job on one machine, from nothing. Sets up the local example
//! (three nodes, each with its own virtualenv and service) in a scratch directory, starts
//! the server, and plays: a signed tag push, a package upload, a `/deploy` of a broken
//! version (fails on the canary, rolls back), and `/deploy rollback`. Checks every node
//! over HTTP at the end and stops everything it started.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use chrono::Utc;
use serde_json::Value;
use sha2::Digest;

use crate::config::Config;
use crate::deploy::job::JobId;
use crate::deploy::status::{describe, JobStatus};
use crate::drive::worker::Worker;
use crate::ingress::sign_hex;
use crate::local::store::Store;
use crate::run::local;

const CONFIG: &str = include_str!("../../examples/local/shipit.toml");
const APP_FILES: [(&str, &str); 5] = [
    (
        "build_wheels.py",
        include_str!("../../examples/local/hello-app/build_wheels.py"),
    ),
    (
        "hello_app/__init__.py",
        include_str!("../../examples/local/hello-app/hello_app/__init__.py"),
    ),
    (
        "hello_app/server.py",
        include_str!("../../examples/local/hello-app/hello_app/server.py"),
    ),
    (
        "hello_app/ctl.py",
        include_str!("../../examples/local/hello-app/hello_app/ctl.py"),
    ),
    (
        "README.md",
        "The hello-app example service; build_wheels.py makes its wheels offline.\n",
    ),
];
const NODES: [(&str, u16); 3] = [("node1", 18101), ("node2", 18102), ("node3", 18103)];
/// A deploy of the example takes seconds; this only stops a demo that hangs.
const STEP_TIMEOUT: Duration = Duration::from_secs(120);

/// One row of the closing summary.
struct Row {
    step: &'static str,
    job: String,
    status: JobStatus,
    expected: JobStatus,
    seconds: f64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn python(args: &[&str], dir: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new("python3")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running python3 (the example's nodes are Python services; install Python 3)")?;
    if !out.status.success() {
        bail!(
            "python3 {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Lays out the example's machinery in `dir`: the hello-app sources in `hello-app/`,
/// its wheels for `versions` (`1.2.0:broken` builds one that fails its health check) in
/// `wheelhouse/`, and `nodes/NAME/venv` for each node, the virtualenvs made in parallel.
/// Shared by the demo, the end-to-end tests and the bench.
pub fn set_up_nodes(dir: &Path, nodes: &[String], versions: &[&str]) -> anyhow::Result<()> {
    for (file, text) in APP_FILES {
        let path = dir.join("hello-app").join(file);
        std::fs::create_dir_all(path.parent().unwrap_or(dir))?;
        std::fs::write(path, text)?;
    }
    let mut args = vec!["hello-app/build_wheels.py", "wheelhouse"];
    args.extend_from_slice(versions);
    python(&args, dir)?;
    let venvs: Vec<_> = nodes
        .iter()
        .map(|name| {
            let node = dir.join("nodes").join(name);
            std::fs::create_dir_all(&node)?;
            std::process::Command::new("python3")
                .args(["-m", "venv", "venv"])
                .current_dir(node)
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("creating the nodes' virtualenvs")?;
    for mut v in venvs {
        if !v.wait()?.success() {
            bail!("python3 -m venv failed");
        }
    }
    Ok(())
}

/// Writes the example into `dir` with free ports and fresh secrets; returns its config path.
fn set_up(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut config = CONFIG.replace("127.0.0.1:8080", "127.0.0.1:0");
    for (_, port) in NODES {
        config = config.replace(&format!("\"{port}\""), &format!("\"{}\"", free_port()?));
    }
    let path = dir.join("shipit.toml");
    std::fs::write(&path, config)?;
    let seed = format!(
        "{}{}",
        std::process::id(),
        Utc::now().timestamp_nanos_opt().unwrap_or_default()
    );
    let secret = |what: &str| hex::encode(sha2::Sha256::digest(format!("{what}{seed}")));
    // The example reads its secrets from these; this process is the only reader.
    std::env::set_var("SHIPIT_GITHUB_SECRET", secret("github"));
    std::env::set_var("SHIPIT_SLACK_SIGNING_SECRET", secret("slack"));
    // 1.0.0 and the broken 1.2.0 are in the index before the server first looks, so they
    // are history there, not uploads; 1.1.0 is uploaded during the demo.
    let nodes: Vec<String> = NODES.iter().map(|(n, _)| n.to_string()).collect();
    set_up_nodes(dir, &nodes, &["1.0.0", "1.2.0:broken"])?;
    Ok(path)
}

fn stop_services(config: &Config) {
    for env in config.apps.values().flat_map(|a| a.environments.values()) {
        if let crate::config::Nodes::Listed(nodes) = &env.nodes {
            for n in nodes.iter().filter(|n| n.ssh.is_none()) {
                let _ = std::process::Command::new("venv/bin/python")
                    .args(["-m", "hello_app.ctl", "stop", "0"])
                    .current_dir(&n.dir)
                    .output();
            }
        }
    }
}

pub async fn run(dir: Option<PathBuf>) -> anyhow::Result<bool> {
    let started = Instant::now();
    let dir = match dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!("shipit-demo-{}", std::process::id())),
    };
    if dir.join("shipit.toml").exists() {
        bail!(
            "{} already holds a demo; remove it or pass another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir)?;
    println!(
        "Setting up the example in {} (3 nodes, each with its own virtualenv)…",
        dir.display()
    );
    let config_path = set_up(&dir)?;
    let config = Config::load(&config_path).map_err(|r| anyhow!("{r}"))?;
    let (ingress, store) = local::ingress(config).await?;
    let ingress = Arc::new(ingress);
    let config = ingress.config.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let out = crate::run::local::outbound(config.clone()).await;
    let worker = Worker::new(config.clone(), store.clone(), out);
    let server = tokio::spawn(crate::run::server::serve(
        ingress.clone(),
        store.clone(),
        listener,
        worker.health(),
        // The demo listens on loopback: its reads need no token.
        None,
        {
            let mut s = stopped.clone();
            async move {
                let _ = s.changed().await;
            }
        },
    ));
    let worker = tokio::spawn(async move { worker.run("demo", stopped).await });
    println!("shipit is serving on {base}\n");

    let result = play(&dir, &base, &store, &config).await;
    stop_services(&config);
    let _ = stop.send(true);
    server.await??;
    worker.await?;
    let (rows, served) = result?;

    println!(
        "\n{:<38} {:<22} {:<16} {:<16} {:>6}",
        "STEP", "JOB", "OUTCOME", "EXPECTED", "SECS"
    );
    let mut ok = true;
    for r in &rows {
        ok &= r.status == r.expected;
        println!(
            "{:<38} {:<22} {:<16} {:<16} {:>6.1}",
            r.step, r.job, r.status, r.expected, r.seconds
        );
    }
    let all_on = served.iter().all(|(_, v)| v == "1.0.0");
    ok &= all_on;
    println!(
        "\nEvery node serves: {}",
        served
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{} in {:.1} s. Services stopped; the example stays in {} for a look.",
        if ok { "Demo passed" } else { "Demo FAILED" },
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(ok)
}

async fn play(
    dir: &Path,
    base: &str,
    store: &Store,
    config: &Config,
) -> anyhow::Result<(Vec<Row>, Vec<(String, String)>)> {
    let http = reqwest::Client::new();
    let github_secret = std::env::var("SHIPIT_GITHUB_SECRET")?;
    let slack_secret = std::env::var("SHIPIT_SLACK_SIGNING_SECRET")?;
    let mut rows = vec![];

    // 1. A tag pushed to acme/hello, as GitHub signs and sends it.
    println!("== GitHub: tag v1.0.0 pushed to acme/hello");
    let t = Instant::now();
    let job = push_tag(&http, base, &github_secret).await?;
    rows.push(
        follow(
            store,
            "tag push v1.0.0 (GitHub webhook)",
            &job,
            JobStatus::Succeeded,
            t,
        )
        .await?,
    );

    // 2. A wheel for 1.1.0 lands in the package directory.
    println!("\n== Package index: hello_app-1.1.0-py3-none-any.whl uploaded");
    let t = Instant::now();
    let job = upload_wheel(dir, store, config, t).await?;
    rows.push(
        follow(
            store,
            "upload of 1.1.0 (package directory)",
            &job,
            JobStatus::Succeeded,
            t,
        )
        .await?,
    );

    // 3 and 4. Slash commands from the deployer the example allows.
    for (text, step, expected) in [
        (
            "hello 1.2.0",
            "/deploy hello 1.2.0 (broken build)",
            JobStatus::Failed,
        ),
        (
            "rollback hello",
            "/deploy rollback hello",
            JobStatus::Succeeded,
        ),
    ] {
        println!("\n== Slack: /deploy {text}");
        let t = Instant::now();
        let job = slash_command(&http, base, &slack_secret, text).await?;
        rows.push(follow(store, step, &job, expected, t).await?);
    }

    Ok((rows, served_versions(&http, config).await))
}

/// Pushes tag v1.0.0 as GitHub would (signed webhook); the id of the job it queued.
async fn push_tag(
    http: &reqwest::Client,
    base: &str,
    github_secret: &str,
) -> anyhow::Result<String> {
    let push = serde_json::json!({
        "ref": "refs/tags/v1.0.0", "created": true, "deleted": false,
        "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "repository": { "full_name": "acme/hello" }, "pusher": { "name": "octocat" }
    })
    .to_string();
    let reply: Value = http
        .post(format!("{base}/hooks/github"))
        .header("x-github-event", "push")
        .header("x-github-delivery", "demo-1")
        .header(
            "x-hub-signature-256",
            format!(
                "sha256={}",
                sign_hex(github_secret.as_bytes(), &[push.as_bytes()])
            ),
        )
        .body(push)
        .send()
        .await?
        .json()
        .await?;
    reply["jobs"][0]["job"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| anyhow!("webhook queued nothing: {reply}"))
}

/// Builds the 1.1.0 wheel into the package directory; the id of the job it became.
async fn upload_wheel(
    dir: &Path,
    store: &Store,
    config: &Config,
    t: Instant,
) -> anyhow::Result<String> {
    let wheelhouse = config
        .server
        .package_dir
        .clone()
        .context("the example has a package_dir")?;
    python(
        &[
            "hello-app/build_wheels.py",
            &wheelhouse.display().to_string(),
            "1.1.0",
        ],
        dir,
    )?;
    loop {
        let found = store
            .jobs(None)
            .await
            .map_err(|e| anyhow!("{e}"))?
            .into_iter()
            .find(|q| q.job.version.as_str() == "1.1.0");
        match found {
            Some(q) => return Ok(q.job.id.to_string()),
            None if t.elapsed() < STEP_TIMEOUT => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            None => bail!("the upload was not picked up"),
        }
    }
}

/// Sends `/deploy TEXT` as Slack would (signed form); the id of the job it queued.
async fn slash_command(
    http: &reqwest::Client,
    base: &str,
    slack_secret: &str,
    text: &str,
) -> anyhow::Result<String> {
    let form = serde_urlencoded::to_string([
        ("command", "/deploy"),
        ("text", text),
        ("team_id", "T1DC2JH3J"),
        ("user_id", "U2CERLKJA"),
        ("user_name", "roadrunner"),
        ("channel_id", "C1"),
        ("channel_name", "deploys"),
        ("trigger_id", &format!("demo-{text}")),
    ])?;
    let ts = Utc::now().timestamp().to_string();
    let sig = sign_hex(
        slack_secret.as_bytes(),
        &[b"v0:", ts.as_bytes(), b":", form.as_bytes()],
    );
    let reply: Value = http
        .post(format!("{base}/hooks/slack"))
        .header("x-slack-request-timestamp", &ts)
        .header("x-slack-signature", format!("v0={sig}"))
        .body(form)
        .send()
        .await?
        .json()
        .await?;
    let said = reply["text"].as_str().unwrap_or_default();
    println!("chat (ephemeral reply): {said}");
    said.split("(job ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the slash command queued nothing: {said}"))
}

/// What each node's service answers on /version now.
async fn served_versions(http: &reqwest::Client, config: &Config) -> Vec<(String, String)> {
    let mut served = vec![];
    if let Some(crate::config::Nodes::Listed(nodes)) = config
        .app("hello")
        .and_then(|a| a.environments.get("production"))
        .map(|e| &e.nodes)
    {
        for n in nodes {
            let port = n.vars.get("port").cloned().unwrap_or_default();
            let version = match http
                .get(format!("http://127.0.0.1:{port}/version"))
                .send()
                .await
            {
                Ok(r) => r.text().await.unwrap_or_default().trim().to_string(),
                Err(_) => "down".to_string(),
            };
            served.push((n.name.clone(), version));
        }
    }
    served
}

/// Prints a job's deploy log as it happens and returns its row once it ends.
async fn follow(
    store: &Store,
    step: &'static str,
    job: &str,
    expected: JobStatus,
    started: Instant,
) -> anyhow::Result<Row> {
    let id: JobId = serde_json::from_value(Value::String(job.to_string()))?;
    let log = |n: &crate::deploy::engine::Notice, took: &str| match took {
        "" => println!("  deploy {job}: {}", describe(n)),
        took => println!("  deploy {job}: {} ({took})", describe(n)),
    };
    let left = STEP_TIMEOUT.saturating_sub(started.elapsed());
    let q = tokio::time::timeout(left, crate::cli::follow_job(store, &id, log))
        .await
        .map_err(|_| {
            anyhow!(
                "job {job} did not finish within {} s",
                STEP_TIMEOUT.as_secs()
            )
        })??;
    // What the chat and APM notifiers would post for this deploy.
    let j = &q.job;
    let took = started.elapsed().as_secs_f64();
    println!(
        "  chat would post: {} {} to {}: {} in {took:.1} s (requested by {})",
        j.app, j.version, j.env, q.status, j.requested_by
    );
    if q.status == JobStatus::Succeeded {
        println!(
            "  APM would mark: deployment of {} version {} in {} at {}",
            j.app,
            j.version,
            j.env,
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    Ok(Row {
        step,
        job: job.to_string(),
        status: q.status,
        expected,
        seconds: took,
    })
}
