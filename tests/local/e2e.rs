//! End to end on one machine: real virtualenvs, real `pip install` of real wheels, real
//! service processes, driven by the worker through the SQLite store.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::example::Example;
use serde_json::{json, Value};
use shipit::deploy::engine::Notice;
use shipit::deploy::job::JobId;
use shipit::deploy::ports::Ledger;
use shipit::deploy::status::JobStatus;
use shipit::drive::worker::Worker;

pub async fn deploy(ex: &Example, version: &str) -> (JobId, JobStatus, Vec<Notice>) {
    let (config, store) = (ex.config(), ex.store());
    let job = shipit::cli::deploy(&config, &store, "hello", version, None, false)
        .await
        .unwrap();
    finish(ex, &job.id).await
}

pub async fn finish(ex: &Example, job: &JobId) -> (JobId, JobStatus, Vec<Notice>) {
    let (config, store) = (ex.config(), ex.store());
    let status = shipit::cli::wait(config, &store, job, |_, _| {})
        .await
        .unwrap();
    let notices = store
        .notices(job, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, n)| n)
        .collect();
    (job.clone(), status, notices)
}

/// What `shipit ARGS` prints on standard output, as JSON.
fn shipit_json(ex: &Example, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .arg("--config")
        .arg(ex.config_path())
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// After the canary failed its health check on 1.2.0: the job says why, when, and what
/// ran on each node, in `show` (by a prefix of its id), `jobs` and `history --all`.
async fn the_failed_deploy_keeps_its_story(ex: &Example, failed: &JobId) {
    let story = shipit_json(ex, &["show", &failed.as_str()[..8], "--json"]);
    // The page's API tells the same story.
    let (ingress, store) = shipit::run::local::ingress((*ex.config()).clone())
        .await
        .unwrap();
    let served = crate::helpers::Served::start(ingress, store).await;
    let api: Value = reqwest::get(format!("{}/api/jobs/{failed}", served.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let deploys: Value = reqwest::get(format!("{}/api/deploys", served.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    served.stop().await;
    assert_eq!(api, story);
    assert_eq!(story["job"]["id"], failed.as_str());
    assert_eq!(story["status"], "failed");
    let reason = story["reason"].as_str().unwrap();
    assert!(reason.contains("node1 failed its health check"), "{story}");
    let user = std::env::var("USER").unwrap_or_default();
    if !user.is_empty() {
        assert_eq!(story["job"]["requested_by"], user.as_str());
    }
    for time in ["queued_at", "started_at", "ended_at"] {
        assert!(story[time].is_string(), "{time}: {story}");
    }
    let step = |node: &str, stage: &str| {
        story["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["node"] == node && s["stage"] == stage)
            .unwrap_or_else(|| panic!("no {stage} on {node}: {story}"))
            .clone()
    };
    assert_eq!(step("node3", "install")["result"], "ok");
    let restart = step("node1", "restart");
    assert_eq!(restart["result"], "failed", "{restart}");
    assert_ne!(restart["exit_code"], 0, "{restart}");
    assert!(
        restart["output"].as_str().unwrap().contains("unhealthy"),
        "{restart}"
    );
    assert!(restart["started_at"].as_str() <= restart["ended_at"].as_str());
    assert_eq!(step("node1", "rollback_restart")["result"], "ok");
    assert!(
        story["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| !(s["node"] == "node2" && s["stage"] == "restart")),
        "node2 was never restarted onto 1.2.0: {story}"
    );
    let jobs = shipit_json(ex, &["jobs", "--json"]);
    let listed = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["job"]["id"] == failed.as_str())
        .unwrap();
    assert_eq!(listed["reason"], reason);
    assert!(listed["ended_at"].is_string(), "{listed}");
    let in_api = deploys["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["job"]["id"] == failed.as_str())
        .unwrap();
    assert_eq!(in_api, listed, "the API lists the job as `jobs` does");
    // DORA: two changes went live, the third failed and was put back at once.
    let stats = shipit_json(ex, &["stats", "--json"]);
    let f = &stats[0];
    assert_eq!(
        (f["app"].as_str(), f["env"].as_str()),
        (Some("hello"), Some("production"))
    );
    assert_eq!(
        (
            &f["deploys"],
            &f["changes"],
            &f["failed_changes"],
            &f["restores"]
        ),
        (&json!(2), &json!(3), &json!(1), &json!(1)),
        "{f}"
    );
    assert_eq!(
        f["lead_time_seconds"],
        Value::Null,
        "no commit times from the CLI"
    );
    let ended = shipit_json(ex, &["history", "hello", "--all", "--json"]);
    assert_eq!(
        ended[0]["job"]["id"],
        failed.as_str(),
        "newest first: {ended}"
    );
    assert_eq!(ended[0]["status"], "failed");
    assert_eq!(ended[0]["reason"], reason);
}

/// Notices reduced to "node event" words, e.g. "node1 restarted".
pub fn steps(notices: &[Notice]) -> Vec<String> {
    notices
        .iter()
        .filter_map(|n| match n {
            Notice::Installed { node } => Some(format!("{node} installed")),
            Notice::Restarted { node } => Some(format!("{node} restarted")),
            Notice::Healthy { node } => Some(format!("{node} healthy")),
            Notice::Unhealthy { node, .. } => Some(format!("{node} unhealthy")),
            Notice::RollingBack { to, .. } => Some(format!("rollback to {to}")),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn installs_in_parallel_restarts_in_order_and_rolls_back_a_bad_version() {
    let ex = Example::new(3);
    let (_, status, notices) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:?}");
    let s = steps(&notices);
    assert_eq!(
        s,
        [
            "node1 installed",
            "node2 installed",
            "node3 installed",
            "node1 restarted",
            "node1 healthy",
            "node2 restarted",
            "node2 healthy",
            "node3 restarted",
            "node3 healthy"
        ]
    );
    assert_eq!(ex.served(), ["1.0.0", "1.0.0", "1.0.0"]);

    let (_, status, _) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Succeeded);
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);

    // The broken build fails on the canary; nodes 2 and 3 are never restarted onto it.
    let (failed, status, notices) = deploy(&ex, "1.2.0").await;
    assert_eq!(status, JobStatus::Failed);
    let s = steps(&notices);
    assert_eq!(
        &s[3..],
        [
            "node1 restarted",
            "node1 unhealthy",
            "rollback to 1.1.0",
            "node1 healthy"
        ],
        "{s:?}"
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);
    assert_eq!(ex.starts("node2", "1.2.0"), 0);
    let store = ex.store();
    let history = shipit::cli::history(&ex.config(), &store, "hello", None)
        .await
        .unwrap();
    assert_eq!(
        history
            .iter()
            .map(|h| h.entry.job.version.to_string())
            .collect::<Vec<_>>(),
        ["1.1.0", "1.0.0"],
        "a failed deploy is not history"
    );
    the_failed_deploy_keeps_its_story(&ex, &failed).await;
    // Each node as last seen: node1 put back onto 1.1.0 by the failed deploy, the others
    // still on 1.1.0 since the deploy before.
    let status = shipit_json(&ex, &["status", "--json"]);
    let nodes = &status[0]["nodes"];
    for (i, node) in ["node1", "node2", "node3"].iter().enumerate() {
        assert_eq!(nodes[i]["node"], *node, "{status}");
        assert_eq!(nodes[i]["version"], "1.1.0", "{status}");
    }

    // Rollback re-sends the previous live job.
    let job = shipit::cli::rollback(&ex.config(), &store, "hello", None)
        .await
        .unwrap();
    assert_eq!(job.version.as_str(), "1.0.0");
    let (_, status, _) = finish(&ex, &job.id).await;
    assert_eq!(status, JobStatus::Succeeded);
    assert_eq!(ex.served(), ["1.0.0", "1.0.0", "1.0.0"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_deploys_of_one_app_never_overlap() {
    let ex = Example::new(2);
    let (config, store) = (ex.config(), ex.store());
    let first = shipit::cli::deploy(&config, &store, "hello", "1.0.0", None, false)
        .await
        .unwrap();
    let second = shipit::cli::deploy(&config, &store, "hello", "1.1.0", None, false)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let out = shipit::run::local::outbound(config.clone()).await;
    let worker = Worker::new(config.clone(), store.clone(), out);
    let running = tokio::spawn(async move { worker.run("test", stopped).await });
    let deadline = Instant::now() + Duration::from_secs(120);
    while store.job(&second.id).await.unwrap().unwrap().status == JobStatus::Queued
        || store.job(&second.id).await.unwrap().unwrap().status == JobStatus::Running
    {
        assert!(Instant::now() < deadline, "deploys did not finish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    for id in [&first.id, &second.id] {
        assert_eq!(
            store.job(id).await.unwrap().unwrap().status,
            JobStatus::Succeeded
        );
    }
    // The second deploy's first notice comes after the first deploy's last one.
    let last_of_first = store.notices(&first.id, 0).await.unwrap().last().unwrap().0;
    let first_of_second = store
        .notices(&second.id, 0)
        .await
        .unwrap()
        .first()
        .unwrap()
        .0;
    assert!(
        first_of_second > last_of_first,
        "deploys of one app+env overlapped"
    );
    assert_eq!(ex.served(), ["1.1.0", "1.1.0"]);
}

/// Deploys `version` in a `shipit deploy --wait` process of its own, and kills it (-9: no
/// chance to clean up) once `node` is healthy on it.
pub async fn deploy_killed_after_healthy(ex: &Example, version: &str, node: &str) -> JobId {
    let store = ex.store();
    let mut child = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .args([
            "--config",
            ex.config_path().to_str().unwrap(),
            "deploy",
            "hello",
            version,
            "--wait",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let job = loop {
        assert!(Instant::now() < deadline, "{node} never became healthy");
        let jobs = store.jobs(None).await.unwrap();
        if let Some(q) = jobs.iter().find(|q| q.job.version.as_str() == version) {
            let healthy = store
                .notices(&q.job.id, 0)
                .await
                .unwrap()
                .iter()
                .any(|(_, n)| *n == Notice::Healthy { node: node.into() });
            if healthy {
                break q.job.id.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    child.kill().unwrap();
    child.wait().unwrap();
    job
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_worker_resumes_without_restarting_a_finished_node_again() {
    let ex = Example::new(3);
    let (_, status, _) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded);

    let job = deploy_killed_after_healthy(&ex, "1.1.0", "node1").await;
    assert_eq!(
        ex.store().job(&job).await.unwrap().unwrap().status,
        JobStatus::Running
    );

    // A new worker (after the dead one's lease runs out) picks the deploy up where it was.
    let (_, status, _) = finish(&ex, &job).await;
    assert_eq!(status, JobStatus::Succeeded);
    assert_eq!(ex.served(), ["1.1.0", "1.1.0", "1.1.0"]);
    assert_eq!(
        ex.starts("node1", "1.1.0"),
        1,
        "node1 was restarted again after the resume"
    );
    for node in ["node2", "node3"] {
        assert!(ex.starts(node, "1.1.0") >= 1);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_fleet_runs_a_command_key_once_however_often_it_is_asked() {
    use shipit::deploy::command::{Command as FleetCommand, CommandKind, NodeResult};
    let ex = Example::new(1);
    let (_, status, _) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded);
    let config = ex.config();
    let app = config.app("hello").unwrap();
    let env = &app.environments["production"];
    let fleet = shipit::local::fleet::LocalFleet::new(ex.store(), config.clone());
    let restart = |key: &str| FleetCommand {
        key: key.into(),
        kind: CommandKind::Restart,
        version: shipit::deploy::version::Version::parse("1.0.0").unwrap(),
        nodes: vec!["node1".into()],
        concurrency: 0,
        fence: 0,
        not_after: None,
        check: None,
    };
    let before = ex.starts("node1", "1.0.0");
    for _ in 0..3 {
        // A driver that replays a step asks again with the same key.
        let results = fleet
            .run_on(app, env, &restart("replayed:restart:node1"))
            .await
            .unwrap();
        assert_eq!(results, [("node1".to_string(), NodeResult::Succeeded)]);
    }
    let check = FleetCommand {
        key: "check".into(),
        kind: CommandKind::Health,
        ..restart("")
    };
    let wait_healthy = || async {
        for _ in 0..50 {
            let key = format!(
                "check-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
            );
            if fleet
                .run_on(
                    app,
                    env,
                    &FleetCommand {
                        key,
                        ..check.clone()
                    },
                )
                .await
                .unwrap()[0]
                .1
                == NodeResult::Succeeded
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node1 did not come back");
    };
    wait_healthy().await;
    assert_eq!(
        ex.starts("node1", "1.0.0"),
        before + 1,
        "one key, one restart"
    );
    fleet
        .run_on(app, env, &restart("another:restart:node1"))
        .await
        .unwrap();
    wait_healthy().await;
    assert_eq!(ex.starts("node1", "1.0.0"), before + 2);

    // A node the config does not know is refused, not run.
    let failing = fleet
        .run_on(
            app,
            env,
            &FleetCommand {
                key: "bad-node".into(),
                nodes: vec!["node9".into()],
                ..restart("")
            },
        )
        .await
        .unwrap();
    assert!(
        matches!(&failing[0].1, NodeResult::Failed { output, .. } if output == "node node9 is not in the config"),
        "{failing:?}"
    );
}

#[tokio::test]
async fn sync_brings_a_new_node_and_a_drifted_one_to_the_live_version_and_no_other() {
    let mut ex = Example::new(3);
    assert_eq!(deploy(&ex, "1.1.0").await.1, JobStatus::Succeeded);
    ex.add_node("node4");
    ex.pip_install("node2", "1.0.0");

    let (code, out) = ex.shipit(&["sync", "hello", "--check"]);
    assert_eq!(code, 1, "{out}");
    let line = |node: &str| {
        out.lines()
            .find(|l| l.starts_with(&format!("{node} ")))
            .unwrap_or_else(|| panic!("no {node} in:\n{out}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("node1")[1..], ["1.1.0", "ok"]);
    assert_eq!(line("node2")[1..], ["1.0.0", "differs"]);
    assert_eq!(line("node3")[1..], ["1.1.0", "ok"]);
    assert_eq!(line("node4")[1..3], ["-", "not"], "{out}");
    assert!(out.contains("2 node(s) differ from 1.1.0"), "{out}");
    // Columns line up under their heads.
    let head = out.lines().next().unwrap();
    let (installed, live) = (head.find("INSTALLED").unwrap(), head.find("LIVE").unwrap());
    for l in out.lines().filter(|l| l.starts_with("node")) {
        assert!(l[installed..].starts_with(['1', '-']), "{out}");
        assert_eq!(&l[live - 1..live], " ", "{out}");
        assert_ne!(&l[live..live + 1], " ", "{out}");
    }

    let (code, out) = ex.shipit(&["sync", "hello"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(ex.served(), ["1.1.0"; 4]);
    // node2 restarted once more, on 1.1.0 from disk; node4 started; 1 and 3 untouched.
    let starts: Vec<usize> = ["node1", "node2", "node3", "node4"]
        .iter()
        .map(|n| ex.starts(n, "1.1.0"))
        .collect();
    assert_eq!(starts, [1, 2, 1, 1]);
    let history = ex.store().history("hello", "production", 5).await.unwrap();
    assert_eq!(history.len(), 1, "a sync is not a deploy in history");

    let (code, out) = ex.shipit(&["sync", "hello", "--check"]);
    assert_eq!(code, 0, "{out}");
}

/// install_concurrency holds on local nodes too: each install marks itself in flight
/// for a moment and notes how many were.
#[tokio::test]
async fn at_most_install_concurrency_nodes_install_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("inflight")).unwrap();
    let (config, store) = crate::helpers::LocalApp {
        nodes: vec!["n1", "n2", "n3", "n4", "n5", "n6"],
        install: "touch ../inflight/{node}; ls ../inflight | wc -l >> ../seen; sleep 0.3; rm ../inflight/{node}",
        tables: "[apps.hello.rollout]\ninstall_concurrency = 2\n".into(),
        ..Default::default()
    }
    .open(dir.path());
    let job = shipit::cli::deploy(&config, &store, "hello", "1.0.0", None, false)
        .await
        .unwrap();
    let status = shipit::cli::wait(config, &store, &job.id, |_, _| {})
        .await
        .unwrap();
    assert_eq!(status, JobStatus::Succeeded);
    let seen = std::fs::read_to_string(dir.path().join("seen")).unwrap();
    let counts: Vec<u32> = seen
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 6, "{seen}");
    assert_eq!(counts.iter().max(), Some(&2), "{seen}");
}

/// `--dry-run` shows the plan (live version, lock, nodes, commands rendered for the first
/// node) and queues nothing; a rollback's plan names the version it would restore.
#[tokio::test]
async fn a_dry_run_shows_the_plan_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = crate::helpers::LocalApp {
        nodes: vec!["n1", "n2"],
        install: "printf %s {version} > version",
        ..Default::default()
    }
    .open(dir.path());
    for v in ["1.0.0", "1.1.0"] {
        let job = shipit::cli::deploy(&config, &store, "hello", v, None, false)
            .await
            .unwrap();
        let status = shipit::cli::wait(config.clone(), &store, &job.id, |_, _| {})
            .await
            .unwrap();
        assert_eq!(status, JobStatus::Succeeded);
    }
    let jobs_before = store.jobs(None).await.unwrap().len();

    let job = shipit::cli::deploy_job(&config, "hello", "1.2.0", None, false).unwrap();
    let plan = shipit::cli::plan::plan(&config, &store, &job)
        .await
        .unwrap()
        .lines()
        .join("\n");
    assert!(plan.starts_with("Dry run: nothing was queued."), "{plan}");
    assert!(plan.contains("hello 1.2.0 to production"), "{plan}");
    assert!(plan.contains("Live: 1.1.0"), "{plan}");
    assert!(plan.contains("Lock: free"), "{plan}");
    assert!(plan.contains("Nodes, in restart order: n1, n2"), "{plan}");
    assert!(
        plan.contains("Install: printf %s 1.2.0 > version"),
        "{plan}"
    );

    let back = shipit::cli::rollback_job(&config, &store, "hello", None)
        .await
        .unwrap();
    let plan = shipit::cli::plan::plan(&config, &store, &back)
        .await
        .unwrap()
        .lines()
        .join("\n");
    assert!(plan.contains("hello 1.0.0 to production"), "{plan}");

    assert_eq!(
        store.jobs(None).await.unwrap().len(),
        jobs_before,
        "nothing queued"
    );
    // The same plan as JSON, from the command line.
    let out = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .arg("--config")
        .arg(dir.path().join("shipit.toml"))
        .args(["deploy", "hello", "1.2.0", "--dry-run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["version"], "1.2.0");
    assert_eq!(plan["batches"], serde_json::json!([["n1"], ["n2"]]));
    assert_eq!(plan["gate"]["answer"], "none");
    assert_eq!(plan["lock"], serde_json::Value::Null);
    assert_eq!(plan["commands"]["install"], "printf %s 1.2.0 > version");
    assert!(
        plan["live"].as_str().unwrap().starts_with("1.1.0 — job"),
        "{plan}"
    );

    assert_eq!(
        store.jobs(None).await.unwrap().len(),
        jobs_before,
        "nothing queued from the command line either"
    );
    let on_n1 = std::fs::read_to_string(dir.path().join("n1/version")).unwrap();
    assert_eq!(on_n1, "1.1.0", "nothing ran");
}

/// `batches = [1, 2]` on six real nodes: node4 fails its health check on 1.1.0 in the
/// third batch, and exactly the five restarted nodes go back to 1.0.0, in the same
/// batches; node6 never runs 1.1.0.
#[tokio::test(flavor = "multi_thread")]
async fn batches_restart_together_and_one_failure_rolls_back_exactly_the_restarted_nodes() {
    let ex = Example::new(6);
    let toml = crate::helpers::pip_app_toml(&ex.nodes, 3)
        .replace(
            "health = \"",
            // The operator's health check, made to fail on node4 running 1.1.0 only.
            "health = \"test {node}:{version} != node4:1.1.0 && ",
        )
        .replace(
            "health_interval_seconds = 1",
            "health_interval_seconds = 1\nbatches = [1, 2]",
        );
    std::fs::write(ex.config_path(), toml).unwrap();
    let (_, status, _) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded);

    let (_, status, notices) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Failed, "{notices:?}");
    // Each node restarts and waits for its own health check in one command; a batch's
    // results are reported together, in node order, once the whole batch has answered.
    let s = steps(&notices);
    assert_eq!(
        &s[6..],
        [
            "node1 restarted",
            "node1 healthy",
            "node2 restarted",
            "node2 healthy",
            "node3 restarted",
            "node3 healthy",
            // node5 shares node4's batch: restarted with it, though node4 fails.
            "node4 restarted",
            "node5 restarted",
            "node5 healthy",
            "node4 unhealthy",
            "rollback to 1.0.0",
            "node1 healthy",
            "node2 healthy",
            "node3 healthy",
            "node4 healthy",
            "node5 healthy",
        ],
        "{s:?}"
    );
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::RollingBack { nodes, .. }
        if nodes == &["node1", "node2", "node3", "node4", "node5"])));
    for node in ["node1", "node2", "node3", "node4", "node5"] {
        assert_eq!(ex.starts(node, "1.1.0"), 1, "{node}");
        assert_eq!(
            ex.starts(node, "1.0.0"),
            2,
            "{node}: started, then rolled back"
        );
    }
    assert_eq!(ex.starts("node6", "1.1.0"), 0);
    assert_eq!(ex.starts("node6", "1.0.0"), 1, "never restarted");
    assert_eq!(ex.served(), ["1.0.0"; 6]);

    // With one failure allowed, the same deploy goes live without node4, and says so in
    // chat's words and in history.
    let toml = std::fs::read_to_string(ex.config_path()).unwrap();
    std::fs::write(
        ex.config_path(),
        toml.replace("batches = [1, 2]", "batches = [1, 2]\nmax_failed = 1"),
    )
    .unwrap();
    let (_, status, notices) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:?}");
    assert!(notices
        .iter()
        .any(|n| matches!(n, Notice::Finished { outcome }
        if outcome.left_behind().as_deref() == Some("node4 unhealthy"))));
    let history = shipit::cli::history(&ex.config(), &ex.store(), "hello", None)
        .await
        .unwrap();
    assert_eq!(history[0].entry.job.version.as_str(), "1.1.0");
    assert_eq!(
        history[0].entry.left_behind.as_deref(),
        Some("node4 unhealthy")
    );
    assert_eq!(ex.starts("node6", "1.1.0"), 1);
}

/// `layout = "releases"` on real nodes: each version in its own virtualenv, `current`
/// flipped at restart; a rollback installs nothing and still checks every node; old
/// releases are pruned to `keep_releases`, and one pruned is built again when wanted.
#[tokio::test(flavor = "multi_thread")]
async fn releases_side_by_side_roll_back_without_installing_anything() {
    let ex = Example::with_wheels(3, &["1.0.0", "1.1.0", "1.3.0"]);
    let toml = crate::helpers::pip_app_releases_toml(&ex.nodes, 10, 2);
    std::fs::write(ex.config_path(), toml).unwrap();
    let node = |n: &str| ex.dir.path().join("nodes").join(n);
    let current = |n: &str| {
        std::fs::read_link(node(n).join("current"))
            .unwrap()
            .display()
            .to_string()
    };
    let installs = |n: &str| {
        std::fs::read_to_string(node(n).join("installs.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let releases = |n: &str| {
        let mut r: Vec<String> = std::fs::read_dir(node(n).join("releases"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|f| !f.starts_with('.'))
            .collect();
        r.sort();
        r
    };
    for v in ["1.0.0", "1.1.0"] {
        let (_, status, notices) = deploy(&ex, v).await;
        assert_eq!(status, JobStatus::Succeeded, "{notices:?}");
    }
    assert_eq!(ex.served(), ["1.1.0"; 3]);
    let built = node("node1").join("releases/1.0.0/.shipit-built");
    let built_at = std::fs::metadata(&built).unwrap().modified().unwrap();

    // A version that cannot be installed: nothing restarted, `current` untouched.
    let (_, status, _) = deploy(&ex, "9.9.9").await;
    assert_eq!(status, JobStatus::Failed);
    assert_eq!(current("node1"), "releases/1.1.0");
    assert_eq!(ex.served(), ["1.1.0"; 3]);
    assert_eq!(ex.starts("node1", "1.1.0"), 1);

    // The rollback to 1.0.0 installs nothing, flips and restarts each node, and checks
    // each one's health.
    let store = ex.store();
    let job = shipit::cli::rollback(&ex.config(), &store, "hello", None)
        .await
        .unwrap();
    let (_, status, notices) = finish(&ex, &job.id).await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:?}");
    assert_eq!(
        steps(&notices),
        [
            "node1 installed",
            "node2 installed",
            "node3 installed",
            "node1 restarted",
            "node1 healthy",
            "node2 restarted",
            "node2 healthy",
            "node3 restarted",
            "node3 healthy"
        ]
    );
    for n in ["node1", "node2", "node3"] {
        assert_eq!(
            installs(n),
            ["1.0.0", "1.1.0", "9.9.9"],
            "{n}: pip ran again"
        );
        assert_eq!(current(n), "releases/1.0.0");
    }
    assert_eq!(
        std::fs::metadata(&built).unwrap().modified().unwrap(),
        built_at
    );
    assert_eq!(ex.served(), ["1.0.0"; 3]);

    // 1.3.0 goes live: 1.0.0 is the one before it and stays; 1.1.0 is pruned (and the
    // failed 9.9.9, never built, stays out of the count).
    let (_, status, _) = deploy(&ex, "1.3.0").await;
    assert_eq!(status, JobStatus::Succeeded);
    assert_eq!(releases("node1"), ["1.0.0", "1.3.0", "9.9.9"]);
    // 1.1.0 is wanted again: it is built afresh.
    let (_, status, _) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Succeeded);
    assert_eq!(installs("node2").last().map(String::as_str), Some("1.1.0"));
    assert_eq!(releases("node2"), ["1.1.0", "1.3.0", "9.9.9"]);
    assert_eq!(ex.served(), ["1.1.0"; 3]);

    // sync reads each node's version from `current` (the app has no version command),
    // and puts a node flipped behind shipit's back on the live release, from disk.
    let (code, out) = ex.shipit(&["sync", "hello", "--check"]);
    assert_eq!(code, 0, "{out}");
    std::os::unix::fs::symlink("releases/1.3.0", node("node3").join("flipped")).unwrap();
    std::fs::rename(node("node3").join("flipped"), node("node3").join("current")).unwrap();
    let (code, out) = ex.shipit(&["sync", "hello", "--check"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["node3", "1.3.0", "differs"]),
        "{out}"
    );
    let (code, out) = ex.shipit(&["sync", "hello"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(current("node3"), "releases/1.1.0");
    assert_eq!(installs("node3").last().map(String::as_str), Some("1.1.0"));
    assert_eq!(installs("node3").len(), 5, "sync built nothing");
}

/// One node directory, a store and the local fleet, for `apps` (TOML; `{node}` is the
/// node's directory): commands run through `LocalFleet` directly.
struct OneNode {
    _dir: tempfile::TempDir,
    node: std::path::PathBuf,
    config: std::sync::Arc<shipit::config::Config>,
    store: shipit::local::store::Store,
    fleet: shipit::local::fleet::LocalFleet,
}

impl OneNode {
    fn new(apps: &str) -> OneNode {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("n1");
        std::fs::create_dir(&node).unwrap();
        let text = format!(
            "[server]\nstate = \"{}\"\n{}",
            dir.path().join("shipit.db").display(),
            apps.replace("{node}", &node.display().to_string())
        );
        let config = std::sync::Arc::new(
            shipit::config::Config::parse(&text, &dir.path().join("shipit.toml"))
                .unwrap_or_else(|r| panic!("{r}")),
        );
        let store = shipit::local::store::Store::open(&config.server.state).unwrap();
        let fleet = shipit::local::fleet::LocalFleet::new(store.clone(), config.clone());
        OneNode {
            _dir: dir,
            node,
            config,
            store,
            fleet,
        }
    }

    /// Runs the install of 1.0.0 of `app` on the node under `key`.
    async fn install(&self, app: &str, key: &str) -> shipit::deploy::command::NodeResult {
        let app = self.config.app(app).unwrap();
        let env = &app.environments["production"];
        let results = self.fleet.run_on(app, env, &install(key)).await.unwrap();
        results.into_iter().next().unwrap().1
    }
}

fn install(key: &str) -> shipit::deploy::command::Command {
    shipit::deploy::command::Command {
        key: key.into(),
        kind: shipit::deploy::command::CommandKind::Install,
        version: shipit::deploy::version::Version::parse("1.0.0").unwrap(),
        nodes: vec!["n1".into()],
        concurrency: 0,
        fence: 0,
        not_after: None,
        check: None,
    }
}

/// Whether `pid` runs (a zombie waits for a parent that does not reap: no init in a
/// container).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())).is_ok_and(|s| {
        let state = s
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next());
        !matches!(state, Some("Z" | "X"))
    })
}

/// A command past its timeout is stopped with everything it started: TERM to its whole
/// process group, then KILL (here both ignore TERM), so that no install is left running
/// into the next command.
#[tokio::test(flavor = "multi_thread")]
async fn a_command_past_its_timeout_is_stopped_with_every_process_it_started() {
    use shipit::deploy::command::NodeResult;
    let one = OneNode::new(
        r#"
[apps.slow]
package = "slow-app"
install = "trap '' TERM; sleep 300 & echo $! > grandchild.pid; wait"
restart = "true"
health = "true"
[apps.slow.rollout]
command_timeout_seconds = 1
[apps.slow.environments.production]
nodes = [{ name = "n1", dir = "{node}" }]
"#,
    );
    let result = one.install("slow", "slow:install").await;
    assert!(
        matches!(&result, NodeResult::Failed { output, .. } if output.contains("timed out after 1 s")),
        "{result:?}"
    );
    let pid = std::fs::read_to_string(one.node.join("grandchild.pid")).unwrap();
    assert!(
        !alive(&pid),
        "the install's child {pid} outlived its timeout"
    );
}

/// After a crash, the next worker finds the interrupted command by the node's record of
/// it (pid, boot id, start time), not by a pid alone: a first run still going past its
/// deadline is stopped with its whole group and reported timed out; a record whose pid
/// now belongs to another process (its start time differs: a reused pid) is neither
/// waited for nor signalled, and the command runs.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_crash_the_interrupted_command_is_known_by_its_start_time_not_its_pid() {
    use shipit::config::command::{run_record, Site};
    use shipit::deploy::command::NodeResult;
    use std::os::unix::process::CommandExt;
    let one = OneNode::new(
        r#"
[apps.slow]
package = "slow-app"
install = "sleep 300"
restart = "true"
health = "true"
[apps.slow.rollout]
command_timeout_seconds = 1
[apps.slow.environments.production]
nodes = [{ name = "n1", dir = "{node}" }]

[apps.quick]
package = "quick-app"
install = "echo ran >> ran"
restart = "true"
health = "true"
[apps.quick.environments.production]
nodes = [{ name = "n1", dir = "{node}" }]
"#,
    );
    let node = &one.node;

    // A worker started the slow install, then died: its `sh` runs on, in its own group.
    let slow = one.config.app("slow").unwrap();
    let (vars, at) = (Default::default(), node.display().to_string());
    let site = Site {
        node: "n1",
        dir: Some(&at),
        vars: &vars,
    };
    let cmd = install("crashed:install");
    let script = slow
        .script(&slow.environments["production"], &cmd, &site)
        .unwrap()
        .unwrap();
    one.store
        .command_started(&cmd.key, "n1", chrono::Utc::now())
        .await
        .unwrap();
    let mut first = std::process::Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(node)
        .process_group(0)
        .spawn()
        .unwrap();
    let record = node.join(run_record(&cmd.key)).join("pid");
    while !record.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let result = one.install("slow", &cmd.key).await;
    assert!(
        matches!(&result, NodeResult::Failed { output, .. } if output.contains("while shipit was down")),
        "{result:?}"
    );
    let _ = first.wait();
    assert!(
        !alive(&first.id().to_string()),
        "the first run outlived its deadline"
    );

    // A record whose pid is now another process's: a `sleep` that started later.
    let key = "reused:install";
    one.store
        .command_started(key, "n1", chrono::Utc::now())
        .await
        .unwrap();
    let mut other = std::process::Command::new("sleep")
        .arg("300")
        .process_group(0)
        .spawn()
        .unwrap();
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let record = node.join(run_record(key));
    std::fs::create_dir_all(&record).unwrap();
    std::fs::write(
        record.join("pid"),
        format!("{} {} 1\n", other.id(), boot.trim()),
    )
    .unwrap();
    assert_eq!(one.install("quick", key).await, NodeResult::Succeeded);
    assert_eq!(std::fs::read_to_string(node.join("ran")).unwrap(), "ran\n");
    assert!(
        alive(&other.id().to_string()),
        "another process was signalled"
    );
    other.kill().unwrap();
    let _ = other.wait();
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_hooks_run_in_order_around_each_restart_and_on_rollback() {
    let ex = Example::new(2);
    let log = ex.dir.path().join("hooks.log");
    let toml = crate::helpers::pip_app_toml(&ex.nodes, 3)
        .replace(
            "restart = \"",
            "pre_restart = \"test {node}:{version} != node2:1.1.0 && echo pre {node} {version} >> ../../hooks.log\"\n\
             post_restart = \"echo post {node} {version} >> ../../hooks.log\"\n\
             restart = \"echo restart {node} {version} >> ../../hooks.log && ",
        )
        .replace(
            "health_interval_seconds = 1",
            "health_interval_seconds = 1\npre_restart_timeout_seconds = 20",
        );
    std::fs::write(ex.config_path(), toml).unwrap();
    let (code, out) = ex.shipit(&["check"]);
    assert_eq!(code, 0, "{out}");
    let take = || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        std::fs::remove_file(&log).ok();
        text
    };

    let (_, status, notices) = deploy(&ex, "1.0.0").await;
    assert_eq!(status, JobStatus::Succeeded, "{notices:?}");
    assert_eq!(
        take(),
        "pre node1 1.0.0\nrestart node1 1.0.0\npost node1 1.0.0\n\
         pre node2 1.0.0\nrestart node2 1.0.0\npost node2 1.0.0\n"
    );

    // 1.2.0 never passes its health check: node1 is not put back in until the rollback
    // has restarted it on 1.0.0, through the same hooks.
    let (_, status, notices) = deploy(&ex, "1.2.0").await;
    assert_eq!(status, JobStatus::Failed, "{notices:?}");
    assert_eq!(
        take(),
        "pre node1 1.2.0\nrestart node1 1.2.0\n\
         pre node1 1.0.0\nrestart node1 1.0.0\npost node1 1.0.0\n"
    );

    // node2's pre_restart fails on 1.1.0: node2 does not restart, both are put back, and
    // 1.1.0 is not marked faulty (the hook is not the version).
    let (id, status, notices) = deploy(&ex, "1.1.0").await;
    assert_eq!(status, JobStatus::Failed, "{notices:?}");
    assert_eq!(
        take(),
        "pre node1 1.1.0\nrestart node1 1.1.0\npost node1 1.1.0\n\
         pre node1 1.0.0\nrestart node1 1.0.0\npost node1 1.0.0\n\
         pre node2 1.0.0\nrestart node2 1.0.0\npost node2 1.0.0\n"
    );
    let story = shipit_json(&ex, &["show", id.as_str(), "--json"]);
    let reason = story["reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("restart of node2 failed (pre_restart exited 1"),
        "{story}"
    );
    let status = shipit_json(&ex, &["status", "--json"]);
    assert_eq!(
        status[0]["faulty"],
        serde_json::json!(["1.2.0"]),
        "{status}"
    );
    assert_eq!(ex.served(), ["1.0.0", "1.0.0"]);
}
