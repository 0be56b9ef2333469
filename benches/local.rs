//! Figures for the embedded runtime, printed (not asserted), each a ratio from one run:
//! 1. a deploy to 10 local nodes (real virtualenvs, pip, service processes): wall time ÷
//!    the floor (the 10 installs at once + Σ over nodes of restart + health, done by hand
//!    on the same nodes), over 5 rounds of each;
//! 2. with `layout = "releases"` on 10 such nodes: rollback wall time ÷ deploy wall time
//!    (the rollback flips back to a kept release and installs nothing);
//! 3. signed tag pushes that `serve` accepts and durably queues (SQLite, synchronous=FULL),
//!    over loopback from 8 concurrent clients: requests/s, p50 and p99 latency.
//!
//! Needs python3. `cargo bench --bench local`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use shipit::config::Config;
use shipit::deploy::status::JobStatus;
use shipit::ingress::sign_hex;
use shipit::local::store::Store;

#[path = "../tests/helpers/mod.rs"]
mod helpers;
use helpers::{pip_app_releases_toml, pip_app_toml, LocalApp, Served, GITHUB_SECRET};

const NODES: usize = 10;
const WEBHOOKS: usize = 2000;
const CLIENTS: usize = 8;

fn sh(dir: &Path, script: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let in_place = deploy_figures().await;
        releases_figures(in_place).await;
        webhook_figures().await;
    });
}

/// Deploys `version` (or rolls back, with `None`) and waits for it: the wall time.
async fn timed(config: &Arc<Config>, store: &Store, version: Option<&str>) -> Duration {
    let job = match version {
        Some(v) => shipit::cli::deploy(config, store, "hello", v, None, false).await,
        None => shipit::cli::rollback(config, store, "hello", None).await,
    }
    .unwrap();
    let t = Instant::now();
    let status = shipit::cli::wait(config.clone(), store, &job.id, |_, _| {})
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Succeeded);
    t.elapsed()
}

/// The deploy's own work done by hand on `root`'s nodes, to the floor's rules: every
/// node's install of `version` at once (as the deploy runs them; on a small machine they
/// compete for the cores), then each node's restart and health check in turn, the check
/// repeated every 20 ms until it passes. Returns (installs, Σ restart+health).
fn by_hand(root: &Path, ports: &[u16], version: &str) -> (Duration, Duration) {
    let t = Instant::now();
    let all: Vec<_> = (1..=ports.len())
        .map(|i| {
            let d = root.join(format!("nodes/node{i}"));
            let script = format!("{INSTALL}{version}");
            std::thread::spawn(move || sh(&d, &script))
        })
        .collect();
    assert!(all.into_iter().all(|h| h.join().unwrap()));
    let installs = t.elapsed();
    let mut restarts = Duration::ZERO;
    for (i, p) in ports.iter().enumerate() {
        let d = root.join(format!("nodes/node{}", i + 1));
        let t = Instant::now();
        assert!(sh(
            &d,
            &format!("venv/bin/python -m hello_app.ctl restart {p} >/dev/null")
        ));
        while !sh(
            &d,
            &format!("venv/bin/python -m hello_app.ctl check {p} {version} >/dev/null 2>&1"),
        ) {
            std::thread::sleep(Duration::from_millis(20));
        }
        restarts += t.elapsed();
    }
    (installs, restarts)
}

/// The install the config runs, by hand.
const INSTALL: &str =
    "venv/bin/pip install --quiet --no-index --find-links ../../wheelhouse -U hello-app==";

/// Prints the deploy figures; returns one in-place deploy's mean wall time.
///
/// Deploys and hand-run floors alternate, each to the next version (every one an
/// upgrade of the same size), so that a change in the shared machine's load falls on both
/// sides of the ratio.
async fn deploy_figures() -> Duration {
    const ROUNDS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ports: Vec<u16> = (0..NODES).map(|_| port()).collect();
    let names: Vec<String> = (1..=NODES).map(|i| format!("node{i}")).collect();
    let versions: Vec<String> = (0..=2 * ROUNDS).map(|i| format!("1.{i}.0")).collect();
    let refs: Vec<&str> = versions.iter().map(String::as_str).collect();
    shipit::cli::demo::set_up_nodes(root, &names, &refs).unwrap();
    let nodes: Vec<(String, u16)> = names.iter().cloned().zip(ports.iter().copied()).collect();
    std::fs::write(root.join("shipit.toml"), pip_app_toml(&nodes, 20)).unwrap();
    let config = Arc::new(Config::load(&root.join("shipit.toml")).unwrap());
    let store = Store::open(&config.server.state).unwrap();

    timed(&config, &store, Some("1.0.0")).await; // starts the services
    let (mut wall, mut installs, mut restarts) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        wall += timed(&config, &store, Some(&versions[2 * round + 1])).await;
        let (i, r) = by_hand(root, &ports, &versions[2 * round + 2]);
        installs += i;
        restarts += r;
    }
    for i in 1..=NODES {
        sh(
            &root.join(format!("nodes/node{i}")),
            "venv/bin/python -m hello_app.ctl stop 0",
        );
    }
    let floor = installs + restarts;
    println!(
        "deploy to {NODES} local nodes on {} cores, {ROUNDS} rounds: wall {:.2} s; floor {:.2} s ({NODES} installs at once {:.2} s + restart+health {:.2} s); wall / floor = {:.3}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        wall.as_secs_f64(),
        floor.as_secs_f64(),
        installs.as_secs_f64(),
        restarts.as_secs_f64(),
        wall.as_secs_f64() / floor.as_secs_f64(),
    );
    wall / ROUNDS as u32
}

async fn releases_figures(in_place: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let names: Vec<String> = (1..=NODES).map(|i| format!("node{i}")).collect();
    shipit::cli::demo::set_up_nodes(root, &names, &["1.0.0", "1.1.0"]).unwrap();
    let nodes: Vec<(String, u16)> = names.iter().map(|n| (n.clone(), port())).collect();
    std::fs::write(
        root.join("shipit.toml"),
        pip_app_releases_toml(&nodes, 20, 5),
    )
    .unwrap();
    let config = Arc::new(Config::load(&root.join("shipit.toml")).unwrap());
    let store = Store::open(&config.server.state).unwrap();
    timed(&config, &store, Some("1.0.0")).await;
    let deploy = timed(&config, &store, Some("1.1.0")).await;
    let rollback = timed(&config, &store, None).await;
    for n in &names {
        sh(
            &root.join("nodes").join(n),
            "current/venv/bin/python -m hello_app.ctl stop 0",
        );
    }
    println!(
        "layout = \"releases\" on {NODES} local nodes: deploy {:.2} s (a fresh virtualenv each); rollback {:.2} s; rollback / deploy = {:.2}; rollback / in-place deploy ({:.2} s) = {:.2}",
        deploy.as_secs_f64(),
        rollback.as_secs_f64(),
        rollback.as_secs_f64() / deploy.as_secs_f64(),
        in_place.as_secs_f64(),
        rollback.as_secs_f64() / in_place.as_secs_f64(),
    );
}

async fn webhook_figures() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalApp::default().write(dir.path());
    let (ingress, store) = shipit::run::local::ingress(config).await.unwrap();
    // The server alone: jobs are queued durably and stay queued (no worker runs them).
    let served = Served::start(ingress, store.clone()).await;
    let base = format!("{}/hooks/github", served.base);
    let http = reqwest::Client::new();
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (http, base) = (http.clone(), base.clone());
        clients.spawn(async move {
            let mut latencies = vec![];
            for i in (c..WEBHOOKS).step_by(CLIENTS) {
                let body = serde_json::json!({
                    "ref": format!("refs/tags/v1.{i}.0"), "created": true, "deleted": false,
                    "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                    "repository": { "full_name": "acme/hello" }, "pusher": { "name": "octocat" }
                })
                .to_string();
                let sig = format!(
                    "sha256={}",
                    sign_hex(GITHUB_SECRET.as_bytes(), &[body.as_bytes()])
                );
                let t = Instant::now();
                let r = http
                    .post(&base)
                    .header("x-github-event", "push")
                    .header("x-hub-signature-256", sig)
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 202);
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut latencies = vec![];
    while let Some(l) = clients.join_next().await {
        latencies.extend(l.unwrap());
    }
    let elapsed = started.elapsed();
    served.stop().await;
    assert_eq!(
        store.jobs(None).await.unwrap().len(),
        WEBHOOKS,
        "every accepted webhook is queued"
    );
    latencies.sort();
    let pct = |p: f64| {
        latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)].as_secs_f64()
            * 1000.0
    };
    println!(
        "webhooks: {WEBHOOKS} signed tag pushes from {CLIENTS} clients in {:.2} s = {:.0}/s accepted and durably queued; p50 {:.2} ms, p99 {:.2} ms ({})",
        elapsed.as_secs_f64(),
        WEBHOOKS as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        Utc::now().format("%Y-%m-%d")
    );
}
