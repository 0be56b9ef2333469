//! The AWS runtime against the emulator (tests/emulator/server.py): jobs from the SQS FIFO queue
//! start one Step Functions execution each; deploy steps drive SSM Run Command on EC2
//! instances the test creates with tags; history and locks live in Parameter Store; the
//! state machine definition in infra/ runs in the emulator's Step Functions.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::helpers::{sdk, unique};
use aws_sdk_sfn::types::{ExecutionStatus, HistoryEventType};
use chrono::Utc;
use serde_json::{json, Value};
use shipit::aws::calendar::SsmCalendars;
use shipit::aws::fleet::{SdkRunCommand, SsmFleet};
use shipit::aws::ledger::SsmLedger;
use shipit::aws::queue::SqsQueue;
use shipit::config::secrets::Secrets;
use shipit::config::Config;
use shipit::deploy::history::HistoryEntry;
use shipit::deploy::job::{DeployJob, Source};
use shipit::deploy::ports::{JobQueue, Ledger};
use shipit::deploy::status::JobStatus;
use shipit::drive::step::{StepInput, StepState, Stepper};
use shipit::drive::{Driver, Outbound};

/// The emulator's SSM outcome rules are one global setting: tests that set them take turns.
pub(crate) static CONTROL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL").expect("run the tests with scripts/test")
}

/// A request as the AWS SDKs send it; the emulator routes on the signing scope.
async fn aws_call(
    service: &str,
    method: reqwest::Method,
    path: &str,
    content_type: &str,
    body: String,
) -> String {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"
    );
    let resp = reqwest::Client::new()
        .request(method, format!("{}{path}", endpoint()))
        .header("Authorization", auth)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .expect("emulator reachable");
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{service} {path}: {status} {text}");
    text
}

pub(crate) async fn query(service: &str, params: &[(&str, &str)]) -> String {
    let body = serde_urlencoded::to_string(params).unwrap();
    aws_call(
        service,
        reqwest::Method::POST,
        "/",
        "application/x-www-form-urlencoded",
        body,
    )
    .await
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|s| s.split_once(&close).map(|(v, _)| v.to_string()))
        .collect()
}

/// Launches `n` EC2 instances with `tags` through the EC2 API; returns their ids, sorted.
pub(crate) async fn launch(n: usize, tags: &[(&str, &str)]) -> Vec<String> {
    let count = n.to_string();
    let mut params = vec![
        ("Action", "RunInstances"),
        ("Version", "2016-11-15"),
        ("ImageId", "ami-12c6146b"),
        ("MinCount", count.as_str()),
        ("MaxCount", count.as_str()),
        ("TagSpecification.1.ResourceType", "instance"),
    ];
    let keys: Vec<(String, String)> = (1..=tags.len())
        .map(|i| {
            (
                format!("TagSpecification.1.Tag.{i}.Key"),
                format!("TagSpecification.1.Tag.{i}.Value"),
            )
        })
        .collect();
    for ((k, v), (kk, vk)) in tags.iter().zip(&keys) {
        params.push((kk, k));
        params.push((vk, v));
    }
    let xml = query("ec2", &params).await;
    let mut ids = xml_values(&xml, "instanceId");
    ids.sort();
    assert_eq!(ids.len(), n, "{xml}");
    ids
}

/// Terminates EC2 instance `id` in the emulator.
pub(crate) async fn terminate(id: &str) {
    let xml = query(
        "ec2",
        &[
            ("Action", "TerminateInstances"),
            ("Version", "2016-11-15"),
            ("InstanceId.1", id),
        ],
    )
    .await;
    assert!(xml.contains(id), "{xml}");
}

pub(crate) async fn control(rules: Value) {
    let resp = reqwest::Client::new()
        .post(format!("{}/_shipit/ssm", endpoint()))
        .json(&rules)
        .send()
        .await
        .expect("emulator control endpoint");
    assert!(resp.status().is_success());
}

fn config(fleet: &str) -> Config {
    config_with(fleet, "")
}

/// The test app, with `rollout` keys added to its rollout policy.
fn config_with(fleet: &str, rollout: &str) -> Config {
    parse(&config_text(fleet, rollout))
}

fn parse(text: &str) -> Config {
    Config::parse(text, Path::new("aws.toml")).unwrap_or_else(|r| panic!("{r}"))
}

/// `config_text` with `lines` added to the production environment.
fn production_with(fleet: &str, lines: &str) -> String {
    config_text(fleet, "").replace(
        "chat_deployers = [\"*\"]\n",
        &format!("chat_deployers = [\"*\"]\n{lines}"),
    )
}

fn config_text(fleet: &str, rollout: &str) -> String {
    format!(
        r#"
[slack]
signing_secret = "{}"

[apps.hello]
package = "hello-app"
install = "venv/bin/pip install -U {{package}}=={{version}}"
restart = "kill -HUP $(cat {{dir}}/service.pid)"
health = "curl -fsS localhost:{{port}}/version | grep -qx {{version}}"
version = "venv/bin/pip show {{package}}"
[apps.hello.rollout]
health_timeout_seconds = 3
health_interval_seconds = 1
{rollout}
[apps.hello.environments.production]
ssm_tags = {{ "shipit:app" = "hello", "shipit:fleet" = "{fleet}" }}
dir = "/srv/hello app"
vars = {{ port = "8080" }}
chat_deployers = ["*"]
"#,
        crate::helpers::SLACK_SECRET,
    )
}

struct Rig {
    ssm: aws_sdk_ssm::Client,
    config: Arc<Config>,
    ledger: Arc<SsmLedger>,
    nodes: Vec<String>,
    /// The value of the nodes' `shipit:fleet` tag.
    fleet: String,
    /// A tagged instance of another fleet: nothing may touch it.
    stranger: String,
}

impl Rig {
    async fn new(nodes: usize) -> Rig {
        let ssm = shipit::run::aws::ssm_client(&sdk().await);
        let fleet = unique("fleet");
        let nodes = launch(nodes, &[("shipit:app", "hello"), ("shipit:fleet", &fleet)]).await;
        let stranger = launch(1, &[("shipit:app", "hello"), ("shipit:fleet", "other")]).await;
        Rig {
            ledger: Arc::new(crate::helpers::ssm_ledger(ssm.clone())),
            config: Arc::new(config(&fleet)),
            ssm,
            nodes,
            fleet,
            stranger: stranger[0].clone(),
        }
    }

    fn stepper(&self, budget: Duration) -> Stepper {
        Stepper::new(self.driver(None), budget)
    }

    /// A stepper wired as the deploy-step function's: jobs take the lock in `turn`'s
    /// queue order, and its tickets are the backlog.
    fn stepper_in_order(&self, turn: Arc<shipit::aws::turn::SsmTurn>, budget: Duration) -> Stepper {
        Stepper::new(self.driver(Some(turn)), budget)
    }

    fn driver(&self, queue: Option<Arc<shipit::aws::turn::SsmTurn>>) -> Driver {
        let fleet = SsmFleet::new(SdkRunCommand::new(self.ssm.clone()), self.config.clone());
        let backlog = queue
            .clone()
            .map(|q| q as Arc<dyn shipit::deploy::ports::Backlog>);
        let driver = Driver::new(
            self.config.clone(),
            self.ledger.clone(),
            Arc::new(fleet),
            backlog,
            Outbound::new(self.config.clone(), Arc::new(Secrets::new(None))),
        )
        .with_calendars(Arc::new(SsmCalendars::new(self.ssm.clone())));
        match queue {
            Some(q) => driver.with_turn(q),
            None => driver,
        }
    }

    fn job(&self, version: &str) -> DeployJob {
        cli_job(version)
    }

    /// From now on node `i` fails its health check on `version` (after 4 checks in 3 s,
    /// as the node's restart says it).
    async fn unhealthy_on(&self, i: usize, version: &str) {
        control(json!({ "rules": [{
            "instance": self.nodes[i], "contains": format!("grep -qx {version}"),
            "status": "Failed", "exit_code": 1,
            "stderr": "curl: (7) Failed to connect to localhost port 8080\nshipit: unhealthy after 4 checks in 3 s"
        }]}))
        .await;
    }

    /// Steps `job` to its end the way the state machine does; returns the final state.
    async fn deploy(&self, job: DeployJob) -> StepState {
        let stepper = self.stepper(Duration::from_secs(60));
        let mut state = StepState::start(job);
        for _ in 0..100 {
            state = stepper.step(StepInput::first(state)).await.expect("step");
            if state.done {
                return state;
            }
            tokio::time::sleep(Duration::from_secs(state.wait_seconds)).await;
        }
        panic!("deploy did not finish: {state:?}");
    }

    /// Steps `job` to its end one action a step, without the waits between them.
    async fn deploy_now(&self, job: DeployJob) -> StepState {
        let stepper = self.stepper(Duration::ZERO);
        let mut state = StepState::start(job);
        while !state.done {
            state = stepper.step(StepInput::first(state)).await.expect("step");
        }
        state
    }

    /// The SSM commands of `job`, oldest first: (comment, instance ids, script).
    async fn commands(&self, job: &DeployJob) -> Vec<(String, Vec<String>, String)> {
        // Every page: the emulator, like SSM, answers at most 50 commands a call.
        let pages: Vec<_> = self
            .ssm
            .list_commands()
            .into_paginator()
            .send()
            .collect::<Result<_, _>>()
            .await
            .expect("ListCommands");
        let mut cmds: Vec<_> = pages
            .into_iter()
            .flat_map(|p| p.commands.unwrap_or_default())
            .filter(|c| {
                c.comment
                    .as_deref()
                    .is_some_and(|t| t.contains(job.id.as_str()))
            })
            .collect();
        cmds.sort_by_key(|c| c.requested_date_time.map(|t| (t.secs(), t.subsec_nanos())));
        for c in &cmds {
            assert_eq!(c.document_name.as_deref(), Some("AWS-RunShellScript"));
            let params = c.parameters.clone().unwrap_or_default();
            assert_eq!(
                params.get("workingDirectory"),
                Some(&vec!["/srv/hello app".to_string()])
            );
            assert!(!c
                .instance_ids
                .clone()
                .unwrap_or_default()
                .contains(&self.stranger));
        }
        cmds.into_iter()
            .map(|c| {
                let script = c
                    .parameters
                    .unwrap_or_default()
                    .get("commands")
                    .map(|v| v.join("\n"))
                    .unwrap_or_default();
                let mut ids = c.instance_ids.unwrap_or_default();
                ids.sort();
                (c.comment.unwrap_or_default(), ids, script)
            })
            .collect()
    }

    /// Commands as "what nodes version": "install i-1,i-2 1.1.0", "restart i-1 1.1.0" (a
    /// restart names the version its health check waits for), "revert restart i-1 1.0.0".
    async fn log(&self, job: &DeployJob) -> Vec<String> {
        self.commands(job)
            .await
            .into_iter()
            .map(|(comment, ids, script)| {
                let key = comment.split(' ').nth(1).unwrap_or("");
                let parts: Vec<&str> = key.split(':').skip(1).collect();
                let what = match parts.as_slice() {
                    ["revert", kind, ..] => format!("revert {kind}"),
                    [kind, ..] => kind.to_string(),
                    [] => "?".into(),
                };
                let version = ["1.0.0", "1.1.0", "1.2.0"]
                    .into_iter()
                    .find(|v| script.contains(v))
                    .unwrap_or("-");
                format!("{what} {} {version}", ids.join(","))
            })
            .collect()
    }
}

/// The SSM commands a step's state says were sent for its key (a replay counts their time
/// from itself, so `since` may differ).
fn commands_of(state: &StepState) -> Option<(String, Vec<String>, usize)> {
    state
        .sent
        .as_ref()
        .map(|s| (s.key.clone(), s.commands.clone(), s.parts))
}

/// What chat answers `/deploy TEXT` from someone who may deploy.
async fn chat(ingress: &shipit::ingress::Ingress, text: String) -> String {
    let now = Utc::now();
    let body = crate::helpers::slack_form("U2CERLKJA", "roadrunner", &text, &unique("t"));
    let headers = crate::helpers::slack_headers(&body, now);
    let reply = ingress.slack(&headers, &body, now).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["text"].as_str().unwrap().to_string()
}

/// Chat over `rig`'s config and ledger, queuing on `fifo` and reading change calendars
/// from the emulator, as the slash-command function's.
async fn chat_ingress(rig: &Rig, fifo: &crate::helpers::Fifo) -> shipit::ingress::Ingress {
    shipit::ingress::Ingress::new(
        rig.config.clone(),
        Arc::new(fifo.queue()),
        rig.ledger.clone(),
        &Secrets::new(None),
        &shipit::ingress::Hook::ALL,
    )
    .await
    .unwrap()
    .with_calendars(Arc::new(SsmCalendars::new(rig.ssm.clone())))
}

fn cli_job(version: &str) -> DeployJob {
    crate::helpers::cli_job("test", version, &unique("n"))
}

/// An upload of `version` to `bucket` (a job's id comes from where it was uploaded: a
/// test whose commands are found by it uploads to its own).
fn upload_job(bucket: &str, version: &str, now: chrono::DateTime<Utc>) -> DeployJob {
    DeployJob::new(
        "hello",
        "production",
        "hello-app".parse().unwrap(),
        shipit::deploy::version::Version::parse(version).unwrap(),
        Source::Upload {
            location: format!("s3://{bucket}/hello_app-{version}-py3-none-any.whl"),
        },
        now,
    )
}

fn expected_order(nodes: &[String], version: &str) -> Vec<String> {
    let mut want = vec![format!("install {} {version}", nodes.join(","))];
    for n in nodes {
        want.push(format!("restart {n} {version}"));
    }
    want
}

#[tokio::test]
async fn a_deploy_installs_on_the_tagged_nodes_at_once_then_restarts_them_one_by_one() {
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let rig = Rig::new(3).await;
    let first = rig.job("1.0.0");
    assert_eq!(
        rig.deploy(first.clone()).await.status,
        Some(JobStatus::Succeeded)
    );
    let job = rig.job("1.1.0");
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    assert_eq!(rig.log(&job).await, expected_order(&rig.nodes, "1.1.0"));
    let cmds = rig.commands(&job).await;
    assert!(
        cmds[0]
            .2
            .contains("venv/bin/pip install -U hello-app==1.1.0"),
        "{}",
        cmds[0].2
    );
    // `{dir}` is substituted shell-quoted.
    assert!(cmds[1]
        .2
        .contains("kill -HUP $(cat '/srv/hello app'/service.pid)"));
    let history = rig.ledger.history("hello", "production", 5).await.unwrap();
    assert_eq!(history[0].job.id, job.id);
    assert_eq!(history[1].job.id, first.id);
    assert!(rig
        .ledger
        .lock_state("hello", "production", Utc::now())
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_failed_health_check_on_node_2_puts_nodes_1_and_2_back_and_fails_the_job() {
    let _turn = CONTROL.lock().await;
    let rig = Rig::new(3).await;
    control(json!({})).await;
    rig.deploy(rig.job("1.1.0")).await;
    // The node runs restart and health check as one command, and says last how long
    // it checked before giving up.
    rig.unhealthy_on(1, "1.2.0").await;
    let job = rig.job("1.2.0");
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Failed), "{end:?}");
    let reason = end.reason.unwrap();
    assert!(
        reason.contains(&format!("{} failed its health check", rig.nodes[1]))
            && reason.contains("4 checks in 3 s, the last: exit 1: curl: (7) Failed to connect"),
        "{reason}"
    );
    let log = rig.log(&job).await;
    let (n1, n2, n3) = (&rig.nodes[0], &rig.nodes[1], &rig.nodes[2]);
    let want = vec![
        format!("install {} 1.2.0", rig.nodes.join(",")),
        format!("restart {n1} 1.2.0"),
        format!("restart {n2} 1.2.0"),
        format!("revert install {} 1.1.0", rig.nodes.join(",")),
        format!("revert restart {n1} 1.1.0"),
        format!("revert restart {n2} 1.1.0"),
    ];
    assert_eq!(log, want);
    assert!(!log.iter().any(|l| l.contains(&format!("restart {n3}"))));
    let live = rig.ledger.history("hello", "production", 1).await.unwrap();
    assert_eq!(live[0].job.version.as_str(), "1.1.0");
    control(json!({})).await;
}

#[tokio::test]
async fn chat_rollback_resends_the_previous_job_through_the_queue_with_its_old_version() {
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let mut rig = Rig::new(2).await;
    // Stands in for Slack's response_url, which hears how the rollback ended.
    let chat = wiremock::MockServer::start().await;
    rig.config = Arc::new(Config {
        slack_response_url_prefix: format!("{}/commands/", chat.uri()),
        ..(*rig.config).clone()
    });
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/commands/T1/1/x"))
        .respond_with(wiremock::ResponseTemplate::new(200).set_body_string("ok"))
        .expect(1)
        .mount(&chat)
        .await;
    let old = rig.job("1.0.0");
    rig.deploy(old.clone()).await;
    let bad = rig.job("1.1.0");
    rig.deploy(bad.clone()).await;

    let fifo = crate::helpers::Fifo::new().await;
    let queue: Arc<dyn JobQueue> = Arc::new(fifo.queue());
    let ingress = shipit::ingress::Ingress::new(
        rig.config.clone(),
        queue,
        rig.ledger.clone(),
        &shipit::config::secrets::Secrets::new(None),
        &shipit::ingress::Hook::ALL,
    )
    .await
    .unwrap();
    let body = crate::helpers::slack_form_replying_to(
        &format!("{}/commands/T1/1/x", chat.uri()),
        "U1",
        "alice",
        "rollback hello",
        "t1",
    );
    let reply = ingress
        .slack(
            &crate::helpers::slack_headers(&body, Utc::now()),
            &body,
            Utc::now(),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let queued = fifo.drain().await;
    assert_eq!(queued.len(), 1);
    let job = DeployJob::from_json(&queued[0].1).unwrap();
    assert_eq!(job.version.as_str(), "1.0.0");
    assert!(
        matches!(&job.source, Source::Rollback { restores, replaces: Some(r), .. }
        if *restores == old.id && *r == bad.id)
    );
    assert_ne!(job.id, old.id);
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded));
    assert_eq!(rig.log(&job).await, expected_order(&rig.nodes, "1.0.0"));
    let live = rig.ledger.history("hello", "production", 1).await.unwrap();
    assert_eq!(live[0].job.id, job.id);
    let reply: Value = chat.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    let text = reply["text"].as_str().unwrap();
    assert!(
        text.starts_with("hello 1.1.0 → 1.0.0 on production: deployed"),
        "{text}"
    );
    assert_eq!(reply["response_type"], "in_channel");
}

/// `layout = "releases"` through Run Command: installs build `releases/VERSION` in the
/// app's directory, restarts carry the flip of `current`, a rollback's install finds its
/// release built, and the templates' `{venv}` follows the layout.
#[tokio::test]
async fn with_releases_the_commands_build_side_by_side_and_flip_current() {
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let mut rig = Rig::new(2).await;
    let text = config_text(&rig.fleet, "")
        .replace("\"venv/bin/pip install", "\"{venv}/bin/pip install")
        .replace(
            "dir = \"/srv/hello app\"",
            "dir = \"/srv/hello app\"\nlayout = \"releases\"\nkeep_releases = 3",
        );
    rig.config = Arc::new(parse(&text));
    let old = rig.job("1.0.0");
    assert_eq!(
        rig.deploy(old.clone()).await.status,
        Some(JobStatus::Succeeded)
    );
    let new = rig.job("1.1.0");
    assert_eq!(
        rig.deploy(new.clone()).await.status,
        Some(JobStatus::Succeeded)
    );
    let back = old.rollback(
        Some(&new.id),
        Source::Cli {
            user: "test".into(),
            nonce: unique("n"),
        },
        Utc::now(),
    );
    let end = rig.deploy(back.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    assert_eq!(rig.log(&back).await, expected_order(&rig.nodes, "1.0.0"));
    let cmds = rig.commands(&back).await;
    let install = &cmds[0].2;
    assert!(
        install.contains("shipit_release=releases/1.0.0\n"),
        "{install}"
    );
    assert!(
        install.contains("is already built: nothing to install"),
        "{install}"
    );
    assert!(
        install.contains("releases/1.0.0/venv/bin/pip install -U hello-app==1.0.0"),
        "{install}"
    );
    let restart = &cmds[1].2;
    assert!(
        restart.contains("shipit_release=releases/1.0.0\n"),
        "{restart}"
    );
    assert!(
        restart.contains("ln -sfn \"$shipit_release\" .shipit-current")
            && restart.contains("os.replace(sys.argv[1], sys.argv[2])' .shipit-current current"),
        "{restart}"
    );
    assert!(
        restart.contains("kill -HUP $(cat '/srv/hello app'/service.pid)"),
        "{restart}"
    );
    assert!(
        restart.contains("-lt 3"),
        "keep_releases reaches the node: {restart}"
    );
}

/// Past SendCommand's 50 ids: 120 nodes are three commands a key, listed over pages.
/// Every step is replayed once, as after a crash, and sends nothing twice.
#[tokio::test]
async fn a_fleet_of_120_deploys_in_batches_of_50_and_rolls_back_a_failure_in_the_last() {
    let _turn = CONTROL.lock().await;
    control(json!({ "pending_reads": 0 })).await;
    let rig = Rig::new(120).await;
    let run = |job: DeployJob| {
        let stepper = rig.stepper(Duration::ZERO);
        async move {
            let mut state = StepState::start(job);
            while !state.done {
                let next = stepper.step(StepInput::first(state.clone())).await.unwrap();
                // The retry of a step whose answer was lost.
                let again = stepper.step(state.clone()).await.unwrap();
                assert_eq!(
                    commands_of(&again),
                    commands_of(&next),
                    "a replayed step sent again"
                );
                state = next;
            }
            state
        }
    };
    let batches =
        |nodes: &[String]| -> Vec<String> { nodes.chunks(50).map(|c| c.join(",")).collect() };

    let first = rig.job("1.0.0");
    let end = run(first.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    let log = rig.log(&first).await;
    let installs: Vec<_> = log.iter().filter(|l| l.starts_with("install ")).collect();
    let want: Vec<_> = batches(&rig.nodes)
        .into_iter()
        .map(|b| format!("install {b} 1.0.0"))
        .collect();
    assert_eq!(installs, want.iter().collect::<Vec<_>>());
    let restarts: Vec<_> = log.iter().filter(|l| l.starts_with("restart ")).collect();
    assert_eq!(restarts.len(), 120, "each node restarted once");

    // The install fails on a node of the third command: nothing restarts, and every node
    // that took 1.1.0 gets 1.0.0 back, in the same three commands.
    let bad = &rig.nodes[110];
    control(json!({ "pending_reads": 0, "rules": [{
        "instance": bad, "contains": "hello-app==1.1.0", "status": "Failed",
        "exit_code": 1, "stderr": "ERROR: No matching distribution found for hello-app==1.1.0"
    }]}))
    .await;
    let job = rig.job("1.1.0");
    let end = run(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Failed), "{end:?}");
    assert!(
        end.reason.as_deref().unwrap_or("").contains(bad.as_str()),
        "{end:?}"
    );
    let log = rig.log(&job).await;
    assert!(!log.iter().any(|l| l.contains("restart")), "{log:?}");
    let reverted: Vec<_> = log
        .iter()
        .filter(|l| l.starts_with("revert install"))
        .collect();
    assert!(
        !reverted.is_empty() && reverted.iter().all(|l| l.ends_with(" 1.0.0")),
        "{log:?}"
    );
    let live = rig.ledger.history("hello", "production", 1).await.unwrap();
    assert_eq!(live[0].job.id, first.id);
    control(json!({})).await;
}

/// The most invocations of commands whose comment has `text` that ran at once.
async fn most_in_flight(text: &str) -> u64 {
    let seen: Value = reqwest::get(format!("{}/_shipit/in_flight?{text}", endpoint()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    seen["most"].as_u64().unwrap()
}

/// install_concurrency holds across the three SendCommands of 120 nodes, as the emulator
/// runs them (each command's MaxConcurrency, installs that take time).
#[tokio::test]
async fn the_install_cap_holds_across_the_commands_of_a_big_fleet() {
    let _turn = CONTROL.lock().await;
    control(json!({ "pending_reads": 0, "seconds": 0.02 })).await;
    let mut rig = Rig::new(120).await;
    rig.config = Arc::new(config_with(&rig.fleet, "install_concurrency = 2"));
    let job = rig.job("1.0.0");
    let end = rig.deploy_now(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    let installs = rig
        .log(&job)
        .await
        .into_iter()
        .filter(|l| l.starts_with("install "))
        .count();
    assert_eq!(installs, 3, "three commands of at most 50");
    assert_eq!(most_in_flight(&format!("{}:install", job.id)).await, 2);
    control(json!({})).await;
}

#[tokio::test]
async fn a_replayed_step_finds_the_command_it_sent_instead_of_sending_another() {
    let _turn = CONTROL.lock().await;
    control(json!({ "pending_reads": 3 })).await;
    let rig = Rig::new(2).await;
    let job = rig.job("1.0.0");
    // A zero budget: every step performs one action and returns, as if the function
    // were cut short after each.
    let stepper = rig.stepper(Duration::ZERO);
    let mut state = StepState::start(job.clone());
    let mut replays = 0;
    while !state.done {
        let next = stepper.step(StepInput::first(state.clone())).await.unwrap();
        if next.sent != state.sent {
            // The step sent a command; a retry of the same input must not send it again.
            let again = stepper.step(state.clone()).await.unwrap();
            assert_eq!(commands_of(&again), commands_of(&next));
            replays += 1;
        }
        state = next;
    }
    assert_eq!(state.status, Some(JobStatus::Succeeded));
    assert_eq!(replays, 1 + rig.nodes.len());
    assert_eq!(rig.log(&job).await, expected_order(&rig.nodes, "1.0.0"));
    control(json!({})).await;
}

#[tokio::test]
async fn throttling_is_retried_and_unreachable_nodes_are_left_out() {
    let _turn = CONTROL.lock().await;
    let rig = Rig::new(3).await;
    control(json!({
        "offline": [rig.nodes[2]],
        "throttle": { "SendCommand": 2, "DescribeInstanceInformation": 1, "ListCommandInvocations": 2 },
        // And metered, as AWS meters each API: the polls outrun this bucket.
        "rates": { "ListCommandInvocations": { "per_second": 10, "burst": 3 } }
    }))
    .await;
    let job = rig.job("1.0.0");
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    assert_eq!(
        rig.log(&job).await,
        expected_order(&rig.nodes[..2], "1.0.0")
    );
    control(json!({})).await;
}

/// A node terminated mid-rollout: one whose install is under way ends undelivered and is
/// left out, the rest go on; one terminated before its restart is sent makes SSM refuse
/// the send (InvalidInstanceId), is looked up, and is left out too. Neither is a verdict
/// on the version; a node gone while restarting counts against the failure budget.
#[tokio::test]
async fn nodes_terminated_mid_rollout_are_left_out_and_blamed_for_nothing() {
    let _turn = CONTROL.lock().await;
    control(json!({ "pending_reads": 2 })).await;
    let rig = Rig::new(3).await;
    let stepper = rig.stepper(Duration::ZERO);
    let sent = |state: &StepState, what: &str| {
        state
            .sent
            .as_ref()
            .is_some_and(|s| s.key.contains(what) && !s.commands.is_empty())
    };
    let job = rig.job("1.0.0");
    let mut state = StepState::start(job.clone());
    while !sent(&state, ":install") {
        state = stepper.step(StepInput::first(state)).await.unwrap();
    }
    terminate(&rig.nodes[2]).await;
    let end = to_the_end(&stepper, state).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    let outcome = end.deploy.as_ref().unwrap().outcome.clone().unwrap();
    assert_eq!(
        outcome.left_behind(),
        Some(format!("{} gone", rig.nodes[2])),
        "{outcome:?}"
    );
    let mut want = expected_order(&rig.nodes[..2], "1.0.0");
    want[0] = format!("install {} 1.0.0", rig.nodes.join(","));
    assert_eq!(rig.log(&job).await, want);

    // Gone before its restart went out: the send is refused, nothing runs there.
    let next = rig.job("1.1.0");
    let mut state = StepState::start(next.clone());
    while !sent(&state, ":restart:") {
        state = stepper.step(StepInput::first(state)).await.unwrap();
    }
    terminate(&rig.nodes[1]).await;
    let end = to_the_end(&stepper, state).await;
    assert_eq!(end.status, Some(JobStatus::Failed), "{end:?}");
    let reason = end.reason.clone().unwrap_or_default();
    assert!(
        reason.contains("1 node(s) went away while restarting on 1.1.0"),
        "{reason}"
    );
    let log = rig.log(&next).await;
    assert!(
        !log.iter()
            .any(|l| l.starts_with("restart") && l.contains(&rig.nodes[1])),
        "{log:?}"
    );
    // Put back on the node it restarted, and nothing marked faulty.
    assert!(
        log.contains(&format!("revert restart {} 1.0.0", rig.nodes[0])),
        "{log:?}"
    );
    assert!(rig
        .ledger
        .faulty("hello", "production")
        .await
        .unwrap()
        .is_empty());
    control(json!({})).await;
}

/// A call still throttled when the SDK's attempts run out: the step is no failure (the
/// state machine would try it again within seconds and end the deploy after three tries,
/// mid-rollout); it hands back its state as it was, to go on after a longer wait.
#[tokio::test]
async fn a_step_throttled_past_the_sdks_attempts_waits_longer_and_then_goes_on() {
    let _turn = CONTROL.lock().await;
    let mut rig = Rig::new(2).await;
    // One attempt a call, so that the throttled call fails at once (the functions' client
    // makes eight, over a minute or so).
    let one_attempt = aws_sdk_ssm::config::Builder::from(&sdk().await)
        .retry_config(aws_sdk_ssm::config::retry::RetryConfig::standard().with_max_attempts(1));
    rig.ssm = aws_sdk_ssm::Client::from_conf(one_attempt.build());
    // One action a step, so that the throttled one starts its step.
    let stepper = rig.stepper(Duration::ZERO);
    let job = rig.job("1.0.0");
    // The install's send throttled: it did not go out, so there is nothing to look for.
    control(json!({ "throttle": { "SendCommand": 1 } })).await;
    let (before, throttled) = until_throttled(&stepper, StepState::start(job.clone())).await;
    assert_eq!(throttled.sent, None);
    assert_eq!(throttled.deploy, before.deploy);
    let mut state = throttled;
    while state.sent.is_none() {
        state = stepper.step(StepInput::first(state)).await.unwrap();
    }
    // A poll throttled.
    control(json!({ "throttle": { "ListCommandInvocations": 1 } })).await;
    let (before, throttled) = until_throttled(&stepper, state).await;
    assert_eq!(throttled.throttled, 1, "{throttled:?}");
    assert!((5..10).contains(&throttled.wait_seconds), "{throttled:?}");
    assert_eq!(throttled.deploy, before.deploy);
    assert_eq!(throttled.sent, before.sent);
    assert!(!throttled.done);
    control(json!({})).await;
    let end = to_the_end(&stepper, throttled).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    assert_eq!(end.throttled, 0);
    assert_eq!(rig.log(&job).await, expected_order(&rig.nodes, "1.0.0"));
}

/// Steps until a step comes back throttled: the state it started from, and the one it
/// handed back.
async fn until_throttled(stepper: &Stepper, mut state: StepState) -> (StepState, StepState) {
    for _ in 0..10 {
        let next = stepper
            .step(StepInput::first(state.clone()))
            .await
            .expect("a throttled step is no failure");
        if next.throttled > 0 {
            return (state, next);
        }
        state = next;
    }
    panic!("no step was throttled: {state:?}");
}

/// SendCommand takes no idempotency token: sent again after an answer that never came
/// back (the command went out), the install would run twice on every node at once, two
/// pip installs into one virtualenv. The send is retried by the SDK only when throttled
/// (AWS did not take it); otherwise the next step looks for it by its comment, and finds
/// it.
#[tokio::test]
async fn a_send_whose_answer_is_lost_runs_once() {
    let _turn = CONTROL.lock().await;
    let rig = Rig::new(2).await;
    control(json!({ "lost_answers": { "SendCommand": 1 } })).await;
    let job = rig.job("1.0.0");
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    assert_eq!(rig.log(&job).await, expected_order(&rig.nodes, "1.0.0"));
    control(json!({})).await;
}

/// The lookup after a lost answer can miss: ListCommands may not list a command just
/// sent, and the restart goes out again. The node keeps a record of each command key it
/// ran, so what it runs is the first send's, once. The emulator runs no scripts: the test
/// plays every script each node was sent, in order, in a directory of its own standing for
/// the node's, and counts what ran.
#[tokio::test]
async fn a_restart_sent_twice_after_a_missed_lookup_runs_once_on_the_node() {
    let _turn = CONTROL.lock().await;
    let mut rig = Rig::new(2).await;
    let text = config_text(&rig.fleet, "")
        .replace(
            "venv/bin/pip install -U {package}=={version}",
            "echo {version} >> installs",
        )
        .replace(
            "kill -HUP $(cat {dir}/service.pid)",
            "echo {version} >> restarts",
        )
        .replace(
            "curl -fsS localhost:{port}/version | grep -qx {version}",
            "true",
        );
    rig.config = Arc::new(parse(&text));
    let job = rig.job("1.0.0");
    control(json!({
        "lost_answers": { "SendCommand": { "count": 1, "contains": ":restart:" } },
        "list_lag": { "reads": 10, "contains": job.id.as_str() },
    }))
    .await;
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    control(json!({})).await;

    let sent = rig.commands(&job).await;
    let first = &rig.nodes[0];
    let restarts_sent = sent
        .iter()
        .filter(|(comment, ids, _)| comment.contains(":restart:") && ids.contains(first))
        .count();
    assert_eq!(
        restarts_sent, 2,
        "the lookup missed, and sent again: {sent:?}"
    );
    for node in &rig.nodes {
        let dir = tempfile::tempdir().unwrap();
        for (_, _, script) in sent.iter().filter(|(_, ids, _)| ids.contains(node)) {
            let ran = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(ran.status.success(), "{ran:?}");
        }
        let lines = |file: &str| {
            std::fs::read_to_string(dir.path().join(file))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!(lines("installs"), 1, "{node}");
        assert_eq!(lines("restarts"), 1, "{node}");
    }
}

#[tokio::test]
async fn dispatch_starts_one_execution_per_job_even_when_a_message_comes_twice() {
    // A test that has the emulator run executions switches it for every machine, and
    // executions started before the switch are no longer found: take turns with those.
    let _turn = CONTROL.lock().await;
    let sdk = sdk().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    // Executions of this machine just wait: this test is about starting them.
    let machine = holding_machine(&sfn).await;
    let fifo = crate::helpers::Fifo::new().await;
    let (a, b) = (cli_job("1.0.0"), cli_job("1.1.0"));
    SqsQueue::new(fifo.client.clone(), fifo.url.clone())
        .enqueue(&[a.clone(), b.clone()])
        .await
        .unwrap();
    let event = sqs_event(&fifo).await;
    let turn = turn_of(&sdk, &machine);
    let resp = shipit::run::lambda::dispatch(&sfn, &turn, &machine, &event).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    // Delivered again (a Lambda retry, or SQS after its visibility timeout).
    let resp = shipit::run::lambda::dispatch(&sfn, &turn, &machine, &event).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    let names = executions(&sfn, &machine).await;
    let mut want = vec![a.id.to_string(), b.id.to_string()];
    want.sort();
    assert_eq!(names, want);
    let input = sfn
        .describe_execution()
        .execution_arn(format!(
            "{}:{}",
            machine.replace(":stateMachine:", ":execution:"),
            a.id
        ))
        .send()
        .await
        .unwrap()
        .input
        .unwrap();
    let state: StepState = serde_json::from_str(&input).unwrap();
    assert_eq!(state, StepState::start(a.clone()));

    // Each left its ticket in the app+env's queue: b waits while a's execution runs.
    use shipit::deploy::ports::Turn;
    let none = |_: &DeployJob| false;
    assert_eq!(turn.ahead(&a, &none).await.unwrap(), None);
    assert_eq!(turn.ahead(&b, &none).await.unwrap(), Some(a.id.clone()));
    // One its calendar holds back keeps no place, and keeps its ticket.
    let a_held = |j: &DeployJob| j.id == a.id;
    assert_eq!(turn.ahead(&b, &a_held).await.unwrap(), None);
    assert_eq!(turn.ahead(&b, &none).await.unwrap(), Some(a.id.clone()));
    // a's execution stopped by hand, its ticket left behind: b goes, and clears it.
    stop_execution(&sfn, &machine, &a.id).await;
    // Delivered once more after it ended: its ticket goes, or it would pass for a newer
    // version still queued.
    let older = cli_job("0.9.0");
    turn.enter(&older, "0").await.unwrap();
    let resp = shipit::run::lambda::dispatch(&sfn, &turn, &machine, &event).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    use shipit::deploy::ports::Backlog;
    let newer: Vec<_> = turn
        .newer_queued(&older)
        .await
        .unwrap()
        .into_iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(newer, std::slice::from_ref(&b.id));
    turn.leave(&older).await.unwrap();
    assert_eq!(turn.ahead(&b, &none).await.unwrap(), None);
    turn.leave(&b).await.unwrap();
    assert_eq!(turn.ahead(&b, &none).await.unwrap(), None);

    // A message that cannot be started fails, and so does every one after it (FIFO order).
    let mut records = event.records.clone();
    records[0].body = Some("{not json".into());
    records[0].message_id = Some("bad".into());
    let mut bad = event.clone();
    bad.records = records;
    let resp = shipit::run::lambda::dispatch(&sfn, &turn, &machine, &bad).await;
    let failed: Vec<_> = resp
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.as_str())
        .collect();
    assert_eq!(failed, ["bad", "m1"]);
}

/// What SQS hands the dispatcher: the queue's messages in order, with their group and
/// sequence number, as a Lambda SQS event.
async fn sqs_event(fifo: &crate::helpers::Fifo) -> aws_lambda_events::event::sqs::SqsEvent {
    let got = fifo.drain_in_order().await;
    // As AWS documents SequenceNumber: it grows within a message group.
    for pair in got.windows(2).filter(|p| p[0].0 == p[1].0) {
        let (a, b): (u128, u128) = (pair[0].2.parse().unwrap(), pair[1].2.parse().unwrap());
        assert!(a < b, "sequence numbers of one group do not grow: {a}, {b}");
    }
    let records: Vec<Value> = got
        .iter()
        .enumerate()
        .map(|(i, (group, body, sequence))| {
            assert!(!sequence.is_empty(), "SQS gave no sequence number");
            json!({
                "messageId": format!("m{i}"), "receiptHandle": "r", "body": body,
                "attributes": { "MessageGroupId": group, "SequenceNumber": sequence },
                "messageAttributes": {},
                "eventSource": "aws:sqs", "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:q.fifo",
                "awsRegion": "us-east-1"
            })
        })
        .collect();
    serde_json::from_value(json!({ "Records": records })).unwrap()
}

/// `jobs` queued on a FIFO queue of their own, and handed to the dispatcher as SQS hands
/// them over: an execution of `machine` and a queue ticket each.
async fn dispatched(
    sfn: &aws_sdk_sfn::Client,
    turn: &shipit::aws::turn::SsmTurn,
    machine: &str,
    jobs: &[DeployJob],
) -> crate::helpers::Fifo {
    let fifo = crate::helpers::Fifo::new().await;
    fifo.queue().enqueue(jobs).await.unwrap();
    let resp = shipit::run::lambda::dispatch(sfn, turn, machine, &sqs_event(&fifo).await).await;
    assert!(resp.batch_item_failures.is_empty(), "{resp:?}");
    fifo
}

/// The queue order of `machine`'s executions, under a prefix of its own.
fn turn_of(sdk: &aws_config::SdkConfig, machine: &str) -> shipit::aws::turn::SsmTurn {
    shipit::aws::turn::SsmTurn::new(
        aws_sdk_ssm::Client::new(sdk),
        aws_sdk_sfn::Client::new(sdk),
        &format!("/{}", unique("shipit")),
        machine,
    )
}

/// Steps `state` to its end as the state machine would, waiting out its waits.
async fn to_the_end(stepper: &Stepper, mut state: StepState) -> StepState {
    while !state.done {
        state = stepper.step(StepInput::first(state)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(state.wait_seconds)).await;
    }
    state
}

/// Ends job `id`'s execution of `machine` (what the state machine does when a job ends).
async fn stop_execution(sfn: &aws_sdk_sfn::Client, machine: &str, id: &shipit::deploy::job::JobId) {
    sfn.stop_execution()
        .execution_arn(format!(
            "{}:{id}",
            machine.replace(":stateMachine:", ":execution:")
        ))
        .send()
        .await
        .unwrap();
}

/// A state machine whose executions just wait: tests start and stop them by hand.
async fn holding_machine(sfn: &aws_sdk_sfn::Client) -> String {
    sfn.create_state_machine()
        .name(unique("hold"))
        .role_arn(iam_role().await)
        .definition(
            json!({"StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": 3600, "End": true}}})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .state_machine_arn
}

async fn executions(sfn: &aws_sdk_sfn::Client, machine: &str) -> Vec<String> {
    let mut names: Vec<String> = sfn
        .list_executions()
        .state_machine_arn(machine)
        .send()
        .await
        .unwrap()
        .executions
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    names
}

async fn iam_role() -> String {
    let xml = query(
        "iam",
        &[
            ("Action", "CreateRole"),
            ("Version", "2010-05-08"),
            ("RoleName", &unique("shipit-test")),
            ("AssumeRolePolicyDocument", "{}"),
        ],
    )
    .await;
    xml_values(&xml, "Arn").remove(0)
}

async fn post_emulator(path: &str, body: Value) {
    let req = reqwest::Client::new()
        .post(format!("{}{path}", endpoint()))
        .json(&body);
    assert!(req.send().await.unwrap().status().is_success());
}

/// The deploy state machine from infra/ in the emulator, running its executions, its step
/// function answering with the results queued by `post_emulator` to
/// `/moto-api/static/lambda-simple/response` (the emulator's Lambda without Docker).
async fn deploy_machine(sfn: &aws_sdk_sfn::Client) -> String {
    post_emulator(
        "/moto-api/config",
        json!({"stepfunctions": {"execute_state_machine": true}, "lambda": {"use_docker": false}}),
    )
    .await;
    let role = iam_role().await;
    // An empty zip archive: the emulator never runs the code.
    let zip = {
        use base64::Engine;
        let mut z = b"PK\x05\x06".to_vec();
        z.extend([0u8; 18]);
        base64::engine::general_purpose::STANDARD.encode(z)
    };
    let function = aws_call(
        "lambda",
        reqwest::Method::POST,
        "/2015-03-31/functions",
        "application/json",
        json!({"FunctionName": unique("deploy-step"), "Runtime": "provided.al2023",
               "Role": role, "Handler": "bootstrap", "Code": {"ZipFile": zip}})
        .to_string(),
    )
    .await;
    let function: Value = serde_json::from_str(&function).unwrap();
    let definition = std::fs::read_to_string("infra/statemachine/deploy.asl.json")
        .unwrap()
        .replace(
            "${DeployStepFunctionArn}",
            function["FunctionArn"].as_str().unwrap(),
        );
    sfn.create_state_machine()
        .name(unique("deploy"))
        .role_arn(&role)
        .definition(definition)
        .send()
        .await
        .expect("the emulator accepts the definition")
        .state_machine_arn
}

/// Waits for execution `arn` to end; its status.
async fn ended(sfn: &aws_sdk_sfn::Client, arn: &str) -> ExecutionStatus {
    let mut status = ExecutionStatus::Running;
    for _ in 0..200 {
        status = sfn
            .describe_execution()
            .execution_arn(arn)
            .send()
            .await
            .unwrap()
            .status;
        if status != ExecutionStatus::Running {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    status
}

/// The deploy state machine from infra/, its step function answering with canned
/// results (the emulator's Lambda without Docker).
#[tokio::test]
async fn the_state_machine_loops_waits_and_ends_on_the_outcome_or_the_catch() {
    // The emulator's canned step results are one global queue: tests take turns.
    let _turn = CONTROL.lock().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk().await);
    let machine = deploy_machine(&sfn).await;
    let post = post_emulator;
    let job = json!({"job": {"id": "j"}});
    let step = |done: bool, wait: u64, status: Option<&str>, reason: Option<&str>| {
        json!({"job": {"id": "j"}, "done": done, "wait_seconds": wait, "status": status, "reason": reason})
            .to_string()
    };
    let error = json!({"errorType": "StepFailed", "errorMessage": "SSM unreachable"}).to_string();
    let cases: Vec<(Vec<String>, ExecutionStatus, &str)> = vec![
        (
            vec![
                step(false, 1, None, None),
                step(true, 0, Some("succeeded"), None),
            ],
            ExecutionStatus::Succeeded,
            "Deployed",
        ),
        (
            vec![step(
                true,
                0,
                Some("skipped"),
                Some("1.0.0 is already live"),
            )],
            ExecutionStatus::Succeeded,
            "Skipped",
        ),
        (
            vec![step(
                true,
                0,
                Some("cancelled"),
                Some("cancelled by <@U2> before it started"),
            )],
            ExecutionStatus::Succeeded,
            "Cancelled",
        ),
        (
            vec![
                step(false, 0, None, None),
                step(
                    true,
                    0,
                    Some("failed"),
                    Some("node2 failed its health check"),
                ),
            ],
            ExecutionStatus::Failed,
            "DeployFailed",
        ),
        // The step fails, is retried twice, then Abort runs and the execution fails.
        (
            vec![
                error.clone(),
                error.clone(),
                error.clone(),
                step(true, 0, Some("failed"), Some("the deploy step failed")),
            ],
            ExecutionStatus::Failed,
            "Abort",
        ),
        // A result over 256 KB: States.DataLimitExceeded, which no Retry or Catch takes
        // (moto checks the size; the emulator makes the error terminal, as on AWS); so
        // deploy-step fails such a step itself, which the Catch does take.
        (
            vec![json!({"job": {"id": "j"}, "done": false, "wait_seconds": 0,
                        "pad": "x".repeat(256 * 1024)})
            .to_string()],
            ExecutionStatus::Failed,
            "Step",
        ),
    ];
    for (i, (results, want, through)) in cases.into_iter().enumerate() {
        post(
            "/moto-api/static/lambda-simple/response",
            json!({ "results": results }),
        )
        .await;
        let arn = sfn
            .start_execution()
            .state_machine_arn(&machine)
            .name(format!("case{i}"))
            .input(job.to_string())
            .send()
            .await
            .unwrap()
            .execution_arn;
        let status = ended(&sfn, &arn).await;
        let events = sfn
            .get_execution_history()
            .execution_arn(&arn)
            .send()
            .await
            .unwrap()
            .events;
        let entered: Vec<String> = events
            .iter()
            .filter_map(|e| {
                e.state_entered_event_details
                    .as_ref()
                    .map(|d| d.name.clone())
            })
            .collect();
        assert_eq!(status, want, "case {i}: {entered:?}");
        assert!(
            entered.iter().any(|s| s == through),
            "case {i}: {entered:?}"
        );
        if i == 0 {
            // Two steps and one wait: 20 history events (benches/sim.rs counts this way).
            assert_eq!(events.len(), 20, "{entered:?}");
            assert!(entered.iter().any(|s| s == "Wait"), "{entered:?}");
            assert!(events
                .iter()
                .any(|e| e.r#type == HistoryEventType::WaitStateExited));
        }
        if through == "Abort" {
            // Each attempt of the step is told which it is; Abort gets the bare state,
            // with the error the Catch put in it.
            let payloads: Vec<Value> = events
                .iter()
                .filter_map(|e| e.task_scheduled_event_details.as_ref())
                .map(|d| serde_json::from_str::<Value>(&d.parameters).unwrap()["Payload"].clone())
                .collect();
            let attempts: Vec<&Value> = payloads.iter().map(|p| &p["attempt"]).collect();
            assert_eq!(attempts, [&json!(0), &json!(1), &json!(2), &Value::Null]);
            assert!(
                payloads[..3].iter().all(|p| p["state"] == job),
                "{payloads:?}"
            );
            assert_eq!(payloads[3]["job"], job["job"]);
            assert!(payloads[3]["error"]["Error"].is_string(), "{payloads:?}");
        }
        if want == ExecutionStatus::Failed {
            let failed = events
                .iter()
                .find_map(|e| e.execution_failed_event_details.clone())
                .unwrap();
            let too_big = through == "Step";
            let error = if too_big {
                "States.DataLimitExceeded"
            } else {
                "DeployFailed"
            };
            assert_eq!(failed.error.as_deref(), Some(error), "case {i}");
            if too_big {
                assert!(!entered.iter().any(|s| s == "Abort"), "{entered:?}");
                let steps = events
                    .iter()
                    .filter(|e| e.r#type == HistoryEventType::TaskScheduled)
                    .count();
                assert_eq!(steps, 1, "not retried: {entered:?}");
            }
        }
    }
}

/// events/ holds what AWS hands the two deploy functions; they must stay readable.
#[test]
fn the_deploy_function_samples_are_what_the_functions_read() {
    let read = |f: &str| std::fs::read_to_string(format!("events/{f}")).unwrap();
    let sqs: aws_lambda_events::event::sqs::SqsEvent =
        serde_json::from_str(&read("deploy-dispatch-sqs.json")).unwrap();
    let job = DeployJob::from_json(sqs.records[0].body.as_deref().unwrap()).unwrap();
    let step: StepState = serde_json::from_str(&read("deploy-step-start.json")).unwrap();
    assert_eq!(step, StepState::start(job));
    // What deploy-step reads: the sample as it is (a bare state: looked up as a retry),
    // or the state machine's {state, attempt}.
    let input: StepInput = serde_json::from_str(&read("deploy-step-start.json")).unwrap();
    assert_eq!(input, StepInput::from(step.clone()));
    let wrapped = json!({ "state": step, "attempt": 2 });
    let input: StepInput = serde_json::from_value(wrapped).unwrap();
    assert_eq!(
        input,
        StepInput::Attempt {
            state: step,
            attempt: 2
        }
    );
}

/// EventBridge's notice that `instance` is running.
fn running(instance: &str) -> Value {
    json!({
        "version": "0", "id": unique("event"), "source": "aws.ec2",
        "detail-type": "EC2 Instance State-change Notification",
        "account": "123456789012", "time": "2026-11-24T00:00:00Z", "region": "us-east-1",
        "resources": [format!("arn:aws:ec2:us-east-1:123456789012:instance/{instance}")],
        "detail": { "instance-id": instance, "state": "running" }
    })
}

#[tokio::test]
async fn a_node_that_joins_after_a_deploy_gets_the_live_version_and_nothing_else_is_touched() {
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let rig = Rig::new(2).await;
    let live = rig.job("1.1.0");
    assert_eq!(rig.deploy(live).await.status, Some(JobStatus::Succeeded));
    let fifo = crate::helpers::Fifo::new().await;
    let ssm = SdkRunCommand::new(rig.ssm.clone());
    let joined = |event: Value| {
        let (config, ledger, queue, ssm) =
            (rig.config.clone(), rig.ledger.clone(), fifo.queue(), &ssm);
        async move {
            shipit::aws::joined::node_joined(
                &config,
                &queue,
                ledger.as_ref(),
                ssm,
                &event,
                Utc::now(),
                Duration::from_secs(5),
            )
            .await
        }
    };

    let new = launch(1, &[("shipit:app", "hello"), ("shipit:fleet", &rig.fleet)]).await;
    let event = running(&new[0]);
    let out = joined(event.clone()).await.unwrap();
    assert_eq!(out["status"], "queued", "{out}");
    // EventBridge delivers at least once: the same event again is the same job.
    joined(event).await.unwrap();
    let queued = fifo.drain().await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].0, "hello/production");
    let job = DeployJob::from_json(&queued[0].1).unwrap();
    assert_eq!(job.version.as_str(), "1.1.0");

    let sent_to_others = || async {
        let mut n = 0;
        for id in &rig.nodes {
            let out = rig
                .ssm
                .list_commands()
                .instance_id(id)
                .send()
                .await
                .unwrap();
            n += out.commands.unwrap_or_default().len();
        }
        n
    };
    let before = sent_to_others().await;
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    assert_eq!(
        sent_to_others().await,
        before,
        "no command for the other nodes"
    );
    let n = &new[0];
    assert_eq!(
        rig.log(&job).await,
        [
            format!("probe {n} -"),
            format!("install {n} 1.1.0"),
            format!("restart {n} 1.1.0"),
        ]
    );
    let history = rig.ledger.history("hello", "production", 5).await.unwrap();
    assert_ne!(
        history[0].job.id, job.id,
        "a sync does not change what is live"
    );

    // Another fleet's instance, and an event that is not a running instance: nothing queued.
    let out = joined(running(&rig.stranger)).await.unwrap();
    assert_eq!(out["status"], "ignored", "{out}");
    let mut stopped = running(n);
    stopped["detail"]["state"] = json!("stopped");
    assert_eq!(joined(stopped).await.unwrap()["status"], "ignored");
    assert!(fifo.drain().await.is_empty());
}

/// Before: the lock expired 2 h after it was taken, whatever the deploy was doing, and the
/// next job took it while the first still had nodes to restart.
#[tokio::test]
async fn a_deploy_that_outlives_its_lease_keeps_its_lock_by_renewing_it() {
    let mut rig = Rig::new(2).await;
    // The canary bakes for 2 h 5 min of virtual time: the deploy outlives any lease.
    let bake = 7500;
    rig.config = Arc::new(config_with(&rig.fleet, &format!("bake_seconds = {bake}")));
    let start = Utc::now();
    let offset = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let clock = {
        let offset = offset.clone();
        Arc::new(move || {
            start + chrono::Duration::seconds(offset.load(std::sync::atomic::Ordering::SeqCst))
        })
    };
    // A budget of zero: every pause goes back to the state machine, which here moves the
    // virtual clock instead of sleeping.
    let stepper = rig.stepper(Duration::ZERO).with_clock(clock.clone());
    let job = rig.job("1.0.0");
    let contender = cli_job("1.1.0");
    let mut state = StepState::start(job.clone());
    let mut refused = 0;
    while !state.done {
        state = stepper.step(StepInput::first(state)).await.expect("step");
        offset.fetch_add(
            state.wait_seconds as i64,
            std::sync::atomic::Ordering::SeqCst,
        );
        let now = clock();
        let lock = shipit::deploy::ports::LockInfo {
            holder: format!("job {}", contender.id),
            reason: "deploying".into(),
            since: now,
            expires: Some(shipit::deploy::ports::LockInfo::lease_from(
                now,
                shipit::deploy::lock::LEASE_SECONDS,
            )),
            job: Some(contender.id.clone()),
            generation: 0,
            abort: None,
            written: shipit::deploy::ports::Written::default(),
        };
        let locked = state.deploy.as_ref().is_some_and(|d| d.locked);
        match rig
            .ledger
            .try_lock("hello", "production", &lock, now)
            .await
            .unwrap()
        {
            Err(held) => {
                assert_eq!(held.job.as_ref(), Some(&job.id));
                refused += 1;
            }
            Ok(_) => {
                assert!(
                    !locked,
                    "took the lock of a running deploy at +{} s",
                    offset.load(std::sync::atomic::Ordering::SeqCst)
                );
                rig.ledger
                    .release(
                        "hello",
                        "production",
                        &contender.id,
                        shipit::deploy::ports::Written::default(),
                    )
                    .await
                    .unwrap();
            }
        }
    }
    assert_eq!(state.status, Some(JobStatus::Succeeded), "{state:?}");
    assert!(offset.load(std::sync::atomic::Ordering::SeqCst) >= bake);
    assert!(refused as i64 >= bake / shipit::deploy::lock::LEASE_RENEW_SECONDS);
    let mut expected = expected_order(&rig.nodes, "1.0.0");
    expected.insert(2, format!("bake {} 1.0.0", rig.nodes[0]));
    assert_eq!(rig.log(&job).await, expected);
}

/// Before: executions of one app+env raced for the lock, so a rollback asked for after an
/// automatic job was queued could run first, and the older job then deployed over it.
#[tokio::test]
async fn jobs_of_one_app_take_the_lock_in_queue_order_so_an_older_job_cannot_undo_a_rollback() {
    // A test that has the emulator run executions switches it for every machine, and
    // executions started before the switch are no longer found: take turns with those.
    let _turn = CONTROL.lock().await;
    let rig = Rig::new(2).await;
    let sdk = sdk().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let machine = holding_machine(&sfn).await;
    let turn = Arc::new(turn_of(&sdk, &machine));
    let now = Utc::now();
    let (first, live) = (cli_job("1.0.0"), cli_job("1.1.0"));
    rig.ledger
        .record(
            &HistoryEntry::new(first.clone(), now),
            shipit::deploy::ports::Written::default(),
        )
        .await
        .unwrap();
    rig.ledger
        .record(
            &HistoryEntry::new(live.clone(), now),
            shipit::deploy::ports::Written::default(),
        )
        .await
        .unwrap();
    // An upload of 1.2.0 is queued; then someone rolls 1.1.0 back.
    let upload = upload_job("packages", "1.2.0", now);
    let rollback = first.rollback(
        Some(&live.id),
        Source::Cli {
            user: "ann".into(),
            nonce: unique("rb"),
        },
        now,
    );
    dispatched(&sfn, &turn, &machine, &[upload.clone(), rollback.clone()]).await;

    // The rollback's execution gets to run first: it waits for the upload's.
    let one_action = rig.stepper_in_order(turn.clone(), Duration::ZERO);
    let stepper = rig.stepper_in_order(turn.clone(), Duration::from_secs(60));
    let mut rb = StepState::start(rollback.clone());
    for _ in 0..3 {
        rb = one_action.step(StepInput::first(rb)).await.unwrap();
        assert!(!rb.done);
        assert!(
            !rb.deploy.as_ref().unwrap().locked,
            "took the lock out of turn"
        );
    }
    assert!(rig.commands(&rollback).await.is_empty());

    let up = to_the_end(&stepper, StepState::start(upload.clone())).await;
    assert_eq!(up.status, Some(JobStatus::Succeeded), "{up:?}");
    // Its execution ends (the holding machine's must be stopped by hand).
    stop_execution(&sfn, &machine, &upload.id).await;

    // Now the rollback's turn: what it was asked to undo is no longer live, so it says so
    // instead of rolling 1.2.0 back to 1.0.0.
    let rb = to_the_end(&stepper, rb).await;
    assert_eq!(rb.status, Some(JobStatus::Skipped), "{rb:?}");
    assert!(
        rb.reason
            .as_deref()
            .unwrap()
            .starts_with("1.2.0 went live since this rollback was asked for"),
        "{rb:?}"
    );
    let history: Vec<String> = rig
        .ledger
        .history("hello", "production", 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.job.version.to_string())
        .collect();
    assert_eq!(history, ["1.2.0", "1.1.0", "1.0.0"]);
    assert!(rig.commands(&rollback).await.is_empty());
}

/// The queue tickets are also the backlog on AWS: an automatic job with a newer version
/// queued behind it (one the gate lets through) is skipped, and the newer one deploys.
#[tokio::test]
async fn an_older_upload_is_superseded_by_a_newer_one_queued_behind_it() {
    // A test that has the emulator run executions switches it for every machine, and
    // executions started before the switch are no longer found: take turns with those.
    let _turn = CONTROL.lock().await;
    let rig = Rig::new(2).await;
    let sdk = sdk().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let machine = holding_machine(&sfn).await;
    let turn = Arc::new(turn_of(&sdk, &machine));
    let upload = |v: &str| upload_job("packages", v, Utc::now());
    let (older, newer) = (upload("1.1.0"), upload("1.2.0"));
    dispatched(&sfn, &turn, &machine, &[older.clone(), newer.clone()]).await;
    let stepper = rig.stepper_in_order(turn.clone(), Duration::from_secs(60));
    let state = to_the_end(&stepper, StepState::start(older.clone())).await;
    assert_eq!(state.status, Some(JobStatus::Skipped), "{state:?}");
    assert_eq!(
        state.reason.as_deref(),
        Some("superseded by 1.2.0, queued behind it")
    );
    assert!(rig.commands(&older).await.is_empty());
    stop_execution(&sfn, &machine, &older.id).await;
    let state = to_the_end(&stepper, StepState::start(newer.clone())).await;
    assert_eq!(state.status, Some(JobStatus::Succeeded), "{state:?}");
    assert_eq!(rig.log(&newer).await, expected_order(&rig.nodes, "1.2.0"));
}

/// On AWS the calendar's wait is the state machine's: the step hands it back (never past
/// 15 minutes) having sent nothing, and once the freeze ends the upload deploys.
#[tokio::test]
async fn an_upload_in_a_freeze_hands_its_wait_to_the_state_machine_then_deploys() {
    let mut rig = Rig::new(2).await;
    let until = chrono::DateTime::from_timestamp(Utc::now().timestamp() + 8, 0).unwrap();
    let text = production_with(
        &rig.fleet,
        &format!(
            "time_zone = \"UTC\"\nfreezes = [{{ from = \"2026-01-01\", until = \"{}\", reason = \"aws freeze\" }}]\n",
            until.format("%Y-%m-%dT%H:%M:%S")
        ),
    );
    rig.config = Arc::new(parse(&text));
    let upload = upload_job(&unique("frozen"), "1.2.0", Utc::now());
    // A step's budget shorter than the wait: the state machine's Wait does it.
    let stepper = rig.stepper(Duration::from_secs(1));
    waits_then_deploys(&rig, &stepper, &upload, "frozen (aws freeze) until", until).await;
}

/// An environment's SSM Change Calendar holds deploys back as the config's calendar does,
/// read at each try for the lock: a person's deploy is refused with its words, by chat
/// before it is queued and by its step if it was queued before; an
/// upload's step hands the wait to the state machine (sending nothing, holding no lock)
/// and the upload deploys once the calendar's event ends.
#[tokio::test]
async fn a_closed_change_calendar_holds_an_upload_back_until_it_opens() {
    use crate::emulator::{change_calendar, ical};
    let mut rig = Rig::new(2).await;
    let name = unique("changes");
    let until = chrono::DateTime::from_timestamp(Utc::now().timestamp() + 8, 0).unwrap();
    let from = Utc::now() - chrono::Duration::hours(1);
    change_calendar(&rig.ssm, &name, true, &[(ical(from), ical(until))]).await;
    let text = production_with(&rig.fleet, &format!("change_calendar = \"{name}\"\n"));
    rig.config = Arc::new(parse(&text));
    let stepper = rig.stepper(Duration::from_secs(1));
    let why = format!("the change calendar {name} is closed until");
    // Chat reads it before it queues a person's deploy.
    let fifo = crate::helpers::Fifo::new().await;
    let ingress = chat_ingress(&rig, &fifo).await;
    let text = chat(&ingress, "hello 1.2.0".into()).await;
    assert!(
        text.starts_with(&format!("hello/production takes no deploys now: {why}"))
            && text.ends_with("Nothing was queued."),
        "{text}"
    );
    assert!(fifo.drain().await.is_empty());
    // One queued before it closed is refused when it starts.
    let person = to_the_end(&stepper, StepState::start(rig.job("1.2.0"))).await;
    assert_eq!(person.status, Some(JobStatus::Skipped), "{person:?}");
    let refused = person.reason.clone().unwrap_or_default();
    assert!(refused.starts_with(&format!("refused: {why}")), "{refused}");
    let upload = upload_job(&unique("changes"), "1.2.0", Utc::now());
    waits_then_deploys(&rig, &stepper, &upload, &why, until).await;
}

/// Chat's read of a change calendar before it queues a person's deploy refuses nothing
/// when SSM throttles it past the SDK's tries: the deploy reads it again when it starts.
#[tokio::test]
async fn chat_queues_a_deploy_when_its_change_calendar_read_is_throttled() {
    use crate::emulator::{change_calendar, ical};
    let _turn = CONTROL.lock().await;
    let mut rig = Rig::new(1).await;
    let name = unique("throttled-changes");
    let from = Utc::now() - chrono::Duration::hours(1);
    change_calendar(
        &rig.ssm,
        &name,
        true,
        &[(ical(from), ical(from + chrono::Duration::hours(2)))],
    )
    .await;
    rig.config = Arc::new(parse(&production_with(
        &rig.fleet,
        &format!("change_calendar = \"{name}\"\n"),
    )));
    let fifo = crate::helpers::Fifo::new().await;
    let ingress = chat_ingress(&rig, &fifo).await;
    control(json!({ "throttle": { "GetCalendarState": 20 } })).await;
    let text = chat(&ingress, "hello 1.2.0".into()).await;
    control(json!({})).await;
    assert!(
        text.starts_with("Queued hello 1.2.0 to production"),
        "{text}"
    );
    assert_eq!(fifo.drain().await.len(), 1);
    // Read as it is, it refuses.
    let text = chat(&ingress, "hello 1.2.0".into()).await;
    assert!(
        text.contains("takes no deploys now: the change calendar"),
        "{text}"
    );
}

/// A change calendar that cannot be read (here: not there) holds deploys back as a closed
/// one does, saying why, and is looked at again within 15 minutes.
#[tokio::test]
async fn a_change_calendar_that_cannot_be_read_holds_an_upload_back() {
    let mut rig = Rig::new(1).await;
    let name = unique("missing-changes");
    let text = production_with(&rig.fleet, &format!("change_calendar = \"{name}\"\n"));
    rig.config = Arc::new(parse(&text));
    let stepper = rig.stepper(Duration::from_secs(1));
    let upload = upload_job(&unique("unread"), "1.2.0", Utc::now());
    let why = format!("the change calendar {name} cannot be read (InvalidDocument");
    let state = waits_at_first(&rig, &stepper, &upload, &why).await;
    assert!(state.wait_seconds <= 15 * 60, "{state:?}");
}

/// On AWS the wait for approval is the state machine's too: the step hands it back having
/// sent nothing and holding no lock; an approver's word in Parameter Store (as chat
/// keeps it) lets the deploy go, and history keeps who approved.
#[tokio::test]
async fn an_upload_waiting_for_approval_hands_its_wait_to_the_state_machine() {
    let mut rig = Rig::new(2).await;
    let text = production_with(&rig.fleet, "approvals = { approvers = [\"U2\", \"U3\"] }\n");
    rig.config = Arc::new(parse(&text));
    let upload = upload_job(&unique("approved"), "1.2.0", Utc::now());
    let stepper = rig.stepper(Duration::from_secs(1));
    let state = waits_at_first(&rig, &stepper, &upload, "waits for approval (0 of 1)").await;
    assert_eq!(state.wait_seconds, 5, "{state:?}");
    let word = shipit::deploy::approval::Approval {
        job: upload.id.clone(),
        version: upload.version.clone(),
        by: "U2".into(),
        approved: true,
        reason: None,
        at: Utc::now(),
    };
    assert!(rig
        .ledger
        .approve("hello", "production", &word)
        .await
        .unwrap());
    let state = to_the_end(&stepper, state).await;
    assert_eq!(state.status, Some(JobStatus::Succeeded), "{state:?}");
    assert_eq!(rig.log(&upload).await, expected_order(&rig.nodes, "1.2.0"));
    let history = rig.ledger.history("hello", "production", 1).await.unwrap();
    assert_eq!(history[0].job.approved_by, ["U2"]);
}

/// On AWS the step that records a success queues the promotion on the deploy queue (SQS
/// FIFO, in the emulator); the promotion's own step hands its wait to the state machine,
/// having sent nothing, until it is due.
#[tokio::test]
async fn a_deploy_that_went_live_queues_its_promotion_on_the_deploy_queue() {
    let mut rig = Rig::new(2).await;
    let text = production_with(
        &rig.fleet,
        &format!(
            "promote = {{ to = \"later\", after_seconds = 600 }}\n[apps.hello.environments.later]\nssm_tags = {{ \"shipit:app\" = \"hello\", \"shipit:fleet\" = \"{}\" }}\ndir = \"/srv/hello app\"\nvars = {{ port = \"8080\" }}\n",
            rig.fleet
        ),
    )
    .replace("[apps.hello]\n", "[apps.hello]\ndefault_env = \"production\"\n");
    rig.config = Arc::new(parse(&text));
    let fifo = crate::helpers::Fifo::new().await;
    let stepper = Stepper::new(
        rig.driver(None).with_queue(Arc::new(fifo.queue())),
        Duration::from_secs(5),
    );
    let live = rig.job("1.2.0");
    let state = to_the_end(&stepper, StepState::start(live.clone())).await;
    assert_eq!(state.status, Some(JobStatus::Succeeded), "{state:?}");
    let queued = fifo.drain().await;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0].0, "hello/later");
    let promotion = DeployJob::from_json(&queued[0].1).unwrap();
    let Source::Promotion {
        from_env,
        from_job,
        due_at,
    } = &promotion.source
    else {
        panic!("{promotion:?}")
    };
    assert_eq!((from_env.as_str(), from_job), ("production", &live.id));
    assert!((*due_at - Utc::now()).num_seconds() > 500, "{due_at}");
    assert_eq!(promotion.version, live.version);
    let state = waits_at_first(&rig, &stepper, &promotion, "promoted from production at").await;
    assert!(state.wait_seconds > 500, "{state:?}");
}

/// `job`'s first step, which hands a wait back to the state machine, saying why (its
/// start), having sent nothing and holding no lock.
/// `upload` waits at its first step (`why`), handing the state machine a wait of at most
/// 9 s, then deploys once its calendar opens at `until`, not before.
async fn waits_then_deploys(
    rig: &Rig,
    stepper: &Stepper,
    upload: &DeployJob,
    why: &str,
    until: chrono::DateTime<Utc>,
) {
    let state = waits_at_first(rig, stepper, upload, why).await;
    assert!((1..=9).contains(&state.wait_seconds), "{state:?}");
    let state = to_the_end(stepper, state).await;
    assert_eq!(state.status, Some(JobStatus::Succeeded), "{state:?}");
    assert!(Utc::now() >= until);
    let version = upload.version.to_string();
    assert_eq!(rig.log(upload).await, expected_order(&rig.nodes, &version));
}

async fn waits_at_first(rig: &Rig, stepper: &Stepper, job: &DeployJob, why: &str) -> StepState {
    let state = stepper
        .step(StepInput::first(StepState::start(job.clone())))
        .await
        .unwrap();
    assert!(!state.done && state.wait_seconds > 0, "{state:?}");
    let closed = state.deploy.as_ref().and_then(|d| d.closed.clone());
    assert!(
        closed.as_deref().is_some_and(|c| c.starts_with(why)),
        "{state:?}"
    );
    assert!(rig.commands(job).await.is_empty());
    let lock = rig
        .ledger
        .lock_state(&job.app, &job.env, Utc::now())
        .await
        .unwrap();
    assert!(lock.is_none(), "waiting, it holds no lock: {lock:?}");
    state
}

#[tokio::test]
async fn an_upload_waits_for_parameter_store_to_show_the_version_the_last_deploy_made_live() {
    let _turn = CONTROL.lock().await;
    let mut rig = Rig::new(2).await;
    let prefix = format!("/{}", unique("lagging"));
    rig.ledger = Arc::new(SsmLedger::new(rig.ssm.clone(), &prefix));
    control(json!({})).await;
    let first = rig.deploy_now(rig.job("1.2.0")).await;
    assert_eq!(first.status, Some(JobStatus::Succeeded), "{first:?}");
    // From here, each write to the live entry is read back as it was before it for the
    // next three reads: the record of 1.3.0 is not seen at once.
    let live = format!("{prefix}/live/");
    control(json!({ "param_lag": { "reads": 3, "contains": live } })).await;
    let tagged = rig.deploy_now(rig.job("1.3.0")).await;
    assert_eq!(tagged.status, Some(JobStatus::Succeeded), "{tagged:?}");
    let upload = upload_job("packages", "1.2.5", Utc::now());
    let state = rig.deploy_now(upload.clone()).await;
    control(json!({})).await;
    // Read before the record showed, 1.2.0 would be live, and the upload would lower 1.3.0.
    assert_eq!(state.status, Some(JobStatus::Skipped), "{state:?}");
    assert!(rig.commands(&upload).await.is_empty());
    let history = rig.ledger.history("hello", "production", 1).await.unwrap();
    assert_eq!(history[0].job.version.to_string(), "1.3.0");
}

/// A job's story on AWS is told from what AWS keeps: its execution (the deploy state
/// machine from infra/, its step function answering with the states a real deploy's steps
/// returned) and the Run Command invocations of its commands. Chat shows it.
#[tokio::test]
async fn a_failed_jobs_story_is_told_from_its_execution_and_its_commands() {
    use shipit::deploy::ports::Stories;
    use shipit::deploy::story::{Stage, StepResult};
    use shipit::drive::execution::ExecutionStories;
    let _turn = CONTROL.lock().await;
    let mut rig = Rig::new(2).await;
    // Datadog keeps the DORA figures: the step that ends a job tells it how they stand.
    let datadog = wiremock::MockServer::start().await;
    for p in [
        "/api/v1/events",
        "/api/v2/dora/deployment",
        "/api/v2/series",
    ] {
        wiremock::Mock::given(wiremock::matchers::method("POST"))
            .and(wiremock::matchers::path(p))
            .and(wiremock::matchers::header("dd-api-key", "dd-test"))
            .respond_with(
                wiremock::ResponseTemplate::new(202).set_body_json(json!({"status": "ok"})),
            )
            .mount(&datadog)
            .await;
    }
    rig.config = Arc::new(parse(&format!(
        "{}\n[apps.hello.notify]\ndatadog = {{ api_key = \"dd-test\", site = \"{}\", dora = true }}\n",
        config_text(&rig.fleet, ""),
        datadog.uri()
    )));
    control(json!({})).await;
    rig.deploy(rig.job("1.1.0")).await;
    rig.unhealthy_on(1, "1.2.0").await;
    let job = rig.job("1.2.0");
    let sfn = aws_sdk_sfn::Client::new(&sdk().await);
    let machine = deploy_machine(&sfn).await;
    let stepper =
        rig.stepper(Duration::from_secs(60))
            .with_figures(Arc::new(ExecutionStories::new(
                sfn.clone(),
                rig.ssm.clone(),
                &machine,
            )));
    let mut state = StepState::start(job.clone());
    let mut returned = vec![];
    while !state.done {
        state = stepper.step(StepInput::first(state)).await.expect("step");
        tokio::time::sleep(Duration::from_secs(state.wait_seconds)).await;
        // The emulator's execution need not wait again.
        let mut played = state.clone();
        played.wait_seconds = 0;
        returned.push(serde_json::to_string(&played).unwrap());
    }
    control(json!({})).await;
    assert_eq!(state.status, Some(JobStatus::Failed), "{state:?}");
    // 1.1.0 went live, 1.2.0 failed on the way (counted from the step's own state: its
    // execution had not ended yet).
    let series: Vec<Value> = datadog
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == "/api/v2/series")
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    let last = &series.last().expect("figures sent")["series"];
    let figure = |name: &str| {
        last.as_array()
            .unwrap()
            .iter()
            .find(|m| m["metric"] == name)
            .map(|m| m["points"][0]["value"].as_f64().unwrap())
    };
    assert_eq!(
        figure("shipit.dora.change_failure_rate"),
        Some(0.5),
        "{last}"
    );
    assert_eq!(
        figure("shipit.dora.deploys_per_day"),
        Some(1.0 / 30.0),
        "{last}"
    );
    assert!(
        figure("shipit.dora.time_to_restore_seconds").is_some(),
        "{last}"
    );

    post_emulator(
        "/moto-api/static/lambda-simple/response",
        json!({ "results": returned }),
    )
    .await;
    let arn = sfn
        .start_execution()
        .state_machine_arn(&machine)
        .name(job.id.as_str())
        .input(serde_json::to_string(&StepState::start(job.clone())).unwrap())
        .send()
        .await
        .unwrap()
        .execution_arn;
    assert_eq!(ended(&sfn, &arn).await, ExecutionStatus::Failed);

    let stories = Arc::new(ExecutionStories::new(sfn, rig.ssm.clone(), &machine));
    let story = stories
        .story(&job.id)
        .await
        .unwrap()
        .expect("its execution");
    assert_eq!(story.status, JobStatus::Failed);
    let (n1, n2) = (&rig.nodes[0], &rig.nodes[1]);
    let reason = story.reason.clone().unwrap();
    assert!(
        reason.contains(&format!("{n2} failed its health check")),
        "{reason}"
    );
    let seen: Vec<(String, Stage, StepResult)> = story
        .steps
        .iter()
        .map(|s| (s.node.clone(), s.stage, s.result))
        .collect();
    for step in [
        (n1.clone(), Stage::Install, StepResult::Ok),
        (n2.clone(), Stage::Install, StepResult::Ok),
        (n1.clone(), Stage::Restart, StepResult::Ok),
        (n2.clone(), Stage::Restart, StepResult::Failed),
        (n1.clone(), Stage::RollbackRestart, StepResult::Ok),
        (n2.clone(), Stage::RollbackRestart, StepResult::Ok),
    ] {
        assert!(seen.contains(&step), "{step:?} not in {seen:?}");
    }
    let failed = story
        .steps
        .iter()
        .find(|s| s.result == StepResult::Failed)
        .unwrap();
    assert_eq!(failed.exit_code, Some(1));
    assert!(
        failed.output.contains("unhealthy after 4 checks"),
        "{failed:?}"
    );
    for s in &story.steps {
        let (a, b) = (s.started_at.expect("a start"), s.ended_at.expect("an end"));
        assert!(a <= b, "{s:?}");
    }
    assert!(
        story.started_at.is_some() && story.ended_at.is_some(),
        "{story:?}"
    );
    let said: Vec<&str> = story.events.iter().map(|e| e.text.as_str()).collect();
    assert!(
        said.iter().any(|t| t.starts_with("started: 2 node(s)")),
        "{said:?}"
    );
    assert!(
        said.iter().any(|t| t.contains("failed its health check")),
        "{said:?}"
    );
    // Another job's commands are not this one's.
    assert!(story.steps.iter().all(|s| s.node == *n1 || s.node == *n2));
    let unknown = shipit::deploy::job::JobId::parse("0123456789abcdef0123").unwrap();
    assert_eq!(stories.story(&unknown).await.unwrap(), None);
    // Read against the clock (as chat reads it), a story is whole, or says it is cut
    // short and shows part of it: one page of each read, where other tests running at
    // once put their commands in the same window (the 120-node fleet's push this job's
    // past the first page of invocations).
    let hurried = ExecutionStories::new(
        aws_sdk_sfn::Client::new(&sdk().await),
        rig.ssm.clone(),
        &machine,
    )
    .within(Duration::ZERO);
    let quick = hurried.story(&job.id).await.unwrap().unwrap();
    match quick.events.iter().any(|e| e.text.contains("cut short")) {
        false => assert_eq!(quick.steps, story.steps),
        true => assert!(
            quick.steps.iter().all(|s| story.steps.contains(s)),
            "{quick:?}"
        ),
    }

    let fifo = crate::helpers::Fifo::new().await;
    let ingress = crate::helpers::ingress(Arc::new(fifo.queue()), rig.ledger.clone())
        .await
        .with_stories(stories.clone());
    let say = |text: String| chat(&ingress, text);
    let text = say(format!("show {}", job.id)).await;
    assert!(text.contains("hello 1.2.0 to production: failed"), "{text}");
    assert!(
        text.contains(&format!("{n2} restart failed (exit 1)")),
        "{text}"
    );
    assert!(
        text.contains("shipit: unhealthy after 4 checks in 3 s"),
        "{text}"
    );
    let text = say("show ../../x".into()).await;
    assert!(text.contains("is not a job id"), "{text}");
    drop(ingress);

    // The page function tells the same, through its handler.
    let (sdk, tickets) = (sdk().await, format!("/{}", unique("shipit")));
    let turn = || {
        shipit::aws::turn::SsmTurn::new(
            aws_sdk_ssm::Client::new(&sdk),
            aws_sdk_sfn::Client::new(&sdk),
            &tickets,
            &machine,
        )
    };
    let page = shipit::run::aws_page::AwsPage::new(
        rig.config.clone(),
        rig.ledger.clone(),
        turn(),
        stories.clone(),
    );
    let get = |method: &str, path: &str, fragment: bool| {
        let mut event: Value =
            serde_json::from_str(&std::fs::read_to_string("events/page-get.json").unwrap())
                .unwrap();
        event["rawPath"] = json!(path);
        event["requestContext"]["http"]["method"] = json!(method);
        if fragment {
            event["headers"]["x-shipit-fragment"] = json!("1");
        }
        let req: aws_lambda_events::event::apigw::ApiGatewayV2httpRequest =
            serde_json::from_value(event).unwrap();
        let page = &page;
        async move {
            let resp = page.answer(&req, Utc::now()).await;
            let body = match resp.body {
                Some(aws_lambda_events::encodings::Body::Text(t)) => t,
                other => panic!("{other:?}"),
            };
            let kind = resp.headers["content-type"].to_str().unwrap().to_string();
            (resp.status_code, kind, body)
        }
    };
    let (code, kind, body) = get("GET", "/", false).await;
    assert_eq!(
        (code, kind.as_str()),
        (200, "text/html; charset=utf-8"),
        "{body}"
    );
    assert!(body.contains("hello/production"), "{body}");
    assert!(
        body.contains(&format!("href=\"/jobs/{}\"", job.id)),
        "{body}"
    );
    assert!(
        body.contains(&format!("{n2} failed its health check")),
        "{body}"
    );
    assert!(body.contains("data-poll=\"10\""), "{body}");
    // The DORA figures: 1.1.0 from the live history, 1.2.0 from its failed execution.
    assert!(body.contains("id=\"dora\""), "{body}");
    assert!(body.contains("50 % (1 of 2)"), "{body}");
    assert!(body.contains("(median of 1)"), "{body}");
    // Nothing from anywhere else: no stylesheet, script or image by address.
    assert!(!body.contains("src=") && !body.contains("<link"), "{body}");
    let (_, _, fragment) = get("GET", "/", true).await;
    assert!(!fragment.contains("<html") && fragment.contains("hello/production"));
    let (code, _, body) = get("GET", &format!("/jobs/{}", job.id), false).await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("<svg") && body.contains("rollback restart"),
        "{body}"
    );
    let (code, kind, body) = get("GET", &format!("/api/jobs/{}", job.id), false).await;
    assert_eq!((code, kind.as_str()), (200, "application/json"));
    let told: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(told, serde_json::to_value(&story).unwrap());
    assert_eq!(get("GET", "/jobs/0123456789abcdef0123", false).await.0, 404);
    assert_eq!(get("GET", "/jobs/../../etc", false).await.0, 404);
    assert_eq!(get("GET", "/elsewhere", false).await.0, 404);
    assert_eq!(get("POST", "/", false).await.0, 405);

    // A deploy holding the lock, its ticket still there: the page shows its nodes as its
    // newest step left them.
    let turn = turn();
    turn.enter(&job, "7").await.unwrap();
    let now = Utc::now();
    let lock = shipit::deploy::ports::LockInfo {
        holder: format!("job {}", job.id),
        reason: "deploying".into(),
        since: now,
        expires: Some(now + chrono::Duration::minutes(10)),
        job: Some(job.id.clone()),
        generation: 0,
        abort: None,
        written: shipit::deploy::ports::Written::default(),
    };
    let held = rig
        .ledger
        .try_lock("hello", "production", &lock, now)
        .await
        .unwrap();
    assert!(held.is_ok(), "{held:?}");
    let (code, _, body) = get("GET", "/", false).await;
    assert_eq!(code, 200);
    assert!(body.contains("Deploying now"), "{body}");
    assert!(
        body.contains(&format!("{n1}</span> back on the previous version")),
        "{body}"
    );
    rig.ledger
        .release(
            "hello",
            "production",
            &job.id,
            shipit::deploy::ports::Written::default(),
        )
        .await
        .unwrap();
    shipit::deploy::ports::Turn::leave(&turn, &job)
        .await
        .unwrap();
}

/// `/deploy cancel` on AWS: a job waiting its turn is taken off the queue and ends
/// cancelled at its next step, touching nothing; a job that holds its lock cannot be
/// cancelled. One conditional create of the job's claim decides (`SsmTurn`).
#[tokio::test]
async fn a_waiting_job_cancelled_from_chat_never_runs_and_a_started_one_cannot_be() {
    // A test that has the emulator run executions switches it for every machine, and
    // executions started before the switch are no longer found: take turns with those.
    let _turn = CONTROL.lock().await;
    use shipit::deploy::ports::{Claims, Turn};
    let rig = Rig::new(2).await;
    let sdk = sdk().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let machine = holding_machine(&sfn).await;
    let prefix = format!("/{}", unique("shipit"));
    let turn = Arc::new(shipit::aws::turn::SsmTurn::new(
        rig.ssm.clone(),
        sfn.clone(),
        &prefix,
        &machine,
    ));
    let (first, second) = (cli_job("1.1.0"), cli_job("1.2.0"));
    let fifo = dispatched(&sfn, &turn, &machine, &[first.clone(), second.clone()]).await;

    // The first takes its lock: from then on it runs.
    let one_action = rig.stepper_in_order(turn.clone(), Duration::ZERO);
    let stepper = rig.stepper_in_order(turn.clone(), Duration::from_secs(60));
    let mut a = StepState::start(first.clone());
    while !a.deploy.as_ref().is_some_and(|d| d.locked) {
        a = one_action.step(StepInput::first(a)).await.unwrap();
    }

    let stories =
        shipit::drive::execution::ExecutionStories::new(sfn.clone(), rig.ssm.clone(), &machine);
    let ingress = crate::helpers::ingress(Arc::new(fifo.queue()), rig.ledger.clone())
        .await
        .with_stories(Arc::new(stories))
        .with_cancel(turn.clone());
    let say = |text: String| chat(&ingress, text);
    let text = say(format!("cancel {}", first.id)).await;
    assert!(
        text.contains("is running: /deploy abort hello production stops it"),
        "{text}"
    );
    let text = say(format!("cancel {}", second.id)).await;
    assert_eq!(
        text,
        format!(
            "Cancelled job {} (hello 1.2.0 to production): it will not run.",
            second.id
        )
    );
    let text = say(format!("cancel {}", second.id)).await;
    assert!(text.contains("is not queued: it is cancelled"), "{text}");
    // Had the second reached its lock first, the claim would have stopped it there too.
    let by = turn.start(&second).await.unwrap().expect("cancelled");
    assert!(by.contains("U2CERLKJA"), "{by}");
    assert_eq!(turn.start(&first).await.unwrap(), None);
    // A job the dispatcher left a ticket for but has not started an execution for yet (a
    // StartExecution that failed, to be tried again) is waiting, not ended: the claim
    // stays, and the execution it gets ends cancelled too.
    let third = cli_job("1.3.0");
    turn.enter(&third, &"9".repeat(30)).await.unwrap();
    use shipit::deploy::ports::Cancel;
    assert_eq!(
        turn.cancel(&third, "U2CERLKJA", chrono::Utc::now())
            .await
            .unwrap(),
        None
    );
    assert!(turn.start(&third).await.unwrap().is_some());
    turn.leave(&third).await.unwrap();

    // The cancelled job ends at its next step, without waiting for the first's turn.
    let b = to_the_end(&stepper, StepState::start(second.clone())).await;
    assert_eq!(b.status, Some(JobStatus::Cancelled), "{b:?}");
    assert_eq!(
        b.reason.as_deref(),
        Some(format!("cancelled by {by} before it started").as_str())
    );
    assert!(rig.commands(&second).await.is_empty());
    let a = to_the_end(&stepper, a).await;
    assert_eq!(a.status, Some(JobStatus::Succeeded), "{a:?}");
    let live = rig.ledger.history("hello", "production", 1).await.unwrap();
    assert_eq!(live[0].job.id, first.id);

    // Claims outlive their executions, and a later job of the app+env clears those of
    // executions that ended (its own stays until the next one).
    let claims = || async {
        let mut names: Vec<String> = rig
            .ssm
            .get_parameters_by_path()
            .path(format!("{prefix}/claim/hello/production"))
            .send()
            .await
            .unwrap()
            .parameters
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| p.name?.rsplit('/').next().map(str::to_string))
            .collect();
        names.sort();
        names
    };
    let mut all = vec![
        first.id.to_string(),
        second.id.to_string(),
        third.id.to_string(),
    ];
    all.sort();
    assert_eq!(claims().await, all);
    stop_execution(&sfn, &machine, &first.id).await;
    stop_execution(&sfn, &machine, &second.id).await;
    turn.leave(&second).await.unwrap();
    let mut kept = vec![second.id.to_string(), third.id.to_string()];
    kept.sort();
    assert_eq!(claims().await, kept);
    // Cancelling a job that ended claims nothing and says how it ended.
    let text = say(format!("cancel {}", first.id)).await;
    assert!(text.contains("is not queued"), "{text}");
    assert_eq!(claims().await, kept);
}

/// A key sent again leaves two commands with one comment: the lookup answers the newest
/// (one that reached its node too late and was refused there is the older).
#[tokio::test]
async fn of_two_commands_with_one_comment_the_lookup_finds_the_newest() {
    use shipit::aws::fleet::{RunCommand, SendRequest};
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let rig = Rig::new(1).await;
    let ssm = SdkRunCommand::new(rig.ssm.clone());
    let req = SendRequest {
        nodes: vec![rig.nodes[0].clone()],
        script: "true".into(),
        dir: None,
        comment: format!("shipit {}:install 1/1", unique("k")),
        max_concurrency: "100%".into(),
        max_errors: "0".into(),
        timeout_seconds: 60,
    };
    let first = ssm.send(&req).await.unwrap();
    // Apart by more than the emulator's clock resolution.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = ssm.send(&req).await.unwrap();
    assert_ne!(first, second);
    let since = Utc::now() - chrono::Duration::minutes(5);
    let found = ssm.find(&rig.nodes[0], &req.comment, since).await.unwrap();
    assert_eq!(found, Some(second));
}

/// A Prometheus check on AWS: read by the deploy step over HTTP with its bearer token
/// (a local stand-in checks path, query and header), its waits handed to the state
/// machine as bake time is, and a version whose error ratio is past the threshold rolled
/// back after the canary.
#[tokio::test]
async fn a_prometheus_check_is_read_by_the_step_and_its_waits_go_to_the_state_machine() {
    use wiremock::matchers::{header, method, path, query_param_contains};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let prometheus = MockServer::start().await;
    let answer = |ratio: &str| {
        ResponseTemplate::new(200).set_body_json(json!({"status": "success", "data": {
            "resultType": "vector",
            "result": [{"metric": {}, "value": [1.7e9, ratio]}]}}))
    };
    for (version, ratio) in [("1.0.0", "0"), ("1.1.0", "0.001"), ("1.2.0", "0.05")] {
        Mock::given(method("GET"))
            .and(path("/api/v1/query"))
            .and(header("authorization", "Bearer tok-123"))
            .and(query_param_contains(
                "query",
                format!("version=\"{version}\""),
            ))
            .respond_with(answer(ratio))
            .mount(&prometheus)
            .await;
    }
    let mut rig = Rig::new(3).await;
    let text = format!(
        "{}\n[[apps.hello.checks]]\nname = \"errors\"\nprometheus = \"{}\"\ntoken = \"tok-123\"\nquery = 'sum(rate(errors{{version={{version}}}}[1m]))'\ncondition = \"< 0.01\"\n",
        config_text(&rig.fleet, "check_interval_seconds = 3"),
        prometheus.uri()
    );
    rig.config = Arc::new(parse(&text));
    // A budget shorter than the interval: each wait for the next reading goes back to
    // the state machine's Wait state.
    let stepper = rig.stepper(Duration::from_secs(1));
    let deploy = |job: DeployJob| {
        let stepper = &stepper;
        async move {
            let mut state = StepState::start(job);
            let mut handed = 0;
            for _ in 0..200 {
                state = stepper.step(StepInput::first(state)).await.expect("step");
                if state.done {
                    return (state, handed);
                }
                let reading = state.deploy.as_ref().is_some_and(|d| {
                    matches!(d.phase, shipit::deploy::engine::Phase::Checks { .. })
                });
                if reading && state.wait_seconds >= 2 {
                    handed += 1;
                }
                tokio::time::sleep(Duration::from_secs(state.wait_seconds)).await;
            }
            panic!("deploy did not finish: {state:?}");
        }
    };
    let (end, _) = deploy(rig.job("1.0.0")).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    let (end, handed) = deploy(rig.job("1.1.0")).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    // One reading after each of the three nodes, each waited for by the state machine.
    assert_eq!(handed, 3, "{end:?}");
    let job = rig.job("1.2.0");
    let (end, _) = deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Failed), "{end:?}");
    assert_eq!(
        end.reason.as_deref(),
        Some("check errors failed after a batch: 0.05 (needs < 0.01)")
    );
    let (n1, all) = (&rig.nodes[0], rig.nodes.join(","));
    assert_eq!(
        rig.log(&job).await,
        [
            format!("install {all} 1.2.0"),
            format!("restart {n1} 1.2.0"),
            format!("revert install {all} 1.1.0"),
            format!("revert restart {n1} 1.1.0"),
        ]
    );
    let marks = rig.ledger.faulty("hello", "production").await.unwrap();
    assert!(
        marks.iter().any(|m| m.version.as_str() == "1.2.0"),
        "{marks:?}"
    );
}

/// A CloudWatch alarm check, read by the step through the SDK (CBOR, as on AWS): an
/// alarm in ALARM rolls the deploy back after its first batch, marking nothing (an alarm
/// is fleet-wide); once OK the same version deploys; an alarm CloudWatch does not know
/// fails the check whatever `no_data` says.
#[tokio::test]
async fn a_cloudwatch_alarm_in_alarm_rolls_back_and_an_ok_one_lets_the_deploy_through() {
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let cw = aws_sdk_cloudwatch::Client::new(&sdk().await);
    let tag = unique("5xx");
    let alarm = format!("hello-production-{tag}");
    crate::emulator::alarm(&cw, &alarm, "OK").await;
    let mut rig = Rig::new(2).await;
    let with = |alarms: &str| {
        format!(
            "{}\n[[apps.hello.checks]]\nname = \"alarms\"\ncloudwatch_alarms = [{alarms}]\nno_data = \"pass\"\n",
            config_text(&rig.fleet, "")
        )
    };
    rig.config = Arc::new(parse(&with(&format!("\"{{app}}-{{env}}-{tag}\""))));
    let first = rig.deploy(rig.job("1.0.0")).await;
    assert_eq!(first.status, Some(JobStatus::Succeeded), "{first:?}");

    crate::emulator::alarm(&cw, &alarm, "ALARM").await;
    let job = rig.job("1.1.0");
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Failed), "{end:?}");
    assert_eq!(
        end.reason.as_deref(),
        Some(
            format!(
                "check alarms failed after a batch: CloudWatch alarm {alarm} is ALARM: {alarm} set ALARM by the test"
            )
            .as_str()
        )
    );
    let (n1, all) = (&rig.nodes[0], rig.nodes.join(","));
    assert_eq!(
        rig.log(&job).await,
        [
            format!("install {all} 1.1.0"),
            format!("restart {n1} 1.1.0"),
            format!("revert install {all} 1.0.0"),
            format!("revert restart {n1} 1.0.0"),
        ]
    );
    let marks = rig.ledger.faulty("hello", "production").await.unwrap();
    assert!(
        marks.is_empty(),
        "a fleet-wide alarm marks nothing: {marks:?}"
    );

    crate::emulator::alarm(&cw, &alarm, "OK").await;
    let end = rig.deploy(rig.job("1.1.0")).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");

    rig.config = Arc::new(parse(&with(&format!("\"{alarm}\", \"{tag}-gone\""))));
    let end = rig.deploy(rig.job("1.2.0")).await;
    assert_eq!(end.status, Some(JobStatus::Failed), "{end:?}");
    let reason = end.reason.unwrap_or_default();
    assert!(
        reason.contains(&format!("CloudWatch has no alarm named {tag}-gone")),
        "{reason}"
    );
}

/// A node check through SSM Run Command: its command goes to the nodes the deploy
/// restarted, one send per reading, and one node answering exit 1 rolls the deploy back
/// and marks the version.
#[tokio::test]
async fn a_node_check_runs_through_run_command_and_a_failing_node_rolls_back() {
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let mut rig = Rig::new(2).await;
    let text = format!(
        "{}\n[[apps.hello.checks]]\nname = \"disk\"\ncheck = \"test $(df --output=pcent {{dir}} | tail -1 | tr -dc 0-9) -lt 90\"\n",
        config_text(&rig.fleet, "")
    );
    rig.config = Arc::new(parse(&text));
    let first = rig.job("1.0.0");
    let end = rig.deploy(first.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Succeeded), "{end:?}");
    let checks: Vec<(String, Vec<String>, String)> = rig
        .commands(&first)
        .await
        .into_iter()
        .filter(|(comment, _, _)| comment.contains(":check:disk:"))
        .collect();
    // After each of the two nodes, on the nodes restarted so far, in the app's directory.
    assert_eq!(checks.len(), 2, "{checks:?}");
    assert_eq!(checks[0].1, [rig.nodes[0].clone()]);
    assert_eq!(checks[1].1.len(), 2);
    assert!(
        checks[0].2.contains("df --output=pcent '/srv/hello app'"),
        "{}",
        checks[0].2
    );

    control(json!({ "rules": [{
        "instance": rig.nodes[0], "contains": "df --output=pcent",
        "status": "Failed", "exit_code": 1, "stderr": "97"
    }]}))
    .await;
    let job = rig.job("1.1.0");
    let end = rig.deploy(job.clone()).await;
    assert_eq!(end.status, Some(JobStatus::Failed), "{end:?}");
    let reason = end.reason.unwrap_or_default();
    assert!(
        reason.starts_with(&format!(
            "check disk failed after a batch: failed on {} (exit 1: 97)",
            rig.nodes[0]
        )),
        "{reason}"
    );
    let marks = rig.ledger.faulty("hello", "production").await.unwrap();
    assert!(
        marks.iter().any(|m| m.version.as_str() == "1.1.0"),
        "{marks:?}"
    );
}

/// A node's Prometheus text whose request counter grows by 150 a scrape, `errors` of
/// them 500s.
struct Serving {
    errors: u64,
    served: std::sync::atomic::AtomicU64,
}

impl wiremock::Respond for Serving {
    fn respond(&self, _: &wiremock::Request) -> wiremock::ResponseTemplate {
        let n = 150
            + self
                .served
                .fetch_add(150, std::sync::atomic::Ordering::Relaxed);
        let errors = n / 150 * self.errors;
        wiremock::ResponseTemplate::new(200).set_body_string(format!(
            "# TYPE hello_requests_total counter\nhello_requests_total{{code=\"200\"}} {}\nhello_requests_total{{code=\"500\"}} {errors}\n",
            n - errors
        ))
    }
}

/// The canary analysis on SSM nodes: each node is scraped at the address its agent
/// reports (DescribeInstanceInformation's IPAddress, as `{node_host}`), the canary and
/// the nodes still on the old version alike; a canary serving 10 % errors against none
/// is rolled back after its bake's first windows.
#[tokio::test]
async fn an_analysis_scrapes_ssm_nodes_at_the_addresses_their_agents_report() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer};
    let _turn = CONTROL.lock().await;
    control(json!({})).await;
    let mut rig = Rig::new(3).await;
    let ssm = aws_sdk_ssm::Client::new(&sdk().await);
    let tags = [
        ("shipit:app", "hello"),
        ("shipit:fleet", rig.fleet.as_str()),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let addresses = shipit::aws::fleet::addresses(&ssm, &tags).await.unwrap();
    assert_eq!(addresses.len(), 3, "{addresses:?}");
    // The emulator's addresses reach nothing here: the stand-in serves each under its path.
    let nodes = MockServer::start().await;
    for (i, node) in rig.nodes.iter().enumerate() {
        Mock::given(method("GET"))
            .and(path(format!("/{}/metrics", addresses[node])))
            .respond_with(Serving {
                errors: if i == 0 { 15 } else { 0 },
                served: Default::default(),
            })
            .mount(&nodes)
            .await;
    }
    let text = format!(
        "{}\n[[apps.hello.checks]]\nname = \"versus\"\nanalysis = \"http://127.0.0.1:{}/{{node_host}}/metrics\"\nrequests = \"hello_requests_total\"\nmin_requests = 100\n",
        config_text(&rig.fleet, "bake_seconds = 4\ncheck_interval_seconds = 1"),
        nodes.address().port()
    );
    rig.config = Arc::new(parse(&text));
    let first = rig.deploy(rig.job("1.0.0")).await;
    assert_eq!(first.status, Some(JobStatus::Succeeded), "{first:?}");
    let end = rig.deploy(rig.job("1.1.0")).await;
    assert_eq!(end.status, Some(JobStatus::Failed), "{end:?}");
    let reason = end.reason.unwrap_or_default();
    assert!(
        reason.starts_with("check versus failed on the canary: error ratio 10.0 % ")
            && reason.contains(&format!("on {} (1.1.0) vs 0.0 % ", rig.nodes[0]))
            && reason.contains("on 2 baseline nodes (1.0.0)"),
        "{reason}"
    );
    let scraped: BTreeSet<String> = nodes
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| r.url.path().to_string())
        .collect();
    let expected: BTreeSet<String> = rig
        .nodes
        .iter()
        .map(|n| format!("/{}/metrics", addresses[n]))
        .collect();
    assert_eq!(scraped, expected);
}
