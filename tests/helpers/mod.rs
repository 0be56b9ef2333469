//! Shared test harness (both test binaries): the emulator-backed AWS clients, signing,
//! and the configs.
#![allow(dead_code)] // each test binary uses its own part of it

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue};
use shipit::config::secrets::Secrets;
use shipit::config::Config;
use shipit::deploy::ports::{JobQueue, Ledger};
use shipit::ingress::{sign_hex, Ingress};

pub const GITHUB_SECRET: &str = "sample-github-secret";
pub const SLACK_SECRET: &str = "sample-slack-signing-secret";

/// A name no other test (or earlier run against the same emulator) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}-{}",
        std::process::id(),
        Utc::now().timestamp_micros(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The SDK config pointing at the emulator. Fails loudly when it is not running, so
/// that an AWS test never passes by not talking to AWS.
pub async fn sdk() -> aws_config::SdkConfig {
    assert!(
        std::env::var("AWS_ENDPOINT_URL").is_ok_and(|u| u.starts_with("http://127.0.0.1")),
        "AWS_ENDPOINT_URL must point at the emulator on 127.0.0.1: run the tests with scripts/test"
    );
    shipit::aws::sdk_config().await
}

pub struct Fifo {
    pub client: aws_sdk_sqs::Client,
    pub url: String,
}

impl Fifo {
    pub async fn new() -> Fifo {
        let client = aws_sdk_sqs::Client::new(&sdk().await);
        let out = client
            .create_queue()
            .queue_name(format!("{}.fifo", unique("deploys")))
            .attributes(QueueAttributeName::FifoQueue, "true")
            .send()
            .await
            .expect("create FIFO queue in the emulator");
        Fifo {
            client,
            url: out.queue_url.expect("queue url"),
        }
    }

    pub fn queue(&self) -> shipit::aws::queue::SqsQueue {
        shipit::aws::queue::SqsQueue::new(self.client.clone(), self.url.clone())
    }

    /// Everything on the queue, as (message group, body); deletes what it reads.
    pub async fn drain(&self) -> Vec<(String, String)> {
        self.drain_in_order()
            .await
            .into_iter()
            .map(|(group, body, _)| (group, body))
            .collect()
    }

    /// Everything on the queue, as (message group, body, SQS sequence number).
    pub async fn drain_in_order(&self) -> Vec<(String, String, String)> {
        let mut out = vec![];
        loop {
            let got = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
                .message_system_attribute_names(MessageSystemAttributeName::SequenceNumber)
                .send()
                .await
                .expect("receive");
            let msgs = got.messages.unwrap_or_default();
            if msgs.is_empty() {
                return out;
            }
            for m in msgs {
                let group = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
                    .cloned()
                    .unwrap_or_default();
                let sequence = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SequenceNumber))
                    .cloned()
                    .unwrap_or_default();
                out.push((group, m.body.clone().unwrap_or_default(), sequence));
                self.client
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(m.receipt_handle.unwrap_or_default())
                    .send()
                    .await
                    .expect("delete");
            }
        }
    }
}

/// `hello` VERSION to production, asked for from the CLI by `user`, now.
pub fn cli_job(user: &str, version: &str, nonce: &str) -> shipit::deploy::job::DeployJob {
    shipit::deploy::job::DeployJob::new(
        "hello",
        "production",
        "hello-app".parse().unwrap(),
        shipit::deploy::version::Version::parse(version).unwrap(),
        shipit::deploy::job::Source::Cli {
            user: user.into(),
            nonce: nonce.into(),
        },
        Utc::now(),
    )
}

pub fn ssm_ledger(ssm: aws_sdk_ssm::Client) -> shipit::aws::ledger::SsmLedger {
    shipit::aws::ledger::SsmLedger::new(ssm, &format!("/{}", unique("shipit")))
}

/// Two apps built from one package (so an upload deploys both), from one repository
/// with different tag patterns; `hello` has two environments with different deployers.
pub fn config() -> Config {
    let text = r#"
[github]
webhook_secret = "sample-github-secret"
[slack]
signing_secret = "sample-slack-signing-secret"
team_id = "T1"

[apps.hello]
package = "hello-app"
repo = "acme/hello"
default_env = "production"
install = "venv/bin/pip install -U {package}=={version}"
restart = "kill -HUP $(cat service.pid)"
health = "true"
[apps.hello.environments.production]
ssm_tags = { "shipit:app" = "hello", "shipit:env" = "production" }
chat_deployers = ["U2CERLKJA"]
[apps.hello.environments.staging]
ssm_tags = { "shipit:app" = "hello", "shipit:env" = "staging" }
chat_deployers = ["*"]

[apps.hello-worker]
package = "Hello_App"
repo = "acme/hello"
tag_pattern = "worker-v{version}"
install = "venv/bin/pip install -U {package}=={version}"
restart = "systemctl restart hello-worker"
health = "true"
[apps.hello-worker.environments.production]
ssm_tags = { "shipit:app" = "hello-worker" }
"#;
    Config::parse(text, Path::new("test.toml"))
        .unwrap_or_else(|r| panic!("test config invalid:\n{r}"))
}

pub async fn ingress(queue: Arc<dyn JobQueue>, ledger: Arc<dyn Ledger>) -> Ingress {
    Ingress::new(
        Arc::new(config()),
        queue,
        ledger,
        &Secrets::new(None),
        &shipit::ingress::Hook::ALL,
    )
    .await
    .expect("ingress")
}

pub fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

pub fn github_headers(event: &str, delivery: &str, body: &[u8]) -> HeaderMap {
    let sig = format!("sha256={}", sign_hex(GITHUB_SECRET.as_bytes(), &[body]));
    headers(&[
        ("x-github-event", event),
        ("x-github-delivery", delivery),
        ("x-hub-signature-256", &sig),
    ])
}

pub fn tag_push(repo: &str, tag: &str) -> Vec<u8> {
    serde_json::json!({
        "ref": format!("refs/tags/{tag}"),
        "before": "0000000000000000000000000000000000000000",
        "after": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
        "created": true,
        "deleted": false,
        "repository": { "full_name": repo, "default_branch": "main" },
        "pusher": { "name": "octocat", "email": "octocat@example.com" },
        "head_commit": { "id": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
                         "timestamp": "2026-11-23T10:59:50-08:00" }
    })
    .to_string()
    .into_bytes()
}

pub fn slack_form(user_id: &str, user_name: &str, text: &str, trigger: &str) -> Vec<u8> {
    let response_url = "https://hooks.slack.com/commands/T1/1/x";
    slack_form_replying_to(response_url, user_id, user_name, text, trigger)
}

pub fn slack_form_replying_to(
    response_url: &str,
    user_id: &str,
    user_name: &str,
    text: &str,
    trigger: &str,
) -> Vec<u8> {
    slack_form_in("T1", response_url, user_id, user_name, text, trigger)
}

/// A slash command from workspace `team`.
pub fn slack_form_in(
    team: &str,
    response_url: &str,
    user_id: &str,
    user_name: &str,
    text: &str,
    trigger: &str,
) -> Vec<u8> {
    serde_urlencoded::to_string([
        ("token", "x"),
        ("team_id", team),
        ("channel_id", "C1"),
        ("channel_name", "deploys"),
        ("user_id", user_id),
        ("user_name", user_name),
        ("command", "/deploy"),
        ("text", text),
        ("response_url", response_url),
        ("trigger_id", trigger),
    ])
    .unwrap()
    .into_bytes()
}

pub fn slack_headers(body: &[u8], now: DateTime<Utc>) -> HeaderMap {
    let ts = now.timestamp().to_string();
    let sig = format!(
        "v0={}",
        sign_hex(
            SLACK_SECRET.as_bytes(),
            &[b"v0:", ts.as_bytes(), b":", body]
        )
    );
    headers(&[
        ("x-slack-request-timestamp", &ts),
        ("x-slack-signature", &sig),
    ])
}

/// The local tests' one app: `hello` (package `hello-app`, repo `acme/hello`) in
/// `production` on local nodes, each in a directory of its name under the test's own,
/// with signed webhooks and slash commands. A test sets only what differs.
pub struct LocalApp {
    pub nodes: Vec<&'static str>,
    pub install: &'static str,
    pub restart: &'static str,
    pub health: &'static str,
    /// `chat_deployers` of production: nobody by default.
    pub deployers: &'static str,
    /// `chat_forcers` of production: nobody by default.
    pub forcers: &'static str,
    /// More keys for `[server]`, `[slack]` and `[apps.hello]`.
    pub server: String,
    pub slack: String,
    pub app: String,
    /// More keys for the production environment.
    pub env: String,
    /// Whole tables after the app's (`[apps.hello.gate]`, `[apps.hello.notify]`, …).
    pub tables: String,
}

impl Default for LocalApp {
    fn default() -> LocalApp {
        LocalApp {
            nodes: vec!["n1"],
            install: "true",
            restart: "true",
            health: "true",
            deployers: "",
            forcers: "",
            server: String::new(),
            slack: String::new(),
            app: String::new(),
            env: String::new(),
            tables: String::new(),
        }
    }
}

impl LocalApp {
    /// Writes `shipit.toml` into `dir` (and a directory for each node), and loads it.
    pub fn write(&self, dir: &Path) -> Config {
        for n in &self.nodes {
            std::fs::create_dir_all(dir.join(n)).unwrap();
        }
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("{{ name = \"{n}\", dir = \"{n}\" }}"))
            .collect();
        let text = format!(
            r#"
[server]
{server}
[github]
webhook_secret = "{GITHUB_SECRET}"
[slack]
signing_secret = "{SLACK_SECRET}"
team_id = "T1"
{slack}
[apps.hello]
package = "hello-app"
repo = "acme/hello"
install = {install:?}
restart = {restart:?}
health = {health:?}
{app}
[apps.hello.environments.production]
chat_deployers = [{deployers}]
chat_forcers = [{forcers}]
nodes = [{nodes}]
{env}
{tables}
"#,
            server = self.server,
            slack = self.slack,
            install = self.install,
            restart = self.restart,
            health = self.health,
            app = self.app,
            deployers = self.deployers,
            forcers = self.forcers,
            nodes = nodes.join(", "),
            env = self.env,
            tables = self.tables,
        );
        let path = dir.join("shipit.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(&path).unwrap_or_else(|r| panic!("test config invalid:\n{r}"))
    }

    /// The config and its store.
    pub fn open(&self, dir: &Path) -> (Arc<Config>, shipit::local::store::Store) {
        let config = self.write(dir);
        let store = shipit::run::local::open_store(&config).unwrap();
        (Arc::new(config), store)
    }
}

/// `shipit serve`'s HTTP side on a free loopback port, until `stop`. No worker runs jobs
/// here (its `/healthz` says the worker is starting): tests look at what was queued.
pub struct Served {
    pub base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Served {
    pub async fn start(ingress: Ingress, store: shipit::local::store::Store) -> Served {
        Served::start_with_token(ingress, store, None).await
    }

    /// With `server.api_token` set to `api_token`.
    pub async fn start_with_token(
        ingress: Ingress,
        store: shipit::local::store::Store,
        api_token: Option<String>,
    ) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(shipit::run::server::serve(
            Arc::new(ingress),
            store,
            listener,
            tokio::sync::watch::channel(shipit::drive::worker::WorkerHealth::Starting).1,
            api_token,
            async {
                let _ = stopped.await;
            },
        ));
        Served { base, stop, task }
    }

    /// Stops it and waits for the requests in flight.
    pub async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// The real-pip app of the end-to-end tests and the local bench, on nodes set up by
/// `shipit::cli::demo::set_up_nodes`: `hello` installed with pip from the wheelhouse into
/// each node's virtualenv (`nodes/NAME`), its service on the node's port.
pub fn pip_app_toml(nodes: &[(String, u16)], health_timeout_seconds: u64) -> String {
    let nodes: Vec<String> = nodes
        .iter()
        .map(|(n, p)| {
            format!("{{ name = \"{n}\", dir = \"nodes/{n}\", vars = {{ port = \"{p}\" }} }}")
        })
        .collect();
    format!(
        r#"
[server]
state = "state/shipit.db"
[apps.hello]
package = "hello-app"
install = "venv/bin/pip install --quiet --no-index --find-links ../../wheelhouse -U {{package}}=={{version}}"
restart = "venv/bin/python -m hello_app.ctl restart {{port}}"
health = "venv/bin/python -m hello_app.ctl check {{port}} {{version}}"
version = "venv/bin/pip show {{package}}"
[apps.hello.rollout]
health_timeout_seconds = {health_timeout_seconds}
health_interval_seconds = 1
[apps.hello.environments.production]
nodes = [{}]
"#,
        nodes.join(", ")
    )
}

/// The same app with `layout = "releases"`: the same templates through `{venv}` (no
/// `version` command: the version is the release `current` points at), and each install
/// that runs pip notes its version in the node's installs.log.
pub fn pip_app_releases_toml(
    nodes: &[(String, u16)],
    health_timeout_seconds: u64,
    keep: u32,
) -> String {
    pip_app_toml(nodes, health_timeout_seconds)
        .replace(
            "install = \"venv/bin/pip",
            "install = \"echo {version} >> installs.log && {venv}/bin/pip",
        )
        .replace(" -U {package}", " {package}")
        .replace("\"venv/bin/python", "\"{venv}/bin/python")
        .replace("version = \"venv/bin/pip show {package}\"\n", "")
        .replace(
            "[apps.hello.environments.production]",
            &format!(
                "[apps.hello.environments.production]\nlayout = \"releases\"\nkeep_releases = {keep}"
            ),
        )
}
