//! The fuzz targets' bodies. Each takes arbitrary bytes to one parser of outside input
//! through the entry point production uses, and checks what must hold whatever arrives:
//! no panic, a refusal is a 4xx with a reason, and what is accepted is well formed.
//! `cargo fuzz run -s none TARGET` drives them (fuzz/README.md); the main tests replay
//! their corpora (tests/local/fuzz_replay.rs), so that a crash found once stays fixed.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, TimeZone, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use shipit::config::Config;
use shipit::deploy::job::DeployJob;
use shipit::deploy::ports::{Enqueued, JobQueue, PortError};
use shipit::deploy::version::{parse_distribution_filename, PackageName, Version};
use shipit::ingress::{sign_hex, Hook, Ingress, Reply};
use shipit::local::store::Store;

const GITHUB_SECRET: &str = "fuzz-github-secret";
const SLACK_SECRET: &str = "fuzz-slack-secret";

const CONFIG: &str = r#"
[github]
webhook_secret = "fuzz-github-secret"
[slack]
signing_secret = "fuzz-slack-secret"
team_id = "T1"
[apps.hello]
package = "hello-app"
repo = "acme/hello"
tag_pattern = "v{version}"
default_env = "staging"
auto_deploy = ["staging"]
install = "pip install -U {package}=={version}"
restart = "kill -HUP 1"
health = "true"
[apps.hello.environments.staging]
nodes = [{ name = "n1", dir = "n1" }]
chat_deployers = ["U1"]
chat_forcers = ["U1"]
[apps.hello.environments.production]
nodes = [{ name = "n1", dir = "n1" }]
chat_deployers = ["U1"]
"#;

/// A queue that takes every job: the fuzzer looks at what is queued, not where.
struct Taken;

#[async_trait::async_trait]
impl JobQueue for Taken {
    async fn enqueue(&self, jobs: &[DeployJob]) -> Result<Vec<Enqueued>, PortError> {
        for job in jobs {
            assert_well_formed(job);
        }
        Ok(vec![Enqueued::Queued; jobs.len()])
    }
}

/// Whatever reached the queue was validated: a PEP 440 version and a known app.
fn assert_well_formed(job: &DeployJob) {
    let again = Version::parse(job.version.as_str()).expect("a queued version re-parses");
    assert_eq!(again.as_str(), job.version.as_str());
    assert_eq!(job.app, "hello");
    assert!(["staging", "production"].contains(&job.env.as_str()));
}

struct World {
    rt: tokio::runtime::Runtime,
    ingress: Ingress,
    now: DateTime<Utc>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let config = Config::parse(CONFIG, Path::new("fuzz.toml")).expect("the fuzz config");
        // In memory: the chat commands that read or take locks need a ledger, not a disk.
        let ledger = Arc::new(Store::open(Path::new(":memory:")).expect("a store"));
        let ingress = rt
            .block_on(Ingress::new(
                Arc::new(config),
                Arc::new(Taken),
                ledger,
                &shipit::config::secrets::Secrets::new(None),
                &Hook::ALL,
            ))
            .expect("the ingress");
        let now = Utc
            .timestamp_opt(1_795_460_400, 0)
            .single()
            .expect("a time");
        World { rt, ingress, now }
    })
}

fn assert_answered(reply: &Reply) {
    assert!((200..600).contains(&reply.status), "{reply:?}");
    if reply.status >= 400 {
        assert!(
            !reply.reason().is_empty(),
            "a refusal without a reason: {reply:?}"
        );
    }
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (HeaderName::from_str(k), HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    }
    h
}

/// `EVENT\nBODY`, signed as GitHub signs: reaches the payload parser. One input in 16 is
/// left unsigned, so that the signature check is fuzzed too.
pub fn github(data: &[u8]) {
    let w = world();
    let (event, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (
            String::from_utf8_lossy(&data[..i]).into_owned(),
            &data[i + 1..],
        ),
        None => ("push".to_string(), data),
    };
    let sig = if data.first().is_some_and(|b| b % 16 == 0) {
        "sha256=00".to_string()
    } else {
        format!("sha256={}", sign_hex(GITHUB_SECRET.as_bytes(), &[body]))
    };
    let h = headers(&[
        ("x-github-event", &event),
        ("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"),
        ("x-hub-signature-256", &sig),
    ]);
    let reply = w.rt.block_on(w.ingress.github(&h, body, w.now));
    assert_answered(&reply);
    if sig == "sha256=00" {
        assert_eq!(reply.status, 401, "{reply:?}");
    }
}

/// First byte even: the rest is the whole form body. Odd: the rest is the text of
/// `/deploy` from a deployer of the right workspace, so that command parsing is reached
/// at once. Both signed as Slack signs.
pub fn slack(data: &[u8]) {
    let w = world();
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let body = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let text: String = percent_encode(rest);
        format!(
            "token=t&team_id=T1&team_domain=acme&channel_id=C1&channel_name=deploys\
             &user_id=U1&user_name=alice&command=%2Fdeploy&text={text}\
             &response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1%2F1%2Fx&trigger_id=1"
        )
        .into_bytes()
    };
    let ts = w.now.timestamp().to_string();
    let sig = format!(
        "v0={}",
        sign_hex(
            SLACK_SECRET.as_bytes(),
            &[b"v0:", ts.as_bytes(), b":", &body]
        )
    );
    let h = headers(&[
        ("x-slack-request-timestamp", &ts),
        ("x-slack-signature", &sig),
    ]);
    let reply = w.rt.block_on(w.ingress.slack(&h, &body, w.now));
    assert_answered(&reply);
    // Slack shows the answer in the channel: it never carries a secret.
    let text = reply.body.to_string();
    assert!(!text.contains(SLACK_SECRET) && !text.contains(GITHUB_SECRET));
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                char::from(*b).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// First byte picks the event: S3 or CodeArtifact (the package-upload function), EC2
/// (node-joined), SQS (deploy-dispatch's batch, whose bodies are jobs). The rest is JSON.
pub fn events(data: &[u8]) {
    let w = world();
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    let Ok(event) = serde_json::from_slice::<Value>(rest) else {
        return;
    };
    match kind % 3 {
        0 => {
            let handled = w.rt.block_on(shipit::run::lambda::handle_package_event(
                &w.ingress, event, w.now,
            ));
            if let Err(e) = handled {
                assert!(!e.is_empty());
            }
        }
        1 => {
            if let Ok((instance, id)) = shipit::aws::joined::joined(&event) {
                assert!(shipit::aws::joined::is_instance_id(instance));
                assert!(!id.is_empty());
            }
        }
        _ => {
            if let Ok(batch) =
                serde_json::from_value::<aws_lambda_events::event::sqs::SqsEvent>(event)
            {
                for record in &batch.records {
                    if let Ok(job) = DeployJob::from_json(record.body.as_deref().unwrap_or("")) {
                        assert!(Version::parse(job.version.as_str()).is_ok());
                    }
                }
            }
        }
    }
}

/// One string to every name parser: distribution file names, versions, package names,
/// tag patterns. What is accepted is normalized and safe to put in a shell command.
pub fn names(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = Version::parse(s) {
        let again = Version::parse(v.as_str()).expect("a normalized version re-parses");
        assert_eq!(again.as_str(), v.as_str());
        assert!(v.same_as(&again) && !v.is_newer_than(&again));
        assert!(
            v.as_str()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '!')),
            "{v:?}"
        );
    }
    if let Ok(d) = parse_distribution_filename(s) {
        assert!(Version::parse(d.version.as_str()).is_ok());
    }
    if let Ok(p) = PackageName::from_str(s) {
        assert!(
            p.as_ref()
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')),
            "{p:?}"
        );
    }
    if let Some((pattern, tag)) = s.split_once('\n') {
        if let Ok(p) = shipit::config::TagPattern::parse(pattern) {
            if let Some(v) = p.extract(tag) {
                assert!(tag.contains(v));
            }
        }
    }
}

/// The config file, through everything `shipit check` checks.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml")) {
        Ok(c) => {
            for app in c.apps.values() {
                assert!(!app.environments.is_empty(), "{}", app.name);
            }
        }
        Err(report) => assert!(!report.problems.is_empty()),
    }
}

/// A job read back from the queue, and a deploy's state read back from Step Functions:
/// what parses survives a round trip unchanged.
pub fn job(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(job) = DeployJob::from_json(text) {
        let again = DeployJob::from_json(&job.to_json()).expect("a job re-reads");
        assert_eq!(again, job);
    }
    if let Ok(state) = serde_json::from_str::<shipit::drive::step::StepState>(text) {
        let json = serde_json::to_string(&state).expect("a state serializes");
        let again: shipit::drive::step::StepState =
            serde_json::from_str(&json).expect("a state re-reads");
        assert_eq!(again, state);
    }
}

/// A package index's page, as `serve` reads it (`ingress::index::page_files`): the first
/// byte picks the content type. Every file it gives is an http(s) link with a name.
pub fn index(data: &[u8]) {
    let Some((first, body)) = data.split_first() else {
        return;
    };
    let content_type = [
        "application/vnd.pypi.simple.v1+json",
        "text/html; charset=utf-8",
        "application/vnd.pypi.simple.v1+html",
        "application/json",
    ][*first as usize % 4];
    let Ok(body) = std::str::from_utf8(body) else {
        return;
    };
    let page =
        shipit::ingress::index::Url::parse("http://pypi.internal/simple/hello-app/").unwrap();
    if let Ok(files) = shipit::ingress::index::page_files(content_type, body, &page) {
        for f in files {
            assert!(
                f.url.starts_with("http://") || f.url.starts_with("https://"),
                "{f:?}"
            );
            assert!(!f.url.contains('#'), "{f:?}");
        }
    }
}
