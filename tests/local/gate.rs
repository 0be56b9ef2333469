//! The gate against a local HTTP server standing in for the GitHub API: real deploys (the
//! local worker, nodes as local processes) go out only for tags merged to the deploy
//! branch with green required checks, unless someone forces them from chat.

use std::path::Path;
use std::sync::Arc;

use crate::helpers::*;
use chrono::Utc;
use serde_json::{json, Value};
use shipit::config::Config;
use shipit::deploy::engine::{Notice, Outcome};
use shipit::deploy::job::JobId;
use shipit::deploy::ports::Ledger;
use shipit::deploy::status::JobStatus;
use shipit::local::store::Store;
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";
const REPO: &str = "/repos/acme/hello";

/// App `hello` on n1 and n2, gated on checks `ci/test` (a commit status) and `build` (a
/// check run); installing writes the version to the node's directory.
fn setup(dir: &Path, github: &MockServer, wait_seconds: u64) -> (Arc<Config>, Store) {
    let gate = format!(
        r#"
[apps.hello.gate]
checks = ["ci/test", "build"]
wait_seconds = {wait_seconds}
token = "ghp-gate"
api_url = "{api}"
"#,
        api = github.uri(),
    );
    LocalApp {
        nodes: vec!["n1", "n2"],
        install: "printf %s {version} > version",
        deployers: r#""*""#,
        forcers: r#""U1""#,
        tables: gate,
        ..LocalApp::default()
    }
    .open(dir)
}

/// GitHub's answer to `GET {REPO}{p}`, checking the gate's token and headers.
async fn answer(github: &MockServer, p: &str, body: Value) {
    Mock::given(method("GET"))
        .and(path(format!("{REPO}{p}")))
        .and(header("authorization", "Bearer ghp-gate"))
        .and(header("accept", "application/vnd.github+json"))
        .respond_with(ResponseTemplate::new(200).set_body_json(body))
        .mount(github)
        .await;
}

/// Tag `tag` points at SHA, which is `compare` ("behind": on main) against main.
async fn repo(github: &MockServer, tag: &str, compare: &str) {
    answer(github, &format!("/commits/{tag}"), json!({"sha": SHA})).await;
    answer(github, "", json!({"default_branch": "main"})).await;
    answer(
        github,
        &format!("/compare/main...{SHA}"),
        json!({"status": compare}),
    )
    .await;
}

async fn checks(github: &MockServer, status: &str, run: (&str, Option<&str>)) {
    answer(
        github,
        &format!("/commits/{SHA}/status"),
        json!({"state": status, "statuses": [{"context": "ci/test", "state": status}]}),
    )
    .await;
    let (run_status, conclusion) = run;
    answer(
        github,
        &format!("/commits/{SHA}/check-runs"),
        json!({"total_count": 1, "check_runs": [
            {"id": 11, "name": "build", "status": run_status, "conclusion": conclusion}]}),
    )
    .await;
}

async fn tag_deploy(config: &Arc<Config>, tag: &str) -> JobId {
    let (ingress, _) = shipit::run::local::ingress((**config).clone())
        .await
        .unwrap();
    let body = tag_push("acme/hello", tag);
    let reply = ingress
        .github(&github_headers("push", tag, &body), &body, Utc::now())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    serde_json::from_value(reply.body["jobs"][0]["job"].clone()).unwrap()
}

/// Runs the job to its end: its status and how it ended.
async fn run(config: &Arc<Config>, store: &Store, job: &JobId) -> (JobStatus, Outcome) {
    let mut outcome = None;
    let status = shipit::cli::wait(config.clone(), store, job, |n, _| {
        if let Notice::Finished { outcome: o } = n {
            outcome = Some(o.clone());
        }
    })
    .await
    .unwrap();
    (status, outcome.unwrap())
}

fn live_on(dir: &Path) -> Vec<String> {
    ["n1", "n2"]
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n).join("version")).unwrap_or_default())
        .collect()
}

#[tokio::test]
async fn a_merged_tag_with_green_checks_deploys() {
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 0);
    repo(&github, "v1.0.0", "behind").await;
    checks(&github, "success", ("completed", Some("success"))).await;

    let job = tag_deploy(&config, "v1.0.0").await;
    let (status, outcome) = run(&config, &store, &job).await;
    assert_eq!(status, JobStatus::Succeeded, "{outcome:?}");
    assert_eq!(live_on(dir.path()), ["1.0.0", "1.0.0"]);
}

#[tokio::test]
async fn a_tag_on_a_side_branch_is_skipped_with_the_reason() {
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 0);
    repo(&github, "v1.0.0", "diverged").await;
    checks(&github, "success", ("completed", Some("success"))).await;

    let job = tag_deploy(&config, "v1.0.0").await;
    let (status, outcome) = run(&config, &store, &job).await;
    assert_eq!(status, JobStatus::Skipped);
    let Outcome::Skipped { reason } = outcome else {
        panic!("{outcome:?}")
    };
    assert_eq!(
        reason,
        "tag v1.0.0 (6113728) is not on main: merge it first, or deploy it with --force"
    );
    assert_eq!(live_on(dir.path()), ["", ""], "nothing installed");
    assert!(store
        .history("hello", "production", 5)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_red_required_check_skips_and_a_pending_one_skips_without_a_wait() {
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 0);
    repo(&github, "v1.0.0", "identical").await;
    checks(&github, "success", ("completed", Some("failure"))).await;
    let job = tag_deploy(&config, "v1.0.0").await;
    let (status, outcome) = run(&config, &store, &job).await;
    assert_eq!(status, JobStatus::Skipped);
    assert_eq!(
        outcome,
        Outcome::Skipped {
            reason: "required check build ended failure on 6113728 (tag v1.0.0)".into()
        }
    );

    github.reset().await;
    repo(&github, "v1.0.1", "behind").await;
    checks(&github, "pending", ("in_progress", None)).await;
    let job = tag_deploy(&config, "v1.0.1").await;
    let (status, outcome) = run(&config, &store, &job).await;
    assert_eq!(status, JobStatus::Skipped);
    assert_eq!(
        outcome,
        Outcome::Skipped {
            reason:
                "required check ci/test is pending, build is in progress on 6113728 (tag v1.0.1)"
                    .into()
        }
    );
    assert_eq!(live_on(dir.path()), ["", ""]);
}

#[tokio::test]
async fn pending_checks_are_waited_for_when_configured() {
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 60);
    repo(&github, "v1.0.0", "behind").await;
    // Pending on the first look; green from the second (the engine looks again after 5 s).
    Mock::given(method("GET"))
        .and(path(format!("{REPO}/commits/{SHA}/check-runs")))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"check_runs": [
            {"id": 11, "name": "build", "status": "queued", "conclusion": null}]})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&github)
        .await;
    checks(&github, "success", ("completed", Some("success"))).await;

    let job = tag_deploy(&config, "v1.0.0").await;
    let mut waiting = vec![];
    let status = shipit::cli::wait(config.clone(), &store, &job, |n, _| {
        if let Notice::WaitingForChecks { reason, .. } = n {
            waiting.push(reason.clone());
        }
    })
    .await
    .unwrap();
    assert_eq!(status, JobStatus::Succeeded);
    assert_eq!(
        waiting,
        ["required check build is queued on 6113728 (tag v1.0.0)"]
    );
    let looks = github
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path().ends_with("/check-runs"))
        .count();
    assert_eq!(looks, 2);
}

#[tokio::test]
async fn deploy_force_from_chat_goes_past_the_gate_and_is_recorded() {
    let github = MockServer::start().await;
    let chat = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 0);
    let config = Arc::new(Config {
        slack_response_url_prefix: format!("{}/commands/", chat.uri()),
        ..(*config).clone()
    });
    let response_url = format!("{}/commands/T1/1/x", chat.uri());
    Mock::given(method("POST"))
        .and(path("/commands/T1/1/x"))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&chat)
        .await;
    repo(&github, "v2.0.0", "ahead").await;
    checks(&github, "failure", ("completed", Some("failure"))).await;
    let (ingress, _) = shipit::run::local::ingress((*config).clone())
        .await
        .unwrap();
    let slash = |text: &str, trigger: &str| {
        let body = slack_form_replying_to(&response_url, "U1", "ann", text, trigger);
        let ingress = &ingress;
        async move {
            let now = Utc::now();
            ingress.slack(&slack_headers(&body, now), &body, now).await
        }
    };

    // Without --force the gate decides: skipped.
    slash("hello 2.0.0", "t-1").await;
    let job = store.jobs(None).await.unwrap().pop().unwrap().job.id;
    assert_eq!(run(&config, &store, &job).await.0, JobStatus::Skipped);
    let asked = github.received_requests().await.unwrap().len();
    assert!(asked > 0);

    let reply = slash("hello 2.0.0 --force", "t-2").await;
    let text = reply.body["text"].as_str().unwrap();
    assert!(text.contains("forced past the gate by @ann (U1)"), "{text}");
    let job = store.jobs(None).await.unwrap().pop().unwrap().job.id;
    assert_eq!(run(&config, &store, &job).await.0, JobStatus::Succeeded);
    assert_eq!(live_on(dir.path()), ["2.0.0", "2.0.0"]);
    assert_eq!(
        github.received_requests().await.unwrap().len(),
        asked,
        "a forced job does not ask GitHub"
    );
    let history = store.history("hello", "production", 5).await.unwrap();
    assert_eq!(history[0].job.id, job);
    assert_eq!(history[0].job.forced_by.as_deref(), Some("@ann (U1)"));
    // Chat hears both ends: why the first was skipped, and who forced the second.
    let replies: Vec<Value> = chat
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.body_json().unwrap())
        .collect();
    assert_eq!(replies.len(), 2, "{replies:#?}");
    let text = replies[0]["text"].as_str().unwrap();
    assert!(
        text.ends_with("skipped: tag v2.0.0 (6113728) is not on main: merge it first, or deploy it with --force"),
        "{text}"
    );
    let text = replies[1]["text"].as_str().unwrap();
    assert!(
        text.contains("2.0.0 (first deploy) on production: deployed"),
        "{text}"
    );
    assert!(
        replies[1]["blocks"]
            .to_string()
            .contains("forced past the gate by @ann (U1)"),
        "{}",
        replies[1]["blocks"]
    );

    // --force with anything but a deploy is refused, not ignored.
    let reply = slash("rollback hello --force", "t-3").await;
    let text = reply.body["text"].as_str().unwrap();
    assert!(text.starts_with("--force goes only with"), "{text}");
}

/// Before: an older tag was skipped as "superseded" by any newer one queued behind it,
/// even one whose checks were red and which the gate then refused: nothing went out.
#[tokio::test]
async fn only_a_newer_version_the_gate_lets_through_supersedes_an_older_tag() {
    const RED: &str = "0000000000000000000000000000000000000bad";
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 0);
    repo(&github, "v1.0.0", "behind").await;
    checks(&github, "success", ("completed", Some("success"))).await;
    answer(&github, "/commits/v1.1.0", json!({"sha": RED})).await;
    answer(
        &github,
        &format!("/compare/main...{RED}"),
        json!({"status": "behind"}),
    )
    .await;
    answer(
        &github,
        &format!("/commits/{RED}/status"),
        json!({"state": "failure", "statuses": [{"context": "ci/test", "state": "failure"}]}),
    )
    .await;
    answer(
        &github,
        &format!("/commits/{RED}/check-runs"),
        json!({"total_count": 1, "check_runs": [
            {"id": 12, "name": "build", "status": "completed", "conclusion": "failure"}]}),
    )
    .await;

    let older = tag_deploy(&config, "v1.0.0").await;
    let newer = tag_deploy(&config, "v1.1.0").await;
    let (status, outcome) = run(&config, &store, &older).await;
    assert_eq!(status, JobStatus::Succeeded, "{outcome:?}");
    let (status, outcome) = run(&config, &store, &newer).await;
    assert_eq!(status, JobStatus::Skipped, "{outcome:?}");
    assert_eq!(live_on(dir.path()), ["1.0.0", "1.0.0"]);
}

/// Before: the gate asked about a tag rebuilt from the normalized version (`v1.0.0rc1`),
/// not the tag that was pushed (`v1.0.0-RC1`), and skipped a good release.
#[tokio::test]
async fn the_gate_asks_about_the_tag_that_was_pushed() {
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 0);
    repo(&github, "v1.0.0-RC1", "behind").await;
    checks(&github, "success", ("completed", Some("success"))).await;

    let job = tag_deploy(&config, "v1.0.0-RC1").await;
    let (status, outcome) = run(&config, &store, &job).await;
    assert_eq!(status, JobStatus::Succeeded, "{outcome:?}");
    assert_eq!(live_on(dir.path()), ["1.0.0rc1", "1.0.0rc1"]);
}

/// GitHub's answers are outside input too: a commit id that is not hex (here with a
/// two-byte character across the 7-byte short form) is refused, not a panic.
#[tokio::test]
async fn a_commit_id_that_is_not_hex_is_refused_not_a_panic() {
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 0);
    answer(&github, "/commits/v1.0.0", json!({"sha": "abcdefé0"})).await;
    answer(&github, "", json!({"default_branch": "main"})).await;

    let job = tag_deploy(&config, "v1.0.0").await;
    let (status, outcome) = run(&config, &store, &job).await;
    assert_eq!(status, JobStatus::Skipped, "{outcome:?}");
    assert_eq!(live_on(dir.path()), ["", ""], "nothing installed");
}

/// A dry run asks the gate for real, and says what it answered.
#[tokio::test]
async fn a_dry_run_asks_the_gate_and_says_its_answer() {
    let github = MockServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &github, 0);
    repo(&github, "v1.0.0", "diverged").await;
    checks(&github, "success", ("completed", Some("success"))).await;
    let job = shipit::cli::deploy_job(&config, "hello", "1.0.0", None, false).unwrap();
    let plan = shipit::cli::plan::plan(&config, &store, &job)
        .await
        .unwrap()
        .lines()
        .join("\n");
    assert!(
        plan.contains(
            "Gate: refuses, the job would be skipped: tag v1.0.0 (6113728) is not on main"
        ),
        "{plan}"
    );
    let forced = job.forced();
    let plan = shipit::cli::plan::plan(&config, &store, &forced)
        .await
        .unwrap()
        .lines()
        .join("\n");
    assert!(plan.contains("Gate: not asked (forced by"), "{plan}");
    assert!(store.jobs(None).await.unwrap().is_empty(), "nothing queued");
}
