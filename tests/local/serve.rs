//! One machine: `shipit serve` over real HTTP, the package directory watcher, and the CLI.

use std::path::Path;
use std::process::Command;

use crate::helpers::*;
use chrono::Utc;
use shipit::config::Config;
use shipit::deploy::history::HistoryEntry;
use shipit::deploy::status::JobStatus;
use shipit::ingress::package::UploadOutcome;
use shipit::run::local;

fn local_config(dir: &Path) -> Config {
    std::fs::create_dir_all(dir.join("wheelhouse")).unwrap();
    LocalApp {
        nodes: vec!["node1"],
        install: "venv/bin/pip install -U {package}=={version}",
        restart: "kill -HUP $(cat service.pid)",
        server: "state = \"state/shipit.db\"\npackage_dir = \"wheelhouse\"".into(),
        ..LocalApp::default()
    }
    .write(dir)
}

#[tokio::test]
async fn serve_accepts_signed_webhooks_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, store) = local::ingress(local_config(dir.path())).await.unwrap();
    let served = Served::start(ingress, store.clone()).await;
    let base = served.base.clone();
    let http = reqwest::Client::new();

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let body = tag_push("acme/hello", "v1.0.0");
    let post = |headers: http::HeaderMap, body: Vec<u8>| {
        let mut req = http.post(format!("{base}/hooks/github")).body(body);
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.to_str().unwrap());
        }
        req.send()
    };
    let unsigned = post(headers(&[("x-github-event", "push")]), body.clone())
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let big = vec![b'x'; shipit::ingress::github::MAX_BODY + 1];
    let too_big = post(github_headers("push", "d0", &big), big).await.unwrap();
    assert_eq!(too_big.status(), 413);
    assert!(
        store.jobs(None).await.unwrap().is_empty(),
        "refused webhooks queued something"
    );

    let ok = post(github_headers("push", "d1", &body), body.clone())
        .await
        .unwrap();
    assert_eq!(ok.status(), 202);
    let reply: serde_json::Value = ok.json().await.unwrap();
    let again = post(github_headers("push", "d1", &body), body.clone())
        .await
        .unwrap();
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["jobs"][0]["result"], "duplicate");

    let now = Utc::now();
    let form = slack_form("U2CERLKJA", "roadrunner", "help", "t");
    let mut req = http.post(format!("{base}/hooks/slack")).body(form.clone());
    for (k, v) in &slack_headers(&form, now) {
        req = req.header(k.as_str(), v.to_str().unwrap());
    }
    let help: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
    assert!(help["text"]
        .as_str()
        .unwrap()
        .contains("/deploy rollback APP [ENV]"));

    let listed: serde_json::Value = http
        .get(format!("{base}/api/deploys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let jobs = listed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["job"]["id"], reply["jobs"][0]["job"]);
    assert_eq!(jobs[0]["status"], "queued");

    served.stop().await;
}

#[tokio::test]
async fn new_files_in_the_package_directory_are_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let config = local_config(dir.path());
    let wheelhouse = config.server.package_dir.clone().unwrap();
    std::fs::write(wheelhouse.join("hello_app-0.9.0-py3-none-any.whl"), b"old").unwrap();
    let (ingress, store) = local::ingress(config).await.unwrap();
    let now = Utc::now();

    // What was there before shipit looked is history, not an upload.
    assert!(
        shipit::run::packages::scan(&ingress, &store, &wheelhouse, now)
            .await
            .unwrap()
            .is_empty()
    );
    std::fs::write(wheelhouse.join("hello_app-1.1.0-py3-none-any.whl"), b"new").unwrap();
    std::fs::write(wheelhouse.join("other_pkg-1.0.tar.gz"), b"x").unwrap();
    std::fs::write(wheelhouse.join("README.txt"), b"x").unwrap();
    std::fs::write(
        wheelhouse.join(".hello_app-1.2.0-py3-none-any.whl.part"),
        b"x",
    )
    .unwrap();
    let outcomes = shipit::run::packages::scan(&ingress, &store, &wheelhouse, now)
        .await
        .unwrap();
    let summary: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            UploadOutcome::Queued { location, jobs } => format!(
                "queued {} {}",
                location.rsplit('/').next().unwrap(),
                jobs.len()
            ),
            UploadOutcome::Ignored { location, .. } => {
                format!("ignored {}", location.rsplit('/').next().unwrap())
            }
        })
        .collect();
    assert_eq!(
        summary,
        [
            "ignored README.txt",
            "queued hello_app-1.1.0-py3-none-any.whl 1",
            "ignored other_pkg-1.0.tar.gz"
        ]
    );
    assert!(
        shipit::run::packages::scan(&ingress, &store, &wheelhouse, now)
            .await
            .unwrap()
            .is_empty(),
        "a file counted twice"
    );
    let jobs = store.jobs(None).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].job.version.as_str(), "1.1.0");
}

fn shipit(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .args(args)
        .env_remove("SHIPIT_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn check_reports_every_problem_with_key_and_hint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        r#"
[github]
webhook_secret = "env:"
[apps.hello]
package = "hello app"
repo = "acme"
install = "pip install {package}=={verison}"
restart = "kill -HUP {pid"
[apps.hello.environments.production]
chat_deployers = ["everyone"]
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = shipit(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let file = path.display().to_string();
    for (key, message) in [
        ("github.webhook_secret", "env: needs a variable name"),
        ("apps.hello.package", "is not a valid PEP 508 package name"),
        ("apps.hello.repo", "is not owner/name"),
        ("apps.hello.install", "unknown placeholder(s): verison"),
        ("apps.hello.restart", "unclosed '{'"),
        ("apps.hello.environments.production", "no nodes"),
        (
            "apps.hello.environments.production.chat_deployers[0]",
            "is not a Slack user id",
        ),
    ] {
        let line = format!("{file}: error: {key}: ");
        let at = stdout
            .find(&line)
            .unwrap_or_else(|| panic!("no {line:?} in:\n{stdout}"));
        let rest = &stdout[at + line.len()..];
        let (first, next) = rest.split_once('\n').unwrap();
        assert!(first.contains(message), "{key}: {first}");
        assert!(next.starts_with("  hint: "), "{key} has no hint: {next}");
    }
    assert!(stderr.contains("7 error(s)"), "{stderr}");

    // The example as shipped, before the demo sets it up: what a deploy would trip on.
    let (code, stdout, _) = shipit(&["check", "--config", "examples/local/shipit.toml"]);
    assert_eq!(code, 1, "{stdout}");
    for line in [
        "error: github.webhook_secret: environment variable SHIPIT_GITHUB_SECRET is not set here",
        "error: slack.signing_secret: environment variable SHIPIT_SLACK_SIGNING_SECRET is not set here",
        "error: apps.hello.environments.production.nodes[2].dir: ",
    ] {
        assert!(stdout.contains(line), "{line}\n{stdout}");
    }
    // Set up, it leaves the gate off (the demo has no GitHub to ask), and says so.
    let setup = tempfile::tempdir().unwrap();
    let example = setup.path().join("shipit.toml");
    std::fs::copy("examples/local/shipit.toml", &example).unwrap();
    for n in ["node1", "node2", "node3"] {
        std::fs::create_dir_all(setup.path().join("nodes").join(n)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .args(["check", "--config", example.to_str().unwrap()])
        .env("SHIPIT_GITHUB_SECRET", "s")
        .env("SHIPIT_SLACK_SIGNING_SECRET", "s")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let shown = example.display().to_string();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert!(
        lines[0].starts_with(&format!("{shown}: warning: apps.hello.gate: ")),
        "{stdout}"
    );
    assert_eq!(lines[2], format!("{shown}: ok (1 app(s): hello)"));
    let (code, stdout, _) = shipit(&["check", "--config", "/nonexistent/shipit.toml"]);
    assert_eq!(code, 1);
    assert!(stdout.contains("error: (file): cannot read"), "{stdout}");
}

#[tokio::test]
async fn serve_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    local_config(dir.path());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("shipit.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .args([
            "serve",
            "--config",
            config.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let mut up = false;
    for _ in 0..100 {
        if http
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            up = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(up, "serve did not come up");
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("serve ignored SIGTERM")
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "{status:?}: {stderr}");
    assert!(stderr.contains("shutting down"), "{stderr}");
}

#[tokio::test]
async fn a_worker_waits_while_another_holds_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = LocalApp::default().open(dir.path());
    // Someone else's lease, running out in 2 s (as a worker that died would leave it).
    assert!(store
        .take_worker_lease("other", Utc::now(), chrono::Duration::seconds(2))
        .await
        .unwrap());
    let job = shipit::cli::deploy(&config, &store, "hello", "1.0.0", None, false)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let out = shipit::run::local::outbound(config.clone()).await;
    let worker = shipit::drive::worker::Worker::new(config.clone(), store.clone(), out);
    let running = tokio::spawn(async move { worker.run("me", stopped).await });
    tokio::time::sleep(std::time::Duration::from_millis(1000)).await;
    assert_eq!(
        store.job(&job.id).await.unwrap().unwrap().status,
        JobStatus::Queued,
        "ran beside another worker"
    );
    let mut status = JobStatus::Queued;
    for _ in 0..100 {
        status = store.job(&job.id).await.unwrap().unwrap().status;
        if status == JobStatus::Succeeded {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        status,
        JobStatus::Succeeded,
        "never took over the expired lease"
    );
    stop.send(true).unwrap();
    running.await.unwrap();
}

/// In a freeze, `/deploy` is refused with its words and nothing is queued; someone not
/// in `freeze_overriders` may not override; an overrider's `--override REASON` is queued,
/// carrying who and why.
#[tokio::test]
async fn chat_deploys_in_a_freeze_are_refused_unless_a_freeze_overrider_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let until = (Utc::now() + chrono::Duration::days(30)).format("%Y-%m-%d");
    let config = LocalApp {
        deployers: r#""*""#,
        env: format!(
            r#"time_zone = "Europe/Berlin"
freezes = [{{ from = "2026-01-01", until = "{until}", reason = "audit" }}]
freeze_overriders = ["U0OVER1"]"#
        ),
        ..LocalApp::default()
    }
    .write(dir.path());
    let (ingress, store) = local::ingress(config).await.unwrap();
    let now = Utc::now();
    let say = |user: &'static str, text: &'static str| {
        let ingress = &ingress;
        async move {
            let form = slack_form(user, "someone", text, &unique("trigger"));
            let reply = ingress.slack(&slack_headers(&form, now), &form, now).await;
            reply.body["text"].as_str().unwrap().to_string()
        }
    };
    let text = say("U0OTHER1", "hello 1.0.0").await;
    assert!(
        text.starts_with("hello/production takes no deploys now: frozen (audit) until ")
            && text.ends_with("Nothing was queued."),
        "{text}"
    );
    let text = say("U0OTHER1", "hello 1.0.0 --override I need it").await;
    assert!(
        text.contains("may not override the calendar of hello/production"),
        "{text}"
    );
    assert!(store.jobs(None).await.unwrap().is_empty());
    let text = say("U0OVER1", "hello 1.0.0 --override INC-7 hotfix").await;
    assert!(
        text.starts_with("Queued hello 1.0.0")
            && text.contains("outside the calendar (override by"),
        "{text}"
    );
    let jobs = store.jobs(None).await.unwrap();
    let o = jobs[0].job.overridden.as_ref().unwrap();
    assert_eq!(o.reason, "INC-7 hotfix");
    assert!(o.by.contains("U0OVER1"), "{o:?}");
    // --override is for deploys only.
    let text = say("U0OVER1", "status --override x").await;
    assert!(text.starts_with("--override goes only with"), "{text}");
}

/// Before: a user id that was not a deployer, carrying a deployer's `user_name`, deployed;
/// so did a signed command from any other workspace the app is installed in.
#[tokio::test]
async fn slash_commands_count_by_user_id_from_the_pinned_workspace_only() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalApp {
        deployers: r#""U2CERLKJA""#,
        forcers: r#""U0FORCER1""#,
        ..LocalApp::default()
    }
    .write(dir.path());
    let (ingress, store) = local::ingress(config).await.unwrap();
    let served = Served::start(ingress, store.clone()).await;
    let http = reqwest::Client::new();
    let say = |team: &'static str, user: &'static str, name: &'static str, text: &'static str| {
        let (http, base) = (http.clone(), served.base.clone());
        async move {
            let form = slack_form_in(
                team,
                "https://hooks.slack.com/commands/T1/1/x",
                user,
                name,
                text,
                &unique("trigger"),
            );
            let mut req = http.post(format!("{base}/hooks/slack")).body(form.clone());
            for (k, v) in &slack_headers(&form, Utc::now()) {
                req = req.header(k.as_str(), v.to_str().unwrap());
            }
            let reply: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
            reply["text"].as_str().unwrap().to_string()
        }
    };

    // Someone else, named like the deployer.
    let text = say("T1", "U0STRANGER", "roadrunner", "hello 1.0.0").await;
    assert!(
        text.contains("may not deploy hello to production"),
        "{text}"
    );
    // The deployer's id, from another workspace.
    let text = say("T2", "U2CERLKJA", "roadrunner", "hello 1.0.0").await;
    assert_eq!(
        text,
        "This command comes from a workspace shipit does not serve; nothing was done."
    );
    // A deployer who is not a forcer.
    let text = say("T1", "U2CERLKJA", "roadrunner", "hello 1.0.0 --force").await;
    assert!(
        text.contains("may not use --force on hello/production"),
        "{text}"
    );
    assert!(
        store.jobs(None).await.unwrap().is_empty(),
        "a refused command queued a job"
    );

    let text = say("T1", "U2CERLKJA", "roadrunner", "hello 1.0.0").await;
    assert!(
        text.starts_with("Queued hello 1.0.0 to production"),
        "{text}"
    );
    let jobs = store.jobs(None).await.unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(
        matches!(&jobs[0].job.source, shipit::deploy::job::Source::Chat { user_id, .. } if user_id == "U2CERLKJA")
    );
    served.stop().await;
}

/// Before: `GET /api/deploys` answered anyone who could reach it, with each chat job's
/// Slack `response_url` (good for 30 minutes of posting into the channel as shipit).
#[tokio::test]
async fn read_endpoints_hide_reply_addresses_and_ask_for_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalApp {
        deployers: r#""U2CERLKJA""#,
        ..LocalApp::default()
    }
    .write(dir.path());
    let (ingress, store) = local::ingress(config.clone()).await.unwrap();
    let now = Utc::now();
    let form = slack_form("U2CERLKJA", "roadrunner", "hello 1.0.0", "t-read");
    let reply = ingress.slack(&slack_headers(&form, now), &form, now).await;
    assert!(
        reply.body["text"].as_str().unwrap().starts_with("Queued"),
        "{reply:?}"
    );

    let queued = store.jobs(None).await.unwrap()[0].job.id.clone();
    // Chat tells the same story, without the reply address either.
    let form = slack_form(
        "U2CERLKJA",
        "roadrunner",
        &format!("show {queued}"),
        "t-show",
    );
    let reply = ingress.slack(&slack_headers(&form, now), &form, now).await;
    let text = reply.body["text"].as_str().unwrap();
    assert!(
        text.starts_with(&format!("Job {queued} — hello 1.0.0 to production: queued")),
        "{text}"
    );
    assert!(
        text.contains("Asked by @roadrunner (U2CERLKJA)") && !text.contains("hooks.slack.com"),
        "{text}"
    );
    let served = Served::start_with_token(ingress, store.clone(), Some("s3cret".into())).await;
    let http = reqwest::Client::new();
    for path in ["/api/deploys".to_string(), format!("/api/jobs/{queued}")] {
        let get = |token: Option<&'static str>| {
            let mut req = http.get(format!("{}{path}", served.base));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            req.send()
        };
        assert_eq!(get(None).await.unwrap().status(), 401, "{path}");
        assert_eq!(get(Some("wrong")).await.unwrap().status(), 401, "{path}");
        let ok = get(Some("s3cret")).await.unwrap();
        assert_eq!(ok.status(), 200, "{path}");
        let body = ok.text().await.unwrap();
        assert!(body.contains("U2CERLKJA"), "{body}");
        assert!(
            !body.contains("response_url") && !body.contains("hooks.slack.com"),
            "{body}"
        );
    }
    // The story the API tells is the one `shipit show --json` prints.
    let api: serde_json::Value = http
        .get(format!("{}/api/jobs/{queued}", served.base))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (code, shown, _) = shipit(&[
        "--config",
        dir.path().join("shipit.toml").to_str().unwrap(),
        "show",
        queued.as_str(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(api, shown);
    assert_eq!(api["status"], "queued");
    let missing = http
        .get(format!("{}/api/jobs/0123456789abcdef0123", served.base))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    served.stop().await;

    // Listening beyond loopback without a token: nobody reads.
    let (ingress, store) = local::ingress(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(shipit::run::server::serve(
        std::sync::Arc::new(ingress),
        store,
        listener,
        tokio::sync::watch::channel(shipit::drive::worker::WorkerHealth::Starting).1,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    let refused = http
        .get(format!("http://127.0.0.1:{port}/api/deploys"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// `shipit ingest events/*.json`, as the README has it: every sample is answered, those of
/// other functions are named, and one bad file does not stop the rest.
#[test]
fn ingest_replays_every_sample_and_names_the_other_functions_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("shipit.toml");
    let example = std::fs::read_to_string("examples/local/shipit.toml").unwrap();
    std::fs::write(&config, example).unwrap();
    let broken = dir.path().join("broken.json");
    std::fs::write(&broken, "{not json").unwrap();
    let mut files: Vec<String> = std::fs::read_dir("events")
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .filter(|p| p.ends_with(".json"))
        .collect();
    files.sort();
    let config = config.display().to_string();
    let mut args = vec![
        "ingest",
        "--config",
        config.as_str(),
        broken.to_str().unwrap(),
    ];
    args.extend(files.iter().map(String::as_str));
    let out = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .args(&args)
        .env("SHIPIT_GITHUB_SECRET", crate::helpers::GITHUB_SECRET)
        .env("SHIPIT_SLACK_SIGNING_SECRET", crate::helpers::SLACK_SECRET)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "the broken file fails the run: {stderr}"
    );
    assert!(stderr.contains("broken.json: not JSON"), "{stderr}");
    for file in &files {
        assert!(
            stdout.contains(&format!("{file}: ")),
            "{file} unanswered:\n{stdout}"
        );
    }
    assert!(stdout.contains("it is deploy-dispatch's"), "{stdout}");
    assert!(stdout.contains("it is node-joined's"), "{stdout}");
    assert!(stdout.contains("it is deploy-step's"), "{stdout}");
    assert!(stdout.contains("queued hello/production 1.0.0"), "{stdout}");
}

/// `/deploy … --dry-run` over `serve`: the plan goes to the asker alone, for a deploy and
/// for a rollback, and nothing is queued (`/api/deploys` stays empty).
#[tokio::test]
async fn a_chat_dry_run_answers_the_plan_and_queues_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalApp {
        nodes: vec!["n1", "n2", "n3"],
        deployers: r#""U2CERLKJA""#,
        tables: "[apps.hello.rollout]\nbatches = [1, 2]\n".into(),
        ..LocalApp::default()
    }
    .write(dir.path());
    let (ingress, store) = local::ingress(config).await.unwrap();
    for v in ["1.0.0", "1.1.0"] {
        let job = cli_job("ann", v, v);
        shipit::deploy::ports::Ledger::record(
            &store,
            &HistoryEntry::new(job, Utc::now()),
            shipit::deploy::ports::Written::default(),
        )
        .await
        .unwrap();
    }
    let served = Served::start(ingress, store.clone()).await;
    let http = reqwest::Client::new();
    let ask = |text: &str| {
        let form = slack_form("U2CERLKJA", "roadrunner", text, "t-dry");
        let mut req = http
            .post(format!("{}/hooks/slack", served.base))
            .body(form.clone());
        for (k, v) in &slack_headers(&form, Utc::now()) {
            req = req.header(k.as_str(), v.to_str().unwrap());
        }
        async move {
            let reply: serde_json::Value = req.send().await.unwrap().json().await.unwrap();
            assert_eq!(reply["response_type"], "ephemeral", "{reply}");
            reply["text"].as_str().unwrap().to_string()
        }
    };
    let plan = ask("hello 1.2.0 --dry-run").await;
    for line in [
        "Dry run: nothing was queued.",
        "hello 1.2.0 to production, asked by @roadrunner (U2CERLKJA); asked for by name",
        "Live: 1.1.0",
        "Lock: free",
        "Nodes, in restart order: n1, n2, n3",
        "Batches: [n1] [n2, n3]",
        "then restart in batches of [1, 2] (the last repeats)",
    ] {
        assert!(plan.contains(line), "{line:?} not in:\n{plan}");
    }
    let plan = ask("rollback hello --dry-run").await;
    assert!(plan.contains("hello 1.0.0 to production"), "{plan}");
    assert!(plan.contains("a rollback: job "), "{plan}");
    let refused = ask("status --dry-run").await;
    assert!(refused.starts_with("--dry-run goes only with"), "{refused}");

    let listed: serde_json::Value = http
        .get(format!("{}/api/deploys", served.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["jobs"], serde_json::json!([]), "nothing queued");
    served.stop().await;
}

/// `shipit history hello | head -1`: the reader goes away, and shipit ends quietly (by
/// SIGPIPE, as Unix tools do), with no panic on standard error.
#[tokio::test]
async fn a_report_whose_reader_went_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalApp::default().write(dir.path());
    let store = shipit::local::store::Store::open(&config.server.state).unwrap();
    for v in ["1.0.0", "1.1.0"] {
        shipit::deploy::ports::Ledger::record(
            &store,
            &HistoryEntry::new(cli_job("ann", v, v), Utc::now()),
            shipit::deploy::ports::Written::default(),
        )
        .await
        .unwrap();
    }
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .arg("--config")
        .arg(dir.path().join("shipit.toml"))
        .args(["history", "hello"])
        .stdout(writer)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "{stderr}");
    // 13: SIGPIPE on Linux.
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(13)
    );
}

/// `serve`'s log, written to a file as a service manager would: plain text with no
/// colour codes by default, one JSON object a line with `--log-format json`.
#[test]
fn serve_logs_to_a_file_without_colour_codes_or_as_json() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    LocalApp::default().write(dir.path());
    for format in ["text", "json"] {
        let port = crate::example::free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_shipit"))
            .arg("--config")
            .arg(dir.path().join("shipit.toml"))
            .args(["--log-format", format, "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let line = loop {
            let line = lines.next().expect("serve logged nothing").unwrap();
            if line.contains("shipit serving") {
                break line;
            }
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!line.contains('\u{1b}'), "{format}: {line:?}");
        if format == "json" {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(v["fields"]["message"], "shipit serving", "{v}");
        }
    }
}

/// A job queued by mistake is taken off the queue by id (or its start) and never runs;
/// one that is no longer queued is not, and says why. With no worker running, `deploy`
/// says the job waits for one.
#[tokio::test]
async fn a_queued_job_is_cancelled_and_never_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalApp::default().write(dir.path());
    let path = dir.path().join("shipit.toml");
    let cli = |args: &[&str]| {
        let mut all = vec!["--config", path.to_str().unwrap()];
        all.extend_from_slice(args);
        shipit(&all)
    };
    // Asked from where no login shell set who is asking (a service, a container).
    let out = Command::new(env!("CARGO_BIN_EXE_shipit"))
        .args([
            "--config",
            path.to_str().unwrap(),
            "deploy",
            "hello",
            "1.0.0",
        ])
        .env_remove("SHIPIT_CONFIG")
        .env_remove("USER")
        .env_remove("LOGNAME")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains("no `shipit serve` runs jobs from this store"),
        "{out}"
    );
    let store = shipit::local::store::Store::open(&config.server.state).unwrap();
    let queued = store.jobs(None).await.unwrap().remove(0);
    let account = Command::new("id").arg("-un").output().unwrap();
    let account = String::from_utf8(account.stdout).unwrap();
    assert_eq!(
        queued.job.requested_by,
        account.trim(),
        "the account that asked, not `cli`"
    );
    let job = queued.job.id.clone();
    let (code, out, err) = cli(&["cancel", &job.as_str()[..7]]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("cancelled job {job}")), "{out}");
    let q = store.job(&job).await.unwrap().unwrap();
    assert_eq!(q.status, JobStatus::Cancelled);
    assert!(
        q.reason.as_deref().unwrap().starts_with("cancelled by "),
        "{q:?}"
    );
    assert!(q.ended_at.is_some());
    assert!(
        store.claim_next(Utc::now()).await.unwrap().is_none(),
        "a cancelled job is never claimed"
    );
    let (code, _, err) = cli(&["cancel", job.as_str()]);
    assert_ne!(code, 0);
    assert!(err.contains("is not queued: it is cancelled"), "{err}");
    let (code, _, err) = cli(&["cancel", "fff0000"]);
    assert_ne!(code, 0);
    assert!(err.contains("no job \"fff0000\""), "{err}");
}

/// A signing secret whose variable is unset stops `serve` at start, naming the file and
/// the key (it said only "environment variable … is not set").
#[test]
fn serve_names_the_file_and_key_of_a_secret_it_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    LocalApp::default().write(dir.path());
    let path = dir.path().join("shipit.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let at = text.find("webhook_secret = ").unwrap();
    let end = at + text[at..].find('\n').unwrap();
    let text = format!(
        "{}webhook_secret = \"env:SHIPIT_TEST_UNSET_GITHUB_SECRET\"{}",
        &text[..at],
        &text[end..]
    );
    std::fs::write(&path, text).unwrap();
    let (code, _, stderr) = shipit(&[
        "--config",
        path.to_str().unwrap(),
        "serve",
        "--listen",
        "127.0.0.1:0",
    ]);
    assert_eq!(code, 1, "{stderr}");
    let want = format!(
        "{}: github.webhook_secret: environment variable SHIPIT_TEST_UNSET_GITHUB_SECRET is not set",
        path.display()
    );
    assert!(stderr.contains(&want), "{stderr}");
}

/// Every `src` and `href` of a page: what a browser would load or follow.
fn links(html: &str) -> Vec<String> {
    let mut out = vec![];
    for attr in ["src=\"", "href=\""] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            out.push(rest[..rest.find('"').unwrap()].to_string());
        }
    }
    out
}

/// The page at `/`: environments, the jobs with why each ended, each job's story with its
/// timeline at `/jobs/ID`, live updates over `/events`; nothing loaded from elsewhere; the
/// API's access rule.
#[tokio::test]
async fn the_page_shows_the_jobs_and_their_stories_and_says_when_they_change() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalApp::default().write(dir.path());
    let (ingress, store) = local::ingress(config).await.unwrap();
    // A job that ran and failed on n1's restart, as the worker keeps it.
    let job = cli_job("ann", "1.1.0", "page");
    shipit::deploy::ports::JobQueue::enqueue(&store, std::slice::from_ref(&job))
        .await
        .unwrap();
    let now = Utc::now();
    store.claim_next(now).await.unwrap().unwrap();
    let key = format!("{}:restart:1", job.id);
    store.command_started(&key, "n1", now).await.unwrap();
    let failed = shipit::deploy::command::NodeResult::Failed {
        exit_code: Some(1),
        output: "shipit: unhealthy after 3 checks in 2 s".into(),
    };
    store
        .command_finished(&key, "n1", &failed, now + chrono::Duration::seconds(2))
        .await
        .unwrap();
    let outcome = shipit::deploy::engine::Outcome::failed("n1 failed its health check <b>");
    store.finish(&job.id, &outcome, now).await.unwrap();

    let served = Served::start_with_token(ingress, store.clone(), Some("s3cret".into())).await;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        http.get(format!("{}{path}", served.base))
            .bearer_auth("s3cret")
            .send()
    };
    for path in ["/", "/events", &format!("/jobs/{}", job.id)] {
        let refused = http
            .get(format!("{}{path}", served.base))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{path}");
    }
    let home = get("/").await.unwrap().text().await.unwrap();
    assert!(home.contains("<h3>hello/production</h3>"), "{home}");
    assert!(
        home.contains(&format!("href=\"/jobs/{}\"", job.id)),
        "{home}"
    );
    // Escaped, not markup.
    assert!(
        home.contains("n1 failed its health check &lt;b&gt;"),
        "{home}"
    );
    let page = get(&format!("/jobs/{}", job.id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<svg class=\"timeline\""), "{page}");
    assert!(
        page.contains("shipit: unhealthy after 3 checks in 2 s"),
        "{page}"
    );
    for html in [&home, &page] {
        for link in links(html) {
            assert!(
                link.starts_with('/') && !link.starts_with("//"),
                "{link} is not this server's"
            );
        }
    }
    let fragment = http
        .get(format!("{}/", served.base))
        .bearer_auth("s3cret")
        .header("x-shipit-fragment", "1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(fragment.starts_with("<section>"), "{fragment}");

    // Live: a first `changed` for the state the page was rendered from, another once a
    // job is queued.
    let mut events = get("/events").await.unwrap();
    assert_eq!(
        events.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut seen = String::new();
    let mut next_changed = async || loop {
        let chunk = events.chunk().await.unwrap().expect("the stream went on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(at) = seen.find("event: changed") {
            seen.drain(..at + "event: changed".len());
            return;
        }
    };
    next_changed().await;
    let second = cli_job("ann", "1.2.0", "page-2");
    shipit::deploy::ports::JobQueue::enqueue(&store, &[second])
        .await
        .unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), next_changed())
        .await
        .expect("a change was told");
    // A page left open does not hold the server's shutdown up: its stream ends.
    tokio::time::timeout(std::time::Duration::from_secs(10), served.stop())
        .await
        .expect("serve stops with a page's event stream open");
    assert!(matches!(events.chunk().await, Ok(None) | Err(_)));
}

/// `/deploy cancel JOB`: who asked for a queued job, or who may deploy there, takes it off
/// the queue; it never runs, and once it is no longer queued nothing changes.
#[tokio::test]
async fn chat_takes_a_queued_job_off_the_queue_for_who_may() {
    let dir = tempfile::tempdir().unwrap();
    let config = LocalApp {
        deployers: r#""U2CERLKJA", "U0BOB""#,
        ..LocalApp::default()
    }
    .write(dir.path());
    let (ingress, store) = local::ingress(config).await.unwrap();
    let say = |user: &'static str, text: String| {
        let ingress = &ingress;
        async move {
            let now = Utc::now();
            let form = slack_form(user, "someone", &text, &format!("t-{user}-{text}"));
            let reply = ingress.slack(&slack_headers(&form, now), &form, now).await;
            reply.body["text"].as_str().unwrap().to_string()
        }
    };
    let text = say("U2CERLKJA", "hello 1.0.0".into()).await;
    assert!(text.starts_with("Queued"), "{text}");
    let id = store.jobs(None).await.unwrap()[0].job.id.clone();

    let text = say("U0STRANGER", format!("cancel {id}")).await;
    assert!(text.contains("may not cancel job"), "{text}");
    assert_eq!(store.jobs(None).await.unwrap()[0].status, JobStatus::Queued);

    let text = say("U0BOB", format!("cancel {id}")).await;
    assert!(
        text.starts_with(&format!("Cancelled job {id} (hello 1.0.0 to production)")),
        "{text}"
    );
    let q = store.jobs(None).await.unwrap().remove(0);
    assert_eq!(q.status, JobStatus::Cancelled);
    assert!(q.reason.unwrap().contains("cancelled by"));
    let text = say("U2CERLKJA", format!("cancel {id}")).await;
    assert!(text.contains("is not queued: it is cancelled"), "{text}");
    let text = say("U2CERLKJA", "cancel 12345".into()).await;
    assert!(text.contains("is not a job id"), "{text}");
}

/// `first` claimed, then saved as its last step left it: waiting to start (`why`),
/// without its lock.
async fn claimed_waiting(
    store: &shipit::local::store::Store,
    first: &shipit::deploy::job::DeployJob,
    why: &str,
) {
    use shipit::deploy::ports::JobQueue;
    let now = Utc::now();
    store.enqueue(std::slice::from_ref(first)).await.unwrap();
    let claimed = store.claim_next(now).await.unwrap().unwrap();
    assert_eq!(claimed.job.id, first.id);
    let mut d = shipit::deploy::engine::Deploy::new(first.clone(), Default::default());
    d.closed = Some(why.into());
    store.save_step(&d, &[], now).await.unwrap();
}

/// Who passes a running job that waits to start, on one machine: an upload queued behind
/// an upload its calendar holds back stays queued (to go out in order, the newest
/// superseding), but passes a promotion that waits for its time.
#[tokio::test]
async fn uploads_wait_behind_a_held_upload_but_pass_a_waiting_promotion() {
    use shipit::deploy::job::{DeployJob, Source};
    use shipit::deploy::ports::JobQueue;
    let now = Utc::now();
    let job = |version: &str, source: Source| {
        let version = shipit::deploy::version::Version::parse(version).unwrap();
        DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            version,
            source,
            now,
        )
    };
    let upload = |version: &str| {
        let location = format!("uploads/hello_app-{version}-py3-none-any.whl");
        job(version, Source::Upload { location })
    };
    let dir = tempfile::tempdir().unwrap();
    let (_, store) = LocalApp::default().open(dir.path());
    claimed_waiting(&store, &upload("1.1.0"), "frozen (x) until …").await;
    store.enqueue(&[upload("1.2.0")]).await.unwrap();
    assert!(
        store.claim_next(now).await.unwrap().is_none(),
        "an upload passed a held upload"
    );

    let dir = tempfile::tempdir().unwrap();
    let (_, store) = LocalApp::default().open(dir.path());
    let source = Source::Promotion {
        from_env: "staging".into(),
        from_job: upload("1.3.0").id,
        due_at: now + chrono::Duration::hours(1),
    };
    claimed_waiting(&store, &job("1.3.0", source), "promoted from staging at …").await;
    let later = upload("1.4.0");
    store.enqueue(std::slice::from_ref(&later)).await.unwrap();
    let passed = store.claim_next(now).await.unwrap().map(|q| q.job.id);
    assert_eq!(
        passed,
        Some(later.id),
        "the upload waited for a promotion's time"
    );
}
