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

    pub fn queue(&self) -> shipit::aws::SqsQueue {
        shipit::aws::SqsQueue::new(self.client.clone(), self.url.clone())
    }

    /// Everything on the queue, as (message group, body); deletes what it reads.
    pub async fn drain(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        loop {
            let got = self
                .client
                .receive_message()
                .queue_url(&self.url)
                .max_number_of_messages(10)
                .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
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
                out.push((group, m.body.clone().unwrap_or_default()));
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

pub fn ssm_ledger(ssm: aws_sdk_ssm::Client) -> shipit::aws::SsmLedger {
    shipit::aws::SsmLedger::new(ssm, &format!("/{}", unique("shipit")))
}

/// Two apps built from one package (so an upload deploys both), from one repository
/// with different tag patterns; `hello` has two environments with different deployers.
pub fn config() -> Config {
    let text = r#"
[github]
webhook_secret = "sample-github-secret"
[slack]
signing_secret = "sample-slack-signing-secret"

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
    Ingress::new(Arc::new(config()), queue, ledger, &Secrets::new(None))
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
        "pusher": { "name": "octocat", "email": "octocat@example.com" }
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
    serde_urlencoded::to_string([
        ("token", "x"),
        ("team_id", "T1"),
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
