//! Notifications from real deploys (the local worker, nodes as local processes) to local
//! HTTP servers standing in for Slack, New Relic, Datadog and GitHub: each checks the
//! method, path, auth header and JSON body it is sent.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::helpers::*;
use chrono::Utc;
use serde_json::{json, Value};
use shipit::config::Config;
use shipit::deploy::job::JobId;
use shipit::deploy::status::JobStatus;
use shipit::local::store::Store;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TS: &str = "1700000000.000100";
const SHA: &str = "6113728f27ae82c7b1a177c8d03f9e96e0adf246";

struct Apis {
    slack: MockServer,
    newrelic: MockServer,
    datadog: MockServer,
    github: MockServer,
}

impl Apis {
    async fn start() -> Apis {
        Apis {
            slack: MockServer::start().await,
            newrelic: MockServer::start().await,
            datadog: MockServer::start().await,
            github: MockServer::start().await,
        }
    }
}

/// App `hello` on nodes n1..n3. Installing writes the version to the node's directory;
/// version 2.0.0 fails its health check on n2 with a line on stderr.
fn setup(dir: &Path, apis: &Apis) -> (Arc<Config>, Store) {
    setup_with(dir, apis, "")
}

/// The same, with more keys for the production environment.
fn setup_with(dir: &Path, apis: &Apis, env: &str) -> (Arc<Config>, Store) {
    let tables = format!(
        r##"
[apps.hello.rollout]
health_timeout_seconds = 1
health_interval_seconds = 1
[apps.hello.notify]
slack = {{ channel = "#deploys", token = "xoxb-test", api_url = "{slack}/api" }}
newrelic = {{ entity_guid = "MXxBUE18", api_key = "NRAK-test", endpoint = "{nr}/graphql" }}
datadog = {{ api_key = "dd-test", site = "{dd}", dora = true }}
github = {{ token = "ghp-test", api_url = "{gh}" }}
"##,
        slack = apis.slack.uri(),
        nr = apis.newrelic.uri(),
        dd = apis.datadog.uri(),
        gh = apis.github.uri(),
    );
    LocalApp {
        nodes: vec!["n1", "n2", "n3"],
        install: "printf %s {version} > version",
        health: concat!(
            r#"if [ {node} = n2 ] && [ "$(cat version)" = 2.0.0 ]; then "#,
            r#"echo 'n2: GET /healthz answered 500' >&2; exit 1; fi"#
        ),
        deployers: r#""*""#,
        slack: format!(r#"response_url_prefix = "{}/commands/""#, apis.slack.uri()),
        env: env.to_string(),
        tables,
        ..LocalApp::default()
    }
    .open(dir)
}

async fn slack_ok(apis: &Apis) {
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .and(header("authorization", "Bearer xoxb-test"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"ok": true, "channel": "C0DEPLOYS", "ts": TS})),
        )
        .mount(&apis.slack)
        .await;
    Mock::given(method("POST"))
        .and(path("/api/chat.update"))
        .and(header("authorization", "Bearer xoxb-test"))
        .and(body_partial_json(json!({"channel": "C0DEPLOYS", "ts": TS})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true})))
        .mount(&apis.slack)
        .await;
}

async fn apm_ok(apis: &Apis) {
    Mock::given(method("POST"))
        .and(path("/graphql"))
        .and(header("api-key", "NRAK-test"))
        .respond_with(ResponseTemplate::new(200).set_body_json(
            json!({"data": {"changeTrackingCreateDeployment": {"deploymentId": "d-1", "entityGuid": "MXxBUE18"}}}),
        ))
        .mount(&apis.newrelic)
        .await;
    for p in [
        "/api/v1/events",
        "/api/v2/dora/deployment",
        "/api/v2/series",
    ] {
        Mock::given(method("POST"))
            .and(path(p))
            .and(header("dd-api-key", "dd-test"))
            .respond_with(ResponseTemplate::new(202).set_body_json(json!({"status": "ok"})))
            .mount(&apis.datadog)
            .await;
    }
}

/// The bodies posted to `p`, each checked as the service would check it: a request with
/// the wrong key (answered 404 by the stand-in, which the notifier shrugs off as
/// permanent) or an update of another message fails the test here.
async fn requests(server: &MockServer, p: &str) -> Vec<Value> {
    let key = match p {
        "/api/chat.postMessage" | "/api/chat.update" => Some(("authorization", "Bearer xoxb-test")),
        "/graphql" => Some(("api-key", "NRAK-test")),
        "/api/v1/events" | "/api/v2/dora/deployment" | "/api/v2/series" => {
            Some(("dd-api-key", "dd-test"))
        }
        // A response_url is its own credential.
        _ => None,
    };
    let mut bodies = vec![];
    for r in server.received_requests().await.unwrap() {
        if r.url.path() != p {
            continue;
        }
        assert_eq!(r.method.as_str(), "POST", "{p}");
        if let Some((name, value)) = key {
            let sent = r.headers.get(name).and_then(|v| v.to_str().ok());
            assert_eq!(sent, Some(value), "{p}: {name}");
        }
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        if p == "/api/chat.update" {
            assert_eq!(
                (&body["channel"], &body["ts"]),
                (&json!("C0DEPLOYS"), &json!(TS))
            );
        }
        bodies.push(body);
    }
    bodies
}

async fn run(config: &Arc<Config>, store: &Store, job: &JobId) -> JobStatus {
    shipit::cli::wait(config.clone(), store, job, |_, _| {})
        .await
        .unwrap()
}

async fn cli_deploy(config: &Arc<Config>, store: &Store, version: &str) -> JobStatus {
    let job = shipit::cli::deploy(config, store, "hello", version, None, false)
        .await
        .unwrap();
    run(config, store, &job.id).await
}

#[tokio::test]
async fn a_tag_deploy_posts_one_slack_message_updates_it_and_marks_apm_and_github() {
    let apis = Apis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &apis);
    slack_ok(&apis).await;
    apm_ok(&apis).await;
    let repo = "/repos/acme/hello";
    Mock::given(method("POST"))
        .and(path(format!("{repo}/deployments")))
        .and(header("authorization", "Bearer ghp-test"))
        .and(header("accept", "application/vnd.github+json"))
        .and(body_partial_json(
            json!({"ref": SHA, "environment": "production", "required_contexts": []}),
        ))
        .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 42})))
        .expect(1)
        .mount(&apis.github)
        .await;
    for state in ["in_progress", "success"] {
        Mock::given(method("POST"))
            .and(path(format!("{repo}/deployments/42/statuses")))
            .and(header("authorization", "Bearer ghp-test"))
            .and(body_partial_json(json!({"state": state})))
            .respond_with(ResponseTemplate::new(201).set_body_json(json!({"id": 7})))
            .expect(1)
            .mount(&apis.github)
            .await;
    }

    // The tag push, as GitHub delivers it.
    let (ingress, _) = shipit::run::local::ingress((*config).clone())
        .await
        .unwrap();
    let body = tag_push("acme/hello", "v1.0.0");
    let reply = ingress
        .github(&github_headers("push", "d-1", &body), &body, Utc::now())
        .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let job: JobId = serde_json::from_value(reply.body["jobs"][0]["job"].clone()).unwrap();
    assert_eq!(run(&config, &store, &job).await, JobStatus::Succeeded);

    let posts = requests(&apis.slack, "/api/chat.postMessage").await;
    assert_eq!(posts.len(), 1, "one message per deploy: {posts:?}");
    assert_eq!(posts[0]["channel"], "#deploys");
    let updates = requests(&apis.slack, "/api/chat.update").await;
    assert!(!updates.is_empty());
    let last = updates.last().unwrap();
    let text = last["text"].as_str().unwrap();
    assert!(
        text.starts_with("hello 1.0.0 (first deploy) on production: deployed"),
        "{text}"
    );
    let blocks = last["blocks"].to_string();
    for n in ["n1", "n2", "n3"] {
        assert!(
            blocks.contains(&format!(":white_check_mark: `{n}` healthy")),
            "{blocks}"
        );
    }
    assert!(blocks.contains("push of tag v1.0.0 by octocat"), "{blocks}");

    let marks = requests(&apis.newrelic, "/graphql").await;
    assert_eq!(marks.len(), 1);
    assert!(marks[0]["query"]
        .as_str()
        .unwrap()
        .contains("changeTrackingCreateDeployment"));
    let d = &marks[0]["variables"]["deployment"];
    assert_eq!(d["entityGuid"], "MXxBUE18");
    assert_eq!(d["version"], "1.0.0");
    assert_eq!(d["commit"], SHA);
    assert_eq!(d["user"], "octocat");
    assert_eq!(d["groupId"], job.as_str());
    assert!(d["timestamp"].as_i64().unwrap() <= Utc::now().timestamp_millis());

    let events = requests(&apis.datadog, "/api/v1/events").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["alert_type"], "success");
    let tags: Vec<&str> = events[0]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    for t in ["service:hello", "env:production", "version:1.0.0"] {
        assert!(tags.contains(&t), "{tags:?}");
    }
    let dora = requests(&apis.datadog, "/api/v2/dora/deployment").await;
    assert_eq!(dora.len(), 1);
    let a = &dora[0]["data"]["attributes"];
    assert_eq!(
        (a["service"].as_str(), a["version"].as_str()),
        (Some("hello"), Some("1.0.0"))
    );
    assert_eq!(a["git"]["commit_sha"], SHA);
    assert!(a["started_at"].as_i64().unwrap() <= a["finished_at"].as_i64().unwrap());
    // And the figures shipit computes, as gauges, once the job ended.
    let series = requests(&apis.datadog, "/api/v2/series").await;
    assert_eq!(series.len(), 1, "{series:?}");
    let gauges: Vec<(&str, f64)> = series[0]["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            assert_eq!(m["type"], 3, "{m}");
            assert_eq!(
                m["tags"],
                json!(["service:hello", "env:production", "window_days:30"])
            );
            let point = &m["points"][0];
            assert!(point["timestamp"].as_i64().unwrap() <= Utc::now().timestamp());
            (
                m["metric"].as_str().unwrap(),
                point["value"].as_f64().unwrap(),
            )
        })
        .collect();
    let figure = |name: &str| gauges.iter().find(|(m, _)| *m == name).map(|(_, v)| *v);
    assert_eq!(
        figure("shipit.dora.deploys_per_day"),
        Some(1.0 / 30.0),
        "{gauges:?}"
    );
    assert_eq!(
        figure("shipit.dora.change_failure_rate"),
        Some(0.0),
        "{gauges:?}"
    );
    assert!(
        figure("shipit.dora.lead_time_seconds").is_some(),
        "{gauges:?}"
    );
    assert_eq!(
        figure("shipit.dora.time_to_restore_seconds"),
        None,
        "nothing restored"
    );
    // The GitHub mocks' `expect` counts are checked when `apis` drops.
}

#[tokio::test]
async fn a_failed_deploy_says_where_and_why_and_marks_no_new_version() {
    let apis = Apis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &apis);
    slack_ok(&apis).await;
    apm_ok(&apis).await;
    assert_eq!(
        cli_deploy(&config, &store, "1.0.0").await,
        JobStatus::Succeeded
    );
    let marks_before = requests(&apis.newrelic, "/graphql").await.len();
    let events_before = requests(&apis.datadog, "/api/v1/events").await.len();
    let posts_before = requests(&apis.slack, "/api/chat.postMessage").await.len();

    assert_eq!(
        cli_deploy(&config, &store, "2.0.0").await,
        JobStatus::Failed
    );

    let last = requests(&apis.slack, "/api/chat.update")
        .await
        .pop()
        .unwrap();
    let text = last["text"].as_str().unwrap();
    assert!(
        text.starts_with("hello 1.0.0 → 2.0.0 on production: failed and rolled back"),
        "{text}"
    );
    let blocks = last["blocks"].to_string();
    assert!(blocks.contains("*Failed on `n2`*"), "{blocks}");
    assert!(blocks.contains("n2: GET /healthz answered 500"), "{blocks}");
    assert!(
        blocks.contains("`n3`") && !blocks.contains(":white_check_mark: `n3`"),
        "{blocks}"
    );

    let posts = requests(&apis.slack, "/api/chat.postMessage").await;
    let new: Vec<_> = posts[posts_before..].iter().collect();
    assert!(
        new[0].get("thread_ts").is_none(),
        "the deploy's own message"
    );
    let replies: Vec<&str> = new[1..]
        .iter()
        .map(|p| {
            assert_eq!(p["thread_ts"], TS);
            assert_eq!(p["channel"], "C0DEPLOYS");
            p["text"].as_str().unwrap()
        })
        .collect();
    assert!(
        replies
            .iter()
            .any(|r| r.contains("`n2` is unhealthy") && r.contains("answered 500")),
        "{replies:?}"
    );
    assert!(
        replies.iter().any(|r| r.contains("rolling back to 1.0.0")),
        "{replies:?}"
    );

    assert_eq!(
        requests(&apis.newrelic, "/graphql").await.len(),
        marks_before,
        "no marker for a version that did not go live"
    );
    let events = requests(&apis.datadog, "/api/v1/events").await;
    assert_eq!(events.len(), events_before + 1);
    assert_eq!(events.last().unwrap()["alert_type"], "error");
}

#[tokio::test]
async fn a_deploy_from_chat_ends_with_a_reply_to_the_command() {
    let apis = Apis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &apis);
    slack_ok(&apis).await;
    apm_ok(&apis).await;
    Mock::given(method("POST"))
        .and(path("/commands/T1/1/x"))
        .and(body_partial_json(
            json!({"response_type": "in_channel", "replace_original": false}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&apis.slack)
        .await;
    let (ingress, _) = shipit::run::local::ingress((*config).clone())
        .await
        .unwrap();
    let slash = |url: String, trigger: &str| {
        let body = slack_form_replying_to(&url, "U1", "ann", "hello 1.0.0", trigger);
        let ingress = &ingress;
        async move {
            let now = Utc::now();
            ingress.slack(&slack_headers(&body, now), &body, now).await
        }
    };

    // Slack never sends a response_url elsewhere; one that points elsewhere is not followed.
    let reply = slash(format!("{}/elsewhere/x", apis.slack.uri()), "t-1").await;
    let text = reply.body["text"].as_str().unwrap();
    assert!(
        text.contains("not under") && text.contains("nothing was done"),
        "{text}"
    );
    assert!(store.jobs(None).await.unwrap().is_empty(), "nothing queued");

    let reply = slash(format!("{}/commands/T1/1/x", apis.slack.uri()), "t-2").await;
    let text = reply.body["text"].as_str().unwrap();
    assert!(text.starts_with("Queued hello 1.0.0"), "{text}");
    let job = store.jobs(None).await.unwrap().pop().unwrap().job.id;
    assert_eq!(run(&config, &store, &job).await, JobStatus::Succeeded);

    let replies = requests(&apis.slack, "/commands/T1/1/x").await;
    assert_eq!(replies.len(), 1, "one reply, when the deploy ends");
    let text = replies[0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("hello 1.0.0 (first deploy) on production: deployed"),
        "{text}"
    );
    assert!(replies[0]["blocks"]
        .to_string()
        .contains("/deploy by @ann (U1)"));
}

#[tokio::test]
async fn slack_rate_limits_are_waited_out() {
    let apis = Apis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &apis);
    Mock::given(method("POST"))
        .and(path("/api/chat.postMessage"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "1"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&apis.slack)
        .await;
    slack_ok(&apis).await;
    apm_ok(&apis).await;

    assert_eq!(
        cli_deploy(&config, &store, "1.0.0").await,
        JobStatus::Succeeded
    );
    let received = apis.slack.received_requests().await.unwrap();
    let posts: Vec<_> = received
        .iter()
        .filter(|r| r.url.path() == "/api/chat.postMessage")
        .collect();
    assert_eq!(posts.len(), 2, "one 429, then the post");
    assert_eq!(posts[0].body, posts[1].body, "the same message, sent again");
    // The retried post's ts is what later updates edit.
    assert!(!requests(&apis.slack, "/api/chat.update").await.is_empty());
}

/// Every log line of this test binary. Global rather than per test: tracing caches
/// which call sites are enabled across threads, and a thread-local subscriber can miss
/// lines when other tests run beside it. Tests tell their lines apart by job id.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

fn log() -> &'static Lines {
    static LOG: std::sync::OnceLock<Lines> = std::sync::OnceLock::new();
    LOG.get_or_init(|| {
        let lines = Lines::default();
        let writer = lines.clone();
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        )
        .unwrap();
        lines
    })
}

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn apm_down_is_logged_and_the_deploy_still_succeeds() {
    let apis = Apis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (config, store) = setup(dir.path(), &apis);
    slack_ok(&apis).await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream unavailable"))
        .mount(&apis.newrelic)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&apis.datadog)
        .await;
    let lines = log();

    assert_eq!(
        cli_deploy(&config, &store, "1.0.0").await,
        JobStatus::Succeeded
    );

    assert!(
        apis.newrelic.received_requests().await.unwrap().len() > 1,
        "retried"
    );
    let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let job = store.jobs(None).await.unwrap().pop().unwrap().job.id;
    for who in ["newrelic", "datadog"] {
        let line = log
            .lines()
            .find(|l| {
                l.contains("notification failed") && l.contains(&format!("notifier=\"{who}\""))
            })
            .unwrap_or_else(|| panic!("no failure logged for {who}:\n{log}"));
        assert!(line.contains(job.as_str()), "{line}");
        assert!(line.contains("500"), "{line}");
    }
}

/// A signed click on a deploy message's button, as Slack posts it to the Request URL.
fn click(user: &str, action: &str, job: &JobId, response_url: &str) -> Vec<u8> {
    let payload = json!({
        "type": "block_actions",
        "user": {"id": user, "username": "someone"},
        "team": {"id": "T1"},
        "api_app_id": "A1",
        "container": {"type": "message", "message_ts": TS, "channel_id": "C0DEPLOYS"},
        "channel": {"id": "C0DEPLOYS"},
        "response_url": response_url,
        "actions": [{"type": "button", "block_id": "shipit_approval", "action_id": action,
                     "value": job.to_string(), "action_ts": "1700000001.000200"}],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())])
        .unwrap()
        .into_bytes()
}

/// Approval through Slack's buttons: while it waits, the deploy's message carries Approve
/// and Reject; a click with a bad signature, or by someone who is not an approver, keeps
/// nothing (the latter is told why, only to them); an approver's click lets the deploy
/// go, and the message is updated in place to say who approved, without its buttons.
#[tokio::test(flavor = "multi_thread")]
async fn an_approval_clicked_in_slack_lets_the_deploy_go_and_updates_its_message() {
    let apis = Apis::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = r#"approvals = { approvers = ["U2", "U3"] }"#;
    let (config, store) = setup_with(dir.path(), &apis, rules);
    slack_ok(&apis).await;
    apm_ok(&apis).await;
    Mock::given(method("POST"))
        .and(path("/commands/T1/2/x"))
        .and(body_partial_json(
            json!({"response_type": "ephemeral", "replace_original": false}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string("ok"))
        .mount(&apis.slack)
        .await;
    let reply_to = format!("{}/commands/T1/2/x", apis.slack.uri());
    let job = shipit::cli::deploy(&config, &store, "hello", "1.0.0", None, false)
        .await
        .unwrap();
    let running = tokio::spawn({
        let (config, store, id) = (config.clone(), store.clone(), job.id.clone());
        async move { run(&config, &store, &id).await }
    });
    let buttons = |body: &Value| {
        body["blocks"].as_array().is_some_and(|b| {
            b.iter().any(|b| {
                b["type"] == "actions"
                    && b["elements"][0]["action_id"] == "shipit_approve"
                    && b["elements"][1]["action_id"] == "shipit_reject"
                    && b["elements"][0]["value"] == job.id.to_string()
            })
        })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let posted = requests(&apis.slack, "/api/chat.postMessage").await;
        if posted.iter().any(&buttons) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no buttons: {posted:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    let (ingress, _) = shipit::run::local::ingress((*config).clone())
        .await
        .unwrap();
    let words = || async {
        use shipit::deploy::ports::Ledger;
        let since = Utc::now() - chrono::Duration::hours(1);
        store.approvals("hello", "production", since).await.unwrap()
    };
    // Signed for another body: refused before anything is read.
    let now = Utc::now();
    let forged = click("U2", "shipit_approve", &job.id, &reply_to);
    let signed_other = slack_headers(&click("U2", "shipit_reject", &job.id, &reply_to), now);
    assert_eq!(ingress.slack(&signed_other, &forged, now).await.status, 401);
    // Malformed, or from another workspace: nothing kept.
    let body = serde_urlencoded::to_string([("payload", "{not json")]).unwrap();
    let reply = ingress
        .slack(&slack_headers(body.as_bytes(), now), body.as_bytes(), now)
        .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let elsewhere = String::from_utf8(click("U2", "shipit_approve", &job.id, &reply_to))
        .unwrap()
        .replace("%22T1%22", "%22T9%22");
    assert!(elsewhere.contains("T9"), "{elsewhere}");
    let reply = ingress
        .slack(
            &slack_headers(elsewhere.as_bytes(), now),
            elsewhere.as_bytes(),
            now,
        )
        .await;
    assert!(reply.reason().contains("does not serve"), "{reply:?}");
    assert!(words().await.is_empty());
    // Not an approver: told so, nothing kept.
    let body = click("U9", "shipit_approve", &job.id, &reply_to);
    let reply = ingress.slack(&slack_headers(&body, now), &body, now).await;
    assert_eq!(reply.status, 200);
    assert!(words().await.is_empty());
    // An approver.
    let body = click("U2", "shipit_approve", &job.id, &reply_to);
    let reply = ingress.slack(&slack_headers(&body, now), &body, now).await;
    assert_eq!(reply.status, 200);
    assert_eq!(words().await.len(), 1);

    assert_eq!(running.await.unwrap(), JobStatus::Succeeded);
    let told: Vec<String> = requests(&apis.slack, "/commands/T1/2/x")
        .await
        .iter()
        .map(|b| b["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(
        told[0].starts_with("U9 is not an approver of hello/production"),
        "{told:?}"
    );
    assert!(
        told[1].starts_with(&format!("Approved job {}", job.id)),
        "{told:?}"
    );
    let updates = requests(&apis.slack, "/api/chat.update").await;
    let approved = updates
        .iter()
        .position(|u| u["blocks"].to_string().contains("approved by U2"))
        .unwrap_or_else(|| panic!("no update says who approved: {updates:?}"));
    assert!(
        updates[approved..].iter().all(|u| !buttons(u)),
        "{updates:?}"
    );
    let thread = requests(&apis.slack, "/api/chat.postMessage").await;
    assert!(
        thread
            .iter()
            .any(|m| m["thread_ts"] == TS && m["text"] == ":white_check_mark: approved by <@U2>"),
        "{thread:?}"
    );
}
